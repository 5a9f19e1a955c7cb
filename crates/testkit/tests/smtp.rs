//! smtp-sink and the aiosmtpd server, driven by a raw SMTP dialogue.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use backproc_testkit::{PySmtp, SinkOptions, SmtpRules, SmtpSink};

/// Speaks SMTP until the first refusal; returns the final reply line of each step.
fn dialogue(port: u16, from: &str, rcpts: &[&str], message: &str) -> Vec<String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut r = BufReader::new(tcp.try_clone().unwrap());
    let mut w = tcp;
    let reply = |r: &mut BufReader<TcpStream>| loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap() == 0 {
            return "EOF".to_string();
        }
        if l.len() < 4 || l.as_bytes()[3] == b' ' {
            return l.trim_end().to_string();
        }
    };
    let mut out = vec![reply(&mut r)];
    let mut send = |cmd: String, out: &mut Vec<String>, r: &mut BufReader<TcpStream>| {
        w.write_all(cmd.as_bytes()).unwrap();
        let line = reply(r);
        out.push(line.clone());
        line
    };
    send("EHLO client.test\r\n".into(), &mut out, &mut r);
    if !send(format!("MAIL FROM:<{from}>\r\n"), &mut out, &mut r).starts_with('2') {
        return out;
    }
    let mut accepted = 0;
    for rcpt in rcpts {
        if send(format!("RCPT TO:<{rcpt}>\r\n"), &mut out, &mut r).starts_with('2') {
            accepted += 1;
        }
    }
    if accepted > 0 && send("DATA\r\n".into(), &mut out, &mut r).starts_with("354") {
        send(format!("{message}\r\n.\r\n"), &mut out, &mut r);
    }
    send("QUIT\r\n".into(), &mut out, &mut r);
    out
}

const MSG: &str = "Subject: hello\r\nMessage-ID: <m1@backproc.test>\r\n\r\nbody line";

#[test]
fn sink_accepts_dumps_and_restarts() {
    let mut sink = SmtpSink::start(SinkOptions::default()).expect("start smtp-sink");
    let r = dialogue(sink.port(), "a@x.test", &["b@y.test", "c@y.test"], MSG);
    assert!(r[r.len() - 2].starts_with("250"), "{r:?}");
    let msgs = sink.messages().unwrap();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let m = String::from_utf8_lossy(&msgs[0]);
    assert!(m.contains("X-Mail-Args: <a@x.test>"), "{m}");
    assert!(m.contains("X-Rcpt-Args: <b@y.test>") && m.contains("X-Rcpt-Args: <c@y.test>"));
    assert!(m.contains("Message-ID: <m1@backproc.test>") && m.contains("body line"), "{m}");

    let port = sink.port();
    sink.restart(SinkOptions { soft_reject: vec!["mail".into()], ..Default::default() }).unwrap();
    assert_eq!(sink.port(), port);
    let r = dialogue(port, "a@x.test", &["b@y.test"], MSG);
    assert!(r[2].starts_with("450"), "{r:?}");
    sink.restart(SinkOptions::default()).unwrap();
    dialogue(port, "second@x.test", &["b@y.test"], MSG);
    let msgs = sink.messages().unwrap();
    assert_eq!(msgs.len(), 2);
    assert!(String::from_utf8_lossy(&msgs[1]).contains("second@x.test"));
}

#[test]
fn sink_hard_rejects_rcpt() {
    let sink = SmtpSink::start(SinkOptions { hard_reject: vec!["rcpt".into()], ..Default::default() })
        .expect("start smtp-sink");
    let r = dialogue(sink.port(), "a@x.test", &["b@y.test"], MSG);
    assert!(r[3].starts_with('5'), "{r:?}");
    assert!(sink.messages().unwrap().is_empty());
}

#[test]
fn pysmtp_per_recipient_answers() {
    let py = PySmtp::start().expect("start aiosmtpd");
    let mut rules = SmtpRules::default();
    rules.rcpt.insert("bad@y.test".into(), (550, "5.1.1 no such user".into()));
    py.set_rules(&rules).unwrap();
    let r = dialogue(py.port(), "a@x.test", &["ok1@y.test", "bad@y.test", "ok2@y.test"], MSG);
    assert!(r[3].starts_with("250") && r[5].starts_with("250"), "{r:?}");
    assert_eq!(r[4], "550 5.1.1 no such user");
    assert!(r[7].starts_with("250"), "{r:?}");

    rules.rcpt.insert("busy@y.test".into(), (450, "4.2.1 try later".into()));
    py.set_rules(&rules).unwrap();
    let r = dialogue(py.port(), "a@x.test", &["busy@y.test"], MSG);
    assert_eq!(r[3], "450 4.2.1 try later", "{r:?}");

    rules.data = Some((554, "5.7.1 spam".into()));
    py.set_rules(&rules).unwrap();
    let r = dialogue(py.port(), "a@x.test", &["ok3@y.test"], MSG);
    assert_eq!(r[5], "554 5.7.1 spam", "{r:?}");

    let got = py.messages().unwrap();
    assert_eq!(got.len(), 1, "{}", py.log_text());
    assert_eq!(got[0].mail_from, "a@x.test");
    assert_eq!(got[0].rcpt_tos, ["ok1@y.test", "ok2@y.test"]);
    assert!(got[0].data.starts_with(b"Subject: hello\r\n"));
    assert!(got[0].data.ends_with(b"body line\r\n"));
}
