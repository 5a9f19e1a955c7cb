//! SMTP delivery on lettre's low-level connection, so that each recipient's answer to
//! RCPT TO is known (lettre's `SmtpTransport::send` aborts the whole transaction on the first
//! refused recipient), and message building with lettre's builder.
//!
//! Invariants: STARTTLS, when chosen, is required (a server that does not offer it is an
//! error, never a plain-text fall-back); certificates are verified unless the account opts out;
//! passwords, tokens and SASL strings never reach an error message.

mod build;

use std::time::Duration;

use lettre::address::Address;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, SmtpConnection, Tls, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::{Response, Severity};

pub use backproc_sasl::Credential;
use backproc_sasl::Mechanism as SaslMechanism;

pub use build::{Draft, build_message, read_eml};

#[cfg(test)]
mod tests {

    #[test]
    fn dot_stuffing() {
        let d = |s: &[u8]| String::from_utf8(super::data_section(s)).unwrap();
        assert_eq!(d(b"a\r\n.b\r\n..c\r\n"), "a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(d(b".start"), "..start\r\n.\r\n");
        assert_eq!(d(b"no newline"), "no newline\r\n.\r\n");
        assert_eq!(d(b"x\r\n."), "x\r\n..\r\n.\r\n");
        assert_eq!(d(b""), ".\r\n");
    }

    /// The rule byte by byte, as RFC 5321 states it: the reference for the line-at-a-time
    /// `crlf`.
    fn crlf_bytewise(raw: &[u8], stuff: bool) -> Vec<u8> {
        let (mut out, mut at_line_start, mut i) = (Vec::new(), true, 0);
        while i < raw.len() {
            if stuff && at_line_start && raw[i] == b'.' {
                out.push(b'.');
            }
            if raw[i] == b'\r' || raw[i] == b'\n' {
                out.extend_from_slice(b"\r\n");
                i += usize::from(raw[i] == b'\r' && raw.get(i + 1) == Some(&b'\n'));
                at_line_start = true;
            } else {
                out.push(raw[i]);
                at_line_start = false;
            }
            i += 1;
        }
        if !at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn line_ends_and_stuffing_agree_with_the_bytewise_rule_on_every_short_input() {
        let alphabet = [b'a', b'.', b'\r', b'\n'];
        for len in 0..=7u32 {
            for n in 0..4usize.pow(len) {
                let raw: Vec<u8> = (0..len).map(|k| alphabet[n / 4usize.pow(k) % 4]).collect();
                for stuff in [false, true] {
                    assert_eq!(super::crlf(&raw, stuff), crlf_bytewise(&raw, stuff), "{raw:?} stuff {stuff}");
                }
            }
        }
    }

    #[test]
    fn bare_line_ends_cannot_end_the_data_early() {
        let d = |s: &[u8]| String::from_utf8(super::data_section(s)).unwrap();
        // "\r.\r\n" and "\n.\n" would end the data for some servers: they become CRLF and
        // the dot is doubled, so the only end is ours.
        assert_eq!(d(b"a\r.\r\nMAIL FROM:<x@y>\r\n"), "a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n");
        assert_eq!(d(b"a\n.\nb"), "a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(d(b"a\r\r\nb"), "a\r\n\r\nb\r\n.\r\n");
        let plain = super::crlf(b"x\n.y\r", false);
        assert_eq!(plain, b"x\r\n.y\r\n");
    }
}

/// Checks an envelope address (`user@domain`).
pub fn check_address(s: &str) -> Result<(), Error> {
    s.parse::<Address>().map(|_| ()).map_err(|e| err(ErrorKind::Permanent, format!("invalid address {s:?}: {e}")))
}

use backproc_types::Cause;
pub use backproc_types::Security;

/// Where and how to connect. `Debug` hides the credential.
#[derive(Clone)]
pub struct Params {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub login: Option<String>,
    /// A password (AUTH PLAIN or LOGIN) or an OAuth 2.0 access token (AUTH OAUTHBEARER or
    /// XOAUTH2).
    pub credential: Option<Credential>,
    pub ca_pem: Option<Vec<u8>>,
    pub insecure: bool,
    pub timeout: Duration,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} {:?} login {:?}", self.host, self.port, self.security, self.login)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Cannot reach the server / connection dropped before the end of DATA.
    Connect,
    Tls,
    Auth,
    /// 4xx for the whole transaction.
    Temporary,
    /// 5xx for the whole transaction.
    Permanent,
    /// The connection failed after the final "." was sent: the server may have accepted it.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    /// What went wrong, the cause's text and the server's reply included: what logs and
    /// history show.
    pub detail: String,
    /// What underlies it (lettre's error, an I/O error), for a caller that must tell causes
    /// apart.
    pub source: Option<Cause>,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(Cause::error)
    }
}

impl Error {
    /// An error of `kind` (tests build the outcomes of a send with it).
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error { kind, detail: detail.into(), source: None }
    }

