//! `backproc internal …`: the internal message service (being written).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum InternalCmd {}

pub fn run(_home: PathBuf, cmd: InternalCmd) -> anyhow::Result<ExitCode> {
    match cmd {}
}
