//! The collected samples and the tables printed at the end (Markdown, so they can be pasted
//! into bench/README.md as they are).

use std::collections::BTreeMap;

use crate::measure::{Sample, median, stats};

/// The seed engine's figure: 31,468 messages in 432 s.
const SEED_RATE: f64 = 31_468.0 / 432.0;

pub struct Results {
    messages: usize,
    send: usize,
    samples: BTreeMap<String, Vec<Sample>>,
    sizes: BTreeMap<String, Vec<f64>>,
    pub sched: serde_json::Value,
    /// Folders of the many-folders step.
    pub folders: usize,
}

impl Results {
    pub fn new(messages: usize, send: usize) -> Results {
        Results {
            messages,
            send,
            samples: BTreeMap::new(),
            sizes: BTreeMap::new(),
            sched: serde_json::Value::Null,
            folders: 0,
        }
    }

    pub fn add(&mut self, key: &str, s: Sample) {
        self.samples.entry(key.to_owned()).or_default().push(s);
    }

    /// Drops the samples whose key starts with `prefix` (an untimed preparation run).
    pub fn samples_clear(&mut self, prefix: &str) {
        self.samples.retain(|k, _| !k.starts_with(prefix));
    }

    pub fn size(&mut self, label: &str, mb: f64) {
        self.sizes.entry(label.to_owned()).or_default().push(mb);
    }

    pub fn last(&self, key: &str) -> f64 {
        self.samples.get(key).and_then(|v| v.last()).map(|s| s.secs).unwrap_or(f64::NAN)
    }

    fn secs(&self, key: &str) -> Vec<f64> {
        self.samples.get(key).map(|v| v.iter().map(|s| s.secs).collect()).unwrap_or_default()
    }

    fn med(&self, key: &str) -> f64 {
        median(&self.secs(key))
    }

    fn rss(&self, key: &str) -> f64 {
        self.samples.get(key).map(|v| v.iter().map(|s| s.rss_mb).fold(f64::NAN, f64::max)).unwrap_or(f64::NAN)
    }

    /// One table row: `backproc` is the key whose ratio to this row is printed (None for
    /// backproc's own row).
    fn row(&self, step: &str, tool: &str, key: &str, backproc: Option<&str>) {
        if !self.samples.contains_key(key) {
            return; // a step left out with --only
        }
        let (m, lo, hi) = stats(&self.secs(key));
        let ratio = backproc.map(|b| format!("{:.2}", self.med(b) / m)).unwrap_or_else(|| "—".into());
        println!("| {step} | {tool} | {m:.2} | {lo:.2} | {hi:.2} | {:.0} | {ratio} |", self.rss(key));
    }

