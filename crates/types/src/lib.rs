//! The vocabulary every crate shares: what a message's flags are, system and keyword alike,
//! how a connection is protected, a folder's priority and special use, an outbox entry's
//! state, the one back-off rule of every retry, and what a failed attempt leads to (`retry`).
//!
//! Invariant: no I/O; no dependency but the optional ones that make these types serde values
//! (`serde`) and SQLite columns (`sql`). The IMAP layer, the store and the engine speak these
//! types, so a flag or a state never has to be translated between crates.

mod backoff;
mod cause;
mod flags;
mod host;
pub mod retry;
mod security;
#[cfg(feature = "sql")]
mod sql;
mod words;

pub use backoff::Backoff;
pub use cause::Cause;
pub use flags::{Flags, KeywordError, valid_keyword};
pub use host::is_loopback;
pub use security::Security;
pub use words::{OutboxState, Priority, SpecialUse};
