//! Table-driven tests of the sync planners: no server, every case by hand.

use super::*;
use crate::commands::{FlagsRead, FolderRead};

fn f(s: &str) -> Flags {
    Flags::parse(s)
}
fn none() -> Flags {
    Flags::default()
}
fn seen() -> Flags {
    f("\\Seen")
}
fn flagged() -> Flags {
    f("\\Flagged")
}

fn local(uv: Option<u32>, last: u32, modseq: Option<u64>, last_full: Option<i64>) -> LocalFolder {
    LocalFolder { uidvalidity: uv, last_seen_uid: last, highest_modseq: modseq, last_full_sync: last_full }
}
fn msg(uid: u32, flags: Flags) -> LocalMsg {
    LocalMsg { uid, flags, base: None, flags_changed: None, server_deleted: false }
}
/// A message the user changed at `at` from `base` to `flags`.
fn changed(uid: u32, base: Flags, flags: Flags, at: i64) -> LocalMsg {
    LocalMsg { uid, flags, base: Some(base), flags_changed: Some(at), server_deleted: false }
}
fn status(uv: u32, next: u32, modseq: Option<u64>) -> ServerStatus {
    ServerStatus { uidvalidity: uv, uidnext: next, highest_modseq: modseq, exists: 0 }
}
fn new(uids: &[u32]) -> Vec<NewMsg> {
    uids.iter().map(|&uid| NewMsg { uid, size: 100 + uid, gm_msgid: None }).collect()
}
/// Every flag read, every UID present.
fn full(flags: &[(u32, Flags)], present: &[u32]) -> Option<ServerFlags> {
    Some(ServerFlags {
        flags: flags.iter().cloned().collect(),
        changed_only: false,
        presence: Presence::All(present.iter().copied().collect()),
    })
}
/// Only changed flags (CHANGEDSINCE) and the UIDs that vanished.
fn changes(flags: &[(u32, Flags)], vanished: &[u32]) -> Option<ServerFlags> {
    Some(ServerFlags {
        flags: flags.iter().cloned().collect(),
        changed_only: true,
        presence: Presence::Vanished(vanished.iter().copied().collect()),
    })
}
fn view(status: ServerStatus, new: Vec<NewMsg>, full: Option<ServerFlags>) -> ServerView {
    ServerView { status, new, full, permanent_flags: None }
}
fn push(uid: u32, add: &str, remove: &str, result: &str) -> Change {
    Change::PushFlags { uid, add: f(add), remove: f(remove), result: f(result), refused: vec![] }
}
fn set(uid: u32, flags: Flags) -> Change {
    Change::SetLocalFlags { uid, flags }
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
            server: view(status(7, 1, None), vec![], None),
            expect: vec![Change::Watermarks { last_seen_uid: 0, highest_modseq: None }],
        },
        Case {
            name: "first sync queues everything",
            local: local(None, 0, None, None),
            messages: vec![],
            queued: vec![],
            server: view(status(7, 4, None), new(&[1, 2, 3]), None),
            expect: vec![Change::Queue(new(&[1, 2, 3])), Change::Watermarks { last_seen_uid: 3, highest_modseq: None }],
        },
        Case {
            name: "nothing new: no change at all",
            local: local(Some(7), 3, None, None),
            messages: vec![msg(1, none()), msg(2, none()), msg(3, none())],
            queued: vec![],
            server: view(status(7, 4, None), vec![], None),
            expect: vec![],
        },
        Case {
            name: "N:* quirk returns the last old message: ignored",
            local: local(Some(7), 3, None, None),
            messages: vec![msg(3, none())],
            queued: vec![],
            server: view(status(7, 4, None), new(&[3]), None),
            expect: vec![],
        },
        Case {
            name: "new UIDs above the watermark only, sorted and deduplicated",
            local: local(Some(7), 3, None, None),
            messages: vec![],
            queued: vec![],
            server: view(status(7, 9, None), new(&[8, 2, 5, 5]), None),
            expect: vec![Change::Queue(new(&[5, 8])), Change::Watermarks { last_seen_uid: 8, highest_modseq: None }],
        },
        Case {
            name: "UIDVALIDITY change resets and infers nothing else",
            local: local(Some(7), 3, Some(10), Some(1)),
            messages: vec![msg(1, none()), msg(2, none())],
            queued: vec![3],
            server: view(status(8, 3, Some(1)), new(&[1, 2]), full(&[], &[])),
            expect: vec![Change::Reset { uidvalidity: 8 }],
        },
        Case {
            name: "full sync copies the server's flags, keywords included",
            local: local(Some(7), 2, None, Some(100)),
            messages: vec![msg(1, none()), msg(2, f("\\Seen $Label1"))],
            queued: vec![],
            server: view(status(7, 3, None), vec![], full(&[(1, f("\\Seen $MyUID")), (2, none())], &[1, 2])),
            expect: vec![set(1, f("\\Seen $MyUID")), set(2, none())],
        },
        Case {
            name: "a local change after the last sync wins and is pushed as what changed",
            local: local(Some(7), 1, None, Some(100)),
            messages: vec![changed(1, none(), seen(), 150)],
            queued: vec![],
            server: view(status(7, 2, None), vec![], full(&[(1, none())], &[1])),
            expect: vec![push(1, "\\Seen", "", "\\Seen")],
        },
        Case {
            name: "reading a message keeps the server's keywords (never a replacing FLAGS)",
            local: local(Some(7), 1, None, Some(100)),
            messages: vec![changed(1, f("$Label1 $Junk"), f("\\Seen $Label1 $Junk"), 150)],
            queued: vec![],
            server: view(status(7, 2, None), vec![], full(&[(1, f("$Label1 $Junk"))], &[1])),
            expect: vec![push(1, "\\Seen", "", "\\Seen $Label1 $Junk")],
        },
        Case {
            name: "a keyword another client set meanwhile survives the push",
            local: local(Some(7), 1, None, Some(100)),
            messages: vec![changed(1, f("$Label1"), f("\\Seen $Label1"), 150)],
            queued: vec![],
            server: view(status(7, 2, None), vec![], full(&[(1, f("$Label1 $Forwarded"))], &[1])),
            expect: vec![push(1, "\\Seen", "", "\\Seen $Label1 $Forwarded")],
        },
        Case {
            name: "a keyword the user removed is removed, others stay",
            local: local(Some(7), 1, None, Some(100)),
            messages: vec![changed(1, f("$a $b"), f("$b"), 150)],
            queued: vec![],
            server: view(status(7, 2, None), vec![], full(&[(1, f("$a $b $c"))], &[1])),
            expect: vec![push(1, "", "$a", "$b $c")],
        },
        Case {
            name: "a keyword the server cannot keep is not pushed and is named",
            local: local(Some(7), 1, None, Some(100)),
            messages: vec![changed(1, none(), f("\\Seen work"), 150)],
            queued: vec![],
            server: ServerView {
                permanent_flags: Some(vec!["\\Seen".into(), "\\Deleted".into(), "$Label1".into()]),
                ..view(status(7, 2, None), vec![], full(&[(1, none())], &[1]))
            },
            expect: vec![Change::PushFlags {
                uid: 1,
                add: seen(),
                remove: none(),
                result: seen(),
                refused: vec!["work".into()],
            }],
        },
        Case {
            name: "a change from before the store kept its base: system flags win, keywords only added",
            local: local(Some(7), 1, None, Some(100)),
            messages: vec![LocalMsg { flags_changed: Some(150), ..msg(1, f("\\Flagged $x")) }],
            queued: vec![],
            server: view(status(7, 2, None), vec![], full(&[(1, f("\\Seen $y"))], &[1])),
            expect: vec![push(1, "\\Flagged $x", "\\Seen", "\\Flagged $x $y")],
        },
        Case {
            name: "a local change older than the last sync loses to the server",
            local: local(Some(7), 1, None, Some(200)),
            messages: vec![changed(1, none(), seen(), 150)],
            queued: vec![],
            server: view(status(7, 2, None), vec![], full(&[(1, flagged())], &[1])),
            expect: vec![set(1, flagged())],
        },
        Case {
            name: "a pending local change equal to the server only clears the marker",
            local: local(Some(7), 1, None, Some(100)),
            messages: vec![changed(1, none(), seen(), 150)],
            queued: vec![],
            server: view(status(7, 2, None), vec![], full(&[(1, seen())], &[1])),
            expect: vec![set(1, seen())],
        },
        Case {
            name: "CONDSTORE: an unchanged message's state is its base; the local change is pushed",
            local: local(Some(7), 2, Some(50), Some(100)),
            messages: vec![msg(1, none()), changed(2, f("$Label1"), f("\\Seen $Label1"), 120)],
            queued: vec![],
            server: view(status(7, 3, Some(60)), vec![], changes(&[], &[])),
            expect: vec![
                push(2, "\\Seen", "", "\\Seen $Label1"),
                Change::Watermarks { last_seen_uid: 2, highest_modseq: Some(60) },
            ],
        },
        Case {
            name: "CONDSTORE: an old change without a base and no report sets the system flags only",
            local: local(Some(7), 2, Some(50), Some(100)),
            messages: vec![LocalMsg { flags_changed: Some(120), ..msg(2, f("\\Seen $k")) }],
            queued: vec![],
            server: view(status(7, 3, Some(60)), vec![], changes(&[], &[])),
            expect: vec![
                push(2, "\\Seen", "\\Answered \\Flagged \\Draft \\Deleted", "\\Seen $k"),
                Change::Watermarks { last_seen_uid: 2, highest_modseq: Some(60) },
            ],
        },
        Case {
            name: "vanished stored message is marked for Sync Delete; already-marked ones are not repeated",
            local: local(Some(7), 3, None, Some(1)),
            messages: vec![msg(1, none()), msg(2, none()), LocalMsg { server_deleted: true, ..msg(3, none()) }],
            queued: vec![],
            server: view(status(7, 4, None), vec![], full(&[(1, none())], &[1])),
            expect: vec![Change::VanishedOnServer { uid: 2 }],
        },
        Case {
            name: "QRESYNC: what VANISHED names is gone, nothing else is inferred",
            local: local(Some(7), 5, Some(50), Some(1)),
            messages: vec![msg(2, none()), msg(4, none())],
            queued: vec![5],
            server: view(status(7, 6, Some(70)), vec![], changes(&[(4, seen())], &[2, 5, 99])),
            expect: vec![
                Change::VanishedOnServer { uid: 2 },
                set(4, seen()),
                Change::Unqueue { uid: 5 },
                Change::Watermarks { last_seen_uid: 5, highest_modseq: Some(70) },
            ],
        },
        Case {
            name: "a queued UID expunged before download leaves the queue",
            local: local(Some(7), 3, None, Some(1)),
            messages: vec![msg(1, none())],
            queued: vec![2, 3],
            server: view(status(7, 4, None), vec![], full(&[(1, none())], &[1, 3])),
            expect: vec![Change::Unqueue { uid: 2 }],
        },
        Case {
            name: "a UID the server has below the watermark that the store lacks is healed",
            local: local(Some(7), 300, Some(5), Some(1)),
            messages: vec![msg(1, none()), msg(3, none())],
            queued: vec![300],
            server: view(status(7, 301, Some(5)), vec![], full(&[], &[1, 2, 3, 77, 300])),
            expect: vec![Change::Heal(vec![2, 77])],
        },
        Case {
            name: "a message known gone is never healed back",
            local: local(Some(7), 3, None, Some(1)),
            messages: vec![msg(1, none()), LocalMsg { server_deleted: true, ..msg(2, none()) }],
            queued: vec![],
            server: view(status(7, 4, None), vec![], full(&[(1, none()), (2, none())], &[1, 2])),
            expect: vec![],
        },
        Case {
            name: "recent sync never infers deletions",
            local: local(Some(7), 3, None, Some(1)),
            messages: vec![msg(1, none()), msg(2, none())],
            queued: vec![3],
            server: view(status(7, 6, None), new(&[5]), None),
            expect: vec![Change::Queue(new(&[5])), Change::Watermarks { last_seen_uid: 5, highest_modseq: None }],
        },
        Case {
            name: "recent sync does not move HIGHESTMODSEQ (flags were not read)",
            local: local(Some(7), 1, Some(5), Some(1)),
            messages: vec![msg(1, none())],
            queued: vec![],
            server: view(status(7, 3, Some(9)), new(&[2]), None),
            expect: vec![Change::Queue(new(&[2])), Change::Watermarks { last_seen_uid: 2, highest_modseq: Some(5) }],
        },
        Case {
            name: "full sync with new messages and flag changes at once",
            local: local(Some(7), 2, Some(5), Some(1)),
            messages: vec![msg(1, none()), msg(2, none())],
            queued: vec![],
            server: view(status(7, 5, Some(9)), new(&[3, 4]), full(&[(2, flagged())], &[1, 2])),
            expect: vec![
                set(2, flagged()),
                Change::Queue(new(&[3, 4])),
                Change::Watermarks { last_seen_uid: 4, highest_modseq: Some(9) },
            ],
        },
        Case {
            name: "server emptied the folder: every stored message vanished (the brake is Sync Delete's job)",
            local: local(Some(7), 2, None, Some(1)),
            messages: vec![msg(1, none()), msg(2, seen())],
            queued: vec![],
            server: view(status(7, 3, None), vec![], full(&[], &[])),
            expect: vec![Change::VanishedOnServer { uid: 1 }, Change::VanishedOnServer { uid: 2 }],
        },
        Case {
            name: "messages above the watermark (being received) are not judged by a full sync",
            local: local(Some(7), 1, None, Some(1)),
            messages: vec![msg(1, none()), msg(2, none())],
            queued: vec![],
            server: view(status(7, 3, None), vec![], full(&[(1, none())], &[1])),
            expect: vec![],
        },
        Case {
            name: "partial view (nothing expunged): only the changed and pending rows",
            local: local(Some(7), 9, Some(5), Some(100)),
            messages: vec![msg(2, none()), changed(4, none(), flagged(), 150), changed(6, none(), seen(), 150)],
            queued: vec![],
            server: view(
                status(7, 11, Some(9)),
                new(&[10]),
                // UID 8 changed but is not stored yet (queued, or being received): no row
                changes(&[(2, seen()), (6, seen()), (8, seen())], &[]),
            ),
            expect: vec![
                set(2, seen()),
                push(4, "\\Flagged", "", "\\Flagged"),
                set(6, seen()),
                Change::Queue(new(&[10])),
                Change::Watermarks { last_seen_uid: 10, highest_modseq: Some(9) },
            ],
        },
        Case {
            name: "partial view with nothing changed still moves HIGHESTMODSEQ",
            local: local(Some(7), 9, Some(5), Some(100)),
            messages: vec![],
            queued: vec![],
            server: view(status(7, 10, Some(6)), vec![], changes(&[], &[])),
            expect: vec![Change::Watermarks { last_seen_uid: 9, highest_modseq: Some(6) }],
        },
    ]
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

