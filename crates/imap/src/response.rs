//! Typed IMAP responses and their parser, which asks the tokenizer for one token at a time in
//! the mode the grammar is in (RFC 3501 §7 and §9, and the extensions we read: CONDSTORE and
//! QRESYNC RFC 7162, ESEARCH RFC 4731, UIDPLUS RFC 4315, ENABLE RFC 5161, NAMESPACE RFC 2342,
//! LIST-EXTENDED RFC 5258, SPECIAL-USE RFC 6154, response codes RFC 5530, Gmail's X-GM-EXT-1).
//!
//! Items are found at item boundaries, never by searching a line for a word: FETCH items come
//! in any order (Cyrus sends FLAGS before UID), a keyword that ends in "uid" is a keyword, and
//! a string may be quoted or a literal wherever the grammar allows a string.
//!
//! An untagged response that cannot be parsed is skipped to the end of its line and returned
//! as [`Untagged::Malformed`] with what could be read of it (its kind, the mailbox it was
//! about): the caller decides whether that costs one folder (a bad LIST line) or the
//! connection (a FETCH we cannot read is never skipped). A tagged response that cannot be
//! parsed is an error.

use std::io::Read;

use backproc_types::Flags;

use crate::lex::{Mode, Token};
use crate::read::{ReadError, Reader};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Tagged(Tagged),
    Untagged(Untagged),
    /// `+ …`: the server waits for a literal or a SASL response.
    Continue(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
    PreAuth,
    Bye,
}

impl Status {
    fn from_word(w: &[u8]) -> Option<Status> {
        Some(match w.to_ascii_uppercase().as_slice() {
            b"OK" => Status::Ok,
            b"NO" => Status::No,
            b"BAD" => Status::Bad,
            b"PREAUTH" => Status::PreAuth,
            b"BYE" => Status::Bye,
            _ => return None,
        })
    }

    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
            Status::PreAuth => "PREAUTH",
            Status::Bye => "BYE",
        }
    }
}

/// A tagged completion, or the status part of an untagged OK/NO/BAD/BYE/PREAUTH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub tag: Vec<u8>,
    pub status: Status,
    pub code: Option<Code>,
    pub text: String,
}

/// A response code (`[…]` after the status word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    Capability(Vec<String>),
    PermanentFlags(Vec<String>),
    UidValidity(u32),
    UidNext(u32),
    Unseen(u32),
    HighestModseq(u64),
    /// RFC 7162 §3.2: the messages a conditional STORE did not change.
    Modified(UidSet),
    /// RFC 4315: APPENDUID uidvalidity uid-set.
    AppendUid(u32, UidSet),
    /// Any other code (ALERT, READ-ONLY, NOMODSEQ, PRIVACYREQUIRED, LIMIT, …): its name in upper
    /// case and the text after it, if any.
    Other(String, String),
}

impl Code {
    /// The code's name, e.g. `LIMIT`.
    pub fn name(&self) -> &str {
        match self {
            Code::Capability(_) => "CAPABILITY",
            Code::PermanentFlags(_) => "PERMANENTFLAGS",
            Code::UidValidity(_) => "UIDVALIDITY",
            Code::UidNext(_) => "UIDNEXT",
            Code::Unseen(_) => "UNSEEN",
            Code::HighestModseq(_) => "HIGHESTMODSEQ",
            Code::Modified(_) => "MODIFIED",
            Code::AppendUid(..) => "APPENDUID",
            Code::Other(n, _) => n,
        }
    }
}

/// UIDs or sequence numbers as ranges (`1:3,7`), each `(first, last)`, first ≤ last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UidSet(pub Vec<(u32, u32)>);

