//! Send and Send Secondary: claim due outbox entries of one account, deliver them over one
//! SMTP connection, record each delivery record (fenced by the claim's lease), then append
//! what was sent to the account's Sent folder.

use std::time::{Duration, Instant};

use backproc_smtp::{Credential, Envelope, ErrorKind, Params, Security, Smtp};
use backproc_store::outbox::{Claim, Claimed, DeliveryInfo, SendOutcome, SendPolicy};
use backproc_store::{Account, SpecialUse};

use super::Ctx;
use crate::signin::{self, Server};
use crate::task::{Failure, FailureKind, Report, Task};

pub fn policy(c: &backproc_config::Config) -> SendPolicy {
    SendPolicy {
        backoff: crate::schedule::backoff(c),
        secondary_after: c.email_bg_send_max_attempts as i64,
        max_age: c.email_bg_send_max_age as i64,
    }
}

fn smtp_params(a: &Account, credential: Credential) -> Result<Params, String> {
    let host =
        a.smtp.host.clone().ok_or_else(|| format!("account {} has no SMTP server (account set --smtp-host)", a.id))?;
    let security = match a.smtp.security {
        Some(s) => s,
        None if a.smtp.port == Some(465) => Security::Ssl,
        None => Security::StartTls,
    };
    let port = a.smtp.port.unwrap_or(match security {
        Security::Ssl => 465,
        Security::StartTls => 587,
        Security::None => 25,
    });
    let ca_pem = match &a.tls_ca_file {
        Some(f) => Some(std::fs::read(f).map_err(|e| format!("cannot read CA file {f}: {e}"))?),
        None => None,
    };
    Ok(Params {
        host,
        port,
        security,
        login: Some(a.smtp.login.clone().unwrap_or_else(|| a.login.clone())),
        credential: Some(credential),
        ca_pem,
        insecure: a.tls_insecure,
        timeout: Duration::from_secs(60),
    })
}

/// A new SMTP connection, signed in with the account's credential resolved now: a token that
/// expired since the last connection of the batch is refreshed first, and a token the server
/// refuses gets one forced refresh and one more try. `a` is read again after a refresh, so
/// the rest of the batch uses the new token.
fn connect(ctx: &mut Ctx, a: &mut Account) -> Result<Smtp, Failure> {
    let mut forced = false;
    loop {
        let credential = signin::credential(ctx.store, ctx.config, a, Server::Smtp, forced, ctx.clock.now())?;
        let bearer = matches!(credential, Credential::Bearer(_));
        let params = smtp_params(a, credential).map_err(|d| Failure::new(FailureKind::Connect, d))?;
        if bearer {
            // the token may have been refreshed and stored: later connections see it
            *a = ctx.store.account(a.id)?;
        }
        match Smtp::connect(&params) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind == ErrorKind::Auth && !forced && signin::refreshable(a, Server::Smtp) => {
                log::info!("account {}: the SMTP server refused the access token; refreshing it once", a.id);
                forced = true;
            }
            Err(e) => {
                let kind = match e.kind {
                    ErrorKind::Auth => FailureKind::Auth,
                    ErrorKind::Tls => FailureKind::Tls,
                    _ => FailureKind::Connect,
                };
                return Err(Failure::new(kind, e.detail));
            }
        }
    }
}

fn outcome(c: &Claimed, r: Result<backproc_smtp::Delivery, backproc_smtp::Error>) -> SendOutcome {
    match r {
        Ok(d) => {
            let info = DeliveryInfo {
                message_id: c.message_id.clone(),
                accepted: d.accepted,
                rejected: d.rejected,
                pending: d.pending,
                response: d.response,
            };
            if !info.accepted.is_empty() {
                SendOutcome::Success { info }
            } else if !info.pending.is_empty() {
                SendOutcome::Temporary { error: format!("no recipient accepted yet: {}", info.response) }
            } else {
                SendOutcome::Permanent { error: format!("every recipient was refused: {}", info.response), info }
            }
        }
        Err(e) => match e.kind {
            ErrorKind::Permanent => SendOutcome::Permanent {
                error: e.detail,
                info: DeliveryInfo {
                    message_id: c.message_id.clone(),
                    rejected: c.recipients.clone(),
                    ..DeliveryInfo::default()
                },
            },
            ErrorKind::Unknown => SendOutcome::Unknown { error: e.detail },
            _ => SendOutcome::Temporary { error: e.detail },
        },
    }
}

