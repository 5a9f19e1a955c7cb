//! Worker threads, each with two bounded queues (urgent and bulk), and account affinity.
//!
//! Invariants:
//! - at most `max` threads exist; they are spawned lazily, when a task first needs one;
//! - all tasks of one account go to the same worker (`affinity`), so one account never has
//!   two sessions competing;
//! - a full queue refuses the task (`Offer::Full`): the caller keeps it due (back-pressure);
//! - a panicking task becomes a `FailureKind::Panic` outcome and the worker goes on; a worker
//!   that dies anyway is noticed by `reap` and replaced.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, select};

use crate::task::{Failure, FailureKind, Outcome, Report, Task};

/// Executes tasks on one worker thread; owns that worker's sessions and store connection.
pub trait Runner: Send {
    fn run(&mut self, task: &Task) -> Result<Report, Failure>;
    /// Called when the worker has had nothing to do for a while (close idle sessions).
    fn idle(&mut self) {}
}

pub type RunnerFactory = Arc<dyn Fn(usize) -> Box<dyn Runner> + Send + Sync>;

struct Worker {
    urgent: Sender<Task>,
    bulk: Sender<Task>,
    alive: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

pub enum Offer {
    Queued { worker: usize },
    Full,
}

pub struct Pool {
    workers: Vec<Option<Worker>>,
    max: usize,
    capacity: usize,
    affinity: HashMap<u64, usize>,
    outcomes: Sender<Outcome>,
    factory: RunnerFactory,
    stopping: Arc<AtomicBool>,
    idle_every: Duration,
    /// A worker thread sends on it as it ends, so `join` wakes at once instead of polling.
    exited: (Sender<()>, Receiver<()>),
}

impl Pool {
    pub fn new(max: usize, capacity: usize, outcomes: Sender<Outcome>, factory: RunnerFactory) -> Pool {
        Pool {
            workers: Vec::new(),
            max: max.max(1),
            capacity: capacity.max(1),
            affinity: HashMap::new(),
            outcomes,
            factory,
            stopping: Arc::new(AtomicBool::new(false)),
            idle_every: Duration::from_secs(5),
            exited: crossbeam_channel::unbounded(),
        }
    }

    /// New limits apply to threads spawned and accounts assigned from now on.
    pub fn set_limits(&mut self, max: usize, capacity: usize) {
        self.max = max.max(1);
        self.capacity = capacity.max(1);
    }

    pub fn threads(&self) -> usize {
        self.workers.iter().filter(|w| w.is_some()).count()
    }

    /// The worker index for an affinity key: sticky once chosen.
    pub fn worker_for(&mut self, key: u64) -> usize {
        let max = self.max;
        *self.affinity.entry(key).or_insert_with(|| (key % max as u64) as usize)
    }

    pub fn offer(&mut self, task: Task) -> Offer {
        let idx = self.worker_for(task.affinity());
        if self.workers.len() <= idx {
            self.workers.resize_with(idx + 1, || None);
        }
        if self.workers[idx].is_none() {
            self.workers[idx] = Some(self.spawn(idx));
        }
        let w = self.workers[idx].as_ref().expect("spawned above");
        let lane = if task.job.urgent() { &w.urgent } else { &w.bulk };
        match lane.try_send(task) {
            Ok(()) => Offer::Queued { worker: idx },
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Offer::Full,
        }
    }

    fn spawn(&self, idx: usize) -> Worker {
        let (urgent_tx, urgent_rx) = bounded(self.capacity);
        let (bulk_tx, bulk_rx) = bounded(self.capacity);
        let alive = Arc::new(AtomicBool::new(true));
        let ctx = WorkerLoop {
            idx,
            urgent: urgent_rx,
            bulk: bulk_rx,
            outcomes: self.outcomes.clone(),
            stopping: self.stopping.clone(),
            alive: alive.clone(),
            exited: self.exited.0.clone(),
            idle_every: self.idle_every,
        };
        let factory = self.factory.clone();
        let join = std::thread::Builder::new()
            .name(format!("t{}", idx + 1))
            .spawn(move || ctx.run(factory))
            .expect("cannot spawn a worker thread");
        log::debug!("started worker t{}", idx + 1);
        Worker { urgent: urgent_tx, bulk: bulk_tx, alive, join: Some(join) }
    }

