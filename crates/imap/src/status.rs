//! STATUS of several folders in one write, read on the session's raw transport like
//! `crate::fetch`.
//!
//! Why: a no-change resync asks every due folder for its STATUS. One command at a time, that
//! was one round trip per folder, one after the other, and a slow answer (a 14,000-message
//! Maildir INBOX: ~5 ms of the server's time) held up everything behind it. Sent together
//! (RFC 3501 §5.5 lets a client pipeline commands), the server works through them while we
//! work on the first folders.
//!
//! Answers are matched to folders by the mailbox name in `* STATUS`, not by their order: untagged
//! data is not tied to a tag. A name is sent quoted and read back as an atom, a quoted string or a
//! literal, so names with `"` or `\` work too (the imap crate, which compares the answer's name
//! with the escaped one, never found those).

use std::io::{Read, Write};

use crate::fetch::{FetchError, Reader, literal_size};
use crate::plan::ServerStatus;

/// A mailbox name longer than this in a STATUS answer is refused (a hostile server cannot
/// make us allocate more).
const NAME_MAX: usize = 64 * 1024;

/// One folder's answer: its status, or the server's refusal (the NO or BAD text).
pub type Answer = Result<ServerStatus, String>;

/// `name` as an IMAP quoted string (RFC 3501 §4.3), or None when it cannot be one (CR, LF,
/// NUL or 8-bit characters, never in a modified UTF-7 name).
pub fn quoted(name: &str) -> Option<String> {
    if name.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0) || !b.is_ascii()) {
        return None;
    }
    let mut q = String::with_capacity(name.len() + 2);
    q.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    Some(q)
}

/// Sends `tags[i] STATUS names[i] items` for every name in one write and reads all the
/// answers, in the order of `names`. Every name must be `quoted`-able.
pub fn status_many<T: Read + Write>(
    conn: &mut T,
    tags: &[String],
    names: &[&str],
    items: &str,
) -> Result<Vec<Answer>, FetchError> {
    send_status(conn, tags, names, items)?;
    read_status(conn, tags, names)
}

/// The sending half of `status_many`: nothing else may be read from `conn` until
/// `read_status` has read the answers.
pub fn send_status<T: Write>(conn: &mut T, tags: &[String], names: &[&str], items: &str) -> Result<(), FetchError> {
    debug_assert_eq!(tags.len(), names.len());
    let mut out = String::new();
    for (tag, name) in tags.iter().zip(names) {
        let q = quoted(name).ok_or_else(|| FetchError::Invalid(format!("cannot quote the folder name {name:?}")))?;
        out.push_str(&format!("{tag} STATUS {q} {items}\r\n"));
    }
    conn.write_all(out.as_bytes())?;
    conn.flush()?;
    Ok(())
}

/// The reading half of `status_many`: every answer to the STATUS commands `send_status`
/// sent with `tags` for `names`.
pub fn read_status<T: Read>(conn: &mut T, tags: &[String], names: &[&str]) -> Result<Vec<Answer>, FetchError> {
    let mut r = Reader::new(conn, 16 * 1024);
    let mut done: Vec<Option<Result<(), String>>> = vec![None; names.len()];
    let mut seen: Vec<(Vec<u8>, ServerStatus)> = Vec::new();
    while done.iter().any(Option::is_none) {
        let first = r.line()?;
        if first.starts_with(b"* BYE") {
            return Err(FetchError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                String::from_utf8_lossy(&first).trim().to_owned(),
            )));
        }
        if let Some(i) = tags.iter().position(|t| first.starts_with(format!("{t} ").as_bytes())) {
            let text = String::from_utf8_lossy(&first[tags[i].len() + 1..]).trim().to_owned();
            done[i] = Some(if text.to_ascii_uppercase().starts_with("OK") { Ok(()) } else { Err(text) });
            continue;
        }
        // One untagged response: its text, with the literal (a mailbox name) that may follow.
        let mut head = first;
        let mut literal = None;
        if let Some(n) = literal_size(&head) {
            if n > NAME_MAX {
                return Err(FetchError::Invalid(format!("a {n}-byte mailbox name in a STATUS answer")));
            }
            let mut bytes = Vec::new();
            r.exact(n, &mut bytes)?;
            head.truncate(head.iter().rposition(|&b| b == b'{').unwrap_or(0));
            literal = Some((bytes, r.line()?));
            if literal_size(&literal.as_ref().expect("just set").1).is_some() {
                return Err(FetchError::Invalid("a second literal in a STATUS answer".into()));
            }
        }
        if let Some(answer) = parse_status(&head, literal.as_ref().map(|(n, t)| (n.as_slice(), t.as_slice()))) {
            seen.push(answer);
        }
    }
    if r.has_unread() {
        return Err(FetchError::Invalid("unexpected data after the STATUS answers".into()));
    }
    Ok(names
        .iter()
        .zip(done)
        .map(|(name, d)| {
            d.expect("every tag answered")?;
            let found = seen.iter().find(|(n, _)| same_mailbox(n, name)).map(|(_, s)| *s);
            // One folder asked, one answer: whatever spelling the server chose, it is that one.
            let only = (names.len() == 1 && seen.len() == 1).then(|| seen[0].1);
            found.or(only).ok_or_else(|| "the server sent no STATUS data for the folder".to_owned())
        })
        .collect())
}

