//! Hostile input at every edge (issue 11, item 7): CRLF injection, quotes, SQL, NUL bytes, IMAP
//! syntax, very long and non-UTF-8 strings pushed through CLI arguments, outbox fields, folder
//! names on the server and config.inc values. Asserted: 0 extra headers in the SMTP DATA the
//! server received, 0 extra IMAP commands in the proxy's capture of what the engine sent, the
//! SQLite schema unchanged, a clear error where input is refused, no panic anywhere, and
//! accepted input round-trips intact.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Output};

use crate::mailworld::*;
use crate::util::*;
use backproc_testkit::hostile::RawSession;
use backproc_testkit::{Dovecot, FaultProxy, PySmtp, mutf7_encode};

/// Strings an attacker would try. None holds a NUL (argv cannot carry one: NULs are tested
/// through files and config.inc) or exceeds Linux's 128 KiB limit for one argument.
fn hostile_strings() -> Vec<String> {
    vec![
        "a\r\nBcc: evil@x.test".into(),
        "x\r\n.\r\nMAIL FROM:<e@x>".into(),
        "it's \"quoted\" `back`".into(),
        "'; DROP TABLE messages; --".into(),
        "x\r\nA1 DELETE INBOX".into(),
        "{5}\r\n".into(),
        "* )".into(),
        "\u{1b}[31mred\u{7}".into(),
        "b".repeat(100_000),
    ]
}

/// Short label of a hostile string for messages.
/// A client's command stream with each literal's bytes replaced by `<literal>`: what is left
/// is the commands' own lines.
fn without_literals(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(end) = rest.find("\r\n") {
        let line = &rest[..end];
        out.push_str(line);
        out.push_str("\r\n");
        rest = &rest[end + 2..];
        let size = line
            .strip_suffix('}')
            .and_then(|l| l.rsplit_once('{'))
            .and_then(|(_, n)| n.trim_end_matches('+').parse::<usize>().ok());
        if let Some(n) = size {
            let n = n.min(rest.len());
            let cut = (0..=n).rev().find(|&i| rest.is_char_boundary(i)).unwrap_or(0);
            out.truncate(out.len() - 2);
            out.push_str("<literal>");
            rest = &rest[cut..];
        }
    }
    out.push_str(rest);
    out
}

fn label(s: &str) -> String {
    let short: String = s.chars().take(40).collect();
    format!("{short:?}{}", if s.len() > 40 { format!("…({} bytes)", s.len()) } else { String::new() })
}

/// `SELECT type, name, sql FROM sqlite_master` of the home's store, through the sqlite3 shell
/// (read-only; the store crate keeps its connection private).
fn schema(h: &Home) -> String {
    let o = Command::new("sqlite3")
        .arg("-readonly")
        .arg(h.file("data/backproc.sqlite"))
        .arg("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
        .output()
        .expect("cannot run sqlite3: install the Debian package sqlite3");
    assert!(o.status.success(), "sqlite3: {}", stderr(&o));
    let s = stdout(&o);
    for table in ["messages", "message_bodies", "outbox", "users", "accounts", "folders", "internal_messages"] {
        assert!(s.contains(&format!("table|{table}|")), "table {table} missing from the schema:\n{s}");
    }
    s
}

/// Runs `backproc ARGS` and checks it ended cleanly: a normal exit with 0, 1, 2 (usage) or 78
/// (config), never a panic or a signal; a refusal says why on stderr.
fn run_os(h: &Home, args: &[OsString], stdin: &[u8]) -> Output {
    let o = h.run_stdin(args, stdin);
    check_clean(&o, args);
    o
}

fn check_clean(o: &Output, args: &[OsString]) {
    let what: Vec<String> = args.iter().map(|a| label(&a.to_string_lossy())).collect();
    let err = stderr(o);
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "panic for {what:?}:\n{err}");
    let code = o.status.code().unwrap_or_else(|| panic!("killed by a signal for {what:?}: {:?}", o.status));
    assert!([0, 1, 2, 78].contains(&code), "exit {code} for {what:?}:\n{err}");
    if code != 0 {
        let first = err.lines().next().unwrap_or("");
        assert!(
            first.starts_with("backproc:") || first.starts_with("error:"),
            "refusal without a clear message for {what:?}: {err:?}"
        );
    }
}

