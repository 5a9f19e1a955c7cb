//! The sync plan: pure functions from (what the store has, what the server said) to what to
//! ask next and what to change. No I/O here; the engine gathers the inputs, asks, and applies
//! the output.
//!
//! Rules (RFC 3501 §2.3.1.1, RFC 7162):
//! - UIDs are only comparable under one UIDVALIDITY, and the UIDVALIDITY that counts is the
//!   one the SELECT or EXAMINE before a read reported: when it changes the folder is reset,
//!   and nothing of that run is read as a deletion on either side.
//! - A UID above the last seen UID is new: it is queued for Receive (never downloaded here).
//! - Flags: a local change made after the last full sync wins, but only for what the user
//!   changed: it is merged into the server's current state (`Flags::merge`) and pushed as the
//!   difference; a keyword another client set meanwhile survives. Otherwise the server's state
//!   wins and is copied here.
//! - A stored or queued UID the server no longer has has vanished there; queued ones simply
//!   leave the queue, stored ones are marked for Sync Delete.
//! - The store heals itself: a UID the server has at or below the watermark that the store
//!   neither holds nor has queued is queued again.
//! - The last seen UID and HIGHESTMODSEQ only move forward, and only by what this plan covers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use backproc_types::Flags;

/// The folder as the store knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalFolder {
    pub uidvalidity: Option<u32>,
    pub last_seen_uid: u32,
    pub highest_modseq: Option<u64>,
    pub last_full_sync: Option<i64>,
}

/// A stored message's sync state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMsg {
    pub uid: u32,
    pub flags: Flags,
    /// The flags as the server had them when the user first changed them here (None when
    /// no change waits, or a change from before the store kept it).
    pub base: Option<Flags>,
    /// Time of a local flag change not yet pushed.
    pub flags_changed: Option<i64>,
    /// Already known to be gone from the server.
    pub server_deleted: bool,
}

/// STATUS / SELECT of the folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStatus {
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highest_modseq: Option<u64>,
    pub exists: u32,
}

/// A message above the last seen UID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewMsg {
    pub uid: u32,
    pub size: u32,
    /// X-GM-MSGID (Gmail): the same message under several labels has one.
    pub gm_msgid: Option<u64>,
}

/// What the server said about the messages at or below the watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// Every UID the server has in 1:last (a UID SEARCH, or a FETCH of every message's flags).
    All(BTreeSet<u32>),
    /// Only the UIDs that vanished (QRESYNC's VANISHED, or none when the counts show nothing
    /// was expunged); the messages given to `plan` are then the rows this sync concerns.
    Vanished(BTreeSet<u32>),
}

/// What a full sync read of flags and existence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFlags {
    /// Flags of messages: all of them, or only those changed since our HIGHESTMODSEQ.
    pub flags: BTreeMap<u32, Flags>,
    /// Whether `flags` holds only what changed (CHANGEDSINCE): a message it does not name
    /// still has the flags of our last sync.
    pub changed_only: bool,
    pub presence: Presence,
}

impl Default for ServerFlags {
    fn default() -> ServerFlags {
        ServerFlags { flags: BTreeMap::new(), changed_only: false, presence: Presence::All(BTreeSet::new()) }
    }
}

/// Everything the server said in this run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerView {
    /// The SELECT's (or, when the folder was not opened, the STATUS's) counts.
    pub status: ServerStatus,
    /// UIDs above our last seen UID (possibly including ≤ ones: `N:*` quirk; filtered here).
    pub new: Vec<NewMsg>,
    /// Present for a full sync.
    pub full: Option<ServerFlags>,
    /// PERMANENTFLAGS of the SELECT: without `\*`, only these keywords can be stored. None:
    /// the server did not say (any keyword then).
    pub permanent_flags: Option<Vec<String>>,
}

