//! Push: one extra connection per account whose owner is logged in (or every account, with
//! EMAIL_BG_PUSH_ALL), waiting for the server to say that something changed: NOTIFY (RFC 5465)
//! over the account's high-priority folders when offered, else IDLE (RFC 2177) on INBOX, else
//! nothing (the account polls, as without push).
//!
//! Push only changes *when* a folder syncs, never how: an event makes the folder's recent sync
//! (new mail) or full sync (flags, expunges) due now, and the master hands that task to the
//! account's worker ahead of bulk work, through the one code path every sync takes.
//!
//! Two threads, whatever the number of accounts:
//! - the push thread waits on every push socket at once with `poll(2)` (the sockets are
//!   non-blocking, `imap::watch`), gathers events for EMAIL_BG_PUSH_DEBOUNCE_MS into one sync
//!   per folder, renews each connection every EMAIL_BG_IDLE_RENEW, and decides what a broken
//!   or refused connection leads to (`plan::after_ending`);
//! - the connector thread connects and signs in (blocking, as every session does), one
//!   account at a time, and hands the watch to the push thread.
//!
//! Invariants:
//! - a push connection holds a slot of its host's connection budget
//!   (BG_MAX_CONNECTIONS_PER_HOST), and push never takes the last one: tasks always have one;
//! - a server that turned a push connection away (BYE, a refused login, "too many
//!   connections") is not asked again before BG_BACKOFF_MAX: one history line, no reconnect
//!   storm; a lost connection comes back after the back-off, growing while it keeps failing
//!   before its first renewal succeeds;
//! - a watch that starts after a lost one makes its folders' full sync due: what changed
//!   meanwhile is found by the normal sync, never by the push connection;
//! - an account whose owner logs out loses its push connection at the master's next tick.

pub mod plan;

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backproc_config::Config;
use backproc_imap::response::MailboxStatus;
use backproc_imap::{ErrorKind, Session, Watch, WatchEvent, status_key};
use backproc_store::{PushCandidate, PushFolder, Store};
use crossbeam_channel::{Receiver, Sender, unbounded};
use nix::poll::{PollFd, PollFlags, PollTimeout};

use self::plan::{Debounce, Ending, Next};
use crate::schedule::SyncDue;
use crate::sessions::SessionPool;
use crate::signin::{self, Server};
use crate::task::FailureKind;
use crate::{Clock, SharedConfig};

/// A folder (or, `folder: None`, the account's folder list) whose sync push made due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushEvent {
    pub account: i64,
    pub folder: Option<i64>,
    pub due: SyncDue,
}

/// Push connections open now, events received and reconnections, for the metrics.
pub struct Counters {
    pub connections: AtomicU64,
    pub events: AtomicU64,
    pub reconnects: AtomicU64,
}

pub static COUNTERS: Counters =
    Counters { connections: AtomicU64::new(0), events: AtomicU64::new(0), reconnects: AtomicU64::new(0) };

enum Command {
    Want(Vec<PushCandidate>),
    Stop,
}

/// The running push threads.
pub struct Push {
    commands: Sender<Command>,
    waker: UnixStream,
    /// Due syncs, for the master's loop.
    pub events: Receiver<PushEvent>,
    /// Kept so `events` never disconnects, even if the push thread ends (a master's loop
    /// waiting on a disconnected channel would wake at once, forever).
    _events_tx: Sender<PushEvent>,
    poller: JoinHandle<()>,
}

