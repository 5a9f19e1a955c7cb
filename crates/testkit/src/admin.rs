//! A small blocking raw-IMAP client for test setup and checks that drives Dovecot, Cyrus and
//! Courier the same way: plain TCP, LOGIN, names passed as raw (modified UTF-7) bytes.
//!
//! Answers are parsed token by token (atoms, quoted strings, literals read by their exact
//! length, parenthesized lists), never by searching the text: a message body may contain
//! `UID 7` or `FLAGS (`, and servers order FETCH items differently (Cyrus puts FLAGS first).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use crate::HOST;

/// One message as `fetch_all` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub uid: u32,
    /// Flags and keywords as the server spelled them, in its order, without `\Recent` (a
    /// session property, not the message's).
    pub flags: Vec<String>,
    /// The exact bytes of `BODY[]`.
    pub body: Vec<u8>,
}

/// One mailbox of a LIST answer: (attributes, hierarchy delimiter, raw name bytes).
pub type ListEntry = (Vec<String>, Option<char>, Vec<u8>);

/// A logged-in IMAP connection for tests (see the module docs).
pub struct ImapAdmin {
    w: TcpStream,
    r: BufReader<TcpStream>,
    tag: u32,
    caps: Vec<String>,
    /// The mailbox last SELECTed or EXAMINEd, so that DELETE can leave it first (servers differ
    /// on deleting the selected mailbox).
    selected: Option<Vec<u8>>,
}

/// The answer to one command: its untagged responses (wire bytes, literals inline) and the text
/// after the tag of its tagged response (`OK [APPENDUID 1 5] done`).
struct Reply {
    untagged: Vec<Vec<u8>>,
    status: Vec<u8>,
}

impl Reply {
    fn ok(&self) -> bool {
        self.status.len() >= 2 && self.status[..2].eq_ignore_ascii_case(b"OK")
    }
    fn status_text(&self) -> String {
        String::from_utf8_lossy(&self.status).trim_end().to_string()
    }
}

/// A piece of a command: protocol text, or a literal's bytes.
enum Part<'a> {
    Text(Vec<u8>),
    Literal(&'a [u8]),
}

/// Batches of pipelined APPENDs: small enough that the tagged answers never fill a socket
/// buffer while we are still writing.
const PIPELINE_MESSAGES: usize = 64;
const PIPELINE_BYTES: usize = 8 << 20;
/// One MULTIAPPEND command: large, since each is one transaction on the server.
const MULTIAPPEND_MESSAGES: usize = 1000;
const MULTIAPPEND_BYTES: usize = 32 << 20;

impl ImapAdmin {
    /// Connects to 127.0.0.1:`port` and logs in with LOGIN (plain text).
    pub fn login(port: u16, user: &str, password: &str) -> anyhow::Result<ImapAdmin> {
        let w = TcpStream::connect((HOST, port)).with_context(|| format!("cannot connect to {HOST}:{port}"))?;
        w.set_read_timeout(Some(Duration::from_secs(120)))?;
        w.set_write_timeout(Some(Duration::from_secs(120)))?;
        // Synchronizing literals write small pieces and wait: Nagle would delay each one.
        w.set_nodelay(true)?;
        let r = BufReader::with_capacity(1 << 20, w.try_clone()?);
        let mut s = ImapAdmin { w, r, tag: 0, caps: Vec::new(), selected: None };
        let greeting = read_response(&mut s.r)?;
        if !greeting.starts_with(b"* OK") {
            bail!("unexpected IMAP greeting {:?}", String::from_utf8_lossy(&greeting));
        }
        let parts = [
            Part::Text(b"LOGIN ".to_vec()),
            astring(user.as_bytes()),
            Part::Text(b" ".to_vec()),
            astring(password.as_bytes()),
        ];
        let reply = s.run(&parts)?;
        if !reply.ok() {
            // The password is not repeated in the error.
            bail!("IMAP login of {user} on port {port} failed: {}", reply.status_text());
        }
        // Some servers put capabilities in the tagged OK and some do not: ask.
        s.refresh_capabilities()?;
        Ok(s)
    }

    /// The capabilities announced after login.
    pub fn capabilities(&self) -> &[String] {
        &self.caps
    }

    /// Whether the server announced `cap` (case-insensitive).
    pub fn has_capability(&self, cap: &str) -> bool {
        self.caps.iter().any(|c| c.eq_ignore_ascii_case(cap))
    }

