//! Running a timed child process (wall time from here, peak RSS from `/usr/bin/time`), and
//! the statistics the table prints.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// One timed run of a child process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub secs: f64,
    /// Peak resident set size of the child in MB (`/usr/bin/time -f %M`).
    pub rss_mb: f64,
}

/// Runs `cmd` under `/usr/bin/time -f %M` and returns its wall time and peak RSS; panics with
/// the child's stderr when it fails (a benchmark of a failing run would be meaningless).
pub fn timed(what: &str, program: &Path, args: &[&str], scratch: &Path) -> Sample {
    let rss_file = scratch.join(format!("rss-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&rss_file);
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run /usr/bin/time {}: {e}", program.display()));
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rss_kb: f64 = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|t| t.lines().rev().find_map(|l| l.trim().parse().ok()))
        .unwrap_or(f64::NAN);
    Sample { secs, rss_mb: rss_kb / 1024.0 }
}

/// Flushes dirty pages so one tool does not pay for the previous tool's writes.
pub fn sync_disks() {
    let _ = Command::new("sync").status();
}

/// Disk usage of a directory tree in MB (`du -sk`).
pub fn du_mb(p: &Path) -> f64 {
    let out = Command::new("du").arg("-sk").arg(p).output().expect("run du");
    let kb: f64 =
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    kb / 1024.0
}

/// Median, min and max of a non-empty list.
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    (med, s[0], s[n - 1])
}

pub fn median(v: &[f64]) -> f64 {
    stats(v).0
}

/// Removes a directory tree if it exists.
pub fn clean(p: &Path) {
    if p.exists() {
        std::fs::remove_dir_all(p).unwrap_or_else(|e| panic!("cannot remove {}: {e}", p.display()));
    }
}

/// The machine's cores, for a share of all of them.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU time so far, in seconds: of the machine (every core's busy time, from /proc/stat),
/// and of one server (its process group `pgid`'s processes alive now, plus the children its
/// leader has reaped: Dovecot starts a process per connection). The differences over a run
/// say whether the machine, and how much of it the server, was busy.
#[derive(Clone, Copy, Default)]
pub struct Cpu {
    pub machine: f64,
    pub server: f64,
}

impl Cpu {
    pub fn now(pgid: u32) -> Cpu {
        let tick = 100.0; // USER_HZ on Linux
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| {
                let f: Vec<u64> = t.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
                // busy: all but idle (3) and iowait (4)
                Some(f.iter().sum::<u64>() - f.get(3)? - f.get(4)?)
            })
            .unwrap_or(0) as f64
            / tick;
        let mut server = 0u64;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
            // the fields after the command name, which may hold spaces
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            // pgrp is field 5 of stat(5), index 2 here; utime, stime, cutime, cstime 14–17
            if n(2) == u64::from(pgid) {
                server += n(11) + n(12);
                if e.file_name().to_str() == Some(&pgid.to_string()) {
                    server += n(13) + n(14);
                }
            }
        }
        Cpu { machine, server: server as f64 / tick }
    }

    pub fn since(self, before: Cpu) -> Cpu {
        Cpu { machine: self.machine - before.machine, server: self.server - before.server }
    }
}
