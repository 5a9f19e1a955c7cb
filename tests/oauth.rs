//! OAuth2 sign-in against real servers (issue 19): Dovecot with its `oauth2` passdb and an
//! aiosmtpd SMTP server, both checking tokens at testkit's token server (a real HTTP
//! program on loopback that issues, rotates and revokes them and runs the device flow).
//! - a sync that outlives its access tokens refreshes them and fails nothing;
//! - `account authorize` by device code, the test playing the user;
//! - a token the server refuses although it has not expired: one forced refresh;
//! - rotation and kill -9 during refreshes: the account can always still sign in;
//! - `invalid_grant`: "needs authorization", not tried again, other accounts unaffected,
//!   `account authorize` brings it back;
//! - SMTP: sent with a token; a revoked grant leaves the entries PENDING with the reason;
//! - no secret in any log, output, history, status or metrics.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::mailworld::*;
use crate::util::*;
use backproc_testkit::oauth::{Mode, TokenServer};
use backproc_testkit::{Dovecot, DovecotOptions, Fault, FaultProxy, PySmtp, mailgen};

const CLIENT: &str = "backproc-test";

/// Sync and the outbox on, 1 s ticks, quick back-off, and a refresh margin of one second
/// (a token is used until its last second).
fn config(extra: &str) -> String {
    format!(
        "<?php
define('EMAIL_BACKGROUND_SYNC_ENABLED', TRUE);
define('EMAIL_OUTBOX_ENABLED', TRUE);
define('BG_TICK_INTERVAL', 1);
define('BG_BACKOFF_BASE', 1);
define('BG_BACKOFF_MAX', 1);
define('EMAIL_OAUTH_REFRESH_MARGIN', 1);
{extra}"
    )
}

/// A token server with our client, and a Dovecot that checks tokens there.
fn servers(lifetime: Duration) -> (TokenServer, Dovecot) {
    let ts = TokenServer::start().unwrap();
    ts.add_client(CLIENT, None);
    ts.set_lifetime(lifetime);
    let d = Dovecot::start_with(DovecotOptions {
        oauth2_introspection_url: Some(ts.introspection_url()),
        ..DovecotOptions::default()
    })
    .unwrap();
    (ts, d)
}

/// `account add` for `user` on 127.0.0.1:`port` (plain IMAP) with `signin` arguments and
/// `stdin`; returns the account id.
fn account_add(h: &Home, user: &str, port: u16, signin: &[&str], stdin: &str) -> i64 {
    let _ = h.run(&["user", "add", "owner"]);
    let (port, email) = (port.to_string(), format!("{user}@backproc.test"));
    let mut args = vec![
        "account",
        "add",
        "--owner",
        "owner",
        "--email",
        &email,
        "--imap-host",
        "127.0.0.1",
        "--imap-port",
        &port,
        "--imap-security",
        "none",
        "--login",
        user,
    ];
    args.extend_from_slice(signin);
    let o = h.run_stdin(&args, stdin);
    assert!(o.status.success(), "account add: {}", stderr(&o));
    stdout(&o).trim().parse().expect("account id")
}

/// `account add --auth oauth2` at the token server, with a refresh token on standard input
/// when `refresh` is given; `extra` arguments after.
fn add_oauth_account(h: &Home, ts: &TokenServer, user: &str, port: u16, refresh: Option<&str>, extra: &[&str]) -> i64 {
    let (token, device) = (ts.token_endpoint(), ts.device_endpoint());
    let mut args = vec![
        "--auth",
        "oauth2",
        "--oauth-token-endpoint",
        &token,
        "--oauth-device-endpoint",
        &device,
        "--oauth-client-id",
        CLIENT,
        "--oauth-scope",
        "imap",
        "--oauth-scope",
        "smtp",
    ];
    if refresh.is_some() {
        args.push("--oauth-refresh-token-stdin");
    }
    args.extend_from_slice(extra);
    account_add(h, user, port, &args, refresh.unwrap_or(""))
}

