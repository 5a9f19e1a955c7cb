//! Building outgoing messages with lettre's builder, or taking a ready .eml.

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};

use crate::{Error, ErrorKind, err};

/// What `outbox add` was given.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    /// (file name, bytes)
    pub attachments: Vec<(String, Vec<u8>)>,
    /// Without the angle brackets, e.g. "1234.abcd@host".
    pub message_id: String,
}

fn bad(detail: String) -> Error {
    err(ErrorKind::Permanent, detail)
}

fn mailbox(what: &str, s: &str) -> Result<Mailbox, Error> {
    if s.chars().any(|c| c.is_control()) {
        return Err(bad(format!("invalid {what} address {s:?}: control characters")));
    }
    s.parse().map_err(|e| bad(format!("invalid {what} address {s:?}: {e}")))
}

/// Longest ASCII word of a subject (a header line holds 998 characters, "Subject: " included).
const MAX_SUBJECT_WORD: usize = 900;

/// Builds the message (the Bcc header is left out; Bcc recipients are in the envelope).
/// Returns the raw bytes and the envelope recipients.
pub fn build_message(d: &Draft) -> Result<(Vec<u8>, Vec<String>), Error> {
    if d.subject.contains(['\r', '\n']) {
        return Err(bad("the subject must be one line".into()));
    }
    // lettre folds a header only at spaces and encodes only non-ASCII text, so a longer ASCII
    // word would make a line over RFC 5322's 998 characters, which servers refuse at the end of
    // DATA ("500 Line too long"): refuse it here, when it is queued.
    if let Some(w) = d.subject.split([' ', '\t']).find(|w| w.is_ascii() && w.len() > MAX_SUBJECT_WORD) {
        return Err(bad(format!(
            "the subject has a word of {} characters without a space; at most {MAX_SUBJECT_WORD} fit in a header line",
            w.len()
        )));
    }
    if d.to.is_empty() && d.cc.is_empty() && d.bcc.is_empty() {
        return Err(bad("a message needs at least one recipient".into()));
    }
    let mut b = lettre::Message::builder()
        .from(mailbox("sender", &d.from)?)
        .subject(d.subject.clone())
        .message_id(Some(format!("<{}>", d.message_id)));
    let mut rcpts = Vec::new();
    for (what, list) in [("To", &d.to), ("Cc", &d.cc), ("Bcc", &d.bcc)] {
        for a in list {
            let m = mailbox(what, a)?;
            rcpts.push(m.email.to_string());
            b = match what {
                "To" => b.to(m),
                "Cc" => b.cc(m),
                _ => b.bcc(m),
            };
        }
    }
    let text = SinglePart::plain(d.text.clone());
    let body = match &d.html {
        Some(h) => MultiPart::alternative().singlepart(text).singlepart(SinglePart::html(h.clone())),
        None if d.attachments.is_empty() => {
            let m = b.singlepart(text).map_err(|e| bad(format!("cannot build the message: {e}")))?;
            return Ok((m.formatted(), rcpts));
        }
        None => MultiPart::mixed().singlepart(text),
    };
    let body = if d.attachments.is_empty() {
        body
    } else {
        let mut mixed = MultiPart::mixed().multipart(body);
        for (name, bytes) in &d.attachments {
            let ct = ContentType::parse("application/octet-stream").map_err(|e| bad(e.to_string()))?;
            mixed = mixed.singlepart(Attachment::new(name.clone()).body(bytes.clone(), ct));
        }
        mixed
    };
    let m = b.multipart(body).map_err(|e| bad(format!("cannot build the message: {e}")))?;
    Ok((m.formatted(), rcpts))
}

