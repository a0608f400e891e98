//! The YAML config file (SPEC "Config file"): parsed strictly and validated once into typed
//! values, or rejected with every mistake at once.
//!
//! Like blackbox_exporter's config package, unknown keys are errors and defaults are named
//! constants. Unlike `#[serde(deny_unknown_fields)]`, which stops at the first problem and names
//! no place, the document is read into a [`serde_yaml::Value`] and walked by hand, so each
//! [`Problem`] carries its path (`apps[0].groups[3]`) and all of them are reported together.
//!
//! Secrets are read here too (from a file, an environment variable, or inline), so that
//! `--config.check` and a reload fail on a missing key rather than the first poll. A key never
//! appears in a [`Problem`], a warning, `Debug` output or [`Config::summary`]: messages name the
//! file or the variable, never the content.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_yaml::Value;
use url::{Host, Url};

use crate::client_tls::{self, ClientTls};
use crate::duration;
use crate::metrics::ValueHashes;
use crate::pattern::Patterns;
use crate::region::Region;
use crate::secret::SecretKey;

/// How often each group is polled unless it says otherwise (`poll_interval`).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// `usersig_ttl`: Tencent recommends at least 24 h; the exporter renews well before expiry.
pub const DEFAULT_USERSIG_TTL: Duration = Duration::from_secs(24 * 3600);
/// `rate_limit`, in requests per second per app, shared by all shards.
pub const DEFAULT_RATE_LIMIT: f64 = 100.0;
/// `max_concurrency`: requests in flight per app.
pub const DEFAULT_MAX_CONCURRENCY: usize = 16;
/// `timeout` per HTTP request: longer than the 3 s after which Tencent's backend gives up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// `discover.refresh_interval`.
pub const DEFAULT_DISCOVER_REFRESH: Duration = Duration::from_secs(600);
/// The documented quota of `get_group_attr`, in calls per second. `rate_limit` may exceed it
/// (Tencent sells higher quotas), with a warning.
pub const API_RATE_LIMIT: f64 = 200.0;

/// The shortest `poll_interval`, global or per group.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest `usersig_ttl`: a UserSig is renewed at 80% of its life, so below a few minutes
/// the exporter would spend its time signing.
pub const MIN_USERSIG_TTL: Duration = Duration::from_secs(5 * 60);
/// The longest `usersig_ttl`: 180 days, what the official libraries issue by default. The
/// exporter renews its UserSig itself, so a longer life buys nothing and only widens the window
/// in which a leaked UserSig (it travels in the query string) stays valid.
pub const MAX_USERSIG_TTL: Duration = Duration::from_secs(180 * 86400);
/// The lowest `rate_limit`: one request every 1000 s. Anything above 0 would do in principle,
/// but the limiter spaces requests by 1 / rate_limit (divided again by the shard count), and a
/// vanishing rate would make that spacing overflow a `Duration`.
pub const MIN_RATE_LIMIT: f64 = 0.001;
/// The highest `max_concurrency`: far beyond what a 200/s quota can use.
pub const MAX_MAX_CONCURRENCY: usize = 1024;
/// Tencent's backend times out REST calls after this long; a client `timeout` at or below it
/// turns slow answers into client-side timeouts (a warning, not an error).
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(3);
/// The shortest `discover.refresh_interval` (SPEC: "at least 1s"). A short interval is safe: a
/// refresh never overlaps the previous listing (a listing longer than the interval runs back to
/// back) and list calls are paced at the API's 1 per second per app whatever the interval. Below
/// a second, the interval would only ask for more than that pace allows.
pub const MIN_DISCOVER_REFRESH: Duration = Duration::from_secs(1);
/// Tencent group IDs are at most 48 bytes.
pub const MAX_GROUP_ID_BYTES: usize = 48;
/// A secret file larger than this is not a SecretKey (they are 64 hex digits): reading stops.
pub const MAX_SECRET_FILE_BYTES: u64 = 4096;
/// `tls_ca_file`, `tls_cert_file` and `tls_key_file` larger than this are refused: the
/// system's whole CA bundle is about 200 KB.
pub const MAX_TLS_FILE_BYTES: u64 = 1 << 20;
/// The `GroupType` filters `get_appid_group_list` accepts.
pub const GROUP_TYPES: [&str; 6] = [
    "Public",
    "Private",
    "ChatRoom",
    "AVChatRoom",
    "BChatRoom",
    "Community",
];
/// Newer names Tencent uses for two group types, accepted in `discover.group_types` and
/// normalised to the names the API takes.
const GROUP_TYPE_ALIASES: [(&str, &str); 2] = [("Work", "Private"), ("Meeting", "ChatRoom")];

const TOP_KEYS: &[&str] = &[
    "poll_interval",
    "state_file",
    "value_hashes",
    "exclude_metrics",
    "apps",
];
const APP_KEYS: &[&str] = &[
    "sdkappid",
    "region",
    "endpoint",
    "allow_insecure_http",
    "identifier",
    "secret_key_file",
    "secret_key_env",
    "secret_key",
    "callback_token_file",
    "callback_token_env",
    "callback_token",
    "usersig_ttl",
    "rate_limit",
    "max_concurrency",
    "timeout",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "labels",
    "ignore_keys",
    "groups",
    "discover",
];
const GROUP_KEYS: &[&str] = &["id", "poll_interval", "labels", "ignore_keys"];
const DISCOVER_KEYS: &[&str] = &["group_types", "refresh_interval"];

/// The whole config, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The default interval of every group without its own, discovered ones included.
    pub poll_interval: Duration,
    /// Where the latest snapshots persist across restarts; relative paths are resolved against
    /// the config file's directory.
    pub state_file: Option<PathBuf>,
    pub value_hashes: ValueHashes,
    /// Metric families not exported (`exclude_metrics`); `None` when the list is absent or
    /// empty.
    pub exclude_metrics: Option<Arc<Patterns>>,
    /// At least one; `sdkappid`s are unique.
    pub apps: Vec<AppConfig>,
}

/// One Tencent Cloud Chat application.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    pub sdkappid: u64,
    /// `None` when `endpoint` was given instead.
    pub region: Option<Region>,
    /// The region's `base_url()` or the `endpoint`, ending with `/` so API paths join onto it.
    pub base_url: Url,
    /// The app admin account the UserSig is made for.
    pub identifier: String,
    pub secret_key: SecretKey,
    /// Where the key came from, for `--config.check`; never the key itself.
    pub secret_source: SecretSource,
    /// The token `Sign` of this app's callbacks is checked against; without one, its callbacks
    /// are accepted unsigned (SPEC "Callbacks").
    pub callback_token: Option<SecretKey>,
    pub callback_token_source: Option<SecretSource>,
    /// The UserSig's `TLS.expire`; whole seconds.
    pub usersig_ttl: Duration,
    /// Requests per second to this app, retries included, shared by all shards.
    pub rate_limit: f64,
    pub max_concurrency: usize,
    /// Per HTTP request.
    pub timeout: Duration,
    /// Whether `endpoint` may be plain http to a non-loopback host.
    pub allow_insecure_http: bool,
    /// `tls_ca_file` (instead of the system roots) and the client certificate, read and
    /// checked; their bytes count when a reload decides whether the client must be rebuilt.
    pub tls: ClientTls,
    /// The files `tls` was read from, for `--config.check` and the auto-reload fingerprint.
    pub tls_files: TlsFiles,
    /// The app's `labels`, on `timattr_group_labels` of every group of the app (discovered ones
    /// too); names are valid Prometheus label names.
    pub labels: Labels,
    /// The app's `ignore_keys`; `None` when absent or empty.
    pub ignore_keys: Option<Arc<Patterns>>,
    /// Configured groups, in config order, IDs unique within the app.
    pub groups: Vec<GroupConfig>,
    pub discover: Option<DiscoverConfig>,
}

/// Where an app's TLS material was read from (resolved against the config file's directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Where an app's SecretKey was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `secret_key_file`, resolved against the config file's directory.
    File(PathBuf),
    /// `secret_key_env`: the variable's name.
    Env(String),
    /// `secret_key` in the config itself.
    Inline,
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(path) => write!(f, "file {}", path.display()),
            SecretSource::Env(name) => write!(f, "environment variable {name}"),
            SecretSource::Inline => f.write_str("inline in the config"),
        }
    }
}

