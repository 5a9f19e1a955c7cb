//! A message's flags: the five system flags we mirror and every keyword (RFC 3501 §2.3.2).
//!
//! Keywords are data like the system flags: Thunderbird's tags (`$Label1`), `$Junk`,
//! `$Forwarded`, `$MDNSent` and whatever a user typed. They are compared without regard to
//! ASCII case (servers match them so; Dovecot, Cyrus and Courier all do), kept in the spelling
//! first seen, and ordered by their lower-case form so that two equal sets print the same.
//!
//! `\Recent` is a property of one session, not of the message: it is never kept. Any other
//! backslash word a server reports (a future system flag) is kept among the keywords, so that
//! nothing the server had is lost when we write back only what changed.

use std::fmt;
use std::hash::{Hash, Hasher};

/// The flags of one message.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub seen: bool,
    pub answered: bool,
    pub flagged: bool,
    pub draft: bool,
    pub deleted: bool,
    /// Sorted by lower case, unique without regard to case.
    keywords: Vec<String>,
}

/// A word that cannot be a keyword: empty, or not made of IMAP atom characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeywordError(pub String);

impl fmt::Display for KeywordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a valid keyword (letters, digits and $-_.!#&'+,/:;<=>?@^`|~ only, no spaces, quotes, brackets or backslash)",
            self.0
        )
    }
}

impl std::error::Error for KeywordError {}

/// Whether `word` is an IMAP atom (RFC 3501 §9 ATOM-CHAR, at most 200 bytes) that does not
/// start with a backslash: what a user may add as a keyword.
pub fn valid_keyword(word: &str) -> bool {
    !word.is_empty()
        && word.len() <= 200
        && !word.starts_with('\\')
        && word.bytes().all(|b| (0x21..0x7f).contains(&b) && !b"(){%*\"\\]".contains(&b))
}

const SYSTEM: [&str; 5] = ["\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted"];

