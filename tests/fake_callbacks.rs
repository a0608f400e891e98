//! The fake's callbacks checked against `reference/tencent-chat-rest-api.md`, "Callbacks", with
//! a tiny receiver on 127.0.0.1:0 that records what arrives: the exact query string and its
//! signature, the body of each command, one callback per change and none for failures or
//! switched-off events, a receiver that is down or slow, the full queue, raw sends, the
//! control endpoints and the `timattr_fake_api` flags.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use timattr_exporter::fake::{
    AppSpec, CALLBACK_QUEUE_CAPACITY, CallbackEvent, CallbackTarget, DEMO_SDKAPPID, Fake,
    FakeServer, GroupType, Scenario,
};
use timattr_exporter::secret::SecretKey;
use timattr_exporter::usersig;
use tokio::sync::watch;
use url::Url;

const APP: u64 = 1_400_000_000;
const OTHER_APP: u64 = 1_400_000_002;
const ADMIN: &str = "administrator";
const KEY: &str = "test-secret-key";
const TOKEN: &str = "tok-3f9a";

const ATTR_CHANGED: &str = "Group.CallbackAfterGroupAttrChanged";
const DESTROYED: &str = "Group.CallbackAfterGroupDestroyed";
const CREATED: &str = "Group.CallbackAfterCreateGroup";

/// Long enough for a loaded CI machine; every wait ends as soon as its condition holds.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The receiver

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    query: String,
    content_type: Option<String>,
    body: String,
}

impl Received {
    fn params(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    fn param(&self, name: &str) -> Option<String> {
        self.params()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    fn names(&self) -> Vec<String> {
        self.params().into_iter().map(|(k, _)| k).collect()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn keys(&self) -> BTreeSet<String> {
        self.json()
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect()
    }
}

/// Records every request; answers `status` with Tencent's OK body, once its gate is open.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    count: watch::Receiver<usize>,
    gate: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::start_with(200, true).await
    }

    /// `open: false` holds every answer until [`Receiver::open`].
    async fn start_with(status: u16, open: bool) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("has an address");
        let got = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        let (gate, gate_rx) = watch::channel(open);
        let task = {
            let got = Arc::clone(&got);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let got = Arc::clone(&got);
                    let count_tx = Arc::clone(&count_tx);
                    let gate_rx = gate_rx.clone();
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let got = Arc::clone(&got);
                            let count_tx = Arc::clone(&count_tx);
                            let mut gate_rx = gate_rx.clone();
                            async move {
                                let method = req.method().to_string();
                                let path = req.uri().path().to_owned();
                                let query = req.uri().query().unwrap_or("").to_owned();
                                let content_type = req
                                    .headers()
                                    .get(http::header::CONTENT_TYPE)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned);
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                got.lock().expect("not poisoned").push(Received {
                                    method,
                                    path,
                                    query,
                                    content_type,
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                });
                                count_tx.send_modify(|n| *n += 1);
                                let _ = gate_rx.wait_for(|open| *open).await;
                                let mut resp = hyper::Response::new(Full::new(Bytes::from_static(
                                    br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#,
                                )));
                                *resp.status_mut() =
                                    http::StatusCode::from_u16(status).expect("a valid status");
                                Ok::<_, Infallible>(resp)
                            }
                        });
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Receiver {
            addr,
            got,
            count,
            gate,
            task,
        }
    }

    fn url(&self) -> Url {
        Url::parse(&format!("http://{}/callback", self.addr)).expect("valid")
    }

    fn open(&self) {
        let _ = self.gate.send(true);
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().expect("not poisoned").clone()
    }

    /// Waits until `n` requests have arrived, and returns all of them.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let mut count = self.count.clone();
        let arrived = tokio::time::timeout(WAIT, count.wait_for(|c| *c >= n)).await;
        assert!(
            arrived.is_ok(),
            "expected {n} callbacks, got {:#?}",
            self.got()
        );
        self.got()
    }
}

// ---------------------------------------------------------------------------------------------
// The fake and its REST API

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client builds")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn unix_now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits")
}

