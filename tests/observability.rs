//! The shipped observability assets: alert and recording rules, their unit tests, the example
//! Prometheus and Alertmanager configs (checked by the real `promtool` and `amtool`), the Grafana
//! dashboard's structure, the runbook's anchors, and the files docker-compose.yml mounts.
//!
//! The tools come from Debian's `prometheus` (promtool) and `prometheus-alertmanager` (amtool)
//! packages, installed by scripts/install-test-deps.sh. A missing tool fails these tests rather
//! than skipping them: an unchecked alert file is how paging silently breaks. `PROMTOOL` and
//! `AMTOOL` override the binaries' paths.

mod common;

use common::SPEC_FAMILIES;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// The histogram families among them: their `_bucket`, `_sum` and `_count` series are queried.
const HISTOGRAMS: &[&str] = &["timattr_api_request_duration_seconds"];

/// The runbook base the shipped alerts.yml is rendered with (scripts/render-rules.py's default):
/// the runbook's path in this repository.
const RUNBOOK_URL: &str = "docs/runbook.md";

/// Where the dashboard's links point: the same base, set by scripts/render-rules.py.
const DASHBOARD_RUNBOOK_URL: &str = RUNBOOK_URL;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(rel: &str) -> Yaml {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

/// Runs one of the Prometheus tools in `dir` and returns its output; panics (the test fails)
/// when the tool is missing or exits non-zero.
fn run_tool(tool: &str, args: &[&str], dir: &Path) -> String {
    let program = std::env::var(tool.to_uppercase()).unwrap_or_else(|_| tool.to_string());
    let out = Command::new(&program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{program}` ({e}). Install it with scripts/install-test-deps.sh \
                 (Debian: apt-get install prometheus prometheus-alertmanager), or set {}",
                tool.to_uppercase()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

fn prometheus_dir() -> PathBuf {
    root().join("config/prometheus")
}

// ------------------------------------------------------------------------------- the tools

#[test]
fn promtool_checks_the_rule_files() {
    run_tool(
        "promtool",
        &["check", "rules", "alerts.yml", "rules.yml"],
        &prometheus_dir(),
    );
}

#[test]
fn promtool_unit_tests_pass() {
    let out = run_tool(
        "promtool",
        &["test", "rules", "alerts_test.yml"],
        &prometheus_dir(),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_checks_the_prometheus_config() {
    let out = run_tool(
        "promtool",
        &["check", "config", "prometheus.yml"],
        &prometheus_dir(),
    );
    // Warnings include rule or service-discovery files that do not exist.
    assert!(!out.contains("WARNING"), "{out}");
    assert!(out.contains("SUCCESS: 2 rule files found"), "{out}");
}

#[test]
fn amtool_checks_the_alertmanager_config() {
    run_tool(
        "amtool",
        &["check-config", "config/alertmanager.yml"],
        &root(),
    );
}

#[test]
fn alertmanager_routes_each_severity_to_its_receiver() {
    for (severity, receiver, alert) in [
        ("critical", "pager", "TimattrGroupDeleted"),
        ("critical", "pager", "TimattrWatchedAttributesChanged"),
        ("warning", "chat", "TimattrGroupNearKeyLimit"),
        ("info", "low-noise", "TimattrAttributesChanged"),
    ] {
        let verify = format!("--verify.receivers={receiver}");
        let severity = format!("severity={severity}");
        let alertname = format!("alertname={alert}");
        run_tool(
            "amtool",
            &[
                "config",
                "routes",
                "test",
                "--config.file=config/alertmanager.yml",
                &verify,
                &severity,
                &alertname,
                "sdkappid=1400000001",
            ],
            &root(),
        );
    }
}

/// Every severity the alerts use is routed by a route of its own (an `info` alert must not fall
/// through to the default receiver), and per-group alerts are grouped per app, not per group: a
/// bulk deletion is one notification (proved on a real Alertmanager in tests/e2e.rs).
#[test]
fn alertmanager_routes_every_severity_and_groups_per_app() {
    let am = yaml("config/alertmanager.yml");
    let route = &am["route"];
    let routed: BTreeSet<String> = route["routes"]
        .as_sequence()
        .expect("routes")
        .iter()
        .flat_map(|r| r["matchers"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect();
    for (name, rule) in alerts() {
        let severity = rule["labels"]["severity"].as_str().expect("severity");
        assert!(
            routed.contains(&format!("severity=\"{severity}\"")),
            "{name}: no route for severity {severity}: {routed:?}"
        );
    }
    let group_by = |r: &Yaml| -> Option<Vec<String>> {
        r["group_by"].as_sequence().map(|s| {
            s.iter()
                .map(|l| l.as_str().expect("a label").to_string())
                .collect()
        })
    };
    let root = group_by(route).expect("the root route has group_by");
    for r in route["routes"].as_sequence().expect("routes") {
        let effective = group_by(r).unwrap_or_else(|| root.clone());
        assert!(
            effective.contains(&"sdkappid".to_string())
                && !effective.iter().any(|l| l == "group_id" || l == "..."),
            "route {:?} groups by {effective:?}: per app, never per group",
            r["matchers"]
        );
    }
}

// ------------------------------------------------------------------------------- rendering

/// Runs scripts/render-rules.py with `args`, writing under a new temporary directory.
fn render(args: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = Command::new("python3")
        .arg(root().join("scripts/render-rules.py"))
        .arg("--out-dir")
        .arg(dir.path())
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "render-rules.py {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The files scripts/render-rules.py writes, relative to the repository.
const RENDERED: &[&str] = &[
    "config/prometheus/alerts.yml",
    "config/prometheus/alerts_test.yml",
    "deploy/kubernetes/prometheusrule.yaml",
    "deploy/kubernetes/dashboard-configmap.yaml",
];

/// The shipped rendered files are exactly what their templates give with the default base:
/// nobody edited an output by hand or forgot to re-run the script.
#[test]
fn rendered_rule_files_match_their_templates() {
    let fresh = render(&[]);
    for rel in RENDERED {
        let shipped = read(rel);
        let rendered = std::fs::read_to_string(fresh.path().join(rel))
            .unwrap_or_else(|e| panic!("render-rules.py did not write {rel}: {e}"));
        assert!(
            shipped == rendered,
            "{rel} differs from its template's render: edit the template and run \
             scripts/render-rules.py"
        );
        assert!(
            !shipped.contains("__RUNBOOK_BASE__"),
            "{rel}: placeholder left"
        );
    }
    let template = read("config/prometheus/alerts.tmpl.yml");
    let placeholders = template.matches("__RUNBOOK_BASE__#").count();
    assert_eq!(
        placeholders,
        alerts().len(),
        "every alert's runbook_url is built from the one base"
    );
}

/// The base is one setting: rendered with another, every alert links there and the unit tests,
/// rendered with it, still pass.
#[test]
fn render_rules_applies_the_runbook_base_everywhere() {
    let base = "https://runbooks.example.com/timattr/runbook.md";
    let dir = render(&["--runbook-base", base]);
    let text = std::fs::read_to_string(dir.path().join("config/prometheus/alerts.yml"))
        .expect("rendered alerts.yml");
    let doc: Yaml = serde_yaml::from_str(&text).expect("rendered alerts.yml is YAML");
    let mut n = 0;
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            if let Some(name) = rule["alert"].as_str() {
                assert_eq!(
                    rule["annotations"]["runbook_url"].as_str(),
                    Some(format!("{base}#{}", github_anchor(name)).as_str())
                );
                n += 1;
            }
        }
    }
    assert_eq!(n, alerts().len());
    std::fs::copy(
        prometheus_dir().join("rules.yml"),
        dir.path().join("config/prometheus/rules.yml"),
    )
    .expect("copy rules.yml");
    let out = run_tool(
        "promtool",
        &["test", "rules", "alerts_test.yml"],
        &dir.path().join("config/prometheus"),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

// ------------------------------------------------------------------------------- the rules

/// `(alert or record name, rule)` for every rule of a rule file.
fn rules(rel: &str) -> Vec<(String, Yaml)> {
    let doc = yaml(rel);
    let groups = doc["groups"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{rel}: no groups"));
    let mut out = Vec::new();
    for group in groups {
        for rule in group["rules"].as_sequence().expect("a group has rules") {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .unwrap_or_else(|| panic!("{rel}: a rule without alert or record: {rule:?}"));
            out.push((name.to_string(), rule.clone()));
        }
    }
    out
}

/// The alerting rules of alerts.yml (its one recording rule, `timattr:up`, left out).
fn alerts() -> Vec<(String, Yaml)> {
    rules("config/prometheus/alerts.yml")
        .into_iter()
        .filter(|(_, rule)| rule["alert"].is_string())
        .collect()
}

#[test]
fn the_alerts_are_in_the_timattr_group() {
    let doc = yaml("config/prometheus/alerts.yml");
    let names: Vec<&str> = doc["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(names, ["timattr"]);
}

#[test]
fn every_alert_has_severity_summary_description_and_runbook() {
    let alerts = alerts();
    assert!(alerts.len() >= 20, "only {} alerts", alerts.len());
    for (name, rule) in &alerts {
        assert!(
            name.starts_with("Timattr"),
            "{name}: alert names start with Timattr"
        );
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{name}: no {key}");
        }
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(
            url,
            format!("{RUNBOOK_URL}#{}", github_anchor(name)),
            "{name}: runbook_url must point at its own section"
        );
    }
}

#[test]
fn per_group_alerts_name_the_group_and_the_app() {
    for (name, rule) in alerts() {
        let expr = rule["expr"].as_str().expect("expr");
        let description = rule["annotations"]["description"]
            .as_str()
            .expect("description");
        if expr.contains("timattr_group_") {
            assert!(
                description.contains("{{ $labels.group_id }}"),
                "{name}: {description}"
            );
        }
        if expr.contains("timattr_group") || expr.contains("timattr_api_") {
            assert!(
                description.contains("{{ $labels.sdkappid }}"),
                "{name}: {description}"
            );
        }
    }
}

/// The required alerts exist, by what they watch.
#[test]
fn the_required_alerts_exist() {
    let exprs: BTreeMap<String, String> = alerts()
        .into_iter()
        .map(|(n, r)| (n, r["expr"].as_str().expect("expr").to_string()))
        .collect();
    let find = |needle: &str| {
        assert!(
            exprs.values().any(|e| e.contains(needle)),
            "no alert queries {needle:?}"
        );
    };
    for needle in [
        "timattr_group_error_code == 10010",
        "timattr_group_error_code == 10007",
        "timattr_group_error_code == 10015",
        "70009",
        "60020",
        "10006|60007|60011|60018|60019",
        "timattr_group_attribute_changes_total",
        "timattr_group_labels{label_page_on_change=\"true\"}",
        "timattr_group_attributes >= 14",
        "timattr_group_attributes_bytes >= 14000",
        "timattr_group_last_success_timestamp_seconds",
        "histogram_quantile(0.99",
        "timattr_api_request_failures_total",
        "timattr_poll_lag_seconds",
        "timattr_usersig_expiry_timestamp_seconds",
        "timattr_config_last_reload_successful == 0",
        "timattr:up == 0",
        "absent(",
        "timattr_total_shards",
        "timattr_shard_ordinal",
        "timattr_callback_rejections_total",
    ] {
        find(needle);
    }
}

/// Every alert has a unit test in which it fires; the near misses are the other series and
/// eval times of the same tests (promtool fails a test on any alert it did not expect).
#[test]
fn every_alert_is_unit_tested_firing_and_not_firing() {
    let doc = yaml("config/prometheus/alerts_test.yml");
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for test in doc["tests"].as_sequence().expect("tests") {
        let Some(cases) = test["alert_rule_test"].as_sequence() else {
            continue;
        };
        for case in cases {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
            // A near miss is either an empty expectation or fewer alerts than input series.
            let series = test["input_series"].as_sequence().map_or(0, Vec::len);
            if expected > 0 {
                firing.insert(name.clone());
            }
            if expected == 0 || expected < series {
                silent.insert(name);
            }
        }
    }
    for (name, _) in alerts() {
        assert!(
            firing.contains(&name),
            "{name} has no unit test where it fires"
        );
        assert!(silent.contains(&name), "{name} has no near-miss unit test");
    }
}

// ------------------------------------------------------------------------------- PromQL names

/// The expression without its string literals (label values, regexes, `count_values` labels),
/// so that only identifiers and operators are left.
fn strip_strings(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    out.push(c);
                }
            }
            None => {
                if c == '"' || c == '\'' || c == '`' {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

/// The identifiers of a PromQL expression: metric names, recorded names, labels, functions.
fn identifiers(expr: &str) -> Vec<String> {
    strip_strings(expr)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':'))
        .map(str::to_string)
        .collect()
}

/// The metric family a queried series name belongs to.
fn family(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if HISTOGRAMS.contains(&base) {
                return base;
            }
        }
    }
    name
}

