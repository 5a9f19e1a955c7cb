//! What the master hands to workers, and what workers hand back.

use std::fmt;

use backproc_types::Cause;

/// The kinds of background process (one button each in the original's admin page, plus
/// maintenance). `name()` is what history and status show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Job {
    /// Sync of one folder: new UIDs only.
    SyncRecent,
    /// Sync of one folder: new UIDs, all flags, vanished messages.
    SyncFull,
    /// Folder discovery of an account (LIST).
    ListFolders,
    Receive,
    ReceiveSecondary,
    Send,
    SendSecondary,
    SyncDelete,
    PurgeDeleted,
    CleanMailboxes,
    Vacuum,
    Backup,
    FullResync,
    PruneHistory,
    InternalClean,
}

impl Job {
    pub fn name(self) -> &'static str {
        match self {
            Job::SyncRecent => "Sync (recent)",
            Job::SyncFull => "Sync (full)",
            Job::ListFolders => "Folder discovery",
            Job::Receive => "Receive",
            Job::ReceiveSecondary => "Receive Secondary",
            Job::Send => "Send",
            Job::SendSecondary => "Send Secondary",
            Job::SyncDelete => "Sync Delete",
            Job::PurgeDeleted => "Purge Deleted",
            Job::CleanMailboxes => "Clean Mailboxes",
            Job::Vacuum => "DB defragmentation",
            Job::Backup => "Backup",
            Job::FullResync => "Full resynchronization",
            Job::PruneHistory => "Deleting expired history",
            Job::InternalClean => "Deleting expired internal messages",
        }
    }

    /// A stable identifier (for job_runs and metrics).
    pub fn key(self) -> &'static str {
        match self {
            Job::SyncRecent => "sync_recent",
            Job::SyncFull => "sync_full",
            Job::ListFolders => "list_folders",
            Job::Receive => "receive",
            Job::ReceiveSecondary => "receive_secondary",
            Job::Send => "send",
            Job::SendSecondary => "send_secondary",
            Job::SyncDelete => "sync_delete",
            Job::PurgeDeleted => "purge_deleted",
            Job::CleanMailboxes => "clean_mailboxes",
            Job::Vacuum => "vacuum",
            Job::Backup => "backup",
            Job::FullResync => "full_resync",
            Job::PruneHistory => "prune_history",
            Job::InternalClean => "internal_clean",
        }
    }

    /// IMAP work of one account, which the scheduler starts only while the account is not
    /// backing off (and a worker does not start while it is: `JobRunner::run`).
    pub fn waits_for_account(self) -> bool {
        matches!(
            self,
            Job::ListFolders
                | Job::SyncRecent
                | Job::SyncFull
                | Job::Receive
                | Job::ReceiveSecondary
                | Job::SyncDelete
                | Job::CleanMailboxes
        )
    }

    /// What history says when a run of this job fails: a maintenance process says which
    /// process failed (its failures are all the store's or the disk's), the mail jobs say what
    /// failed ([`FailureKind::status`]); a task that never started was cancelled, whatever its job.
    pub fn failed(self, kind: FailureKind) -> &'static str {
        match (self, kind) {
            (_, FailureKind::Cancelled) => kind.status(),
            (Job::Vacuum, _) => "Database defragmentation failed",
            (Job::Backup, _) => "Backup failed",
            (Job::FullResync, _) => "Full resynchronization failed",
            (Job::PruneHistory, _) => "Deleting expired history failed",
            (Job::InternalClean, _) => "Deleting expired internal messages failed",
            _ => kind.status(),
        }
    }

    pub fn receives(self) -> bool {
        matches!(self, Job::Receive | Job::ReceiveSecondary)
    }

    /// Urgent work goes to a worker's urgent lane so it never waits behind bulk syncs.
    pub fn urgent(self) -> bool {
        matches!(self, Job::SyncRecent | Job::Receive | Job::Send | Job::ListFolders)
    }
}

/// A folder of an account: what folder work runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FolderOf {
    pub account: i64,
    pub folder: i64,
}

