//! The latest snapshot per group, the diffs between consecutive successful polls, the value and
//! set hashes, the state file, and the per-group metric families rendered from all of that.
//!
//! What is kept per group is deliberately small (≈ 0.4 KiB with 4 attributes, see
//! [`Store`]): per attribute its key, the 48-bit hash of its value and the value's length, never
//! the value itself. That is all a diff needs (values are compared by hash), all `/metrics`
//! shows, and it keeps user data out of memory dumps and out of the state file.
//!
//! Decisions on points SPEC.md leaves open (documented here so the metrics page can say so):
//! - A group's attribute series (counts, bytes, hashes, change counters, last change and last
//!   success timestamps) go when the API answers 10007, 10010 or 10015. When such a group answers
//!   successfully again, that poll is a fresh baseline: no change is counted for it and its change
//!   counters start again at 0 (a counter reset, which `rate()` handles).
//! - `timattr_group_last_change_timestamp_seconds` exists from the first successful poll, at 0
//!   until a change is seen ("known series start at 0"). It survives restarts through the state
//!   file, as it records a fact, not a count.
//! - The change counters are process-local, as Prometheus counters are: the state file holds the
//!   snapshot (keys, value hashes and lengths, set hash, last change time), not the counts.
//! - `timattr_groups_by_error_code{error_code="0"}` is always rendered, at 0 when no group is
//!   healthy, so alerts and dashboards have a series to divide by; other codes appear while at
//!   least one group's latest poll ended with them.
//! - A state file snapshot is used once, at the group's first successful poll in this process,
//!   and dropped when the API says the group is gone or unreadable (the snapshot then describes a
//!   group that no longer exists).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error_code::{ErrorClass, classify};
use crate::metrics;
use crate::outcome::{Attributes, Outcome};

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

/// The largest value a 48-bit hash can take.
const HASH48_MAX: u64 = (1 << 48) - 1;

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

/// Whether [`Store::set_assigned`] drops the state-file snapshots of groups it does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeds {
    /// The list is complete (configured groups, and discovered ones once discovery answered).
    DropUnlisted,
    /// The list may still grow (discovery has not answered): keep every snapshot.
    Keep,
}

/// The keys that changed between two consecutive successful polls of a group, returned by
/// [`Store::apply`] when at least one did, so the daemon can log them.
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
struct Attr {
    key: Box<str>,
    /// [`hash48`] of the value.
    hash: u64,
    /// The value's length in bytes.
    len: u32,
}

/// A group's attributes at its latest successful poll, sorted by key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    attrs: Box<[Attr]>,
    set_hash: u64,
}

impl Snapshot {
    /// Builds the snapshot of a poll answer, hashing outside any lock.
    fn of(attrs: &[(String, String)]) -> Snapshot {
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
            })
            .collect();
        Snapshot { attrs, set_hash }
    }

    fn bytes(&self) -> u64 {
        self.attrs.iter().map(|a| u64::from(a.len)).sum()
    }

    /// The keys added, removed and modified from `self` to `next` (both sorted by key).
    fn diff(&self, next: &Snapshot) -> Changes {
        let mut changes = Changes::default();
        let (mut i, mut j) = (0, 0);
        let (old, new) = (&self.attrs, &next.attrs);
        while i < old.len() || j < new.len() {
            match (old.get(i), new.get(j)) {
                (Some(o), Some(n)) => match o.key.as_bytes().cmp(n.key.as_bytes()) {
                    std::cmp::Ordering::Less => {
                        changes.removed.push(o.key.to_string());
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        changes.added.push(n.key.to_string());
                        j += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        if o.hash != n.hash || o.len != n.len {
                            changes.modified.push(n.key.to_string());
                        }
                        i += 1;
                        j += 1;
                    }
                },
                (Some(o), None) => {
                    changes.removed.push(o.key.to_string());
                    i += 1;
                }
                (None, Some(n)) => {
                    changes.added.push(n.key.to_string());
                    j += 1;
                }
                (None, None) => unreachable!("the loop condition excludes it"),
            }
        }
        changes
    }
}

/// The `change` label values, in [`Success::changes`] order.
#[cfg(test)]
const CHANGE_KINDS: [&str; 3] = ["added", "removed", "modified"];

/// What the attribute series of a group show: its last successful poll and what changed.
#[derive(Debug, Clone)]
struct Success {
    snapshot: Snapshot,
    /// Counts of added, removed and modified keys, in [`CHANGE_LABELS`] order.
    changes: [u64; 3],
    last_change: f64,
    last_success: f64,
}

/// One assigned group.
#[derive(Debug, Default)]
struct Group {
    /// `ErrorCode` of the latest poll (-1: no valid answer); `None` until the first poll, when
    /// the group has no series at all.
    error_code: Option<i64>,
    /// `None` until the first successful poll, and again after 10007/10010/10015. Boxed so a
    /// group that never succeeds costs a pointer.
    success: Option<Box<Success>>,
}

/// The groups of one app. A `BTreeMap` so rendering walks them in `group_id` order (a golden
/// file and diffs of scrapes need a stable order) and can resume after a key in chunks.
#[derive(Debug, Default)]
struct AppState {
    groups: Mutex<BTreeMap<Box<str>, Group>>,
}

/// Recovers a poisoned lock: the data under these locks stays consistent between statements, and
/// a panic elsewhere must not stop `/metrics` or polling.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many groups rendering handles per acquisition of an app's lock, so a scrape of a very large
/// app never blocks polling for more than a fraction of a millisecond at a time.
const RENDER_CHUNK: usize = 512;

/// The state of every group this instance polls. `Send + Sync`; share it through an `Arc`.
///
/// Locking: one `RwLock` over the app table (written only by reloads) and one `Mutex` per app over
/// its groups, each held for a map lookup and a diff of pre-hashed snapshots (hashing happens
/// before the lock). Rendering holds an app's lock for at most [`RENDER_CHUNK`] groups at a time.
///
/// Memory per group with 4 attributes of ≤ 16-byte keys, on 64-bit: map entry (16-byte key
/// pointer + 24-byte `Group`, ≈ 60 bytes with B-tree slack) + group id (≈ 32) + `Success` (80) +
/// 4 × `Attr` (32 each) + 4 key allocations (≈ 16–32 each) ≈ 0.4 KiB.
#[derive(Debug, Default)]
pub struct Store {
    apps: RwLock<BTreeMap<u64, Arc<AppState>>>,
    /// Snapshots from the state file not used yet, per app and group: consumed by the group's
    /// first successful poll, dropped with the group.
    seeds: Mutex<HashMap<u64, HashMap<Box<str>, SeedEntry>>>,
    /// Bumped whenever what [`Store::persisted`] returns changes, so the daemon rewrites the
    /// state file only then (timestamps alone do not count).
    generation: AtomicU64,
    /// The size of each family's text at the last render: the next one reserves that much up
    /// front, since growing multi-megabyte buffers by doubling costs more (page faults, copies)
    /// than writing them.
    render_sizes: Mutex<[usize; FAMILIES]>,
}

