//! The fault proxy in front of a real Dovecot: network faults, connection accounting, and the
//! IMAP rules (Gmail's connection limit and X-GM items, Microsoft 365's throttling, rewrites),
//! driven by a raw TCP client so every byte on the wire is checked.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, RwLock};
use std::time::Duration;

use backproc_testkit::{Dovecot, Fault, FaultProxy, GMAIL_TOO_MANY, ImapRule, M365_THROTTLED, gm_msgid};

fn upstream(d: &Dovecot) -> SocketAddr {
    format!("{}:{}", d.host(), d.imap_port()).parse().unwrap()
}

fn read_all(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn pass_cut_refuse_inject_strip() {
    let d = Dovecot::start().expect("start dovecot");
    d.add_user("u", "p").unwrap();
    let p = FaultProxy::start(upstream(&d)).unwrap();

    let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    s.write_all(b"a1 CAPABILITY\r\na2 LOGOUT\r\n").unwrap();
    let got = read_all(&mut s);
    assert!(got.starts_with(b"* OK") && got.windows(5).any(|w| w == b"a2 OK"));
    assert!(p.captured_client().windows(13).any(|w| w == b"a1 CAPABILITY"));
    assert!(p.captured_server().starts_with(b"* OK"));

    p.set_fault(Fault::CutAfter { server_bytes: 10 });
    let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    assert_eq!(read_all(&mut s), b"* OK [CAPA");

    p.set_fault(Fault::Refuse);
    let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    assert!(read_all(&mut s).is_empty());

    p.set_fault(Fault::Inject { server_bytes_at: 0, bytes: b"* BYE injected\r\n".to_vec() });
    let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    s.write_all(b"a LOGOUT\r\n").unwrap();
    assert!(read_all(&mut s).starts_with(b"* BYE injected\r\n* OK"));

    p.set_fault(Fault::StripStartTls);
    let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    s.write_all(b"a CAPABILITY\r\nb LOGOUT\r\n").unwrap();
    let got = String::from_utf8(read_all(&mut s)).unwrap();
    assert!(got.contains("CAPABILITY") && !got.contains("STARTTLS"), "{got}");

    p.set_fault(Fault::Stall);
    let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut b = [0u8; 16];
    assert!(s.read(&mut b).is_err(), "stalled connection must send nothing");
    assert_eq!(p.connections(), 6);
}

/// One IMAP response as the client got it: its lines (each literal's `{n}` line included) and
/// its literals.
struct Resp {
    text: Vec<u8>,
    literals: Vec<Vec<u8>>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }

    /// The number after `item ` in the response text.
    fn number(&self, item: &str) -> Option<u64> {
        let t = self.text();
        let at = t.find(&format!("{item} "))? + item.len() + 1;
        t[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    }
}

/// A raw IMAP client that understands literals, so it can check what the proxy made of the
/// server's responses.
struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(p: &FaultProxy) -> Client {
        let s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client { r: BufReader::new(s) }
    }

    /// Connects and returns the greeting line.
    fn greeted(p: &FaultProxy) -> (Client, String) {
        let mut c = Client::connect(p);
        let mut g = c.line();
        // What Dovecot sends first when its auth process is slow to answer (a loaded machine).
        while g.starts_with("* OK Waiting for authentication") {
            g = c.line();
        }
        assert!(g.starts_with("* OK"), "greeting {g:?}");
        (c, g)
    }

    fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.r.get_mut().write_all(bytes.as_ref()).unwrap();
    }

    fn line(&mut self) -> String {
        let mut l = Vec::new();
        self.r.read_until(b'\n', &mut l).unwrap();
        assert!(l.ends_with(b"\r\n"), "connection ended in a line: {:?}", String::from_utf8_lossy(&l));
        String::from_utf8(l).unwrap()
    }

    /// Reads one response; `probe` runs once after the first KB of a literal of at least 1 MB.
    fn resp_probe(&mut self, probe: &mut dyn FnMut()) -> Resp {
        let mut resp = Resp { text: Vec::new(), literals: Vec::new() };
        loop {
            let line = self.line();
            resp.text.extend_from_slice(line.as_bytes());
            let Some(n) = literal_len(&line) else { return resp };
            let mut lit = vec![0u8; n];
            if n >= 1 << 20 {
                self.r.read_exact(&mut lit[..1024]).unwrap();
                probe();
                self.r.read_exact(&mut lit[1024..]).unwrap();
            } else {
                self.r.read_exact(&mut lit).unwrap();
            }
            resp.literals.push(lit);
        }
    }

    fn resp(&mut self) -> Resp {
        self.resp_probe(&mut || {})
    }

    /// Reads responses up to the one tagged `tag`; returns the others and the tagged line.
    fn until(&mut self, tag: &str) -> (Vec<Resp>, String) {
        let mut untagged = Vec::new();
        loop {
            let r = self.resp();
            if r.text.starts_with(format!("{tag} ").as_bytes()) {
                return (untagged, r.text());
            }
            untagged.push(r);
        }
    }

    /// Sends `<tag> <cmd>` and returns the tagged answer line.
    fn cmd(&mut self, tag: &str, cmd: &str) -> String {
        self.send(format!("{tag} {cmd}\r\n"));
        self.until(tag).1
    }

    fn logout(mut self) {
        self.send("zz LOGOUT\r\n");
        let mut rest = Vec::new();
        let _ = self.r.read_to_end(&mut rest);
        assert!(contains(&rest, b"zz OK"), "{}", String::from_utf8_lossy(&rest));
    }
}

