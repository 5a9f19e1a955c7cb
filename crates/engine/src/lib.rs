//! The engine: the master's loop, the scheduler, the worker pool and the jobs.
//!
//! Invariants: the engine knows nothing of log4rs, signals, the pid file or the CLI (the
//! binary owns those); it never writes SQL (the store does); the scheduling decisions in
//! `schedule` are pure functions of (store rows, config, now), tested with an injected clock.

pub mod jobs;
pub mod logctx;
pub mod master;
pub mod metrics;
#[doc(hidden)] // public only for the fuzz target (fuzz/fuzz_targets/message_headers.rs)
pub mod parse;
pub mod pool;
pub mod push;
mod runner;
pub mod schedule;
mod sessions;
pub mod signin;
pub mod task;

use std::sync::{Arc, RwLock};

pub use master::{MasterOptions, run};
pub use pool::Runner;
pub use runner::JobRunner;
pub use task::{Failure, FailureKind, Job, Outcome, Report, Task};

/// The current config, replaced as a whole when config.inc changes.
pub type SharedConfig = Arc<RwLock<Arc<backproc_config::Config>>>;

/// The config in force now.
pub(crate) fn current(c: &SharedConfig) -> Arc<backproc_config::Config> {
    c.read().unwrap_or_else(|e| e.into_inner()).clone()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] backproc_store::Error),
}

/// Where "now" comes from: the system clock, read as the store reads it, so that the
/// engine's times and the store's agree. Tests of intervals, back-offs and leases move the
/// store's times instead (`Store::pass_time`, feature `test-support`); the scheduler's pure
/// decisions take `now` as an argument.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock;

impl Clock {
    pub fn system() -> Clock {
        Clock
    }
    /// Unix seconds.
    pub fn now(&self) -> i64 {
        backproc_store::now()
    }
}
