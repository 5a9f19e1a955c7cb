//! The same sync scenarios against Dovecot, Cyrus and Courier (issue 17's "Tests"), with the
//! real binary in a temp home: the initial sync of a mailbox with keywords (Cyrus puts FLAGS
//! before UID, and keywords ending in "uid" once hid the UID), the no-change resync and the
//! commands it costs, changes on both sides, a UIDVALIDITY change, and a store that heals.
//!
//! Each scenario is one function over a `Kind`; `servers!` makes one `#[test]` per server.
//! The server is set up and checked through `ImapAdmin` (raw IMAP, the same way on all three);
//! the store is read through `mail list --json` (flags and keywords) and the store library
//! (bodies). Flags compare as sets, keywords without regard to case.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::mailworld::{EVERY_SECOND, add_account_at, set_all_folders_high};
use crate::util::{Home, stderr, stdout};
use backproc_testkit::hostile::sha256;
use backproc_testkit::{Courier, Cyrus, Dovecot, FaultProxy, ImapAdmin, mailgen, mutf7_encode};

const USER: &str = "alice";
const PASSWORD: &str = "s3cr3t-Pa55";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dovecot,
    /// Dovecot offering CONDSTORE without QRESYNC: the path of a server with one and not the
    /// other (the UID set is read with UID SEARCH instead of VANISHED).
    DovecotCondstore,
    Cyrus,
    Courier,
}

/// What `Kind::DovecotCondstore` offers after login: Dovecot 2.3's own list without QRESYNC.
const CONDSTORE_ONLY: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT THREAD=REFERENCES MULTIAPPEND \
UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH \
LIST-STATUS BINARY MOVE LITERAL+ SPECIAL-USE";

/// The running server; only kept alive (dropping it stops the server).
#[allow(dead_code)]
enum Running {
    Dovecot(Dovecot),
    Cyrus(Cyrus),
    Courier(Courier),
}

/// One server with user alice, and how it names folders.
struct Server {
    kind: Kind,
    _running: Running,
    port: u16,
    /// Personal namespace prefix and hierarchy separator.
    prefix: &'static str,
    sep: char,
}

impl Server {
    fn start(kind: Kind) -> Server {
        let (running, port, prefix, sep) = match kind {
            Kind::Dovecot | Kind::DovecotCondstore => {
                let opts = backproc_testkit::DovecotOptions {
                    imap_capability: (kind == Kind::DovecotCondstore).then(|| CONDSTORE_ONLY.to_owned()),
                    ..Default::default()
                };
                let d = Dovecot::start_with(opts).expect("start dovecot");
                d.add_user(USER, PASSWORD).unwrap();
                let p = d.imap_port();
                (Running::Dovecot(d), p, "", '/')
            }
            Kind::Cyrus => {
                let c = Cyrus::start().expect("start cyrus");
                c.add_user(USER, PASSWORD).unwrap();
                let p = c.imap_port();
                (Running::Cyrus(c), p, "", '/')
            }
            Kind::Courier => {
                let c = Courier::start().expect("start courier");
                c.add_user(USER, PASSWORD).unwrap();
                let p = c.imap_port();
                (Running::Courier(c), p, "INBOX.", '.')
            }
        };
        let server = Server { kind, _running: running, port, prefix, sep };
        if kind == Kind::DovecotCondstore {
            let admin = server.admin();
            assert!(
                admin.has_capability("CONDSTORE") && !admin.has_capability("QRESYNC"),
                "{:?}",
                admin.capabilities()
            );
        }
        server
    }

    fn admin(&self) -> ImapAdmin {
        ImapAdmin::login(self.port, USER, PASSWORD).unwrap_or_else(|e| panic!("{:?}: {e:#}", self.kind))
    }

    /// The raw (modified UTF-7) name of a folder of the personal namespace given by its path.
    fn mailbox(&self, path: &[&str]) -> String {
        let parts: Vec<String> = path.iter().map(|p| mutf7_encode(p)).collect();
        format!("{}{}", self.prefix, parts.join(&self.sep.to_string()))
    }

    /// Whether the server offers CONDSTORE (Dovecot and Cyrus also QRESYNC; Courier neither).
    fn condstore(&self) -> bool {
        self.kind != Kind::Courier
    }
}

/// A flag set as compared: lower case (keywords are case-insensitive; system flags too), no
/// `\Recent`.
type FlagSet = BTreeSet<String>;

fn flag_set<S: AsRef<str>>(words: impl IntoIterator<Item = S>) -> FlagSet {
    words.into_iter().map(|w| w.as_ref().to_ascii_lowercase()).filter(|w| w != "\\recent").collect()
}

/// A folder's messages by UID: flags and the SHA-256 of the body.
type FolderState = BTreeMap<u32, (FlagSet, [u8; 32])>;