/// Takes a ready message: keeps its Message-ID or adds `message_id`; drops a Bcc header.
/// Returns the bytes and the Message-ID used (without brackets).
pub fn read_eml(raw: &[u8], message_id: &str) -> Result<(Vec<u8>, String), Error> {
    let split = find(raw, b"\r\n\r\n").map(|i| i + 2).or_else(|| find(raw, b"\n\n").map(|i| i + 1));
    let Some(header_end) = split else {
        return Err(bad("the .eml file has no header/body separator (empty line)".into()));
    };
    let (head, body) = raw.split_at(header_end);
    let text = String::from_utf8_lossy(head);
    let mut out = Vec::with_capacity(raw.len() + 64);
    let mut id = None;
    let mut skipping = false;
    for line in text.split_inclusive('\n') {
        let continuation = line.starts_with([' ', '\t']);
        if !continuation {
            let name = line.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
            skipping = name == "bcc";
            if name == "message-id" {
                id = line
                    .split_once(':')
                    .map(|(_, v)| v.trim().trim_start_matches('<').trim_end_matches('>').to_owned());
            }
        }
        if !skipping {
            out.extend_from_slice(line.as_bytes());
        }
    }
    let id = match id.filter(|i| !i.is_empty()) {
        Some(i) => i,
        None => {
            let mut with = format!("Message-ID: <{message_id}>\r\n").into_bytes();
            with.extend_from_slice(&out);
            out = with;
            message_id.to_owned()
        }
    };
    out.extend_from_slice(body);
    Ok((out, id))
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_with_bcc_only_in_the_envelope() {
        let d = Draft {
            from: "Alice <alice@x.test>".into(),
            to: vec!["b@x.test".into()],
            cc: vec!["c@x.test".into()],
            bcc: vec!["hidden@x.test".into()],
            subject: "Привет".into(),
            text: "hello".into(),
            message_id: "42.abc@backproc".into(),
            ..Draft::default()
        };
        let (raw, rcpts) = build_message(&d).unwrap();
        let s = String::from_utf8_lossy(&raw);
        assert!(s.contains("Message-ID: <42.abc@backproc>"), "{s}");
        assert!(!s.to_ascii_lowercase().contains("bcc"), "{s}");
        assert!(!s.contains("hidden@x.test"));
        assert_eq!(rcpts, vec!["b@x.test", "c@x.test", "hidden@x.test"]);
    }

    #[test]
    fn header_injection_is_refused() {
        let d = Draft {
            from: "a@x.test".into(),
            to: vec!["b@x.test\r\nBcc: evil@x.test".into()],
            subject: "s".into(),
            message_id: "1@x".into(),
            ..Draft::default()
        };
        assert!(build_message(&d).is_err());
        let d = Draft { to: vec!["b@x.test".into()], subject: "s\r\nBcc: evil@x.test".into(), ..d };
        assert!(build_message(&d).is_err());
        // a word too long to fit a header line is refused; long subjects with spaces fold
        let d = Draft { subject: "b".repeat(901), ..d };
        assert!(build_message(&d).unwrap_err().to_string().contains("word of 901 characters"));
        let d = Draft { subject: "word ".repeat(2000), ..d };
        let (raw, _) = build_message(&d).unwrap();
        assert!(raw.split(|&b| b == b'\n').all(|l| l.len() <= 998));
    }

    #[test]
    fn eml_keeps_or_adds_message_id_and_drops_bcc() {
        let (out, id) =
            read_eml(b"Subject: x\r\nBcc: h@x.test,\r\n  h2@x.test\r\nMessage-ID: <keep@x>\r\n\r\nbody", "new@x")
                .unwrap();
        assert_eq!(id, "keep@x");
        assert_eq!(String::from_utf8_lossy(&out), "Subject: x\r\nMessage-ID: <keep@x>\r\n\r\nbody");
        let (out, id) = read_eml(b"Subject: y\r\n\r\nbody", "new@x").unwrap();
        assert_eq!(id, "new@x");
        assert!(out.starts_with(b"Message-ID: <new@x>\r\nSubject: y"));
        assert!(read_eml(b"no separator", "n@x").is_err());
    }
}
