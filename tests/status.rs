//! Status, history, maintenance processes and metrics, against a real Dovecot and smtp-sink:
//! what an administrator reads must be true, including after a crash.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::mailworld::*;
use crate::util::*;
use backproc_store::{HistoryFilter, NewHistory, Store};
use backproc_testkit::{Fault, FaultProxy, SinkOptions, SmtpSink, mailgen};
use serde_json::Value;

const CONFIG: &str = "<?php
define('EMAIL_BACKGROUND_SYNC_ENABLED', TRUE);
define('BG_TICK_INTERVAL', 1);
define('BG_BACKOFF_BASE', 1);
define('BG_BACKOFF_MAX', 1);
";

const EMPTY: &str = "No background process history for the selected period\n";

fn json(h: &Home, args: &[&str]) -> Value {
    let o = h.run(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stdout(&o)))
}

fn rows(h: &Home, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["history", "--json"];
    a.extend_from_slice(args);
    json(h, &a).as_array().expect("an array").clone()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn sum_finished(rows: &[Value], process: &str) -> i64 {
    rows.iter()
        .filter(|r| r["process"] == process && r["status"] == "Finished")
        .map(|r| r["count"].as_i64().unwrap_or(0))
        .sum()
}

#[test]
fn history_shows_started_finished_and_auth_errors_and_filters() {
    let w = MailWorld::start(CONFIG);
    w.dovecot.populate(&w.user, &w.password, "INBOX", &mailgen::mailbox(31, 5)).unwrap();
    let bad = add_account(&w.home, &w.dovecot, &w.user, "wrong-password", "none", w.dovecot.imap_port(), &[]);
    w.run_once();

    let all = rows(&w.home, &["--period", "24h"]);
    let of = |a: i64| all.iter().filter(move |r| r["account_id"] == a);
    // the good account: every Started has its Finished, and the messages were counted
    for p in ["Folder discovery", "Sync (full)", "Receive"] {
        let n = |st: &str| of(w.account).filter(|r| r["process"] == p && r["status"] == st).count();
        assert!(n("Started") >= 1 && n("Started") == n("Finished"), "{p}: {all:#?}");
    }
    assert_eq!(sum_finished(&of(w.account).cloned().collect::<Vec<_>>(), "Receive"), 5);
    assert!(of(w.account).all(|r| r["status"] == "Started" || r["status"] == "Finished"), "{all:#?}");
    for r in of(w.account) {
        assert!(r["pid"].as_i64().unwrap_or(0) > 0 && s(&r["thread"]).starts_with('t'), "{r}");
    }
    // the bad one: an authentication error with the detail beside it, never a Finished
    let auth: Vec<_> = of(bad).filter(|r| r["status"] == "Authentication failed").collect();
    assert!(!auth.is_empty(), "{all:#?}");
    assert!(auth.iter().all(|r| !s(&r["detail"]).is_empty() && !s(&r["detail"]).contains("wrong-password")));
    assert!(of(bad).all(|r| r["status"] != "Finished"), "{all:#?}");
    // newest first
    let times: Vec<i64> = all.iter().map(|r| r["time"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|p| p[0] >= p[1]), "{times:?}");
    // heavy maintenance waits one interval on a new store instead of running at first tick
    for p in ["Backup", "DB defragmentation"] {
        assert!(all.iter().all(|r| r["process"] != p), "{p}: {all:#?}");
    }

    // --errors keeps the errors only
    let errors = rows(&w.home, &["--errors"]);
    assert!(!errors.is_empty());
    assert!(errors.iter().all(|r| r["status"] != "Started" && r["status"] != "Finished"), "{errors:#?}");
    assert!(errors.iter().any(|r| r["account_id"] == bad && r["status"] == "Authentication failed"));
    assert!(errors.iter().all(|r| r["account_id"] != w.account), "{errors:#?}");
    let text = stdout(&w.home.run(&["history", "--errors"]));
    assert!(text.contains("Authentication failed") && !text.contains("Finished"), "{text}");
    // --account and --process
    let acct = w.account.to_string();
    let only = rows(&w.home, &["--account", &acct]);
    assert!(!only.is_empty() && only.iter().all(|r| r["account_id"] == w.account));
    let recv = rows(&w.home, &["--process", "Receive"]);
    assert!(!recv.is_empty() && recv.iter().all(|r| r["process"] == "Receive"));
    let o = w.home.run(&["history", "--process", "No such process"]);
    assert_eq!(stdout(&o), EMPTY);

    // full resynchronisation by hand: marks every folder, the next run reads them all again
    // and keeps what it has (nothing is downloaded twice)
    let store = w.store();
    let inbox = folder_id(&store, w.account, "INBOX");
    assert!(store.folder(inbox).unwrap().highest_modseq.is_some());
    let before = store_messages(&store, inbox);
    let o = w.home.run(&["maintenance", "resync", "--account", &acct]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("marked for a full sync"), "{}", stdout(&o));
    assert_eq!(store.folder(inbox).unwrap().highest_modseq, None);
    let never = backproc_store::DueCuts { recent: i64::MIN, full: i64::MIN, low_start: i64::MIN };
    let marked = store.schedule_candidates(backproc_store::now(), never).unwrap();
    let mine: Vec<_> = marked.iter().filter(|f| f.account_id == w.account).collect();
    assert!(!mine.is_empty() && mine.iter().all(|f| f.sync_requested.is_some()), "{marked:?}");
    let resync = rows(&w.home, &["--process", "Full resynchronization"]);
    assert_eq!(resync.iter().filter(|r| r["status"] == "Finished").count(), 1, "{resync:#?}");
    let last_id = store.history(&HistoryFilter { limit: Some(1), ..Default::default() }).unwrap()[0].id;
    w.run_once();
    let mut after = store.history(&HistoryFilter { account_id: Some(w.account), ..Default::default() }).unwrap();
    after.retain(|r| r.id > last_id);
    assert!(after.iter().any(|r| r.process == "Sync (full)" && r.folder_id == Some(inbox) && r.status == "Finished"));
    assert!(!after.iter().any(|r| r.process == "Receive" && r.count.unwrap_or(0) > 0), "{after:#?}");
    assert!(store.folder(inbox).unwrap().highest_modseq.is_some());
    assert!(store_messages(&store, inbox) == before);
}

#[test]
fn history_periods_have_exact_boundaries_and_an_exact_empty_message() {
    let h = Home::with_config("<?php\n");
    // no store at all yet
    assert_eq!(stdout(&h.run(&["history"])), EMPTY);
    assert!(h.run(&["user", "add", "u"]).status.success());
    assert_eq!(stdout(&h.run(&["history"])), EMPTY);
    let mut store = Store::open(&h.file("data/backproc.sqlite")).unwrap();
    let now = backproc_store::now();
    for (hours, count) in [(23, 23), (25, 25), (71, 71), (73, 73), (167, 167), (169, 169)] {
        let row = NewHistory { process: "Boundary", status: "Finished", count: Some(count), ..Default::default() };
        store.add_history_at(&row, now - hours * 3600).unwrap();
    }
    let counts = |period: Option<&str>| -> Vec<i64> {
        let mut a = vec!["--process", "Boundary"];
        if let Some(p) = period {
            a.extend(["--period", p]);
        }
        rows(&h, &a).iter().map(|r| r["count"].as_i64().unwrap()).collect()
    };
    assert_eq!(counts(None), [23]);
    assert_eq!(counts(Some("24h")), [23]);
    assert_eq!(counts(Some("3d")), [23, 25, 71]);
    assert_eq!(counts(Some("1w")), [23, 25, 71, 73, 167]);
    let text = stdout(&h.run(&["history", "--period", "3d"]));
    assert_eq!(text.lines().filter(|l| l.contains("Boundary")).count(), 3, "{text}");
    // nothing in the period: the exact sentence, in text mode only
    let o = h.run(&["history", "--process", "Backup", "--period", "1w"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), EMPTY);
    assert_eq!(json(&h, &["history", "--json", "--process", "Backup"]), serde_json::json!([]));
    // prune-history by hand removes what is older than the retention (default 30 days)
    store
        .add_history_at(
            &NewHistory { process: "Boundary", status: "Finished", ..Default::default() },
            now - 31 * 86_400,
        )
        .unwrap();
    let o = h.run(&["maintenance", "prune-history"]);
    assert!(stdout(&o).contains("deleted 1 history record(s) older than 30 days"), "{}", stdout(&o));
}

fn worker_progress(v: &Value) -> Option<(i64, i64)> {
    v["workers"]
        .as_array()?
        .iter()
        .find(|w| s(&w["task"]).starts_with("Receive "))
        .and_then(|w| Some((w["done"].as_i64()?, w["total"].as_i64()?)))
}

#[test]
fn status_follows_a_long_receive_and_a_killed_master_is_never_running() {
    let dovecot = backproc_testkit::Dovecot::start().unwrap();
    dovecot.add_user("dora", "dora-pw").unwrap();
    let msgs: Vec<Vec<u8>> = (0..300).map(|i| mailgen::text_message(41, i)).collect();
    dovecot.populate("dora", "dora-pw", "INBOX", &msgs).unwrap();
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", dovecot.imap_port()).parse().unwrap()).unwrap();
    proxy.set_fault(Fault::Delay { per_chunk_ms: 40 });
    let home = Home::with_config(&format!(
        "{CONFIG}define('EMAIL_BG_RECEIVE_BATCH_MESSAGES', 10);\ndefine('BG_HEARTBEAT_STALE', 5);\n"
    ));
    add_account(&home, &dovecot, "dora", "dora-pw", "none", proxy.port(), &[]);
    let mut master = home.spawn(&["run"]);
    let pid = master.id() as i32;

    // the worker's progress is visible and grows
    let mut seen: Vec<(i64, i64)> = Vec::new();
    let grew = wait_until(Duration::from_secs(30), || {
        let v = json(&home, &["status", "--json"]);
        if let Some(p) = worker_progress(&v)
            && seen.last() != Some(&p)
        {
            seen.push(p);
        }
        seen.len() >= 3
    });
    assert!(grew, "progress seen: {seen:?}\n{}", home.log("l-info.log"));
    assert!(seen.windows(2).all(|p| p[0].0 < p[1].0), "{seen:?}");
    assert!(seen.iter().all(|p| p.1 == 300 && p.0 < 300), "{seen:?}");
    let v = json(&home, &["status", "--json"]);
    assert_eq!(v["master"]["state"], "running", "{v}");
    assert_eq!(v["master"]["pid"], pid);
    let text = stdout(&home.run(&["status"]));
    assert!(text.contains(&format!("master: running (pid {pid}")), "{text}");
    assert!(regex::Regex::new(r"t\d+  Receive \[\d+,\d+\] \d{1,3}(,\d{3})*/300").unwrap().is_match(&text), "{text}");

    // a master that holds its lock but stopped beating is stalled, not healthy
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let stalled =
        wait_until(Duration::from_secs(12), || json(&home, &["status", "--json"])["master"]["state"] == "stalled");
    assert!(stalled, "{}", stdout(&home.run(&["status"])));
    assert!(stdout(&home.run(&["status"])).contains("master: stalled"));

    // kill -9: not running, never running
    master.kill().unwrap();
    master.wait().unwrap();
    let v = json(&home, &["status", "--json"]);
    assert_eq!(v["master"]["state"], "not running", "{v}");
    assert_eq!(v["workers"], serde_json::json!([]), "{v}");
    let text = stdout(&home.run(&["status"]));
    assert!(text.contains("master: not running") && text.contains("did not stop cleanly"), "{text}");
    assert!(!text.contains("master: running") && !text.contains("Receive ["), "{text}");
}

#[test]
fn backup_is_consistent_while_writes_go_on_and_vacuum_shrinks_the_file() {
    let w = MailWorld::start(&format!("{CONFIG}define('BG_BACKUP_KEEP', 2);\n"));
    w.dovecot.populate(&w.user, &w.password, "INBOX", &mailgen::mailbox(51, 200)).unwrap();
    w.run_once();
    let mut store = w.store();
    let inbox = folder_id(&store, w.account, "INBOX");
    assert_eq!(store.message_count().unwrap(), 200);
    let dir = w.home.file("data/backup");
    std::fs::create_dir_all(&dir).unwrap();
    for old in ["backproc-20000101-000000.sqlite", "backproc-20000102-000000.sqlite", "backproc-20000103-000000.sqlite"]
    {
        std::fs::write(dir.join(old), b"an old backup").unwrap();
    }

    // writes go on (flags and history, from another connection) during the backup
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (stop, writes) = (stop.clone(), writes.clone());
        let path = w.home.file("data/backproc.sqlite");
        let ids: Vec<i64> = store.mail_list(w.account, None, false, 1000).unwrap().into_iter().map(|m| m.id).collect();
        std::thread::spawn(move || {
            let mut s = Store::open(&path).unwrap();
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let edit = backproc_store::FlagEdit { seen: Some(i.is_multiple_of(2)), ..Default::default() };
                s.mail_set_flags(ids[i % ids.len()], &edit, backproc_store::now()).unwrap();
                let h = NewHistory { process: "Writer", status: "Finished", ..Default::default() };
                s.add_history(&h, backproc_store::now()).unwrap();
                writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                i += 1;
            }
        })
    };
    wait_until(Duration::from_secs(5), || writes.load(std::sync::atomic::Ordering::Relaxed) > 50);
    let before = writes.load(std::sync::atomic::Ordering::Relaxed);
    let o = w.home.run(&["maintenance", "backup"]);
    let during = writes.load(std::sync::atomic::Ordering::Relaxed) - before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(during > 0, "writes were blocked during the backup");
    let out = stdout(&o);
    let path =
        regex::Regex::new(r"backup: (\S+backproc-\d{8}-\d{6}\.sqlite) ").unwrap().captures(&out).expect("a path")[1]
            .to_string();
    let check = Store::check_backup(std::path::Path::new(&path)).unwrap();
    assert_eq!(check.integrity, "ok");
    assert_eq!(check.messages, store.message_count().unwrap());
    let copy = Store::open_read_only(std::path::Path::new(&path)).unwrap();
    let uids = |s: &Store| s.folder_messages(inbox).unwrap().into_iter().map(|m| m.0).collect::<Vec<_>>();
    assert_eq!(uids(&copy), uids(&store));
    // the bodies come along (as hard links of the packs, in backproc-….packs beside the copy)
    for uid in uids(&store).into_iter().step_by(17) {
        assert_eq!(copy.message_raw(inbox, uid).unwrap(), store.message_raw(inbox, uid).unwrap(), "uid {uid}");
    }
    drop(copy);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o007, 0, "readable by others");
    // the newest BG_BACKUP_KEEP (2) stay, each a database file and its packs directory
    let mut left: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(path.ends_with(&left[2]), "{left:?} {path}");
    assert_eq!(left[1], left[2].replace(".sqlite", ".packs"), "{left:?}");
    assert!(!left.iter().any(|n| n.ends_with("20000101-000000.sqlite") || n.ends_with("20000102-000000.sqlite")));
    let h = store.history(&HistoryFilter { process: Some("Backup".into()), ..Default::default() }).unwrap();
    assert_eq!((h[0].status.as_str(), h[0].count, h[0].thread.as_deref()), ("Finished", Some(200), Some("cli")));

    // The writer's history rows go: how many it wrote depends on how long the backup took
    // (thousands on a loaded machine), and with them in the store the purge below frees too
    // small a share of it for the scheduled VACUUM (a 1.2 MB store kept at 1.2 MB failed the
    // last assertion once).
    store.prune_history(backproc_store::now() + 1).unwrap();

    // purge three quarters of the messages, then defragment by hand: the store shrinks (the
    // database file, and the bodies' packs, compacted once less than half of them is live)
    let probe = w.store();
    let size = || {
        probe.checkpoint_truncate().unwrap();
        std::fs::metadata(w.home.file("data/backproc.sqlite")).unwrap().len()
            + backproc_store::packs::total_bytes(&probe.packs_dir()).unwrap()
    };
    let all: Vec<i64> = uids(&store);
    store.mark_deletion_synced(inbox, &all[..150], backproc_store::now()).unwrap();
    assert_eq!(store.purge_deleted().unwrap(), 150);
    let full = size();
    let o = w.home.run(&["maintenance", "vacuum"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(regex::Regex::new(r"DB defragmentation: [\d.]+ MB -> [\d.]+ MB in .* message packs [\d.]+ MB -> [\d.]+ MB \(1 pack\(s\) compacted, 50 message\(s\) moved\)").unwrap().is_match(&stdout(&o)), "{}", stdout(&o));
    let quarter = size();
    assert!(quarter * 10 < full * 4, "{full} -> {quarter}");
    for uid in &all[150..] {
        assert!(store.message_raw(inbox, *uid).unwrap().is_some_and(|b| b.len() > 100), "uid {uid}");
    }
    assert!(w.home.log("l-info.log").contains("DB defragmentation: "));

    // and the scheduled job does it when enough pages are free (sync off: nothing comes back)
    store.mark_deletion_synced(inbox, &all[150..], backproc_store::now()).unwrap();
    store.purge_deleted().unwrap();
    store.set_job_last_run("vacuum", 0).unwrap();
    w.home.write_config("<?php\ndefine('BG_TICK_INTERVAL', 1);\n");
    let before = size();
    w.run_once();
    let after = size();
    assert!(after * 4 < before, "{before} -> {after}\n{}", w.home.log("l-info.log"));
    let h = store.history(&HistoryFilter { process: Some("DB defragmentation".into()), ..Default::default() }).unwrap();
    assert_eq!(h[0].status, "Finished");
    assert!(h[0].count.unwrap_or(0) > 0 && h[0].thread.as_deref() != Some("cli"), "{h:#?}");
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

/// A strict reading of the text exposition format: every sample line is well formed, every
/// family has HELP and TYPE before its samples and its lines are together.
fn check_exposition(text: &str) -> BTreeMap<String, f64> {
    let sample = regex::Regex::new(
        r#"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})? (-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)$"#,
    )
    .unwrap();
    let mut help = BTreeMap::new();
    let mut kind = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut values = BTreeMap::new();
    assert!(text.ends_with('\n'), "the last line must end with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(help.insert(name, ()).is_none(), "HELP twice: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, t) = (it.next().unwrap().to_string(), it.next().unwrap_or(""));
            assert!(["counter", "gauge"].contains(&t), "{line}");
            assert!(help.contains_key(&name), "TYPE before HELP: {line}");
            assert!(kind.insert(name, t.to_string()).is_none(), "TYPE twice: {line}");
        } else {
            let c = sample.captures(line).unwrap_or_else(|| panic!("not a sample line: {line:?}"));
            let name = c[1].to_string();
            assert!(kind.contains_key(&name), "sample before its TYPE: {line}");
            if kind[&name] == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
            if order.last() != Some(&name) {
                assert!(!order.contains(&name), "family {name} split");
                order.push(name);
            }
            let key = format!("{}{}", &c[1], c.get(2).map_or("", |m| m.as_str()));
            values.insert(key, c[3].parse::<f64>().unwrap());
        }
    }
    // and the same text through a Prometheus parser: every line read, typed as declared
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("prometheus text format");
    assert_eq!(scrape.samples.len(), values.len());
    for smp in &scrape.samples {
        let typed = matches!(
            (kind[&smp.metric].as_str(), &smp.value),
            ("counter", prometheus_parse::Value::Counter(_)) | ("gauge", prometheus_parse::Value::Gauge(_))
        );
        assert!(typed, "{smp:?}");
        assert!(scrape.docs.contains_key(&smp.metric));
    }
    values
}