impl ServerView {
    fn keeps(&self, keyword: &str) -> bool {
        match &self.permanent_flags {
            None => true,
            Some(p) => p.iter().any(|f| f == "\\*" || f.eq_ignore_ascii_case(keyword)),
        }
    }
}

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// UIDVALIDITY changed: the folder's UIDs are void. Store: drop queue entries, keep rows
    /// aside for re-matching by Message-ID + size, set the new UIDVALIDITY and last seen 0.
    Reset { uidvalidity: u32 },
    /// Queue these UIDs for Receive.
    Queue(Vec<NewMsg>),
    /// The server has these UIDs at or below the watermark and the store neither holds them
    /// nor has them queued: queue them again (their sizes are asked first).
    Heal(Vec<u32>),
    /// Copy these flags here (the server's, or the result of a merge already on the server).
    SetLocalFlags { uid: u32, flags: Flags },
    /// Add and remove flags on the server; `result` is what the message then has.
    /// `refused` are keywords the user set that the server cannot keep (PERMANENTFLAGS).
    PushFlags { uid: u32, add: Flags, remove: Flags, result: Flags, refused: Vec<String> },
    /// The server no longer has this stored message: mark it for Sync Delete.
    VanishedOnServer { uid: u32 },
    /// The server no longer has this queued UID: drop it from the receive queue.
    Unqueue { uid: u32 },
    /// New watermarks, recorded in the same transaction as the changes above.
    Watermarks { last_seen_uid: u32, highest_modseq: Option<u64> },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Reset { uidvalidity } => write!(f, "reset folder (new UIDVALIDITY {uidvalidity})"),
            Change::Queue(v) => write!(f, "queue {} new message(s)", v.len()),
            Change::Heal(v) => write!(f, "queue again {} message(s) missing from the store", v.len()),
            Change::SetLocalFlags { uid, flags } => write!(f, "set local flags of UID {uid} to {}", flags.to_imap()),
            Change::PushFlags { uid, add, remove, .. } => {
                write!(f, "store +{} -{} on UID {uid}", add.to_imap(), remove.to_imap())
            }
            Change::VanishedOnServer { uid } => write!(f, "UID {uid} vanished on the server"),
            Change::Unqueue { uid } => write!(f, "unqueue UID {uid} (expunged before download)"),
            Change::Watermarks { last_seen_uid, highest_modseq } => {
                write!(f, "last seen UID {last_seen_uid}, HIGHESTMODSEQ {highest_modseq:?}")
            }
        }
    }
}

/// What the store holds of a folder, from its indexes alone (no row read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalSummary {
    /// Messages with a current UID that the store believes the server still has.
    pub present: i64,
    /// Queued downloads.
    pub queued: i64,
    /// A local flag change waits to be pushed.
    pub local_pending: bool,
}

/// What the server offers that changes how a folder is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCaps {
    pub condstore: bool,
    pub qresync: bool,
}

/// What to ask the server about a folder, given its STATUS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchPlan {
    /// The STATUS says everything: nothing to read (a no-change sync costs one STATUS).
    Nothing,
    /// Open the folder and read what `FolderRead` says.
    Read(crate::commands::FolderRead),
}

/// Decides what to read of a folder after its STATUS (pure; the matrix is table-tested):
/// - a STATUS whose UIDVALIDITY differs from the store's is checked by a SELECT before
///   anything is reset;
/// - new UIDs are read when UIDNEXT moved past the watermark;
/// - a full sync reads flags unless CONDSTORE shows nothing changed (HIGHESTMODSEQ equal and
///   the message count what we hold) and no local change waits; with CONDSTORE only what
///   changed since our HIGHESTMODSEQ, with QRESYNC also what vanished;
/// - the server's UID set is asked when the flags read does not give it (CHANGEDSINCE without
///   QRESYNC), so that deletions are seen and gaps in the store healed;
/// - the folder is opened read-write only when a local change is to be pushed.
pub fn plan_fetch(
    local: &LocalFolder,
    summary: &LocalSummary,
    status: &ServerStatus,
    caps: ReadCaps,
    full: bool,
) -> FetchPlan {
    use crate::commands::{FlagsRead, FolderRead};
    let last = local.last_seen_uid;
    if local.uidvalidity.is_some_and(|v| v != status.uidvalidity) {
        return FetchPlan::Read(FolderRead::default());
    }
    let has_new = status.uidnext == 0 || status.uidnext > last.saturating_add(1);
    let counts_hold = i64::from(status.exists) == summary.present + summary.queued;
    let flags_unchanged = caps.condstore
        && local.highest_modseq.is_some()
        && status.highest_modseq == local.highest_modseq
        && counts_hold;
    let want_flags = full && last > 0 && (!flags_unchanged || summary.local_pending);
    if !has_new && !want_flags {
        return FetchPlan::Nothing;
    }
    let changed_since = local.highest_modseq.filter(|_| caps.condstore);
    FetchPlan::Read(FolderRead {
        write: want_flags && summary.local_pending,
        new_after: has_new.then_some(last),
        flags: want_flags.then_some(FlagsRead { last, changed_since, vanished: caps.qresync }),
        present: (want_flags && changed_since.is_some() && !caps.qresync).then_some(last),
    })
}

