//! The built-in scenario behind `timattr_exporter --demo`: one app whose groups show every
//! state the exporter reports — healthy, changing, destroyed (10010), a type without attribute
//! support (10007), an invalid ID (10015), flaky (10002 and timeouts) and slow.
//!
//! `config/scenarios/demo.yml` is the same scenario as a file, for `timattr_fake_api`.

use std::time::Duration;

use super::Fault;
use super::model::{AppSpec, GroupType};
use super::scenario::{Action, Event, Scenario, Schedule};
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
/// 50 bytes: over the 48 a group ID may have, so the API answers 10015.
const INVALID: &str = "@TGS#demo invalid id";

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
