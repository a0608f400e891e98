//! The fault matrix: the whole daemon (`daemon::run`, in process) against the fake API with a
//! fault on each group, asserting what the metrics say about each fault
//! (`timattr_group_error_code`, `timattr_api_request_failures_total{reason}`,
//! `timattr_api_errors_total{error_code}`) and that the healthy groups keep being polled on time
//! meanwhile. Also: rate-limit answers (the app slows down, then recovers), expired UserSigs
//! (renewed, one retry), rotated keys, the API restarting on the same port, and DNS failure.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use timattr_exporter::config;
use timattr_exporter::daemon::{self, ConfigSource, Options};
use timattr_exporter::fake::{AppSpec, FakeServer, Fault, FaultTarget, GroupType};
use timattr_exporter::http::ServerOptions;
use timattr_exporter::metrics::BuildInfo;
use timattr_exporter::secret::SecretKey;
use timattr_exporter::shard::Shard;
use timattr_exporter::shutdown::{self, Trigger};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(15);
const OTHER_APP: u64 = 1_400_000_002;

/// The daemon running in this process, stopped (and awaited) on drop of the test.
struct Running {
    addr: SocketAddr,
    stop: Trigger,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    async fn start(yaml: &str) -> Running {
        install_crypto();
        let loaded = config::parse(yaml, &|_| None, Path::new(".")).expect("a valid config");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = shutdown::channel();
        let (_reload_tx, reloads) = tokio::sync::mpsc::channel(1);
        let options = Options {
            source: ConfigSource::Fixed(Box::new(loaded.config.clone())),
            config: loaded.config,
            shard: Shard {
                ordinal: 0,
                total: 1,
            },
            server: ServerOptions::default(),
            build: BuildInfo {
                version: "test",
                revision: "test".into(),
                rustc: "test".into(),
            },
            reloads,
            callbacks: None,
            auto_reload: None,
        };
        let task = tokio::spawn(daemon::run(options, listener, shutdown));
        Running {
            addr,
            stop,
            task: Some(task),
        }
    }

    async fn metrics(&self) -> String {
        scrape(&format!("http://{}/metrics", self.addr)).await
    }

    /// Scrapes until `check` holds, returning that scrape; panics with the last one if not.
    async fn until(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            last = self.metrics().await;
            if check(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what}: not within {WAIT:?}; last scrape:\n{last}");
    }

    async fn stop(mut self) {
        self.stop.fire();
        let task = self.task.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the daemon stops within the grace period")
            .expect("the daemon task does not panic")
            .expect("the daemon returns Ok");
    }
}

fn app_yaml(sdkappid: u64, endpoint: &str, extra: &str, groups: &[&str]) -> String {
    let groups: String = groups
        .iter()
        .map(|g| format!("      - \"{g}\"\n"))
        .collect();
    format!(
        "  - sdkappid: {sdkappid}\n    endpoint: {endpoint}\n    identifier: {ADMIN}\n    secret_key: \"{KEY}\"\n    usersig_ttl: 1h\n{extra}    groups:\n{groups}"
    )
}

fn yaml(apps: &[String]) -> String {
    format!("poll_interval: 1s\napps:\n{}", apps.concat())
}

fn code(t: &str, g: &str) -> Option<f64> {
    value(t, "timattr_group_error_code", &[("group_id", g)])
}

fn last_success(t: &str, g: &str) -> Option<f64> {
    value(
        t,
        "timattr_group_last_success_timestamp_seconds",
        &[("group_id", g)],
    )
}

fn failures(t: &str, app: u64, reason: &str) -> f64 {
    value(
        t,
        "timattr_api_request_failures_total",
        &[
            ("sdkappid", &app.to_string()),
            ("api", "get_group_attr"),
            ("reason", reason),
        ],
    )
    .unwrap_or(0.0)
}

