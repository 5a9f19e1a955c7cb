//! The outbox against real SMTP servers: delivery records, per-recipient answers, retries,
//! the secondary lane, crashes, fencing, and the Sent folder.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::util::*;
use backproc_testkit::{Dovecot, Fault, FaultProxy, PySmtp, SinkOptions, SmtpRules, SmtpSink, mailgen};
use serde_json::Value;

fn add(h: &Home, account: i64, to: &[&str], subject: &str) -> i64 {
    let a = account.to_string();
    let mut args = vec!["outbox", "add", "--account", &a, "--subject", subject, "--body", "hello there"];
    for t in to {
        args.push("--to");
        args.push(t);
    }
    let o = h.run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().parse().unwrap()
}

fn show(h: &Home, id: i64) -> Value {
    let o = h.run(&["outbox", "show", &id.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn run_once(h: &Home) {
    let o = h.run(&["run", "--once"]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), h.log("l-info.log"));
}

fn count(hay: &[u8], needle: &str) -> usize {
    String::from_utf8_lossy(hay).matches(needle).count()
}

#[test]
fn two_hundred_messages_to_three_recipients_each_are_delivered_once() {
    let sink = SmtpSink::start(SinkOptions::default()).expect("smtp-sink");
    let (h, acct) = home_with_smtp(SEND, sink.port(), 1);
    let ids: Vec<i64> =
        (0..200).map(|i| add(&h, acct, &["a@x.test", "b@x.test", "c@x.test"], &format!("msg {i}"))).collect();
    run_once(&h);
    let all: Vec<u8> = sink.messages().unwrap().concat();
    for id in &ids {
        let r = show(&h, *id);
        assert_eq!(r["state"], "SUCCESS", "{r}");
        assert_eq!(r["attempts"], 1);
        let info = &r["info"];
        assert_eq!(info["accepted"], serde_json::json!(["a@x.test", "b@x.test", "c@x.test"]));
        assert_eq!(info["rejected"], serde_json::json!([]));
        let mid = info["messageId"].as_str().unwrap();
        assert_eq!(count(&all, &format!("Message-ID: <{mid}>")), 1, "{mid}");
        for k in ["startTime", "endTime", "leaseExpireTime", "error", "attempts", "state", "info"] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
    }
    assert_eq!(sink.messages().unwrap().len(), 200);
    let info = h.log("l-info.log");
    assert!(
        regex::Regex::new(&format!(r"sent message {} to 3 recipients in \d+s \[{acct},\]", ids[0]))
            .unwrap()
            .is_match(&info),
        "{info}"
    );
}

#[test]
fn per_recipient_answers_rejected_and_pending_retried_alone() {
    let py = PySmtp::start().expect("aiosmtpd");
    let mut rules = SmtpRules { rcpt: BTreeMap::new(), mail: None, data: None };
    rules.rcpt.insert("bad@x.test".into(), (550, "5.1.1 no such user".into()));
    rules.rcpt.insert("later@x.test".into(), (450, "4.2.0 mailbox busy".into()));
    py.set_rules(&rules).unwrap();
    let (h, acct) = home_with_smtp(SEND, py.port(), 1);
    let id = add(&h, acct, &["ok@x.test", "bad@x.test", "later@x.test"], "partial");
    run_once(&h);
    let r = show(&h, id);
    assert_eq!(r["state"], "SUCCESS", "{r}");
    assert_eq!(r["info"]["accepted"], serde_json::json!(["ok@x.test"]));
    assert_eq!(r["info"]["rejected"], serde_json::json!(["bad@x.test"]));
    assert_eq!(r["info"]["pending"], serde_json::json!(["later@x.test"]));
    // the busy mailbox accepts now: only it gets the message again
    py.set_rules(&SmtpRules::default()).unwrap();
    h.pass_time(3);
    run_once(&h);
    let got = py.messages().unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].rcpt_tos, vec!["ok@x.test".to_string()]);
    assert_eq!(got[1].rcpt_tos, vec!["later@x.test".to_string()]);
    let list: Value = serde_json::from_slice(&h.run(&["outbox", "list", "--json"]).stdout).unwrap();
    let child = list.as_array().unwrap().iter().find(|e| e["parentId"] == id).expect("child entry");
    assert_eq!(child["state"], "SUCCESS");
    assert_eq!(child["info"]["accepted"], serde_json::json!(["later@x.test"]));
}

