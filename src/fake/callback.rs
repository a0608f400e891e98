//! Callbacks: the webhooks Tencent Chat POSTs to an app's server after group events
//! (`reference/tencent-chat-rest-api.md`, "Callbacks"). The fake plays Tencent: after a
//! successful attribute write, `destroy_group` or `create_group` — over REST, through
//! [`Fake`](super::Fake)'s methods, the control endpoints or scenario events — it sends the
//! matching callback to the app's [`CallbackTarget`], if it has one, signed when the target has
//! a token.
//!
//! The call that caused a callback is never held up by it: callbacks go into a bounded queue
//! ([`CALLBACK_QUEUE_CAPACITY`]) and what does not fit is dropped and counted. One task sends
//! them in order, one at a time, each under [`CALLBACK_TIMEOUT`], and records each as a
//! [`SentCallback`]. Nothing is retried: Tencent retries after-event callbacks only when the
//! console says so. In order, so a test that saw the last callback it caused knows every
//! earlier one has been sent (or was never going to be).
//!
//! The signing is the fake's own ([`callback_sign`]); it plays the sender and must not share
//! code with the exporter's verifier, or a bug in one would hide in both.
//!
//! Choices the reference leaves open:
//! - `ClientIP` is the peer address of the REST call, and `127.0.0.1` for changes made in
//!   process (methods, control endpoints, scenario events); `OptPlatform` is always `RESTAPI`.
//! - `GroupAttr` holds the attributes the call named: the pairs written for set and modify,
//!   the deleted keys with empty values for delete, nothing for clear.
//! - `EventTime` is a JSON integer (the reference's table), not a string (its sample).
//! - `Operator_Account` and `Owner_Account` are the app admin; `MemberList` is the admin alone
//!   (left out of `Group.CallbackAfterGroupDestroyed` for Community groups, as the reference
//!   says); `Name` is `create_group`'s `Name`, else the group ID.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;
use url::Url;

use super::lock;
use super::model::{App, Group, GroupType};
use crate::secret::SecretKey;

/// Callbacks waiting to be sent; one more is dropped and counted.
pub const CALLBACK_QUEUE_CAPACITY: usize = 1024;
/// How long the fake waits for the receiver's answer: the 2 s Tencent allows.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Records kept by [`Fake::sent_callbacks`](super::Fake::sent_callbacks); older ones go.
pub const MAX_SENT_CALLBACKS: usize = 100_000;
/// `OptPlatform` of every callback the fake sends.
pub const OPT_PLATFORM: &str = "RESTAPI";
/// `ClientIP` of callbacks for changes made in process rather than over REST.
const IN_PROCESS_CLIENT_IP: &str = "127.0.0.1";

/// The three callbacks the fake sends, each switched on separately per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallbackEvent {
    /// `Group.CallbackAfterGroupAttrChanged`: after modify, set, delete or clear.
    GroupAttrChanged,
    /// `Group.CallbackAfterGroupDestroyed`.
    GroupDestroyed,
    /// `Group.CallbackAfterCreateGroup`.
    GroupCreated,
}

impl CallbackEvent {
    pub const ALL: [CallbackEvent; 3] = [
        CallbackEvent::GroupAttrChanged,
        CallbackEvent::GroupDestroyed,
        CallbackEvent::GroupCreated,
    ];

    /// The `CallbackCommand` Tencent sends for it.
    pub fn command(self) -> &'static str {
        match self {
            CallbackEvent::GroupAttrChanged => "Group.CallbackAfterGroupAttrChanged",
            CallbackEvent::GroupDestroyed => "Group.CallbackAfterGroupDestroyed",
            CallbackEvent::GroupCreated => "Group.CallbackAfterCreateGroup",
        }
    }

    pub fn from_command(command: &str) -> Option<CallbackEvent> {
        CallbackEvent::ALL
            .into_iter()
            .find(|e| e.command() == command)
    }
}

impl Serialize for CallbackEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.command())
    }
}

impl<'de> Deserialize<'de> for CallbackEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CallbackEvent::from_command(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown callback {s:?} (expected {})",
                CallbackEvent::ALL.map(CallbackEvent::command).join(", ")
            ))
        })
    }
}

/// Where an app's callbacks go, as set in the Chat console: one URL, an optional token, and
/// which events are on.
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackTarget {
    /// `http` or `https`; the fake adds the documented query parameters to it.
    pub url: Url,
    /// With a token, each callback carries `Sign` and `RequestTime`. Never printed.
    pub token: Option<SecretKey>,
    /// The events sent; all three unless [`CallbackTarget::with_events`] says otherwise.
    pub events: BTreeSet<CallbackEvent>,
}

