//! The integration tests: one crate, so one link and one set of helpers (`util`, `mailworld`,
//! `faultkit`), a module per area. Each test runs the built binary in a fresh home against
//! real servers that testkit starts; `cargo test --test tests sync::` runs one area.

mod faultkit;
mod mailworld;
mod util;

mod budget;
mod diskfull;
mod edges;
mod faults;
mod foundation;
mod guide;
mod hostile;
mod hostile_servers;
mod internal;
mod launches;
mod oauth;
mod outbox;
mod push;
mod schedule;
mod secrets;
mod servers;
mod status;
mod sync;
mod twoway;
