//! A minimal line-level IMAP client for bulk loading, where the `imap` crate would wait for a
//! round trip per message.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::bail;

use crate::HOST;

/// An IMAP quoted string (RFC 3501 §4.3).
pub(crate) fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A minimal line-level IMAP connection for bulk work the `imap` crate would do one round trip
/// at a time.
pub(crate) struct RawImap {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    tag: u32,
}

impl RawImap {
    pub(crate) fn connect(port: u16) -> anyhow::Result<RawImap> {
        let stream = TcpStream::connect((HOST, port))?;
        stream.set_read_timeout(Some(Duration::from_secs(300)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut greeting = String::new();
        reader.read_line(&mut greeting)?;
        if !greeting.starts_with("* OK") {
            bail!("unexpected IMAP greeting {greeting:?}");
        }
        Ok(RawImap { stream, reader, tag: 0 })
    }

    pub(crate) fn command(&mut self, cmd: &str) -> anyhow::Result<()> {
        self.command_bytes(cmd.as_bytes())
    }

    /// Sends one tagged command (CRLF added) and reads up to its tagged reply; `Err` unless OK.
    pub(crate) fn command_bytes(&mut self, cmd: &[u8]) -> anyhow::Result<()> {
        self.tag += 1;
        let tag = format!("p{}", self.tag);
        self.stream.write_all(format!("{tag} ").as_bytes())?;
        self.stream.write_all(cmd)?;
        self.stream.write_all(b"\r\n")?;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("IMAP server closed the connection");
            }
            if let Some(rest) = line.strip_prefix(&tag) {
                let rest = rest.trim();
                if rest.starts_with("OK") {
                    return Ok(());
                }
                bail!("IMAP server answered {rest:?}");
            }
        }
    }
}
