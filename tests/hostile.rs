//! A hostile message corpus (issue 11, item 6): broken MIME, 8-bit and NUL bytes in headers,
//! unknown charsets, 10,000 parts, 500-deep nesting, a 50 MB message, missing headers, bare LF
//! line ends, very long lines, an empty message. Each message the server accepts must be stored
//! with raw bytes SHA-256-identical to the server's `BODY.PEEK[]`, the engine's peak RSS must
//! stay under 2 × the largest message + 64 MB, nothing may panic, and `mail list` / `mail show`
//! must answer for every one of them.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::mailworld::*;
use crate::util::*;
use backproc_testkit::hostile::{self, RawSession, hex, sha256};

/// Messages a server may refuse at APPEND (RFC 3501 forbids NUL in a literal; Dovecot refuses a
/// zero-byte message). Everything else must be accepted, or the test proves nothing.
const MAY_BE_REFUSED: &[&str] = &["empty message", "NUL bytes in headers"];

fn panic_lines(w: &MailWorld, stderr: &str) -> Vec<String> {
    let mut v: Vec<String> = w
        .home
        .log("l-threading-error.txt")
        .lines()
        .chain(w.home.log("l-info.log").lines())
        .filter(|l| l.to_lowercase().contains("panic"))
        .map(String::from)
        .collect();
    v.extend(stderr.lines().filter(|l| l.contains("panicked") || l.contains("RUST_BACKTRACE")).map(String::from));
    v
}

/// `None` when `a` and `b` are the same bytes, else both sizes and SHA-256 digests. Equal bytes
/// are what "SHA-256-identical" stands for; they are compared directly because a debug build's
/// SHA-256 of the 50 MB message and its copies would take most of the test's time, and the
/// digests are only needed to report a difference.
fn differ(a: &[u8], b: &[u8]) -> Option<String> {
    (a != b).then(|| {
        format!("{} bytes sha256 {} vs {} bytes sha256 {}", a.len(), hex(&sha256(a)), b.len(), hex(&sha256(b)))
    })
}

const MB: f64 = 1024.0 * 1024.0;

