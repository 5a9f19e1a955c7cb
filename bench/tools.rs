//! The tools under test, set up the way a user would: a backproc home made with its CLI, an
//! mbsync config for a Maildir, a plain `smtp-sink`, and how to check each one's result.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use backproc_store::Store;

pub const LOGIN: &str = "bench";
pub const PASSWORD: &str = "bench-pw";

/// The `backproc` binary next to this example (target/<profile>/backproc).
pub fn backproc_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).expect("target dir").join("backproc")
}

fn cli(home: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut c = Command::new(backproc_bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run backproc");
    if let Some(s) = stdin {
        c.stdin.take().expect("stdin").write_all(s.as_bytes()).expect("write stdin");
    }
    let out = c.wait_with_output().expect("wait for backproc");
    assert!(out.status.success(), "backproc {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// config.inc of a sync home: every interval at its minimum (1 s), so a `run --once` after a
/// one-second pause checks every high-priority folder.
pub fn sync_config() -> String {
    let mut c = String::from("<?php\n// written by bench/bench.rs\n");
    for (k, v) in [
        ("EMAIL_BACKGROUND_SYNC_ENABLED", "TRUE"),
        ("EMAIL_OUTBOX_ENABLED", "FALSE"),
        ("BG_TICK_INTERVAL", "1"),
        ("EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL", "1"),
        ("EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL_NL", "1"),
        ("EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL", "1"),
        ("EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL_NL", "1"),
    ] {
        c.push_str(&format!("define('{k}', {v});\n"));
    }
    c
}

/// config.inc of a send home: outbox only, `threads` workers.
pub fn send_config(threads: usize) -> String {
    let mut c = String::from("<?php\n// written by bench/bench.rs\n");
    for (k, v) in [
        ("EMAIL_BACKGROUND_SYNC_ENABLED", "FALSE".to_owned()),
        ("EMAIL_OUTBOX_ENABLED", "TRUE".to_owned()),
        ("BG_MAX_THREADS", threads.to_string()),
        ("BG_TICK_INTERVAL", "1".to_owned()),
        ("EMAIL_BG_SEND_POLL_INTERVAL", "1".to_owned()),
        ("EMAIL_BG_SEND_BATCH", "100".to_owned()),
        ("EMAIL_BG_SENT_APPEND", "FALSE".to_owned()),
    ] {
        c.push_str(&format!("define('{k}', {v});\n"));
    }
    c
}

/// A fresh backproc home at `dir` with user `bench` and `accounts` accounts on the given
/// Dovecot (and smtp-sink, when given). Returns the account ids.
pub fn new_home(dir: &Path, config: &str, imap_port: u16, smtp_port: Option<u16>, accounts: usize) -> Vec<i64> {
    crate::measure::clean(dir);
    std::fs::create_dir_all(dir).expect("create home");
    std::fs::write(dir.join("config.inc"), config).expect("write config.inc");
    cli(dir, &["user", "add", LOGIN], None);
    let imap_port = imap_port.to_string();
    let smtp_port = smtp_port.map(|p| p.to_string());
    (0..accounts)
        .map(|i| {
            let email = format!("bench{i}@backproc.test");
            let mut args = vec![
                "account",
                "add",
                "--owner",
                LOGIN,
                "--email",
                &email,
                "--imap-host",
                "127.0.0.1",
                "--imap-port",
                &imap_port,
                "--imap-security",
                "none",
                "--login",
                LOGIN,
                "--password-stdin",
            ];
            if let Some(p) = &smtp_port {
                args.extend(["--smtp-host", "127.0.0.1", "--smtp-port", p, "--smtp-security", "none"]);
            }
            cli(dir, &args, Some(PASSWORD)).parse().expect("account id")
        })
        .collect()
}

pub fn store_path(home: &Path) -> PathBuf {
    home.join("data").join("backproc.sqlite")
}

/// (messages, seen) in a backproc store.
pub fn store_counts(home: &Path) -> (u64, u64) {
    let store = Store::open_read_only(&store_path(home)).expect("open store");
    let (mut n, mut seen) = (0, 0);
    for f in store.folders(None).expect("folders") {
        for (_, _, flags, _) in store.folder_messages(f.id).expect("messages") {
            n += 1;
            seen += u64::from(flags.seen);
        }
    }
    (n, seen)
}

/// Marks every folder high priority, so each `run --once` more than 1 s after the last one
/// syncs all of them.
pub fn all_folders_high(home: &Path) -> usize {
    let mut store = Store::open(&store_path(home)).expect("open store");
    let folders = store.folders(None).expect("folders");
    for f in &folders {
        store.set_folder_priority(f.id, backproc_store::Priority::High).expect("set priority");
    }
    folders.len()
}

/// An mbsync config pulling every folder of the bench user into a Maildir at `maildir`.
pub fn mbsync_config(conf: &Path, maildir: &Path, imap_port: u16) {
    let m = maildir.display();
    let text = format!(
        "IMAPAccount bench\nHost 127.0.0.1\nPort {imap_port}\nUser {LOGIN}\nPass {PASSWORD}\nSSLType None\nAuthMechs LOGIN\n\n\
         IMAPStore far\nAccount bench\n\n\
         MaildirStore near\nPath {m}/\nInbox {m}/INBOX\nSubFolders Verbatim\n\n\
         Channel bench\nFar :far:\nNear :near:\nPatterns *\nCreate Near\nSync Pull\nExpunge None\nSyncState *\n"
    );
    std::fs::write(conf, text).expect("write mbsync config");
}

/// (messages, seen) in a Maildir tree: files in `cur/` and `new/`, seen when the info part
/// (`:2,FLAGS`) holds `S`.
pub fn maildir_counts(dir: &Path) -> (u64, u64) {
    let (mut n, mut seen) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        let leaf = d.file_name().and_then(|s| s.to_str()).unwrap_or("");
        for e in rd.flatten() {
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if leaf == "cur" || leaf == "new" {
                n += 1;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.rsplit_once(":2,").is_some_and(|(_, fl)| fl.contains('S')) {
                    seen += 1;
                }
            }
        }
    }
    (n, seen)
}

/// Postfix's `smtp-sink` without a dump file: it accepts and forgets, so the sender is what
/// is measured (the testkit's sink writes every message to disk for tests to read).
pub struct Sink {
    child: Child,
    pub port: u16,
}

impl Sink {
    pub fn start() -> Sink {
        for _ in 0..5 {
            let port = backproc_testkit::free_port();
            let mut cmd = Command::new("/usr/sbin/smtp-sink");
            if nix::unistd::geteuid().is_root() {
                cmd.args(["-u", "nobody"]);
            }
            let child = cmd
                .arg(format!("127.0.0.1:{port}"))
                .arg("1024")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start /usr/sbin/smtp-sink (install postfix)");
            let mut sink = Sink { child, port };
            if backproc_testkit::wait_for_port(port, std::time::Duration::from_secs(5)).is_ok() {
                return sink;
            }
            let _ = sink.child.kill();
        }
        panic!("smtp-sink did not start");
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