/// What `World::snapshot` compares: (name, UIDVALIDITY, last seen UID, HIGHESTMODSEQ) of the
/// folders, (row id, UID, flags, body hash) of the messages, the queue depths.
type Snapshot = (Vec<(String, Option<i64>, i64, Option<i64>)>, Vec<(i64, u32, FlagSet, [u8; 32])>, (i64, i64, i64));

/// A home with one account on `server` (directly, or through a `FaultProxy`), and the raw
/// names of the folders the scenario set up.
struct World {
    server: Server,
    proxy: Option<FaultProxy>,
    home: Home,
    account: i64,
    folders: Vec<String>,
}

/// The scenario's folders: INBOX, a non-ASCII name (modified UTF-7, with `&`; an emoji is
/// UTF-16 surrogates there, which Courier refuses: `NO Error in IMAP command`) and a nested one.
const NON_ASCII: &[&str] = &["Entwürfe 📬 & 日本語"];
const NON_ASCII_BMP: &[&str] = &["Entwürfe & 日本語"];
const NESTED: &[&str] = &["Projekte", "2024", "Q1"];

impl World {
    fn start(kind: Kind, with_proxy: bool) -> World {
        let server = Server::start(kind);
        let proxy =
            with_proxy.then(|| FaultProxy::start(format!("127.0.0.1:{}", server.port).parse().unwrap()).unwrap());
        // COMPRESS=DEFLATE with a loopback server too: Cyrus offers it, and its scenarios run
        // through it.
        let home = Home::with_config(&format!("{EVERY_SECOND}define('EMAIL_BG_IMAP_COMPRESS', 2);\n"));
        let port = proxy.as_ref().map_or(server.port, |p| p.port());
        let account = add_account_at(&home, USER, PASSWORD, "none", port, &[]);
        let non_ascii = if kind == Kind::Courier { NON_ASCII_BMP } else { NON_ASCII };
        let folders = vec!["INBOX".to_string(), server.mailbox(non_ascii), server.mailbox(NESTED)];
        let mut a = server.admin();
        let (prefix, sep) = a.namespace().unwrap();
        assert_eq!((prefix.as_slice(), sep), (server.prefix.as_bytes(), Some(server.sep)), "{kind:?}: NAMESPACE");
        for f in &folders[1..] {
            a.create(f).unwrap_or_else(|e| panic!("{kind:?}: {e:#}"));
        }
        a.logout();
        World { server, proxy, home, account, folders }
    }

    fn kind(&self) -> Kind {
        self.server.kind
    }

    /// Appends `msgs` with `mailgen::flags_for(i)` to `folder`; their UIDs.
    fn populate(&self, folder: &str, msgs: &[Vec<u8>]) -> Vec<u32> {
        let batch: Vec<(Vec<&str>, &[u8])> =
            msgs.iter().enumerate().map(|(i, m)| (mailgen::flags_for(i), m.as_slice())).collect();
        let mut a = self.server.admin();
        let uids = a.append_many(folder, &batch).unwrap_or_else(|e| panic!("{:?}: {e:#}", self.kind()));
        a.logout();
        uids.into_iter().map(|u| u.expect("APPENDUID (all three have UIDPLUS)")).collect()
    }

    fn store(&self) -> backproc_store::Store {
        backproc_store::Store::open(&self.home.file("data/backproc.sqlite")).expect("open store")
    }

    fn run_once(&self) {
        let o = self.home.run(&["run", "--once"]);
        assert!(
            o.status.success(),
            "{:?}: run --once failed: {}\n{}",
            self.kind(),
            stderr(&o),
            self.home.log("l-info.log")
        );
    }

    /// Every folder high and the intervals passed: the next run does a full sync of each.
    fn make_full_sync_due(&self) {
        set_all_folders_high(&self.home);
        self.home.pass_time(2);
    }

    fn folder_id(&self, raw: &str) -> i64 {
        self.store()
            .folders(Some(self.account))
            .unwrap()
            .into_iter()
            .find(|f| f.name == raw)
            .unwrap_or_else(|| panic!("{:?}: folder {raw:?} not in the store", self.kind()))
            .id
    }

    fn server_folder(&self, raw: &str) -> FolderState {
        let mut a = self.server.admin();
        let got = a.fetch_all(raw).unwrap_or_else(|e| panic!("{:?}: {e:#}", self.kind()));
        a.logout();
        got.into_iter().map(|m| (m.uid, (flag_set(&m.flags), sha256(&m.body)))).collect()
    }

