//! What a failed attempt leads to: an account's next try, a receive-queue entry's next lane
//! and attempt, an outbox entry's next state. Pure: the engine and the store persist what
//! these return and decide nothing themselves.

use std::time::Duration;

use crate::Backoff;

/// How an account's connection or login failed, as far as its next try is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountFailure {
    /// The server refused the login.
    RefusedLogin,
    /// The OAuth2 grant is revoked or expired: only a person can mend it.
    GrantRevoked,
    /// The server asked us to wait this long (throttling).
    Throttled(Duration),
    /// Unreachable, dropped, TLS: the back-off.
    Other,
}

/// When an account is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountNext {
    /// Not before a person acts (`account authorize`, `account set`).
    WaitForPerson,
    /// In this many seconds.
    RetryIn(i64),
}

/// The account that had failed `failures` times in a row failed again: after a refused login
/// it waits `auth_wait` (EMAIL_AUTH_ERROR_CHECK_RETRY_TIME), after throttling what the server
/// asked (whole seconds, rounded up), otherwise the back-off.
pub fn account_failed(backoff: &Backoff, auth_wait: i64, failure: AccountFailure, failures: i64) -> AccountNext {
    match failure {
        AccountFailure::GrantRevoked => AccountNext::WaitForPerson,
        AccountFailure::RefusedLogin => AccountNext::RetryIn(auth_wait),
        AccountFailure::Throttled(wait) => {
            AccountNext::RetryIn(i64::try_from(wait.as_millis().div_ceil(1000)).unwrap_or(i64::MAX).max(1))
        }
        AccountFailure::Other => AccountNext::RetryIn(backoff.after(failures + 1)),
    }
}

/// The receive queue's lanes: the primary one the Receive job works on, the secondary one of
/// Receive Secondary (entries that failed several times, tried less often), and failed (tried
/// no more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    Primary,
    Secondary,
    Failed,
}

crate::words::words!(Queue { Primary => "primary", Secondary => "secondary", Failed => "failed" });

/// The receive queue's retry rule (BG_BACKOFF_*, EMAIL_BG_SECONDARY_AFTER, EMAIL_BG_FAILED_AFTER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivePolicy {
    pub backoff: Backoff,
    /// More failures than this: to the secondary lane.
    pub secondary_after: i64,
    /// More failures than this: failed for good.
    pub final_after: i64,
}

/// A receive entry after one more failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveRetry {
    pub attempts: i64,
    pub queue: Queue,
    pub next_attempt: i64,
}

/// The entry that had failed `attempts` times failed again at `now`.
pub fn receive_failed(p: &ReceivePolicy, attempts: i64, now: i64) -> ReceiveRetry {
    let attempts = attempts + 1;
    let queue = if attempts > p.final_after {
        Queue::Failed
    } else if attempts > p.secondary_after {
        Queue::Secondary
    } else {
        Queue::Primary
    };
    ReceiveRetry { attempts, queue, next_attempt: now + p.backoff.after(attempts) }
}

/// The outbox's retry rule (BG_BACKOFF_*, EMAIL_BG_SEND_SECONDARY_AFTER, EMAIL_BG_SEND_MAX_AGE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendPolicy {
    pub backoff: Backoff,
    /// More failed attempts than this: Send Secondary takes over.
    pub secondary_after: i64,
    /// Entries older than this (seconds) that still fail become ERROR.
    pub max_age: i64,
}

