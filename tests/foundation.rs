//! The engine's foundation, as cron and an administrator use it: config, single master,
//! logs, signals, permissions. Real processes, real files.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::util::{Home, stderr, stdout, wait_until};

fn kill(pid: u32, sig: i32) {
    // SAFETY-free: libc::kill via the nix-free std path is not available; use the kill command.
    let status = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

fn pid_in_file(h: &Home) -> Option<u32> {
    std::fs::read_to_string(h.file("pid/engine.pid")).ok()?.trim().parse().ok()
}

#[test]
fn config_prints_every_constant_with_its_source() {
    let h = Home::with_config("<?php\n// app settings\ndefine('APP_NAME', 'x');\ndefine('BG_MAX_THREADS', 3);\n");
    let o = h.run(&["config"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let line = out.lines().find(|l| l.starts_with("BG_MAX_THREADS ")).expect("BG_MAX_THREADS listed");
    assert!(line.contains(" 3 ") && line.ends_with("config.inc:4"), "{line}");
    let line = out.lines().find(|l| l.starts_with("EMAIL_BG_LO_FOLDERS_SYNC_START ")).unwrap();
    assert!(line.contains("'20:00'") && line.ends_with("default"), "{line}");
    assert!(!out.contains("APP_NAME"));

    let o = h.run(&["config", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert!(arr.len() >= 11);
    let t = arr.iter().find(|e| e["name"] == "BG_MAX_THREADS").unwrap();
    assert_eq!(t["value"], 3);
    assert_eq!(t["source"], "config.inc:4");
    let s = arr.iter().find(|e| e["name"] == "EMAIL_BACKGROUND_SYNC_ENABLED").unwrap();
    assert_eq!(s["value"], false);
    assert_eq!(s["source"], "default");
    // reading the config creates nothing
    assert!(!h.file("logs").exists() && !h.file("data").exists());
}

#[test]
fn invalid_config_exits_78_and_starts_nothing() {
    let h = Home::with_config(
        "<?php\ndefine('BG_MAX_THREADS', 0);\n\ndefine('EMAIL_BG_LO_FOLDERS_SYNC_START', '25:61');\n",
    );
    for args in [&["config"][..], &["run", "--once"][..]] {
        let o = h.run(args);
        assert_eq!(o.status.code(), Some(78), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains("config.inc:2") && err.contains("BG_MAX_THREADS"), "{err}");
        assert!(err.contains("config.inc:4") && err.contains("EMAIL_BG_LO_FOLDERS_SYNC_START"), "{err}");
    }
    assert!(!h.file("pid/engine.pid").exists());
    assert!(!h.file("data").exists());
}

#[test]
fn usage_errors_exit_2() {
    let h = Home::new();
    assert_eq!(h.run(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(h.run(&["run", "--bogus"]).status.code(), Some(2));
}

#[test]
fn missing_config_means_defaults_said_once_in_the_log() {
    let h = Home::new();
    let o = h.run(&["run", "--once"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info = h.log("l-info.log");
    assert_eq!(info.matches("not found: running with all defaults").count(), 1, "{info}");
}

#[test]
fn worker_log_line_has_the_exact_format_and_files_are_private() {
    let h = Home::new();
    let o = h.run(&["run", "--once"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info = h.log("l-info.log");
    // A new store's first run prunes history on a worker.
    let re = regex::Regex::new(
        r"(?m)^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]\[#(\d+)\.t[1-9]\d*\] deleted 0 history record\(s\) older than 30 days$",
    )
    .unwrap();
    let caps = re.captures(&info).unwrap_or_else(|| panic!("no worker line in:\n{info}"));
    assert!(caps[2].parse::<u32>().unwrap() > 1);
    // the master's lines are t0
    assert!(regex::Regex::new(r"(?m)^\[[^\]]+\]\[#\d+\.t0\] master started").unwrap().is_match(&info), "{info}");
    // every line of every log has the format
    let line = regex::Regex::new(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]\[#\d+\.t\d+\] .*$").unwrap();
    for name in ["l-info.log", "l-debug.log"] {
        for l in h.log(name).lines() {
            assert!(line.is_match(l), "{name}: {l:?}");
        }
    }
    // nothing created is readable by "other"
    for dir in ["data", "logs", "pid"] {
        for e in walk(&h.file(dir)) {
            let mode = std::fs::metadata(&e).unwrap().permissions().mode();
            assert_eq!(mode & 0o007, 0, "{} has mode {mode:o}", e.display());
        }
    }
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            out.extend(walk(&e.unwrap().path()));
        }
    }
    out
}

#[test]
fn logs_rotate_at_the_configured_size() {
    let h = Home::with_config("<?php define('BG_LOG_MAX_SIZE', 1024); define('BG_LOG_KEEP', 2);");
    // Each run writes its start and stop (about 150 bytes): 40 of them fill six files'
    // worth of the 1 KB limit.
    for _ in 0..40 {
        let o = h.run(&["run", "--once"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let size = |n: &str| std::fs::metadata(h.file(n)).map(|m| m.len()).ok();
    assert!(size("logs/l-info.1.log").is_some(), "no rotated file");
    assert!(size("logs/l-info.3.log").is_none(), "kept more than BG_LOG_KEEP");
    // a rotated file holds about the limit (one line may straddle it)
    assert!(size("logs/l-info.1.log").unwrap() <= 1024 + 200);
}

#[test]
fn one_master_among_simultaneous_starts_and_a_killed_master_is_replaced() {
    let h = Home::new();
    // two at the same moment
    let mut a = h.spawn(&["run"]);
    let mut b = h.spawn(&["run"]);
    let t0 = Instant::now();
    let (mut master, loser) = loop {
        if let Some(s) = a.try_wait().unwrap() {
            assert!(s.success());
            break (b, t0.elapsed());
        }
        if let Some(s) = b.try_wait().unwrap() {
            assert!(s.success());
            break (a, t0.elapsed());
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "neither start exited");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(loser < Duration::from_secs(2), "the second start took {loser:?}");
    assert!(wait_until(Duration::from_secs(5), || pid_in_file(&h) == Some(master.id())));
    std::thread::sleep(Duration::from_millis(300));
    assert!(master.try_wait().unwrap().is_none(), "the master must stay up");

    // 20 more starts in a loop: each exits 0 quickly and the master stays the same
    for _ in 0..20 {
        let t = Instant::now();
        let o = h.run(&["run"]);
        assert!(o.status.success());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(stdout(&o).is_empty() && stderr(&o).is_empty(), "cron must see nothing");
    }
    assert_eq!(pid_in_file(&h), Some(master.id()));

    // kill -9: the stale pid file does not block the next master
    kill(master.id(), 9);
    master.wait().unwrap();
    let mut next = h.spawn(&["run"]);
    assert!(wait_until(Duration::from_secs(5), || pid_in_file(&h) == Some(next.id())));
    std::thread::sleep(Duration::from_millis(200));
    assert!(next.try_wait().unwrap().is_none(), "the new master must stay up");
    // `stop` stops it
    let o = h.run(&["stop"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let status = next.wait().unwrap();
    assert!(status.success());
    assert!(!alive(next.id()));
}

#[test]
fn config_changes_are_picked_up_and_invalid_ones_rejected() {
    let h = Home::with_config("<?php define('BG_TICK_INTERVAL', 1);");
    let mut master = h.spawn(&["run"]);
    assert!(wait_until(Duration::from_secs(5), || h.log("l-info.log").contains("master started")));
    std::thread::sleep(Duration::from_millis(1100)); // a different mtime second
    h.write_config("<?php define('BG_TICK_INTERVAL', 1); define('BG_MAX_THREADS', 0);");
    assert!(wait_until(Duration::from_secs(5), || h.log("l-info.log").contains("changed but is invalid")));
    let info = h.log("l-info.log");
    assert!(info.contains("BG_MAX_THREADS"), "{info}");
    std::thread::sleep(Duration::from_millis(1100));
    h.write_config("<?php define('BG_TICK_INTERVAL', 1); define('BG_MAX_THREADS', 2);");
    assert!(wait_until(Duration::from_secs(5), || h.log("l-info.log").contains("new settings applied")));
    assert!(master.try_wait().unwrap().is_none(), "the master keeps running");
    kill(master.id(), 15);
    assert!(master.wait().unwrap().success());
}