pub fn send(ctx: &mut Ctx, task: &Task, account: i64, secondary: bool) -> Result<Report, Failure> {
    let policy = policy(ctx.config);
    let (lease, batch) = (ctx.config.email_bg_send_lease as i64, ctx.config.email_bg_send_batch as usize);
    let mut a = ctx.store.account(account)?;
    let mut sent = 0i64;
    let mut smtp: Option<Smtp> = None;
    let mut line = Line::default();
    let mut ends = Ends::default();
    // Entries are claimed one at a time and ahead of sending (`sending` unset); the commit
    // right before an entry's message goes out marks it sending, so only an entry whose
    // message may really be on its way can expire as "outcome unknown": a kill, a freeze or a
    // commit that fails (disk full) leaves at most that one, never untried ones (those go back
    // to the queue at their lease expiry). That commit also records the previous entry's end
    // and claims the next entry, whose envelope rides in the same write as the message on a
    // pipelining server: one commit and one round trip a message.
    let due = ctx.store.outbox_due_ids(account, secondary, ctx.clock.now(), batch)?;
    let mut ids = due.iter().copied();
    let claim = |id| Claim { id, secondary, lease };
    // The entry to send next and, when its envelope went out with the previous message, the
    // server's answer to it.
    let mut current: Option<(Claimed, Option<Envelope>)> = None;
    loop {
        let (c, envelope) = match current.take() {
            Some(next) => next,
            None => {
                let Some(id) = ids.next() else { break };
                match ends.step(ctx, &policy, None, Some(claim(id)))?.1 {
                    Some(c) => (c, None),
                    None => continue, // claimed by another worker meanwhile
                }
            }
        };
        let started = Instant::now();
        match line.next_move(smtp.as_ref().is_some_and(|s| !s.is_broken())) {
            Move::Fail(error) => {
                ends.push(ctx, c, SendOutcome::Temporary { error }, &policy)?;
                continue;
            }
            Move::Connect => match connect(ctx, &mut a) {
                Ok(s) => smtp = Some(s),
                Err(f) => {
                    log::error!("cannot send outbox entries: {f}");
                    ends.push(ctx, c, SendOutcome::Temporary { error: f.detail.clone() }, &policy)?;
                    line.connect_failed(f);
                    continue;
                }
            },
            Move::Envelope => {}
        }
        let s = smtp.as_mut().expect("connected above");
        let answer = match envelope.unwrap_or_else(|| s.envelope(&c.mail_from, &c.recipients)) {
            Envelope::Open(open) => Ok(open),
            Envelope::Done(r) => Err(r),
        };
        let result = match line.after_envelope(c.id, answer, s.is_broken()) {
            AfterEnvelope::Reconnect(e) => {
                log::info!("message {}: the server closed the session before it ({e}); reconnecting", c.id);
                smtp = None;
                current = Some((c, None));
                continue;
            }
            AfterEnvelope::Ended(r) => r,
            AfterEnvelope::Data(open) => {
                let (marked, next) = ends.step(ctx, &policy, Some(&c), ids.next().map(claim))?;
                if !marked {
                    // The lease expired while this worker was frozen: the entry is someone
                    // else's now. Its message must not go out; the open transaction dies
                    // with the connection.
                    log::warn!("lost the lease of outbox entry {} before sending it: left to its new owner", c.id);
                    smtp = None;
                    current = next.map(|n| (n, None));
                    continue;
                }
                let (r, answer) =
                    s.data(open, &c.raw, next.as_ref().map(|n| (n.mail_from.as_str(), n.recipients.as_slice())));
                current = next.map(|n| (n, answer));
                r
            }
        };
        let o = outcome(&c, result);
        match &o {
            SendOutcome::Success { info } => {
                sent += 1;
                log::info!(
                    "sent message {} to {} recipients in {}s{}",
                    c.id,
                    info.accepted.len(),
                    started.elapsed().as_secs(),
                    if info.rejected.is_empty() && info.pending.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " ({} refused, {} to retry: {})",
                            info.rejected.len(),
                            info.pending.len(),
                            info.response
                        )
                    }
                );
            }
            SendOutcome::Permanent { error, .. } => {
                log::error!("message {} refused: {error}", c.id)
            }
            SendOutcome::Temporary { error } => {
                log::warn!("message {} not sent, will retry: {error}", c.id)
            }
            SendOutcome::Unknown { error } => {
                log::error!("message {}: delivery outcome unknown, not sent again automatically: {error}", c.id)
            }
        }
        if !keeps_connection(&o) {
            smtp = None;
        }
        ends.push(ctx, c, o, &policy)?;
    }
    ends.flush(ctx, &policy)?;
    if let Some(s) = smtp {
        s.quit();
    }
    // The SUCCESS records above were plain commits: one fsync makes the whole batch durable.
    if sent > 0
        && let Err(e) = ctx.store.sync_wal()
    {
        log::warn!("cannot sync the store after sending {sent} message(s): {e}");
    }
    append_sent(ctx, &a);
    // A full batch means more may be waiting: go on at once rather than at the next poll.
    let follow_up = if due.len() >= batch && line.down.is_none() { vec![*task] } else { Vec::new() };
    match line.down {
        Some(f) if sent == 0 => Err(f),
        _ => Ok(Report { count: sent, follow_up, ..Report::default() }),
    }
}