/// `labels`: label name (without the `label_` prefix) to value, sorted by name. Shared: a group
/// that adds no labels of its own holds the app's map, not a copy.
pub type Labels = Arc<BTreeMap<String, String>>;

/// A configured group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub id: String,
    /// Its own `poll_interval`, or the global one.
    pub poll_interval: Duration,
    /// The app's labels with the group's own merged over them (the group's value wins). The
    /// same `Arc` as the app's when the group has none.
    pub labels: Labels,
    /// The app's `ignore_keys` followed by the group's own, compiled together; the same `Arc` as
    /// the app's when the group adds none, so 100,000 groups cost one compiled set.
    pub ignore_keys: Option<Arc<Patterns>>,
}

/// Poll every group of the app (`get_appid_group_list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverConfig {
    /// `GroupType` filters, each one of [`GROUP_TYPES`], unique; empty means every type.
    pub group_types: Vec<String>,
    pub refresh_interval: Duration,
}

/// A valid config and the warnings it drew (each `path: what`), for the caller to log.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Everything wrong with a config, in document order as far as the walk allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

/// One mistake: where (`apps[0].groups[3]`, `line 7`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads and validates the config file at `path`, with secrets from the files and environment
/// variables it names. Relative paths in it are resolved against its directory.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let yaml = std::fs::read_to_string(path).map_err(|e| ConfigError {
        problems: vec![Problem {
            path: path.display().to_string(),
            message: format!("cannot read the config file: {e}"),
        }],
    })?;
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    parse(&yaml, &|name| std::env::var(name).ok(), base_dir)
}

/// Validates a config document. `env` looks environment variables up; relative
/// `secret_key_file` and `state_file` paths are resolved against `base_dir`.
pub fn parse(
    yaml: &str,
    env: &dyn Fn(&str) -> Option<String>,
    base_dir: &Path,
) -> Result<Loaded, ConfigError> {
    let (doc, problems) = match serde_yaml::from_str::<Value>(yaml) {
        Ok(doc) => (doc, Vec::new()),
        Err(e) => quote_at_values(yaml, &e)?,
    };
    let mut walk = Walk {
        problems,
        warnings: Vec::new(),
        secrets: Vec::new(),
        env,
        base_dir,
    };
    let config = walk.config(&doc);
    if let Some(config) = &config {
        walk.no_secret_in_labels(config);
    }
    walk.redact_secrets();
    match config {
        Some(config) if walk.problems.is_empty() => Ok(Loaded {
            config,
            warnings: walk.warnings,
        }),
        _ => Err(ConfigError {
            problems: walk.problems,
        }),
    }
}

/// What an unquoted `@` value is told. Never the value itself: it may be a secret pasted
/// where a group ID goes, or a secret key that happens to start with `@`.
const AT_HINT: &str =
    "group IDs and other values starting with @ must be quoted in YAML, like - \"@TGS#aC5SZEAEF\"";

/// Handles a document that is not YAML. The common cause is an unquoted `@TGS#...` group ID
/// (`@` is reserved and cannot start a plain scalar), which would otherwise hide every other
/// mistake and name only a line. Such values are quoted in a copy (same lines), and the copy is
/// parsed instead: the result is its document, to be validated as usual, and one problem per
/// unquoted value at its place. Without any, or when the copy does not parse either, the
/// syntax error is reported (after those problems).
fn quote_at_values(
    yaml: &str,
    err: &serde_yaml::Error,
) -> Result<(Value, Vec<Problem>), ConfigError> {
    let scan = LineScan::new(yaml);
    if scan.at_values.is_empty() {
        return Err(ConfigError {
            problems: vec![syntax_problem(yaml, err, &scan)],
        });
    }
    // A second copy whose values are numbered markers locates each one exactly: an equal
    // string elsewhere (the same ID, quoted, in an earlier group) would take its place.
    let mut places = vec![None; scan.at_values.len()];
    let marked = scan.rewrite(yaml, |k, _| format!("\"\\0{k}\""));
    if let Ok(doc) = serde_yaml::from_str::<Value>(&marked) {
        marker_places(&doc, "", &mut places);
    }
    let mut problems: Vec<Problem> = scan
        .at_values
        .iter()
        .zip(places)
        .map(|(at, place)| match place {
            Some(path) => Problem {
                path,
                message: format!("line {}: {AT_HINT}", at.line + 1),
            },
            None => Problem {
                path: format!("line {}", at.line + 1),
                message: AT_HINT.into(),
            },
        })
        .collect();
    let copy = scan.rewrite(yaml, |_, value| double_quoted(value));
    match serde_yaml::from_str::<Value>(&copy) {
        Ok(doc) => Ok((doc, problems)),
        Err(e) => {
            problems.push(syntax_problem(&copy, &e, &LineScan::new(&copy)));
            Err(ConfigError { problems })
        }
    }
}

