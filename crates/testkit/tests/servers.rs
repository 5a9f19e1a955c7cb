//! Cyrus, Courier and Dovecot, each started for real and driven the same way through
//! `ImapAdmin`: nested and non-ASCII folders, 300 messages with keywords loaded and read back
//! byte for byte, a flag change, an expunge, and a new UIDVALIDITY after delete and recreate.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use backproc_testkit::{Courier, Cyrus, Dovecot, Fetched, ImapAdmin, mailgen, mutf7_encode};

const USER: &str = "alice";
/// A space and a quote, so LOGIN's quoting is exercised.
const PASSWORD: &str = "s3cret \"pass\"";

fn set(flags: &[impl AsRef<str>]) -> BTreeSet<String> {
    flags.iter().map(|f| f.as_ref().to_string()).collect()
}

fn by_uid(fetched: &[Fetched], uid: u32) -> &Fetched {
    fetched.iter().find(|f| f.uid == uid).unwrap_or_else(|| panic!("UID {uid} missing"))
}

fn listed(a: &mut ImapAdmin, name: &str) -> Option<Option<char>> {
    a.list().unwrap().into_iter().find(|(_, _, n)| n == name.as_bytes()).map(|(_, d, _)| d)
}

/// The whole scenario against one server; `seed` picks the messages. Returns how long the
/// 300 messages took to load.
fn scenario(server: &str, port: u16, namespace: (&str, char), seed: u64) -> Duration {
    let mut a = ImapAdmin::login(port, USER, PASSWORD).unwrap_or_else(|e| panic!("{server}: {e:#}"));
    assert!(a.has_capability("IMAP4rev1"), "{server}: {:?}", a.capabilities());
    assert!(a.has_capability("UIDPLUS"), "{server}: {:?}", a.capabilities());
    let (prefix, sep) = a.namespace().unwrap();
    assert_eq!((prefix.as_slice(), sep), (namespace.0.as_bytes(), Some(namespace.1)), "{server}");
    let (p, sep) = (namespace.0, namespace.1);

    let nested = format!("{p}Projekte{sep}2024{sep}Q1");
    let umlaut = format!("{p}{}", mutf7_encode("Entwürfe"));
    assert!(umlaut.ends_with("Entw&APw-rfe"));
    a.create(&nested).unwrap();
    a.create(&umlaut).unwrap();
    assert_eq!(listed(&mut a, "INBOX"), Some(Some(sep)), "{server}: INBOX");
    assert_eq!(listed(&mut a, &nested), Some(Some(sep)), "{server}: {nested}");
    assert_eq!(listed(&mut a, &umlaut), Some(Some(sep)), "{server}: {umlaut}");

    let raws = mailgen::mailbox(seed, 300);
    let msgs: Vec<(Vec<&str>, &[u8])> =
        raws.iter().enumerate().map(|(i, m)| (mailgen::flags_for(i), m.as_slice())).collect();
    let started = Instant::now();
    let uids = a.append_many(&umlaut, &msgs).unwrap_or_else(|e| panic!("{server}: {e:#}"));
    let load = started.elapsed();
    let uids: Vec<u32> = uids.into_iter().map(|u| u.expect("APPENDUID (UIDPLUS)")).collect();
    assert!(uids.windows(2).all(|w| w[0] < w[1]), "{server}: UIDs not increasing: {uids:?}");

    let got = a.fetch_all(&umlaut).unwrap();
    assert_eq!(got.iter().map(|f| f.uid).collect::<Vec<_>>(), uids, "{server}: UID set");
    for (i, uid) in uids.iter().enumerate() {
        let f = by_uid(&got, *uid);
        assert_eq!(set(&f.flags), set(&mailgen::flags_for(i)), "{server}: flags of message {i} (UID {uid})");
        assert!(
            f.body == raws[i],
            "{server}: body of message {i} (UID {uid}) differs ({} vs {} bytes)",
            f.body.len(),
            raws[i].len()
        );
    }

    // Message 0 has \Seen and \Flagged, message 1 only $MyUID.
    a.store(&umlaut, uids[0], "-FLAGS (\\Seen)").unwrap();
    a.store(&umlaut, uids[1], "+FLAGS (\\Seen $Label1)").unwrap();
    a.expunge_uids(&umlaut, &[uids[2]]).unwrap();
    let got = a.fetch_all(&umlaut).unwrap();
    assert_eq!(got.len(), 299, "{server}");
    assert!(got.iter().all(|f| f.uid != uids[2]), "{server}: UID {} not expunged", uids[2]);
    assert_eq!(set(&by_uid(&got, uids[0]).flags), set(&["\\Flagged"]), "{server}");
    assert_eq!(set(&by_uid(&got, uids[1]).flags), set(&["$MyUID", "\\Seen", "$Label1"]), "{server}");
    assert_eq!(set(&by_uid(&got, uids[3]).flags), set(&mailgen::flags_for(3)), "{server}: an untouched message");

    let (messages, uidnext, validity) = a.status(&umlaut).unwrap();
    assert_eq!(messages, 299, "{server}");
    assert!(uidnext > *uids.last().unwrap(), "{server}: UIDNEXT {uidnext}");
    assert_eq!(a.uidvalidity(&umlaut).unwrap(), validity);

    // fetch_all left it selected: delete must cope.
    a.delete(&umlaut).unwrap();
    assert_eq!(listed(&mut a, &umlaut), None, "{server}: deleted folder still listed");
    a.create(&umlaut).unwrap();
    let (messages, uidnext, recreated) = a.status(&umlaut).unwrap();
    assert_eq!((messages, uidnext), (0, 1), "{server}: recreated folder");
    assert_ne!(recreated, validity, "{server}: same UIDVALIDITY after delete and create");
    assert!(a.fetch_all(&umlaut).unwrap().is_empty());

    // INBOX exists from the start and takes a single append with keywords.
    let one = mailgen::text_message(seed, 999);
    let uid = a.append("INBOX", &["$MyUID", "liquid"], &one).unwrap().expect("APPENDUID");
    let inbox = a.fetch_all("INBOX").unwrap();
    assert_eq!(inbox.len(), 1, "{server}");
    assert_eq!((inbox[0].uid, set(&inbox[0].flags), &inbox[0].body), (uid, set(&["$MyUID", "liquid"]), &one));

    a.delete(&nested).unwrap();
    assert_eq!(listed(&mut a, &nested), None, "{server}");
    a.logout();
    load
}

