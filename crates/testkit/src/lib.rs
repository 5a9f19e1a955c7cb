//! Test support for backproc: real servers (Dovecot, Cyrus and Courier in cached chroots,
//! smtp-sink, aiosmtpd), a scriptable hostile IMAP server and a TCP fault proxy
//! on free loopback ports in temp dirs, plus a deterministic message generator. No mocks.
//!
//! Every server cleans up on `Drop` (its process group is killed, its temp dir removed). A
//! server that cannot start returns an `Err` saying why, so tests that `.expect()` it fail
//! instead of skipping.

pub mod admin;
mod chroot;
mod courier;
mod cyrus;
mod dovecot;
pub mod hostile;
pub mod hostimap;
pub mod link;
pub mod mailgen;
pub mod oauth;
mod proc;
mod proxy;
mod pysmtp;
mod rawimap;
mod smtp;

pub use admin::{Fetched, ImapAdmin, ListEntry};
pub use courier::Courier;
pub use cyrus::Cyrus;
pub use dovecot::{Dovecot, DovecotOptions};
pub use link::{Link, LinkProxy};
pub use oauth::TokenServer;
pub use proxy::{Fault, FaultProxy, GMAIL_TOO_MANY, GmailHits, ImapRule, M365_THROTTLED, gm_msgid};
pub use pysmtp::{AuthAttempt, PySmtp, Received, SmtpRules};
pub use smtp::{SinkOptions, SmtpSink};

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;

/// The loopback address every server of this crate listens on.
pub const HOST: &str = "127.0.0.1";

/// How long a server may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A port that was free on 127.0.0.1 a moment ago (bind to port 0, read it, close). Another
/// process may take it before the caller binds, so starters retry on a clash.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind 127.0.0.1:0")
}

/// Polls 127.0.0.1:`port` until a connection succeeds and the server sends its first bytes (a
/// greeting), or `timeout` passes. Returns the greeting's first chunk.
pub fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    wait_ready(port, timeout, true, || Ok(()))
}

/// Polls until `port` accepts (and, with `greeting`, sends bytes); `alive` is called between
/// attempts and aborts the wait with its error (e.g. the server process exited).
pub(crate) fn wait_ready(
    port: u16,
    timeout: Duration,
    greeting: bool,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut last_err = String::from("no attempt");
    while Instant::now() < deadline {
        alive()?;
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(mut s) if greeting => {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut buf = [0u8; 512];
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => return Ok(buf[..n].to_vec()),
                    Ok(_) => last_err = "connection closed before a greeting".into(),
                    Err(e) => last_err = format!("no greeting: {e}"),
                }
            }
            Ok(_) => return Ok(Vec::new()),
            Err(e) => last_err = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("127.0.0.1:{port} not ready after {timeout:?}: {last_err}")
}

/// Encodes a UTF-8 mailbox name as IMAP modified UTF-7 (RFC 3501 §5.1.3): printable ASCII stays
/// as is except `&` → `&-`; runs of other characters become `&` + modified BASE64 of UTF-16BE
/// (`,` for `/`, no padding) + `-`.
pub fn mutf7_encode(name: &str) -> String {
    fn flush(out: &mut String, run: &mut Vec<u16>) {
        if run.is_empty() {
            return;
        }
        let bytes: Vec<u8> = run.iter().flat_map(|u| u.to_be_bytes()).collect();
        let engine =
            base64::engine::GeneralPurpose::new(&base64::alphabet::IMAP_MUTF7, base64::engine::general_purpose::NO_PAD);
        out.push('&');
        out.push_str(&engine.encode(bytes));
        out.push('-');
        run.clear();
    }
    let mut out = String::with_capacity(name.len());
    let mut run = Vec::new();
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut out, &mut run);
            match c {
                '&' => out.push_str("&-"),
                _ => out.push(c),
            }
        } else {
            let mut units = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush(&mut out, &mut run);
    out
}

/// Finds an executable by name in `PATH` and then in `extra` dirs (sbin dirs are often missing
/// from a normal user's `PATH`).
pub(crate) fn find_program(name: &str, extra: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(std::path::PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// True when this process runs as root (servers then drop privileges to `nobody`).
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Reads a file for diagnostics; never fails.
pub(crate) fn read_lossy(path: &std::path::Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Writes `data` to `path` atomically (temp file in the same dir, then rename).
pub(crate) fn write_atomic(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::mutf7_encode;

    #[test]
    fn mutf7_examples() {
        for (utf8, want) in [
            ("INBOX", "INBOX"),
            ("Entwürfe", "Entw&APw-rfe"),
            ("&", "&-"),
            ("A&B", "A&-B"),
            ("Входящие", "&BBIERQQ+BDQETwRJBDgENQ-"),
            ("Отправленные", "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"),
            ("日本語", "&ZeVnLIqe-"),
            ("😀", "&2D3eAA-"),
            ("a/ü/b", "a/&APw-/b"),
        ] {
            assert_eq!(mutf7_encode(utf8), want, "{utf8}");
        }
    }
}