/// "Check mail now" for every account, then one pass.
fn check_now(h: &Home) -> std::process::Output {
    store(h).request_sync(None, None, backproc_store::now()).unwrap();
    run_once(h)
}

fn run_once(h: &Home) -> std::process::Output {
    let o = h.run(&["run", "--once"]);
    assert!(o.status.success(), "run --once: {}\n{}", stderr(&o), h.log("l-info.log"));
    o
}

fn store(h: &Home) -> backproc_store::Store {
    backproc_store::Store::open(&h.file("data/backproc.sqlite")).unwrap()
}

fn inbox_count(h: &Home, account: i64) -> usize {
    let s = store(h);
    s.folder_messages(folder_id(&s, account, "INBOX")).unwrap().len()
}

/// `account authorize ID` as a user would run it: read the code it prints, approve it at the
/// token server as `user`, wait for it to end. Returns its whole output.
fn authorize(h: &Home, ts: &TokenServer, account: i64, user: &str) -> String {
    authorize_after(h, ts, account, user, Duration::ZERO)
}

/// `authorize`, the user taking `think` to approve.
fn authorize_after(h: &Home, ts: &TokenServer, account: i64, user: &str, think: Duration) -> String {
    let mut child = h
        .cmd()
        .args(["account", "authorize", &account.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        text.push_str(&line);
        if let Some(code) = line.trim_end().split("enter the code ").nth(1) {
            assert!(line.contains(&ts.url()), "the verification URL is shown: {line}");
            std::thread::sleep(think);
            assert!(ts.approve(code.trim(), user), "the printed code {code:?} is the one the server issued");
            break;
        }
        line.clear();
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    text.push_str(&rest);
    let st = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(st.success(), "account authorize: {text}\n{err}");
    text
}

#[test]
fn a_sync_that_outlives_its_tokens_refreshes_them_and_fails_nothing() {
    let (ts, d) = servers(Duration::from_secs(3));
    d.add_user("ann", "pw").unwrap();
    d.populate("ann", "pw", "INBOX", &mailgen::mailbox(19, 2000)).unwrap();
    // A slow link, so that the first pass takes longer than a token lives: the session
    // signed in with it is not cut when it expires.
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", d.imap_port()).parse().unwrap()).unwrap();
    proxy.set_fault(Fault::Delay { per_chunk_ms: 25 });
    let h = Home::with_config(&config(""));
    let a = add_oauth_account(&h, &ts, "ann", proxy.port(), Some(&ts.issue_refresh_token("ann")), &[]);
    let started = Instant::now();
    run_once(&h);
    assert!(started.elapsed() > Duration::from_secs(3), "the scenario needs a pass longer than the token's life");
    assert_eq!(inbox_count(&h, a), 2000);
    // Later passes start after the token expired: each refreshes (rotating the refresh
    // token) and signs in with the new one.
    proxy.set_fault(Fault::Pass);
    for round in 1..=3 {
        std::thread::sleep(Duration::from_millis(3100));
        d.populate("ann", "pw", "INBOX", &mailgen::mailbox(20 + round, 10)).unwrap();
        check_now(&h);
    }
    assert_eq!(inbox_count(&h, a), 2030, "every message once");
    assert_eq!(
        store(&h).folder_messages(folder_id(&store(&h), a, "INBOX")).unwrap().len(),
        mailworld_server_uids(&d),
        "the store holds exactly the server's messages"
    );
    let c = ts.counts();
    assert!(c.refresh >= 4, "one refresh per pass at least: {c:?}");
    assert_eq!(c.invalid_grant, 0, "{c:?}");
    let errors = history_errors(&h);
    assert!(errors.is_empty(), "failed tasks: {errors:#?}");
    let list = stdout(&h.run(&["account", "list"]));
    assert!(list.contains("oauth2 (token valid until") || list.contains("oauth2 (token expired"), "{list}");
}

/// The number of messages in ann's INBOX on the server.
fn mailworld_server_uids(d: &Dovecot) -> usize {
    let mut s = d.session("ann", "pw").unwrap();
    s.select("INBOX").unwrap().exists as usize
}

#[test]
fn account_authorize_signs_in_by_device_code() {
    let (ts, d) = servers(Duration::from_secs(3600));
    d.add_user("bea", "pw").unwrap();
    d.populate("bea", "pw", "INBOX", &mailgen::mailbox(7, 5)).unwrap();
    let h = Home::with_config(&config(""));
    let a = add_oauth_account(&h, &ts, "bea", d.imap_port(), None, &[]);
    let list = stdout(&h.run(&["account", "list"]));
    assert!(list.contains("oauth2 (not authorized yet"), "{list}");
    // Not authorized yet: the run says what to do and does not hammer anything.
    run_once(&h);
    let st = stdout(&h.run(&["status"]));
    assert!(st.contains("needs authorization") && st.contains(&format!("account authorize {a}")), "{st}");
    // The user takes a while: the command polls at the server's interval (1 s), sees
    // authorization_pending, and waits on.
    let out = authorize_after(&h, &ts, a, "bea", Duration::from_millis(2500));
    assert!(out.contains(&format!("account {a} authorized")), "{out}");
    let c = ts.counts();
    assert_eq!(c.device_start, 1, "{c:?}");
    assert!(c.device_grant >= 3, "pending at least twice, then the tokens: {c:?}");
    assert_eq!(c.other, 0, "every request well formed: {c:?}");
    run_once(&h);
    assert_eq!(inbox_count(&h, a), 5);
    let list = stdout(&h.run(&["account", "list"]));
    assert!(list.contains("oauth2 (token valid until"), "{list}");
}

/// An account's connections sign in side by side (folders received in parallel, the push
/// connection): a token that needs refreshing is refreshed once, and every connection signs
/// in with that one, however many were waiting for it.
#[test]
fn connections_signing_in_at_once_refresh_the_token_once() {
    let ts = TokenServer::start().unwrap();
    ts.add_client(CLIENT, None);
    // slow enough that the three sign-ins surely overlap the refresh
    ts.set_answer_delay(Duration::from_millis(300));
    let h = Home::with_config(&config(""));
    let a = add_oauth_account(&h, &ts, "ann", 1, Some(&ts.issue_refresh_token("ann")), &[]);
    let config = backproc_config::Config::default();
    let tokens: Vec<String> = std::thread::scope(|s| {
        let signins: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut store = store(&h);
                    let account = store.account(a).unwrap();
                    let now = backproc_store::now();
                    let server = backproc_engine::signin::Server::Imap;
                    match backproc_engine::signin::credential(&mut store, &config, &account, server, false, now) {
                        Ok(backproc_sasl::Credential::Bearer(t)) => t,
                        other => panic!("not a token: {:?}", other.map(|_| "a password")),
                    }
                })
            })
            .collect();
        signins.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(ts.counts().refresh, 1, "{:?}", ts.counts());
    assert!(tokens.iter().all(|t| *t == tokens[0]), "every connection signs in with the one new token");
    assert!(ts.is_valid_access_token(&tokens[0]).is_some());
}