#[test]
fn temporary_refusals_move_to_secondary_then_succeed_and_permanent_ones_are_errors() {
    let mut sink = SmtpSink::start(SinkOptions { soft_reject: vec!["mail".into()], ..Default::default() }).unwrap();
    let (h, acct) = home_with_smtp(SEND, sink.port(), 1);
    let id = add(&h, acct, &["a@x.test"], "soft");
    for _ in 0..6 {
        run_once(&h);
        h.pass_time(2);
    }
    let r = show(&h, id);
    // One attempt per run, and one more when a run outlasts the 1 s back-off (a loaded
    // machine): past EMAIL_BG_SEND_MAX_ATTEMPTS (5) it waits in the secondary lane.
    assert_eq!((r["state"].as_str(), r["secondary"].as_bool()), (Some("PENDING"), Some(true)), "{r}");
    assert!((6..=12).contains(&r["attempts"].as_i64().unwrap_or(0)), "{r}");
    assert!(r["error"].as_str().unwrap().contains("450"), "{r}");
    sink.restart(SinkOptions::default()).unwrap();
    run_once(&h);
    assert_eq!(show(&h, id)["state"], "SUCCESS");
    assert_eq!(sink.messages().unwrap().len(), 1);

    let hard = SmtpSink::start(SinkOptions { hard_reject: vec!["mail".into()], ..Default::default() }).unwrap();
    let (h2, acct2) = home_with_smtp(SEND, hard.port(), 1);
    let id2 = add(&h2, acct2, &["a@x.test"], "hard");
    run_once(&h2);
    let r = show(&h2, id2);
    assert_eq!(r["state"], "ERROR", "{r}");
    assert!(r["error"].as_str().unwrap().contains("500"), "the server's reply is kept: {r}");
}

#[test]
fn disabled_outbox_sends_nothing() {
    let sink = SmtpSink::start(SinkOptions::default()).unwrap();
    let (h, acct) = home_with_smtp("<?php define('EMAIL_OUTBOX_ENABLED', FALSE);", sink.port(), 1);
    let id = add(&h, acct, &["a@x.test"], "wait");
    run_once(&h);
    assert_eq!(show(&h, id)["state"], "PENDING");
    assert!(sink.messages().unwrap().is_empty());
}

#[test]
fn kill_9_while_sending_never_sends_twice_and_processing_entries_expire_to_error() {
    let sink = SmtpSink::start(SinkOptions::default()).unwrap();
    let config = send_short_lease();
    let (h, acct) = home_with_smtp(&config, sink.port(), 1);
    let ids: Vec<i64> = (0..60).map(|i| add(&h, acct, &["a@x.test"], &format!("k{i}"))).collect();
    let mut child = h.spawn(&["run"]);
    assert!(wait_until(Duration::from_secs(20), || !sink.messages().unwrap_or_default().is_empty()));
    child.kill().unwrap();
    child.wait().unwrap();
    h.pass_time(11); // past the lease
    run_once(&h);
    let recs: Vec<Value> = ids.iter().map(|i| show(&h, *i)).collect();
    let states: Vec<&str> = recs.iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert!(states.iter().all(|s| *s == "SUCCESS" || *s == "ERROR"), "{states:?}");
    let dump: Vec<u8> = sink.messages().unwrap().concat();
    for r in &recs {
        let mid = r["messageId"].as_str().unwrap();
        let n = count(&dump, &format!("Message-ID: <{mid}>"));
        match r["state"].as_str().unwrap() {
            "SUCCESS" => assert_eq!(n, 1, "{r}"),
            _ => {
                assert!(n <= 1, "{r}");
                assert!(r["error"].as_str().unwrap().contains("outcome unknown"), "{r}");
            }
        }
    }
    // retry one on purpose
    if let Some(err) = recs.iter().find(|r| r["state"] == "ERROR") {
        let id = err["id"].as_i64().unwrap();
        let before = count(&dump, &format!("Message-ID: <{}>", err["messageId"].as_str().unwrap()));
        assert!(h.run(&["outbox", "retry", &id.to_string()]).status.success());
        run_once(&h);
        let r = show(&h, id);
        assert_eq!(r["state"], "SUCCESS");
        let after =
            count(&sink.messages().unwrap().concat(), &format!("Message-ID: <{}>", err["messageId"].as_str().unwrap()));
        assert_eq!(after, before + 1);
    }
}

