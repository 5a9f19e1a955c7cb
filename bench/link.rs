//! backproc and mbsync through a simulated wide-area link (issue 20): testkit's `LinkProxy`
//! (a delay line with a shared token bucket) in front of a Dovecot that offers
//! COMPRESS=DEFLATE (imap_zlib), both tools through the same proxy in the same run.
//!
//! Per link and tool: the initial sync into a store on disk, the no-change resync and an
//! incremental sync (100 new messages, 500 flag changes), with the round trips the proxy
//! counted and the bytes it carried down. The link's limit for a tool is its downloaded
//! bytes over the rate plus the few round trips of a session's setup; the share of it a tool
//! reached is printed beside its time.

use std::path::Path;
use std::time::Duration;

use backproc_testkit::{Dovecot, DovecotOptions, Link, LinkProxy, mailgen};

use crate::measure::{Sample, clean, sync_disks, timed};
use crate::tools::{self, LOGIN, PASSWORD};

/// One tool's runs on one link.
#[derive(Default)]
struct Row {
    secs: Vec<f64>,
    turns: u64,
    down: u64,
}

impl Row {
    fn add(&mut self, s: Sample, p: &LinkProxy) {
        self.secs.push(s.secs);
        self.turns = p.turns();
        self.down = p.bytes().1;
    }

    fn median(&self) -> f64 {
        crate::measure::median(&self.secs)
    }
}

/// The tools measured on each link: backproc with its extra config.inc lines, or mbsync
/// (`None`). The proxy is on loopback, so COMPRESS is "always" (2) or never (0), not the
/// default 1 (never to a loopback host).
const TOOLS: [(&str, Option<&str>); 4] = [
    ("backproc", Some("define('EMAIL_BG_IMAP_COMPRESS', 2);\n")),
    (
        "backproc, 1 connection",
        Some("define('EMAIL_BG_IMAP_COMPRESS', 2);\ndefine('EMAIL_BG_ACCOUNT_CONNECTIONS', 1);\n"),
    ),
    ("backproc, no COMPRESS", Some("define('EMAIL_BG_IMAP_COMPRESS', 0);\n")),
    ("mbsync", None),
];
const MBSYNC: usize = 3;

/// The round trips any client pays before the first byte of mail (TCP connect, greeting to
/// LOGIN, COMPRESS, SELECT to FETCH): with the bytes over the rate, the link's limit. A
/// tool's own turns are printed beside, but they are no bound: pipelined ones cost no RTT.
const SETUP_TRIPS: f64 = 4.0;

/// `(name, link, messages)` of each link measured.
pub fn links(smoke: bool) -> Vec<(&'static str, Link, usize)> {
    if smoke {
        vec![("40 ms / 100 Mbit/s", Link::new(40, 100), 100)]
    } else {
        vec![("40 ms / 100 Mbit/s", Link::new(40, 100), 2000), ("150 ms / 20 Mbit/s", Link::new(150, 20), 500)]
    }
}