#[test]
fn a_token_the_server_refuses_gets_one_forced_refresh() {
    let (ts, d) = servers(Duration::from_secs(3600));
    d.add_user("cat", "pw").unwrap();
    d.populate("cat", "pw", "INBOX", &mailgen::mailbox(8, 3)).unwrap();
    let h = Home::with_config(&config(""));
    let a = add_oauth_account(&h, &ts, "cat", d.imap_port(), Some(&ts.issue_refresh_token("cat")), &[]);
    // A token the store believes good for an hour, unknown to the server (revoked there).
    store(&h).store_oauth_tokens(a, "at-unknown-to-the-server", backproc_store::now() + 3600, None, false).unwrap();
    run_once(&h);
    assert_eq!(inbox_count(&h, a), 3);
    assert_eq!(ts.counts().refresh, 1, "exactly one forced refresh");
    assert!(history_errors(&h).is_empty(), "{:#?}", history_errors(&h));
    assert!(h.log("l-info.log").contains("refused the access token; refreshing it once"));
}

#[test]
fn a_token_command_signs_in_and_nothing_is_stored() {
    let (ts, d) = servers(Duration::from_secs(3600));
    d.add_user("ida", "pw").unwrap();
    d.populate("ida", "pw", "INBOX", &mailgen::mailbox(16, 4)).unwrap();
    let h = Home::with_config(&config(""));
    // The helper a site already has (oama, sasl-xoauth2…): here, a file it keeps current.
    let file = h.file("token.txt");
    std::fs::write(&file, format!("{}\n", ts.issue_access_token("ida"))).unwrap();
    let command = format!("cat {}", file.display());
    let a = account_add(&h, "ida", d.imap_port(), &["--oauth-token-command", &command], "");
    run_once(&h);
    assert_eq!(inbox_count(&h, a), 4);
    let row = store(&h).account(a).unwrap();
    assert_eq!((row.auth, row.oauth.access_token, row.oauth.refresh_token), (backproc_store::Auth::OAuth2, None, None));
    assert_eq!(ts.counts().refresh, 0, "no token endpoint involved");
    assert!(stdout(&h.run(&["account", "list"])).contains("oauth2 (token command)"));
}

