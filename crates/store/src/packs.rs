//! Message bodies in append-only pack files beside the database.
//!
//! Why not in SQLite: in WAL mode every byte of a body is written twice (the WAL frame, then
//! the checkpoint), in 4 KB pages with a checksum each; for a mailbox of 1 GB that was most of
//! the initial sync's time on tmpfs. A pack is written once, sequentially, and synced once a
//! batch. The row in `message_bodies` (message id → pack, offset, length) stays in SQLite, so
//! which bodies exist is still decided by one transaction.
//!
//! Layout: the packs of `dir/backproc.sqlite` are `dir/backproc.packs/NNNNNNNN.pack`. A pack
//! is a sequence of records: an 8-byte header (`BPK`, version 1, the body's length as a
//! little-endian u32), then the body. A row's offset is the body's, just after its header; the
//! header lets a reader (and the integrity check) tell a good reference from a wrong one.
//!
//! Invariants:
//! 1. The bytes a committed row references are on disk before that row's commit: a writer
//!    appends a batch, syncs the pack, then commits the rows (`Store::store_received`).
//! 2. A pack is only appended to, and by one writer at a time: the writer holds an exclusive
//!    `flock` on it while it may append ([`PackWriter`]). Bytes after the last referenced
//!    record (a writer killed before its commit, a full disk) are never read, and compaction
//!    reclaims them.
//! 3. A pack is deleted only by compaction, which holds the pack's lock and the store-wide
//!    compaction lock (`LOCK_FILE`, exclusive) and whose commit moving every live body out is
//!    durable before the unlink.
//! 4. A backup holds the compaction lock shared from its database snapshot until its packs are
//!    linked, so every pack the snapshot references still exists when it is linked.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A writer starts a new pack once its pack has reached this size (checked between
/// batches, so a pack ends at most one batch above it). Small enough that compaction copies
/// little at a time, large enough that a big mailbox is a few dozen files.
pub const PACK_TARGET: u64 = 64 << 20;

const MAGIC: [u8; 4] = *b"BPK\x01";
pub const HEADER: u64 = 8;
/// Taken shared by a backup, exclusive by compaction (invariant 4).
pub const LOCK_FILE: &str = "compaction.lock";

/// Where the packs of the database at `db` live: `backproc.sqlite` → `backproc.packs`.
pub fn dir_for(db: &Path) -> PathBuf {
    db.with_extension("packs")
}

pub fn file_name(pack: i64) -> String {
    format!("{pack:08}.pack")
}

