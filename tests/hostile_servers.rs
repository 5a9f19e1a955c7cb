//! Hostile and broken IMAP servers (issue 24, "Tests"): the real `backproc` binary against the
//! scriptable [`HostileImap`] on loopback, one test per point of the issue, each asserting the
//! good behaviour: a drip cannot hang a run, a hung account cannot starve the others, a flood
//! costs bounded memory, a password never goes in clear, no phantom is stored, no message is
//! lost, a UIDVALIDITY counts only where it is said, one bad folder costs only itself, STATUS
//! is linear in folders, and the error texts say what happened.
//!
//! Each test first lets the engine work against the correct mode where that shows something
//! (the knob, not the set-up, is what fails), then turns one knob.

use std::time::{Duration, Instant};

use crate::util::*;
use backproc_store::{HistoryFilter, HistoryRow, Store};
use backproc_testkit::hostimap::{
    BAD_LIST_NAMES, Flood, FloodAt, FloodKind, Hang, HostileImap, Phantom, Phase, Script, World,
};

const USER: &str = "carol";
/// Recognisable in the server's command log: it must never appear there on a plain
/// connection that refuses logins.
const PASS: &str = "Cl3ar-T3xt-Pa55";

const MB: f64 = 1024.0 * 1024.0;

/// Sync on; every interval at its minimum; back-off at its default (60 s), so a failed task is
/// not retried within the run; the rest as `extra` says (a later `define` wins).
fn config(extra: &str) -> String {
    format!(
        "<?php
define('EMAIL_BACKGROUND_SYNC_ENABLED', TRUE);
define('BG_TICK_INTERVAL', 1);
define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL', 1);
define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL_NL', 1);
define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL', 1);
define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL_NL', 1);
define('BG_IO_TIMEOUT', 30);
{extra}"
    )
}

fn server(world: World, script: Script) -> HostileImap {
    HostileImap::start(USER, PASS, world, script).expect("start hostimap")
}

/// `user add OWNER` (once) and an account of it on 127.0.0.1:`port`, plain (allowed on
/// loopback); returns its id.
fn add_account(h: &Home, owner: &str, port: u16) -> i64 {
    let _ = h.run(&["user", "add", owner]);
    let (email, port) = (format!("{owner}@backproc.test"), port.to_string());
    let args = [
        "account",
        "add",
        "--owner",
        owner,
        "--email",
        &email,
        "--imap-host",
        "127.0.0.1",
        "--imap-port",
        &port,
        "--imap-security",
        "none",
        "--login",
        USER,
        "--password-stdin",
    ];
    let o = h.run_stdin(&args, PASS);
    assert!(o.status.success(), "account add: {}", stderr(&o));
    stdout(&o).trim().parse().expect("account id")
}

/// A home with `config` and one account on `s`.
fn home_on(s: &HostileImap, config: &str) -> (Home, i64) {
    let h = Home::with_config(config);
    let a = add_account(&h, "owner", s.port());
    (h, a)
}

/// `run --once`, timed; it must exit 0 (failures of a server are recorded, not fatal).
fn run_once(h: &Home) -> Duration {
    let t = Instant::now();
    let out = h.run(&["run", "--once"]);
    let took = t.elapsed();
    assert!(out.status.success(), "run --once failed: {}\n{}", stderr(&out), h.log("l-info.log"));
    assert_no_panic(h, &stderr(&out));
    took
}

fn assert_no_panic(h: &Home, stderr: &str) {
    let logs = h.log("l-threading-error.txt") + &h.log("l-info.log");
    let mut lines: Vec<String> =
        logs.lines().filter(|l| l.to_lowercase().contains("panic")).map(String::from).collect();
    lines.extend(stderr.lines().filter(|l| l.contains("panicked")).map(String::from));
    assert!(lines.is_empty(), "panics: {lines:#?}");
}

fn store(h: &Home) -> Store {
    Store::open(&h.file("data/backproc.sqlite")).expect("open store")
}

fn history(h: &Home) -> Vec<HistoryRow> {
    store(h).history(&HistoryFilter::default()).expect("history")
}

/// History rows of `account` that are neither Started nor Finished (nor Healed).
fn errors_of(h: &Home, account: i64) -> Vec<HistoryRow> {
    history(h)
        .into_iter()
        .filter(|r| r.account_id == Some(account) && !matches!(r.status.as_str(), "Started" | "Finished" | "Healed"))
        .collect()
}

fn show(rows: &[HistoryRow]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "{} [{}]: {}: {}\n",
                r.process,
                r.folder_id.unwrap_or(0),
                r.status,
                r.detail.as_deref().unwrap_or("")
            )
        })
        .collect()
}

fn folder_id_of(h: &Home, account: i64, name: &str) -> Option<i64> {
    store(h).folders(Some(account)).unwrap().into_iter().find(|f| f.name == name).map(|f| f.id)
}

/// (uid, raw) of every message stored in the account's folder `name`.
fn stored(h: &Home, account: i64, name: &str) -> Vec<(u32, Vec<u8>)> {
    let Some(id) = folder_id_of(h, account, name) else { return Vec::new() };
    let s = store(h);
    s.folder_messages(id)
        .unwrap()
        .into_iter()
        .map(|(uid, ..)| (uid as u32, s.message_raw(id, uid).unwrap().unwrap_or_default()))
        .collect()
}

/// (uid, body) of the world's folder `name`.
fn world_msgs(s: &HostileImap, name: &str) -> Vec<(u32, Vec<u8>)> {
    s.world(|w| w.folder(name.as_bytes()).unwrap().messages.iter().map(|m| (m.uid, m.body.clone())).collect())
}

fn uids(v: &[(u32, Vec<u8>)]) -> Vec<u32> {
    v.iter().map(|m| m.0).collect()
}

/// "server too slow: N bytes in S s" (the deadline's error) in `text`.
fn too_slow(text: &str) -> bool {
    regex::Regex::new(r"server too slow: \d+ bytes in \d+ s").unwrap().is_match(text)
}

/// The account backed off: a failure counted and a retry time in the future.
fn assert_backed_off(h: &Home, account: i64) -> backproc_store::Account {
    let a = store(h).account(account).unwrap();
    let now = backproc_store::now();
    assert!(a.failures >= 1, "failures {}: {:?}", a.failures, a.last_error);
    assert!(a.retry_after.is_some_and(|t| t > now), "retry after {:?}, now {now}: {:?}", a.retry_after, a.last_error);
    a
}

