//! The README's first command (`./scripts/demo`): backproc running for real against a
//! throw-away Dovecot and smtp-sink on loopback, as cron would start it.
//!
//! Starts the servers with a few hundred generated messages, makes a demo home with a
//! config.inc enabling sync and outbox, adds a user, an account and an outgoing message,
//! starts the master, waits until the mail is in and the message is sent, prints what an
//! administrator would look at, and stops everything it started.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backproc_testkit::{Dovecot, SinkOptions, SmtpSink, mailgen};

fn backproc() -> PathBuf {
    // the binary next to this example (target/<profile>/backproc)
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("backproc")
}

fn run(home: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut c = Command::new(backproc())
        .arg("--home")
        .arg(home)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run backproc");
    if let Some(s) = stdin {
        c.stdin.take().expect("stdin").write_all(s.as_bytes()).expect("write stdin");
    }
    let out = c.wait_with_output().expect("wait");
    if !out.status.success() {
        panic!("backproc {args:?} failed");
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn section(title: &str) {
    println!("\n==== {title} ====");
}

fn main() {
    let messages: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(300);
    let started = Instant::now();
    section("starting a private Dovecot and smtp-sink on loopback");
    let dovecot = Dovecot::start().expect("start dovecot");
    dovecot.add_user("demo", "demo-password").expect("add user");
    let folders = ["INBOX", "Archive", "Projects", "Входящие"];
    let msgs = mailgen::mailbox(2026, messages);
    let per = msgs.len() / folders.len();
    for (i, f) in folders.iter().enumerate() {
        if *f != "INBOX" {
            dovecot.create_folder("demo", "demo-password", f).expect("create folder");
        }
        let end = if i + 1 == folders.len() { msgs.len() } else { (i + 1) * per };
        dovecot.populate("demo", "demo-password", f, &msgs[i * per..end]).expect("populate");
    }
    let sink = SmtpSink::start(SinkOptions::default()).expect("start smtp-sink");
    println!(
        "dovecot on 127.0.0.1:{} with {} messages in {} folders; smtp-sink on 127.0.0.1:{}",
        dovecot.imap_port(),
        msgs.len(),
        folders.len(),
        sink.port()
    );

    let home = tempfile::Builder::new().prefix("backproc-demo-").tempdir().expect("temp home");
    let h = home.path();
    std::fs::write(
        h.join("config.inc"),
        "<?php\n// demo settings\ndefine('EMAIL_BACKGROUND_SYNC_ENABLED', TRUE);\ndefine('EMAIL_OUTBOX_ENABLED', TRUE);\ndefine('BG_MAX_THREADS', 4);\ndefine('BG_TICK_INTERVAL', 1);\ndefine('EMAIL_BG_SEND_POLL_INTERVAL', 1);\n",
    )
    .expect("write config.inc");
    section(&format!("home {}", h.display()));
    run(h, &["user", "add", "demo"], None);
    let port = dovecot.imap_port().to_string();
    let sport = sink.port().to_string();
    let account = run(
        h,
        &[
            "account",
            "add",
            "--owner",
            "demo",
            "--email",
            "demo@backproc.test",
            "--imap-host",
            "127.0.0.1",
            "--imap-port",
            &port,
            "--imap-security",
            "none",
            "--login",
            "demo",
            "--password-stdin",
            "--smtp-host",
            "127.0.0.1",
            "--smtp-port",
            &sport,
            "--smtp-security",
            "none",
        ],
        Some("demo-password"),
    );
    let account = account.trim().to_owned();
    println!("account {account} added");
    let entry = run(
        h,
        &[
            "outbox",
            "add",
            "--account",
            &account,
            "--to",
            "friend@example.test",
            "--subject",
            "Hello from backproc",
            "--body",
            "It works.",
        ],
        None,
    );
    println!("outbox entry {} queued", entry.trim());

    section("backproc run (as cron starts it)");
    let mut master =
        Command::new(backproc()).arg("--home").arg(h).arg("run").stdin(Stdio::null()).spawn().expect("start master");
    // a second start, as cron five minutes later, once the first is the master: exits at once
    let up = Instant::now();
    while !run(h, &["status"], None).starts_with("master: running") && up.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    run(h, &["run"], None);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = run(h, &["status", "--json"], None);
        let v: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
        let queue = v["queues"]["receive_primary"].as_i64().unwrap_or(-1);
        let sent = v["queues"]["outbox"]["SUCCESS"].as_i64().unwrap_or(0);
        let folders_synced = run(h, &["folder", "list", "--json"], None);
        let fl: serde_json::Value = serde_json::from_str(&folders_synced).unwrap_or_default();
        let stored: i64 = fl.as_array().map(|a| a.iter().filter_map(|f| f["messages"].as_i64()).sum()).unwrap_or(0);
        if queue == 0 && sent >= 1 && stored >= msgs.len() as i64 {
            println!(
                "all {stored} messages are in the store and the message is sent ({:.1}s)",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        if Instant::now() > deadline {
            eprintln!("timed out waiting for the engine");
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    section("backproc status");
    print!("{}", run(h, &["status"], None));
    section("backproc history --period 24h (newest 15)");
    for l in run(h, &["history", "--period", "24h"], None).lines().take(16) {
        println!("{l}");
    }
    section("tail logs/l-info.log");
    let log = std::fs::read_to_string(h.join("logs/l-info.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    for l in &lines[lines.len().saturating_sub(12)..] {
        println!("{l}");
    }
    section("backproc folder list");
    print!("{}", run(h, &["folder", "list"], None));
    section("backproc mail list (newest 8)");
    print!("{}", run(h, &["mail", "list", "--account", &account, "--limit", "8"], None));
    section("backproc outbox show");
    print!("{}", run(h, &["outbox", "show", entry.trim()], None));

    section("backproc stop");
    print!("{}", run(h, &["stop"], None));
    let _ = master.wait();
    println!(
        "\ndemo finished in {:.1}s; the servers and the demo home are removed now",
        started.elapsed().as_secs_f64()
    );
}
