//! An aiosmtpd (Debian `python3-aiosmtpd`) SMTP server with per-recipient answers, set at run
//! time through a JSON rules file the handler rereads on every command; optionally requiring
//! OAuth2 sign-in (XOAUTH2, OAUTHBEARER) checked at a token introspection URL.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, anyhow, bail};
use base64::Engine;

use crate::proc::ChildGuard;
use crate::{START_TIMEOUT, find_program, read_lossy, write_atomic};

/// How the server answers from now on. Codes below 400 accept (with that text); 4xx/5xx refuse.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SmtpRules {
    /// Recipient address (as in `RCPT TO:<address>`) → answer; others get "250 OK".
    pub rcpt: BTreeMap<String, (u16, String)>,
    /// Answer to every MAIL FROM.
    pub mail: Option<(u16, String)>,
    /// Answer after the message data (the final dot).
    pub data: Option<(u16, String)>,
}

/// One accepted transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub mail_from: String,
    /// The accepted recipients only.
    pub rcpt_tos: Vec<String>,
    /// The message exactly as received (CRLF, dot-unstuffed).
    pub data: Vec<u8>,
}

/// One AUTH attempt on a [`PySmtp::start_oauth`] server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct AuthAttempt {
    /// `XOAUTH2` or `OAUTHBEARER`.
    pub mechanism: String,
    /// The user the client named (`user=` of XOAUTH2, the authzid of OAUTHBEARER; empty if
    /// none or the message was malformed).
    pub user: String,
    pub accepted: bool,
}

/// A running aiosmtpd server on 127.0.0.1.
pub struct PySmtp {
    child: ChildGuard,
    dir: tempfile::TempDir,
    port: u16,
}

const HANDLER: &str = r#"
import asyncio, base64, binascii, json, logging, os, sys, threading, urllib.parse, urllib.request, warnings
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult

DIR, PORT = sys.argv[1], int(sys.argv[2])
INTROSPECT = sys.argv[3] if len(sys.argv) > 3 else None
# MAIL commands a session may send; the next gets "421 4.7.0 MAIL sent too many times" and
# the connection is closed (aiosmtpd's own call limit, as servers limit messages a session)
MAILS = int(sys.argv[4]) if len(sys.argv) > 4 else None
RULES = os.path.join(DIR, "rules.json")
MSGS = os.path.join(DIR, "msgs")
AUTH_LOG = os.path.join(DIR, "auth.log")

def rules():
    try:
        with open(RULES) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}

def answer(rule, default):
    return default if not rule else "%d %s" % (rule[0], rule[1])

class Handler:
    def __init__(self):
        self.count = 0

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        rule = rules().get("mail")
        if rule and rule[0] >= 400:
            return answer(rule, "")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return answer(rule, "250 OK")

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        table = rules().get("rcpt") or {}
        rule = table.get(address) or table.get(address.lower())
        if rule and rule[0] >= 400:
            return answer(rule, "")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return answer(rule, "250 OK")

    async def handle_DATA(self, server, session, envelope):
        rule = rules().get("data")
        if rule and rule[0] >= 400:
            return answer(rule, "")
        self.count += 1
        data = envelope.original_content
        if data is None:
            data = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        rec = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
               "data": base64.b64encode(data).decode("ascii")}
        tmp = os.path.join(MSGS, ".tmp-%09d" % self.count)
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.rename(tmp, os.path.join(MSGS, "msg-%09d.json" % self.count))
        return answer(rule, "250 OK queued as %d" % self.count)

