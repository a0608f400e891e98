//! Every metric the exporter exposes (name, type and HELP text in one table, [`METRIC_FAMILIES`])
//! and the `/metrics` rendering.
//!
//! Per-app and exporter metrics live in a `prometheus` [`Registry`] (counters, a histogram and
//! gauges labelled `sdkappid`, plus the standard `process_*` collector). The per-group families,
//! `timattr_groups` and `timattr_groups_by_error_code` are written by hand (`groups`) from the
//! [`Store`]'s read-only view, because one `prometheus` object per group series would not fit the
//! memory budget at 100,000 groups; both halves use the names and HELP texts defined here, and no
//! family is produced by both.
//!
//! Decided here on a point SPEC.md leaves open (the store's module doc has the others):
//! `timattr_groups_by_error_code{error_code="0"}` is always rendered, at 0 when no group is
//! healthy, so alerts and dashboards have a series to divide by; other codes appear while at
//! least one group's latest poll ended with them.
//!
//! `timattr_group_labels` exists from a group's assignment, polled yet or not (as
//! `timattr_groups` counts it: the labels are config, not a poll result), for every group whose
//! labels are not empty; discovered groups carry their app's labels (SPEC: "for every group of
//! the app").
//!
//! A render is streamed ([`Metrics::render_to`]): the registry's families, then each per-group
//! family in turn, through a buffer of a few dozen KiB written to the caller's `io::Write` only
//! between chunks of groups, when no store lock is held.
//!
//! `exclude_metrics` drops whole families: each family is decided once per render (the
//! registry's by their gathered name, the hand-written ones before the walk over the groups),
//! never per sample, and an excluded hand-written family is not even built.

mod code_labels;
mod exposition;
mod groups;
#[cfg(test)]
mod reference;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::{
    Encoder as _, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::observe::{Api, ApiObserver};
use crate::outcome::{FailureReason, Outcome};
use crate::pattern::Patterns;
use crate::store::Store;
use code_labels::{CodeLabel, CodeLabels};
pub use code_labels::{MAX_UNDOCUMENTED_CODES, OTHER as OTHER_ERROR_CODE};
use exposition::Out;

/// Which value hashes `/metrics` carries (`value_hashes` in the config). Defined here, with the
/// families it switches, so that `config` and the store need not know each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueHashes {
    /// `timattr_group_attribute_value_hash{key}` per key, and the set hash.
    #[default]
    PerKey,
    /// Only `timattr_group_attributes_hash`.
    PerGroup,
    /// No hashes.
    Off,
}

mod callbacks;

pub use callbacks::{CALLBACK_REJECTIONS, CALLBACKS};

