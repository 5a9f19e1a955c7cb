//! A scriptable hostile IMAP server: a small but correct IMAP4rev1 server (RFC 3501, with
//! LITERAL+, ENABLE, CONDSTORE, UIDPLUS, MOVE, ESEARCH, SPECIAL-USE, NAMESPACE, IDLE, UNSELECT,
//! ID) over an in-memory [`World`] on 127.0.0.1, whose [`Script`] knobs each make it misbehave in
//! exactly one way (drip, hang, floods, phantom FETCH answers, invalid names, lying numbers, …).
//!
//! Why: Dovecot is too well-behaved to show that the engine survives a broken or malicious
//! server. A test first shows the engine works against the correct mode (`Script::default()`),
//! then turns one knob and checks that the engine fails cleanly (an error, not a hang, a panic,
//! a wrong row or an unbounded allocation).
//!
//! ```no_run
//! use backproc_testkit::hostimap::{HostileImap, Phase, Script, World};
//! use std::time::Duration;
//! let server = HostileImap::start("u", "p", World::simple(5), Script::default()).unwrap();
//! // ... run the engine against 127.0.0.1:server.port() ...
//! server.set_script(Script { drip: Some((Phase::List, Duration::from_millis(5))), ..Script::default() });
//! assert_eq!(server.count("LOGIN"), 1);
//! server.world(|w| assert_eq!(w.folders[0].messages.len(), 5));
//! ```
//!
//! Every connection runs on its own thread; commands may be pipelined and may carry
//! synchronising (`{n}`) or non-synchronising (`{n+}`) literals. Sequence numbers follow the
//! RFC 3501 rules: each connection keeps its own view of the selected folder's UIDs, learns of
//! new messages (`* n EXISTS`) at any command, and of removed ones (`* n EXPUNGE`, or `VANISHED`
//! with QRESYNC) only where §7.4.1 allows it (never during FETCH, STORE or SEARCH by sequence
//! number). Messages other connections (or the test) add or remove show up the same way.
//!
//! Not implemented: ENVELOPE, BODYSTRUCTURE, `BODY[n]` part numbers, SEARCHRES, MULTIAPPEND,
//! most SEARCH keys on headers and dates (all answered `BAD`); the known-UID part of the
//! QRESYNC SELECT parameter (accepted, no `VANISHED (EARLIER)`); flag changes made elsewhere are
//! not pushed as unsolicited FETCH (a FETCH shows them); TLS itself. Lenient where a real server
//! might say `BAD`: sequence numbers above EXISTS just match nothing, `{n+}` is accepted even
//! when LITERAL+ is not advertised.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine;

use crate::mailgen;

// ───────────────────────────────────────── the world ─────────────────────────────────────────

/// Everything the server has: its folders, in LIST order. Shared by all connections behind a
/// mutex; change it between runs with [`HostileImap::world`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    pub folders: Vec<Folder>,
}

/// One mailbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Folder {
    /// The mailbox name, byte for byte as it goes into LIST and STATUS answers (inside a quoted
    /// string, only `"` and `\` escaped, or as a literal with [`Script::literal_names`]). It
    /// may be deliberately invalid (NUL, CR, 8-bit): nothing here checks it. A command names
    /// the folder by the same bytes (quoted or literal); `INBOX` in any case names `INBOX`.
    pub name: Vec<u8>,
    /// LIST attributes, e.g. `\HasNoChildren`, `\Sent` (special-use ones are hidden unless
    /// SPECIAL-USE is advertised).
    pub attrs: Vec<String>,
    pub uidvalidity: u32,
    /// Sorted by UID (the server re-sorts after every [`HostileImap::world`] call).
    pub messages: Vec<Msg>,
    /// Reported as the larger of this and every message's `modseq` (and at least 1).
    pub highest_modseq: u64,
    /// The next UID to assign; reported as the larger of this and the highest UID + 1, so 0
    /// means "just above the last message". Kept apart from the messages because UIDs are never
    /// reused (RFC 3501 §2.3.1.1): expunging the last message does not lower it.
    pub uidnext: u32,
}

/// One message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Msg {
    pub uid: u32,
    /// System flags with their backslash (`\Seen`) and keywords (`$Forwarded`), as stored.
    pub flags: Vec<String>,
    pub body: Vec<u8>,
    pub modseq: u64,
    /// RFC 3501 date-time without the quotes, e.g. `17-Jul-1996 02:44:25 -0700`.
    pub internal_date: String,
}

impl Msg {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }
}

impl Folder {
    /// An empty folder with `\HasNoChildren`.
    pub fn new(name: impl Into<Vec<u8>>, uidvalidity: u32) -> Folder {
        Folder {
            name: name.into(),
            attrs: vec!["\\HasNoChildren".into()],
            uidvalidity,
            messages: Vec::new(),
            highest_modseq: 1,
            uidnext: 1,
        }
    }

    /// The UIDNEXT the server reports.
    pub fn next_uid(&self) -> u32 {
        self.uidnext.max(self.messages.last().map_or(1, |m| m.uid.saturating_add(1)))
    }

    /// The HIGHESTMODSEQ the server reports.
    pub fn modseq(&self) -> u64 {
        self.messages.iter().map(|m| m.modseq).max().unwrap_or(0).max(self.highest_modseq).max(1)
    }

    pub fn msg(&self, uid: u32) -> Option<&Msg> {
        self.messages.binary_search_by_key(&uid, |m| m.uid).ok().map(|i| &self.messages[i])
    }

    /// Appends `body` as a new message (next UID, new mod-sequence); returns its UID.
    pub fn push(&mut self, body: Vec<u8>, flags: Vec<String>, internal_date: String) -> u32 {
        let uid = self.next_uid();
        let modseq = self.bump();
        self.uidnext = uid.saturating_add(1);
        self.messages.push(Msg { uid, flags, body, modseq, internal_date });
        uid
    }

    /// A new mod-sequence for a change (RFC 7162: every change gets a higher one).
    fn bump(&mut self) -> u64 {
        self.highest_modseq = self.modseq() + 1;
        self.highest_modseq
    }
}

/// The internal date of generated message `i`: one minute apart from 01-Jan-2024 00:00 UTC.
fn generated_date(i: usize) -> String {
    format!("{:02}-Jan-2024 {:02}:{:02}:00 +0000", 1 + (i / 1440) % 28, (i / 60) % 24, i % 60)
}

impl World {
    /// INBOX with `n` generated 2–8 KB text messages (UIDs 1..=n, every third one `\Seen`,
    /// mod-sequences 1..=n, UIDVALIDITY 1000) and an empty `Sent` with `\Sent` (UIDVALIDITY 1001).
    pub fn simple(n: usize) -> World {
        let messages = (0..n)
            .map(|i| Msg {
                uid: i as u32 + 1,
                flags: if i % 3 == 0 { vec!["\\Seen".into()] } else { Vec::new() },
                body: mailgen::text_message(1000, i),
                modseq: i as u64 + 1,
                internal_date: generated_date(i),
            })
            .collect();
        let inbox = Folder { messages, highest_modseq: n as u64 + 1, ..Folder::new("INBOX", 1000) };
        let mut sent = Folder::new("Sent", 1001);
        sent.attrs.push("\\Sent".into());
        World { folders: vec![inbox, sent] }
    }

    /// The folder a command names by `name` (`INBOX` case-insensitively).
    pub fn folder(&self, name: &[u8]) -> Option<&Folder> {
        self.folders.iter().find(|f| same_name(&f.name, name))
    }

    pub fn folder_mut(&mut self, name: &[u8]) -> Option<&mut Folder> {
        self.folders.iter_mut().find(|f| same_name(&f.name, name))
    }

    fn index(&self, name: &[u8]) -> Option<usize> {
        self.folders.iter().position(|f| same_name(&f.name, name))
    }

    fn sort(&mut self) {
        for f in &mut self.folders {
            if !f.messages.is_sorted_by_key(|m| m.uid) {
                f.messages.sort_by_key(|m| m.uid);
            }
        }
    }
}

/// RFC 3501 §5.1: `INBOX` is case-insensitive, every other name is compared byte for byte.
fn same_name(a: &[u8], b: &[u8]) -> bool {
    a == b || (a.eq_ignore_ascii_case(b"INBOX") && b.eq_ignore_ascii_case(b"INBOX"))
}

// ───────────────────────────────────────── the script ────────────────────────────────────────

/// Capabilities advertised in correct mode (after login; before it `SASL-IR AUTH=PLAIN` are
/// added). Commands of an extension that is not in [`Script::capabilities`] are answered `BAD`,
/// so a test that removes e.g. `MOVE` sees the engine's fall-back.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "IMAP4rev1",
    "LITERAL+",
    "ENABLE",
    "CONDSTORE",
    "UIDPLUS",
    "MOVE",
    "ESEARCH",
    "SPECIAL-USE",
    "NAMESPACE",
    "IDLE",
    "UNSELECT",
    "ID",
];

/// Which answer [`Script::drip`] slows down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Greeting,
    /// The whole answer to LIST and LSUB, tagged line included.
    List,
    /// The whole answer to FETCH and UID FETCH, literals and tagged line included.
    Fetch,
}

/// Where [`Script::hang`] stops answering (the connection stays open; what the client sends
/// is still read and recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hang {
    /// Accept, never send a greeting.
    BeforeGreeting,
    /// Answer the login, then never answer anything again.
    AfterLogin,
}

/// Which answer [`Script::flood`] floods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodAt {
    /// Lines after the greeting, or (`OneLine`) a greeting line of that size.
    Greeting,
    /// Before the LIST (or LSUB) lines.
    List,
    /// Before the `* STATUS` line of every STATUS.
    Status,
}

/// What a flood is made of. Always generated while it is sent, never held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodKind {
    /// `* OK flood` lines.
    OkLines,
    /// `* STATUS "flood-000000001" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 1)` lines, for names never
    /// asked (and never listed).
    StatusLines,
    /// One line of that many bytes: `* OK xxx…` (greeting), `* LIST () "/" xxx…` (a mailbox
    /// name), or `* STATUS xxx… (MESSAGES 0)`.
    OneLine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flood {
    pub at: FloodAt,
    pub kind: FloodKind,
    /// At least this many bytes (whole lines for the line kinds).
    pub bytes: u64,
}

/// An extra FETCH response [`Script::phantoms`] adds to the answer to a UID FETCH of bodies,
/// after the real ones, with the same items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phantom {
    /// A message with this UID, which was not asked (e.g. 777), with a generated body, as
    /// `* 1 FETCH` (whatever message 1 is).
    Uid(u32),
    /// The same with UID 0 (UIDs are non-zero, RFC 3501 §2.3.1.1).
    UidZero,
    /// The first asked message's response again, byte for byte.
    Duplicate,
    /// The first asked message's UID again, with other bytes (the real one came first).
    AlteredDuplicate,
}

