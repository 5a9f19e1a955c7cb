//! The response tokenizer: fed bytes, it returns one token and how many bytes it took, or
//! says it needs more. It does no I/O and keeps no state (as Stalwart's
//! `imap-proto/src/receiver.rs`, which answers "need more data" instead of reading): the
//! reader in `read.rs` owns the buffer and the socket, and the response parser in
//! `response.rs` asks for tokens in the mode the grammar is in.
//!
//! IMAP's lexical rules depend on where one is (RFC 3501 §9): `[` ends an atom in `BODY[]`
//! but belongs to the mailbox name `[Gmail]/Sent`; after `OK` the rest of the line is free
//! text in which `{5}` or a lone `"` mean nothing. Hence [`Mode`].
//!
//! A literal's announcement `{N}` (or `{N+}`) is a token; its N bytes are not: the reader
//! copies them straight into their own buffer (a message body goes from the socket into the
//! `Vec` that is stored, once).

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token<'a> {
    /// An atom: a keyword, number, `NIL`, flag (`\Seen`, `\*`), or a mailbox name in
    /// [`Mode::Astring`].
    Atom(&'a [u8]),
    /// A quoted string, its escapes undone.
    Quoted(Cow<'a, [u8]>),
    /// `{N}` or `{N+}` and the line end after it: N bytes of data follow.
    Literal(u64),
    LParen,
    RParen,
    LBracket,
    RBracket,
    /// The end of a response line (CR LF; a bare LF is taken as one too).
    Crlf,
    /// [`Mode::Text`] and [`Mode::CodeText`]: the bytes up to the end of the line (or `]`).
    Text(&'a [u8]),
}

/// How to read the next token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Response names, items, numbers: an atom also ends at `[` and `]` (`BODY[]`,
    /// `[UIDNEXT 5]`).
    Item,
    /// A flag or keyword: `[` belongs to it (an atom may hold `[`, never `]`).
    Flag,
    /// A mailbox name or another astring: `[` and `]` belong to it, and raw 8-bit bytes are
    /// taken as they come (the LIST reader decides whether the name is usable).
    Astring,
    /// Free text to the end of the line, after one leading space (resp-text).
    Text,
    /// Free text up to `]` (the argument of a response code we do not know).
    CodeText,
}

/// What `lex` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lexed<'a> {
    /// A token and the number of bytes it took (leading spaces included).
    Token(Token<'a>, usize),
    /// The bytes end before the token does: feed more.
    Incomplete,
}

/// Bytes that cannot begin or continue any token here: the server's answer is illegal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LexError(pub String);

/// A literal announcement longer than this many digits is refused: no size fits in it.
const MAX_LITERAL_DIGITS: usize = 19;

/// The next token of `buf` in `mode`.
pub fn lex(buf: &[u8], mode: Mode) -> Result<Lexed<'_>, LexError> {
    match mode {
        Mode::Text => return Ok(text(buf)),
        Mode::CodeText => return code_text(buf),
        _ => {}
    }
    let skip = buf.iter().take_while(|&&b| b == b' ').count();
    let rest = &buf[skip..];
    let Some(&first) = rest.first() else { return Ok(Lexed::Incomplete) };
    let single = |t| Ok(Lexed::Token(t, skip + 1));
    match first {
        b'(' => single(Token::LParen),
        b')' => single(Token::RParen),
        b'[' if mode == Mode::Item => single(Token::LBracket),
        b']' if mode != Mode::Astring => single(Token::RBracket),
        b'\n' => single(Token::Crlf),
        b'\r' => match rest.get(1) {
            None => Ok(Lexed::Incomplete),
            Some(b'\n') => Ok(Lexed::Token(Token::Crlf, skip + 2)),
            Some(_) => Err(LexError("a CR not followed by LF".into())),
        },
        b'"' => quoted(rest).map(|l| shift(l, skip)),
        b'{' => literal(rest).map(|l| shift(l, skip)),
        _ => atom(rest, mode).map(|l| shift(l, skip)),
    }
}