#[derive(Debug, Clone)]
struct SeedEntry {
    snapshot: Snapshot,
    last_change: f64,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    fn app(&self, sdkappid: u64) -> Option<Arc<AppState>> {
        self.apps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&sdkappid)
            .cloned()
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// The `ErrorCode` of a group's latest poll (-1: no valid answer); `None` before its first
    /// poll or when it is not assigned. The daemon logs transitions with it.
    pub fn error_code(&self, sdkappid: u64, group_id: &str) -> Option<i64> {
        let app = self.app(sdkappid)?;
        let groups = lock(&app.groups);
        groups.get(group_id)?.error_code
    }

    /// A number that changes whenever the state file's content would: write the file when it
    /// differs from the one read before the last write.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Sets the groups this instance polls for one app (configured and discovered, in its shard).
    /// Groups no longer listed lose all state and series; new ones are added (counted by
    /// `timattr_groups`) with no series until their first poll; groups that stay keep everything.
    /// State-file snapshots of groups not listed are dropped only with [`Seeds::DropUnlisted`]:
    /// while an app's discovery has not answered yet, its list is incomplete.
    pub fn set_assigned<I, S>(&self, sdkappid: u64, group_ids: I, seeds: Seeds)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let app = {
            let mut apps = self.apps.write().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(apps.entry(sdkappid).or_default())
        };
        let listed: Vec<S> = group_ids.into_iter().collect();
        let wanted: HashSet<&str> = listed.iter().map(AsRef::as_ref).collect();
        let mut dropped_snapshot = false;
        {
            let mut groups = lock(&app.groups);
            groups.retain(|id, g| {
                let keep = wanted.contains(&**id);
                dropped_snapshot |= !keep && g.success.is_some();
                keep
            });
            for id in &wanted {
                if !groups.contains_key(*id) {
                    groups.insert((*id).into(), Group::default());
                }
            }
        }
        let mut all_seeds = lock(&self.seeds);
        if let (Seeds::DropUnlisted, Some(app_seeds)) = (seeds, all_seeds.get_mut(&sdkappid)) {
            let before = app_seeds.len();
            app_seeds.retain(|id, _| wanted.contains(&**id));
            dropped_snapshot |= app_seeds.len() != before;
        }
        if dropped_snapshot {
            self.bump();
        }
    }

    /// Adds one group to an app's assignment (a group a create callback announced), keeping
    /// everything else: cheaper than [`Store::set_assigned`] with the whole list.
    pub fn add_assigned(&self, sdkappid: u64, group_id: &str) {
        let app = {
            let mut apps = self.apps.write().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(apps.entry(sdkappid).or_default())
        };
        lock(&app.groups)
            .entry(group_id.into())
            .or_insert_with(Group::default);
    }

    /// Forgets an app removed from the config, with all its groups.
    pub fn remove_app(&self, sdkappid: u64) {
        let removed = self
            .apps
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&sdkappid);
        let seeded = lock(&self.seeds).remove(&sdkappid);
        if removed.is_some() || seeded.is_some() {
            self.bump();
        }
    }

    /// Records the result of one poll. Returns the keys that changed when a change was counted.
    /// A result for a group that is not assigned (a poll that was in flight during a reload that
    /// dropped it) is ignored.
    pub fn apply(
        &self,
        sdkappid: u64,
        group_id: &str,
        outcome: &Outcome<Attributes>,
        now_unix: f64,
    ) -> Option<Changes> {
        let app = self.app(sdkappid)?;
        match outcome {
            Outcome::Ok(attrs) => self.apply_success(&app, sdkappid, group_id, attrs, now_unix),
            Outcome::Api(e) => {
                let code = e.code();
                let gone = classify(code) == ErrorClass::PerGroup;
                let mut had_snapshot = false;
                {
                    let mut groups = lock(&app.groups);
                    let group = groups.get_mut(group_id)?;
                    group.error_code = Some(code);
                    if gone {
                        had_snapshot = group.success.take().is_some();
                    }
                }
                if gone {
                    let mut seeds = lock(&self.seeds);
                    let seeded = seeds
                        .get_mut(&sdkappid)
                        .and_then(|s| s.remove(group_id))
                        .is_some();
                    had_snapshot |= seeded;
                }
                if had_snapshot {
                    self.bump();
                }
                None
            }
            Outcome::NoAnswer(_) => {
                let mut groups = lock(&app.groups);
                groups.get_mut(group_id)?.error_code = Some(-1);
                None
            }
        }
    }

    fn apply_success(
        &self,
        app: &AppState,
        sdkappid: u64,
        group_id: &str,
        attrs: &[(String, String)],
        now_unix: f64,
    ) -> Option<Changes> {
        let next = Snapshot::of(attrs);
        let mut groups = lock(&app.groups);
        let group = groups.get_mut(group_id)?;
        group.error_code = Some(0);
        let changes = match &mut group.success {
            Some(success) => {
                success.last_success = now_unix;
                if success.snapshot == next {
                    return None;
                }
                let changes = success.snapshot.diff(&next);
                success.snapshot = next;
                success.record(&changes, now_unix);
                changes
            }
            None => {
                // The first successful poll (in this process, or since the API said the group was
                // gone) is the baseline; only a state-file snapshot gives it something to diff.
                let seed = lock(&self.seeds)
                    .get_mut(&sdkappid)
                    .and_then(|s| s.remove(group_id));
                let mut success = Success {
                    snapshot: next,
                    changes: [0; 3],
                    last_change: 0.0,
                    last_success: now_unix,
                };
                let mut changes = Changes::default();
                if let Some(seed) = seed {
                    success.last_change = seed.last_change;
                    changes = seed.snapshot.diff(&success.snapshot);
                    success.record(&changes, now_unix);
                }
                group.success = Some(Box::new(success));
                changes
            }
        };
        drop(groups);
        self.bump();
        (!changes.is_empty()).then_some(changes)
    }

    /// Takes the snapshots of a state file as baselines: each is diffed once against its group's
    /// first successful poll, so a change made while the exporter was down is counted once.
    /// Snapshots of groups that are never assigned are dropped by the next [`Store::set_assigned`]
    /// of their app.
    pub fn seed_from(&self, persisted: Persisted) {
        let mut seeds = lock(&self.seeds);
        for (sdkappid, groups) in persisted.apps {
            let app_seeds = seeds.entry(sdkappid).or_default();
            for (group_id, g) in groups {
                let mut attributes = g.attributes;
                // Diffs walk both snapshots in key order; a hand-made `Persisted` may not be.
                attributes.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
                attributes.dedup_by(|later, earlier| later.key == earlier.key);
                let attrs = attributes
                    .into_iter()
                    .map(|a| Attr {
                        key: a.key.into_boxed_str(),
                        hash: a.hash,
                        len: a.bytes,
                    })
                    .collect();
                let seed = SeedEntry {
                    snapshot: Snapshot {
                        attrs,
                        set_hash: g.set_hash,
                    },
                    last_change: g.last_change_timestamp_seconds,
                };
                app_seeds.insert(group_id.into_boxed_str(), seed);
            }
        }
    }

    /// What the state file should hold now: the latest snapshot of every assigned group that has
    /// one, and the not yet used state-file snapshot of assigned groups that have not succeeded
    /// yet (so a restart before their first poll does not lose them).
    pub fn persisted(&self) -> Persisted {
        let mut out = Persisted::default();
        let mut pending: Vec<(u64, Vec<Box<str>>)> = Vec::new();
        for (sdkappid, app) in self.app_list() {
            let groups = lock(&app.groups);
            let entry = out.apps.entry(sdkappid).or_default();
            let mut unseen = Vec::new();
            for (id, g) in groups.iter() {
                match &g.success {
                    Some(s) => {
                        entry.insert(
                            id.to_string(),
                            PersistedGroup::of(&s.snapshot, s.last_change),
                        );
                    }
                    None => unseen.push(id.clone()),
                }
            }
            pending.push((sdkappid, unseen));
        }
        let seeds = lock(&self.seeds);
        for (sdkappid, ids) in pending {
            let Some(app_seeds) = seeds.get(&sdkappid) else {
                continue;
            };
            let entry = out.apps.entry(sdkappid).or_default();
            for id in ids {
                if let Some(seed) = app_seeds.get(&id) {
                    entry.insert(
                        id.to_string(),
                        PersistedGroup::of(&seed.snapshot, seed.last_change),
                    );
                }
            }
        }
        out.apps.retain(|_, groups| !groups.is_empty());
        out
    }

    fn app_list(&self) -> Vec<(u64, Arc<AppState>)> {
        self.apps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, app)| (*id, Arc::clone(app)))
            .collect()
    }

    /// Appends the per-group families, `timattr_groups` and `timattr_groups_by_error_code` in
    /// Prometheus text format 0.0.4, sorted by `sdkappid` then `group_id`.
    ///
    /// Written by hand rather than through `prometheus` metric objects: at 100,000 groups one
    /// object per series (a dozen per group) would cost several KiB per group and a hash lookup
    /// per update, while the series are a pure function of the compact state kept here anyway.
    pub fn render(&self, out: &mut String, value_hashes: ValueHashes) {
        let mut f = Families::default();
        let hint = *lock(&self.render_sizes);
        for (buf, size) in f.buffers().into_iter().zip(hint) {
            buf.reserve(size + size / 8);
        }
        for (sdkappid, app) in self.app_list() {
            let mut assigned = 0u64;
            let mut by_code: BTreeMap<i64, u64> = BTreeMap::from([(0, 0)]);
            let mut cursor: Option<Box<str>> = None;
            loop {
                let groups = lock(&app.groups);
                let range = match &cursor {
                    None => groups.range::<str, _>(..),
                    Some(c) => groups.range::<str, _>((Bound::Excluded(&**c), Bound::Unbounded)),
                };
                let mut seen = 0;
                let mut last = None;
                for (id, group) in range.take(RENDER_CHUNK) {
                    seen += 1;
                    assigned += 1;
                    if let Some(code) = group.error_code {
                        *by_code.entry(code).or_default() += 1;
                    }
                    f.group(sdkappid, id, group, value_hashes);
                    last = Some(id);
                }
                cursor = last.cloned();
                drop(groups);
                if seen < RENDER_CHUNK {
                    break;
                }
            }
            let app_labels = format!("sdkappid=\"{sdkappid}\"");
            let _ = writeln!(f.groups, "{}{{{app_labels}}} {assigned}", metrics::GROUPS.0);
            for (code, n) in by_code {
                let _ = writeln!(
                    f.by_code,
                    "{}{{{app_labels},error_code=\"{code}\"}} {n}",
                    metrics::GROUPS_BY_ERROR_CODE.0
                );
            }
        }
        *lock(&self.render_sizes) = f.buffers().map(|b| b.len());
        f.finish(out);
    }
}

