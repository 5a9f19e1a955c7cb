//! 50 simultaneous launches on one home (issue 11, item 11): exactly one master; every other
//! start exits 0, silently, within a second of its own start.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::util::*;

const LAUNCHES: usize = 50;

struct Launch {
    child: Child,
    started: Instant,
    exited: Option<(Instant, ExitStatus)>,
}

#[test]
fn fifty_simultaneous_launches_leave_exactly_one_master_and_the_rest_exit_at_once() {
    let home = Home::with_config("<?php\ndefine('BG_TICK_INTERVAL', 1);\n");
    // the store and the directories exist already, as they do for cron after the first start
    assert!(home.run(&["user", "add", "someone"]).status.success());

    let mut launches: Vec<Launch> = (0..LAUNCHES)
        .map(|_| {
            let started = Instant::now();
            Launch { child: home.spawn(&["run"]), started, exited: None }
        })
        .collect();
    // reap as they exit, noting when; the master never does
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && launches.iter().filter(|l| l.exited.is_none()).count() > 1 {
        for l in launches.iter_mut().filter(|l| l.exited.is_none()) {
            if let Ok(Some(st)) = l.child.try_wait() {
                l.exited = Some((Instant::now(), st));
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // give a wrongly-second master time to show itself
    std::thread::sleep(Duration::from_millis(1500));
    for l in launches.iter_mut().filter(|l| l.exited.is_none()) {
        if let Ok(Some(st)) = l.child.try_wait() {
            l.exited = Some((Instant::now(), st));
        }
    }

    let running: Vec<u32> = launches.iter().filter(|l| l.exited.is_none()).map(|l| l.child.id()).collect();
    let cleanup = |launches: &mut Vec<Launch>| {
        for l in launches.iter_mut().filter(|l| l.exited.is_none()) {
            let _ = l.child.kill();
            let _ = l.child.wait();
        }
    };
    if running.len() != 1 {
        cleanup(&mut launches);
        panic!("{} processes still running, expected exactly one master: {running:?}", running.len());
    }
    let master_pid = running[0];
    let pid_file = std::fs::read_to_string(home.file("pid/engine.pid")).unwrap_or_default();
    let alive = std::path::Path::new(&format!("/proc/{master_pid}")).exists();

    let mut problems = Vec::new();
    let mut slowest = Duration::ZERO;
    for l in launches.iter_mut().filter(|l| l.exited.is_some()) {
        let (at, st) = l.exited.unwrap();
        let took = at - l.started;
        slowest = slowest.max(took);
        let out = l.child.wait_with_output_ref();
        if !st.success() {
            problems.push(format!("pid {} exited with {st}", l.child.id()));
        }
        if took > Duration::from_secs(1) {
            problems.push(format!("pid {} took {took:?} to exit", l.child.id()));
        }
        if !out.0.is_empty() || !out.1.is_empty() {
            problems.push(format!(
                "pid {} printed stdout {:?} stderr {:?}",
                l.child.id(),
                String::from_utf8_lossy(&out.0),
                String::from_utf8_lossy(&out.1)
            ));
        }
    }
    eprintln!("slowest non-master exit: {slowest:?}");

    let stop = home.run(&["stop"]);
    let master = launches.iter_mut().find(|l| l.exited.is_none()).unwrap();
    let master_status = wait_timeout(&mut master.child, Duration::from_secs(40));
    cleanup(&mut launches);

    assert_eq!(pid_file.trim(), master_pid.to_string(), "the pid file must name the running master");
    assert!(alive, "the master {master_pid} is not alive");
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
    assert!(stop.status.success(), "stop: {}", stderr(&stop));
    assert!(stdout(&stop).contains(&format!("master (pid {master_pid}) stopped")), "{}", stdout(&stop));
    assert!(master_status.is_some_and(|s| s.success()), "the master's exit: {master_status:?}");
    let info = home.log("l-info.log");
    assert_eq!(info.matches("master started").count(), 1, "{info}");
}

fn wait_timeout(c: &mut Child, d: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Reads what an already-reaped child wrote to its piped stdout and stderr.
trait DrainOutput {
    fn wait_with_output_ref(&mut self) -> (Vec<u8>, Vec<u8>);
}

impl DrainOutput for Child {
    fn wait_with_output_ref(&mut self) -> (Vec<u8>, Vec<u8>) {
        use std::io::Read;
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(mut s) = self.stdout.take() {
            let _ = s.read_to_end(&mut out);
        }
        if let Some(mut s) = self.stderr.take() {
            let _ = s.read_to_end(&mut err);
        }
        (out, err)
    }
}