fn literal_len(line: &str) -> Option<usize> {
    let l = line.strip_suffix("}\r\n")?;
    l[l.rfind('{')? + 1..].parse().ok()
}

#[test]
fn connection_accounting_is_exact_in_bursts() {
    let d = Dovecot::start().expect("start dovecot");
    let p = FaultProxy::start(upstream(&d)).unwrap();
    assert_eq!((p.open_connections(), p.max_concurrent()), (0, 0));

    // 200 at once: all connected, then all closed together.
    const N: usize = 200;
    let (connected, release) = (Barrier::new(N + 1), Barrier::new(N + 1));
    std::thread::scope(|s| {
        for _ in 0..N {
            s.spawn(|| {
                let c = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
                connected.wait();
                release.wait();
                drop(c);
            });
        }
        connected.wait();
        assert!(p.wait_open(N, Duration::from_secs(20)), "open {} of {N}", p.open_connections());
        assert_eq!(p.max_concurrent(), N);
        assert_eq!(p.max_client_concurrent(), N);
        release.wait();
    });
    assert!(p.wait_open(0, Duration::from_secs(20)), "still open: {}", p.open_connections());
    assert_eq!((p.max_concurrent(), p.connections()), (N, N));
    p.reset_max();
    assert_eq!(p.max_concurrent(), 0);

    // 200 more in rounds of 40 concurrent IMAP sessions. Clients count the connections they
    // hold (from the greeting to just before closing); a sample taken under the write lock,
    // when no client is between its count and its socket, must find the proxy counting at
    // least as many. One sample per round is taken when all 40 hold theirs (so the count's
    // peak is checked), others by a sampler thread at arbitrary moments.
    const ROUND: usize = 40;
    let held = AtomicUsize::new(0);
    let gate = RwLock::new(());
    let all_hold = Barrier::new(ROUND);
    let (done, samples, most_held) = (AtomicBool::new(false), AtomicUsize::new(0), AtomicUsize::new(0));
    let sample = || {
        let _g = gate.write().unwrap();
        let (h, open) = (held.load(Ordering::SeqCst), p.open_connections());
        assert!(open >= h, "proxy counts {open} open while clients hold {h}");
        most_held.fetch_max(h, Ordering::SeqCst);
        samples.fetch_add(1, Ordering::SeqCst);
    };
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                sample();
                // Pacing only, so the write lock does not starve the clients.
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let clients: Vec<_> = (0..ROUND)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..N / ROUND {
                        let (mut c, _) = Client::greeted(&p);
                        drop(gate.read().map(|_g| held.fetch_add(1, Ordering::SeqCst)));
                        if all_hold.wait().is_leader() {
                            sample();
                        }
                        all_hold.wait();
                        assert!(c.cmd("a", "NOOP").starts_with("a OK"));
                        drop(gate.read().map(|_g| held.fetch_sub(1, Ordering::SeqCst)));
                        c.logout();
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        sampler.join().unwrap();
    });
    assert!(p.wait_open(0, Duration::from_secs(20)), "still open: {}", p.open_connections());
    assert_eq!(p.connections(), 2 * N);
    assert_eq!(most_held.load(Ordering::SeqCst), ROUND);
    assert!(samples.load(Ordering::SeqCst) > N / ROUND);
    // No upper bound: a closing connection counts until its teardown ends, which may overlap
    // the next round's; leaks are caught by the wait for 0 above.
    assert!(p.max_concurrent() >= ROUND, "max {}", p.max_concurrent());
}

