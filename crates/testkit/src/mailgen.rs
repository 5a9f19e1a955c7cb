//! Deterministic RFC 5322 test messages (seeded, CRLF line ends, no `rand` crate).

use base64::Engine;

/// xorshift64* seeded through splitmix64: tiny, deterministic on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % hi.saturating_sub(lo).max(1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64) as usize]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

const WORDS: &[&str] = &[
    "mail", "sync", "report", "meeting", "invoice", "status", "server", "backup", "folder", "project", "review",
    "release", "budget", "quarter", "notes", "agenda", "update", "draft", "deadline", "customer", "the", "and", "of",
    "to", "a", "in", "is", "for", "on", "with",
];

/// Non-ASCII subjects, sent RFC 2047 encoded.
const UTF8_SUBJECTS: &[&str] = &["Привет", "日本語のテスト", "Grüße aus Köln", "🎉 party 📬"];

const NAMES: &[&str] = &["Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi"];

/// Message `i` of a plain text mailbox: 2–8 KB body, Message-ID `<seed.i@backproc.test>`.
pub fn text_message(seed: u64, i: usize) -> Vec<u8> {
    let mut rng = rng_for(seed, i);
    let h = headers(&mut rng, seed, i);
    let n = rng.range(2_000, 8_000) as usize;
    let body = words(&mut rng, n);
    build(&h, &body)
}

/// `n` messages for mailbox `seed`: ~70% 2–8 KB text, ~25% 20–80 KB with a base64 attachment
/// (multipart/mixed), ~5% 200 KB–1 MB; about one subject in eight is non-ASCII (RFC 2047).
pub fn mailbox(seed: u64, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| message(seed, i)).collect()
}