    fn refresh_capabilities(&mut self) -> anyhow::Result<()> {
        let reply = self.ok(&[Part::Text(b"CAPABILITY".to_vec())], "CAPABILITY")?;
        let mut caps = Vec::new();
        for u in &reply.untagged {
            let mut p = Parser::new(u);
            if p.untagged_kind()? == Kind::Named(b"CAPABILITY".to_vec()) {
                while let Some(atom) = p.next_atom() {
                    caps.push(String::from_utf8_lossy(&atom).into_owned());
                }
            }
        }
        if caps.is_empty() {
            bail!("no CAPABILITY answer");
        }
        self.caps = caps;
        Ok(())
    }

    /// Sends a command given as text (no literals) and returns its untagged responses' wire
    /// bytes; `Err` unless the server answers OK. For what the other methods do not cover.
    pub fn command(&mut self, cmd: &str) -> anyhow::Result<Vec<Vec<u8>>> {
        Ok(self.ok(&[Part::Text(cmd.as_bytes().to_vec())], cmd)?.untagged)
    }

    /// Every mailbox (`LIST "" "*"`): (attributes, hierarchy delimiter, raw name bytes).
    pub fn list(&mut self) -> anyhow::Result<Vec<ListEntry>> {
        let reply = self.ok(&[Part::Text(b"LIST \"\" \"*\"".to_vec())], "LIST")?;
        let mut out = Vec::new();
        for u in &reply.untagged {
            let mut p = Parser::new(u);
            if p.untagged_kind()? != Kind::Named(b"LIST".to_vec()) {
                continue;
            }
            let attrs = p.value()?.atoms().context("LIST attributes")?;
            let delim = match p.value()? {
                Val::Nil => None,
                v => v.bytes().and_then(|d| d.first().map(|&c| c as char)),
            };
            let name = p.value()?.bytes().context("LIST name")?.to_vec();
            out.push((attrs, delim, name));
        }
        Ok(out)
    }

    /// The first personal namespace (RFC 2342): its prefix and delimiter, e.g. `("", '/')` for
    /// Dovecot and `("INBOX.", '.')` for Courier.
    pub fn namespace(&mut self) -> anyhow::Result<(Vec<u8>, Option<char>)> {
        let reply = self.ok(&[Part::Text(b"NAMESPACE".to_vec())], "NAMESPACE")?;
        for u in &reply.untagged {
            let mut p = Parser::new(u);
            if p.untagged_kind()? != Kind::Named(b"NAMESPACE".to_vec()) {
                continue;
            }
            if let Val::List(spaces) = p.value()?
                && let Some(Val::List(first)) = spaces.first()
            {
                let prefix = first.first().and_then(Val::bytes).context("namespace prefix")?.to_vec();
                let delim = first.get(1).and_then(Val::bytes).and_then(|d| d.first().map(|&c| c as char));
                return Ok((prefix, delim));
            }
        }
        bail!("no personal namespace in the NAMESPACE answer")
    }

    /// CREATE (the name is raw: already modified UTF-7, with the server's prefix and separator).
    pub fn create(&mut self, name: impl AsRef<[u8]>) -> anyhow::Result<()> {
        let name = name.as_ref();
        self.ok(&[Part::Text(b"CREATE ".to_vec()), astring(name)], &format!("CREATE {}", lossy(name)))?;
        Ok(())
    }

    /// DELETE, leaving the mailbox first if this connection has it selected.
    pub fn delete(&mut self, name: impl AsRef<[u8]>) -> anyhow::Result<()> {
        let name = name.as_ref();
        if self.selected.as_deref() == Some(name) {
            self.unselect()?;
        }
        self.ok(&[Part::Text(b"DELETE ".to_vec()), astring(name)], &format!("DELETE {}", lossy(name)))?;
        Ok(())
    }

    /// Appends one message; its UID when the server answers APPENDUID (UIDPLUS).
    pub fn append(&mut self, folder: impl AsRef<[u8]>, flags: &[&str], raw: &[u8]) -> anyhow::Result<Option<u32>> {
        let folder = folder.as_ref();
        let parts = append_parts(folder, flags, raw);
        let reply = self.run(&parts)?;
        if !reply.ok() {
            bail!("APPEND to {} refused: {}", lossy(folder), reply.status_text());
        }
        appended_uid(&reply.status)
    }

