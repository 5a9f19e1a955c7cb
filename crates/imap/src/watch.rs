//! A connection that waits for the server to speak: NOTIFY (RFC 5465) over several mailboxes,
//! or IDLE (RFC 2177) on one. A logged-in [`Session`] becomes a [`Watch`] once the server
//! has accepted the NOTIFY SET or the IDLE; from then on the socket is non-blocking, so one
//! thread can wait on thousands of them with readiness polling (`fd`), and `read_events`
//! takes only what has arrived: a response cut in the middle by the network waits in the
//! buffer for its end, it is never read half.
//!
//! A watch never fetches: it says what changed (a mailbox's new STATUS, EXISTS, an expunge,
//! a flag change, a mailbox created or renamed), the caller decides which sync that makes due.
//! A watch holds a few hundred bytes of its own beside its socket (no read buffer of 64 KiB
//! as a session has): two thousand of them cost little.
//!
//! Invariants: the tags are this module's (`b` and a number, as the session's); a `BYE`
//! is an event, not an error, so the caller can tell "the server sent us away" from "the
//! connection broke"; an answer we cannot parse is an error naming it, never skipped.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use crate::read::{Limits, ReadError, Reader};
use crate::response::{MailboxStatus, ParseLimits, Response, Status, Untagged, read_response};
use crate::session::{Budget, Error, ErrorKind, Result, Selected, Session};
use crate::transport::Stream;

/// What a watch waits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// NOTIFY SET over the watched mailboxes: events come as STATUS responses.
    Notify,
    /// IDLE on one selected mailbox: events come as EXISTS, EXPUNGE, VANISHED and FETCH.
    Idle,
}

impl WatchMode {
    pub fn name(self) -> &'static str {
        match self {
            WatchMode::Notify => "NOTIFY",
            WatchMode::Idle => "IDLE",
        }
    }
}

/// What the server said on a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// NOTIFY: a mailbox's status items that changed (only those: Dovecot sends
    /// `(HIGHESTMODSEQ 3)` for a flag change).
    Status(MailboxStatus),
    /// IDLE: the selected mailbox has this many messages.
    Exists(u32),
    /// IDLE: messages left the selected mailbox (EXPUNGE or VANISHED).
    Expunged,
    /// IDLE: a message's flags changed (an unsolicited FETCH).
    FlagsChanged,
    /// NOTIFY: a mailbox was created, renamed or deleted (a LIST response).
    MailboxesChanged,
    /// The answer to the last [`Watch::renew`] came: the connection is alive.
    Renewed,
    /// The server closes the connection (`* BYE`), with its text.
    Bye(String),
}

/// The most unread bytes a watch keeps: events are short lines; more is a server flooding
/// a connection that should be quiet.
const MAX_BUFFERED: usize = 256 << 10;

/// Bytes read from the socket at a time (on the stack).
const CHUNK: usize = 4096;

pub struct Watch {
    stream: Stream,
    /// Bytes read and not yet parsed into a whole response.
    buf: Vec<u8>,
    mode: WatchMode,
    next_tag: u32,
    /// The renewal sent and not yet answered: the tag of its NOOP (NOTIFY), or of the new
    /// IDLE whose `+` is awaited.
    renewing: Option<u32>,
    host: String,
    io_timeout: Duration,
    /// Bytes read from the socket.
    bytes_in: u64,
}

