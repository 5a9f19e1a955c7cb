//! `backproc`: the command line. Thin: parses arguments, opens the home, sets up logging and
//! the pid lock, and hands work to the library crates.
//!
//! Invariant: only this binary touches log4rs, signals, the umask and the pid file.
//! Exit codes: 0 ok, 1 other failure, 2 usage (clap), 78 configuration (EX_CONFIG).

mod cmd;
mod home;
mod logging;
mod pidlock;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for an invalid config.inc (sysexits.h EX_CONFIG).
pub const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "backproc",
    version,
    about = "Background e-mail engine: keeps IMAP mailboxes synchronised into a local SQLite store, \
             sends the outbox over SMTP, and records every background process.",
    after_help = "Run it from cron every five minutes: the first start becomes the master and stays up, \
                  later starts see it and exit at once.\n\n  */5 * * * * backproc --home /srv/backproc run"
)]
struct Cli {
    /// Home directory holding config.inc, data/, logs/ and pid/ (created when missing).
    #[arg(long, global = true, env = "BACKPROC_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the master (or exit at once if one already runs). What cron calls.
    Run(cmd::run::RunArgs),
    /// Ask the running master to stop and wait until it has exited.
    Stop(cmd::run::StopArgs),
    /// Print every effective constant of config.inc with its value and where it comes from.
    Config(cmd::config::ConfigArgs),
    /// Manage users (account owners; "logged in" users are synced more often).
    #[command(subcommand)]
    User(cmd::accounts::UserCmd),
    /// Manage mail accounts.
    #[command(subcommand)]
    Account(cmd::accounts::AccountCmd),
    /// List folders and set their sync priority.
    #[command(subcommand)]
    Folder(cmd::accounts::FolderCmd),
    /// Check mail now: make folders due at once (in the foreground when no master runs).
    Sync(cmd::sync::SyncArgs),
    /// Queue outgoing mail and read delivery records.
    #[command(subcommand)]
    Outbox(cmd::outbox::OutboxCmd),
    /// Whether a master runs, what each worker does now, queue depths, last errors.
    Status(cmd::status::StatusArgs),
    /// Background process history, newest first.
    History(cmd::status::HistoryArgs),
    /// List, read, flag, delete and move messages (as the application does).
    #[command(subcommand)]
    Mail(cmd::mail::MailCmd),
    /// Run a maintenance process now (vacuum, backup, full resynchronisation).
    #[command(subcommand)]
    Maintenance(cmd::maintenance::MaintenanceCmd),
    /// Internal messages between users of this store.
    #[command(subcommand)]
    Internal(cmd::internal::InternalCmd),
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`backproc config | head`) instead of panicking on a closed pipe.
    // SAFETY: setting a signal's disposition to SIG_DFL has no preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let home = match cli.home.clone().map(Ok).unwrap_or_else(std::env::current_dir) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("backproc: cannot determine the current directory: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Run(a) => cmd::run::run(home, a),
        Command::Stop(a) => cmd::run::stop(home, a),
        Command::Config(a) => cmd::config::run(home, a),
        Command::User(c) => cmd::accounts::user(home, c),
        Command::Account(c) => cmd::accounts::account(home, c),
        Command::Folder(c) => cmd::accounts::folder(home, c),
        Command::Sync(a) => cmd::sync::run(home, a),
        Command::Outbox(c) => cmd::outbox::run(home, c),
        Command::Internal(c) => cmd::internal::run(home, c),
        Command::Mail(c) => cmd::mail::run(home, c),
        Command::Maintenance(c) => cmd::maintenance::run(home, c),
        Command::Status(a) => cmd::status::status(home, a),
        Command::History(a) => cmd::status::history(home, a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<cmd::ConfigInvalid>() {
                eprintln!("backproc: config.inc is invalid; nothing was started:\n{}", ce.0);
                return ExitCode::from(EX_CONFIG);
            }
            log::error!("{e:#}");
            eprintln!("backproc: {e:#}");
            ExitCode::from(1)
        }
    }
}