/// How the server behaves on connections accepted after [`HostileImap::set_script`]. The
/// default is a correct server; every other field is one misbehaviour (combine rarely).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Advertised capabilities (see [`DEFAULT_CAPABILITIES`]).
    pub capabilities: Vec<String>,
    /// 1. Send the bytes of that answer one at a time, this long apart (TCP_NODELAY is set, so
    ///    each byte is its own segment).
    pub drip: Option<(Phase, Duration)>,
    /// 2. Stop answering (see [`Hang`]).
    pub hang: Option<Hang>,
    /// 3. Flood an answer with valid but useless bytes (see [`Flood`]); streamed, so `bytes`
    ///    may be 600 MB.
    pub flood: Option<Flood>,
    /// 4. Advertise LOGINDISABLED (instead of AUTH=PLAIN); LOGIN and AUTHENTICATE are answered
    ///    `NO [PRIVACYREQUIRED]` (and recorded in [`HostileImap::login_attempts`]: the password
    ///    went in clear).
    pub login_disabled: bool,
    /// 4. Advertise STARTTLS before login. The command is answered `NO` (there is no TLS here);
    ///    without this knob it is `BAD` (unknown).
    pub starttls: bool,
    /// 5. Extra FETCH responses in the answer to a UID FETCH of bodies (see [`Phantom`]).
    pub phantoms: Vec<Phantom>,
    /// 6. These UIDs' body sections are answered `NIL` (e.g. `BODY[] NIL`).
    pub nil_bodies: Vec<u32>,
    /// 7. Every STATUS answer names this mailbox instead of the one asked, with this
    ///    UIDVALIDITY (the other numbers are the asked folder's).
    pub status_wrong_name: Option<(Vec<u8>, u32)>,
    /// 7. Every SELECT/EXAMINE first increments the folder's UIDVALIDITY in the world (a
    ///    generation change between a STATUS and the SELECT that follows it).
    pub bump_uidvalidity_on_select: bool,
    /// 8. LIST also answers the lines of [`BAD_LIST_NAMES`] (NUL, bare CR, raw UTF-8, invalid
    ///    UTF-8, broken modified UTF-7), after the first good folder; they cannot be selected.
    pub bad_list_names: bool,
    /// 9. `(count, messages each)`: folders `Many/00000`… under a `\Noselect` parent `Many`,
    ///    each with small generated messages; generated when asked for, and copied into the
    ///    world only when selected or written to.
    pub many_folders: Option<(usize, u32)>,
    /// 10. CONDSTORE advertised but not ENABLE; the ENABLE command is answered `BAD`.
    pub condstore_without_enable: bool,
    /// 11. LIST leaves INBOX out (it can still be selected).
    pub no_inbox_in_list: bool,
    /// 12. / 15. The UIDNEXT number of every STATUS answer is this text (e.g. `99999999999`,
    ///     `-1`).
    pub status_uidnext: Option<String>,
    /// 13. SELECT and EXAMINE of these folders are answered `NO [UNAVAILABLE]` (STATUS works).
    pub refuse_select: Vec<Vec<u8>>,
    /// 14. FETCH items in unusual but legal orders: FLAGS first, UID last (after any literal),
    ///     and FLAGS with the keywords `$MyUID` and `liquid` added (names that contain "UID").
    pub odd_fetch_order: bool,
    /// 14. Mailbox names in LIST, LSUB and STATUS answers as literals (`{5}\r\nINBOX`).
    pub literal_names: bool,
    /// 14. While a folder is selected, every answer carries unsolicited (true) `* n EXISTS`
    ///     and `* 1 FETCH (FLAGS (…))` lines, before each FETCH response and the tagged line.
    pub unsolicited: bool,
    /// 15. In the answer to a UID FETCH, "another client" expunges the first message sent right
    ///     after its response (removed from the world, `* n EXPUNGE` sent in mid-answer, as RFC
    ///     3501 §7.4.1 allows during UID commands).
    pub expunge_during_fetch: bool,
    /// 15. Before every tagged answer after login, a tagged `X999 OK` for a tag never sent.
    pub stray_tagged: bool,
    /// 15. In the answer to a FETCH of bodies, `* BYE` after the first message, then close.
    pub bye_during_fetch: bool,
    /// 15. Body literals announce this many bytes more than follow (`{size+n}`); the rest of
    ///     the answer follows and the connection stays open.
    pub overstated_literal: Option<u64>,
    /// 15. Before every tagged answer after login, a continuation request `+ …` out of the blue.
    pub continuation_out_of_blue: bool,
    /// 15. A connection that finds this many already open gets `* BYE [UNAVAILABLE]` as its
    ///     greeting and is closed (`Some(0)`: every connection).
    pub connection_limit: Option<usize>,
    /// 15. On receiving this command (e.g. `"UID FETCH"`), close the connection without a word.
    pub close_on: Option<String>,
    /// 15. The EXISTS number of SELECT/EXAMINE answers is this text (e.g. `-1`, `4294967296`).
    pub select_exists: Option<String>,
    /// 15. RFC822.SIZE is reported this much off the real size (as some servers do).
    pub size_delta: i64,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            capabilities: DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect(),
            drip: None,
            hang: None,
            flood: None,
            login_disabled: false,
            starttls: false,
            phantoms: Vec::new(),
            nil_bodies: Vec::new(),
            status_wrong_name: None,
            bump_uidvalidity_on_select: false,
            bad_list_names: false,
            many_folders: None,
            condstore_without_enable: false,
            no_inbox_in_list: false,
            status_uidnext: None,
            refuse_select: Vec::new(),
            odd_fetch_order: false,
            literal_names: false,
            unsolicited: false,
            expunge_during_fetch: false,
            stray_tagged: false,
            bye_during_fetch: false,
            overstated_literal: None,
            continuation_out_of_blue: false,
            connection_limit: None,
            close_on: None,
            select_exists: None,
            size_delta: 0,
        }
    }
}

/// The names [`Script::bad_list_names`] adds, each inside a quoted string in a LIST line.
pub const BAD_LIST_NAMES: &[&[u8]] =
    &[b"bad\0nul", b"bad\rcr", "Entwürfe-raw-utf8".as_bytes(), b"bad-\xff\xfe-utf8", b"bad&Jjo-utf7&"];

/// The folder name prefix of [`Script::many_folders`].
pub const MANY_PREFIX: &str = "Many/";

/// One LOGIN or AUTHENTICATE the server received, accepted or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginAttempt {
    pub conn: usize,
    /// `LOGIN` or `AUTHENTICATE PLAIN`.
    pub mechanism: String,
    pub user: String,
    pub password: String,
    pub accepted: bool,
}

// ───────────────────────────────────────── the server ────────────────────────────────────────

struct Record {
    conn: usize,
    line: String,
    /// `LOGIN`, `UID FETCH`, … (empty for lines that are not commands: SASL responses, DONE).
    name: String,
}