#[test]
fn metrics_file_is_prometheus_text_and_its_counters_match_the_history() {
    let sink = SmtpSink::start(SinkOptions::default()).expect("smtp-sink");
    let w = MailWorld::start(&format!(
        "{CONFIG}define('EMAIL_OUTBOX_ENABLED', TRUE);\ndefine('EMAIL_BG_SENT_APPEND', FALSE);\n\
         define('EMAIL_BG_SEND_POLL_INTERVAL', 1);\n"
    ));
    let port = sink.port().to_string();
    let smtp = ["--smtp-host", "127.0.0.1", "--smtp-port", port.as_str(), "--smtp-security", "none"];
    w.dovecot.add_user("erin", "erin-pw").unwrap();
    let erin = add_account(&w.home, &w.dovecot, "erin", "erin-pw", "none", w.dovecot.imap_port(), &smtp);
    w.dovecot.populate(&w.user, &w.password, "INBOX", &mailgen::mailbox(61, 7)).unwrap();
    w.dovecot.populate("erin", "erin-pw", "INBOX", &mailgen::mailbox(62, 4)).unwrap();
    let a = erin.to_string();
    for i in 0..3 {
        let subject = format!("metrics {i}");
        let args = ["outbox", "add", "--account", &a, "--to", "x@x.test", "--subject", &subject, "--body", "hi"];
        assert!(w.home.run(&args).status.success());
    }
    let start = backproc_store::now();
    w.run_once();
    let path = w.home.file("data/backproc.prom");
    let text = std::fs::read_to_string(&path).expect("data/backproc.prom");
    let m = check_exposition(&text);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o007, 0);
    assert!(!w.home.file("data/.backproc.prom.tmp").exists());

    let store = w.store();
    let history = store.history(&HistoryFilter::default()).unwrap();
    let sum = |ps: &[&str]| -> f64 {
        history
            .iter()
            .filter(|r| r.status == "Finished" && ps.contains(&r.process.as_str()))
            .map(|r| r.count.unwrap_or(0))
            .sum::<i64>() as f64
    };
    // `run --once` has stopped cleanly: the file says so
    assert_eq!(m["backproc_up"], 0.0);
    assert_eq!(m["backproc_messages_received_total"], sum(&["Receive", "Receive Secondary"]), "{text}");
    assert_eq!(m["backproc_messages_received_total"], 11.0, "{text}");
    assert_eq!(m["backproc_messages_sent_total"], sum(&["Send", "Send Secondary"]), "{text}");
    assert_eq!(m["backproc_messages_sent_total"], 3.0, "{text}");
    assert_eq!(m["backproc_messages_failed"], 0.0);
    for lane in ["primary", "secondary", "failed"] {
        assert_eq!(m[&format!("backproc_receive_queue{{lane=\"{lane}\"}}")], 0.0, "{text}");
    }
    assert_eq!(m["backproc_outbox{state=\"SUCCESS\"}"], 3.0, "{text}");
    assert_eq!(m["backproc_outbox{state=\"PENDING\"}"], 0.0, "{text}");
    let last_receive = history.iter().find(|r| r.process == "Receive" && r.status == "Finished").unwrap();
    assert_eq!(
        m["backproc_job_duration_seconds{job=\"receive\"}"],
        last_receive.duration_ms.unwrap() as f64 / 1000.0,
        "{text}"
    );
    let master = store.master().unwrap().unwrap();
    assert_eq!(m["backproc_master_start_time_seconds"], master.started as f64);
    for acct in [w.account, erin] {
        let t = m[&format!("backproc_account_last_success_timestamp_seconds{{account=\"{acct}\"}}")];
        assert!(t >= start as f64 && t <= backproc_store::now() as f64, "{text}");
    }
}

