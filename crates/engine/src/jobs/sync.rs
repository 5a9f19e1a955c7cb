//! Folder discovery and the Sync job: ask the server what changed (`plan_fetch` decides what
//! to ask, `Session::read_folder` asks it in one round trip), plan (`plan`), push the local
//! flag changes that win, apply. It downloads nothing: new UIDs go to the receive queue.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use backproc_imap::{
    Change, FetchPlan, FlagPush, FolderRead, LocalFolder, LocalMsg, LocalSummary, NewMsg, Presence, ReadCaps,
    ServerFlags, ServerView, Session, plan, plan_fetch,
};
use backproc_store::{FolderListing, MsgSyncRow, NewHistory, Queued, Store, SyncApply};

use super::{Ctx, Stop};
use crate::schedule::{Intervals, daily_start, folder_due};
use crate::task::{Failure, FailureKind, FolderOf, Report, Task};

/// LIST the account's folders and record them. A LIST without INBOX (every server has one)
/// is refused: recording it would mark every folder gone.
pub fn list_folders(ctx: &mut Ctx, account: i64) -> Result<Report, Failure> {
    let now = ctx.clock.now();
    // The folders due now are synced right after the listing: ask their STATUS first, INBOX
    // first of all (see `ask_status_ahead`).
    ask_status_ahead(ctx, account, now)?;
    // An account listed for the first time has no folder due yet, but its INBOX (every
    // server has one) is synced right after: its STATUS rides with the LIST, a round trip
    // less before the first message.
    let first = ctx.store.folders(Some(account))?.is_empty();
    let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
    if first && let Err(e) = session.status_ahead(&["INBOX"]) {
        return Err(Stop::Imap(e).fail(ctx, account));
    }
    // Its initial sync downloads next: COMPRESS rides with the LIST too.
    let listed = if first { session.list_before_download() } else { session.list() };
    let listing = match listed {
        Ok(l) => l,
        Err(e) => return Err(Stop::Imap(e).fail(ctx, account)),
    };
    if !listing.has_inbox() {
        let msg = "the server's folder list has no INBOX: it is not recorded (no folder is marked gone)";
        log::warn!("{msg}");
        return Err(Failure::new(FailureKind::Protocol, msg));
    }
    let mut rows: Vec<FolderListing> = listing
        .folders
        .into_iter()
        .filter(|f| f.selectable)
        .map(|f| FolderListing {
            name: f.name,
            display_name: f.display_name,
            delimiter: f.delimiter,
            special_use: f.special_use,
            unusable: None,
        })
        .collect();
    for u in listing.unusable {
        if let Some(name) = u.name {
            rows.push(FolderListing {
                // A NUL or CR of the name shown as `\0`, `\r`, not sent to a terminal.
                display_name: name.escape_debug().to_string(),
                name,
                delimiter: None,
                special_use: None,
                unusable: Some(u.reason),
            });
        }
    }
    let new = ctx.store.record_folder_list(account, &rows)?;
    if !new.is_empty() {
        log::info!("found {} new folder(s)", new.len());
    }
    // New folders get their initial sync at once, whatever their priority.
    let follow_up = new.iter().map(|&f| Task::SyncFull(FolderOf { account, folder: f })).collect();
    Ok(Report { count: new.len() as i64, follow_up, ..Report::default() })
}

/// The outcome of talking to the server about one folder.
struct Gathered {
    view: ServerView,
    changes: Vec<Change>,
    /// Rows read, by UID: the `flags_changed` each had when read.
    read_marks: BTreeMap<u32, Option<i64>>,
    /// UIDs whose push the server refused as changed meanwhile (CONDSTORE MODIFIED).
    modified: BTreeSet<u32>,
    /// Sizes of the UIDs found missing from the store.
    healed: Vec<NewMsg>,
}

/// Messages in a folder from which a read of it starts COMPRESS (if wanted and offered):
/// about 100 KB of flags. Alone they hardly pay for COMPRESS's round trip on a fast link (80
/// KB saved is 6 ms at 100 Mbit/s), but a folder that big is mostly an initial sync's, whose
/// bodies come next on the same connection.
const DEFLATE_FLAGS_FROM: u32 = 2000;

