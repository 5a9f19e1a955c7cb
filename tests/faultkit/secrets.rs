//! Looks for secrets (passwords, SASL tokens) in captured text.

/// A secret to look for, with a label for the report.
pub struct Needle {
    pub what: String,
    pub bytes: Vec<u8>,
}

impl Needle {
    pub fn plain(what: &str, s: &str) -> Needle {
        Needle { what: what.to_string(), bytes: s.as_bytes().to_vec() }
    }
    /// base64 of `raw` (standard alphabet, padded) and without its padding.
    pub fn base64(what: &str, raw: &[u8]) -> Vec<Needle> {
        let b = base64(raw);
        let mut v = vec![Needle { what: format!("{what} (base64)"), bytes: b.clone().into_bytes() }];
        let trimmed = b.trim_end_matches('=').to_string();
        if trimmed != b {
            v.push(Needle { what: format!("{what} (base64, unpadded)"), bytes: trimmed.into_bytes() });
        }
        v
    }
}

/// The SASL PLAIN token of `login`/`password` ("\0login\0password") and the password alone,
/// base64-encoded, plus the password itself.
pub fn needles_for(login: &str, password: &str) -> Vec<Needle> {
    let mut v = vec![Needle::plain(&format!("password of {login}"), password)];
    v.extend(Needle::base64(&format!("AUTH PLAIN of {login}"), format!("\0{login}\0{password}").as_bytes()));
    v.extend(Needle::base64(&format!("password of {login}"), password.as_bytes()));
    v
}

/// Every (haystack label, needle label) pair where the needle occurs.
pub fn hits(haystacks: &[(String, Vec<u8>)], needles: &[Needle]) -> Vec<String> {
    let mut out = Vec::new();
    for (where_, hay) in haystacks {
        for n in needles {
            if !n.bytes.is_empty() && hay.windows(n.bytes.len()).any(|w| w == n.bytes.as_slice()) {
                out.push(format!("{} found in {where_}", n.what));
            }
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648 §4), written out to need no extra crate.
pub fn base64(raw: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(raw.len().div_ceil(3) * 4);
    for c in raw.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(A[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_vectors() {
    for (raw, want) in
        [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy"), ("\0u\0p", "AHUAcA==")]
    {
        assert_eq!(base64(raw.as_bytes()), want, "{raw:?}");
    }
}
