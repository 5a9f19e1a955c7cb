//! Table-driven tests of the sync plan: no server, every case by hand.

use super::*;

const SEEN: Flags = Flags { seen: true, answered: false, flagged: false, draft: false, deleted: false };
const NONE: Flags = Flags { seen: false, answered: false, flagged: false, draft: false, deleted: false };
const FLAGGED: Flags = Flags { seen: false, answered: false, flagged: true, draft: false, deleted: false };

fn local(uv: Option<u32>, last: u32, modseq: Option<u64>, last_full: Option<i64>) -> LocalFolder {
    LocalFolder { uidvalidity: uv, last_seen_uid: last, highest_modseq: modseq, last_full_sync: last_full }
}
fn msg(uid: u32, flags: Flags) -> LocalMsg {
    LocalMsg { uid, flags, flags_changed: None, server_deleted: false }
}
fn status(uv: u32, next: u32, modseq: Option<u64>) -> ServerStatus {
    ServerStatus { uidvalidity: uv, uidnext: next, highest_modseq: modseq, exists: 0 }
}
fn new(uids: &[u32]) -> Vec<NewMsg> {
    uids.iter().map(|&uid| NewMsg { uid, size: 100 + uid }).collect()
}
fn full(flags: &[(u32, Flags)], present: &[u32]) -> Option<ServerFlags> {
    Some(ServerFlags { flags: flags.iter().copied().collect(), present: present.iter().copied().collect() })
}

