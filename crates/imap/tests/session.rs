//! The session against a real Dovecot: every typed command, pipelined reads, and flag pushes
//! that change only what they name.

use std::collections::BTreeSet;
use std::time::Duration;

use backproc_imap::{ConnectParams, Credential, FlagPush, Flags, FlagsRead, FolderRead, Security, Session};
use backproc_testkit::{Dovecot, mailgen};

fn params(d: &Dovecot, user: &str, pw: &str) -> ConnectParams {
    ConnectParams {
        host: "127.0.0.1".into(),
        port: d.imap_port(),
        security: Security::None,
        login: user.into(),
        credential: Credential::Password(pw.into()),
        ca_pem: None,
        insecure: false,
        timeout: Duration::from_secs(10),
        deadline: None,
        max_message: 64 << 20,
        compress: false,
    }
}

#[test]
fn a_folder_read_in_one_round_trip_sees_changes_and_pushes_only_what_changed() {
    let d = Dovecot::start().unwrap();
    d.add_user("u", "p").unwrap();
    d.populate("u", "p", "INBOX", &mailgen::mailbox(3, 20)).unwrap();
    let mut s = Session::connect(&params(&d, "u", "p")).unwrap();
    assert!(s.caps.condstore && s.caps.qresync && s.caps.esearch, "{:?}", s.caps);
    let st = s.status("INBOX").unwrap();
    assert_eq!((st.exists, st.uidnext), (20, 21));
    let first = s
        .read_folder(
            "INBOX",
            &FolderRead {
                write: false,
                new_after: Some(0),
                flags: Some(FlagsRead { last: 20, changed_since: None, vanished: false }),
                present: Some(20),
            },
        )
        .unwrap();
    assert_eq!(first.new.len(), 20);
    assert_eq!(first.flags.len(), 20);
    assert_eq!(first.present, Some((1..=20).collect::<BTreeSet<u32>>()));
    let modseq = first.selected.highest_modseq.expect("CONDSTORE");

    // another client changes flags and expunges one
    let mut other = d.session("u", "p").unwrap();
    other.select("INBOX").unwrap();
    other.uid_store("1:3", "+FLAGS ($Label1 \\Seen)").unwrap();
    other.uid_store("5", "+FLAGS (\\Deleted)").unwrap();
    other.expunge().unwrap();
    drop(other);

    // our session hears of the expunge at its next command (RFC 3501 §7.4.1)
    s.noop().unwrap();
    for vanished in [false, true] {
        let r = s
            .read_folder(
                "INBOX",
                &FolderRead {
                    write: false,
                    new_after: None,
                    flags: Some(FlagsRead { last: 20, changed_since: Some(modseq), vanished }),
                    present: Some(20),
                },
            )
            .unwrap();
        assert_eq!(r.flags.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3], "vanished {vanished}: {:?}", r.flags);
        assert_eq!(r.flags[&1], Flags::parse("\\Seen $Label1"));
        assert_eq!(r.present.as_ref().unwrap().len(), 19);
        if vanished {
            assert_eq!(r.vanished, [5].into(), "QRESYNC names what was expunged");
        }
    }

    // push: +\Flagged on 1 keeps $Label1; -$Label1 on 2 keeps \Seen
    s.ensure_selected("INBOX", true).unwrap();
    let pushes = vec![
        FlagPush { uids: vec![1], add: Flags::parse("\\Flagged"), remove: Flags::default() },
        FlagPush { uids: vec![2], add: Flags::parse("NonJunk"), remove: Flags::parse("$Label1") },
    ];
    let report = s.store_flags(&pushes, s.selected().unwrap().highest_modseq).unwrap();
    assert!(report.modified.is_empty(), "{report:?}");
    let r = s
        .read_folder(
            "INBOX",
            &FolderRead {
                flags: Some(FlagsRead { last: 20, changed_since: None, vanished: false }),
                ..FolderRead::default()
            },
        )
        .unwrap();
    assert_eq!(r.flags[&1], Flags::parse("\\Seen \\Flagged $Label1"));
    assert_eq!(r.flags[&2], Flags::parse("\\Seen NonJunk"));
    assert_eq!(r.flags[&3], Flags::parse("\\Seen $Label1"));
}

