//! Scale: discovery of many groups, many apps in one process, and sharding across processes.
//!
//! - Discovery pages through 50,000 groups (10,000 a page, at most one list call a second),
//!   filters by type, merges with configured groups, follows groups that appear and vanish, and
//!   keeps the last list when a refresh fails.
//! - Apps in one process are isolated: broken credentials, a hung API and an endpoint that
//!   never answers do not slow a healthy app's cadence or change its request rate.
//! - 1, 2 and 3 shards (real binaries, one of them placed by `--shard.from-hostname`) poll
//!   every group exactly once between them and keep the app's total rate within its quota.
//!
//! Most tests run the real binary. The discovery-dynamics test runs [`daemon::run`] in process
//! so it can shorten `discover.refresh_interval` below the 1-minute minimum that config
//! validation enforces; tokio's paused clock is no use here because the requests cross real
//! sockets (timeouts would fire at once as the clock auto-advances).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use timattr_exporter::config;
use timattr_exporter::daemon::{self, ConfigSource, Options};
use timattr_exporter::fake::{
    AppSpec, Fake, FakeServer, Fault, FaultTarget, GroupType, RateLimits, Scenario,
};
use timattr_exporter::http::ServerOptions;
use timattr_exporter::metrics::BuildInfo;
use timattr_exporter::secret::SecretKey;
use timattr_exporter::shard::Shard;
use timattr_exporter::shutdown::{self, Trigger};

const WAIT: Duration = Duration::from_secs(30);

/// A fake API with no apps; the tests add theirs.
async fn empty_fake() -> FakeServer {
    install_crypto();
    Fake::start(Scenario::default())
        .await
        .expect("fake API starts")
}

/// Rate limits for the fake: `get_group_attr` as given, list calls at the API's 1/s.
fn limits(get_group_attr: Option<u32>) -> RateLimits {
    RateLimits {
        get_group_attr,
        get_appid_group_list: Some(1),
        writes: None,
    }
}

/// One entry of the config's `apps` list.
struct AppYaml<'a> {
    sdkappid: u64,
    endpoint: &'a str,
    key: &'a str,
    rate_limit: f64,
    max_concurrency: usize,
    timeout: &'a str,
    groups: &'a [String],
    /// More keys of the app, each line indented by four spaces.
    extra: &'a str,
}

impl AppYaml<'_> {
    fn render(&self) -> String {
        let groups = if self.groups.is_empty() {
            String::new()
        } else {
            let list: String = self
                .groups
                .iter()
                .map(|g| format!("      - {}\n", serde_json::Value::String(g.clone())))
                .collect();
            format!("    groups:\n{list}")
        };
        format!(
            "  - sdkappid: {}\n    endpoint: {}\n    identifier: {ADMIN}\n    secret_key: {}\n    rate_limit: {}\n    max_concurrency: {}\n    timeout: {}\n    usersig_ttl: 1h\n{groups}{}",
            self.sdkappid,
            serde_json::Value::String(self.endpoint.to_owned()),
            serde_json::Value::String(self.key.to_owned()),
            self.rate_limit,
            self.max_concurrency,
            self.timeout,
            self.extra,
        )
    }
}

fn config_yaml(top: &str, apps: &[AppYaml<'_>]) -> String {
    let apps: String = apps.iter().map(AppYaml::render).collect();
    format!("{top}apps:\n{apps}")
}

/// Writes the config into a fresh directory (kept alive by the returned guard).
fn config_file(yaml: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("timattr.yml");
    std::fs::write(&path, yaml).expect("write config");
    (dir, path)
}

/// The exporter in this process, stopped when dropped.
struct InProcess {
    addr: SocketAddr,
    trigger: Trigger,
}

impl InProcess {
    async fn start(config: config::Config, shard: Shard) -> InProcess {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (trigger, stop) = shutdown::channel();
        // No SIGHUP in process: the sender is dropped and the reloader just ends.
        let (_, reloads) = tokio::sync::mpsc::channel(1);
        let options = Options {
            source: ConfigSource::Fixed(Box::new(config.clone())),
            config,
            shard,
            server: ServerOptions::default(),
            build: BuildInfo {
                version: timattr_exporter::VERSION,
                revision: "test".into(),
                rustc: "test".into(),
            },
            reloads,
        };
        tokio::spawn(daemon::run(options, listener, stop));
        InProcess { addr, trigger }
    }

    fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.trigger.fire();
    }
}