/// A metric family: `(name, type, HELP text)`.
pub type Family = (&'static str, &'static str, &'static str);

// Per group (written by hand in `groups`).
pub const GROUP_UP: Family = (
    "timattr_group_up",
    "gauge",
    "1 if the latest poll of the group got ErrorCode 0, else 0.",
);
pub const GROUP_ERROR_CODE: Family = (
    "timattr_group_error_code",
    "gauge",
    "ErrorCode of the latest poll of the group: 0 on success, -1 when no valid API answer came (timeout, connection, HTTP status, undecodable body).",
);
pub const GROUP_ATTRIBUTES: Family = (
    "timattr_group_attributes",
    "gauge",
    "Number of custom attributes of the group at its last successful poll.",
);
pub const GROUP_ATTRIBUTES_BYTES: Family = (
    "timattr_group_attributes_bytes",
    "gauge",
    "Bytes of all attribute values of the group at its last successful poll (the API allows 16000).",
);
pub const GROUP_ATTRIBUTES_HASH: Family = (
    "timattr_group_attributes_hash",
    "gauge",
    "Hash of the whole attribute set of the group: the first 6 bytes of the SHA-256 of its key=value pairs sorted by key, each ending in a newline, read as a big-endian integer.",
);
pub const GROUP_ATTRIBUTE_VALUE_HASH: Family = (
    "timattr_group_attribute_value_hash",
    "gauge",
    "Hash of one attribute value: the first 6 bytes of its SHA-256, read as a big-endian integer.",
);
pub const GROUP_ATTRIBUTE_CHANGES: Family = (
    "timattr_group_attribute_changes_total",
    "counter",
    "Attribute keys added, removed or modified between consecutive successful polls of the group.",
);
pub const GROUP_LAST_CHANGE: Family = (
    "timattr_group_last_change_timestamp_seconds",
    "gauge",
    "Unix time when a change of the attributes of the group was last seen; 0 before the first one.",
);
pub const GROUP_LAST_SUCCESS: Family = (
    "timattr_group_last_success_timestamp_seconds",
    "gauge",
    "Unix time of the last successful poll of the group.",
);
pub const GROUP_LABELS: Family = (
    "timattr_group_labels",
    "gauge",
    "1 for every group with configured labels (the app's merged with the group's), each as a label_<name> label, as kube-state-metrics' kube_*_labels.",
);

// Per app (`GROUPS` and `GROUPS_BY_ERROR_CODE` written by hand in `groups` too).
pub const GROUPS: Family = (
    "timattr_groups",
    "gauge",
    "Groups assigned to this instance (configured and discovered, in its shard), polled yet or not.",
);
pub const GROUPS_BY_ERROR_CODE: Family = (
    "timattr_groups_by_error_code",
    "gauge",
    "Groups whose latest poll ended with this ErrorCode (0 healthy, -1 no valid API answer).",
);
pub const API_REQUESTS: Family = (
    "timattr_api_requests_total",
    "counter",
    "HTTP requests sent to the Tencent Chat API, retries included.",
);
pub const API_ERRORS: Family = (
    "timattr_api_errors_total",
    "counter",
    "Tencent Chat API answers with a non-zero ErrorCode.",
);
pub const API_REQUEST_FAILURES: Family = (
    "timattr_api_request_failures_total",
    "counter",
    "HTTP requests to the Tencent Chat API that got no valid API answer, by reason.",
);
pub const API_REQUEST_DURATION: Family = (
    "timattr_api_request_duration_seconds",
    "histogram",
    "Latency of each HTTP request to the Tencent Chat API.",
);
pub const POLL_LAG: Family = (
    "timattr_poll_lag_seconds",
    "gauge",
    "How late the latest dispatched poll of the app was against its schedule.",
);
pub const USERSIG_EXPIRY: Family = (
    "timattr_usersig_expiry_timestamp_seconds",
    "gauge",
    "Unix time when the UserSig in use expires (TLS.time + TLS.expire).",
);

// Exporter.
pub const BUILD_INFO: Family = (
    "timattr_build_info",
    "gauge",
    "A metric with a constant 1 value labelled by the version, revision and rustc version the exporter was built from.",
);
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: Family = (
    "timattr_config_last_reload_successful",
    "gauge",
    "1 if the last configuration load or reload succeeded, else 0.",
);
pub const CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP: Family = (
    "timattr_config_last_reload_success_timestamp_seconds",
    "gauge",
    "Unix time of the last successful configuration load or reload.",
);
pub const SHARD_ORDINAL: Family = (
    "timattr_shard_ordinal",
    "gauge",
    "The shard of groups this instance polls (--shard).",
);
pub const TOTAL_SHARDS: Family = (
    "timattr_total_shards",
    "gauge",
    "The number of shards the groups are split into (--total-shards).",
);

/// The families [`Metrics::render_groups`] writes (per group, and the per-app counts of
/// groups), in the order it writes them.
pub const GROUP_FAMILIES: [Family; groups::FAMILIES] = groups::TABLE;

/// The families that are not per group: per app, per exporter and per callback.
const OTHER_FAMILIES: [Family; 13] = [
    API_REQUESTS,
    API_ERRORS,
    API_REQUEST_FAILURES,
    API_REQUEST_DURATION,
    POLL_LAG,
    USERSIG_EXPIRY,
    BUILD_INFO,
    CONFIG_LAST_RELOAD_SUCCESSFUL,
    CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP,
    SHARD_ORDINAL,
    TOTAL_SHARDS,
    CALLBACKS,
    CALLBACK_REJECTIONS,
];

/// Every family the exporter can expose, except the standard `process_*` ones: the group
/// families as the render lists them, then the others.
pub const METRIC_FAMILIES: &[Family] = &all_families();

const fn all_families() -> [Family; groups::FAMILIES + OTHER_FAMILIES.len()] {
    let mut all = [GROUP_UP; groups::FAMILIES + OTHER_FAMILIES.len()];
    let mut i = 0;
    while i < all.len() {
        all[i] = if i < groups::FAMILIES {
            GROUP_FAMILIES[i]
        } else {
            OTHER_FAMILIES[i - groups::FAMILIES]
        };
        i += 1;
    }
    all
}

/// Request latency buckets: from a fast answer from a nearby region (5 ms) to past the longest
/// sane client timeout (10 s); Tencent's backend gives up at 3 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What `timattr_build_info` says. Tests pass fixed values so the golden file is stable.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    pub version: &'static str,
    pub revision: String,
    pub rustc: String,
}

