//! One app's owner: the single long-lived task that polls an app's groups.
//!
//! It holds everything that must outlive a reload: the app's rate limiter and list slots (only
//! their rate changes), both group lists (configured and discovered), the scheduler, the polls
//! in flight, and the client (swapped, not restarted, when a reload changes the endpoint, the
//! key or the timeout; polls of the old client still queued or retrying pass through the same
//! limiter). Everything that changes it arrives as a [`Message`] on one channel and is handled
//! between two dispatches, under overload too: the owner takes each poll's first rate-limit
//! slot itself, so it never sits in a loop that cannot hear a reload.
//!
//! ```text
//!   daemon ──Configure/Stop──▶ ┌─────────── owner task ───────────┐
//!   listing task ─Discovered─▶ │ lists → scheduler → slot → poll  │──▶ store
//!                              └──────────────────────────────────┘
//! ```
//!
//! The store learns the app's groups from the merged list; until the first listing answered
//! (for an app with `discover`) it keeps the state-file snapshots of groups not listed yet, so
//! a discovered group's baseline survives a restart.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::client::{Client, ClientError, ClientSettings, RetryPolicy};
use crate::config::AppConfig;
use crate::discovery::{self, Backoff, Lists};
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::ratelimit::{ListSlots, RateLimiter, Slot};
use crate::schedule::{Anchor, Scheduler, Urgent};
use crate::shard::Shard;
use crate::shutdown::Shutdown;
use crate::store::{AppSettings, Applied, GroupSettings, Seeds, Store, Ticket};

/// How long in-flight requests may take to finish at shutdown before they are abandoned.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What reaches an app's owner.
#[derive(Debug)]
pub enum Message {
    /// The app's config after a (re)load.
    Configure(Box<Plan>),
    /// A checked callback ([`crate::callback`]).
    Pushed(Pushed),
    /// A listing ended; results of a listing the owner has since cancelled are ignored.
    Discovered {
        listing: u64,
        listed: Outcome<Vec<String>>,
    },
    Stop(Stop),
}

/// What a callback tells the owner; nothing of its body beyond the group is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// `Group.CallbackAfterGroupAttrChanged`: poll the group now.
    Changed(String),
    /// `Group.CallbackAfterGroupDestroyed`: poll it now, to see the 10010.
    Destroyed(String),
    /// `Group.CallbackAfterCreateGroup`: a discovered app adds it (type and shard permitting)
    /// and polls it now.
    Created {
        group_id: String,
        group_type: Option<String>,
    },
}

/// Where callbacks for one app go; cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Mailbox(mpsc::UnboundedSender<Message>);

impl Mailbox {
    pub fn push(&self, pushed: Pushed) {
        // A stopped owner: its app was removed, or the exporter stops; nothing to do.
        let _ = self.0.send(Message::Pushed(pushed));
    }
}

/// Why an owner stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The exporter stops: let requests on the wire finish within [`SHUTDOWN_GRACE`].
    Shutdown,
    /// A reload removed the app: drop everything at once; its series go next.
    Removed,
}

/// An app's config as the daemon hands it over.
#[derive(Debug, Clone)]
pub struct Plan {
    pub app: AppConfig,
    /// The global `poll_interval`, which discovered groups use.
    pub default_interval: Duration,
    /// This replica's share of `rate_limit`.
    pub rate: f64,
}

/// What an owner shares with the rest of the daemon.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub shard: Shard,
    pub anchor: Anchor,
    /// The exporter's shutdown: once fired, clients send no further attempt.
    pub stopping: Shutdown,
}

/// The daemon's handle on a running owner.
pub struct Handle {
    tx: mpsc::UnboundedSender<Message>,
    task: JoinHandle<()>,
}

impl Handle {
    pub fn mailbox(&self) -> Mailbox {
        Mailbox(self.tx.clone())
    }

    pub fn configure(&self, plan: Plan) {
        let _ = self.tx.send(Message::Configure(Box::new(plan)));
    }

