//! The per-group families, `timattr_groups` and `timattr_groups_by_error_code`, written by hand
//! from the store's read-only view ([`Store::apps`]).
//!
//! By hand rather than through `prometheus` metric objects: at 100,000 groups one object per
//! series (a dozen per group) would cost several KiB per group and a hash lookup per update,
//! while the series are a pure function of the compact state the store keeps anyway.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use super::code_labels::{CodeLabel, CodeLabels};
use super::exposition::{escape_label_value, push_i64, push_u64, start, write_f64};
use super::{
    Family, GROUP_ATTRIBUTE_CHANGES, GROUP_ATTRIBUTE_VALUE_HASH, GROUP_ATTRIBUTES,
    GROUP_ATTRIBUTES_BYTES, GROUP_ATTRIBUTES_HASH, GROUP_ERROR_CODE, GROUP_LABELS,
    GROUP_LAST_CHANGE, GROUP_LAST_SUCCESS, GROUP_UP, GROUPS, GROUPS_BY_ERROR_CODE, ValueHashes,
};
use crate::pattern::Patterns;
use crate::store::{GroupView, Store};

/// The size of each family's text at the last render: the next one reserves that much up
/// front, since growing multi-megabyte buffers by doubling costs more (page faults, copies)
/// than writing them.
#[derive(Debug, Default)]
pub(super) struct SizeHints(Mutex<[usize; FAMILIES]>);

/// Appends the families in Prometheus text format 0.0.4, sorted by `sdkappid` then `group_id`,
/// leaving out those `exclude` matches. `codes` holds each app's labelled codes (`error_code` of
/// `timattr_groups_by_error_code`).
pub(super) fn render(
    out: &mut String,
    store: &Store,
    value_hashes: ValueHashes,
    exclude: Option<&Patterns>,
    codes: &BTreeMap<u64, CodeLabels>,
    sizes: &SizeHints,
) {
    let mut f = Families {
        on: Families::wanted(value_hashes, exclude),
        ..Families::default()
    };
    let hint = *sizes.0.lock().unwrap_or_else(PoisonError::into_inner);
    for (buf, size) in f.buffers().into_iter().zip(hint) {
        buf.reserve(size + size / 8);
    }
    for app in store.apps() {
        let sdkappid = app.sdkappid();
        let mut assigned = 0u64;
        let mut by_code: BTreeMap<i64, u64> = BTreeMap::from([(0, 0)]);
        app.for_each_group(|group| {
            assigned += 1;
            if let Some(code) = group.error_code() {
                *by_code.entry(code).or_default() += 1;
            }
            f.group(sdkappid, group);
        });
        let app_labels = format!("sdkappid=\"{sdkappid}\"");
        if f.on[GROUPS_AT] {
            let _ = writeln!(f.groups, "{}{{{app_labels}}} {assigned}", GROUPS.0);
        }
        if f.on[BY_CODE_AT] {
            // Every code in the store went through the app's observer first, so its set knows
            // them; an app without one gets a set of its own here, bounded all the same.
            let mut labels = codes.get(&sdkappid).cloned().unwrap_or_default();
            let mut by_label: BTreeMap<CodeLabel, u64> = BTreeMap::new();
            for (code, n) in by_code {
                *by_label.entry(labels.admit(code)).or_default() += n;
            }
            for (label, n) in by_label {
                let _ = writeln!(
                    f.by_code,
                    "{}{{{app_labels},error_code=\"{label}\"}} {n}",
                    GROUPS_BY_ERROR_CODE.0
                );
            }
        }
    }
    *sizes.0.lock().unwrap_or_else(PoisonError::into_inner) = f.buffers().map(|b| b.len());
    f.finish(out);
}

/// One buffer per family, filled in a single pass over the groups and joined at the end, so each
/// family's samples come out together under one HELP and TYPE.
#[derive(Default)]
struct Families {
    up: String,
    error_code: String,
    attributes: String,
    bytes: String,
    set_hash: String,
    value_hash: String,
    changes: String,
    last_change: String,
    last_success: String,
    labels: String,
    groups: String,
    by_code: String,
    /// Whether each family is rendered, in [`Families::TABLE`] order: decided once per render.
    on: [bool; FAMILIES],
}

/// How many families [`Families`] holds.
const FAMILIES: usize = 12;