impl UidSet {
    pub fn contains(&self, n: u32) -> bool {
        self.0.iter().any(|&(a, b)| (a..=b).contains(&n))
    }
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().flat_map(|&(a, b)| a..=b)
    }
    /// How many numbers the set holds (saturating).
    pub fn len(&self) -> u64 {
        self.0.iter().map(|&(a, b)| u64::from(b - a) + 1).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untagged {
    Status(Tagged),
    Capability(Vec<String>),
    Enabled(Vec<String>),
    Flags(Vec<String>),
    /// LIST or LSUB.
    List(ListItem),
    MailboxStatus(MailboxStatus),
    Search {
        uids: Vec<u32>,
        modseq: Option<u64>,
    },
    ESearch(ESearch),
    /// The personal namespaces: (prefix, delimiter).
    Namespace(Vec<(Vec<u8>, Option<String>)>),
    Exists(u32),
    Recent(u32),
    Expunge(u32),
    Fetch(Box<FetchData>),
    Vanished {
        earlier: bool,
        uids: UidSet,
    },
    /// A response we do not use (ID, METADATA…), skipped whole: its name.
    Other(String),
    /// A response that could not be parsed, skipped to the end of its line.
    Malformed(Malformed),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// LIST, STATUS, FETCH…, or "?" when not even the name could be read.
    pub kind: String,
    /// The mailbox the response was about, when it was read before the fault.
    pub mailbox: Option<Vec<u8>>,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListItem {
    /// Name attributes as sent (`\HasNoChildren`, `\Sent`…).
    pub attrs: Vec<String>,
    pub delimiter: Option<String>,
    /// The name's bytes as the server sent them (modified UTF-7, or UTF-8 with UTF8=ACCEPT).
    pub name: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailboxStatus {
    pub name: Vec<u8>,
    pub messages: Option<u32>,
    pub uidnext: Option<u32>,
    pub uidvalidity: Option<u32>,
    pub unseen: Option<u32>,
    pub highest_modseq: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ESearch {
    pub tag: Option<Vec<u8>>,
    pub uid: bool,
    pub all: Option<UidSet>,
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub count: Option<u32>,
    pub modseq: Option<u64>,
}

/// One message of a FETCH response: the items it carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchData {
    pub seq: u32,
    pub uid: Option<u32>,
    pub flags: Option<Flags>,
    pub size: Option<u32>,
    pub internal_date: Option<i64>,
    pub modseq: Option<u64>,
    /// `BODY[]` (or `RFC822`): `Some(None)` when the server said NIL.
    pub body: Option<Option<Vec<u8>>>,
    /// `BODY[HEADER]`, `BODY[HEADER.FIELDS (…)]` or `RFC822.HEADER`.
    pub header: Option<Option<Vec<u8>>>,
    pub gm_msgid: Option<u64>,
}

/// Limits on the literals of one response.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// A message body (`BODY[]`): EMAIL_BG_MAX_MESSAGE_SIZE.
    pub body: usize,
    /// A header block.
    pub header: usize,
    /// Any other literal (a mailbox name, a string we skip).
    pub small: usize,
}

impl Default for ParseLimits {
    fn default() -> ParseLimits {
        ParseLimits { body: 64 << 20, header: 1 << 20, small: 64 * 1024 }
    }
}

/// Reads the next response.
pub fn read_response<R: Read>(r: &mut Reader<R>, lim: &ParseLimits) -> Result<Response, ReadError> {
    let first = match r.token(Mode::Item)? {
        Token::Atom(a) => a.to_vec(),
        t => return Err(ReadError::Syntax(format!("a response that starts with {}", describe(&t)))),
    };
    if first == b"*" {
        return untagged(r, lim).map(Response::Untagged);
    }
    if first[0] == b'+' {
        let mut text = first[1..].to_vec();
        if let Token::Text(t) = r.token(Mode::Text)? {
            if !text.is_empty() && !t.is_empty() {
                text.push(b' ');
            }
            text.extend_from_slice(t);
        }
        crlf(r, "a continuation request")?;
        return Ok(Response::Continue(text));
    }
    let status = match r.token(Mode::Item)? {
        Token::Atom(w) => Status::from_word(w),
        _ => None,
    };
    let status = match status {
        Some(s @ (Status::Ok | Status::No | Status::Bad)) => s,
        _ => {
            return Err(ReadError::Syntax(format!(
                "a tagged answer ({}) that is not OK, NO or BAD",
                String::from_utf8_lossy(&first)
            )));
        }
    };
    let (code, text) = resp_text(r)?;
    Ok(Response::Tagged(Tagged { tag: first, status, code, text }))
}

/// What stopped an untagged response, and what of it was known by then.
struct Fault {
    kind: &'static str,
    mailbox: Option<Vec<u8>>,
    error: ReadError,
    /// The mailbox name itself could not be read (a NUL or CR inside its quoted string): its
    /// raw bytes are taken from the line skipped, to name the folder in a warning.
    name_unread: bool,
}

/// Most bytes of an unreadable mailbox name kept to name it.
const UNREAD_NAME_MAX: usize = 1024;

fn untagged<R: Read>(r: &mut Reader<R>, lim: &ParseLimits) -> Result<Untagged, ReadError> {
    match untagged_inner(r, lim) {
        Ok(u) => Ok(u),
        Err(Fault { kind, mut mailbox, error: ReadError::Syntax(error), name_unread }) => {
            if !r.last_was_crlf() {
                let kept = r.skip_line_keeping(lim.header as u64, if name_unread { UNREAD_NAME_MAX } else { 0 })?;
                if name_unread {
                    mailbox = raw_quoted(&kept);
                }
            }
            Ok(Untagged::Malformed(Malformed { kind: kind.to_owned(), mailbox, error }))
        }
        Err(Fault { error, .. }) => Err(error),
    }
}

/// The bytes a quoted string holds, from the raw bytes of a line that starts with it (after
/// spaces; its escapes undone); `None` if the line does not start with one or it does not end
/// within them.
fn raw_quoted(line: &[u8]) -> Option<Vec<u8>> {
    let start = line.iter().position(|&b| b != b' ')?;
    let mut it = line[start..].strip_prefix(b"\"")?.iter();
    let mut out = Vec::new();
    while let Some(&b) = it.next() {
        match b {
            b'\\' => {
                // `\"` and `\\` are escapes; anything else (invalid) is kept as it came
                let n = *it.next()?;
                if n != b'"' && n != b'\\' {
                    out.push(b'\\');
                }
                out.push(n);
            }
            b'"' => return Some(out),
            _ => out.push(b),
        }
    }
    None
}

fn fault(kind: &'static str) -> impl Fn(ReadError) -> Fault {
    move |error| Fault { kind, mailbox: None, error, name_unread: false }
}

fn untagged_inner<R: Read>(r: &mut Reader<R>, lim: &ParseLimits) -> Result<Untagged, Fault> {
    let name = match r.token(Mode::Item).map_err(fault("?"))? {
        Token::Atom(a) => a.to_ascii_uppercase(),
        t => return Err(fault("?")(syntax(format!("an untagged response that starts with {}", describe(&t))))),
    };
    if name.iter().all(u8::is_ascii_digit) {
        let n = number32(&name, "a message number").map_err(fault("?"))?;
        let kind = match r.token(Mode::Item).map_err(fault("?"))? {
            Token::Atom(a) => a.to_ascii_uppercase(),
            t => return Err(fault("?")(syntax(format!("{} after a message number", describe(&t))))),
        };
        return match kind.as_slice() {
            b"EXISTS" => end(r, "EXISTS").map(|_| Untagged::Exists(n)),
            b"RECENT" => end(r, "RECENT").map(|_| Untagged::Recent(n)),
            b"EXPUNGE" => end(r, "EXPUNGE").map(|_| Untagged::Expunge(n)),
            b"FETCH" => {
                let f = fetch(r, n, lim).map_err(fault("FETCH"))?;
                end(r, "FETCH")?;
                Ok(Untagged::Fetch(Box::new(f)))
            }
            other => {
                let other = String::from_utf8_lossy(other).into_owned();
                skip_rest(r, lim).map_err(fault("?"))?;
                Ok(Untagged::Other(other))
            }
        };
    }
    if let Some(status) = Status::from_word(&name) {
        let (code, text) = resp_text(r).map_err(fault("status"))?;
        return Ok(Untagged::Status(Tagged { tag: b"*".to_vec(), status, code, text }));
    }
    match name.as_slice() {
        b"CAPABILITY" => atoms_to_end(r).map(Untagged::Capability).map_err(fault("CAPABILITY")),
        b"ENABLED" => atoms_to_end(r).map(Untagged::Enabled).map_err(fault("ENABLED")),
        b"FLAGS" => {
            let f = flag_list(r).map_err(fault("FLAGS"))?;
            end(r, "FLAGS")?;
            Ok(Untagged::Flags(f))
        }
        b"LIST" | b"LSUB" => list(r, lim).map(Untagged::List),
        b"STATUS" => status(r, lim).map(Untagged::MailboxStatus),
        b"SEARCH" => search(r).map_err(fault("SEARCH")),
        b"ESEARCH" => esearch(r, lim).map(Untagged::ESearch).map_err(fault("ESEARCH")),
        b"NAMESPACE" => namespace(r, lim).map(Untagged::Namespace).map_err(fault("NAMESPACE")),
        b"VANISHED" => vanished(r).map_err(fault("VANISHED")),
        other => {
            let other = String::from_utf8_lossy(other).into_owned();
            skip_rest(r, lim).map_err(fault("?"))?;
            Ok(Untagged::Other(other))
        }
    }
}

fn syntax(m: impl Into<String>) -> ReadError {
    ReadError::Syntax(m.into())
}

fn describe(t: &Token<'_>) -> String {
    match t {
        Token::Atom(a) => format!("{:?}", String::from_utf8_lossy(&a[..a.len().min(40)])),
        Token::Quoted(_) => "a quoted string".into(),
        Token::Literal(n) => format!("a literal of {n} bytes"),
        Token::LParen => "(".into(),
        Token::RParen => ")".into(),
        Token::LBracket => "[".into(),
        Token::RBracket => "]".into(),
        Token::Crlf => "the end of the line".into(),
        Token::Text(_) => "text".into(),
    }
}

fn crlf<R: Read>(r: &mut Reader<R>, what: &str) -> Result<(), ReadError> {
    match r.token(Mode::Item)? {
        Token::Crlf => Ok(()),
        t => Err(syntax(format!("{} where {what} should end", describe(&t)))),
    }
}

fn end<R: Read>(r: &mut Reader<R>, kind: &'static str) -> Result<(), Fault> {
    crlf(r, &format!("a {kind} response")).map_err(fault(kind))
}

fn number32(a: &[u8], what: &str) -> Result<u32, ReadError> {
    let n = number64(a, what)?;
    u32::try_from(n).map_err(|_| syntax(format!("{what} {n} is not a 32-bit number")))
}

fn number64(a: &[u8], what: &str) -> Result<u64, ReadError> {
    if a.is_empty() || a.len() > 20 || !a.iter().all(u8::is_ascii_digit) {
        return Err(syntax(format!("{what} {:?} is not a number", String::from_utf8_lossy(&a[..a.len().min(40)]))));
    }
    std::str::from_utf8(a)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| syntax(format!("{what} {} is not a 64-bit number", String::from_utf8_lossy(a))))
}

fn num32<R: Read>(r: &mut Reader<R>, what: &str) -> Result<u32, ReadError> {
    match r.token(Mode::Item)? {
        Token::Atom(a) => number32(a, what),
        t => Err(syntax(format!("{} where {what} should be", describe(&t)))),
    }
}

fn num64<R: Read>(r: &mut Reader<R>, what: &str) -> Result<u64, ReadError> {
    match r.token(Mode::Item)? {
        Token::Atom(a) => number64(a, what),
        t => Err(syntax(format!("{} where {what} should be", describe(&t)))),
    }
}

/// `n`, `n:m` comma-separated (no `*`: the server never sends one).
fn parse_set(a: &[u8], what: &str) -> Result<UidSet, ReadError> {
    let mut out = Vec::new();
    for part in a.split(|&b| b == b',') {
        let (x, y) = match part.iter().position(|&b| b == b':') {
            Some(i) => (number32(&part[..i], what)?, number32(&part[i + 1..], what)?),
            None => {
                let x = number32(part, what)?;
                (x, x)
            }
        };
        out.push((x.min(y), x.max(y)));
    }
    Ok(UidSet(out))
}

fn set<R: Read>(r: &mut Reader<R>, what: &str) -> Result<UidSet, ReadError> {
    match r.token(Mode::Item)? {
        Token::Atom(a) => parse_set(a, what),
        t => Err(syntax(format!("{} where {what} should be", describe(&t)))),
    }
}

/// `[code] text` and the line end.
fn resp_text<R: Read>(r: &mut Reader<R>) -> Result<(Option<Code>, String), ReadError> {
    let code = if r.peek()? == b'[' {
        let Token::LBracket = r.token(Mode::Item)? else { unreachable!("peeked") };
        Some(code(r)?)
    } else {
        None
    };
    let text = match r.token(Mode::Text)? {
        Token::Text(t) => String::from_utf8_lossy(t).into_owned(),
        _ => unreachable!("text mode gives text"),
    };
    crlf(r, "a status response")?;
    Ok((code, text))
}

fn code<R: Read>(r: &mut Reader<R>) -> Result<Code, ReadError> {
    let name = match r.token(Mode::Item)? {
        Token::Atom(a) => String::from_utf8_lossy(a).to_ascii_uppercase(),
        t => return Err(syntax(format!("{} where a response code should be", describe(&t)))),
    };
    let c = match name.as_str() {
        "CAPABILITY" => {
            let mut v = Vec::new();
            loop {
                match r.token(Mode::Item)? {
                    Token::Atom(a) => v.push(String::from_utf8_lossy(a).into_owned()),
                    Token::RBracket => return Ok(Code::Capability(v)),
                    t => return Err(syntax(format!("{} in a CAPABILITY code", describe(&t)))),
                }
            }
        }
        "PERMANENTFLAGS" => Code::PermanentFlags(flag_list(r)?),
        "UIDVALIDITY" => Code::UidValidity(num32(r, "UIDVALIDITY")?),
        "UIDNEXT" => Code::UidNext(num32(r, "UIDNEXT")?),
        "UNSEEN" => Code::Unseen(num32(r, "UNSEEN")?),
        "HIGHESTMODSEQ" => Code::HighestModseq(num64(r, "HIGHESTMODSEQ")?),
        "MODIFIED" => Code::Modified(set(r, "a MODIFIED set")?),
        "APPENDUID" => Code::AppendUid(num32(r, "APPENDUID's UIDVALIDITY")?, set(r, "APPENDUID's UID")?),
        _ => {
            let text = match r.token(Mode::CodeText)? {
                Token::Text(t) => String::from_utf8_lossy(t).into_owned(),
                _ => unreachable!("code text mode gives text"),
            };
            Code::Other(name, text)
        }
    };
    match r.token(Mode::Item)? {
        Token::RBracket => Ok(c),
        t => Err(syntax(format!("{} where a response code should end", describe(&t)))),
    }
}

fn atoms_to_end<R: Read>(r: &mut Reader<R>) -> Result<Vec<String>, ReadError> {
    let mut v = Vec::new();
    loop {
        match r.token(Mode::Flag)? {
            Token::Atom(a) => v.push(String::from_utf8_lossy(a).into_owned()),
            Token::Crlf => return Ok(v),
            t => return Err(syntax(format!("{} in a list of words", describe(&t)))),
        }
    }
}

/// `(\Seen $Label1 …)`.
fn flag_list<R: Read>(r: &mut Reader<R>) -> Result<Vec<String>, ReadError> {
    match r.token(Mode::Item)? {
        Token::LParen => {}
        t => return Err(syntax(format!("{} where a flag list should start", describe(&t)))),
    }
    let mut v = Vec::new();
    loop {
        match r.token(Mode::Flag)? {
            Token::Atom(a) => v.push(String::from_utf8_lossy(a).into_owned()),
            Token::RParen => return Ok(v),
            t => return Err(syntax(format!("{} in a flag list", describe(&t)))),
        }
    }
}

/// An astring (atom, quoted or literal): a mailbox name or a namespace prefix.
fn astring<R: Read>(r: &mut Reader<R>, lim: &ParseLimits, what: &str) -> Result<Vec<u8>, ReadError> {
    match r.token(Mode::Astring)? {
        Token::Atom(a) => Ok(a.to_vec()),
        Token::Quoted(q) => Ok(q.into_owned()),
        Token::Literal(n) => r.literal(n, lim.small, what),
        t => Err(syntax(format!("{} where {what} should be", describe(&t)))),
    }
}

/// A string or NIL.
fn nstring<R: Read>(r: &mut Reader<R>, limit: usize, what: &str) -> Result<Option<Vec<u8>>, ReadError> {
    match r.token(Mode::Item)? {
        Token::Atom(a) if a.eq_ignore_ascii_case(b"NIL") => Ok(None),
        Token::Quoted(q) => Ok(Some(q.into_owned())),
        Token::Literal(n) => r.literal(n, limit, what).map(Some),
        t => Err(syntax(format!("{} where {what} should be", describe(&t)))),
    }
}

/// Skips one value of any shape (atom, string, literal, parenthesised list).
fn skip_value<R: Read>(r: &mut Reader<R>, lim: &ParseLimits) -> Result<(), ReadError> {
    let mut depth = 0usize;
    loop {
        match r.token(Mode::Astring)? {
            Token::LParen => depth += 1,
            Token::RParen if depth > 0 => depth -= 1,
            Token::Literal(n) => r.skip_literal(n, lim.header as u64, "a value we skip")?,
            Token::Crlf => return Err(syntax("the end of the line inside a value")),
            Token::RParen => return Err(syntax("a ) where a value should be")),
            _ => {}
        }
        if depth == 0 {
            return Ok(());
        }
    }
}

/// Skips the rest of a response we do not use.
fn skip_rest<R: Read>(r: &mut Reader<R>, lim: &ParseLimits) -> Result<(), ReadError> {
    loop {
        match r.token(Mode::Astring)? {
            Token::Crlf => return Ok(()),
            Token::Literal(n) => r.skip_literal(n, lim.header as u64, "a response we skip")?,
            _ => {}
        }
    }
}

fn list<R: Read>(r: &mut Reader<R>, lim: &ParseLimits) -> Result<ListItem, Fault> {
    let attrs = flag_list(r).map_err(fault("LIST"))?;
    let delimiter = match r.token(Mode::Astring).map_err(fault("LIST"))? {
        Token::Quoted(q) => Some(String::from_utf8_lossy(&q).into_owned()),
        Token::Atom(a) if a.eq_ignore_ascii_case(b"NIL") => None,
        t => return Err(fault("LIST")(syntax(format!("{} where the hierarchy delimiter should be", describe(&t))))),
    };
    let name = astring(r, lim, "a mailbox name").map_err(|error| Fault {
        kind: "LIST",
        mailbox: None,
        error,
        name_unread: true,
    })?;
    // LIST-EXTENDED data (CHILDINFO, OLDNAME…) may follow: not ours.
    let rest = (|| loop {
        if r.peek()? == b'\r' || r.peek()? == b'\n' {
            return crlf(r, "a LIST response");
        }
        skip_value(r, lim)?;
    })();
    rest.map_err(|error| Fault { kind: "LIST", mailbox: Some(name.clone()), error, name_unread: false })?;
    Ok(ListItem { attrs, delimiter, name })
}

fn status<R: Read>(r: &mut Reader<R>, lim: &ParseLimits) -> Result<MailboxStatus, Fault> {
    let name = astring(r, lim, "a mailbox name").map_err(fault("STATUS"))?;
    let mut s = MailboxStatus { name: name.clone(), ..MailboxStatus::default() };
    let items = (|| {
        match r.token(Mode::Item)? {
            Token::LParen => {}
            t => return Err(syntax(format!("{} where the status items should start", describe(&t)))),
        }
        loop {
            let key = match r.token(Mode::Item)? {
                Token::RParen => break,
                Token::Atom(a) => a.to_ascii_uppercase(),
                t => return Err(syntax(format!("{} in the status items", describe(&t)))),
            };
            match key.as_slice() {
                b"MESSAGES" => s.messages = Some(num32(r, "MESSAGES")?),
                b"UIDNEXT" => s.uidnext = Some(num32(r, "UIDNEXT")?),
                b"UIDVALIDITY" => s.uidvalidity = Some(num32(r, "UIDVALIDITY")?),
                b"UNSEEN" => s.unseen = Some(num32(r, "UNSEEN")?),
                b"HIGHESTMODSEQ" => s.highest_modseq = Some(num64(r, "HIGHESTMODSEQ")?),
                _ => skip_value(r, lim)?, // RECENT, SIZE, APPENDLIMIT (a number or NIL)…
            }
        }
        crlf(r, "a STATUS response")
    })();
    items.map_err(|error| Fault { kind: "STATUS", mailbox: Some(name), error, name_unread: false })?;
    Ok(s)
}

fn search<R: Read>(r: &mut Reader<R>) -> Result<Untagged, ReadError> {
    let mut uids = Vec::new();
    let mut modseq = None;
    loop {
        match r.token(Mode::Item)? {
            Token::Atom(a) => uids.push(number32(a, "a SEARCH result")?),
            Token::LParen => {
                // (MODSEQ n), RFC 7162 §3.1.5
                match r.token(Mode::Item)? {
                    Token::Atom(a) if a.eq_ignore_ascii_case(b"MODSEQ") => {}
                    t => return Err(syntax(format!("{} in a SEARCH result", describe(&t)))),
                }
                modseq = Some(num64(r, "MODSEQ")?);
                match r.token(Mode::Item)? {
                    Token::RParen => {}
                    t => return Err(syntax(format!("{} in a SEARCH result", describe(&t)))),
                }
            }
            Token::Crlf => return Ok(Untagged::Search { uids, modseq }),
            t => return Err(syntax(format!("{} in a SEARCH result", describe(&t)))),
        }
    }
}

fn esearch<R: Read>(r: &mut Reader<R>, lim: &ParseLimits) -> Result<ESearch, ReadError> {
    let mut e = ESearch::default();
    if r.peek()? == b'(' {
        // (TAG "a1")
        r.token(Mode::Item)?;
        match r.token(Mode::Item)? {
            Token::Atom(a) if a.eq_ignore_ascii_case(b"TAG") => {}
            t => return Err(syntax(format!("{} in an ESEARCH correlator", describe(&t)))),
        }
        e.tag = Some(astring(r, lim, "an ESEARCH tag")?);
        match r.token(Mode::Item)? {
            Token::RParen => {}
            t => return Err(syntax(format!("{} in an ESEARCH correlator", describe(&t)))),
        }
    }
    loop {
        let key = match r.token(Mode::Item)? {
            Token::Crlf => return Ok(e),
            Token::Atom(a) => a.to_ascii_uppercase(),
            t => return Err(syntax(format!("{} in an ESEARCH response", describe(&t)))),
        };
        match key.as_slice() {
            b"UID" => e.uid = true,
            b"ALL" => e.all = Some(set(r, "an ESEARCH ALL set")?),
            b"MIN" => e.min = Some(num32(r, "ESEARCH MIN")?),
            b"MAX" => e.max = Some(num32(r, "ESEARCH MAX")?),
            b"COUNT" => e.count = Some(num32(r, "ESEARCH COUNT")?),
            b"MODSEQ" => e.modseq = Some(num64(r, "ESEARCH MODSEQ")?),
            _ => skip_value(r, lim)?,
        }
    }
}

/// A namespace: its prefix and its hierarchy delimiter.
type Namespace = (Vec<u8>, Option<String>);

fn namespace<R: Read>(r: &mut Reader<R>, lim: &ParseLimits) -> Result<Vec<Namespace>, ReadError> {
    let mut personal = Vec::new();
    match r.token(Mode::Item)? {
        Token::Atom(a) if a.eq_ignore_ascii_case(b"NIL") => {}
        Token::LParen => loop {
            match r.token(Mode::Item)? {
                Token::RParen => break,
                Token::LParen => {}
                t => return Err(syntax(format!("{} in a namespace", describe(&t)))),
            }
            let prefix = astring(r, lim, "a namespace prefix")?;
            let delim =
                nstring(r, lim.small, "a namespace delimiter")?.map(|d| String::from_utf8_lossy(&d).into_owned());
            // namespace extensions, then the closing paren
            loop {
                if r.peek()? == b')' {
                    r.token(Mode::Item)?;
                    break;
                }
                skip_value(r, lim)?;
            }
            personal.push((prefix, delim));
        },
        t => return Err(syntax(format!("{} where the personal namespaces should be", describe(&t)))),
    }
    // Other users' and shared namespaces: not ours.
    skip_rest(r, lim)?;
    Ok(personal)
}

fn vanished<R: Read>(r: &mut Reader<R>) -> Result<Untagged, ReadError> {
    let mut earlier = false;
    if r.peek()? == b'(' {
        r.token(Mode::Item)?;
        match r.token(Mode::Item)? {
            Token::Atom(a) if a.eq_ignore_ascii_case(b"EARLIER") => earlier = true,
            t => return Err(syntax(format!("{} in VANISHED", describe(&t)))),
        }
        match r.token(Mode::Item)? {
            Token::RParen => {}
            t => return Err(syntax(format!("{} in VANISHED", describe(&t)))),
        }
    }
    let uids = set(r, "a VANISHED set")?;
    crlf(r, "a VANISHED response")?;
    Ok(Untagged::Vanished { earlier, uids })
}

fn fetch<R: Read>(r: &mut Reader<R>, seq: u32, lim: &ParseLimits) -> Result<FetchData, ReadError> {
    let mut f = FetchData { seq, ..FetchData::default() };
    match r.token(Mode::Item)? {
        Token::LParen => {}
        t => return Err(syntax(format!("{} where the FETCH items should start", describe(&t)))),
    }
    loop {
        let name = match r.token(Mode::Item)? {
            Token::RParen => return Ok(f),
            Token::Atom(a) => a.to_ascii_uppercase(),
            t => return Err(syntax(format!("{} where a FETCH item should be", describe(&t)))),
        };
        match name.as_slice() {
            b"UID" => f.uid = Some(num32(r, "UID")?),
            b"FLAGS" => f.flags = Some(Flags::from_words(flag_list(r)?.iter().map(String::as_str))),
            b"RFC822.SIZE" => f.size = Some(num32(r, "RFC822.SIZE")?),
            b"INTERNALDATE" => {
                let d = nstring(r, lim.small, "INTERNALDATE")?.ok_or_else(|| syntax("INTERNALDATE NIL"))?;
                f.internal_date = Some(
                    internal_date(&d)
                        .ok_or_else(|| syntax(format!("INTERNALDATE {:?}", String::from_utf8_lossy(&d))))?,
                );
            }
            b"MODSEQ" => {
                if !matches!(r.token(Mode::Item)?, Token::LParen) {
                    return Err(syntax("MODSEQ without its parentheses"));
                }
                f.modseq = Some(num64(r, "MODSEQ")?);
                if !matches!(r.token(Mode::Item)?, Token::RParen) {
                    return Err(syntax("MODSEQ without its parentheses"));
                }
            }
            b"X-GM-MSGID" => f.gm_msgid = Some(num64(r, "X-GM-MSGID")?),
            b"RFC822" => f.body = Some(nstring(r, lim.body, "a message body")?),
            b"RFC822.HEADER" => f.header = Some(nstring(r, lim.header, "a message header")?),
            b"BODY" | b"BINARY" if r.peek()? == b'[' => {
                let section = section(r)?;
                let partial = r.peek()? == b'<';
                if partial {
                    r.token(Mode::Item)?;
                }
                let binary = name == b"BINARY";
                if section.is_empty() && !partial && !binary {
                    f.body = Some(nstring(r, lim.body, "a message body")?);
                } else if !partial && !binary && (section == "HEADER" || section.starts_with("HEADER.FIELDS")) {
                    f.header = Some(nstring(r, lim.header, "a message header")?);
                } else {
                    skip_value(r, lim)?;
                }
            }
            // BODY (structure), BODYSTRUCTURE, ENVELOPE, RFC822.TEXT, X-GM-LABELS…: not ours.
            _ => skip_value(r, lim)?,
        }
    }
}

/// `[HEADER.FIELDS (MESSAGE-ID)]` → "HEADER.FIELDS (MESSAGE-ID)", upper case; `[]` → "".
fn section<R: Read>(r: &mut Reader<R>) -> Result<String, ReadError> {
    let Token::LBracket = r.token(Mode::Item)? else { unreachable!("peeked") };
    let mut out = String::new();
    loop {
        match r.token(Mode::Item)? {
            Token::RBracket => return Ok(out),
            Token::Atom(a) => {
                if !out.is_empty() && !out.ends_with('(') {
                    out.push(' ');
                }
                out.push_str(&String::from_utf8_lossy(a).to_ascii_uppercase());
            }
            Token::LParen => {
                out.push_str(" (");
            }
            Token::RParen => out.push(')'),
            Token::Quoted(q) => out.push_str(&String::from_utf8_lossy(&q)),
            t => return Err(syntax(format!("{} in a body section", describe(&t)))),
        }
    }
}

/// `17-Jul-1996 02:44:25 -0700` (the day may be one digit or space-padded) as unix seconds.
pub fn internal_date(s: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(s).ok()?.trim();
    let (date, rest) = s.split_once(' ')?;
    let (time, zone) = rest.trim().split_once(' ')?;
    let mut d = date.splitn(3, '-');
    let day: u32 = d.next()?.trim().parse().ok()?;
    let month = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
        .iter()
        .position(|m| d.clone().next().is_some_and(|x| x.eq_ignore_ascii_case(m)))? as u32
        + 1;
    d.next()?;
    let year: i32 = d.next()?.parse().ok()?;
    let mut t = time.splitn(3, ':');
    let (h, m, sec): (u32, u32, u32) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let zone = zone.trim();
    let (sign, digits) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let off = sign * (digits[..2].parse::<i64>().ok()? * 3600 + digits[2..].parse::<i64>().ok()? * 60);
    let naive = chrono::NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(h, m, sec)?;
    Some(naive.and_utc().timestamp() - off)
}

#[cfg(test)]
mod tests;
