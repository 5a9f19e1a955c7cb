//! Outbox entries and their delivery record.
//!
//! Application code may insert rows directly: `INSERT INTO outbox (account_id, created,
//! message_id, mail_from, recipients, raw) VALUES (?, strftime('%s','now'), '<id@host>',
//! 'from@x', '["to@y"]', CAST(? AS BLOB))`; state defaults to PENDING. Setting `state` to
//! PENDING or RETRY sends an entry again; SUCCESS and ERROR are final otherwise. A trigger
//! moves `raw` into `outbox_raw` (see the schema for why).
//!
//! Invariants: every write after a claim is fenced by the claim's lease token and must change
//! exactly one row, so a worker that lost its lease cannot overwrite the final state.
//! Claims and records are plain WAL commits: a killed process loses none of them. An entry
//! it left PROCESSING with `sending` set (its message may have reached the server) ends as
//! ERROR "outcome unknown" at its lease expiry, never sent again; one only claimed (`sending`
//! 0: the sender claims each entry ahead, and sets `sending` in the commit right before its
//! message goes out) goes back to PENDING, its attempt not counted. The sender makes a batch durable with one `Store::sync_wal`; a power cut
//! before it may lose the last claims, and those entries are sent again, with the same
//! Message-ID (a power cut costs at most a batch of duplicates, never a lost message).

use backproc_types::OutboxState;
use backproc_types::retry::{self, OutboxNext, SendEnd};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Error, Result, Store};

/// `info` of the delivery record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryInfo {
    pub message_id: String,
    pub accepted: Vec<String>,
    pub rejected: Vec<String>,
    pub pending: Vec<String>,
    pub response: String,
}

/// The delivery record as `outbox show` prints it (names as in the Firebase extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxRecord {
    pub id: i64,
    pub account_id: i64,
    pub state: OutboxState,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub error: Option<String>,
    pub attempts: i64,
    pub lease_expire_time: Option<i64>,
    pub info: Option<DeliveryInfo>,
    pub message_id: String,
    pub recipients: Vec<String>,
    pub created: i64,
    pub secondary: bool,
    pub parent_id: Option<i64>,
    /// While PROCESSING: the message may be on its way (false: claimed ahead, not sent).
    pub sending: bool,
}

/// A claimed entry, ready to send.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub account_id: i64,
    pub message_id: String,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub raw: Vec<u8>,
    pub token: String,
    pub attempts: i64,
    pub created: i64,
    /// Its message may be written to the server (false: only claimed; `Store::outbox_step`
    /// must set it before the message goes out).
    pub sending: bool,
}

/// An entry for `Store::outbox_step` to claim ahead of sending (`Claimed::sending` false), if
/// it is still due in its lane: a kill before the entry is marked sending puts it back in the
/// queue at its lease expiry instead of leaving its outcome unknown.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    pub id: i64,
    pub secondary: bool,
    /// Seconds the claim holds.
    pub lease: i64,
}

/// What one `Store::outbox_step` did.
#[derive(Debug)]
pub struct Step {
    /// Per end given: false when the lease was lost (nothing was changed).
    pub held: Vec<bool>,
    /// False when the entry to mark sending had lost its lease: its message must not go out.
    pub sending: bool,
    pub claimed: Option<Claimed>,
}

/// Entries whose lease expired, by what became of them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Their message may have reached the server: ERROR "delivery outcome unknown".
    pub unknown: Vec<i64>,
    /// Claimed ahead and never sent: due again (PENDING), the attempt not counted.
    pub returned: Vec<i64>,
}

/// How a send ended, as the Send job saw it.
#[derive(Debug, Clone)]
pub enum SendOutcome {
    /// At least one recipient accepted.
    Success { info: DeliveryInfo },
    /// Nobody accepted and the refusal is final (5xx).
    Permanent { error: String, info: DeliveryInfo },
    /// Temporary (4xx, connection refused or dropped before the end of DATA): try later.
    Temporary { error: String },
    /// The server may have accepted it (e.g. the connection dropped after the final "."):
    /// never sent again automatically.
    Unknown { error: String },
}

pub use backproc_types::retry::SendPolicy;

impl SendOutcome {
    /// The outcome as the retry rule sees it.
    fn end(&self) -> SendEnd<'_> {
        match self {
            SendOutcome::Success { info } => SendEnd::Accepted { pending: !info.pending.is_empty() },
            SendOutcome::Permanent { error, .. } => SendEnd::Refused { error },
            SendOutcome::Unknown { error } => SendEnd::Unknown { error },
            SendOutcome::Temporary { error } => SendEnd::Temporary { error },
        }
    }
}

fn token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    format!("{:016x}{:08x}", h.finish(), std::process::id())
}

