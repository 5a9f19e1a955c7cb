//! The wire reference: the least an IMAP client can do to download a mailbox. Plain TCP,
//! LOGIN, then per folder `SELECT` and one `UID FETCH 1:* (UID FLAGS BODY.PEEK[])`, reading
//! every literal and throwing it away. Runs as its own process (`bench raw-fetch …`) so its
//! time and peak RSS are measured like the other tools'.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// `bench raw-fetch PORT LOGIN PASSWORD FOLDER…` (folder names already modified UTF-7).
/// Prints `messages bytes` on stdout.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let [port, login, password, folders @ ..] = args else {
        anyhow::bail!("usage: bench raw-fetch PORT LOGIN PASSWORD FOLDER...");
    };
    let stream = TcpStream::connect(("127.0.0.1", port.parse::<u16>()?))?;
    stream.set_nodelay(true)?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::with_capacity(1 << 18, stream);
    let mut c = Conn { r: &mut r, line: Vec::with_capacity(4096), messages: 0, bytes: 0 };
    c.read_line()?; // greeting
    let mut tag = 0;
    let mut cmd = |c: &mut Conn, text: String| -> anyhow::Result<()> {
        tag += 1;
        let t = format!("r{tag}");
        w.write_all(format!("{t} {text}\r\n").as_bytes())?;
        c.until_tagged(&t)
    };
    cmd(&mut c, format!("LOGIN {} {}", quote(login), quote(password)))?;
    for f in folders {
        cmd(&mut c, format!("SELECT {}", quote(f)))?;
        cmd(&mut c, "UID FETCH 1:* (UID FLAGS BODY.PEEK[])".into())?;
    }
    cmd(&mut c, "LOGOUT".into())?;
    println!("{} {}", c.messages, c.bytes);
    Ok(())
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

struct Conn<'a> {
    r: &'a mut BufReader<TcpStream>,
    line: Vec<u8>,
    messages: u64,
    bytes: u64,
}

impl Conn<'_> {
    fn read_line(&mut self) -> anyhow::Result<()> {
        self.line.clear();
        if self.r.read_until(b'\n', &mut self.line)? == 0 {
            anyhow::bail!("server closed the connection");
        }
        Ok(())
    }

    /// Reads responses up to the tagged one, skipping literals (`{N}` at a line end, RFC 3501
    /// §4.3); errors unless it is OK.
    fn until_tagged(&mut self, tag: &str) -> anyhow::Result<()> {
        loop {
            self.read_line()?;
            if self.line.starts_with(b"* ") && self.line.windows(7).any(|w| w == b" FETCH ") {
                self.messages += 1;
            }
            // A line may hold several literals: after each, the response continues on.
            while let Some(n) = literal_len(&self.line) {
                let copied = std::io::copy(&mut (&mut *self.r).take(n), &mut std::io::sink())?;
                if copied != n {
                    anyhow::bail!("connection closed inside a literal");
                }
                self.bytes += n;
                self.read_line()?;
            }
            if self.line.starts_with(tag.as_bytes()) && self.line.get(tag.len()) == Some(&b' ') {
                let rest = String::from_utf8_lossy(&self.line[tag.len() + 1..]).trim().to_owned();
                if rest.starts_with("OK") {
                    return Ok(());
                }
                anyhow::bail!("{tag}: server answered {rest}");
            }
        }
    }
}

/// `N` when the line ends with `{N}\r\n` (or `{N+}`).
fn literal_len(line: &[u8]) -> Option<u64> {
    let l = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n"))?;
    let l = l.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let digits = l[open + 1..].strip_suffix(b"+").unwrap_or(&l[open + 1..]);
    std::str::from_utf8(digits).ok()?.parse().ok()
}
