//! IMAP-aware rules for the fault proxy: the two pumps of a connection follow the IMAP framing
//! (RFC 3501 §2.2, §4.3, §7.5: command lines with `{n}`/`{n+}` literals one way, responses with
//! literals and their ends the other) so rules can answer commands themselves, rewrite FETCH
//! commands and responses, and edit capability lists, while literals stream through in chunks.
//!
//! Threads per connection: the client pump (client → server) parses commands and may answer one
//! itself; the server pump (server → client) parses responses. Both write to the client through
//! [`Down`], which places a proxy answer only at a response boundary and only after the server
//! answered every command the client sent before it, so the client sees answers in order, as
//! from a real server. [`Link`] tells the client pump what the server did when the framing of
//! the client's stream depends on it: a synchronising literal is sent only after a `+`
//! continuation (not after a tagged rejection), SASL lines follow `+` challenges, and after an
//! accepted STARTTLS or COMPRESS the bytes are no longer IMAP.

use std::collections::VecDeque;
use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::{Fault, Shared, Stage, capture, lock};

/// Gmail's answer to a login over its connection limit (the text its users report).
pub const GMAIL_TOO_MANY: &str = "NO [ALERT] Too many simultaneous connections. (Failure)";

/// Microsoft 365's answer to a throttled command.
pub const M365_THROTTLED: &str = "NO Request is throttled. Suggested Backoff Time: 1500 milliseconds";

/// An IMAP-aware rule of [`FaultProxy::set_imap_rules`](super::FaultProxy::set_imap_rules).
/// Rules are checked in list order; the first one that answers a command wins (later rules do
/// not see, or count, that command). They apply to plain IMAP, also across STARTTLS or
/// COMPRESS (after which the proxy forwards bytes unparsed) and in front of an implicit-TLS
/// port (everything unparsed); with no rules set the proxy does not parse at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImapRule {
    /// When a client sends LOGIN or AUTHENTICATE while more than `max` connections of this proxy
    /// are open (this one included; one whose client has closed it no longer counts, even while
    /// the proxy still winds it down), the command is not forwarded and the proxy answers
    /// `<tag> <text>` itself, keeping the connection open. `text` is the whole answer after
    /// the tag, status word included: [`GMAIL_TOO_MANY`], or e.g. `NO [LIMIT] ...` or
    /// `NO [UNAVAILABLE] ...` (RFC 5530).
    TooManyConnections { max: usize, text: String },
    /// The first `times` commands named `command` (counted over all connections since the rule
    /// was set) are not forwarded and get `<tag> <answer>`; later ones pass. `command` is
    /// matched case-insensitively against the command name, with `UID` as part of it: `"SELECT"`,
    /// `"UID FETCH"` (which a plain `FETCH` does not match), `"LOGIN"`. `answer` includes the
    /// status word (servers use NO or BAD), e.g. [`M365_THROTTLED`]. The server never sees an
    /// answered command, so its state stays as it was: after a throttled SELECT the previous
    /// mailbox is still selected, where a real failed SELECT deselects it (RFC 3501 §6.3.1).
    Throttle { command: String, times: usize, answer: String },
    /// Makes the server look like Gmail: adds `X-GM-EXT-1` to every capability list; FETCH items
    /// `X-GM-MSGID`, `X-GM-THRID` and `X-GM-LABELS` are fetched as the Message-ID header and
    /// answered as `X-GM-MSGID <n>`, `X-GM-THRID <n>` (the same number: every message is its own
    /// thread) and `X-GM-LABELS ()`, with `n` = [`gm_msgid`] of the Message-ID, so the same
    /// message in two folders has the same id, as on Gmail. Works with pipelined and
    /// concurrently running FETCHes and with bodies of any size in the same FETCH (streamed).
    /// Not emulated: `SEARCH X-GM-RAW` / `X-GM-MSGID`, `STORE X-GM-LABELS`, Gmail's folder
    /// names; a FETCH command sent with a literal is not rewritten.
    Gmail,
    /// Replaces an untagged response line that is exactly `from` (without its CRLF; the line
    /// must have no literal) with `to` + CRLF; an empty `to` removes the line. Of several
    /// matching `Rewrite` rules the first applies; `Gmail` then sees the rewritten line.
    Rewrite { from: Vec<u8>, to: Vec<u8> },
}

impl ImapRule {
    /// Gmail's connection limit: [`GMAIL_TOO_MANY`] over `max` open connections.
    pub fn gmail_too_many(max: usize) -> ImapRule {
        ImapRule::TooManyConnections { max, text: GMAIL_TOO_MANY.into() }
    }

    /// Microsoft 365's throttling: the first `times` `command`s get [`M365_THROTTLED`].
    pub fn m365_throttle(command: &str, times: usize) -> ImapRule {
        ImapRule::Throttle { command: command.into(), times, answer: M365_THROTTLED.into() }
    }
}

/// What the [`ImapRule::Gmail`] rule did, over all connections since the rules were set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GmailHits {
    /// Capability lists given `X-GM-EXT-1`.
    pub capabilities: u64,
    /// FETCH commands whose Gmail items were replaced.
    pub commands: u64,
    /// FETCH responses whose Message-ID item was replaced by Gmail items.
    pub messages: u64,
}