/// `Store::outbox_depths`: PENDING and RETRY, PROCESSING, ERROR, and the total.
const DEPTHS: [&str; 4] = [
    "SELECT state, COUNT(*) FROM outbox WHERE state IN ('PENDING','RETRY') GROUP BY state",
    "SELECT COUNT(*) FROM outbox WHERE state = 'PROCESSING'",
    "SELECT COUNT(*) FROM outbox WHERE state = 'ERROR'",
    "SELECT n FROM outbox_total",
];

impl Store {
    /// Queues a message; returns the entry id.
    #[allow(clippy::too_many_arguments)] // the columns of one row, each named at the call
    pub fn outbox_add(
        &mut self,
        account_id: i64,
        message_id: &str,
        mail_from: &str,
        recipients: &[String],
        raw: &[u8],
        sent_append: bool,
        now: i64,
    ) -> Result<i64> {
        self.account(account_id)?;
        if recipients.is_empty() {
            return Err(Error::Invalid("a message needs at least one recipient".into()));
        }
        let rcpts = serde_json::to_string(recipients).map_err(|e| Error::Invalid(e.to_string()))?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO outbox (account_id, created, message_id, mail_from, recipients, raw, sent_append)
                 VALUES (?,?,?,?,?,?,?)",
                params![account_id, now, message_id, mail_from, rcpts, raw, sent_append.then_some("pending")],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Entries stuck in PROCESSING past their lease (the engine was killed or frozen): one
    /// whose message may have gone out becomes ERROR, its outcome unknown, never sent again
    /// automatically; one only claimed goes back to PENDING, as if never claimed.
    pub fn outbox_expire_leases(&mut self, now: i64) -> Result<Expired> {
        self.write(|tx| {
            let mut st = tx.prepare_cached(
                "SELECT id, sending FROM outbox WHERE state = 'PROCESSING' AND lease_expire_time < ?",
            )?;
            let rows: Vec<(i64, bool)> =
                st.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
            let mut expired = Expired::default();
            for (id, sending) in rows {
                if sending {
                    tx.execute(
                        "UPDATE outbox SET state = 'ERROR', end_time = ?, lease_token = NULL,
                            error = 'delivery outcome unknown: the lease expired while sending (engine killed or frozen); not sent again automatically, use `backproc outbox retry` to send it again'
                         WHERE id = ? AND state = 'PROCESSING'",
                        params![now, id],
                    )?;
                    expired.unknown.push(id);
                } else {
                    tx.execute(
                        "UPDATE outbox SET state = 'PENDING', lease_token = NULL, lease_expire_time = NULL,
                            attempts = attempts - 1
                         WHERE id = ? AND state = 'PROCESSING'",
                        [id],
                    )?;
                    expired.returned.push(id);
                }
            }
            Ok(expired)
        })
    }

    /// Accounts with due entries (primary or secondary lane).
    pub fn outbox_due_accounts(&self, now: i64, secondary: bool) -> Result<Vec<i64>> {
        let mut st = self.conn().prepare_cached(
            "SELECT DISTINCT account_id FROM outbox WHERE state IN ('PENDING','RETRY') AND secondary = ? AND next_attempt <= ?",
        )?;
        let v = st.query_map(params![secondary, now], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// Ids of up to `limit` due entries of an account, oldest first; nothing is claimed. With
    /// `outbox_claim_one`, a sender claims each entry only right before sending it.
    pub fn outbox_due_ids(&self, account_id: i64, secondary: bool, now: i64, limit: usize) -> Result<Vec<i64>> {
        // only the ids are sorted: sorting whole rows (raw included) for every single claim
        // made sending one entry at a time twice as slow
        let mut st = self.conn().prepare_cached(
            "SELECT id FROM outbox
             WHERE account_id = ? AND state IN ('PENDING','RETRY') AND secondary = ? AND next_attempt <= ?
             ORDER BY id LIMIT ?",
        )?;
        let v = st
            .query_map(params![account_id, secondary, now, limit as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    #[cfg(any(test, feature = "test-support"))]
    /// Claims entry `id` to send it at once (`Claimed::sending` set), if it is still due in
    /// that lane; `None` when it is not (another worker claimed it, or it was changed).
    pub fn outbox_claim_one(&mut self, id: i64, secondary: bool, now: i64, lease: i64) -> Result<Option<Claimed>> {
        self.write(|tx| claim_one(tx, Claim { id, secondary, lease }, true, now))
    }

    /// One step of a sender, in one transaction (durable when an "outcome unknown" is among
    /// the ends): records the ends of entries already sent, marks `sending` the entry whose
    /// message goes out next (fenced by its lease), and claims the next entry ahead.
    pub fn outbox_step(
        &mut self,
        ends: &[(&Claimed, &SendOutcome)],
        now: i64,
        p: &SendPolicy,
        sending: Option<&Claimed>,
        claim: Option<Claim>,
    ) -> Result<Step> {
        let step = |tx: &rusqlite::Transaction| {
            let held = ends.iter().map(|(c, o)| finish_one(tx, c, o, now, p)).collect::<Result<Vec<bool>>>()?;
            let sending = match sending {
                Some(c) if !c.sending => {
                    tx.prepare_cached(
                        "UPDATE outbox SET sending = 1 WHERE id = ? AND lease_token = ? AND state = 'PROCESSING'",
                    )?
                    .execute(params![c.id, c.token])?
                        == 1
                }
                _ => true,
            };
            let claimed = match claim {
                Some(c) => claim_one(tx, c, false, now)?,
                None => None,
            };
            Ok(Step { held, sending, claimed })
        };
        if ends.iter().any(|(_, o)| matches!(o, SendOutcome::Unknown { .. })) {
            self.durable_write(step)
        } else {
            self.write(step)
        }
    }

    #[cfg(any(test, feature = "test-support"))]
    /// Records how a claimed send ended. Returns false when the lease was lost (another
    /// worker or the lease expiry owns the entry now): nothing was changed.
    pub fn outbox_finish(&mut self, c: &Claimed, outcome: &SendOutcome, now: i64, p: &SendPolicy) -> Result<bool> {
        Ok(self.outbox_step(&[(c, outcome)], now, p, None, None)?.held[0])
    }

    pub fn outbox_record(&self, id: i64) -> Result<OutboxRecord> {
        self.outbox_records(Some(id), None)?
            .pop()
            .ok_or_else(|| Error::NotFound { what: "outbox entry", id: id.to_string() })
    }

    /// Entries, newest first, optionally of one state.
    pub fn outbox_records(&self, id: Option<i64>, state: Option<&str>) -> Result<Vec<OutboxRecord>> {
        if let Some(s) = state
            && OutboxState::parse(s).is_none()
        {
            let names = OutboxState::NAMES.join(", ");
            return Err(Error::Invalid(format!("unknown state {s:?}: expected one of {names}")));
        }
        let mut st = self.conn().prepare_cached(
            "SELECT id, account_id, state, start_time, end_time, error, attempts, lease_expire_time, info, message_id,
                    recipients, created, secondary, parent_id, sending
             FROM outbox WHERE (?1 IS NULL OR id = ?1) AND (?2 IS NULL OR state = ?2) ORDER BY id DESC",
        )?;
        let v = st
            .query_map(params![id, state], |r| {
                let id: i64 = r.get(0)?;
                let info: Option<String> = r.get(8)?;
                let rcpts: String = r.get(10)?;
                Ok(OutboxRecord {
                    id,
                    account_id: r.get(1)?,
                    state: r.get(2)?,
                    start_time: r.get(3)?,
                    end_time: r.get(4)?,
                    error: r.get(5)?,
                    attempts: r.get(6)?,
                    lease_expire_time: r.get(7)?,
                    info: match info {
                        None => None,
                        Some(i) => Some(serde_json::from_str(&i).map_err(|e| {
                            bad_row(8, format!("outbox entry {id}: its delivery record is not valid JSON: {e}"))
                        })?),
                    },
                    message_id: r.get(9)?,
                    recipients: recipients_of(id, &rcpts).map_err(|why| bad_row(10, why))?,
                    created: r.get(11)?,
                    secondary: r.get(12)?,
                    parent_id: r.get(13)?,
                    sending: r.get(14)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// Sends a final entry again on purpose: state RETRY (the next claim counts the attempt).
    pub fn outbox_retry(&mut self, id: i64, now: i64) -> Result<()> {
        let rec = self.outbox_record(id)?;
        if rec.state == OutboxState::Processing {
            return Err(Error::Invalid(format!("entry {id} is being sent now (PROCESSING)")));
        }
        self.write(|tx| {
            tx.execute(
                "UPDATE outbox SET state = 'RETRY', next_attempt = ?, secondary = 0, end_time = NULL WHERE id = ?",
                params![now, id],
            )?;
            Ok(())
        })
    }

    /// Outbox entry counts by state (those not zero, by name), for `status` and the metrics
    /// of every tick: each count reads a partial index or the total, never the SUCCESS
    /// history, which grows without end (see the schema).
    pub fn outbox_depths(&self) -> Result<Vec<(String, i64)>> {
        let c = self.conn();
        let mut depths: Vec<(String, i64)> = c
            .prepare_cached(DEPTHS[0])?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (state, sql) in [("PROCESSING", DEPTHS[1]), ("ERROR", DEPTHS[2])] {
            depths.push((state.to_owned(), c.prepare_cached(sql)?.query_row([], |r| r.get(0))?));
        }
        let total: i64 = c.prepare_cached(DEPTHS[3])?.query_row([], |r| r.get(0))?;
        depths.push(("SUCCESS".to_owned(), total - depths.iter().map(|d| d.1).sum::<i64>()));
        depths.retain(|d| d.1 != 0);
        depths.sort();
        Ok(depths)
    }

    /// Sent messages of an account still to be appended to its Sent folder: (id, raw).
    pub fn outbox_pending_appends(&self, account_id: i64, limit: usize) -> Result<Vec<(i64, Vec<u8>)>> {
        let mut st = self.conn().prepare_cached(
            "SELECT o.id, r.raw FROM outbox o JOIN outbox_raw r ON r.outbox_id = o.id
             WHERE o.account_id = ? AND o.state = 'SUCCESS' AND o.sent_append = 'pending' ORDER BY o.id LIMIT ?",
        )?;
        let v = st
            .query_map(params![account_id, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    pub fn outbox_append_done(&mut self, id: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute("UPDATE outbox SET sent_append = 'done' WHERE id = ?", [id])?;
            Ok(())
        })
    }

    /// Accounts with sent messages waiting for their Sent-folder append.
    pub fn outbox_append_accounts(&self) -> Result<Vec<i64>> {
        let mut st = self.conn().prepare_cached(
            "SELECT DISTINCT account_id FROM outbox WHERE state = 'SUCCESS' AND sent_append = 'pending'",
        )?;
        let v = st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }
}

/// An entry's recipients as stored: a JSON array of one or more addresses.
fn recipients_of(id: i64, text: &str) -> std::result::Result<Vec<String>, String> {
    match serde_json::from_str::<Vec<String>>(text) {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(format!("outbox entry {id} has no recipients")),
        Err(e) => Err(format!("outbox entry {id}: its recipients are not a JSON array of addresses: {e}")),
    }
}

/// A malformed column, as the error that names its row.
fn bad_row(col: usize, why: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, why.into())
}

/// Claims one due entry by id, marked `sending` or not (see `Claim`).
fn claim_one(tx: &rusqlite::Transaction, claim: Claim, sending: bool, now: i64) -> Result<Option<Claimed>> {
    let Claim { id, secondary, lease } = claim;
    // account, message id, sender, recipients, message, attempts, created
    type Row = (i64, String, String, String, Vec<u8>, i64, i64);
    let row: Option<Row> = tx
        .prepare_cached(
            "SELECT o.account_id, o.message_id, o.mail_from, o.recipients, r.raw, o.attempts, o.created
     FROM outbox o JOIN outbox_raw r ON r.outbox_id = o.id
     WHERE o.id = ? AND o.state IN ('PENDING','RETRY') AND o.secondary = ? AND o.next_attempt <= ?",
        )?
        .query_row(params![id, secondary, now], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })
        .optional()?;
    let Some((account_id, message_id, mail_from, rcpts, raw, attempts, created)) = row else {
        return Ok(None);
    };
    let recipients = match recipients_of(id, &rcpts) {
        Ok(r) => r,
        Err(why) => {
            // An application's own INSERT can put anything there: the entry ends with the
            // reason, it is never sent to nobody.
            tx.prepare_cached("UPDATE outbox SET state = 'ERROR', end_time = ?, error = ? WHERE id = ?")?
                .execute(params![now, why, id])?;
            return Ok(None);
        }
    };
    let token = token();
    tx.prepare_cached(
        "UPDATE outbox SET state = 'PROCESSING', start_time = ?, end_time = NULL, lease_expire_time = ?,
            lease_token = ?, attempts = attempts + 1, sending = ? WHERE id = ?",
    )?
    .execute(params![now, now + lease, token, sending, id])?;
    Ok(Some(Claimed {
        id,
        account_id,
        message_id,
        mail_from,
        recipients,
        raw,
        token,
        attempts: attempts + 1,
        created,
        sending,
    }))
}

/// The fenced update of one claimed entry's delivery record to the state the retry rule
/// (`retry::outbox_next`) gives it.
fn finish_one(
    tx: &rusqlite::Transaction,
    c: &Claimed,
    outcome: &SendOutcome,
    now: i64,
    p: &SendPolicy,
) -> Result<bool> {
    const FENCED: &str = "WHERE id = ? AND lease_token = ? AND state = 'PROCESSING'";
    let info = match outcome {
        SendOutcome::Success { info } | SendOutcome::Permanent { info, .. } => Some(json(info)?),
        SendOutcome::Unknown { .. } | SendOutcome::Temporary { .. } => None,
    };
    let n = match retry::outbox_next(p, outcome.end(), c.attempts, c.created, now) {
        OutboxNext::Success { pending_due } => {
            let n = tx.prepare_cached(&format!(
                "UPDATE outbox SET state = 'SUCCESS', end_time = ?, error = NULL, info = ?, lease_token = NULL {FENCED}"
            ))?
            .execute(params![now, info, c.id, c.token])?;
            if let (1, Some(due), SendOutcome::Success { info }) = (n, pending_due, outcome) {
                tx.execute(
                    "INSERT INTO outbox (account_id, created, message_id, mail_from, recipients, raw, next_attempt, parent_id)
                     SELECT o.account_id, ?, o.message_id, o.mail_from, ?, r.raw, ?, o.id
                     FROM outbox o JOIN outbox_raw r ON r.outbox_id = o.id WHERE o.id = ?",
                    params![now, json(&info.pending)?, due, c.id],
                )?;
            }
            n
        }
        // A refusal keeps its delivery record; an unknown outcome or an entry given up keeps
        // the record of its last attempt that had one.
        OutboxNext::Error { error } => tx
            .prepare_cached(&format!(
                "UPDATE outbox SET state = 'ERROR', end_time = ?, error = ?, info = COALESCE(?, info),
                    lease_token = NULL {FENCED}"
            ))?
            .execute(params![now, error, info, c.id, c.token])?,
        OutboxNext::Retry { next_attempt, secondary, error } => tx
            .prepare_cached(&format!(
                "UPDATE outbox SET state = 'PENDING', error = ?, next_attempt = ?, lease_token = NULL,
                    lease_expire_time = NULL, secondary = ? {FENCED}"
            ))?
            .execute(params![error, next_attempt, secondary, c.id, c.token])?,
    };
    Ok(n == 1)
}

/// A value as the JSON text stored for it.
fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Invalid(format!("cannot write a delivery record as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims up to `limit` due entries, oldest first, as a sender does one by one.
    fn claim(s: &mut Store, account: i64, secondary: bool, now: i64, lease: i64, limit: usize) -> Vec<Claimed> {
        let ids = s.outbox_due_ids(account, secondary, now, limit).unwrap();
        ids.into_iter().filter_map(|id| s.outbox_claim_one(id, secondary, now, lease).unwrap()).collect()
    }

    fn store() -> (tempfile::TempDir, Store, i64) {
        let dir = tempfile::tempdir().unwrap();
        let (s, a) = crate::test_store(dir.path());
        (dir, s, a)
    }

    #[test]
    fn a_malformed_row_ends_in_error_naming_it_and_is_never_sent_to_nobody() {
        let (dir, mut s, a) = store();
        let app = rusqlite::Connection::open(dir.path().join("s.sqlite")).unwrap();
        let cases = [
            ("not JSON", "b@x.test", "its recipients are not a JSON array of addresses"),
            ("numbers", "[1, 2]", "its recipients are not a JSON array of addresses"),
            ("empty", "[]", "has no recipients"),
        ];
        for (name, rcpts, want) in cases {
            app.execute(
                "INSERT INTO outbox (account_id, created, message_id, mail_from, recipients, raw)
                 VALUES (?, 100, '<m@x.test>', 'u@x.test', ?, CAST('Subject: x' AS BLOB))",
                params![a, rcpts],
            )
            .unwrap();
            let id = app.last_insert_rowid();
            assert!(claim(&mut s, a, false, 200, 60, 10).is_empty(), "{name}: not claimed");
            let (state, error): (String, String) = app
                .query_row("SELECT state, error FROM outbox WHERE id = ?", [id], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            assert_eq!(state, "ERROR", "{name}");
            assert!(error.contains(&format!("outbox entry {id}")) && error.contains(want), "{name}: {error}");
            let shown = s.outbox_record(id).unwrap_err().to_string();
            assert!(shown.contains(&format!("outbox entry {id}")), "{name}: {shown}");
            app.execute("DELETE FROM outbox WHERE id = ?", [id]).unwrap();
        }
        // a delivery record that is not JSON is an error naming the entry, not "no record"
        let id =
            s.outbox_add(a, "<ok@x.test>", "u@x.test", &["b@x.test".into()], b"Subject: y\r\n\r\n", false, 1).unwrap();
        app.execute("UPDATE outbox SET info = '{broken' WHERE id = ?", [id]).unwrap();
        let shown = s.outbox_record(id).unwrap_err().to_string();
        assert!(shown.contains(&format!("outbox entry {id}: its delivery record is not valid JSON")), "{shown}");
    }

    #[test]
    fn an_application_insert_is_claimed_with_its_message_kept_apart_from_the_record() {
        let (dir, mut s, a) = store();
        // what the README tells applications to run, from their own connection
        let app = rusqlite::Connection::open(dir.path().join("s.sqlite")).unwrap();
        app.execute(
            "INSERT INTO outbox (account_id, created, message_id, mail_from, recipients, raw)
             VALUES (?, 100, '<app@x.test>', 'u@x.test', '[\"b@x.test\"]', CAST(? AS BLOB))",
            params![a, b"Subject: hi\r\n\r\nbody\r\n".as_slice()],
        )
        .unwrap();
        let id = app.last_insert_rowid();
        // the record's row holds no message: state changes rewrite a small row
        let in_row: Option<Vec<u8>> = app.query_row("SELECT raw FROM outbox WHERE id = ?", [id], |r| r.get(0)).unwrap();
        assert_eq!(in_row, None);
        let c = claim(&mut s, a, false, 200, 60, 10).pop().expect("claimed");
        assert_eq!((c.id, c.raw.as_slice()), (id, &b"Subject: hi\r\n\r\nbody\r\n"[..]));
        // a row without a message is refused, as the NOT NULL column refused it before
        let e = app
            .execute(
                "INSERT INTO outbox (account_id, created, message_id, mail_from, recipients) VALUES (?, 1, 'm', 'f', '[]')",
                [a],
            )
            .unwrap_err();
        assert!(e.to_string().contains("outbox.raw: the message is required"), "{e}");
        // deleting the entry deletes its message
        s.conn().execute("DELETE FROM outbox WHERE id = ?", [id]).unwrap();
        let left: i64 = app.query_row("SELECT COUNT(*) FROM outbox_raw", [], |r| r.get(0)).unwrap();
        assert_eq!(left, 0);
    }

    /// `n` one-recipient entries of account `a`, queued at time 100.
    fn queue(s: &mut Store, a: i64, n: usize) -> Vec<i64> {
        (0..n)
            .map(|i| s.outbox_add(a, &format!("m{i}@x"), "u@x.test", &["b@x.test".into()], b"raw", false, 100).unwrap())
            .collect()
    }

    /// The counts the triggers keep, against a count of the rows.
    fn assert_counts_agree(s: &Store) {
        let mut st = s.conn().prepare("SELECT state, COUNT(*) FROM outbox GROUP BY state ORDER BY state").unwrap();
        let counted: Vec<(String, i64)> =
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<rusqlite::Result<_>>().unwrap();
        assert_eq!(s.outbox_depths().unwrap(), counted);
    }

    #[test]
    fn the_send_path_and_the_counts_never_scan_the_sent_history() {
        let (_d, s, _a) = store();
        let queries = [
            "SELECT id FROM outbox WHERE account_id = 1 AND state IN ('PENDING','RETRY') AND secondary = 0
             AND next_attempt <= 5 ORDER BY id LIMIT 10",
            "SELECT DISTINCT account_id FROM outbox WHERE state IN ('PENDING','RETRY') AND secondary = 0 AND next_attempt <= 5",
            "SELECT id, sending FROM outbox WHERE state = 'PROCESSING' AND lease_expire_time < 5",
            "SELECT DISTINCT account_id FROM outbox WHERE state = 'SUCCESS' AND sent_append = 'pending'",
        ];
        for q in queries.iter().chain(&DEPTHS) {
            let plan: Vec<String> = s
                .conn()
                .prepare(&format!("EXPLAIN QUERY PLAN {q}"))
                .unwrap()
                .query_map([], |r| r.get(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(
                plan.contains("outbox_total") || plan.contains("USING") && plan.contains("INDEX outbox_"),
                "{q}: {plan}"
            );
        }
    }

    #[test]
    fn counts_by_state_follow_every_change_made_through_the_store_or_by_hand() {
        let (_d, mut s, a) = store();
        let ids = queue(&mut s, a, 4);
        assert_eq!(s.outbox_depths().unwrap(), vec![("PENDING".to_owned(), 4)]);
        let c0 = s.outbox_claim_one(ids[0], false, 100, 30).unwrap().unwrap();
        let c1 = s.outbox_claim_one(ids[1], false, 100, 30).unwrap().unwrap();
        assert_counts_agree(&s);
        s.outbox_finish(&c0, &SendOutcome::Success { info: info(&["b@x.test"], &["c@x.test"]) }, 101, &P).unwrap();
        s.outbox_finish(&c1, &SendOutcome::Permanent { error: "550".into(), info: info(&[], &[]) }, 101, &P).unwrap();
        s.outbox_retry(ids[1], 102).unwrap();
        s.outbox_claim_one(ids[2], false, 100, 30).unwrap().unwrap();
        s.outbox_expire_leases(200).unwrap();
        assert_counts_agree(&s);
        // an application's own writes, as the README allows
        s.conn().execute("UPDATE outbox SET state = 'RETRY' WHERE id = ?", [ids[3]]).unwrap();
        s.conn().execute("DELETE FROM outbox WHERE id = ?", [ids[3]]).unwrap();
        assert_counts_agree(&s);
        let depths = s.outbox_depths().unwrap();
        assert_eq!(depths.iter().map(|d| d.1).sum::<i64>(), 4, "{depths:?}"); // 3 left and the child
    }

    const P: SendPolicy =
        SendPolicy { backoff: backproc_types::Backoff { base: 10, max: 100 }, secondary_after: 5, max_age: 1000 };

    fn info(accepted: &[&str], pending: &[&str]) -> DeliveryInfo {
        DeliveryInfo {
            message_id: "m@x".into(),
            accepted: accepted.iter().map(|s| s.to_string()).collect(),
            pending: pending.iter().map(|s| s.to_string()).collect(),
            ..DeliveryInfo::default()
        }
    }

    #[test]
    fn due_ids_claim_nothing_and_claim_one_takes_an_entry_once() {
        let (_d, mut s, a) = store();
        let ids = queue(&mut s, a, 3);
        assert_eq!(s.outbox_due_ids(a, false, 100, 2).unwrap(), ids[..2].to_vec(), "oldest first, limited");
        assert!(s.outbox_records(None, Some("PROCESSING")).unwrap().is_empty(), "listing claims nothing");
        let c = s.outbox_claim_one(ids[1], false, 100, 30).unwrap().expect("due");
        assert_eq!((c.id, c.attempts, c.raw.as_slice()), (ids[1], 1, &b"raw"[..]));
        assert_eq!(s.outbox_record(ids[1]).unwrap().lease_expire_time, Some(130));
        assert!(s.outbox_claim_one(ids[1], false, 100, 30).unwrap().is_none(), "claimed once only");
        assert!(s.outbox_claim_one(ids[0], true, 100, 30).unwrap().is_none(), "other lane");
        assert_eq!(s.outbox_due_ids(a, false, 100, 10).unwrap(), vec![ids[0], ids[2]]);
    }

    #[test]
    fn a_worker_that_lost_its_lease_cannot_overwrite_the_final_state() {
        let (_d, mut s, a) = store();
        let id = s.outbox_add(a, "m@x", "u@x.test", &["b@x.test".into()], b"raw", false, 100).unwrap();
        let c = claim(&mut s, a, false, 100, 30, 10).pop().unwrap();
        assert_eq!(s.outbox_record(id).unwrap().state, "PROCESSING");
        assert_eq!(s.outbox_record(id).unwrap().lease_expire_time, Some(130));
        // frozen past the lease: the expiry makes it ERROR (outcome unknown)
        assert_eq!(s.outbox_expire_leases(129).unwrap(), Expired::default());
        assert_eq!(s.outbox_expire_leases(131).unwrap(), Expired { unknown: vec![id], returned: vec![] });
        // the late write changes nothing
        assert!(!s.outbox_finish(&c, &SendOutcome::Success { info: info(&["b@x.test"], &[]) }, 140, &P).unwrap());
        let r = s.outbox_record(id).unwrap();
        assert_eq!(r.state, "ERROR");
        assert!(r.error.unwrap().starts_with("delivery outcome unknown"));
        assert!(r.info.is_none());
        // never picked up again automatically
        assert!(claim(&mut s, a, false, 10_000, 30, 10).is_empty());
        // until retried on purpose; the retry counts one more attempt
        s.outbox_retry(id, 200).unwrap();
        let c2 = claim(&mut s, a, false, 200, 30, 10).pop().unwrap();
        assert_eq!(c2.attempts, 2);
        assert!(!s.outbox_finish(&c, &SendOutcome::Temporary { error: "x".into() }, 201, &P).unwrap(), "old token");
        assert!(s.outbox_finish(&c2, &SendOutcome::Success { info: info(&["b@x.test"], &[]) }, 202, &P).unwrap());
        assert_eq!(s.outbox_record(id).unwrap().state, "SUCCESS");
    }

    #[test]
    fn an_entry_claimed_ahead_goes_back_to_the_queue_at_expiry_unless_marked_sending() {
        let (_d, mut s, a) = store();
        let ids = queue(&mut s, a, 3);
        let ahead = |id| Some(Claim { id, secondary: false, lease: 30 });
        let c0 = s.outbox_claim_one(ids[0], false, 100, 30).unwrap().unwrap();
        assert!(c0.sending && s.outbox_record(ids[0]).unwrap().sending);
        // the step before c0's message goes out claims the next entry ahead
        let step = s.outbox_step(&[], 100, &P, Some(&c0), ahead(ids[1])).unwrap();
        let c1 = step.claimed.unwrap();
        assert!(step.sending && !c1.sending);
        let r1 = s.outbox_record(ids[1]).unwrap();
        assert_eq!((r1.state.as_str(), r1.sending, r1.attempts), ("PROCESSING", false, 1));
        // the next step records c0, marks c1 sending and claims the third ahead
        let ok = SendOutcome::Success { info: info(&["b@x.test"], &[]) };
        let step = s.outbox_step(&[(&c0, &ok)], 101, &P, Some(&c1), ahead(ids[2])).unwrap();
        assert_eq!((step.held, step.sending), (vec![true], true));
        assert!(s.outbox_record(ids[1]).unwrap().sending);
        // a kill now: c1 may have gone out, the third never did
        let e = s.outbox_expire_leases(132).unwrap();
        assert_eq!(e, Expired { unknown: vec![ids[1]], returned: vec![ids[2]] });
        let r2 = s.outbox_record(ids[2]).unwrap();
        assert_eq!((r2.state.as_str(), r2.attempts, r2.lease_expire_time), ("PENDING", 0, None));
        assert_eq!(s.outbox_due_ids(a, false, 132, 10).unwrap(), vec![ids[2]], "due again at once");
        // a sender that lost an ahead claim's lease must not send its message
        let stale = step.claimed.unwrap();
        let again = s.outbox_step(&[], 133, &P, Some(&stale), None).unwrap();
        assert!(!again.sending);
        assert!(!s.outbox_record(ids[2]).unwrap().sending);
        // and the entry is claimed and sent as any other
        let c2 = s.outbox_claim_one(ids[2], false, 133, 30).unwrap().unwrap();
        assert!(s.outbox_finish(&c2, &ok, 134, &P).unwrap());
        let r2 = s.outbox_record(ids[2]).unwrap();
        assert_eq!((r2.state.as_str(), r2.attempts), ("SUCCESS", 1));
    }

    #[test]
    fn temporary_failures_back_off_then_go_secondary_then_error_at_max_age() {
        let (_d, mut s, a) = store();
        const P2: SendPolicy = SendPolicy { max_age: 1100, ..P };
        let id = s.outbox_add(a, "m@x", "u@x.test", &["b@x.test".into()], b"raw", false, 0).unwrap();
        let mut now = 0;
        for attempt in 1..=6 {
            let c = claim(&mut s, a, false, now, 30, 10).pop().expect("due");
            assert!(s.outbox_finish(&c, &SendOutcome::Temporary { error: "450 later".into() }, now, &P2).unwrap());
            let r = s.outbox_record(id).unwrap();
            assert_eq!((r.state.as_str(), r.attempts), ("PENDING", attempt));
            assert_eq!(r.secondary, attempt > 5, "attempt {attempt}");
            // not due before its back-off
            assert!(claim(&mut s, a, r.secondary, now + 1, 30, 10).is_empty());
            now += 200;
        }
        assert!(claim(&mut s, a, false, now, 30, 10).is_empty(), "secondary entries leave the primary lane");
        let c = claim(&mut s, a, true, 1200, 30, 10).pop().unwrap();
        assert!(s.outbox_finish(&c, &SendOutcome::Temporary { error: "450 later".into() }, 1200, &P2).unwrap());
        let r = s.outbox_record(id).unwrap();
        assert_eq!(r.state, "ERROR");
        assert!(r.error.unwrap().contains("450 later"));
    }

    #[test]
    fn pending_recipients_after_a_partial_success_are_retried_alone() {
        let (_d, mut s, a) = store();
        let rcpts: Vec<String> = ["a@x.test", "b@x.test", "c@x.test"].iter().map(|s| s.to_string()).collect();
        let id = s.outbox_add(a, "m@x", "u@x.test", &rcpts, b"raw", true, 0).unwrap();
        let c = claim(&mut s, a, false, 0, 30, 10).pop().unwrap();
        let mut i = info(&["a@x.test"], &["c@x.test"]);
        i.rejected = vec!["b@x.test".into()];
        assert!(s.outbox_finish(&c, &SendOutcome::Success { info: i }, 1, &P).unwrap());
        let parent = s.outbox_record(id).unwrap();
        assert_eq!(parent.state, "SUCCESS");
        let child = s.outbox_records(None, Some("PENDING")).unwrap().pop().unwrap();
        assert_eq!(child.parent_id, Some(id));
        assert_eq!(child.recipients, vec!["c@x.test".to_string()]);
        assert_eq!(child.message_id, "m@x");
        // only the parent is appended to Sent
        assert_eq!(s.outbox_pending_appends(a, 10).unwrap().len(), 1);
    }
}
