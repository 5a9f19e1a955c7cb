//! The scheduler: which tasks are due now.
//!
//! The decisions are pure functions of (rows read from the store, config, now) — see
//! `folder_due` and `daily_start` — so they are tested with an injected clock, no sleeping.

use std::collections::{BTreeSet, HashMap, HashSet};

use backproc_config::{Config, TimeOfDay};
use backproc_store::{DueCuts, Lane, Priority, SchedFolder, Store};
use backproc_types::Backoff;
use chrono::{Days, NaiveTime, TimeZone};

use crate::Clock;
use crate::task::{FailureKind, FolderOf, Job, Outcome, Task};

/// The kind of sync a folder is due for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncDue {
    Recent,
    Full,
}

/// The intervals that decide high-priority syncs (from config).
#[derive(Debug, Clone, Copy)]
pub struct Intervals {
    pub recent: i64,
    pub recent_nl: i64,
    pub full: i64,
    pub full_nl: i64,
}

impl Intervals {
    pub fn from_config(c: &Config) -> Intervals {
        Intervals {
            recent: c.email_bg_hi_folders_recent_sync_interval as i64,
            recent_nl: c.email_bg_hi_folders_recent_sync_interval_nl as i64,
            full: c.email_bg_hi_folders_folders_full_sync_interval as i64,
            full_nl: c.email_bg_hi_folders_folders_full_sync_interval_nl as i64,
        }
    }
}

/// The most recent daily start (local time `at`) at or before `now`, as unix seconds.
/// A start time that does not exist on a day (DST gap) moves to the next valid minute;
/// an ambiguous one (DST fold) takes the earlier instant.
pub fn daily_start<Tz: TimeZone>(tz: &Tz, now: i64, at: TimeOfDay) -> i64 {
    let Some(now_local) = tz.timestamp_opt(now, 0).single() else {
        return now;
    };
    let time = NaiveTime::from_hms_opt(u32::from(at.hour), u32::from(at.minute), 0).unwrap_or(NaiveTime::MIN);
    let at_day = |date: chrono::NaiveDate| -> i64 {
        let mut naive = date.and_time(time);
        for _ in 0..180 {
            if let Some(t) = tz.from_local_datetime(&naive).earliest() {
                return t.timestamp();
            }
            naive += chrono::Duration::minutes(1);
        }
        naive.and_utc().timestamp()
    };
    let today = now_local.date_naive();
    let start = at_day(today);
    if start <= now { start } else { today.checked_sub_days(Days::new(1)).map(at_day).unwrap_or(start) }
}

/// Whether a folder is due for a sync, and which.
///
/// - priority off: never (an administrator excluded it; this wins even over the first sync);
/// - "check mail now" or never synced: a full sync at once;
/// - high: full every FULL interval, recent every RECENT interval (the _NL ones when the
///   owner is not logged in); a full sync counts as a recent one;
/// - low: one full sync a day from the daily start; missed while down → as soon as up.
pub fn folder_due(f: &SchedFolder, now: i64, iv: &Intervals, low_start: i64) -> Option<SyncDue> {
    match f.priority {
        Priority::Off => return None,
        _ if f.sync_requested.is_some() || f.last_full_sync.is_none() => {
            return Some(SyncDue::Full);
        }
        Priority::High => {}
        Priority::Low => {
            return (f.last_full_sync.is_some_and(|t| t < low_start)).then_some(SyncDue::Full);
        }
    }
    let (recent_iv, full_iv) = if f.logged_in { (iv.recent, iv.full) } else { (iv.recent_nl, iv.full_nl) };
    let last_full = f.last_full_sync.unwrap_or(i64::MIN / 2);
    let last_recent = f.last_recent_sync.unwrap_or(i64::MIN / 2).max(last_full);
    if now - last_full >= full_iv {
        Some(SyncDue::Full)
    } else if now - last_recent >= recent_iv {
        Some(SyncDue::Recent)
    } else {
        None
    }
}

/// Keeps at most `per_host` connections' worth of tasks queued or running per server host,
/// so that many accounts on one server (which caps connections per user and per IP) share it
/// instead of being refused. An account's tasks need one connection, its syncs and receives
/// of different folders up to `parallel` ([`connections`]). Tasks over the budget stay due and
/// are offered again at the next tick.
pub fn budget(
    due: Vec<Task>,
    in_flight: &HashMap<Task, usize>,
    hosts: &HashMap<i64, String>,
    per_host: usize,
    parallel: usize,
) -> Vec<Task> {
    budget_lowered(due, in_flight, hosts, per_host, parallel, &HashMap::new(), &HashMap::new())
}

