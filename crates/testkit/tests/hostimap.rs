//! The scriptable hostile IMAP server, driven by a raw TCP client (and once by the `imap`
//! crate): the correct mode works like a real server, and every knob does what it says.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use backproc_testkit::hostimap::{
    BAD_LIST_NAMES, Flood, FloodAt, FloodKind, Hang, HostileImap, Msg, Phantom, Phase, Script, World,
};

const USER: &str = "u@test";
/// With a space, so LOGIN must quote it.
const PASS: &str = "s3cret pw";

fn start(world: World, script: Script) -> HostileImap {
    HostileImap::start(USER, PASS, world, script).expect("start hostimap")
}

/// One untagged response: its text (CRLFs and literal markers kept) and its literals.
struct Resp {
    text: Vec<u8>,
    lits: Vec<Vec<u8>>,
}

impl Resp {
    fn str(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }
}

/// Everything up to and including a tagged line.
struct Answer {
    untagged: Vec<Resp>,
    tagged: String,
}

impl Answer {
    fn text(&self) -> String {
        self.untagged.iter().map(Resp::str).collect()
    }

    fn starting(&self, prefix: &str) -> Vec<&Resp> {
        self.untagged.iter().filter(|r| r.text.starts_with(prefix.as_bytes())).collect()
    }

    fn ok(self) -> Answer {
        assert!(self.tagged.split(' ').nth(1) == Some("OK"), "not OK: {} after {}", self.tagged, self.text());
        self
    }
}

/// `{n}` / `{n+}` at the end of a line (CRLF included).
fn literal_size(line: &[u8]) -> Option<usize> {
    let l = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let d = &l[open + 1..];
    std::str::from_utf8(d.strip_suffix(b"+").unwrap_or(d)).ok()?.parse().ok()
}

struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
    n: u32,
}

impl Client {
    fn connect(port: u16) -> Client {
        let w = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = BufReader::with_capacity(1 << 16, w.try_clone().unwrap());
        Client { w, r, n: 0 }
    }

    fn greeted(port: u16) -> (Client, String) {
        let mut c = Client::connect(port);
        let g = c.line_str();
        (c, g)
    }

    fn login(port: u16) -> Client {
        let (mut c, g) = Client::greeted(port);
        assert!(g.starts_with("* OK"), "{g}");
        c.cmd(&format!("LOGIN {USER} \"{PASS}\"")).ok();
        c
    }

    fn line(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        self.r.read_until(b'\n', &mut v).expect("read line");
        assert!(!v.is_empty(), "connection closed");
        v
    }

    fn line_str(&mut self) -> String {
        String::from_utf8_lossy(&self.line()).into_owned()
    }

    fn send(&mut self, raw: &[u8]) {
        self.w.write_all(raw).expect("write");
    }

    fn tag(&mut self) -> String {
        self.n += 1;
        format!("t{}", self.n)
    }

    fn cmd(&mut self, text: &str) -> Answer {
        self.cmd_bytes(text.as_bytes())
    }

    fn cmd_bytes(&mut self, text: &[u8]) -> Answer {
        let tag = self.tag();
        let mut raw = format!("{tag} ").into_bytes();
        raw.extend_from_slice(text);
        raw.extend_from_slice(b"\r\n");
        self.send(&raw);
        self.answer(&tag)
    }

    /// One response with its literals.
    fn resp(&mut self) -> Resp {
        let mut r = Resp { text: Vec::new(), lits: Vec::new() };
        loop {
            let line = self.line();
            let size = literal_size(&line);
            r.text.extend_from_slice(&line);
            let Some(n) = size else { return r };
            let mut lit = vec![0; n];
            self.r.read_exact(&mut lit).expect("literal");
            r.lits.push(lit);
        }
    }

    fn answer(&mut self, tag: &str) -> Answer {
        let mut untagged = Vec::new();
        loop {
            let r = self.resp();
            if r.text.starts_with(format!("{tag} ").as_bytes()) {
                return Answer { untagged, tagged: r.str().trim_end().to_owned() };
            }
            untagged.push(r);
        }
    }

    /// Reads until EOF (or an error), returning what came.
    fn rest(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = self.r.read_to_end(&mut v);
        v
    }

