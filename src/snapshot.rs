//! What a group's attributes are reduced to: the 48-bit hashes SPEC "Metrics" defines
//! ([`hash48`], [`set_hash`]), the snapshot kept per group, and the diff between two snapshots
//! ([`Changes`]).
//!
//! A snapshot holds per attribute its key, the hash of its value and the value's length, never
//! the value itself: that is all a diff needs (values are compared by hash), all `/metrics`
//! shows, and it keeps user data out of memory dumps and out of the state file.
//!
//! Keys matched by `ignore_keys` stay in the snapshot (they count in the attribute count, the
//! bytes and the set hash, which describe the real state) but are flagged, and the diff and the
//! value hashes pass over them.

use sha2::{Digest, Sha256};

use crate::pattern::Patterns;

/// The largest value a 48-bit hash can take.
pub(crate) const HASH48_MAX: u64 = (1 << 48) - 1;

/// The first 6 bytes of SHA-256 of `data`, read as a big-endian integer: what
/// `printf %s "$value" | sha256sum | cut -c1-12` prints in hex. 48 bits are exact in a float64.
pub fn hash48(data: &[u8]) -> u64 {
    digest48(Sha256::digest(data).as_slice())
}

fn digest48(digest: &[u8]) -> u64 {
    digest[..6]
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// The hash of a whole attribute set: [`hash48`] of every pair as `key=value\n`, in ascending
/// bytewise order of the keys, concatenated. `attrs` should be sorted by key; it is sorted here
/// if it is not, so the result never depends on the order the API answered in.
pub fn set_hash(attrs: &[(String, String)]) -> u64 {
    let mut sorted: Vec<(&str, &str)> = attrs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    set_hash_sorted(&sorted)
}

fn set_hash_sorted(attrs: &[(&str, &str)]) -> u64 {
    let mut hasher = Sha256::new();
    for (k, v) in attrs {
        hasher.update(k.as_bytes());
        hasher.update(b"=");
        hasher.update(v.as_bytes());
        hasher.update(b"\n");
    }
    digest48(hasher.finalize().as_slice())
}

/// The keys that changed between two consecutive successful polls of a group, returned by
/// [`Store::apply`](crate::store::Store::apply) when at least one did, so the daemon can log them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub modified: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.modified.is_empty()
    }
}

/// One attribute as the exporter remembers it: never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attr {
    pub(crate) key: Box<str>,
    /// [`hash48`] of the value.
    pub(crate) hash: u64,
    /// The value's length in bytes.
    pub(crate) len: u32,
    /// Matched by the group's `ignore_keys`: left out of the diff and of the value hashes. Not
    /// part of the state file; set again from the config whenever a snapshot is taken in.
    pub(crate) ignored: bool,
}

/// A group's attributes at one successful poll, sorted by key, keys unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) attrs: Box<[Attr]>,
    pub(crate) set_hash: u64,
}

impl Snapshot {
    /// Builds the snapshot of a poll answer. The store calls it before taking any lock, so the
    /// hashing never holds up another poll or a scrape.
    pub(crate) fn of(attrs: &[(String, String)], ignore: Option<&Patterns>) -> Snapshot {
        let mut sorted: Vec<(&str, &str)> = attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // Stable, so among duplicate keys the last one stays last; dedup keeps the first of a
        // run, hence the reverse trick: keep the last value the API listed for a key.
        sorted.reverse();
        sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        sorted.dedup_by(|later, earlier| later.0 == earlier.0);
        let set_hash = set_hash_sorted(&sorted);
        let attrs = sorted
            .iter()
            .map(|(k, v)| Attr {
                key: (*k).into(),
                hash: hash48(v.as_bytes()),
                len: u32::try_from(v.len()).unwrap_or(u32::MAX),
                ignored: ignore.is_some_and(|p| p.is_match(k)),
            })
            .collect();
        Snapshot { attrs, set_hash }
    }

    /// Flags the keys `ignore` matches (and only those), for a snapshot taken under other
    /// `ignore_keys`: one from the state file, or one kept across a reload that changed them.
    pub(crate) fn mark(&mut self, ignore: Option<&Patterns>) {
        for a in self.attrs.iter_mut() {
            a.ignored = ignore.is_some_and(|p| p.is_match(&a.key));
        }
    }

    /// Bytes of all values.
    pub(crate) fn bytes(&self) -> u64 {
        self.attrs.iter().map(|a| u64::from(a.len)).sum()
    }