/// The value of metric `name` in data/backproc.prom (0 when absent).
fn metric(h: &Home, name: &str) -> f64 {
    let text = std::fs::read_to_string(h.file("data/backproc.prom")).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0.0)
}

/// Waits until the 1 s sync intervals of the account's folders have passed (the store keeps
/// whole seconds): the next run has them due.
fn wait_due(h: &Home, account: i64) {
    let last = store(h)
        .folders(Some(account))
        .unwrap()
        .iter()
        .flat_map(|f| [f.last_recent_sync, f.last_full_sync])
        .flatten()
        .max()
        .unwrap_or(0);
    assert!(wait_until(Duration::from_secs(5), || backproc_store::now() > last));
}

/// Lines of the server's command log from entry `from` on.
fn commands_since(s: &HostileImap, from: usize) -> Vec<String> {
    s.commands().into_iter().skip(from).map(|(_, l)| l).collect()
}

// ─────────────────────────────────────── 1. deadlines ───────────────────────────────────────

const DEADLINE: u64 = 3;
/// What a debug binary on a loaded 2-core machine may need beyond the deadline: start, the
/// other tasks, the end.
const SLACK: Duration = Duration::from_secs(8);

#[test]
fn a_drip_in_the_greeting_or_the_list_answer_meets_the_deadline() {
    let drip = Duration::from_millis(150);
    let greeting = server(World::simple(2), Script { drip: Some((Phase::Greeting, drip)), ..Script::default() });
    let list = server(World::simple(2), Script { drip: Some((Phase::List, drip)), ..Script::default() });
    let h = Home::with_config(&config(&format!("define('BG_TASK_DEADLINE', {DEADLINE});")));
    let a_greeting = add_account(&h, "greeting", greeting.port());
    let a_list = add_account(&h, "list", list.port());
    let took = run_once(&h);
    assert!(took < Duration::from_secs(DEADLINE) + SLACK, "run --once took {:?}", took);
    eprintln!("drip in the greeting and in LIST: run --once ended after {:.1} s", took.as_secs_f64());
    for (a, what) in [(a_greeting, "greeting"), (a_list, "LIST")] {
        let errors = errors_of(&h, a);
        let cut = errors.iter().find(|r| too_slow(r.detail.as_deref().unwrap_or("")));
        let cut = cut.unwrap_or_else(|| panic!("{what}: {}", show(&errors)));
        let ms = cut.duration_ms.unwrap_or(0) as u64;
        assert!((DEADLINE * 1000 - 500..(DEADLINE + 3) * 1000).contains(&ms), "{what}: cut after {ms} ms");
        let acct = assert_backed_off(&h, a);
        assert!(too_slow(acct.last_error.as_deref().unwrap_or("")), "{what}: {:?}", acct.last_error);
    }
    assert!(too_slow(&h.log("l-info.log")), "{}", h.log("l-info.log"));
    // The greeting never ended, so no LOGIN; the LIST was asked and never completed.
    assert_eq!(greeting.count("LOGIN"), 0);
    assert_eq!(list.count("LIST"), 1);
    assert!(stored(&h, a_list, "INBOX").is_empty());
}

/// A first run whose bodies all come back `NIL` leaves the messages queued; with sync intervals
/// of an hour the next run has only the receive to do, so only its FETCH (literals and all) is
/// dripped.
#[test]
fn a_drip_in_a_fetch_literal_meets_the_deadline() {
    let s = server(World::simple(3), Script { nil_bodies: vec![1, 2, 3], ..Script::default() });
    let hourly = "define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL', 3600);
define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL_NL', 3600);
define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL', 3600);
define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL_NL', 3600);";
    let (h, a) = home_on(
        &s,
        &config(&format!("{hourly}\ndefine('BG_TASK_DEADLINE', {DEADLINE});\ndefine('BG_BACKOFF_BASE', 1);")),
    );
    run_once(&h);
    let inbox = folder_id_of(&h, a, "INBOX").unwrap();
    assert_eq!(store(&h).receive_queue_entries(inbox).unwrap().len(), 3, "queued, not received");
    // The entries are due again after the back-off base (1 s).
    assert!(wait_until(Duration::from_secs(5), || {
        store(&h)
            .receive_batch(inbox, backproc_store::Lane::Primary, backproc_store::now(), 0, 10, 1 << 30)
            .unwrap()
            .len()
            == 3
    }));
    s.set_script(Script { drip: Some((Phase::Fetch, Duration::from_millis(100))), ..Script::default() });
    h.write_config(&config(&format!("{hourly}\ndefine('BG_TASK_DEADLINE', {DEADLINE});")));
    let fetches = s.count("UID FETCH");
    let took = run_once(&h);
    assert!(took < Duration::from_secs(DEADLINE) + SLACK, "run --once took {:?}", took);
    eprintln!("drip in a FETCH literal: run --once ended after {:.1} s", took.as_secs_f64());
    assert!(s.count("UID FETCH") > fetches, "the receive asked the bodies");
    let errors = errors_of(&h, a);
    assert!(
        errors.iter().any(|r| r.process.starts_with("Receive") && too_slow(r.detail.as_deref().unwrap_or(""))),
        "{}",
        show(&errors)
    );
    assert_backed_off(&h, a);
    // Nothing half-received was stored; everything stays queued.
    assert!(stored(&h, a, "INBOX").is_empty());
    assert_eq!(store(&h).receive_queue_entries(inbox).unwrap().len(), 3);
}