/// The sender's state over one batch, and its transitions: what it does with the entry in hand
/// ([`next_move`](Line::next_move)) and with the server's answer to its envelope
/// ([`after_envelope`](Line::after_envelope)). Pure: `send` performs what they say; the tests
/// below walk them without a server.
#[derive(Debug, Default)]
struct Line {
    /// A connection of this batch could not be made: the rest of it waits for the same
    /// back-off, untried (an unreachable server is not hammered), and this is the job's error
    /// when nothing was sent.
    down: Option<Failure>,
    /// The entry last put on a new connection because the server closed the session before it.
    retried: Option<i64>,
}

/// What the sender does with the entry in hand.
#[derive(Debug, PartialEq, Eq)]
enum Move {
    /// It fails as the last connection did, untried.
    Fail(String),
    /// Connect first (the first entry, or the last connection broke or was dropped).
    Connect,
    /// Send its envelope (or use the answer to it that came with the previous message).
    Envelope,
}

/// The server's answer to an envelope: the open transaction (`O`), or how it ended.
type Answer<O> = Result<O, Result<backproc_smtp::Delivery, backproc_smtp::Error>>;

/// What the server's answer to an envelope leads to; `O` is the open transaction.
#[derive(Debug)]
enum AfterEnvelope<O> {
    /// The server closed the session before this message (a 421 at MAIL FROM: a limit of
    /// messages a session). Nothing was sent: the same entry goes on a new connection, once,
    /// which signs in anew (refreshing an OAuth2 token that expired meanwhile).
    Reconnect(backproc_smtp::Error),
    /// The transaction ended without the message: the entry's outcome.
    Ended(Result<backproc_smtp::Delivery, backproc_smtp::Error>),
    /// DATA was accepted: mark the entry sending, then send the message.
    Data(O),
}

impl Line {
    /// `connected`: a connection is open and the server has not closed it.
    fn next_move(&self, connected: bool) -> Move {
        match (&self.down, connected) {
            (Some(f), _) => Move::Fail(f.detail.clone()),
            (None, false) => Move::Connect,
            (None, true) => Move::Envelope,
        }
    }

    fn connect_failed(&mut self, f: Failure) {
        self.down = Some(f);
    }

    /// Entry `id`'s envelope was answered: `Ok` with the open transaction, or how it ended;
    /// `closed`: the server has closed the session.
    fn after_envelope<O>(&mut self, id: i64, answer: Answer<O>, closed: bool) -> AfterEnvelope<O> {
        match answer {
            Ok(open) => AfterEnvelope::Data(open),
            Err(Err(e)) if closed && self.retried != Some(id) => {
                self.retried = Some(id);
                AfterEnvelope::Reconnect(e)
            }
            Err(r) => AfterEnvelope::Ended(r),
        }
    }
}

/// Whether the connection may carry the next entry after this end: not after an unknown
/// outcome (the connection failed after the final ".", whatever state it is in).
fn keeps_connection(o: &SendOutcome) -> bool {
    !matches!(o, SendOutcome::Unknown { .. })
}

/// The delivery records of entries already sent, waiting to be committed with the next step
/// (or by `flush` at the end of the batch). An "outcome unknown" is committed at once.
#[derive(Default)]
struct Ends {
    waiting: Vec<(Claimed, SendOutcome)>,
}

