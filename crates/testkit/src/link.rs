//! A simulated wide-area link between a client and a server on loopback: a TCP proxy that
//! delays each direction by half the round-trip time as a delay line (bytes leave `rtt / 2`
//! after they arrived, so a pipelined stream keeps flowing: not stop-and-wait) and limits each
//! direction's bandwidth with one budget shared by all connections, as a real link does.
//! `tc netem` is not available on these machines.
//!
//! It counts the bytes each way and the round trips ("turns": client data that follows server
//! data, i.e. the client spoke again after hearing the server), so a benchmark can print the
//! link's limit and what each tool needed of it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A link's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Round-trip time: each direction is delayed by half of it.
    pub rtt: Duration,
    /// Bytes a second, per direction, shared by every connection.
    pub rate: u64,
}

impl Link {
    /// `rtt_ms` milliseconds, `mbit` megabits a second.
    pub fn new(rtt_ms: u64, mbit: u64) -> Link {
        Link { rtt: Duration::from_millis(rtt_ms), rate: mbit * 1_000_000 / 8 }
    }
}

/// One direction's bandwidth: when the link is free again.
struct Bucket {
    free_at: Instant,
}

struct Shared {
    link: Link,
    up: Mutex<Bucket>,
    down: Mutex<Bucket>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    turns: AtomicU64,
    connections: AtomicU64,
    stop: AtomicBool,
    /// The sockets of each open connection, by a number of its own, for `Drop` to shut down;
    /// removed when the connection ends (a bench run makes tens of thousands).
    sockets: Mutex<HashMap<u64, [TcpStream; 2]>>,
    next_id: AtomicU64,
}

/// A running link proxy on 127.0.0.1; stops (closing every connection) on drop.
pub struct LinkProxy {
    port: u16,
    shared: Arc<Shared>,
}

/// The largest piece released at once: a 64 KiB read would otherwise leave as one burst and
/// hold the other connections' bytes behind it.
const PIECE: usize = 16 * 1024;

/// How far back the link may count time a writer overslept (see `direction`).
const CATCH_UP: Duration = Duration::from_millis(5);

impl LinkProxy {
    pub fn start(upstream: SocketAddr, link: Link) -> anyhow::Result<LinkProxy> {
        anyhow::ensure!(link.rate > 0, "a link needs a rate");
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let now = Instant::now();
        let shared = Arc::new(Shared {
            link,
            up: Mutex::new(Bucket { free_at: now }),
            down: Mutex::new(Bucket { free_at: now }),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            sockets: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let sh = Arc::clone(&shared);
        std::thread::Builder::new().name("link-accept".into()).spawn(move || {
            for client in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let sh = Arc::clone(&sh);
                let _ = std::thread::Builder::new()
                    .name("link-conn".into())
                    .spawn(move || connection(client, upstream, &sh));
            }
        })?;
        Ok(LinkProxy { port, shared })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn link(&self) -> Link {
        self.shared.link
    }

    /// Bytes (client → server, server → client) carried so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.shared.bytes_up.load(Ordering::SeqCst), self.shared.bytes_down.load(Ordering::SeqCst))
    }

    /// Round trips so far: each time a client sent data after the server had sent some (or
    /// first, on a new connection).
    pub fn turns(&self) -> u64 {
        self.shared.turns.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections open now (accepted, not yet closed on both sides).
    pub fn open_connections(&self) -> usize {
        self.shared.sockets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Zeroes the counters (bytes, turns, connections), e.g. between two tools' runs.
    pub fn reset_counts(&self) {
        for c in [&self.shared.bytes_up, &self.shared.bytes_down, &self.shared.turns, &self.shared.connections] {
            c.store(0, Ordering::SeqCst);
        }
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for s in self.shared.sockets.lock().unwrap_or_else(|e| e.into_inner()).drain().flat_map(|(_, s)| s) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn connection(client: TcpStream, upstream: SocketAddr, sh: &Arc<Shared>) {
    let Ok(server) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    sh.connections.fetch_add(1, Ordering::SeqCst);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let id = sh.next_id.fetch_add(1, Ordering::SeqCst);
    if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
        sh.sockets.lock().unwrap_or_else(|e| e.into_inner()).insert(id, [c, s]);
    }
    // Who spoke last on this connection: a client write after server data is a new turn.
    let server_spoke = Arc::new(AtomicBool::new(true));
    if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
        let up = {
            let (sh, spoke) = (Arc::clone(sh), Arc::clone(&server_spoke));
            std::thread::spawn(move || direction(c2, s2, &sh, true, &spoke))
        };
        direction(server, client, sh, false, &server_spoke);
        let _ = up.join();
    }
    sh.sockets.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
}

/// Carries one direction: a reader stamps each chunk's arrival, a writer releases it half a
/// round trip later, paced by the direction's shared bandwidth.
fn direction(mut from: TcpStream, to: TcpStream, sh: &Arc<Shared>, upstream: bool, server_spoke: &Arc<AtomicBool>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = {
        let sh = Arc::clone(sh);
        // Out of descriptors, the connection closes rather than the proxy panic.
        let Ok(mut to) = to.try_clone() else { return };
        std::thread::spawn(move || {
            let delay = sh.link.rtt / 2;
            let bucket = if upstream { &sh.up } else { &sh.down };
            for (arrived, data) in rx {
                let ready = arrived + delay;
                sleep_until(ready);
                for piece in data.chunks(PIECE) {
                    let tx_time = Duration::from_secs_f64(piece.len() as f64 / sh.link.rate as f64);
                    // The link is busy from when the piece was ready or the link free, not from
                    // when this thread woke: a sleep that overran would otherwise idle the link
                    // that long on every piece (a real link sends queued bytes back to back),
                    // and a lone connection would get less than the rate. But never from
                    // longer ago than CATCH_UP: after a client that stopped reading, what
                    // follows leaves at the rate, not in one burst.
                    let done = {
                        let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
                        let floor = Instant::now().checked_sub(CATCH_UP).unwrap_or(ready);
                        b.free_at = b.free_at.max(ready).max(floor) + tx_time;
                        b.free_at
                    };
                    sleep_until(done);
                    if to.write_all(piece).is_err() {
                        return;
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        })
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if upstream {
            if server_spoke.swap(false, Ordering::SeqCst) {
                sh.turns.fetch_add(1, Ordering::SeqCst);
            }
            sh.bytes_up.fetch_add(n as u64, Ordering::SeqCst);
        } else {
            server_spoke.store(true, Ordering::SeqCst);
            sh.bytes_down.fetch_add(n as u64, Ordering::SeqCst);
        }
        if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}
