//! IMAP modified UTF-7 folder names (RFC 3501 §5.1.3).
//!
//! Written here rather than taken from a crate because names come from the network and the
//! crates we looked at panic on malformed base64; decoding here never panics and reports
//! invalid input, so the caller can keep the raw name for display.

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn b64_val(c: u8) -> Option<u32> {
    B64.iter().position(|&b| b == c).map(|p| p as u32)
}

/// UTF-8 → modified UTF-7, as sent in IMAP commands.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        out.push('&');
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out.push('-');
        pending.clear();
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Modified UTF-7 → UTF-8; `None` when the input is not valid modified UTF-7.
pub fn decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c != b'&' {
            if !(0x20..=0x7e).contains(&c) {
                return None;
            }
            out.push(c as char);
            i += 1;
            continue;
        }
        let end = i + 1 + bytes[i + 1..].iter().position(|&b| b == b'-')?;
        let run = &bytes[i + 1..end];
        if run.is_empty() {
            out.push('&');
        } else {
            let mut units = Vec::new();
            let (mut acc, mut bits) = (0u32, 0u32);
            for &b in run {
                acc = (acc << 6) | b64_val(b)?;
                bits += 6;
                if bits >= 16 {
                    bits -= 16;
                    units.push(((acc >> bits) & 0xffff) as u16);
                }
            }
            // Leftover bits must be zero padding (fewer than 6 of them).
            if bits >= 6 || acc & ((1 << bits) - 1) != 0 {
                return None;
            }
            let s = String::from_utf16(&units).ok()?;
            // A shifted run must not encode printable ASCII (it would have a direct form).
            if s.chars().any(|c| (' '..='~').contains(&c)) {
                return None;
            }
            out.push_str(&s);
        }
        i = end + 1;
    }
    Some(out)
}

/// The name to show people: decoded, or the raw name when it is not valid modified UTF-7.
pub fn display(raw: &str) -> String {
    decode(raw).unwrap_or_else(|| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("INBOX", "INBOX"),
            ("Entwürfe", "Entw&APw-rfe"),
            ("Входящие", "&BBIERQQ+BDQETwRJBDgENQ-"),
            ("&", "&-"),
            ("A&B", "A&-B"),
            ("a+b", "a+b"),
            ("日本語", "&ZeVnLIqe-"),
            ("📬 post", "&2D3c7A- post"),
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ];
        for (utf8, wire) in cases {
            assert_eq!(encode(utf8), wire, "encode {utf8}");
            assert_eq!(decode(wire).as_deref(), Some(utf8), "decode {wire}");
        }
    }

    #[test]
    fn invalid_inputs_are_refused_not_panicked() {
        for bad in ["&", "&ZeVnLIqe", "&!!!-", "&AGE-", "caf\u{e9}", "&A-", "&////////-"] {
            assert_eq!(decode(bad), None, "{bad:?}");
            assert_eq!(display(bad), bad);
        }
    }

    /// The fuzz seeds (fuzz/corpus/mutf7) under the fuzz target's round-trip properties.
    #[test]
    fn fuzz_seeds_round_trip() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/mutf7");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            let text = String::from_utf8_lossy(&data);
            assert_eq!(decode(&encode(&text)).as_deref(), Some(&*text));
            // adjacent shifted runs (`-&`) are the one accepted non-canonical form
            if let (Some(s), false) = (decode(&text), text.contains("-&")) {
                assert_eq!(encode(&s), text);
            }
            n += 1;
        }
        assert!(n >= 10, "only {n} seeds in {}", dir.display());
    }

    #[test]
    fn roundtrip_many() {
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let mut s = String::new();
            for _ in 0..(x % 12) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let c = char::from_u32(x % 0x1_0000 + if x.is_multiple_of(7) { 0x1_0000 } else { 0 }).unwrap_or('a');
                if !c.is_control() {
                    s.push(c);
                }
            }
            assert_eq!(decode(&encode(&s)).as_deref(), Some(s.as_str()), "{s:?}");
        }
    }
}