/// `value` as a YAML double-quoted scalar.
fn double_quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Records in `places[k]` where the marker string `"\0<k>"` sits in `v` (at `path`). A mapping
/// key's place is its mapping's; a key that is not a plain name is left out of the paths below
/// it, as [`Walk::fields`] leaves it out of its messages.
fn marker_places(v: &Value, path: &str, places: &mut [Option<String>]) {
    match v {
        Value::String(s) => {
            let k = s.strip_prefix('\0').and_then(|k| k.parse::<usize>().ok());
            if let Some(slot) = k.and_then(|k| places.get_mut(k))
                && !path.is_empty()
            {
                *slot = Some(path.to_owned());
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                marker_places(item, &format!("{path}[{i}]"), places);
            }
        }
        Value::Mapping(map) => {
            for (key, value) in map {
                marker_places(key, path, places);
                let below = match key {
                    Value::String(name) if is_plain_name(name) => join(path, name),
                    _ => path.to_owned(),
                };
                marker_places(value, &below, places);
            }
        }
        Value::Tagged(tagged) => marker_places(&tagged.value, path, places),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Turns a YAML syntax error into a [`Problem`] at its line. A quote left open on its line
/// swallows the lines after it up to the next quote, so the parser stumbles far from the
/// mistake (often on a correctly quoted `@` ID): such an error is reported where the quote
/// opened. An `@` the parser meets outside quotes is an unquoted value the line scan missed
/// (a key, say).
fn syntax_problem(yaml: &str, err: &serde_yaml::Error, scan: &LineScan) -> Problem {
    let message = err.to_string();
    let Some(loc) = err.location() else {
        return Problem {
            path: "config".into(),
            message,
        };
    };
    if let Some(key) = message.strip_prefix("duplicate entry with key ") {
        return Problem {
            path: format!("line {}", loc.line()),
            message: format!("duplicate key {key} in the mapping that starts here"),
        };
    }
    if let Some(open) = scan
        .open_quotes
        .iter()
        .find(|q| (q.line, q.column) < (loc.line(), loc.column()))
    {
        return Problem {
            path: format!("line {} column {}", open.line, open.column),
            message: format!(
                "a quote ({}) opened here is not closed on its line",
                open.quote
            ),
        };
    }
    let line = yaml.split('\n').nth(loc.line().saturating_sub(1));
    let at = line.and_then(|line| line.char_indices().nth(loc.column().saturating_sub(1)));
    if message.starts_with("found character that cannot start any token")
        && at.is_some_and(|(byte, c)| c == '@' && !scan.in_quotes(loc.line() - 1, byte))
    {
        return Problem {
            path: format!("line {}", loc.line()),
            message: AT_HINT.into(),
        };
    }
    let suffix = format!(" at line {} column {}", loc.line(), loc.column());
    Problem {
        path: format!("line {} column {}", loc.line(), loc.column()),
        message: message.replacen(&suffix, "", 1),
    }
}

/// A line-by-line reading of a document that YAML could not parse, for [`quote_at_values`] and
/// [`syntax_problem`]. Quotes are tracked within each line only (config files keep a quoted
/// value on one line), so one left open cannot hide the rest of the file as it does from the
/// parser. Flow collections (`[`, `{`) may span lines; block scalars (`|`, `>`) are skipped.
#[derive(Default)]
struct LineScan {
    /// Plain scalars starting with `@` in a value position (after `- `, `key: `, or `[`, `{`,
    /// `,` in a flow collection), in document order.
    at_values: Vec<AtValue>,
    /// Quotes not closed on their line.
    open_quotes: Vec<OpenQuote>,
    /// Quoted scalars: 0-based line and byte range within it, quotes included.
    quoted: Vec<(usize, std::ops::Range<usize>)>,
}

/// An unquoted `@` value: 0-based line and byte range within it.
struct AtValue {
    line: usize,
    start: usize,
    end: usize,
}

/// Where a quote was opened: 1-based line and column, as serde_yaml counts them.
struct OpenQuote {
    line: usize,
    column: usize,
    quote: char,
}

fn is_blank(b: Option<&u8>) -> bool {
    matches!(b, None | Some(b' ' | b'\t'))
}

impl LineScan {
    fn new(yaml: &str) -> LineScan {
        let mut scan = LineScan::default();
        let mut flow = 0usize;
        // The indentation of the line that opened a block scalar: more indented lines are its
        // text, not YAML.
        let mut block: Option<usize> = None;
        // The last line ended where a value goes (`key:` or `-`), so one may start this line.
        let mut pending = false;
        for (n, line) in yaml.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let indent = line.len() - line.trim_start_matches(' ').len();
            if let Some(parent) = block {
                if line.trim().is_empty() || indent > parent {
                    continue;
                }
                block = None;
            }
            scan.line(n, line, indent, &mut flow, &mut block, &mut pending);
        }
        scan
    }

    /// Reads one line. `start`: a scalar may start here; `value`: one starting here is a value
    /// (a key at the start of a line may also be the continuation of a multi-line scalar).
    fn line(
        &mut self,
        n: usize,
        line: &str,
        indent: usize,
        flow: &mut usize,
        block: &mut Option<usize>,
        pending: &mut bool,
    ) {
        let b = line.as_bytes();
        let (mut start, mut value) = (true, *flow > 0 || *pending);
        let mut tokens = false;
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if is_blank(Some(&c)) {
                i += 1;
                continue;
            }
            if c == b'#' && (i == 0 || is_blank(b.get(i - 1))) {
                break;
            }
            tokens = true;
            match c {
                b'-' | b'?' if start && *flow == 0 && is_blank(b.get(i + 1)) => {
                    value = true;
                    i += 1;
                }
                b'[' | b'{' => {
                    *flow += 1;
                    (start, value) = (true, true);
                    i += 1;
                }
                b']' | b'}' => {
                    *flow = flow.saturating_sub(1);
                    (start, value) = (false, false);
                    i += 1;
                }
                b',' if *flow > 0 => {
                    (start, value) = (true, true);
                    i += 1;
                }
                b':' if is_blank(b.get(i + 1))
                    || (*flow > 0 && matches!(b.get(i + 1), Some(b',' | b']' | b'}'))) =>
                {
                    (start, value) = (true, true);
                    i += 1;
                }
                b'"' | b'\'' if start => match closing_quote(b, i) {
                    Some(end) => {
                        self.quoted.push((n, i..end));
                        (start, value) = (false, false);
                        i = end;
                    }
                    None => {
                        self.open_quotes.push(OpenQuote {
                            line: n + 1,
                            column: line[..i].chars().count() + 1,
                            quote: char::from(c),
                        });
                        (start, value) = (false, false);
                        break;
                    }
                },
                // Anchors, aliases and tags come before the value they name.
                b'&' | b'*' | b'!' if start => {
                    while i < b.len() && !is_blank(b.get(i)) {
                        i += 1;
                    }
                }
                b'|' | b'>' if start && *flow == 0 => {
                    *block = Some(indent);
                    (start, value) = (false, false);
                    break;
                }
                _ if start => {
                    let end = plain_end(b, i, *flow > 0);
                    if c == b'@' && value {
                        self.at_values.push(AtValue {
                            line: n,
                            start: i,
                            end,
                        });
                    }
                    (start, value) = (false, false);
                    i = end.max(i + 1);
                }
                // Whatever follows a complete scalar is the parser's to complain about.
                _ => i += 1,
            }
        }
        if tokens {
            *pending = start && value;
        }
    }

    fn in_quotes(&self, line: usize, byte: usize) -> bool {
        self.quoted
            .iter()
            .any(|(n, range)| *n == line && range.contains(&byte))
    }

    /// `yaml` with the k-th `@` value replaced by `with(k, value)`; the lines stay where they
    /// were, so line numbers in the copy's errors are the original's.
    fn rewrite(&self, yaml: &str, with: impl Fn(usize, &str) -> String) -> String {
        let mut out = String::with_capacity(yaml.len() + 8 * self.at_values.len());
        let mut next = self.at_values.iter().enumerate().peekable();
        for (n, line) in yaml.split('\n').enumerate() {
            if n > 0 {
                out.push('\n');
            }
            let mut from = 0;
            while let Some((k, at)) = next.next_if(|(_, at)| at.line == n) {
                out.push_str(&line[from..at.start]);
                out.push_str(&with(k, &line[at.start..at.end]));
                from = at.end;
            }
            out.push_str(&line[from..]);
        }
        out
    }
}

/// The end (exclusive) of the quoted scalar whose opening quote is at `b[i]`, if it closes on
/// this line: `\` escapes in double quotes, `''` in single quotes.
fn closing_quote(b: &[u8], i: usize) -> Option<usize> {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        let escaped = match quote {
            b'"' => b[j] == b'\\',
            _ => b[j] == quote && b.get(j + 1) == Some(&quote),
        };
        if escaped {
            j += 2;
        } else if b[j] == quote {
            return Some(j + 1);
        } else {
            j += 1;
        }
    }
    None
}

/// The end (exclusive, trailing blanks left out) of the plain scalar starting at `b[i]`: at
/// `: `, ` #`, the end of the line, or, in a flow collection, `,` and brackets. Bytes, not
/// chars: every delimiter is ASCII, and UTF-8 continuation bytes are never ASCII.
fn plain_end(b: &[u8], i: usize, in_flow: bool) -> usize {
    let flow_indicator = |c: &u8| matches!(c, b',' | b'[' | b']' | b'{' | b'}');
    let mut j = i;
    while j < b.len() {
        let ends = match b[j] {
            b':' => is_blank(b.get(j + 1)) || (in_flow && b.get(j + 1).is_some_and(flow_indicator)),
            b'#' => j > i && is_blank(b.get(j - 1)),
            c => in_flow && flow_indicator(&c),
        };
        if ends {
            break;
        }
        j += 1;
    }
    while j > i && is_blank(b.get(j - 1)) {
        j -= 1;
    }
    j
}

/// The walk over the document: collects problems and warnings as it goes, so that one pass
/// reports everything.
struct Walk<'a> {
    problems: Vec<Problem>,
    warnings: Vec<String>,
    /// Every secret read so far, to be cut out of the problems and warnings at the end: a
    /// value echoed in an error (a duration, a region) may be a secret pasted in the wrong
    /// place.
    secrets: Vec<String>,
    env: &'a dyn Fn(&str) -> Option<String>,
    base_dir: &'a Path,
}

/// A mapping's entries, once its keys have been checked against the allowed ones.
struct Fields<'v> {
    path: String,
    entries: Vec<(&'v str, &'v Value)>,
}