fn opts(f: Family) -> Opts {
    Opts::new(f.0, f.2)
}

/// Every per-app and exporter metric, and the observers that feed the per-app ones.
/// `Send + Sync`; share it through an `Arc`.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    errors: IntCounterVec,
    failures: IntCounterVec,
    durations: HistogramVec,
    poll_lag: GaugeVec,
    usersig_expiry: GaugeVec,
    reload_successful: IntGauge,
    reload_success_timestamp: Gauge,
    shard_ordinal: IntGauge,
    total_shards: IntGauge,
    /// One observer per app, so a reload that keeps an app hands its client the same counters.
    apps: Mutex<BTreeMap<u64, Arc<AppObserver>>>,
    callbacks: Arc<callbacks::CallbackMetrics>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(build: BuildInfo) -> Metrics {
        let registry = Registry::new();
        // The names, label sets and buckets below are constants: registering them cannot fail
        // except by a programming error (a duplicate or malformed name), which the tests catch.
        let requests = IntCounterVec::new(opts(API_REQUESTS), &["sdkappid", "api"])
            .expect("valid metric definition");
        let errors = IntCounterVec::new(opts(API_ERRORS), &["sdkappid", "api", "error_code"])
            .expect("valid metric definition");
        let failures =
            IntCounterVec::new(opts(API_REQUEST_FAILURES), &["sdkappid", "api", "reason"])
                .expect("valid metric definition");
        let durations = HistogramVec::new(
            HistogramOpts::new(API_REQUEST_DURATION.0, API_REQUEST_DURATION.2)
                .buckets(DURATION_BUCKETS.to_vec()),
            &["sdkappid", "api"],
        )
        .expect("valid metric definition");
        let poll_lag =
            GaugeVec::new(opts(POLL_LAG), &["sdkappid"]).expect("valid metric definition");
        let usersig_expiry =
            GaugeVec::new(opts(USERSIG_EXPIRY), &["sdkappid"]).expect("valid metric definition");
        let build_info = IntGauge::with_opts(
            opts(BUILD_INFO)
                .const_label("version", build.version)
                .const_label("revision", build.revision)
                .const_label("rustc", build.rustc),
        )
        .expect("valid metric definition");
        build_info.set(1);
        let reload_successful = IntGauge::with_opts(opts(CONFIG_LAST_RELOAD_SUCCESSFUL))
            .expect("valid metric definition");
        let reload_success_timestamp = Gauge::with_opts(opts(CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP))
            .expect("valid metric definition");
        let shard_ordinal =
            IntGauge::with_opts(opts(SHARD_ORDINAL)).expect("valid metric definition");
        let total_shards =
            IntGauge::with_opts(opts(TOTAL_SHARDS)).expect("valid metric definition");
        total_shards.set(1);

        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(requests.clone()),
            Box::new(errors.clone()),
            Box::new(failures.clone()),
            Box::new(durations.clone()),
            Box::new(poll_lag.clone()),
            Box::new(usersig_expiry.clone()),
            Box::new(build_info),
            Box::new(reload_successful.clone()),
            Box::new(reload_success_timestamp.clone()),
            Box::new(shard_ordinal.clone()),
            Box::new(total_shards.clone()),
        ];
        for c in collectors {
            registry
                .register(c)
                .expect("each family is registered once");
        }
        let callbacks = callbacks::CallbackMetrics::register(&registry);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics are registered once");

        Metrics {
            registry,
            requests,
            errors,
            failures,
            durations,
            poll_lag,
            usersig_expiry,
            reload_successful,
            reload_success_timestamp,
            shard_ordinal,
            total_shards,
            apps: Mutex::new(BTreeMap::new()),
            callbacks,
        }
    }

    /// The observer for one app's API client. Creating it makes the app's request, failure and
    /// latency series exist at 0 for both APIs; asking again for an app that stays returns the
    /// same observer, so a reload keeps its counters.
    pub fn observer(&self, sdkappid: u64) -> Arc<dyn ApiObserver> {
        let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        self.callbacks.add_app(sdkappid);
        let app = apps.entry(sdkappid).or_insert_with(|| {
            let id = sdkappid.to_string();
            let requests =
                Api::ALL.map(|api| self.requests.with_label_values(&[&id, api.as_str()]));
            let durations =
                Api::ALL.map(|api| self.durations.with_label_values(&[&id, api.as_str()]));
            let failures = Api::ALL.map(|api| {
                FailureReason::ALL.map(|reason| {
                    self.failures
                        .with_label_values(&[&id, api.as_str(), reason.as_str()])
                })
            });
            Arc::new(AppObserver {
                sdkappid: id,
                requests,
                durations,
                failures,
                errors: self.errors.clone(),
                usersig_expiry: self.usersig_expiry.clone(),
                live: Mutex::new(Live {
                    removed: false,
                    error_series: BTreeSet::new(),
                    codes: CodeLabels::default(),
                }),
            })
        });
        Arc::clone(app) as Arc<dyn ApiObserver>
    }

    /// What the callbacks endpoint reports to.
    pub fn callback_observer(&self) -> Arc<dyn crate::callback::CallbackObserver> {
        Arc::clone(&self.callbacks) as _
    }

    /// `timattr_poll_lag_seconds` of an app.
    pub fn set_poll_lag(&self, sdkappid: u64, seconds: f64) {
        self.poll_lag_gauge(sdkappid).set(seconds);
    }

    /// The handle of an app's `timattr_poll_lag_seconds`, for its owner to set on every dispatch
    /// without a label lookup. Once [`Metrics::remove_app`] ran, setting it shows nowhere.
    pub fn poll_lag_gauge(&self, sdkappid: u64) -> prometheus::Gauge {
        self.poll_lag.with_label_values(&[&sdkappid.to_string()])
    }

    /// Drops every per-app series of an app a reload removed. Its old observer, if a client still
    /// holds it, records nothing visible from then on.
    pub fn remove_app(&self, sdkappid: u64) {
        let id = sdkappid.to_string();
        let app = self
            .apps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&sdkappid);
        if let Some(app) = app {
            let mut live = app.live.lock().unwrap_or_else(PoisonError::into_inner);
            live.removed = true;
            for (api, label) in std::mem::take(&mut live.error_series) {
                let _ = self
                    .errors
                    .remove_label_values(&[&id, api.as_str(), &label.to_string()]);
            }
        }
        for api in Api::ALL {
            let _ = self.requests.remove_label_values(&[&id, api.as_str()]);
            let _ = self.durations.remove_label_values(&[&id, api.as_str()]);
            for reason in FailureReason::ALL {
                let _ = self
                    .failures
                    .remove_label_values(&[&id, api.as_str(), reason.as_str()]);
            }
        }
        let _ = self.poll_lag.remove_label_values(&[&id]);
        let _ = self.usersig_expiry.remove_label_values(&[&id]);
        self.callbacks.remove_app(sdkappid);
    }

    /// Records a config load or reload: `timattr_config_last_reload_successful`, and on success
    /// `timattr_config_last_reload_success_timestamp_seconds`. The daemon calls it for the initial
    /// load too, as Prometheus' own exporters do.
    pub fn set_config_reload(&self, ok: bool, now_unix: f64) {
        self.reload_successful.set(i64::from(ok));
        if ok {
            self.reload_success_timestamp.set(now_unix);
        }
    }

    /// `timattr_shard_ordinal` and `timattr_total_shards`.
    pub fn set_shard(&self, ordinal: u32, total: u32) {
        self.shard_ordinal.set(i64::from(ordinal));
        self.total_shards.set(i64::from(total));
    }

    /// The whole `/metrics` exposition (text format 0.0.4) at once; see [`Metrics::render_to`].
    pub fn render(
        &self,
        store: &Store,
        value_hashes: ValueHashes,
        exclude: Option<&Patterns>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 * 1024);
        self.render_to(store, value_hashes, exclude, &mut out)
            .expect("writing to a Vec cannot fail");
        out
    }

    /// Writes the whole `/metrics` exposition (text format 0.0.4) to `sink` as it goes: the
    /// registry's families, then the per-group ones from `store`, family by family, without the
    /// families `exclude` matches. The sink gets pieces of about 32 KiB, never while a store
    /// lock is held, so it may block (backpressure from a slow reader). An error from the sink
    /// stops the render and is returned.
    pub fn render_to(
        &self,
        store: &Store,
        value_hashes: ValueHashes,
        exclude: Option<&Patterns>,
        sink: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        let mut out = Out::new(sink);
        let mut families = self.registry.gather();
        if let Some(exclude) = exclude {
            families.retain(|f| !exclude.is_match(f.name()));
        }
        // A few KiB per app: encoded in one piece, as before streaming.
        if let Err(e) = TextEncoder::new().encode(&families, &mut out.buf) {
            // Only a malformed family can cause this; a scrape still gets the per-group part.
            tracing::error!(error = %e, "cannot encode the exporter's metrics");
            out.buf.clear();
        }
        drop(families);
        out.maybe_flush()?;
        self.render_groups_into(store, value_hashes, exclude, &mut out)?;
        out.flush()
    }

    /// Writes what [`Metrics::render_to`] writes after the registry's families: the per-group
    /// ones, `timattr_groups` and `timattr_groups_by_error_code`, sorted by `sdkappid` then
    /// `group_id`. The part of a scrape that grows with the number of groups; public for the
    /// benchmarks.
    pub fn render_groups(
        &self,
        store: &Store,
        value_hashes: ValueHashes,
        exclude: Option<&Patterns>,
        sink: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        let mut out = Out::new(sink);
        self.render_groups_into(store, value_hashes, exclude, &mut out)?;
        out.flush()
    }

    fn render_groups_into(
        &self,
        store: &Store,
        value_hashes: ValueHashes,
        exclude: Option<&Patterns>,
        out: &mut Out<'_>,
    ) -> std::io::Result<()> {
        // Each app's labelled codes, so both `error_code` families label a code alike.
        let codes: BTreeMap<u64, CodeLabels> = self
            .apps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, app)| {
                let live = app.live.lock().unwrap_or_else(PoisonError::into_inner);
                (*id, live.codes.clone())
            })
            .collect();
        groups::render(out, &store.apps(), value_hashes, exclude, &codes)
    }
}

