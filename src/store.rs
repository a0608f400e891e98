//! The latest poll result of every group this instance polls: which groups are assigned, what
//! each poll changed, what the state file should hold, and a read-only view of it all that
//! `metrics` renders the per-group families from (the store knows no exposition format).
//!
//! What is kept per group is deliberately small (≈ 0.4 KiB with 4 attributes, see [`Store`]):
//! a [`crate::snapshot`] of its last successful poll, never the values themselves.
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
//! - A state file snapshot is used once, at the group's first successful poll in this process,
//!   and dropped when the API says the group is gone or unreadable (the snapshot then describes a
//!   group that no longer exists).
//! - Which `timattr_groups_by_error_code` series exist is rendering's decision: see
//!   [`crate::metrics`].
//! - "The latest poll" is the one dispatched last ([`Ticket`]): when two polls of a group overlap
//!   (a callback's poll beside a regular one, or a poll that retried) and the older one ends
//!   last, its outcome is dropped, success or failure alike, so no change is counted twice and
//!   a newer state is never replaced by an older one.
//!
//! Each app also has its [`AppSettings`], what the config says of its groups: the labels of
//! `timattr_group_labels` and the `ignore_keys` its diffs leave out. Discovered groups take the
//! app's; only configured groups whose own differ are listed, so 100,000 discovered groups cost
//! nothing more. A reload that changes `ignore_keys` flags the kept snapshots anew (counters stay);
//! a state-file snapshot is flagged when its group first succeeds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use parking_lot::{Mutex, MutexGuard};

use crate::error_code::{ErrorClass, classify};
use crate::outcome::{Attributes, Outcome};
use crate::pattern::Patterns;
use crate::snapshot::{Changes, Snapshot};
use crate::state_file::{Persisted, StateSink};

/// Whether [`Store::set_assigned`] drops the state-file snapshots of groups it does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeds {
    /// The list is complete (configured groups, and discovered ones once discovery answered).
    DropUnlisted,
    /// The list may still grow (discovery has not answered): keep every snapshot.
    Keep,
}

/// What the config says of a group beyond its schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSettings {
    /// `timattr_group_labels`: label name (without the `label_` prefix) to value, sorted by name;
    /// empty: the group has no such series.
    pub labels: Arc<BTreeMap<String, String>>,
    /// Keys left out of the change counters and the value hashes.
    pub ignore_keys: Option<Arc<Patterns>>,
}

/// The settings of an app's groups: the app's own, and those of the groups whose differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppSettings {
    /// What every group not in `groups` (every discovered one) has.
    pub app: GroupSettings,
    /// Configured groups with labels or `ignore_keys` of their own (merged with the app's).
    pub groups: HashMap<Box<str>, GroupSettings>,
}

impl AppSettings {
    /// The settings of one group: no lookup at all when no group has its own.
    #[inline]
    pub fn for_group(&self, group_id: &str) -> &GroupSettings {
        if self.groups.is_empty() {
            return &self.app;
        }
        self.groups.get(group_id).unwrap_or(&self.app)
    }
}

fn same_patterns(a: Option<&Arc<Patterns>>, b: Option<&Arc<Patterns>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        _ => false,
    }
}

/// A group's `timattr_group_attribute_changes_total`, one count per `change` label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
}

/// What the attribute series of a group show: its last successful poll and what changed.
#[derive(Debug, Clone)]
struct Success {
    snapshot: Snapshot,
    changes: ChangeCounts,
    last_change: f64,
    last_success: f64,
}

impl Success {
    fn record(&mut self, changes: &Changes, now_unix: f64) {
        self.changes.added += changes.added.len() as u64;
        self.changes.removed += changes.removed.len() as u64;
        self.changes.modified += changes.modified.len() as u64;
        if !changes.is_empty() {
            self.last_change = now_unix;
        }
    }
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
    /// The [`Ticket`] of the newest poll whose outcome was applied (0: none yet): an outcome of
    /// a poll dispatched before it is stale.
    applied: u64,
}

impl Group {
    /// Whether an outcome of the poll `ticket` is to be applied (no later-dispatched poll's
    /// has been); if so, it becomes the newest applied.
    fn admit(&mut self, ticket: Ticket) -> bool {
        if ticket.0 < self.applied {
            return false;
        }
        self.applied = ticket.0;
        true
    }
}

/// The order polls are dispatched in, from [`Store::ticket`]: [`Store::apply_polled`] keeps the
/// outcome of the poll dispatched last, whatever order the polls end in (a poll that timed out
/// and retried can end after a later one; a callback's poll can overlap a regular one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// What [`Store::apply_polled`] did with an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Recorded: the group's `ErrorCode` before it (`None` before its first poll), and the keys
    /// that changed when a change was counted.
    Recorded {
        previous: Option<i64>,
        changes: Option<Changes>,
    },
    /// Ignored: the outcome of a poll dispatched after this one was already applied.
    Stale,
    /// Ignored: the group is not assigned (a poll that was in flight during a reload that
    /// dropped it).
    Unassigned,
}

/// The groups of one app. A `BTreeMap` so rendering walks them in `group_id` order (a golden
/// file and diffs of scrapes need a stable order) and can resume after a key in chunks.
///
/// Lock order: `groups`, then `settings`.
#[derive(Debug, Default)]
struct AppState {
    /// `parking_lot`'s, for its fair unlock: a walk in chunks hands the lock to a waiting poll
    /// between two chunks (see [`RENDER_CHUNK`]).
    groups: Mutex<BTreeMap<Box<str>, Group>>,
    settings: RwLock<Arc<AppSettings>>,
}