/// A token server, and a Dovecot with user `u` that checks tokens there.
fn oauth_dovecot() -> (backproc_testkit::TokenServer, Dovecot) {
    let ts = backproc_testkit::TokenServer::start().unwrap();
    let d = Dovecot::start_with(backproc_testkit::DovecotOptions {
        oauth2_introspection_url: Some(ts.introspection_url()),
        ..Default::default()
    })
    .unwrap();
    d.add_user("u", "p").unwrap();
    (ts, d)
}

/// OAuth2 sign-in against Dovecot's `oauth2` passdb (issue 19): AUTHENTICATE OAUTHBEARER with
/// a good token; a refused token's error challenge is answered and reported as a sign-in
/// error naming the server's status, never a protocol error; the token never reaches it.
#[test]
fn bearer_tokens_sign_in_and_a_refused_one_names_the_status() {
    let (ts, d) = oauth_dovecot();
    let good = ts.issue_access_token("u");
    let mut p = params(&d, "u", "p");
    p.credential = Credential::Bearer(good);
    let mut s = Session::connect(&p).unwrap();
    assert!(s.list().unwrap().has_inbox(), "signed in");
    assert!(ts.counts().introspect >= 1, "the server checked the token");
    let bad = "at-never-issued-0123456789";
    p.credential = Credential::Bearer(bad.into());
    let e = Session::connect(&p).err().expect("refused");
    assert_eq!(e.kind, backproc_imap::ErrorKind::Auth, "{}", e.detail);
    assert!(e.detail.contains("OAUTHBEARER") && e.detail.contains("status: invalid_token"), "{}", e.detail);
    assert!(!e.detail.contains(bad), "{}", e.detail);
}

/// A server without SASL-IR and OAUTHBEARER (Dovecot's greeting rewritten by the fault proxy):
/// XOAUTH2, its initial response after the server's `+`; a refused token names XOAUTH2's
/// status.
#[test]
fn xoauth2_without_sasl_ir_waits_for_the_go_ahead() {
    use std::io::{BufRead, BufReader};
    let (ts, d) = oauth_dovecot();
    let mut greeting = String::new();
    BufReader::new(std::net::TcpStream::connect(("127.0.0.1", d.imap_port())).unwrap())
        .read_line(&mut greeting)
        .unwrap();
    let greeting = greeting.trim_end().to_string();
    assert!(greeting.contains(" SASL-IR") && greeting.contains(" AUTH=OAUTHBEARER"), "{greeting}");
    let stripped = greeting.replace(" SASL-IR", "").replace(" AUTH=OAUTHBEARER", "");
    let proxy = backproc_testkit::FaultProxy::start(format!("127.0.0.1:{}", d.imap_port()).parse().unwrap()).unwrap();
    proxy.set_imap_rules(vec![backproc_testkit::ImapRule::Rewrite { from: greeting.into(), to: stripped.into() }]);
    proxy.set_capture(true);
    let mut p = params(&d, "u", "p");
    p.port = proxy.port();
    p.credential = Credential::Bearer(ts.issue_access_token("u"));
    let mut s = Session::connect(&p).unwrap();
    assert!(s.list().unwrap().has_inbox(), "signed in");
    let sent = String::from_utf8_lossy(&proxy.captured_client()).into_owned();
    assert!(sent.contains("AUTHENTICATE XOAUTH2\r\n"), "no initial response on the command line: {sent}");
    p.credential = Credential::Bearer("at-never-issued".into());
    let e = Session::connect(&p).err().expect("refused");
    assert_eq!(e.kind, backproc_imap::ErrorKind::Auth, "{}", e.detail);
    assert!(e.detail.contains("XOAUTH2") && e.detail.contains("status: 401"), "{}", e.detail);
}

/// A Dovecot offering COMPRESS=DEFLATE (imap_zlib) with user "u" / "p" and `n` generated
/// messages (seed `seed`) in INBOX.
fn deflating_dovecot(seed: u64, n: usize) -> (Dovecot, Vec<Vec<u8>>) {
    let d = Dovecot::start_with(backproc_testkit::DovecotOptions { compress: true, ..Default::default() }).unwrap();
    d.add_user("u", "p").unwrap();
    let msgs = mailgen::mailbox(seed, n);
    d.populate("u", "p", "INBOX", &msgs).unwrap();
    (d, msgs)
}

