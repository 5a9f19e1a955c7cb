//! An IMAP session: the one owner of a connection. It owns the tags, the commands in flight
//! (pipelining), the bytes read past an answer, and every limit on what the server may make
//! us hold; the jobs call typed methods (`commands.rs`) and never see a tag or a raw line.
//!
//! Connecting is TLS, STARTTLS (required when chosen) or plain on loopback; logging in never
//! sends a password in clear to a server that says LOGINDISABLED (RFC 3501 §6.2.3). An OAuth2
//! access token signs in with AUTHENTICATE (the SASL strings come from `backproc_sasl`).
//!
//! Invariant: passwords, tokens and SASL strings never reach an error message or a log line.
//!
//! Why not the `imap` crate any more: it owns its socket through its `Client`/`Session`, so
//! our streaming FETCH reader had to share the socket with it behind a mutex (two clients on
//! one connection, sixteen methods that had to `settle()` first, nothing to enforce it), and
//! its readers have no bound on what they collect (a flood of `* OK` lines in answer to LIST
//! cost 2 GB). Nor `imap-codec`/`imap-next`: a sound codec, but it decodes a response only once
//! all of it, literals included, is in its input buffer, where we need a 50 MB body to go from
//! the socket into the buffer that is stored, once, and limits at every stage of a response.
//! What we keep from the ecosystem: rustls for TLS (`tls.rs` says why not OpenSSL), and the
//! grammar of RFC 3501/9051, implemented in `lex.rs` and `response.rs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use backproc_sasl::{Credential, Mechanism};

use crate::plan::ServerStatus;
use crate::read::{Limits, ReadError, Reader};
use crate::response::{Code, Malformed, ParseLimits, Response, Status, Tagged, Untagged, read_response};
use crate::transport::{Deadline, Stream, Transport};

use backproc_types::Cause;
pub use backproc_types::Security;

/// How to reach and log in to a server. `Debug` hides the credential.
#[derive(Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub login: String,
    /// A password (LOGIN) or an OAuth 2.0 access token (AUTHENTICATE OAUTHBEARER or XOAUTH2).
    pub credential: Credential,
    /// Extra trusted CA certificate, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// Skip certificate verification (explicit per-account opt-out).
    pub insecure: bool,
    /// Per read and write.
    pub timeout: Duration,
    /// The task's overall deadline, from the start of the connection.
    pub deadline: Option<Deadline>,
    /// EMAIL_BG_MAX_MESSAGE_SIZE: the largest body literal read.
    pub max_message: usize,
    /// COMPRESS=DEFLATE (RFC 4978) when the server offers it, from the first download on
    /// (`deflate_for_download`).
    pub compress: bool,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{} {:?}", self.login, self.host, self.port, self.security)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Login refused: the credentials are wrong.
    Auth,
    /// Cannot reach the server, or the connection dropped.
    Connect,
    /// TLS handshake or certificate, or a server that wants TLS we were not told to use.
    Tls,
    /// The server answered something that is not IMAP, or more than a limit allows: the
    /// connection is in an unknown state and must be dropped.
    Protocol,
    /// A command was refused (tagged NO or BAD): the connection is fine.
    Refused,
    /// The task's deadline passed or the server went silent.
    Timeout,
    /// The server has too many connections from us (`[LIMIT]`, `[UNAVAILABLE]`, Gmail's "Too
    /// many simultaneous connections"): not a failure of the account.
    Busy,
    /// The server asks us to wait (`retry_after`), e.g. Microsoft 365's "Request is throttled".
    Throttled,
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    /// What went wrong, the cause's text included: what logs and history show.
    pub detail: String,
    /// How long the server asked us to wait, when it said.
    pub retry_after: Option<Duration>,
    /// What underlies it, when something does (the I/O error of a lost connection), for a
    /// caller that must tell causes apart.
    pub source: Option<Cause>,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(Cause::error)
    }
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error { kind, detail: detail.into(), retry_after: None, source: None }
    }

    /// The error, with what underlies it.
    pub(crate) fn caused_by(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Cause::new(e));
        self
    }

    /// Whether the session can go on after this error (a refused command only).
    pub fn session_usable(&self) -> bool {
        self.kind == ErrorKind::Refused
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the server supports, read after login (and after STARTTLS before it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caps {
    pub condstore: bool,
    pub qresync: bool,
    pub uidplus: bool,
    pub mv: bool,
    pub special_use: bool,
    pub enable: bool,
    pub esearch: bool,
    pub namespace: bool,
    pub idle: bool,
    pub notify: bool,
    pub literal_plus: bool,
    pub literal_minus: bool,
    pub utf8_accept: bool,
    pub compress_deflate: bool,
    pub starttls: bool,
    pub logindisabled: bool,
    /// AUTH=OAUTHBEARER (RFC 7628).
    pub auth_oauthbearer: bool,
    /// AUTH=XOAUTH2 (Google, Microsoft).
    pub auth_xoauth2: bool,
    /// SASL-IR (RFC 4959): the initial response rides on the AUTHENTICATE line.
    pub sasl_ir: bool,
    /// X-GM-EXT-1: Gmail's labels as folders, one message in several (X-GM-MSGID).
    pub gmail: bool,
}

impl Caps {
    pub fn from_words(words: &[String]) -> Caps {
        let has = |w: &str| words.iter().any(|x| x.eq_ignore_ascii_case(w));
        Caps {
            condstore: has("CONDSTORE") || has("QRESYNC"),
            qresync: has("QRESYNC"),
            uidplus: has("UIDPLUS"),
            mv: has("MOVE"),
            special_use: has("SPECIAL-USE"),
            enable: has("ENABLE"),
            esearch: has("ESEARCH"),
            namespace: has("NAMESPACE"),
            idle: has("IDLE"),
            notify: has("NOTIFY"),
            literal_plus: has("LITERAL+"),
            literal_minus: has("LITERAL-"),
            utf8_accept: has("UTF8=ACCEPT") || has("UTF8=ONLY"),
            compress_deflate: has("COMPRESS=DEFLATE"),
            starttls: has("STARTTLS"),
            logindisabled: has("LOGINDISABLED"),
            auth_oauthbearer: has("AUTH=OAUTHBEARER"),
            auth_xoauth2: has("AUTH=XOAUTH2"),
            sasl_ir: has("SASL-IR"),
            gmail: has("X-GM-EXT-1"),
        }
    }
}

/// The selected mailbox, as its SELECT or EXAMINE answer described it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selected {
    pub name: String,
    pub write: bool,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub exists: u32,
    pub highest_modseq: Option<u64>,
    /// PERMANENTFLAGS, when the server said (RFC 3501 §7.1): without `\*` only these
    /// keywords can be kept.
    pub permanent_flags: Option<Vec<String>>,
}

impl Selected {
    /// Whether the server keeps `keyword` on a message.
    pub fn keeps_keyword(&self, keyword: &str) -> bool {
        match &self.permanent_flags {
            None => true,
            Some(p) => p.iter().any(|f| f == "\\*" || f.eq_ignore_ascii_case(keyword)),
        }
    }

    pub fn status(&self) -> ServerStatus {
        ServerStatus {
            uidvalidity: self.uidvalidity,
            uidnext: self.uidnext,
            highest_modseq: self.highest_modseq,
            exists: self.exists,
        }
    }
}

/// Figures of one session, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// FETCH answers for UIDs not asked, UID 0, or a UID twice: ignored.
    pub ignored_fetch: u64,
    /// Commands sent.
    pub commands: u64,
}