    /// The keys added, removed and modified from `self` to `next` (both sorted by key), leaving
    /// out the keys flagged as ignored on either side.
    pub(crate) fn diff(&self, next: &Snapshot) -> Changes {
        let mut changes = Changes::default();
        let (mut i, mut j) = (0, 0);
        let (old, new) = (&self.attrs, &next.attrs);
        while i < old.len() || j < new.len() {
            match (old.get(i), new.get(j)) {
                (Some(o), Some(n)) => match o.key.as_bytes().cmp(n.key.as_bytes()) {
                    std::cmp::Ordering::Less => {
                        if !o.ignored {
                            changes.removed.push(o.key.to_string());
                        }
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        if !n.ignored {
                            changes.added.push(n.key.to_string());
                        }
                        j += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        if (o.hash != n.hash || o.len != n.len) && !o.ignored && !n.ignored {
                            changes.modified.push(n.key.to_string());
                        }
                        i += 1;
                        j += 1;
                    }
                },
                (Some(o), None) => {
                    if !o.ignored {
                        changes.removed.push(o.key.to_string());
                    }
                    i += 1;
                }
                (None, Some(n)) => {
                    if !n.ignored {
                        changes.added.push(n.key.to_string());
                    }
                    j += 1;
                }
                (None, None) => unreachable!("the loop condition excludes it"),
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// `sha256sum | cut -c1-12` of `input`, parsed: the SPEC's own definition of the hash.
    fn sha256sum48(input: &[u8]) -> u64 {
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sha256sum (coreutils) is installed");
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input)
            .expect("sha256sum reads its input");
        let out = child.wait_with_output().expect("sha256sum runs");
        assert!(out.status.success());
        let hex = std::str::from_utf8(&out.stdout[..12]).expect("hex digits");
        u64::from_str_radix(hex, 16).expect("hex digits")
    }

    #[test]
    fn hash48_matches_sha256sum() {
        for value in [
            "",
            "v1",
            "héllo wörld 世界 🎉",
            "a\nb\"c\\d",
            &"x".repeat(4000),
        ] {
            assert_eq!(
                hash48(value.as_bytes()),
                sha256sum48(value.as_bytes()),
                "{value:?}"
            );
        }
        assert_eq!(hash48(b""), 0xe3b0_c442_98fc);
        assert!(hash48(b"anything") <= HASH48_MAX);
    }

    #[test]
    fn set_hash_matches_sha256sum_of_sorted_pairs() {
        // Given out of order: the hash sorts by key.
        let set = attrs(&[("b", "x y"), ("a", "1")]);
        assert_eq!(set_hash(&set), 0x3ec0_b72d_a1c0);
        assert_eq!(set_hash(&set), sha256sum48(b"a=1\nb=x y\n"));
        // Bytewise order: "B" (0x42) < "a" (0x61) < "é" (0xc3..).
        let set = attrs(&[("é", "3"), ("a", ""), ("B", "2")]);
        assert_eq!(set_hash(&set), sha256sum48("B=2\na=\né=3\n".as_bytes()));
        assert_eq!(set_hash(&[]), hash48(b""));
    }

    #[test]
    fn duplicate_or_unsorted_keys_are_normalised() {
        let snap = Snapshot::of(&attrs(&[("b", "old"), ("a", "1"), ("b", "2")]), None);
        let keys: Vec<&str> = snap.attrs.iter().map(|a| &*a.key).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(
            snap.attrs[1].hash,
            hash48(b"2"),
            "the last value listed wins"
        );
        assert_eq!(snap.set_hash, set_hash(&attrs(&[("a", "1"), ("b", "2")])));
        assert_eq!(snap.bytes(), 2);
    }

    #[test]
    fn diff_names_added_removed_and_modified_keys() {
        let old = Snapshot::of(&attrs(&[("a", "1"), ("b", "2"), ("d", "4")]), None);
        let new = Snapshot::of(&attrs(&[("b", "22"), ("c", "3"), ("d", "4")]), None);
        assert_eq!(
            old.diff(&new),
            Changes {
                added: vec!["c".into()],
                removed: vec!["a".into()],
                modified: vec!["b".into()],
            }
        );
        assert!(new.diff(&new).is_empty());
        // A value of another length with the same hash is still a change.
        let mut longer = new.clone();
        longer.attrs[0].len += 1;
        assert_eq!(new.diff(&longer).modified, ["b"]);
    }

    #[test]
    fn ignored_keys_are_kept_but_never_a_change() {
        let ignore = Patterns::new(["heartbeat", "cursor_.*"]).expect("valid");
        let old = Snapshot::of(
            &attrs(&[("a", "1"), ("cursor_1", "x"), ("heartbeat", "1")]),
            Some(&ignore),
        );
        let new = Snapshot::of(
            &attrs(&[("a", "1"), ("cursor_2", "y"), ("heartbeat", "2")]),
            Some(&ignore),
        );
        assert!(old.diff(&new).is_empty(), "{:?}", old.diff(&new));
        // The real state still shows in what the snapshot holds.
        assert_eq!(new.attrs.len(), 3);
        assert_ne!(old.set_hash, new.set_hash);
        // Without the flags (snapshots from before `ignore_keys`), the same pair differs;
        // marking them gives the filtered diff.
        let mut before = Snapshot::of(&attrs(&[("a", "1"), ("heartbeat", "0")]), None);
        let mut after = Snapshot::of(
            &attrs(&[("a", "1"), ("cursor_2", "y"), ("heartbeat", "2")]),
            None,
        );
        let unfiltered = before.diff(&after);
        assert_eq!(
            (unfiltered.added, unfiltered.modified),
            (vec!["cursor_2".to_string()], vec!["heartbeat".to_string()])
        );
        before.mark(Some(&ignore));
        after.mark(Some(&ignore));
        assert!(before.diff(&after).is_empty());
        assert_eq!(
            after, new,
            "marking gives what a snapshot taken with the patterns has"
        );
        // A change of a kept key is still counted next to ignored ones.
        let newer = Snapshot::of(
            &attrs(&[("a", "2"), ("cursor_3", "z"), ("heartbeat", "3")]),
            Some(&ignore),
        );
        assert_eq!(new.diff(&newer).modified, ["a"]);
    }
}
