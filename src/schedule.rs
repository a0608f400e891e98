//! When each group is due.
//!
//! Every group is polled once per its interval at a fixed *phase*: the wall-clock instants
//! `t` with `t ≡ phase (mod interval)`. Groups sharing an interval get phases spread evenly over
//! it, ordered by a hash of their ID, so a cycle's requests are evenly spaced (no burst at start,
//! after a reload, or after a stall) and every replica and every restart agrees on the order.
//! Adding or removing one group among N shifts the others' phases by at most `interval / N`.
//!
//! A missed slot is never replayed: after a stall the group's next slot is the first one in the
//! future. When the app's quota cannot serve every group on time, dispatch falls behind and due
//! groups go out oldest-first, so the cycle stretches evenly for all of them (no starvation).
//!
//! The scheduler is plain data driven by [`tokio::time::Instant`]; the per-app loop that sleeps
//! on it lives in [`crate::daemon`]. Tests run it on tokio's paused clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

use crate::shard::fnv1a64;

/// A group to poll and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub id: Arc<str>,
    pub interval: Duration,
}

/// Ties the monotonic clock to the wall clock once, so phases are wall-clock aligned (stable
/// across restarts and replicas) while sleeping uses tokio's clock.
#[derive(Debug, Clone, Copy)]
pub struct Anchor {
    instant: Instant,
    unix_nanos: u128,
}

impl Anchor {
    pub fn now() -> Anchor {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Anchor::at(Instant::now(), unix)
    }

    pub fn at(instant: Instant, unix: Duration) -> Anchor {
        Anchor {
            instant,
            unix_nanos: unix.as_nanos(),
        }
    }

    fn unix_nanos(&self, at: Instant) -> u128 {
        // Instants before the anchor only occur in tests that build one in the past.
        match at.checked_duration_since(self.instant) {
            Some(d) => self.unix_nanos + d.as_nanos(),
            None => self
                .unix_nanos
                .saturating_sub(self.instant.duration_since(at).as_nanos()),
        }
    }

    /// The first instant `>= from` whose wall-clock time is `phase` modulo `interval`.
    pub fn next_slot(&self, from: Instant, interval: Duration, phase: Duration) -> Instant {
        let i = interval.as_nanos().max(1);
        let now = self.unix_nanos(from);
        let offset = (now + i - phase.as_nanos() % i) % i; // how far past the last slot we are
        let wait = if offset == 0 { 0 } else { i - offset };
        from + Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
    }
}

/// Evenly spread phases: within each interval class, rank by ID hash and space by `interval/N`.
pub fn phases(groups: &[GroupSpec]) -> HashMap<Arc<str>, Duration> {
    let mut classes: HashMap<Duration, Vec<(u64, &Arc<str>)>> = HashMap::new();
    for g in groups {
        classes
            .entry(g.interval)
            .or_default()
            .push((fnv1a64(g.id.as_bytes()), &g.id));
    }
    let mut out = HashMap::with_capacity(groups.len());
    for (interval, mut members) in classes {
        members.sort_unstable();
        let n = members.len() as u128;
        // Offset each class by a hash of its interval so classes do not all start their cycle
        // at the same wall-clock instant; not by anything of the members, which would move
        // every phase when one group comes or goes.
        let base =
            u128::from(fnv1a64(&interval.as_nanos().to_le_bytes())) % interval.as_nanos().max(1);
        for (rank, (_, id)) in members.into_iter().enumerate() {
            let nanos =
                (base + interval.as_nanos() * rank as u128 / n) % interval.as_nanos().max(1);
            out.insert(
                Arc::clone(id),
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(0)),
            );
        }
    }
    out
}

#[derive(Debug)]
struct Entry {
    interval: Duration,
    phase: Duration,
    due: Instant,
    generation: u64,
}

/// The due times of one app's groups.
#[derive(Debug)]
pub struct Scheduler {
    anchor: Anchor,
    entries: HashMap<Arc<str>, Entry>,
    /// Min-heap of (due, generation, id). Stale items (rescheduled or removed groups) are
    /// skipped on pop by comparing generations, which is cheaper than removing them eagerly.
    heap: BinaryHeap<Reverse<(Instant, u64, Arc<str>)>>,
    next_generation: u64,
}

