//! `backproc user …`, `backproc account …`, `backproc folder …`.

use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use backproc_store::{NewAccount, Security, SmtpSettings, now};
use clap::{Args, Subcommand, ValueEnum};

use super::{Env, print_json};

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user (an account owner / internal message party).
    Add { login: String },
    /// Mark the user logged in (their high-priority folders sync more often).
    Login {
        login: String,
        /// Session length in seconds.
        #[arg(long = "for", default_value_t = 3600, value_name = "SECONDS")]
        for_secs: u64,
    },
    /// End the user's session.
    Logout { login: String },
    /// List users.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Sec {
    Ssl,
    Starttls,
    None,
}

impl From<Sec> for Security {
    fn from(s: Sec) -> Security {
        match s {
            Sec::Ssl => Security::Ssl,
            Sec::Starttls => Security::Starttls,
            Sec::None => Security::None,
        }
    }
}

#[derive(Args)]
pub struct SmtpArgs {
    /// SMTP server host.
    #[arg(long, value_name = "HOST")]
    smtp_host: Option<String>,
    /// SMTP port (default 465 for ssl, 587 for starttls, 25 for none).
    #[arg(long, value_name = "PORT")]
    smtp_port: Option<u16>,
    /// SMTP connection security; `none` only to a loopback host unless --insecure.
    #[arg(long, value_enum)]
    smtp_security: Option<Sec>,
    /// SMTP login (default: the IMAP login).
    #[arg(long, value_name = "LOGIN")]
    smtp_login: Option<String>,
    /// Read the SMTP password from standard input (default: the IMAP password).
    #[arg(long, conflicts_with = "smtp_password_command")]
    smtp_password_stdin: bool,
    /// Command whose output is the SMTP password, run at connect time.
    #[arg(long, value_name = "CMD")]
    smtp_password_command: Option<String>,
    /// Do not append sent messages to the account's Sent folder.
    #[arg(long)]
    no_sent_append: bool,
}

#[derive(Args)]
pub struct AddAccount {
    /// The account's e-mail address (used as the sender of its outbox).
    #[arg(long)]
    email: String,
    /// Login of the user who owns the account.
    #[arg(long)]
    owner: String,
    #[arg(long, value_name = "HOST")]
    imap_host: String,
    /// IMAP port (default 993 for ssl, 143 otherwise).
    #[arg(long, value_name = "PORT")]
    imap_port: Option<u16>,
    /// IMAP connection security; `none` only to a loopback host unless --insecure.
    #[arg(long, value_enum, default_value = "ssl")]
    imap_security: Sec,
    /// IMAP login.
    #[arg(long)]
    login: String,
    /// Read the password from standard input (never from the command line).
    #[arg(long, required_unless_present = "password_command", conflicts_with = "password_command")]
    password_stdin: bool,
    /// Command whose output is the password, run at connect time (like mbsync's PassCmd),
    /// so that no password rests in the store.
    #[arg(long, value_name = "CMD")]
    password_command: Option<String>,
    /// Keep messages N days (Clean Mailboxes removes older ones).
    #[arg(long, value_name = "N")]
    keep_days: Option<u32>,
    /// Extra CA certificate (PEM) to trust for this account's servers.
    #[arg(long, value_name = "FILE")]
    tls_ca_file: Option<PathBuf>,
    /// Do not verify TLS certificates for this account (explicit opt-out; avoid).
    #[arg(long)]
    tls_no_verify: bool,
    /// Allow security `none` to a host that is not loopback.
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    smtp: SmtpArgs,
}

#[derive(Subcommand)]
pub enum AccountCmd {
    /// Add an account; prints its id.
    Add(Box<AddAccount>),
    /// Change an account's SMTP settings or retention.
    Set {
        id: i64,
        #[command(flatten)]
        smtp: SmtpArgs,
        /// Keep messages N days (0 = forever).
        #[arg(long, value_name = "N")]
        keep_days: Option<u32>,
        /// Allow security `none` to a host that is not loopback.
        #[arg(long)]
        insecure: bool,
    },
    /// List accounts (passwords shown as ****).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an account with its folders, messages and outbox.
    Remove { id: i64 },
}