    /// True when nothing arrives for `d` (and the connection is still open).
    fn silent_for(&mut self, d: Duration) -> bool {
        self.w.set_read_timeout(Some(d)).unwrap();
        let mut b = [0u8; 1];
        let quiet =
            matches!(self.r.read(&mut b), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
        self.w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        quiet
    }
}

/// Polls `cond` until it holds (a server thread records what it read a moment after the
/// client wrote it).
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn inbox_body(s: &HostileImap, uid: u32) -> Vec<u8> {
    s.world(|w| w.folder(b"INBOX").unwrap().msg(uid).unwrap().body.clone())
}

fn uid_of(r: &Resp) -> u32 {
    let t = r.str();
    let i = t.find("UID ").unwrap_or_else(|| panic!("no UID in {t}"));
    t[i + 4..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// A world with tiny messages, for answers whose every byte is timed or counted.
fn tiny_world() -> World {
    let mut w = World::simple(0);
    let inbox = w.folder_mut(b"INBOX").unwrap();
    for i in 0..3 {
        inbox.push(format!("Subject: {i}\r\n\r\nhi\r\n").into_bytes(), Vec::new(), "01-Jan-2024 00:00:00 +0000".into());
    }
    w
}

// ─────────────────────────────────────── correct mode ───────────────────────────────────────

#[test]
fn login_list_status_select_fetch() {
    let s = start(World::simple(5), Script::default());
    let (mut c, g) = Client::greeted(s.port());
    assert!(g.starts_with("* OK [CAPABILITY IMAP4rev1 ") && g.contains(" AUTH=PLAIN"), "{g}");
    let a = c.cmd(&format!("LOGIN {USER} \"{PASS}\"")).ok();
    assert!(a.tagged.contains("[CAPABILITY IMAP4rev1"), "{}", a.tagged);

    let a = c.cmd("LIST \"\" \"*\"").ok();
    assert_eq!(
        a.text(),
        "* LIST (\\HasNoChildren) \"/\" \"INBOX\"\r\n* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent\"\r\n"
    );
    let a = c.cmd("LIST (SPECIAL-USE) \"\" \"*\"").ok();
    assert_eq!(a.text(), "* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent\"\r\n");
    assert_eq!(c.cmd("LIST \"\" \"*\" RETURN (SPECIAL-USE)").ok().untagged.len(), 2);
    assert_eq!(c.cmd("LIST \"\" \"\"").ok().text(), "* LIST (\\Noselect) \"/\" \"\"\r\n");
    assert_eq!(c.cmd("LIST \"\" inbox").ok().untagged.len(), 1, "INBOX matches in any case");
    assert_eq!(c.cmd("LSUB \"\" \"*\"").ok().starting("* LSUB").len(), 2);

    let a = c.cmd("STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ)").ok();
    // Messages 1 and 4 are \Seen; mod-sequences 1..5, highest 6.
    assert_eq!(a.text(), "* STATUS \"INBOX\" (MESSAGES 5 UIDNEXT 6 UIDVALIDITY 1000 UNSEEN 3 HIGHESTMODSEQ 6)\r\n");
    assert!(c.cmd("STATUS Nowhere (MESSAGES)").tagged.contains("NO [NONEXISTENT]"));

    assert_eq!(c.cmd("ENABLE CONDSTORE").ok().text(), "* ENABLED CONDSTORE\r\n");
    let a = c.cmd("SELECT INBOX").ok();
    let t = a.text();
    for want in ["* 5 EXISTS\r\n", "[UIDVALIDITY 1000]", "[UIDNEXT 6]", "[HIGHESTMODSEQ 6]", "[PERMANENTFLAGS ("] {
        assert!(t.contains(want), "{want} missing in {t}");
    }
    assert!(a.tagged.contains("OK [READ-WRITE]"), "{}", a.tagged);

    let a = c.cmd("UID FETCH 1:* (UID RFC822.SIZE)").ok();
    assert_eq!(a.untagged.len(), 5);
    for (i, r) in a.untagged.iter().enumerate() {
        let uid = i as u32 + 1;
        // CONDSTORE is enabled: MODSEQ comes with every FETCH response.
        let want = format!("* {uid} FETCH (UID {uid} RFC822.SIZE {} MODSEQ ({uid}))\r\n", inbox_body(&s, uid).len());
        assert_eq!(r.str(), want);
    }
    let a = c.cmd("UID FETCH 2,4 (UID BODY.PEEK[])").ok();
    assert_eq!(a.untagged.len(), 2);
    for (r, uid) in a.untagged.iter().zip([2, 4]) {
        assert_eq!(uid_of(r), uid);
        assert_eq!(r.lits, [inbox_body(&s, uid)], "exact body of UID {uid}");
    }
    // RFC 3501 §6.4.8: 9:* with 5 the highest UID is 5:9.
    let a = c.cmd("UID FETCH 9:* (UID)").ok();
    assert_eq!(a.untagged.len(), 1);
    assert_eq!(uid_of(&a.untagged[0]), 5);
    let a = c.cmd("UID FETCH 3:4,1 (FLAGS)").ok();
    assert_eq!(a.untagged.iter().map(uid_of).collect::<Vec<_>>(), [1, 3, 4]);
    let a = c.cmd("UID FETCH 1:* (UID) (CHANGEDSINCE 3)").ok();
    assert_eq!(a.untagged.iter().map(uid_of).collect::<Vec<_>>(), [4, 5]);

    let a = c.cmd("UID FETCH 1 (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)] INTERNALDATE)").ok();
    let id = String::from_utf8(a.untagged[0].lits[0].clone()).unwrap();
    assert!(id.starts_with("Message-ID: <") && id.ends_with(">\r\n\r\n") && id.lines().count() == 2, "{id:?}");
    assert!(a.text().contains("INTERNALDATE \"01-Jan-2024 00:00:00 +0000\""), "{}", a.text());
    let a = c.cmd("UID FETCH 1 (BODY.PEEK[]<2.5> BODY.PEEK[TEXT])").ok();
    let body = inbox_body(&s, 1);
    assert_eq!(a.untagged[0].lits[0], body[2..7]);
    assert!(a.text().contains("BODY[]<2> {5}"));
    let split = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(a.untagged[0].lits[1], body[split..]);

    // Non-PEEK BODY[] sets \Seen and says so.
    let a = c.cmd("UID FETCH 2 (BODY[HEADER])").ok();
    assert!(a.text().contains("FLAGS (\\Seen)"), "{}", a.text());
    assert!(s.world(|w| w.folder(b"INBOX").unwrap().msg(2).unwrap().has_flag("\\Seen")));

    let a = c.cmd("EXAMINE INBOX").ok();
    assert!(a.tagged.contains("[READ-ONLY]"));
    assert!(c.cmd("UID STORE 1 +FLAGS (\\Flagged)").tagged.contains("NO [READ-ONLY]"));
    assert!(c.cmd("UID FETCH 1 (ENVELOPE)").tagged.contains("BAD"));
}

#[test]
fn store_search_expunge_append_move_copy() {
    let s = start(World::simple(5), Script::default());
    let mut c = Client::login(s.port());
    c.cmd("SELECT INBOX").ok();

    let a = c.cmd("UID STORE 2 +FLAGS (\\Deleted)").ok();
    assert_eq!(a.text(), "* 2 FETCH (FLAGS (\\Deleted) UID 2)\r\n");
    assert_eq!(c.cmd("UID SEARCH DELETED").ok().text(), "* SEARCH 2\r\n");
    assert_eq!(c.cmd("SEARCH UNSEEN NOT DELETED").ok().text(), "* SEARCH 3 5\r\n");
    assert_eq!(c.cmd("UID SEARCH UID 4:*").ok().text(), "* SEARCH 4 5\r\n");
    let a = c.cmd("UID SEARCH RETURN (MIN MAX COUNT) ALL").ok();
    assert_eq!(a.text(), format!("* ESEARCH (TAG \"t{}\") UID MIN 1 MAX 5 COUNT 5\r\n", c.n));
    let a = c.cmd("UID SEARCH RETURN () OR SEEN DELETED").ok();
    assert_eq!(a.text(), format!("* ESEARCH (TAG \"t{}\") UID ALL 1:2,4\r\n", c.n));

    let a = c.cmd("UID EXPUNGE 1:5").ok();
    assert_eq!(a.text(), "* 2 EXPUNGE\r\n");
    assert_eq!(
        s.world(|w| w.folder(b"INBOX").unwrap().messages.iter().map(|m| m.uid).collect::<Vec<_>>()),
        [1, 3, 4, 5]
    );

    // Conditional STORE (RFC 7162 §3.1.3): message 3 has mod-sequence 3.
    let a = c.cmd("UID STORE 3 (UNCHANGEDSINCE 1) FLAGS.SILENT (\\Flagged)").ok();
    assert!(a.tagged.contains("OK [MODIFIED 3]"), "{}", a.tagged);
    assert!(!s.world(|w| w.folder(b"INBOX").unwrap().msg(3).unwrap().has_flag("\\Flagged")));
    let a = c.cmd("UID STORE 3 (UNCHANGEDSINCE 3) +FLAGS.SILENT (\\Flagged)").ok();
    assert!(!a.tagged.contains("MODIFIED"));
    let m = s.world(|w| w.folder(b"INBOX").unwrap().msg(3).unwrap().clone());
    assert!(m.has_flag("\\Flagged") && m.modseq > 6, "{m:?}");
    assert_eq!(a.text(), format!("* 2 FETCH (FLAGS (\\Flagged) UID 3 MODSEQ ({}))\r\n", m.modseq), "even .SILENT");

    // APPEND with a synchronising literal: the server asks for it.
    let raw = b"Subject: appended\r\n\r\nhello\r\n";
    let tag = c.tag();
    c.send(format!("{tag} APPEND INBOX (\\Seen) {{{}}}\r\n", raw.len()).as_bytes());
    assert!(c.line_str().starts_with("+ "));
    c.send(raw);
    c.send(b"\r\n");
    let a = c.answer(&tag).ok();
    assert_eq!(a.tagged, format!("{tag} OK [APPENDUID 1000 6] Append completed."));
    assert_eq!(a.text(), "* 5 EXISTS\r\n", "the selected folder grew");
    let m = s.world(|w| w.folder(b"INBOX").unwrap().msg(6).unwrap().clone());
    assert_eq!((m.body.as_slice(), m.flags.as_slice()), (&raw[..], &["\\Seen".to_owned()][..]));

    let a = c.cmd("UID MOVE 1 Sent").ok();
    assert_eq!(a.text(), "* OK [COPYUID 1001 1 1] Moved UIDs.\r\n* 1 EXPUNGE\r\n");
    let a = c.cmd("UID COPY 3:* Sent").ok();
    assert!(a.tagged.contains("OK [COPYUID 1001 3,4,5,6 2,3,4,5]"), "{}", a.tagged);
    assert!(c.cmd("UID COPY 3 Nowhere").tagged.contains("NO [TRYCREATE]"));
    let sent: Vec<Vec<u8>> = s.world(|w| w.folder(b"Sent").unwrap().messages.iter().map(|m| m.body.clone()).collect());
    assert_eq!(sent.len(), 5);
    assert_eq!(sent[4], raw);

    c.cmd("UID STORE 3 +FLAGS.SILENT (\\Deleted)").ok();
    assert_eq!(c.cmd("EXPUNGE").ok().text(), "* 1 EXPUNGE\r\n");
    c.cmd("UID STORE 4 +FLAGS.SILENT (\\Deleted)").ok();
    assert_eq!(c.cmd("CLOSE").ok().text(), "", "CLOSE expunges silently");
    assert_eq!(s.world(|w| w.folder(b"INBOX").unwrap().messages.len()), 2);
    assert!(c.cmd("UID FETCH 1 (UID)").tagged.contains("BAD"), "nothing selected after CLOSE");

    let a = c.cmd("LOGOUT").ok();
    assert_eq!(a.text(), "* BYE Logging out\r\n");
    assert!(c.rest().is_empty(), "closed after LOGOUT");
}

#[test]
fn pipelined_commands_and_literal_logins() {
    let s = start(World::simple(3), Script::default());
    let (mut c, _) = Client::greeted(s.port());
    // Everything in one write, LITERAL+ for the credentials.
    c.send(
        format!(
            "a LOGIN {{{}+}}\r\n{USER} {{{}+}}\r\n{PASS}\r\nb SELECT INBOX\r\nc UID FETCH 2 (UID FLAGS)\r\nd NOOP\r\n",
            USER.len(),
            PASS.len()
        )
        .as_bytes(),
    );
    assert!(c.answer("a").tagged.starts_with("a OK"));
    assert!(c.answer("b").tagged.starts_with("b OK [READ-WRITE]"));
    assert_eq!(c.answer("c").ok().text(), "* 2 FETCH (UID 2 FLAGS ())\r\n");
    assert!(c.answer("d").tagged.starts_with("d OK"));

    // Synchronising literals: one continuation request each.
    let (mut c2, _) = Client::greeted(s.port());
    c2.send(format!("a LOGIN {{{}}}\r\n", USER.len()).as_bytes());
    assert_eq!(c2.line_str(), "+ go ahead\r\n");
    c2.send(format!("{USER} {{{}}}\r\n", PASS.len()).as_bytes());
    assert_eq!(c2.line_str(), "+ go ahead\r\n");
    c2.send(format!("{PASS}\r\n").as_bytes());
    assert!(c2.answer("a").tagged.starts_with("a OK"));
    let a = c2.cmd("LOGIN x y");
    assert!(a.tagged.contains("BAD"), "already logged in");

    let (mut c3, _) = Client::greeted(s.port());
    assert!(c3.cmd(&format!("LOGIN {USER} wrong")).tagged.contains("NO [AUTHENTICATIONFAILED]"));

    let cmds = s.commands();
    assert!(cmds.contains(&(1, format!("a LOGIN {{{}+}} {{{}+}}", USER.len(), PASS.len()))), "{cmds:?}");
    assert!(cmds.contains(&(1, "c UID FETCH 2 (UID FLAGS)".into())));
    assert!(cmds.contains(&(3, format!("t1 LOGIN {USER} wrong"))), "verbatim, password included");
    assert_eq!((s.count("LOGIN"), s.count("uid fetch"), s.count("SELECT")), (4, 1, 1));
    let logins = s.login_attempts();
    let got: Vec<(usize, &str, bool)> = logins.iter().map(|l| (l.conn, l.password.as_str(), l.accepted)).collect();
    assert_eq!(got, [(1, PASS, true), (2, PASS, true), (3, "wrong", false)], "the BAD one never got that far");
    assert_eq!((s.connections(), s.max_concurrent()), (3, 3));
}

#[test]
fn authenticate_plain_with_and_without_initial_response() {
    let s = start(World::simple(1), Script::default());
    let b64 = |u: &str, p: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("\0{u}\0{p}"))
    };
    let (mut c, _) = Client::greeted(s.port());
    let a = c.cmd(&format!("AUTHENTICATE PLAIN {}", b64(USER, PASS))).ok();
    assert!(a.tagged.contains("[CAPABILITY"));
    let (mut c, _) = Client::greeted(s.port());
    c.send(b"a AUTHENTICATE PLAIN\r\n");
    assert_eq!(c.line_str(), "+ \r\n");
    c.send(format!("{}\r\n", b64(USER, "nope")).as_bytes());
    assert!(c.answer("a").tagged.contains("NO [AUTHENTICATIONFAILED]"));
    let got: Vec<(String, bool)> = s.login_attempts().into_iter().map(|l| (l.password, l.accepted)).collect();
    assert_eq!(got, [(PASS.to_owned(), true), ("nope".to_owned(), false)]);
    assert_eq!(s.count("AUTHENTICATE"), 2);
    // The SASL response line is recorded too, but not counted as a command.
    assert!(s.commands().iter().any(|(_, l)| *l == b64(USER, "nope")));
}

#[test]
fn the_imap_crate_works_against_it() {
    let s = start(World::simple(4), Script::default());
    let mut client = imap::Client::new(TcpStream::connect(("127.0.0.1", s.port())).unwrap());
    client.read_greeting().unwrap();
    let mut session = client.login(USER, PASS).map_err(|(e, _)| e).unwrap();
    assert!(session.capabilities().unwrap().has_str("UIDPLUS"));
    let names = session.list(Some(""), Some("*")).unwrap();
    let sent = names.iter().find(|n| n.name() == "Sent").expect("Sent listed");
    assert!(sent.attributes().contains(&imap_proto::NameAttribute::Sent));
    let st = session.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY)").unwrap();
    assert_eq!((st.exists, st.uid_next, st.uid_validity), (4, Some(5), Some(1000)));
    let mb = session.select("INBOX").unwrap();
    assert_eq!((mb.exists, mb.uid_validity, mb.uid_next, mb.highest_mod_seq), (4, Some(1000), Some(5), Some(5)));
    let fetched = session.uid_fetch("1:*", "(UID RFC822.SIZE FLAGS BODY.PEEK[])").unwrap();
    assert_eq!(fetched.len(), 4);
    for f in fetched.iter() {
        let body = inbox_body(&s, f.uid.unwrap());
        assert_eq!((f.body().unwrap(), f.size), (&body[..], Some(body.len() as u32)));
    }
    let headers = session.uid_fetch("2", "(UID RFC822.SIZE RFC822.HEADER)").unwrap();
    assert!(headers.iter().next().unwrap().header().unwrap().ends_with(b"\r\n\r\n"));
    session.uid_store("2", "+FLAGS.SILENT (\\Deleted)").unwrap();
    assert_eq!(session.uid_search("DELETED").unwrap().into_iter().collect::<Vec<_>>(), [2]);
    let deleted = session.uid_expunge("2").unwrap();
    assert_eq!(deleted.seqs().collect::<Vec<_>>(), [2]);
    let appended = session.append("Sent", b"Subject: x\r\n\r\ny\r\n").flag(imap::types::Flag::Seen).finish().unwrap();
    assert_eq!(appended.uid_validity, Some(1001));
    session.uid_mv("1", "Sent").unwrap();
    assert_eq!(session.uid_search("ALL").unwrap().len(), 2);
    session.logout().unwrap();
    assert_eq!(s.world(|w| w.folder(b"Sent").unwrap().messages.len()), 2);
}