impl CallbackTarget {
    /// Every event, unsigned.
    pub fn new(url: Url) -> Self {
        CallbackTarget {
            url,
            token: None,
            events: CallbackEvent::ALL.into_iter().collect(),
        }
    }

    /// Signs callbacks with `token`; an empty token means none, as in the console.
    pub fn with_token(mut self, token: SecretKey) -> Self {
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// Sends only these events.
    pub fn with_events(mut self, events: impl IntoIterator<Item = CallbackEvent>) -> Self {
        self.events = events.into_iter().collect();
        self
    }

    pub fn sends(&self, event: CallbackEvent) -> bool {
        self.events.contains(&event)
    }
}

/// One callback the fake sent, and how the receiver answered.
#[derive(Debug, Clone, PartialEq)]
pub struct SentCallback {
    /// When the request went out, since the fake started (as `Fake::request_times`).
    pub at: Duration,
    pub sdkappid: u64,
    pub command: CallbackEvent,
    pub group_id: String,
    /// The whole request URL, query included.
    pub url: String,
    /// The receiver's HTTP status, or why there was none (connection refused, timeout, ...).
    pub answer: Result<u16, String>,
}

/// `Sign`: lower-case hex SHA-256 of the token followed directly by `RequestTime` in decimal.
pub fn callback_sign(token: &str, request_time: u64) -> String {
    let digest = Sha256::new()
        .chain_update(token.as_bytes())
        .chain_update(request_time.to_string().as_bytes())
        .finalize();
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The request URL: the target's URL with the documented query parameters, in the documented
/// order, and `Sign` and `RequestTime` when there is a token.
fn callback_url(
    target: &CallbackTarget,
    sdkappid: u64,
    event: CallbackEvent,
    client_ip: &str,
    request_time: u64,
) -> Url {
    let mut url = target.url.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("SdkAppid", &sdkappid.to_string())
            .append_pair("CallbackCommand", event.command())
            .append_pair("contenttype", "json")
            .append_pair("ClientIP", client_ip)
            .append_pair("OptPlatform", OPT_PLATFORM);
        if let Some(token) = &target.token {
            q.append_pair("Sign", &callback_sign(token.expose(), request_time))
                .append_pair("RequestTime", &request_time.to_string());
        }
    }
    url
}

/// `OptionType` of `Group.CallbackAfterGroupAttrChanged`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AttrOption {
    Set,
    Modify,
    Delete,
    Clear,
}

impl AttrOption {
    fn as_str(self) -> &'static str {
        match self {
            AttrOption::Set => "set",
            AttrOption::Modify => "modify",
            AttrOption::Delete => "delete",
            AttrOption::Clear => "clear",
        }
    }
}

/// A change that has just been made to an app, which may call for a callback.
pub(super) enum Change<'a> {
    /// `attrs` as the call named them (values empty for delete).
    Attrs {
        group_id: &'a str,
        option: AttrOption,
        attrs: Vec<(&'a str, &'a str)>,
    },
    /// The group as it was.
    Destroyed {
        group_id: &'a str,
        group: Group,
    },
    Created {
        group_id: String,
    },
}

impl Change<'_> {
    pub(super) fn event(&self) -> CallbackEvent {
        match self {
            Change::Attrs { .. } => CallbackEvent::GroupAttrChanged,
            Change::Destroyed { .. } => CallbackEvent::GroupDestroyed,
            Change::Created { .. } => CallbackEvent::GroupCreated,
        }
    }

    /// The group ID and the callback body; `app` is the app after the change.
    fn body(self, app: &App) -> Option<(String, Value)> {
        let command = self.event().command();
        let admin = app.spec.identifier.as_str();
        let members = json!([{ "Member_Account": admin }]);
        let event_time = now_unix_ms();
        Some(match self {
            Change::Attrs {
                group_id,
                option,
                attrs,
            } => {
                let group = app.groups.get(group_id)?;
                let attrs: Vec<Value> = attrs
                    .into_iter()
                    .map(|(k, v)| json!({ "key": k, "value": v }))
                    .collect();
                let body = json!({
                    "CallbackCommand": command,
                    "GroupId": group_id,
                    "Type": group.group_type.as_str(),
                    "Operator_Account": admin,
                    "OptionType": option.as_str(),
                    "GroupAttr": attrs,
                    "EventTime": event_time,
                });
                (group_id.to_owned(), body)
            }
            Change::Destroyed { group_id, group } => {
                let mut body = json!({
                    "CallbackCommand": command,
                    "GroupId": group_id,
                    "Type": group.group_type.as_str(),
                    "Owner_Account": admin,
                    "Name": group.name,
                    "EventTime": event_time,
                });
                if group.group_type != GroupType::Community {
                    body["MemberList"] = members;
                }
                (group_id.to_owned(), body)
            }
            Change::Created { group_id } => {
                let group = app.groups.get(&group_id)?;
                let body = json!({
                    "CallbackCommand": command,
                    "GroupId": group_id,
                    "Type": group.group_type.as_str(),
                    "Operator_Account": admin,
                    "Owner_Account": admin,
                    "Name": group.name,
                    "MemberList": members,
                    "EventTime": event_time,
                });
                (group_id, body)
            }
        })
    }
}

