//! `backproc config`: every effective constant, its value and its source.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub struct ConfigArgs {
    /// Print a JSON array of {name, value, source} for scripts.
    #[arg(long)]
    json: bool,
}

pub fn run(home: PathBuf, args: ConfigArgs) -> anyhow::Result<ExitCode> {
    // Reading the config must not create anything: no logs, no folders.
    let loaded = super::load_config(&home.join("config.inc"))?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let entries = loaded.entries();
    if args.json {
        let v: Vec<_> = entries
            .iter()
            .map(|e| serde_json::json!({ "name": e.name, "value": e.value, "source": e.source }))
            .collect();
        super::print_json(&v)?;
    } else {
        if loaded.file_missing {
            println!("# {} not found: every constant has its default", home.join("config.inc").display());
        }
        let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
        for e in &entries {
            println!("{:width$}  {:<12}  {}", e.name, e.value.to_string(), e.source);
        }
    }
    Ok(ExitCode::SUCCESS)
}