// Indexes into [`Families::TABLE`] and `on`.
const UP_AT: usize = 0;
const ERROR_CODE_AT: usize = 1;
const ATTRIBUTES_AT: usize = 2;
const BYTES_AT: usize = 3;
const SET_HASH_AT: usize = 4;
const VALUE_HASH_AT: usize = 5;
const CHANGES_AT: usize = 6;
const LAST_CHANGE_AT: usize = 7;
const LAST_SUCCESS_AT: usize = 8;
const LABELS_AT: usize = 9;
const GROUPS_AT: usize = 10;
const BY_CODE_AT: usize = 11;

/// The `change` label of each counter, ready to append.
const CHANGE_LABELS: [&str; 3] = [
    ",change=\"added\"",
    ",change=\"removed\"",
    ",change=\"modified\"",
];

impl Families {
    /// Every family, in the order they are written.
    const TABLE: [Family; FAMILIES] = [
        GROUP_UP,
        GROUP_ERROR_CODE,
        GROUP_ATTRIBUTES,
        GROUP_ATTRIBUTES_BYTES,
        GROUP_ATTRIBUTES_HASH,
        GROUP_ATTRIBUTE_VALUE_HASH,
        GROUP_ATTRIBUTE_CHANGES,
        GROUP_LAST_CHANGE,
        GROUP_LAST_SUCCESS,
        GROUP_LABELS,
        GROUPS,
        GROUPS_BY_ERROR_CODE,
    ];

    /// Which families to render: `value_hashes` and `exclude_metrics` together.
    fn wanted(value_hashes: ValueHashes, exclude: Option<&Patterns>) -> [bool; FAMILIES] {
        let mut on = Self::TABLE.map(|(name, _, _)| !exclude.is_some_and(|p| p.is_match(name)));
        on[SET_HASH_AT] &= value_hashes != ValueHashes::Off;
        on[VALUE_HASH_AT] &= value_hashes == ValueHashes::PerKey;
        on
    }

    fn buffers(&mut self) -> [&mut String; FAMILIES] {
        [
            &mut self.up,
            &mut self.error_code,
            &mut self.attributes,
            &mut self.bytes,
            &mut self.set_hash,
            &mut self.value_hash,
            &mut self.changes,
            &mut self.last_change,
            &mut self.last_success,
            &mut self.labels,
            &mut self.groups,
            &mut self.by_code,
        ]
    }

    fn group(&mut self, sdkappid: u64, group: GroupView<'_>) {
        let configured = group.labels();
        let has_labels = self.on[LABELS_AT] && !configured.is_empty();
        let code = group.error_code();
        if code.is_none() && !has_labels {
            return;
        }
        let id = group.group_id();
        let mut labels = String::with_capacity(40 + id.len());
        labels.push_str("sdkappid=\"");
        push_u64(&mut labels, sdkappid);
        labels.push_str("\",group_id=\"");
        escape_label_value(&mut labels, id);
        labels.push('"');
        let labels = labels.as_str();

        // From assignment, as `timattr_groups` counts the group: the labels are config, not a
        // poll result.
        if has_labels {
            let buf = &mut self.labels;
            buf.push_str(GROUP_LABELS.0);
            buf.push('{');
            buf.push_str(labels);
            for (name, value) in configured {
                buf.push_str(",label_");
                buf.push_str(name);
                buf.push_str("=\"");
                escape_label_value(buf, value);
                buf.push('"');
            }
            buf.push_str("} 1\n");
        }

        let Some(code) = code else {
            return;
        };
        if self.on[UP_AT] {
            start(&mut self.up, GROUP_UP.0, labels, "");
            push_u64(&mut self.up, u64::from(code == 0));
            self.up.push('\n');
        }
        if self.on[ERROR_CODE_AT] {
            start(&mut self.error_code, GROUP_ERROR_CODE.0, labels, "");
            push_i64(&mut self.error_code, code);
            self.error_code.push('\n');
        }

        let Some(s) = group.success() else {
            return;
        };
        if self.on[ATTRIBUTES_AT] {
            start(&mut self.attributes, GROUP_ATTRIBUTES.0, labels, "");
            push_u64(&mut self.attributes, s.attributes() as u64);
            self.attributes.push('\n');
        }
        if self.on[BYTES_AT] {
            start(&mut self.bytes, GROUP_ATTRIBUTES_BYTES.0, labels, "");
            push_u64(&mut self.bytes, s.bytes());
            self.bytes.push('\n');
        }
        if self.on[SET_HASH_AT] {
            start(&mut self.set_hash, GROUP_ATTRIBUTES_HASH.0, labels, "");
            push_u64(&mut self.set_hash, s.set_hash());
            self.set_hash.push('\n');
        }
        if self.on[VALUE_HASH_AT] {
            let buf = &mut self.value_hash;
            for (key, hash) in s.value_hashes() {
                buf.push_str(GROUP_ATTRIBUTE_VALUE_HASH.0);
                buf.push('{');
                buf.push_str(labels);
                buf.push_str(",key=\"");
                escape_label_value(buf, key);
                buf.push_str("\"} ");
                push_u64(buf, hash);
                buf.push('\n');
            }
        }
        if self.on[CHANGES_AT] {
            let c = s.changes();
            for (extra, n) in CHANGE_LABELS.iter().zip([c.added, c.removed, c.modified]) {
                start(&mut self.changes, GROUP_ATTRIBUTE_CHANGES.0, labels, extra);
                push_u64(&mut self.changes, n);
                self.changes.push('\n');
            }
        }
        if self.on[LAST_CHANGE_AT] {
            start(&mut self.last_change, GROUP_LAST_CHANGE.0, labels, "");
            write_f64(&mut self.last_change, s.last_change());
        }
        if self.on[LAST_SUCCESS_AT] {
            start(&mut self.last_success, GROUP_LAST_SUCCESS.0, labels, "");
            write_f64(&mut self.last_success, s.last_success());
        }
    }

