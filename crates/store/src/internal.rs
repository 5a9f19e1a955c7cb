//! Internal message service between users of one store (DESIGN.md §5): Inbox, Sent, Drafts,
//! importance, per-recipient read times, "not delivered" lists, last-check and lifetime.
//!
//! Application code may use these functions or the tables directly:
//! `internal_messages(id, sender_id, subject, body, importance, created, draft)` and
//! `internal_recipients(message_id, user_id, read_time)`; a draft has draft = 1 and its
//! intended recipients with read_time NULL.

use rusqlite::{OptionalExtension, params};

use crate::{Error, Result, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Importance {
    Normal,
    High,
}

impl Importance {
    fn as_str(self) -> &'static str {
        match self {
            Importance::Normal => "normal",
            Importance::High => "high",
        }
    }
    fn parse(s: &str) -> Importance {
        if s == "high" { Importance::High } else { Importance::Normal }
    }
}

/// A message as one user's folder shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InternalMessage {
    pub id: i64,
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub body: String,
    pub importance: Importance,
    pub created: i64,
    /// Inbox: whether this user has read it.
    pub read: bool,
    /// Sent: recipients who have not read it yet ("not delivered").
    pub not_delivered: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InternalFolder {
    Inbox,
    Sent,
    Drafts,
}

/// What a new message or draft holds.
#[derive(Debug, Clone)]
pub struct InternalDraft<'a> {
    pub from: &'a str,
    pub to: &'a [String],
    pub subject: &'a str,
    pub body: &'a str,
    pub importance: Importance,
}

fn check_text(what: &str, s: &str, max: usize) -> Result<()> {
    if s.len() > max || s.contains('\0') {
        return Err(Error::Invalid(format!("{what} is too long or contains a NUL byte (at most {max} bytes)")));
    }
    Ok(())
}

