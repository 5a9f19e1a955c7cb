//! `backproc maintenance …`: run a maintenance process by hand, in the foreground, with the
//! same log lines and Started/Finished (or error) history records as the scheduled jobs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use backproc_engine::Job;
use backproc_engine::jobs::maintenance as jobs;
use backproc_store::{NewHistory, Store, now};
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

/// What one process did: its count for history and the line to print and log.
type Done = (i64, String);

pub fn run(home: PathBuf, cmd: MaintenanceCmd) -> anyhow::Result<ExitCode> {
    let env = Env::open(home)?;
    let mut store = env.store()?;
    let config = env.config().clone();
    let (job, account) = match &cmd {
        MaintenanceCmd::Vacuum => (Job::Vacuum, None),
        MaintenanceCmd::Backup => (Job::Backup, None),
        MaintenanceCmd::Resync { account } => {
            store.account(*account)?;
            (Job::FullResync, Some(*account))
        }
        MaintenanceCmd::PruneHistory => (Job::PruneHistory, None),
    };
    let _scope = backproc_engine::logctx::scope(account, None);
    let record = |store: &mut Store, status: &str, detail: Option<&str>, count: Option<i64>, ms: Option<i64>| {
        let h = NewHistory {
            process: job.name(),
            status,
            detail,
            account_id: account,
            count,
            duration_ms: ms,
            thread: Some("cli"),
            ..NewHistory::default()
        };
        if let Err(e) = store.add_history(&h, now()) {
            log::error!("cannot write history: {e}");
        }
    };
    record(&mut store, "Started", None, None, None);
    let started = Instant::now();
    let result: Result<Done, String> = match cmd {
        MaintenanceCmd::Vacuum => {
            jobs::defragment(&mut store, true).map(|d| (d.kb_freed(), jobs::defrag_line(&d))).map_err(|e| e.to_string())
        }
        MaintenanceCmd::Backup => jobs::backup_now(&store, &env.home.data(), config.bg_backup_keep as usize, now())
            .map(|b| (b.messages, jobs::backup_line(&b))),
        MaintenanceCmd::Resync { account } => store
            .mark_full_resync(account, now())
            .map(|n| {
                (
                    n as i64,
                    format!(
                        "full resynchronization: {n} folder(s) of account {account} marked for a full sync; \
                         the running master's next sync (or `backproc sync --account {account}`) reads them again"
                    ),
                )
            })
            .map_err(|e| e.to_string()),
        MaintenanceCmd::PruneHistory => {
            let days = config.bg_history_retention_days as i64;
            store
                .prune_history(now() - days * 86_400)
                .map(|n| (n as i64, format!("deleted {n} history record(s) older than {days} days")))
                .map_err(|e| e.to_string())
        }
    };
    let ms = started.elapsed().as_millis() as i64;
    match result {
        Ok((count, line)) => {
            log::info!("{line}");
            record(&mut store, "Finished", None, Some(count), Some(ms));
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let status = match job {
                Job::Vacuum => "Database defragmentation failed",
                Job::Backup => "Backup failed",
                Job::FullResync => "Full resynchronization failed",
                _ => "Deleting expired history failed",
            };
            log::error!("{status}: {e}");
            record(&mut store, status, Some(&e), None, Some(ms));
            anyhow::bail!("{status}: {e}")
        }
    }
}