impl AppState {
    fn settings(&self) -> Arc<AppSettings> {
        Arc::clone(&self.settings.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// How many groups [`AppView::for_each_group`] (and the state file's walk) visits per acquisition
/// of an app's lock, so a scrape of a very large app never blocks polling for more than a
/// fraction of a millisecond at a time. Each chunk ends with a fair unlock, which hands the lock
/// to a waiting poll: with a plain unlock the walk took it back at once, before the woken poll
/// thread ran, and a 250,000-group state write starved polling for a quarter of a second
/// (BENCHMARKS, "Scale": the poll thread woken 440 times by the writer, asleep again each time).
pub const RENDER_CHUNK: usize = 512;

/// The state of every group this instance polls. `Send + Sync`; share it through an `Arc`.
///
/// Locking: one `RwLock` over the app table (written only by reloads) and one `Mutex` per app over
/// its groups, each held for a map lookup and a diff of pre-hashed snapshots (hashing happens
/// before the lock). Rendering holds an app's lock for at most [`RENDER_CHUNK`] groups at a time.
///
/// Memory per group with 4 attributes of ≤ 16-byte keys, on 64-bit: map entry (16-byte key
/// pointer + 32-byte `Group`, ≈ 70 bytes with B-tree slack) + group id (≈ 32) + `Success` (80) +
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
    /// The last [`Ticket`] handed out.
    tickets: AtomicU64,
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
    /// poll or when it is not assigned. A poll learns the code before its own from
    /// [`Store::apply_polled`] instead, under the same lock.
    pub fn error_code(&self, sdkappid: u64, group_id: &str) -> Option<i64> {
        let app = self.app(sdkappid)?;
        let groups = app.groups.lock();
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
            let mut groups = app.groups.lock();
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
        let mut all_seeds = self.seeds.lock();
        if let (Seeds::DropUnlisted, Some(app_seeds)) = (seeds, all_seeds.get_mut(&sdkappid)) {
            let before = app_seeds.len();
            app_seeds.retain(|id, _| wanted.contains(&**id));
            dropped_snapshot |= app_seeds.len() != before;
        }
        if dropped_snapshot {
            self.bump();
        }
    }

    /// Sets what the config says of an app's groups (labels, `ignore_keys`), at start and at every
    /// reload. Snapshots kept across it are flagged anew where a group's `ignore_keys` changed,
    /// so the next diff leaves out what the new config says; counters and everything else stay.
    pub fn set_settings(&self, sdkappid: u64, settings: AppSettings) {
        let app = {
            let mut apps = self.apps.write().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(apps.entry(sdkappid).or_default())
        };
        let settings = Arc::new(settings);
        let mut groups = app.groups.lock();
        let old = std::mem::replace(
            &mut *app.settings.write().unwrap_or_else(PoisonError::into_inner),
            Arc::clone(&settings),
        );
        for (id, group) in groups.iter_mut() {
            let Some(success) = group.success.as_mut() else {
                continue;
            };
            let now = settings.for_group(id).ignore_keys.as_ref();
            if !same_patterns(old.for_group(id).ignore_keys.as_ref(), now) {
                success.snapshot.mark(now.map(|p| &**p));
            }
        }
    }

    /// Adds one group to an app's assignment (a group a create callback announced), keeping
    /// everything else: cheaper than [`Store::set_assigned`] with the whole list.
    pub fn add_assigned(&self, sdkappid: u64, group_id: &str) {
        let app = {
            let mut apps = self.apps.write().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(apps.entry(sdkappid).or_default())
        };
        app.groups
            .lock()
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
        let seeded = self.seeds.lock().remove(&sdkappid);
        if removed.is_some() || seeded.is_some() {
            self.bump();
        }
    }

    /// A ticket for a poll dispatched now, newer than every one handed out before (for any
    /// group of any app). The app owner takes one per poll, when it dispatches it.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.tickets.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Records the result of a poll dispatched now (see [`Store::apply_polled`]). Returns the
    /// keys that changed when a change was counted.
    pub fn apply(
        &self,
        sdkappid: u64,
        group_id: &str,
        outcome: &Outcome<Attributes>,
        now_unix: f64,
    ) -> Option<Changes> {
        match self.apply_polled(sdkappid, group_id, self.ticket(), outcome, now_unix) {
            Applied::Recorded { changes, .. } => changes,
            Applied::Stale | Applied::Unassigned => None,
        }
    }

    /// Records the outcome of the poll `ticket` of a group, unless the outcome of a poll
    /// dispatched after it (a newer ticket) was applied already: the poll started last wins,
    /// whatever order the polls end in, so an older state never follows a newer one (which would
    /// count its differences as changes twice) and an older failure never hides a newer success
    /// (nor drops its snapshot, for 10007/10010/10015). A result for a group that is not
    /// assigned (a poll that was in flight during a reload that dropped it) is ignored.
    pub fn apply_polled(
        &self,
        sdkappid: u64,
        group_id: &str,
        ticket: Ticket,
        outcome: &Outcome<Attributes>,
        now_unix: f64,
    ) -> Applied {
        let Some(app) = self.app(sdkappid) else {
            return Applied::Unassigned;
        };
        let (code, gone) = match outcome {
            Outcome::Ok(attrs) => {
                return self.apply_success(&app, sdkappid, group_id, ticket, attrs, now_unix);
            }
            Outcome::Api(e) => (e.code(), classify(e.code()) == ErrorClass::PerGroup),
            Outcome::NoAnswer(_) => (-1, false),
        };
        let mut groups = app.groups.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return Applied::Unassigned;
        };
        if !group.admit(ticket) {
            return Applied::Stale;
        }
        let previous = group.error_code.replace(code);
        if gone {
            let mut had_snapshot = group.success.take().is_some();
            // Under the group's lock (groups, then seeds, as a first success takes a seed), so
            // a newer poll's success cannot take the seed this answer says is of a lost group.
            let seeded = self
                .seeds
                .lock()
                .get_mut(&sdkappid)
                .and_then(|s| s.remove(group_id))
                .is_some();
            had_snapshot |= seeded;
            drop(groups);
            if had_snapshot {
                self.bump();
            }
        }
        Applied::Recorded {
            previous,
            changes: None,
        }
    }

    fn apply_success(
        &self,
        app: &AppState,
        sdkappid: u64,
        group_id: &str,
        ticket: Ticket,
        attrs: &[(String, String)],
        now_unix: f64,
    ) -> Applied {
        // Hashed (and flagged) before the lock; flagged again under it if a reload changed the
        // settings meanwhile.
        let settings = app.settings();
        let ignore = settings.for_group(group_id).ignore_keys.as_deref();
        let mut next = Snapshot::of(attrs, ignore);
        let mut groups = app.groups.lock();
        let current = app.settings();
        let ignore = current.for_group(group_id).ignore_keys.as_deref();
        if !Arc::ptr_eq(&settings, &current) {
            next.mark(ignore);
        }
        let Some(group) = groups.get_mut(group_id) else {
            return Applied::Unassigned;
        };
        if !group.admit(ticket) {
            return Applied::Stale;
        }
        let previous = group.error_code.replace(0);
        let changes = match &mut group.success {
            Some(success) => {
                success.last_success = now_unix;
                if success.snapshot == next {
                    return Applied::Recorded {
                        previous,
                        changes: None,
                    };
                }
                let changes = success.snapshot.diff(&next);
                success.snapshot = next;
                success.record(&changes, now_unix);
                changes
            }
            None => {
                // The first successful poll (in this process, or since the API said the group was
                // gone) is the baseline; only a state-file snapshot gives it something to diff.
                let seed = self
                    .seeds
                    .lock()
                    .get_mut(&sdkappid)
                    .and_then(|s| s.remove(group_id));
                let mut success = Success {
                    snapshot: next,
                    changes: ChangeCounts::default(),
                    last_change: 0.0,
                    last_success: now_unix,
                };
                let mut changes = Changes::default();
                if let Some(mut seed) = seed {
                    success.last_change = seed.last_change;
                    // The state file holds every key; what is left out is today's config's call.
                    seed.snapshot.mark(ignore);
                    changes = seed.snapshot.diff(&success.snapshot);
                    success.record(&changes, now_unix);
                }
                group.success = Some(Box::new(success));
                changes
            }
        };
        drop(groups);
        self.bump();
        Applied::Recorded {
            previous,
            changes: (!changes.is_empty()).then_some(changes),
        }
    }

    /// Takes the snapshots of a state file as baselines: each is diffed once against its group's
    /// first successful poll, so a change made while the exporter was down is counted once.
    /// Snapshots of groups that are never assigned are dropped by the next [`Store::set_assigned`]
    /// of their app.
    pub fn seed_from(&self, persisted: Persisted) {
        let mut seeds = self.seeds.lock();
        for (sdkappid, groups) in persisted.apps {
            let app_seeds = seeds.entry(sdkappid).or_default();
            for (group_id, g) in groups {
                let (snapshot, last_change) = g.into_snapshot();
                let seed = SeedEntry {
                    snapshot,
                    last_change,
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
        self.persist_into(&mut out)
            .expect("collecting into memory cannot fail");
        out
    }

    /// Hands what [`Store::persisted`] returns to `sink` group by group, app by app, without a
    /// copy of it all: the daemon streams it into the state file.
    ///
    /// In chunks of [`RENDER_CHUNK`] groups, the app's lock (or the seeds' lock) handed to any
    /// waiting poll between them: copying 250,000 snapshots under one hold stalled every poll of
    /// the app for a third of a second (BENCHMARKS, "Scale"). A change made during the walk bumps
    /// the generation, so the next write takes it.
    pub(crate) fn persist_into(&self, sink: &mut impl StateSink) -> std::io::Result<()> {
        for (sdkappid, app) in self.app_list() {
            // Groups with no success yet: their state-file snapshot, if any, is what they keep.
            let mut unseen = Vec::new();
            let mut after: Option<Box<str>> = None;
            loop {
                let groups = app.groups.lock();
                let range = match &after {
                    None => groups.range::<str, _>(..),
                    Some(c) => groups.range::<str, _>((Bound::Excluded(&**c), Bound::Unbounded)),
                };
                let mut seen = 0;
                let mut last = None;
                for (id, g) in range.take(RENDER_CHUNK) {
                    seen += 1;
                    match &g.success {
                        Some(s) => sink.group(sdkappid, id, &s.snapshot, s.last_change),
                        None => unseen.push(id.clone()),
                    }
                    last = Some(id);
                }
                after = last.cloned();
                MutexGuard::unlock_fair(groups);
                sink.end_of_chunk()?;
                if seen < RENDER_CHUNK {
                    break;
                }
            }
            for ids in unseen.chunks(RENDER_CHUNK) {
                let seeds = self.seeds.lock();
                let Some(app_seeds) = seeds.get(&sdkappid) else {
                    break;
                };
                for id in ids {
                    if let Some(seed) = app_seeds.get(id) {
                        sink.group(sdkappid, id, &seed.snapshot, seed.last_change);
                    }
                }
                MutexGuard::unlock_fair(seeds);
                sink.end_of_chunk()?;
            }
        }
        Ok(())
    }

    fn app_list(&self) -> Vec<(u64, Arc<AppState>)> {
        self.apps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, app)| (*id, Arc::clone(app)))
            .collect()
    }

    /// The apps with assigned groups, in `sdkappid` order: what `/metrics` renders from. Taken
    /// at once from the app table, which is not locked while the caller walks the apps; an app
    /// a reload removes meanwhile is still walked, one it adds is not.
    pub fn apps(&self) -> Vec<AppView> {
        self.app_list()
            .into_iter()
            .map(|(sdkappid, state)| AppView { sdkappid, state })
            .collect()
    }
}

/// One app of the [`Store`], read-only.
#[derive(Debug, Clone)]
pub struct AppView {
    sdkappid: u64,
    state: Arc<AppState>,
}

impl AppView {
    pub fn sdkappid(&self) -> u64 {
        self.sdkappid
    }

    /// Calls `f` with every group assigned to the app, polled yet or not, in ascending bytewise
    /// order of `group_id`. The app's lock is held while `f` runs, for at most [`RENDER_CHUNK`]
    /// groups at a time, so `f` should be quick and must not call into the [`Store`] (it would
    /// deadlock). A change between chunks (a poll, a reload) shows in the later chunks only.
    pub fn for_each_group(&self, mut f: impl FnMut(GroupView<'_>)) {
        let mut cursor = None;
        while let Some(next) = self.for_each_chunk_after(cursor.as_deref(), |chunk| {
            chunk.iter().for_each(|&group| f(group));
        }) {
            cursor = Some(next);
        }
    }

    /// One chunk of [`AppView::for_each_group`]: calls `f` once with at most [`RENDER_CHUNK`]
    /// groups after `after` (from the first when `None`) under the app's lock, releases it, and
    /// returns the cursor to pass next, or `None` when the walk is done. A streamed render writes
    /// its buffer out between two calls, so a slow reader never holds the lock. The whole chunk
    /// at once lets the render read ahead (`groups::warm`).
    pub fn for_each_chunk_after(
        &self,
        after: Option<&str>,
        f: impl FnOnce(&[GroupView<'_>]),
    ) -> Option<Box<str>> {
        let groups = self.state.groups.lock();
        let settings = self.state.settings();
        let range = match after {
            None => groups.range::<str, _>(..),
            Some(c) => groups.range::<str, _>((Bound::Excluded(c), Bound::Unbounded)),
        };
        let chunk: Vec<GroupView<'_>> = range
            .take(RENDER_CHUNK)
            .map(|(id, group)| GroupView {
                id,
                group,
                settings: settings.for_group(id),
            })
            .collect();
        f(&chunk);
        let next = if chunk.len() < RENDER_CHUNK {
            None
        } else {
            chunk.last().map(|last| Box::from(last.id))
        };
        drop(chunk);
        MutexGuard::unlock_fair(groups);
        next
    }
}

/// One assigned group, read-only, while its app's lock is held.
#[derive(Debug, Clone, Copy)]
pub struct GroupView<'a> {
    id: &'a str,
    group: &'a Group,
    settings: &'a GroupSettings,
}

impl<'a> GroupView<'a> {
    #[inline]
    pub fn group_id(self) -> &'a str {
        self.id
    }

    /// `ErrorCode` of the latest poll: 0 on success, -1 when no valid answer came; `None` before
    /// the first poll, when the group has no series yet.
    #[inline]
    pub fn error_code(self) -> Option<i64> {
        self.group.error_code
    }

    /// The group's `labels` (the app's merged with its own), for `timattr_group_labels`; it
    /// exists from assignment, polled yet or not.
    #[inline]
    pub fn labels(self) -> &'a BTreeMap<String, String> {
        &self.settings.labels
    }

    /// The last successful poll and what changed, which the attribute series show; `None` before
    /// the first success and after the API said the group is gone or unreadable.
    #[inline]
    pub fn success(self) -> Option<SuccessView<'a>> {
        self.group.success.as_deref().map(SuccessView)
    }
}

/// A group's last successful poll, read-only.
#[derive(Debug, Clone, Copy)]
pub struct SuccessView<'a>(&'a Success);

