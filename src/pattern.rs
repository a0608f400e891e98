//! Lists of regular expressions matched against whole strings: `ignore_keys` (attribute keys)
//! and `exclude_metrics` (metric family names).
//!
//! A leaf module (it imports nothing of ours) because `config` builds these and `snapshot`,
//! `store` and `metrics` use them, and `config` must not know the store.
//! Each pattern is anchored as `^(?:re)$`, so `cursor_.*` matches `cursor_1` and not
//! `my_cursor_1`, as Prometheus' own regex settings (relabelling, `exclude`) match.

use std::fmt;

use regex::{Regex, RegexSet};

/// A compiled list of full-match patterns. Equality compares the patterns as written, so a
/// reload can tell whether anything changed.
#[derive(Clone)]
pub struct Patterns {
    /// As written in the config, in order.
    sources: Vec<String>,
    set: RegexSet,
}

impl Patterns {
    /// Checks one pattern on its own, so a config error names the entry that is wrong. The
    /// message is the `regex` crate's reason without the pattern: the error's place names the
    /// entry, and the text might be something pasted in the wrong place.
    pub fn check(pattern: &str) -> Result<(), String> {
        // The pattern as written first, so the reason is about what the user wrote.
        Regex::new(pattern)
            .and_then(|_| Regex::new(&anchored(pattern)))
            .map(|_| ())
            .map_err(|e| format!("not a valid regular expression: {}", reason(&e.to_string())))
    }

    /// Compiles the patterns into one set. Fails only when each is valid but together they
    /// exceed the `regex` crate's size limit.
    pub fn new<I, S>(patterns: I) -> Result<Patterns, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let sources: Vec<String> = patterns.into_iter().map(Into::into).collect();
        let set = RegexSet::new(sources.iter().map(|p| anchored(p))).map_err(|e| {
            format!(
                "cannot compile these patterns: {}",
                one_line(&e.to_string())
            )
        })?;
        Ok(Patterns { sources, set })
    }

    /// Whether any pattern matches the whole of `text`.
    #[inline]
    pub fn is_match(&self, text: &str) -> bool {
        self.set.is_match(text)
    }

    /// The patterns as written.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

/// The reason of a `regex` error, without the pattern and the caret under it that a parse
/// error shows on lines of their own.
fn reason(message: &str) -> String {
    match message
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
    {
        Some(reason) => reason.to_owned(),
        None => one_line(message),
    }
}

/// A config problem is one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}

impl PartialEq for Patterns {
    fn eq(&self, other: &Patterns) -> bool {
        self.sources == other.sources
    }
}

impl Eq for Patterns {}

/// The count only: a secret pasted into `ignore_keys` by mistake must not reach a `Debug`
/// dump of the config (SPEC: secrets never appear anywhere).
impl fmt::Debug for Patterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Patterns({} patterns)", self.sources.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_strings_only() {
        let p = Patterns::new(["heartbeat", "cursor_.*"]).expect("valid");
        assert!(p.is_match("heartbeat"));
        assert!(p.is_match("cursor_"));
        assert!(p.is_match("cursor_42"));
        assert!(!p.is_match("heartbeats"));
        assert!(!p.is_match("my_cursor_1"));
        assert!(!p.is_match(""));
        // An alternation is anchored as a whole, not only its first branch.
        let p = Patterns::new(["a|b"]).expect("valid");
        assert!(p.is_match("b"));
        assert!(!p.is_match("ab"));
    }

    #[test]
    fn a_bad_pattern_is_reported_on_one_line() {
        let e = Patterns::check("cursor_(").expect_err("unclosed group");
        assert_eq!(e, "not a valid regular expression: unclosed group");
        let e = Patterns::check("a{99999999}").expect_err("too large");
        assert!(e.starts_with("not a valid regular expression: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert!(Patterns::check("[a-z]+").is_ok());
    }

    #[test]
    fn equality_is_by_source() {
        let a = Patterns::new(["x"]).expect("valid");
        assert_eq!(a, Patterns::new(["x"]).expect("valid"));
        assert_ne!(a, Patterns::new(["y"]).expect("valid"));
    }
}
