//! `labels`, `ignore_keys` and `exclude_metrics` (SPEC "Config file", "Metrics") through the
//! real binary against the fake API: `timattr_group_labels` with merged, escaped values on
//! configured and discovered groups; an ignored key's change counts nothing and has no value
//! hash but shows in the bytes and the set hash; excluded families vanish at a reload; a reload
//! that changes labels keeps the change counters.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use timattr_exporter::fake::GroupType;

const WAIT: Duration = Duration::from_secs(20);

/// The config `ConfigDir::write` gives, with `app_extra` lines added to the app (before its
/// groups) and `groups` as written (YAML list items, indented under `groups:`).
fn write_config(cfg: &ConfigDir, base_url: &str, top: &str, app_extra: &str, groups: &str) {
    cfg.write(base_url, &[], top);
    let yaml = std::fs::read_to_string(cfg.path()).expect("config written");
    let yaml = yaml.replace(
        "    groups:\n",
        &format!("{app_extra}    groups:\n{groups}"),
    );
    std::fs::write(cfg.path(), yaml).expect("config rewritten");
}

async fn reload(exporter: &Exporter) {
    install_crypto();
    let answer = reqwest::Client::new()
        .post(exporter.url("/-/reload"))
        .send()
        .await
        .expect("reload answered");
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    assert_eq!(status, 200, "reload failed: {body}\n{}", exporter.logs());
}

/// The `timattr_group_labels` line of a group, as rendered.
fn labels_line<'a>(text: &'a str, group_id: &str) -> Option<&'a str> {
    let head = format!("timattr_group_labels{{sdkappid=\"{APP}\",group_id=\"{group_id}\"");
    text.lines().find(|l| l.starts_with(&head))
}

fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn changes(text: &str, group_id: &str) -> [Option<f64>; 3] {
    ["added", "removed", "modified"].map(|change| {
        value(
            text,
            "timattr_group_attribute_changes_total",
            &[("group_id", group_id), ("change", change)],
        )
    })
}

#[tokio::test]
async fn labels_are_merged_escaped_and_on_discovered_groups_too() {
    let server = fake_with_app().await;
    group(&server, "@TGS#plain", &[("k", "v")]);
    group(&server, "@TGS#own", &[("k", "v")]);
    server
        .fake
        .create_group(APP, "@TGS#found", GroupType::Public)
        .expect("group created");
    let cfg = ConfigDir::new(server.base_url().as_ref(), &[], "");
    write_config(
        &cfg,
        server.base_url().as_ref(),
        "",
        "    labels: {team: rooms, tier: gold}\n    discover: {refresh_interval: 1m}\n",
        "      - \"@TGS#plain\"\n      - id: \"@TGS#own\"\n        labels: {tier: \"sil\\\"ver\\\\x\\ny\", page_on_change: \"true\"}\n",
    );
    let exporter = Exporter::start(&cfg.path(), &[]);
    let metrics = exporter.url("/metrics");
    let text = eventually(WAIT, || async {
        let t = scrape(&metrics).await;
        // Each group's labels come with its first poll.
        ["@TGS#found", "@TGS#plain", "@TGS#own"]
            .iter()
            .all(|g| labels_line(&t, g).is_some())
            .then_some(t)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "every group, discovered too, has its labels: {}",
            exporter.logs()
        )
    });

    assert_eq!(
        labels_line(&text, "@TGS#plain"),
        Some(
            r#"timattr_group_labels{sdkappid="1400000001",group_id="@TGS#plain",label_team="rooms",label_tier="gold"} 1"#
        )
    );
    // The group's tier wins over the app's; `"`, `\` and a newline are escaped.
    assert_eq!(
        labels_line(&text, "@TGS#own"),
        Some(
            r#"timattr_group_labels{sdkappid="1400000001",group_id="@TGS#own",label_page_on_change="true",label_team="rooms",label_tier="sil\"ver\\x\ny"} 1"#
        )
    );
    assert_eq!(
        value(
            &text,
            "timattr_group_labels",
            &[("group_id", "@TGS#own"), ("label_tier", "sil\"ver\\x\ny")]
        ),
        Some(1.0),
        "the escaped value reads back"
    );
    assert_eq!(
        labels_line(&text, "@TGS#found"),
        Some(
            r#"timattr_group_labels{sdkappid="1400000001",group_id="@TGS#found",label_team="rooms",label_tier="gold"} 1"#
        ),
        "a discovered group has the app's labels"
    );
    assert_eq!(
        text.matches("# HELP timattr_group_labels ").count(),
        1,
        "one family"
    );
}

