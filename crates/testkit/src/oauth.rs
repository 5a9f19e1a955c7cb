//! A real OAuth2 token server on loopback (HTTP/1.1, no TLS): the refresh-token grant (RFC 6749
//! §6), the device authorization grant (RFC 8628) and token introspection (RFC 7662) in the
//! `POST token=...` form Dovecot's oauth2 passdb sends with `introspection_mode = post`.
//!
//! Endpoints (all `POST`, bodies `application/x-www-form-urlencoded`, answers JSON):
//! - `/token`, `grant_type=refresh_token` (+ `refresh_token`, `client_id`, optional
//!   `client_secret`, `scope`): `{"access_token","token_type":"Bearer","expires_in","scope"}`
//!   plus `"refresh_token"` while rotation is on (Google's answer without rotation lacks it).
//! - `/token`, `grant_type=urn:ietf:params:oauth:grant-type:device_code` (+ `device_code`,
//!   `client_id`): `authorization_pending` until the test [approves](TokenServer::approve),
//!   `slow_down` when polled sooner than the interval after the previous poll of that code (and
//!   the code's interval grows by 5 s, RFC 8628 §3.5), `expired_token` past its lifetime, then
//!   the tokens once; the code is used up after that (`invalid_grant`).
//! - `/device` (`client_id`, `scope`): `device_code`, `user_code`, `verification_uri` and
//!   Google's spelling `verification_url`, `expires_in`, `interval`.
//! - `/introspect` (`token`): `{"active":true,"email","sub","exp",..}` or `{"active":false}`.
//!
//! Clients must be registered with [`TokenServer::add_client`]; an unknown client, or a missing
//! or wrong secret of a confidential one (form field `client_secret` or HTTP Basic, RFC 6749
//! §2.3.1), gets 401 `invalid_client`. Other errors are 400 `{"error","error_description"}`
//! (RFC 6749 §5.2); descriptions never contain a token.
//!
//! **Rotation.** With rotation on (the default) every refresh answers a new refresh token. A
//! token R(n) stays valid after use until its successor R(n+1) is used for the first time;
//! then R(n) and everything older in that chain answer `invalid_grant`. Using R(n) again before
//! that answers another, fresh successor. This is the grace providers give, and it lets a
//! client that was killed after the server answered but before it stored R(n+1) refresh again
//! with R(n). With rotation off a refresh token never changes and stays valid until
//! [`revoke_all`](TokenServer::revoke_all).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Value, json};

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// RFC 8628 §6.1: no vowels (no words), no look-alike digits.
const USER_CODE_CHARS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
const MAX_HEAD: usize = 16 << 10;
const MAX_BODY: usize = 1 << 20;
/// A client that stops sending mid-request must not keep its thread forever.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server answers from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As described in the module doc.
    Normal,
    /// Every refresh and device-code grant answers 400 `invalid_grant`, as when the user
    /// revoked the app's access or changed the password.
    InvalidGrant,
    /// Every connection is accepted and closed at once without a byte: the provider is
    /// unreachable. Nothing is counted.
    Down,
}

/// Requests received so far, by kind (whatever their answer).
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// `POST /token` with `grant_type=refresh_token`.
    pub refresh: usize,
    /// `POST /token` with the device-code grant type (each poll).
    pub device_grant: usize,
    /// `POST /device`.
    pub device_start: usize,
    /// `POST /introspect`.
    pub introspect: usize,
    /// `invalid_grant` answers, from any cause.
    pub invalid_grant: usize,
    /// Everything else: unknown paths or grant types, malformed requests.
    pub other: usize,
}

/// A running token server on 127.0.0.1; dropping it stops it.
pub struct TokenServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

struct State {
    /// client_id → secret (None: a public client).
    clients: HashMap<String, Option<String>>,
    lifetime: Duration,
    rotation: bool,
    mode: Mode,
    device_interval: u64,
    device_lifetime: Duration,
    /// How long each answer waits after the request was handled (its effects are already in
    /// the state): a slow endpoint, so that a client can be killed while waiting for it.
    answer_delay: Duration,
    refresh: HashMap<String, RefreshToken>,
    /// Rotation chain → the newest generation used so far; older generations are dead.
    chains: HashMap<u64, u64>,
    next_chain: u64,
    access: HashMap<String, AccessToken>,
    devices: HashMap<String, Device>,
    counts: Counts,
    secrets: Vec<String>,
    rng: Rng,
    verification_uri: String,
}

struct RefreshToken {
    user: String,
    scope: String,
    /// The client it was issued to; None for [`TokenServer::issue_refresh_token`], usable by any.
    client: Option<String>,
    chain: u64,
    generation: u64,
}