impl Ends {
    fn push(&mut self, ctx: &mut Ctx, c: Claimed, o: SendOutcome, p: &SendPolicy) -> Result<(), Failure> {
        let unknown = matches!(o, SendOutcome::Unknown { .. });
        self.waiting.push((c, o));
        if unknown { self.flush(ctx, p) } else { Ok(()) }
    }

    fn flush(&mut self, ctx: &mut Ctx, p: &SendPolicy) -> Result<(), Failure> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        self.step(ctx, p, None, None).map(|_| ())
    }

    /// Records the waiting ends, marks `sending` the entry whose message goes out next, and
    /// claims the next entry, in one transaction (`Store::outbox_step`). Returns whether the
    /// mark held (false: that entry's lease was lost, its message must not go out) and the
    /// entry claimed.
    fn step(
        &mut self,
        ctx: &mut Ctx,
        p: &SendPolicy,
        sending: Option<&Claimed>,
        claim: Option<Claim>,
    ) -> Result<(bool, Option<Claimed>), Failure> {
        if self.waiting.is_empty() && claim.is_none() && sending.is_none_or(|c| c.sending) {
            return Ok((true, None));
        }
        let waiting = std::mem::take(&mut self.waiting);
        let ends: Vec<(&Claimed, &SendOutcome)> = waiting.iter().map(|(c, o)| (c, o)).collect();
        let step = ctx.store.outbox_step(&ends, ctx.clock.now(), p, sending, claim)?;
        for ((c, _), held) in ends.iter().zip(step.held) {
            if !held {
                log::warn!("lost the lease of outbox entry {}: its record was left as the lease expiry set it", c.id);
            }
        }
        Ok((step.sending, step.claimed))
    }
}

