//! End to end on the real programs: the in-process fake Tencent Chat API, the exporter binary,
//! real Prometheus (Debian `prometheus`) loaded with the shipped recording and alerting rules,
//! and real Alertmanager (Debian `prometheus-alertmanager`) with the shipped routing, grouping
//! and inhibition, notifying a webhook this test serves.
//!
//! Driving the fake, the test destroys a group (10010), makes one unreadable (10007), changes a
//! group's attributes and breaks an app's credentials (70009), then checks that exactly the
//! right alerts reach the webhook, with the right labels and receivers, and none about the
//! healthy groups; that every query of every dashboard panel returns data from that Prometheus;
//! and that Alertmanager inhibits a per-group alert of the app whose credentials are failing.
//!
//! What differs from the shipped files, and why (everything else is used as shipped):
//! - Prometheus scrapes and evaluates every 1 s (the example config says 15 s).
//! - The alert rules are a copy of config/prometheus/alerts.yml with every `for:` divided by 60
//!   (1m becomes 1s, 10m becomes 10s): the shipped durations would make the test take ten
//!   minutes. Expressions, labels and annotations are the shipped ones;
//!   config/prometheus/rules.yml is loaded as it is.
//! - The Alertmanager config is a copy of config/alertmanager.yml where every receiver's webhook
//!   URL points at this test's webhook (`/<receiver name>`) and every `group_wait` and
//!   `group_interval` is 1 s. Routes, `group_by` and `inhibit_rules` are the shipped ones.
//! - The exporter's config labels one group `page_on_change="true"` (`timattr_group_labels`), so
//!   that group's attribute change pages and the other changing group's is an `info` notice.
//! - Dashboard queries get Grafana's variables substituted: `$sdkappid` and `$group_id` with
//!   their "All" value `.*`, `$__rate_interval` with `1m` (what Grafana would pick is at least
//!   4 scrape intervals; one minute holds both the baseline and the changed samples).
//!
//! Every port is chosen by the program that binds it (`:0`) and read back from its log; every
//! child process is killed, and the temporary directory removed, when [`Stack`] drops, on
//! failure too (then the tail of each program's log is printed).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use timattr_exporter::fake::{AppSpec, Fake, GroupType, Scenario, parse_duration};
use timattr_exporter::secret::SecretKey;

use common::{eventually, install_crypto};

const APP_A: u64 = 1_400_000_101;
const APP_B: u64 = 1_400_000_102;
const ADMIN: &str = "administrator";
const KEY_A: &str = "e2e-key-A-5d0c3f9a8b7e6d5c4b3a29180f1e2d3c";
const KEY_B: &str = "e2e-key-B-9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
/// What app B's key is rotated to behind the exporter's back.
const KEY_B_ROTATED: &str = "e2e-key-B-rotated-0000000000000000000000";

// App A.
const HEALTHY_1: &str = "@TGS#e2e_healthy_1";
const HEALTHY_2: &str = "@TGS#e2e_healthy_2";
const GONE: &str = "@TGS#e2e_gone";
/// An AVChatRoom: the only one of its type in app A, so turning off attribute support for the
/// type makes exactly this group answer 10007.
const DENIED: &str = "@TGS#e2e_denied";
const CHANGING: &str = "@TGS#e2e_changing";
/// Labelled `page_on_change="true"`: its attribute changes page.
const WATCHED: &str = "@TGS#e2e_watched";
// App B.
const B_1: &str = "@TGS#e2e_b_1";
const B_2: &str = "@TGS#e2e_b_2";

