//! Shared helpers for the integration tests: a fake API with one app, the exporter binary as a
//! child process with captured logs, scraping, and waiting for conditions instead of sleeping.
#![allow(dead_code)]

pub mod ca;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use timattr_exporter::fake::{AppSpec, Fake, FakeServer, GroupType, Scenario};
use timattr_exporter::secret::SecretKey;

pub const APP: u64 = 1_400_000_001;
pub const ADMIN: &str = "administrator";
/// Distinctive, so a test can grep every output for it.
pub const KEY: &str = "s3cr3t-KEY-4e1f0c9d2b7a6e5f8c3d1b0a9e8f7c6d";

/// A fake API serving one app whose admin signs with [`KEY`].
pub async fn fake_with_app() -> FakeServer {
    install_crypto();
    let server = Fake::start(Scenario::default())
        .await
        .expect("fake API starts");
    server
        .fake
        .add_app(AppSpec::new(APP, ADMIN, SecretKey::new(KEY)));
    server
}

pub fn group(server: &FakeServer, id: &str, attrs: &[(&str, &str)]) {
    server
        .fake
        .create_group(APP, id, GroupType::Public)
        .expect("group created");
    server.fake.set_attrs(APP, id, attrs).expect("attrs set");
}

/// A config file for the exporter pointing at the fake, with the key in a file.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new(base_url: &str, groups: &[&str], extra_top: &str) -> ConfigDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("key"), format!("{KEY}\n")).expect("write key");
        let mut perms = std::fs::metadata(dir.path().join("key"))
            .unwrap()
            .permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(dir.path().join("key"), perms).unwrap();
        let cfg = ConfigDir { dir };
        cfg.write(base_url, groups, extra_top);
        cfg
    }

    pub fn write(&self, base_url: &str, groups: &[&str], extra_top: &str) {
        let groups: String = groups
            .iter()
            .map(|g| format!("      - \"{g}\"\n"))
            .collect();
        let yaml = format!(
            "poll_interval: 1s\n{extra_top}apps:\n  - sdkappid: {APP}\n    endpoint: {base_url}\n    identifier: {ADMIN}\n    secret_key_file: key\n    rate_limit: 50\n    timeout: 2s\n    usersig_ttl: 1h\n    groups:\n{groups}"
        );
        std::fs::write(self.path(), yaml).expect("write config");
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("timattr.yml")
    }
}

/// The exporter binary as a child process; stderr (the log) is collected line by line.
pub struct Exporter {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

pub fn exporter_bin() -> &'static str {
    env!("CARGO_BIN_EXE_timattr_exporter")
}

impl Exporter {
    /// Starts the exporter on 127.0.0.1:0 and learns the bound port from its startup log line.
    pub fn start(config: &Path, extra: &[&str]) -> Exporter {
        Exporter::start_with_env(config, extra, &[])
    }

    /// [`Exporter::start`] with extra environment variables (`HOSTNAME` for
    /// `--shard.from-hostname`).
    pub fn start_with_env(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Exporter {
        let config = format!("--config.file={}", config.display());
        let mut args = vec![config.as_str()];
        args.extend_from_slice(extra);
        Exporter::spawn(&args, env)
    }

    /// The exporter's own `--demo`, with its built-in fake API.
    pub fn start_demo(extra: &[&str]) -> Exporter {
        let mut args = vec!["--demo"];
        args.extend_from_slice(extra);
        Exporter::spawn(&args, &[])
    }

    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Exporter {
        let mut all = vec!["--web.listen-address=127.0.0.1:0"];
        all.extend_from_slice(args);
        Exporter::spawn_exact(&all, env)
    }

    /// The binary with exactly `args` (no `--web.listen-address` added, unlike [`Exporter::start`]),
    /// once its startup line is logged; `addr` is the address it logged it listens on.
    pub fn spawn_exact(args: &[&str], env: &[(&str, &str)]) -> Exporter {
        let mut child = Command::new(exporter_bin())
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("exporter starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut exporter = Exporter {
            child,
            addr: String::new(),
            log,
        };
        let line = exporter
            .wait_for_log("timattr_exporter starting", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no startup line: {}", exporter.logs()));
        let addr = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("listen_address="))
            .expect("listen_address in the startup line")
            .trim_matches('"')
            .to_owned();
        exporter.addr = addr;
        exporter
    }

    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit, returning its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// reqwest is built without a default rustls provider; the exporter installs ring's.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `GET url`'s body. Bounded by a timeout: a server that accepts and never answers fails the
/// test instead of hanging it.
pub async fn scrape(url: &str) -> String {
    install_crypto();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    client
        .get(url)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body")
}

/// The value of the first sample whose line starts with `series` (name plus labels as rendered).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let rest = rest.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Polls `check` until it returns Some or the timeout passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One parsed sample line of the text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the sample lines of a text exposition (label values unescaped).
pub fn parse_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => {
                let mut it = line.split_whitespace();
                let name = it.next().unwrap_or_default();
                let value = it.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                out.push(Sample {
                    name: name.to_owned(),
                    labels: vec![],
                    value,
                });
                continue;
            }
        };
        let mut labels = Vec::new();
        let mut chars = rest.char_indices().peekable();
        let mut key = String::new();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = i + 1;
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    // value in quotes
                    let _ = chars.next(); // opening quote
                    let mut value = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(c) => value.push(c),
                                None => {}
                            },
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
        let value = rest[end..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

/// The value of the sample `name` whose labels include all of `want`.
pub fn value(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    parse_samples(text).into_iter().find_map(|s| {
        (s.name == name
            && want
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v)))
        .then_some(s.value)
    })
}