impl Push {
    pub fn start(
        store_path: PathBuf,
        config: SharedConfig,
        sessions: Arc<SessionPool>,
        clock: Clock,
    ) -> io::Result<Push> {
        let (wake_rx, waker) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        waker.set_nonblocking(true)?;
        let (commands, commands_rx) = unbounded();
        let (events_tx, events) = unbounded();
        let (jobs_tx, jobs_rx) = unbounded::<ConnectJob>();
        let (done_tx, done_rx) = unbounded::<Connected>();
        let connector = {
            let (config, sessions, store_path) = (config.clone(), sessions.clone(), store_path.clone());
            let waker = waker.try_clone()?;
            std::thread::Builder::new().name("push-connect".into()).spawn(move || {
                connector(&store_path, &config, &sessions, clock, &jobs_rx, &done_tx, &waker);
            })?
        };
        let kept = events_tx.clone();
        let poller = std::thread::Builder::new().name("push".into()).spawn(move || {
            let store = match Store::open(&store_path) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("push is off: cannot open the store: {e}");
                    return;
                }
            };
            let mut p = Poller {
                store,
                config,
                sessions,
                clock,
                accounts: HashMap::new(),
                debounce: Debounce::default(),
                jobs: jobs_tx,
                events: events_tx,
            };
            p.run(&wake_rx, &commands_rx, &done_rx);
        })?;
        // The connector is not joined at the end: it may be in the middle of a connection to
        // a server that does not answer (up to BG_IO_TIMEOUT), and ends on its own.
        drop(connector);
        Ok(Push { commands, waker, events, _events_tx: kept, poller })
    }

    /// The accounts to keep a push connection for from now on (at every tick).
    pub fn want(&self, accounts: Vec<PushCandidate>) {
        let _ = self.commands.send(Command::Want(accounts));
        wake(&self.waker);
    }

    /// Closes every push connection and ends the push thread.
    pub fn stop(self) {
        let _ = self.commands.send(Command::Stop);
        wake(&self.waker);
        let _ = self.poller.join();
    }
}

fn wake(w: &UnixStream) {
    // A full pipe already wakes the poller: the error is nothing to handle.
    let _ = (&*w).write(&[1]);
}

/// What the connector is asked: connect this account and watch these folders.
struct ConnectJob {
    account: i64,
    host: String,
    folders: Vec<PushFolder>,
}

/// What a new watch must start with.
struct Started {
    watch: Watch,
    /// NOTIFY: the watched mailboxes' status, by key (`key`): (folder, last status).
    snaps: HashMap<Vec<u8>, (i64, Option<MailboxStatus>)>,
    /// IDLE: the folder and its message count.
    idle: Option<(i64, u32)>,
    /// The syncs the folders need now (mail that came before the watch started).
    catch_up: Vec<(i64, SyncDue)>,
}

struct Connected {
    account: i64,
    host: String,
    result: Result<Started, (Ending, String)>,
}

fn connector(
    store_path: &std::path::Path,
    config: &SharedConfig,
    sessions: &SessionPool,
    clock: Clock,
    jobs: &Receiver<ConnectJob>,
    done: &Sender<Connected>,
    waker: &UnixStream,
) {
    let mut store = match Store::open(store_path) {
        Ok(s) => s,
        Err(e) => {
            log::error!("push is off: cannot open the store: {e}");
            return;
        }
    };
    for job in jobs {
        let config = crate::current(config);
        let _scope = crate::logctx::scope(Some(job.account), None);
        let budget = config.bg_max_connections_per_host as usize;
        let result = if sessions.acquire_push(&job.host, budget) {
            let r = start_watch(&mut store, &config, clock, &job);
            if r.is_err() {
                sessions.release_push(&job.host);
            }
            r
        } else {
            Err((Ending::NoSlot, format!("no connection to {} left for push (BG_MAX_CONNECTIONS_PER_HOST)", job.host)))
        };
        if done.send(Connected { account: job.account, host: job.host, result }).is_err() {
            return;
        }
        wake(waker);
    }
}

