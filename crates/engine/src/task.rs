//! What the master hands to workers, and what workers hand back.

use std::fmt;
use std::sync::Arc;

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

/// One unit of work. Two tasks with the same key are the same work: never queued twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Task {
    pub job: Job,
    pub account: Option<i64>,
    pub folder: Option<i64>,
}

impl Task {
    pub fn new(job: Job, account: Option<i64>, folder: Option<i64>) -> Task {
        Task { job, account, folder }
    }

    /// The key of the worker this task must run on: all tasks of one account share a worker,
    /// but for receives that may run beside each other ([`may_start`]).
    pub fn affinity(&self) -> u64 {
        match self.account {
            Some(a) => a as u64,
            None => u64::MAX - self.job as u64,
        }
    }

    /// The folder of a sync or a receive: the work of an account that may run beside its
    /// other work on other folders ([`may_start`]).
    pub fn folder_work(&self) -> Option<i64> {
        match self.job {
            Job::SyncRecent | Job::SyncFull | Job::Receive | Job::ReceiveSecondary if self.account.is_some() => {
                self.folder
            }
            _ => None,
        }
    }

    fn is_sync(&self) -> bool {
        matches!(self.job, Job::SyncRecent | Job::SyncFull)
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
        f.write_str(self.job.name())?;
        match (self.account, self.folder) {
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
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Failure {
        Failure { kind, detail: detail.into(), retry_after: None, source: None }
    }

    /// The failure, with the error it comes from.
    pub fn caused_by(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Failure {
        self.source = Some(Arc::new(e));
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
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
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
        Task::new(job, Some(account), Some(folder))
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
        let vacuum = Task::new(Job::Vacuum, None, None);
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
            ("folder discovery runs alone", Task::new(Job::ListFolders, Some(1), None), vec![recv(1)], 3, false),
            ("nothing beside folder discovery", recv(1), vec![Task::new(Job::ListFolders, Some(1), None)], 3, false),
            ("nothing beside Sync Delete", recv(1), vec![t(Job::SyncDelete, 1, 2)], 3, false),
            ("Send runs alone", Task::new(Job::Send, Some(1), None), vec![recv(1)], 3, false),
            ("other accounts do not count", recv(2), vec![recv(1), t(Job::Receive, 2, 7), t(Job::Receive, 2, 8)], 2, true),
            ("a job of no account runs once", vacuum, vec![vacuum], 3, false),
            ("a job of no account beside others", vacuum, vec![recv(1), Task::new(Job::Backup, None, None)], 3, true),
        ];
        for (name, task, running, parallel, want) in cases {
            assert_eq!(may_start(task, running, *parallel), *want, "{name}");
        }
    }
}
