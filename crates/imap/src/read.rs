//! The read side of a connection: a buffer over the transport that feeds the tokenizer
//! (`lex.rs`) and reads literals straight into their own allocation.
//!
//! Every limit on what a server can make us hold lives here: a token (a line of free text
//! included) is at most [`Limits::token`] bytes, a literal at most what its reader allows,
//! and the buffer never grows past the token limit. Bytes read past one answer stay in the
//! buffer for the next one, so pipelined answers are read in order without loss.

use std::io::{self, Read};

use crate::lex::{LexError, Lexed, Mode, Token, lex};

/// What went wrong reading a response.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection failed or closed, or a read timed out.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server sent more than a limit allows; the limit is named.
    #[error("{0}")]
    Limit(String),
    /// The server's answer is not IMAP.
    #[error("{0}")]
    Syntax(String),
}

impl From<LexError> for ReadError {
    fn from(e: LexError) -> ReadError {
        ReadError::Syntax(e.0)
    }
}

/// Bounds on what one token may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest token (an atom, a quoted string, a line of text).
    pub token: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { token: 64 * 1024 }
    }
}

/// How much a literal's buffer grows ahead of the bytes that have arrived: a hostile
/// `{4000000000}` followed by nothing costs this, not 4 GB (found by fuzz/imap_fetch).
const PREALLOC_MAX: usize = 1 << 20;

/// Bytes asked of the transport at once.
const READ_CHUNK: usize = 64 * 1024;

