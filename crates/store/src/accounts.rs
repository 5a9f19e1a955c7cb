//! Mail accounts: IMAP and SMTP settings, and the engine's view of their health.

use rusqlite::{OptionalExtension, Row, params};

use crate::{Error, Result, Store};

pub use backproc_types::Security;

/// How an account signs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    #[default]
    Password,
    /// An OAuth 2.0 access token (SMTP too, unless it has a password of its own).
    OAuth2,
}

impl Auth {
    pub fn as_str(self) -> &'static str {
        match self {
            Auth::Password => "password",
            Auth::OAuth2 => "oauth2",
        }
    }
    fn parse(s: &str) -> Option<Auth> {
        match s {
            "password" => Some(Auth::Password),
            "oauth2" => Some(Auth::OAuth2),
            _ => None,
        }
    }
}

/// An account's OAuth 2.0 settings and tokens. `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct OAuth {
    pub token_endpoint: Option<String>,
    pub device_endpoint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    /// A command that prints a current access token, run at connect time (nothing stored).
    pub token_command: Option<String>,
    pub refresh_token: Option<String>,
    pub access_token: Option<String>,
    /// Of the access token, unix seconds.
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .field("token_command", &self.token_command.is_some())
            .field("refresh_token", &self.refresh_token.is_some())
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
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
    pub auth: Auth,
    pub oauth: OAuth,
    /// Why a person must sign the account in again; it is not tried meanwhile.
    pub needs_authorization: Option<String>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("imap", &format_args!("{}:{} {:?}", self.imap_host, self.imap_port, self.imap_security))
            .field("login", &self.login)
            .field("password", &"****")
            .field("auth", &self.auth)
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
    pub auth: Auth,
    pub oauth: OAuth,
}

const COLS: &str = "a.id, a.owner_id, u.login, a.email, a.imap_host, a.imap_port, a.imap_security, a.login,
    a.password, a.password_command, a.tls_ca_file, a.tls_insecure, a.smtp_host, a.smtp_port,
    a.smtp_security, a.smtp_login, a.smtp_password, a.smtp_password_command, a.sent_append,
    a.keep_days, a.enabled, a.failures, a.retry_after, a.last_error, a.last_error_at, a.last_success,
    a.auth, a.oauth_token_endpoint, a.oauth_device_endpoint, a.oauth_client_id, a.oauth_client_secret,
    a.oauth_scopes, a.oauth_token_command, a.oauth_refresh_token, a.oauth_access_token, a.oauth_expires_at,
    a.needs_authorization";

/// The column a malformed value was read from, for the error that names the row.
fn bad(col: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, what.into())
}

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
        auth: {
            let v: String = r.get(26)?;
            Auth::parse(&v).ok_or_else(|| bad(26, format!("auth {v:?} is neither password nor oauth2")))?
        },
        oauth: OAuth {
            token_endpoint: r.get(27)?,
            device_endpoint: r.get(28)?,
            client_id: r.get(29)?,
            client_secret: r.get(30)?,
            scopes: r
                .get::<_, Option<String>>(31)?
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            token_command: r.get(32)?,
            refresh_token: r.get(33)?,
            access_token: r.get(34)?,
            expires_at: r.get(35)?,
        },
        needs_authorization: r.get(36)?,
    })
}

/// An OAuth2 account must be able to get a token: a token command, or a token endpoint and
/// a client id (the refresh token may come later, from `account authorize`).
fn check_oauth(o: &OAuth) -> Result<()> {
    if o.token_command.is_some() {
        return Ok(());
    }
    match (&o.token_endpoint, &o.client_id) {
        (Some(e), Some(c)) => {
            check_text("OAuth token endpoint", e)?;
            check_text("OAuth client id", c)
        }
        _ => Err(Error::Invalid(
            "an OAuth2 account needs a token endpoint and a client id (or --oauth-provider), or a token command".into(),
        )),
    }
}

fn scopes_text(v: &[String]) -> Option<String> {
    if v.is_empty() { None } else { Some(v.join(" ")) }
}

