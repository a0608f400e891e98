//! Which replica polls which group: `jump_hash(fnv1a64(group_id), total_shards)`, as
//! kube-state-metrics does. Both functions are a few lines and the exact variants matter for
//! cross-replica agreement, so they are written out here rather than pulled from crates whose
//! variant might differ.
//!
//! Also this replica's own [`Shard`], from `--shard`/`--total-shards` or, for a StatefulSet,
//! from the ordinal at the end of its host name (`--shard.from-hostname`).

/// FNV-1a, 64-bit.
pub fn fnv1a64(data: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    data.iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Lamping & Veach's jump consistent hash: a bucket in `0..buckets`.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let buckets = i64::from(buckets.max(1));
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = (((b + 1) as f64) * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The shard a group belongs to.
pub fn shard_of(group_id: &str, total_shards: u32) -> u32 {
    jump_hash(fnv1a64(group_id.as_bytes()), total_shards)
}

/// This replica's place among its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub ordinal: u32,
    pub total: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            ordinal: 0,
            total: 1,
        }
    }
}

/// Why the flags name no valid shard. The messages name the flags: they are shown as a bad
/// command line (exit 64).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("--total-shards must be at least 1")]
    NoShards,
    #[error("--shard.from-hostname: host name {0:?} does not end in -<ordinal>")]
    NoOrdinal(String),
    #[error("shard {ordinal} is out of range for --total-shards {total}")]
    OutOfRange { ordinal: u32, total: u32 },
}

impl Shard {
    /// Shard `ordinal` of `total` (`--shard N --total-shards M`): `total` at least 1 and
    /// `ordinal` below it.
    pub fn new(ordinal: u32, total: u32) -> Result<Shard, ShardError> {
        if total == 0 {
            return Err(ShardError::NoShards);
        }
        if ordinal >= total {
            return Err(ShardError::OutOfRange { ordinal, total });
        }
        Ok(Shard { ordinal, total })
    }

    /// `--shard.from-hostname`: the ordinal is the number after the last `-` of `host` (a
    /// StatefulSet pod `timattr-exporter-2` is shard 2). Surrounding whitespace (the newline of
    /// `/etc/hostname`) is ignored.
    pub fn from_hostname(host: &str, total: u32) -> Result<Shard, ShardError> {
        if total == 0 {
            return Err(ShardError::NoShards);
        }
        let host = host.trim();
        let ordinal = host
            .rsplit('-')
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| ShardError::NoOrdinal(host.to_owned()))?;
        Shard::new(ordinal, total)
    }

    pub fn owns(&self, group_id: &str) -> bool {
        self.total <= 1 || shard_of(group_id, self.total) == self.ordinal
    }
}

/// Extra spacing for replicas sharing a quota. One process sends in order through one limiter;
/// independent replicas do not, and their requests meet at the API with the sum of their
/// jitters. The quota benchmark (BENCHMARKS.md, W2) saw 201-203 requests in a second at the fake
/// with 2 and 4 shards without it, and 199 with it.
pub const SHARD_JITTER_MARGIN: f64 = 1.01;