impl<'v> Fields<'v> {
    fn get(&self, key: &str) -> Option<&'v Value> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// What kind of YAML value this is, for type errors. Never the value itself: it might be a
/// secret in the wrong place.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

impl Walk<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Replaces every secret read (and its trimmed form) in the problems and warnings with
    /// `<redacted>`. Secrets shorter than 4 bytes are left: cutting them would garble every
    /// message and they cannot be real keys anyway.
    fn redact_secrets(&mut self) {
        let mut secrets: Vec<String> = self
            .secrets
            .iter()
            .flat_map(|s| [s.clone(), s.trim().to_owned()])
            .filter(|s| s.len() >= 4)
            .collect();
        // Longest first, so a secret containing another is cut whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        if secrets.is_empty() {
            return;
        }
        let cut = |text: &mut String| {
            for s in &secrets {
                if text.contains(s.as_str()) {
                    *text = text.replace(s.as_str(), "<redacted>");
                }
            }
        };
        for p in &mut self.problems {
            cut(&mut p.path);
            cut(&mut p.message);
        }
        for w in &mut self.warnings {
            cut(w);
        }
    }

    /// Refuses a label (name or value) that holds a secret read by this config: labels are exported in
    /// `/metrics`, where secrets never appear. Checked once every secret has been read, so a
    /// later app's key counts too.
    fn no_secret_in_labels(&mut self, config: &Config) {
        let secrets: Vec<String> = self
            .secrets
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| s.len() >= 4)
            .collect();
        let secret = |(k, v): (&String, &String)| {
            secrets
                .iter()
                .any(|s| k.contains(s.as_str()) || v.contains(s.as_str()))
        };
        for (i, app) in config.apps.iter().enumerate() {
            let mut places = Vec::new();
            if app.labels.iter().any(secret) {
                places.push(format!("apps[{i}].labels"));
            }
            for (j, g) in app.groups.iter().enumerate() {
                // Only the group's own labels: the app's were reported at the app.
                let mut own = g
                    .labels
                    .iter()
                    .filter(|(k, v)| app.labels.get(*k) != Some(*v));
                if !Arc::ptr_eq(&g.labels, &app.labels) && own.any(secret) {
                    places.push(format!("apps[{i}].groups[{j}].labels"));
                }
            }
            for place in places {
                self.error(
                    place,
                    "a label holds a secret key or callback token of this config: labels are \
                     exported in /metrics",
                );
            }
        }
    }

    fn warn(&mut self, path: &str, message: impl fmt::Display) {
        self.warnings.push(format!("{path}: {message}"));
    }

    /// Checks that `v` is a mapping with string keys from `allowed`, reporting the others.
    fn fields<'v>(&mut self, path: &str, v: &'v Value, allowed: &[&str]) -> Option<Fields<'v>> {
        let Value::Mapping(map) = v else {
            let (path, what) = if path.is_empty() {
                ("config", "the config must be")
            } else {
                (path, "must be")
            };
            self.error(
                path,
                format!("{what} a mapping of keys to values, not {}", kind(v)),
            );
            return None;
        };
        let mut entries = Vec::with_capacity(map.len());
        for (k, value) in map {
            let Value::String(key) = k else {
                self.error(path, format!("keys must be strings, found {}", kind(k)));
                continue;
            };
            if allowed.contains(&key.as_str()) {
                entries.push((key.as_str(), value));
            } else if !is_plain_name(key) {
                // Not a name at all: most likely a key whose `:` is missing, so the "key" holds
                // the value too, and that value may be the secret key. Never echo it.
                self.error(
                    path,
                    format!(
                        "a key that is not a plain name (not shown: it may hold a value; is a ':' \
                         missing after a key?); allowed here: {}",
                        allowed.join(", ")
                    ),
                );
            } else {
                let hint = match closest(key, allowed) {
                    Some(near) => format!("did you mean {near}? "),
                    None => String::new(),
                };
                self.error(
                    join(path, key),
                    format!("unknown key; {hint}allowed here: {}", allowed.join(", ")),
                );
            }
        }
        Some(Fields {
            path: path.to_owned(),
            entries,
        })
    }

    fn string(&mut self, path: &str, v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.error(path, format!("must be a string, not {}", kind(other)));
                None
            }
        }
    }

    /// A non-empty string.
    fn name(&mut self, path: &str, v: &Value) -> Option<String> {
        let s = self.string(path, v)?;
        if s.is_empty() {
            self.error(path, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn duration(&mut self, path: &str, v: &Value) -> Option<Duration> {
        match v {
            Value::String(s) => match duration::parse(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.error(path, e.to_string());
                    None
                }
            },
            Value::Number(_) => {
                self.error(
                    path,
                    "must be a duration with a unit, like 60s or 1m30s, not a bare number",
                );
                None
            }
            other => {
                self.error(
                    path,
                    format!("must be a duration like 60s, not {}", kind(other)),
                );
                None
            }
        }
    }

    /// An optional duration of at least `min`, or `default` when absent.
    fn duration_at_least(
        &mut self,
        fields: &Fields<'_>,
        key: &str,
        default: Duration,
        min: Duration,
    ) -> Option<Duration> {
        let Some(v) = fields.get(key) else {
            return Some(default);
        };
        let path = fields.path_of(key);
        let d = self.duration(&path, v)?;
        if d < min {
            self.error(
                &path,
                format!(
                    "must be at least {}, got {}",
                    duration::format(min),
                    duration::format(d)
                ),
            );
            return None;
        }
        Some(d)
    }

    fn config(&mut self, doc: &Value) -> Option<Config> {
        if doc.is_null() {
            self.error("config", "the config is empty: it needs at least `apps`");
            return None;
        }
        let top = self.fields("", doc, TOP_KEYS)?;
        let poll_interval = self.duration_at_least(
            &top,
            "poll_interval",
            DEFAULT_POLL_INTERVAL,
            MIN_POLL_INTERVAL,
        );
        let state_file = match top.get("state_file") {
            None => Some(None),
            Some(v) => self
                .name("state_file", v)
                .map(|s| Some(self.base_dir.join(s))),
        };
        let value_hashes = match top.get("value_hashes") {
            None => Some(ValueHashes::default()),
            Some(v) => self.value_hashes(v),
        };
        let exclude_metrics = self
            .patterns(&top, "exclude_metrics", "metric family names")
            .map(|sources| self.compile(&top.path_of("exclude_metrics"), &[], &sources));
        // A bad global interval has been reported; resolve groups against the default so their
        // own mistakes are still found.
        let global = poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL);
        let apps = self.apps(top.get("apps"), global);
        Some(Config {
            poll_interval: poll_interval?,
            state_file: state_file?,
            value_hashes: value_hashes?,
            exclude_metrics: exclude_metrics??,
            apps: apps?,
        })
    }

    fn value_hashes(&mut self, v: &Value) -> Option<ValueHashes> {
        match v.as_str() {
            Some("per_key") => Some(ValueHashes::PerKey),
            Some("per_group") => Some(ValueHashes::PerGroup),
            Some("off") => Some(ValueHashes::Off),
            _ => {
                self.error("value_hashes", "must be one of per_key, per_group, off");
                None
            }
        }
    }

    fn apps(&mut self, v: Option<&Value>, global: Duration) -> Option<Vec<AppConfig>> {
        let Some(v) = v else {
            self.error("apps", "missing: at least one app is required");
            return None;
        };
        let Value::Sequence(items) = v else {
            self.error("apps", format!("must be a list of apps, not {}", kind(v)));
            return None;
        };
        if items.is_empty() {
            self.error("apps", "at least one app is required");
            return None;
        }
        let mut apps = Vec::with_capacity(items.len());
        let mut seen: HashMap<u64, usize> = HashMap::new();
        let mut all_ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.app(i, item, global, &mut seen) {
                Some(app) => apps.push(app),
                None => all_ok = false,
            }
        }
        all_ok.then_some(apps)
    }

    /// The app at `apps[index]`; `seen` maps the sdkappids of the apps before it to their
    /// index, so a duplicate names both.
    fn app(
        &mut self,
        index: usize,
        v: &Value,
        global: Duration,
        seen: &mut HashMap<u64, usize>,
    ) -> Option<AppConfig> {
        let path = &format!("apps[{index}]");
        let f = self.fields(path, v, APP_KEYS)?;
        let sdkappid = match f.get("sdkappid") {
            None => {
                self.error(path, "missing sdkappid");
                None
            }
            Some(v) => match v.as_u64() {
                Some(0) | None => {
                    self.error(
                        f.path_of("sdkappid"),
                        "must be a positive integer, like 1400000000",
                    );
                    None
                }
                Some(id) => match seen.get(&id) {
                    Some(first) => {
                        self.error(
                            f.path_of("sdkappid"),
                            format!("duplicate sdkappid {id} (also apps[{first}])"),
                        );
                        None
                    }
                    None => {
                        seen.insert(id, index);
                        Some(id)
                    }
                },
            },
        };

        let allow_insecure_http = match f.get("allow_insecure_http") {
            None => Some(false),
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => {
                self.error(
                    f.path_of("allow_insecure_http"),
                    format!("must be true or false, not {}", kind(v)),
                );
                None
            }
        };
        let (region, base_url) = self.api_location(&f, allow_insecure_http.unwrap_or(false));

        let identifier = match f.get("identifier") {
            None => {
                self.error(
                    path,
                    "missing identifier (an app admin account, like administrator)",
                );
                None
            }
            Some(v) => self.name(&f.path_of("identifier"), v),
        };

        let secret = self.secret(&f, "secret_key", true);
        let callback_token = self.secret(&f, "callback_token", false);
        let tls = self.tls(&f);
        if let (Some(url), Some((tls, _))) = (&base_url, &tls)
            && url.scheme() == "http"
            && *tls != ClientTls::default()
        {
            self.warn(
                &f.path_of("endpoint"),
                "is plain http: tls_ca_file, tls_cert_file and tls_key_file have no effect",
            );
        }

        let usersig_ttl = self.usersig_ttl(&f);

        let rate_limit = match f.get("rate_limit") {
            None => Some(DEFAULT_RATE_LIMIT),
            Some(v) => {
                let p = f.path_of("rate_limit");
                match v.as_f64() {
                    Some(r) if r.is_finite() && r >= MIN_RATE_LIMIT => {
                        if r > API_RATE_LIMIT {
                            self.warn(
                                &p,
                                format!(
                                    "{r} requests/s is above the documented API limit of \
                                     {API_RATE_LIMIT}/s: make sure the app's quota was raised, \
                                     or expect rate-limit errors"
                                ),
                            );
                        }
                        Some(r)
                    }
                    Some(_) => {
                        self.error(
                            &p,
                            format!("must be at least {MIN_RATE_LIMIT} requests per second"),
                        );
                        None
                    }
                    None => {
                        self.error(
                            &p,
                            format!("must be a number of requests per second, not {}", kind(v)),
                        );
                        None
                    }
                }
            }
        };

        let max_concurrency = match f.get("max_concurrency") {
            None => Some(DEFAULT_MAX_CONCURRENCY),
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_MAX_CONCURRENCY as u64).contains(&n) => Some(n as usize),
                _ => {
                    self.error(
                        f.path_of("max_concurrency"),
                        format!("must be an integer from 1 to {MAX_MAX_CONCURRENCY}"),
                    );
                    None
                }
            },
        };

        let timeout = match f.get("timeout") {
            None => Some(DEFAULT_TIMEOUT),
            Some(v) => {
                let p = f.path_of("timeout");
                match self.duration(&p, v) {
                    Some(Duration::ZERO) => {
                        self.error(&p, "must be greater than 0");
                        None
                    }
                    Some(d) => {
                        if d <= BACKEND_TIMEOUT {
                            self.warn(
                                &p,
                                format!(
                                    "{} is not longer than the 3s after which Tencent's backend \
                                     times out: slow answers will fail as client timeouts; 5s is \
                                     a sane value",
                                    duration::format(d)
                                ),
                            );
                        }
                        Some(d)
                    }
                    None => None,
                }
            }
        };

        let labels = self.labels(&f).map(Arc::new);
        let ignore_sources = self.patterns(&f, "ignore_keys", "attribute keys");
        let ignore_keys = ignore_sources
            .as_ref()
            .and_then(|sources| self.compile(&f.path_of("ignore_keys"), &[], sources));
        // The group entries merge over the app's: against nothing when the app's own are wrong
        // (already reported), so each mistake is reported once, at its place.
        let app_labels = labels.clone().unwrap_or_default();
        let app_ignore = ignore_keys.clone().flatten();
        let groups = self.groups(&f, global, &app_labels, app_ignore.as_ref());
        let discover = match f.get("discover") {
            None => Some(None),
            Some(v) => self.discover(&f.path_of("discover"), v).map(Some),
        };
        if matches!((&groups, &discover), (Some(g), Some(None)) if g.is_empty()) {
            self.error(
                path,
                "no groups to poll: list them under groups, or set discover to poll every group \
                 of the app",
            );
            return None;
        }

        // Every field has been checked (and its problems reported) before any `?` here.
        let (secret_key, secret_source) = secret??;
        let (callback_token, callback_token_source) = callback_token?.unzip();
        let (tls, tls_files) = tls?;
        Some(AppConfig {
            sdkappid: sdkappid?,
            region: region?,
            base_url: base_url?,
            identifier: identifier?,
            secret_key,
            secret_source,
            callback_token,
            callback_token_source,
            usersig_ttl: usersig_ttl?,
            rate_limit: rate_limit?,
            max_concurrency: max_concurrency?,
            timeout: timeout?,
            allow_insecure_http: allow_insecure_http?,
            tls,
            tls_files,
            labels: labels?,
            ignore_keys: ignore_keys?,
            groups: groups?,
            discover: discover?,
        })
    }

    /// `region` or `endpoint`, exactly one: the region (if any) and the base URL.
    fn api_location(
        &mut self,
        f: &Fields<'_>,
        insecure: bool,
    ) -> (Option<Option<Region>>, Option<Url>) {
        match (f.get("region"), f.get("endpoint")) {
            (None, None) => {
                self.error(
                    &f.path,
                    "set exactly one of region, endpoint: neither is set",
                );
                (None, None)
            }
            (Some(_), Some(_)) => {
                self.error(&f.path, "set exactly one of region, endpoint, not both");
                (None, None)
            }
            (Some(v), None) => {
                let p = f.path_of("region");
                let all = Region::ALL.map(Region::name).join(", ");
                let region = match v {
                    Value::String(s) => match Region::from_name(s) {
                        Some(r) => Some(r),
                        None => {
                            self.error(&p, format!("unknown region {s:?}: one of {all}"));
                            None
                        }
                    },
                    other => {
                        self.error(&p, format!("must be one of {all}, not {}", kind(other)));
                        None
                    }
                };
                if insecure {
                    self.warn(
                        &f.path_of("allow_insecure_http"),
                        "has no effect with region: region endpoints are https",
                    );
                }
                (region.map(Some), region.map(Region::base_url))
            }
            (None, Some(v)) => {
                let p = f.path_of("endpoint");
                let s = self.string(&p, v);
                let url = s.and_then(|s| match Url::parse(&s) {
                    Ok(url) => Some(url),
                    Err(e) => {
                        // The text is not echoed: it could hold a password.
                        self.error(
                            &p,
                            format!(
                                "not an absolute URL ({e}); write it like \
                                 https://adminapisgp.im.qcloud.com"
                            ),
                        );
                        None
                    }
                });
                let url = url.and_then(|mut url| match check_endpoint(&url, insecure) {
                    Ok(()) => {
                        if url.scheme() == "http" && !is_loopback(&url) {
                            self.warn(
                                &p,
                                format!(
                                    "plain http to {}: the UserSig travels unencrypted \
                                     (allow_insecure_http is set)",
                                    url.host_str().unwrap_or_default()
                                ),
                            );
                        }
                        if !url.path().ends_with('/') {
                            let path = format!("{}/", url.path());
                            url.set_path(&path);
                        }
                        Some(url)
                    }
                    Err(e) => {
                        self.error(&p, e);
                        None
                    }
                });
                (Some(None), url)
            }
        }
    }

    /// Exactly one of `<name>_file`, `<name>_env`, `<name>`, read and checked: `Some(None)` when
    /// none is set and the secret is optional. The value of a `_file` or `_env` field is never
    /// echoed in a problem: a secret pasted there instead of a path or a name would be.
    fn secret(
        &mut self,
        f: &Fields<'_>,
        name: &str,
        required: bool,
    ) -> Option<Option<(SecretKey, SecretSource)>> {
        let (file_key, env_key) = (format!("{name}_file"), format!("{name}_env"));
        let keys = [file_key.as_str(), env_key.as_str(), name];
        let set: Vec<&str> = keys.into_iter().filter(|k| f.has(k)).collect();
        let which = match set.as_slice() {
            [] if !required => return Some(None),
            [] => {
                self.error(
                    &f.path,
                    format!("set exactly one of {}: none is set", keys.join(", ")),
                );
                return None;
            }
            [one] => *one,
            several => {
                self.error(
                    &f.path,
                    format!(
                        "set exactly one of {}, not {}",
                        keys.join(", "),
                        several.join(" and ")
                    ),
                );
                return None;
            }
        };
        let p = f.path_of(which);
        let v = f.get(which).expect("`which` was found among the keys set");
        let read = if which == file_key {
            let path = self.base_dir.join(self.name(&p, v)?);
            match read_secret_file(&path) {
                Ok((key, mode)) => {
                    self.secrets.push(key.expose().to_owned());
                    if mode & 0o077 != 0 {
                        self.warn(
                            &p,
                            format!(
                                "{} is readable by group or others (mode {:04o}); chmod 600 it",
                                path.display(),
                                mode & 0o7777
                            ),
                        );
                    }
                    Some((key, SecretSource::File(path)))
                }
                Err(e) => {
                    self.error(&p, e);
                    None
                }
            }
        } else if which == env_key {
            let var = self.name(&p, v)?;
            if var.contains(['=', '\0']) {
                self.error(&p, "is not a valid environment variable name");
                return None;
            }
            match (self.env)(&var) {
                None => {
                    self.error(&p, "the environment variable it names is not set");
                    None
                }
                Some(raw) => {
                    self.secrets.push(raw.clone());
                    let key = SecretKey::new(raw);
                    if key.is_empty() {
                        self.error(&p, "the environment variable it names is empty");
                        return None;
                    }
                    Some((key, SecretSource::Env(var)))
                }
            }
        } else {
            let Value::String(raw) = v else {
                self.error(&p, format!("must be a string, not {}", kind(v)));
                return None;
            };
            self.secrets.push(raw.clone());
            let key = SecretKey::new(raw.as_str());
            if key.is_empty() {
                self.error(&p, "must not be empty");
                return None;
            }
            Some((key, SecretSource::Inline))
        };
        read.map(Some)
    }

    /// `tls_ca_file`, and `tls_cert_file` with `tls_key_file` (both or neither), read and
    /// checked. Like `secret_key_file`, a field's value is never echoed in a problem: a key
    /// pasted there instead of a path would be.
    fn tls(&mut self, f: &Fields<'_>) -> Option<(ClientTls, TlsFiles)> {
        let mut files = TlsFiles::default();
        let ca = match f.get("tls_ca_file") {
            None => Some(None),
            Some(v) => {
                let p = f.path_of("tls_ca_file");
                self.tls_file(&p, v, false).and_then(|(path, bytes)| {
                    files.ca_file = Some(path);
                    match client_tls::ca_certs(&bytes) {
                        Ok(certs) => Some(Some(certs)),
                        Err(e) => {
                            self.error(&p, e);
                            None
                        }
                    }
                })
            }
        };
        let identity = match (f.get("tls_cert_file"), f.get("tls_key_file")) {
            (None, None) => Some(None),
            (Some(_), None) | (None, Some(_)) => {
                self.error(
                    &f.path,
                    "set both tls_cert_file and tls_key_file for a client certificate, or neither",
                );
                None
            }
            (Some(cert), Some(key)) => {
                let (cert_path, key_path) = (f.path_of("tls_cert_file"), f.path_of("tls_key_file"));
                let chain = self
                    .tls_file(&cert_path, cert, false)
                    .and_then(|(path, bytes)| {
                        files.cert_file = Some(path);
                        client_tls::certificates(&bytes)
                            .map_err(|e| self.error(&cert_path, e))
                            .ok()
                    });
                let key = self
                    .tls_file(&key_path, key, true)
                    .and_then(|(path, bytes)| {
                        files.key_file = Some(path);
                        client_tls::private_key(&bytes)
                            .map_err(|e| self.error(&key_path, e))
                            .ok()
                    });
                match (chain, key) {
                    (Some(chain), Some(key)) => match client_tls::identity(chain, key) {
                        Ok(id) => Some(Some(id)),
                        Err(e) => {
                            self.error(&key_path, e);
                            None
                        }
                    },
                    _ => None,
                }
            }
        };
        Some((
            ClientTls {
                ca_certs: ca?,
                identity: identity?,
            },
            files,
        ))
    }

    /// Reads the file a `tls_*_file` field names: its resolved path and bytes. A private key
    /// (`secret`) is remembered for redaction and draws a warning when others may read it.
    fn tls_file(&mut self, p: &str, v: &Value, secret: bool) -> Option<(PathBuf, Vec<u8>)> {
        let path = self.base_dir.join(self.name(p, v)?);
        match read_tls_file(&path) {
            Ok((bytes, mode)) => {
                if secret {
                    self.secrets
                        .push(String::from_utf8_lossy(&bytes).trim().to_owned());
                    if mode & 0o077 != 0 {
                        self.warn(
                            p,
                            format!(
                                "{} is readable by group or others (mode {:04o}); chmod 600 it",
                                path.display(),
                                mode & 0o7777
                            ),
                        );
                    }
                }
                Some((path, bytes))
            }
            Err(e) => {
                self.error(p, e);
                None
            }
        }
    }

    fn usersig_ttl(&mut self, f: &Fields<'_>) -> Option<Duration> {
        let Some(v) = f.get("usersig_ttl") else {
            return Some(DEFAULT_USERSIG_TTL);
        };
        let p = f.path_of("usersig_ttl");
        let d = self.duration(&p, v)?;
        let problem = if d < MIN_USERSIG_TTL {
            format!(
                "must be at least {} (the UserSig is renewed at 80% of its life), got {}",
                duration::format(MIN_USERSIG_TTL),
                duration::format(d)
            )
        } else if d > MAX_USERSIG_TTL {
            format!(
                "must be at most {} (what the official libraries issue; the exporter renews it \
                 anyway), got {}",
                duration::format(MAX_USERSIG_TTL),
                duration::format(d)
            )
        } else if d.subsec_nanos() != 0 {
            format!(
                "must be whole seconds (it becomes TLS.expire), got {}",
                duration::format(d)
            )
        } else {
            return Some(d);
        };
        self.error(&p, problem);
        None
    }

    /// The `groups` list; absent or empty gives an empty list (the caller checks `discover`).
    fn groups(
        &mut self,
        f: &Fields<'_>,
        global: Duration,
        app_labels: &Labels,
        app_ignore: Option<&Arc<Patterns>>,
    ) -> Option<Vec<GroupConfig>> {
        let items = match f.get("groups") {
            None | Some(Value::Null) => return Some(Vec::new()),
            Some(Value::Sequence(items)) => items,
            Some(v) => {
                self.error(
                    f.path_of("groups"),
                    format!("must be a list of group IDs, not {}", kind(v)),
                );
                return None;
            }
        };
        let mut groups = Vec::with_capacity(items.len());
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut all_ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{}[{i}]", f.path_of("groups"));
            let group = match item {
                Value::String(id) => self.group_id(&p, id).map(|id| GroupConfig {
                    id,
                    poll_interval: global,
                    labels: Arc::clone(app_labels),
                    ignore_keys: app_ignore.cloned(),
                }),
                Value::Mapping(_) => self.group_entry(&p, item, global, app_labels, app_ignore),
                Value::Number(_) => {
                    self.error(
                        &p,
                        "a group ID must be a string: quote numeric IDs, like \"12345\"",
                    );
                    None
                }
                other => {
                    self.error(
                        &p,
                        format!(
                            "must be a group ID or {{id, poll_interval}}, not {}",
                            kind(other)
                        ),
                    );
                    None
                }
            };
            let Some(group) = group else {
                all_ok = false;
                continue;
            };
            // Borrow the ID from the document, which outlives this loop.
            let id = match item {
                Value::String(id) => id.as_str(),
                _ => item.get("id").and_then(Value::as_str).unwrap_or_default(),
            };
            if let Some(first) = seen.get(id) {
                self.error(
                    &p,
                    format!(
                        "duplicate group ID {id:?} (also {}[{first}])",
                        f.path_of("groups")
                    ),
                );
                all_ok = false;
            } else {
                seen.insert(id, i);
            }
            groups.push(group);
        }
        all_ok.then_some(groups)
    }

    fn group_entry(
        &mut self,
        path: &str,
        v: &Value,
        global: Duration,
        app_labels: &Labels,
        app_ignore: Option<&Arc<Patterns>>,
    ) -> Option<GroupConfig> {
        let f = self.fields(path, v, GROUP_KEYS)?;
        let id = match f.get("id") {
            None => {
                self.error(path, "missing id");
                None
            }
            Some(Value::String(id)) => self.group_id(&f.path_of("id"), id),
            Some(Value::Number(_)) => {
                self.error(
                    f.path_of("id"),
                    "a group ID must be a string: quote numeric IDs, like \"12345\"",
                );
                None
            }
            Some(v) => {
                self.error(
                    f.path_of("id"),
                    format!("must be a string, not {}", kind(v)),
                );
                None
            }
        };
        let poll_interval = self.duration_at_least(&f, "poll_interval", global, MIN_POLL_INTERVAL);
        let labels = self.labels(&f).map(|own| {
            if own.is_empty() {
                Arc::clone(app_labels)
            } else {
                let mut merged = (**app_labels).clone();
                merged.extend(own);
                Arc::new(merged)
            }
        });
        let ignore_keys =
            self.patterns(&f, "ignore_keys", "attribute keys")
                .and_then(|own| match (own.is_empty(), app_ignore) {
                    (true, inherited) => Some(inherited.cloned()),
                    (false, inherited) => {
                        let first = inherited.map(|p| p.sources()).unwrap_or_default();
                        self.compile(&f.path_of("ignore_keys"), first, &own)
                    }
                });
        Some(GroupConfig {
            id: id?,
            poll_interval: poll_interval?,
            labels: labels?,
            ignore_keys: ignore_keys?,
        })
    }

    /// `labels` of an app or a group: names checked as Prometheus label names, values strings.
    /// Absent gives an empty map; `None` after reporting a problem.
    fn labels(&mut self, f: &Fields<'_>) -> Option<BTreeMap<String, String>> {
        let path = f.path_of("labels");
        let map = match f.get("labels") {
            None | Some(Value::Null) => return Some(BTreeMap::new()),
            Some(Value::Mapping(map)) => map,
            Some(v) => {
                self.error(
                    &path,
                    format!(
                        "must be a mapping of label names to values, like {{team: rooms}}, not {}",
                        kind(v)
                    ),
                );
                return None;
            }
        };
        let mut labels = BTreeMap::new();
        let mut ok = true;
        for (k, v) in map {
            let Value::String(name) = k else {
                self.error(
                    &path,
                    format!("label names must be strings, found {}", kind(k)),
                );
                ok = false;
                continue;
            };
            if let Some(why) = label_name_problem(name) {
                // Echo only what looks like a name: anything else may be a value (a secret)
                // that lost its place.
                let shown = if is_plain_name(name) {
                    format!("{name:?}")
                } else {
                    "(not shown: not a plain name)".to_owned()
                };
                self.error(&path, format!("invalid label name {shown}: {why}"));
                ok = false;
                continue;
            }
            // An unquoted `true` or `1` is what anyone writes for a flag label
            // (`page_on_change: true`): taken as its text, as a Kubernetes label would be
            // once quoted. Quote it to keep a spelling YAML would normalise (`1.50`, `yes`).
            match v {
                Value::String(value) => {
                    labels.insert(name.clone(), value.clone());
                }
                Value::Bool(b) => {
                    labels.insert(name.clone(), b.to_string());
                }
                Value::Number(n) => {
                    labels.insert(name.clone(), n.to_string());
                }
                other => {
                    self.error(
                        join(&path, name),
                        format!(
                            "a label value must be a string (or a number, true or false), not {}",
                            kind(other)
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(labels)
    }

    /// A list of regular expressions under `key` (`ignore_keys`, `exclude_metrics`), each
    /// checked on its own so a problem names its entry. Absent gives an empty list; `None`
    /// after reporting a problem.
    fn patterns(&mut self, f: &Fields<'_>, key: &str, over: &str) -> Option<Vec<String>> {
        let path = f.path_of(key);
        let items = match f.get(key) {
            None | Some(Value::Null) => return Some(Vec::new()),
            Some(Value::Sequence(items)) => items,
            Some(v) => {
                self.error(
                    &path,
                    format!(
                        "must be a list of regular expressions (full match) over {over}, not {}",
                        kind(v)
                    ),
                );
                return None;
            }
        };
        let mut sources = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match item {
                Value::String(s) => match Patterns::check(s) {
                    Ok(()) => sources.push(s.clone()),
                    Err(e) => {
                        self.error(&p, e);
                        ok = false;
                    }
                },
                other => {
                    self.error(
                        &p,
                        format!(
                            "must be a regular expression as a string, not {}",
                            kind(other)
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(sources)
    }

    /// Compiles `first` then `more` into one set at `path`: `Some(None)` when both are empty,
    /// `None` after reporting a problem (only the size limit of the whole set can fail here:
    /// each pattern was checked on its own).
    fn compile(
        &mut self,
        path: &str,
        first: &[String],
        more: &[String],
    ) -> Option<Option<Arc<Patterns>>> {
        if first.is_empty() && more.is_empty() {
            return Some(None);
        }
        match Patterns::new(first.iter().chain(more).cloned()) {
            Ok(p) => Some(Some(Arc::new(p))),
            Err(e) => {
                self.error(path, e);
                None
            }
        }
    }

    fn group_id(&mut self, path: &str, id: &str) -> Option<String> {
        if id.is_empty() {
            self.error(path, "empty group ID");
            return None;
        }
        if id.len() > MAX_GROUP_ID_BYTES {
            self.error(
                path,
                format!(
                    "group ID {id:?} is {} bytes; Tencent allows at most {MAX_GROUP_ID_BYTES}",
                    id.len()
                ),
            );
            return None;
        }
        Some(id.to_owned())
    }

    fn discover(&mut self, path: &str, v: &Value) -> Option<DiscoverConfig> {
        if v.is_null() {
            self.error(
                path,
                "has no value: write `discover: {}` to poll every group of the app, or remove it",
            );
            return None;
        }
        let f = self.fields(path, v, DISCOVER_KEYS)?;
        let group_types = match f.get("group_types") {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Sequence(items)) => {
                let mut types: Vec<String> = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{}[{i}]", f.path_of("group_types"));
                    match item.as_str().and_then(normalise_group_type) {
                        Some(t) => {
                            if let Some(first) = types.iter().position(|s| s == t) {
                                self.error(
                                    &p,
                                    format!(
                                        "duplicate group type {t} (also {}[{first}])",
                                        f.path_of("group_types")
                                    ),
                                );
                                ok = false;
                            }
                            types.push(t.to_owned());
                        }
                        None => {
                            let what = match item.as_str() {
                                Some(s) => format!("unknown group type {s:?}"),
                                None => {
                                    format!("a group type must be a string, not {}", kind(item))
                                }
                            };
                            self.error(
                                &p,
                                format!(
                                    "{what}: one of {} (Work and Meeting are accepted as Private \
                                     and ChatRoom)",
                                    GROUP_TYPES.join(", ")
                                ),
                            );
                            ok = false;
                        }
                    }
                }
                ok.then_some(types)
            }
            Some(other) => {
                self.error(
                    f.path_of("group_types"),
                    format!("must be a list of group types, not {}", kind(other)),
                );
                None
            }
        };
        let refresh_interval = self.duration_at_least(
            &f,
            "refresh_interval",
            DEFAULT_DISCOVER_REFRESH,
            MIN_DISCOVER_REFRESH,
        );
        Some(DiscoverConfig {
            group_types: group_types?,
            refresh_interval: refresh_interval?,
        })
    }
}

/// Why `name` cannot be a label name in `labels` (SPEC: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting
/// with `__`, which Prometheus reserves for itself), or `None` when it can.
fn label_name_problem(name: &str) -> Option<&'static str> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Some(
            "a label name is ASCII letters, digits and underscores, not starting with a digit \
             ([a-zA-Z_][a-zA-Z0-9_]*)",
        );
    }
    if name.starts_with("__") {
        return Some("names starting with __ are reserved for Prometheus' own use");
    }
    None
}

fn normalise_group_type(s: &str) -> Option<&'static str> {
    GROUP_TYPES.into_iter().find(|t| *t == s).or_else(|| {
        GROUP_TYPE_ALIASES
            .into_iter()
            .find(|(alias, _)| *alias == s)
            .map(|(_, t)| t)
    })
}

/// Reads a regular file of at most `max` bytes, and returns its bytes and permission bits.
/// Problems do not name the path: a secret pasted into a `_file` field would be echoed.
/// `kind` says what a larger file cannot be ("a secret file", "a PEM file").
fn read_bounded_file(path: &Path, max: u64, kind: &str) -> Result<(Vec<u8>, u32), String> {
    let cannot = |e: std::io::Error| format!("cannot read the file it names: {e}");
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err("the file it names is not a regular file".into());
    }
    let mut raw = Vec::new();
    file.take(max + 1).read_to_end(&mut raw).map_err(cannot)?;
    if raw.len() as u64 > max {
        return Err(format!(
            "the file it names is larger than {max} bytes: not {kind}"
        ));
    }
    Ok((raw, file_mode(&meta)))
}

/// Reads a secret file, refusing anything that cannot be a key, and returns the key and the
/// file's permission bits.
fn read_secret_file(path: &Path) -> Result<(SecretKey, u32), String> {
    let (raw, mode) = read_bounded_file(path, MAX_SECRET_FILE_BYTES, "a secret file")?;
    let text = String::from_utf8(raw).map_err(|_| "the file it names is not UTF-8 text")?;
    let key = SecretKey::new(text);
    if key.is_empty() {
        return Err("the file it names is empty".into());
    }
    Ok((key, mode))
}

/// Reads a `tls_*_file` (PEM) and returns its bytes and permission bits.
fn read_tls_file(path: &Path) -> Result<(Vec<u8>, u32), String> {
    read_bounded_file(path, MAX_TLS_FILE_BYTES, "a PEM file")
}

#[cfg(unix)]
fn file_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode()
}