/// INBOX is case-insensitive; every other name is compared byte for byte.
fn same_mailbox(answer: &[u8], name: &str) -> bool {
    answer == name.as_bytes() || (crate::is_inbox(name.as_bytes()) && crate::is_inbox(answer))
}

/// `* STATUS name (MESSAGES 3 UIDNEXT 9 …)`, the name an atom or a quoted string in `head`,
/// or a literal: then `literal` holds its bytes and the rest of the line. None for any other
/// untagged response.
fn parse_status(head: &[u8], literal: Option<(&[u8], &[u8])>) -> Option<(Vec<u8>, ServerStatus)> {
    const PREFIX: &[u8] = b"* STATUS ";
    if head.len() < PREFIX.len() || !head[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let rest = &head[PREFIX.len()..];
    let (name, items) = match literal {
        Some((name, after)) => (name.to_vec(), after),
        None if rest.first() == Some(&b'"') => {
            let mut name = Vec::new();
            let mut i = 1;
            loop {
                match *rest.get(i)? {
                    b'\\' => {
                        name.push(*rest.get(i + 1)?);
                        i += 2;
                    }
                    b'"' => break,
                    b => {
                        name.push(b);
                        i += 1;
                    }
                }
            }
            (name, &rest[i + 1..])
        }
        None => {
            let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
            (rest[..end].to_vec(), &rest[end..])
        }
    };
    let open = items.iter().position(|&b| b == b'(')?;
    let close = items.iter().rposition(|&b| b == b')')?;
    let text = std::str::from_utf8(items.get(open + 1..close)?).ok()?;
    let mut s = ServerStatus::default();
    let mut words = text.split_ascii_whitespace();
    while let (Some(key), Some(value)) = (words.next(), words.next()) {
        match key.to_ascii_uppercase().as_str() {
            "MESSAGES" => s.exists = value.parse().ok()?,
            "UIDNEXT" => s.uidnext = value.parse().ok()?,
            "UIDVALIDITY" => s.uidvalidity = value.parse().ok()?,
            "HIGHESTMODSEQ" => s.highest_modseq = Some(value.parse().ok()?),
            _ => {} // RECENT, UNSEEN, SIZE…: not asked, ignored
        }
    }
    Some((name, s))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    use crate::testio::Fake;

    fn run(names: &[&str], reply: &[u8], chunk: usize) -> (Result<Vec<Answer>, FetchError>, String) {
        let mut f = Fake { reply: Cursor::new(reply.to_vec()), sent: Vec::new(), chunk };
        let tags: Vec<String> = (1..=names.len()).map(|i| format!("r{i}")).collect();
        let r = status_many(&mut f, &tags, names, "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)");
        (r, String::from_utf8(f.sent).unwrap())
    }

    fn st(exists: u32, uidnext: u32, uidvalidity: u32, modseq: Option<u64>) -> ServerStatus {
        ServerStatus { exists, uidnext, uidvalidity, highest_modseq: modseq }
    }

    #[test]
    fn one_write_for_all_and_answers_matched_by_name_in_any_order_and_chunking() {
        let reply = b"* STATUS \"a \\\"q\\\" \\\\b\" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY 4 HIGHESTMODSEQ 5)\r\n\
r2 OK done\r\n\
* 4 EXISTS\r\n\
* STATUS inbox (MESSAGES 14000 UIDNEXT 14001 UIDVALIDITY 7 HIGHESTMODSEQ 18446744073709551615)\r\n\
r1 OK done\r\n";
        for chunk in [1, 3, 17, 1 << 16] {
            let (r, sent) = run(&["INBOX", "a \"q\" \\b"], reply, chunk);
            assert_eq!(
                sent,
                "r1 STATUS \"INBOX\" (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)\r\n\
r2 STATUS \"a \\\"q\\\" \\\\b\" (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)\r\n"
            );
            let r = r.unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
            assert_eq!(r[0], Ok(st(14000, 14001, 7, Some(u64::MAX))), "chunk {chunk}");
            assert_eq!(r[1], Ok(st(2, 3, 4, Some(5))), "chunk {chunk}");
        }
        // an unquotable name is refused before anything is sent
        let (r, sent) = run(&["INBOX", "x\r\ny"], reply, 64);
        assert!(r.is_err() && sent.is_empty());
    }

    #[test]
    fn a_literal_name_and_a_single_answer_under_another_spelling() {
        let reply =
            b"* STATUS {4}\r\nx\r\ny (messages 1 uidnext 2 uidvalidity 3)\r\n* STATUS y (MESSAGES 5)\r\nr1 OK\r\n";
        let mut f = Fake { reply: Cursor::new(reply.to_vec()), sent: Vec::new(), chunk: 2 };
        // (a name with CR LF cannot be sent quoted, but a server may answer with one)
        let got = status_many(&mut f, &["r1".into()], &["y"], "(MESSAGES)").unwrap();
        assert_eq!(got, vec![Ok(st(5, 0, 0, None))]);
        let (r, _) = run(&["x"], b"* STATUS {1}\r\nx (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 3)\r\nr1 OK\r\n", 2);
        assert_eq!(r.unwrap(), vec![Ok(st(1, 2, 3, None))]);
        // one folder asked, one STATUS answered: it is that folder's, whatever the spelling
        let (r, _) = run(&["&AOk-t&AOk-"], b"* STATUS \"&AMk-t&AOk-\" (MESSAGES 1)\r\nr1 OK\r\n", 64);
        assert_eq!(r.unwrap(), vec![Ok(st(1, 0, 0, None))]);
    }

    #[test]
    fn refusals_are_per_folder_and_missing_data_is_a_refusal() {
        let reply = b"r1 NO [NONEXISTENT] Mailbox doesn't exist: Gone\r\n\
* STATUS Other (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 3)\r\nr2 OK\r\nr3 BAD no\r\nr4 OK\r\n";
        let (r, _) = run(&["Gone", "Here", "Bad", "Missing"], reply, 5);
        let r = r.unwrap();
        assert!(r[0].as_ref().unwrap_err().contains("NONEXISTENT"));
        assert!(r[1].as_ref().unwrap_err().contains("no STATUS data"));
        assert!(r[2].as_ref().unwrap_err().starts_with("BAD"));
        assert!(r[3].as_ref().unwrap_err().contains("no STATUS data"));
    }

    #[test]
    fn broken_streams_are_errors_not_panics() {
        let cases: [(&[u8], &str); 5] = [
            (b"* BYE shutting down\r\n", "bye"),
            (b"* STATUS x (MESSAGES 1)\r\n", "connection"),
            (b"* STATUS {99999999}\r\n", "mailbox name"),
            (b"* STATUS {1}\r\nx {2}\r\n", "second literal"),
            (b"r1 OK\r\n* 1 EXISTS\r\n", "unexpected data"),
        ];
        for (reply, want) in cases {
            let (r, _) = run(&["x"], reply, 64);
            let e = r.expect_err(want).to_string().to_lowercase();
            assert!(e.contains(want), "{want}: {e}");
        }
        // garbage in the parenthesis is not a STATUS answer: the folder is left unanswered
        let (r, _) = run(&["x"], b"* STATUS x (MESSAGES many)\r\nr1 OK\r\n", 64);
        assert!(r.unwrap()[0].is_err());
    }
}