    fn caused_by(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Cause::new(e));
        self
    }
}

fn err(kind: ErrorKind, detail: impl Into<String>) -> Error {
    Error::new(kind, detail)
}

/// lettre's error, classified; the SMTP reply (code and text) is kept in the detail.
fn classify(stage: &str, e: lettre::transport::smtp::Error) -> Error {
    let kind = if e.is_permanent() {
        ErrorKind::Permanent
    } else if e.is_transient() {
        ErrorKind::Temporary
    } else if e.is_tls() {
        ErrorKind::Tls
    } else {
        ErrorKind::Connect
    };
    err(kind, format!("{stage}: {e}")).caused_by(e)
}

/// Per-recipient result of one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    pub accepted: Vec<String>,
    pub rejected: Vec<String>,
    pub pending: Vec<String>,
    /// The last reply of the server.
    pub response: String,
}

/// A message body as DATA sends it: lines starting with "." doubled (RFC 5321 §4.5.2), CRLF
/// at the end, then the terminating ".".
/// The DATA section of a message: every line end made CRLF, dot-stuffed, and the final
/// "." line, ready for one write. A bare CR or LF is turned into CRLF first (RFC 5321
/// §2.3.8): a "." after a lone CR or LF, passed on as it was, is read as the end of the data
/// by some servers and lets a message smuggle a second one ("SMTP smuggling").
fn data_section(raw: &[u8]) -> Vec<u8> {
    let mut out = crlf(raw, true);
    out.extend_from_slice(b".\r\n");
    out
}

/// `raw` with every line end CRLF and a CRLF at the end; with `stuff`, a "." that starts a
/// line doubled. CRLF is one line end; so are a lone CR and a lone LF.
fn crlf(raw: &[u8], stuff: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 64 + 8);
    let mut rest = raw;
    while !rest.is_empty() {
        if stuff && rest[0] == b'.' {
            out.push(b'.');
        }
        let Some(end) = memchr::memchr2(b'\r', b'\n', rest) else {
            out.extend_from_slice(rest);
            out.extend_from_slice(b"\r\n");
            break;
        };
        out.extend_from_slice(&rest[..end]);
        out.extend_from_slice(b"\r\n");
        let crlf = rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n');
        rest = &rest[end + if crlf { 2 } else { 1 }..];
    }
    out
}

/// Bytes written as they are by `SmtpConnection::command` (it takes a `Display`).
struct Verbatim<'a>(&'a str);

impl std::fmt::Display for Verbatim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// A transaction whose envelope the server accepted (354 to DATA): its message goes next,
/// with `Smtp::data`.
#[derive(Debug)]
pub struct Open {
    d: Delivery,
}

/// The server's answers to an envelope (MAIL, RCPT, DATA).
#[derive(Debug)]
pub enum Envelope {
    /// DATA accepted: send the message.
    Open(Open),
    /// The transaction ended without the message: nobody accepted it, or it was refused.
    Done(Result<Delivery, Error>),
}