#[test]
fn idle_reports_changes_made_elsewhere() {
    let s = start(World::simple(2), Script::default());
    let mut c = Client::login(s.port());
    c.cmd("SELECT INBOX").ok();
    c.send(b"i IDLE\r\n");
    assert_eq!(c.line_str(), "+ idling\r\n");
    s.world(|w| {
        w.folder_mut(b"INBOX").unwrap().push(
            b"Subject: new\r\n\r\n".to_vec(),
            Vec::new(),
            "01-Jan-2024 00:00:00 +0000".into(),
        )
    });
    assert_eq!(c.line_str(), "* 3 EXISTS\r\n");
    s.world(|w| w.folder_mut(b"INBOX").unwrap().messages.remove(0));
    assert_eq!(c.line_str(), "* 1 EXPUNGE\r\n");
    c.send(b"DONE\r\n");
    assert!(c.answer("i").tagged.starts_with("i OK"));
    // Sequence numbers moved with the expunge: message 1 is now UID 2.
    assert_eq!(uid_of(&c.cmd("FETCH 1 (UID)").ok().untagged[0]), 2);
}

#[test]
fn errors_and_states() {
    let s = start(World::simple(1), Script::default());
    let (mut c, _) = Client::greeted(s.port());
    assert!(c.cmd("SELECT INBOX").tagged.contains("BAD"), "not logged in");
    assert!(c.cmd("STARTTLS").tagged.contains("BAD"), "not advertised");
    assert!(c.cmd("FROBNICATE").tagged.contains("BAD"));
    c.cmd(&format!("LOGIN {USER} \"{PASS}\"")).ok();
    assert!(c.cmd("LIST (\"\" \"*\"").tagged.contains("BAD"), "unbalanced");
    assert!(c.cmd("SELECT Nowhere").tagged.contains("NO [NONEXISTENT]"));
    assert!(c.cmd("UID FETCH 0 (UID)").tagged.contains("BAD"), "no mailbox selected");
    c.cmd("SELECT INBOX").ok();
    assert!(c.cmd("UID FETCH 0 (UID)").tagged.contains("BAD"), "UID 0 is not a UID");
    assert!(c.cmd("ENABLE CONDSTORE").tagged.contains("BAD"), "ENABLE after SELECT");
    c.send(b"* NOOP\r\n");
    assert_eq!(c.line_str(), "* BAD Missing or invalid tag\r\n");
    c.cmd("CREATE Lists/New").ok();
    assert!(c.cmd("CREATE Lists/New").tagged.contains("NO [ALREADYEXISTS]"));
    c.cmd("RENAME Lists/New Lists/Old").ok();
    c.cmd("APPEND Lists/Old {3+}\r\nabc").ok();
    assert_eq!(s.world(|w| w.folder(b"Lists/Old").unwrap().messages[0].body.clone()), b"abc");
    c.cmd("DELETE Lists/Old").ok();
    assert!(s.world(|w| w.folder(b"Lists/Old").is_none()));
    assert_eq!(c.cmd("NAMESPACE").ok().text(), "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
    assert!(c.cmd("ID (\"name\" \"test\")").ok().text().starts_with("* ID ("));
}

#[test]
fn removed_capabilities_turn_their_commands_off() {
    let script = Script { capabilities: ["IMAP4rev1", "LITERAL+"].map(String::from).to_vec(), ..Script::default() };
    let s = start(World::simple(2), script);
    let mut c = Client::login(s.port());
    let a = c.cmd("SELECT INBOX").ok();
    assert!(!a.text().contains("HIGHESTMODSEQ"));
    for cmd in ["UID MOVE 1 Sent", "UID EXPUNGE 1", "IDLE", "UNSELECT", "UID SEARCH RETURN (MIN) ALL"] {
        assert!(c.cmd(cmd).tagged.contains("BAD"), "{cmd}");
    }
    let a = c.cmd("UID COPY 1 Sent").ok();
    assert!(!a.tagged.contains("COPYUID"));
    assert!(c.cmd("LIST (SPECIAL-USE) \"\" \"*\"").tagged.contains("BAD"));
    // Without SPECIAL-USE, \Sent is not shown.
    assert!(!c.cmd("LIST \"\" \"*\"").ok().text().contains("\\Sent"));
}

#[test]
fn qresync_and_utf8_accept_when_advertised() {
    let mut script = Script::default();
    // Not advertised by default: ENABLE leaves them off.
    let s = start(World::simple(3), script.clone());
    let mut c = Client::login(s.port());
    assert_eq!(c.cmd("ENABLE QRESYNC UTF8=ACCEPT").ok().text(), "* ENABLED\r\n");

    script.capabilities.extend(["QRESYNC".to_owned(), "UTF8=ACCEPT".to_owned()]);
    s.set_script(script);
    let mut c = Client::login(s.port());
    assert_eq!(c.cmd("ENABLE QRESYNC UTF8=ACCEPT").ok().text(), "* ENABLED QRESYNC UTF8=ACCEPT\r\n");
    c.cmd("SELECT INBOX (QRESYNC (1000 1))").ok();
    c.cmd("UID STORE 1:2 +FLAGS.SILENT (\\Deleted)").ok();
    // RFC 7162 §3.2.10: VANISHED instead of EXPUNGE once QRESYNC is on.
    assert_eq!(c.cmd("UID EXPUNGE 1:2").ok().text(), "* VANISHED 1:2\r\n");
    let a = c.cmd("SELECT Sent").ok();
    assert!(a.text().starts_with("* OK [CLOSED]"), "{}", a.text());
}

// ────────────────────────────────────────── knobs ───────────────────────────────────────────

/// Reads through the first LF, counting `read` calls; (bytes, reads, elapsed).
fn timed_line(s: &mut TcpStream) -> (Vec<u8>, usize, Duration) {
    let t = Instant::now();
    let mut got = Vec::new();
    let mut reads = 0;
    let mut b = [0u8; 4096];
    while !got.ends_with(b"\n") {
        let n = s.read(&mut b).expect("read");
        assert!(n > 0, "closed");
        got.extend_from_slice(&b[..n]);
        reads += 1;
    }
    (got, reads, t.elapsed())
}

/// Reads an answer up to the line starting with `tag `, timed.
fn timed_answer(s: &mut TcpStream, tag: &str) -> (Vec<u8>, usize, Duration) {
    let t = Instant::now();
    let mut got = Vec::new();
    let mut reads = 0;
    let mut b = [0u8; 4096];
    let end = format!("\r\n{tag} ");
    loop {
        let n = s.read(&mut b).expect("read");
        assert!(n > 0, "closed");
        got.extend_from_slice(&b[..n]);
        reads += 1;
        if let Some(i) = got.windows(end.len()).position(|w| w == end.as_bytes())
            && got[i + 2..].ends_with(b"\r\n")
        {
            return (got, reads, t.elapsed());
        }
    }
}

fn assert_dripped(what: &str, bytes: usize, reads: usize, took: Duration, d: Duration) {
    // The sleeps alone take (bytes - 1) × d; each byte is its own segment, so most reads
    // return one byte (a loaded machine may coalesce some; undripped, it is one read).
    assert!(took >= d * (bytes as u32 - 1), "{what}: {bytes} bytes in {took:?}");
    assert!(reads * 4 >= bytes, "{what}: {bytes} bytes in only {reads} reads");
}

#[test]
fn drip_greeting_list_and_fetch() {
    let d = Duration::from_millis(2);
    let s = start(tiny_world(), Script { drip: Some((Phase::Greeting, d)), ..Script::default() });
    let mut raw = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    let (g, reads, took) = timed_line(&mut raw);
    assert!(g.starts_with(b"* OK [CAPABILITY"));
    assert_dripped("greeting", g.len(), reads, took, d);

    // Control: without the knob the greeting comes in one piece.
    s.set_script(Script::default());
    let mut raw = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    assert_eq!(timed_line(&mut raw).1, 1);

    for phase in [Phase::List, Phase::Fetch] {
        s.set_script(Script { drip: Some((phase, d)), ..Script::default() });
        let mut c = Client::login(s.port());
        c.cmd("SELECT INBOX").ok();
        let (cmd, untagged) = match phase {
            Phase::List => ("l LIST \"\" \"*\"\r\n", "* LIST (\\HasNoChildren) \"/\" \"INBOX\"\r\n"),
            _ => {
                ("l UID FETCH 2 (UID BODY.PEEK[])\r\n", "* 2 FETCH (UID 2 BODY[] {18}\r\nSubject: 1\r\n\r\nhi\r\n)\r\n")
            }
        };
        c.send(cmd.as_bytes());
        let (got, reads, took) = timed_answer(&mut c.w, "l");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with(untagged), "{text}");
        assert_dripped(&format!("{phase:?}"), got.len(), reads, took, d);
    }
}

