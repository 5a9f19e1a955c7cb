//! IMAP: sessions to servers, folder names (modified UTF-7), and the pure sync plan.
//!
//! Invariants: `plan` does no I/O and knows nothing of SQL; `session` knows nothing of the
//! store. The engine glues them.

pub mod fetch;
pub mod mutf7;
pub mod plan;
pub mod session;
pub mod status;
#[cfg(test)]
mod testio;

pub use plan::{Change, Flags, LocalFolder, LocalMsg, NewMsg, ServerFlags, ServerStatus, ServerView, plan};
pub use session::{Caps, ConnectParams, Error, ErrorKind, Fetched, ListedFolder, Security, Session};

/// Whether a mailbox name is INBOX: that one name is case-insensitive (RFC 3501 §5.1).
pub fn is_inbox(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"INBOX")
}