struct Case {
    name: &'static str,
    local: LocalFolder,
    messages: Vec<LocalMsg>,
    queued: Vec<u32>,
    server: ServerView,
    expect: Vec<Change>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "first sync of an empty folder records UIDVALIDITY",
            local: local(None, 0, None, None),
            messages: vec![],
            queued: vec![],
            server: ServerView { status: status(7, 1, None), new: vec![], full: None },
            expect: vec![Change::Watermarks { last_seen_uid: 0, highest_modseq: None }],
        },
        Case {
            name: "first sync queues everything",
            local: local(None, 0, None, None),
            messages: vec![],
            queued: vec![],
            server: ServerView { status: status(7, 4, None), new: new(&[1, 2, 3]), full: None },
            expect: vec![Change::Queue(new(&[1, 2, 3])), Change::Watermarks { last_seen_uid: 3, highest_modseq: None }],
        },
        Case {
            name: "nothing new: no change at all",
            local: local(Some(7), 3, None, None),
            messages: vec![msg(1, NONE), msg(2, NONE), msg(3, NONE)],
            queued: vec![],
            server: ServerView { status: status(7, 4, None), new: vec![], full: None },
            expect: vec![],
        },
        Case {
            name: "N:* quirk returns the last old message: ignored",
            local: local(Some(7), 3, None, None),
            messages: vec![msg(3, NONE)],
            queued: vec![],
            server: ServerView { status: status(7, 4, None), new: new(&[3]), full: None },
            expect: vec![],
        },
        Case {
            name: "new UIDs above the watermark only, sorted and deduplicated",
            local: local(Some(7), 3, None, None),
            messages: vec![],
            queued: vec![],
            server: ServerView { status: status(7, 9, None), new: new(&[8, 2, 5, 5]), full: None },
            expect: vec![Change::Queue(new(&[5, 8])), Change::Watermarks { last_seen_uid: 8, highest_modseq: None }],
        },
        Case {
            name: "UIDVALIDITY change resets and infers nothing else",
            local: local(Some(7), 3, Some(10), Some(1)),
            messages: vec![msg(1, NONE), msg(2, NONE)],
            queued: vec![3],
            server: ServerView { status: status(8, 3, Some(1)), new: new(&[1, 2]), full: full(&[], &[]) },
            expect: vec![Change::Reset { uidvalidity: 8 }],
        },
        Case {
            name: "full sync copies the server's flags",
            local: local(Some(7), 2, None, Some(100)),
            messages: vec![msg(1, NONE), msg(2, SEEN)],
            queued: vec![],
            server: ServerView {
                status: status(7, 3, None),
                new: vec![],
                full: full(&[(1, SEEN), (2, NONE)], &[1, 2]),
            },
            expect: vec![Change::SetLocalFlags { uid: 1, flags: SEEN }, Change::SetLocalFlags { uid: 2, flags: NONE }],
        },
        Case {
            name: "a local change after the last sync wins and is pushed",
            local: local(Some(7), 1, None, Some(100)),
            messages: vec![LocalMsg { uid: 1, flags: SEEN, flags_changed: Some(150), server_deleted: false }],
            queued: vec![],
            server: ServerView { status: status(7, 2, None), new: vec![], full: full(&[(1, NONE)], &[1]) },
            expect: vec![Change::PushFlags { uid: 1, flags: SEEN }],
        },
        Case {
            name: "a local change older than the last sync loses to the server",
            local: local(Some(7), 1, None, Some(200)),
            messages: vec![LocalMsg { uid: 1, flags: SEEN, flags_changed: Some(150), server_deleted: false }],
            queued: vec![],
            server: ServerView { status: status(7, 2, None), new: vec![], full: full(&[(1, FLAGGED)], &[1]) },
            expect: vec![Change::SetLocalFlags { uid: 1, flags: FLAGGED }],
        },
        Case {
            name: "a pending local change equal to the server only clears the marker",
            local: local(Some(7), 1, None, Some(100)),
            messages: vec![LocalMsg { uid: 1, flags: SEEN, flags_changed: Some(150), server_deleted: false }],
            queued: vec![],
            server: ServerView { status: status(7, 2, None), new: vec![], full: full(&[(1, SEEN)], &[1]) },
            expect: vec![Change::SetLocalFlags { uid: 1, flags: SEEN }],
        },
        Case {
            name: "CONDSTORE: unchanged messages are absent from the flag map, a pending local change is pushed",
            local: local(Some(7), 2, Some(50), Some(100)),
            messages: vec![
                msg(1, NONE),
                LocalMsg { uid: 2, flags: SEEN, flags_changed: Some(120), server_deleted: false },
            ],
            queued: vec![],
            server: ServerView { status: status(7, 3, Some(60)), new: vec![], full: full(&[], &[1, 2]) },
            expect: vec![
                Change::PushFlags { uid: 2, flags: SEEN },
                Change::Watermarks { last_seen_uid: 2, highest_modseq: Some(60) },
            ],
        },
        Case {
            name: "vanished stored message is marked for Sync Delete; already-marked ones are not repeated",
            local: local(Some(7), 3, None, Some(1)),
            messages: vec![
                msg(1, NONE),
                msg(2, NONE),
                LocalMsg { uid: 3, flags: NONE, flags_changed: None, server_deleted: true },
            ],
            queued: vec![],
            server: ServerView { status: status(7, 4, None), new: vec![], full: full(&[(1, NONE)], &[1]) },
            expect: vec![Change::VanishedOnServer { uid: 2 }],
        },
        Case {
            name: "a queued UID expunged before download leaves the queue",
            local: local(Some(7), 3, None, Some(1)),
            messages: vec![msg(1, NONE)],
            queued: vec![2, 3],
            server: ServerView { status: status(7, 4, None), new: vec![], full: full(&[(1, NONE)], &[1, 3]) },
            expect: vec![Change::Unqueue { uid: 2 }],
        },
        Case {
            name: "recent sync never infers deletions",
            local: local(Some(7), 3, None, Some(1)),
            messages: vec![msg(1, NONE), msg(2, NONE)],
            queued: vec![3],
            server: ServerView { status: status(7, 6, None), new: new(&[5]), full: None },
            expect: vec![Change::Queue(new(&[5])), Change::Watermarks { last_seen_uid: 5, highest_modseq: None }],
        },
        Case {
            name: "recent sync does not move HIGHESTMODSEQ (flags were not read)",
            local: local(Some(7), 1, Some(5), Some(1)),
            messages: vec![msg(1, NONE)],
            queued: vec![],
            server: ServerView { status: status(7, 3, Some(9)), new: new(&[2]), full: None },
            expect: vec![Change::Queue(new(&[2])), Change::Watermarks { last_seen_uid: 2, highest_modseq: Some(5) }],
        },
        Case {
            name: "full sync with new messages and flag changes at once",
            local: local(Some(7), 2, Some(5), Some(1)),
            messages: vec![msg(1, NONE), msg(2, NONE)],
            queued: vec![],
            server: ServerView {
                status: status(7, 5, Some(9)),
                new: new(&[3, 4]),
                full: full(&[(2, FLAGGED)], &[1, 2]),
            },
            expect: vec![
                Change::SetLocalFlags { uid: 2, flags: FLAGGED },
                Change::Queue(new(&[3, 4])),
                Change::Watermarks { last_seen_uid: 4, highest_modseq: Some(9) },
            ],
        },
        Case {
            name: "server emptied the folder: every stored message vanished (the brake is Sync Delete's job)",
            local: local(Some(7), 2, None, Some(1)),
            messages: vec![msg(1, NONE), msg(2, SEEN)],
            queued: vec![],
            server: ServerView { status: status(7, 3, None), new: vec![], full: full(&[], &[]) },
            expect: vec![Change::VanishedOnServer { uid: 1 }, Change::VanishedOnServer { uid: 2 }],
        },
        Case {
            name: "messages above the watermark (being received) are not judged by a full sync",
            local: local(Some(7), 1, None, Some(1)),
            messages: vec![msg(1, NONE), msg(2, NONE)],
            queued: vec![],
            server: ServerView { status: status(7, 3, None), new: vec![], full: full(&[(1, NONE)], &[1]) },
            expect: vec![],
        },
        Case {
            name: "partial view (nothing expunged): only the changed and pending rows, present = those",
            local: local(Some(7), 9, Some(5), Some(100)),
            messages: vec![
                msg(2, NONE),
                LocalMsg { flags_changed: Some(150), ..msg(4, FLAGGED) },
                LocalMsg { flags_changed: Some(150), ..msg(6, SEEN) },
            ],
            queued: vec![],
            server: ServerView {
                status: status(7, 11, Some(9)),
                new: new(&[10]),
                // UID 8 changed but is not stored yet (queued, or being received): no row
                full: full(&[(2, SEEN), (6, SEEN), (8, SEEN)], &[2, 4, 6]),
            },
            expect: vec![
                Change::SetLocalFlags { uid: 2, flags: SEEN },
                Change::PushFlags { uid: 4, flags: FLAGGED },
                Change::SetLocalFlags { uid: 6, flags: SEEN },
                Change::Queue(new(&[10])),
                Change::Watermarks { last_seen_uid: 10, highest_modseq: Some(9) },
            ],
        },
        Case {
            name: "partial view with nothing changed still moves HIGHESTMODSEQ",
            local: local(Some(7), 9, Some(5), Some(100)),
            messages: vec![],
            queued: vec![],
            server: ServerView { status: status(7, 10, Some(6)), new: vec![], full: full(&[], &[]) },
            expect: vec![Change::Watermarks { last_seen_uid: 9, highest_modseq: Some(6) }],
        },
    ]
}

