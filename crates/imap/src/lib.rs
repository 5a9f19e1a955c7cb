//! IMAP: one protocol layer per connection (`session`: the one owner of its tags,
//! pipelining and buffered bytes; `commands`: typed commands), a response tokenizer that does
//! no I/O (`lex`) under a parser that reads items at item boundaries (`response`), modified
//! UTF-7 folder names, and the pure sync planners (`plan`).
//!
//! Invariants: `lex`, `response` and `plan` do no I/O; the jobs never see a tag or a raw line;
//! `session` knows nothing of the store; passwords never reach an error or a log line.

pub mod commands;
pub mod lex;
pub mod mutf7;
pub mod plan;
pub mod read;
pub mod response;
pub mod session;
#[cfg(test)]
mod testio;
mod tls;
pub mod transport;
pub mod watch;

pub use backproc_sasl::Credential;
pub use commands::{
    FetchReport, Fetched, FlagPush, FlagsRead, FolderAnswer, FolderRead, ListedFolder, Listing, StoreReport, Ticket,
    Unusable, special_by_name, uid_set,
};
pub use plan::{
    Change, FetchPlan, Flags, LocalFolder, LocalMsg, LocalSummary, NewMsg, Presence, ReadCaps, ServerFlags,
    ServerStatus, ServerView, plan, plan_fetch,
};
pub use session::{Caps, ConnectParams, Error, ErrorKind, Security, Selected, Session, Stats, status_key};
pub use transport::Deadline;
pub use watch::{Watch, WatchEvent, WatchMode};

/// Whether a mailbox name is INBOX: that one name is case-insensitive (RFC 3501 §5.1).
pub fn is_inbox(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"INBOX")
}
