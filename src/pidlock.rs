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
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o660)
        .open(&path)
        .with_context(|| format!("cannot open pid file {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            // Truncate only once we own the lock: the loser must not erase the winner's pid.
            lock.set_len(0)?;
            lock.seek(SeekFrom::Start(0))?;
            // No fsync: the flock, not the file, says a master runs, and the pid only has to
            // outlive this process, not a power cut (which ends the master too).
            writeln!(lock, "{}", std::process::id())?;
            Ok(Acquire::Master(PidLock { _lock: lock }))
        }
        Err((_, Errno::EWOULDBLOCK)) => Ok(Acquire::Busy(read_pid(&path))),
        Err((_, e)) => Err(e).with_context(|| format!("cannot lock pid file {}", path.display())),
    }
}

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
