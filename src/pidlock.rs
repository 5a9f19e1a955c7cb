//! The master's pid file: `pid/engine.pid`, held with a non-blocking `flock`.
//!
//! The lock, not the file's existence, says whether a master runs: the kernel drops a flock
//! when its process dies, so a pid file left by a `kill -9` never blocks the next start.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

pub const PID_FILE: &str = "engine.pid";

/// Held for the master's whole life; dropping it releases the lock.
pub struct PidLock {
    _lock: Flock<File>,
}

pub enum Acquire {
    Master(PidLock),
    /// Another process holds the lock; its pid as written in the file, if readable.
    Busy(Option<i32>),
}

pub fn acquire(dir: &Path) -> anyhow::Result<Acquire> {
    let path = dir.join(PID_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o660)
        .open(&path)
        .with_context(|| format!("cannot open pid file {}", path.display()))?;
    // `is_held` (every `status`, every `stop`) holds a shared lock for a moment; a start that
    // met one would take it for a running master and exit, with no master at all (the demo's
    // status loop made the first `run` of a fresh home do exactly that). A prober holds it
    // for two system calls, a master for its life: a few tries tell them apart.
    let mut tries = 0;
    let mut lock = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => break lock,
            Err((f, Errno::EWOULDBLOCK)) if tries < PROBE_TRIES => {
                file = f;
                tries += 1;
                std::thread::sleep(PROBE_WAIT);
            }
            Err((_, Errno::EWOULDBLOCK)) => return Ok(Acquire::Busy(read_pid(&path))),
            Err((_, e)) => return Err(e).with_context(|| format!("cannot lock pid file {}", path.display())),
        }
    };
    // Truncate only once we own the lock: the loser must not erase the winner's pid.
    lock.set_len(0)?;
    lock.seek(SeekFrom::Start(0))?;
    // No fsync: the flock, not the file, says a master runs, and the pid only has to
    // outlive this process, not a power cut (which ends the master too).
    writeln!(lock, "{}", std::process::id())?;
    Ok(Acquire::Master(PidLock { _lock: lock }))
}

/// How often and how long `acquire` tries again when the lock is taken: 10 × 20 ms, far
/// longer than a probe holds it, and short beside cron's five minutes.
const PROBE_TRIES: u32 = 10;
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// The pid written in the file, whether or not a master holds it.
pub fn read_pid(path: &Path) -> Option<i32> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    s.trim().parse().ok().filter(|p| *p > 0)
}

/// Whether some process holds the lock now (probes with a shared non-blocking lock).
pub fn is_held(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join(PID_FILE)) else {
        return false;
    };
    matches!(Flock::lock(file, FlockArg::LockSharedNonblock), Err((_, Errno::EWOULDBLOCK)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `status` probing the lock at the moment a master starts must not make the start
    /// think a master runs (the cause of the demo that hung): a probe in flight, held here
    /// for 40 ms, delays the start, and the start becomes the master.
    #[test]
    fn a_probe_never_turns_a_start_away() {
        let dir = tempfile::tempdir().unwrap();
        File::create(dir.path().join(PID_FILE)).unwrap();
        let probe = Flock::lock(File::open(dir.path().join(PID_FILE)).unwrap(), FlockArg::LockSharedNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        let start = {
            let dir = dir.path().to_owned();
            std::thread::spawn(move || matches!(acquire(&dir).unwrap(), Acquire::Master(_)))
        };
        std::thread::sleep(std::time::Duration::from_millis(40));
        drop(probe);
        assert!(start.join().unwrap(), "the start was turned away by a probe");
        // A real master still turns a second start away.
        let Acquire::Master(_held) = acquire(dir.path()).unwrap() else { panic!("first start") };
        assert!(matches!(acquire(dir.path()).unwrap(), Acquire::Busy(Some(p)) if p == std::process::id() as i32));
    }
}
