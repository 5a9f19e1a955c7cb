//! Outbox helpers for the send-side fault tests: a home whose account sends through a given
//! SMTP port, entries queued straight into the store (each with its own Message-ID), and the
//! Message-IDs of what an SMTP sink received.

use std::collections::BTreeMap;

use backproc_testkit::mailgen;

use crate::util::{Home, stderr, stdout};

/// Outbox on, sync off, no Sent append, every interval at 1 s, and the shortest send lease the
/// config accepts (10 s, see `email_bg_send_lease` in crates/config/src/spec.rs) so entries
/// caught in PROCESSING expire within a test. Small claim batches (5) make a kill catch a few
/// entries in PROCESSING rather than a hundred.
pub const SEND_CONFIG: &str = "<?php
define('EMAIL_OUTBOX_ENABLED', TRUE);
define('EMAIL_BG_SENT_APPEND', FALSE);
define('BG_TICK_INTERVAL', 1);
define('EMAIL_BG_SEND_POLL_INTERVAL', 1);
define('BG_BACKOFF_BASE', 1);
define('BG_BACKOFF_MAX', 1);
define('EMAIL_BG_SECONDARY_INTERVAL', 1);
define('EMAIL_BG_SEND_LEASE', 10);
define('EMAIL_BG_SEND_BATCH', 5);
";

/// The lease of `SEND_CONFIG`, in seconds.
pub const LEASE: u64 = 10;

/// A home with one account whose SMTP server is 127.0.0.1:`smtp_port` (plain); IMAP unused.
pub fn home_with_smtp(config: &str, smtp_port: u16) -> (Home, i64) {
    let h = Home::with_config(config);
    let account = add_smtp_account(&h, smtp_port);
    (h, account)
}

/// Adds user carol and her account (SMTP on 127.0.0.1:`smtp_port`, plain) to `h`; returns the
/// account id.
pub fn add_smtp_account(h: &Home, smtp_port: u16) -> i64 {
    assert!(h.run(&["user", "add", "carol"]).status.success());
    let port = smtp_port.to_string();
    let o = h.run_stdin(
        &[
            "account",
            "add",
            "--owner",
            "carol",
            "--email",
            "carol@backproc.test",
            "--imap-host",
            "127.0.0.1",
            "--imap-port",
            "1",
            "--imap-security",
            "none",
            "--login",
            "carol",
            "--password-stdin",
            "--smtp-host",
            "127.0.0.1",
            "--smtp-port",
            &port,
            "--smtp-security",
            "none",
        ],
        "carol-pw",
    );
    assert!(o.status.success(), "account add: {}", stderr(&o));
    stdout(&o).trim().parse().expect("account id")
}

/// The Message-ID (without angle brackets) of queued message `i` of run `seed`.
pub fn message_id(seed: u64, i: usize) -> String {
    format!("send.{seed:x}.{i}@backproc.test")
}

/// Queues `n` messages (to one recipient each) with `Store::outbox_add`, as an application
/// inserting rows would; returns entry id → Message-ID.
pub fn queue(store: &mut backproc_store::Store, account: i64, seed: u64, n: usize) -> BTreeMap<i64, String> {
    let now = now();
    (0..n)
        .map(|i| {
            let mid = message_id(seed, i);
            let raw = mailgen::message_with(
                &format!("queued {i}"),
                "carol@backproc.test",
                "rcpt@x.test",
                "Mon, 23 Nov 2026 10:00:00 +0000",
                &mid,
                &format!("message {i} of run {seed:x}\nsecond line\n"),
            );
            let id = store
                .outbox_add(account, &mid, "carol@backproc.test", &["rcpt@x.test".to_string()], &raw, false, now)
                .expect("outbox_add");
            (id, mid)
        })
        .collect()
}

/// Message-ID → how many times it is in the sink's dump (the dump keeps every transaction).
pub fn sink_counts(sink: &backproc_testkit::SmtpSink) -> BTreeMap<String, usize> {
    let re = regex::Regex::new(r"(?mi)^Message-ID:[ \t]*<([^>\r\n]+)>").unwrap();
    let mut out = BTreeMap::new();
    for m in sink.messages().expect("read the sink's dump") {
        let text = String::from_utf8_lossy(&m);
        let mid = re.captures(&text).map_or_else(|| "(no Message-ID)".to_string(), |c| c[1].to_string());
        *out.entry(mid).or_insert(0) += 1;
    }
    out
}

/// Seconds since the epoch, as the engine's clock counts.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}
