//! Fault-injection helpers for the integration tests (issue 11): a seeded kill loop, a
//! concurrent IMAP "mutator", and a secret scanner.
//!
//! Include with `mod util; mod faultkit;` (the kill loop uses `crate::util::Home`).

#![allow(dead_code)]

pub mod killloop;
pub mod mutator;
pub mod secrets;
pub mod smtpstub;

pub use backproc_testkit::mailgen::Rng;
