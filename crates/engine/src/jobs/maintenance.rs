//! Housekeeping processes that run on their own intervals: expired internal messages,
//! expired history, DB defragmentation, backups; and the full resynchronisation of an
//! account on request. `backproc maintenance` runs the same jobs through the same runner
//! (`JobRunner::by_hand`); each says what it did in one line ([`Report::summary`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use backproc_store::Store;
use backproc_store::maintenance::{DbPages, PackCompaction};
use backproc_store::packs;

use super::Ctx;
use crate::task::{Failure, FailureKind, Report};

/// A maintenance job's end: its count for history, and its line for the log and for the
/// person who ran it by hand.
fn done(count: i64, line: String) -> Result<Report, Failure> {
    log::info!("{line}");
    Ok(Report { count, follow_up: Vec::new(), summary: Some(line) })
}

/// Deletes unread internal messages older than INTERNAL_MSG_LIFETIME_DAYS (read ones stay).
pub fn internal_clean(ctx: &mut Ctx) -> Result<Report, Failure> {
    let days = ctx.config.internal_msg_lifetime_days as i64;
    let before = ctx.clock.now() - days * 86_400;
    let n = ctx.store.internal_delete_expired(before)?;
    done(n as i64, format!("deleted {n} unread internal message(s) older than {days} days"))
}

/// Deletes history older than BG_HISTORY_RETENTION_DAYS.
pub fn prune_history(ctx: &mut Ctx) -> Result<Report, Failure> {
    let days = ctx.config.bg_history_retention_days as i64;
    let n = ctx.store.prune_history(ctx.clock.now() - days * 86_400)?;
    done(n as i64, format!("deleted {n} history record(s) older than {days} days"))
}

/// What one defragmentation did.
#[derive(Debug, Clone, Copy)]
pub struct Defrag {
    pub before: DbPages,
    pub after: DbPages,
    /// Whether VACUUM ran (otherwise only the WAL was checkpointed).
    pub vacuumed: bool,
    /// The message bodies' packs (deleted mail is given back here).
    pub packs: PackCompaction,
    pub secs: f64,
}

impl Defrag {
    pub fn pages_freed(&self) -> i64 {
        (self.before.page_count - self.after.page_count).max(0)
    }

    /// Kilobytes given back to the file system: database pages and packs together (the
    /// history record's count).
    pub fn kb_freed(&self) -> i64 {
        let packs = self.packs.bytes_before.saturating_sub(self.packs.bytes_after) as i64;
        (self.pages_freed() * self.before.page_size + packs) / 1024
    }
}

/// VACUUM is worth its full rewrite of the file when a tenth of the pages, or more than
/// 1,000 pages, are free.
pub fn vacuum_worthwhile(p: &DbPages) -> bool {
    p.freelist_count * 10 > p.page_count || p.freelist_count > 1000
}

/// Compaction of the body packs, WAL checkpoint (TRUNCATE), then VACUUM when worthwhile (or
/// `force`), then a checkpoint again so that the shrunk database reaches the file and the WAL
/// is emptied. The store opens with auto_vacuum NONE, so an incremental vacuum is not
/// available: VACUUM it is.
pub fn defragment(store: &mut Store, force: bool) -> Result<Defrag, backproc_store::Error> {
    let started = Instant::now();
    let packs = store.compact_packs()?;
    store.wal_checkpoint_truncate()?;
    let before = store.db_pages()?;
    let vacuumed = force || vacuum_worthwhile(&before);
    if vacuumed {
        store.vacuum()?;
        let c = store.wal_checkpoint_truncate()?;
        if c.busy {
            log::debug!("checkpoint after VACUUM incomplete (readers active): the file shrinks at the next one");
        }
    }
    let after = store.db_pages()?;
    Ok(Defrag { before, after, vacuumed, packs, secs: started.elapsed().as_secs_f64() })
}

fn mb(bytes: i64) -> String {
    format!("{:.1}", bytes as f64 / 1_048_576.0)
}

/// The log line of a defragmentation, as the original writes it.
pub fn defrag_line(d: &Defrag) -> String {
    let what = if d.vacuumed { "" } else { " (WAL checkpoint only: not fragmented enough for VACUUM)" };
    format!(
        "DB defragmentation: {} MB -> {} MB in {:.1}s, {} page(s) freed{what}; message packs {} MB -> {} MB ({} pack(s) compacted, {} message(s) moved)",
        mb(d.before.bytes()),
        mb(d.after.bytes()),
        d.secs,
        d.pages_freed(),
        mb(d.packs.bytes_before as i64),
        mb(d.packs.bytes_after as i64),
        d.packs.removed,
        d.packs.moved
    )
}

/// DB defragmentation: WAL checkpoint, then VACUUM when worthwhile (always, by hand).
pub fn vacuum(ctx: &mut Ctx) -> Result<Report, Failure> {
    match defragment(ctx.store, ctx.by_hand) {
        Ok(d) => done(d.kb_freed(), defrag_line(&d)),
        Err(e) => {
            log::error!("Database defragmentation failed: {e}");
            Err(e.into())
        }
    }
}

/// One finished backup.
#[derive(Debug, Clone)]
pub struct BackupDone {
    pub path: PathBuf,
    pub bytes: u64,
    /// Message rows in the copy (checked by opening it).
    pub messages: i64,
    /// Older backups deleted to keep BG_BACKUP_KEEP.
    pub removed: Vec<PathBuf>,
    pub secs: f64,
}