/// Gmail's `X-GM-MSGID` for a message with this Message-ID header value: FNV-1a 64 of the
/// value with surrounding whitespace trimmed (case and angle brackets kept), top bit cleared so
/// it fits a signed 64-bit integer as Gmail's ids do. Without a Message-ID the value is empty.
pub fn gm_msgid(message_id: impl AsRef<[u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in message_id.as_ref().trim_ascii() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h & (i64::MAX as u64)
}

/// Lines longer than this (without a literal) are not IMAP as this proxy knows it: the
/// connection falls back to forwarding bytes unparsed rather than buffering without bound.
const MAX_LINE: usize = 8 << 20;

/// Largest Message-ID header section buffered to compute an `X-GM-MSGID`; a larger one (which
/// no real header is) is forwarded unchanged.
const MAX_MARKER_LITERAL: u64 = 1 << 20;

/// The field name that marks a header fetch the Gmail rule made, and which Gmail items it
/// stands for (letters M, T, L). No message has this header, so the server returns just the
/// Message-ID; and because the server echoes the section, the marker identifies the proxy's
/// item in any FETCH response, even with pipelined or concurrently running commands, and
/// keeps a client's own `BODY[HEADER.FIELDS (MESSAGE-ID)]` untouched.
const MARKER: &str = "X-BACKPROC-GM-";

const GM_MSGID: u8 = 1;
const GM_THRID: u8 = 2;
const GM_LABELS: u8 = 4;

/// One list of rules with its counters, shared by the connections accepted while it was set.
pub(super) struct RuleSet {
    rules: Vec<ImapRule>,
    /// `Throttle` command names, upper-cased, single spaces.
    commands: Vec<String>,
    hits: Vec<AtomicU64>,
    /// `Throttle`: matching commands seen, answered or not.
    matched: Vec<AtomicUsize>,
    gmail: Option<usize>,
    gm_caps: AtomicU64,
    gm_cmds: AtomicU64,
}

impl RuleSet {
    pub(super) fn new(rules: Vec<ImapRule>) -> RuleSet {
        let commands = rules
            .iter()
            .map(|r| match r {
                ImapRule::Throttle { command, .. } => normalize_command(command),
                _ => String::new(),
            })
            .collect();
        RuleSet {
            commands,
            hits: rules.iter().map(|_| AtomicU64::new(0)).collect(),
            matched: rules.iter().map(|_| AtomicUsize::new(0)).collect(),
            gmail: rules.iter().position(|r| *r == ImapRule::Gmail),
            gm_caps: AtomicU64::new(0),
            gm_cmds: AtomicU64::new(0),
            rules,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub(super) fn hits(&self, i: usize) -> u64 {
        match self.hits.get(i) {
            Some(h) => h.load(Ordering::SeqCst),
            None => panic!("rule_hits({i}): only {} IMAP rules are set", self.rules.len()),
        }
    }

    pub(super) fn gmail_hits(&self) -> GmailHits {
        GmailHits {
            capabilities: self.gm_caps.load(Ordering::SeqCst),
            commands: self.gm_cmds.load(Ordering::SeqCst),
            messages: self.gmail.map_or(0, |i| self.hits[i].load(Ordering::SeqCst)),
        }
    }

    fn hit(&self, i: usize) {
        self.hits[i].fetch_add(1, Ordering::SeqCst);
    }

    /// The answer (after the tag) with which a rule refuses command `name`, counting the hit.
    fn refusal(&self, name: &str, open: usize) -> Option<&str> {
        for (i, rule) in self.rules.iter().enumerate() {
            match rule {
                ImapRule::TooManyConnections { max, text }
                    if (name == "LOGIN" || name == "AUTHENTICATE") && open > *max =>
                {
                    self.hit(i);
                    return Some(text);
                }
                ImapRule::Throttle { times, answer, .. } if self.commands[i] == name => {
                    // Every match counts, answered or not: only the first `times` are answered.
                    let earlier = self.matched[i].fetch_add(1, Ordering::SeqCst);
                    if earlier < *times {
                        self.hit(i);
                        return Some(answer);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// An untagged single-line response after the `Rewrite` rules: `None` to drop it.
    fn rewrite(&self, line: Vec<u8>) -> Option<Vec<u8>> {
        let body = trim_eol(&line);
        for (i, rule) in self.rules.iter().enumerate() {
            if let ImapRule::Rewrite { from, to } = rule
                && body == from.as_slice()
            {
                self.hit(i);
                if to.is_empty() {
                    return None;
                }
                let mut out = to.clone();
                out.extend_from_slice(b"\r\n");
                return Some(out);
            }
        }
        Some(line)
    }
}

fn normalize_command(c: &str) -> String {
    c.split_whitespace().map(str::to_ascii_uppercase).collect::<Vec<_>>().join(" ")
}

/// The connection of one proxied client: runs the client pump in a new thread and the server
/// pump in this one, and returns when both ended.
pub(super) fn run(client: TcpStream, server: TcpStream, fault: &Fault, rules: Arc<RuleSet>, sh: &Arc<Shared>) {
    let (Ok(client_w), Ok(server_w), Ok(server_shut)) = (client.try_clone(), server.try_clone(), server.try_clone())
    else {
        return;
    };
    let link = Arc::new(Link::default());
    let down = Arc::new(Down::new(client_w, server_shut, Stage::new(fault, true, &sh.frozen)));
    let up = {
        let (stage, rules, link, down, sh) = (
            Stage::new(fault, false, &sh.frozen),
            Arc::clone(&rules),
            Arc::clone(&link),
            Arc::clone(&down),
            Arc::clone(sh),
        );
        std::thread::Builder::new().name("fault-proxy-imap-up".into()).spawn(move || {
            ClientPump {
                to: server_w,
                stage,
                out: Vec::new(),
                state: CState::Command,
                next_id: 0,
                rules: &rules,
                link: &link,
                down: &down,
                sh: &sh,
            }
            .run(client);
        })
    };
    // Without the client pump there is no connection; dropping the sockets ends it.
    let Ok(up) = up else { return };
    server_pump(server, fault, rules, &link, &down, sh);
    let _ = up.join();
}

// ---------------------------------------------------------------------------------------------
// Shared per-connection state

/// What the server pump tells the client pump (and, for TLS from the first byte, the reverse).
#[derive(Default)]
struct Link {
    st: Mutex<LinkState>,
    cv: Condvar,
    /// The client opened with a TLS handshake (an IMAPS port): nothing is IMAP either way.
    tls: AtomicBool,
}

#[derive(Default)]
struct LinkState {
    /// `+` continuation requests the server sent so far.
    conts: u64,
    /// The tag whose completion the client pump waits for.
    watch: Option<Vec<u8>>,
    /// The watched command completed: `Some(ok)`.
    done: Option<bool>,
    /// The stream stops being IMAP once the watched command completes OK (STARTTLS, COMPRESS).
    raw_on_ok: bool,
    /// The server pump ended.
    closed: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Continuation,
    Done(bool),
    Closed,
}

impl Link {
    /// Watches the completion of `tag`; returns the continuation count to pass to `wait`. Called
    /// before the command reaches the server, so no answer can be missed.
    fn watch(&self, tag: &[u8], raw_on_ok: bool) -> u64 {
        let mut s = lock(&self.st);
        s.watch = Some(tag.to_vec());
        s.done = None;
        s.raw_on_ok = raw_on_ok;
        s.conts
    }

    /// Waits for a continuation after the `seen`-th, the watched completion, or the end.
    fn wait(&self, seen: u64) -> Event {
        let mut s = lock(&self.st);
        loop {
            if s.conts > seen {
                return Event::Continuation;
            }
            if let Some(ok) = s.done {
                return Event::Done(ok);
            }
            if s.closed {
                return Event::Closed;
            }
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn continuation(&self) {
        lock(&self.st).conts += 1;
        self.cv.notify_all();
    }

    /// A tagged response; true when the stream turns raw after it.
    fn tagged(&self, tag: &[u8], ok: bool) -> bool {
        let mut s = lock(&self.st);
        if s.watch.as_deref() != Some(tag) {
            return false;
        }
        s.watch = None;
        s.done = Some(ok);
        self.cv.notify_all();
        s.raw_on_ok && ok
    }

    fn close(&self) {
        lock(&self.st).closed = true;
        self.cv.notify_all();
    }
}

/// The client socket's writing side, shared by both pumps. Two locks, always taken in the
/// order `w` then `o`: `w` is held across socket writes (which block while the client does not
/// read), `o` only for bookkeeping. The client pump never waits for `w`: it queues its answers
/// and writes them only if `w` is free, and whoever holds `w` writes the ready ones before
/// releasing it. So the proxy keeps reading a client that pipelines without reading, as a
/// direct connection's kernel buffers would.
struct Down {
    w: Mutex<Writer>,
    o: Mutex<Order>,
    /// Writing failed or the fault cut the stream.
    dead: AtomicBool,
}

struct Writer {
    client: TcpStream,
    /// Only to shut it down when a fault cuts the connection from the client pump's side.
    server: TcpStream,
    stage: Stage,
}

struct Order {
    /// A server response is partly written: a proxy answer must wait for its end.
    mid: bool,
    /// Forwarded commands (id, tag) the server has not completed yet.
    outstanding: Vec<(u64, Vec<u8>)>,
    /// Proxy answers (command id, line) waiting until the commands before them completed.
    queued: VecDeque<(u64, Vec<u8>)>,
}

/// Where a server response ended in the server pump's output, and its tag if tagged.
struct Mark {
    at: usize,
    tagged: Option<Vec<u8>>,
}

impl Order {
    /// Appends the queued answers whose earlier commands all completed.
    fn take_ready(&mut self, into: &mut Vec<u8>) {
        while let Some((id, _)) = self.queued.front() {
            if self.outstanding.iter().any(|(o, _)| o < id) {
                break;
            }
            into.extend_from_slice(&self.queued.pop_front().expect("front exists").1);
        }
    }
}

impl Down {
    fn new(client: TcpStream, server: TcpStream, stage: Stage) -> Down {
        Down {
            w: Mutex::new(Writer { client, server, stage }),
            o: Mutex::new(Order { mid: false, outstanding: Vec::new(), queued: VecDeque::new() }),
            dead: AtomicBool::new(false),
        }
    }

    fn dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Writes through the fault stage, with `w` held.
    fn send(&self, w: &mut Writer, bytes: &[u8]) -> bool {
        if self.dead() {
            return false;
        }
        if !w.stage.send(&mut w.client, bytes) {
            self.dead.store(true, Ordering::SeqCst);
            if w.stage.cut {
                // Cut by the fault: the whole connection ends, as in the plain pump.
                w.stage.finish(&w.server, &w.client);
            }
            return false;
        }
        true
    }

    /// A forwarded command the server will complete.
    fn forwarded(&self, id: u64, tag: Vec<u8>) {
        lock(&self.o).outstanding.push((id, tag));
    }

    /// Writes the ready queued answers if the stream is between responses; `w` held.
    fn drain(&self, w: &mut Writer) {
        let mut buf = Vec::new();
        {
            let mut o = lock(&self.o);
            if !o.mid {
                o.take_ready(&mut buf);
            }
        }
        if !buf.is_empty() {
            self.send(w, &buf);
        }
    }

    fn has_ready(&self) -> bool {
        let o = lock(&self.o);
        !o.mid && o.queued.front().is_some_and(|(id, _)| o.outstanding.iter().all(|(c, _)| c > id))
    }

    /// Writes ready answers unless another thread holds `w` (it then does, before releasing).
    /// The check after releasing catches answers queued between the drain and the release.
    fn kick(&self) {
        loop {
            match self.w.try_lock() {
                Ok(mut w) => self.drain(&mut w),
                Err(std::sync::TryLockError::Poisoned(e)) => self.drain(&mut e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
            if !self.has_ready() {
                return;
            }
        }
    }

    /// Writes the server pump's output, completing commands and placing ready proxy answers at
    /// the response ends in `marks`; `mid` is whether a response is unfinished after `out`.
    fn server_output(&self, out: &[u8], marks: &[Mark], mid: bool) -> bool {
        let ok = self.server_output_locked(&mut lock(&self.w), out, marks, mid);
        if self.has_ready() {
            self.kick();
        }
        ok
    }

    fn server_output_locked(&self, w: &mut Writer, out: &[u8], marks: &[Mark], mid: bool) -> bool {
        let mut buf = Vec::new();
        {
            let mut o = lock(&self.o);
            let mut at = 0;
            for m in marks {
                if let Some(tag) = &m.tagged
                    && let Some(i) = o.outstanding.iter().position(|(_, t)| t == tag)
                {
                    o.outstanding.remove(i);
                }
                if !o.queued.is_empty() {
                    buf.extend_from_slice(&out[at..m.at]);
                    at = m.at;
                    o.take_ready(&mut buf);
                }
            }
            o.mid = mid;
            if !buf.is_empty() {
                buf.extend_from_slice(&out[at..]);
            }
        }
        let ok = if buf.is_empty() {
            // The common case, no answer to place: no copy.
            out.is_empty() || self.send(w, out)
        } else {
            self.send(w, &buf)
        };
        // Answers the client pump queued while this thread held `w`.
        self.drain(w);
        ok
    }

    /// A proxy answer for command `id`: written now if the stream is between responses and the
    /// server completed every earlier command, else when that happens.
    fn answer(&self, id: u64, line: Vec<u8>) {
        lock(&self.o).queued.push_back((id, line));
        self.kick();
    }

    /// The server is gone: answers still waiting for its completions go out now, then this
    /// direction ends like the plain pump's.
    fn finish(&self, from: &TcpStream) {
        let mut w = lock(&self.w);
        let buf: Vec<u8> = std::mem::take(&mut lock(&self.o).queued).into_iter().flat_map(|(_, l)| l).collect();
        if !buf.is_empty() {
            self.send(&mut w, &buf);
        }
        let Writer { client, stage, .. } = &mut *w;
        stage.finish(from, client);
    }
}

// ---------------------------------------------------------------------------------------------
// Client → server

/// Where the client pump is in the client's byte stream.
enum CState {
    /// At the start of a command.
    Command,
    /// Inside command `tag` after a literal: the next line continues it.
    Rest { tag: Vec<u8>, refused: Option<Refused> },
    /// Inside a literal of command `tag`, `left` bytes to go.
    Literal { left: u64, tag: Vec<u8>, refused: Option<Refused> },
    /// After AUTHENTICATE `tag`: lines answering `+` challenges are SASL data, not commands;
    /// `seen` counts the continuations used so far.
    Sasl { tag: Vec<u8>, seen: u64 },
    /// No longer IMAP (after STARTTLS, COMPRESS, or an overlong line): forward unparsed.
    Raw,
}

/// A command the proxy answers itself once the client sent all of it.
struct Refused {
    id: u64,
    line: Vec<u8>,
}

struct ClientPump<'a> {
    to: TcpStream,
    stage: Stage,
    /// Bytes for the server, written after each read and before every wait on the server.
    out: Vec<u8>,
    state: CState,
    /// Every command gets the next id (the order in which the client sent them).
    next_id: u64,
    rules: &'a RuleSet,
    link: &'a Link,
    down: &'a Down,
    sh: &'a Shared,
}

impl ClientPump<'_> {
    fn run(mut self, mut from: TcpStream) {
        let mut rbuf = vec![0u8; 64 * 1024];
        // Bytes read but not yet consumed: at most an incomplete line plus one read.
        let mut buf: Vec<u8> = Vec::new();
        let mut first = true;
        'read: while !self.stage.cut {
            let n = match from.read(&mut rbuf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            capture(self.sh, false, &rbuf[..n]);
            // A TLS record (handshake type 22) where a command would start: implicit TLS, as
            // on port 993. The server sends nothing before this, so both sides turn raw in time.
            if std::mem::take(&mut first) && rbuf[0] == 0x16 {
                self.link.tls.store(true, Ordering::SeqCst);
                self.state = CState::Raw;
            }
            self.stage.delay();
            buf.extend_from_slice(&rbuf[..n]);
            let mut pos = 0;
            while pos < buf.len() {
                match &mut self.state {
                    CState::Raw => {
                        self.out.extend_from_slice(&buf[pos..]);
                        pos = buf.len();
                    }
                    CState::Literal { left, tag, refused } => {
                        // Streamed through (or swallowed for a refused command), never buffered.
                        let take = (*left).min((buf.len() - pos) as u64) as usize;
                        *left -= take as u64;
                        if refused.is_none() {
                            self.out.extend_from_slice(&buf[pos..pos + take]);
                        }
                        pos += take;
                        if *left == 0 {
                            let (tag, refused) = (std::mem::take(tag), refused.take());
                            self.state = CState::Rest { tag, refused };
                        }
                    }
                    _ => {
                        let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
                            if buf.len() - pos > MAX_LINE {
                                self.state = CState::Raw;
                                continue;
                            }
                            break;
                        };
                        let line = buf[pos..pos + nl + 1].to_vec();
                        pos += nl + 1;
                        if !self.line(&line) {
                            break 'read;
                        }
                    }
                }
            }
            buf.drain(..pos);
            if !self.flush() {
                break;
            }
        }
        let _ = self.flush();
        self.stage.finish(&from, &self.to);
    }

    /// Writes the pending bytes to the server; false when the stream ended.
    fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return !self.stage.cut;
        }
        let out = std::mem::take(&mut self.out);
        self.stage.send(&mut self.to, &out)
    }

    /// Waits for the server's answer to watched command (see [`Link::wait`]), sending what is
    /// pending first, since the server answers only what it received.
    fn wait(&mut self, seen: u64) -> Event {
        if !self.flush() {
            return Event::Closed;
        }
        self.link.wait(seen)
    }

    /// One complete line (LF included); false when the connection must end.
    fn line(&mut self, line: &[u8]) -> bool {
        match std::mem::replace(&mut self.state, CState::Command) {
            CState::Command => self.command(line),
            CState::Rest { tag, refused } => self.rest(line, tag, refused),
            CState::Sasl { tag, mut seen } => match self.wait(seen) {
                Event::Continuation => {
                    seen += 1;
                    self.out.extend_from_slice(line);
                    self.state = CState::Sasl { tag, seen };
                    true
                }
                Event::Done(_) => self.command(line),
                Event::Closed => false,
            },
            CState::Literal { .. } | CState::Raw => unreachable!("not line states"),
        }
    }

    /// The first line of a command.
    fn command(&mut self, line: &[u8]) -> bool {
        let Some((tag, name)) = parse_command(line) else {
            // Not a command (e.g. IDLE's DONE, a blank line): the server will judge it.
            self.out.extend_from_slice(line);
            return true;
        };
        let id = self.next_id;
        self.next_id += 1;
        let literal = trailing_literal(line);
        // Counted as a server counts them: a connection the client has closed is gone, though
        // the proxy may still be winding it down (`FaultProxy::max_client_concurrent`).
        let open = super::live_clients(self.sh, None).len();
        if let Some(answer) = self.rules.refusal(&name, open) {
            let refused = Refused { id, line: [tag.as_slice(), b" ", answer.as_bytes(), b"\r\n"].concat() };
            return self.refuse_at(literal, tag, refused);
        }
        // Registered before the server can see the command, so its completion is never missed.
        self.down.forwarded(id, tag.clone());
        let mut rewritten = None;
        if literal.is_none()
            && self.rules.gmail.is_some()
            && (name == "FETCH" || name == "UID FETCH")
            && let Some(l) = gmail_fetch(line)
        {
            self.rules.gm_cmds.fetch_add(1, Ordering::SeqCst);
            rewritten = Some(l);
        }
        match literal {
            Some((n, sync)) => {
                self.out.extend_from_slice(line);
                self.literal(tag, n, sync)
            }
            None if name == "AUTHENTICATE" => {
                let seen = self.link.watch(&tag, false);
                self.out.extend_from_slice(line);
                self.state = CState::Sasl { tag, seen };
                true
            }
            None if name == "STARTTLS" || name == "COMPRESS" => {
                // The client sends nothing more before the answer; after an OK, TLS or
                // DEFLATE bytes follow both ways.
                let mut seen = self.link.watch(&tag, true);
                self.out.extend_from_slice(line);
                loop {
                    match self.wait(seen) {
                        Event::Continuation => seen += 1,
                        Event::Done(ok) => {
                            if ok {
                                self.state = CState::Raw;
                            }
                            return true;
                        }
                        Event::Closed => return false,
                    }
                }
            }
            None => {
                self.out.extend_from_slice(rewritten.as_deref().unwrap_or(line));
                true
            }
        }
    }

    /// A line continuing command `tag` after a literal.
    fn rest(&mut self, line: &[u8], tag: Vec<u8>, refused: Option<Refused>) -> bool {
        let literal = trailing_literal(line);
        if let Some(refused) = refused {
            return self.refuse_at(literal, tag, refused);
        }
        self.out.extend_from_slice(line);
        match literal {
            Some((n, sync)) => self.literal(tag, n, sync),
            None => true,
        }
    }

    /// A refused command's line ending with `literal`: with a synchronising literal (the client
    /// waits for `+`, so nothing more of the command comes) or at its end the proxy answers; a
    /// non-synchronising literal is still coming and is swallowed first.
    fn refuse_at(&mut self, literal: Option<(u64, bool)>, tag: Vec<u8>, refused: Refused) -> bool {
        match literal {
            Some((n, false)) => self.state = CState::Literal { left: n, tag, refused: Some(refused) },
            _ => self.down.answer(refused.id, refused.line),
        }
        true
    }

    /// A forwarded line ended with a literal of `n` bytes: a synchronising one comes only if the
    /// server sends `+`; if it completes the command instead, the client sends no literal.
    fn literal(&mut self, tag: Vec<u8>, n: u64, sync: bool) -> bool {
        if !sync {
            self.state = CState::Literal { left: n, tag, refused: None };
            return true;
        }
        let seen = self.link.watch(&tag, false);
        match self.wait(seen) {
            Event::Continuation => self.state = CState::Literal { left: n, tag, refused: None },
            Event::Done(_) => self.state = CState::Command,
            Event::Closed => return false,
        }
        true
    }
}

/// The tag and command name (upper case, `UID ` joined to the next word) of a command's first
/// line; `None` if the line has no command word.
fn parse_command(line: &[u8]) -> Option<(Vec<u8>, String)> {
    let l = trim_eol(line);
    let sp = l.iter().position(|&b| b == b' ')?;
    let tag = &l[..sp];
    if tag.is_empty() {
        return None;
    }
    let mut words = l[sp + 1..].split(|&b| b == b' ');
    let first = String::from_utf8_lossy(words.next()?).to_ascii_uppercase();
    if first.is_empty() || first.starts_with('{') {
        return None;
    }
    let name = if first == "UID" {
        format!("UID {}", String::from_utf8_lossy(words.next().unwrap_or_default()).to_ascii_uppercase())
    } else {
        first
    };
    Some((tag.to_vec(), name))
}

/// The literal announced at the end of a line: `{n}` (synchronising, `true`), `{n+}`, or a
/// server's `~{n}` (RFC 3516).
fn trailing_literal(line: &[u8]) -> Option<(u64, bool)> {
    let l = trim_eol(line);
    let inner = l.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let inner = &inner[open + 1..];
    let (digits, sync) = match inner.strip_suffix(b"+") {
        Some(d) => (d, false),
        None => (inner, true),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok().map(|n| (n, sync))
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    l.strip_suffix(b"\r").unwrap_or(l)
}

fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Splits at spaces outside quotes, brackets and parentheses: the items of a FETCH list.
fn split_items(s: &[u8]) -> Vec<&[u8]> {
    let mut items = Vec::new();
    let (mut depth, mut quoted, mut escaped, mut start) = (0i32, false, false, 0);
    for (i, &b) in s.iter().enumerate() {
        if quoted {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => quoted = true,
            b'(' | b'[' => depth += 1,
            b')' | b']' => depth -= 1,
            b' ' if depth == 0 => {
                if i > start {
                    items.push(&s[start..i]);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if s.len() > start {
        items.push(&s[start..]);
    }
    items
}

/// The end of the item (or parenthesised list) starting at `s[0]`: the first space outside
/// quotes, brackets and parentheses, or the end.
fn item_end(s: &[u8]) -> usize {
    let (mut depth, mut quoted, mut escaped) = (0i32, false, false);
    for (i, &b) in s.iter().enumerate() {
        if quoted {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => quoted = true,
            b'(' | b'[' => depth += 1,
            b')' | b']' => {
                depth -= 1;
                if depth == 0 && s[0] == b'(' {
                    return i + 1;
                }
            }
            b' ' if depth == 0 => return i,
            _ => {}
        }
    }
    s.len()
}

/// A FETCH / UID FETCH command line with its Gmail items replaced by one marked header fetch
/// (see [`MARKER`]); `None` if it asks for none.
fn gmail_fetch(line: &[u8]) -> Option<Vec<u8>> {
    let body = trim_eol(line);
    // After "<tag> [UID ]FETCH ": the sequence set, then the items, then optional modifiers.
    let mut p = body.iter().position(|&b| b == b' ')? + 1;
    if starts_with_ci(&body[p..], b"UID ") {
        p += 4;
    }
    if !starts_with_ci(&body[p..], b"FETCH ") {
        return None;
    }
    p += 6;
    p += body[p..].iter().position(|&b| b == b' ')? + 1;
    let end = p + item_end(&body[p..]);
    let atts = &body[p..end];
    let (list, inner) = match atts.strip_prefix(b"(").and_then(|a| a.strip_suffix(b")")) {
        Some(inner) => (true, inner),
        None => (false, atts),
    };
    let items = if list { split_items(inner) } else { vec![inner] };
    let mut wanted = 0u8;
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for item in items {
        let flag = match item.to_ascii_uppercase().as_slice() {
            b"X-GM-MSGID" => GM_MSGID,
            b"X-GM-THRID" => GM_THRID,
            b"X-GM-LABELS" => GM_LABELS,
            _ => {
                kept.push(item.to_vec());
                continue;
            }
        };
        if wanted == 0 {
            // The marker item stands where the first Gmail item was.
            kept.push(Vec::new());
        }
        wanted |= flag;
    }
    if wanted == 0 {
        return None;
    }
    let mut letters = String::new();
    for (flag, letter) in [(GM_MSGID, 'M'), (GM_THRID, 'T'), (GM_LABELS, 'L')] {
        if wanted & flag != 0 {
            letters.push(letter);
        }
    }
    let marker = format!("BODY.PEEK[HEADER.FIELDS (MESSAGE-ID {MARKER}{letters})]");
    for k in &mut kept {
        if k.is_empty() {
            *k = marker.clone().into_bytes();
        }
    }
    let mut out = body[..p].to_vec();
    out.push(b'(');
    out.extend_from_slice(&kept.join(&b' '));
    out.push(b')');
    out.extend_from_slice(&body[end..]);
    out.extend_from_slice(b"\r\n");
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Server → client

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Untagged,
    Continuation,
    Tagged,
}

enum SState {
    /// Reading a response line (the start of a response or its text after a literal).
    Line,
    /// Streaming a literal through, `left` bytes to go.
    Literal(u64),
    /// Buffering the Message-ID header section of a marked header fetch, to answer `items`.
    Marker { need: usize, buf: Vec<u8>, items: u8 },
    /// No longer IMAP (after STARTTLS, COMPRESS, or an overlong line).
    Raw,
}

/// The server pump's parser: turns the server's bytes into what the client gets, with [`Mark`]s
/// at response ends.
struct ServerFramer {
    rules: Arc<RuleSet>,
    gmail: bool,
    /// An incomplete line.
    line: Vec<u8>,
    state: SState,
    /// The next line starts a response.
    first: bool,
    kind: Kind,
    /// The current response is an untagged FETCH (where Gmail markers can be).
    fetch: bool,
    /// The current response's tag and whether its status is OK (for a tagged one).
    tag: Vec<u8>,
    ok: bool,
}

impl ServerFramer {
    fn new(rules: Arc<RuleSet>) -> ServerFramer {
        ServerFramer {
            gmail: rules.gmail.is_some(),
            rules,
            line: Vec::new(),
            state: SState::Line,
            first: true,
            kind: Kind::Untagged,
            fetch: false,
            tag: Vec::new(),
            ok: false,
        }
    }

    /// Whether the client got part of a response and not its end. A held-back incomplete first
    /// line does not count: the client has seen none of it.
    fn mid(&self) -> bool {
        !self.first
    }

    fn feed(&mut self, data: &[u8], link: &Link, out: &mut Vec<u8>, marks: &mut Vec<Mark>) {
        if link.tls.load(Ordering::SeqCst) {
            self.state = SState::Raw;
        }
        let mut pos = 0;
        while pos < data.len() {
            match &mut self.state {
                SState::Raw => {
                    out.extend_from_slice(&data[pos..]);
                    return;
                }
                SState::Literal(left) => {
                    let take = (*left).min((data.len() - pos) as u64) as usize;
                    out.extend_from_slice(&data[pos..pos + take]);
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = SState::Line;
                    }
                    pos += take;
                }
                SState::Marker { need, buf, items } => {
                    let take = (*need - buf.len()).min(data.len() - pos);
                    buf.extend_from_slice(&data[pos..pos + take]);
                    pos += take;
                    if buf.len() == *need {
                        out.extend_from_slice(&gmail_items(buf, *items));
                        self.rules.hit(self.rules.gmail.expect("gmail rule set"));
                        self.state = SState::Line;
                    }
                }
                SState::Line => match data[pos..].iter().position(|&b| b == b'\n') {
                    None => {
                        self.line.extend_from_slice(&data[pos..]);
                        if self.line.len() > MAX_LINE {
                            out.append(&mut self.line);
                            self.state = SState::Raw;
                        }
                        return;
                    }
                    Some(i) => {
                        self.line.extend_from_slice(&data[pos..pos + i + 1]);
                        pos += i + 1;
                        let frag = std::mem::take(&mut self.line);
                        self.fragment(frag, link, out, marks);
                    }
                },
            }
        }
    }

    /// One complete line of a response: its start, or its text after a literal.
    fn fragment(&mut self, frag: Vec<u8>, link: &Link, out: &mut Vec<u8>, marks: &mut Vec<Mark>) {
        let first = std::mem::replace(&mut self.first, false);
        if first {
            self.kind = match frag.first() {
                Some(b'*') => Kind::Untagged,
                Some(b'+') => Kind::Continuation,
                _ => Kind::Tagged,
            };
            self.fetch = self.kind == Kind::Untagged && is_untagged_fetch(&frag);
            if self.kind == Kind::Tagged {
                let mut words = trim_eol(&frag).splitn(3, |&b| b == b' ');
                self.tag = words.next().unwrap_or_default().to_vec();
                self.ok = words.next().is_some_and(|w| w.eq_ignore_ascii_case(b"OK"));
            }
        }
        let gm_fetch = self.gmail && self.fetch;
        if let Some((n, _)) = trailing_literal(&frag).filter(|_| self.kind != Kind::Continuation) {
            if gm_fetch
                && n <= MAX_MARKER_LITERAL
                && let Some((start, items)) = marker_before_literal(&frag)
            {
                out.extend_from_slice(&inline_markers(&frag[..start], &self.rules));
                if n == 0 {
                    out.extend_from_slice(&gmail_items(b"", items));
                    self.rules.hit(self.rules.gmail.expect("gmail rule set"));
                } else {
                    self.state = SState::Marker { need: n as usize, buf: Vec::new(), items };
                }
                return;
            }
            if gm_fetch {
                out.extend_from_slice(&inline_markers(&frag, &self.rules));
            } else {
                out.extend_from_slice(&frag);
            }
            if n > 0 {
                self.state = SState::Literal(n);
            }
            return;
        }
        // The last line of the response.
        self.first = true;
        let mut frag = frag;
        let mut tagged = None;
        match self.kind {
            Kind::Untagged => {
                if first {
                    match self.rules.rewrite(frag) {
                        Some(f) => frag = f,
                        None => {
                            marks.push(Mark { at: out.len(), tagged: None });
                            return;
                        }
                    }
                }
                if self.gmail && first {
                    frag = self.capability(frag);
                }
                if gm_fetch {
                    frag = inline_markers(&frag, &self.rules);
                }
            }
            Kind::Continuation => link.continuation(),
            Kind::Tagged => {
                if self.gmail && first {
                    frag = self.capability(frag);
                }
                let tag = std::mem::take(&mut self.tag);
                if link.tagged(&tag, self.ok) {
                    self.state = SState::Raw;
                }
                tagged = Some(tag);
            }
        }
        out.extend_from_slice(&frag);
        marks.push(Mark { at: out.len(), tagged });
    }

    fn capability(&self, frag: Vec<u8>) -> Vec<u8> {
        match add_gm_capability(&frag) {
            Some(f) => {
                self.rules.gm_caps.fetch_add(1, Ordering::SeqCst);
                f
            }
            None => frag,
        }
    }
}

/// `* <n> FETCH ...`
fn is_untagged_fetch(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"* ") else { return false };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && starts_with_ci(&rest[digits..], b" FETCH ")
}

/// Adds `X-GM-EXT-1` to an untagged `CAPABILITY` response or a `[CAPABILITY ...]` response code
/// of a status response; `None` if the line has neither or already lists it.
fn add_gm_capability(line: &[u8]) -> Option<Vec<u8>> {
    const CAP: &[u8] = b"X-GM-EXT-1";
    let body = trim_eol(line);
    let has = |list: &[u8]| list.split(|&b| b == b' ').any(|c| c.eq_ignore_ascii_case(CAP));
    let insert = |at: usize| [&body[..at], b" ", CAP, &body[at..], b"\r\n"].concat();
    if starts_with_ci(body, b"* CAPABILITY ") {
        return (!has(body)).then(|| insert(body.len()));
    }
    // "<tag|*> <status> [CAPABILITY ...] text"
    let sp1 = body.iter().position(|&b| b == b' ')?;
    let sp2 = sp1 + 1 + body[sp1 + 1..].iter().position(|&b| b == b' ')?;
    let status = &body[sp1 + 1..sp2];
    if !["OK", "NO", "BAD", "PREAUTH", "BYE"].iter().any(|s| status.eq_ignore_ascii_case(s.as_bytes())) {
        return None;
    }
    let code = &body[sp2 + 1..];
    if !starts_with_ci(code, b"[CAPABILITY ") {
        return None;
    }
    let close = sp2 + 1 + code.iter().position(|&b| b == b']')?;
    (!has(&body[sp2 + 1..close])).then(|| insert(close))
}

/// Parses a marked section spec `BODY[HEADER.FIELDS (MESSAGE-ID X-BACKPROC-GM-<letters>)]`
/// at the start of `s` (as the server echoes it: any case, names maybe quoted); returns its
/// length and the Gmail items it stands for.
fn parse_marker(s: &[u8]) -> Option<(usize, u8)> {
    const HEAD: &[u8] = b"BODY[HEADER.FIELDS (";
    if !starts_with_ci(s, HEAD) {
        return None;
    }
    let close = HEAD.len() + s[HEAD.len()..].iter().position(|&b| b == b')')?;
    if s.get(close + 1) != Some(&b']') {
        return None;
    }
    let names: Vec<Vec<u8>> = s[HEAD.len()..close]
        .split(|&b| b == b' ')
        .filter(|n| !n.is_empty())
        .map(|n| n.strip_prefix(b"\"").and_then(|n| n.strip_suffix(b"\"")).unwrap_or(n).to_ascii_uppercase())
        .collect();
    let [mid, marker] = names.as_slice() else { return None };
    let letters = marker.strip_prefix(MARKER.as_bytes())?;
    if mid != b"MESSAGE-ID" || letters.is_empty() {
        return None;
    }
    let mut items = 0;
    for l in letters {
        items |= match l {
            b'M' => GM_MSGID,
            b'T' => GM_THRID,
            b'L' => GM_LABELS,
            _ => return None,
        };
    }
    Some((close + 2, items))
}

/// A FETCH response line ending `<marker> {n}`: where the marker item starts, and its items.
fn marker_before_literal(frag: &[u8]) -> Option<(usize, u8)> {
    let body = trim_eol(frag);
    let open = body.iter().rposition(|&b| b == b'{')?;
    let spec_end = body[..open].strip_suffix(b" ")?.len();
    let start = body[..spec_end].windows(5).rposition(|w| w.eq_ignore_ascii_case(b"BODY["))?;
    match parse_marker(&body[start..]) {
        Some((len, items)) if start + len == spec_end => Some((start, items)),
        _ => None,
    }
}

/// Replaces marker items answered inline (`<marker> NIL` or `<marker> "<quoted>"`, which
/// servers may send instead of a literal) with Gmail items.
fn inline_markers(frag: &[u8], rules: &RuleSet) -> Vec<u8> {
    let mut out = Vec::with_capacity(frag.len());
    let mut i = 0;
    while i < frag.len() {
        if (frag[i] == b'B' || frag[i] == b'b')
            && let Some((len, items)) = parse_marker(&frag[i..])
            && frag.get(i + len) == Some(&b' ')
            && let Some((value_len, header)) = inline_value(&frag[i + len + 1..])
        {
            out.extend_from_slice(&gmail_items(&header, items));
            rules.hit(rules.gmail.expect("gmail rule set"));
            i += len + 1 + value_len;
            continue;
        }
        out.push(frag[i]);
        i += 1;
    }
    out
}

/// `NIL` or a quoted string at the start of `s`: its length and unquoted value.
fn inline_value(s: &[u8]) -> Option<(usize, Vec<u8>)> {
    if starts_with_ci(s, b"NIL") {
        return Some((3, Vec::new()));
    }
    if s.first() != Some(&b'"') {
        return None;
    }
    let mut v = Vec::new();
    let mut escaped = false;
    for (i, &b) in s.iter().enumerate().skip(1) {
        match b {
            _ if escaped => {
                v.push(b);
                escaped = false;
            }
            b'\\' => escaped = true,
            b'"' => return Some((i + 1, v)),
            _ => v.push(b),
        }
    }
    None
}

/// The Gmail items for a message whose Message-ID header section is `header`.
fn gmail_items(header: &[u8], items: u8) -> Vec<u8> {
    let id = gm_msgid(message_id(header));
    let mut parts = Vec::new();
    if items & GM_MSGID != 0 {
        parts.push(format!("X-GM-MSGID {id}"));
    }
    if items & GM_THRID != 0 {
        parts.push(format!("X-GM-THRID {id}"));
    }
    if items & GM_LABELS != 0 {
        parts.push("X-GM-LABELS ()".to_string());
    }
    parts.join(" ").into_bytes()
}

/// The unfolded value of the first Message-ID field in a header section (empty if none).
fn message_id(header: &[u8]) -> Vec<u8> {
    let mut value = Vec::new();
    let mut inside = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        let l = trim_eol(line);
        if inside {
            if l.first().is_some_and(|&b| b == b' ' || b == b'\t') {
                value.extend_from_slice(l);
                continue;
            }
            break;
        }
        if let Some(colon) = l.iter().position(|&b| b == b':')
            && l[..colon].trim_ascii().eq_ignore_ascii_case(b"Message-ID")
        {
            value.extend_from_slice(&l[colon + 1..]);
            inside = true;
        }
    }
    value.trim_ascii().to_vec()
}

fn server_pump(mut from: TcpStream, fault: &Fault, rules: Arc<RuleSet>, link: &Link, down: &Down, sh: &Shared) {
    let mut framer = ServerFramer::new(rules);
    let mut buf = vec![0u8; 64 * 1024];
    let (mut out, mut marks) = (Vec::new(), Vec::new());
    while !down.dead() {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        capture(sh, true, &buf[..n]);
        // Not through the shared stage: sleeping under its lock would stall the client pump.
        if let Fault::Delay { per_chunk_ms } = fault {
            std::thread::sleep(std::time::Duration::from_millis(*per_chunk_ms));
        }
        out.clear();
        marks.clear();
        framer.feed(&buf[..n], link, &mut out, &mut marks);
        if !down.server_output(&out, &marks, framer.mid()) {
            break;
        }
    }
    link.close();
    down.finish(&from);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_at_line_end() {
        assert_eq!(trailing_literal(b"a LOGIN {5}\r\n"), Some((5, true)));
        assert_eq!(trailing_literal(b"a APPEND x {123+}\r\n"), Some((123, false)));
        assert_eq!(trailing_literal(b"* 1 FETCH (BINARY[] ~{7}\r\n"), Some((7, true)));
        assert_eq!(trailing_literal(b"* OK {x}\r\n"), None);
        assert_eq!(trailing_literal(b"* OK {}\r\n"), None);
        assert_eq!(trailing_literal(b"a NOOP\r\n"), None);
    }

    #[test]
    fn command_names() {
        assert_eq!(parse_command(b"a1 select INBOX\r\n"), Some((b"a1".to_vec(), "SELECT".into())));
        assert_eq!(parse_command(b"a1 uid fetch 1:* (UID)\r\n"), Some((b"a1".to_vec(), "UID FETCH".into())));
        assert_eq!(parse_command(b"a1 LOGIN {3}\r\n"), Some((b"a1".to_vec(), "LOGIN".into())));
        assert_eq!(parse_command(b"DONE\r\n"), None);
        assert_eq!(parse_command(b"\r\n"), None);
    }

    #[test]
    fn gmail_fetch_rewrites_only_gmail_items() {
        let m = |l: &str| format!("BODY.PEEK[HEADER.FIELDS (MESSAGE-ID {MARKER}{l})]");
        let got = |l: &[u8]| gmail_fetch(l).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(
            got(b"a UID FETCH 1:* (UID X-GM-MSGID BODY.PEEK[HEADER.FIELDS (A B)] x-gm-labels)\r\n"),
            Some(format!("a UID FETCH 1:* (UID {} BODY.PEEK[HEADER.FIELDS (A B)])\r\n", m("ML")))
        );
        assert_eq!(got(b"a FETCH 1 X-GM-MSGID\r\n"), Some(format!("a FETCH 1 ({})\r\n", m("M"))));
        assert_eq!(
            got(b"a UID FETCH 5 (X-GM-THRID FLAGS) (CHANGEDSINCE 3)\r\n"),
            Some(format!("a UID FETCH 5 ({} FLAGS) (CHANGEDSINCE 3)\r\n", m("T")))
        );
        assert_eq!(got(b"a UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])\r\n"), None);
        assert_eq!(got(b"a FETCH 1:* FLAGS\r\n"), None);
    }

    #[test]
    fn markers_in_responses() {
        let frag = b"* 3 FETCH (UID 9 BODY[HEADER.FIELDS (MESSAGE-ID X-BACKPROC-GM-ML)] {20}\r\n";
        assert_eq!(marker_before_literal(frag), Some((17, GM_MSGID | GM_LABELS)));
        assert_eq!(marker_before_literal(b"* 3 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID)] {20}\r\n"), None);
        assert_eq!(marker_before_literal(b"* 3 FETCH (BODY[] {20}\r\n"), None);
        let rules = RuleSet::new(vec![ImapRule::Gmail]);
        let got = inline_markers(
            b"* 1 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID X-BACKPROC-GM-M)] \"Message-ID: <a@b>\" UID 4)\r\n",
            &rules,
        );
        assert_eq!(got, format!("* 1 FETCH (X-GM-MSGID {} UID 4)\r\n", gm_msgid("<a@b>")).into_bytes());
        assert_eq!(rules.hits(0), 1);
    }

    #[test]
    fn message_id_values() {
        assert_eq!(message_id(b"Message-ID: <a@b>\r\n\r\n"), b"<a@b>");
        assert_eq!(message_id(b"message-id:\r\n   <Folded@B>  \r\n\r\n"), b"<Folded@B>");
        assert_eq!(message_id(b"\r\n"), b"");
        assert_eq!(gm_msgid(" <a@b>\r\n"), gm_msgid("<a@b>"));
        assert_ne!(gm_msgid("<a@b>"), gm_msgid("<A@b>"));
        assert!(gm_msgid("<a@b>") <= i64::MAX as u64);
    }

    #[test]
    fn gmail_capabilities() {
        let got = |l: &[u8]| add_gm_capability(l).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(
            got(b"* CAPABILITY IMAP4rev1 IDLE\r\n").as_deref(),
            Some("* CAPABILITY IMAP4rev1 IDLE X-GM-EXT-1\r\n")
        );
        assert_eq!(
            got(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n").as_deref(),
            Some("* OK [CAPABILITY IMAP4rev1 IDLE X-GM-EXT-1] ready\r\n")
        );
        assert_eq!(
            got(b"a1 OK [CAPABILITY IMAP4rev1] Logged in\r\n").as_deref(),
            Some("a1 OK [CAPABILITY IMAP4rev1 X-GM-EXT-1] Logged in\r\n")
        );
        assert_eq!(got(b"* CAPABILITY IMAP4rev1 X-GM-EXT-1\r\n"), None);
        assert_eq!(got(b"a1 OK [READ-WRITE] done\r\n"), None);
        assert_eq!(got(b"* 1 FETCH (FLAGS ())\r\n"), None);
    }

    #[test]
    fn rewrite_whole_lines() {
        let rules = RuleSet::new(vec![
            ImapRule::Rewrite { from: b"* 1 EXISTS".to_vec(), to: b"* 2 EXISTS".to_vec() },
            ImapRule::Rewrite { from: b"* 0 RECENT".to_vec(), to: Vec::new() },
        ]);
        assert_eq!(rules.rewrite(b"* 1 EXISTS\r\n".to_vec()), Some(b"* 2 EXISTS\r\n".to_vec()));
        assert_eq!(rules.rewrite(b"* 11 EXISTS\r\n".to_vec()), Some(b"* 11 EXISTS\r\n".to_vec()));
        assert_eq!(rules.rewrite(b"* 0 RECENT\r\n".to_vec()), None);
        assert_eq!((rules.hits(0), rules.hits(1)), (1, 1));
    }
}