/// A callback in the queue: everything but `RequestTime` and `Sign`, which are made when it
/// is sent.
struct Outgoing {
    target: CallbackTarget,
    sdkappid: u64,
    event: CallbackEvent,
    group_id: String,
    client_ip: String,
    body: Bytes,
}

/// The fake's callback side: targets, the queue and its sender task, the records.
pub(super) struct Callbacks {
    /// Per app; `None` holds the target of apps without their own.
    targets: RwLock<HashMap<Option<u64>, CallbackTarget>>,
    queue: mpsc::Sender<Outgoing>,
    /// Taken by the sender task when the first callback is queued inside a tokio runtime
    /// (a fake may be built outside one).
    waiting: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    shared: Arc<Shared>,
}

/// What the sender task shares with the fake. The task holds no `Fake`, so it ends when the
/// fake is dropped and the queue drains.
struct Shared {
    start: Instant,
    client: OnceLock<Result<reqwest::Client, String>>,
    sent: Mutex<VecDeque<SentCallback>>,
    dropped: AtomicU64,
}

impl Callbacks {
    pub(super) fn new(start: Instant) -> Callbacks {
        let (queue, rx) = mpsc::channel(CALLBACK_QUEUE_CAPACITY);
        Callbacks {
            targets: RwLock::new(HashMap::new()),
            queue,
            waiting: Mutex::new(Some(rx)),
            shared: Arc::new(Shared {
                start,
                client: OnceLock::new(),
                sent: Mutex::new(VecDeque::new()),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Sets or clears the target of one app (`Some(sdkappid)`) or of every app without its
    /// own (`None`).
    pub(super) fn set_target(&self, sdkappid: Option<u64>, target: Option<CallbackTarget>) {
        let mut targets = self.targets.write().unwrap_or_else(PoisonError::into_inner);
        match target {
            Some(t) => targets.insert(sdkappid, t),
            None => targets.remove(&sdkappid),
        };
    }

    fn target(&self, sdkappid: u64, event: CallbackEvent) -> Option<CallbackTarget> {
        let targets = self.targets.read().unwrap_or_else(PoisonError::into_inner);
        targets
            .get(&Some(sdkappid))
            .or_else(|| targets.get(&None))
            .filter(|t| t.sends(event))
            .cloned()
    }

    /// Queues the callback `change` calls for, if the app's target wants it. `app` is the app
    /// after the change; `client_ip` the REST caller's address (`None` in process).
    pub(super) fn changed(&self, app: &App, change: Change<'_>, client_ip: Option<IpAddr>) {
        let sdkappid = app.spec.sdkappid;
        let event = change.event();
        let Some(target) = self.target(sdkappid, event) else {
            return;
        };
        let Some((group_id, body)) = change.body(app) else {
            return;
        };
        let out = Outgoing {
            target,
            sdkappid,
            event,
            group_id,
            client_ip: client_ip
                .map_or_else(|| IN_PROCESS_CLIENT_IP.to_owned(), |ip| ip.to_string()),
            body: Bytes::from(serde_json::to_vec(&body).expect("a serde_json Value serializes")),
        };
        if let Err(e) = self.queue.try_send(out) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => "queue full",
                mpsc::error::TrySendError::Closed(_) => "sender stopped",
            };
            tracing::warn!(
                sdkappid,
                command = event.command(),
                reason,
                "callback dropped"
            );
            return;
        }
        self.start_sender();
    }

    fn start_sender(&self) {
        let mut waiting = lock(&self.waiting);
        if waiting.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Sent once a callback is queued from inside a runtime.
            return;
        };
        let rx = waiting.take().expect("checked above");
        runtime.spawn(send_all(rx, Arc::clone(&self.shared)));
    }

    pub(super) fn sent(&self) -> Vec<SentCallback> {
        lock(&self.shared.sent).iter().cloned().collect()
    }

    pub(super) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// POSTs `body` to `url` with `query` appended as it is, through the callback client.
    pub(super) async fn send_raw(
        &self,
        url: &str,
        query: &str,
        body: Bytes,
    ) -> Result<u16, String> {
        let full = match (query.is_empty(), url.contains('?')) {
            (true, _) => url.to_owned(),
            (false, false) => format!("{url}?{query}"),
            (false, true) => format!("{url}&{query}"),
        };
        let url = Url::parse(&full).map_err(|e| format!("invalid URL {full:?}: {e}"))?;
        self.shared.post(url, body).await
    }
}

/// The sender task: one callback at a time, in queue order, until the fake is gone.
async fn send_all(mut rx: mpsc::Receiver<Outgoing>, shared: Arc<Shared>) {
    while let Some(out) = rx.recv().await {
        let request_time = now_unix();
        let url = callback_url(
            &out.target,
            out.sdkappid,
            out.event,
            &out.client_ip,
            request_time,
        );
        let at = Instant::now().saturating_duration_since(shared.start);
        let answer = shared.post(url.clone(), out.body).await;
        match &answer {
            Ok(status) => tracing::debug!(
                sdkappid = out.sdkappid,
                command = out.event.command(),
                group = %out.group_id,
                status,
                "callback sent"
            ),
            Err(error) => tracing::warn!(
                sdkappid = out.sdkappid,
                command = out.event.command(),
                group = %out.group_id,
                %error,
                "callback not answered"
            ),
        }
        let mut sent = lock(&shared.sent);
        if sent.len() >= MAX_SENT_CALLBACKS {
            sent.pop_front();
        }
        sent.push_back(SentCallback {
            at,
            sdkappid: out.sdkappid,
            command: out.event,
            group_id: out.group_id,
            url: url.into(),
            answer,
        });
    }
}

impl Shared {
    fn client(&self) -> Result<&reqwest::Client, String> {
        self.client
            .get_or_init(|| {
                // reqwest is built without a default crypto provider; an error only says one
                // is installed already.
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::builder()
                    .timeout(CALLBACK_TIMEOUT)
                    // Tencent POSTs to the URL it was given and does not follow redirects.
                    .redirect(reqwest::redirect::Policy::none())
                    .retry(reqwest::retry::never())
                    .build()
                    .map_err(|e| format!("cannot build the callback client: {}", chain(&e)))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The receiver's status once its whole answer is read, or the transport error.
    async fn post(&self, url: Url, body: Bytes) -> Result<u16, String> {
        let resp = self
            .client()?
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| chain(&e.without_url()))?;
        let status = resp.status().as_u16();
        // Read to the end so the connection can be reused; a broken answer is still answered.
        let _ = resp.bytes().await;
        Ok(status)
    }
}

/// An error with its causes, `outer: inner: ...`, so "connection refused" is not lost.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_matches_the_documented_example() {
        assert_eq!(
            callback_sign("xxxxyyyy", 1_669_872_112),
            "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"
        );
    }