#[test]
fn identifiers_skip_strings_and_find_metrics() {
    let ids = identifiers(
        r#"count_values by (job) ("ordinal", timattr_shard_ordinal{job=~"timattr|timattr_shards"}) > x:timattr_y:rate5m"#,
    );
    assert!(ids.contains(&"timattr_shard_ordinal".to_string()));
    assert!(ids.contains(&"x:timattr_y:rate5m".to_string()));
    assert!(!ids.iter().any(|i| i == "timattr_shards" || i == "ordinal"));
    assert_eq!(
        family("timattr_api_request_duration_seconds_bucket"),
        "timattr_api_request_duration_seconds"
    );
    assert_eq!(family("timattr_groups_count"), "timattr_groups_count");
}

/// Every expression of the rule files and the dashboard, with where it comes from.
fn all_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in [
        "config/prometheus/alerts.yml",
        "config/prometheus/rules.yml",
    ] {
        for (name, rule) in rules(file) {
            out.push((
                format!("{file}: {name}"),
                rule["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    let dash = dashboard();
    for panel in panels(&dash) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((format!("dashboard: {}", panel["title"]), expr.to_string()));
            }
        }
    }
    for var in dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
    {
        if var["type"] == "query" {
            let query = var["query"]
                .as_str()
                .or_else(|| var["query"]["query"].as_str())
                .expect("a query variable has a query");
            out.push((
                format!("dashboard variable {}", var["name"]),
                query.to_string(),
            ));
        }
    }
    out
}

#[test]
fn every_queried_metric_is_one_the_exporter_exposes() {
    let recorded: BTreeSet<String> = rules("config/prometheus/rules.yml")
        .into_iter()
        .chain(rules("config/prometheus/alerts.yml"))
        .filter(|(_, rule)| rule["record"].is_string())
        .map(|(name, _)| name)
        .collect();
    let mut seen = BTreeSet::new();
    for (place, expr) in all_exprs() {
        for id in identifiers(&expr) {
            if id.contains(':') {
                assert!(
                    recorded.contains(&id),
                    "{place}: {id} is not recorded in rules.yml or alerts.yml"
                );
            } else if id.starts_with("timattr_") {
                let family = family(&id);
                assert!(
                    SPEC_FAMILIES.contains(&family),
                    "{place}: {id} is not a metric the exporter exposes"
                );
                seen.insert(family.to_string());
            }
        }
    }
    // The assets watch the families that matter for paging.
    for family in [
        "timattr_group_error_code",
        "timattr_groups_by_error_code",
        "timattr_group_attribute_changes_total",
        "timattr_api_request_duration_seconds",
        "timattr_usersig_expiry_timestamp_seconds",
        "timattr_shard_ordinal",
        "timattr_total_shards",
        "timattr_callbacks_total",
        "timattr_callback_rejections_total",
    ] {
        assert!(seen.contains(family), "nothing queries {family}");
    }
}

// ------------------------------------------------------------------------------- dashboard

fn dashboard() -> Json {
    serde_json::from_str(&read("dashboards/timattr.json"))
        .unwrap_or_else(|e| panic!("dashboards/timattr.json is not valid JSON: {e}"))
}

/// Every panel, rows' nested panels included, rows themselves excluded.
fn panels(dash: &Json) -> Vec<Json> {
    fn walk(list: &Json, out: &mut Vec<Json>) {
        for p in list.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                walk(&p["panels"], out);
            } else {
                out.push(p.clone());
            }
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

#[test]
fn dashboard_has_a_fixed_uid_and_a_current_schema() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "timattr");
    let schema = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(
        dash.get("__inputs").is_none(),
        "no __inputs: use the datasource variable"
    );
    assert!(
        dash.get("id").is_none_or(Json::is_null),
        "no fixed numeric id"
    );
}

