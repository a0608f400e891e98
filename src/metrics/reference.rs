//! The per-group families as `groups` rendered them before streaming (one pass over the groups
//! into one buffer per family, joined at the end), kept for the tests: the streamed render must
//! write the very same bytes. Its numbers and escapes are std's `Display` and a `char` loop,
//! not the hand-written writers of `exposition`, so it checks those too.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::code_labels::{CodeLabel, CodeLabels};
// The family table, its indexes and which families a render wants are the streamed render's
// own: what this oracle checks is the bytes written, not that table.
use super::groups::{
    ATTRIBUTES_AT, BY_CODE_AT, BYTES_AT, CHANGE_LABELS, CHANGES_AT, ERROR_CODE_AT, FAMILIES,
    GROUPS_AT, LABELS_AT, LAST_CHANGE_AT, LAST_SUCCESS_AT, SET_HASH_AT, TABLE, UP_AT,
    VALUE_HASH_AT, wanted,
};
use super::{
    Family, GROUP_ATTRIBUTE_CHANGES, GROUP_ATTRIBUTE_VALUE_HASH, GROUP_ATTRIBUTES,
    GROUP_ATTRIBUTES_BYTES, GROUP_ATTRIBUTES_HASH, GROUP_ERROR_CODE, GROUP_LABELS,
    GROUP_LAST_CHANGE, GROUP_LAST_SUCCESS, GROUP_UP, GROUPS, GROUPS_BY_ERROR_CODE, ValueHashes,
};
use crate::pattern::Patterns;
use crate::store::{GroupView, Store};

/// Appends the families in Prometheus text format 0.0.4, sorted by `sdkappid` then `group_id`,
/// leaving out those `exclude` matches. `codes` holds each app's labelled codes (`error_code` of
/// `timattr_groups_by_error_code`).
pub(crate) fn render(
    out: &mut String,
    store: &Store,
    value_hashes: ValueHashes,
    exclude: Option<&Patterns>,
    codes: &BTreeMap<u64, CodeLabels>,
) {
    let mut f = Families {
        on: wanted(value_hashes, exclude),
        ..Families::default()
    };
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
    /// Whether each family is rendered, in [`TABLE`] order: decided once per render.
    on: [bool; FAMILIES],
}

impl Families {
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
        // A group's series, its labels included, appear with its first poll result (SPEC).
        let Some(code) = group.error_code() else {
            return;
        };
        let id = group.group_id();
        let mut labels = String::with_capacity(40 + id.len());
        labels.push_str("sdkappid=\"");
        push_u64(&mut labels, sdkappid);
        labels.push_str("\",group_id=\"");
        escape_label_value(&mut labels, id);
        labels.push('"');
        let labels = labels.as_str();

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
        let parts: Vec<(Family, String)> = TABLE.into_iter().zip(bufs).collect();
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

/// Starts a sample line: `name{labels extra} `.
fn start(out: &mut String, name: &str, labels: &str, extra: &str) {
    let _ = write!(out, "{name}{{{labels}{extra}}} ");
}

fn push_u64(out: &mut String, v: u64) {
    let _ = write!(out, "{v}");
}

fn push_i64(out: &mut String, v: i64) {
    let _ = write!(out, "{v}");
}

/// `\` → `\\`, `"` → `\"`, newline → `\n`.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The value and the line's end: `Display`'s digits, Go's spellings of the non-finite values.
fn write_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN\n");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf\n" } else { "-Inf\n" });
    } else {
        let _ = writeln!(out, "{v}");
    }
}
