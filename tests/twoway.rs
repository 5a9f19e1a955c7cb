//! Two-way changes against a real Dovecot: deletions both ways (with the safety brake),
//! purge, retention, read flags from the application, and crash safety.

use std::time::Duration;

use crate::mailworld::*;
use crate::util::*;
use backproc_testkit::mailgen;

const CONFIG: &str = EVERY_SECOND;

fn next_run(w: &MailWorld) {
    w.home.pass_time(2);
    w.run_once();
}

fn server_uids(w: &MailWorld, folder: &str) -> Vec<u32> {
    server_messages(&mut w.imap(), folder).into_iter().map(|m| m.0).collect()
}

fn world(n: usize, config: &str) -> (MailWorld, i64) {
    let w = MailWorld::start(config);
    w.dovecot.populate(&w.user, &w.password, "INBOX", &mailgen::mailbox(41, n)).unwrap();
    w.run_once();
    let inbox = folder_id(&w.store(), w.account, "INBOX");
    (w, inbox)
}

fn mail(w: &MailWorld, args: &[&str]) {
    let o = w.home.run(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
}

#[test]
fn deletions_go_both_ways_then_are_purged() {
    let (w, inbox) = world(60, CONFIG);
    let store = w.store();
    // 10 deleted here → moved to Trash on the server
    for uid in 1..=10 {
        let id = store.message_id_by_uid(inbox, uid).unwrap().to_string();
        mail(&w, &["mail", "delete", &id]);
    }
    let listed: serde_json::Value = serde_json::from_slice(
        &w.home.run(&["mail", "list", "--account", &w.account.to_string(), "--limit", "1000", "--json"]).stdout,
    )
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 50, "deleted at once locally");
    next_run(&w);
    assert_eq!(server_uids(&w, "INBOX"), (11..=60).collect::<Vec<u32>>());
    assert_eq!(server_messages(&mut w.imap(), "Trash").len(), 10);
    // 10 deleted on the server → deleted here
    let mut s = w.imap();
    s.select("INBOX").unwrap();
    s.uid_store("51:60", "+FLAGS (\\Deleted)").unwrap();
    s.expunge().unwrap();
    drop(s);
    next_run(&w);
    next_run(&w);
    let store = w.store();
    assert_eq!(
        store_messages(&store, inbox).iter().map(|m| m.0).collect::<Vec<u32>>(),
        (11..=50).collect::<Vec<u32>>()
    );
    assert_eq!(store.folder_row_count(inbox).unwrap(), 40, "purged: rows and bodies gone");
    let info = w.home.log("l-info.log");
    assert!(info.contains("deleted 10 messages on server, 0 locally in"), "{info}");
    assert!(
        regex::Regex::new(r"deleted 0 messages on server, 10 locally in \d+s \[\d+,\d+\]").unwrap().is_match(&info),
        "{info}"
    );
}