/// Sync one folder: recent (new UIDs) or full (also flags and vanished messages).
pub fn sync_folder(ctx: &mut Ctx, task: &Task, at: FolderOf, full: bool) -> Result<Report, Failure> {
    let FolderOf { account, folder: folder_id } = at;
    let started = Instant::now();
    let now = ctx.clock.now();
    let folder = ctx.store.folder(folder_id)?;
    if folder.gone {
        return Ok(Report::default());
    }
    let summary = ctx.store.folder_sync_summary(folder_id)?;
    let local = LocalFolder {
        uidvalidity: folder.uidvalidity.map(|v| v as u32),
        last_seen_uid: folder.last_seen_uid as u32,
        highest_modseq: folder.highest_modseq.map(|v| v as u64),
        last_full_sync: folder.last_full_sync,
    };
    if !ctx.sessions.get_for(ctx.store, ctx.config, account, now, Some(&folder.name))?.has_status(&folder.name) {
        ask_status_ahead(ctx, account, now)?;
    }
    let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
    let status = match session.status(&folder.name) {
        Ok(s) => s,
        Err(e) => return Err(Stop::Imap(e).fail(ctx, account)),
    };
    // Whether the server's count is what we hold: `stored` (an index-only count) includes rows
    // known gone on the server, so only a count below it needs the exact one.
    let held = summary.stored + summary.queued;
    let present =
        if i64::from(status.exists) >= held { summary.stored } else { ctx.store.folder_present_count(folder_id)? };
    let lsum = LocalSummary { present, queued: summary.queued, local_pending: summary.local_pending };
    let caps = ReadCaps { condstore: session.caps.condstore, qresync: session.caps.qresync };
    let what = plan_fetch(&local, &lsum, &status, caps, full);
    let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
    // A big folder's flags are a download too (about 50 bytes a message).
    if matches!(what, FetchPlan::Read(_))
        && status.exists >= DEFLATE_FLAGS_FROM
        && let Err(e) = session.deflate_for_download()
    {
        return Err(Stop::Imap(e).fail(ctx, account));
    }
    let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
    let store: &mut Store = ctx.store;
    let gathered = match what {
        FetchPlan::Nothing => {
            // An empty folder's first full sync records its HIGHESTMODSEQ.
            let full_view = (full && local.last_seen_uid == 0).then(ServerFlags::default);
            let view = ServerView { status, new: Vec::new(), full: full_view, permanent_flags: None };
            let changes = plan(&local, &[], &[], &view);
            Ok(Gathered { view, changes, read_marks: BTreeMap::new(), modified: BTreeSet::new(), healed: Vec::new() })
        }
        FetchPlan::Read(req) => read_and_plan(session, store, folder_id, &folder.name, &local, &req, full),
    };
    let g = match gathered {
        Ok(g) => g,
        Err(stop) => return Err(stop.fail(ctx, account)),
    };
    let (apply, found, healed) = to_apply(&local, g, full);
    if healed > 0 {
        log::info!("{healed} message(s) the server has were missing from the store: queued again");
        if let Err(e) = ctx.store.add_counter("healed_messages", healed as i64) {
            log::warn!("cannot count healed messages: {e}");
        }
        let detail = format!("{healed} message(s) missing from the store queued again");
        let h = NewHistory {
            kind: Some(task.job().key()),
            process: task.job().name(),
            status: "Healed",
            detail: Some(&detail),
            account_id: Some(account),
            folder_id: Some(folder_id),
            count: Some(healed as i64),
            duration_ms: None,
            thread: None,
        };
        if let Err(e) = ctx.store.add_history(&h, now) {
            log::warn!("cannot write history: {e}");
        }
    }
    let reset = apply.reset.is_some();
    let vanished = !apply.vanished.is_empty();
    ctx.store.apply_sync(folder_id, &apply, now)?;
    log::info!("found {found} new messages in {}s", started.elapsed().as_secs());
    let mut follow_up = Vec::new();
    if found + healed > 0 || summary.queued > 0 {
        follow_up.push(Task::Receive(at));
    }
    if vanished {
        // What vanished on the server is deleted here by Sync Delete, now rather than at
        // its next interval (the safety brake applies there).
        follow_up.push(Task::SyncDelete(at));
    }
    if reset {
        // Read the folder again from scratch right away.
        follow_up.push(Task::SyncFull(at));
    }
    Ok(Report { count: (found + healed) as i64, follow_up, ..Report::default() })
}