/// `max_client_concurrent` counts what the client holds: a client that says LOGOUT without
/// waiting for the answer, closes, and at once opens the next connection (as the engine's
/// session pool does when it gives an idle session's slot to another account) holds `HOLD` at
/// most, and that is what it reports; one more held connection shows as one more.
#[test]
fn client_side_count_follows_closes_at_once() {
    let d = Dovecot::start().expect("start dovecot");
    let p = FaultProxy::start(upstream(&d)).unwrap();
    const HOLD: usize = 5;
    let mut held: std::collections::VecDeque<Client> = (0..HOLD).map(|_| Client::greeted(&p).0).collect();
    for _ in 0..300 {
        let mut oldest = held.pop_front().unwrap();
        oldest.send("zz LOGOUT\r\n");
        drop(oldest);
        held.push_back(Client::greeted(&p).0);
    }
    assert_eq!(p.max_client_concurrent(), HOLD, "proxy's own count peaked at {}", p.max_concurrent());
    held.push_back(Client::greeted(&p).0);
    assert_eq!(p.max_client_concurrent(), HOLD + 1);
    drop(held);
    assert!(p.wait_open(0, Duration::from_secs(20)), "still open: {}", p.open_connections());
    p.reset_max();
    assert_eq!((p.max_concurrent(), p.max_client_concurrent()), (0, 0));
}

#[test]
fn too_many_connections_refuses_logins_over_the_limit() {
    let d = Dovecot::start().expect("start dovecot");
    d.add_user("u", "p").unwrap();
    let p = FaultProxy::start(upstream(&d)).unwrap();
    p.set_imap_rules(vec![ImapRule::gmail_too_many(2)]);
    let refused = format!("{GMAIL_TOO_MANY}\r\n");

    let (mut c1, _) = Client::greeted(&p);
    assert!(c1.cmd("a", "LOGIN u p").starts_with("a OK"));
    let (mut c2, _) = Client::greeted(&p);
    assert!(c2.cmd("a", "LOGIN u p").starts_with("a OK"));
    let (mut c3, _) = Client::greeted(&p);
    assert_eq!(c3.cmd("a", "LOGIN u p"), format!("a {refused}"));
    // The login never reached Dovecot: c3 is not authenticated, but its connection still works.
    assert!(!c3.cmd("b", "SELECT INBOX").starts_with("b OK"));
    // A login with a synchronising literal is refused at once, with no `+` (the client then
    // sends no literal), and the next command is read as a command.
    c3.send("c LOGIN {1}\r\n");
    assert_eq!(c3.line(), format!("c {refused}"));
    assert!(c3.cmd("d", "NOOP").starts_with("d OK"));
    assert_eq!(c3.cmd("e", "AUTHENTICATE PLAIN AHUAcA=="), format!("e {refused}"));
    assert_eq!(p.rule_hits(0), 3);

    // Below the limit again, the same connection logs in.
    c1.logout();
    assert!(p.wait_open(2, Duration::from_secs(10)), "open {}", p.open_connections());
    assert!(c3.cmd("f", "LOGIN u p").starts_with("f OK"));
    assert_eq!(p.rule_hits(0), 3);

    // The RFC 5530 variants: the same rule with another answer text.
    let unavailable = "NO [UNAVAILABLE] Maximum number of connections from user+IP exceeded";
    p.set_imap_rules(vec![ImapRule::TooManyConnections { max: 1, text: unavailable.into() }]);
    let (mut c4, _) = Client::greeted(&p);
    assert_eq!(c4.cmd("a", "LOGIN u p"), format!("a {unavailable}\r\n"));
    c4.send("b AUTHENTICATE PLAIN\r\n");
    assert_eq!(c4.line(), format!("b {unavailable}\r\n"));
    assert_eq!(p.rule_hits(0), 2);
    c2.logout();
    c3.logout();
    c4.logout();
}