#[test]
fn sent_mail_is_appended_to_the_sent_folder() {
    let dovecot = Dovecot::start().unwrap();
    dovecot.add_user("carol", "carol-pw").unwrap();
    let sink = SmtpSink::start(SinkOptions::default()).unwrap();
    let config =
        SEND.replace("define('EMAIL_BG_SENT_APPEND', FALSE);", "define('EMAIL_BACKGROUND_SYNC_ENABLED', TRUE);");
    let (h, acct) = home_with_smtp(&config, sink.port(), dovecot.imap_port());
    run_once(&h); // discovers folders, Sent among them
    let id = add(&h, acct, &["a@x.test"], "keep a copy");
    run_once(&h);
    assert_eq!(show(&h, id)["state"], "SUCCESS");
    let mut s = dovecot.session("carol", "carol-pw").unwrap();
    let mb = s.examine("Sent").unwrap();
    assert_eq!(mb.exists, 1, "{}", h.log("l-info.log"));
    let f = s.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])").unwrap();
    let m = f.iter().next().unwrap();
    assert!(m.flags().contains(&imap::types::Flag::Seen));
    assert!(String::from_utf8_lossy(m.header().or(m.body()).unwrap_or_default()).contains("keep a copy"));
}

#[test]
fn bad_input_is_refused_and_nothing_is_queued() {
    let (h, acct) = home_with_smtp(SEND, 1, 1);
    let a = acct.to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["outbox", "add", "--account", "999", "--to", "a@x.test", "--subject", "s", "--body", "b"],
            "account 999 not found",
        ),
        (vec!["outbox", "add", "--account", &a, "--to", "not an address", "--subject", "s", "--body", "b"], "invalid"),
        (
            vec![
                "outbox",
                "add",
                "--account",
                &a,
                "--to",
                "a@x.test\r\nBcc: evil@x.test",
                "--subject",
                "s",
                "--body",
                "b",
            ],
            "invalid",
        ),
        (
            vec![
                "outbox",
                "add",
                "--account",
                &a,
                "--to",
                "a@x.test",
                "--subject",
                "s\r\nBcc: evil@x.test",
                "--body",
                "b",
            ],
            "one line",
        ),
        (
            vec!["outbox", "add", "--account", &a, "--to", "a@x.test", "--eml", "missing.eml"],
            "cannot read the .eml file",
        ),
        (
            vec![
                "outbox",
                "add",
                "--account",
                &a,
                "--to",
                "a@x.test",
                "--subject",
                "s",
                "--body",
                "b",
                "--attach",
                "/nonexistent/file",
            ],
            "cannot read the attachment",
        ),
    ];
    for (args, want) in cases {
        let o = h.run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    let list: Value = serde_json::from_slice(&h.run(&["outbox", "list", "--json"]).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0);
}

