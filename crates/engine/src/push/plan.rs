//! The decisions of push, pure: what an event makes due, what a new connection must catch up,
//! when events are gathered into one sync, and what a failure leads to. The push thread only
//! reads sockets and applies these.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backproc_imap::WatchEvent;
use backproc_imap::response::MailboxStatus;
use backproc_types::Backoff;

use crate::schedule::SyncDue;

/// The stronger of two syncs: a full sync does what a recent one does.
pub fn stronger(a: SyncDue, b: SyncDue) -> SyncDue {
    if a == SyncDue::Full || b == SyncDue::Full { SyncDue::Full } else { SyncDue::Recent }
}

/// A NOTIFY STATUS event against what was known of the mailbox: the new state and the sync it
/// makes due. A server sends only the items that changed (Dovecot: `(HIGHESTMODSEQ 3)` for a
/// flag change), so the event is merged into what was known.
///
/// - nothing known: a full sync (we cannot tell what changed);
/// - UIDVALIDITY changed: a full sync;
/// - UIDNEXT moved on and MESSAGES grew by as much (or is not said): new mail only, a recent sync;
/// - anything else changed (MESSAGES fell, UNSEEN or HIGHESTMODSEQ alone: flags, expunges): full;
/// - nothing changed (a repeated status): nothing.
pub fn status_due(prev: Option<&MailboxStatus>, ev: &MailboxStatus) -> (MailboxStatus, Option<SyncDue>) {
    let Some(p) = prev else {
        return (ev.clone(), Some(SyncDue::Full));
    };
    let next = MailboxStatus {
        name: p.name.clone(),
        messages: ev.messages.or(p.messages),
        uidnext: ev.uidnext.or(p.uidnext),
        uidvalidity: ev.uidvalidity.or(p.uidvalidity),
        unseen: ev.unseen.or(p.unseen),
        highest_modseq: ev.highest_modseq.or(p.highest_modseq),
    };
    if next == *p {
        return (next, None);
    }
    if next.uidvalidity != p.uidvalidity {
        return (next, Some(SyncDue::Full));
    }
    let added = match (p.uidnext, next.uidnext) {
        (Some(a), Some(b)) if b > a => Some(b - a),
        _ => None,
    };
    let only_new = match (added, p.messages, ev.messages) {
        (Some(n), Some(a), Some(b)) => b == a.saturating_add(n),
        (Some(_), _, _) => true,
        (None, ..) => false,
    };
    (next, Some(if only_new { SyncDue::Recent } else { SyncDue::Full }))
}

/// An IDLE event on the selected mailbox, which had `exists` messages: the new count and the
/// sync it makes due (new messages: recent; an expunge or a flag change: full).
pub fn idle_due(exists: u32, ev: &WatchEvent) -> (u32, Option<SyncDue>) {
    match ev {
        WatchEvent::Exists(n) if *n > exists => (*n, Some(SyncDue::Recent)),
        WatchEvent::Exists(n) => (*n, None),
        // EXPUNGE takes one message out of the count (RFC 3501 §7.4.1)
        WatchEvent::Expunged => (exists.saturating_sub(1), Some(SyncDue::Full)),
        WatchEvent::FlagsChanged => (exists, Some(SyncDue::Full)),
        _ => (exists, None),
    }
}

/// What a folder must catch up when its watch starts, from the server's status then against
/// the store's: mail that came between the last sync and the watch would otherwise wait for
/// the polling interval. A folder never synced is the scheduler's (its first full sync is due).
pub fn catch_up(
    stored_uidvalidity: Option<i64>,
    last_seen_uid: i64,
    uidvalidity: Option<u32>,
    uidnext: Option<u32>,
) -> Option<SyncDue> {
    let stored = stored_uidvalidity?;
    if uidvalidity.is_some_and(|v| i64::from(v) != stored) {
        return Some(SyncDue::Full);
    }
    match uidnext {
        Some(n) if i64::from(n) > last_seen_uid + 1 => Some(SyncDue::Recent),
        _ => None,
    }
}

/// The folder an event is about: one folder of an account, or its folder list.
pub type Key = (i64, Option<i64>);