#[test]
fn throttle_answers_the_first_commands_then_passes() {
    let d = Dovecot::start().expect("start dovecot");
    d.add_user("t", "p").unwrap();
    let msg = b"Message-ID: <t.1@backproc.test>\r\nSubject: t\r\n\r\nhello\r\n".to_vec();
    d.populate("t", "p", "INBOX", std::slice::from_ref(&msg)).unwrap();
    let p = FaultProxy::start(upstream(&d)).unwrap();
    p.set_imap_rules(vec![
        ImapRule::m365_throttle("select", 2),
        ImapRule::Throttle { command: "UID FETCH".into(), times: 1, answer: "BAD Command Error. 10".into() },
        ImapRule::Throttle { command: "LOGIN".into(), times: 1, answer: "NO [UNAVAILABLE] LOGIN throttled".into() },
        ImapRule::Throttle { command: "NOOP".into(), times: 1, answer: "BAD NOOP throttled".into() },
    ]);
    let (mut c, _) = Client::greeted(&p);

    // A refused command with non-synchronising literals is swallowed whole, then answered.
    c.send("l1 LOGIN {1+}\r\nt {1+}\r\np\r\n");
    assert_eq!(c.line(), "l1 NO [UNAVAILABLE] LOGIN throttled\r\n");
    // Synchronising literals pass once Dovecot sends `+`.
    c.send("l2 LOGIN {1}\r\n");
    assert!(c.line().starts_with("+ "));
    c.send("t {1}\r\n");
    assert!(c.line().starts_with("+ "));
    c.send("p\r\n");
    assert!(c.until("l2").1.starts_with("l2 OK"));

    // Pipelined: answers come in command order, the proxy's between Dovecot's.
    c.send("s1 SELECT INBOX\r\ns2 STATUS INBOX (MESSAGES)\r\ns3 SELECT INBOX\r\n");
    let lines: Vec<String> = (0..4).map(|_| c.line()).collect();
    assert_eq!(lines[0], format!("s1 {M365_THROTTLED}\r\n"));
    assert_eq!(lines[1], "* STATUS INBOX (MESSAGES 1)\r\n");
    assert!(lines[2].starts_with("s2 OK"), "{lines:?}");
    assert_eq!(lines[3], format!("s3 {M365_THROTTLED}\r\n"));
    c.send("s4 SELECT INBOX\r\n");
    let (untagged, ok) = c.until("s4");
    assert!(untagged.iter().any(|r| r.text() == "* 1 EXISTS\r\n") && ok.starts_with("s4 OK"), "{ok}");
    assert_eq!(p.rule_hits(0), 2);

    // UID FETCH is throttled once; a plain FETCH is another command.
    assert!(c.cmd("f0", "FETCH 1 (UID)").starts_with("f0 OK"));
    assert_eq!(c.cmd("f1", "UID FETCH 1:* (UID)"), "f1 BAD Command Error. 10\r\n");
    c.send("f2 UID FETCH 1:* (UID)\r\n");
    let (fetched, ok) = c.until("f2");
    assert!(ok.starts_with("f2 OK") && fetched.len() == 1 && fetched[0].text().contains("UID 1"));
    assert_eq!(p.rule_hits(1), 1);

    // Dovecot rejects this APPEND without `+`: the client sends no literal, so what follows is
    // the next command, which the NOOP rule answers.
    c.send("a1 APPEND nosuch {5}\r\n");
    assert!(c.line().starts_with("a1 NO [TRYCREATE]"));
    assert_eq!(c.cmd("a2", "NOOP"), "a2 BAD NOOP throttled\r\n");
    assert!(c.cmd("a3", "NOOP").starts_with("a3 OK"));
    // And an accepted synchronising APPEND literal goes through byte for byte.
    c.send(format!("a4 APPEND INBOX {{{}}}\r\n", msg.len()));
    assert!(c.line().starts_with("+ "));
    c.send([msg.as_slice(), b"\r\n"].concat());
    assert!(c.until("a4").1.starts_with("a4 OK [APPENDUID"));

    // Counted over all connections: the second connection's LOGIN and SELECT pass.
    let (mut c2, _) = Client::greeted(&p);
    assert!(c2.cmd("a", "LOGIN t p").starts_with("a OK"));
    assert!(c2.cmd("b", "SELECT INBOX").starts_with("b OK"));
    c2.send("c UID FETCH 1:* (BODY.PEEK[])\r\n");
    let (fetched, ok) = c2.until("c");
    assert!(ok.starts_with("c OK") && fetched.len() == 2 && fetched[1].literals == [msg.clone()]);
    assert_eq!((p.rule_hits(0), p.rule_hits(1), p.rule_hits(2), p.rule_hits(3)), (2, 1, 1, 1));
    c.logout();
    c2.logout();
}

