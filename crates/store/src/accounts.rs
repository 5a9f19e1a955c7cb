//! Mail accounts: IMAP and SMTP settings, and the engine's view of their health.

use rusqlite::{OptionalExtension, Row, params};

use crate::{Error, Result, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    Ssl,
    Starttls,
    None,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Ssl => "ssl",
            Security::Starttls => "starttls",
            Security::None => "none",
        }
    }
    pub fn parse(s: &str) -> Option<Security> {
        match s {
            "ssl" => Some(Security::Ssl),
            "starttls" => Some(Security::Starttls),
            "none" => Some(Security::None),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SmtpSettings {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub security: Option<Security>,
    pub login: Option<String>,
    pub password: Option<String>,
    pub password_command: Option<String>,
}

/// An account as stored. `Debug` never shows passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    pub id: i64,
    pub owner_id: i64,
    pub owner_login: String,
    pub email: String,
    pub imap_host: String,
    pub imap_port: u16,
    pub imap_security: Security,
    pub login: String,
    pub password: Option<String>,
    pub password_command: Option<String>,
    pub tls_ca_file: Option<String>,
    pub tls_insecure: bool,
    pub smtp: SmtpSettings,
    pub sent_append: bool,
    pub keep_days: Option<i64>,
    pub enabled: bool,
    pub failures: i64,
    pub retry_after: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    pub last_success: Option<i64>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("imap", &format_args!("{}:{} {:?}", self.imap_host, self.imap_port, self.imap_security))
            .field("login", &self.login)
            .field("password", &"****")
            .finish_non_exhaustive()
    }
}

/// What `account add` stores.
#[derive(Clone, Default)]
pub struct NewAccount {
    pub owner_login: String,
    pub email: String,
    pub imap_host: String,
    pub imap_port: u16,
    pub imap_security: Option<Security>,
    pub login: String,
    pub password: Option<String>,
    pub password_command: Option<String>,
    pub tls_ca_file: Option<String>,
    pub tls_insecure: bool,
    pub smtp: SmtpSettings,
    pub sent_append: bool,
    pub keep_days: Option<i64>,
}

const COLS: &str = "a.id, a.owner_id, u.login, a.email, a.imap_host, a.imap_port, a.imap_security, a.login,
    a.password, a.password_command, a.tls_ca_file, a.tls_insecure, a.smtp_host, a.smtp_port,
    a.smtp_security, a.smtp_login, a.smtp_password, a.smtp_password_command, a.sent_append,
    a.keep_days, a.enabled, a.failures, a.retry_after, a.last_error, a.last_error_at, a.last_success";

fn sec(s: Option<String>) -> Option<Security> {
    s.as_deref().and_then(Security::parse)
}

fn row(r: &Row) -> rusqlite::Result<Account> {
    Ok(Account {
        id: r.get(0)?,
        owner_id: r.get(1)?,
        owner_login: r.get(2)?,
        email: r.get(3)?,
        imap_host: r.get(4)?,
        imap_port: r.get::<_, i64>(5)? as u16,
        imap_security: sec(r.get(6)?).unwrap_or(Security::Ssl),
        login: r.get(7)?,
        password: r.get(8)?,
        password_command: r.get(9)?,
        tls_ca_file: r.get(10)?,
        tls_insecure: r.get(11)?,
        smtp: SmtpSettings {
            host: r.get(12)?,
            port: r.get::<_, Option<i64>>(13)?.map(|p| p as u16),
            security: sec(r.get(14)?),
            login: r.get(15)?,
            password: r.get(16)?,
            password_command: r.get(17)?,
        },
        sent_append: r.get(18)?,
        keep_days: r.get(19)?,
        enabled: r.get(20)?,
        failures: r.get(21)?,
        retry_after: r.get(22)?,
        last_error: r.get(23)?,
        last_error_at: r.get(24)?,
        last_success: r.get(25)?,
    })
}

fn check_text(what: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.len() > 1024 || v.chars().any(|c| c.is_control()) {
        return Err(Error::Invalid(format!(
            "invalid {what} {v:?}: expected 1-1024 characters without control characters"
        )));
    }
    Ok(())
}