#[derive(Subcommand)]
pub enum FolderCmd {
    /// List folders with their sync state.
    List {
        #[arg(long)]
        account: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Set a folder's sync priority: high (frequent), low (daily), off (never).
    SetPriority {
        id: i64,
        #[arg(value_enum)]
        priority: Prio,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Prio {
    High,
    Low,
    Off,
}

pub fn user(home: PathBuf, cmd: UserCmd) -> anyhow::Result<ExitCode> {
    let env = Env::open(home)?;
    let mut store = env.store()?;
    match cmd {
        UserCmd::Add { login } => {
            let id = store.add_user(&login, now())?;
            println!("{id}");
        }
        UserCmd::Login { login, for_secs } => {
            let until = now() + for_secs.min(10 * 365 * 86400) as i64;
            store.set_session(&login, Some(until))?;
            println!("{login} logged in for {for_secs}s");
        }
        UserCmd::Logout { login } => {
            store.set_session(&login, None)?;
            println!("{login} logged out");
        }
        UserCmd::List { json } => {
            let users = store.users()?;
            if json {
                print_json(&users)?;
            } else {
                let t = now();
                for u in users {
                    let state = if u.session_expires.is_some_and(|e| e > t) { "logged in" } else { "-" };
                    println!("{:>4}  {:<24}  {state}", u.id, u.login);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Security `none` sends the password in clear: only to this machine unless asked.
pub fn check_plaintext(host: &str, security: Security, insecure: bool, what: &str) -> anyhow::Result<()> {
    if security != Security::None || insecure {
        return Ok(());
    }
    let loopback = host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!(
            "{what} security 'none' would send the password in clear to {host}; use ssl or starttls, or add --insecure"
        );
    }
    Ok(())
}

fn read_secret_stdin(what: &str) -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).with_context(|| format!("cannot read the {what} from standard input"))?;
    let s = s.trim_end_matches(['\r', '\n']).to_owned();
    if s.is_empty() {
        bail!("the {what} read from standard input is empty");
    }
    Ok(s)
}

fn smtp_settings(a: &SmtpArgs, imap_host: Option<&str>, insecure: bool) -> anyhow::Result<SmtpSettings> {
    let security = a.smtp_security.map(Security::from);
    if let (Some(sec), Some(host)) = (security, a.smtp_host.as_deref().or(imap_host)) {
        check_plaintext(host, sec, insecure, "SMTP")?;
    }
    Ok(SmtpSettings {
        host: a.smtp_host.clone(),
        port: a.smtp_port,
        security,
        login: a.smtp_login.clone(),
        password: if a.smtp_password_stdin { Some(read_secret_stdin("SMTP password")?) } else { None },
        password_command: a.smtp_password_command.clone(),
    })
}

pub fn account(home: PathBuf, cmd: AccountCmd) -> anyhow::Result<ExitCode> {
    let env = Env::open(home)?;
    let mut store = env.store()?;
    match cmd {
        AccountCmd::Add(a) => {
            let security = Security::from(a.imap_security);
            check_plaintext(&a.imap_host, security, a.insecure, "IMAP")?;
            if let Some(f) = &a.tls_ca_file {
                std::fs::metadata(f).with_context(|| format!("cannot read the CA file {}", f.display()))?;
            }
            let smtp = smtp_settings(&a.smtp, Some(&a.imap_host), a.insecure)?;
            let password = if a.password_stdin { Some(read_secret_stdin("password")?) } else { None };
            let port = a.imap_port.unwrap_or(if security == Security::Ssl { 993 } else { 143 });
            let id = store.add_account(
                &NewAccount {
                    owner_login: a.owner.clone(),
                    email: a.email.clone(),
                    imap_host: a.imap_host.clone(),
                    imap_port: port,
                    imap_security: Some(security),
                    login: a.login.clone(),
                    password,
                    password_command: a.password_command.clone(),
                    tls_ca_file: a
                        .tls_ca_file
                        .as_ref()
                        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()).to_string_lossy().into_owned()),
                    tls_insecure: a.tls_no_verify,
                    smtp,
                    sent_append: !a.smtp.no_sent_append,
                    keep_days: a.keep_days.map(i64::from),
                },
                now(),
            )?;
            log::info!("account {id} added ({})", a.email);
            println!("{id}");
        }
        AccountCmd::Set { id, smtp, keep_days, insecure } => {
            let acc = store.account(id)?;
            let s = smtp_settings(&smtp, Some(acc.smtp.host.as_deref().unwrap_or(&acc.imap_host)), insecure)?;
            store.set_account_smtp(id, &s, if smtp.no_sent_append { Some(false) } else { None })?;
            if let Some(k) = keep_days {
                store.set_account_keep_days(id, if k == 0 { None } else { Some(i64::from(k)) })?;
            }
            println!("account {id} updated");
        }
        AccountCmd::List { json } => {
            let accounts = store.accounts()?;
            if json {
                let v: Vec<_> = accounts
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "id": a.id, "email": a.email, "owner": a.owner_login,
                            "imap_host": a.imap_host, "imap_port": a.imap_port, "imap_security": a.imap_security,
                            "login": a.login, "password": "****",
                            "smtp_host": a.smtp.host, "smtp_port": a.smtp.port, "smtp_security": a.smtp.security,
                            "keep_days": a.keep_days, "enabled": a.enabled, "last_error": a.last_error,
                        })
                    })
                    .collect();
                print_json(&v)?;
            } else {
                for a in accounts {
                    println!(
                        "{:>4}  {:<30}  owner {:<12}  imap {}:{} {}  login {} password ****{}",
                        a.id,
                        a.email,
                        a.owner_login,
                        a.imap_host,
                        a.imap_port,
                        a.imap_security.as_str(),
                        a.login,
                        a.last_error.map(|e| format!("  last error: {e}")).unwrap_or_default()
                    );
                }
            }
        }
        AccountCmd::Remove { id } => {
            store.remove_account(id)?;
            log::info!("account {id} removed");
            println!("account {id} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn folder(home: PathBuf, cmd: FolderCmd) -> anyhow::Result<ExitCode> {
    let env = Env::open(home)?;
    let mut store = env.store()?;
    match cmd {
        FolderCmd::List { account, json } => {
            let folders = store.folders(account)?;
            if json {
                print_json(&folders)?;
            } else {
                println!(
                    "{:>5} {:>5}  {:<28} {:<8} {:<5} {:>8} {:>8} {:>11}  {:<20} {:<20}",
                    "id",
                    "acct",
                    "name",
                    "special",
                    "prio",
                    "messages",
                    "lastuid",
                    "uidvalidity",
                    "recent sync",
                    "full sync"
                );
                for f in folders {
                    println!(
                        "{:>5} {:>5}  {:<28} {:<8} {:<5} {:>8} {:>8} {:>11}  {:<20} {:<20}",
                        f.id,
                        f.account_id,
                        f.display_name,
                        f.special_use.as_deref().unwrap_or("-"),
                        f.priority,
                        f.messages,
                        f.last_seen_uid,
                        f.uidvalidity.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                        fmt_time(f.last_recent_sync),
                        fmt_time(f.last_full_sync)
                    );
                    if let Some(why) = &f.unusable {
                        println!("      unusable: {why}");
                    }
                }
            }
        }
        FolderCmd::SetPriority { id, priority } => {
            let p = match priority {
                Prio::High => "high",
                Prio::Low => "low",
                Prio::Off => "off",
            };
            store.set_folder_priority(id, p)?;
            println!("folder {id} priority {p}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn fmt_time(t: Option<i64>) -> String {
    use chrono::TimeZone;
    match t.and_then(|t| chrono::Local.timestamp_opt(t, 0).single()) {
        Some(d) => d.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => "never".into(),
    }
}
