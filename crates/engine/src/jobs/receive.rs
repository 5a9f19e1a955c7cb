//! Receive and Receive Secondary: download queued UIDs in batches bounded by count and
//! bytes; store each batch and remove its queue entries in one transaction.
//!
//! Two stages overlap: this thread fetches batch N+1 from the server while a writer thread
//! (with its own store connection) parses and commits batch N, so the server, the parser and
//! the disk work at the same time. The channel between them holds one batch: memory stays
//! bounded by about three batches whatever the folder's size.

use std::collections::HashSet;
use std::time::Instant;

use backproc_store::{Lane, MsgFlags, NewMessage, QueueEntry, RetryPolicy, Store};
use crossbeam_channel::bounded;

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

/// One fetched batch on its way to the writer.
struct Fetched {
    entries: usize,
    msgs: Vec<(u32, MsgFlags, Option<i64>, Vec<u8>)>,
    /// Asked for but not returned: expunged on the server before we fetched them.
    gone: Vec<i64>,
}

/// Parses and stores batches until the channel closes; returns messages stored.
fn writer(
    store: &mut Store,
    folder_id: i64,
    rx: crossbeam_channel::Receiver<Fetched>,
    task: &Task,
    total: i64,
    thread: usize,
    clock: crate::Clock,
) -> Result<i64, Failure> {
    let mut received = 0i64;
    let mut done = 0i64;
    for b in rx {
        let msgs: Vec<NewMessage> =
            b.msgs.into_iter().map(|(uid, flags, date, raw)| parse::message(uid as i64, raw, flags, date)).collect();
        received += store.store_received(folder_id, &msgs, &b.gone)? as i64;
        done += b.entries as i64;
        super::record_progress(store, thread, task, done, total, clock.now());
    }
    Ok(received)
}

pub fn receive(ctx: &mut Ctx, task: &Task, lane: Lane) -> Result<Report, Failure> {
    let (Some(account), Some(folder_id)) = (task.account, task.folder) else {
        return Err(Failure::new(FailureKind::Other, "receive needs an account and a folder"));
    };
    let started = Instant::now();
    let folder = ctx.store.folder(folder_id)?;
    let total = ctx.store.receive_queue_len(folder_id, lane)?;
    if total == 0 {
        ctx.store.drop_stale_if_done(folder_id)?;
        return Ok(Report::default());
    }
    let mut writer_store = Store::open(ctx.store.path())?;
    let (tx, rx) = bounded::<Fetched>(1);
    let (clock, thread) = (ctx.clock, ctx.thread);
    let (fetched, written) = std::thread::scope(|s| {
        let mdc: Vec<(String, String)> = ["thread", "account", "folder"]
            .iter()
            .filter_map(|k| log_mdc::get(*k, |v| v.map(|v| (k.to_string(), v.to_owned()))))
            .collect();
        let w = s.spawn(move || {
            log_mdc::extend(mdc);
            writer(&mut writer_store, folder_id, rx, task, total, thread, clock)
        });
        let fetched = fetch_all(ctx, account, folder_id, &folder.name, lane, tx);
        let written = w.join().unwrap_or_else(|_| Err(Failure::new(FailureKind::Panic, "the receive writer panicked")));
        (fetched, written)
    });
    let received = written?;
    ctx.store.drop_stale_if_done(folder_id)?;
    log::info!("received {received} new messages in {}s", started.elapsed().as_secs());
    fetched?;
    Ok(Report { count: received, follow_up: Vec::new() })
}

