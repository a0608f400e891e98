//! Lints every shipped Grafana dashboard (`dashboards/*.json`) with the rules of
//! grafana/dashboard-linter, as that project documents them (docs/rules/*.md), re-implemented
//! here over serde_json so the check runs with `cargo test` and no Go toolchain:
//!
//! | rule | what it asks |
//! |---|---|
//! | template-datasource | exactly one datasource variable, named `datasource`, labelled `Data source`, for Prometheus (or Loki) |
//! | template-job, template-instance | a `job` / `instance` query variable labelled so, on `$datasource`, from a PromQL label query, multi-select, All = `.+` |
//! | panel-datasource | every panel queries the `$datasource` variable, never a fixed datasource |
//! | panel-units | every stat, graph, table, timeseries and gauge panel has a valid Grafana unit (value mappings or non-numeric stat fields exempt it) |
//! | panel-title-description | every panel has a title and a description |
//! | target-rate-interval | every `rate`, `irate` and `increase` takes `$__rate_interval` as its range |
//! | target-job, target-instance | every selector of every query has `job=~"$job"` / `instance=~"$instance"` |
//! | target-counter-agg | every counter (`..._total`) is read through `rate`, `irate` or `increase` of a range, never as a raw value |
//!
//! The rules go beyond the linter where it is lenient for no reason that applies here: they look
//! at every panel type (state timelines included), not only the linter's list. Each rule is a
//! function returning its findings; the unit tests below feed each one small dashboards that
//! break it, so that every rule is shown able to fail.

use std::path::PathBuf;

use serde_json::{Value as Json, json};

// ------------------------------------------------------------------------------- PromQL

/// A PromQL token, as far as the rules need to tell them apart.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    /// A number or a duration (`0.5`, `1e3`, `5m`).
    Num(String),
    /// A Grafana variable outside a string: `$job`, `${job}`.
    Var(String),
    /// The raw text between `[` and `]`: a range (`5m`) or a subquery (`1h:1m`).
    Range(String),
    /// One of `( ) { } ,`.
    Punct(char),
    /// A run of operator characters: `=~`, `!=`, `>`, `*`.
    Op(String),
}