impl Store {
    fn user_ids(tx: &rusqlite::Transaction, logins: &[String]) -> Result<Vec<i64>> {
        if logins.is_empty() {
            return Err(Error::Invalid("a message needs at least one recipient".into()));
        }
        let mut ids = Vec::new();
        for l in logins {
            let id: Option<i64> = tx.query_row("SELECT id FROM users WHERE login = ?", [l], |r| r.get(0)).optional()?;
            let id = id.ok_or_else(|| Error::NotFound { what: "user", id: l.clone() })?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Sends (draft = false) or saves a draft; returns the message id. Nothing is stored
    /// when a user is unknown or there is no recipient.
    pub fn internal_create(&mut self, m: &InternalDraft, draft: bool, now: i64) -> Result<i64> {
        check_text("subject", m.subject, 1000)?;
        check_text("body", m.body, 10 * 1024 * 1024)?;
        self.write(|tx| {
            let sender: i64 = tx
                .query_row("SELECT id FROM users WHERE login = ?", [m.from], |r| r.get(0))
                .optional()?
                .ok_or_else(|| Error::NotFound { what: "user", id: m.from.to_owned() })?;
            let rcpts = if draft && m.to.is_empty() { Vec::new() } else { Self::user_ids(tx, m.to)? };
            tx.execute(
                "INSERT INTO internal_messages (sender_id, subject, body, importance, created, draft, sent_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6,
                         CASE WHEN ?6 THEN NULL ELSE (SELECT COALESCE(MAX(sent_seq), 0) + 1 FROM internal_messages) END)",
                params![sender, m.subject, m.body, m.importance.as_str(), now, draft],
            )?;
            let id = tx.last_insert_rowid();
            for r in rcpts {
                tx.execute("INSERT INTO internal_recipients (message_id, user_id) VALUES (?, ?)", params![id, r])?;
            }
            Ok(id)
        })
    }

    /// Replaces a draft's fields (only its author may).
    pub fn internal_update_draft(&mut self, id: i64, m: &InternalDraft, now: i64) -> Result<()> {
        check_text("subject", m.subject, 1000)?;
        check_text("body", m.body, 10 * 1024 * 1024)?;
        self.write(|tx| {
            Self::own_draft(tx, id, m.from)?;
            let rcpts = if m.to.is_empty() { Vec::new() } else { Self::user_ids(tx, m.to)? };
            tx.execute(
                "UPDATE internal_messages SET subject = ?, body = ?, importance = ?, created = ? WHERE id = ?",
                params![m.subject, m.body, m.importance.as_str(), now, id],
            )?;
            tx.execute("DELETE FROM internal_recipients WHERE message_id = ?", [id])?;
            for r in rcpts {
                tx.execute("INSERT INTO internal_recipients (message_id, user_id) VALUES (?, ?)", params![id, r])?;
            }
            Ok(())
        })
    }

    fn own_draft(tx: &rusqlite::Transaction, id: i64, login: &str) -> Result<()> {
        let row: Option<(String, bool)> = tx
            .query_row(
                "SELECT u.login, m.draft FROM internal_messages m JOIN users u ON u.id = m.sender_id WHERE m.id = ?",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            Some((owner, true)) if owner == login => Ok(()),
            Some((_, true)) => Err(Error::Invalid(format!("draft {id} belongs to another user"))),
            _ => Err(Error::NotFound { what: "draft", id: id.to_string() }),
        }
    }

    /// Sends a saved draft of `login` (its recipients must be set).
    pub fn internal_send_draft(&mut self, id: i64, login: &str, now: i64) -> Result<()> {
        self.write(|tx| {
            Self::own_draft(tx, id, login)?;
            let n: i64 =
                tx.query_row("SELECT COUNT(*) FROM internal_recipients WHERE message_id = ?", [id], |r| r.get(0))?;
            if n == 0 {
                return Err(Error::Invalid(format!("draft {id} has no recipient")));
            }
            tx.execute(
                "UPDATE internal_messages SET draft = 0, created = ?,
                    sent_seq = (SELECT COALESCE(MAX(sent_seq), 0) + 1 FROM internal_messages) WHERE id = ?",
                params![now, id],
            )?;
            Ok(())
        })
    }

    /// Marks a message read by `login` (a recipient). Returns false if it was already read.
    pub fn internal_mark_read(&mut self, id: i64, login: &str, now: i64) -> Result<bool> {
        let user = self.user_by_login(login)?;
        self.write(|tx| {
            let row: Option<Option<i64>> = tx
                .query_row(
                    "SELECT r.read_time FROM internal_recipients r JOIN internal_messages m ON m.id = r.message_id
                     WHERE r.message_id = ? AND r.user_id = ? AND m.draft = 0",
                    params![id, user.id],
                    |r| r.get(0),
                )
                .optional()?;
            match row {
                None => Err(Error::NotFound { what: "message in the inbox of this user", id: id.to_string() }),
                Some(Some(_)) => Ok(false),
                Some(None) => {
                    tx.execute(
                        "UPDATE internal_recipients SET read_time = ? WHERE message_id = ? AND user_id = ?",
                        params![now, id, user.id],
                    )?;
                    Ok(true)
                }
            }
        })
    }

    fn internal_query(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
        reader: Option<i64>,
    ) -> Result<Vec<InternalMessage>> {
        let mut st = self.conn().prepare_cached(sql)?;
        let base: Vec<(i64, String, String, String, String, i64)> = st
            .query_map(args, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut rc = self.conn().prepare_cached(
            "SELECT u.login, r.read_time, r.user_id FROM internal_recipients r JOIN users u ON u.id = r.user_id
             WHERE r.message_id = ? ORDER BY u.login",
        )?;
        let mut out = Vec::with_capacity(base.len());
        for (id, from, subject, body, importance, created) in base {
            let rcpts: Vec<(String, Option<i64>, i64)> =
                rc.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<_>>()?;
            out.push(InternalMessage {
                id,
                from,
                to: rcpts.iter().map(|r| r.0.clone()).collect(),
                subject,
                body,
                importance: Importance::parse(&importance),
                created,
                read: reader.is_some_and(|u| rcpts.iter().any(|r| r.2 == u && r.1.is_some())),
                not_delivered: rcpts.iter().filter(|r| r.1.is_none()).map(|r| r.0.clone()).collect(),
            });
        }
        Ok(out)
    }

    /// A user's folder, newest first.
    pub fn internal_list(&self, login: &str, folder: InternalFolder) -> Result<Vec<InternalMessage>> {
        let user = self.user_by_login(login)?;
        let cols = "m.id, u.login, m.subject, m.body, m.importance, m.created";
        match folder {
            InternalFolder::Inbox => self.internal_query(
                &format!(
                    "SELECT {cols} FROM internal_recipients r JOIN internal_messages m ON m.id = r.message_id
                     JOIN users u ON u.id = m.sender_id WHERE r.user_id = ? AND m.draft = 0 ORDER BY m.created DESC, m.id DESC"
                ),
                [user.id],
                Some(user.id),
            ),
            InternalFolder::Sent | InternalFolder::Drafts => self.internal_query(
                &format!(
                    "SELECT {cols} FROM internal_messages m JOIN users u ON u.id = m.sender_id
                     WHERE m.sender_id = ? AND m.draft = ? ORDER BY m.created DESC, m.id DESC"
                ),
                params![user.id, folder == InternalFolder::Drafts],
                None,
            ),
        }
    }

    /// Unread messages in a user's inbox.
    pub fn internal_unread_count(&self, login: &str) -> Result<i64> {
        let user = self.user_by_login(login)?;
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM internal_recipients r JOIN internal_messages m ON m.id = r.message_id
             WHERE r.user_id = ? AND r.read_time IS NULL AND m.draft = 0",
            [user.id],
            |r| r.get(0),
        )?)
    }