    /// Appends many messages, in order, without a round trip per message where the server
    /// allows: batches of one MULTIAPPEND command each (RFC 3502; one transaction, so Dovecot
    /// and Cyrus sync the disk once per batch instead of once per message, which costs ~10 ms
    /// here), else pipelined APPENDs with non-synchronizing literals (LITERAL+), else one at a
    /// time (Courier). The UIDs, as for [`ImapAdmin::append`].
    pub fn append_many<F, S, B>(
        &mut self,
        folder: impl AsRef<[u8]>,
        msgs: &[(F, B)],
    ) -> anyhow::Result<Vec<Option<u32>>>
    where
        F: AsRef<[S]>,
        S: AsRef<str>,
        B: AsRef<[u8]>,
    {
        let msgs: Vec<(Vec<&str>, &[u8])> =
            msgs.iter().map(|(f, b)| (f.as_ref().iter().map(AsRef::as_ref).collect(), b.as_ref())).collect();
        self.append_many_dyn(folder.as_ref(), &msgs)
    }

    fn append_many_dyn(&mut self, folder: &[u8], msgs: &[(Vec<&str>, &[u8])]) -> anyhow::Result<Vec<Option<u32>>> {
        let mut uids = Vec::with_capacity(msgs.len());
        let multi = self.has_capability("MULTIAPPEND");
        if !multi && !self.has_capability("LITERAL+") {
            for (flags, raw) in msgs {
                uids.push(self.append(folder, flags, raw)?);
            }
            return Ok(uids);
        }
        let (max_n, max_bytes) =
            if multi { (MULTIAPPEND_MESSAGES, MULTIAPPEND_BYTES) } else { (PIPELINE_MESSAGES, PIPELINE_BYTES) };
        let mut rest = msgs;
        while !rest.is_empty() {
            let mut size = 0;
            let n = rest
                .iter()
                .take(max_n)
                .take_while(|(_, raw)| {
                    size += raw.len();
                    size <= max_bytes
                })
                .count()
                .max(1);
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            if multi {
                let mut parts = vec![Part::Text(b"APPEND ".to_vec()), astring(folder)];
                for (flags, raw) in batch {
                    parts.extend(message_parts(flags, raw));
                }
                let reply = self.run(&parts)?;
                if !reply.ok() {
                    bail!("MULTIAPPEND to {} refused: {}", lossy(folder), reply.status_text());
                }
                match appended_uids(&reply.status)? {
                    Some(got) if got.len() == n => uids.extend(got.into_iter().map(Some)),
                    Some(got) => bail!("APPENDUID names {} UIDs for {n} messages: {}", got.len(), reply.status_text()),
                    None => uids.extend(std::iter::repeat_n(None, n)),
                }
                continue;
            }
            let mut wire = Vec::new();
            let mut tags = Vec::with_capacity(n);
            for (flags, raw) in batch {
                tags.push(self.render(&append_parts(folder, flags, raw), &mut wire));
            }
            self.w.write_all(&wire)?;
            for tag in tags {
                let reply = self.read_reply(&tag)?;
                if !reply.ok() {
                    bail!("APPEND to {} refused: {}", lossy(folder), reply.status_text());
                }
                uids.push(appended_uid(&reply.status)?);
            }
        }
        Ok(uids)
    }

    /// `UID STORE uid ITEM`, e.g. `+FLAGS (\Seen $Label1)` or `-FLAGS (\Seen)`, in `folder`.
    pub fn store(&mut self, folder: impl AsRef<[u8]>, uid: u32, item: &str) -> anyhow::Result<()> {
        self.select(folder.as_ref(), true)?;
        self.ok(&[Part::Text(format!("UID STORE {uid} {item}").into_bytes())], &format!("UID STORE {uid} {item}"))?;
        Ok(())
    }