/// The pack number of a file name, for the names this module writes only.
pub fn parse_name(name: &str) -> Option<i64> {
    let n = name.strip_suffix(".pack")?;
    if n.len() != 8 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The packs in `dir`, in number order (none if the directory does not exist yet).
pub fn list(dir: &Path) -> io::Result<Vec<i64>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut v = Vec::new();
    for e in rd {
        if let Some(n) = e?.file_name().to_str().and_then(parse_name) {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

fn header(len: usize) -> io::Result<[u8; 8]> {
    let len = u32::try_from(len).map_err(|_| io::Error::other("a message body over 4 GB cannot be stored"))?;
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&MAGIC);
    h[4..].copy_from_slice(&len.to_le_bytes());
    Ok(h)
}

fn corrupt(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Checks the record header in front of the body at `offset` (reads 8 bytes).
pub fn check_ref(file: &File, pack: i64, offset: i64, len: i64) -> io::Result<()> {
    let size = file.metadata()?.len();
    let bad = |why: &str| corrupt(format!("pack {} offset {offset} length {len}: {why}", file_name(pack)));
    if offset < HEADER as i64 || len < 0 || (offset + len) as u64 > size {
        return Err(bad("outside the file"));
    }
    let mut h = [0u8; 8];
    file.read_exact_at(&mut h, offset as u64 - HEADER)?;
    if h[..4] != MAGIC || u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as i64 != len {
        return Err(bad("no record header there"));
    }
    Ok(())
}

/// Reads one body (checking its record header).
pub fn read(dir: &Path, pack: i64, offset: i64, len: i64) -> io::Result<Vec<u8>> {
    let file = File::open(dir.join(file_name(pack)))?;
    check_ref(&file, pack, offset, len)?;
    let mut body = vec![0u8; len as usize];
    file.read_exact_at(&mut body, offset as u64)?;
    Ok(body)
}

/// Syncs a directory, so a file created (or removed) in it survives a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Tries to lock `file` exclusively without waiting; false when someone else holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Opens pack `n` and locks it exclusively if nobody holds it and it is still linked (a
/// compaction may have removed it between our listing and our lock).
pub fn open_locked(dir: &Path, n: i64) -> io::Result<Option<File>> {
    let file = match OpenOptions::new().read(true).append(true).open(dir.join(file_name(n))) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !try_lock(&file)? || file.metadata()?.nlink() == 0 {
        return Ok(None);
    }
    Ok(Some(file))
}

/// The one appender of a pack (invariant 2). Dropping it releases the pack.
pub struct PackWriter {
    dir: PathBuf,
    file: File,
    pack: i64,
    /// The file's length: where the next record goes (we are its only appender).
    len: u64,
    /// Appended since the last `sync`.
    dirty: bool,
}

impl PackWriter {
    /// Takes a pack of `dir` that is below the target size and free, or creates a new one.
    pub fn open(dir: &Path) -> io::Result<PackWriter> {
        ensure_dir(dir)?;
        let packs = list(dir)?;
        for &n in &packs {
            let path = dir.join(file_name(n));
            match std::fs::metadata(&path) {
                Ok(m) if m.len() < PACK_TARGET => {}
                _ => continue,
            }
            if let Some(file) = open_locked(dir, n)? {
                return PackWriter::with(dir, file, n);
            }
        }
        let mut n = packs.last().map_or(1, |l| l + 1);
        loop {
            let created =
                OpenOptions::new().read(true).append(true).create_new(true).mode(0o660).open(dir.join(file_name(n)));
            match created {
                // Another writer may lock the new file before us; then we try the next number.
                Ok(file) if try_lock(&file)? => {
                    sync_dir(dir)?;
                    return PackWriter::with(dir, file, n);
                }
                Ok(_) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn with(dir: &Path, file: File, pack: i64) -> io::Result<PackWriter> {
        let len = file.metadata()?.len();
        Ok(PackWriter { dir: dir.to_owned(), file, pack, len, dirty: false })
    }

    /// Called before each batch: re-reads the length (an append that failed half way leaves
    /// bytes we did not count) and moves to another pack once this one is full.
    pub fn begin(&mut self) -> io::Result<()> {
        self.len = self.file.metadata()?.len();
        if self.len >= PACK_TARGET {
            self.sync()?;
            *self = PackWriter::open(&self.dir)?;
        }
        Ok(())
    }

    /// Appends one body; returns (pack, offset of the body). Not durable before `sync`.
    pub fn append(&mut self, body: &[u8]) -> io::Result<(i64, i64)> {
        let h = header(body.len())?;
        let mut bufs = [IoSlice::new(&h), IoSlice::new(body)];
        let mut slices: &mut [IoSlice<'_>] = &mut bufs;
        // One write per record: header and body go out together (the file is O_APPEND).
        while !slices.is_empty() {
            match self.file.write_vectored(slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.dirty = true;
                    return Err(e);
                }
            }
        }
        self.dirty = true;
        let offset = self.len + HEADER;
        self.len = offset + body.len() as u64;
        Ok((self.pack, offset as i64))
    }

    /// Makes everything appended so far durable (invariant 1).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    pub fn pack(&self) -> i64 {
        self.pack
    }
}

/// Creates the packs directory (group-writable like the database) and makes its entry durable.
fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o770).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// The store-wide compaction lock, shared (backup) or exclusive (compaction), waiting for it.
pub fn lock_compaction(dir: &Path, exclusive: bool) -> io::Result<File> {
    ensure_dir(dir)?;
    let f =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o660).open(dir.join(LOCK_FILE))?;
    if exclusive {
        f.lock()?
    } else {
        f.lock_shared()?
    }
    Ok(f)
}

/// Links (or, across file systems, copies) every pack of `from` into `to`, which must not
/// exist yet. Hard links cost no space: packs are never rewritten, only appended to, and bytes
/// appended after the backup's snapshot are not referenced by it.
pub fn link_all(from: &Path, to: &Path) -> io::Result<u64> {
    std::fs::create_dir(to)?;
    let mut bytes = 0;
    for n in list(from)? {
        let (src, dst) = (from.join(file_name(n)), to.join(file_name(n)));
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst)?;
            File::open(&dst)?.sync_data()?;
        }
        bytes += std::fs::metadata(&dst)?.len();
    }
    sync_dir(to)?;
    Ok(bytes)
}

/// Total size of the packs in `dir` (bytes on disk, garbage included).
pub fn total_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for n in list(dir)? {
        total += std::fs::metadata(dir.join(file_name(n)))?.len();
    }
    Ok(total)
}