/// The reference's `Sign`, computed here rather than with the fake's function.
fn expected_sign(token: &str, request_time: &str) -> String {
    let digest = Sha256::digest(format!("{token}{request_time}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn scenario() -> Scenario {
    Scenario::new()
        .app(AppSpec::new(APP, ADMIN, SecretKey::new(KEY)))
        .app(AppSpec::new(OTHER_APP, ADMIN, SecretKey::new(KEY)))
        .group(APP, "@TGS#a", GroupType::Public, &[("k1", "v1")])
        .group(APP, "@TGS#b", GroupType::Public, &[])
        .group(APP, "@TGS#comm", GroupType::Community, &[])
        .group(OTHER_APP, "@TGS#o", GroupType::Public, &[])
}

async fn start() -> FakeServer {
    Fake::start(scenario()).await.expect("fake starts")
}

fn query(app: u64) -> String {
    let sig = usersig::generate(&SecretKey::new(KEY), app, ADMIN, unix_now(), 86_400);
    format!(
        "sdkappid={app}&identifier={ADMIN}&usersig={}&random=7&contenttype=json",
        sig.expose()
    )
}

/// Calls the REST API as app `APP`'s admin and returns the `ErrorCode`.
async fn rest(s: &FakeServer, api: &str, body: Value) -> i64 {
    rest_as(s, APP, api, body).await
}

async fn rest_as(s: &FakeServer, app: u64, api: &str, body: Value) -> i64 {
    let svc = if api == "get_group_attr" {
        "group_open_attr_http_svc"
    } else {
        "group_open_http_svc"
    };
    let url = format!("{}v4/{svc}/{api}?{}", s.base_url(), query(app));
    let resp = client()
        .post(url)
        .body(body.to_string())
        .send()
        .await
        .expect("answered");
    let v: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("JSON");
    v["ErrorCode"].as_i64().expect("an ErrorCode")
}

async fn control(s: &FakeServer, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let resp = client()
        .request(
            method,
            format!("{}{}", s.base_url(), path.trim_start_matches('/')),
        )
        .body(body.to_string())
        .send()
        .await
        .expect("answered");
    let status = resp.status().as_u16();
    let v = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("JSON");
    (status, v)
}

/// Waits until the fake has recorded `n` callbacks.
async fn recorded(fake: &Fake, n: usize) -> Vec<timattr_exporter::fake::SentCallback> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let sent = fake.sent_callbacks();
        if sent.len() >= n {
            return sent;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} records, got {sent:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks the query string of a callback byte for byte: the documented names in the
/// documented order, and a correct, fresh `Sign` when `token` is set.
fn assert_query(r: &Received, app: u64, command: &str, token: Option<&str>, sent_after: u64) {
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/callback");
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let mut names = vec![
        "SdkAppid",
        "CallbackCommand",
        "contenttype",
        "ClientIP",
        "OptPlatform",
    ];
    if token.is_some() {
        names.extend(["Sign", "RequestTime"]);
    }
    assert_eq!(r.names(), names, "{}", r.query);
    assert_eq!(r.param("SdkAppid"), Some(app.to_string()));
    assert_eq!(r.param("CallbackCommand").as_deref(), Some(command));
    assert_eq!(r.param("contenttype").as_deref(), Some("json"));
    assert_eq!(r.param("ClientIP").as_deref(), Some("127.0.0.1"));
    assert_eq!(r.param("OptPlatform").as_deref(), Some("RESTAPI"));
    if let Some(token) = token {
        let time = r.param("RequestTime").expect("RequestTime");
        let secs: u64 = time.parse().expect("decimal unix seconds");
        assert!((sent_after..=unix_now()).contains(&secs), "{secs}");
        assert_eq!(r.param("Sign"), Some(expected_sign(token, &time)));
    }
}

fn keys(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn assert_event_time(body: &Value, after_ms: u64) {
    let t = body["EventTime"].as_u64().expect("EventTime is an integer");
    assert!((after_ms..=unix_now_ms()).contains(&t), "{t}");
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn rest_writes_send_one_signed_attr_callback_each() {
    let rx = Receiver::start().await;
    let s = start().await;
    s.set_callback(
        APP,
        Some(CallbackTarget::new(rx.url()).with_token(SecretKey::new(TOKEN))),
    );
    let (t0, t0_ms) = (unix_now(), unix_now_ms());
    let attr = |k: &str, v: &str| json!({"key": k, "value": v});
    let writes = [
        (
            "modify_group_attr",
            json!({"GroupId": "@TGS#a", "GroupAttr": [attr("k2", "v2")]}),
            "modify",
            json!([attr("k2", "v2")]),
        ),
        (
            "set_group_attr",
            json!({"GroupId": "@TGS#a", "GroupAttr": [attr("x", "1"), attr("y", "2")]}),
            "set",
            json!([attr("x", "1"), attr("y", "2")]),
        ),
        (
            "delete_group_attr",
            json!({"GroupId": "@TGS#a", "GroupAttr": [{"key": "x"}]}),
            "delete",
            json!([attr("x", "")]),
        ),
        (
            "clear_group_attr",
            json!({"GroupId": "@TGS#a"}),
            "clear",
            json!([]),
        ),
    ];
    for (api, body, _, _) in &writes {
        assert_eq!(rest(&s, api, body.clone()).await, 0, "{api}");
    }
    let got = rx.wait_for(writes.len()).await;
    assert_eq!(got.len(), writes.len());
    for (r, (api, _, option, attrs)) in got.iter().zip(&writes) {
        assert_query(r, APP, ATTR_CHANGED, Some(TOKEN), t0);
        let body = r.json();
        assert_eq!(
            r.keys(),
            keys(&[
                "CallbackCommand",
                "GroupId",
                "Type",
                "Operator_Account",
                "OptionType",
                "GroupAttr",
                "EventTime"
            ]),
            "{api}"
        );
        assert_eq!(body["CallbackCommand"], ATTR_CHANGED);
        assert_eq!(body["GroupId"], "@TGS#a");
        assert_eq!(body["Type"], "Public");
        assert_eq!(body["Operator_Account"], ADMIN);
        assert_eq!(body["OptionType"], *option, "{api}");
        assert_eq!(body["GroupAttr"], *attrs, "{api}");
        assert_event_time(&body, t0_ms);
    }
    // The fake's own record of them.
    let sent = recorded(&s, writes.len()).await;
    assert_eq!(sent.len(), writes.len());
    for (c, r) in sent.iter().zip(&got) {
        assert_eq!(c.sdkappid, APP);
        assert_eq!(c.command, CallbackEvent::GroupAttrChanged);
        assert_eq!(c.group_id, "@TGS#a");
        assert_eq!(c.answer, Ok(200));
        assert!(c.url.ends_with(&r.query), "{} vs {}", c.url, r.query);
    }
    assert!(sent.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(s.dropped_callbacks(), 0);
}

#[tokio::test]
async fn without_a_token_callbacks_are_unsigned() {
    let rx = Receiver::start().await;
    let s = start().await;
    s.set_callback(APP, Some(CallbackTarget::new(rx.url())));
    let t0 = unix_now();
    s.modify_attrs(APP, "@TGS#a", &[("k", "v")])
        .expect("written");
    assert_eq!(
        rest(&s, "destroy_group", json!({"GroupId": "@TGS#b"})).await,
        0
    );
    let got = rx.wait_for(2).await;
    assert_query(&got[0], APP, ATTR_CHANGED, None, t0);
    assert_query(&got[1], APP, DESTROYED, None, t0);
    assert_eq!(got[1].param("Sign"), None);
    assert_eq!(got[1].param("RequestTime"), None);
}

#[tokio::test]
async fn destroy_and_create_send_their_callbacks() {
    let rx = Receiver::start().await;
    let s = start().await;
    s.set_callback(
        APP,
        Some(CallbackTarget::new(rx.url()).with_token(SecretKey::new(TOKEN))),
    );
    let (t0, t0_ms) = (unix_now(), unix_now_ms());
    assert_eq!(
        rest(
            &s,
            "create_group",
            json!({"GroupId": "@TGS#new", "Type": "Public", "Name": "the new one"})
        )
        .await,
        0
    );
    s.create_group(APP, "@TGS#made", GroupType::AVChatRoom)
        .expect("created");
    assert_eq!(
        rest(&s, "destroy_group", json!({"GroupId": "@TGS#new"})).await,
        0
    );
    s.destroy_group(APP, "@TGS#comm").expect("destroyed");
    let got = rx.wait_for(4).await;
    assert_eq!(got.len(), 4);
    let members = json!([{"Member_Account": ADMIN}]);
    let created_keys = keys(&[
        "CallbackCommand",
        "GroupId",
        "Type",
        "Operator_Account",
        "Owner_Account",
        "Name",
        "MemberList",
        "EventTime",
    ]);
    for (r, (id, group_type, name)) in got[..2].iter().zip([
        ("@TGS#new", "Public", "the new one"),
        ("@TGS#made", "AVChatRoom", "@TGS#made"),
    ]) {
        assert_query(r, APP, CREATED, Some(TOKEN), t0);
        assert_eq!(r.keys(), created_keys);
        let b = r.json();
        assert_eq!(b["CallbackCommand"], CREATED);
        assert_eq!(b["GroupId"], id);
        assert_eq!(b["Type"], group_type);
        assert_eq!(b["Operator_Account"], ADMIN);
        assert_eq!(b["Owner_Account"], ADMIN);
        assert_eq!(b["Name"], name);
        assert_eq!(b["MemberList"], members);
        assert_event_time(&b, t0_ms);
    }
    let destroyed_keys = keys(&[
        "CallbackCommand",
        "GroupId",
        "Type",
        "Owner_Account",
        "Name",
        "MemberList",
        "EventTime",
    ]);
    assert_query(&got[2], APP, DESTROYED, Some(TOKEN), t0);
    assert_eq!(got[2].keys(), destroyed_keys);
    let b = got[2].json();
    assert_eq!(b["CallbackCommand"], DESTROYED);
    assert_eq!(b["GroupId"], "@TGS#new");
    assert_eq!(b["Type"], "Public");
    assert_eq!(b["Owner_Account"], ADMIN);
    assert_eq!(b["Name"], "the new one");
    assert_eq!(b["MemberList"], members);
    assert_event_time(&b, t0_ms);
    // Community groups have no MemberList in this callback.
    let mut community_keys = destroyed_keys.clone();
    community_keys.remove("MemberList");
    assert_eq!(got[3].keys(), community_keys);
    assert_eq!(got[3].json()["Type"], "Community");
    assert_eq!(got[3].json()["GroupId"], "@TGS#comm");
}

#[tokio::test]
async fn in_process_control_and_scenario_changes_send_callbacks() {
    let rx = Receiver::start().await;
    let yaml = r#"
apps:
  - {sdkappid: 1400000000, identifier: administrator, secret_key: test-secret-key, groups: [{id: "@TGS#a"}, {id: "@TGS#t"}]}
events:
  - {at: 1s, group: "@TGS#t", modify_attrs: {n: "{n}"}}
  - {at: 1100ms, group: "@TGS#t", destroy: true}
"#;
    let s = Fake::start(Scenario::from_yaml(yaml).expect("valid"))
        .await
        .expect("starts");
    s.set_callback(APP, Some(CallbackTarget::new(rx.url())));
    s.set_attrs(APP, "@TGS#a", &[("a", "1"), ("b", "2")])
        .expect("set");
    s.modify_attrs(APP, "@TGS#a", &[("c", "3")])
        .expect("modified");
    s.delete_attrs(APP, "@TGS#a", &["a"]).expect("deleted");
    s.clear_attrs(APP, "@TGS#a").expect("cleared");
    let got = rx.wait_for(4).await;
    let options: Vec<Value> = got.iter().map(|r| r.json()["OptionType"].clone()).collect();
    assert_eq!(
        options,
        [
            json!("set"),
            json!("modify"),
            json!("delete"),
            json!("clear")
        ]
    );
    assert_eq!(
        got[0].json()["GroupAttr"],
        json!([{"key": "a", "value": "1"}, {"key": "b", "value": "2"}])
    );
    assert_eq!(
        got[2].json()["GroupAttr"],
        json!([{"key": "a", "value": ""}])
    );
    // The control endpoints go through the same methods.
    let ok = (200, json!({"ok": true}));
    assert_eq!(
        control(
            &s,
            reqwest::Method::POST,
            "/fake/attrs",
            json!({"sdkappid": APP, "group_id": "@TGS#a", "mode": "modify", "attrs": {"z": "9"}})
        )
        .await,
        ok
    );
    // The scenario's timed events arrive by push too.
    let got = rx.wait_for(7).await;
    let seen: Vec<(String, String)> = got[4..]
        .iter()
        .map(|r| {
            (
                r.param("CallbackCommand").expect("command"),
                r.json()["GroupId"].as_str().expect("GroupId").to_owned(),
            )
        })
        .collect();
    let mut seen_sorted = seen.clone();
    seen_sorted.sort();
    assert_eq!(
        seen_sorted,
        [
            (ATTR_CHANGED.to_owned(), "@TGS#a".to_owned()),
            (ATTR_CHANGED.to_owned(), "@TGS#t".to_owned()),
            (DESTROYED.to_owned(), "@TGS#t".to_owned()),
        ],
        "{seen:?}"
    );
}

#[tokio::test]
async fn failures_reads_other_apps_and_switched_off_events_send_nothing() {
    let rx = Receiver::start().await;
    let s = start().await;
    s.set_callback(
        APP,
        Some(CallbackTarget::new(rx.url()).with_events([CallbackEvent::GroupAttrChanged])),
    );
    // Switched off.
    assert_eq!(
        rest(&s, "destroy_group", json!({"GroupId": "@TGS#b"})).await,
        0
    );
    s.create_group(APP, "@TGS#c", GroupType::Public)
        .expect("created");
    // Failed writes, and a read.
    assert_eq!(
        rest(
            &s,
            "modify_group_attr",
            json!({"GroupId": "@TGS#gone", "GroupAttr": [{"key": "k", "value": "v"}]})
        )
        .await,
        10010
    );
    let long_key = "k".repeat(33);
    assert_eq!(
        rest(
            &s,
            "set_group_attr",
            json!({"GroupId": "@TGS#a", "GroupAttr": [{"key": long_key, "value": "v"}]})
        )
        .await,
        10045
    );
    assert_eq!(s.clear_attrs(APP, "@TGS#gone"), Err(10010));
    assert_eq!(s.destroy_group(APP, "@TGS#gone"), Err(10010));
    assert_eq!(
        rest(&s, "get_group_attr", json!({"GroupId": "@TGS#a"})).await,
        0
    );
    // Another app, with no target of its own.
    assert_eq!(
        rest_as(
            &s,
            OTHER_APP,
            "clear_group_attr",
            json!({"GroupId": "@TGS#o"})
        )
        .await,
        0
    );
    // Callbacks go out in order, so once this one is in, nothing else is on its way.
    s.modify_attrs(APP, "@TGS#a", &[("marker", "1")])
        .expect("written");
    let got = rx.wait_for(1).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        got[0].json()["GroupAttr"],
        json!([{"key": "marker", "value": "1"}])
    );
    assert_eq!(recorded(&s, 1).await.len(), 1);

    // Cleared: nothing more.
    s.set_callback(APP, None);
    s.modify_attrs(APP, "@TGS#a", &[("after", "1")])
        .expect("written");
    s.set_callback(OTHER_APP, Some(CallbackTarget::new(rx.url())));
    s.modify_attrs(OTHER_APP, "@TGS#o", &[("marker", "2")])
        .expect("written");
    let got = rx.wait_for(2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].param("SdkAppid"), Some(OTHER_APP.to_string()));
}

#[tokio::test]
async fn a_receiver_that_is_down_or_slow_neither_slows_nor_fails_the_call() {
    // Down: a port nothing listens on.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let addr = l.local_addr().expect("address");
        drop(l);
        Url::parse(&format!("http://{addr}/callback")).expect("valid")
    };
    let s = start().await;
    s.set_callback(APP, Some(CallbackTarget::new(down)));
    assert_eq!(
        rest(
            &s,
            "modify_group_attr",
            json!({"GroupId": "@TGS#a", "GroupAttr": [{"key": "k", "value": "v"}]})
        )
        .await,
        0
    );
    let sent = recorded(&s, 1).await;
    assert!(sent[0].answer.is_err(), "{sent:?}");

    // Slow: the receiver holds its answer until the API call has answered.
    let rx = Receiver::start_with(200, false).await;
    s.set_callback(APP, Some(CallbackTarget::new(rx.url())));
    assert_eq!(
        rest(&s, "destroy_group", json!({"GroupId": "@TGS#b"})).await,
        0
    );
    rx.wait_for(1).await;
    assert_eq!(
        s.sent_callbacks().len(),
        1,
        "the held one is not answered yet"
    );
    rx.open();
    let sent = recorded(&s, 2).await;
    assert_eq!(sent[1].command, CallbackEvent::GroupDestroyed);
    assert_eq!(sent[1].answer, Ok(200));

    // One that never answers is given up after the 2 s Tencent allows.
    let mute = Receiver::start_with(200, false).await;
    s.set_callback(APP, Some(CallbackTarget::new(mute.url())));
    s.clear_attrs(APP, "@TGS#a").expect("cleared");
    let sent = recorded(&s, 3).await;
    let error = sent[2].answer.as_ref().expect_err("no answer");
    assert!(error.contains("timed out"), "{error}");
}

#[tokio::test]
async fn what_does_not_fit_the_queue_is_dropped_and_counted() {
    let rx = Receiver::start_with(200, false).await;
    let s = start().await;
    s.set_callback(APP, Some(CallbackTarget::new(rx.url())));
    let n = CALLBACK_QUEUE_CAPACITY + 50;
    for i in 0..n {
        let v = i.to_string();
        s.modify_attrs(APP, "@TGS#a", &[("i", &v)])
            .expect("written");
    }
    // The sender may have taken one out before the loop ended.
    let dropped = s.dropped_callbacks();
    let least = (n - CALLBACK_QUEUE_CAPACITY - 1) as u64;
    assert!((least..=least + 1).contains(&dropped), "{dropped}");
    let (_, listed) = control(&s, reqwest::Method::GET, "/fake/callbacks", json!(null)).await;
    assert_eq!(listed["dropped"], dropped);
    rx.open();
    rx.wait_for(n - dropped as usize).await;
}

#[tokio::test]
async fn raw_callbacks_go_out_as_given() {
    let rx = Receiver::start().await;
    let s = start().await;
    let url = rx.url();
    let q =
        "SdkAppid=1&CallbackCommand=Group.CallbackAfterGroupAttrChanged&Sign=forged&RequestTime=1";
    assert_eq!(
        s.send_raw_callback(url.as_str(), q, "not JSON at all")
            .await,
        Ok(200)
    );
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].query, q);
    assert_eq!(got[0].body, "not JSON at all");
    assert_eq!(got[0].path, "/callback");
    // Through the control endpoint as well.
    let (status, answer) = control(
        &s,
        reqwest::Method::POST,
        "/fake/callback/raw",
        json!({"url": url.as_str(), "query": "a=1", "body": "{\"GroupId\":\"x\"}"}),
    )
    .await;
    assert_eq!((status, answer), (200, json!({"status": 200})));
    let got = rx.wait_for(2).await;
    assert_eq!(
        (got[1].query.as_str(), got[1].body.as_str()),
        ("a=1", r#"{"GroupId":"x"}"#)
    );
    // The receiver's status comes back as it is; a dead one is an error.
    let refusing = Receiver::start_with(403, true).await;
    assert_eq!(
        s.send_raw_callback(refusing.url().as_str(), "", Vec::new())
            .await,
        Ok(403)
    );
    drop(refusing);
    let (status, answer) = control(
        &s,
        reqwest::Method::POST,
        "/fake/callback/raw",
        json!({"url": "http://127.0.0.1:1/callback"}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(answer["error"].is_string(), "{answer}");
    assert!(s.sent_callbacks().is_empty(), "raw sends are not recorded");
}

#[tokio::test]
async fn control_endpoints_set_targets_and_list_what_was_sent() {
    use reqwest::Method;
    let rx = Receiver::start().await;
    let s = start().await;
    let ok = (200, json!({"ok": true}));
    assert_eq!(
        control(
            &s,
            Method::POST,
            "/fake/callback",
            json!({"sdkappid": APP, "url": rx.url().as_str(), "token": TOKEN, "events": [DESTROYED]})
        )
        .await,
        ok
    );
    let t0 = unix_now();
    s.modify_attrs(APP, "@TGS#a", &[("k", "v")])
        .expect("written");
    s.destroy_group(APP, "@TGS#b").expect("destroyed");
    let got = rx.wait_for(1).await;
    assert_query(&got[0], APP, DESTROYED, Some(TOKEN), t0);
    recorded(&s, 1).await;
    let (status, listed) = control(&s, Method::GET, "/fake/callbacks", json!(null)).await;
    assert_eq!(status, 200);
    assert_eq!(listed["dropped"], 0);
    let sent = listed["sent"].as_array().expect("sent");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["sdkappid"], APP);
    assert_eq!(sent[0]["command"], DESTROYED);
    assert_eq!(sent[0]["group_id"], "@TGS#b");
    assert_eq!(sent[0]["status"], 200);
    assert!(sent[0]["seconds"].is_f64());
    assert!(
        sent[0]["url"]
            .as_str()
            .expect("url")
            .ends_with(&got[0].query)
    );

    // Mistakes answer 400.
    for bad in [
        json!({"sdkappid": APP, "url": "not a url"}),
        json!({"sdkappid": APP, "url": "ftp://127.0.0.1/x"}),
        json!({"sdkappid": APP, "url": rx.url().as_str(), "events": ["Group.Nope"]}),
        json!({"sdkappid": APP, "url": rx.url().as_str(), "extra": 1}),
    ] {
        let (status, answer) = control(&s, Method::POST, "/fake/callback", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }

    // Without `sdkappid`: every app without its own, also one added later; `url: null` clears.
    assert_eq!(
        control(
            &s,
            Method::POST,
            "/fake/callback",
            json!({"sdkappid": APP, "url": null})
        )
        .await,
        ok
    );
    assert_eq!(
        control(
            &s,
            Method::POST,
            "/fake/callback",
            json!({"url": rx.url().as_str()})
        )
        .await,
        ok
    );
    let later = 1_400_000_099;
    s.add_app(AppSpec::new(later, ADMIN, SecretKey::new(KEY)));
    s.create_group(later, "@TGS#late", GroupType::Public)
        .expect("created");
    s.modify_attrs(APP, "@TGS#a", &[("k", "w")])
        .expect("written");
    let got = rx.wait_for(3).await;
    assert_eq!(got[1].param("SdkAppid"), Some(later.to_string()));
    assert_eq!(got[1].param("CallbackCommand").as_deref(), Some(CREATED));
    assert_eq!(got[2].param("SdkAppid"), Some(APP.to_string()));
    assert_eq!(got[2].param("Sign"), None);
}

async fn start_binary(args: &[&str]) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_timattr_fake_api"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("prints its address in time")
    .expect("reads");
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .expect("the documented line")
        .to_owned();
    (child, base)
}

#[tokio::test]
async fn binary_sends_the_demo_apps_callbacks_to_the_flagged_url() {
    let rx = Receiver::start().await;
    let url = rx.url();
    let (mut child, base) = start_binary(&[
        "--listen",
        "127.0.0.1:0",
        "--demo",
        "--callback-url",
        url.as_str(),
        "--callback-token",
        TOKEN,
    ])
    .await;
    let t0 = unix_now();
    let resp = client()
        .post(format!("{base}/fake/attrs"))
        .body(
            json!({"sdkappid": DEMO_SDKAPPID, "group_id": "@TGS#demo_lobby", "mode": "modify", "attrs": {"pushed": "1"}})
                .to_string(),
        )
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status().as_u16(), 200);
    let got = rx.wait_for(1).await;
    assert_query(&got[0], DEMO_SDKAPPID, ATTR_CHANGED, Some(TOKEN), t0);
    assert_eq!(got[0].json()["GroupId"], "@TGS#demo_lobby");
    assert_eq!(
        got[0].json()["GroupAttr"],
        json!([{"key": "pushed", "value": "1"}])
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
}

#[tokio::test]
async fn binary_rejects_bad_callback_flags_with_64() {
    for args in [
        &["--demo", "--callback-token", TOKEN][..],
        &["--demo", "--callback-url", "ftp://127.0.0.1/callback"][..],
        &["--demo", "--callback-url", "not a url"][..],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_timattr_fake_api"))
            .args(args)
            .output()
            .await
            .expect("runs");
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