struct Shared {
    login: Vec<u8>,
    password: Vec<u8>,
    world: Mutex<World>,
    script: Mutex<Script>,
    log: Mutex<Vec<Record>>,
    logins: Mutex<Vec<LoginAttempt>>,
    connections: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    bytes_sent: AtomicU64,
    next_uidvalidity: AtomicU32,
    stop: AtomicBool,
    /// `stop` again, for naps that must end at once when the server is dropped.
    stopped: Mutex<bool>,
    wake: Condvar,
    /// Clones of every connection's socket (shut down on drop) and its thread.
    conns: Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked inside `world(…)` must not make every later call panic too.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running hostile IMAP server on 127.0.0.1; stops on drop (every connection is shut down
/// and its thread joined).
pub struct HostileImap {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl HostileImap {
    /// Listens on 127.0.0.1:free with one user, `login`/`password`.
    pub fn start(login: &str, password: &str, world: World, script: Script) -> anyhow::Result<HostileImap> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let mut world = world;
        world.sort();
        let shared = Arc::new(Shared {
            login: login.as_bytes().to_vec(),
            password: password.as_bytes().to_vec(),
            next_uidvalidity: AtomicU32::new(world.folders.iter().map(|f| f.uidvalidity).max().unwrap_or(0) + 1),
            world: Mutex::new(world),
            script: Mutex::new(script),
            log: Mutex::new(Vec::new()),
            logins: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            max_open: AtomicUsize::new(0),
            bytes_sent: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            conns: Mutex::new(Vec::new()),
        });
        let sh = Arc::clone(&shared);
        let acceptor =
            std::thread::Builder::new().name(format!("hostimap-{port}")).spawn(move || accept(listener, sh))?;
        Ok(HostileImap { port, shared, acceptor: Some(acceptor) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Applies to connections accepted after this call; open ones keep their script. (A
    /// connection is accepted when [`connections`](Self::connections) counts it, not when the
    /// client's `connect` returns.)
    pub fn set_script(&self, script: Script) {
        *lock(&self.shared.script) = script;
    }

    /// Reads or changes the world (connections see the change at their next command: new
    /// messages as EXISTS, removed ones as EXPUNGE).
    pub fn world<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        let mut w = lock(&self.shared.world);
        let r = f(&mut w);
        w.sort();
        r
    }

    /// Every line clients sent, in arrival order: `(connection id, line)`, commands and the
    /// lines inside them (SASL responses, `DONE`) verbatim, passwords included, with each
    /// literal's bytes left out (its `{n}` marker stays). Connection ids start at 1.
    pub fn commands(&self) -> Vec<(usize, String)> {
        lock(&self.shared.log).iter().map(|r| (r.conn, r.line.clone())).collect()
    }

    /// How many commands named `name` (`"STATUS"`, `"UID FETCH"`; any case) arrived.
    pub fn count(&self, name: &str) -> usize {
        lock(&self.shared.log).iter().filter(|r| !r.name.is_empty() && r.name.eq_ignore_ascii_case(name)).count()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_open.load(Ordering::SeqCst)
    }

    /// Every LOGIN and AUTHENTICATE received, with the credentials as sent.
    pub fn login_attempts(&self) -> Vec<LoginAttempt> {
        lock(&self.shared.logins).clone()
    }

    /// Bytes written to all clients so far.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.bytes_sent.load(Ordering::SeqCst)
    }
}

impl Drop for HostileImap {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        *lock(&self.shared.stopped) = true;
        self.shared.wake.notify_all();
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        // The acceptor is gone, so no connection registers after this.
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for (s, _) in &conns {
            // Unblocks a thread stuck writing to a client that does not read.
            let _ = s.shutdown(Shutdown::Both);
        }
        for (_, t) in conns {
            let _ = t.join();
        }
    }
}

/// How often a connection thread blocked in a read looks at the stop flag (and, in IDLE, at
/// the world).
const TICK: Duration = Duration::from_millis(100);

fn accept(listener: TcpListener, sh: Arc<Shared>) {
    for conn in listener.incoming() {
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else { continue };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(TICK));
        let Ok(clone) = stream.try_clone() else { continue };
        // The script before the count: a test that saw `connections()` grow may change it.
        let script = lock(&sh.script).clone();
        let id = sh.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let already = sh.open.fetch_add(1, Ordering::SeqCst);
        sh.max_open.fetch_max(already + 1, Ordering::SeqCst);
        let sh2 = Arc::clone(&sh);
        let spawned = std::thread::Builder::new().name(format!("hostimap-conn-{id}")).spawn(move || {
            Conn::new(id, sh2.clone(), script, stream, already).run();
            sh2.open.fetch_sub(1, Ordering::SeqCst);
        });
        let mut conns = lock(&sh.conns);
        // Finished threads need no join: forget them so a long test does not pile them up.
        conns.retain(|(_, t)| !t.is_finished());
        match spawned {
            Ok(t) => conns.push((clone, t)),
            Err(_) => {
                sh.open.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

// ─────────────────────────────────────── one connection ──────────────────────────────────────

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotAuthenticated,
    Authenticated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

#[derive(Debug, Clone)]
struct Selected {
    /// The folder's name as in the world.
    name: Vec<u8>,
    read_only: bool,
}

/// A command as read: its text lines (without CRLF and literal markers) and the literal after
/// each of them but the last.
struct Cmd {
    texts: Vec<Vec<u8>>,
    lits: Vec<Vec<u8>>,
    /// The lines as received, literal markers kept, literal bytes left out.
    logged: Vec<u8>,
}

/// A handler's failure: the socket broke, or the command is answered `BAD` with this text.
#[derive(Debug)]
enum Fail {
    Io(io::Error),
    Bad(String),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        Fail::Io(e)
    }
}

fn bad<T>(text: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Bad(text.into()))
}

type Res = Result<Flow, Fail>;

struct Conn {
    id: usize,
    sh: Arc<Shared>,
    script: Script,
    stream: TcpStream,
    /// Connections that were open when this one was accepted.
    already_open: usize,
    rbuf: Vec<u8>,
    rpos: usize,
    out: Vec<u8>,
    /// Drip delay for the answer being written.
    drip_now: Option<Duration>,
    state: State,
    /// CONDSTORE enabled on this connection (RFC 7162 §3: FETCH answers then carry MODSEQ).
    condstore: bool,
    qresync: bool,
    selected: Option<Selected>,
    /// The selected folder's UIDs as this client knows them: index + 1 is the sequence number.
    view: Vec<u32>,
    /// Answering nothing any more (`Script::hang`).
    hung: bool,
}

impl Conn {
    fn new(id: usize, sh: Arc<Shared>, script: Script, stream: TcpStream, already_open: usize) -> Conn {
        Conn {
            id,
            sh,
            script,
            stream,
            already_open,
            rbuf: Vec::new(),
            rpos: 0,
            out: Vec::new(),
            drip_now: None,
            state: State::NotAuthenticated,
            condstore: false,
            qresync: false,
            selected: None,
            view: Vec::new(),
            hung: false,
        }
    }

    fn run(mut self) {
        let _ = self.serve();
        let _ = self.flush();
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    fn serve(&mut self) -> io::Result<()> {
        if self.greet()? == Flow::Close {
            return Ok(());
        }
        loop {
            let cmd = self.read_command()?;
            let flow = self.command(cmd)?;
            self.drip_now = None;
            self.flush()?;
            if flow == Flow::Close {
                return Ok(());
            }
        }
    }

    fn has(&self, cap: &str) -> bool {
        self.script.capabilities.iter().any(|c| c.eq_ignore_ascii_case(cap))
    }

    fn capabilities(&self) -> String {
        let mut caps: Vec<&str> = self
            .script
            .capabilities
            .iter()
            .map(String::as_str)
            .filter(|c| !(self.script.condstore_without_enable && c.eq_ignore_ascii_case("ENABLE")))
            .collect();
        if self.state == State::NotAuthenticated {
            if self.script.starttls {
                caps.push("STARTTLS");
            }
            if self.script.login_disabled {
                caps.push("LOGINDISABLED");
            } else {
                caps.extend(["SASL-IR", "AUTH=PLAIN"]);
            }
        }
        caps.join(" ")
    }

    // ── output ──

    /// Queues `b` for the client (written at once, byte by byte, while dripping).
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        if let Some(d) = self.drip_now {
            self.flush()?;
            for &c in b {
                self.stream.write_all(&[c])?;
                self.sh.bytes_sent.fetch_add(1, Ordering::Relaxed);
                self.nap(d)?;
            }
            return Ok(());
        }
        self.out.extend_from_slice(b);
        // Big answers (floods, many bodies) go out as they are made, so memory stays bounded.
        if self.out.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.sh.bytes_sent.fetch_add(self.out.len() as u64, Ordering::Relaxed);
            self.out.clear();
        }
        Ok(())
    }

    /// Sleeps `d`, or fails at once when the server is dropped.
    fn nap(&self, d: Duration) -> io::Result<()> {
        let g = lock(&self.sh.stopped);
        let (g, _) = self.sh.wake.wait_timeout_while(g, d, |stopped| !*stopped).unwrap_or_else(|e| e.into_inner());
        if *g { Err(io::Error::new(io::ErrorKind::ConnectionAborted, "server stopped")) } else { Ok(()) }
    }

    // ── input ──

    /// Reads more bytes: false on a read timeout (the stop flag is checked then).
    fn fill(&mut self) -> io::Result<bool> {
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > 1 << 20 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        let mut tmp = [0u8; 16 * 1024];
        match self.stream.read(&mut tmp) {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                self.rbuf.extend_from_slice(&tmp[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                if self.sh.stop.load(Ordering::SeqCst) {
                    return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "server stopped"));
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// One line without its CRLF (or bare LF). In IDLE, every tick reports changes.
    fn read_line(&mut self, idle: bool) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.rbuf[self.rpos..].iter().position(|&b| b == b'\n') {
                let mut line = self.rbuf[self.rpos..self.rpos + i].to_vec();
                self.rpos += i + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if !self.fill()? && idle {
                self.notify_changes(true)?;
                self.flush()?;
            }
        }
    }

    fn read_exact_n(&mut self, n: usize) -> io::Result<Vec<u8>> {
        // Not `with_capacity(n)`: a client may announce more than it sends.
        let mut v = Vec::with_capacity(n.min(1 << 20));
        while v.len() < n {
            if self.rpos == self.rbuf.len() {
                self.fill()?;
                continue;
            }
            let take = (self.rbuf.len() - self.rpos).min(n - v.len());
            v.extend_from_slice(&self.rbuf[self.rpos..self.rpos + take]);
            self.rpos += take;
        }
        Ok(v)
    }

    /// One whole command: lines and the literals between them. Answers `+ go ahead` to each
    /// synchronising literal (RFC 3501 §7.5) unless hung; `{n+}` (LITERAL+) needs none.
    fn read_command(&mut self) -> io::Result<Cmd> {
        let mut cmd = Cmd { texts: Vec::new(), lits: Vec::new(), logged: Vec::new() };
        loop {
            let mut line = self.read_line(false)?;
            if cmd.texts.is_empty() && line.is_empty() {
                continue; // a stray CRLF between commands
            }
            cmd.logged.extend_from_slice(&line);
            let Some((start, n, sync)) = literal_marker(&line) else {
                cmd.texts.push(line);
                return Ok(cmd);
            };
            line.truncate(start);
            cmd.texts.push(line);
            if sync && !self.hung {
                self.flush()?;
                self.put(b"+ go ahead\r\n")?;
                self.flush()?;
            }
            let lit = self.read_exact_n(n)?;
            cmd.lits.push(lit);
        }
    }

    fn record(&self, line: &[u8], name: String) {
        lock(&self.sh.log).push(Record { conn: self.id, line: String::from_utf8_lossy(line).into_owned(), name });
    }

    // ── greeting and dispatch ──

    fn greet(&mut self) -> io::Result<Flow> {
        if let Some(limit) = self.script.connection_limit
            && self.already_open >= limit
        {
            self.put(b"* BYE [UNAVAILABLE] Too many simultaneous connections\r\n")?;
            self.flush()?;
            return Ok(Flow::Close);
        }
        if self.script.hang == Some(Hang::BeforeGreeting) {
            self.hung = true;
            return Ok(Flow::Continue);
        }
        self.drip_now = self.drip_for(Phase::Greeting);
        let flood = self.script.flood.filter(|f| f.at == FloodAt::Greeting);
        if flood.is_some_and(|f| f.kind == FloodKind::OneLine) {
            self.flood(FloodAt::Greeting)?;
        } else {
            let g = format!("* OK [CAPABILITY {}] hostimap ready.\r\n", self.capabilities());
            self.put(g.as_bytes())?;
            self.flood(FloodAt::Greeting)?;
        }
        self.drip_now = None;
        self.flush()?;
        Ok(Flow::Continue)
    }

    fn drip_for(&self, phase: Phase) -> Option<Duration> {
        self.script.drip.filter(|(p, _)| *p == phase).map(|(_, d)| d)
    }

    fn command(&mut self, mut cmd: Cmd) -> io::Result<Flow> {
        let logged = std::mem::take(&mut cmd.logged);
        let name = command_name(&logged);
        self.record(&logged, name.clone());
        if self.hung {
            return Ok(Flow::Continue);
        }
        if let Some(c) = &self.script.close_on
            && c.eq_ignore_ascii_case(&name)
        {
            return Ok(Flow::Close);
        }
        let toks = match lex(cmd) {
            Ok(t) => t,
            Err(e) => {
                let tag = logged.split(|&b| b == b' ').next().unwrap_or_default();
                let tag = if tag.is_empty() { "*".to_owned() } else { String::from_utf8_lossy(tag).into_owned() };
                self.put(format!("{tag} BAD {e}\r\n").as_bytes())?;
                return Ok(Flow::Continue);
            }
        };
        let mut a = Args { t: toks, i: 0 };
        let tag = match a.next() {
            Some(Tok::Atom(t)) if !t.contains(&b'+') && !t.contains(&b'*') => String::from_utf8_lossy(&t).into_owned(),
            _ => {
                self.put(b"* BAD Missing or invalid tag\r\n")?;
                return Ok(Flow::Continue);
            }
        };
        // The name again, as words (skipped here, `name` has them).
        a.next();
        if name.starts_with("UID ") {
            a.next();
        }
        match self.dispatch(&tag, &name, a) {
            Ok(f) => Ok(f),
            Err(Fail::Bad(m)) => {
                self.put(format!("{tag} BAD {m}\r\n").as_bytes())?;
                Ok(Flow::Continue)
            }
            Err(Fail::Io(e)) => Err(e),
        }
    }

    fn need_auth(&self) -> Result<(), Fail> {
        if self.state == State::NotAuthenticated { bad("Log in first") } else { Ok(()) }
    }

    fn need_selected(&self) -> Result<Selected, Fail> {
        self.need_auth()?;
        self.selected.clone().map_or_else(|| bad("No mailbox selected"), Ok)
    }

    fn need_cap(&self, cap: &str) -> Result<(), Fail> {
        if self.has(cap) { Ok(()) } else { bad("Unknown command") }
    }

    fn dispatch(&mut self, tag: &str, name: &str, mut a: Args) -> Res {
        match name {
            "CAPABILITY" => {
                a.done()?;
                let c = format!("* CAPABILITY {}\r\n", self.capabilities());
                self.put(c.as_bytes())?;
                self.finish(tag, "OK Capability completed.", true)?;
            }
            "NOOP" | "CHECK" => {
                a.done()?;
                self.finish(tag, "OK NOOP completed.", true)?;
            }
            "LOGOUT" => {
                a.done()?;
                self.put(b"* BYE Logging out\r\n")?;
                self.put(format!("{tag} OK Logout completed.\r\n").as_bytes())?;
                return Ok(Flow::Close);
            }
            "LOGIN" => self.login(tag, a)?,
            "AUTHENTICATE" => self.authenticate(tag, a)?,
            "STARTTLS" => {
                a.done()?;
                if !self.script.starttls || self.state != State::NotAuthenticated {
                    return bad("Unknown command");
                }
                self.finish(tag, "NO [UNAVAILABLE] TLS is not available on this test server", true)?;
            }
            "ENABLE" => self.enable(tag, a)?,
            "ID" => {
                a.next(); // NIL or a list of field/value pairs: nothing to do with them
                a.done()?;
                self.put(b"* ID (\"name\" \"hostimap\" \"vendor\" \"backproc-testkit\")\r\n")?;
                self.finish(tag, "OK ID completed.", true)?;
            }
            "NAMESPACE" => {
                self.need_auth()?;
                self.need_cap("NAMESPACE")?;
                a.done()?;
                self.put(b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n")?;
                self.finish(tag, "OK Namespace completed.", true)?;
            }
            "LIST" => self.list(tag, a, false)?,
            "LSUB" => self.list(tag, a, true)?,
            "STATUS" => self.status(tag, a)?,
            "SELECT" => self.select(tag, a, false)?,
            "EXAMINE" => self.select(tag, a, true)?,
            "CREATE" | "DELETE" | "RENAME" | "SUBSCRIBE" | "UNSUBSCRIBE" => self.manage(tag, name, a)?,
            "APPEND" => self.append(tag, a)?,
            "IDLE" => {
                self.need_auth()?;
                self.need_cap("IDLE")?;
                a.done()?;
                return self.idle(tag);
            }
            "CLOSE" | "UNSELECT" => {
                let sel = self.need_selected()?;
                if name == "UNSELECT" {
                    self.need_cap("UNSELECT")?;
                }
                a.done()?;
                if name == "CLOSE" && !sel.read_only {
                    // RFC 3501 §6.4.2: expunge silently, no EXPUNGE responses.
                    let mut w = lock(&self.sh.world);
                    if let Some(f) = w.folder_mut(&sel.name) {
                        let before = f.messages.len();
                        f.messages.retain(|m| !m.has_flag("\\Deleted"));
                        if f.messages.len() != before {
                            f.bump();
                        }
                    }
                }
                self.selected = None;
                self.view.clear();
                self.finish(tag, &format!("OK {name} completed."), true)?;
            }
            "EXPUNGE" => self.expunge(tag, a, false)?,
            "UID EXPUNGE" => {
                self.need_cap("UIDPLUS")?;
                self.expunge(tag, a, true)?
            }
            "FETCH" => return self.fetch(tag, a, false),
            "UID FETCH" => return self.fetch(tag, a, true),
            "STORE" => self.store(tag, a, false)?,
            "UID STORE" => self.store(tag, a, true)?,
            "SEARCH" => self.search(tag, a, false)?,
            "UID SEARCH" => self.search(tag, a, true)?,
            "COPY" => self.copy(tag, a, false, false)?,
            "UID COPY" => self.copy(tag, a, true, false)?,
            "MOVE" => self.copy(tag, a, false, true)?,
            "UID MOVE" => self.copy(tag, a, true, true)?,
            _ => return bad("Unknown command"),
        }
        Ok(Flow::Continue)
    }

    /// Writes the tagged completion, after the EXISTS/EXPUNGE the client has to learn of
    /// (EXPUNGE only if `allow_expunge`: RFC 3501 §7.4.1) and the knobs' noise.
    fn finish(&mut self, tag: &str, text: &str, allow_expunge: bool) -> io::Result<()> {
        self.notify_changes(allow_expunge)?;
        if self.state != State::NotAuthenticated {
            if self.script.unsolicited {
                self.unsolicited()?;
            }
            if self.script.stray_tagged {
                self.put(b"X999 OK [ALERT] Completed a command you never sent\r\n")?;
            }
            if self.script.continuation_out_of_blue {
                self.put(b"+ Out of the blue\r\n")?;
            }
        }
        self.put(format!("{tag} {text}\r\n").as_bytes())
    }

    // ── login ──

    fn login(&mut self, tag: &str, mut a: Args) -> Result<(), Fail> {
        if self.state != State::NotAuthenticated {
            return bad("Already logged in");
        }
        let user = a.astring()?;
        let pass = a.astring()?;
        a.done()?;
        self.check_login(tag, "LOGIN", &user, &pass)
    }

    fn check_login(&mut self, tag: &str, mechanism: &str, user: &[u8], pass: &[u8]) -> Result<(), Fail> {
        let accepted = !self.script.login_disabled && user == self.sh.login && pass == self.sh.password;
        lock(&self.sh.logins).push(LoginAttempt {
            conn: self.id,
            mechanism: mechanism.into(),
            user: String::from_utf8_lossy(user).into_owned(),
            password: String::from_utf8_lossy(pass).into_owned(),
            accepted,
        });
        if self.script.login_disabled {
            self.finish(
                tag,
                "NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections.",
                true,
            )?;
        } else if accepted {
            self.state = State::Authenticated;
            let text = format!("OK [CAPABILITY {}] Logged in", self.capabilities());
            // The noise knobs start after the login's own answer.
            self.put(format!("{tag} {text}\r\n").as_bytes())?;
            if self.script.hang == Some(Hang::AfterLogin) {
                self.hung = true;
            }
        } else {
            self.finish(tag, "NO [AUTHENTICATIONFAILED] Authentication failed.", true)?;
        }
        Ok(())
    }

    fn authenticate(&mut self, tag: &str, mut a: Args) -> Result<(), Fail> {
        if self.state != State::NotAuthenticated {
            return bad("Already logged in");
        }
        let mech = a.atom_upper()?;
        let initial = a.next();
        a.done()?;
        if mech != "PLAIN" {
            self.finish(tag, "NO [CANNOT] Unsupported authentication mechanism.", true)?;
            return Ok(());
        }
        let response = match initial {
            Some(t) => match t {
                Tok::Atom(b) | Tok::Str(b) => b,
                Tok::List(_) => return bad("Invalid initial response"),
            },
            None if self.script.login_disabled => {
                // Refused before the client can send its password.
                lock(&self.sh.logins).push(LoginAttempt {
                    conn: self.id,
                    mechanism: "AUTHENTICATE PLAIN".into(),
                    user: String::new(),
                    password: String::new(),
                    accepted: false,
                });
                self.finish(tag, "NO [PRIVACYREQUIRED] Plaintext authentication disallowed.", true)?;
                return Ok(());
            }
            None => {
                self.put(b"+ \r\n")?;
                self.flush()?;
                let line = self.read_line(false)?;
                self.record(&line, String::new());
                line
            }
        };
        if response == b"*" {
            return bad("Authentication cancelled");
        }
        let decoded = if response == b"=" {
            Vec::new()
        } else {
            match base64::engine::general_purpose::STANDARD.decode(&response) {
                Ok(d) => d,
                Err(_) => return bad("Invalid base64"),
            }
        };
        let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
        let [_authz, user, pass] = parts[..] else {
            return bad("Invalid PLAIN response");
        };
        let (user, pass) = (user.to_vec(), pass.to_vec());
        self.check_login(tag, "AUTHENTICATE PLAIN", &user, &pass)
    }

    fn enable(&mut self, tag: &str, mut a: Args) -> Result<(), Fail> {
        self.need_auth()?;
        if self.script.condstore_without_enable || !self.has("ENABLE") {
            return bad("Unknown command");
        }
        if self.selected.is_some() {
            return bad("ENABLE is only valid before a mailbox is selected");
        }
        let mut enabled = Vec::new();
        while let Some(t) = a.next() {
            let Tok::Atom(x) = t else { return bad("Invalid ENABLE argument") };
            let x = String::from_utf8_lossy(&x).to_ascii_uppercase();
            if !self.has(&x) {
                continue;
            }
            // Listed even when already on (a STATUS HIGHESTMODSEQ, say, turned CONDSTORE on
            // implicitly): a client that looks for `ENABLED CONDSTORE` finds it.
            match x.as_str() {
                "CONDSTORE" => self.condstore = true,
                "QRESYNC" => {
                    // RFC 7162 §3.2.3: QRESYNC implies CONDSTORE.
                    self.qresync = true;
                    self.condstore = true;
                }
                "UTF8=ACCEPT" => {}
                _ => continue,
            }
            if !enabled.contains(&x) {
                enabled.push(x);
            }
        }
        let line = if enabled.is_empty() {
            "* ENABLED\r\n".to_owned()
        } else {
            format!("* ENABLED {}\r\n", enabled.join(" "))
        };
        self.put(line.as_bytes())?;
        self.finish(tag, "OK Enabled.", true)?;
        Ok(())
    }

    // ── folders ──

    /// The world folder index of `name`, copying a [`Script::many_folders`] folder into the
    /// world first when it is one.
    fn materialize(&self, w: &mut World, name: &[u8]) -> Option<usize> {
        if let Some(i) = w.index(name) {
            return Some(i);
        }
        let f = self.generated(name)?;
        w.folders.push(f);
        Some(w.folders.len() - 1)
    }

    /// The generated folder `name` is, if it is one (see [`Script::many_folders`]).
    fn generated(&self, name: &[u8]) -> Option<Folder> {
        let (count, each) = self.script.many_folders?;
        let i: usize = std::str::from_utf8(name.strip_prefix(MANY_PREFIX.as_bytes())?).ok()?.parse().ok()?;
        if i >= count || name != many_name(i).as_bytes() {
            return None;
        }
        let mut f = Folder::new(name.to_vec(), 50_000 + i as u32);
        for j in 0..each as usize {
            let body = mailgen::message_with(
                &format!("folder {i} message {j}"),
                "gen@backproc.test",
                "you@backproc.test",
                "Mon, 01 Jan 2024 00:00:00 +0000",
                &format!("gen.{i}.{j}@backproc.test"),
                "generated\n",
            );
            f.push(body, Vec::new(), generated_date(j));
        }
        Some(f)
    }

    /// The name and `ITEM value` pairs of a STATUS answer for `name`: from the world (under
    /// the lock, messages not copied), or from a generated folder that is not stored.
    fn status_values(&self, name: &[u8], items: &[String]) -> Option<(Vec<u8>, Vec<String>)> {
        let answer = |f: &Folder| {
            let (shown, uidvalidity) = match &self.script.status_wrong_name {
                Some((n, v)) => (n.clone(), *v),
                None => (f.name.clone(), f.uidvalidity),
            };
            let values = items
                .iter()
                .map(|i| {
                    let v = match i.as_str() {
                        "MESSAGES" => f.messages.len().to_string(),
                        "RECENT" => "0".into(),
                        "UIDNEXT" => self.script.status_uidnext.clone().unwrap_or_else(|| f.next_uid().to_string()),
                        "UIDVALIDITY" => uidvalidity.to_string(),
                        "UNSEEN" => f.messages.iter().filter(|m| !m.has_flag("\\Seen")).count().to_string(),
                        _ => f.modseq().to_string(),
                    };
                    format!("{i} {v}")
                })
                .collect();
            (shown, values)
        };
        if let Some(f) = lock(&self.sh.world).folder(name) {
            return Some(answer(f));
        }
        self.generated(name).map(|f| answer(&f))
    }

    /// A mailbox name as it goes into an answer.
    fn mailbox(&self, name: &[u8]) -> Vec<u8> {
        if self.script.literal_names {
            let mut v = format!("{{{}}}\r\n", name.len()).into_bytes();
            v.extend_from_slice(name);
            v
        } else {
            quote_raw(name)
        }
    }

    fn list(&mut self, tag: &str, mut a: Args, lsub: bool) -> Result<(), Fail> {
        self.need_auth()?;
        let mut select_opts = Vec::new();
        if !lsub && let Some(Tok::List(_)) = a.peek() {
            let Some(Tok::List(l)) = a.next() else { unreachable!() };
            select_opts = atoms_upper(&l)?;
        }
        let reference = a.astring()?;
        let patterns = match a.next() {
            Some(Tok::List(l)) => l.into_iter().map(|t| t.astring()).collect::<Result<Vec<_>, _>>()?,
            Some(t) => vec![t.astring()?],
            None => return bad("Missing mailbox pattern"),
        };
        let mut return_opts = Vec::new();
        if let Some(Tok::Atom(r)) = a.peek()
            && r.eq_ignore_ascii_case(b"RETURN")
        {
            a.next();
            let Some(Tok::List(l)) = a.next() else { return bad("RETURN needs a list") };
            return_opts = flatten_atoms_upper(&l);
        }
        a.done()?;
        let special_use = self.has("SPECIAL-USE");
        let special_only = select_opts.iter().any(|o| o == "SPECIAL-USE");
        if (special_only || return_opts.iter().any(|o| o == "SPECIAL-USE")) && !special_use {
            return bad("SPECIAL-USE is not supported");
        }
        self.drip_now = self.drip_for(Phase::List);
        self.flood(FloodAt::List)?;
        let kind = if lsub { "LSUB" } else { "LIST" };
        let pats: Vec<Vec<u8>> = patterns
            .iter()
            .map(|p| {
                let mut full = reference.clone();
                full.extend_from_slice(p);
                full
            })
            .collect();
        if pats.iter().all(|p| p.is_empty()) {
            // RFC 3501 §6.3.8: the hierarchy delimiter.
            self.put(format!("* {kind} (\\Noselect) \"/\" \"\"\r\n").as_bytes())?;
            self.finish(tag, &format!("OK {kind} completed."), true)?;
            return Ok(());
        }
        let matches = |name: &[u8]| pats.iter().any(|p| wildcard(p, name, same_name(name, b"INBOX")));
        let folders: Vec<(Vec<u8>, Vec<String>)> =
            lock(&self.sh.world).folders.iter().map(|f| (f.name.clone(), f.attrs.clone())).collect();
        let mut first = true;
        for (name, attrs) in folders {
            if self.script.no_inbox_in_list && same_name(&name, b"INBOX") {
                continue;
            }
            let attrs: Vec<&String> = attrs.iter().filter(|a| special_use || !is_special_use(a)).collect();
            if (special_only && !attrs.iter().any(|a| is_special_use(a))) || !matches(&name) {
                continue;
            }
            let attrs: Vec<&str> = attrs.iter().map(|a| a.as_str()).collect();
            let mut line = format!("* {kind} ({}) \"/\" ", attrs.join(" ")).into_bytes();
            line.extend_from_slice(&self.mailbox(&name));
            line.extend_from_slice(b"\r\n");
            self.put(&line)?;
            if first && self.script.bad_list_names && !special_only {
                for bad_name in BAD_LIST_NAMES {
                    let mut line = format!("* {kind} (\\HasNoChildren) \"/\" ").into_bytes();
                    line.extend_from_slice(&quote_raw(bad_name));
                    line.extend_from_slice(b"\r\n");
                    self.put(&line)?;
                }
            }
            first = false;
        }
        if let Some((count, _)) = self.script.many_folders
            && !special_only
        {
            if matches(b"Many") {
                let line = format!("* {kind} (\\Noselect \\HasChildren) \"/\" ");
                let mut line = line.into_bytes();
                line.extend_from_slice(&self.mailbox(b"Many"));
                line.extend_from_slice(b"\r\n");
                self.put(&line)?;
            }
            for i in 0..count {
                let name = many_name(i);
                // Already in the world (selected once): listed above.
                if !matches(name.as_bytes()) || lock(&self.sh.world).index(name.as_bytes()).is_some() {
                    continue;
                }
                let mut line = format!("* {kind} (\\HasNoChildren) \"/\" ").into_bytes();
                line.extend_from_slice(&self.mailbox(name.as_bytes()));
                line.extend_from_slice(b"\r\n");
                self.put(&line)?;
            }
        }
        self.finish(tag, &format!("OK {kind} completed."), true)?;
        Ok(())
    }

    fn status(&mut self, tag: &str, mut a: Args) -> Result<(), Fail> {
        self.need_auth()?;
        let name = a.astring()?;
        let Some(Tok::List(items)) = a.next() else { return bad("STATUS needs a list of items") };
        a.done()?;
        let items = atoms_upper(&items)?;
        for i in &items {
            match i.as_str() {
                "MESSAGES" | "RECENT" | "UIDNEXT" | "UIDVALIDITY" | "UNSEEN" => {}
                "HIGHESTMODSEQ" if self.has("CONDSTORE") => self.condstore = true,
                _ => return bad(format!("Unknown STATUS item {i}")),
            }
        }
        let Some((shown, values)) = self.status_values(&name, &items) else {
            self.finish(tag, "NO [NONEXISTENT] Mailbox doesn't exist.", true)?;
            return Ok(());
        };
        self.flood(FloodAt::Status)?;
        let mut line = b"* STATUS ".to_vec();
        line.extend_from_slice(&self.mailbox(&shown));
        line.extend_from_slice(format!(" ({})\r\n", values.join(" ")).as_bytes());
        self.put(&line)?;
        self.finish(tag, "OK Status completed.", true)?;
        Ok(())
    }

    fn select(&mut self, tag: &str, mut a: Args, read_only: bool) -> Result<(), Fail> {
        self.need_auth()?;
        let name = a.astring()?;
        if let Some(Tok::List(params)) = a.next() {
            for p in flatten_atoms_upper(&params) {
                match p.as_str() {
                    "CONDSTORE" if self.has("CONDSTORE") => self.condstore = true,
                    // Its UIDVALIDITY / MODSEQ / known UIDs arguments are accepted and ignored.
                    "QRESYNC" if self.qresync => {}
                    _ if p.bytes().all(|b| b.is_ascii_digit() || b == b':' || b == b',' || b == b'*') => {}
                    _ => return bad(format!("Unknown SELECT parameter {p}")),
                }
            }
        }
        a.done()?;
        // RFC 3501 §6.3.1: a SELECT leaves the selected state first, even when it fails.
        if self.selected.take().is_some() && self.qresync {
            self.put(b"* OK [CLOSED] Previous mailbox closed.\r\n")?;
        }
        self.view.clear();
        if self.script.refuse_select.iter().any(|r| same_name(r, &name)) {
            self.finish(tag, "NO [UNAVAILABLE] Mailbox cannot be opened right now.", true)?;
            return Ok(());
        }
        let mut w = lock(&self.sh.world);
        let Some(i) = self.materialize(&mut w, &name) else {
            drop(w);
            self.finish(tag, "NO [NONEXISTENT] Mailbox doesn't exist.", true)?;
            return Ok(());
        };
        let f = &mut w.folders[i];
        if self.script.bump_uidvalidity_on_select {
            f.uidvalidity = f.uidvalidity.wrapping_add(1).max(1);
        }
        self.view = f.messages.iter().map(|m| m.uid).collect();
        let mut keywords = BTreeSet::new();
        for m in &f.messages {
            keywords.extend(m.flags.iter().filter(|x| !x.starts_with('\\')).cloned());
        }
        let kw: String = keywords.iter().map(|k| format!(" {k}")).collect();
        let exists = self.script.select_exists.clone().unwrap_or_else(|| f.messages.len().to_string());
        let mut out = format!("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft{kw})\r\n");
        if read_only {
            out.push_str("* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n");
        } else {
            out.push_str(&format!(
                "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft{kw} \\*)] Flags permitted.\r\n"
            ));
        }
        out.push_str(&format!("* {exists} EXISTS\r\n* 0 RECENT\r\n"));
        if let Some(n) = f.messages.iter().position(|m| !m.has_flag("\\Seen")) {
            out.push_str(&format!("* OK [UNSEEN {}] First unseen.\r\n", n + 1));
        }
        out.push_str(&format!("* OK [UIDVALIDITY {}] UIDs valid\r\n", f.uidvalidity));
        out.push_str(&format!("* OK [UIDNEXT {}] Predicted next UID\r\n", f.next_uid()));
        if self.has("CONDSTORE") {
            out.push_str(&format!("* OK [HIGHESTMODSEQ {}] Highest\r\n", f.modseq()));
        }
        let canonical = f.name.clone();
        drop(w);
        self.selected = Some(Selected { name: canonical, read_only });
        self.put(out.as_bytes())?;
        let code = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        let cmd = if read_only { "EXAMINE" } else { "SELECT" };
        self.finish(tag, &format!("OK [{code}] {cmd} completed."), true)?;
        Ok(())
    }

    /// CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE (every folder counts as subscribed).
    fn manage(&mut self, tag: &str, name: &str, mut a: Args) -> Result<(), Fail> {
        self.need_auth()?;
        let mbox = a.astring()?;
        let to = if name == "RENAME" { Some(a.astring()?) } else { None };
        a.done()?;
        let answer = {
            let mut w = lock(&self.sh.world);
            match name {
                "CREATE" => {
                    let mbox = mbox.strip_suffix(b"/").unwrap_or(&mbox).to_vec();
                    if w.index(&mbox).is_some() || self.generated(&mbox).is_some() {
                        "NO [ALREADYEXISTS] Mailbox already exists."
                    } else {
                        let v = self.sh.next_uidvalidity.fetch_add(1, Ordering::SeqCst);
                        w.folders.push(Folder::new(mbox, v));
                        "OK Create completed."
                    }
                }
                "DELETE" if same_name(&mbox, b"INBOX") => "NO [CANNOT] INBOX cannot be deleted.",
                "DELETE" => match w.index(&mbox) {
                    Some(i) => {
                        w.folders.remove(i);
                        "OK Delete completed."
                    }
                    None => "NO [NONEXISTENT] Mailbox doesn't exist.",
                },
                "RENAME" => {
                    let to = to.unwrap_or_default();
                    match (w.index(&mbox), w.index(&to)) {
                        (_, Some(_)) => "NO [ALREADYEXISTS] Target mailbox already exists.",
                        (None, None) => "NO [NONEXISTENT] Mailbox doesn't exist.",
                        (Some(i), None) if same_name(&mbox, b"INBOX") => {
                            // RFC 3501 §6.3.5: renaming INBOX moves its messages and leaves it empty.
                            let v = self.sh.next_uidvalidity.fetch_add(1, Ordering::SeqCst);
                            let inbox = &mut w.folders[i];
                            let mut moved = Folder::new(to, v);
                            moved.messages = std::mem::take(&mut inbox.messages);
                            moved.uidnext = inbox.next_uid().max(moved.next_uid());
                            w.folders.push(moved);
                            "OK Rename completed."
                        }
                        (Some(i), None) => {
                            w.folders[i].name = to;
                            "OK Rename completed."
                        }
                    }
                }
                _ if w.index(&mbox).is_some() || self.generated(&mbox).is_some() => "OK Done.",
                _ => "NO [NONEXISTENT] Mailbox doesn't exist.",
            }
        };
        self.finish(tag, answer, true)?;
        Ok(())
    }

    fn append(&mut self, tag: &str, mut a: Args) -> Result<(), Fail> {
        self.need_auth()?;
        let mbox = a.astring()?;
        let mut flags = Vec::new();
        if let Some(Tok::List(_)) = a.peek() {
            let Some(Tok::List(l)) = a.next() else { unreachable!() };
            flags = flag_names(&l)?;
        }
        let mut date = None;
        let mut body = None;
        match a.next() {
            Some(Tok::Str(s)) if a.peek().is_some() => {
                date = Some(String::from_utf8_lossy(&s).into_owned());
                if let Some(Tok::Str(b)) = a.next() {
                    body = Some(b);
                }
            }
            Some(Tok::Str(b)) => body = Some(b),
            _ => {}
        }
        let Some(body) = body else { return bad("APPEND needs a message literal") };
        a.done()?;
        let date = date.unwrap_or_else(|| chrono::Utc::now().format("%d-%b-%Y %H:%M:%S +0000").to_string());
        let flags: Vec<String> = flags.into_iter().filter(|f| !f.eq_ignore_ascii_case("\\Recent")).collect();
        let appended = {
            let mut w = lock(&self.sh.world);
            self.materialize(&mut w, &mbox).map(|i| {
                let f = &mut w.folders[i];
                (f.uidvalidity, f.push(body, flags, date))
            })
        };
        match appended {
            None => self.finish(tag, "NO [TRYCREATE] Mailbox doesn't exist.", true)?,
            Some((v, uid)) if self.has("UIDPLUS") => {
                self.finish(tag, &format!("OK [APPENDUID {v} {uid}] Append completed."), true)?
            }
            Some(_) => self.finish(tag, "OK Append completed.", true)?,
        }
        Ok(())
    }

    fn idle(&mut self, tag: &str) -> Res {
        self.put(b"+ idling\r\n")?;
        self.flush()?;
        let line = self.read_line(true)?;
        self.record(&line, String::new());
        if !line.eq_ignore_ascii_case(b"DONE") {
            self.put(format!("{tag} BAD Expected DONE.\r\n").as_bytes())?;
            return Ok(Flow::Continue);
        }
        self.finish(tag, "OK Idle completed.", true)?;
        Ok(Flow::Continue)
    }

    // ── the selected folder ──

    /// Tells the client what changed in the selected folder since it last looked: removed
    /// messages (`* n EXPUNGE`, or `* VANISHED` with QRESYNC) when `allow_expunge`, then new
    /// ones (`* n EXISTS`).
    fn notify_changes(&mut self, allow_expunge: bool) -> io::Result<()> {
        let Some(sel) = &self.selected else { return Ok(()) };
        let mut out = String::new();
        {
            let w = lock(&self.sh.world);
            let present: &[Msg] = w.folders.iter().find(|f| f.name == sel.name).map_or(&[], |f| &f.messages);
            let has = |uid: u32| present.binary_search_by_key(&uid, |m| m.uid).is_ok();
            if allow_expunge && self.view.iter().any(|&u| !has(u)) {
                let mut kept = Vec::with_capacity(self.view.len());
                let mut gone = Vec::new();
                for &uid in &self.view {
                    if has(uid) {
                        kept.push(uid);
                    } else {
                        gone.push(uid);
                        if !self.qresync {
                            // Ascending, each number valid after the ones before it.
                            out.push_str(&format!("* {} EXPUNGE\r\n", kept.len() + 1));
                        }
                    }
                }
                if self.qresync {
                    out.push_str(&format!("* VANISHED {}\r\n", compress(&gone)));
                }
                self.view = kept;
            }
            let last = self.view.last().copied().unwrap_or(0);
            let before = self.view.len();
            self.view.extend(present.iter().map(|m| m.uid).filter(|&u| u > last));
            if self.view.len() != before {
                out.push_str(&format!("* {} EXISTS\r\n", self.view.len()));
            }
        }
        self.put(out.as_bytes())
    }

    /// [`Script::unsolicited`]: a (true) EXISTS and the flags of message 1.
    fn unsolicited(&mut self) -> io::Result<()> {
        let Some(sel) = &self.selected else { return Ok(()) };
        let mut out = format!("* {} EXISTS\r\n", self.view.len());
        if let Some(&uid) = self.view.first() {
            let w = lock(&self.sh.world);
            if let Some(m) = w.folders.iter().find(|f| f.name == sel.name).and_then(|f| f.msg(uid)) {
                out.push_str(&format!("* 1 FETCH (FLAGS ({})", m.flags.join(" ")));
                if self.condstore {
                    // RFC 7162 §3.2: with CONDSTORE every FETCH response has UID and MODSEQ.
                    out.push_str(&format!(" UID {} MODSEQ ({})", m.uid, m.modseq));
                }
                out.push_str(")\r\n");
            }
        }
        self.put(out.as_bytes())
    }

    /// `(sequence number, uid)` of the messages of `set` in this client's view.
    fn resolve(&self, set: &[(Bound, Bound)], uid_mode: bool) -> Vec<(usize, u32)> {
        let star = if uid_mode { self.view.last().copied().unwrap_or(0) } else { self.view.len() as u32 };
        let ranges: Vec<(u32, u32)> = set
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.value(star), b.value(star));
                (a.min(b), a.max(b))
            })
            .collect();
        self.view
            .iter()
            .enumerate()
            .filter(|&(i, &uid)| {
                let n = if uid_mode { uid } else { i as u32 + 1 };
                ranges.iter().any(|&(lo, hi)| lo <= n && n <= hi)
            })
            .map(|(i, &uid)| (i + 1, uid))
            .collect()
    }

    fn fetch(&mut self, tag: &str, mut a: Args, uid_mode: bool) -> Res {
        let sel = self.need_selected()?;
        let set = parse_set(&a.atom()?)?;
        let items = match a.next() {
            Some(t) => parse_items(t)?,
            None => return bad("Missing FETCH items"),
        };
        let mut changed_since = None;
        if let Some(Tok::List(_)) = a.peek() {
            let Some(Tok::List(m)) = a.next() else { unreachable!() };
            let mut m = Args { t: m, i: 0 };
            while let Some(t) = m.next() {
                match t.atom_upper().as_deref() {
                    Some("CHANGEDSINCE") => changed_since = Some(m.number()?),
                    Some("VANISHED") if self.qresync && uid_mode => {}
                    _ => return bad("Unknown FETCH modifier"),
                }
            }
        }
        a.done()?;
        if changed_since.is_some() || items.iter().any(|i| matches!(i, Item::ModSeq)) {
            self.need_cap("CONDSTORE")?;
            self.condstore = true; // RFC 7162 §3.1: a CONDSTORE-enabling command
        }
        self.drip_now = self.drip_for(Phase::Fetch);
        self.notify_changes(false)?;
        let wants_body = items.iter().any(|i| matches!(i, Item::Body { .. }));
        let marks_seen = items.iter().any(|i| matches!(i, Item::Body { peek: false, .. })) && !sel.read_only;
        let uids: Vec<u32> = self.resolve(&set, uid_mode).into_iter().map(|(_, uid)| uid).collect();
        // The first message sent, its sequence number and its response (for the phantoms).
        let mut first: Option<(usize, Msg, Vec<u8>)> = None;
        for uid in uids {
            // Computed now: a message expunged in mid-answer moves the ones after it down.
            let Ok(at) = self.view.binary_search(&uid) else { continue };
            let seq = at + 1;
            // One message at a time, the world unlocked while it is written (to a slow or
            // dripping client): memory holds one message's response, not the whole answer.
            let bytes = {
                let mut w = lock(&self.sh.world);
                let Some(f) = w.folders.iter_mut().find(|f| f.name == sel.name) else { break };
                let Ok(i) = f.messages.binary_search_by_key(&uid, |m| m.uid) else { continue };
                if changed_since.is_some_and(|c| f.messages[i].modseq <= c) {
                    continue;
                }
                let mut seen_now = false;
                if marks_seen && !f.messages[i].has_flag("\\Seen") {
                    let m = f.bump();
                    f.messages[i].flags.push("\\Seen".into());
                    f.messages[i].modseq = m;
                    seen_now = true;
                }
                let bytes = self.render_fetch(seq, &f.messages[i], &items, uid_mode, seen_now);
                if first.is_none() {
                    first = Some((seq, f.messages[i].clone(), bytes.clone()));
                }
                bytes
            };
            if self.script.unsolicited {
                self.unsolicited()?;
            }
            self.put(&bytes)?;
            let is_first = first.as_ref().is_some_and(|(_, m, _)| m.uid == uid);
            if is_first && self.script.bye_during_fetch && wants_body {
                self.put(b"* BYE Server shutting down.\r\n")?;
                self.flush()?;
                return Ok(Flow::Close);
            }
            if is_first && self.script.expunge_during_fetch && uid_mode {
                if let Some(f) = lock(&self.sh.world).folders.iter_mut().find(|f| f.name == sel.name) {
                    f.messages.retain(|m| m.uid != uid);
                    f.bump();
                }
                self.notify_changes(true)?;
            }
        }
        if uid_mode
            && wants_body
            && let Some((seq, first, first_response)) = first
        {
            for p in self.script.phantoms.clone() {
                let bytes = match p {
                    Phantom::Duplicate => first_response.clone(),
                    Phantom::AlteredDuplicate => {
                        let m = Msg { body: phantom_body(first.uid), ..first.clone() };
                        self.render_fetch(seq, &m, &items, true, false)
                    }
                    Phantom::Uid(_) | Phantom::UidZero => {
                        let uid = if let Phantom::Uid(u) = p { u } else { 0 };
                        let m = Msg { uid, flags: Vec::new(), body: phantom_body(uid), ..first.clone() };
                        self.render_fetch(1, &m, &items, true, false)
                    }
                };
                self.put(&bytes)?;
            }
        }
        self.finish(tag, "OK Fetch completed.", uid_mode)?;
        Ok(Flow::Continue)
    }

    /// One `* seq FETCH (…)` response, literals included.
    fn render_fetch(&self, seq: usize, m: &Msg, items: &[Item], uid_mode: bool, seen_now: bool) -> Vec<u8> {
        #[derive(PartialEq)]
        enum Kind {
            Uid,
            Flags,
            Other,
        }
        let odd = self.script.odd_fetch_order;
        let flags = || {
            let mut f = m.flags.clone();
            if odd {
                f.extend(["$MyUID".to_owned(), "liquid".to_owned()]);
            }
            format!("FLAGS ({})", f.join(" ")).into_bytes()
        };
        let mut parts: Vec<(Kind, Vec<u8>)> = Vec::new();
        for item in items {
            let part = match item {
                Item::Uid => (Kind::Uid, format!("UID {}", m.uid).into_bytes()),
                Item::Flags => (Kind::Flags, flags()),
                Item::Size => {
                    let size = (m.body.len() as i64).saturating_add(self.script.size_delta);
                    (Kind::Other, format!("RFC822.SIZE {size}").into_bytes())
                }
                Item::InternalDate => (Kind::Other, format!("INTERNALDATE \"{}\"", m.internal_date).into_bytes()),
                Item::ModSeq => (Kind::Other, format!("MODSEQ ({})", m.modseq).into_bytes()),
                Item::Body { echo, section, partial, .. } => {
                    let mut p = format!("{echo} ").into_bytes();
                    if self.script.nil_bodies.contains(&m.uid) {
                        p.extend_from_slice(b"NIL");
                    } else {
                        let data = section_bytes(&m.body, section);
                        let data = match partial {
                            Some((start, len)) => {
                                let s = (*start as usize).min(data.len());
                                let e = s.saturating_add(*len as usize).min(data.len());
                                data[s..e].to_vec()
                            }
                            None => data,
                        };
                        let claimed = data.len() as u64 + self.script.overstated_literal.unwrap_or(0);
                        p.extend_from_slice(format!("{{{claimed}}}\r\n").as_bytes());
                        p.extend_from_slice(&data);
                    }
                    (Kind::Other, p)
                }
            };
            if !parts.iter().any(|(k, b)| *k != Kind::Other && *k == part.0 && *b == part.1) {
                parts.push(part);
            }
        }
        // RFC 3501 §6.4.8: a UID command's FETCH responses carry the UID; RFC 7162 §3.1: with
        // CONDSTORE they carry MODSEQ; RFC 3501 §6.4.5: a \Seen set by the fetch is shown.
        if (uid_mode || self.condstore) && !parts.iter().any(|(k, _)| *k == Kind::Uid) {
            parts.insert(0, (Kind::Uid, format!("UID {}", m.uid).into_bytes()));
        }
        if self.condstore && !items.iter().any(|i| matches!(i, Item::ModSeq)) {
            parts.push((Kind::Other, format!("MODSEQ ({})", m.modseq).into_bytes()));
        }
        if seen_now && !parts.iter().any(|(k, _)| *k == Kind::Flags) {
            parts.push((Kind::Flags, flags()));
        }
        if odd {
            // FLAGS first, UID last (after the literal).
            parts.sort_by_key(|(k, _)| match k {
                Kind::Flags => 0,
                Kind::Other => 1,
                Kind::Uid => 2,
            });
        }
        let mut out = format!("* {seq} FETCH (").into_bytes();
        for (i, (_, p)) in parts.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(p);
        }
        out.extend_from_slice(b")\r\n");
        out
    }

    fn store(&mut self, tag: &str, mut a: Args, uid_mode: bool) -> Result<(), Fail> {
        let sel = self.need_selected()?;
        let set = parse_set(&a.atom()?)?;
        let mut unchanged_since = None;
        if let Some(Tok::List(_)) = a.peek() {
            let Some(Tok::List(m)) = a.next() else { unreachable!() };
            let mut m = Args { t: m, i: 0 };
            match m.next().and_then(|t| t.atom_upper()).as_deref() {
                Some("UNCHANGEDSINCE") => unchanged_since = Some(m.number()?),
                _ => return bad("Unknown STORE modifier"),
            }
            m.done()?;
            self.need_cap("CONDSTORE")?;
            self.condstore = true;
        }
        let op = a.atom_upper()?;
        let (op, silent) = match op.strip_suffix(".SILENT") {
            Some(o) => (o.to_owned(), true),
            None => (op, false),
        };
        if !matches!(op.as_str(), "FLAGS" | "+FLAGS" | "-FLAGS") {
            return bad("Unknown STORE operation");
        }
        let mut flags = Vec::new();
        while let Some(t) = a.next() {
            match t {
                Tok::List(l) => flags.extend(flag_names(&l)?),
                Tok::Atom(f) => flags.push(String::from_utf8_lossy(&f).into_owned()),
                Tok::Str(_) => return bad("Invalid flag"),
            }
        }
        if sel.read_only {
            self.finish(tag, "NO [READ-ONLY] Mailbox is read-only.", uid_mode)?;
            return Ok(());
        }
        self.notify_changes(false)?;
        let flags: Vec<String> = flags.into_iter().filter(|f| !f.eq_ignore_ascii_case("\\Recent")).collect();
        let matched = self.resolve(&set, uid_mode);
        let mut modified = Vec::new();
        let mut out = String::new();
        {
            let mut w = lock(&self.sh.world);
            if let Some(f) = w.folders.iter_mut().find(|f| f.name == sel.name) {
                for (seq, uid) in matched {
                    let Ok(i) = f.messages.binary_search_by_key(&uid, |m| m.uid) else { continue };
                    if unchanged_since.is_some_and(|u| f.messages[i].modseq > u) {
                        modified.push(if uid_mode { uid } else { seq as u32 });
                        continue;
                    }
                    let old = &f.messages[i].flags;
                    let mut new: Vec<String> = match op.as_str() {
                        "FLAGS" => Vec::new(),
                        _ => old.clone(),
                    };
                    match op.as_str() {
                        "-FLAGS" => new.retain(|x| !flags.iter().any(|y| y.eq_ignore_ascii_case(x))),
                        _ => {
                            for x in &flags {
                                if !new.iter().any(|y| y.eq_ignore_ascii_case(x)) {
                                    new.push(x.clone());
                                }
                            }
                        }
                    }
                    let same =
                        new.len() == old.len() && new.iter().all(|x| old.iter().any(|y| y.eq_ignore_ascii_case(x)));
                    if !same {
                        let m = f.bump();
                        f.messages[i].flags = new;
                        f.messages[i].modseq = m;
                    }
                    // RFC 7162 §3.1.3: a conditional STORE answers with MODSEQ even if .SILENT.
                    if !silent || (unchanged_since.is_some() && self.condstore) {
                        let m = &f.messages[i];
                        out.push_str(&format!("* {seq} FETCH (FLAGS ({})", m.flags.join(" ")));
                        if uid_mode || self.condstore {
                            out.push_str(&format!(" UID {}", m.uid));
                        }
                        if self.condstore {
                            out.push_str(&format!(" MODSEQ ({})", m.modseq));
                        }
                        out.push_str(")\r\n");
                    }
                }
            }
        }
        self.put(out.as_bytes())?;
        if modified.is_empty() {
            self.finish(tag, "OK Store completed.", uid_mode)?;
        } else {
            self.finish(tag, &format!("OK [MODIFIED {}] Conditional STORE failed.", compress(&modified)), uid_mode)?;
        }
        Ok(())
    }

    fn search(&mut self, tag: &str, mut a: Args, uid_mode: bool) -> Result<(), Fail> {
        let sel = self.need_selected()?;
        let mut ret: Option<Vec<String>> = None;
        if let Some(Tok::Atom(r)) = a.peek()
            && r.eq_ignore_ascii_case(b"RETURN")
        {
            self.need_cap("ESEARCH")?;
            a.next();
            let Some(Tok::List(l)) = a.next() else { return bad("RETURN needs a list") };
            let opts = atoms_upper(&l)?;
            if let Some(o) = opts.iter().find(|o| !matches!(o.as_str(), "MIN" | "MAX" | "COUNT" | "ALL")) {
                return bad(format!("Unsupported RETURN option {o}"));
            }
            ret = Some(if opts.is_empty() { vec!["ALL".into()] } else { opts });
        }
        if let Some(Tok::Atom(c)) = a.peek()
            && c.eq_ignore_ascii_case(b"CHARSET")
        {
            a.next();
            a.astring()?;
        }
        let mut keys = Vec::new();
        while a.peek().is_some() {
            keys.push(parse_key(&mut a)?);
        }
        if keys.is_empty() {
            return bad("Missing search criteria");
        }
        let key = Key::And(keys);
        if key.uses_modseq() {
            self.need_cap("CONDSTORE")?;
            self.condstore = true;
        }
        self.notify_changes(false)?;
        let star_uid = self.view.last().copied().unwrap_or(0);
        let star_seq = self.view.len() as u32;
        let mut found = Vec::new();
        let mut max_modseq = 0;
        {
            let w = lock(&self.sh.world);
            if let Some(f) = w.folders.iter().find(|f| f.name == sel.name) {
                for (i, &uid) in self.view.iter().enumerate() {
                    let Some(m) = f.msg(uid) else { continue };
                    let ctx = Ctx { seq: i as u32 + 1, star_uid, star_seq };
                    if key.matches(m, &ctx) {
                        found.push(if uid_mode { uid } else { ctx.seq });
                        max_modseq = max_modseq.max(m.modseq);
                    }
                }
            }
        }
        let line = match ret {
            Some(opts) => {
                let mut line = format!("* ESEARCH (TAG \"{tag}\")");
                if uid_mode {
                    line.push_str(" UID");
                }
                for o in opts {
                    match (o.as_str(), found.first(), found.last()) {
                        ("MIN", Some(x), _) => line.push_str(&format!(" MIN {x}")),
                        ("MAX", _, Some(x)) => line.push_str(&format!(" MAX {x}")),
                        ("COUNT", _, _) => line.push_str(&format!(" COUNT {}", found.len())),
                        ("ALL", Some(_), _) => line.push_str(&format!(" ALL {}", compress(&found))),
                        _ => {}
                    }
                }
                if key.uses_modseq() && !found.is_empty() {
                    line.push_str(&format!(" MODSEQ {max_modseq}"));
                }
                line + "\r\n"
            }
            None => {
                let mut line = "* SEARCH".to_owned();
                for x in &found {
                    line.push_str(&format!(" {x}"));
                }
                if key.uses_modseq() && !found.is_empty() {
                    line.push_str(&format!(" (MODSEQ {max_modseq})"));
                }
                line + "\r\n"
            }
        };
        self.put(line.as_bytes())?;
        self.finish(tag, "OK Search completed.", uid_mode)?;
        Ok(())
    }

    fn copy(&mut self, tag: &str, mut a: Args, uid_mode: bool, mv: bool) -> Result<(), Fail> {
        let sel = self.need_selected()?;
        if mv {
            self.need_cap("MOVE")?;
        }
        let set = parse_set(&a.atom()?)?;
        let dest = a.astring()?;
        a.done()?;
        if mv && sel.read_only {
            self.finish(tag, "NO [READ-ONLY] Mailbox is read-only.", true)?;
            return Ok(());
        }
        self.notify_changes(false)?;
        let matched = self.resolve(&set, uid_mode);
        let result = {
            let mut w = lock(&self.sh.world);
            match self.materialize(&mut w, &dest) {
                None => None,
                Some(di) => {
                    let msgs: Vec<Msg> = w
                        .folders
                        .iter()
                        .find(|f| f.name == sel.name)
                        .map(|f| matched.iter().filter_map(|&(_, uid)| f.msg(uid).cloned()).collect())
                        .unwrap_or_default();
                    let d = &mut w.folders[di];
                    let src: Vec<u32> = msgs.iter().map(|m| m.uid).collect();
                    let dst: Vec<u32> = msgs.into_iter().map(|m| d.push(m.body, m.flags, m.internal_date)).collect();
                    let validity = d.uidvalidity;
                    if mv && let Some(s) = w.folders.iter_mut().find(|f| f.name == sel.name) {
                        s.messages.retain(|m| !src.contains(&m.uid));
                        if !src.is_empty() {
                            s.bump();
                        }
                    }
                    Some((validity, src, dst))
                }
            }
        };
        let Some((validity, src, dst)) = result else {
            self.finish(tag, "NO [TRYCREATE] Mailbox doesn't exist.", true)?;
            return Ok(());
        };
        // RFC 4315 §3: COPYUID lists the UIDs pairwise, in the same order.
        let code = if self.has("UIDPLUS") && !src.is_empty() {
            format!("[COPYUID {validity} {} {}] ", join_uids(&src), join_uids(&dst))
        } else {
            String::new()
        };
        if mv {
            // RFC 6851 §4.3: COPYUID in an untagged OK before the expunges.
            if !code.is_empty() {
                self.put(format!("* OK {code}Moved UIDs.\r\n").as_bytes())?;
            }
            self.finish(tag, "OK Move completed.", true)?;
        } else {
            self.finish(tag, &format!("OK {code}Copy completed."), true)?;
        }
        Ok(())
    }

    fn expunge(&mut self, tag: &str, mut a: Args, uid_mode: bool) -> Result<(), Fail> {
        let sel = self.need_selected()?;
        let set = if uid_mode { Some(parse_set(&a.atom()?)?) } else { None };
        a.done()?;
        if sel.read_only {
            self.finish(tag, "NO [READ-ONLY] Mailbox is read-only.", true)?;
            return Ok(());
        }
        self.notify_changes(false)?;
        let only: Option<Vec<u32>> = set.map(|s| self.resolve(&s, true).into_iter().map(|(_, u)| u).collect());
        {
            let mut w = lock(&self.sh.world);
            if let Some(f) = w.folders.iter_mut().find(|f| f.name == sel.name) {
                let before = f.messages.len();
                f.messages.retain(|m| !m.has_flag("\\Deleted") || only.as_ref().is_some_and(|o| !o.contains(&m.uid)));
                if f.messages.len() != before {
                    f.bump();
                }
            }
        }
        // The EXPUNGE responses come from comparing the view with the world.
        self.finish(tag, "OK Expunge completed.", true)?;
        Ok(())
    }

    // ── floods ──

    /// Streams [`Script::flood`] if it is for `at`: made as it is sent, 64 KB at a time.
    fn flood(&mut self, at: FloodAt) -> io::Result<()> {
        let Some(f) = self.script.flood.filter(|f| f.at == at) else { return Ok(()) };
        const BLOCK: usize = 64 * 1024;
        let mut sent: u64 = 0;
        match f.kind {
            FloodKind::OkLines => {
                let line = b"* OK flood\r\n";
                let block = line.repeat(BLOCK / line.len());
                while sent < f.bytes {
                    let lines_left = (f.bytes - sent).div_ceil(line.len() as u64);
                    let n = (lines_left as usize).min(block.len() / line.len()) * line.len();
                    self.put(&block[..n])?;
                    sent += n as u64;
                }
            }
            FloodKind::StatusLines => {
                let mut line = b"* STATUS \"flood-000000000\" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 1)\r\n".to_vec();
                // The counter's digits, incremented in place: no formatting per line.
                let digits = 16..25;
                let mut block = Vec::with_capacity(BLOCK + line.len());
                while sent < f.bytes {
                    increment(&mut line[digits.clone()]);
                    block.extend_from_slice(&line);
                    sent += line.len() as u64;
                    if block.len() >= BLOCK || sent >= f.bytes {
                        self.put(&block)?;
                        block.clear();
                    }
                }
            }
            FloodKind::OneLine => {
                let (prefix, suffix): (&[u8], &[u8]) = match at {
                    FloodAt::Greeting => (b"* OK ", b"\r\n"),
                    FloodAt::List => (b"* LIST () \"/\" ", b"\r\n"),
                    FloodAt::Status => (b"* STATUS ", b" (MESSAGES 0)\r\n"),
                };
                self.put(prefix)?;
                let filler = vec![b'x'; BLOCK];
                let mut left = f.bytes.saturating_sub((prefix.len() + suffix.len()) as u64).max(1);
                while left > 0 {
                    let n = left.min(BLOCK as u64) as usize;
                    self.put(&filler[..n])?;
                    left -= n as u64;
                }
                self.put(suffix)?;
            }
        }
        Ok(())
    }
}

/// Adds one to a run of ASCII digits (wrapping at all nines).
fn increment(digits: &mut [u8]) {
    for d in digits.iter_mut().rev() {
        if *d == b'9' {
            *d = b'0';
        } else {
            *d += 1;
            return;
        }
    }
}

fn many_name(i: usize) -> String {
    format!("{MANY_PREFIX}{i:05}")
}

/// The body of a phantom message: recognisably not one the world has.
fn phantom_body(uid: u32) -> Vec<u8> {
    mailgen::message_with(
        "phantom",
        "phantom@backproc.test",
        "you@backproc.test",
        "Mon, 01 Jan 2024 00:00:00 +0000",
        &format!("phantom.{uid}@backproc.test"),
        "This message was never asked for.\n",
    )
}

/// RFC 6154 special-use attributes (hidden when SPECIAL-USE is not advertised).
fn is_special_use(attr: &str) -> bool {
    ["\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash", "\\Important"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(attr))
}

/// A quoted string with `"` and `\` escaped and every other byte as it is (so a deliberately
/// invalid name stays invalid on the wire).
fn quote_raw(name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len() + 2);
    v.push(b'"');
    for &b in name {
        if b == b'"' || b == b'\\' {
            v.push(b'\\');
        }
        v.push(b);
    }
    v.push(b'"');
    v
}

/// LIST pattern matching (RFC 3501 §6.3.8): `*` matches anything, `%` anything but the
/// hierarchy delimiter `/`. `inbox`: the name is INBOX, matched case-insensitively.
fn wildcard(pattern: &[u8], name: &[u8], inbox: bool) -> bool {
    fn m(p: &[u8], n: &[u8], ci: bool) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| m(rest, &n[i..], ci)),
            Some((b'%', rest)) => {
                let stop = n.iter().position(|&b| b == b'/').unwrap_or(n.len());
                (0..=stop).any(|i| m(rest, &n[i..], ci))
            }
            Some((&c, rest)) => n
                .split_first()
                .is_some_and(|(&d, nrest)| (c == d || (ci && c.eq_ignore_ascii_case(&d))) && m(rest, nrest, ci)),
        }
    }
    m(pattern, name, inbox)
}