fn shift(l: Lexed<'_>, by: usize) -> Lexed<'_> {
    match l {
        Lexed::Token(t, n) => Lexed::Token(t, n + by),
        Lexed::Incomplete => Lexed::Incomplete,
    }
}

fn atom_char(b: u8, mode: Mode) -> bool {
    match b {
        b'(' | b')' | b'{' | b'"' | b' ' => false,
        b'[' => mode != Mode::Item,
        b']' => mode == Mode::Astring,
        0x80.. => mode == Mode::Astring,
        _ => b > 0x20 && b != 0x7f,
    }
}

fn atom(buf: &[u8], mode: Mode) -> Result<Lexed<'_>, LexError> {
    let n = buf.iter().take_while(|&&b| atom_char(b, mode)).count();
    if n == buf.len() {
        // The atom may go on in bytes not yet read.
        return Ok(Lexed::Incomplete);
    }
    if n == 0 {
        let b = buf[0];
        return Err(LexError(if b >= 0x80 {
            format!("an 8-bit byte (0x{b:02x}) outside a string")
        } else {
            format!("an unexpected byte 0x{b:02x} ({:?})", b as char)
        }));
    }
    Ok(Lexed::Token(Token::Atom(&buf[..n]), n))
}

/// `"…"` with `\\` and `\"` (RFC 3501 §4.3). CR, LF and NUL cannot be in one; 8-bit bytes are
/// kept (UTF8=ACCEPT allows them, RFC 6855, and a body of text is never interpreted here).
fn quoted(buf: &[u8]) -> Result<Lexed<'_>, LexError> {
    let mut owned: Option<Vec<u8>> = None;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else { return Ok(Lexed::Incomplete) };
        match b {
            b'"' => {
                let t = match owned {
                    Some(v) => Cow::Owned(v),
                    None => Cow::Borrowed(&buf[1..i]),
                };
                return Ok(Lexed::Token(Token::Quoted(t), i + 1));
            }
            b'\\' => {
                let Some(&next) = buf.get(i + 1) else { return Ok(Lexed::Incomplete) };
                if next != b'"' && next != b'\\' {
                    return Err(LexError(format!("an invalid escape \\{} in a quoted string", next as char)));
                }
                owned.get_or_insert_with(|| buf[1..i].to_vec()).push(next);
                i += 2;
            }
            b'\r' | b'\n' | 0 => {
                let what = match b {
                    b'\r' => "CR",
                    b'\n' => "LF",
                    _ => "NUL",
                };
                return Err(LexError(format!("a {what} inside a quoted string")));
            }
            _ => {
                if let Some(v) = owned.as_mut() {
                    v.push(b);
                }
                i += 1;
            }
        }
    }
}

/// `{N}` or `{N+}` and its line end.
fn literal(buf: &[u8]) -> Result<Lexed<'_>, LexError> {
    let digits = buf[1..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > MAX_LITERAL_DIGITS {
        return Err(LexError("a literal size of more than 19 digits".into()));
    }
    let mut i = 1 + digits;
    if digits == 0 {
        return match buf.get(i) {
            None => Ok(Lexed::Incomplete),
            Some(_) => Err(LexError("a literal without a size".into())),
        };
    }
    if buf.get(i) == Some(&b'+') {
        i += 1;
    }
    match buf.get(i) {
        None => return Ok(Lexed::Incomplete),
        Some(b'}') => i += 1,
        Some(b) => return Err(LexError(format!("an unexpected byte 0x{b:02x} in a literal's size"))),
    }
    let end = match (buf.get(i), buf.get(i + 1)) {
        (None, _) | (Some(b'\r'), None) => return Ok(Lexed::Incomplete),
        (Some(b'\r'), Some(b'\n')) => i + 2,
        (Some(b'\n'), _) => i + 1,
        _ => return Err(LexError("a literal's size not followed by the end of the line".into())),
    };
    // At most 19 digits: fits in u64.
    let n = std::str::from_utf8(&buf[1..1 + digits]).ok().and_then(|s| s.parse().ok());
    let n = n.ok_or_else(|| LexError("a literal size that is not a number".into()))?;
    Ok(Lexed::Token(Token::Literal(n), end))
}

/// The rest of the line (without its line end, which stays for the next token), after at
/// most one space. Empty text is legal here: servers send `a1 OK` with nothing after it.
fn text(buf: &[u8]) -> Lexed<'_> {
    let skip = usize::from(buf.first() == Some(&b' '));
    match buf[skip..].iter().position(|&b| b == b'\n') {
        None => Lexed::Incomplete,
        Some(lf) => {
            let end = if lf > 0 && buf[skip + lf - 1] == b'\r' { lf - 1 } else { lf };
            Lexed::Token(Token::Text(&buf[skip..skip + end]), skip + end)
        }
    }
}

