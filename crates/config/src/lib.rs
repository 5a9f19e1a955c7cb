//! config.inc → typed constants: reads PHP `define('NAME', value);` lines, keeps ours,
//! validates them, and says where each effective value comes from.
//!
//! Invariants: no I/O except reading the one file in `load`; never panics on any input;
//! every error names `file:LINE`, the constant, the value as written and what was expected,
//! and all errors of a file are reported together.

mod lexer;
mod spec;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use lexer::Tok;
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

/// Every error of an invalid file.
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
    label: String,
    lines: HashMap<usize, usize>,
}

impl Loaded {
    pub fn entries(&self) -> Vec<Entry> {
        specs()
            .iter()
            .enumerate()
            .map(|(i, s)| Entry {
                name: s.name,
                value: self.config.get(i),
                source: match self.lines.get(&i) {
                    Some(l) => format!("{}:{l}", self.label),
                    None => "default".into(),
                },
                doc: s.doc,
            })
            .collect()
    }
}

/// Reads a config file; a missing file means every default (`file_missing`).
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let label = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "config.inc".into());
    match std::fs::read(path) {
        Ok(bytes) => parse(&bytes, &label),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Loaded {
            config: Config::default(),
            warnings: Vec::new(),
            file_missing: true,
            label,
            lines: HashMap::new(),
        }),
        Err(e) => Err(ConfigErrors {
            errors: vec![Diagnostic { file: label, line: 0, message: format!("cannot read {}: {e}", path.display()) }],
        }),
    }
}

