//! Internal message service between users of one store (DESIGN.md §5): Inbox, Sent, Drafts,
//! importance, per-recipient read times, "not delivered" lists, last-check and lifetime.
//!
//! Application code may use these functions or the tables directly:
//! `internal_messages(id, sender_id, subject, body, importance, created, draft)` and
//! `internal_recipients(message_id, user_id, read_time)`; a draft has draft = 1 and its
//! intended recipients with read_time NULL. `internal_messages.sent_seq` orders deliveries for
//! `check`; it is allocated from the monotonic counter `counters.internal_sent_seq`, so a number
//! is never reused even after the newest message has expired and been deleted.

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

/// Poll intervals a user may set, in seconds (as INTERNAL_MSG_POLL_INTERVAL).
pub const POLL_INTERVAL_RANGE: std::ops::RangeInclusive<i64> = 10..=86_400;

const SEQ_COUNTER: &str = "internal_sent_seq";

fn check_text(what: &str, s: &str, max: usize) -> Result<()> {
    if s.contains('\0') {
        return Err(Error::Invalid(format!("the {what} contains a NUL byte")));
    }
    if s.len() > max {
        return Err(Error::Invalid(format!("the {what} is too long ({} bytes, at most {max})", s.len())));
    }
    Ok(())
}

fn check_fields(m: &InternalDraft) -> Result<()> {
    check_text("subject", m.subject, 1000)?;
    if m.subject.contains(['\r', '\n']) {
        return Err(Error::Invalid("the subject must be one line (it contains a CR or LF)".into()));
    }
    check_text("body", m.body, 10 * 1024 * 1024)
}

/// Allocates the next delivery number (never reused; see the module docs).
fn next_seq(tx: &rusqlite::Transaction) -> Result<i64> {
    Ok(tx.query_row(
        "INSERT INTO counters (name, value)
           VALUES (?1, (SELECT COALESCE(MAX(sent_seq), 0) + 1 FROM internal_messages))
         ON CONFLICT (name) DO UPDATE
           SET value = MAX(value, (SELECT COALESCE(MAX(sent_seq), 0) FROM internal_messages)) + 1
         RETURNING value",
        [SEQ_COUNTER],
        |r| r.get(0),
    )?)
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
        check_fields(m)?;
        self.write(|tx| {
            let sender: i64 = tx
                .query_row("SELECT id FROM users WHERE login = ?", [m.from], |r| r.get(0))
                .optional()?
                .ok_or_else(|| Error::NotFound { what: "user", id: m.from.to_owned() })?;
            let rcpts = if draft && m.to.is_empty() { Vec::new() } else { Self::user_ids(tx, m.to)? };
            let seq = if draft { None } else { Some(next_seq(tx)?) };
            tx.execute(
                "INSERT INTO internal_messages (sender_id, subject, body, importance, created, draft, sent_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![sender, m.subject, m.body, m.importance.as_str(), now, draft, seq],
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
        check_fields(m)?;
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
            let seq = next_seq(tx)?;
            tx.execute(
                "UPDATE internal_messages SET draft = 0, created = ?, sent_seq = ? WHERE id = ?",
                params![now, seq, id],
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
        with_not_delivered: bool,
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
                not_delivered: if with_not_delivered {
                    rcpts.iter().filter(|r| r.1.is_none()).map(|r| r.0.clone()).collect()
                } else {
                    Vec::new()
                },
            });
        }
        Ok(out)
    }

    /// A user's folder, newest first. `not_delivered` is filled for Sent only, `read` for
    /// Inbox only.
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
                false,
            ),
            InternalFolder::Sent | InternalFolder::Drafts => self.internal_query(
                &format!(
                    "SELECT {cols} FROM internal_messages m JOIN users u ON u.id = m.sender_id
                     WHERE m.sender_id = ? AND m.draft = ? ORDER BY m.created DESC, m.id DESC"
                ),
                params![user.id, folder == InternalFolder::Drafts],
                None,
                folder == InternalFolder::Sent,
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
        //
        // The window is (since, newest]: a message delivered after the watermark moved (between
        // the commit below and the query) belongs to the next check, not to both. The watermark
        // never moves back, and delivery numbers are never reused (module docs).
        let user = self.user_by_login(login)?;
        let (since, newest) = self.write(|tx| {
            let since: i64 =
                tx.query_row("SELECT COALESCE(last_check_id, 0) FROM users WHERE id = ?", [user.id], |r| r.get(0))?;
            let newest: i64 = tx.query_row(
                "SELECT MAX(?1, COALESCE((SELECT value FROM counters WHERE name = ?2), 0),
                                (SELECT COALESCE(MAX(sent_seq), 0) FROM internal_messages))",
                params![since, SEQ_COUNTER],
                |r| r.get(0),
            )?;
            tx.execute(
                "UPDATE users SET last_check = ?, last_check_id = ? WHERE id = ?",
                params![now, newest, user.id],
            )?;
            Ok((since, newest))
        })?;
        self.internal_query(
            "SELECT m.id, u.login, m.subject, m.body, m.importance, m.created FROM internal_recipients r
             JOIN internal_messages m ON m.id = r.message_id JOIN users u ON u.id = m.sender_id
             WHERE r.user_id = ?1 AND m.draft = 0 AND m.sent_seq > ?2 AND m.sent_seq <= ?3
             ORDER BY m.sent_seq",
            params![user.id, since, newest],
            Some(user.id),
            false,
        )
    }

    /// The user's poll interval (None = the default constant); sets it when `set` is given
    /// (within [`POLL_INTERVAL_RANGE`]).
    pub fn internal_poll_interval(&mut self, login: &str, set: Option<i64>) -> Result<Option<i64>> {
        let user = self.user_by_login(login)?;
        if let Some(v) = set {
            if !POLL_INTERVAL_RANGE.contains(&v) {
                return Err(Error::Invalid(format!(
                    "poll interval {v} s is out of range ({}..={} s)",
                    POLL_INTERVAL_RANGE.start(),
                    POLL_INTERVAL_RANGE.end()
                )));
            }
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

    /// Test and maintenance helper: sets a message's created time (e.g. to date rows back
    /// when checking the lifetime rule). Returns NotFound for an unknown id.
    pub fn internal_backdate(&mut self, id: i64, created: i64) -> Result<()> {
        let n = self.write(|tx| {
            Ok(tx.execute("UPDATE internal_messages SET created = ? WHERE id = ?", params![created, id])?)
        })?;
        if n == 0 {
            return Err(Error::NotFound { what: "internal message", id: id.to_string() });
        }
        Ok(())
    }
}
