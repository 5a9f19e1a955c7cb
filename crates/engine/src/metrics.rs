//! Prometheus text-format metrics written to data/backproc.prom after each tick (the
//! node_exporter textfile-collector convention), so monitoring can scrape the engine
//! without a server in it.
//!
//! Cost per tick: the counters come from the history table, but only its rows newer than the
//! last tick are read (a rowid range); the sums so far are kept in memory for the life of
//! the master (a restart starts them again from the history that is kept, which Prometheus
//! reads as an ordinary counter reset). The gauges are GROUP BY counts over indexed columns.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use backproc_store::Store;

use crate::task::Job;

/// Every job, to label durations with the stable `Job::key()` rather than the display name.
const JOBS: [Job; 15] = [
    Job::SyncRecent,
    Job::SyncFull,
    Job::ListFolders,
    Job::Receive,
    Job::ReceiveSecondary,
    Job::Send,
    Job::SendSecondary,
    Job::SyncDelete,
    Job::PurgeDeleted,
    Job::CleanMailboxes,
    Job::Vacuum,
    Job::Backup,
    Job::FullResync,
    Job::PruneHistory,
    Job::InternalClean,
];

/// The history seen so far: newest Finished id, count sums and last duration per job key.
#[derive(Default)]
struct Seen {
    store: PathBuf,
    after_id: i64,
    totals: BTreeMap<String, i64>,
    last_duration_ms: BTreeMap<String, i64>,
}

static SEEN: Mutex<Option<Seen>> = Mutex::new(None);

/// The job key of a history row's kind, or of its process name for a row without one (an
/// application's, or one written before history had kinds).
fn job_key(key: &str) -> String {
    match JOBS.iter().find(|j| j.key() == key || j.name() == key) {
        Some(j) => j.key().to_string(),
        None => key.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect(),
    }
}

/// Reads the Finished history records that are new since the last call into `SEEN`; returns
/// (received, sent, last durations by job key).
fn from_history(store: &Store) -> backproc_store::Result<(i64, i64, BTreeMap<String, i64>)> {
    let mut guard = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if guard.as_ref().is_none_or(|s| s.store != store.path()) {
        *guard = Some(Seen { store: store.path().to_path_buf(), ..Seen::default() });
    }
    let seen = guard.as_mut().expect("set above");
    for row in store.history_finished_since(seen.after_id)? {
        let key = job_key(&row.key);
        *seen.totals.entry(key.clone()).or_default() += row.count;
        if let Some(ms) = row.last_duration_ms {
            seen.last_duration_ms.insert(key, ms);
        }
        seen.after_id = seen.after_id.max(row.last_id);
    }
    let sum = |jobs: &[Job]| jobs.iter().map(|j| seen.totals.get(j.key()).copied().unwrap_or(0)).sum::<i64>();
    let received = sum(&[Job::Receive, Job::ReceiveSecondary]);
    let sent = sum(&[Job::Send, Job::SendSecondary]);
    let durations = seen.last_duration_ms.clone();
    Ok((received, sent, durations))
}