/// A maintenance process run by hand goes through the engine's runner: a failure is the
/// scheduled job's failure, in history with its kind and thread "cli", and the command fails
/// with it; nothing else is touched.
#[test]
fn a_failed_backup_by_hand_is_recorded_like_a_scheduled_one() {
    let h = Home::with_config("<?php\n");
    assert!(h.run(&["user", "add", "u"]).status.success());
    // data/backup cannot be a directory: a file has its name.
    std::fs::write(h.file("data/backup"), b"not a directory").unwrap();
    let o = h.run(&["maintenance", "backup"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("Backup failed: cannot create"), "{}", stderr(&o));
    let store = Store::open(&h.file("data/backproc.sqlite")).unwrap();
    let rows = store.history(&HistoryFilter { kind: Some("backup".into()), ..Default::default() }).unwrap();
    let seen: Vec<(&str, Option<&str>, Option<&str>)> =
        rows.iter().map(|r| (r.status.as_str(), r.thread.as_deref(), r.process.as_str().into())).collect();
    assert_eq!(seen, [("Backup failed", Some("cli"), Some("Backup")), ("Started", Some("cli"), Some("Backup"))]);
    assert!(rows[0].detail.as_deref().is_some_and(|d| d.contains("cannot create")), "{rows:?}");
    assert_eq!(std::fs::read(h.file("data/backup")).unwrap(), b"not a directory");
    // A run by hand is on no worker: `status` shows none.
    assert!(store.workers().unwrap().is_empty());
}
