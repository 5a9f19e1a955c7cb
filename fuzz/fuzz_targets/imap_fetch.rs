//! The response reader (the tokenizer, `backproc_imap::read::Reader`, under
//! `backproc_imap::response::read_response`) reading a `UID FETCH` answer from a fake server
//! that answers with fuzzed bytes.
//!
//! Input: byte 0 = mode (bit 0) and read size (bits 1-7), byte 1 = literal limit, the rest
//! either the server's bytes (raw mode) or a recipe for a well-formed answer (built mode).
//! Properties: never panics; memory stays bounded by the bytes actually received, whatever
//! `{N}` the server announces; every body returned is a literal of exactly its announced size,
//! in stream order; a well-formed answer yields exactly the messages that were sent.
#![no_main]

use backproc_imap::read::{Limits, Reader};
use backproc_imap::response::{FetchData, ParseLimits, Response, Untagged, read_response};
use libfuzzer_sys::fuzz_target;

mod common;

#[global_allocator]
static A: common::Counting = common::Counting;

/// One message as the reader gave it.
struct FetchedBody {
    uid: u32,
    raw: Vec<u8>,
    flags: backproc_imap::Flags,
    internal_date: Option<i64>,
}

/// Reads responses up to the tagged answer of `r1`, keeping every FETCH that carries a UID
/// and a body; the first error ends it (a FETCH that cannot be read is an error, never a
/// skipped message).
fn read_fetch(conn: common::Server<'_>, max_literal: usize) -> (Result<(), String>, Vec<FetchedBody>) {
    let mut r = Reader::new(conn, Limits::default());
    let lim = ParseLimits { body: max_literal, ..ParseLimits::default() };
    let mut got = Vec::new();
    loop {
        match read_response(&mut r, &lim) {
            Ok(Response::Tagged(t)) if t.tag == b"r1" => return (Ok(()), got),
            Ok(Response::Untagged(Untagged::Fetch(f))) => {
                let FetchData { uid, body, flags, internal_date, .. } = *f;
                if let (Some(uid), Some(Some(raw))) = (uid, body) {
                    got.push(FetchedBody { uid, raw, flags: flags.unwrap_or_default(), internal_date });
                }
            }
            Ok(Response::Untagged(Untagged::Malformed(m))) if m.kind == "FETCH" => return (Err(m.error), got),
            Ok(_) => {}
            Err(e) => return (Err(e.to_string()), got),
        }
    }
}

fn run(reply: &[u8], chunk: usize, max_literal: usize) -> (Result<(), String>, Vec<FetchedBody>) {
    let conn = common::Server { reply, chunk };
    // Legitimate use: the 64 KiB read buffer, a pre-allocation of up to 1 MiB for a literal,
    // and a few growing copies of what was received. A huge `{N}` not followed by N bytes
    // must not reserve N.
    common::arm((3 << 20) + 16 * reply.len());
    let out = read_fetch(conn, max_literal);
    common::disarm();
    out
}

/// The size announced by the `{N}` or `{N+}` that ends `line` (CRLF or LF), if any.
fn announced(line: &[u8]) -> Option<u64> {
    let l = line.strip_suffix(b"\n")?;
    let l = l.strip_suffix(b"\r").unwrap_or(l).strip_suffix(b"}")?;
    let l = l.strip_suffix(b"+").unwrap_or(l);
    let digits = &l[l.iter().rposition(|&b| !b.is_ascii_digit()).map_or(0, |i| i + 1)..];
    if digits.is_empty() || digits.len() > 12 || !l[..l.len() - digits.len()].ends_with(b"{") {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Every body is a literal in `stream`, right after a `{N}` line with N = its length, and the
/// bodies appear in stream order.
fn bodies_are_announced_literals(stream: &[u8], got: &[FetchedBody]) {
    let mut from = 0;
    for b in got {
        let n = b.raw.len();
        let at = (from..=stream.len().saturating_sub(n))
            .find(|&p| stream[p..p + n] == b.raw[..] && announced(&stream[..p]) == Some(n as u64));
        let at = at.unwrap_or_else(|| panic!("uid {}: a {n}-byte body that no {{{n}}} announced", b.uid));
        from = at + n;
    }
}

/// Builds a well-formed answer from the recipe: per message 4 bytes of UID, a byte of flags
/// and layout, a length byte and that many body bytes.
fn build(recipe: &[u8]) -> (Vec<u8>, Vec<(u32, [bool; 5], bool, Vec<u8>)>) {
    const FLAGS: [&str; 5] = ["\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted"];
    let (mut out, mut sent, mut r) = (Vec::new(), Vec::new(), recipe);
    let mut seq = 1;
    while r.len() >= 6 {
        let uid = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
        let (bits, len) = (r[4], usize::from(r[5]));
        r = &r[6..];
        let body = r[..len.min(r.len())].to_vec();
        r = &r[body.len()..];
        let flags: [bool; 5] = std::array::from_fn(|i| bits & (1 << i) != 0);
        let names: Vec<&str> = (0..5).filter(|&i| flags[i]).map(|i| FLAGS[i]).collect();
        let date = bits & 0x20 != 0;
        if bits & 0x80 != 0 {
            out.extend_from_slice(format!("* {} EXISTS\r\n", seq + 1).as_bytes()); // noise
        }
        let mut head = format!("* {seq} FETCH (FLAGS ({})", names.join(" "));
        if date {
            head.push_str(" INTERNALDATE \"17-Jul-1996 02:44:25 -0700\"");
        }
        let plus = if bits & 0x40 != 0 { "+" } else { "" };
        if bits & 0x10 != 0 {
            // UID after the literal
            out.extend_from_slice(format!("{head} BODY[] {{{}{plus}}}\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
            out.extend_from_slice(format!(" UID {uid})\r\n").as_bytes());
        } else {
            out.extend_from_slice(format!("{head} UID {uid} BODY[] {{{}{plus}}}\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
            out.extend_from_slice(b")\r\n");
        }
        sent.push((uid, flags, date, body));
        seq += 1;
    }
    out.extend_from_slice(b"r1 OK Fetch completed.\r\n");
    (out, sent)
}

fuzz_target!(|data: &[u8]| {
    let [mode, limit, rest @ ..] = data else { return };
    let chunk = match mode >> 1 {
        0 => 1 << 16,
        k => usize::from(k),
    };
    let max_literal = match limit % 3 {
        0 => 4 << 30, // EMAIL_BG_MAX_MESSAGE_SIZE's largest allowed value
        1 => 1 << 20,
        _ => usize::from(*limit),
    };
    if mode & 1 == 0 {
        let (_, got) = run(rest, chunk, max_literal);
        assert!(got.iter().all(|b| b.raw.len() <= max_literal));
        bodies_are_announced_literals(rest, &got);
        return;
    }
    let (reply, sent) = build(rest);
    let (r, got) = run(&reply, chunk, max_literal);
    if let Some((_, _, _, big)) = sent.iter().find(|m| m.3.len() > max_literal) {
        let e = r.expect_err("a literal over the limit was accepted");
        assert!(e.contains("exceeds the limit"), "{e} ({} bytes)", big.len());
        return;
    }
    assert_eq!(r, Ok(()));
    assert_eq!(got.len(), sent.len());
    for (g, (uid, flags, date, body)) in got.iter().zip(&sent) {
        assert_eq!(g.uid, *uid);
        assert_eq!(g.raw, *body);
        let f = &g.flags;
        assert_eq!([f.seen, f.answered, f.flagged, f.draft, f.deleted], *flags, "uid {uid}");
        assert_eq!(g.internal_date, date.then_some(837596665));
    }
});
