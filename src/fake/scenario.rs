//! Scenarios: the fake's apps, groups and timed events as data, written in YAML (strict: unknown
//! keys are errors) or built in code, so a demo or a test is a file, not a program.
//!
//! ```yaml
//! apps:
//!   - sdkappid: 1400000000
//!     identifier: administrator
//!     secret_key: "..."            # or secret_key_env: NAME (exactly one)
//!     rate_limits: {get_group_attr: 200, get_appid_group_list: 1, writes: 200}  # null = unlimited
//!     attr_support: {Community: false}   # types without attribute support answer 10007
//!     groups:
//!       - id: "@TGS#lobby"          # IDs starting with @ must be quoted in YAML
//!         type: Public              # Private|Work, Public, ChatRoom|Meeting, AVChatRoom, Community
//!         attrs: {topic: welcome}
//!     generate:                     # bulk groups: {prefix}0 .. {prefix}{count-1}
//!       - {count: 100000, prefix: "@TGS#bench", attrs: 4, value_bytes: 16, type: Public}
//! events:                           # times count from the fake's start
//!   - every: 30s                    # or `at: 1m`; `start: 10s` moves an `every`'s first run
//!     group: "@TGS#lobby"           # `sdkappid:` too when there is more than one app
//!     modify_attrs: {round: "{n}"}  # {n} is the run number, 1, 2, ...
//!   - at: 1m
//!     group: "@TGS#lobby"
//!     destroy: true
//! ```
//! Actions (exactly one per event): `set_attrs`, `modify_attrs`, `delete_attrs: [k]`,
//! `clear_attrs: true`, `destroy: true`, `create: <type>`, `fault: <fault>` (on `group`, else on
//! the app), `clear_fault: true`, `rotate_key: KEY` or `rotate_key_env: NAME`,
//! `attr_support: {type: Community, supported: true}`.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use tokio::time::{Instant, MissedTickBehavior};

use super::model::{App, AppSpec, GroupType, RateLimits, WriteKind, valid_group_id};
use super::{Fake, Fault, FaultTarget, MAX_KEYS, MAX_TOTAL_VALUE_BYTES, MAX_VALUE_BYTES};
use crate::secret::SecretKey;

/// Groups one `generate` entry may make; a typo of an extra zero should fail, not eat the RAM.
pub const MAX_GENERATED_GROUPS: u64 = 10_000_000;
/// Value size of generated attributes unless `value_bytes` says otherwise.
pub const DEFAULT_VALUE_BYTES: usize = 16;

/// Apps, groups and timed events for a [`Fake`].
#[derive(Debug, Clone, Default)]
pub struct Scenario {
    pub apps: Vec<AppSpec>,
    pub groups: Vec<GroupSpec>,
    pub generate: Vec<Generate>,
    pub events: Vec<Event>,
}

/// One group to create at start.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    pub sdkappid: u64,
    pub id: String,
    pub group_type: GroupType,
    pub attrs: Vec<(String, String)>,
}

/// Groups made in bulk: IDs `{prefix}{i}` for i in 0..count, each with `attrs` attributes
/// `attr0..` whose values are `value_bytes` long and differ per group.
#[derive(Debug, Clone, PartialEq)]
pub struct Generate {
    pub sdkappid: u64,
    pub count: u64,
    pub prefix: String,
    pub attrs: usize,
    pub value_bytes: usize,
    pub group_type: GroupType,
}

/// An action at a time, or at every period.
#[derive(Debug, Clone)]
pub struct Event {
    pub schedule: Schedule,
    pub sdkappid: u64,
    pub group: Option<String>,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Once, this long after the start.
    At(Duration),
    /// First at `first` after the start, then every `period`.
    Every { period: Duration, first: Duration },
}

/// What an event does. Attribute templates may hold `{n}`, the run number (1, 2, ...).
#[derive(Debug, Clone)]
pub enum Action {
    SetAttrs(Vec<(String, String)>),
    ModifyAttrs(Vec<(String, String)>),
    DeleteAttrs(Vec<String>),
    ClearAttrs,
    Destroy,
    Create(GroupType),
    /// On the event's group if it names one, else on the app; `None` clears it.
    Fault(Option<Fault>),
    RotateKey(SecretKey),
    AttrSupport {
        group_type: GroupType,
        supported: bool,
    },
}

