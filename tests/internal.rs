//! The internal message service (issue 8) through the real binary: sending, "not delivered",
//! check, drafts, the lifetime background process, errors and the poll interval.

use std::process::Output;

use crate::util::*;
use backproc_store::internal::InternalFolder;
use backproc_store::{HistoryFilter, Store};
use serde_json::Value;

const DAY: i64 = 86_400;

/// A home with users alice, bob and carol.
fn home() -> Home {
    let h = Home::new();
    for u in ["alice", "bob", "carol"] {
        let o = h.run(&["user", "add", u]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    h
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "exit {:?}\nstdout: {}\nstderr: {}", o.status.code(), stdout(&o), stderr(&o));
    stdout(&o)
}

/// Runs a command that must fail with exit code 1 and returns its stderr.
fn fails(o: Output) -> String {
    assert_eq!(o.status.code(), Some(1), "stdout: {}\nstderr: {}", stdout(&o), stderr(&o));
    stderr(&o)
}

fn send(h: &Home, from: &str, to: &[&str], subject: &str, extra: &[&str]) -> i64 {
    let mut args = vec!["internal", "send", "--from", from, "--subject", subject, "--body", "text"];
    for t in to {
        args.extend(["--to", t]);
    }
    args.extend(extra);
    ok(h.run(&args)).trim().parse().expect("a message id")
}

fn json(h: &Home, args: &[&str]) -> Value {
    serde_json::from_str(&ok(h.run(args))).expect("JSON output")
}

fn list(h: &Home, user: &str, folder: &str) -> Value {
    json(h, &["internal", "list", "--user", user, "--folder", folder, "--json"])
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array().expect("an array").iter().map(|m| m["id"].as_i64().unwrap()).collect()
}

fn store(h: &Home) -> Store {
    Store::open(&h.file("data/backproc.sqlite")).expect("open the store")
}

/// Every message row in the store, whoever's folder it is in.
fn message_count(h: &Home) -> usize {
    let s = store(h);
    ["alice", "bob", "carol"]
        .iter()
        .map(|u| {
            s.internal_list(u, InternalFolder::Sent).unwrap().len()
                + s.internal_list(u, InternalFolder::Drafts).unwrap().len()
        })
        .sum()
}

#[test]
fn sent_lists_recipients_who_have_not_read_until_all_have() {
    let h = home();
    let id = send(&h, "alice", &["bob", "carol"], "Lunch?", &[]);

    let inbox = list(&h, "bob", "inbox");
    assert_eq!(inbox["folder"], "inbox");
    assert_eq!(inbox["unread"], 1);
    assert_eq!(ids(&inbox["messages"]), vec![id]);
    assert_eq!(inbox["messages"][0]["read"], false);
    assert!(ok(h.run(&["internal", "list", "--user", "bob", "--folder", "inbox"])).contains("Inbox (1 unread)"));

    let sent = list(&h, "alice", "sent");
    assert_eq!(sent["messages"][0]["not_delivered"], serde_json::json!(["bob", "carol"]));

    ok(h.run(&["internal", "read", "--user", "bob", &id.to_string()]));
    let sent = list(&h, "alice", "sent");
    assert_eq!(sent["messages"][0]["not_delivered"], serde_json::json!(["carol"]));
    let text = ok(h.run(&["internal", "list", "--user", "alice", "--folder", "sent"]));
    assert!(text.contains("not delivered: carol"), "{text}");
    assert!(!text.contains("not delivered: bob"), "{text}");
    let inbox = list(&h, "bob", "inbox");
    assert_eq!((inbox["unread"].as_i64(), inbox["messages"][0]["read"].as_bool()), (Some(0), Some(true)));
    assert!(ok(h.run(&["internal", "list", "--user", "bob", "--folder", "inbox"])).contains("Inbox (0 unread)"));

    ok(h.run(&["internal", "read", "--user", "carol", &id.to_string()]));
    let sent = list(&h, "alice", "sent");
    assert_eq!(sent["messages"][0]["not_delivered"], serde_json::json!([]));
    let text = ok(h.run(&["internal", "list", "--user", "alice", "--folder", "sent"]));
    assert!(!text.contains("not delivered"), "{text}");
    // the sender is not a recipient: reading it is refused
    assert!(fails(h.run(&["internal", "read", "--user", "alice", &id.to_string()])).contains("not found"));
}

#[test]
fn check_returns_new_messages_once_with_high_importance_apart() {
    let h = home();
    let check = |user: &str| json(&h, &["internal", "check", "--user", user, "--json"]);
    assert_eq!(check("bob"), serde_json::json!({ "high": [], "normal": [] }));

    let n1 = send(&h, "alice", &["bob"], "normal one", &[]);
    let hi = send(&h, "carol", &["bob"], "urgent", &["--importance", "high"]);
    let n2 = send(&h, "carol", &["bob", "alice"], "normal two", &["--importance", "normal"]);
    let c = check("bob");
    assert_eq!(ids(&c["high"]), vec![hi]);
    assert_eq!(ids(&c["normal"]), vec![n1, n2]);
    assert_eq!(c["high"][0]["subject"], "urgent");
    // second check: nothing new (in both forms)
    assert_eq!(check("bob"), serde_json::json!({ "high": [], "normal": [] }));
    assert!(ok(h.run(&["internal", "check", "--user", "bob"])).contains("No new messages"));
    // the last check time is stored
    assert!(store(&h).user_by_login("bob").unwrap().last_check.is_some());
    // alice's own check is independent of bob's
    assert_eq!(ids(&check("alice")["normal"]), vec![n2]);

    // text form: a modal section and a toast section
    let h2 = send(&h, "alice", &["bob"], "fire", &["--importance", "high"]);
    let n3 = send(&h, "alice", &["bob"], "fyi", &[]);
    let text = ok(h.run(&["internal", "check", "--user", "bob"]));
    let modal = text.find("High importance (show as a modal):").expect(&text);
    let new = text.find("New:").expect(&text);
    let (fire, fyi) = (text.find("fire").unwrap(), text.find("fyi").unwrap());
    assert!(modal < fire && fire < new && new < fyi, "{text}");
    assert!(text.contains(&h2.to_string()) && text.contains(&n3.to_string()));
    assert!(ok(h.run(&["internal", "check", "--user", "bob"])).contains("No new messages"));
}

#[test]
fn drafts_are_saved_edited_and_sent_only_by_their_author() {
    let h = home();
    let body = h.file("body.txt");
    std::fs::write(&body, "first body\nsecond line\n").unwrap();
    let id: i64 = ok(h.run(&[
        "internal",
        "draft",
        "--from",
        "alice",
        "--to",
        "bob",
        "--subject",
        "plan v1",
        "--body-file",
        body.to_str().unwrap(),
    ]))
    .trim()
    .parse()
    .unwrap();
    let drafts = list(&h, "alice", "drafts");
    assert_eq!(ids(&drafts["messages"]), vec![id]);
    assert_eq!(drafts["messages"][0]["body"], "first body\nsecond line\n");
    assert!(ids(&list(&h, "bob", "inbox")["messages"]).is_empty(), "a draft is not delivered");

    // edit: new subject, recipients and importance
    let out = ok(h.run(&[
        "internal",
        "draft",
        "--from",
        "alice",
        "--id",
        &id.to_string(),
        "--to",
        "carol",
        "--to",
        "bob",
        "--subject",
        "plan v2",
        "--body",
        "edited",
        "--importance",
        "high",
    ]));
    assert_eq!(out.trim(), id.to_string());
    let d = &list(&h, "alice", "drafts")["messages"][0];
    assert_eq!(
        (d["subject"].as_str(), d["body"].as_str(), d["importance"].as_str()),
        (Some("plan v2"), Some("edited"), Some("high"))
    );
    assert_eq!(d["to"], serde_json::json!(["bob", "carol"]));

    // another user can neither edit nor send it; nothing changes
    let e = fails(h.run(&["internal", "send", "--from", "bob", "--draft", &id.to_string()]));
    assert!(e.contains("another user"), "{e}");
    let e = fails(h.run(&[
        "internal",
        "draft",
        "--from",
        "bob",
        "--id",
        &id.to_string(),
        "--to",
        "bob",
        "--subject",
        "hijack",
        "--body",
        "x",
    ]));
    assert!(e.contains("another user"), "{e}");
    let d = &list(&h, "alice", "drafts")["messages"][0];
    assert_eq!(d["subject"], "plan v2");
    assert!(ids(&list(&h, "bob", "inbox")["messages"]).is_empty());
    assert!(ids(&list(&h, "bob", "sent")["messages"]).is_empty());

    // the author sends it
    assert_eq!(ok(h.run(&["internal", "send", "--from", "alice", "--draft", &id.to_string()])).trim(), id.to_string());
    assert!(ids(&list(&h, "alice", "drafts")["messages"]).is_empty());
    assert_eq!(ids(&list(&h, "alice", "sent")["messages"]), vec![id]);
    for u in ["bob", "carol"] {
        let c = json(&h, &["internal", "check", "--user", u, "--json"]);
        assert_eq!(ids(&c["high"]), vec![id], "{u}");
    }
    // sent once only
    fails(h.run(&["internal", "send", "--from", "alice", "--draft", &id.to_string()]));
    assert_eq!(message_count(&h), 1);
}

#[test]
fn the_background_process_deletes_old_unread_messages_only() {
    let h = home();
    let old_unread = send(&h, "alice", &["bob"], "old unread", &[]);
    let old_read = send(&h, "alice", &["bob"], "old read", &[]);
    let young_unread = send(&h, "alice", &["bob"], "young unread", &[]);
    ok(h.run(&["internal", "read", "--user", "bob", &old_read.to_string()]));
    {
        let mut s = store(&h);
        let now = backproc_store::now();
        s.internal_backdate(old_unread, now - 8 * DAY).unwrap();
        s.internal_backdate(old_read, now - 8 * DAY).unwrap();
        s.internal_backdate(young_unread, now - 6 * DAY).unwrap();
    }
    let started = backproc_store::now();

    let o = h.run(&["run", "--once"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let mut inbox = ids(&list(&h, "bob", "inbox")["messages"]);
    inbox.sort();
    assert_eq!(inbox, vec![old_read, young_unread]);
    assert!(!ids(&list(&h, "alice", "sent")["messages"]).contains(&old_unread));
    let log = h.log("l-info.log");
    assert!(log.contains("deleted 1 unread internal message(s) older than 7 days"), "{log}");
    let hist = store(&h)
        .history(&HistoryFilter {
            since: started - 5,
            process: Some("Deleting expired internal messages".into()),
            ..HistoryFilter::default()
        })
        .unwrap();
    let finished: Vec<_> = hist.iter().filter(|r| r.status == "Finished").collect();
    assert_eq!(finished.len(), 1, "{hist:?}");
    assert_eq!(finished[0].count, Some(1));
    assert!(hist.iter().any(|r| r.status == "Started"), "{hist:?}");
}

#[test]
fn invalid_sends_fail_clearly_and_store_nothing() {
    let h = home();
    let base = ["internal", "send", "--from", "alice", "--body", "x"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--to", "nobody", "--subject", "s"], "user nobody not found"),
        (vec!["--to", "bob", "--to", "nobody", "--subject", "s"], "user nobody not found"),
        (vec!["--subject", "s"], "recipient"),
        (vec!["--to", "bob", "--subject", "two\nlines"], "one line"),
        (vec!["--to", "bob", "--subject", "carriage\rreturn"], "one line"),
    ];
    for (extra, expect) in cases {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let e = fails(h.run(&args));
        assert!(e.contains("backproc: ") && e.contains(expect), "{extra:?}: {e}");
    }
    // unknown sender
    let e = fails(h.run(&["internal", "send", "--from", "zed", "--to", "bob", "--subject", "s", "--body", "x"]));
    assert!(e.contains("user zed not found"), "{e}");
    // unreadable body file
    let missing = h.file("no-such-body.txt");
    let e = fails(h.run(&[
        "internal",
        "send",
        "--from",
        "alice",
        "--to",
        "bob",
        "--subject",
        "s",
        "--body-file",
        missing.to_str().unwrap(),
    ]));
    assert!(e.contains("cannot read the body file"), "{e}");
    // a draft with a bad subject or an unknown recipient is refused too
    fails(h.run(&["internal", "draft", "--from", "alice", "--to", "nobody", "--subject", "s"]));
    fails(h.run(&["internal", "draft", "--from", "alice", "--subject", "a\nb"]));
    // listing for an unknown user
    assert!(fails(h.run(&["internal", "list", "--user", "zed", "--folder", "inbox"])).contains("user zed not found"));

    assert_eq!(message_count(&h), 0);
    for u in ["alice", "bob", "carol"] {
        assert!(ids(&list(&h, u, "inbox")["messages"]).is_empty());
    }
}

#[test]
fn poll_interval_defaults_to_the_constant_and_is_stored_per_user() {
    let h = home();
    let poll = |args: &[&str]| h.run(&[&["internal", "poll-interval", "--user"][..], args].concat());
    assert_eq!(ok(poll(&["bob"])).trim(), "300");
    assert_eq!(ok(poll(&["bob", "120"])).trim(), "120");
    assert_eq!(ok(poll(&["bob"])).trim(), "120");
    assert_eq!(ok(poll(&["carol"])).trim(), "300", "per user");
    for bad in ["9", "86401", "0"] {
        let e = fails(poll(&["bob", bad]));
        assert!(e.contains("out of range"), "{bad}: {e}");
    }
    assert_eq!(ok(poll(&["bob"])).trim(), "120", "a refused value changes nothing");
    assert_eq!(ok(poll(&["bob", "86400"])).trim(), "86400");
    assert!(fails(poll(&["zed"])).contains("user zed not found"));

    // the default comes from INTERNAL_MSG_POLL_INTERVAL
    let h2 = Home::with_config("<?php\ndefine('INTERNAL_MSG_POLL_INTERVAL', 60);\n");
    ok(h2.run(&["user", "add", "dave"]));
    assert_eq!(ok(h2.run(&["internal", "poll-interval", "--user", "dave"])).trim(), "60");
}
