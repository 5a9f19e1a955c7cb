//! The store's closed vocabularies, one enum each: a folder's sync priority and special use,
//! an outbox entry's state. Each is written as its store and command-line text (`as_str`,
//! `parse`); with the `sql` feature it is a column of that text (`ToSql`/`FromSql`), and a
//! row holding anything else is an error naming the value, never a silent default.

/// Implements `as_str`, `parse`, `NAMES` and `Display` over one table of names.
macro_rules! words {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, as written.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// As the store and the command line write it.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }

            /// From its written form; `None` for anything else.
            pub fn parse(s: &str) -> Option<$ty> {
                match s { $($text => Some($ty::$variant),)+ _ => None }
            }
        }

        /// Compared with its written form (`state == "ERROR"`), as tests and callers holding
        /// text do.
        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use words;

/// How often a folder is synced: high (at the short intervals), low (in the daily run), off
/// (never: an administrator excluded it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "lowercase"))]
pub enum Priority {
    High,
    /// A new folder's, as in the schema.
    #[default]
    Low,
    Off,
}

words!(Priority { High => "high", Low => "low", Off => "off" });

/// What a folder is for (RFC 6154 SPECIAL-USE, or guessed from a well-known name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "lowercase"))]
pub enum SpecialUse {
    Inbox,
    Sent,
    Drafts,
    Trash,
    Junk,
    Archive,
    All,
    Flagged,
}

words!(SpecialUse {
    Inbox => "inbox",
    Sent => "sent",
    Drafts => "drafts",
    Trash => "trash",
    Junk => "junk",
    Archive => "archive",
    All => "all",
    Flagged => "flagged",
});

/// An outbox entry's delivery state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "UPPERCASE"))]
pub enum OutboxState {
    /// Due at its next attempt.
    Pending,
    /// Claimed by a sender (under a lease).
    Processing,
    /// At least one recipient accepted it.
    Success,
    /// Final: refused, given up, or its outcome unknown.
    Error,
    /// Set again by a person (`outbox retry`): due at once.
    Retry,
}

words!(OutboxState {
    Pending => "PENDING",
    Processing => "PROCESSING",
    Success => "SUCCESS",
    Error => "ERROR",
    Retry => "RETRY",
});

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Copy + PartialEq + std::fmt::Debug>(
        names: &[&str],
        parse: fn(&str) -> Option<T>,
        show: fn(T) -> &'static str,
    ) {
        for name in names {
            let v = parse(name).unwrap_or_else(|| panic!("{name} parses"));
            assert_eq!(show(v), *name);
        }
        assert!(parse("").is_none() && parse("nonsense").is_none());
    }

    #[test]
    fn every_name_round_trips_and_nothing_else_parses() {
        round_trip(Priority::NAMES, Priority::parse, Priority::as_str);
        round_trip(SpecialUse::NAMES, SpecialUse::parse, SpecialUse::as_str);
        round_trip(OutboxState::NAMES, OutboxState::parse, OutboxState::as_str);
        assert_eq!(Priority::parse("HIGH"), None, "case matters: the store writes lower case");
        assert_eq!(OutboxState::parse("pending"), None, "and outbox states in upper case");
        assert_eq!(Priority::default(), Priority::Low, "a new folder's, as the schema says");
    }
}