#[test]
fn a_slow_but_honest_transfer_is_not_cut_off() {
    // One 12 KB message sent a byte at a time, ~0.2 ms apart: a few KB/s, far above the
    // minimum rate of 200 B/s, and longer than the 2 s deadline in all.
    let mut world = World::simple(0);
    let body = backproc_testkit::mailgen::message_with(
        "slow",
        "a@backproc.test",
        "b@backproc.test",
        "Mon, 01 Jan 2024 00:00:00 +0000",
        "slow.1@backproc.test",
        &"a slow but honest line of text\n".repeat(400),
    );
    world.folders[0].push(body.clone(), Vec::new(), "01-Jan-2024 00:00:00 +0000".into());
    let s = server(world, Script { drip: Some((Phase::Fetch, Duration::from_micros(200))), ..Script::default() });
    let (h, a) = home_on(&s, &config("define('BG_TASK_DEADLINE', 2);\ndefine('BG_MIN_TRANSFER_RATE', 200);"));
    let took = run_once(&h);
    let errors = errors_of(&h, a);
    assert!(errors.is_empty(), "{}", show(&errors));
    assert_eq!(stored(&h, a, "INBOX"), vec![(1, body.clone())]);
    let receive = history(&h)
        .into_iter()
        .find(|r| r.process.starts_with("Receive") && r.status == "Finished")
        .and_then(|r| r.duration_ms)
        .unwrap_or(0);
    eprintln!(
        "slow honest transfer of {} bytes: the receive took {:.1} s (run --once {:.1} s)",
        body.len(),
        receive as f64 / 1000.0,
        took.as_secs_f64()
    );
    assert!(receive > 2000, "the receive ({receive} ms) did not outlast its 2 s deadline: the test shows nothing");
}

// ─────────────────────────────────────── 2. isolation ───────────────────────────────────────

#[test]
fn a_hung_account_does_not_starve_thirty_healthy_ones() {
    let deadline = 5;
    let hung = server(World::simple(2), Script { hang: Some(Hang::AfterLogin), ..Script::default() });
    let healthy = server(World::simple(3), Script::default());
    let h = Home::with_config(&config(&format!(
        "define('BG_TASK_DEADLINE', {deadline});\ndefine('BG_MAX_THREADS', 4);\ndefine('BG_MAX_CONNECTIONS_PER_HOST', 64);"
    )));
    // The hung account first: it gets the first worker, and the healthy ones share it.
    let a_hung = add_account(&h, "hung", hung.port());
    let healthy_accounts: Vec<i64> =
        (0..30).map(|i| add_account(&h, &format!("healthy{i:02}"), healthy.port())).collect();
    let took = run_once(&h);
    eprintln!("1 hung + 30 healthy accounts on 4 workers: run --once took {:.1} s", took.as_secs_f64());
    let want = uids(&world_msgs(&healthy, "INBOX"));
    let missing: Vec<i64> =
        healthy_accounts.iter().copied().filter(|&a| uids(&stored(&h, a, "INBOX")) != want).collect();
    assert!(missing.is_empty(), "accounts not synced in the run: {missing:?}\n{}", h.log("l-info.log"));
    let errors = errors_of(&h, a_hung);
    let cut = errors
        .iter()
        .find(|r| too_slow(r.detail.as_deref().unwrap_or("")))
        .unwrap_or_else(|| panic!("{}", show(&errors)));
    // By its deadline: not before, and not much after.
    let ms = cut.duration_ms.unwrap_or(0);
    assert!((deadline * 1000 - 500..(deadline + 5) * 1000).contains(&(ms as u64)), "the hung task took {ms} ms");
    assert_backed_off(&h, a_hung);
    assert!(took < Duration::from_secs(deadline) + Duration::from_secs(20), "run --once took {:?}", took);
}

// ────────────────────────────────────── 3. bounded memory ───────────────────────────────────

const RSS_BOUND: u64 = 64 << 20;

/// One `run --once` against a server flooding as `flood` says, measured; returns the error
/// recorded and the figures.
fn flooded(flood: Flood) -> (String, Measured) {
    let s = server(World::simple(2), Script { flood: Some(flood), ..Script::default() });
    let (h, a) = home_on(&s, &config("define('BG_TASK_DEADLINE', 60);"));
    let m = run_measured({
        let mut c = h.cmd();
        c.args(["run", "--once"]);
        c
    });
    assert_eq!(m.code, 0, "run --once: {}\n{}", m.stderr, h.log("l-info.log"));
    assert_no_panic(&h, &m.stderr);
    let errors = errors_of(&h, a);
    let detail = errors.iter().filter_map(|r| r.detail.clone()).collect::<Vec<_>>().join("\n");
    eprintln!(
        "{flood:?}: peak RSS {:.1} MB, run --once {:.1} s, server sent {:.1} MB; error: {detail}",
        m.peak_rss as f64 / MB,
        m.took.as_secs_f64(),
        s.bytes_sent() as f64 / MB
    );
    assert!(!detail.is_empty(), "no error recorded\n{}", h.log("l-info.log"));
    assert!(m.peak_rss <= RSS_BOUND, "peak RSS {:.1} MB > 64 MB", m.peak_rss as f64 / MB);
    assert!(stored(&h, a, "INBOX").is_empty() || flood.at == FloodAt::Status);
    (detail, m)
}

#[test]
fn a_flood_of_ok_lines_in_answer_to_list_costs_bounded_memory() {
    let (e, _) = flooded(Flood { at: FloodAt::List, kind: FloodKind::OkLines, bytes: 300 << 20 });
    assert!(e.contains("more than") && e.contains("LIST"), "the error names the limit: {e}");
}

#[test]
fn a_flood_of_status_lines_costs_bounded_memory() {
    let (e, _) = flooded(Flood { at: FloodAt::Status, kind: FloodKind::StatusLines, bytes: 100 << 20 });
    assert!(e.contains("more than") && e.contains("STATUS"), "the error names the limit: {e}");
}

#[test]
fn a_100_mb_line_in_list_costs_bounded_memory() {
    let (e, _) = flooded(Flood { at: FloodAt::List, kind: FloodKind::OneLine, bytes: 100 << 20 });
    assert!(e.contains("longer than") && e.contains("bytes"), "the error names the limit: {e}");
}

#[test]
fn a_flood_of_ok_lines_after_the_greeting_costs_bounded_memory() {
    let (e, _) = flooded(Flood { at: FloodAt::Greeting, kind: FloodKind::OkLines, bytes: 300 << 20 });
    assert!(e.contains("more than") && e.contains("untagged responses"), "the error names the limit: {e}");
}

#[test]
fn a_100_mb_status_line_costs_bounded_memory() {
    let (e, _) = flooded(Flood { at: FloodAt::Status, kind: FloodKind::OneLine, bytes: 100 << 20 });
    assert!(e.contains("longer than") && e.contains("bytes"), "the error names the limit: {e}");
}

