//! Discovery (SPEC "Discovery"): an app's groups as `get_appid_group_list` lists them, merged
//! with its configured ones.
//!
//! This module is plain data and one listing call; the app's owner ([`crate::app`]) decides when
//! to list (never two listings at once, the next one `refresh_interval` after the previous one
//! ended, sooner after a failure) and hands the merged list to its scheduler and the store.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::client::{Client, Stopped};
use crate::config::AppConfig;
use crate::outcome::Outcome;
use crate::schedule::GroupSpec;
use crate::shard::Shard;
use tokio::time::Instant;

/// After a failed listing the next try comes this much later, doubling with each further
/// failure, never later than the refresh interval: an exporter started during a short API
/// outage would otherwise poll none of the app's discovered groups for 10 minutes.
pub const DISCOVERY_RETRY: Duration = Duration::from_secs(10);

/// Lists every group of the app of the given types (every type when empty): sorted, unique.
/// One type failing fails the listing, so a partial list never replaces a complete one.
pub async fn list(
    client: &Client,
    group_types: &[String],
) -> Result<Outcome<Vec<String>>, Stopped> {
    let types: Vec<Option<&str>> = if group_types.is_empty() {
        vec![None]
    } else {
        group_types.iter().map(|t| Some(t.as_str())).collect()
    };
    let mut found = Vec::new();
    for t in types {
        match client.get_appid_group_list(t).await? {
            Outcome::Ok(ids) => found.extend(ids),
            failed => return Ok(failed),
        }
    }
    found.sort_unstable();
    found.dedup();
    Ok(Outcome::Ok(found))
}

/// How long after a listing ended the next one starts, by how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    retry: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            retry: DISCOVERY_RETRY,
        }
    }
}

impl Backoff {
    /// The wait before the next listing: `refresh` after a success; after a failure
    /// [`DISCOVERY_RETRY`], doubling with each failure in a row, at most `refresh`.
    pub fn next_wait(&mut self, succeeded: bool, refresh: Duration) -> Duration {
        if succeeded {
            self.retry = DISCOVERY_RETRY;
            refresh
        } else {
            let wait = self.retry.min(refresh);
            self.retry = self.retry.saturating_mul(2);
            wait
        }
    }
}

/// The two sources of one app's groups, both cut to this replica's shard.
#[derive(Debug)]
pub struct Lists {
    shard: Shard,
    /// The global `poll_interval`, which discovered groups use.
    default_interval: Duration,
    configured: Vec<GroupSpec>,
    /// The last successful listing; `None` until one answered, or without `discover`.
    discovered: Option<Vec<Arc<str>>>,
    /// Whether the app has `discover`.
    discovering: bool,
    /// Groups create callbacks added since, with when: kept until a listing that started
    /// after them answers (it lists them, or they are gone).
    created: Vec<(Arc<str>, Instant)>,
}

impl Lists {
    pub fn new(shard: Shard) -> Lists {
        Lists {
            shard,
            default_interval: Duration::from_secs(60),
            configured: Vec::new(),
            discovered: None,
            discovering: false,
            created: Vec::new(),
        }
    }

    /// Takes a (re)loaded app config: its groups, its `discover`, the global interval. A
    /// discovered list survives (only removing `discover` forgets it).
    pub fn configure(&mut self, app: &AppConfig, default_interval: Duration) {
        self.configured = app
            .groups
            .iter()
            .filter(|g| self.shard.owns(&g.id))
            .map(|g| GroupSpec {
                id: Arc::from(g.id.as_str()),
                interval: g.poll_interval,
            })
            .collect();
        self.default_interval = default_interval;
        self.discovering = app.discover.is_some();
        if !self.discovering {
            self.discovered = None;
            self.created.clear();
        }
    }

    /// Takes a successful listing that started at `started`.
    pub fn set_discovered(&mut self, ids: Vec<String>, started: Instant) {
        self.created.retain(|(_, at)| *at > started);
        let shard = self.shard;
        self.discovered = Some(
            ids.into_iter()
                .filter(|id| shard.owns(id))
                .map(Arc::from)
                .collect(),
        );
    }

    /// Adds a group a create callback announced (its type and shard already checked), as a
    /// listing would; `None` when it is listed already.
    pub fn add_created(&mut self, id: &str, now: Instant) -> Option<GroupSpec> {
        let known = self.configured.iter().any(|g| &*g.id == id)
            || self.created.iter().any(|(g, _)| &**g == id)
            || self
                .discovered
                .as_ref()
                .is_some_and(|d| d.binary_search_by(|g| (**g).cmp(id)).is_ok());
        if known {
            return None;
        }
        let id: Arc<str> = Arc::from(id);
        self.created.push((Arc::clone(&id), now));
        Some(GroupSpec {
            id,
            interval: self.default_interval,
        })
    }

