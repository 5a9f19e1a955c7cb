//! Push (issue 21): how long new mail takes from the server to the store, with push and with
//! polling, and what thousands of waiting push connections cost.
//!
//! - latency: a running master (`backproc run`), the owner logged in, every polling interval
//!   at an hour for push (so only push can bring the mail) and at POLL seconds for polling
//!   (push off). Messages are APPENDed to INBOX one at a time at spread-out moments; each one's
//!   latency runs from the end of its APPEND to the moment its row is in the store (the store
//!   is read every 5 ms). p50 / p95 / max.
//! - idle cost: N accounts (one Dovecot user each) synced with their owner logged out, then
//!   logged in: the master's threads and RSS before and after all N are pushed, and its CPU
//!   over IDLE_SECS of waiting.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backproc_store::{NewAccount, Security, Store};
use backproc_testkit::{Dovecot, DovecotOptions};

use crate::measure::{clean, median};
use crate::tools::{self, LOGIN, PASSWORD};

struct Sizes {
    messages: usize,
    poll_secs: u64,
    accounts: usize,
    idle_secs: u64,
}

fn sizes(smoke: bool) -> Sizes {
    if smoke {
        Sizes { messages: 10, poll_secs: 2, accounts: 50, idle_secs: 2 }
    } else {
        Sizes { messages: 200, poll_secs: 60, accounts: 2000, idle_secs: 30 }
    }
}

fn config(push: bool, poll: u64, extra: &str) -> String {
    let every = if push { 3600 } else { poll };
    format!(
        "<?php\n// written by bench/push.rs\n\
         define('EMAIL_BACKGROUND_SYNC_ENABLED', TRUE);\n\
         define('BG_TICK_INTERVAL', 1);\n\
         define('EMAIL_BG_PUSH_ENABLED', {});\n\
         define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL', {every});\n\
         define('EMAIL_BG_HI_FOLDERS_RECENT_SYNC_INTERVAL_NL', {every});\n\
         define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL', 3600);\n\
         define('EMAIL_BG_HI_FOLDERS_FOLDERS_FULL_SYNC_INTERVAL_NL', 3600);\n{extra}",
        if push { "TRUE" } else { "FALSE" }
    )
}

/// A master, stopped by SIGTERM when dropped.
struct Master(Child);