impl<'a> SuccessView<'a> {
    /// Number of attributes.
    #[inline]
    pub fn attributes(self) -> usize {
        self.0.snapshot.attrs.len()
    }

    /// Bytes of all values.
    #[inline]
    pub fn bytes(self) -> u64 {
        self.0.snapshot.bytes()
    }

    /// [`set_hash`](crate::snapshot::set_hash) of the attributes.
    #[inline]
    pub fn set_hash(self) -> u64 {
        self.0.snapshot.set_hash
    }

    /// Each key with the [`hash48`](crate::snapshot::hash48) of its value, in ascending bytewise
    /// order of the keys, leaving out the keys `ignore_keys` matches.
    #[inline]
    pub fn value_hashes(self) -> impl Iterator<Item = (&'a str, u64)> {
        self.0
            .snapshot
            .attrs
            .iter()
            .filter(|a| !a.ignored)
            .map(|a| (&*a.key, a.hash))
    }

    /// Keys added, removed and modified between consecutive successful polls, since the baseline.
    #[inline]
    pub fn changes(self) -> ChangeCounts {
        self.0.changes
    }

    /// Unix time a change was last seen; 0 before the first one.
    #[inline]
    pub fn last_change(self) -> f64 {
        self.0.last_change
    }

    /// Unix time of the last successful poll.
    #[inline]
    pub fn last_success(self) -> f64 {
        self.0.last_success
    }
}