struct AccessToken {
    user: String,
    scope: String,
    expires: Instant,
    exp_unix: u64,
}

struct Device {
    user_code: String,
    client: String,
    scope: String,
    expires: Instant,
    interval: u64,
    last_poll: Option<Instant>,
    approved: Option<String>,
    used: bool,
}

/// Unpredictable enough for tokens of a test: SipHash under the process's random keys
/// (`RandomState`) over a counter, so no extra crate and no reads that can fail.
struct Rng {
    keys: RandomState,
    counter: u64,
}

impl Rng {
    fn next(&mut self) -> u64 {
        let mut h = self.keys.build_hasher();
        h.write_u64(self.counter);
        self.counter += 1;
        h.finish()
    }

    fn token(&mut self, prefix: &str) -> String {
        format!("{prefix}{:016x}{:016x}", self.next(), self.next())
    }

    fn user_code(&mut self) -> String {
        let mut code = String::with_capacity(9);
        for i in 0..8 {
            if i == 4 {
                code.push('-');
            }
            code.push(USER_CODE_CHARS[(self.next() % USER_CODE_CHARS.len() as u64) as usize] as char);
        }
        code
    }
}

impl State {
    fn issue_access(&mut self, user: &str, scope: &str) -> (String, u64) {
        let token = self.rng.token("at-");
        let expires_in = self.lifetime.as_secs_f64().ceil() as u64;
        let exp_unix = (SystemTime::now() + self.lifetime).duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let at = AccessToken {
            user: user.to_string(),
            scope: scope.to_string(),
            expires: Instant::now() + self.lifetime,
            exp_unix,
        };
        self.access.insert(token.clone(), at);
        self.secrets.push(token.clone());
        (token, expires_in)
    }

    fn issue_refresh(&mut self, user: &str, scope: &str, client: Option<&str>, chain: Option<(u64, u64)>) -> String {
        let (chain, generation) = chain.unwrap_or_else(|| {
            self.next_chain += 1;
            self.chains.insert(self.next_chain, 0);
            (self.next_chain, 0)
        });
        let token = self.rng.token("rt-");
        let rt = RefreshToken {
            user: user.to_string(),
            scope: scope.to_string(),
            client: client.map(str::to_string),
            chain,
            generation,
        };
        self.refresh.insert(token.clone(), rt);
        self.secrets.push(token.clone());
        token
    }

    fn invalid_grant(&mut self, why: &str) -> Reply {
        self.counts.invalid_grant += 1;
        Reply::error(400, "invalid_grant", why)
    }

    /// The client of a request, authenticated (RFC 6749 §2.3.1), or the 401/400 answer.
    fn client(&self, req: &Request, form: &Form) -> Result<String, Reply> {
        let basic = req.header("authorization").and_then(|v| v.strip_prefix("Basic ")).map(|b| {
            let raw = base64::engine::general_purpose::STANDARD.decode(b.trim()).map_err(|_| ())?;
            let text = String::from_utf8(raw).map_err(|_| ())?;
            let (id, secret) = text.split_once(':').ok_or(())?;
            Ok::<_, ()>((percent_decode(id).ok_or(())?, percent_decode(secret).ok_or(())?))
        });
        let (id, secret) = match basic {
            Some(Err(())) => return Err(Reply::error(401, "invalid_client", "malformed HTTP Basic credentials")),
            Some(Ok(_)) if form.get("client_secret").is_some() => {
                return Err(Reply::error(400, "invalid_request", "more than one client authentication method"));
            }
            Some(Ok((id, secret))) => (Some(id), Some(secret)),
            None => (form.get("client_id").map(str::to_string), form.get("client_secret").map(str::to_string)),
        };
        let Some(id) = id else {
            return Err(Reply::error(401, "invalid_client", "no client_id"));
        };
        match self.clients.get(&id) {
            None => Err(Reply::error(401, "invalid_client", "unknown client")),
            Some(Some(want)) if secret.as_deref() != Some(want.as_str()) => {
                Err(Reply::error(401, "invalid_client", "missing or wrong client secret"))
            }
            Some(_) => Ok(id),
        }
    }