#[test]
fn hang_before_greeting_and_after_login() {
    let s = start(World::simple(1), Script { hang: Some(Hang::BeforeGreeting), ..Script::default() });
    let mut c = Client::connect(s.port());
    c.send(b"a CAPABILITY\r\n");
    eventually("the command to be read", || s.count("CAPABILITY") == 1);
    assert!(c.silent_for(Duration::from_millis(300)), "no greeting, no answer");

    s.set_script(Script { hang: Some(Hang::AfterLogin), ..Script::default() });
    let mut c = Client::login(s.port());
    c.send(b"b LIST \"\" \"*\"\r\n");
    eventually("LIST to be read", || s.count("LIST") == 1);
    assert!(c.silent_for(Duration::from_millis(300)), "LIST never answered");
    assert_eq!(s.login_attempts().len(), 1);
}

/// The resident set of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 =
        status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn flood_of_ok_lines_in_list_is_streamed() {
    const N: u64 = 600 << 20;
    let s = start(
        World::simple(1),
        Script { flood: Some(Flood { at: FloodAt::List, kind: FloodKind::OkLines, bytes: N }), ..Script::default() },
    );
    let mut c = Client::login(s.port());
    c.send(b"f LIST \"\" \"*\"\r\n");
    let base = rss();
    let mut peak = base;
    let mut total: u64 = 0;
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut next_sample = 0;
    loop {
        let n = c.r.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {total} bytes");
        if total == 0 {
            assert!(buf[..n].starts_with(b"* OK flood\r\n* OK flood\r\n"), "the flood comes first");
        }
        total += n as u64;
        if total >= next_sample {
            peak = peak.max(rss());
            next_sample += 32 << 20;
        }
        if total + 4096 >= N {
            tail.extend_from_slice(&buf[..n]);
            if tail.ends_with(b"f OK LIST completed.\r\n") {
                break;
            }
        }
    }
    assert!(total >= N, "{total} bytes");
    let tail = String::from_utf8_lossy(&tail);
    assert!(tail.contains("* OK flood\r\n* LIST (\\HasNoChildren) \"/\" \"INBOX\"\r\n"), "real answer after the flood");
    // Counted once the write returned, which may be a moment after the client read it.
    eventually("bytes_sent to count the flood", || s.bytes_sent() >= N);
    // Buffered, it would be 600 MB on the server's side of this process.
    assert!(peak - base < 64 << 20, "RSS grew by {} MB", (peak - base) >> 20);
}

