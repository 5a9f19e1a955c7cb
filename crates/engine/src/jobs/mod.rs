//! The jobs: each a function of (context, task) → report, run on a worker thread.

pub mod delete;
pub mod maintenance;
pub mod receive;
pub mod send;
pub mod sync;

use backproc_config::Config;
use backproc_store::Store;

use crate::sessions::{Sessions, failure_from_imap};
use crate::{Clock, Failure};

/// What stops a job half-way: the server, or what is a task's failure already (the store, a
/// sign-in that failed). Each keeps its kind: a full disk is not a lost connection.
#[derive(Debug)]
pub(crate) enum Stop {
    Imap(backproc_imap::Error),
    Task(Failure),
}

impl From<backproc_imap::Error> for Stop {
    fn from(e: backproc_imap::Error) -> Stop {
        Stop::Imap(e)
    }
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Stop {
        Stop::Task(f)
    }
}

impl From<backproc_store::Error> for Stop {
    fn from(e: backproc_store::Error) -> Stop {
        Stop::Task(e.into())
    }
}

impl Stop {
    /// The task's failure. After an error of the server the account's session is dropped,
    /// unless only a command was refused (a folder's NO does not cost the account a login).
    pub(crate) fn fail(self, ctx: &mut Ctx, account: i64) -> Failure {
        match self {
            Stop::Imap(e) => {
                if !e.session_usable() {
                    ctx.sessions.discard(account);
                }
                failure_from_imap(e)
            }
            Stop::Task(f) => f,
        }
    }
}

/// What a job may use: its worker's store connection and sessions, the config, the clock.
pub struct Ctx<'a> {
    pub store: &'a mut Store,
    pub config: &'a Config,
    pub clock: Clock,
    pub sessions: &'a mut Sessions,
    /// The worker running the job (its row in `status`); none for a run by hand.
    pub worker: Option<usize>,
    /// A person asked for this run now (`backproc maintenance …`): a defragmentation then
    /// runs VACUUM whether or not the database is fragmented enough to need it.
    pub by_hand: bool,
}

/// Progress of a running task, for `status` (best effort: never fails the job). A run by
/// hand has no worker row to show it in.
pub fn record_progress(store: &mut Store, worker: Option<usize>, task: &crate::Task, done: i64, total: i64, now: i64) {
    let Some(thread) = worker else { return };
    let row = backproc_store::WorkerRow {
        thread: thread as i64 + 1,
        task: Some(task.to_string()),
        account_id: task.account(),
        folder_id: task.folder(),
        done: Some(done),
        total: Some(total),
        since: Some(now),
    };
    if let Err(e) = store.set_worker(&row) {
        log::debug!("cannot record progress: {e}");
    }
}
