//! (to be written) The latest snapshot per group, diffs, hashes and the state file.

/// Which value hashes `/metrics` carries (`value_hashes` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueHashes {
    /// `timattr_group_attribute_value_hash{key}` per key, and the set hash.
    #[default]
    PerKey,
    /// Only `timattr_group_attributes_hash`.
    PerGroup,
    /// No hashes.
    Off,
}
