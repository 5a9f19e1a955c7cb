//! Folder discovery and the Sync job: asks the server what changed, plans, applies.
//! It downloads nothing: new UIDs go to the receive queue.

use std::collections::BTreeSet;
use std::time::Instant;

use backproc_imap::{Change, Flags, LocalFolder, LocalMsg, ServerFlags, ServerView, plan};
use backproc_store::{FolderListing, MsgFlags, SyncApply};

use super::Ctx;
use crate::schedule::{Intervals, daily_start, folder_due};
use crate::sessions::failure_from_imap;
use crate::task::{Failure, FailureKind, Job, Report, Task};

fn to_store(f: Flags) -> MsgFlags {
    MsgFlags { seen: f.seen, answered: f.answered, flagged: f.flagged, draft: f.draft, deleted: f.deleted }
}
fn to_plan(f: MsgFlags) -> Flags {
    Flags { seen: f.seen, answered: f.answered, flagged: f.flagged, draft: f.draft, deleted: f.deleted }
}

/// LIST the account's folders and record them.
pub fn list_folders(ctx: &mut Ctx, task: &Task) -> Result<Report, Failure> {
    let account = task.account.ok_or_else(|| Failure::new(FailureKind::Other, "no account"))?;
    let now = ctx.clock.now();
    // The folders due now are synced right after the listing: ask their STATUS first, INBOX
    // first of all (see `ask_status_ahead`).
    ask_status_ahead(ctx, account, now, None)?;
    let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
    let listed = match session.list_folders() {
        Ok(l) => l,
        Err(e) => {
            ctx.sessions.discard(account);
            return Err(failure_from_imap(e));
        }
    };
    let rows: Vec<FolderListing> = listed
        .into_iter()
        .filter(|f| f.selectable)
        .map(|f| FolderListing {
            name: f.name,
            display_name: f.display_name,
            delimiter: f.delimiter,
            special_use: f.special_use.map(str::to_owned),
        })
        .collect();
    let new = ctx.store.record_folder_list(account, &rows)?;
    if !new.is_empty() {
        log::info!("found {} new folder(s)", new.len());
    }
    // New folders get their initial sync at once, whatever their priority.
    let follow_up = new.iter().map(|&f| Task::new(Job::SyncFull, Some(account), Some(f))).collect();
    Ok(Report { count: new.len() as i64, follow_up })
}

