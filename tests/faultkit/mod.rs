//! Fault-injection helpers for the integration tests (issue 11): a seeded kill loop, a
//! concurrent IMAP "mutator", a secret scanner, and the CI/soak size switch with its `FIGURE`
//! summary lines.

pub mod killloop;
pub mod mutator;
pub mod outbox;
pub mod secrets;
pub mod smtpstub;
pub mod soak;

pub use backproc_testkit::mailgen::Rng;
