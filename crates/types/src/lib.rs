//! The vocabulary every crate shares: what a message's flags are, system and keyword alike,
//! how a connection is protected, the one back-off rule of every retry, and what a failed attempt leads to (`retry`).
//!
//! Invariant: no I/O and no dependency; the IMAP layer, the store and the engine speak these
//! types, so a flag never has to be translated between crates.

mod backoff;
mod flags;
mod host;
pub mod retry;
mod security;

pub use backoff::Backoff;
pub use flags::{Flags, KeywordError, valid_keyword};
pub use host::is_loopback;
pub use security::Security;
