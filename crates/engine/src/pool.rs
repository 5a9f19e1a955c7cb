//! Worker threads, each with two bounded queues (urgent and bulk), and account affinity that
//! holds only while an account has work.
//!
//! Invariants:
//! - at most `max` threads exist; they are spawned lazily, when a task first needs one;
//! - no two tasks of one account (one affinity key) run at the same time, except syncs and
//!   receives of different folders, up to `parallel` of them and one sync
//!   (EMAIL_BG_ACCOUNT_CONNECTIONS; `task::may_start` is the rule); while an account has a
//!   task queued or running on a worker, its next tasks go to that worker, but a receive goes
//!   to an idle worker while the account holds fewer than `parallel` workers;
//! - a blocked account never blocks another: a worker that has been on one task longer than
//!   [`STEAL_AFTER`] lets idle workers take the queued tasks of its other accounts;
//! - a full queue refuses the task (`Offer::Full`): the caller keeps it due (back-pressure);
//! - a panicking task becomes a `FailureKind::Panic` outcome and the worker goes on; a worker
//!   that dies anyway is noticed by `reap`, its task reported lost, and it is replaced (its
//!   queued tasks wait in the shared queues, for it or for another worker).

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::task::{Failure, FailureKind, Outcome, Report, Task};

/// Executes tasks on one worker thread; owns that worker's store connection.
pub trait Runner: Send {
    fn run(&mut self, task: &Task) -> Result<Report, Failure>;
    /// Called when the worker has had nothing to do for a while (close idle sessions).
    fn idle(&mut self) {}
}

pub type RunnerFactory = Arc<dyn Fn(usize) -> Box<dyn Runner> + Send + Sync>;

/// How long a worker may be on one task before idle workers take its other accounts' tasks.
pub const STEAL_AFTER: Duration = Duration::from_secs(2);

pub enum Offer {
    Queued { worker: usize },
    Full,
}

#[derive(Default)]
struct Lanes {
    urgent: VecDeque<Task>,
    bulk: VecDeque<Task>,
    /// The task it runs and since when.
    running: Option<(Task, Instant)>,
    /// The thread is alive (false once it ended, however).
    alive: bool,
}

impl Lanes {
    fn holds(&self, key: u64) -> bool {
        self.running.is_some_and(|(t, _)| t.affinity() == key)
            || self.urgent.iter().chain(&self.bulk).any(|t| t.affinity() == key)
    }
    fn load(&self) -> usize {
        self.urgent.len() + self.bulk.len() + usize::from(self.running.is_some())
    }
}