#[test]
fn flood_of_status_lines_for_names_never_asked() {
    const N: u64 = 2 << 20;
    let s = start(
        World::simple(3),
        Script {
            flood: Some(Flood { at: FloodAt::Status, kind: FloodKind::StatusLines, bytes: N }),
            ..Script::default()
        },
    );
    let mut c = Client::login(s.port());
    let a = c.cmd("STATUS INBOX (MESSAGES)").ok();
    let (last, flood) = a.untagged.split_last().unwrap();
    assert_eq!(last.str(), "* STATUS \"INBOX\" (MESSAGES 3)\r\n");
    assert!(flood.iter().all(|r| r.str().starts_with("* STATUS \"flood-")));
    assert!(flood.iter().map(|r| r.text.len() as u64).sum::<u64>() >= N);
    assert_eq!(flood[0].str(), "* STATUS \"flood-000000001\" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 1)\r\n");
    assert_ne!(flood[1].text, flood[2].text, "every name differs");

    s.set_script(Script {
        flood: Some(Flood { at: FloodAt::Status, kind: FloodKind::OkLines, bytes: 1000 }),
        ..Script::default()
    });
    let mut c = Client::login(s.port());
    let a = c.cmd("STATUS INBOX (MESSAGES)").ok();
    assert_eq!(a.starting("* OK flood\r\n").len(), 1000usize.div_ceil(12));
}

