//! The running master and its workers, as `status` reads them; interval job bookkeeping.

use rusqlite::{OptionalExtension, params};

use crate::{Result, Store};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MasterRow {
    pub pid: i64,
    pub started: i64,
    pub heartbeat: i64,
    pub stopped: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkerRow {
    pub thread: i64,
    pub task: Option<String>,
    pub account_id: Option<i64>,
    pub folder_id: Option<i64>,
    pub done: Option<i64>,
    pub total: Option<i64>,
    pub since: Option<i64>,
}

/// How an account is watched now (`push_state`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PushRow {
    pub account_id: i64,
    /// NOTIFY, IDLE or polling.
    pub mode: String,
    pub since: i64,
    pub note: Option<String>,
}

/// An account the engine keeps a push connection for, with its high-priority folders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCandidate {
    pub account_id: i64,
    pub imap_host: String,
    pub folders: Vec<PushFolder>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushFolder {
    pub id: i64,
    /// The verbatim IMAP name.
    pub name: String,
    pub uidvalidity: Option<i64>,
    pub last_seen_uid: i64,
}

impl Store {
    /// Enabled accounts that are not waiting for a person and have high-priority folders,
    /// whose owner is logged in (or every one, `all`), with those folders.
    pub fn push_candidates(&self, now: i64, all: bool) -> Result<Vec<PushCandidate>> {
        let mut st = self.conn().prepare_cached(
            "SELECT a.id, a.imap_host, f.id, f.name, f.uidvalidity, f.last_seen_uid
             FROM accounts a JOIN users u ON u.id = a.owner_id
             JOIN folders f ON f.account_id = a.id AND f.priority = 'high' AND f.gone = 0 AND f.unusable IS NULL
             WHERE a.enabled = 1 AND a.needs_authorization IS NULL AND (?2 OR COALESCE(u.session_expires > ?1, 0))
             ORDER BY a.id, f.id",
        )?;
        let mut out: Vec<PushCandidate> = Vec::new();
        let mut rows = st.query(params![now, all])?;
        while let Some(r) = rows.next()? {
            let account_id: i64 = r.get(0)?;
            let folder =
                PushFolder { id: r.get(2)?, name: r.get(3)?, uidvalidity: r.get(4)?, last_seen_uid: r.get(5)? };
            match out.last_mut() {
                Some(c) if c.account_id == account_id => c.folders.push(folder),
                _ => out.push(PushCandidate { account_id, imap_host: r.get(1)?, folders: vec![folder] }),
            }
        }
        Ok(out)
    }

    /// Records how an account is watched from now on; `None` forgets it (no push wanted).
    pub fn set_push_state(&mut self, account: i64, state: Option<(&str, Option<&str>)>, now: i64) -> Result<()> {
        self.write(|tx| {
            match state {
                Some((mode, note)) => tx.execute(
                    "INSERT INTO push_state (account_id, mode, since, note) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (account_id) DO UPDATE SET mode = ?2, since = ?3, note = ?4",
                    params![account, mode, now, note],
                )?,
                None => tx.execute("DELETE FROM push_state WHERE account_id = ?", [account])?,
            };
            Ok(())
        })
    }

    pub fn push_states(&self) -> Result<Vec<PushRow>> {
        let mut st =
            self.conn().prepare_cached("SELECT account_id, mode, since, note FROM push_state ORDER BY account_id")?;
        let v = st
            .query_map([], |r| {
                Ok(PushRow { account_id: r.get(0)?, mode: r.get(1)?, since: r.get(2)?, note: r.get(3)? })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    pub fn master_started(&mut self, pid: u32, now: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO master (id, pid, started, heartbeat, stopped) VALUES (1, ?1, ?2, ?2, NULL)
                 ON CONFLICT (id) DO UPDATE SET pid = ?1, started = ?2, heartbeat = ?2, stopped = NULL",
                params![pid, now],
            )?;
            tx.execute("DELETE FROM workers", [])?;
            tx.execute("DELETE FROM push_state", [])?;
            Ok(())
        })
    }

    pub fn master_heartbeat(&mut self, now: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute("UPDATE master SET heartbeat = ? WHERE id = 1", [now])?;
            Ok(())
        })
    }

    pub fn master_stopped(&mut self, now: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute("UPDATE master SET stopped = ? WHERE id = 1", [now])?;
            tx.execute("DELETE FROM workers", [])?;
            tx.execute("DELETE FROM push_state", [])?;
            Ok(())
        })
    }

    pub fn master(&self) -> Result<Option<MasterRow>> {
        Ok(self
            .conn()
            .query_row("SELECT pid, started, heartbeat, stopped FROM master WHERE id = 1", [], |r| {
                Ok(MasterRow { pid: r.get(0)?, started: r.get(1)?, heartbeat: r.get(2)?, stopped: r.get(3)? })
            })
            .optional()?)
    }

    /// What worker `thread` does now (`task` None = idle).
    pub fn set_worker(&mut self, w: &WorkerRow) -> Result<()> {
        self.write(|tx| set_worker(tx, w))
    }

    pub fn workers(&self) -> Result<Vec<WorkerRow>> {
        let mut st = self
            .conn()
            .prepare("SELECT thread, task, account_id, folder_id, done, total, since FROM workers ORDER BY thread")?;
        let v = st
            .query_map([], |r| {
                Ok(WorkerRow {
                    thread: r.get(0)?,
                    task: r.get(1)?,
                    account_id: r.get(2)?,
                    folder_id: r.get(3)?,
                    done: r.get(4)?,
                    total: r.get(5)?,
                    since: r.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    pub fn job_last_run(&self, job: &str) -> Result<Option<i64>> {
        Ok(self.conn().query_row("SELECT last_run FROM job_runs WHERE job = ?", [job], |r| r.get(0)).optional()?)
    }

    pub fn set_job_last_run(&mut self, job: &str, when: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute("INSERT OR REPLACE INTO job_runs (job, last_run) VALUES (?, ?)", params![job, when])?;
            Ok(())
        })
    }

    pub fn add_counter(&mut self, name: &str, by: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO counters (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = value + ?2",
                params![name, by],
            )?;
            Ok(())
        })
    }

    pub fn counters(&self) -> Result<Vec<(String, i64)>> {
        let mut st = self.conn().prepare("SELECT name, value FROM counters ORDER BY name")?;
        let v = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }
}

pub(crate) fn set_worker(tx: &rusqlite::Transaction, w: &WorkerRow) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO workers (thread, task, account_id, folder_id, done, total, since)
         VALUES (?,?,?,?,?,?,?)",
    )?
    .execute(params![w.thread, w.task, w.account_id, w.folder_id, w.done, w.total, w.since])?;
    Ok(())
}
