//! Maintenance of the store itself (defragmentation, online backup, full resynchronisation
//! marks) and the cheap aggregate reads behind the metrics file.

use std::path::Path;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, params};

use crate::{Error, Result, Store, packs};

/// Page accounting of the database file (`PRAGMA page_count`, `freelist_count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbPages {
    pub page_size: i64,
    pub page_count: i64,
    pub freelist_count: i64,
}

impl DbPages {
    /// Size of the main database file in bytes (once the WAL is checkpointed).
    pub fn bytes(&self) -> i64 {
        self.page_size * self.page_count
    }
}

/// What one checkpoint did (`PRAGMA wal_checkpoint`): `busy` when readers or a writer kept it
/// from completing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub busy: bool,
    pub wal_pages: i64,
    pub checkpointed: i64,
}

/// Per process type, from the Finished history records with an id above a watermark: the sum
/// of their counts, the newest id, and that newest run's duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedSince {
    /// The job kind, or the process name of a row without one.
    pub key: String,
    pub count: i64,
    pub last_id: i64,
    pub last_duration_ms: Option<i64>,
}

/// What one compaction of the body packs did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackCompaction {
    /// Bytes of all packs before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Packs deleted (their live bodies moved first).
    pub removed: usize,
    /// Bodies moved to another pack.
    pub moved: usize,
}

/// A pack is rewritten once less than half of it is bodies still referenced (the rest:
/// deleted messages, and the garbage of writes that never committed).
fn worth_compacting(live: u64, size: u64) -> bool {
    live * 2 < size
}

/// One backup's verification: message rows and `PRAGMA integrity_check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupCheck {
    pub integrity: String,
    pub messages: i64,
}