impl Success {
    fn record(&mut self, changes: &Changes, now_unix: f64) {
        let counts = [&changes.added, &changes.removed, &changes.modified];
        for (total, keys) in self.changes.iter_mut().zip(counts) {
            *total += keys.len() as u64;
        }
        if !changes.is_empty() {
            self.last_change = now_unix;
        }
    }
}

/// One buffer per family, filled in a single pass over the groups and joined at the end, so each
/// family's samples come out together under one HELP and TYPE.
#[derive(Default)]
struct Families {
    up: String,
    error_code: String,
    attributes: String,
    bytes: String,
    set_hash: String,
    value_hash: String,
    changes: String,
    last_change: String,
    last_success: String,
    groups: String,
    by_code: String,
}

/// How many families [`Families`] holds.
const FAMILIES: usize = 11;

impl Families {
    fn buffers(&mut self) -> [&mut String; FAMILIES] {
        [
            &mut self.up,
            &mut self.error_code,
            &mut self.attributes,
            &mut self.bytes,
            &mut self.set_hash,
            &mut self.value_hash,
            &mut self.changes,
            &mut self.last_change,
            &mut self.last_success,
            &mut self.groups,
            &mut self.by_code,
        ]
    }

    // Hot at scrape time (a dozen lines per group): built with `push_str` and a hand-rolled
    // integer writer rather than `write!`, which is several times slower per line.
    fn group(&mut self, sdkappid: u64, id: &str, group: &Group, value_hashes: ValueHashes) {
        let Some(code) = group.error_code else {
            return;
        };
        let mut labels = String::with_capacity(40 + id.len());
        labels.push_str("sdkappid=\"");
        push_u64(&mut labels, sdkappid);
        labels.push_str("\",group_id=\"");
        escape_label_value(&mut labels, id);
        labels.push('"');
        let labels = labels.as_str();

        start(&mut self.up, metrics::GROUP_UP.0, labels, "");
        push_u64(&mut self.up, u64::from(code == 0));
        self.up.push('\n');
        start(
            &mut self.error_code,
            metrics::GROUP_ERROR_CODE.0,
            labels,
            "",
        );
        push_i64(&mut self.error_code, code);
        self.error_code.push('\n');

        let Some(s) = &group.success else {
            return;
        };
        let snap = &s.snapshot;
        start(
            &mut self.attributes,
            metrics::GROUP_ATTRIBUTES.0,
            labels,
            "",
        );
        push_u64(&mut self.attributes, snap.attrs.len() as u64);
        self.attributes.push('\n');
        start(
            &mut self.bytes,
            metrics::GROUP_ATTRIBUTES_BYTES.0,
            labels,
            "",
        );
        push_u64(&mut self.bytes, snap.bytes());
        self.bytes.push('\n');
        if value_hashes != ValueHashes::Off {
            start(
                &mut self.set_hash,
                metrics::GROUP_ATTRIBUTES_HASH.0,
                labels,
                "",
            );
            push_u64(&mut self.set_hash, snap.set_hash);
            self.set_hash.push('\n');
        }
        if value_hashes == ValueHashes::PerKey {
            let buf = &mut self.value_hash;
            for a in snap.attrs.iter() {
                buf.push_str(metrics::GROUP_ATTRIBUTE_VALUE_HASH.0);
                buf.push('{');
                buf.push_str(labels);
                buf.push_str(",key=\"");
                escape_label_value(buf, &a.key);
                buf.push_str("\"} ");
                push_u64(buf, a.hash);
                buf.push('\n');
            }
        }
        for (extra, n) in CHANGE_LABELS.iter().zip(s.changes) {
            start(
                &mut self.changes,
                metrics::GROUP_ATTRIBUTE_CHANGES.0,
                labels,
                extra,
            );
            push_u64(&mut self.changes, n);
            self.changes.push('\n');
        }
        start(
            &mut self.last_change,
            metrics::GROUP_LAST_CHANGE.0,
            labels,
            "",
        );
        write_f64(&mut self.last_change, s.last_change);
        start(
            &mut self.last_success,
            metrics::GROUP_LAST_SUCCESS.0,
            labels,
            "",
        );
        write_f64(&mut self.last_success, s.last_success);
    }

