//! The master: one loop over events (tick, a worker's outcome, a push event, shutdown),
//! deciding what runs.
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
use backproc_store::Store;
use crossbeam_channel::{Receiver, select, unbounded};

use crate::pool::{Offer, Pool, RunnerFactory};
use crate::push::{Push, PushEvent};
use crate::runner::JobRunner;
use crate::schedule::{Scheduler, SyncDue};
use crate::sessions::SessionPool;
use crate::task::{Job, Outcome, Task};
use crate::{Clock, Error, SharedConfig};

pub struct MasterOptions {
    pub store_path: PathBuf,
    pub data_dir: PathBuf,
    /// Do the work that is due now, then return.
    pub once: bool,
    /// Test hook: sleep tasks (milliseconds) queued at start, to test shutdown and logging.
    pub sleep_tasks: Vec<u64>,
    /// Only this account's work (`backproc sync --account`).
    pub only_account: Option<i64>,
}

/// Largest WAL (bytes) a stopping master leaves for the next start to read back, instead of
/// checkpointing it (two fsyncs) on the way out.
const WAL_KEPT_AT_STOP: u64 = 2 << 20;

enum Event {
    Tick,
    Outcome(Outcome),
    /// A push connection made a folder's sync due now.
    Push(PushEvent),
    Shutdown,
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
    let clock = Clock::system();
    let mut store = Store::open(&opts.store_path)?;
    store.master_started(std::process::id(), clock.now())?;
    let shared: SharedConfig = Arc::new(RwLock::new(Arc::new(config.clone())));
    let (outcome_tx, outcome_rx) = unbounded();
    let sessions = SessionPool::new();
    let factory: RunnerFactory = {
        let shared = shared.clone();
        let store_path = opts.store_path.clone();
        let sessions = sessions.clone();
        Arc::new(move |idx| Box::new(JobRunner::new(idx, store_path.clone(), shared.clone(), clock, sessions.clone())))
    };
    let mut pool = Pool::new(
        config.bg_max_threads as usize,
        config.bg_max_tasks_per_thread as usize,
        config.email_bg_account_connections as usize,
        outcome_tx,
        factory,
    );
    let mut scheduler = Scheduler::new(clock);
    for secs in &opts.sleep_tasks {
        scheduler.push_extra(Task { job: Job::Sleep, account: None, folder: None, arg: *secs });
    }
    let mut config = config;
    let mut in_flight: HashMap<Task, usize> = HashMap::new();
    // With `once`: the folder syncs and listings that finished in this run. A folder synced
    // at 12:00:00.98 with a 1 s interval is due again at 12:00:01: that is not work that was
    // due when the run started, and redoing it would make `run --once` chase the clock.
    let mut synced: HashSet<Task> = HashSet::new();
    // Push connections, except for a run that ends when nothing is due.
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
    let never = crossbeam_channel::never();
    let push_events = push.as_ref().map_or(&never, |p| &p.events);
    // Tasks push made due while the same task was running: run again once it ends, since
    // the running one may have read the folder before the change.
    let mut again: HashSet<Task> = HashSet::new();
    // Tasks push dispatched: one that fails asks for the folder's sync in the store (the
    // scheduler then retries it under its back-off rules), since nothing else would make it
    // due before the polling interval.
    let mut pushed: HashSet<Task> = HashSet::new();
    // Accounts whose IMAP work succeeded in this master's life: push follows the normal
    // session, so that one is never the connection a server's limit refuses.
    let mut signed_in: HashSet<i64> = HashSet::new();
    let mut last_wanted: Option<Vec<backproc_store::PushCandidate>> = None;
    let mut tick_every = Duration::from_secs(config.bg_tick_interval);
    let mut next_tick = Instant::now();
    let mut last_tick = Instant::now();
    let mut last_truncate = Instant::now();
    log::info!("master started (pid {}, up to {} workers)", std::process::id(), config.bg_max_threads);