/// Reads the folder as `req` says, gathers the rows the answer concerns, plans, and pushes the
/// local flag changes that win.
fn read_and_plan(
    session: &mut Session,
    store: &mut Store,
    folder_id: i64,
    name: &str,
    local: &LocalFolder,
    req: &FolderRead,
    full: bool,
) -> Result<Gathered, Stop> {
    let answer = session.read_folder(name, req)?;
    let status = answer.selected.status();
    let mut view =
        ServerView { status, new: answer.new, full: None, permanent_flags: answer.selected.permanent_flags.clone() };
    let none = || Gathered {
        view: ServerView::default(),
        changes: Vec::new(),
        read_marks: BTreeMap::new(),
        modified: BTreeSet::new(),
        healed: Vec::new(),
    };
    if local.uidvalidity.is_some_and(|v| v != status.uidvalidity) {
        // Said by the SELECT itself: nothing read under the old UIDVALIDITY is used.
        let changes = plan(local, &[], &[], &view);
        return Ok(Gathered { view, changes, ..none() });
    }
    let last = local.last_seen_uid;
    let (mut rows, mut queued): (Vec<MsgSyncRow>, Vec<i64>) = (Vec::new(), Vec::new());
    if let Some(fr) = req.flags {
        let changed_only = fr.changed_since.is_some();
        let presence = match answer.present {
            Some(p) => Presence::All(p),
            None if !changed_only => Presence::All(answer.flags.keys().copied().collect()),
            None => {
                // QRESYNC: what vanished since our HIGHESTMODSEQ. When the count then
                // disagrees with what we hold, the store has a gap: ask the whole UID set.
                let vanished_held = store.folder_rows_with_uids(folder_id, &to_i64(&answer.vanished))?;
                let queued_all = store.queued_uids(folder_id)?;
                let held = Held {
                    present: store.folder_present_count(folder_id)?,
                    queued: store.folder_sync_summary(folder_id)?.queued,
                    vanished_present: vanished_held.iter().filter(|r| !r.server_deleted).count() as i64,
                    vanished_queued: queued_all.iter().filter(|u| answer.vanished.contains(&(**u as u32))).count()
                        as i64,
                    new: view.new.len() as i64,
                };
                if vanished_tells_all(&held, status.exists) {
                    Presence::Vanished(answer.vanished.clone())
                } else {
                    log::info!(
                        "the message count ({}) is not what the store holds ({}): reading the folder's UID set",
                        status.exists,
                        held.after()
                    );
                    Presence::All(session.present_uids(last)?)
                }
            }
        };
        match &presence {
            Presence::All(_) => (rows, queued) = store.folder_sync_rows(folder_id)?,
            Presence::Vanished(v) => {
                let mut uids: Vec<i64> = to_i64(v);
                uids.extend(answer.flags.keys().map(|u| i64::from(*u)));
                uids.sort_unstable();
                uids.dedup();
                rows = store.folder_sync_rows_of(folder_id, uids.iter().copied())?;
                if !v.is_empty() {
                    queued = store.queued_uids(folder_id)?;
                }
            }
        }
        view.full = Some(ServerFlags { flags: answer.flags, changed_only, presence });
    } else if full && last == 0 {
        // A folder's first full sync queues every message: their flags come with their
        // bodies, so the HIGHESTMODSEQ of this read covers them.
        view.full = Some(ServerFlags::default());
    }
    let msgs: Vec<LocalMsg> = rows.iter().map(local_msg).collect();
    let q: Vec<u32> = queued.iter().map(|u| *u as u32).collect();
    let changes = plan(local, &msgs, &q, &view);
    let read_marks = rows.iter().map(|r| (r.uid as u32, r.flags_changed)).collect();
    let mut modified = BTreeSet::new();
    let pushes = group_pushes(&changes);
    if !pushes.is_empty() {
        // Read-write; a SELECT of its own when the read was an EXAMINE, whose UIDVALIDITY is
        // checked again: nothing is pushed under another one.
        let selected = session.ensure_selected(name, true)?;
        if selected.uidvalidity != status.uidvalidity {
            log::warn!("UIDVALIDITY changed between two SELECTs: no flag is pushed; the next sync resets the folder");
            return Ok(Gathered { view, changes: Vec::new(), ..none() });
        }
        // UNCHANGEDSINCE the HIGHESTMODSEQ this read saw: a change made on the server since is
        // not overwritten; the server wins and is read at the next full sync.
        let report = session.store_flags(&pushes, status.highest_modseq)?;
        for uid in &report.modified {
            log::warn!("flags of UID {uid} changed on the server meanwhile: the server's state is kept");
        }
        modified = report.modified;
    }
    let heal: Vec<u32> =
        changes.iter().filter_map(|c| if let Change::Heal(v) = c { Some(v.clone()) } else { None }).flatten().collect();
    let healed = if heal.is_empty() { Vec::new() } else { session.sizes(&heal)? };
    Ok(Gathered { view, changes, read_marks, modified, healed })
}

