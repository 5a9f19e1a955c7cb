//! The job runner: a store connection and sessions, the dispatch from a task to the job that
//! does it, and the history record of every run. Each worker has one; a run by hand
//! (`backproc maintenance …`) makes its own ([`JobRunner::by_hand`]), so both record the
//! same Started, Finished and failure rows.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use backproc_config::Config;
use backproc_store::{Lane, NewHistory, Store, WorkerRow};

use crate::jobs::{self, Ctx};
use crate::pool::Runner;
use crate::sessions::{SessionPool, Sessions};
use crate::task::{Failure, FailureKind, Job, Report, Task};
use crate::{Clock, SharedConfig};

pub struct JobRunner {
    /// The worker's index; none for a run by hand (no worker row, thread "cli").
    worker: Option<usize>,
    store_path: PathBuf,
    config: SharedConfig,
    clock: Clock,
    store: Option<Store>,
    sessions: Sessions,
}

impl JobRunner {
    /// The runner of worker `idx`.
    pub fn new(
        idx: usize,
        store_path: PathBuf,
        config: SharedConfig,
        clock: Clock,
        pool: Arc<SessionPool>,
    ) -> JobRunner {
        JobRunner { worker: Some(idx), store_path, config, clock, store: None, sessions: Sessions::new(pool) }
    }

    /// A runner for a job a person runs now from the command line, on no worker.
    pub fn by_hand(store_path: PathBuf, config: Config, clock: Clock) -> JobRunner {
        let config: SharedConfig = Arc::new(RwLock::new(Arc::new(config)));
        JobRunner { worker: None, store_path, config, clock, store: None, sessions: Sessions::new(SessionPool::new()) }
    }

    fn store(&mut self) -> Result<&mut Store, Failure> {
        if self.store.is_none() {
            self.store = Some(Store::open(&self.store_path)?);
        }
        Ok(self.store.as_mut().expect("opened above"))
    }

    /// The thread history names: "t1"… for a worker, "cli" for a run by hand.
    fn thread_name(&self) -> String {
        self.worker.map_or_else(|| "cli".to_string(), |i| format!("t{}", i + 1))
    }
}

/// The job of the task, given the ids it carries.
fn execute(ctx: &mut Ctx, task: &Task) -> Result<Report, Failure> {
    match *task {
        Task::ListFolders(account) => jobs::sync::list_folders(ctx, account),
        Task::SyncRecent(at) => jobs::sync::sync_folder(ctx, task, at, false),
        Task::SyncFull(at) => jobs::sync::sync_folder(ctx, task, at, true),
        Task::Receive(at) => jobs::receive::receive(ctx, task, at, Lane::Primary),
        Task::ReceiveSecondary(at) => jobs::receive::receive(ctx, task, at, Lane::Secondary),
        Task::SyncDelete(at) => jobs::delete::sync_delete(ctx, at),
        Task::PurgeDeleted => jobs::delete::purge_deleted(ctx),
        Task::CleanMailboxes(account) => jobs::delete::clean_mailboxes(ctx, account),
        Task::Vacuum => jobs::maintenance::vacuum(ctx),
        Task::Backup => jobs::maintenance::backup(ctx),
        Task::FullResync(account) => jobs::maintenance::full_resync(ctx, account),
        Task::InternalClean => jobs::maintenance::internal_clean(ctx),
        Task::PruneHistory => jobs::maintenance::prune_history(ctx),
        Task::Send(account) => jobs::send::send(ctx, task, account, false),
        Task::SendSecondary(account) => jobs::send::send(ctx, task, account, true),
    }
}