/// SIGSTOP for longer than the lease, twice: once while the entry is only claimed (its
/// message not sent), once while its message may be on its way. Either way the expiry owns the
/// entry and the resumed worker changes nothing: the first goes back to the queue and is sent
/// once, the second ends as ERROR "outcome unknown".
#[test]
fn a_worker_frozen_past_its_lease_cannot_change_the_final_state() {
    use backproc_testkit::{Fault, FaultProxy};
    let sink = SmtpSink::start(SinkOptions::default()).unwrap();
    // a slow link keeps the worker inside the SMTP conversation for several seconds
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", sink.port()).parse().unwrap()).unwrap();
    proxy.set_fault(Fault::Delay { per_chunk_ms: 400 });
    let config = format!("{SEND}define('EMAIL_BG_SEND_LEASE', 10);\n");
    let (h, acct) = home_with_smtp(&config, proxy.port(), 1);
    let in_sink = |mid: &str| count(&sink.messages().unwrap().concat(), &format!("Message-ID: <{mid}>"));
    let freeze = |master: &std::process::Child| {
        let pid = master.id().to_string();
        assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
        std::thread::sleep(Duration::from_secs(11)); // past the lease
        assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    };
    let mut master = h.spawn(&["run"]);

    // 1. frozen while the entry is only claimed (connecting, envelope)
    let first = add(&h, acct, &["a@x.test"], "claimed");
    assert!(wait_until(Duration::from_secs(10), || {
        let r = show(&h, first);
        r["state"] == "PROCESSING" && r["sending"] == false
    }));
    freeze(&master);
    // the master's next tick returns it to the queue; the worker must not send it any more
    assert!(wait_until(Duration::from_secs(30), || h.log("l-info.log").contains("before sending it")));
    assert!(wait_until(Duration::from_secs(30), || show(&h, first)["state"] == "SUCCESS"));
    let r = show(&h, first);
    assert_eq!(r["attempts"], 1, "the returned claim is not an attempt: {r}");
    assert_eq!(in_sink(r["messageId"].as_str().unwrap()), 1, "{r}");

    // 2. frozen while its message may be on its way: 2 MB take the slow link longer than the
    // freeze, so the resumed worker is still waiting for the final answer when the master's
    // first tick after the freeze expires the lease
    let body = format!("{}\r\n", "x".repeat(76)).repeat(27_000);
    let raw = mailgen::message_with(
        "frozen",
        "a@x.test",
        "a@x.test",
        "Mon, 23 Nov 2026 12:00:00 +0000",
        "frozen@x.test",
        &body,
    );
    let id = backproc_store::Store::open(&h.file("data/backproc.sqlite"))
        .unwrap()
        .outbox_add(acct, "frozen@x.test", "a@x.test", &["a@x.test".into()], &raw, false, backproc_store::now())
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || show(&h, id)["sending"] == true));
    freeze(&master);
    // the master's next tick expires the lease before the slow conversation ends
    assert!(wait_until(Duration::from_secs(30), || h.log("l-info.log").contains("its record was left as")));
    assert!(h.run(&["stop"]).status.success());
    master.wait().unwrap();
    let r = show(&h, id);
    assert_eq!(r["state"], "ERROR", "{r}");
    assert!(r["error"].as_str().unwrap().contains("outcome unknown"), "{r}");
    assert!(r["info"].is_null(), "the late SUCCESS write must not land: {r}");
    assert!(in_sink(r["messageId"].as_str().unwrap()) <= 1);
    // and it is never picked up again automatically
    run_once(&h);
    assert_eq!(show(&h, id)["state"], "ERROR");
}

/// The connection dies right after the final "." has reached the server, before its 250
/// comes back (issue 11's proxy cut): the server may have the message, so the entry must end
/// as ERROR "delivery outcome unknown" at once and never be sent again by itself.
#[test]
fn a_cut_right_after_the_final_dot_is_outcome_unknown_and_never_resent() {
    let sink = SmtpSink::start(SinkOptions::default()).unwrap();
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", sink.port()).parse().unwrap()).unwrap();
    let (h, acct) = home_with_smtp(SEND, proxy.port(), 1);
    // Messages of one length, queued as applications do, so the bytes on the wire are known.
    let raw = |i: u32| {
        mailgen::message_with(
            &format!("cut {i}"),
            "a@x.test",
            "b@x.test",
            "Mon, 23 Nov 2026 12:00:00 +0000",
            &format!("cut{i}@x.test"),
            "one line of body\r\n",
        )
    };
    let queue = |i: u32| {
        let mut store = backproc_store::Store::open(&h.file("data/backproc.sqlite")).unwrap();
        let mid = format!("cut{i}@x.test");
        store.outbox_add(acct, &mid, "a@x.test", &["b@x.test".into()], &raw(i), false, backproc_store::now()).unwrap()
    };
    assert_eq!(raw(1).len(), raw(2).len());
    assert!(raw(2).ends_with(b"\r\n") && !raw(2).windows(3).any(|w| w == b"\n.\r" || w == b"\n.."));

    // A clean send shows where the DATA section starts on this connection.
    let first = queue(1);
    run_once(&h);
    assert_eq!(show(&h, first)["state"], "SUCCESS");
    let wire = proxy.captured_client();
    let data_at = wire.windows(6).position(|w| w == b"DATA\r\n").expect("DATA on the wire") + 6;
    // The same exchange again, cut after the DATA section's last byte: message + ".\r\n".
    let second = queue(2);
    proxy.set_fault(Fault::CutClientAfter { client_bytes: (data_at + raw(2).len() + 3) as u64 });
    run_once(&h);
    let r = show(&h, second);
    assert_eq!(r["state"], "ERROR", "{r}");
    assert!(r["error"].as_str().unwrap().contains("outcome unknown"), "{r}");
    let in_sink = || count(&sink.messages().unwrap().concat(), "Message-ID: <cut2@x.test>");
    let before = in_sink();
    assert!(before <= 1);

    // The link is fine again: the entry stays as it is and is not sent a second time.
    proxy.set_fault(Fault::Pass);
    h.pass_time(2);
    run_once(&h);
    assert_eq!(show(&h, second)["state"], "ERROR");
    assert_eq!(in_sink(), before, "an outcome-unknown entry was sent again");
}