#[test]
fn a_message_deleted_on_both_sides_is_one_clean_deletion() {
    let (w, inbox) = world(5, CONFIG);
    let id = w.store().message_id_by_uid(inbox, 3).unwrap().to_string();
    mail(&w, &["mail", "delete", &id]);
    let mut s = w.imap();
    s.select("INBOX").unwrap();
    s.uid_store("3", "+FLAGS (\\Deleted)").unwrap();
    s.expunge().unwrap();
    drop(s);
    next_run(&w);
    next_run(&w);
    assert_eq!(server_uids(&w, "INBOX"), vec![1, 2, 4, 5]);
    assert_eq!(server_messages(&mut w.imap(), "Trash").len(), 0);
    assert_eq!(w.store().folder_row_count(inbox).unwrap(), 4);
    let errors = w.store().history(&backproc_store::HistoryFilter { errors_only: true, ..Default::default() }).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn read_flags_follow_the_newest_change() {
    let (w, inbox) = world(5, CONFIG);
    let store = w.store();
    // read here → \Seen on the server
    let id1 = store.message_id_by_uid(inbox, 1).unwrap().to_string();
    mail(&w, &["mail", "flag", &id1, "--seen"]);
    next_run(&w);
    assert_eq!(server_messages(&mut w.imap(), "INBOX")[0].1, "\\Seen");
    // unread on the server → unread here
    let mut s = w.imap();
    s.select("INBOX").unwrap();
    s.uid_store("1", "-FLAGS (\\Seen)").unwrap();
    drop(s);
    next_run(&w);
    assert_eq!(store_messages(&w.store(), inbox)[0].1, "");
    // the server changes uid 2 first, then the user changes it here after that sync: the
    // local change (newer than the last sync) wins over the server's older state
    let mut s = w.imap();
    s.select("INBOX").unwrap();
    s.uid_store("2", "+FLAGS (\\Flagged)").unwrap();
    drop(s);
    next_run(&w);
    let id2 = w.store().message_id_by_uid(inbox, 2).unwrap().to_string();
    mail(&w, &["mail", "flag", &id2, "--unflagged", "--seen"]);
    next_run(&w);
    assert_eq!(server_messages(&mut w.imap(), "INBOX")[1].1, "\\Seen");
    assert_eq!(store_messages(&w.store(), inbox)[1].1, "\\Seen");
}

#[test]
fn keep_days_removes_exactly_the_old_messages_on_both_sides() {
    let w = MailWorld::start(CONFIG);
    let mut s = w.imap();
    let now = chrono::Utc::now();
    for (i, days) in [10i64, 29, 31, 400].iter().enumerate() {
        let dt = (now - chrono::Duration::days(*days)).fixed_offset();
        let raw = mailgen::message_with(
            &format!("aged {days}"),
            "a@x.test",
            "u@x.test",
            &dt.to_rfc2822(),
            &format!("<age{i}@x>"),
            "body",
        );
        s.append("INBOX", &raw).internal_date(dt).finish().unwrap();
    }
    drop(s);
    w.run_once();
    let o = w.home.run(&["account", "set", &w.account.to_string(), "--keep-days", "30"]);
    assert!(o.status.success(), "{}", stderr(&o));
    next_run(&w);
    next_run(&w);
    assert_eq!(server_uids(&w, "INBOX"), vec![1, 2]);
    let inbox = folder_id(&w.store(), w.account, "INBOX");
    assert_eq!(store_messages(&w.store(), inbox).iter().map(|m| m.0).collect::<Vec<u32>>(), vec![1, 2]);
    assert!(w.home.log("l-info.log").contains("marked 2 messages older than 30 days for deletion"));
}

#[test]
fn a_message_another_client_flagged_deleted_is_never_expunged_by_us() {
    let w = MailWorld::start(CONFIG);
    w.dovecot.populate(&w.user, &w.password, "Trash", &mailgen::mailbox(5, 4)).unwrap();
    w.run_once();
    let trash = folder_id(&w.store(), w.account, "Trash");
    // another client flags uid 1 \Deleted without expunging
    let mut s = w.imap();
    s.select("Trash").unwrap();
    s.uid_store("1", "+FLAGS (\\Deleted)").unwrap();
    drop(s);
    // we delete uid 2 (in Trash itself: \Deleted + UID EXPUNGE of ours only)
    let id = w.store().message_id_by_uid(trash, 2).unwrap().to_string();
    mail(&w, &["mail", "delete", &id]);
    next_run(&w);
    let left = server_messages(&mut w.imap(), "Trash");
    assert_eq!(left.iter().map(|m| m.0).collect::<Vec<u32>>(), vec![1, 3, 4]);
    assert!(left[0].1.contains("\\Deleted"));
}

#[test]
fn emptying_a_folder_trips_the_brake_until_confirmed() {
    let (w, inbox) = world(200, CONFIG);
    let mut s = w.imap();
    s.select("INBOX").unwrap();
    s.uid_store("1:*", "+FLAGS (\\Deleted)").unwrap();
    s.expunge().unwrap();
    drop(s);
    next_run(&w);
    next_run(&w);
    assert_eq!(store_messages(&w.store(), inbox).len(), 200, "nothing deleted locally");
    let info = w.home.log("l-info.log");
    assert!(info.contains("safety brake: this run would delete 200 of 200 messages locally"), "{info}");
    assert!(info.contains(&format!("backproc mail confirm-deletions --folder {inbox}")));
    let errors = w.store().history(&backproc_store::HistoryFilter { errors_only: true, ..Default::default() }).unwrap();
    assert!(errors.iter().any(|h| h.detail.as_deref().unwrap_or("").contains("safety brake")), "{errors:?}");
    mail(&w, &["mail", "confirm-deletions", "--folder", &inbox.to_string()]);
    next_run(&w);
    next_run(&w);
    assert!(store_messages(&w.store(), inbox).is_empty());
    assert!(server_uids(&w, "INBOX").is_empty());
}

#[test]
fn kill_9_during_sync_delete_reaches_the_same_end_state() {
    let config = format!("{CONFIG}define('EMAIL_BG_DELETE_BRAKE_PERCENT', 60);\n");
    let (w, inbox) = world(300, &config);
    let store = w.store();
    for uid in (1..=300).step_by(2) {
        let id = store.message_id_by_uid(inbox, uid).unwrap().to_string();
        mail(&w, &["mail", "delete", &id]);
    }
    for delay in [50u64, 120, 250] {
        w.home.pass_time(2);
        let mut c = w.home.spawn(&["run", "--once"]);
        std::thread::sleep(Duration::from_millis(delay));
        let _ = c.kill();
        let _ = c.wait();
        assert_eq!(w.store().integrity_check().unwrap(), "ok");
    }
    next_run(&w);
    next_run(&w);
    let even: Vec<u32> = (2..=300).step_by(2).collect();
    assert_eq!(server_uids(&w, "INBOX"), even);
    assert_eq!(store_messages(&w.store(), inbox).iter().map(|m| m.0).collect::<Vec<u32>>(), even);
    assert_eq!(server_messages(&mut w.imap(), "Trash").len(), 150);
}