pub fn run(dir: &Path, runs: usize, smoke: bool, seed: u64) -> anyhow::Result<()> {
    let say = |m: &str| eprintln!("[bench] {m}");
    let mut table = Vec::new();
    let mut raws = Vec::new();
    let mut loopback: Vec<Vec<f64>> = Vec::new();
    for (name, link, n) in links(smoke) {
        let d = Dovecot::start_with(DovecotOptions { compress: true, ..DovecotOptions::default() })?;
        d.add_user(LOGIN, PASSWORD)?;
        let msgs = mailgen::mailbox(seed, n);
        let per = n / 3;
        // 500 flag changes, or all of INBOX where it holds fewer
        let flagged = 500.min(per);
        for (i, f) in ["INBOX", "Archive", "Projects"].iter().enumerate() {
            if *f != "INBOX" {
                d.create_folder(LOGIN, PASSWORD, f)?;
            }
            let end = if i == 2 { n } else { (i + 1) * per };
            d.populate(LOGIN, PASSWORD, f, &msgs[i * per..end])?;
        }
        let mb = msgs.iter().map(Vec::len).sum::<usize>() as f64 / 1e6;
        say(&format!("link {name}: {n} messages, {mb:.0} MB in 3 folders"));
        let proxy = LinkProxy::start(format!("127.0.0.1:{}", d.imap_port()).parse()?, link)?;
        let port = proxy.port();
        let bp = tools::backproc_bin();
        let (mut initial, mut resync, mut incremental) =
            (TOOLS.map(|_| Row::default()), TOOLS.map(|_| Row::default()), TOOLS.map(|_| Row::default()));
        let mut raw = Row::default();
        let me = std::env::current_exe()?;
        let raw_args = ["raw-fetch", &port.to_string(), LOGIN, PASSWORD, "INBOX", "Archive", "Projects"];
        for run in 1..=runs {
            say(&format!("  run {run}/{runs}"));
            // The proxy's check: a plain download of everything takes its bytes over the rate.
            proxy.reset_counts();
            raw.add(timed(&format!("raw fetch over {name}"), &me, &raw_args, dir), &proxy);
            for (t, (tool, extra)) in TOOLS.iter().enumerate() {
                let backproc = extra.is_some();
                let home = dir.join("link-home");
                let maildir = dir.join("link-maildir");
                let conf = dir.join("link-mbsyncrc");
                let once = |what: &str| -> Sample {
                    if backproc {
                        let h = home.to_str().expect("utf-8");
                        timed(what, &bp, &["--home", h, "run", "--once"], dir)
                    } else {
                        timed(what, Path::new("mbsync"), &["-q", "-c", conf.to_str().expect("utf-8"), "-a"], dir)
                    }
                };
                if let Some(extra) = extra {
                    let mut config = tools::sync_config();
                    config.push_str(extra);
                    tools::new_home(&home, &config, port, None, 1);
                } else {
                    clean(&maildir);
                    std::fs::create_dir_all(&maildir)?;
                    tools::mbsync_config(&conf, &maildir, port);
                }
                sync_disks();
                proxy.reset_counts();
                initial[t].add(once(&format!("{tool}, initial sync over {name}")), &proxy);
                let got = if backproc { tools::store_counts(&home).0 } else { tools::maildir_counts(&maildir).0 };
                anyhow::ensure!(got == n as u64, "{tool} has {got} of {n} messages after its initial sync");
                if backproc {
                    tools::all_folders_high(&home);
                }
                std::thread::sleep(Duration::from_millis(1100));
                proxy.reset_counts();
                resync[t].add(once(&format!("{tool}, no-change resync over {name}")), &proxy);
                let next = change_server(&d, seed + run as u64, flagged)?;
                std::thread::sleep(Duration::from_millis(1100));
                sync_disks();
                proxy.reset_counts();
                incremental[t].add(once(&format!("{tool}, incremental over {name}")), &proxy);
                let got = if backproc { tools::store_counts(&home) } else { tools::maildir_counts(&maildir) };
                anyhow::ensure!(
                    got == (n as u64 + 100, flagged as u64),
                    "{tool} has {got:?} after the incremental sync"
                );
                undo_change(&d, next, flagged)?;
                say(&format!(
                    "    {tool}: initial {:.2}s ({} round trips, {:.1} MB down), resync {:.2}s ({} round trips), \
                     incremental {:.2}s ({} round trips)",
                    initial[t].secs.last().unwrap_or(&0.0),
                    initial[t].turns,
                    initial[t].down as f64 / 1e6,
                    resync[t].secs.last().unwrap_or(&0.0),
                    resync[t].turns,
                    incremental[t].secs.last().unwrap_or(&0.0),
                    incremental[t].turns,
                ));
            }
        }
        let limit = raw.down as f64 / link.rate as f64 + SETUP_TRIPS * link.rtt.as_secs_f64();
        raws.push(format!(
            "- {name}: raw `UID FETCH 1:*` of the {n} messages, no COMPRESS: {:.2} s for {:.1} MB, its limit {limit:.2} s ({:.0} %)",
            raw.median(),
            raw.down as f64 / 1e6,
            100.0 * limit / raw.median()
        ));
        table.push((name, link, n, flagged, initial, resync, incremental));
        if loopback.is_empty() {
            // The same server without the link: what deflating costs where bytes are free.
            for run in 1..=runs {
                say(&format!("  loopback, run {run}/{runs}"));
                // 2: always; 1 (the default): not to a loopback host
                for (t, setting) in [(0, 2), (1, 1)] {
                    let home = dir.join("link-home");
                    let mut config = tools::sync_config();
                    config.push_str(&format!("define('EMAIL_BG_IMAP_COMPRESS', {setting});\n"));
                    tools::new_home(&home, &config, d.imap_port(), None, 1);
                    sync_disks();
                    let h = home.to_str().expect("utf-8");
                    let s = timed("backproc initial sync on loopback", &bp, &["--home", h, "run", "--once"], dir);
                    loopback.resize(2, Vec::new());
                    loopback[t].push(s.secs);
                }
            }
        }
    }
    if let [on, off] = &loopback[..] {
        let (on, off) = (crate::measure::median(on), crate::measure::median(off));
        println!(
            "\nloopback, no link ({} messages): backproc initial sync {on:.2} s with COMPRESS, {off:.2} s without ({:.2}×)",
            table.first().map_or(0, |t| t.2),
            on / off
        );
    }
    println!("\n### Over a simulated link (LinkProxy; Dovecot with COMPRESS=DEFLATE; medians of {runs})\n");
    println!("link limit: the tool's bytes down over the rate, plus {SETUP_TRIPS} round trips\n");
    println!("{}\n", raws.join("\n"));
    println!(
        "| link | messages | step | tool | time | round trips | MB down | link limit | share of limit | vs mbsync |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, link, n, flagged, initial, resync, incremental) in &table {
        let incr = format!("incremental (+100, {flagged} flags)");
        for (step, rows) in [("initial sync", initial), ("no-change resync", resync), (incr.as_str(), incremental)] {
            let mbsync = rows[MBSYNC].median();
            for (t, r) in rows.iter().enumerate() {
                let limit = r.down as f64 / link.rate as f64 + SETUP_TRIPS * link.rtt.as_secs_f64();
                println!(
                    "| {name} | {n} | {step} | {} | {:.2} s | {} | {:.1} | {:.2} s | {:.0} % | {:.2} |",
                    TOOLS[t].0,
                    r.median(),
                    r.turns,
                    r.down as f64 / 1e6,
                    limit,
                    100.0 * limit / r.median(),
                    r.median() / mbsync
                );
            }
        }
    }
    Ok(())
}

