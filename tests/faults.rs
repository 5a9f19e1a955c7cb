//! Fault injection against the whole engine (issue 11, CI variants): SIGKILL at seeded random
//! points, connections cut mid-FETCH, a concurrent mutator, UIDVALIDITY changes.

mod faultkit;
mod mailworld;
mod util;

use std::time::{Duration, Instant};

use backproc_testkit::mailgen;
use mailworld::*;

const CONFIG: &str = "<?php
define('EMAIL_BACKGROUND_SYNC_ENABLED', TRUE);
define('BG_TICK_INTERVAL', 1);
define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL', 1);
define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL_NL', 1);
define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL', 1);
define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL_NL', 1);
define('BG_BACKOFF_BASE', 1);
define('BG_BACKOFF_MAX', 1);
define('EMAIL_BG_SECONDARY_INTERVAL', 1);
";

#[test]
fn timing_probe() {
    let w = MailWorld::start(&format!("{CONFIG}define('EMAIL_BG_RECEIVE_BATCH_MESSAGES', 25);\n"));
    let msgs: Vec<Vec<u8>> = (0..1000).map(|i| mailgen::text_message(101, i)).collect();
    let t = Instant::now();
    w.dovecot.populate(&w.user, &w.password, "INBOX", &msgs).unwrap();
    eprintln!("populate {:?}", t.elapsed());
    let t = Instant::now();
    w.run_once();
    eprintln!("run {:?}", t.elapsed());
    let t = Instant::now();
    w.run_once();
    eprintln!("run2 {:?}", t.elapsed());
    let _ = Duration::ZERO;
}
#[test]
fn timing_probe2() {
    let w = MailWorld::start(&format!("{CONFIG}define('EMAIL_BG_RECEIVE_BATCH_MESSAGES', 25);\n"));
    let msgs: Vec<Vec<u8>> = (0..1000).map(|i| mailgen::text_message(101, i)).collect();
    w.dovecot.populate(&w.user, &w.password, "INBOX", &msgs).unwrap();
    let t = Instant::now();
    w.run_once();
    eprintln!("run {:?}", t.elapsed());
    eprintln!("{}", w.home.log("l-info.log"));
    let s = w.store();
    let inbox = folder_id(&s, w.account, "INBOX");
    eprintln!("{}", store_messages(&s, inbox).len());
}
#[test]
fn timing_probe3() {
    use backproc_testkit::{Fault, FaultProxy};
    let w = MailWorld::start(&format!("{CONFIG}define('EMAIL_BG_RECEIVE_BATCH_MESSAGES', 10);\n"));
    let msgs: Vec<Vec<u8>> = (0..1000).map(|i| mailgen::text_message(101, i)).collect();
    w.dovecot.populate(&w.user, &w.password, "INBOX", &msgs).unwrap();
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", w.dovecot.imap_port()).parse().unwrap()).unwrap();
    proxy.set_fault(backproc_testkit::Fault::Delay { per_chunk_ms: 20 });
    let a = add_account(&w.home, &w.dovecot, &w.user, &w.password, "none", proxy.port(), &[]);
    let o = w.home.run(&["account", "remove", &w.account.to_string()]);
    assert!(o.status.success());
    let t = Instant::now();
    w.run_once();
    eprintln!("run {:?}", t.elapsed());
    eprintln!("{}", w.home.log("l-info.log"));
    let s = w.store();
    let inbox = folder_id(&s, a, "INBOX");
    eprintln!("{}", store_messages(&s, inbox).len());
    let _ = Fault::Pass;
}