/// The `group_id`s of an app that have a `timattr_group_up` series.
fn groups_up(text: &str, sdkappid: u64) -> BTreeMap<String, f64> {
    let app = sdkappid.to_string();
    parse_samples(text)
        .into_iter()
        .filter(|s| s.name == "timattr_group_up")
        .filter(|s| s.labels.iter().any(|(k, v)| k == "sdkappid" && *v == app))
        .filter_map(|s| {
            let id = s.labels.iter().find(|(k, _)| k == "group_id")?.1.clone();
            Some((id, s.value))
        })
        .collect()
}

fn app_value(text: &str, name: &str, sdkappid: u64, more: &[(&str, &str)]) -> Option<f64> {
    let app = sdkappid.to_string();
    let mut want = vec![("sdkappid", app.as_str())];
    want.extend_from_slice(more);
    value(text, name, &want)
}

/// Whether any series at all names the group.
fn mentions(text: &str, group_id: &str) -> bool {
    let needle = format!("group_id=\"{group_id}\"");
    text.lines().any(|l| l.contains(&needle))
}

/// The most requests in any one-second window (sliding, starting at each request).
fn max_per_second(times: &[Duration]) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] - sorted[lo] >= Duration::from_secs(1) {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Times at or after `from`.
fn since(times: Vec<Duration>, from: Duration) -> Vec<Duration> {
    times.into_iter().filter(|t| *t >= from).collect()
}

// ---------------------------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------------------------

/// 50,000 Public groups take five full pages; the type filter leaves out Private groups; a
/// configured group also found by discovery counts once; list calls stay at most one a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_pages_through_50000_groups_of_the_wanted_types() {
    let server = empty_fake().await;
    server
        .fake
        .add_app(AppSpec::new(APP, ADMIN, SecretKey::new(KEY)).with_rate_limits(limits(None)));
    for i in 0..50_000 {
        server
            .fake
            .create_group(APP, &format!("@TGS#pub{i:05}"), GroupType::Public)
            .expect("create");
    }
    for i in 0..300 {
        server
            .fake
            .create_group(APP, &format!("@TGS#av{i:03}"), GroupType::AVChatRoom)
            .expect("create");
        server
            .fake
            .create_group(APP, &format!("@TGS#priv{i:03}"), GroupType::Private)
            .expect("create");
    }
    let statics = vec!["@TGS#priv000".to_owned(), "@TGS#pub00000".to_owned()];
    let base = server.base_url().to_string();
    let yaml = config_yaml(
        // A long interval: this test is about the list, not about polling 50,000 groups.
        "poll_interval: 1h\n",
        &[AppYaml {
            sdkappid: APP,
            endpoint: &base,
            key: KEY,
            rate_limit: 200.0,
            max_concurrency: 8,
            timeout: "2s",
            groups: &statics,
            extra: "    discover:\n      group_types: [Public, AVChatRoom]\n      refresh_interval: 1m\n",
        }],
    );
    let (_dir, path) = config_file(&yaml);
    let exporter = Exporter::start(&path, &[]);
    let url = exporter.url("/metrics");
    let expected = 50_000.0 + 300.0 + 1.0;
    let text = eventually(WAIT, || async {
        let t = scrape(&url).await;
        (app_value(&t, "timattr_groups", APP, &[]) == Some(expected)).then_some(t)
    })
    .await
    .unwrap_or_else(|| panic!("all groups discovered; log:\n{}", exporter.logs()));
    assert!(
        exporter
            .wait_for_log("discovered=50300", Duration::from_secs(5))
            .is_some(),
        "{}",
        exporter.logs()
    );

    let counts = server.fake.counts();
    let lists = counts.requests(APP, "get_appid_group_list");
    // Public: five full pages (perhaps a sixth, empty one); AVChatRoom: one page.
    assert!((6..=7).contains(&lists), "list calls: {lists}");
    assert_eq!(counts.outcome(APP, "get_appid_group_list", "0"), lists);
    assert_eq!(
        app_value(
            &text,
            "timattr_api_requests_total",
            APP,
            &[("api", "get_appid_group_list")]
        ),
        Some(lists as f64)
    );
    let times = server.fake.request_times(APP, "get_appid_group_list");
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_secs(1),
            "list calls closer than a second: {times:?}"
        );
    }
    // Filtered out, and never polled.
    for i in 1..300 {
        assert_eq!(counts.group(APP, &format!("@TGS#priv{i:03}")), 0);
    }
    exporter.signal("TERM");
}

