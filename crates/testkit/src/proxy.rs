//! A small threaded TCP proxy 127.0.0.1:free → upstream that injects network faults (cuts,
//! stalls, slow links, refused connections, injected bytes, STARTTLS stripping), records both
//! directions, counts open connections exactly, and optionally applies IMAP-aware rules
//! ([`ImapRule`], in `proxy/imapfault.rs`) that make a real Dovecot answer like Gmail or
//! Microsoft 365.

mod imapfault;

pub use imapfault::{GMAIL_TOO_MANY, GmailHits, ImapRule, M365_THROTTLED, gm_msgid};

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use imapfault::RuleSet;

/// What the proxy does to each connection opened after `set_fault`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward both ways unchanged.
    Pass,
    /// Close both sides after forwarding this many server→client bytes.
    CutAfter { server_bytes: u64 },
    /// Close both sides after forwarding this many client→server bytes. The client's side
    /// closes before the last of them go out, so no answer to them ever reaches the client.
    CutClientAfter { client_bytes: u64 },
    /// Accept, never connect upstream, forward nothing (until the client gives up).
    Stall,
    /// Sleep this long before forwarding each chunk, both ways (a slow link).
    Delay { per_chunk_ms: u64 },
    /// Close the accepted connection at once.
    Refuse,
    /// Insert `bytes` into the server→client stream after `server_bytes_at` server bytes.
    Inject { server_bytes_at: u64, bytes: Vec<u8> },
    /// Forward everything but remove STARTTLS from the server's capabilities (IMAP CAPABILITY
    /// lines and SMTP EHLO lines), to test that a client refuses to continue without TLS.
    StripStartTls,
}

/// Connections open now and the most open at once; one mutex so the pair is always consistent
/// (a separate atomic maximum could miss a peak between two updates).
struct Counts {
    open: usize,
    max: usize,
    /// The most connections whose client had not closed its end, at one accept (see
    /// [`FaultProxy::max_client_concurrent`]).
    max_client: usize,
    /// Samples of `max_client` waiting for their [`SETTLE`] check.
    audits: usize,
}

/// How long after an accept the connections then open are checked for a hang-up that was
/// already on its way (see [`FaultProxy::max_client_concurrent`]).
const SETTLE: Duration = Duration::from_millis(20);

struct Shared {
    fault: Mutex<Fault>,
    /// The IMAP rules for connections accepted from now on, with their hit counters.
    rules: Mutex<Arc<RuleSet>>,
    client: Mutex<Vec<u8>>,
    server: Mutex<Vec<u8>>,
    capture: AtomicBool,
    connections: AtomicUsize,
    counts: Mutex<Counts>,
    counts_changed: Condvar,
    stop: AtomicBool,
    /// `freeze`: no byte is forwarded either way while set (connections stay open).
    frozen: Arc<AtomicBool>,
    /// Clones of every open socket by connection id, shut down on drop so the pump threads end;
    /// a connection's entry is removed when it ends, so its descriptors really close.
    sockets: Mutex<HashMap<u64, Vec<TcpStream>>>,
}

/// A running fault proxy; stops (and closes every proxied connection) on drop.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One accepted connection in [`Counts`]: counted from accept until this guard drops, which is
/// after both pump threads ended and both sockets (and their registered clones) are closed.
/// Dropping it also covers a panic or a failed thread spawn, so the count cannot leak.
struct Open {
    sh: Arc<Shared>,
    id: u64,
}

impl Open {
    fn new(sh: &Arc<Shared>, id: u64) -> Open {
        let mut c = lock(&sh.counts);
        c.open += 1;
        c.max = c.max.max(c.open);
        sh.counts_changed.notify_all();
        Open { sh: Arc::clone(sh), id }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        // Close the registered clones first: only then are the sockets really closed.
        drop(lock(&self.sh.sockets).remove(&self.id));
        let mut c = lock(&self.sh.counts);
        c.open -= 1;
        self.sh.counts_changed.notify_all();
    }
}