    /// Stops the owner and waits until it has: after this, nothing of the app sends a request
    /// or touches its series.
    pub async fn stop(self, how: Stop) {
        let _ = self.tx.send(Message::Stop(how));
        let _ = self.task.await;
    }
}

/// Starts an app's owner on the current runtime.
pub fn start(plan: Plan, shared: Shared) -> Result<Handle, ClientError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let sdkappid = plan.app.sdkappid;
    let limiter = Arc::new(RateLimiter::new(plan.rate));
    let list_slots = Arc::new(ListSlots::new(shared.shard, shared.anchor));
    let client = build_client(&plan.app, &limiter, &list_slots, &shared)?;
    let mut owner = Owner {
        sdkappid,
        settings: without_groups(&plan.app),
        client,
        limiter,
        list_slots,
        lists: Lists::new(shared.shard),
        scheduler: Scheduler::new(shared.anchor),
        inflight: JoinSet::new(),
        polling: Polling::default(),
        poll_lag: shared.metrics.poll_lag_gauge(sdkappid),
        shared,
        rx,
        tx: tx.downgrade(),
        listing: None,
        next_listing: None,
        listings: 0,
        listing_started: None,
        backoff: Backoff::default(),
        urgent: Urgent::default(),
        last_was_urgent: false,
    };
    owner.configure(plan, true);
    let task = tokio::spawn(owner.run());
    Ok(Handle { tx, task })
}

struct Owner {
    sdkappid: u64,
    /// The app's settings without its group list (the lists hold the groups).
    settings: AppConfig,
    client: Arc<Client>,
    limiter: Arc<RateLimiter>,
    list_slots: Arc<ListSlots>,
    lists: Lists,
    scheduler: Scheduler,
    inflight: JoinSet<()>,
    /// The group of each poll in flight.
    polling: Polling,
    poll_lag: prometheus::Gauge,
    shared: Shared,
    rx: mpsc::UnboundedReceiver<Message>,
    /// Handed to listing tasks; weak, so the owner alone never keeps its channel open.
    tx: mpsc::WeakUnboundedSender<Message>,
    /// The listing running now, if any.
    listing: Option<JoinHandle<()>>,
    next_listing: Option<Instant>,
    /// Numbers the listings, so a cancelled one's result is recognised and ignored.
    listings: u64,
    /// When the running listing started: groups created by callbacks before it are in it.
    listing_started: Option<Instant>,
    backoff: Backoff,
    /// Groups callbacks made due now.
    urgent: Urgent,
    /// Whether the last dispatch served `urgent`: when both are waiting they take turns.
    last_was_urgent: bool,
}

