//! Internal message service between users of one store: Inbox, Sent, Drafts,
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

    #[cfg(any(test, feature = "test-support"))]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        for u in ["alice", "bob", "carol"] {
            s.add_user(u, 1).unwrap();
        }
        (dir, s)
    }

    fn to(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn send(s: &mut Store, from: &str, rcpts: &[&str], subject: &str, now: i64) -> Result<i64> {
        let to = to(rcpts);
        let m = InternalDraft { from, to: &to, subject, body: "b", importance: Importance::Normal };
        s.internal_create(&m, false, now)
    }

    fn count(s: &Store) -> i64 {
        s.conn().query_row("SELECT COUNT(*) FROM internal_messages", [], |r| r.get(0)).unwrap()
    }

    fn ids(v: &[InternalMessage]) -> Vec<i64> {
        v.iter().map(|m| m.id).collect()
    }

    #[test]
    fn same_second_messages_are_not_missed_by_check() {
        let (_d, mut s) = store();
        let a = send(&mut s, "alice", &["bob"], "a", 100).unwrap();
        assert_eq!(ids(&s.internal_check("bob", 100).unwrap()), vec![a]);
        // same second as the check: a time watermark would miss it
        let b = send(&mut s, "alice", &["bob"], "b", 100).unwrap();
        let c = send(&mut s, "carol", &["bob"], "c", 100).unwrap();
        assert_eq!(ids(&s.internal_check("bob", 100).unwrap()), vec![b, c]);
        assert!(s.internal_check("bob", 100).unwrap().is_empty());
        assert_eq!(s.user_by_login("bob").unwrap().last_check, Some(100));
    }

    #[test]
    fn duplicate_recipients_are_counted_once() {
        let (_d, mut s) = store();
        let id = send(&mut s, "alice", &["bob", "bob", "carol", "bob"], "dup", 10).unwrap();
        assert_eq!(s.internal_unread_count("bob").unwrap(), 1);
        let sent = s.internal_list("alice", InternalFolder::Sent).unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].to, to(&["bob", "carol"]));
        assert_eq!(sent[0].not_delivered, to(&["bob", "carol"]));
        assert_eq!(s.internal_list("bob", InternalFolder::Inbox).unwrap().len(), 1);
        assert!(s.internal_mark_read(id, "bob", 11).unwrap());
        assert!(!s.internal_mark_read(id, "bob", 12).unwrap(), "a second read changes nothing");
        assert_eq!(s.internal_list("alice", InternalFolder::Sent).unwrap()[0].not_delivered, to(&["carol"]));
    }

    #[test]
    fn not_delivered_until_every_recipient_read() {
        let (_d, mut s) = store();
        let id = send(&mut s, "alice", &["bob", "carol"], "hi", 10).unwrap();
        s.internal_mark_read(id, "carol", 11).unwrap();
        let inbox = s.internal_list("bob", InternalFolder::Inbox).unwrap();
        assert!(!inbox[0].read);
        assert!(inbox[0].not_delivered.is_empty(), "a recipient does not see who else has read it");
        assert!(s.internal_list("carol", InternalFolder::Inbox).unwrap()[0].read);
        s.internal_mark_read(id, "bob", 12).unwrap();
        assert!(s.internal_list("alice", InternalFolder::Sent).unwrap()[0].not_delivered.is_empty());
        // the sender is not a recipient
        assert!(matches!(s.internal_mark_read(id, "alice", 13), Err(Error::NotFound { .. })));
    }

    #[test]
    fn a_delivery_number_is_not_reused_after_the_newest_message_expired() {
        let (_d, mut s) = store();
        let a = send(&mut s, "alice", &["bob"], "old", 100).unwrap();
        assert_eq!(ids(&s.internal_check("bob", 101).unwrap()), vec![a]);
        // the newest message expires unread and is removed entirely
        assert_eq!(s.internal_delete_expired(1000).unwrap(), 1);
        assert_eq!(count(&s), 0);
        let b = send(&mut s, "carol", &["bob"], "new", 2000).unwrap();
        assert_eq!(ids(&s.internal_check("bob", 2001).unwrap()), vec![b]);
    }

    #[test]
    fn check_sees_a_sent_draft_once_and_never_an_unsent_one() {
        let (_d, mut s) = store();
        let rcpt = to(&["bob"]);
        let d = InternalDraft { from: "alice", to: &rcpt, subject: "d", body: "", importance: Importance::High };
        let id = s.internal_create(&d, true, 10).unwrap();
        assert!(s.internal_check("bob", 11).unwrap().is_empty());
        assert!(s.internal_list("bob", InternalFolder::Inbox).unwrap().is_empty());
        assert_eq!(s.internal_unread_count("bob").unwrap(), 0);
        s.internal_send_draft(id, "alice", 12).unwrap();
        let got = s.internal_check("bob", 13).unwrap();
        assert_eq!(ids(&got), vec![id]);
        assert_eq!(got[0].importance, Importance::High);
        assert!(s.internal_check("bob", 14).unwrap().is_empty());
        assert!(s.internal_list("alice", InternalFolder::Drafts).unwrap().is_empty());
        // a sent message is no draft any more
        assert!(matches!(s.internal_send_draft(id, "alice", 15), Err(Error::NotFound { .. })));
    }

    #[test]
    fn drafts_belong_to_their_author() {
        let (_d, mut s) = store();
        let rcpt = to(&["carol"]);
        let d = InternalDraft { from: "alice", to: &rcpt, subject: "mine", body: "x", importance: Importance::Normal };
        let id = s.internal_create(&d, true, 10).unwrap();
        let other = InternalDraft { from: "bob", ..d.clone() };
        assert!(matches!(s.internal_update_draft(id, &other, 11), Err(Error::Invalid(_))));
        assert!(matches!(s.internal_send_draft(id, "bob", 11), Err(Error::Invalid(_))));
        let drafts = s.internal_list("alice", InternalFolder::Drafts).unwrap();
        assert_eq!((drafts[0].subject.as_str(), drafts[0].created), ("mine", 10));
        assert!(s.internal_list("carol", InternalFolder::Inbox).unwrap().is_empty());
        // a draft without recipients can be saved but not sent
        let none: Vec<String> = Vec::new();
        let empty = InternalDraft { to: &none, ..d.clone() };
        let e = s.internal_create(&empty, true, 12).unwrap();
        assert!(matches!(s.internal_send_draft(e, "alice", 13), Err(Error::Invalid(_))));
    }

    #[test]
    fn invalid_messages_store_nothing() {
        let (_d, mut s) = store();
        assert!(matches!(send(&mut s, "alice", &["bob", "nobody"], "s", 1), Err(Error::NotFound { .. })));
        assert!(matches!(send(&mut s, "nobody", &["bob"], "s", 1), Err(Error::NotFound { .. })));
        assert!(matches!(send(&mut s, "alice", &[], "s", 1), Err(Error::Invalid(_))));
        for bad in ["two\nlines", "cr\r", "nul\0"] {
            let e = send(&mut s, "alice", &["bob"], bad, 1).unwrap_err();
            assert!(matches!(e, Error::Invalid(_)), "{bad:?}: {e}");
        }
        assert!(send(&mut s, "alice", &["bob"], &"x".repeat(1001), 1).is_err());
        assert_eq!(count(&s), 0);
        let n: i64 = s.conn().query_row("SELECT COUNT(*) FROM internal_recipients", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn expiry_removes_unread_deliveries_only() {
        let (_d, mut s) = store();
        let day = 86_400;
        let now = 100 * day;
        let old_unread = send(&mut s, "alice", &["bob"], "old unread", now - 8 * day).unwrap();
        let old_read = send(&mut s, "alice", &["bob"], "old read", now - 8 * day).unwrap();
        s.internal_mark_read(old_read, "bob", now - 7 * day).unwrap();
        let young = send(&mut s, "alice", &["bob"], "young", now - 6 * day).unwrap();
        let half = send(&mut s, "alice", &["bob", "carol"], "half", now - 8 * day).unwrap();
        s.internal_mark_read(half, "carol", now - 8 * day).unwrap();
        let d = InternalDraft { from: "alice", to: &[], subject: "draft", body: "", importance: Importance::Normal };
        let draft = s.internal_create(&d, true, now - 30 * day).unwrap();

        assert_eq!(s.internal_delete_expired(now - 7 * day).unwrap(), 2);
        let mut inbox = ids(&s.internal_list("bob", InternalFolder::Inbox).unwrap());
        inbox.sort();
        assert_eq!(inbox, vec![old_read, young]);
        assert_eq!(ids(&s.internal_list("carol", InternalFolder::Inbox).unwrap()), vec![half]);
        assert_eq!(ids(&s.internal_list("alice", InternalFolder::Drafts).unwrap()), vec![draft]);
        let sent = ids(&s.internal_list("alice", InternalFolder::Sent).unwrap());
        assert!(!sent.contains(&old_unread) && sent.contains(&half));
        assert_eq!(s.internal_delete_expired(now - 7 * day).unwrap(), 0);
    }

    #[test]
    fn poll_interval_is_per_user_and_validated() {
        let (_d, mut s) = store();
        assert_eq!(s.internal_poll_interval("bob", None).unwrap(), None);
        assert_eq!(s.internal_poll_interval("bob", Some(120)).unwrap(), Some(120));
        assert_eq!(s.internal_poll_interval("bob", None).unwrap(), Some(120));
        assert_eq!(s.internal_poll_interval("carol", None).unwrap(), None);
        for bad in [0, 9, 86_401, -5] {
            assert!(matches!(s.internal_poll_interval("bob", Some(bad)), Err(Error::Invalid(_))));
        }
        assert_eq!(s.internal_poll_interval("bob", None).unwrap(), Some(120));
        assert!(matches!(s.internal_poll_interval("nobody", None), Err(Error::NotFound { .. })));
    }

    #[test]
    fn backdate_changes_created_only_for_known_ids() {
        let (_d, mut s) = store();
        let id = send(&mut s, "alice", &["bob"], "s", 50).unwrap();
        s.internal_backdate(id, 5).unwrap();
        assert_eq!(s.internal_list("bob", InternalFolder::Inbox).unwrap()[0].created, 5);
        assert!(matches!(s.internal_backdate(id + 100, 5), Err(Error::NotFound { .. })));
    }
}
