//! A small PHP tokenizer over raw bytes: just enough of PHP's lexical grammar to find
//! `define()` calls reliably (open/close tags, comments, all string kinds, numbers) and skip
//! everything else without ever failing on it.

/// What a token is.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// A name (`define`, `TRUE`, `\Foo\bar`); lossy UTF-8.
    Ident(String),
    /// `$name`: kept apart so that `$define(...)` is never taken for a define.
    Var,
    /// A string literal after escape processing. `interp`: a double-quoted or heredoc string
    /// that interpolates variables, so its value is not known without running PHP.
    Str {
        text: String,
        interp: bool,
    },
    /// An integer literal; too large values saturate so that they read as "out of range".
    Int(i128),
    /// A number we never accept for our constants (float, malformed).
    OtherNumber,
    Punct(u8),
    /// An unterminated string, comment or heredoc: the rest of the file is unreadable.
    Unterminated(&'static str),
}

/// A token with the line it starts on and its byte span in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub line: usize,
    pub start: usize,
    pub end: usize,
}

/// The tokens of the PHP parts of `src`; `has_open_tag` says whether `src` has a `<?` at all.
pub struct Lexed {
    pub tokens: Vec<Token>,
    pub has_open_tag: bool,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

struct Lexer<'a> {
    b: &'a [u8],
    i: usize,
    line: usize,
    out: Vec<Token>,
}

pub fn tokenize(src: &[u8]) -> Lexed {
    let has_open_tag = src.windows(2).any(|w| w == b"<?");
    let mut lx = Lexer { b: src, i: 0, line: 1, out: Vec::new() };
    // Text outside `<?php ... ?>` is output by PHP, not code. A file with no open tag at all
    // is read as code anyway (the caller warns): that is clearly what its author meant.
    let mut in_php = !has_open_tag;
    while lx.i < src.len() {
        if in_php {
            in_php = lx.php_step();
        } else {
            in_php = lx.html_step();
        }
        if matches!(lx.out.last(), Some(Token { tok: Tok::Unterminated(_), .. })) {
            break;
        }
    }
    Lexed { tokens: lx.out, has_open_tag }
}