pub struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    limits: Limits,
    /// Every byte taken from the buffer or read into a literal, since the start.
    consumed: u64,
    /// The last token was a line end: a response that failed there needs no skipping.
    last_crlf: bool,
    /// The answer being read may not go past this many consumed bytes: (end, limit, what).
    budget: Option<(u64, u64, &'static str)>,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R, limits: Limits) -> Reader<R> {
        Reader { inner, buf: vec![0; READ_CHUNK], pos: 0, end: 0, limits, consumed: 0, last_crlf: false, budget: None }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Bytes taken so far (for the per-command budgets of the session).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Bounds what the answer being read may cost: no byte past `end` (a value of
    /// `consumed`) for an answer allowed `limit` bytes in all (`what` names the command in the
    /// error), or no bound.
    pub fn set_budget(&mut self, b: Option<(u64, u64, &'static str)>) {
        self.budget = b;
    }

    /// The source and the bytes read from it that no one has taken yet.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        let rest = self.buf[self.pos..self.end].to_vec();
        (self.inner, rest)
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    fn charge(&mut self, n: u64) -> Result<(), ReadError> {
        self.consumed += n;
        match self.budget {
            Some((end, limit, what)) if self.consumed > end => {
                Err(ReadError::Limit(format!("more than {limit} bytes in the answer to {what}")))
            }
            _ => Ok(()),
        }
    }

    /// Whether the last token taken was a line end.
    pub fn last_was_crlf(&self) -> bool {
        self.last_crlf
    }

    /// Whether bytes have arrived that no one has read yet.
    pub fn has_buffered(&self) -> bool {
        self.pos < self.end
    }

    /// Reads more from the transport, keeping what is unread. An end of stream is an error:
    /// a server never closes in the middle of an answer we wait for.
    fn fill(&mut self) -> Result<(), ReadError> {
        let unread = self.end - self.pos;
        if unread >= self.limits.token {
            return Err(ReadError::Limit(format!(
                "a token or line longer than {} bytes (the limit of one token)",
                self.limits.token
            )));
        }
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.pos = 0;
            self.end = unread;
        }
        if self.buf.len() - self.end < READ_CHUNK / 2 {
            let want = (self.buf.len() * 2).min(self.limits.token + READ_CHUNK);
            self.buf.resize(want.max(self.end + READ_CHUNK / 2), 0);
        }
        let n = read_some(&mut self.inner, &mut self.buf[self.end..])?;
        self.end += n;
        Ok(())
    }

    /// The next token in `mode`, reading as needed.
    pub fn token(&mut self, mode: Mode) -> Result<Token<'_>, ReadError> {
        // Found in two steps (its length, then the token itself) so that the borrow of the
        // buffer the token holds starts after the last refill.
        let len = loop {
            match lex(&self.buf[self.pos..self.end], mode)? {
                Lexed::Token(_, n) => break n,
                Lexed::Incomplete => self.fill()?,
            }
        };
        let start = self.pos;
        self.pos += len;
        self.charge(len as u64)?;
        match lex(&self.buf[start..self.end], mode)? {
            Lexed::Token(t, _) => {
                self.last_crlf = t == Token::Crlf;
                Ok(t)
            }
            Lexed::Incomplete => unreachable!("the same bytes gave a token a moment ago"),
        }
    }

    /// The first byte of the next token (spaces skipped), without taking it.
    pub fn peek(&mut self) -> Result<u8, ReadError> {
        loop {
            while self.pos < self.end && self.buf[self.pos] == b' ' {
                self.pos += 1;
                self.charge(1)?;
            }
            if self.pos < self.end {
                return Ok(self.buf[self.pos]);
            }
            self.fill()?;
        }
    }

    /// Exactly `n` bytes of literal data, refused before any is read when `n > limit`.
    /// `what` names the literal for the error.
    pub fn literal(&mut self, n: u64, limit: usize, what: &str) -> Result<Vec<u8>, ReadError> {
        if n > limit as u64 {
            return Err(ReadError::Limit(format!("a literal of {n} bytes for {what} exceeds the limit of {limit}")));
        }
        self.charge(n)?;
        let n = n as usize;
        let mut out = Vec::with_capacity(n.min(PREALLOC_MAX));
        let from_buf = n.min(self.end - self.pos);
        out.extend_from_slice(&self.buf[self.pos..self.pos + from_buf]);
        self.pos += from_buf;
        let mut left = n - from_buf;
        while left > 0 {
            let start = out.len();
            let step = left.min(start.max(PREALLOC_MAX));
            out.resize(start + step, 0);
            let mut at = start;
            while at < start + step {
                at += read_some(&mut self.inner, &mut out[at..start + step])?;
            }
            left -= step;
        }
        Ok(out)
    }

    /// Reads and drops `n` bytes of literal data (one we did not ask for), at most `limit`.
    pub fn skip_literal(&mut self, n: u64, limit: u64, what: &str) -> Result<(), ReadError> {
        if n > limit {
            return Err(ReadError::Limit(format!("a literal of {n} bytes for {what} exceeds the limit of {limit}")));
        }
        self.charge(n)?;
        let mut left = n;
        while left > 0 {
            if self.pos == self.end {
                self.pos = 0;
                self.end = read_some(&mut self.inner, &mut self.buf[..])?;
            }
            let k = left.min((self.end - self.pos) as u64) as usize;
            self.pos += k;
            left -= k as u64;
        }
        Ok(())
    }

    /// Skips to the end of the current line (after a response that could not be parsed), and
    /// over a literal the line announces at its end: the next response starts after it.
    /// Bounded like any token: at most `limit` bytes.
    pub fn skip_line(&mut self, limit: u64) -> Result<(), ReadError> {
        self.skip_line_keeping(limit, 0).map(|_| ())
    }

    /// `skip_line`, returning the first `keep` bytes skipped (what could not be parsed, to name
    /// it in a warning).
    pub fn skip_line_keeping(&mut self, limit: u64, keep: usize) -> Result<Vec<u8>, ReadError> {
        let mut kept = Vec::new();
        let mut skipped = 0u64;
        // The last bytes of the line so far, to see a `{N}` that ends it.
        let mut tail: Vec<u8> = Vec::new();
        loop {
            if self.pos == self.end {
                self.pos = 0;
                self.end = read_some(&mut self.inner, &mut self.buf[..])?;
            }
            let avail = &self.buf[self.pos..self.end];
            let found = avail.iter().position(|&b| b == b'\n');
            let take = found.map_or(avail.len(), |i| i + 1);
            if kept.len() < keep {
                kept.extend_from_slice(&avail[..take.min(keep - kept.len())]);
            }
            tail.extend_from_slice(&avail[..take]);
            if tail.len() > 32 {
                tail.drain(..tail.len() - 32);
            }
            self.pos += take;
            self.charge(take as u64)?;
            skipped += take as u64;
            if skipped > limit {
                return Err(ReadError::Limit(format!("an unreadable response longer than {limit} bytes")));
            }
            if found.is_some() {
                match announced_literal(&tail) {
                    Some(n) => {
                        self.skip_literal(n, limit.saturating_sub(skipped), "an unreadable response")?;
                        skipped += n;
                        tail.clear();
                    }
                    None => return Ok(kept),
                }
            }
        }
    }
}

