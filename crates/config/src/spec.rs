//! The table of our constants — name, kind, unit, default, range and meaning — written once.

use std::fmt;

/// A local time of day, `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl TimeOfDay {
    /// `HH:MM` or `H:MM`, 00:00–23:59.
    pub fn parse(s: &str) -> Option<TimeOfDay> {
        let (h, m) = s.trim().split_once(':')?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|c| c.is_ascii_digit()) {
            return None;
        }
        let (hour, minute) = (h.parse().ok()?, m.parse().ok()?);
        (hour < 24 && minute < 60).then_some(TimeOfDay { hour, minute })
    }
}

/// The type of a constant, with the accepted range of integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int { min: u64, max: u64 },
    Str,
    Time,
}

/// One constant of ours.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    pub kind: Kind,
    /// What an integer counts ("seconds", "bytes", "days", "percent"), or "".
    pub unit: &'static str,
    /// The default as PHP would write it (`TRUE`, `600`, `'pid'`, `'20:00'`).
    pub default: &'static str,
    pub doc: &'static str,
}

/// A constant's value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(u64),
    Str(String),
    #[serde(serialize_with = "time_ser")]
    Time(TimeOfDay),
}

fn time_ser<S: serde::Serializer>(t: &TimeOfDay, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(true) => f.write_str("TRUE"),
            Value::Bool(false) => f.write_str("FALSE"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
            Value::Time(t) => write!(f, "'{t}'"),
        }
    }
}

/// Conversion between a field's Rust type and a [`Value`].
pub trait Field: Sized {
    fn to_value(&self) -> Value;
    fn from_value(v: Value) -> Option<Self>;
}

macro_rules! field {
    ($ty:ty, $variant:ident, |$x:ident| $to:expr) => {
        impl Field for $ty {
            fn to_value(&self) -> Value {
                let $x = self;
                Value::$variant($to)
            }
            fn from_value(v: Value) -> Option<$ty> {
                if let Value::$variant(x) = v { Some(x) } else { None }
            }
        }
    };
}
field!(bool, Bool, |x| *x);
field!(u64, Int, |x| *x);
field!(String, Str, |x| x.clone());
field!(TimeOfDay, Time, |x| *x);

/// Generates [`Config`], its `Default`, and the raw spec table from one line per constant:
/// `field: type = default, kind, "doc";` (the constant's name is the field's, upper-cased).
macro_rules! constants {
    ($( $field:ident : $ty:ty = $default:expr, $kind:expr, $doc:literal; )*) => {
        /// Every constant of ours, typed. Field = constant name in lower case.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Config { $( #[doc = $doc] pub $field: $ty, )* }

        impl Default for Config {
            fn default() -> Config {
                Config { $( $field: $default.into(), )* }
            }
        }

        /// (field name, (kind, unit), doc), in table order.
        static RAW: &[(&str, (Kind, &str), &str)] = &[ $( (stringify!($field), $kind, $doc), )* ];

        impl Config {
            /// Every value in table order.
            pub(crate) fn values(&self) -> Vec<Value> {
                vec![ $( Field::to_value(&self.$field), )* ]
            }
            /// Sets constant number `i` of the table; false when the index or type is wrong.
            pub(crate) fn set(&mut self, i: usize, v: Value) -> bool {
                let mut _n = 0;
                $(
                    if _n == i {
                        return <$ty as Field>::from_value(v).map(|x| self.$field = x).is_some();
                    }
                    _n += 1;
                )*
                false
            }
        }
    };
}

const fn int(min: u64, max: u64) -> (Kind, &'static str) {
    (Kind::Int { min, max }, "")
}
const fn secs(min: u64, max: u64) -> (Kind, &'static str) {
    (Kind::Int { min, max }, "seconds")
}
const fn bytes(min: u64, max: u64) -> (Kind, &'static str) {
    (Kind::Int { min, max }, "bytes")
}
const fn days(min: u64, max: u64) -> (Kind, &'static str) {
    (Kind::Int { min, max }, "days")
}
const fn percent(min: u64, max: u64) -> (Kind, &'static str) {
    (Kind::Int { min, max }, "percent")
}
const B: (Kind, &str) = (Kind::Bool, "");
const S: (Kind, &str) = (Kind::Str, "");
const T: (Kind, &str) = (Kind::Time, "");
const fn hm(hour: u8, minute: u8) -> TimeOfDay {
    TimeOfDay { hour, minute }
}

