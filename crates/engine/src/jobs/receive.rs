//! Receive and Receive Secondary: download queued UIDs in batches bounded by count and
//! bytes; store each batch and remove its queue entries in one transaction.
//!
//! Two stages overlap: this thread fetches batch N+1 from the server while a writer thread
//! (with its own store connection) parses and commits batch N, so the server, the parser and
//! the disk work at the same time. The channel between them holds one batch: memory stays
//! bounded by about three batches whatever the folder's size.
//!
//! Nothing asked for is ever dropped unseen: a UID the server did not return is checked with
//! a UID SEARCH once nothing is in flight, and only one the server no longer has leaves the
//! queue; one that came without a body (`BODY[] NIL`) stays queued with an attempt counted
//! and the reason. Bodies are stored only under the UIDVALIDITY the folder's EXAMINE reported.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use backproc_store::{Lane, NewMessage, QueueEntry, ReceivePolicy, Store};
use crossbeam_channel::bounded;

use super::{Ctx, Stop};
use crate::parse;
use crate::sessions::SessionPool;
use crate::task::{Failure, FailureKind, FolderOf, Report, Task};

pub fn policy(c: &backproc_config::Config) -> ReceivePolicy {
    ReceivePolicy {
        backoff: crate::schedule::backoff(c),
        secondary_after: c.email_bg_receive_max_attempts as i64,
        final_after: c.email_bg_receive_final_attempts as i64,
    }
}

/// One fetched batch on its way to the writer.
struct Fetched {
    entries: usize,
    msgs: Vec<backproc_imap::Fetched>,
    /// X-GM-MSGID of the batch's UIDs that have one (Gmail), from their queue entries.
    gm_msgids: HashMap<u32, i64>,
}

/// Parses and stores batches until the channel closes; returns messages stored.
fn writer(
    store: &mut Store,
    folder_id: i64,
    rx: crossbeam_channel::Receiver<Fetched>,
    task: &Task,
    total: i64,
    worker: Option<usize>,
    clock: crate::Clock,
) -> Result<i64, Failure> {
    let mut received = 0i64;
    let mut done = 0i64;
    for b in rx {
        let msgs: Vec<NewMessage> = b
            .msgs
            .into_iter()
            .map(|f| {
                let gm_msgid = b.gm_msgids.get(&f.uid).copied();
                // Stored with the row: the same message under another label is then linked to
                // this body (`link_known_bodies`), not downloaded again.
                NewMessage { gm_msgid, ..parse::message(i64::from(f.uid), f.raw, f.flags, f.internal_date) }
            })
            .collect();
        received += store.store_received(folder_id, &msgs, &[])? as i64;
        done += b.entries as i64;
        super::record_progress(store, worker, task, done, total, clock.now());
    }
    Ok(received)
}

pub fn receive(ctx: &mut Ctx, task: &Task, at: FolderOf, lane: Lane) -> Result<Report, Failure> {
    let FolderOf { account, folder: folder_id } = at;
    let started = Instant::now();
    let folder = ctx.store.folder(folder_id)?;
    let total = ctx.store.receive_queue_len(folder_id, lane)?;
    if total == 0 {
        ctx.store.drop_stale_if_done(folder_id)?;
        return Ok(Report::default());
    }
    let mut writer_store = Store::open(ctx.store.path())?;
    // Held until the writer has stored what this receive fetched.
    let mut claims = Claims { pool: ctx.sessions.pool().clone(), account, held: Vec::new() };
    let (tx, rx) = bounded::<Fetched>(1);
    let (clock, worker) = (ctx.clock, ctx.worker);
    let (fetched, written) = std::thread::scope(|s| {
        let mdc: Vec<(String, String)> = ["thread", "account", "folder"]
            .iter()
            .filter_map(|k| log_mdc::get(*k, |v| v.map(|v| (k.to_string(), v.to_owned()))))
            .collect();
        let w = s.spawn(move || {
            log_mdc::extend(mdc);
            writer(&mut writer_store, folder_id, rx, task, total, worker, clock)
        });
        let fetched = fetch_all(ctx, account, folder_id, &folder, lane, &mut claims, tx);
        let written = w.join().unwrap_or_else(|_| Err(Failure::new(FailureKind::Panic, "the receive writer panicked")));
        (fetched, written)
    });
    let received = written?;
    let outcome = fetched?;
    // What was asked and not returned: gone from the server, or held back by it.
    let linked = outcome.linked;
    if !outcome.missing.is_empty() {
        recheck_missing(ctx, account, folder_id, &outcome.missing, lane)?;
    }
    ctx.store.drop_stale_if_done(folder_id)?;
    log::info!("received {received} new messages in {}s", started.elapsed().as_secs());
    let follow_up = if outcome.uidvalidity_changed { vec![Task::SyncFull(at)] } else { Vec::new() };
    Ok(Report { count: received + linked, follow_up, ..Report::default() })
}

