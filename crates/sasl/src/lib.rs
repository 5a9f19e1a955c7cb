//! What a session signs in with, and the bearer-token SASL exchanges (RFC 7628 OAUTHBEARER,
//! Google's and Microsoft's XOAUTH2) that the IMAP session and the SMTP client both speak.
//! Each protocol layer owns its own framing (a tagged `AUTHENTICATE`, an `AUTH` line); what
//! goes inside is decided here, once, without I/O.
//!
//! Invariant: a password, a token or a SASL string built from one never reaches `Debug`, an
//! error text or a log line: `Credential` prints `****`, and the strings `initial_response`
//! returns are for the wire only.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// What a session signs in with.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// LOGIN (IMAP) or AUTH PLAIN/LOGIN (SMTP).
    Password(String),
    /// An OAuth 2.0 access token, sent with OAUTHBEARER or XOAUTH2.
    Bearer(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Password(_) => f.write_str("Password(****)"),
            Credential::Bearer(_) => f.write_str("Bearer(****)"),
        }
    }
}

/// A bearer-token SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 7628, the standard one.
    OAuthBearer,
    /// Google's and Microsoft's older mechanism, offered by more servers.
    XOAuth2,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::XOAuth2 => "XOAUTH2",
        }
    }

    /// The bearer mechanism to use among those a server offers (`offers` answers for a
    /// mechanism name): OAUTHBEARER when offered, as the standard; else XOAUTH2; else none.
    pub fn choose(offers: impl Fn(&str) -> bool) -> Option<Mechanism> {
        [Mechanism::OAuthBearer, Mechanism::XOAuth2].into_iter().find(|m| offers(m.name()))
    }

    /// The client's first message, base64: `user` is the mailbox login, `host` and `port`
    /// the server's (OAUTHBEARER carries them; RFC 7628 §3.1).
    pub fn initial_response(self, user: &str, host: &str, port: u16, token: &str) -> String {
        let raw = match self {
            Mechanism::XOAuth2 => format!("user={user}\x01auth=Bearer {token}\x01\x01"),
            Mechanism::OAuthBearer => {
                format!("n,a={},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01", saslname(user))
            }
        };
        B64.encode(raw)
    }

    /// The client's answer to an error challenge, base64 (empty for XOAUTH2): RFC 7628 §3.2.3
    /// has the client send a single %x01 so that the server can end the exchange with its
    /// failure; Google documents an empty response for XOAUTH2.
    pub fn error_reply(self) -> &'static str {
        match self {
            Mechanism::OAuthBearer => "AQ==",
            Mechanism::XOAuth2 => "",
        }
    }
}

/// RFC 5801's saslname: `,` and `=` escaped, as the authzid of the GS2 header needs.
fn saslname(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

/// What a server's error challenge (a continuation carrying base64 JSON, RFC 7628 §3.2.2)
/// says: its `status` (`invalid_token`, `401`, …). Anything unreadable is still a challenge:
/// the exchange is a failed sign-in either way, never a protocol error.
pub fn challenge_status(b64: &[u8]) -> String {
    let text = String::from_utf8_lossy(b64);
    let Ok(raw) = B64.decode(text.trim()) else {
        return "not base64".into();
    };
    match serde_json::from_slice::<serde_json::Value>(&raw) {
        Ok(v) => match v.get("status") {
            Some(serde_json::Value::String(s)) => clean(s),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => "no status".into(),
        },
        Err(_) => "not JSON".into(),
    }
}

/// A status from a server, fit for a log line: printable and short.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(s: &str) -> String {
        String::from_utf8(B64.decode(s).unwrap()).unwrap()
    }

    #[test]
    fn initial_responses() {
        struct Case {
            name: &'static str,
            mech: Mechanism,
            user: &'static str,
            want: &'static str,
        }
        let cases = [
            Case {
                name: "xoauth2",
                mech: Mechanism::XOAuth2,
                user: "ann@example.com",
                want: "user=ann@example.com\x01auth=Bearer T0k\x01\x01",
            },
            Case {
                name: "oauthbearer carries host and port",
                mech: Mechanism::OAuthBearer,
                user: "ann@example.com",
                want: "n,a=ann@example.com,\x01host=imap.example.com\x01port=993\x01auth=Bearer T0k\x01\x01",
            },
            Case {
                name: "oauthbearer escapes the authzid",
                mech: Mechanism::OAuthBearer,
                user: "a,b=c",
                want: "n,a=a=2Cb=3Dc,\x01host=imap.example.com\x01port=993\x01auth=Bearer T0k\x01\x01",
            },
        ];
        for c in cases {
            assert_eq!(decoded(&c.mech.initial_response(c.user, "imap.example.com", 993, "T0k")), c.want, "{}", c.name);
        }
    }

    #[test]
    fn choice_prefers_the_standard() {
        let cases: [(&str, &[&str], Option<Mechanism>); 4] = [
            ("both", &["XOAUTH2", "OAUTHBEARER"], Some(Mechanism::OAuthBearer)),
            ("xoauth2 only", &["PLAIN", "XOAUTH2"], Some(Mechanism::XOAuth2)),
            ("oauthbearer only", &["OAUTHBEARER"], Some(Mechanism::OAuthBearer)),
            ("none", &["PLAIN", "LOGIN"], None),
        ];
        for (name, offered, want) in cases {
            assert_eq!(Mechanism::choose(|m| offered.contains(&m)), want, "{name}");
        }
    }

    #[test]
    fn error_challenges() {
        let enc = |s: &str| B64.encode(s).into_bytes();
        let cases: [(&str, Vec<u8>, &str); 6] = [
            ("google", enc(r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#), "401"),
            ("rfc 7628", enc(r#"{"status":"invalid_token","scope":"example_scope"}"#), "invalid_token"),
            ("numeric status", enc(r#"{"status":400}"#), "400"),
            ("no status", enc(r#"{"schemes":"bearer"}"#), "no status"),
            ("not json", enc("nope"), "not JSON"),
            ("not base64", b"***".to_vec(), "not base64"),
        ];
        for (name, b64, want) in cases {
            assert_eq!(challenge_status(&b64), want, "{name}");
        }
        // A hostile status cannot put a line end into a log line.
        assert_eq!(challenge_status(&enc("{\"status\":\"a\\r\\nb\"}")), "ab");
    }

    #[test]
    fn debug_hides_the_secret() {
        let shown = format!("{:?} {:?}", Credential::Password("hunter2".into()), Credential::Bearer("at-123".into()));
        assert!(!shown.contains("hunter2") && !shown.contains("at-123"), "{shown}");
    }

    #[test]
    fn error_replies() {
        assert_eq!(decoded(Mechanism::OAuthBearer.error_reply()), "\x01");
        assert_eq!(Mechanism::XOAuth2.error_reply(), "");
    }
}