    fn route(&mut self, req: &Request) -> Reply {
        let path = req.path.split('?').next().unwrap_or_default();
        let kind = match path {
            "/token" | "/device" | "/introspect" if req.method != "POST" => {
                self.counts.other += 1;
                return Reply::error(405, "invalid_request", "use POST");
            }
            "/token" | "/device" | "/introspect" => path,
            _ => {
                self.counts.other += 1;
                return Reply::error(404, "invalid_request", "no such endpoint");
            }
        };
        let form = match parse_form(req) {
            Ok(f) => f,
            Err(why) => {
                self.counts.other += 1;
                return Reply::error(400, "invalid_request", why);
            }
        };
        match (kind, form.get("grant_type")) {
            ("/token", Some("refresh_token")) => {
                self.counts.refresh += 1;
                self.refresh_grant(req, &form)
            }
            ("/token", Some(DEVICE_GRANT)) => {
                self.counts.device_grant += 1;
                self.device_grant(req, &form)
            }
            ("/token", None) => {
                self.counts.other += 1;
                Reply::error(400, "invalid_request", "no grant_type")
            }
            ("/token", Some(_)) => {
                self.counts.other += 1;
                Reply::error(400, "unsupported_grant_type", "only refresh_token and device_code")
            }
            ("/device", _) => {
                self.counts.device_start += 1;
                self.device_start(req, &form)
            }
            _ => {
                self.counts.introspect += 1;
                self.introspect(&form)
            }
        }
    }

    fn refresh_grant(&mut self, req: &Request, form: &Form) -> Reply {
        let client = match self.client(req, form) {
            Ok(c) => c,
            Err(reply) => return reply,
        };
        if self.mode == Mode::InvalidGrant {
            return self.invalid_grant("Token has been expired or revoked.");
        }
        let Some(rt) = form.get("refresh_token") else {
            return Reply::error(400, "invalid_request", "no refresh_token");
        };
        let Some(tok) = self.refresh.get(rt) else {
            return self.invalid_grant("unknown or revoked refresh token");
        };
        if tok.client.as_ref().is_some_and(|c| *c != client) {
            return self.invalid_grant("refresh token was issued to another client");
        }
        let (user, scope, token_client, chain, generation) =
            (tok.user.clone(), tok.scope.clone(), tok.client.clone(), tok.chain, tok.generation);
        let newest_used = self.chains.entry(chain).or_insert(0);
        if generation < *newest_used {
            return self.invalid_grant("refresh token was replaced by a newer one");
        }
        *newest_used = generation;
        let scope = form.get("scope").map_or(scope, str::to_string);
        let (access, expires_in) = self.issue_access(&user, &scope);
        let mut body = json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": scope,
        });
        if self.rotation {
            let next = self.issue_refresh(&user, &scope, token_client.as_deref(), Some((chain, generation + 1)));
            body["refresh_token"] = json!(next);
        }
        Reply::ok(body)
    }

    fn device_start(&mut self, req: &Request, form: &Form) -> Reply {
        let client = match self.client(req, form) {
            Ok(c) => c,
            Err(reply) => return reply,
        };
        let device_code = self.rng.token("dc-");
        let user_code = self.rng.user_code();
        let device = Device {
            user_code: user_code.clone(),
            client,
            scope: form.get("scope").unwrap_or_default().to_string(),
            expires: Instant::now() + self.device_lifetime,
            interval: self.device_interval,
            last_poll: None,
            approved: None,
            used: false,
        };
        let interval = device.interval;
        self.devices.insert(device_code.clone(), device);
        self.secrets.push(device_code.clone());
        Reply::ok(json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.verification_uri.clone(),
            "verification_url": self.verification_uri.clone(),
            "expires_in": self.device_lifetime.as_secs_f64().ceil() as u64,
            "interval": interval,
        }))
    }

    fn device_grant(&mut self, req: &Request, form: &Form) -> Reply {
        let client = match self.client(req, form) {
            Ok(c) => c,
            Err(reply) => return reply,
        };
        if self.mode == Mode::InvalidGrant {
            return self.invalid_grant("Token has been expired or revoked.");
        }
        let Some(code) = form.get("device_code") else {
            return Reply::error(400, "invalid_request", "no device_code");
        };
        let now = Instant::now();
        let Some(d) = self.devices.get_mut(code) else {
            return self.invalid_grant("unknown device_code");
        };
        if d.client != client {
            return self.invalid_grant("device_code was issued to another client");
        }
        if d.used {
            return self.invalid_grant("device_code was already used");
        }
        if now >= d.expires {
            return Reply::error(400, "expired_token", "the device_code expired");
        }
        let too_soon = d.last_poll.is_some_and(|last| now.duration_since(last) < Duration::from_secs(d.interval));
        d.last_poll = Some(now);
        if too_soon {
            d.interval += 5;
            return Reply::error(400, "slow_down", "polled sooner than the interval");
        }
        let Some(user) = d.approved.clone() else {
            return Reply::error(400, "authorization_pending", "the user has not yet approved");
        };
        d.used = true;
        let (scope, client) = (d.scope.clone(), d.client.clone());
        let (access, expires_in) = self.issue_access(&user, &scope);
        let refresh = self.issue_refresh(&user, &scope, Some(&client), None);
        Reply::ok(json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "refresh_token": refresh,
            "scope": scope,
        }))
    }

    fn introspect(&mut self, form: &Form) -> Reply {
        let Some(token) = form.get("token") else {
            return Reply::error(400, "invalid_request", "no token");
        };
        match self.active(token) {
            Some(at) => Reply::ok(json!({
                "active": true,
                "email": at.user,
                "sub": at.user,
                "scope": at.scope,
                "token_type": "Bearer",
                "exp": at.exp_unix,
            })),
            None => Reply::ok(json!({"active": false})),
        }
    }

    fn active(&self, token: &str) -> Option<&AccessToken> {
        self.access.get(token).filter(|at| Instant::now() < at.expires)
    }
}