impl Owner {
    async fn run(mut self) {
        loop {
            self.reap();
            // At the concurrency limit the owner waits for a poll to end, not for a slot.
            let full = self.inflight.len() >= self.settings.max_concurrency.max(1);
            let next_due = if full {
                None
            } else if !self.urgent.is_empty() {
                Some(Instant::now())
            } else {
                self.scheduler.next_due()
            };
            let limiter = Arc::clone(&self.limiter);
            tokio::select! {
                biased;
                message = self.rx.recv() => match message {
                    Some(Message::Stop(how)) => return self.stop(how).await,
                    // Every handle is gone: nobody can stop or reconfigure this app any more.
                    None => return self.stop(Stop::Shutdown).await,
                    Some(message) => self.handle(message),
                },
                Some(ended) = self.inflight.join_next_with_id(), if full => self.ended(ended),
                () = sleep_until_opt(self.next_listing) => self.start_listing(),
                () = sleep_until_opt(self.urgent.next_deferred()) => {
                    self.urgent.release(Instant::now());
                }
                slot = async {
                    match next_due {
                        None => std::future::pending().await,
                        // An elapsed `sleep_until` would still wait for the timer's next tick.
                        Some(due) if due > Instant::now() => tokio::time::sleep_until(due).await,
                        Some(_) => {}
                    }
                    limiter.acquire().await
                } => self.dispatch(slot),
            }
        }
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Configure(plan) => self.configure(*plan, false),
            Message::Discovered { listing, listed } => self.discovered(listing, listed),
            Message::Pushed(pushed) => self.pushed(pushed),
            Message::Stop(_) => unreachable!("run handles Stop"),
        }
    }

    /// Forgets the polls that ended; cheap, and keeps the in-flight count true.
    fn reap(&mut self) {
        while let Some(ended) = self.inflight.try_join_next_with_id() {
            self.ended(ended);
        }
    }

    fn ended(&mut self, ended: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match ended {
            Ok((id, ())) => id,
            Err(e) => {
                if e.is_panic() {
                    error!(sdkappid = self.sdkappid, "a poll panicked");
                }
                e.id()
            }
        };
        self.polling.ended(id);
    }

    /// Sends a poll with the slot just taken: a group a callback made due, or the oldest due
    /// one of the schedule whose previous poll has ended. When both wait they take turns, so
    /// under an exhausted quota each gets half of it and neither starves.
    fn dispatch(&mut self, slot: Slot) {
        // Polls that ended while the owner waited for this slot are no longer in flight.
        self.reap();
        let now = Instant::now();
        let regular_due = self.scheduler.next_due().is_some_and(|due| due <= now);
        let both_wait = regular_due && !self.urgent.is_empty();
        let take_urgent = if both_wait {
            !self.last_was_urgent
        } else {
            !self.urgent.is_empty()
        };
        let regular = if take_urgent {
            None
        } else {
            self.pop_regular(now)
        };
        let group_id = match regular {
            Some(id) => {
                self.last_was_urgent = false;
                id
            }
            // The callbacks' turn, or every due group of the schedule is still being polled:
            // the slot goes to a callback's poll, if one waits.
            None => match self.urgent.pop(now) {
                Some(id) => {
                    self.last_was_urgent = true;
                    id
                }
                None => {
                    self.last_was_urgent = take_urgent;
                    return;
                }
            },
        };
        // Taken at dispatch: the store keeps the outcome of the poll dispatched last.
        let ticket = self.shared.store.ticket();
        let client = Arc::clone(&self.client);
        let store = Arc::clone(&self.shared.store);
        let sdkappid = self.sdkappid;
        let id = Arc::clone(&group_id);
        let abort = self.inflight.spawn(async move {
            poll(sdkappid, &client, &store, &id, ticket, slot).await;
        });
        self.polling.started(group_id, abort);
    }

    /// The oldest due group of the schedule whose previous poll has ended. The slot of a group
    /// still in flight (a slow answer, a retry) is skipped: the scheduler has already moved it
    /// to its next slot, and a second request would spend quota on an answer the first one
    /// brings anyway (Prometheus never overlaps scrapes of one target either). A callback's poll
    /// may still overlap (SPEC: polled within a second); the store keeps the later one's outcome.
    fn pop_regular(&mut self, now: Instant) -> Option<Arc<str>> {
        // Each pop moves its group past `now`, so a group comes at most once here: at most one
        // skip per group in flight.
        for _ in 0..=self.polling.groups() {
            let (id, due) = self.scheduler.pop_due(now)?;
            if self.polling.busy(&id) {
                debug!(
                    sdkappid = self.sdkappid,
                    group_id = &*id,
                    "slot skipped: the group's previous poll is still in flight"
                );
                continue;
            }
            self.poll_lag
                .set(now.saturating_duration_since(due).as_secs_f64());
            return Some(id);
        }
        None
    }

    fn pushed(&mut self, pushed: Pushed) {
        let now = Instant::now();
        let (group_id, created_type) = match pushed {
            Pushed::Changed(id) | Pushed::Destroyed(id) => (id, None),
            Pushed::Created {
                group_id,
                group_type,
            } => (group_id, Some(group_type)),
        };
        if !self.scheduler.contains(&group_id) {
            let Some(group_type) = created_type else {
                debug!(
                    sdkappid = self.sdkappid,
                    group_id, "callback for a group not polled here; ignored"
                );
                return;
            };
            let Some(discover) = &self.settings.discover else {
                return;
            };
            let type_passes = discover.group_types.is_empty()
                || group_type
                    .as_deref()
                    .is_some_and(|t| discover.group_types.iter().any(|want| want == t));
            if !type_passes || !self.shared.shard.owns(&group_id) {
                debug!(
                    sdkappid = self.sdkappid,
                    group_id, "created group not polled here (type or shard)"
                );
                return;
            }
            let Some(spec) = self.lists.add_created(&group_id, now) else {
                return;
            };
            self.scheduler.insert(&spec, now);
            self.shared.store.add_assigned(self.sdkappid, &spec.id);
            info!(
                sdkappid = self.sdkappid,
                group_id, "group created; polling it"
            );
        }
        self.urgent.push(Arc::from(group_id.as_str()), now);
    }

    /// Applies the app's (re)loaded config. `first` is the owner's start.
    fn configure(&mut self, plan: Plan, first: bool) {
        let Plan {
            app,
            default_interval,
            rate,
        } = plan;
        self.limiter.set_rate(rate);
        let rebuilt = !first && !same_client(&self.settings, &app);
        if rebuilt {
            match build_client(&app, &self.limiter, &self.list_slots, &self.shared) {
                Ok(client) => {
                    self.client = client;
                    info!(
                        sdkappid = self.sdkappid,
                        "client rebuilt for the new endpoint, credentials, TLS settings or timeouts"
                    );
                }
                Err(e) => {
                    error!(sdkappid = self.sdkappid, error = %e, "cannot rebuild the app's client; keeping the old one");
                }
            }
        }
        let old_discover = self.settings.discover.clone();
        self.shared
            .store
            .set_settings(self.sdkappid, group_settings(&app, self.shared.shard));
        self.lists.configure(&app, default_interval);
        self.settings = without_groups(&app);
        match (&old_discover, &self.settings.discover) {
            (_, None) => self.cancel_listing(),
            (None, Some(_)) => self.list_now(),
            (Some(old), Some(new)) if old.group_types != new.group_types => self.list_now(),
            // A listing by the old client would answer for the old endpoint or key.
            (Some(_), Some(_)) if rebuilt && self.listing.is_some() => self.list_now(),
            (Some(old), Some(new)) => {
                if new.refresh_interval < old.refresh_interval
                    && let Some(at) = self.next_listing
                {
                    let sooner = Instant::now() + new.refresh_interval;
                    self.next_listing = Some(at.min(sooner));
                }
            }
        }
        if first && self.settings.discover.is_some() {
            self.list_now();
        }
        self.publish();
    }

    /// Hands the merged list to the scheduler and the store, and cancels the polls of groups
    /// that left (a poll waiting in retry backoff would otherwise still send).
    fn publish(&mut self) {
        let merged = self.lists.merged();
        self.scheduler.set_groups(&merged, Instant::now());
        let demand = self.scheduler.demand();
        if demand > self.limiter.rate() * 1.0001 {
            warn!(
                sdkappid = self.sdkappid,
                groups = merged.len(),
                needed_per_second = demand,
                rate_limit = self.limiter.rate(),
                "the groups need more requests than the rate limit allows: every group's cycle stretches; see timattr_poll_lag_seconds"
            );
        }
        let seeds = if self.lists.complete() {
            Seeds::DropUnlisted
        } else {
            Seeds::Keep
        };
        self.shared
            .store
            .set_assigned(self.sdkappid, merged.iter().map(|g| &*g.id), seeds);
        let wanted: HashSet<&str> = merged.iter().map(|g| &*g.id).collect();
        self.urgent.retain(|id| wanted.contains(id));
        self.polling.abort_unless(|group| wanted.contains(group));
    }

    /// Cancels a running listing (its result will be ignored) and starts one now.
    fn list_now(&mut self) {
        self.cancel_listing();
        self.next_listing = Some(Instant::now());
    }

    fn cancel_listing(&mut self) {
        if let Some(task) = self.listing.take() {
            task.abort();
        }
        // Whatever was running or due, its result no longer counts.
        self.listings += 1;
        self.next_listing = None;
    }

    fn start_listing(&mut self) {
        self.next_listing = None;
        let Some(discover) = &self.settings.discover else {
            return;
        };
        self.listings += 1;
        self.listing_started = Some(Instant::now());
        let listing = self.listings;
        let client = Arc::clone(&self.client);
        let types = discover.group_types.clone();
        let tx = self.tx.clone();
        self.listing = Some(tokio::spawn(async move {
            // `Err`: the exporter is stopping, and nobody waits for the result.
            if let Ok(listed) = discovery::list(&client, &types).await
                && let Some(tx) = tx.upgrade()
            {
                let _ = tx.send(Message::Discovered { listing, listed });
            }
        }));
    }

    fn discovered(&mut self, listing: u64, listed: Outcome<Vec<String>>) {
        if listing != self.listings {
            debug!(
                sdkappid = self.sdkappid,
                "result of a cancelled listing ignored"
            );
            return;
        }
        self.listing = None;
        let Some(discover) = &self.settings.discover else {
            return;
        };
        let refresh = discover.refresh_interval;
        let wait = self.backoff.next_wait(listed.is_ok(), refresh);
        self.next_listing = Some(Instant::now() + wait);
        match listed {
            Outcome::Ok(ids) => {
                let found = ids.len();
                self.lists.set_discovered(
                    ids,
                    self.listing_started.take().unwrap_or_else(Instant::now),
                );
                info!(
                    sdkappid = self.sdkappid,
                    discovered = found,
                    in_shard = self.lists.discovered_len(),
                    "groups discovered"
                );
                self.publish();
            }
            failed => warn!(
                sdkappid = self.sdkappid,
                error = %failed,
                hint = crate::error_code::hint(failed.error_code()),
                retry_in_s = wait.as_secs(),
                "group discovery failed; keeping the last list"
            ),
        }
    }

    async fn stop(mut self, how: Stop) {
        self.cancel_listing();
        match how {
            Stop::Removed => self.inflight.shutdown().await,
            Stop::Shutdown => {
                // The clients already refuse to send further attempts; what is on the wire may
                // finish.
                let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
                    while self.inflight.join_next().await.is_some() {}
                })
                .await;
                if drained.is_err() {
                    warn!(
                        sdkappid = self.sdkappid,
                        abandoned = self.inflight.len(),
                        "in-flight polls did not finish within the shutdown grace period"
                    );
                    self.inflight.shutdown().await;
                }
            }
        }
    }
}