/// The Gmail bodies this receive downloads (`SessionPool::claim_bodies`), released when the
/// receive ends: by then the writer has stored them, and the same message's rows in other
/// label folders are linked to them at those folders' next receive.
struct Claims {
    pool: Arc<SessionPool>,
    account: i64,
    held: Vec<i64>,
}

impl Claims {
    /// Claims these X-GM-MSGIDs; returns those another receive of the account is downloading.
    fn claim(&mut self, gm_msgids: &[i64]) -> HashSet<i64> {
        let elsewhere = self.pool.claim_bodies(self.account, gm_msgids);
        self.held.extend(gm_msgids.iter().filter(|g| !elsewhere.contains(g)));
        elsewhere
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        self.pool.release_bodies(self.account, self.held.drain(..));
    }
}

/// What the fetch stage leaves for after the writer: UIDs asked and not returned.
#[derive(Default)]
struct FetchOutcome {
    missing: Vec<QueueEntry>,
    linked: i64,
    uidvalidity_changed: bool,
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
    folder: &backproc_store::FolderRow,
    lane: Lane,
    claims: &mut Claims,
    tx: crossbeam_channel::Sender<Fetched>,
) -> Result<FetchOutcome, Failure> {
    let policy = policy(ctx.config);
    let stale = ctx.store.has_stale(folder_id)?;
    let mut outcome = FetchOutcome::default();
    let now = ctx.clock.now();
    let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
    if let Err(e) = session.deflate_for_download() {
        return Err(Stop::Imap(e).fail(ctx, account));
    }
    let selected = match session.ensure_selected(&folder.name, false) {
        Ok(s) => s,
        Err(e) => return Err(Stop::Imap(e).fail(ctx, account)),
    };
    if folder.uidvalidity != Some(i64::from(selected.uidvalidity)) {
        // The queued UIDs belong to another generation of the folder: nothing is fetched
        // under them; the full sync resets the folder (and re-matches what we have).
        log::warn!(
            "UIDVALIDITY is {} on the server, {:?} in the store: nothing received; the folder is resynchronised",
            selected.uidvalidity,
            folder.uidvalidity
        );
        outcome.uidvalidity_changed = true;
        return Ok(outcome);
    }
    let mut after_uid = 0i64;
    // A batch whose FETCH is on the wire behind the one being read.
    let mut ahead: Option<(Vec<QueueEntry>, backproc_imap::Ticket)> = None;
    loop {
        let (batch, sent) = match ahead.take() {
            Some((batch, ticket)) => (batch, Some(ticket)),
            None => match next_batch(ctx, folder_id, lane, &mut after_uid, &policy, &mut outcome.linked, claims)? {
                Some(batch) => (batch, None),
                None => return Ok(outcome),
            },
        };
        let mut msgs = Vec::with_capacity(batch.len());
        // A store error while looking ahead is reported once this batch is handed over.
        let mut ahead_failed = None;
        let mut asked: Vec<QueueEntry> = batch.clone();
        let result = fetch_one(ctx, account, folder_id, stale, sent, &mut asked, &mut msgs, |ctx| {
            if stale {
                return Ok(None);
            }
            match next_batch(ctx, folder_id, lane, &mut after_uid, &policy, &mut outcome.linked, claims) {
                Ok(next) => Ok(next.filter(|n| !n.is_empty())),
                Err(f) => {
                    ahead_failed = Some(f);
                    Ok(None)
                }
            }
        });
        match result {
            Ok((report, next)) => {
                ahead = next;
                let entries = asked.len();
                let gm_msgids = asked.iter().filter_map(|e| Some((e.uid as u32, e.gm_msgid?))).collect();
                if tx.send(Fetched { entries, msgs, gm_msgids }).is_err() {
                    // The writer stopped (its error is reported by the caller). A FETCH still
                    // in flight would be read by the session's next command: drop the session.
                    if ahead.is_some() {
                        ctx.sessions.discard(account);
                    }
                    return Ok(outcome);
                }
                let by_uid = |uids: &[u32]| -> Vec<QueueEntry> {
                    asked.iter().filter(|e| uids.contains(&(e.uid as u32))).copied().collect()
                };
                if !report.no_body.is_empty() {
                    let ids: Vec<i64> = by_uid(&report.no_body).iter().map(|e| e.id).collect();
                    log::warn!("the server sent no body for {} message(s) (BODY[] NIL): they stay queued", ids.len());
                    note_failed(ctx, &ids, "the server sent no body for the message (BODY[] NIL)", &policy)?;
                }
                outcome.missing.extend(by_uid(&report.missing));
                if let Some(f) = ahead_failed {
                    return Err(f);
                }
            }
            Err(stop) => {
                // A FETCH still in flight dies with the session.
                ctx.sessions.discard(account);
                // The server's error counts an attempt of the batch; the store's (a full
                // disk) or a sign-in's is not the messages' doing.
                let server = matches!(stop, Stop::Imap(_));
                let f = stop.fail(ctx, account);
                if server {
                    let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
                    note_failed(ctx, &ids, &f.to_string(), &policy)?;
                }
                return Err(f);
            }
        }
    }
}