#[test]
fn dashboard_has_datasource_app_and_group_variables() {
    let dash = dashboard();
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let app = var("sdkappid");
    assert_eq!(app["type"], "query");
    assert!(
        app["definition"].as_str().unwrap_or_default().contains(
            "label_values(timattr_groups{job=~\"$job\",instance=~\"$instance\"}, sdkappid)"
        ),
        "{app}"
    );
    let group = var("group_id");
    assert_eq!(group["multi"], true);
    assert_eq!(group["includeAll"], true);
}

#[test]
fn dashboard_never_hard_codes_a_datasource() {
    let text = read("dashboards/timattr.json");
    assert!(
        !text.contains("${DS_"),
        "an exported __inputs datasource reference"
    );
    fn walk(v: &Json, path: &str) {
        match v {
            Json::Object(map) => {
                for (k, child) in map {
                    let here = format!("{path}.{k}");
                    if k == "datasource" {
                        assert_eq!(
                            child,
                            &serde_json::json!({"type": "prometheus", "uid": "${datasource}"}),
                            "{here}"
                        );
                    }
                    walk(child, &here);
                }
            }
            Json::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{path}[{i}]"));
                }
            }
            _ => {}
        }
    }
    walk(&dashboard(), "");
}

#[test]
fn every_panel_has_a_description_a_unit_and_queries() {
    let dash = dashboard();
    let panels = panels(&dash);
    assert!(panels.len() >= 10, "only {} panels", panels.len());
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("<untitled>");
        assert!(
            !p["description"]
                .as_str()
                .unwrap_or_default()
                .trim()
                .is_empty(),
            "panel {title}: no description"
        );
        assert!(
            !p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "panel {title}: no fieldConfig.defaults.unit"
        );
        let targets = p["targets"].as_array().map_or(&[][..], Vec::as_slice);
        assert!(!targets.is_empty(), "panel {title}: no targets");
        for t in targets {
            assert!(
                t["expr"].is_string(),
                "panel {title}: a target without expr"
            );
        }
    }
}

