//! The SQLite store: schema, migrations and every SQL statement of backproc.
//!
//! Invariant: no other crate writes SQL; they call functions here named for what they do.
//! Each thread opens its own [`Store`] (a connection); the database file is shared.
//!
//! Concurrency choice: WAL mode with short `BEGIN IMMEDIATE` write transactions and a
//! generous busy timeout. A plain `BEGIN` that later writes fails with SQLITE_BUSY at once
//! (SQLite cannot wait when a read transaction must be upgraded), whereas `BEGIN IMMEDIATE`
//! takes the write lock up front and so honours `busy_timeout`. Writers are short (one batch of
//! messages, one queue update), so waiting is cheap, and readers (`status`, the CLI) never
//! block writers in WAL mode. A single writer thread would serialise the same way but would
//! need a channel round trip for every write and could not share a transaction with reads.
//! Inside one process the writers also queue on a mutex ([`WRITER`]) before `BEGIN IMMEDIATE`:
//! SQLite's busy handler sleeps 1, 2, 5, 10… ms between retries, so four workers sending
//! mail spent most of their time asleep; a mutex hands the lock over at once.

mod accounts;
mod engine_state;
mod history;
pub mod internal;
mod local;
mod mail;
pub mod maintenance;
pub mod outbox;
pub mod packs;
mod schema;
#[cfg(any(test, feature = "test-support"))]
mod test_support;
mod users;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};

pub use accounts::{Account, Auth, NEVER, NewAccount, OAuth, Security, SmtpSettings};
pub use engine_state::{MasterRow, PushCandidate, PushFolder, PushRow, WorkerRow};
pub use history::{HistoryFilter, HistoryRow, NewHistory};
pub use local::{DeletionWork, FlagEdit, MailRow};
pub use mail::*;
pub use users::User;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the store {path} has schema version {found}, newer than this backproc knows ({known}); upgrade backproc")]
    TooNew { path: PathBuf, found: i64, known: i64 },
    #[error("cannot migrate the store to schema version {version}: {source}")]
    Migrate {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// Reading or writing the message bodies' pack files (a full disk, a missing pack).
    #[error("message bodies in {path}: {source}")]
    Packs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Taken by every write transaction of this process (see the crate docs). Other processes
/// (the CLI) still meet the master through SQLite's lock and `busy_timeout`.
static WRITER: Mutex<()> = Mutex::new(());

/// One connection to the store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The pack this connection appends bodies to, taken at its first write (packs.rs).
    packs: Option<packs::PackWriter>,
}