/// A batch whose FETCH is on the wire.
type Ahead = (Vec<QueueEntry>, backproc_imap::Ticket);

/// One batch: its FETCH (sent now unless `sent`), the next batch's FETCH sent behind it
/// (`look_ahead` gives it), then this one's answer read into `msgs`.
#[allow(clippy::too_many_arguments)]
fn fetch_one(
    ctx: &mut Ctx,
    account: i64,
    folder_id: i64,
    stale: bool,
    sent: Option<backproc_imap::Ticket>,
    asked: &mut Vec<QueueEntry>,
    msgs: &mut Vec<backproc_imap::Fetched>,
    mut look_ahead: impl FnMut(&mut Ctx) -> Result<Option<Vec<QueueEntry>>, Failure>,
) -> Result<(backproc_imap::FetchReport, Option<Ahead>), Stop> {
    let now = ctx.clock.now();
    let ticket = match sent {
        Some(t) => t,
        None => {
            let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
            // After a UIDVALIDITY change, messages we already have are re-keyed, not
            // downloaded again (matched by Message-ID and size).
            if stale {
                let uids: Vec<u32> = asked.iter().map(|e| e.uid as u32).collect();
                let mut rematched = HashSet::new();
                for (uid, size, header, flags) in session.fetch_headers(&uids)? {
                    // The row takes the flags the message has now (the old generation's may differ).
                    // A store error is the task's error: taken for "no match", it would
                    // download the message again beside the row that holds it.
                    if let Some(mid) = parse::message_id(&header)
                        && ctx.store.rematch_stale(folder_id, i64::from(uid), &mid, i64::from(size), flags.as_ref())?
                    {
                        rematched.insert(i64::from(uid));
                    }
                }
                asked.retain(|e| !rematched.contains(&e.uid));
            }
            if asked.is_empty() {
                return Ok((backproc_imap::FetchReport::default(), None));
            }
            send(session, asked)?
        }
    };
    let next = match look_ahead(ctx)? {
        Some(next) => {
            let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
            let t = send(session, &next)?;
            Some((next, t))
        }
        None => None,
    };
    let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
    let report = session.read_fetch(ticket, |f| msgs.push(f))?;
    Ok((report, next))
}

fn send(
    session: &mut backproc_imap::Session,
    batch: &[QueueEntry],
) -> Result<backproc_imap::Ticket, backproc_imap::Error> {
    let uids: Vec<u32> = batch.iter().map(|e| e.uid as u32).collect();
    let bytes: i64 = batch.iter().map(|e| e.size.max(0)).sum();
    session.queue_fetch(&uids, bytes as u64)
}

/// Counts a failed attempt for each entry, moving those past the limits on.
fn note_failed(ctx: &mut Ctx, ids: &[i64], why: &str, policy: &ReceivePolicy) -> Result<(), Failure> {
    let moves = ctx.store.receive_failed(ids, why, ctx.clock.now(), policy)?;
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
    Ok(())
}

