//! `backproc maintenance …`: run a maintenance process by hand, in the foreground, through the
//! engine's job runner: the same job, log lines and Started/Finished (or failure) history
//! records as a scheduled run, with thread "cli".

use std::path::PathBuf;
use std::process::ExitCode;

use backproc_engine::{Clock, JobRunner, Runner, Task};
use clap::Subcommand;

use super::Env;

#[derive(Subcommand)]
pub enum MaintenanceCmd {
    /// DB defragmentation: WAL checkpoint and VACUUM (always, when run by hand).
    Vacuum,
    /// Online backup of the store to data/backup/, keeping the newest BG_BACKUP_KEEP.
    Backup,
    /// Full resynchronisation of an account: every folder is read again at its next sync.
    Resync {
        #[arg(long)]
        account: i64,
    },
    /// Delete history older than BG_HISTORY_RETENTION_DAYS.
    PruneHistory,
}

pub fn run(home: PathBuf, cmd: MaintenanceCmd) -> anyhow::Result<ExitCode> {
    let env = Env::open(home)?;
    let task = match &cmd {
        MaintenanceCmd::Vacuum => Task::Vacuum,
        MaintenanceCmd::Backup => Task::Backup,
        MaintenanceCmd::Resync { account } => {
            // An unknown account is a usage error, not a failed run in history.
            env.store()?.account(*account)?;
            Task::FullResync(*account)
        }
        MaintenanceCmd::PruneHistory => Task::PruneHistory,
    };
    let mut runner = JobRunner::by_hand(env.home.store_path(), env.config().clone(), Clock::system());
    match runner.run(&task) {
        Ok(report) => {
            let mut line = report.summary.unwrap_or_default();
            if let Some(a) = task.account() {
                line.push_str(&format!(
                    "; the running master's next sync (or `backproc sync --account {a}`) reads them again"
                ));
            }
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Err(f) => anyhow::bail!("{}: {}", task.job().failed(f.kind), f.detail),
    }
}
