//! Postfix's `smtp-sink` as a test SMTP server: accepts and dumps every transaction, or refuses
//! whole commands with 4xx/5xx (options fixed per run; `restart` switches them).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, anyhow};

use crate::proc::ChildGuard;
use crate::{START_TIMEOUT, find_program, is_root, read_lossy};

/// Marker written (with `-S`) before each dumped transaction, to split the dump file.
const MARK: &[u8] = b"\x01\x02BACKPROC-SINK-MESSAGE\x02\x01\n";

/// How `smtp-sink` answers. Command names as smtp-sink knows them, case-insensitive:
/// "connect", "helo", "ehlo", "mail", "rcpt", "data", "." (or "dot"), "rset", "quit".
#[derive(Debug, Default, Clone)]
pub struct SinkOptions {
    /// Commands answered with 450 (smtp-sink `-r`).
    pub soft_reject: Vec<String>,
    /// Commands answered with 500 (smtp-sink `-f`).
    pub hard_reject: Vec<String>,
    /// Commands after which the connection is dropped without a reply (smtp-sink `-q`).
    pub disconnect: Vec<String>,
    /// listen(2) backlog; 0 means 100.
    pub backlog: u32,
}

/// A running `smtp-sink` on 127.0.0.1.
pub struct SmtpSink {
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    port: u16,
}

impl SmtpSink {
    /// Starts on a free port (retrying on a clash).
    pub fn start(opts: SinkOptions) -> anyhow::Result<SmtpSink> {
        let dir = tempfile::Builder::new().prefix("backproc-sink-").tempdir()?;
        let mut sink = SmtpSink { child: None, dir, port: 0 };
        // smtp-sink drops privileges to nobody as root, and then must still write its dump.
        if is_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(sink.dir(), std::fs::Permissions::from_mode(0o777))?;
        }
        let mut last = anyhow!("smtp-sink did not start");
        for _attempt in 0..5 {
            sink.port = crate::free_port();
            match sink.spawn(&opts) {
                Ok(()) => return Ok(sink),
                Err(e) => {
                    let clash = read_lossy(&sink.dir().join("stderr")).contains("in use");
                    last = e;
                    if !clash {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// Stops the server and starts it again with `opts`, on the same port and dump file.
    pub fn restart(&mut self, opts: SinkOptions) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
        // The old socket may linger briefly; smtp-sink sets SO_REUSEADDR, but retry anyway.
        let mut last = anyhow!("smtp-sink did not restart");
        for _ in 0..20 {
            match self.spawn(&opts) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(last)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every transaction received so far, in order, as smtp-sink dumps it: its `X-Client-Addr`,
    /// `X-Helo-Args`, `X-Mail-Args`, `X-Rcpt-Args` (one per RCPT) and `Received` headers, then
    /// the message as received, with LF line ends.
    pub fn messages(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let dump = self.dump_path();
        let bytes = match std::fs::read(&dump) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dump.display())),
        };
        Ok(split_dump(&bytes))
    }

    /// smtp-sink's output (stderr), for debugging a failing test.
    pub fn log_text(&self) -> String {
        read_lossy(&self.dir().join("stderr"))
    }

    fn dump_path(&self) -> PathBuf {
        self.dir().join("dump")
    }

    fn spawn(&mut self, opts: &SinkOptions) -> anyhow::Result<()> {
        let bin = find_program("smtp-sink", &["/usr/sbin", "/usr/local/sbin"])
            .ok_or_else(|| anyhow!("smtp-sink not found: install postfix"))?;
        let mut cmd = Command::new(bin);
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        for (flag, list) in [("-r", &opts.soft_reject), ("-f", &opts.hard_reject), ("-q", &opts.disconnect)] {
            if !list.is_empty() {
                let names: Vec<&str> =
                    list.iter().map(|c| if c.eq_ignore_ascii_case("dot") { "." } else { c }).collect();
                cmd.arg(flag).arg(names.join(","));
            }
        }
        // -S takes C escapes: \001\002... then a newline.
        cmd.arg("-S").arg(r"\001\002BACKPROC-SINK-MESSAGE\002\001\n");
        cmd.arg("-D").arg(self.dump_path());
        let backlog = if opts.backlog == 0 { 100 } else { opts.backlog };
        cmd.arg(format!("127.0.0.1:{}", self.port)).arg(backlog.to_string());
        let mut child = ChildGuard::spawn("smtp-sink", &mut cmd, &self.dir().join("stderr"))?;
        crate::wait_ready(self.port, START_TIMEOUT, true, || child.check_alive())
            .with_context(|| format!("smtp-sink failed to start: {}", self.log_text()))?;
        self.child = Some(child);
        Ok(())
    }
}

/// Splits a multi-message dump at the markers; drops the blank line smtp-sink appends.
fn split_dump(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut starts: Vec<usize> =
        bytes.windows(MARK.len()).enumerate().filter(|(_, w)| *w == MARK).map(|(i, _)| i).collect();
    starts.push(bytes.len());
    starts
        .windows(2)
        .map(|w| {
            let mut m = bytes[w[0] + MARK.len()..w[1]].to_vec();
            if m.ends_with(b"\n\n") {
                m.pop();
            }
            m
        })
        .collect()
}