/// SPEC's value hash, computed independently of the exporter: the first 6 bytes of the
/// SHA-256 of the value, as a big-endian integer.
pub fn value_hash(value: &str) -> f64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(value.as_bytes());
    digest[..6]
        .iter()
        .fold(0u64, |n, b| (n << 8) | u64::from(*b)) as f64
}

/// Every metric family SPEC.md "Metrics" and "Callbacks (push)" name, copied by hand from SPEC
/// (not from the exporter's own table): `tests/families.rs` checks a running exporter against
/// it, and the shipped rules and dashboard may only query these.
pub const SPEC_FAMILIES: &[&str] = &[
    "timattr_group_up",
    "timattr_group_error_code",
    "timattr_group_attributes",
    "timattr_group_attributes_bytes",
    "timattr_group_attributes_hash",
    "timattr_group_attribute_value_hash",
    "timattr_group_attribute_changes_total",
    "timattr_group_last_change_timestamp_seconds",
    "timattr_group_last_success_timestamp_seconds",
    "timattr_group_labels",
    "timattr_groups",
    "timattr_groups_by_error_code",
    "timattr_api_requests_total",
    "timattr_api_errors_total",
    "timattr_api_request_failures_total",
    "timattr_api_request_duration_seconds",
    "timattr_poll_lag_seconds",
    "timattr_usersig_expiry_timestamp_seconds",
    "timattr_build_info",
    "timattr_config_last_reload_successful",
    "timattr_config_last_reload_success_timestamp_seconds",
    "timattr_shard_ordinal",
    "timattr_total_shards",
    "timattr_callbacks_total",
    "timattr_callback_rejections_total",
];

/// One entry of the config's `apps` list.
pub struct AppYaml<'a> {
    pub sdkappid: u64,
    pub endpoint: &'a str,
    pub key: &'a str,
    pub rate_limit: f64,
    pub max_concurrency: usize,
    pub timeout: &'a str,
    pub groups: &'a [String],
    /// More lines of the app (a `discover` block, extra group entries), indented by four.
    pub extra: &'a str,
}

impl AppYaml<'_> {
    pub fn render(&self) -> String {
        let groups = if self.groups.is_empty() {
            String::new()
        } else {
            let list: String = self
                .groups
                .iter()
                .map(|g| format!("      - {}\n", serde_json::Value::String(g.clone())))
                .collect();
            format!("    groups:\n{list}")
        };
        format!(
            "  - sdkappid: {}\n    endpoint: {}\n    identifier: {ADMIN}\n    secret_key: {}\n    rate_limit: {}\n    max_concurrency: {}\n    timeout: {}\n    usersig_ttl: 1h\n{groups}{}",
            self.sdkappid,
            serde_json::Value::String(self.endpoint.to_owned()),
            serde_json::Value::String(self.key.to_owned()),
            self.rate_limit,
            self.max_concurrency,
            self.timeout,
            self.extra,
        )
    }
}

pub fn config_yaml(top: &str, apps: &[AppYaml<'_>]) -> String {
    let apps: String = apps.iter().map(AppYaml::render).collect();
    format!("{top}apps:\n{apps}")
}
