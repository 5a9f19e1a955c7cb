//! A streaming reader for the one hot path: `UID FETCH … (UID FLAGS INTERNALDATE BODY.PEEK[])`.
//!
//! Why not the imap crate here: it collects a whole response in one buffer and re-runs the
//! imap-proto parser from the start of a FETCH item each time a line of its literal arrives,
//! which cost a third of the CPU of an initial sync (bench/README.md). This reader reads a
//! line, and when it ends with a literal `{N}` reads exactly N bytes straight into the
//! message's own buffer: one copy, no re-parsing, memory bounded by the batch.
//!
//! It is used on the session's transport between two commands of the imap crate, with its own
//! tag prefix: at the tagged completion nothing else is in flight (RFC 3501 §2.2.2, the server
//! sends nothing more until the next command), so no byte is taken from the imap crate.

use std::io::{self, Read, Write};

use crate::plan::Flags;

/// One message of a FETCH response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBody {
    pub uid: u32,
    pub flags: Flags,
    pub internal_date: Option<i64>,
    pub raw: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("connection lost during UID FETCH: {0}")]
    Io(#[from] io::Error),
    #[error("the server refused UID FETCH: {0}")]
    Refused(String),
    #[error("invalid FETCH response: {0}")]
    Invalid(String),
}

/// Literal larger than this is refused (a broken or hostile server cannot make us allocate
/// more than the engine's own message limit allows; the engine passes its limit).
const LINE_MAX: usize = 1 << 20;

/// Most a literal's buffer grows ahead of the bytes that have arrived: messages up to this
/// size are read into one exact allocation, larger ones grow as their bytes come in.
const PREALLOC_MAX: usize = 1 << 20;

/// Buffered lines and literals off the transport (also used by `crate::status`).
pub(crate) struct Reader<'a, T: Read> {
    inner: &'a mut T,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

impl<'a, T: Read> Reader<'a, T> {
    pub(crate) fn new(inner: &'a mut T, capacity: usize) -> Reader<'a, T> {
        Reader { inner, buf: vec![0; capacity], pos: 0, len: 0 }
    }

    /// Whether bytes were read past what was consumed (the stream is out of step if so at a
    /// final tagged answer: the server sends nothing after it).
    pub(crate) fn has_unread(&self) -> bool {
        self.pos != self.len
    }

    fn fill(&mut self) -> io::Result<bool> {
        if self.pos < self.len {
            return Ok(true);
        }
        self.pos = 0;
        self.len = self.inner.read(&mut self.buf)?;
        Ok(self.len > 0)
    }

    /// One line, CRLF included.
    pub(crate) fn line(&mut self) -> Result<Vec<u8>, FetchError> {
        let mut out = Vec::new();
        loop {
            if !self.fill()? {
                return Err(FetchError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                )));
            }
            let avail = &self.buf[self.pos..self.len];
            if let Some(i) = avail.iter().position(|&b| b == b'\n') {
                out.extend_from_slice(&avail[..=i]);
                self.pos += i + 1;
                return Ok(out);
            }
            out.extend_from_slice(avail);
            self.pos = self.len;
            if out.len() > LINE_MAX {
                return Err(FetchError::Invalid("response line too long".into()));
            }
        }
    }

    /// Exactly `n` bytes into `out`.
    ///
    /// `n` is what the server announced, not what it sent: the buffer grows at most by
    /// [`PREALLOC_MAX`] or by what has already arrived, whichever is larger, so a hostile
    /// `{4000000000}` followed by nothing costs 1 MiB, not 4 GB (found by fuzz/imap_fetch).
    pub(crate) fn exact(&mut self, n: usize, out: &mut Vec<u8>) -> Result<(), FetchError> {
        out.reserve_exact(n.min(PREALLOC_MAX));
        let from_buf = n.min(self.len - self.pos);
        out.extend_from_slice(&self.buf[self.pos..self.pos + from_buf]);
        self.pos += from_buf;
        let mut left = n - from_buf;
        while left > 0 {
            let start = out.len();
            let step = left.min(start.max(PREALLOC_MAX));
            out.resize(start + step, 0);
            let mut at = start;
            while at < start + step {
                let k = self.inner.read(&mut out[at..])?;
                if k == 0 {
                    return Err(FetchError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a literal",
                    )));
                }
                at += k;
            }
            left -= step;
        }
        Ok(())
    }
}