/// Fetches every due batch and hands it to the writer; on a server error counts one failed
/// attempt for the batch that failed (batches already handed over are stored).
///
/// The FETCH of the next batch is sent before the current one is read, so the server goes
/// straight from one answer to the next instead of waiting a round trip and our queue read
/// for each batch (about 1.5 ms a batch, a tenth of an initial sync). Not after a UIDVALIDITY
/// change: then each batch first asks for headers, which cannot overtake a FETCH in flight.
fn fetch_all(
    ctx: &mut Ctx,
    account: i64,
    folder_id: i64,
    folder_name: &str,
    lane: Lane,
    tx: crossbeam_channel::Sender<Fetched>,
) -> Result<(), Failure> {
    let policy = policy(ctx.config);
    let stale = ctx.store.has_stale(folder_id)?;
    let mut after_uid = 0i64;
    // A batch whose FETCH is on the wire behind the one being read: (entries, UIDs, tag).
    let mut ahead: Option<(Vec<QueueEntry>, Vec<u32>, String)> = None;
    loop {
        let now = ctx.clock.now();
        let (batch, sent) = match ahead.take() {
            Some((batch, uids, tag)) => (batch, Some((uids, tag))),
            None => match next_batch(ctx.store, ctx.config, ctx.clock, folder_id, lane, &mut after_uid, &policy)? {
                Some(batch) => (batch, None),
                None => return Ok(()),
            },
        };
        let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
        let mut msgs = Vec::with_capacity(batch.len());
        // A store error while looking ahead is reported once this batch is handed over.
        let mut ahead_failed = None;
        let result = (|| -> Result<Vec<i64>, backproc_imap::Error> {
            let (uids, tag) = match sent {
                Some((uids, tag)) => (uids, Some(tag)),
                None => {
                    session.ensure_open(folder_name, false)?;
                    let mut uids: Vec<u32> = batch.iter().map(|e| e.uid as u32).collect();
                    // After a UIDVALIDITY change, messages we already have are re-keyed, not
                    // downloaded again (matched by Message-ID and size).
                    if stale {
                        let mut rematched = Vec::new();
                        for (uid, size, header) in session.fetch_headers(&uids)? {
                            if let Some(mid) = parse::message_id(&header)
                                && ctx.store.rematch_stale(folder_id, uid as i64, &mid, size as i64).unwrap_or(false)
                            {
                                rematched.push(uid);
                            }
                        }
                        uids.retain(|u| !rematched.contains(u));
                    }
                    let tag = session.fetch_bodies_send(&uids)?;
                    (uids, tag)
                }
            };
            let Some(tag) = tag else { return Ok(Vec::new()) };
            if !stale {
                match next_batch(ctx.store, ctx.config, ctx.clock, folder_id, lane, &mut after_uid, &policy) {
                    Ok(Some(next)) => {
                        let next_uids: Vec<u32> = next.iter().map(|e| e.uid as u32).collect();
                        if let Some(t) = session.fetch_bodies_send(&next_uids)? {
                            ahead = Some((next, next_uids, t));
                        }
                    }
                    Ok(None) => {}
                    Err(f) => ahead_failed = Some(f),
                }
            }
            let max_size = ctx.config.email_bg_max_message_size as usize;
            session.fetch_bodies_read(&tag, max_size, ahead.is_some(), |f| {
                let flags = MsgFlags {
                    seen: f.flags.seen,
                    answered: f.flags.answered,
                    flagged: f.flags.flagged,
                    draft: f.flags.draft,
                    deleted: f.flags.deleted,
                };
                msgs.push((f.uid, flags, f.internal_date, f.raw));
            })?;
            let got: HashSet<u32> = msgs.iter().map(|m| m.0).collect();
            Ok(uids.iter().filter(|u| !got.contains(u)).map(|u| *u as i64).collect())
        })();
        match result {
            Ok(gone) => {
                if tx.send(Fetched { entries: batch.len(), msgs, gone }).is_err() {
                    // The writer stopped (its error is reported by the caller). A FETCH still
                    // in flight would be read by the session's next command: drop the session.
                    if ahead.is_some() {
                        ctx.sessions.discard(account);
                    }
                    return Ok(());
                }
                if let Some(f) = ahead_failed {
                    return Err(f);
                }
            }
            Err(e) => {
                // A FETCH still in flight dies with the session; its batch was not tried.
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
                return Err(f);
            }
        }
    }
}

/// The next due batch after `after_uid` (which it advances), bounded by count and bytes;
/// messages above EMAIL_BG_MAX_MESSAGE_SIZE are never downloaded: they fail until final.
fn next_batch(
    store: &mut Store,
    config: &backproc_config::Config,
    clock: crate::Clock,
    folder_id: i64,
    lane: Lane,
    after_uid: &mut i64,
    policy: &RetryPolicy,
) -> Result<Option<Vec<QueueEntry>>, Failure> {
    let max_count = config.email_bg_receive_batch_messages as usize;
    let max_bytes = config.email_bg_receive_batch_bytes as i64;
    let max_size = config.email_bg_max_message_size as i64;
    loop {
        let now = clock.now();
        let batch: Vec<QueueEntry> = store.receive_batch(folder_id, lane, now, *after_uid, max_count, max_bytes)?;
        let Some(last) = batch.last() else { return Ok(None) };
        *after_uid = last.uid;
        let (too_big, batch): (Vec<_>, Vec<_>) = batch.into_iter().partition(|e| e.size > max_size);
        if !too_big.is_empty() {
            let ids: Vec<i64> = too_big.iter().map(|e| e.id).collect();
            let msg = format!("message larger than EMAIL_BG_MAX_MESSAGE_SIZE ({max_size} bytes)");
            log::error!("Not enough memory to process the message: {} message(s) skipped: {msg}", ids.len());
            store.receive_failed(&ids, &msg, now, policy)?;
        }
        if !batch.is_empty() {
            return Ok(Some(batch));
        }
    }
}
