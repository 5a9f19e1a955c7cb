//! The OAuth2 token server, and OAuth2 sign-in (XOAUTH2, OAUTHBEARER) against a real Dovecot and
//! the aiosmtpd server, checked by raw HTTP, IMAP and SMTP dialogues.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use backproc_testkit::oauth::Mode;
use backproc_testkit::{AuthAttempt, Dovecot, DovecotOptions, PySmtp, SmtpRules, TokenServer};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// `application/x-www-form-urlencoded` value encoding.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends one raw HTTP request; `None` when no HTTP answer came (refused, closed, reset).
fn http_raw(url: &str, request: &str) -> Option<(u16, Value)> {
    let addr = url.strip_prefix("http://")?.split('/').next()?;
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    tcp.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    assert!(head.contains("Content-Type: application/json"), "{head}");
    Some((status, serde_json::from_str(body).expect("JSON body")))
}

/// POSTs a form to `url` (optionally with HTTP Basic client credentials).
fn post_form(url: &str, fields: &[(&str, &str)], basic: Option<(&str, &str)>) -> Option<(u16, Value)> {
    let path = format!("/{}", url.strip_prefix("http://")?.split_once('/')?.1);
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect();
    let body = body.join("&");
    let auth = basic
        .map(|(id, secret)| format!("Authorization: Basic {}\r\n", B64.encode(format!("{}:{}", enc(id), enc(secret)))))
        .unwrap_or_default();
    http_raw(
        url,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn post(url: &str, fields: &[(&str, &str)]) -> (u16, Value) {
    post_form(url, fields, None).expect("an HTTP answer")
}

fn refresh(ts: &TokenServer, client: &str, rt: &str) -> (u16, Value) {
    post(&ts.token_endpoint(), &[("grant_type", "refresh_token"), ("refresh_token", rt), ("client_id", client)])
}

fn error_of(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["error"].as_str().unwrap_or("-"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no string {key} in {v}"))
}

#[test]
fn refresh_rotates_with_grace_for_the_previous_token() {
    let ts = TokenServer::start().unwrap();
    ts.add_client("app", None);
    let r0 = ts.issue_refresh_token("alice@x.test");

    let a = refresh(&ts, "app", &r0);
    assert_eq!(a.0, 200, "{}", a.1);
    assert_eq!(str_of(&a.1, "token_type"), "Bearer");
    assert_eq!(a.1["expires_in"], 3600);
    let at = str_of(&a.1, "access_token");
    assert!(at.starts_with("at-") && at.len() > 32, "{at}");
    assert_eq!(ts.is_valid_access_token(at).as_deref(), Some("alice@x.test"));
    let r1 = str_of(&a.1, "refresh_token").to_string();
    assert!(r1.starts_with("rt-") && r1 != r0);

    // Grace: R0 still works (the client may have died before storing R1), with a fresh R1'.
    let b = refresh(&ts, "app", &r0);
    assert_eq!(b.0, 200, "{}", b.1);
    let r1b = str_of(&b.1, "refresh_token").to_string();
    assert!(r1b != r1 && r1b != r0);

    // The first use of R1 ends R0; its sibling R1' lives until a third-generation token is used.
    let c = refresh(&ts, "app", &r1);
    assert_eq!(c.0, 200, "{}", c.1);
    let r2 = str_of(&c.1, "refresh_token").to_string();
    assert_eq!(error_of(&refresh(&ts, "app", &r0)), (400, "invalid_grant"));
    assert_eq!(refresh(&ts, "app", &r1b).0, 200);
    assert_eq!(refresh(&ts, "app", &r2).0, 200);
    for old in [&r0, &r1, &r1b] {
        assert_eq!(error_of(&refresh(&ts, "app", old)), (400, "invalid_grant"), "{old}");
    }
    let counts = ts.counts();
    assert_eq!((counts.refresh, counts.invalid_grant, counts.other), (9, 4, 0), "{counts:?}");

    // Without rotation the answer has no refresh token and the one token keeps working.
    ts.set_rotation(false);
    let r = ts.issue_refresh_token("bob@x.test");
    for _ in 0..2 {
        let a = refresh(&ts, "app", &r);
        assert_eq!(a.0, 200, "{}", a.1);
        assert!(a.1.get("refresh_token").is_none(), "{}", a.1);
        assert_eq!(ts.is_valid_access_token(str_of(&a.1, "access_token")).as_deref(), Some("bob@x.test"));
    }

    // A scope asked for at refresh is the scope answered.
    let a = post(
        &ts.token_endpoint(),
        &[("grant_type", "refresh_token"), ("refresh_token", &r), ("client_id", "app"), ("scope", "imap smtp")],
    );
    assert_eq!(str_of(&a.1, "scope"), "imap smtp");

    let secrets = ts.secrets();
    for s in [&r0, &r1, &r1b, &r2, &r, &at.to_string()] {
        assert!(secrets.contains(s), "{s} missing from secrets");
    }
}

#[test]
fn clients_are_authenticated_and_bad_requests_refused() {
    let ts = TokenServer::start().unwrap();
    ts.add_client("public", None);
    ts.add_client("conf", Some("s3cret&+="));
    let rt = ts.issue_refresh_token("alice@x.test");
    let url = ts.token_endpoint();
    let grant = [("grant_type", "refresh_token"), ("refresh_token", rt.as_str())];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        grant.iter().copied().chain(extra.iter().copied()).collect()
    };
    let cases = [
        ("unknown client", with(&[("client_id", "nobody")]), None, (401, "invalid_client")),
        ("no client id", with(&[]), None, (401, "invalid_client")),
        ("secret missing", with(&[("client_id", "conf")]), None, (401, "invalid_client")),
        ("wrong secret", with(&[("client_id", "conf"), ("client_secret", "nope")]), None, (401, "invalid_client")),
        ("wrong Basic secret", with(&[]), Some(("conf", "nope")), (401, "invalid_client")),
        ("two methods", with(&[("client_secret", "s3cret&+=")]), Some(("conf", "s3cret&+=")), (400, "invalid_request")),
        ("secret in the form", with(&[("client_id", "conf"), ("client_secret", "s3cret&+=")]), None, (200, "-")),
        ("secret by Basic", with(&[]), Some(("conf", "s3cret&+=")), (200, "-")),
    ];
    for (what, fields, basic, want) in cases {
        let answer = post_form(&url, &fields, basic).expect("an HTTP answer");
        assert_eq!(error_of(&answer), want, "{what}: {}", answer.1);
    }
    assert!(ts.secrets().contains(&"s3cret&+=".to_string()));

    let bad = [
        ("no grant type", vec![("client_id", "public")], (400, "invalid_request")),
        ("password grant", vec![("grant_type", "password"), ("client_id", "public")], (400, "unsupported_grant_type")),
        ("no refresh token", vec![("grant_type", "refresh_token"), ("client_id", "public")], (400, "invalid_request")),
        (
            "unknown token",
            vec![("grant_type", "refresh_token"), ("refresh_token", "rt-x"), ("client_id", "public")],
            (400, "invalid_grant"),
        ),
    ];
    for (what, fields, want) in bad {
        let answer = post(&url, &fields);
        assert_eq!(error_of(&answer), want, "{what}: {}", answer.1);
        assert!(answer.1["error_description"].is_string(), "{what}: {}", answer.1);
    }

    let raw = |req: &str| error_of(&http_raw(&url, req).expect("an HTTP answer")).0;
    let form = "Content-Type: application/x-www-form-urlencoded";
    assert_eq!(raw(&format!("POST /token HTTP/1.1\r\n{form}\r\nContent-Length: 5\r\n\r\na=%zz")), 400);
    assert_eq!(raw(&format!("POST /token HTTP/1.1\r\n{form}\r\nContent-Length: 5\r\n\r\na=%+1")), 400);
    assert_eq!(raw(&format!("POST /token HTTP/1.1\r\n{form}\r\nContent-Length: 7\r\n\r\na=1&a=2")), 400);
    assert_eq!(raw("POST /token HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"), 400);
    assert_eq!(raw("POST /token HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
    assert_eq!(raw("garbage\r\n\r\n"), 400);
    assert_eq!(raw("GET /token HTTP/1.1\r\n\r\n"), 405);
    assert_eq!(raw("POST /nowhere HTTP/1.1\r\n\r\n"), 404);
    let counts = ts.counts();
    assert_eq!((counts.refresh, counts.other, counts.invalid_grant), (10, 10, 1), "{counts:?}");
}

#[test]
fn invalid_grant_mode_revoke_and_down() {
    let ts = TokenServer::start().unwrap();
    ts.add_client("app", None);
    let rt = ts.issue_refresh_token("alice@x.test");
    let at = ts.issue_access_token("alice@x.test");

    ts.set_mode(Mode::InvalidGrant);
    let a = refresh(&ts, "app", &rt);
    assert_eq!(error_of(&a), (400, "invalid_grant"));
    assert!(a.1["error_description"].is_string(), "{}", a.1);
    ts.set_mode(Mode::Normal);
    let a = refresh(&ts, "app", &rt);
    assert_eq!(a.0, 200, "{}", a.1);
    let rt = str_of(&a.1, "refresh_token").to_string();

    // Down: the connection is accepted and closed without a byte, whatever the endpoint.
    ts.set_mode(Mode::Down);
    let before = ts.counts();
    assert!(post_form(&ts.token_endpoint(), &[("grant_type", "refresh_token")], None).is_none());
    assert!(post_form(&ts.introspection_url(), &[("token", &at)], None).is_none());
    let after = ts.counts();
    assert_eq!((after.refresh, after.introspect, after.other), (before.refresh, before.introspect, before.other));
    ts.set_mode(Mode::Normal);
    assert_eq!(post(&ts.introspection_url(), &[("token", &at)]).1["active"], true);

    ts.revoke_all();
    assert_eq!(error_of(&refresh(&ts, "app", &rt)), (400, "invalid_grant"));
    assert_eq!(post(&ts.introspection_url(), &[("token", &at)]).1, serde_json::json!({"active": false}));
    assert_eq!(ts.is_valid_access_token(&at), None);
    assert_eq!(ts.counts().invalid_grant, 2);
}

#[test]
fn access_tokens_expire_at_introspection() {
    let ts = TokenServer::start().unwrap();
    ts.add_client("app", None);
    ts.set_lifetime(Duration::from_secs(1));
    let a = refresh(&ts, "app", &ts.issue_refresh_token("alice@x.test"));
    assert_eq!(a.1["expires_in"], 1, "{}", a.1);
    let at = str_of(&a.1, "access_token").to_string();
    let rt = str_of(&a.1, "refresh_token").to_string();

    let live = post(&ts.introspection_url(), &[("token", &at)]).1;
    assert_eq!((live["active"].clone(), live["email"].clone()), (Value::Bool(true), Value::from("alice@x.test")));
    assert_eq!(live["sub"], "alice@x.test");
    assert!(live["exp"].as_u64().is_some(), "{live}");
    // A refresh token is no bearer token.
    assert_eq!(post(&ts.introspection_url(), &[("token", &rt)]).1["active"], false);
    assert_eq!(error_of(&post(&ts.introspection_url(), &[])), (400, "invalid_request"));

    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(post(&ts.introspection_url(), &[("token", &at)]).1, serde_json::json!({"active": false}));
    assert_eq!(ts.is_valid_access_token(&at), None);
    // The refresh token outlives it.
    assert_eq!(refresh(&ts, "app", &rt).0, 200);
    assert_eq!(ts.counts().introspect, 4);
}

#[test]
fn device_flow_pending_slow_down_approve_expire() {
    let ts = TokenServer::start().unwrap();
    ts.add_client("tv", None);
    ts.add_client("other", None);
    let start = |ts: &TokenServer| {
        let a = post(&ts.device_endpoint(), &[("client_id", "tv"), ("scope", "mail")]);
        assert_eq!(a.0, 200, "{}", a.1);
        a.1
    };
    let poll = |code: &str, client: &str| {
        post(&ts.token_endpoint(), &[("grant_type", DEVICE_GRANT), ("device_code", code), ("client_id", client)])
    };

    // Polled too fast: slow_down, and the interval grows by 5 s (so 1.1 s later is still too soon).
    let slow = start(&ts);
    assert_eq!(slow["interval"], 1);
    assert_eq!(slow["expires_in"], 600);
    let verification = format!("{}/activate", ts.url());
    assert_eq!(
        (str_of(&slow, "verification_uri"), str_of(&slow, "verification_url")),
        (&*verification, &*verification)
    );
    let user_code = str_of(&slow, "user_code");
    assert!(user_code.len() == 9 && user_code.as_bytes()[4] == b'-', "{user_code}");
    let slow_code = str_of(&slow, "device_code");
    assert_eq!(error_of(&poll(slow_code, "tv")), (400, "authorization_pending"));
    assert_eq!(error_of(&poll(slow_code, "tv")), (400, "slow_down"));
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(error_of(&poll(slow_code, "tv")), (400, "slow_down"));

    // Interval 0 lets the test poll at once: pending, approved, tokens once, then used up.
    ts.set_device_interval(0);
    let d = start(&ts);
    let (code, user_code) = (str_of(&d, "device_code"), str_of(&d, "user_code"));
    assert!(ts.pending_user_codes().contains(&user_code.to_string()));
    assert_eq!(error_of(&poll(code, "tv")), (400, "authorization_pending"));
    assert_eq!(error_of(&poll(code, "other")), (400, "invalid_grant"));
    assert!(!ts.approve("BCDF-GHJK-NOPE", "alice@x.test"));
    assert!(ts.approve(user_code, "alice@x.test"));
    assert!(!ts.approve(user_code, "mallory@x.test"), "approved twice");
    assert!(!ts.pending_user_codes().contains(&user_code.to_string()));
    let tokens = poll(code, "tv");
    assert_eq!(tokens.0, 200, "{}", tokens.1);
    assert_eq!(ts.is_valid_access_token(str_of(&tokens.1, "access_token")).as_deref(), Some("alice@x.test"));
    assert_eq!(str_of(&tokens.1, "scope"), "mail");
    assert_eq!(error_of(&poll(code, "tv")), (400, "invalid_grant"));
    assert!(ts.secrets().contains(&code.to_string()));

    // Its refresh token belongs to the client that started the flow.
    let rt = str_of(&tokens.1, "refresh_token");
    assert_eq!(error_of(&refresh(&ts, "other", rt)), (400, "invalid_grant"));
    assert_eq!(refresh(&ts, "tv", rt).0, 200);

    // Past its lifetime the code answers expired_token and cannot be approved.
    ts.set_device_lifetime(Duration::from_millis(300));
    let e = start(&ts);
    assert_eq!(e["expires_in"], 1);
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(error_of(&poll(str_of(&e, "device_code"), "tv")), (400, "expired_token"));
    assert!(!ts.approve(str_of(&e, "user_code"), "alice@x.test"));
    assert!(!ts.pending_user_codes().contains(&str_of(&e, "user_code").to_string()));

    assert_eq!(error_of(&poll("dc-unknown", "tv")), (400, "invalid_grant"));
    assert_eq!(error_of(&post(&ts.device_endpoint(), &[("client_id", "nobody")])), (401, "invalid_client"));
    let counts = ts.counts();
    assert_eq!((counts.device_start, counts.device_grant), (4, 9), "{counts:?}");
}

/// A raw IMAP connection, past the greeting.
struct Imap {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Imap {
    fn connect(port: u16) -> Imap {
        let w = TcpStream::connect(("127.0.0.1", port)).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = BufReader::new(w.try_clone().unwrap());
        let mut greeting = String::new();
        r.read_line(&mut greeting).unwrap();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        Imap { w, r }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        assert!(self.r.read_line(&mut l).unwrap() > 0, "IMAP server closed the connection");
        l.trim_end().to_string()
    }

    fn send(&mut self, line: &str) {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    }

    /// Sends a command and returns the tagged reply, skipping untagged lines.
    fn command(&mut self, tag: &str, cmd: &str) -> String {
        self.send(&format!("{tag} {cmd}"));
        self.tagged(tag)
    }

    fn tagged(&mut self, tag: &str) -> String {
        loop {
            let l = self.line();
            if l.starts_with(&format!("{tag} ")) {
                return l;
            }
        }
    }
}

fn xoauth2(user: &str, token: &str) -> String {
    B64.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

fn oauthbearer(user: &str, port: u16, token: &str) -> String {
    B64.encode(format!("n,a={user},\x01host=127.0.0.1\x01port={port}\x01auth=Bearer {token}\x01\x01"))
}

/// The decoded JSON of a SASL error challenge line (`+ <base64>` or `334 <base64>`).
fn challenge_json(line: &str, prefix: &str) -> Value {
    let b64 = line.strip_prefix(prefix).unwrap_or_else(|| panic!("no {prefix:?} challenge: {line}"));
    serde_json::from_slice(&B64.decode(b64.trim()).expect("base64 challenge")).expect("JSON challenge")
}

#[test]
fn dovecot_xoauth2_oauthbearer_and_password() {
    let ts = TokenServer::start().unwrap();
    let opts = DovecotOptions { oauth2_introspection_url: Some(ts.introspection_url()), ..Default::default() };
    let d = Dovecot::start_with(opts).expect("start dovecot");
    d.add_user("alice@x.test", "secret").unwrap();
    d.add_user("bob@x.test", "secret").unwrap();
    let port = d.imap_port();
    let token = ts.issue_access_token("alice@x.test");

    let mut c = Imap::connect(port);
    c.send("c CAPABILITY");
    let caps = c.line();
    for want in ["AUTH=XOAUTH2", "AUTH=OAUTHBEARER", "AUTH=PLAIN", "SASL-IR"] {
        assert!(caps.contains(want), "{want} missing: {caps}");
    }
    assert!(c.tagged("c").starts_with("c OK"));
    let ok = c.command("a", &format!("AUTHENTICATE XOAUTH2 {}", xoauth2("alice@x.test", &token)));
    assert!(ok.starts_with("a OK"), "{ok}\n{}", d.log_text());
    assert!(c.command("s", "SELECT INBOX").starts_with("s OK"));

    let mut c = Imap::connect(port);
    let ok = c.command("a", &format!("AUTHENTICATE OAUTHBEARER {}", oauthbearer("alice@x.test", port, &token)));
    assert!(ok.starts_with("a OK"), "{ok}\n{}", d.log_text());

    // Passwords still work beside OAuth2.
    let mut c = Imap::connect(port);
    assert!(c.command("l", "LOGIN alice@x.test secret").starts_with("l OK"));
    let mut c = Imap::connect(port);
    assert!(c.command("l", "LOGIN alice@x.test wrong").starts_with("l NO"));
    // A token is no password (the password passdb only serves PLAIN and LOGIN, the oauth2 one
    // only the bearer mechanisms).
    let mut c = Imap::connect(port);
    assert!(c.command("l", &format!("LOGIN alice@x.test {token}")).starts_with("l NO"));

    // Rejected tokens: an error challenge with a JSON status, the client's empty answer
    // (XOAUTH2) or ^A (OAUTHBEARER, RFC 7628 §3.2.3), then NO.
    let bob_token = ts.issue_access_token("bob@x.test");
    let cases = [
        ("unknown token", "XOAUTH2", xoauth2("alice@x.test", "at-forged"), ""),
        ("another user's token", "XOAUTH2", xoauth2("alice@x.test", &bob_token), ""),
        ("unknown token", "OAUTHBEARER", oauthbearer("alice@x.test", port, "at-forged"), "AQ=="),
    ];
    for (what, mech, ir, answer) in cases {
        let mut c = Imap::connect(port);
        c.send(&format!("a AUTHENTICATE {mech} {ir}"));
        let challenge = c.line();
        let json = challenge_json(&challenge, "+ ");
        assert!(json["status"].is_string(), "{what} {mech}: {json}");
        c.send(answer);
        let no = c.tagged("a");
        assert!(no.starts_with("a NO"), "{what} {mech}: {no}");
    }

    // No cache: every login asks the token server, so a revoked token fails at once.
    let before = ts.counts().introspect;
    let mut c = Imap::connect(port);
    assert!(c.command("a", &format!("AUTHENTICATE XOAUTH2 {}", xoauth2("alice@x.test", &token))).starts_with("a OK"));
    assert_eq!(ts.counts().introspect, before + 1);
    ts.revoke_all();
    let mut c = Imap::connect(port);
    c.send(&format!("a AUTHENTICATE XOAUTH2 {}", xoauth2("alice@x.test", &token)));
    let challenge = c.line();
    assert!(challenge_json(&challenge, "+ ")["status"].is_string(), "{challenge}");
    c.send("");
    assert!(c.tagged("a").starts_with("a NO"));
    assert_eq!(ts.counts().introspect, before + 2);

    // Expired tokens fail the same way.
    ts.set_lifetime(Duration::from_secs(1));
    let short = ts.issue_access_token("alice@x.test");
    let mut c = Imap::connect(port);
    assert!(c.command("a", &format!("AUTHENTICATE XOAUTH2 {}", xoauth2("alice@x.test", &short))).starts_with("a OK"));
    std::thread::sleep(Duration::from_millis(1100));
    let mut c = Imap::connect(port);
    c.send(&format!("a AUTHENTICATE XOAUTH2 {}", xoauth2("alice@x.test", &short)));
    let challenge = c.line();
    assert!(challenge_json(&challenge, "+ ")["status"].is_string(), "{challenge}");
    c.send("");
    assert!(c.tagged("a").starts_with("a NO"));

    // The token server down: a temporary failure at once, without an error challenge.
    ts.set_mode(Mode::Down);
    let live = ts.issue_access_token("alice@x.test");
    for ir in [
        "XOAUTH2 ".to_string() + &xoauth2("alice@x.test", &live),
        "OAUTHBEARER ".to_string() + &oauthbearer("alice@x.test", port, &live),
    ] {
        let mut c = Imap::connect(port);
        let no = c.command("a", &format!("AUTHENTICATE {ir}"));
        assert!(no.starts_with("a NO [UNAVAILABLE]"), "{no}");
    }
}

/// A raw SMTP connection, past the greeting.
struct Smtp {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Smtp {
    fn connect(port: u16) -> Smtp {
        let w = TcpStream::connect(("127.0.0.1", port)).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut s = Smtp { r: BufReader::new(w.try_clone().unwrap()), w };
        assert!(s.reply().starts_with("220"));
        s
    }

    /// All lines of one reply, joined by '\n'.
    fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            assert!(self.r.read_line(&mut l).unwrap() > 0, "SMTP server closed the connection");
            let l = l.trim_end_matches(['\r', '\n']).to_string();
            let last = l.len() < 4 || l.as_bytes()[3] == b' ';
            lines.push(l);
            if last {
                return lines.join("\n");
            }
        }
    }

    fn send(&mut self, line: &str) -> String {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.reply()
    }
}

#[test]
fn smtp_requires_oauth2() {
    let ts = TokenServer::start().unwrap();
    let smtp = PySmtp::start_oauth(&ts.introspection_url()).expect("start aiosmtpd");
    let port = smtp.port();
    let token = ts.issue_access_token("alice@x.test");

    let mut s = Smtp::connect(port);
    let ehlo = s.send("EHLO client.test");
    let auth = ehlo.lines().find(|l| l.starts_with("250-AUTH ") || l.starts_with("250 AUTH ")).expect("AUTH offered");
    let mechs: Vec<&str> = auth[9..].split(' ').collect();
    assert_eq!(mechs, ["OAUTHBEARER", "XOAUTH2"], "{ehlo}");
    assert!(s.send("MAIL FROM:<alice@x.test>").starts_with("530"));
    let ok = s.send(&format!("AUTH XOAUTH2 {}", xoauth2("alice@x.test", &token)));
    assert!(ok.starts_with("235"), "{ok}\n{}", smtp.log_text());
    // The rules and the received messages work as on the plain server.
    smtp.set_rules(&SmtpRules {
        rcpt: [("gone@y.test".to_string(), (550, "5.1.1 no such user".to_string()))].into(),
        ..Default::default()
    })
    .unwrap();
    assert!(s.send("MAIL FROM:<alice@x.test>").starts_with("250"));
    assert!(s.send("RCPT TO:<gone@y.test>").starts_with("550"));
    assert!(s.send("RCPT TO:<bob@y.test>").starts_with("250"));
    assert!(s.send("DATA").starts_with("354"));
    assert!(s.send("Subject: hi\r\n\r\nbody\r\n.").starts_with("250"));
    assert!(s.send("QUIT").starts_with("221"));
    let msgs = smtp.messages().unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        (msgs[0].mail_from.as_str(), msgs[0].rcpt_tos.clone()),
        ("alice@x.test", vec!["bob@y.test".to_string()])
    );

    // The initial response after a "334 " prompt; OAUTHBEARER on the AUTH line.
    let mut s = Smtp::connect(port);
    s.send("EHLO client.test");
    assert_eq!(s.send("AUTH XOAUTH2"), "334 ");
    assert!(s.send(&xoauth2("alice@x.test", &token)).starts_with("235"));
    let mut s = Smtp::connect(port);
    s.send("EHLO client.test");
    assert!(s.send(&format!("AUTH OAUTHBEARER {}", oauthbearer("alice@x.test", port, &token))).starts_with("235"));

    // Rejected: the RFC 7628 error challenge, the client's answer, then 535.
    let bob_token = ts.issue_access_token("bob@x.test");
    let cases = [
        ("unknown token", "XOAUTH2", xoauth2("alice@x.test", "at-forged"), ""),
        ("another user's token", "XOAUTH2", xoauth2("alice@x.test", &bob_token), ""),
        ("unknown token", "OAUTHBEARER", oauthbearer("alice@x.test", port, "at-forged"), "AQ=="),
    ];
    for (what, mech, ir, answer) in cases {
        let mut s = Smtp::connect(port);
        s.send("EHLO client.test");
        let challenge = s.send(&format!("AUTH {mech} {ir}"));
        let json = challenge_json(&challenge, "334 ");
        assert_eq!(json, serde_json::json!({"status": "401", "schemes": "bearer", "scope": "smtp"}), "{what} {mech}");
        assert_eq!(s.send(answer), "535 5.7.8 Authentication credentials invalid", "{what} {mech}");
        assert!(s.send("MAIL FROM:<alice@x.test>").starts_with("530"), "{what} {mech}");
    }

    let mut s = Smtp::connect(port);
    s.send("EHLO client.test");
    assert!(s.send(&format!("AUTH XOAUTH2 {}", B64.encode("no pairs"))).starts_with("501"));
    ts.set_mode(Mode::Down);
    assert!(s.send(&format!("AUTH XOAUTH2 {}", xoauth2("alice@x.test", &token))).starts_with("454"));

    let log = smtp.auth_log().unwrap();
    let summary: Vec<(&str, &str, bool)> =
        log.iter().map(|a: &AuthAttempt| (a.mechanism.as_str(), a.user.as_str(), a.accepted)).collect();
    assert_eq!(
        summary,
        [
            ("XOAUTH2", "alice@x.test", true),
            ("XOAUTH2", "alice@x.test", true),
            ("OAUTHBEARER", "alice@x.test", true),
            ("XOAUTH2", "alice@x.test", false),
            ("XOAUTH2", "alice@x.test", false),
            ("OAUTHBEARER", "alice@x.test", false),
            ("XOAUTH2", "", false),
            ("XOAUTH2", "alice@x.test", false),
        ]
    );
}

#[test]
fn smtp_without_oauth_needs_no_auth() {
    let smtp = PySmtp::start().expect("start aiosmtpd");
    let mut s = Smtp::connect(smtp.port());
    let ehlo = s.send("EHLO client.test");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert!(s.send("MAIL FROM:<alice@x.test>").starts_with("250"));
    assert!(s.send("RCPT TO:<bob@y.test>").starts_with("250"));
    assert!(s.send("DATA").starts_with("354"));
    assert!(s.send("Subject: hi\r\n\r\nbody\r\n.").starts_with("250"));
    assert_eq!(smtp.messages().unwrap().len(), 1);
    assert!(smtp.auth_log().unwrap().is_empty());
}