/// A message of about `size` bytes whose body has lines that look like IMAP framing, which
/// must pass as literal data.
fn big_message(size: usize) -> Vec<u8> {
    let mut m = b"Message-ID: <big.4@backproc.test>\r\nSubject: big\r\n\r\n".to_vec();
    m.extend_from_slice(b"* 1 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID X-BACKPROC-GM-M)] {10}\r\n");
    m.extend_from_slice(b"p1 OK done {5}\r\n* CAPABILITY IMAP4rev1\r\n");
    let mut i = 0u64;
    while m.len() < size {
        m.extend_from_slice(format!("{i:010} the quick brown fox jumps over the lazy dog {{3}}\r\n").as_bytes());
        i += 1;
    }
    m
}

#[test]
fn gmail_items_and_capabilities() {
    let d = Dovecot::start().expect("start dovecot");
    d.add_user("g", "p").unwrap();
    let a = b"Message-ID: <a.1@backproc.test>\r\nSubject: a\r\n\r\nfirst\r\n".to_vec();
    let b = b"Subject: b\r\nMessage-ID:\r\n  <B.2@Backproc.test>\r\n\r\nsecond\r\n".to_vec();
    let c = b"Subject: no id\r\n\r\nthird\r\n".to_vec();
    let big = big_message(50 << 20);
    let inbox = [a.clone(), b, c, big];
    d.populate("g", "p", "INBOX", &inbox).unwrap();
    // The same message in a second folder, as a Gmail label shows one message in two folders.
    d.populate("g", "p", "Archive", std::slice::from_ref(&a)).unwrap();
    let ids = [
        gm_msgid("<a.1@backproc.test>"),
        gm_msgid("<B.2@Backproc.test>"),
        gm_msgid(""),
        gm_msgid("<big.4@backproc.test>"),
    ];
    assert!((0..4).all(|i| (0..i).all(|j| ids[i] != ids[j])), "{ids:?}");

    let p = FaultProxy::start(upstream(&d)).unwrap();
    p.set_imap_rules(vec![ImapRule::Gmail]);
    let (mut cl, greeting) = Client::greeted(&p);
    assert!(greeting.contains(" X-GM-EXT-1]"), "{greeting}");
    assert!(cl.cmd("l", "LOGIN g p").contains(" X-GM-EXT-1] Logged in"));
    cl.send("c CAPABILITY\r\n");
    let (caps, _) = cl.until("c");
    assert!(caps[0].text().starts_with("* CAPABILITY IMAP4rev1 ") && caps[0].text().ends_with(" X-GM-EXT-1\r\n"));
    assert!(cl.cmd("s", "SELECT INBOX").starts_with("s OK"));

    // All pipelined in one write, with a 50 MB body in the middle.
    let before = p.captured_server().len();
    cl.send(
        "p1 UID FETCH 1:* (UID X-GM-MSGID X-GM-LABELS BODY.PEEK[])\r\np2 EXAMINE Archive\r\n\
         p3 UID FETCH 1:* (X-GM-MSGID FLAGS)\r\np4 UID FETCH 1 (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])\r\n\
         p5 FETCH 1 X-GM-THRID\r\n",
    );
    let mut fetched = Vec::new();
    let mut ahead = None;
    loop {
        let r = cl.resp_probe(&mut || ahead = Some(p.captured_server().len() - before));
        if r.text.starts_with(b"p1 ") {
            assert!(r.text.starts_with(b"p1 OK"), "{}", r.text());
            break;
        }
        fetched.push(r);
    }
    // Streamed: when the client had the first KB of the big body, the proxy had read far less
    // than the whole body from Dovecot (it stops reading while the client does not read).
    let ahead = ahead.expect("the big literal was probed");
    assert!(ahead < 40 << 20, "proxy read {ahead} bytes ahead of the client");
    assert_eq!(fetched.len(), 4);
    for (i, r) in fetched.iter().enumerate() {
        let t = r.text();
        assert!(t.starts_with(&format!("* {} FETCH (", i + 1)), "{t}");
        assert_eq!(r.number("UID"), Some(i as u64 + 1), "{t}");
        assert_eq!(r.number("X-GM-MSGID"), Some(ids[i]), "{t}");
        assert!(t.contains("X-GM-LABELS ()") && !t.contains("HEADER.FIELDS"), "{t}");
        assert!(r.literals.len() == 1 && r.literals[0] == inbox[i], "body {i} differs");
    }
    assert!(cl.until("p2").1.starts_with("p2 OK"));
    // Dovecot runs pipelined FETCHes concurrently and may complete them in any order, so the
    // untagged FETCHes of p3..p5 cannot be told apart by position (nor can the proxy: its
    // marked header fetch tells it which items a response is for).
    let mut rest = Vec::new();
    let mut tagged = Vec::new();
    while tagged.len() < 3 {
        let r = cl.resp();
        match r.text.first() {
            Some(b'*') => rest.push(r),
            _ => tagged.push(r.text()),
        }
    }
    tagged.sort();
    assert!(["p3 OK", "p4 OK", "p5 OK"].iter().zip(&tagged).all(|(want, t)| t.starts_with(want)), "{tagged:?}");
    assert_eq!(rest.len(), 3);
    let find = |needle: &str| rest.iter().find(|r| r.text().contains(needle)).expect(needle);
    // p3: the same message in Archive has the same X-GM-MSGID as in INBOX.
    let archive = find("FLAGS (");
    assert_eq!(archive.number("X-GM-MSGID"), Some(ids[0]), "{}", archive.text());
    // p4: the client's own header fetch is not mistaken for the proxy's.
    let own = find("BODY[HEADER.FIELDS (MESSAGE-ID)] {");
    assert!(!own.text().contains("X-GM") && contains(&own.literals[0], b"Message-ID: <a.1@backproc.test>"));
    // p5: a single item, not in a list.
    let thread = find("X-GM-THRID");
    assert_eq!(thread.text(), format!("* 1 FETCH (X-GM-THRID {})\r\n", ids[0]));

    let hits = p.gmail_hits();
    assert_eq!((hits.capabilities, hits.commands, hits.messages), (3, 3, 6));
    assert_eq!(p.rule_hits(0), 6);
    cl.logout();
}