/// The most connections an account's queued and running `tasks` use at once: one, or one per
/// folder synced or received, up to `parallel` (the pool runs those side by side:
/// `task::may_start`); none without tasks.
pub fn connections(tasks: &[Task], parallel: usize) -> usize {
    if tasks.is_empty() {
        return 0;
    }
    let folders: BTreeSet<i64> = tasks.iter().filter_map(Task::folder_work).collect();
    folders.len().clamp(1, parallel.max(1))
}

/// [`budget`], with the hosts whose budget the session pool lowered ("too many connections",
/// `SessionPool::lowered`) held to that: more accounts in flight than the host's connections
/// would have each task log out another account's idle session and log in again (10 accounts
/// of 6 tasks each on a host lowered to 3: about 55 logins, about 20 held to it).
///
/// An account's `open` connections (in use or idle, `SessionPool::open_counts`) are ones it
/// holds already: a task that runs on one opens none, and is never held back. Held back, it
/// would wait in the store for the next tick while new accounts took the host's connections,
/// and by then its session would have been logged out to make room for them (1,000 accounts
/// on one host: a third of the receives waited up to 11 s and logged in again).
pub fn budget_lowered(
    due: Vec<Task>,
    in_flight: &HashMap<Task, usize>,
    hosts: &HashMap<i64, String>,
    per_host: usize,
    parallel: usize,
    lowered: &HashMap<String, usize>,
    open: &HashMap<i64, usize>,
) -> Vec<Task> {
    let mut tasks: HashMap<i64, Vec<Task>> = HashMap::new();
    for t in in_flight.keys() {
        if let Some(a) = t.account() {
            tasks.entry(a).or_default().push(*t);
        }
    }
    let mut busy: HashMap<&str, usize> = HashMap::new();
    // Connections each account holds: those it has open, or those its tasks in flight use
    // (not both: a queued task's connection is the idle session it will run on). Not on a
    // lowered host: there more accounts wait than it lets in, and an idle session counted as
    // held is taken by the next new connection before its account's task runs (the Gmail
    // test of tests/budget.rs: up to 30 logins for 10 accounts).
    let mut held: HashMap<i64, usize> = open
        .iter()
        .filter(|(a, _)| hosts.get(*a).is_none_or(|h| !lowered.contains_key(h)))
        .map(|(a, n)| (*a, *n))
        .collect();
    for (a, ts) in &tasks {
        if let Some(h) = hosts.get(a) {
            let n = connections(ts, parallel);
            *busy.entry(h).or_default() += n;
            let have = held.entry(*a).or_default();
            *have = (*have).max(n);
        }
    }
    due.into_iter()
        .filter(|t| {
            let Some(a) = t.account() else { return true };
            let Some(h) = hosts.get(&a) else { return true };
            let mine = tasks.entry(a).or_default();
            let before = connections(mine, parallel);
            mine.push(*t);
            // An account reuses the connections it holds (its tasks run one after the other
            // on them), unless this task works on another folder beside them on a new one.
            // `used` counts in the host's busy connections, `opened` against its budget.
            let after = connections(mine, parallel);
            let used = after - before;
            let have = held.get(&a).copied().unwrap_or(0);
            let opened = after.saturating_sub(have) - before.saturating_sub(have);
            let limit = lowered.get(h).map_or(per_host, |&l| l.min(per_host));
            let n = busy.entry(h).or_default();
            if opened > 0 && *n + opened > limit {
                mine.pop();
                return false;
            }
            *n += used;
            true
        })
        .collect()
}

/// The accounts whose idle sessions are better closed now: those with connections `open` and
/// no task queued, running or due, on a host where the budget holds work back. Their
/// sessions would only serve their next interval, and the waiting work needs the slots.
pub fn idle_to_close(
    open: &HashMap<i64, usize>,
    in_flight: &HashMap<Task, usize>,
    due: &HashSet<i64>,
    hosts: &HashMap<i64, String>,
    held_hosts: &HashSet<String>,
) -> Vec<i64> {
    let busy: HashSet<i64> = in_flight.keys().filter_map(|t| t.account()).collect();
    let mut close: Vec<i64> = open
        .iter()
        .filter(|(a, n)| **n > 0 && !busy.contains(a) && !due.contains(a))
        .filter(|(a, _)| hosts.get(a).is_some_and(|h| held_hosts.contains(h)))
        .map(|(a, _)| *a)
        .collect();
    close.sort_unstable();
    close
}