/// An app's metric handles, resolved once so recording an attempt costs no label lookup.
struct AppObserver {
    sdkappid: String,
    /// Indexed by [`api_index`].
    requests: [IntCounter; 2],
    durations: [Histogram; 2],
    /// By [`api_index`], then in [`FailureReason::ALL`] order.
    failures: [[IntCounter; 4]; 2],
    errors: IntCounterVec,
    usersig_expiry: GaugeVec,
    live: Mutex<Live>,
}

/// Which lazily created series of an app exist, and whether the app was removed (then nothing is
/// created again for it).
struct Live {
    removed: bool,
    error_series: BTreeSet<(Api, CodeLabel)>,
    /// Which undocumented codes have a label of their own (see `code_labels`).
    codes: CodeLabels,
}

fn api_index(api: Api) -> usize {
    match api {
        Api::GetGroupAttr => 0,
        Api::GetAppidGroupList => 1,
    }
}

fn reason_index(reason: FailureReason) -> usize {
    match reason {
        FailureReason::Timeout => 0,
        FailureReason::Connect => 1,
        FailureReason::HttpStatus => 2,
        FailureReason::InvalidResponse => 3,
    }
}

impl ApiObserver for AppObserver {
    fn on_attempt(&self, api: Api, duration: Duration, ended: &Outcome<()>) {
        let i = api_index(api);
        self.requests[i].inc();
        self.durations[i].observe(duration.as_secs_f64());
        match ended {
            Outcome::Ok(()) => {}
            Outcome::Api(e) => {
                let code = e.code();
                let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
                if live.removed {
                    return;
                }
                let label = live.codes.admit(code);
                live.error_series.insert((api, label));
                self.errors
                    .with_label_values(&[&self.sdkappid, api.as_str(), &label.to_string()])
                    .inc();
            }
            Outcome::NoAnswer(reason) => self.failures[i][reason_index(*reason)].inc(),
        }
    }