/// The incremental step's change on the server: 100 new messages in INBOX and \Seen set on
/// its first `flagged` (all unseen before). Returns INBOX's UIDNEXT before, for [`undo_change`].
fn change_server(d: &Dovecot, seed: u64, flagged: usize) -> anyhow::Result<u32> {
    let mut s = d.session(LOGIN, PASSWORD)?;
    let next = s.select("INBOX")?.uid_next.ok_or_else(|| anyhow::anyhow!("no UIDNEXT"))?;
    let _ = s.logout();
    let new: Vec<Vec<u8>> = (0..100).map(|i| mailgen::message(seed + 1000, i)).collect();
    d.populate(LOGIN, PASSWORD, "INBOX", &new)?;
    let mut s = d.session(LOGIN, PASSWORD)?;
    s.select("INBOX")?;
    s.uid_store(format!("1:{flagged}"), "+FLAGS.SILENT (\\Seen)")?;
    let _ = s.logout();
    Ok(next)
}

/// Puts the server back as it was before [`change_server`] (the same messages under new
/// UIDs), so that every tool's initial sync downloads the same mailbox.
fn undo_change(d: &Dovecot, next: u32, flagged: usize) -> anyhow::Result<()> {
    let mut s = d.session(LOGIN, PASSWORD)?;
    s.select("INBOX")?;
    s.uid_store(format!("{next}:*"), "+FLAGS.SILENT (\\Deleted)")?;
    s.expunge()?;
    s.uid_store(format!("1:{flagged}"), "-FLAGS.SILENT (\\Seen)")?;
    let _ = s.logout();
    Ok(())
}