/// `{n}` or `{n+}` at the end of a line: (where the marker starts, n, synchronising).
fn literal_marker(line: &[u8]) -> Option<(usize, usize, bool)> {
    let l = line.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let inner = &l[open + 1..];
    let (digits, sync) = match inner.strip_suffix(b"+") {
        Some(d) => (d, false),
        None => (inner, true),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((open, n, sync))
}

/// `LOGIN`, `UID FETCH`, … from a logged command line (empty when there is none).
fn command_name(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut words = text.split(' ').skip(1).map(|w| w.to_ascii_uppercase());
    match words.next() {
        Some(w) if w == "UID" => format!("UID {}", words.next().unwrap_or_default()),
        Some(w) => w,
        None => String::new(),
    }
}

// ─────────────────────────────────────── command syntax ──────────────────────────────────────

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// An atom; `[…]` may hold spaces and parentheses (`BODY.PEEK[HEADER.FIELDS (FROM)]`).
    Atom(Vec<u8>),
    /// A quoted string or a literal.
    Str(Vec<u8>),
    List(Vec<Tok>),
}

impl Tok {
    fn astring(self) -> Result<Vec<u8>, Fail> {
        match self {
            Tok::Atom(b) | Tok::Str(b) => Ok(b),
            Tok::List(_) => bad("Expected a string"),
        }
    }