#[test]
fn an_unreachable_token_endpoint_is_a_temporary_error() {
    let (ts, d) = servers(Duration::from_secs(1));
    d.add_user("jo", "pw").unwrap();
    d.add_user("kim", "pw").unwrap();
    d.populate("jo", "pw", "INBOX", &mailgen::mailbox(17, 2)).unwrap();
    d.populate("kim", "pw", "INBOX", &mailgen::mailbox(18, 2)).unwrap();
    let h = Home::with_config(&config(""));
    let jo = add_oauth_account(&h, &ts, "jo", d.imap_port(), Some(&ts.issue_refresh_token("jo")), &[]);
    let kim = add_account_at(&h, "kim", "pw", "none", d.imap_port(), &[]);
    ts.set_mode(Mode::Down);
    run_once(&h);
    let row = store(&h).account(jo).unwrap();
    assert!(row.needs_authorization.is_none(), "not a person's business: {row:?}");
    assert!(row.last_error.as_deref().is_some_and(|e| e.contains("unavailable")), "{:?}", row.last_error);
    assert!(row.retry_after.is_some_and(|t| t < backproc_store::NEVER), "backs off for a time: {:?}", row.retry_after);
    assert_eq!(inbox_count(&h, kim), 2, "the other account syncs");
    // Back: the next pass after the back-off signs in.
    ts.set_mode(Mode::Normal);
    std::thread::sleep(Duration::from_millis(1100));
    check_now(&h);
    assert_eq!(inbox_count(&h, jo), 2);
}

#[test]
fn kills_during_refreshes_never_leave_a_spent_refresh_token() {
    let (ts, d) = servers(Duration::from_secs(1));
    d.add_user("dan", "pw").unwrap();
    d.populate("dan", "pw", "INBOX", &mailgen::mailbox(9, 3)).unwrap();
    // Every pass must refresh (the token lives 1 s, the margin is 5 s), and the token
    // endpoint takes its time, so that kills land before, during and after the exchange.
    ts.set_answer_delay(Duration::from_millis(60));
    let h = Home::with_config(&config("define('EMAIL_OAUTH_REFRESH_MARGIN', 5);"));
    let a = add_oauth_account(&h, &ts, "dan", d.imap_port(), Some(&ts.issue_refresh_token("dan")), &[]);
    let mut rng = 0x9e37_79b9_u64;
    for kill in 0..24 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let before = ts.counts().refresh;
        let mut child = h.spawn(&["run", "--once"]);
        // wait for the refresh request to reach the server, then kill within its answer's
        // delay or a little after it
        let asked = wait_until(Duration::from_secs(10), || ts.counts().refresh > before);
        assert!(asked, "kill {kill}: the run never asked for a token\n{}", h.log("l-info.log"));
        std::thread::sleep(Duration::from_millis(rng % 90));
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(ts.counts().invalid_grant, 0, "no spent refresh token was ever used");
    run_once(&h);
    assert_eq!(inbox_count(&h, a), 3, "the account still signs in");
    let a_row = store(&h).account(a).unwrap();
    assert!(a_row.needs_authorization.is_none());
}

