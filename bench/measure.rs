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