#[cfg(not(unix))]
fn file_mode(_meta: &std::fs::Metadata) -> u32 {
    0o600
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Checks that `url` can serve as an API base: absolute http(s) with a host, no credentials,
/// query or fragment, and plain http only to a loopback host (127.0.0.0/8, ::1, `localhost`)
/// unless `allow_insecure_http`. The message never repeats the URL (it could hold a password).
pub fn check_endpoint(url: &Url, allow_insecure_http: bool) -> Result<(), String> {
    let scheme = url.scheme();
    if scheme != "https" && scheme != "http" {
        return Err(format!(
            "scheme {scheme:?} is not supported: use https (or http to a loopback host)"
        ));
    }
    if url.host().is_none() {
        return Err("must name a host, like https://adminapisgp.im.qcloud.com".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password: URLs are logged".into());
    }
    if url.query().is_some() {
        return Err(
            "must not have a query string: the exporter sets sdkappid, identifier, usersig, \
             random and contenttype itself"
                .into(),
        );
    }
    if url.fragment().is_some() {
        return Err("must not have a fragment (#...)".into());
    }
    if scheme == "http" && !allow_insecure_http && !is_loopback(url) {
        return Err(
            "plain http is allowed only to a loopback host (127.0.0.0/8, ::1, localhost), because \
             the UserSig travels in the query string; use https, or set allow_insecure_http: true"
                .into(),
        );
    }
    Ok(())
}

/// Whether an unknown key can be echoed in an error: a short identifier, as every real key is.
/// Anything else (spaces, quotes, a long string) may be a value that lost its `:`, such as a
/// secret key.
fn is_plain_name(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 40
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Edit distance, for "did you mean" on unknown keys.
fn closest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    allowed
        .iter()
        .map(|a| (distance(&key.to_ascii_lowercase(), a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

impl Config {
    /// What `--config.check` prints: every app's API, credentials' source (never the key),
    /// limits, groups and discovery.
    pub fn summary(&self) -> String {
        let groups: usize = self.apps.iter().map(|a| a.groups.len()).sum();
        let discovering = self.apps.iter().filter(|a| a.discover.is_some()).count();
        let mut out = format!(
            "{} app(s), {groups} configured group(s), discovery in {discovering} app(s)\n",
            self.apps.len()
        );
        out.push_str(&format!(
            "poll_interval: {}\n",
            duration::format(self.poll_interval)
        ));
        match &self.state_file {
            Some(path) => out.push_str(&format!("state_file: {}\n", path.display())),
            None => out.push_str("state_file: none\n"),
        }
        let hashes = match self.value_hashes {
            ValueHashes::PerKey => "per_key",
            ValueHashes::PerGroup => "per_group",
            ValueHashes::Off => "off",
        };
        out.push_str(&format!("value_hashes: {hashes}\n"));
        // Counts, not the patterns or names: they are free text, and this is printed.
        if let Some(p) = &self.exclude_metrics {
            out.push_str(&format!(
                "exclude_metrics: {} pattern(s)\n",
                p.sources().len()
            ));
        }
        for app in &self.apps {
            out.push_str(&format!("app {}:\n", app.sdkappid));
            match app.region {
                Some(region) => out.push_str(&format!("  region: {region} ({})\n", app.base_url)),
                None => out.push_str(&format!("  endpoint: {}\n", app.base_url)),
            }
            out.push_str(&format!("  identifier: {}\n", app.identifier));
            out.push_str(&format!("  secret_key: from {}\n", app.secret_source));
            if let Some(source) = &app.callback_token_source {
                out.push_str(&format!("  callback_token: from {source}\n"));
            }
            if let (Some(path), Some(certs)) = (&app.tls_files.ca_file, &app.tls.ca_certs) {
                out.push_str(&format!(
                    "  tls_ca_file: {} ({} certificate(s), instead of the system roots)\n",
                    path.display(),
                    certs.len()
                ));
            }
            if let Some(path) = &app.tls_files.cert_file {
                out.push_str(&format!("  tls_cert_file: {}\n", path.display()));
            }
            out.push_str(&format!(
                "  usersig_ttl: {}, rate_limit: {}/s, max_concurrency: {}, timeout: {}\n",
                duration::format(app.usersig_ttl),
                app.rate_limit,
                app.max_concurrency,
                duration::format(app.timeout)
            ));
            let own = app
                .groups
                .iter()
                .filter(|g| g.poll_interval != self.poll_interval)
                .count();
            out.push_str(&format!(
                "  groups: {} ({own} polled at another interval than poll_interval)\n",
                app.groups.len()
            ));
            let own_settings = app
                .groups
                .iter()
                .filter(|g| {
                    !Arc::ptr_eq(&g.labels, &app.labels) || g.ignore_keys != app.ignore_keys
                })
                .count();
            if !app.labels.is_empty() || app.ignore_keys.is_some() || own_settings > 0 {
                out.push_str(&format!(
                    "  labels: {}, ignore_keys: {} pattern(s); {own_settings} group(s) with \
                     labels or ignore_keys of their own\n",
                    app.labels.len(),
                    app.ignore_keys.as_ref().map_or(0, |p| p.sources().len()),
                ));
            }
            match &app.discover {
                None => out.push_str("  discover: off\n"),
                Some(d) => {
                    let types = if d.group_types.is_empty() {
                        "all group types".to_owned()
                    } else {
                        d.group_types.join(", ")
                    };
                    out.push_str(&format!(
                        "  discover: {types}, refreshed every {}\n",
                        duration::format(d.refresh_interval)
                    ));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_quotes(yaml: &str) -> Vec<(usize, usize, char)> {
        LineScan::new(yaml)
            .open_quotes
            .iter()
            .map(|q| (q.line, q.column, q.quote))
            .collect()
    }

    #[test]
    fn the_line_scan_knows_escaped_quotes_and_counts_columns_in_chars() {
        assert_eq!(open_quotes("a: \"x\\\"\"\nb: 'it''s'\n"), []);
        assert_eq!(
            open_quotes("a: \"x\\\"\nb: 'it''s\nc: don't\n"),
            [(1, 4, '"'), (2, 4, '\'')]
        );
        assert_eq!(open_quotes("é: [\"ok\", \"no\n"), [(1, 11, '"')]);
    }

    #[test]
    fn quoting_escapes_and_keeps_the_lines() {
        let yaml = "a: [@x\\y\"z, @b]\r\nc: @d  # note\n";
        let scan = LineScan::new(yaml);
        let copy = scan.rewrite(yaml, |_, v| double_quoted(v));
        assert_eq!(copy, "a: [\"@x\\\\y\\\"z\", \"@b\"]\r\nc: \"@d\"  # note\n");
        let doc: Value = serde_yaml::from_str(&copy).expect("valid YAML");
        assert_eq!(doc["a"][0].as_str(), Some("@x\\y\"z"));
        assert_eq!(doc["c"].as_str(), Some("@d"));
    }
}
