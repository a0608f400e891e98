//! The config file: every validation rule with its exact message, warnings, secrets (and that
//! they never print), durations in their places, the fixtures in tests/data/config and the shipped example.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use timattr_exporter::config::{self, ConfigError, Loaded, SecretSource, check_endpoint};
use timattr_exporter::metrics::ValueHashes;
use timattr_exporter::region::Region;

/// A key distinctive enough that any leak shows.
const KEY: &str = "S3CRETKEY-5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

fn env(name: &str) -> Option<String> {
    match name {
        "TIM_SECRET_KEY" => Some(format!("{KEY}\n")),
        "TIM_SECRET_KEY_EU" => Some(format!("  {KEY}\r\n")),
        "TIM_EMPTY" => Some(String::new()),
        "TIM_BLANK" => Some(" \n\t".into()),
        _ => None,
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/config")
}

fn parse(yaml: &str) -> Result<Loaded, ConfigError> {
    config::parse(yaml, &env, &fixtures())
}

/// The app every inline case starts from, as (key, YAML value) lines.
const BASE_APP: &[(&str, &str)] = &[
    ("sdkappid", "1400000000"),
    ("region", "singapore"),
    ("identifier", "administrator"),
    ("secret_key", KEY),
    ("groups", "[\"@TGS#aC5SZEAEF\"]"),
];

/// A config with one app: `BASE_APP` with `changes` applied (`Some` sets or adds a key, `None`
/// removes it), after the `top` lines.
fn one_app(top: &str, changes: &[(&str, Option<&str>)]) -> String {
    let mut fields: Vec<(String, String)> = BASE_APP
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (key, value) in changes {
        match (fields.iter().position(|(k, _)| k == key), value) {
            (Some(i), Some(v)) => fields[i].1 = v.to_string(),
            (Some(i), None) => {
                fields.remove(i);
            }
            (None, Some(v)) => fields.push((key.to_string(), v.to_string())),
            (None, None) => {}
        }
    }
    let mut yaml = String::from(top);
    yaml.push_str("apps:\n");
    for (i, (k, v)) in fields.iter().enumerate() {
        let lead = if i == 0 { "  - " } else { "    " };
        yaml.push_str(&format!("{lead}{k}: {v}\n"));
    }
    yaml
}

fn errors(yaml: &str) -> String {
    match parse(yaml) {
        Ok(loaded) => panic!("expected errors, got {loaded:?}\nfor:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

/// The error's Display and Debug text together: what a secret must appear in neither of.
fn error_text(yaml: &str) -> String {
    match parse(yaml) {
        Ok(loaded) => panic!("expected errors, got {loaded:?}\nfor:\n{yaml}"),
        Err(e) => format!("{e} {e:?}"),
    }
}

fn warnings(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Ok(loaded) => loaded.warnings,
        Err(e) => panic!("expected a valid config, got:\n{e}\nfor:\n{yaml}"),
    }
}

/// (name, top-level lines, changes to the base app, the exact error text).
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, Option<&'static str>)],
    &'static str,
);

const ERROR_CASES: &[Case] = &[
    // Top level.
    (
        "unknown top-level key, with a suggestion",
        "pol_interval: 1m\n",
        &[],
        "pol_interval: unknown key; did you mean poll_interval? allowed here: poll_interval, \
         state_file, value_hashes, exclude_metrics, apps",
    ),
    (
        "unknown top-level key, nothing close",
        "listen: \":9877\"\n",
        &[],
        "listen: unknown key; allowed here: poll_interval, state_file, value_hashes, \
         exclude_metrics, apps",
    ),
    (
        "global poll_interval too short",
        "poll_interval: 500ms\n",
        &[],
        "poll_interval: must be at least 1s, got 500ms",
    ),
    (
        "global poll_interval without unit",
        "poll_interval: 60\n",
        &[],
        "poll_interval: must be a duration with a unit, like 60s or 1m30s, not a bare number",
    ),
    (
        "global poll_interval in the wrong format",
        "poll_interval: 1m30\n",
        &[],
        "poll_interval: invalid duration \"1m30\": missing unit after 30, like 30s",
    ),
    (
        // The one duration parser's rule (Prometheus'): units largest first, each once.
        "global poll_interval with units out of order",
        "poll_interval: 1m1h\n",
        &[],
        "poll_interval: invalid duration \"1m1h\": units must go from largest to smallest, each \
         used once, like 1h30m",
    ),
    (
        "global poll_interval without value",
        "poll_interval:\n",
        &[],
        "poll_interval: must be a duration like 60s, not nothing",
    ),
    (
        "bad value_hashes",
        "value_hashes: perkey\n",
        &[],
        "value_hashes: must be one of per_key, per_group, off",
    ),
    (
        "empty state_file",
        "state_file: \"\"\n",
        &[],
        "state_file: must not be empty",
    ),
    // sdkappid.
    (
        "missing sdkappid",
        "",
        &[("sdkappid", None)],
        "apps[0]: missing sdkappid",
    ),
    (
        "zero sdkappid",
        "",
        &[("sdkappid", Some("0"))],
        "apps[0].sdkappid: must be a positive integer, like 1400000000",
    ),
    (
        "negative sdkappid",
        "",
        &[("sdkappid", Some("-1400000000"))],
        "apps[0].sdkappid: must be a positive integer, like 1400000000",
    ),
    (
        "string sdkappid",
        "",
        &[("sdkappid", Some("\"1400000000\""))],
        "apps[0].sdkappid: must be a positive integer, like 1400000000",
    ),
    // region / endpoint.
    (
        "neither region nor endpoint",
        "",
        &[("region", None)],
        "apps[0]: set exactly one of region, endpoint: neither is set",
    ),
    (
        "both region and endpoint",
        "",
        &[("endpoint", Some("https://adminapisgp.im.qcloud.com"))],
        "apps[0]: set exactly one of region, endpoint, not both",
    ),
    (
        "unknown region lists the eight",
        "",
        &[("region", Some("Singapore"))],
        "apps[0].region: unknown region \"Singapore\": one of china, singapore, seoul, frankfurt, \
         silicon_valley, jakarta, tokyo, mumbai",
    ),
    (
        "plain http to a remote host",
        "",
        &[
            ("region", None),
            ("endpoint", Some("http://tim-proxy.internal:8080")),
        ],
        "apps[0].endpoint: plain http is allowed only to a loopback host (127.0.0.0/8, ::1, \
         localhost), because the UserSig travels in the query string; use https, or set \
         allow_insecure_http: true",
    ),
    (
        "endpoint with a query",
        "",
        &[
            ("region", None),
            ("endpoint", Some("https://proxy.example/?a=b")),
        ],
        "apps[0].endpoint: must not have a query string: the exporter sets sdkappid, identifier, \
         usersig, random and contenttype itself",
    ),
    (
        "endpoint with a fragment",
        "",
        &[
            ("region", None),
            ("endpoint", Some("https://proxy.example/#x")),
        ],
        "apps[0].endpoint: must not have a fragment (#...)",
    ),
    (
        "endpoint with credentials, not echoed",
        "",
        &[
            ("region", None),
            ("endpoint", Some("https://user:hunter2@proxy.example/")),
        ],
        "apps[0].endpoint: must not contain a user name or password: URLs are logged",
    ),
    (
        "relative endpoint",
        "",
        &[("region", None), ("endpoint", Some("/v4"))],
        "apps[0].endpoint: not an absolute URL (relative URL without a base); write it like \
         https://adminapisgp.im.qcloud.com",
    ),
    (
        "endpoint without scheme",
        "",
        &[
            ("region", None),
            ("endpoint", Some("adminapisgp.im.qcloud.com:443")),
        ],
        "apps[0].endpoint: scheme \"adminapisgp.im.qcloud.com\" is not supported: use https (or \
         http to a loopback host)",
    ),
    (
        "ftp endpoint",
        "",
        &[("region", None), ("endpoint", Some("ftp://proxy.example/"))],
        "apps[0].endpoint: scheme \"ftp\" is not supported: use https (or http to a loopback host)",
    ),
    (
        "allow_insecure_http not a boolean",
        "",
        &[("allow_insecure_http", Some("\"yes\""))],
        "apps[0].allow_insecure_http: must be true or false, not a string",
    ),
    // identifier.
    (
        "missing identifier",
        "",
        &[("identifier", None)],
        "apps[0]: missing identifier (an app admin account, like administrator)",
    ),
    (
        "empty identifier",
        "",
        &[("identifier", Some("\"\""))],
        "apps[0].identifier: must not be empty",
    ),
    // Secrets.
    (
        "no secret",
        "",
        &[("secret_key", None)],
        "apps[0]: set exactly one of secret_key_file, secret_key_env, secret_key: none is set",
    ),
    (
        "two secrets",
        "",
        &[("secret_key_env", Some("TIM_SECRET_KEY"))],
        "apps[0]: set exactly one of secret_key_file, secret_key_env, secret_key, not \
         secret_key_env and secret_key",
    ),
    (
        "three secrets",
        "",
        &[
            ("secret_key_env", Some("TIM_SECRET_KEY")),
            ("secret_key_file", Some("key")),
        ],
        "apps[0]: set exactly one of secret_key_file, secret_key_env, secret_key, not \
         secret_key_file and secret_key_env and secret_key",
    ),
    (
        "unset environment variable",
        "",
        &[("secret_key", None), ("secret_key_env", Some("TIM_UNSET"))],
        "apps[0].secret_key_env: the environment variable it names is not set",
    ),
    (
        "empty environment variable",
        "",
        &[("secret_key", None), ("secret_key_env", Some("TIM_EMPTY"))],
        "apps[0].secret_key_env: the environment variable it names is empty",
    ),
    (
        "blank environment variable",
        "",
        &[("secret_key", None), ("secret_key_env", Some("TIM_BLANK"))],
        "apps[0].secret_key_env: the environment variable it names is empty",
    ),
    (
        "invalid environment variable name",
        "",
        &[("secret_key", None), ("secret_key_env", Some("\"A=B\""))],
        "apps[0].secret_key_env: is not a valid environment variable name",
    ),
    (
        "empty inline key",
        "",
        &[("secret_key", Some("\"  \""))],
        "apps[0].secret_key: must not be empty",
    ),
    (
        "numeric inline key, not echoed",
        "",
        &[("secret_key", Some("1234567890123"))],
        "apps[0].secret_key: must be a string, not a number",
    ),
    (
        "empty secret_key_file",
        "",
        &[("secret_key", None), ("secret_key_file", Some("\"\""))],
        "apps[0].secret_key_file: must not be empty",
    ),
    // usersig_ttl.
    (
        "usersig_ttl too short",
        "",
        &[("usersig_ttl", Some("1m"))],
        "apps[0].usersig_ttl: must be at least 5m (the UserSig is renewed at 80% of its life), \
         got 1m",
    ),
    (
        "usersig_ttl too long",
        "",
        &[("usersig_ttl", Some("1y"))],
        "apps[0].usersig_ttl: must be at most 180d (what the official libraries issue; the \
         exporter renews it anyway), got 1y",
    ),
    (
        "usersig_ttl not whole seconds",
        "",
        &[("usersig_ttl", Some("10m500ms"))],
        "apps[0].usersig_ttl: must be whole seconds (it becomes TLS.expire), got 10m500ms",
    ),
    // rate_limit.
    (
        "zero rate_limit",
        "",
        &[("rate_limit", Some("0"))],
        "apps[0].rate_limit: must be at least 0.001 requests per second",
    ),
    (
        "negative rate_limit",
        "",
        &[("rate_limit", Some("-5"))],
        "apps[0].rate_limit: must be at least 0.001 requests per second",
    ),
    (
        "infinite rate_limit",
        "",
        &[("rate_limit", Some(".inf"))],
        "apps[0].rate_limit: must be at least 0.001 requests per second",
    ),
    (
        "vanishing rate_limit",
        "",
        &[("rate_limit", Some("1e-300"))],
        "apps[0].rate_limit: must be at least 0.001 requests per second",
    ),
    (
        "rate_limit as text",
        "",
        &[("rate_limit", Some("100/s"))],
        "apps[0].rate_limit: must be a number of requests per second, not a string",
    ),
    // max_concurrency.
    (
        "zero max_concurrency",
        "",
        &[("max_concurrency", Some("0"))],
        "apps[0].max_concurrency: must be an integer from 1 to 1024",
    ),
    (
        "max_concurrency too high",
        "",
        &[("max_concurrency", Some("1025"))],
        "apps[0].max_concurrency: must be an integer from 1 to 1024",
    ),
    (
        "fractional max_concurrency",
        "",
        &[("max_concurrency", Some("1.5"))],
        "apps[0].max_concurrency: must be an integer from 1 to 1024",
    ),
    // timeout.
    (
        "zero timeout",
        "",
        &[("timeout", Some("0s"))],
        "apps[0].timeout: must be greater than 0",
    ),
    (
        "negative timeout",
        "",
        &[("timeout", Some("-5s"))],
        "apps[0].timeout: invalid duration \"-5s\": cannot be negative",
    ),
    // groups.
    (
        "neither groups nor discover",
        "",
        &[("groups", None)],
        "apps[0]: no groups to poll: list them under groups, or set discover to poll every group \
         of the app",
    ),
    (
        "empty groups without discover",
        "",
        &[("groups", Some("[]"))],
        "apps[0]: no groups to poll: list them under groups, or set discover to poll every group \
         of the app",
    ),
    (
        "groups not a list",
        "",
        &[("groups", Some("\"@TGS#aC5SZEAEF\""))],
        "apps[0].groups: must be a list of group IDs, not a string",
    ),
    (
        "empty group ID",
        "",
        &[("groups", Some("[\"\"]"))],
        "apps[0].groups[0]: empty group ID",
    ),
    (
        "group ID over 48 bytes",
        "",
        &[(
            "groups",
            Some("[\"@TGS#0123456789012345678901234567890123456789abcd\"]"),
        )],
        "apps[0].groups[0]: group ID \"@TGS#0123456789012345678901234567890123456789abcd\" is 49 \
         bytes; Tencent allows at most 48",
    ),
    (
        "duplicate group names both places",
        "",
        &[(
            "groups",
            Some("[\"@TGS#a\", \"@TGS#b\", {id: \"@TGS#a\", poll_interval: 5s}]"),
        )],
        "apps[0].groups[2]: duplicate group ID \"@TGS#a\" (also apps[0].groups[0])",
    ),
    (
        "numeric group ID",
        "",
        &[("groups", Some("[12345]"))],
        "apps[0].groups[0]: a group ID must be a string: quote numeric IDs, like \"12345\"",
    ),
    (
        "group entry without id",
        "",
        &[("groups", Some("[{poll_interval: 5s}]"))],
        "apps[0].groups[0]: missing id",
    ),
    (
        "group entry with unknown key",
        "",
        &[("groups", Some("[{id: \"@TGS#a\", interval: 5s}]"))],
        "apps[0].groups[0].interval: unknown key; allowed here: id, poll_interval, labels, \
         ignore_keys",
    ),
    (
        "group poll_interval too short",
        "",
        &[("groups", Some("[{id: \"@TGS#a\", poll_interval: 100ms}]"))],
        "apps[0].groups[0].poll_interval: must be at least 1s, got 100ms",
    ),
    (
        "group as a nested list",
        "",
        &[("groups", Some("[[\"@TGS#a\"]]"))],
        "apps[0].groups[0]: must be a group ID or {id, poll_interval}, not a list",
    ),
    // discover.
    (
        "discover without value",
        "",
        &[("groups", None), ("discover", Some(""))],
        "apps[0].discover: has no value: write `discover: {}` to poll every group of the app, or \
         remove it",
    ),
    (
        "unknown group type",
        "",
        &[("discover", Some("{group_types: [Public, public]}"))],
        "apps[0].discover.group_types[1]: unknown group type \"public\": one of Public, Private, \
         ChatRoom, AVChatRoom, BChatRoom, Community (Work and Meeting are accepted as Private and \
         ChatRoom)",
    ),
    (
        "duplicate group type through an alias",
        "",
        &[("discover", Some("{group_types: [Private, Work]}"))],
        "apps[0].discover.group_types[1]: duplicate group type Private (also \
         apps[0].discover.group_types[0])",
    ),
    (
        "refresh_interval too short",
        "",
        &[("discover", Some("{refresh_interval: 500ms}"))],
        "apps[0].discover.refresh_interval: must be at least 1s, got 500ms",
    ),
    (
        "unknown discover key",
        "",
        &[("discover", Some("{types: [Public]}"))],
        "apps[0].discover.types: unknown key; allowed here: group_types, refresh_interval",
    ),
    (
        "misspelt app key",
        "",
        &[("secrt_key_file", Some("/run/secrets/x"))],
        "apps[0].secrt_key_file: unknown key; did you mean secret_key_file? allowed here: \
         sdkappid, region, endpoint, allow_insecure_http, identifier, secret_key_file, \
         secret_key_env, secret_key, callback_token_file, callback_token_env, callback_token, usersig_ttl, \
         rate_limit, max_concurrency, timeout, tls_ca_file, tls_cert_file, tls_key_file, labels, ignore_keys, groups, \
         discover",
    ),
    // labels, ignore_keys, exclude_metrics.
    (
        "bad label names, every one at once",
        "",
        &[("labels", Some("{__x: a, 1a: b, a-b: c, ok: d}"))],
        "apps[0].labels: invalid label name \"__x\": names starting with __ are reserved for \
         Prometheus' own use\n\
         apps[0].labels: invalid label name \"1a\": a label name is ASCII letters, digits and \
         underscores, not starting with a digit ([a-zA-Z_][a-zA-Z0-9_]*)\n\
         apps[0].labels: invalid label name \"a-b\": a label name is ASCII letters, digits and \
         underscores, not starting with a digit ([a-zA-Z_][a-zA-Z0-9_]*)",
    ),
    (
        "bad label name of a group",
        "",
        &[(
            "groups",
            Some("[\"@TGS#a\", {id: \"@TGS#b\", labels: {page-on-change: \"true\"}}]"),
        )],
        "apps[0].groups[1].labels: invalid label name \"page-on-change\": a label name is ASCII \
         letters, digits and underscores, not starting with a digit ([a-zA-Z_][a-zA-Z0-9_]*)",
    ),
    (
        "a label name that is not a plain name is not echoed",
        "",
        &[("labels", Some("{\"team: rooms\": x}"))],
        "apps[0].labels: invalid label name (not shown: not a plain name): a label name is ASCII \
         letters, digits and underscores, not starting with a digit ([a-zA-Z_][a-zA-Z0-9_]*)",
    ),
    (
        "label value not a scalar",
        "",
        &[("labels", Some("{page_on_change: [true]}"))],
        "apps[0].labels.page_on_change: a label value must be a string (or a number, true or \
         false), not a list",
    ),
    (
        "labels not a mapping",
        "",
        &[("labels", Some("[team]"))],
        "apps[0].labels: must be a mapping of label names to values, like {team: rooms}, not a list",
    ),
    (
        "ignore_keys entry not a regular expression",
        "",
        &[("ignore_keys", Some("[heartbeat, \"cursor_(\"]"))],
        "apps[0].ignore_keys[1]: not a valid regular expression: unclosed group",
    ),
    (
        "ignore_keys of a group, bad",
        "",
        &[(
            "groups",
            Some("[{id: \"@TGS#a\", ignore_keys: [\"[z-a]\", 7]}]"),
        )],
        "apps[0].groups[0].ignore_keys[0]: not a valid regular expression: invalid character \
         class range, the start must be <= the end\n\
         apps[0].groups[0].ignore_keys[1]: must be a regular expression as a string, not a number",
    ),
    (
        "ignore_keys not a list",
        "",
        &[("ignore_keys", Some("heartbeat"))],
        "apps[0].ignore_keys: must be a list of regular expressions (full match) over attribute \
         keys, not a string",
    ),
    (
        "exclude_metrics entry not a regular expression",
        "exclude_metrics: [\"timattr_api_.*\", \"timattr_((\"]\n",
        &[],
        "exclude_metrics[1]: not a valid regular expression: unclosed group",
    ),
    (
        "exclude_metrics not a list",
        "exclude_metrics: timattr_api_.*\n",
        &[],
        "exclude_metrics: must be a list of regular expressions (full match) over metric family \
         names, not a string",
    ),
];

#[test]
fn each_rule_has_its_exact_message() {
    let mut failures = Vec::new();
    for (name, top, changes, want) in ERROR_CASES {
        let yaml = one_app(top, changes);
        let got = match parse(&yaml) {
            Ok(loaded) => format!("<valid, warnings {:?}>", loaded.warnings),
            Err(e) => e.to_string(),
        };
        if got != *want {
            failures.push(format!("{name}:\n  want: {want}\n  got:  {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn top_level_shape() {
    assert_eq!(
        errors(""),
        "config: the config is empty: it needs at least `apps`"
    );
    assert_eq!(
        errors("- a\n"),
        "config: the config must be a mapping of keys to values, not a list"
    );
    assert_eq!(
        errors("poll_interval: 1m\n"),
        "apps: missing: at least one app is required"
    );
    assert_eq!(errors("apps: []\n"), "apps: at least one app is required");
    assert_eq!(
        errors("apps: {sdkappid: 1}\n"),
        "apps: must be a list of apps, not a mapping"
    );
    assert_eq!(
        errors("apps: [\"1400000000\"]\n"),
        "apps[0]: must be a mapping of keys to values, not a string"
    );
}

#[test]
fn duplicate_sdkappid_names_both_apps() {
    let app = one_app("", &[]);
    let second = app.trim_start_matches("apps:\n");
    let yaml = format!("{app}{second}");
    assert_eq!(
        errors(&yaml),
        "apps[1].sdkappid: duplicate sdkappid 1400000000 (also apps[0])"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let yaml = "\
poll_interval: 0s
value_hashes: all
bogus: 1
apps:
  - sdkappid: 0
    region: mars
    identifier: administrator
    secret_key_env: TIM_UNSET
    rate_limit: 0
    timeout: 5
    groups:
      - \"@TGS#a\"
      - \"@TGS#a\"
      - id: \"\"
  - sdkappid: 1400000001
    endpoint: http://example.com
    identifier: administrator
    secret_key: x
";
    let want = "\
bogus: unknown key; allowed here: poll_interval, state_file, value_hashes, exclude_metrics, apps
poll_interval: must be at least 1s, got 0s
value_hashes: must be one of per_key, per_group, off
apps[0].sdkappid: must be a positive integer, like 1400000000
apps[0].region: unknown region \"mars\": one of china, singapore, seoul, frankfurt, silicon_valley, jakarta, tokyo, mumbai
apps[0].secret_key_env: the environment variable it names is not set
apps[0].rate_limit: must be at least 0.001 requests per second
apps[0].timeout: must be a duration with a unit, like 60s or 1m30s, not a bare number
apps[0].groups[1]: duplicate group ID \"@TGS#a\" (also apps[0].groups[0])
apps[0].groups[2].id: empty group ID
apps[1].endpoint: plain http is allowed only to a loopback host (127.0.0.0/8, ::1, localhost), because the UserSig travels in the query string; use https, or set allow_insecure_http: true
apps[1]: no groups to poll: list them under groups, or set discover to poll every group of the app";
    let err = parse(yaml).expect_err("the config is full of mistakes");
    assert_eq!(err.to_string(), want);
    assert_eq!(err.problems.len(), 12);
    assert_eq!(err.problems[8].path, "apps[0].groups[1]");
}

#[test]
fn unquoted_at_sign_gets_a_hint_with_the_line() {
    let yaml = "apps:\n  - sdkappid: 1\n    groups:\n      - \"@TGS#ok\"\n      - @TGS#aC5SZEAEF\n";
    let err = parse(yaml).expect_err("@ cannot start a plain scalar");
    assert_eq!(
        err.problems[0].to_string(),
        format!("apps[0].groups[1]: line 5: {AT_HINT}")
    );
    // In a flow list too.
    let err = parse("apps:\n  - groups: [\"@TGS#a\", @TGS#b]\n").expect_err("same in a flow list");
    assert_eq!(
        err.problems[0].to_string(),
        format!("apps[0].groups[1]: line 2: {AT_HINT}")
    );
    // When the rest is not YAML either, no place can be found: the line, then the other error.
    let err = parse("apps:\n  - groups: [@TGS#b]\n\tbad: 1\n").expect_err("a tab");
    assert_eq!(
        err.to_string(),
        format!(
            "line 2: {AT_HINT}\nline 3 column 1: found character that cannot start any token, while \
             scanning for the next token"
        )
    );
    // A key is not quoted for the reader, but the parser's error still gets the hint.
    assert_eq!(
        errors("@TGS#x: 1\napps: []\n"),
        format!("line 1: {AT_HINT}")
    );
}

/// The line scan reads what config files hold: apostrophes inside plain values, comments,
/// block scalars, values on the line after their key, flow lists over several lines.
#[test]
fn unquoted_values_are_found_where_config_files_put_them() {
    let yaml = "\
apps:
  - sdkappid: 1400000000
    region: singapore
    identifier: don't   # - @not-a-value, it's a comment
    secret_key:
      @sekrit-KEY-4e1f0c9d2b7a6e5f8c3d1b0a9e8f7c6d
    labels:
      note: |
        - @TGS#in-a-block-scalar \"open
    groups: [
      \"@TGS#a\",
      @TGS#b, {id: @TGS#c}]
";
    let err = parse(yaml).expect_err("three unquoted values");
    assert_eq!(
        err.to_string(),
        format!(
            "apps[0].secret_key: line 6: {AT_HINT}\n\
             apps[0].groups[1]: line 12: {AT_HINT}\n\
             apps[0].groups[2].id: line 12: {AT_HINT}"
        )
    );
}

/// The audit's file: an unquoted `@` ID as the 4th group (line 11), among other mistakes. The
/// syntax error used to hide them all and name only the line.
const UNQUOTED_AMONG_OTHER_MISTAKES: &str = "\
poll_interval: 5x
apps:
  - sdkappid: 1400000000
    region: singapore
    identifier: administrator
    secret_key_env: TIM_SECRET_KEY
    groups:
      - \"@TGS#first\"
      - id: \"@TGS#2J4SZEAEL\"
      - \"@TGS#third\"
      - @TGS#aC5SZEAEF      # the 4th group
    rate_limit: 0
";

const AT_HINT: &str =
    "group IDs and other values starting with @ must be quoted in YAML, like - \"@TGS#aC5SZEAEF\"";

#[test]
fn an_unquoted_id_is_named_by_its_place_with_every_other_error() {
    let err = parse(UNQUOTED_AMONG_OTHER_MISTAKES).expect_err("@ cannot start a plain scalar");
    let want = format!(
        "apps[0].groups[3]: line 11: {AT_HINT}
poll_interval: invalid duration \"5x\": unknown unit \"x\" (use ms, s, m, h, d, w, y)
apps[0].rate_limit: must be at least 0.001 requests per second"
    );
    assert_eq!(err.to_string(), want);
    assert_eq!(err.problems[0].path, "apps[0].groups[3]");
}

#[test]
fn two_unquoted_ids_give_two_problems() {
    let yaml = format!(
        "{UNQUOTED_AMONG_OTHER_MISTAKES}    \
         discover: {{group_types: [Castle]}}\n"
    )
    .replace(
        "    rate_limit: 0\n",
        "      - id: @TGS#1NVTZEAE4\n        poll_interval: 15s\n    rate_limit: 0\n",
    );
    let err = parse(&yaml).expect_err("two unquoted IDs");
    let at: Vec<String> = err
        .problems
        .iter()
        .filter(|p| p.message.contains("must be quoted"))
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        at,
        [
            format!("apps[0].groups[3]: line 11: {AT_HINT}"),
            format!("apps[0].groups[4].id: line 12: {AT_HINT}"),
        ],
        "{err}"
    );
    // The rest of the file is still checked, down to its last line.
    assert_eq!(err.problems.len(), 5, "{err}");
    assert!(
        err.to_string().contains("poll_interval: invalid duration"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("apps[0].discover.group_types[0]: unknown group type"),
        "{err}"
    );

    // In a flow list, several on one line; an unquoted copy of a quoted ID is named at its own
    // place, not at the first string equal to it.
    let yaml = one_app("", &[("groups", Some("[\"@TGS#a\", @TGS#a, @TGS#b]"))]);
    let err = parse(&yaml).expect_err("two unquoted IDs in a flow list");
    assert_eq!(
        err.to_string(),
        format!(
            "apps[0].groups[1]: line 6: {AT_HINT}\n\
             apps[0].groups[2]: line 6: {AT_HINT}\n\
             apps[0].groups[1]: duplicate group ID \"@TGS#a\" (also apps[0].groups[0])"
        )
    );
}

/// A quote left open swallows the lines after it up to the next quote, where the YAML scanner
/// then stumbles: the error must point at the open quote, not at a correctly quoted `@` ID.
#[test]
fn an_unclosed_quote_is_named_where_it_opens() {
    let open = "apps:\n  - sdkappid: 1400000000\n    region: singapore\n    identifier: \"admin\n    secret_key_env: TIM_SECRET_KEY\n";
    let want = "line 4 column 17: a quote (\") opened here is not closed on its line";
    for yaml in [format!("{open}    groups: [\"@TGS#x\"]\n"), open.to_owned()] {
        let text = errors(&yaml);
        assert_eq!(text, want, "for:\n{yaml}");
        assert!(!text.contains('@'), "{text}");
    }
    // The same with the secret key: named by its line, never shown.
    let yaml = "apps:\n  - sdkappid: 1400000000\n    region: singapore\n    secret_key: \"SUPERSECRET\n    identifier: admin\n    groups: [\"@TGS#x\"]\n";
    let text = error_text(yaml);
    assert!(text.starts_with(want), "{text}");
    assert!(
        !text.contains("SUPERSECRET") && !text.contains('@'),
        "{text}"
    );
}

/// A secret starting with `@`, unquoted: reported as needing quotes at its place, and never
/// shown, not even by another field it was pasted into.
#[test]
fn an_unquoted_secret_starting_with_at_is_not_echoed() {
    let secret = "@sekrit-KEY-4e1f0c9d2b7a6e5f8c3d1b0a9e8f7c6d";
    let yaml = one_app(
        "",
        &[("secret_key", Some(secret)), ("usersig_ttl", Some(secret))],
    );
    let err = parse(&yaml).expect_err("unquoted @ values");
    let text = error_text(&yaml);
    assert!(!text.contains("sekrit"), "{text}");
    assert_eq!(
        err.problems[..2],
        [
            config::Problem {
                path: "apps[0].secret_key".into(),
                message: format!("line 5: {AT_HINT}"),
            },
            config::Problem {
                path: "apps[0].usersig_ttl".into(),
                message: format!("line 7: {AT_HINT}"),
            },
        ],
        "{err}"
    );
    assert_eq!(err.problems.len(), 3, "{err}");
    assert!(
        err.problems[2]
            .to_string()
            .starts_with("apps[0].usersig_ttl: invalid duration \"<redacted>\""),
        "{err}"
    );
}

#[test]
fn other_syntax_errors_name_the_line() {
    let err = parse("apps:\n  - sdkappid: 1\n   region: x\n").expect_err("bad indentation");
    assert_eq!(err.problems.len(), 1);
    assert!(err.problems[0].path.starts_with("line 3"), "{err}");
    let err = parse("poll_interval: 1m\npoll_interval: 2m\napps: []\n").expect_err("duplicate");
    assert_eq!(
        err.to_string(),
        "line 1: duplicate key \"poll_interval\" in the mapping that starts here"
    );
}

#[test]
fn defaults_and_a_full_app() {
    let loaded = parse(&one_app("", &[])).expect("the base app is valid");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.poll_interval, config::DEFAULT_POLL_INTERVAL);
    assert_eq!(c.state_file, None);
    assert_eq!(c.value_hashes, ValueHashes::PerKey);
    let app = &c.apps[0];
    assert_eq!(app.sdkappid, 1400000000);
    assert_eq!(app.region, Some(Region::Singapore));
    assert_eq!(app.base_url.as_str(), "https://adminapisgp.im.qcloud.com/");
    assert_eq!(app.identifier, "administrator");
    assert_eq!(app.secret_key.expose(), KEY);
    assert_eq!(app.secret_source, SecretSource::Inline);
    assert_eq!(app.usersig_ttl, config::DEFAULT_USERSIG_TTL);
    assert_eq!(app.rate_limit, config::DEFAULT_RATE_LIMIT);
    assert_eq!(app.max_concurrency, config::DEFAULT_MAX_CONCURRENCY);
    assert_eq!(app.timeout, config::DEFAULT_TIMEOUT);
    assert!(!app.allow_insecure_http);
    assert_eq!(app.groups.len(), 1);
    assert_eq!(app.groups[0].id, "@TGS#aC5SZEAEF");
    assert_eq!(app.groups[0].poll_interval, Duration::from_secs(60));
    assert_eq!(app.discover, None);
}

#[test]
fn every_key_set() {
    let yaml = one_app(
        "poll_interval: 2m\nstate_file: state/state.json\nvalue_hashes: per_group\n",
        &[
            ("region", None),
            ("endpoint", Some("http://127.0.0.1:8080/tim")),
            ("usersig_ttl", Some("180d")),
            ("rate_limit", Some("0.5")),
            ("max_concurrency", Some("1024")),
            ("timeout", Some("10s")),
            ("allow_insecure_http", Some("false")),
            (
                "groups",
                Some("[\"@TGS#a\", {id: \"@TGS#b\", poll_interval: 15s}, {id: custom}]"),
            ),
            (
                "discover",
                Some("{group_types: [Public, Work, Meeting], refresh_interval: 1h}"),
            ),
        ],
    );
    let loaded = parse(&yaml).expect("valid");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.poll_interval, Duration::from_secs(120));
    assert_eq!(c.state_file, Some(fixtures().join("state/state.json")));
    assert_eq!(c.value_hashes, ValueHashes::PerGroup);
    let app = &c.apps[0];
    assert_eq!(app.region, None);
    assert_eq!(app.base_url.as_str(), "http://127.0.0.1:8080/tim/");
    assert_eq!(app.usersig_ttl, Duration::from_secs(180 * 86400));
    assert_eq!(app.rate_limit, 0.5);
    assert_eq!(app.max_concurrency, 1024);
    assert_eq!(app.timeout, Duration::from_secs(10));
    let groups: Vec<(&str, u64)> = app
        .groups
        .iter()
        .map(|g| (g.id.as_str(), g.poll_interval.as_secs()))
        .collect();
    assert_eq!(groups, [("@TGS#a", 120), ("@TGS#b", 15), ("custom", 120)]);
    let discover = app.discover.as_ref().expect("discover is set");
    assert_eq!(discover.group_types, ["Public", "Private", "ChatRoom"]);
    assert_eq!(discover.refresh_interval, Duration::from_secs(3600));
}

#[test]
fn value_hashes_spellings() {
    for (value, want) in [
        ("per_key", ValueHashes::PerKey),
        ("per_group", ValueHashes::PerGroup),
        ("off", ValueHashes::Off),
        ("\"off\"", ValueHashes::Off),
    ] {
        let yaml = one_app(&format!("value_hashes: {value}\n"), &[]);
        assert_eq!(
            parse(&yaml).expect("valid").config.value_hashes,
            want,
            "{value}"
        );
    }
    assert_eq!(
        errors(&one_app("value_hashes: false\n", &[])),
        "value_hashes: must be one of per_key, per_group, off"
    );
}

#[test]
fn discover_alone_and_its_defaults() {
    for groups in [None, Some("[]"), Some("")] {
        let yaml = one_app("", &[("groups", groups), ("discover", Some("{}"))]);
        let loaded = parse(&yaml).expect("discover without groups is valid");
        let app = &loaded.config.apps[0];
        assert!(app.groups.is_empty());
        let discover = app.discover.as_ref().expect("discover is set");
        assert!(discover.group_types.is_empty());
        assert_eq!(discover.refresh_interval, config::DEFAULT_DISCOVER_REFRESH);
    }
}

#[test]
fn discover_refresh_interval_may_be_as_short_as_1s() {
    for (value, secs) in [("1s", 1), ("5s", 5), ("30s", 30)] {
        let yaml = one_app(
            "",
            &[("discover", Some(&format!("{{refresh_interval: {value}}}")))],
        );
        let loaded = parse(&yaml).unwrap_or_else(|e| panic!("{value}: {e}"));
        let discover = loaded.config.apps[0].discover.as_ref().expect("discover");
        assert_eq!(
            discover.refresh_interval,
            Duration::from_secs(secs),
            "{value}"
        );
    }
}

#[test]
fn loopback_endpoints_may_be_http() {
    for (endpoint, base) in [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
        ("http://127.3.2.1/", "http://127.3.2.1/"),
        ("http://[::1]:9000/api", "http://[::1]:9000/api/"),
        ("http://localhost:1234/", "http://localhost:1234/"),
        (
            "https://tim-proxy.example/v/",
            "https://tim-proxy.example/v/",
        ),
    ] {
        let yaml = one_app("", &[("region", None), ("endpoint", Some(endpoint))]);
        let loaded = parse(&yaml).unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.config.apps[0].base_url.as_str(), base);
    }
}

#[test]
fn check_endpoint_directly() {
    let check = |s: &str, insecure| check_endpoint(&url::Url::parse(s).expect("a URL"), insecure);
    assert_eq!(check("https://a.example", false), Ok(()));
    assert_eq!(check("http://127.0.0.1", false), Ok(()));
    assert_eq!(check("http://a.example", true), Ok(()));
    assert!(check("http://a.example", false).is_err());
    assert!(check("http://128.0.0.1", false).is_err());
    assert!(check("http://[::2]", false).is_err());
    assert!(check("http://localhost.example", false).is_err());
    assert!(check("https://a.example/?q", true).is_err());
    assert!(check("mailto:a@b.example", true).is_err());
    assert!(check("unix:/run/sock", true).is_err());
}

#[test]
fn warnings_for_risky_settings() {
    assert_eq!(
        warnings(&one_app("", &[("rate_limit", Some("250"))])),
        [
            "apps[0].rate_limit: 250 requests/s is above the documented API limit of 200/s: make \
          sure the app's quota was raised, or expect rate-limit errors"
        ]
    );
    assert!(warnings(&one_app("", &[("rate_limit", Some("200"))])).is_empty());
    assert_eq!(
        warnings(&one_app("", &[("timeout", Some("3s"))])),
        [
            "apps[0].timeout: 3s is not longer than the 3s after which Tencent's backend times out: \
          slow answers will fail as client timeouts; 5s is a sane value"
        ]
    );
    assert!(warnings(&one_app("", &[("timeout", Some("3001ms"))])).is_empty());
    assert_eq!(
        warnings(&one_app(
            "",
            &[
                ("region", None),
                ("endpoint", Some("http://tim-proxy.internal:8080")),
                ("allow_insecure_http", Some("true")),
            ]
        )),
        [
            "apps[0].endpoint: plain http to tim-proxy.internal: the UserSig travels unencrypted \
          (allow_insecure_http is set)"
        ]
    );
    assert_eq!(
        warnings(&one_app("", &[("allow_insecure_http", Some("true"))])),
        ["apps[0].allow_insecure_http: has no effect with region: region endpoints are https"]
    );
}

#[cfg(unix)]
fn write_secret(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write the secret file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

#[cfg(unix)]
#[test]
fn secret_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let parse_in = |file: &str| {
        let yaml = one_app("", &[("secret_key", None), ("secret_key_file", Some(file))]);
        config::parse(&yaml, &env, dir.path())
    };
    let shown = dir.path().display().to_string();

    // Trimmed; a relative path resolves against the config's directory; 0600 draws no warning.
    write_secret(dir.path(), "key", format!("{KEY}\n").as_bytes(), 0o600);
    let loaded = parse_in("key").expect("valid");
    let app = &loaded.config.apps[0];
    assert_eq!(app.secret_key.expose(), KEY);
    assert_eq!(
        app.secret_source,
        SecretSource::File(dir.path().join("key"))
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    // Readable by others: a warning naming the file, not an error.
    let open = write_secret(dir.path(), "open", KEY.as_bytes(), 0o644);
    let loaded = parse_in(&open.display().to_string()).expect("valid");
    assert_eq!(
        loaded.warnings,
        [format!(
            "apps[0].secret_key_file: {shown}/open is readable by group or others (mode 0644); \
             chmod 600 it"
        )]
    );

    let expect_error = |file: &str, want: String| {
        let err = parse_in(file).expect_err("a bad secret file");
        assert_eq!(err.to_string(), want);
    };
    expect_error(
        "missing",
        "apps[0].secret_key_file: cannot read the file it names: No such file or directory (os \
         error 2)"
            .to_owned(),
    );
    write_secret(dir.path(), "empty", b" \n", 0o600);
    expect_error(
        "empty",
        "apps[0].secret_key_file: the file it names is empty".to_owned(),
    );
    write_secret(dir.path(), "big", &[b'a'; 5000], 0o600);
    expect_error(
        "big",
        "apps[0].secret_key_file: the file it names is larger than 4096 bytes: not a secret file"
            .to_owned(),
    );
    write_secret(dir.path(), "binary", &[0xff, 0xfe, b'a'], 0o600);
    expect_error(
        "binary",
        "apps[0].secret_key_file: the file it names is not UTF-8 text".to_owned(),
    );
    std::fs::create_dir(dir.path().join("subdir")).expect("mkdir");
    expect_error(
        "subdir",
        "apps[0].secret_key_file: the file it names is not a regular file".to_owned(),
    );
}

#[test]
fn secret_from_env_is_trimmed() {
    for var in ["TIM_SECRET_KEY", "TIM_SECRET_KEY_EU"] {
        let yaml = one_app("", &[("secret_key", None), ("secret_key_env", Some(var))]);
        let loaded = parse(&yaml).expect("valid");
        let app = &loaded.config.apps[0];
        assert_eq!(app.secret_key.expose(), KEY);
        assert_eq!(app.secret_source, SecretSource::Env(var.to_owned()));
    }
    // An inline key is trimmed the same way.
    let yaml = one_app("", &[("secret_key", Some(&format!("\"  {KEY}\\n\"")))]);
    assert_eq!(
        parse(&yaml).expect("valid").config.apps[0]
            .secret_key
            .expose(),
        KEY
    );
}

/// Runs every case with the key inline, from the environment and from a file, and checks that
/// no rendering of the result shows it.
#[cfg(unix)]
#[test]
fn the_key_never_prints() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_secret(dir.path(), "key", format!("{KEY}\n").as_bytes(), 0o644);
    let sources: [(&str, &str); 3] = [
        ("secret_key", KEY),
        ("secret_key_env", "TIM_SECRET_KEY"),
        ("secret_key_file", "key"),
    ];
    let mut checked = 0;
    for (name, top, changes, _) in ERROR_CASES {
        for (source, value) in sources {
            let mut changes: Vec<(&str, Option<&str>)> = changes.to_vec();
            if !changes.iter().any(|(k, _)| k.starts_with("secret_key")) {
                changes.push(("secret_key", None));
                changes.push((source, Some(value)));
            }
            let yaml = one_app(top, &changes);
            let result = config::parse(&yaml, &env, dir.path());
            let mut rendered = format!("{result:?}\n{result:#?}");
            match &result {
                Ok(loaded) => {
                    rendered.push_str(&loaded.config.summary());
                    rendered.push_str(&loaded.warnings.join("\n"));
                }
                Err(e) => rendered.push_str(&e.to_string()),
            }
            assert!(
                !rendered.contains(KEY),
                "{name} ({source}) leaks:\n{rendered}"
            );
            assert!(
                !rendered.contains("S3CRETKEY"),
                "{name} ({source}) leaks a part"
            );
            checked += 1;
        }
    }
    // And the good configs, whose keys were all read.
    let yaml = one_app(
        "",
        &[("secret_key", None), ("secret_key_file", Some("key"))],
    );
    let loaded = config::parse(&yaml, &env, dir.path()).expect("valid");
    assert_eq!(loaded.config.apps[0].secret_key.expose(), KEY);
    let rendered = format!(
        "{loaded:?} {} {:?}",
        loaded.config.summary(),
        loaded.warnings
    );
    assert!(!rendered.contains("S3CRETKEY"), "{rendered}");
    assert!(checked > 100);
}

#[test]
fn summary_shows_sources_not_secrets() {
    let yaml = "\
poll_interval: 30s
exclude_metrics: [\"timattr_api_.*\"]
apps:
  - sdkappid: 1400000000
    region: singapore
    identifier: administrator
    secret_key_env: TIM_SECRET_KEY
    groups: [\"@TGS#a\", {id: \"@TGS#b\", poll_interval: 10s}]
    labels: {team: rooms}
  - sdkappid: 1400000001
    endpoint: http://127.0.0.1:8080
    identifier: admin
    secret_key: KEYINLINE
    discover: {group_types: [AVChatRoom]}
";
    let loaded = parse(yaml).expect("valid");
    let summary = loaded.config.summary();
    assert_eq!(
        summary,
        "\
2 app(s), 2 configured group(s), discovery in 1 app(s)
poll_interval: 30s
state_file: none
value_hashes: per_key
exclude_metrics: 1 pattern(s)
app 1400000000:
  region: singapore (https://adminapisgp.im.qcloud.com/)
  identifier: administrator
  secret_key: from environment variable TIM_SECRET_KEY
  usersig_ttl: 1d, rate_limit: 100/s, max_concurrency: 16, timeout: 5s
  groups: 2 (1 polled at another interval than poll_interval)
  labels: 1, ignore_keys: 0 pattern(s); 0 group(s) with labels or ignore_keys of their own
  discover: off
app 1400000001:
  endpoint: http://127.0.0.1:8080/
  identifier: admin
  secret_key: from inline in the config
  usersig_ttl: 1d, rate_limit: 100/s, max_concurrency: 16, timeout: 5s
  groups: 0 (0 polled at another interval than poll_interval)
  discover: AVChatRoom, refreshed every 10m
"
    );
    assert!(!summary.contains(KEY) && !summary.contains("KEYINLINE"));
}

proptest! {
    #[test]
    fn parse_never_panics(s in "\\PC{0,200}") {
        let _ = parse(&s);
    }
}

/// The fixtures in tests/data/config: each file's leading `# error: ` lines are the exact
/// error text (`$DIR` standing for the fixture directory), `# warning: ` lines the exact
/// warnings; a file with no `# error:` line must be valid.
#[test]
fn fixtures_give_their_expected_output() {
    let dir = fixtures();
    let shown = dir.display().to_string();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture directory")
        .map(|e| e.expect("fixture entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "fixtures missing from {shown}");
    let mut failures = Vec::new();
    for file in files {
        let yaml = std::fs::read_to_string(&file).expect("read fixture");
        let expected = |prefix: &str| -> Vec<String> {
            yaml.lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .map(|l| l.replace("$DIR", &shown))
                .collect()
        };
        let (want_errors, want_warnings) = (expected("# error: "), expected("# warning: "));
        let (got_errors, got_warnings) = match config::parse(&yaml, &env, &dir) {
            Ok(loaded) => (Vec::new(), loaded.warnings),
            Err(e) => (
                e.to_string().lines().map(str::to_owned).collect(),
                Vec::new(),
            ),
        };
        if got_errors != want_errors || got_warnings != want_warnings {
            failures.push(format!(
                "{}:\n  want errors {want_errors:#?}\n  got errors {got_errors:#?}\n  want \
                 warnings {want_warnings:#?}\n  got warnings {got_warnings:#?}",
                file.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The shipped example stays valid: its secret file lives under /run/secrets, so the test reads
/// the key from the environment instead.
#[test]
fn shipped_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/timattr.yml");
    let yaml = std::fs::read_to_string(&path).expect("config/timattr.yml");
    let from = "secret_key_file: /run/secrets/tim_secret_key";
    assert_eq!(yaml.matches(from).count(), 1, "the example changed shape");
    let yaml = yaml.replace(from, "secret_key_env: TIM_SECRET_KEY");
    let loaded = config::parse(&yaml, &env, path.parent().expect("has a directory"))
        .unwrap_or_else(|e| panic!("config/timattr.yml is invalid:\n{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(c.apps.len(), 2);
    assert_eq!(
        c.state_file.as_deref(),
        Some(Path::new("/var/lib/timattr_exporter/state.json"))
    );
    let first = &c.apps[0];
    assert_eq!(first.region, Some(Region::Singapore));
    assert_eq!(first.groups.len(), 4);
    assert!(
        first
            .groups
            .iter()
            .any(|g| g.id == "@TGS#2J4SZEAEL" && g.poll_interval == Duration::from_secs(15))
    );
    assert_eq!(first.secret_key.expose(), KEY);
    assert_eq!(first.labels.get("team").map(String::as_str), Some("rooms"));
    let busy = &first.groups[3];
    assert_eq!(busy.labels.len(), 2);
    let ignore = busy.ignore_keys.as_deref().expect("merged ignore_keys");
    assert!(ignore.is_match("score") && ignore.is_match("cursor_1"));
    assert!(c.exclude_metrics.is_none(), "commented out");
    let second = &c.apps[1];
    assert_eq!(second.secret_key.expose(), KEY);
    assert!(second.groups.is_empty());
    assert_eq!(
        second.discover.as_ref().map(|d| d.group_types.clone()),
        Some(vec!["Public".to_owned(), "AVChatRoom".to_owned()])
    );
}

#[test]
fn load_reads_the_file_and_names_it_when_it_cannot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope.yml");
    let err = config::load(&missing).expect_err("no such file");
    assert_eq!(err.problems.len(), 1);
    assert_eq!(err.problems[0].path, missing.display().to_string());
    assert!(
        err.problems[0]
            .message
            .starts_with("cannot read the config file: ")
    );

    let path = dir.path().join("timattr.yml");
    std::fs::write(&path, one_app("", &[])).expect("write config");
    let loaded = config::load(&path).expect("valid");
    assert_eq!(loaded.config.apps[0].secret_key.expose(), KEY);
    // ConfigError is a std error, for `?` into a boxed error in main.
    let boxed: Box<dyn std::error::Error> = Box::new(err);
    assert!(boxed.to_string().contains("nope.yml"));
}

/// A key line whose `:` is lost turns `secret_key  'KEY'` into one unknown "key" holding the
/// secret: the error must not echo it (found by tests/props.rs).
#[test]
fn an_unknown_key_that_is_not_a_name_is_not_echoed() {
    let yaml = "apps:\n  - sdkappid: 1400000003\n    endpoint: https://proxy.example/tim\n    identifier: admin\n    secret_key  's3cr3t-KEY-4e1f0c9d2b7a6e5f8c3d1b0a9e8f7c6d'    discover: {}\n";
    let text = error_text(yaml);
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(
        text.contains("apps[0]: a key that is not a plain name"),
        "{text}"
    );
}

/// A secret pasted into another field must not come back in that field's error (found by
/// tests/props.rs: the key copied into `usersig_ttl` was echoed as an invalid duration).
#[test]
fn a_secret_echoed_by_another_field_is_redacted() {
    let yaml = "apps:\n  - sdkappid: 1400000001\n    region: singapore\n    identifier: administrator\n    secret_key: \"s3cr3t-KEY-4e1f0c9d2b7a6e5f8c3d1b0a9e8f7c6d\"\n    usersig_ttl: \"s3cr3t-KEY-4e1f0c9d2b7a6e5f8c3d1b0a9e8f7c6d\"\n    groups: [\"@TGS#a\"]\n";
    let text = error_text(yaml);
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(
        text.contains("apps[0].usersig_ttl: invalid duration \"<redacted>\""),
        "{text}"
    );
}

/// Callback tokens are handled like the secret key: exactly one source, trimmed, a warning for
/// a world-readable file, and never echoed, not even when pasted where a path or a name goes.
#[cfg(unix)]
#[test]
fn callback_tokens_are_secrets() {
    const TOKEN: &str = "cb-T0KEN-9f8e7d6c5b4a3928";
    let dir = tempfile::tempdir().expect("temp dir");
    write_secret(dir.path(), "token", format!("{TOKEN}\n").as_bytes(), 0o644);
    let parse_in =
        |changes: &[(&str, Option<&str>)]| config::parse(&one_app("", changes), &env, dir.path());

    let loaded = parse_in(&[("callback_token_file", Some("token"))]).expect("valid");
    let app = &loaded.config.apps[0];
    assert_eq!(
        app.callback_token.as_ref().map(|t| t.expose()),
        Some(TOKEN),
        "trimmed"
    );
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("readable by group or others"));
    assert!(!loaded.config.summary().contains(TOKEN));
    assert!(
        loaded
            .config
            .summary()
            .contains("callback_token: from file")
    );
    assert!(!format!("{:?}", loaded.config).contains(TOKEN));

    let inline = format!("\"{TOKEN}\"");
    let both = parse_in(&[
        ("callback_token", Some(inline.as_str())),
        ("callback_token_env", Some("TIM_SECRET_KEY")),
    ])
    .expect_err("two sources");
    let text = format!("{both} {both:?}");
    assert!(
        text.contains(
            "set exactly one of callback_token_file, callback_token_env, callback_token, not \
             callback_token_env and callback_token"
        ),
        "{text}"
    );
    assert!(!text.contains(TOKEN), "{text}");

    // A token pasted into the fields that name a file or a variable.
    for field in [
        "callback_token_file",
        "callback_token_env",
        "secret_key_file",
        "secret_key_env",
    ] {
        let mut changes = vec![(field, Some(TOKEN))];
        if field.starts_with("secret_key") {
            changes.push(("secret_key", None));
        }
        let err = parse_in(&changes).expect_err("no such file or variable");
        let text = format!("{err} {err:?}");
        assert!(text.contains(&format!("apps[0].{field}")), "{text}");
        assert!(!text.contains(TOKEN), "{field} echoed its value: {text}");
    }

    // Without a token the app has none (its callbacks are accepted unsigned).
    let loaded = parse_in(&[]).expect("valid");
    assert!(loaded.config.apps[0].callback_token.is_none());
}

#[test]
fn labels_and_ignore_keys_merge_group_over_app() {
    let yaml = one_app(
        "exclude_metrics: [\"timattr_api_.*\"]\n",
        &[
            ("labels", Some("{team: rooms, tier: gold}")),
            ("ignore_keys", Some("[heartbeat, \"cursor_.*\"]")),
            (
                "groups",
                Some(
                    "[\"@TGS#plain\", {id: \"@TGS#own\", labels: {tier: silver, page_on_change: \"true\"}, \
                 ignore_keys: [score]}, {id: \"@TGS#empty\", labels: {}, ignore_keys: []}]",
                ),
            ),
        ],
    );
    let config = parse(&yaml).expect("valid").config;
    let exclude = config.exclude_metrics.as_deref().expect("set");
    assert!(exclude.is_match("timattr_api_requests_total"));
    assert!(!exclude.is_match("timattr_group_up"));
    assert!(
        !exclude.is_match("x_timattr_api_requests_total"),
        "full match"
    );
    let app = &config.apps[0];
    let pairs = |m: &std::collections::BTreeMap<String, String>| -> Vec<(String, String)> {
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(pairs(&app.labels), [s("team", "rooms"), s("tier", "gold")]);
    // Unquoted flags and numbers are taken as their text.
    let unquoted = parse(&one_app(
        "",
        &[(
            "labels",
            Some("{page_on_change: true, quiet: false, tier: 2}"),
        )],
    ))
    .expect("valid")
    .config;
    assert_eq!(
        pairs(&unquoted.apps[0].labels),
        [
            s("page_on_change", "true"),
            s("quiet", "false"),
            s("tier", "2")
        ]
    );
    let [plain, own, empty] = &app.groups[..] else {
        panic!("three groups: {:?}", app.groups)
    };
    // The group's value wins; the app's other labels stay.
    assert_eq!(
        pairs(&own.labels),
        [
            s("page_on_change", "true"),
            s("team", "rooms"),
            s("tier", "silver")
        ]
    );
    // Groups that add nothing share the app's values, not copies.
    for g in [plain, empty] {
        assert!(std::sync::Arc::ptr_eq(&g.labels, &app.labels), "{}", g.id);
        let (gi, ai) = (g.ignore_keys.as_ref(), app.ignore_keys.as_ref());
        assert!(
            std::sync::Arc::ptr_eq(gi.expect("inherited"), ai.expect("set")),
            "{}",
            g.id
        );
    }
    let ignore = own.ignore_keys.as_deref().expect("merged");
    assert_eq!(ignore.sources(), ["heartbeat", "cursor_.*", "score"]);
    for key in ["heartbeat", "cursor_7", "score"] {
        assert!(ignore.is_match(key), "{key}");
    }
    assert!(!ignore.is_match("scores"));
    assert!(!app.ignore_keys.as_deref().expect("set").is_match("score"));

    // Absent everywhere: nothing set.
    let config = parse(&one_app("", &[])).expect("valid").config;
    assert!(config.exclude_metrics.is_none());
    assert!(config.apps[0].labels.is_empty());
    assert!(config.apps[0].ignore_keys.is_none());
    assert!(config.apps[0].groups[0].ignore_keys.is_none());
}

#[test]
fn a_group_may_ignore_keys_when_the_app_does_not() {
    let yaml = one_app(
        "",
        &[("groups", Some("[{id: \"@TGS#a\", ignore_keys: [\"x|y\"]}]"))],
    );
    let config = parse(&yaml).expect("valid").config;
    let ignore = config.apps[0].groups[0]
        .ignore_keys
        .as_deref()
        .expect("own");
    assert!(ignore.is_match("x") && ignore.is_match("y") && !ignore.is_match("xy"));
}

#[test]
fn a_label_value_holding_a_secret_is_refused_without_echoing_it() {
    let yaml = one_app(
        "",
        &[
            ("labels", Some(&format!("{{note: \"key is {KEY}\"}}"))),
            (
                "groups",
                Some(&format!(
                    "[{{id: \"@TGS#a\", labels: {{team: rooms, note2: \"{KEY}\"}}}}, \
                     {{id: \"@TGS#b\", labels: {{team: rooms}}}}]"
                )),
            ),
            ("ignore_keys", Some(&format!("[\"{KEY}\"]"))),
        ],
    );
    let text = error_text(&yaml);
    assert!(!text.contains(KEY), "{text}");
    // The app's value is reported at the app only; the group that adds one, at the group.
    assert_eq!(
        errors(&yaml),
        "apps[0].labels: a label holds a secret key or callback token of this config: labels \
         are exported in /metrics\n\
         apps[0].groups[0].labels: a label holds a secret key or callback token of this config: \
         labels are exported in /metrics"
    );
    // A name that is a valid label name and a secret (a hex key starting with a letter).
    let hex_key = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let yaml = one_app(
        "",
        &[
            ("secret_key", Some(hex_key)),
            ("labels", Some(&format!("{{{hex_key}: x}}"))),
        ],
    );
    assert_eq!(
        errors(&yaml),
        "apps[0].labels: a label holds a secret key or callback token of this config: labels \
         are exported in /metrics"
    );
    // A pattern is never exported, but a dump of the config never shows it either.
    let ok = one_app("", &[("ignore_keys", Some(&format!("[\"{KEY}\"]")))]);
    let loaded = parse(&ok).expect("valid");
    assert!(!format!("{loaded:?}").contains(KEY));
}

/// A CA certificate and a client certificate with its key, as PEM.
struct TlsPems {
    ca: String,
    cert: String,
    key: String,
    other_key: String,
}

fn tls_pems() -> TlsPems {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["exporter".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    TlsPems {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
        other_key: KeyPair::generate().unwrap().serialize_pem(),
    }
}

/// The base64 lines of a PEM document: what must never appear in a message.
fn pem_body(pem: &str) -> Vec<&str> {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[cfg(unix)]
#[test]
fn tls_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pems = tls_pems();
    write_secret(dir.path(), "ca.pem", pems.ca.as_bytes(), 0o644);
    write_secret(dir.path(), "client.pem", pems.cert.as_bytes(), 0o644);
    write_secret(dir.path(), "client-key.pem", pems.key.as_bytes(), 0o600);
    write_secret(dir.path(), "open-key.pem", pems.key.as_bytes(), 0o640);
    write_secret(
        dir.path(),
        "other-key.pem",
        pems.other_key.as_bytes(),
        0o600,
    );
    write_secret(dir.path(), "empty.pem", b"", 0o600);
    write_secret(dir.path(), "broken.pem", &pems.key.as_bytes()[..200], 0o600);
    let parse_in =
        |changes: &[(&str, Option<&str>)]| config::parse(&one_app("", changes), &env, dir.path());
    let shown = dir.path().display().to_string();

    // Relative paths resolve against the config's directory; a 0600 key draws no warning.
    let loaded = parse_in(&[
        ("tls_ca_file", Some("ca.pem")),
        ("tls_cert_file", Some("client.pem")),
        ("tls_key_file", Some("client-key.pem")),
    ])
    .expect("valid");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let app = &loaded.config.apps[0];
    assert_eq!(app.tls.ca_certs.as_ref().map(Vec::len), Some(1));
    assert_eq!(app.tls.identity.as_ref().map(|id| id.chain.len()), Some(1));
    assert_eq!(app.tls_files.ca_file, Some(dir.path().join("ca.pem")));
    assert!(
        format!("{app:?}").contains("key: ClientKey(<redacted>)"),
        "the key's Debug is redacted"
    );
    assert_eq!(
        timattr_exporter::auto_reload::named_files(&loaded.config)[..],
        [
            dir.path().join("ca.pem"),
            dir.path().join("client.pem"),
            dir.path().join("client-key.pem"),
        ],
        "the TLS files join the auto-reload fingerprint"
    );
    let summary = loaded.config.summary();
    assert!(
        summary.contains(&format!(
            "  tls_ca_file: {shown}/ca.pem (1 certificate(s), instead of the system roots)\n  \
             tls_cert_file: {shown}/client.pem\n"
        )),
        "{summary}"
    );
    // Over plain http they can do nothing: a warning.
    let loaded = parse_in(&[
        ("region", None),
        ("endpoint", Some("http://127.0.0.1:8080")),
        ("tls_ca_file", Some("ca.pem")),
    ])
    .expect("valid");
    assert_eq!(
        loaded.warnings,
        [
            "apps[0].endpoint: is plain http: tls_ca_file, tls_cert_file and tls_key_file have no \
          effect"
        ]
    );
    // Without them, the system roots and no client certificate.
    let plain = parse_in(&[]).expect("valid");
    assert_eq!(plain.config.apps[0].tls, Default::default());

    // A key others may read: a warning naming the file, as for secret_key_file.
    let loaded = parse_in(&[
        ("tls_cert_file", Some("client.pem")),
        ("tls_key_file", Some("open-key.pem")),
    ])
    .expect("valid");
    assert_eq!(
        loaded.warnings,
        [format!(
            "apps[0].tls_key_file: {shown}/open-key.pem is readable by group or others (mode \
             0640); chmod 600 it"
        )]
    );

    let expect_errors = |changes: &[(&str, Option<&str>)], want: &[&str]| {
        let err = parse_in(changes).expect_err("bad TLS files");
        let text = format!("{err} {err:?}");
        for line in pem_body(&pems.key)
            .into_iter()
            .chain(pem_body(&pems.other_key))
        {
            assert!(!text.contains(line), "key material echoed: {text}");
        }
        assert_eq!(err.to_string(), want.join("\n"));
    };
    expect_errors(
        &[("tls_ca_file", Some("missing.pem"))],
        &[
            "apps[0].tls_ca_file: cannot read the file it names: No such file or directory (os \
           error 2)",
        ],
    );
    expect_errors(
        &[("tls_ca_file", Some("client-key.pem"))],
        &[
            "apps[0].tls_ca_file: the file it names holds no PEM certificate (-----BEGIN \
           CERTIFICATE-----)",
        ],
    );
    expect_errors(
        &[("tls_ca_file", Some("broken.pem"))],
        &[
            "apps[0].tls_ca_file: the file it names is not valid PEM: a PEM section in it has no \
           END line",
        ],
    );
    expect_errors(
        &[("tls_cert_file", Some("client.pem"))],
        &["apps[0]: set both tls_cert_file and tls_key_file for a client certificate, or neither"],
    );
    expect_errors(
        &[("tls_key_file", Some("client-key.pem"))],
        &["apps[0]: set both tls_cert_file and tls_key_file for a client certificate, or neither"],
    );
    expect_errors(
        &[
            ("tls_cert_file", Some("client.pem")),
            ("tls_key_file", Some("other-key.pem")),
        ],
        &[
            "apps[0].tls_key_file: the private key does not match the first certificate in \
           tls_cert_file",
        ],
    );
    // Every mistake at once, each at its place.
    expect_errors(
        &[
            ("tls_ca_file", Some("empty.pem")),
            ("tls_cert_file", Some("client-key.pem")),
            ("tls_key_file", Some("ca.pem")),
        ],
        &[
            "apps[0].tls_ca_file: the file it names holds no PEM certificate (-----BEGIN \
             CERTIFICATE-----)",
            "apps[0].tls_cert_file: the file it names holds no PEM certificate (-----BEGIN \
             CERTIFICATE-----)",
            "apps[0].tls_key_file: the file it names holds no PEM private key (PRIVATE KEY, RSA \
             PRIVATE KEY or EC PRIVATE KEY)",
        ],
    );
    // A key pasted into the field instead of a path is not echoed.
    let pasted = serde_json::to_string(&pems.key).unwrap();
    expect_errors(
        &[
            ("tls_cert_file", Some("client.pem")),
            ("tls_key_file", Some(&pasted)),
        ],
        &[
            "apps[0].tls_key_file: cannot read the file it names: No such file or directory \
             (os error 2)",
        ],
    );
}
