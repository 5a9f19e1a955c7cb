//! Header fields of a downloaded message, read with mail-parser. Never fails: a message
//! that cannot be parsed is stored raw with whatever could be read.

use backproc_store::{Flags, NewMessage};
use mail_parser::{Address, MessageParser};

/// Longest header text we keep in a column (the raw message keeps everything).
const MAX_FIELD: usize = 4096;

fn clip(s: &str) -> String {
    let s: String = s.chars().filter(|c| *c != '\0').collect();
    if s.len() <= MAX_FIELD {
        return s;
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn addresses(a: Option<&Address<'_>>) -> Option<String> {
    let a = a?;
    let one = |name: Option<&str>, addr: Option<&str>| match (name, addr) {
        (Some(n), Some(a)) => format!("{n} <{a}>"),
        (None, Some(a)) => a.to_owned(),
        (Some(n), None) => n.to_owned(),
        (None, None) => String::new(),
    };
    let parts: Vec<String> = match a {
        Address::List(list) => list.iter().map(|x| one(x.name.as_deref(), x.address.as_deref())).collect(),
        Address::Group(groups) => groups
            .iter()
            .flat_map(|g| g.addresses.iter().map(|x| one(x.name.as_deref(), x.address.as_deref())))
            .collect(),
    };
    let s = parts.into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join(", ");
    (!s.is_empty()).then(|| clip(&s))
}

/// Counts parts marked `Content-Disposition: attachment` (or inline parts with a file name),
/// by scanning part headers instead of decoding every part: a full MIME parse base64-decodes
/// every attachment, which was the largest single cost of an initial sync (bench/README.md).
fn count_attachments(raw: &[u8]) -> i64 {
    // A ':' cannot occur inside base64 (most of an attachment's bytes), so a SIMD search for
    // that one byte skips the bodies at memory speed; each hit is then checked to end a
    // "Content-Disposition" header name at a line start. (A two-byte-pair substring search for
    // "isposition:" was 9% of an initial sync's profile: its letters are common in base64.)
    const NAME: &[u8] = b"content-disposition";
    let mut n = 0;
    for at in memchr::memchr_iter(b':', raw) {
        let Some(start) = at.checked_sub(NAME.len()) else { continue };
        let line_start = start == 0 || raw[start - 1] == b'\n';
        if line_start && raw[start..at].eq_ignore_ascii_case(NAME) {
            let value = raw[at + 1..].trim_ascii_start();
            if value.len() >= 10 && value[..10].eq_ignore_ascii_case(b"attachment") {
                n += 1;
            }
        }
    }
    n
}

/// Parses what we index of a message (header fields; attachments counted from part
/// headers); the raw bytes are kept unchanged.
pub fn message(uid: i64, raw: Vec<u8>, flags: Flags, internal_date: Option<i64>) -> NewMessage {
    let mut m = NewMessage { uid, flags, internal_date, ..NewMessage::default() };
    if let Some(p) = MessageParser::default().parse_headers(&raw[..]) {
        m.message_id = p.message_id().map(clip);
        m.subject = p.subject().map(clip);
        m.from = addresses(p.from());
        m.to = addresses(p.to());
        m.cc = addresses(p.cc());
        m.date = p.date().map(|d| d.to_timestamp());
    }
    m.attachments = count_attachments(&raw);
    m.raw = raw;
    m
}

/// The Message-ID of a header block, for re-matching after a UIDVALIDITY change.
pub fn message_id(header: &[u8]) -> Option<String> {
    MessageParser::default().parse_headers(header).and_then(|p| p.message_id().map(clip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_rfc2047_and_addresses() {
        let raw = b"From: =?UTF-8?B?0JjQstCw0L0=?= <ivan@example.ru>\r\nTo: a@x.test, B <b@x.test>\r\n\
Subject: =?UTF-8?B?0J/RgNC40LLQtdGC?=\r\nMessage-ID: <abc@x>\r\nDate: Sun, 12 Jan 2014 22:28:05 +0100\r\n\r\nbody\r\n";
        let m = message(5, raw.to_vec(), Flags::default(), None);
        assert_eq!(m.subject.as_deref(), Some("Привет"));
        assert_eq!(m.from.as_deref(), Some("Иван <ivan@example.ru>"));
        assert_eq!(m.to.as_deref(), Some("a@x.test, B <b@x.test>"));
        assert_eq!(m.message_id.as_deref(), Some("abc@x"));
        assert_eq!(m.date, Some(1389562085));
        assert_eq!(m.raw, raw.to_vec());
    }

    #[test]
    fn attachments_are_counted_from_part_headers() {
        let raw = b"Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n\
--b\r\nContent-Disposition: attachment; filename=a.bin\r\n\r\nAAAA\r\n--b\r\ncontent-disposition:  ATTACHMENT\r\n\r\nBBBB\r\n\
--b\r\nContent-Disposition: inline\r\n\r\nx\r\n--b--\r\n";
        let m = message(1, raw.to_vec(), Flags::default(), None);
        assert_eq!(m.attachments, 2);
        assert_eq!(message(1, b"Subject: none\r\n\r\nbody".to_vec(), Flags::default(), None).attachments, 0);
    }

    /// The fuzz seeds (fuzz/corpus/message_headers) under the fuzz target's properties.
    #[test]
    fn fuzz_seeds_are_kept_raw_with_clipped_fields() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/message_headers");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let raw = std::fs::read(entry.unwrap().path()).unwrap();
            let m = message(1, raw.clone(), Flags::default(), None);
            assert_eq!(m.raw, raw);
            for f in [&m.message_id, &m.subject, &m.from, &m.to, &m.cc].into_iter().flatten() {
                assert!(f.len() <= MAX_FIELD && !f.contains('\0'), "{f:?}");
            }
            assert_eq!(message_id(&raw), m.message_id);
            n += 1;
        }
        assert!(n >= 5, "only {n} seeds in {}", dir.display());
    }

    #[test]
    fn malformed_input_is_kept_raw() {
        let inputs: [&[u8]; 5] = [
            b"",
            b"\0\0\0\xff\xfe",
            b"Subject: \xff\xfe broken\r\nContent-Type: multipart/mixed; boundary=\"x\"\r\n\r\n--x\r\nno end",
            b"Subject: bare\nFrom: lf@only\n\nbody",
            b"no headers at all",
        ];
        for raw in inputs {
            let m = message(1, raw.to_vec(), Flags::default(), Some(7));
            assert_eq!(m.raw, raw.to_vec());
            assert_eq!(m.internal_date, Some(7));
        }
    }
}