/// Discovered groups merge with configured ones, new groups are spread over the interval,
/// vanished groups lose their series, and a failing refresh keeps the last list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_follows_groups_that_come_and_go_and_keeps_the_list_when_listing_fails() {
    let server = empty_fake().await;
    server
        .fake
        .add_app(AppSpec::new(APP, ADMIN, SecretKey::new(KEY)).with_rate_limits(limits(None)));
    let mk = |id: &str, t: GroupType| {
        server.fake.create_group(APP, id, t).expect("create");
        server.fake.set_attrs(APP, id, &[("k", id)]).expect("attrs");
    };
    for i in 1..=5 {
        mk(&format!("@TGS#pub_{i}"), GroupType::Public);
    }
    mk("@TGS#av_1", GroupType::AVChatRoom);
    mk("@TGS#priv_1", GroupType::Private);
    mk("@TGS#static_private", GroupType::Private);

    let base = server.base_url().to_string();
    let statics = vec!["@TGS#static_private".to_owned()];
    let yaml = config_yaml(
        "poll_interval: 5s\n",
        &[AppYaml {
            sdkappid: APP,
            endpoint: &base,
            key: KEY,
            rate_limit: 50.0,
            max_concurrency: 4,
            timeout: "1s",
            groups: &statics,
            extra: "      - id: \"@TGS#pub_1\"\n        poll_interval: 1s\n    discover:\n      group_types: [Public, AVChatRoom]\n      refresh_interval: 1m\n",
        }],
    );
    let mut cfg = config::parse(&yaml, &|_| None, Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    // Below the validated minimum, so that a test sees several refreshes.
    cfg.apps[0]
        .discover
        .as_mut()
        .expect("discover is set")
        .refresh_interval = Duration::from_secs(2);
    let exporter = InProcess::start(cfg, Shard::default()).await;
    let url = exporter.url();

    // The configured groups plus Public and AVChatRoom ones; pub_1 (both) once; not priv_1.
    let first: BTreeSet<String> = [
        "@TGS#static_private",
        "@TGS#pub_1",
        "@TGS#pub_2",
        "@TGS#pub_3",
        "@TGS#pub_4",
        "@TGS#pub_5",
        "@TGS#av_1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let text = eventually(WAIT, || async {
        let t = scrape(&url).await;
        let up = groups_up(&t, APP);
        (app_value(&t, "timattr_groups", APP, &[]) == Some(7.0)
            && up.keys().cloned().collect::<BTreeSet<_>>() == first
            && up.values().all(|v| *v == 1.0))
        .then_some(t)
    })
    .await
    .expect("configured and discovered groups polled");
    assert!(!mentions(&text, "@TGS#priv_1"));

    // 20 groups appear at once and one vanishes.
    let new: Vec<String> = (6..26).map(|i| format!("@TGS#pub_{i}")).collect();
    for id in &new {
        mk(id, GroupType::Public);
    }
    server.fake.destroy_group(APP, "@TGS#pub_2").expect("destroy");
    // Record when each new group was first polled successfully, as its first
    // last_success timestamp.
    let mut first_success: BTreeMap<String, f64> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let t = scrape(&url).await;
        for id in &new {
            if let Some(ts) = app_value(
                &t,
                "timattr_group_last_success_timestamp_seconds",
                APP,
                &[("group_id", id)],
            ) {
                first_success.entry(id.clone()).or_insert(ts);
            }
        }
        if first_success.len() == new.len()
            && app_value(&t, "timattr_groups", APP, &[]) == Some(26.0)
            && !mentions(&t, "@TGS#pub_2")
        {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new groups polled, the vanished one forgotten:\n{t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(groups_up(&text, APP).len(), 26);
    // Spread over the 5 s interval rather than sent in one burst (the rate limit alone would
    // let all 20 out within half a second).
    let mut stamps: Vec<f64> = first_success.values().copied().collect();
    stamps.sort_by(f64::total_cmp);
    let span = stamps[stamps.len() - 1] - stamps[0];
    assert!(span >= 2.5, "new groups' first polls bunched: {stamps:?}");
    let busiest = stamps
        .iter()
        .map(|a| stamps.iter().filter(|b| **b >= *a && **b < a + 1.0).count())
        .max()
        .unwrap_or(0);
    assert!(busiest <= 9, "new groups' first polls bunched: {stamps:?}");

    // A failing refresh keeps the last list: while listing answers 502, a destroyed group
    // stays assigned (its series kept, as for any transient failure) and a new one is not seen.
    let failed_before =
        server
            .fake
            .counts()
            .outcome(APP, "get_appid_group_list", "http_502");
    assert_eq!(failed_before, 0);
    server
        .fake
        .set_fault(FaultTarget::App(APP), Some(Fault::HttpStatus(502)));
    server.fake.destroy_group(APP, "@TGS#pub_3").expect("destroy");
    mk("@TGS#pub_99", GroupType::Public);
    // Two refreshes' worth of failed list calls (each tried up to 3 times).
    eventually(WAIT, || async {
        let n = server
            .fake
            .counts()
            .outcome(APP, "get_appid_group_list", "http_502");
        (n >= 6).then_some(())
    })
    .await
    .expect("listing fails");
    let text = scrape(&url).await;
    assert_eq!(app_value(&text, "timattr_groups", APP, &[]), Some(26.0));
    assert!(mentions(&text, "@TGS#pub_3"), "kept through failed refreshes");
    assert!(!mentions(&text, "@TGS#pub_99"));
    assert!(
        app_value(
            &text,
            "timattr_api_request_failures_total",
            APP,
            &[("api", "get_appid_group_list"), ("reason", "http_status")]
        )
        .unwrap_or(0.0)
            >= 6.0
    );

    // Listing works again: the list catches up.
    server.fake.set_fault(FaultTarget::App(APP), None);
    eventually(WAIT, || async {
        let t = scrape(&url).await;
        (app_value(&t, "timattr_groups", APP, &[]) == Some(26.0)
            && !mentions(&t, "@TGS#pub_3")
            && app_value(&t, "timattr_group_up", APP, &[("group_id", "@TGS#pub_99")]) == Some(1.0))
        .then_some(())
    })
    .await
    .expect("refresh after the fault clears");

    // pub_1 keeps its configured 1 s interval although discovery found it too.
    let counts = server.fake.counts();
    let (fast, slow) = (
        counts.group(APP, "@TGS#pub_1"),
        counts.group(APP, "@TGS#pub_4"),
    );
    assert!(fast >= 3 * slow, "pub_1 {fast} polls, pub_4 {slow}");
    assert_eq!(counts.group(APP, "@TGS#priv_1"), 0);
}
