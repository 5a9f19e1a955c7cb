//! The three log files of the original engine, set up with log4rs.
//!
//! Every line is `[YYYY-MM-DD HH:MM:SS][#PID.tN] message [ACCOUNT,FOLDER]`: local time, the
//! process id, the thread number from the MDC key `thread` (t0 = master or CLI), and the
//! `[account,folder]` suffix only when the MDC keys `account`/`folder` are set, so library code
//! never formats them by hand (`backproc_engine::logctx` sets them).

use std::io;
use std::path::Path;

use anyhow::Context;
use log::{LevelFilter, Record};
use log4rs::append::rolling_file::RollingFileAppender;
use log4rs::append::rolling_file::policy::compound::CompoundPolicy;
use log4rs::append::rolling_file::policy::compound::roll::Roll;
use log4rs::append::rolling_file::policy::compound::roll::delete::DeleteRoller;
use log4rs::append::rolling_file::policy::compound::roll::fixed_window::FixedWindowRoller;
use log4rs::append::rolling_file::policy::compound::trigger::size::SizeTrigger;
use log4rs::config::{Appender, Config, Root};
use log4rs::encode::{Encode, Write};
use log4rs::filter::threshold::ThresholdFilter;
use log4rs::filter::{Filter, Response};

/// Log target that always reaches `l-threading-error.txt` (panics of worker tasks).
pub const THREADING_TARGET: &str = "threading";

/// Rotation settings, from `BG_LOG_MAX_SIZE` and `BG_LOG_KEEP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub max_size: u64,
    pub keep: u32,
}

/// Formats one record as the original's line. Writing the whole line in one `write_all`
/// (the appender holds its lock around `encode`) keeps threads from interleaving mid-line.
#[derive(Debug)]
struct LineEncoder {
    pid: u32,
}

impl Encode for LineEncoder {
    fn encode(&self, w: &mut dyn Write, record: &Record) -> anyhow::Result<()> {
        let line = format_line(
            self.pid,
            &chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string(),
            &mdc("thread").unwrap_or_else(|| "t0".to_owned()),
            &record.args().to_string(),
            mdc("account").as_deref(),
            mdc("folder").as_deref(),
        );
        w.write_all(line.as_bytes())?;
        Ok(())
    }
}

fn mdc(key: &str) -> Option<String> {
    log_mdc::get(key, |v| v.map(str::to_owned)).filter(|v| !v.is_empty())
}

/// One log line, newline included. Messages are flattened to one line so a multi-line error
/// (an SMTP reply, say) cannot forge a line of its own in the file.
pub fn format_line(
    pid: u32,
    time: &str,
    thread: &str,
    message: &str,
    account: Option<&str>,
    folder: Option<&str>,
) -> String {
    let message = message.replace(['\r', '\n'], " ");
    match (account, folder) {
        (None, None) => format!("[{time}][#{pid}.{thread}] {message}\n"),
        (a, f) => format!("[{time}][#{pid}.{thread}] {message} [{},{}]\n", a.unwrap_or(""), f.unwrap_or("")),
    }
}

/// Passes errors raised on worker threads and everything logged to [`THREADING_TARGET`].
#[derive(Debug)]
struct ThreadingFilter;

impl Filter for ThreadingFilter {
    fn filter(&self, record: &Record) -> Response {
        let worker = mdc("thread").is_some_and(|t| t != "t0");
        if record.target() == THREADING_TARGET || (worker && record.level() <= log::Level::Error) {
            Response::Neutral
        } else {
            Response::Reject
        }
    }
}

