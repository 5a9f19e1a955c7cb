//! The master's schedule end to end against a real Dovecot: an owner who is logged in gets
//! their high-priority folders synced more often than one who is not; "check mail now".

use std::time::Duration;

use crate::mailworld::*;
use crate::util::*;
use backproc_store::HistoryFilter;
use backproc_testkit::mailgen;

#[test]
fn a_logged_in_owner_is_synced_more_often() {
    let config = "<?php
define('EMAIL_BACKGROUND_SYNC_ENABLED', TRUE);
define('BG_TICK_INTERVAL', 1);
define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL', 1);
define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL_NL', 4);
define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL', 600);
define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL_NL', 600);
";
    let w = MailWorld::start(config);
    w.dovecot.add_user("bob", "bob-pw").unwrap();
    let bob = add_account(&w.home, &w.dovecot, "bob", "bob-pw", "none", w.dovecot.imap_port(), &[]);
    w.dovecot.populate(&w.user, &w.password, "INBOX", &mailgen::mailbox(1, 3)).unwrap();
    w.dovecot.populate("bob", "bob-pw", "INBOX", &mailgen::mailbox(2, 3)).unwrap();
    // alice's owner is logged in, bob's is not
    let o = w.home.run(&["user", "login", &format!("owner-{}", w.user), "--for", "3600"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut master = w.home.spawn(&["run"]);
    std::thread::sleep(Duration::from_secs(9));
    assert!(w.home.run(&["stop"]).status.success());
    master.wait().unwrap();
    let store = w.store();
    let recent = |account: i64| {
        let inbox = folder_id(&store, account, "INBOX");
        store
            .history(&HistoryFilter {
                process: Some("Sync (recent)".into()),
                account_id: Some(account),
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .filter(|h| h.folder_id == Some(inbox) && h.status == "Finished")
            .count()
    };
    let (a, b) = (recent(w.account), recent(bob));
    assert!(a >= 5, "logged-in INBOX synced {a} times in 9 s");
    assert!(b <= 2, "not-logged-in INBOX synced {b} times in 9 s");
    assert!(a >= 3 * b.max(1), "logged in {a} vs not {b}");
    // both got their mail
    assert_eq!(store_messages(&store, folder_id(&store, bob, "INBOX")).len(), 3);
}

#[test]
fn check_mail_now_runs_in_the_foreground_without_a_master() {
    let w = MailWorld::start("<?php define('EMAIL_BACKGROUND_SYNC_ENABLED', TRUE);");
    w.run_once();
    w.dovecot.populate(&w.user, &w.password, "INBOX", &mailgen::mailbox(3, 4)).unwrap();
    // not due yet by the schedule; `sync` makes it due and does it now
    let o = w.home.run(&["sync", "--account", &w.account.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("4 new message(s) found, 4 received"), "{}", stdout(&o));
    let store = w.store();
    assert_eq!(store_messages(&store, folder_id(&store, w.account, "INBOX")).len(), 4);
}

/// `sync` counts what Sync found and Receive received, not what Sync Delete deleted (issue
/// 18: its history sum matched every process starting with "Sync").
#[test]
fn check_mail_now_does_not_count_deletions_as_new_mail() {
    let w = MailWorld::start(
        "<?php define('EMAIL_BACKGROUND_SYNC_ENABLED', TRUE); define('EMAIL_BG_SYNC_DELETE_INTERVAL', 1);",
    );
    w.dovecot.populate(&w.user, &w.password, "INBOX", &mailgen::mailbox(5, 2)).unwrap();
    w.run_once();
    let store = w.store();
    let inbox = folder_id(&store, w.account, "INBOX");
    let first = store.message_id_by_uid(inbox, 1).unwrap();
    assert!(w.home.run(&["mail", "delete", &first.to_string()]).status.success());
    w.dovecot.populate(&w.user, &w.password, "INBOX", &mailgen::mailbox(6, 3)).unwrap();
    w.home.pass_time(2);
    let o = w.home.run(&["sync", "--account", &w.account.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let deleted = store
        .history(&HistoryFilter { process: Some("Sync Delete".into()), ..Default::default() })
        .unwrap()
        .iter()
        .filter(|h| h.status == "Finished")
        .filter_map(|h| h.count)
        .sum::<i64>();
    assert!(deleted >= 1, "the scenario needs a Sync Delete that deleted something");
    assert!(stdout(&o).contains("3 new message(s) found, 3 received"), "{}", stdout(&o));
}