constants! {
    email_background_sync_enabled: bool = false, B, "IMAP sync jobs run at all";
    email_outbox_enabled: bool = false, B, "send jobs run at all";
    bg_max_threads: u64 = 14u64, int(1, 256), "most worker threads the master starts";
    bg_max_tasks_per_thread: u64 = 200u64, int(1, 100_000), "capacity of each worker's task queue";
    email_bg_hi_folders_recent_sync_interval: u64 = 600u64, secs(1, 604_800), "seconds between new-mail syncs of high-priority folders, owner logged in";
    email_bg_hi_folders_recent_sync_interval_nl: u64 = 1800u64, secs(1, 604_800), "same, owner not logged in";
    email_bg_hi_folders_folders_full_sync_interval: u64 = 3600u64, secs(1, 604_800), "seconds between full syncs of high-priority folders, logged in";
    email_bg_hi_folders_folders_full_sync_interval_nl: u64 = 4800u64, secs(1, 604_800), "same, not logged in";
    email_bg_lo_folders_sync_start: TimeOfDay = hm(20, 0), T, "local time of the daily full sync of low-priority folders";
    backproc_pid_location: String = "pid", S, "directory of the pid file, relative to the home";
    email_auth_error_check_retry_time: u64 = 1800u64, secs(1, 604_800), "seconds to wait after a refused login";
    email_bg_imap_compress: u64 = 1u64, int(0, 2), "COMPRESS=DEFLATE (RFC 4978) when an IMAP server offers it: 0 never, 1 not to loopback hosts, 2 always";
    email_bg_push_enabled: bool = true, B, "push connections (NOTIFY or IDLE) for accounts whose owner is logged in; FALSE: polling only";
    email_bg_push_all: bool = false, B, "keep a push connection (NOTIFY or IDLE) for every account, not only those whose owner is logged in";
    email_bg_push_debounce_ms: u64 = 250u64, int(0, 60_000), "milliseconds within which a folder's push events make one sync";
    email_bg_idle_renew: u64 = 1500u64, secs(10, 1740), "seconds between renewals of a push connection (IDLE again, or NOOP under NOTIFY): under 29 minutes";
    email_oauth_refresh_margin: u64 = 300u64, secs(0, 86_400), "seconds of life left below which an OAuth2 access token is refreshed before use";
    bg_tick_interval: u64 = 5u64, secs(1, 300), "seconds between scheduler ticks";
    bg_shutdown_grace: u64 = 30u64, secs(0, 3600), "seconds running tasks get to finish on SIGTERM";
    bg_log_max_size: u64 = 10_485_760u64, bytes(1024, 10_737_418_240), "bytes before a log file rotates";
    bg_log_keep: u64 = 5u64, int(0, 1000), "rotated files kept per log";
    bg_max_connections_per_host: u64 = 8u64, int(1, 100_000), "concurrent connections to one IMAP/SMTP host, idle cached ones included";
    email_bg_account_connections: u64 = 3u64, int(1, 16), "connections one account may use at once for receiving different folders, within BG_MAX_CONNECTIONS_PER_HOST";
    bg_task_deadline: u64 = 600u64, secs(1, 86_400), "seconds a task may take, unless bytes keep arriving at BG_MIN_TRANSFER_RATE";
    bg_min_transfer_rate: u64 = 10_240u64, bytes(1, 1_073_741_824), "bytes a second that keep a long transfer within its deadline";
    bg_io_timeout: u64 = 60u64, secs(1, 3600), "seconds a server may stay silent before the connection is dropped";
    bg_session_idle_timeout: u64 = 300u64, secs(1, 86_400), "seconds an idle IMAP/SMTP session is kept open";
    bg_max_starts_per_tick: u64 = 200u64, int(1, 100_000), "tasks the scheduler starts per tick";
    bg_backoff_base: u64 = 60u64, secs(1, 86_400), "seconds of the first retry delay after a failure (doubles)";
    bg_backoff_max: u64 = 3600u64, secs(1, 604_800), "cap of the retry delay in seconds";
    bg_heartbeat_stale: u64 = 120u64, secs(5, 86_400), "seconds after which a master's heartbeat counts as stalled";
    email_bg_receive_max_attempts: u64 = 5u64, int(1, 1000), "failures after which a receive entry moves to the secondary queue";
    email_bg_receive_final_attempts: u64 = 20u64, int(1, 10_000), "failures after which a receive entry is marked failed";
    email_bg_receive_batch_messages: u64 = 500u64, int(1, 100_000), "messages per UID FETCH batch";
    email_bg_receive_batch_bytes: u64 = 2_097_152u64, bytes(65_536, 4_294_967_296), "bytes per UID FETCH batch";
    email_bg_max_message_size: u64 = 104_857_600u64, bytes(1024, 4_294_967_296), "larger messages are not downloaded";
    email_bg_secondary_interval: u64 = 900u64, secs(1, 604_800), "seconds between Receive/Send Secondary runs";
    email_bg_send_poll_interval: u64 = 5u64, secs(1, 3600), "seconds between outbox polls";
    email_bg_send_max_attempts: u64 = 5u64, int(1, 1000), "failures after which an outbox entry goes to Send Secondary";
    email_bg_send_lease: u64 = 300u64, secs(10, 86_400), "seconds an outbox entry may stay PROCESSING";
    email_bg_send_max_age: u64 = 432_000u64, secs(60, 31_536_000), "seconds after which a failing entry becomes ERROR";
    email_bg_send_batch: u64 = 100u64, int(1, 100_000), "entries claimed per send run";
    email_bg_sent_append: bool = true, B, "append sent mail to the account's Sent folder";
    email_bg_sync_delete_interval: u64 = 900u64, secs(1, 604_800), "seconds between Sync Delete runs";
    email_bg_purge_deleted_interval: u64 = 3600u64, secs(1, 604_800), "seconds between Purge Deleted runs";
    email_bg_clean_mailboxes_interval: u64 = 86_400u64, secs(60, 604_800), "seconds between Clean Mailboxes runs";
    email_bg_clean_drafts: bool = false, B, "Clean Mailboxes also removes old Drafts";
    email_bg_delete_brake_percent: u64 = 20u64, percent(1, 100), "share of a folder one run may delete";
    email_bg_delete_brake_min: u64 = 50u64, int(0, 1_000_000), "the brake only trips above this many messages";
    bg_vacuum_interval: u64 = 86_400u64, secs(60, 2_592_000), "seconds between DB defragmentations";
    bg_backup_interval: u64 = 86_400u64, secs(60, 2_592_000), "seconds between backups";
    bg_backup_keep: u64 = 7u64, int(1, 1000), "backups kept";
    bg_history_retention_days: u64 = 30u64, days(1, 3650), "days of background process history kept";
    bg_metrics_enabled: bool = true, B, "write data/backproc.prom";
    internal_msg_poll_interval: u64 = 300u64, secs(10, 86_400), "default client poll interval of internal messages";
    internal_msg_lifetime_days: u64 = 7u64, days(1, 3650), "unread internal messages older than this are deleted";
    internal_msg_clean_interval: u64 = 3600u64, secs(60, 604_800), "seconds between deletions of expired internal messages";
}

/// Every constant of ours, in table order. Names and rendered defaults are derived from the
/// one table above (built once, then shared for the life of the process).
pub fn specs() -> &'static [Spec] {
    static SPECS: std::sync::OnceLock<Vec<Spec>> = std::sync::OnceLock::new();
    SPECS.get_or_init(|| {
        let defaults = Config::default().values();
        RAW.iter()
            .zip(defaults)
            .map(|(&(field, (kind, unit), doc), default)| Spec {
                name: Box::leak(field.to_ascii_uppercase().into_boxed_str()),
                kind,
                unit,
                default: Box::leak(default.to_string().into_boxed_str()),
                doc,
            })
            .collect()
    })
}