fn appender(
    logs: &Path,
    name: &str,
    ext: &str,
    rotation: Rotation,
    filter: Box<dyn Filter>,
) -> anyhow::Result<Appender> {
    let path = logs.join(format!("{name}.{ext}"));
    let roller: Box<dyn Roll> = if rotation.keep == 0 {
        Box::new(DeleteRoller::new())
    } else {
        let pattern = logs.join(format!("{name}.{{}}.{ext}"));
        Box::new(
            FixedWindowRoller::builder()
                .build(&pattern.to_string_lossy(), rotation.keep)
                .context("cannot set up log rotation")?,
        )
    };
    let policy = CompoundPolicy::new(Box::new(SizeTrigger::new(rotation.max_size)), roller);
    let file = RollingFileAppender::builder()
        .encoder(Box::new(LineEncoder { pid: std::process::id() }))
        .build(&path, Box::new(policy))
        .with_context(|| format!("cannot open log file {}", path.display()))?;
    Ok(Appender::builder().filter(filter).build(name, Box::new(file)))
}

fn build(logs: &Path, rotation: Rotation) -> anyhow::Result<Config> {
    let info = appender(logs, "l-info", "log", rotation, Box::new(ThresholdFilter::new(LevelFilter::Info)))?;
    let debug = appender(logs, "l-debug", "log", rotation, Box::new(ThresholdFilter::new(LevelFilter::Trace)))?;
    let threading = appender(logs, "l-threading-error", "txt", rotation, Box::new(ThreadingFilter))?;
    Config::builder()
        .appender(info)
        .appender(debug)
        .appender(threading)
        // Dependencies (rustls, imap, lettre) are chatty at debug and could echo protocol
        // lines; only our own crates log below info.
        .logger(log4rs::config::Logger::builder().build("imap", LevelFilter::Warn))
        .logger(log4rs::config::Logger::builder().build("lettre", LevelFilter::Warn))
        .logger(log4rs::config::Logger::builder().build("native_tls", LevelFilter::Warn))
        .build(Root::builder().appenders(["l-info", "l-debug", "l-threading-error"]).build(LevelFilter::Debug))
        .context("cannot configure logging")
}

/// Handle to change rotation settings when config.inc changes.
pub struct Logging {
    handle: log4rs::Handle,
    logs: std::path::PathBuf,
    rotation: Rotation,
}

impl Logging {
    pub fn init(logs: &Path, rotation: Rotation) -> anyhow::Result<Logging> {
        let handle = log4rs::init_config(build(logs, rotation)?).context("cannot start logging")?;
        log_mdc::insert("thread", "t0");
        Ok(Logging { handle, logs: logs.to_path_buf(), rotation })
    }

    pub fn set_rotation(&mut self, rotation: Rotation) {
        if rotation == self.rotation {
            return;
        }
        match build(&self.logs, rotation) {
            Ok(config) => {
                self.handle.set_config(config);
                self.rotation = rotation;
            }
            Err(e) => log::error!("cannot apply new log rotation settings: {e:#}"),
        }
    }
}

/// Writes a panic's message and location to l-threading-error.txt (and the other logs), with
/// the thread and account context of the MDC at the moment of the panic.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location =
            info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_else(|| "unknown location".into());
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        log::error!(target: THREADING_TARGET, "panic: {message} at {location}");
        let _ = io::Write::flush(&mut io::stderr());
    }));
}

#[cfg(test)]
mod tests {
    use super::format_line;

    #[test]
    fn line_without_context() {
        assert_eq!(
            format_line(13817, "2014-01-12 22:28:05", "t12", "hello", None, None),
            "[2014-01-12 22:28:05][#13817.t12] hello\n"
        );
    }

    #[test]
    fn line_with_account_and_folder() {
        assert_eq!(
            format_line(
                13817,
                "2014-01-12 22:28:05",
                "t12",
                "received 31468 new messages in 432s",
                Some("53"),
                Some("824")
            ),
            "[2014-01-12 22:28:05][#13817.t12] received 31468 new messages in 432s [53,824]\n"
        );
    }

    #[test]
    fn line_with_account_only_and_newlines_flattened() {
        assert_eq!(format_line(1, "t", "t0", "a\r\nb", Some("7"), None), "[t][#1.t0] a  b [7,]\n");
    }
}
