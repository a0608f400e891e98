//! A faithful fake of the Tencent Cloud Chat REST API, for the tests, the benchmarks, the
//! exporter's `--demo` mode and outside tools. `reference/tencent-chat-rest-api.md` is its
//! contract; `docs/fake-api.md` is its manual.
//!
//! [`Fake`] holds the state (apps, groups, attributes, faults, counters) and is driven three
//! ways: by API clients over HTTP, by tests through its methods, and by shell users and the
//! end-to-end test through the control endpoints under `/fake/`, which the real API does not use.
//!
//! # API endpoints (all `POST`, answers always HTTP 200 unless a fault says otherwise)
//! `/v4/group_open_attr_http_svc/get_group_attr` and `/v4/group_open_http_svc/` +
//! `modify_group_attr`, `set_group_attr`, `delete_group_attr`, `clear_group_attr`,
//! `destroy_group`, `get_appid_group_list`, `create_group` (`{"Type","GroupId"?,"Name"?}`).
//!
//! Checks, in order, and the `ErrorCode` each answers:
//! 1. unknown path (any method) → 60009; a method other than POST → 60002;
//! 2. `sdkappid` missing → 60012, not a number → 60006, unknown → 70020;
//! 3. the app's fault, if one is set;
//! 4. `contenttype` other than `json` → 60002; `random` missing or not a u32 → 70402;
//!    `identifier` missing → 60004; `usersig`: [`crate::usersig::verify`]'s code (70001 expired,
//!    70002 empty, 70003 malformed, 70009 wrong key, 70013 other identifier, 70014 other
//!    SDKAppID); an identifier that is not the app admin → 60010 (10007 for
//!    `get_appid_group_list`, as the reference lists);
//! 5. the app's rate limit for this API (sliding one-second window of accepted requests;
//!    default 200/s `get_group_attr`, 1/s `get_appid_group_list`, 200/s each write) → 60007;
//! 6. body over 1 MiB → 60002; empty or not JSON → 60003; missing or mistyped fields → 10004;
//! 7. the group's fault, if one is set;
//! 8. group ID empty, over 48 bytes or not printable ASCII without spaces → 10015; no such
//!    group (or destroyed) → 10010; its type without attribute support → 10007;
//! 9. writes: key over 32 bytes → 10045, value over 4,000 bytes → 10046, over 16 keys → 10047,
//!    values over 16,000 bytes in all → 10048, over 5 writes to the group within a second → 10049;
//!    `delete_group_attr` of a key the group does not hold → 10050 (nothing is deleted);
//!    `clear_group_attr` on a Community group → 10007;
//!    `create_group` on a used ID → 10021; a `get_appid_group_list` page over 1 MB → 10018.
//!
//! # Control endpoints
//! | request | effect |
//! |---|---|
//! | `GET /fake/healthy` | 200 `ok` (a probe target for blackbox_exporter) |
//! | `GET /fake/counts` | [`Counts`] as JSON |
//! | `GET /fake/requests?sdkappid=N&api=NAME` | `{"seconds":[..]}`: arrival times since start |
//! | `POST /fake/reset` | zero the counts and arrival times |
//! | `POST /fake/apps` `{"sdkappid","identifier","secret_key","rate_limits"?,"attr_unsupported"?}` | add or replace an app |
//! | `POST /fake/groups` `{"sdkappid","group_id","type"}` | create a group |
//! | `GET /fake/groups/{sdkappid}/{group_id}/attrs` | `{"attrs":{..}}` (`#` in an ID as `%23`) |
//! | `POST /fake/groups/{sdkappid}/{group_id}/attrs?mode=set\|modify\|delete\|clear` | body `{"k":"v"}` (`["k"]` for delete) |
//! | `POST /fake/attrs` `{"sdkappid","group_id","mode"?,"attrs"}` | the same with the ID in the body |
//! | `POST /fake/destroy` `{"sdkappid","group_id"}` | destroy a group |
//! | `POST /fake/fault` `{"sdkappid","group_id"?,"fault":F or null}` | set or clear a fault ([`Fault`]'s JSON form) |
//! | `POST /fake/key` `{"sdkappid","secret_key"}` | rotate the app's key |
//! | `POST /fake/attr_support` `{"sdkappid","group_type","supported"}` | switch attribute support per type |
//! | `POST /fake/callback` `{"sdkappid"?,"url" or null,"token"?,"events"?}` | set or clear a callback target ([`Fake::set_callback`]; no `sdkappid`: [`Fake::set_default_callback`]) |
//! | `GET /fake/callbacks` | `{"sent":[..],"dropped":N}`: [`Fake::sent_callbacks`] |
//! | `POST /fake/callback/raw` `{"url","query"?,"body"?}` | `{"status":N}` or `{"error":..}`: [`Fake::send_raw_callback`] |
//!
//! Control answers: 200 `{"ok":true}`; 400 `{"error":..}` for a malformed request; 422
//! `{"error_code":N}` when the fake's own rules reject it (the code the API would answer).
//!
//! # Callbacks
//! After each successful attribute write, `destroy_group` and `create_group`, however made, the
//! fake sends the matching Tencent callback to the app's [`CallbackTarget`], if any, from a
//! bounded queue, so the call is never slowed (see `callback.rs`).

