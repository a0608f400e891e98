//! The running exporter: one poller per app, discovery, the state file, reload and shutdown.
//!
//! [`run`] takes its listener and its shutdown trigger as arguments (as mini-redis does), so
//! tests start the whole daemon on `127.0.0.1:0` and stop it with a [`crate::shutdown::Trigger`].
//!
//! Per app there is one dispatcher task: it sleeps until the next group is due
//! ([`crate::schedule`]), waits for one of the app's `max_concurrency` slots, and spawns the
//! poll. Every HTTP attempt inside the poll waits for the app's rate limiter, so the quota holds
//! with retries included. A poll's result goes into the [`Store`]; `/metrics` renders from there
//! and never calls the upstream.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::client::{Client, ClientSettings, RetryPolicy};
use crate::config::{self, AppConfig, Config};
use crate::http::{self, ServerOptions};
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::ratelimit::RateLimiter;
use crate::schedule::{Anchor, GroupSpec, Scheduler};
use crate::shard::Shard;
use crate::shutdown::{self, Shutdown, Trigger};
use crate::state_file as state;
use crate::store::{Seeds, Store};

/// How often the state file is written when the state changed (SPEC: every 30 s).
pub const STATE_WRITE_INTERVAL: Duration = Duration::from_secs(30);
/// How long in-flight requests may take to finish at shutdown before they are abandoned.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// After a failed discovery refresh the next try comes this much later, doubling with each
/// further failure, never later than the refresh interval.
pub const DISCOVERY_RETRY: Duration = Duration::from_secs(10);

/// Where the config comes from, and so what a reload re-reads.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file, re-read on every reload.
    File(PathBuf),
    /// A fixed config (`--demo`); a reload re-applies it.
    Fixed(Box<Config>),
}

/// Everything `run` needs besides the listener and the shutdown signal.
pub struct Options {
    pub source: ConfigSource,
    /// The config already loaded (and validated) by `main`, so startup errors exit 64 there.
    pub config: Config,
    pub shard: Shard,
    pub server: ServerOptions,
    pub build: crate::metrics::BuildInfo,
    /// One message per reload request (SIGHUP); `POST /-/reload` goes through the server.
    pub reloads: tokio::sync::mpsc::Receiver<()>,
}

/// The daemon's shared core, handed to the HTTP server as its [`http::Service`].
pub struct Daemon {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    shard: Shard,
    source: ConfigSource,
    current: Mutex<Arc<Config>>,
    apps: tokio::sync::Mutex<HashMap<u64, AppRunner>>,
    ready: AtomicBool,
    shutdown: Trigger,
    anchor: Anchor,
    /// The store generation last written to the state file, plus one (0: never written).
    written_generation: AtomicU64,
}

/// One app's running pieces.
struct AppRunner {
    /// The app's settings without its group list (the store and the scheduler hold the groups;
    /// a third copy here would cost ~70 bytes a group for a comparison on reload).
    config: AppConfig,
    limiter: Arc<RateLimiter>,
    groups: Arc<GroupSets>,
    stop: Trigger,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The two sources of an app's groups.
#[derive(Default)]
struct Lists {
    /// The global `poll_interval`, which discovered groups use.
    default_interval: Duration,
    configured: Vec<GroupSpec>,
    /// `None` until the first successful discovery (or without `discover`).
    discovered: Option<Vec<Arc<str>>>,
}

/// The groups one app polls: configured ones plus discovered ones, both cut to this shard.
struct GroupSets {
    sdkappid: u64,
    shard: Shard,
    lists: Mutex<Lists>,
    tx: watch::Sender<Arc<Vec<GroupSpec>>>,
    store: Arc<Store>,
}

impl GroupSets {
    fn set_static(&self, app: &AppConfig, default_interval: Duration) {
        let specs = app
            .groups
            .iter()
            .filter(|g| self.shard.owns(&g.id))
            .map(|g| GroupSpec {
                id: Arc::from(g.id.as_str()),
                interval: g.poll_interval,
            })
            .collect();
        {
            let mut lists = self.lock();
            lists.configured = specs;
            lists.default_interval = default_interval;
        }
        self.publish();
    }