#[test]
fn rewrite_lines_and_compose_with_faults() {
    let d = Dovecot::start().expect("start dovecot");
    d.add_user("r", "p").unwrap();
    let p = FaultProxy::start(upstream(&d)).unwrap();
    let flags = b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)".to_vec();
    p.set_imap_rules(vec![
        ImapRule::Rewrite { from: flags, to: b"* FLAGS (\\Seen)".to_vec() },
        ImapRule::Rewrite { from: b"* 0 RECENT".to_vec(), to: Vec::new() },
    ]);
    let (mut c, _) = Client::greeted(&p);
    assert!(c.cmd("a", "LOGIN r p").starts_with("a OK"));
    c.send("b SELECT INBOX\r\n");
    let (lines, ok) = c.until("b");
    let lines: Vec<String> = lines.iter().map(Resp::text).collect();
    assert!(ok.starts_with("b OK"));
    assert!(lines.contains(&"* FLAGS (\\Seen)\r\n".to_string()), "{lines:?}");
    assert!(lines.contains(&"* 0 EXISTS\r\n".to_string()) && !lines.iter().any(|l| l.contains("RECENT")), "{lines:?}");
    // Only whole lines match: the same list inside PERMANENTFLAGS is untouched.
    assert!(lines.iter().any(|l| l.contains("[PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)]")));
    assert_eq!((p.rule_hits(0), p.rule_hits(1)), (1, 1));
    c.logout();

    // The Fault applies on top of the rules, to what the client gets.
    p.set_imap_rules(vec![ImapRule::Gmail]);
    p.set_fault(Fault::CutAfter { server_bytes: 10 });
    let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    let got = read_all(&mut s);
    assert!(got.len() == 10 && got.starts_with(b"* OK "), "{got:?}");
    p.set_fault(Fault::Inject { server_bytes_at: 0, bytes: b"* BYE injected\r\n".to_vec() });
    let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    s.write_all(b"a LOGOUT\r\n").unwrap();
    let got = read_all(&mut s);
    assert!(
        got.starts_with(b"* BYE injected\r\n* OK ") && contains(&got, b" X-GM-EXT-1] Dovecot"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    p.set_fault(Fault::StripStartTls);
    let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    s.write_all(b"a CAPABILITY\r\nb LOGOUT\r\n").unwrap();
    let got = String::from_utf8(read_all(&mut s)).unwrap();
    assert!(!got.contains("STARTTLS") && got.matches("X-GM-EXT-1").count() == 2, "{got}");

    // After STARTTLS the bytes are TLS: the proxy forwards them unparsed, both ways.
    p.set_fault(Fault::Pass);
    let (mut c, greeting) = Client::greeted(&p);
    assert!(greeting.contains("STARTTLS") && greeting.contains("X-GM-EXT-1"));
    assert!(c.cmd("t", "STARTTLS").starts_with("t OK"));
    assert!(c.r.buffer().is_empty());
    let tls = native_tls::TlsConnector::builder().danger_accept_invalid_certs(true).build().unwrap();
    let mut tls = tls.connect("127.0.0.1", c.r.into_inner()).expect("TLS through the proxy");
    tls.write_all(b"u LOGIN r p\r\nv LOGOUT\r\n").unwrap();
    let mut got = Vec::new();
    let _ = tls.read_to_end(&mut got);
    assert!(contains(&got, b"u OK") && contains(&got, b"v OK"), "{}", String::from_utf8_lossy(&got));

    // In front of an IMAPS port, TLS from the first byte is forwarded unparsed too.
    let tls_port: SocketAddr = format!("{}:{}", d.host(), d.imaps_port()).parse().unwrap();
    let p = FaultProxy::start(tls_port).unwrap();
    p.set_imap_rules(vec![ImapRule::Gmail, ImapRule::gmail_too_many(0)]);
    let tcp = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tls = native_tls::TlsConnector::builder().danger_accept_invalid_certs(true).build().unwrap();
    let mut tls = tls.connect("127.0.0.1", tcp).expect("IMAPS through the proxy");
    tls.write_all(b"u LOGIN r p\r\nv LOGOUT\r\n").unwrap();
    let mut got = Vec::new();
    let _ = tls.read_to_end(&mut got);
    assert!(contains(&got, b"u OK") && !contains(&got, b"X-GM-EXT-1"), "{}", String::from_utf8_lossy(&got));
    assert_eq!(p.rule_hits(1), 0);
}