    /// Marks these messages `\Deleted` and expunges them: only them with UID EXPUNGE (UIDPLUS),
    /// else every `\Deleted` message of the folder with EXPUNGE.
    pub fn expunge_uids(&mut self, folder: impl AsRef<[u8]>, uids: &[u32]) -> anyhow::Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        self.select(folder.as_ref(), true)?;
        let set = uids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        self.ok(&[Part::Text(format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)").into_bytes())], "UID STORE")?;
        if self.has_capability("UIDPLUS") {
            self.ok(&[Part::Text(format!("UID EXPUNGE {set}").into_bytes())], "UID EXPUNGE")?;
        } else {
            self.ok(&[Part::Text(b"EXPUNGE".to_vec())], "EXPUNGE")?;
        }
        Ok(())
    }

    /// Every message of `folder` (read-only, `\Seen` untouched): `UID FETCH 1:* (UID FLAGS
    /// BODY.PEEK[])`, by UID.
    pub fn fetch_all(&mut self, folder: impl AsRef<[u8]>) -> anyhow::Result<Vec<Fetched>> {
        let exists = self.select(folder.as_ref(), false)?;
        if exists == 0 {
            // Some servers refuse `1:*` in an empty mailbox.
            return Ok(Vec::new());
        }
        let reply = self.ok(&[Part::Text(b"UID FETCH 1:* (UID FLAGS BODY.PEEK[])".to_vec())], "UID FETCH")?;
        collect_fetches(&reply.untagged)
    }

    /// `STATUS folder (MESSAGES UIDNEXT UIDVALIDITY)`: (messages, uidnext, uidvalidity).
    pub fn status(&mut self, folder: impl AsRef<[u8]>) -> anyhow::Result<(u32, u32, u32)> {
        let folder = folder.as_ref();
        let parts =
            [Part::Text(b"STATUS ".to_vec()), astring(folder), Part::Text(b" (MESSAGES UIDNEXT UIDVALIDITY)".to_vec())];
        let reply = self.ok(&parts, &format!("STATUS {}", lossy(folder)))?;
        for u in &reply.untagged {
            let mut p = Parser::new(u);
            if p.untagged_kind()? != Kind::Named(b"STATUS".to_vec()) {
                continue;
            }
            let _name = p.value()?;
            let Val::List(items) = p.value()? else { bail!("STATUS without a list: {}", lossy(u)) };
            let get = |key: &[u8]| {
                items
                    .chunks(2)
                    .find(|kv| kv[0].bytes().is_some_and(|k| k.eq_ignore_ascii_case(key)))
                    .and_then(|kv| kv.get(1)?.number())
                    .with_context(|| format!("no {} in {}", lossy(key), lossy(u)))
            };
            return Ok((get(b"MESSAGES")?, get(b"UIDNEXT")?, get(b"UIDVALIDITY")?));
        }
        bail!("no STATUS answer for {}", lossy(folder))
    }

    pub fn uidvalidity(&mut self, folder: impl AsRef<[u8]>) -> anyhow::Result<u32> {
        Ok(self.status(folder)?.2)
    }

    /// Sends LOGOUT; errors are ignored (the server may close first).
    pub fn logout(mut self) {
        let _ = self.run(&[Part::Text(b"LOGOUT".to_vec())]);
    }

    /// SELECT (`write`) or EXAMINE afresh, so the view includes what other connections did;
    /// the number of messages.
    fn select(&mut self, folder: &[u8], write: bool) -> anyhow::Result<u32> {
        let verb: &[u8] = if write { b"SELECT " } else { b"EXAMINE " };
        self.selected = None;
        let reply = self.ok(&[Part::Text(verb.to_vec()), astring(folder)], &format!("SELECT {}", lossy(folder)))?;
        self.selected = Some(folder.to_vec());
        let mut exists = 0;
        for u in &reply.untagged {
            if let Kind::Numbered(n, what) = Parser::new(u).untagged_kind()?
                && what.eq_ignore_ascii_case(b"EXISTS")
            {
                exists = n;
            }
        }
        Ok(exists)
    }

    /// Leaves the selected mailbox without expunging: UNSELECT, or CLOSE after EXAMINE (CLOSE
    /// of a read-only mailbox expunges nothing).
    fn unselect(&mut self) -> anyhow::Result<()> {
        if let Some(name) = self.selected.take() {
            if self.has_capability("UNSELECT") {
                self.ok(&[Part::Text(b"UNSELECT".to_vec())], "UNSELECT")?;
            } else {
                self.ok(&[Part::Text(b"EXAMINE ".to_vec()), astring(&name)], "EXAMINE")?;
                self.ok(&[Part::Text(b"CLOSE".to_vec())], "CLOSE")?;
            }
        }
        Ok(())
    }

    fn ok(&mut self, parts: &[Part], what: &str) -> anyhow::Result<Reply> {
        let reply = self.run(parts)?;
        if !reply.ok() {
            bail!("IMAP server answered {:?} to {what}", reply.status_text());
        }
        Ok(reply)
    }

    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("a{}", self.tag)
    }

    /// Whether a literal of `len` bytes may be sent without waiting for `+` (RFC 7888).
    fn nonsync(&self, len: usize) -> bool {
        self.has_capability("LITERAL+") || (len <= 4096 && self.has_capability("LITERAL-"))
    }

    /// Appends one command whose literals are all non-synchronizing to `wire`; its tag.
    fn render(&mut self, parts: &[Part], wire: &mut Vec<u8>) -> String {
        let tag = self.next_tag();
        wire.extend_from_slice(tag.as_bytes());
        wire.push(b' ');
        for part in parts {
            match part {
                Part::Text(t) => wire.extend_from_slice(t),
                Part::Literal(l) => {
                    wire.extend_from_slice(format!("{{{}+}}\r\n", l.len()).as_bytes());
                    wire.extend_from_slice(l);
                }
            }
        }
        wire.extend_from_slice(b"\r\n");
        tag
    }

