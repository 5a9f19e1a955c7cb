//! OAuth 2.0 for mail accounts: refreshing an access token (RFC 6749 §6) and getting the first
//! one by the device authorization grant (RFC 8628), against any provider's token endpoint.
//!
//! What to do with an endpoint's answer is decided by pure functions (`parse_answer`,
//! `needs_refresh`, `next_interval`), table-tested; `Http` only carries the request.
//!
//! Invariants: client secrets, refresh and access tokens and device codes never reach
//! `Debug`, an error text or a log line (an error names the endpoint and the RFC 6749 error
//! code, nothing the request carried). TLS is verified; plain `http` only to a loopback host.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// An account's OAuth 2.0 client settings. `Debug` hides the client secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub token_endpoint: String,
    /// The device authorization endpoint (RFC 8628 §3.1), for `account authorize`.
    pub device_endpoint: Option<String>,
    pub client_id: String,
    /// None for a public client.
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("token_endpoint", &self.token_endpoint)
            .field("device_endpoint", &self.device_endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "****"))
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// Providers whose endpoints and scopes are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Google,
    Microsoft,
}

/// A provider's endpoints and the scopes IMAP and SMTP need there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preset {
    pub token_endpoint: String,
    pub device_endpoint: String,
    pub scopes: Vec<String>,
}

impl Provider {
    /// `tenant` is Microsoft's directory (`common`, `organizations`, a tenant id or domain);
    /// Google has none.
    pub fn preset(self, tenant: &str) -> Preset {
        match self {
            Provider::Google => Preset {
                token_endpoint: "https://oauth2.googleapis.com/token".into(),
                device_endpoint: "https://oauth2.googleapis.com/device/code".into(),
                scopes: vec!["https://mail.google.com/".into()],
            },
            Provider::Microsoft => Preset {
                token_endpoint: format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"),
                device_endpoint: format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode"),
                scopes: vec![
                    "https://outlook.office.com/IMAP.AccessAsUser.All".into(),
                    "https://outlook.office.com/SMTP.Send".into(),
                    // without it Microsoft returns no refresh token
                    "offline_access".into(),
                ],
            },
        }
    }
}

/// What a token endpoint issued. `Debug` hides the tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    pub access_token: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// A new refresh token, when the endpoint rotates them (or on the first grant).
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens(****, expires at {}, refresh token {})", self.expires_at, self.refresh_token.is_some())
    }
}

/// The start of a device authorization (RFC 8628 §3.2). `Debug` hides the device code.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCode {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    /// The URI with the code filled in, when the provider gives one.
    pub verification_uri_complete: Option<String>,
    /// Seconds between polls.
    pub interval: u64,
    /// Unix seconds after which the code is void.
    pub expires_at: i64,
}

impl std::fmt::Debug for DeviceCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceCode(****, user code {}, {})", self.user_code, self.verification_uri)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The grant is no longer good (`invalid_grant`, RFC 6749 §5.2: revoked, expired, or the
    /// password changed), or the endpoint refuses this client for good (`invalid_client`,
    /// `unauthorized_client`, `invalid_scope`, `access_denied`, `expired_token`…): a person
    /// has to act; trying again changes nothing.
    #[error("{endpoint} answered {code}{}: the account needs authorization (backproc account authorize)", described(.description))]
    NeedsAuthorization { endpoint: String, code: String, description: String },
    /// The endpoint cannot be reached or answered with a server error: try again later.
    #[error("token endpoint {endpoint} unavailable: {detail}")]
    Unavailable { endpoint: String, detail: String },
    /// An answer that is not what RFC 6749 describes.
    #[error("invalid answer from the token endpoint {endpoint}: {detail}")]
    Invalid { endpoint: String, detail: String },
    /// A setting that cannot work (e.g. a plain-http endpoint on another host).
    #[error("{0}")]
    Setting(String),
}

fn described(d: &str) -> String {
    if d.is_empty() { String::new() } else { format!(" ({d})") }
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Invalid { .. })
    }
}

/// What a token endpoint's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Tokens(Tokens),
    /// Device grant: the user has not approved yet (`authorization_pending`).
    Pending,
    /// Device grant: poll less often (`slow_down`).
    SlowDown,
}