mod api;
mod callback;
mod control;
mod demo;
mod fault;
mod model;
mod scenario;
mod stats;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use callback::{
    CALLBACK_QUEUE_CAPACITY, CALLBACK_TIMEOUT, CallbackEvent, CallbackTarget, MAX_SENT_CALLBACKS,
    OPT_PLATFORM, SentCallback, callback_sign,
};
pub use demo::{
    DEMO_CALLBACK_TOKEN, DEMO_IDENTIFIER, DEMO_POLL_INTERVAL, DEMO_SDKAPPID, DEMO_SECRET_KEY,
    demo_config, demo_group_ids, demo_scenario,
};
pub use fault::{Fault, FaultTarget, HANG_MAX};
pub use model::{
    AppSpec, GroupType, MAX_GROUP_ID_BYTES, MAX_KEY_BYTES, MAX_KEYS, MAX_LIST_LIMIT,
    MAX_TOTAL_VALUE_BYTES, MAX_VALUE_BYTES, MAX_WRITES_PER_SECOND, NEXT_CURSOR_BASE, RateLimits,
    valid_group_id,
};
pub use scenario::{
    Action, Event, Generate, GroupSpec, Scenario, ScenarioError, Schedule, parse_duration,
};
pub use stats::{AppCounts, Counts, MAX_TIMES_PER_API, Tally};

use crate::secret::SecretKey;
use callback::{AttrOption, Callbacks, Change};
use fault::FaultSlot;
use model::{App, SDKAPPID_NOT_FOUND, WriteKind};
use stats::Stats;

/// How long `serve` waits for open connections to finish after shutdown fires.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The fake API. Cheap to clone (an `Arc`); every control method is synchronous and takes a
/// lock only briefly, never across an await.
#[derive(Clone)]
pub struct Fake {
    inner: Arc<Inner>,
}