/// Writes `body` into a new pack of a fresh directory and gives the reference (tests).
#[cfg(test)]
pub(crate) fn write_one(dir: &Path, body: &[u8]) -> io::Result<(i64, i64)> {
    let mut w = PackWriter::open(dir)?;
    let r = w.append(body)?;
    w.sync()?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_files_are_ignored() {
        assert_eq!(file_name(7), "00000007.pack");
        assert_eq!(parse_name("00000007.pack"), Some(7));
        for bad in ["7.pack", "0000000x.pack", "00000007.pack.tmp", "compaction.lock", "000000007.pack"] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
        assert_eq!(dir_for(Path::new("data/backproc.sqlite")), Path::new("data/backproc.packs"));
    }

    #[test]
    fn append_then_read_back_and_wrong_references_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("s.packs");
        let mut w = PackWriter::open(&dir).unwrap();
        let a = w.append(b"first body").unwrap();
        let b = w.append(b"").unwrap();
        let c = w.append(&vec![7u8; 100_000]).unwrap();
        w.sync().unwrap();
        assert_eq!(a, (1, 8));
        assert_eq!(read(&dir, a.0, a.1, 10).unwrap(), b"first body");
        assert_eq!(read(&dir, b.0, b.1, 0).unwrap(), b"");
        assert_eq!(read(&dir, c.0, c.1, 100_000).unwrap(), vec![7u8; 100_000]);
        // a wrong length, an offset inside a body, past the end, a missing pack
        for (off, len) in [(a.1, 9), (a.1 + 1, 9), (c.1, 100_001), (0, 0)] {
            let e = read(&dir, 1, off, len).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{off} {len}: {e}");
        }
        assert_eq!(read(&dir, 2, 8, 1).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_locked_pack_is_not_shared_and_a_full_one_is_left() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("s.packs");
        let mut one = PackWriter::open(&dir).unwrap();
        let two = PackWriter::open(&dir).unwrap();
        assert_eq!((one.pack(), two.pack()), (1, 2));
        one.append(b"x").unwrap();
        drop(two);
        // pack 2 is free again and below the target: the next writer takes it
        let mut three = PackWriter::open(&dir).unwrap();
        assert_eq!(three.pack(), 2);
        // a full pack is closed between batches and a new one taken
        three.file.set_len(PACK_TARGET).unwrap();
        three.begin().unwrap();
        assert_eq!(three.pack(), 3);
        let r = three.append(b"after the roll").unwrap();
        three.sync().unwrap();
        assert_eq!(read(&dir, r.0, r.1, 14).unwrap(), b"after the roll");
        assert_eq!(list(&dir).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn garbage_after_the_last_record_does_not_disturb_the_next_writer() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("s.packs");
        let (p, off) = write_one(&dir, b"kept").unwrap();
        // a writer killed half way through a record
        let mut f = OpenOptions::new().append(true).open(dir.join(file_name(p))).unwrap();
        f.write_all(&header(1000).unwrap()).unwrap();
        f.write_all(b"half a body").unwrap();
        drop(f);
        let mut w = PackWriter::open(&dir).unwrap();
        w.begin().unwrap();
        let r = w.append(b"next").unwrap();
        w.sync().unwrap();
        assert_eq!(read(&dir, p, off, 4).unwrap(), b"kept");
        assert_eq!(read(&dir, r.0, r.1, 4).unwrap(), b"next");
    }

    #[test]
    fn link_all_makes_a_second_name_for_every_pack() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("s.packs");
        let (p, off) = write_one(&dir, b"body").unwrap();
        let copy = t.path().join("b.packs");
        let bytes = link_all(&dir, &copy).unwrap();
        assert_eq!(bytes, total_bytes(&dir).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read(&copy, p, off, 4).unwrap(), b"body");
    }
}