impl Scenario {
    pub fn new() -> Self {
        Scenario::default()
    }

    pub fn app(mut self, app: AppSpec) -> Self {
        self.apps.push(app);
        self
    }

    pub fn group(
        mut self,
        sdkappid: u64,
        id: &str,
        group_type: GroupType,
        attrs: &[(&str, &str)],
    ) -> Self {
        self.groups.push(GroupSpec {
            sdkappid,
            id: id.to_owned(),
            group_type,
            attrs: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
        self
    }

    pub fn generate(mut self, generate: Generate) -> Self {
        self.generate.push(generate);
        self
    }

    pub fn event(mut self, event: Event) -> Self {
        self.events.push(event);
        self
    }

    /// Reads and validates a scenario file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            problems: vec![format!("cannot read {}: {e}", path.display())],
        })?;
        Scenario::from_yaml(&text)
    }

    /// Parses and validates a scenario, reporting every problem at once, each with its place
    /// (`apps[0].groups[3].id: ...`). Environment variables named by `secret_key_env` and
    /// `rotate_key_env` are read here.
    pub fn from_yaml(text: &str) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = serde_yaml::from_str(text).map_err(|e| {
            let mut msg = e.to_string();
            if msg.contains("cannot start any") {
                msg.push_str(" (group IDs starting with @ must be quoted in YAML)");
            }
            ScenarioError {
                problems: vec![msg],
            }
        })?;
        raw.resolve(&|name| std::env::var(name).ok())
    }
}

/// Everything wrong with a scenario, one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ScenarioError {
    pub problems: Vec<String>,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid scenario: {}", self.problems.join("; "))
    }
}

/// Scenario durations are the exporter's own Prometheus-style durations.
pub use crate::duration::{format as format_duration, parse as parse_duration};

/// Serde for `Duration` fields written as Prometheus-style strings.
pub mod duration_serde {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(D::Error::custom)
    }
}

#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        duration_serde::deserialize(d).map(Dur)
    }
}