/// Sync one folder: recent (new UIDs) or full (also flags and vanished messages).
pub fn sync_folder(ctx: &mut Ctx, task: &Task, full: bool) -> Result<Report, Failure> {
    let (Some(account), Some(folder_id)) = (task.account, task.folder) else {
        return Err(Failure::new(FailureKind::Other, "sync needs an account and a folder"));
    };
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
    if !ctx.sessions.get(ctx.store, ctx.config, account, now)?.has_status_ahead(&folder.name) {
        ask_status_ahead(ctx, account, now, Some(&folder.name))?;
    }
    let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
    let status = match session.status(&folder.name) {
        Ok(s) => s,
        Err(e) => {
            ctx.sessions.discard(account);
            return Err(failure_from_imap(e));
        }
    };
    let reset = local.uidvalidity.is_some_and(|v| v != status.uidvalidity);
    let has_new = status.uidnext == 0 || status.uidnext > local.last_seen_uid + 1;
    // With CONDSTORE an unchanged HIGHESTMODSEQ and message count mean no flag change and no
    // expunge: the no-change full sync costs one STATUS (and no read of the folder's rows).
    let flags_unchanged = session.caps.condstore
        && local.highest_modseq.is_some()
        && status.highest_modseq == local.highest_modseq
        && holds_all(ctx.store, folder_id, &summary, i64::from(status.exists), 0)?;
    // Pending local flag changes need the flag pass even when the server changed nothing.
    let want_flags = !reset && full && (!flags_unchanged || summary.local_pending) && local.last_seen_uid > 0;
    let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
    let store: &backproc_store::Store = ctx.store;
    let result = (|| -> Result<(ServerView, Vec<Change>, Vec<u32>), Fail> {
        let mut view = ServerView { status, new: Vec::new(), full: None };
        if reset {
            let changes = plan(&local, &[], &[], &view);
            return Ok((view, changes, Vec::new()));
        }
        if has_new || want_flags {
            session.ensure_open(&folder.name, false)?;
        }
        if has_new {
            view.new = session.new_messages(local.last_seen_uid)?;
        }
        let mut pushed = Vec::new();
        // Only the flag pass compares the folder message by message.
        let (mut rows, mut queued) = (Vec::new(), Vec::new());
        if want_flags {
            let last = local.last_seen_uid;
            let since = if session.caps.condstore { local.highest_modseq } else { None };
            // UIDs only grow (RFC 3501 §2.3.1.1) and every UID up to the last seen one was
            // queued here: when the server's count is what we hold plus the new UIDs, nothing
            // we hold was expunged. Then CHANGEDSINCE's answer and the rows it names (and
            // those with a local change waiting) are the whole story: no UID SEARCH of every
            // UID, no read of every row. An expunge (or anything else that upsets the count)
            // takes the full comparison.
            let new_uids: BTreeSet<u32> = view.new.iter().map(|m| m.uid).filter(|u| *u > last).collect();
            let nothing_expunged = since.is_some()
                && holds_all(store, folder_id, &summary, i64::from(view.status.exists), new_uids.len() as i64)?;
            if nothing_expunged {
                let flags = session.changed_flags(last, since)?;
                rows = store.folder_sync_rows_of(folder_id, flags.keys().map(|u| i64::from(*u)))?;
                let present = rows.iter().map(|r| r.uid as u32).collect();
                view.full = Some(ServerFlags { flags, present });
            } else {
                let (flags, present) = session.flags_and_present(last, since)?;
                (rows, queued) = store.folder_sync_rows(folder_id)?;
                view.full = Some(ServerFlags { flags, present });
            }
        } else if full && local.last_seen_uid == 0 {
            view.full = Some(ServerFlags::default());
        }
        let msgs: Vec<LocalMsg> = rows.iter().map(local_msg).collect();
        let q: Vec<u32> = queued.iter().map(|u| *u as u32).collect();
        let changes = plan(&local, &msgs, &q, &view);
        // Push the local flag changes that win (needs a read-write SELECT).
        let pushes: Vec<(u32, Flags)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::PushFlags { uid, flags } => Some((*uid, *flags)),
                _ => None,
            })
            .collect();
        if !pushes.is_empty() {
            session.ensure_open(&folder.name, true)?;
            for (uid, flags) in pushes {
                // UNCHANGEDSINCE our HIGHESTMODSEQ: a concurrent change on the server is not
                // overwritten silently; it wins and is read at the next full sync.
                if session.store_flags(uid, flags, local.highest_modseq)? {
                    pushed.push(uid);
                } else {
                    log::warn!("flags of UID {uid} changed on the server meanwhile: the server's state is kept");
                }
            }
        }
        Ok((view, changes, pushed))
    })();
    let (view, changes, pushed) = match result {
        Ok(v) => v,
        Err(Fail::Imap(e)) => {
            ctx.sessions.discard(account);
            return Err(failure_from_imap(e));
        }
        Err(Fail::Store(e)) => return Err(e.into()),
    };
    let mut apply = SyncApply { full, uidvalidity: Some(view.status.uidvalidity as i64), ..SyncApply::default() };
    let mut found = 0usize;
    for c in changes {
        log::debug!("{c}");
        match c {
            Change::Reset { uidvalidity } => {
                log::warn!(
                    "UIDVALIDITY changed ({} -> {uidvalidity}): the folder is resynchronised",
                    local.uidvalidity.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
                );
                apply.reset = Some(uidvalidity as i64);
            }
            Change::Queue(v) => {
                found += v.len();
                apply.queue.extend(v.iter().map(|m| (m.uid as i64, m.size as i64)));
            }
            Change::SetLocalFlags { uid, flags } => apply.set_flags.push((uid as i64, to_store(flags))),
            Change::PushFlags { uid, .. } => {
                if pushed.contains(&uid) {
                    apply.pushed.push(uid as i64);
                }
            }
            Change::VanishedOnServer { uid } => apply.vanished.push(uid as i64),
            Change::Unqueue { uid } => apply.unqueue.push(uid as i64),
            Change::Watermarks { last_seen_uid, highest_modseq } => {
                apply.watermarks = Some((last_seen_uid as i64, highest_modseq.map(|m| m as i64)));
            }
        }
    }
    let reset = apply.reset.is_some();
    let vanished = !apply.vanished.is_empty();
    ctx.store.apply_sync(folder_id, &apply, now)?;
    log::info!("found {found} new messages in {}s", started.elapsed().as_secs());
    let mut follow_up = Vec::new();
    if found > 0 || summary.queued > 0 {
        follow_up.push(Task::new(Job::Receive, Some(account), Some(folder_id)));
    }
    if vanished {
        // What vanished on the server is deleted here by Sync Delete, now rather than at
        // its next interval (the safety brake applies there).
        follow_up.push(Task::new(Job::SyncDelete, Some(account), Some(folder_id)));
    }
    if reset {
        // Read the folder again from scratch right away.
        follow_up.push(Task::new(Job::SyncFull, Some(account), Some(folder_id)));
    }
    Ok(Report { count: found as i64, follow_up })
}