/// `backproc-YYYYMMDD-HHMMSS.sqlite` (UTC, so that names sort in time order across DST).
pub fn backup_name(now: i64) -> String {
    let t = chrono::DateTime::from_timestamp(now, 0).unwrap_or_default();
    format!("backproc-{}.sqlite", t.format("%Y%m%d-%H%M%S"))
}

fn is_backup_name(name: &str) -> bool {
    name.starts_with("backproc-") && name.ends_with(".sqlite")
}

/// Removes a backup: its database file and its packs directory.
fn remove_backup(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(packs::dir_for(path)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Copies the store to data_dir/backup/ with SQLite's online backup API (writers go on) and
/// its message packs as hard links (`backproc-….packs/` beside `backproc-….sqlite`), checks
/// that the copy opens with `integrity_check` = ok and every body where its row says, renames
/// it into place (packs first, the database last: a partial copy never carries a backup's
/// name), and deletes all but the newest `keep` backups.
pub fn backup_now(store: &Store, data_dir: &Path, keep: usize, now: i64) -> Result<BackupDone, String> {
    use std::os::unix::fs::PermissionsExt;
    let started = Instant::now();
    let dir = data_dir.join("backup");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let name = backup_name(now);
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = remove_backup(&tmp);
    let result = (|| {
        let pack_bytes = store.backup_to(&tmp).map_err(|e| e.to_string())?;
        let check = Store::check_backup(&tmp).map_err(|e| format!("the copy does not open: {e}"))?;
        if check.integrity != "ok" {
            return Err(format!("the copy failed its integrity check: {}", check.integrity));
        }
        // Backups hold every message: nothing for "other", whatever the umask was.
        let meta = std::fs::metadata(&tmp).map_err(|e| e.to_string())?;
        let mut perm = meta.permissions();
        perm.set_mode(perm.mode() & 0o770);
        std::fs::set_permissions(&tmp, perm).map_err(|e| e.to_string())?;
        let packs = packs::dir_for(&path);
        let _ = std::fs::remove_dir_all(&packs);
        std::fs::rename(packs::dir_for(&tmp), &packs)
            .map_err(|e| format!("cannot rename the copy's packs to {}: {e}", packs.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("cannot rename the copy to {}: {e}", path.display()))?;
        Ok((check.messages, meta.len() + pack_bytes))
    })();
    let (messages, bytes) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = remove_backup(&tmp);
            return Err(e);
        }
    };
    let listed: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    // The packs of a backup whose database never got its name (a crash between the renames).
    for orphan in listed.iter().filter(|n| n.starts_with("backproc-") && n.ends_with(".packs")) {
        let db = dir.join(orphan).with_extension("sqlite");
        if !db.exists() {
            let _ = std::fs::remove_dir_all(dir.join(orphan));
        }
    }
    let mut names: Vec<String> = listed.into_iter().filter(|n| is_backup_name(n)).collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    let mut removed = Vec::new();
    for old in names.iter().skip(keep.max(1)) {
        let p = dir.join(old);
        match remove_backup(&p) {
            Ok(()) => removed.push(p),
            Err(e) => log::warn!("cannot delete the old backup {}: {e}", p.display()),
        }
    }
    Ok(BackupDone { path, bytes, messages, removed, secs: started.elapsed().as_secs_f64() })
}

/// The log line of a backup.
pub fn backup_line(b: &BackupDone) -> String {
    format!(
        "backup: {} ({} MB, {} message(s), integrity ok) in {:.1}s; {} old backup(s) deleted",
        b.path.display(),
        mb(b.bytes as i64),
        b.messages,
        b.secs,
        b.removed.len()
    )
}

/// Backup with SQLite's online backup API to data/backup/, keeping the last BG_BACKUP_KEEP.
pub fn backup(ctx: &mut Ctx) -> Result<Report, Failure> {
    let data_dir = ctx.store.path().parent().map(Path::to_path_buf).unwrap_or_default();
    match backup_now(ctx.store, &data_dir, ctx.config.bg_backup_keep as usize, ctx.clock.now()) {
        Ok(b) => done(b.messages, backup_line(&b)),
        Err(e) => {
            log::error!("Backup failed: {e}");
            Err(Failure::new(FailureKind::Other, e))
        }
    }
}

/// Full resynchronisation of an account: re-read every folder, keep what matches. Marks the
/// folders (HIGHESTMODSEQ forgotten, full sync requested); the scheduler then runs a full
/// Sync of each at once, which reads all flags and presence.
pub fn full_resync(ctx: &mut Ctx, account: i64) -> Result<Report, Failure> {
    let n = ctx.store.mark_full_resync(account, ctx.clock.now())?;
    done(n as i64, format!("full resynchronization: {n} folder(s) of account {account} marked for a full sync"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_sort_in_time_order() {
        assert_eq!(backup_name(0), "backproc-19700101-000000.sqlite");
        assert_eq!(backup_name(1_700_000_000), "backproc-20231114-221320.sqlite");
        assert!(backup_name(1_700_000_000) < backup_name(1_700_000_001));
        assert!(is_backup_name(&backup_name(5)));
        assert!(!is_backup_name(&format!(".{}.tmp", backup_name(5))));
    }

    #[test]
    fn vacuum_only_when_worthwhile() {
        let p = |count, free| DbPages { page_size: 4096, page_count: count, freelist_count: free };
        assert!(!vacuum_worthwhile(&p(100, 10)));
        assert!(vacuum_worthwhile(&p(100, 11)));
        assert!(!vacuum_worthwhile(&p(100_000, 1000)));
        assert!(vacuum_worthwhile(&p(100_000, 1001)));
    }
}
