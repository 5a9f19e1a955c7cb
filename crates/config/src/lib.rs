//! config.inc → typed constants: reads PHP `define('NAME', value);` lines, keeps ours,
//! validates them, and says where each effective value comes from.
//!
//! Invariants: no I/O except reading the one file in [`load`]; never panics on any input;
//! every error names `file:LINE`, the constant, the value as written and what was expected,
//! and all errors of a file are reported together. Constants of other applications are
//! ignored whatever their value, since one config.inc is shared with the application.

mod lexer;
mod parse;
mod spec;

use std::fmt;
use std::path::Path;

pub use spec::{Config, Kind, Spec, TimeOfDay, Value, specs};

/// A message tied to a line of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Every error of an invalid file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Where a constant's effective value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File { line: usize },
}

impl Source {
    /// "default" or "LABEL:LINE", naming the file as it was given to the parser.
    pub fn describe(&self, label: &str) -> String {
        match self {
            Source::Default => "default".into(),
            Source::File { line } => format!("{label}:{line}"),
        }
    }
}

impl fmt::Display for Source {
    /// "default" or "config.inc:12"; [`Loaded::entries`] uses the real file name instead.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe("config.inc"))
    }
}

/// One constant's effective value and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: &'static str,
    pub value: Value,
    /// "default" or "config.inc:12".
    pub source: String,
    pub doc: &'static str,
}

/// A valid configuration with its warnings.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
    pub file_missing: bool,
    /// The file name used in messages and sources.
    label: String,
    /// Per constant, in table order.
    sources: Vec<Source>,
}

impl Loaded {
    /// Every constant in table order with its effective value and source.
    pub fn entries(&self) -> Vec<Entry> {
        specs()
            .iter()
            .zip(self.config.values())
            .enumerate()
            .map(|(i, (s, value))| Entry {
                name: s.name,
                value,
                source: self.sources.get(i).copied().unwrap_or(Source::Default).describe(&self.label),
                doc: s.doc,
            })
            .collect()
    }

    /// Where constant `name` (e.g. "BG_MAX_THREADS") got its value; None if it is not ours.
    pub fn source(&self, name: &str) -> Option<Source> {
        let i = specs().iter().position(|s| s.name == name)?;
        Some(self.sources.get(i).copied().unwrap_or(Source::Default))
    }

    /// The file name used in messages ("config.inc").
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// Reads a config file; a missing file means every default (`file_missing`).
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let label = path.file_name().map_or_else(|| "config.inc".into(), |n| n.to_string_lossy().into_owned());
    match std::fs::read(path) {
        Ok(bytes) => parse(&bytes, &label),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Loaded {
            config: Config::default(),
            warnings: Vec::new(),
            file_missing: true,
            sources: vec![Source::Default; specs().len()],
            label,
        }),
        Err(e) => Err(ConfigErrors {
            errors: vec![Diagnostic { file: label, line: 0, message: format!("cannot read {}: {e}", path.display()) }],
        }),
    }
}

/// Parses the bytes of a config file (any bytes: invalid UTF-8 is read lossily); `label`
/// names the file in messages and sources (e.g. "config.inc").
pub fn parse(text: &[u8], label: &str) -> Result<Loaded, ConfigErrors> {
    parse::parse(text, label)
}

#[cfg(test)]
mod tests;