impl TokenServer {
    /// Starts on a free port of 127.0.0.1, in [`Mode::Normal`] with no clients.
    pub fn start() -> anyhow::Result<TokenServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let state = State {
            clients: HashMap::new(),
            lifetime: Duration::from_secs(3600),
            rotation: true,
            mode: Mode::Normal,
            answer_delay: Duration::ZERO,
            device_interval: 1,
            device_lifetime: Duration::from_secs(600),
            refresh: HashMap::new(),
            chains: HashMap::new(),
            next_chain: 0,
            access: HashMap::new(),
            devices: HashMap::new(),
            counts: Counts::default(),
            secrets: Vec::new(),
            rng: Rng { keys: RandomState::new(), counter: 0 },
            verification_uri: format!("http://{addr}/activate"),
        };
        let shared = Arc::new(Shared { state: Mutex::new(state), stop: AtomicBool::new(false) });
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new().name("token-server".into()).spawn(move || accept_loop(listener, shared))?
        };
        Ok(TokenServer { shared, addr, accept: Some(accept) })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn token_endpoint(&self) -> String {
        self.url() + "/token"
    }
    pub fn device_endpoint(&self) -> String {
        self.url() + "/device"
    }
    pub fn introspection_url(&self) -> String {
        self.url() + "/introspect"
    }

    /// Registers a client; with a secret it is confidential and must send it.
    pub fn add_client(&self, client_id: &str, client_secret: Option<&str>) {
        let mut st = self.state();
        st.clients.insert(client_id.to_string(), client_secret.map(str::to_string));
        if let Some(s) = client_secret {
            st.secrets.push(s.to_string());
        }
    }

    /// Lifetime (`expires_in`) of access tokens issued from now on; default one hour. Past it
    /// introspection answers `{"active":false}`.
    pub fn set_lifetime(&self, d: Duration) {
        self.state().lifetime = d;
    }

    /// Whether every refresh answers a new refresh token (default on); see the module doc.
    pub fn set_rotation(&self, on: bool) {
        self.state().rotation = on;
    }

    pub fn set_mode(&self, m: Mode) {
        self.state().mode = m;
    }

    /// Every answer from now on is written this long after its request was handled; default
    /// none.
    pub fn set_answer_delay(&self, d: Duration) {
        self.state().answer_delay = d;
    }

    /// Polling interval (seconds) of device codes issued from now on; default 1.
    pub fn set_device_interval(&self, secs: u64) {
        self.state().device_interval = secs;
    }

    /// Lifetime of device codes issued from now on; default 600 s (`expired_token` after it).
    pub fn set_device_lifetime(&self, d: Duration) {
        self.state().device_lifetime = d;
    }

    /// A refresh token for `user` (scope `mail`) as if the user had authorized elsewhere;
    /// any registered client may use it.
    pub fn issue_refresh_token(&self, user: &str) -> String {
        self.state().issue_refresh(user, "mail", None, None)
    }

    /// An access token for `user` with the current lifetime, without an HTTP round trip.
    pub fn issue_access_token(&self, user: &str) -> String {
        self.state().issue_access(user, "mail").0
    }

    /// User codes of device authorizations waiting for the user (not approved, not expired).
    pub fn pending_user_codes(&self) -> Vec<String> {
        let now = Instant::now();
        let st = self.state();
        st.devices.values().filter(|d| d.approved.is_none() && now < d.expires).map(|d| d.user_code.clone()).collect()
    }

    /// Plays the user entering `user_code` and consenting as `user`; false if no pending
    /// authorization has that code.
    pub fn approve(&self, user_code: &str, user: &str) -> bool {
        let now = Instant::now();
        let mut st = self.state();
        match st.devices.values_mut().find(|d| d.user_code == user_code && d.approved.is_none() && now < d.expires) {
            Some(d) => {
                d.approved = Some(user.to_string());
                true
            }
            None => false,
        }
    }

    /// Every refresh and access token issued so far becomes invalid (`invalid_grant`,
    /// `{"active":false}`).
    pub fn revoke_all(&self) {
        let mut st = self.state();
        st.refresh.clear();
        st.access.clear();
    }

    pub fn counts(&self) -> Counts {
        self.state().counts.clone()
    }

    /// Every refresh token, access token, device code and client secret issued or registered so
    /// far, for tests that grep logs for leaks.
    pub fn secrets(&self) -> Vec<String> {
        self.state().secrets.clone()
    }

    /// The user of an access token that is active now.
    pub fn is_valid_access_token(&self, token: &str) -> Option<String> {
        self.state().active(token).map(|at| at.user.clone())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept so the loop sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else {
            // E.g. out of file descriptors: do not spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if shared.state.lock().unwrap_or_else(|e| e.into_inner()).mode == Mode::Down {
            drop(conn);
            continue;
        }
        let shared = shared.clone();
        // Without a thread the connection is dropped, which the client sees as a failure.
        let _ = std::thread::Builder::new().name("token-conn".into()).spawn(move || serve(conn, &shared));
    }
}

