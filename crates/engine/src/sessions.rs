//! A worker's open IMAP sessions, one per account, kept between tasks and closed when idle.
//! Also where credentials are resolved (stored password or password command) and where an
//! account's health (back-off after failures) is recorded.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use backproc_config::Config;
use backproc_imap::{ConnectParams, ErrorKind, Security, Session};
use backproc_store::{Account, Store};

use crate::task::{Failure, FailureKind};

pub struct Sessions {
    open: HashMap<i64, (Session, Instant)>,
}

/// Runs a password command (like mbsync's PassCmd); its output is the password. Neither the
/// command's output nor its error text is ever put in a message.
pub fn run_password_command(cmd: &str) -> Result<String, Failure> {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Failure::new(FailureKind::Auth, format!("cannot run the password command: {e}")))?;
    if !out.status.success() {
        return Err(Failure::new(FailureKind::Auth, format!("the password command failed ({})", out.status)));
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let pw = s.lines().next().unwrap_or("").to_owned();
    if pw.is_empty() {
        return Err(Failure::new(FailureKind::Auth, "the password command printed nothing"));
    }
    Ok(pw)
}

pub fn imap_params(a: &Account, timeout: Duration) -> Result<ConnectParams, Failure> {
    let password = match (&a.password_command, &a.password) {
        (Some(cmd), _) => run_password_command(cmd)?,
        (None, Some(p)) => p.clone(),
        (None, None) => {
            return Err(Failure::new(FailureKind::Auth, "the account has no password"));
        }
    };
    let ca_pem = match &a.tls_ca_file {
        Some(f) => Some(
            std::fs::read(f).map_err(|e| Failure::new(FailureKind::Tls, format!("cannot read CA file {f}: {e}")))?,
        ),
        None => None,
    };
    Ok(ConnectParams {
        host: a.imap_host.clone(),
        port: a.imap_port,
        security: match a.imap_security {
            backproc_store::Security::Ssl => Security::Ssl,
            backproc_store::Security::Starttls => Security::StartTls,
            backproc_store::Security::None => Security::None,
        },
        login: a.login.clone(),
        password,
        ca_pem,
        insecure: a.tls_insecure,
        timeout,
    })
}

pub fn failure_from_imap(e: backproc_imap::Error) -> Failure {
    let kind = match e.kind {
        ErrorKind::Auth => FailureKind::Auth,
        ErrorKind::Connect => FailureKind::Connect,
        ErrorKind::Tls => FailureKind::Tls,
        ErrorKind::Protocol => FailureKind::Protocol,
    };
    Failure::new(kind, e.detail)
}

impl Sessions {
    pub fn new() -> Sessions {
        Sessions { open: HashMap::new() }
    }

    /// The account's session, connecting if needed. The account's health (back-off) is
    /// recorded by the runner from the task's outcome, not here: a connection that logs in
    /// and then drops must back off too.
    pub fn get(
        &mut self,
        store: &mut Store,
        _config: &Config,
        account: i64,
        _now: i64,
    ) -> Result<&mut Session, Failure> {
        if !self.open.contains_key(&account) {
            let a = store.account(account)?;
            let s = imap_params(&a, Duration::from_secs(60))
                .and_then(|p| Session::connect(&p).map_err(failure_from_imap))?;
            self.open.insert(account, (s, Instant::now()));
        }
        let entry = self.open.get_mut(&account).expect("inserted above");
        entry.1 = Instant::now();
        Ok(&mut entry.0)
    }

    /// Forgets a session after an error: its connection state is unknown.
    pub fn discard(&mut self, account: i64) {
        self.open.remove(&account);
    }

    /// Logs out of sessions unused for `idle`.
    pub fn close_idle(&mut self, idle: Duration) {
        let stale: Vec<i64> = self.open.iter().filter(|(_, (_, t))| t.elapsed() >= idle).map(|(k, _)| *k).collect();
        for k in stale {
            if let Some((s, _)) = self.open.remove(&k) {
                log::debug!("closing idle session of account {k}");
                s.logout();
            }
        }
    }

    pub fn close_all(&mut self) {
        for (_, (s, _)) in self.open.drain() {
            s.logout();
        }
    }
}

/// Records an account-level failure and when to try again: after a refused login wait
/// EMAIL_AUTH_ERROR_CHECK_RETRY_TIME (retrying a wrong password every tick can lock the
/// mailbox); otherwise back off exponentially. Logged at info once per change of state.
pub fn record_failure(store: &mut Store, config: &Config, a: &Account, f: &Failure, now: i64) -> Result<(), Failure> {
    let delay = if f.kind == FailureKind::Auth {
        config.email_auth_error_check_retry_time as i64
    } else {
        let shift = a.failures.clamp(0, 20) as u32;
        (config.bg_backoff_base as i64).saturating_mul(1 << shift).min(config.bg_backoff_max as i64)
    };
    let status = f.kind.status();
    if a.last_error.as_deref().is_none_or(|e| !e.starts_with(status)) || a.failures == 0 {
        log::error!("{}; next try in {}s", f, delay);
    } else {
        log::debug!("{}; next try in {}s", f, delay);
    }
    store.record_account_failure(a.id, &f.to_string(), now, now + delay)?;
    Ok(())
}
