//! The socket under a session: plain TCP or TLS, with the two clocks every read and write
//! obeys: a per-read timeout (a server that says nothing) and the task's overall deadline (a
//! server that says a byte every 20 s would otherwise keep a task forever).
//!
//! The deadline moves forward while bytes arrive at a useful rate: the initial sync of a big
//! folder from an honest but slow server is not cut off, a drip is.
//!
//! Once COMPRESS=DEFLATE (RFC 4978) is negotiated, both directions are raw deflate streams:
//! reads inflate what the socket gives, writes deflate into a buffer that `flush` ends with a
//! sync flush and sends (the session flushes after every command it writes). Timeouts, the
//! deadline's rate and the traffic counters are about the bytes on the wire.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<crate::tls::TlsStream>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

/// Reads plaintext from a TLS stream. A close without TLS's close_notify is an end of stream,
/// as it is on plain TCP: IMAP frames its own answers, so a cut answer is caught by the
/// parser, and most servers close that way after BYE.
pub(crate) fn tls_read(s: &mut crate::tls::TlsStream, buf: &mut [u8]) -> io::Result<usize> {
    match s.read(buf) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        r => r,
    }
}

/// A task's time budget on one connection.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// When the task started.
    pub start: Instant,
    /// BG_TASK_DEADLINE: how long a task may take at most, unless bytes keep coming.
    pub budget: Duration,
    /// BG_MIN_TRANSFER_RATE, bytes a second: a window of the rate renews the deadline.
    pub min_rate: u64,
}

impl Deadline {
    pub fn new(budget: Duration, min_rate: u64) -> Deadline {
        Deadline { start: Instant::now(), budget, min_rate }
    }
}

/// How often the transfer rate is judged (at most: a shorter budget is judged twice within it):
/// after a window in which bytes came at the rate, the deadline moves to two windows from then,
/// so that the next judgement, one window on, comes before it while they keep coming.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The shortest window judged: below it a rate says little.
const MIN_WINDOW: Duration = Duration::from_millis(100);

/// The running state of a deadline on a transport.
struct Clock {
    deadline: Deadline,
    until: Instant,
    window_start: Instant,
    window_bytes: u64,
    /// Bytes received since the deadline was set.
    bytes: u64,
}

impl Clock {
    fn new(d: Deadline) -> Clock {
        Clock { deadline: d, until: d.start + d.budget, window_start: Instant::now(), window_bytes: 0, bytes: 0 }
    }

    /// The window over which the rate is judged: [`RATE_WINDOW`], or half the budget when that
    /// is shorter. (Always ten seconds, a budget under ten seconds was never renewed: its
    /// first judgement came after it had expired; and a renewal to one window ahead expired
    /// just when the next judgement was due, unless a read happened to end in between.)
    fn window(&self) -> Duration {
        RATE_WINDOW.min(self.deadline.budget / 2).max(MIN_WINDOW)
    }

    fn received(&mut self, n: usize) {
        self.bytes += n as u64;
        self.window_bytes += n as u64;
        let now = Instant::now();
        let elapsed = now.duration_since(self.window_start);
        let window = self.window();
        if elapsed >= window {
            if self.window_bytes as f64 >= self.deadline.min_rate as f64 * elapsed.as_secs_f64() {
                self.until = self.until.max(now + 2 * window);
            }
            self.window_start = now;
            self.window_bytes = 0;
        }
    }

    fn expired_error(&self) -> io::Error {
        let secs = self.deadline.start.elapsed().as_secs();
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "server too slow: {} bytes in {secs} s (BG_TASK_DEADLINE {} s)",
                self.bytes,
                self.deadline.budget.as_secs()
            ),
        )
    }
}

/// The two deflate streams of a compressed connection.
struct Deflate {
    inflate: flate2::Decompress,
    deflate: flate2::Compress,
    /// Wire bytes read and not yet inflated: `wire[at..end]` (`wire` is allocated and
    /// zeroed once, at WIRE_CHUNK bytes).
    wire: Vec<u8>,
    at: usize,
    end: usize,
    /// Deflated bytes not yet sent.
    out: Vec<u8>,
}

/// Compressed bytes read from the socket at a time.
const WIRE_CHUNK: usize = 64 * 1024;