impl Master {
    fn start(home: &Path) -> anyhow::Result<Master> {
        let c = Command::new(tools::backproc_bin())
            .arg("--home")
            .arg(home)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Master(c))
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-15").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn cli(home: &Path, args: &[&str]) -> anyhow::Result<()> {
    let o = Command::new(tools::backproc_bin()).arg("--home").arg(home).args(args).stdin(Stdio::null()).output()?;
    anyhow::ensure!(o.status.success(), "backproc {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    Ok(())
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + limit;
    while !f() {
        anyhow::ensure!(Instant::now() < end, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn inbox_of(store: &Store, account: i64) -> Option<i64> {
    store.folders(Some(account)).ok()?.into_iter().find(|f| f.display_name == "INBOX").map(|f| f.id)
}

/// The latencies (seconds) of `n` messages APPENDed to INBOX of a running master's account.
fn latencies(dir: &Path, push: bool, n: usize, poll: u64, seed: u64) -> anyhow::Result<Vec<f64>> {
    let d = Dovecot::start()?;
    d.add_user(LOGIN, PASSWORD)?;
    let home = dir.join(if push { "push-home" } else { "poll-home" });
    let a = tools::new_home(&home, &config(push, poll, ""), d.imap_port(), None, 1)[0];
    cli(&home, &["run", "--once"])?;
    cli(&home, &["user", "login", LOGIN, "--for", "86400"])?;
    let _m = Master::start(&home)?;
    let store = Store::open_read_only(&tools::store_path(&home))?;
    let inbox = inbox_of(&store, a).ok_or_else(|| anyhow::anyhow!("no INBOX"))?;
    if push {
        wait("push connected", Duration::from_secs(30), || {
            store.push_states().is_ok_and(|p| p.iter().any(|p| p.mode == "NOTIFY"))
        })?;
    } else {
        std::thread::sleep(Duration::from_secs(2));
    }
    // Spread over two polling periods for polling (each message meets the poll at another
    // phase); one after another for push, with a pause past the debounce window.
    let gap = if push { Duration::from_millis(400) } else { Duration::from_secs_f64(2.0 * poll as f64 / n as f64) };
    let mut sent: Vec<Instant> = Vec::with_capacity(n);
    let mut arrived: Vec<f64> = Vec::with_capacity(n);
    let mut seen = 0usize;
    let mut rng = seed | 1;
    let mut next = Instant::now();
    let end = Instant::now() + Duration::from_secs(poll * 3 + 60 + n as u64);
    while arrived.len() < n {
        anyhow::ensure!(Instant::now() < end, "{} of {n} messages arrived", arrived.len());
        if sent.len() < n && Instant::now() >= next {
            let i = sent.len();
            let raw = format!("From: a@b.test\r\nSubject: latency {i}\r\nMessage-ID: <lat{i}@b.test>\r\n\r\nx\r\n");
            d.append(LOGIN, PASSWORD, "INBOX", raw.as_bytes(), &[])?;
            sent.push(Instant::now());
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // jitter of ±25 % so the appends do not beat in step with the ticks
            let jitter = 0.75 + (rng % 500) as f64 / 1000.0;
            next = Instant::now() + gap.mul_f64(jitter);
        }
        let now = store.folder_present_count(inbox)? as usize;
        while seen < now.min(sent.len()) {
            arrived.push(sent[seen].elapsed().as_secs_f64());
            seen += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(arrived)
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

/// CPU ticks of the process's threads named `push` and `push-connect`.
fn push_threads_cpu(pid: u32) -> anyhow::Result<u64> {
    let mut ticks = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = t?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim().starts_with("push") {
            let stat = std::fs::read_to_string(dir.join("stat"))?;
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
            ticks += f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        }
    }
    Ok(ticks)
}

/// (threads, RSS KiB, CPU ticks) of a process.
fn proc_stats(pid: u32) -> anyhow::Result<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // fields after the command's closing parenthesis: utime is the 12th, stime the 13th
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let cpu = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Ok((field("Threads:"), field("VmRSS:"), cpu))
}

struct Idle {
    accounts: usize,
    threads: (u64, u64),
    rss_kib: (u64, u64),
    cpu_percent: f64,
    push_cpu_percent: f64,
    connect_secs: f64,
}

fn idle_cost(dir: &Path, n: usize, idle_secs: u64, tls: bool) -> anyhow::Result<Idle> {
    let d = Dovecot::start_with(DovecotOptions {
        process_limit: Some(u32::try_from(n / 50 + 10).unwrap_or(u32::MAX)),
        client_limit: Some(60),
        login_client_limit: Some(u32::try_from(n / 8 + 100).unwrap_or(u32::MAX)),
        ..DovecotOptions::default()
    })?;
    let ca = d.ca_cert_path().display().to_string();
    let home = dir.join("push-idle-home");
    clean(&home);
    std::fs::create_dir_all(&home)?;
    std::fs::write(
        home.join("config.inc"),
        config(
            true,
            3600,
            "define('BG_MAX_THREADS', 4);\ndefine('BG_MAX_CONNECTIONS_PER_HOST', 100000);\n\
             define('BG_SESSION_IDLE_TIMEOUT', 1);\ndefine('BG_MAX_STARTS_PER_TICK', 100000);\n",
        ),
    )?;
    cli(&home, &["user", "add", LOGIN])?;
    let mut ids = Vec::with_capacity(n);
    {
        let mut store = Store::open(&tools::store_path(&home))?;
        let now = backproc_store::now();
        for i in 0..n {
            let login = format!("idle{i}");
            d.add_user(&login, PASSWORD)?;
            ids.push(store.add_account(
                &NewAccount {
                    owner_login: LOGIN.into(),
                    email: format!("{login}@backproc.test"),
                    imap_host: "127.0.0.1".into(),
                    imap_port: if tls { d.imaps_port() } else { d.imap_port() },
                    imap_security: Some(if tls { Security::Ssl } else { Security::None }),
                    tls_ca_file: tls.then(|| ca.clone()),
                    login,
                    password: Some(PASSWORD.into()),
                    ..Default::default()
                },
                now,
            )?);
        }
    }
    let m = Master::start(&home)?;
    let pid = m.0.id();
    let store = Store::open_read_only(&tools::store_path(&home))?;
    wait("initial syncs", Duration::from_secs(600), || {
        ids.iter().all(|a| inbox_of(&store, *a).is_some())
            && store.workers().is_ok_and(|w| w.iter().all(|w| w.task.is_none()))
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let (t0, r0, _) = proc_stats(pid)?;
    let t = Instant::now();
    cli(&home, &["user", "login", LOGIN, "--for", "86400"])?;
    wait("every account pushed", Duration::from_secs(600), || {
        store.push_states().is_ok_and(|p| p.iter().filter(|p| p.mode == "NOTIFY").count() == n)
    })?;
    let connect_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let ((_, _, c0), p0) = (proc_stats(pid)?, push_threads_cpu(pid)?);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let ((t1, r1, c1), p1) = (proc_stats(pid)?, push_threads_cpu(pid)?);
    // clock ticks are 1/100 s on Linux
    let cpu_percent = (c1 - c0) as f64 / idle_secs as f64;
    let push_cpu_percent = (p1 - p0) as f64 / idle_secs as f64;
    Ok(Idle { accounts: n, threads: (t0, t1), rss_kib: (r0, r1), cpu_percent, push_cpu_percent, connect_secs })
}

pub fn run(dir: &Path, smoke: bool, seed: u64) -> anyhow::Result<()> {
    let say = |m: &str| eprintln!("[bench] {m}");
    let s = sizes(smoke);
    say(&format!("push: new-mail latency, {} messages, push vs polling every {} s", s.messages, s.poll_secs));
    let push = latencies(dir, true, s.messages, s.poll_secs, seed)?;
    let poll = latencies(dir, false, s.messages, s.poll_secs, seed)?;
    say(&format!("push: {} accounts waiting", s.accounts));
    let idle = idle_cost(dir, s.accounts, s.idle_secs, false)?;
    say(&format!("push: {} accounts waiting over TLS", s.accounts));
    let idle_tls = idle_cost(dir, s.accounts, s.idle_secs, true)?;
    println!("\n### Push (issue 21)\n");
    println!("| new mail → store | messages | p50 | p95 | max |");
    println!("|---|---:|---:|---:|---:|");
    for (name, v) in [("push (NOTIFY)".to_string(), &push), (format!("polling every {} s", s.poll_secs), &poll)] {
        println!("| {name} | {} | {:.2} s | {:.2} s | {:.2} s |", v.len(), median(v), pct(v, 0.95), pct(v, 1.0));
    }
    for (what, idle) in [("plain", &idle), ("TLS", &idle_tls)] {
        println!(
            "\n| {} push accounts, {what} | before | after |\n|---|---:|---:|\n| threads of the master | {} | {} |\n\
             | RSS | {:.1} MB | {:.1} MB |\n\n\
             All {} connected {:.1} s after the owner logged in. CPU while they wait, over {} s: the master \
             {:.2} % of a core (its 1 s ticks included), the two push threads {:.2} %.",
            idle.accounts,
            idle.threads.0,
            idle.threads.1,
            idle.rss_kib.0 as f64 / 1024.0,
            idle.rss_kib.1 as f64 / 1024.0,
            idle.accounts,
            idle.connect_secs,
            s.idle_secs,
            idle.cpu_percent,
            idle.push_cpu_percent
        );
    }
    Ok(())
}