    fn finish(self, out: &mut String) {
        let parts = [
            (metrics::GROUP_UP, self.up),
            (metrics::GROUP_ERROR_CODE, self.error_code),
            (metrics::GROUP_ATTRIBUTES, self.attributes),
            (metrics::GROUP_ATTRIBUTES_BYTES, self.bytes),
            (metrics::GROUP_ATTRIBUTES_HASH, self.set_hash),
            (metrics::GROUP_ATTRIBUTE_VALUE_HASH, self.value_hash),
            (metrics::GROUP_ATTRIBUTE_CHANGES, self.changes),
            (metrics::GROUP_LAST_CHANGE, self.last_change),
            (metrics::GROUP_LAST_SUCCESS, self.last_success),
            (metrics::GROUPS, self.groups),
            (metrics::GROUPS_BY_ERROR_CODE, self.by_code),
        ];
        let total: usize = parts.iter().map(|(f, s)| s.len() + f.2.len() + 64).sum();
        out.reserve(total);
        for ((name, kind, help), samples) in parts {
            if samples.is_empty() {
                continue;
            }
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            out.push_str(&samples);
        }
    }
}

/// The `change` label of each counter, in [`Success::changes`] order, ready to append.
const CHANGE_LABELS: [&str; 3] = [
    ",change=\"added\"",
    ",change=\"removed\"",
    ",change=\"modified\"",
];

/// Starts a sample line: `name{labels extra} `.
fn start(out: &mut String, name: &str, labels: &str, extra: &str) {
    out.push_str(name);
    out.push('{');
    out.push_str(labels);
    out.push_str(extra);
    out.push_str("} ");
}

fn push_u64(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[i..]).expect("ASCII digits"));
}

fn push_i64(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    push_u64(out, v.unsigned_abs());
}

/// Escapes a label value per the text format: `\` → `\\`, `"` → `\"`, newline → `\n`.
fn escape_label_value(out: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes a sample value and the line's end: integers without a fraction, Go's spellings for the
/// non-finite values.
fn write_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN\n");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf\n" } else { "-Inf\n" });
    } else {
        // Rust's `Display` for f64 is the shortest exact round trip and never uses an exponent.
        let _ = writeln!(out, "{v}");
    }
}

/// The state file's format version; a file with another one is ignored.
pub const STATE_FILE_VERSION: u32 = 1;

/// The state file: per app, per group, the latest snapshot. No values, and no counters (those are
/// process-local, as Prometheus counters are); see the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persisted {
    pub version: u32,
    /// By `sdkappid`, then by group ID.
    pub apps: BTreeMap<u64, BTreeMap<String, PersistedGroup>>,
}

impl Default for Persisted {
    fn default() -> Persisted {
        Persisted {
            version: STATE_FILE_VERSION,
            apps: BTreeMap::new(),
        }
    }
}

/// One group's snapshot in the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedGroup {
    /// Sorted by key, unique.
    pub attributes: Vec<PersistedAttribute>,
    /// [`set_hash`] of the attributes.
    pub set_hash: u64,
    /// 0 when no change has been seen.
    pub last_change_timestamp_seconds: f64,
}

impl PersistedGroup {
    fn of(snapshot: &Snapshot, last_change: f64) -> PersistedGroup {
        PersistedGroup {
            attributes: snapshot
                .attrs
                .iter()
                .map(|a| PersistedAttribute {
                    key: a.key.to_string(),
                    hash: a.hash,
                    bytes: a.len,
                })
                .collect(),
            set_hash: snapshot.set_hash,
            last_change_timestamp_seconds: last_change,
        }
    }
}

/// One attribute in the state file: its key, the [`hash48`] of its value and the value's length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedAttribute {
    pub key: String,
    pub hash: u64,
    pub bytes: u32,
}

/// Why a state file was not used. The daemon logs it and starts without baselines.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "state file {path} has version {found}, this exporter reads version {STATE_FILE_VERSION}"
    )]
    Version { path: PathBuf, found: u64 },
    #[error("state file {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Reads and checks a state file. Anything wrong (unreadable, truncated, not JSON, another
/// version, hashes out of range, duplicate keys) is an error: never a panic, never half a state.
pub fn read_state_file(path: &Path) -> Result<Persisted, StateFileError> {
    let bytes = std::fs::read(path).map_err(|source| StateFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_state(&bytes).map_err(|e| e.at(path))
}

/// A [`StateFileError`] before the path is known.
enum ParseError {
    Json(serde_json::Error),
    Version(u64),
    Invalid(String),
}

impl ParseError {
    fn at(self, path: &Path) -> StateFileError {
        let path = path.to_owned();
        match self {
            ParseError::Json(source) => StateFileError::Parse { path, source },
            ParseError::Version(found) => StateFileError::Version { path, found },
            ParseError::Invalid(reason) => StateFileError::Invalid { path, reason },
        }
    }
}

fn parse_state(bytes: &[u8]) -> Result<Persisted, ParseError> {
    // The version first, so a file from a later format is reported as such rather than as a
    // parse error about whatever field changed.
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u64,
    }
    let v: VersionOnly = serde_json::from_slice(bytes).map_err(ParseError::Json)?;
    if v.version != u64::from(STATE_FILE_VERSION) {
        return Err(ParseError::Version(v.version));
    }
    let persisted: Persisted = serde_json::from_slice(bytes).map_err(ParseError::Json)?;
    for (sdkappid, groups) in &persisted.apps {
        for (group_id, g) in groups {
            let place = format!("apps.{sdkappid}.{group_id:?}");
            if g.set_hash > HASH48_MAX {
                return Err(ParseError::Invalid(format!(
                    "{place}: set_hash is not a 48-bit hash"
                )));
            }
            if !(g.last_change_timestamp_seconds.is_finite()
                && g.last_change_timestamp_seconds >= 0.0)
            {
                return Err(ParseError::Invalid(format!(
                    "{place}: last_change_timestamp_seconds is not a timestamp"
                )));
            }
            for a in &g.attributes {
                if a.hash > HASH48_MAX {
                    return Err(ParseError::Invalid(format!(
                        "{place}: the hash of {:?} is not a 48-bit hash",
                        a.key
                    )));
                }
            }
            let sorted_unique = g
                .attributes
                .windows(2)
                .all(|w| w[0].key.as_bytes() < w[1].key.as_bytes());
            if !sorted_unique {
                return Err(ParseError::Invalid(format!(
                    "{place}: attributes are not sorted by key and unique"
                )));
            }
        }
    }
    Ok(persisted)
}

