//! The built-in scenario behind `timattr_exporter --demo`: one app whose groups show every
//! state the exporter reports — healthy, changing, destroyed (10010), a type without attribute
//! support (10007), an invalid ID (10015), flaky (10002 and timeouts) and slow.
//!
//! `config/scenarios/demo.yml` is the same scenario as a file, for `timattr_fake_api`.
//! [`demo_config`] is the exporter's side: the config that polls it.

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::Fault;
use super::model::{AppSpec, GroupType};
use super::scenario::{Action, Event, Scenario, Schedule};
use crate::config::{
    AppConfig, Config, DEFAULT_MAX_CONCURRENCY, GroupConfig, Labels, SecretSource,
};
use crate::metrics::ValueHashes;
use crate::secret::SecretKey;

pub const DEMO_SDKAPPID: u64 = 1_400_000_000;
pub const DEMO_IDENTIFIER: &str = "administrator";
/// Not a secret: the demo's made-up key, known to both sides of `--demo`.
pub const DEMO_SECRET_KEY: &str =
    "d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0";

const LOBBY: &str = "@TGS#demo_lobby";
const STAGE: &str = "@TGS#demo_stage";
const MEETING: &str = "@TGS#demo_meeting";
const TICKER: &str = "@TGS#demo_ticker";
const DOOMED: &str = "@TGS#demo_doomed";
const COMMUNITY: &str = "@TGS#demo_community";
const FLAKY: &str = "@TGS#demo_flaky";
const SLOW: &str = "@TGS#demo_slow";
/// Not a valid group ID (it has spaces), so the API answers 10015; within 48 bytes, so the
/// config accepts it.
const INVALID: &str = "@TGS#demo invalid id";

/// The demo app's callback token: the fake signs its callbacks with it and the exporter
/// verifies them, as a real app's should be.
pub const DEMO_CALLBACK_TOKEN: &str = "demo-callback-token";
/// How often the demo config polls each group: short, so changes show quickly.
pub const DEMO_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// The demo config's `rate_limit`, requests per second.
const DEMO_RATE_LIMIT: f64 = 50.0;
/// The demo config's `usersig_ttl`.
const DEMO_USERSIG_TTL: Duration = Duration::from_secs(3600);
/// The demo config's `timeout`: short, so the slow group's timeouts show quickly too.
const DEMO_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the ticker group's attributes change.
pub const DEMO_CHANGE_PERIOD: Duration = Duration::from_secs(30);
/// When the doomed group is destroyed.
pub const DEMO_DESTROY_AFTER: Duration = Duration::from_secs(60);

/// The demo scenario (see the module docs).
pub fn demo_scenario() -> Scenario {
    let app = DEMO_SDKAPPID;
    let mut spec = AppSpec::new(app, DEMO_IDENTIFIER, SecretKey::new(DEMO_SECRET_KEY));
    // Community groups answer 10007, as older pages of the reference describe.
    spec.attr_unsupported = vec![GroupType::Community];
    Scenario::new()
        .app(spec)
        .group(
            app,
            LOBBY,
            GroupType::Public,
            &[("topic", "welcome"), ("mode", "open"), ("owner", "ops")],
        )
        .group(
            app,
            STAGE,
            GroupType::AVChatRoom,
            &[("stage", "live"), ("host", "alice"), ("viewers", "120")],
        )
        .group(
            app,
            MEETING,
            GroupType::ChatRoom,
            &[("agenda", "weekly sync"), ("room", "3F-12")],
        )
        .group(
            app,
            TICKER,
            GroupType::Public,
            &[("round", "0"), ("price", "100")],
        )
        .group(
            app,
            DOOMED,
            GroupType::Public,
            &[("status", "closing soon")],
        )
        .group(app, COMMUNITY, GroupType::Community, &[("ignored", "yes")])
        .group(app, FLAKY, GroupType::Public, &[("weather", "stormy")])
        .group(app, SLOW, GroupType::AVChatRoom, &[("pace", "leisurely")])
        .event(Event {
            schedule: Schedule::Every {
                period: DEMO_CHANGE_PERIOD,
                first: DEMO_CHANGE_PERIOD,
            },
            sdkappid: app,
            group: Some(TICKER.to_owned()),
            action: Action::ModifyAttrs(vec![
                ("round".to_owned(), "{n}".to_owned()),
                ("price".to_owned(), "1{n}0".to_owned()),
            ]),
        })
        .event(Event {
            schedule: Schedule::At(DEMO_DESTROY_AFTER),
            sdkappid: app,
            group: Some(DOOMED.to_owned()),
            action: Action::Destroy,
        })
        .event(Event {
            schedule: Schedule::At(Duration::ZERO),
            sdkappid: app,
            group: Some(FLAKY.to_owned()),
            action: Action::Fault(Some(Fault::Flaky {
                p_error: 0.3,
                p_timeout: 0.05,
            })),
        })
        .event(Event {
            schedule: Schedule::At(Duration::ZERO),
            sdkappid: app,
            group: Some(SLOW.to_owned()),
            action: Action::Fault(Some(Fault::Latency(Duration::from_millis(800)))),
        })
}

