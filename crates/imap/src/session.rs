//! An IMAP session to one account: connect (TLS, STARTTLS or plain), log in, and the few
//! commands the jobs need, with errors classified for back-off and history.
//!
//! Invariant: passwords never reach an error message or a log line (the imap crate's debug
//! output, which echoes LOGIN, is never enabled).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imap_proto::types::NameAttribute;

use crate::mutf7;
use crate::plan::{Flags, NewMsg, ServerStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Ssl,
    StartTls,
    None,
}

/// How to reach and log in to a server. `Debug` hides the password.
#[derive(Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub login: String,
    pub password: String,
    /// Extra trusted CA certificate, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// Skip certificate verification (explicit per-account opt-out).
    pub insecure: bool,
    pub timeout: Duration,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{} {:?}", self.login, self.host, self.port, self.security)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Login refused.
    Auth,
    /// Cannot reach the server, or the connection dropped.
    Connect,
    /// TLS handshake or certificate.
    Tls,
    /// NO/BAD or an unparsable response.
    Protocol,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct Error {
    pub kind: ErrorKind,
    pub detail: String,
}

impl Error {
    fn new(kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error { kind, detail: detail.into() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn classify(what: &str, e: imap::Error) -> Error {
    use imap::Error as E;
    let kind = match &e {
        E::Io(_) | E::ConnectionLost | E::Bye(_) => ErrorKind::Connect,
        _ => ErrorKind::Protocol,
    };
    Error::new(kind, format!("{what}: {e}"))
}

/// The transport under the IMAP client.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<native_tls::TlsStream<TcpStream>>),
}

/// A shared handle on the transport: the imap crate owns one, the session keeps another
/// for the streaming FETCH reader (`crate::fetch`), used only between two imap commands.
#[derive(Clone)]
pub struct Conn(Arc<Mutex<Transport>>);

impl Conn {
    fn new(t: Transport) -> Conn {
        Conn(Arc::new(Mutex::new(t)))
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Transport> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut *self.lock() {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }
}
impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.lock() {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.lock() {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

/// A folder as LIST shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFolder {
    /// Verbatim (modified UTF-7): what commands must use.
    pub name: String,
    /// Decoded for people.
    pub display_name: String,
    pub delimiter: Option<String>,
    /// inbox|sent|drafts|trash|junk|archive|all|flagged
    pub special_use: Option<&'static str>,
    pub selectable: bool,
}

/// A downloaded message.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub uid: u32,
    pub flags: Flags,
    pub internal_date: Option<i64>,
    pub raw: Vec<u8>,
}

/// What the server supports, read once after login.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caps {
    pub condstore: bool,
    pub uidplus: bool,
    pub mv: bool,
    pub special_use: bool,
}

pub struct Session {
    inner: imap::Session<Conn>,
    raw: Conn,
    raw_tag: u32,
    /// Bytes of a pipelined FETCH answer read past the previous one (`fetch_bodies_read`).
    carry: Vec<u8>,
    pub caps: Caps,
    selected: Option<(String, bool)>,
    /// STATUS answers asked ahead for other folders (`status_ahead`), and when.
    ahead: HashMap<String, (ServerStatus, Instant)>,
    /// STATUS commands sent ahead whose answers are still on the wire (tags, names, when):
    /// `settle` reads them before anything else is sent or read.
    pending: Option<(Vec<String>, Vec<String>, Instant)>,
}

/// How long a STATUS answer asked ahead stands in for the folder's own STATUS: the folders
/// of one account due together are synced one after the other within this time; a later sync
/// asks again.
const AHEAD_FOR: Duration = Duration::from_secs(2);

fn tls_connector(p: &ConnectParams) -> Result<native_tls::TlsConnector> {
    let mut b = native_tls::TlsConnector::builder();
    if let Some(pem) = &p.ca_pem {
        let cert = native_tls::Certificate::from_pem(pem)
            .map_err(|e| Error::new(ErrorKind::Tls, format!("cannot read the account's CA certificate: {e}")))?;
        b.add_root_certificate(cert);
    }
    if p.insecure {
        b.danger_accept_invalid_certs(true).danger_accept_invalid_hostnames(true);
    }
    b.build().map_err(|e| Error::new(ErrorKind::Tls, format!("cannot set up TLS: {e}")))
}

fn tcp(p: &ConnectParams) -> Result<TcpStream> {
    let addrs = (p.host.as_str(), p.port)
        .to_socket_addrs()
        .map_err(|e| Error::new(ErrorKind::Connect, format!("cannot resolve {}: {e}", p.host)))?;
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, p.timeout) {
            Ok(s) => {
                let _ = s.set_read_timeout(Some(p.timeout));
                let _ = s.set_write_timeout(Some(p.timeout));
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::new(
        ErrorKind::Connect,
        format!(
            "cannot connect to {}:{}: {}",
            p.host,
            p.port,
            last.map(|e| e.to_string()).unwrap_or_else(|| "no address".into())
        ),
    ))
}

fn tls_wrap(p: &ConnectParams, s: TcpStream) -> Result<Conn> {
    let c = tls_connector(p)?;
    c.connect(&p.host, s)
        .map(|t| Conn::new(Transport::Tls(Box::new(t))))
        .map_err(|e| Error::new(ErrorKind::Tls, format!("TLS handshake with {}:{} failed: {e}", p.host, p.port)))
}

/// The plain-text prelude of STARTTLS (RFC 3501 §6.2.1), done by hand because the imap
/// crate cannot upgrade a connection with our own TLS settings. STARTTLS is required when
/// chosen: a server (or a proxy) that does not offer it is an error, never a fall-back to
/// plain text. Lines are read a byte at a time so nothing after the OK is consumed.
fn starttls(p: &ConnectParams, mut s: TcpStream) -> Result<Conn> {
    fn line(s: &mut TcpStream) -> Result<String> {
        let mut v = Vec::new();
        let mut b = [0u8; 1];
        while v.len() < 64 * 1024 {
            match s.read(&mut b) {
                Ok(0) => {
                    return Err(Error::new(ErrorKind::Connect, "connection closed before STARTTLS"));
                }
                Ok(_) => {
                    v.push(b[0]);
                    if b[0] == b'\n' {
                        return Ok(String::from_utf8_lossy(&v).into_owned());
                    }
                }
                Err(e) => {
                    return Err(Error::new(ErrorKind::Connect, format!("reading before STARTTLS: {e}")));
                }
            }
        }
        Err(Error::new(ErrorKind::Protocol, "line too long before STARTTLS"))
    }
    fn until_tagged(s: &mut TcpStream, tag: &str) -> Result<(Vec<String>, String)> {
        let mut untagged = Vec::new();
        loop {
            let l = line(s)?;
            if let Some(rest) = l.strip_prefix(tag) {
                return Ok((untagged, rest.trim().to_owned()));
            }
            untagged.push(l);
        }
    }
    let greeting = line(&mut s)?;
    if !greeting.starts_with("* OK") {
        return Err(Error::new(ErrorKind::Protocol, format!("unexpected greeting: {}", greeting.trim())));
    }
    let io = |e: io::Error| Error::new(ErrorKind::Connect, format!("writing before STARTTLS: {e}"));
    s.write_all(b"s0 CAPABILITY\r\n").map_err(io)?;
    let (caps, _) = until_tagged(&mut s, "s0 ")?;
    let offered = caps.iter().chain(std::iter::once(&greeting)).any(|l| {
        l.to_ascii_uppercase().split(|c: char| c == ' ' || c == ']' || c == '[').any(|w| w.trim() == "STARTTLS")
    });
    if !offered {
        return Err(Error::new(
            ErrorKind::Tls,
            format!("{} does not offer STARTTLS; refusing to log in without TLS", p.host),
        ));
    }
    s.write_all(b"s1 STARTTLS\r\n").map_err(io)?;
    let (_, status) = until_tagged(&mut s, "s1 ")?;
    if !status.to_ascii_uppercase().starts_with("OK") {
        return Err(Error::new(ErrorKind::Tls, format!("STARTTLS refused: {status}")));
    }
    tls_wrap(p, s)
}

impl Session {
    pub fn connect(p: &ConnectParams) -> Result<Session> {
        let stream = tcp(p)?;
        let conn = match p.security {
            Security::Ssl => tls_wrap(p, stream)?,
            Security::None => Conn::new(Transport::Plain(stream)),
            Security::StartTls => starttls(p, stream)?,
        };
        let raw = conn.clone();
        let mut client = imap::Client::new(conn);
        // After STARTTLS there is no new greeting (RFC 3501 §6.2.1).
        if p.security != Security::StartTls {
            client.read_greeting().map_err(|e| classify("greeting", e))?;
        }
        let mut inner = client.login(&p.login, &p.password).map_err(|(e, _)| match e {
            imap::Error::No(_) | imap::Error::Bad(_) => {
                // RFC 5530: UNAVAILABLE / LIMIT (e.g. "too many simultaneous connections") is
                // the server's state, not a wrong password: back off, do not wait
                // EMAIL_AUTH_ERROR_CHECK_RETRY_TIME.
                let text = e.to_string();
                let upper = text.to_ascii_uppercase();
                if ["UNAVAILABLE", "LIMIT", "TOO MANY", "INUSE"].iter().any(|k| upper.contains(k)) {
                    Error::new(
                        ErrorKind::Connect,
                        format!("login of {} refused by {} for now: {text}", p.login, p.host),
                    )
                } else {
                    Error::new(ErrorKind::Auth, format!("login of {} refused by {}", p.login, p.host))
                }
            }
            other => classify("login", other),
        })?;
        let c = inner.capabilities().map_err(|e| classify("CAPABILITY", e))?;
        let caps = Caps {
            condstore: c.has_str("CONDSTORE"),
            uidplus: c.has_str("UIDPLUS"),
            mv: c.has_str("MOVE"),
            special_use: c.has_str("SPECIAL-USE"),
        };
        drop(c);
        if caps.condstore {
            // RFC 7162 §3.1: enabling CONDSTORE makes SELECT/EXAMINE/STATUS report MODSEQs.
            inner.run_command_and_check_ok("ENABLE CONDSTORE").map_err(|e| classify("ENABLE", e))?;
        }
        Ok(Session {
            inner,
            raw,
            raw_tag: 0,
            carry: Vec::new(),
            caps,
            selected: None,
            ahead: HashMap::new(),
            pending: None,
        })
    }

    /// Every folder, with special use from SPECIAL-USE attributes or well-known names.
    pub fn list_folders(&mut self) -> Result<Vec<ListedFolder>> {
        self.settle()?;
        let names = self.inner.list(Some(""), Some("*")).map_err(|e| classify("LIST", e))?;
        let mut out = Vec::new();
        for n in names.iter() {
            // imap-proto hands a quoted name back with its escapes; the imap crate escapes it
            // again when quoting it in a command, so keep the name itself.
            let raw = unescape_quoted(n.name());
            let display = mutf7::display(&raw);
            let mut special = None;
            let mut selectable = true;
            for a in n.attributes() {
                match a {
                    NameAttribute::NoSelect => selectable = false,
                    NameAttribute::All => special = Some("all"),
                    NameAttribute::Archive => special = Some("archive"),
                    NameAttribute::Drafts => special = Some("drafts"),
                    NameAttribute::Flagged => special = Some("flagged"),
                    NameAttribute::Junk => special = Some("junk"),
                    NameAttribute::Sent => special = Some("sent"),
                    NameAttribute::Trash => special = Some("trash"),
                    NameAttribute::Extension(e) if e.eq_ignore_ascii_case("\\NonExistent") => selectable = false,
                    _ => {}
                }
            }
            if crate::is_inbox(raw.as_bytes()) {
                special = Some("inbox");
            }
            let leaf = n.delimiter().and_then(|d| display.rsplit(d).next()).unwrap_or(&display);
            out.push(ListedFolder {
                special_use: special.or_else(|| special_by_name(leaf)),
                name: raw,
                display_name: display,
                delimiter: n.delimiter().map(unescape_quoted),
                selectable,
            });
        }
        Ok(out)
    }

    fn status_items(&self) -> &'static str {
        if self.caps.condstore {
            "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)"
        } else {
            "(MESSAGES UIDNEXT UIDVALIDITY)"
        }
    }

    /// STATUS of `names` in one write (`crate::status`); each answer stands in for that
    /// folder's own `status` for a short while ([`AHEAD_FOR`]). A refused folder keeps no
    /// answer: its own STATUS reports the refusal.
    ///
    /// `later` (the slow folders, e.g. the biggest) are asked in a second write once the
    /// answers to `names` are in, and their answers are read only when needed: Dovecot holds
    /// back the answers of one write until its last command is done, so a slow folder in the
    /// first write would delay every answer, while on its own it is worked out by the server
    /// as we sync the other folders.
    pub fn status_ahead(&mut self, names: &[&str], later: &[&str]) -> Result<()> {
        self.settle()?;
        let quotable = |v: &[&str]| -> Vec<String> {
            v.iter().filter(|n| crate::status::quoted(n).is_some()).map(|n| (*n).to_owned()).collect()
        };
        let (names, later) = (quotable(names), quotable(later));
        if !names.is_empty() {
            let tags = self.tags(names.len());
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let items = self.status_items();
            crate::status::send_status(&mut self.raw, &tags, &refs, items).map_err(status_error)?;
            self.pending = Some((tags, names, Instant::now()));
            self.settle()?;
        }
        if !later.is_empty() {
            let tags = self.tags(later.len());
            let refs: Vec<&str> = later.iter().map(String::as_str).collect();
            let items = self.status_items();
            crate::status::send_status(&mut self.raw, &tags, &refs, items).map_err(status_error)?;
            self.pending = Some((tags, later, Instant::now()));
        }
        Ok(())
    }

    /// Reads the answers to STATUS commands sent ahead, if any are still on the wire: called
    /// first by everything that sends or reads, so the imap crate never sees them.
    fn settle(&mut self) -> Result<()> {
        let Some((tags, names, sent)) = self.pending.take() else { return Ok(()) };
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let answers = crate::status::read_status(&mut self.raw, &tags, &refs).map_err(status_error)?;
        for (name, answer) in names.into_iter().zip(answers) {
            if let Ok(s) = answer {
                self.ahead.insert(name, (s, sent));
            }
        }
        Ok(())
    }

    /// Whether `status(name)` would be answered from a STATUS asked ahead.
    pub fn has_status_ahead(&self, name: &str) -> bool {
        self.ahead.get(name).is_some_and(|(_, at)| at.elapsed() < AHEAD_FOR)
            || self
                .pending
                .as_ref()
                .is_some_and(|(_, names, at)| at.elapsed() < AHEAD_FOR && names.iter().any(|n| n == name))
    }

    fn tags(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                self.raw_tag += 1;
                format!("r{}", self.raw_tag)
            })
            .collect()
    }

    fn raw_status(&mut self, names: &[&str]) -> Result<Vec<crate::status::Answer>> {
        let tags = self.tags(names.len());
        let items = self.status_items();
        crate::status::status_many(&mut self.raw, &tags, names, items).map_err(status_error)
    }

    /// STATUS: one round trip, no SELECT: what a no-change resync needs to see. Answered from
    /// `status_ahead` when that asked for this folder a moment ago.
    pub fn status(&mut self, name: &str) -> Result<ServerStatus> {
        // Answers still on the wire are read only when one of them is wanted (or before the
        // next command): the other folders' work goes on meanwhile.
        if !self.ahead.contains_key(name) {
            self.settle()?;
        }
        if let Some((s, at)) = self.ahead.remove(name)
            && at.elapsed() < AHEAD_FOR
        {
            return Ok(s);
        }
        self.settle()?;
        if crate::status::quoted(name).is_some() {
            let answer = self.raw_status(&[name])?.remove(0);
            return answer.map_err(|text| Error::new(ErrorKind::Protocol, format!("STATUS: {text}")));
        }
        // A name that cannot be sent quoted (CR, LF, 8-bit: never in a modified UTF-7 name)
        // goes through the imap crate; when it finds no answer under the name as written,
        // EXAMINE tells the same, at the cost of selecting the folder.
        let items = self.status_items();
        let mb = match self.inner.status(name, items) {
            Ok(mb) => mb,
            Err(imap::Error::MissingStatusResponse) => return self.open(name, false),
            Err(e) => return Err(classify("STATUS", e)),
        };
        Ok(ServerStatus {
            uidvalidity: mb.uid_validity.unwrap_or(0),
            uidnext: mb.uid_next.unwrap_or(0),
            highest_modseq: mb.highest_mod_seq,
            exists: mb.exists,
        })
    }

    /// EXAMINE (read-only) unless already selected; `write` needs SELECT.
    pub fn open(&mut self, name: &str, write: bool) -> Result<ServerStatus> {
        self.settle()?;
        let mb = if write {
            self.inner.select(name).map_err(|e| classify("SELECT", e))?
        } else {
            self.inner.examine(name).map_err(|e| classify("EXAMINE", e))?
        };
        self.selected = Some((name.to_owned(), write));
        Ok(ServerStatus {
            uidvalidity: mb.uid_validity.unwrap_or(0),
            uidnext: mb.uid_next.unwrap_or(0),
            highest_modseq: mb.highest_mod_seq,
            exists: mb.exists,
        })
    }

    /// Ensures `name` is selected (read-only is enough unless `write`).
    pub fn ensure_open(&mut self, name: &str, write: bool) -> Result<()> {
        match &self.selected {
            Some((n, w)) if n == name && (*w || !write) => Ok(()),
            _ => self.open(name, write).map(|_| ()),
        }
    }

    /// UIDs above `last` with their sizes (the selected folder).
    pub fn new_messages(&mut self, last: u32) -> Result<Vec<NewMsg>> {
        self.settle()?;
        self.raw_tag += 1;
        let tag = format!("r{}", self.raw_tag);
        let sizes = crate::fetch::uid_fetch_sizes(&mut self.raw, &tag, &format!("{}:*", last + 1))
            .map_err(|e| raw_error("UID FETCH", e))?;
        // `N:*` also answers with the highest UID when nothing is above `last` (RFC 3501 §6.4.8)
        Ok(sizes.into_iter().filter(|(uid, _)| *uid > last).map(|(uid, size)| NewMsg { uid, size }).collect())
    }

    /// Flags of messages up to `last` (only those changed since `changed_since` with
    /// CONDSTORE), and the set of UIDs present up to `last`.
    pub fn flags_and_present(
        &mut self,
        last: u32,
        changed_since: Option<u64>,
    ) -> Result<(BTreeMap<u32, Flags>, BTreeSet<u32>)> {
        let flags = self.changed_flags(last, changed_since)?;
        let present: BTreeSet<u32> = if changed_since.is_some() && self.caps.condstore {
            self.present_uids(last)?
        } else {
            flags.keys().copied().collect()
        };
        Ok((flags, present))
    }

    /// Flags of messages up to `last`: only those changed since `changed_since` with
    /// CONDSTORE (RFC 7162 §3.1.4), all of them otherwise.
    pub fn changed_flags(&mut self, last: u32, changed_since: Option<u64>) -> Result<BTreeMap<u32, Flags>> {
        self.settle()?;
        if last == 0 {
            return Ok(BTreeMap::new());
        }
        let query = match changed_since {
            Some(m) if self.caps.condstore => format!("(UID FLAGS) (CHANGEDSINCE {m})"),
            _ => "(UID FLAGS)".to_owned(),
        };
        let f = self.inner.uid_fetch(format!("1:{last}"), &query).map_err(|e| classify("UID FETCH", e))?;
        let mut flags = BTreeMap::new();
        for m in f.iter() {
            if let Some(uid) = m.uid.filter(|u| *u <= last) {
                flags.insert(uid, convert_flags(m.flags()));
            }
        }
        Ok(flags)
    }

    /// Sends the UID FETCH of `uids` (bodies, without setting \Seen) without reading its
    /// answer (None when `uids` is empty), so that the server works on the next batch while
    /// we read this one: the answers are then read in order with `fetch_bodies_read`, and
    /// UIDs the server no longer has are simply absent. If a read fails, the session must be
    /// discarded (answers still in flight cannot be matched to anything any more).
    pub fn fetch_bodies_send(&mut self, uids: &[u32]) -> Result<Option<String>> {
        self.settle()?;
        if uids.is_empty() {
            return Ok(None);
        }
        self.raw_tag += 1;
        let tag = format!("r{}", self.raw_tag);
        crate::fetch::send_uid_fetch(&mut self.raw, &tag, &uid_set(uids))
            .map_err(|e| Error::new(ErrorKind::Connect, format!("UID FETCH: {e}")))?;
        Ok(Some(tag))
    }

    /// Reads the answer to the FETCH sent as `tag`; `more` when another FETCH was sent after
    /// it (its first bytes may already have arrived and are kept for it).
    pub fn fetch_bodies_read(
        &mut self,
        tag: &str,
        max_size: usize,
        more: bool,
        mut each: impl FnMut(Fetched),
    ) -> Result<()> {
        let fetch_error = |e| raw_error("UID FETCH", e);
        crate::fetch::read_uid_fetch(&mut self.raw, &mut self.carry, tag, max_size, |b| {
            each(Fetched { uid: b.uid, flags: b.flags, internal_date: b.internal_date, raw: b.raw })
        })
        .map_err(fetch_error)?;
        if !more && !self.carry.is_empty() {
            // The imap crate reads next: bytes we hold would be lost to it.
            return Err(fetch_error(crate::fetch::FetchError::Invalid(
                "unexpected data after the FETCH completion".into(),
            )));
        }
        Ok(())
    }

    /// (uid, size, header block) of `uids`: enough to recognise a message by Message-ID.
    pub fn fetch_headers(&mut self, uids: &[u32]) -> Result<Vec<(u32, u32, Vec<u8>)>> {
        self.settle()?;
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let f = self
            .inner
            .uid_fetch(uid_set(uids), "(UID RFC822.SIZE RFC822.HEADER)")
            .map_err(|e| classify("UID FETCH", e))?;
        Ok(f.iter()
            .filter_map(|m| Some((m.uid?, m.size.unwrap_or(0), m.header().unwrap_or_default().to_vec())))
            .collect())
    }

    /// Sets the system flags of `uid` exactly to `flags` (the selected folder, SELECTed).
    /// With CONDSTORE and `unchanged_since`, the server refuses if it changed meanwhile
    /// (RFC 7162 §3.2): returns false then, so a concurrent change is not overwritten.
    pub fn store_flags(&mut self, uid: u32, flags: Flags, unchanged_since: Option<u64>) -> Result<bool> {
        self.settle()?;
        // What we change on the server makes the STATUS answers asked ahead stale.
        self.ahead.clear();
        let cmd = match unchanged_since {
            Some(m) if self.caps.condstore => {
                format!("UID STORE {uid} (UNCHANGEDSINCE {m}) FLAGS.SILENT {}", flags.to_imap())
            }
            _ => format!("UID STORE {uid} FLAGS.SILENT {}", flags.to_imap()),
        };
        let resp = self.inner.run(&cmd).map_err(|e| classify("UID STORE", e))?;
        // A refused conditional store answers `OK [MODIFIED uid]`.
        Ok(!String::from_utf8_lossy(&resp.0).contains("[MODIFIED"))
    }

    /// Every UID up to `last` that the selected folder has.
    pub fn present_uids(&mut self, last: u32) -> Result<BTreeSet<u32>> {
        self.settle()?;
        if last == 0 {
            return Ok(BTreeSet::new());
        }
        Ok(self
            .inner
            .uid_search(format!("UID 1:{last}"))
            .map_err(|e| classify("UID SEARCH", e))?
            .into_iter()
            .filter(|u| *u <= last)
            .collect())
    }

    /// Moves `uids` of the selected (read-write) folder to `dest`: UID MOVE (RFC 6851), or
    /// COPY then delete when the server lacks MOVE.
    pub fn move_uids(&mut self, uids: &[u32], dest: &str) -> Result<()> {
        self.settle()?;
        // What we change on the server makes the STATUS answers asked ahead stale.
        self.ahead.clear();
        if uids.is_empty() {
            return Ok(());
        }
        let set = uid_set(uids);
        if self.caps.mv {
            return self.inner.uid_mv(&set, dest).map_err(|e| classify("UID MOVE", e));
        }
        self.inner.uid_copy(&set, dest).map_err(|e| classify("UID COPY", e))?;
        self.delete_uids(uids).map(|_| ())
    }

    /// Deletes `uids` of the selected (read-write) folder: \Deleted, then UID EXPUNGE of
    /// exactly these (RFC 4315). Without UIDPLUS a plain EXPUNGE would also remove messages
    /// another client flagged \Deleted, so it is used only when no other message is flagged;
    /// otherwise ours stay flagged and `false` is returned.
    pub fn delete_uids(&mut self, uids: &[u32]) -> Result<bool> {
        self.settle()?;
        // What we change on the server makes the STATUS answers asked ahead stale.
        self.ahead.clear();
        if uids.is_empty() {
            return Ok(true);
        }
        let set = uid_set(uids);
        self.inner.uid_store(&set, "+FLAGS.SILENT (\\Deleted)").map_err(|e| classify("UID STORE", e))?;
        if self.caps.uidplus {
            self.inner.uid_expunge(&set).map_err(|e| classify("UID EXPUNGE", e))?;
            return Ok(true);
        }
        let flagged = self.inner.uid_search("DELETED").map_err(|e| classify("UID SEARCH", e))?;
        let ours: BTreeSet<u32> = uids.iter().copied().collect();
        if flagged.iter().all(|u| ours.contains(u)) {
            self.inner.expunge().map_err(|e| classify("EXPUNGE", e))?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// APPEND a message with \Seen (e.g. to the Sent folder).
    pub fn append_seen(&mut self, folder: &str, raw: &[u8]) -> Result<()> {
        self.settle()?;
        // What we change on the server makes the STATUS answers asked ahead stale.
        self.ahead.clear();
        self.selected = None;
        self.inner
            .append(folder, raw)
            .flag(imap::types::Flag::Seen)
            .finish()
            .map(|_| ())
            .map_err(|e| classify("APPEND", e))
    }

    /// Says LOGOUT and closes without waiting for the answer: no command is pending, the
    /// BYE and OK would tell nothing we need, and waiting for them costs a round trip at
    /// the end of every `run --once`.
    pub fn logout(mut self) {
        self.raw_tag += 1;
        let _ = self.raw.write_all(format!("r{} LOGOUT\r\n", self.raw_tag).as_bytes()).and_then(|_| self.raw.flush());
    }

    pub fn noop(&mut self) -> Result<()> {
        self.settle()?;
        self.inner.noop().map_err(|e| classify("NOOP", e))
    }
}

/// An error of our own response readers (`fetch`, `status`) as a session error: a lost
/// connection is a connection problem, anything else the server's.
fn raw_error(what: &str, e: crate::fetch::FetchError) -> Error {
    let kind = match e {
        crate::fetch::FetchError::Io(_) => ErrorKind::Connect,
        _ => ErrorKind::Protocol,
    };
    Error::new(kind, format!("{what}: {e}"))
}

fn status_error(e: crate::fetch::FetchError) -> Error {
    raw_error("STATUS", e)
}

fn convert_flags(flags: &[imap::types::Flag<'_>]) -> Flags {
    use imap::types::Flag;
    let mut f = Flags::default();
    for fl in flags {
        match fl {
            Flag::Seen => f.seen = true,
            Flag::Answered => f.answered = true,
            Flag::Flagged => f.flagged = true,
            Flag::Draft => f.draft = true,
            Flag::Deleted => f.deleted = true,
            _ => {}
        }
    }
    f
}

/// Compresses sorted UIDs to an IMAP set: 1:5,7,9:12.
pub fn uid_set(uids: &[u32]) -> String {
    let mut v: Vec<u32> = uids.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// Special use from well-known (and localized) names, for servers without SPECIAL-USE.
pub fn special_by_name(leaf: &str) -> Option<&'static str> {
    let l = leaf.to_lowercase();
    let table: &[(&str, &[&str])] = &[
        (
            "sent",
            &[
                "sent",
                "sent items",
                "sent messages",
                "sent mail",
                "gesendet",
                "gesendete objekte",
                "envoyés",
                "éléments envoyés",
                "wysłane",
                "отправленные",
                "enviados",
                "itens enviados",
                "inviata",
                "posta inviata",
            ],
        ),
        (
            "drafts",
            &[
                "drafts",
                "draft",
                "entwürfe",
                "brouillons",
                "kopie robocze",
                "черновики",
                "rascunhos",
                "borradores",
                "bozze",
            ],
        ),
        (
            "trash",
            &[
                "trash",
                "deleted items",
                "deleted messages",
                "papierkorb",
                "corbeille",
                "kosz",
                "удаленные",
                "корзина",
                "lixeira",
                "lixo",
                "papelera",
                "cestino",
            ],
        ),
        (
            "junk",
            &[
                "junk",
                "spam",
                "junk e-mail",
                "bulk mail",
                "спам",
                "lixo eletrônico",
                "correo no deseado",
                "wiadomości-śmieci",
            ],
        ),
        ("archive", &["archive", "archives", "archiv", "archiwum", "архив", "arquivo"]),
    ];
    table.iter().find(|(_, names)| names.contains(&l.as_str())).map(|(k, _)| *k)
}

/// Undoes RFC 3501 quoted-string escapes (`\\` and `\"`).
fn unescape_quoted(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some(n @ ('\\' | '"'))) => {
                out.push(n);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets() {
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[3, 1, 2, 7, 9, 10, 11]), "1:3,7,9:11");
        assert_eq!(uid_set(&[4, 4, 5]), "4:5");
    }

    #[test]
    fn localized_special_names() {
        assert_eq!(special_by_name("Sent Items"), Some("sent"));
        assert_eq!(special_by_name("Отправленные"), Some("sent"));
        assert_eq!(special_by_name("Kosz"), Some("trash"));
        assert_eq!(special_by_name("Entwürfe"), Some("drafts"));
        assert_eq!(special_by_name("Projects"), None);
    }

    #[test]
    fn quoted_names_lose_their_escapes() {
        assert_eq!(super::unescape_quoted(r#"it's \"quoted\""#), r#"it's "quoted""#);
        assert_eq!(super::unescape_quoted(r"a\\b"), r"a\b");
        assert_eq!(super::unescape_quoted(r"trailing\"), r"trailing\");
        assert_eq!(super::unescape_quoted("plain/名前"), "plain/名前");
    }
}