struct State {
    lanes: Vec<Lanes>,
    stopping: bool,
    /// Tasks of one account that may run at once (`task::may_start`).
    parallel: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever a task is queued or finishes, or the pool stops.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Pool {
    shared: Arc<Shared>,
    threads: Vec<Option<JoinHandle<()>>>,
    max: usize,
    capacity: usize,
    outcomes: Sender<Outcome>,
    factory: RunnerFactory,
    idle_every: Duration,
    steal_after: Duration,
    /// A worker thread sends its index on it as it ends, so `join` wakes at once instead of
    /// polling (and knows it ended even before its handle says so).
    exited: (Sender<usize>, Receiver<usize>),
}

impl Pool {
    /// `parallel`: how many tasks of one account may run at once, on as many workers (syncs
    /// and receives of different folders: `task::may_start`).
    pub fn new(
        max: usize,
        capacity: usize,
        parallel: usize,
        outcomes: Sender<Outcome>,
        factory: RunnerFactory,
    ) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                state: Mutex::new(State { lanes: Vec::new(), stopping: false, parallel: parallel.max(1) }),
                changed: Condvar::new(),
            }),
            threads: Vec::new(),
            max: max.max(1),
            capacity: capacity.max(1),
            outcomes,
            factory,
            idle_every: Duration::from_secs(5),
            steal_after: STEAL_AFTER,
            exited: crossbeam_channel::unbounded(),
        }
    }

    /// New limits apply to threads spawned and tasks queued from now on.
    pub fn set_limits(&mut self, max: usize, capacity: usize, parallel: usize) {
        self.max = max.max(1);
        self.capacity = capacity.max(1);
        self.shared.lock().parallel = parallel.max(1);
    }

    pub fn threads(&self) -> usize {
        self.threads.iter().filter(|t| t.is_some()).count()
    }

    /// Queues a task: on the worker that has its account's work (unless it is a receive that
    /// may run beside its account's other work: then on an idle worker if there is one), else on
    /// an idle worker (a new one while fewer than `max` exist), else on the least loaded.
    pub fn offer(&mut self, task: Task) -> Offer {
        self.offer_in(task, task.job().urgent())
    }

    /// `offer`, to the urgent lane or the bulk one as asked (a sync push made due goes ahead
    /// of bulk work whatever its kind).
    pub fn offer_in(&mut self, task: Task, urgent: bool) -> Offer {
        let key = task.affinity();
        let mut st = self.shared.lock();
        let holding = st.lanes.iter().filter(|l| l.holds(key)).count();
        let pinned = st.lanes.iter().position(|l| l.holds(key));
        let idle = st.lanes.iter().position(|l| l.alive && l.load() == 0);
        let fresh = (st.lanes.len() < self.max).then_some(st.lanes.len());
        // Syncs stay on the account's worker: they run one at a time anyway (`may_start`).
        let beside = task.job().receives() && task.folder_work().is_some() && holding < st.parallel;
        let idx = match pinned {
            Some(_) if beside && idle.or(fresh).is_some() => idle.or(fresh).unwrap_or_default(),
            Some(i) => i,
            None => match idle.or(fresh) {
                Some(i) => i,
                None => (0..st.lanes.len()).min_by_key(|&i| st.lanes[i].load()).unwrap_or(0),
            },
        };
        if idx >= st.lanes.len() {
            st.lanes.resize_with(idx + 1, Lanes::default);
        }
        let lanes = &mut st.lanes[idx];
        let lane = if urgent { &mut lanes.urgent } else { &mut lanes.bulk };
        if lane.len() >= self.capacity {
            return Offer::Full;
        }
        lane.push_back(task);
        let spawn = !lanes.alive;
        lanes.alive = true;
        drop(st);
        if spawn {
            self.spawn(idx);
        }
        self.shared.changed.notify_all();
        Offer::Queued { worker: idx }
    }

    fn spawn(&mut self, idx: usize) {
        if self.threads.len() <= idx {
            self.threads.resize_with(idx + 1, || None);
        }
        let w = WorkerLoop {
            idx,
            shared: self.shared.clone(),
            outcomes: self.outcomes.clone(),
            exited: self.exited.0.clone(),
            idle_every: self.idle_every,
            steal_after: self.steal_after,
        };
        let factory = self.factory.clone();
        let join = std::thread::Builder::new()
            .name(format!("t{}", idx + 1))
            .spawn(move || w.run(factory))
            .expect("cannot spawn a worker thread");
        log::debug!("started worker t{}", idx + 1);
        self.threads[idx] = Some(join);
    }

    /// Replaces workers whose thread died; returns the tasks they were running (lost: the
    /// caller forgets them and the scheduler offers them again when due; the store is the
    /// truth). Their queued tasks wait for the new thread or for other workers.
    pub fn reap(&mut self) -> Vec<Task> {
        let mut lost = Vec::new();
        let mut respawn = Vec::new();
        {
            let mut st = self.shared.lock();
            if st.stopping {
                return lost;
            }
            for (i, l) in st.lanes.iter_mut().enumerate() {
                let dead = self.threads.get(i).and_then(Option::as_ref).is_some_and(JoinHandle::is_finished);
                if dead {
                    log::error!(target: "threading", "worker t{} died; replacing it", i + 1);
                    lost.extend(l.running.take().map(|(t, _)| t));
                    l.alive = false;
                    respawn.push(i);
                }
            }
        }
        for i in respawn {
            if let Some(t) = self.threads[i].take() {
                let _ = t.join();
            }
            let has_work = self.shared.lock().lanes[i].load() > 0;
            if has_work {
                self.shared.lock().lanes[i].alive = true;
                self.spawn(i);
            }
        }
        lost
    }

    /// Stop taking new work: workers finish the task they run and exit.
    pub fn stop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.changed.notify_all();
    }

    /// Waits until every worker has exited or `deadline` passes; returns whether all exited.
    /// Tasks still queued are reported as cancelled (they are due again at the next start).
    pub fn join(&mut self, deadline: Instant) -> bool {
        let mut ended = std::collections::HashSet::new();
        loop {
            ended.extend(self.exited.1.try_iter());
            let all = self
                .threads
                .iter()
                .enumerate()
                .all(|(i, t)| t.as_ref().is_none_or(|t| t.is_finished() || ended.contains(&i)));
            if all {
                for t in self.threads.iter_mut().filter_map(Option::take) {
                    let _ = t.join();
                }
                let queued: Vec<Task> = {
                    let mut st = self.shared.lock();
                    st.lanes
                        .iter_mut()
                        .flat_map(|l| l.urgent.drain(..).chain(l.bulk.drain(..)).collect::<Vec<_>>())
                        .collect()
                };
                for task in queued {
                    let cancelled = Failure::new(FailureKind::Cancelled, "not started: the master is stopping");
                    let _ = self.outcomes.send(Outcome { task, worker: 0, result: Err(cancelled) });
                }
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // Woken by any worker's end (a one-shot `run --once` waits here, and cron on it).
            if let Ok(i) = self.exited.1.recv_deadline(deadline) {
                ended.insert(i);
            }
        }
    }
}