/// One unit of work, carrying exactly the ids its job needs (a sync its folder, a send its
/// account, a backup nothing). Two equal tasks are the same work: never queued twice. The
/// variants are in [`Job`]'s order, so tasks sort as their jobs do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    SyncRecent(FolderOf),
    SyncFull(FolderOf),
    ListFolders(i64),
    Receive(FolderOf),
    ReceiveSecondary(FolderOf),
    Send(i64),
    SendSecondary(i64),
    SyncDelete(FolderOf),
    PurgeDeleted,
    CleanMailboxes(i64),
    Vacuum,
    Backup,
    FullResync(i64),
    PruneHistory,
    InternalClean,
}

impl Task {
    /// The task of `job` on these ids, when they are the ones it needs (a job chosen at run
    /// time: the scheduler's interval jobs, a push event); `None` otherwise.
    pub fn of(job: Job, account: Option<i64>, folder: Option<i64>) -> Option<Task> {
        let on = |f: fn(FolderOf) -> Task| Some(f(FolderOf { account: account?, folder: folder? }));
        match (job, account, folder) {
            (Job::SyncRecent, ..) => on(Task::SyncRecent),
            (Job::SyncFull, ..) => on(Task::SyncFull),
            (Job::Receive, ..) => on(Task::Receive),
            (Job::ReceiveSecondary, ..) => on(Task::ReceiveSecondary),
            (Job::SyncDelete, ..) => on(Task::SyncDelete),
            (Job::ListFolders, Some(a), None) => Some(Task::ListFolders(a)),
            (Job::Send, Some(a), None) => Some(Task::Send(a)),
            (Job::SendSecondary, Some(a), None) => Some(Task::SendSecondary(a)),
            (Job::CleanMailboxes, Some(a), None) => Some(Task::CleanMailboxes(a)),
            (Job::FullResync, Some(a), None) => Some(Task::FullResync(a)),
            (Job::PurgeDeleted, None, None) => Some(Task::PurgeDeleted),
            (Job::Vacuum, None, None) => Some(Task::Vacuum),
            (Job::Backup, None, None) => Some(Task::Backup),
            (Job::PruneHistory, None, None) => Some(Task::PruneHistory),
            (Job::InternalClean, None, None) => Some(Task::InternalClean),
            _ => None,
        }
    }

    pub fn job(&self) -> Job {
        match self {
            Task::SyncRecent(_) => Job::SyncRecent,
            Task::SyncFull(_) => Job::SyncFull,
            Task::ListFolders(_) => Job::ListFolders,
            Task::Receive(_) => Job::Receive,
            Task::ReceiveSecondary(_) => Job::ReceiveSecondary,
            Task::Send(_) => Job::Send,
            Task::SendSecondary(_) => Job::SendSecondary,
            Task::SyncDelete(_) => Job::SyncDelete,
            Task::PurgeDeleted => Job::PurgeDeleted,
            Task::CleanMailboxes(_) => Job::CleanMailboxes,
            Task::Vacuum => Job::Vacuum,
            Task::Backup => Job::Backup,
            Task::FullResync(_) => Job::FullResync,
            Task::PruneHistory => Job::PruneHistory,
            Task::InternalClean => Job::InternalClean,
        }
    }

    /// The folder and its account, for folder work.
    pub fn folder_of(&self) -> Option<FolderOf> {
        match *self {
            Task::SyncRecent(f)
            | Task::SyncFull(f)
            | Task::Receive(f)
            | Task::ReceiveSecondary(f)
            | Task::SyncDelete(f) => Some(f),
            _ => None,
        }
    }

    pub fn account(&self) -> Option<i64> {
        match *self {
            Task::ListFolders(a)
            | Task::Send(a)
            | Task::SendSecondary(a)
            | Task::CleanMailboxes(a)
            | Task::FullResync(a) => Some(a),
            _ => self.folder_of().map(|f| f.account),
        }
    }

    pub fn folder(&self) -> Option<i64> {
        self.folder_of().map(|f| f.folder)
    }