impl Flags {
    /// Flags from IMAP flag words in any order and case (`\seen`, `$Label1`); `\Recent` is
    /// dropped.
    pub fn from_words<'a>(words: impl IntoIterator<Item = &'a str>) -> Flags {
        let mut f = Flags::default();
        for w in words {
            f.insert(w);
        }
        f
    }

    /// Flags from a space-separated list of words, as `to_string` writes them.
    pub fn parse(text: &str) -> Flags {
        Flags::from_words(text.split_ascii_whitespace())
    }

    /// Adds one IMAP flag word.
    pub fn insert(&mut self, word: &str) {
        match self.system_mut(word) {
            Some(bit) => *bit = true,
            None if word.eq_ignore_ascii_case("\\Recent") || word.is_empty() => {}
            None => self.add_keyword(word),
        }
    }

    /// Removes one IMAP flag word.
    pub fn remove(&mut self, word: &str) {
        match self.system_mut(word) {
            Some(bit) => *bit = false,
            None => self.remove_keyword(word),
        }
    }

    /// Whether the word is one of the five system flags (any case).
    pub fn is_system(word: &str) -> bool {
        SYSTEM.iter().any(|s| s.eq_ignore_ascii_case(word))
    }

    fn system_mut(&mut self, word: &str) -> Option<&mut bool> {
        let i = SYSTEM.iter().position(|s| s.eq_ignore_ascii_case(word))?;
        Some(match i {
            0 => &mut self.seen,
            1 => &mut self.answered,
            2 => &mut self.flagged,
            3 => &mut self.draft,
            _ => &mut self.deleted,
        })
    }

    fn system(&self) -> [bool; 5] {
        [self.seen, self.answered, self.flagged, self.draft, self.deleted]
    }

    fn set_system(&mut self, bits: [bool; 5]) {
        [self.seen, self.answered, self.flagged, self.draft, self.deleted] = bits;
    }

    fn find(&self, word: &str) -> Result<usize, usize> {
        let key = word.to_ascii_lowercase();
        self.keywords.binary_search_by(|k| k.to_ascii_lowercase().cmp(&key))
    }

    pub fn add_keyword(&mut self, word: &str) {
        if let Err(at) = self.find(word) {
            self.keywords.insert(at, word.to_owned());
        }
    }

    pub fn remove_keyword(&mut self, word: &str) {
        if let Ok(at) = self.find(word) {
            self.keywords.remove(at);
        }
    }

    pub fn has_keyword(&self, word: &str) -> bool {
        self.find(word).is_ok()
    }

    pub fn keywords(&self) -> &[String] {
        &self.keywords
    }

    /// Keeps only the keywords for which `keep` is true; returns those removed.
    pub fn retain_keywords(&mut self, mut keep: impl FnMut(&str) -> bool) -> Vec<String> {
        let mut removed = Vec::new();
        self.keywords.retain(|k| {
            let k_keep = keep(k);
            if !k_keep {
                removed.push(k.clone());
            }
            k_keep
        });
        removed
    }

    /// The keywords as one space-separated text (the store's column), None when there are none.
    pub fn keywords_text(&self) -> Option<String> {
        (!self.keywords.is_empty()).then(|| self.keywords.join(" "))
    }

    /// Replaces the keywords with those of a space-separated text.
    pub fn set_keywords_text(&mut self, text: Option<&str>) {
        self.keywords.clear();
        for w in text.unwrap_or("").split_ascii_whitespace() {
            self.add_keyword(w);
        }
    }

    /// The system flags alone.
    pub fn system_only(&self) -> Flags {
        let mut f = Flags::default();
        f.set_system(self.system());
        f
    }

    /// No flag and no keyword.
    pub fn is_empty(&self) -> bool {
        self.system() == [false; 5] && self.keywords.is_empty()
    }

    /// Every flag as an IMAP word: system flags first, then keywords.
    pub fn words(&self) -> impl Iterator<Item = &str> {
        SYSTEM
            .iter()
            .zip(self.system())
            .filter(|(_, on)| *on)
            .map(|(s, _)| *s)
            .chain(self.keywords.iter().map(String::as_str))
    }

    /// An IMAP flag list: `(\Seen $Label1)`.
    pub fn to_imap(&self) -> String {
        format!("({})", self.words().collect::<Vec<_>>().join(" "))
    }

    /// What to add to `self` and what to remove from it to get `target`.
    pub fn diff(&self, target: &Flags) -> (Flags, Flags) {
        let (a, b) = (self.system(), target.system());
        let mut add = Flags::default();
        let mut remove = Flags::default();
        add.set_system(std::array::from_fn(|i| b[i] && !a[i]));
        remove.set_system(std::array::from_fn(|i| a[i] && !b[i]));
        for k in &target.keywords {
            if !self.has_keyword(k) {
                add.add_keyword(k);
            }
        }
        for k in &self.keywords {
            if !target.has_keyword(k) {
                remove.add_keyword(k);
            }
        }
        (add, remove)
    }

    /// A three-way merge: the local change (from `base`, the server's state when the user
    /// changed the message, to `local`) applied on top of the server's state now. A flag the
    /// user did not touch keeps whatever the server has now, so a keyword another client set
    /// meanwhile survives our push.
    pub fn merge(server: &Flags, base: &Flags, local: &Flags) -> Flags {
        let (add, remove) = base.diff(local);
        server.apply(&add, &remove)
    }

    /// `self` with `add` added and `remove` removed.
    pub fn apply(&self, add: &Flags, remove: &Flags) -> Flags {
        let (s, a, r) = (self.system(), add.system(), remove.system());
        let mut out = self.clone();
        out.set_system(std::array::from_fn(|i| (s[i] || a[i]) && !r[i]));
        for k in &add.keywords {
            out.add_keyword(k);
        }
        for k in &remove.keywords {
            out.remove_keyword(k);
        }
        out
    }
}

impl PartialEq for Flags {
    fn eq(&self, other: &Flags) -> bool {
        self.system() == other.system()
            && self.keywords.len() == other.keywords.len()
            && self.keywords.iter().zip(&other.keywords).all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}
impl Eq for Flags {}

impl Hash for Flags {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.system().hash(h);
        for k in &self.keywords {
            k.to_ascii_lowercase().hash(h);
        }
    }
}

/// Space-separated IMAP words, what `parse` reads back (the store keeps a message's state
/// before a local change this way).
impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.words().collect::<Vec<_>>().join(" "))
    }
}