pub struct Transport {
    stream: Stream,
    deflate: Option<Box<Deflate>>,
    /// The per-read (and per-write) timeout.
    io_timeout: Duration,
    clock: Option<Clock>,
    /// The timeout last set on the socket, so an unchanged one costs no system call.
    set_timeout: Option<Duration>,
    /// What is being waited for, for the timeout's message ("the greeting", "LIST").
    pub waiting_for: &'static str,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Transport {
    pub fn new(stream: Stream, io_timeout: Duration) -> Transport {
        Transport {
            stream,
            deflate: None,
            io_timeout,
            clock: None,
            set_timeout: None,
            waiting_for: "an answer",
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    pub fn io_timeout(&self) -> Duration {
        self.io_timeout
    }

    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// Everything from now on, both ways, is raw deflate (after the OK to COMPRESS DEFLATE,
    /// with nothing read past it).
    pub fn start_deflate(&mut self) {
        self.deflate = Some(Box::new(Deflate {
            inflate: flate2::Decompress::new(false),
            deflate: flate2::Compress::new(flate2::Compression::fast(), false),
            wire: vec![0; WIRE_CHUNK],
            at: 0,
            end: 0,
            out: Vec::new(),
        }));
    }

    pub fn compressed(&self) -> bool {
        self.deflate.is_some()
    }

    /// Applies a task's deadline to every read and write from now on (a cached session gets
    /// each new task's deadline).
    pub fn set_deadline(&mut self, d: Option<Deadline>) {
        self.clock = d.map(Clock::new);
    }

    /// The timeout for the next read or write, or the error of an expired deadline.
    fn arm(&mut self) -> io::Result<()> {
        let mut t = self.io_timeout;
        if let Some(c) = &self.clock {
            let left = c.until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(c.expired_error());
            }
            t = t.min(left);
        }
        // Round up to whole milliseconds (a zero timeout means "none" to the socket), and set
        // it again only when it moved by more than a tenth.
        let t = t.max(Duration::from_millis(1));
        let stale = self.set_timeout.is_none_or(|old| old.abs_diff(t) > old / 10);
        if stale {
            self.stream.tcp().set_read_timeout(Some(t))?;
            self.stream.tcp().set_write_timeout(Some(t))?;
            self.set_timeout = Some(t);
        }
        Ok(())
    }

    /// Turns a socket timeout into what happened: the deadline, or a silent server.
    fn timed_out(&self, e: io::Error) -> io::Error {
        if !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            return e;
        }
        match &self.clock {
            Some(c) if Instant::now() >= c.until => c.expired_error(),
            _ => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer from the server within {} (waiting for {})",
                    human(self.io_timeout),
                    self.waiting_for
                ),
            ),
        }
    }
}

/// `60 s`, or `100 ms` under a second.
fn human(d: Duration) -> String {
    if d >= Duration::from_secs(1) { format!("{} s", d.as_secs()) } else { format!("{} ms", d.as_millis()) }
}

impl Transport {
    /// Reads wire bytes, under the timeout and the deadline.
    fn read_wire(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        let r = match &mut self.stream {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => tls_read(s, buf),
        };
        match r {
            Ok(n) => {
                self.bytes_in += n as u64;
                if let Some(c) = &mut self.clock {
                    c.received(n);
                }
                Ok(n)
            }
            Err(e) => Err(self.timed_out(e)),
        }
    }

    /// Writes wire bytes, under the timeout and the deadline.
    fn write_wire(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        let r = match &mut self.stream {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        };
        match r {
            Ok(n) => {
                self.bytes_out += n as u64;
                Ok(n)
            }
            Err(e) => Err(self.timed_out(e)),
        }
    }