impl Session {
    /// NOTIFY SET STATUS over `mailboxes` (wire names) for new messages, expunges and flag
    /// changes, and over the other personal mailboxes for their creation, renaming and
    /// deletion. Returns the watch and the status of the watched mailboxes at that moment
    /// (the server's answer to `STATUS`: the baseline later events are compared to).
    /// The session must have been connected without COMPRESS.
    pub fn watch_notify(mut self, mailboxes: &[&str]) -> Result<(Watch, Vec<MailboxStatus>)> {
        if !self.caps.notify {
            return Err(Error::new(ErrorKind::Refused, format!("{} does not offer NOTIFY", self.host)));
        }
        let mut c = self.cmd();
        c.raw("NOTIFY SET STATUS (mailboxes (");
        for (i, m) in mailboxes.iter().enumerate() {
            if i > 0 {
                c.raw(" ");
            }
            c.astring(m.as_bytes());
        }
        c.raw(") (MessageNew MessageExpunge FlagChange)) (personal (MailboxName))");
        let tag = self.send_command(c, "NOTIFY SET", Budget::STATUS)?;
        self.unsolicited_status = Some(Vec::new());
        let done = self.complete_ok(tag, "NOTIFY SET", &mut |_, _| Ok(()));
        let baseline = self.unsolicited_status.take().unwrap_or_default();
        done?;
        let watched: Vec<Vec<u8>> = mailboxes.iter().map(|m| crate::session::status_key(m.as_bytes())).collect();
        let baseline =
            baseline.into_iter().filter(|s| watched.contains(&crate::session::status_key(&s.name))).collect();
        Ok((self.into_watch(WatchMode::Notify)?, baseline))
    }

    /// EXAMINE `mailbox`, then IDLE. Returns the watch and the mailbox as selected (its
    /// message count is the baseline of later EXISTS).
    pub fn watch_idle(mut self, mailbox: &str) -> Result<(Watch, Selected)> {
        if !self.caps.idle {
            return Err(Error::new(ErrorKind::Refused, format!("{} does not offer IDLE", self.host)));
        }
        let sel = self.select(mailbox, false)?;
        let tag = self.send_raw(b"IDLE", "IDLE", Budget::SMALL, None)?;
        self.flush("IDLE")?;
        self.await_continuation(tag, "IDLE")?;
        // The IDLE stays open: its completion comes after the DONE of a renewal.
        self.pending.retain(|p| p.tag != tag);
        Ok((self.into_watch(WatchMode::Idle)?, sel))
    }

    fn into_watch(self, mode: WatchMode) -> Result<Watch> {
        if self.compressed() {
            return Err(Error::new(ErrorKind::Protocol, "a watch cannot be made of a compressed session"));
        }
        let host = self.host.clone();
        let next_tag = self.last_tag() + 1;
        let (transport, buf) = self.r.into_parts();
        let io_timeout = transport.io_timeout();
        let stream = transport.into_stream();
        stream.tcp().set_nonblocking(true).map_err(|e| {
            Error::new(ErrorKind::Connect, format!("cannot make the connection to {host} non-blocking: {e}"))
                .caused_by(e)
        })?;
        Ok(Watch { stream, buf, mode, next_tag, renewing: None, host, io_timeout, bytes_in: 0 })
    }
}

impl Watch {
    pub fn mode(&self) -> WatchMode {
        self.mode
    }
}

/// The socket, for readiness polling (readable: call `read_events`).
impl AsFd for Watch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.tcp().as_fd()
    }
}