/// An account's first listing asks COMPRESS behind its LIST (and the STATUS asked ahead): no
/// round trip of its own, counted at a link proxy, and the session deflated afterwards, its
/// STATUS answer and its bodies read through it.
#[test]
fn compress_rides_with_the_first_listing() {
    let (d, msgs) = deflating_dovecot(5, 20);
    let upstream = format!("127.0.0.1:{}", d.imap_port()).parse().unwrap();
    let link = backproc_testkit::LinkProxy::start(upstream, backproc_testkit::Link::new(2, 1000)).unwrap();
    // the turns of a listing after login, with COMPRESS behind it or asked on its own
    let listing = |together: bool| {
        let mut p = params(&d, "u", "p");
        p.port = link.port();
        p.compress = true;
        let mut s = Session::connect(&p).unwrap();
        let before = link.turns();
        s.status_ahead(&["INBOX"]).unwrap();
        let listed = if together {
            s.list_before_download().unwrap()
        } else {
            let l = s.list().unwrap();
            s.deflate_for_download().unwrap();
            l
        };
        let turns = link.turns() - before;
        assert!(listed.has_inbox());
        assert!(s.compressed(), "together {together}: deflated");
        // the STATUS answer came before COMPRESS's; what follows is read deflated
        assert_eq!(s.status("INBOX").unwrap().exists, 20);
        s.ensure_selected("INBOX", false).unwrap();
        let t = s.queue_fetch(&[7], 1 << 20).unwrap();
        let mut got = Vec::new();
        s.read_fetch(t, |f| got.push(f.raw)).unwrap();
        assert_eq!(got, vec![msgs[6].clone()], "together {together}: message 7 byte-identical");
        turns
    };
    assert_eq!(listing(false), 2, "LIST with STATUS, then COMPRESS");
    assert_eq!(listing(true), 1, "LIST with STATUS and COMPRESS");
}

/// COMPRESS=DEFLATE (RFC 4978) against Dovecot's imap_zlib: bodies come down and an APPEND
/// goes up through the deflate streams, byte-identical, in fewer wire bytes than without.
#[test]
fn compressed_sessions_move_the_same_bytes_in_fewer() {
    let (d, msgs) = deflating_dovecot(11, 200);
    let bodies = |compress: bool| {
        let mut p = params(&d, "u", "p");
        p.compress = compress;
        let mut s = Session::connect(&p).unwrap();
        // COMPRESS waits for the first download
        assert!(!s.compressed());
        s.deflate_for_download().unwrap();
        assert_eq!(s.compressed(), compress);
        s.ensure_selected("INBOX", false).unwrap();
        let uids: Vec<u32> = (1..=200).collect();
        // two batches in flight at once, as Receive pipelines them
        let (a, b) = (s.queue_fetch(&uids[..100], 1 << 20).unwrap(), s.queue_fetch(&uids[100..], 1 << 20).unwrap());
        let mut got = std::collections::BTreeMap::new();
        for t in [a, b] {
            s.read_fetch(t, |f| {
                got.insert(f.uid, f.raw);
            })
            .unwrap();
        }
        // and one up: a 300 KB message, more than one deflate block
        let big = mailgen::message_with(
            "big",
            "a@x.test",
            "b@x.test",
            "Mon, 23 Nov 2026 12:00:00 +0000",
            "big@x.test",
            &"line of text\r\n".repeat(25_000),
        );
        s.append("INBOX", &Flags::parse("\\Seen"), &big).unwrap();
        (got, s.traffic().0, big)
    };
    let (plain, plain_in, _) = bodies(false);
    let (deflated, deflated_in, big) = bodies(true);
    assert_eq!(plain.len(), 200);
    assert_eq!(deflated, plain, "the same bodies");
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(deflated[&(i as u32 + 1)], *m, "message {} byte-identical", i + 1);
    }
    // mailgen mixes text with base64 attachments, which deflate hardly shrinks
    assert!(deflated_in * 100 < plain_in * 85, "deflated {deflated_in} wire bytes, plain {plain_in}");
    let mut check = Session::connect(&params(&d, "u", "p")).unwrap();
    check.ensure_selected("INBOX", false).unwrap();
    let t = check.queue_fetch(&[201, 202], 1 << 20).unwrap();
    let mut appended = Vec::new();
    check.read_fetch(t, |f| appended.push(f.raw)).unwrap();
    assert_eq!(appended, vec![big.clone(), big], "both APPENDs arrived intact");
}