pub struct Scheduler {
    clock: Clock,
    /// Accounts whose folders were listed in this master's life, and when.
    listed: HashMap<i64, i64>,
    /// Last run of interval jobs, keyed by job name.
    last_interval: HashMap<&'static str, i64>,
    /// The IMAP host of each account (refreshed every tick), for the per-host budget.
    hosts: HashMap<i64, String>,
    /// Tasks that failed on the store (disk full, I/O error) and when they may run again: such
    /// a failure could not record a back-off, so the task would stay due and be retried at
    /// once, forever (and `run --once` would never end).
    held: HashMap<Task, i64>,
    /// Failures in a row of each task that failed on its own (a folder the server refuses, an
    /// answer we cannot use): its hold doubles with each one (`backoff`).
    failures: HashMap<Task, u32>,
    /// Hosts whose connection budget the session pool lowered, and to what (`set_sessions`).
    lowered: HashMap<String, usize>,
    /// Task connections open per account (`set_sessions`): its next tasks run on them.
    open: HashMap<i64, usize>,
    /// The budget held back due work at the last tick or follow-up (`held_back`).
    held_back: bool,
    /// At the last tick: the accounts with work due, and the hosts where the budget held some
    /// back (`idle_to_close`).
    due_accounts: HashSet<i64>,
    held_hosts: HashSet<String>,
}

/// BG_BACKOFF_BASE and BG_BACKOFF_MAX as the back-off rule: of an account's next connection,
/// a receive or outbox entry's next attempt, and a task's hold (a task that failed `n` times
/// in a row waits `after(n)`: a folder the server keeps refusing is then tried every hour,
/// not every minute with a fresh login).
pub fn backoff(config: &Config) -> Backoff {
    Backoff { base: config.bg_backoff_base as i64, max: config.bg_backoff_max as i64 }
}

impl Scheduler {
    pub fn new(clock: Clock) -> Scheduler {
        Scheduler {
            clock,
            listed: HashMap::new(),
            last_interval: HashMap::new(),
            hosts: HashMap::new(),
            held: HashMap::new(),
            failures: HashMap::new(),
            lowered: HashMap::new(),
            open: HashMap::new(),
            held_back: false,
            due_accounts: HashSet::new(),
            held_hosts: HashSet::new(),
        }
    }

    /// What the session pool holds now, for the next budget: the hosts whose budget is
    /// lowered (`SessionPool::lowered`) and each account's open connections
    /// (`SessionPool::open_counts`).
    pub fn set_sessions(&mut self, lowered: HashMap<String, usize>, open: HashMap<i64, usize>) {
        self.lowered = lowered;
        self.open = open;
    }

    /// Whether interval job `job` is due: its last run (remembered, or read from the store
    /// once) is `every` seconds old. A store that cannot say is an error, not "never ran".
    fn interval_due(
        &mut self,
        store: &Store,
        job: &'static str,
        every: i64,
        now: i64,
    ) -> Result<bool, backproc_store::Error> {
        let last = match self.last_interval.get(job) {
            Some(t) => *t,
            // Heavy housekeeping on a store that never had it starts one interval from now,
            // not on the first tick of a new install (a backup of an empty store is useless
            // and the first sync deserves the disk); the rest starts at once.
            None => store.job_last_run(job)?.unwrap_or(if job == Job::Vacuum.key() || job == Job::Backup.key() {
                now
            } else {
                0
            }),
        };
        self.last_interval.insert(job, last);
        Ok(now - last >= every)
    }

