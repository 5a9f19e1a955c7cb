//! A small PHP tokenizer: just enough of PHP's lexical grammar to find `define()` calls
//! reliably (comments, both string kinds, numbers, `<?php` / `?>` tags) and skip the rest.

/// One token with the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Ident(String),
    Str(String),
    Int(i128),
    /// A number we do not accept for our constants (float, overflow).
    OtherNumber(String),
    Punct(char),
    /// An unterminated string or comment: the rest of the file is unreadable.
    Unterminated(&'static str),
}

pub fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let n = b.len();
    let starts = |i: usize, s: &str| -> bool {
        let cs: Vec<char> = s.chars().collect();
        i + cs.len() <= n && b[i..i + cs.len()].iter().zip(&cs).all(|(a, c)| a.eq_ignore_ascii_case(c))
    };
    while i < n {
        let c = b[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if starts(i, "<?php") {
            i += 5;
        } else if starts(i, "<?=") {
            i += 3;
        } else if starts(i, "?>") {
            i += 2;
        } else if c == '#' || starts(i, "//") {
            // A line comment ends at the newline or at `?>` (as in PHP).
            while i < n && b[i] != '\n' && !starts(i, "?>") {
                i += 1;
            }
        } else if starts(i, "/*") {
            let start = line;
            i += 2;
            loop {
                if i >= n {
                    out.push((Tok::Unterminated("comment"), start));
                    return out;
                }
                if starts(i, "*/") {
                    i += 2;
                    break;
                }
                if b[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
        } else if c == '\'' || c == '"' {
            let start = line;
            let mut s = String::new();
            i += 1;
            loop {
                if i >= n {
                    out.push((Tok::Unterminated("string"), start));
                    return out;
                }
                let d = b[i];
                if d == c {
                    i += 1;
                    break;
                }
                if d == '\n' {
                    line += 1;
                }
                if d == '\\' && i + 1 < n {
                    let e = b[i + 1];
                    if c == '\'' {
                        // single quotes: only \' and \\ are escapes
                        if e == '\'' || e == '\\' {
                            s.push(e);
                            i += 2;
                            continue;
                        }
                    } else {
                        let simple = match e {
                            'n' => Some('\n'),
                            't' => Some('\t'),
                            'r' => Some('\r'),
                            'v' => Some('\x0b'),
                            'e' => Some('\x1b'),
                            'f' => Some('\x0c'),
                            '0' => Some('\0'),
                            '\\' => Some('\\'),
                            '"' => Some('"'),
                            '$' => Some('$'),
                            _ => None,
                        };
                        if let Some(ch) = simple {
                            s.push(ch);
                            i += 2;
                            continue;
                        }
                        if e == 'x' {
                            let hex: String =
                                b[i + 2..n.min(i + 4)].iter().take_while(|h| h.is_ascii_hexdigit()).collect();
                            if let Ok(v) = u8::from_str_radix(&hex, 16) {
                                s.push(char::from(v));
                                i += 2 + hex.len();
                                continue;
                            }
                        }
                    }
                    // unknown escape: kept literally, as PHP does
                    s.push('\\');
                    i += 1;
                    continue;
                }
                s.push(d);
                i += 1;
            }
            out.push((Tok::Str(s), start));
        } else if c.is_ascii_digit() {
            let mut j = i;
            while j < n && (b[j].is_ascii_alphanumeric() || b[j] == '_' || b[j] == '.') {
                j += 1;
            }
            let text: String = b[i..j].iter().collect();
            let clean = text.replace('_', "");
            let v = if let Some(h) = clean.strip_prefix("0x").or_else(|| clean.strip_prefix("0X")) {
                i128::from_str_radix(h, 16).ok()
            } else {
                clean.parse::<i128>().ok()
            };
            out.push((v.map(Tok::Int).unwrap_or(Tok::OtherNumber(text)), line));
            i = j;
        } else if c.is_alphabetic() || c == '_' || c == '\\' {
            let mut j = i;
            while j < n && (b[j].is_alphanumeric() || b[j] == '_' || b[j] == '\\') {
                j += 1;
            }
            out.push((Tok::Ident(b[i..j].iter().collect()), line));
            i = j;
        } else {
            out.push((Tok::Punct(c), line));
            i += 1;
        }
    }
    out
}