    #[test]
    fn url_carries_the_documented_parameters_in_order() {
        let base = Url::parse("http://127.0.0.1:9/callback").expect("valid");
        let unsigned = CallbackTarget::new(base.clone());
        let url = callback_url(
            &unsigned,
            1400,
            CallbackEvent::GroupDestroyed,
            "10.0.0.1",
            7,
        );
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/callback?SdkAppid=1400&CallbackCommand=Group.CallbackAfterGroupDestroyed&contenttype=json&ClientIP=10.0.0.1&OptPlatform=RESTAPI"
        );
        let signed = unsigned.with_token(SecretKey::new("xxxxyyyy"));
        let url = callback_url(
            &signed,
            1400,
            CallbackEvent::GroupAttrChanged,
            "10.0.0.1",
            1_669_872_112,
        );
        assert!(
            url.as_str().ends_with(
                "&OptPlatform=RESTAPI&Sign=17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061&RequestTime=1669872112"
            ),
            "{url}"
        );
        // A URL with a query of its own keeps it.
        let with_query = CallbackTarget::new(Url::parse("http://h/cb?x=1").expect("valid"));
        let url = callback_url(&with_query, 1, CallbackEvent::GroupCreated, "::1", 0);
        assert!(
            url.as_str().starts_with("http://h/cb?x=1&SdkAppid=1&"),
            "{url}"
        );
    }

    #[test]
    fn empty_token_means_unsigned_and_tokens_never_print() {
        let t = CallbackTarget::new(Url::parse("http://h/").expect("valid"));
        assert_eq!(t.clone().with_token(SecretKey::new("  ")).token, None);
        let signed = t.with_token(SecretKey::new("hunter2"));
        assert!(!format!("{signed:?}").contains("hunter2"));
    }

    #[test]
    fn events_parse_from_their_commands() {
        for e in CallbackEvent::ALL {
            assert_eq!(CallbackEvent::from_command(e.command()), Some(e));
            let v = serde_json::to_value(e).expect("serializes");
            assert_eq!(serde_json::from_value::<CallbackEvent>(v).ok(), Some(e));
        }
        assert!(serde_json::from_str::<CallbackEvent>(r#""Group.Other""#).is_err());
    }
}