/// The partial view the engine builds when nothing was expunged (the server's count is ours
/// plus the new UIDs): the rows the CHANGEDSINCE answer names and those with a local change
/// waiting, nothing vanished, no queue. Every combination of three stored messages (local
/// flags, what the server reports, a local change older or newer than the last full sync,
/// already gone on the server) plus a queued and a new UID must plan exactly as the full
/// view (every row, every UID present, the queue, every flag) does.
#[test]
fn the_partial_view_plans_as_the_full_view_when_nothing_was_expunged() {
    let reported = [None, Some(none()), Some(seen()), Some(f("$Label1"))];
    let pending = [None, Some(50), Some(150)];
    let mut per_msg = Vec::new();
    for lf in [none(), seen()] {
        for rep in &reported {
            for p in pending {
                for gone in [false, true] {
                    per_msg.push((lf.clone(), rep.clone(), p, gone));
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
                let mut changed_flags = BTreeMap::new();
                let mut all_flags = BTreeMap::new();
                for (uid, (lflags, rep, p, gone)) in [(1, a), (2, b), (3, c)] {
                    // the base of a pending change is what the server had at the last sync:
                    // the server still has it unless it reports a change
                    let base = p.map(|_| none());
                    messages.push(LocalMsg {
                        uid,
                        flags: lflags.clone(),
                        base: base.clone(),
                        flags_changed: *p,
                        server_deleted: *gone,
                    });
                    if let Some(f) = rep {
                        changed_flags.insert(uid, f.clone());
                    }
                    // the full view reads every flag: a message not reported changed has the
                    // state of the last sync (the base when a change waits, else the row's)
                    let now = rep.clone().or(base).unwrap_or_else(|| lflags.clone());
                    all_flags.insert(uid, now);
                }
                // UID 4 is queued; the server may report its flags too
                changed_flags.insert(4, seen());
                all_flags.insert(4, seen());
                let status = status(7, 6, Some(9));
                let whole = view(
                    status,
                    new(&[5]),
                    Some(ServerFlags {
                        flags: all_flags,
                        changed_only: false,
                        presence: Presence::All([1, 2, 3, 4].into()),
                    }),
                );
                let want = plan(&lf, &messages, &[4], &whole);
                let rows: Vec<LocalMsg> = messages
                    .iter()
                    .filter(|m| changed_flags.contains_key(&m.uid) || m.flags_changed.is_some())
                    .cloned()
                    .collect();
                let part = view(
                    status,
                    new(&[5]),
                    Some(ServerFlags {
                        flags: changed_flags,
                        changed_only: true,
                        presence: Presence::Vanished(BTreeSet::new()),
                    }),
                );
                assert_eq!(plan(&lf, &rows, &[], &part), want, "messages {messages:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 48 * 48 * 48);
}

#[test]
fn changes_render_for_the_debug_log() {
    assert_eq!(Change::Queue(new(&[1])).to_string(), "queue 1 new message(s)");
    assert_eq!(push(3, "\\Seen", "$a", "\\Seen").to_string(), "store +(\\Seen) -($a) on UID 3");
    assert_eq!(Change::Heal(vec![1, 2]).to_string(), "queue again 2 message(s) missing from the store");
}

/// `plan_fetch` over its whole input matrix: one named case a row.
#[test]
fn what_to_read_of_a_folder() {
    let caps = |condstore, qresync| ReadCaps { condstore, qresync };
    let sum = |present, queued, pending| LocalSummary { present, queued, local_pending: pending };
    let st = |uv, next, modseq, exists| ServerStatus { uidvalidity: uv, uidnext: next, highest_modseq: modseq, exists };
    let read = |write, new_after: Option<u32>, flags: Option<(u32, Option<u64>, bool)>, present: Option<u32>| {
        FetchPlan::Read(FolderRead {
            write,
            new_after,
            flags: flags.map(|(last, changed_since, vanished)| FlagsRead { last, changed_since, vanished }),
            present,
        })
    };
    let synced = local(Some(7), 10, Some(50), Some(100));
    let plain = local(Some(7), 10, None, Some(100));
    #[rustfmt::skip]
    let rows: Vec<(&str, LocalFolder, LocalSummary, ServerStatus, ReadCaps, bool, FetchPlan)> = vec![
        ("condstore, nothing changed, full: one STATUS only", synced.clone(), sum(10, 0, false), st(7, 11, Some(50), 10), caps(true, false), true, FetchPlan::Nothing),
        ("qresync, nothing changed, full", synced.clone(), sum(8, 2, false), st(7, 11, Some(50), 10), caps(true, true), true, FetchPlan::Nothing),
        ("nothing new, recent", synced.clone(), sum(10, 0, false), st(7, 11, Some(60), 10), caps(true, false), false, FetchPlan::Nothing),
        ("new messages, recent", synced.clone(), sum(10, 0, false), st(7, 14, Some(60), 13), caps(true, false), false, read(false, Some(10), None, None)),
        ("condstore, flags changed: changed flags and the UID set", synced.clone(), sum(10, 0, false), st(7, 11, Some(60), 10), caps(true, false), true,
            read(false, None, Some((10, Some(50), false)), Some(10))),
        ("condstore, a message expunged (count short)", synced.clone(), sum(10, 0, false), st(7, 11, Some(50), 9), caps(true, false), true,
            read(false, None, Some((10, Some(50), false)), Some(10))),
        ("qresync, flags changed: changed flags and what vanished", synced.clone(), sum(10, 0, false), st(7, 11, Some(60), 10), caps(true, true), true,
            read(false, None, Some((10, Some(50), true)), None)),
        ("condstore, local change waits: read-write", synced.clone(), sum(10, 0, true), st(7, 11, Some(50), 10), caps(true, false), true,
            read(true, None, Some((10, Some(50), false)), Some(10))),
        ("local change waits, recent sync: not pushed now", synced.clone(), sum(10, 0, true), st(7, 11, Some(50), 10), caps(true, false), false, FetchPlan::Nothing),
        ("no condstore: every flag, which gives the UID set", plain.clone(), sum(10, 0, false), st(7, 11, None, 10), caps(false, false), true,
            read(false, None, Some((10, None, false)), None)),
        ("no condstore, new and flags", plain.clone(), sum(10, 0, false), st(7, 13, None, 12), caps(false, false), true,
            read(false, Some(10), Some((10, None, false)), None)),
        ("condstore, first full sync after the download: every flag", plain.clone(), sum(10, 0, false), st(7, 11, Some(60), 10), caps(true, false), true,
            read(false, None, Some((10, None, false)), None)),
        ("empty folder, first sync", local(None, 0, None, None), sum(0, 0, false), st(7, 1, None, 0), caps(true, false), true, FetchPlan::Nothing),
        ("first sync with messages", local(None, 0, None, None), sum(0, 0, false), st(7, 301, Some(3), 300), caps(true, true), true, read(false, Some(0), None, None)),
        ("unknown UIDNEXT: ask", synced.clone(), sum(10, 0, false), st(7, 0, Some(50), 10), caps(true, false), false, read(false, Some(10), None, None)),
        ("UIDVALIDITY differs in STATUS: SELECT to see it said where it counts", synced.clone(), sum(10, 0, false), st(8, 11, Some(50), 10), caps(true, false), true,
            read(false, None, None, None)),
    ];
    for (name, local, summary, status, caps, full, want) in rows {
        assert_eq!(plan_fetch(&local, &summary, &status, caps, full), want, "{name}");
    }
}