/// Connects, signs in and starts watching: NOTIFY when offered, else IDLE on INBOX.
fn start_watch(
    store: &mut Store,
    config: &Config,
    clock: Clock,
    job: &ConnectJob,
) -> Result<Started, (Ending, String)> {
    let a = store.account(job.account).map_err(|e| (Ending::Lost, e.to_string()))?;
    let cred = signin::credential(store, config, &a, Server::Imap, false, clock.now()).map_err(|f| {
        let e = if matches!(f.kind, FailureKind::Auth | FailureKind::NeedsAuthorization) {
            Ending::Refused
        } else {
            Ending::Lost
        };
        (e, f.to_string())
    })?;
    let mut p = crate::sessions::imap_params(&a, config, cred, None).map_err(|f| (Ending::Lost, f.to_string()))?;
    // Bytes on a waiting connection are a few lines an hour: compression would only cost a
    // deflate state (hundreds of KiB) per account.
    p.compress = false;
    let imap = |e: backproc_imap::Error| {
        let ending = match e.kind {
            ErrorKind::Busy | ErrorKind::Auth | ErrorKind::Refused | ErrorKind::Throttled => Ending::Refused,
            _ => Ending::Lost,
        };
        (ending, e.detail)
    };
    let s = Session::connect(&p).map_err(imap)?;
    if s.caps.notify {
        let names: Vec<&str> = job.folders.iter().map(|f| f.name.as_str()).collect();
        let (watch, baseline) = s.watch_notify(&names).map_err(imap)?;
        let mut snaps = HashMap::new();
        let mut catch_up = Vec::new();
        for st in &baseline {
            let Some(f) = job.folders.iter().find(|f| status_key(f.name.as_bytes()) == status_key(&st.name)) else {
                continue;
            };
            if let Some(due) = plan::catch_up(f.uidvalidity, f.last_seen_uid, st.uidvalidity, st.uidnext) {
                catch_up.push((f.id, due));
            }
            snaps.insert(status_key(&st.name), (f.id, Some(st.clone())));
        }
        // A watched folder the server gave no status of is still watched: its first event
        // (nothing known yet) makes a full sync.
        for f in &job.folders {
            snaps.entry(status_key(f.name.as_bytes())).or_insert((f.id, None));
        }
        return Ok(Started { watch, snaps, idle: None, catch_up });
    }
    let inbox = job.folders.iter().find(|f| backproc_imap::is_inbox(f.name.as_bytes()));
    match inbox {
        Some(f) if s.caps.idle => {
            let (watch, sel) = s.watch_idle(&f.name).map_err(imap)?;
            let catch_up = plan::catch_up(f.uidvalidity, f.last_seen_uid, Some(sel.uidvalidity), Some(sel.uidnext))
                .map(|d| vec![(f.id, d)])
                .unwrap_or_default();
            Ok(Started { watch, snaps: HashMap::new(), idle: Some((f.id, sel.exists)), catch_up })
        }
        _ => {
            let why = if s.caps.idle {
                "the server offers IDLE but not NOTIFY, and INBOX is not a high-priority folder"
            } else {
                "the server offers neither NOTIFY nor IDLE"
            };
            s.logout();
            Err((Ending::NotOffered, why.to_string()))
        }
    }
}

enum State {
    /// Asked of the connector.
    Connecting,
    Watching(Box<Watching>),
    /// Connect again at.
    Waiting(Instant),
    /// Polling, and push tried again at (never: `None`).
    Polling(Option<Instant>),
}

struct Watching {
    watch: Watch,
    host: String,
    last_renew: Instant,
    renew_sent: Option<Instant>,
    snaps: HashMap<Vec<u8>, (i64, Option<MailboxStatus>)>,
    idle: Option<(i64, u32)>,
}

struct Account {
    want: PushCandidate,
    state: State,
    /// Endings in a row since a watch last proved healthy (its first renewal answered).
    endings: u32,
    /// The last watch was lost: the next one makes its folders' full sync due.
    lost: bool,
}

struct Poller {
    store: Store,
    config: SharedConfig,
    sessions: Arc<SessionPool>,
    clock: Clock,
    accounts: HashMap<i64, Account>,
    debounce: Debounce,
    jobs: Sender<ConnectJob>,
    events: Sender<PushEvent>,
}

/// The longest `poll` waits with nothing due: a bound, not a schedule.
const MAX_WAIT: Duration = Duration::from_secs(5);

