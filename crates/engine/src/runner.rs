//! One worker's job runner: its store connection and sessions, the dispatch from a task to
//! the job that does it, and the history record of every run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backproc_store::{Lane, NewHistory, Store, WorkerRow};

use crate::jobs::{self, Ctx};
use crate::pool::Runner;
use crate::sessions::Sessions;
use crate::task::{Failure, Job, Report, Task};
use crate::{Clock, SharedConfig};

pub struct JobRunner {
    idx: usize,
    store_path: PathBuf,
    #[allow(dead_code)]
    data_dir: PathBuf,
    config: SharedConfig,
    clock: Clock,
    store: Option<Store>,
    sessions: Sessions,
}

impl JobRunner {
    pub fn new(idx: usize, store_path: PathBuf, data_dir: PathBuf, config: SharedConfig, clock: Clock) -> JobRunner {
        JobRunner { idx, store_path, data_dir, config, clock, store: None, sessions: Sessions::new() }
    }

    fn store(&mut self) -> Result<&mut Store, Failure> {
        if self.store.is_none() {
            self.store = Some(Store::open(&self.store_path)?);
        }
        Ok(self.store.as_mut().expect("opened above"))
    }

    fn thread_name(&self) -> String {
        format!("t{}", self.idx + 1)
    }
}

fn execute(ctx: &mut Ctx, task: &Task) -> Result<Report, Failure> {
    match task.job {
        Job::ListFolders => jobs::sync::list_folders(ctx, task),
        Job::SyncRecent => jobs::sync::sync_folder(ctx, task, false),
        Job::SyncFull => jobs::sync::sync_folder(ctx, task, true),
        Job::Receive => jobs::receive::receive(ctx, task, Lane::Primary),
        Job::ReceiveSecondary => jobs::receive::receive(ctx, task, Lane::Secondary),
        Job::SyncDelete => jobs::delete::sync_delete(ctx, task),
        Job::PurgeDeleted => jobs::delete::purge_deleted(ctx, task),
        Job::CleanMailboxes => jobs::delete::clean_mailboxes(ctx, task),
        Job::Vacuum => jobs::maintenance::vacuum(ctx, task),
        Job::Backup => jobs::maintenance::backup(ctx, task),
        Job::FullResync => jobs::maintenance::full_resync(ctx, task),
        Job::InternalClean => jobs::maintenance::internal_clean(ctx, task),
        Job::PruneHistory => jobs::maintenance::prune_history(ctx, task),
        Job::Send => jobs::send::send(ctx, task, false),
        Job::SendSecondary => jobs::send::send(ctx, task, true),
        Job::Sleep => {
            log::info!("sleep task started ({}ms)", task.arg);
            let until = Instant::now() + Duration::from_millis(task.arg);
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
            log::info!("sleep task finished");
            Ok(Report::default())
        }
    }
}

impl Runner for JobRunner {
    fn run(&mut self, task: &Task) -> Result<Report, Failure> {
        let config = self.config.read().unwrap_or_else(|e| e.into_inner()).clone();
        let _scope = crate::logctx::scope(task.account, task.folder);
        let thread = self.thread_name();
        let clock = self.clock;
        let idx = self.idx;
        let started = Instant::now();
        let store = self.store()?;
        let history = |store: &mut Store, status: &str, detail: Option<&str>, count: Option<i64>, ms: Option<i64>| {
            let h = NewHistory {
                process: task.job.name(),
                status,
                detail,
                account_id: task.account,
                folder_id: task.folder,
                count,
                duration_ms: ms,
                thread: Some(&thread),
            };
            if let Err(e) = store.add_history(&h, clock.now()) {
                log::error!("cannot write history: {e}");
            }
        };
        history(store, "Started", None, None, None);
        let _ = store.set_worker(&WorkerRow {
            thread: idx as i64 + 1,
            task: Some(task.to_string()),
            account_id: task.account,
            folder_id: task.folder,
            done: None,
            total: None,
            since: Some(clock.now()),
        });
        let store = self.store.as_mut().expect("opened above");
        let mut ctx = Ctx { store: &mut *store, config: &config, clock, sessions: &mut self.sessions, thread: idx };
        let result = execute(&mut ctx, task);
        let ms = started.elapsed().as_millis() as i64;
        // The account's health: a success clears its back-off; a failure of the account as a
        // whole (refused login, unreachable server, a connection dropped mid-command, TLS)
        // backs it off, so it is not retried every tick.
        if let Some(account) = task.account {
            let now = clock.now();
            match &result {
                Ok(_) if task.job != Job::Sleep => match store.record_account_success(account, now) {
                    Ok(n) if n > 0 => log::info!("account {account} works again after {n} failure(s)"),
                    Ok(_) => {}
                    Err(e) => log::error!("cannot record the account's health: {e}"),
                },
                // SMTP trouble backs off the outbox entries (their own next attempt), not the
                // account's IMAP work.
                Err(f) if f.kind.account_level() && !matches!(task.job, Job::Send | Job::SendSecondary) => {
                    if let Ok(a) = store.account(account)
                        && let Err(e) = crate::sessions::record_failure(store, &config, &a, f, now)
                    {
                        log::error!("cannot record the account's health: {e}");
                    }
                }
                _ => {}
            }
        }
        match &result {
            Ok(r) => history(store, "Finished", None, Some(r.count), Some(ms)),
            Err(f) => history(store, f.kind.status(), Some(&f.detail), None, Some(ms)),
        }
        let _ = store.set_worker(&WorkerRow {
            thread: idx as i64 + 1,
            task: None,
            account_id: None,
            folder_id: None,
            done: None,
            total: None,
            since: Some(clock.now()),
        });
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