struct WorkerLoop {
    idx: usize,
    shared: Arc<Shared>,
    outcomes: Sender<Outcome>,
    exited: Sender<usize>,
    idle_every: Duration,
    steal_after: Duration,
}

enum Next {
    Run(Task),
    Idle,
    Stop,
}

/// Says so to `Pool::join` however the thread ends.
struct ExitGuard(Sender<usize>, usize);
impl Drop for ExitGuard {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

/// The next task worker `me` may run, taken out of its queue: its own urgent then bulk work
/// first, then work of a worker busy on one task for longer than `steal_after`. A task whose
/// account is running elsewhere is never taken, unless `task::may_start` lets it run beside.
fn next_task(st: &mut State, me: usize, steal_after: Duration) -> Option<Task> {
    let running: Vec<Task> = st.lanes.iter().filter_map(|l| l.running.map(|(t, _)| t)).collect();
    let parallel = st.parallel;
    let free = |t: &Task| crate::task::may_start(t, &running, parallel);
    let take = |lanes: &mut Lanes| -> Option<Task> {
        for lane in [&mut lanes.urgent, &mut lanes.bulk] {
            if let Some(i) = lane.iter().position(free) {
                return lane.remove(i);
            }
        }
        None
    };
    if let Some(t) = take(&mut st.lanes[me]) {
        return Some(t);
    }
    let now = Instant::now();
    let stuck = |l: &Lanes| !l.alive || l.running.is_some_and(|(_, since)| now.duration_since(since) >= steal_after);
    for i in (0..st.lanes.len()).filter(|&i| i != me) {
        if stuck(&st.lanes[i])
            && let Some(t) = take(&mut st.lanes[i])
        {
            return Some(t);
        }
    }
    None
}

impl WorkerLoop {
    fn run(self, factory: RunnerFactory) {
        let _guard = ExitGuard(self.exited.clone(), self.idx);
        log_mdc::insert("thread", format!("t{}", self.idx + 1));
        let mut runner = factory(self.idx);
        let mut last_work = Instant::now();
        loop {
            let next = {
                let mut st = self.shared.lock();
                loop {
                    if st.stopping {
                        break Next::Stop;
                    }
                    if let Some(t) = next_task(&mut st, self.idx, self.steal_after) {
                        st.lanes[self.idx].running = Some((t, Instant::now()));
                        break Next::Run(t);
                    }
                    if last_work.elapsed() >= self.idle_every {
                        break Next::Idle;
                    }
                    // Wake at least as often as a steal could become possible, and for idle
                    // housekeeping.
                    let wait = self.idle_every.min(self.steal_after);
                    let (g, _) = self.shared.changed.wait_timeout(st, wait).unwrap_or_else(|e| e.into_inner());
                    st = g;
                }
            };
            let task = match next {
                Next::Stop => break,
                Next::Idle => {
                    last_work = Instant::now();
                    runner.idle();
                    continue;
                }
                Next::Run(t) => t,
            };
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
            last_work = Instant::now();
            // Clear any account/folder context a job left behind.
            log_mdc::remove("account");
            log_mdc::remove("folder");
            self.shared.lock().lanes[self.idx].running = None;
            self.shared.changed.notify_all();
            if self.outcomes.send(Outcome { task, worker: self.idx, result }).is_err() {
                break;
            }
        }
        runner.idle();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use crossbeam_channel::{Receiver, unbounded};

    use super::*;
    use crate::task::Job;

    /// Records which thread ran which account and when; panics on folder 666; sleeps as long
    /// as the test said when it made the task ([`Tasks::task`]).
    struct Probe {
        seen: Seen,
        delays: Delays,
        panic_in_idle: bool,
    }

    impl Runner for Probe {
        fn run(&mut self, task: &Task) -> Result<Report, Failure> {
            if task.folder() == Some(666) {
                panic!("boom");
            }
            let start = Instant::now();
            let ms = self.delays.lock().unwrap().get(task).copied().unwrap_or(0);
            std::thread::sleep(Duration::from_millis(ms));
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            self.seen.lock().unwrap().push((task.account().unwrap_or(-1), name, start, Instant::now(), *task));
            Ok(Report::default())
        }
        fn idle(&mut self) {
            if self.panic_in_idle {
                panic!("worker dies outside a task");
            }
        }
    }

    type Seen = Arc<Mutex<Vec<(i64, String, Instant, Instant, Task)>>>;
    /// How long each task of one test runs, in ms.
    type Delays = Arc<Mutex<HashMap<Task, u64>>>;

    /// Makes a test's tasks and says how long each runs.
    struct Tasks(Delays);

    impl Tasks {
        fn of(&self, job: Job, account: i64, folder: i64, ms: u64) -> Task {
            let t = Task::of(job, Some(account), Some(folder)).expect("folder work");
            self.0.lock().unwrap().insert(t, ms);
            t
        }
        /// A full sync of `folder` that runs `ms`.
        fn task(&self, account: i64, folder: i64, ms: u64) -> Task {
            self.of(Job::SyncFull, account, folder, ms)
        }
    }

    fn pool(max: usize, cap: usize, panic_in_idle: bool) -> (Pool, Receiver<Outcome>, Seen, Tasks) {
        let (tx, rx) = unbounded();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let delays = Delays::default();
        let (s, d) = (seen.clone(), delays.clone());
        let factory: RunnerFactory =
            Arc::new(move |_| Box::new(Probe { seen: s.clone(), delays: d.clone(), panic_in_idle }));
        let mut p = Pool::new(max, cap, 3, tx, factory);
        p.idle_every = Duration::from_millis(20);
        p.steal_after = Duration::from_millis(100);
        (p, rx, seen, Tasks(delays))
    }

    #[test]
    fn at_most_max_threads_and_never_one_account_twice_at_once() {
        let (mut p, rx, seen, t) = pool(3, 100, false);
        for round in 0..6 {
            for a in 1..=5 {
                assert!(matches!(p.offer(t.task(a, round, 3)), Offer::Queued { .. }));
            }
        }
        for _ in 0..30 {
            rx.recv_timeout(Duration::from_secs(5)).unwrap().result.unwrap();
        }
        assert_eq!(p.threads(), 3);
        let seen = seen.lock().unwrap();
        let threads: HashSet<_> = seen.iter().map(|s| s.1.clone()).collect();
        assert_eq!(threads.len(), 3);
        for (i, a) in seen.iter().enumerate() {
            for b in &seen[i + 1..] {
                let overlap = a.2 < b.3 && b.2 < a.3;
                assert!(!(a.0 == b.0 && overlap), "account {} ran twice at once: {a:?} {b:?}", a.0);
            }
        }
    }

    /// An account's receives of different folders run side by side on workers of their own,
    /// never more than the pool's `parallel` (3) at once, and never two syncs.
    #[test]
    fn receives_of_one_account_run_side_by_side_and_syncs_one_at_a_time() {
        let (mut p, rx, seen, t) = pool(5, 100, false);
        for f in 1..=5 {
            p.offer(t.of(Job::Receive, 1, f, 60));
        }
        for f in 6..=8 {
            p.offer(t.of(Job::SyncFull, 1, f, 20));
        }
        for _ in 0..8 {
            rx.recv_timeout(Duration::from_secs(5)).unwrap().result.unwrap();
        }
        let seen = seen.lock().unwrap();
        let at_once = |at: Instant, which: &dyn Fn(&Task) -> bool| {
            seen.iter().filter(|s| which(&s.4) && s.2 <= at && at < s.3).count()
        };
        let most = seen.iter().map(|s| at_once(s.2, &|_| true)).max().unwrap();
        assert!(most <= 3, "{most} tasks of one account at once");
        let syncs = seen.iter().map(|s| at_once(s.2, &|t| t.job() == Job::SyncFull)).max().unwrap();
        assert_eq!(syncs, 1, "two syncs of one account at once");
        // the first three receives were queued on three workers (the first of the account's,
        // then two idle ones): each ran where it was queued
        let on = |f: i64| seen.iter().find(|s| s.4.folder() == Some(f)).map(|s| s.1.clone()).unwrap();
        let threads: HashSet<String> = (1..=3).map(on).collect();
        assert_eq!(threads.len(), 3, "{threads:?}");
    }

    #[test]
    fn an_account_with_work_keeps_its_worker() {
        let (mut p, rx, seen, t) = pool(4, 100, false);
        // the first task keeps account 1 busy; the ones queued behind it stay with it
        for f in 0..4 {
            p.offer(t.task(1, f, 30));
        }
        for _ in 0..4 {
            rx.recv_timeout(Duration::from_secs(5)).unwrap().result.unwrap();
        }
        let names: HashSet<_> = seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    /// One account hangs on worker 1; the tasks of other accounts queued behind it are taken
    /// by idle workers once it has been busy past the threshold.
    #[test]
    fn a_hung_account_does_not_block_the_accounts_queued_behind_it() {
        let (mut p, rx, seen, t) = pool(2, 100, false);
        p.offer(t.task(1, 1, 1500)); // the "hung" account
        std::thread::sleep(Duration::from_millis(20));
        p.offer(t.task(2, 1, 200)); // goes to the idle worker 2
        // now every worker is busy: these queue behind account 1 or 2
        for a in 3..=6 {
            p.offer(t.task(a, 1, 5));
        }
        let started = Instant::now();
        let mut done = HashSet::new();
        while done.len() < 5 {
            let o = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            o.result.unwrap();
            done.insert(o.task.account().unwrap());
            if done.contains(&1) {
                break;
            }
        }
        assert!(!done.contains(&1), "the healthy accounts finish before the hung one");
        assert!(started.elapsed() < Duration::from_millis(1200), "{:?}", started.elapsed());
        assert_eq!(done, (2..=6).collect::<HashSet<i64>>());
        rx.recv_timeout(Duration::from_secs(5)).unwrap().result.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 6);
    }

    #[test]
    fn a_full_queue_refuses_and_nothing_is_lost() {
        let (mut p, rx, seen, t) = pool(1, 3, false);
        let mut pending: Vec<Task> = (0..20).map(|i| t.task(1, i, 5)).collect();
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
        let (mut p, rx, seen, t) = pool(1, 10, false);
        p.offer(t.task(1, 666, 0));
        p.offer(t.task(1, 1, 0));
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first.result.unwrap_err().kind, FailureKind::Panic);
        rx.recv_timeout(Duration::from_secs(5)).unwrap().result.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(p.reap(), Vec::<Task>::new());
    }