#[test]
fn a_revoked_grant_waits_for_a_person_and_spares_everyone_else() {
    let (ts, d) = servers(Duration::from_secs(1));
    d.add_user("eve", "pw").unwrap();
    d.add_user("fay", "pw").unwrap();
    d.populate("eve", "pw", "INBOX", &mailgen::mailbox(10, 2)).unwrap();
    d.populate("fay", "pw", "INBOX", &mailgen::mailbox(11, 2)).unwrap();
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", d.imap_port()).parse().unwrap()).unwrap();
    let h = Home::with_config(&config("define('BG_METRICS_ENABLED', TRUE);"));
    let eve = add_oauth_account(&h, &ts, "eve", proxy.port(), Some(&ts.issue_refresh_token("eve")), &[]);
    let fay = add_account_at(&h, "fay", "pw", "none", d.imap_port(), &[]);
    run_once(&h);
    assert_eq!((inbox_count(&h, eve), inbox_count(&h, fay)), (2, 2));
    // The user revokes the app: the next refresh answers invalid_grant.
    std::thread::sleep(Duration::from_millis(1100));
    ts.set_mode(Mode::InvalidGrant);
    d.populate("fay", "pw", "INBOX", &mailgen::mailbox(12, 1)).unwrap();
    check_now(&h);
    let row = store(&h).account(eve).unwrap();
    assert!(row.needs_authorization.as_deref().is_some_and(|r| r.contains("invalid_grant")), "{row:?}");
    assert_eq!(inbox_count(&h, fay), 3, "the other account keeps syncing");
    let list = stdout(&h.run(&["account", "list"]));
    assert!(list.contains("oauth2 (needs authorization)"), "{list}");
    let st = stdout(&h.run(&["status"]));
    assert!(st.contains(&format!("account {eve}")) && st.contains("needs authorization"), "{st}");
    let hist = stdout(&h.run(&["history", "--json", "--errors"]));
    assert!(hist.contains("Needs authorization"), "{hist}");
    let metrics = std::fs::read_to_string(h.file("data/backproc.prom")).unwrap();
    assert!(metrics.contains("backproc_accounts_needing_authorization 1\n"), "{metrics}");
    // Not tried again: neither the token endpoint nor the IMAP server hears of it.
    let (asked, connections) = (ts.counts(), proxy.connections());
    d.populate("fay", "pw", "INBOX", &mailgen::mailbox(13, 1)).unwrap();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1100));
        check_now(&h);
    }
    assert_eq!((ts.counts().refresh, ts.counts().invalid_grant), (asked.refresh, asked.invalid_grant));
    assert_eq!(proxy.connections(), connections, "no connection to the server");
    assert_eq!(inbox_count(&h, fay), 4);
    // The user signs in again.
    ts.set_mode(Mode::Normal);
    d.populate("eve", "pw", "INBOX", &mailgen::mailbox(14, 1)).unwrap();
    authorize(&h, &ts, eve, "eve");
    check_now(&h);
    assert_eq!(inbox_count(&h, eve), 3);
    assert!(store(&h).account(eve).unwrap().needs_authorization.is_none());
}

/// A home whose account sends through an aiosmtpd that takes only OAuth2, with its IMAP
/// on a Dovecot that does too.
fn smtp_world(lifetime: Duration) -> (TokenServer, Dovecot, PySmtp, Home, i64) {
    smtp_world_at(lifetime, None)
}

/// `smtp_world`, the IMAP side through `proxy` (to Dovecot's port) when given.
fn smtp_world_at(lifetime: Duration, proxy: Option<&dyn Fn(u16) -> u16>) -> (TokenServer, Dovecot, PySmtp, Home, i64) {
    let (ts, d) = servers(lifetime);
    d.add_user("gus", "pw").unwrap();
    let smtp = PySmtp::start_oauth(&ts.introspection_url()).unwrap();
    let h = Home::with_config(&config("define('EMAIL_BG_SENT_APPEND', FALSE);"));
    let port = smtp.port().to_string();
    let imap_port = proxy.map_or(d.imap_port(), |p| p(d.imap_port()));
    let a = add_oauth_account(
        &h,
        &ts,
        "gus",
        imap_port,
        Some(&ts.issue_refresh_token("gus")),
        &["--smtp-host", "127.0.0.1", "--smtp-port", &port, "--smtp-security", "none"],
    );
    (ts, d, smtp, h, a)
}

