//! The per-group families, `timattr_groups` and `timattr_groups_by_error_code`, written by hand
//! from the store's read-only view ([`crate::store::Store::apps`]).
//!
//! By hand rather than through `prometheus` metric objects: at 100,000 groups one object per
//! series (a dozen per group) would cost several KiB per group and a hash lookup per update,
//! while the series are a pure function of the compact state the store keeps anyway.

use std::collections::BTreeMap;
use std::io::{self, Write as _};

use super::code_labels::{CodeLabel, CodeLabels};
use super::exposition::{Out, escape_label_value, push_i64, push_u64, write_f64};
use super::{
    Family, GROUP_ATTRIBUTE_CHANGES, GROUP_ATTRIBUTE_VALUE_HASH, GROUP_ATTRIBUTES,
    GROUP_ATTRIBUTES_BYTES, GROUP_ATTRIBUTES_HASH, GROUP_ERROR_CODE, GROUP_LABELS,
    GROUP_LAST_CHANGE, GROUP_LAST_SUCCESS, GROUP_UP, GROUPS, GROUPS_BY_ERROR_CODE, ValueHashes,
};
use crate::pattern::Patterns;
use crate::store::{AppView, GroupView};

/// Writes the families in Prometheus text format 0.0.4, sorted by `sdkappid` then `group_id`,
/// leaving out those `exclude` matches. `codes` holds each app's labelled codes (`error_code` of
/// `timattr_groups_by_error_code`).
///
/// Family by family: one walk over the groups per family, each in chunks of
/// [`crate::store::RENDER_CHUNK`] groups under the app's lock, and `out` written to its sink
/// only between chunks. So a scrape holds a bounded buffer rather than the whole text (138 MB
/// at 100,000 groups), and a slow reader never holds a lock. An error from the sink (the reader
/// went away) stops the render.
pub(super) fn render(
    out: &mut Out<'_>,
    apps: &[AppView],
    value_hashes: ValueHashes,
    exclude: Option<&Patterns>,
    codes: &BTreeMap<u64, CodeLabels>,
) -> io::Result<()> {
    let on = wanted(value_hashes, exclude);
    // Both per-app families come from one count per app, taken when the first of them needs it.
    let mut tallies: Option<Vec<Tally>> = None;
    let mut lead = Vec::new();
    for (at, family) in TABLE.into_iter().enumerate() {
        if !on[at] {
            continue;
        }
        let mut head = Head::new(family);
        if at == GROUPS_AT || at == BY_CODE_AT {
            let tallies = tallies.get_or_insert_with(|| apps.iter().map(Tally::of).collect());
            for (app, tally) in apps.iter().zip(tallies.iter()) {
                head.write(&mut out.buf);
                tally.write(at, app.sdkappid(), codes, &mut out.buf);
                out.maybe_flush()?;
            }
            continue;
        }
        for app in apps {
            // What every line of the family and app starts with, up to the group's ID.
            lead.clear();
            lead.extend_from_slice(family.0.as_bytes());
            lead.extend_from_slice(b"{sdkappid=\"");
            push_u64(&mut lead, app.sdkappid());
            lead.extend_from_slice(b"\",group_id=\"");
            let mut cursor = None;
            loop {
                let buf = &mut out.buf;
                let next = app.for_each_chunk_after(cursor.as_deref(), |chunk| {
                    warm(at, chunk);
                    for &group in chunk {
                        sample(at, buf, &mut head, &lead, group);
                    }
                });
                out.maybe_flush()?;
                match next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
    }
    Ok(())
}

/// How many families [`TABLE`] holds.
pub(super) const FAMILIES: usize = 12;

/// Every family, in the order they are written.
pub(super) const TABLE: [Family; FAMILIES] = [
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

// Indexes into [`TABLE`].
pub(super) const UP_AT: usize = 0;
pub(super) const ERROR_CODE_AT: usize = 1;
pub(super) const ATTRIBUTES_AT: usize = 2;
pub(super) const BYTES_AT: usize = 3;
pub(super) const SET_HASH_AT: usize = 4;
pub(super) const VALUE_HASH_AT: usize = 5;
pub(super) const CHANGES_AT: usize = 6;
pub(super) const LAST_CHANGE_AT: usize = 7;
pub(super) const LAST_SUCCESS_AT: usize = 8;
pub(super) const LABELS_AT: usize = 9;
pub(super) const GROUPS_AT: usize = 10;
pub(super) const BY_CODE_AT: usize = 11;

/// The `change` label of each counter, ready to append.
pub(super) const CHANGE_LABELS: [&str; 3] = [
    ",change=\"added\"",
    ",change=\"removed\"",
    ",change=\"modified\"",
];

/// Which families to render: `value_hashes` and `exclude_metrics` together, decided once per
/// render.
pub(super) fn wanted(value_hashes: ValueHashes, exclude: Option<&Patterns>) -> [bool; FAMILIES] {
    let mut on = TABLE.map(|(name, _, _)| !exclude.is_some_and(|p| p.is_match(name)));
    on[SET_HASH_AT] &= value_hashes != ValueHashes::Off;
    on[VALUE_HASH_AT] &= value_hashes == ValueHashes::PerKey;
    on
}

/// A family's HELP and TYPE, written before its first sample: a family without samples has
/// neither.
struct Head {
    family: Family,
    written: bool,
}

impl Head {
    fn new(family: Family) -> Head {
        Head {
            family,
            written: false,
        }
    }

    #[inline]
    fn write(&mut self, buf: &mut Vec<u8>) {
        if !self.written {
            self.written = true;
            let (name, kind, help) = self.family;
            let _ = writeln!(buf, "# HELP {name} {help}");
            let _ = writeln!(buf, "# TYPE {name} {kind}");
        }
    }
}

/// Reads what [`sample`] will read of each group of a chunk, in one pass of loads that do not
/// wait for each other, so that the cache misses of a chunk overlap instead of coming one after
/// the other as `sample` writes each group's lines. A group's state lies wherever its last poll
/// left it in the heap, and each family walks every group again: with the misses in line, a
/// render of 100,000 groups took twice as long as one of a store laid out in walk order
/// (`examples/render_groups`).
fn warm(at: usize, chunk: &[GroupView<'_>]) {
    let first = |text: &str| u64::from(text.as_bytes().first().copied().unwrap_or(0));
    let attributes = !matches!(at, UP_AT | ERROR_CODE_AT | LABELS_AT);
    let mut sum = 0u64;
    for group in chunk {
        // The ID is read for every line.
        sum = sum.wrapping_add(first(group.group_id()));
        let Some(s) = group.success().filter(|_| attributes) else {
            continue;
        };
        sum = sum.wrapping_add(s.last_success().to_bits());
        match at {
            BYTES_AT => sum = sum.wrapping_add(s.bytes()),
            VALUE_HASH_AT => {
                for (key, hash) in s.value_hashes() {
                    sum = sum.wrapping_add(hash ^ first(key));
                }
            }
            _ => {}
        }
    }
    // The loads are the point: kept from being optimised away.
    std::hint::black_box(sum);
}

/// One group's samples of the family at `at`, if it has any. `lead` is the start of each line:
/// the family's name and labels up to the group's ID.
fn sample(at: usize, buf: &mut Vec<u8>, head: &mut Head, lead: &[u8], group: GroupView<'_>) {
    let code = group.error_code();
    // The attribute series describe a successful poll: they need a code as well.
    let success = code.and_then(|_| group.success());
    let has = match at {
        // With the first poll result, as every series of the group (SPEC), though they are
        // config: a scrape before it shows nothing of the group but `timattr_groups`.
        LABELS_AT => code.is_some() && !group.labels().is_empty(),
        UP_AT | ERROR_CODE_AT => code.is_some(),
        VALUE_HASH_AT => success.is_some_and(|s| s.value_hashes().next().is_some()),
        _ => success.is_some(),
    };
    if !has {
        return;
    }
    head.write(buf);
    // `name{sdkappid="…",group_id="…` once per group; a family with several lines per group
    // copies it from the first rather than escaping the ID again.
    let line = buf.len();
    buf.extend_from_slice(lead);
    escape_label_value(buf, group.group_id());
    let to_id = line..buf.len();
    match (at, code, success) {
        (LABELS_AT, _, _) => {
            buf.push(b'"');
            for (name, value) in group.labels() {
                buf.extend_from_slice(b",label_");
                buf.extend_from_slice(name.as_bytes());
                buf.extend_from_slice(b"=\"");
                escape_label_value(buf, value);
                buf.push(b'"');
            }
            buf.extend_from_slice(b"} 1\n");
        }
        (UP_AT, Some(code), _) => int_value(buf, u64::from(code == 0)),
        (ERROR_CODE_AT, Some(code), _) => {
            buf.extend_from_slice(b"\"} ");
            push_i64(buf, code);
            buf.push(b'\n');
        }
        (ATTRIBUTES_AT, _, Some(s)) => int_value(buf, s.attributes() as u64),
        (BYTES_AT, _, Some(s)) => int_value(buf, s.bytes()),
        (SET_HASH_AT, _, Some(s)) => int_value(buf, s.set_hash()),
        (VALUE_HASH_AT, _, Some(s)) => {
            for (n, (key, hash)) in s.value_hashes().enumerate() {
                if n > 0 {
                    buf.extend_from_within(to_id.clone());
                }
                buf.extend_from_slice(b"\",key=\"");
                escape_label_value(buf, key);
                int_value(buf, hash);
            }
        }
        (CHANGES_AT, _, Some(s)) => {
            let c = s.changes();
            let counts = [c.added, c.removed, c.modified];
            for (n, (extra, count)) in CHANGE_LABELS.iter().zip(counts).enumerate() {
                if n > 0 {
                    buf.extend_from_within(to_id.clone());
                }
                buf.push(b'"');
                buf.extend_from_slice(extra.as_bytes());
                buf.extend_from_slice(b"} ");
                push_u64(buf, count);
                buf.push(b'\n');
            }
        }
        (LAST_CHANGE_AT, _, Some(s)) => {
            buf.extend_from_slice(b"\"} ");
            write_f64(buf, s.last_change());
        }
        (LAST_SUCCESS_AT, _, Some(s)) => {
            buf.extend_from_slice(b"\"} ");
            write_f64(buf, s.last_success());
        }
        // `has` said there is a sample: not reached.
        _ => buf.truncate(line),
    }
}

/// Ends a line whose labels end with the last label value's text: its closing quote and brace,
/// the value and the newline.
#[inline]
fn int_value(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(b"\"} ");
    push_u64(buf, v);
    buf.push(b'\n');
}

/// An app's groups counted for `timattr_groups` and `timattr_groups_by_error_code`.
struct Tally {
    assigned: u64,
    by_code: BTreeMap<i64, u64>,
}

impl Tally {
    fn of(app: &AppView) -> Tally {
        let mut tally = Tally {
            assigned: 0,
            by_code: BTreeMap::from([(0, 0)]),
        };
        app.for_each_group(|group| {
            tally.assigned += 1;
            if let Some(code) = group.error_code() {
                *tally.by_code.entry(code).or_default() += 1;
            }
        });
        tally
    }

    /// The app's samples of the family at `at` ([`GROUPS_AT`] or [`BY_CODE_AT`]).
    fn write(
        &self,
        at: usize,
        sdkappid: u64,
        codes: &BTreeMap<u64, CodeLabels>,
        buf: &mut Vec<u8>,
    ) {
        let app_labels = format!("sdkappid=\"{sdkappid}\"");
        if at == GROUPS_AT {
            let _ = writeln!(buf, "{}{{{app_labels}}} {}", GROUPS.0, self.assigned);
            return;
        }
        // Every code in the store went through the app's observer first, so its set knows
        // them; an app without one gets a set of its own here, bounded all the same.
        let mut labels = codes.get(&sdkappid).cloned().unwrap_or_default();
        let mut by_label: BTreeMap<CodeLabel, u64> = BTreeMap::new();
        for (&code, &n) in &self.by_code {
            *by_label.entry(labels.admit(code)).or_default() += n;
        }
        for (label, n) in by_label {
            let _ = writeln!(
                buf,
                "{}{{{app_labels},error_code=\"{label}\"}} {n}",
                GROUPS_BY_ERROR_CODE.0
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::exposition::{FLUSH_AT, check_exposition};
    use super::*;
    use crate::pattern::Patterns;
    use crate::snapshot::{hash48, set_hash};
    use crate::store::testing::*;
    use crate::store::{AppSettings, Store};
    use crate::store::{RENDER_CHUNK, Seeds};
    use proptest::prelude::*;

    fn text(store: &Store, vh: ValueHashes) -> String {
        text_excluding(store, vh, None)
    }

    fn text_excluding(store: &Store, vh: ValueHashes, exclude: Option<&Patterns>) -> String {
        let mut sink = Vec::new();
        let mut out = Out::new(&mut sink);
        render(&mut out, &store.apps(), vh, exclude, &BTreeMap::new()).expect("a Vec");
        out.flush().expect("a Vec");
        String::from_utf8(sink).expect("UTF-8")
    }

    /// What the renderer before streaming wrote.
    fn reference(store: &Store, vh: ValueHashes, exclude: Option<&Patterns>) -> String {
        let mut out = String::new();
        super::super::reference::render(&mut out, store, vh, exclude, &BTreeMap::new());
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

    /// 2,000 groups of two apps in every state, every family on: the streamed render writes
    /// the very bytes the single-pass render did, whatever the flush points.
    fn big_store() -> Store {
        let store = Store::new();
        for app in [1u64, 2] {
            let ids: Vec<String> = (0..1000).map(|i| format!("@TGS#{app}_{i:04}")).collect();
            store.set_assigned(app, &ids, Seeds::DropUnlisted);
            let mut settings = with_labels(&[("team", "rooms")]);
            settings
                .groups
                .insert(ids[3].clone().into(), with_labels(&[("page", "a\"b")]).app);
            if app == 2 {
                settings = AppSettings {
                    app: ignoring(&["hb"]).app,
                    groups: settings.groups,
                };
            }
            store.set_settings(app, settings);
            for (i, id) in ids.iter().enumerate() {
                let v = i.to_string();
                let first = attrs(&[("a", "1"), ("b", &v), ("hb", "x"), ("k\"\n", "y")]);
                match i % 7 {
                    0 => continue,
                    1 => {
                        store.apply(app, id, &no_answer(), 5.0);
                        continue;
                    }
                    2 => {
                        store.apply(app, id, &api(10000 + (i % 40) as i64), 5.0);
                        continue;
                    }
                    _ => {}
                }
                store.apply(app, id, &ok(&first), 10.0);
                if i % 2 == 0 {
                    let second = attrs(&[("a", "2"), ("c", &v)]);
                    store.apply(app, id, &ok(&second), 20.5);
                }
                if i % 5 == 0 {
                    store.apply(app, id, &api(10007), 30.0);
                }
            }
        }
        store
    }

    #[test]
    fn the_streamed_render_writes_the_bytes_of_the_single_pass_one() {
        let store = big_store();
        let exclude = Patterns::new(["timattr_group_attributes_bytes"]).expect("valid");
        for (vh, exclude) in [
            (ValueHashes::PerKey, None),
            (ValueHashes::PerGroup, None),
            (ValueHashes::Off, Some(&exclude)),
        ] {
            let streamed = text_excluding(&store, vh, exclude);
            assert!(streamed.len() > 4 * FLUSH_AT, "several flushes");
            assert!(streamed == reference(&store, vh, exclude), "{vh:?}");
            check_exposition(&streamed).expect("valid exposition");
        }
    }

    /// A sink that takes `room` bytes, then fails as a socket whose reader left does.
    struct Closing {
        room: usize,
        written: usize,
    }

    impl std::io::Write for Closing {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.written >= self.room {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.written += data.len();
            Ok(data.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_sink_stops_the_render() {
        let store = big_store();
        let mut sink = Closing {
            room: FLUSH_AT,
            written: 0,
        };
        let mut out = Out::new(&mut sink);
        let result = render(
            &mut out,
            &store.apps(),
            ValueHashes::PerKey,
            None,
            &BTreeMap::new(),
        );
        assert_eq!(result.map_err(|e| e.kind()), Err(io::ErrorKind::BrokenPipe));
        assert!(sink.written < 4 * FLUSH_AT, "stopped at the next flush");
    }

    #[test]
    fn the_indexes_name_their_families() {
        let at = |i: usize| TABLE[i].0;
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
    }

    #[test]
    fn labels_series_come_with_the_first_poll_merged_and_escaped() {
        let store = store_with(&["g", "h"]);
        let mut settings = with_labels(&[("team", "rooms")]);
        let own = with_labels(&[("team", "a\"b\\c\nd"), ("page_on_change", "true")]).app;
        settings.groups.insert("h".into(), own);
        store.set_settings(1, settings);
        let before = text(&store, ValueHashes::PerKey);
        assert!(
            !before.contains("group_id="),
            "nothing of a group before its first poll: {before}"
        );
        store.apply(1, "g", &ok(&attrs(&[("a", "1")])), 1.0);
        store.apply(1, "h", &no_answer(), 1.0);
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
        let out = text_excluding(&store, ValueHashes::PerKey, Some(&exclude));
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
