//! A scripted SMTP server that offers STARTTLS (smtp-sink never does), so a STARTTLS-stripping
//! proxy in front of it really has something to strip. It accepts everything in plain text
//! (AUTH, MAIL, RCPT, DATA), so a client that wrongly continued without TLS would be seen
//! sending its credentials and the message. STARTTLS itself is answered 454.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

pub struct StarttlsSmtp {
    port: u16,
    received: Arc<Mutex<Vec<u8>>>,
}

impl StarttlsSmtp {
    pub fn start() -> StarttlsSmtp {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = l.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let r = Arc::clone(&received);
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    let _ = serve(c, &r);
                });
            }
        });
        StarttlsSmtp { port, received }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything clients sent, all connections.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

fn serve(c: TcpStream, rec: &Mutex<Vec<u8>>) -> std::io::Result<()> {
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut w = c.try_clone()?;
    let mut r = BufReader::new(c);
    w.write_all(b"220 stub.test ESMTP\r\n")?;
    let mut in_data = false;
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        rec.lock().unwrap().extend_from_slice(&line);
        if in_data {
            if line == b".\r\n" {
                in_data = false;
                w.write_all(b"250 2.0.0 queued\r\n")?;
            }
            continue;
        }
        let up = String::from_utf8_lossy(&line).to_ascii_uppercase();
        let reply: &[u8] = match up.get(..4).unwrap_or("") {
            "EHLO" => b"250-stub.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n",
            "HELO" => b"250 stub.test\r\n",
            "STAR" => b"454 4.7.0 TLS not available\r\n",
            "AUTH" => b"235 2.7.0 Authentication successful\r\n",
            "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 2.0.0 ok\r\n",
            "DATA" => {
                in_data = true;
                b"354 go ahead\r\n"
            }
            "QUIT" => {
                w.write_all(b"221 2.0.0 bye\r\n")?;
                return Ok(());
            }
            _ => b"502 5.5.2 unknown\r\n",
        };
        w.write_all(reply)?;
    }
}