#[test]
fn a_100_mb_greeting_costs_bounded_memory() {
    let (e, _) = flooded(Flood { at: FloodAt::Greeting, kind: FloodKind::OneLine, bytes: 100 << 20 });
    assert!(e.contains("greeting") && e.contains("bytes"), "the error names the limit: {e}");
}

// ─────────────────────────────────── 4. LOGINDISABLED ───────────────────────────────────────

#[test]
fn logindisabled_on_a_plain_connection_never_sends_the_password() {
    for starttls in [false, true] {
        let s = server(World::simple(2), Script { login_disabled: true, starttls, ..Script::default() });
        let (h, a) = home_on(&s, &config(""));
        run_once(&h);
        assert!(s.login_attempts().is_empty(), "starttls {starttls}: {:?}", s.login_attempts());
        let sent = s.commands();
        assert!(!sent.iter().any(|(_, l)| l.contains(PASS)), "the password went in clear: {sent:?}");
        assert_eq!(s.count("LOGIN") + s.count("AUTHENTICATE"), 0, "{sent:?}");
        let errors = errors_of(&h, a);
        let text = show(&errors);
        if starttls {
            // The server offers STARTTLS, then refuses it: still no login in clear.
            assert_eq!(s.count("STARTTLS"), 1, "{sent:?}");
        } else {
            assert!(text.contains("refuses logins without TLS"), "{text}");
        }
        assert!(!errors.iter().any(|r| r.status == "Authentication failed"), "not a wrong password: {text}");
        // Backed off as a connection problem (BG_BACKOFF_BASE, 60 s), not the 1800 s wait of
        // a refused login.
        let acct = assert_backed_off(&h, a);
        let wait = acct.retry_after.unwrap() - acct.last_error_at.unwrap();
        assert!(wait < 1800, "starttls {starttls}: waits {wait} s like a wrong password: {:?}", acct.last_error);
    }
}

// ───────────────────────────────────── 5. phantoms ──────────────────────────────────────────

#[test]
fn fetch_answers_never_asked_are_not_stored_and_are_counted() {
    let phantoms = vec![Phantom::Uid(777), Phantom::UidZero, Phantom::Duplicate, Phantom::AlteredDuplicate];
    let s = server(World::simple(4), Script { phantoms, ..Script::default() });
    let (h, a) = home_on(&s, &config(""));
    run_once(&h);
    let errors = errors_of(&h, a);
    assert!(errors.is_empty(), "{}", show(&errors));
    // Exactly the world's messages, with the world's bytes (the altered duplicate came second).
    assert_eq!(stored(&h, a, "INBOX"), world_msgs(&s, "INBOX"));
    assert!(
        metric(&h, "backproc_ignored_fetch_responses_total") > 0.0,
        "{}",
        std::fs::read_to_string(h.file("data/backproc.prom")).unwrap_or_default()
    );
    assert!(h.log("l-debug.log").contains("not asked"), "a debug line for each ignored answer");
}

// ───────────────────────────────────── 6. BODY[] NIL ────────────────────────────────────────

#[test]
fn a_nil_body_keeps_the_message_queued_until_it_comes() {
    let s = server(World::simple(3), Script { nil_bodies: vec![2], ..Script::default() });
    // Back-off base 2 s: the entry is not due again within the run, and soon after it.
    let (h, a) = home_on(&s, &config("define('BG_BACKOFF_BASE', 2);"));
    run_once(&h);
    let inbox = folder_id_of(&h, a, "INBOX").unwrap();
    assert_eq!(uids(&stored(&h, a, "INBOX")), vec![1, 3]);
    let q = store(&h).receive_queue_entries(inbox).unwrap();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!((q[0].uid, q[0].attempts, q[0].queue.as_str()), (2, 1, "primary"), "{q:?}");
    assert!(q[0].last_error.as_deref().is_some_and(|w| w.contains("no body")), "{q:?}");
    // History claims the two received, not three.
    let received: i64 = history(&h)
        .iter()
        .filter(|r| r.process.starts_with("Receive") && r.status == "Finished")
        .filter_map(|r| r.count)
        .sum();
    assert_eq!(received, 2, "{}", show(&history(&h)));
    // Later, with the server fixed, it is stored.
    assert!(wait_until(Duration::from_secs(10), || {
        !store(&h)
            .receive_batch(inbox, backproc_store::Lane::Primary, backproc_store::now(), 0, 10, 1 << 30)
            .unwrap()
            .is_empty()
    }));
    s.set_script(Script::default());
    run_once(&h);
    assert_eq!(stored(&h, a, "INBOX"), world_msgs(&s, "INBOX"));
    assert!(store(&h).receive_queue_entries(inbox).unwrap().is_empty());
}

// ───────────────────────────────────── 7. UIDVALIDITY ───────────────────────────────────────

#[test]
fn a_status_answer_for_another_mailbox_sets_nothing() {
    let s =
        server(World::simple(2), Script { status_wrong_name: Some((b"Elsewhere".to_vec(), 99)), ..Script::default() });
    let (h, a) = home_on(&s, &config(""));
    run_once(&h);
    for f in store(&h).folders(Some(a)).unwrap() {
        assert_ne!(f.uidvalidity, Some(99), "{}: took the UIDVALIDITY of another mailbox", f.name);
    }
    let errors = errors_of(&h, a);
    assert!(!errors.is_empty(), "a STATUS without an answer for the folder is an error");
    assert!(stored(&h, a, "INBOX").is_empty(), "nothing synced on a STATUS that does not answer");
}

/// A new generation of INBOX behind the same UIDVALIDITY (the knob bumps it at the next
/// SELECT): a new message as UID 1, the old ones after it in reverse order, so that every UID
/// now names another message than the store has under it.
fn renumber_inbox(s: &HostileImap) {
    let new = backproc_testkit::mailgen::message_with(
        "the new generation",
        "a@backproc.test",
        "b@backproc.test",
        "Mon, 01 Jan 2024 00:00:00 +0000",
        "new-generation.1@backproc.test",
        "new\n",
    );
    s.world(|w| {
        let f = w.folder_mut(b"INBOX").unwrap();
        let mut bodies: Vec<Vec<u8>> = f.messages.iter().rev().map(|m| m.body.clone()).collect();
        bodies.insert(0, new);
        let base = f.modseq();
        f.messages = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| backproc_testkit::hostimap::Msg {
                uid: i as u32 + 1,
                flags: Vec::new(),
                body,
                modseq: base + 1 + i as u64,
                internal_date: "01-Jan-2024 00:00:00 +0000".into(),
            })
            .collect();
        f.uidnext = 0;
    });
}

