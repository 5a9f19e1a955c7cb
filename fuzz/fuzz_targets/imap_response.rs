//! Every response the reader knows (greeting, tagged answers, CAPABILITY, LIST, STATUS,
//! SEARCH/ESEARCH, NAMESPACE, VANISHED, FETCH, codes) from a fake server answering with fuzzed
//! bytes. Input: byte 0 = read size (0 = 64 KiB), the rest the server's bytes.
//! Properties: never panics; live heap stays bounded by the bytes received (a counting
//! allocator aborts otherwise); every response is read to its end or is an error, and a
//! malformed untagged response is named (its kind and error are never empty); the reader
//! always moves forward (no response is produced from no bytes).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, Read, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use backproc_imap::read::{Limits, Reader};
use backproc_imap::response::{ParseLimits, Response, Untagged, read_response};
use libfuzzer_sys::fuzz_target;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if LIVE.fetch_add(l.size(), Relaxed) + l.size() > LIMIT.load(Relaxed) {
            over(l.size());
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > l.size() {
            if LIVE.fetch_add(new - l.size(), Relaxed) + new - l.size() > LIMIT.load(Relaxed) {
                over(new);
            }
        } else {
            LIVE.fetch_sub(l.size() - new, Relaxed);
        }
        unsafe { System.realloc(p, l, new) }
    }
}

fn over(size: usize) -> ! {
    let _ = writeln!(io::stderr(), "allocation of {size} bytes exceeds the bound for the bytes received");
    std::process::abort()
}

#[global_allocator]
static A: Counting = Counting;

struct Server<'a> {
    reply: &'a [u8],
    chunk: usize,
}
impl Read for Server<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.reply.len());
        buf[..n].copy_from_slice(&self.reply[..n]);
        self.reply = &self.reply[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let [chunk, rest @ ..] = data else { return };
    let chunk = if *chunk == 0 { 1 << 16 } else { usize::from(*chunk) };
    // The read buffer (64 KiB, at most the token limit plus a chunk), a literal's first
    // pre-allocation (1 MiB) and copies of what arrived.
    LIMIT.store(LIVE.load(Relaxed) + (3 << 20) + 16 * rest.len(), Relaxed);
    let mut r = Reader::new(Server { reply: rest, chunk }, Limits::default());
    let lim = ParseLimits::default();
    let mut before = 0;
    while let Ok(resp) = read_response(&mut r, &lim) {
        assert!(r.consumed() > before, "a response from no bytes: {resp:?}");
        before = r.consumed();
        if let Response::Untagged(Untagged::Malformed(m)) = &resp {
            assert!(!m.kind.is_empty() && !m.error.is_empty(), "{m:?}");
        }
    }
    LIMIT.store(usize::MAX, Relaxed);
});