#[test]
fn dashboard_ranges_use_rate_interval() {
    let dash = dashboard();
    for p in panels(&dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            let bare = strip_strings(expr);
            for (before, range) in bare.split('[').zip(bare.split('[').skip(1)) {
                let inside = range.split(']').next().unwrap_or_default();
                // The one exception: the 1h hold window of `last_over_time`, which keeps a
                // vanished group's last value on the unhealthy table for the alert window.
                let hold = inside == "1h"
                    && before
                        .rsplit_once("last_over_time(")
                        .is_some_and(|(_, arg)| !arg.contains(['(', ')']));
                assert!(
                    inside == "$__rate_interval" || hold,
                    "panel {}: range [{inside}] in {expr}",
                    p["title"]
                );
            }
            if ["rate(", "increase(", "irate("]
                .iter()
                .any(|f| bare.contains(f))
            {
                assert!(bare.contains("[$__rate_interval]"), "{expr}");
            }
        }
    }
}

/// promtool parses every panel query: each becomes a recording rule of a throwaway rule file,
/// with Grafana's variables replaced by values.
#[test]
fn promtool_parses_every_dashboard_query() {
    let mut rules = Vec::new();
    for (i, p) in panels(&dashboard()).iter().enumerate() {
        for (j, t) in p["targets"].as_array().into_iter().flatten().enumerate() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_default()
                .replace("$__rate_interval", "5m")
                .replace("$sdkappid", ".*")
                .replace("$group_id", ".*")
                .replace("$job", ".+")
                .replace("$instance", ".+");
            rules.push(serde_json::json!({"record": format!("dashboard:panel{i}:target{j}"), "expr": expr}));
        }
    }
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("dashboard_queries.yml");
    // JSON is YAML: promtool reads it as a rule file.
    std::fs::write(&path, file.to_string()).expect("write the rule file");
    let path = path.to_str().expect("a UTF-8 temporary path");
    run_tool("promtool", &["check", "rules", path], dir.path());
}