/// A server that drops the connection after every final "." without answering: on a
/// pipelining server the next entry's envelope went out with that message, claimed ahead.
/// Each message that reached its "." ends as ERROR "outcome unknown", never sent twice; each
/// entry behind one is sent again on a new connection, its one attempt counted once.
#[test]
fn a_drop_after_each_final_dot_leaves_each_message_unknown_once_and_the_next_one_tried() {
    let sink = SmtpSink::start(SinkOptions { disconnect: vec![".".into()], ..Default::default() }).unwrap();
    let (h, acct) = home_with_smtp(SEND, sink.port(), 1);
    let ids: Vec<i64> = (0..3).map(|i| add(&h, acct, &["a@x.test"], &format!("drop {i}"))).collect();
    run_once(&h);
    let all = sink.messages().unwrap().concat();
    for id in &ids {
        let r = show(&h, *id);
        assert_eq!(r["state"], "ERROR", "{r}");
        assert!(r["error"].as_str().unwrap().contains("outcome unknown"), "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
        let mid = r["messageId"].as_str().unwrap();
        assert!(count(&all, &format!("Message-ID: <{mid}>")) <= 1, "{mid}");
    }
    assert_eq!(h.log("l-info.log").matches("delivery outcome unknown").count(), 3);
}

/// The whole engine under faketime (issue 11's process clock): an entry a dead worker left
/// PROCESSING stays untouched while its lease runs, and the first run an hour later (for the
/// engine's clock only) ends it as ERROR "outcome unknown" without sending it.
#[test]
fn under_faketime_a_stranded_entry_expires_after_its_lease_and_is_not_sent() {
    let sink = SmtpSink::start(SinkOptions::default()).unwrap();
    let (h, acct) = home_with_smtp(SEND, sink.port(), 1);
    let id = add(&h, acct, &["a@x.test"], "stranded");
    let mut store = backproc_store::Store::open(&h.file("data/backproc.sqlite")).unwrap();
    // a worker that claimed it, 300 s lease, and died
    store.outbox_claim_one(id, false, backproc_store::now(), 300).unwrap().expect("due");
    run_once(&h);
    assert_eq!(show(&h, id)["state"], "PROCESSING", "the lease still runs");
    let later = std::process::Command::new("faketime")
        .args(["-f", "+1h"])
        .arg(env!("CARGO_BIN_EXE_backproc"))
        .arg("--home")
        .arg(h.path())
        .args(["run", "--once"])
        .output()
        .expect("faketime (Debian package faketime, installed by scripts/test)");
    assert!(later.status.success(), "{}", stderr(&later));
    let r = show(&h, id);
    assert_eq!(r["state"], "ERROR", "{r}");
    assert!(r["error"].as_str().unwrap().contains("outcome unknown"), "{r}");
    assert!(r["endTime"].as_i64().unwrap() >= backproc_store::now() + 3000, "recorded at the engine's time: {r}");
    assert!(sink.messages().unwrap().is_empty(), "a stranded entry was sent");
}