/// Text from an endpoint, fit for a log line: printable and short.
fn clean(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// A JSON number or a number in a string (Azure AD v1 sends `"expires_in": "3599"`).
fn seconds(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An endpoint's body as JSON; a server error without JSON is "try later".
fn read_json(endpoint: &str, status: u16, body: &str) -> Result<Value, Error> {
    serde_json::from_str(body).map_err(|_| {
        if status >= 500 {
            Error::Unavailable { endpoint: endpoint.to_owned(), detail: format!("HTTP {status}") }
        } else {
            Error::Invalid { endpoint: endpoint.to_owned(), detail: format!("HTTP {status}, not JSON") }
        }
    })
}

/// An error answer (RFC 6749 §5.2, RFC 8628 §3.5), if `v` is one; a success status without
/// an error member is not one.
fn error_answer(endpoint: &str, status: u16, v: &Value) -> Option<Result<Answer, Error>> {
    let Some(code) = v.get("error") else {
        if status >= 500 {
            return Some(Err(Error::Unavailable { endpoint: endpoint.to_owned(), detail: format!("HTTP {status}") }));
        }
        if !(200..300).contains(&status) {
            return Some(Err(Error::Invalid {
                endpoint: endpoint.to_owned(),
                detail: format!("HTTP {status} without an error code"),
            }));
        }
        return None;
    };
    let code = code.as_str().map(|c| clean(c, 64)).unwrap_or_else(|| "an error".into());
    let description = v.get("error_description").and_then(Value::as_str).map(|d| clean(d, 200)).unwrap_or_default();
    let unavailable = |detail: String| Err(Error::Unavailable { endpoint: endpoint.to_owned(), detail });
    Some(match code.as_str() {
        "authorization_pending" => Ok(Answer::Pending),
        "slow_down" => Ok(Answer::SlowDown),
        // RFC 6749 §5.2's codes for "try later"
        "temporarily_unavailable" | "server_error" => unavailable(format!("{code}{}", described(&description))),
        _ if status >= 500 => unavailable(format!("HTTP {status}: {code}")),
        _ => Err(Error::NeedsAuthorization { endpoint: endpoint.to_owned(), code, description }),
    })
}

/// Reads a token endpoint's answer (RFC 6749 §5.1, §5.2; RFC 8628 §3.5) given at `now`.
pub fn parse_answer(endpoint: &str, status: u16, body: &str, now: i64) -> Result<Answer, Error> {
    let invalid = |detail: String| Error::Invalid { endpoint: endpoint.to_owned(), detail };
    let v = read_json(endpoint, status, body)?;
    if let Some(r) = error_answer(endpoint, status, &v) {
        return r;
    }
    let access_token = match v.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() && !t.chars().any(char::is_control) => t.clone(),
        _ => return Err(invalid("no access_token".into())),
    };
    if let Some(t) = v.get("token_type").and_then(Value::as_str)
        && !t.eq_ignore_ascii_case("bearer")
    {
        return Err(invalid(format!("token_type {:?}, not Bearer", clean(t, 32))));
    }
    // RFC 6749 §5.1 only recommends expires_in; an hour is what Google and Microsoft give.
    let expires_in = match v.get("expires_in") {
        None => 3600,
        Some(e) => match seconds(e) {
            Some(s) if s > 0 => s,
            _ => return Err(invalid("expires_in is not a positive number".into())),
        },
    };
    let refresh_token = match v.get("refresh_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if !t.is_empty() && !t.chars().any(char::is_control) => Some(t.clone()),
        Some(_) => return Err(invalid("refresh_token is not a token".into())),
    };
    Ok(Answer::Tokens(Tokens { access_token, expires_at: now.saturating_add(expires_in), refresh_token }))
}

/// Whether a token that expires at `expires_at` (None: none held) must be refreshed before
/// use at `now`: when it has less than `margin` seconds left.
pub fn needs_refresh(expires_at: Option<i64>, now: i64, margin: i64) -> bool {
    expires_at.is_none_or(|e| e.saturating_sub(now) < margin)
}

/// The device grant's next poll interval after an answer: `slow_down` adds 5 s (RFC 8628
/// §3.5), anything else keeps it.
pub fn next_interval(interval: u64, answer: &Answer) -> u64 {
    match answer {
        Answer::SlowDown => interval.saturating_add(5),
        _ => interval,
    }
}

/// Reads a device authorization answer (RFC 8628 §3.2).
pub fn parse_device_answer(endpoint: &str, status: u16, body: &str, now: i64) -> Result<DeviceCode, Error> {
    let invalid = |detail: &str| Error::Invalid { endpoint: endpoint.to_owned(), detail: detail.to_owned() };
    let v = read_json(endpoint, status, body)?;
    match error_answer(endpoint, status, &v) {
        None => {}
        Some(Err(e)) => return Err(e),
        Some(Ok(_)) => return Err(invalid("a polling answer to the start of a device authorization")),
    }
    let text = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty() && !s.chars().any(char::is_control));
    let device_code = text("device_code").ok_or_else(|| invalid("no device_code"))?.to_owned();
    let user_code = text("user_code").ok_or_else(|| invalid("no user_code"))?.to_owned();
    // Google spells it verification_url.
    let verification_uri = text("verification_uri")
        .or_else(|| text("verification_url"))
        .ok_or_else(|| invalid("no verification_uri"))?
        .to_owned();
    let expires_in =
        v.get("expires_in").and_then(seconds).filter(|s| *s > 0).ok_or_else(|| invalid("no expires_in"))?;
    // RFC 8628 §3.2: 5 s when the server says nothing.
    let interval = match v.get("interval") {
        None => 5,
        Some(i) => seconds(i)
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .ok_or_else(|| invalid("interval is not a positive number"))?,
    };
    Ok(DeviceCode {
        device_code,
        user_code,
        verification_uri,
        verification_uri_complete: text("verification_uri_complete").map(str::to_owned),
        interval,
        expires_at: now.saturating_add(expires_in),
    })
}

