//! `backproc maintenance …`: run a maintenance process by hand (being written).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum MaintenanceCmd {}

pub fn run(_home: PathBuf, cmd: MaintenanceCmd) -> anyhow::Result<ExitCode> {
    match cmd {}
}