    fn atom_upper(&self) -> Option<String> {
        match self {
            Tok::Atom(b) => Some(String::from_utf8_lossy(b).to_ascii_uppercase()),
            _ => None,
        }
    }
}

enum Flat {
    Tok(Tok),
    Open,
    Close,
}

/// Splits a command into tokens, literals becoming strings.
fn lex(cmd: Cmd) -> Result<Vec<Tok>, String> {
    let mut flat = Vec::new();
    let mut lits = cmd.lits.into_iter();
    for text in &cmd.texts {
        lex_text(text, &mut flat)?;
        if let Some(l) = lits.next() {
            flat.push(Flat::Tok(Tok::Str(l)));
        }
    }
    let mut stack: Vec<Vec<Tok>> = vec![Vec::new()];
    for f in flat {
        match f {
            Flat::Tok(t) => stack.last_mut().expect("never empty").push(t),
            Flat::Open => stack.push(Vec::new()),
            Flat::Close => {
                if stack.len() < 2 {
                    return Err("Unbalanced parentheses".into());
                }
                let l = stack.pop().expect("checked");
                stack.last_mut().expect("checked").push(Tok::List(l));
            }
        }
    }
    if stack.len() != 1 {
        return Err("Unbalanced parentheses".into());
    }
    Ok(stack.pop().expect("checked"))
}