/// What the store holds of a folder when QRESYNC said what vanished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    /// Stored messages the store believes the server has.
    present: i64,
    queued: i64,
    /// Of those, the ones the VANISHED answer names.
    vanished_present: i64,
    vanished_queued: i64,
    /// New UIDs this read found.
    new: i64,
}

impl Held {
    /// What the store holds once the vanished are gone and the new are queued.
    fn after(&self) -> i64 {
        self.present - self.vanished_present + self.queued - self.vanished_queued + self.new
    }
}

/// Whether QRESYNC's VANISHED tells all that left the folder: the server's count is then what
/// the store holds after it. Otherwise the store has a gap (a message it never saw go, a row
/// lost) and the folder's whole UID set is read instead.
fn vanished_tells_all(held: &Held, exists: u32) -> bool {
    held.after() == i64::from(exists)
}

/// The pushes of a plan, one `UID STORE` per distinct change (marking 500 messages read is
/// one command, not 500).
fn group_pushes(changes: &[Change]) -> Vec<FlagPush> {
    let mut groups: Vec<FlagPush> = Vec::new();
    for c in changes {
        if let Change::PushFlags { uid, add, remove, .. } = c {
            match groups.iter_mut().find(|g| g.add == *add && g.remove == *remove) {
                Some(g) => g.uids.push(*uid),
                None => groups.push(FlagPush { uids: vec![*uid], add: add.clone(), remove: remove.clone() }),
            }
        }
    }
    groups
}

/// The plan as one store transaction; returns it, the new messages found and the healed ones.
fn to_apply(local: &LocalFolder, g: Gathered, full: bool) -> (SyncApply, usize, usize) {
    let mut apply = SyncApply { full, uidvalidity: Some(i64::from(g.view.status.uidvalidity)), ..SyncApply::default() };
    let mut found = 0usize;
    let mark = |uid: u32| g.read_marks.get(&uid).copied().flatten();
    for c in g.changes {
        log::debug!("{c}");
        match c {
            Change::Reset { uidvalidity } => {
                log::warn!(
                    "UIDVALIDITY changed ({} -> {uidvalidity}): the folder is resynchronised",
                    local.uidvalidity.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
                );
                apply.reset = Some(i64::from(uidvalidity));
            }
            Change::Queue(v) => {
                found += v.len();
                apply.queue.extend(v.iter().map(queued));
            }
            // Queued from the sizes asked for them (those still on the server).
            Change::Heal(_) => {}
            Change::SetLocalFlags { uid, flags } => apply.set_flags.push((i64::from(uid), flags, mark(uid))),
            Change::PushFlags { uid, result, refused, .. } => {
                if !g.modified.contains(&uid) {
                    apply.set_flags.push((i64::from(uid), result, mark(uid)));
                    if !refused.is_empty() {
                        log::warn!(
                            "UID {uid}: the server cannot keep the keyword(s) {}: not pushed",
                            refused.join(" ")
                        );
                    }
                    apply.refused.push((i64::from(uid), refused));
                }
            }
            Change::VanishedOnServer { uid } => apply.vanished.push(i64::from(uid)),
            Change::Unqueue { uid } => apply.unqueue.push(i64::from(uid)),
            Change::Watermarks { last_seen_uid, highest_modseq } => {
                apply.watermarks = Some((i64::from(last_seen_uid), highest_modseq.map(|m| m as i64)));
            }
        }
    }
    let healed = g.healed.len();
    apply.queue.extend(g.healed.iter().map(queued));
    (apply, found, healed)
}