/// The "Push (callbacks)" row's queries, evaluated by `promtool test rules` on series written
/// here (the exporter does not expose the callback families yet): with push working, each panel
/// gives the rates and the capped share worked out below; with no callback series at all, each
/// gives an explicit 0 (labelled `none` where the panel splits by a label), so the panels show
/// "nothing arrived" rather than "no data" while the exporter is scraped.
#[test]
fn push_panels_compute_what_they_say() {
    let push: Vec<(String, String)> = panels(&dashboard())
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["expr"].as_str())
                .filter(|e| e.contains("timattr_callback"))
                .map(|e| {
                    let e = e
                        .replace("$__rate_interval", "5m")
                        .replace("$sdkappid", ".*")
                        .replace("$group_id", ".*")
                        .replace("$job", ".+")
                        .replace("$instance", ".+");
                    (title.clone(), e)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let expr = |title: &str| {
        let found: Vec<&String> = push
            .iter()
            .filter(|(t, _)| t == title)
            .map(|(_, e)| e)
            .collect();
        assert_eq!(found.len(), 1, "one query in panel {title:?}: {push:?}");
        found[0].clone()
    };
    let accepted = expr("Callbacks accepted per second, by command");
    let refused = expr("Callbacks refused per second, by reason");
    let share = expr("Polls brought forward by push (at most)");
    assert_eq!(push.len(), 3, "{push:?}");

    let series = |name: &str, labels: &str, values: &str| serde_json::json!({"series": format!("{name}{{job=\"timattr\",{labels}}}"), "values": values});
    // Exporter a receives the callbacks; b is a second replica (a shard) that gets none.
    let scraped = vec![
        series(
            "timattr_build_info",
            r#"instance="a:9877",version="1""#,
            "1x20",
        ),
        series(
            "timattr_build_info",
            r#"instance="b:9877",version="1""#,
            "1x20",
        ),
        series(
            "timattr_groups",
            r#"instance="a:9877",sdkappid="1400000001""#,
            "10x20",
        ),
        series(
            "timattr_groups",
            r#"instance="a:9877",sdkappid="1400000002""#,
            "10x20",
        ),
        series(
            "timattr_groups",
            r#"instance="b:9877",sdkappid="1400000003""#,
            "10x20",
        ),
        // Polls per second: app 1 1/s, app 2 0.5/s, app 3 0.1/s; discovery is no poll.
        series(
            "timattr_api_requests_total",
            r#"instance="a:9877",sdkappid="1400000001",api="get_group_attr""#,
            "0+60x20",
        ),
        series(
            "timattr_api_requests_total",
            r#"instance="a:9877",sdkappid="1400000001",api="get_appid_group_list""#,
            "0+60x20",
        ),
        series(
            "timattr_api_requests_total",
            r#"instance="a:9877",sdkappid="1400000002",api="get_group_attr""#,
            "0+30x20",
        ),
        series(
            "timattr_api_requests_total",
            r#"instance="b:9877",sdkappid="1400000003",api="get_group_attr""#,
            "0+6x20",
        ),
    ];
    let mut pushed = scraped.clone();
    pushed.extend([
        // App 1: 0.25/s attribute changes, 0.05/s destroyed groups, 0.5/s commands not acted on.
        series("timattr_callbacks_total", r#"instance="a:9877",sdkappid="1400000001",command="Group.CallbackAfterGroupAttrChanged""#, "0+15x20"),
        series("timattr_callbacks_total", r#"instance="a:9877",sdkappid="1400000001",command="Group.CallbackAfterGroupDestroyed""#, "0+3x20"),
        series("timattr_callbacks_total", r#"instance="a:9877",sdkappid="1400000001",command="other""#, "0+30x20"),
        // App 2: a hot group, 1 change callback/s against 0.5 polls/s: capped at 100%.
        series("timattr_callbacks_total", r#"instance="a:9877",sdkappid="1400000002",command="Group.CallbackAfterGroupAttrChanged""#, "0+60x20"),
        // App 3 gets no callbacks at all.
        series("timattr_callback_rejections_total", r#"instance="a:9877",reason="signature""#, "0+6x20"),
    ]);
    let sample = |labels: &str, value: f64| serde_json::json!({"labels": labels, "value": value});
    let check = |expr: &str, samples: Vec<Json>| serde_json::json!({"expr": expr, "eval_time": "10m", "exp_samples": samples});
    let per_app = |v1: f64, v2: f64, v3: f64| {
        vec![
            sample(r#"{sdkappid="1400000001"}"#, v1),
            sample(r#"{sdkappid="1400000002"}"#, v2),
            sample(r#"{sdkappid="1400000003"}"#, v3),
        ]
    };
    let tests = serde_json::json!({
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": pushed,
                "promql_expr_test": [
                    check(&accepted, vec![
                        sample(r#"{command="Group.CallbackAfterGroupAttrChanged"}"#, 1.25),
                        sample(r#"{command="Group.CallbackAfterGroupDestroyed"}"#, 0.05),
                        sample(r#"{command="other"}"#, 0.5),
                    ]),
                    check(&refused, vec![
                        sample(r#"{instance="a:9877",reason="signature"}"#, 0.1),
                        sample(r#"{instance="b:9877",reason="none"}"#, 0.0),
                    ]),
                    // (0.25 + 0.05) / 1; min(1 / 0.5, 1); 0 / 0.1.
                    check(&share, per_app(0.3, 1.0, 0.0)),
                ],
            },
            {
                "interval": "1m",
                "input_series": scraped,
                "promql_expr_test": [
                    check(&accepted, vec![sample(r#"{command="none"}"#, 0.0)]),
                    check(&refused, vec![
                        sample(r#"{instance="a:9877",reason="none"}"#, 0.0),
                        sample(r#"{instance="b:9877",reason="none"}"#, 0.0),
                    ]),
                    check(&share, per_app(0.0, 0.0, 0.0)),
                ],
            },
        ],
    });
    let dir = tempfile::tempdir().expect("a temporary directory");
    // JSON is YAML: promtool reads it as a test file.
    std::fs::write(dir.path().join("push_panels_test.yml"), tests.to_string())
        .expect("write the test file");
    let out = run_tool(
        "promtool",
        &["test", "rules", "push_panels_test.yml"],
        dir.path(),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn dashboard_covers_the_required_views() {
    let exprs: Vec<String> = panels(&dashboard())
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["expr"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect();
    for needle in [
        "timattr_groups_by_error_code",
        "timattr_group_error_code",
        "timattr_group_attribute_changes_total",
        "timattr_group_attributes{",
        "timattr_group_attributes_bytes",
        "timattr_api_requests_total",
        "timattr_api_errors_total",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.9,",
        "histogram_quantile(0.99,",
        "timattr_poll_lag_seconds",
        "timattr_usersig_expiry_timestamp_seconds",
        "timattr_config_last_reload_successful",
        "timattr_build_info",
        "timattr_shard_ordinal",
        "timattr_total_shards",
        "timattr_callbacks_total{",
        "timattr_callback_rejections_total{",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(needle)),
            "no panel queries {needle}"
        );
    }
}

// ------------------------------------------------------------------------------- runbook

/// GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn runbook_anchors() -> BTreeSet<String> {
    read("docs/runbook.md")
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| github_anchor(l.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_runbook_link_has_its_section() {
    let anchors = runbook_anchors();
    let mut links: Vec<(String, String)> = Vec::new();
    for (name, rule) in alerts() {
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .expect("runbook_url");
        links.push((name, url.to_string()));
    }
    fn walk(v: &Json, out: &mut Vec<(String, String)>) {
        match v {
            Json::Object(map) => {
                if let Some(url) = map.get("url").and_then(Json::as_str) {
                    out.push(("dashboard link".into(), url.to_string()));
                }
                map.values().for_each(|c| walk(c, out));
            }
            Json::Array(items) => items.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    walk(&dashboard(), &mut links);
    assert!(
        root().join(RUNBOOK_URL).is_file(),
        "the default runbook base {RUNBOOK_URL} must be the runbook's path in the repository"
    );
    for (from, url) in links {
        let Some(rest) = url
            .strip_prefix(RUNBOOK_URL)
            .or_else(|| url.strip_prefix(DASHBOARD_RUNBOOK_URL))
        else {
            continue;
        };
        if let Some(anchor) = rest.strip_prefix('#') {
            assert!(
                anchors.contains(anchor),
                "{from}: no section #{anchor} in docs/runbook.md"
            );
        } else {
            assert!(rest.is_empty(), "{from}: {url}");
        }
    }
    // The runbook's own links between sections.
    let text = read("docs/runbook.md");
    for part in text.split("](#").skip(1) {
        let anchor = part.split(')').next().unwrap_or_default();
        assert!(
            anchors.contains(anchor),
            "docs/runbook.md links to missing #{anchor}"
        );
    }
}

#[test]
fn runbook_sections_say_meaning_impact_check_and_do() {
    let text = read("docs/runbook.md");
    for (name, _) in alerts() {
        let start = text
            .find(&format!("\n## {name}\n"))
            .unwrap_or_else(|| panic!("no section ## {name}"));
        let section = &text[start + 1..];
        let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
        let section = &section[..end];
        for part in ["**Meaning.**", "**Impact.**", "**Check", "**Do"] {
            assert!(section.contains(part), "section {name} lacks {part}");
        }
    }
}

// ------------------------------------------------------------------------------- compose

fn compose() -> Yaml {
    yaml("docker-compose.yml")
}

#[test]
fn compose_mounts_only_files_that_exist() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    let mut mounts = 0;
    for (name, service) in services {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = match volume {
                Yaml::String(s) => s.split(':').next().unwrap_or_default().to_string(),
                other => other["source"].as_str().unwrap_or_default().to_string(),
            };
            if source.starts_with('.') || source.starts_with('/') {
                assert!(
                    root().join(&source).exists(),
                    "service {name:?} mounts {source}, which does not exist"
                );
                mounts += 1;
            }
        }
        if let Some(build) = service.get("build") {
            let context = build
                .as_str()
                .or_else(|| build["context"].as_str())
                .unwrap_or(".");
            assert!(
                root().join(context).is_dir(),
                "service {name:?}: no build context {context}"
            );
        }
    }
    assert!(
        mounts >= 5,
        "expected the rules, configs and dashboards to be mounted"
    );
}

/// The image the compose file builds needs the repository's Dockerfile.
#[test]
fn compose_builds_from_a_dockerfile_that_exists() {
    let doc = compose();
    for (name, service) in doc["services"].as_mapping().expect("services") {
        if let Some(build) = service.get("build") {
            let context = build
                .as_str()
                .or_else(|| build["context"].as_str())
                .unwrap_or(".");
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            let path = root().join(context).join(dockerfile);
            assert!(path.is_file(), "service {name:?}: no {}", path.display());
        }
    }
}

#[test]
fn compose_runs_the_demo_and_prometheus_scrapes_it() {
    let doc = compose();
    let services = &doc["services"];
    let exporter = services
        .as_mapping()
        .expect("services")
        .iter()
        .find(|(_, s)| s.get("build").is_some())
        .map(|(name, s)| (name.as_str().expect("service name"), s))
        .expect("a service built from the repository");
    let command: Vec<&str> = exporter.1["command"]
        .as_sequence()
        .expect("command")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(command, ["--demo", "--web.listen-address=:9877"]);
    for service in ["prometheus", "alertmanager", "grafana"] {
        assert!(services.get(service).is_some(), "no {service} service");
    }
    // prometheus.yml scrapes the exporter and alerts the Alertmanager by their service names.
    let prom = read("config/prometheus/prometheus.yml");
    assert!(
        prom.contains(&format!("{}:9877", exporter.0)),
        "prometheus.yml does not scrape {}",
        exporter.0
    );
    assert!(prom.contains("alertmanager:9093"));
    let prom = yaml("config/prometheus/prometheus.yml");
    let jobs: Vec<&str> = prom["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .filter_map(|j| j["job_name"].as_str())
        .collect();
    assert_eq!(jobs, ["timattr"]);
    assert_eq!(prom["scrape_configs"][0]["scrape_interval"], "15s");
}