    /// Replaces workers whose thread died; returns their indexes (their queued and running
    /// tasks are lost from the queue and must be forgotten by the caller, which re-offers
    /// them when they are due again: the store is the truth).
    pub fn reap(&mut self) -> Vec<usize> {
        let mut dead = Vec::new();
        for (i, slot) in self.workers.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|w| !w.alive.load(Ordering::SeqCst)) {
                log::error!(target: "threading", "worker t{} died; replacing it", i + 1);
                *slot = None;
                dead.push(i);
            }
        }
        dead
    }

    /// Stop taking new work: workers finish the task they run and exit.
    /// Returns the threads' join handles so the caller can wait with its own deadline.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Dropping the senders wakes idle workers.
        for w in self.workers.iter_mut().flatten() {
            let (dead_tx, _) = bounded(0);
            w.urgent = dead_tx.clone();
            w.bulk = dead_tx;
        }
    }

    /// Waits until every worker has exited or `deadline` passes; returns whether all exited.
    pub fn join(&mut self, deadline: Instant) -> bool {
        loop {
            // A worker marks itself dead as the last thing its thread does (`AliveGuard`), so
            // joining it then waits for nothing more than the thread's return.
            let all = self
                .workers
                .iter()
                .flatten()
                .all(|w| w.join.as_ref().is_none_or(|j| j.is_finished() || !w.alive.load(Ordering::SeqCst)));
            if all {
                for w in self.workers.iter_mut().flatten() {
                    if let Some(j) = w.join.take() {
                        let _ = j.join();
                    }
                }
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // Woken by any worker's end (a one-shot `run --once` waits here, and cron on it).
            let _ = self.exited.1.recv_deadline(deadline);
        }
    }
}

struct WorkerLoop {
    idx: usize,
    urgent: Receiver<Task>,
    bulk: Receiver<Task>,
    outcomes: Sender<Outcome>,
    stopping: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
    exited: Sender<()>,
    idle_every: Duration,
}

/// Marks the worker dead however its thread ends, and says so to `Pool::join`.
struct AliveGuard(Arc<AtomicBool>, Sender<()>);
impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
        let _ = self.1.send(());
    }
}

impl WorkerLoop {
    fn run(self, factory: RunnerFactory) {
        let _guard = AliveGuard(self.alive.clone(), self.exited.clone());
        log_mdc::insert("thread", format!("t{}", self.idx + 1));
        let mut runner = factory(self.idx);
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            // Urgent lane first; then whichever lane has work; idle housekeeping otherwise.
            let task = match self.urgent.try_recv() {
                Ok(t) => t,
                Err(_) => select! {
                    recv(self.urgent) -> t => match t { Ok(t) => t, Err(_) => break },
                    recv(self.bulk) -> t => match t { Ok(t) => t, Err(_) => break },
                    default(self.idle_every) => { runner.idle(); continue; }
                },
            };
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            let result = match catch_unwind(AssertUnwindSafe(|| runner.run(&task))) {
                Ok(r) => r,
                Err(payload) => {
                    let msg = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic payload".into());
                    log::error!(target: "threading", "task {task} panicked: {msg}");
                    Err(Failure::new(FailureKind::Panic, format!("task panicked: {msg}")))
                }
            };
            // Clear any account/folder context a job left behind.
            log_mdc::remove("account");
            log_mdc::remove("folder");
            if self.outcomes.send(Outcome { task, worker: self.idx, result }).is_err() {
                break;
            }
        }
        // Tasks still queued at a stop never start: say so, so the master does not wait for
        // them (they are due again at the next start; the store is the truth).
        for task in self.urgent.try_iter().chain(self.bulk.try_iter()) {
            let cancelled = Failure::new(FailureKind::Cancelled, "not started: the master is stopping");
            if self.outcomes.send(Outcome { task, worker: self.idx, result: Err(cancelled) }).is_err() {
                break;
            }
        }
        runner.idle();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;

    use crossbeam_channel::{Receiver, unbounded};

    use super::*;
    use crate::task::Job;

    /// Records which thread ran which account; panics on folder 666; sleeps `arg` ms.
    struct Probe {
        seen: Arc<Mutex<Vec<(i64, String)>>>,
        panic_in_idle: bool,
    }

    impl Runner for Probe {
        fn run(&mut self, task: &Task) -> Result<Report, Failure> {
            if task.folder == Some(666) {
                panic!("boom");
            }
            std::thread::sleep(Duration::from_millis(task.arg));
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            self.seen.lock().unwrap().push((task.account.unwrap_or(-1), name));
            Ok(Report::default())
        }
        fn idle(&mut self) {
            if self.panic_in_idle {
                panic!("worker dies outside a task");
            }
        }
    }

    fn pool(max: usize, cap: usize, panic_in_idle: bool) -> (Pool, Receiver<Outcome>, Arc<Mutex<Vec<(i64, String)>>>) {
        let (tx, rx) = unbounded();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let factory: RunnerFactory = Arc::new(move |_| Box::new(Probe { seen: s.clone(), panic_in_idle }));
        let mut p = Pool::new(max, cap, tx, factory);
        p.idle_every = Duration::from_millis(20);
        (p, rx, seen)
    }