    /// Sends one command, waiting for `+` before each synchronizing literal, and reads up to its
    /// tagged answer (which may come early, when the server refuses a literal).
    fn run(&mut self, parts: &[Part]) -> anyhow::Result<Reply> {
        let tag = self.next_tag();
        let mut wire = format!("{tag} ").into_bytes();
        let mut untagged = Vec::new();
        for part in parts {
            match part {
                Part::Text(t) => wire.extend_from_slice(t),
                Part::Literal(l) if self.nonsync(l.len()) => {
                    wire.extend_from_slice(format!("{{{}+}}\r\n", l.len()).as_bytes());
                    wire.extend_from_slice(l);
                }
                Part::Literal(l) => {
                    wire.extend_from_slice(format!("{{{}}}\r\n", l.len()).as_bytes());
                    self.w.write_all(&wire)?;
                    wire.clear();
                    loop {
                        let resp = read_response(&mut self.r)?;
                        if resp.starts_with(b"+") {
                            break;
                        }
                        if let Some(status) = tagged_status(&resp, &tag) {
                            return Ok(Reply { untagged, status });
                        }
                        untagged.push(resp);
                    }
                    wire.extend_from_slice(l);
                }
            }
        }
        wire.extend_from_slice(b"\r\n");
        self.w.write_all(&wire)?;
        let mut reply = self.read_reply(&tag)?;
        untagged.append(&mut reply.untagged);
        reply.untagged = untagged;
        Ok(reply)
    }

    fn read_reply(&mut self, tag: &str) -> anyhow::Result<Reply> {
        let mut untagged: Vec<Vec<u8>> = Vec::new();
        loop {
            let resp = read_response(&mut self.r).with_context(|| match untagged.last() {
                Some(last) => format!("after {:?}", lossy(last)),
                None => String::new(),
            })?;
            if let Some(status) = tagged_status(&resp, tag) {
                return Ok(Reply { untagged, status });
            }
            if resp.starts_with(b"+") {
                bail!("unexpected continuation {:?} while waiting for {tag}", lossy(&resp));
            }
            untagged.push(resp);
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

/// The text after `TAG ` if `resp` is the tagged answer for `tag`.
fn tagged_status(resp: &[u8], tag: &str) -> Option<Vec<u8>> {
    let rest = resp.strip_prefix(tag.as_bytes())?.strip_prefix(b" ")?;
    Some(rest.strip_suffix(b"\r\n").unwrap_or(rest).to_vec())
}

/// A name or login as an IMAP astring: a quoted string when it is printable ASCII, else a
/// literal, so any byte reaches the server as it is.
fn astring(s: &[u8]) -> Part<'_> {
    if s.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        let mut q = Vec::with_capacity(s.len() + 2);
        q.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                q.push(b'\\');
            }
            q.push(b);
        }
        q.push(b'"');
        Part::Text(q)
    } else {
        Part::Literal(s)
    }
}

fn append_parts<'a>(folder: &'a [u8], flags: &[&str], raw: &'a [u8]) -> Vec<Part<'a>> {
    let mut parts = vec![Part::Text(b"APPEND ".to_vec()), astring(folder)];
    parts.extend(message_parts(flags, raw));
    parts
}

/// ` [(flags)] literal`: one message of an APPEND or MULTIAPPEND.
fn message_parts<'a>(flags: &[&str], raw: &'a [u8]) -> Vec<Part<'a>> {
    let mut parts = Vec::with_capacity(3);
    // An empty list is legal, but some servers have choked on `()`: leave it out.
    if !flags.is_empty() {
        parts.push(Part::Text(format!(" ({})", flags.join(" ")).into_bytes()));
    }
    parts.push(Part::Text(b" ".to_vec()));
    parts.push(Part::Literal(raw));
    parts
}

/// The UID from `OK [APPENDUID <uidvalidity> <uid>] ...` (RFC 4315), if any.
fn appended_uid(status: &[u8]) -> anyhow::Result<Option<u32>> {
    Ok(appended_uids(status)?.and_then(|u| u.first().copied()))
}

