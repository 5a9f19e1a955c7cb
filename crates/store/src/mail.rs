//! Folders, messages and the receive queue: what the sync and receive jobs read and write.

use rusqlite::{OptionalExtension, params};

use crate::{Error, Result, Store};

/// A folder as `folder list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FolderInfo {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub display_name: String,
    pub special_use: Option<SpecialUse>,
    pub priority: Priority,
    pub messages: i64,
    pub last_seen_uid: i64,
    pub uidvalidity: Option<i64>,
    pub highest_modseq: Option<i64>,
    pub last_recent_sync: Option<i64>,
    pub last_full_sync: Option<i64>,
    pub gone: bool,
    /// Why the folder cannot be synced (a name LIST gave that cannot be used), if so.
    pub unusable: Option<String>,
}

impl Store {
    pub fn folders(&self, account: Option<i64>) -> Result<Vec<FolderInfo>> {
        let mut st = self.conn().prepare(
            "SELECT f.id, f.account_id, f.name, f.display_name, f.special_use, f.priority,
                    (SELECT COUNT(*) FROM messages m WHERE m.folder_id = f.id AND m.deletion_synced IS NULL),
                    f.last_seen_uid, f.uidvalidity, f.highest_modseq, f.last_recent_sync, f.last_full_sync, f.gone,
                    f.unusable
             FROM folders f WHERE (?1 IS NULL OR f.account_id = ?1) ORDER BY f.account_id, f.id",
        )?;
        let v = st
            .query_map([account], |r| {
                Ok(FolderInfo {
                    id: r.get(0)?,
                    account_id: r.get(1)?,
                    name: r.get(2)?,
                    display_name: r.get(3)?,
                    special_use: r.get(4)?,
                    priority: r.get(5)?,
                    messages: r.get(6)?,
                    last_seen_uid: r.get(7)?,
                    uidvalidity: r.get(8)?,
                    highest_modseq: r.get(9)?,
                    last_recent_sync: r.get(10)?,
                    last_full_sync: r.get(11)?,
                    gone: r.get(12)?,
                    unusable: r.get(13)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    pub fn set_folder_priority(&mut self, id: i64, priority: Priority) -> Result<()> {
        let n =
            self.write(|tx| Ok(tx.execute("UPDATE folders SET priority = ? WHERE id = ?", params![priority, id])?))?;
        if n == 0 {
            return Err(Error::NotFound { what: "folder", id: id.to_string() });
        }
        Ok(())
    }

    pub fn folder_account(&self, id: i64) -> Result<i64> {
        self.conn()
            .query_row("SELECT account_id FROM folders WHERE id = ?", [id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| Error::NotFound { what: "folder", id: id.to_string() })
    }
}

use backproc_types::retry::{self, Queue};
pub use backproc_types::{Backoff, Flags};
pub use backproc_types::{Priority, SpecialUse};

/// Reads a message's flags from the columns selected in the order seen, answered, flagged,
/// draft, deleted, keywords, starting at column `at`.
pub(crate) fn flags_at(r: &rusqlite::Row, at: usize) -> rusqlite::Result<Flags> {
    let mut f = Flags::default();
    (f.seen, f.answered, f.flagged, f.draft, f.deleted) =
        (r.get(at)?, r.get(at + 1)?, r.get(at + 2)?, r.get(at + 3)?, r.get(at + 4)?);
    f.set_keywords_text(r.get::<_, Option<String>>(at + 5)?.as_deref());
    Ok(f)
}

/// The flag columns in the order `flags_at` reads them.
pub(crate) const FLAG_COLS: &str = "seen, answered, flagged, draft, deleted, keywords";

/// A folder as LIST reported it, to be recorded.
#[derive(Debug, Clone)]
pub struct FolderListing {
    pub name: String,
    pub display_name: String,
    pub delimiter: Option<String>,
    pub special_use: Option<SpecialUse>,
    /// Why the folder cannot be synced (a name we cannot use): it is kept visible, off.
    pub unusable: Option<String>,
}

/// A folder's sync watermarks and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderRow {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub special_use: Option<SpecialUse>,
    pub priority: Priority,
    pub uidvalidity: Option<i64>,
    pub last_seen_uid: i64,
    pub highest_modseq: Option<i64>,
    pub last_recent_sync: Option<i64>,
    pub last_full_sync: Option<i64>,
    pub gone: bool,
}

/// A stored message's sync state (what the sync plan needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgSyncRow {
    pub uid: i64,
    pub flags: Flags,
    /// The server's flags when the pending local change began (None: no change, or one
    /// made before the store kept it).
    pub base: Option<Flags>,
    pub flags_changed: Option<i64>,
    pub server_deleted: bool,
}

/// (uid, Message-ID, flags, raw size) of a stored message, as `folder_messages` gives it.
pub type StoredMessage = (i64, Option<String>, Flags, i64);

/// A UID to queue for Receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub uid: i64,
    pub size: i64,
    /// X-GM-MSGID, on Gmail: a message already stored under another label is not
    /// downloaded again.
    pub gm_msgid: Option<i64>,
}

/// The outcome of one sync run, applied in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncApply {
    /// UIDVALIDITY changed to this value: the folder's UIDs are void.
    pub reset: Option<i64>,
    /// UIDs to queue for Receive (new ones, and those a self-healing check found missing).
    pub queue: Vec<Queued>,
    /// (uid, flags, the `flags_changed` read by this sync): the message's flags become these
    /// and its pending change is settled, unless the user changed it again meanwhile.
    pub set_flags: Vec<(i64, Flags, Option<i64>)>,
    /// (uid, keywords the server cannot keep), recorded on the row.
    pub refused: Vec<(i64, Vec<String>)>,
    pub vanished: Vec<i64>,
    pub unqueue: Vec<i64>,
    pub watermarks: Option<(i64, Option<i64>)>,
    /// The server's UIDVALIDITY, recorded on a folder's first sync.
    pub uidvalidity: Option<i64>,
    /// Whether this was a full sync (sets last_full_sync as well as last_recent_sync).
    pub full: bool,
}

/// A receive queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueEntry {
    pub id: i64,
    pub uid: i64,
    pub size: i64,
    pub attempts: i64,
    pub gm_msgid: Option<i64>,
}

/// A receive queue entry as `receive_queue_entries` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRow {
    pub uid: i64,
    pub attempts: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    pub queue: Queue,
}