/// Events gathered per folder until `window` after the first: several events make one sync,
/// the strongest they asked for.
#[derive(Debug, Default)]
pub struct Debounce {
    pending: BTreeMap<Key, (SyncDue, Instant)>,
}

impl Debounce {
    pub fn push(&mut self, key: Key, due: SyncDue, now: Instant) {
        self.pending.entry(key).and_modify(|(d, _)| *d = stronger(*d, due)).or_insert((due, now));
    }

    /// The folders whose window has passed, taken out.
    pub fn take_ready(&mut self, now: Instant, window: Duration) -> Vec<(Key, SyncDue)> {
        let ready: Vec<Key> =
            self.pending.iter().filter(|(_, (_, at))| now.duration_since(*at) >= window).map(|(k, _)| *k).collect();
        ready.into_iter().filter_map(|k| self.pending.remove(&k).map(|(d, _)| (k, d))).collect()
    }

    /// When the next window ends.
    pub fn next_at(&self, window: Duration) -> Option<Instant> {
        self.pending.values().map(|(_, at)| *at + window).min()
    }

    /// Forgets an account's events (its watch closed: the owner logged out).
    pub fn forget(&mut self, account: i64) {
        self.pending.retain(|(a, _), _| *a != account);
    }
}

/// Why a watch ended or could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The connection broke, a renewal went unanswered, the server could not be reached.
    Lost,
    /// The server turned us away: `BYE`, a refused login or "too many connections".
    Refused,
    /// The server offers neither NOTIFY nor IDLE (or IDLE but no INBOX is watched).
    NotOffered,
    /// No connection is left in the host's budget for push.
    NoSlot,
}

/// What follows an ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Connect again after this long.
    Retry(Duration),
    /// Poll (the account's intervals), and try push again after this long, or never in this
    /// master's life (`None`).
    Poll(Option<Duration>),
}