/// `retry_after` of an account that waits for a person, not for a time.
pub const NEVER: i64 = i64::MAX;

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
        match a.auth {
            Auth::Password if a.password.is_none() && a.password_command.is_none() => {
                return Err(Error::Invalid("an account needs a password or a password command".into()));
            }
            Auth::Password => {}
            Auth::OAuth2 => check_oauth(&a.oauth)?,
        }
        let owner = self.user_by_login(&a.owner_login)?;
        let security = a.imap_security.unwrap_or(Security::Ssl);
        self.write(|tx| {
            tx.execute(
                "INSERT INTO accounts (owner_id, email, imap_host, imap_port, imap_security, login, password,
                    password_command, tls_ca_file, tls_insecure, smtp_host, smtp_port, smtp_security,
                    smtp_login, smtp_password, smtp_password_command, sent_append, keep_days, created,
                    auth, oauth_token_endpoint, oauth_device_endpoint, oauth_client_id, oauth_client_secret,
                    oauth_scopes, oauth_token_command, oauth_refresh_token)
                 VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                    now,
                    a.auth.as_str(),
                    a.oauth.token_endpoint,
                    a.oauth.device_endpoint,
                    a.oauth.client_id,
                    a.oauth.client_secret,
                    scopes_text(&a.oauth.scopes),
                    a.oauth.token_command,
                    a.oauth.refresh_token,
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

    /// Changes how the account signs in (fields left None, and empty scopes, keep their
    /// value). A new refresh token drops the access token of the old grant. Any change is a
    /// person acting: the account is tried again at once.
    pub fn set_account_auth(&mut self, id: i64, auth: Option<Auth>, o: &OAuth) -> Result<()> {
        let mut merged = self.account(id)?;
        merged.auth = auth.unwrap_or(merged.auth);
        let fill = |new: &Option<String>, old: &mut Option<String>| {
            if new.is_some() {
                old.clone_from(new);
            }
        };
        fill(&o.token_endpoint, &mut merged.oauth.token_endpoint);
        fill(&o.client_id, &mut merged.oauth.client_id);
        fill(&o.token_command, &mut merged.oauth.token_command);
        if merged.auth == Auth::OAuth2 {
            check_oauth(&merged.oauth)?;
        } else if merged.password.is_none() && merged.password_command.is_none() {
            return Err(Error::Invalid("the account has no password to sign in with (--password-stdin)".into()));
        }
        self.write(|tx| {
            tx.execute(
                "UPDATE accounts SET auth = COALESCE(?, auth),
                    oauth_token_endpoint = COALESCE(?, oauth_token_endpoint),
                    oauth_device_endpoint = COALESCE(?, oauth_device_endpoint),
                    oauth_client_id = COALESCE(?, oauth_client_id),
                    oauth_client_secret = COALESCE(?, oauth_client_secret),
                    oauth_scopes = COALESCE(?, oauth_scopes),
                    oauth_token_command = COALESCE(?, oauth_token_command),
                    oauth_access_token = CASE WHEN ? IS NULL THEN oauth_access_token END,
                    oauth_expires_at = CASE WHEN ? IS NULL THEN oauth_expires_at END,
                    oauth_refresh_token = COALESCE(?, oauth_refresh_token),
                    needs_authorization = NULL, failures = 0, retry_after = NULL
                 WHERE id = ?",
                params![
                    auth.map(Auth::as_str),
                    o.token_endpoint,
                    o.device_endpoint,
                    o.client_id,
                    o.client_secret,
                    scopes_text(&o.scopes),
                    o.token_command,
                    o.refresh_token,
                    o.refresh_token,
                    o.refresh_token,
                    id
                ],
            )?;
            Ok(())
        })
    }

    /// Stores what a token endpoint issued, in one statement: the access token, its expiry,
    /// and a rotated refresh token in place of the old one, so that a kill at any moment
    /// leaves either the old grant or the new one, never a spent refresh token alone.
    /// `authorized`: a person just signed the account in (`account authorize`): it is tried
    /// again at once.
    pub fn store_oauth_tokens(
        &mut self,
        id: i64,
        access_token: &str,
        expires_at: i64,
        refresh_token: Option<&str>,
        authorized: bool,
    ) -> Result<()> {
        let n = self.write(|tx| {
            Ok(tx.execute(
                "UPDATE accounts SET oauth_access_token = ?, oauth_expires_at = ?,
                    oauth_refresh_token = COALESCE(?, oauth_refresh_token),
                    needs_authorization = CASE WHEN ? THEN NULL ELSE needs_authorization END,
                    failures = CASE WHEN ? THEN 0 ELSE failures END,
                    retry_after = CASE WHEN ? THEN NULL ELSE retry_after END
                 WHERE id = ?",
                params![access_token, expires_at, refresh_token, authorized, authorized, authorized, id],
            )?)
        })?;
        if n == 0 {
            return Err(Error::NotFound { what: "account", id: id.to_string() });
        }
        Ok(())
    }

    /// The account's grant is no longer good (`invalid_grant`): it waits for a person
    /// (`account authorize` or `account set`) and is not tried meanwhile, so neither the
    /// token endpoint nor the mail server sees it again every tick.
    pub fn mark_needs_authorization(&mut self, id: i64, reason: &str, now: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE accounts SET needs_authorization = ?1, last_error = ?1, last_error_at = ?2,
                    failures = failures + 1, retry_after = ?3, oauth_access_token = NULL, oauth_expires_at = NULL
                 WHERE id = ?4",
                params![reason, now, NEVER, id],
            )?;
            Ok(())
        })
    }

    /// How many accounts wait for a person to authorize them again.
    pub fn accounts_needing_authorization(&self) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("SELECT COUNT(*) FROM accounts WHERE needs_authorization IS NOT NULL", [], |r| r.get(0))?)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth_account(s: &mut Store) -> i64 {
        let a = NewAccount {
            owner_login: "u".into(),
            email: "o@x.test".into(),
            imap_host: "127.0.0.1".into(),
            imap_port: 143,
            login: "o@x.test".into(),
            auth: Auth::OAuth2,
            oauth: OAuth {
                token_endpoint: Some("http://127.0.0.1:1/token".into()),
                client_id: Some("cid".into()),
                scopes: vec!["a".into(), "b".into()],
                refresh_token: Some("rt-1".into()),
                ..OAuth::default()
            },
            ..NewAccount::default()
        };
        s.add_account(&a, 0).unwrap()
    }

    #[test]
    fn tokens_are_stored_together_and_a_rotation_replaces_the_refresh_token() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = crate::test_store(dir.path());
        let id = oauth_account(&mut s);
        let a = s.account(id).unwrap();
        assert_eq!(
            (a.auth, a.oauth.scopes.clone(), a.oauth.access_token.clone()),
            (Auth::OAuth2, vec!["a".into(), "b".into()], None)
        );
        s.store_oauth_tokens(id, "at-1", 100, None, false).unwrap();
        let o = s.account(id).unwrap().oauth;
        assert_eq!(
            (o.access_token.as_deref(), o.expires_at, o.refresh_token.as_deref()),
            (Some("at-1"), Some(100), Some("rt-1")),
            "no rotation keeps the grant"
        );
        s.store_oauth_tokens(id, "at-2", 200, Some("rt-2"), false).unwrap();
        let o = s.account(id).unwrap().oauth;
        assert_eq!((o.access_token.as_deref(), o.refresh_token.as_deref()), (Some("at-2"), Some("rt-2")));
        assert!(matches!(s.store_oauth_tokens(999, "x", 1, None, false), Err(Error::NotFound { .. })));
    }

    #[test]
    fn an_account_needing_authorization_waits_for_a_person() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = crate::test_store(dir.path());
        let id = oauth_account(&mut s);
        s.store_oauth_tokens(id, "at-1", 100, None, false).unwrap();
        s.mark_needs_authorization(id, "invalid_grant", 50).unwrap();
        let a = s.account(id).unwrap();
        assert_eq!(
            (a.needs_authorization.as_deref(), a.retry_after, a.oauth.access_token),
            (Some("invalid_grant"), Some(NEVER), None)
        );
        assert_eq!(s.accounts_needing_authorization().unwrap(), 1);
        assert!(s.schedule_accounts(i64::MAX - 1).unwrap().iter().any(|x| x.id == id && !x.ready), "never ready");
        // A refresh by the engine does not clear it; a person's authorization does.
        s.store_oauth_tokens(id, "at-2", 200, None, false).unwrap();
        assert!(s.account(id).unwrap().needs_authorization.is_some());
        s.store_oauth_tokens(id, "at-3", 300, Some("rt-3"), true).unwrap();
        let a = s.account(id).unwrap();
        assert_eq!((a.needs_authorization, a.retry_after, a.failures), (None, None, 0));
        // So does a change of the settings; a new refresh token drops the old access token.
        s.mark_needs_authorization(id, "invalid_grant", 60).unwrap();
        s.store_oauth_tokens(id, "at-4", 400, None, false).unwrap();
        s.set_account_auth(id, None, &OAuth { refresh_token: Some("rt-9".into()), ..OAuth::default() }).unwrap();
        let a = s.account(id).unwrap();
        assert_eq!(
            (a.needs_authorization, a.retry_after, a.oauth.refresh_token.as_deref(), a.oauth.access_token),
            (None, None, Some("rt-9"), None)
        );
        assert_eq!(a.oauth.token_endpoint.as_deref(), Some("http://127.0.0.1:1/token"), "unset fields kept");
    }

    #[test]
    fn sign_in_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, pw) = crate::test_store(dir.path());
        let no_client = NewAccount {
            owner_login: "u".into(),
            email: "o@x.test".into(),
            imap_host: "h".into(),
            imap_port: 1,
            login: "o".into(),
            auth: Auth::OAuth2,
            oauth: OAuth { token_endpoint: Some("https://t/".into()), ..OAuth::default() },
            ..NewAccount::default()
        };
        assert!(matches!(s.add_account(&no_client, 0), Err(Error::Invalid(m)) if m.contains("client id")));
        let command =
            NewAccount { oauth: OAuth { token_command: Some("echo t".into()), ..OAuth::default() }, ..no_client };
        s.add_account(&command, 0).unwrap();
        // A password account turned to OAuth2 needs the OAuth settings.
        assert!(s.set_account_auth(pw, Some(Auth::OAuth2), &OAuth::default()).is_err());
    }

    #[test]
    fn a_malformed_auth_value_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, id) = crate::test_store(dir.path());
        s.write(|tx| {
            tx.execute_batch("PRAGMA ignore_check_constraints = ON; UPDATE accounts SET auth = 'kerberos';")?;
            Ok(())
        })
        .unwrap();
        let e = s.account(id).unwrap_err().to_string();
        assert!(e.contains("kerberos"), "{e}");
    }
}
