//! A scripted transport for the unit tests of the readers: answers with fixed bytes, at most
//! `chunk` bytes a read (to test every split of a response), and records what was written.

use std::io::{self, Cursor, Read, Write};

pub struct Fake {
    pub reply: Cursor<Vec<u8>>,
    pub sent: Vec<u8>,
    pub chunk: usize,
}

impl Fake {
    pub fn new(reply: &[u8], chunk: usize) -> Fake {
        Fake { reply: Cursor::new(reply.to_vec()), sent: Vec::new(), chunk: chunk.max(1) }
    }
}

impl Read for Fake {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk);
        self.reply.read(&mut buf[..n])
    }
}

impl Write for Fake {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.sent.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
