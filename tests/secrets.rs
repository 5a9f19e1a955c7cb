//! Hostile networks and secrets (issue 11, items 9 and 10): certificates that must not be
//! trusted and STARTTLS-stripping proxies are refused before any credential is sent; no
//! password or SASL token appears in any log, output, history, status or metrics.

use std::process::Output;

use crate::faultkit::secrets::{Needle, base64, hits, needles_for};
use crate::mailworld::*;
use crate::util::*;
use backproc_store::HistoryFilter;
use backproc_testkit::{Dovecot, Fault, FaultProxy, SinkOptions, SmtpSink, mailgen};

const SYNC: &str = "<?php
define('EMAIL_BACKGROUND_SYNC_ENABLED', TRUE);
define('BG_TICK_INTERVAL', 1);
define('BG_BACKOFF_BASE', 1);
define('BG_BACKOFF_MAX', 1);
";

fn proxy_to(port: u16, fault: Fault) -> FaultProxy {
    let p = FaultProxy::start(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    p.set_fault(fault);
    p
}

/// `account add` with an explicit IMAP host; returns (id, the command's output).
fn add_account_at(
    home: &Home,
    host: &str,
    port: u16,
    security: &str,
    login: &str,
    pw: &str,
    extra: &[&str],
) -> (i64, Output) {
    let _ = home.run(&["user", "add", "owner"]);
    let port = port.to_string();
    let mut args = vec![
        "account",
        "add",
        "--owner",
        "owner",
        "--email",
        "u@backproc.test",
        "--imap-host",
        host,
        "--imap-port",
        &port,
        "--imap-security",
        security,
        "--login",
        login,
        "--password-stdin",
    ];
    args.extend_from_slice(extra);
    let o = home.run_stdin(&args, pw);
    assert!(o.status.success(), "account add: {}", stderr(&o));
    (stdout(&o).trim().parse().expect("account id"), o)
}

fn errors_of(store: &backproc_store::Store, account: i64) -> Vec<backproc_store::HistoryRow> {
    store.history(&HistoryFilter { errors_only: true, account_id: Some(account), ..Default::default() }).unwrap()
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

fn inbox_count(store: &backproc_store::Store, account: i64) -> Option<usize> {
    let f = store.folders(Some(account)).unwrap().into_iter().find(|f| f.display_name == "INBOX")?;
    Some(store_messages(store, f.id).len())
}

// ---------------------------------------------------------------------------------------------
// 9. TLS: untrusted and wrong-host certificates, STARTTLS stripping (IMAP)

#[test]
fn untrusted_or_wrong_host_certificates_and_stripped_starttls_are_refused_before_login() {
    let dovecot = Dovecot::start().unwrap();
    let (user, pw) = ("alice", "tls-Secret-77");
    dovecot.add_user(user, pw).unwrap();
    dovecot.populate(user, pw, "INBOX", &mailgen::mailbox(9, 3)).unwrap();
    let ca = dovecot.ca_cert_path().to_string_lossy().into_owned();
    let home = Home::with_config(SYNC);

    // control: STARTTLS with the trusted CA through a transparent proxy works
    let ok_proxy = proxy_to(dovecot.imap_port(), Fault::Pass);
    let (ok, _) = add_account_at(&home, "127.0.0.1", ok_proxy.port(), "starttls", user, pw, &["--tls-ca-file", &ca]);
    // IMAPS with the self-signed certificate not trusted
    let untrusted_proxy = proxy_to(dovecot.imaps_port(), Fault::Pass);
    let (untrusted, _) = add_account_at(&home, "127.0.0.1", untrusted_proxy.port(), "ssl", user, pw, &[]);
    // IMAPS with the CA trusted, but reached by a name the certificate does not carry:
    // "::ffff:127.0.0.1" is 127.0.0.1 reached over IPv6, yet the certificate names only the
    // IPv4 address (and DNS:localhost)
    let wrong_host_proxy = proxy_to(dovecot.imaps_port(), Fault::Pass);
    let (wrong_host, _) =
        add_account_at(&home, "::ffff:127.0.0.1", wrong_host_proxy.port(), "ssl", user, pw, &["--tls-ca-file", &ca]);
    // STARTTLS required, but a proxy removes it from the capabilities
    let strip_proxy = proxy_to(dovecot.imap_port(), Fault::StripStartTls);
    let (stripped, _) =
        add_account_at(&home, "127.0.0.1", strip_proxy.port(), "starttls", user, pw, &["--tls-ca-file", &ca]);

    let o = home.run(&["run", "--once"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info = home.log("l-info.log");
    let store = backproc_store::Store::open(&home.file("data/backproc.sqlite")).unwrap();
    assert_eq!(inbox_count(&store, ok), Some(3), "the control account must sync:\n{info}");
    assert!(errors_of(&store, ok).is_empty(), "{:?}", errors_of(&store, ok));

    for (acct, name, detail) in [
        (untrusted, "untrusted certificate", "certificate verify failed"),
        (wrong_host, "wrong host name", "certificate verify failed"),
        (stripped, "STARTTLS stripped", "does not offer STARTTLS"),
    ] {
        let line = info
            .lines()
            .find(|l| l.contains(&format!("[{acct},]")) && l.contains("Secure connection failed"))
            .unwrap_or_else(|| panic!("{name}: no clear error for account {acct} in l-info.log:\n{info}"));
        assert!(line.contains(detail), "{name}: the error does not say why: {line}");
        let errs = errors_of(&store, acct);
        assert!(
            errs.iter().any(|h| h.status == "Secure connection failed"),
            "{name}: history has no 'Secure connection failed' for account {acct}: {errs:?}"
        );
        assert_eq!(inbox_count(&store, acct), None, "{name}: no folder may be known without TLS");
    }
    let reason = |acct: i64| info.lines().find(|l| l.contains(&format!("[{acct},]")) && l.contains("Secure")).unwrap();
    assert!(reason(wrong_host).contains("hostname mismatch"), "wrong host: {}", reason(wrong_host));
    assert!(reason(untrusted).contains("self-signed certificate"), "untrusted: {}", reason(untrusted));

    // nothing of the credentials crossed any refused connection
    for (name, proxy) in
        [("untrusted", &untrusted_proxy), ("wrong host", &wrong_host_proxy), ("stripped", &strip_proxy)]
    {
        assert!(proxy.connections() >= 1, "{name}: the engine never connected");
        let c = proxy.captured_client();
        let text = lower(&c);
        assert!(!text.contains("login"), "{name}: LOGIN sent: {:?}", String::from_utf8_lossy(&c));
        assert!(!text.contains("authenticate"), "{name}: AUTHENTICATE sent");
        let leaks = hits(&[(format!("{name} proxy capture"), c.clone())], &needles_for(user, pw));
        assert!(leaks.is_empty(), "{leaks:?}");
    }
    assert!(lower(&strip_proxy.captured_server()).contains("starttls"), "Dovecot offered STARTTLS; the proxy hid it");
    assert!(!lower(&strip_proxy.captured_client()).contains(" starttls"), "STARTTLS must not even be tried");
    assert!(!info.contains(pw) && !home.log("l-debug.log").contains(pw), "the password reached a log");
}

// ---------------------------------------------------------------------------------------------
// 9. TLS: STARTTLS stripping (SMTP)

#[test]
fn smtp_starttls_stripping_is_refused_and_the_message_stays_pending() {
    // smtp-sink (as in the other outbox tests) never offers STARTTLS, so against it the proxy
    // strips nothing; the scripted server offers STARTTLS and accepts AUTH/MAIL in clear, so
    // there the proxy really hides it and a client that fell back would be caught.
    let sink = SmtpSink::start(SinkOptions::default()).unwrap();
    let stub = crate::faultkit::smtpstub::StarttlsSmtp::start();
    for (name, upstream, offers) in [("smtp-sink", sink.port(), false), ("STARTTLS stub", stub.port(), true)] {
        let proxy = proxy_to(upstream, Fault::StripStartTls);
        let home = Home::with_config(
            "<?php
define('EMAIL_OUTBOX_ENABLED', TRUE);
define('EMAIL_BG_SENT_APPEND', FALSE);
define('BG_TICK_INTERVAL', 1);
define('EMAIL_BG_SEND_POLL_INTERVAL', 1);
",
        );
        let smtp_pw = "smtp-Secret-99";
        let port = proxy.port().to_string();
        let (acct, _) = add_account_at(
            &home,
            "127.0.0.1",
            backproc_testkit::free_port(),
            "none",
            "carol",
            smtp_pw,
            &["--smtp-host", "127.0.0.1", "--smtp-port", &port, "--smtp-security", "starttls"],
        );
        let o = home.run(&[
            "outbox",
            "add",
            "--account",
            &acct.to_string(),
            "--to",
            "bob@x.test",
            "--subject",
            "stripped",
            "--body",
            "hi",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let id = stdout(&o).trim().to_string();
        let o = home.run(&["run", "--once"]);
        assert!(o.status.success(), "{}", stderr(&o));

        let rec: serde_json::Value = serde_json::from_slice(&home.run(&["outbox", "show", &id]).stdout).unwrap();
        assert_eq!(rec["state"], "PENDING", "{name}: {rec}");
        assert!(sink.messages().unwrap().is_empty(), "{name}: the message reached smtp-sink");
        let info = home.log("l-info.log");
        assert!(
            info.lines().any(|l| l.contains(&format!("[{acct},]")) && l.contains("STARTTLS")),
            "{name}: no clear STARTTLS error in l-info.log:\n{info}"
        );
        let store = backproc_store::Store::open(&home.file("data/backproc.sqlite")).unwrap();
        let errs = errors_of(&store, acct);
        assert!(errs.iter().any(|h| h.status == "Secure connection failed"), "{name}: {errs:?}");
        assert!(proxy.connections() >= 1, "{name}: the engine never connected");
        if offers {
            assert!(lower(&proxy.captured_server()).contains("starttls"), "the stub offered STARTTLS");
        }
        let c = proxy.captured_client();
        let text = lower(&c);
        for word in ["auth", "mail from", "rcpt to", "data", "starttls"] {
            assert!(
                !text.contains(word),
                "{name}: {word:?} sent over the stripped connection: {:?}",
                String::from_utf8_lossy(&c)
            );
        }
        let leaks = hits(&[(format!("{name} proxy capture"), c)], &needles_for("carol", smtp_pw));
        assert!(leaks.is_empty(), "{leaks:?}");
    }
    let stub_got = lower(&stub.received());
    assert!(!stub_got.contains("mail from") && !stub_got.contains("auth"), "{stub_got}");
}

// ---------------------------------------------------------------------------------------------
// 10. Secrets: nothing anywhere an operator or a log shipper can read

#[test]
fn no_password_or_sasl_token_in_logs_outputs_history_status_or_metrics() {
    let dovecot = Dovecot::start().unwrap();
    let (user, pw) = ("alice", "Imap-Secret-4242");
    let bad_pw = "Wrong-Secret-1313";
    let (smtp_user, smtp_pw) = ("alice-smtp", "Smtp-Secret-8686");
    dovecot.add_user(user, pw).unwrap();
    dovecot.populate(user, pw, "INBOX", &mailgen::mailbox(10, 5)).unwrap();
    let sink = SmtpSink::start(SinkOptions::default()).unwrap();
    let imap_proxy = proxy_to(dovecot.imap_port(), Fault::Pass);
    let smtp_proxy = proxy_to(sink.port(), Fault::Pass);
    let home = Home::with_config(
        "<?php
define('EMAIL_BACKGROUND_SYNC_ENABLED', TRUE);
define('EMAIL_OUTBOX_ENABLED', TRUE);
define('EMAIL_BG_SENT_APPEND', FALSE);
define('BG_TICK_INTERVAL', 1);
define('EMAIL_BG_SEND_POLL_INTERVAL', 1);
define('BG_METRICS_ENABLED', TRUE);
",
    );
    let mut outputs: Vec<(String, Output)> = Vec::new();
    let (good, o) = add_account_at(&home, "127.0.0.1", imap_proxy.port(), "none", user, pw, &[]);
    outputs.push(("account add (good)".into(), o));
    let (bad, o) = add_account_at(&home, "127.0.0.1", dovecot.imap_port(), "none", user, bad_pw, &[]);
    outputs.push(("account add (bad password)".into(), o));
    let sport = smtp_proxy.port().to_string();
    let o = home.run_stdin(
        &[
            "account",
            "set",
            &good.to_string(),
            "--smtp-host",
            "127.0.0.1",
            "--smtp-port",
            &sport,
            "--smtp-security",
            "none",
            "--smtp-login",
            smtp_user,
            "--smtp-password-stdin",
        ],
        smtp_pw,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    outputs.push(("account set --smtp-password-stdin".into(), o));
    let o = home.run(&[
        "outbox",
        "add",
        "--account",
        &good.to_string(),
        "--to",
        "bob@x.test",
        "--subject",
        "s",
        "--body",
        "b",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    outputs.push(("outbox add".into(), o));
    let o = home.run(&["run", "--once"]);
    assert!(o.status.success(), "{}", stderr(&o));
    outputs.push(("run --once".into(), o));
    for args in [
        vec!["history", "--json"],
        vec!["history", "--json", "--errors"],
        vec!["history"],
        vec!["status", "--json"],
        vec!["status"],
        vec!["account", "list", "--json"],
        vec!["account", "list"],
        vec!["outbox", "show", &id],
        vec!["outbox", "list", "--json"],
        vec!["config", "--json"],
        vec!["folder", "list", "--json"],
    ] {
        let o = home.run(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        outputs.push((args.join(" "), o));
    }

    // the run really did all three things
    let store = backproc_store::Store::open(&home.file("data/backproc.sqlite")).unwrap();
    assert_eq!(inbox_count(&store, good), Some(5), "{}", home.log("l-info.log"));
    assert!(errors_of(&store, bad).iter().any(|h| h.status == "Authentication failed"), "{:?}", errors_of(&store, bad));
    let rec: serde_json::Value = serde_json::from_slice(&home.run(&["outbox", "show", &id]).stdout).unwrap();
    assert_eq!(rec["state"], "SUCCESS", "{rec}");
    // ...and the needles are right: the SASL token is on the wire (plain SMTP on loopback),
    // as is the IMAP password (LOGIN on loopback); only there
    let mut needles = needles_for(user, pw);
    needles.push(Needle::plain("bad password", bad_pw));
    needles.extend(Needle::base64("bad password", bad_pw.as_bytes()));
    needles.extend(needles_for(smtp_user, smtp_pw));
    let plain_token = base64(format!("\0{smtp_user}\0{smtp_pw}").as_bytes());
    let wire = smtp_proxy.captured_client();
    assert!(lower(&wire).contains("auth plain"), "smtp-sink offered AUTH PLAIN and the engine used it");
    assert!(String::from_utf8_lossy(&wire).contains(&plain_token), "the AUTH PLAIN token is on the wire");
    assert!(String::from_utf8_lossy(&imap_proxy.captured_client()).contains(pw), "LOGIN carried the password");

    let debug = home.log("l-debug.log");
    assert!(debug.lines().count() > home.log("l-info.log").lines().count(), "l-debug.log must hold debug lines too");
    let mut hay: Vec<(String, Vec<u8>)> = Vec::new();
    for e in std::fs::read_dir(home.file("logs")).unwrap() {
        let p = e.unwrap().path();
        hay.push((p.display().to_string(), std::fs::read(&p).unwrap()));
    }
    assert!(hay.len() >= 3, "the three logs: {:?}", hay.iter().map(|h| &h.0).collect::<Vec<_>>());
    for (what, o) in &outputs {
        hay.push((format!("stdout of {what}"), o.stdout.clone()));
        hay.push((format!("stderr of {what}"), o.stderr.clone()));
    }
    let prom = home.file("data/backproc.prom");
    if let Ok(b) = std::fs::read(&prom) {
        hay.push(("data/backproc.prom".into(), b));
    }
    let leaks = hits(&hay, &needles);
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}