    #[test]
    fn a_dead_worker_is_replaced() {
        let (mut p, rx, _seen, t) = pool(1, 10, true);
        p.offer(t.task(1, 1, 0));
        rx.recv_timeout(Duration::from_secs(5)).unwrap().result.unwrap();
        // idle() panics after ~20 ms: the thread dies outside any task
        let mut reaped = false;
        for _ in 0..200 {
            let dead = p.threads.first().and_then(Option::as_ref).is_some_and(JoinHandle::is_finished);
            if dead {
                assert!(p.reap().is_empty(), "it was running nothing");
                reaped = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(reaped, "the worker died and was reaped");
        assert!(matches!(p.offer(t.task(1, 2, 0)), Offer::Queued { worker: 0 }));
        rx.recv_timeout(Duration::from_secs(5)).unwrap().result.unwrap();
    }

    #[test]
    fn stop_lets_the_running_task_finish_and_starts_nothing_new() {
        let (mut p, rx, seen, t) = pool(1, 10, false);
        p.offer(t.task(1, 1, 300));
        p.offer(t.task(1, 2, 0));
        std::thread::sleep(Duration::from_millis(50));
        p.stop();
        assert!(p.join(Instant::now() + Duration::from_secs(5)));
        let o = rx.recv_timeout(Duration::from_secs(1)).unwrap();
        assert_eq!(o.task.folder(), Some(1));
        let cancelled = rx.recv_timeout(Duration::from_secs(1)).expect("the queued task is reported");
        assert_eq!(cancelled.task.folder(), Some(2));
        assert_eq!(cancelled.result.unwrap_err().kind, FailureKind::Cancelled, "it must not start after stop");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn urgent_work_overtakes_bulk_work() {
        let (mut p, rx, _seen, t) = pool(1, 100, false);
        p.offer(t.task(1, 0, 100)); // keeps the worker busy while the lanes fill
        std::thread::sleep(Duration::from_millis(20));
        for f in 1..=5 {
            p.offer(t.task(1, f, 0));
        }
        p.offer(t.of(Job::Receive, 1, 99, 0));
        let order: Vec<Option<i64>> =
            (0..7).map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap().task.folder()).collect();
        assert_eq!(order[0], Some(0));
        assert_eq!(order[1], Some(99), "{order:?}");
    }
}