fn lex_text(s: &[u8], out: &mut Vec<Flat>) -> Result<(), String> {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b' ' => i += 1,
            b'(' => {
                out.push(Flat::Open);
                i += 1;
            }
            b')' => {
                out.push(Flat::Close);
                i += 1;
            }
            b'"' => {
                let mut v = Vec::new();
                i += 1;
                loop {
                    match s.get(i) {
                        None => return Err("Unterminated quoted string".into()),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            let Some(&c) = s.get(i + 1) else { return Err("Unterminated quoted string".into()) };
                            v.push(c);
                            i += 2;
                        }
                        Some(&c) => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push(Flat::Tok(Tok::Str(v)));
            }
            _ => {
                let start = i;
                let mut depth = 0usize;
                while i < s.len() {
                    match s[i] {
                        b'[' => depth += 1,
                        b']' => depth = depth.saturating_sub(1),
                        b' ' | b'(' | b')' if depth == 0 => break,
                        _ => {}
                    }
                    i += 1;
                }
                out.push(Flat::Tok(Tok::Atom(s[start..i].to_vec())));
            }
        }
    }
    Ok(())
}

/// A cursor over a command's arguments.
struct Args {
    t: Vec<Tok>,
    i: usize,
}

impl Args {
    fn next(&mut self) -> Option<Tok> {
        let t = self.t.get_mut(self.i).map(|t| std::mem::replace(t, Tok::List(Vec::new())));
        self.i += 1;
        t
    }

    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }

    fn astring(&mut self) -> Result<Vec<u8>, Fail> {
        self.next().map_or_else(|| bad("Missing argument"), Tok::astring)
    }

    fn atom(&mut self) -> Result<Vec<u8>, Fail> {
        match self.next() {
            Some(Tok::Atom(a)) => Ok(a),
            _ => bad("Expected an atom"),
        }
    }

    fn atom_upper(&mut self) -> Result<String, Fail> {
        Ok(String::from_utf8_lossy(&self.atom()?).to_ascii_uppercase())
    }

    fn number(&mut self) -> Result<u64, Fail> {
        let a = self.atom()?;
        std::str::from_utf8(&a).ok().and_then(|s| s.parse().ok()).map_or_else(|| bad("Expected a number"), Ok)
    }

    fn done(&self) -> Result<(), Fail> {
        if self.i < self.t.len() { bad("Unexpected extra arguments") } else { Ok(()) }
    }
}