impl FaultProxy {
    /// Listens on 127.0.0.1:free and forwards to `upstream`, with `Fault::Pass`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::Pass),
            rules: Mutex::new(Arc::new(RuleSet::new(Vec::new()))),
            client: Mutex::new(Vec::new()),
            server: Mutex::new(Vec::new()),
            capture: AtomicBool::new(true),
            connections: AtomicUsize::new(0),
            counts: Mutex::new(Counts { open: 0, max: 0, max_client: 0, audits: 0 }),
            counts_changed: Condvar::new(),
            stop: AtomicBool::new(false),
            frozen: Arc::new(AtomicBool::new(false)),
            sockets: Mutex::new(HashMap::new()),
        });
        let sh = Arc::clone(&shared);
        let next_id = AtomicU64::new(0);
        let acceptor = std::thread::Builder::new().name(format!("fault-proxy-{port}")).spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                sh.connections.fetch_add(1, Ordering::SeqCst);
                // Counted here, in the accepting thread, so a burst is counted in accept order
                // before any handler thread runs: the count never lags behind the clients.
                let open = Open::new(&sh, next_id.fetch_add(1, Ordering::SeqCst));
                // Registered here, not in the handler thread, so the next accept's
                // `note_live_clients` sees every connection accepted before it.
                register(&sh, open.id, &client);
                note_live_clients(&sh);
                let fault = lock(&sh.fault).clone();
                let rules = Arc::clone(&lock(&sh.rules));
                // A failed spawn drops the closure, and with it the socket and the guard.
                let _ = std::thread::Builder::new().name(format!("fault-proxy-{port}-conn")).spawn(move || {
                    handle(client, upstream, fault, rules, &open);
                    drop(open);
                });
            }
        })?;
        Ok(FaultProxy { port, shared, acceptor: Some(acceptor) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Applies to connections accepted after this call; open ones keep their fault.
    pub fn set_fault(&self, f: Fault) {
        *lock(&self.shared.fault) = f;
    }

    /// IMAP rules for connections accepted after this call (open ones keep theirs), applied in
    /// list order on top of the current [`Fault`]. Resets the hit counters. An empty list turns
    /// IMAP parsing off: bytes then pass exactly as without rules (also for non-IMAP protocols).
    pub fn set_imap_rules(&self, rules: Vec<ImapRule>) {
        *lock(&self.shared.rules) = Arc::new(RuleSet::new(rules));
    }

    /// How often rule `i` of the last [`set_imap_rules`](Self::set_imap_rules) list acted, over
    /// all connections: answers given (`TooManyConnections`, `Throttle`), FETCH responses given
    /// Gmail items (`Gmail`; see [`gmail_hits`](Self::gmail_hits) for the rest), lines replaced
    /// (`Rewrite`). Panics if `i` is out of range.
    pub fn rule_hits(&self, i: usize) -> u64 {
        lock(&self.shared.rules).hits(i)
    }

    /// What the `Gmail` rule of the last rule list did so far.
    pub fn gmail_hits(&self) -> GmailHits {
        lock(&self.shared.rules).gmail_hits()
    }

    /// Cuts every connection open now (both sides shut down, as a link that went away);
    /// new ones are treated by the fault set.
    pub fn cut_all(&self) {
        for socks in lock(&self.shared.sockets).values() {
            for s in socks {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// While `on`, nothing is forwarded either way and the connections stay open: a peer
    /// gone silent (a frozen host, a link that drops packets without a reset).
    pub fn freeze(&self, on: bool) {
        self.shared.frozen.store(on, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Client connections open now: each from its accept until both pump threads ended and both
    /// its sockets are closed (so a closing connection still counts for a moment after the
    /// client closed it, as it would for the server).
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.counts).open
    }

    /// The most connections that were open at the same moment (as counted by
    /// [`open_connections`](Self::open_connections)) since start or the last
    /// [`reset_max`](Self::reset_max).
    pub fn max_concurrent(&self) -> usize {
        lock(&self.shared.counts).max
    }

    /// The most connections whose client had not closed its end at the same moment. Sampled at
    /// each accept: the new connection and every earlier one whose client socket has not hung
    /// up (`EPOLLRDHUP`: the client's FIN, or `EPOLLHUP`/`EPOLLERR`: its RST). A client's FIN
    /// is not always processed by the time its next connection is accepted (loopback may defer
    /// it to a softirq), so a sample that would be a new peak is checked again [`SETTLE`]
    /// (20 ms) later and only its connections still open then count: a connection closed
    /// within 20 ms after an accept counts as closed before it.
    ///
    /// Unlike [`max_concurrent`](Self::max_concurrent), this does not count a connection the
    /// client closed while the proxy and the server still wind it down, so a client that closes
    /// one connection and at once opens the next is seen holding one, as it does. The count
    /// only grows at an accept, so sampling there finds its peaks; a client that holds one
    /// connection too many for longer than 20 ms is caught. Waits for checks in progress.
    pub fn max_client_concurrent(&self) -> usize {
        let mut c = lock(&self.shared.counts);
        while c.audits > 0 {
            c = self.shared.counts_changed.wait(c).unwrap_or_else(|e| e.into_inner());
        }
        c.max_client
    }

    /// Restarts [`max_concurrent`](Self::max_concurrent) (and
    /// [`max_client_concurrent`](Self::max_client_concurrent)) from the connections open now.
    pub fn reset_max(&self) {
        let _ = self.max_client_concurrent();
        let live = live_clients(&self.shared, None).len();
        let mut c = lock(&self.shared.counts);
        c.max = c.open;
        c.max_client = live;
    }

    /// Waits until exactly `n` connections are open; false if that did not happen in `timeout`.
    /// For tests to wait on the count instead of sleeping.
    pub fn wait_open(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut c = lock(&self.shared.counts);
        while c.open != n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            c = self.shared.counts_changed.wait_timeout(c, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Turns recording of [`captured_client`](Self::captured_client) and
    /// [`captured_server`](Self::captured_server) on (the default) or off, e.g. for tests that
    /// move many large messages and would otherwise keep every byte in memory.
    pub fn set_capture(&self, on: bool) {
        self.shared.capture.store(on, Ordering::SeqCst);
    }

    /// Everything clients sent, all connections concatenated in arrival order.
    pub fn captured_client(&self) -> Vec<u8> {
        lock(&self.shared.client).clone()
    }

    /// Everything the upstream server sent (before any fault rewrote it).
    pub fn captured_server(&self) -> Vec<u8> {
        lock(&self.shared.server).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.frozen.store(false, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        for (_, conn) in lock(&self.shared.sockets).drain() {
            for s in conn {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

fn register(sh: &Shared, id: u64, s: &TcpStream) {
    if let Ok(c) = s.try_clone() {
        lock(&sh.sockets).entry(id).or_default().push(c);
    }
    if sh.stop.load(Ordering::SeqCst) {
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// The ids of the connections (of `among`, or all) whose client socket (the first registered)
/// has not hung up: an epoll without waiting reports `EPOLLRDHUP` (FIN), `EPOLLHUP` or
/// `EPOLLERR` (RST) for the others. A connection that ended is not among them.
fn live_clients(sh: &Shared, among: Option<&[u64]>) -> Vec<u64> {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    let sockets = lock(&sh.sockets);
    let clients: Vec<(u64, &TcpStream)> = sockets
        .iter()
        .filter(|(id, _)| among.is_none_or(|a| a.contains(id)))
        .filter_map(|(id, v)| v.first().map(|s| (*id, s)))
        .collect();
    let all = || clients.iter().map(|(id, _)| *id).collect();
    let Ok(ep) = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) else { return all() };
    for (id, s) in &clients {
        if ep.add(s, EpollEvent::new(EpollFlags::EPOLLRDHUP, *id)).is_err() {
            return all();
        }
    }
    let mut events = vec![EpollEvent::empty(); clients.len().max(1)];
    let gone = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
    let Ok(n) = ep.wait(&mut events, EpollTimeout::ZERO) else { return all() };
    let hung_up: Vec<u64> = events[..n].iter().filter(|e| e.events().intersects(gone)).map(|e| e.data()).collect();
    clients.iter().map(|(id, _)| *id).filter(|id| !hung_up.contains(id)).collect()
}

/// Samples [`Counts::max_client`] after an accept; a sample over the peak so far is checked
/// again after [`SETTLE`], in a thread of its own so the acceptor goes on.
fn note_live_clients(sh: &Arc<Shared>) {
    let live = live_clients(sh, None);
    {
        let mut c = lock(&sh.counts);
        if live.len() <= c.max_client {
            return;
        }
        c.audits += 1;
    }
    let settled = |sh: &Shared, n: usize| {
        let mut c = lock(&sh.counts);
        c.max_client = c.max_client.max(n);
        c.audits -= 1;
        sh.counts_changed.notify_all();
    };
    let n = live.len();
    let sh2 = Arc::clone(sh);
    let spawned = std::thread::Builder::new().name("fault-proxy-settle".into()).spawn(move || {
        std::thread::sleep(SETTLE);
        settled(&sh2, live_clients(&sh2, Some(&live)).len());
    });
    if spawned.is_err() {
        settled(sh, n);
    }
}

/// Records bytes read from the client (`downstream` false) or the server.
fn capture(sh: &Shared, downstream: bool, bytes: &[u8]) {
    if sh.capture.load(Ordering::Relaxed) {
        lock(if downstream { &sh.server } else { &sh.client }).extend_from_slice(bytes);
    }
}

fn handle(client: TcpStream, upstream: SocketAddr, fault: Fault, rules: Arc<RuleSet>, open: &Open) {
    let sh = &open.sh;
    match fault {
        Fault::Refuse => {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        Fault::Stall => {
            // Swallow what the client sends until it (or the proxy) closes.
            let mut c = &client;
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = c.read(&mut buf) {
                capture(sh, false, &buf[..n]);
            }
            return;
        }
        _ => {}
    }
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(10)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    register(sh, open.id, &server);
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    if !rules.is_empty() {
        imapfault::run(client, server, &fault, rules, sh);
        return;
    }
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = {
        let (fault, sh) = (fault.clone(), Arc::clone(sh));
        std::thread::spawn(move || pump(c2, s2, &fault, false, &sh))
    };
    pump(server, client, &fault, true, sh);
    let _ = up.join();
}

/// Copies `from` → `to` applying `fault` for this direction (`downstream`: server → client).
fn pump(mut from: TcpStream, mut to: TcpStream, fault: &Fault, downstream: bool, sh: &Shared) {
    let mut stage = Stage::new(fault, downstream, &sh.frozen);
    if !downstream && matches!(fault, Fault::CutClientAfter { .. }) {
        stage.client = from.try_clone().ok();
    }
    let mut buf = vec![0u8; 64 * 1024];
    while !stage.cut {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        capture(sh, downstream, &buf[..n]);
        stage.delay();
        if !stage.send(&mut to, &buf[..n]) {
            break;
        }
    }
    stage.finish(&from, &to);
}

/// The [`Fault`] applied to one direction's outgoing bytes: the last step before the socket,
/// shared by the plain pump and the IMAP pumps (so a fault sees what the client or server
/// would receive, proxy answers and rewrites included).
struct Stage {
    fault: Fault,
    downstream: bool,
    forwarded: u64,
    injected: bool,
    /// StripStartTls: an incomplete line held back.
    pending: Vec<u8>,
    limit: Option<u64>,
    /// The cut limit was reached: the stream ends.
    cut: bool,
    /// CutClientAfter: the client's socket, closed before the last bytes go to the server,
    /// so that the server's answer to them can never reach the client (the cut is "right
    /// after", whatever the threads' timing).
    client: Option<TcpStream>,
    /// The proxy's `freeze` switch.
    frozen: Arc<AtomicBool>,
}

impl Stage {
    fn new(fault: &Fault, downstream: bool, frozen: &Arc<AtomicBool>) -> Stage {
        let limit = match (fault, downstream) {
            (Fault::CutAfter { server_bytes }, true) => Some(*server_bytes),
            (Fault::CutClientAfter { client_bytes }, false) => Some(*client_bytes),
            _ => None,
        };
        Stage {
            fault: fault.clone(),
            downstream,
            forwarded: 0,
            injected: false,
            pending: Vec::new(),
            limit,
            cut: limit == Some(0),
            client: None,
            frozen: Arc::clone(frozen),
        }
    }

    /// `Fault::Delay`: called once per chunk read, before forwarding it.
    fn delay(&self) {
        if let Fault::Delay { per_chunk_ms } = self.fault {
            std::thread::sleep(Duration::from_millis(per_chunk_ms));
        }
    }

    /// Writes `data` to `to` through the fault; false when the stream must end (cut reached or
    /// the write failed).
    fn send(&mut self, to: &mut TcpStream, data: &[u8]) -> bool {
        while self.frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.cut {
            return false;
        }
        let mut chunk = data.to_vec();
        match &self.fault {
            Fault::Inject { server_bytes_at, bytes } if self.downstream && !self.injected => {
                let at = server_bytes_at.saturating_sub(self.forwarded);
                if at <= chunk.len() as u64 {
                    let at = at as usize;
                    chunk.splice(at..at, bytes.iter().copied());
                    self.injected = true;
                }
            }
            Fault::StripStartTls if self.downstream => {
                self.pending.extend_from_slice(&chunk);
                let end = self.pending.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                let complete: Vec<u8> = self.pending.drain(..end).collect();
                chunk = strip_starttls(&complete);
            }
            _ => {}
        }
        if let Some(limit) = self.limit {
            let left = limit - self.forwarded;
            if chunk.len() as u64 >= left {
                chunk.truncate(left as usize);
                self.cut = true;
                if let Some(c) = &self.client {
                    let _ = c.shutdown(Shutdown::Both);
                }
            }
        }
        if to.write_all(&chunk).is_err() {
            return false;
        }
        self.forwarded += chunk.len() as u64;
        !self.cut
    }

    /// Ends this direction: after a cut (or with a held-back partial line) both sockets close;
    /// after a normal EOF only `to`'s write side, so the other direction can finish.
    fn finish(&mut self, from: &TcpStream, to: &TcpStream) {
        if self.cut || !self.pending.is_empty() {
            let _ = (&*to).write_all(&std::mem::take(&mut self.pending));
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        } else {
            let _ = to.shutdown(Shutdown::Write);
        }
    }
}

/// Removes the STARTTLS capability from complete lines: the token in IMAP `CAPABILITY`
/// lines, and SMTP `250-STARTTLS` / `250 STARTTLS` EHLO lines (renamed so the reply stays
/// well-formed).
fn strip_starttls(lines: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.len());
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(line);
        let upper = text.to_ascii_uppercase();
        if upper.contains("CAPABILITY") && upper.contains(" STARTTLS") {
            let mut s = text.into_owned();
            while let Some(i) = s.to_ascii_uppercase().find(" STARTTLS") {
                s.replace_range(i..i + " STARTTLS".len(), "");
            }
            out.extend_from_slice(s.as_bytes());
        } else if upper.len() > 4 && upper.starts_with("250") && upper[4..].trim() == "STARTTLS" {
            out.extend_from_slice(&line[..4]);
            out.extend_from_slice(b"X-STRIPPED-STARTTLS\r\n");
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn strips_starttls() {
        let got =
            super::strip_starttls(b"* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] ready\r\n250-STARTTLS\r\nx\r\n");
        assert_eq!(got, b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n250-X-STRIPPED-STARTTLS\r\nx\r\n");
    }
}
