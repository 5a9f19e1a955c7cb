//! Users: owners of accounts and parties of internal messages; "logged in" state.

use rusqlite::{OptionalExtension, params};

use crate::{Error, Result, Store};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub id: i64,
    pub login: String,
    pub session_expires: Option<i64>,
    pub poll_interval: Option<i64>,
    pub last_check: Option<i64>,
}

fn row(r: &rusqlite::Row) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        login: r.get(1)?,
        session_expires: r.get(2)?,
        poll_interval: r.get(3)?,
        last_check: r.get(4)?,
    })
}

const COLS: &str = "id, login, session_expires, poll_interval, last_check";

/// Logins are what people type; keep them to a safe, printable set.
fn validate_login(login: &str) -> Result<()> {
    let ok =
        !login.is_empty() && login.len() <= 254 && login.chars().all(|c| c.is_alphanumeric() || "._-@+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("invalid login {login:?}: expected 1-254 letters, digits or . _ - @ +")))
    }
}

impl Store {
    pub fn add_user(&mut self, login: &str, now: i64) -> Result<i64> {
        validate_login(login)?;
        self.write(|tx| {
            let exists: bool =
                tx.query_row("SELECT EXISTS(SELECT 1 FROM users WHERE login = ?)", [login], |r| r.get(0))?;
            if exists {
                return Err(Error::Invalid(format!("user {login} already exists")));
            }
            tx.execute("INSERT INTO users (login, created) VALUES (?, ?)", params![login, now])?;
            Ok(tx.last_insert_rowid())
        })
    }

    pub fn user_by_login(&self, login: &str) -> Result<User> {
        self.conn()
            .query_row(&format!("SELECT {COLS} FROM users WHERE login = ?"), [login], row)
            .optional()?
            .ok_or_else(|| Error::NotFound { what: "user", id: login.into() })
    }

    pub fn user(&self, id: i64) -> Result<User> {
        self.conn()
            .query_row(&format!("SELECT {COLS} FROM users WHERE id = ?"), [id], row)
            .optional()?
            .ok_or_else(|| Error::NotFound { what: "user", id: id.to_string() })
    }

    pub fn users(&self) -> Result<Vec<User>> {
        let mut st = self.conn().prepare(&format!("SELECT {COLS} FROM users ORDER BY login"))?;
        let v = st.query_map([], row)?.collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// Marks the user logged in until `expires` (None = logged out).
    pub fn set_session(&mut self, login: &str, expires: Option<i64>) -> Result<()> {
        let n = self.write(|tx| {
            Ok(tx.execute("UPDATE users SET session_expires = ? WHERE login = ?", params![expires, login])?)
        })?;
        if n == 0 {
            return Err(Error::NotFound { what: "user", id: login.into() });
        }
        Ok(())
    }
}