    /// The key of the worker this task must run on: all tasks of one account share a worker,
    /// but for receives that may run beside each other ([`may_start`]).
    pub fn affinity(&self) -> u64 {
        match self.account() {
            Some(a) => a as u64,
            None => u64::MAX - self.job() as u64,
        }
    }

    /// The folder of a sync or a receive: the work of an account that may run beside its
    /// other work on other folders ([`may_start`]).
    pub fn folder_work(&self) -> Option<i64> {
        match *self {
            Task::SyncRecent(f) | Task::SyncFull(f) | Task::Receive(f) | Task::ReceiveSecondary(f) => Some(f.folder),
            _ => None,
        }
    }

    fn is_sync(&self) -> bool {
        matches!(self, Task::SyncRecent(_) | Task::SyncFull(_))
    }
}

/// Whether `task` may start while `running` run, with up to `parallel` connections an account
/// (EMAIL_BG_ACCOUNT_CONNECTIONS).
///
/// Tasks of one account (one affinity key) run one at a time, except syncs and receives of
/// *different* folders, up to `parallel` at once and never two syncs: each has a session of
/// its own and reads and writes only its folder's rows, so an initial sync downloads several
/// folders at once (over a link with latency, or from a server that deflates or reads its
/// disk one connection at a time) and syncs the next folder meanwhile. Syncs stay one at a
/// time because they share the STATUS answers one session asked ahead for all folders: a
/// resync with nothing new stays on one connection. Account-wide work (folder discovery, Sync
/// Delete, Clean Mailboxes, sending) runs alone.
pub fn may_start(task: &Task, running: &[Task], parallel: usize) -> bool {
    let key = task.affinity();
    let same: Vec<&Task> = running.iter().filter(|r| r.affinity() == key).collect();
    if same.is_empty() {
        return true;
    }
    let Some(folder) = task.folder_work() else { return false };
    same.len() < parallel
        && same.iter().all(|r| r.folder_work().is_some_and(|f| f != folder))
        && !(task.is_sync() && same.iter().any(|r| r.is_sync()))
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.job().name())?;
        match (self.account(), self.folder()) {
            (None, None) => Ok(()),
            (a, fo) => write!(
                f,
                " [{},{}]",
                a.map(|v| v.to_string()).unwrap_or_default(),
                fo.map(|v| v.to_string()).unwrap_or_default()
            ),
        }
    }
}

/// Classes of failure: they decide back-off and the human status text in history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Login refused: wait EMAIL_AUTH_ERROR_CHECK_RETRY_TIME.
    Auth,
    /// The OAuth2 grant is revoked or expired (or the client refused): the account waits for
    /// `account authorize` or `account set`, not for a time.
    NeedsAuthorization,
    /// Server unreachable, connection refused or dropped: exponential back-off.
    Connect,
    /// TLS handshake or certificate failure.
    Tls,
    /// The server answered something we could not use.
    Protocol,
    /// The store failed (disk full, I/O).
    Store,
    /// A task panicked.
    Panic,
    /// A queued task that never started because the master stopped, or because its account
    /// began to back off after it was queued.
    Cancelled,
    Other,
}

impl FailureKind {
    /// Short, human status in the spirit of the original's history page.
    pub fn status(self) -> &'static str {
        match self {
            FailureKind::Auth => "Authentication failed",
            FailureKind::NeedsAuthorization => "Needs authorization",
            FailureKind::Connect => "Connection refused",
            FailureKind::Tls => "Secure connection failed",
            FailureKind::Protocol => "Invalid response from the synchronization server",
            FailureKind::Store => "Failed to access the database during synchronization",
            FailureKind::Panic => "Internal error",
            FailureKind::Cancelled => "Cancelled",
            FailureKind::Other => "Failed",
        }
    }
    /// Whether the account as a whole is unhealthy (back off all its tasks).
    pub fn account_level(self) -> bool {
        matches!(self, FailureKind::Auth | FailureKind::NeedsAuthorization | FailureKind::Connect | FailureKind::Tls)
    }
}