/// The UIDs, in message order, from `OK [APPENDUID <uidvalidity> <uid-set>] ...`, if any.
fn appended_uids(status: &[u8]) -> anyhow::Result<Option<Vec<u32>>> {
    let mut p = Parser::new(status);
    let _ok = p.atom()?;
    p.skip_sp();
    if p.peek() != Some(b'[') {
        return Ok(None);
    }
    p.i += 1;
    let code = p.atom()?;
    if !code.eq_ignore_ascii_case(b"APPENDUID") {
        return Ok(None);
    }
    let _validity = p.number()?;
    p.skip_sp();
    let set = p.atom()?;
    let bad = || anyhow!("bad APPENDUID in {:?}", lossy(status));
    let mut uids = Vec::new();
    for range in std::str::from_utf8(&set).map_err(|_| bad())?.split(',') {
        let (a, b) = range.split_once(':').unwrap_or((range, range));
        let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if a <= b {
            uids.extend(a..=b);
        } else {
            uids.extend((b..=a).rev());
        }
    }
    Ok(Some(uids))
}

/// Reads one response: a line, and when it ends in a literal `{N}`, exactly N bytes and the
/// rest of the response, as many times as it takes. The wire bytes, literals inline.
fn read_response(r: &mut impl BufRead) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let start = out.len();
        if r.read_until(b'\n', &mut out)? == 0 {
            if out.is_empty() {
                bail!("the IMAP server closed the connection");
            }
            bail!("the IMAP server closed the connection in {:?}", lossy(&out));
        }
        let Some(n) = literal_size(&out[start..]) else { return Ok(out) };
        let at = out.len();
        out.resize(at + n, 0);
        r.read_exact(&mut out[at..]).context("the IMAP server closed the connection in a literal")?;
    }
}

