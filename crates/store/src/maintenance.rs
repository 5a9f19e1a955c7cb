//! Maintenance of the store itself (defragmentation, online backup, full resynchronisation
//! marks) and the cheap aggregate reads behind the metrics file.

use std::path::Path;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, params};

use crate::{Error, Result, Store};

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
    pub process: String,
    pub count: i64,
    pub last_id: i64,
    pub last_duration_ms: Option<i64>,
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

    /// Copies the whole database to `dest` with SQLite's online backup API, in one step: a
    /// single read transaction, so the copy is one consistent snapshot and writers are never
    /// blocked (WAL). The copy is switched to a rollback journal so it is one self-contained
    /// file that opens read-only anywhere.
    pub fn backup_to(&self, dest: &Path) -> Result<()> {
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
        Ok(())
    }

    /// Opens a backup file read-only and checks it: integrity and its message count.
    pub fn check_backup(path: &Path) -> Result<BackupCheck> {
        let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|source| Error::Open { path: path.into(), source })?;
        let integrity: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        let messages: i64 = c.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))?;
        Ok(BackupCheck { integrity, messages })
    }

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

    /// Test and admin hook: a history record with an explicit time (e.g. dated in the past).
    pub fn add_history_at(&mut self, h: &crate::NewHistory, time: i64) -> Result<i64> {
        self.add_history(h, time)
    }

    /// Finished records with `id > after_id`, aggregated per process type. Reads only the
    /// new rows (a rowid range), so it is cheap enough for every tick once a caller keeps
    /// the watermark.
    pub fn history_finished_since(&self, after_id: i64) -> Result<Vec<FinishedSince>> {
        // SQLite takes the bare column (duration_ms) from the row that holds MAX(id).
        let mut st = self.conn().prepare_cached(
            "SELECT process, COALESCE(SUM(count), 0), MAX(id), duration_ms FROM history
             WHERE id > ? AND status = 'Finished' GROUP BY process ORDER BY process",
        )?;
        let v = st
            .query_map([after_id], |r| {
                Ok(FinishedSince {
                    process: r.get(0)?,
                    count: r.get(1)?,
                    last_id: r.get(2)?,
                    last_duration_ms: r.get(3)?,
                })
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
