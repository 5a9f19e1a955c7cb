//! Many accounts through one simulated wide-area link (issue 20): N accounts of one Dovecot
//! (one user each, M text messages in INBOX), all behind testkit's `LinkProxy` at 40 ms /
//! 100 Mbit/s, synced from scratch by one `backproc run --once` (BG_MAX_THREADS 14, as many
//! connections to the host) and by `xargs -P 14 mbsync` (one mbsync process per account, 14
//! at a time: what a site would script). Both must end with every message.
//!
//! Per account the cost is round trips more than bytes (50 messages of 2–8 KB are 250 KB, a
//! few RTTs of transfer), so this is where fewer round trips a session and work spread over
//! connections show. Each tool then runs again with nothing new: the no-change pass.

use std::path::Path;
use std::process::Command;

use backproc_store::{NewAccount, Security, Store};
use backproc_testkit::{Dovecot, DovecotOptions, Link, LinkProxy, mailgen};

use crate::measure::{Cpu, Sample, clean, cores, median, sync_disks, timed};
use crate::tools::{self, LOGIN, PASSWORD};

/// Processes (mbsync) and threads and connections (backproc) at once.
const PARALLEL: usize = 14;

pub fn run(dir: &Path, runs: usize, smoke: bool, seed: u64) -> anyhow::Result<()> {
    let say = |m: &str| eprintln!("[bench] {m}");
    let (accounts, per) = if smoke { (20, 5) } else { (1000, 50) };
    // BENCH_ACCOUNTS: another number of accounts (a quicker look while working on this row)
    let accounts = std::env::var("BENCH_ACCOUNTS").ok().and_then(|v| v.parse().ok()).unwrap_or(accounts);
    let link = Link::new(40, 100);
    let d = Dovecot::start_with(DovecotOptions { compress: true, ..DovecotOptions::default() })?;
    let logins: Vec<String> = (0..accounts).map(|i| format!("many{i}")).collect();
    // every user first: a login right after its `add_user` can miss the reloaded passwd file
    for login in &logins {
        d.add_user(login, PASSWORD)?;
    }
    let mut bytes = 0;
    for (i, login) in logins.iter().enumerate() {
        let msgs: Vec<Vec<u8>> = (0..per).map(|m| mailgen::text_message(seed + i as u64, m)).collect();
        bytes += msgs.iter().map(Vec::len).sum::<usize>();
        d.populate(login, PASSWORD, "INBOX", &msgs)?;
    }
    let total = (accounts * per) as u64;
    say(&format!("{accounts} accounts × {per} messages ({:.0} MB) through 40 ms / 100 Mbit/s", bytes as f64 / 1e6));
    let proxy = LinkProxy::start(format!("127.0.0.1:{}", d.imap_port()).parse()?, link)?;
    let pgid = d.pid().ok_or_else(|| anyhow::anyhow!("Dovecot is not running"))?;
    let port = proxy.port();
    let home = dir.join("many-home");
    let maildir = dir.join("many-maildir");
    let conf = dir.join("many-mbsyncrc");
    // initial pass, no-change pass; backproc, mbsync
    let mut rows: [[Row; 2]; 2] = Default::default();
    for run in 1..=runs {
        say(&format!("  run {run}/{runs}"));
        new_home(&home, &logins, port)?;
        let h = home.to_str().expect("utf-8");
        for pass in &mut rows {
            sync_disks();
            proxy.reset_counts();
            let cpu = Cpu::now(pgid);
            let s = timed("backproc, many accounts", &tools::backproc_bin(), &["--home", h, "run", "--once"], dir);
            let cpu = Cpu::now(pgid).since(cpu);
            let got = tools::store_counts(&home).0;
            anyhow::ensure!(got == total, "backproc has {got} of {total} messages");
            pass[0].add(s, cpu, &proxy);
        }

        clean(&maildir);
        mbsync_config(&conf, &maildir, port, &logins)?;
        for pass in &mut rows {
            sync_disks();
            proxy.reset_counts();
            let cpu = Cpu::now(pgid);
            let s = xargs_mbsync(&conf, accounts, dir)?;
            let cpu = Cpu::now(pgid).since(cpu);
            let got = tools::maildir_counts(&maildir).0;
            anyhow::ensure!(got == total, "mbsync has {got} of {total} messages");
            pass[1].add(s, cpu, &proxy);
        }
        say(&format!(
            "    initial: backproc {:.1}s, mbsync {:.1}s; no change: backproc {:.1}s, mbsync {:.1}s",
            rows[0][0].secs[run - 1],
            rows[0][1].secs[run - 1],
            rows[1][0].secs[run - 1],
            rows[1][1].secs[run - 1]
        ));
    }
    println!("\n### {accounts} accounts × {per} messages over 40 ms / 100 Mbit/s (medians of {runs})\n");
    println!("| pass | tool | time | peak RSS | round trips | MB down | machine busy | server CPU | ÷ mbsync |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let tools = [format!("backproc ({PARALLEL} threads)"), format!("xargs -P {PARALLEL} mbsync")];
    for (pass, row) in ["initial", "no change"].iter().zip(&rows) {
        let mbsync = median(&row[1].secs);
        for (tool, r) in tools.iter().zip(row) {
            println!(
                "| {pass} | {tool} | {:.1} s | {:.1} MB | {} | {:.1} | {:.0} % | {:.1} s | {:.2} |",
                median(&r.secs),
                median(&r.rss_mb),
                r.turns,
                r.down as f64 / 1e6,
                median(&r.busy) * 100.0,
                median(&r.server_cpu),
                median(&r.secs) / mbsync
            );
        }
    }
    println!(
        "\nmbsync's peak RSS is its largest process's (each account is a process of its own). Machine busy: \
         the share of all {} cores busy during the pass; server CPU: the CPU time of Dovecot's processes.",
        cores()
    );
    Ok(())
}

/// One tool's samples of one pass; the proxy's counts are the last run's.
#[derive(Default)]
struct Row {
    secs: Vec<f64>,
    rss_mb: Vec<f64>,
    busy: Vec<f64>,
    server_cpu: Vec<f64>,
    turns: u64,
    down: u64,
}

impl Row {
    fn add(&mut self, s: Sample, cpu: Cpu, p: &LinkProxy) {
        self.busy.push(cpu.machine / (s.secs * cores() as f64));
        self.server_cpu.push(cpu.server);
        self.secs.push(s.secs);
        self.rss_mb.push(s.rss_mb);
        self.turns = p.turns();
        self.down = p.bytes().1;
    }
}

/// A fresh home with one account per login, all on the link's port; compression always
/// (the proxy is on loopback), the host's budget as mbsync's parallelism.
fn new_home(home: &Path, logins: &[String], port: u16) -> anyhow::Result<()> {
    clean(home);
    std::fs::create_dir_all(home)?;
    let mut config = tools::sync_config();
    config.push_str(&format!(
        "define('EMAIL_BG_IMAP_COMPRESS', 2);\ndefine('BG_MAX_THREADS', {PARALLEL});\n\
         define('BG_MAX_CONNECTIONS_PER_HOST', {PARALLEL});\ndefine('BG_MAX_STARTS_PER_TICK', 100000);\n"
    ));
    std::fs::write(home.join("config.inc"), config)?;
    let o = Command::new(tools::backproc_bin()).arg("--home").arg(home).args(["user", "add", LOGIN]).output()?;
    anyhow::ensure!(o.status.success(), "user add: {}", String::from_utf8_lossy(&o.stderr));
    let mut store = Store::open(&tools::store_path(home))?;
    let now = backproc_store::now();
    for login in logins {
        store.add_account(
            &NewAccount {
                owner_login: LOGIN.into(),
                email: format!("{login}@backproc.test"),
                imap_host: "127.0.0.1".into(),
                imap_port: port,
                imap_security: Some(Security::None),
                login: login.clone(),
                password: Some(PASSWORD.into()),
                ..Default::default()
            },
            now,
        )?;
    }
    Ok(())
}

/// One channel per login, each into its own Maildir under `maildir`.
fn mbsync_config(conf: &Path, maildir: &Path, port: u16, logins: &[String]) -> anyhow::Result<()> {
    let mut text = String::new();
    for (i, login) in logins.iter().enumerate() {
        let m = maildir.join(login);
        std::fs::create_dir_all(&m)?;
        let m = m.display();
        text.push_str(&format!(
            "IMAPAccount a{i}\nHost 127.0.0.1\nPort {port}\nUser {login}\nPass {PASSWORD}\nSSLType None\nAuthMechs LOGIN\n\n\
             IMAPStore far{i}\nAccount a{i}\n\n\
             MaildirStore near{i}\nPath {m}/\nInbox {m}/INBOX\nSubFolders Verbatim\n\n\
             Channel c{i}\nFar :far{i}:\nNear :near{i}:\nPatterns *\nCreate Near\nSync Pull\nExpunge None\nSyncState *\n\n"
        ));
    }
    std::fs::write(conf, text)?;
    Ok(())
}

/// `seq 0 N-1 | xargs -P 14 -I{} mbsync -q -c CONF c{}`, timed as one child.
fn xargs_mbsync(conf: &Path, accounts: usize, dir: &Path) -> anyhow::Result<Sample> {
    let list = dir.join("many-channels");
    std::fs::write(&list, (0..accounts).map(|i| format!("c{i}\n")).collect::<String>())?;
    let c = conf.to_str().expect("utf-8");
    let script = format!("xargs -a {} -P {PARALLEL} -I{{}} mbsync -q -c {c} {{}}", list.display());
    // `timed` aborts the run on a failed child: xargs exits non-zero if any mbsync did
    Ok(timed("xargs mbsync, many accounts", Path::new("/bin/sh"), &["-c", &script], dir))
}