    loop {
        let timeout = next_tick.saturating_duration_since(Instant::now());
        let event = select! {
            recv(shutdown) -> _ => Event::Shutdown,
            recv(outcome_rx) -> o => match o { Ok(o) => Event::Outcome(o), Err(_) => Event::Shutdown },
            recv(push_events) -> e => match e { Ok(e) => Event::Push(e), Err(_) => Event::Shutdown },
            default(timeout) => Event::Tick,
        };
        match event {
            Event::Shutdown => {
                log::info!("stopping: no new work, waiting up to {}s for running tasks", config.bg_shutdown_grace);
                break;
            }
            Event::Outcome(o) => {
                in_flight.remove(&o.task);
                if opts.once
                    && o.result.is_ok()
                    && matches!(o.task.job, Job::ListFolders | Job::SyncRecent | Job::SyncFull)
                {
                    synced.insert(o.task);
                    if o.task.job == Job::SyncFull {
                        // a full sync counts as a recent one (`schedule::folder_due`)
                        synced.insert(Task { job: Job::SyncRecent, ..o.task });
                    }
                }
                if let (Ok(_), Some(a)) = (&o.result, o.task.account)
                    && o.task.job.waits_for_account()
                {
                    signed_in.insert(a);
                }
                if pushed.remove(&o.task)
                    && o.result.is_err()
                    && o.task.folder.is_some()
                    && let Err(e) = store.request_sync(o.task.account, o.task.folder, clock.now())
                {
                    log::error!("cannot record that {} is due again: {e}", o.task);
                }
                let mut follow = scheduler.finished(&mut store, &config, &o);
                if again.remove(&o.task) {
                    follow.push(o.task);
                }
                scheduler.set_sessions(
                    sessions.lowered(config.bg_max_connections_per_host as usize),
                    sessions.open_counts(),
                );
                let follow = scheduler.within_budget(follow, &in_flight, &config);
                dispatch(&mut pool, &mut in_flight, follow);
                let freed = o.task.account.is_some_and(|a| !in_flight.keys().any(|t| t.account == Some(a)));
                if opts.once && in_flight.is_empty() {
                    next_tick = Instant::now();
                } else if freed && scheduler.held_back() {
                    // A connection is free and work waits for one: look now, not at the tick
                    // (with a thousand accounts on one server, each waited half a tick).
                    let gap = if scheduler.any_lowered() { LOWERED_TICK_GAP } else { EARLY_TICK_GAP };
                    next_tick = next_tick.min(last_tick + gap);
                }
            }
            Event::Push(e) => {
                let job = match (e.folder, e.due) {
                    (None, _) => Job::ListFolders,
                    (Some(_), SyncDue::Recent) => Job::SyncRecent,
                    (Some(_), SyncDue::Full) => Job::SyncFull,
                };
                let task = Task::new(job, Some(e.account), e.folder);
                if in_flight.contains_key(&task) {
                    again.insert(task);
                } else {
                    let follow = scheduler.within_budget(vec![task], &in_flight, &config);
                    pushed.extend(dispatch_in(&mut pool, &mut in_flight, follow, true));
                }
            }
            Event::Tick => {
                last_tick = Instant::now();
                next_tick = last_tick + tick_every;
                if let Some(new) = reload() {
                    log::info!("config.inc changed: new settings applied");
                    pool.set_limits(
                        new.bg_max_threads as usize,
                        new.bg_max_tasks_per_thread as usize,
                        new.email_bg_account_connections as usize,
                    );
                    tick_every = Duration::from_secs(new.bg_tick_interval);
                    *shared.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new.clone());
                    config = new;
                }
                for lost in pool.reap() {
                    in_flight.remove(&lost);
                }
                scheduler.set_sessions(
                    sessions.lowered(config.bg_max_connections_per_host as usize),
                    sessions.open_counts(),
                );
                // Left out before the per-host budget, so that what will not run takes no
                // place in it: another account, or work this `--once` run has done already.
                let wanted = |t: &Task| opts.only_account.is_none_or(|a| t.account == Some(a)) && !synced.contains(t);
                let due = match scheduler.due(&mut store, &config, &in_flight, &wanted) {
                    Ok(d) => d,
                    Err(e) => {
                        log::error!("cannot read the schedule from the store: {e}");
                        Vec::new()
                    }
                };
                if opts.once && due.is_empty() && in_flight.is_empty() {
                    // Done: the stop below records the end and writes the last metrics.
                    break;
                }
                dispatch(&mut pool, &mut in_flight, due);
                // Idle sessions of accounts with nothing due, on hosts where work waits for a
                // connection: closed now, so that the slots are free when that work asks for
                // them, instead of each new connection logging one out and waiting for it.
                for a in scheduler.idle_to_close(&in_flight) {
                    sessions.retire(a);
                }
                if let Some(p) = &push {
                    let wanted = if config.email_background_sync_enabled && config.email_bg_push_enabled {
                        store.push_candidates(clock.now(), config.email_bg_push_all)
                    } else {
                        Ok(Vec::new())
                    };
                    match wanted {
                        Ok(mut w) => {
                            w.retain(|c| signed_in.contains(&c.account_id));
                            if let Some(a) = opts.only_account {
                                w.retain(|c| c.account_id == a);
                            }
                            // Only a change wakes the push thread (2,000 accounts compared
                            // there every tick cost it 0.4 % of a core while nothing happened).
                            if last_wanted.as_ref() != Some(&w) {
                                last_wanted = Some(w.clone());
                                p.want(w);
                            }
                        }
                        Err(e) => log::error!("cannot read the push accounts from the store: {e}"),
                    }
                }
                // Bookkeeping after the dispatch: the workers start (connect, log in) meanwhile.
                if let Err(e) = store.master_heartbeat(clock.now()) {
                    log::error!("cannot write the heartbeat: {e}");
                }
                if config.bg_metrics_enabled
                    && let Err(e) = crate::metrics::write_file(&store, &opts.data_dir, true)
                {
                    log::warn!("cannot write metrics: {e}");
                }
                // Keep the WAL small under constant writes: passive auto-checkpoints cannot
                // shrink it while readers are active, a periodic TRUNCATE does.
                if last_truncate.elapsed() >= Duration::from_secs(300) {
                    last_truncate = Instant::now();
                    if let Err(e) = store.checkpoint_truncate() {
                        log::debug!("WAL checkpoint: {e}");
                    }
                }
            }
        }
    }

    if let Some(p) = push {
        p.stop();
    }
    pool.stop();
    let deadline = Instant::now() + Duration::from_secs(config.bg_shutdown_grace);
    // Record the outcomes of tasks that finish within the grace period.
    while !in_flight.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match outcome_rx.recv_timeout(left) {
            Ok(o) => {
                in_flight.remove(&o.task);
                scheduler.finished(&mut store, &config, &o);
            }
            Err(_) => break,
        }
    }
    let clean = pool.join(deadline.max(Instant::now() + Duration::from_millis(100)));
    sessions.close_all();
    if !in_flight.is_empty() || !clean {
        log::warn!(
            "{} task(s) still running at the end of the grace period; they are redone at next start",
            in_flight.len()
        );
    }
    store.master_stopped(clock.now())?;
    // Connections leave the WAL in place when they close (the store's `configure`): fold it
    // into the database only once it is big enough to slow the next start's read-back.
    if let Err(e) = store.checkpoint_if_wal_over(WAL_KEPT_AT_STOP) {
        log::debug!("WAL checkpoint: {e}");
    }
    // backproc_up 0 at once, rather than by the file's age, with the run's last figures
    if config.bg_metrics_enabled
        && let Err(e) = crate::metrics::write_file(&store, &opts.data_dir, false)
    {
        log::warn!("cannot write metrics: {e}");
    }
    log::info!("master stopped");
    Ok(())
}

fn dispatch(pool: &mut Pool, in_flight: &mut HashMap<Task, usize>, tasks: Vec<Task>) {
    dispatch_in(pool, in_flight, tasks, false);
}

/// Offers the tasks not already in flight, to the urgent lane when their job is urgent or
/// `urgent` says so (push); returns those queued.
fn dispatch_in(pool: &mut Pool, in_flight: &mut HashMap<Task, usize>, tasks: Vec<Task>, urgent: bool) -> Vec<Task> {
    let mut queued = Vec::new();
    for task in tasks {
        if in_flight.contains_key(&task) {
            continue;
        }
        match pool.offer_in(task, urgent || task.job.urgent()) {
            Offer::Queued { worker } => {
                in_flight.insert(task, worker);
                queued.push(task);
            }
            Offer::Full => log::debug!("queue full: {task} stays due"),
        }
    }
    queued
}