/// The group IDs the exporter's demo config polls, the invalid one included.
pub fn demo_group_ids() -> Vec<String> {
    [
        LOBBY, STAGE, MEETING, TICKER, DOOMED, COMMUNITY, FLAKY, SLOW, INVALID,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The exporter's config for `--demo`: the demo app behind the fake API at `base_url`, every
/// group of [`demo_group_ids`] polled every [`DEMO_POLL_INTERVAL`]. Built as a value, not
/// parsed: it is the config a file with these settings gives (see the test), without a YAML
/// round trip that could only fail by a bug.
pub fn demo_config(base_url: &Url) -> Config {
    // As the config file's `endpoint`: API paths join onto a base ending in `/`.
    let mut base_url = base_url.clone();
    if !base_url.path().ends_with('/') {
        let path = format!("{}/", base_url.path());
        base_url.set_path(&path);
    }
    let labels = Labels::default();
    let groups = demo_group_ids()
        .into_iter()
        .map(|id| GroupConfig {
            id,
            poll_interval: DEMO_POLL_INTERVAL,
            labels: Arc::clone(&labels),
            ignore_keys: None,
        })
        .collect();
    Config {
        poll_interval: DEMO_POLL_INTERVAL,
        state_file: None,
        value_hashes: ValueHashes::PerKey,
        exclude_metrics: None,
        apps: vec![AppConfig {
            sdkappid: DEMO_SDKAPPID,
            region: None,
            base_url,
            identifier: DEMO_IDENTIFIER.to_owned(),
            secret_key: SecretKey::new(DEMO_SECRET_KEY),
            secret_source: SecretSource::Inline,
            callback_token: Some(SecretKey::new(DEMO_CALLBACK_TOKEN)),
            callback_token_source: Some(SecretSource::Inline),
            usersig_ttl: DEMO_USERSIG_TTL,
            rate_limit: DEMO_RATE_LIMIT,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            timeout: DEMO_TIMEOUT,
            allow_insecure_http: false,
            tls: Default::default(),
            tls_files: Default::default(),
            labels,
            ignore_keys: None,
            groups,
            discover: None,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    /// The YAML `main.rs` used to build and parse for `--demo`, verbatim.
    fn old_demo_yaml(base_url: &Url) -> String {
        let groups: String = demo_group_ids()
            .iter()
            .map(|id| format!("      - {}\n", serde_json::Value::String(id.clone())))
            .collect();
        format!(
            "poll_interval: 10s\nvalue_hashes: per_key\napps:\n  - sdkappid: {app}\n    endpoint: {endpoint}\n    identifier: {ident}\n    secret_key: {key}\n    callback_token: {token}\n    usersig_ttl: 1h\n    rate_limit: 50\n    timeout: 2s\n    groups:\n{groups}",
            app = DEMO_SDKAPPID,
            endpoint = serde_json::Value::String(base_url.to_string()),
            ident = serde_json::Value::String(DEMO_IDENTIFIER.to_owned()),
            key = serde_json::Value::String(DEMO_SECRET_KEY.to_owned()),
            token = serde_json::Value::String(DEMO_CALLBACK_TOKEN.to_owned()),
        )
    }

    #[test]
    fn demo_config_is_what_the_old_yaml_gave() {
        for base in [
            "http://127.0.0.1:41234/",
            "http://127.0.0.1:41234",
            "http://localhost:8080/prefix",
        ] {
            let base_url = Url::parse(base).expect("a valid URL");
            let parsed = config::parse(
                &old_demo_yaml(&base_url),
                &|_| None,
                std::path::Path::new("."),
            )
            .unwrap_or_else(|e| panic!("{base}: the old demo YAML is invalid: {e}"))
            .config;
            assert_eq!(demo_config(&base_url), parsed, "{base}");
        }
    }

    #[test]
    fn demo_config_polls_every_demo_group() {
        let config = demo_config(&Url::parse("http://127.0.0.1:1/").expect("a valid URL"));
        let ids: Vec<String> = config.apps[0].groups.iter().map(|g| g.id.clone()).collect();
        assert_eq!(ids, demo_group_ids());
        assert!(config.apps[0].groups.len() > 1);
    }
}