/// A command in flight.
pub(crate) struct Pending {
    pub tag: u32,
    pub what: &'static str,
    /// STATUS asked ahead: the mailbox (its key in `status_answers`).
    pub status_of: Option<Vec<u8>>,
    /// A body FETCH: the UIDs it asked (answers for them are kept for it whoever reads them).
    pub fetch_of: Option<std::collections::BTreeSet<u32>>,
    /// Nobody waits for its completion (ENABLE): a refusal is logged.
    pub unawaited: bool,
    /// Most untagged responses its answer may hold, and most bytes.
    pub max_untagged: usize,
    pub max_bytes: u64,
    pub untagged: usize,
    /// Where its answer began (a value of the reader's `consumed`), once it is being read.
    pub started: Option<u64>,
}

impl Pending {
    fn new(tag: u32, what: &'static str, status_of: Option<Vec<u8>>, b: Budget) -> Pending {
        Pending {
            tag,
            what,
            status_of,
            fetch_of: None,
            unawaited: false,
            max_untagged: b.untagged,
            max_bytes: b.bytes,
            untagged: 0,
            started: None,
        }
    }
}

/// Bounds on one command's answer. Generous for honest servers (a LIST of 200,000 folders, the
/// flags of a million messages), small enough that no flood costs more than a few MB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub untagged: usize,
    pub bytes: u64,
}

impl Budget {
    pub const SMALL: Budget = Budget { untagged: 1_000, bytes: 1 << 20 };
    pub const STATUS: Budget = Budget { untagged: 100, bytes: 256 << 10 };
    pub const LIST: Budget = Budget { untagged: 200_000, bytes: 64 << 20 };
}

/// STATUS commands in flight at most: more would risk both sides blocking on full socket
/// buffers (we write while the server writes answers nobody reads yet).
pub(crate) const MAX_STATUS_AHEAD: usize = 500;

pub struct Session {
    pub(crate) r: Reader<Transport>,
    pub(crate) out: Vec<u8>,
    next_tag: u32,
    pub(crate) pending: VecDeque<Pending>,
    pub caps: Caps,
    pub(crate) enabled: HashSet<String>,
    pub(crate) selected: Option<Selected>,
    /// Answers to STATUS asked ahead, by mailbox key (`status_key`): the status, or why not.
    pub(crate) status_answers: HashMap<Vec<u8>, std::result::Result<ServerStatus, String>>,
    /// A throttling answer to a command no one waited for (a STATUS asked ahead), until
    /// `take_throttle`: the server's "wait" concerns the account, whoever asked.
    throttled: Option<Error>,
    /// COMPRESS is wanted and offered, and not asked yet (`deflate_for_download`).
    compress_later: bool,
    pub(crate) lim: ParseLimits,
    pub(crate) host: String,
    pub(crate) stats: Stats,
    /// The personal namespace (prefix, delimiter), once asked.
    pub(crate) namespace: Option<(Vec<u8>, Option<String>)>,
    /// Completions of commands read while waiting for others (a server may run pipelined
    /// commands concurrently and answer them in any order, RFC 3501 §5.5; Dovecot does).
    pub(crate) completed: HashMap<u32, Tagged>,
    /// Body FETCH answers read while waiting for another command, by the tag that asked them.
    pub(crate) fetched_early: HashMap<u32, Vec<crate::response::FetchData>>,
    /// STATUS answers nobody asked for, collected while this is set (NOTIFY SET STATUS sends
    /// the watched mailboxes' status that way, `watch::watch_notify`).
    pub(crate) unsolicited_status: Option<Vec<crate::response::MailboxStatus>>,
}

/// How STATUS answers are matched to the folders asked: the name's bytes exactly, except
/// INBOX, whose name is case-insensitive (RFC 3501 §5.1).
pub fn status_key(name: &[u8]) -> Vec<u8> {
    if crate::is_inbox(name) { b"INBOX".to_vec() } else { name.to_vec() }
}