fn queued(m: &NewMsg) -> Queued {
    Queued { uid: i64::from(m.uid), size: i64::from(m.size), gm_msgid: m.gm_msgid.map(|g| g as i64) }
}

fn to_i64(s: &BTreeSet<u32>) -> Vec<i64> {
    s.iter().map(|u| i64::from(*u)).collect()
}

/// Asks the STATUS of all the account's folders due now in one write (the session asks each
/// folder once a pass, however often this is called, and matches answers by name). INBOX goes
/// first: Dovecot answers it in ~0.3 ms as the first mailbox command of a session and in 4-6
/// ms after any other (LIST or another folder's STATUS; 14,000 messages, measured).
fn ask_status_ahead(ctx: &mut Ctx, account: i64, now: i64) -> Result<(), Failure> {
    let due = due_folders(ctx, account, now)?;
    if due.is_empty() {
        return Ok(());
    }
    let is_inbox = |n: &str| backproc_imap::is_inbox(n.as_bytes());
    let mut names: Vec<&str> = due.iter().map(String::as_str).collect();
    names.sort_by_key(|n| !is_inbox(n)); // stable: INBOX first, the rest as listed
    let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
    if let Err(e) = session.status_ahead(&names) {
        return Err(Stop::Imap(e).fail(ctx, account));
    }
    Ok(())
}

/// Names of the account's folders due for a sync now (as the scheduler decides it).
fn due_folders(ctx: &mut Ctx, account: i64, now: i64) -> Result<Vec<String>, Failure> {
    let iv = Intervals::from_config(ctx.config);
    let low_start = daily_start(&chrono::Local, now, ctx.config.email_bg_lo_folders_sync_start);
    Ok(ctx
        .store
        .account_sched_folders(account, now)?
        .into_iter()
        .filter(|(_, _, f)| folder_due(f, now, &iv, low_start).is_some())
        .map(|(name, _, _)| name)
        .collect())
}

fn local_msg(r: &MsgSyncRow) -> LocalMsg {
    LocalMsg {
        uid: r.uid as u32,
        flags: r.flags.clone(),
        base: r.base.clone(),
        flags_changed: r.flags_changed,
        server_deleted: r.server_deleted,
    }
}

#[cfg(test)]
mod tests {
    use backproc_imap::{Flags, ServerStatus};

    use super::*;

    #[test]
    fn vanished_tells_all_table() {
        let held = |present, queued, vanished_present, vanished_queued, new| Held {
            present,
            queued,
            vanished_present,
            vanished_queued,
            new,
        };
        #[rustfmt::skip]
        let cases: &[(&str, Held, u32, bool)] = &[
            ("nothing vanished, nothing new", held(10, 0, 0, 0, 0), 10, true),
            ("two stored messages vanished", held(10, 0, 2, 0, 0), 8, true),
            ("a queued one vanished before its download", held(10, 3, 0, 1, 0), 12, true),
            ("vanished and new together", held(10, 2, 1, 1, 4), 14, true),
            ("one went unseen: a gap, read the UID set", held(10, 0, 0, 0, 0), 9, false),
            ("the server has one the store lost", held(10, 0, 1, 0, 0), 10, false),
        ];
        for (name, h, exists, want) in cases {
            assert_eq!(vanished_tells_all(h, *exists), *want, "{name}");
        }
    }

