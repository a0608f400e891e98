//! The whole `/metrics` exposition for a fixed scenario, compared with
//! `tests/data/golden/metrics.prom` and linted by the real `promtool check metrics`.
//!
//! `UPDATE_GOLDEN=1 cargo test --test metrics_golden` rewrites the golden file; review its diff.
//! promtool comes from `scripts/install-test-deps.sh`; without it this test fails, it never skips.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use timattr_exporter::metrics::{BuildInfo, METRIC_FAMILIES, Metrics, ValueHashes};
use timattr_exporter::observe::Api;
use timattr_exporter::outcome::{ApiError, Attributes, FailureReason, Outcome};
use timattr_exporter::pattern::Patterns;
use timattr_exporter::store::{AppSettings, GroupSettings, Seeds, Store};

const APP: u64 = 1_400_000_000;
const OTHER_APP: u64 = 1_400_000_001;
const T0: f64 = 1_700_000_000.0;

fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Everything the exporter can show, with the build info fixed.
fn scenario() -> (Metrics, Store) {
    let metrics = Metrics::new(BuildInfo {
        version: "1.2.3",
        revision: "0123456789ab".into(),
        rustc: "1.85.0".into(),
    });
    metrics.set_config_reload(true, T0);
    metrics.set_shard(0, 1);
    let obs = metrics.observer(APP);
    for ms in [4, 12, 80, 300] {
        obs.on_attempt(
            Api::GetGroupAttr,
            Duration::from_millis(ms),
            &Outcome::Ok(()),
        );
    }
    obs.on_attempt(
        Api::GetGroupAttr,
        Duration::from_millis(40),
        &Outcome::Api(ApiError::from_code(10010, "").unwrap()),
    );
    obs.on_attempt(
        Api::GetGroupAttr,
        Duration::from_secs(5),
        &Outcome::NoAnswer(FailureReason::Timeout),
    );
    obs.on_attempt(
        Api::GetAppidGroupList,
        Duration::from_millis(900),
        &Outcome::Ok(()),
    );
    obs.on_usersig(1_700_086_400);
    metrics.set_poll_lag(APP, 0.25);
    let other = metrics.observer(OTHER_APP);
    other.on_attempt(
        Api::GetGroupAttr,
        Duration::from_millis(20),
        &Outcome::Api(ApiError::from_code(60007, "").unwrap()),
    );
    metrics.set_poll_lag(OTHER_APP, 0.0);

    let store = Store::new();
    let ids = [
        "@TGS#healthy",
        "@TGS#deleted",
        "@TGS#noanswer",
        "@TGS#changed",
        "@TGS#unpolled",
        "odd\"id\\with\nnewline",
    ];
    // The app's labels on every group; one group with its own (merged, one value to escape),
    // and keys ignored by the whole app.
    let app_labels = Arc::new(BTreeMap::from([("team".to_string(), "rooms".to_string())]));
    let own_labels = Arc::new(BTreeMap::from([
        ("team".to_string(), "rooms".to_string()),
        ("note".to_string(), "say \"hi\"\\n\nbye".to_string()),
    ]));
    let ignore = Some(Arc::new(Patterns::new(["heart.*"]).unwrap()));
    store.set_settings(
        APP,
        AppSettings {
            app: GroupSettings {
                labels: app_labels,
                ignore_keys: ignore.clone(),
            },
            groups: [(
                "@TGS#changed".into(),
                GroupSettings {
                    labels: own_labels,
                    ignore_keys: ignore,
                },
            )]
            .into_iter()
            .collect(),
        },
    );
    store.set_assigned(APP, ids.map(String::from), Seeds::DropUnlisted);
    store.set_assigned(
        OTHER_APP,
        &["@TGS#limited".to_string()],
        Seeds::DropUnlisted,
    );

    let healthy = attrs(&[
        ("color", "blue"),
        ("quote\"key\\", "line1\nline2"),
        ("unicode", "héllo 世界"),
    ]);
    store.apply(APP, "@TGS#healthy", &ok(&healthy), T0);
    store.apply(APP, "@TGS#deleted", &ok(&attrs(&[("a", "1")])), T0);
    store.apply(APP, "@TGS#deleted", &api(10010), T0 + 60.0);
    store.apply(APP, "@TGS#noanswer", &no_answer(), T0);
    store.apply(
        APP,
        "@TGS#changed",
        &ok(&attrs(&[("a", "1"), ("b", "2")])),
        T0,
    );
    // heartbeat counts in the attributes and the set hash, but is no change and has no value
    // hash.
    let changed = attrs(&[("b", "22"), ("c", "3"), ("heartbeat", "7")]);
    let got = store.apply(APP, "@TGS#changed", &ok(&changed), T0 + 60.5);
    assert!(got.is_some(), "the change is reported");
    store.apply(APP, "odd\"id\\with\nnewline", &ok(&[]), T0);
    store.apply(OTHER_APP, "@TGS#limited", &ok(&attrs(&[("k", "v")])), T0);
    store.apply(OTHER_APP, "@TGS#limited", &api(60007), T0 + 60.0);
    (metrics, store)
}