fn tcp(p: &ConnectParams) -> Result<TcpStream> {
    let addrs = (p.host.as_str(), p.port)
        .to_socket_addrs()
        .map_err(|e| Error::new(ErrorKind::Connect, format!("cannot resolve {}: {e}", p.host)).caused_by(e))?;
    let mut timeout = p.timeout;
    if let Some(d) = p.deadline {
        timeout =
            timeout.min((d.start + d.budget).saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
    }
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    let why = match &last {
        Some(e) if e.kind() == io::ErrorKind::TimedOut => format!("no answer within {} s", timeout.as_secs()),
        Some(e) => e.to_string(),
        None => "no address".into(),
    };
    let e = Error::new(ErrorKind::Connect, format!("cannot connect to {}:{}: {why}", p.host, p.port));
    Err(match last {
        Some(io) => e.caused_by(io),
        None => e,
    })
}

fn tls_wrap(p: &ConnectParams, s: TcpStream) -> Result<Stream> {
    // The handshake is bounded like any read: a server that stops in it cannot hang us.
    let _ = s.set_read_timeout(Some(p.timeout));
    let _ = s.set_write_timeout(Some(p.timeout));
    let settings = crate::tls::Settings { ca_pem: p.ca_pem.clone(), insecure: p.insecure };
    crate::tls::connect(&settings, &p.host, s).map(|t| Stream::Tls(Box::new(t))).map_err(|f| match f {
        crate::tls::Failure::Setup(why) => Error::new(ErrorKind::Tls, why),
        crate::tls::Failure::Handshake(why) => {
            Error::new(ErrorKind::Tls, format!("TLS handshake with {}:{} failed: {why}", p.host, p.port))
        }
    })
}

/// The text of a refusal a person can act on: the status word, the code, the server's words.
pub(crate) fn refusal_text(t: &Tagged) -> String {
    let mut s = t.status.word().to_owned();
    if let Some(c) = &t.code {
        s.push_str(&format!(" [{}]", c.name()));
    }
    if !t.text.is_empty() {
        s.push(' ');
        s.push_str(&shorten(&t.text, 300));
    }
    s
}

pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// Microsoft 365: `Request is throttled. Suggested Backoff Time: 92415 milliseconds`.
pub(crate) fn throttle_hint(text: &str) -> Option<Duration> {
    let lower = text.to_ascii_lowercase();
    if !lower.contains("throttled") {
        return None;
    }
    let at = lower.find("backoff time:")? + "backoff time:".len();
    let digits: String = lower[at..].trim_start().chars().take_while(char::is_ascii_digit).collect();
    let ms: u64 = digits.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// Whether a refusal says the server has too many connections from us (RFC 5530 LIMIT,
/// UNAVAILABLE, INUSE; Gmail's ALERT text).
pub(crate) fn is_busy(t: &Tagged) -> bool {
    let code = t.code.as_ref().map(|c| c.name().to_owned()).unwrap_or_default();
    matches!(code.as_str(), "LIMIT" | "UNAVAILABLE" | "INUSE")
        || t.text.to_ascii_lowercase().contains("too many simultaneous connections")
        || t.text.to_ascii_lowercase().contains("too many connections")
        // Dovecot's mail_max_userip_connections, as a BYE right after the login
        || t.text.to_ascii_lowercase().contains("maximum number of connections")
}

/// A refused command as an error: throttling told apart from a plain NO.
///
/// A busy code here (`NO [UNAVAILABLE]`, `[INUSE]`, `[LIMIT]` to a SELECT, say) refuses that
/// one command, a mailbox that cannot be opened now: the connection is fine (a tagged NO never
/// ends it), so it is `Refused` and the session is kept. "Too many connections from you" is an
/// answer to a connection, the greeting or LOGIN, which classify it themselves. (As `Busy`,
/// every retry of a refused folder cost a new connection and LOGIN, and backed off the whole
/// account as if unreachable.)
pub(crate) fn refused(what: &str, t: &Tagged) -> Error {
    let text = format!("{what} refused: {}", refusal_text(t));
    if let Some(wait) = throttle_hint(&t.text) {
        return Error { retry_after: Some(wait), ..Error::new(ErrorKind::Throttled, text) };
    }
    Error::new(ErrorKind::Refused, text)
}

/// `refused` for a refusal kept as its `refusal_text` (a STATUS asked ahead, answered while
/// another command was read): a throttled answer stays one, with its wait, not a plain NO.
pub(crate) fn refused_text(what: &str, refusal: &str) -> Error {
    let text = format!("{what} refused: {refusal}");
    match throttle_hint(refusal) {
        Some(wait) => Error { retry_after: Some(wait), ..Error::new(ErrorKind::Throttled, text) },
        None => Error::new(ErrorKind::Refused, text),
    }
}

impl Session {
    fn new(t: Transport, host: &str, max_message: usize) -> Session {
        Session {
            r: Reader::new(t, Limits::default()),
            out: Vec::with_capacity(4096),
            next_tag: 0,
            pending: VecDeque::new(),
            caps: Caps::default(),
            enabled: HashSet::new(),
            selected: None,
            status_answers: HashMap::new(),
            throttled: None,
            compress_later: false,
            lim: ParseLimits { body: max_message, ..ParseLimits::default() },
            host: host.to_owned(),
            stats: Stats::default(),
            namespace: None,
            completed: HashMap::new(),
            fetched_early: HashMap::new(),
            unsolicited_status: None,
        }
    }

    /// Connects, reads the greeting, secures the connection as asked, logs in, and reads the
    /// capabilities. A server that refuses logins without TLS is never sent the password.
    pub fn connect(p: &ConnectParams) -> Result<Session> {
        let stream = tcp(p)?;
        let stream = match p.security {
            Security::Ssl => tls_wrap(p, stream)?,
            Security::StartTls | Security::None => Stream::Plain(stream),
        };
        let mut t = Transport::new(stream, p.timeout);
        t.set_deadline(p.deadline);
        let mut s = Session::new(t, &p.host, p.max_message);
        let preauth = s.greeting()?;
        let caps_known = s.caps != Caps::default();
        if !caps_known {
            s.capability()?;
        }
        let plain = matches!(p.security, Security::StartTls | Security::None);
        if p.security == Security::StartTls && !s.caps.starttls {
            return Err(Error::new(
                ErrorKind::Tls,
                format!("{} does not offer STARTTLS; refusing to log in without TLS", p.host),
            ));
        }
        if p.security == Security::StartTls || (plain && s.caps.logindisabled && !preauth) {
            if !s.caps.starttls {
                return Err(Error::new(
                    ErrorKind::Tls,
                    format!(
                        "{} refuses logins without TLS (it advertises LOGINDISABLED) and offers no STARTTLS",
                        p.host
                    ),
                ));
            }
            s = s.starttls(p)?;
        }
        if !preauth {
            s.login(p)?;
        }
        // RFC 5161: ENABLE only to a server that has it; CONDSTORE alone is turned on by the
        // first command that uses it (RFC 7162 §3.1).
        let mut want = Vec::new();
        if s.caps.enable {
            if s.caps.qresync {
                want.push("QRESYNC");
            } else if s.caps.condstore {
                want.push("CONDSTORE");
            }
        }
        if !want.is_empty() {
            let line = format!("ENABLE {}", want.join(" "));
            // Its answer is read with the next command's: no round trip of its own.
            s.send_raw(line.as_bytes(), "ENABLE", Budget::SMALL, None)?;
            if let Some(p) = s.pending.back_mut() {
                p.unawaited = true;
            }
        }
        // Not now: COMPRESS costs a round trip of its own (a server lists COMPRESS=DEFLATE
        // only after login, and sending it in LOGIN's write on a guess loses it on Courier,
        // whose login process hands the connection to another without the bytes that
        // followed LOGIN). A connection that only asks STATUS, a resync with nothing new,
        // would pay it for nothing: it is asked before the first download instead.
        s.compress_later = p.compress && s.caps.compress_deflate;
        Ok(s)
    }

    /// Reads the greeting; returns whether it was PREAUTH.
    fn greeting(&mut self) -> Result<bool> {
        self.r.get_mut().waiting_for = "the greeting";
        let end = self.r.consumed() + Budget::SMALL.bytes;
        self.r.set_budget(Some((end, Budget::SMALL.bytes, "the greeting")));
        let resp = read_response(&mut self.r, &self.lim).map_err(|e| self.fail("the greeting", e))?;
        self.r.set_budget(None);
        match resp {
            Response::Untagged(Untagged::Status(t)) => {
                if let Some(Code::Capability(c)) = &t.code {
                    self.caps = Caps::from_words(c);
                }
                match t.status {
                    Status::Ok => Ok(false),
                    Status::PreAuth => Ok(true),
                    _ if is_busy(&t) => Err(Error::new(
                        ErrorKind::Busy,
                        format!("{} refused the connection: {}", self.host, refusal_text(&t)),
                    )),
                    _ => Err(Error::new(
                        ErrorKind::Connect,
                        format!("{} refused the connection: {}", self.host, refusal_text(&t)),
                    )),
                }
            }
            other => Err(Error::new(ErrorKind::Protocol, format!("an unexpected greeting: {}", brief(&other)))),
        }
    }

    fn capability(&mut self) -> Result<()> {
        let tag = self.send_raw(b"CAPABILITY", "CAPABILITY", Budget::SMALL, None)?;
        self.complete_ok(tag, "CAPABILITY", &mut |_, _| Ok(()))?;
        Ok(())
    }

    fn starttls(mut self, p: &ConnectParams) -> Result<Session> {
        let tag = self.send_raw(b"STARTTLS", "STARTTLS", Budget::SMALL, None)?;
        let t = self.complete(tag, &mut |_, _| Ok(()))?;
        if t.status != Status::Ok {
            return Err(Error::new(ErrorKind::Tls, format!("STARTTLS refused: {}", refusal_text(&t))));
        }
        // Bytes after the OK and before the handshake would be the attacker's (a STARTTLS
        // injection): the TLS session must start from nothing.
        if self.r.has_buffered() {
            return Err(Error::new(ErrorKind::Tls, "the server sent data after STARTTLS's answer; refusing it"));
        }
        let host = self.host.clone();
        let max = self.lim.body;
        let stream = match self.r.into_inner().into_stream() {
            Stream::Plain(s) => s,
            Stream::Tls(_) => return Err(Error::new(ErrorKind::Tls, "STARTTLS on a TLS connection")),
        };
        let mut t = Transport::new(tls_wrap(p, stream)?, p.timeout);
        t.set_deadline(p.deadline);
        let mut s = Session::new(t, &host, max);
        // Capabilities before TLS mean nothing after it (RFC 3501 §6.2.1).
        s.capability()?;
        Ok(s)
    }

    fn login(&mut self, p: &ConnectParams) -> Result<()> {
        let password = match &p.credential {
            Credential::Password(pw) => pw,
            Credential::Bearer(token) => return self.authenticate_bearer(p, token),
        };
        if self.caps.logindisabled {
            return Err(Error::new(
                ErrorKind::Tls,
                format!("{} refuses logins without TLS (LOGINDISABLED after STARTTLS)", p.host),
            ));
        }
        self.r.get_mut().waiting_for = "the answer to LOGIN";
        let mut cmd = crate::commands::CommandBuf::new(self.caps.literal_plus, self.caps.literal_minus);
        cmd.raw("LOGIN ");
        cmd.astring(p.login.as_bytes());
        cmd.raw(" ");
        cmd.astring(password.as_bytes());
        let tag = self.send_command(cmd, "LOGIN", Budget::SMALL)?;
        let t = self.complete(tag, &mut |_, _| Ok(()))?;
        self.logged_in(p, t, "login")
    }

    /// AUTHENTICATE with an OAuth 2.0 access token: OAUTHBEARER when offered, else XOAUTH2;
    /// the initial response on the command line with SASL-IR, else after the server's `+`.
    /// An error challenge (a `+` carrying base64 JSON) gets the reply RFC 7628 asks for, and
    /// the refusal that follows is a sign-in error naming the challenge's status.
    fn authenticate_bearer(&mut self, p: &ConnectParams, token: &str) -> Result<()> {
        let caps = &self.caps;
        let Some(mech) = Mechanism::choose(|m| match m {
            "OAUTHBEARER" => caps.auth_oauthbearer,
            "XOAUTH2" => caps.auth_xoauth2,
            _ => false,
        }) else {
            return Err(Error::new(
                ErrorKind::Auth,
                format!(
                    "{} offers neither AUTH=OAUTHBEARER nor AUTH=XOAUTH2: it cannot take an OAuth2 sign-in",
                    p.host
                ),
            ));
        };
        let what = match mech {
            Mechanism::OAuthBearer => "AUTHENTICATE OAUTHBEARER",
            Mechanism::XOAuth2 => "AUTHENTICATE XOAUTH2",
        };
        self.r.get_mut().waiting_for = "the answer to AUTHENTICATE";
        // The SASL string is the token itself: it is written to the wire, never to a message.
        let ir = mech.initial_response(&p.login, &p.host, p.port, token);
        let tag = self.tag();
        self.stats.commands += 1;
        if self.caps.sasl_ir {
            write!(self.out, "b{tag} {what} {ir}\r\n").expect("writing to a Vec");
        } else {
            write!(self.out, "b{tag} {what}\r\n").expect("writing to a Vec");
        }
        self.flush(what)?;
        let mut sent_ir = self.caps.sasl_ir;
        let mut challenge = None;
        let t = loop {
            let resp = read_response(&mut self.r, &self.lim).map_err(|e| self.fail(what, e))?;
            match resp {
                Response::Tagged(t) if tag_number(&t.tag) == Some(tag) => break t,
                Response::Tagged(t) => self.finish_other(t)?,
                Response::Untagged(u) => self.route(u, &[], &mut |_, _| Ok(()))?,
                Response::Continue(_) if !sent_ir => {
                    write!(self.out, "{ir}\r\n").expect("writing to a Vec");
                    self.flush(what)?;
                    sent_ir = true;
                }
                Response::Continue(c) if challenge.is_none() => {
                    challenge = Some(backproc_sasl::challenge_status(&c));
                    write!(self.out, "{}\r\n", mech.error_reply()).expect("writing to a Vec");
                    self.flush(what)?;
                }
                Response::Continue(_) => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("{} sent a second SASL challenge to {what}", p.host),
                    ));
                }
            }
        };
        if let (Some(status), Status::Ok) = (&challenge, t.status) {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("{} accepted {what} after refusing the token (status {status})", p.host),
            ));
        }
        let r = self.logged_in(p, t, mech.name());
        match (r, challenge) {
            (Err(mut e), Some(status)) if e.kind == ErrorKind::Auth => {
                e.detail = format!("{} (the server's status: {status})", e.detail);
                Err(e)
            }
            (r, _) => r,
        }
    }

    /// The answer to LOGIN or AUTHENTICATE: the capabilities after an OK, else why not.
    fn logged_in(&mut self, p: &ConnectParams, t: Tagged, how: &str) -> Result<()> {
        if t.status == Status::Ok {
            match &t.code {
                Some(Code::Capability(c)) => self.caps = Caps::from_words(c),
                _ => self.capability()?,
            }
            return Ok(());
        }
        let code = t.code.as_ref().map(|c| c.name().to_owned()).unwrap_or_default();
        Err(if code == "PRIVACYREQUIRED" {
            Error::new(ErrorKind::Tls, format!("{} refuses logins without TLS: {}", p.host, refusal_text(&t)))
        } else if let Some(wait) = throttle_hint(&t.text) {
            Error {
                retry_after: Some(wait),
                ..Error::new(
                    ErrorKind::Throttled,
                    format!("{how} of {} throttled by {}: {}", p.login, p.host, refusal_text(&t)),
                )
            }
        } else if is_busy(&t) {
            Error::new(
                ErrorKind::Busy,
                format!("{how} of {} refused by {} for now: {}", p.login, p.host, refusal_text(&t)),
            )
        } else {
            Error::new(ErrorKind::Auth, format!("{how} of {} refused by {}: {}", p.login, p.host, refusal_text(&t)))
        })
    }

    /// Before a download (bodies, or a big folder's flags): COMPRESS DEFLATE if the
    /// connection was opened wanting it and the server offers it, once a connection; else
    /// nothing.
    pub fn deflate_for_download(&mut self) -> Result<()> {
        match self.send_compress()? {
            Some(tag) => self.finish_compress(tag),
            None => Ok(()),
        }
    }

    /// COMPRESS DEFLATE (RFC 4978) queued behind the commands already sent, if the session
    /// wants it for a download and has not asked it yet: nothing may follow it before its
    /// answer ([`finish_compress`](Self::finish_compress)).
    pub(crate) fn send_compress(&mut self) -> Result<Option<u32>> {
        if !std::mem::take(&mut self.compress_later) {
            return Ok(None);
        }
        self.send_raw(b"COMPRESS DEFLATE", "COMPRESS", Budget::SMALL, None).map(Some)
    }

    /// Reads COMPRESS's answer, after which both directions are deflated. A refusal (e.g.
    /// `[COMPRESSIONACTIVE]`) leaves the session as it was.
    pub(crate) fn finish_compress(&mut self, tag: u32) -> Result<()> {
        let t = self.complete(tag, &mut |_, _| Ok(()))?;
        self.compressed_by(&t)
    }

    /// After COMPRESS's answer: deflate from now on if it was OK.
    fn compressed_by(&mut self, t: &Tagged) -> Result<()> {
        if t.status != Status::Ok {
            log::debug!("{} refused COMPRESS DEFLATE: {}", self.host, refusal_text(t));
            return Ok(());
        }
        // The server deflates from the byte after its OK: a byte already read past it would
        // be read as plain text.
        if self.r.has_buffered() {
            return Err(Error::new(ErrorKind::Protocol, "the server sent data after COMPRESS's answer"));
        }
        self.r.get_mut().start_deflate();
        log::debug!("{}: COMPRESS=DEFLATE on", self.host);
        Ok(())
    }

    /// Whether the connection is deflated (COMPRESS=DEFLATE).
    pub fn compressed(&self) -> bool {
        self.r.get_ref().compressed()
    }

    /// Applies a new task's deadline to this (cached) session.
    pub fn set_deadline(&mut self, d: Option<Deadline>) {
        self.r.get_mut().set_deadline(d);
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes received and sent on this connection.
    pub fn traffic(&self) -> (u64, u64) {
        (self.r.get_ref().bytes_in, self.r.get_ref().bytes_out)
    }

    /// The selected mailbox, if any.
    pub fn selected(&self) -> Option<&Selected> {
        self.selected.as_ref()
    }

    /// An error of reading as a session error: what went wrong, while waiting for what.
    pub(crate) fn fail(&self, what: &str, e: ReadError) -> Error {
        match e {
            ReadError::Io(io) if io.kind() == io::ErrorKind::TimedOut => {
                Error::new(ErrorKind::Timeout, format!("{what}: {io}")).caused_by(io)
            }
            ReadError::Io(io) => {
                Error::new(ErrorKind::Connect, format!("connection to {} lost while reading {what}: {io}", self.host))
                    .caused_by(io)
            }
            ReadError::Limit(m) => {
                Error::new(ErrorKind::Protocol, format!("{what}: the server sent {m}; connection dropped"))
            }
            ReadError::Syntax(m) => Error::new(ErrorKind::Protocol, format!("invalid answer to {what}: {m}")),
        }
    }

    /// The last tag used.
    pub(crate) fn last_tag(&self) -> u32 {
        self.next_tag
    }

    fn tag(&mut self) -> u32 {
        self.next_tag += 1;
        self.next_tag
    }

    /// Queues a command without literals (`line` is written after its tag); it goes out at
    /// the next flush, which every wait does first.
    pub(crate) fn send_raw(
        &mut self,
        line: &[u8],
        what: &'static str,
        b: Budget,
        status_of: Option<Vec<u8>>,
    ) -> Result<u32> {
        let tag = self.tag();
        write!(self.out, "b{tag} ").expect("writing to a Vec");
        self.out.extend_from_slice(line);
        self.out.extend_from_slice(b"\r\n");
        self.pending.push_back(Pending::new(tag, what, status_of, b));
        self.stats.commands += 1;
        Ok(tag)
    }

    /// Queues a built command; a synchronizing literal (no LITERAL+) makes it wait for the
    /// server's go-ahead first, after the answers of every command before it.
    pub(crate) fn send_command(
        &mut self,
        cmd: crate::commands::CommandBuf,
        what: &'static str,
        b: Budget,
    ) -> Result<u32> {
        let tag = self.tag();
        write!(self.out, "b{tag} ").expect("writing to a Vec");
        self.stats.commands += 1;
        let mut parts = cmd.into_parts().into_iter().peekable();
        let mut first = true;
        while let Some(part) = parts.next() {
            if !first {
                // the server's go-ahead for the literal that ended the part before
                self.flush(what)?;
                self.await_continuation(tag, what)?;
            }
            first = false;
            self.out.extend_from_slice(&part);
            if parts.peek().is_none() {
                self.out.extend_from_slice(b"\r\n");
            }
        }
        self.pending.push_back(Pending::new(tag, what, None, b));
        Ok(tag)
    }

    /// Reads until the `+` that lets a synchronizing literal go; earlier commands' answers are
    /// taken as they come. A NO or BAD instead refuses the command.
    pub(crate) fn await_continuation(&mut self, tag: u32, what: &'static str) -> Result<()> {
        loop {
            let resp = read_response(&mut self.r, &self.lim).map_err(|e| self.fail(what, e))?;
            match resp {
                Response::Continue(_) => return Ok(()),
                Response::Tagged(t) if tag_number(&t.tag) == Some(tag) => return Err(refused(what, &t)),
                Response::Tagged(t) => self.finish_other(t)?,
                Response::Untagged(u) => self.route(u, &[], &mut |_, _| Ok(()))?,
            }
        }
    }

    pub(crate) fn flush(&mut self, what: &str) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let t = self.r.get_mut();
        let r = t.write_all(&out).and_then(|_| t.flush());
        self.out = out;
        self.out.clear();
        r.map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut {
                Error::new(ErrorKind::Timeout, format!("sending {what}: {e}")).caused_by(e)
            } else {
                Error::new(ErrorKind::Connect, format!("connection to {} lost while sending {what}: {e}", self.host))
                    .caused_by(e)
            }
        })
    }

    /// Reads responses until the tagged completion of `tag` and returns it (see `complete_all`).
    pub(crate) fn complete(
        &mut self,
        tag: u32,
        on: &mut dyn FnMut(&mut Session, Untagged) -> Result<()>,
    ) -> Result<Tagged> {
        Ok(self.complete_all(&[tag], on)?.remove(0))
    }

    /// Reads responses until every command in `tags` has completed; returns their completions
    /// in that order. A server may run pipelined commands at the same time and interleave
    /// their answers (RFC 3501 §5.5; Dovecot does), so untagged data are never attributed to
    /// "the command being read": `on` gets every untagged response that concerns none of the
    /// session's own state, and must tell them apart by their content. Data for a STATUS asked
    /// ahead or a body FETCH in flight go to them, whoever reads them.
    pub(crate) fn complete_all(
        &mut self,
        tags: &[u32],
        on: &mut dyn FnMut(&mut Session, Untagged) -> Result<()>,
    ) -> Result<Vec<Tagged>> {
        let what = tags.first().and_then(|t| self.pending.iter().find(|p| p.tag == *t)).map_or("a command", |p| p.what);
        self.flush(what)?;
        let mut done: Vec<Option<Tagged>> = tags.iter().map(|t| self.completed.remove(t)).collect();
        while done.iter().any(Option::is_none) {
            let consumed = self.r.consumed();
            // The server may interleave the answers of everything in flight (a big body of a
            // later FETCH while the oldest is still open): the bytes read from the oldest's
            // start are held to what all of them may send together.
            let in_flight = self.pending.iter().fold(0u64, |n, p| n.saturating_add(p.max_bytes));
            let front = self.pending.front_mut().map(|p| {
                let start = *p.started.get_or_insert(consumed);
                (start.saturating_add(in_flight), in_flight, p.what)
            });
            self.r.set_budget(front);
            if let Some((_, _, w)) = front {
                self.r.get_mut().waiting_for = w;
            }
            // An error names the command whose answer was being read (the oldest in flight),
            // not the first one waited for: a connection that closed on the UID FETCH behind
            // an answered EXAMINE was "lost while reading EXAMINE".
            let reading = front.map_or(what, |(_, _, w)| w);
            let resp = read_response(&mut self.r, &self.lim).map_err(|e| self.fail(reading, e))?;
            match resp {
                Response::Tagged(t) => {
                    let n = tag_number(&t.tag);
                    match n.and_then(|n| tags.iter().position(|x| *x == n)) {
                        Some(i) => {
                            self.pending.retain(|p| Some(p.tag) != n);
                            done[i] = Some(t);
                        }
                        None => self.finish_other(t)?,
                    }
                }
                Response::Untagged(u) => {
                    // as with the bytes: counted against everything in flight
                    let most = self.pending.iter().fold(0usize, |n, p| n.saturating_add(p.max_untagged));
                    if let Some(p) = self.pending.front_mut() {
                        p.untagged += 1;
                        if p.untagged > most {
                            return Err(Error::new(
                                ErrorKind::Protocol,
                                format!(
                                    "{}: the server sent more than {most} untagged responses in answer to it; connection dropped",
                                    p.what
                                ),
                            ));
                        }
                    }
                    self.route(u, tags, on)?;
                }
                Response::Continue(_) => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("a continuation request nobody asked for, while reading {what}"),
                    ));
                }
            }
        }
        self.r.set_budget(None);
        Ok(done.into_iter().map(|t| t.expect("every one completed")).collect())
    }

    /// `complete`, and a refusal as an error.
    pub(crate) fn complete_ok(
        &mut self,
        tag: u32,
        what: &str,
        on: &mut dyn FnMut(&mut Session, Untagged) -> Result<()>,
    ) -> Result<Tagged> {
        let t = self.complete(tag, on)?;
        if t.status == Status::Ok { Ok(t) } else { Err(refused(what, &t)) }
    }

    /// The completion of a command other than the one waited for: a STATUS asked ahead (its
    /// answer or refusal is kept for its folder), or ENABLE.
    fn finish_other(&mut self, t: Tagged) -> Result<()> {
        let tag = tag_number(&t.tag);
        let Some(i) = tag.and_then(|n| self.pending.iter().position(|p| p.tag == n)) else {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("a tagged answer to {:?}, a tag never sent", String::from_utf8_lossy(&t.tag)),
            ));
        };
        let p = self.pending.remove(i).expect("found above");
        if let Some(key) = p.status_of {
            if t.status != Status::Ok && throttle_hint(&t.text).is_some() {
                let name = String::from_utf8_lossy(&key).into_owned();
                self.throttled = Some(refused_text(&format!("STATUS of {name:?}"), &refusal_text(&t)));
            }
            let entry = self.status_answers.entry(key).or_insert_with(|| Err(String::new()));
            if t.status != Status::Ok {
                *entry = Err(refusal_text(&t));
            } else if matches!(entry, Err(e) if e.is_empty()) {
                *entry = Err("the server sent no STATUS data for the folder".into());
            }
        } else if p.unawaited {
            if t.status != Status::Ok {
                log::warn!("{} refused by {}: {}", p.what, self.host, refusal_text(&t));
            }
        } else {
            // Someone waits for it: kept until they read it.
            self.completed.insert(p.tag, t);
        }
        Ok(())
    }

    /// Takes what concerns the session itself; hands the rest to `on`.
    fn route(
        &mut self,
        u: Untagged,
        waited: &[u32],
        on: &mut dyn FnMut(&mut Session, Untagged) -> Result<()>,
    ) -> Result<()> {
        match u {
            Untagged::Fetch(f) if f.body.is_some() && f.uid.is_some() => {
                // A body belongs to the FETCH that asked for its UID: kept for it when that is
                // not one of the commands being read now.
                let uid = f.uid.unwrap_or(0);
                let owner = self
                    .pending
                    .iter()
                    .find(|p| p.fetch_of.as_ref().is_some_and(|s| s.contains(&uid)) && !self.seen_for(p.tag, uid))
                    .map(|p| p.tag);
                match owner {
                    Some(t) if !waited.contains(&t) => self.fetched_early.entry(t).or_default().push(*f),
                    _ => on(self, Untagged::Fetch(f))?,
                }
            }
            Untagged::Capability(c) => self.caps = Caps::from_words(&c),
            Untagged::Enabled(e) => self.enabled.extend(e.into_iter().map(|w| w.to_ascii_uppercase())),
            Untagged::MailboxStatus(st) => {
                let key = status_key(&st.name);
                let asked = self.pending.iter().any(|p| p.status_of.as_ref() == Some(&key));
                if let Some(entry) = self.status_answers.get_mut(&key).filter(|_| asked) {
                    *entry = match (st.uidvalidity, st.uidnext, st.messages) {
                        (Some(v), n, Some(m)) => Ok(ServerStatus {
                            uidvalidity: v,
                            uidnext: n.unwrap_or(0),
                            highest_modseq: st.highest_modseq,
                            exists: m,
                        }),
                        _ => Err(format!(
                            "the server's STATUS answer for {:?} lacks MESSAGES or UIDVALIDITY",
                            String::from_utf8_lossy(&st.name)
                        )),
                    };
                } else if let Some(v) = &mut self.unsolicited_status {
                    v.push(st);
                } else {
                    log::debug!(
                        "a STATUS answer for {:?}, which was not asked: ignored",
                        String::from_utf8_lossy(&st.name)
                    );
                }
            }
            Untagged::Malformed(Malformed { kind, mailbox: Some(m), error }) if kind == "STATUS" => {
                let key = status_key(&m);
                if let Some(entry) = self.status_answers.get_mut(&key) {
                    *entry = Err(format!("invalid STATUS answer for {:?}: {error}", String::from_utf8_lossy(&m)));
                }
            }
            Untagged::Status(t) if t.status == Status::Bye => {
                let kind = if is_busy(&t) { ErrorKind::Busy } else { ErrorKind::Connect };
                return Err(Error::new(kind, format!("{} closed the connection: {}", self.host, refusal_text(&t))));
            }
            Untagged::Status(ref t) if matches!(&t.code, Some(Code::Other(n, _)) if n == "ALERT") => {
                log::warn!("alert from {}: {}", self.host, shorten(&t.text, 300));
                on(self, u)?;
            }
            Untagged::Exists(n) => {
                if let Some(s) = self.selected.as_mut() {
                    s.exists = n;
                }
                on(self, u)?;
            }
            Untagged::Expunge(_) => {
                if let Some(s) = self.selected.as_mut() {
                    s.exists = s.exists.saturating_sub(1);
                }
                on(self, u)?;
            }
            Untagged::Vanished { earlier: false, ref uids } => {
                if let Some(s) = self.selected.as_mut() {
                    s.exists = s.exists.saturating_sub(uids.len().min(u64::from(u32::MAX)) as u32);
                }
                on(self, u)?;
            }
            Untagged::Other(name) => log::debug!("ignored an untagged {name} response"),
            other => on(self, other)?,
        }
        Ok(())
    }

    /// Whether a body for `uid` is already kept early for `tag` (a second one is the server
    /// repeating itself, not the answer to another FETCH).
    fn seen_for(&self, tag: u32, uid: u32) -> bool {
        self.fetched_early.get(&tag).is_some_and(|v| v.iter().any(|f| f.uid == Some(uid)))
    }

    /// Says LOGOUT and closes without waiting for the answer: the BYE and OK would tell
    /// nothing we need, and waiting for them costs a round trip at the end of every run.
    /// The throttling answer a STATUS asked ahead got, once: whoever holds the session then
    /// fails its task with it, so the account waits as the server asked even when the folder
    /// whose STATUS it was is synced on another connection.
    pub fn take_throttle(&mut self) -> Option<Error> {
        self.throttled.take()
    }

    pub fn logout(mut self) {
        let tag = self.tag();
        let _ = write!(self.out, "b{tag} LOGOUT\r\n");
        let _ = self.flush("LOGOUT");
    }

    /// Says LOGOUT and waits, at most `within`, until the server has closed the connection
    /// (RFC 3501 §6.1.3: BYE, the OK, then the close); what it sends meanwhile is dropped.
    /// For a connection whose place goes to the next one to the same server: a server counts
    /// a connection until it has closed it (Dovecot's process per connection, Gmail's
    /// connections per account), so without the wait the next login can be refused as one
    /// too many, or meet a process limit, though we hold no more than before.
    pub fn logout_and_wait(mut self, within: Duration) {
        let tag = self.tag();
        let _ = write!(self.out, "b{tag} LOGOUT\r\n");
        if self.flush("LOGOUT").is_err() {
            return;
        }
        // A deadline of its own, never renewed (no rate reaches u64::MAX bytes a second).
        let t = self.r.get_mut();
        t.set_deadline(Some(Deadline::new(within, u64::MAX)));
        let mut buf = [0u8; 4096];
        while let Ok(1..) = io::Read::read(t, &mut buf) {}
    }
}

