//! An aiosmtpd (Debian `python3-aiosmtpd`) SMTP server with per-recipient answers, set at run
//! time through a JSON rules file the handler rereads on every command.

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

/// A running aiosmtpd server on 127.0.0.1.
pub struct PySmtp {
    child: ChildGuard,
    dir: tempfile::TempDir,
    port: u16,
}

const HANDLER: &str = r#"
import base64, json, os, sys, threading
from aiosmtpd.controller import Controller

DIR, PORT = sys.argv[1], int(sys.argv[2])
RULES = os.path.join(DIR, "rules.json")
MSGS = os.path.join(DIR, "msgs")

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

controller = Controller(Handler(), hostname="127.0.0.1", port=PORT, ready_timeout=10)
controller.start()
print("READY", flush=True)
threading.Event().wait()
"#;

impl PySmtp {
    /// Starts on a free port (retrying on a clash); accepts everything until `set_rules`.
    pub fn start() -> anyhow::Result<PySmtp> {
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
            cmd.arg(dir.path().join("handler.py")).arg(dir.path()).arg(port.to_string());
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
