//! Helpers for integration tests: a fresh home directory and the real binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Outbox on, sync off, no Sent append, every interval and back-off at 1 s.
pub const SEND: &str = "<?php
define('EMAIL_OUTBOX_ENABLED', TRUE);
define('EMAIL_BG_SENT_APPEND', FALSE);
define('BG_TICK_INTERVAL', 1);
define('EMAIL_BG_SEND_POLL_INTERVAL', 1);
define('BG_BACKOFF_BASE', 1);
define('BG_BACKOFF_MAX', 1);
define('EMAIL_BG_SECONDARY_INTERVAL', 1);
";

/// `SEND` with the shortest send lease the config accepts (10 s, see `email_bg_send_lease` in
/// crates/config/src/spec.rs), so entries caught in PROCESSING expire within a test, and
/// claim batches of 5, so a kill catches a few entries in PROCESSING rather than a hundred.
pub fn send_short_lease() -> String {
    format!("{SEND}define('EMAIL_BG_SEND_LEASE', 10);\ndefine('EMAIL_BG_SEND_BATCH', 5);\n")
}

pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home { dir: tempfile::tempdir().expect("temp dir") }
    }

    pub fn with_config(config: &str) -> Home {
        let h = Home::new();
        h.write_config(config);
        h
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.path().join("config.inc"), text).expect("write config.inc");
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_backproc"));
        c.arg("--home").arg(self.path());
        c.env_remove("BACKPROC_HOME");
        c
    }

    /// Runs `backproc ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).stdin(Stdio::null()).output().expect("run backproc")
    }

    /// Runs with `stdin` fed to the process. The process may exit (a usage error) before it
    /// reads its input, so a refused write is not an error.
    pub fn run_stdin<S: AsRef<std::ffi::OsStr>>(&self, args: &[S], stdin: impl AsRef<[u8]>) -> Output {
        use std::io::Write;
        let mut child = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn backproc");
        let _ = child.stdin.take().expect("stdin").write_all(stdin.as_ref());
        child.wait_with_output().expect("wait backproc")
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd().args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn")
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join("logs").join(name)).unwrap_or_default()
    }

    pub fn file(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    /// As if `secs` seconds had passed since everything the store recorded
    /// (`Store::pass_time`): the next run finds the intervals, back-offs and leases that
    /// long over, without a test sleeping through them. Between runs only.
    pub fn pass_time(&self, secs: i64) {
        let mut s = backproc_store::Store::open(&self.file("data/backproc.sqlite")).expect("open the store");
        s.pass_time(secs).expect("move the store's times");
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls `f` until it is true or `timeout` passes; returns whether it became true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A home with `config` and user carol's account: SMTP on 127.0.0.1:`smtp_port`, IMAP on
/// 127.0.0.1:`imap_port` (1 when unused), both plain. Returns the home and the account id.
pub fn home_with_smtp(config: &str, smtp_port: u16, imap_port: u16) -> (Home, i64) {
    let h = Home::with_config(config);
    let account = add_smtp_account(&h, smtp_port, imap_port);
    (h, account)
}

/// Adds user carol and her account (as `home_with_smtp`) to `h`; returns the account id.
pub fn add_smtp_account(h: &Home, smtp_port: u16, imap_port: u16) -> i64 {
    assert!(h.run(&["user", "add", "carol"]).status.success());
    let (port, iport) = (smtp_port.to_string(), imap_port.to_string());
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
            &iport,
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

/// The result of one child run: exit status, stderr, peak RSS in bytes, wall time.
pub struct Measured {
    pub code: i32,
    pub stderr: String,
    pub peak_rss: u64,
    pub took: Duration,
}

/// Runs `cmd` to completion and reads its peak RSS from wait4(2)'s rusage, exact for this one
/// child (getrusage(RUSAGE_CHILDREN) would mix in Dovecot's tools and earlier commands, and
/// /proc polling can miss the peak).
///
/// The child is started by a small helper process, not by the test: at exec, Linux starts a
/// process's `ru_maxrss` from the high-water mark of the memory it had before (fs/exec.c,
/// `setmax_mm_hiwater_rss`), and a child spawned by vfork/posix_spawn had the *test's*
/// memory, so the figure was never below the test process's own peak (95 MB measured for an
/// engine that used 16). The helper is Python (the testkit already needs it), whose peak of
/// about 10 MB is what a measurement can never go below.
pub fn run_measured(cmd: Command) -> Measured {
    const HELPER: &str = "import os, sys\n\
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)\n\
_, status, usage = os.wait4(pid, 0)\n\
open(sys.argv[1], 'w').write(f'{usage.ru_maxrss} {status}')\n";
    let dir = tempfile::tempdir().unwrap();
    let (out, err, rss) = (dir.path().join("stdout"), dir.path().join("stderr"), dir.path().join("rss"));
    let mut helper = Command::new("python3");
    helper.arg("-c").arg(HELPER).arg(&rss).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => helper.env(k, v),
            None => helper.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        helper.current_dir(d);
    }
    helper
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    let started = Instant::now();
    let done = helper.status().expect("run the measuring helper (python3)");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&std::fs::read(&err).unwrap()).into_owned();
    assert!(done.success(), "the measuring helper failed: {stderr}");
    let figures = std::fs::read_to_string(&rss).expect("the helper's figures");
    let (maxrss, status) = figures.split_once(' ').expect("maxrss and status");
    let status: libc::c_int = status.parse().unwrap();
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    Measured {
        code,
        stderr,
        // Linux reports ru_maxrss in KiB.
        peak_rss: maxrss.parse::<u64>().unwrap() * 1024,
        took,
    }
}