    /// Inflates into `buf` what the server sent, reading the socket when no whole output is
    /// buffered; 0 only at the end of the stream.
    fn read_inflated(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            // The inflater may hold output from input it has already taken (a full `buf`
            // last time): ask it first, with whatever input is left.
            let d = self.deflate.as_mut().expect("compressed");
            let (before_in, before_out) = (d.inflate.total_in(), d.inflate.total_out());
            let status = d
                .inflate
                .decompress(&d.wire[d.at..d.end], buf, flate2::FlushDecompress::Sync)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("invalid DEFLATE data: {e}")))?;
            d.at += (d.inflate.total_in() - before_in) as usize;
            let produced = (d.inflate.total_out() - before_out) as usize;
            if status == flate2::Status::StreamEnd {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "the server ended its DEFLATE stream"));
            }
            if produced > 0 {
                return Ok(produced);
            }
            // Nothing to give without more input: keep what is left and read the socket.
            if d.at == d.end {
                (d.at, d.end) = (0, 0);
            } else if d.end == d.wire.len() {
                d.wire.copy_within(d.at..d.end, 0);
                (d.at, d.end) = (0, d.end - d.at);
            }
            let mut wire = std::mem::take(&mut d.wire);
            let end = d.end;
            let n = self.read_wire(&mut wire[end..]);
            let d = self.deflate.as_mut().expect("compressed");
            d.wire = wire;
            let n = n?;
            if n == 0 {
                return Ok(0);
            }
            d.end += n;
        }
    }

    /// Deflates `input` into the send buffer; `flush`: end with a sync flush, so the server
    /// can inflate all of it now.
    fn deflate(&mut self, input: &[u8], flush: bool) -> io::Result<()> {
        let d = self.deflate.as_mut().expect("compressed");
        let mode = if flush { flate2::FlushCompress::Sync } else { flate2::FlushCompress::None };
        let mut input = input;
        loop {
            d.out.reserve(input.len() / 2 + 64);
            let before = d.deflate.total_in();
            d.deflate
                .compress_vec(input, &mut d.out, mode)
                .map_err(|e| io::Error::other(format!("DEFLATE failed: {e}")))?;
            input = &input[(d.deflate.total_in() - before) as usize..];
            // done when all input is taken and, for a flush, the output did not fill the
            // room given (a full buffer may hold more of the flush)
            if input.is_empty() && d.out.len() < d.out.capacity() {
                return Ok(());
            }
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.deflate.is_some() { self.read_inflated(buf) } else { self.read_wire(buf) }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.deflate.is_some() {
            self.deflate(buf, false)?;
            return Ok(buf.len());
        }
        self.write_wire(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.deflate.is_some() {
            self.deflate(&[], true)?;
            let out = std::mem::take(&mut self.deflate.as_mut().expect("compressed").out);
            let mut sent = 0;
            while sent < out.len() {
                match self.write_wire(&out[sent..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let d = self.deflate.as_mut().expect("compressed");
            d.out = out;
            d.out.clear();
        }
        match &mut self.stream {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn a_silent_server_is_named_as_such() {
        let (c, _server) = pair();
        let mut t = Transport::new(Stream::Plain(c), Duration::from_millis(100));
        t.waiting_for = "the greeting";
        let e = t.read(&mut [0; 8]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(e.to_string(), "no answer from the server within 100 ms (waiting for the greeting)");
    }

    #[test]
    fn a_dripping_server_meets_the_deadline() {
        let (c, mut server) = pair();
        let drip = std::thread::spawn(move || {
            for _ in 0..40 {
                if server.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut t = Transport::new(Stream::Plain(c), Duration::from_secs(5));
        t.set_deadline(Some(Deadline::new(Duration::from_millis(300), 1 << 20)));
        let started = Instant::now();
        let mut got = 0;
        let e = loop {
            match t.read(&mut [0; 8]) {
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(got > 0);
        assert!(e.to_string().starts_with(&format!("server too slow: {got} bytes in 0 s")), "{e}");
        drop(t);
        drip.join().unwrap();
    }

    #[test]
    fn an_honest_rate_renews_the_deadline() {
        let mut c = Clock::new(Deadline { start: Instant::now(), budget: Duration::from_millis(1), min_rate: 100 });
        let first = c.until;
        c.window_start -= RATE_WINDOW; // a window has passed
        c.received(10_000); // 10,000 bytes in ~10 s: 1,000 B/s ≥ 100 B/s
        assert!(c.until > first + c.window());
        let renewed = c.until;
        c.window_start -= RATE_WINDOW;
        c.received(5); // 5 bytes in 10 s: a drip
        assert_eq!(c.until, renewed, "a drip does not renew it");
    }

    #[test]
    fn a_budget_shorter_than_the_window_is_renewed_too() {
        // BG_TASK_DEADLINE 2 s: judged every second, renewed two seconds ahead.
        let d = Deadline { start: Instant::now(), budget: Duration::from_secs(2), min_rate: 100 };
        let mut c = Clock::new(d);
        assert_eq!(c.window(), Duration::from_secs(1));
        c.until = Instant::now() + Duration::from_millis(10); // about to expire
        c.window_start -= c.window();
        c.received(500); // 500 bytes in 1 s
        let renewed = c.until;
        assert!(renewed >= Instant::now() + Duration::from_millis(1900), "{:?}", renewed - Instant::now());
        // The next judgement is due a window on, well before the deadline.
        assert!(c.window_start + c.window() + Duration::from_millis(900) <= renewed);
        c.window_start -= c.window();
        c.received(50); // 50 bytes in 1 s: too slow
        assert_eq!(c.until, renewed);
        assert_eq!(Clock::new(Deadline { budget: Duration::from_secs(600), ..d }).window(), RATE_WINDOW);
    }
}