/// A downloaded message, parsed, ready to store.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    pub uid: i64,
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub cc: Option<String>,
    pub subject: Option<String>,
    pub date: Option<i64>,
    pub internal_date: Option<i64>,
    pub flags: Flags,
    pub attachments: i64,
    pub raw: Vec<u8>,
    pub gm_msgid: Option<i64>,
}

/// Which receive queue a job works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Primary,
    Secondary,
}

impl Lane {
    fn as_str(self) -> &'static str {
        match self {
            Lane::Primary => "primary",
            Lane::Secondary => "secondary",
        }
    }
}

/// What `receive_failed` did, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureMoves {
    pub to_secondary: usize,
    pub failed: usize,
}

pub use backproc_types::retry::ReceivePolicy;

/// The columns `sync_row` reads.
const SYNC_COLS: &str =
    "uid, seen, answered, flagged, draft, deleted, keywords, flags_base, flags_changed, server_deleted IS NOT NULL";

fn sync_row(r: &rusqlite::Row) -> rusqlite::Result<MsgSyncRow> {
    Ok(MsgSyncRow {
        uid: r.get(0)?,
        flags: flags_at(r, 1)?,
        base: r.get::<_, Option<String>>(7)?.map(|t| Flags::parse(&t)),
        flags_changed: r.get(8)?,
        server_deleted: r.get(9)?,
    })
}

const FOLDER_COLS: &str = "id, account_id, name, special_use, priority, uidvalidity, last_seen_uid, highest_modseq,
    last_recent_sync, last_full_sync, gone";

fn folder_row(r: &rusqlite::Row) -> rusqlite::Result<FolderRow> {
    Ok(FolderRow {
        id: r.get(0)?,
        account_id: r.get(1)?,
        name: r.get(2)?,
        special_use: r.get(3)?,
        priority: r.get(4)?,
        uidvalidity: r.get(5)?,
        last_seen_uid: r.get(6)?,
        highest_modseq: r.get(7)?,
        last_recent_sync: r.get(8)?,
        last_full_sync: r.get(9)?,
        gone: r.get(10)?,
    })
}

impl Store {
    /// Records what LIST returned: new folders appear (INBOX high priority, others low),
    /// known ones get their special use refreshed, missing ones are marked gone (their
    /// messages stay until Sync Delete decides). Returns the ids of new folders.
    pub fn record_folder_list(&mut self, account_id: i64, listed: &[FolderListing]) -> Result<Vec<i64>> {
        self.write(|tx| {
            let mut new = Vec::new();
            tx.execute("UPDATE folders SET gone = 1 WHERE account_id = ?", [account_id])?;
            // Prepared once per connection: every master start lists every account's folders.
            let mut update = tx.prepare_cached(
                "UPDATE folders SET gone = 0, display_name = ?, delimiter = ?, special_use = ?, unusable = ?
                 WHERE account_id = ? AND name = ?",
            )?;
            for f in listed {
                let updated = update
                    .execute(params![f.display_name, f.delimiter, f.special_use, f.unusable, account_id, f.name])?;
                if updated == 0 {
                    // A folder we cannot use is shown, never synced: priority off.
                    let priority = match (&f.unusable, f.special_use) {
                        (Some(_), _) => Priority::Off,
                        (None, Some(SpecialUse::Inbox)) => Priority::High,
                        _ => Priority::Low,
                    };
                    tx.execute(
                        "INSERT INTO folders (account_id, name, display_name, delimiter, special_use, priority, unusable)
                         VALUES (?,?,?,?,?,?,?)",
                        params![account_id, f.name, f.display_name, f.delimiter, f.special_use, priority, f.unusable],
                    )?;
                    if f.unusable.is_none() {
                        new.push(tx.last_insert_rowid());
                    }
                }
            }
            Ok(new)
        })
    }

    pub fn folder(&self, id: i64) -> Result<FolderRow> {
        self.conn()
            .query_row(&format!("SELECT {FOLDER_COLS} FROM folders WHERE id = ?"), [id], folder_row)
            .optional()?
            .ok_or_else(|| Error::NotFound { what: "folder", id: id.to_string() })
    }

