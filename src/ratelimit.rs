//! The per-app request quota: requests evenly spaced, with no burst allowance (SPEC "Behaviour":
//! "no 1-second window holds more than `rate_limit` requests to an app, retries included").
//!
//! Written by hand rather than taken from `governor` (STYLE principle 9 prefers a crate) because
//! this limiter needs three things governor does not give together:
//! - tokio's clock (`tokio::time::Instant` and `sleep_until`), so the scheduler and retry tests
//!   run on the paused clock; governor's clocks are its own (`quanta`/`std`) and do not pause;
//! - a dynamic slow-down after a rate-limit answer from the API, and a rate change on reload,
//!   without rebuilding the limiter and losing the reserved-slot clock;
//! - strict even spacing with *no* burst after idle: governor's GCRA always allows a burst of at
//!   least one cell on top of the steady rate after idle time, which lets a 1-second window hold
//!   `rate + 1` requests.
//!
//! The algorithm is a reserved-slot clock: each caller takes the slot `max(now, next)` and moves
//! `next` one spacing further. Idle time is never banked, so there is no catch-up burst.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Spacing is `1/rate` stretched by this factor, so that `rate + 1` consecutive requests span
/// 1% more than a second. Sleeps wake up to a millisecond late (tokio's timer resolution) and
/// requests cross the network with jitter (a new connection's handshake, a busy core); without
/// the margin, a request that arrived late and the one `rate` slots after it that arrived on
/// time could land in one server-side 1-second window. Whatever the rate, this tolerates 20 ms
/// of differential jitter, for 1% of throughput. (2% was tried first: at the quota's exact
/// capacity, 12,000 groups every 60 s at 200/s, it made every group's cycle 1.2 s late per cycle,
/// over the schedule benchmark's 1 s jitter target.)
pub const JITTER_MARGIN: f64 = 1.01;

/// How late a caller may wake before the clock re-bases. Slots late by up to this shift a
/// second's worth of slots by as much: it must stay well inside the `JITTER_MARGIN` slack
/// (10 ms), and above tokio's 1 ms timer resolution so that ordinary wake-ups never count.
pub const LATE_TOLERANCE: Duration = Duration::from_millis(3);

/// The tolerance at low rates, where slots are at least [`SLOW_SPACING`] apart. There the 1%
/// margin is only a few milliseconds per spacing (3.4 ms at 3/s), and three slots each late by
/// up to 3 ms ate it (a 60007 from the fake in CI at 3/s); a re-base costs little there, since a
/// millisecond is under 2% of a spacing.
pub const SLOW_LATE_TOLERANCE: Duration = Duration::from_millis(1);

/// Spacings from this long up use [`SLOW_LATE_TOLERANCE`] (rates up to 20/s).
pub const SLOW_SPACING: Duration = Duration::from_millis(50);

fn tolerance(spacing: Duration) -> Duration {
    if spacing >= SLOW_SPACING {
        SLOW_LATE_TOLERANCE
    } else {
        LATE_TOLERANCE
    }
}

/// The lowest rate accepted; lower (or non-finite) rates are raised to it. Config validation
/// rejects such values first; this only keeps the arithmetic finite.
const MIN_RATE: f64 = 0.001;

/// A slot handed out by a limiter: the right to send one request now.
#[derive(Debug)]
pub struct Slot {
    /// The instant the slot stands for on the limiter's grid.
    at: Instant,
}