/// Appends sent messages to the Sent folder; a failure leaves them pending for the next run
/// and never resends the mail.
fn append_sent(ctx: &mut Ctx, a: &Account) {
    if !a.sent_append || !ctx.config.email_bg_sent_append {
        return;
    }
    let pending = match ctx.store.outbox_pending_appends(a.id, 100) {
        Ok(p) if !p.is_empty() => p,
        _ => return,
    };
    let folder = ctx
        .store
        .account_folders(a.id)
        .ok()
        .and_then(|fs| fs.into_iter().find(|f| f.special_use == Some(SpecialUse::Sent)).map(|f| f.name))
        .unwrap_or_else(|| "Sent".to_owned());
    let now = ctx.clock.now();
    let session = match ctx.sessions.get(ctx.store, ctx.config, a.id, now) {
        Ok(s) => s,
        Err(f) => {
            log::warn!("cannot append {} sent message(s) to {folder}: {f}", pending.len());
            return;
        }
    };
    let mut failed = None;
    let mut done = Vec::new();
    let seen = backproc_imap::Flags::parse("\\Seen");
    for (id, raw) in &pending {
        match session.append(&folder, &seen, raw) {
            Ok(_) => done.push(*id),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failed {
        if !e.session_usable() {
            ctx.sessions.discard(a.id);
        }
        log::warn!("cannot append a sent message to {folder}, will retry: {e}");
    }
    for id in done {
        if let Err(e) = ctx.store.outbox_append_done(id) {
            log::error!("cannot record the Sent append of entry {id}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use backproc_smtp::{Delivery, Error as SmtpError};

    use super::*;

    fn smtp_err(kind: ErrorKind, detail: &str) -> SmtpError {
        SmtpError::new(kind, detail)
    }

    fn closed_at_mail_from() -> Answer<()> {
        Err(Err(smtp_err(ErrorKind::Temporary, "421 too many messages")))
    }

    #[test]
    fn next_move_table() {
        let down = || Line { down: Some(Failure::new(FailureKind::Connect, "connection refused")), retried: None };
        #[rustfmt::skip]
        let cases: &[(&str, Line, bool, Move)] = &[
            ("the first entry connects", Line::default(), false, Move::Connect),
            ("a live connection carries the next entry", Line::default(), true, Move::Envelope),
            ("after a failed connection the rest fails untried", down(), false, Move::Fail("connection refused".into())),
            ("even with a connection left from before", down(), true, Move::Fail("connection refused".into())),
        ];
        for (name, line, connected, want) in cases {
            assert_eq!(line.next_move(*connected), *want, "{name}");
        }
    }

    #[test]
    fn a_session_closed_before_the_message_retries_it_once_on_a_new_connection() {
        let mut line = Line::default();
        assert!(matches!(line.after_envelope(7, closed_at_mail_from(), true), AfterEnvelope::Reconnect(_)));
        assert_eq!(line.next_move(false), Move::Connect, "the retry connects anew");
        match line.after_envelope(7, closed_at_mail_from(), true) {
            AfterEnvelope::Ended(Err(e)) => assert_eq!(e.detail, "421 too many messages", "the second time is its end"),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(line.after_envelope(8, closed_at_mail_from(), true), AfterEnvelope::Reconnect(_)),
            "the next entry gets its own retry"
        );
    }

    #[test]
    fn after_envelope_table() {
        let refused_all = || Err(Ok(Delivery { rejected: vec!["b@x.test".into()], ..Delivery::default() }));
        let failed = |kind| Err(Err(smtp_err(kind, "no")));
        #[rustfmt::skip]
        let cases: Vec<(&str, Answer<()>, bool, &str)> = vec![
            ("DATA accepted: send the message", Ok(()), false, "data"),
            ("DATA accepted on a closing session: still the message (the server decides)", Ok(()), true, "data"),
            ("every recipient refused: the entry's end", refused_all(), false, "ended"),
            ("every recipient refused, session closed: its end, nothing to retry", refused_all(), true, "ended"),
            ("a refused sender on an open session: its end", failed(ErrorKind::Permanent), false, "ended"),
            ("a 421 that closed the session: a new connection", failed(ErrorKind::Temporary), true, "reconnect"),
        ];
        for (name, answer, closed, want) in cases {
            let got = match Line::default().after_envelope(1, answer, closed) {
                AfterEnvelope::Data(()) => "data",
                AfterEnvelope::Ended(_) => "ended",
                AfterEnvelope::Reconnect(_) => "reconnect",
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn outcome_table() {
        let c = Claimed {
            id: 1,
            account_id: 1,
            message_id: "<m@x.test>".into(),
            mail_from: "a@x.test".into(),
            recipients: vec!["b@x.test".into(), "c@x.test".into()],
            raw: Vec::new(),
            token: String::new(),
            attempts: 1,
            created: 0,
            sending: true,
        };
        let d = |accepted: &[&str], rejected: &[&str], pending: &[&str]| {
            let v = |s: &[&str]| s.iter().map(|a| a.to_string()).collect();
            Ok(Delivery {
                accepted: v(accepted),
                rejected: v(rejected),
                pending: v(pending),
                response: "250 ok".into(),
            })
        };
        let e = |kind| Err(smtp_err(kind, "broke"));
        #[rustfmt::skip]
        let cases: Vec<(&str, Result<Delivery, SmtpError>, &str)> = vec![
            ("all accepted", d(&["b@x.test", "c@x.test"], &[], &[]), "success"),
            ("one accepted, one refused for good", d(&["b@x.test"], &["c@x.test"], &[]), "success"),
            ("one accepted, one to retry", d(&["b@x.test"], &[], &["c@x.test"]), "success"),
            ("none accepted, one to retry", d(&[], &["b@x.test"], &["c@x.test"]), "temporary"),
            ("all refused", d(&[], &["b@x.test", "c@x.test"], &[]), "permanent"),
            ("a 5xx for the transaction", e(ErrorKind::Permanent), "permanent"),
            ("a 4xx for the transaction", e(ErrorKind::Temporary), "temporary"),
            ("a connection lost before the end of DATA", e(ErrorKind::Connect), "temporary"),
            ("a connection lost after the final dot", e(ErrorKind::Unknown), "unknown"),
        ];
        for (name, result, want) in cases {
            let o = outcome(&c, result);
            let got = match &o {
                SendOutcome::Success { .. } => "success",
                SendOutcome::Permanent { .. } => "permanent",
                SendOutcome::Temporary { .. } => "temporary",
                SendOutcome::Unknown { .. } => "unknown",
            };
            assert_eq!(got, want, "{name}");
            assert_eq!(keeps_connection(&o), want != "unknown", "{name}: the connection after it");
        }
        // a transaction refused as a whole names every recipient refused in its record
        match outcome(&c, e(ErrorKind::Permanent)) {
            SendOutcome::Permanent { info, .. } => assert_eq!(info.rejected, c.recipients),
            o => panic!("{o:?}"),
        }
    }
}