    fn finish(mut self, out: &mut String) {
        let bufs = self.buffers().map(std::mem::take);
        let parts: Vec<(Family, String)> = Self::TABLE.into_iter().zip(bufs).collect();
        let total: usize = parts.iter().map(|(f, s)| s.len() + f.2.len() + 64).sum();
        out.reserve(total);
        for ((name, kind, help), samples) in parts {
            if samples.is_empty() {
                continue;
            }
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            out.push_str(&samples);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::exposition::check_exposition;
    use super::*;
    use crate::pattern::Patterns;
    use crate::snapshot::{hash48, set_hash};
    use crate::store::testing::*;
    use crate::store::{RENDER_CHUNK, Seeds};
    use proptest::prelude::*;

    fn text(store: &Store, vh: ValueHashes) -> String {
        let mut out = String::new();
        render(
            &mut out,
            store,
            vh,
            None,
            &BTreeMap::new(),
            &SizeHints::default(),
        );
        out
    }

    /// The rendered samples, as `name{labels}` → value.
    fn series(store: &Store, vh: ValueHashes) -> BTreeMap<String, String> {
        text(store, vh)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').expect("a sample line has a value");
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn get(s: &BTreeMap<String, String>, name: &str, labels: &str) -> Option<String> {
        s.get(&format!("{name}{{{labels}}}")).cloned()
    }

    const G: &str = "sdkappid=\"1\",group_id=\"g\"";

    fn changes(s: &BTreeMap<String, String>) -> [u64; 3] {
        ["added", "removed", "modified"].map(|kind| {
            get(
                s,
                "timattr_group_attribute_changes_total",
                &format!("{G},change=\"{kind}\""),
            )
            .expect("change counter exists")
            .parse()
            .expect("integer")
        })
    }

    #[test]
    fn every_family_shows_the_store() {
        let store = store_with(&["g"]);
        store.apply(1, "g", &ok(&attrs(&[("a", "1"), ("b", "2")])), 100.0);
        let s = series(&store, ValueHashes::PerKey);
        assert_eq!(changes(&s), [0, 0, 0]);
        assert_eq!(
            get(&s, "timattr_group_last_change_timestamp_seconds", G).as_deref(),
            Some("0")
        );
        assert_eq!(
            get(&s, "timattr_group_last_success_timestamp_seconds", G).as_deref(),
            Some("100")
        );

        store.apply(1, "g", &ok(&attrs(&[("b", "22"), ("c", "3")])), 110.5);
        let three = attrs(&[("x", "1"), ("y", "2"), ("z", "3")]);
        store.apply(1, "g", &ok(&three), 140.0);
        let s = series(&store, ValueHashes::PerKey);
        assert_eq!(changes(&s), [4, 3, 1]);
        assert_eq!(get(&s, "timattr_group_up", G).as_deref(), Some("1"));
        assert_eq!(get(&s, "timattr_group_error_code", G).as_deref(), Some("0"));
        assert_eq!(
            get(&s, "timattr_group_last_change_timestamp_seconds", G).as_deref(),
            Some("140")
        );
        assert_eq!(get(&s, "timattr_group_attributes", G).as_deref(), Some("3"));
        assert_eq!(
            get(&s, "timattr_group_attributes_bytes", G).as_deref(),
            Some("3")
        );
        assert_eq!(
            get(&s, "timattr_group_attributes_hash", G),
            Some(set_hash(&three).to_string())
        );
        assert_eq!(
            get(
                &s,
                "timattr_group_attribute_value_hash",
                &format!("{G},key=\"y\"")
            ),
            Some(hash48(b"2").to_string())
        );
        store.apply(1, "g", &ok(&three), 150.25);
        let s = series(&store, ValueHashes::PerKey);
        assert_eq!(
            get(&s, "timattr_group_last_success_timestamp_seconds", G).as_deref(),
            Some("150.25")
        );
    }

    #[test]
    fn series_appear_with_the_first_poll() {
        let store = store_with(&["g", "h"]);
        let s = series(&store, ValueHashes::PerKey);
        assert_eq!(get(&s, "timattr_group_up", G), None);
        assert_eq!(
            get(&s, "timattr_groups", "sdkappid=\"1\"").as_deref(),
            Some("2")
        );
        assert_eq!(
            get(
                &s,
                "timattr_groups_by_error_code",
                "sdkappid=\"1\",error_code=\"0\""
            )
            .as_deref(),
            Some("0")
        );

        store.apply(1, "g", &no_answer(), 1.0);
        store.apply(1, "h", &api(10002), 1.0);
        let s = series(&store, ValueHashes::PerKey);
        assert_eq!(get(&s, "timattr_group_up", G).as_deref(), Some("0"));
        assert_eq!(
            get(&s, "timattr_group_error_code", G).as_deref(),
            Some("-1")
        );
        // No attribute series before a success.
        assert_eq!(get(&s, "timattr_group_attributes", G), None);
        assert!(
            !s.keys()
                .any(|k| k.starts_with("timattr_group_attribute_changes_total"))
        );
        for (code, n) in [("-1", "1"), ("0", "0"), ("10002", "1")] {
            assert_eq!(
                get(
                    &s,
                    "timattr_groups_by_error_code",
                    &format!("sdkappid=\"1\",error_code=\"{code}\"")
                )
                .as_deref(),
                Some(n)
            );
        }
    }

    #[test]
    fn gone_groups_keep_only_up_and_error_code() {
        let store = store_with(&["g"]);
        store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        store.apply(1, "g", &ok(&attrs(&[("a", "2")])), 2.0);
        for code in [10007, 10010, 10015] {
            store.apply(1, "g", &api(code), 3.0);
            let s = series(&store, ValueHashes::PerKey);
            assert_eq!(get(&s, "timattr_group_up", G).as_deref(), Some("0"));
            assert_eq!(
                get(&s, "timattr_group_error_code", G),
                Some(code.to_string())
            );
            assert!(
                s.keys().all(|k| !k.starts_with("timattr_group_attribute")
                    && !k.starts_with("timattr_group_last_")),
                "{code}: {s:?}"
            );
            store.apply(1, "g", &ok(&attrs(&[("z", "9")])), 4.0);
            let s = series(&store, ValueHashes::PerKey);
            assert_eq!(changes(&s), [0, 0, 0]);
            assert_eq!(get(&s, "timattr_group_up", G).as_deref(), Some("1"));
        }
    }

    #[test]
    fn groups_no_longer_assigned_lose_all_series() {
        let store = store_with(&["g", "h"]);
        store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        store.apply(1, "h", &ok(&attrs(&[("a", "1")])), 1.0);
        store.set_assigned(1, ["g", "new"], Seeds::DropUnlisted);
        let s = series(&store, ValueHashes::PerKey);
        assert!(s.keys().all(|k| !k.contains("group_id=\"h\"")));
        assert!(s.keys().all(|k| !k.contains("group_id=\"new\"")));
        assert_eq!(
            get(&s, "timattr_groups", "sdkappid=\"1\"").as_deref(),
            Some("2")
        );
        store.remove_app(1);
        assert!(series(&store, ValueHashes::PerKey).is_empty());
    }

    #[test]
    fn value_hashes_setting_controls_hash_series() {
        let store = store_with(&["g"]);
        store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        let has = |vh, name: &str| {
            series(&store, vh)
                .keys()
                .any(|k| k.starts_with(&format!("{name}{{")))
        };
        assert!(has(
            ValueHashes::PerKey,
            "timattr_group_attribute_value_hash"
        ));
        assert!(has(ValueHashes::PerKey, "timattr_group_attributes_hash"));
        assert!(!has(
            ValueHashes::PerGroup,
            "timattr_group_attribute_value_hash"
        ));
        assert!(has(ValueHashes::PerGroup, "timattr_group_attributes_hash"));
        assert!(!has(ValueHashes::Off, "timattr_group_attributes_hash"));
        assert!(has(ValueHashes::Off, "timattr_group_attributes"));
    }

    #[test]
    fn labels_are_escaped_and_output_is_sorted() {
        let store = Store::new();
        store.set_assigned(
            2,
            &["b".to_string(), "a\"\\\nz".to_string()],
            Seeds::DropUnlisted,
        );
        store.set_assigned(1, &["c".to_string()], Seeds::DropUnlisted);
        store.apply(2, "a\"\\\nz", &ok(&attrs(&[("k\"\n\\", "v")])), 1.0);
        store.apply(2, "b", &no_answer(), 1.0);
        store.apply(1, "c", &no_answer(), 1.0);
        let out = text(&store, ValueHashes::PerKey);
        assert!(
            out.contains(r#"group_id="a\"\\\nz",key="k\"\n\\"}"#),
            "{out}"
        );
        let ups: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("timattr_group_up{"))
            .collect();
        assert_eq!(
            ups,
            [
                r#"timattr_group_up{sdkappid="1",group_id="c"} 0"#,
                r#"timattr_group_up{sdkappid="2",group_id="a\"\\\nz"} 1"#,
                r#"timattr_group_up{sdkappid="2",group_id="b"} 0"#,
            ]
        );
        check_exposition(&out).expect("valid exposition");
    }

    #[test]
    fn rendering_resumes_across_chunks() {
        let ids: Vec<String> = (0..RENDER_CHUNK * 2 + 7)
            .map(|i| format!("g{i:05}"))
            .collect();
        let store = Store::new();
        store.set_assigned(1, &ids, Seeds::DropUnlisted);
        for id in &ids {
            store.apply(1, id, &no_answer(), 1.0);
        }
        let s = series(&store, ValueHashes::PerKey);
        let ups = s
            .keys()
            .filter(|k| k.starts_with("timattr_group_up{"))
            .count();
        assert_eq!(ups, ids.len());
        assert_eq!(
            get(&s, "timattr_groups", "sdkappid=\"1\""),
            Some(ids.len().to_string())
        );
    }

    #[test]
    fn size_hints_change_nothing_but_capacity() {
        let store = store_with(&["g", "h"]);
        store.set_settings(1, with_labels(&[("team", "rooms")]));
        store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        let hints = SizeHints::default();
        let mut first = String::new();
        render(
            &mut first,
            &store,
            ValueHashes::PerKey,
            None,
            &BTreeMap::new(),
            &hints,
        );
        assert!(hints.0.lock().expect("not poisoned").iter().all(|&n| n > 0));
        let mut second = String::new();
        render(
            &mut second,
            &store,
            ValueHashes::PerKey,
            None,
            &BTreeMap::new(),
            &hints,
        );
        assert_eq!(first, second);
    }

    #[test]
    fn the_indexes_name_their_families() {
        let at = |i: usize| Families::TABLE[i].0;
        assert_eq!(at(UP_AT), GROUP_UP.0);
        assert_eq!(at(ERROR_CODE_AT), GROUP_ERROR_CODE.0);
        assert_eq!(at(ATTRIBUTES_AT), GROUP_ATTRIBUTES.0);
        assert_eq!(at(BYTES_AT), GROUP_ATTRIBUTES_BYTES.0);
        assert_eq!(at(SET_HASH_AT), GROUP_ATTRIBUTES_HASH.0);
        assert_eq!(at(VALUE_HASH_AT), GROUP_ATTRIBUTE_VALUE_HASH.0);
        assert_eq!(at(CHANGES_AT), GROUP_ATTRIBUTE_CHANGES.0);
        assert_eq!(at(LAST_CHANGE_AT), GROUP_LAST_CHANGE.0);
        assert_eq!(at(LAST_SUCCESS_AT), GROUP_LAST_SUCCESS.0);
        assert_eq!(at(LABELS_AT), GROUP_LABELS.0);
        assert_eq!(at(GROUPS_AT), GROUPS.0);
        assert_eq!(at(BY_CODE_AT), GROUPS_BY_ERROR_CODE.0);
        // And the buffers are in the same order: a family's samples under its own HELP.
        let mut f = Families::default();
        f.last_success.push('x');
        f.labels.push('y');
        let bufs = f.buffers();
        assert_eq!(
            (bufs[LAST_SUCCESS_AT].as_str(), bufs[LABELS_AT].as_str()),
            ("x", "y")
        );
    }

    #[test]
    fn labels_series_exist_from_assignment_merged_and_escaped() {
        let store = store_with(&["g", "h"]);
        let mut settings = with_labels(&[("team", "rooms")]);
        let own = with_labels(&[("team", "a\"b\\c\nd"), ("page_on_change", "true")]).app;
        settings.groups.insert("h".into(), own);
        store.set_settings(1, settings);
        let out = text(&store, ValueHashes::PerKey);
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("timattr_group_labels"))
            .collect();
        assert_eq!(
            lines,
            [
                r#"timattr_group_labels{sdkappid="1",group_id="g",label_team="rooms"} 1"#,
                r#"timattr_group_labels{sdkappid="1",group_id="h",label_page_on_change="true",label_team="a\"b\\c\nd"} 1"#,
            ],
            "{out}"
        );
        // Nothing else before a poll.
        assert!(!out.contains("timattr_group_up{"));
        check_exposition(&out).expect("valid exposition");
        // No labels: no series, no HELP.
        store.set_settings(1, with_labels(&[]));
        assert!(!text(&store, ValueHashes::PerKey).contains("timattr_group_labels"));
    }

    #[test]
    fn ignored_keys_have_no_value_hash() {
        let store = store_with(&["g"]);
        store.set_settings(1, ignoring(&["hb"]));
        store.apply(1, "g", &ok(&attrs(&[("a", "1"), ("hb", "2")])), 1.0);
        let s = series(&store, ValueHashes::PerKey);
        let value_hash = "timattr_group_attribute_value_hash";
        assert!(get(&s, value_hash, &format!("{G},key=\"a\"")).is_some());
        assert_eq!(get(&s, value_hash, &format!("{G},key=\"hb\"")), None);
        assert_eq!(get(&s, "timattr_group_attributes", G).as_deref(), Some("2"));
    }

    #[test]
    fn excluded_families_are_not_rendered_at_all() {
        let store = store_with(&["g"]);
        store.set_settings(1, with_labels(&[("team", "rooms")]));
        store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        let exclude = Patterns::new(["timattr_group_attribute_value_hash", "timattr_groups.*"])
            .expect("valid");
        let mut out = String::new();
        render(
            &mut out,
            &store,
            ValueHashes::PerKey,
            Some(&exclude),
            &BTreeMap::new(),
            &SizeHints::default(),
        );
        for gone in [
            "timattr_group_attribute_value_hash",
            "timattr_groups",
            "timattr_groups_by_error_code",
        ] {
            assert!(!out.contains(&format!("{gone}{{")), "{gone}: {out}");
            assert!(!out.contains(&format!("# TYPE {gone} ")), "{gone}: {out}");
        }
        for kept in [
            "timattr_group_up",
            "timattr_group_attributes_hash",
            "timattr_group_labels",
        ] {
            assert!(out.contains(&format!("# TYPE {kept} ")), "{kept}: {out}");
        }
        check_exposition(&out).expect("valid exposition");
    }

    proptest! {
        #[test]
        fn rendered_random_states_are_valid_exposition(ops in proptest::collection::vec(op(), 0..40)) {
            let store = store_after(ops);
            for vh in [ValueHashes::PerKey, ValueHashes::PerGroup, ValueHashes::Off] {
                let out = text(&store, vh);
                prop_assert!(check_exposition(&out).is_ok(), "{:?}\n{}", check_exposition(&out), out);
            }
        }
    }
}
