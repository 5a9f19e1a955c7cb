//! The link simulator's own behaviour: a round trip costs the RTT, a pipelined stream keeps
//! flowing (a delay line, not stop-and-wait), bandwidth is paced and shared, turns are counted.
//! Lower bounds are the behaviour; upper bounds are loose, for a loaded machine.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use backproc_testkit::{Link, LinkProxy};

/// An echo server on loopback; returns its address.
fn echo() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn read_n(s: &mut TcpStream, n: usize) {
    let mut got = 0;
    let mut buf = vec![0u8; 65536];
    while got < n {
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "closed after {got} of {n}");
        got += k;
    }
}

#[test]
fn a_round_trip_costs_the_rtt_and_turns_are_counted() {
    let p = LinkProxy::start(echo(), Link::new(100, 1000)).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        s.write_all(b"ping\r\n").unwrap();
        read_n(&mut s, 6);
        let rt = t.elapsed();
        assert!(rt >= Duration::from_millis(100), "{rt:?}");
        assert!(rt < Duration::from_millis(600), "{rt:?}");
    }
    assert_eq!(p.turns(), 3);
    assert_eq!(p.bytes(), (18, 18));
}

#[test]
fn a_pipelined_stream_keeps_flowing() {
    let p = LinkProxy::start(echo(), Link::new(200, 1000)).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    let t = Instant::now();
    for _ in 0..10 {
        s.write_all(b"0123456789").unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    read_n(&mut s, 100);
    let took = t.elapsed();
    // 10 writes over 200 ms, each echoed one RTT later: about 400 ms, where stop-and-wait
    // would take 10 RTTs (2 s)
    assert!(took >= Duration::from_millis(380), "{took:?}");
    assert!(took < Duration::from_millis(1200), "{took:?}");
}

#[test]
fn bandwidth_is_paced_and_shared_by_all_connections() {
    // 8 Mbit/s = 1 MB/s each way; two connections of 500 KB each share it
    let p = LinkProxy::start(echo(), Link::new(2, 8)).unwrap();
    let t = Instant::now();
    let both: Vec<_> = (0..2)
        .map(|_| {
            let port = p.port();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let mut r = s.try_clone().unwrap();
                let reader = std::thread::spawn(move || read_n(&mut r, 500_000));
                s.write_all(&vec![b'x'; 500_000]).unwrap();
                reader.join().unwrap();
            })
        })
        .collect();
    for h in both {
        h.join().unwrap();
    }
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(950), "1 MB at 1 MB/s took {took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(p.bytes(), (1_000_000, 1_000_000));
    assert_eq!(p.connections(), 2);
}

/// A closed connection leaves nothing behind: the proxy once kept two descriptors of every
/// connection until it was dropped, and a bench run of 12,000 connections ran out of them.
#[test]
fn closed_connections_are_forgotten() {
    let p = LinkProxy::start(echo(), Link::new(2, 1000)).unwrap();
    for _ in 0..50 {
        let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        s.write_all(b"hi").unwrap();
        read_n(&mut s, 2);
    }
    assert_eq!(p.connections(), 50);
    // Each ends once both directions have seen their peer close (a round trip or so); a
    // leak never does.
    let until = Instant::now() + Duration::from_secs(30);
    while p.open_connections() > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(p.open_connections(), 0, "connections left open");
}