#[test]
fn a_uidvalidity_changed_between_status_and_select_stores_and_pushes_nothing() {
    let s = server(World::simple(3), Script::default());
    let (h, a) = home_on(&s, &config(""));
    run_once(&h);
    assert_eq!(stored(&h, a, "INBOX"), world_msgs(&s, "INBOX"));
    let inbox = folder_id_of(&h, a, "INBOX").unwrap();
    assert_eq!(store(&h).folder(inbox).unwrap().uidvalidity, Some(1000));
    // A local change waiting to be pushed: message 2 (not \Seen on the server) read here.
    let id = store(&h).mail_list(a, Some("INBOX"), false, 100).unwrap().into_iter().find(|m| m.uid == 2).unwrap().id;
    let o = h.run(&["mail", "flag", "--seen", &id.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // STATUS still says 1000; the SELECT that follows it says 1001, over other messages.
    renumber_inbox(&s);
    s.set_script(Script { bump_uidvalidity_on_select: true, ..Script::default() });
    let from = s.commands().len();
    wait_due(&h, a);
    run_once(&h);
    let sent = commands_since(&s, from);
    assert!(!sent.iter().any(|l| l.contains("UID STORE")), "a flag pushed to another generation: {sent:#?}");
    let f = store(&h).folder(inbox).unwrap();
    let now_valid = s.world(|w| w.folder(b"INBOX").unwrap().uidvalidity);
    assert!(
        f.uidvalidity.is_some_and(|v| v > 1000 && v <= i64::from(now_valid)),
        "reset: {:?} vs {now_valid}",
        f.uidvalidity
    );
    let log = h.log("l-info.log");
    assert!(log.contains("UIDVALIDITY changed (1000 -> "), "the reset path: {log}");
    // Every UID holds the message the new generation has under it: nothing was stored or
    // kept under the old numbering.
    assert_eq!(stored(&h, a, "INBOX"), world_msgs(&s, "INBOX"), "{log}");
}

#[test]
fn a_uidvalidity_changed_before_a_receive_stores_nothing_under_the_old_one() {
    // First run: the messages are queued but their bodies do not come (NIL); hourly sync
    // intervals, so the next run is the receive alone.
    let s = server(World::simple(3), Script { nil_bodies: vec![1, 2, 3], ..Script::default() });
    let hourly = "define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL', 3600);
define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL_NL', 3600);
define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL', 3600);
define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL_NL', 3600);
define('BG_BACKOFF_BASE', 1);";
    let (h, a) = home_on(&s, &config(hourly));
    run_once(&h);
    let inbox = folder_id_of(&h, a, "INBOX").unwrap();
    assert!(stored(&h, a, "INBOX").is_empty());
    assert!(wait_until(Duration::from_secs(5), || {
        store(&h)
            .receive_batch(inbox, backproc_store::Lane::Primary, backproc_store::now(), 0, 10, 1 << 30)
            .unwrap()
            .len()
            == 3
    }));
    // The receive's EXAMINE finds a new generation (the STATUS before it did not).
    renumber_inbox(&s);
    s.set_script(Script { bump_uidvalidity_on_select: true, ..Script::default() });
    let from = s.commands().len();
    run_once(&h);
    let sent = commands_since(&s, from);
    let log = h.log("l-info.log");
    assert!(log.contains("nothing received; the folder is resynchronised"), "{log}");
    // No body asked between that EXAMINE and the reset's sync.
    let examine = sent.iter().position(|l| l.contains("EXAMINE") || l.contains("SELECT")).expect("a SELECT or EXAMINE");
    let next_status = sent[examine..].iter().position(|l| l.contains("STATUS")).map_or(sent.len(), |i| examine + i);
    assert!(!sent[examine..next_status].iter().any(|l| l.contains("BODY.PEEK[]")), "{sent:#?}");
    assert!(!sent.iter().any(|l| l.contains("UID STORE")), "{sent:#?}");
    assert_eq!(stored(&h, a, "INBOX"), world_msgs(&s, "INBOX"), "{log}");
    assert!(store(&h).folder(inbox).unwrap().uidvalidity.is_some_and(|v| v > 1000));
}

// ───────────────────────────────────── 8. bad LIST lines ────────────────────────────────────

#[test]
fn bad_list_lines_cost_only_their_folder() {
    let s = server(World::simple(3), Script { bad_list_names: true, ..Script::default() });
    let (h, a) = home_on(&s, &config(""));
    run_once(&h);
    // The good folders sync.
    assert_eq!(stored(&h, a, "INBOX"), world_msgs(&s, "INBOX"));
    let folders = store(&h).folders(Some(a)).unwrap();
    assert!(folders.iter().any(|f| f.name == "Sent" && f.last_full_sync.is_some()), "{folders:#?}");
    let log = h.log("l-info.log");
    let o = h.run(&["folder", "list", "--account", &a.to_string()]);
    let listed = stdout(&o);
    assert!(!listed.bytes().any(|b| b == 0 || b == b'\r'), "a NUL or CR reaches the terminal: {listed:?}");
    // A NUL or CR inside a quoted string, invalid UTF-8: skipped with a warning naming them,
    // and shown as unusable (never synced).
    for bad in [&b"bad\0nul"[..], b"bad\rcr", b"bad-\xff\xfe-utf8"] {
        let name = String::from_utf8_lossy(bad).into_owned();
        assert!(log.contains(&format!("{name:?}")), "a warning names {name:?}:\n{log}");
        let f = folders.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("{name:?} not in {folders:#?}"));
        assert!(f.unusable.is_some() && f.priority == "off" && f.last_full_sync.is_none(), "{f:?}");
        let shown = name.escape_debug().to_string();
        assert!(listed.contains(&shown), "{shown} in:\n{listed}");
    }
    assert_eq!(listed.matches("unusable:").count(), 3, "{listed}");
    // Raw UTF-8 and a broken modified UTF-7 name are names the engine can send back: it tries
    // them, and this server refuses them; that costs those folders only.
    for name in [&BAD_LIST_NAMES[2], &BAD_LIST_NAMES[4]] {
        let name = String::from_utf8_lossy(name);
        assert!(folders.iter().any(|f| f.name == name && f.unusable.is_none()), "{name:?}: {folders:#?}");
    }
    let errors = errors_of(&h, a);
    assert!(!errors.iter().any(|r| r.process.starts_with("List") || r.folder_id.is_none()), "{}", show(&errors));
    assert!(errors.iter().all(|r| r.detail.as_deref().is_some_and(|d| d.contains("NONEXISTENT"))), "{}", show(&errors));
    assert_eq!(store(&h).account(a).unwrap().failures, 0, "the account is not backed off");
}

// ───────────────────────────────────── 9. linear in folders ─────────────────────────────────

/// STATUS commands asked more than once since entry `from` of the command log.
fn status_twice(s: &HostileImap, from: usize) -> Vec<String> {
    let mut seen = std::collections::BTreeMap::new();
    for l in commands_since(s, from) {
        if let Some(i) = l.find(" STATUS ") {
            *seen.entry(l[i + 1..].to_string()).or_insert(0) += 1;
        }
    }
    seen.into_iter().filter(|(_, n)| *n > 1).map(|(l, n)| format!("{n} × {l}")).collect()
}

#[test]
fn five_thousand_folders_cost_one_status_each_per_pass() {
    let n = 5_000;
    let s = server(World::simple(2), Script { many_folders: Some((n, 0)), ..Script::default() });
    // Intervals longer than the test: each pass syncs each folder once (a folder due again
    // within a pass, as INBOX is with a 1 s interval, is asked again by the next pass's
    // prefetch, rightly).
    let (h, a) = home_on(
        &s,
        &config(
            "define('BG_TASK_DEADLINE', 120);
define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL', 3600);
define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL_NL', 3600);
define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL', 3600);
define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL_NL', 3600);",
        ),
    );
    let took = run_once(&h);
    let folders = store(&h).folders(Some(a)).unwrap();
    let selectable = folders.len();
    assert_eq!(selectable, n + 2, "INBOX, Sent and the generated ones (not the \\Noselect parent)");
    assert!(folders.iter().all(|f| f.last_full_sync.is_some()), "every folder synced in the pass");
    let first = s.count("STATUS");
    eprintln!("{n} folders: first pass {:.1} s, {first} STATUS", took.as_secs_f64());
    assert_eq!(first, selectable, "one STATUS per folder in a pass; twice: {:?}", status_twice(&s, 0));
    let errors = errors_of(&h, a);
    assert!(errors.is_empty(), "{}", show(&errors[..errors.len().min(5)]));
    // Second pass: every folder due again ("check mail now"), one STATUS each again.
    let from = s.commands().len();
    let t = Instant::now();
    let o = h.run(&["sync", "--account", &a.to_string()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let second = s.count("STATUS") - first;
    eprintln!("{n} folders: second pass {:.1} s, {second} STATUS", t.elapsed().as_secs_f64());
    assert_eq!(second, selectable, "one STATUS per due folder; twice: {:?}", status_twice(&s, from));
}

// ───────────────────────────────────── 10. the smaller items ────────────────────────────────

#[test]
fn condstore_without_enable_sends_no_enable() {
    let s = server(World::simple(3), Script { condstore_without_enable: true, ..Script::default() });
    // One connection a run: else INBOX's receive may run beside the other folder's sync on a
    // connection of its own, or not, as the two tasks' timing falls, and the count below
    // would say nothing about ENABLE.
    let (h, a) = home_on(&s, &config("define('EMAIL_BG_ACCOUNT_CONNECTIONS', 1);"));
    run_once(&h);
    // And again, on a new connection: never an ENABLE, so never its BAD.
    wait_due(&h, a);
    run_once(&h);
    assert_eq!(s.connections(), 2);
    assert_eq!(s.count("ENABLE"), 0);
    assert_eq!(stored(&h, a, "INBOX"), world_msgs(&s, "INBOX"));
    let errors = errors_of(&h, a);
    assert!(errors.is_empty(), "{}", show(&errors));
    assert!(!h.log("l-debug.log").contains("ENABLE refused"), "{}", h.log("l-debug.log"));
}

#[test]
fn a_refused_select_backs_off_further_and_costs_no_new_login() {
    // INBOX (high priority, due every second) cannot be opened; STATUS works.
    let s = server(World::simple(2), Script { refuse_select: vec![b"INBOX".to_vec()], ..Script::default() });
    let (h, a) = home_on(&s, &config("define('BG_BACKOFF_BASE', 1);\ndefine('BG_BACKOFF_MAX', 3600);"));
    let mut master = h.spawn(&["run"]);
    let failures = || {
        let inbox = folder_id_of(&h, a, "INBOX");
        history(&h)
            .into_iter()
            .filter(|r| {
                inbox.is_some()
                    && r.folder_id == inbox
                    && r.process.starts_with("Sync")
                    && !matches!(r.status.as_str(), "Started" | "Finished")
            })
            .collect::<Vec<_>>()
    };
    // Failures at t, t+1, t+3, t+7 with a hold doubling from 1 s (1, 2, 4 s).
    let four = wait_until(Duration::from_secs(30), || failures().len() >= 4);
    let o = h.run(&["stop"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let _ = master.wait();
    assert_no_panic(&h, "");
    let f = failures();
    assert!(four, "{}\n{}", show(&f), h.log("l-info.log"));
    let mut times: Vec<i64> = f.iter().map(|r| r.time).collect();
    times.sort_unstable();
    let gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!(
        "refused SELECT: {} failures, {} s apart",
        f.len(),
        gaps.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(", ")
    );
    // Whole seconds: a gap of 2 may read as 1 or 3, but the last is longer than the first.
    assert!(gaps.last() > gaps.first() && *gaps.last().unwrap() >= 3, "the hold grows: {gaps:?}");
    assert!(
        f.iter().all(|r| r.detail.as_deref().is_some_and(|d| d.contains("INBOX") && d.contains("UNAVAILABLE"))),
        "{}",
        show(&f)
    );
    assert_eq!(s.count("LOGIN"), 1, "one login in the master's life: {:?}", s.login_attempts());
    assert_eq!(s.connections(), 1, "one connection in the master's life");
    // The account itself is fine: not backed off, its other folder synced.
    let acct = store(&h).account(a).unwrap();
    assert_eq!(acct.failures, 0, "{:?}", acct.last_error);
    assert!(store(&h).folders(Some(a)).unwrap().iter().any(|f| f.name == "Sent" && f.last_full_sync.is_some()));
}

#[test]
fn a_list_without_inbox_marks_no_folder_gone() {
    let s = server(World::simple(2), Script::default());
    let (h, a) = home_on(&s, &config(""));
    run_once(&h);
    assert_eq!(store(&h).folders(Some(a)).unwrap().iter().filter(|f| !f.gone).count(), 2);
    s.set_script(Script { no_inbox_in_list: true, ..Script::default() });
    wait_due(&h, a);
    let before = h.log("l-info.log").len();
    run_once(&h);
    let folders = store(&h).folders(Some(a)).unwrap();
    assert!(folders.iter().all(|f| !f.gone), "{folders:#?}");
    let log = h.log("l-info.log")[before..].to_string();
    assert!(log.contains("no INBOX"), "a line says why: {log}");
}

#[test]
fn a_silent_server_is_named_as_such() {
    let s = server(World::simple(2), Script { hang: Some(Hang::BeforeGreeting), ..Script::default() });
    let (h, a) = home_on(&s, &config("define('BG_IO_TIMEOUT', 2);\ndefine('BG_TASK_DEADLINE', 30);"));
    let took = run_once(&h);
    assert!(took < Duration::from_secs(2) + SLACK, "{:?}", took);
    let errors = errors_of(&h, a);
    let text = show(&errors);
    assert!(text.contains("no answer from the server within 2 s (waiting for the greeting)"), "{text}");
    assert_backed_off(&h, a);
}

#[test]
fn an_out_of_range_status_number_is_named_with_its_folder() {
    for (uidnext, want) in [
        ("99999999999", "invalid STATUS answer for \"INBOX\": UIDNEXT 99999999999 is not a 32-bit number"),
        ("-1", "invalid STATUS answer for \"INBOX\": UIDNEXT \"-1\" is not a number"),
    ] {
        let s = server(World::simple(2), Script { status_uidnext: Some(uidnext.into()), ..Script::default() });
        let (h, a) = home_on(&s, &config(""));
        run_once(&h);
        let text = show(&errors_of(&h, a));
        assert!(text.contains(want), "{text}");
        assert!(!text.contains("sent no STATUS data"), "{text}");
        assert!(stored(&h, a, "INBOX").is_empty(), "nothing synced on numbers that cannot be right");
    }
}

// ───────────────────────────────────── more hostile behaviour ───────────────────────────────

/// A knob that breaks the session: the run ends by itself, nothing is stored that the world
/// does not hold, no message the world holds is lost for good (a later correct run stores them
/// all, once the back-off of 2 s has passed), and the error is recorded. Returns the errors.
fn survives(what: &str, script: Script) -> String {
    let s = server(World::simple(4), script);
    let cfg = config("define('BG_TASK_DEADLINE', 10);\ndefine('BG_BACKOFF_BASE', 2);\ndefine('BG_BACKOFF_MAX', 3600);");
    let (h, a) = home_on(&s, &cfg);
    run_once(&h);
    let world = world_msgs(&s, "INBOX");
    for m in &stored(&h, a, "INBOX") {
        assert!(world.contains(m), "a phantom or altered message: uid {}", m.0);
    }
    let errors = show(&errors_of(&h, a));
    eprintln!("{what}: {errors}");
    assert!(!errors.is_empty(), "no error recorded\n{}", h.log("l-info.log"));
    // The correct server afterwards: everything arrives.
    s.set_script(Script::default());
    for _ in 0..3 {
        if stored(&h, a, "INBOX") == world {
            break;
        }
        let inbox = folder_id_of(&h, a, "INBOX");
        assert!(wait_until(Duration::from_secs(10), || {
            let st = store(&h);
            let now = backproc_store::now();
            let queued = inbox.map_or(0, |f| st.receive_queue_entries(f).unwrap().len());
            let due = inbox
                .map_or(0, |f| st.receive_batch(f, backproc_store::Lane::Primary, now, 0, 100, 1 << 30).unwrap().len());
            st.account(a).unwrap().retry_after.is_none_or(|t| t < now) && due == queued
        }));
        wait_due(&h, a);
        run_once(&h);
    }
    assert_eq!(stored(&h, a, "INBOX"), world, "{}", h.log("l-info.log"));
    errors
}

#[test]
fn a_stray_tagged_answer_is_a_clear_error() {
    let errors = survives("stray tagged answer", Script { stray_tagged: true, ..Script::default() });
    assert!(errors.contains("a tag never sent"), "{errors}");
}

#[test]
fn a_bye_in_the_middle_of_a_fetch_loses_nothing() {
    let errors = survives("BYE mid-FETCH", Script { bye_during_fetch: true, ..Script::default() });
    assert!(errors.contains("closed the connection"), "{errors}");
}

#[test]
fn an_overstated_literal_loses_nothing() {
    let errors = survives("overstated literal", Script { overstated_literal: Some(100), ..Script::default() });
    assert!(!errors.is_empty(), "{errors}");
}

#[test]
fn a_continuation_out_of_the_blue_is_a_clear_error() {
    let errors =
        survives("continuation out of the blue", Script { continuation_out_of_blue: true, ..Script::default() });
    assert!(errors.contains("continuation"), "{errors}");
}

#[test]
fn a_connection_closed_without_a_word_loses_nothing() {
    let errors = survives("closed on UID FETCH", Script { close_on: Some("UID FETCH".into()), ..Script::default() });
    assert!(errors.contains("lost while reading UID FETCH: the server closed the connection"), "{errors}");
}

#[test]
fn an_invalid_exists_number_is_a_clear_error() {
    for (exists, want) in [("-1", "the server sent no EXISTS"), ("4294967296", "4294967296 is not a 32-bit number")] {
        let errors =
            survives(&format!("EXISTS {exists}"), Script { select_exists: Some(exists.into()), ..Script::default() });
        assert!(errors.contains("INBOX") && errors.contains(want), "{exists}: {errors}");
    }
}

#[test]
fn a_connection_limit_at_the_greeting_is_a_clear_error() {
    let errors = survives("connection limit", Script { connection_limit: Some(0), ..Script::default() });
    assert!(errors.contains("Too many simultaneous connections"), "{errors}");
}

/// Unusual but legal answers: everything syncs, exactly.
#[test]
fn unusual_but_legal_answers_sync_exactly() {
    let scripts = [
        ("odd FETCH item order", Script { odd_fetch_order: true, ..Script::default() }),
        ("names as literals", Script { literal_names: true, ..Script::default() }),
        ("unsolicited EXISTS and FETCH", Script { unsolicited: true, ..Script::default() }),
        ("RFC822.SIZE 100 bytes off", Script { size_delta: 100, ..Script::default() }),
        ("RFC822.SIZE 100 bytes short", Script { size_delta: -100, ..Script::default() }),
    ];
    for (what, script) in scripts {
        let s = server(World::simple(4), script);
        let (h, a) = home_on(&s, &config(""));
        run_once(&h);
        let errors = errors_of(&h, a);
        assert!(errors.is_empty(), "{what}: {}", show(&errors));
        assert_eq!(stored(&h, a, "INBOX"), world_msgs(&s, "INBOX"), "{what}");
        let folders = store(&h).folders(Some(a)).unwrap();
        assert!(
            folders.iter().any(|f| f.name == "Sent" && f.special_use == Some(backproc_store::SpecialUse::Sent)),
            "{what}: {folders:#?}"
        );
        // The \Seen of every third message came through (FLAGS first, UID last, keywords
        // with "UID" in them: still flags).
        let st = store(&h);
        let inbox = folder_id_of(&h, a, "INBOX").unwrap();
        let seen: Vec<i64> = st.folder_messages(inbox).unwrap().into_iter().filter(|m| m.2.seen).map(|m| m.0).collect();
        assert_eq!(seen, vec![1, 4], "{what}");
    }
}

#[test]
fn a_message_expunged_during_the_fetch_loses_nothing_else() {
    let s = server(World::simple(4), Script { expunge_during_fetch: true, ..Script::default() });
    let (h, a) = home_on(&s, &config(""));
    run_once(&h);
    let errors = errors_of(&h, a);
    assert!(errors.is_empty(), "{}", show(&errors));
    // The first message sent was expunged by "another client" right after its response: what
    // the world still holds is all stored, and nothing else than what was sent.
    let world = world_msgs(&s, "INBOX");
    let got = stored(&h, a, "INBOX");
    for m in &world {
        assert!(got.contains(m), "uid {} lost", m.0);
    }
    assert!(got.len() <= world.len() + 2, "{:?}", uids(&got));
    assert!(got.iter().all(|m| m.0 <= 4), "{:?}", uids(&got));
}

/// A server with neither MOVE nor UIDPLUS (issue 17's capability paths): a deletion goes to
/// Trash as COPY + `\Deleted`, and the plain EXPUNGE that would also remove other clients'
/// `\Deleted` messages is sent only when no other message is flagged; otherwise ours stay
/// flagged. Never a UID MOVE or a UID EXPUNGE the server did not offer.
#[test]
fn without_move_and_uidplus_a_deletion_never_expunges_another_clients_message() {
    let mut caps: Vec<String> =
        backproc_testkit::hostimap::DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    caps.retain(|c| c != "MOVE" && c != "UIDPLUS");
    let mut world = World::simple(6);
    let mut trash = backproc_testkit::hostimap::Folder::new("Trash", 1002);
    trash.attrs.push("\\Trash".into());
    world.folders.push(trash);
    let s = server(world, Script { capabilities: caps, ..Script::default() });
    let (h, a) = home_on(&s, &config("define('EMAIL_BG_SYNC_DELETE_INTERVAL', 1);\n"));
    run_once(&h);
    let id = |uid: u32| {
        store(&h)
            .mail_list(a, Some("INBOX"), false, 100)
            .unwrap()
            .into_iter()
            .find(|m| m.uid == i64::from(uid))
            .unwrap()
            .id
    };
    let deleted = |uid: u32| s.world(|w| w.folder(b"INBOX").unwrap().msg(uid).map(|m| m.has_flag("\\Deleted")));

    // another client has marked message 5 \Deleted (and not expunged it)
    s.world(|w| {
        w.folder_mut(b"INBOX").unwrap().messages.iter_mut().find(|m| m.uid == 5).unwrap().flags.push("\\Deleted".into())
    });
    assert!(h.run(&["mail", "delete", &id(2).to_string()]).status.success());
    h.pass_time(2);
    run_once(&h);
    assert_eq!(deleted(5), Some(true), "the other client's message is still there");
    assert_eq!(deleted(2), Some(true), "ours is flagged, not expunged: an EXPUNGE would take message 5 too");
    let in_trash = s.world(|w| w.folder(b"Trash").unwrap().messages.len());
    assert_eq!(in_trash, 1, "copied to Trash");

    // without another \Deleted message the plain EXPUNGE is safe and removes ours only
    s.world(|w| w.folder_mut(b"INBOX").unwrap().messages.retain(|m| m.uid != 5 && m.uid != 2));
    assert!(h.run(&["mail", "delete", &id(3).to_string()]).status.success());
    h.pass_time(2);
    run_once(&h);
    assert_eq!(deleted(3), None, "expunged");
    let left: Vec<u32> = s.world(|w| w.folder(b"INBOX").unwrap().messages.iter().map(|m| m.uid).collect());
    assert_eq!(left, vec![1, 4, 6]);
    let cmds: Vec<String> = s.commands().into_iter().map(|(_, c)| c.to_ascii_uppercase()).collect();
    assert!(cmds.iter().any(|c| c.contains(" UID COPY ")), "{cmds:#?}");
    assert!(cmds.iter().all(|c| !c.contains(" UID MOVE ") && !c.contains(" UID EXPUNGE ")), "{cmds:#?}");
    assert_eq!(cmds.iter().filter(|c| c.ends_with(" EXPUNGE")).count(), 1, "one plain EXPUNGE: {cmds:#?}");
}