/// Our tags are `b` and a number.
fn tag_number(tag: &[u8]) -> Option<u32> {
    std::str::from_utf8(tag).ok()?.strip_prefix('b')?.parse().ok()
}

fn brief(r: &Response) -> String {
    shorten(&format!("{r:?}"), 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no(code: Option<Code>, text: &str) -> Tagged {
        Tagged { tag: b"b7".to_vec(), status: Status::No, code, text: text.into() }
    }

    #[test]
    fn a_busy_code_on_a_command_refuses_only_that_command() {
        let t = no(Some(Code::Other("UNAVAILABLE".into(), String::new())), "Mailbox cannot be opened right now.");
        let e = refused("SELECT \"INBOX\"", &t);
        assert_eq!(e.kind, ErrorKind::Refused);
        assert!(e.session_usable());
        assert_eq!(e.detail, "SELECT \"INBOX\" refused: NO [UNAVAILABLE] Mailbox cannot be opened right now.");
        let t = no(None, "Request is throttled. Suggested Backoff Time: 1500 milliseconds");
        let e = refused("UID FETCH", &t);
        assert_eq!((e.kind, e.retry_after), (ErrorKind::Throttled, Some(Duration::from_millis(1500))));
    }

    #[test]
    fn a_refusal_kept_as_text_is_still_a_throttle() {
        let t = no(None, "Request is throttled. Suggested Backoff Time: 1500 milliseconds");
        let e = refused_text("STATUS of \"INBOX\"", &refusal_text(&t));
        assert_eq!((e.kind, e.retry_after), (ErrorKind::Throttled, Some(Duration::from_millis(1500))));
        assert_eq!(e.detail, refused("STATUS of \"INBOX\"", &t).detail);
        let t = no(Some(Code::Other("UNAVAILABLE".into(), String::new())), "Mailbox cannot be opened right now.");
        let e = refused_text("STATUS of \"INBOX\"", &refusal_text(&t));
        assert_eq!((e.kind, e.retry_after), (ErrorKind::Refused, None));
    }
}