#[tokio::test]
async fn an_ignored_key_changes_the_state_but_counts_nothing() {
    let server = fake_with_app().await;
    group(&server, "@TGS#a", &[("k", "v"), ("heartbeat", "1")]);
    let cfg = ConfigDir::new(server.base_url().as_ref(), &[], "");
    write_config(
        &cfg,
        server.base_url().as_ref(),
        "",
        "    ignore_keys: [\"heart.*\"]\n",
        "      - id: \"@TGS#a\"\n        ignore_keys: [score]\n",
    );
    let exporter = Exporter::start(&cfg.path(), &[]);
    let metrics = exporter.url("/metrics");
    let a = [("group_id", "@TGS#a")];
    let first = eventually(WAIT, || async {
        let t = scrape(&metrics).await;
        (value(&t, "timattr_group_attributes", &a) == Some(2.0)).then_some(t)
    })
    .await
    .unwrap_or_else(|| panic!("the first poll landed: {}", exporter.logs()));
    let value_hash = "timattr_group_attribute_value_hash";
    assert_eq!(
        value(&first, value_hash, &[("group_id", "@TGS#a"), ("key", "k")]),
        Some(value_hash_of("v"))
    );
    assert_eq!(
        value(&first, value_hash, &[("key", "heartbeat")]),
        None,
        "an ignored key has no value hash"
    );
    let first_hash = value(&first, "timattr_group_attributes_hash", &a).expect("a set hash");

    // Only ignored keys change: the app's heartbeat is modified, the group's score added.
    server
        .fake
        .set_attrs(
            APP,
            "@TGS#a",
            &[("k", "v"), ("heartbeat", "22"), ("score", "5")],
        )
        .expect("attrs set");
    let second = eventually(WAIT, || async {
        let t = scrape(&metrics).await;
        (value(&t, "timattr_group_attributes", &a) == Some(3.0)).then_some(t)
    })
    .await
    .unwrap_or_else(|| panic!("the change was polled: {}", exporter.logs()));
    assert_eq!(
        value(&second, "timattr_group_attributes_bytes", &a),
        Some(4.0),
        "v + 22 + 5: the real state"
    );
    let second_hash = value(&second, "timattr_group_attributes_hash", &a).expect("a set hash");
    assert_ne!(second_hash, first_hash, "the set hash covers ignored keys");
    assert_eq!(
        second_hash,
        value_hash_of("heartbeat=22\nk=v\nscore=5\n"),
        "the set hash is SPEC's, over every key"
    );
    assert_eq!(
        changes(&second, "@TGS#a"),
        [Some(0.0); 3],
        "an ignored key's change counts nothing"
    );
    assert_eq!(
        value(&second, "timattr_group_last_change_timestamp_seconds", &a),
        Some(0.0)
    );
    for key in ["heartbeat", "score"] {
        assert_eq!(value(&second, value_hash, &[("key", key)]), None, "{key}");
    }

    // A kept key still counts, next to ignored ones.
    server
        .fake
        .set_attrs(
            APP,
            "@TGS#a",
            &[("k", "w"), ("heartbeat", "23"), ("score", "6")],
        )
        .expect("attrs set");
    let third = eventually(WAIT, || async {
        let t = scrape(&metrics).await;
        (changes(&t, "@TGS#a")[2] == Some(1.0)).then_some(t)
    })
    .await
    .unwrap_or_else(|| panic!("the change of k was counted: {}", exporter.logs()));
    assert_eq!(changes(&third, "@TGS#a"), [Some(0.0), Some(0.0), Some(1.0)]);
}

/// SPEC's hash, computed here independently of the exporter.
fn value_hash_of(input: &str) -> f64 {
    common::value_hash(input)
}

