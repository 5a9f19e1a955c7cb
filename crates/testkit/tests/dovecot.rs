//! The Dovecot harness against a real Dovecot: plain, IMAPS, STARTTLS, folders, flags, bulk load.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Instant;

use backproc_testkit::{Dovecot, mailgen, mutf7_encode};
use imap::types::Flag;

fn tls_connector(d: &Dovecot) -> native_tls::TlsConnector {
    let pem = std::fs::read(d.ca_cert_path()).unwrap();
    native_tls::TlsConnector::builder()
        .add_root_certificate(native_tls::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

#[test]
fn folders_flags_plain_imaps_starttls() {
    let d = Dovecot::start().expect("start dovecot");
    d.add_user("alice", "secret").unwrap();
    let folder = "Entwürfe & Входящие";
    d.create_folder("alice", "secret", folder).unwrap();
    let flags: [&[&str]; 3] = [&["\\Seen"], &["\\Flagged", "$Forwarded"], &[]];
    let mut uids = Vec::new();
    for (i, f) in flags.iter().enumerate() {
        uids.push(d.append("alice", "secret", folder, &mailgen::text_message(1, i), f).unwrap());
    }
    assert_eq!(uids, [1, 2, 3]);

    // Plain.
    let mut s = d.session("alice", "secret").unwrap();
    let names = s.list(Some(""), Some("*")).unwrap();
    let names: Vec<&str> = names.iter().map(|n| n.name()).collect();
    let encoded = mutf7_encode(folder);
    assert_eq!(encoded, "Entw&APw-rfe &- &BBIERQQ+BDQETwRJBDgENQ-");
    for want in ["INBOX", "Sent", "Trash", "Drafts", "Junk", encoded.as_str()] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let mb = s.examine(&encoded).unwrap();
    assert_eq!(mb.exists, 3);
    let fetched = s.uid_fetch("1:*", "FLAGS").unwrap();
    let by_uid = |uid: u32| fetched.iter().find(|f| f.uid == Some(uid)).unwrap().flags().to_vec();
    assert!(by_uid(1).contains(&Flag::Seen));
    assert!(by_uid(2).contains(&Flag::Flagged));
    assert!(by_uid(2).contains(&Flag::Custom("$Forwarded".into())));
    assert!(!by_uid(3).contains(&Flag::Seen));
    let caps = s.capabilities().unwrap();
    for c in ["CONDSTORE", "QRESYNC", "UIDPLUS", "MOVE", "SPECIAL-USE"] {
        assert!(caps.has_str(c), "{c} missing");
    }
    s.logout().unwrap();
    assert!(d.session("alice", "wrong").is_err());

    // IMAPS, trusting the test certificate explicitly.
    let tcp = TcpStream::connect((d.host(), d.imaps_port())).unwrap();
    let tls = tls_connector(&d).connect("127.0.0.1", tcp).expect("IMAPS handshake");
    let mut c = imap::Client::new(tls);
    c.read_greeting().unwrap();
    let mut s = c.login("alice", "secret").map_err(|(e, _)| e).unwrap();
    assert_eq!(s.examine(&encoded).unwrap().exists, 3);
    s.logout().unwrap();

    // STARTTLS on the plain port.
    let tcp = TcpStream::connect((d.host(), d.imap_port())).unwrap();
    let mut r = BufReader::new(tcp.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("STARTTLS"), "{line}");
    (&tcp).write_all(b"s1 STARTTLS\r\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("s1 OK"), "{line}");
    let tls = tls_connector(&d).connect("localhost", tcp).expect("STARTTLS handshake");
    let c = imap::Client::new(tls);
    let mut s = c.login("alice", "secret").map_err(|(e, _)| e).unwrap();
    assert_eq!(s.examine(&encoded).unwrap().exists, 3);
    s.logout().unwrap();

    d.delete_folder("alice", "secret", folder).unwrap();
    let out = d.doveadm(&["mailbox", "list", "-u", "alice"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("Sent") && !list.contains("Entw"), "{list}");
}

#[test]
fn populate_two_thousand() {
    let d = Dovecot::start().expect("start dovecot");
    d.add_user("bulk", "pw").unwrap();
    let msgs = mailgen::mailbox(42, 2_000);
    let bytes: usize = msgs.iter().map(Vec::len).sum();
    let t = Instant::now();
    d.populate("bulk", "pw", "Archiv/2024", &msgs).unwrap();
    eprintln!("populate: 2000 messages, {} MB in {:?}", bytes >> 20, t.elapsed());
    let mut s = d.session("bulk", "pw").unwrap();
    assert_eq!(s.examine("Archiv/2024").unwrap().exists, 2_000);
    assert_eq!(s.uid_search("ALL").unwrap().len(), 2_000);
}

#[test]
fn independent_instances_in_parallel() {
    let threads: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let d = Dovecot::start().expect("start dovecot");
                d.add_user("u", "p").unwrap();
                d.append("u", "p", "INBOX", &mailgen::text_message(i, 0), &[]).unwrap();
                (d.imap_port(), d.imaps_port(), d.dir().to_path_buf())
            })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for t in threads {
        let (a, b, dir) = t.join().unwrap();
        assert!(seen.insert(a) && seen.insert(b));
        assert!(!dir.exists(), "temp dir removed on drop");
    }
}
