//! `backproc run` (the master, as cron starts it) and `backproc stop`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::Args;

use super::Env;
use crate::pidlock::{self, Acquire};

#[derive(Args)]
pub struct RunArgs {
    /// Do all work that is due now, then exit (for one-shot cron use and tests).
    #[arg(long)]
    once: bool,
}

#[derive(Args)]
pub struct StopArgs {
    /// Seconds to wait for the master to exit (default: BG_SHUTDOWN_GRACE + 30).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
}

pub fn run(home: PathBuf, args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut env = Env::open(home)?;
    let pid_dir = env.home.pid_dir(&env.config().backproc_pid_location)?;
    let _lock = match pidlock::acquire(&pid_dir)? {
        Acquire::Master(lock) => lock,
        Acquire::Busy(pid) => {
            // Cron starts us every five minutes: stay silent, say it only in the debug log.
            log::debug!(
                "another master is running (pid {}); exiting after {} ms",
                pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                started.elapsed().as_millis()
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    if env.loaded.file_missing {
        log::info!("{} not found: running with all defaults", env.home.config_file().display());
    }

    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        // First signal: graceful stop. The channel holds one; further signals are ignored
        // until the grace period is over.
        let _ = stop_tx.try_send(());
    })
    .context("cannot install the SIGINT/SIGTERM handler")?;

    let config_path = env.home.config_file();
    let mut last_mtime = mtime(&config_path);
    let opts = backproc_engine::MasterOptions {
        store_path: env.home.store_path(),
        data_dir: env.home.data(),
        once: args.once,
        only_account: None,
    };
    let config = env.config().clone();
    let logging = &mut env.logging;
    let mut reload = || {
        let m = mtime(&config_path);
        if m == last_mtime {
            return None;
        }
        last_mtime = m;
        match backproc_config::load(&config_path) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    log::warn!("{w}");
                }
                logging.set_rotation(super::rotation(&loaded.config));
                Some(loaded.config)
            }
            Err(e) => {
                log::error!(
                    "config.inc changed but is invalid; keeping the previous settings: {}",
                    e.to_string().replace('\n', "; ")
                );
                None
            }
        }
    };
    backproc_engine::run(opts, config, &mut reload, stop_rx)?;
    Ok(ExitCode::SUCCESS)
}

fn mtime(p: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

pub fn stop(home: PathBuf, args: StopArgs) -> anyhow::Result<ExitCode> {
    let loaded = super::load_config(&home.join("config.inc"))?;
    let pid_dir = home.join(&loaded.config.backproc_pid_location);
    if !pidlock::is_held(&pid_dir) {
        println!("no master is running");
        return Ok(ExitCode::SUCCESS);
    }
    let Some(pid) = pidlock::read_pid(&pid_dir.join(pidlock::PID_FILE)) else {
        anyhow::bail!("a master holds the pid lock but its pid file is unreadable");
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)
        .with_context(|| format!("cannot signal the master (pid {pid})"))?;
    let wait = Duration::from_secs(args.timeout.unwrap_or(loaded.config.bg_shutdown_grace + 30));
    let deadline = Instant::now() + wait;
    while pidlock::is_held(&pid_dir) {
        if Instant::now() >= deadline {
            anyhow::bail!("the master (pid {pid}) is still running after {}s", wait.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("master (pid {pid}) stopped");
    Ok(ExitCode::SUCCESS)
}