#[tokio::test]
async fn excluded_families_vanish_at_a_reload() {
    let server = fake_with_app().await;
    group(&server, "@TGS#a", &[("k", "v")]);
    let cfg = ConfigDir::new(server.base_url().as_ref(), &["@TGS#a"], "");
    let exporter = Exporter::start(&cfg.path(), &[]);
    let metrics = exporter.url("/metrics");
    let before = eventually(WAIT, || async {
        let t = scrape(&metrics).await;
        value(&t, "timattr_group_attribute_value_hash", &[("key", "k")]).map(|_| t)
    })
    .await
    .unwrap_or_else(|| panic!("the first poll landed: {}", exporter.logs()));
    let before = families(&before);
    assert!(before.contains("timattr_api_requests_total"));

    cfg.write(
        server.base_url().as_ref(),
        &["@TGS#a"],
        "exclude_metrics: [\"timattr_group_attribute_value_hash\", \"timattr_api_.*\"]\n",
    );
    reload(&exporter).await;
    let text = scrape(&metrics).await;
    let after = families(&text);
    let excluded =
        |f: &str| f == "timattr_group_attribute_value_hash" || f.starts_with("timattr_api_");
    let want: BTreeSet<String> = before.iter().filter(|f| !excluded(f)).cloned().collect();
    assert!(
        before.len() - want.len() >= 4,
        "value hashes and three timattr_api_ families at least: {before:?}"
    );
    assert_eq!(after, want, "exactly the excluded families are gone");
    assert!(
        !text.contains("timattr_api_") && !text.contains("timattr_group_attribute_value_hash"),
        "neither HELP, TYPE nor samples:\n{text}"
    );
    // Everything else carries on.
    assert_eq!(
        value(&text, "timattr_group_up", &[("group_id", "@TGS#a")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_reload_that_changes_labels_keeps_the_change_counters() {
    let server = fake_with_app().await;
    group(&server, "@TGS#a", &[("k", "v")]);
    let cfg = ConfigDir::new(server.base_url().as_ref(), &[], "");
    let base = server.base_url().to_string();
    let groups = "      - \"@TGS#a\"\n";
    write_config(&cfg, &base, "", "    labels: {team: rooms}\n", groups);
    let exporter = Exporter::start(&cfg.path(), &[]);
    let metrics = exporter.url("/metrics");
    let a = [("group_id", "@TGS#a")];
    eventually(WAIT, || async {
        let t = scrape(&metrics).await;
        value(&t, "timattr_group_attributes", &a).map(|_| ())
    })
    .await
    .unwrap_or_else(|| panic!("the first poll landed: {}", exporter.logs()));
    server
        .fake
        .set_attrs(APP, "@TGS#a", &[("k", "v2")])
        .expect("attrs set");
    eventually(WAIT, || async {
        let t = scrape(&metrics).await;
        (changes(&t, "@TGS#a")[2] == Some(1.0)).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the change was counted: {}", exporter.logs()));

    write_config(
        &cfg,
        &base,
        "",
        "    labels: {team: lobby, tier: gold}\n",
        groups,
    );
    reload(&exporter).await;
    let text = scrape(&metrics).await;
    assert_eq!(
        labels_line(&text, "@TGS#a"),
        Some(
            r#"timattr_group_labels{sdkappid="1400000001",group_id="@TGS#a",label_team="lobby",label_tier="gold"} 1"#
        ),
        "the new labels at once, the old series gone"
    );
    assert_eq!(changes(&text, "@TGS#a"), [Some(0.0), Some(0.0), Some(1.0)]);

    // Labels removed altogether: no series, counters still there.
    write_config(&cfg, &base, "", "", groups);
    reload(&exporter).await;
    let text = scrape(&metrics).await;
    assert!(!text.contains("timattr_group_labels"), "{text}");
    assert_eq!(changes(&text, "@TGS#a"), [Some(0.0), Some(0.0), Some(1.0)]);
}

#[tokio::test]
async fn a_change_while_down_counts_only_the_keys_not_ignored() {
    let server = fake_with_app().await;
    group(
        &server,
        "@TGS#a",
        &[("k", "v"), ("heartbeat", "1"), ("cursor_0", "y")],
    );
    let cfg = ConfigDir::new(server.base_url().as_ref(), &[], "");
    let base = server.base_url().to_string();
    write_config(
        &cfg,
        &base,
        "state_file: state.json\n",
        "    ignore_keys: [\"heartbeat\", \"cursor_.*\"]\n",
        "      - \"@TGS#a\"\n",
    );
    let a = [("group_id", "@TGS#a")];
    let mut exporter = Exporter::start(&cfg.path(), &[]);
    let metrics = exporter.url("/metrics");
    eventually(WAIT, || async {
        let t = scrape(&metrics).await;
        value(&t, "timattr_group_attributes", &a).map(|_| ())
    })
    .await
    .unwrap_or_else(|| panic!("the first poll landed: {}", exporter.logs()));
    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(WAIT), Some(0), "{}", exporter.logs());

    // While it is down: k modified (counted); heartbeat modified, cursor_0 removed and cursor_1
    // added (ignored: the removal only shows if the state file's snapshot is flagged too).
    server
        .fake
        .set_attrs(
            APP,
            "@TGS#a",
            &[("k", "v2"), ("heartbeat", "2"), ("cursor_1", "x")],
        )
        .expect("attrs set");
    let exporter = Exporter::start(&cfg.path(), &[]);
    let metrics = exporter.url("/metrics");
    let text = eventually(WAIT, || async {
        let t = scrape(&metrics).await;
        (value(&t, "timattr_group_attributes", &a) == Some(3.0)).then_some(t)
    })
    .await
    .unwrap_or_else(|| panic!("the restart polled: {}", exporter.logs()));
    assert_eq!(
        changes(&text, "@TGS#a"),
        [Some(0.0), Some(0.0), Some(1.0)],
        "the state file's snapshot is diffed without the ignored keys"
    );
}
