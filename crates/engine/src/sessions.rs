//! The engine's IMAP connections: one cached session per account, shared by every worker, and
//! a budget of connections per host (BG_MAX_CONNECTIONS_PER_HOST) that counts the idle cached
//! sessions too. Also where a connection signs in with the credential `signin` resolves (one
//! forced token refresh when a server refuses an OAuth2 token) and where an account's health
//! (back-off after failures, or waiting for a person's authorization) is recorded.
//!
//! Invariants:
//! - at no moment are more connections open to a host than its budget: a task that needs one
//!   when the budget is full first logs out the host's least recently used idle session, and
//!   otherwise waits for one to be given back (back-pressure, not failure) until its deadline;
//! - a server that says it has too many connections from us (Gmail's "Too many simultaneous
//!   connections", RFC 5530 `[LIMIT]`/`[UNAVAILABLE]`) lowers that host's budget for a while
//!   to what it accepted, instead of failing the task;
//! - a session is used by one task at a time: a worker checks one of the account's idle
//!   sessions out for its task, or connects a new one (an account whose folders are synced
//!   and received side by side, `task::may_start`, holds several).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backproc_config::Config;
use backproc_imap::{ConnectParams, Credential, Deadline, ErrorKind, Session};
use backproc_store::{Account, Store};
use backproc_types::retry::{self, AccountFailure, AccountNext};

use crate::signin::{self, Server};
use crate::task::{Failure, FailureKind};

/// How long a host keeps the lower budget its "too many connections" answer gave it.
const LOWERED_FOR: Duration = Duration::from_secs(600);

/// How long an idle session whose slot goes to another connection may take to close: the
/// slot passes once the server has closed it (`Session::logout_and_wait`), or after this.
const HANDOFF_CLOSE: Duration = Duration::from_secs(2);

/// Connections of one host.
#[derive(Default)]
struct Host {
    /// Open connections: in use by a task, idle in the cache, being set up, or push.
    open: usize,
    /// Of those, push connections (`acquire_push`): at most the budget less one, so tasks
    /// always have a connection.
    push: usize,
    /// A budget lower than the configured one, and until when.
    lowered: Option<(usize, Instant)>,
    /// Of the open ones, idle sessions being closed (`SessionPool::retire`): their slots free
    /// in a round trip, so a new connection waits for one of those rather than log out a
    /// session that its account will use again.
    retiring: usize,
}

impl Host {
    fn limit(&mut self, configured: usize) -> usize {
        match self.lowered {
            Some((n, until)) if Instant::now() < until => n.min(configured),
            Some(_) => {
                self.lowered = None;
                configured
            }
            None => configured,
        }
    }
}

struct Idle {
    session: Session,
    host: String,
    since: Instant,
}

#[derive(Default)]
struct PoolState {
    /// Per account, its idle sessions, the most recently given back last.
    idle: HashMap<i64, Vec<Idle>>,
    hosts: HashMap<String, Host>,
    /// Most connections seen open to one host at once, for tests and `status`.
    peak: usize,
    /// Task connections open per account (in use or idle; push connections apart).
    open_of: HashMap<i64, usize>,
}

/// Every worker's sessions.
pub struct SessionPool {
    state: Mutex<PoolState>,
    /// Signalled when a connection is closed or given back idle.
    freed: Condvar,
    /// Gmail bodies (account, X-GM-MSGID) that a receive of the account is downloading now
    /// (`claim_bodies`).
    fetching: Mutex<HashSet<(i64, i64)>>,
}

impl SessionPool {
    pub fn new() -> Arc<SessionPool> {
        Arc::new(SessionPool {
            state: Mutex::new(PoolState::default()),
            freed: Condvar::new(),
            fetching: Mutex::new(HashSet::new()),
        })
    }

    /// Claims the download of these Gmail bodies (X-GM-MSGIDs) of `account` for the caller;
    /// returns those another receive of the account is downloading now. One message under
    /// several labels is queued in each label's folder, and the receives of two folders run
    /// side by side: without this both downloaded it (and stored it twice). The one left out
    /// links its row to the body once that receive has stored it (`link_known_bodies`).
    pub(crate) fn claim_bodies(&self, account: i64, gm_msgids: &[i64]) -> HashSet<i64> {
        let mut f = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        gm_msgids.iter().copied().filter(|g| !f.insert((account, *g))).collect()
    }