/// A failed job: a class, and the technical detail kept beside the human status.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    /// What went wrong, its cause's text included: what logs and history show.
    pub detail: String,
    /// How long the server asked us to wait before trying again (throttling), if it said.
    pub retry_after: Option<std::time::Duration>,
    /// The error it comes from (the store's, the server's and what underlies that), for a
    /// caller that must tell causes apart: [`std::error::Error::source`] walks it.
    pub source: Option<Cause>,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Failure {
        Failure { kind, detail: detail.into(), retry_after: None, source: None }
    }

    /// The failure, with the error it comes from.
    pub fn caused_by(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Failure {
        self.source = Some(Cause::new(e));
        self
    }
}

/// Two failures are the same when they say the same; their sources are not compared.
impl PartialEq for Failure {
    fn eq(&self, o: &Failure) -> bool {
        (self.kind, &self.detail, self.retry_after) == (o.kind, &o.detail, o.retry_after)
    }
}

impl Eq for Failure {}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.status(), self.detail)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(Cause::error)
    }
}

impl From<backproc_store::Error> for Failure {
    fn from(e: backproc_store::Error) -> Failure {
        Failure::new(FailureKind::Store, e.to_string()).caused_by(e)
    }
}

/// What a job reports when it finishes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The job's main count (messages found, received, sent, deleted...).
    pub count: i64,
    /// Follow-up work the master should schedule at once (e.g. Receive after a Sync).
    pub follow_up: Vec<Task>,
    /// A maintenance job's account of itself in one line, as logged: what `backproc
    /// maintenance` prints.
    pub summary: Option<String>,
}