impl Poller {
    fn run(&mut self, wake_rx: &UnixStream, commands: &Receiver<Command>, done: &Receiver<Connected>) {
        loop {
            let config = crate::current(&self.config);
            let window = Duration::from_millis(config.email_bg_push_debounce_ms);
            let ids: Vec<i64> = self
                .accounts
                .iter()
                .filter(|(_, a)| matches!(a.state, State::Watching(_)))
                .map(|(id, _)| *id)
                .collect();
            let now = Instant::now();
            let until = self.next_deadline(&config, window).map_or(MAX_WAIT, |t| t.saturating_duration_since(now));
            let ms = u16::try_from(until.min(MAX_WAIT).as_millis()).unwrap_or(u16::MAX);
            let ready: Vec<bool> = {
                let mut fds = Vec::with_capacity(ids.len() + 1);
                fds.push(PollFd::new(wake_rx.as_fd(), PollFlags::POLLIN));
                for id in &ids {
                    if let Some(State::Watching(w)) = self.accounts.get(id).map(|a| &a.state) {
                        fds.push(PollFd::new(w.watch.as_fd(), PollFlags::POLLIN));
                    }
                }
                match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(_) => fds.iter().skip(1).map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect(),
                    Err(nix::errno::Errno::EINTR) => Vec::new(),
                    Err(e) => {
                        log::error!("push: poll failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        Vec::new()
                    }
                }
            };
            let mut drain = [0u8; 256];
            while matches!((&*wake_rx).read(&mut drain), Ok(1..)) {}
            while let Ok(c) = commands.try_recv() {
                match c {
                    Command::Want(w) => self.reconcile(w),
                    Command::Stop => {
                        self.close_all();
                        return;
                    }
                }
            }
            while let Ok(c) = done.try_recv() {
                self.connected(c);
            }
            for (id, r) in ids.iter().zip(ready) {
                if r {
                    self.readable(*id);
                }
            }
            self.timers(&config);
            for ((account, folder), due) in self.debounce.take_ready(Instant::now(), window) {
                log::debug!("push: account {account} folder {folder:?}: {due:?} sync due now");
                let _ = self.events.send(PushEvent { account, folder, due });
            }
        }
    }

    /// The earliest moment something is due: a debounce window, a renewal, a dead renewal,
    /// a reconnection.
    fn next_deadline(&self, config: &Config, window: Duration) -> Option<Instant> {
        let renew = Duration::from_secs(config.email_bg_idle_renew);
        let io = Duration::from_secs(config.bg_io_timeout);
        let mut at = self.debounce.next_at(window);
        let mut take = |t: Instant| at = Some(at.map_or(t, |a: Instant| a.min(t)));
        for a in self.accounts.values() {
            match &a.state {
                State::Watching(w) => take(w.renew_sent.map_or(w.last_renew + renew, |s| s + io)),
                State::Waiting(t) | State::Polling(Some(t)) => take(*t),
                State::Connecting | State::Polling(None) => {}
            }
        }
        at
    }

    /// Opens push for new accounts, closes it for those no longer wanted, and starts again
    /// where the watched folders changed.
    fn reconcile(&mut self, wanted: Vec<PushCandidate>) {
        let ids: HashSet<i64> = wanted.iter().map(|c| c.account_id).collect();
        let gone: Vec<i64> = self.accounts.keys().filter(|a| !ids.contains(a)).copied().collect();
        for a in gone {
            self.close(a);
            self.accounts.remove(&a);
            self.debounce.forget(a);
            if let Err(e) = self.store.set_push_state(a, None, self.clock.now()) {
                log::warn!("push: cannot record the state of account {a}: {e}");
            }
            log::debug!("push: account {a} no longer pushed (owner logged out, or no high-priority folder)");
        }
        for c in wanted {
            let id = c.account_id;
            match self.accounts.get_mut(&id) {
                None => {
                    self.accounts
                        .insert(id, Account { want: c.clone(), state: State::Connecting, endings: 0, lost: false });
                    self.connect(id);
                }
                Some(a) => {
                    let names =
                        |c: &PushCandidate| c.folders.iter().map(|f| (f.id, f.name.clone())).collect::<Vec<_>>();
                    let changed = names(&a.want) != names(&c);
                    a.want = c;
                    if changed && matches!(a.state, State::Watching(_)) {
                        log::debug!("push: account {id}: the high-priority folders changed; watching them anew");
                        self.close(id);
                        if let Some(a) = self.accounts.get_mut(&id) {
                            a.state = State::Connecting;
                        }
                        self.connect(id);
                    }
                }
            }
        }
    }