/// A literal as written, for messages.
fn written(t: &[Tok]) -> String {
    t.iter()
        .map(|t| match t {
            Tok::Ident(s) | Tok::OtherNumber(s) => s.clone(),
            Tok::Str(s) => format!("'{s}'"),
            Tok::Int(i) => i.to_string(),
            Tok::Punct(c) => c.to_string(),
            Tok::Unterminated(_) => String::new(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn expected(kind: Kind) -> String {
    match kind {
        Kind::Bool => "TRUE or FALSE".into(),
        Kind::Int { min, max } => format!("an integer from {min} to {max}"),
        Kind::Str => "a non-empty 'string'".into(),
        Kind::Time => "'HH:MM' from 00:00 to 23:59".into(),
    }
}

/// Converts the value tokens of one of our defines, or explains why not.
fn convert(kind: Kind, toks: &[Tok]) -> Result<Value, String> {
    let (neg, lit) = match toks {
        [Tok::Punct('-'), rest @ ..] => (true, rest),
        [Tok::Punct('+'), rest @ ..] => (false, rest),
        other => (false, other),
    };
    let lit = match lit {
        [one] => one,
        _ => return Err("is not a literal".into()),
    };
    match (kind, lit) {
        (Kind::Bool, Tok::Ident(s)) if s.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
        (Kind::Bool, Tok::Ident(s)) if s.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
        (Kind::Bool, Tok::Int(i)) if !neg && (*i == 0 || *i == 1) => Ok(Value::Bool(*i == 1)),
        (Kind::Int { min, max }, Tok::Int(i)) => {
            let v = if neg { -*i } else { *i };
            if v < i128::from(min) || v > i128::from(max) {
                Err("is out of range".into())
            } else {
                Ok(Value::Int(v as u64))
            }
        }
        (Kind::Str, Tok::Str(s)) if !neg && !s.is_empty() && !s.contains('\0') => Ok(Value::Str(s.clone())),
        (Kind::Time, Tok::Str(s)) if !neg => TimeOfDay::parse(s).map(Value::Time).ok_or_else(|| "is not a time".into()),
        (_, Tok::Ident(s)) if s.eq_ignore_ascii_case("null") => Err("is NULL".into()),
        _ => Err("has the wrong type".into()),
    }
}

/// Optimal string alignment distance (Damerau–Levenshtein with adjacent transpositions).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for j in 0..=b.len() {
        d[0][j] = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// Parses the bytes of a config file; `label` names it in messages (e.g. "config.inc").
pub fn parse(bytes: &[u8], label: &str) -> Result<Loaded, ConfigErrors> {
    let text = String::from_utf8_lossy(bytes);
    let toks = lexer::tokenize(&text);
    let specs = specs();
    let mut config = Config::default();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut lines: HashMap<usize, usize> = HashMap::new();
    let diag = |line: usize, message: String| Diagnostic { file: label.to_owned(), line, message };
    let mut i = 0;
    while i < toks.len() {
        let (tok, line) = &toks[i];
        if let Tok::Unterminated(what) = tok {
            errors.push(diag(*line, format!("unterminated {what}: the rest of the file cannot be read")));
            break;
        }
        let is_define = matches!(tok, Tok::Ident(s) if s.trim_start_matches('\\').eq_ignore_ascii_case("define"))
            && matches!(toks.get(i + 1), Some((Tok::Punct('('), _)));
        if !is_define {
            i += 1;
            continue;
        }
        let line = *line;
        let Some((Tok::Str(name), _)) = toks.get(i + 2) else {
            i += 2;
            continue; // define(SOME_EXPR, ...): not ours to judge
        };
        let name = name.clone();
        // value tokens: from after the comma to the ',' or ')' closing the call at depth 0
        let mut j = i + 3;
        let mut value = Vec::new();
        let mut closed = false;
        let ours = specs.iter().position(|s| s.name == name);
        if matches!(toks.get(j), Some((Tok::Punct(','), _))) {
            j += 1;
            let mut depth = 0i32;
            while let Some((t, _)) = toks.get(j) {
                match t {
                    Tok::Punct('(' | '[') => depth += 1,
                    Tok::Punct(')' | ']') if depth > 0 => depth -= 1,
                    Tok::Punct(')') | Tok::Punct(',') if depth == 0 => {
                        closed = true;
                        break;
                    }
                    Tok::Punct(';') => break,
                    Tok::Unterminated(_) => break,
                    _ => {}
                }
                value.push(t.clone());
                j += 1;
            }
        }
        match ours {
            Some(idx) => {
                let spec = specs[idx];
                if !closed || value.is_empty() {
                    errors.push(diag(
                        line,
                        format!("{name}: cannot read this define(): expected define('{name}', {});", spec.default),
                    ));
                } else {
                    match convert(spec.kind, &value) {
                        Ok(v) => {
                            if let Some(first) = lines.get(&idx) {
                                // PHP itself keeps the first definition and emits a notice;
                                // here the later one wins, as administrators editing the file
                                // bottom-up expect, and we say so.
                                warnings.push(diag(
                                    line,
                                    format!("{name} defined again (first at line {first}); the later value wins"),
                                ));
                            }
                            config.set(idx, v);
                            lines.insert(idx, line);
                        }
                        Err(why) => errors.push(diag(
                            line,
                            format!("{name} = {} {why}: expected {}", written(&value), expected(spec.kind)),
                        )),
                    }
                }
            }
            None => {
                let upper = name.to_ascii_uppercase();
                if let Some(s) = specs.iter().find(|s| s.name == upper) {
                    warnings.push(diag(
                        line,
                        format!("unknown constant {name}, did you mean {}? (names are case-sensitive)", s.name),
                    ));
                } else if let Some(s) = specs
                    .iter()
                    .map(|s| (distance(&upper, s.name), s))
                    .filter(|(d, _)| *d <= 2)
                    .min_by_key(|(d, _)| *d)
                    .map(|(_, s)| s)
                {
                    warnings.push(diag(line, format!("unknown constant {name}, did you mean {}?", s.name)));
                }
            }
        }
        i = j.max(i + 1);
    }
    if !errors.is_empty() {
        return Err(ConfigErrors { errors });
    }
    Ok(Loaded { config, warnings, file_missing: false, label: label.to_owned(), lines })
}

#[cfg(test)]
mod tests;