impl Watch {
    /// Everything that has arrived, as events; never blocks. A closed connection, a read error
    /// or an answer we cannot parse is an error (the watch is then unusable).
    pub fn read_events(&mut self) -> Result<Vec<WatchEvent>> {
        let mut chunk = [0u8; CHUNK];
        loop {
            let r = match &mut self.stream {
                Stream::Plain(s) => s.read(&mut chunk),
                Stream::Tls(s) => crate::transport::tls_read(s, &mut chunk),
            };
            match r {
                Ok(0) => {
                    // What came before the close still counts (a BYE, an event).
                    let events = self.parse()?;
                    if events.iter().any(|e| matches!(e, WatchEvent::Bye(_))) {
                        return Ok(events);
                    }
                    return Err(Error::new(ErrorKind::Connect, format!("{} closed the connection", self.host)));
                }
                Ok(n) => {
                    if self.buf.len() + n > MAX_BUFFERED {
                        return Err(Error::new(
                            ErrorKind::Protocol,
                            format!("{} sent more than {MAX_BUFFERED} bytes that are not whole responses", self.host),
                        ));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.bytes_in += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let lost = format!("connection to {} lost: {e}", self.host);
                    return Err(Error::new(ErrorKind::Connect, lost).caused_by(e));
                }
            }
        }
        self.parse()
    }

    /// The whole responses in the buffer as events; a partial one stays for the next read.
    fn parse(&mut self) -> Result<Vec<WatchEvent>> {
        let mut events = Vec::new();
        let lim = ParseLimits { body: 0, ..ParseLimits::default() };
        while !self.buf.is_empty() {
            let mut r = Reader::new(&self.buf[..], Limits::default());
            let resp = match read_response(&mut r, &lim) {
                Ok(resp) => resp,
                // the slice ended: the rest of the response has not come yet
                Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => {
                    return Err(Error::new(ErrorKind::Protocol, format!("invalid event from {}: {e}", self.host)));
                }
            };
            let used = usize::try_from(r.consumed()).unwrap_or(self.buf.len()).min(self.buf.len());
            self.buf.drain(..used);
            if let Some(e) = self.event(resp)? {
                events.push(e);
            }
        }
        if self.buf.capacity() > 4 * CHUNK && self.buf.len() < CHUNK {
            self.buf.shrink_to(CHUNK);
        }
        Ok(events)
    }

    fn event(&mut self, resp: Response) -> Result<Option<WatchEvent>> {
        Ok(match resp {
            Response::Untagged(u) => match u {
                Untagged::MailboxStatus(s) if self.mode == WatchMode::Notify => Some(WatchEvent::Status(s)),
                Untagged::Exists(n) => Some(WatchEvent::Exists(n)),
                Untagged::Expunge(_) | Untagged::Vanished { .. } => Some(WatchEvent::Expunged),
                Untagged::Fetch(_) => Some(WatchEvent::FlagsChanged),
                Untagged::List(_) => Some(WatchEvent::MailboxesChanged),
                Untagged::Status(t) if t.status == Status::Bye => Some(WatchEvent::Bye(t.text)),
                Untagged::Malformed(m) => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("an event from {} we cannot read ({}): {}", self.host, m.kind, m.error),
                    ));
                }
                // OK/NO alerts, RECENT, FLAGS, CAPABILITY…: nothing to sync
                _ => None,
            },
            Response::Continue(_) if self.mode == WatchMode::Idle && self.renewing.is_some() => {
                self.renewing = None;
                Some(WatchEvent::Renewed)
            }
            Response::Continue(_) => {
                return Err(Error::new(ErrorKind::Protocol, format!("{} sent a `+` nobody asked for", self.host)));
            }
            Response::Tagged(t) => {
                let tag = std::str::from_utf8(&t.tag).ok().and_then(|s| s.strip_prefix('b')?.parse::<u32>().ok());
                if t.status != Status::Ok {
                    return Err(crate::session::refused(
                        if self.mode == WatchMode::Idle { "IDLE" } else { "NOOP" },
                        &t,
                    ));
                }
                match (self.mode, tag) {
                    (WatchMode::Notify, Some(n)) if self.renewing == Some(n) => {
                        self.renewing = None;
                        Some(WatchEvent::Renewed)
                    }
                    // IDLE: the completion of the IDLE that a renewal's DONE ended
                    (WatchMode::Idle, Some(n)) if n < self.next_tag => None,
                    _ => {
                        return Err(Error::new(
                            ErrorKind::Protocol,
                            format!(
                                "a tagged answer from {} to {:?}, a tag never sent",
                                self.host,
                                String::from_utf8_lossy(&t.tag)
                            ),
                        ));
                    }
                }
            }
        })
    }

    /// Proves the connection alive and keeps the server from logging it out: with IDLE, ends
    /// it and starts a new one (RFC 2177: at least every 29 minutes); with NOTIFY, a NOOP.
    /// The answer comes as [`WatchEvent::Renewed`].
    pub fn renew(&mut self) -> Result<()> {
        let tag = self.next_tag;
        self.next_tag += 1;
        let line = match self.mode {
            WatchMode::Idle => format!("DONE\r\nb{tag} IDLE\r\n"),
            WatchMode::Notify => format!("b{tag} NOOP\r\n"),
        };
        self.write(line.as_bytes())?;
        self.renewing = Some(tag);
        Ok(())
    }

    /// Says LOGOUT (ending the IDLE first) and closes, without waiting for the answer.
    pub fn close(mut self) {
        let tag = self.next_tag;
        let line = match self.mode {
            WatchMode::Idle => format!("DONE\r\nb{tag} LOGOUT\r\n"),
            WatchMode::Notify => format!("b{tag} LOGOUT\r\n"),
        };
        let _ = self.write(line.as_bytes());
        let _ = self.stream.tcp().shutdown(std::net::Shutdown::Both);
    }

    /// Writes a short line whole: blocking for the write (under the I/O timeout), so that a
    /// TLS record is never left half-written by a full socket buffer.
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let lost = |e: io::Error| {
            Error::new(ErrorKind::Connect, format!("connection to {} lost while writing: {e}", self.host)).caused_by(e)
        };
        let tcp = self.stream.tcp();
        tcp.set_nonblocking(false).map_err(lost)?;
        tcp.set_write_timeout(Some(self.io_timeout.max(Duration::from_millis(1)))).map_err(lost)?;
        let r = match &mut self.stream {
            Stream::Plain(s) => s.write_all(bytes).and_then(|_| s.flush()),
            Stream::Tls(s) => s.write_all(bytes).and_then(|_| s.flush()),
        };
        let back = self.stream.tcp().set_nonblocking(true);
        r.and(back).map_err(lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watch over one end of a socket pair (a real socket, as `read_events` needs).
    fn watch(mode: WatchMode) -> (Watch, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        client.set_nonblocking(true).unwrap();
        let w = Watch {
            stream: Stream::Plain(client),
            buf: Vec::new(),
            mode,
            next_tag: 5,
            renewing: None,
            host: "test".into(),
            io_timeout: Duration::from_secs(5),
            bytes_in: 0,
        };
        (w, server)
    }

    /// Reads until every byte written so far (`total`) has been read or an error comes:
    /// what the reads gave, together.
    fn read_all(w: &mut Watch, total: u64) -> Result<Vec<WatchEvent>> {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let mut events = Vec::new();
        while w.bytes_in < total && std::time::Instant::now() < end {
            events.extend(w.read_events()?);
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(events)
    }

    /// Feeds `chunks` one by one, with the events each gave once all its bytes were read.
    fn feed(mode: WatchMode, renewing: bool, chunks: &[&[u8]]) -> Vec<Result<Vec<WatchEvent>>> {
        let (mut w, mut server) = watch(mode);
        if renewing {
            w.renew().unwrap();
        }
        let mut out = Vec::new();
        let mut total = 0;
        for c in chunks {
            server.write_all(c).unwrap();
            total += c.len() as u64;
            out.push(read_all(&mut w, total));
        }
        out
    }

    fn status(name: &str, messages: Option<u32>, uidnext: Option<u32>, modseq: Option<u64>) -> WatchEvent {
        WatchEvent::Status(MailboxStatus {
            name: name.as_bytes().to_vec(),
            messages,
            uidnext,
            highest_modseq: modseq,
            ..MailboxStatus::default()
        })
    }

    #[test]
    fn events_by_case() {
        use WatchMode::*;
        // (name, mode, a renewal sent first, chunks the server sends, events each read gives)
        type Case<'a> = (&'a str, WatchMode, bool, Vec<&'a [u8]>, Vec<Vec<WatchEvent>>);
        let cases: Vec<Case> = vec![
            (
                "notify: a flag change is a status of only what changed",
                Notify,
                false,
                vec![b"* STATUS INBOX (HIGHESTMODSEQ 3)\r\n"],
                vec![vec![status("INBOX", None, None, Some(3))]],
            ),
            (
                "notify: a response cut in two is read once it is whole",
                Notify,
                false,
                vec![b"* STATUS Work (MESSAGES 2 UID", b"NEXT 3)\r\n* LIST () \"/\" New\r\n"],
                vec![vec![], vec![status("Work", Some(2), Some(3), None), WatchEvent::MailboxesChanged]],
            ),
            (
                "notify: a name as a literal",
                Notify,
                false,
                vec![b"* STATUS {4}\r\nWo", b"rk (MESSAGES 1)\r\n"],
                vec![vec![], vec![status("Work", Some(1), None, None)]],
            ),
            (
                "notify: the NOOP of a renewal answered",
                Notify,
                true,
                vec![b"b5 OK NOOP completed\r\n"],
                vec![vec![WatchEvent::Renewed]],
            ),
            (
                "idle: new mail, an expunge, a flag change",
                Idle,
                false,
                vec![b"* 4 EXISTS\r\n* 1 RECENT\r\n", b"* 2 EXPUNGE\r\n* VANISHED 7\r\n* 1 FETCH (FLAGS (\\Seen))\r\n"],
                vec![
                    vec![WatchEvent::Exists(4)],
                    vec![WatchEvent::Expunged, WatchEvent::Expunged, WatchEvent::FlagsChanged],
                ],
            ),
            (
                "idle: a renewal ends the old IDLE and waits for the new one's +",
                Idle,
                true,
                vec![b"b4 OK Idle completed.\r\n", b"+ idling\r\n"],
                vec![vec![], vec![WatchEvent::Renewed]],
            ),
            (
                "a BYE is an event, even when the server closes right after",
                Idle,
                false,
                vec![b"* BYE Server shutting down.\r\n"],
                vec![vec![WatchEvent::Bye("Server shutting down.".into())]],
            ),
        ];
        for (name, mode, renewing, chunks, want) in cases {
            let got: Vec<Vec<WatchEvent>> = feed(mode, renewing, &chunks)
                .into_iter()
                .map(|r| r.unwrap_or_else(|e| panic!("{name}: {e}")))
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn errors_by_case() {
        use WatchMode::*;
        let cases: Vec<(&str, WatchMode, &[u8], ErrorKind, &str)> = vec![
            ("a tag never sent", Notify, b"b9 OK done\r\n", ErrorKind::Protocol, "a tag never sent"),
            ("a + nobody asked for", Notify, b"+ go on\r\n", ErrorKind::Protocol, "nobody asked for"),
            ("a refused renewal", Idle, b"b4 NO [LIMIT] too many\r\n", ErrorKind::Refused, "IDLE refused"),
            (
                "an unreadable event",
                Notify,
                b"* 3 FETCH (FLAGS (\\Seen) UID x)\r\n",
                ErrorKind::Protocol,
                "cannot read",
            ),
        ];
        for (name, mode, bytes, kind, text) in cases {
            let mut got = feed(mode, false, &[bytes]);
            let e = got.remove(0).expect_err(name);
            assert_eq!(e.kind, kind, "{name}: {e}");
            assert!(e.detail.contains(text), "{name}: {e}");
        }
    }

    #[test]
    fn a_closed_connection_is_an_error_and_a_flood_is_bounded() {
        let (mut w, server) = watch(WatchMode::Notify);
        drop(server);
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let closed = loop {
            match w.read_events() {
                Err(e) => break Some(e),
                Ok(_) if std::time::Instant::now() > end => break None,
                Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        assert_eq!(closed.expect("the close is seen").kind, ErrorKind::Connect);
        let (mut w, mut server) = watch(WatchMode::Notify);
        let junk = vec![b'x'; MAX_BUFFERED + 10];
        let writer = std::thread::spawn(move || {
            let _ = server.write_all(&junk);
            server
        });
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let mut err = None;
        while std::time::Instant::now() < end {
            match w.read_events() {
                Ok(_) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        drop(w);
        drop(writer.join());
        let e = err.expect("a flood is an error");
        assert!(e.detail.contains("bytes that are not whole responses"), "{e}");
    }
}