    fn task(account: i64, folder: i64, ms: u64) -> Task {
        Task { job: Job::SyncFull, account: Some(account), folder: Some(folder), arg: ms }
    }

    #[test]
    fn at_most_max_threads_and_stable_affinity() {
        let (mut p, rx, seen) = pool(2, 100, false);
        for round in 0..4 {
            for a in 1..=5 {
                assert!(matches!(p.offer(task(a, round, 1)), Offer::Queued { .. }));
            }
        }
        for _ in 0..20 {
            rx.recv_timeout(Duration::from_secs(5)).unwrap().result.unwrap();
        }
        assert_eq!(p.threads(), 2);
        let mut by_account: HashMap<i64, HashSet<String>> = HashMap::new();
        for (a, t) in seen.lock().unwrap().iter() {
            by_account.entry(*a).or_default().insert(t.clone());
        }
        assert_eq!(by_account.len(), 5);
        assert!(by_account.values().all(|t| t.len() == 1), "{by_account:?}");
        let threads: HashSet<_> = by_account.values().flatten().collect();
        assert_eq!(threads.len(), 2);
    }

    #[test]
    fn a_full_queue_refuses_and_nothing_is_lost() {
        let (mut p, rx, seen) = pool(1, 3, false);
        let mut pending: Vec<Task> = (0..20).map(|i| task(1, i, 5)).collect();
        let mut refused = 0;
        let mut done = 0;
        while done < 20 {
            pending.retain(|t| match p.offer(*t) {
                Offer::Queued { .. } => false,
                Offer::Full => {
                    refused += 1;
                    true
                }
            });
            if let Ok(o) = rx.recv_timeout(Duration::from_millis(50)) {
                o.result.unwrap();
                done += 1;
            }
        }
        assert!(refused > 0, "capacity 3 must push back");
        assert_eq!(seen.lock().unwrap().len(), 20);
    }

    #[test]
    fn a_panicking_task_is_an_outcome_and_the_worker_goes_on() {
        let (mut p, rx, seen) = pool(1, 10, false);
        p.offer(task(1, 666, 0));
        p.offer(task(1, 1, 0));
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first.result.unwrap_err().kind, FailureKind::Panic);
        rx.recv_timeout(Duration::from_secs(5)).unwrap().result.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(p.reap(), Vec::<usize>::new());
    }

    #[test]
    fn a_dead_worker_is_replaced() {
        let (mut p, rx, _seen) = pool(1, 10, true);
        p.offer(task(1, 1, 0));
        rx.recv_timeout(Duration::from_secs(5)).unwrap().result.unwrap();
        // idle() panics after ~20 ms: the thread dies outside any task
        let mut dead = Vec::new();
        for _ in 0..100 {
            dead = p.reap();
            if !dead.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(dead, vec![0]);
        assert_eq!(p.threads(), 0);
        assert!(matches!(p.offer(task(1, 2, 0)), Offer::Queued { worker: 0 }));
        rx.recv_timeout(Duration::from_secs(5)).unwrap().result.unwrap();
    }

    #[test]
    fn stop_lets_the_running_task_finish_and_starts_nothing_new() {
        let (mut p, rx, seen) = pool(1, 10, false);
        p.offer(task(1, 1, 300));
        p.offer(task(1, 2, 0));
        std::thread::sleep(Duration::from_millis(50));
        p.stop();
        assert!(p.join(Instant::now() + Duration::from_secs(5)));
        let o = rx.recv_timeout(Duration::from_secs(1)).unwrap();
        assert_eq!(o.task.folder, Some(1));
        let cancelled = rx.recv_timeout(Duration::from_secs(1)).expect("the queued task is reported");
        assert_eq!(cancelled.task.folder, Some(2));
        assert_eq!(cancelled.result.unwrap_err().kind, FailureKind::Cancelled, "it must not start after stop");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn urgent_work_overtakes_bulk_work() {
        let (mut p, rx, _seen) = pool(1, 100, false);
        p.offer(task(1, 0, 100)); // keeps the worker busy while the lanes fill
        std::thread::sleep(Duration::from_millis(20));
        for f in 1..=5 {
            p.offer(task(1, f, 0));
        }
        p.offer(Task { job: Job::Receive, account: Some(1), folder: Some(99), arg: 0 });
        let order: Vec<Option<i64>> =
            (0..7).map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap().task.folder).collect();
        assert_eq!(order[0], Some(0));
        assert_eq!(order[1], Some(99), "{order:?}");
    }
}