fn parse_sender(from: &str) -> Result<Address, Error> {
    from.parse().map_err(|e| err(ErrorKind::Permanent, format!("invalid sender {from:?}: {e}")))
}

/// MAIL, every valid RCPT and DATA as one pipelined write, with the recipients it names and a
/// delivery with the invalid ones refused; `Err` when nothing is to be written (an invalid
/// sender, no valid recipient) with the transaction's end.
fn envelope_text<'a>(from: &str, recipients: &'a [String]) -> Result<(String, Vec<&'a String>, Delivery), Envelope> {
    let from = parse_sender(from).map_err(|e| Envelope::Done(Err(e)))?;
    let mut d = Delivery::default();
    let mut text = Mail::new(Some(from), vec![]).to_string();
    let mut sent = Vec::with_capacity(recipients.len());
    for r in recipients {
        match r.parse::<Address>() {
            Ok(addr) => {
                text.push_str(&Rcpt::new(addr, vec![]).to_string());
                sent.push(r);
            }
            Err(_) => d.rejected.push(r.clone()),
        }
    }
    if sent.is_empty() {
        return Err(Envelope::Done(Ok(d)));
    }
    text.push_str(&Data.to_string());
    Ok((text, sent, d))
}

/// A message's final answer (after its "."), into its delivery.
fn final_answer(mut d: Delivery, answer: Result<Response, lettre::transport::smtp::Error>) -> Result<Delivery, Error> {
    match answer {
        Ok(resp) => {
            d.response = format!("{} {}", resp.code(), resp.message().collect::<Vec<_>>().join(" "));
            Ok(d)
        }
        Err(e) if e.is_permanent() || e.is_transient() => Err(classify("end of DATA", e)),
        // The final "." was sent; the reply was lost. The server may have accepted it.
        Err(e) => Err(err(ErrorKind::Unknown, format!("connection lost after the end of DATA: {e}")).caused_by(e)),
    }
}

pub struct Smtp {
    conn: SmtpConnection,
    /// The server offers PIPELINING (RFC 2920): MAIL, RCPT and DATA go out in one write and
    /// a message costs two round trips instead of 3 + one per recipient.
    pipelining: bool,
    /// The server closed the connection (see `is_broken`).
    closed: bool,
}

fn tls_params(p: &Params) -> Result<TlsParameters, Error> {
    let mut b = TlsParameters::builder(p.host.clone());
    if let Some(pem) = &p.ca_pem {
        let c = Certificate::from_pem(pem)
            .map_err(|e| err(ErrorKind::Tls, format!("cannot read the CA certificate: {e}")).caused_by(e))?;
        b = b.add_root_certificate(c);
    }
    if p.insecure {
        b = b.dangerous_accept_invalid_certs(true).dangerous_accept_invalid_hostnames(true);
    }
    b.build_native().map_err(|e| err(ErrorKind::Tls, format!("cannot set up TLS: {e}")))
}