#[test]
fn hostile_corpus_is_stored_byte_identical_in_bounded_memory_without_panics() {
    let t0 = Instant::now();
    let w = MailWorld::start(EVERY_SECOND);
    let corpus = hostile::corpus();
    let t_gen = t0.elapsed();

    // APPEND one by one, so each message gets its own answer.
    let mut raw = RawSession::login(w.dovecot.imap_port(), &w.user, &w.password).unwrap();
    let mut accepted: BTreeMap<u32, &hostile::Hostile> = BTreeMap::new();
    let mut refused = Vec::new();
    for h in &corpus {
        match raw.append("INBOX", &h.raw) {
            Ok(uid) => {
                accepted.insert(uid, h);
            }
            Err(e) => refused.push((h.name, e.to_string())),
        }
    }
    eprintln!("refused by the server at APPEND: {refused:?}");
    for (name, why) in &refused {
        assert!(MAY_BE_REFUSED.contains(name), "the server refused {name:?}: {why}");
    }
    // What the server will hand out: the criterion is its BODY.PEEK[], not what we appended
    // (Dovecot may rewrite line ends or NUL bytes).
    let server = raw.fetch_all("INBOX").unwrap();
    raw.logout();
    assert_eq!(server.len(), accepted.len(), "messages on the server");
    let largest = server.iter().map(|m| m.1.len()).max().unwrap() as u64;
    assert!(largest >= hostile::LARGE_SIZE as u64, "the 50 MB message is on the server");
    let t_load = t0.elapsed();

    let run = run_measured({
        let mut c = w.home.cmd();
        c.args(["run", "--once"]);
        c
    });
    let info = w.home.log("l-info.log");
    assert_eq!(run.code, 0, "run --once: {}\n{info}", run.stderr);
    let t_sync = run.took;

    // Every message stored, raw bytes SHA-256-identical to the server's.
    let store = w.store();
    let inbox = folder_id(&store, w.account, "INBOX");
    let local = store.folder_messages(inbox).unwrap();
    let mut mismatched = Vec::new();
    let mut rewritten = Vec::new();
    for (uid, server_raw) in &server {
        let name = accepted[uid].name;
        let Some(stored) = store.message_raw(inbox, *uid as i64).unwrap() else {
            mismatched.push(format!("uid {uid} ({name}): not stored"));
            continue;
        };
        if let Some(d) = differ(server_raw, &stored) {
            mismatched.push(format!("uid {uid} ({name}): server vs store: {d}"));
        }
        if *server_raw != accepted[uid].raw {
            rewritten.push(name);
        }
    }
    eprintln!("messages the server hands out differently from what was appended: {rewritten:?}");
    assert!(mismatched.is_empty(), "store != server:\n{}\n{info}", mismatched.join("\n"));
    assert_eq!(local.len(), server.len(), "rows in the store");
    assert_eq!(store.integrity_check().unwrap(), "ok");

    // Peak memory of the engine under 2 × the largest message + 64 MB.
    let bound = 2 * largest + (64 << 20);
    eprintln!(
        "peak RSS of run --once: {:.1} MB; largest message {:.1} MB; bound {:.1} MB",
        run.peak_rss as f64 / MB,
        largest as f64 / MB,
        bound as f64 / MB
    );
    // The application's view: list and show answer for every message, without a panic.
    let acct = w.account.to_string();
    let list = w.home.run(&["mail", "list", "--account", &acct, "--folder", "INBOX", "--limit", "100000"]);
    assert!(list.status.success(), "mail list: {}", stderr(&list));
    assert_eq!(stdout(&list).lines().count(), server.len(), "{}", stdout(&list));
    // Reported, not required by the issue: header text reaches the terminal as it is.
    let controls = list.stdout.iter().filter(|b| b.is_ascii_control() && !matches!(b, b'\n' | b'\t')).count();
    eprintln!("control bytes (ESC, BEL, ...) printed by mail list: {controls}");
    let json = w.home.run(&["mail", "list", "--account", &acct, "--folder", "INBOX", "--limit", "100000", "--json"]);
    assert!(json.status.success(), "mail list --json: {}", stderr(&json));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).expect("mail list --json is JSON");
    assert_eq!(rows.len(), server.len());
    let mut cli_panics = Vec::new();
    for row in &rows {
        let (id, uid) = (row["id"].as_i64().unwrap(), row["uid"].as_i64().unwrap() as u32);
        let name = accepted[&uid].name;
        let show = w.home.run(&["mail", "show", &id.to_string()]);
        assert!(show.status.success(), "mail show {id} ({name}): {}", stderr(&show));
        let v: serde_json::Value = serde_json::from_slice(&show.stdout).expect("mail show is JSON");
        assert_eq!(v["uid"].as_i64(), Some(uid as i64), "{name}");
        let shown = w.home.run(&["mail", "show", &id.to_string(), "--raw"]);
        assert!(shown.status.success(), "mail show --raw {id} ({name}): {}", stderr(&shown));
        let server_raw = &server.iter().find(|m| m.0 == uid).unwrap().1;
        if let Some(d) = differ(server_raw, &shown.stdout) {
            panic!("mail show --raw of uid {uid} ({name}) differs from the server: {d}");
        }
        for o in [&show, &shown] {
            if stderr(o).contains("panicked") {
                cli_panics.push(format!("{name}: {}", stderr(o)));
            }
        }
    }
    assert!(cli_panics.is_empty(), "{cli_panics:?}");
    let t_cli = t0.elapsed();

    // A second run finds nothing new: no message is fetched again or lost.
    w.home.pass_time(2);
    let before = w.home.log("l-info.log").len();
    let again = w.home.run(&["run", "--once"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let second = w.home.log("l-info.log")[before..].to_string();
    assert!(!regex::Regex::new(r"received [1-9]").unwrap().is_match(&second), "{second}");
    assert_eq!(w.store().folder_messages(inbox).unwrap().len(), server.len());

    let panics = panic_lines(&w, &format!("{}{}", run.stderr, stderr(&again)));
    assert!(panics.is_empty(), "panics: {panics:#?}");
    let errors: Vec<_> = w
        .store()
        .history(&backproc_store::HistoryFilter { errors_only: true, ..Default::default() })
        .unwrap()
        .into_iter()
        .map(|h| format!("{} {} {:?}", h.process, h.status, h.detail))
        .collect();
    assert!(errors.is_empty(), "history errors: {errors:?}");
    eprintln!(
        "timing: corpus {:.1}s, APPEND + server FETCH {:.1}s, run --once {:.1}s, compare + CLI {:.1}s, total {:.1}s",
        t_gen.as_secs_f64(),
        (t_load - t_gen).as_secs_f64(),
        t_sync.as_secs_f64(),
        (t_cli - t_load - t_sync).as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    // Last, so that a memory overrun does not hide what the other checks found.
    assert!(
        run.peak_rss < bound,
        "peak RSS {:.1} MB >= 2 × {:.1} MB + 64 MB",
        run.peak_rss as f64 / MB,
        largest as f64 / MB
    );
}