/// An evenly spacing rate limiter. `Send + Sync`; share it through `Arc`.
#[derive(Debug)]
pub struct RateLimiter {
    inner: Mutex<Inner>,
    /// Held by the one caller currently waiting for its slot.
    turn: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Inner {
    /// `JITTER_MARGIN / rate`.
    spacing: Duration,
    /// The earliest instant the next slot may be handed out.
    next: Option<Instant>,
    /// While a slow-down is active: the factor applied to `spacing`, and until when.
    slowed: Option<(f64, Instant)>,
}

impl Inner {
    /// The spacing that applies to a slot taken at `at`.
    fn spacing_at(&self, at: Instant) -> Duration {
        match self.slowed {
            Some((factor, until)) if at < until => self.spacing.mul_f64(factor),
            _ => self.spacing,
        }
    }
}

fn spacing_for(per_second: f64) -> Duration {
    let rate = if per_second.is_finite() && per_second >= MIN_RATE {
        per_second
    } else {
        MIN_RATE
    };
    Duration::from_secs_f64(JITTER_MARGIN / rate)
}

impl RateLimiter {
    /// A limiter handing out `per_second` slots a second, `JITTER_MARGIN / per_second` apart.
    pub fn new(per_second: f64) -> Self {
        RateLimiter {
            inner: Mutex::new(Inner {
                spacing: spacing_for(per_second),
                next: None,
                slowed: None,
            }),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The lock is never held across a panic-prone call, so poisoning cannot leave `Inner`
        // half-updated; carry on with its value.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the next free slot. Callers are served in the order they arrive, one spacing
    /// apart. Cancel-safe: a slot is taken only when it is handed out, so a caller dropped
    /// while waiting (the app's owner turning to a reload) costs no slot and hands its turn on.
    pub async fn acquire(&self) -> Slot {
        let _turn = self.turn.lock().await;
        loop {
            // Re-read after every wake: a slow-down or a rate change may have moved the slot.
            if let Some(slot) = self.take_if_due(Instant::now()) {
                return slot;
            }
            let at = self.lock().next.expect("a slot in the future was seen");
            tokio::time::sleep_until(at).await;
        }
    }

    /// Takes the slot when it is due at `now`; `None` when it lies in the future.
    fn take_if_due(&self, now: Instant) -> Option<Slot> {
        let mut inner = self.lock();
        // A grid slot passed by less than the tolerance is still taken (the timer woke the
        // caller a little late); past that, idle time is not banked and the grid re-bases.
        let slot = match inner.next {
            Some(next) if next > now => return None,
            Some(next) if next + tolerance(inner.spacing) >= now => next,
            _ => now,
        };
        let spacing = inner.spacing_at(slot);
        inner.next = Some(slot + spacing);
        if let Some((_, until)) = inner.slowed
            && slot >= until
        {
            inner.slowed = None;
        }
        Some(Slot { at: slot })
    }

    /// Called just before the request of `slot` leaves. A request that leaves later than the
    /// tolerance after its slot (its task waited for the thread, a busy core) re-bases the grid
    /// from now, as a late wake-up does: otherwise the next slots, on time, would follow it
    /// closer than one spacing at the server.
    pub fn sending(&self, slot: &Slot) {
        let now = Instant::now();
        let mut inner = self.lock();
        if now <= slot.at + tolerance(inner.spacing) {
            return;
        }
        let rebased = now + inner.spacing_at(now);
        if inner.next.is_none_or(|next| next < rebased) {
            inner.next = Some(rebased);
        }
    }

    /// Changes the rate (on reload). Slots already handed out keep their times; the next one
    /// follows the latest at the new spacing.
    pub fn set_rate(&self, per_second: f64) {
        self.lock().spacing = spacing_for(per_second);
    }

    /// Stretches the spacing by `factor` for the next `for_`, after the API answered with a
    /// rate-limit code. The next slot is pushed out to one slowed spacing from now, so the
    /// requests already queued do not keep hammering at the old pace. A later call replaces an
    /// earlier one's factor and end.
    pub fn slow_down(&self, factor: f64, for_: Duration) {
        let factor = if factor.is_finite() && factor >= 1.0 {
            factor
        } else {
            1.0
        };
        let mut inner = self.lock();
        let now = Instant::now();
        inner.slowed = Some((factor, now + for_));
        let pushed = now + inner.spacing.mul_f64(factor);
        if inner.next.is_none_or(|next| next < pushed) {
            inner.next = Some(pushed);
        }
    }

    /// The effective rate now, in requests per second, slow-down and margin included.
    pub fn rate(&self) -> f64 {
        let inner = self.lock();
        1.0 / inner.spacing_at(Instant::now()).as_secs_f64()
    }

    /// The effective spacing between two slots now.
    pub fn spacing(&self) -> Duration {
        let inner = self.lock();
        inner.spacing_at(Instant::now())
    }
}

/// The slot grid of list calls: [`LIST_SLOT`] apart on the wall clock.
pub const LIST_SLOT: Duration = Duration::from_millis(1100);

/// How late a list call may still leave in its slot; later, it waits for its next slot.
pub const LIST_SLOT_GRACE: Duration = Duration::from_millis(50);

/// When this replica may call `get_appid_group_list`: Tencent allows 1 call a second per app,
/// counted across every replica (SPEC "Discovery").
///
/// The wall clock is cut into slots [`LIST_SLOT`] apart, and shard `k` of `N` lists only in
/// slots whose number is `k` modulo `N`, within [`LIST_SLOT_GRACE`] of the slot's start. So any
/// two list calls of the app, from one replica or from two, leave at least
/// `LIST_SLOT - LIST_SLOT_GRACE` (1.05 s) apart, as long as the replicas' clocks agree within
/// those 50 ms (NTP keeps them within a few). Each replica lists once per `N` slots: one page of
/// 10,000 groups every 3.3 s with 3 shards.
///
/// Written here rather than with a generic limiter because the slots belong to the wall clock
/// shared by every replica, not to one process's request history.
#[derive(Debug)]
pub struct ListSlots {
    shard: crate::shard::Shard,
    anchor: crate::schedule::Anchor,
    /// The slot last handed out, and the caller waiting for the next one.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl ListSlots {
    pub fn new(shard: crate::shard::Shard, anchor: crate::schedule::Anchor) -> ListSlots {
        ListSlots {
            shard,
            anchor,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Waits for this replica's next list slot. Cancel-safe: a slot is used only when handed out.
    pub async fn acquire(&self) -> Slot {
        let mut last = self.last.lock().await;
        let total = self.shard.total.max(1);
        let cycle = LIST_SLOT * total;
        let phase = LIST_SLOT * self.shard.ordinal.min(total - 1);
        loop {
            let now = Instant::now();
            // A slot that began less than the grace ago still counts; one already used does not.
            let mut from = now.checked_sub(LIST_SLOT_GRACE).unwrap_or(now);
            if let Some(used) = *last {
                from = from.max(used + cycle / 2);
            }
            let slot = self.anchor.next_slot(from, cycle, phase);
            if slot <= now {
                *last = Some(slot);
                return Slot { at: slot };
            }
            tokio::time::sleep_until(slot).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Acquires `n` slots one after the other and returns the instants they were granted.
    async fn grants(limiter: &RateLimiter, n: usize) -> Vec<Instant> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            limiter.acquire().await;
            out.push(Instant::now());
        }
        out
    }

    /// Tokio's timer fires on whole milliseconds, rounding deadlines up: a grant lands in
    /// `[slot, slot + 1ms]`.
    fn assert_granted_at(granted: Instant, slot: Instant) {
        assert!(
            granted >= slot && granted <= slot + Duration::from_millis(1),
            "granted {:?} after the slot",
            granted.checked_duration_since(slot)
        );
    }

    /// Grants follow each other one spacing apart (give or take the timer's rounding).
    fn assert_evenly_spaced(times: &[Instant], spacing: Duration) {
        for (i, t) in times.iter().enumerate() {
            assert_granted_at(*t, times[0] + spacing * i as u32);
        }
    }

    /// The most grants any half-open window `[t, t + 1s)` holds.
    fn max_per_second(times: &[Instant]) -> usize {
        let mut sorted = times.to_vec();
        sorted.sort();
        (0..sorted.len())
            .map(|i| {
                sorted[i..]
                    .iter()
                    .take_while(|&&t| t < sorted[i] + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn spaces_requests_evenly() {
        let limiter = RateLimiter::new(10.0);
        let spacing = Duration::from_secs_f64(JITTER_MARGIN / 10.0);
        assert_eq!(limiter.spacing(), spacing);
        let start = Instant::now();
        let times = grants(&limiter, 25).await;
        assert_eq!(times[0], start, "the first request does not wait");
        assert_evenly_spaced(&times, spacing);
        assert_eq!(max_per_second(&times), 10);
        assert!((limiter.rate() - 10.0 / JITTER_MARGIN).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn no_burst_after_idle() {
        let limiter = RateLimiter::new(5.0);
        let spacing = limiter.spacing();
        grants(&limiter, 3).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let resumed = Instant::now();
        let times = grants(&limiter, 6).await;
        assert_eq!(times[0], resumed, "idle time must not be banked");
        assert_evenly_spaced(&times, spacing);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_acquirers_queue_one_spacing_apart() {
        let limiter = Arc::new(RateLimiter::new(100.0));
        let spacing = limiter.spacing();
        let start = Instant::now();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    limiter.acquire().await;
                    Instant::now()
                })
            })
            .collect();
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.expect("task does not panic"));
        }
        times.sort();
        assert_eq!(times[0], start);
        assert_evenly_spaced(&times, spacing);
        assert!(max_per_second(&times) <= 100);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_down_stretches_spacing_then_recovers() {
        let limiter = RateLimiter::new(10.0);
        let normal = limiter.spacing();
        grants(&limiter, 2).await;
        limiter.slow_down(2.0, Duration::from_secs(5));
        assert_eq!(limiter.spacing(), normal * 2);
        assert!((limiter.rate() - 5.0 / JITTER_MARGIN).abs() < 1e-9);
        let slowed_at = Instant::now();
        let times = grants(&limiter, 3).await;
        assert_granted_at(times[0], slowed_at + normal * 2);
        assert_evenly_spaced(&times, normal * 2);
        // Past the end of the slow-down the normal spacing returns.
        tokio::time::sleep_until(slowed_at + Duration::from_secs(6)).await;
        assert_eq!(limiter.spacing(), normal);
        let times = grants(&limiter, 4).await;
        assert_evenly_spaced(&times, normal);
    }

    #[tokio::test(start_paused = true)]
    async fn set_rate_applies_to_later_slots() {
        let limiter = RateLimiter::new(1.0);
        grants(&limiter, 1).await;
        limiter.set_rate(4.0);
        let spacing = limiter.spacing();
        assert_eq!(spacing, Duration::from_secs_f64(JITTER_MARGIN / 4.0));
        let times = grants(&limiter, 4).await;
        assert_evenly_spaced(&times, spacing);
    }

    #[test]
    fn nonsense_rates_stay_finite() {
        for r in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let limiter = RateLimiter::new(r);
            assert!(limiter.spacing() > Duration::ZERO, "{r}");
        }
        let limiter = RateLimiter::new(1.0);
        limiter.slow_down(f64::NAN, Duration::from_secs(1));
        assert!(limiter.rate() > 0.0);
    }

    proptest::proptest! {
        /// Whatever the rate and however callers interleave with idle gaps, no 1-second window
        /// holds more than `rate` grants.
        #[test]
        fn never_more_than_rate_per_second(rate in 1u32..300, gaps in proptest::collection::vec(0u64..3000, 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime builds");
            let times = rt.block_on(async {
                let limiter = RateLimiter::new(f64::from(rate));
                let mut times = Vec::new();
                for gap in gaps {
                    tokio::time::sleep(Duration::from_millis(gap % 7 * (gap / 100))).await;
                    times.extend(grants(&limiter, (gap % 5) as usize + 1).await);
                }
                times
            });
            proptest::prop_assert!(max_per_second(&times) <= rate as usize);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_does_not_release_the_queue_at_once() {
        let limiter = Arc::new(RateLimiter::new(100.0));
        let spacing = limiter.spacing();
        let granted = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let limiter = Arc::clone(&limiter);
            let granted = Arc::clone(&granted);
            tasks.push(tokio::spawn(async move {
                limiter.acquire().await;
                granted.lock().unwrap().push(Instant::now());
            }));
        }
        tokio::task::yield_now().await;
        // The runtime stalls for 100 ms: every reserved slot would be past at once.
        tokio::time::advance(Duration::from_millis(100)).await;
        for t in tasks {
            t.await.unwrap();
        }
        let mut at = granted.lock().unwrap().clone();
        at.sort();
        assert_eq!(at.len(), 20);
        for pair in at.windows(2) {
            assert!(
                pair[1] - pair[0] + Duration::from_millis(1) >= spacing,
                "two grants {:?} apart after a stall",
                pair[1] - pair[0]
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn high_rates_are_not_capped_by_the_millisecond_timer() {
        // 4,000/s is 0.25 ms apart, below the timer's resolution: slots that fall within one
        // millisecond go out together instead of one per millisecond.
        let limiter = RateLimiter::new(4000.0);
        let start = Instant::now();
        grants(&limiter, 400).await;
        let took = Instant::now() - start;
        assert!(
            took <= Duration::from_millis(110),
            "400 slots took {took:?}"
        );
        assert!(
            took >= Duration::from_millis(99),
            "400 slots took only {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_send_pushes_the_next_slot() {
        let limiter = RateLimiter::new(10.0);
        let spacing = limiter.spacing();
        let slot = limiter.acquire().await;
        // The request's task runs 30 ms after its slot was granted.
        tokio::time::advance(Duration::from_millis(30)).await;
        let sent = Instant::now();
        limiter.sending(&slot);
        limiter.acquire().await;
        assert!(
            Instant::now() >= sent + spacing,
            "the next slot came {:?} after a late send",
            Instant::now() - sent
        );
        // On time (within the tolerance), the grid stays.
        let slot = limiter.acquire().await;
        let granted = Instant::now();
        limiter.sending(&slot);
        limiter.acquire().await;
        assert_granted_at(Instant::now(), granted + spacing);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_costs_no_slot() {
        let limiter = RateLimiter::new(10.0);
        let spacing = limiter.spacing();
        limiter.acquire().await;
        let first = Instant::now();
        // A caller gives up halfway to its slot (the owner turning to a reload).
        let gave_up = tokio::time::timeout(spacing / 2, limiter.acquire()).await;
        assert!(gave_up.is_err());
        limiter.acquire().await;
        assert_granted_at(Instant::now(), first + spacing);
    }

    #[tokio::test(start_paused = true)]
    async fn list_slots_of_shards_never_meet_within_a_second() {
        let anchor =
            crate::schedule::Anchor::at(Instant::now(), Duration::from_secs(1_700_000_000));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for ordinal in 0..3 {
            let slots = Arc::new(ListSlots::new(
                crate::shard::Shard { ordinal, total: 3 },
                anchor,
            ));
            tasks.push(tokio::spawn(async move {
                let mut times = Vec::new();
                for _ in 0..5 {
                    slots.acquire().await;
                    times.push(Instant::now());
                }
                times
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            let times = t.await.unwrap();
            for w in times.windows(2) {
                assert!(
                    w[1] - w[0] >= LIST_SLOT * 3 - LIST_SLOT_GRACE,
                    "{:?}",
                    w[1] - w[0]
                );
            }
            all.extend(times);
        }
        all.sort();
        assert_eq!(all.len(), 15);
        for w in all.windows(2) {
            assert!(
                w[1] - w[0] >= LIST_SLOT - LIST_SLOT_GRACE,
                "two shards listed {:?} apart",
                w[1] - w[0]
            );
        }
        assert!(all[14] - start <= LIST_SLOT * 16, "the slots are used");
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_slot_missed_by_more_than_the_grace_waits_for_the_next() {
        let anchor =
            crate::schedule::Anchor::at(Instant::now(), Duration::from_secs(1_700_000_000));
        let slots = ListSlots::new(
            crate::shard::Shard {
                ordinal: 0,
                total: 2,
            },
            anchor,
        );
        slots.acquire().await;
        let first = Instant::now();
        // 100 ms after our next slot began: past its grace.
        tokio::time::advance(LIST_SLOT * 2 + Duration::from_millis(100)).await;
        slots.acquire().await;
        let waited = Instant::now() - first;
        assert!(
            waited >= LIST_SLOT * 4 - Duration::from_millis(1),
            "{waited:?}"
        );
    }
}