fn atoms_upper(l: &[Tok]) -> Result<Vec<String>, Fail> {
    l.iter().map(|t| t.atom_upper().map_or_else(|| bad("Expected atoms"), Ok)).collect()
}

/// Every atom in a nested list, upper-cased (SELECT and LIST options).
fn flatten_atoms_upper(l: &[Tok]) -> Vec<String> {
    let mut v = Vec::new();
    for t in l {
        match t {
            Tok::Atom(_) => v.extend(t.atom_upper()),
            Tok::List(inner) => v.extend(flatten_atoms_upper(inner)),
            Tok::Str(_) => {}
        }
    }
    v
}

fn flag_names(l: &[Tok]) -> Result<Vec<String>, Fail> {
    l.iter()
        .map(|t| match t {
            Tok::Atom(f) => Ok(String::from_utf8_lossy(f).into_owned()),
            _ => bad("Invalid flag"),
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    N(u32),
    Star,
}

impl Bound {
    fn value(self, star: u32) -> u32 {
        match self {
            Bound::N(n) => n,
            Bound::Star => star,
        }
    }
}

/// A sequence set (RFC 3501 §9 `sequence-set`): `1:*`, `5`, `3:7,9,12:*`.
fn parse_set(s: &[u8]) -> Result<Vec<(Bound, Bound)>, Fail> {
    let s = std::str::from_utf8(s).map_err(|_| Fail::Bad("Invalid sequence set".into()))?;
    let bound = |x: &str| -> Result<Bound, Fail> {
        match x {
            "*" => Ok(Bound::Star),
            _ => match x.parse::<u32>() {
                Ok(n) if n > 0 && x.bytes().all(|b| b.is_ascii_digit()) => Ok(Bound::N(n)),
                _ => bad("Invalid sequence set"),
            },
        }
    };
    s.split(',')
        .map(|r| match r.split_once(':') {
            Some((a, b)) => Ok((bound(a)?, bound(b)?)),
            None => bound(r).map(|b| (b, b)),
        })
        .collect()
}

/// A sorted set of numbers as ranges: `1:3,7,9:10`.
fn compress(nums: &[u32]) -> String {
    let mut v = nums.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j { v[i].to_string() } else { format!("{}:{}", v[i], v[j]) });
        i = j + 1;
    }
    out.join(",")
}