/// This replica's part of an app's `rate_limit`: `rate_limit / total_shards` (SPEC "Sharding"),
/// rounded down to whole requests a second and stretched by [`SHARD_JITTER_MARGIN`] when there
/// are several shards.
///
/// Each shard's limiter spaces its requests evenly, and a limiter at `r`/s fits
/// `1 + r / JITTER_MARGIN` requests (rounded down) into a one-second window: at a whole `k`/s that
/// is `k`, but at 20/3 = 6.67/s it is 7, and three shards, independent of one another, could
/// send 21 in one second against a quota of 20. Whole shares sum to at most `rate_limit`.
/// Below one request a second per shard no split can hold the quota (each shard may send one
/// request in any second); the share is kept as it is and the daemon warns.
pub fn shard_rate(rate_limit: f64, total_shards: u32) -> f64 {
    let share = rate_limit / f64::from(total_shards.max(1));
    if total_shards > 1 && share >= 1.0 {
        share.floor() / SHARD_JITTER_MARGIN
    } else {
        share
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn jump_hash_known_values() {
        // Values from the paper's reference implementation (and Go's jump package tests).
        assert_eq!(jump_hash(0, 1), 0);
        assert_eq!(jump_hash(1, 1), 0);
        assert_eq!(jump_hash(0xdeadbeef, 1), 0);
        assert_eq!(jump_hash(1, 2), 0);
        assert_eq!(jump_hash(10, 2), 1);
        assert_eq!(jump_hash(0xdeadbeef, 2), 1);
        // More buckets, as kube-state-metrics shards: Go's go-jump test vectors, and values
        // from a Python transcription of the paper's code.
        assert_eq!(jump_hash(42, 57), 43);
        assert_eq!(jump_hash(0xDEAD10CC, 666), 361);
        assert_eq!(jump_hash(256, 1024), 520);
        assert_eq!(jump_hash(10, 3), 2);
        assert_eq!(jump_hash(0xdeadbeef, 5), 3);
        assert_eq!(jump_hash(1, 10), 6);
        assert_eq!(jump_hash(u64::MAX, 1000), 313);
        assert_eq!(jump_hash(fnv1a64(b"@TGS#aC5SZEAEF"), 3), 2);
        assert_eq!(jump_hash(fnv1a64(b"@TGS#aC5SZEAEF"), 7), 6);
    }

    #[test]
    fn shard_from_flags() {
        assert_eq!(Shard::new(0, 1), Ok(Shard::default()));
        assert_eq!(
            Shard::new(2, 3),
            Ok(Shard {
                ordinal: 2,
                total: 3
            })
        );
        assert_eq!(
            Shard::new(3, 3),
            Err(ShardError::OutOfRange {
                ordinal: 3,
                total: 3
            })
        );
        assert_eq!(Shard::new(0, 0), Err(ShardError::NoShards));
        assert_eq!(
            Shard::new(3, 3).map_err(|e| e.to_string()),
            Err("shard 3 is out of range for --total-shards 3".to_owned())
        );
        assert_eq!(
            Shard::new(0, 0).map_err(|e| e.to_string()),
            Err("--total-shards must be at least 1".to_owned())
        );
    }

    #[test]
    fn shard_from_hostname() {
        assert_eq!(
            Shard::from_hostname("timattr-exporter-2", 3),
            Ok(Shard {
                ordinal: 2,
                total: 3
            })
        );
        assert_eq!(
            Shard::from_hostname("timattr-exporter-0\n", 1),
            Ok(Shard::default()),
            "/etc/hostname ends with a newline"
        );
        for host in [
            "timattr-exporter",
            "timattr-exporter-",
            "exporter2",
            "",
            "  ",
        ] {
            assert_eq!(
                Shard::from_hostname(host, 3),
                Err(ShardError::NoOrdinal(host.trim().to_owned())),
                "{host:?}"
            );
        }
        assert_eq!(
            Shard::from_hostname("timattr-exporter", 3).map_err(|e| e.to_string()),
            Err(
                "--shard.from-hostname: host name \"timattr-exporter\" does not end in -<ordinal>"
                    .to_owned()
            )
        );
        assert_eq!(
            Shard::from_hostname("timattr-exporter-3", 3),
            Err(ShardError::OutOfRange {
                ordinal: 3,
                total: 3
            })
        );
        // No shards at all is the first thing wrong, whatever the host name.
        assert_eq!(
            Shard::from_hostname("timattr-exporter-0", 0),
            Err(ShardError::NoShards)
        );
        assert_eq!(
            Shard::from_hostname("timattr-exporter", 0),
            Err(ShardError::NoShards)
        );
    }

    #[test]
    fn every_group_has_exactly_one_shard_and_moves_little() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("@TGS#{i:08}")).collect();
        for total in 1..=5u32 {
            let mut counts = vec![0usize; total as usize];
            for id in &ids {
                let owners: Vec<u32> = (0..total)
                    .filter(|&o| Shard { ordinal: o, total }.owns(id))
                    .collect();
                assert_eq!(owners.len(), 1);
                counts[owners[0] as usize] += 1;
            }
            let expected = ids.len() / total as usize;
            for c in counts {
                assert!(c.abs_diff(expected) < expected / 10 + 50, "{total}: {c}");
            }
        }
        // Growing from 3 to 4 shards moves about a quarter of the groups, never more than that.
        let moved = ids
            .iter()
            .filter(|id| shard_of(id, 3) != shard_of(id, 4))
            .count();
        assert!(moved < ids.len() * 3 / 10, "{moved}");
    }

    use crate::ratelimit::RateLimiter;
    use std::time::Duration;
    use tokio::task::JoinSet;
    use tokio::time::Instant;

    /// Requests times of `total` shards' limiters, all started at once (the worst alignment:
    /// every limiter's densest second begins at the same instant), `per_shard` each.
    async fn shard_request_times(rate_limit: f64, total: u32, per_shard: usize) -> Vec<Duration> {
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for _ in 0..total {
            let limiter = RateLimiter::new(shard_rate(rate_limit, total));
            tasks.spawn(async move {
                let mut times = Vec::with_capacity(per_shard);
                for _ in 0..per_shard {
                    limiter.acquire().await;
                    times.push(Instant::now() - start);
                }
                times
            });
        }
        let mut all = Vec::new();
        while let Some(times) = tasks.join_next().await {
            all.extend(times.expect("no panic"));
        }
        all.sort_unstable();
        all
    }

    fn max_in_one_second(sorted: &[Duration]) -> usize {
        let mut lo = 0;
        let mut best = 0;
        for hi in 0..sorted.len() {
            while sorted[hi] - sorted[lo] >= Duration::from_secs(1) {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }

    #[tokio::test(start_paused = true)]
    async fn shards_together_never_exceed_the_apps_quota() {
        // 20/3 = 6.67/s per shard would let each shard send 7 in a second: 21 in all.
        for (rate_limit, total) in [
            (20.0, 3),
            (10.0, 3),
            (100.0, 3),
            (200.0, 7),
            (7.0, 2),
            (200.0, 2),
            (200.0, 4),
        ] {
            let times = shard_request_times(rate_limit, total, 40).await;
            let peak = max_in_one_second(&times);
            assert!(
                peak as f64 <= rate_limit,
                "{total} shards of {rate_limit}/s: {peak} in one second"
            );
            // The shares use the quota but for less than one request a second per shard.
            assert!(
                shard_rate(rate_limit, total) * f64::from(total) > rate_limit - f64::from(total)
            );
        }
    }

    #[test]
    fn one_shard_keeps_the_whole_rate_limit() {
        assert_eq!(shard_rate(2.5, 1), 2.5);
        assert_eq!(shard_rate(100.0, 1), 100.0);
        assert_eq!(shard_rate(0.5, 2), 0.25);
        assert_eq!(shard_rate(100.0, 3), 33.0 / SHARD_JITTER_MARGIN);
    }
}