/// How long any one stage may take before the test fails.
const STAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_the_webhook_and_every_panel_has_data() {
    let began = Instant::now();
    install_crypto();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prometheus_bin = tool(&["prometheus"]);
    let alertmanager_bin = tool(&["alertmanager", "prometheus-alertmanager"]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client");

    // ------------------------------------------------------------ the fake API
    let server = Fake::start(Scenario::default())
        .await
        .expect("fake API starts");
    let fake = &server.fake;
    fake.add_app(AppSpec::new(APP_A, ADMIN, SecretKey::new(KEY_A)));
    fake.add_app(AppSpec::new(APP_B, ADMIN, SecretKey::new(KEY_B)));
    for (app, id, ty, attrs) in [
        (
            APP_A,
            HEALTHY_1,
            GroupType::Public,
            &[("status", "open")][..],
        ),
        (
            APP_A,
            HEALTHY_2,
            GroupType::Community,
            &[("k", "v"), ("n", "1")],
        ),
        (APP_A, GONE, GroupType::Public, &[("room", "lobby")]),
        (APP_A, DENIED, GroupType::AVChatRoom, &[("live", "yes")]),
        (
            APP_A,
            CHANGING,
            GroupType::Public,
            &[("status", "open"), ("pin", "1")],
        ),
        (APP_A, WATCHED, GroupType::Public, &[("mode", "quiz")]),
        (APP_B, B_1, GroupType::Public, &[("x", "1")]),
        (APP_B, B_2, GroupType::Public, &[("y", "2")]),
    ] {
        fake.create_group(app, id, ty).expect("group created");
        fake.set_attrs(app, id, attrs).expect("attributes set");
    }

    let webhook = Webhook::start().await;
    let mut stack = Stack::new();
    let dir = stack.dir.path().to_owned();

    // ------------------------------------------------------------ the exporter
    let exporter_cfg = dir.join("timattr.yml");
    write_secret(&dir.join("key_a"), KEY_A);
    write_secret(&dir.join("key_b"), KEY_B);
    let endpoint = server.base_url();
    let app_yaml = |app: u64, key: &str, groups: &[&str]| {
        let groups: String = groups
            .iter()
            .map(|g| format!("      - \"{g}\"\n"))
            .collect();
        format!(
            "  - sdkappid: {app}\n    endpoint: {endpoint}\n    identifier: {ADMIN}\n    \
             secret_key_file: {key}\n    rate_limit: 50\n    timeout: 5s\n    \
             usersig_ttl: 24h\n    groups:\n{groups}",
            key = dir.join(key).display()
        )
    };
    // WATCHED opts into paging on changes; CHANGING has a label that does not.
    let app_a = app_yaml(
        APP_A,
        "key_a",
        &[HEALTHY_1, HEALTHY_2, GONE, DENIED, CHANGING, WATCHED],
    )
    .replace(
        &format!("      - \"{WATCHED}\"\n"),
        &format!("      - id: \"{WATCHED}\"\n        labels: {{page_on_change: \"true\"}}\n"),
    )
    .replace(
        &format!("      - \"{CHANGING}\"\n"),
        &format!("      - id: \"{CHANGING}\"\n        labels: {{team: rooms}}\n"),
    );
    assert!(app_a.contains("page_on_change") && app_a.contains("team: rooms"));
    std::fs::write(
        &exporter_cfg,
        format!(
            "poll_interval: 1s\napps:\n{}{}",
            app_a,
            app_yaml(APP_B, "key_b", &[B_1, B_2]),
        ),
    )
    .expect("write exporter config");
    let exporter = stack.spawn(
        "timattr_exporter",
        Command::new(env!("CARGO_BIN_EXE_timattr_exporter"))
            .arg(format!("--config.file={}", exporter_cfg.display()))
            .arg("--web.listen-address=127.0.0.1:0"),
    );
    let exporter_addr = stack
        .wait_for_field(exporter, "timattr_exporter starting", "listen_address=")
        .await;

    // ------------------------------------------------------------ Alertmanager
    let am_cfg = dir.join("alertmanager.yml");
    std::fs::write(
        &am_cfg,
        test_alertmanager_config(&repo.join("config/alertmanager.yml"), &webhook.base()),
    )
    .expect("write Alertmanager config");
    std::fs::create_dir(dir.join("am-data")).expect("mkdir");
    let alertmanager = stack.spawn(
        "alertmanager",
        Command::new(&alertmanager_bin)
            .arg(format!("--config.file={}", am_cfg.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg("--web.listen-address=127.0.0.1:0")
            // Empty: no cluster port, no gossip with anything else on the machine.
            .arg("--cluster.listen-address="),
    );
    let am_addr = stack
        .wait_for_field(alertmanager, "msg=\"Listening on\"", "address=")
        .await;

    // ------------------------------------------------------------ Prometheus
    let alerts_copy = dir.join("alerts.yml");
    std::fs::write(
        &alerts_copy,
        shortened_alert_rules(&repo.join("config/prometheus/alerts.yml")),
    )
    .expect("write alert rules");
    let prom_cfg = dir.join("prometheus.yml");
    let prom_yaml = serde_json::json!({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [
            repo.join("config/prometheus/rules.yml"),
            alerts_copy,
        ],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [am_addr]}]}]},
        // The job name the shipped alerts and dashboard expect for a single exporter.
        "scrape_configs": [
            {"job_name": "timattr", "static_configs": [{"targets": [exporter_addr]}]},
        ],
    });
    // JSON is YAML.
    std::fs::write(&prom_cfg, prom_yaml.to_string()).expect("write Prometheus config");
    let prometheus = stack.spawn(
        "prometheus",
        Command::new(&prometheus_bin)
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0"),
    );
    let prom_addr = stack
        .wait_for_field(prometheus, "msg=\"Listening on\"", "address=")
        .await;
    let prom = Prometheus {
        http: http.clone(),
        base: format!("http://{prom_addr}"),
    };

    let ready = eventually(STAGE, || async {
        let resp = http
            .get(format!("{}/-/ready", prom.base))
            .send()
            .await
            .ok()?;
        resp.status().is_success().then_some(())
    })
    .await;
    assert!(ready.is_some(), "Prometheus never became ready");

    // ------------------------------------------------------------ baseline: all healthy
    // Wait until Prometheus holds every group healthy and the changing group's change
    // counters at 0, so that the coming change is an increase it can see.
    let all_groups = [
        HEALTHY_1, HEALTHY_2, GONE, DENIED, CHANGING, WATCHED, B_1, B_2,
    ];
    let baseline = eventually(STAGE, || async {
        let up = prom.query("timattr_group_up == 1").await;
        let changes = prom
            .query(&format!(
                "timattr_group_attribute_changes_total{{group_id=~\"{CHANGING}|{WATCHED}\"}} == 0"
            ))
            .await;
        let labels = prom.query("timattr_group_labels").await;
        (up.len() == all_groups.len() && changes.len() == 6 && labels.len() == 2).then_some(())
    })
    .await;
    if baseline.is_none() {
        panic!(
            "Prometheus never saw all groups healthy: {:?}",
            prom.query("timattr_group_up").await
        );
    }
    // Right after start-up, TimattrExporterAbsent may be pending from a rule evaluation that
    // ran before the first scrape; it must be gone one evaluation later, and nothing else may
    // be pending or firing while every group is healthy.
    let quiet = eventually(Duration::from_secs(10), || async {
        prom.alerts().await.is_empty().then_some(())
    })
    .await;
    if quiet.is_none() {
        panic!(
            "alerts while every group is healthy: {:#?}",
            prom.alerts().await
        );
    }
    eprintln!("e2e: baseline after {:.1?}", began.elapsed());

    // ------------------------------------------------------------ phase 1: break things
    fake.destroy_group(APP_A, GONE).expect("destroy");
    fake.set_attr_support(APP_A, GroupType::AVChatRoom, false);
    // One key modified, one removed, one added.
    fake.set_attrs(APP_A, CHANGING, &[("status", "closed"), ("topic", "x")])
        .expect("change attributes");
    fake.set_attrs(APP_A, WATCHED, &[("mode", "vote")])
        .expect("change attributes");
    fake.set_secret_key(APP_B, SecretKey::new(KEY_B_ROTATED));

    let a = APP_A.to_string();
    let b = APP_B.to_string();
    let expected: BTreeSet<AlertKey> = [
        key("TimattrGroupDeleted", &a, Some(GONE), None),
        key("TimattrGroupPermissionDenied", &a, Some(DENIED), None),
        // One alert per group (not per kind of change): a notice for the unlabelled group, a
        // page for the watched one.
        key("TimattrAttributesChanged", &a, Some(CHANGING), None),
        key("TimattrWatchedAttributesChanged", &a, Some(WATCHED), None),
        key("TimattrCredentialsFailing", &b, None, Some("70009")),
    ]
    .into_iter()
    .collect();
    let arrived = eventually(STAGE, || async {
        let got: BTreeSet<AlertKey> = webhook
            .alerts()
            .iter()
            .filter(|a| a.status == "firing")
            .map(Received::key)
            .collect();
        expected.is_subset(&got).then_some(())
    })
    .await;
    eprintln!("e2e: webhook notifications:\n{}", webhook.trimmed_json());
    if arrived.is_none() {
        panic!(
            "not every expected alert reached the webhook; Prometheus has {:#?}",
            prom.alerts().await
        );
    }
    eprintln!(
        "e2e: phase-1 alerts delivered after {:.1?}",
        began.elapsed()
    );

    for alert in webhook.alerts() {
        let l = &alert.labels;
        let (severity, receiver) = match l["alertname"].as_str() {
            "TimattrAttributesChanged" => ("info", "low-noise"),
            _ => ("critical", "pager"),
        };
        assert_eq!(
            l.get("severity").map(String::as_str),
            Some(severity),
            "{alert:?}"
        );
        assert_eq!(alert.receiver, receiver, "routed by severity: {alert:?}");
        assert_eq!(alert.path, format!("/{receiver}"), "{alert:?}");
        assert_eq!(
            l.get("job").map(String::as_str),
            Some("timattr"),
            "{alert:?}"
        );
        // As rendered by scripts/render-rules.py with its default base.
        let runbook = format!("docs/runbook.md#{}", l["alertname"].to_lowercase());
        assert_eq!(alert.runbook_url, runbook, "{alert:?}");
        // Per-app alerts aggregate the instance away; per-group ones keep it.
        if l.contains_key("group_id") {
            assert_eq!(l.get("instance"), Some(&exporter_addr), "{alert:?}");
        }
    }

    // ------------------------------------------------------------ every dashboard panel
    let dashboard: Json = serde_json::from_str(
        &std::fs::read_to_string(repo.join("dashboards/timattr.json")).expect("read dashboard"),
    )
    .expect("dashboard is JSON");
    let exprs = panel_queries(&dashboard);
    assert!(
        exprs.len() >= 20,
        "dashboard queries found: {}",
        exprs.len()
    );
    // The headline stats must also be right: 8 groups, of which the two of app B (70009),
    // the deleted one and the unreadable one fail.
    let headline = [
        ("Groups watched", 8.0),
        ("Healthy groups", 4.0),
        ("Failing groups", 4.0),
    ];
    let mut empty = Vec::new();
    for (title, expr) in &exprs {
        let result = prom.query(expr).await;
        eprintln!("e2e: panel {title:?}: {} series", result.len());
        if result.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
        if let Some((_, want)) = headline.iter().find(|(t, _)| t == title) {
            let got: Option<f64> = result
                .first()
                .and_then(|r| r["value"][1].as_str())
                .and_then(|v| v.parse().ok());
            assert_eq!(got, Some(*want), "panel {title:?}: {expr} gave {result:?}");
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );

    // ------------------------------------------------------------ phase 2: inhibition
    // The credentials of app B are fixed and, at the same time, one of its groups is found
    // deleted. TimattrCredentialsFailing keeps firing for the 5 minutes its counter branch
    // looks back, so the shipped inhibit rule (same sdkappid) holds the group's
    // TimattrGroupDeleted back: Alertmanager must have it, suppressed, and not notify it.
    fake.set_secret_key(APP_B, SecretKey::new(KEY_B));
    fake.destroy_group(APP_B, B_2).expect("destroy");
    let am = format!("http://{am_addr}");
    let inhibited = eventually(STAGE, || async {
        let resp = http.get(format!("{am}/api/v2/alerts")).send().await.ok()?;
        let alerts: Vec<Json> = json(resp).await?;
        alerts.into_iter().find(|a| {
            a["labels"]["alertname"] == "TimattrGroupDeleted"
                && a["labels"]["group_id"] == B_2
                && a["status"]["state"] == "suppressed"
                && a["status"]["inhibitedBy"]
                    .as_array()
                    .is_some_and(|by| !by.is_empty())
        })
    })
    .await;
    let Some(inhibited) = inhibited else {
        panic!(
            "Alertmanager never held TimattrGroupDeleted of {B_2} as inhibited; Prometheus has {:#?}",
            prom.alerts().await
        );
    };
    eprintln!(
        "e2e: inhibited in Alertmanager: {}",
        serde_json::json!({"labels": inhibited["labels"], "status": inhibited["status"]})
    );
    // Not notified: unsuppressed, the same alert for app A arrived one group_wait (1 s) after
    // Alertmanager got it. Watch for five group intervals that it stays held back. (An absence
    // can only be observed over a window.)
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(5) {
        assert!(
            !webhook
                .alerts()
                .iter()
                .any(|a| a.labels.get("group_id").map(String::as_str) == Some(B_2)),
            "an inhibited alert was notified:\n{}",
            webhook.trimmed_json()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let still_credentials =
        prom.alerts().await.into_iter().any(|a| {
            a["labels"]["alertname"] == "TimattrCredentialsFailing" && a["state"] == "firing"
        });
    assert!(still_credentials, "the inhibiting alert must still fire");

    // ------------------------------------------------------------ nothing else, ever
    // Exactly the expected alerts were notified (firing or resolved), none of them about a
    // healthy group, and Prometheus has no alert, not even pending, about a healthy group.
    let notified: BTreeSet<AlertKey> = webhook.alerts().iter().map(Received::key).collect();
    assert_eq!(
        notified,
        expected,
        "notified alerts differ from the expected ones:\n{}",
        webhook.trimmed_json()
    );
    let healthy = [HEALTHY_1, HEALTHY_2, B_1];
    for alert in prom.alerts().await {
        let group = alert["labels"]["group_id"].as_str().unwrap_or_default();
        assert!(
            !healthy.contains(&group),
            "alert about a healthy group: {alert:#}"
        );
        let name = alert["labels"]["alertname"].as_str().unwrap_or_default();
        let known = expected.iter().any(|k| k.alertname == name)
            || (name == "TimattrGroupDeleted" && group == B_2);
        assert!(known, "unexpected alert in Prometheus: {alert:#}");
    }

    eprintln!("e2e: passed in {:.1?}", began.elapsed());
    drop(stack);
    server.shutdown().await;
}

/// A bulk deletion of 500 groups of one app is ONE notification that lists them all, on the
/// shipped Alertmanager config (routes and `group_by` as shipped, `group_wait` shortened): the
/// per-group critical alerts are grouped per app. Another app's deletions, and the same app's
/// watched-group changes, are notifications of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_deletion_is_one_notification_per_app() {
    install_crypto();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let alertmanager_bin = tool(&["alertmanager", "prometheus-alertmanager"]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client");
    let webhook = Webhook::start().await;
    let mut stack = Stack::new();
    let dir = stack.dir.path().to_owned();
    let am_cfg = dir.join("alertmanager.yml");
    std::fs::write(
        &am_cfg,
        test_alertmanager_config(&repo.join("config/alertmanager.yml"), &webhook.base()),
    )
    .expect("write Alertmanager config");
    std::fs::create_dir(dir.join("am-data")).expect("mkdir");
    let alertmanager = stack.spawn(
        "alertmanager",
        Command::new(&alertmanager_bin)
            .arg(format!("--config.file={}", am_cfg.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .arg("--cluster.listen-address="),
    );
    let am = format!(
        "http://{}",
        stack
            .wait_for_field(alertmanager, "msg=\"Listening on\"", "address=")
            .await
    );

    // As Prometheus sends them: per-group alerts with their own annotations.
    let alert = |name: &str, app: u64, group: &str| {
        serde_json::json!({
            "labels": {
                "alertname": name, "severity": "critical", "job": "timattr",
                "instance": "timattr-exporter-0:9877",
                "sdkappid": app.to_string(), "group_id": group,
            },
            "annotations": {"summary": format!("Tencent Chat group {group} was deleted")},
        })
    };
    let mut alerts: Vec<Json> = (0..500)
        .map(|i| alert("TimattrGroupDeleted", APP_A, &format!("@TGS#bulk_{i:03}")))
        .collect();
    alerts.extend((0..3).map(|i| alert("TimattrGroupDeleted", APP_B, &format!("@TGS#b_{i}"))));
    alerts.extend((0..2).map(|i| {
        alert(
            "TimattrWatchedAttributesChanged",
            APP_A,
            &format!("@TGS#w_{i}"),
        )
    }));
    let posted = eventually(STAGE, || async {
        let resp = http
            .post(format!("{am}/api/v2/alerts"))
            .header("content-type", "application/json")
            .body(Json::Array(alerts.clone()).to_string())
            .send()
            .await
            .ok()?;
        resp.status().is_success().then_some(())
    })
    .await;
    assert!(posted.is_some(), "Alertmanager never accepted the alerts");

    // Per (alertname, sdkappid): how many notifications, and the group_ids of the first.
    let summary = || {
        let mut out: BTreeMap<(String, String), (usize, BTreeSet<String>)> = BTreeMap::new();
        for (path, n) in webhook.notifications() {
            assert_eq!(path, "/pager", "critical alerts page: {n}");
            let groups: BTreeSet<String> = n["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    a["labels"]["group_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect();
            let key = (
                n["groupLabels"]["alertname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                n["groupLabels"]["sdkappid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            let entry = out.entry(key).or_default();
            entry.0 += 1;
            if entry.1.is_empty() {
                entry.1 = groups;
            }
        }
        out
    };
    let arrived = eventually(STAGE, || async { (summary().len() == 3).then_some(()) }).await;
    assert!(
        arrived.is_some(),
        "not every notification arrived: {:?}",
        summary().keys().collect::<Vec<_>>()
    );
    // No more come: a group_interval (1 s here) passes several times with nothing new.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let got = summary();
    let a = APP_A.to_string();
    let b = APP_B.to_string();
    let deleted = &got[&("TimattrGroupDeleted".to_owned(), a.clone())];
    assert_eq!(deleted.0, 1, "500 deletions of one app: one notification");
    assert_eq!(
        deleted.1.len(),
        500,
        "the notification lists all 500 groups"
    );
    assert_eq!(got[&("TimattrGroupDeleted".to_owned(), b.clone())].0, 1);
    assert_eq!(
        got[&("TimattrGroupDeleted".to_owned(), b.clone())].1.len(),
        3
    );
    let watched = &got[&("TimattrWatchedAttributesChanged".to_owned(), a.clone())];
    assert_eq!((watched.0, watched.1.len()), (1, 2), "{got:?}");
    // Each alert in it keeps its per-group annotation.
    let first = webhook
        .notifications()
        .into_iter()
        .find(|(_, n)| {
            n["groupLabels"]["sdkappid"] == a.as_str()
                && n["groupLabels"]["alertname"] == "TimattrGroupDeleted"
        })
        .expect("checked above");
    for alert in first.1["alerts"].as_array().expect("alerts") {
        let group = alert["labels"]["group_id"].as_str().expect("group_id");
        assert_eq!(
            alert["annotations"]["summary"],
            format!("Tencent Chat group {group} was deleted")
        );
    }
    drop(stack);
}

// ---------------------------------------------------------------- alerts as received

/// What identifies an alert here: its name, app, group and the label that splits it further
/// (`change` for attribute changes, `error_code` for per-app code alerts).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct AlertKey {
    alertname: String,
    sdkappid: String,
    group_id: Option<String>,
    detail: Option<String>,
}

fn key(alertname: &str, sdkappid: &str, group_id: Option<&str>, detail: Option<&str>) -> AlertKey {
    AlertKey {
        alertname: alertname.to_owned(),
        sdkappid: sdkappid.to_owned(),
        group_id: group_id.map(str::to_owned),
        detail: detail.map(str::to_owned),
    }
}

/// One alert of one webhook notification.
#[derive(Debug, Clone)]
struct Received {
    /// The URL path it was POSTed to: `/<receiver name>`.
    path: String,
    /// The receiver the notification names.
    receiver: String,
    status: String,
    labels: BTreeMap<String, String>,
    runbook_url: String,
}

impl Received {
    fn key(&self) -> AlertKey {
        let get = |k: &str| self.labels.get(k).cloned();
        AlertKey {
            alertname: get("alertname").unwrap_or_default(),
            sdkappid: get("sdkappid").unwrap_or_default(),
            group_id: get("group_id"),
            detail: get("change").or_else(|| get("error_code")),
        }
    }
}

/// A webhook receiver on 127.0.0.1:0 keeping every POSTed notification.
struct Webhook {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<(String, Json)>>>,
}

impl Webhook {
    async fn start() -> Webhook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook");
        let addr = listener.local_addr().expect("local address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = Arc::clone(&sink);
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let sink = Arc::clone(&sink);
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await?.to_bytes();
                        let status = match serde_json::from_slice::<Json>(&body) {
                            Ok(json) => {
                                sink.lock().expect("webhook lock").push((path, json));
                                200
                            }
                            Err(_) => 400,
                        };
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .expect("a static response is valid"),
                        )
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Webhook { addr, received }
    }

    /// The notifications received: (path, body).
    fn notifications(&self) -> Vec<(String, Json)> {
        self.received.lock().expect("webhook lock").clone()
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn alerts(&self) -> Vec<Received> {
        let received = self.received.lock().expect("webhook lock");
        let mut out = Vec::new();
        for (path, n) in received.iter() {
            for alert in n["alerts"].as_array().into_iter().flatten() {
                let labels = alert["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                out.push(Received {
                    path: path.clone(),
                    receiver: n["receiver"].as_str().unwrap_or_default().to_owned(),
                    status: alert["status"].as_str().unwrap_or_default().to_owned(),
                    labels,
                    runbook_url: alert["annotations"]["runbook_url"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
        }
        out
    }

    /// The notifications without annotations, URLs and timestamps, for the log.
    fn trimmed_json(&self) -> String {
        let received = self.received.lock().expect("webhook lock");
        let trimmed: Vec<Json> = received
            .iter()
            .map(|(path, n)| {
                serde_json::json!({
                    "path": path,
                    "receiver": n["receiver"],
                    "status": n["status"],
                    "groupLabels": n["groupLabels"],
                    "alerts": n["alerts"].as_array().into_iter().flatten().map(|a| {
                        serde_json::json!({"status": a["status"], "labels": a["labels"]})
                    }).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::to_string_pretty(&trimmed).expect("JSON serializes")
    }
}

// ---------------------------------------------------------------- Prometheus' HTTP API

struct Prometheus {
    http: reqwest::Client,
    base: String,
}

impl Prometheus {
    /// The result vector of an instant query; a query Prometheus rejects fails the test.
    async fn query(&self, expr: &str) -> Vec<Json> {
        let resp = self
            .http
            .get(
                url::Url::parse_with_params(
                    &format!("{}/api/v1/query", self.base),
                    [("query", expr)],
                )
                .expect("a valid URL"),
            )
            .send()
            .await
            .expect("Prometheus query API");
        let body: Json = json(resp).await.expect("Prometheus answers JSON");
        assert_eq!(body["status"], "success", "query {expr}: {body}");
        match body["data"]["result"].as_array() {
            Some(v) => v.clone(),
            // A scalar or string result is one value.
            None => vec![body["data"]["result"].clone()],
        }
    }

    /// Alerts pending or firing in Prometheus.
    async fn alerts(&self) -> Vec<Json> {
        let resp = self
            .http
            .get(format!("{}/api/v1/alerts", self.base))
            .send()
            .await
            .expect("Prometheus alerts API");
        let body: Json = json(resp).await.expect("Prometheus answers JSON");
        body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// A response body as JSON (this reqwest is built without its `json` feature).
async fn json<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Option<T> {
    serde_json::from_slice(&resp.bytes().await.ok()?).ok()
}

// ---------------------------------------------------------------- config files

/// The shipped alert rules with every `for:` divided by 60: minutes become seconds, so the
/// durations keep their order (1m -> 1s for the alerts under test, 10m -> 10s for
/// TimattrExporterAbsent, which must outlast the second before Prometheus' first scrape).
/// The number of rules rewritten must be non-zero, so a change of the file's shape cannot
/// silently keep the long durations.
fn shortened_alert_rules(shipped: &Path) -> String {
    let mut doc: Yaml =
        serde_yaml::from_str(&std::fs::read_to_string(shipped).expect("read alert rules"))
            .expect("alert rules are YAML");
    let mut rewritten = 0;
    for group in doc["groups"].as_sequence_mut().expect("groups").iter_mut() {
        for rule in group["rules"].as_sequence_mut().expect("rules").iter_mut() {
            let rule = rule.as_mapping_mut().expect("a rule is a mapping");
            if let Some(d) = rule.get("for").and_then(Yaml::as_str) {
                let shipped = parse_duration(d)
                    .unwrap_or_else(|e| panic!("`for: {d}` in the shipped rules: {e}"));
                let scaled = (shipped.as_secs() / 60).max(1);
                rule.insert("for".into(), format!("{scaled}s").into());
                rewritten += 1;
            }
        }
    }
    assert!(rewritten > 0, "no `for:` found in {}", shipped.display());
    serde_yaml::to_string(&doc).expect("YAML serializes")
}

/// The shipped Alertmanager config with every webhook pointing at `webhook/<receiver>` and
/// every route's `group_wait` and `group_interval` set to 1 s.
fn test_alertmanager_config(shipped: &Path, webhook: &str) -> String {
    let mut doc: Yaml =
        serde_yaml::from_str(&std::fs::read_to_string(shipped).expect("read Alertmanager config"))
            .expect("Alertmanager config is YAML");
    // Set on the root route (children inherit it) and wherever a child overrides it.
    fn shorten(route: &mut Yaml, root: bool) {
        let Some(map) = route.as_mapping_mut() else {
            return;
        };
        for k in ["group_wait", "group_interval"] {
            if root || map.contains_key(k) {
                map.insert(k.into(), "1s".into());
            }
        }
        if let Some(routes) = map.get_mut("routes").and_then(Yaml::as_sequence_mut) {
            routes.iter_mut().for_each(|r| shorten(r, false));
        }
    }
    shorten(&mut doc["route"], true);
    for receiver in doc["receivers"]
        .as_sequence_mut()
        .expect("receivers")
        .iter_mut()
    {
        let name = receiver["name"].as_str().expect("receiver name").to_owned();
        let hooks = receiver["webhook_configs"]
            .as_sequence_mut()
            .unwrap_or_else(|| panic!("receiver {name} has no webhook to redirect"));
        for hook in hooks.iter_mut() {
            hook["url"] = format!("{webhook}/{name}").into();
        }
    }
    serde_yaml::to_string(&doc).expect("YAML serializes")
}

/// A secret file only its owner can read (else the exporter warns).
fn write_secret(path: &Path, key: &str) {
    std::fs::write(path, format!("{key}\n")).expect("write key");
    let mut perms = std::fs::metadata(path).expect("key metadata").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(path, perms).expect("chmod key");
}

/// Every panel target's query with the dashboard variables substituted, with its panel title.
fn panel_queries(dashboard: &Json) -> Vec<(String, String)> {
    // Each variable's "All" value (what `.*` means: every app, every group).
    let mut vars: Vec<(String, String)> = vec![("__rate_interval".into(), "1m".into())];
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let (Some(name), Some(all)) = (v["name"].as_str(), v["allValue"].as_str()) {
            vars.push((name.to_owned(), all.to_owned()));
        }
    }
    fn walk(panels: &Json, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    let title = p["title"].as_str().unwrap_or_default().to_owned();
                    out.push((title, expr.to_owned()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for (title, expr) in out.iter_mut() {
        for (name, value) in &vars {
            *expr = expr
                .replace(&format!("${{{name}}}"), value)
                .replace(&format!("${name}"), value);
        }
        assert!(
            !expr.contains('$'),
            "panel {title:?}: unknown variable in {expr}"
        );
    }
    out
}

// ---------------------------------------------------------------- child processes

/// A program on PATH under one of its names; missing is a failure, not a skip.
fn tool(names: &[&str]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("none of {names:?} is on PATH: run scripts/install-test-deps.sh");
}

/// One child process and its output (stdout and stderr), collected line by line.
struct Proc {
    name: &'static str,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

/// Every process the test started, and the temporary directory of their files. Dropping it
/// kills and reaps every process first, then removes the directory; during a panic it prints
/// the end of each process's output.
struct Stack {
    procs: Vec<Proc>,
    dir: tempfile::TempDir,
}

impl Stack {
    fn new() -> Stack {
        Stack {
            procs: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Starts `cmd`; returns its index for [`Stack::wait_for_field`].
    fn spawn(&mut self, name: &'static str, cmd: &mut Command) -> usize {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout piped"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr piped"));
        for stream in [out, err] {
            let sink = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().expect("log lock").push(line);
                }
            });
        }
        self.procs.push(Proc { name, child, log });
        self.procs.len() - 1
    }

    /// Waits for a log line containing `needle` and returns the value of its `field` (like
    /// `address=`), which is how each program tells the port it bound.
    async fn wait_for_field(&mut self, index: usize, needle: &str, field: &str) -> String {
        let found = eventually(Duration::from_secs(30), || {
            let proc = &mut self.procs[index];
            let exited = proc.child.try_wait().ok().flatten();
            let line = proc
                .log
                .lock()
                .expect("log lock")
                .iter()
                .find(|l| l.contains(needle))
                .cloned();
            async move {
                if let Some(status) = exited {
                    return Some(Err(status));
                }
                line.map(Ok)
            }
        })
        .await;
        let name = self.procs[index].name;
        let line = match found {
            Some(Ok(line)) => line,
            Some(Err(status)) => panic!("{name} exited early ({status})"),
            None => panic!("{name} never logged {needle:?}"),
        };
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(field))
            .unwrap_or_else(|| panic!("no {field} in {name}'s line {line:?}"))
            .trim_matches('"')
            .to_owned()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for proc in self.procs.iter_mut().rev() {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
            if std::thread::panicking() {
                let log = proc.log.lock().unwrap_or_else(|e| e.into_inner());
                let tail = &log[log.len().saturating_sub(30)..];
                eprintln!("---- last lines of {}:\n{}", proc.name, tail.join("\n"));
            }
        }
    }
}
