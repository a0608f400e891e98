//! What the fake saw: request counts per app, API, group and outcome, and the arrival time of
//! every request per app and API (for tests that check each one-second window).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Arrival times kept per app and API; older ones are dropped first.
pub const MAX_TIMES_PER_API: usize = 1_000_000;

/// Request counts, as `GET /fake/counts` returns them. An outcome is the `ErrorCode` answered
/// (`"0"`, `"10010"`, ...) or what a fault did instead (`"http_502"`, `"hang"`,
/// `"truncated_json"`, `"invalid_json"`, `"invalid_utf8"`, `"oversized_body"`,
/// `"duplicate_key"`, `"status_mismatch"`). Requests without a known numeric SDKAppID count
/// under app 0; requests to unknown paths under API `"unknown"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub total: u64,
    pub by_outcome: BTreeMap<String, u64>,
    pub apps: BTreeMap<u64, AppCounts>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppCounts {
    pub total: u64,
    pub by_api: BTreeMap<String, Tally>,
    pub by_group: HashMap<String, Tally>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub total: u64,
    pub by_outcome: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, outcome: &str) {
        self.total += 1;
        *self.by_outcome.entry(outcome.to_owned()).or_default() += 1;
    }

    pub fn outcome(&self, outcome: &str) -> u64 {
        self.by_outcome.get(outcome).copied().unwrap_or(0)
    }
}

impl Counts {
    /// Requests to one API of one app.
    pub fn requests(&self, sdkappid: u64, api: &str) -> u64 {
        self.api(sdkappid, api).map_or(0, |t| t.total)
    }

    /// Requests to one API of one app that ended with `outcome`.
    pub fn outcome(&self, sdkappid: u64, api: &str, outcome: &str) -> u64 {
        self.api(sdkappid, api).map_or(0, |t| t.outcome(outcome))
    }

    /// Requests naming one group, any API.
    pub fn group(&self, sdkappid: u64, group_id: &str) -> u64 {
        self.apps
            .get(&sdkappid)
            .and_then(|a| a.by_group.get(group_id))
            .map_or(0, |t| t.total)
    }

    fn api(&self, sdkappid: u64, api: &str) -> Option<&Tally> {
        self.apps.get(&sdkappid).and_then(|a| a.by_api.get(api))
    }
}

/// When a request arrived (since the fake started), and the group it named.
type Arrival = (Duration, Option<Box<str>>);

#[derive(Debug, Default)]
pub struct Stats {
    pub counts: Counts,
    /// Arrival time, and the group named (for per-group intervals in the benchmarks).
    times: HashMap<(u64, &'static str), VecDeque<Arrival>>,
}

impl Stats {
    pub fn record(
        &mut self,
        sdkappid: u64,
        api: &'static str,
        group: Option<&str>,
        outcome: &str,
        since_start: Duration,
    ) {
        let c = &mut self.counts;
        c.total += 1;
        *c.by_outcome.entry(outcome.to_owned()).or_default() += 1;
        let app = c.apps.entry(sdkappid).or_default();
        app.total += 1;
        app.by_api.entry(api.to_owned()).or_default().add(outcome);
        if let Some(group) = group {
            match app.by_group.get_mut(group) {
                Some(t) => t.add(outcome),
                None => {
                    let mut t = Tally::default();
                    t.add(outcome);
                    app.by_group.insert(group.to_owned(), t);
                }
            }
        }
        let times = self.times.entry((sdkappid, api)).or_default();
        if times.len() == MAX_TIMES_PER_API {
            times.pop_front();
        }
        times.push_back((since_start, group.map(Box::from)));
    }

    pub fn times(&self, sdkappid: u64, api: &str) -> Vec<Duration> {
        self.times
            .iter()
            .find(|((app, name), _)| *app == sdkappid && *name == api)
            .map(|(_, t)| t.iter().map(|(at, _)| *at).collect())
            .unwrap_or_default()
    }

    /// Arrival times with the group each request named (`None` for calls without a group).
    pub fn times_with_groups(&self, sdkappid: u64, api: &str) -> Vec<(Duration, Option<String>)> {
        self.times
            .iter()
            .find(|((app, name), _)| *app == sdkappid && *name == api)
            .map(|(_, t)| {
                t.iter()
                    .map(|(at, g)| (*at, g.as_deref().map(str::to_owned)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn reset(&mut self) {
        *self = Stats::default();
    }
}
