//! The order of a chained send on the wire, against a scripted peer that answers a message's
//! final "." only once the next envelope has arrived behind it: a client that waited for the
//! 250 before writing the next MAIL would hang here (and fail on the peer's read timeout).
//! Delivery itself is tested against real servers (tests/outbox.rs, tests/faults.rs).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use backproc_smtp::{Envelope, Params, Security, Smtp};

/// Reads from `r` until `buf` ends with `end`, or fails after the read timeout.
fn read_until(r: &mut BufReader<TcpStream>, buf: &mut Vec<u8>, end: &[u8]) {
    let mut byte = [0u8; 1];
    while !buf.ends_with(end) {
        r.read_exact(&mut byte).unwrap_or_else(|e| {
            panic!("peer waited for {:?}, got {:?}: {e}", String::from_utf8_lossy(end), String::from_utf8_lossy(buf))
        });
        buf.push(byte[0]);
    }
}

fn peer(listener: TcpListener) -> Vec<u8> {
    let (s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut seen = Vec::new();
    let mut line = String::new();
    w.write_all(b"220 peer ESMTP\r\n").unwrap();
    for _ in 0..2 {
        // lettre's EHLO, then ours that reads PIPELINING
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("EHLO"), "{line}");
        w.write_all(b"250-peer\r\n250-PIPELINING\r\n250 8BITMIME\r\n").unwrap();
    }
    // The first envelope in one write.
    read_until(&mut r, &mut seen, b"DATA\r\n");
    assert!(String::from_utf8_lossy(&seen).starts_with("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n"));
    w.write_all(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go on\r\n").unwrap();
    // The first message, its ".", and the second envelope, before any answer.
    let at = seen.len();
    read_until(
        &mut r,
        &mut seen,
        b"\r\n.\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<c@x.test>\r\nRCPT TO:<d@x.test>\r\nDATA\r\n",
    );
    assert!(String::from_utf8_lossy(&seen[at..]).starts_with("Subject: one\r\n"));
    w.write_all(b"250 2.0.0 queued as 1\r\n250 2.1.0 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n354 go on\r\n")
        .unwrap();
    // The second message alone (nothing chained behind it), then a third envelope whose only
    // recipient is refused.
    read_until(&mut r, &mut seen, b"\r\n..dot line\r\n.\r\n");
    w.write_all(b"250 2.0.0 queued as 2\r\n").unwrap();
    read_until(&mut r, &mut seen, b"MAIL FROM:<a@x.test>\r\nRCPT TO:<e@x.test>\r\nDATA\r\n");
    w.write_all(b"250 2.1.0 ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n").unwrap();
    line.clear();
    let _ = r.read_line(&mut line); // QUIT
    if line.starts_with("QUIT") {
        let _ = w.write_all(b"221 bye\r\n");
    }
    seen
}

#[test]
fn the_next_envelope_goes_out_with_the_message_and_each_answer_lands_on_its_own_transaction() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || peer(listener));
    let params = Params {
        host: "127.0.0.1".into(),
        port,
        security: Security::None,
        login: None,
        credential: None,
        ca_pem: None,
        insecure: false,
        timeout: Duration::from_secs(5),
    };
    let mut smtp = Smtp::connect(&params).expect("connect");
    assert!(smtp.pipelining());
    let rcpts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let Envelope::Open(first) = smtp.envelope("a@x.test", &rcpts(&["b@x.test"])) else { panic!("DATA refused") };
    let second_rcpts = rcpts(&["c@x.test", "d@x.test"]);
    let (one, next) = smtp.data(first, b"Subject: one\r\n\r\nbody\r\n", Some(("a@x.test", &second_rcpts)));
    let one = one.expect("first message accepted");
    assert_eq!((one.accepted, one.response.as_str()), (rcpts(&["b@x.test"]), "250 2.0.0 queued as 1"));
    let Some(Envelope::Open(second)) = next else { panic!("second envelope: {next:?}") };
    let (two, next) = smtp.data(second, b"Subject: two\r\n\r\n.dot line\n", None);
    assert!(next.is_none());
    let two = two.expect("second message accepted");
    assert_eq!((two.accepted, two.rejected), (rcpts(&["d@x.test"]), rcpts(&["c@x.test"])));
    match smtp.envelope("a@x.test", &rcpts(&["e@x.test"])) {
        Envelope::Done(Ok(d)) => assert_eq!((d.accepted.len(), d.rejected), (0, rcpts(&["e@x.test"]))),
        other => panic!("third envelope: {other:?}"),
    }
    smtp.quit();
    let wire = String::from_utf8(server.join().expect("the peer saw the expected order")).unwrap();
    assert_eq!(wire.matches("MAIL FROM").count(), 3, "{wire}");
}