/// AUTH with an OAuth 2.0 access token (RFC 4954 with RFC 7628): OAUTHBEARER when offered,
/// else XOAUTH2, the initial response on the AUTH line. An error challenge (`334` with base64
/// JSON) is answered as RFC 7628 asks, and the refusal that follows names its status.
fn auth_bearer(
    conn: &mut SmtpConnection,
    p: &Params,
    login: &str,
    token: &str,
    offered: &[String],
) -> Result<(), Error> {
    let Some(mech) = SaslMechanism::choose(|m| offered.iter().any(|o| o == m)) else {
        return Err(err(
            ErrorKind::Auth,
            format!("{} offers neither AUTH OAUTHBEARER nor AUTH XOAUTH2: it cannot take an OAuth2 sign-in", p.host),
        ));
    };
    let refused = |status: Option<&str>, e: &dyn std::fmt::Display| {
        let status = status.map(|s| format!(" (the server's status: {s})")).unwrap_or_default();
        err(ErrorKind::Auth, format!("AUTH {} of {login} refused by {}: {e}{status}", mech.name(), p.host))
    };
    // The SASL string is the token itself: it is written to the wire, never to a message.
    let ir = mech.initial_response(login, &p.host, p.port, token);
    let r = conn.command(format!("AUTH {} {ir}\r\n", mech.name())).map_err(|e| refused(None, &e))?;
    if r.code().severity != Severity::PositiveIntermediate {
        return Ok(());
    }
    let challenge: String = r.message().collect();
    let status = backproc_sasl::challenge_status(challenge.as_bytes());
    match conn.command(format!("{}\r\n", mech.error_reply())) {
        Err(e) => Err(refused(Some(&status), &e)),
        Ok(_) => Err(err(
            ErrorKind::Auth,
            format!("{} accepted AUTH {} after refusing the token (status {status})", p.host, mech.name()),
        )),
    }
}

