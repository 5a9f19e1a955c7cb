//! Sync Delete, Purge Deleted and Clean Mailboxes: deletions both ways, never more than the
//! safety brake allows without an administrator's confirmation.

use std::time::Instant;

use backproc_store::SpecialUse;

use super::{Ctx, Stop};
use crate::task::{Failure, FailureKind, FolderOf, Report, Task};

/// Whether deleting `count` of a folder's `total` messages in one run needs confirmation:
/// more than `percent` % of the folder and at least `min` messages. Mass deletion by
/// mistake (a server glitch, an emptied folder, a UIDVALIDITY mix-up) is the worst thing a
/// mail sync can do.
pub fn brake(count: usize, total: i64, percent: u64, min: u64) -> bool {
    count as u64 >= min.max(1) && (count as u64) * 100 > (total.max(0) as u64) * percent
}

pub fn sync_delete(ctx: &mut Ctx, at: FolderOf) -> Result<Report, Failure> {
    let FolderOf { account, folder: folder_id } = at;
    let started = Instant::now();
    let now = ctx.clock.now();
    let folder = ctx.store.folder(folder_id)?;
    if folder.gone || folder.uidvalidity.is_none() {
        return Ok(Report::default());
    }
    let trash = ctx
        .store
        .account_folders(account)?
        .into_iter()
        .find(|f| f.special_use == Some(SpecialUse::Trash) && !f.gone)
        .map(|f| f.name);
    let last = folder.last_seen_uid as u32;
    // What vanished on the server is recorded by the full sync (under one UIDVALIDITY only).
    // The server is contacted here only when there is local work for it; then its present
    // UIDs are read again, so a message deleted on both sides is one clean deletion.
    let pending = ctx.store.deletion_work(folder_id)?;
    if !pending.local.is_empty() || !pending.moves.is_empty() {
        let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
        let present = (|| {
            let st = session.ensure_selected(&folder.name, false)?;
            if folder.uidvalidity != Some(i64::from(st.uidvalidity)) {
                return Ok(None);
            }
            session.present_uids(last).map(Some)
        })();
        let present = match present {
            Ok(p) => p,
            Err(e) => return Err(Stop::Imap(e).fail(ctx, account)),
        };
        let Some(present) = present else {
            log::warn!("UIDVALIDITY changed: Sync Delete waits for the folder's resync");
            return Ok(Report::default());
        };
        let (rows, _) = ctx.store.folder_sync_rows(folder_id)?;
        let vanished: Vec<i64> =
            rows.iter().filter(|r| !r.server_deleted && !present.contains(&(r.uid as u32))).map(|r| r.uid).collect();
        ctx.store.mark_server_deleted(folder_id, &vanished, now)?;
    }
    let w = ctx.store.deletion_work(folder_id)?;
    let (pct, min) = (ctx.config.email_bg_delete_brake_percent, ctx.config.email_bg_delete_brake_min);
    for (side, n) in [("on the server", w.local.len()), ("locally", w.server.len())] {
        if brake(n, w.total, pct, min) && !w.confirmed {
            let msg = format!(
                "safety brake: this run would delete {n} of {} messages {side} (more than {pct}% and at least {min}); \
                 nothing was deleted. If this is intended, run `backproc mail confirm-deletions --folder {folder_id}`",
                w.total
            );
            log::error!("{msg}");
            return Err(Failure::new(FailureKind::Other, msg));
        }
    }
    // Local deletions → the server: to Trash when there is one (and this is not it).
    let local: Vec<u32> = w.local.iter().map(|u| *u as u32).collect();
    let mut done_local = Vec::new();
    let mut kept_flagged = false;
    let result = (|| -> Result<(), Stop> {
        if local.is_empty() && w.moves.is_empty() {
            return Ok(());
        }
        let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
        // Read-write, and under the UIDVALIDITY the UIDs were read with: never a deletion in
        // another generation of the folder.
        let st = session.ensure_selected(&folder.name, true)?;
        if folder.uidvalidity != Some(i64::from(st.uidvalidity)) {
            let why = "UIDVALIDITY changed: Sync Delete waits for the folder's resync";
            return Err(Failure::new(FailureKind::Protocol, why).into());
        }
        if !local.is_empty() {
            match &trash {
                Some(t) if *t != folder.name => session.move_uids(&local, t)?,
                _ => kept_flagged = !session.delete_uids(&local)?,
            }
            done_local.extend(w.local.iter().copied());
        }
        for (uid, dest) in &w.moves {
            session.move_uids(&[*uid as u32], dest)?;
            done_local.push(*uid);
        }
        Ok(())
    })();
    if let Err(stop) = result {
        return Err(stop.fail(ctx, account));
    }
    if kept_flagged {
        log::warn!(
            "the server lacks UIDPLUS and other clients' messages are flagged \\Deleted: ours stay flagged, not expunged"
        );
    }
    let mut synced = done_local.clone();
    synced.extend(&w.server);
    synced.extend(&w.both);
    ctx.store.mark_deletion_synced(folder_id, &synced, now)?;
    log::info!(
        "deleted {} messages on server, {} locally in {}s",
        done_local.len(),
        w.server.len() + w.both.len(),
        started.elapsed().as_secs()
    );
    // Rows whose deletion is now agreed go at once (Purge Deleted also runs on its interval).
    let follow_up = if synced.is_empty() { Vec::new() } else { vec![Task::PurgeDeleted] };
    Ok(Report { count: synced.len() as i64, follow_up, ..Report::default() })
}

pub fn purge_deleted(ctx: &mut Ctx) -> Result<Report, Failure> {
    let started = Instant::now();
    let n = ctx.store.purge_deleted()?;
    log::info!("purged {n} deleted messages in {}s", started.elapsed().as_secs());
    Ok(Report { count: n as i64, ..Report::default() })
}

/// Marks messages older than the account's keep-days as deleted, then hands the folders to
/// Sync Delete (the same path as a user's deletion, brake included).
pub fn clean_mailboxes(ctx: &mut Ctx, account: i64) -> Result<Report, Failure> {
    let a = ctx.store.account(account)?;
    let Some(days) = a.keep_days.filter(|d| *d > 0) else { return Ok(Report::default()) };
    let now = ctx.clock.now();
    let marked = ctx.store.mark_expired(account, now - days * 86_400, ctx.config.email_bg_clean_drafts, now)?;
    let total: usize = marked.iter().map(|(_, n)| n).sum();
    log::info!("marked {total} messages older than {days} days for deletion in {} folder(s)", marked.len());
    let follow_up = marked.iter().map(|(f, _)| Task::SyncDelete(FolderOf { account, folder: *f })).collect();
    Ok(Report { count: total as i64, follow_up, ..Report::default() })
}

#[cfg(test)]
mod tests {
    use super::brake;

    #[test]
    fn the_brake_needs_both_the_share_and_the_count() {
        assert!(!brake(0, 0, 20, 50));
        assert!(!brake(49, 49, 20, 50), "under the minimum count");
        assert!(brake(50, 200, 20, 50), "25% of 200");
        assert!(!brake(50, 250, 20, 50), "exactly 20% is allowed");
        assert!(!brake(60, 1000, 20, 50), "6%");
        assert!(brake(200, 200, 20, 50), "an emptied folder");
        assert!(brake(1, 1, 20, 0), "min 0 still needs one message");
        assert!(!brake(2, 4, 20, 50), "keep-days cleaning of a small folder");
    }
}
