//! From tokens to a [`Loaded`]: finds `define()` calls, checks ours against the spec table,
//! collects every error and warning with its line.

use crate::lexer::{self, Tok, Token};
use crate::spec::{Kind, Spec, TimeOfDay, Value, specs};
use crate::{Config, ConfigErrors, Diagnostic, Loaded, Source};

struct Parser<'a> {
    src: &'a [u8],
    label: &'a str,
    specs: &'static [Spec],
    config: Config,
    sources: Vec<Source>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

pub(crate) fn parse(src: &[u8], label: &str) -> Result<Loaded, ConfigErrors> {
    let lexed = lexer::tokenize(src);
    let specs = specs();
    let mut p = Parser {
        src,
        label,
        specs,
        config: Config::default(),
        sources: vec![Source::Default; specs.len()],
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    if !lexed.has_open_tag && !lexed.tokens.is_empty() {
        p.warn(1, "no <?php tag: PHP would print this file instead of running it; read as PHP anyway".into());
    }
    let toks = &lexed.tokens;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].tok {
            Tok::Unterminated(what) => {
                let line = toks[i].line;
                p.error(line, format!("unterminated {what} starting here: the rest of the file cannot be read"));
                break;
            }
            Tok::Ident(s) if is_define_call(toks, i, s) => i = p.define(toks, i),
            _ => i += 1,
        }
    }
    if !p.errors.is_empty() {
        return Err(ConfigErrors { errors: p.errors });
    }
    Ok(Loaded {
        config: p.config,
        warnings: p.warnings,
        file_missing: false,
        label: label.to_owned(),
        sources: p.sources,
    })
}

/// `define(` or `\define(` (function names are case-insensitive in PHP), but not a method
/// `$o->define(`, a static `X::define(`, nor the declaration `function define(`.
fn is_define_call(toks: &[Token], i: usize, name: &str) -> bool {
    let tok = |k: usize| i.checked_sub(k).and_then(|k| toks.get(k)).map(|t| &t.tok);
    name.trim_start_matches('\\').eq_ignore_ascii_case("define")
        && matches!(toks.get(i + 1).map(|t| &t.tok), Some(Tok::Punct(b'(')))
        && !matches!(tok(1), Some(Tok::Punct(b'>')))
        && !matches!((tok(2), tok(1)), (Some(Tok::Punct(b':')), Some(Tok::Punct(b':'))))
        && !matches!(tok(1), Some(Tok::Ident(w)) if w.eq_ignore_ascii_case("function") || w.eq_ignore_ascii_case("new"))
}

impl Parser<'_> {
    fn diag(&self, line: usize, message: String) -> Diagnostic {
        Diagnostic { file: self.label.to_owned(), line, message }
    }

    fn error(&mut self, line: usize, message: String) {
        let d = self.diag(line, message);
        self.errors.push(d);
    }

    fn warn(&mut self, line: usize, message: String) {
        let d = self.diag(line, message);
        self.warnings.push(d);
    }

    /// Handles the define starting at token `i` (`define`); returns where to go on.
    fn define(&mut self, toks: &[Token], i: usize) -> usize {
        let line = toks[i].line;
        let Some(Tok::Str { text: name, .. }) = toks.get(i + 2).map(|t| &t.tok) else {
            return i + 2; // define(SOME_EXPR, ...): a name we cannot know, so not ours
        };
        // The value runs from after the comma to the `,` or `)` that ends it at depth 0.
        let mut j = i + 3;
        let mut closed = false;
        let value_start = j + 1;
        if matches!(toks.get(j).map(|t| &t.tok), Some(Tok::Punct(b','))) {
            j += 1;
            let mut depth = 0usize;
            while let Some(t) = toks.get(j) {
                match t.tok {
                    Tok::Punct(b'(' | b'[' | b'{') => depth += 1,
                    Tok::Punct(b')' | b']' | b'}') if depth > 0 => depth -= 1,
                    Tok::Punct(b')' | b',') if depth == 0 => {
                        closed = true;
                        break;
                    }
                    // A statement end or unreadable rest means the call was never closed.
                    Tok::Punct(b';' | b'}') | Tok::Unterminated(_) => break,
                    _ => {}
                }
                j += 1;
            }
        }
        let value = toks.get(value_start..j).unwrap_or(&[]);
        match self.specs.iter().position(|s| s.name == name) {
            Some(idx) if !closed || value.is_empty() => {
                let spec = self.specs[idx];
                self.error(
                    line,
                    format!("{name}: cannot read this define(): expected define('{name}', {});", spec.default),
                );
            }
            Some(idx) => self.ours(idx, line, value),
            None => self.not_ours(name, line),
        }
        j.max(i + 1)
    }

    fn ours(&mut self, idx: usize, line: usize, value: &[Token]) {
        let spec = self.specs[idx];
        let v = match convert(spec.kind, value) {
            Ok(v) => v,
            Err(why) => {
                let written = self.written(value);
                let expected = expected(&spec);
                return self.error(line, format!("{} = {written} {why}: expected {expected}", spec.name));
            }
        };
        if let Source::File { line: first } = self.sources[idx] {
            // PHP itself keeps the first definition (and notices "already defined"); we let
            // the later one win, as the issue asks and as an administrator who appends an
            // override at the end of the file expects — and we say so.
            self.warn(line, format!("{} defined again (first at line {first}); the later value wins", spec.name));
        }
        if self.config.set(idx, v) {
            self.sources[idx] = Source::File { line };
        } else {
            self.error(line, format!("{}: internal error: the table's kind and type disagree", spec.name));
        }
    }

    /// A constant of another application: ignored, unless it looks like a misspelling of ours.
    fn not_ours(&mut self, name: &str, line: usize) {
        let upper = name.to_ascii_uppercase();
        if let Some(s) = self.specs.iter().find(|s| s.name == upper) {
            let msg = format!("unknown constant {name}, did you mean {}? (constant names are case-sensitive)", s.name);
            return self.warn(line, msg);
        }
        let best = self
            .specs
            .iter()
            .filter(|s| s.name.len().abs_diff(upper.len()) <= 2) // cheap pre-filter
            .map(|s| (distance(upper.as_bytes(), s.name.as_bytes()), s.name))
            .filter(|(d, _)| *d <= 2)
            .min_by_key(|(d, _)| *d);
        if let Some((_, intended)) = best {
            // The name is any string literal, and a newline in it would split the warning
            // over two lines of `config check` (found by fuzz/config_inc): escape controls.
            self.warn(line, format!("unknown constant {}, did you mean {intended}?", name.escape_debug()));
        }
    }

    /// The value as written in the file, on one line and of a readable length.
    fn written(&self, value: &[Token]) -> String {
        let (Some(first), Some(last)) = (value.first(), value.last()) else { return String::new() };
        let raw = String::from_utf8_lossy(self.src.get(first.start..last.end).unwrap_or(&[]));
        let one_line = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        if one_line.chars().count() > 60 {
            format!("{}…", one_line.chars().take(60).collect::<String>())
        } else {
            one_line
        }
    }
}