/// The next step after the `nth` ending in a row (1 for the first): a lost connection comes
/// back after the account's back-off; a server that turned us away is left alone for the
/// longest back-off, never reconnected in a loop; one without push, for good.
pub fn after_ending(e: Ending, nth: u32, backoff: Backoff) -> Next {
    let secs = |s: i64| Duration::from_secs(u64::try_from(s).unwrap_or(0));
    match e {
        Ending::Lost => Next::Retry(secs(backoff.after(i64::from(nth)))),
        Ending::Refused => Next::Poll(Some(secs(backoff.max))),
        Ending::NoSlot => Next::Poll(Some(secs(backoff.base))),
        Ending::NotOffered => Next::Poll(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SyncDue::{Full, Recent};

    fn st(
        messages: Option<u32>,
        uidnext: Option<u32>,
        uidvalidity: Option<u32>,
        unseen: Option<u32>,
        modseq: Option<u64>,
    ) -> MailboxStatus {
        MailboxStatus { name: b"INBOX".to_vec(), messages, uidnext, uidvalidity, unseen, highest_modseq: modseq }
    }

    fn base() -> MailboxStatus {
        st(Some(5), Some(10), Some(7), Some(1), Some(40))
    }

    #[test]
    fn status_events_by_case() {
        let cases: Vec<(&str, Option<MailboxStatus>, MailboxStatus, Option<SyncDue>)> = vec![
            ("nothing known", None, st(Some(5), None, None, None, None), Some(Full)),
            ("new mail, all items", Some(base()), st(Some(6), Some(11), Some(7), Some(2), Some(41)), Some(Recent)),
            ("new mail, two at once", Some(base()), st(Some(7), Some(12), None, None, None), Some(Recent)),
            ("new mail, MESSAGES not said", Some(base()), st(None, Some(11), None, None, None), Some(Recent)),
            ("new mail and an expunge together", Some(base()), st(Some(5), Some(11), None, None, None), Some(Full)),
            ("a flag change: HIGHESTMODSEQ alone", Some(base()), st(None, None, None, None, Some(41)), Some(Full)),
            ("seen: UNSEEN and HIGHESTMODSEQ", Some(base()), st(None, None, None, Some(0), Some(41)), Some(Full)),
            ("an expunge: MESSAGES fell", Some(base()), st(Some(4), Some(10), None, None, Some(42)), Some(Full)),
            ("UIDVALIDITY changed", Some(base()), st(Some(5), Some(10), Some(8), None, None), Some(Full)),
            ("a repeated status", Some(base()), st(Some(5), Some(10), Some(7), None, None), None),
        ];
        for (name, prev, ev, want) in cases {
            let (next, due) = status_due(prev.as_ref(), &ev);
            assert_eq!(due, want, "{name}");
            // what was not said is kept
            if let Some(p) = prev {
                assert_eq!(next.uidvalidity, ev.uidvalidity.or(p.uidvalidity), "{name}");
                assert_eq!(next.messages, ev.messages.or(p.messages), "{name}");
            }
        }
    }

    #[test]
    fn idle_events_by_case() {
        let cases = [
            ("more messages", 5, WatchEvent::Exists(6), 6, Some(Recent)),
            ("the same count again", 5, WatchEvent::Exists(5), 5, None),
            ("an expunge", 5, WatchEvent::Expunged, 4, Some(Full)),
            ("a flag change", 5, WatchEvent::FlagsChanged, 5, Some(Full)),
            ("a renewal's answer", 5, WatchEvent::Renewed, 5, None),
        ];
        for (name, exists, ev, want_exists, want) in cases {
            assert_eq!(idle_due(exists, &ev), (want_exists, want), "{name}");
        }
    }

    #[test]
    fn catch_up_by_case() {
        let cases = [
            ("never synced: the scheduler's", None, 0, Some(7), Some(1), None),
            ("nothing new", Some(7), 9, Some(7), Some(10), None),
            ("mail since the last sync", Some(7), 9, Some(7), Some(12), Some(Recent)),
            ("UIDVALIDITY changed", Some(7), 9, Some(8), Some(10), Some(Full)),
            ("UIDNEXT not said", Some(7), 9, Some(7), None, None),
        ];
        for (name, stored, last, v, next, want) in cases {
            assert_eq!(catch_up(stored, last, v, next), want, "{name}");
        }
    }

    #[test]
    fn events_within_the_window_make_one_sync_the_strongest() {
        let t0 = Instant::now();
        let w = Duration::from_millis(250);
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Debounce::default();
        d.push((1, Some(10)), Recent, t0);
        d.push((1, Some(10)), Full, ms(100));
        d.push((1, Some(10)), Recent, ms(200));
        d.push((2, Some(20)), Recent, ms(200));
        assert_eq!(d.next_at(w), Some(ms(250)));
        assert!(d.take_ready(ms(249), w).is_empty());
        assert_eq!(d.take_ready(ms(250), w), vec![((1, Some(10)), Full)]);
        assert_eq!(d.next_at(w), Some(ms(450)));
        d.forget(2);
        assert!(d.take_ready(ms(1000), w).is_empty());
        assert_eq!(d.next_at(w), None);
    }

    #[test]
    fn endings_by_case() {
        let b = Backoff { base: 2, max: 60 };
        let s = Duration::from_secs;
        let cases = [
            ("first loss: the base", Ending::Lost, 1, Next::Retry(s(2))),
            ("third loss in a row: doubled twice", Ending::Lost, 3, Next::Retry(s(8))),
            ("many losses: capped", Ending::Lost, 30, Next::Retry(s(60))),
            ("turned away: the longest wait, polling", Ending::Refused, 1, Next::Poll(Some(s(60)))),
            ("no slot in the budget", Ending::NoSlot, 1, Next::Poll(Some(s(2)))),
            ("no push offered: for good", Ending::NotOffered, 1, Next::Poll(None)),
        ];
        for (name, e, n, want) in cases {
            assert_eq!(after_ending(e, n, b), want, "{name}");
        }
    }

    #[test]
    fn stronger_by_case() {
        assert_eq!(stronger(Recent, Recent), Recent);
        assert_eq!(stronger(Recent, Full), Full);
        assert_eq!(stronger(Full, Recent), Full);
    }
}
