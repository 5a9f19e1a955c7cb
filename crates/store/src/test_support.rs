//! What the integration tests need beyond the store's API (feature `test-support`, never in
//! a build of the binary): moving the store's clock.

use crate::{Result, Store};

/// Every bookkeeping time of the schema, by table. A message's own dates (`date`,
/// `internal_date`) are its data, not the store's, and stay.
const TIMES: &[(&str, &[&str])] = &[
    ("users", &["session_expires", "last_check", "created"]),
    ("accounts", &["created", "retry_after", "last_error_at", "last_success", "oauth_expires_at"]),
    ("folders", &["last_recent_sync", "last_full_sync", "sync_requested"]),
    ("messages", &["flags_changed", "local_deleted", "server_deleted", "deletion_synced"]),
    ("receive_queue", &["next_attempt"]),
    ("outbox", &["created", "start_time", "end_time", "lease_expire_time", "next_attempt"]),
    ("history", &["time"]),
    ("master", &["started", "heartbeat", "stopped"]),
    ("workers", &["since"]),
    ("job_runs", &["last_run"]),
    ("internal_messages", &["created"]),
    ("internal_recipients", &["read_time"]),
    ("push_state", &["since"]),
];

impl Store {
    /// As if `secs` seconds had passed since every time the store holds: each is moved that
    /// far into the past, so a test of what an interval, a back-off or a lease leads to does
    /// not sleep through it. Only between runs: a running master keeps its own memory of
    /// when it did what.
    pub fn pass_time(&mut self, secs: i64) -> Result<()> {
        self.write(|tx| {
            for (table, cols) in TIMES {
                let set: Vec<String> = cols.iter().map(|c| format!("{c} = {c} - ?1")).collect();
                tx.execute(&format!("UPDATE {table} SET {}", set.join(", ")), [secs])?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    /// Every INTEGER column of the schema whose name says it is a time is in `TIMES`, so a
    /// column added later cannot be forgotten by `pass_time`.
    #[test]
    fn every_time_column_moves() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::Store::open(&dir.path().join("s.sqlite")).unwrap();
        let tables: Vec<String> = s
            .conn()
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let timeish = [
            "time",
            "created",
            "since",
            "expire",
            "_at",
            "after",
            "changed",
            "synced",
            "last_",
            "next_",
            "started",
            "stopped",
            "heartbeat",
        ];
        let not_times = ["last_seen_uid", "last_check_id", "last_error"];
        for t in &tables {
            let cols: Vec<(String, String)> = s
                .conn()
                .prepare(&format!("SELECT name, type FROM pragma_table_info('{t}')"))
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for (c, ty) in cols {
                let looks = timeish.iter().any(|w| c.contains(w)) || c.ends_with("_deleted") || c.ends_with("_sync");
                if ty != "INTEGER" || !looks || not_times.contains(&c.as_str()) || c.contains("date") {
                    continue;
                }
                let listed = super::TIMES.iter().any(|(tt, cs)| tt == t && cs.contains(&c.as_str()));
                assert!(listed, "{t}.{c} looks like a time and is not moved by pass_time");
            }
        }
    }
}