    pub fn print(&self, runs: usize) {
        let n = self.messages;
        println!("\n## backproc benchmark: {n} messages, {runs} run(s) per row\n");
        println!("| step | tool | median s | min s | max s | peak RSS MB | backproc ÷ this |");
        println!("|---|---|---:|---:|---:|---:|---:|");
        for medium in ["disk", "tmpfs"] {
            let step = format!("initial sync, {medium}");
            let b = format!("initial/{medium}/backproc");
            self.row(&step, "backproc", &b, None);
            self.row(&step, "mbsync", &format!("initial/{medium}/mbsync"), Some(&b));
            self.row(&step, "raw wire (UID FETCH 1:*)", "raw", Some(&b));
        }
        self.row("no-change resync, disk", "backproc", "resync/backproc", None);
        self.row("no-change resync, disk", "mbsync", "resync/mbsync", Some("resync/backproc"));
        self.row("incremental (+100 msgs, 500 flags), disk", "backproc", "incremental/backproc", None);
        self.row(
            "incremental (+100 msgs, 500 flags), disk",
            "mbsync",
            "incremental/mbsync",
            Some("incremental/backproc"),
        );
        let f = self.folders;
        self.row(&format!("{f} folders, first pass, disk"), "backproc", "folders/first/backproc", None);
        self.row(
            &format!("{f} folders, first pass, disk"),
            "mbsync",
            "folders/first/mbsync",
            Some("folders/first/backproc"),
        );
        self.row(&format!("{f} folders, no-change pass, disk"), "backproc", "folders/resync/backproc", None);
        self.row(
            &format!("{f} folders, no-change pass, disk"),
            "mbsync",
            "folders/resync/mbsync",
            Some("folders/resync/backproc"),
        );

        // Steps left out with --only print no section.
        let mut pars: Vec<String> = self
            .samples
            .keys()
            .filter_map(|k| k.strip_prefix("send/").and_then(|k| k.split('/').next()).map(str::to_owned))
            .collect();
        pars.dedup();
        if !pars.is_empty() {
            println!("\n### send: {} messages of ~5 KB to smtp-sink\n", self.send);
            println!(
                "| parallelism | tool | median s | min s | max s | msgs/s (median) | peak RSS MB | backproc time ÷ this | backproc msgs/s ÷ this |"
            );
            println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        }
        for p in &pars {
            let b = format!("send/{p}/backproc");
            for (tool, key) in [("backproc", b.clone()), ("smtp-source", format!("send/{p}/smtp-source"))] {
                let (m, lo, hi) = stats(&self.secs(&key));
                let rate = self.send as f64 / m;
                let (rt, rr) = if key == b {
                    ("—".to_owned(), "—".to_owned())
                } else {
                    (format!("{:.2}", self.med(&b) / m), format!("{:.2}", (self.send as f64 / self.med(&b)) / rate))
                };
                println!(
                    "| {p} | {tool} | {m:.2} | {lo:.2} | {hi:.2} | {rate:.0} | {:.0} | {rt} | {rr} |",
                    self.rss(&key)
                );
            }
        }

        println!("\n### size on disk (du)\n");
        println!("| what | median MB | max MB |");
        println!("|---|---:|---:|");
        for (k, v) in &self.sizes {
            let (m, _, hi) = stats(v);
            println!("| {k} | {m:.0} | {hi:.0} |");
        }

        let s = &self.sched;
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        if !s.is_null() {
            println!(
                "\n### scheduler tick: {} accounts, {} folders (store built in {:.0}s, {:.0} MB)\n",
                s["accounts"],
                s["folders"],
                s["build_secs"].as_f64().unwrap_or(f64::NAN),
                s["store_mb"].as_f64().unwrap_or(f64::NAN)
            );
            println!("| what | median ms | min ms | max ms |");
            println!("|---|---:|---:|---:|");
            for (label, key) in [
                ("Store::schedule_candidates (folders past a due cut, indexed)", "schedule_candidates_ms"),
                ("Scheduler::due + due receives (steady ticks)", "due_ms"),
                ("whole tick: heartbeat + metrics + due (steady ticks)", "tick_ms"),
            ] {
                println!(
                    "| {label} | {:.1} | {:.1} | {:.1} |",
                    f(&s[key]["median"]),
                    f(&s[key]["min"]),
                    f(&s[key]["max"])
                );
            }
            println!(
                "| first tick of a fresh master (Scheduler::due, {} tasks before the per-tick cap) | {:.1} | | |",
                s["due_first_tasks"],
                f(&s["due_first_ms"])
            );
            println!(
                "\nprocess peak RSS {:.0} MB (VmHWM), {:.0} MB at the end",
                f(&s["vm_hwm_mb"]),
                f(&s["vm_rss_mb"])
            );
        }

        let disk = self.med("initial/disk/backproc");
        let tmpfs = self.med("initial/tmpfs/backproc");
        println!(
            "\ninitial sync: {:.0} msgs/s on disk ({:.1}× the seed's {SEED_RATE:.0} msgs/s), {:.0} msgs/s on tmpfs ({:.1}×)",
            n as f64 / disk,
            n as f64 / disk / SEED_RATE,
            n as f64 / tmpfs,
            n as f64 / tmpfs / SEED_RATE
        );

        println!("\n### targets (issue 9)\n");
        if cfg!(debug_assertions) {
            // `bench/run --smoke` (CI) uses the debug build: it checks the harness, not speed.
            println!("(debug build: the figures above check the harness only, they are not measurements)\n");
        }
        let check = |what: &str, value: f64, op: &str, limit: f64| {
            if value.is_nan() {
                return println!("- {what}: not run");
            }
            let ok = if op == "≤" { value <= limit } else { value >= limit };
            println!("- {what}: {value:.2} {op} {limit} → {}", if ok { "met" } else { "NOT met" });
        };
        check("initial sync on disk, backproc ÷ mbsync", disk / self.med("initial/disk/mbsync"), "≤", 0.8);
        check("initial sync on tmpfs, backproc ÷ mbsync", tmpfs / self.med("initial/tmpfs/mbsync"), "≤", 1.0);
        check("initial sync on tmpfs, backproc ÷ raw wire", tmpfs / self.med("raw"), "≤", 1.5);
        check("no-change resync, backproc ÷ mbsync", self.med("resync/backproc") / self.med("resync/mbsync"), "≤", 0.5);
        check(
            "incremental, backproc ÷ mbsync",
            self.med("incremental/backproc") / self.med("incremental/mbsync"),
            "≤",
            0.5,
        );
        for p in &pars {
            check(
                &format!("send (parallelism {p}), backproc msgs/s ÷ smtp-source msgs/s"),
                self.med(&format!("send/{p}/smtp-source")) / self.med(&format!("send/{p}/backproc")),
                "≥",
                0.8,
            );
        }
        check(
            "peak RSS of backproc's initial sync (MB)",
            self.rss("initial/disk/backproc").max(self.rss("initial/tmpfs/backproc")),
            "≤",
            64.0,
        );
        check(
            &format!("{} folders in one pass, backproc's first pass (s, issue 24)", self.folders),
            self.med("folders/first/backproc"),
            "≤",
            30.0,
        );
        check("scheduler tick (median ms, issue 4)", f(&s["tick_ms"]["median"]), "≤", 50.0);
        check("scheduler process peak RSS (MB, issue 4)", f(&s["vm_hwm_mb"]), "≤", 200.0);
    }
}