fn run(h: &Home, args: &[&str]) -> Output {
    let v: Vec<OsString> = args.iter().map(OsString::from).collect();
    run_os(h, &v, b"")
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn no_panic_logged(h: &Home) {
    let panics: Vec<String> = h
        .log("l-threading-error.txt")
        .lines()
        .chain(h.log("l-info.log").lines())
        .filter(|l| l.to_lowercase().contains("panic"))
        .map(String::from)
        .collect();
    assert!(panics.is_empty(), "{panics:#?}");
}

// ---------------------------------------------------------------------------------------------
// CLI arguments

#[test]
fn hostile_cli_arguments_are_stored_intact_or_refused_clearly() {
    let h = Home::with_config("<?php\n");
    assert!(run(&h, &["user", "add", "alice"]).status.success());
    assert!(run(&h, &["user", "add", "bob"]).status.success());
    let o = run_os(
        &h,
        &os(&[
            "account",
            "add",
            "--owner",
            "alice",
            "--email",
            "alice@backproc.test",
            "--imap-host",
            "127.0.0.1",
            "--imap-port",
            "1",
            "--imap-security",
            "none",
            "--login",
            "alice",
            "--password-stdin",
        ]),
        b"pw",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let acct = stdout(&o).trim().to_string();
    let before = schema(&h);

    for s in hostile_strings() {
        let s = s.as_str();
        let l = label(s);
        // users: stored as given, listed back exactly
        let o = run(&h, &["user", "add", s]);
        if o.status.success() {
            let users: serde_json::Value =
                serde_json::from_slice(&run(&h, &["user", "list", "--json"]).stdout).unwrap();
            assert!(users.as_array().unwrap().iter().any(|u| u["login"] == s), "user {l} not listed back: {users}");
        }
        for args in [
            vec!["user", "login", s],
            vec!["user", "logout", s],
            vec!["internal", "poll-interval", "--user", s],
            vec!["internal", "list", "--user", s],
            vec!["internal", "check", "--user", s],
            vec!["mail", "list", "--account", &acct, "--folder", s],
            vec!["mail", "move", "1", "--to", s],
            vec!["outbox", "list", "--state", s],
            vec!["history", "--period", s],
            vec!["internal", "send", "--from", s, "--to", "bob", "--subject", "x", "--body", "y"],
            vec!["internal", "send", "--from", "alice", "--to", s, "--subject", "x", "--body", "y"],
        ] {
            run(&h, &args);
        }
        // account fields: stored as given or refused; `account list` shows them back
        for (flag, base) in
            [("--owner", "alice"), ("--email", "e@x.test"), ("--login", "l"), ("--imap-host", "127.0.0.1")]
        {
            let mut args = vec![
                "account",
                "add",
                "--owner",
                "alice",
                "--email",
                "e@x.test",
                "--imap-host",
                "127.0.0.1",
                "--imap-security",
                "none",
                "--login",
                "l",
                "--password-stdin",
            ];
            let i = args.iter().position(|a| *a == flag).unwrap() + 1;
            assert_eq!(args[i], base);
            args[i] = s;
            let o = run_os(&h, &os(&args), b"pw");
            if o.status.success() {
                let id: i64 = stdout(&o).trim().parse().unwrap();
                let list: serde_json::Value =
                    serde_json::from_slice(&run(&h, &["account", "list", "--json"]).stdout).unwrap();
                let a = list.as_array().unwrap().iter().find(|a| a["id"] == id).unwrap();
                let key = &flag[2..].replace('-', "_");
                assert_eq!(a[key], s, "account {flag} {l} not shown back");
                assert!(run(&h, &["account", "remove", &id.to_string()]).status.success());
            }
        }
        // outbox: an address that is not one, or a subject of more than one line, is refused
        // before anything is queued, and the message says which
        for (flag, what) in [("--to", "To"), ("--cc", "Cc"), ("--bcc", "Bcc")] {
            let o = run(&h, &["outbox", "add", "--account", &acct, flag, s, "--subject", "x", "--body", "y"]);
            assert_eq!(o.status.code(), Some(1), "{flag} {l} accepted");
            assert!(stderr(&o).contains(&format!("invalid {what} address")), "{flag} {l}: {}", stderr(&o));
        }
        let o = run(&h, &["outbox", "add", "--account", &acct, "--to", "b@x.test", "--subject", s, "--body", s]);
        if s.contains(['\r', '\n']) {
            assert_eq!(o.status.code(), Some(1), "subject {l} accepted");
            assert!(stderr(&o).contains("subject must be one line"), "{}", stderr(&o));
        } else if s.split(' ').any(|w| w.len() > 998) {
            // it could not be sent: no header line holds it
            assert_eq!(o.status.code(), Some(1), "subject {l} accepted");
            assert!(stderr(&o).contains("the subject has a word of"), "{}", stderr(&o));
        } else {
            assert!(o.status.success(), "subject {l}: {}", stderr(&o));
        }
        // internal messages: any one-line or multi-line text is data, kept exactly
        let o = run(&h, &["internal", "send", "--from", "alice", "--to", "bob", "--subject", s, "--body", s]);
        if o.status.success() {
            let id: i64 = stdout(&o).trim().parse().unwrap();
            let inbox: serde_json::Value =
                serde_json::from_slice(&run(&h, &["internal", "list", "--user", "bob", "--json"]).stdout).unwrap();
            let m = inbox["messages"].as_array().unwrap().iter().find(|m| m["id"] == id).expect("sent message");
            assert_eq!(m["subject"], s, "internal subject {l}");
            assert_eq!(m["body"], s, "internal body {l}");
        } else {
            assert!(stderr(&o).contains("subject"), "internal subject {l} refused unclearly: {}", stderr(&o));
        }
    }

    // Non-UTF-8 bytes where a text argument is expected: a usage error (exit 2) saying so.
    let bad = OsStr::from_bytes(b"\xff\xfe bad").to_owned();
    for args in [
        vec![OsString::from("user"), "add".into(), bad.clone()],
        os(&["outbox", "add", "--account", &acct, "--to", "b@x.test", "--body", "y", "--subject"])
            .into_iter()
            .chain([bad.clone()])
            .collect(),
        os(&["internal", "send", "--from", "alice", "--to", "bob", "--body", "y", "--subject"])
            .into_iter()
            .chain([bad.clone()])
            .collect(),
        os(&["mail", "list", "--account", &acct, "--folder"]).into_iter().chain([bad.clone()]).collect(),
    ] {
        let o = run_os(&h, &args, b"");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("invalid UTF-8"), "{}", stderr(&o));
    }
    // A non-UTF-8 *path* is a valid path: a body file under such a name is read.
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join(OsStr::from_bytes(b"body-\xff.txt"));
    std::fs::write(&body, "from a non-UTF-8 file name").unwrap();
    let mut args = os(&["internal", "send", "--from", "alice", "--to", "bob", "--subject", "path", "--body-file"]);
    args.push(body.into_os_string());
    let o = run_os(&h, &args, b"");
    assert!(o.status.success(), "{}", stderr(&o));
    // NUL bytes reach the CLI only through files: a body file with NULs and invalid UTF-8 is
    // refused as not UTF-8; one with NULs in valid UTF-8 is kept exactly.
    let nul = dir.path().join("nul.txt");
    std::fs::write(&nul, b"nul\0byte \xff").unwrap();
    let mut args = os(&["internal", "send", "--from", "alice", "--to", "bob", "--subject", "nul", "--body-file"]);
    args.push(nul.clone().into_os_string());
    let o = run_os(&h, &args, b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not UTF-8"), "{}", stderr(&o));
    std::fs::write(&nul, b"nul\0byte").unwrap();
    let o = run_os(&h, &args, b"");
    if o.status.success() {
        let id: i64 = stdout(&o).trim().parse().unwrap();
        let inbox: serde_json::Value =
            serde_json::from_slice(&run(&h, &["internal", "list", "--user", "bob", "--json"]).stdout).unwrap();
        let m = inbox["messages"].as_array().unwrap().iter().find(|m| m["id"] == id).unwrap();
        assert_eq!(m["body"], "nul\0byte");
    } else {
        assert!(stderr(&o).contains("NUL"), "{}", stderr(&o));
    }

    assert_eq!(schema(&h), before, "the schema changed");
    no_panic_logged(&h);
}

// ---------------------------------------------------------------------------------------------
// Outbox fields → SMTP

/// Header field names of a message (folded lines joined), in order, and the header values.
fn header_fields(data: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push_str(line);
            }
            continue;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        out.push((name.to_string(), value.strip_prefix(' ').unwrap_or(value).to_string()));
    }
    out
}