/// A label value with `\`, `"` and newlines escaped (exposition format).
fn label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The metrics as text (exposition format 0.0.4); `up`: the master runs (0 once it stopped).
pub fn render(store: &Store, up: bool) -> backproc_store::Result<String> {
    let mut out = String::new();
    family(
        &mut out,
        "backproc_up",
        "gauge",
        "1 while the master runs; 0 once it stopped cleanly (a killed master leaves 1: check the file's mtime).",
    );
    let _ = writeln!(out, "backproc_up {}", u8::from(up));
    if let Some(m) = store.master()? {
        family(&mut out, "backproc_master_start_time_seconds", "gauge", "Start time of the master, unix seconds.");
        let _ = writeln!(out, "backproc_master_start_time_seconds {}", m.started);
    }
    let (received, sent, durations) = from_history(store)?;
    let lanes: BTreeMap<String, i64> = store.receive_queue_lanes()?.into_iter().collect();
    let outbox: BTreeMap<String, i64> = store.outbox_depths()?.into_iter().collect();
    let lane = |l: &str| lanes.get(l).copied().unwrap_or(0);
    let state = |s: &str| outbox.get(s).copied().unwrap_or(0);

    family(
        &mut out,
        "backproc_messages_received_total",
        "counter",
        "Messages downloaded by Receive and Receive Secondary.",
    );
    let _ = writeln!(out, "backproc_messages_received_total {received}");
    family(&mut out, "backproc_messages_sent_total", "counter", "Messages sent by Send and Send Secondary.");
    let _ = writeln!(out, "backproc_messages_sent_total {sent}");
    family(
        &mut out,
        "backproc_messages_failed",
        "gauge",
        "Messages given up: receive queue entries failed for good plus outbox entries in ERROR.",
    );
    let _ = writeln!(out, "backproc_messages_failed {}", lane("failed") + state("ERROR"));

    let counters: BTreeMap<String, i64> = store.counters()?.into_iter().collect();
    let counter = |n: &str| counters.get(n).copied().unwrap_or(0);
    family(
        &mut out,
        "backproc_healed_messages_total",
        "counter",
        "Messages the server has that a full sync found missing from the store, queued again.",
    );
    let _ = writeln!(out, "backproc_healed_messages_total {}", counter("healed_messages"));
    family(
        &mut out,
        "backproc_ignored_fetch_responses_total",
        "counter",
        "FETCH answers for UIDs that were not asked, UID 0, or a UID twice: ignored.",
    );
    let _ = writeln!(out, "backproc_ignored_fetch_responses_total {}", counter("ignored_fetch_responses"));

    family(&mut out, "backproc_receive_queue", "gauge", "Receive queue entries by lane.");
    for l in ["primary", "secondary", "failed"] {
        let _ = writeln!(out, "backproc_receive_queue{{lane=\"{l}\"}} {}", lane(l));
    }
    family(&mut out, "backproc_outbox", "gauge", "Outbox entries by state.");
    let mut states: Vec<&str> = backproc_types::OutboxState::NAMES.to_vec();
    states.extend(outbox.keys().map(String::as_str).filter(|s| !states.contains(s)).collect::<Vec<_>>());
    for s in states {
        let _ = writeln!(out, "backproc_outbox{{state=\"{}\"}} {}", label(s), state(s));
    }
    family(&mut out, "backproc_job_duration_seconds", "gauge", "Duration of the last finished run of each job type.");
    for (job, ms) in &durations {
        let _ = writeln!(out, "backproc_job_duration_seconds{{job=\"{}\"}} {}", label(job), *ms as f64 / 1000.0);
    }
    family(
        &mut out,
        "backproc_accounts_needing_authorization",
        "gauge",
        "OAuth2 accounts whose grant was revoked or expired: not tried until `account authorize`.",
    );
    let _ = writeln!(out, "backproc_accounts_needing_authorization {}", store.accounts_needing_authorization()?);
    let push = &crate::push::COUNTERS;
    family(&mut out, "backproc_push_connections", "gauge", "Push connections (NOTIFY or IDLE) open now.");
    let _ = writeln!(out, "backproc_push_connections {}", push.connections.load(std::sync::atomic::Ordering::Relaxed));
    family(&mut out, "backproc_push_events_total", "counter", "Events received on push connections.");
    let _ = writeln!(out, "backproc_push_events_total {}", push.events.load(std::sync::atomic::Ordering::Relaxed));
    family(&mut out, "backproc_push_reconnects_total", "counter", "Push connections made again after one ended.");
    let _ =
        writeln!(out, "backproc_push_reconnects_total {}", push.reconnects.load(std::sync::atomic::Ordering::Relaxed));
    family(
        &mut out,
        "backproc_account_last_success_timestamp_seconds",
        "gauge",
        "Last successful server connection of each account, unix seconds.",
    );
    for (account, t) in store.account_last_success()? {
        if let Some(t) = t {
            let _ = writeln!(out, "backproc_account_last_success_timestamp_seconds{{account=\"{account}\"}} {t}");
        }
    }
    Ok(out)
}

/// Writes the metrics file atomically (temp file + rename). Best effort: errors are logged
/// by the caller and never stop the master.
pub fn write_file(store: &Store, data_dir: &Path, up: bool) -> std::io::Result<()> {
    let text = render(store, up).map_err(std::io::Error::other)?;
    // The textfile collector reads only *.prom files: the temp name is never half-read.
    let tmp = data_dir.join(".backproc.prom.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
    }
    std::fs::rename(&tmp, data_dir.join("backproc.prom"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_and_labels() {
        assert_eq!(job_key("Sync (full)"), "sync_full");
        assert_eq!(job_key("DB defragmentation"), "vacuum");
        assert_eq!(job_key("Something Else!"), "something_else_");
        assert_eq!(job_key("receive_secondary"), "receive_secondary", "a kind is its own key");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        s.master_started(42, 1000).unwrap();
        let h = backproc_store::NewHistory {
            process: "Receive",
            status: "Finished",
            count: Some(3),
            duration_ms: Some(1500),
            ..Default::default()
        };
        s.add_history(&h, 1001).unwrap();
        write_file(&s, dir.path(), true).unwrap();
        // A row with its kind counts with the rows written before history had kinds.
        let with_kind =
            backproc_store::NewHistory { kind: Some("receive"), count: Some(4), duration_ms: Some(250), ..h };
        s.add_history(&with_kind, 1002).unwrap();
        write_file(&s, dir.path(), true).unwrap();
        let text = std::fs::read_to_string(dir.path().join("backproc.prom")).unwrap();
        assert!(text.contains("backproc_master_start_time_seconds 1000\n"), "{text}");
        assert!(text.contains("backproc_messages_received_total 7\n"), "{text}");
        assert!(text.contains("backproc_job_duration_seconds{job=\"receive\"} 0.25\n"), "{text}");
        assert!(text.contains("backproc_outbox{state=\"ERROR\"} 0\n"), "{text}");
        assert!(text.contains("backproc_healed_messages_total 0\n"), "{text}");
        s.add_counter("ignored_fetch_responses", 2).unwrap();
        write_file(&s, dir.path(), true).unwrap();
        let text = std::fs::read_to_string(dir.path().join("backproc.prom")).unwrap();
        assert!(text.contains("backproc_ignored_fetch_responses_total 2\n"), "{text}");
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}
