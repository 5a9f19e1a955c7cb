//! The one back-off rule every retry follows (an account's next connection, a folder task's
//! hold, a receive entry's and an outbox entry's next attempt): the first failure waits the
//! base, each further one in a row twice as long, up to the maximum.

/// Exponential back-off, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: i64,
    pub max: i64,
}

impl Backoff {
    /// The wait after the `nth` failure in a row (1 for the first): base · 2^(nth−1), capped
    /// at `max`. Below 1, as 1; never overflows.
    pub fn after(&self, nth: i64) -> i64 {
        let shift = (nth.clamp(1, 31) - 1) as u32;
        self.base.saturating_mul(1i64 << shift).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;

    #[test]
    fn doubling_and_capped() {
        let b = Backoff { base: 60, max: 3600 };
        let cases = [
            ("none yet counts as the first", 0, 60),
            ("first", 1, 60),
            ("second", 2, 120),
            ("third", 3, 240),
            ("seventh reaches the cap", 7, 3600),
            ("far past it", 1000, 3600),
            ("negative", -5, 60),
        ];
        for (name, nth, want) in cases {
            assert_eq!(b.after(nth), want, "{name}");
        }
        let huge = Backoff { base: i64::MAX / 2, max: i64::MAX };
        assert_eq!(huge.after(40), i64::MAX, "saturates instead of overflowing");
    }
}