    fn on_usersig(&self, expires_at: u64) {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live.removed {
            return;
        }
        // Seconds since 1970 are exact in a float64 for the next 285 million years.
        self.usersig_expiry
            .with_label_values(&[&self.sdkappid])
            .set(expires_at as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::ApiError;
    use std::collections::HashSet;

    fn metrics() -> Metrics {
        Metrics::new(BuildInfo {
            version: "1.2.3",
            revision: "abc".into(),
            rustc: "1.85.0".into(),
        })
    }

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.render(&Store::new(), ValueHashes::PerKey, None)).expect("UTF-8")
    }

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn metrics_are_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Metrics>();
    }

    #[test]
    fn families_are_unique_and_well_named() {
        let mut names = HashSet::new();
        for (name, kind, help) in METRIC_FAMILIES {
            assert!(names.insert(*name), "{name} twice");
            assert!(name.starts_with("timattr_"), "{name}");
            assert!(!help.is_empty() && !help.contains('\\') && !help.contains('\n'));
            assert_eq!(*kind == "counter", name.ends_with("_total"), "{name}");
            assert!(["counter", "gauge", "histogram"].contains(kind));
        }
    }

    #[test]
    fn an_app_observer_starts_every_known_series_at_zero() {
        let m = metrics();
        let _obs = m.observer(7);
        let t = text(&m);
        for api in Api::ALL {
            let api = api.as_str();
            assert_eq!(
                sample(
                    &t,
                    &format!("timattr_api_requests_total{{api=\"{api}\",sdkappid=\"7\"}}")
                ),
                Some("0")
            );
            assert_eq!(
                sample(
                    &t,
                    &format!(
                        "timattr_api_request_duration_seconds_count{{api=\"{api}\",sdkappid=\"7\"}}"
                    )
                ),
                Some("0")
            );
            for reason in FailureReason::ALL {
                let reason = reason.as_str();
                assert_eq!(
                    sample(
                        &t,
                        &format!(
                            "timattr_api_request_failures_total{{api=\"{api}\",reason=\"{reason}\",sdkappid=\"7\"}}"
                        )
                    ),
                    Some("0"),
                    "{api} {reason}"
                );
            }
        }
        assert!(!t.contains("timattr_usersig_expiry_timestamp_seconds{"));
        assert_eq!(
            sample(
                &t,
                "timattr_build_info{revision=\"abc\",rustc=\"1.85.0\",version=\"1.2.3\"}"
            ),
            Some("1")
        );
        assert_eq!(sample(&t, "timattr_total_shards"), Some("1"));
    }

    #[test]
    fn attempts_are_counted_and_a_reload_keeps_them() {
        let m = metrics();
        let obs = m.observer(7);
        obs.on_attempt(
            Api::GetGroupAttr,
            Duration::from_millis(30),
            &Outcome::Ok(()),
        );
        obs.on_attempt(
            Api::GetGroupAttr,
            Duration::from_millis(30),
            &Outcome::Api(ApiError::from_code(10010, "").unwrap()),
        );
        obs.on_attempt(
            Api::GetAppidGroupList,
            Duration::from_secs(5),
            &Outcome::NoAnswer(FailureReason::Timeout),
        );
        obs.on_usersig(1_700_086_400);
        // A reload asks again: same counters.
        let again = m.observer(7);
        again.on_attempt(
            Api::GetGroupAttr,
            Duration::from_millis(30),
            &Outcome::Api(ApiError::from_code(10010, "").unwrap()),
        );
        m.set_poll_lag(7, 0.5);
        let t = text(&m);
        assert_eq!(
            sample(
                &t,
                "timattr_api_requests_total{api=\"get_group_attr\",sdkappid=\"7\"}"
            ),
            Some("3")
        );
        assert_eq!(
            sample(
                &t,
                "timattr_api_errors_total{api=\"get_group_attr\",error_code=\"10010\",sdkappid=\"7\"}"
            ),
            Some("2")
        );
        assert_eq!(
            sample(
                &t,
                "timattr_api_request_failures_total{api=\"get_appid_group_list\",reason=\"timeout\",sdkappid=\"7\"}"
            ),
            Some("1")
        );
        assert_eq!(
            sample(
                &t,
                "timattr_api_request_duration_seconds_bucket{api=\"get_group_attr\",sdkappid=\"7\",le=\"0.05\"}"
            ),
            Some("3")
        );
        assert_eq!(
            sample(
                &t,
                "timattr_usersig_expiry_timestamp_seconds{sdkappid=\"7\"}"
            ),
            Some("1700086400")
        );
        assert_eq!(
            sample(&t, "timattr_poll_lag_seconds{sdkappid=\"7\"}"),
            Some("0.5")
        );
    }

    #[test]
    fn removing_an_app_drops_its_series_for_good() {
        let m = metrics();
        let old = m.observer(7);
        let _other = m.observer(8);
        old.on_attempt(
            Api::GetGroupAttr,
            Duration::from_millis(1),
            &Outcome::Api(ApiError::from_code(70001, "").unwrap()),
        );
        old.on_usersig(5);
        m.set_poll_lag(7, 1.0);
        m.remove_app(7);
        // The old client is still running for a moment: nothing reappears.
        old.on_attempt(
            Api::GetGroupAttr,
            Duration::from_millis(1),
            &Outcome::Api(ApiError::from_code(70002, "").unwrap()),
        );
        old.on_usersig(6);
        let t = text(&m);
        assert!(!t.contains("sdkappid=\"7\""), "{t}");
        assert!(t.contains("sdkappid=\"8\""));
        // Re-added later: fresh series from 0.
        let _new = m.observer(7);
        let t = text(&m);
        assert_eq!(
            sample(
                &t,
                "timattr_api_requests_total{api=\"get_group_attr\",sdkappid=\"7\"}"
            ),
            Some("0")
        );
    }

    #[test]
    fn config_reload_and_shard_gauges() {
        let m = metrics();
        m.set_config_reload(true, 100.0);
        m.set_config_reload(false, 200.0);
        m.set_shard(2, 3);
        let t = text(&m);
        assert_eq!(
            sample(&t, "timattr_config_last_reload_successful"),
            Some("0")
        );
        assert_eq!(
            sample(&t, "timattr_config_last_reload_success_timestamp_seconds"),
            Some("100")
        );
        assert_eq!(sample(&t, "timattr_shard_ordinal"), Some("2"));
        assert_eq!(sample(&t, "timattr_total_shards"), Some("3"));
        #[cfg(target_os = "linux")]
        assert!(t.contains("# TYPE process_cpu_seconds_total counter"));
    }
}