struct Inner {
    /// When the fake was made; arrival times and scenario events count from here.
    start: Instant,
    /// Apps are added rarely and looked up on every request: a read lock, then the app's own
    /// mutex, so requests to different apps do not contend.
    apps: RwLock<HashMap<u64, Arc<Mutex<App>>>>,
    stats: Mutex<Stats>,
    events: Vec<Event>,
    /// Callback targets, the send queue and what was sent.
    callbacks: Callbacks,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Fake {
    /// A fake holding the scenario's apps and groups. Its events run while it serves.
    /// Entries the rules reject (a group with an invalid ID, attributes over the limits) are
    /// skipped with a warning; [`Scenario::from_yaml`] reports them as errors instead.
    pub fn new(scenario: Scenario) -> Fake {
        let start = Instant::now();
        let fake = Fake {
            inner: Arc::new(Inner {
                start,
                apps: RwLock::new(HashMap::new()),
                stats: Mutex::new(Stats::default()),
                events: scenario.events.clone(),
                callbacks: Callbacks::new(start),
            }),
        };
        for app in scenario.apps.iter().cloned() {
            fake.add_app(app);
        }
        if let Err(problems) = scenario::populate(&fake, &scenario) {
            for p in problems {
                tracing::warn!("scenario: {p}");
            }
        }
        fake
    }

    /// Binds 127.0.0.1:0 and serves until the returned [`FakeServer`] is dropped or shut down.
    pub async fn start(scenario: Scenario) -> std::io::Result<FakeServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let fake = Fake::new(scenario);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(fake.clone().serve(listener, async move {
            let _ = rx.await;
        }));
        Ok(FakeServer {
            addr,
            fake,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// Serves the API and the control endpoints on `listener`, and runs the scenario's timed
    /// events, until `shutdown` completes; then lets open connections finish (hanging
    /// requests are let go) for up to a few seconds.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task holds a clone; when all have dropped, they are done.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let events = {
            let mut rx = stop_rx.clone();
            let fake = self.clone();
            tokio::spawn(fake.run_events(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }))
        };
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment and go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            tracing::trace!(%peer, "connection");
            let fake = self.clone();
            let stop_rx = stop_rx.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                api::serve_connection(fake, stream, stop_rx).await;
                drop(done);
            });
        }
        let _ = stop_tx.send(true);
        drop(done_tx);
        if tokio::time::timeout(SHUTDOWN_GRACE, done_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the shutdown grace period");
        }
        events.abort();
        Ok(())
    }

    /// Runs the scenario's timed events, counting from the fake's start, until `shutdown`.
    /// [`Fake::serve`] calls it; tests on a paused clock can call it directly.
    pub async fn run_events(self, shutdown: impl Future<Output = ()>) {
        let start = self.inner.start;
        let runs = self
            .inner
            .events
            .iter()
            .map(|event| scenario::run_event(&self, start, event));
        tokio::select! {
            _ = futures::future::join_all(runs) => {}
            () = shutdown => {}
        }
    }

    fn app(&self, sdkappid: u64) -> Option<Arc<Mutex<App>>> {
        self.inner
            .apps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&sdkappid)
            .cloned()
    }

    /// Runs `f` on the app, or answers 70020 when there is none.
    fn with_app<R>(
        &self,
        sdkappid: u64,
        f: impl FnOnce(&mut App) -> Result<R, i64>,
    ) -> Result<R, i64> {
        let app = self.app(sdkappid).ok_or(SDKAPPID_NOT_FOUND)?;
        let mut app = lock(&app);
        f(&mut app)
    }

    /// Adds an app, or replaces one with the same SDKAppID (dropping its groups).
    pub fn add_app(&self, app: AppSpec) {
        let sdkappid = app.sdkappid;
        self.inner
            .apps
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(sdkappid, Arc::new(Mutex::new(App::new(app))));
    }

    /// Creates a group; sends `Group.CallbackAfterCreateGroup` if the app's target wants it.
    pub fn create_group(
        &self,
        sdkappid: u64,
        group_id: &str,
        group_type: GroupType,
    ) -> Result<(), i64> {
        self.with_app(sdkappid, |app| {
            app.create_group(group_id, group_type)?;
            let group_id = group_id.to_owned();
            self.changed(app, Change::Created { group_id }, None);
            Ok(())
        })
    }

    /// Replaces all attributes of a group. The documented limits apply (10045..10048), except
    /// the 5 writes/s, which binds API clients only. Like every attribute write here, sends
    /// `Group.CallbackAfterGroupAttrChanged` if the app's target wants it.
    pub fn set_attrs(
        &self,
        sdkappid: u64,
        group_id: &str,
        attrs: &[(&str, &str)],
    ) -> Result<(), i64> {
        self.write_attrs(sdkappid, group_id, AttrOption::Set, attrs)
    }

    /// Adds or updates attributes, keeping the others; limits as for [`Fake::set_attrs`].
    pub fn modify_attrs(
        &self,
        sdkappid: u64,
        group_id: &str,
        attrs: &[(&str, &str)],
    ) -> Result<(), i64> {
        self.write_attrs(sdkappid, group_id, AttrOption::Modify, attrs)
    }

    /// Removes the named attributes; a key the group does not hold answers 10050 (and nothing
    /// is deleted), as `delete_group_attr` does.
    pub fn delete_attrs(&self, sdkappid: u64, group_id: &str, keys: &[&str]) -> Result<(), i64> {
        self.with_app(sdkappid, |app| {
            app.delete_attrs(group_id, keys, None)?;
            let attrs = keys.iter().map(|k| (*k, "")).collect();
            let change = Change::Attrs {
                group_id,
                option: AttrOption::Delete,
                attrs,
            };
            self.changed(app, change, None);
            Ok(())
        })
    }

    /// Removes every attribute; a Community group answers 10007, as `clear_group_attr` does.
    pub fn clear_attrs(&self, sdkappid: u64, group_id: &str) -> Result<(), i64> {
        self.with_app(sdkappid, |app| {
            app.clear_attrs(group_id, None)?;
            let change = Change::Attrs {
                group_id,
                option: AttrOption::Clear,
                attrs: Vec::new(),
            };
            self.changed(app, change, None);
            Ok(())
        })
    }

    fn write_attrs(
        &self,
        sdkappid: u64,
        group_id: &str,
        option: AttrOption,
        attrs: &[(&str, &str)],
    ) -> Result<(), i64> {
        let kind = match option {
            AttrOption::Modify => WriteKind::Modify,
            _ => WriteKind::Set,
        };
        self.with_app(sdkappid, |app| {
            app.write_attrs(group_id, kind, attrs, None)?;
            let change = Change::Attrs {
                group_id,
                option,
                attrs: attrs.to_vec(),
            };
            self.changed(app, change, None);
            Ok(())
        })
    }

    /// The group's attributes in API order, or the code `get_group_attr` would answer.
    pub fn attrs(&self, sdkappid: u64, group_id: &str) -> Result<Vec<(String, String)>, i64> {
        self.with_app(sdkappid, |app| Ok(app.attr_group(group_id)?.attrs.clone()))
    }

    /// Destroys a group: afterwards every call naming it answers 10010. Sends
    /// `Group.CallbackAfterGroupDestroyed` if the app's target wants it.
    pub fn destroy_group(&self, sdkappid: u64, group_id: &str) -> Result<(), i64> {
        self.with_app(sdkappid, |app| {
            let group = app.destroy_group(group_id)?;
            self.changed(app, Change::Destroyed { group_id, group }, None);
            Ok(())
        })
    }

    /// Sets (`Some`) or clears (`None`) where the app's callbacks go. An app without a target
    /// of its own uses the one of [`Fake::set_default_callback`], if any; an app without
    /// either sends none. The app need not exist yet, and the target outlives
    /// [`Fake::add_app`] replacing it.
    pub fn set_callback(&self, sdkappid: u64, target: Option<CallbackTarget>) {
        self.inner.callbacks.set_target(Some(sdkappid), target);
    }

    /// The callback target of every app without one of its own (`timattr_fake_api
    /// --callback-url`), or none.
    pub fn set_default_callback(&self, target: Option<CallbackTarget>) {
        self.inner.callbacks.set_target(None, target);
    }

    /// Every callback sent so far, oldest first (the last [`MAX_SENT_CALLBACKS`]), each once
    /// its answer came or did not. Raw sends are not in it.
    pub fn sent_callbacks(&self) -> Vec<SentCallback> {
        self.inner.callbacks.sent()
    }

    /// Callbacks dropped because the queue was full ([`CALLBACK_QUEUE_CAPACITY`]).
    pub fn dropped_callbacks(&self) -> u64 {
        self.inner.callbacks.dropped()
    }

    /// POSTs `body` to `url` with `query` appended as it is, through the client that sends
    /// the callbacks, and answers the receiver's HTTP status or the transport error: for
    /// forged, stale, unsigned or foreign callbacks. Not queued and not recorded.
    pub async fn send_raw_callback(
        &self,
        url: &str,
        query: &str,
        body: impl Into<bytes::Bytes>,
    ) -> Result<u16, String> {
        self.inner.callbacks.send_raw(url, query, body.into()).await
    }

    /// Queues the callback a change made to `app` calls for, if its target wants it.
    fn changed(&self, app: &App, change: Change<'_>, client_ip: Option<std::net::IpAddr>) {
        self.inner.callbacks.changed(app, change, client_ip);
    }

    /// Number of groups the app holds (0 for an unknown app).
    pub fn group_count(&self, sdkappid: u64) -> usize {
        self.with_app(sdkappid, |app| Ok(app.groups.len()))
            .unwrap_or(0)
    }

    /// Whether groups of this type answer attribute calls (else 10007).
    pub fn set_attr_support(&self, sdkappid: u64, group_type: GroupType, supported: bool) {
        if self
            .with_app(sdkappid, |app| {
                app.set_attr_support(group_type, supported);
                Ok(())
            })
            .is_err()
        {
            tracing::warn!(sdkappid, "set_attr_support: no such app");
        }
    }

    /// Rotates the app's key: UserSigs made with the old one now answer 70009.
    pub fn set_secret_key(&self, sdkappid: u64, key: SecretKey) {
        if self
            .with_app(sdkappid, |app| {
                app.set_secret_key(key);
                Ok(())
            })
            .is_err()
        {
            tracing::warn!(sdkappid, "set_secret_key: no such app");
        }
    }

    /// Sets (`Some`) or clears (`None`) a fault. A group fault may name a group that does not
    /// exist; it applies to requests naming that ID.
    pub fn set_fault(&self, target: FaultTarget, fault: Option<Fault>) {
        let sdkappid = target.sdkappid();
        let done = self.with_app(sdkappid, |app| {
            match (target, fault) {
                (FaultTarget::App(_), f) => app.app_fault = f.map(FaultSlot::new),
                (FaultTarget::Group(_, id), Some(f)) => {
                    app.group_faults.insert(id, FaultSlot::new(f));
                }
                (FaultTarget::Group(_, id), None) => {
                    app.group_faults.remove(&id);
                }
            }
            Ok(())
        });
        if done.is_err() {
            tracing::warn!(sdkappid, "set_fault: no such app");
        }
    }

    /// A snapshot of the request counters.
    pub fn counts(&self) -> Counts {
        lock(&self.inner.stats).counts.clone()
    }

    /// Arrival times (since the fake started) of every request to `api` (`"get_group_attr"`,
    /// ...) of the app, oldest first; the last [`MAX_TIMES_PER_API`] are kept.
    pub fn request_times(&self, sdkappid: u64, api: &str) -> Vec<Duration> {
        lock(&self.inner.stats).times(sdkappid, api)
    }

    /// [`Fake::request_times`] with the group each request named, for per-group intervals.
    pub fn request_times_with_groups(
        &self,
        sdkappid: u64,
        api: &str,
    ) -> Vec<(Duration, Option<String>)> {
        lock(&self.inner.stats).times_with_groups(sdkappid, api)
    }

    pub fn reset_counts(&self) {
        lock(&self.inner.stats).reset();
    }

    fn record(
        &self,
        sdkappid: u64,
        api: &'static str,
        group: Option<&str>,
        outcome: &str,
        at: Instant,
    ) {
        let since = at.saturating_duration_since(self.inner.start);
        lock(&self.inner.stats).record(sdkappid, api, group, outcome, since);
    }
}

/// A fake serving on 127.0.0.1; stops when dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub fake: Fake,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl FakeServer {
    /// `http://127.0.0.1:PORT/`, the `endpoint` to give a client.
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("an address makes a valid URL")
    }

    /// Stops serving and waits until the server has let go of its connections.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl std::ops::Deref for FakeServer {
    type Target = Fake;
    fn deref(&self) -> &Fake {
        &self.fake
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