impl Lexer<'_> {
    fn at(&self, k: usize) -> u8 {
        self.b.get(self.i + k).copied().unwrap_or(0)
    }

    fn starts(&self, s: &[u8]) -> bool {
        self.b.get(self.i..self.i + s.len()).is_some_and(|w| w.eq_ignore_ascii_case(s))
    }

    /// Advances one byte, counting lines (PHP counts `\n` only, so CRLF is one line).
    fn bump(&mut self) {
        if self.at(0) == b'\n' {
            self.line += 1;
        }
        self.i += 1;
    }

    fn push(&mut self, tok: Tok, line: usize, start: usize) {
        self.out.push(Token { tok, line, start, end: self.i });
    }

    /// Skips inline text up to and past the next open tag; true once in PHP code.
    fn html_step(&mut self) -> bool {
        if self.starts(b"<?php") {
            self.i += 5;
            true
        } else if self.starts(b"<?") {
            // `<?=` and short tags also open code.
            self.i += if self.at(2) == b'=' { 3 } else { 2 };
            true
        } else {
            self.bump();
            false
        }
    }

    /// Reads one token (or skips blank/comment); false when `?>` leaves PHP code.
    fn php_step(&mut self) -> bool {
        let (c, start, line) = (self.at(0), self.i, self.line);
        if c.is_ascii_whitespace() {
            self.bump();
        } else if self.starts(b"?>") {
            self.i += 2;
            // `?>` also ends the statement, as a `;` would.
            self.push(Tok::Punct(b';'), line, start);
            return false;
        } else if c == b'#' || self.starts(b"//") {
            // A line comment ends at the newline or just before `?>`, as in PHP.
            while self.i < self.b.len() && self.at(0) != b'\n' && !self.starts(b"?>") {
                self.i += 1;
            }
        } else if self.starts(b"/*") {
            self.i += 2;
            while !self.starts(b"*/") {
                if self.i >= self.b.len() {
                    self.push(Tok::Unterminated("comment"), line, start);
                    return true;
                }
                self.bump();
            }
            self.i += 2;
        } else if c == b'\'' {
            self.single_quoted();
        } else if c == b'"' || c == b'`' {
            self.double_quoted(c);
        } else if self.starts(b"<<<") {
            self.heredoc();
        } else if c.is_ascii_digit() || (c == b'.' && self.at(1).is_ascii_digit()) {
            self.number();
        } else if is_ident_start(c) || c == b'\\' {
            while is_ident(self.at(0)) || self.at(0) == b'\\' {
                self.i += 1;
            }
            let text = String::from_utf8_lossy(&self.b[start..self.i]).into_owned();
            self.push(Tok::Ident(text), line, start);
        } else if c == b'$' && is_ident_start(self.at(1)) {
            self.i += 1;
            while is_ident(self.at(0)) {
                self.i += 1;
            }
            self.push(Tok::Var, line, start);
        } else {
            self.i += 1;
            self.push(Tok::Punct(c), line, start);
        }
        true
    }

    fn single_quoted(&mut self) {
        let (start, line) = (self.i, self.line);
        self.i += 1;
        let mut s = Vec::new();
        loop {
            match self.at(0) {
                _ if self.i >= self.b.len() => return self.push(Tok::Unterminated("string"), line, start),
                b'\'' => break,
                // Only \' and \\ are escapes in single quotes; `\n` stays two characters.
                b'\\' if matches!(self.at(1), b'\'' | b'\\') => {
                    s.push(self.at(1));
                    self.i += 2;
                }
                c => {
                    s.push(c);
                    self.bump();
                }
            }
        }
        self.i += 1;
        let text = String::from_utf8_lossy(&s).into_owned();
        self.push(Tok::Str { text, interp: false }, line, start);
    }

    /// A "double-quoted" (or `backtick`) string with PHP's escapes.
    fn double_quoted(&mut self, quote: u8) {
        let (start, line) = (self.i, self.line);
        self.i += 1;
        let mut s = Vec::new();
        let mut interp = quote == b'`';
        loop {
            let c = self.at(0);
            if self.i >= self.b.len() {
                return self.push(Tok::Unterminated("string"), line, start);
            }
            if c == quote {
                break;
            }
            if c == b'$' && (is_ident_start(self.at(1)) || self.at(1) == b'{') || c == b'{' && self.at(1) == b'$' {
                interp = true;
            }
            if c != b'\\' {
                s.push(c);
                self.bump();
                continue;
            }
            let e = self.at(1);
            let simple = match e {
                b'n' => Some(b'\n'),
                b't' => Some(b'\t'),
                b'r' => Some(b'\r'),
                b'v' => Some(0x0b),
                b'e' => Some(0x1b),
                b'f' => Some(0x0c),
                b'\\' | b'$' => Some(e),
                _ if e == quote => Some(e),
                _ => None,
            };
            if let Some(ch) = simple {
                s.push(ch);
                self.i += 2;
                continue;
            }
            // \[0-7]{1,3} (so \0 is NUL) and \x[0-9a-f]{1,2}
            let (radix, skip, max) = match e {
                b'0'..=b'7' => (8, 1, 3),
                b'x' if self.at(2).is_ascii_hexdigit() => (16, 2, 2),
                _ => (0, 0, 0),
            };
            if radix > 0 {
                let digits = (0..max).take_while(|&k| (self.at(skip + k) as char).is_digit(radix)).count();
                let text = &self.b[self.i + skip..self.i + skip + digits];
                let v = u32::from_str_radix(&String::from_utf8_lossy(text), radix).unwrap_or(0);
                s.push((v & 0xff) as u8); // PHP wraps octal escapes above \377
                self.i += skip + digits;
                continue;
            }
            // Unknown escape (or `\u{...}`, rare in a config): kept literally, as PHP keeps it.
            s.push(b'\\');
            self.i += 1;
        }
        self.i += 1;
        let text = String::from_utf8_lossy(&s).into_owned();
        self.push(Tok::Str { text, interp }, line, start);
    }

    /// `<<<ID` / `<<<"ID"` (heredoc) and `<<<'ID'` (nowdoc), with PHP 7.3 indented closers.
    /// Their text matters only so that a quote inside one does not open a string.
    fn heredoc(&mut self) {
        let (start, line) = (self.i, self.line);
        let mut j = self.i + 3;
        while matches!(self.b.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        let quote = self.b.get(j).copied().filter(|q| *q == b'\'' || *q == b'"');
        j += usize::from(quote.is_some());
        let id_start = j;
        while self.b.get(j).is_some_and(|&c| is_ident(c)) {
            j += 1;
        }
        let id = self.b[id_start..j].to_vec();
        if let Some(q) = quote {
            if self.b.get(j) != Some(&q) {
                j = id_start; // not a heredoc after all
            } else {
                j += 1;
            }
        }
        let line_end = match self.b.get(j) {
            Some(b'\n') => Some(j + 1),
            Some(b'\r') if self.b.get(j + 1) == Some(&b'\n') => Some(j + 2),
            _ => None,
        };
        let (Some(body_start), false) = (line_end, id.is_empty() || !is_ident_start(id[0])) else {
            // `<<<` that is no heredoc: a shift and a comparison, say.
            self.i += 1;
            return self.push(Tok::Punct(b'<'), line, start);
        };
        while self.i < body_start {
            self.bump();
        }
        loop {
            // at the start of a body line: is it the closing identifier?
            let mut k = self.i;
            while matches!(self.b.get(k), Some(b' ' | b'\t')) {
                k += 1;
            }
            if self.b.get(k..k + id.len()) == Some(&id[..]) && !self.b.get(k + id.len()).is_some_and(|&c| is_ident(c)) {
                let body = String::from_utf8_lossy(&self.b[body_start..self.i]);
                let text = body.strip_suffix('\n').unwrap_or(&body).trim_end_matches('\r').to_owned();
                self.i = k + id.len();
                let interp = quote != Some(b'\'') && text.contains('$');
                return self.push(Tok::Str { text, interp }, line, start);
            }
            while self.i < self.b.len() && self.at(0) != b'\n' {
                self.i += 1;
            }
            if self.i >= self.b.len() {
                return self.push(Tok::Unterminated("heredoc"), line, start);
            }
            self.bump();
        }
    }

    /// Decimal, `0x` hex, `0b` binary, `0o`/leading-zero octal, with PHP 7.4 `_` separators.
    fn number(&mut self) {
        let (start, line) = (self.i, self.line);
        while is_ident(self.at(0)) || self.at(0) == b'.' && self.at(1).is_ascii_digit() {
            // an exponent sign belongs to the number: 1e-3
            if matches!(self.at(0), b'e' | b'E') && matches!(self.at(1), b'+' | b'-') && self.at(2).is_ascii_digit() {
                self.i += 1;
            }
            self.i += 1;
        }
        let raw = String::from_utf8_lossy(&self.b[start..self.i]).to_ascii_lowercase();
        let clean = raw.replace('_', "");
        let (digits, radix) = if let Some(h) = clean.strip_prefix("0x") {
            (h, 16)
        } else if let Some(b) = clean.strip_prefix("0b") {
            (b, 2)
        } else if let Some(o) = clean.strip_prefix("0o") {
            (o, 8)
        } else if clean.len() > 1 && clean.starts_with('0') {
            (&clean[1..], 8)
        } else {
            (clean.as_str(), 10)
        };
        let valid = !digits.is_empty()
            && digits.chars().all(|c| c.is_digit(radix))
            && !raw.ends_with('_')
            && !raw.contains("__");
        let tok = if valid {
            // every digit is valid, so a failure can only be an overflow
            Tok::Int(i128::from_str_radix(digits, radix).unwrap_or(i128::MAX))
        } else {
            Tok::OtherNumber
        };
        self.push(tok, line, start);
    }
}