    /// Messages that arrived since the user's last check (and updates it to `now`).
    pub fn internal_check(&mut self, login: &str, now: i64) -> Result<Vec<InternalMessage>> {
        // Messages are ordered by id (a sent draft keeps its id, so the watermark is the id of
        // the delivery time: `sent_seq`), which, unlike a time in seconds, never misses a
        // message created in the same second as the previous check.
        let user = self.user_by_login(login)?;
        self.write(|tx| {
            let since: i64 =
                tx.query_row("SELECT COALESCE(last_check_id, 0) FROM users WHERE id = ?", [user.id], |r| r.get(0))?;
            let newest: i64 =
                tx.query_row("SELECT COALESCE(MAX(sent_seq), 0) FROM internal_messages", [], |r| r.get(0))?;
            tx.execute(
                "UPDATE users SET last_check = ?, last_check_id = ? WHERE id = ?",
                params![now, newest, user.id],
            )?;
            Ok(since)
        })
        .and_then(|since| {
            self.internal_query(
                "SELECT m.id, u.login, m.subject, m.body, m.importance, m.created FROM internal_recipients r
                 JOIN internal_messages m ON m.id = r.message_id JOIN users u ON u.id = m.sender_id
                 WHERE r.user_id = ?1 AND m.draft = 0 AND m.sent_seq > ?2
                 ORDER BY m.sent_seq",
                params![user.id, since],
                Some(user.id),
            )
        })
    }

    /// The user's poll interval (None = the default constant); sets it when `set` is given.
    pub fn internal_poll_interval(&mut self, login: &str, set: Option<i64>) -> Result<Option<i64>> {
        let user = self.user_by_login(login)?;
        if let Some(v) = set {
            self.write(|tx| {
                tx.execute("UPDATE users SET poll_interval = ? WHERE id = ?", params![v, user.id])?;
                Ok(())
            })?;
            return Ok(Some(v));
        }
        Ok(user.poll_interval)
    }

    /// Deletes sent messages that some recipient has still not read and that are older than
    /// `before`, for those recipients; a message nobody reads any more is removed. Returns
    /// how many unread deliveries were deleted.
    pub fn internal_delete_expired(&mut self, before: i64) -> Result<usize> {
        self.write(|tx| {
            let n = tx.execute(
                "DELETE FROM internal_recipients WHERE read_time IS NULL AND message_id IN
                   (SELECT id FROM internal_messages WHERE draft = 0 AND created < ?)",
                [before],
            )?;
            tx.execute(
                "DELETE FROM internal_messages WHERE draft = 0 AND created < ? AND NOT EXISTS
                   (SELECT 1 FROM internal_recipients r WHERE r.message_id = internal_messages.id)",
                [before],
            )?;
            Ok(n)
        })
    }
}