/// Message `i` of [`mailbox`]`(seed, _)`.
pub fn message(seed: u64, i: usize) -> Vec<u8> {
    let mut rng = rng_for(seed, i);
    let kind = rng.range(0, 100);
    if kind < 70 {
        return text_message(seed, i);
    }
    let size = if kind < 95 { rng.range(20_000, 80_000) } else { rng.range(200_000, 1_000_000) } as usize;
    let h = headers(&mut rng, seed, i);
    let text = words(&mut rng, 600);
    let data = rng.bytes(size * 3 / 4);
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let boundary = format!("=_backproc_{seed}_{i}");
    let mut body = format!(
        "This is a multi-part message in MIME format.\r\n\r\n--{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n--{boundary}\r\n\
         Content-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=\"data-{i}.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n"
    );
    for line in b64.as_bytes().chunks(76) {
        body.push_str(std::str::from_utf8(line).unwrap_or_default());
        body.push_str("\r\n");
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    let h = Headers { content_type: format!("multipart/mixed; boundary=\"{boundary}\""), ..h };
    build(&h, &body)
}

/// A single-part text/plain message with exactly these fields. `subject` may be non-ASCII (it
/// is RFC 2047 encoded); `message_id` gets angle brackets if it has none; `body` line ends
/// become CRLF.
pub fn message_with(subject: &str, from: &str, to: &str, date_rfc2822: &str, message_id: &str, body: &str) -> Vec<u8> {
    let message_id = if message_id.starts_with('<') { message_id.to_string() } else { format!("<{message_id}>") };
    let h = Headers {
        from: from.to_string(),
        to: to.to_string(),
        subject: encode_header(subject),
        date: date_rfc2822.to_string(),
        message_id,
        content_type: "text/plain; charset=utf-8".into(),
    };
    let mut crlf = String::with_capacity(body.len() + body.len() / 40);
    for line in body.lines() {
        crlf.push_str(line);
        crlf.push_str("\r\n");
    }
    build(&h, &crlf)
}

/// RFC 2047 `B` encoding of a header value when it is not plain ASCII, split into encoded
/// words of at most 75 characters (never inside a UTF-8 sequence) folded onto new lines.
pub fn encode_header(value: &str) -> String {
    if value.is_ascii() {
        return value.to_string();
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in value.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    words.push(chunk);
    words
        .iter()
        .map(|w| {
            let b = base64::engine::general_purpose::STANDARD.encode(w);
            format!("=?UTF-8?B?{b}?=")
        })
        .collect::<Vec<_>>()
        .join("\r\n ")
}

struct Headers {
    from: String,
    to: String,
    subject: String,
    date: String,
    message_id: String,
    content_type: String,
}

fn rng_for(seed: u64, i: usize) -> Rng {
    Rng::new(seed.wrapping_mul(0x100_0000_01b3) ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn headers(rng: &mut Rng, seed: u64, i: usize) -> Headers {
    let subject = if rng.range(0, 8) == 0 {
        encode_header(&format!("{} #{i}", rng.pick(UTF8_SUBJECTS)))
    } else {
        format!("{} {} #{i}", rng.pick(WORDS), rng.pick(WORDS))
    };
    let sender = *rng.pick(NAMES);
    // 2024-01-01 plus i hours and some minutes: dates rise with i, like a real mailbox.
    let ts = 1_704_067_200 + i as i64 * 3600 + rng.range(0, 3600) as i64;
    let date = chrono::DateTime::from_timestamp(ts, 0).map(|d| d.to_rfc2822()).unwrap_or_default();
    Headers {
        from: format!("{sender} <{}@sender.backproc.test>", sender.to_lowercase()),
        to: "User <user@backproc.test>".into(),
        subject,
        date,
        message_id: format!("<{seed}.{i}@backproc.test>"),
        content_type: "text/plain; charset=utf-8".into(),
    }
}

fn build(h: &Headers, body: &str) -> Vec<u8> {
    format!(
        "From: {}\r\nTo: {}\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: {}\r\nMIME-Version: 1.0\r\n\
         Content-Type: {}\r\n\r\n{body}",
        h.from, h.to, h.subject, h.date, h.message_id, h.content_type
    )
    .into_bytes()
}

/// About `n` bytes of words in lines of at most ~72 characters, CRLF-terminated.
fn words(rng: &mut Rng, n: usize) -> String {
    let mut s = String::with_capacity(n + 80);
    let mut col = 0;
    while s.len() < n {
        let w = rng.pick(WORDS);
        if col > 0 && col + w.len() > 72 {
            s.push_str("\r\n");
            col = 0;
        } else if col > 0 {
            s.push(' ');
            col += 1;
        }
        s.push_str(w);
        col += w.len();
    }
    s.push_str("\r\n");
    s
}

/// The flags and keywords the servers' tests append message `i` of a folder with: a mix
/// (keywords ending in "uid" among them, for Cyrus's FETCH order), and some with none.
pub fn flags_for(i: usize) -> Vec<&'static str> {
    let mut f = Vec::new();
    if i.is_multiple_of(3) {
        f.push("\\Seen");
    }
    if i % 4 == 1 {
        f.push("$MyUID");
    }
    if i % 5 == 2 {
        f.push("liquid");
    }
    if i % 7 == 3 {
        f.push("$Label1");
    }
    if i % 6 == 4 {
        f.push("NonJunk");
    }
    if i.is_multiple_of(11) {
        f.push("\\Flagged");
    }
    if i % 13 == 5 {
        f.push("\\Answered");
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare_lf(m: &[u8]) -> bool {
        m.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || m[i - 1] != b'\r'))
    }

    #[test]
    fn deterministic_mixed_and_crlf() {
        let a = mailbox(7, 400);
        assert_eq!(a, mailbox(7, 400));
        assert_ne!(message(7, 0), message(8, 0));
        let small = a.iter().filter(|m| m.len() < 9_000).count();
        let mid = a.iter().filter(|m| (20_000..90_000).contains(&m.len())).count();
        let big = a.iter().filter(|m| m.len() > 200_000).count();
        assert!((230..330).contains(&small), "{small}");
        assert!((60..150).contains(&mid), "{mid}");
        assert!((5..40).contains(&big), "{big}");
        assert!(a.iter().all(|m| !bare_lf(m)));
        assert!(a.iter().any(|m| m.windows(10).any(|w| w == b"=?UTF-8?B?")));
        let t = String::from_utf8(text_message(3, 9)).unwrap();
        assert!(t.contains("Message-ID: <3.9@backproc.test>\r\n"), "{t}");
        assert!((2_000..9_000).contains(&t.len()));
    }

    #[test]
    fn message_with_fields() {
        let m = message_with("Привет", "a@x.test", "b@x.test", "Mon, 1 Jan 2024 00:00:00 +0000", "id@x", "l1\nl2");
        let m = String::from_utf8(m).unwrap();
        assert!(m.contains("Subject: =?UTF-8?B?0J/RgNC40LLQtdGC?=\r\n"), "{m}");
        assert!(m.contains("Message-ID: <id@x>\r\n"));
        assert!(m.ends_with("\r\n\r\nl1\r\nl2\r\n"));
        assert!(!bare_lf(m.as_bytes()));
    }
}
