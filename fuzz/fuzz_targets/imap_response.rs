//! Every response the reader knows (greeting, tagged answers, CAPABILITY, LIST, STATUS,
//! SEARCH/ESEARCH, NAMESPACE, VANISHED, FETCH, codes) from a fake server answering with fuzzed
//! bytes. Input: byte 0 = read size (0 = 64 KiB), the rest the server's bytes.
//! Properties: never panics; live heap stays bounded by the bytes received (a counting
//! allocator aborts otherwise); every response is read to its end or is an error, and a
//! malformed untagged response is named (its kind and error are never empty); the reader
//! always moves forward (no response is produced from no bytes).
#![no_main]

use backproc_imap::read::{Limits, Reader};
use backproc_imap::response::{ParseLimits, Response, Untagged, read_response};
use libfuzzer_sys::fuzz_target;

mod common;

#[global_allocator]
static A: common::Counting = common::Counting;

fuzz_target!(|data: &[u8]| {
    let [chunk, rest @ ..] = data else { return };
    let chunk = if *chunk == 0 { 1 << 16 } else { usize::from(*chunk) };
    // The read buffer (64 KiB, at most the token limit plus a chunk), a literal's first
    // pre-allocation (1 MiB) and copies of what arrived.
    common::arm((3 << 20) + 16 * rest.len());
    let mut r = Reader::new(common::Server { reply: rest, chunk }, Limits::default());
    let lim = ParseLimits::default();
    let mut before = 0;
    while let Ok(resp) = read_response(&mut r, &lim) {
        assert!(r.consumed() > before, "a response from no bytes: {resp:?}");
        before = r.consumed();
        if let Response::Untagged(Untagged::Malformed(m)) = &resp {
            assert!(!m.kind.is_empty() && !m.error.is_empty(), "{m:?}");
        }
    }
    common::disarm();
});