fn api_errors(t: &str, error_code: i64) -> f64 {
    value(
        t,
        "timattr_api_errors_total",
        &[
            ("sdkappid", &APP.to_string()),
            ("api", "get_group_attr"),
            ("error_code", &error_code.to_string()),
        ],
    )
    .unwrap_or(0.0)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Peak resident set of this process, in KiB.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Healthy groups must keep being polled every second while the faulty ones fail: their last
/// success stays recent, and advances.
/// The tests here run one at a time: each measures timing and the fault matrix measures this
/// process's peak RSS, which parallel tests in the same binary would distort.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn assert_polled_on_time(d: &Running, server: &FakeServer, healthy: &[&str]) {
    let before = d.metrics().await;
    let counts_before: Vec<u64> = healthy
        .iter()
        .map(|g| server.fake.counts().group(APP, g))
        .collect();
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let after = d.metrics().await;
    let now = unix_now();
    for (g, n0) in healthy.iter().zip(counts_before) {
        let (s0, s1) = (
            last_success(&before, g).expect("polled before"),
            last_success(&after, g).expect("polled after"),
        );
        assert!(s1 - s0 >= 1.5, "{g}: last success moved {s0} → {s1} in 3 s");
        assert!(now - s1 < 2.0, "{g}: last success {:.1} s ago", now - s1);
        let polls = server.fake.counts().group(APP, g) - n0;
        assert!((2..=5).contains(&polls), "{g}: {polls} polls in 3 s at 1 s");
        assert_eq!(code(&after, g), Some(0.0), "{g}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_shows_in_the_metrics_and_healthy_groups_keep_their_schedule() {
    let _serial = SERIAL.lock().await;
    let hwm_before = vm_hwm_kib();
    let server = fake_with_app().await;
    // (group, fault, expected timattr_group_error_code)
    let cases: Vec<(&str, Fault, i64)> = vec![
        ("@TGS#hang", Fault::Hang, -1),
        ("@TGS#502", Fault::HttpStatus(502), -1),
        ("@TGS#503", Fault::HttpStatus(503), -1),
        ("@TGS#truncated", Fault::TruncatedJson, -1),
        ("@TGS#invalid_json", Fault::InvalidJson, -1),
        ("@TGS#invalid_utf8", Fault::InvalidUtf8, -1),
        ("@TGS#oversized", Fault::OversizedBody(50 << 20), -1),
        ("@TGS#mismatch", Fault::StatusMismatch, -1),
        ("@TGS#dupkey", Fault::DuplicateKey, -1),
        // One code per class of the reference: R, L, C, P, per-group, B.
        ("@TGS#r10002", Fault::ErrorCode(10002), 10002),
        ("@TGS#r70500", Fault::ErrorCode(70500), 70500),
        ("@TGS#l60007", Fault::ErrorCode(60007), 60007),
        ("@TGS#c70003", Fault::ErrorCode(70003), 70003),
        ("@TGS#p60020", Fault::ErrorCode(60020), 60020),
        ("@TGS#b60003", Fault::ErrorCode(60003), 60003),
        ("@TGS#slow", Fault::Latency(Duration::from_millis(200)), 0),
    ];
    let healthy = ["@TGS#ok1", "@TGS#ok2", "@TGS#ok3"];
    for g in healthy {
        group(&server, g, &[("k", "v")]);
    }
    for (g, _, _) in &cases {
        group(&server, g, &[("k", "v")]);
    }
    // Per-group 10010 the real way: the group goes away after its first poll.
    group(&server, "@TGS#deleted", &[("k", "v")]);

    let mut ids: Vec<&str> = healthy.to_vec();
    ids.extend(cases.iter().map(|(g, _, _)| *g));
    ids.push("@TGS#deleted");
    let extra = "    rate_limit: 100\n    max_concurrency: 16\n    timeout: 500ms\n";
    let config = yaml(&[
        app_yaml(APP, server.base_url().as_str(), extra, &ids),
        // An endpoint that does not resolve: its app fails on its own, the other goes on.
        app_yaml(
            OTHER_APP,
            "http://no-such-host.invalid/",
            "    allow_insecure_http: true\n    timeout: 500ms\n",
            &["@TGS#dns"],
        ),
    ]);
    let d = Running::start(&config).await;
    d.until("the first polls", |t| {
        ids.iter().all(|g| code(t, g) == Some(0.0))
    })
    .await;
    server.fake.destroy_group(APP, "@TGS#deleted").unwrap();
    for (g, fault, _) in &cases {
        server.fake.set_fault(
            FaultTarget::Group(APP, (*g).to_owned()),
            Some(fault.clone()),
        );
    }
    let t = d
        .until("every fault shows", |t| {
            cases
                .iter()
                .all(|(g, _, want)| code(t, g) == Some(*want as f64))
                && code(t, "@TGS#deleted") == Some(10010.0)
                && code(t, "@TGS#dns") == Some(-1.0)
        })
        .await;

    // Reasons of the answers that were not valid API answers.
    assert!(failures(&t, APP, "timeout") >= 1.0, "hang → timeout");
    assert!(failures(&t, APP, "http_status") >= 2.0, "502 and 503");
    assert!(
        failures(&t, APP, "invalid_response") >= 6.0,
        "truncated, invalid JSON, invalid UTF-8, oversized, mismatch, duplicate key"
    );
    assert_eq!(failures(&t, APP, "connect"), 0.0);
    assert!(
        failures(&t, OTHER_APP, "connect") >= 1.0,
        "DNS failure → connect"
    );
    // API errors are counted by code, and none of these is taken for a failure.
    for code in [10002, 70500, 60007, 70003, 60020, 60003, 10010] {
        assert!(
            api_errors(&t, code) >= 1.0,
            "api_errors_total{{error_code={code}}}"
        );
    }
    // Gauges per code: each faulty group counted once under its code.
    let by_code = |c: &str| {
        value(
            &t,
            "timattr_groups_by_error_code",
            &[("sdkappid", &APP.to_string()), ("error_code", c)],
        )
    };
    assert_eq!(by_code("-1"), Some(9.0));
    assert_eq!(by_code("0"), Some(4.0), "three healthy and the slow one");
    assert_eq!(by_code("10010"), Some(1.0));
    // A deleted group loses its attribute series; a transient failure keeps them.
    let attrs = |g: &str| value(&t, "timattr_group_attributes", &[("group_id", g)]);
    assert_eq!(attrs("@TGS#deleted"), None);
    assert_eq!(attrs("@TGS#502"), Some(1.0));
    assert_eq!(attrs("@TGS#r10002"), Some(1.0));
    assert_eq!(
        attrs("@TGS#dns"),
        None,
        "never answered: no attribute series"
    );
    for (g, _, want) in &cases {
        let up = value(&t, "timattr_group_up", &[("group_id", g)]);
        assert_eq!(up, Some(if *want == 0 { 1.0 } else { 0.0 }), "{g}");
    }

    // Retries: 5xx and class R are retried within a poll, an undecodable body and other
    // classes are not.
    assert_polled_on_time(&d, &server, &healthy).await;
    let counts = server.fake.counts();
    let n = |g: &str| counts.group(APP, g);
    let polls = n("@TGS#ok1");
    for g in ["@TGS#502", "@TGS#r10002", "@TGS#r70500"] {
        assert!(n(g) >= polls + 3, "{g}: {} requests vs {polls} polls", n(g));
    }
    for g in [
        "@TGS#truncated",
        "@TGS#c70003",
        "@TGS#p60020",
        "@TGS#b60003",
    ] {
        assert!(
            n(g) <= polls + 2,
            "{g}: {} requests vs {polls} polls: retried",
            n(g)
        );
    }

    // The 50 MiB answers were refused unread: the peak RSS of this process (fake included)
    // grew far less than one such body. (tests/client.rs proves the cap byte for byte; this is
    // the whole-process view, valid because the tests of this file run one at a time.)
    let grown_mib = (vm_hwm_kib() - hwm_before) / 1024;
    eprintln!("peak RSS grew {grown_mib} MiB during the fault matrix");
    assert!(
        grown_mib < 40,
        "peak RSS grew {grown_mib} MiB while 50 MiB answers came in"
    );

    // Clear everything: every group recovers on the next polls.
    for (g, _, _) in &cases {
        server
            .fake
            .set_fault(FaultTarget::Group(APP, (*g).to_owned()), None);
    }
    d.until("recovery", |t| {
        cases.iter().all(|(g, _, _)| code(t, g) == Some(0.0))
    })
    .await;
    d.stop().await;
}

/// A group whose answers take 3 s, polled every second with a 5 s timeout: its scheduled slots
/// that come while its poll is in flight are skipped, so it is not polled again before the
/// answer (Prometheus never overlaps scrapes of one target either). A group of its own app,
/// alone there, keeps its 1 s rhythm: a poll that ended while the owner slept is not taken for
/// one in flight.
///
/// Requests are counted where they arrive, on the fake's clock. The fake answers the slow group
/// at least 3 s after its request arrived, so without overlap two of its requests arrive at least
/// 3 s apart and a 7 s window holds at most 3 of them; load can only delay requests (widen the
/// gaps, lower the count), never the other way. Before the fix one request left per slot: 7–8
/// in 7 s, a second apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_group_is_not_polled_again_while_its_poll_is_in_flight() {
    const LATENCY: Duration = Duration::from_secs(3);
    const SLOW: &str = "@TGS#slow3s";
    const STEADY: &str = "@TGS#steady";
    let _serial = SERIAL.lock().await;
    let server = fake_with_app().await;
    group(&server, SLOW, &[("k", "v")]);
    server
        .fake
        .add_app(AppSpec::new(OTHER_APP, ADMIN, SecretKey::new(KEY)));
    server
        .fake
        .create_group(OTHER_APP, STEADY, GroupType::Public)
        .expect("group created");
    server.fake.set_fault(
        FaultTarget::Group(APP, SLOW.to_owned()),
        Some(Fault::Latency(LATENCY)),
    );
    let extra = "    rate_limit: 20\n    max_concurrency: 4\n    timeout: 5s\n";
    let d = Running::start(&yaml(&[
        app_yaml(APP, server.base_url().as_str(), extra, &[SLOW]),
        app_yaml(OTHER_APP, server.base_url().as_str(), extra, &[STEADY]),
    ]))
    .await;
    let arrivals = |g: &str| -> Vec<Duration> {
        let app = if g == SLOW { APP } else { OTHER_APP };
        server
            .fake
            .request_times_with_groups(app, "get_group_attr")
            .into_iter()
            .filter(|(_, id)| id.as_deref() == Some(g))
            .map(|(at, _)| at)
            .collect()
    };
    let first = eventually(WAIT, || async { arrivals(SLOW).first().copied() })
        .await
        .expect("the slow group is polled");
    // 7 s of the fake's clock after the slow group's first request, as the steady group's
    // requests (every second) show it; and at least three requests of the slow group.
    let window = first + Duration::from_secs(7);
    eventually(Duration::from_secs(30), || async {
        let passed = arrivals(STEADY).last().is_some_and(|at| *at >= window);
        (passed && arrivals(SLOW).len() >= 3).then_some(())
    })
    .await
    .expect("the fake's clock passes the window and the slow group is polled three times");
    let slow = arrivals(SLOW);
    let gaps: Vec<f64> = slow
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let in_window = slow.iter().filter(|at| **at < window).count();
    eprintln!("slow group: {in_window} requests in 7 s, {gaps:.2?} s apart");
    assert!(
        gaps.iter().all(|gap| *gap >= LATENCY.as_secs_f64()) && in_window <= 3,
        "the slow group was polled again before its answer: {in_window} requests in 7 s, \
         {gaps:.2?} s apart (its answers take {LATENCY:?})"
    );
    // Its answers still land, and the steady group kept its 1 s schedule.
    let t = d
        .until("the slow group answered", |t| code(t, SLOW) == Some(0.0))
        .await;
    assert_eq!(code(&t, STEADY), Some(0.0));
    // Its median gap, not a count: a stall under load delays a few polls, while a slot skipped
    // for a poll that had ended skips every other one (2 s apart).
    let steady: Vec<Duration> = arrivals(STEADY)
        .into_iter()
        .filter(|at| *at >= first && *at < window)
        .collect();
    let mut gaps: Vec<f64> = steady
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    gaps.sort_by(f64::total_cmp);
    assert!(gaps.len() >= 2, "{gaps:?}");
    let median = gaps[gaps.len() / 2];
    assert!(
        median < 1.5,
        "the steady group's polls are {gaps:.2?} s apart at poll_interval 1s"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_slow_the_app_down_and_it_recovers() {
    let _serial = SERIAL.lock().await;
    let server = fake_with_app().await;
    let ids: Vec<String> = (0..18).map(|i| format!("@TGS#rl{i:02}")).collect();
    for g in &ids {
        group(&server, g, &[("k", "v")]);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let extra = "    rate_limit: 20\n    timeout: 1s\n";
    let d = Running::start(&yaml(&[app_yaml(
        APP,
        server.base_url().as_str(),
        extra,
        &refs,
    )]))
    .await;
    d.until("all polled", |t| {
        refs.iter().all(|g| code(t, g) == Some(0.0))
    })
    .await;
    let per_second = |from: Duration, to: Duration| {
        let n = server
            .fake
            .request_times(APP, "get_group_attr")
            .into_iter()
            .filter(|t| *t >= from && *t < to)
            .count();
        n as f64 / (to - from).as_secs_f64()
    };
    let started = Instant::now();
    let since_fake_start = || {
        // request_times counts from the fake's start; so does this, close enough.
        server
            .fake
            .request_times(APP, "get_group_attr")
            .last()
            .copied()
            .unwrap_or_default()
    };
    let t0 = since_fake_start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let normal = per_second(t0, t0 + Duration::from_secs(3));

    server
        .fake
        .set_fault(FaultTarget::App(APP), Some(Fault::ErrorCode(60007)));
    d.until("rate-limit answers show", |t| {
        refs.iter().all(|g| code(t, g) == Some(60007.0))
    })
    .await;
    let t1 = since_fake_start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let slowed = per_second(t1, t1 + Duration::from_secs(3));
    assert!(
        normal >= 15.0,
        "18 groups at 1 s under a limit of 20: {normal:.1}/s"
    );
    assert!(
        slowed <= 11.5,
        "after 60007 the app runs at half its limit: {slowed:.1}/s (was {normal:.1}/s)"
    );
    let t = d.metrics().await;
    assert!(api_errors(&t, 60007) >= 18.0);
    assert_eq!(failures(&t, APP, "http_status"), 0.0);

    server.fake.set_fault(FaultTarget::App(APP), None);
    d.until("recovered", |t| {
        refs.iter().all(|g| code(t, g) == Some(0.0))
    })
    .await;
    eprintln!(
        "rate limit: {normal:.1}/s normal, {slowed:.1}/s after 60007, recovered {:?} after the start",
        started.elapsed()
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_usersig_is_renewed_with_one_retry_and_a_rotated_key_is_not_retried() {
    let _serial = SERIAL.lock().await;
    let server = fake_with_app().await;
    for g in ["@TGS#ok", "@TGS#renew", "@TGS#expired"] {
        group(&server, g, &[("k", "v")]);
    }
    // Every 2nd request of this group says "UserSig expired": the retry with a fresh UserSig
    // is the next request, which succeeds.
    server.fake.set_fault(
        FaultTarget::Group(APP, "@TGS#renew".into()),
        Some(Fault::Intermittent {
            code: 70001,
            every: 2,
        }),
    );
    // This one always says so: exactly one retry per poll, then the code is reported.
    server.fake.set_fault(
        FaultTarget::Group(APP, "@TGS#expired".into()),
        Some(Fault::ErrorCode(70001)),
    );
    let d = Running::start(&yaml(&[app_yaml(
        APP,
        server.base_url().as_str(),
        "",
        &["@TGS#ok", "@TGS#renew", "@TGS#expired"],
    )]))
    .await;
    let t = d
        .until("renewals happen", |t| {
            api_errors(t, 70001) >= 6.0
                && code(t, "@TGS#renew") == Some(0.0)
                && code(t, "@TGS#expired") == Some(70001.0)
        })
        .await;
    assert_eq!(
        value(&t, "timattr_group_up", &[("group_id", "@TGS#renew")]),
        Some(1.0)
    );
    assert!(value(&t, "timattr_usersig_expiry_timestamp_seconds", &[]).unwrap_or(0.0) > unix_now());
    // The renewed group never failed a poll: its error code is 0 at every scrape.
    for _ in 0..10 {
        let t = d.metrics().await;
        assert_eq!(code(&t, "@TGS#renew"), Some(0.0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counts = server.fake.counts();
    let (ok, renew, expired) = (
        counts.group(APP, "@TGS#ok") as i64,
        counts.group(APP, "@TGS#renew") as i64,
        counts.group(APP, "@TGS#expired") as i64,
    );
    // Same schedule: `expired` takes 2 requests a poll, `renew` 1.5 to 2 (the fake answers
    // 70001 to every second request of the group, and the retry can shift the alternation so
    // that each later poll meets it), give or take a poll of phase difference.
    assert!(
        expired >= 2 * ok - 3 && expired <= 2 * ok + 3,
        "expired: {expired} requests for {ok} polls"
    );
    assert!(
        renew * 2 >= 3 * ok - 4 && renew <= 2 * ok + 3,
        "renew: {renew} requests for {ok} polls"
    );

    // A rotated key: 70009 (class C) for every group, never retried in a loop.
    server
        .fake
        .set_fault(FaultTarget::Group(APP, "@TGS#renew".into()), None);
    server
        .fake
        .set_fault(FaultTarget::Group(APP, "@TGS#expired".into()), None);
    server
        .fake
        .set_secret_key(APP, SecretKey::new("rotated-key"));
    d.until("the wrong key shows", |t| {
        ["@TGS#ok", "@TGS#renew", "@TGS#expired"]
            .iter()
            .all(|g| code(t, g) == Some(70009.0))
    })
    .await;
    // Rejected before the body is read, so the fake counts these per app, not per group.
    let requests = || server.fake.counts().requests(APP, "get_group_attr");
    let before = requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let polls = requests() - before;
    assert!(
        (6..=12).contains(&polls),
        "{polls} requests for 3 groups in 3 s at 1 s: no retry loop"
    );
    server.fake.set_secret_key(APP, SecretKey::new(KEY));
    d.until("the key is back", |t| code(t, "@TGS#ok") == Some(0.0))
        .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_restarting_on_the_same_port_is_survived() {
    let _serial = SERIAL.lock().await;
    let server = fake_with_app().await;
    group(&server, "@TGS#a", &[("k", "v1")]);
    group(&server, "@TGS#b", &[("k", "v")]);
    let addr = server.addr;
    let d = Running::start(&yaml(&[app_yaml(
        APP,
        server.base_url().as_str(),
        "    timeout: 500ms\n",
        &["@TGS#a", "@TGS#b"],
    )]))
    .await;
    d.until("polled", |t| {
        code(t, "@TGS#a") == Some(0.0) && code(t, "@TGS#b") == Some(0.0)
    })
    .await;
    let fake = server.fake.clone();
    server.shutdown().await;
    let t = d
        .until("the outage shows", |t| {
            code(t, "@TGS#a") == Some(-1.0) && code(t, "@TGS#b") == Some(-1.0)
        })
        .await;
    assert!(
        failures(&t, APP, "connect") >= 2.0,
        "connection refused → connect"
    );
    assert_eq!(
        value(&t, "timattr_group_attributes", &[("group_id", "@TGS#a")]),
        Some(1.0),
        "a transient failure keeps the attribute series"
    );

    // The same API (same state) back on the same port, with a change made meanwhile.
    fake.set_attrs(APP, "@TGS#a", &[("k", "v2")]).unwrap();
    let listener = TcpListener::bind(addr)
        .await
        .expect("the old port is free again");
    let (stop_fake, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(fake.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    let t = d
        .until("recovered", |t| {
            code(t, "@TGS#a") == Some(0.0) && code(t, "@TGS#b") == Some(0.0)
        })
        .await;
    assert_eq!(
        value(
            &t,
            "timattr_group_attribute_changes_total",
            &[("group_id", "@TGS#a"), ("change", "modified")]
        ),
        Some(1.0),
        "the change made during the outage is counted once"
    );
    d.stop().await;
    let _ = stop_fake.send(());
    served.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_an_unsupported_type_is_a_per_group_error_and_stays_quiet() {
    let _serial = SERIAL.lock().await;
    // 10007 (no permission / no attribute support) drops the series and is not retried.
    let server = fake_with_app().await;
    server
        .fake
        .create_group(APP, "@TGS#voice", GroupType::AVChatRoom)
        .unwrap();
    server
        .fake
        .set_attr_support(APP, GroupType::AVChatRoom, false);
    let d = Running::start(&yaml(&[app_yaml(
        APP,
        server.base_url().as_str(),
        "",
        &["@TGS#voice"],
    )]))
    .await;
    d.until("10007", |t| code(t, "@TGS#voice") == Some(10007.0))
        .await;
    let before = server.fake.counts().group(APP, "@TGS#voice");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = server.fake.counts().group(APP, "@TGS#voice") - before;
    assert!((1..=3).contains(&n), "{n} requests in 2 s at 1 s");
    d.stop().await;
}

/// 70020 (and 70016) most often mean the SDKAppID lives on another region's domain: the log
/// line of the failing group says so. The fake answers 70020 for an SDKAppID it does not know,
/// as an app called on the wrong region's domain sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_sdkappid_is_logged_as_perhaps_the_wrong_region() {
    let _serial = SERIAL.lock().await;
    install_crypto();
    let server = timattr_exporter::fake::Fake::start(Default::default())
        .await
        .expect("fake API starts");
    let cfg = ConfigDir::new(server.base_url().as_str(), &["@TGS#a"], "");
    let exporter = Exporter::start(&cfg.path(), &[]);
    let (exporter, line) = tokio::task::spawn_blocking(move || {
        let line = exporter.wait_for_log("group poll failed", WAIT);
        (exporter, line)
    })
    .await
    .expect("the wait does not panic");
    let line = line.unwrap_or_else(|| panic!("no poll failure logged:\n{}", exporter.logs()));
    assert!(line.contains("error_code=70020"), "{line}");
    assert!(line.contains("domain of another region"), "{line}");
}

/// A proxy answering a new undocumented code for every group must not grow series without end:
/// per app, the `error_code` label takes documented codes as they are, the first
/// `MAX_UNDOCUMENTED_CODES` others too, and `other` for the rest, in both families that carry
/// it. `timattr_group_error_code` is a value and stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undocumented_error_codes_are_capped_per_app_with_other() {
    use timattr_exporter::metrics::{MAX_UNDOCUMENTED_CODES, OTHER_ERROR_CODE};
    let _serial = SERIAL.lock().await;
    let server = fake_with_app().await;
    let mut groups: Vec<(String, i64)> = (0..100)
        .map(|i| (format!("@TGS#u{i}"), 20_001 + i))
        .collect();
    // A documented code keeps its label even after the cap is reached.
    groups.push(("@TGS#gone".to_owned(), 10010));
    for (g, code) in &groups {
        server.fake.set_fault(
            FaultTarget::Group(APP, g.clone()),
            Some(Fault::ErrorCode(*code)),
        );
    }
    let ids: Vec<&str> = groups.iter().map(|(g, _)| g.as_str()).collect();
    let d = Running::start(&yaml(&[app_yaml(
        APP,
        server.base_url().as_str(),
        "    rate_limit: 150\n",
        &ids,
    )]))
    .await;
    let t = d
        .until("every group polled", |t| {
            groups.iter().all(|(g, c)| code(t, g) == Some(*c as f64))
        })
        .await;
    let app = APP.to_string();
    let labels_of = |family: &str| -> BTreeSet<String> {
        parse_samples(&t)
            .into_iter()
            .filter(|s| s.name == family)
            .filter(|s| s.labels.iter().any(|(k, v)| k == "sdkappid" && *v == app))
            .filter_map(|s| {
                s.labels
                    .into_iter()
                    .find(|(k, _)| k == "error_code")
                    .map(|(_, v)| v)
            })
            .collect()
    };
    let undocumented = |labels: &BTreeSet<String>| {
        labels
            .iter()
            .filter(|l| l.parse::<i64>().is_ok_and(|c| c > 20_000))
            .count()
    };
    let api = labels_of("timattr_api_errors_total");
    assert_eq!(undocumented(&api), MAX_UNDOCUMENTED_CODES, "{api:?}");
    assert!(
        api.contains(OTHER_ERROR_CODE) && api.contains("10010"),
        "{api:?}"
    );
    assert_eq!(api.len(), MAX_UNDOCUMENTED_CODES + 2, "{api:?}");
    let by_code = labels_of("timattr_groups_by_error_code");
    assert_eq!(
        undocumented(&by_code),
        MAX_UNDOCUMENTED_CODES,
        "{by_code:?}"
    );
    // Both families give a code the same label.
    assert!(
        api.iter().all(|l| by_code.contains(l)),
        "{api:?} vs {by_code:?}"
    );
    assert_eq!(
        value(
            &t,
            "timattr_groups_by_error_code",
            &[("sdkappid", &app), ("error_code", OTHER_ERROR_CODE)]
        ),
        Some((100 - MAX_UNDOCUMENTED_CODES) as f64)
    );
    d.stop().await;
}

/// A `get_appid_group_list` cursor that comes back (A → B → A) would page through the same
/// groups forever: the listing notices the cursor it saw before, fails after those three pages,
/// logs it, and keeps the last list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycling_list_cursor_fails_the_listing_and_keeps_the_last_list() {
    let _serial = SERIAL.lock().await;
    let server = fake_with_app().await;
    for g in ["@TGS#d1", "@TGS#d2", "@TGS#d3"] {
        group(&server, g, &[("k", "v")]);
    }
    let cfg = ConfigDir::new(server.base_url().as_str(), &[], "");
    std::fs::write(
        cfg.path(),
        format!(
            "poll_interval: 1s\napps:\n  - sdkappid: {APP}\n    endpoint: {}\n    identifier: {ADMIN}\n    secret_key_file: key\n    usersig_ttl: 1h\n    discover: {{refresh_interval: 2s}}\n",
            server.base_url()
        ),
    )
    .expect("write config");
    let exporter = Exporter::start(&cfg.path(), &[]);
    let wait_log = |exporter: Exporter, needle: &'static str| {
        tokio::task::spawn_blocking(move || {
            let line = exporter.wait_for_log(needle, Duration::from_secs(20));
            (exporter, line)
        })
    };
    let (exporter, line) = wait_log(exporter, "groups discovered")
        .await
        .expect("joins");
    assert!(line.is_some(), "no listing:\n{}", exporter.logs());
    let lists = || server.fake.request_times(APP, "get_appid_group_list").len();
    server
        .fake
        .set_fault(FaultTarget::App(APP), Some(Fault::CyclingNext));
    let before = lists();
    let (exporter, line) = wait_log(exporter, "keeping the last list")
        .await
        .expect("joins");
    let logs = exporter.logs();
    assert!(line.is_some(), "the listing did not fail:\n{logs}");
    // Pages 0, A and B; B answered A again.
    assert_eq!(lists() - before, 3, "{logs}");
    assert!(
        logs.contains("returned a cursor it had returned before"),
        "{logs}"
    );
    let metrics = scrape(&exporter.url("/metrics")).await;
    assert_eq!(
        value(
            &metrics,
            "timattr_groups",
            &[("sdkappid", &APP.to_string())]
        ),
        Some(3.0),
        "the last list is kept"
    );
}