fn queue(h: &Home, account: i64, n: usize) -> Vec<i64> {
    (0..n)
        .map(|i| {
            let o = h.run(&[
                "outbox",
                "add",
                "--account",
                &account.to_string(),
                "--to",
                "rcpt@backproc.test",
                "--subject",
                &format!("m{i}"),
                "--body",
                "hello",
            ]);
            assert!(o.status.success(), "{}", stderr(&o));
            stdout(&o).trim().parse().unwrap()
        })
        .collect()
}

fn outbox_state(h: &Home, id: i64) -> serde_json::Value {
    let o = h.run(&["outbox", "show", &id.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn smtp_sends_with_the_token_and_a_revoked_grant_leaves_entries_pending() {
    let (ts, _d, smtp, h, a) = smtp_world(Duration::from_secs(1));
    let first = queue(&h, a, 3);
    run_once(&h);
    for id in &first {
        assert_eq!(outbox_state(&h, *id)["state"], "SUCCESS", "{}", h.log("l-info.log"));
    }
    assert_eq!(smtp.messages().unwrap().len(), 3);
    let auths = smtp.auth_log().unwrap();
    assert!(auths.iter().all(|x| x.accepted && x.mechanism == "OAUTHBEARER" && x.user == "gus"), "{auths:?}");
    // The token expired: the next connection refreshes it first.
    std::thread::sleep(Duration::from_millis(1100));
    let refreshes = ts.counts().refresh;
    let second = queue(&h, a, 2);
    run_once(&h);
    assert!(second.iter().all(|id| outbox_state(&h, *id)["state"] == "SUCCESS"));
    assert!(ts.counts().refresh > refreshes);
    // Revoked: the entries wait, PENDING with the reason, never ERROR.
    std::thread::sleep(Duration::from_millis(1100));
    ts.set_mode(Mode::InvalidGrant);
    let third = queue(&h, a, 2);
    run_once(&h);
    for id in &third {
        let e = outbox_state(&h, *id);
        assert_eq!(e["state"], "PENDING", "{e}");
        assert!(e["error"].as_str().is_some_and(|t| t.contains("invalid_grant")), "{e}");
    }
    assert!(store(&h).account(a).unwrap().needs_authorization.is_some());
    assert_eq!(smtp.messages().unwrap().len(), 5);
}

#[test]
fn an_expired_token_mid_batch_is_refreshed_and_the_batch_goes_on() {
    let (ts, d) = servers(Duration::from_secs(2));
    d.add_user("hal", "pw").unwrap();
    // Two messages a session, then "421 MAIL sent too many times"; a slow link makes a
    // session outlive the 2 s token, so the second session needs a new one.
    let smtp = PySmtp::start_oauth_limited(&ts.introspection_url(), 2).unwrap();
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", smtp.port()).parse().unwrap()).unwrap();
    proxy.set_fault(Fault::Delay { per_chunk_ms: 150 });
    // Only the outbox: every token request is the SMTP connections'.
    let h = Home::with_config(
        &config("define('EMAIL_BG_SENT_APPEND', FALSE);").replace("SYNC_ENABLED', TRUE", "SYNC_ENABLED', FALSE"),
    );
    let port = proxy.port().to_string();
    let a = add_oauth_account(
        &h,
        &ts,
        "hal",
        d.imap_port(),
        Some(&ts.issue_refresh_token("hal")),
        &["--smtp-host", "127.0.0.1", "--smtp-port", &port, "--smtp-security", "none"],
    );
    let ids = queue(&h, a, 4);
    run_once(&h);
    for id in &ids {
        let e = outbox_state(&h, *id);
        assert_eq!(e["state"], "SUCCESS", "{e}\n{}", h.log("l-info.log"));
        assert_eq!(e["attempts"], 1, "{e}");
    }
    let auths = smtp.auth_log().unwrap();
    assert_eq!(auths.iter().filter(|x| x.accepted).count(), 2, "two sessions: {auths:?}");
    assert!(auths.iter().all(|x| x.accepted), "no token was refused: {auths:?}");
    assert_eq!(ts.counts().refresh, 2, "the second session signed in with a refreshed token: {:?}", ts.counts());
    assert!(history_errors(&h).is_empty(), "{:#?}", history_errors(&h));
    assert!(h.log("l-info.log").contains("closed the session before it"));
}

#[test]
fn no_secret_reaches_a_log_an_output_history_status_or_metrics() {
    // The IMAP side through a capturing proxy: the wire is the one place the SASL strings
    // may be, and finding them there shows the needles are right.
    let proxy: std::cell::OnceCell<FaultProxy> = std::cell::OnceCell::new();
    let through = |port: u16| {
        let p = FaultProxy::start(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
        p.set_capture(true);
        proxy.get_or_init(|| p).port()
    };
    let (ts, d, smtp, h, a) = smtp_world_at(Duration::from_secs(1), Some(&through));
    let proxy = proxy.get().unwrap();
    ts.add_client("confidential", Some("client-s3cret-value"));
    d.populate("gus", "pw", "INBOX", &mailgen::mailbox(15, 3)).unwrap();
    h.write_config(&config("define('BG_METRICS_ENABLED', TRUE);\ndefine('EMAIL_BG_SENT_APPEND', FALSE);"));
    // A confidential client: its secret on standard input.
    let o = h.run_stdin(
        &["account", "set", &a.to_string(), "--oauth-client-id", "confidential", "--oauth-client-secret-stdin"],
        "client-s3cret-value",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut outputs = vec![o];
    queue(&h, a, 1);
    outputs.push(run_once(&h));
    std::thread::sleep(Duration::from_millis(1100));
    queue(&h, a, 1);
    outputs.push(run_once(&h));
    ts.set_mode(Mode::InvalidGrant);
    std::thread::sleep(Duration::from_millis(1100));
    outputs.push(check_now(&h));
    for args in [
        &["account", "list"][..],
        &["account", "list", "--json"],
        &["status"],
        &["status", "--json"],
        &["history", "--json"],
        &["outbox", "list", "--json"],
        &["config", "show"],
    ] {
        outputs.push(h.run(args));
    }
    let mut hay = String::new();
    for o in &outputs {
        hay.push_str(&stdout(o));
        hay.push_str(&stderr(o));
    }
    for entry in std::fs::read_dir(h.file("logs")).unwrap() {
        hay.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
    }
    hay.push_str(&std::fs::read_to_string(h.file("data/backproc.prom")).unwrap_or_default());
    assert!(hay.contains("refreshed"), "the debug log was read: {hay:.2000}");
    let mut secrets = ts.secrets();
    assert!(secrets.len() >= 4, "tokens were issued: {secrets:?}");
    let mut sasl = Vec::new();
    for t in &secrets {
        for port in [proxy.port(), smtp.port()] {
            for m in [backproc_sasl::Mechanism::XOAuth2, backproc_sasl::Mechanism::OAuthBearer] {
                sasl.push(m.initial_response("gus", "127.0.0.1", port, t));
            }
        }
    }
    secrets.extend(sasl);
    secrets.push("client-s3cret-value".into());
    let wire = String::from_utf8_lossy(&proxy.captured_client()).into_owned();
    assert!(secrets.iter().any(|s| wire.contains(s.as_str())), "the SASL string is on the wire, where it belongs");
    let found: Vec<usize> =
        secrets.iter().enumerate().filter(|(_, s)| hay.contains(s.as_str())).map(|(i, _)| i).collect();
    assert!(
        found.is_empty(),
        "{} of {} secrets appear in logs or outputs (their indexes: {found:?})",
        found.len(),
        secrets.len()
    );
}