    /// Every task due now that is not already queued or running and that the caller
    /// `wanted`, most urgent first, within the per-host budget, at most
    /// BG_MAX_STARTS_PER_TICK of them (the rest stay due: spread over the next ticks).
    pub fn due(
        &mut self,
        store: &mut Store,
        config: &Config,
        in_flight: &HashMap<Task, usize>,
        wanted: &dyn Fn(&Task) -> bool,
    ) -> Result<Vec<Task>, backproc_store::Error> {
        let now = self.clock.now();
        let mut due: Vec<Task> = Vec::new();
        if config.email_background_sync_enabled {
            let iv = Intervals::from_config(config);
            let low_start = daily_start(&chrono::Local, now, config.email_bg_lo_folders_sync_start);
            let accounts = store.schedule_accounts(now)?;
            self.hosts = accounts.iter().map(|a| (a.id, a.imap_host.to_ascii_lowercase())).collect();
            let ready: BTreeSet<i64> = accounts.iter().filter(|a| a.ready).map(|a| a.id).collect();
            // Folder discovery when the master starts, then every (shorter) full interval.
            let full_iv = iv.full.min(iv.full_nl);
            for &a in &ready {
                if self.listed.get(&a).is_none_or(|t| now - t >= full_iv) {
                    due.push(Task::ListFolders(a));
                }
            }
            let cuts = DueCuts { recent: now - iv.recent.min(iv.recent_nl), full: now - full_iv, low_start };
            for f in store.schedule_candidates(now, cuts)?.iter().filter(|f| f.account_ready) {
                let Some(folder) = f.folder_id else { continue };
                let on = FolderOf { account: f.account_id, folder };
                match folder_due(f, now, &iv, low_start) {
                    Some(SyncDue::Full) => due.push(Task::SyncFull(on)),
                    Some(SyncDue::Recent) => due.push(Task::SyncRecent(on)),
                    None => {}
                }
            }
            for (account, folder) in store.folders_with_due_receive(Lane::Primary, now)? {
                if ready.contains(&account) {
                    due.push(Task::Receive(FolderOf { account, folder }));
                }
            }
            // Sync Delete where there is deletion work, looked for every interval.
            if self.interval_due(store, "sync_delete", config.email_bg_sync_delete_interval as i64, now)? {
                self.last_interval.insert("sync_delete", now);
                for (account, folder) in store.folders_with_deletion_work()? {
                    if ready.contains(&account) {
                        due.push(Task::SyncDelete(FolderOf { account, folder }));
                    }
                }
            }
            if self.interval_due(store, "clean_mailboxes", config.email_bg_clean_mailboxes_interval as i64, now)? {
                self.last_interval.insert("clean_mailboxes", now);
                store.set_job_last_run("clean_mailboxes", now)?;
                for (account, _) in store.accounts_with_retention()? {
                    if ready.contains(&account) {
                        due.push(Task::CleanMailboxes(account));
                    }
                }
            }
            if self.interval_due(store, Job::PurgeDeleted.key(), config.email_bg_purge_deleted_interval as i64, now)? {
                due.push(Task::PurgeDeleted);
            }
            if self.interval_due(store, "receive_secondary", config.email_bg_secondary_interval as i64, now)? {
                for (account, folder) in store.folders_with_due_receive(Lane::Secondary, now)? {
                    if ready.contains(&account) {
                        due.push(Task::ReceiveSecondary(FolderOf { account, folder }));
                    }
                }
                self.last_interval.insert("receive_secondary", now);
            }
        }
        if config.email_outbox_enabled
            && self.interval_due(store, "send_poll", config.email_bg_send_poll_interval as i64, now)?
        {
            self.last_interval.insert("send_poll", now);
            let expired = store.outbox_expire_leases(now)?;
            for id in expired.unknown {
                log::error!(
                    "outbox entry {id} was still PROCESSING past its lease: delivery outcome unknown, marked ERROR"
                );
            }
            for id in expired.returned {
                log::warn!("outbox entry {id} was claimed ahead but never sent before its lease expired: due again");
            }
            let mut accounts: BTreeSet<i64> = store.outbox_due_accounts(now, false)?.into_iter().collect();
            accounts.extend(store.outbox_append_accounts()?);
            for a in accounts {
                due.push(Task::Send(a));
            }
            if self.interval_due(store, "send_secondary", config.email_bg_secondary_interval as i64, now)? {
                self.last_interval.insert("send_secondary", now);
                for a in store.outbox_due_accounts(now, true)? {
                    due.push(Task::SendSecondary(a));
                }
            }
        }
        // Housekeeping on its own intervals, whatever else is enabled.
        for (task, every) in [
            (Task::InternalClean, config.internal_msg_clean_interval),
            (Task::PruneHistory, 86_400),
            (Task::Vacuum, config.bg_vacuum_interval),
            (Task::Backup, config.bg_backup_interval),
        ] {
            if self.interval_due(store, task.job().key(), every as i64, now)? {
                due.push(task);
            }
        }
        self.held.retain(|_, until| *until > now);
        due.retain(|t| !in_flight.contains_key(t) && !self.held.contains_key(t) && wanted(t));
        // Urgent first; a stable order otherwise.
        due.sort_by_key(|t| (!t.job().urgent(), *t));
        due.dedup();
        let (per_host, parallel) =
            (config.bg_max_connections_per_host as usize, config.email_bg_account_connections as usize);
        let wanted = due.clone();
        let mut due = budget_lowered(due, in_flight, &self.hosts, per_host, parallel, &self.lowered, &self.open);
        self.held_back = due.len() < wanted.len();
        self.due_accounts = wanted.iter().filter_map(|t| t.account()).collect();
        let kept: HashSet<&Task> = due.iter().collect();
        self.held_hosts = wanted
            .iter()
            .filter(|t| !kept.contains(t))
            .filter_map(|t| self.hosts.get(&t.account()?).cloned())
            .collect();
        due.truncate(config.bg_max_starts_per_tick as usize);
        Ok(due)
    }

