//! The `error_code` label of `timattr_api_errors_total` and `timattr_groups_by_error_code`,
//! bounded per app.
//!
//! Codes come from upstream answers, and a broken proxy in between could answer a new one with
//! every request: each would be a new series, without end. So a code the reference documents
//! ([`error_code::is_documented`]), 0 and -1 always get their own label; of the others, the first
//! [`MAX_UNDOCUMENTED_CODES`] an app answers do too, for as long as the app stays in the config;
//! every later one is counted under [`OTHER`]. `timattr_group_error_code` is a value, not a
//! label, and stays exact.

use std::collections::BTreeSet;
use std::fmt;

use crate::error_code;

/// Distinct undocumented codes per app that get a label of their own.
pub const MAX_UNDOCUMENTED_CODES: usize = 20;

/// The label value of every undocumented code beyond [`MAX_UNDOCUMENTED_CODES`].
pub const OTHER: &str = "other";

/// An `error_code` label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum CodeLabel {
    Code(i64),
    Other,
}

impl fmt::Display for CodeLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodeLabel::Code(code) => write!(f, "{code}"),
            CodeLabel::Other => f.write_str(OTHER),
        }
    }
}

/// One app's undocumented codes that have a label of their own.
#[derive(Debug, Clone, Default)]
pub(super) struct CodeLabels {
    undocumented: BTreeSet<i64>,
}

impl CodeLabels {
    /// The label of `code`, giving it a label of its own while there is room.
    pub(super) fn admit(&mut self, code: i64) -> CodeLabel {
        if passes(code) || self.undocumented.contains(&code) {
            return CodeLabel::Code(code);
        }
        if self.undocumented.len() < MAX_UNDOCUMENTED_CODES {
            self.undocumented.insert(code);
            return CodeLabel::Code(code);
        }
        CodeLabel::Other
    }
}

/// Codes that always have a label: the documented ones, 0 (healthy) and -1 (no valid answer).
fn passes(code: i64) -> bool {
    code == 0 || code == -1 || error_code::is_documented(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_codes_always_pass_and_others_are_capped() {
        let mut labels = CodeLabels::default();
        let undocumented: Vec<i64> = (0..100).map(|i| 20_001 + i).collect();
        let got: Vec<CodeLabel> = undocumented.iter().map(|&c| labels.admit(c)).collect();
        let own = got.iter().filter(|l| **l != CodeLabel::Other).count();
        assert_eq!(own, MAX_UNDOCUMENTED_CODES);
        assert_eq!(
            got[0],
            CodeLabel::Code(20_001),
            "the first ones keep theirs"
        );
        assert_eq!(got[99], CodeLabel::Other);
        // Once admitted, a code keeps its label; a full set still lets documented codes through.
        assert_eq!(labels.admit(20_001), CodeLabel::Code(20_001));
        for &code in error_code::DOCUMENTED.iter().chain(&[0, -1]) {
            assert_eq!(labels.admit(code), CodeLabel::Code(code));
        }
        assert_eq!(labels.admit(99_999), CodeLabel::Other);
        assert_eq!(CodeLabel::Other.to_string(), "other");
        assert_eq!(CodeLabel::Code(70020).to_string(), "70020");
    }
}