    pub fn account_folders(&self, account_id: i64) -> Result<Vec<FolderRow>> {
        let mut st = self
            .conn()
            .prepare_cached(&format!("SELECT {FOLDER_COLS} FROM folders WHERE account_id = ? ORDER BY id"))?;
        let v = st.query_map([account_id], folder_row)?.collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// Stored messages (with a current UID) and queued UIDs of a folder.
    /// What a sync needs to know before it reads any row: messages stored with a UID, queued
    /// downloads, and whether a local flag change waits to be pushed. Every count comes from
    /// an index alone (`stored` includes rows already known gone on the server: telling those
    /// apart reads every row, see `folder_present_count`).
    pub fn folder_sync_summary(&self, folder_id: i64) -> Result<SyncSummary> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT (SELECT COUNT(*) FROM messages WHERE folder_id = ?1 AND uid > 0),
                    (SELECT COUNT(*) FROM receive_queue WHERE folder_id = ?1),
                    EXISTS (SELECT 1 FROM messages WHERE folder_id = ?1 AND flags_changed IS NOT NULL)",
            )?
            .query_row([folder_id], |r| {
                Ok(SyncSummary { stored: r.get(0)?, queued: r.get(1)?, local_pending: r.get(2)? })
            })?)
    }

    /// Stored messages the store believes the server still has (not marked gone there).
    pub fn folder_present_count(&self, folder_id: i64) -> Result<i64> {
        Ok(self
            .conn()
            .prepare_cached("SELECT COUNT(*) FROM messages WHERE folder_id = ? AND uid > 0 AND server_deleted IS NULL")?
            .query_row([folder_id], |r| r.get(0))?)
    }

    /// The account's folders as the scheduler sees them (`schedule_candidates`), with their
    /// names: a sync asks the server about all those due at the same time in one write.
    /// (name, last seen UID, schedule row) of each.
    pub fn account_sched_folders(&self, account: i64, now: i64) -> Result<Vec<(String, i64, SchedFolder)>> {
        let mut st = self.conn().prepare_cached(
            "SELECT f.name, f.last_seen_uid, a.id, f.id, f.priority, f.last_recent_sync, f.last_full_sync,
                    f.sync_requested, COALESCE(u.session_expires > ?2, 0),
                    (a.retry_after IS NULL OR a.retry_after <= ?2)
             FROM folders f JOIN accounts a ON a.id = f.account_id JOIN users u ON u.id = a.owner_id
             WHERE f.account_id = ?1 AND f.gone = 0 ORDER BY f.id",
        )?;
        let v = st
            .query_map(params![account, now], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    SchedFolder {
                        account_id: r.get(2)?,
                        folder_id: r.get(3)?,
                        priority: r.get(4)?,
                        last_recent_sync: r.get(5)?,
                        last_full_sync: r.get(6)?,
                        sync_requested: r.get(7)?,
                        logged_in: r.get(8)?,
                        account_ready: r.get(9)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    pub fn folder_sync_rows(&self, folder_id: i64) -> Result<(Vec<MsgSyncRow>, Vec<i64>)> {
        let mut st = self.conn().prepare_cached(&format!(
            "SELECT {SYNC_COLS} FROM messages WHERE folder_id = ? AND uid > 0 ORDER BY uid"
        ))?;
        let msgs = st.query_map([folder_id], sync_row)?.collect::<rusqlite::Result<_>>()?;
        let mut st = self.conn().prepare_cached("SELECT uid FROM receive_queue WHERE folder_id = ? ORDER BY uid")?;
        let queued = st.query_map([folder_id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        Ok((msgs, queued))
    }

    /// The sync rows of `uids` (those stored) and of every message with a local flag change
    /// waiting, sorted by UID: the partial view a flag pass needs when the server reported
    /// only what changed and nothing can have been expunged (`imap::plan` takes it with
    /// `present` = these UIDs), instead of every row of the folder.
    pub fn folder_sync_rows_of(&self, folder_id: i64, uids: impl IntoIterator<Item = i64>) -> Result<Vec<MsgSyncRow>> {
        const COLS: &str = SYNC_COLS;
        let row = sync_row;
        // Through the partial index of pending changes; a `uid > 0` term here would make
        // SQLite walk the (folder_id, uid) index over the whole folder instead.
        let mut out: Vec<MsgSyncRow> = self
            .conn()
            .prepare_cached(&format!("SELECT {COLS} FROM messages WHERE folder_id = ? AND flags_changed IS NOT NULL"))?
            .query_map([folder_id], row)?
            .filter(|r| r.as_ref().map_or(true, |r| r.uid > 0))
            .collect::<rusqlite::Result<_>>()?;
        // UIDs close together are read as one range of the (folder_id, uid) index, then
        // filtered: one index walk instead of one lookup each (500 changed flags in a row:
        // 0.8 ms instead of 2.8 ms from a cold connection).
        const GAP: i64 = 32;
        let mut wanted: Vec<i64> = uids.into_iter().filter(|u| *u > 0).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut range = self.conn().prepare_cached(&format!(
            "SELECT {COLS} FROM messages WHERE folder_id = ? AND uid BETWEEN ? AND ? ORDER BY uid"
        ))?;
        let mut i = 0;
        while i < wanted.len() {
            let mut j = i;
            while j + 1 < wanted.len() && wanted[j + 1] - wanted[j] <= GAP {
                j += 1;
            }
            let run = &wanted[i..=j];
            for r in range.query_map(params![folder_id, run[0], run[run.len() - 1]], row)? {
                let r = r?;
                if run.binary_search(&r.uid).is_ok() {
                    out.push(r);
                }
            }
            i = j + 1;
        }
        out.sort_by_key(|r| r.uid);
        out.dedup_by_key(|r| r.uid);
        Ok(out)
    }

    /// Stored messages whose UID is one of `uids` (sorted: the rows a QRESYNC VANISHED names),
    /// and only those: `folder_sync_rows_of` adds every row with a pending local change, which
    /// a count of vanished rows must not include (each one made the sync's count check fail
    /// and read the folder's whole UID set).
    pub fn folder_rows_with_uids(&self, folder_id: i64, uids: &[i64]) -> Result<Vec<MsgSyncRow>> {
        self.folder_sync_rows_of(folder_id, uids.iter().copied()).map(|mut v| {
            v.retain(|r| uids.binary_search(&r.uid).is_ok());
            v
        })
    }

    /// Applies one sync run. The watermarks move in the same transaction as the queue
    /// entries and flags they cover, so a crash never leaves the store believing it has
    /// seen what it has not.
    pub fn apply_sync(&mut self, folder_id: i64, a: &SyncApply, now: i64) -> Result<()> {
        self.write(|tx| {
            if let Some(uv) = a.reset {
                // Old UIDs are void. Rows are kept aside (negative uid) so Receive can re-match
                // them by Message-ID + size instead of downloading them again; whatever is
                // left unmatched is dropped once the folder's queue is empty.
                tx.execute("DELETE FROM receive_queue WHERE folder_id = ?", [folder_id])?;
                tx.execute("UPDATE messages SET uid = -id WHERE folder_id = ? AND uid > 0", [folder_id])?;
                tx.execute(
                    "UPDATE folders SET uidvalidity = ?, last_seen_uid = 0, highest_modseq = NULL WHERE id = ?",
                    params![uv, folder_id],
                )?;
            }
            {
                let mut q = tx.prepare_cached(
                    "INSERT INTO receive_queue (folder_id, uid, size, queued, gm_msgid) VALUES (?,?,?,?,?)
                     ON CONFLICT (folder_id, uid) DO NOTHING",
                )?;
                for e in &a.queue {
                    q.execute(params![folder_id, e.uid, e.size, now, e.gm_msgid])?;
                }
                // `flags_changed IS ?`: a change the user made after this sync read the row
                // is never overwritten; the next sync takes it.
                let mut f = tx.prepare_cached(
                    "UPDATE messages SET seen = ?, answered = ?, flagged = ?, draft = ?, deleted = ?, keywords = ?,
                        flags_changed = NULL, flags_base = NULL
                     WHERE folder_id = ? AND uid = ? AND flags_changed IS ?",
                )?;
                for (uid, fl, read) in &a.set_flags {
                    f.execute(params![
                        fl.seen,
                        fl.answered,
                        fl.flagged,
                        fl.draft,
                        fl.deleted,
                        fl.keywords_text(),
                        folder_id,
                        uid,
                        read
                    ])?;
                }
                let mut r =
                    tx.prepare_cached("UPDATE messages SET keywords_refused = ? WHERE folder_id = ? AND uid = ?")?;
                for (uid, words) in &a.refused {
                    r.execute(params![(!words.is_empty()).then(|| words.join(" ")), folder_id, uid])?;
                }
                let mut v = tx.prepare_cached(
                    "UPDATE messages SET server_deleted = ? WHERE folder_id = ? AND uid = ? AND server_deleted IS NULL",
                )?;
                for uid in &a.vanished {
                    v.execute(params![now, folder_id, uid])?;
                }
                let mut u = tx.prepare_cached("DELETE FROM receive_queue WHERE folder_id = ? AND uid = ?")?;
                for uid in &a.unqueue {
                    u.execute(params![folder_id, uid])?;
                }
            }
            if let Some((last, modseq)) = a.watermarks
                && a.reset.is_none()
            {
                // never backwards, whatever the caller computed
                tx.execute(
                    "UPDATE folders SET uidvalidity = COALESCE(uidvalidity, ?3), last_seen_uid = MAX(last_seen_uid, ?1),
                        highest_modseq = ?2 WHERE id = ?4",
                    params![last, modseq, a.uidvalidity, folder_id],
                )?;
            }
            if a.full {
                tx.execute(
                    "UPDATE folders SET last_full_sync = ?, last_recent_sync = ?, sync_requested = NULL WHERE id = ?",
                    params![now, now, folder_id],
                )?;
            } else {
                tx.execute(
                    "UPDATE folders SET last_recent_sync = ?, sync_requested = NULL WHERE id = ?",
                    params![now, folder_id],
                )?;
            }
            Ok(())
        })
    }

    /// Due entries of a folder's queue, by UID, bounded by count and bytes (at least one).
    /// `after_uid` skips entries already handed to a writer that has not committed them yet.
    pub fn receive_batch(
        &self,
        folder_id: i64,
        lane: Lane,
        now: i64,
        after_uid: i64,
        max_count: usize,
        max_bytes: i64,
    ) -> Result<Vec<QueueEntry>> {
        let mut st = self.conn().prepare_cached(
            "SELECT id, uid, COALESCE(size, 0), attempts, gm_msgid FROM receive_queue
             WHERE folder_id = ? AND queue = ? AND next_attempt <= ? AND uid > ? ORDER BY uid LIMIT ?",
        )?;
        let rows = st.query_map(params![folder_id, lane.as_str(), now, after_uid, max_count as i64], |r| {
            Ok(QueueEntry { id: r.get(0)?, uid: r.get(1)?, size: r.get(2)?, attempts: r.get(3)?, gm_msgid: r.get(4)? })
        })?;
        let mut out = Vec::new();
        let mut bytes = 0i64;
        for r in rows {
            let e = r?;
            if !out.is_empty() && bytes + e.size > max_bytes {
                break;
            }
            bytes += e.size;
            out.push(e);
        }
        Ok(out)
    }

    /// Folders with due entries in a queue lane.
    pub fn folders_with_due_receive(&self, lane: Lane, now: i64) -> Result<Vec<(i64, i64)>> {
        let mut st = self.conn().prepare_cached(
            "SELECT DISTINCT f.account_id, q.folder_id FROM receive_queue q JOIN folders f ON f.id = q.folder_id
             WHERE q.queue = ? AND q.next_attempt <= ?",
        )?;
        let v = st
            .query_map(params![lane.as_str(), now], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// Stale rows (from before a UIDVALIDITY change) matching a message by Message-ID and
    /// size: re-keyed to the new UID instead of being downloaded again. Returns whether one
    /// matched (and the queue entry went with it).
    ///
    /// `flags`: the message's flags in the new generation of the folder, which the row takes
    /// (any pending local change of the old generation is settled: a reset's full sync would
    /// let the server win anyway). Without them the row would keep the old generation's flags
    /// for good: under CONDSTORE no later sync reports an unchanged message.
    pub fn rematch_stale(
        &mut self,
        folder_id: i64,
        uid: i64,
        message_id: &str,
        size: i64,
        flags: Option<&Flags>,
    ) -> Result<bool> {
        self.write(|tx| {
            let id: Option<i64> = tx
                .query_row(
                    "SELECT id FROM messages WHERE folder_id = ? AND uid < 0 AND message_id = ? AND size = ? LIMIT 1",
                    params![folder_id, message_id, size],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = id else { return Ok(false) };
            tx.execute("UPDATE messages SET uid = ? WHERE id = ?", params![uid, id])?;
            if let Some(f) = flags {
                // A local change still waiting is the user's: it is carried over onto the new
                // generation's flags (and pushed by the next full sync) rather than lost.
                let (pending, local, base): (Option<i64>, Flags, Option<String>) = tx.query_row(
                    &format!("SELECT flags_changed, {FLAG_COLS}, flags_base FROM messages WHERE id = ?"),
                    [id],
                    |r| Ok((r.get(0)?, flags_at(r, 1)?, r.get(7)?)),
                )?;
                let (now, base) = match (pending, base) {
                    (None, _) => (f.clone(), None),
                    (Some(_), Some(b)) => (Flags::merge(f, &Flags::parse(&b), &local), Some(f.to_string())),
                    // a change from before the store kept its base: the user's system flags,
                    // the server's keywords and the user's
                    (Some(_), None) => {
                        let mut n = f.system_only();
                        (n.seen, n.answered, n.flagged, n.draft, n.deleted) =
                            (local.seen, local.answered, local.flagged, local.draft, local.deleted);
                        for k in f.keywords().iter().chain(local.keywords()) {
                            n.add_keyword(k);
                        }
                        (n, Some(f.to_string()))
                    }
                };
                tx.execute(
                    "UPDATE messages SET seen = ?, answered = ?, flagged = ?, draft = ?, deleted = ?, keywords = ?,
                        flags_base = ?, flags_changed = CASE WHEN ? IS NULL THEN NULL ELSE flags_changed END
                     WHERE id = ?",
                    params![
                        now.seen,
                        now.answered,
                        now.flagged,
                        now.draft,
                        now.deleted,
                        now.keywords_text(),
                        base,
                        base,
                        id
                    ],
                )?;
            }
            tx.execute("DELETE FROM receive_queue WHERE folder_id = ? AND uid = ?", params![folder_id, uid])?;
            Ok(true)
        })
    }

    pub fn has_stale(&self, folder_id: i64) -> Result<bool> {
        Ok(self.conn().query_row(
            "SELECT EXISTS(SELECT 1 FROM messages WHERE folder_id = ? AND uid < 0)",
            [folder_id],
            |r| r.get(0),
        )?)
    }

    /// Drops stale rows nobody re-matched, once the folder's queue is empty.
    pub fn drop_stale_if_done(&mut self, folder_id: i64) -> Result<usize> {
        self.write(|tx| {
            let pending: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM receive_queue WHERE folder_id = ? AND queue != 'failed')",
                [folder_id],
                |r| r.get(0),
            )?;
            if pending {
                return Ok(0);
            }
            Ok(tx.execute("DELETE FROM messages WHERE folder_id = ? AND uid < 0", [folder_id])?)
        })
    }

    /// Stores downloaded messages and removes their queue entries, plus the entries of UIDs
    /// the server no longer has, in one transaction: a kill at any point leaves both or
    /// neither. Storing the same UID twice is one message.
    ///
    /// The bodies are appended to this connection's pack and synced before the transaction
    /// (packs.rs, invariant 1): a body whose row never commits is garbage for compaction, a
    /// row never points at bytes that are not on disk.
    pub fn store_received(&mut self, folder_id: i64, msgs: &[NewMessage], gone: &[i64]) -> Result<usize> {
        let mut refs = Vec::with_capacity(msgs.len());
        if !msgs.is_empty() {
            let w = self.pack_writer()?;
            let appended = (|| {
                w.begin()?;
                for m in msgs {
                    refs.push(w.append(&m.raw)?);
                }
                w.sync()
            })();
            appended.map_err(|e| self.packs_error(e))?;
        }
        self.write(|tx| {
            let mut ins = tx.prepare_cached(
                "INSERT INTO messages (folder_id, uid, message_id, from_addr, to_addr, cc_addr, subject, date,
                    internal_date, size, seen, answered, flagged, draft, deleted, keywords, attachments, gm_msgid)
                 VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                 ON CONFLICT (folder_id, uid) DO NOTHING",
            )?;
            let mut body =
                tx.prepare_cached("INSERT INTO message_bodies (message_id, pack, start, length) VALUES (?, ?, ?, ?)")?;
            let mut deq = tx.prepare_cached("DELETE FROM receive_queue WHERE folder_id = ? AND uid = ?")?;
            let mut stored = 0;
            for (m, (pack, start)) in msgs.iter().zip(&refs) {
                let n = ins.execute(params![
                    folder_id,
                    m.uid,
                    m.message_id,
                    m.from,
                    m.to,
                    m.cc,
                    m.subject,
                    m.date,
                    m.internal_date,
                    m.raw.len() as i64,
                    m.flags.seen,
                    m.flags.answered,
                    m.flags.flagged,
                    m.flags.draft,
                    m.flags.deleted,
                    m.flags.keywords_text(),
                    m.attachments,
                    m.gm_msgid
                ])?;
                if n == 1 {
                    body.execute(params![tx.last_insert_rowid(), pack, start, m.raw.len() as i64])?;
                    stored += 1;
                }
                deq.execute(params![folder_id, m.uid])?;
            }
            for uid in gone {
                deq.execute(params![folder_id, uid])?;
            }
            Ok(stored)
        })
    }

    /// The UIDs in a folder's receive queue.
    pub fn queued_uids(&self, folder_id: i64) -> Result<Vec<i64>> {
        let mut st = self.conn().prepare_cached("SELECT uid FROM receive_queue WHERE folder_id = ? ORDER BY uid")?;
        let v = st.query_map([folder_id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    #[cfg(any(test, feature = "test-support"))]
    /// A folder's receive queue entries, by UID: what failed downloads left.
    pub fn receive_queue_entries(&self, folder_id: i64) -> Result<Vec<QueueRow>> {
        let mut st = self.conn().prepare_cached(
            "SELECT uid, attempts, last_error, queue FROM receive_queue WHERE folder_id = ? ORDER BY uid",
        )?;
        let v = st
            .query_map([folder_id], |r| {
                Ok(QueueRow { uid: r.get(0)?, attempts: r.get(1)?, last_error: r.get(2)?, queue: r.get(3)? })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// Drops queue entries of UIDs the server no longer has (a receive batch asked for them
    /// and a UID SEARCH confirmed they are gone).
    pub fn unqueue(&mut self, folder_id: i64, uids: &[i64]) -> Result<()> {
        self.write(|tx| {
            let mut d = tx.prepare_cached("DELETE FROM receive_queue WHERE folder_id = ? AND uid = ?")?;
            for uid in uids {
                d.execute(params![folder_id, uid])?;
            }
            Ok(())
        })
    }

    /// Stores queued UIDs whose message the account already holds under another label
    /// (Gmail's X-GM-MSGID, one message in several label folders): a new row pointing at the
    /// body already in the packs, nothing downloaded. Returns the UIDs so stored; their queue
    /// entries go in the same transaction.
    pub fn link_known_bodies(&mut self, folder_id: i64, entries: &[(i64, i64)]) -> Result<Vec<i64>> {
        self.write(|tx| {
            let mut find = tx.prepare_cached(
                "SELECT m.id FROM messages m JOIN message_bodies b ON b.message_id = m.id
                 WHERE m.gm_msgid = ?2 AND m.folder_id IN
                     (SELECT id FROM folders WHERE account_id = (SELECT account_id FROM folders WHERE id = ?1))
                 LIMIT 1",
            )?;
            let mut copy = tx.prepare_cached(
                "INSERT INTO messages (folder_id, uid, message_id, from_addr, to_addr, cc_addr, subject, date,
                    internal_date, size, seen, answered, flagged, draft, deleted, keywords, attachments, gm_msgid)
                 SELECT ?1, ?2, message_id, from_addr, to_addr, cc_addr, subject, date, internal_date, size,
                    seen, answered, flagged, draft, deleted, keywords, attachments, gm_msgid
                 FROM messages WHERE id = ?3
                 ON CONFLICT (folder_id, uid) DO NOTHING",
            )?;
            let mut body = tx.prepare_cached(
                "INSERT INTO message_bodies (message_id, pack, start, length)
                 SELECT ?1, pack, start, length FROM message_bodies WHERE message_id = ?2",
            )?;
            let mut deq = tx.prepare_cached("DELETE FROM receive_queue WHERE folder_id = ? AND uid = ?")?;
            let mut done = Vec::new();
            for &(uid, gm) in entries {
                let Some(src): Option<i64> = find.query_row(params![folder_id, gm], |r| r.get(0)).optional()? else {
                    continue;
                };
                if copy.execute(params![folder_id, uid, src])? == 1 {
                    body.execute(params![tx.last_insert_rowid(), src])?;
                }
                deq.execute(params![folder_id, uid])?;
                done.push(uid);
            }
            Ok(done)
        })
    }

    /// Counts one failed attempt for each entry and records where it goes next
    /// (`retry::receive_failed`: past the limits, the secondary lane or failed).
    pub fn receive_failed(&mut self, ids: &[i64], error: &str, now: i64, p: &ReceivePolicy) -> Result<FailureMoves> {
        self.write(|tx| {
            let mut moves = FailureMoves::default();
            let mut get = tx.prepare_cached("SELECT attempts, queue FROM receive_queue WHERE id = ?")?;
            let mut upd = tx.prepare_cached(
                "UPDATE receive_queue SET attempts = ?, last_error = ?, next_attempt = ?, queue = ? WHERE id = ?",
            )?;
            for id in ids {
                let Some((attempts, queue)): Option<(i64, Queue)> =
                    get.query_row([id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?
                else {
                    continue;
                };
                let next = retry::receive_failed(p, attempts, now);
                match (queue, next.queue) {
                    (Queue::Primary, Queue::Secondary) => moves.to_secondary += 1,
                    (Queue::Primary | Queue::Secondary, Queue::Failed) => moves.failed += 1,
                    _ => {}
                }
                upd.execute(params![next.attempts, error, next.next_attempt, next.queue, id])?;
            }
            Ok(moves)
        })
    }

    /// Queue depths by lane: (primary, secondary, failed).
    pub fn receive_queue_depths(&self) -> Result<(i64, i64, i64)> {
        Ok(self.conn().query_row(
            "SELECT COALESCE(SUM(queue = 'primary'), 0), COALESCE(SUM(queue = 'secondary'), 0),
                    COALESCE(SUM(queue = 'failed'), 0) FROM receive_queue",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }

    /// The messages of a folder as the store has them (uid, Message-ID, flags, raw size):
    /// for tests and `mail list`.
    pub fn folder_messages(&self, folder_id: i64) -> Result<Vec<StoredMessage>> {
        let mut st = self.conn().prepare(&format!(
            "SELECT uid, message_id, {FLAG_COLS}, size FROM messages
             WHERE folder_id = ? AND deletion_synced IS NULL ORDER BY uid"
        ))?;
        let v = st
            .query_map([folder_id], |r| Ok((r.get(0)?, r.get(1)?, flags_at(r, 2)?, r.get(8)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    #[cfg(any(test, feature = "test-support"))]
    /// Raw bytes of the message with this UID in a folder.
    pub fn message_raw(&self, folder_id: i64, uid: i64) -> Result<Option<Vec<u8>>> {
        let id: Option<i64> = self
            .conn()
            .query_row("SELECT id FROM messages WHERE folder_id = ? AND uid = ?", params![folder_id, uid], |r| r.get(0))
            .optional()?;
        match id {
            Some(id) => self.body(id),
            None => Ok(None),
        }
    }
}

impl Store {
    /// Entries of a folder in a queue lane (due or not).
    pub fn receive_queue_len(&self, folder_id: i64, lane: Lane) -> Result<i64> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM receive_queue WHERE folder_id = ? AND queue = ?",
            params![folder_id, lane.as_str()],
            |r| r.get(0),
        )?)
    }
}

/// See `Store::folder_sync_summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncSummary {
    /// Messages with a current UID, those known gone on the server included.
    pub stored: i64,
    pub queued: i64,
    pub local_pending: bool,
}

/// One row of the scheduler's view: a folder with what decides when it syncs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchedFolder {
    pub account_id: i64,
    pub folder_id: Option<i64>,
    pub priority: Priority,
    pub last_recent_sync: Option<i64>,
    pub last_full_sync: Option<i64>,
    pub sync_requested: Option<i64>,
    /// The account's owner has a session that has not expired.
    pub logged_in: bool,
    /// Enabled and not backed off.
    pub account_ready: bool,
}

/// An enabled account as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedAccount {
    pub id: i64,
    /// Not backed off.
    pub ready: bool,
    pub imap_host: String,
}

/// The time limits below which a folder may be due (the scheduler applies the exact rules).
#[derive(Debug, Clone, Copy)]
pub struct DueCuts {
    /// High priority: last recent sync at or before this (the shorter recent interval).
    pub recent: i64,
    /// High priority: last full sync at or before this (the shorter full interval).
    pub full: i64,
    /// Low priority: last full sync before the latest daily start.
    pub low_start: i64,
}

impl Store {
    /// Every enabled account (one cheap row each).
    pub fn schedule_accounts(&self, now: i64) -> Result<Vec<SchedAccount>> {
        let mut st = self.conn().prepare_cached(
            "SELECT id, (retry_after IS NULL OR retry_after <= ?), imap_host FROM accounts WHERE enabled = 1 ORDER BY id",
        )?;
        let v = st
            .query_map([now], |r| Ok(SchedAccount { id: r.get(0)?, ready: r.get(1)?, imap_host: r.get(2)? }))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// Folders that may be due now: only those past a cut, found through indexes, so that a
    /// tick costs the same with 100 folders as with 100,000 (issue 4: under 50 ms).
    pub fn schedule_candidates(&self, now: i64, cuts: DueCuts) -> Result<Vec<SchedFolder>> {
        let mut st = self.conn().prepare_cached(
            "WITH c(id) AS (
                 SELECT id FROM folders WHERE priority = 'high' AND last_recent_sync <= ?2
                 UNION SELECT id FROM folders WHERE priority = 'high' AND last_full_sync <= ?3
                 UNION SELECT id FROM folders WHERE priority = 'high' AND last_full_sync IS NULL
                 UNION SELECT id FROM folders WHERE priority = 'low' AND last_full_sync IS NULL
                 UNION SELECT id FROM folders WHERE priority = 'low' AND last_full_sync < ?4
                 UNION SELECT id FROM folders WHERE sync_requested IS NOT NULL)
             SELECT a.id, f.id, f.priority, f.last_recent_sync, f.last_full_sync, f.sync_requested,
                    COALESCE(u.session_expires > ?1, 0), (a.retry_after IS NULL OR a.retry_after <= ?1)
             FROM c JOIN folders f ON f.id = c.id JOIN accounts a ON a.id = f.account_id
             JOIN users u ON u.id = a.owner_id
             WHERE a.enabled = 1 AND f.gone = 0 ORDER BY a.id, f.id",
        )?;
        let v = st
            .query_map(params![now, cuts.recent, cuts.full, cuts.low_start], |r| {
                Ok(SchedFolder {
                    account_id: r.get(0)?,
                    folder_id: r.get(1)?,
                    priority: r.get(2)?,
                    last_recent_sync: r.get(3)?,
                    last_full_sync: r.get(4)?,
                    sync_requested: r.get(5)?,
                    logged_in: r.get(6)?,
                    account_ready: r.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// Folders with deletion work for Sync Delete (through a partial index).
    pub fn folders_with_deletion_work(&self) -> Result<Vec<(i64, i64)>> {
        let mut st = self.conn().prepare_cached(
            "SELECT DISTINCT f.account_id, m.folder_id FROM messages m JOIN folders f ON f.id = m.folder_id
             WHERE m.deletion_synced IS NULL
               AND (m.local_deleted IS NOT NULL OR m.server_deleted IS NOT NULL OR m.move_to IS NOT NULL)
               AND m.uid > 0 AND f.gone = 0",
        )?;
        let v = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        Ok(v)
    }

    /// "Check mail now": makes folders due at the next tick.
    pub fn request_sync(&mut self, account: Option<i64>, folder: Option<i64>, now: i64) -> Result<usize> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE folders SET sync_requested = ?1
                 WHERE gone = 0 AND priority != 'off' AND (?2 IS NULL OR account_id = ?2) AND (?3 IS NULL OR id = ?3)",
                params![now, account, folder],
            )?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test store with one account and one folder "L".
    fn one_folder(dir: &std::path::Path) -> (Store, i64) {
        let (mut s, a) = crate::test_store(dir);
        let listed = [FolderListing {
            name: "L".into(),
            display_name: "L".into(),
            delimiter: None,
            special_use: None,
            unusable: None,
        }];
        s.record_folder_list(a, &listed).unwrap();
        let folder = s.account_folders(a).unwrap()[0].id;
        (s, folder)
    }

    fn msg(uid: i64, flags: &str) -> NewMessage {
        NewMessage {
            uid,
            message_id: Some(format!("m{uid}@x.test")),
            flags: Flags::parse(flags),
            raw: format!("Message-ID: <m{uid}@x.test>\r\n\r\nbody {uid}\r\n").into_bytes(),
            ..NewMessage::default()
        }
    }

    /// Keywords are stored; the first local change keeps the flags before it (the trigger,
    /// for our own UPDATE and an application's alike); a sync's write settles it, but never
    /// one made after the sync read the row.
    #[test]
    fn keywords_and_the_base_of_a_local_change() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, folder) = one_folder(dir.path());
        s.store_received(folder, &[msg(1, "\\Seen $Label1 NonJunk"), msg(2, "")], &[]).unwrap();
        let row =
            |s: &Store, uid: i64| s.folder_sync_rows(folder).unwrap().0.into_iter().find(|r| r.uid == uid).unwrap();
        assert_eq!(row(&s, 1).flags, Flags::parse("\\Seen $Label1 NonJunk"));
        assert_eq!(row(&s, 1).base, None);
        let id = s.message_id_by_uid(folder, 1).unwrap();
        let edit = crate::FlagEdit { seen: Some(false), remove: vec!["$label1".into()], ..Default::default() };
        s.mail_set_flags(id, &edit, 100).unwrap();
        s.mail_set_flags(id, &crate::FlagEdit { add: vec!["$Work".into()], ..Default::default() }, 101).unwrap();
        let r = row(&s, 1);
        assert_eq!(r.flags, Flags::parse("NonJunk $Work"));
        assert_eq!(r.base, Some(Flags::parse("\\Seen $Label1 NonJunk")), "the state before the first change");
        // an application's own UPDATE is remembered the same way
        s.conn()
            .execute("UPDATE messages SET flagged = 1, flags_changed = 200 WHERE folder_id = ? AND uid = 2", [folder])
            .unwrap();
        assert_eq!(row(&s, 2).base, Some(Flags::default()));
        // a sync that read flags_changed 101 settles message 1; one that read nothing for 2 does not
        let apply = SyncApply {
            set_flags: vec![(1, Flags::parse("NonJunk $Work"), Some(101)), (2, Flags::default(), None)],
            ..SyncApply::default()
        };
        s.apply_sync(folder, &apply, 300).unwrap();
        assert_eq!((row(&s, 1).flags_changed, row(&s, 1).base), (None, None));
        assert_eq!(row(&s, 2).flags_changed, Some(200), "a change made after the sync read the row is kept");
        assert!(row(&s, 2).flags.flagged);
        assert!(
            s.mail_set_flags(id, &crate::FlagEdit { add: vec!["two words".into()], ..Default::default() }, 400)
                .is_err()
        );
    }

    /// Gmail: a message under a second label is linked to the body already stored, and the
    /// queue entry goes; one not known is left for download.
    #[test]
    fn a_known_gmail_message_is_linked_not_downloaded() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, folder) = one_folder(dir.path());
        let first = NewMessage { gm_msgid: Some(77), ..msg(1, "\\Seen") };
        s.store_received(folder, std::slice::from_ref(&first), &[]).unwrap();
        let queue = |uid, gm| Queued { uid, size: 10, gm_msgid: gm };
        s.apply_sync(
            folder,
            &SyncApply { queue: vec![queue(5, Some(77)), queue(6, Some(78))], ..SyncApply::default() },
            1,
        )
        .unwrap();
        assert_eq!(s.link_known_bodies(folder, &[(5, 77), (6, 78)]).unwrap(), vec![5]);
        assert!(s.message_raw(folder, 5).unwrap() == Some(first.raw.clone()));
        assert_eq!(s.queued_uids(folder).unwrap(), vec![6]);
    }

    /// A folder LIST could not name usably is kept visible, off, and never scheduled new.
    #[test]
    fn an_unusable_folder_is_listed_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, a) = crate::test_store(dir.path());
        let l = |name: &str, unusable: Option<&str>| FolderListing {
            name: name.into(),
            display_name: name.into(),
            delimiter: None,
            special_use: None,
            unusable: unusable.map(str::to_owned),
        };
        let new = s.record_folder_list(a, &[l("INBOX", None), l("bad\\0name", Some("the name holds a NUL"))]).unwrap();
        assert_eq!(new.len(), 1, "only the usable folder is new work");
        let bad = s.folders(Some(a)).unwrap().into_iter().find(|f| f.name == "bad\\0name").unwrap();
        assert_eq!((bad.priority.as_str(), bad.unusable.as_deref()), ("off", Some("the name holds a NUL")));
    }

    /// After a UIDVALIDITY change a re-keyed row takes the message's flags of the new
    /// generation (and its old pending change is settled), not the ones it had before.
    #[test]
    fn a_rematched_row_takes_the_new_generations_flags() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, folder) = one_folder(dir.path());
        let raw = b"Message-ID: <m1@x.test>\r\nSubject: s\r\n\r\nbody\r\n".to_vec();
        let m = NewMessage {
            uid: 7,
            message_id: Some("m1@x.test".into()),
            flags: Flags::parse("\\Flagged $Label1"),
            raw: raw.clone(),
            ..NewMessage::default()
        };
        assert_eq!(s.store_received(folder, &[m], &[]).unwrap(), 1);
        s.apply_sync(folder, &SyncApply { reset: Some(2), ..SyncApply::default() }, 10).unwrap();
        let now = Flags::parse("\\Seen $Label3");
        assert!(s.rematch_stale(folder, 3, "m1@x.test", raw.len() as i64, Some(&now)).unwrap());
        let rows = s.folder_sync_rows(folder).unwrap().0;
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].uid, &rows[0].flags, rows[0].flags_changed), (3, &now, None));
        assert!(s.message_raw(folder, 3).unwrap() == Some(raw.clone()));

        // A local change waiting when the generation changed is carried over, not lost.
        let id = s.message_id_by_uid(folder, 3).unwrap();
        let edit = crate::FlagEdit { flagged: Some(true), add: vec!["$Mine".into()], ..Default::default() };
        s.mail_set_flags(id, &edit, 20).unwrap();
        s.apply_sync(folder, &SyncApply { reset: Some(4), ..SyncApply::default() }, 30).unwrap();
        let server = Flags::parse("$Label3 $Other");
        assert!(s.rematch_stale(folder, 9, "m1@x.test", raw.len() as i64, Some(&server)).unwrap());
        let row = s.folder_sync_rows(folder).unwrap().0.remove(0);
        assert_eq!(row.flags, Flags::parse("\\Flagged $Label3 $Other $Mine"), "the user's change on the new flags");
        assert_eq!(row.base, Some(server), "the base is the new generation's state");
        assert_eq!(row.flags_changed, Some(20), "still to be pushed");
    }

    /// The rows a VANISHED names, and not the rows with a pending local change beside them.
    #[test]
    fn rows_with_uids_are_only_those_uids() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, folder) = one_folder(dir.path());
        let msgs: Vec<NewMessage> = (1..=5)
            .map(|uid| NewMessage {
                uid,
                raw: format!("Subject: {uid}\r\n\r\nx\r\n").into_bytes(),
                ..NewMessage::default()
            })
            .collect();
        assert_eq!(s.store_received(folder, &msgs, &[]).unwrap(), 5);
        let changed: i64 = s
            .conn()
            .query_row("SELECT id FROM messages WHERE folder_id = ? AND uid = 2", [folder], |r| r.get(0))
            .unwrap();
        s.mail_set_flags(changed, &crate::FlagEdit { seen: Some(true), ..Default::default() }, 5).unwrap();
        let uids = |v: Vec<MsgSyncRow>| v.into_iter().map(|r| r.uid).collect::<Vec<_>>();
        assert_eq!(uids(s.folder_rows_with_uids(folder, &[3, 4]).unwrap()), [3, 4]);
        assert_eq!(uids(s.folder_rows_with_uids(folder, &[]).unwrap()), Vec::<i64>::new());
        assert_eq!(uids(s.folder_rows_with_uids(folder, &[2, 9]).unwrap()), [2]);
    }
}