/// SMTP client commands in the proxy's capture (DATA contents skipped), and the DATA sections.
fn smtp_commands(client: &[u8]) -> (Vec<String>, Vec<Vec<u8>>) {
    let (mut cmds, mut datas) = (Vec::new(), Vec::new());
    let mut rest = client;
    while !rest.is_empty() {
        let end = rest.windows(2).position(|w| w == b"\r\n").map_or(rest.len(), |i| i + 2);
        let line = String::from_utf8_lossy(&rest[..end]).trim_end().to_string();
        rest = &rest[end..];
        if line.eq_ignore_ascii_case("DATA") {
            let stop = rest.windows(5).position(|w| w == b"\r\n.\r\n").map(|i| i + 2);
            let stop = match stop {
                Some(i) => i,
                None if rest.starts_with(b".\r\n") => 0,
                None => rest.len(),
            };
            datas.push(rest[..stop].to_vec());
            rest = &rest[(stop + 3).min(rest.len())..];
        }
        cmds.push(line);
    }
    (cmds, datas)
}

#[test]
fn hostile_outbox_fields_add_no_header_and_no_smtp_command() {
    let py = PySmtp::start().expect("aiosmtpd");
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", py.port()).parse().unwrap()).unwrap();
    let (h, acct) = home_with_smtp(SEND, proxy.port(), 1);
    let acct = acct.to_string();
    let before = schema(&h);
    let dir = tempfile::tempdir().unwrap();

    // entry id → (subject expected verbatim or None, envelope recipients, header names expected)
    let mut want: BTreeMap<i64, (Option<String>, Vec<&str>)> = BTreeMap::new();
    let queue = |args: Vec<OsString>| -> i64 {
        let mut all = os(&["outbox", "add", "--account", &acct]);
        all.extend(args);
        let o = run_os(&h, &all, b"");
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o).trim().parse().unwrap()
    };
    let subjects = hostile_strings()
        .into_iter()
        .filter(|s| !s.contains(['\r', '\n']) && s.len() < 900)
        .chain(["word \"q\" ".repeat(10_000), "é".repeat(50_000)]);
    for s in subjects {
        let id = queue(os(&[
            "--to",
            "ok@x.test",
            "--cc",
            "cc@x.test",
            "--bcc",
            "hidden@x.test",
            "--subject",
            &s,
            "--body",
            "x\r\n.\r\nMAIL FROM:<e@x>\r\nRCPT TO:<evil@x.test>\r\n.\r\nA1 DELETE INBOX\r\n",
        ]));
        // a printable ASCII subject is sent as it is (folded at spaces); others are encoded
        let verbatim = s.chars().all(|c| (' '..='~').contains(&c));
        want.insert(id, (verbatim.then_some(s), vec!["ok@x.test", "cc@x.test", "hidden@x.test"]));
    }
    // a 1 MB body file with NUL bytes, bare LFs and lines that end DATA on lenient servers
    let body = dir.path().join("body.txt");
    let mut b = String::from("start\n.\nMAIL FROM:<e@x>\r\n\0\0\r.\r\n.\r\nRCPT TO:<evil@x.test>\n");
    while b.len() < 1 << 20 {
        b.push_str("filler line with \0 and \"quotes\" and '; DROP TABLE messages; --\r\n");
    }
    std::fs::write(&body, &b).unwrap();
    let mut args = os(&["--to", "ok@x.test", "--subject", "big body", "--body-file"]);
    args.push(body.into_os_string());
    want.insert(queue(args), (Some("big body".into()), vec!["ok@x.test"]));
    // attachment file names with CRLF, quotes and non-UTF-8 bytes become one header parameter
    let mut args = os(&["--to", "ok@x.test", "--subject", "attachments", "--body", "see attached"]);
    for name in [&b"a\r\nBcc: evil@x.test.txt"[..], b"q\"uote'; DROP TABLE messages; --", b"bad-\xff\xfe.bin"] {
        let p = dir.path().join(OsStr::from_bytes(name));
        std::fs::write(&p, b"attached\r\n.\r\nMAIL FROM:<e@x>\r\n").unwrap();
        args.push("--attach".into());
        args.push(p.into_os_string());
    }
    want.insert(queue(args), (Some("attachments".into()), vec!["ok@x.test"]));
    // a ready .eml with a Bcc header (dropped) and SMTP commands in its body
    let eml = dir.path().join("m.eml");
    std::fs::write(
        &eml,
        "From: carol@backproc.test\r\nTo: ok@x.test\r\nBcc: evil@x.test\r\nSubject: from eml\r\n\r\nx\r\n.\r\nMAIL FROM:<e@x>\r\n",
    )
    .unwrap();
    let mut args = os(&["--to", "ok@x.test", "--eml"]);
    args.push(eml.into_os_string());
    want.insert(queue(args), (Some("from eml".into()), vec!["ok@x.test"]));
    // what application code may INSERT directly: raw bytes with bare CR/LF dot lines, and a
    // recipient list holding an injection attempt (refused per recipient, never sent)
    let mut store = backproc_store::Store::open(&h.file("data/backproc.sqlite")).unwrap();
    let raw = b"From: carol@backproc.test\r\nTo: ok@x.test\r\nSubject: direct\r\nMessage-ID: <direct@x.test>\r\n\r\n\
x\n.\nMAIL FROM:<e1@x>\n.\r\nMAIL FROM:<e2@x>\r.\r\nMAIL FROM:<e3@x>\r\n.\rMAIL FROM:<e4@x>\r\nend\r\n";
    let rcpts = vec!["ok@x.test".to_string(), "evil@x.test>\r\nRCPT TO:<evil2@x.test".to_string()];
    let direct =
        store.outbox_add(acct.parse().unwrap(), "direct@x.test", "carol@backproc.test", &rcpts, raw, false, 0).unwrap();
    drop(store);
    want.insert(direct, (Some("direct".into()), vec!["ok@x.test"]));

    let o = run(&h, &["run", "--once"]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), h.log("l-info.log"));
    no_panic_logged(&h);

    for (id, (_, rcpts)) in &want {
        let r: serde_json::Value =
            serde_json::from_slice(&run(&h, &["outbox", "show", &id.to_string()]).stdout).unwrap();
        assert_eq!(r["state"], "SUCCESS", "entry {id}: {r}");
        assert_eq!(r["info"]["accepted"], serde_json::json!(rcpts), "entry {id}");
    }
    let r: serde_json::Value =
        serde_json::from_slice(&run(&h, &["outbox", "show", &direct.to_string()]).stdout).unwrap();
    assert_eq!(r["info"]["rejected"], serde_json::json!([rcpts[1]]), "{r}");

    // One transaction per entry, from the account, to exactly the intended recipients.
    let got = py.messages().unwrap();
    assert_eq!(
        got.len(),
        want.len(),
        "transactions at the server: {:?}",
        got.iter().map(|m| &m.rcpt_tos).collect::<Vec<_>>()
    );
    let allowed: BTreeSet<&str> = [
        "From",
        "To",
        "Cc",
        "Subject",
        "Message-ID",
        "Date",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    ]
    .into();
    for m in &got {
        assert_eq!(m.mail_from, "carol@backproc.test");
        let fields = header_fields(&m.data);
        let names: Vec<&str> = fields.iter().map(|f| f.0.as_str()).collect();
        for n in &names {
            assert!(allowed.contains(n), "unexpected header {n:?} in {names:?}");
        }
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "a header twice: {names:?}");
        let subject = &fields.iter().find(|f| f.0 == "Subject").expect("Subject").1;
        let matches = want.values().any(|(v, r)| {
            v.as_deref().is_none_or(|v| v == subject) && m.rcpt_tos.iter().map(String::as_str).eq(r.iter().copied())
        });
        assert!(matches, "no queued entry matches subject {} to {:?}", label(subject), m.rcpt_tos);
        let text = String::from_utf8_lossy(&m.data).to_lowercase();
        assert!(!text.contains("\r\nbcc:") && !text.starts_with("bcc:"), "a Bcc header was sent");
    }
    // Every verbatim subject arrived exactly once and intact.
    for (id, (verbatim, _)) in &want {
        if let Some(s) = verbatim {
            let n = got.iter().filter(|m| header_fields(&m.data).iter().any(|f| f.0 == "Subject" && &f.1 == s)).count();
            assert_eq!(n, 1, "subject {} of entry {id} arrived {n} times", label(s));
        }
    }
    assert!(!got.iter().any(|m| m.rcpt_tos.iter().any(|r| r.contains("evil"))), "an injected recipient got mail");

    // What the engine wrote on the wire: only SMTP verbs, one MAIL per entry, and no line in
    // any DATA section that a lenient server would take for its end (a dot after a bare CR or
    // LF: the "SMTP smuggling" pattern).
    let (cmds, datas) = smtp_commands(&proxy.captured_client());
    let verbs: BTreeSet<String> =
        cmds.iter().map(|c| c.split([' ', ':']).next().unwrap_or("").to_ascii_uppercase()).collect();
    let ok_verbs: BTreeSet<String> = ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "QUIT", "NOOP", "AUTH"]
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert!(
        verbs.is_subset(&ok_verbs),
        "unexpected SMTP commands: {:?}",
        verbs.difference(&ok_verbs).collect::<Vec<_>>()
    );
    assert_eq!(
        cmds.iter().filter(|c| c.to_ascii_uppercase().starts_with("MAIL FROM")).count(),
        want.len(),
        "{cmds:#?}"
    );
    assert!(cmds.iter().all(|c| !c.contains("e@x") && !c.contains("evil")), "{cmds:#?}");
    let mut smuggled = Vec::new();
    for (i, d) in datas.iter().enumerate() {
        for (j, w) in d.windows(2).enumerate() {
            // a dot right after a line end of any kind, not doubled
            if w[1] == b'.' && (w[0] == b'\n' || w[0] == b'\r') && d.get(j + 2) != Some(&b'.') {
                let ctx = String::from_utf8_lossy(&d[j.saturating_sub(10)..(j + 20).min(d.len())]).into_owned();
                smuggled.push(format!("DATA #{i} at byte {j}: {ctx:?}"));
            }
        }
    }
    assert!(smuggled.is_empty(), "end-of-data look-alikes sent inside DATA:\n{}", smuggled.join("\n"));

    assert_eq!(schema(&h), before, "the schema changed");
}

