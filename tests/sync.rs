//! IMAP sync into the store against a real Dovecot: completeness, idempotence, UIDVALIDITY,
//! crashes, broken connections, bad credentials and certificates.

use std::time::Duration;

use crate::mailworld::*;
use crate::util::*;
use backproc_testkit::{Fault, FaultProxy, mailgen};

const CONFIG: &str = EVERY_SECOND;

fn assert_same(w: &MailWorld, folders: &[&str]) {
    let store = w.store();
    let mut imap = w.imap();
    for f in folders {
        let server = server_messages(&mut imap, &backproc_imap::mutf7::encode(f));
        let id = folder_id(&store, w.account, f);
        let local = store_messages(&store, id);
        assert_eq!(local.len(), server.len(), "message count of {f}");
        for (l, s) in local.iter().zip(&server) {
            assert_eq!(l.0, s.0, "uid in {f}");
            assert_eq!(l.1, s.1, "flags of uid {} in {f}", s.0);
            assert!(l.2 == s.2, "raw bytes of uid {} in {f}", s.0);
        }
    }
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

fn set_all_high(w: &MailWorld) {
    let store = w.store();
    for f in store.folders(Some(w.account)).unwrap() {
        let o = w.home.run(&["folder", "set-priority", &f.id.to_string(), "high"]);
        assert!(o.status.success());
    }
}

#[test]
fn a_mailbox_lands_completely_once_and_changes_follow() {
    let w = MailWorld::start(CONFIG);
    let folders = ["INBOX", "Archive", "日本語 📬 a+b", "Входящие 2024 & more"];
    let msgs = mailgen::mailbox(7, 1000);
    for f in &folders[1..] {
        w.dovecot.create_folder(&w.user, &w.password, f).unwrap();
    }
    w.dovecot.populate(&w.user, &w.password, "INBOX", &msgs[..700]).unwrap();
    for (i, f) in folders[1..].iter().enumerate() {
        w.dovecot.populate(&w.user, &w.password, f, &msgs[700 + i * 100..800 + i * 100]).unwrap();
    }
    // some flags on the server before the first sync
    let mut s = w.imap();
    s.select("INBOX").unwrap();
    s.uid_store("1:50", "+FLAGS (\\Seen)").unwrap();
    s.uid_store("40:60", "+FLAGS (\\Flagged)").unwrap();
    drop(s);

    w.run_once();
    assert_same(&w, &folders);
    let info = w.home.log("l-info.log");
    assert!(info.contains("received 700 new messages in"), "{info}");
    let folder_names: Vec<String> =
        w.store().folders(Some(w.account)).unwrap().into_iter().map(|f| f.display_name).collect();
    assert!(folder_names.contains(&"Входящие 2024 & more".to_string()), "{folder_names:?}");
    assert!(folder_names.contains(&"日本語 📬 a+b".to_string()), "{folder_names:?}");

    // a second run fetches nothing
    set_all_high(&w);
    w.home.pass_time(2);
    let before = w.home.log("l-info.log").len();
    w.run_once();
    let second = w.home.log("l-info.log")[before..].to_string();
    assert!(second.contains("found 0 new messages"), "{second}");
    assert!(!regex::Regex::new(r"received [1-9]").unwrap().is_match(&second), "{second}");

    // 10 new messages and 20 flag changes on the server
    let extra = mailgen::mailbox(8, 10);
    w.dovecot.populate(&w.user, &w.password, "INBOX", &extra).unwrap();
    let mut s = w.imap();
    s.select("INBOX").unwrap();
    s.uid_store("1:10", "-FLAGS (\\Seen)").unwrap();
    s.uid_store("100:109", "+FLAGS (\\Answered)").unwrap();
    drop(s);
    w.home.pass_time(2);
    w.run_once();
    assert_same(&w, &folders);
}

#[test]
fn uidvalidity_change_resyncs_the_folder_without_duplicates() {
    let w = MailWorld::start(CONFIG);
    w.dovecot.create_folder(&w.user, &w.password, "Lists").unwrap();
    let msgs = mailgen::mailbox(11, 60);
    w.dovecot.populate(&w.user, &w.password, "Lists", &msgs[..40]).unwrap();
    w.run_once();
    assert_same(&w, &["Lists"]);
    set_all_high(&w);
    // recreate the folder: new UIDVALIDITY, partly the same messages, partly new ones
    w.dovecot.delete_folder(&w.user, &w.password, "Lists").unwrap();
    w.dovecot.create_folder(&w.user, &w.password, "Lists").unwrap();
    w.dovecot.populate(&w.user, &w.password, "Lists", &msgs[20..60]).unwrap();
    w.home.pass_time(2);
    w.run_once();
    assert_same(&w, &["Lists"]);
    let info = w.home.log("l-info.log");
    assert!(info.contains("UIDVALIDITY changed"), "{info}");
    // the 20 messages the store already had were re-keyed, not downloaded again
    let received: u32 = regex::Regex::new(r"received (\d+) new messages")
        .unwrap()
        .captures_iter(&info)
        .map(|c| c[1].parse::<u32>().unwrap())
        .sum();
    assert_eq!(received, 40 + 20, "{info}");
}

#[test]
fn kill_9_during_receive_loses_and_duplicates_nothing() {
    let w = MailWorld::start(&format!("{CONFIG}define('EMAIL_BG_RECEIVE_BATCH_MESSAGES', 25);\n"));
    let msgs = mailgen::mailbox(21, 600);
    w.dovecot.populate(&w.user, &w.password, "INBOX", &msgs).unwrap();
    for delay_ms in [150u64, 300, 450, 700, 1000] {
        let mut child = w.home.spawn(&["run", "--once"]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(w.store().integrity_check().unwrap(), "ok");
    }
    w.run_once();
    assert_same(&w, &["INBOX"]);
}

#[test]
fn a_connection_cut_mid_fetch_counts_attempts_then_secondary_fetches_it() {
    let dovecot = backproc_testkit::Dovecot::start().unwrap();
    dovecot.add_user("bob", "pw-bob").unwrap();
    let big = mailgen::message_with(
        "big one",
        "a@x.test",
        "bob@backproc.test",
        "Mon, 23 Nov 2026 10:00:00 +0000",
        "<big@backproc.test>",
        &"0123456789abcdef".repeat(8000),
    );
    dovecot.append("bob", "pw-bob", "INBOX", &big, &[]).unwrap();
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", dovecot.imap_port()).parse().unwrap()).unwrap();
    proxy.set_fault(Fault::CutAfter { server_bytes: 60_000 });
    let home = Home::with_config(CONFIG);
    let account = add_account(&home, &dovecot, "bob", "pw-bob", "none", proxy.port(), &[]);
    for _ in 0..6 {
        let o = home.run(&["run", "--once"]);
        assert!(o.status.success(), "{}", stderr(&o));
        home.pass_time(2);
    }
    let store = backproc_store::Store::open(&home.file("data/backproc.sqlite")).unwrap();
    let (primary, secondary, failed) = store.receive_queue_depths().unwrap();
    assert_eq!((primary, secondary, failed), (0, 1, 0), "{}", home.log("l-info.log"));
    let inbox = folder_id(&store, account, "INBOX");
    assert!(store_messages(&store, inbox).is_empty());
    // the cut stops: Receive Secondary fetches it
    proxy.set_fault(Fault::Pass);
    let o = home.run(&["run", "--once"]);
    assert!(o.status.success());
    assert_eq!(store.receive_queue_depths().unwrap(), (0, 0, 0));
    let got = store_messages(&store, inbox);
    assert_eq!(got.len(), 1);
    assert!(got[0].2 == big);
}

#[test]
fn bad_password_unreachable_host_and_untrusted_certificate_are_clear_errors() {
    let w = MailWorld::start(CONFIG);
    w.dovecot.populate(&w.user, &w.password, "INBOX", &mailgen::mailbox(3, 5)).unwrap();
    let bad_pw = add_account(&w.home, &w.dovecot, &w.user, "wrong-password", "none", w.dovecot.imap_port(), &[]);
    let closed = backproc_testkit::free_port();
    let unreachable = add_account(&w.home, &w.dovecot, &w.user, &w.password, "none", closed, &[]);
    // IMAPS with a self-signed certificate that is not trusted
    let untrusted = add_account(&w.home, &w.dovecot, &w.user, &w.password, "ssl", w.dovecot.imaps_port(), &[]);
    w.run_once();
    assert_same(&w, &["INBOX"]);
    let info = w.home.log("l-info.log");
    assert!(info.contains(&format!("Authentication failed: login of {} refused", w.user)), "{info}");
    assert!(info.contains(&format!("[{bad_pw},]")), "{info}");
    assert!(info.contains(&format!("[{unreachable},]")) && info.contains("Connection refused"), "{info}");
    assert!(info.contains(&format!("[{untrusted},]")) && info.contains("Secure connection failed"), "{info}");
    assert!(!info.contains("wrong-password") && !info.contains(&w.password), "a password leaked into the log");
    assert!(w.home.log("l-threading-error.txt").lines().all(|l| !l.contains("panic")));
    let store = w.store();
    let errors = store.history(&backproc_store::HistoryFilter { errors_only: true, ..Default::default() }).unwrap();
    let status_of = |a: i64| errors.iter().find(|h| h.account_id == Some(a)).map(|h| h.status.clone());
    assert_eq!(status_of(bad_pw).as_deref(), Some("Authentication failed"));
    assert_eq!(status_of(unreachable).as_deref(), Some("Connection refused"));
    assert_eq!(status_of(untrusted).as_deref(), Some("Secure connection failed"));
    assert_eq!(status_of(w.account), None);
}

#[test]
fn imaps_and_starttls_with_a_trusted_certificate() {
    let w = MailWorld::start(CONFIG);
    w.dovecot.populate(&w.user, &w.password, "INBOX", &mailgen::mailbox(5, 20)).unwrap();
    let ca = w.dovecot.ca_cert_path().to_string_lossy().into_owned();
    let home2 = Home::with_config(CONFIG);
    let a =
        add_account(&home2, &w.dovecot, &w.user, &w.password, "ssl", w.dovecot.imaps_port(), &["--tls-ca-file", &ca]);
    let b = add_account(
        &home2,
        &w.dovecot,
        &w.user,
        &w.password,
        "starttls",
        w.dovecot.imap_port(),
        &["--tls-ca-file", &ca],
    );
    let o = home2.run(&["run", "--once"]);
    assert!(o.status.success());
    let store = backproc_store::Store::open(&home2.file("data/backproc.sqlite")).unwrap();
    for acct in [a, b] {
        let inbox = folder_id(&store, acct, "INBOX");
        assert_eq!(store_messages(&store, inbox).len(), 20, "{}", home2.log("l-info.log"));
    }
}

#[test]
fn plaintext_to_a_remote_host_is_refused() {
    let h = Home::new();
    h.run(&["user", "add", "u"]);
    let o = h.run_stdin(
        &[
            "account",
            "add",
            "--owner",
            "u",
            "--email",
            "u@x.test",
            "--imap-host",
            "imap.example.org",
            "--imap-security",
            "none",
            "--login",
            "u",
            "--password-stdin",
        ],
        "pw",
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("in clear"), "{}", stderr(&o));
    let o = h.run(&["account", "list", "--json"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap().as_array().unwrap().len(), 0);
}

/// A resync's first mailbox command is INBOX's STATUS, before LIST and the other folders':
/// Dovecot answers it in ~0.3 ms then, and in 4-6 ms after any other mailbox command (14,000
/// messages; bench/README.md). The answers stand in for each folder's own STATUS.
#[test]
fn a_resync_asks_inbox_first_and_every_due_folder_in_one_batch() {
    let dovecot = backproc_testkit::Dovecot::start().unwrap();
    dovecot.add_user("bob", "pw-bob").unwrap();
    for f in ["Archive", "Zeta"] {
        dovecot.create_folder("bob", "pw-bob", f).unwrap();
    }
    dovecot.populate("bob", "pw-bob", "INBOX", &mailgen::mailbox(3, 5)).unwrap();
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", dovecot.imap_port()).parse().unwrap()).unwrap();
    let home = Home::with_config(CONFIG);
    add_account(&home, &dovecot, "bob", "pw-bob", "none", proxy.port(), &[]);
    assert!(home.run(&["run", "--once"]).status.success());
    for f in backproc_store::Store::open(&home.file("data/backproc.sqlite")).unwrap().folders(None).unwrap() {
        assert!(home.run(&["folder", "set-priority", &f.id.to_string(), "high"]).status.success());
    }
    home.pass_time(2);
    let before = proxy.captured_client().len();
    let o = home.run(&["run", "--once"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let wire = String::from_utf8_lossy(&proxy.captured_client()[before..]).into_owned();
    let at = |what: &str| wire.find(what).unwrap_or_else(|| panic!("no {what:?} in {wire}"));
    let inbox = at("STATUS \"INBOX\"");
    for later in ["LIST", "STATUS \"Archive\"", "STATUS \"Zeta\"", "STATUS \"Sent\""] {
        assert!(inbox < at(later), "INBOX's STATUS after {later}: {wire}");
    }
    // one STATUS a folder: no folder asked again by its own sync
    assert_eq!(wire.matches("STATUS \"INBOX\"").count(), 1, "{wire}");
    assert!(!wire.contains("SELECT") && !wire.contains("EXAMINE"), "{wire}");
}