/// Computes the changes of one sync run.
///
/// `local` is the folder row; `messages` its stored messages (all of them with
/// `Presence::All`, else those the changed flags, the vanished UIDs and the pending local
/// changes name); `queued` the UIDs waiting in the receive queue. With `server.full == None`
/// only new messages are considered.
pub fn plan(local: &LocalFolder, messages: &[LocalMsg], queued: &[u32], server: &ServerView) -> Vec<Change> {
    let mut out = Vec::new();
    let st = server.status;
    if local.uidvalidity.is_some_and(|v| v != st.uidvalidity) {
        // Nothing else this run: the old UIDs mean nothing now, so no flag or deletion can be
        // inferred from them. The next run starts from a clean folder.
        out.push(Change::Reset { uidvalidity: st.uidvalidity });
        return out;
    }
    let last = local.last_seen_uid;
    let mut new: Vec<NewMsg> = server.new.iter().copied().filter(|m| m.uid > last).collect();
    new.sort_by_key(|m| m.uid);
    new.dedup_by_key(|m| m.uid);
    let new_last = new.last().map_or(last, |m| m.uid.max(last));

    let mut modseq = local.highest_modseq;
    if let Some(full) = &server.full {
        let gone = |uid: u32| match &full.presence {
            Presence::All(p) => !p.contains(&uid),
            Presence::Vanished(v) => v.contains(&uid),
        };
        for m in messages.iter().filter(|m| m.uid <= last && !m.server_deleted) {
            if gone(m.uid) {
                out.push(Change::VanishedOnServer { uid: m.uid });
                continue;
            }
            let reported = full.flags.get(&m.uid);
            // The server's state now: what it reported, or (when it reports only changes)
            // what it had at our last sync, which is the base of a local change.
            let server_now = reported.or(if full.changed_only { m.base.as_ref() } else { None });
            let local_newer = m.flags_changed.is_some_and(|t| local.last_full_sync.is_none_or(|s| t >= s));
            if local_newer {
                out.push(push_or_settle(m, server_now, server));
            } else if let Some(f) = server_now
                && (*f != m.flags || m.flags_changed.is_some())
            {
                // The server's state wins (and clears the marker of a change that lost).
                out.push(Change::SetLocalFlags { uid: m.uid, flags: f.clone() });
            }
        }
        for &uid in queued.iter().filter(|&&u| u <= last) {
            if gone(uid) {
                out.push(Change::Unqueue { uid });
            }
        }
        if let Presence::All(present) = &full.presence {
            let held: BTreeSet<u32> = messages.iter().map(|m| m.uid).chain(queued.iter().copied()).collect();
            let missing: Vec<u32> = present.iter().copied().filter(|u| *u <= last && !held.contains(u)).collect();
            if !missing.is_empty() {
                out.push(Change::Heal(missing));
            }
        }
        // Only a full read of flags covers the server's HIGHESTMODSEQ.
        modseq = st.highest_modseq.or(modseq);
    }
    if !new.is_empty() {
        out.push(Change::Queue(new));
    }
    if local.uidvalidity.is_none() || new_last != last || modseq != local.highest_modseq {
        out.push(Change::Watermarks { last_seen_uid: new_last, highest_modseq: modseq });
    }
    out
}

/// A local change that wins: what to push so that the server gets the user's change and keeps
/// the rest of its state, or, when nothing differs, only the settling of the marker.
fn push_or_settle(m: &LocalMsg, server_now: Option<&Flags>, view: &ServerView) -> Change {
    let (add, remove, mut result) = match (server_now, &m.base) {
        (Some(s), Some(base)) => {
            let r = Flags::merge(s, base, &m.flags);
            let (a, rm) = s.diff(&r);
            (a, rm, r)
        }
        // A change from before the store kept its base: the user's system flags win (what
        // the change was about), no keyword is removed (we cannot tell whose it is).
        (Some(s), None) => {
            let mut r = s.clone();
            (r.seen, r.answered, r.flagged, r.draft, r.deleted) =
                (m.flags.seen, m.flags.answered, m.flags.flagged, m.flags.draft, m.flags.deleted);
            for k in m.flags.keywords() {
                r.add_keyword(k);
            }
            let (a, rm) = s.diff(&r);
            (a, rm, r)
        }
        // The server's state is not known: set and clear the system flags as the user has
        // them, leave keywords alone.
        (None, _) => {
            let add = m.flags.system_only();
            let mut remove = Flags::default();
            (remove.seen, remove.answered, remove.flagged, remove.draft, remove.deleted) =
                (!add.seen, !add.answered, !add.flagged, !add.draft, !add.deleted);
            (add, remove, m.flags.clone())
        }
    };
    let mut add = add;
    let refused = add.retain_keywords(|k| view.keeps(k));
    if !refused.is_empty() {
        result.retain_keywords(|k| !refused.iter().any(|r| r.eq_ignore_ascii_case(k)));
    }
    if add.is_empty() && remove.is_empty() {
        return Change::SetLocalFlags { uid: m.uid, flags: result };
    }
    Change::PushFlags { uid: m.uid, add, remove, result, refused }
}

#[cfg(test)]
mod tests;