impl Store {
    pub fn add_account(&mut self, a: &NewAccount, now: i64) -> Result<i64> {
        check_text("e-mail address", &a.email)?;
        check_text("IMAP host", &a.imap_host)?;
        check_text("login", &a.login)?;
        if a.imap_port == 0 {
            return Err(Error::Invalid("invalid IMAP port 0".into()));
        }
        if a.password.is_none() && a.password_command.is_none() {
            return Err(Error::Invalid("an account needs a password or a password command".into()));
        }
        let owner = self.user_by_login(&a.owner_login)?;
        let security = a.imap_security.unwrap_or(Security::Ssl);
        self.write(|tx| {
            tx.execute(
                "INSERT INTO accounts (owner_id, email, imap_host, imap_port, imap_security, login, password,
                    password_command, tls_ca_file, tls_insecure, smtp_host, smtp_port, smtp_security,
                    smtp_login, smtp_password, smtp_password_command, sent_append, keep_days, created)
                 VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                params![
                    owner.id,
                    a.email,
                    a.imap_host,
                    a.imap_port,
                    security.as_str(),
                    a.login,
                    a.password,
                    a.password_command,
                    a.tls_ca_file,
                    a.tls_insecure,
                    a.smtp.host,
                    a.smtp.port,
                    a.smtp.security.map(Security::as_str),
                    a.smtp.login,
                    a.smtp.password,
                    a.smtp.password_command,
                    a.sent_append,
                    a.keep_days,
                    now
                ],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    pub fn account(&self, id: i64) -> Result<Account> {
        self.conn()
            .query_row(
                &format!("SELECT {COLS} FROM accounts a JOIN users u ON u.id = a.owner_id WHERE a.id = ?"),
                [id],
                row,
            )
            .optional()?
            .ok_or_else(|| Error::NotFound { what: "account", id: id.to_string() })
    }

    pub fn accounts(&self) -> Result<Vec<Account>> {
        let mut st = self
            .conn()
            .prepare(&format!("SELECT {COLS} FROM accounts a JOIN users u ON u.id = a.owner_id ORDER BY a.id"))?;
        let v = st.query_map([], row)?.collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// Removes an account with its folders, messages and queues (the outbox entries too).
    pub fn remove_account(&mut self, id: i64) -> Result<()> {
        let n = self.write(|tx| {
            tx.execute("DELETE FROM outbox WHERE account_id = ?", [id])?;
            Ok(tx.execute("DELETE FROM accounts WHERE id = ?", [id])?)
        })?;
        if n == 0 {
            return Err(Error::NotFound { what: "account", id: id.to_string() });
        }
        Ok(())
    }

    /// Replaces the SMTP settings (fields left None keep their value).
    pub fn set_account_smtp(&mut self, id: i64, s: &SmtpSettings, sent_append: Option<bool>) -> Result<()> {
        self.account(id)?;
        self.write(|tx| {
            tx.execute(
                "UPDATE accounts SET smtp_host = COALESCE(?, smtp_host), smtp_port = COALESCE(?, smtp_port),
                    smtp_security = COALESCE(?, smtp_security), smtp_login = COALESCE(?, smtp_login),
                    smtp_password = COALESCE(?, smtp_password),
                    smtp_password_command = COALESCE(?, smtp_password_command),
                    sent_append = COALESCE(?, sent_append)
                 WHERE id = ?",
                params![
                    s.host,
                    s.port,
                    s.security.map(Security::as_str),
                    s.login,
                    s.password,
                    s.password_command,
                    sent_append,
                    id
                ],
            )?;
            Ok(())
        })
    }

    pub fn set_account_keep_days(&mut self, id: i64, keep_days: Option<i64>) -> Result<()> {
        self.account(id)?;
        self.write(|tx| {
            tx.execute("UPDATE accounts SET keep_days = ? WHERE id = ?", params![keep_days, id])?;
            // A new retention applies at the next tick, not at the next daily run.
            tx.execute("DELETE FROM job_runs WHERE job = 'clean_mailboxes'", [])?;
            Ok(())
        })
    }

    /// Records a failed connection or login: back off until `retry_after`.
    pub fn record_account_failure(&mut self, id: i64, error: &str, now: i64, retry_after: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE accounts SET failures = failures + 1, last_error = ?, last_error_at = ?, retry_after = ?
                 WHERE id = ?",
                params![error, now, retry_after, id],
            )?;
            Ok(())
        })
    }

    /// Records a task that succeeded; returns how many failures in a row this ended.
    pub fn record_account_success(&mut self, id: i64, now: i64) -> Result<i64> {
        self.write(|tx| account_success(tx, id, now))
    }
}

/// Clears the account's back-off; returns its failure count before.
pub(crate) fn account_success(tx: &rusqlite::Transaction, id: i64, now: i64) -> Result<i64> {
    let before: i64 =
        tx.query_row("SELECT failures FROM accounts WHERE id = ?", [id], |r| r.get(0)).optional()?.unwrap_or(0);
    tx.execute(
        "UPDATE accounts SET failures = 0, retry_after = NULL, last_success = ? WHERE id = ?",
        params![now, id],
    )?;
    Ok(before)
}