#[test]
fn one_long_line_in_the_greeting_and_in_list() {
    const N: u64 = 32 << 20;
    let s = start(
        World::simple(1),
        Script {
            flood: Some(Flood { at: FloodAt::Greeting, kind: FloodKind::OneLine, bytes: N }),
            ..Script::default()
        },
    );
    let mut c = Client::connect(s.port());
    let g = c.line();
    assert_eq!(g.len() as u64, N);
    assert!(g.starts_with(b"* OK xxx") && g.ends_with(b"x\r\n"));
    // After it the server works normally.
    c.cmd(&format!("LOGIN {USER} \"{PASS}\"")).ok();

    s.set_script(Script {
        flood: Some(Flood { at: FloodAt::List, kind: FloodKind::OneLine, bytes: 1 << 20 }),
        ..Script::default()
    });
    let mut c = Client::login(s.port());
    let a = c.cmd("LIST \"\" \"*\"").ok();
    assert_eq!(a.untagged[0].text.len(), 1 << 20);
    assert!(a.untagged[0].text.starts_with(b"* LIST () \"/\" xxx"));
    assert_eq!(a.untagged.len(), 3);
}

#[test]
fn login_disabled_with_starttls_advertised() {
    let s = start(World::simple(1), Script { login_disabled: true, starttls: true, ..Script::default() });
    let (mut c, g) = Client::greeted(s.port());
    assert!(g.contains(" STARTTLS") && g.contains(" LOGINDISABLED") && !g.contains("AUTH=PLAIN"), "{g}");
    assert!(c.cmd("STARTTLS").tagged.starts_with("t1 NO"), "advertised, but no TLS here");
    assert!(c.cmd(&format!("LOGIN {USER} \"{PASS}\"")).tagged.contains("NO [PRIVACYREQUIRED]"));
    // Without an initial response: refused before any continuation request.
    assert!(c.cmd("AUTHENTICATE PLAIN").tagged.contains("NO [PRIVACYREQUIRED]"));
    assert!(c.cmd("AUTHENTICATE PLAIN AHVAdGVzdABzM2NyZXQgcHc=").tagged.contains("NO [PRIVACYREQUIRED]"));
    let got: Vec<(String, String, bool)> =
        s.login_attempts().into_iter().map(|l| (l.mechanism, l.password, l.accepted)).collect();
    assert_eq!(
        got,
        [
            ("LOGIN".to_owned(), PASS.to_owned(), false),
            ("AUTHENTICATE PLAIN".to_owned(), String::new(), false),
            ("AUTHENTICATE PLAIN".to_owned(), PASS.to_owned(), false),
        ]
    );
    assert_eq!((s.count("LOGIN"), s.count("AUTHENTICATE"), s.count("STARTTLS")), (1, 2, 1));
    assert!(c.cmd("SELECT INBOX").tagged.contains("BAD"), "still not logged in");
}

#[test]
fn phantom_fetch_answers() {
    let phantoms = vec![Phantom::Uid(777), Phantom::UidZero, Phantom::Duplicate, Phantom::AlteredDuplicate];
    let s = start(World::simple(3), Script { phantoms, ..Script::default() });
    let mut c = Client::login(s.port());
    c.cmd("SELECT INBOX").ok();
    let a = c.cmd("UID FETCH 2 (UID BODY.PEEK[])").ok();
    assert_eq!(a.untagged.iter().map(uid_of).collect::<Vec<_>>(), [2, 777, 0, 2, 2]);
    let real = inbox_body(&s, 2);
    assert_eq!(a.untagged[0].lits[0], real);
    assert_eq!(a.untagged[3].text, a.untagged[0].text, "duplicate");
    assert_eq!(a.untagged[3].lits, a.untagged[0].lits);
    for i in [1, 2, 4] {
        assert!(String::from_utf8_lossy(&a.untagged[i].lits[0]).contains("Subject: phantom"));
    }
    // Only answers with bodies get phantoms.
    assert_eq!(c.cmd("UID FETCH 2 (UID FLAGS)").ok().untagged.len(), 1);
}

#[test]
fn nil_bodies() {
    let s = start(World::simple(3), Script { nil_bodies: vec![2], ..Script::default() });
    let mut c = Client::login(s.port());
    c.cmd("SELECT INBOX").ok();
    let a = c.cmd("UID FETCH 1:3 (UID BODY.PEEK[])").ok();
    assert_eq!(a.untagged[1].str(), "* 2 FETCH (UID 2 BODY[] NIL)\r\n");
    assert_eq!(a.untagged[0].lits, [inbox_body(&s, 1)]);
    assert_eq!(a.untagged[2].lits.len(), 1);
}

#[test]
fn status_names_another_mailbox_and_uidvalidity_changes_before_select() {
    let s = start(World::simple(2), Script { status_wrong_name: Some((b"Other".to_vec(), 99)), ..Script::default() });
    let mut c = Client::login(s.port());
    let a = c.cmd("STATUS INBOX (MESSAGES UIDVALIDITY)").ok();
    assert_eq!(a.text(), "* STATUS \"Other\" (MESSAGES 2 UIDVALIDITY 99)\r\n");

    s.set_script(Script { bump_uidvalidity_on_select: true, ..Script::default() });
    let mut c = Client::login(s.port());
    assert!(c.cmd("STATUS INBOX (UIDVALIDITY)").ok().text().contains("UIDVALIDITY 1000)"));
    assert!(c.cmd("SELECT INBOX").ok().text().contains("[UIDVALIDITY 1001]"));
    assert!(c.cmd("EXAMINE INBOX").ok().text().contains("[UIDVALIDITY 1002]"));
    assert_eq!(s.world(|w| w.folder(b"INBOX").unwrap().uidvalidity), 1002);
}

