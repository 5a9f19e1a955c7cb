//! History of background processes: Started, Finished or an error, per run.

use rusqlite::params;

use crate::{Result, Store, WorkerRow};

#[derive(Debug, Clone, Default)]
pub struct NewHistory<'a> {
    /// The job kind (`Job::key` of the engine), by which the engine reads history back.
    pub kind: Option<&'a str>,
    /// What history shows ("Sync (full)", "Receive"…).
    pub process: &'a str,
    pub status: &'a str,
    pub detail: Option<&'a str>,
    pub account_id: Option<i64>,
    pub folder_id: Option<i64>,
    pub count: Option<i64>,
    pub duration_ms: Option<i64>,
    pub thread: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryRow {
    pub id: i64,
    pub time: i64,
    pub kind: Option<String>,
    pub process: String,
    pub status: String,
    pub detail: Option<String>,
    pub account_id: Option<i64>,
    pub folder_id: Option<i64>,
    pub count: Option<i64>,
    pub duration_ms: Option<i64>,
    pub pid: Option<i64>,
    pub thread: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub since: i64,
    pub process: Option<String>,
    pub kind: Option<String>,
    pub account_id: Option<i64>,
    pub errors_only: bool,
    pub limit: Option<i64>,
}

impl Store {
    pub fn add_history(&mut self, h: &NewHistory, now: i64) -> Result<i64> {
        self.write(|tx| add_history(tx, h, now))
    }

    /// A task's start, in one commit: its history row and its worker's row (none for a run
    /// by hand, on no worker).
    pub fn task_started(&mut self, h: &NewHistory, w: Option<&WorkerRow>, now: i64) -> Result<()> {
        self.write(|tx| {
            add_history(tx, h, now)?;
            w.map_or(Ok(()), |w| crate::engine_state::set_worker(tx, w))
        })
    }

    /// A task's end, in one commit: the account's success when it succeeded (`success`:
    /// its back-off is cleared, the failure count before is returned), the history row and
    /// the worker row. One commit instead of three per task: a no-change run --once has 13.
    pub fn task_finished(
        &mut self,
        h: &NewHistory,
        w: Option<&WorkerRow>,
        success: Option<i64>,
        now: i64,
    ) -> Result<i64> {
        self.write(|tx| {
            let before = match success {
                Some(account) => crate::accounts::account_success(tx, account, now)?,
                None => 0,
            };
            add_history(tx, h, now)?;
            if let Some(w) = w {
                crate::engine_state::set_worker(tx, w)?;
            }
            Ok(before)
        })
    }

    /// Newest first.
    pub fn history(&self, f: &HistoryFilter) -> Result<Vec<HistoryRow>> {
        let mut st = self.conn().prepare(
            "SELECT id, time, process, status, detail, account_id, folder_id, count, duration_ms, pid, thread, kind
             FROM history
             WHERE time >= ?1 AND (?2 IS NULL OR process = ?2) AND (?3 IS NULL OR account_id = ?3)
               AND (?4 = 0 OR status NOT IN ('Started', 'Finished')) AND (?6 IS NULL OR kind = ?6)
             ORDER BY time DESC, id DESC LIMIT ?5",
        )?;
        let rows = st
            .query_map(params![f.since, f.process, f.account_id, f.errors_only, f.limit.unwrap_or(-1), f.kind], |r| {
                Ok(HistoryRow {
                    id: r.get(0)?,
                    time: r.get(1)?,
                    process: r.get(2)?,
                    status: r.get(3)?,
                    detail: r.get(4)?,
                    account_id: r.get(5)?,
                    folder_id: r.get(6)?,
                    count: r.get(7)?,
                    duration_ms: r.get(8)?,
                    pid: r.get(9)?,
                    thread: r.get(10)?,
                    kind: r.get(11)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Deletes history older than `before`; returns how many rows went.
    pub fn prune_history(&mut self, before: i64) -> Result<usize> {
        self.write(|tx| Ok(tx.execute("DELETE FROM history WHERE time < ?", [before])?))
    }
}

fn add_history(tx: &rusqlite::Transaction, h: &NewHistory, now: i64) -> Result<i64> {
    tx.prepare_cached(
        "INSERT INTO history (time, process, status, detail, account_id, folder_id, count, duration_ms, pid, thread, kind)
         VALUES (?,?,?,?,?,?,?,?,?,?,?)",
    )?
    .execute(params![
        now,
        h.process,
        h.status,
        h.detail,
        h.account_id,
        h.folder_id,
        h.count,
        h.duration_ms,
        std::process::id(),
        h.thread,
        h.kind
    ])?;
    Ok(tx.last_insert_rowid())
}
