//! Unit tests of the config.inc reader.

mod files;
mod table;