/// The exposition without the `process_*` families, whose values change from run to run.
fn without_process(text: &str) -> String {
    text.lines()
        .filter(|l| {
            !l.starts_with("process_")
                && !l.starts_with("# HELP process_")
                && !l.starts_with("# TYPE process_")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed: run scripts/install-test-deps.sh");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("promtool reads the exposition");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_match_the_golden_file_and_pass_promtool() {
    let (metrics, store) = scenario();
    let full = String::from_utf8(metrics.render(&store, ValueHashes::PerKey, None)).expect("UTF-8");
    let text = without_process(&full);

    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/metrics.prom");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).expect("golden file written");
    }
    let want = std::fs::read_to_string(&golden)
        .expect("tests/data/golden/metrics.prom exists (UPDATE_GOLDEN=1 creates it)");
    assert!(
        text == want,
        "/metrics differs from {}; if the change is intended, rerun with UPDATE_GOLDEN=1 and review the diff.\n--- got ---\n{text}",
        golden.display()
    );

    promtool_check(&full);
}

#[test]
fn every_family_is_in_the_table_and_the_scenario_shows_them_all() {
    let (metrics, store) = scenario();
    let text = String::from_utf8(metrics.render(&store, ValueHashes::PerKey, None)).expect("UTF-8");
    let mut seen = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            if name.starts_with("process_") {
                continue;
            }
            let help = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# HELP {name} ")))
                .expect("HELP before TYPE");
            assert!(
                METRIC_FAMILIES.contains(&(name, kind, help)),
                "{name} {kind} is not in METRIC_FAMILIES as rendered"
            );
            seen.push(name.to_string());
        }
    }
    for (name, _, _) in METRIC_FAMILIES {
        assert!(
            seen.iter().any(|s| s == name),
            "the scenario never shows {name}"
        );
    }
}

#[test]
fn promtool_rejects_what_it_should() {
    // Proves the lint above can fail: a counter without `_total` is a promtool error.
    let bad = "# HELP x_count a\n# TYPE x_count counter\nx_count 1\n";
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("piped").write_all(bad.as_bytes())?;
            c.wait_with_output()
        })
        .expect("promtool must be installed: run scripts/install-test-deps.sh");
    assert!(
        !out.status.success(),
        "promtool accepted a counter without _total"
    );
}

fn ok(attrs: &[(String, String)]) -> Outcome<Attributes> {
    Outcome::Ok(attrs.to_vec())
}

fn api(code: i64) -> Outcome<Attributes> {
    Outcome::Api(ApiError::from_code(code, "").expect("a non-zero code"))
}

fn no_answer() -> Outcome<Attributes> {
    Outcome::NoAnswer(FailureReason::Timeout)
}
