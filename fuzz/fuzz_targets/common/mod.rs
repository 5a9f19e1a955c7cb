//! What the IMAP targets share: a global allocator that counts live heap bytes and aborts (a
//! crash libFuzzer records) past a bound the target arms, and a fake server that answers
//! with the fuzzed bytes a chunk at a time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, Read, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Live heap may grow at most `bytes` past what it is now, until `disarm`.
pub fn arm(bytes: usize) {
    LIMIT.store(LIVE.load(Relaxed) + bytes, Relaxed);
}

pub fn disarm() {
    LIMIT.store(usize::MAX, Relaxed);
}

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

/// Unwinding out of an allocator is undefined behaviour: say why and abort instead.
fn over(size: usize) -> ! {
    let _ = writeln!(io::stderr(), "allocation of {size} bytes exceeds the bound for the bytes received");
    std::process::abort()
}

/// A connection whose reads return at most `chunk` bytes of the reply.
pub struct Server<'a> {
    pub reply: &'a [u8],
    pub chunk: usize,
}

impl Read for Server<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.reply.len());
        buf[..n].copy_from_slice(&self.reply[..n]);
        self.reply = &self.reply[n..];
        Ok(n)
    }
}
