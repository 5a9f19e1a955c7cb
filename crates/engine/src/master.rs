//! The master: one loop over events (tick, a worker's outcome, a push event, shutdown),
//! deciding what runs. [`Master`] holds the loop's state; [`Master::handle`] is the whole of
//! what an event does to it, as rust-analyzer's `GlobalState::handle_event`.
//!
//! Invariants:
//! - a task is queued or running at most once (`in_flight`);
//! - a task refused by a full queue stays due and is offered again next tick;
//! - the store is the truth: anything lost from memory (a dead worker, a restart) is found
//!   again by the next tick's scheduling queries.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use backproc_config::Config;
use backproc_store::{PushCandidate, Store};
use crossbeam_channel::{Receiver, select, unbounded};

use crate::pool::{Offer, Pool, RunnerFactory};
use crate::push::{Push, PushEvent};
use crate::runner::JobRunner;
use crate::schedule::{Scheduler, SyncDue};
use crate::sessions::SessionPool;
use crate::task::{FolderOf, Job, Outcome, Task};
use crate::{Clock, Error, SharedConfig};

pub struct MasterOptions {
    pub store_path: PathBuf,
    pub data_dir: PathBuf,
    /// Do the work that is due now, then return.
    pub once: bool,
    /// Only this account's work (`backproc sync --account`).
    pub only_account: Option<i64>,
}

/// Largest WAL (bytes) a stopping master leaves for the next start to read back, instead of
/// checkpointing it (two fsyncs) on the way out.
const WAL_KEPT_AT_STOP: u64 = 2 << 20;

/// What wakes the master.
enum Event {
    Tick,
    Outcome(Outcome),
    /// A push connection made a folder's sync due now.
    Push(PushEvent),
    Shutdown,
}

/// Whether the loop goes on after an event.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// The least time between ticks when one is brought forward (`Scheduler::held_back`): a
/// tick reads the schedule and writes the heartbeat, so not one for every finished task. A
/// tick of 1,000 accounts takes a few ms; at 100 ms, a connection that freed waited 50 ms for
/// its next account on average, a tenth of an account's first pass on a 40 ms link.
const EARLY_TICK_GAP: Duration = Duration::from_millis(20);

/// [`EARLY_TICK_GAP`] while a host's budget is lowered ("too many connections"): there more
/// accounts wait than the server lets in, and a look every 20 ms handed freed slots to new
/// accounts before those in flight went on (tests/budget.rs, Gmail: 25–30 logins for 10
/// accounts, against 22–25 at 100 ms).
const LOWERED_TICK_GAP: Duration = Duration::from_millis(100);

/// Runs the master until `shutdown` fires (or, with `once`, until nothing is due).
/// `reload` is called every tick and returns a new, valid config when config.inc changed.
pub fn run(
    opts: MasterOptions,
    config: Config,
    reload: &mut dyn FnMut() -> Option<Config>,
    shutdown: Receiver<()>,
) -> Result<(), Error> {
    let mut master = Master::start(opts, config, reload)?;
    loop {
        let event = master.next_event(&shutdown);
        if master.handle(event) == Flow::Stop {
            break;
        }
    }
    master.stop()
}

/// The master's state between events.
struct Master<'r> {
    opts: MasterOptions,
    config: Config,
    reload: &'r mut dyn FnMut() -> Option<Config>,
    clock: Clock,
    store: Store,
    /// The config the workers read (replaced on reload).
    shared: SharedConfig,
    sessions: Arc<SessionPool>,
    pool: Pool,
    outcomes: Receiver<Outcome>,
    scheduler: Scheduler,
    in_flight: HashMap<Task, usize>,
    /// With `once`: the folder syncs and listings that finished in this run. A folder synced
    /// at 12:00:00.98 with a 1 s interval is due again at 12:00:01: that is not work that was
    /// due when the run started, and redoing it would make `run --once` chase the clock.
    synced: HashSet<Task>,
    /// Push connections, except for a run that ends when nothing is due.
    push: Option<Push>,
    /// Tasks push made due while the same task was running: run again once it ends, since
    /// the running one may have read the folder before the change.
    again: HashSet<Task>,
    /// Tasks push dispatched: one that fails asks for the folder's sync in the store (the
    /// scheduler then retries it under its back-off rules), since nothing else would make it
    /// due before the polling interval.
    pushed: HashSet<Task>,
    /// Accounts whose IMAP work succeeded in this master's life: push follows the normal
    /// session, so that one is never the connection a server's limit refuses.
    signed_in: HashSet<i64>,
    /// What push was last asked to watch: only a change wakes its thread.
    last_wanted: Option<Vec<PushCandidate>>,
    tick_every: Duration,
    next_tick: Instant,
    last_tick: Instant,
    last_truncate: Instant,
}