/// A finished task, sent from a worker to the master.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub task: Task,
    pub worker: usize,
    pub result: Result<Report, Failure>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(job: Job, account: i64, folder: i64) -> Task {
        Task::of(job, Some(account), Some(folder)).expect("folder work")
    }

    /// Each job's task is made from exactly the ids it needs, and gives them back.
    #[test]
    fn tasks_carry_the_ids_their_job_needs() {
        let on = FolderOf { account: 1, folder: 2 };
        type Case = (&'static str, Job, Option<i64>, Option<i64>, Option<Task>);
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("a sync: account and folder", Job::SyncFull, Some(1), Some(2), Some(Task::SyncFull(on))),
            ("a receive: account and folder", Job::ReceiveSecondary, Some(1), Some(2), Some(Task::ReceiveSecondary(on))),
            ("a sync without its folder: none", Job::SyncRecent, Some(1), None, None),
            ("a sync without its account: none", Job::SyncRecent, None, Some(2), None),
            ("folder discovery: the account", Job::ListFolders, Some(1), None, Some(Task::ListFolders(1))),
            ("sending: the account", Job::SendSecondary, Some(1), None, Some(Task::SendSecondary(1))),
            ("sending with a folder: none", Job::Send, Some(1), Some(2), None),
            ("a full resync: the account", Job::FullResync, Some(1), None, Some(Task::FullResync(1))),
            ("a backup: nothing", Job::Backup, None, None, Some(Task::Backup)),
            ("a backup of an account: none", Job::Backup, Some(1), None, None),
            ("purging: nothing", Job::PurgeDeleted, None, None, Some(Task::PurgeDeleted)),
        ];
        for (name, job, account, folder, want) in cases {
            let got = Task::of(*job, *account, *folder);
            assert_eq!(got, *want, "{name}");
            if let Some(t) = got {
                assert_eq!((t.job(), t.account(), t.folder()), (*job, *account, *folder), "{name}: gives them back");
            }
        }
    }

    #[test]
    fn tasks_sort_as_their_jobs() {
        let mut tasks =
            [Task::Backup, Task::Send(1), Task::SyncFull(FolderOf { account: 2, folder: 1 }), Task::ListFolders(3)];
        tasks.sort();
        let jobs: Vec<Job> = tasks.iter().map(Task::job).collect();
        let mut sorted = jobs.clone();
        sorted.sort();
        assert_eq!(jobs, sorted);
    }

    #[test]
    fn failure_status_table() {
        #[rustfmt::skip]
        let cases: &[(&str, Job, FailureKind, &str)] = &[
            ("a sync's refused login", Job::SyncFull, FailureKind::Auth, "Authentication failed"),
            ("a receive's store error", Job::Receive, FailureKind::Store, "Failed to access the database during synchronization"),
            ("a send's lost connection", Job::Send, FailureKind::Connect, "Connection refused"),
            ("the defragmentation's store error", Job::Vacuum, FailureKind::Store, "Database defragmentation failed"),
            ("the backup's disk error", Job::Backup, FailureKind::Other, "Backup failed"),
            ("a full resynchronisation of no account", Job::FullResync, FailureKind::Other, "Full resynchronization failed"),
            ("the history pruning's store error", Job::PruneHistory, FailureKind::Store, "Deleting expired history failed"),
            ("the internal messages' expiry", Job::InternalClean, FailureKind::Store, "Deleting expired internal messages failed"),
            ("a backup that never started", Job::Backup, FailureKind::Cancelled, "Cancelled"),
            ("a receive that never started", Job::Receive, FailureKind::Cancelled, "Cancelled"),
            ("a panicking purge", Job::PurgeDeleted, FailureKind::Panic, "Internal error"),
        ];
        for (name, job, kind, want) in cases {
            assert_eq!(job.failed(*kind), *want, "{name}");
        }
    }

    #[test]
    fn may_start_table() {
        let recv = |f| t(Job::Receive, 1, f);
        let sync = |f| t(Job::SyncFull, 1, f);
        let vacuum = Task::Vacuum;
        #[rustfmt::skip]
        let cases: &[(&str, Task, Vec<Task>, usize, bool)] = &[
            ("nothing runs", sync(1), vec![], 3, true),
            ("another account runs", sync(1), vec![t(Job::SyncFull, 2, 9)], 1, true),
            ("a receive beside a receive of another folder", recv(2), vec![recv(1)], 3, true),
            ("a secondary receive beside a receive of another folder", t(Job::ReceiveSecondary, 1, 2), vec![recv(1)], 3, true),
            ("a sync beside a receive of another folder", sync(2), vec![recv(1)], 3, true),
            ("a receive beside a sync of another folder", recv(2), vec![sync(1)], 3, true),
            ("never two tasks of one folder: receive and sync", recv(1), vec![sync(1)], 3, false),
            ("never two tasks of one folder: sync and receive", t(Job::SyncRecent, 1, 1), vec![recv(1)], 3, false),
            ("never two tasks of one folder: two receives", t(Job::ReceiveSecondary, 1, 1), vec![recv(1)], 3, false),
            ("never two syncs of an account", t(Job::SyncRecent, 1, 2), vec![sync(1)], 3, false),
            ("never two syncs, receives between them", sync(3), vec![recv(1), sync(2)], 3, false),
            ("the third connection", recv(3), vec![recv(1), sync(2)], 3, true),
            ("no fourth connection", recv(4), vec![recv(1), recv(2), recv(3)], 3, false),
            ("one connection an account: one at a time", recv(2), vec![recv(1)], 1, false),
            ("folder discovery runs alone", Task::ListFolders(1), vec![recv(1)], 3, false),
            ("nothing beside folder discovery", recv(1), vec![Task::ListFolders(1)], 3, false),
            ("nothing beside Sync Delete", recv(1), vec![t(Job::SyncDelete, 1, 2)], 3, false),
            ("Send runs alone", Task::Send(1), vec![recv(1)], 3, false),
            ("other accounts do not count", recv(2), vec![recv(1), t(Job::Receive, 2, 7), t(Job::Receive, 2, 8)], 2, true),
            ("a job of no account runs once", vacuum, vec![vacuum], 3, false),
            ("a job of no account beside others", vacuum, vec![recv(1), Task::Backup], 3, true),
        ];
        for (name, task, running, parallel, want) in cases {
            assert_eq!(may_start(task, running, *parallel), *want, "{name}");
        }
    }
}