    /// `mail list --json` of a folder (every message the user sees).
    fn mail_list(&self, raw: &str) -> Vec<serde_json::Value> {
        let acct = self.account.to_string();
        let o = self.home.run(&["mail", "list", "--account", &acct, "--folder", raw, "--limit", "1000000", "--json"]);
        assert!(o.status.success(), "mail list: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("mail list --json");
        v.as_array().expect("an array").clone()
    }

    /// The store's view of a folder: `mail list --json` for UIDs, flags and keywords, the
    /// store for the bytes.
    fn store_folder(&self, raw: &str) -> FolderState {
        let store = self.store();
        let fid = self.folder_id(raw);
        let mut out = FolderState::new();
        for m in self.mail_list(raw) {
            let uid = m["uid"].as_i64().unwrap();
            let raw_bytes = store.message_raw(fid, uid).unwrap().unwrap_or_else(|| panic!("no body for UID {uid}"));
            let prev = out.insert(uid as u32, (json_flags(&m["flags"]), sha256(&raw_bytes)));
            assert!(prev.is_none(), "{:?}: UID {uid} twice in {raw}", self.kind());
        }
        out
    }

    /// The store's row id of a message, by folder and UID.
    fn row_id(&self, raw: &str, uid: u32) -> i64 {
        self.mail_list(raw)
            .into_iter()
            .find(|m| m["uid"].as_i64() == Some(i64::from(uid)))
            .unwrap_or_else(|| panic!("{:?}: UID {uid} not in the store's {raw}", self.kind()))["id"]
            .as_i64()
            .unwrap()
    }

    fn mail(&self, args: &[&str]) {
        let o = self.home.run(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }

    /// The store equals the server for every folder the scenario set up: UID sets, flags and
    /// keywords of every message, the bytes; nothing is left queued.
    fn assert_same(&self, when: &str) {
        let k = self.kind();
        for f in &self.folders {
            let server = self.server_folder(f);
            let local = self.store_folder(f);
            let (s, l): (BTreeSet<u32>, BTreeSet<u32>) =
                (server.keys().copied().collect(), local.keys().copied().collect());
            assert_eq!(
                l,
                s,
                "{k:?} {when}: UID set of {f} (missing here: {:?}, extra here: {:?})\n{}",
                s.difference(&l).collect::<Vec<_>>(),
                l.difference(&s).collect::<Vec<_>>(),
                self.home.log("l-info.log")
            );
            for (uid, (sf, sh)) in &server {
                let (lf, lh) = &local[uid];
                assert_eq!(lf, sf, "{k:?} {when}: flags of UID {uid} in {f}");
                assert!(lh == sh, "{k:?} {when}: body of UID {uid} in {f} differs");
            }
        }
        let store = self.store();
        assert_eq!(store.receive_queue_depths().unwrap(), (0, 0, 0), "{k:?} {when}: receive queue");
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }

    /// Everything of the store a resync could change: per folder its watermarks and every
    /// message (row id, UID, flags, body), plus the queue. `all`: every folder and its
    /// HIGHESTMODSEQ too; else only the scenario's folders, without it (a pass after our own
    /// flag pushes reads them back once: CONDSTORE counts them as changes).
    fn snapshot(&self, all: bool) -> Snapshot {
        let store = self.store();
        let mut folders = Vec::new();
        let mut msgs = Vec::new();
        for f in store.folders(Some(self.account)).unwrap() {
            if !all && !self.folders.contains(&f.name) {
                continue;
            }
            folders.push((f.name.clone(), f.uidvalidity, f.last_seen_uid, f.highest_modseq.filter(|_| all)));
            if f.gone || f.unusable.is_some() {
                continue;
            }
            for m in self.mail_list(&f.name) {
                let uid = m["uid"].as_i64().unwrap();
                let raw = store.message_raw(f.id, uid).unwrap().unwrap_or_default();
                msgs.push((m["id"].as_i64().unwrap(), uid as u32, json_flags(&m["flags"]), sha256(&raw)));
            }
        }
        msgs.sort();
        (folders, msgs, store.receive_queue_depths().unwrap())
    }

    /// One more full pass after the scenario changes nothing on either side: no change is
    /// pushed again, nothing downloaded or healed twice.
    fn assert_stable(&self, when: &str) {
        let k = self.kind();
        self.make_full_sync_due();
        let store = self.snapshot(false);
        let server: Vec<FolderState> = self.folders.iter().map(|f| self.server_folder(f)).collect();
        let log_at = self.home.log("l-info.log").len();
        self.run_once();
        let log = self.info_since(log_at);
        assert_eq!(self.snapshot(false), store, "{k:?}: the pass after {when} changed the store\n{log}");
        let again: Vec<FolderState> = self.folders.iter().map(|f| self.server_folder(f)).collect();
        assert!(again == server, "{k:?}: the pass after {when} changed the server\n{log}");
        // (Dovecot: a message deleted here to Trash arrives in the store's Trash now.)
        let trash = self.store().folders(Some(self.account)).unwrap().into_iter().find(|f| f.name == "Trash");
        let in_trash = trash.map_or(0, |t| received_in(&log, self.account, t.id));
        assert!(in_trash <= 1 && received(&log) == in_trash, "{k:?}: {log}");
    }

    /// The new part of `logs/l-info.log` since `from` bytes.
    fn info_since(&self, from: usize) -> String {
        self.home.log("l-info.log").get(from..).unwrap_or_default().to_string()
    }
}

/// A `mail list --json` flags object as a set of IMAP words.
fn json_flags(f: &serde_json::Value) -> FlagSet {
    let mut words = Vec::new();
    for (key, word) in [
        ("seen", "\\Seen"),
        ("answered", "\\Answered"),
        ("flagged", "\\Flagged"),
        ("draft", "\\Draft"),
        ("deleted", "\\Deleted"),
    ] {
        if f[key].as_bool().unwrap_or_else(|| panic!("no {key} in {f}")) {
            words.push(word.to_string());
        }
    }
    for k in f["keywords"].as_array().unwrap_or_else(|| panic!("no keywords in {f}")) {
        words.push(k.as_str().unwrap().to_string());
    }
    flag_set(words)
}

/// The sum of `received N new messages` in a log text.
fn received(log: &str) -> u64 {
    regex::Regex::new(r"received (\d+) new messages")
        .unwrap()
        .captures_iter(log)
        .map(|c| c[1].parse::<u64>().unwrap())
        .sum()
}

/// The sum of `received N new messages` of one folder (the log's `[account,folder]`).
fn received_in(log: &str, account: i64, folder: i64) -> u64 {
    let re = regex::Regex::new(&format!(r"received (\d+) new messages in \d+s \[{account},{folder}\]")).unwrap();
    re.captures_iter(log).map(|c| c[1].parse::<u64>().unwrap()).sum()
}

/// The commands a client sent, one string each (literal bytes left out, `{N}` kept), from the
/// proxy's capture.
fn commands(wire: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < wire.len() {
        let end = wire[i..].windows(2).position(|w| w == b"\r\n").map_or(wire.len(), |p| i + p);
        let line = &wire[i..end];
        i = (end + 2).min(wire.len());
        cur.extend_from_slice(line);
        if let Some(n) = literal_len(line) {
            // the literal's bytes are data, not a command line
            i = (i + n).min(wire.len());
            cur.extend_from_slice(b" <literal>");
            continue;
        }
        out.push(String::from_utf8_lossy(&cur).into_owned());
        cur.clear();
    }
    out
}

/// N when a command line ends in `{N}` or `{N+}`.
fn literal_len(line: &[u8]) -> Option<usize> {
    let l = line.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let digits = l[open + 1..].strip_suffix(b"+").unwrap_or(&l[open + 1..]);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The command's name: `STATUS`, `EXAMINE`, `UID FETCH`, …
fn verb(cmd: &str) -> String {
    let mut t = cmd.split(' ').skip(1).map(str::to_ascii_uppercase);
    match t.next() {
        Some(v) if v == "UID" => format!("UID {}", t.next().unwrap_or_default()),
        Some(v) => v,
        None => String::new(),
    }
}

macro_rules! servers {
    ($($scenario:ident),* $(,)?) => {
        mod dovecot {
            $(#[test] fn $scenario() { super::$scenario(super::Kind::Dovecot) })*
        }
        mod dovecot_condstore {
            $(#[test] fn $scenario() { super::$scenario(super::Kind::DovecotCondstore) })*
        }
        mod cyrus {
            $(#[test] fn $scenario() { super::$scenario(super::Kind::Cyrus) })*
        }
        mod courier {
            $(#[test] fn $scenario() { super::$scenario(super::Kind::Courier) })*
        }
    };
}

servers!(initial_sync, no_change_resync, changes_both_ways, uidvalidity_change, heals_a_missing_message);

/// 300 messages in INBOX and more in a non-ASCII and a nested folder, with flags and keywords
/// (`$MyUID` and `liquid` end in "uid"; Cyrus sends FLAGS before UID): the store equals the
/// server. Before the tokenizer, Cyrus lost every message with such a keyword here.
fn initial_sync(kind: Kind) {
    let started = Instant::now();
    let w = World::start(kind, false);
    let inbox = mailgen::mailbox(17, 300);
    let uids = w.populate("INBOX", &inbox);
    w.populate(&w.folders[1], &mailgen::mailbox(18, 25));
    w.populate(&w.folders[2], &(0..15).map(|i| mailgen::text_message(19, i)).collect::<Vec<_>>());
    let loaded = started.elapsed();
    w.run_once();
    w.assert_same("after the initial sync");
    let info = w.home.log("l-info.log");
    assert_eq!(received(&info), 340, "{kind:?}: {info}");
    // Cyrus offers COMPRESS=DEFLATE: the sync above went through it, byte-identical.
    assert_eq!(w.home.log("l-debug.log").contains("COMPRESS=DEFLATE on"), kind == Kind::Cyrus, "{kind:?}");

    // The keywords really are there (not only equal on both sides).
    let local = w.store_folder("INBOX");
    for (i, uid) in uids.iter().enumerate() {
        assert_eq!(local[uid].0, flag_set(mailgen::flags_for(i)), "{kind:?}: flags of INBOX message {i} (UID {uid})");
    }
    let with = |k: &str| local.values().filter(|(f, _)| f.contains(k)).count();
    assert_eq!((with("$myuid"), with("liquid"), with("$label1"), with("nonjunk")), (75, 60, 43, 50), "{kind:?}");

    // Every folder the server lists as selectable, and only those, is in the store (Cyrus
    // creates a nested folder's parents as folders, Courier lists them \Noselect).
    let mut a = w.server.admin();
    let listed: BTreeSet<String> = a
        .list()
        .unwrap()
        .into_iter()
        .filter(|(attrs, _, _)| {
            !attrs.iter().any(|x| x.eq_ignore_ascii_case("\\Noselect") || x.eq_ignore_ascii_case("\\NonExistent"))
        })
        .map(|(_, _, name)| String::from_utf8(name).unwrap())
        .collect();
    a.logout();
    let stored: BTreeSet<String> = w
        .store()
        .folders(Some(w.account))
        .unwrap()
        .into_iter()
        .filter(|f| !f.gone && f.unusable.is_none())
        .map(|f| f.name)
        .collect();
    assert_eq!(stored, listed, "{kind:?}: the store's folders");

    // Folder names as people read them: decoded, the namespace prefix left out.
    let names: Vec<(String, String)> =
        w.store().folders(Some(w.account)).unwrap().into_iter().map(|f| (f.name, f.display_name)).collect();
    let shown = |raw: &str| names.iter().find(|(n, _)| n == raw).map(|(_, d)| d.clone());
    let non_ascii = if kind == Kind::Courier { NON_ASCII_BMP[0] } else { NON_ASCII[0] };
    assert_eq!(shown(&w.folders[1]).as_deref(), Some(non_ascii), "{kind:?}: {names:?}");
    let sep = w.server.sep.to_string();
    assert_eq!(shown(&w.folders[2]), Some(NESTED.join(&sep)), "{kind:?}: {names:?}");
    eprintln!("{kind:?}: initial sync scenario {:?} (loading the server {loaded:?})", started.elapsed());
}

/// A resync with nothing changed changes nothing and costs what the server's capabilities
/// allow: with CONDSTORE one STATUS a folder and no SELECT, EXAMINE or FETCH; without it
/// (Courier) at most one EXAMINE and one flags FETCH per folder.
fn no_change_resync(kind: Kind) {
    let started = Instant::now();
    let w = World::start(kind, true);
    // The commands are read off the wire: not deflated (Cyrus offers COMPRESS=DEFLATE; the
    // other scenarios run compressed there).
    w.home.write_config(&format!("{EVERY_SECOND}define('EMAIL_BG_IMAP_COMPRESS', 0);\n"));
    w.populate("INBOX", &(0..40).map(|i| mailgen::text_message(23, i)).collect::<Vec<_>>());
    w.populate(&w.folders[1], &(0..8).map(|i| mailgen::text_message(24, i)).collect::<Vec<_>>());
    w.populate(&w.folders[2], &(0..8).map(|i| mailgen::text_message(25, i)).collect::<Vec<_>>());
    w.run_once();
    w.assert_same("after the initial sync");
    w.make_full_sync_due();
    let before = w.snapshot(true);
    let full_before: BTreeMap<String, Option<i64>> =
        w.store().folders(Some(w.account)).unwrap().into_iter().map(|f| (f.name, f.last_full_sync)).collect();
    let proxy = w.proxy.as_ref().unwrap();
    let (wire_at, log_at) = (proxy.captured_client().len(), w.home.log("l-info.log").len());
    w.run_once();
    let wire = proxy.captured_client()[wire_at..].to_vec();
    let second = w.info_since(log_at);
    assert_eq!(w.snapshot(true), before, "{kind:?}: a no-change resync changed the store\n{second}");
    w.assert_same("after the no-change resync");
    assert_eq!(received(&second), 0, "{kind:?}: {second}");

    // Every folder really had its full sync.
    let folders = w.store().folders(Some(w.account)).unwrap();
    let synced: Vec<&backproc_store::FolderInfo> = folders.iter().filter(|f| !f.gone && f.unusable.is_none()).collect();
    for f in &synced {
        assert!(
            f.last_full_sync > full_before[&f.name],
            "{kind:?}: no full sync of {} in the second run\n{second}",
            f.name
        );
    }
    let cmds = commands(&wire);
    let count = |v: &str| cmds.iter().filter(|c| verb(c) == v).count();
    let listing: String = cmds.iter().map(|c| format!("{c}\n")).collect();
    assert_eq!(count("STATUS"), synced.len(), "{kind:?}: one STATUS a folder:\n{listing}");
    for f in &synced {
        let asked = cmds.iter().filter(|c| verb(c) == "STATUS" && c.contains(&format!("\"{}\"", f.name))).count();
        assert_eq!(asked, 1, "{kind:?}: STATUS of {}:\n{listing}", f.name);
    }
    assert_eq!(
        count("SELECT") + count("STORE") + count("UID STORE") + count("EXPUNGE") + count("UID EXPUNGE"),
        0,
        "{kind:?}:\n{listing}"
    );
    assert!(!wire.windows(6).any(|b| b == b"BODY.P" || b == b"BODY["), "{kind:?}: a body was fetched:\n{listing}");
    if w.server.condstore() {
        assert_eq!(
            count("EXAMINE") + count("FETCH") + count("UID FETCH") + count("UID SEARCH"),
            0,
            "{kind:?}:\n{listing}"
        );
    } else {
        let with_mail = synced.iter().filter(|f| f.messages > 0).count();
        assert!(count("EXAMINE") <= with_mail, "{kind:?}: at most one EXAMINE a folder with mail:\n{listing}");
        assert!(
            count("UID FETCH") <= with_mail && count("FETCH") == 0,
            "{kind:?}: one flags FETCH a folder:\n{listing}"
        );
        assert!(
            cmds.iter().filter(|c| verb(c) == "UID FETCH").all(|c| c.contains("FLAGS")),
            "{kind:?}: a FETCH that is not a flags read:\n{listing}"
        );
    }
    eprintln!("{kind:?}: no-change resync scenario {:?}, second run's commands: {}", started.elapsed(), cmds.len());
}

/// Changes on the server (5 appended, flags and keywords of 10 changed, 5 expunged) and here
/// (`--seen`, `--add $Label2`, `--remove $Label1`, a delete), then one pass: both sides agree,
/// and the server kept the keywords it had on the messages changed here.
fn changes_both_ways(kind: Kind) {
    let started = Instant::now();
    let w = World::start(kind, false);
    let msgs: Vec<Vec<u8>> = (0..40).map(|i| mailgen::text_message(31, i)).collect();
    let uids = w.populate("INBOX", &msgs);
    let other: Vec<Vec<u8>> = (0..6).map(|i| mailgen::text_message(32, i)).collect();
    let other_uids = w.populate(&w.folders[1], &other);
    w.populate(&w.folders[2], &(0..4).map(|i| mailgen::text_message(33, i)).collect::<Vec<_>>());
    w.run_once();
    w.assert_same("after the initial sync");

    // What the server must have at the end: the model, changed as the test changes things.
    let mut model: FolderState = w.server_folder("INBOX");
    let mut model_other: FolderState = w.server_folder(&w.folders[1]);
    let flags_of = |m: &FolderState, uid: u32| m[&uid].0.clone();
    assert_eq!(flags_of(&model, uids[10]), flag_set(["$Label1", "NonJunk"]), "{kind:?}: message 10's keywords");

    // The server side.
    let mut a = w.server.admin();
    let new: Vec<Vec<u8>> = (40..45).map(|i| mailgen::text_message(31, i)).collect();
    let new_flags: [&[&str]; 5] = [&["$Label1"], &["\\Seen", "liquid"], &[], &["NonJunk"], &["\\Flagged", "$MyUID"]];
    let batch: Vec<(Vec<&str>, &[u8])> = new.iter().zip(new_flags).map(|(m, f)| (f.to_vec(), m.as_slice())).collect();
    let new_uids = a.append_many("INBOX", &batch).unwrap();
    for ((uid, f), m) in new_uids.iter().zip(new_flags).zip(&new) {
        model.insert(uid.unwrap(), (flag_set(f), sha256(m)));
    }
    let edits: [(&str, &[&str], bool); 5] = [
        ("+FLAGS (\\Flagged $Label3)", &["\\Flagged", "$Label3"], true),
        ("-FLAGS (\\Seen)", &["\\Seen"], false),
        ("+FLAGS (\\Seen \\Answered)", &["\\Seen", "\\Answered"], true),
        ("-FLAGS ($MyUID liquid $Label1)", &["$MyUID", "liquid", "$Label1"], false),
        ("+FLAGS (liquid)", &["liquid"], true),
    ];
    for (n, i) in (20..30).enumerate() {
        let (item, words, add) = edits[n % edits.len()];
        a.store("INBOX", uids[i], item).unwrap();
        let f = &mut model.get_mut(&uids[i]).unwrap().0;
        for w in flag_set(words) {
            if add {
                f.insert(w);
            } else {
                f.remove(&w);
            }
        }
    }
    a.store(&w.folders[1], other_uids[1], "+FLAGS (\\Flagged $Label4)").unwrap();
    model_other.get_mut(&other_uids[1]).unwrap().0.extend(flag_set(["\\Flagged", "$Label4"]));
    let expunged: Vec<u32> = uids[30..35].to_vec();
    a.expunge_uids("INBOX", &expunged).unwrap();
    for u in &expunged {
        model.remove(u);
    }
    a.logout();

    // The local side: mostly other messages than the server changed, three the same.
    let id = |raw: &str, uid: u32| w.row_id(raw, uid).to_string();
    // (message, `mail flag` arguments, flags it adds, flags it removes)
    type Edit<'a> = (usize, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
    let local_edits: [Edit; 8] = [
        // message 10 has $Label1 NonJunk on the server: both must survive
        (10, &["--seen"], &["\\Seen"], &[]),
        (3, &["--remove", "$Label1"], &[], &["$Label1"]),
        (1, &["--add", "$Label2"], &["$Label2"], &[]),
        (17, &["--seen", "--add", "$Label2", "--remove", "$Label1"], &["\\Seen", "$Label2"], &["$Label1"]),
        (8, &["--flagged", "--add", "NonJunk"], &["\\Flagged", "NonJunk"], &[]),
        // changed on the server too (above): each side keeps what it changed
        (20, &["--add", "$Label2"], &["$Label2"], &[]),
        (21, &["--add", "NonJunk"], &["NonJunk"], &[]),
        (22, &["--flagged"], &["\\Flagged"], &[]),
    ];
    for (i, args, add, remove) in local_edits {
        let mut cmd = vec!["mail", "flag"];
        let row = id("INBOX", uids[i]);
        cmd.push(&row);
        cmd.extend_from_slice(args);
        w.mail(&cmd);
        let f = &mut model.get_mut(&uids[i]).unwrap().0;
        f.extend(flag_set(add));
        for r in flag_set(remove) {
            f.remove(&r);
        }
    }
    // A local change to a message the server expunged meanwhile: nothing to push, no error.
    let row = id("INBOX", uids[31]);
    w.mail(&["mail", "flag", &row, "--seen", "--add", "$Label2"]);
    let row = id(&w.folders[1], other_uids[0]);
    w.mail(&["mail", "flag", &row, "--add", "$Label2"]);
    model_other.get_mut(&other_uids[0]).unwrap().0.insert("$label2".into());
    let deleted = uids[12];
    let row = id("INBOX", deleted);
    w.mail(&["mail", "delete", &row]);
    model.remove(&deleted);

    // One pass is enough on all three servers: the full sync pushes the flags and sees the
    // expunges, and its Sync Delete follow-up deletes here and there in the same run (only
    // Dovecot's Trash, where the deleted message went, gets it in the store a pass later).
    w.make_full_sync_due();
    let log_at = w.home.log("l-info.log").len();
    w.run_once();
    w.assert_same("after one pass");
    // With QRESYNC the VANISHED answer and the counts agree: no folder's whole UID set is read
    // (rows with a pending local change once counted as vanished here).
    let pass = w.info_since(log_at);
    if w.server.condstore() {
        assert!(!pass.contains("is not what the store holds"), "{kind:?}: {pass}");
    }
    let server = w.server_folder("INBOX");
    assert_eq!(
        server.keys().collect::<Vec<_>>(),
        model.keys().collect::<Vec<_>>(),
        "{kind:?}: the server's INBOX UIDs"
    );
    for (uid, (f, _)) in &model {
        assert_eq!(&server[uid].0, f, "{kind:?}: the server's flags of UID {uid}");
    }
    assert_eq!(w.server_folder(&w.folders[1]), model_other, "{kind:?}: the server's {}", w.folders[1]);
    if matches!(kind, Kind::Dovecot | Kind::DovecotCondstore) {
        // Deleted to Trash where there is one (Cyrus and Courier here have none: expunged).
        let trash = w.server_folder("Trash");
        assert!(trash.values().any(|(_, sha)| *sha == sha256(&msgs[12])), "{kind:?}: not in Trash: {trash:?}");
    }
    // Nothing waits to be pushed any more (`mail show` prints the message's fields as JSON).
    let shown = w.home.run(&["mail", "show", &id("INBOX", uids[10])]);
    let m: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("mail show's JSON");
    assert_eq!(json_flags(&m["flags"]), flag_set(["\\Seen", "$Label1", "NonJunk"]), "{kind:?}: {m}");
    assert_eq!(m["pending"], serde_json::json!(false), "{kind:?}: {m}");
    assert!(w.mail_list("INBOX").iter().all(|m| m["pending"] == serde_json::json!(false)), "{kind:?}");
    w.assert_stable("the changes");
    eprintln!("{kind:?}: changes-both-ways scenario {:?}", started.elapsed());
}

/// A folder deleted and created again (a new UIDVALIDITY) with partly the same messages: no
/// deletion either way, nothing downloaded twice, and the store equals the server.
fn uidvalidity_change(kind: Kind) {
    let started = Instant::now();
    let w = World::start(kind, false);
    let f = w.folders[1].clone();
    let msgs: Vec<Vec<u8>> = (0..30).map(|i| mailgen::text_message(41, i)).collect();
    w.populate(&f, &msgs[..20]);
    w.populate("INBOX", &(0..10).map(|i| mailgen::text_message(42, i)).collect::<Vec<_>>());
    w.run_once();
    w.assert_same("after the initial sync");
    let info = w.home.log("l-info.log");
    assert_eq!(received(&info), 30, "{kind:?}: {info}");
    let ids_before: BTreeMap<String, i64> = w
        .mail_list(&f)
        .into_iter()
        .map(|m| (m["message_id"].as_str().unwrap().to_string(), m["id"].as_i64().unwrap()))
        .collect();
    assert_eq!(ids_before.len(), 20);

    let mut a = w.server.admin();
    let validity = a.uidvalidity(&f).unwrap();
    a.delete(&f).unwrap();
    a.create(&f).unwrap();
    assert_ne!(a.uidvalidity(&f).unwrap(), validity, "{kind:?}: the test needs a new UIDVALIDITY");
    // messages 10..30: 10 the store has (one with other flags now), 10 new
    let batch: Vec<(Vec<&str>, &[u8])> = (10..30)
        .map(|i| (if i == 11 { vec!["\\Seen", "$Label3"] } else { mailgen::flags_for(i) }, msgs[i].as_slice()))
        .collect();
    a.append_many(&f, &batch).unwrap();
    a.logout();
    let server_before = w.server_folder(&f);
    let inbox_before = w.server_folder("INBOX");

    w.make_full_sync_due();
    let log_at = w.home.log("l-info.log").len();
    w.run_once();
    let second = w.info_since(log_at);
    assert!(second.contains("UIDVALIDITY changed"), "{kind:?}: {second}");
    w.assert_same("after the UIDVALIDITY change");
    // No deletion reached the server.
    assert_eq!(w.server_folder(&f), server_before, "{kind:?}: the server's {f} changed");
    assert_eq!(w.server_folder("INBOX"), inbox_before, "{kind:?}: the server's INBOX changed");
    // The 10 messages the store had were re-keyed (same rows), only the 10 new ones downloaded.
    assert_eq!(received(&second), 10, "{kind:?}: {second}");
    let after: BTreeMap<String, i64> = w
        .mail_list(&f)
        .into_iter()
        .map(|m| (m["message_id"].as_str().unwrap().to_string(), m["id"].as_i64().unwrap()))
        .collect();
    assert_eq!(after.len(), 20, "{kind:?}");
    let kept = after.iter().filter(|(mid, id)| ids_before.get(*mid) == Some(id)).count();
    assert_eq!(kept, 10, "{kind:?}: rows re-keyed, not downloaded again: before {ids_before:?}, after {after:?}");
    w.assert_stable("the UIDVALIDITY change");
    eprintln!("{kind:?}: UIDVALIDITY scenario {:?}", started.elapsed());
}

/// A message row removed behind the engine's back comes back at the next full sync (same UID,
/// same bytes), and the log, the history and the metrics say so.
fn heals_a_missing_message(kind: Kind) {
    let started = Instant::now();
    let w = World::start(kind, false);
    let msgs: Vec<Vec<u8>> = (0..30).map(|i| mailgen::text_message(51, i)).collect();
    let uids = w.populate("INBOX", &msgs);
    w.populate(&w.folders[2], &(0..5).map(|i| mailgen::text_message(52, i)).collect::<Vec<_>>());
    w.run_once();
    w.assert_same("after the initial sync");

    let lost = uids[13];
    let inbox = w.folder_id("INBOX");
    let db = w.home.file("data/backproc.sqlite");
    let o = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(format!("DELETE FROM messages WHERE folder_id = {inbox} AND uid = {lost}; SELECT changes();"))
        .output()
        .expect("run sqlite3");
    assert!(o.status.success(), "sqlite3: {}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "1", "{kind:?}: one row deleted");
    assert!(!w.store_folder("INBOX").contains_key(&lost));

    w.make_full_sync_due();
    let log_at = w.home.log("l-info.log").len();
    w.run_once();
    let second = w.info_since(log_at);
    w.assert_same("after the healing sync");
    let local = w.store_folder("INBOX");
    assert!(local[&lost].1 == sha256(&msgs[13]), "{kind:?}: the healed message's bytes");
    assert_eq!(local[&lost].0, flag_set(mailgen::flags_for(13)), "{kind:?}: the healed message's flags");
    assert!(
        second.contains("1 message(s) the server has were missing from the store: queued again"),
        "{kind:?}: {second}"
    );
    assert_eq!(received(&second), 1, "{kind:?}: {second}");
    let history = w.store().history(&backproc_store::HistoryFilter::default()).unwrap();
    let healed: Vec<_> = history.iter().filter(|h| h.status == "Healed").collect();
    assert_eq!(healed.len(), 1, "{kind:?}: {history:?}");
    assert_eq!((healed[0].folder_id, healed[0].count), (Some(inbox), Some(1)), "{kind:?}: {:?}", healed[0]);
    let prom = std::fs::read_to_string(w.home.file("data/backproc.prom")).expect("data/backproc.prom");
    assert!(prom.lines().any(|l| l == "backproc_healed_messages_total 1"), "{kind:?}: {prom}");
    w.assert_stable("healing");
    let prom = std::fs::read_to_string(w.home.file("data/backproc.prom")).unwrap();
    assert!(prom.lines().any(|l| l == "backproc_healed_messages_total 1"), "{kind:?}: healed again? {prom}");
    eprintln!("{kind:?}: healing scenario {:?}", started.elapsed());
}
