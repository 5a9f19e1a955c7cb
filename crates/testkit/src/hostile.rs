//! A hostile message corpus (issue 11, item 6), built in code so every run sees the same bytes:
//! broken MIME, 8-bit and NUL bytes in headers, unknown charsets, 10,000 parts, deep nesting,
//! a 50 MB message, missing headers, bare LF line ends, very long lines, an empty message.
//!
//! Also what a test of it needs without trusting the `imap` crate's buffering with a 50 MB
//! literal: an APPEND that reports each message's own answer (a server may refuse an empty
//! message or NUL bytes), a raw `UID FETCH … BODY.PEEK[]`, and SHA-256 (no crypto crate is a
//! dependency of the workspace; FIPS 180-4, checked against its test vectors below).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::HOST;
use crate::rawimap::quote;

/// Size of the large message: 50 MiB.
pub const LARGE_SIZE: usize = 50 << 20;

/// One message of the corpus: a short name saying what is hostile about it, and its bytes.
#[derive(Debug, Clone)]
pub struct Hostile {
    pub name: &'static str,
    pub raw: Vec<u8>,
}

/// A small deterministic generator (xorshift64*), so the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `n` bytes of base64-looking text in 76-character CRLF lines (what a real attachment looks
/// like on the wire), from `seed`.
fn base64_lines(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::with_capacity(n + 2);
    while out.len() < n {
        let mut word = rng.next();
        for _ in 0..10 {
            out.push(B64[(word & 63) as usize]);
            word >>= 6;
            if out.len() % 78 == 76 {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.truncate(n);
    out
}

fn msg(name: &'static str, raw: impl Into<Vec<u8>>) -> Hostile {
    Hostile { name, raw: raw.into() }
}

/// A message of exactly `size` bytes (≥ 1 KiB): a normal header and one base64 attachment.
pub fn large_message(size: usize) -> Vec<u8> {
    let mut m = b"From: Big <big@hostile.test>\r\nTo: alice@backproc.test\r\nSubject: a large message\r\n\
Date: Mon, 2 Mar 2026 10:00:00 +0000\r\nMessage-ID: <large@hostile.test>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"big\"\r\n\r\n--big\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
--big\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=big.bin\r\n\
Content-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    let tail = b"\r\n--big--\r\n";
    assert!(size >= m.len() + tail.len() + 64, "large_message: size {size} too small");
    let fill = size - m.len() - tail.len();
    m.extend_from_slice(&base64_lines(0x50_4d42, fill));
    m.extend_from_slice(tail);
    debug_assert_eq!(m.len(), size);
    m
}

/// Every hostile message but the large one (see [`corpus`]).
pub fn small_corpus() -> Vec<Hostile> {
    let mut v = Vec::new();
    let hdr = "From: Mallory <m@hostile.test>\r\nTo: alice@backproc.test\r\nDate: Mon, 2 Mar 2026 10:00:00 +0000\r\n";

    // --- broken MIME boundaries
    v.push(msg(
        "unterminated boundary",
        format!(
            "{hdr}Subject: unterminated\r\nMessage-ID: <unterminated@hostile.test>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"open\"\r\n\r\n--open\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n\
--open\r\nContent-Type: text/plain\r\n\r\nthe closing delimiter never comes\r\n"
        ),
    ));
    v.push(msg(
        "nested multipart with the same boundary",
        format!(
            "{hdr}Subject: same boundary\r\nMessage-ID: <same-boundary@hostile.test>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\ninner\r\n--b--\r\n--b\r\nContent-Disposition: attachment; filename=x\r\n\r\nx\r\n\
--b--\r\n--b--\r\n"
        ),
    ));
    v.push(msg(
        "boundary inside the header block",
        format!(
            "{hdr}Subject: --hb-- in the subject\r\nX-Trick: --hb\r\n--hb\r\nMessage-ID: <hb@hostile.test>\r\n\
Content-Type: multipart/mixed; boundary=\"hb\"\r\n--hb--\r\n\r\n--hb\r\n\r\nbody\r\n--hb--\r\n"
        ),
    ));
    v.push(msg(
        "empty and over-long boundary parameters",
        format!(
            "{hdr}Subject: odd boundaries\r\nMessage-ID: <odd-boundary@hostile.test>\r\n\
Content-Type: multipart/mixed; boundary=\"\"; boundary={long}\r\n\r\n--\r\n\r\nempty\r\n--{long}\r\n\r\nlong\r\n--{long}--\r\n",
            long = "L".repeat(300)
        ),
    ));

    // --- 8-bit, NUL and control bytes in headers
    let eight = b"From: J\xfcrgen \xff\xfe <j@hostile.test>\r\nTo: \x80\x81@hostile.test\r\nSubject: caf\xe9 \xc3\x28 \xed\xa0\x80\r\n\
Message-ID: <8bit-\xe9@hostile.test>\r\nDate: Mon, 2 Mar 2026 10:00:00 +0000\r\nX-Raw: \xf0\x9f\x98\x80 \xf8\x88\x80\x80\x80\r\n\r\n\
body \xe9\xff\r\n"
        .to_vec();
    v.push(msg("8-bit bytes in headers", eight));
    v.push(msg(
        "NUL bytes in headers",
        b"From: a\0b@hostile.test\r\nSubject: nul\0here\r\nX-Nul: \0\0\0\r\nMessage-ID: <nul\0@hostile.test>\r\n\r\nbody\0\r\n".to_vec(),
    ));
    v.push(msg(
        "terminal escapes and control characters in headers",
        format!(
            "{hdr}Subject: \x1b[31mred\x1b[0m \x07\x08\x0b\x0c end\r\nMessage-ID: <ctl@hostile.test>\r\n\r\nbody\r\n"
        ),
    ));

    // --- unknown charsets and bad RFC 2047 words
    v.push(msg(
        "unknown charsets",
        format!(
            "{hdr}Subject: =?x-unknown?Q?caf=E9?= =?utf-8?B?####?= =?utf-8?Q?unterminated\r\n\
Message-ID: <charset@hostile.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=x-unknown\r\n\
Content-Transfer-Encoding: x-bogus\r\n\r\nbody in an unknown charset\r\n"
        ),
    ));
    v.push(msg(
        "malformed encoded words everywhere",
        "From: =?utf-8?B?=?= <=?x?q?x?=@hostile.test>\r\nTo: =??Q?empty-charset?= <t@hostile.test>, =?utf-8*de?b??=\r\n\
Subject: =?utf-8?Q?=FF=FE=00?= =?utf-16?B?2D3eAA?= =?iso-2022-jp?B?GyRCJDMbKEI=?= =?utf-8?X?x?=\r\n\
Message-ID: <=?utf-8?B?bWlk?=@hostile.test>\r\nDate: =?utf-8?B?TW9u?=\r\n\r\nbody\r\n",
    ));
    v.push(msg(
        "impossible dates",
        "From: d@hostile.test\r\nSubject: dates\r\nDate: Mon, 1 Jan 99999999999 25:61:61 +9999\r\nDate: -1\r\n\
Message-ID: <dates@hostile.test>\r\n\r\nbody\r\n",
    ));

    // --- 10,000 parts, deep nesting
    let mut parts = format!(
        "{hdr}Subject: ten thousand parts\r\nMessage-ID: <10000@hostile.test>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"p\"\r\n\r\n"
    );
    for i in 0..10_000 {
        parts.push_str(&format!(
            "--p\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=p{i}\r\n\r\npart {i}\r\n"
        ));
    }
    parts.push_str("--p--\r\n");
    v.push(msg("10,000 parts", parts));
    let depth = 500;
    let mut nested =
        format!("{hdr}Subject: nested {depth} deep\r\nMessage-ID: <nested@hostile.test>\r\nMIME-Version: 1.0\r\n");
    for i in 0..depth {
        nested.push_str(&format!("Content-Type: multipart/mixed; boundary=\"n{i}\"\r\n\r\n--n{i}\r\n"));
    }
    nested.push_str("Content-Type: text/plain\r\n\r\nthe bottom\r\n");
    for i in (0..depth).rev() {
        nested.push_str(&format!("--n{i}--\r\n"));
    }
    v.push(msg("multipart nested 500 deep", nested));

    // --- missing headers
    v.push(msg("no header at all", "just text without any header field\r\nand a second line\r\n"));
    v.push(msg("empty header block", "\r\nthe body starts at once\r\n"));
    v.push(msg("no From, Date, Message-ID or Subject", "X-Only: this one\r\n\r\nbody\r\n"));
    v.push(msg("header block without a body", "Subject: no body\r\nMessage-ID: <nobody@hostile.test>\r\n"));
    v.push(msg("a single byte", "x"));
    v.push(msg("only CRLF", "\r\n"));
    v.push(msg("empty message", ""));

    // --- line ends
    v.push(msg(
        "bare LF line ends",
        "From: lf@hostile.test\nSubject: bare LF\nMessage-ID: <lf@hostile.test>\nContent-Type: multipart/mixed; boundary=x\n\n\
--x\nContent-Type: text/plain\n\nline one\nline two\n--x--\n",
    ));
    v.push(msg(
        "bare CR line ends",
        "From: cr@hostile.test\rSubject: bare CR\rMessage-ID: <cr@hostile.test>\r\rbody\r",
    ));
    v.push(msg(
        "mixed line ends, no final newline",
        "From: mix@hostile.test\r\nSubject: mixed\nMessage-ID: <mix@hostile.test>\r\r\n\nbody\r\nmore\nend",
    ));

    // --- long lines, many fields
    v.push(msg(
        "a 1 MB unfolded header line",
        format!(
            "{hdr}Subject: long\r\nMessage-ID: <longline@hostile.test>\r\nX-Long: {}\r\n\r\nbody\r\n",
            "a".repeat(1 << 20)
        ),
    ));
    v.push(msg(
        "a 200 KB multibyte Subject",
        format!(
            "{hdr}Message-ID: <longsubject@hostile.test>\r\nSubject: {}\r\n\r\nbody\r\n",
            "é日😀".repeat(200_000 / 9)
        ),
    ));
    v.push(msg(
        "a 2 MB body line",
        format!(
            "{hdr}Subject: long body line\r\nMessage-ID: <longbody@hostile.test>\r\n\r\n{}\r\n",
            "b".repeat(2 << 20)
        ),
    ));
    let mut many = String::from(hdr);
    for i in 0..10_000 {
        many.push_str(&format!(
            "Received: from hop{i}.hostile.test by hop{}.hostile.test; Mon, 2 Mar 2026 10:00:00 +0000\r\n",
            i + 1
        ));
    }
    many.push_str("Subject: 10,000 header fields\r\nMessage-ID: <manyfields@hostile.test>\r\n\r\nbody\r\n");
    v.push(msg("10,000 header fields", many));
    v.push(msg(
        "header field names without colon, with spaces, folded first",
        " folded before any field\r\nNoColonHere\r\nSubject : spaced\r\n: empty name\r\nX-\u{7f}: del\r\n\r\nbody\r\n",
    ));

    // --- bytes that look like the protocol around them
    v.push(msg(
        "IMAP responses inside the body",
        format!(
            "{hdr}Subject: imap in body {{5}}\r\nMessage-ID: <imapbody@hostile.test>\r\n\r\n)\r\nr1 OK UID FETCH completed\r\n\
* 99 FETCH (UID 99 FLAGS (\\Seen) BODY[] {{3}}\r\nabc)\r\nA1 DELETE INBOX\r\n* BYE\r\n{{99999999}}\r\n"
        ),
    ));
    v.push(msg(
        "SMTP dot lines in the body",
        format!(
            "{hdr}Subject: dots\r\nMessage-ID: <dots@hostile.test>\r\n\r\n.\r\n..\r\n.\r\nMAIL FROM:<e@x>\r\n.\r\n"
        ),
    ));
    // Two different messages sharing one Message-ID: both must be kept.
    for body in ["first", "second"] {
        v.push(msg(
            "duplicate Message-ID",
            format!("{hdr}Subject: duplicate id\r\nMessage-ID: <dup@hostile.test>\r\n\r\n{body}\r\n"),
        ));
    }
    v.push(msg(
        "Unicode BOM and a UTF-8 header without encoding",
        format!("\u{feff}{hdr}Subject: Привет 日本語 😀\r\nMessage-ID: <bom@hostile.test>\r\n\r\nbody\r\n"),
    ));
    v
}

/// The whole corpus: [`small_corpus`] and a [`LARGE_SIZE`] message.
pub fn corpus() -> Vec<Hostile> {
    let mut v = small_corpus();
    v.push(msg("50 MB message", large_message(LARGE_SIZE)));
    v
}

/// SHA-256 (FIPS 180-4) of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let compress = |h: &mut [u32; 8], block: &[u8]| {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = *h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    };
    let mut blocks = data.chunks_exact(64);
    for b in &mut blocks {
        compress(&mut h, b);
    }
    let rest = blocks.remainder();
    let mut tail = [0u8; 128];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let n = if rest.len() < 56 { 64 } else { 128 };
    tail[n - 8..n].copy_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for b in tail[..n].chunks_exact(64) {
        compress(&mut h, b);
    }
    let mut out = [0u8; 32];
    for (o, x) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// Lower-case hex of a digest.
pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A logged-in raw IMAP connection that reads literals of any size straight into memory.
pub struct RawSession {
    w: TcpStream,
    r: BufReader<TcpStream>,
    tag: u32,
}

/// The outcome of one tagged command: untagged lines and literals in order, and the tagged line.
struct Reply {
    /// (text of the line, with literals replaced by `{N}`, literal bytes)
    untagged: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
    status: String,
}

impl RawSession {
    pub fn login(port: u16, login: &str, password: &str) -> anyhow::Result<RawSession> {
        let w = TcpStream::connect((HOST, port))?;
        w.set_read_timeout(Some(Duration::from_secs(300)))?;
        let mut r = BufReader::with_capacity(1 << 20, w.try_clone()?);
        let mut greeting = String::new();
        r.read_line(&mut greeting)?;
        if !greeting.starts_with("* OK") {
            bail!("unexpected IMAP greeting {greeting:?}");
        }
        let mut s = RawSession { w, r, tag: 0 };
        s.ok(format!("LOGIN {} {}", quote(login), quote(password)).as_bytes(), None)?;
        Ok(s)
    }

    /// Sends `cmd` (and `literal` after a `{N+}` the caller put at the end of `cmd`).
    fn send(&mut self, cmd: &[u8], literal: Option<&[u8]>) -> anyhow::Result<Reply> {
        self.tag += 1;
        let tag = format!("h{}", self.tag);
        let mut out = format!("{tag} ").into_bytes();
        out.extend_from_slice(cmd);
        out.extend_from_slice(b"\r\n");
        if let Some(l) = literal {
            out.extend_from_slice(l);
            out.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&out)?;
        let mut untagged = Vec::new();
        loop {
            let mut line = Vec::new();
            let mut lits = Vec::new();
            loop {
                let mut part = Vec::new();
                if self.r.read_until(b'\n', &mut part)? == 0 {
                    bail!("IMAP server closed the connection");
                }
                let size = literal_size(&part);
                line.extend_from_slice(&part);
                let Some(n) = size else { break };
                let mut bytes = vec![0u8; n];
                self.r.read_exact(&mut bytes)?;
                lits.push(bytes);
            }
            if let Some(rest) = line.strip_prefix(format!("{tag} ").as_bytes()) {
                let status = String::from_utf8_lossy(rest).trim().to_owned();
                return Ok(Reply { untagged, status });
            }
            untagged.push((line, lits));
        }
    }

    fn ok(&mut self, cmd: &[u8], literal: Option<&[u8]>) -> anyhow::Result<Reply> {
        let r = self.send(cmd, literal)?;
        if !r.status.starts_with("OK") {
            bail!("IMAP server answered {:?} to {}", r.status, String::from_utf8_lossy(&cmd[..cmd.len().min(60)]));
        }
        Ok(r)
    }

    /// Creates `mailbox` (raw, already modified UTF-7) and returns the server's answer:
    /// `Ok(())` or `Err` with its text. The name is sent as a literal, so any byte reaches the
    /// server as it is.
    pub fn create(&mut self, mailbox: &[u8]) -> anyhow::Result<()> {
        let r = self.send(format!("CREATE {{{}+}}", mailbox.len()).as_bytes(), Some(mailbox))?;
        // CREATE's literal is the last argument: the CRLF after it ends the command.
        if !r.status.starts_with("OK") {
            bail!("{}", r.status);
        }
        Ok(())
    }

    /// APPENDs one message to `mailbox` (modified UTF-7). `Ok(uid)` from APPENDUID, or `Err`
    /// with the server's refusal.
    pub fn append(&mut self, mailbox: &str, raw: &[u8]) -> anyhow::Result<u32> {
        let r = self.send(format!("APPEND {} {{{}+}}", quote(mailbox), raw.len()).as_bytes(), Some(raw))?;
        if !r.status.starts_with("OK") {
            bail!("{}", r.status);
        }
        // OK [APPENDUID <uidvalidity> <uid>] (RFC 4315)
        let uid = r
            .status
            .split_once("APPENDUID ")
            .and_then(|(_, rest)| rest.split([' ', ']']).nth(1))
            .and_then(|u| u.parse().ok())
            .with_context(|| format!("no APPENDUID in {:?}", r.status))?;
        Ok(uid)
    }

    /// EXAMINE `mailbox`, then `UID FETCH 1:* (UID BODY.PEEK[])`: (uid, raw bytes), by UID.
    pub fn fetch_all(&mut self, mailbox: &str) -> anyhow::Result<Vec<(u32, Vec<u8>)>> {
        self.ok(format!("EXAMINE {}", quote(mailbox)).as_bytes(), None)?;
        let r = self.ok(b"UID FETCH 1:* (UID BODY.PEEK[])", None)?;
        let mut out = Vec::new();
        for (line, mut lits) in r.untagged {
            let text = String::from_utf8_lossy(&line);
            if !text.contains(" FETCH (") {
                continue;
            }
            let uid = text
                .split_once("UID ")
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|u| u.parse().ok())
                .with_context(|| format!("no UID in {text:?}"))?;
            let body = if text.contains("BODY[] NIL") { Vec::new() } else { lits.pop().unwrap_or_default() };
            out.push((uid, body));
        }
        out.sort_by_key(|m| m.0);
        Ok(out)
    }

    /// Sends LOGOUT; errors are ignored (the server may close first).
    pub fn logout(mut self) {
        let _ = self.send(b"LOGOUT", None);
    }
}

/// `{123}` / `{123+}` at the end of a line.
fn literal_size(line: &[u8]) -> Option<usize> {
    let l = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n"))?;
    let l = l.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let digits = l[open + 1..].strip_suffix(b"+").unwrap_or(&l[open + 1..]);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_fips_180_vectors() {
        assert_eq!(hex(&sha256(b"")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(hex(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(
            hex(&sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            hex(&sha256(&vec![b'a'; 1_000_000])),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn corpus_is_deterministic_and_large_message_has_its_size() {
        let a: Vec<_> = small_corpus().into_iter().map(|h| sha256(&h.raw)).collect();
        let b: Vec<_> = small_corpus().into_iter().map(|h| sha256(&h.raw)).collect();
        assert_eq!(a, b);
        assert_eq!(large_message(1 << 20).len(), 1 << 20);
        assert!(small_corpus().iter().any(|h| h.raw.is_empty()));
    }
}