/// `{123}\r\n` (or `{123+}`) at the end of a line: the literal's size.
pub(crate) fn literal_size(line: &[u8]) -> Option<usize> {
    let l = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n"))?;
    let l = l.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let digits = l[open + 1..].strip_suffix(b"+").unwrap_or(&l[open + 1..]);
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w.eq_ignore_ascii_case(n))
}

fn number_after(text: &[u8], key: &[u8]) -> Option<u32> {
    let i = find(text, key)? + key.len();
    let digits: Vec<u8> = text[i..].iter().copied().take_while(u8::is_ascii_digit).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn flags_of(text: &[u8]) -> Flags {
    let mut f = Flags::default();
    let Some(i) = find(text, b"FLAGS (") else { return f };
    let rest = &text[i + 7..];
    let end = rest.iter().position(|&b| b == b')').unwrap_or(rest.len());
    for word in rest[..end].split(|&b| b == b' ') {
        match word.to_ascii_lowercase().as_slice() {
            b"\\seen" => f.seen = true,
            b"\\answered" => f.answered = true,
            b"\\flagged" => f.flagged = true,
            b"\\draft" => f.draft = true,
            b"\\deleted" => f.deleted = true,
            _ => {}
        }
    }
    f
}

fn internal_date(text: &[u8]) -> Option<i64> {
    let i = find(text, b"INTERNALDATE \"")? + 14;
    let end = text[i..].iter().position(|&b| b == b'"')?;
    let s = std::str::from_utf8(&text[i..i + end]).ok()?.trim();
    chrono::DateTime::parse_from_str(s, "%d-%b-%Y %H:%M:%S %z").ok().map(|d| d.timestamp())
}

/// Sends `tag UID FETCH set (UID FLAGS INTERNALDATE BODY.PEEK[])` on `conn` and streams the
/// answer, calling `each` per message. Messages larger than `max_literal` are an error.
pub fn uid_fetch_bodies<T: Read + Write>(
    conn: &mut T,
    tag: &str,
    uid_set: &str,
    max_literal: usize,
    each: impl FnMut(FetchedBody),
) -> Result<(), FetchError> {
    send_uid_fetch(conn, tag, uid_set)?;
    let mut carry = Vec::new();
    read_uid_fetch(conn, &mut carry, tag, max_literal, each)?;
    if !carry.is_empty() {
        // Something arrived after our tagged answer: the stream is out of step.
        return Err(FetchError::Invalid("unexpected data after the FETCH completion".into()));
    }
    Ok(())
}

/// Sends the command of [`uid_fetch_bodies`] only: several may be in flight at once
/// (pipelined, RFC 3501 §5.5), each then read in order with [`read_uid_fetch`].
pub fn send_uid_fetch<T: Write>(conn: &mut T, tag: &str, uid_set: &str) -> io::Result<()> {
    conn.write_all(format!("{tag} UID FETCH {uid_set} (UID FLAGS INTERNALDATE BODY.PEEK[])\r\n").as_bytes())?;
    conn.flush()
}

/// Reads the answer to the FETCH sent with `tag`. `carry` holds bytes read before (past the
/// previous answer) and, on return, the bytes read past this one: the start of the next
/// pipelined answer. When nothing else is in flight the caller must find it empty.
pub fn read_uid_fetch<T: Read>(
    conn: &mut T,
    carry: &mut Vec<u8>,
    tag: &str,
    max_literal: usize,
    mut each: impl FnMut(FetchedBody),
) -> Result<(), FetchError> {
    read_fetch_responses(conn, carry, tag, max_literal, |text, body| {
        // e.g. a flag update pushed by the server, or BODY[] NIL
        if let (Some(uid), Some(raw)) = (number_after(text, b"UID "), body) {
            each(FetchedBody { uid, flags: flags_of(text), internal_date: internal_date(text), raw });
        }
    })
}

/// `tag UID FETCH range (UID RFC822.SIZE)`: the (UID, size) of each message, read on our own
/// path (the imap crate's parser cost ~5 µs a line: 70 ms for a folder of 14,000 new UIDs).
pub fn uid_fetch_sizes<T: Read + Write>(conn: &mut T, tag: &str, range: &str) -> Result<Vec<(u32, u32)>, FetchError> {
    conn.write_all(format!("{tag} UID FETCH {range} (UID RFC822.SIZE)\r\n").as_bytes())?;
    conn.flush()?;
    let mut out = Vec::new();
    let mut carry = Vec::new();
    // No literal is expected; one is read (and dropped) rather than taken for syntax.
    read_fetch_responses(conn, &mut carry, tag, 1 << 20, |text, _| {
        if let (Some(uid), Some(size)) = (number_after(text, b"UID "), number_after(text, b"RFC822.SIZE ")) {
            out.push((uid, size));
        }
    })?;
    if !carry.is_empty() {
        return Err(FetchError::Invalid("unexpected data after the FETCH completion".into()));
    }
    Ok(out)
}

/// Reads responses up to the tagged completion of `tag` (see `read_uid_fetch` for `carry`),
/// calling `each` with every untagged FETCH response's text (lines joined, literals left out)
/// and its `BODY[]` literal if it has one.
fn read_fetch_responses<T: Read>(
    conn: &mut T,
    carry: &mut Vec<u8>,
    tag: &str,
    max_literal: usize,
    mut each: impl FnMut(&[u8], Option<Vec<u8>>),
) -> Result<(), FetchError> {
    const BUF: usize = 64 * 1024;
    let mut buf = vec![0; BUF.max(carry.len())];
    buf[..carry.len()].copy_from_slice(carry);
    let mut r = Reader { inner: conn, buf, pos: 0, len: carry.len() };
    carry.clear();
    let tagged = format!("{tag} ");
    loop {
        let first = r.line()?;
        if first.starts_with(tagged.as_bytes()) {
            let status = String::from_utf8_lossy(&first[tagged.len()..]).trim().to_owned();
            if !status.to_ascii_uppercase().starts_with("OK") {
                return Err(FetchError::Refused(status));
            }
            carry.extend_from_slice(&r.buf[r.pos..r.len]);
            return Ok(());
        }
        if first.starts_with(b"* BYE") {
            return Err(FetchError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                String::from_utf8_lossy(&first).trim().to_owned(),
            )));
        }
        // Gather one response: its text, and the literal that follows `BODY[]`.
        let is_fetch = find(&first, b" FETCH (").is_some() && first.starts_with(b"* ");
        let mut text = Vec::new();
        let mut body = None;
        let mut line = first;
        loop {
            let lit = literal_size(&line);
            text.extend_from_slice(&line);
            let Some(n) = lit else { break };
            if n > max_literal {
                return Err(FetchError::Invalid(format!("a literal of {n} bytes exceeds the limit of {max_literal}")));
            }
            let mut bytes = Vec::new();
            r.exact(n, &mut bytes)?;
            let before = &line[..line.iter().rposition(|&b| b == b'{').unwrap_or(0)];
            if body.is_none() && find(before, b"BODY[]").is_some() {
                body = Some(bytes);
            }
            line = r.line()?;
        }
        if is_fetch {
            each(&text, body);
        }
        // anything else is untagged noise (EXISTS, EXPUNGE, OK [..]): not ours to act on
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    use crate::testio::Fake;

    fn run(reply: &[u8], chunk: usize) -> (Result<(), FetchError>, Vec<FetchedBody>, Vec<u8>) {
        let mut f = Fake { reply: Cursor::new(reply.to_vec()), sent: Vec::new(), chunk };
        let mut got = Vec::new();
        let r = uid_fetch_bodies(&mut f, "r1", "1:3", 1 << 20, |b| got.push(b));
        (r, got, f.sent)
    }

    const TWO: &[u8] = b"* 1 FETCH (UID 7 FLAGS (\\Seen \\Flagged) INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" BODY[] {12}\r\nHello\r\nWorld)\r\n\