/// `N` when `line` ends in `{N}` or `{N+}` and CRLF (or LF).
fn literal_size(line: &[u8]) -> Option<usize> {
    let l = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n"))?;
    let l = l.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let digits = l[open + 1..].strip_suffix(b"+").unwrap_or(&l[open + 1..]);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Merges the FETCH responses (a server may send several per message, e.g. an unsolicited
/// FLAGS update) by sequence number; every message must have its UID and BODY[].
fn collect_fetches(untagged: &[Vec<u8>]) -> anyhow::Result<Vec<Fetched>> {
    #[derive(Default)]
    struct Partial {
        uid: Option<u32>,
        flags: Option<Vec<String>>,
        body: Option<Vec<u8>>,
    }
    let mut by_seq: std::collections::BTreeMap<u32, Partial> = Default::default();
    for u in untagged {
        let mut p = Parser::new(u);
        let Kind::Numbered(seq, what) = p.untagged_kind()? else { continue };
        if !what.eq_ignore_ascii_case(b"FETCH") {
            continue;
        }
        let Val::List(items) = p.value()? else { bail!("FETCH without a list: {}", lossy(u)) };
        let m = by_seq.entry(seq).or_default();
        let mut it = items.into_iter();
        while let Some(name) = it.next() {
            let name = name.bytes().with_context(|| format!("bad FETCH item in {}", lossy(u)))?.to_ascii_uppercase();
            let value = it.next().with_context(|| format!("FETCH item without a value in {}", lossy(u)))?;
            match name.as_slice() {
                b"UID" => m.uid = Some(value.number().with_context(|| format!("bad UID in {}", lossy(u)))?),
                b"FLAGS" => {
                    let flags = value.atoms().with_context(|| format!("bad FLAGS in {}", lossy(u)))?;
                    m.flags = Some(flags.into_iter().filter(|f| !f.eq_ignore_ascii_case("\\Recent")).collect());
                }
                b"BODY[]" => {
                    m.body = Some(match value {
                        Val::Nil => Vec::new(),
                        v => v.bytes().with_context(|| format!("bad BODY[] in {}", lossy(u)))?.to_vec(),
                    });
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::with_capacity(by_seq.len());
    for (seq, m) in by_seq {
        let uid = m.uid.with_context(|| format!("no UID for message {seq}"))?;
        let body = m.body.with_context(|| format!("no BODY[] for message {seq} (UID {uid})"))?;
        out.push(Fetched { uid, flags: m.flags.unwrap_or_default(), body });
    }
    out.sort_by_key(|f| f.uid);
    Ok(out)
}

/// A parsed IMAP value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Atom(Vec<u8>),
    /// A quoted string (unescaped) or a literal.
    Str(Vec<u8>),
    Nil,
    List(Vec<Val>),
}

impl Val {
    /// The bytes of an atom or string.
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Val::Atom(b) | Val::Str(b) => Some(b),
            _ => None,
        }
    }
    fn number(&self) -> Option<u32> {
        match self {
            Val::Atom(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
    /// A list of atoms (flags, LIST attributes) as strings.
    fn atoms(&self) -> Option<Vec<String>> {
        let Val::List(items) = self else { return None };
        items.iter().map(|v| v.bytes().map(|b| String::from_utf8_lossy(b).into_owned())).collect()
    }
}

/// What an untagged response is: `* 5 FETCH` or `* LIST`.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Numbered(u32, Vec<u8>),
    Named(Vec<u8>),
    Other,
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn new(b: &'a [u8]) -> Parser<'a> {
        Parser { b, i: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }

    fn err(&self, what: &str) -> anyhow::Error {
        anyhow!("IMAP parse error ({what}) at byte {} of {:?}", self.i, lossy(&self.b[..self.b.len().min(300)]))
    }

    /// Reads `* N KIND` or `* KIND`, leaving the position after it.
    fn untagged_kind(&mut self) -> anyhow::Result<Kind> {
        if !self.b.starts_with(b"* ") {
            return Ok(Kind::Other);
        }
        self.i = 2;
        let first = self.atom()?;
        if first.iter().all(u8::is_ascii_digit) {
            let n = std::str::from_utf8(&first)?.parse().map_err(|_| self.err("number"))?;
            self.skip_sp();
            return Ok(Kind::Numbered(n, self.atom()?.to_ascii_uppercase()));
        }
        Ok(Kind::Named(first.to_ascii_uppercase()))
    }

    /// The next space-separated atom, or `None` at the end of the line.
    fn next_atom(&mut self) -> Option<Vec<u8>> {
        self.skip_sp();
        self.atom().ok()
    }

    fn number(&mut self) -> anyhow::Result<u32> {
        self.skip_sp();
        let a = self.atom()?;
        std::str::from_utf8(&a).ok().and_then(|s| s.parse().ok()).ok_or_else(|| self.err("number"))
    }

    /// An atom; a `[...]` inside it (a section, `BODY[HEADER.FIELDS (A B)]`) is part of it,
    /// spaces and parentheses included.
    fn atom(&mut self) -> anyhow::Result<Vec<u8>> {
        let start = self.i;
        let mut depth = 0usize;
        while let Some(c) = self.peek() {
            match c {
                b'[' => depth += 1,
                b']' if depth > 0 => depth -= 1,
                b' ' | b'(' | b')' | b'"' | b'{' | b'\r' | b'\n' if depth == 0 => break,
                b']' => break,
                _ => {}
            }
            self.i += 1;
        }
        if self.i == start {
            return Err(self.err("atom expected"));
        }
        Ok(self.b[start..self.i].to_vec())
    }

    fn value(&mut self) -> anyhow::Result<Val> {
        self.skip_sp();
        match self.peek() {
            None => Err(self.err("value expected")),
            Some(b'(') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_sp();
                    match self.peek() {
                        Some(b')') => {
                            self.i += 1;
                            return Ok(Val::List(items));
                        }
                        None | Some(b'\r') | Some(b'\n') => return Err(self.err("unclosed list")),
                        _ => items.push(self.value()?),
                    }
                }
            }
            Some(b'"') => {
                self.i += 1;
                let mut s = Vec::new();
                loop {
                    match self.peek() {
                        None | Some(b'\r') | Some(b'\n') => return Err(self.err("unclosed quoted string")),
                        Some(b'"') => {
                            self.i += 1;
                            return Ok(Val::Str(s));
                        }
                        Some(b'\\') => {
                            let c = self.b.get(self.i + 1).copied().ok_or_else(|| self.err("escape"))?;
                            s.push(c);
                            self.i += 2;
                        }
                        Some(c) => {
                            s.push(c);
                            self.i += 1;
                        }
                    }
                }
            }
            Some(b'{') => {
                let close = self.b[self.i..].iter().position(|&c| c == b'}').ok_or_else(|| self.err("literal"))?;
                let spec = &self.b[self.i + 1..self.i + close];
                let digits = spec.strip_suffix(b"+").unwrap_or(spec);
                let n: usize = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .ok_or_else(|| self.err("literal size"))?;
                self.i += close + 1;
                if self.b[self.i..].starts_with(b"\r\n") {
                    self.i += 2;
                } else if self.b[self.i..].starts_with(b"\n") {
                    self.i += 1;
                } else {
                    return Err(self.err("literal without CRLF"));
                }
                let bytes = self.b.get(self.i..self.i + n).ok_or_else(|| self.err("short literal"))?.to_vec();
                self.i += n;
                Ok(Val::Str(bytes))
            }
            Some(_) => {
                let a = self.atom()?;
                Ok(if a.eq_ignore_ascii_case(b"NIL") { Val::Nil } else { Val::Atom(a) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn responses(wire: &[u8]) -> Vec<Vec<u8>> {
        let mut r = std::io::Cursor::new(wire.to_vec());
        let mut out = Vec::new();
        while (r.position() as usize) < wire.len() {
            out.push(read_response(&mut r).unwrap());
        }
        out
    }

    #[test]
    fn fetch_items_in_any_order_and_bodies_that_look_like_items() {
        let body1 = b"Subject: UID 99\r\n\r\n* 7 FETCH (UID 7 FLAGS (\\Deleted))\r\nBODY[] {3}\r\n)";
        let body2 = b"x";
        let mut wire = Vec::new();
        // Cyrus's order: FLAGS, then UID, then the body.
        wire.extend_from_slice(
            format!("* 1 FETCH (FLAGS (\\Seen $MyUID \\Recent) UID 4 BODY[] {{{}}}\r\n", body1.len()).as_bytes(),
        );
        wire.extend_from_slice(body1);
        wire.extend_from_slice(b")\r\n");
        // Dovecot's: UID first; a quoted body; an unsolicited FLAGS update for message 1.
        wire.extend_from_slice(b"* 2 FETCH (UID 9 BODY[] \"x\" FLAGS ())\r\n");
        wire.extend_from_slice(b"* 1 FETCH (FLAGS (\\Seen liquid))\r\n");
        wire.extend_from_slice(b"* 3 FETCH (UID 12 MODSEQ (5) BODY[] NIL FLAGS (\\Flagged))\r\n");
        let got = collect_fetches(&responses(&wire)).unwrap();
        assert_eq!(
            got,
            vec![
                Fetched { uid: 4, flags: vec!["\\Seen".into(), "liquid".into()], body: body1.to_vec() },
                Fetched { uid: 9, flags: vec![], body: body2.to_vec() },
                Fetched { uid: 12, flags: vec!["\\Flagged".into()], body: vec![] },
            ]
        );
    }

    #[test]
    fn a_fetch_without_its_body_is_an_error() {
        let r = responses(b"* 1 FETCH (UID 3 FLAGS (\\Seen))\r\n");
        assert!(collect_fetches(&r).is_err());
    }

    #[test]
    fn list_names_as_atoms_quoted_strings_and_literals() {
        for (line, name) in [
            (&b"* LIST (\\HasNoChildren) \"/\" Entw&APw-rfe\r\n"[..], &b"Entw&APw-rfe"[..]),
            (b"* LIST (\\Noselect \\HasChildren) \".\" \"INBOX.a b\\\"c\"\r\n", b"INBOX.a b\"c"),
            (b"* LIST () NIL {5}\r\na)b c\r\n", b"a)b c"),
        ] {
            let r = responses(line);
            let mut p = Parser::new(&r[0]);
            assert_eq!(p.untagged_kind().unwrap(), Kind::Named(b"LIST".to_vec()));
            let _attrs = p.value().unwrap();
            let _delim = p.value().unwrap();
            assert_eq!(p.value().unwrap().bytes().unwrap(), name);
        }
    }

    #[test]
    fn sections_are_one_atom() {
        let mut p = Parser::new(b"(BODY[HEADER.FIELDS (FROM TO)] {2}\r\nab UID 3)");
        let Val::List(items) = p.value().unwrap() else { panic!() };
        assert_eq!(items[0], Val::Atom(b"BODY[HEADER.FIELDS (FROM TO)]".to_vec()));
        assert_eq!(items[1], Val::Str(b"ab".to_vec()));
        assert_eq!(items[3].number(), Some(3));
    }

    #[test]
    fn appenduid_and_astrings() {
        assert_eq!(appended_uid(b"OK [APPENDUID 1700000000 42] Append completed.").unwrap(), Some(42));
        assert_eq!(appended_uid(b"OK Append completed.").unwrap(), None);
        assert_eq!(appended_uid(b"OK [READ-WRITE] done").unwrap(), None);
        assert_eq!(appended_uids(b"OK [APPENDUID 7 3:5,9,12:11] done").unwrap(), Some(vec![3, 4, 5, 9, 12, 11]));
        assert!(appended_uids(b"OK [APPENDUID 7 x] done").is_err());
        let Part::Text(q) = astring(b"a \"b\" \\c") else { panic!() };
        assert_eq!(q, b"\"a \\\"b\\\" \\\\c\"");
        assert!(matches!(astring("Entwürfe".as_bytes()), Part::Literal(_)));
        assert_eq!(literal_size(b"* 1 FETCH (BODY[] {12}\r\n"), Some(12));
        assert_eq!(literal_size(b"a1 APPEND x {12+}\r\n"), Some(12));
        assert_eq!(literal_size(b"* OK {x}\r\n"), None);
    }
}