impl Runner for JobRunner {
    fn run(&mut self, task: &Task) -> Result<Report, Failure> {
        let config = self.config.read().unwrap_or_else(|e| e.into_inner()).clone();
        let _scope = crate::logctx::scope(task.account(), task.folder());
        let thread = self.thread_name();
        let clock = self.clock;
        let idx = self.worker;
        let by_hand = idx.is_none();
        let started = Instant::now();
        let store = self.store()?;
        // Tasks queued before another task of the account failed (a refused login, a dropped
        // connection, a server that said "Request is throttled. Suggested Backoff Time: 1500
        // milliseconds") wait for the account's next try like the rest of its work: run now,
        // they would log in again at once, and the throttling server would see our next
        // command in the same millisecond. Not started, nothing recorded: the store still
        // holds their work for a later tick.
        if let Some(account) = task.account()
            && task.job().waits_for_account()
            && let Ok(a) = store.account(account)
            && let Some(until) = a.retry_after.filter(|t| *t > clock.now())
        {
            log::debug!("{task} not started: the account backs off for {} s more", until - clock.now());
            return Err(Failure::new(FailureKind::Cancelled, "not started: the account backs off"));
        }
        let history = |status, detail, count, ms| NewHistory {
            kind: Some(task.job().key()),
            process: task.job().name(),
            status,
            detail,
            account_id: task.account(),
            folder_id: task.folder(),
            count,
            duration_ms: ms,
            thread: Some(&thread),
        };
        let worker = |task: Option<String>, account_id, folder_id| {
            idx.map(|i| WorkerRow {
                thread: i as i64 + 1,
                task,
                account_id,
                folder_id,
                done: None,
                total: None,
                since: Some(clock.now()),
            })
        };
        // A task's bookkeeping is one commit at its start and one at its end.
        let running = worker(Some(task.to_string()), task.account(), task.folder());
        if let Err(e) = store.task_started(&history("Started", None, None, None), running.as_ref(), clock.now()) {
            log::error!("cannot write history: {e}");
        }
        let store = self.store.as_mut().expect("opened above");
        // Every task has an overall deadline on top of the per-read timeouts (BG_TASK_DEADLINE,
        // renewed while bytes come at BG_MIN_TRANSFER_RATE).
        let deadline =
            backproc_imap::Deadline::new(Duration::from_secs(config.bg_task_deadline), config.bg_min_transfer_rate);
        self.sessions.begin_task(Some(deadline), task.job().receives());
        let mut ctx =
            Ctx { store: &mut *store, config: &config, clock, sessions: &mut self.sessions, worker: idx, by_hand };
        let result = match (execute(&mut ctx, task), self.sessions.end_task()) {
            (Ok(_), Some(throttled)) => Err(throttled),
            (result, _) => result,
        };
        let ignored = self.sessions.take_ignored();
        if ignored > 0 {
            log::debug!("{ignored} FETCH answer(s) for UIDs not asked were ignored");
            if let Err(e) = store.add_counter("ignored_fetch_responses", ignored as i64) {
                log::warn!("cannot count ignored FETCH answers: {e}");
            }
        }
        let ms = started.elapsed().as_millis() as i64;
        // The account's health: a success clears its back-off (in the end's commit below); a
        // failure of the account as a whole (refused login, unreachable server, a connection
        // dropped mid-command, TLS) backs it off, so it is not retried every tick.
        let mut success = None;
        if let Some(account) = task.account() {
            let now = clock.now();
            match &result {
                // A run by hand is maintenance: it proves nothing of the account's server.
                Ok(_) if !by_hand => success = Some(account),
                // SMTP trouble backs off the outbox entries (their own next attempt), not the
                // account's IMAP work.
                Err(f) if f.kind.account_level() && !matches!(task.job(), Job::Send | Job::SendSecondary) => {
                    if let Ok(a) = store.account(account)
                        && let Err(e) = crate::sessions::record_failure(store, &config, &a, f, now)
                    {
                        log::error!("cannot record the account's health: {e}");
                    }
                }
                _ => {}
            }
        }
        let h = match &result {
            Ok(r) => history("Finished", None, Some(r.count), Some(ms)),
            Err(f) => history(task.job().failed(f.kind), Some(&f.detail), None, Some(ms)),
        };
        match store.task_finished(&h, worker(None, None, None).as_ref(), success, clock.now()) {
            Ok(n) if n > 0 => log::info!("account {} works again after {n} failure(s)", task.account().unwrap_or(0)),
            Ok(_) => {}
            Err(e) => log::error!("cannot write history and the account's health: {e}"),
        }
        result
    }

    fn idle(&mut self) {
        let idle = self.config.read().unwrap_or_else(|e| e.into_inner()).bg_session_idle_timeout;
        self.sessions.close_idle(Duration::from_secs(idle));
    }
}

impl Drop for JobRunner {
    fn drop(&mut self) {
        self.sessions.close_all();
    }
}
