//! The fault proxy in front of a real Dovecot.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use backproc_testkit::{Dovecot, Fault, FaultProxy};

fn upstream(d: &Dovecot) -> SocketAddr {
    format!("{}:{}", d.host(), d.imap_port()).parse().unwrap()
}

fn read_all(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
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
