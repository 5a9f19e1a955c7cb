//! Modified UTF-7: decode never panics; decode(encode(s)) == s for every string; a decoded
//! name re-encodes to the same bytes when it was in canonical form.
#![no_main]

use backproc_imap::mutf7::{decode, display, encode};
use libfuzzer_sys::fuzz_target;

/// Two shifted runs back to back (`&AOk-&AOk-`) decode fine but re-encode as one run: the only
/// non-canonical form `decode` accepts (padding and printable-ASCII runs are refused).
fn has_adjacent_runs(x: &str) -> bool {
    let b = x.as_bytes();
    let (mut i, mut last_run_end) = (0, None);
    while i < b.len() {
        if b[i] != b'&' {
            i += 1;
            continue;
        }
        let Some(len) = b[i + 1..].iter().position(|&c| c == b'-') else { return false };
        if len > 0 {
            if last_run_end == Some(i) {
                return true;
            }
            last_run_end = Some(i + len + 2);
        }
        i += len + 2;
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // any string survives a round trip, and its wire form is printable ASCII only
    let wire = encode(&text);
    assert!(wire.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{wire:?}");
    assert_eq!(decode(&wire).as_deref(), Some(&*text), "wire {wire:?}");

    // the bytes as a name received from a server
    if let Ok(raw) = std::str::from_utf8(data) {
        let decoded = decode(raw);
        assert_eq!(display(raw), decoded.clone().unwrap_or_else(|| raw.to_owned()));
        if let Some(s) = decoded {
            let again = encode(&s);
            if has_adjacent_runs(raw) {
                assert_eq!(decode(&again).as_deref(), Some(s.as_str()));
            } else {
                assert_eq!(again, raw, "decoded {s:?}");
            }
        }
    }
});
