//! A small threaded TCP proxy 127.0.0.1:free → upstream that injects network faults (cuts,
//! stalls, slow links, refused connections, injected bytes, STARTTLS stripping) and records
//! both directions.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the proxy does to each connection opened after `set_fault`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward both ways unchanged.
    Pass,
    /// Close both sides after forwarding this many server→client bytes.
    CutAfter { server_bytes: u64 },
    /// Close both sides after forwarding this many client→server bytes.
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

struct Shared {
    fault: Mutex<Fault>,
    client: Mutex<Vec<u8>>,
    server: Mutex<Vec<u8>>,
    connections: AtomicUsize,
    stop: AtomicBool,
    /// Clones of every open socket, shut down on drop so the pump threads end.
    sockets: Mutex<Vec<TcpStream>>,
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

impl FaultProxy {
    /// Listens on 127.0.0.1:free and forwards to `upstream`, with `Fault::Pass`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::Pass),
            client: Mutex::new(Vec::new()),
            server: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
        });
        let sh = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new().name(format!("fault-proxy-{port}")).spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                sh.connections.fetch_add(1, Ordering::SeqCst);
                let fault = lock(&sh.fault).clone();
                let sh = Arc::clone(&sh);
                std::thread::spawn(move || handle(client, upstream, fault, &sh));
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

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
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
        // Wake the blocking accept.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        for s in lock(&self.shared.sockets).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn register(sh: &Shared, s: &TcpStream) {
    if let Ok(c) = s.try_clone() {
        lock(&sh.sockets).push(c);
    }
    if sh.stop.load(Ordering::SeqCst) {
        let _ = s.shutdown(Shutdown::Both);
    }
}

fn handle(client: TcpStream, upstream: SocketAddr, fault: Fault, sh: &Arc<Shared>) {
    register(sh, &client);
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
                lock(&sh.client).extend_from_slice(&buf[..n]);
            }
            return;
        }
        _ => {}
    }
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(10)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    register(sh, &server);
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
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
    let mut buf = vec![0u8; 64 * 1024];
    let mut forwarded: u64 = 0;
    let mut injected = false;
    let mut pending = Vec::new(); // StripStartTls: an incomplete line held back
    let limit = match (fault, downstream) {
        (Fault::CutAfter { server_bytes }, true) => Some(*server_bytes),
        (Fault::CutClientAfter { client_bytes }, false) => Some(*client_bytes),
        _ => None,
    };
    let mut cut = limit == Some(0);
    while !cut {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        lock(if downstream { &sh.server } else { &sh.client }).extend_from_slice(&buf[..n]);
        let mut chunk = buf[..n].to_vec();
        match fault {
            Fault::Delay { per_chunk_ms } => std::thread::sleep(Duration::from_millis(*per_chunk_ms)),
            Fault::Inject { server_bytes_at, bytes } if downstream && !injected => {
                let at = server_bytes_at.saturating_sub(forwarded);
                if at <= chunk.len() as u64 {
                    let at = at as usize;
                    chunk.splice(at..at, bytes.iter().copied());
                    injected = true;
                }
            }
            Fault::StripStartTls if downstream => {
                pending.extend_from_slice(&chunk);
                let end = pending.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                let complete: Vec<u8> = pending.drain(..end).collect();
                chunk = strip_starttls(&complete);
            }
            _ => {}
        }
        if let Some(limit) = limit {
            let left = limit - forwarded;
            if chunk.len() as u64 >= left {
                chunk.truncate(left as usize);
                cut = true;
            }
        }
        if to.write_all(&chunk).is_err() {
            break;
        }
        forwarded += chunk.len() as u64;
    }
    if cut || !pending.is_empty() {
        let _ = to.write_all(&pending);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    } else {
        // Normal EOF: half-close so the other direction can finish.
        let _ = to.shutdown(Shutdown::Write);
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