/// UIDs a FETCH did not return: those the server still has (a UID SEARCH says) stay queued
/// with an attempt and the reason; only those it no longer has leave the queue.
fn recheck_missing(
    ctx: &mut Ctx,
    account: i64,
    folder_id: i64,
    missing: &[QueueEntry],
    _lane: Lane,
) -> Result<(), Failure> {
    let policy = policy(ctx.config);
    let now = ctx.clock.now();
    let uids: Vec<u32> = missing.iter().map(|e| e.uid as u32).collect();
    let session = ctx.sessions.get(ctx.store, ctx.config, account, now)?;
    let still = match session.search_uids(&uids) {
        Ok(s) => s,
        Err(e) => return Err(Stop::Imap(e).fail(ctx, account)),
    };
    let (kept, gone): (Vec<&QueueEntry>, Vec<&QueueEntry>) =
        missing.iter().partition(|e| still.contains(&(e.uid as u32)));
    if !gone.is_empty() {
        log::debug!("{} queued message(s) were expunged on the server before their download", gone.len());
        ctx.store.unqueue(folder_id, &gone.iter().map(|e| e.uid).collect::<Vec<_>>())?;
    }
    if !kept.is_empty() {
        log::warn!("the server did not return {} message(s) it still has: they stay queued", kept.len());
        let ids: Vec<i64> = kept.iter().map(|e| e.id).collect();
        note_failed(ctx, &ids, "the server did not return the message it lists", &policy)?;
    }
    Ok(())
}

/// The next due batch after `after_uid` (which it advances), bounded by count and bytes;
/// messages above EMAIL_BG_MAX_MESSAGE_SIZE are never downloaded: they fail until final. On
/// Gmail, a message the account already stores under another label is linked, not fetched.
fn next_batch(
    ctx: &mut Ctx,
    folder_id: i64,
    lane: Lane,
    after_uid: &mut i64,
    policy: &ReceivePolicy,
    linked_count: &mut i64,
    claims: &mut Claims,
) -> Result<Option<Vec<QueueEntry>>, Failure> {
    let config = ctx.config;
    let max_count = config.email_bg_receive_batch_messages as usize;
    let max_bytes = config.email_bg_receive_batch_bytes as i64;
    let max_size = config.email_bg_max_message_size as i64;
    loop {
        let now = ctx.clock.now();
        let batch: Vec<QueueEntry> = ctx.store.receive_batch(folder_id, lane, now, *after_uid, max_count, max_bytes)?;
        let Some(last) = batch.last() else { return Ok(None) };
        *after_uid = last.uid;
        let (too_big, mut batch): (Vec<_>, Vec<_>) = batch.into_iter().partition(|e| e.size > max_size);
        if !too_big.is_empty() {
            let ids: Vec<i64> = too_big.iter().map(|e| e.id).collect();
            let msg = format!("message larger than EMAIL_BG_MAX_MESSAGE_SIZE ({max_size} bytes)");
            log::error!("Not enough memory to process the message: {} message(s) skipped: {msg}", ids.len());
            ctx.store.receive_failed(&ids, &msg, now, policy)?;
        }
        let known: Vec<(i64, i64)> = batch.iter().filter_map(|e| e.gm_msgid.map(|g| (e.uid, g))).collect();
        if !known.is_empty() {
            let linked = ctx.store.link_known_bodies(folder_id, &known)?;
            if !linked.is_empty() {
                log::debug!("{} message(s) already stored under another label: linked, not downloaded", linked.len());
                *linked_count += linked.len() as i64;
                batch.retain(|e| !linked.contains(&e.uid));
            }
            // The same message under another label, on its way now on another connection:
            // left queued, and linked to that body at this folder's next receive.
            let gm_msgids: Vec<i64> = batch.iter().filter_map(|e| e.gm_msgid).collect();
            let elsewhere = claims.claim(&gm_msgids);
            if !elsewhere.is_empty() {
                log::debug!(
                    "{} message(s) are being downloaded under another label now: linked at the next receive",
                    elsewhere.len()
                );
                batch.retain(|e| e.gm_msgid.is_none_or(|g| !elsewhere.contains(&g)));
            }
        }
        if !batch.is_empty() {
            return Ok(Some(batch));
        }
    }
}