/// Attributes as written: a mapping, in order; numbers and booleans are taken as their text.
#[derive(Debug, Clone, Default)]
struct Attrs(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Attrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = serde_yaml::Mapping::deserialize(d)?;
        let scalar = |v: &serde_yaml::Value| match v {
            serde_yaml::Value::String(s) => Some(s.clone()),
            serde_yaml::Value::Number(n) => Some(n.to_string()),
            serde_yaml::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        map.iter()
            .map(|(k, v)| match (scalar(k), scalar(v)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(D::Error::custom(
                    "attributes are a mapping of key: value strings",
                )),
            })
            .collect::<Result<_, _>>()
            .map(Attrs)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    apps: Vec<RawApp>,
    #[serde(default)]
    events: Vec<RawEvent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    sdkappid: u64,
    identifier: String,
    secret_key: Option<String>,
    secret_key_env: Option<String>,
    #[serde(default)]
    rate_limits: RateLimits,
    #[serde(default)]
    attr_support: std::collections::BTreeMap<GroupType, bool>,
    #[serde(default)]
    groups: Vec<RawGroup>,
    #[serde(default)]
    generate: Vec<RawGenerate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    id: String,
    #[serde(rename = "type", default = "default_type")]
    group_type: GroupType,
    #[serde(default)]
    attrs: Attrs,
}

fn default_type() -> GroupType {
    GroupType::Public
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGenerate {
    count: u64,
    prefix: String,
    #[serde(default)]
    attrs: usize,
    #[serde(default = "default_value_bytes")]
    value_bytes: usize,
    #[serde(rename = "type", default = "default_type")]
    group_type: GroupType,
}

fn default_value_bytes() -> usize {
    DEFAULT_VALUE_BYTES
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at: Option<Dur>,
    every: Option<Dur>,
    start: Option<Dur>,
    sdkappid: Option<u64>,
    group: Option<String>,
    set_attrs: Option<Attrs>,
    modify_attrs: Option<Attrs>,
    delete_attrs: Option<Vec<String>>,
    clear_attrs: Option<bool>,
    destroy: Option<bool>,
    create: Option<GroupType>,
    /// serde_yaml writes enums as `!tag value`; read the `{variant: value}` form people write.
    #[serde(
        default,
        deserialize_with = "serde_yaml::with::singleton_map_recursive::deserialize"
    )]
    fault: Option<Fault>,
    clear_fault: Option<bool>,
    rotate_key: Option<String>,
    rotate_key_env: Option<String>,
    attr_support: Option<RawSupport>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupport {
    #[serde(rename = "type")]
    group_type: GroupType,
    supported: bool,
}

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn secret_from(
    place: &str,
    literal: Option<String>,
    env_name: Option<String>,
    names: (&str, &str),
    env: Env<'_>,
    problems: &mut Vec<String>,
) -> Option<SecretKey> {
    match (literal, env_name) {
        (Some(k), None) if !k.trim().is_empty() => Some(SecretKey::new(k)),
        (Some(_), None) => {
            problems.push(format!("{place}.{}: is empty", names.0));
            None
        }
        (None, Some(name)) => match env(&name).map(SecretKey::new) {
            Some(k) if !k.is_empty() => Some(k),
            _ => {
                problems.push(format!(
                    "{place}.{}: environment variable {name} is not set or empty",
                    names.1
                ));
                None
            }
        },
        (Some(_), Some(_)) => {
            problems.push(format!(
                "{place}: set only one of {} and {}",
                names.0, names.1
            ));
            None
        }
        (None, None) => {
            problems.push(format!(
                "{place}: one of {} and {} is required",
                names.0, names.1
            ));
            None
        }
    }
}

impl RawScenario {
    fn resolve(self, env: Env<'_>) -> Result<Scenario, ScenarioError> {
        let mut problems = Vec::new();
        let mut scenario = Scenario::new();
        let mut seen_apps = HashSet::new();
        for (i, app) in self.apps.into_iter().enumerate() {
            let place = format!("apps[{i}]");
            if !seen_apps.insert(app.sdkappid) {
                problems.push(format!("{place}.sdkappid: {} appears twice", app.sdkappid));
            }
            if app.identifier.is_empty() {
                problems.push(format!("{place}.identifier: is empty"));
            }
            let key = secret_from(
                &place,
                app.secret_key,
                app.secret_key_env,
                ("secret_key", "secret_key_env"),
                env,
                &mut problems,
            );
            let mut spec = AppSpec::new(
                app.sdkappid,
                app.identifier,
                key.unwrap_or_else(|| SecretKey::new("")),
            );
            spec.rate_limits = app.rate_limits;
            spec.attr_unsupported = app
                .attr_support
                .iter()
                .filter(|(_, supported)| !**supported)
                .map(|(t, _)| *t)
                .collect();
            for g in app.groups {
                scenario.groups.push(GroupSpec {
                    sdkappid: spec.sdkappid,
                    id: g.id,
                    group_type: g.group_type,
                    attrs: g.attrs.0,
                });
            }
            for (j, g) in app.generate.into_iter().enumerate() {
                let place = format!("{place}.generate[{j}]");
                if g.count > MAX_GENERATED_GROUPS {
                    problems.push(format!("{place}.count: at most {MAX_GENERATED_GROUPS}"));
                }
                if g.attrs > MAX_KEYS {
                    problems.push(format!("{place}.attrs: at most {MAX_KEYS} per group"));
                }
                if g.value_bytes > MAX_VALUE_BYTES
                    || g.attrs * g.value_bytes > MAX_TOTAL_VALUE_BYTES
                {
                    problems.push(format!(
                        "{place}.value_bytes: values are limited to {MAX_VALUE_BYTES} bytes each and {MAX_TOTAL_VALUE_BYTES} in all"
                    ));
                }
                let last = format!("{}{}", g.prefix, g.count.saturating_sub(1));
                if !valid_group_id(&last) {
                    problems.push(format!(
                        "{place}.prefix: makes invalid group IDs such as {last:?} (printable ASCII without spaces, at most {} bytes)",
                        super::MAX_GROUP_ID_BYTES
                    ));
                }
                scenario.generate.push(Generate {
                    sdkappid: spec.sdkappid,
                    count: g.count,
                    prefix: g.prefix,
                    attrs: g.attrs,
                    value_bytes: g.value_bytes,
                    group_type: g.group_type,
                });
            }
            scenario.apps.push(spec);
        }
        // Check the groups against the API's own rules by building them in scratch apps.
        let mut scratch: std::collections::HashMap<u64, App> = scenario
            .apps
            .iter()
            .map(|a| (a.sdkappid, App::new(a.clone())))
            .collect();
        let mut group_index = std::collections::HashMap::<u64, usize>::new();
        for g in &scenario.groups {
            let j = group_index.entry(g.sdkappid).or_default();
            let place = format!(
                "apps[{}].groups[{j}]",
                scenario
                    .apps
                    .iter()
                    .position(|a| a.sdkappid == g.sdkappid)
                    .unwrap_or(0)
            );
            *j += 1;
            let Some(app) = scratch.get_mut(&g.sdkappid) else {
                continue;
            };
            if let Err(code) = app.create_group(&g.id, g.group_type) {
                problems.push(format!("{place}.id: {}", group_problem(code, &g.id)));
                continue;
            }
            // Attribute support is the API's business, not the scenario's: write regardless.
            app.set_attr_support(g.group_type, true);
            let attrs: Vec<(&str, &str)> = g
                .attrs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            if let Err(code) = app.write_attrs(&g.id, WriteKind::Set, &attrs, None) {
                problems.push(format!("{place}.attrs: {}", attr_problem(code)));
            }
        }
        let only_app = match scenario.apps.as_slice() {
            [one] => Some(one.sdkappid),
            _ => None,
        };
        for (i, e) in self.events.into_iter().enumerate() {
            let place = format!("events[{i}]");
            match resolve_event(&place, e, only_app, &seen_apps, env) {
                Ok(event) => scenario.events.push(event),
                Err(mut p) => problems.append(&mut p),
            }
        }
        if problems.is_empty() {
            Ok(scenario)
        } else {
            Err(ScenarioError { problems })
        }
    }
}

fn group_problem(code: i64, id: &str) -> String {
    match code {
        super::model::GROUP_ID_IN_USE => format!("{id:?} appears twice"),
        _ => format!(
            "{id:?} is not a valid group ID (1 to {} bytes of printable ASCII, no spaces)",
            super::MAX_GROUP_ID_BYTES
        ),
    }
}

fn attr_problem(code: i64) -> String {
    match code {
        super::model::KEY_TOO_LONG => {
            format!("a key is longer than {} bytes", super::MAX_KEY_BYTES)
        }
        super::model::TOO_MANY_KEYS => format!("more than {MAX_KEYS} keys"),
        super::model::VALUE_TOO_LONG => format!("a value is longer than {MAX_VALUE_BYTES} bytes"),
        super::model::TOTAL_TOO_LARGE => {
            format!("values exceed {MAX_TOTAL_VALUE_BYTES} bytes in all")
        }
        _ => "a key is empty".to_owned(),
    }
}

fn resolve_event(
    place: &str,
    e: RawEvent,
    only_app: Option<u64>,
    apps: &HashSet<u64>,
    env: Env<'_>,
) -> Result<Event, Vec<String>> {
    let mut problems = Vec::new();
    let schedule = match (e.at, e.every, e.start) {
        (Some(Dur(at)), None, None) => Some(Schedule::At(at)),
        (None, Some(Dur(period)), start) if !period.is_zero() => Some(Schedule::Every {
            period,
            first: start.map_or(period, |Dur(s)| s),
        }),
        (None, Some(_), _) => {
            problems.push(format!("{place}.every: must be longer than 0"));
            None
        }
        (Some(_), _, Some(_)) => {
            problems.push(format!("{place}.start: only goes with `every`"));
            None
        }
        (Some(_), Some(_), _) => {
            problems.push(format!("{place}: set one of `at` and `every`, not both"));
            None
        }
        (None, None, _) => {
            problems.push(format!("{place}: one of `at` and `every` is required"));
            None
        }
    };
    let sdkappid = match (e.sdkappid, only_app) {
        (Some(app), _) if apps.contains(&app) => Some(app),
        (Some(app), _) => {
            problems.push(format!("{place}.sdkappid: no app {app} in this scenario"));
            None
        }
        (None, Some(app)) => Some(app),
        (None, None) => {
            problems.push(format!(
                "{place}.sdkappid: required when the scenario has other than one app"
            ));
            None
        }
    };
    let mut actions = Vec::new();
    if let Some(a) = e.set_attrs {
        actions.push(("set_attrs", Action::SetAttrs(a.0)));
    }
    if let Some(a) = e.modify_attrs {
        actions.push(("modify_attrs", Action::ModifyAttrs(a.0)));
    }
    if let Some(keys) = e.delete_attrs {
        actions.push(("delete_attrs", Action::DeleteAttrs(keys)));
    }
    if e.clear_attrs == Some(true) {
        actions.push(("clear_attrs", Action::ClearAttrs));
    }
    if e.destroy == Some(true) {
        actions.push(("destroy", Action::Destroy));
    }
    if let Some(t) = e.create {
        actions.push(("create", Action::Create(t)));
    }
    if let Some(f) = e.fault {
        actions.push(("fault", Action::Fault(Some(f))));
    }
    if e.clear_fault == Some(true) {
        actions.push(("clear_fault", Action::Fault(None)));
    }
    if e.rotate_key.is_some() || e.rotate_key_env.is_some() {
        if let Some(key) = secret_from(
            place,
            e.rotate_key,
            e.rotate_key_env,
            ("rotate_key", "rotate_key_env"),
            env,
            &mut problems,
        ) {
            actions.push(("rotate_key", Action::RotateKey(key)));
        }
    }
    if let Some(s) = e.attr_support {
        actions.push((
            "attr_support",
            Action::AttrSupport {
                group_type: s.group_type,
                supported: s.supported,
            },
        ));
    }
    let action = match actions.len() {
        1 => actions.pop(),
        0 if problems.is_empty() => {
            problems.push(format!(
                "{place}: one action is required (set_attrs, modify_attrs, delete_attrs, clear_attrs, destroy, create, fault, clear_fault, rotate_key, attr_support)"
            ));
            None
        }
        0 => None,
        _ => {
            let names: Vec<&str> = actions.iter().map(|(n, _)| *n).collect();
            problems.push(format!(
                "{place}: one action per event, found {}",
                names.join(", ")
            ));
            None
        }
    };
    if let Some((name, _)) = &action {
        let needs_group = !matches!(
            *name,
            "fault" | "clear_fault" | "rotate_key" | "attr_support"
        );
        if needs_group && e.group.is_none() {
            problems.push(format!("{place}.group: required for {name}"));
        }
        if !needs_group && e.group.is_some() && matches!(*name, "rotate_key" | "attr_support") {
            problems.push(format!("{place}.group: {name} applies to the whole app"));
        }
    }
    match (schedule, sdkappid, action) {
        (Some(schedule), Some(sdkappid), Some((_, action))) if problems.is_empty() => Ok(Event {
            schedule,
            sdkappid,
            group: e.group,
            action,
        }),
        _ => Err(problems),
    }
}

/// Creates the scenario's groups in the fake; returns what it had to skip.
pub(super) fn populate(fake: &Fake, scenario: &Scenario) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for g in &scenario.groups {
        let app = g.sdkappid;
        if let Err(code) = fake.create_group(app, &g.id, g.group_type) {
            problems.push(format!("group {:?} of app {app}: error {code}", g.id));
            continue;
        }
        let attrs: Vec<(&str, &str)> = g
            .attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // Written directly, so a type without attribute support still starts with its values.
        let written = fake.with_app(app, |a| {
            let supported = a.attr_supported(g.group_type);
            a.set_attr_support(g.group_type, true);
            let r = a.write_attrs(&g.id, WriteKind::Set, &attrs, None);
            a.set_attr_support(g.group_type, supported);
            r
        });
        if let Err(code) = written {
            problems.push(format!(
                "attributes of group {:?} of app {app}: error {code}",
                g.id
            ));
        }
    }
    for spec in &scenario.generate {
        let made = fake.with_app(spec.sdkappid, |a| {
            let supported = a.attr_supported(spec.group_type);
            a.set_attr_support(spec.group_type, true);
            let mut result = Ok(());
            let keys: Vec<String> = (0..spec.attrs).map(|j| format!("attr{j}")).collect();
            for i in 0..spec.count {
                let id = format!("{}{i}", spec.prefix);
                if let Err(code) = a.create_group(&id, spec.group_type) {
                    result = Err(code);
                    break;
                }
                let values: Vec<String> = (0..spec.attrs)
                    .map(|j| generated_value(i, j, spec.value_bytes))
                    .collect();
                let attrs: Vec<(&str, &str)> = keys
                    .iter()
                    .zip(&values)
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                if let Err(code) = a.write_attrs(&id, WriteKind::Set, &attrs, None) {
                    result = Err(code);
                    break;
                }
            }
            a.set_attr_support(spec.group_type, supported);
            result
        });
        if let Err(code) = made {
            problems.push(format!(
                "generating {:?}* in app {}: error {code}",
                spec.prefix, spec.sdkappid
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A value unique to group `i` and key `j`, padded to `len` bytes.
fn generated_value(i: u64, j: usize, len: usize) -> String {
    let mut v = format!("{i}-{j}-");
    v.truncate(len);
    while v.len() < len {
        v.push('v');
    }
    v
}

fn fill(template: &[(String, String)], n: u64) -> Vec<(String, String)> {
    let n = n.to_string();
    template
        .iter()
        .map(|(k, v)| (k.replace("{n}", &n), v.replace("{n}", &n)))
        .collect()
}

/// Runs one event on its schedule (forever for `every`; the caller stops it).
pub(super) async fn run_event(fake: &Fake, start: Instant, event: &Event) {
    match event.schedule {
        Schedule::At(at) => {
            tokio::time::sleep_until(start + at).await;
            apply(fake, event, 1);
        }
        Schedule::Every { period, first } => {
            let mut ticks = tokio::time::interval_at(start + first, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut n = 0;
            loop {
                ticks.tick().await;
                n += 1;
                apply(fake, event, n);
            }
        }
    }
}

fn apply(fake: &Fake, event: &Event, n: u64) {
    let app = event.sdkappid;
    let group = event.group.as_deref().unwrap_or_default();
    let pairs = |attrs: &[(String, String)]| fill(attrs, n);
    let result = match &event.action {
        Action::SetAttrs(t) => {
            let attrs = pairs(t);
            let refs: Vec<(&str, &str)> = attrs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            fake.set_attrs(app, group, &refs)
        }
        Action::ModifyAttrs(t) => {
            let attrs = pairs(t);
            let refs: Vec<(&str, &str)> = attrs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            fake.modify_attrs(app, group, &refs)
        }
        Action::DeleteAttrs(keys) => {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            fake.delete_attrs(app, group, &refs)
        }
        Action::ClearAttrs => fake.clear_attrs(app, group),
        Action::Destroy => fake.destroy_group(app, group),
        Action::Create(t) => fake.create_group(app, group, *t),
        Action::Fault(f) => {
            let target = match &event.group {
                Some(g) => FaultTarget::Group(app, g.clone()),
                None => FaultTarget::App(app),
            };
            fake.set_fault(target, f.clone());
            Ok(())
        }
        Action::RotateKey(key) => {
            fake.set_secret_key(app, key.clone());
            Ok(())
        }
        Action::AttrSupport {
            group_type,
            supported,
        } => {
            fake.set_attr_support(app, *group_type, *supported);
            Ok(())
        }
    };
    match result {
        Ok(()) => {
            tracing::info!(sdkappid = app, group, run = n, action = ?action_name(&event.action), "scenario event")
        }
        Err(code) => {
            tracing::info!(sdkappid = app, group, run = n, action = ?action_name(&event.action), code, "scenario event rejected")
        }
    }
}

fn action_name(a: &Action) -> &'static str {
    match a {
        Action::SetAttrs(_) => "set_attrs",
        Action::ModifyAttrs(_) => "modify_attrs",
        Action::DeleteAttrs(_) => "delete_attrs",
        Action::ClearAttrs => "clear_attrs",
        Action::Destroy => "destroy",
        Action::Create(_) => "create",
        Action::Fault(Some(_)) => "fault",
        Action::Fault(None) => "clear_fault",
        Action::RotateKey(_) => "rotate_key",
        Action::AttrSupport { .. } => "attr_support",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("1m"), Duration::from_secs(60));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("0"), Duration::ZERO);
        for bad in ["", "30", "s", "1m1h", "1.5s", "-1s", "1 s", "10x"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
    }

    #[test]
    fn generated_values_have_their_length() {
        assert_eq!(generated_value(12, 3, 16).len(), 16);
        assert_eq!(generated_value(123456, 3, 4), "1234");
        assert_ne!(generated_value(1, 0, 16), generated_value(2, 0, 16));
    }
}