/// The polls in flight: each task's group, to cancel the polls of groups a reload removed, and
/// how many each group has (a callback's poll may overlap a regular one), to skip the regular
/// slots of a group still being polled. Both hold polls in flight only (at most
/// `max_concurrency`), whatever the number of groups.
#[derive(Default)]
struct Polling {
    tasks: HashMap<tokio::task::Id, (Arc<str>, AbortHandle)>,
    groups: HashMap<Arc<str>, u32>,
}

impl Polling {
    fn started(&mut self, group: Arc<str>, abort: AbortHandle) {
        *self.groups.entry(Arc::clone(&group)).or_default() += 1;
        self.tasks.insert(abort.id(), (group, abort));
    }

    /// A poll's task ended (or was aborted and reaped); one it already forgot is ignored.
    fn ended(&mut self, id: tokio::task::Id) {
        if let Some((group, _)) = self.tasks.remove(&id) {
            self.release(&group);
        }
    }

    fn release(&mut self, group: &str) {
        if let Some(n) = self.groups.get_mut(group) {
            *n -= 1;
            if *n == 0 {
                self.groups.remove(group);
            }
        }
    }

    /// Whether a poll of the group is in flight.
    fn busy(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// How many groups have a poll in flight.
    fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Aborts the polls of the groups `keep` refuses, and forgets them.
    fn abort_unless(&mut self, keep: impl Fn(&str) -> bool) {
        if self.tasks.is_empty() {
            return;
        }
        let groups = &mut self.groups;
        self.tasks.retain(|_, (group, abort)| {
            if keep(group) {
                return true;
            }
            abort.abort();
            groups.remove(&**group);
            false
        });
    }
}

fn build_client(
    app: &AppConfig,
    limiter: &Arc<RateLimiter>,
    list_slots: &Arc<ListSlots>,
    shared: &Shared,
) -> Result<Arc<Client>, ClientError> {
    let settings = ClientSettings {
        sdkappid: app.sdkappid,
        identifier: app.identifier.clone(),
        secret_key: app.secret_key.clone(),
        base_url: app.base_url.clone(),
        usersig_ttl: app.usersig_ttl,
        timeout: app.timeout,
        max_concurrency: app.max_concurrency,
        retry: RetryPolicy::default(),
        tls: app.tls.clone(),
    };
    let client = Client::new(
        settings,
        Arc::clone(limiter),
        shared.metrics.observer(app.sdkappid),
    )?
    .with_list_slots(Arc::clone(list_slots))
    .with_stop(shared.stopping.clone());
    Ok(Arc::new(client))
}

/// What the store keeps of the app's labels and `ignore_keys`: the app's for every group, and
/// a group's own only where they differ (the config shares the app's `Arc`s otherwise), for the
/// configured groups in this shard.
fn group_settings(app: &AppConfig, shard: Shard) -> AppSettings {
    let own = |labels: &Arc<_>, ignore: &Option<Arc<_>>| {
        let same_ignore = match (ignore, &app.ignore_keys) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        !Arc::ptr_eq(labels, &app.labels) || !same_ignore
    };
    AppSettings {
        app: GroupSettings {
            labels: Arc::clone(&app.labels),
            ignore_keys: app.ignore_keys.clone(),
        },
        groups: app
            .groups
            .iter()
            .filter(|g| own(&g.labels, &g.ignore_keys) && shard.owns(&g.id))
            .map(|g| {
                let settings = GroupSettings {
                    labels: Arc::clone(&g.labels),
                    ignore_keys: g.ignore_keys.clone(),
                };
                (g.id.as_str().into(), settings)
            })
            .collect(),
    }
}

pub fn without_groups(app: &AppConfig) -> AppConfig {
    AppConfig {
        groups: Vec::new(),
        ..app.clone()
    }
}

/// Whether a running client can keep serving an app after a reload (only the quota, the
/// concurrency, the group list or discovery changed). TLS settings compare by the certificates'
/// and key's bytes, not the file names: a CA rotated under the same name rebuilds the client.
fn same_client(old: &AppConfig, new: &AppConfig) -> bool {
    old.base_url == new.base_url
        && old.identifier == new.identifier
        && old.secret_key == new.secret_key
        && old.usersig_ttl == new.usersig_ttl
        && old.timeout == new.timeout
        && old.tls == new.tls
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One poll: the call, its result into the store (unless a poll dispatched after it, with a
/// newer `ticket`, has ended first), and one log line per transition.
async fn poll(
    sdkappid: u64,
    client: &Client,
    store: &Store,
    group_id: &str,
    ticket: Ticket,
    slot: Slot,
) {
    let Ok(outcome) = client.get_group_attr(group_id, Some(slot)).await else {
        return;
    };
    let code = outcome.error_code();
    let (before, changes) =
        match store.apply_polled(sdkappid, group_id, ticket, &outcome, unix_now()) {
            Applied::Recorded { previous, changes } => (previous, changes),
            Applied::Stale => {
                debug!(
                    sdkappid,
                    group_id,
                    error_code = code,
                    "outcome dropped: a poll of the group started after this one has ended first"
                );
                return;
            }
            // A group a reload dropped while its poll was in flight.
            Applied::Unassigned => (None, None),
        };
    if let Some(changes) = changes {
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
            Outcome::Ok(_) if before.is_some() => info!(
                sdkappid,
                group_id,
                previous_error_code = before,
                "group readable again"
            ),
            Outcome::Ok(_) => {}
            Outcome::Api(e) => warn!(
                sdkappid,
                group_id,
                error_code = e.code(),
                error_class = crate::error_code::classify(e.code()).as_str(),
                // Already scrubbed of the UserSig and key by the client.
                error_info = %e.info,
                hint = crate::error_code::hint(e.code()),
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