#[test]
fn cyrus_folders_messages_flags_uidvalidity() {
    let c = Cyrus::start().expect("start cyrus");
    c.add_user(USER, PASSWORD).unwrap();
    scenario("cyrus", c.imap_port(), ("", '/'), 11);
    assert!(ImapAdmin::login(c.imap_port(), USER, "wrong").is_err());
    let (admin, pw) = c.admin();
    let mut a = ImapAdmin::login(c.imap_port(), admin, pw).unwrap();
    assert!(a.list().unwrap().iter().any(|(_, _, n)| n == b"user/alice"));
    for cap in ["QRESYNC", "CONDSTORE", "COMPRESS=DEFLATE", "LITERAL+", "MOVE"] {
        assert!(a.has_capability(cap), "cyrus lacks {cap}: {:?}", a.capabilities());
    }
}

#[test]
fn cyrus_traditional_namespace() {
    let c = Cyrus::start_traditional().expect("start cyrus");
    assert_eq!(c.separator(), '.');
    c.add_user(USER, PASSWORD).unwrap();
    scenario("cyrus (traditional)", c.imap_port(), ("INBOX.", '.'), 12);
}

#[test]
fn courier_folders_messages_flags_uidvalidity() {
    let c = Courier::start().expect("start courier");
    c.add_user(USER, PASSWORD).unwrap();
    // Courier answers a wrong password after a fixed 5 s: check it beside the rest.
    let port = c.imap_port();
    let wrong = std::thread::spawn(move || ImapAdmin::login(port, USER, "wrong").is_err());
    scenario("courier", c.imap_port(), ("INBOX.", '.'), 13);
    assert!(wrong.join().unwrap(), "courier accepted a wrong password");
    let a = ImapAdmin::login(c.imap_port(), USER, PASSWORD).unwrap();
    for cap in ["CONDSTORE", "QRESYNC", "MOVE", "LITERAL+"] {
        assert!(!a.has_capability(cap), "courier now offers {cap}: {:?}", a.capabilities());
    }
}

#[test]
fn dovecot_folders_messages_flags_uidvalidity() {
    let d = Dovecot::start().expect("start dovecot");
    d.add_user(USER, PASSWORD).unwrap();
    let load = scenario("dovecot", d.imap_port(), ("", '/'), 14);
    // Pipelined with LITERAL+, 300 messages (about 15 MB) take a fraction of a second here; a
    // round trip per message would still pass, but a stall would not.
    assert!(load < Duration::from_secs(5), "300 messages took {load:?}");
}

/// Instances started at once are independent: own users, own mail, own ports.
#[test]
fn several_instances_at_once() {
    let starts: Vec<_> = (0..4usize)
        .map(|i| {
            std::thread::spawn(move || -> (Box<dyn std::any::Any + Send>, u16) {
                let pw = format!("pw{i}");
                if i.is_multiple_of(2) {
                    let c = Cyrus::start().expect("start cyrus");
                    c.add_user("bob", &pw).unwrap();
                    let port = c.imap_port();
                    (Box::new(c), port)
                } else {
                    let c = Courier::start().expect("start courier");
                    c.add_user("bob", &pw).unwrap();
                    let port = c.imap_port();
                    (Box::new(c), port)
                }
            })
        })
        .collect();
    let servers: Vec<_> = starts.into_iter().map(|t| t.join().unwrap()).collect();
    let ports: BTreeSet<u16> = servers.iter().map(|s| s.1).collect();
    assert_eq!(ports.len(), servers.len(), "two instances on one port");
    // In parallel: Courier answers a wrong password after a fixed 5 s.
    let n = servers.len();
    let wrong: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, (_, port))| {
            let port = *port;
            std::thread::spawn(move || ImapAdmin::login(port, "bob", &format!("pw{}", (i + 1) % n)).is_err())
        })
        .collect();
    for (i, w) in wrong.into_iter().enumerate() {
        assert!(w.join().unwrap(), "instance {i} took another instance's password");
    }
    for (i, (_, port)) in servers.iter().enumerate() {
        let mut a = ImapAdmin::login(*port, "bob", &format!("pw{i}")).unwrap();
        for n in 0..=i {
            a.append("INBOX", &[], &mailgen::text_message(i as u64, n)).unwrap();
        }
        assert_eq!(a.status("INBOX").unwrap().0, i as u32 + 1, "instance {i} sees another's mail");
    }
}