    fn set_discovered(&self, ids: Vec<String>) {
        let ids = ids
            .into_iter()
            .filter(|id| self.shard.owns(id))
            .map(Arc::from)
            .collect();
        self.lock().discovered = Some(ids);
        self.publish();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lists> {
        self.lists.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Merges both lists (a configured group keeps its own interval) and hands the result to
    /// the store (which forgets groups that left) and to the dispatcher.
    fn publish(&self) {
        let merged: Vec<GroupSpec> = {
            let lists = self.lock();
            let mut seen: BTreeSet<&str> = lists.configured.iter().map(|g| g.id.as_ref()).collect();
            let mut all = lists.configured.clone();
            for id in lists.discovered.iter().flatten() {
                if seen.insert(id.as_ref()) {
                    all.push(GroupSpec {
                        id: Arc::clone(id),
                        interval: lists.default_interval,
                    });
                }
            }
            all
        };
        let ids: Vec<String> = merged.iter().map(|g| g.id.to_string()).collect();
        self.store
            .set_assigned(self.sdkappid, &ids, Seeds::DropUnlisted);
        self.tx.send_replace(Arc::new(merged));
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Daemon {
    fn config(&self) -> Arc<Config> {
        Arc::clone(&self.current.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Number of groups assigned to this instance across apps (for the startup log).
    pub fn configured_groups(config: &Config, shard: Shard) -> usize {
        config
            .apps
            .iter()
            .flat_map(|a| a.groups.iter())
            .filter(|g| shard.owns(&g.id))
            .count()
    }

    /// Applies a config: starts new apps, stops removed ones, updates the others in place so
    /// the state and counters of groups that stay survive.
    async fn apply(&self, config: Config) {
        // Kept for rendering and the state file: the settings without the group lists, which
        // live in the store and the schedulers.
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings_only(&config));
        let mut apps = self.apps.lock().await;
        let wanted: BTreeSet<u64> = config.apps.iter().map(|a| a.sdkappid).collect();
        let gone: Vec<u64> = apps
            .keys()
            .copied()
            .filter(|id| !wanted.contains(id))
            .collect();
        for sdkappid in gone {
            if let Some(runner) = apps.remove(&sdkappid) {
                runner.stop.fire();
            }
            self.store.remove_app(sdkappid);
            self.metrics.remove_app(sdkappid);
            info!(sdkappid, "app removed from the config; its series are gone");
        }
        for app in &config.apps {
            let rate = shard_rate(app.rate_limit, self.shard.total);
            if app.rate_limit < f64::from(self.shard.total) && self.shard.total > 1 {
                warn!(
                    sdkappid = app.sdkappid,
                    rate_limit = app.rate_limit,
                    total_shards = self.shard.total,
                    "rate_limit is below one request a second per shard: together the shards may exceed it"
                );
            }
            match apps.get_mut(&app.sdkappid) {
                Some(runner) if same_client(&runner.config, app) => {
                    runner.limiter.set_rate(rate);
                    runner.groups.set_static(app, config.poll_interval);
                    runner.config = without_groups(app);
                }
                _ => {
                    if let Some(old) = apps.remove(&app.sdkappid) {
                        old.stop.fire();
                    }
                    match self.start_app(app, rate, config.poll_interval) {
                        Ok(runner) => {
                            apps.insert(app.sdkappid, runner);
                        }
                        Err(e) => {
                            error!(sdkappid = app.sdkappid, error = %e, "cannot start the app's client");
                        }
                    }
                }
            }
        }
    }

    fn start_app(
        &self,
        app: &AppConfig,
        rate: f64,
        default_interval: Duration,
    ) -> Result<AppRunner, crate::client::ClientError> {
        let limiter = Arc::new(RateLimiter::new(rate));
        let settings = ClientSettings {
            sdkappid: app.sdkappid,
            identifier: app.identifier.clone(),
            secret_key: app.secret_key.clone(),
            base_url: app.base_url.clone(),
            usersig_ttl: app.usersig_ttl,
            timeout: app.timeout,
            max_concurrency: app.max_concurrency,
            retry: RetryPolicy::default(),
        };
        let client = Arc::new(Client::new(
            settings,
            Arc::clone(&limiter),
            self.metrics.observer(app.sdkappid),
        )?);
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        let groups = Arc::new(GroupSets {
            sdkappid: app.sdkappid,
            shard: self.shard,
            lists: Mutex::new(Lists {
                default_interval,
                ..Lists::default()
            }),
            tx,
            store: Arc::clone(&self.store),
        });
        groups.set_static(app, default_interval);
        let (stop, stopped) = shutdown::channel();
        // The app stops on its own trigger (reload) or the daemon's (shutdown).
        let mut daemon_shutdown = self.shutdown.subscribe();
        let relay = stop.clone();
        let mut relay_stopped = stopped.clone();
        let mut tasks = vec![tokio::spawn(async move {
            tokio::select! {
                _ = daemon_shutdown.fired() => relay.fire(),
                _ = relay_stopped.fired() => {}
            }
        })];
        tasks.push(tokio::spawn(dispatch(
            app.sdkappid,
            Arc::clone(&client),
            rx,
            app.max_concurrency,
            Arc::clone(&limiter),
            Arc::clone(&self.store),
            Arc::clone(&self.metrics),
            self.anchor,
            stopped.clone(),
        )));
        if let Some(discover) = &app.discover {
            tasks.push(tokio::spawn(discover_loop(
                app.sdkappid,
                Arc::clone(&client),
                discover.group_types.clone(),
                discover.refresh_interval,
                Arc::clone(&groups),
                stopped,
            )));
        }
        Ok(AppRunner {
            config: without_groups(app),
            limiter,
            groups,
            stop,
            tasks,
        })
    }

    /// Re-reads the config and applies it; a bad config keeps the old one running.
    pub async fn reload(&self) -> Result<(), String> {
        let loaded = match &self.source {
            ConfigSource::File(path) => config::load(path).map_err(|e| e.to_string()),
            ConfigSource::Fixed(config) => Ok(config::Loaded {
                config: (**config).clone(),
                warnings: Vec::new(),
            }),
        };
        match loaded {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    warn!(warning = %w, "config");
                }
                let groups = Self::configured_groups(&loaded.config, self.shard);
                let apps = loaded.config.apps.len();
                self.apply(loaded.config).await;
                self.metrics.set_config_reload(true, unix_now());
                info!(apps, groups, "config reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.set_config_reload(false, unix_now());
                error!(error = %e, "config reload failed; keeping the running config");
                Err(e)
            }
        }
    }

    fn write_state(&self) {
        let Some(path) = self.config().state_file.clone() else {
            return;
        };
        let generation = self.store.generation();
        if self.written_generation.load(Ordering::Acquire) == generation + 1 {
            return;
        }
        let persisted = self.store.persisted();
        match state::write_state_file(&path, &persisted) {
            Ok(()) => {
                // Stored off by one so that 0 means "never written".
                self.written_generation
                    .store(generation + 1, Ordering::Release);
                debug!(path = %path.display(), "state file written");
            }
            Err(e) => warn!(path = %path.display(), error = %e, "cannot write the state file"),
        }
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
/// request in any second); the share is kept as it is and [`Daemon::apply`] warns.
pub fn shard_rate(rate_limit: f64, total_shards: u32) -> f64 {
    let share = rate_limit / f64::from(total_shards.max(1));
    if total_shards > 1 && share >= 1.0 {
        share.floor() / SHARD_JITTER_MARGIN
    } else {
        share
    }
}

fn settings_only(config: &Config) -> Config {
    Config {
        poll_interval: config.poll_interval,
        state_file: config.state_file.clone(),
        value_hashes: config.value_hashes,
        apps: config.apps.iter().map(without_groups).collect(),
    }
}

fn without_groups(app: &AppConfig) -> AppConfig {
    AppConfig {
        groups: Vec::new(),
        ..app.clone()
    }
}

/// Whether a running client can keep serving an app after a reload (only the quota and the
/// group list changed).
fn same_client(old: &AppConfig, new: &AppConfig) -> bool {
    old.base_url == new.base_url
        && old.identifier == new.identifier
        && old.secret_key == new.secret_key
        && old.usersig_ttl == new.usersig_ttl
        && old.timeout == new.timeout
        && old.max_concurrency == new.max_concurrency
        && old.discover == new.discover
}

/// The daemon as the HTTP server sees it.
struct Served {
    daemon: Arc<Daemon>,
    /// The daemon's runtime: the server runs on a runtime of its own, and a reload must start
    /// the apps' tasks here, on the poll thread.
    runtime: tokio::runtime::Handle,
}

impl http::Service for Served {
    fn render_metrics(&self) -> Vec<u8> {
        self.daemon
            .metrics
            .render(&self.daemon.store, self.daemon.config().value_hashes)
    }

    fn is_ready(&self) -> bool {
        self.daemon.ready.load(Ordering::Acquire)
    }

    fn reload(&self) -> BoxFuture<'static, Result<(), String>> {
        let daemon = Arc::clone(&self.daemon);
        let reload = self.runtime.spawn(async move { daemon.reload().await });
        Box::pin(async move {
            reload
                .await
                .unwrap_or_else(|e| Err(format!("the reload did not finish: {e}")))
        })
    }
}

/// One app's dispatcher: polls each group at its slot, oldest-due first.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    sdkappid: u64,
    client: Arc<Client>,
    mut groups: watch::Receiver<Arc<Vec<GroupSpec>>>,
    max_concurrency: usize,
    limiter: Arc<RateLimiter>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    anchor: Anchor,
    mut stop: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(max_concurrency.max(1)));
    let mut scheduler = Scheduler::new(anchor);
    let mut inflight = JoinSet::new();
    let apply_groups = |scheduler: &mut Scheduler, specs: &[GroupSpec]| {
        scheduler.set_groups(specs, Instant::now());
        let demand = scheduler.demand();
        if demand > limiter.rate() * 1.0001 {
            warn!(
                sdkappid,
                groups = specs.len(),
                needed_per_second = demand,
                rate_limit = limiter.rate(),
                "the groups need more requests than the rate limit allows: every group's cycle stretches; see timattr_poll_lag_seconds"
            );
        }
    };
    let initial = groups.borrow_and_update().clone();
    apply_groups(&mut scheduler, &initial);
    loop {
        while inflight.try_join_next().is_some() {}
        let next = scheduler.next_due();
        tokio::select! {
            _ = stop.fired() => break,
            changed = groups.changed() => {
                if changed.is_err() { break; }
                let specs = groups.borrow_and_update().clone();
                apply_groups(&mut scheduler, &specs);
            }
            _ = sleep_until_opt(next) => {
                while let Some((group_id, due)) = scheduler.pop_due(Instant::now()) {
                    let permit = tokio::select! {
                        p = Arc::clone(&slots).acquire_owned() => p.expect("the semaphore is never closed"),
                        _ = stop.fired() => break,
                    };
                    let lag = Instant::now().saturating_duration_since(due);
                    metrics.set_poll_lag(sdkappid, lag.as_secs_f64());
                    let client = Arc::clone(&client);
                    let store = Arc::clone(&store);
                    inflight.spawn(async move {
                        poll(sdkappid, &client, &store, &group_id).await;
                        drop(permit);
                    });
                    while inflight.try_join_next().is_some() {}
                }
            }
        }
    }
    // Stop scheduling; let in-flight requests finish within the grace period.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while inflight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            sdkappid,
            abandoned = inflight.len(),
            "in-flight polls did not finish within the shutdown grace period"
        );
        inflight.abort_all();
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn poll(sdkappid: u64, client: &Client, store: &Store, group_id: &str) {
    let Ok(outcome) = client.get_group_attr(group_id, None).await else {
        return;
    };
    let code = outcome.error_code();
    let before = store.error_code(sdkappid, group_id);
    if let Some(changes) = store.apply(sdkappid, group_id, &outcome, unix_now()) {
        info!(
            sdkappid,
            group_id,
            added = ?changes.added,
            removed = ?changes.removed,
            modified = ?changes.modified,
            "attributes changed"
        );
    }
    // One log line per transition, not per poll: a deleted group polled every 15 s must not
    // flood the log, but the moment it went away must be in it.
    if before != Some(code) {
        match &outcome {
            Outcome::Ok(_) if before.is_some() => {
                info!(
                    sdkappid,
                    group_id,
                    previous_error_code = before,
                    "group readable again"
                )
            }
            Outcome::Ok(_) => {}
            Outcome::Api(e) => warn!(
                sdkappid,
                group_id,
                error_code = e.code(),
                error_class = crate::error_code::classify(e.code()).as_str(),
                // Already scrubbed of the UserSig and key by the client.
                error_info = %e.info,
                "group poll failed"
            ),
            Outcome::NoAnswer(reason) => warn!(
                sdkappid,
                group_id,
                reason = reason.as_str(),
                "group poll got no valid answer"
            ),
        }
    }
    if let Outcome::Ok(attrs) = &outcome {
        debug!(sdkappid, group_id, attributes = attrs.len(), "polled");
    }
}

/// Refreshes an app's discovered groups; a failed refresh keeps the last list and is retried
/// after [`DISCOVERY_RETRY`] (doubling), or the refresh interval if that is shorter.
async fn discover_loop(
    sdkappid: u64,
    client: Arc<Client>,
    group_types: Vec<String>,
    refresh: Duration,
    groups: Arc<GroupSets>,
    mut stop: Shutdown,
) {
    let mut retry = DISCOVERY_RETRY;
    loop {
        let types: Vec<Option<&str>> = if group_types.is_empty() {
            vec![None]
        } else {
            group_types.iter().map(|t| Some(t.as_str())).collect()
        };
        let mut found = Vec::new();
        let mut failed = false;
        for t in types {
            tokio::select! {
                _ = stop.fired() => return,
                listed = client.get_appid_group_list(t) => match listed {
                    Err(_) => return,
                    Ok(Outcome::Ok(ids)) => found.extend(ids),
                    Ok(e) => {
                        warn!(sdkappid, group_type = t.unwrap_or("all"), error = %e, "group discovery failed; keeping the last list");
                        failed = true;
                        break;
                    }
                }
            }
        }
        let wait = if failed {
            // Sooner than a full refresh: an exporter started during a short API outage would
            // otherwise poll none of the app's discovered groups for 10 minutes.
            let wait = retry.min(refresh);
            retry = retry.saturating_mul(2);
            wait
        } else {
            found.sort_unstable();
            found.dedup();
            info!(sdkappid, discovered = found.len(), "groups discovered");
            groups.set_discovered(found);
            retry = DISCOVERY_RETRY;
            refresh
        };
        tokio::select! {
            _ = stop.fired() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs the exporter until `shutdown` fires: serves HTTP on `listener`, polls, writes the
/// state file, and returns once everything has stopped.
pub async fn run(
    options: Options,
    listener: TcpListener,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let (trigger, _) = shutdown::channel();
    let metrics = Arc::new(Metrics::new(options.build));
    metrics.set_shard(options.shard.ordinal, options.shard.total);
    let store = Arc::new(Store::new());
    if let Some(path) = &options.config.state_file {
        match state::read_state_file(path) {
            Ok(persisted) => {
                store.seed_from(persisted);
                info!(path = %path.display(), "state file loaded");
            }
            Err(e) => warn!(path = %path.display(), error = %e, "state file ignored"),
        }
    }
    let daemon = Arc::new(Daemon {
        store,
        metrics: Arc::clone(&metrics),
        shard: options.shard,
        source: options.source,
        current: Mutex::new(Arc::new(settings_only(&options.config))),
        apps: tokio::sync::Mutex::new(HashMap::new()),
        ready: AtomicBool::new(false),
        shutdown: trigger.clone(),
        anchor: Anchor::now(),
        written_generation: AtomicU64::new(0),
    });
    daemon.apply(options.config).await;
    metrics.set_config_reload(true, unix_now());
    daemon.ready.store(true, Ordering::Release);

    let server = {
        let service: Arc<dyn http::Service> = Arc::new(Served {
            daemon: Arc::clone(&daemon),
            runtime: tokio::runtime::Handle::current(),
        });
        let stop = trigger.subscribe().done();
        http::serve_on_own_thread(listener, options.server, service, stop)?
    };
    let writer = {
        let daemon = Arc::clone(&daemon);
        let mut stop = trigger.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATE_WRITE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.fired() => break,
                    _ = tick.tick() => {
                        let d = Arc::clone(&daemon);
                        let _ = tokio::task::spawn_blocking(move || d.write_state()).await;
                    }
                }
            }
        })
    };

    let reloader = {
        let daemon = Arc::clone(&daemon);
        let mut stop = trigger.subscribe();
        let mut reloads = options.reloads;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.fired() => break,
                    r = reloads.recv() => match r {
                        Some(()) => { let _ = daemon.reload().await; }
                        None => break,
                    }
                }
            }
        })
    };

    let mut shutdown = shutdown;
    shutdown.fired().await;
    info!("shutting down");
    daemon.ready.store(false, Ordering::Release);
    trigger.fire();
    let runners: Vec<AppRunner> = daemon.apps.lock().await.drain().map(|(_, r)| r).collect();
    for runner in runners {
        for task in runner.tasks {
            let _ = task.await;
        }
    }
    let _ = writer.await;
    let _ = reloader.await;
    {
        let d = Arc::clone(&daemon);
        let _ = tokio::task::spawn_blocking(move || d.write_state()).await;
    }
    server.await
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn discovered_groups_follow_a_reloaded_poll_interval() {
        let config = crate::config::parse(
            "apps:\n  - sdkappid: 1400000000\n    endpoint: http://127.0.0.1:9/\n    identifier: admin\n    secret_key: k\n    groups: [\"@TGS#static\"]\n",
            &|_| None,
            std::path::Path::new("."),
        )
        .expect("valid")
        .config;
        let app = &config.apps[0];
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        let sets = GroupSets {
            sdkappid: app.sdkappid,
            shard: Shard::default(),
            lists: Mutex::new(Lists {
                default_interval: Duration::from_secs(60),
                ..Lists::default()
            }),
            tx,
            store: Arc::new(Store::new()),
        };
        sets.set_static(app, Duration::from_secs(60));
        sets.set_discovered(vec!["@TGS#found".to_owned(), "@TGS#static".to_owned()]);
        let interval_of = |id: &str| {
            rx.borrow()
                .iter()
                .find(|g| g.id.as_ref() == id)
                .map(|g| g.interval)
        };
        assert_eq!(
            rx.borrow().len(),
            2,
            "a group both configured and found counts once"
        );
        assert_eq!(interval_of("@TGS#found"), Some(Duration::from_secs(60)));
        // A reload that only changes the global poll_interval.
        sets.set_static(app, Duration::from_secs(15));
        assert_eq!(interval_of("@TGS#found"), Some(Duration::from_secs(15)));
        assert_eq!(
            interval_of("@TGS#static"),
            Some(app.groups[0].poll_interval)
        );
    }
}