    /// Follow-up tasks held to the per-host budget like the tick's. While no budget is
    /// lowered, only receives are: the account of any other follow-up was within the budget a
    /// moment ago and goes on on its connection, but a receive may run beside its account's
    /// other work on a connection more (`task::may_start`), which the host must have room
    /// for. Once a budget is lowered, all are: accounts already in flight on that host would
    /// otherwise go on through all their follow-ups, more of them than the host's
    /// connections, each task logging out another account's session and logging in again.
    /// What is held back stays due in the store (a receive's queue, a sync's interval) and is
    /// offered again by a later tick.
    pub fn within_budget(&mut self, follow: Vec<Task>, in_flight: &HashMap<Task, usize>, config: &Config) -> Vec<Task> {
        let (per_host, parallel) =
            (config.bg_max_connections_per_host as usize, config.email_bg_account_connections as usize);
        let (held, mut free): (Vec<Task>, Vec<Task>) =
            follow.into_iter().partition(|t| !self.lowered.is_empty() || t.job().receives());
        let n = held.len();
        let kept = budget_lowered(held, in_flight, &self.hosts, per_host, parallel, &self.lowered, &self.open);
        self.held_back |= kept.len() < n;
        free.extend(kept);
        free
    }

    /// Whether some host's budget is lowered now (`set_sessions`).
    pub fn any_lowered(&self) -> bool {
        !self.lowered.is_empty()
    }

    /// [`idle_to_close`] after the last tick's `due`.
    pub fn idle_to_close(&self, in_flight: &HashMap<Task, usize>) -> Vec<i64> {
        idle_to_close(&self.open, in_flight, &self.due_accounts, &self.hosts, &self.held_hosts)
    }

    /// Whether the per-host budget held back work that is due: the master then looks again
    /// as soon as an account's last task ends (a connection is free), not at the next tick.
    pub fn held_back(&self) -> bool {
        self.held_back
    }

    /// Records a finished task; returns follow-up tasks to dispatch at once.
    pub fn finished(&mut self, store: &mut Store, config: &Config, o: &Outcome) -> Vec<Task> {
        let _scope = crate::logctx::scope(o.task.account(), o.task.folder());
        match &o.result {
            Ok(r) => {
                self.failures.remove(&o.task);
                if o.task.account().is_none() {
                    // interval jobs: remembered across restarts
                    let now = self.clock.now();
                    self.last_interval.insert(o.task.job().key(), now);
                    if let Err(e) = store.set_job_last_run(o.task.job().key(), now) {
                        log::error!("cannot record the run of {}: {e}", o.task);
                    }
                }
                if o.task.job() == Job::ListFolders
                    && let Some(a) = o.task.account()
                {
                    self.listed.insert(a, self.clock.now());
                }
                log::debug!("{} finished ({})", o.task, r.count);
                r.follow_up.clone()
            }
            Err(f) => {
                if o.task.job() == Job::ListFolders
                    && let Some(a) = o.task.account()
                {
                    // Retried when the account's back-off allows, not every tick.
                    self.listed.insert(a, self.clock.now());
                }
                if !f.kind.account_level() && f.kind != FailureKind::Cancelled {
                    log::error!("{} failed: {f}", o.task.job().name());
                }
                // A task that failed waits the back-off base before it is due again: the
                // account's back-off covers connection and login trouble, but a failure of
                // one folder (a server NO or an unparsable answer about it) or of the store
                // (disk full) would otherwise come back every tick, and `run --once` would
                // never see "nothing due".
                if f.kind != FailureKind::Cancelled {
                    let n = self.failures.entry(o.task).or_default();
                    *n += 1;
                    let hold = backoff(config).after(i64::from(*n));
                    if *n > 1 {
                        log::debug!("{} failed {n} times in a row: next try in {hold}s", o.task);
                    }
                    self.held.insert(o.task, self.clock.now() + hold);
                }
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests;