/// An endpoint must be `https`, or `http` to this machine (a test server, a local proxy).
pub fn check_endpoint(url: &str) -> Result<(), Error> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Ok(());
    }
    if let Some(rest) = lower.strip_prefix("http://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = match authority.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => authority,
        };
        if backproc_types::is_loopback(host) {
            return Ok(());
        }
        return Err(Error::Setting(format!(
            "the OAuth endpoint {url} is plain http to another host: tokens would travel in clear; use https"
        )));
    }
    Err(Error::Setting(format!("the OAuth endpoint {url} is not an http(s) URL")))
}

/// The HTTP client for token endpoints: TLS verified against the system's CAs plus an
/// account's own, a timeout on every request.
pub struct Http {
    agent: ureq::Agent,
}

impl Http {
    pub fn new(ca_pem: Option<&[u8]>, timeout: Duration) -> Result<Http, Error> {
        let mut tls = native_tls::TlsConnector::builder();
        if let Some(pem) = ca_pem {
            let cert = native_tls::Certificate::from_pem(pem)
                .map_err(|e| Error::Setting(format!("cannot read the CA file: {e}")))?;
            tls.add_root_certificate(cert);
        }
        let tls = tls.build().map_err(|e| Error::Setting(format!("cannot set up TLS: {e}")))?;
        let agent = ureq::AgentBuilder::new()
            .tls_connector(Arc::new(tls))
            .timeout_connect(timeout)
            .timeout(timeout)
            // a redirect of a POST to another host would carry the secrets there
            .redirects(0)
            .build();
        Ok(Http { agent })
    }

    /// POSTs a form and returns the HTTP status and body (at most 1 MiB).
    fn post(&self, endpoint: &str, form: &[(&str, &str)]) -> Result<(u16, String), Error> {
        check_endpoint(endpoint)?;
        let resp = match self.agent.post(endpoint).set("Accept", "application/json").send_form(form) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                // The transport error names the URL and the cause, never the form.
                return Err(Error::Unavailable { endpoint: endpoint.to_owned(), detail: clean(&t.to_string(), 300) });
            }
        };
        let status = resp.status();
        let mut body = String::new();
        use std::io::Read;
        resp.into_reader().take(1 << 20).read_to_string(&mut body).map_err(|e| Error::Unavailable {
            endpoint: endpoint.to_owned(),
            detail: format!("reading the answer: {e}"),
        })?;
        Ok((status, body))
    }

    fn client_form<'a>(s: &'a Settings, form: &mut Vec<(&'a str, &'a str)>) {
        form.push(("client_id", &s.client_id));
        if let Some(secret) = &s.client_secret {
            form.push(("client_secret", secret));
        }
    }

    /// A new access token for `refresh_token` (RFC 6749 §6).
    pub fn refresh(&self, s: &Settings, refresh_token: &str, now: i64) -> Result<Tokens, Error> {
        let scope = s.scopes.join(" ");
        let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
        Self::client_form(s, &mut form);
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let (status, body) = self.post(&s.token_endpoint, &form)?;
        match parse_answer(&s.token_endpoint, status, &body, now)? {
            Answer::Tokens(t) => Ok(t),
            Answer::Pending | Answer::SlowDown => Err(Error::Invalid {
                endpoint: s.token_endpoint.clone(),
                detail: "a device-grant answer to a refresh".into(),
            }),
        }
    }

    /// Starts a device authorization (RFC 8628 §3.1).
    pub fn device_start(&self, s: &Settings, now: i64) -> Result<DeviceCode, Error> {
        let endpoint = s.device_endpoint.as_deref().ok_or_else(|| {
            Error::Setting("the account has no device authorization endpoint (--oauth-device-endpoint)".into())
        })?;
        let scope = s.scopes.join(" ");
        let mut form = Vec::new();
        Self::client_form(s, &mut form);
        form.push(("scope", &scope));
        let (status, body) = self.post(endpoint, &form)?;
        parse_device_answer(endpoint, status, &body, now)
    }

    /// Asks once whether the user has approved the device code (RFC 8628 §3.4).
    pub fn device_poll(&self, s: &Settings, device_code: &str, now: i64) -> Result<Answer, Error> {
        let mut form =
            vec![("grant_type", "urn:ietf:params:oauth:grant-type:device_code"), ("device_code", device_code)];
        Self::client_form(s, &mut form);
        let (status, body) = self.post(&s.token_endpoint, &form)?;
        parse_answer(&s.token_endpoint, status, &body, now)
    }
}

#[cfg(test)]
mod tests;