/// Bytes up to `]` (not taken), after at most one space.
fn code_text(buf: &[u8]) -> Result<Lexed<'_>, LexError> {
    let skip = usize::from(buf.first() == Some(&b' '));
    match buf[skip..].iter().position(|&b| b == b']' || b == b'\n' || b == b'\r') {
        None => Ok(Lexed::Incomplete),
        Some(i) if buf[skip + i] == b']' => Ok(Lexed::Token(Token::Text(&buf[skip..skip + i]), skip + i)),
        Some(_) => Err(LexError("a response code without its closing ]".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(t: Token<'_>, n: usize) -> Result<Lexed<'_>, LexError> {
        Ok(Lexed::Token(t, n))
    }

    #[test]
    fn one_token_per_case() {
        use Token::*;
        let q = |s: &'static [u8]| Quoted(Cow::Borrowed(s));
        type Case<'a> = (&'a str, &'a [u8], Mode, Result<Lexed<'a>, LexError>);
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("atom", b"FETCH (", Mode::Item, tok(Atom(b"FETCH"), 5)),
            ("leading spaces are taken", b"  42 ", Mode::Item, tok(Atom(b"42"), 4)),
            ("atom at the end may go on", b"FETC", Mode::Item, Ok(Lexed::Incomplete)),
            ("nothing yet", b"", Mode::Item, Ok(Lexed::Incomplete)),
            ("only spaces yet", b"   ", Mode::Item, Ok(Lexed::Incomplete)),
            ("flag", b"\\Seen)", Mode::Flag, tok(Atom(b"\\Seen"), 5)),
            ("any flag", b"\\*)", Mode::Flag, tok(Atom(b"\\*"), 2)),
            ("keyword ending in uid", b"$MyUID ", Mode::Flag, tok(Atom(b"$MyUID"), 6)),
            ("a keyword may hold [", b"a[1 ", Mode::Flag, tok(Atom(b"a[1"), 3)),
            ("item ends at [", b"BODY[]", Mode::Item, tok(Atom(b"BODY"), 4)),
            ("bracket", b"[]", Mode::Item, tok(LBracket, 1)),
            ("closing bracket", b"]", Mode::Item, tok(RBracket, 1)),
            ("origin", b"<0> ", Mode::Item, tok(Atom(b"<0>"), 3)),
            ("set with a star", b"1:* ", Mode::Item, tok(Atom(b"1:*"), 3)),
            ("parens", b"(x", Mode::Item, tok(LParen, 1)),
            ("close paren", b")\r\n", Mode::Item, tok(RParen, 1)),
            ("crlf", b"\r\n* ", Mode::Item, tok(Crlf, 2)),
            ("bare lf", b"\n", Mode::Item, tok(Crlf, 1)),
            ("cr at the end", b"\r", Mode::Item, Ok(Lexed::Incomplete)),
            ("bare cr", b"\rx", Mode::Item, Err(LexError("a CR not followed by LF".into()))),
            ("mailbox with brackets", b"[Gmail]/Sent\r\n", Mode::Astring, tok(Atom(b"[Gmail]/Sent"), 12)),
            ("raw 8-bit name", b"Entw\xc3\xbcrfe\r\n", Mode::Astring, tok(Atom(b"Entw\xc3\xbcrfe"), 9)),
            ("8-bit outside a string", b"\xc3\xbc ", Mode::Item, Err(LexError("an 8-bit byte (0xc3) outside a string".into()))),
            ("control byte", b"\x01 ", Mode::Item, Err(LexError("an unexpected byte 0x01 ('\\u{1}')".into()))),
            ("quoted", b"\"a b\" ", Mode::Item, tok(q(b"a b"), 5)),
            ("quoted empty", b"\"\"", Mode::Astring, tok(q(b""), 2)),
            ("quoted escapes", b"\"a\\\"q\\\\b\"", Mode::Astring, tok(Quoted(Cow::Owned(b"a\"q\\b".to_vec())), 9)),
            ("quoted brackets and braces mean nothing", b"\"x{5}]\"", Mode::Item, tok(q(b"x{5}]"), 7)),
            ("quoted not closed yet", b"\"abc", Mode::Item, Ok(Lexed::Incomplete)),
            ("quoted escape split", b"\"a\\", Mode::Item, Ok(Lexed::Incomplete)),
            ("quoted 8-bit", b"\"\xc3\xa9\"", Mode::Astring, tok(q(b"\xc3\xa9"), 4)),
            ("quoted with CR", b"\"a\rb\"", Mode::Astring, Err(LexError("a CR inside a quoted string".into()))),
            ("quoted with NUL", b"\"a\0b\"", Mode::Astring, Err(LexError("a NUL inside a quoted string".into()))),
            ("quoted with LF", b"\"a\nb\"", Mode::Astring, Err(LexError("a LF inside a quoted string".into()))),
            ("quoted bad escape", b"\"a\\n\"", Mode::Astring, Err(LexError("an invalid escape \\n in a quoted string".into()))),
            ("literal", b"{12}\r\nHello", Mode::Item, tok(Literal(12), 6)),
            ("literal plus", b"{3+}\r\n", Mode::Astring, tok(Literal(3), 6)),
            ("literal with bare lf", b"{3}\nabc", Mode::Item, tok(Literal(3), 4)),
            ("literal zero", b"{0}\r\n", Mode::Item, tok(Literal(0), 5)),
            ("literal not ended", b"{12}\r", Mode::Item, Ok(Lexed::Incomplete)),
            ("literal size not ended", b"{12", Mode::Item, Ok(Lexed::Incomplete)),
            ("literal without size", b"{}\r\n", Mode::Item, Err(LexError("a literal without a size".into()))),
            ("literal with letters", b"{1x}\r\n", Mode::Item, Err(LexError("an unexpected byte 0x78 in a literal's size".into()))),
            ("literal not at the line end", b"{3} abc", Mode::Item, Err(LexError("a literal's size not followed by the end of the line".into()))),
            ("literal too long", b"{99999999999999999999}\r\n", Mode::Item, Err(LexError("a literal size of more than 19 digits".into()))),
            ("literal largest", b"{9999999999999999999}\r\n", Mode::Item, tok(Literal(9_999_999_999_999_999_999), 23)),
            ("text", b" Fetch completed (0.001 + 0.000 secs).\r\n", Mode::Text, tok(Text(b"Fetch completed (0.001 + 0.000 secs)."), 38)),
            ("text keeps what looks like syntax", b" try {5}\r\n", Mode::Text, tok(Text(b"try {5}"), 8)),
            ("text with a lone quote", b" it\"s\n", Mode::Text, tok(Text(b"it\"s"), 5)),
            ("empty text", b"\r\n", Mode::Text, tok(Text(b""), 0)),
            ("text not ended", b" abc", Mode::Text, Ok(Lexed::Incomplete)),
            ("code text", b" 1 2 3] rest", Mode::CodeText, tok(Text(b"1 2 3"), 6)),
            ("code text not closed", b" 1 2\r\n", Mode::CodeText, Err(LexError("a response code without its closing ]".into()))),
        ];
        for (name, input, mode, want) in cases {
            assert_eq!(&lex(input, *mode), want, "{name}");
        }
    }

    /// A token is the same whichever prefix of the stream first holds all of it.
    #[test]
    fn a_token_does_not_depend_on_how_much_was_read() {
        let stream: &[u8] = b"* 1 FETCH (FLAGS (\\Seen $MyUID) UID 1 BODY[] {5}\r\nhello)\r\n";
        let mut pos = 0;
        let mut whole = Vec::new();
        while pos < stream.len() {
            let Lexed::Token(t, n) = lex(&stream[pos..], Mode::Flag).unwrap() else { panic!("complete stream") };
            // every shorter prefix is incomplete or yields this very token
            for cut in pos..pos + n {
                match lex(&stream[pos..cut], Mode::Flag).unwrap() {
                    Lexed::Incomplete => {}
                    Lexed::Token(t2, n2) => assert_eq!((t2, n2), (t.clone(), n), "cut at {cut}"),
                }
            }
            whole.push(t.clone());
            pos += n;
            if let Token::Literal(len) = t {
                pos += len as usize;
            }
        }
        assert_eq!(whole.len(), 16, "{whole:?}");
    }
}