/// Whether the server's message count `exists` is exactly what we hold, plus `new` UIDs above
/// the last seen one: as UIDs only grow and every one up to the last seen was queued here,
/// nothing we hold was expunged then. `summary.stored` (an index-only count) includes rows
/// already known gone on the server, so it can only make the sum too high, never hide an
/// expunge: only when it is too high is the exact count (a read of every row) needed.
fn holds_all(
    store: &backproc_store::Store,
    folder_id: i64,
    summary: &backproc_store::SyncSummary,
    exists: i64,
    new: i64,
) -> Result<bool, backproc_store::Error> {
    let held = summary.stored + summary.queued + new;
    if exists >= held {
        return Ok(exists == held);
    }
    Ok(exists == store.folder_present_count(folder_id)? + summary.queued + new)
}

/// Asks the STATUS of all the account's folders due now in one write, `current` (the folder
/// being synced, if any) included: one round trip instead of one per folder. INBOX goes
/// first: Dovecot answers it in ~0.3 ms as the first mailbox command of a session and in 4-6
/// ms after any other (LIST or another folder's STATUS; 14,000 messages, measured), and the
/// other folders stay fast behind it. The biggest of the rest (by UIDs, a stand-in for the
/// server's work) is asked on its own right after, and read when its sync comes
/// (`Session::status_ahead`). Nothing when one folder alone is due for its own sync.
fn ask_status_ahead(ctx: &mut Ctx, account: i64, now: i64, current: Option<&str>) -> Result<(), Failure> {
    let due = due_folders(ctx, account, now)?;
    if due.is_empty() || current.is_some() && due.len() == 1 {
        return Ok(());
    }
    let is_inbox = |n: &str| backproc_imap::is_inbox(n.as_bytes());
    let biggest = due.iter().filter(|(n, _)| Some(n.as_str()) != current && !is_inbox(n)).max_by_key(|(_, last)| *last);
    let later: Vec<&str> = biggest.map(|(n, _)| n.as_str()).into_iter().collect();
    let mut names: Vec<&str> = due.iter().map(|(n, _)| n.as_str()).filter(|n| !later.contains(n)).collect();
    names.sort_by_key(|n| !is_inbox(n)); // stable: INBOX first, the rest as listed
    let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
    if let Err(e) = session.status_ahead(&names, &later) {
        ctx.sessions.discard(account);
        return Err(failure_from_imap(e));
    }
    Ok(())
}

/// (name, last seen UID) of the account's folders due for a sync now (as the scheduler
/// decides it), this one included.
fn due_folders(ctx: &mut Ctx, account: i64, now: i64) -> Result<Vec<(String, i64)>, Failure> {
    let iv = Intervals::from_config(ctx.config);
    let low_start = daily_start(&chrono::Local, now, ctx.config.email_bg_lo_folders_sync_start);
    Ok(ctx
        .store
        .account_sched_folders(account, now)?
        .into_iter()
        .filter(|(_, _, f)| folder_due(f, now, &iv, low_start).is_some())
        .map(|(name, last, _)| (name, last))
        .collect())
}

/// What stops a sync half-way: the server (the session is then in an unknown state and is
/// dropped) or the store.
enum Fail {
    Imap(backproc_imap::Error),
    Store(backproc_store::Error),
}
impl From<backproc_imap::Error> for Fail {
    fn from(e: backproc_imap::Error) -> Fail {
        Fail::Imap(e)
    }
}
impl From<backproc_store::Error> for Fail {
    fn from(e: backproc_store::Error) -> Fail {
        Fail::Store(e)
    }
}

fn local_msg(r: &backproc_store::MsgSyncRow) -> LocalMsg {
    LocalMsg {
        uid: r.uid as u32,
        flags: to_plan(r.flags),
        flags_changed: r.flags_changed,
        server_deleted: r.server_deleted,
    }
}