/// Poll results and random histories for the tests of the store and of what renders it.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::outcome::{ApiError, FailureReason};
    use proptest::prelude::*;

    pub(crate) fn ok(attrs: &[(String, String)]) -> Outcome<Attributes> {
        Outcome::Ok(attrs.to_vec())
    }

    pub(crate) fn api(code: i64) -> Outcome<Attributes> {
        Outcome::Api(ApiError::from_code(code, "").expect("a non-zero code"))
    }

    pub(crate) fn no_answer() -> Outcome<Attributes> {
        Outcome::NoAnswer(FailureReason::Timeout)
    }

    pub(crate) fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Settings giving every group of an app these labels.
    pub(crate) fn with_labels(pairs: &[(&str, &str)]) -> AppSettings {
        let labels = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AppSettings {
            app: GroupSettings {
                labels: Arc::new(labels),
                ignore_keys: None,
            },
            groups: HashMap::new(),
        }
    }

    /// Settings making every group of an app ignore keys matching `patterns`.
    pub(crate) fn ignoring(patterns: &[&str]) -> AppSettings {
        AppSettings {
            app: GroupSettings {
                labels: Arc::default(),
                ignore_keys: Some(Arc::new(
                    Patterns::new(patterns.iter().copied()).expect("valid"),
                )),
            },
            groups: HashMap::new(),
        }
    }

    /// A store with `groups` assigned to app 1.
    pub(crate) fn store_with(groups: &[&str]) -> Store {
        let store = Store::new();
        let ids: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        store.set_assigned(1, &ids, Seeds::DropUnlisted);
        store
    }

    #[derive(Debug, Clone)]
    pub(crate) enum Op {
        Assign(Vec<u8>),
        Poll(u8, Option<Vec<(String, String)>>, i64),
    }

    pub(crate) fn op() -> impl Strategy<Value = Op> {
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

    /// A store of app 7 after `ops`, with group IDs that need escaping in label values.
    pub(crate) fn store_after(ops: Vec<Op>) -> Store {
        let store = Store::new();
        store.set_assigned(7, (0..6).map(gid), Seeds::DropUnlisted);
        for (t, op) in ops.into_iter().enumerate() {
            let t = t as f64;
            match op {
                Op::Assign(gs) => {
                    store.set_assigned(7, gs.into_iter().map(gid), Seeds::DropUnlisted)
                }
                Op::Poll(g, Some(a), _) => {
                    store.apply(7, &gid(g), &ok(&a), t);
                }
                Op::Poll(g, None, -1) => {
                    store.apply(7, &gid(g), &no_answer(), t);
                }
                Op::Poll(g, None, code) => {
                    store.apply(7, &gid(g), &api(code), t);
                }
            }
        }
        store
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::snapshot::{hash48, set_hash};
    use crate::state_file::{StateFileWriter, read_state_file};
    use proptest::prelude::*;

    /// What the view shows of a group's last success, owned.
    #[derive(Debug, Clone, PartialEq)]
    struct Seen {
        attributes: usize,
        bytes: u64,
        set_hash: u64,
        value_hashes: Vec<(String, u64)>,
        changes: ChangeCounts,
        last_change: f64,
        last_success: f64,
    }

    /// Every group the view walks, in its order: `(sdkappid, group_id, error_code, success)`.
    fn walk(store: &Store) -> Vec<(u64, String, Option<i64>, Option<Seen>)> {
        let mut out = Vec::new();
        for app in store.apps() {
            app.for_each_group(|g| {
                let seen = g.success().map(|s| Seen {
                    attributes: s.attributes(),
                    bytes: s.bytes(),
                    set_hash: s.set_hash(),
                    value_hashes: s.value_hashes().map(|(k, h)| (k.to_string(), h)).collect(),
                    changes: s.changes(),
                    last_change: s.last_change(),
                    last_success: s.last_success(),
                });
                out.push((
                    app.sdkappid(),
                    g.group_id().to_string(),
                    g.error_code(),
                    seen,
                ));
            });
        }
        out
    }

    /// Group `id` of app 1: `None` when not assigned, else its error code and success.
    fn group(store: &Store, id: &str) -> Option<(Option<i64>, Option<Seen>)> {
        walk(store)
            .into_iter()
            .find(|(app, g, _, _)| *app == 1 && g == id)
            .map(|(_, _, code, seen)| (code, seen))
    }

    fn success(store: &Store, id: &str) -> Option<Seen> {
        group(store, id).and_then(|(_, s)| s)
    }

    fn counts(added: u64, removed: u64, modified: u64) -> ChangeCounts {
        ChangeCounts {
            added,
            removed,
            modified,
        }
    }

    #[test]
    fn a_group_costs_its_ticket_and_no_more() {
        // Error code, success pointer, newest applied ticket: at 100,000 groups every byte here
        // is 100 kB.
        assert!(
            std::mem::size_of::<Group>() <= 32,
            "{}",
            std::mem::size_of::<Group>()
        );
    }

    #[test]
    fn store_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }

    #[test]
    fn first_success_is_the_baseline_then_changes_are_counted() {
        let store = store_with(&["g"]);
        assert_eq!(
            store.apply(1, "g", &ok(&attrs(&[("a", "1"), ("b", "2")])), 100.0),
            None
        );
        let s = success(&store, "g").expect("a success");
        assert_eq!(s.changes, counts(0, 0, 0));
        assert_eq!(s.last_change, 0.0);
        assert_eq!(s.last_success, 100.0);
        assert_eq!(s.attributes, 2);
        assert_eq!(s.bytes, 2);

        // Same set: nothing counted, last success moves.
        let same = attrs(&[("a", "1"), ("b", "2")]);
        assert_eq!(store.apply(1, "g", &ok(&same), 110.5), None);
        let s = success(&store, "g").expect("a success");
        assert_eq!(s.changes, counts(0, 0, 0));
        assert_eq!(s.last_success, 110.5);

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
        let s = success(&store, "g").expect("a success");
        assert_eq!(s.changes, counts(4, 3, 1));
        assert_eq!(s.last_change, 140.0);
        assert_eq!(s.attributes, 3);
        assert_eq!(s.set_hash, set_hash(&three));
        assert_eq!(
            s.value_hashes,
            [
                ("x".to_string(), hash48(b"1")),
                ("y".to_string(), hash48(b"2")),
                ("z".to_string(), hash48(b"3")),
            ]
        );
        assert_eq!(group(&store, "g").map(|(code, _)| code), Some(Some(0)));
    }

    #[test]
    fn groups_have_no_error_code_until_their_first_poll() {
        let store = store_with(&["g", "h"]);
        assert_eq!(group(&store, "g"), Some((None, None)));
        assert_eq!(store.error_code(1, "g"), None);
        store.apply(1, "g", &no_answer(), 1.0);
        store.apply(1, "h", &api(10002), 1.0);
        assert_eq!(group(&store, "g"), Some((Some(-1), None)));
        assert_eq!(group(&store, "h"), Some((Some(10002), None)));
        assert_eq!(store.error_code(1, "h"), Some(10002));
        assert_eq!(store.error_code(1, "unassigned"), None);
    }

    #[test]
    fn gone_groups_lose_their_success_and_come_back_as_a_fresh_baseline() {
        let store = store_with(&["g"]);
        store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        store.apply(1, "g", &ok(&attrs(&[("a", "2")])), 2.0);
        for code in [10007, 10010, 10015] {
            store.apply(1, "g", &api(code), 3.0);
            assert_eq!(group(&store, "g"), Some((Some(code), None)));
            // Back: a fresh baseline, counters from 0, whatever the set now is.
            let got = store.apply(1, "g", &ok(&attrs(&[("z", "9")])), 4.0);
            assert_eq!(got, None);
            let (code, s) = group(&store, "g").expect("assigned");
            assert_eq!(code, Some(0));
            assert_eq!(s.expect("a success").changes, counts(0, 0, 0));
        }
    }

    #[test]
    fn transient_failures_keep_the_last_success() {
        let store = store_with(&["g"]);
        store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        store.apply(1, "g", &ok(&attrs(&[("a", "2")])), 2.0);
        let before = success(&store, "g").expect("a success");
        for result in [&no_answer(), &api(10002), &api(60007), &api(70001)] {
            store.apply(1, "g", result, 3.0);
            assert_eq!(
                group(&store, "g"),
                Some((Some(result.error_code()), Some(before.clone()))),
                "{result:?}"
            );
        }
        // And the next success diffs against the last successful poll.
        let got = store.apply(1, "g", &ok(&attrs(&[("a", "3")])), 4.0);
        assert_eq!(got.map(|c| c.modified), Some(vec!["a".to_string()]));
    }

    #[test]
    fn the_poll_dispatched_last_wins_whatever_order_the_polls_end_in() {
        let store = store_with(&["g"]);
        let s0 = attrs(&[("a", "0"), ("b", "1")]);
        let s1 = attrs(&[("a", "1"), ("b", "1")]);
        store.apply(1, "g", &ok(&s0), 1.0);
        // Two polls overlap (one retried, or a callback's): the older one sees S0, the newer
        // S1, and the newer one ends first.
        let (older, newer) = (store.ticket(), store.ticket());
        assert!(older < newer);
        let got = store.apply_polled(1, "g", newer, &ok(&s1), 3.0);
        assert_eq!(
            got,
            Applied::Recorded {
                previous: Some(0),
                changes: Some(Changes {
                    modified: vec!["a".into()],
                    ..Changes::default()
                }),
            }
        );
        let generation = store.generation();
        let persisted = store.persisted();
        assert_eq!(
            store.apply_polled(1, "g", older, &ok(&s0), 4.0),
            Applied::Stale
        );
        let s = success(&store, "g").expect("a success");
        assert_eq!(s.changes, counts(0, 0, 1), "the change is counted once");
        assert_eq!(s.set_hash, set_hash(&s1), "the snapshot stays S1");
        assert_eq!(s.value_hashes[0], ("a".to_string(), hash48(b"1")));
        assert_eq!((s.last_change, s.last_success), (3.0, 3.0));
        assert_eq!(store.generation(), generation);
        assert_eq!(store.persisted(), persisted);

        // An older failure after a newer success sets no error code, and an older 10010 does
        // not take the snapshot away.
        for failed in [no_answer(), api(10002), api(10010)] {
            let (older, newer) = (store.ticket(), store.ticket());
            store.apply_polled(1, "g", newer, &ok(&s1), 5.0);
            let got = store.apply_polled(1, "g", older, &failed, 6.0);
            assert_eq!(got, Applied::Stale, "{failed:?}");
            assert_eq!(store.error_code(1, "g"), Some(0), "{failed:?}");
            assert_eq!(success(&store, "g").expect("kept").set_hash, set_hash(&s1));
            assert_eq!(store.persisted(), persisted, "{failed:?}");
        }
        // And the other way round: a newer failure stays when an older success ends after it;
        // the next success diffs against S1 still.
        let (older, newer) = (store.ticket(), store.ticket());
        store.apply_polled(1, "g", newer, &no_answer(), 7.0);
        assert_eq!(
            store.apply_polled(1, "g", older, &ok(&s0), 8.0),
            Applied::Stale
        );
        assert_eq!(store.error_code(1, "g"), Some(-1));
        assert_eq!(
            store.apply_polled(1, "g", store.ticket(), &ok(&s1), 9.0),
            Applied::Recorded {
                previous: Some(-1),
                changes: None
            }
        );
        assert_eq!(
            success(&store, "g").expect("a success").changes,
            counts(0, 0, 1)
        );
    }

    #[test]
    fn a_stale_success_leaves_the_seed_and_a_group_added_again_starts_afresh() {
        let old = store_with(&["g"]);
        old.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        let persisted = old.persisted();
        let store = store_with(&["g"]);
        store.seed_from(persisted.clone());
        let (older, newer) = (store.ticket(), store.ticket());
        store.apply_polled(1, "g", newer, &no_answer(), 2.0);
        assert_eq!(
            store.apply_polled(1, "g", older, &ok(&attrs(&[("a", "2")])), 3.0),
            Applied::Stale
        );
        assert_eq!(store.persisted(), persisted, "the seed waits");
        assert_eq!(store.error_code(1, "g"), Some(-1));
        // The next success is diffed against the seed, once.
        let got = store.apply_polled(1, "g", store.ticket(), &ok(&attrs(&[("a", "2")])), 4.0);
        assert!(
            matches!(
                got,
                Applied::Recorded {
                    changes: Some(_),
                    ..
                }
            ),
            "{got:?}"
        );
        // Removed by a reload and added again: a new entry, which nothing was applied to.
        let before = store.ticket();
        store.apply_polled(1, "g", store.ticket(), &ok(&attrs(&[("a", "3")])), 5.0);
        store.set_assigned(1, ["h"], Seeds::DropUnlisted);
        assert_eq!(
            store.apply_polled(1, "g", store.ticket(), &no_answer(), 6.0),
            Applied::Unassigned
        );
        store.set_assigned(1, ["g", "h"], Seeds::DropUnlisted);
        assert_eq!(
            store.apply_polled(1, "g", before, &ok(&attrs(&[("a", "4")])), 7.0),
            Applied::Recorded {
                previous: None,
                changes: None
            }
        );
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
        let s = success(&store, "g").expect("a success");
        assert_eq!(s.changes, counts(1, 1, 0));
        assert_eq!(s.last_change, 50.0);
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
        let ids: Vec<String> = walk(&store).into_iter().map(|(_, id, _, _)| id).collect();
        assert_eq!(ids, ["g", "new"]);
        assert_eq!(success(&store, "g").expect("kept").changes, counts(0, 0, 1));
        assert_eq!(group(&store, "new"), Some((None, None)));
        // A late result for a dropped group is ignored.
        assert_eq!(store.apply(1, "h", &ok(&[]), 3.0), None);
        assert_eq!(group(&store, "h"), None);
        assert!(!store.persisted().apps[&1].contains_key("h"));

        store.remove_app(1);
        assert!(walk(&store).is_empty());
        assert!(store.apps().is_empty());
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
    fn the_view_walks_apps_then_groups_in_order_across_chunks() {
        let ids: Vec<String> = (0..RENDER_CHUNK * 2 + 7)
            .map(|i| format!("g{i:05}"))
            .collect();
        let store = Store::new();
        store.set_assigned(2, ["b", "a\"", "B", "é"], Seeds::DropUnlisted);
        store.set_assigned(1, &ids, Seeds::DropUnlisted);
        for id in &ids {
            store.apply(1, id, &no_answer(), 1.0);
        }
        let walked: Vec<(u64, String)> = walk(&store)
            .into_iter()
            .map(|(app, id, _, _)| (app, id))
            .collect();
        let mut want: Vec<(u64, String)> = ids.iter().map(|id| (1, id.clone())).collect();
        // Bytewise: "B" (0x42) < "a" (0x61) < "b" < "é" (0xc3..).
        want.extend(["B", "a\"", "b", "é"].map(|id| (2, id.to_string())));
        assert_eq!(walked, want);
    }

    #[test]
    fn persisted_walks_every_chunk_and_keeps_seeds_of_unpolled_groups() {
        // More than two chunks, so the walk resumes after a cursor twice.
        let n = 2 * RENDER_CHUNK + 77;
        let ids: Vec<String> = (0..n).map(|i| format!("@TGS#g{i:05}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let old = store_with(&refs);
        for id in &ids {
            old.apply(1, id, &ok(&attrs(&[("k", id)])), 1.0);
        }
        let all = old.persisted();
        assert_eq!(all.apps[&1].len(), n);
        // A restart: every group seeded, every third polled again; the rest keep their seed.
        let store = Store::new();
        store.seed_from(all.clone());
        store.set_assigned(1, &ids, Seeds::Keep);
        for id in ids.iter().step_by(3) {
            store.apply(1, id, &ok(&attrs(&[("k", "new")])), 2.0);
        }
        let again = store.persisted();
        assert_eq!(again.apps[&1].len(), n, "every chunk, polled or seeded");
        for (i, id) in ids.iter().enumerate() {
            let want = if i % 3 == 0 {
                hash48(b"new")
            } else {
                all.apps[&1][id].attributes[0].hash
            };
            assert_eq!(again.apps[&1][id].attributes[0].hash, want, "{id}");
        }
    }

    /// Counts what [`Store::persist_into`] hands over between two ends of chunks.
    #[derive(Default)]
    struct ChunkSizes {
        open: usize,
        sizes: Vec<usize>,
        apps: Vec<u64>,
    }

    impl StateSink for ChunkSizes {
        fn group(&mut self, sdkappid: u64, _: &str, _: &Snapshot, _: f64) {
            self.open += 1;
            if self.apps.last() != Some(&sdkappid) {
                self.apps.push(sdkappid);
            }
        }

        fn end_of_chunk(&mut self) -> std::io::Result<()> {
            self.sizes.push(std::mem::take(&mut self.open));
            Ok(())
        }
    }

    #[test]
    fn the_state_file_is_streamed_in_chunks_and_reads_back_as_persisted() {
        // Two apps; the first with more than two chunks of groups, a third of them only seeded
        // (a restart before their first poll), so both walks run over several chunks.
        let n = 2 * RENDER_CHUNK + 77;
        let ids: Vec<String> = (0..n).map(|i| format!("@TGS#g{i:05}")).collect();
        let old = Store::new();
        old.set_assigned(1, &ids, Seeds::DropUnlisted);
        for id in &ids {
            old.apply(1, id, &ok(&attrs(&[("k", id), ("\"q\"", "x")])), 1.0);
        }
        let store = Store::new();
        store.seed_from(old.persisted());
        store.set_assigned(1, &ids, Seeds::Keep);
        store.set_assigned(2, ["h", "i"], Seeds::DropUnlisted);
        for id in ids.iter().filter(|id| !id.ends_with('0')) {
            store.apply(1, id, &ok(&attrs(&[("k", "new")])), 2.0);
        }
        store.apply(2, "h", &ok(&attrs(&[("a", "1")])), 3.0);

        let mut chunks = ChunkSizes::default();
        store.persist_into(&mut chunks).expect("counted");
        assert!(
            chunks.sizes.iter().all(|&s| s <= RENDER_CHUNK),
            "{:?}",
            chunks.sizes
        );
        assert!(chunks.sizes.len() > 4, "{:?}", chunks.sizes);
        assert_eq!(chunks.sizes.iter().sum::<usize>(), n + 1);
        assert_eq!(chunks.apps, [1, 2], "each app's groups come together");

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        let mut file = StateFileWriter::create(&path).expect("created");
        store.persist_into(&mut file).expect("streamed");
        file.commit().expect("committed");
        let read = read_state_file(&path).expect("the streamed file reads back");
        let persisted = store.persisted();
        assert_eq!(read, persisted);
        assert_eq!(persisted.apps[&1].len(), n);
        assert_eq!(persisted.apps[&2].len(), 1);
        assert_eq!(
            persisted.apps[&1]["@TGS#g00010"].attributes.len(),
            2,
            "a seed kept"
        );
        assert_eq!(persisted.apps[&1]["@TGS#g00011"].attributes.len(), 1);
    }

    #[test]
    fn persisted_holds_hashes_and_lengths_never_values() {
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
        let text = serde_json::to_string(&persisted).expect("serialisable");
        assert!(
            !text.contains("secret value"),
            "values never reach the state file"
        );
        let g = &persisted.apps[&1]["g"];
        assert_eq!(g.attributes.len(), 1);
        assert_eq!(g.attributes[0].hash, hash48(b"secret value 2"));
        assert_eq!(g.attributes[0].bytes, 14);
        assert_eq!(g.last_change_timestamp_seconds, 7.5);
        assert!(!persisted.apps[&1].contains_key("h"));
    }

    #[test]
    fn ignored_keys_count_in_the_state_but_not_as_changes() {
        let store = store_with(&["g"]);
        store.set_settings(1, ignoring(&["heartbeat", "cursor_.*"]));
        store.apply(1, "g", &ok(&attrs(&[("a", "1"), ("heartbeat", "1")])), 1.0);
        let gen_before = store.generation();
        let only_ignored = attrs(&[("a", "1"), ("heartbeat", "2"), ("cursor_9", "x")]);
        assert_eq!(store.apply(1, "g", &ok(&only_ignored), 2.0), None);
        let s = success(&store, "g").expect("a success");
        assert_eq!(s.changes, counts(0, 0, 0));
        assert_eq!(s.last_change, 0.0, "an ignored change is no change");
        assert_eq!(s.attributes, 3);
        assert_eq!(s.bytes, 3);
        assert_eq!(s.set_hash, set_hash(&only_ignored));
        assert_eq!(s.value_hashes, [("a".to_string(), hash48(b"1"))]);
        assert_ne!(
            store.generation(),
            gen_before,
            "the state file holds every key"
        );
        let p = store.persisted();
        assert_eq!(p.apps[&1]["g"].attributes.len(), 3);
        // A kept key's change still counts.
        let next = attrs(&[("a", "2"), ("heartbeat", "3")]);
        let got = store.apply(1, "g", &ok(&next), 3.0).expect("a change");
        assert_eq!(
            (got.added, got.removed, got.modified),
            (vec![], vec![], vec!["a".to_string()])
        );
    }

    #[test]
    fn a_reload_that_changes_ignore_keys_keeps_the_counters() {
        let store = store_with(&["g"]);
        store.apply(1, "g", &ok(&attrs(&[("a", "1"), ("hb", "1")])), 1.0);
        store.apply(1, "g", &ok(&attrs(&[("a", "1"), ("hb", "2")])), 2.0);
        assert_eq!(
            success(&store, "g").expect("a success").changes,
            counts(0, 0, 1)
        );
        store.set_settings(1, ignoring(&["hb"]));
        // The kept snapshot is flagged anew: hb's value hash goes at once, and its removal at
        // the next poll is not counted.
        assert_eq!(success(&store, "g").expect("kept").value_hashes.len(), 1);
        assert_eq!(store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 3.0), None);
        let s = success(&store, "g").expect("a success");
        assert_eq!(s.changes, counts(0, 0, 1));
        store.apply(1, "g", &ok(&attrs(&[("a", "1"), ("hb", "3")])), 3.5);
        // And back: counted again.
        store.set_settings(1, AppSettings::default());
        assert!(
            store
                .apply(1, "g", &ok(&attrs(&[("a", "1"), ("hb", "4")])), 4.0)
                .is_some()
        );
        assert_eq!(
            success(&store, "g").expect("a success").changes,
            counts(0, 0, 2)
        );
    }

    #[test]
    fn a_seed_is_diffed_without_the_ignored_keys() {
        let old = store_with(&["g"]);
        old.apply(
            1,
            "g",
            &ok(&attrs(&[("a", "1"), ("hb", "1"), ("hb2", "1")])),
            1.0,
        );
        let store = Store::new();
        store.seed_from(old.persisted());
        store.set_settings(1, ignoring(&["hb.*"]));
        store.set_assigned(1, ["g"], Seeds::DropUnlisted);
        // hb modified and hb2 removed while down: neither counts.
        assert_eq!(
            store.apply(1, "g", &ok(&attrs(&[("a", "1"), ("hb", "9")])), 5.0),
            None
        );
        let got = store.apply(1, "g", &ok(&attrs(&[("a", "2"), ("hb", "9")])), 6.0);
        assert_eq!(got.map(|c| c.modified), Some(vec!["a".to_string()]));
    }

    #[test]
    fn settings_go_per_group_where_a_group_has_its_own() {
        let mut settings = with_labels(&[("team", "rooms")]);
        let own = with_labels(&[("team", "rooms"), ("page", "true")]).app;
        settings.groups.insert("h".into(), own.clone());
        assert_eq!(settings.for_group("h"), &own);
        assert_eq!(settings.for_group("g"), &settings.app);
        let store = store_with(&["g", "h"]);
        store.set_settings(1, settings);
        let mut seen = Vec::new();
        for app in store.apps() {
            app.for_each_group(|g| seen.push((g.group_id().to_string(), g.labels().len())));
        }
        assert_eq!(seen, [("g".to_string(), 1), ("h".to_string(), 2)]);
    }

    proptest! {
        #[test]
        fn the_state_file_of_any_state_reads_back_to_itself(ops in proptest::collection::vec(op(), 0..40)) {
            let p = store_after(ops).persisted();
            let bytes = serde_json::to_vec(&p).expect("serialisable");
            prop_assert_eq!(crate::state_file::parse_state(&bytes).ok(), Some(p));
        }
    }
}