impl Scheduler {
    pub fn new(anchor: Anchor) -> Scheduler {
        Scheduler {
            anchor,
            entries: HashMap::new(),
            heap: BinaryHeap::new(),
            next_generation: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Replaces the set of groups. A new group, or one whose phase or interval moved, is due at
    /// the first slot of its phase at or after `now`, so a reload spreads the groups evenly
    /// again instead of bunching the new ones together (its one interval around the reload may
    /// be shorter or longer than usual). A staying group that is already due keeps its slot: it
    /// was waiting for the rate limiter, and a reload must not skip it, or a stream of reloads
    /// would starve polling. A staying group with the same phase keeps its slot too.
    pub fn set_groups(&mut self, groups: &[GroupSpec], now: Instant) {
        let phases = phases(groups);
        let mut entries = HashMap::with_capacity(groups.len());
        self.heap.clear();
        for g in groups {
            let phase = phases[&g.id];
            let due = match self.entries.get(&g.id) {
                Some(old) if old.due <= now => old.due,
                Some(old) if old.interval == g.interval && old.phase == phase => old.due,
                _ => self.anchor.next_slot(now, g.interval, phase),
            };
            self.next_generation += 1;
            let generation = self.next_generation;
            self.heap
                .push(Reverse((due, generation, Arc::clone(&g.id))));
            entries.insert(
                Arc::clone(&g.id),
                Entry {
                    interval: g.interval,
                    phase,
                    due,
                    generation,
                },
            );
        }
        self.entries = entries;
    }

    /// The earliest due time, if any group is scheduled.
    pub fn next_due(&mut self) -> Option<Instant> {
        while let Some(Reverse((due, generation, id))) = self.heap.peek() {
            match self.entries.get(id) {
                Some(e) if e.generation == *generation => return Some(*due),
                _ => {
                    self.heap.pop();
                }
            }
        }
        None
    }

    /// Takes one group whose slot is at or before `now`, with the slot it was due at, and
    /// schedules its next slot: one interval later, or the first slot after `now` if that
    /// one has passed too (a missed tick is delayed, never replayed).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Arc<str>, Instant)> {
        let due = self.next_due()?;
        if due > now {
            return None;
        }
        let Reverse((due, _, id)) = self.heap.pop().expect("next_due saw an item");
        let entry = self
            .entries
            .get_mut(&id)
            .expect("next_due checked the entry exists");
        let mut next = due + entry.interval;
        if next <= now {
            next = self.anchor.next_slot(now, entry.interval, entry.phase);
            if next <= now {
                next += entry.interval;
            }
        }
        self.next_generation += 1;
        entry.due = next;
        entry.generation = self.next_generation;
        self.heap
            .push(Reverse((next, entry.generation, Arc::clone(&id))));
        Some((id, due))
    }

    /// Requests per second the groups need: `Σ 1/interval`.
    pub fn demand(&self) -> f64 {
        self.entries
            .values()
            .map(|e| 1.0 / e.interval.as_secs_f64().max(1e-3))
            .sum()
    }
}

impl Scheduler {
    /// Whether the group is scheduled.
    pub fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    /// Adds one group without re-phasing the others (a group created between two listings):
    /// its phase is where its ID hash falls in the interval, about where [`phases`] would rank
    /// it. The next [`Scheduler::set_groups`] spreads every group evenly again.
    pub fn insert(&mut self, group: &GroupSpec, now: Instant) {
        if self.entries.contains_key(&group.id) {
            return;
        }
        let i = group.interval.as_nanos().max(1);
        let phase = Duration::from_nanos(
            u64::try_from(u128::from(fnv1a64(group.id.as_bytes())) % i).unwrap_or(0),
        );
        let due = self.anchor.next_slot(now, group.interval, phase);
        self.next_generation += 1;
        let generation = self.next_generation;
        self.heap
            .push(Reverse((due, generation, Arc::clone(&group.id))));
        self.entries.insert(
            Arc::clone(&group.id),
            Entry {
                interval: group.interval,
                phase,
                due,
                generation,
            },
        );
    }
}

/// How long a callback-triggered poll of a group shuts out the next one (SPEC "Callbacks": at
/// most one poll of a group per second).
pub const PUSH_SPACING: Duration = Duration::from_secs(1);

/// Groups made due now by callbacks, ahead of the regular schedule (which carries on).
///
/// The first callback for a group makes it due at once; callbacks that arrive within
/// [`PUSH_SPACING`] after that poll started fold into one more poll at the end of that second.
/// Tencent allows 5 writes a second to a group, so a hot group costs at most one request a
/// second and a change is still seen within a second.
#[derive(Debug, Default)]
pub struct Urgent {
    /// Due now, first come first served.
    queue: std::collections::VecDeque<Arc<str>>,
    groups: HashMap<Arc<str>, PushState>,
    /// Folded callbacks' polls, at the end of the second after the previous push poll.
    deferred: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct PushState {
    queued: bool,
    deferred: bool,
    last_start: Option<Instant>,
}

impl Urgent {
    /// A callback for `id` at `now`.
    pub fn push(&mut self, id: Arc<str>, now: Instant) {
        self.prune(now);
        let state = self.groups.entry(Arc::clone(&id)).or_default();
        if state.queued || state.deferred {
            return;
        }
        match state.last_start {
            Some(started) if now < started + PUSH_SPACING => {
                state.deferred = true;
                self.deferred.push(Reverse((started + PUSH_SPACING, id)));
            }
            _ => {
                state.queued = true;
                self.queue.push_back(id);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// When the earliest folded poll becomes due.
    pub fn next_deferred(&self) -> Option<Instant> {
        self.deferred.peek().map(|Reverse((at, _))| *at)
    }

    /// Queues the folded polls due at `now`.
    pub fn release(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.deferred.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, id)) = self.deferred.pop().expect("peeked");
            if let Some(state) = self.groups.get_mut(&id)
                && state.deferred
            {
                state.deferred = false;
                state.queued = true;
                self.queue.push_back(id);
            }
        }
    }

