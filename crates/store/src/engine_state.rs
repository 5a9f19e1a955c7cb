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

impl Store {
    pub fn master_started(&mut self, pid: u32, now: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO master (id, pid, started, heartbeat, stopped) VALUES (1, ?1, ?2, ?2, NULL)
                 ON CONFLICT (id) DO UPDATE SET pid = ?1, started = ?2, heartbeat = ?2, stopped = NULL",
                params![pid, now],
            )?;
            tx.execute("DELETE FROM workers", [])?;
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
