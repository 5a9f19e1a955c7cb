//! `backproc sync`: "check mail now".

use std::path::PathBuf;
use std::process::ExitCode;

use backproc_engine::Job;
use backproc_store::{HistoryFilter, now};
use clap::Args;

use super::Env;
use crate::pidlock::{self, Acquire};

#[derive(Args)]
pub struct SyncArgs {
    /// Only this account's folders.
    #[arg(long)]
    account: Option<i64>,
    /// Only this folder (id from `folder list`).
    #[arg(long)]
    folder: Option<i64>,
}

pub fn run(home: PathBuf, args: SyncArgs) -> anyhow::Result<ExitCode> {
    let env = Env::open(home)?;
    let mut store = env.store()?;
    if let Some(f) = args.folder {
        let acct = store.folder_account(f)?;
        if args.account.is_some_and(|a| a != acct) {
            anyhow::bail!("folder {f} belongs to account {acct}, not {}", args.account.unwrap_or_default());
        }
    } else if let Some(a) = args.account {
        store.account(a)?;
    }
    let start = now();
    let n = store.request_sync(args.account, args.folder, start)?;
    let pid_dir = env.home.pid_dir(&env.config().backproc_pid_location)?;
    match pidlock::acquire(&pid_dir)? {
        Acquire::Busy(pid) => {
            println!(
                "{n} folder(s) marked for sync; the running master (pid {}) picks them up on its next tick",
                pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            );
        }
        Acquire::Master(_lock) => {
            // No master: do it here, in the foreground, holding the lock so that cron's
            // next start does not run beside us.
            let mut config = env.config().clone();
            config.email_background_sync_enabled = true;
            let (_tx, rx) = crossbeam_channel::bounded(1);
            let opts = backproc_engine::MasterOptions {
                store_path: env.home.store_path(),
                data_dir: env.home.data(),
                once: true,
                only_account: args.account,
            };
            backproc_engine::run(opts, config, &mut || None, rx)?;
            let rows = store.history(&HistoryFilter { since: start, ..HistoryFilter::default() })?;
            // By job kind, not by its name ("Sync" is also the start of "Sync Delete").
            let sum = |jobs: &[Job]| {
                rows.iter()
                    .filter(|r| jobs.iter().any(|j| r.kind.as_deref() == Some(j.key())) && r.status == "Finished")
                    .filter_map(|r| r.count)
                    .sum::<i64>()
            };
            let errors: Vec<_> = rows.iter().filter(|r| r.status != "Started" && r.status != "Finished").collect();
            println!(
                "synced {n} folder(s): {} new message(s) found, {} received",
                sum(&[Job::SyncRecent, Job::SyncFull]),
                sum(&[Job::Receive, Job::ReceiveSecondary])
            );
            for e in &errors {
                println!(
                    "error: {} [{}]: {} ({})",
                    e.process,
                    e.account_id.map(|a| a.to_string()).unwrap_or_default(),
                    e.status,
                    e.detail.as_deref().unwrap_or("")
                );
            }
            if !errors.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