/// As JSON: the five system flags as booleans (the shape `mail list --json` always had) and
/// the keywords as a list.
#[cfg(feature = "serde")]
impl serde::Serialize for Flags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Flags", 6)?;
        st.serialize_field("seen", &self.seen)?;
        st.serialize_field("answered", &self.answered)?;
        st.serialize_field("flagged", &self.flagged)?;
        st.serialize_field("draft", &self.draft)?;
        st.serialize_field("deleted", &self.deleted)?;
        st.serialize_field("keywords", &self.keywords)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(text: &str) -> Flags {
        Flags::parse(text)
    }

    #[test]
    fn words_in_any_case_and_order_make_one_set() {
        let cases: &[(&str, &str, &str)] = &[
            ("system flags any case", "\\seen \\FLAGGED", "\\Seen \\Flagged"),
            ("recent is never kept", "\\Recent \\Seen", "\\Seen"),
            ("keywords sorted by lower case", "zeta $Label1 \\Seen Alpha", "\\Seen $Label1 Alpha zeta"),
            ("keywords unique whatever the case", "$label1 $LABEL1 $Label1", "$label1"),
            ("a keyword ending in uid is a keyword", "liquid $MyUID", "$MyUID liquid"),
            ("an unknown backslash flag is kept", "\\Junk", "\\Junk"),
            ("empty", "", ""),
        ];
        for (name, input, want) in cases {
            let got = f(input);
            assert_eq!(got.to_string(), *want, "{name}");
            assert_eq!(f(&got.to_string()), got, "{name}: round trip");
        }
        // `$` sorts before letters: the order is by byte of the lower-case form
        assert_eq!(f("b $a A").keywords(), ["$a", "A", "b"]);
    }

    #[test]
    fn equality_and_hash_ignore_keyword_case() {
        use std::collections::HashSet;
        assert_eq!(f("$Label1 \\Seen"), f("\\seen $label1"));
        assert_ne!(f("$Label1"), f("$Label2"));
        assert_ne!(f("\\Seen"), f("\\Seen $x"));
        let set: HashSet<Flags> = [f("$Label1"), f("$LABEL1")].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn diff_names_exactly_what_changed() {
        let cases: &[(&str, &str, &str, &str, &str)] = &[
            ("nothing", "\\Seen $a", "\\Seen $a", "", ""),
            ("seen added", "$a", "\\Seen $a", "\\Seen", ""),
            ("keyword removed", "\\Seen $a $b", "\\Seen $a", "", "$b"),
            ("both ways", "\\Flagged $a", "\\Seen $b", "\\Seen $b", "\\Flagged $a"),
            ("case is no change", "$Label1", "$label1", "", ""),
        ];
        for (name, from, to, add, remove) in cases {
            let (a, r) = f(from).diff(&f(to));
            assert_eq!((a.to_string(), r.to_string()), (add.to_string(), remove.to_string()), "{name}");
            assert_eq!(f(from).apply(&a, &r), f(to), "{name}: apply(diff) gives the target");
        }
    }

    #[test]
    fn merge_keeps_what_the_user_did_not_touch() {
        // (case, server now, base = server when the user acted, local = what the user made, want)
        let cases: &[(&str, &str, &str, &str, &str)] = &[
            ("user read it, server unchanged", "$Label1", "$Label1", "\\Seen $Label1", "\\Seen $Label1"),
            (
                "user read it, another client tagged it",
                "$Label1 $Junk",
                "$Label1",
                "\\Seen $Label1",
                "\\Seen $Label1 $Junk",
            ),
            ("user removed a tag another client kept", "$a $b", "$a $b", "$b", "$b"),
            ("user removed a tag the server already removed", "\\Seen", "\\Seen $a", "\\Seen", "\\Seen"),
            ("user flagged, server unflagged meanwhile", "", "\\Flagged", "\\Flagged \\Seen", "\\Seen"),
            ("user unread, server answered meanwhile", "\\Seen \\Answered", "\\Seen", "", "\\Answered"),
            ("no change by the user", "\\Deleted", "\\Seen", "\\Seen", "\\Deleted"),
        ];
        for (name, server, base, local, want) in cases {
            assert_eq!(Flags::merge(&f(server), &f(base), &f(local)), f(want), "{name}");
        }
    }

    #[test]
    fn keywords_a_user_may_type() {
        for ok in ["$Label1", "NonJunk", "$MDNSent", "work-2026", "a.b"] {
            assert!(valid_keyword(ok), "{ok}");
        }
        for bad in ["", "two words", "\\Seen", "quo\"te", "(x)", "br]acket", "wild*", "per%cent", "é", "a\r\nb"] {
            assert!(!valid_keyword(bad), "{bad:?}");
        }
        assert!(!valid_keyword(&"x".repeat(201)));
        assert!(KeywordError("a b".into()).to_string().contains("\"a b\""));
    }

    #[test]
    fn retain_and_text_column() {
        let mut x = f("\\Seen $a $b c");
        assert_eq!(x.keywords_text().as_deref(), Some("$a $b c"));
        let removed = x.retain_keywords(|k| k != "$b");
        assert_eq!(removed, vec!["$b".to_owned()]);
        let mut y = Flags { seen: true, ..Flags::default() };
        y.set_keywords_text(Some("c $a"));
        assert_eq!(x, y);
        y.set_keywords_text(None);
        assert_eq!(y.keywords_text(), None);
        assert_eq!(y.to_imap(), "(\\Seen)");
        assert!(Flags::default().is_empty() && !y.is_empty());
    }
}
