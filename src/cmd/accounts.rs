//! `backproc user …`, `backproc account …`, `backproc folder …`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use backproc_store::{Account, Auth, NewAccount, OAuth, Priority, Security, SmtpSettings, SpecialUse, now};
use clap::builder::{PossibleValuesParser, TypedValueParser};
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

/// An argument that is a word of one of the store's vocabularies (its `NAMES` and `parse`):
/// the names are listed in `--help`, anything else is a usage error.
fn word_arg<T: Clone + Send + Sync + 'static>(
    names: &'static [&'static str],
    parse: fn(&str) -> Option<T>,
) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(names)
        .try_map(move |s| parse(&s).ok_or_else(|| format!("{s:?} is not one of {}", names.join(", "))))
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
    #[arg(long, value_parser = word_arg(Security::NAMES, Security::parse))]
    smtp_security: Option<Security>,
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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthArg {
    Password,
    Oauth2,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ProviderArg {
    Google,
    Microsoft,
}

/// OAuth 2.0 sign-in (IMAP, and SMTP unless it has a password of its own).
#[derive(Args)]
pub struct OAuthArgs {
    /// How the account signs in (default: password).
    #[arg(long, value_enum)]
    auth: Option<AuthArg>,
    /// Fill the endpoints and scopes of a known provider.
    #[arg(long, value_enum)]
    oauth_provider: Option<ProviderArg>,
    /// Microsoft's directory: common, organizations, or a tenant id or domain.
    #[arg(long, value_name = "TENANT", default_value = "common")]
    oauth_tenant: String,
    /// The token endpoint (https; plain http only to this machine).
    #[arg(long, value_name = "URL")]
    oauth_token_endpoint: Option<String>,
    /// The device authorization endpoint, for `account authorize`.
    #[arg(long, value_name = "URL")]
    oauth_device_endpoint: Option<String>,
    /// The OAuth client id of the application registration.
    #[arg(long, value_name = "ID")]
    oauth_client_id: Option<String>,
    /// Read the client secret from standard input (a public client has none). With
    /// --oauth-refresh-token-stdin too, the secret is the first line and the token the second.
    #[arg(long)]
    oauth_client_secret_stdin: bool,
    /// A scope to ask for (repeat for several; a provider preset fills them).
    #[arg(long = "oauth-scope", value_name = "SCOPE")]
    oauth_scopes: Vec<String>,
    /// Read a refresh token obtained elsewhere from standard input.
    #[arg(long)]
    oauth_refresh_token_stdin: bool,
    /// A command that prints a current access token (oama, sasl-xoauth2…), run at connect
    /// time; nothing is stored.
    #[arg(long, value_name = "CMD")]
    oauth_token_command: Option<String>,
}

impl OAuthArgs {
    /// The settings these arguments give (None = leave as it is) and the auth they ask for.
    fn settings(&self) -> anyhow::Result<(Option<Auth>, OAuth)> {
        let preset = self.oauth_provider.map(|p| {
            match p {
                ProviderArg::Google => backproc_oauth::Provider::Google,
                ProviderArg::Microsoft => backproc_oauth::Provider::Microsoft,
            }
            .preset(&self.oauth_tenant)
        });
        let token_endpoint =
            self.oauth_token_endpoint.clone().or_else(|| preset.as_ref().map(|p| p.token_endpoint.clone()));
        let device_endpoint =
            self.oauth_device_endpoint.clone().or_else(|| preset.as_ref().map(|p| p.device_endpoint.clone()));
        for url in token_endpoint.iter().chain(device_endpoint.iter()) {
            backproc_oauth::check_endpoint(url)?;
        }
        let scopes = if self.oauth_scopes.is_empty() {
            preset.map(|p| p.scopes).unwrap_or_default()
        } else {
            self.oauth_scopes.clone()
        };
        let (client_secret, refresh_token) = match (self.oauth_client_secret_stdin, self.oauth_refresh_token_stdin) {
            (false, false) => (None, None),
            (true, false) => (Some(read_secret_stdin("client secret")?), None),
            (false, true) => (None, Some(read_secret_stdin("refresh token")?)),
            (true, true) => {
                let both = read_secret_stdin("client secret and refresh token")?;
                match both.split_once('\n') {
                    Some((s, t)) if !s.trim().is_empty() && !t.trim().is_empty() => {
                        (Some(s.trim_end_matches('\r').to_owned()), Some(t.trim().to_owned()))
                    }
                    _ => bail!("expected the client secret and the refresh token on two lines of standard input"),
                }
            }
        };
        let oauth = OAuth {
            token_endpoint,
            device_endpoint,
            client_id: self.oauth_client_id.clone(),
            client_secret,
            scopes,
            token_command: self.oauth_token_command.clone(),
            refresh_token,
            access_token: None,
            expires_at: None,
        };
        let auth = match self.auth {
            Some(AuthArg::Password) => Some(Auth::Password),
            Some(AuthArg::Oauth2) => Some(Auth::OAuth2),
            // a provider or a token command alone says what is meant
            None if self.oauth_provider.is_some() || self.oauth_token_command.is_some() => Some(Auth::OAuth2),
            None => None,
        };
        Ok((auth, oauth))
    }
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
    #[arg(long, value_parser = word_arg(Security::NAMES, Security::parse), default_value = "ssl")]
    imap_security: Security,
    /// IMAP login.
    #[arg(long)]
    login: String,
    /// Read the password from standard input (never from the command line).
    #[arg(long, required_unless_present_any = ["password_command", "auth", "oauth_provider", "oauth_token_command"], conflicts_with = "password_command")]
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
    #[command(flatten)]
    oauth: OAuthArgs,
}

#[derive(Subcommand)]
pub enum AccountCmd {
    /// Add an account; prints its id.
    Add(Box<AddAccount>),
    /// Change an account's SMTP settings, sign-in or retention. Any change of the sign-in
    /// lets an account that needs authorization be tried again.
    Set {
        id: i64,
        #[command(flatten)]
        smtp: SmtpArgs,
        #[command(flatten)]
        oauth: Box<OAuthArgs>,
        /// Keep messages N days (0 = forever).
        #[arg(long, value_name = "N")]
        keep_days: Option<u32>,
        /// Allow security `none` to a host that is not loopback.
        #[arg(long)]
        insecure: bool,
    },
    /// Sign an OAuth2 account in by the device authorization grant: prints a URL and a code
    /// for the user to enter there, waits for the approval, stores the refresh token.
    Authorize { id: i64 },
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
        #[arg(value_parser = word_arg(Priority::NAMES, Priority::parse))]
        priority: Priority,
    },
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
    if !backproc_types::is_loopback(host) {
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
    let security = a.smtp_security;
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
            let security = a.imap_security;
            check_plaintext(&a.imap_host, security, a.insecure, "IMAP")?;
            if let Some(f) = &a.tls_ca_file {
                std::fs::metadata(f).with_context(|| format!("cannot read the CA file {}", f.display()))?;
            }
            let smtp = smtp_settings(&a.smtp, Some(&a.imap_host), a.insecure)?;
            let (auth, oauth) = a.oauth.settings()?;
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
                    auth: auth.unwrap_or_default(),
                    oauth,
                },
                now(),
            )?;
            log::info!("account {id} added ({})", a.email);
            println!("{id}");
        }
        AccountCmd::Set { id, smtp, oauth, keep_days, insecure } => {
            let acc = store.account(id)?;
            let (auth, o) = oauth.settings()?;
            if auth.is_some() || o != OAuth::default() {
                store.set_account_auth(id, auth, &o)?;
            }
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
                            "login": a.login, "password": "****", "auth": a.auth, "signin": signin_state(a, now()),
                            "needs_authorization": a.needs_authorization,
                            "smtp_host": a.smtp.host, "smtp_port": a.smtp.port, "smtp_security": a.smtp.security,
                            "keep_days": a.keep_days, "enabled": a.enabled, "last_error": a.last_error,
                        })
                    })
                    .collect();
                print_json(&v)?;
            } else {
                for a in accounts {
                    println!(
                        "{:>4}  {:<30}  owner {:<12}  imap {}:{} {}  login {} {}{}",
                        a.id,
                        a.email,
                        a.owner_login,
                        a.imap_host,
                        a.imap_port,
                        a.imap_security.as_str(),
                        a.login,
                        signin_state(&a, now()),
                        a.last_error.as_ref().map(|e| format!("  last error: {e}")).unwrap_or_default()
                    );
                }
            }
        }
        AccountCmd::Authorize { id } => return authorize(&mut store, id),
        AccountCmd::Remove { id } => {
            store.remove_account(id)?;
            log::info!("account {id} removed");
            println!("account {id} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How the account signs in, as `account list` shows it: never a secret.
fn signin_state(a: &Account, now: i64) -> String {
    match a.auth {
        Auth::Password => "password ****".into(),
        Auth::OAuth2 if a.needs_authorization.is_some() => "oauth2 (needs authorization)".into(),
        Auth::OAuth2 if a.oauth.token_command.is_some() => "oauth2 (token command)".into(),
        Auth::OAuth2 => match (a.oauth.expires_at, &a.oauth.refresh_token) {
            (Some(e), _) if e > now => format!("oauth2 (token valid until {})", fmt_time(Some(e))),
            (_, Some(_)) => "oauth2 (token expired, refreshed at next use)".into(),
            (_, None) => "oauth2 (not authorized yet: account authorize)".into(),
        },
    }
}

/// The device authorization grant (RFC 8628): show the code, poll at the interval the server
/// gives (slower when it says `slow_down`), store what it issues.
fn authorize(store: &mut backproc_store::Store, id: i64) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let a = store.account(id)?;
    if a.auth != Auth::OAuth2 {
        bail!("account {id} signs in with a password: set --auth oauth2 and its OAuth settings first (account set)");
    }
    if a.oauth.token_command.is_some() {
        bail!("account {id} gets its tokens from its token command; there is nothing to authorize");
    }
    let settings = backproc_engine::signin::settings(&a).map_err(anyhow::Error::msg)?;
    let http = backproc_engine::signin::http(&a)?;
    let code = http.device_start(&settings, now())?;
    println!(
        "To authorize account {id} ({}), open {} and enter the code {}",
        a.email, code.verification_uri, code.user_code
    );
    if let Some(direct) = &code.verification_uri_complete {
        println!("(or open {direct})");
    }
    println!("Waiting for the approval (the code is valid until {})…", fmt_time(Some(code.expires_at)));
    std::io::stdout().flush()?;
    let mut interval = code.interval;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(interval));
        if now() >= code.expires_at {
            bail!("the code expired before it was approved; run `backproc account authorize {id}` again");
        }
        let answer = match http.device_poll(&settings, &code.device_code, now()) {
            Ok(a) => a,
            // a network blip while the user is typing the code is no reason to start over
            Err(e) if e.is_temporary() => {
                eprintln!("{e}; trying again");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        interval = backproc_oauth::next_interval(interval, &answer);
        if let backproc_oauth::Answer::Tokens(t) = answer {
            store.store_oauth_tokens(id, &t.access_token, t.expires_at, t.refresh_token.as_deref(), true)?;
            log::info!("account {id} authorized by device code");
            println!("account {id} authorized; access token valid until {}", fmt_time(Some(t.expires_at)));
            if t.refresh_token.is_none() {
                println!(
                    "warning: the provider issued no refresh token (for Microsoft, the scope offline_access is needed): \
                     the account will need authorization again when this token expires"
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
    }
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
                        f.special_use.map_or("-", SpecialUse::as_str),
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
            store.set_folder_priority(id, priority)?;
            println!("folder {id} priority {priority}");
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