fn expected(spec: &Spec) -> String {
    match spec.kind {
        Kind::Bool => "TRUE or FALSE".into(),
        Kind::Int { min, max } if spec.unit.is_empty() => format!("an integer from {min} to {max}"),
        Kind::Int { min, max } => format!("an integer ({}) from {min} to {max}", spec.unit),
        Kind::Str => "a non-empty 'string'".into(),
        Kind::Time => "'HH:MM' from 00:00 to 23:59".into(),
    }
}

/// Converts the value tokens of one of our defines, or says what is wrong ("is out of range").
fn convert(kind: Kind, toks: &[Token]) -> Result<Value, &'static str> {
    let (neg, lit) = match toks {
        [Token { tok: Tok::Punct(b'-'), .. }, rest @ ..] => (true, rest),
        [Token { tok: Tok::Punct(b'+'), .. }, rest @ ..] => (false, rest),
        other => (false, other),
    };
    let [lit] = lit else { return Err("is not a literal") };
    let lit = &lit.tok;
    match (kind, lit) {
        (_, Tok::Ident(s)) if s.eq_ignore_ascii_case("null") => Err("is NULL"),
        (Kind::Bool, Tok::Ident(s)) if !neg && s.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
        (Kind::Bool, Tok::Ident(s)) if !neg && s.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
        // PHP truthiness: 1 and 0 are what old config files use for booleans.
        (Kind::Bool, Tok::Int(i @ (0 | 1))) if !neg => Ok(Value::Bool(*i == 1)),
        (Kind::Int { min, max }, Tok::Int(i)) => {
            let v = if neg { -*i } else { *i };
            match u64::try_from(v) {
                Ok(v) if (min..=max).contains(&v) => Ok(Value::Int(v)),
                _ => Err("is out of range"),
            }
        }
        (Kind::Str | Kind::Time, Tok::Str { interp: true, .. }) => Err("is not a literal (it interpolates a variable)"),
        (Kind::Str, Tok::Str { text, .. }) if !neg => match text.as_str() {
            "" => Err("is empty"),
            t if t.contains('\0') => Err("contains a NUL byte"),
            t => Ok(Value::Str(t.to_owned())),
        },
        (Kind::Time, Tok::Str { text, .. }) if !neg => TimeOfDay::parse(text).map(Value::Time).ok_or("is not a time"),
        // Another constant or a function call: PHP would compute it, we cannot.
        (_, Tok::Ident(s)) if !["true", "false"].iter().any(|b| s.eq_ignore_ascii_case(b)) => Err("is not a literal"),
        _ => Err("has the wrong type"),
    }
}

/// Optimal string alignment distance (Damerau–Levenshtein with adjacent transpositions).
fn distance(a: &[u8], b: &[u8]) -> usize {
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
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

#[cfg(test)]
mod tests {
    #[test]
    fn distances() {
        let d = |a: &str, b: &str| super::distance(a.as_bytes(), b.as_bytes());
        assert_eq!(d("BG_MAX_THREAD", "BG_MAX_THREADS"), 1);
        assert_eq!(d("BG_MAX_THRAEDS", "BG_MAX_THREADS"), 1);
        assert_eq!(d("BG_MAX_THREADS", "BG_MAX_THREADS"), 0);
        assert_eq!(d("", "abc"), 3);
    }
}