impl Store {
    /// Opens (creating if needed) and migrates the store.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).map_err(|source| Error::Open { path: path.into(), source })?;
        // Group-writable, as the original asks (`chmod g+rwX`): SQLite creates files 0644 less
        // the umask, and gives the -wal/-shm files the mode of the database file.
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(path)
                && m.permissions().mode() & 0o060 != 0o060
            {
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(m.permissions().mode() | 0o060));
            }
        }
        let mut store = Store { conn, path: path.into(), packs: None };
        store.configure().map_err(|source| Error::Open { path: path.into(), source })?;
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing store read-only, without migrating (for `status` while a master runs).
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| Error::Open { path: path.into(), source })?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let store = Store { conn, path: path.into(), packs: None };
        store.check_version()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of the message bodies' pack files.
    pub fn packs_dir(&self) -> PathBuf {
        packs::dir_for(&self.path)
    }

    pub(crate) fn packs_error(&self, source: std::io::Error) -> Error {
        Error::Packs { path: self.packs_dir(), source }
    }

    /// This connection's pack writer, opened (and its pack locked) on first use.
    pub(crate) fn pack_writer(&mut self) -> Result<&mut packs::PackWriter> {
        if self.packs.is_none() {
            let w = packs::PackWriter::open(&self.packs_dir()).map_err(|e| self.packs_error(e))?;
            self.packs = Some(w);
        }
        Ok(self.packs.as_mut().expect("set above"))
    }

    /// The raw bytes of a stored message. A compaction may move the body between our read of
    /// its row and our read of the pack (and delete the old pack): then the row is read again.
    pub(crate) fn body(&self, message_id: i64) -> Result<Option<Vec<u8>>> {
        let dir = self.packs_dir();
        let mut tries = 0;
        loop {
            let Some((pack, start, length)): Option<(i64, i64, i64)> = self
                .conn
                .query_row("SELECT pack, start, length FROM message_bodies WHERE message_id = ?", [message_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?
            else {
                return Ok(None);
            };
            match packs::read(&dir, pack, start, length) {
                Ok(b) => return Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
                Err(e) => return Err(self.packs_error(e)),
            }
        }
    }

    fn configure(&self) -> rusqlite::Result<()> {
        self.conn.busy_timeout(Duration::from_secs(60))?;
        // WAL: readers never block the writer. synchronous=NORMAL: a commit is durable once
        // the WAL is synced at checkpoint; a power cut may lose the last commits but never
        // corrupts, and every watermark moves in the same transaction as the data it covers,
        // so a lost commit is simply redone. Commits that must be durable at once (an outbox
        // claim) use `durable_write`; a batch of commits is made durable by `sync_wal`.
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.conn.pragma_update(None, "foreign_keys", "ON")?;
        self.conn.pragma_update(None, "temp_store", "MEMORY")?;
        // A page cache of 1 MB a connection instead of SQLite's 2: a receive holds four
        // connections, and as their caches filled, the initial sync's peak grew from 21.5 MB
        // at 20,000 messages to 24–27 MB at 100,000 (22.0–22.5 MB with 1 MB; no slower in the
        // same runs). The pages it drops are still in the kernel's cache.
        self.conn.pragma_update(None, "cache_size", -1024)?;
        // Checkpoint often enough that the WAL stays small under constant writes
        // (`checkpoint_truncate` is also called by maintenance).
        self.conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
        // No checkpoint when the last connection closes: it copies the WAL into the database
        // with two fsyncs, and the next write re-creates the WAL with two more (its header and
        // the directory), 3–8 ms of a 35 ms no-change `run --once` on disk. The WAL stays, as
        // after a crash (nothing is less durable: synchronous=NORMAL syncs at checkpoints
        // only); the next open reads it back, which is cheap while it is small, and the
        // master checkpoints it when it stops if it has grown (`checkpoint_if_wal_over`).
        self.conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        Ok(())
    }

    fn version(&self) -> Result<i64> {
        Ok(self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    fn check_version(&self) -> Result<()> {
        let found = self.version()?;
        let known = schema::MIGRATIONS.len() as i64;
        if found > known {
            return Err(Error::TooNew { path: self.path.clone(), found, known });
        }
        Ok(())
    }

    fn migrate(&mut self) -> Result<()> {
        self.check_version()?;
        // Up to date (every open but the first after an upgrade): no write lock. Taken with
        // BEGIN IMMEDIATE outside the in-process writer queue ([`WRITER`]), it met the
        // master's or another worker's write and waited in SQLite's sleeping busy handler
        // (1-3 ms of a 30 ms `run --once`).
        if self.version()? == schema::MIGRATIONS.len() as i64 {
            return Ok(());
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Re-read under the write lock: two processes may start at once.
        let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.execute_batch(sql).map_err(|source| Error::Migrate { version: i + 1, source })?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs `f` in a short write transaction (BEGIN IMMEDIATE; see the crate docs).
    pub(crate) fn write<T>(&mut self, f: impl FnOnce(&Transaction) -> Result<T>) -> Result<T> {
        // A panic while holding it poisons nothing we rely on: the transaction rolled back.
        let _turn = WRITER.lock().unwrap_or_else(|p| p.into_inner());
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Like `write`, but the commit is on disk when this returns (synchronous=FULL for it).
    pub(crate) fn durable_write<T>(&mut self, f: impl FnOnce(&Transaction) -> Result<T>) -> Result<T> {
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        let out = self.write(f);
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        out
    }

    /// Makes every transaction committed so far durable: fsync of the WAL file, which holds
    /// every commit not yet checkpointed (a checkpoint syncs what it copies). One call after a
    /// batch of `synchronous=NORMAL` commits costs one fsync instead of one per commit.
    pub fn sync_wal(&self) -> Result<()> {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        match std::fs::File::open(&wal) {
            Ok(f) => {
                f.sync_data().map_err(|e| Error::Invalid(format!("cannot sync {}: {e}", Path::new(&wal).display())))
            }
            // No WAL file: nothing was written since the last checkpoint removed it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Invalid(format!("cannot open {}: {e}", Path::new(&wal).display()))),
        }
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// `PRAGMA integrity_check`, then every body reference checked against its pack (the
    /// record header at the offset must announce the row's length): "ok" when healthy, else
    /// what is wrong.
    pub fn integrity_check(&self) -> Result<String> {
        let sql: String = self.conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if sql != "ok" {
            return Ok(sql);
        }
        Ok(check_bodies(&self.conn, &self.packs_dir())?.unwrap_or(sql))
    }

    /// `checkpoint_truncate` when the WAL file is larger than `bytes` (connections do not
    /// checkpoint on close, see `configure`): bounds what the next open reads back.
    /// Returns whether it checkpointed.
    pub fn checkpoint_if_wal_over(&self, bytes: u64) -> Result<bool> {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        match std::fs::metadata(&wal) {
            Ok(m) if m.len() > bytes => self.checkpoint_truncate().map(|_| true),
            _ => Ok(false),
        }
    }

    /// Moves the WAL into the database and truncates it.
    pub fn checkpoint_truncate(&self) -> Result<()> {
        self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// Checks every row of `message_bodies` against the packs in `dir`: None when all are good,
/// else the first problems found.
pub(crate) fn check_bodies(conn: &Connection, dir: &Path) -> Result<Option<String>> {
    let mut st = conn.prepare("SELECT message_id, pack, start, length FROM message_bodies ORDER BY pack, start")?;
    let mut rows = st.query([])?;
    let mut open: Option<(i64, std::fs::File)> = None;
    let mut problems = Vec::new();
    while let Some(r) = rows.next()? {
        let (id, pack, start, length): (i64, i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
        if open.as_ref().is_none_or(|(p, _)| *p != pack) {
            match std::fs::File::open(dir.join(packs::file_name(pack))) {
                Ok(f) => open = Some((pack, f)),
                Err(e) => {
                    problems.push(format!("message {id}: pack {}: {e}", packs::file_name(pack)));
                    open = None;
                    continue;
                }
            }
        }
        let (_, f) = open.as_ref().expect("opened above");
        if let Err(e) = packs::check_ref(f, pack, start, length) {
            problems.push(format!("message {id}: {e}"));
        }
        if problems.len() >= 10 {
            break;
        }
    }
    Ok((!problems.is_empty()).then(|| problems.join("; ")))
}

/// Current unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A store in `dir` with user "u" and one account of theirs (unit tests of this crate).
#[cfg(test)]
pub(crate) fn test_store(dir: &Path) -> (Store, i64) {
    let mut s = Store::open(&dir.join("s.sqlite")).unwrap();
    s.add_user("u", 0).unwrap();
    let account = NewAccount {
        owner_login: "u".into(),
        email: "u@x.test".into(),
        imap_host: "127.0.0.1".into(),
        imap_port: 143,
        login: "u".into(),
        password: Some("p".into()),
        ..NewAccount::default()
    };
    let a = s.add_account(&account, 0).unwrap();
    (s, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        {
            let s = Store::open(&path).unwrap();
            assert_eq!(s.version().unwrap(), schema::MIGRATIONS.len() as i64);
        }
        // reopening is a no-op
        Store::open(&path).unwrap();
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        match Store::open(&path) {
            Err(Error::TooNew { found: 99, .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a newer schema must be refused"),
        }
        // and nothing was changed
        let c = Connection::open(&path).unwrap();
        let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, 99);
    }
}