impl<'r> Master<'r> {
    fn start(
        opts: MasterOptions,
        config: Config,
        reload: &'r mut dyn FnMut() -> Option<Config>,
    ) -> Result<Master<'r>, Error> {
        let clock = Clock::system();
        let mut store = Store::open(&opts.store_path)?;
        store.master_started(std::process::id(), clock.now())?;
        let shared: SharedConfig = Arc::new(RwLock::new(Arc::new(config.clone())));
        let (outcome_tx, outcomes) = unbounded();
        let sessions = SessionPool::new();
        let factory: RunnerFactory = {
            let shared = shared.clone();
            let store_path = opts.store_path.clone();
            let sessions = sessions.clone();
            Arc::new(move |idx| {
                Box::new(JobRunner::new(idx, store_path.clone(), shared.clone(), clock, sessions.clone()))
            })
        };
        let pool = Pool::new(
            config.bg_max_threads as usize,
            config.bg_max_tasks_per_thread as usize,
            config.email_bg_account_connections as usize,
            outcome_tx,
            factory,
        );
        let push = if opts.once {
            None
        } else {
            match Push::start(opts.store_path.clone(), shared.clone(), sessions.clone(), clock) {
                Ok(p) => Some(p),
                Err(e) => {
                    log::error!("push is off: cannot start its threads: {e}");
                    None
                }
            }
        };
        log::info!("master started (pid {}, up to {} workers)", std::process::id(), config.bg_max_threads);
        let now = Instant::now();
        Ok(Master {
            tick_every: Duration::from_secs(config.bg_tick_interval),
            opts,
            config,
            reload,
            clock,
            store,
            shared,
            sessions,
            pool,
            outcomes,
            scheduler: Scheduler::new(clock),
            in_flight: HashMap::new(),
            synced: HashSet::new(),
            push,
            again: HashSet::new(),
            pushed: HashSet::new(),
            signed_in: HashSet::new(),
            last_wanted: None,
            next_tick: now,
            last_tick: now,
            last_truncate: now,
        })
    }

    /// Waits for the next event: shutdown first, then a worker's outcome or a push event, or
    /// the tick when it is time.
    fn next_event(&self, shutdown: &Receiver<()>) -> Event {
        let never = crossbeam_channel::never();
        let push_events = self.push.as_ref().map_or(&never, |p| &p.events);
        let timeout = self.next_tick.saturating_duration_since(Instant::now());
        select! {
            recv(shutdown) -> _ => Event::Shutdown,
            recv(self.outcomes) -> o => match o { Ok(o) => Event::Outcome(o), Err(_) => Event::Shutdown },
            recv(push_events) -> e => match e { Ok(e) => Event::Push(e), Err(_) => Event::Shutdown },
            default(timeout) => Event::Tick,
        }
    }

    fn handle(&mut self, event: Event) -> Flow {
        match event {
            Event::Shutdown => {
                log::info!("stopping: no new work, waiting up to {}s for running tasks", self.config.bg_shutdown_grace);
                Flow::Stop
            }
            Event::Outcome(o) => {
                self.on_outcome(o);
                Flow::Continue
            }
            Event::Push(e) => {
                self.on_push(e);
                Flow::Continue
            }
            Event::Tick => self.on_tick(),
        }
    }

    fn on_outcome(&mut self, o: Outcome) {
        self.in_flight.remove(&o.task);
        if self.opts.once
            && o.result.is_ok()
            && matches!(o.task.job(), Job::ListFolders | Job::SyncRecent | Job::SyncFull)
        {
            self.synced.insert(o.task);
            if let Task::SyncFull(f) = o.task {
                // a full sync counts as a recent one (`schedule::folder_due`)
                self.synced.insert(Task::SyncRecent(f));
            }
        }
        if let (Ok(_), Some(a)) = (&o.result, o.task.account())
            && o.task.job().waits_for_account()
        {
            self.signed_in.insert(a);
        }
        if self.pushed.remove(&o.task)
            && o.result.is_err()
            && o.task.folder().is_some()
            && let Err(e) = self.store.request_sync(o.task.account(), o.task.folder(), self.clock.now())
        {
            log::error!("cannot record that {} is due again: {e}", o.task);
        }
        let mut follow = self.scheduler.finished(&mut self.store, &self.config, &o);
        if self.again.remove(&o.task) {
            follow.push(o.task);
        }
        self.refresh_sessions();
        let follow = self.scheduler.within_budget(follow, &self.in_flight, &self.config);
        self.dispatch(follow, false);
        let freed = o.task.account().is_some_and(|a| !self.in_flight.keys().any(|t| t.account() == Some(a)));
        if self.opts.once && self.in_flight.is_empty() {
            self.next_tick = Instant::now();
        } else if freed && self.scheduler.held_back() {
            // A connection is free and work waits for one: look now, not at the tick (with a
            // thousand accounts on one server, each waited half a tick).
            let gap = if self.scheduler.any_lowered() { LOWERED_TICK_GAP } else { EARLY_TICK_GAP };
            self.next_tick = self.next_tick.min(self.last_tick + gap);
        }
    }

    fn on_push(&mut self, e: PushEvent) {
        let task = match (e.folder, e.due) {
            (None, _) => Task::ListFolders(e.account),
            (Some(folder), SyncDue::Recent) => Task::SyncRecent(FolderOf { account: e.account, folder }),
            (Some(folder), SyncDue::Full) => Task::SyncFull(FolderOf { account: e.account, folder }),
        };
        if self.in_flight.contains_key(&task) {
            self.again.insert(task);
        } else {
            let follow = self.scheduler.within_budget(vec![task], &self.in_flight, &self.config);
            let queued = self.dispatch(follow, true);
            self.pushed.extend(queued);
        }
    }

    fn on_tick(&mut self) -> Flow {
        self.last_tick = Instant::now();
        self.next_tick = self.last_tick + self.tick_every;
        if let Some(new) = (self.reload)() {
            log::info!("config.inc changed: new settings applied");
            self.pool.set_limits(
                new.bg_max_threads as usize,
                new.bg_max_tasks_per_thread as usize,
                new.email_bg_account_connections as usize,
            );
            self.tick_every = Duration::from_secs(new.bg_tick_interval);
            *self.shared.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new.clone());
            self.config = new;
        }
        for lost in self.pool.reap() {
            self.in_flight.remove(&lost);
        }
        self.refresh_sessions();
        // Left out before the per-host budget, so that what will not run takes no place in
        // it: another account, or work this `--once` run has done already.
        let (only, synced) = (self.opts.only_account, &self.synced);
        let wanted = |t: &Task| only.is_none_or(|a| t.account() == Some(a)) && !synced.contains(t);
        let due = match self.scheduler.due(&mut self.store, &self.config, &self.in_flight, &wanted) {
            Ok(d) => d,
            Err(e) => {
                log::error!("cannot read the schedule from the store: {e}");
                Vec::new()
            }
        };
        if self.opts.once && due.is_empty() && self.in_flight.is_empty() {
            // Done: the stop records the end and writes the last metrics.
            return Flow::Stop;
        }
        self.dispatch(due, false);
        // Idle sessions of accounts with nothing due, on hosts where work waits for a
        // connection: closed now, so that the slots are free when that work asks for them,
        // instead of each new connection logging one out and waiting for it.
        for a in self.scheduler.idle_to_close(&self.in_flight) {
            self.sessions.retire(a);
        }
        self.watch_push();
        // Bookkeeping after the dispatch: the workers start (connect, log in) meanwhile.
        if let Err(e) = self.store.master_heartbeat(self.clock.now()) {
            log::error!("cannot write the heartbeat: {e}");
        }
        self.write_metrics(true);
        // Keep the WAL small under constant writes: passive auto-checkpoints cannot shrink it
        // while readers are active, a periodic TRUNCATE does.
        if self.last_truncate.elapsed() >= Duration::from_secs(300) {
            self.last_truncate = Instant::now();
            if let Err(e) = self.store.checkpoint_truncate() {
                log::debug!("WAL checkpoint: {e}");
            }
        }
        Flow::Continue
    }

    /// Tells the scheduler what the session pool holds now, for the next budget.
    fn refresh_sessions(&mut self) {
        self.scheduler.set_sessions(
            self.sessions.lowered(self.config.bg_max_connections_per_host as usize),
            self.sessions.open_counts(),
        );
    }

    /// Hands push the accounts it should watch, when they changed.
    fn watch_push(&mut self) {
        let Some(p) = &self.push else { return };
        let wanted = if self.config.email_background_sync_enabled && self.config.email_bg_push_enabled {
            self.store.push_candidates(self.clock.now(), self.config.email_bg_push_all)
        } else {
            Ok(Vec::new())
        };
        match wanted {
            Ok(mut w) => {
                w.retain(|c| self.signed_in.contains(&c.account_id));
                if let Some(a) = self.opts.only_account {
                    w.retain(|c| c.account_id == a);
                }
                // Only a change wakes the push thread (2,000 accounts compared there every
                // tick cost it 0.4 % of a core while nothing happened).
                if self.last_wanted.as_ref() != Some(&w) {
                    self.last_wanted = Some(w.clone());
                    p.want(w);
                }
            }
            Err(e) => log::error!("cannot read the push accounts from the store: {e}"),
        }
    }

    fn write_metrics(&self, up: bool) {
        if self.config.bg_metrics_enabled
            && let Err(e) = crate::metrics::write_file(&self.store, &self.opts.data_dir, up)
        {
            log::warn!("cannot write metrics: {e}");
        }
    }

    /// Offers the tasks not already in flight, to the urgent lane when their job is urgent or
    /// `urgent` says so (push); returns those queued.
    fn dispatch(&mut self, tasks: Vec<Task>, urgent: bool) -> Vec<Task> {
        let mut queued = Vec::new();
        for task in tasks {
            if self.in_flight.contains_key(&task) {
                continue;
            }
            match self.pool.offer_in(task, urgent || task.job().urgent()) {
                Offer::Queued { worker } => {
                    self.in_flight.insert(task, worker);
                    queued.push(task);
                }
                Offer::Full => log::debug!("queue full: {task} stays due"),
            }
        }
        queued
    }

    /// No new work; the running tasks get the grace period to finish, their outcomes are
    /// recorded, and the master's end is written.
    fn stop(mut self) -> Result<(), Error> {
        if let Some(p) = self.push.take() {
            p.stop();
        }
        self.pool.stop();
        let deadline = Instant::now() + Duration::from_secs(self.config.bg_shutdown_grace);
        // Record the outcomes of tasks that finish within the grace period.
        while !self.in_flight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.outcomes.recv_timeout(left) {
                Ok(o) => {
                    self.in_flight.remove(&o.task);
                    self.scheduler.finished(&mut self.store, &self.config, &o);
                }
                Err(_) => break,
            }
        }
        let clean = self.pool.join(deadline.max(Instant::now() + Duration::from_millis(100)));
        self.sessions.close_all();
        if !self.in_flight.is_empty() || !clean {
            log::warn!(
                "{} task(s) still running at the end of the grace period; they are redone at next start",
                self.in_flight.len()
            );
        }
        self.store.master_stopped(self.clock.now())?;
        // Connections leave the WAL in place when they close (the store's `configure`): fold
        // it into the database only once it is big enough to slow the next start's read-back.
        if let Err(e) = self.store.checkpoint_if_wal_over(WAL_KEPT_AT_STOP) {
            log::debug!("WAL checkpoint: {e}");
        }
        // backproc_up 0 at once, rather than by the file's age, with the run's last figures
        self.write_metrics(false);
        log::info!("master stopped");
        Ok(())
    }
}