impl Store {
    pub fn db_pages(&self) -> Result<DbPages> {
        let c = self.conn();
        let get = |p: &str| c.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0));
        Ok(DbPages {
            page_size: get("page_size")?,
            page_count: get("page_count")?,
            freelist_count: get("freelist_count")?,
        })
    }

    /// `PRAGMA wal_checkpoint(TRUNCATE)`: moves the WAL into the database file and empties it.
    pub fn wal_checkpoint_truncate(&self) -> Result<Checkpoint> {
        Ok(self.conn().query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok(Checkpoint { busy: r.get::<_, i64>(0)? != 0, wal_pages: r.get(1)?, checkpointed: r.get(2)? })
        })?)
    }

    /// Rebuilds the database file without its free pages. Works in WAL mode (the rebuilt pages
    /// go through the WAL; a checkpoint afterwards shrinks the file). Waits for the write
    /// lock like any writer (busy timeout); readers go on meanwhile.
    pub fn vacuum(&mut self) -> Result<()> {
        self.conn().execute_batch("VACUUM")?;
        Ok(())
    }

    /// Moves the live bodies out of every pack that is mostly dead space and deletes it
    /// (packs.rs, invariant 3). Packs a writer holds are left for next time, and so is all
    /// of it while a backup runs.
    pub fn compact_packs(&mut self) -> Result<PackCompaction> {
        let dir = self.packs_dir();
        let io = |s: &Store, e| s.packs_error(e);
        let mut done = PackCompaction::default();
        let numbers = packs::list(&dir).map_err(|e| io(self, e))?;
        if numbers.is_empty() {
            return Ok(done);
        }
        let _compaction = packs::lock_compaction(&dir, true).map_err(|e| io(self, e))?;
        done.bytes_before = packs::total_bytes(&dir).map_err(|e| io(self, e))?;
        let live: std::collections::HashMap<i64, u64> = {
            let mut st = self.conn().prepare(&format!(
                "SELECT pack, SUM(length) + {} * COUNT(*) FROM message_bodies GROUP BY pack",
                packs::HEADER
            ))?;
            st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?.collect::<rusqlite::Result<_>>()?
        };
        // Lock every candidate before taking a writer, so the writer cannot pick one of them.
        let mut held = Vec::new();
        for n in numbers {
            let size = std::fs::metadata(dir.join(packs::file_name(n))).map(|m| m.len()).unwrap_or(0);
            if !worth_compacting(live.get(&n).copied().unwrap_or(0), size) {
                continue;
            }
            if let Some(f) = packs::open_locked(&dir, n).map_err(|e| io(self, e))? {
                held.push((n, f));
            }
        }
        for (n, file) in &held {
            // Re-read under the lock: rows committed after the sums above are counted now.
            let rows: Vec<(i64, i64, i64)> = {
                let mut st =
                    self.conn().prepare("SELECT message_id, start, length FROM message_bodies WHERE pack = ?")?;
                st.query_map([n], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<_>>()?
            };
            let mut moved = Vec::with_capacity(rows.len());
            for &(id, start, length) in &rows {
                packs::check_ref(file, *n, start, length).map_err(|e| io(self, e))?;
                let mut body = vec![0u8; length as usize];
                std::os::unix::fs::FileExt::read_exact_at(file, &mut body, start as u64).map_err(|e| io(self, e))?;
                let w = self.pack_writer()?;
                let to = w.append(&body).map_err(|e| io(self, e))?;
                moved.push((id, start, to));
            }
            if !moved.is_empty() {
                let w = self.pack_writer()?;
                w.sync().map_err(|e| io(self, e))?;
                // The unlink below must never be on disk before this commit is.
                self.durable_write(|tx| {
                    let mut up = tx.prepare_cached(
                        "UPDATE message_bodies SET pack = ?, start = ? WHERE message_id = ? AND pack = ? AND start = ?",
                    )?;
                    for (id, old, (pack, start)) in &moved {
                        up.execute(params![pack, start, id, n, old])?;
                    }
                    Ok(())
                })?;
            }
            std::fs::remove_file(dir.join(packs::file_name(*n))).map_err(|e| io(self, e))?;
            done.removed += 1;
            done.moved += moved.len();
        }
        // Release the pack this connection wrote to: compaction is rare, receiving is not.
        self.packs = None;
        if done.removed > 0 {
            packs::sync_dir(&dir).map_err(|e| io(self, e))?;
        }
        done.bytes_after = packs::total_bytes(&dir).map_err(|e| io(self, e))?;
        Ok(done)
    }

    /// Copies the whole database to `dest` with SQLite's online backup API, in one step: a
    /// single read transaction, so the copy is one consistent snapshot and writers are never
    /// blocked (WAL). The copy is switched to a rollback journal so it is one self-contained
    /// file that opens read-only anywhere. The body packs are hard-linked (copied across file
    /// systems) into `packs::dir_for(dest)`, which must not exist; returns their bytes.
    pub fn backup_to(&self, dest: &Path) -> Result<u64> {
        let dir = self.packs_dir();
        // Held until the packs are linked (packs.rs, invariant 4).
        let _no_compaction = packs::lock_compaction(&dir, false).map_err(|e| self.packs_error(e))?;
        let mut to = Connection::open(dest)?;
        {
            let b = Backup::new(self.conn(), &mut to)?;
            let mut tries = 0;
            loop {
                match b.step(-1)? {
                    StepResult::Done => break,
                    // More/Busy/Locked: the destination is ours alone, so only a busy source
                    // lock can get here; try again shortly, for about a minute.
                    _ if tries < 1200 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    _ => return Err(Error::Invalid("the store stayed locked for a minute during the backup".into())),
                }
            }
        }
        to.pragma_update(None, "journal_mode", "DELETE")?;
        to.close().map_err(|(_, e)| Error::Sql(e))?;
        let to = packs::dir_for(dest);
        packs::link_all(&dir, &to).map_err(|source| Error::Packs { path: to, source })
    }

    /// Opens a backup file read-only and checks it: integrity, every body reference against
    /// its packs, and its message count.
    pub fn check_backup(path: &Path) -> Result<BackupCheck> {
        let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|source| Error::Open { path: path.into(), source })?;
        let mut integrity: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if integrity == "ok"
            && let Some(problems) = crate::check_bodies(&c, &packs::dir_for(path))?
        {
            integrity = problems;
        }
        let messages: i64 = c.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))?;
        Ok(BackupCheck { integrity, messages })
    }

    #[cfg(any(test, feature = "test-support"))]
    /// Message rows in the store (for `maintenance backup`'s report and tests).
    pub fn message_count(&self) -> Result<i64> {
        Ok(self.conn().query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))?)
    }

    /// Full resynchronisation of an account: forgets each folder's HIGHESTMODSEQ and makes a
    /// full sync due at once, so the next Sync (full) reads every flag and which UIDs are
    /// still present; what matches is kept (UIDs below the watermark are not downloaded
    /// again). Folders set to priority off stay excluded. Returns the folders marked.
    pub fn mark_full_resync(&mut self, account_id: i64, now: i64) -> Result<usize> {
        self.write(|tx| {
            let exists: i64 = tx.query_row("SELECT COUNT(*) FROM accounts WHERE id = ?", [account_id], |r| r.get(0))?;
            if exists == 0 {
                return Err(Error::NotFound { what: "account", id: account_id.to_string() });
            }
            Ok(tx.execute(
                "UPDATE folders SET highest_modseq = NULL, sync_requested = ?2
                 WHERE account_id = ?1 AND gone = 0 AND priority != 'off'",
                params![account_id, now],
            )?)
        })
    }

    #[cfg(any(test, feature = "test-support"))]
    /// Test and admin hook: a history record with an explicit time (e.g. dated in the past).
    pub fn add_history_at(&mut self, h: &crate::NewHistory, time: i64) -> Result<i64> {
        self.add_history(h, time)
    }

    /// Finished records with `id > after_id`, aggregated per job kind (per process name for
    /// rows without one). Reads only the
    /// new rows (a rowid range), so it is cheap enough for every tick once a caller keeps
    /// the watermark.
    pub fn history_finished_since(&self, after_id: i64) -> Result<Vec<FinishedSince>> {
        // SQLite takes the bare column (duration_ms) from the row that holds MAX(id).
        let mut st = self.conn().prepare_cached(
            "SELECT COALESCE(kind, process) AS key, COALESCE(SUM(count), 0), MAX(id), duration_ms FROM history
             WHERE id > ? AND status = 'Finished' GROUP BY key ORDER BY key",
        )?;
        let v = st
            .query_map([after_id], |r| {
                Ok(FinishedSince { key: r.get(0)?, count: r.get(1)?, last_id: r.get(2)?, last_duration_ms: r.get(3)? })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// Receive queue depth per lane (primary, secondary, failed), from the queue's index.
    pub fn receive_queue_lanes(&self) -> Result<Vec<(String, i64)>> {
        let mut st =
            self.conn().prepare_cached("SELECT queue, COUNT(*) FROM receive_queue GROUP BY queue ORDER BY queue")?;
        let v = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// Last successful connection of each account: (account id, unix time or None).
    pub fn account_last_success(&self) -> Result<Vec<(i64, Option<i64>)>> {
        let mut st = self.conn().prepare_cached("SELECT id, last_success FROM accounts ORDER BY id")?;
        let v = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewHistory;

    #[test]
    fn finished_since_sums_new_rows_and_takes_the_newest_duration() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let h = |status, count, ms| NewHistory {
            process: "Receive",
            status,
            count: Some(count),
            duration_ms: Some(ms),
            ..Default::default()
        };
        s.add_history(&h("Started", 0, 0), 1).unwrap();
        let a = s.add_history(&h("Finished", 5, 100), 2).unwrap();
        s.add_history(&h("Finished", 7, 300), 3).unwrap();
        s.add_history(&h("Authentication failed", 9, 1), 4).unwrap();
        let all = s.history_finished_since(0).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].count, all[0].last_duration_ms), (12, Some(300)));
        let newer = s.history_finished_since(a).unwrap();
        assert_eq!(newer[0].count, 7);
        assert!(s.history_finished_since(newer[0].last_id).unwrap().is_empty());
        // Rows with a kind are summed by it, whatever their display name.
        let last = newer[0].last_id;
        for (kind, process) in [("receive", "Receive"), ("receive", "Receiving"), ("sync_delete", "Sync Delete")] {
            let row =
                NewHistory { kind: Some(kind), process, status: "Finished", count: Some(1), ..Default::default() };
            s.add_history(&row, 5).unwrap();
        }
        let by_kind: Vec<(String, i64)> =
            s.history_finished_since(last).unwrap().into_iter().map(|f| (f.key, f.count)).collect();
        assert_eq!(by_kind, [("receive".to_string(), 2), ("sync_delete".to_string(), 1)]);
    }

    /// A store with one folder holding `n` messages whose bodies are `body(uid)`.
    fn store_with_mail(dir: &Path, n: i64) -> (Store, i64) {
        let (mut s, a) = crate::test_store(dir);
        let listed = [crate::FolderListing {
            name: "INBOX".into(),
            display_name: "INBOX".into(),
            delimiter: None,
            special_use: None,
            unusable: None,
        }];
        s.record_folder_list(a, &listed).unwrap();
        let folder = s.account_folders(a).unwrap()[0].id;
        let msgs: Vec<crate::NewMessage> =
            (1..=n).map(|uid| crate::NewMessage { uid, raw: body(uid), ..Default::default() }).collect();
        // two batches, so that the bodies span two appends of the same pack
        let (one, two) = msgs.split_at(msgs.len() / 2);
        assert_eq!(
            s.store_received(folder, one, &[]).unwrap() + s.store_received(folder, two, &[]).unwrap(),
            n as usize
        );
        (s, folder)
    }

    fn body(uid: i64) -> Vec<u8> {
        format!("Subject: {uid}\r\n\r\n{}\r\n", "x".repeat(uid as usize * 37)).into_bytes()
    }

    #[test]
    fn compaction_moves_live_bodies_out_of_mostly_dead_packs_and_deletes_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, folder) = store_with_mail(dir.path(), 200);
        let packs_dir = s.packs_dir();
        // nothing to do while every body is live
        let none = s.compact_packs().unwrap();
        assert_eq!((none.removed, none.moved), (0, 0));
        assert_eq!(none.bytes_before, none.bytes_after);
        // the receive writer of this connection still holds pack 1: release it
        s.packs = None;
        s.conn().execute("DELETE FROM messages WHERE uid % 4 != 0", []).unwrap();
        let done = s.compact_packs().unwrap();
        assert_eq!(done.removed, 1);
        assert_eq!(done.moved, 50);
        assert!(done.bytes_after * 3 < done.bytes_before, "{done:?}");
        assert_eq!(packs::list(&packs_dir).unwrap(), vec![2]);
        assert_eq!(s.integrity_check().unwrap(), "ok");
        for uid in 1..=200 {
            let got = s.message_raw(folder, uid).unwrap();
            assert_eq!(got, (uid % 4 == 0).then(|| body(uid)), "uid {uid}");
        }
        // a pack left with no live body at all goes without a copy
        s.conn().execute("DELETE FROM messages", []).unwrap();
        let empty = s.compact_packs().unwrap();
        assert_eq!((empty.removed, empty.moved, empty.bytes_after), (1, 0, 0));
    }

    #[test]
    fn a_pack_a_writer_holds_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, folder) = store_with_mail(dir.path(), 20);
        s.conn().execute("DELETE FROM messages WHERE uid > 1", []).unwrap();
        // a second connection (another worker) is appending to pack 1
        let mut other = Store::open(&dir.path().join("s.sqlite")).unwrap();
        std::mem::swap(&mut other.packs, &mut s.packs);
        assert_eq!(s.compact_packs().unwrap().removed, 0);
        assert_eq!(s.message_raw(folder, 1).unwrap(), Some(body(1)));
        drop(other);
        assert_eq!(s.compact_packs().unwrap().removed, 1);
        assert_eq!(s.message_raw(folder, 1).unwrap(), Some(body(1)));
    }

    #[test]
    fn integrity_and_backup_checks_see_a_broken_body_reference() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, folder) = store_with_mail(dir.path(), 10);
        let dest = dir.path().join("b.sqlite");
        assert!(s.backup_to(&dest).unwrap() > 0);
        assert_eq!(Store::check_backup(&dest).unwrap(), BackupCheck { integrity: "ok".into(), messages: 10 });
        // the backup's packs are its own names: deleting the store's leaves the backup whole
        s.packs = None;
        s.conn().execute("DELETE FROM messages", []).unwrap();
        s.compact_packs().unwrap();
        assert_eq!(Store::check_backup(&dest).unwrap().integrity, "ok");
        let b = Store::open(&dest).unwrap();
        assert_eq!(b.message_raw(folder, 3).unwrap(), Some(body(3)));
        drop(b);
        // a reference off by one byte, and a missing pack
        let c = Connection::open(&dest).unwrap();
        c.execute("UPDATE message_bodies SET start = start + 1 WHERE message_id = 1", []).unwrap();
        drop(c);
        let bad = Store::check_backup(&dest).unwrap().integrity;
        assert!(bad.contains("no record header") && bad.starts_with("message 1:"), "{bad}");
        std::fs::remove_dir_all(packs::dir_for(&dest)).unwrap();
        let gone = Store::check_backup(&dest).unwrap().integrity;
        assert!(gone.contains("No such file"), "{gone}");
    }

    #[test]
    fn vacuum_returns_free_pages_and_backup_is_a_consistent_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        s.conn()
            .execute_batch(
                "CREATE TABLE junk (b BLOB);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                 INSERT INTO junk SELECT zeroblob(4000) FROM n;
                 DELETE FROM junk;",
            )
            .unwrap();
        s.wal_checkpoint_truncate().unwrap();
        let before = s.db_pages().unwrap();
        assert!(before.freelist_count > 1000, "{before:?}");
        s.vacuum().unwrap();
        s.wal_checkpoint_truncate().unwrap();
        let after = s.db_pages().unwrap();
        assert_eq!(after.freelist_count, 0);
        assert!(after.page_count < before.page_count / 10, "{before:?} {after:?}");
        let dest = dir.path().join("b.sqlite");
        s.backup_to(&dest).unwrap();
        let check = Store::check_backup(&dest).unwrap();
        assert_eq!(check, BackupCheck { integrity: "ok".into(), messages: 0 });
        assert!(!dir.path().join("b.sqlite-wal").exists());
    }
}