    fn gathered(changes: Vec<Change>) -> Gathered {
        let status = ServerStatus { uidvalidity: 7, uidnext: 21, highest_modseq: Some(99), exists: 20 };
        Gathered {
            view: ServerView { status, ..ServerView::default() },
            changes,
            read_marks: BTreeMap::from([(3, Some(77)), (4, None)]),
            modified: BTreeSet::new(),
            healed: Vec::new(),
        }
    }

    /// Each change of a plan becomes its part of the store's transaction; nothing else does.
    #[test]
    fn changes_to_the_store_table() {
        let local =
            LocalFolder { uidvalidity: Some(7), last_seen_uid: 10, highest_modseq: Some(50), last_full_sync: None };
        let seen = Flags::parse("\\Seen");
        let msg = |uid, size| NewMsg { uid, size, gm_msgid: Some(5) };
        let push = |uid, refused: &[&str]| Change::PushFlags {
            uid,
            add: seen.clone(),
            remove: Flags::default(),
            result: seen.clone(),
            refused: refused.iter().map(|k| k.to_string()).collect(),
        };
        let base = SyncApply { full: true, uidvalidity: Some(7), ..SyncApply::default() };
        let q = |uid, size| Queued { uid, size, gm_msgid: Some(5) };
        let mut modified = gathered(vec![push(4, &[])]);
        modified.modified.insert(4);
        let mut healed = gathered(vec![Change::Heal(vec![2, 5])]);
        healed.healed = vec![msg(2, 300)];
        #[rustfmt::skip]
        let cases: Vec<(&str, Gathered, SyncApply, usize, usize)> = vec![
            ("nothing to do: the sync's times only", gathered(vec![]), base.clone(), 0, 0),
            ("UIDVALIDITY changed: the folder is reset", gathered(vec![Change::Reset { uidvalidity: 9 }]),
                SyncApply { reset: Some(9), ..base.clone() }, 0, 0),
            ("new messages are queued and counted", gathered(vec![Change::Queue(vec![msg(11, 100), msg(12, 200)])]),
                SyncApply { queue: vec![q(11, 100), q(12, 200)], ..base.clone() }, 2, 0),
            ("the missing are queued from the sizes the server gave (those it still has)", healed,
                SyncApply { queue: vec![q(2, 300)], ..base.clone() }, 0, 1),
            ("the server's flags, with the change mark the row had when read", gathered(vec![Change::SetLocalFlags { uid: 3, flags: seen.clone() }]),
                SyncApply { set_flags: vec![(3, seen.clone(), Some(77))], ..base.clone() }, 0, 0),
            ("a pushed change is the row's flags now", gathered(vec![push(4, &[])]),
                SyncApply { set_flags: vec![(4, seen.clone(), None)], refused: vec![(4, vec![])], ..base.clone() }, 0, 0),
            ("keywords the server cannot keep are remembered on the row", gathered(vec![push(4, &["$Work"])]),
                SyncApply { set_flags: vec![(4, seen.clone(), None)], refused: vec![(4, vec!["$Work".into()])], ..base.clone() }, 0, 0),
            ("a push the server refused as changed meanwhile: the server's state is kept", modified, base.clone(), 0, 0),
            ("vanished on the server: marked for Sync Delete", gathered(vec![Change::VanishedOnServer { uid: 6 }]),
                SyncApply { vanished: vec![6], ..base.clone() }, 0, 0),
            ("expunged before its download: unqueued", gathered(vec![Change::Unqueue { uid: 13 }]),
                SyncApply { unqueue: vec![13], ..base.clone() }, 0, 0),
            ("the watermarks", gathered(vec![Change::Watermarks { last_seen_uid: 20, highest_modseq: Some(99) }]),
                SyncApply { watermarks: Some((20, Some(99))), ..base.clone() }, 0, 0),
        ];
        for (name, g, want, found, healed) in cases {
            assert_eq!(to_apply(&local, g, true), (want, found, healed), "{name}");
        }
        let recent = to_apply(&local, gathered(vec![]), false).0;
        assert!(!recent.full, "a recent sync is not recorded as a full one");
    }
}