    /// The bodies a receive claimed are stored (or it gave up on them).
    pub(crate) fn release_bodies(&self, account: i64, gm_msgids: impl IntoIterator<Item = i64>) {
        let mut f = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        for g in gm_msgids {
            f.remove(&(account, g));
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most connections that were open to one host at once.
    pub fn peak(&self) -> usize {
        self.lock().peak
    }

    /// The hosts where tasks have fewer connections than the `configured` budget, with what
    /// they have (for the scheduler, which then keeps no more of their accounts in flight): a
    /// budget a "too many connections" answer lowered, less the host's push connections.
    pub fn lowered(&self, configured: usize) -> HashMap<String, usize> {
        let now = Instant::now();
        self.lock()
            .hosts
            .iter()
            .filter_map(|(name, h)| {
                let limit = h.lowered.filter(|(_, until)| now < *until).map_or(configured, |(n, _)| n.min(configured));
                let tasks = limit.saturating_sub(h.push).max(1);
                (tasks < configured).then(|| (name.clone(), tasks))
            })
            .collect()
    }

    /// A slot for a push connection to `host`, if the budget has room for it and still one
    /// more for tasks; never waits (an account without one polls).
    pub fn acquire_push(&self, host: &str, configured: usize) -> bool {
        let mut st = self.lock();
        let h = st.hosts.entry(host.to_owned()).or_default();
        let limit = h.limit(configured);
        if h.open < limit && h.push + 1 < limit {
            h.open += 1;
            h.push += 1;
            let open = h.open;
            st.peak = st.peak.max(open);
            true
        } else {
            false
        }
    }

    /// A push connection to `host` closed.
    pub fn release_push(&self, host: &str) {
        let mut st = self.lock();
        if let Some(h) = st.hosts.get_mut(host) {
            h.push = h.push.saturating_sub(1);
            h.open = h.open.saturating_sub(1);
        }
        drop(st);
        self.freed.notify_all();
    }

    /// A slot for a new connection to `host`: taken when the budget has room, else made by
    /// logging out the host's least recently used idle session, else waited for until
    /// `until`.
    fn acquire(&self, host: &str, configured: usize, until: Instant) -> Result<(), Failure> {
        let mut st = self.lock();
        loop {
            let h = st.hosts.entry(host.to_owned()).or_default();
            let limit = h.limit(configured);
            if h.open < limit {
                h.open += 1;
                let open = h.open;
                st.peak = st.peak.max(open);
                return Ok(());
            }
            // A slot frees in a moment: wait for it.
            let lru = if h.retiring > 0 {
                None
            } else {
                // The slot of an idle session of this host passes to us.
                st.idle
                    .iter()
                    .flat_map(|(a, v)| v.iter().enumerate().map(move |(i, s)| (*a, i, s)))
                    .filter(|(.., s)| s.host == host)
                    .min_by_key(|(.., s)| s.since)
                    .map(|(a, i, _)| (a, i))
            };
            if let Some((account, i)) = lru {
                let old = take_at(&mut st.idle, account, i);
                closed(&mut st, account);
                drop(st);
                log::debug!("closing the idle session of account {account}: {host} is at its connection budget");
                // Closed at the server before the next connection logs in: a server counts a
                // connection until it has closed it, and would otherwise see one too many.
                old.session.logout_and_wait(HANDOFF_CLOSE.min(until.saturating_duration_since(Instant::now())));
                return Ok(());
            }
            let now = Instant::now();
            if now >= until {
                return Err(Failure::new(
                    FailureKind::Connect,
                    format!(
                        "no free connection to {host} within the task's deadline ({limit} in use, BG_MAX_CONNECTIONS_PER_HOST)"
                    ),
                ));
            }
            st = self.freed.wait_timeout(st, until - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// A connection to `host` closed (or was never made).
    fn release(&self, host: &str) {
        let mut st = self.lock();
        if let Some(h) = st.hosts.get_mut(host) {
            h.open = h.open.saturating_sub(1);
        }
        drop(st);
        self.freed.notify_all();
    }

    /// The server refused a connection as one too many: its budget becomes what it has
    /// accepted (at least one) for [`LOWERED_FOR`]. Returns whether other connections to it
    /// are open (if none, the refusal is not about our count).
    fn lower(&self, host: &str) -> bool {
        let mut st = self.lock();
        let h = st.hosts.entry(host.to_owned()).or_default();
        // `open` counts the connection that was refused too.
        let accepted = h.open.saturating_sub(1);
        if accepted > 0 {
            log::warn!(
                "{host} has too many connections from us: its budget is {accepted} for the next {} s",
                LOWERED_FOR.as_secs()
            );
            h.lowered = Some((accepted, Instant::now() + LOWERED_FOR));
        }
        accepted > 0
    }

    /// One of the account's idle sessions: for a sync of folder `status_of`, one holding its
    /// STATUS answer (asked ahead by the last sync), else one holding none; else the most
    /// recently used. A receive (which may run beside the syncs) leaves a session holding
    /// STATUS answers to the syncs that will want them, and connects anew, while the account
    /// has fewer than `parallel` connections: else the next sync would ask every folder's
    /// STATUS again on another connection.
    fn take_idle(
        &self,
        account: i64,
        status_of: Option<&str>,
        receive: bool,
        parallel: usize,
    ) -> Option<(Session, String)> {
        let mut st = self.lock();
        let v = st.idle.get(&account)?;
        let fits = |s: &Session| match status_of {
            Some(name) => s.has_status(name),
            None => !s.holds_status(),
        };
        let i = match v.iter().rposition(|i| fits(&i.session)) {
            Some(i) => i,
            None if receive && st.open_of.get(&account).copied().unwrap_or(0) < parallel => return None,
            None => v.len().checked_sub(1)?,
        };
        let i = take_at(&mut st.idle, account, i);
        Some((i.session, i.host))
    }

    /// A task connection of `account` was opened.
    fn opened(&self, account: i64) {
        *self.lock().open_of.entry(account).or_default() += 1;
    }

    fn give_back(&self, account: i64, session: Session, host: String) {
        self.lock().idle.entry(account).or_default().push(Idle { session, host, since: Instant::now() });
        self.freed.notify_all();
    }

    /// Task connections open per account (in use or idle), for the scheduler's budget: a
    /// task of an account with one open may run on it.
    pub fn open_counts(&self) -> HashMap<i64, usize> {
        self.lock().open_of.clone()
    }

    /// Closes `account`'s idle sessions on a thread of their own: the account has nothing
    /// left to do, and other accounts wait for the host's connections. The slots free as the
    /// server closes each one (`Session::logout_and_wait`), before a waiting task asks for
    /// one, instead of that task logging this session out and waiting for it itself.
    pub fn retire(self: &Arc<Self>, account: i64) {
        let mut st = self.lock();
        let Some(idle) = st.idle.remove(&account) else { return };
        for i in &idle {
            // no longer the account's: only the host's slot waits for the server
            closed(&mut st, account);
            st.hosts.entry(i.host.clone()).or_default().retiring += 1;
        }
        drop(st);
        let mut retiring = Retiring { pool: Arc::clone(self), idle };
        // A thread is cheap beside a round trip; without one, the master would wait for it.
        let spawned = std::thread::Builder::new().name("retire".into()).spawn(move || {
            while let Some(i) = retiring.idle.pop() {
                i.session.logout_and_wait(HANDOFF_CLOSE);
                retiring.closed(&i.host);
            }
        });
        if let Err(e) = spawned {
            // the sessions were dropped with the thread's closure (`Retiring::drop`)
            log::warn!("cannot start a thread to close account {account}'s idle sessions: {e}");
        }
    }

    /// Logs out of sessions unused for `idle`.
    pub fn close_idle(&self, idle: Duration) {
        let stale: Vec<(i64, Idle)> = {
            let mut st = self.lock();
            let mut stale = Vec::new();
            st.idle.retain(|k, v| {
                // oldest first: those given back earliest
                let n = v.iter().take_while(|i| i.since.elapsed() >= idle).count();
                stale.extend(v.drain(..n).map(|i| (*k, i)));
                !v.is_empty()
            });
            stale
        };
        for (k, i) in stale {
            log::debug!("closing idle session of account {k}");
            i.session.logout();
            closed(&mut self.lock(), k);
            self.release(&i.host);
        }
    }

    pub fn close_all(&self) {
        let all: Vec<(i64, Idle)> =
            self.lock().idle.drain().flat_map(|(k, v)| v.into_iter().map(move |i| (k, i))).collect();
        for (k, i) in all {
            i.session.logout();
            closed(&mut self.lock(), k);
            self.release(&i.host);
        }
    }
}

/// Idle sessions being closed by [`SessionPool::retire`]. Those it never got to (the thread
/// could not start) are dropped, and their slots freed, with it.
struct Retiring {
    pool: Arc<SessionPool>,
    idle: Vec<Idle>,
}

impl Retiring {
    fn closed(&self, host: &str) {
        let mut st = self.pool.lock();
        if let Some(h) = st.hosts.get_mut(host) {
            h.retiring = h.retiring.saturating_sub(1);
        }
        drop(st);
        self.pool.release(host);
    }
}

impl Drop for Retiring {
    fn drop(&mut self) {
        for i in std::mem::take(&mut self.idle) {
            drop(i.session);
            self.closed(&i.host);
        }
    }
}

/// A task connection of `account` was closed.
fn closed(st: &mut PoolState, account: i64) {
    if let Some(n) = st.open_of.get_mut(&account) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            st.open_of.remove(&account);
        }
    }
}

/// Takes the `i`-th idle session of `account` out of `idle`.
fn take_at(idle: &mut HashMap<i64, Vec<Idle>>, account: i64, i: usize) -> Idle {
    let v = idle.get_mut(&account).expect("an account with idle sessions");
    let old = v.remove(i);
    if v.is_empty() {
        idle.remove(&account);
    }
    old
}

pub fn imap_params(
    a: &Account,
    config: &Config,
    credential: Credential,
    deadline: Option<Deadline>,
) -> Result<ConnectParams, Failure> {
    let ca_pem = match &a.tls_ca_file {
        Some(f) => Some(
            std::fs::read(f).map_err(|e| Failure::new(FailureKind::Tls, format!("cannot read CA file {f}: {e}")))?,
        ),
        None => None,
    };
    Ok(ConnectParams {
        host: a.imap_host.clone(),
        port: a.imap_port,
        security: a.imap_security,
        login: a.login.clone(),
        credential,
        ca_pem,
        insecure: a.tls_insecure,
        timeout: Duration::from_secs(config.bg_io_timeout),
        deadline,
        max_message: usize::try_from(config.email_bg_max_message_size).unwrap_or(usize::MAX),
        compress: compress(config.email_bg_imap_compress, &a.imap_host),
    })
}

/// EMAIL_BG_IMAP_COMPRESS for a host: 0 never, 1 unless the host is this machine (where
/// bytes are free and the server's deflating costs the CPU both share: 9× slower measured),
/// 2 always.
fn compress(setting: u64, host: &str) -> bool {
    match setting {
        0 => false,
        1 => !backproc_types::is_loopback(host),
        _ => true,
    }
}

pub fn failure_from_imap(e: backproc_imap::Error) -> Failure {
    let kind = match e.kind {
        ErrorKind::Auth => FailureKind::Auth,
        ErrorKind::Connect | ErrorKind::Timeout | ErrorKind::Busy | ErrorKind::Throttled => FailureKind::Connect,
        ErrorKind::Tls => FailureKind::Tls,
        ErrorKind::Protocol | ErrorKind::Refused => FailureKind::Protocol,
    };
    let retry_after = e.retry_after;
    Failure { retry_after, ..Failure::new(kind, e.detail.clone()).caused_by(e) }
}

/// The key of a host's budget: its name, in lower case.
fn host_key(a: &Account) -> String {
    a.imap_host.to_ascii_lowercase()
}

/// One worker's view of the pool: the session its current task checked out.
pub struct Sessions {
    pool: Arc<SessionPool>,
    /// (account, its session, its host, the session's ignored FETCH answers when checked out)
    current: Option<(i64, Session, String, u64)>,
    deadline: Option<Deadline>,
    /// The task is a receive (`begin_task`): see `SessionPool::take_idle`.
    receive: bool,
    /// FETCH answers for UIDs not asked (or UID 0, or twice) the sessions of this worker's
    /// tasks ignored since the last `take_ignored`.
    ignored: u64,
}

impl Sessions {
    pub fn new(pool: Arc<SessionPool>) -> Sessions {
        Sessions { pool, current: None, deadline: None, receive: false, ignored: 0 }
    }

    /// The pool this worker's sessions come from.
    pub(crate) fn pool(&self) -> &Arc<SessionPool> {
        &self.pool
    }

    /// Ignored FETCH answers since the last call (for `backproc_ignored_fetch_responses_total`).
    pub fn take_ignored(&mut self) -> u64 {
        std::mem::take(&mut self.ignored)
    }

    /// A new task starts: its deadline applies to every session it uses; `receive`: it is a
    /// receive, which may run beside its account's syncs.
    pub fn begin_task(&mut self, deadline: Option<Deadline>, receive: bool) {
        self.deadline = deadline;
        self.receive = receive;
    }

    /// The task ended: its session goes back to the pool, idle. Returns the throttling answer
    /// its session got to a command no one waited for (a STATUS asked ahead), which fails the
    /// task: the server asked the account to wait.
    pub fn end_task(&mut self) -> Option<Failure> {
        let throttled = self.current.as_mut().and_then(|(_, s, ..)| s.take_throttle());
        self.end_task_session();
        self.deadline = None;
        throttled.map(failure_from_imap)
    }

    /// The account's session, from the pool or newly connected within the host's budget.
    /// The account's health (back-off) is recorded by the runner from the task's outcome,
    /// not here: a connection that logs in and then drops must back off too.
    pub fn get(&mut self, store: &mut Store, config: &Config, account: i64, now: i64) -> Result<&mut Session, Failure> {
        self.get_for(store, config, account, now, None)
    }

    /// [`get`](Self::get) for a sync of folder `status_of`: an idle session that asked its
    /// STATUS ahead is taken first.
    pub fn get_for(
        &mut self,
        store: &mut Store,
        config: &Config,
        account: i64,
        now: i64,
        status_of: Option<&str>,
    ) -> Result<&mut Session, Failure> {
        if self.current.as_ref().is_some_and(|(a, ..)| *a != account) {
            self.end_task_session();
        }
        if self.current.is_none() {
            let parallel = config.email_bg_account_connections as usize;
            let (session, host) = match self.pool.take_idle(account, status_of, self.receive, parallel) {
                Some(found) => found,
                None => self.connect(store, config, account, now)?,
            };
            let seen = session.stats().ignored_fetch;
            self.current = Some((account, session, host, seen));
        }
        let (_, s, ..) = self.current.as_mut().expect("set above");
        s.set_deadline(self.deadline);
        Ok(s)
    }

    fn count_ignored(&mut self, s: &Session, seen: u64) {
        self.ignored += s.stats().ignored_fetch.saturating_sub(seen);
    }

    fn end_task_session(&mut self) {
        if let Some((account, s, host, seen)) = self.current.take() {
            self.count_ignored(&s, seen);
            self.pool.give_back(account, s, host);
        }
    }

    fn connect(
        &mut self,
        store: &mut Store,
        config: &Config,
        account: i64,
        now: i64,
    ) -> Result<(Session, String), Failure> {
        let mut a = store.account(account)?;
        let host = host_key(&a);
        let budget = config.bg_max_connections_per_host as usize;
        let until = self
            .deadline
            .map_or_else(|| Instant::now() + Duration::from_secs(config.bg_task_deadline), |d| d.start + d.budget);
        let mut forced = false;
        loop {
            self.pool.acquire(&host, budget, until)?;
            let params = signin::credential(store, config, &a, Server::Imap, forced, now)
                .and_then(|c| imap_params(&a, config, c, self.deadline));
            let params = match params {
                Ok(p) => p,
                Err(f) => {
                    self.pool.release(&host);
                    return Err(f);
                }
            };
            match Session::connect(&params) {
                Ok(s) => {
                    self.pool.opened(account);
                    return Ok((s, host));
                }
                Err(e) => {
                    // A token the server refuses although it has not expired by our clock
                    // (revoked, or the server's clock is ahead): one forced refresh, one more try.
                    if e.kind == ErrorKind::Auth && !forced && signin::refreshable(&a, Server::Imap) {
                        self.pool.release(&host);
                        log::info!("account {}: the server refused the access token; refreshing it once", a.id);
                        forced = true;
                        // the first try may have refreshed and rotated the refresh token
                        a = store.account(account)?;
                        continue;
                    }
                    let busy = e.kind == ErrorKind::Busy;
                    let f = failure_from_imap(e);
                    let others = busy && self.pool.lower(&host);
                    self.pool.release(&host);
                    if !others || Instant::now() >= until {
                        return Err(f);
                    }
                    // Too many of ours: wait for one of them to be given back, within the
                    // deadline, and try again.
                }
            }
        }
    }

    /// Forgets the account's session after an error: its connection state is unknown.
    pub fn discard(&mut self, account: i64) {
        if let Some((a, s, host, seen)) = self.current.take() {
            if a == account {
                self.count_ignored(&s, seen);
                drop(s);
                closed(&mut self.pool.lock(), a);
                self.pool.release(&host);
            } else {
                self.current = Some((a, s, host, seen));
            }
        }
    }

    /// Logs out of sessions unused for `idle` (any worker's).
    pub fn close_idle(&mut self, idle: Duration) {
        self.pool.close_idle(idle);
    }

    pub fn close_all(&mut self) {
        self.end_task_session();
        self.pool.close_all();
    }
}

/// Records an account-level failure and when to try again: after a refused login wait
/// EMAIL_AUTH_ERROR_CHECK_RETRY_TIME (retrying a wrong password every tick can lock the
/// mailbox); a server that says how long to wait (throttling) is waited for that long;
/// otherwise back off exponentially. Logged at info once per change of state.
pub fn record_failure(store: &mut Store, config: &Config, a: &Account, f: &Failure, now: i64) -> Result<(), Failure> {
    let failure = match (f.kind, f.retry_after) {
        (FailureKind::NeedsAuthorization, _) => AccountFailure::GrantRevoked,
        (FailureKind::Auth, _) => AccountFailure::RefusedLogin,
        (_, Some(wait)) => AccountFailure::Throttled(wait),
        _ => AccountFailure::Other,
    };
    let auth_wait = config.email_auth_error_check_retry_time as i64;
    // `failures` counts those before this one
    let delay = match retry::account_failed(&crate::schedule::backoff(config), auth_wait, failure, a.failures) {
        AccountNext::WaitForPerson => {
            // A person must act: no time would make the next try succeed.
            if a.needs_authorization.is_none() {
                log::error!("{f}; the account is not tried again until `backproc account authorize {}`", a.id);
            }
            store.mark_needs_authorization(a.id, &f.to_string(), now)?;
            return Ok(());
        }
        AccountNext::RetryIn(secs) => secs,
    };
    let status = f.kind.status();
    if a.last_error.as_deref().is_none_or(|e| !e.starts_with(status)) || a.failures == 0 {
        log::error!("{}; next try in {}s", f, delay);
    } else {
        log::debug!("{}; next try in {}s", f, delay);
    }
    store.record_account_failure(a.id, &f.to_string(), now, now + delay)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use backproc_imap::Security;

    use super::*;

    const GMAIL: &str = "imap.gmail.test";

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// A failure keeps the errors beneath it: a caller can find the I/O error of a refused
    /// connection under the task's failure, and the store's error under a store failure.
    #[test]
    fn a_failure_keeps_the_errors_beneath_it() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let p = ConnectParams {
            host: "127.0.0.1".into(),
            port,
            security: Security::None,
            login: "u".into(),
            credential: Credential::Password("p".into()),
            ca_pem: None,
            insecure: false,
            timeout: Duration::from_secs(5),
            deadline: None,
            max_message: 1 << 20,
            compress: false,
        };
        let f = failure_from_imap(Session::connect(&p).err().expect("nothing listens there"));
        assert_eq!(f.kind, FailureKind::Connect);
        let mut chain = Vec::new();
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(&f);
        while let Some(cur) = e {
            chain.push(cur);
            e = cur.source();
        }
        assert_eq!(chain.len(), 3, "the failure, the IMAP error, the I/O error: {chain:?}");
        assert!(chain[1].downcast_ref::<backproc_imap::Error>().is_some(), "{chain:?}");
        let io = chain[2].downcast_ref::<std::io::Error>().expect("the I/O error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);

        let store = Failure::from(backproc_store::Error::NotFound { what: "account", id: "7".into() });
        let under = std::error::Error::source(&store).and_then(|e| e.downcast_ref::<backproc_store::Error>());
        assert!(matches!(under, Some(backproc_store::Error::NotFound { .. })), "{store:?}");
        assert_eq!(store.detail, "account 7 not found", "the text is unchanged");
    }

    /// One Gmail body is downloaded by one receive of the account at a time; another
    /// account's same X-GM-MSGID is its own; a release lets the next claim it.
    #[test]
    fn a_gmail_body_is_claimed_by_one_receive_at_a_time() {
        let pool = SessionPool::new();
        assert!(pool.claim_bodies(1, &[10, 11]).is_empty(), "the first receive gets both");
        assert_eq!(pool.claim_bodies(1, &[11, 12]), HashSet::from([11]), "the second is told 11 is on its way");
        assert!(pool.claim_bodies(2, &[10]).is_empty(), "another account's message is another message");
        pool.release_bodies(1, [10, 11]);
        assert!(pool.claim_bodies(1, &[11]).is_empty(), "released: the next receive may take it");
        assert_eq!(pool.claim_bodies(1, &[12]), HashSet::from([12]), "12 is still held by the second");
    }

    #[test]
    fn refusals_lower_a_hosts_budget_to_what_the_server_accepted() {
        let pool = SessionPool::new();
        // Eight connections set up at once; the server accepts three and refuses five, each
        // refusal lowering the budget while its own connection still counts, then releasing it.
        for _ in 0..8 {
            pool.acquire(GMAIL, 8, soon()).unwrap();
        }
        for want in [7, 6, 5, 4, 3] {
            assert!(pool.lower(GMAIL), "other connections are open");
            pool.release(GMAIL);
            assert_eq!(pool.lowered(8), HashMap::from([(GMAIL.to_string(), want)]));
        }
        // Full at three, with no idle session to log out: no fourth slot within the deadline.
        let e = pool.acquire(GMAIL, 8, Instant::now()).unwrap_err();
        assert!(e.detail.contains("3 in use"), "{}", e.detail);
        pool.release(GMAIL);
        pool.acquire(GMAIL, 8, Instant::now()).unwrap();
        // The configured budget still caps a lowered one, and other hosts keep theirs.
        assert!(pool.acquire(GMAIL, 2, Instant::now()).is_err());
        for _ in 0..8 {
            pool.acquire("other.test", 8, Instant::now()).unwrap();
        }
        assert!(pool.acquire("other.test", 8, Instant::now()).is_err());
        assert_eq!(pool.peak(), 8);
    }

    #[test]
    fn push_connections_leave_tasks_at_least_one_slot_and_lower_their_budget() {
        let pool = SessionPool::new();
        for _ in 0..3 {
            assert!(pool.acquire_push(GMAIL, 4));
        }
        assert!(!pool.acquire_push(GMAIL, 4), "the fourth slot is for tasks");
        assert_eq!(pool.lowered(4), HashMap::from([(GMAIL.to_string(), 1)]));
        pool.acquire(GMAIL, 4, Instant::now()).unwrap();
        assert!(pool.acquire(GMAIL, 4, Instant::now()).is_err(), "push connections count in the budget");
        pool.release_push(GMAIL);
        assert_eq!(pool.lowered(4), HashMap::from([(GMAIL.to_string(), 2)]));
        pool.acquire(GMAIL, 4, Instant::now()).unwrap();
        // A budget of one leaves push nothing.
        assert!(!pool.acquire_push("one.test", 1));
        assert!(pool.lowered(1).is_empty());
    }

    #[test]
    fn compression_by_setting_and_host() {
        let cases = [
            ("never", 0, "imap.example.com", false),
            ("remote, auto", 1, "imap.example.com", true),
            ("loopback address, auto", 1, "127.0.0.1", false),
            ("loopback v6, auto", 1, "::1", false),
            ("localhost, auto", 1, "LocalHost", false),
            ("always, loopback", 2, "127.0.0.1", true),
        ];
        for (name, setting, host, want) in cases {
            assert_eq!(compress(setting, host), want, "{name}");
        }
    }

    #[test]
    fn a_refusal_with_nothing_else_open_is_not_about_our_count() {
        let pool = SessionPool::new();
        pool.acquire(GMAIL, 8, soon()).unwrap();
        assert!(!pool.lower(GMAIL));
        assert!(pool.lowered(8).is_empty());
        pool.release(GMAIL);
        for _ in 0..8 {
            pool.acquire(GMAIL, 8, Instant::now()).unwrap();
        }
    }
}
