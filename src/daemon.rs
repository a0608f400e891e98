//! The running exporter: starts and stops one owner per app ([`crate::app`]), applies reloads,
//! writes the state file, and shuts down.
//!
//! [`run`] takes its listener and its shutdown trigger as arguments (as mini-redis does), so
//! tests start the whole daemon on `127.0.0.1:0` and stop it with a [`crate::shutdown::Trigger`].
//! Polls write into the [`Store`]; `/metrics` renders from there and never calls the upstream.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};

use crate::app::{self, Plan, Stop};
use crate::auto_reload::{self, Fingerprint};
use crate::callback::{Inbox, Receiver};
use crate::config::{self, Config};
use crate::http::{self, ServerOptions};
use crate::metrics::Metrics;
use crate::schedule::Anchor;
use crate::secret::SecretKey;
use crate::shard::{Shard, shard_rate};
use crate::shutdown::{self, Shutdown, Trigger};
use crate::state_file;
use crate::store::Store;

/// How often the state file is written when the state changed (SPEC: every 30 s).
pub const STATE_WRITE_INTERVAL: Duration = Duration::from_secs(30);

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
    /// `--callback.listen-address`, bound: where Tencent's webhooks arrive (SPEC "Callbacks").
    pub callbacks: Option<TcpListener>,
    /// `--config.auto-reload-interval`, when on (not `0s`).
    pub auto_reload: Option<Duration>,
}

/// The daemon's shared core, handed to the HTTP server as its [`http::Service`].
pub struct Daemon {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    shard: Shard,
    source: ConfigSource,
    /// The running config without its group lists (the owners hold those).
    current: Mutex<Arc<Config>>,
    /// One owner per app; locked for the length of a reload, so reloads apply one at a time.
    apps: tokio::sync::Mutex<HashMap<u64, app::Handle>>,
    ready: AtomicBool,
    /// Fired at shutdown, before the owners are stopped: clients send no further attempt.
    stopping: Trigger,
    anchor: Anchor,
    /// The store generation last written to the state file, plus one (0: never written).
    written_generation: AtomicU64,
    /// The callbacks endpoint's view of the apps, updated by every apply.
    callbacks: Arc<Receiver>,
    /// Whether callbacks are received at all (a startup warning for apps without a token).
    callbacks_on: bool,
    /// Reload requests so far, and the last reload: the count it covered and its result.
    reload_requests: AtomicU64,
    last_reload: tokio::sync::Mutex<Option<(u64, Result<(), String>)>>,
    /// The config's files as the last successful load read them (`ConfigSource::File` only):
    /// what `--config.auto-reload-interval` compares against.
    applied: Mutex<Option<Fingerprint>>,
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

    /// Applies a config: starts owners of new apps, stops those of removed ones (and drops
    /// their series), and hands every other app its new config, so the state and counters of
    /// groups that stay survive whatever changed.
    async fn apply(&self, config: Config) {
        let previous = std::mem::replace(
            &mut *self.current.lock().unwrap_or_else(|p| p.into_inner()),
            Arc::new(settings_only(&config)),
        );
        if previous.state_file != config.state_file {
            // A new path is written at the next tick even if nothing changed since the last one.
            self.written_generation.store(0, Ordering::Release);
        }
        let mut apps = self.apps.lock().await;
        let wanted: BTreeSet<u64> = config.apps.iter().map(|a| a.sdkappid).collect();
        let gone: Vec<u64> = apps
            .keys()
            .copied()
            .filter(|id| !wanted.contains(id))
            .collect();
        for sdkappid in gone {
            if let Some(owner) = apps.remove(&sdkappid) {
                owner.stop(Stop::Removed).await;
            }
            self.store.remove_app(sdkappid);
            self.metrics.remove_app(sdkappid);
            info!(sdkappid, "app removed from the config; its series are gone");
        }
        let default_interval = config.poll_interval;
        let tokens: HashMap<u64, Option<SecretKey>> = config
            .apps
            .iter()
            .map(|a| (a.sdkappid, a.callback_token.clone()))
            .collect();
        for app in config.apps {
            if app.rate_limit < f64::from(self.shard.total) && self.shard.total > 1 {
                warn!(
                    sdkappid = app.sdkappid,
                    rate_limit = app.rate_limit,
                    total_shards = self.shard.total,
                    "rate_limit is below one request a second per shard: together the shards may exceed it"
                );
            }
            let sdkappid = app.sdkappid;
            let plan = Plan {
                rate: shard_rate(app.rate_limit, self.shard.total),
                app,
                default_interval,
            };
            match apps.get(&sdkappid) {
                Some(owner) => owner.configure(plan),
                None => match app::start(plan, self.shared()) {
                    Ok(owner) => {
                        apps.insert(sdkappid, owner);
                    }
                    Err(e) => {
                        error!(sdkappid, error = %e, "cannot start the app's client");
                    }
                },
            }
        }
        let inboxes = apps
            .iter()
            .map(|(&sdkappid, owner)| {
                let token = tokens.get(&sdkappid).cloned().flatten();
                if self.callbacks_on && token.is_none() {
                    warn!(
                        sdkappid,
                        "no callback_token: this app's callbacks are accepted unsigned"
                    );
                }
                let mailbox = owner.mailbox();
                (sdkappid, Inbox { token, mailbox })
            })
            .collect();
        self.callbacks.set_apps(inboxes);
    }