/// Writes the state file atomically: a temporary file in the same directory, written and
/// fsynced, renamed over `path`, then the directory fsynced so the rename survives a crash.
/// A reader sees the old file or the new one, never a mix; the temporary file never outlives a
/// failed write.
pub fn write_state_file(path: &Path, persisted: &Persisted) -> std::io::Result<()> {
    let json = serde_json::to_vec(persisted).map_err(std::io::Error::other)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Opening a directory to fsync it works on Unix; elsewhere the rename is the best there is.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    remove_dead_writers_temp_files(&dir, name);
    Ok(())
}

/// A process killed mid-write (OOM, `kill -9`) leaves its temporary file behind; in a crash
/// loop they would pile up, each the size of the state. Removes those whose writer is gone
/// (no `/proc/PID`); a live writer's file is left alone. Where `/proc` does not exist, nothing
/// is removed.
fn remove_dead_writers_temp_files(dir: &Path, name: &std::ffi::OsStr) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !proc.join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{ApiError, FailureReason};
    use proptest::prelude::*;
    use std::process::{Command, Stdio};

    fn ok(attrs: &[(String, String)]) -> Outcome<Attributes> {
        Outcome::Ok(attrs.to_vec())
    }

    fn api(code: i64) -> Outcome<Attributes> {
        Outcome::Api(ApiError::from_code(code, "").expect("a non-zero code"))
    }

    fn no_answer() -> Outcome<Attributes> {
        Outcome::NoAnswer(FailureReason::Timeout)
    }

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

    /// The rendered samples, as `name{labels}` → value.
    fn series(store: &Store, vh: ValueHashes) -> BTreeMap<String, String> {
        let mut out = String::new();
        store.render(&mut out, vh);
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').expect("a sample line has a value");
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn get(s: &BTreeMap<String, String>, name: &str, labels: &str) -> Option<String> {
        s.get(&format!("{name}{{{labels}}}")).cloned()
    }

    const G: &str = "sdkappid=\"1\",group_id=\"g\"";

    fn changes(s: &BTreeMap<String, String>) -> [u64; 3] {
        CHANGE_KINDS.map(|kind| {
            get(
                s,
                "timattr_group_attribute_changes_total",
                &format!("{G},change=\"{kind}\""),
            )
            .expect("change counter exists")
            .parse()
            .expect("integer")
        })
    }

    fn store_with(groups: &[&str]) -> Store {
        let store = Store::new();
        let ids: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        store.set_assigned(1, &ids, Seeds::DropUnlisted);
        store
    }

    #[test]
    fn store_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
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
    fn first_success_is_the_baseline_then_changes_are_counted() {
        let store = store_with(&["g"]);
        assert_eq!(
            store.apply(1, "g", &ok(&attrs(&[("a", "1"), ("b", "2")])), 100.0),
            None
        );
        let s = series(&store, ValueHashes::PerKey);
        assert_eq!(changes(&s), [0, 0, 0]);
        assert_eq!(
            get(&s, "timattr_group_last_change_timestamp_seconds", G).as_deref(),
            Some("0")
        );
        assert_eq!(
            get(&s, "timattr_group_last_success_timestamp_seconds", G).as_deref(),
            Some("100")
        );
        assert_eq!(get(&s, "timattr_group_attributes", G).as_deref(), Some("2"));
        assert_eq!(
            get(&s, "timattr_group_attributes_bytes", G).as_deref(),
            Some("2")
        );

        // Same set: nothing counted, last success moves.
        let same = attrs(&[("a", "1"), ("b", "2")]);
        assert_eq!(store.apply(1, "g", &ok(&same), 110.5), None);
        let s = series(&store, ValueHashes::PerKey);
        assert_eq!(changes(&s), [0, 0, 0]);
        assert_eq!(
            get(&s, "timattr_group_last_success_timestamp_seconds", G).as_deref(),
            Some("110.5")
        );

        // Add c, remove a, modify b.
        let next = attrs(&[("b", "22"), ("c", "3")]);
        let got = store.apply(1, "g", &ok(&next), 120.0);
        assert_eq!(
            got,
            Some(Changes {
                added: vec!["c".into()],
                removed: vec!["a".into()],
                modified: vec!["b".into()],
            })
        );
        // Clear everything: two removed.
        let got = store.apply(1, "g", &ok(&[]), 130.0);
        assert_eq!(got.map(|c| c.removed.len()), Some(2));
        // Add three.
        let three = attrs(&[("x", "1"), ("y", "2"), ("z", "3")]);
        assert!(store.apply(1, "g", &ok(&three), 140.0).is_some());
        let s = series(&store, ValueHashes::PerKey);
        assert_eq!(changes(&s), [4, 3, 1]);
        assert_eq!(
            get(&s, "timattr_group_last_change_timestamp_seconds", G).as_deref(),
            Some("140")
        );
        assert_eq!(get(&s, "timattr_group_attributes", G).as_deref(), Some("3"));
        assert_eq!(
            get(&s, "timattr_group_attributes_hash", G),
            Some(set_hash(&three).to_string())
        );
        assert_eq!(
            get(
                &s,
                "timattr_group_attribute_value_hash",
                &format!("{G},key=\"y\"")
            ),
            Some(hash48(b"2").to_string())
        );
    }

    #[test]
    fn duplicate_or_unsorted_keys_are_normalised() {
        let store = store_with(&["g"]);
        let messy = attrs(&[("b", "old"), ("a", "1"), ("b", "2")]);
        store.apply(1, "g", &ok(&messy), 1.0);
        let s = series(&store, ValueHashes::PerKey);
        assert_eq!(get(&s, "timattr_group_attributes", G).as_deref(), Some("2"));
        assert_eq!(
            get(&s, "timattr_group_attributes_hash", G),
            Some(set_hash(&attrs(&[("a", "1"), ("b", "2")])).to_string())
        );
    }

    #[test]
    fn series_appear_with_the_first_poll() {
        let store = store_with(&["g", "h"]);
        let s = series(&store, ValueHashes::PerKey);
        assert_eq!(get(&s, "timattr_group_up", G), None);
        assert_eq!(
            get(&s, "timattr_groups", "sdkappid=\"1\"").as_deref(),
            Some("2")
        );
        assert_eq!(
            get(
                &s,
                "timattr_groups_by_error_code",
                "sdkappid=\"1\",error_code=\"0\""
            )
            .as_deref(),
            Some("0")
        );

        store.apply(1, "g", &no_answer(), 1.0);
        store.apply(1, "h", &api(10002), 1.0);
        let s = series(&store, ValueHashes::PerKey);
        assert_eq!(get(&s, "timattr_group_up", G).as_deref(), Some("0"));
        assert_eq!(
            get(&s, "timattr_group_error_code", G).as_deref(),
            Some("-1")
        );
        // No attribute series before a success.
        assert_eq!(get(&s, "timattr_group_attributes", G), None);
        assert!(
            !s.keys()
                .any(|k| k.starts_with("timattr_group_attribute_changes_total"))
        );
        for (code, n) in [("-1", "1"), ("0", "0"), ("10002", "1")] {
            assert_eq!(
                get(
                    &s,
                    "timattr_groups_by_error_code",
                    &format!("sdkappid=\"1\",error_code=\"{code}\"")
                )
                .as_deref(),
                Some(n)
            );
        }
    }

    #[test]
    fn gone_groups_lose_attribute_series_and_come_back_as_a_fresh_baseline() {
        let store = store_with(&["g"]);
        store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        store.apply(1, "g", &ok(&attrs(&[("a", "2")])), 2.0);
        for code in [10007, 10010, 10015] {
            store.apply(1, "g", &api(code), 3.0);
            let s = series(&store, ValueHashes::PerKey);
            assert_eq!(get(&s, "timattr_group_up", G).as_deref(), Some("0"));
            assert_eq!(
                get(&s, "timattr_group_error_code", G),
                Some(code.to_string())
            );
            assert!(
                s.keys().all(|k| !k.starts_with("timattr_group_attribute")
                    && !k.starts_with("timattr_group_last_")),
                "{code}: {s:?}"
            );
            // Back: a fresh baseline, counters from 0, whatever the set now is.
            let got = store.apply(1, "g", &ok(&attrs(&[("z", "9")])), 4.0);
            assert_eq!(got, None);
            let s = series(&store, ValueHashes::PerKey);
            assert_eq!(changes(&s), [0, 0, 0]);
            assert_eq!(get(&s, "timattr_group_up", G).as_deref(), Some("1"));
        }
    }

    #[test]
    fn transient_failures_keep_attribute_series() {
        let store = store_with(&["g"]);
        store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        store.apply(1, "g", &ok(&attrs(&[("a", "2")])), 2.0);
        let before = series(&store, ValueHashes::PerKey);
        for result in [&no_answer(), &api(10002), &api(60007), &api(70001)] {
            store.apply(1, "g", result, 3.0);
            let s = series(&store, ValueHashes::PerKey);
            assert_eq!(get(&s, "timattr_group_up", G).as_deref(), Some("0"));
            for (k, v) in &before {
                if !k.starts_with("timattr_group_up")
                    && !k.starts_with("timattr_group_error_code")
                    && !k.starts_with("timattr_groups_by_error_code")
                {
                    assert_eq!(s.get(k), Some(v), "{result:?} {k}");
                }
            }
        }
        // And the next success diffs against the last successful poll.
        let got = store.apply(1, "g", &ok(&attrs(&[("a", "3")])), 4.0);
        assert_eq!(got.map(|c| c.modified), Some(vec!["a".to_string()]));
    }

    #[test]
    fn a_seeded_snapshot_is_diffed_once() {
        let old = store_with(&["g", "h"]);
        old.apply(1, "g", &ok(&attrs(&[("a", "1"), ("b", "2")])), 1.0);
        old.apply(1, "h", &ok(&attrs(&[("k", "v")])), 1.0);
        let persisted = old.persisted();

        let store = Store::new();
        store.seed_from(persisted);
        store.set_assigned(1, &["g".to_string(), "h".to_string()], Seeds::DropUnlisted);
        // Changed while down: counted once at the first poll.
        let got = store.apply(1, "g", &ok(&attrs(&[("a", "1"), ("c", "3")])), 50.0);
        assert_eq!(
            got,
            Some(Changes {
                added: vec!["c".into()],
                removed: vec!["b".into()],
                modified: vec![],
            })
        );
        let same = attrs(&[("a", "1"), ("c", "3")]);
        assert_eq!(store.apply(1, "g", &ok(&same), 60.0), None);
        let s = series(&store, ValueHashes::PerKey);
        assert_eq!(changes(&s), [1, 1, 0]);
        assert_eq!(
            get(&s, "timattr_group_last_change_timestamp_seconds", G).as_deref(),
            Some("50")
        );
        // Unchanged while down: nothing counted.
        assert_eq!(store.apply(1, "h", &ok(&attrs(&[("k", "v")])), 50.0), None);
    }

    #[test]
    fn a_seed_survives_failures_until_the_first_success_but_not_a_deletion() {
        let old = store_with(&["g"]);
        old.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        let persisted = old.persisted();

        let store = store_with(&["g"]);
        store.seed_from(persisted.clone());
        store.apply(1, "g", &no_answer(), 2.0);
        assert_eq!(
            store.persisted(),
            persisted,
            "a pending seed is written back"
        );
        let got = store.apply(1, "g", &ok(&attrs(&[("a", "2")])), 3.0);
        assert!(got.is_some());

        let store = store_with(&["g"]);
        store.seed_from(persisted);
        store.apply(1, "g", &api(10010), 2.0);
        assert!(store.persisted().apps.is_empty());
        assert_eq!(store.apply(1, "g", &ok(&attrs(&[("a", "2")])), 3.0), None);
    }

    #[test]
    fn set_assigned_keeps_staying_groups_and_drops_the_others() {
        let store = store_with(&["g", "h"]);
        store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        store.apply(1, "g", &ok(&attrs(&[("a", "2")])), 2.0);
        store.apply(1, "h", &ok(&attrs(&[("a", "1")])), 1.0);
        let gen_before = store.generation();
        store.set_assigned(
            1,
            &["g".to_string(), "new".to_string()],
            Seeds::DropUnlisted,
        );
        assert_ne!(
            store.generation(),
            gen_before,
            "dropping a snapshot changes the state file"
        );
        let s = series(&store, ValueHashes::PerKey);
        assert_eq!(changes(&s), [0, 0, 1]);
        assert!(s.keys().all(|k| !k.contains("group_id=\"h\"")));
        assert!(s.keys().all(|k| !k.contains("group_id=\"new\"")));
        assert_eq!(
            get(&s, "timattr_groups", "sdkappid=\"1\"").as_deref(),
            Some("2")
        );
        // A late result for a dropped group is ignored.
        assert_eq!(store.apply(1, "h", &ok(&[]), 3.0), None);
        assert!(
            series(&store, ValueHashes::PerKey)
                .keys()
                .all(|k| !k.contains("group_id=\"h\""))
        );
        assert!(!store.persisted().apps[&1].contains_key("h"));

        store.remove_app(1);
        assert!(series(&store, ValueHashes::PerKey).is_empty());
        assert_eq!(store.apply(1, "g", &no_answer(), 4.0), None);
    }

    #[test]
    fn generation_moves_only_when_the_state_file_would_change() {
        let store = store_with(&["g"]);
        let g0 = store.generation();
        store.apply(1, "g", &no_answer(), 1.0);
        assert_eq!(store.generation(), g0);
        store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        let g1 = store.generation();
        assert_ne!(g1, g0);
        store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 2.0);
        store.apply(1, "g", &api(10002), 3.0);
        assert_eq!(store.generation(), g1);
        store.apply(1, "g", &ok(&attrs(&[("a", "2")])), 4.0);
        assert_ne!(store.generation(), g1);
    }

    #[test]
    fn value_hashes_setting_controls_hash_series() {
        let store = store_with(&["g"]);
        store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        let has = |vh, name: &str| {
            series(&store, vh)
                .keys()
                .any(|k| k.starts_with(&format!("{name}{{")))
        };
        assert!(has(
            ValueHashes::PerKey,
            "timattr_group_attribute_value_hash"
        ));
        assert!(has(ValueHashes::PerKey, "timattr_group_attributes_hash"));
        assert!(!has(
            ValueHashes::PerGroup,
            "timattr_group_attribute_value_hash"
        ));
        assert!(has(ValueHashes::PerGroup, "timattr_group_attributes_hash"));
        assert!(!has(ValueHashes::Off, "timattr_group_attributes_hash"));
        assert!(has(ValueHashes::Off, "timattr_group_attributes"));
    }

    #[test]
    fn labels_are_escaped_and_output_is_sorted() {
        let store = Store::new();
        store.set_assigned(
            2,
            &["b".to_string(), "a\"\\\nz".to_string()],
            Seeds::DropUnlisted,
        );
        store.set_assigned(1, &["c".to_string()], Seeds::DropUnlisted);
        store.apply(2, "a\"\\\nz", &ok(&attrs(&[("k\"\n\\", "v")])), 1.0);
        store.apply(2, "b", &no_answer(), 1.0);
        store.apply(1, "c", &no_answer(), 1.0);
        let mut out = String::new();
        store.render(&mut out, ValueHashes::PerKey);
        assert!(
            out.contains(r#"group_id="a\"\\\nz",key="k\"\n\\"}"#),
            "{out}"
        );
        let ups: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("timattr_group_up{"))
            .collect();
        assert_eq!(
            ups,
            [
                r#"timattr_group_up{sdkappid="1",group_id="c"} 0"#,
                r#"timattr_group_up{sdkappid="2",group_id="a\"\\\nz"} 1"#,
                r#"timattr_group_up{sdkappid="2",group_id="b"} 0"#,
            ]
        );
        check_exposition(&out).expect("valid exposition");
    }

    #[test]
    fn rendering_resumes_across_chunks() {
        let ids: Vec<String> = (0..RENDER_CHUNK * 2 + 7)
            .map(|i| format!("g{i:05}"))
            .collect();
        let store = Store::new();
        store.set_assigned(1, &ids, Seeds::DropUnlisted);
        for id in &ids {
            store.apply(1, id, &no_answer(), 1.0);
        }
        let s = series(&store, ValueHashes::PerKey);
        let ups = s
            .keys()
            .filter(|k| k.starts_with("timattr_group_up{"))
            .count();
        assert_eq!(ups, ids.len());
        assert_eq!(
            get(&s, "timattr_groups", "sdkappid=\"1\""),
            Some(ids.len().to_string())
        );
    }

    #[test]
    fn state_file_round_trips_and_is_written_atomically() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        let store = store_with(&["g", "h"]);
        store.apply(
            1,
            "g",
            &ok(&attrs(&[("a", "secret value"), ("b", "")])),
            1.0,
        );
        store.apply(1, "g", &ok(&attrs(&[("a", "secret value 2")])), 7.5);
        store.apply(1, "h", &no_answer(), 1.0);
        let persisted = store.persisted();
        write_state_file(&path, &persisted).expect("written");
        // Overwrite works too, and leaves only the file itself.
        write_state_file(&path, &persisted).expect("rewritten");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("listable")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        let text = std::fs::read_to_string(&path).expect("readable");
        assert!(
            !text.contains("secret value"),
            "values never reach the state file"
        );
        let back = read_state_file(&path).expect("valid");
        assert_eq!(back, persisted);
        let g = &back.apps[&1]["g"];
        assert_eq!(g.attributes.len(), 1);
        assert_eq!(g.attributes[0].hash, hash48(b"secret value 2"));
        assert_eq!(g.attributes[0].bytes, 14);
        assert_eq!(g.last_change_timestamp_seconds, 7.5);
        assert!(!back.apps[&1].contains_key("h"));
    }

    #[test]
    fn failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        // The target is a non-empty directory: the rename fails after the temp file was written.
        let path = dir.path().join("state.json");
        std::fs::create_dir(&path).expect("dir");
        std::fs::write(path.join("x"), b"x").expect("file");
        assert!(write_state_file(&path, &Persisted::default()).is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("listable")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn bad_state_files_are_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let valid = {
            let store = store_with(&["g"]);
            store.apply(1, "g", &ok(&attrs(&[("a", "1"), ("b", "2")])), 1.0);
            serde_json::to_string(&store.persisted()).expect("serialisable")
        };
        let cases: Vec<(&str, String)> = vec![
            ("empty", String::new()),
            ("truncated", valid[..valid.len() / 2].to_string()),
            ("not json", "hello".into()),
            (
                "foreign version",
                valid.replace("\"version\":1", "\"version\":2"),
            ),
            ("no version", r#"{"apps":{}}"#.into()),
            (
                "unknown field",
                valid.replace("\"version\":1", "\"version\":1,\"x\":1"),
            ),
            (
                "hash out of range",
                valid.replace(
                    &format!("\"hash\":{}", hash48(b"1")),
                    "\"hash\":281474976710656",
                ),
            ),
            (
                "unsorted keys",
                valid.replace("\"key\":\"a\"", "\"key\":\"c\""),
            ),
            ("bad app id", valid.replace("\"1\":", "\"x\":")),
        ];
        for (name, text) in cases {
            assert_ne!(
                text, valid,
                "{name}: the case must differ from the valid file"
            );
            let path = dir.path().join(name);
            std::fs::write(&path, &text).expect("written");
            let err = read_state_file(&path).expect_err(name);
            if name == "foreign version" {
                assert!(
                    matches!(err, StateFileError::Version { found: 2, .. }),
                    "{err}"
                );
            }
        }
        let missing = read_state_file(&dir.path().join("missing")).expect_err("missing");
        assert!(matches!(missing, StateFileError::Io { .. }));
        let unreadable = read_state_file(dir.path()).expect_err("a directory");
        assert!(matches!(unreadable, StateFileError::Io { .. }));
        std::fs::write(dir.path().join("ok"), &valid).expect("written");
        assert!(read_state_file(&dir.path().join("ok")).is_ok());
    }

    /// A checker for the text format as `/metrics` must produce it: every family has one HELP and
    /// one TYPE before its samples, samples of a family are contiguous, label values are quoted
    /// with only the three escapes, values parse as floats, and there are no timestamps.
    pub(crate) fn check_exposition(text: &str) -> Result<(), String> {
        let mut done: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut typed = false;
        for (n, line) in text.lines().enumerate() {
            let err = |what: &str| Err(format!("line {}: {what}: {line:?}", n + 1));
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default().to_string();
                if done.contains(&name) || current.as_deref() == Some(&name) {
                    return err("second HELP");
                }
                if let Some(c) = current.take() {
                    done.insert(c);
                }
                current = Some(name);
                typed = false;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap_or_default();
                let kind = parts.next().unwrap_or_default();
                if current.as_deref() != Some(name) || typed {
                    return err("TYPE without its HELP");
                }
                if !["counter", "gauge", "histogram"].contains(&kind) {
                    return err("unknown type");
                }
                typed = true;
            } else {
                let Some(family) = current.as_deref() else {
                    return err("sample before any HELP");
                };
                if !typed {
                    return err("sample before TYPE");
                }
                let (name, rest) = match line.find('{') {
                    Some(i) => (&line[..i], &line[i..]),
                    None => line.split_at(line.find(' ').unwrap_or(line.len())),
                };
                let base_ok = name == family
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(family));
                if !base_ok {
                    return err("sample outside its family");
                }
                let value = if let Some(labels) = rest.strip_prefix('{') {
                    let mut chars = labels.char_indices().peekable();
                    let end = loop {
                        // name="value"
                        let mut lname = String::new();
                        for (_, c) in chars.by_ref() {
                            if c == '=' {
                                break;
                            }
                            lname.push(c);
                        }
                        if lname.is_empty()
                            || !lname.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        {
                            return err("bad label name");
                        }
                        if chars.next().map(|(_, c)| c) != Some('"') {
                            return err("unquoted label value");
                        }
                        loop {
                            match chars.next() {
                                Some((_, '\\')) => match chars.next() {
                                    Some((_, '\\' | '"' | 'n')) => {}
                                    _ => return err("bad escape"),
                                },
                                Some((_, '"')) => break,
                                Some((_, '\n')) => return err("raw newline"),
                                Some(_) => {}
                                None => return err("unterminated label value"),
                            }
                        }
                        match chars.next() {
                            Some((_, ',')) => continue,
                            Some((i, '}')) => break i,
                            _ => return err("bad label separator"),
                        }
                    };
                    &labels[end + 1..]
                } else {
                    rest
                };
                let Some(value) = value.strip_prefix(' ') else {
                    return err("no value");
                };
                if value.contains(' ') {
                    return err("timestamp or trailing text");
                }
                let ok = matches!(value, "NaN" | "+Inf" | "-Inf") || value.parse::<f64>().is_ok();
                if !ok {
                    return err("bad value");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn the_exposition_checker_rejects_what_it_should() {
        let head = "# HELP m h\n# TYPE m gauge\n";
        assert!(check_exposition(&format!("{head}m{{a=\"x\\\"\"}} 1\n")).is_ok());
        for bad in [
            format!("{head}m{{a=\"x\\t\"}} 1\n"),
            format!("{head}m{{a=\"x\"}} 1 1700000000\n"),
            format!("{head}m{{a=x}} 1\n"),
            format!("{head}n 1\n"),
            format!("{head}m 1\n{head}"),
            format!("{head}m one\n"),
            "m 1\n".to_string(),
        ] {
            assert!(check_exposition(&bad).is_err(), "{bad:?}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Assign(Vec<u8>),
        Poll(u8, Option<Vec<(String, String)>>, i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let attr = ("[a-c\"\\\\\n é]{0,3}", "\\PC{0,8}");
        prop_oneof![
            proptest::collection::vec(0u8..6, 0..6).prop_map(Op::Assign),
            (
                0u8..6,
                proptest::option::of(proptest::collection::vec(attr, 0..5)),
                prop_oneof![Just(-1i64), Just(10010), Just(10002), Just(10007)],
            )
                .prop_map(|(g, a, c)| Op::Poll(g, a, c)),
        ]
    }

    fn gid(g: u8) -> String {
        ["a", "b\"", "c\\", "d\n", "é", "@TGS#x"][usize::from(g) % 6].to_string()
    }

    proptest! {
        #[test]
        fn rendered_random_states_are_valid_exposition(ops in proptest::collection::vec(op(), 0..40)) {
            let store = Store::new();
            store.set_assigned(7, &(0..6).map(gid).collect::<Vec<_>>(), Seeds::DropUnlisted);
            for (t, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Assign(gs) => store.set_assigned(7, &gs.into_iter().map(gid).collect::<Vec<_>>(), Seeds::DropUnlisted),
                    Op::Poll(g, Some(a), _) => { store.apply(7, &gid(g), &ok(&a), t as f64); }
                    Op::Poll(g, None, -1) => { store.apply(7, &gid(g), &no_answer(), t as f64); }
                    Op::Poll(g, None, code) => { store.apply(7, &gid(g), &api(code), t as f64); }
                }
            }
            for vh in [ValueHashes::PerKey, ValueHashes::PerGroup, ValueHashes::Off] {
                let mut out = String::new();
                store.render(&mut out, vh);
                prop_assert!(check_exposition(&out).is_ok(), "{:?}\n{}", check_exposition(&out), out);
            }
            // The state file of any state reads back to itself.
            let p = store.persisted();
            let bytes = serde_json::to_vec(&p).expect("serialisable");
            prop_assert_eq!(parse_state(&bytes).ok(), Some(p));
        }

        #[test]
        fn parsing_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_state(&bytes);
        }

        #[test]
        fn parsing_mangled_state_never_panics(cut in 0usize..400, byte in any::<u8>(), at in 0usize..400) {
            let store = store_with(&["g", "h"]);
            store.apply(1, "g", &ok(&attrs(&[("a", "1"), ("b", "2")])), 1.0);
            store.apply(1, "h", &ok(&attrs(&[("c", "3")])), 1.0);
            let mut bytes = serde_json::to_vec(&store.persisted()).expect("serialisable");
            if at < bytes.len() { bytes[at] = byte; }
            bytes.truncate(cut);
            let _ = parse_state(&bytes);
        }
    }
}
