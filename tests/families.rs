//! The metric families a running exporter exposes, with every feature switched on (discovery,
//! push, the state file, per-key hashes, a failing group, a group with labels), are exactly SPEC's list
//! (`common::SPEC_FAMILIES`, copied from SPEC.md by hand), each with at least one sample; and
//! scrapes never call the upstream.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use timattr_exporter::fake::GroupType;

fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn has_sample(text: &str, family: &str) -> bool {
    text.lines().any(|l| {
        !l.starts_with('#')
            && l.strip_prefix(family).is_some_and(|rest| {
                rest.starts_with('{')
                    || rest.starts_with(' ')
                    || ["_bucket{", "_sum", "_count"]
                        .iter()
                        .any(|s| rest.starts_with(s))
            })
    })
}

#[tokio::test]
async fn a_running_exporter_exposes_exactly_specs_families() {
    let server = fake_with_app().await;
    group(&server, "@TGS#ok", &[("k", "v")]);
    group(&server, "@TGS#gone", &[("k", "v")]);
    server
        .fake
        .create_group(APP, "@TGS#found", GroupType::Public)
        .unwrap();
    server.fake.destroy_group(APP, "@TGS#gone").unwrap();
    let cfg = ConfigDir::new(
        server.base_url().as_ref(),
        &["@TGS#ok", "@TGS#gone"],
        "state_file: state.json\n",
    );
    let yaml = std::fs::read_to_string(cfg.path())
        .unwrap()
        .replace(
            "    groups:\n",
            "    callback_token: t0ken-for-families\n    discover:\n      refresh_interval: 1m\n    groups:\n",
        )
        // A group with labels, for timattr_group_labels.
        .replace(
            "      - \"@TGS#ok\"\n",
            "      - id: \"@TGS#ok\"\n        labels: {page_on_change: \"true\"}\n",
        );
    std::fs::write(cfg.path(), yaml).unwrap();
    let exporter = Exporter::start(&cfg.path(), &["--callback.listen-address=127.0.0.1:0"]);
    let metrics = exporter.url("/metrics");
    let text = eventually(Duration::from_secs(20), || async {
        let t = scrape(&metrics).await;
        let found = value(&t, "timattr_group_up", &[("group_id", "@TGS#found")]);
        let gone = value(&t, "timattr_group_error_code", &[("group_id", "@TGS#gone")]);
        // @TGS#ok is the only group with an attribute, so the only source of value hashes:
        // waited for too, or a slow first poll of it fails the test on a loaded machine.
        let ok = value(&t, "timattr_group_up", &[("group_id", "@TGS#ok")]);
        (found == Some(1.0) && gone == Some(10010.0) && ok == Some(1.0)).then_some(t)
    })
    .await
    .unwrap_or_else(|| panic!("polls and a listing landed: {}", exporter.logs()));

    let exposed: BTreeSet<String> = families(&text)
        .into_iter()
        .filter(|f| f.starts_with("timattr_"))
        .collect();
    let spec: BTreeSet<String> = SPEC_FAMILIES.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        exposed.difference(&spec).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "exposed but not in SPEC"
    );
    assert_eq!(
        spec.difference(&exposed).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "in SPEC but not exposed"
    );
    for family in SPEC_FAMILIES {
        assert!(has_sample(&text, family), "{family} has no sample");
    }
    for process in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(has_sample(&text, process), "{process} is missing");
    }
}

#[tokio::test]
async fn scrapes_never_call_the_upstream() {
    let server = fake_with_app().await;
    group(&server, "@TGS#a", &[("k", "v")]);
    let cfg = ConfigDir::new(server.base_url().as_ref(), &["@TGS#a"], "");
    // A day between polls: any request during the scrapes would be the scrapes'.
    let yaml = std::fs::read_to_string(cfg.path())
        .unwrap()
        .replace("poll_interval: 1s", "poll_interval: 24h");
    std::fs::write(cfg.path(), yaml).unwrap();
    let exporter = Exporter::start(&cfg.path(), &[]);
    let metrics = exporter.url("/metrics");
    // The first poll of a 24 h group falls anywhere in the day; only the count matters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.fake.counts();
    for _ in 0..100 {
        let t = scrape(&metrics).await;
        assert!(t.contains("timattr_groups{"), "a real scrape");
    }
    let after = server.fake.counts();
    assert_eq!(before, after, "100 scrapes sent requests upstream");
}
