//! The README's first command (`./scripts/demo`): backproc running for real against a
//! throw-away Dovecot and smtp-sink on loopback, as cron would start it.
//!
//! Starts the servers with a few hundred generated messages, makes a demo home with a
//! config.inc enabling sync and outbox, adds a user, an account and an outgoing message,
//! starts the master, waits until the mail is in and the message is sent, prints what an
//! administrator would look at, and stops everything it started.
//!
//! Every wait has a bound; when one passes, the demo says what it waited for, shows the
//! master's state, its stderr and the logs' tails, stops what it started and exits with 1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use backproc_testkit::{Dovecot, SinkOptions, SmtpSink, mailgen};

fn backproc() -> PathBuf {
    // the binary next to this example (target/<profile>/backproc)
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("backproc")
}

/// A short command (not `run`): its stdout, within a minute.
fn run(home: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::{Read, Write};
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
    let mut stdout = c.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    match wait_for(&mut c, Duration::from_secs(60)) {
        Some(st) if st.success() => reader.join().unwrap_or_default(),
        Some(st) => fail(home, None, &format!("backproc {args:?} failed ({st})")),
        None => fail(home, None, &format!("backproc {args:?} did not end within 60 s")),
    }
}

/// Waits for `child` at most `limit`; None (and the child killed) if it is still running.
fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid of the process holding the master's pid lock, if one holds it (the lock, not the
/// `status` text, says a master runs).
fn lock_holder(home: &Path) -> Option<i32> {
    use nix::fcntl::{Flock, FlockArg};
    let path = home.join("pid/engine.pid");
    let file = std::fs::File::open(&path).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => None,
        Err(_) => std::fs::read_to_string(&path).ok()?.trim().parse().ok(),
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A wait that ran out: what was waited for, the master's state, its stderr and the logs'
/// tails; then the demo ends with 1 (the servers and the home are removed by their owners'
/// destructors, which `exit` would skip: hence the panic, caught in `main`).
fn fail(home: &Path, master: Option<&mut Child>, what: &str) -> ! {
    eprintln!("\ndemo failed: {what}");
    if let Some(m) = master {
        match m.try_wait() {
            Ok(Some(st)) => eprintln!("the master (pid {}) has exited: {st}", m.id()),
            _ => eprintln!("the master (pid {}) is still running; stopping it", m.id()),
        }
        let _ = m.kill();
        let _ = m.wait();
    }
    eprintln!("pid lock held by: {:?}", lock_holder(home));
    for f in ["logs/master.stderr", "logs/l-info.log", "logs/l-debug.log", "logs/l-threading-error.txt"] {
        eprintln!("---- {f} (last 20 lines) ----\n{}", tail(&home.join(f), 20));
    }
    std::panic::resume_unwind(Box::new(Failed));
}

/// The demo failed and said why (see `fail`).
struct Failed;

/// The master, killed if the demo ends before it stopped it.
struct Master(Child);

impl Drop for Master {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn section(title: &str) {
    println!("\n==== {title} ====");
}

fn main() {
    // `fail` unwinds so that the servers and the home are dropped; it has printed the why.
    std::panic::set_hook(Box::new(|info| {
        if !info.payload().is::<Failed>() {
            eprintln!("{info}");
        }
    }));
    if std::panic::catch_unwind(demo).is_err() {
        std::process::exit(1);
    }
}

fn demo() {
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
    let stderr = std::fs::File::create(h.join("logs/master.stderr")).expect("master stderr file");
    let mut guard = Master(
        Command::new(backproc())
            .arg("--home")
            .arg(h)
            .arg("run")
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start master"),
    );
    let master = &mut guard.0;
    let master_pid = master.id() as i32;
    let up = Instant::now();
    while lock_holder(h) != Some(master_pid) {
        if up.elapsed() > Duration::from_secs(20) || matches!(master.try_wait(), Ok(Some(_))) {
            fail(h, Some(master), "the first `backproc run` to take the pid lock (20 s)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("master: pid {master_pid} holds pid/engine.pid");
    // a second start, as cron five minutes later: sees the master and exits at once
    let mut second =
        Command::new(backproc()).arg("--home").arg(h).arg("run").stdin(Stdio::null()).spawn().expect("second start");
    match wait_for(&mut second, Duration::from_secs(10)) {
        Some(st) if st.success() && lock_holder(h) == Some(master_pid) => {
            println!("a second `backproc run` exited at once; pid {master_pid} is still the master")
        }
        Some(st) => fail(h, Some(master), &format!("the second start ended ({st}) but the master changed")),
        None => fail(h, Some(master), "the second `backproc run` to exit (10 s): it became a master"),
    }
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
        if Instant::now() > deadline || matches!(master.try_wait(), Ok(Some(_))) {
            fail(
                h,
                Some(master),
                &format!("the mail (120 s): {stored} of {} stored, {queue} queued, {sent} sent", msgs.len()),
            );
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
    if wait_for(master, Duration::from_secs(60)).is_none() {
        fail(h, Some(master), "the master to stop (60 s)");
    }
    println!(
        "\ndemo finished in {:.1}s; the servers and the demo home are removed now",
        started.elapsed().as_secs_f64()
    );
}
