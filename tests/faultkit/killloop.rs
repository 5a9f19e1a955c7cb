//! Start the engine, SIGKILL it after a seeded random delay, repeat: reproducible crash points.

use std::process::Child;
use std::time::{Duration, Instant};

use super::Rng;
use crate::util::Home;

/// One kill of the loop.
#[derive(Debug, Clone)]
pub struct Kill {
    /// Milliseconds after the spawn at which SIGKILL was sent.
    pub delay_ms: u64,
    /// Whether the process was still running when it was killed (otherwise it had finished).
    pub alive: bool,
}

/// Spawns `args` in `home`, sleeps a delay drawn from `rng` in `min_ms..max_ms`, sends SIGKILL
/// and reaps the process.
pub fn spawn_and_kill(home: &Home, args: &[&str], rng: &mut Rng, min_ms: u64, max_ms: u64) -> Kill {
    let delay_ms = rng.range(min_ms, max_ms);
    let mut child = home.spawn(args);
    let started = Instant::now();
    let alive = sleep_unless_exited(&mut child, started + Duration::from_millis(delay_ms));
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    Kill { delay_ms, alive }
}

/// Sleeps until `until`, returning early (false) if the child exits first; true if it is
/// still running at `until`.
fn sleep_unless_exited(child: &mut Child, until: Instant) -> bool {
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(5)));
    }
}

/// Runs `spawn_and_kill` until `done()` is true or `max_rounds` kills happened, calling
/// `after` after every kill (with the kill and its index). Returns every kill.
pub fn kill_loop(
    home: &Home,
    args: &[&str],
    seed: u64,
    (min_ms, max_ms): (u64, u64),
    max_rounds: usize,
    mut done: impl FnMut() -> bool,
    mut after: impl FnMut(usize, &Kill),
) -> Vec<Kill> {
    let mut rng = Rng::new(seed);
    let mut kills = Vec::new();
    for i in 0..max_rounds {
        if done() {
            break;
        }
        let k = spawn_and_kill(home, args, &mut rng, min_ms, max_ms);
        after(i, &k);
        kills.push(k);
    }
    kills
}