impl Smtp {
    pub fn connect(p: &Params) -> Result<Smtp, Error> {
        let hello = ClientId::Domain("backproc.localhost".into());
        let tls = match p.security {
            Security::Ssl => Some(tls_params(p)?),
            _ => None,
        };
        let wrapped = tls.map(Tls::Wrapper);
        let tls_ref = match &wrapped {
            Some(Tls::Wrapper(t)) => Some(t),
            _ => None,
        };
        let mut conn = SmtpConnection::connect((p.host.as_str(), p.port), Some(p.timeout), &hello, tls_ref, None)
            .map_err(|e| {
                let kind = if e.is_tls()
                    || p.security == Security::Ssl
                        && !e.is_transient()
                        && !e.is_permanent()
                        && e.to_string().contains("certificate")
                {
                    ErrorKind::Tls
                } else {
                    ErrorKind::Connect
                };
                err(kind, format!("cannot connect to {}:{}: {e}", p.host, p.port))
            })?;
        if p.security == Security::StartTls {
            if !conn.can_starttls() {
                conn.abort();
                return Err(err(
                    ErrorKind::Tls,
                    format!("{} does not offer STARTTLS; refusing to send without TLS", p.host),
                ));
            }
            let t = tls_params(p)?;
            conn.starttls(&t, &hello)
                .map_err(|e| err(ErrorKind::Tls, format!("STARTTLS with {} failed: {e}", p.host)).caused_by(e))?;
        }
        // lettre keeps only the EHLO keywords it knows, and neither PIPELINING nor OAUTHBEARER
        // is one of them: ask again (one round trip per connection) and read the keywords
        // ourselves.
        let ehlo: Vec<String> = match conn.command(Ehlo::new(hello)) {
            Ok(r) => r.message().map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        };
        let keyword =
            |k: &str| ehlo.iter().any(|l| l.split_whitespace().next().is_some_and(|w| w.eq_ignore_ascii_case(k)));
        let pipelining = keyword("PIPELINING");
        let auth: Vec<String> = ehlo
            .iter()
            .filter_map(|l| l.strip_prefix("AUTH ").or_else(|| l.strip_prefix("AUTH=")))
            .flat_map(|m| m.split_whitespace().map(str::to_ascii_uppercase))
            .collect();
        // Authenticate when the server offers it; a server that requires it but offers no
        // mechanism we know refuses MAIL FROM, which is reported then.
        match (&p.login, &p.credential) {
            (Some(login), Some(Credential::Password(password))) => {
                let offered = [Mechanism::Plain, Mechanism::Login]
                    .into_iter()
                    .any(|m| conn.server_info().supports_auth_mechanism(m));
                if offered {
                    let creds = Credentials::new(login.clone(), password.clone());
                    conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds).map_err(|e| {
                        conn.abort();
                        // lettre's error text is the server's reply; it never contains the password.
                        err(ErrorKind::Auth, format!("login of {login} refused by {}: {e}", p.host))
                    })?;
                }
            }
            (Some(login), Some(Credential::Bearer(token))) => {
                if let Err(e) = auth_bearer(&mut conn, p, login, token, &auth) {
                    conn.abort();
                    return Err(e);
                }
            }
            _ => {}
        }
        Ok(Smtp { conn, pipelining, closed: false })
    }

    /// Whether the server pipelines (RFC 2920): `data` can then carry the next envelope.
    pub fn pipelining(&self) -> bool {
        self.pipelining
    }

    /// Opens a transaction: MAIL, RCPT per recipient and DATA, in one write when the server
    /// pipelines, and their answers (each recipient's recorded; errors are whole-transaction
    /// failures). Then `data` sends the message.
    pub fn envelope(&mut self, from: &str, recipients: &[String]) -> Envelope {
        if self.pipelining {
            return match envelope_text(from, recipients) {
                Ok((text, sent, d)) => {
                    let mail = self.command(&text);
                    self.read_envelope(mail, &sent, d)
                }
                Err(done) => done,
            };
        }
        let from = match parse_sender(from) {
            Ok(f) => f,
            Err(e) => return Envelope::Done(Err(e)),
        };
        if let Err(e) = self.command(Mail::new(Some(from), vec![])) {
            return Envelope::Done(Err(classify("MAIL FROM", e)));
        }
        let mut d = Delivery::default();
        for r in recipients {
            let Ok(addr) = r.parse::<Address>() else {
                d.rejected.push(r.clone());
                continue;
            };
            match self.command(Rcpt::new(addr, vec![])) {
                Ok(resp) => {
                    d.accepted.push(r.clone());
                    d.response = resp.message().collect::<Vec<_>>().join(" ");
                }
                Err(e) if e.is_permanent() => {
                    d.rejected.push(r.clone());
                    d.response = e.to_string();
                }
                Err(e) if e.is_transient() => {
                    d.pending.push(r.clone());
                    d.response = e.to_string();
                }
                Err(e) => return Envelope::Done(Err(classify("RCPT TO", e))),
            }
        }
        if d.accepted.is_empty() {
            let _ = self.command(lettre::transport::smtp::commands::Rset);
            return Envelope::Done(Ok(d));
        }
        match self.command(Data) {
            Ok(_) => Envelope::Open(Open { d }),
            Err(e) => Envelope::Done(Err(classify("DATA", e))),
        }
    }

    /// The answers to a pipelined envelope, in order (RFC 2920), `mail` being the first. A
    /// refused MAIL still gets its RCPT and DATA answers read, so the next transaction starts
    /// in step with the server.
    fn read_envelope(
        &mut self,
        mail: Result<Response, lettre::transport::smtp::Error>,
        sent: &[&String],
        mut d: Delivery,
    ) -> Envelope {
        let broken = |e: &lettre::transport::smtp::Error| !e.is_permanent() && !e.is_transient();
        let mail = match mail {
            Err(e) if broken(&e) => return Envelope::Done(Err(classify("MAIL FROM", e))),
            m => m,
        };
        for &r in sent {
            match self.read_response() {
                Ok(resp) => {
                    d.accepted.push(r.clone());
                    d.response = resp.message().collect::<Vec<_>>().join(" ");
                }
                Err(e) if broken(&e) => return Envelope::Done(Err(classify("RCPT TO", e))),
                // After a refused MAIL every RCPT fails too; that says nothing of the recipient.
                Err(_) if mail.is_err() => d.pending.push(r.clone()),
                Err(e) if e.is_permanent() => {
                    d.rejected.push(r.clone());
                    d.response = e.to_string();
                }
                Err(e) => {
                    d.pending.push(r.clone());
                    d.response = e.to_string();
                }
            }
        }
        let data = self.read_response();
        if let Err(e) = mail {
            if data.is_ok() {
                let _ = self.command(".\r\n");
            }
            return Envelope::Done(Err(classify("MAIL FROM", e)));
        }
        match data {
            Ok(_) if d.accepted.is_empty() => {
                // RFC 2920: a server may accept DATA with no recipient; end the empty message.
                let _ = self.command(".\r\n");
                Envelope::Done(Ok(d))
            }
            Ok(_) => Envelope::Open(Open { d }),
            Err(e) if broken(&e) => Envelope::Done(Err(classify("DATA", e))),
            Err(_) if d.accepted.is_empty() => Envelope::Done(Ok(d)),
            Err(e) => Envelope::Done(Err(classify("DATA", e))),
        }
    }

    /// After the server's 354: the message and its terminator, then its final answer. With
    /// `next` on a pipelining server, the next transaction's envelope goes out in the same
    /// write (RFC 2920 allows commands after the final ".") and its answers are returned too:
    /// one round trip a message instead of two. `None` for `next`: its envelope was not sent
    /// or not answered (the connection broke); open it with `envelope`.
    pub fn data(
        &mut self,
        open: Open,
        raw: &[u8],
        next: Option<(&str, &[String])>,
    ) -> (Result<Delivery, Error>, Option<Envelope>) {
        let d = open.d;
        // lettre writes a message and its final "." in two writes; on a connection without
        // TCP_NODELAY the second waits for the server's delayed ACK (40 ms a message). The
        // whole DATA section goes out in one write instead.
        let data = data_section(raw);
        let Ok(text) = String::from_utf8(data) else {
            // 8-bit bytes that are not UTF-8: lettre's own writer, which dot-stuffs again,
            // so it gets the line-end-normalized message without our stuffing.
            let answer = self.conn.message(&crlf(raw, false));
            self.note(&answer);
            return (final_answer(d, answer), None);
        };
        let (text, chained) = match next {
            Some((from, recipients)) if self.pipelining => match envelope_text(from, recipients) {
                Ok((envelope, sent, nd)) => {
                    let mut t = text;
                    t.push_str(&envelope);
                    (t, Some((sent, nd)))
                }
                // refused before anything is written: the answer is already known
                Err(done) => return (final_answer(d, self.command(Verbatim(&text))), Some(done)),
            },
            _ => (text, None),
        };
        let answer = self.command(Verbatim(&text));
        let broke = answer.as_ref().is_err_and(|e| !e.is_permanent() && !e.is_transient());
        let result = final_answer(d, answer);
        let next = match chained {
            Some((sent, nd)) if !broke => {
                let mail = self.read_response();
                match self.read_envelope(mail, &sent, nd) {
                    Envelope::Done(Err(e)) if e.kind == ErrorKind::Connect => None,
                    e => Some(e),
                }
            }
            _ => None,
        };
        (result, next)
    }

    pub fn quit(mut self) {
        let _ = self.conn.quit();
    }

    /// Whether the connection is gone: dropped, or closed by the server with a 421 (RFC 5321
    /// §3.8: "closing transmission channel"; servers that limit messages per session say it
    /// at the next MAIL FROM). A new connection must be opened for the next message.
    pub fn is_broken(&self) -> bool {
        self.closed || self.conn.has_broken()
    }

    fn command<C: std::fmt::Display>(&mut self, c: C) -> Result<Response, lettre::transport::smtp::Error> {
        let r = self.conn.command(c);
        self.note(&r);
        r
    }

    fn read_response(&mut self) -> Result<Response, lettre::transport::smtp::Error> {
        let r = self.conn.read_response();
        self.note(&r);
        r
    }

    /// Remembers an answer that ends the connection: a 421, or no SMTP answer at all.
    fn note(&mut self, r: &Result<Response, lettre::transport::smtp::Error>) {
        if let Err(e) = r
            && (e.status().is_some_and(|c| c.to_string() == "421") || !e.is_permanent() && !e.is_transient())
        {
            self.closed = true;
        }
    }
}
