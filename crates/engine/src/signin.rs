//! What an account signs in with: a password (stored, or printed by a password command) or
//! an OAuth 2.0 access token (printed by a token command, or the store's, refreshed at the
//! account's token endpoint before it has less than EMAIL_OAUTH_REFRESH_MARGIN left).
//!
//! Invariants: no secret reaches a log line, an error or a failure's detail. A refreshed
//! access token and a rotated refresh token are stored in one statement
//! (`Store::store_oauth_tokens`). A grant the endpoint no longer honours fails the task as
//! `NeedsAuthorization`, which `sessions::record_failure` turns into an account that waits for
//! a person instead of a time.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use backproc_config::Config;
use backproc_sasl::Credential;
use backproc_store::{Account, Auth, Store};

use crate::task::{Failure, FailureKind};

/// Requests to a token endpoint give up after this long.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Which server a credential is for: SMTP has settings of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Imap,
    Smtp,
}

/// The credential for `server`. `force_refresh`: the server refused the token we hold, so
/// get a new one whatever its expiry says.
pub fn credential(
    store: &mut Store,
    config: &Config,
    a: &Account,
    server: Server,
    force_refresh: bool,
    now: i64,
) -> Result<Credential, Failure> {
    let password = |p: &Option<String>, cmd: &Option<String>| -> Result<Option<String>, Failure> {
        match (cmd, p) {
            (Some(cmd), _) => run_secret_command(cmd, "password command").map(Some),
            (None, p) => Ok(p.clone()),
        }
    };
    // SMTP uses the account's sign-in unless it has a password of its own.
    if server == Server::Smtp
        && let Some(p) = password(&a.smtp.password, &a.smtp.password_command)?
    {
        return Ok(Credential::Password(p));
    }
    match a.auth {
        Auth::Password => match password(&a.password, &a.password_command)? {
            Some(p) => Ok(Credential::Password(p)),
            None => Err(Failure::new(FailureKind::Auth, "the account has no password")),
        },
        Auth::OAuth2 => bearer(store, config, a, force_refresh, now).map(Credential::Bearer),
    }
}

/// Whether a refused sign-in with this account's credential is worth one forced refresh and
/// one more try: an OAuth2 token the store holds, or one a token command prints.
pub fn refreshable(a: &Account, server: Server) -> bool {
    a.auth == Auth::OAuth2
        && !(server == Server::Smtp && (a.smtp.password.is_some() || a.smtp.password_command.is_some()))
}

fn bearer(store: &mut Store, config: &Config, a: &Account, force: bool, now: i64) -> Result<String, Failure> {
    if let Some(cmd) = &a.oauth.token_command {
        return run_secret_command(cmd, "token command");
    }
    // The row was read at connect time: a token another task refreshed since is seen there.
    let margin = config.email_oauth_refresh_margin as i64;
    if !force
        && let Some(t) = &a.oauth.access_token
        && !backproc_oauth::needs_refresh(a.oauth.expires_at, now, margin)
    {
        return Ok(t.clone());
    }
    // One refresh an account at a time: its connections sign in side by side (folders
    // received in parallel, the push connection), and a provider that rotates refresh tokens
    // may refuse the second use of one. Whoever waited takes the token just stored.
    let lock = refresh_lock(a.id);
    let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
    let fresh = store.account(a.id)?;
    if fresh.oauth.access_token != a.oauth.access_token
        && let Some(t) = &fresh.oauth.access_token
        && !backproc_oauth::needs_refresh(fresh.oauth.expires_at, now, margin)
    {
        return Ok(t.clone());
    }
    let a = &fresh;
    let Some(refresh_token) = &a.oauth.refresh_token else {
        return Err(Failure::new(
            FailureKind::NeedsAuthorization,
            format!("account {} has no OAuth2 grant yet: run `backproc account authorize {}`", a.id, a.id),
        ));
    };
    let settings = settings(a).map_err(|e| Failure::new(FailureKind::NeedsAuthorization, e))?;
    let http = http(a).map_err(|e| Failure::new(FailureKind::Tls, e.to_string()))?;
    match http.refresh(&settings, refresh_token, now) {
        Ok(t) => {
            store.store_oauth_tokens(a.id, &t.access_token, t.expires_at, t.refresh_token.as_deref(), false)?;
            log::info!(
                "account {}: access token refreshed, valid for {} s{}",
                a.id,
                t.expires_at - now,
                if t.refresh_token.is_some() { " (refresh token rotated)" } else { "" }
            );
            Ok(t.access_token)
        }
        Err(e) if e.is_temporary() => {
            Err(Failure::new(FailureKind::Connect, format!("cannot refresh the access token: {e}")))
        }
        Err(e) => Err(Failure::new(FailureKind::NeedsAuthorization, e.to_string())),
    }
}

/// The lock an account's token refreshes take (one a process: the pid file keeps one master).
fn refresh_lock(account: i64) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<i64, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut all = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    all.entry(account).or_default().clone()
}

/// The account's OAuth2 client settings, as the token endpoint needs them.
pub fn settings(a: &Account) -> Result<backproc_oauth::Settings, String> {
    match (&a.oauth.token_endpoint, &a.oauth.client_id) {
        (Some(token_endpoint), Some(client_id)) => Ok(backproc_oauth::Settings {
            token_endpoint: token_endpoint.clone(),
            device_endpoint: a.oauth.device_endpoint.clone(),
            client_id: client_id.clone(),
            client_secret: a.oauth.client_secret.clone(),
            scopes: a.oauth.scopes.clone(),
        }),
        _ => Err(format!("account {} has no OAuth2 token endpoint and client id (account set --oauth-…)", a.id)),
    }
}

/// The HTTP client for the account's token endpoint: its extra CA (`--tls-ca-file`) trusted.
pub fn http(a: &Account) -> Result<backproc_oauth::Http, backproc_oauth::Error> {
    let ca = match &a.tls_ca_file {
        Some(f) => Some(
            std::fs::read(f).map_err(|e| backproc_oauth::Error::Setting(format!("cannot read CA file {f}: {e}")))?,
        ),
        None => None,
    };
    backproc_oauth::Http::new(ca.as_deref(), TOKEN_TIMEOUT)
}

/// Runs a password or token command (like mbsync's PassCmd); the first line it prints is the
/// secret. Neither the output nor the command's error text is ever put in a message.
pub fn run_secret_command(cmd: &str, what: &str) -> Result<String, Failure> {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| Failure::new(FailureKind::Auth, format!("cannot run the {what}: {e}")))?;
    if !out.status.success() {
        return Err(Failure::new(FailureKind::Auth, format!("the {what} failed ({})", out.status)));
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let secret = s.lines().next().unwrap_or("").to_owned();
    if secret.is_empty() {
        return Err(Failure::new(FailureKind::Auth, format!("the {what} printed nothing")));
    }
    Ok(secret)
}
