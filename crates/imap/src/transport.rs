//! The socket under a session: plain TCP or TLS, with the two clocks every read and write
//! obeys: a per-read timeout (a server that says nothing) and the task's overall deadline (a
//! server that says a byte every 20 s would otherwise keep a task forever).
//!
//! The deadline moves forward while bytes arrive at a useful rate: the initial sync of a big
//! folder from an honest but slow server is not cut off, a drip is.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<native_tls::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
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
            format!("server too slow: {} bytes in {secs} s (BG_TASK_DEADLINE {} s)", self.bytes, self.deadline.budget.as_secs()),
        )
    }
}

pub struct Transport {
    stream: Stream,
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
        Transport { stream, io_timeout, clock: None, set_timeout: None, waiting_for: "an answer", bytes_in: 0, bytes_out: 0 }
    }

    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    pub fn into_stream(self) -> Stream {
        self.stream
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
                format!("no answer from the server within {} (waiting for {})", human(self.io_timeout), self.waiting_for),
            ),
        }
    }
}

/// `60 s`, or `100 ms` under a second.
fn human(d: Duration) -> String {
    if d >= Duration::from_secs(1) { format!("{} s", d.as_secs()) } else { format!("{} ms", d.as_millis()) }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        let r = match &mut self.stream {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
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
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
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

    fn flush(&mut self) -> io::Result<()> {
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