    /// The next group to poll now, its poll starting at `now`.
    pub fn pop(&mut self, now: Instant) -> Option<Arc<str>> {
        while let Some(id) = self.queue.pop_front() {
            if let Some(state) = self.groups.get_mut(&id)
                && state.queued
            {
                state.queued = false;
                state.last_start = Some(now);
                return Some(id);
            }
        }
        None
    }

    /// Forgets groups the instance no longer polls.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.groups.retain(|id, _| keep(id));
        self.queue.retain(|id| keep(id));
        // Stale heap entries are skipped by `release` (no state, or not deferred).
    }

    /// Drops what no longer matters: groups with nothing pending whose last push poll is over
    /// a second old. Amortised: only when the map has grown.
    fn prune(&mut self, now: Instant) {
        if self.groups.len() < 1024 || self.groups.len() < 4 * self.queue.len() + 1024 {
            return;
        }
        self.groups.retain(|_, s| {
            s.queued || s.deferred || s.last_start.is_some_and(|t| now < t + PUSH_SPACING)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(n: usize, interval: Duration) -> Vec<GroupSpec> {
        (0..n)
            .map(|i| GroupSpec {
                id: Arc::from(format!("@TGS#g{i:05}")),
                interval,
            })
            .collect()
    }

    fn anchor() -> Anchor {
        // 1_699_999_980 s is a multiple of 10 and 60: slot arithmetic is easy to read.
        Anchor::at(Instant::now(), Duration::from_secs(1_699_999_980))
    }

    #[tokio::test(start_paused = true)]
    async fn next_slot_is_wall_clock_aligned() {
        let a = anchor();
        let t0 = Instant::now();
        let i = Duration::from_secs(60);
        assert_eq!(a.next_slot(t0, i, Duration::ZERO), t0);
        assert_eq!(
            a.next_slot(t0, i, Duration::from_secs(5)),
            t0 + Duration::from_secs(5)
        );
        let later = t0 + Duration::from_secs(7);
        assert_eq!(
            a.next_slot(later, i, Duration::from_secs(5)),
            t0 + Duration::from_secs(65)
        );
    }

    #[test]
    fn phases_are_even_and_stable() {
        let i = Duration::from_secs(60);
        let groups = specs(600, i);
        let p = phases(&groups);
        let mut sorted: Vec<Duration> = p.values().copied().collect();
        sorted.sort();
        // 600 groups over 60 s: one every 100 ms, modulo the class offset's wrap point.
        let gaps: Vec<Duration> = sorted.windows(2).map(|w| w[1] - w[0]).collect();
        let regular = gaps
            .iter()
            .filter(|g| g.abs_diff(Duration::from_millis(100)) < Duration::from_millis(1))
            .count();
        assert!(regular >= 598, "{regular}");
        assert_eq!(p, phases(&groups), "deterministic");
        // One more group moves every phase by at most interval/N.
        let mut more = groups.clone();
        more.push(GroupSpec {
            id: Arc::from("@TGS#extra"),
            interval: i,
        });
        let q = phases(&more);
        let moved = groups
            .iter()
            .filter(|g| {
                let d = p[&g.id].abs_diff(q[&g.id]);
                d > Duration::from_millis(101) && d < i - Duration::from_millis(101)
            })
            .count();
        assert!(moved <= 1, "{moved} groups jumped");
    }

    #[tokio::test(start_paused = true)]
    async fn one_cycle_is_evenly_spaced_without_burst() {
        let interval = Duration::from_secs(10);
        let mut s = Scheduler::new(anchor());
        let start = Instant::now();
        s.set_groups(&specs(100, interval), start);
        let mut times = Vec::new();
        while times.len() < 300 {
            let due = s.next_due().unwrap();
            tokio::time::sleep_until(due).await;
            while let Some((_, due)) = s.pop_due(Instant::now()) {
                times.push(due - start);
            }
        }
        // No 1-second window holds more than 10 polls (100 groups / 10 s), at start included.
        for w in 0..30 {
            let lo = Duration::from_secs(w);
            let hi = lo + Duration::from_secs(1);
            let n = times.iter().filter(|t| **t >= lo && **t < hi).count();
            assert!(n <= 11, "window {w}: {n}");
        }
        assert!(times[0] < interval);
        // Each group is polled once per interval.
        let mut s2 = Scheduler::new(anchor());
        let start = Instant::now();
        s2.set_groups(&specs(3, interval), start);
        let mut seen: HashMap<Arc<str>, Vec<Instant>> = HashMap::new();
        let end = start + Duration::from_secs(35);
        while let Some(due) = s2.next_due().filter(|d| *d < end) {
            tokio::time::sleep_until(due).await;
            let (id, at) = s2.pop_due(Instant::now()).unwrap();
            seen.entry(id).or_default().push(at);
        }
        for (_, at) in seen {
            for w in at.windows(2) {
                assert_eq!(w[1] - w[0], interval);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_is_not_replayed() {
        let interval = Duration::from_secs(10);
        let mut s = Scheduler::new(anchor());
        let start = Instant::now();
        s.set_groups(&specs(10, interval), start);
        // Nothing runs for 35 s: 3.5 cycles are missed.
        tokio::time::advance(Duration::from_secs(35)).await;
        let mut burst = 0;
        while s.pop_due(Instant::now()).is_some() {
            burst += 1;
        }
        assert_eq!(
            burst, 10,
            "each late group goes out once, not once per missed slot"
        );
        // And then the groups return to their phases within one interval.
        let next = s.next_due().unwrap();
        assert!(next > Instant::now() && next <= Instant::now() + interval);
    }

    #[tokio::test(start_paused = true)]
    async fn overload_stretches_evenly() {
        // 100 groups every 10 s need 10/s; serve only 5/s: every group is still polled,
        // about every 20 s, none starves.
        let interval = Duration::from_secs(10);
        let mut s = Scheduler::new(anchor());
        let start = Instant::now();
        s.set_groups(&specs(100, interval), start);
        let mut polls: HashMap<Arc<str>, usize> = HashMap::new();
        let mut now = start;
        for _ in 0..400 {
            // One dispatch every 200 ms.
            now += Duration::from_millis(200);
            tokio::time::advance(Duration::from_millis(200)).await;
            if let Some((id, _)) = s.pop_due(now) {
                *polls.entry(id).or_default() += 1;
            }
        }
        assert_eq!(polls.len(), 100);
        let min = polls.values().min().unwrap();
        let max = polls.values().max().unwrap();
        assert!(max - min <= 1, "min {min} max {max}");
        assert!((s.demand() - 10.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_due_groups_due_and_staying_slots_where_they_were() {
        let interval = Duration::from_secs(1);
        let mut s = Scheduler::new(anchor());
        let groups = specs(3, interval);
        s.set_groups(&groups, Instant::now());
        let first = s.next_due().unwrap();
        // The first group is due and waits for the rate limiter when the reload comes.
        tokio::time::sleep_until(first + Duration::from_millis(5)).await;
        s.set_groups(&groups, Instant::now());
        assert_eq!(s.next_due(), Some(first), "a due group stays due");
        let (_, due) = s.pop_due(Instant::now()).expect("still due");
        assert_eq!(due, first);
        // The others keep their slots through any number of reloads.
        let before: Vec<Instant> = s.entries.values().map(|e| e.due).collect();
        for _ in 0..100 {
            s.set_groups(&groups, Instant::now());
        }
        let mut after: Vec<Instant> = s.entries.values().map(|e| e.due).collect();
        let mut before = before;
        before.sort();
        after.sort();
        assert_eq!(before, after);
    }

    #[tokio::test(start_paused = true)]
    async fn reload_adds_and_removes_without_burst() {
        let interval = Duration::from_secs(10);
        let mut s = Scheduler::new(anchor());
        let start = Instant::now();
        let mut groups = specs(50, interval);
        s.set_groups(&groups, start);
        tokio::time::advance(Duration::from_secs(12)).await;
        while s.pop_due(Instant::now()).is_some() {}
        // Reload: drop 10, add 50.
        groups.drain(0..10);
        groups.extend((0..50).map(|i| GroupSpec {
            id: Arc::from(format!("@TGS#new{i}")),
            interval,
        }));
        let reload_at = Instant::now();
        s.set_groups(&groups, reload_at);
        assert_eq!(s.len(), 90);
        let mut times = Vec::new();
        let mut ids = std::collections::HashSet::new();
        while times.len() < 90 {
            let due = s.next_due().unwrap();
            tokio::time::sleep_until(due).await;
            while let Some((id, due)) = s.pop_due(Instant::now()) {
                times.push(due - reload_at);
                ids.insert(id);
            }
        }
        for w in 0..10 {
            let lo = Duration::from_secs(w);
            let n = times
                .iter()
                .filter(|t| **t >= lo && **t < lo + Duration::from_secs(1))
                .count();
            assert!(n <= 11, "window {w}: {n}");
        }
        assert_eq!(
            ids.len(),
            90,
            "every group once in the first cycle after reload"
        );
        assert!(
            !ids.iter().any(|id| id.as_ref() == "@TGS#g00000"),
            "removed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn callbacks_make_at_most_one_poll_a_second() {
        let mut u = Urgent::default();
        let g: Arc<str> = Arc::from("@TGS#hot");
        let t0 = Instant::now();
        u.push(Arc::clone(&g), t0);
        assert_eq!(
            u.pop(t0).as_deref(),
            Some("@TGS#hot"),
            "the first goes at once"
        );
        assert!(u.pop(t0).is_none());
        // 20 more within the second after that poll started fold into one, at its end.
        for i in 1..=20 {
            u.push(Arc::clone(&g), t0 + Duration::from_millis(45 * i));
        }
        assert!(u.is_empty());
        assert_eq!(u.next_deferred(), Some(t0 + PUSH_SPACING));
        u.release(t0 + Duration::from_millis(999));
        assert!(u.is_empty());
        let t1 = t0 + PUSH_SPACING;
        u.release(t1);
        assert_eq!(u.pop(t1).as_deref(), Some("@TGS#hot"));
        assert!(u.pop(t1).is_none());
        assert_eq!(u.next_deferred(), None);
        // Quiet for a second: the next callback goes at once again.
        let t2 = t1 + Duration::from_millis(1500);
        u.push(Arc::clone(&g), t2);
        assert_eq!(u.pop(t2).as_deref(), Some("@TGS#hot"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_callback_while_queued_folds_and_groups_are_independent() {
        let mut u = Urgent::default();
        let now = Instant::now();
        for id in ["a", "b", "a", "c", "b"] {
            u.push(Arc::from(id), now);
        }
        let order: Vec<String> = std::iter::from_fn(|| u.pop(now).map(|s| s.to_string())).collect();
        assert_eq!(order, ["a", "b", "c"]);
        u.push(Arc::from("a"), now);
        u.retain(|id| id != "a");
        assert!(u.pop(now).is_none(), "a group that left is not polled");
        assert_eq!(u.next_deferred(), Some(now + PUSH_SPACING));
        u.release(now + PUSH_SPACING);
        assert!(u.pop(now + PUSH_SPACING).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_inserted_group_is_scheduled_within_its_interval() {
        let interval = Duration::from_secs(10);
        let mut s = Scheduler::new(anchor());
        let now = Instant::now();
        s.set_groups(&specs(5, interval), now);
        let new = GroupSpec {
            id: Arc::from("@TGS#created"),
            interval,
        };
        s.insert(&new, now);
        assert!(s.contains("@TGS#created"));
        assert_eq!(s.len(), 6);
        let mut seen = false;
        while let Some(due) = s.next_due().filter(|d| *d <= now + interval) {
            let (id, _) = s.pop_due(due).unwrap();
            seen |= id.as_ref() == "@TGS#created";
        }
        assert!(seen, "polled within one interval");
    }
}
