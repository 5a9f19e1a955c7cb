//! Receive and Receive Secondary: download queued UIDs in batches bounded by count and
//! bytes, store each batch and remove its queue entries in one transaction.

use std::collections::HashSet;
use std::time::Instant;

use backproc_store::{Lane, MsgFlags, RetryPolicy};

use super::Ctx;
use crate::parse;
use crate::sessions::failure_from_imap;
use crate::task::{Failure, FailureKind, Report, Task};

pub fn policy(c: &backproc_config::Config) -> RetryPolicy {
    RetryPolicy {
        backoff_base: c.bg_backoff_base as i64,
        backoff_max: c.bg_backoff_max as i64,
        secondary_after: c.email_bg_receive_max_attempts as i64,
        final_after: c.email_bg_receive_final_attempts as i64,
    }
}

pub fn receive(ctx: &mut Ctx, task: &Task, lane: Lane) -> Result<Report, Failure> {
    let (Some(account), Some(folder_id)) = (task.account, task.folder) else {
        return Err(Failure::new(FailureKind::Other, "receive needs an account and a folder"));
    };
    let started = Instant::now();
    let folder = ctx.store.folder(folder_id)?;
    let policy = policy(ctx.config);
    let max_count = ctx.config.email_bg_receive_batch_messages as usize;
    let max_bytes = ctx.config.email_bg_receive_batch_bytes as i64;
    let max_size = ctx.config.email_bg_max_message_size as i64;
    let total = ctx.store.receive_queue_len(folder_id, lane)?;
    let mut received = 0i64;
    let mut done = 0i64;
    let mut failed_ids = HashSet::new();
    loop {
        let now = ctx.clock.now();
        let batch: Vec<_> = ctx
            .store
            .receive_batch(folder_id, lane, now, max_count, max_bytes)?
            .into_iter()
            .filter(|e| !failed_ids.contains(&e.id))
            .collect();
        if batch.is_empty() {
            break;
        }
        // Messages above the memory limit are never downloaded; they fail until final.
        let (too_big, batch): (Vec<_>, Vec<_>) = batch.into_iter().partition(|e| e.size > max_size);
        if !too_big.is_empty() {
            let ids: Vec<i64> = too_big.iter().map(|e| e.id).collect();
            failed_ids.extend(ids.iter().copied());
            let msg = format!("message larger than EMAIL_BG_MAX_MESSAGE_SIZE ({max_size} bytes)");
            log::error!("Not enough memory to process the message: {} message(s) skipped: {msg}", ids.len());
            ctx.store.receive_failed(&ids, &msg, now, &policy)?;
            if batch.is_empty() {
                continue;
            }
        }
        let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
        let mut msgs = Vec::with_capacity(batch.len());
        let mut fetch = || -> Result<Vec<i64>, backproc_imap::Error> {
            session.ensure_open(&folder.name, false)?;
            let mut uids: Vec<u32> = batch.iter().map(|e| e.uid as u32).collect();
            // After a UIDVALIDITY change, messages we already have are re-keyed, not
            // downloaded again (matched by Message-ID and size).
            let mut rematched = Vec::new();
            if ctx.store.has_stale(folder_id).unwrap_or(false) {
                for (uid, size, header) in session.fetch_headers(&uids)? {
                    if let Some(mid) = parse::message_id(&header)
                        && ctx.store.rematch_stale(folder_id, uid as i64, &mid, size as i64).unwrap_or(false)
                    {
                        rematched.push(uid);
                    }
                }
                uids.retain(|u| !rematched.contains(u));
            }
            session.fetch_bodies(&uids, |f| {
                let flags = MsgFlags {
                    seen: f.flags.seen,
                    answered: f.flags.answered,
                    flagged: f.flags.flagged,
                    draft: f.flags.draft,
                    deleted: f.flags.deleted,
                };
                msgs.push(parse::message(f.uid as i64, f.raw, flags, f.internal_date));
            })?;
            let got: HashSet<i64> = msgs.iter().map(|m| m.uid).collect();
            // Asked for but not returned: expunged on the server before we fetched it.
            Ok(uids.iter().map(|u| *u as i64).filter(|u| !got.contains(u)).collect())
        };
        let gone = match fetch() {
            Ok(g) => g,
            Err(e) => {
                ctx.sessions.discard(account);
                let f = failure_from_imap(e);
                let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
                let moves = ctx.store.receive_failed(&ids, &f.to_string(), now, &policy)?;
                if moves.to_secondary > 0 {
                    log::warn!(
                        "{} message(s) failed more than {} times: moved to the secondary queue",
                        moves.to_secondary,
                        policy.secondary_after
                    );
                }
                if moves.failed > 0 {
                    log::error!("{} message(s) failed more than {} times: given up", moves.failed, policy.final_after);
                }
                log::info!("received {received} new messages in {}s", started.elapsed().as_secs());
                return Err(f);
            }
        };
        received += ctx.store.store_received(folder_id, &msgs, &gone)? as i64;
        done += batch.len() as i64;
        ctx.progress(task, done, total);
    }
    ctx.store.drop_stale_if_done(folder_id)?;
    log::info!("received {received} new messages in {}s", started.elapsed().as_secs());
    Ok(Report { count: received, follow_up: Vec::new() })
}