/// `{N}` or `{N+}` at the very end of a line.
fn announced_literal(line: &[u8]) -> Option<u64> {
    let l = line.strip_suffix(b"\n")?;
    let l = l.strip_suffix(b"\r").unwrap_or(l);
    let l = l.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let digits = l[open + 1..].strip_suffix(b"+").unwrap_or(&l[open + 1..]);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// One read that returns at least one byte; the end of the stream is an error.
fn read_some<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, ReadError> {
    loop {
        match r.read(buf) {
            Ok(0) => {
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testio::Fake;

    fn reader(bytes: &[u8], chunk: usize) -> Reader<Fake> {
        Reader::new(Fake::new(bytes, chunk), Limits { token: 64 })
    }

    #[test]
    fn tokens_and_literals_whatever_the_chunking() {
        for chunk in [1, 2, 5, 64, 4096] {
            let mut r = reader(b"* 1 FETCH (BODY[] {5}\r\nhe\r\no UID 7)\r\nnext", chunk);
            let mut atoms = Vec::new();
            loop {
                match r.token(Mode::Item).unwrap() {
                    Token::Literal(n) => atoms.push(r.literal(n, 10, "a body").unwrap()),
                    Token::Crlf => break,
                    Token::Atom(a) => atoms.push(a.to_vec()),
                    _ => {}
                }
            }
            assert_eq!(atoms, [&b"*"[..], b"1", b"FETCH", b"BODY", b"he\r\no", b"UID", b"7"], "chunk {chunk}");
            assert_eq!(r.peek().unwrap(), b'n');
            assert_eq!(r.consumed(), 37, "chunk {chunk}");
        }
    }

    #[test]
    fn limits_are_named_and_cost_nothing_ahead() {
        // a token longer than the limit
        let long = [b"* OK ".to_vec(), vec![b'x'; 200], b"\r\n".to_vec()].concat();
        let mut r = reader(&long, 7);
        r.token(Mode::Item).unwrap();
        r.token(Mode::Item).unwrap();
        let e = r.token(Mode::Text).unwrap_err();
        assert!(matches!(&e, ReadError::Limit(m) if m.contains("longer than 64 bytes")), "{e}");
        assert!(r.buf.len() <= 64 + READ_CHUNK, "the buffer stays bounded: {}", r.buf.len());
        // a literal larger than its limit is refused before a byte of it is read
        let mut r = reader(b"{1000}\r\n", 64);
        let Token::Literal(n) = r.token(Mode::Item).unwrap() else { panic!() };
        let e = r.literal(n, 999, "a mailbox name").unwrap_err();
        assert_eq!(e.to_string(), "a literal of 1000 bytes for a mailbox name exceeds the limit of 999");
        // an announced literal that never comes costs its pre-allocation, not its size
        let mut r = reader(b"abc", 2);
        let e = r.literal(64 << 20, usize::MAX, "a body").unwrap_err();
        assert!(matches!(e, ReadError::Io(ref io) if io.kind() == io::ErrorKind::UnexpectedEof), "{e}");
        // the end of the stream inside a token
        let mut r = reader(b"* OK", 2);
        r.token(Mode::Item).unwrap();
        assert!(matches!(r.token(Mode::Item), Err(ReadError::Io(_))));
    }

    #[test]
    fn literals_larger_than_the_preallocation_are_exact() {
        let body: Vec<u8> = (0..3 * PREALLOC_MAX + 17).map(|i| (i % 251) as u8).collect();
        let mut stream = format!("{{{}}}\r\n", body.len()).into_bytes();
        stream.extend_from_slice(&body);
        for chunk in [4096, 1 << 20] {
            let mut r = Reader::new(Fake::new(&stream, chunk), Limits::default());
            let Token::Literal(n) = r.token(Mode::Item).unwrap() else { panic!() };
            assert!(r.literal(n, usize::MAX, "a body").unwrap() == body, "chunk {chunk}");
        }
    }

    #[test]
    fn skip_line_steps_over_literals_the_line_announces() {
        for chunk in [1, 3, 4096] {
            let mut r = reader(b"\"bad\rname\" x {4}\r\nab\r\n tail\r\n* 2 EXISTS\r\n", chunk);
            r.skip_line(1000).unwrap();
            assert_eq!(r.token(Mode::Item).unwrap(), Token::Atom(b"*"), "chunk {chunk}");
        }
        for chunk in [1, 3, 4096] {
            let mut r = reader(b"\"bad\0name\" x\r\n* 2 EXISTS\r\n", chunk);
            assert_eq!(r.skip_line_keeping(1000, 9).unwrap(), b"\"bad\0name", "chunk {chunk}");
            assert_eq!(r.token(Mode::Item).unwrap(), Token::Atom(b"*"), "chunk {chunk}");
        }
        let mut r = reader(&[vec![b'x'; 5000], b"\r\n".to_vec()].concat(), 100);
        assert!(matches!(r.skip_line(1000), Err(ReadError::Limit(_))));
        assert_eq!(announced_literal(b"a {12}\r\n"), Some(12));
        assert_eq!(announced_literal(b"a {12+}\n"), Some(12));
        assert_eq!(announced_literal(b"a {x}\r\n"), None);
    }
}
