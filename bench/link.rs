//! backproc and mbsync through a simulated wide-area link (issue 20): testkit's `LinkProxy`
//! (a delay line with a shared token bucket) in front of a Dovecot that offers
//! COMPRESS=DEFLATE (imap_zlib), both tools through the same proxy in the same run.
//!
//! Per link and tool: the initial sync into a store on disk and the no-change resync, with
//! the round trips the proxy counted and the bytes it carried down. The link's limit for a
//! tool is its downloaded bytes over the rate plus its round trips' time; the share of it a
//! tool reached is printed beside its time.

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
    let mut loopback: Vec<Vec<f64>> = Vec::new();
    for (name, link, n) in links(smoke) {
        let d = Dovecot::start_with(DovecotOptions { compress: true, ..DovecotOptions::default() })?;
        d.add_user(LOGIN, PASSWORD)?;
        let msgs = mailgen::mailbox(seed, n);
        let per = n / 3;
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
        let (mut initial, mut resync) =
            ([Row::default(), Row::default(), Row::default()], [Row::default(), Row::default(), Row::default()]);
        let tools_ = ["backproc", "backproc, no COMPRESS", "mbsync"];
        for run in 1..=runs {
            say(&format!("  run {run}/{runs}"));
            for (t, tool) in tools_.iter().enumerate() {
                let home = dir.join("link-home");
                let maildir = dir.join("link-maildir");
                let conf = dir.join("link-mbsyncrc");
                let once = |what: &str| -> Sample {
                    if t < 2 {
                        let h = home.to_str().expect("utf-8");
                        timed(what, &bp, &["--home", h, "run", "--once"], dir)
                    } else {
                        timed(what, Path::new("mbsync"), &["-q", "-c", conf.to_str().expect("utf-8"), "-a"], dir)
                    }
                };
                if t < 2 {
                    // the link proxy is on loopback: "always" (2), or never (0)
                    let mut config = tools::sync_config();
                    config.push_str(if t == 0 {
                        "define('EMAIL_BG_IMAP_COMPRESS', 2);\n"
                    } else {
                        "define('EMAIL_BG_IMAP_COMPRESS', 0);\n"
                    });
                    tools::new_home(&home, &config, port, None, 1);
                } else {
                    clean(&maildir);
                    std::fs::create_dir_all(&maildir)?;
                    tools::mbsync_config(&conf, &maildir, port);
                }
                sync_disks();
                proxy.reset_counts();
                initial[t].add(once(&format!("{tool}, initial sync over {name}")), &proxy);
                let got = if t < 2 { tools::store_counts(&home).0 } else { tools::maildir_counts(&maildir).0 };
                anyhow::ensure!(got == n as u64, "{tool} has {got} of {n} messages after its initial sync");
                if t < 2 {
                    tools::all_folders_high(&home);
                }
                std::thread::sleep(Duration::from_millis(1100));
                proxy.reset_counts();
                resync[t].add(once(&format!("{tool}, no-change resync over {name}")), &proxy);
                say(&format!(
                    "    {tool}: initial {:.2}s ({} round trips, {:.1} MB down), resync {:.2}s ({} round trips)",
                    initial[t].secs.last().unwrap_or(&0.0),
                    initial[t].turns,
                    initial[t].down as f64 / 1e6,
                    resync[t].secs.last().unwrap_or(&0.0),
                    resync[t].turns
                ));
            }
        }
        table.push((name, link, n, initial, resync));
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
    println!(
        "| link | messages | step | tool | time | round trips | MB down | link limit | share of limit | vs mbsync |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let names = ["backproc", "backproc, no COMPRESS", "mbsync"];
    for (name, link, n, initial, resync) in &table {
        for (step, rows) in [("initial sync", initial), ("no-change resync", resync)] {
            let mbsync = rows[2].median();
            for (t, r) in rows.iter().enumerate() {
                let limit = r.down as f64 / link.rate as f64 + r.turns as f64 * link.rtt.as_secs_f64();
                println!(
                    "| {name} | {n} | {step} | {} | {:.2} s | {} | {:.1} | {:.2} s | {:.0} % | {:.2} |",
                    names[t],
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