def introspect(token):
    """The introspection answer (RFC 7662) for a bearer token; None if the server cannot be
    reached or answers no JSON object."""
    req = urllib.request.Request(
        INTROSPECT, data=urllib.parse.urlencode({"token": token}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            answer = json.load(r)
    except (OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None

def kvpairs(text):
    """RFC 7628 key=value pairs separated by ^A, ending in ^A^A."""
    if not text.endswith("\x01\x01"):
        return None
    pairs = {}
    for kv in text[:-2].split("\x01"):
        key, eq, value = kv.partition("=")
        if not eq:
            return None
        pairs[key] = value
    return pairs

def parse_xoauth2(text):
    pairs = kvpairs(text)
    if pairs is None or "user" not in pairs:
        return None
    return pairs["user"], pairs.get("auth", "")

def parse_oauthbearer(text):
    # gs2-header "n,a=USER," (or "n,,": no authzid), then the pairs. Channel binding ("p=")
    # is refused: mail servers do not offer it.
    gs2, sep, rest = text.partition(",")
    authz, sep2, rest = rest.partition(",")
    if not sep or not sep2 or gs2 not in ("n", "y") or not rest.startswith("\x01"):
        return None
    if authz and not authz.startswith("a="):
        return None
    pairs = kvpairs(rest[1:])
    if pairs is None:
        return None
    return authz[2:], pairs.get("auth", "")

class OAuthHandler(Handler):
    # SMTP servers in the wild answer a bad token like this (RFC 7628 §3.2.2): an error
    # challenge, the client's empty (or ^A) answer, then 535.
    ERROR = json.dumps({"status": "401", "schemes": "bearer", "scope": "smtp"})

    async def auth_XOAUTH2(self, server, args):
        return await self.oauth(server, args, "XOAUTH2", parse_xoauth2)

    async def auth_OAUTHBEARER(self, server, args):
        return await self.oauth(server, args, "OAUTHBEARER", parse_oauthbearer)

    async def oauth(self, server, args, mechanism, parse):
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return self.logged(mechanism, "", AuthResult(success=False, handled=True))
        else:
            try:
                blob = b"" if args[1] == "=" else base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return self.logged(mechanism, "", AuthResult(success=False, handled=True))
        try:
            parsed = parse(blob.decode("utf-8"))
        except UnicodeDecodeError:
            parsed = None
        if parsed is None:
            await server.push("501 5.5.2 Malformed %s message" % mechanism)
            return self.logged(mechanism, "", AuthResult(success=False, handled=True))
        user, auth = parsed
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        info = None
        if token:
            # urllib blocks: not on the event loop that serves every connection.
            info = await asyncio.get_running_loop().run_in_executor(None, introspect, token)
            if info is None:
                return self.logged(mechanism, user, AuthResult(
                    success=False, handled=False, message="454 4.7.0 Temporary authentication failure"))
        email = str((info or {}).get("email", ""))
        if info and info.get("active") is True and (not user or email.lower() == user.lower()):
            return self.logged(mechanism, user or email, AuthResult(success=True, auth_data=email))
        answer = await server.challenge_auth(self.ERROR)
        return self.logged(mechanism, user, AuthResult(success=False, handled=answer is MISSING))

    def logged(self, mechanism, user, result):
        with open(AUTH_LOG, "a") as f:
            f.write(json.dumps({"mechanism": mechanism, "user": user, "accepted": result.success}) + "\n")
        return result

if INTROSPECT:
    # Loopback test server: AUTH without TLS is the point, not a mistake to warn about on
    # every connection; and aiosmtpd itself sets the deprecated Session.login_data on every
    # AUTH and warns about it. The log keeps errors (tracebacks).
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    # No passwords here: PLAIN and LOGIN would always fail.
    limits = {"command_call_limit": {"MAIL": MAILS, "*": 1000}} if MAILS else {}
    controller = Controller(OAuthHandler(), hostname="127.0.0.1", port=PORT, ready_timeout=10,
                            auth_required=True, auth_require_tls=False,
                            auth_exclude_mechanism=["LOGIN", "PLAIN"], **limits)
else:
    controller = Controller(Handler(), hostname="127.0.0.1", port=PORT, ready_timeout=10)
controller.start()
print("READY", flush=True)
threading.Event().wait()
"#;

impl PySmtp {
    /// Starts on a free port (retrying on a clash); accepts everything until `set_rules`.
    pub fn start() -> anyhow::Result<PySmtp> {
        PySmtp::spawn(&[])
    }

    /// [`start`](Self::start), but every MAIL, RCPT and DATA needs `AUTH XOAUTH2` or `AUTH
    /// OAUTHBEARER` first (530 otherwise; no TLS needed). The bearer token is checked by
    /// POSTing `token=...` to `introspection_url` (RFC 7662): `"active":true`, and `email`
    /// equal to the user the client named, if it named one, gives 235. Otherwise the client
    /// gets the error challenge `334 <base64 of {"status":"401","schemes":"bearer","scope":"smtp"}>`,
    /// and after its answer (empty, or `AQ==`) `535 5.7.8`; an unreachable introspection URL
    /// gives `454 4.7.0`. The initial response may come on the AUTH line or after `334 `.
    pub fn start_oauth(introspection_url: &str) -> anyhow::Result<PySmtp> {
        PySmtp::spawn(&[introspection_url])
    }

    /// [`start_oauth`](Self::start_oauth), and a session may send `mails` messages: the next
    /// MAIL FROM gets `421 4.7.0 MAIL sent too many times` and the connection is closed, as
    /// servers that limit messages per session do. A client must sign in again to go on.
    pub fn start_oauth_limited(introspection_url: &str, mails: u32) -> anyhow::Result<PySmtp> {
        PySmtp::spawn(&[introspection_url, &mails.to_string()])
    }

    fn spawn(extra_args: &[&str]) -> anyhow::Result<PySmtp> {
        // The Debian package installs aiosmtpd for the system python, which may not be the
        // first python3 on PATH (pyenv etc.).
        let python = ["/usr/bin/python3"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| find_program("python3", &[]))
            .ok_or_else(|| anyhow!("python3 not found: install python3-aiosmtpd"))?;
        let dir = tempfile::Builder::new().prefix("backproc-pysmtp-").tempdir()?;
        std::fs::create_dir(dir.path().join("msgs"))?;
        std::fs::write(dir.path().join("handler.py"), HANDLER)?;
        let mut last = anyhow!("aiosmtpd did not start");
        for _attempt in 0..5 {
            let port = crate::free_port();
            let mut cmd = Command::new(&python);
            cmd.arg(dir.path().join("handler.py")).arg(dir.path()).arg(port.to_string()).args(extra_args);
            let log = dir.path().join("stderr");
            let _ = std::fs::remove_file(&log);
            let mut child = ChildGuard::spawn("python3 aiosmtpd", &mut cmd, &log)?;
            match crate::wait_ready(port, START_TIMEOUT, true, || child.check_alive()) {
                Ok(_) => return Ok(PySmtp { child, dir, port }),
                Err(e) => {
                    child.stop();
                    let text = read_lossy(&log);
                    if text.contains("No module named 'aiosmtpd'") {
                        bail!("aiosmtpd not found for {}: install python3-aiosmtpd", python.display());
                    }
                    last = e.context(format!("aiosmtpd failed to start; its output:\n{text}"));
                    if !text.contains("in use") {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sets how the server answers from the next SMTP command on.
    pub fn set_rules(&self, rules: &SmtpRules) -> anyhow::Result<()> {
        write_atomic(&self.dir().join("rules.json"), &serde_json::to_vec(rules)?)
    }

    /// Accepted transactions so far, in order.
    pub fn messages(&self) -> anyhow::Result<Vec<Received>> {
        #[derive(serde::Deserialize)]
        struct Rec {
            mail_from: String,
            rcpt_tos: Vec<String>,
            data: String,
        }
        let mut files: Vec<_> = std::fs::read_dir(self.dir().join("msgs"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                let rec: Rec = serde_json::from_slice(&std::fs::read(f)?)
                    .with_context(|| format!("cannot parse {}", f.display()))?;
                let data = base64::engine::general_purpose::STANDARD.decode(rec.data)?;
                Ok(Received { mail_from: rec.mail_from, rcpt_tos: rec.rcpt_tos, data })
            })
            .collect()
    }

    /// AUTH attempts so far, in order (only [`start_oauth`](Self::start_oauth) servers offer AUTH).
    pub fn auth_log(&self) -> anyhow::Result<Vec<AuthAttempt>> {
        let text = match std::fs::read_to_string(self.dir().join("auth.log")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("cannot read auth.log"),
        };
        text.lines().map(|l| serde_json::from_str(l).with_context(|| format!("bad auth.log line {l:?}"))).collect()
    }

    /// The handler's output (Python tracebacks), for debugging a failing test.
    pub fn log_text(&self) -> String {
        read_lossy(&self.dir().join("stderr"))
    }
}

impl Drop for PySmtp {
    fn drop(&mut self) {
        self.child.stop();
    }
}