/// Two body FETCHes in flight whose answers the server interleaves (Dovecot runs pipelined
/// commands concurrently): the big body of the second arrives while the first, small, batch
/// is the oldest in flight. The bytes are within what both may send together, so nothing is
/// refused (the hostile-corpus test met this at random: "more than N bytes in the answer to
/// UID FETCH").
#[test]
fn interleaved_answers_count_against_every_fetch_in_flight() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let big = vec![b'x'; 20 << 20];
    let server = {
        let big = big.clone();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n").unwrap();
            let mut fetch_tags = Vec::new();
            let mut line = String::new();
            while fetch_tags.len() < 2 {
                line.clear();
                if r.read_line(&mut line).unwrap() == 0 {
                    return;
                }
                let tag = line.split(' ').next().unwrap().to_string();
                if line.contains("LOGIN") {
                    w.write_all(format!("{tag} OK [CAPABILITY IMAP4rev1 LITERAL+] in\r\n").as_bytes()).unwrap();
                } else if line.contains("UID FETCH") {
                    fetch_tags.push(tag);
                }
            }
            let date = "INTERNALDATE \"02-Dec-2026 12:00:00 +0000\"";
            // the second batch's body first, then the first's
            w.write_all(format!("* 2 FETCH (UID 2 FLAGS () {date} BODY[] {{{}}}\r\n", big.len()).as_bytes()).unwrap();
            w.write_all(&big).unwrap();
            w.write_all(format!(")\r\n* 1 FETCH (UID 1 FLAGS () {date} BODY[] {{5}}\r\nsmall)\r\n").as_bytes())
                .unwrap();
            w.write_all(format!("{} OK done\r\n{} OK done\r\n", fetch_tags[0], fetch_tags[1]).as_bytes()).unwrap();
            let _ = r.read_line(&mut line);
        })
    };
    let p = ConnectParams {
        host: "127.0.0.1".into(),
        port,
        security: Security::None,
        login: "u".into(),
        credential: Credential::Password("p".into()),
        ca_pem: None,
        insecure: false,
        timeout: Duration::from_secs(10),
        deadline: None,
        max_message: 64 << 20,
        compress: false,
    };
    let mut s = Session::connect(&p).unwrap();
    let small = s.queue_fetch(&[1], 5).unwrap();
    let large = s.queue_fetch(&[2], big.len() as u64).unwrap();
    let mut got = std::collections::BTreeMap::new();
    for t in [small, large] {
        s.read_fetch(t, |f| {
            got.insert(f.uid, f.raw.len());
        })
        .unwrap();
    }
    assert_eq!(got, [(1, 5), (2, big.len())].into());
    drop(s);
    server.join().unwrap();
}

/// Dovecot answers STATUS of the selected mailbox with the session's view of it: a message
/// another client appended since the SELECT was missing until the next poll interval (found by
/// push, whose event made a sync of a folder the cached session had selected).
#[test]
fn status_of_the_selected_mailbox_sees_what_another_client_appended() {
    let d = Dovecot::start().unwrap();
    d.add_user("sel", "pw").unwrap();
    d.populate("sel", "pw", "INBOX", &mailgen::mailbox(3, 2)).unwrap();
    let mut s = Session::connect(&params(&d, "sel", "pw")).unwrap();
    s.select("INBOX", false).unwrap();
    assert_eq!(s.status("INBOX").unwrap().exists, 2);
    d.append("sel", "pw", "INBOX", b"Subject: later\r\n\r\nx\r\n", &[]).unwrap();
    let st = s.status("INBOX").unwrap();
    assert_eq!((st.exists, st.uidnext), (3, 4), "the new message counts");
    assert_eq!(s.selected().map(|m| (m.name.as_str(), m.exists)), Some(("INBOX", 3)), "still selected, up to date");
}