fn join_uids(uids: &[u32]) -> String {
    uids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

// ── FETCH items ──

#[derive(Debug, Clone, PartialEq, Eq)]
enum Section {
    Full,
    Header,
    Text,
    /// Field names, and whether it is `HEADER.FIELDS.NOT`.
    Fields(Vec<Vec<u8>>, bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Uid,
    Flags,
    Size,
    InternalDate,
    ModSeq,
    Body {
        /// What the answer calls it: `BODY[HEADER]`, `RFC822`, `BODY[]<0>`.
        echo: String,
        section: Section,
        partial: Option<(u32, u32)>,
        peek: bool,
    },
}

fn parse_items(t: Tok) -> Result<Vec<Item>, Fail> {
    let atoms = match t {
        Tok::Atom(a) => vec![a],
        Tok::List(l) => l
            .into_iter()
            .map(|t| match t {
                Tok::Atom(a) => Ok(a),
                _ => bad("Invalid FETCH item"),
            })
            .collect::<Result<_, _>>()?,
        Tok::Str(_) => return bad("Invalid FETCH item"),
    };
    let mut items = Vec::new();
    for a in atoms {
        let text = String::from_utf8_lossy(&a).into_owned();
        let upper = text.to_ascii_uppercase();
        let body = |echo: &str, section, peek| Item::Body { echo: echo.into(), section, partial: None, peek };
        match upper.as_str() {
            "UID" => items.push(Item::Uid),
            "FLAGS" => items.push(Item::Flags),
            "RFC822.SIZE" => items.push(Item::Size),
            "INTERNALDATE" => items.push(Item::InternalDate),
            "MODSEQ" => items.push(Item::ModSeq),
            "FAST" => items.extend([Item::Flags, Item::InternalDate, Item::Size]),
            "RFC822" => items.push(body("RFC822", Section::Full, false)),
            "RFC822.HEADER" => items.push(body("RFC822.HEADER", Section::Header, true)),
            "RFC822.TEXT" => items.push(body("RFC822.TEXT", Section::Text, false)),
            _ if upper.starts_with("BODY[") || upper.starts_with("BODY.PEEK[") => items.push(parse_body(&text)?),
            _ => return bad(format!("Unsupported FETCH item {text}")),
        }
    }
    Ok(items)
}

/// `BODY[section]<partial>` / `BODY.PEEK[…]`.
fn parse_body(text: &str) -> Result<Item, Fail> {
    let open = text.find('[').expect("checked by the caller");
    let close = text.rfind(']').map_or_else(|| bad("Missing ]"), Ok)?;
    let peek = text[..open].eq_ignore_ascii_case("BODY.PEEK");
    let inner = &text[open + 1..close];
    let upper = inner.to_ascii_uppercase();
    let fields = |prefix: &str, not: bool| -> Result<Section, Fail> {
        let list = upper[prefix.len()..].trim();
        let list =
            list.strip_prefix('(').and_then(|l| l.strip_suffix(')')).map_or_else(|| bad("Invalid field list"), Ok)?;
        Ok(Section::Fields(list.split_whitespace().map(|f| f.trim_matches('"').as_bytes().to_vec()).collect(), not))
    };
    let section = match upper.as_str() {
        "" => Section::Full,
        "HEADER" => Section::Header,
        "TEXT" => Section::Text,
        _ if upper.starts_with("HEADER.FIELDS.NOT") => fields("HEADER.FIELDS.NOT", true)?,
        _ if upper.starts_with("HEADER.FIELDS") => fields("HEADER.FIELDS", false)?,
        _ => return bad(format!("Unsupported section [{inner}]")),
    };
    let rest = &text[close + 1..];
    let partial = if rest.is_empty() {
        None
    } else {
        let p = rest.strip_prefix('<').and_then(|r| r.strip_suffix('>')).map_or_else(|| bad("Invalid partial"), Ok)?;
        let (s, l) = p.split_once('.').map_or_else(|| bad("Invalid partial"), Ok)?;
        match (s.parse(), l.parse()) {
            (Ok(s), Ok(l)) => Some((s, l)),
            _ => return bad("Invalid partial"),
        }
    };
    let mut echo = format!("BODY[{upper}]");
    if let Some((s, _)) = partial {
        echo.push_str(&format!("<{s}>"));
    }
    Ok(Item::Body { echo, section, partial, peek })
}

/// The header block, blank line included (the whole message when it has no blank line).
fn header_len(body: &[u8]) -> usize {
    let crlf = body.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = body.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(body.len()),
    }
}

fn section_bytes(body: &[u8], section: &Section) -> Vec<u8> {
    let h = header_len(body);
    match section {
        Section::Full => body.to_vec(),
        Section::Header => body[..h].to_vec(),
        Section::Text => body[h..].to_vec(),
        Section::Fields(names, not) => {
            // Fields with their folded continuation lines, then the blank line.
            let mut out = Vec::new();
            let mut keep = false;
            for line in body[..h].split_inclusive(|&b| b == b'\n') {
                if line == b"\r\n" || line == b"\n" {
                    break;
                }
                if !matches!(line.first(), Some(b' ' | b'\t')) {
                    let name = line.split(|&b| b == b':').next().unwrap_or_default();
                    keep = names.iter().any(|n| n.eq_ignore_ascii_case(name.trim_ascii())) != *not;
                }
                if keep {
                    out.extend_from_slice(line);
                }
            }
            out.extend_from_slice(b"\r\n");
            out
        }
    }
}

// ── SEARCH ──

enum Key {
    All,
    Uid(Vec<(Bound, Bound)>),
    Seq(Vec<(Bound, Bound)>),
    /// A flag the message must have (true) or lack (false).
    Flag(String, bool),
    /// RECENT / NEW: nothing is ever \Recent here.
    Nothing,
    Larger(u64),
    Smaller(u64),
    ModSeq(u64),
    Not(Box<Key>),
    Or(Box<Key>, Box<Key>),
    And(Vec<Key>),
}

struct Ctx {
    seq: u32,
    star_uid: u32,
    star_seq: u32,
}

fn in_set(set: &[(Bound, Bound)], n: u32, star: u32) -> bool {
    set.iter().any(|&(a, b)| {
        let (a, b) = (a.value(star), b.value(star));
        a.min(b) <= n && n <= a.max(b)
    })
}

impl Key {
    fn matches(&self, m: &Msg, c: &Ctx) -> bool {
        match self {
            Key::All => true,
            Key::Uid(s) => in_set(s, m.uid, c.star_uid),
            Key::Seq(s) => in_set(s, c.seq, c.star_seq),
            Key::Flag(f, want) => m.has_flag(f) == *want,
            Key::Nothing => false,
            Key::Larger(n) => m.body.len() as u64 > *n,
            Key::Smaller(n) => (m.body.len() as u64) < *n,
            Key::ModSeq(n) => m.modseq >= *n,
            Key::Not(k) => !k.matches(m, c),
            Key::Or(a, b) => a.matches(m, c) || b.matches(m, c),
            Key::And(ks) => ks.iter().all(|k| k.matches(m, c)),
        }
    }

    fn uses_modseq(&self) -> bool {
        match self {
            Key::ModSeq(_) => true,
            Key::Not(k) => k.uses_modseq(),
            Key::Or(a, b) => a.uses_modseq() || b.uses_modseq(),
            Key::And(ks) => ks.iter().any(Key::uses_modseq),
            _ => false,
        }
    }
}

fn parse_key(a: &mut Args) -> Result<Key, Fail> {
    let t = a.next().map_or_else(|| bad("Missing search key"), Ok)?;
    let word = match t {
        Tok::List(l) => {
            let mut inner = Args { t: l, i: 0 };
            let mut keys = Vec::new();
            while inner.peek().is_some() {
                keys.push(parse_key(&mut inner)?);
            }
            return Ok(Key::And(keys));
        }
        Tok::Str(_) => return bad("Unexpected string in search"),
        Tok::Atom(w) => w,
    };
    let upper = String::from_utf8_lossy(&word).to_ascii_uppercase();
    let flag = |f: &str, want| Ok(Key::Flag(f.into(), want));
    match upper.as_str() {
        "ALL" | "OLD" => Ok(Key::All),
        "UID" => Ok(Key::Uid(parse_set(&a.atom()?)?)),
        "ANSWERED" => flag("\\Answered", true),
        "UNANSWERED" => flag("\\Answered", false),
        "DELETED" => flag("\\Deleted", true),
        "UNDELETED" => flag("\\Deleted", false),
        "DRAFT" => flag("\\Draft", true),
        "UNDRAFT" => flag("\\Draft", false),
        "FLAGGED" => flag("\\Flagged", true),
        "UNFLAGGED" => flag("\\Flagged", false),
        "SEEN" => flag("\\Seen", true),
        "UNSEEN" => flag("\\Seen", false),
        "KEYWORD" => Ok(Key::Flag(String::from_utf8_lossy(&a.atom()?).into_owned(), true)),
        "UNKEYWORD" => Ok(Key::Flag(String::from_utf8_lossy(&a.atom()?).into_owned(), false)),
        "RECENT" | "NEW" => Ok(Key::Nothing),
        "LARGER" => Ok(Key::Larger(a.number()?)),
        "SMALLER" => Ok(Key::Smaller(a.number()?)),
        "MODSEQ" => {
            // RFC 7162 §3.1.5: an optional entry name and entry type before the number.
            if let Some(Tok::Str(_)) = a.peek() {
                a.next();
                a.next();
            }
            Ok(Key::ModSeq(a.number()?))
        }
        "NOT" => Ok(Key::Not(Box::new(parse_key(a)?))),
        "OR" => Ok(Key::Or(Box::new(parse_key(a)?), Box::new(parse_key(a)?))),
        _ if word.first().is_some_and(|b| b.is_ascii_digit() || *b == b'*') => Ok(Key::Seq(parse_set(&word)?)),
        _ => bad(format!("Unsupported search key {upper}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(lines: &[&[u8]], lits: &[&[u8]]) -> Cmd {
        Cmd {
            texts: lines.iter().map(|l| l.to_vec()).collect(),
            lits: lits.iter().map(|l| l.to_vec()).collect(),
            logged: Vec::new(),
        }
    }

    #[test]
    fn lexes_atoms_strings_lists_brackets_and_literals() {
        let t = lex(cmd(&[b"a UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.10> FLAGS)"], &[])).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(
            t[4],
            Tok::List(vec![
                Tok::Atom(b"UID".to_vec()),
                Tok::Atom(b"BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.10>".to_vec()),
                Tok::Atom(b"FLAGS".to_vec())
            ])
        );
        let t = lex(cmd(&[b"b LOGIN ", b" ", b""], &[b"us er", b"p\"w"])).unwrap();
        assert_eq!(t[2..], [Tok::Str(b"us er".to_vec()), Tok::Str(b"p\"w".to_vec())]);
        let t = lex(cmd(&[b"c LOGIN \"a\\\"b\" \"\\\\\""], &[])).unwrap();
        assert_eq!(t[2..], [Tok::Str(b"a\"b".to_vec()), Tok::Str(b"\\".to_vec())]);
        assert!(lex(cmd(&[b"d X (a"], &[])).is_err());
        assert!(lex(cmd(&[b"d X \"open"], &[])).is_err());
    }

    #[test]
    fn literal_markers() {
        assert_eq!(literal_marker(b"a LOGIN {4}"), Some((8, 4, true)));
        assert_eq!(literal_marker(b"a APPEND x {12+}"), Some((11, 12, false)));
        assert_eq!(literal_marker(b"a X {}"), None);
        assert_eq!(literal_marker(b"a X {1a}"), None);
        assert_eq!(literal_marker(b"a X"), None);
    }

    #[test]
    fn sets_and_stars() {
        let s = parse_set(b"3:7,9,12:*").unwrap();
        let hits: Vec<u32> = (1..=20).filter(|&n| in_set(&s, n, 15)).collect();
        assert_eq!(hits, [3, 4, 5, 6, 7, 9, 12, 13, 14, 15]);
        // RFC 3501 §6.4.8: 30:* with 15 the highest UID is 15:30, which holds 15.
        assert!(in_set(&parse_set(b"30:*").unwrap(), 15, 15));
        assert!(parse_set(b"0").is_err() && parse_set(b"1:x").is_err() && parse_set(b"").is_err());
        assert_eq!(compress(&[9, 1, 2, 3, 7, 10]), "1:3,7,9:10");
    }

    #[test]
    fn wildcards() {
        assert!(wildcard(b"*", b"a/b/c", false));
        assert!(wildcard(b"%", b"abc", false) && !wildcard(b"%", b"a/b", false));
        assert!(wildcard(b"a/%", b"a/b", false) && !wildcard(b"a/%", b"a/b/c", false));
        assert!(wildcard(b"inbox", b"INBOX", true) && !wildcard(b"sent", b"Sent", false));
    }

    #[test]
    fn header_fields_with_folding() {
        let m = b"From: a\r\nSubject: one\r\n two\r\nTo: b\r\n\r\nbody\r\n";
        assert_eq!(
            section_bytes(m, &Section::Fields(vec![b"subject".to_vec()], false)),
            b"Subject: one\r\n two\r\n\r\n"
        );
        assert_eq!(section_bytes(m, &Section::Fields(vec![b"SUBJECT".to_vec()], true)), b"From: a\r\nTo: b\r\n\r\n");
        assert_eq!(section_bytes(m, &Section::Text), b"body\r\n");
        assert_eq!(section_bytes(m, &Section::Header).len(), m.len() - 6);
    }

    #[test]
    fn status_flood_counter() {
        let mut d = *b"000000999";
        increment(&mut d);
        assert_eq!(&d, b"000001000");
    }
}