/// Answers one request, then closes.
fn serve(mut conn: TcpStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(READ_TIMEOUT));
    let (reply, delay) = {
        let request = read_request(&mut conn);
        let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let reply = match request {
            Ok(req) => st.route(&req),
            Err(why) => {
                st.counts.other += 1;
                Reply::error(400, "invalid_request", why)
            }
        };
        (reply, st.answer_delay)
    };
    std::thread::sleep(delay);
    let _ = conn.write_all(&reply.to_http());
}

struct Request {
    method: String,
    path: String,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn read_request(conn: &mut TcpStream) -> Result<Request, &'static str> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err("request head too long");
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return Err("connection closed before the request head ended"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(path), Some(version)) = (request_line.next(), request_line.next(), request_line.next())
    else {
        return Err("malformed request line");
    };
    if !version.starts_with("HTTP/1.") || request_line.next().is_some() {
        return Err("malformed request line");
    }
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("malformed header line")?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut req = Request { method: method.to_string(), path: path.to_string(), headers, body: Vec::new() };
    if req.header("transfer-encoding").is_some() {
        return Err("chunked bodies are not supported; send Content-Length");
    }
    let len = match req.header("content-length") {
        Some(v) => v.parse::<usize>().map_err(|_| "bad Content-Length")?,
        None => 0,
    };
    if len > MAX_BODY {
        return Err("body too large");
    }
    if req.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        let _ = conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let mut body = buf.split_off(head_end + 4);
    while body.len() < len {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return Err("connection closed before the body ended"),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(len);
    req.body = body;
    Ok(req)
}

/// Decoded form fields; each name at most once (RFC 6749 §3.1).
struct Form(HashMap<String, String>);

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

fn parse_form(req: &Request) -> Result<Form, &'static str> {
    let mut fields = HashMap::new();
    if req.body.is_empty() {
        return Ok(Form(fields));
    }
    let ctype = req.header("content-type").unwrap_or_default();
    if !ctype.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err("body must be application/x-www-form-urlencoded");
    }
    let body = std::str::from_utf8(&req.body).map_err(|_| "body is not UTF-8")?;
    for pair in body.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name).ok_or("bad percent-encoding")?;
        let value = percent_decode(value).ok_or("bad percent-encoding")?;
        if fields.insert(name, value).is_some() {
            return Err("a parameter is repeated");
        }
    }
    Ok(Form(fields))
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; None if
/// malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Both digits checked: from_str_radix would also take a sign ("%+1").
                let hex = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

struct Reply {
    status: u16,
    body: Value,
}

impl Reply {
    fn ok(body: Value) -> Reply {
        Reply { status: 200, body }
    }

    fn error(status: u16, error: &str, description: &str) -> Reply {
        Reply { status, body: json!({"error": error, "error_description": description}) }
    }

    fn to_http(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Method Not Allowed",
        };
        let body = self.body.to_string();
        // RFC 6749 §5.2: a 401 after client authentication names the scheme to use.
        let challenge = if self.status == 401 { "WWW-Authenticate: Basic realm=\"token\"\r\n" } else { "" };
        // RFC 6749 §5.1: token answers must not be cached.
        format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nPragma: no-cache\r\n{challenge}Connection: close\r\n\r\n{body}",
            self.status,
            body.len()
        )
        .into_bytes()
    }
}