    fn connect(&mut self, id: i64) {
        let Some(a) = self.accounts.get_mut(&id) else { return };
        a.state = State::Connecting;
        let job =
            ConnectJob { account: id, host: a.want.imap_host.to_ascii_lowercase(), folders: a.want.folders.clone() };
        let _ = self.jobs.send(job);
    }

    fn connected(&mut self, c: Connected) {
        let now = self.clock.now();
        // Not waited for: the account left while it connected (and may have come back with
        // a later request, which serves it): the watch closes.
        let Some(a) = self.accounts.get_mut(&c.account).filter(|a| matches!(a.state, State::Connecting)) else {
            if let Ok(s) = c.result {
                s.watch.close();
                self.sessions.release_push(&c.host);
            }
            return;
        };
        let _scope = crate::logctx::scope(Some(c.account), None);
        match c.result {
            Ok(s) => {
                let mode = s.watch.mode();
                log::debug!(
                    "push: connected, {} over {} folder(s)",
                    mode.name(),
                    if s.idle.is_some() { 1 } else { s.snaps.len() }
                );
                COUNTERS.connections.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                if a.lost {
                    // What changed while the connection was down is found by a full sync.
                    let folders: Vec<i64> = match s.idle {
                        Some((f, _)) => vec![f],
                        None => s.snaps.values().map(|(f, _)| *f).collect(),
                    };
                    for f in folders {
                        self.debounce.push((c.account, Some(f)), SyncDue::Full, t);
                    }
                    a.lost = false;
                }
                for (f, due) in s.catch_up {
                    self.debounce.push((c.account, Some(f)), due, t);
                }
                a.state = State::Watching(Box::new(Watching {
                    watch: s.watch,
                    host: c.host,
                    last_renew: t,
                    renew_sent: None,
                    snaps: s.snaps,
                    idle: s.idle,
                }));
                if let Err(e) = self.store.set_push_state(c.account, Some((mode.name(), None)), now) {
                    log::warn!("push: cannot record the state: {e}");
                }
            }
            Err((ending, why)) => self.ended(c.account, ending, &why),
        }
    }

    fn readable(&mut self, id: i64) {
        let Some(Account { state: State::Watching(w), .. }) = self.accounts.get_mut(&id) else { return };
        let _scope = crate::logctx::scope(Some(id), None);
        let events = match w.watch.read_events() {
            Ok(e) => e,
            Err(e) => {
                let ending = if e.kind == ErrorKind::Refused { Ending::Refused } else { Ending::Lost };
                return self.ended(id, ending, &e.detail);
            }
        };
        let now = Instant::now();
        let mut healthy = false;
        let mut bye = None;
        for ev in events {
            match &ev {
                WatchEvent::Renewed => {
                    w.renew_sent = None;
                    healthy = true;
                    log::debug!("push: renewed");
                }
                WatchEvent::Bye(text) => bye = Some(text.clone()),
                WatchEvent::MailboxesChanged => {
                    COUNTERS.events.fetch_add(1, Ordering::Relaxed);
                    log::debug!("push: event: the folder list changed");
                    self.debounce.push((id, None), SyncDue::Full, now);
                }
                WatchEvent::Status(st) => {
                    let Some((folder, snap)) = w.snaps.get_mut(&status_key(&st.name)) else { continue };
                    COUNTERS.events.fetch_add(1, Ordering::Relaxed);
                    let (next, due) = plan::status_due(snap.as_ref(), st);
                    *snap = Some(next);
                    log::debug!("push: event: {:?} {due:?}", String::from_utf8_lossy(&st.name));
                    if let Some(d) = due {
                        self.debounce.push((id, Some(*folder)), d, now);
                    }
                }
                WatchEvent::Exists(_) | WatchEvent::Expunged | WatchEvent::FlagsChanged => {
                    let Some((folder, exists)) = &mut w.idle else { continue };
                    COUNTERS.events.fetch_add(1, Ordering::Relaxed);
                    let (n, due) = plan::idle_due(*exists, &ev);
                    *exists = n;
                    log::debug!("push: event: {ev:?} {due:?}");
                    if let Some(d) = due {
                        self.debounce.push((id, Some(*folder)), d, now);
                    }
                }
            }
        }
        if let Some(a) = self.accounts.get_mut(&id)
            && healthy
        {
            a.endings = 0;
        }
        if let Some(text) = bye {
            self.ended(id, Ending::Refused, &format!("the server closed the push connection: BYE {text}"));
        }
    }