/// The partial view the engine builds when nothing was expunged (the server's count is ours
/// plus the new UIDs): the rows the CHANGEDSINCE answer names and those with a local change
/// waiting, `present` = their UIDs, no queue. Every combination of three stored messages
/// (local flags, what the server reports, a local change older or newer than the last full
/// sync, already gone on the server) plus a queued and a new UID must plan exactly as the
/// full view (every row, every UID present, the queue) does.
#[test]
fn the_partial_view_plans_as_the_full_view_when_nothing_was_expunged() {
    let reported = [None, Some(NONE), Some(SEEN), Some(FLAGGED)];
    let pending = [None, Some(50), Some(150)];
    let mut per_msg = Vec::new();
    for lf in [NONE, SEEN] {
        for rep in reported {
            for p in pending {
                for gone in [false, true] {
                    per_msg.push((lf, rep, p, gone));
                }
            }
        }
    }
    let lf = local(Some(7), 4, Some(5), Some(100));
    let mut checked = 0;
    for a in &per_msg {
        for b in &per_msg {
            for c in &per_msg {
                let mut messages = Vec::new();
                let mut flags = BTreeMap::new();
                for (uid, (lflags, rep, p, gone)) in [(1, a), (2, b), (3, c)] {
                    messages.push(LocalMsg { uid, flags: *lflags, flags_changed: *p, server_deleted: *gone });
                    if let Some(f) = rep {
                        flags.insert(uid, *f);
                    }
                }
                // UID 4 is queued; the server may report its flags too
                flags.insert(4, SEEN);
                let status = status(7, 6, Some(9));
                let whole = ServerView {
                    status,
                    new: new(&[5]),
                    full: Some(ServerFlags { flags: flags.clone(), present: [1, 2, 3, 4].into() }),
                };
                let want = plan(&lf, &messages, &[4], &whole);
                let rows: Vec<LocalMsg> = messages
                    .iter()
                    .copied()
                    .filter(|m| flags.contains_key(&m.uid) || m.flags_changed.is_some())
                    .collect();
                let part = ServerView {
                    status,
                    new: new(&[5]),
                    full: Some(ServerFlags { flags, present: rows.iter().map(|m| m.uid).collect() }),
                };
                assert_eq!(plan(&lf, &rows, &[], &part), want, "messages {messages:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 48 * 48 * 48);
}

#[test]
fn plan_table() {
    for c in cases() {
        let got = plan(&c.local, &c.messages, &c.queued, &c.server);
        assert_eq!(got, c.expect, "case: {}", c.name);
    }
}

#[test]
fn watermark_never_moves_backwards() {
    for c in cases() {
        for ch in plan(&c.local, &c.messages, &c.queued, &c.server) {
            if let Change::Watermarks { last_seen_uid, .. } = ch {
                assert!(last_seen_uid >= c.local.last_seen_uid, "case: {}", c.name);
            }
        }
    }
}

#[test]
fn flags_render_as_imap() {
    assert_eq!(NONE.to_imap(), "()");
    assert_eq!(Flags { seen: true, flagged: true, ..NONE }.to_imap(), "(\\Seen \\Flagged)");
    assert_eq!(Change::Queue(new(&[1])).to_string(), "queue 1 new message(s)");
}