fn tokenize(expr: &str) -> Vec<Tok> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '"' | '\'' | '`' => {
                let mut s = String::new();
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' && c != '`' && i + 1 < chars.len() {
                        i += 1;
                    }
                    s.push(chars[i]);
                    i += 1;
                }
                i += 1;
                out.push(Tok::Str(s));
            }
            '[' => {
                let start = i + 1;
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                out.push(Tok::Range(
                    chars[start..i.min(chars.len())]
                        .iter()
                        .collect::<String>()
                        .trim()
                        .to_string(),
                ));
                i += 1;
            }
            '$' => {
                i += 1;
                let braced = chars.get(i) == Some(&'{');
                if braced {
                    i += 1;
                }
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push(Tok::Var(chars[start..i].iter().collect()));
                if braced {
                    // `${name}` or `${name:format}`
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            '(' | ')' | '{' | '}' | ',' => {
                out.push(Tok::Punct(c));
                i += 1;
            }
            c if c.is_ascii_digit() || c == '.' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || chars[i] == '.'
                        || (matches!(chars[i], '+' | '-') && matches!(chars[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
                out.push(Tok::Num(chars[start..i].iter().collect()));
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            _ => {
                let start = i;
                while i < chars.len() && "+-*/%^=!<>~".contains(chars[i]) {
                    i += 1;
                }
                if i == start {
                    i += 1; // anything else: skipped
                }
                out.push(Tok::Op(chars[start..i].iter().collect()));
            }
        }
    }
    out
}

/// A label matcher: `(label, op, value)`.
type Matcher = (String, String, String);

/// A series selector of a query, with where it stands.
#[derive(Debug, Clone, PartialEq)]
struct Selector {
    /// The metric name, from before the braces or a `__name__` matcher.
    name: Option<String>,
    matchers: Vec<Matcher>,
    /// `[range]` right after it, if any.
    range: Option<String>,
    /// The function or aggregation whose parentheses most closely enclose it.
    call: Option<String>,
}

/// A range of a query (`[5m]` after a selector, or a subquery's `[1h:1m]`), with the function
/// whose parentheses most closely enclose it.
#[derive(Debug, Clone, PartialEq)]
struct RangeUse {
    range: String,
    call: Option<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a label list in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// The selectors and ranges of a PromQL expression.
fn analyze(expr: &str) -> (Vec<Selector>, Vec<RangeUse>) {
    let toks = tokenize(expr);
    let mut selectors = Vec::new();
    let mut ranges = Vec::new();
    let mut stack: Vec<Option<String>> = Vec::new();
    let mut pending: Option<String> = None;
    let mut i = 0;
    let enclosing = |stack: &Vec<Option<String>>| stack.last().cloned().flatten();
    while i < toks.len() {
        match &toks[i] {
            Tok::Ident(word) if LABEL_LISTS.contains(&word.as_str()) => {
                i += 1;
                if toks.get(i) == Some(&Tok::Punct('(')) {
                    while i < toks.len() && toks[i] != Tok::Punct(')') {
                        i += 1;
                    }
                    i += 1;
                }
            }
            Tok::Ident(word) if KEYWORDS.contains(&word.as_str()) => {
                i += if word == "offset" { 2 } else { 1 };
            }
            Tok::Ident(word)
                if AGGREGATIONS.contains(&word.as_str())
                    || toks.get(i + 1) == Some(&Tok::Punct('(')) =>
            {
                pending = Some(word.clone());
                i += 1;
            }
            Tok::Ident(_) | Tok::Punct('{') => {
                let mut sel = Selector {
                    name: None,
                    matchers: Vec::new(),
                    range: None,
                    call: enclosing(&stack),
                };
                if let Tok::Ident(name) = &toks[i] {
                    sel.name = Some(name.clone());
                    i += 1;
                }
                if toks.get(i) == Some(&Tok::Punct('{')) {
                    i += 1;
                    while i < toks.len() && toks[i] != Tok::Punct('}') {
                        if let (Some(Tok::Ident(label)), Some(Tok::Op(op)), Some(Tok::Str(value))) =
                            (toks.get(i), toks.get(i + 1), toks.get(i + 2))
                        {
                            sel.matchers
                                .push((label.clone(), op.clone(), value.clone()));
                            i += 3;
                        } else {
                            i += 1;
                        }
                    }
                    i += 1;
                }
                if sel.name.is_none() {
                    sel.name = sel
                        .matchers
                        .iter()
                        .find(|(l, op, _)| l == "__name__" && op == "=")
                        .map(|(_, _, v)| v.clone());
                }
                if let Some(Tok::Range(r)) = toks.get(i) {
                    sel.range = Some(r.clone());
                    ranges.push(RangeUse {
                        range: r.clone(),
                        call: sel.call.clone(),
                    });
                    i += 1;
                }
                selectors.push(sel);
            }
            Tok::Punct('(') => {
                stack.push(pending.take());
                i += 1;
            }
            Tok::Punct(')') => {
                stack.pop();
                i += 1;
                // A subquery: `(expr)[1h:1m]`.
                if let Some(Tok::Range(r)) = toks.get(i) {
                    ranges.push(RangeUse {
                        range: r.clone(),
                        call: enclosing(&stack),
                    });
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    (selectors, ranges)
}

// ------------------------------------------------------------------------------- the dashboard

/// Every panel, rows' nested panels included, rows themselves excluded.
fn panels(dash: &Json) -> Vec<&Json> {
    fn walk<'a>(list: &'a Json, out: &mut Vec<&'a Json>) {
        for p in list.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                walk(&p["panels"], out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

fn title(panel: &Json) -> &str {
    panel["title"].as_str().unwrap_or("<untitled>")
}

/// `(panel title, refId, expr)` of every PromQL target.
fn targets(dash: &Json) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                let r = t["refId"].as_str().unwrap_or("?").to_string();
                out.push((title(p).to_string(), r, expr.to_string()));
            }
        }
    }
    out
}

fn variables(dash: &Json) -> Vec<&Json> {
    dash["templating"]["list"]
        .as_array()
        .map(|v| v.iter().collect())
        .unwrap_or_default()
}

/// Whether a datasource reference (`"$datasource"` or `{"uid": "${datasource}", ...}`) names
/// the `datasource` variable.
fn is_datasource_variable(ds: &Json) -> bool {
    let uid = ds
        .as_str()
        .or_else(|| ds["uid"].as_str())
        .unwrap_or_default();
    matches!(uid, "$datasource" | "${datasource}")
}

fn is_variable(value: &str, name: &str) -> bool {
    value == format!("${name}") || value == format!("${{{name}}}")
}

// ------------------------------------------------------------------------------- the rules

/// A rule: its name and its check, giving one message per finding.
type Rule = (&'static str, fn(&Json) -> Vec<String>);

const RULES: &[Rule] = &[
    ("template-datasource", template_datasource),
    ("template-job", template_job),
    ("template-instance", template_instance),
    ("panel-datasource", panel_datasource),
    ("panel-units", panel_units),
    ("panel-title-description", panel_title_description),
    ("target-rate-interval", target_rate_interval),
    ("target-job", target_job),
    ("target-instance", target_instance),
    ("target-counter-agg", target_counter_agg),
];

fn template_datasource(dash: &Json) -> Vec<String> {
    let ds: Vec<&Json> = variables(dash)
        .into_iter()
        .filter(|v| v["type"] == "datasource")
        .collect();
    let [var] = ds.as_slice() else {
        return vec![format!(
            "{} datasource variables, expected exactly one",
            ds.len()
        )];
    };
    let mut out = Vec::new();
    let query = var["query"].as_str().unwrap_or_default();
    if !["prometheus", "loki"].contains(&query) {
        out.push(format!(
            "the datasource variable is for {query:?}, not prometheus or loki"
        ));
    }
    let name = var["name"].as_str().unwrap_or_default();
    if name != "datasource" && name != format!("{query}_datasource") {
        out.push(format!(
            "the datasource variable is named {name:?}, not \"datasource\""
        ));
    }
    let label = var["label"].as_str().unwrap_or_default();
    let mut titled = query.to_string();
    if let Some(first) = titled.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    if label != "Data source" && label != format!("{titled} data source") {
        out.push(format!(
            "the datasource variable is labelled {label:?}, not \"Data source\""
        ));
    }
    out
}

/// template-job and template-instance: the variable `name`, set up as the rule asks.
fn template_label_variable(dash: &Json, name: &str) -> Vec<String> {
    let Some(var) = variables(dash).into_iter().find(|v| v["name"] == name) else {
        return vec![format!("no {name} variable")];
    };
    let mut out = Vec::new();
    let mut want = |ok: bool, what: &str| {
        if !ok {
            out.push(format!("the {name} variable {what}"));
        }
    };
    want(var["type"] == "query", "is not a query variable");
    want(var["label"] == name, &format!("is not labelled {name:?}"));
    want(
        is_datasource_variable(&var["datasource"]),
        "does not use the $datasource variable",
    );
    let query = var["query"]
        .as_str()
        .or_else(|| var["query"]["query"].as_str())
        .unwrap_or_default()
        .replace(' ', "");
    want(
        query.starts_with("label_values(") && query.ends_with(&format!(",{name})")),
        &format!("does not find its values with a PromQL label_values(..., {name}) query"),
    );
    want(var["multi"] == true, "is not multi-select");
    want(var["includeAll"] == true, "has no All option");
    want(
        var["allValue"] == ".+",
        "does not have `.+` as its All value",
    );
    out
}

fn template_job(dash: &Json) -> Vec<String> {
    template_label_variable(dash, "job")
}

fn template_instance(dash: &Json) -> Vec<String> {
    template_label_variable(dash, "instance")
}

fn panel_datasource(dash: &Json) -> Vec<String> {
    let mut out = Vec::new();
    for p in panels(dash) {
        if !is_datasource_variable(&p["datasource"]) {
            out.push(format!(
                "panel {:?}: datasource {} is not the $datasource variable",
                title(p),
                p["datasource"]
            ));
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if !t["datasource"].is_null() && !is_datasource_variable(&t["datasource"]) {
                out.push(format!(
                    "panel {:?}: target {} uses datasource {}",
                    title(p),
                    t["refId"],
                    t["datasource"]
                ));
            }
        }
    }
    out
}

/// Grafana's unit ids (packages/grafana-data/src/valueFormats/categories.ts), the categories a
/// dashboard about counts, bytes, rates and times draws from.
const UNITS: &[&str] = &[
    // Misc
    "none",
    "string",
    "short",
    "percent",
    "percentunit",
    "humidity",
    "dB",
    "hex0x",
    "hex",
    "sci",
    "locale",
    "pixel",
    // Data
    "bytes",
    "decbytes",
    "bits",
    "decbits",
    "kbytes",
    "deckbytes",
    "mbytes",
    "decmbytes",
    "gbytes",
    "decgbytes",
    "tbytes",
    "dectbytes",
    "pbytes",
    "decpbytes",
    // Data rate
    "pps",
    "binBps",
    "Bps",
    "binbps",
    "bps",
    "KiBs",
    "Kibits",
    "KBs",
    "Kbits",
    "MiBs",
    "Mibits",
    "MBs",
    "Mbits",
    "GiBs",
    "Gibits",
    "GBs",
    "Gbits",
    // Date & time
    "dateTimeAsIso",
    "dateTimeAsIsoNoDateIfToday",
    "dateTimeAsUS",
    "dateTimeAsUSNoDateIfToday",
    "dateTimeAsLocal",
    "dateTimeAsLocalNoDateIfToday",
    "dateTimeAsSystem",
    "dateTimeFromNow",
    // Time
    "hertz",
    "ns",
    "µs",
    "ms",
    "s",
    "m",
    "h",
    "d",
    "dtdurationms",
    "dtdurations",
    "dthms",
    "dtdhms",
    "timeticks",
    "clockms",
    "clocks",
    // Throughput
    "cps",
    "ops",
    "reqps",
    "rps",
    "wps",
    "iops",
    "cpm",
    "opm",
    "rpm",
    "wpm",
    // Boolean
    "bool",
    "bool_yes_no",
    "bool_on_off",
];

fn panel_units(dash: &Json) -> Vec<String> {
    let mut out = Vec::new();
    for p in panels(dash) {
        let kind = p["type"].as_str().unwrap_or_default();
        if ![
            "stat",
            "singlestat",
            "graph",
            "table",
            "timeseries",
            "gauge",
        ]
        .contains(&kind)
        {
            continue;
        }
        let defaults = &p["fieldConfig"]["defaults"];
        // The documented exemptions: value mappings, or a stat showing non-numeric fields.
        let mapped = defaults["mappings"]
            .as_array()
            .is_some_and(|m| !m.is_empty());
        let fields = p["options"]["reduceOptions"]["fields"]
            .as_str()
            .unwrap_or_default();
        if mapped || (kind == "stat" && !fields.is_empty()) {
            continue;
        }
        let mut units: Vec<Option<&str>> = vec![defaults["unit"].as_str()];
        for o in p["fieldConfig"]["overrides"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for prop in o["properties"].as_array().into_iter().flatten() {
                if prop["id"] == "unit" {
                    units.push(prop["value"].as_str());
                }
            }
        }
        for unit in units {
            match unit {
                Some(u) if UNITS.contains(&u) => {}
                Some(u) => out.push(format!("panel {:?}: unknown unit {u:?}", title(p))),
                None => out.push(format!("panel {:?}: no unit", title(p))),
            }
        }
    }
    out
}

fn panel_title_description(dash: &Json) -> Vec<String> {
    let mut out = Vec::new();
    for p in panels(dash) {
        let blank = |k: &str| p[k].as_str().unwrap_or_default().trim().is_empty();
        if blank("title") {
            out.push(format!("a {} panel without a title", p["type"]));
        }
        if blank("description") {
            out.push(format!("panel {:?}: no description", title(p)));
        }
    }
    out
}

const RATES: &[&str] = &["rate", "irate", "increase"];

fn target_rate_interval(dash: &Json) -> Vec<String> {
    let mut out = Vec::new();
    for (panel, r, expr) in targets(dash) {
        let (_, ranges) = analyze(&expr);
        for range in ranges {
            let Some(call) = range.call.filter(|c| RATES.contains(&c.as_str())) else {
                continue;
            };
            let window = range.range.split(':').next().unwrap_or_default().trim();
            if !is_variable(window, "__rate_interval") {
                out.push(format!(
                    "panel {panel:?} target {r}: {call}() over [{}], not [$__rate_interval]: {expr}",
                    range.range
                ));
            }
        }
    }
    out
}

/// target-job and target-instance: every selector matches `label=~"$label"`.
fn target_matcher(dash: &Json, label: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (panel, r, expr) in targets(dash) {
        let (selectors, _) = analyze(&expr);
        for sel in selectors {
            let ok = sel
                .matchers
                .iter()
                .any(|(l, op, v)| l == label && op == "=~" && is_variable(v, label));
            if !ok {
                out.push(format!(
                    "panel {panel:?} target {r}: {} has no {label}=~\"${label}\" matcher: {expr}",
                    sel.name.as_deref().unwrap_or("a selector")
                ));
            }
        }
    }
    out
}

fn target_job(dash: &Json) -> Vec<String> {
    target_matcher(dash, "job")
}

fn target_instance(dash: &Json) -> Vec<String> {
    target_matcher(dash, "instance")
}

fn target_counter_agg(dash: &Json) -> Vec<String> {
    let mut out = Vec::new();
    for (panel, r, expr) in targets(dash) {
        let (selectors, _) = analyze(&expr);
        for sel in selectors {
            let Some(name) = sel.name.as_deref().filter(|n| n.ends_with("_total")) else {
                continue;
            };
            let rated =
                sel.range.is_some() && sel.call.as_deref().is_some_and(|c| RATES.contains(&c));
            if !rated {
                out.push(format!(
                    "panel {panel:?} target {r}: counter {name} is not read through rate, irate or increase: {expr}"
                ));
            }
        }
    }
    out
}

/// `(rule, finding)` for every rule that finds something in `dash`.
fn lint(dash: &Json) -> Vec<(&'static str, String)> {
    RULES
        .iter()
        .flat_map(|(name, rule)| rule(dash).into_iter().map(move |f| (*name, f)))
        .collect()
}

// ------------------------------------------------------------------------------- the shipped dashboards

fn shipped() -> Vec<(PathBuf, Json)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dashboards/") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read the dashboard");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            out.push((path, json));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn shipped_dashboards_pass_every_rule() {
    let dashboards = shipped();
    assert!(!dashboards.is_empty(), "no dashboards/*.json");
    for (path, dash) in dashboards {
        // The rules must have something to look at.
        assert!(panels(&dash).len() >= 10, "{}", path.display());
        assert!(targets(&dash).len() >= 20, "{}", path.display());
        let findings = lint(&dash);
        assert!(
            findings.is_empty(),
            "{}:\n{}",
            path.display(),
            findings
                .iter()
                .map(|(rule, f)| format!("{rule}: {f}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The per-group panels of the shipped dashboard stay readable at 100k groups: every query of a
/// per-group series either aggregates the groups away, caps them with topk, or is a table.
#[test]
fn per_group_time_series_are_capped() {
    for (path, dash) in shipped() {
        for p in panels(&dash) {
            if p["type"] == "table" {
                continue;
            }
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_default();
                let (selectors, _) = analyze(expr);
                let per_group = selectors.iter().any(|s| {
                    s.name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("timattr_group_"))
                });
                let legend = t["legendFormat"].as_str().unwrap_or_default();
                if per_group && legend.contains("group_id") {
                    assert!(
                        expr.trim_start().starts_with("topk("),
                        "{}: panel {:?} plots one series per group: {expr}",
                        path.display(),
                        title(p)
                    );
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------- the rules can fail

/// A small dashboard every rule accepts; each test below breaks it in one way.
fn good() -> Json {
    let ds = json!({"type": "prometheus", "uid": "${datasource}"});
    let var = |name: &str| {
        json!({
            "name": name, "label": name, "type": "query", "datasource": ds,
            "query": format!("label_values(up, {name})"),
            "multi": true, "includeAll": true, "allValue": ".+",
        })
    };
    json!({
        "title": "t",
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
            var("job"),
            var("instance"),
        ]},
        "panels": [
            {"type": "row", "title": "r", "panels": []},
            {
                "type": "timeseries", "title": "Requests", "description": "Requests per second.",
                "datasource": ds,
                "fieldConfig": {"defaults": {"unit": "reqps"}, "overrides": []},
                "targets": [{
                    "refId": "A", "datasource": ds,
                    "expr": "sum by (job) (rate(x_requests_total{job=~\"$job\", instance=~\"${instance}\"}[$__rate_interval]))",
                }],
            },
            {
                "type": "stat", "title": "Up", "description": "Targets up.",
                "datasource": ds,
                "fieldConfig": {"defaults": {"unit": "none"}, "overrides": []},
                "targets": [{"refId": "A", "expr": "sum(up{job=~\"$job\",instance=~\"$instance\"}) or vector(0)"}],
            },
        ],
    })
}

/// The rules that find something in `dash`.
fn flagged(dash: &Json) -> Vec<&'static str> {
    let mut names: Vec<&str> = lint(dash).into_iter().map(|(rule, _)| rule).collect();
    names.dedup();
    names
}

/// `change` applied to [`good`] makes exactly `rule` find something.
fn breaks(rule: &str, change: impl FnOnce(&mut Json)) {
    let mut dash = good();
    change(&mut dash);
    assert_eq!(flagged(&dash), [rule], "{dash:#}");
}

fn set_expr(dash: &mut Json, panel: usize, expr: &str) {
    dash["panels"][panel]["targets"][0]["expr"] = expr.into();
}

#[test]
fn the_good_dashboard_passes_every_rule() {
    assert_eq!(lint(&good()), []);
}

#[test]
fn template_datasource_fails() {
    breaks("template-datasource", |d| {
        d["templating"]["list"].as_array_mut().unwrap().remove(0);
    });
    breaks("template-datasource", |d| {
        d["templating"]["list"][0]["name"] = "ds".into();
    });
    breaks("template-datasource", |d| {
        d["templating"]["list"][0]["label"] = "Source".into();
    });
    breaks("template-datasource", |d| {
        d["templating"]["list"][0]["query"] = "mysql".into();
    });
    breaks("template-datasource", |d| {
        let second = d["templating"]["list"][0].clone();
        d["templating"]["list"].as_array_mut().unwrap().push(second);
    });
}

#[test]
fn template_job_fails() {
    breaks("template-job", |d| {
        d["templating"]["list"].as_array_mut().unwrap().remove(1);
    });
    breaks("template-job", |d| {
        d["templating"]["list"][1]["allValue"] = ".*".into();
    });
    breaks("template-job", |d| {
        d["templating"]["list"][1]["multi"] = false.into();
    });
    breaks("template-job", |d| {
        d["templating"]["list"][1]["label"] = "Job".into();
    });
    breaks("template-job", |d| {
        d["templating"]["list"][1]["datasource"] = json!({"type": "prometheus", "uid": "P1"});
    });
    breaks("template-job", |d| {
        d["templating"]["list"][1]["type"] = "custom".into();
    });
    breaks("template-job", |d| {
        d["templating"]["list"][1]["query"] = "timattr,other".into();
    });
}

#[test]
fn template_instance_fails() {
    breaks("template-instance", |d| {
        d["templating"]["list"].as_array_mut().unwrap().remove(2);
    });
    breaks("template-instance", |d| {
        d["templating"]["list"][2]["allValue"] = serde_json::Value::Null;
    });
    breaks("template-instance", |d| {
        d["templating"]["list"][2]["includeAll"] = false.into();
    });
    breaks("template-instance", |d| {
        d["templating"]["list"][2]["query"] = "label_values(up, job)".into();
    });
}

#[test]
fn panel_datasource_fails() {
    breaks("panel-datasource", |d| {
        d["panels"][1]["datasource"] = json!({"type": "prometheus", "uid": "P8E80F9AEF21F6940"});
    });
    breaks("panel-datasource", |d| {
        d["panels"][2]["datasource"] = serde_json::Value::Null;
    });
    breaks("panel-datasource", |d| {
        d["panels"][1]["targets"][0]["datasource"] = "Prometheus".into();
    });
    // Panels nested in a collapsed row count too.
    breaks("panel-datasource", |d| {
        let mut nested = d["panels"][2].clone();
        nested["datasource"] = "Prometheus".into();
        d["panels"][0]["panels"] = json!([nested]);
    });
}

#[test]
fn panel_units_fails() {
    breaks("panel-units", |d| {
        d["panels"][1]["fieldConfig"]["defaults"]
            .as_object_mut()
            .unwrap()
            .remove("unit");
    });
    breaks("panel-units", |d| {
        d["panels"][1]["fieldConfig"]["defaults"]["unit"] = "requests".into();
    });
    breaks("panel-units", |d| {
        d["panels"][2]["fieldConfig"]["overrides"] = json!([{
            "matcher": {"id": "byName", "options": "Value"},
            "properties": [{"id": "unit", "value": "seconds"}],
        }]);
    });
    // The documented exemption: value mappings.
    let mut dash = good();
    dash["panels"][2]["fieldConfig"]["defaults"] = json!({"mappings": [
        {"type": "value", "options": {"0": {"text": "down"}}}
    ]});
    assert_eq!(flagged(&dash), Vec::<&str>::new());
}

#[test]
fn panel_title_description_fails() {
    breaks("panel-title-description", |d| {
        d["panels"][1]
            .as_object_mut()
            .unwrap()
            .remove("description");
    });
    breaks("panel-title-description", |d| {
        d["panels"][2]["description"] = "  ".into();
    });
    breaks("panel-title-description", |d| {
        d["panels"][2]["title"] = "".into();
    });
}

#[test]
fn target_rate_interval_fails() {
    let m = r#"{job=~"$job",instance=~"$instance"}"#;
    for expr in [
        format!("rate(x_requests_total{m}[5m])"),
        format!("sum(increase(x_requests_total{m}[1h]))"),
        format!("irate(x_requests_total{m}[$__interval])"),
        format!(
            "max_over_time(sum(rate(x_requests_total{m}[$__rate_interval]))[5m:1m]) + rate(sum(up{m})[5m:1m])"
        ),
    ] {
        breaks("target-rate-interval", |d| set_expr(d, 1, &expr));
    }
    // Ranges of other functions are not its business.
    let mut dash = good();
    set_expr(&mut dash, 2, &format!("max_over_time(up{m}[1h])"));
    assert_eq!(flagged(&dash), Vec::<&str>::new());
}

#[test]
fn target_job_fails() {
    for expr in [
        r#"sum(up{instance=~"$instance"})"#,
        r#"sum(up{job="timattr",instance=~"$instance"})"#,
        r#"sum(up{job=~"timattr",instance=~"$instance"})"#,
        r#"sum(up{job=~"$job",instance=~"$instance"}) / count(up{instance=~"$instance"})"#,
        r#"timattr:up{instance=~"$instance"}"#,
    ] {
        breaks("target-job", |d| set_expr(d, 2, expr));
    }
}

#[test]
fn target_instance_fails() {
    for expr in [
        r#"sum(up{job=~"$job"})"#,
        r#"sum(up{job=~"$job",instance!~"$instance"})"#,
        r#"sum by (instance) (up{job=~"$job",instance=~"$instance"}) or on (instance) up{job=~"$job"}"#,
    ] {
        breaks("target-instance", |d| set_expr(d, 2, expr));
    }
}

#[test]
fn target_counter_agg_fails() {
    let m = r#"{job=~"$job",instance=~"$instance"}"#;
    for expr in [
        format!("x_requests_total{m}"),
        format!("sum(x_requests_total{m})"),
        format!("max_over_time(x_requests_total{m}[$__rate_interval])"),
        format!("rate(x_requests_total{m}[$__rate_interval]) / x_errors_total{m}"),
    ] {
        breaks("target-counter-agg", |d| set_expr(d, 1, &expr));
    }
}

#[test]
fn the_promql_reader_finds_selectors_and_ranges() {
    let (sel, ranges) = analyze(
        r#"sum by (job, instance) (rate(a_total{job=~"$job", x="by (y)"}[$__rate_interval]))
           or on (instance) label_replace(0 * count by (instance) (b{instance=~"${instance}"}), "reason", "none", "", "")
           / ignoring (le) max_over_time((c > 0)[1h:1m]) offset 5m
           + topk(10, {__name__="d"}) > bool 1e-3"#,
    );
    let names: Vec<Option<&str>> = sel.iter().map(|s| s.name.as_deref()).collect();
    assert_eq!(names, [Some("a_total"), Some("b"), Some("c"), Some("d")]);
    assert_eq!(sel[0].call.as_deref(), Some("rate"));
    assert_eq!(sel[0].range.as_deref(), Some("$__rate_interval"));
    assert_eq!(
        sel[0].matchers[1],
        ("x".into(), "=".into(), "by (y)".into())
    );
    assert_eq!(sel[1].call.as_deref(), Some("count"));
    assert_eq!(sel[1].matchers[0].2, "${instance}");
    assert_eq!(sel[2].call, None);
    assert_eq!(sel[3].call.as_deref(), Some("topk"));
    assert_eq!(
        ranges,
        [
            RangeUse {
                range: "$__rate_interval".into(),
                call: Some("rate".into())
            },
            RangeUse {
                range: "1h:1m".into(),
                call: Some("max_over_time".into())
            },
        ]
    );
}

// ------------------------------------------------------------------------------- what the panels show

fn shipped_dashboard() -> Json {
    shipped()
        .into_iter()
        .find(|(p, _)| p.ends_with("timattr.json"))
        .expect("dashboards/timattr.json")
        .1
}

/// `timattr_group_last_change_timestamp_seconds` is 0 until a group's first change: every panel
/// showing it maps 0 to "never" rather than rendering the epoch (1970) as a date.
#[test]
fn a_group_that_never_changed_shows_never() {
    let dash = shipped_dashboard();
    let mut seen = 0;
    for p in panels(&dash) {
        let shows = p["targets"].as_array().into_iter().flatten().any(|t| {
            t["expr"]
                .as_str()
                .is_some_and(|e| e.contains("timattr_group_last_change_timestamp_seconds"))
        });
        if !shows {
            continue;
        }
        seen += 1;
        let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
        assert!(
            unit.starts_with("dateTime"),
            "panel {:?}: unit {unit}",
            title(p)
        );
        let never = p["fieldConfig"]["defaults"]["mappings"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["type"] == "value" && m["options"]["0"]["text"] == "never");
        assert!(never, "panel {:?}: 0 is not mapped to \"never\"", title(p));
    }
    assert!(seen >= 2, "the last change is shown by {seen} panels");
}

/// The unhealthy table's two queries, evaluated by `promtool test rules`: a deleted group whose
/// series went (as a discovered group's do when it leaves the list) stays listed with its code
/// and its last success (the onset) for the 1 h hold window, then goes; a group that recovered
/// is not listed; a group that never answered successfully is listed without an onset.
#[test]
fn the_unhealthy_table_keeps_a_vanished_group_for_the_hold_window() {
    let dash = shipped_dashboard();
    let table = panels(&dash)
        .into_iter()
        .find(|p| p["title"] == "Unhealthy groups, since when")
        .expect("the unhealthy table");
    let expr = |r: &str| {
        let t = table["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .find(|t| t["refId"] == r)
            .unwrap_or_else(|| panic!("no target {r}"));
        t["expr"]
            .as_str()
            .expect("expr")
            .replace("$job", ".+")
            .replace("$instance", ".+")
            .replace("$sdkappid", ".*")
            .replace("$group_id", ".*")
    };
    let series = |name: &str, group: &str, values: &str| {
        json!({
            "series": format!(r#"{name}{{job="timattr",instance="a:9877",sdkappid="1",group_id="{group}"}}"#),
            "values": values,
        })
    };
    let labels = |group: &str| {
        format!(r#"{{job="timattr",instance="a:9877",sdkappid="1",group_id="{group}"}}"#)
    };
    let input = vec![
        // Healthy at 0-2m, deleted at 3m, its series gone from 5m.
        series(
            "timattr_group_error_code",
            "gone",
            "0 0 0 10010 10010 stale",
        ),
        series(
            "timattr_group_last_success_timestamp_seconds",
            "gone",
            "0 60 120 stale",
        ),
        // Unreadable, then fine again.
        series("timattr_group_error_code", "recovered", "10007 10007 0x80"),
        series(
            "timattr_group_last_success_timestamp_seconds",
            "recovered",
            "_ _ 120+60x80",
        ),
        // An invalid ID from the start: never a success.
        series("timattr_group_error_code", "invalid", "10015x80"),
    ];
    let sample = |group: &str, value: f64| json!({"labels": labels(group), "value": value});
    let check = |at: &str, r: &str, samples: Vec<Json>| {
        // `* 1` drops the metric name, which last_over_time keeps in Prometheus 2 only.
        json!({"expr": format!("({}) * 1", expr(r)), "eval_time": at, "exp_samples": samples})
    };
    let tests = json!({
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": input,
            "promql_expr_test": [
                check("30m", "A", vec![sample("gone", 10010.0), sample("invalid", 10015.0)]),
                check("30m", "B", vec![sample("gone", 120_000.0)]),
                check("70m", "A", vec![sample("invalid", 10015.0)]),
                check("70m", "B", vec![]),
            ],
        }],
    });
    let dir = tempfile::tempdir().expect("a temporary directory");
    // JSON is YAML: promtool reads it as a test file.
    std::fs::write(dir.path().join("unhealthy_test.yml"), tests.to_string()).expect("write");
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let out = std::process::Command::new(&promtool)
        .args(["test", "rules", "unhealthy_test.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {promtool} ({e}): scripts/install-test-deps.sh"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("SUCCESS"), "{text}");
}