    /// Renewals, dead connections, reconnections that are due.
    fn timers(&mut self, config: &Config) {
        let now = Instant::now();
        let renew = Duration::from_secs(config.email_bg_idle_renew);
        let io = Duration::from_secs(config.bg_io_timeout);
        let mut lost = Vec::new();
        let mut reconnect = Vec::new();
        for (id, a) in &mut self.accounts {
            match &mut a.state {
                State::Watching(w) => match w.renew_sent {
                    Some(sent) if now.duration_since(sent) >= io => {
                        lost.push((*id, format!("no answer to the renewal within {} s (BG_IO_TIMEOUT)", io.as_secs())));
                    }
                    Some(_) => {}
                    None if now.duration_since(w.last_renew) >= renew => {
                        let _scope = crate::logctx::scope(Some(*id), None);
                        log::debug!("push: renewing ({})", w.watch.mode().name());
                        match w.watch.renew() {
                            Ok(()) => {
                                w.renew_sent = Some(now);
                                w.last_renew = now;
                            }
                            Err(e) => lost.push((*id, e.detail)),
                        }
                    }
                    None => {}
                },
                State::Waiting(t) | State::Polling(Some(t)) if *t <= now => reconnect.push(*id),
                _ => {}
            }
        }
        for (id, why) in lost {
            self.ended(id, Ending::Lost, &why);
        }
        for id in reconnect {
            COUNTERS.reconnects.fetch_add(1, Ordering::Relaxed);
            self.connect(id);
        }
    }

    /// A watch ended or could not start: what follows, recorded.
    fn ended(&mut self, id: i64, ending: Ending, why: &str) {
        self.close(id);
        let config = crate::current(&self.config);
        let now = self.clock.now();
        let Some(a) = self.accounts.get_mut(&id) else { return };
        let _scope = crate::logctx::scope(Some(id), None);
        a.endings += 1;
        let next = plan::after_ending(ending, a.endings, crate::schedule::backoff(&config));
        let note = match &next {
            Next::Retry(d) => {
                a.lost = true;
                a.state = State::Waiting(Instant::now() + *d);
                log::debug!("push: {why}; connecting again in {} s", d.as_secs());
                format!("reconnecting: {why}")
            }
            Next::Poll(until) => {
                a.state = State::Polling(until.map(|d| Instant::now() + d));
                let when = match until {
                    Some(d) => format!("push tried again in {} s", d.as_secs()),
                    None => "push not tried again until the master restarts".to_string(),
                };
                log::info!("push off, polling: {why}; {when}");
                let h = backproc_store::NewHistory {
                    kind: Some("push"),
                    process: "Push",
                    status: &format!("polling: {why}"),
                    account_id: Some(id),
                    ..Default::default()
                };
                if let Err(e) = self.store.add_history(&h, now) {
                    log::warn!("push: cannot record the history: {e}");
                }
                why.to_string()
            }
        };
        if let Err(e) = self.store.set_push_state(id, Some(("polling", Some(&note))), now) {
            log::warn!("push: cannot record the state: {e}");
        }
    }

    /// Closes the account's watch, if it has one (its slot goes back to the host's budget).
    /// Events already gathered stay: they are about changes the server has.
    fn close(&mut self, id: i64) {
        let Some(a) = self.accounts.get_mut(&id) else { return };
        if matches!(a.state, State::Watching(_))
            && let State::Watching(w) = std::mem::replace(&mut a.state, State::Connecting)
        {
            w.watch.close();
            self.sessions.release_push(&w.host);
            COUNTERS.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn close_all(&mut self) {
        let ids: Vec<i64> = self.accounts.keys().copied().collect();
        for id in ids {
            self.close(id);
        }
        self.accounts.clear();
    }
}