// ---------------------------------------------------------------------------------------------
// Folder names on the server, and hostile logins → IMAP

#[test]
fn hostile_folder_names_and_logins_add_no_imap_command() {
    let dovecot = Dovecot::start().expect("start dovecot");
    let (user, password) = ("alice", "s3cr3t-Pa55");
    dovecot.add_user(user, password).unwrap();
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", dovecot.imap_port()).parse().unwrap()).unwrap();
    let h = Home::with_config(EVERY_SECOND);
    let account = add_account(&h, &dovecot, user, password, "none", proxy.port(), &[]);

    // Folders created with their names as literals, so any byte reaches the server; it may
    // refuse some (CR, LF, NUL, too long): those are recorded, not required.
    let candidates: Vec<String> = vec![
        "it's \"quoted\" `back`".into(),
        "back\\slash\\\"".into(),
        "a & b &- &&".into(),
        "'; DROP TABLE messages; --".into(),
        "x A1 DELETE INBOX".into(),
        "{5}".into(),
        "{5+}".into(),
        "* )".into(),
        "( ) [ ] < >".into(),
        "%wild*".into(),
        "Ünïcødé 😀 \"q\"".into(),
        "L".repeat(200),
        "tab\tname".into(),
        "cr\rname".into(),
        "x\r\nA1 DELETE INBOX".into(),
        "nul\0name".into(),
        "M".repeat(5000),
    ];
    let mut raw = RawSession::login(dovecot.imap_port(), user, password).unwrap();
    let mut created = Vec::new();
    let mut refused = Vec::new();
    for name in &candidates {
        let enc = mutf7_encode(name);
        match raw.create(enc.as_bytes()) {
            Ok(()) => {
                let msg = format!(
                    "From: f@x.test\r\nSubject: in {}\r\nMessage-ID: <{}@x.test>\r\n\r\nbody\r\n",
                    label(name),
                    created.len()
                );
                raw.append(&enc, msg.as_bytes()).unwrap_or_else(|e| panic!("append to {}: {e}", label(name)));
                created.push(name.clone());
            }
            Err(e) => refused.push((label(name), e.to_string())),
        }
    }
    raw.append("INBOX", b"From: f@x.test\r\nSubject: to move\r\nMessage-ID: <move@x.test>\r\n\r\nbody\r\n").unwrap();
    raw.logout();
    eprintln!("folder names the server refused: {refused:#?}");
    for must in
        ["it's \"quoted\" `back`", "a & b &- &&", "'; DROP TABLE messages; --", "x A1 DELETE INBOX", "{5}", "* )"]
    {
        assert!(created.iter().any(|c| c == must), "the server refused {must:?}: {refused:?}");
    }

    // Accounts whose login or password would inject a command if sent unquoted.
    let port = proxy.port().to_string();
    let hostile_account = |login: &str, pw: &str| -> Option<i64> {
        let args = os(&[
            "account",
            "add",
            "--owner",
            "owner-alice",
            "--email",
            "alice@backproc.test",
            "--imap-host",
            "127.0.0.1",
            "--imap-port",
            &port,
            "--imap-security",
            "none",
            "--login",
            login,
            "--password-stdin",
        ]);
        let o = run_os(&h, &args, pw.as_bytes());
        o.status.success().then(|| stdout(&o).trim().parse().unwrap())
    };
    // The store may refuse a login with control characters at once (a clear error, checked by
    // run_os); a password is free text and reaches the IMAP client.
    let bad_login = hostile_account("alice\r\nA1 DELETE INBOX", password);
    let bad_password = hostile_account(user, "pw\r\nA1 DELETE INBOX");
    assert!(bad_password.is_some(), "a password with CRLF inside is accepted (only a trailing newline is cut)");
    let before = schema(&h);

    let o = h.run(&["run", "--once"]);
    check_clean(&o, &os(&["run", "--once"]));
    assert!(o.status.success(), "{}\n{}", stderr(&o), h.log("l-info.log"));
    let store = backproc_store::Store::open(&h.file("data/backproc.sqlite")).unwrap();
    let folders: BTreeMap<String, i64> =
        store.folders(Some(account)).unwrap().into_iter().map(|f| (f.display_name, f.id)).collect();
    // Collected and asserted at the end, so the IMAP capture is checked whatever happens here.
    let mut problems = Vec::new();
    for name in &created {
        match folders.get(name) {
            Some(id) => {
                let n = store.folder_messages(*id).unwrap().len();
                if n != 1 {
                    problems.push(format!("folder {}: {n} messages stored, 1 on the server", label(name)));
                }
            }
            None => {
                // what the store holds instead: the name as IMAP quoted it, and its messages
                let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
                let n = folders.get(&escaped).map(|id| store.folder_messages(*id).unwrap().len());
                problems.push(format!(
                    "folder {} is not in the store under its name (stored as {}: {n:?} messages of 1)",
                    label(name),
                    label(&escaped)
                ))
            }
        }
    }
    if !problems.is_empty() {
        problems.push(format!("store folders: {:?}", folders.keys().map(|k| label(k)).collect::<Vec<_>>()));
    }
    // the hostile logins failed with an error, not a command
    let accounts: serde_json::Value = serde_json::from_slice(&h.run(&["account", "list", "--json"]).stdout).unwrap();
    for id in [bad_login, bad_password].into_iter().flatten() {
        let a = accounts.as_array().unwrap().iter().find(|a| a["id"] == id).unwrap();
        let errors = store
            .history(&backproc_store::HistoryFilter { errors_only: true, account_id: Some(id), ..Default::default() })
            .unwrap();
        let said = a["last_error"].as_str().is_some_and(|e| !e.is_empty()) || !errors.is_empty();
        assert!(said, "account {id} failed without an error recorded: {a}");
        assert!(store.folders(Some(id)).unwrap().is_empty(), "account {id} synced folders");
    }

    // Move a message into a hostile-named folder: UID MOVE with the name quoted.
    let inbox = folders["INBOX"];
    let uid = store.folder_messages(inbox).unwrap()[0].0;
    let msg_id = store.message_id_by_uid(inbox, uid).unwrap();
    let target = "'; DROP TABLE messages; --";
    let o = h.run(&["mail", "move", &msg_id.to_string(), "--to", target]);
    assert!(o.status.success(), "{}", stderr(&o));
    h.pass_time(2);
    let o = h.run(&["run", "--once"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut raw = RawSession::login(dovecot.imap_port(), user, password).unwrap();
    assert_eq!(raw.fetch_all(&mutf7_encode(target)).unwrap().len(), 2, "the moved message is in {target:?}");
    assert!(raw.fetch_all("INBOX").unwrap().is_empty(), "INBOX still holds the moved message");
    raw.logout();

    // Every line the engine sent is a tagged command of its own, and none is injected text.
    let client = proxy.captured_client();
    let text = String::from_utf8_lossy(&client);
    let tag = regex::Regex::new(r"^[A-Za-z]+[0-9]+$").unwrap();
    let ok_verbs: BTreeSet<&str> = [
        "CAPABILITY",
        "LOGIN",
        "AUTHENTICATE",
        "ENABLE",
        "ID",
        "LIST",
        "LSUB",
        "NAMESPACE",
        "STATUS",
        "SELECT",
        "EXAMINE",
        "UID",
        "NOOP",
        "CLOSE",
        "UNSELECT",
        "EXPUNGE",
        "LOGOUT",
    ]
    .into();
    let mut bad = Vec::new();
    let mut n = 0;
    // A literal's bytes are data, not lines: a login with CR LF in it goes as one.
    let text = without_literals(&text);
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        n += 1;
        let mut words = line.split(' ');
        let (t, verb) = (words.next().unwrap_or(""), words.next().unwrap_or("").to_ascii_uppercase());
        if !tag.is_match(t) || !ok_verbs.contains(verb.as_str()) {
            bad.push(label(line));
        }
        if line.starts_with("A1 ") || line.contains("DELETE INBOX") && !line.contains("\"x A1 DELETE INBOX\"") {
            bad.push(format!("injected: {}", label(line)));
        }
    }
    assert!(n > 10, "the proxy saw the engine's commands: {n} lines");
    assert!(bad.is_empty(), "lines that are not one of the engine's commands:\n{}", bad.join("\n"));
    let mut raw = RawSession::login(dovecot.imap_port(), user, password).unwrap();
    assert!(raw.fetch_all("INBOX").is_ok(), "INBOX must still exist");
    raw.logout();

    assert_eq!(schema(&h), before, "the schema changed");
    no_panic_logged(&h);
    assert!(problems.is_empty(), "hostile folder names did not round-trip:\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// config.inc values

#[test]
fn hostile_config_values_are_refused_with_their_line_or_kept_intact() {
    let h = Home::new();
    assert!(run(&h, &["user", "add", "alice"]).status.success());
    let before = schema(&h);
    let big = "x".repeat(1 << 20);
    let refused: Vec<(Vec<u8>, usize)> = vec![
        (b"<?php\ndefine('BG_TICK_INTERVAL', \"'; DROP TABLE messages; --\");\n".to_vec(), 2),
        (b"<?php\n\ndefine('EMAIL_BACKGROUND_SYNC_ENABLED', \"x\r\nA1 DELETE INBOX\");\n".to_vec(), 3),
        (b"<?php\ndefine('BG_LOG_MAX_SIZE', 1);\ndefine('BG_TICK_INTERVAL', '{5}\r\n');\n".to_vec(), 2),
        (b"<?php\ndefine('BG_TICK_INTERVAL', 'nul\0byte');\n".to_vec(), 2),
        (b"<?php\ndefine('BG_TICK_INTERVAL', 99999999999999999999999999999999);\n".to_vec(), 2),
        (format!("<?php\ndefine('BG_TICK_INTERVAL', '{big}');\n").into_bytes(), 2),
        (b"<?php\ndefine('EMAIL_BG_SEND_MAX_AGE', '* )');\n".to_vec(), 2),
        (b"<?php\ndefine('BG_TICK_INTERVAL', 'unterminated);\n".to_vec(), 2),
    ];
    for (text, line) in &refused {
        std::fs::write(h.file("config.inc"), text).unwrap();
        let o = run(&h, &["config", "--json"]);
        assert_eq!(o.status.code(), Some(78), "accepted: {}", label(&String::from_utf8_lossy(text)));
        assert!(
            stderr(&o).contains(&format!("config.inc:{line}")),
            "the error names config.inc:{line}: {}",
            label(&stderr(&o))
        );
        // an invalid config starts nothing and changes nothing
        let o = run(&h, &["run", "--once"]);
        assert_eq!(o.status.code(), Some(78));
    }
    // Accepted: strings of the one string constant are kept intact, whatever they hold;
    // unknown constants with hostile names and values are someone else's and ignored.
    for value in ["it's \"q\" `b`", "'; DROP TABLE messages; --", "a\r\nA1 DELETE INBOX", "nul\0byte", &big] {
        let php = value.replace('\\', "\\\\").replace('\'', "\\'");
        let text = format!(
            "<?php\ndefine('BACKPROC_PID_LOCATION', '{php}');\ndefine(\"x\\r\\nA1 DELETE INBOX\", '{php}');\ndefine('{php}', 1);\n"
        );
        std::fs::write(h.file("config.inc"), text).unwrap();
        let o = run(&h, &["config", "--json"]);
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let pid = v.as_array().unwrap().iter().find(|e| e["name"] == "BACKPROC_PID_LOCATION").unwrap();
            assert_eq!(pid["value"], value, "BACKPROC_PID_LOCATION round trip of {}", label(value));
            assert_eq!(pid["source"], "config.inc:2");
        } else {
            assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
            assert!(stderr(&o).contains("config.inc:2"), "{}", label(&stderr(&o)));
        }
        // Starting with it either works or fails clearly (a pid directory of that name may be
        // impossible), never with a panic.
        run(&h, &["run", "--once"]);
    }
    h.write_config("<?php\n");
    assert_eq!(schema(&h), before, "the schema changed");
    no_panic_logged(&h);
}