    /// Whether the list is complete: the app has no `discover`, or a listing has answered.
    /// Until then, state-file snapshots of groups not (yet) listed must be kept.
    pub fn complete(&self) -> bool {
        !self.discovering || self.discovered.is_some()
    }

    pub fn discovered_len(&self) -> usize {
        self.discovered.as_ref().map_or(0, Vec::len)
    }

    /// Both lists merged: a configured group keeps its own interval, discovered ones use the
    /// global one, a group in both counts once.
    pub fn merged(&self) -> Vec<GroupSpec> {
        let mut seen: BTreeSet<&str> = self.configured.iter().map(|g| g.id.as_ref()).collect();
        let mut all = self.configured.clone();
        let created = self.created.iter().map(|(id, _)| id);
        for id in self.discovered.iter().flatten().chain(created) {
            if seen.insert(id.as_ref()) {
                all.push(GroupSpec {
                    id: Arc::clone(id),
                    interval: self.default_interval,
                });
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(yaml_groups: &str, discover: bool) -> AppConfig {
        let discover = if discover {
            "    discover: {refresh_interval: 5s}\n"
        } else {
            ""
        };
        let yaml = format!(
            "apps:\n  - sdkappid: 1400000000\n    endpoint: http://127.0.0.1:9/\n    identifier: admin\n    secret_key: k\n    groups: {yaml_groups}\n{discover}"
        );
        crate::config::parse(&yaml, &|_| None, std::path::Path::new("."))
            .expect("valid")
            .config
            .apps
            .remove(0)
    }

    fn interval_of(lists: &Lists, id: &str) -> Option<Duration> {
        lists
            .merged()
            .iter()
            .find(|g| g.id.as_ref() == id)
            .map(|g| g.interval)
    }

    #[test]
    fn discovered_groups_follow_a_reloaded_poll_interval() {
        let app = app("[\"@TGS#static\"]", true);
        let mut lists = Lists::new(Shard::default());
        lists.configure(&app, Duration::from_secs(60));
        assert!(!lists.complete(), "discovery has not answered");
        lists.set_discovered(
            vec!["@TGS#found".to_owned(), "@TGS#static".to_owned()],
            Instant::now(),
        );
        assert!(lists.complete());
        assert_eq!(
            lists.merged().len(),
            2,
            "a group both configured and found counts once"
        );
        assert_eq!(
            interval_of(&lists, "@TGS#found"),
            Some(Duration::from_secs(60))
        );
        // A reload that only changes the global poll_interval keeps the discovered list.
        lists.configure(&app, Duration::from_secs(15));
        assert_eq!(
            interval_of(&lists, "@TGS#found"),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            interval_of(&lists, "@TGS#static"),
            Some(app.groups[0].poll_interval)
        );
    }

    #[test]
    fn removing_discover_forgets_the_discovered_groups() {
        let mut lists = Lists::new(Shard::default());
        lists.configure(&app("[\"@TGS#static\"]", true), Duration::from_secs(60));
        lists.set_discovered(vec!["@TGS#found".to_owned()], Instant::now());
        lists.configure(&app("[\"@TGS#static\"]", false), Duration::from_secs(60));
        assert!(lists.complete());
        assert_eq!(lists.merged().len(), 1);
        assert_eq!(lists.discovered_len(), 0);
    }

    #[test]
    fn only_this_shards_groups_are_kept() {
        let shard = Shard {
            ordinal: 1,
            total: 3,
        };
        let ids: Vec<String> = (0..300).map(|i| format!("@TGS#{i}")).collect();
        let mut lists = Lists::new(shard);
        lists.configure(&app("[]", true), Duration::from_secs(60));
        lists.set_discovered(ids.clone(), Instant::now());
        let expected = ids.iter().filter(|id| shard.owns(id)).count();
        assert!(expected > 50 && expected < 150, "{expected}");
        assert_eq!(lists.merged().len(), expected);
    }

    #[test]
    fn failed_listings_back_off_up_to_the_refresh_interval() {
        let refresh = Duration::from_secs(60);
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..4)
            .map(|_| b.next_wait(false, refresh).as_secs())
            .collect();
        assert_eq!(waits, [10, 20, 40, 60]);
        assert_eq!(b.next_wait(true, refresh), refresh);
        assert_eq!(
            b.next_wait(false, refresh),
            DISCOVERY_RETRY,
            "reset by a success"
        );
        assert_eq!(
            Backoff::default().next_wait(false, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }
}