    fn shared(&self) -> app::Shared {
        app::Shared {
            store: Arc::clone(&self.store),
            metrics: Arc::clone(&self.metrics),
            shard: self.shard,
            anchor: self.anchor,
            stopping: self.stopping.subscribe(),
        }
    }

    /// Re-reads the config and applies it; a bad config keeps the old one running. Requests
    /// that arrive while a reload runs are merged into the next one (SPEC "Reload"): each
    /// waits its turn, and is answered by the first reload that started after it arrived.
    pub async fn reload(self: &Arc<Self>) -> Result<(), String> {
        let asked = self.reload_requests.fetch_add(1, Ordering::AcqRel) + 1;
        let mut last = self.last_reload.lock().await;
        if let Some((covered, result)) = &*last
            && *covered >= asked
        {
            return result.clone();
        }
        let covers = self.reload_requests.load(Ordering::Acquire);
        let result = self.reload_now().await;
        *last = Some((covers, result.clone()));
        result
    }

    async fn reload_now(self: &Arc<Self>) -> Result<(), String> {
        let mut fingerprint = None;
        let loaded = match &self.source {
            // On the blocking pool and under a deadline: a config or key on a hung mount (or a
            // FIFO) must stall neither the poll thread nor, at SIGTERM, the drain.
            ConfigSource::File(path) => {
                // Taken before the load reads the files: a change made meanwhile is seen at the
                // next auto-reload tick rather than lost.
                fingerprint = auto_reload::fingerprint_off_thread(
                    path.clone(),
                    auto_reload::named_files(&self.config()),
                )
                .await;
                let path = path.clone();
                let load = tokio::task::spawn_blocking(move || config::load(&path));
                match tokio::time::timeout(auto_reload::READ_TIMEOUT, load).await {
                    Err(_) => Err(format!(
                        "reading the config and the files it names took over {}s",
                        auto_reload::READ_TIMEOUT.as_secs()
                    )),
                    Ok(joined) => joined
                        .map_err(|e| format!("reading the config failed: {e}"))
                        .and_then(|loaded| loaded.map_err(|e| e.to_string())),
                }
            }
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
                let moved = self.config().state_file != loaded.config.state_file;
                self.apply(loaded.config).await;
                if moved {
                    // The new path holds the state at once, not only after the next change.
                    let daemon = Arc::clone(self);
                    let _ = tokio::task::spawn_blocking(move || daemon.write_state()).await;
                }
                self.metrics.set_config_reload(true, unix_now());
                if fingerprint.is_some() {
                    *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = fingerprint;
                }
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

    /// One `--config.auto-reload-interval` tick: reloads when the config file or a file it
    /// names differs from what the last successful load read.
    async fn reload_if_changed(self: &Arc<Self>, path: &std::path::Path) {
        let files = auto_reload::named_files(&self.config());
        let Some(now) = auto_reload::fingerprint_off_thread(path.to_path_buf(), files).await else {
            warn!(
                path = %path.display(),
                "auto-reload: reading the config and the files it names timed out"
            );
            return;
        };
        if *self.applied.lock().unwrap_or_else(|p| p.into_inner()) == Some(now) {
            return;
        }
        info!(path = %path.display(), "auto-reload: the config or a file it names changed; reloading");
        let _ = self.reload().await;
    }

    fn write_state(&self) {
        let Some(path) = self.config().state_file.clone() else {
            return;
        };
        let generation = self.store.generation();
        if self.written_generation.load(Ordering::Acquire) == generation + 1 {
            return;
        }
        // Streamed from the store into the file, chunk by chunk: no copy of every group, no
        // buffer of the whole file.
        let written = state_file::StateFileWriter::create(&path).and_then(|mut file| {
            self.store.persist_into(&mut file)?;
            file.commit()
        });
        match written {
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

fn settings_only(config: &Config) -> Config {
    Config {
        poll_interval: config.poll_interval,
        state_file: config.state_file.clone(),
        value_hashes: config.value_hashes,
        exclude_metrics: config.exclude_metrics.clone(),
        apps: config.apps.iter().map(app::without_groups).collect(),
    }
}

/// The daemon as the HTTP server sees it.
struct Served {
    daemon: Arc<Daemon>,
    /// The daemon's runtime: the server runs on a runtime of its own, and a reload must start
    /// the apps' tasks here, on the poll thread.
    runtime: tokio::runtime::Handle,
}

impl http::Service for Served {
    fn render_metrics(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let config = self.daemon.config();
        self.daemon.metrics.render_to(
            &self.daemon.store,
            config.value_hashes,
            config.exclude_metrics.as_deref(),
            out,
        )
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
        // On the blocking pool and under a deadline: a FIFO or a hung mount at the path costs
        // one blocking thread, not the start (the state file is never fatal).
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || state_file::read_state_file(&path))
        };
        match tokio::time::timeout(auto_reload::READ_TIMEOUT, read).await {
            Ok(Ok(Ok(persisted))) => {
                store.seed_from(persisted);
                info!(path = %path.display(), "state file loaded");
            }
            Ok(Ok(Err(e))) if e.is_missing() => {
                info!(path = %path.display(), "no state file yet: starting without baselines");
            }
            Ok(Ok(Err(e))) => warn!(path = %path.display(), error = %e, "state file ignored"),
            Ok(Err(e)) => warn!(path = %path.display(), error = %e, "state file ignored"),
            Err(_) => warn!(
                path = %path.display(),
                timeout_seconds = auto_reload::READ_TIMEOUT.as_secs(),
                "state file ignored: reading it did not finish in time"
            ),
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
        stopping: trigger.clone(),
        anchor: Anchor::now(),
        written_generation: AtomicU64::new(0),
        callbacks: Arc::new(Receiver::new(metrics.callback_observer())),
        callbacks_on: options.callbacks.is_some(),
        reload_requests: AtomicU64::new(0),
        last_reload: tokio::sync::Mutex::new(None),
        applied: Mutex::new(None),
    });
    if let ConfigSource::File(path) = &daemon.source {
        let fp = auto_reload::fingerprint_off_thread(
            path.clone(),
            auto_reload::named_files(&options.config),
        )
        .await;
        *daemon.applied.lock().unwrap_or_else(|p| p.into_inner()) = fp;
    }
    daemon.apply(options.config).await;
    metrics.set_config_reload(true, unix_now());
    daemon.ready.store(true, Ordering::Release);

    let server = {
        let service: Arc<dyn http::Service> = Arc::new(Served {
            daemon: Arc::clone(&daemon),
            runtime: tokio::runtime::Handle::current(),
        });
        let stop = trigger.subscribe().done();
        http::serve_on_own_thread(listener, options.server.clone(), service, stop)?
    };
    let callbacks = match options.callbacks {
        None => None,
        Some(listener) => {
            let service: Arc<dyn http::CallbackService> = Arc::clone(&daemon.callbacks) as _;
            let stop = trigger.subscribe().done();
            // The metrics listener's web config gives it TLS; basic auth never applies to it.
            Some(http::serve_on_own_thread(
                listener,
                options.server.clone(),
                service,
                stop,
            )?)
        }
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

    let watcher = match (&daemon.source, options.auto_reload) {
        (ConfigSource::File(path), Some(every)) => {
            let daemon = Arc::clone(&daemon);
            let path = path.clone();
            let mut stop = trigger.subscribe();
            Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = stop.fired() => break,
                        _ = tick.tick() => daemon.reload_if_changed(&path).await,
                    }
                }
            }))
        }
        (ConfigSource::Fixed(_), Some(_)) => {
            warn!("--config.auto-reload-interval has no file to watch (--demo)");
            None
        }
        (_, None) => None,
    };

    let mut shutdown = shutdown;
    shutdown.fired().await;
    info!("shutting down");
    daemon.ready.store(false, Ordering::Release);
    trigger.fire();
    // The owners drain side by side, so the grace period is the whole exporter's, not each
    // app's.
    let owners: Vec<app::Handle> = daemon.apps.lock().await.drain().map(|(_, o)| o).collect();
    futures::future::join_all(owners.into_iter().map(|o| o.stop(Stop::Shutdown))).await;
    let _ = writer.await;
    // A reload may be waiting on a hung file read (up to `auto_reload::READ_TIMEOUT`); the
    // shutdown does not wait for it.
    reloader.abort();
    let _ = reloader.await;
    if let Some(watcher) = watcher {
        watcher.abort();
        let _ = watcher.await;
    }
    {
        // Bounded too: a hung mount must not hold the exit (SPEC: exit 0 after a clean
        // shutdown); the write either lands whole or not at all (temporary file and rename).
        let d = Arc::clone(&daemon);
        let write = tokio::task::spawn_blocking(move || d.write_state());
        if tokio::time::timeout(auto_reload::READ_TIMEOUT, write)
            .await
            .is_err()
        {
            warn!(
                timeout_seconds = auto_reload::READ_TIMEOUT.as_secs(),
                "the state file write at shutdown did not finish in time; exiting without it"
            );
        }
    }
    if let Some(callbacks) = callbacks {
        callbacks.await?;
    }
    server.await
}
