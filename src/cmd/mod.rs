//! One module per group of subcommands, and what they share: loading config.inc, starting the
//! log files, opening the store.

pub mod accounts;
pub mod config;
pub mod internal;
pub mod mail;
pub mod maintenance;
pub mod outbox;
pub mod run;
pub mod status;
pub mod sync;

use std::path::{Path, PathBuf};

use anyhow::Context;
use backproc_config::{Config, Loaded};
use backproc_store::Store;

use crate::home::Home;
use crate::logging::{Logging, Rotation};

/// config.inc did not validate; the text lists every error with its line.
#[derive(Debug)]
pub struct ConfigInvalid(pub String);

impl std::fmt::Display for ConfigInvalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConfigInvalid {}

pub fn load_config(path: &Path) -> anyhow::Result<Loaded> {
    backproc_config::load(path).map_err(|e| anyhow::Error::new(ConfigInvalid(e.to_string())))
}

pub fn rotation(c: &Config) -> Rotation {
    Rotation { max_size: c.bg_log_max_size, keep: c.bg_log_keep.min(u32::MAX as u64) as u32 }
}

/// What every command that works on a home needs: the home, its config and the log files.
pub struct Env {
    pub home: Home,
    pub loaded: Loaded,
    pub logging: Logging,
}

impl Env {
    /// Loads and validates config.inc first, so an invalid one changes nothing on disk.
    pub fn open(root: PathBuf) -> anyhow::Result<Env> {
        let loaded = load_config(&root.join("config.inc"))?;
        let home = Home::open(root)?;
        let logging = Logging::init(&home.logs(), rotation(&loaded.config))?;
        crate::logging::install_panic_hook();
        for w in &loaded.warnings {
            log::warn!("{w}");
        }
        Ok(Env { home, loaded, logging })
    }

    pub fn config(&self) -> &Config {
        &self.loaded.config
    }

    pub fn store(&self) -> anyhow::Result<Store> {
        let path = self.home.store_path();
        Store::open(&path).with_context(|| format!("cannot open the store {}", path.display()))
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