/// How one attempt at an outbox entry ended, as far as what comes next is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendEnd<'a> {
    /// At least one recipient accepted; `pending`: some were refused for now (4xx).
    Accepted { pending: bool },
    /// Nobody accepted and the refusal is final (5xx).
    Refused { error: &'a str },
    /// The server may have accepted it (the connection dropped after the final "."): never
    /// sent again without a person.
    Unknown { error: &'a str },
    /// Temporary (4xx, a connection refused or dropped before the end of DATA).
    Temporary { error: &'a str },
}

/// An outbox entry's next state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxNext {
    /// SUCCESS. The recipients refused for now get an entry of their own, due at
    /// `pending_due`, so that those who accepted never get the message twice.
    Success { pending_due: Option<i64> },
    /// ERROR, for this reason.
    Error { error: String },
    /// PENDING again at `next_attempt`, Send Secondary's once `secondary`.
    Retry { next_attempt: i64, secondary: bool, error: String },
}

/// What follows the `attempts`-th attempt (counted at its claim) at an entry created at
/// `created`, which ended as `end` at `now`.
pub fn outbox_next(p: &SendPolicy, end: SendEnd, attempts: i64, created: i64, now: i64) -> OutboxNext {
    match end {
        SendEnd::Accepted { pending } => OutboxNext::Success { pending_due: pending.then(|| now + p.backoff.base) },
        SendEnd::Refused { error } => OutboxNext::Error { error: error.to_string() },
        SendEnd::Unknown { error } => OutboxNext::Error { error: format!("delivery outcome unknown: {error}") },
        SendEnd::Temporary { error } if now - created >= p.max_age => {
            OutboxNext::Error { error: format!("gave up after {attempts} attempts over {}s: {error}", now - created) }
        }
        SendEnd::Temporary { error } => OutboxNext::Retry {
            next_attempt: now + p.backoff.after(attempts),
            secondary: attempts > p.secondary_after,
            error: error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff { base: 10, max: 100 };

    #[test]
    fn account_failed_table() {
        let ms = Duration::from_millis;
        #[rustfmt::skip]
        let cases: &[(&str, AccountFailure, i64, AccountNext)] = &[
            ("a revoked grant waits for a person", AccountFailure::GrantRevoked, 3, AccountNext::WaitForPerson),
            ("a refused login waits the auth retry time", AccountFailure::RefusedLogin, 0, AccountNext::RetryIn(300)),
            ("however often it was refused", AccountFailure::RefusedLogin, 9, AccountNext::RetryIn(300)),
            ("throttled: what the server asked", AccountFailure::Throttled(ms(3000)), 0, AccountNext::RetryIn(3)),
            ("throttled: rounded up to whole seconds", AccountFailure::Throttled(ms(1500)), 0, AccountNext::RetryIn(2)),
            ("throttled: never less than a second", AccountFailure::Throttled(ms(0)), 0, AccountNext::RetryIn(1)),
            ("the first failure waits the base", AccountFailure::Other, 0, AccountNext::RetryIn(10)),
            ("the third in a row waits four times it", AccountFailure::Other, 2, AccountNext::RetryIn(40)),
            ("capped", AccountFailure::Other, 20, AccountNext::RetryIn(100)),
        ];
        for (name, failure, failures, want) in cases {
            assert_eq!(account_failed(&B, 300, *failure, *failures), *want, "{name}");
        }
    }

    #[test]
    fn receive_failed_table() {
        let p = ReceivePolicy { backoff: B, secondary_after: 2, final_after: 4 };
        #[rustfmt::skip]
        let cases: &[(&str, i64, ReceiveRetry)] = &[
            ("the first failure stays primary", 0, ReceiveRetry { attempts: 1, queue: Queue::Primary, next_attempt: 1010 }),
            ("up to the secondary limit, primary", 1, ReceiveRetry { attempts: 2, queue: Queue::Primary, next_attempt: 1020 }),
            ("past it, secondary", 2, ReceiveRetry { attempts: 3, queue: Queue::Secondary, next_attempt: 1040 }),
            ("up to the final limit, secondary", 3, ReceiveRetry { attempts: 4, queue: Queue::Secondary, next_attempt: 1080 }),
            ("past it, failed", 4, ReceiveRetry { attempts: 5, queue: Queue::Failed, next_attempt: 1100 }),
            ("failed stays failed, the wait capped", 40, ReceiveRetry { attempts: 41, queue: Queue::Failed, next_attempt: 1100 }),
        ];
        for (name, attempts, want) in cases {
            assert_eq!(receive_failed(&p, *attempts, 1000), *want, "{name}");
        }
    }

    #[test]
    fn outbox_next_table() {
        let p = SendPolicy { backoff: B, secondary_after: 2, max_age: 500 };
        let err = |e: &str| OutboxNext::Error { error: e.to_string() };
        let retry = |at, secondary| OutboxNext::Retry { next_attempt: at, secondary, error: "451 later".into() };
        let later = SendEnd::Temporary { error: "451 later" };
        #[rustfmt::skip]
        let cases: &[(&str, SendEnd, i64, i64, OutboxNext)] = &[
            ("all accepted", SendEnd::Accepted { pending: false }, 1, 900, OutboxNext::Success { pending_due: None }),
            ("some refused for now: their entry waits the base", SendEnd::Accepted { pending: true }, 3, 900, OutboxNext::Success { pending_due: Some(1010) }),
            ("accepted however old", SendEnd::Accepted { pending: false }, 9, 0, OutboxNext::Success { pending_due: None }),
            ("refused for good", SendEnd::Refused { error: "550 no such user" }, 1, 900, err("550 no such user")),
            ("outcome unknown: never again by itself", SendEnd::Unknown { error: "cut after the dot" }, 1, 900, err("delivery outcome unknown: cut after the dot")),
            ("the first temporary failure waits the base", later, 1, 900, retry(1010, false)),
            ("up to the secondary limit, primary", later, 2, 900, retry(1020, false)),
            ("past it, Send Secondary's", later, 3, 900, retry(1040, true)),
            ("the wait capped", later, 30, 900, retry(1100, true)),
            ("just younger than the age limit: retried", later, 1, 501, retry(1010, false)),
            ("at the age limit: given up", later, 4, 500, err("gave up after 4 attempts over 500s: 451 later")),
        ];
        for (name, end, attempts, created, want) in cases {
            assert_eq!(outbox_next(&p, *end, *attempts, *created, 1000), *want, "{name}");
        }
    }
}