#[test]
fn bad_list_names_beside_good_ones() {
    let s = start(World::simple(1), Script { bad_list_names: true, ..Script::default() });
    let mut c = Client::login(s.port());
    let a = c.cmd("LIST \"\" \"*\"").ok();
    // A bare CR inside a name does not end the line: the client sees it in one line with LF.
    let raw: Vec<u8> = a.untagged.iter().flat_map(|r| r.text.clone()).collect();
    assert!(raw.starts_with(b"* LIST (\\HasNoChildren) \"/\" \"INBOX\"\r\n"));
    for name in BAD_LIST_NAMES {
        let mut line = b"* LIST (\\HasNoChildren) \"/\" \"".to_vec();
        line.extend_from_slice(name);
        line.extend_from_slice(b"\"\r\n");
        assert!(raw.windows(line.len()).any(|w| w == line), "{}", String::from_utf8_lossy(name));
    }
    assert!(raw.ends_with(b"* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent\"\r\n"));
    c.cmd("SELECT INBOX").ok();
    c.cmd("SELECT Sent").ok();
    let mut sel = format!("SELECT {{{}+}}\r\n", BAD_LIST_NAMES[3].len()).into_bytes();
    sel.extend_from_slice(BAD_LIST_NAMES[3]);
    assert!(c.cmd_bytes(&sel).tagged.contains("NO [NONEXISTENT]"));
}

#[test]
fn many_folders_are_generated_lazily() {
    let s = start(World::simple(1), Script { many_folders: Some((10_000, 3)), ..Script::default() });
    let mut c = Client::login(s.port());
    let a = c.cmd("LIST \"\" \"*\"").ok();
    assert_eq!(a.untagged.len(), 2 + 1 + 10_000);
    assert_eq!(a.untagged[2].str(), "* LIST (\\Noselect \\HasChildren) \"/\" \"Many\"\r\n");
    assert_eq!(a.untagged.last().unwrap().str(), "* LIST (\\HasNoChildren) \"/\" \"Many/09999\"\r\n");
    let a = c.cmd("STATUS Many/09999 (MESSAGES UIDNEXT UIDVALIDITY)").ok();
    assert_eq!(a.text(), "* STATUS \"Many/09999\" (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 59999)\r\n");
    assert!(c.cmd("STATUS Many/10000 (MESSAGES)").tagged.contains("NO"));
    assert!(c.cmd("SELECT Many").tagged.contains("NO"));
    assert_eq!(s.world(|w| w.folders.len()), 2, "STATUS did not store anything");
    assert!(c.cmd("SELECT Many/04242").ok().text().contains("* 3 EXISTS"));
    let a = c.cmd("UID FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])").ok();
    assert_eq!(a.untagged[0].lits[0], b"Subject: folder 4242 message 0\r\n\r\n");
    c.cmd("UID STORE 1 +FLAGS (\\Seen)").ok();
    assert!(s.world(|w| w.folder(b"Many/04242").unwrap().messages[0].has_flag("\\Seen")));
    assert_eq!(c.cmd("LIST \"\" \"Many/04242\"").ok().untagged.len(), 1, "listed once");
    assert_eq!(c.cmd("LIST \"\" \"%\"").ok().untagged.len(), 3, "% stops at the delimiter");
}

#[test]
fn condstore_without_enable_and_list_without_inbox() {
    let s =
        start(World::simple(1), Script { condstore_without_enable: true, no_inbox_in_list: true, ..Script::default() });
    let mut c = Client::login(s.port());
    let caps = c.cmd("CAPABILITY").ok().text();
    assert!(caps.contains(" CONDSTORE") && !caps.contains(" ENABLE"), "{caps}");
    assert!(c.cmd("ENABLE CONDSTORE").tagged.contains("BAD"));
    assert_eq!(c.cmd("LIST \"\" \"*\"").ok().text(), "* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent\"\r\n");
    let a = c.cmd("SELECT INBOX (CONDSTORE)").ok();
    assert!(a.text().contains("[HIGHESTMODSEQ 2]"));
    assert!(c.cmd("UID FETCH 1 (FLAGS)").ok().text().contains("MODSEQ (1)"), "enabled by SELECT (CONDSTORE)");
}

#[test]
fn out_of_range_numbers() {
    let script = Script {
        status_uidnext: Some("99999999999".into()),
        select_exists: Some("-1".into()),
        size_delta: 10,
        ..Script::default()
    };
    let s = start(World::simple(1), script);
    let mut c = Client::login(s.port());
    assert!(c.cmd("STATUS INBOX (UIDNEXT)").ok().text().contains("(UIDNEXT 99999999999)"));
    assert!(c.cmd("SELECT INBOX").ok().text().contains("* -1 EXISTS\r\n"));
    let size = inbox_body(&s, 1).len() + 10;
    assert_eq!(c.cmd("UID FETCH 1 (RFC822.SIZE)").ok().text(), format!("* 1 FETCH (UID 1 RFC822.SIZE {size})\r\n"));
}

#[test]
fn refused_select() {
    let s = start(World::simple(1), Script { refuse_select: vec![b"Sent".to_vec()], ..Script::default() });
    let mut c = Client::login(s.port());
    c.cmd("SELECT INBOX").ok();
    assert!(c.cmd("SELECT Sent").tagged.contains("NO [UNAVAILABLE]"));
    assert!(c.cmd("UID FETCH 1 (UID)").tagged.contains("BAD"), "a failed SELECT leaves the selected state");
    assert!(c.cmd("EXAMINE Sent").tagged.contains("NO [UNAVAILABLE]"));
    c.cmd("STATUS Sent (MESSAGES)").ok();
    c.cmd("EXAMINE INBOX").ok();
}

#[test]
fn odd_fetch_order_literal_names_and_unsolicited_lines() {
    let s = start(World::simple(2), Script { odd_fetch_order: true, literal_names: true, ..Script::default() });
    let mut c = Client::login(s.port());
    let a = c.cmd("LIST \"\" \"*\"").ok();
    assert_eq!(a.untagged[0].str(), "* LIST (\\HasNoChildren) \"/\" {5}\r\n\r\n");
    assert_eq!(a.untagged[0].lits, [b"INBOX".to_vec()]);
    let a = c.cmd("STATUS INBOX (MESSAGES)").ok();
    assert_eq!(
        (a.untagged[0].str(), &a.untagged[0].lits[0][..]),
        ("* STATUS {5}\r\n (MESSAGES 2)\r\n".into(), &b"INBOX"[..])
    );
    c.cmd("SELECT INBOX").ok();
    let a = c.cmd("UID FETCH 1 (UID RFC822.SIZE BODY.PEEK[] FLAGS)").ok();
    let size = inbox_body(&s, 1).len();
    assert_eq!(
        a.untagged[0].str(),
        format!("* 1 FETCH (FLAGS (\\Seen $MyUID liquid) RFC822.SIZE {size} BODY[] {{{size}}}\r\n UID 1)\r\n")
    );

    s.set_script(Script { unsolicited: true, ..Script::default() });
    let mut c = Client::login(s.port());
    c.cmd("SELECT INBOX").ok();
    let a = c.cmd("UID FETCH 1:2 (UID)").ok();
    assert_eq!(
        a.text(),
        "* 2 EXISTS\r\n* 1 FETCH (FLAGS (\\Seen))\r\n* 1 FETCH (UID 1)\r\n\
         * 2 EXISTS\r\n* 1 FETCH (FLAGS (\\Seen))\r\n* 2 FETCH (UID 2)\r\n\
         * 2 EXISTS\r\n* 1 FETCH (FLAGS (\\Seen))\r\n"
    );
    assert_eq!(c.cmd("NOOP").ok().text(), "* 2 EXISTS\r\n* 1 FETCH (FLAGS (\\Seen))\r\n");
}