* 2 FETCH (FLAGS () BODY[] {5}\r\n{3}\r\n UID 9)\r\n\
r1 OK Fetch completed.\r\n";

    #[test]
    fn reads_messages_in_any_attribute_order_and_any_chunking() {
        for chunk in [1, 2, 7, 64, 1 << 16] {
            let (r, got, sent) = run(TWO, chunk);
            r.unwrap();
            assert_eq!(sent, b"r1 UID FETCH 1:3 (UID FLAGS INTERNALDATE BODY.PEEK[])\r\n");
            assert_eq!(got.len(), 2, "chunk {chunk}");
            assert_eq!(got[0].uid, 7);
            assert_eq!(got[0].raw, b"Hello\r\nWorld");
            assert!(got[0].flags.seen && got[0].flags.flagged && !got[0].flags.deleted);
            assert_eq!(got[0].internal_date, Some(837596665));
            // a literal whose bytes look like a literal marker is data, not syntax
            assert_eq!(got[1].uid, 9);
            assert_eq!(got[1].raw, b"{3}\r\n");
            assert_eq!(got[1].flags, Flags::default());
        }
    }

    #[test]
    fn pipelined_answers_are_read_one_after_the_other_whatever_the_chunking() {
        let second = b"* 3 FETCH (UID 20 BODY[] {4}\r\nnext)\r\nr2 OK done\r\n";
        let reply = [TWO, &second[..]].concat();
        for chunk in [1, 3, 64, 1 << 16] {
            let mut f = Fake { reply: Cursor::new(reply.clone()), sent: Vec::new(), chunk };
            send_uid_fetch(&mut f, "r1", "1:3").unwrap();
            send_uid_fetch(&mut f, "r2", "20").unwrap();
            let (mut one, mut two, mut carry) = (Vec::new(), Vec::new(), Vec::new());
            read_uid_fetch(&mut f, &mut carry, "r1", 1 << 20, |b| one.push(b.uid)).unwrap();
            read_uid_fetch(&mut f, &mut carry, "r2", 1 << 20, |b| two.push(b.raw)).unwrap();
            assert_eq!((one, two), (vec![7, 9], vec![b"next".to_vec()]), "chunk {chunk}");
            assert!(carry.is_empty());
            assert_eq!(f.sent, b"r1 UID FETCH 1:3 (UID FLAGS INTERNALDATE BODY.PEEK[])\r\nr2 UID FETCH 20 (UID FLAGS INTERNALDATE BODY.PEEK[])\r\n");
        }
        // read alone, the first answer followed by more bytes is a stream out of step
        let (r, _, _) = run(&reply, 1 << 16);
        assert!(matches!(r, Err(FetchError::Invalid(_))), "{r:?}");
    }

    #[test]
    fn sizes_are_read_from_fetch_lines_in_any_order() {
        let reply = b"* 1 FETCH (UID 4 RFC822.SIZE 120)\r\n* 3 EXISTS\r\n* 2 FETCH (RFC822.SIZE 7 UID 9)\r\n\
* 3 FETCH (FLAGS (\\Seen))\r\nr1 OK done\r\n";
        for chunk in [1, 5, 1 << 16] {
            let mut f = Fake { reply: Cursor::new(reply.to_vec()), sent: Vec::new(), chunk };
            let got = uid_fetch_sizes(&mut f, "r1", "4:*").unwrap();
            assert_eq!(got, vec![(4, 120), (9, 7)], "chunk {chunk}");
            assert_eq!(f.sent, b"r1 UID FETCH 4:* (UID RFC822.SIZE)\r\n");
        }
        let mut f = Fake { reply: Cursor::new(b"r1 NO [SERVERBUG] oops\r\n".to_vec()), sent: Vec::new(), chunk: 64 };
        assert!(matches!(uid_fetch_sizes(&mut f, "r1", "1:*"), Err(FetchError::Refused(_))));
    }

    #[test]
    fn untagged_noise_and_nil_bodies_are_skipped() {
        let reply = b"* 4 EXISTS\r\n* 3 EXPUNGE\r\n* 5 FETCH (UID 11 BODY[] NIL)\r\n* 6 FETCH (FLAGS (\\Seen))\r\n\
* 7 FETCH (UID 12 BODY[] {2}\r\nok)\r\nr1 OK done\r\n";
        let (r, got, _) = run(reply, 5);
        r.unwrap();
        assert_eq!(got.iter().map(|b| b.uid).collect::<Vec<_>>(), vec![12]);
    }

    #[test]
    fn refusals_and_broken_streams_are_errors_not_panics() {
        let cases: [(&[u8], &str); 6] = [
            (b"r1 NO [SERVERBUG] oops\r\n", "refused"),
            (b"r1 BAD syntax\r\n", "refused"),
            (b"* BYE shutting down\r\n", "connection"),
            (b"* 1 FETCH (UID 1 BODY[] {10}\r\nshort", "connection"),
            (b"* 1 FETCH (UID 1 BODY[] {5}\r\nabcde)\r\n", "connection"),
            (b"* 1 FETCH (UID 1 BODY[] {99999999999}\r\n", "exceeds"),
        ];
        for (reply, want) in cases {
            let (r, _, _) = run(reply, 3);
            let e = r.expect_err(want).to_string().to_lowercase();
            assert!(e.contains(want), "{e}");
        }
    }

    /// fuzz/imap_fetch found this: `{N}` reserved and zeroed N bytes before any arrived, so
    /// one line from a hostile server cost up to EMAIL_BG_MAX_MESSAGE_SIZE (4 GB) of memory.
    #[test]
    fn an_announced_literal_is_not_allocated_before_its_bytes_arrive() {
        let mut conn = Cursor::new(b"abc".to_vec());
        let mut r = Reader { inner: &mut conn, buf: vec![0; 16], pos: 0, len: 0 };
        let mut out = Vec::new();
        let e = r.exact(64 << 20, &mut out).expect_err("only 3 of 64 MiB arrived");
        assert!(e.to_string().contains("inside a literal"), "{e}");
        assert!(out.capacity() <= 2 * PREALLOC_MAX, "{} bytes reserved for 3 received", out.capacity());

        // the same through the whole reader, with the engine's largest message limit
        let mut f =
            Fake { reply: Cursor::new(b"* 1 FETCH (UID 1 BODY[] {999999999}\r\nabc".to_vec()), sent: vec![], chunk: 2 };
        let r = uid_fetch_bodies(&mut f, "r1", "1", 4 << 30, |_| panic!("no message is complete"));
        assert!(r.expect_err("truncated").to_string().contains("connection"));
    }

    /// A literal larger than the pre-allocation arrives whole and exact through the growth steps.
    #[test]
    fn literals_larger_than_the_preallocation_are_exact() {
        let body: Vec<u8> = (0..3 * PREALLOC_MAX + 17).map(|i| (i % 251) as u8).collect();
        let mut reply = format!("* 1 FETCH (UID 5 BODY[] {{{}}}\r\n", body.len()).into_bytes();
        reply.extend_from_slice(&body);
        reply.extend_from_slice(b")\r\nr1 OK done\r\n");
        for chunk in [4096, 1 << 20] {
            let mut f = Fake { reply: Cursor::new(reply.clone()), sent: vec![], chunk };
            let mut got = Vec::new();
            uid_fetch_bodies(&mut f, "r1", "5", 4 << 30, |b| got.push(b)).unwrap();
            assert_eq!(got.len(), 1);
            assert!(got[0].raw == body, "chunk {chunk}: {} bytes back", got[0].raw.len());
        }
    }

    /// The fuzz seeds (fuzz/corpus/imap_fetch: a mode byte, a limit byte, then the server's
    /// bytes) read as raw server answers: no panic, and every body is as long as a `{N}` says.
    #[test]
    fn fuzz_seeds_return_announced_literals() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/imap_fetch");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            let stream = data.get(2..).unwrap_or_default();
            for chunk in [1, 7, 1 << 16] {
                let mut f = Fake { reply: Cursor::new(stream.to_vec()), sent: vec![], chunk };
                let mut got = Vec::new();
                let _ = uid_fetch_bodies(&mut f, "r1", "1:*", 4 << 30, |b| got.push(b));
                for b in &got {
                    let announced = format!("{{{}}}", b.raw.len()).into_bytes();
                    let plus = format!("{{{}+}}", b.raw.len()).into_bytes();
                    assert!(find(stream, &announced).or(find(stream, &plus)).is_some(), "uid {}", b.uid);
                }
            }
            n += 1;
        }
        assert!(n >= 5, "only {n} seeds in {}", dir.display());
    }

    #[test]
    fn literal_sizes() {
        assert_eq!(literal_size(b"BODY[] {12}\r\n"), Some(12));
        assert_eq!(literal_size(b"BODY[] {12+}\r\n"), Some(12));
        assert_eq!(literal_size(b"BODY[] {}\r\n"), None);
        assert_eq!(literal_size(b"BODY[] {x}\r\n"), None);
        assert_eq!(literal_size(b"no literal\r\n"), None);
    }
}
