//! The sync plan: a pure function from (what the store has, what the server said) to the
//! changes to make. No I/O here; the engine fetches the inputs and applies the output.
//!
//! Rules (RFC 3501 §2.3.1.1, RFC 7162):
//! - UIDs are only comparable under one UIDVALIDITY: when it changes the folder is reset,
//!   and nothing of that run is read as a deletion on either side.
//! - A UID above the last seen UID is new: it is queued for Receive (never downloaded here).
//! - Flags: a local change made after the last full sync wins (it is pushed); otherwise the
//!   server's state wins and is copied here.
//! - A stored or queued UID the server no longer lists has vanished there; queued ones simply
//!   leave the queue, stored ones are marked for Sync Delete.
//! - The last seen UID and HIGHESTMODSEQ only move forward, and only by what this plan covers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The system flags we mirror.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    pub seen: bool,
    pub answered: bool,
    pub flagged: bool,
    pub draft: bool,
    pub deleted: bool,
}

impl Flags {
    /// IMAP flag list, e.g. `(\Seen \Flagged)`.
    pub fn to_imap(self) -> String {
        let mut v = Vec::new();
        for (on, name) in [
            (self.seen, "\\Seen"),
            (self.answered, "\\Answered"),
            (self.flagged, "\\Flagged"),
            (self.draft, "\\Draft"),
            (self.deleted, "\\Deleted"),
        ] {
            if on {
                v.push(name);
            }
        }
        format!("({})", v.join(" "))
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_imap())
    }
}

/// The folder as the store knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalFolder {
    pub uidvalidity: Option<u32>,
    pub last_seen_uid: u32,
    pub highest_modseq: Option<u64>,
    pub last_full_sync: Option<i64>,
}

/// A stored message's sync state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMsg {
    pub uid: u32,
    pub flags: Flags,
    /// Time of a local flag change not yet pushed.
    pub flags_changed: Option<i64>,
    /// Already known to be gone from the server.
    pub server_deleted: bool,
}

/// STATUS / EXAMINE of the folder.
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
}

/// What a full sync read of flags and existence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFlags {
    /// Flags of messages (all of them, or only those changed since our HIGHESTMODSEQ).
    pub flags: BTreeMap<u32, Flags>,
    /// Every UID the server has up to the last seen UID.
    pub present: BTreeSet<u32>,
}

/// Everything the server said in this run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerView {
    pub status: ServerStatus,
    /// UIDs above our last seen UID (possibly including ≤ ones: `N:*` quirk; filtered here).
    pub new: Vec<NewMsg>,
    /// Present for a full sync.
    pub full: Option<ServerFlags>,
}

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// UIDVALIDITY changed: the folder's UIDs are void. Store: drop queue entries, keep rows
    /// aside for re-matching by Message-ID + size, set the new UIDVALIDITY and last seen 0.
    Reset { uidvalidity: u32 },
    /// Queue these UIDs for Receive.
    Queue(Vec<NewMsg>),
    /// Copy the server's flags here.
    SetLocalFlags { uid: u32, flags: Flags },
    /// Push the local flags to the server (a local change newer than the last sync).
    PushFlags { uid: u32, flags: Flags },
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
            Change::Reset { uidvalidity } => {
                write!(f, "reset folder (new UIDVALIDITY {uidvalidity})")
            }
            Change::Queue(v) => write!(f, "queue {} new message(s)", v.len()),
            Change::SetLocalFlags { uid, flags } => {
                write!(f, "set local flags of UID {uid} to {flags}")
            }
            Change::PushFlags { uid, flags } => write!(f, "store flags {flags} on UID {uid}"),
            Change::VanishedOnServer { uid } => write!(f, "UID {uid} vanished on the server"),
            Change::Unqueue { uid } => write!(f, "unqueue UID {uid} (expunged before download)"),
            Change::Watermarks { last_seen_uid, highest_modseq } => {
                write!(f, "last seen UID {last_seen_uid}, HIGHESTMODSEQ {highest_modseq:?}")
            }
        }
    }
}

/// Computes the changes of one sync run.
///
/// `local` is the folder row; `messages` its stored messages; `queued` the UIDs waiting in
/// the receive queue. With `server.full == None` only new messages are considered.
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
        for m in messages.iter().filter(|m| m.uid <= last && !m.server_deleted) {
            if !full.present.contains(&m.uid) {
                out.push(Change::VanishedOnServer { uid: m.uid });
                continue;
            }
            let local_newer = m.flags_changed.is_some_and(|t| local.last_full_sync.is_none_or(|s| t >= s));
            if local_newer {
                // Local change after the last sync: it wins, whatever the server says now.
                if full.flags.get(&m.uid) == Some(&m.flags) {
                    // Already equal: only the pending marker needs clearing.
                    out.push(Change::SetLocalFlags { uid: m.uid, flags: m.flags });
                } else {
                    out.push(Change::PushFlags { uid: m.uid, flags: m.flags });
                }
            } else if let Some(f) = full.flags.get(&m.uid)
                && *f != m.flags
            {
                out.push(Change::SetLocalFlags { uid: m.uid, flags: *f });
            }
        }
        for &uid in queued.iter().filter(|&&u| u <= last) {
            if !full.present.contains(&uid) {
                out.push(Change::Unqueue { uid });
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

#[cfg(test)]
mod tests;