#[test]
fn expunge_during_fetch_and_bye_during_fetch() {
    let s = start(World::simple(3), Script { expunge_during_fetch: true, ..Script::default() });
    let mut c = Client::login(s.port());
    c.cmd("SELECT INBOX").ok();
    let a = c.cmd("UID FETCH 1:* (UID BODY.PEEK[])").ok();
    let lines: Vec<String> = a.untagged.iter().map(|r| r.str().lines().next().unwrap().to_owned()).collect();
    // After the expunge, UID 2 is message 1.
    let want = [
        "* 1 EXPUNGE".to_owned(),
        format!("* 1 FETCH (UID 2 BODY[] {{{}}}", inbox_body(&s, 2).len()),
        format!("* 2 FETCH (UID 3 BODY[] {{{}}}", inbox_body(&s, 3).len()),
    ];
    assert_eq!(lines[1..], want);
    assert!(s.world(|w| w.folder(b"INBOX").unwrap().msg(1).is_none()));

    s.set_script(Script { bye_during_fetch: true, ..Script::default() });
    let mut c = Client::login(s.port());
    c.cmd("SELECT INBOX").ok();
    c.send(b"f UID FETCH 1:* (UID BODY.PEEK[])\r\n");
    let first = c.resp();
    assert_eq!(uid_of(&first), 2);
    assert_eq!(c.line_str(), "* BYE Server shutting down.\r\n");
    assert!(c.rest().is_empty(), "closed after the BYE");
}

#[test]
fn stray_tagged_continuation_out_of_the_blue_and_overstated_literal() {
    let s = start(World::simple(1), Script { stray_tagged: true, ..Script::default() });
    let mut c = Client::login(s.port());
    assert_eq!(c.cmd("NOOP").ok().text(), "X999 OK [ALERT] Completed a command you never sent\r\n");

    s.set_script(Script { continuation_out_of_blue: true, ..Script::default() });
    let mut c = Client::login(s.port());
    assert_eq!(c.cmd("NOOP").ok().text(), "+ Out of the blue\r\n");

    s.set_script(Script { overstated_literal: Some(1000), ..Script::default() });
    let mut c = Client::login(s.port());
    c.cmd("SELECT INBOX").ok();
    c.send(b"f UID FETCH 1 (UID BODY.PEEK[])\r\n");
    let body = inbox_body(&s, 1);
    assert_eq!(c.line_str(), format!("* 1 FETCH (UID 1 BODY[] {{{}}}\r\n", body.len() + 1000));
    let mut want = body.clone();
    want.extend_from_slice(b")\r\nf OK Fetch completed.\r\n");
    let mut got = vec![0; want.len()];
    c.r.read_exact(&mut got).unwrap();
    assert_eq!(got, want);
    assert!(c.silent_for(Duration::from_millis(200)), "the rest of the literal never comes, the connection stays open");
}

#[test]
fn connection_limit_and_close_on_a_command() {
    let s = start(World::simple(1), Script { connection_limit: Some(1), ..Script::default() });
    let (_first, g) = Client::greeted(s.port());
    assert!(g.starts_with("* OK"));
    let (mut second, g) = Client::greeted(s.port());
    assert_eq!(g, "* BYE [UNAVAILABLE] Too many simultaneous connections\r\n");
    assert!(second.rest().is_empty());
    assert_eq!((s.connections(), s.max_concurrent()), (2, 2));

    s.set_script(Script { close_on: Some("UID FETCH".into()), ..Script::default() });
    let mut c = Client::login(s.port());
    c.cmd("SELECT INBOX").ok();
    c.send(b"f UID FETCH 1 (UID)\r\n");
    assert!(c.rest().is_empty(), "closed without a word");
    assert_eq!(s.count("UID FETCH"), 1);
}

#[test]
fn set_script_applies_to_new_connections_only() {
    let s = start(World::simple(1), Script::default());
    let (mut old, _) = Client::greeted(s.port());
    s.set_script(Script { login_disabled: true, ..Script::default() });
    old.cmd(&format!("LOGIN {USER} \"{PASS}\"")).ok();
    let (_new, g) = Client::greeted(s.port());
    assert!(g.contains("LOGINDISABLED"));
}

#[test]
fn drop_ends_every_connection_promptly() {
    let s = start(World::simple(1), Script { hang: Some(Hang::BeforeGreeting), ..Script::default() });
    let mut hung = Client::connect(s.port());
    eventually("the first connection", || s.connections() == 1);
    s.set_script(Script { drip: Some((Phase::Greeting, Duration::from_secs(5))), ..Script::default() });
    let mut dripping = Client::connect(s.port());
    eventually("the second connection", || s.connections() == 2);
    // A flood to a client that does not read: the server thread blocks in write.
    s.set_script(Script {
        flood: Some(Flood { at: FloodAt::Greeting, kind: FloodKind::OkLines, bytes: 600 << 20 }),
        ..Script::default()
    });
    let _stuck = Client::connect(s.port());
    eventually("three connections", || s.connections() == 3);
    // The dripping one has sent its first byte, the flooding one has filled the socket buffers.
    let mut b = [0u8; 1];
    dripping.r.read_exact(&mut b).unwrap();
    // Far less than the socket buffers can hold, so the write blocks soon after (or already).
    eventually("the flood to start", || s.bytes_sent() >= 1 << 20);
    let t = Instant::now();
    drop(s);
    assert!(t.elapsed() < Duration::from_secs(2), "drop took {:?}", t.elapsed());
    assert!(hung.rest().is_empty(), "hung connection closed");
    assert!(dripping.rest().is_empty(), "dripping connection closed mid-greeting");
}

#[test]
fn world_helpers() {
    let w = World::simple(4);
    let inbox = w.folder(b"inbox").unwrap();
    assert_eq!((inbox.next_uid(), inbox.modseq(), inbox.messages.len()), (5, 5, 4));
    assert!(inbox.messages.iter().all(|m| m.body.ends_with(b"\r\n") && !m.body.is_empty()));
    let mut f = w.folder(b"Sent").unwrap().clone();
    f.uidnext = 10;
    assert_eq!(f.push(b"x".to_vec(), vec![], String::new()), 10, "UIDs never go back");
    f.messages.clear();
    assert_eq!(f.next_uid(), 11);
    let m = Msg { uid: 1, flags: vec!["\\SEEN".into()], ..Msg::default() };
    assert!(m.has_flag("\\Seen"));
}
