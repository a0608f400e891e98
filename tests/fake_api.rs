//! The fake API checked against `reference/tencent-chat-rest-api.md` with raw HTTP requests:
//! every error path, the limits, paging, rate limits, every fault, the control endpoints,
//! scenario files, timed events and the `timattr_fake_api` binary.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use timattr_exporter::fake::{
    AppSpec, DEMO_IDENTIFIER, DEMO_SDKAPPID, DEMO_SECRET_KEY, Fake, FakeServer, Fault, FaultTarget,
    GroupType, NEXT_CURSOR_BASE, RateLimits, Scenario, demo_group_ids, demo_scenario,
};
use timattr_exporter::secret::SecretKey;
use timattr_exporter::usersig;

const APP: u64 = 1_400_000_000;
const ADMIN: &str = "administrator";
const KEY: &str = "test-secret-key";

const GET: &str = "/v4/group_open_attr_http_svc/get_group_attr";
const MODIFY: &str = "/v4/group_open_http_svc/modify_group_attr";
const SET: &str = "/v4/group_open_http_svc/set_group_attr";
const DELETE: &str = "/v4/group_open_http_svc/delete_group_attr";
const CLEAR: &str = "/v4/group_open_http_svc/clear_group_attr";
const DESTROY: &str = "/v4/group_open_http_svc/destroy_group";
const LIST: &str = "/v4/group_open_http_svc/get_appid_group_list";
const CREATE: &str = "/v4/group_open_http_svc/create_group";

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client builds")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn sig_for(key: &str, app: u64, identifier: &str) -> String {
    usersig::generate(&SecretKey::new(key), app, identifier, now(), 86_400)
        .expose()
        .to_owned()
}

/// A correct query string for the admin of `APP`.
fn good_query() -> String {
    format!(
        "sdkappid={APP}&identifier={ADMIN}&usersig={}&random=12345&contenttype=json",
        sig_for(KEY, APP, ADMIN)
    )
}

fn base_scenario() -> Scenario {
    Scenario::new()
        .app(AppSpec::new(APP, ADMIN, SecretKey::new(KEY)))
        .group(
            APP,
            "@TGS#a",
            GroupType::Public,
            &[("k1", "v1"), ("k2", "v2")],
        )
        .group(APP, "@TGS#b", GroupType::AVChatRoom, &[])
        .group(APP, "@TGS#c", GroupType::Community, &[("c", "1")])
}

async fn start(scenario: Scenario) -> FakeServer {
    Fake::start(scenario).await.expect("fake starts")
}

struct Answer {
    status: u16,
    json: Value,
}

impl Answer {
    fn code(&self) -> i64 {
        self.json["ErrorCode"]
            .as_i64()
            .expect("ErrorCode is an integer")
    }
}

async fn post_raw(s: &FakeServer, path: &str, query: &str, body: &str) -> reqwest::Response {
    let url = format!("{}{}?{query}", s.base_url(), path.trim_start_matches('/'));
    client()
        .post(url)
        .body(body.to_owned())
        .send()
        .await
        .expect("request is answered")
}

async fn call_q(s: &FakeServer, path: &str, query: &str, body: &str) -> Answer {
    let resp = post_raw(s, path, query, body).await;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body reads");
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    Answer { status, json }
}

async fn call(s: &FakeServer, path: &str, body: Value) -> Answer {
    call_q(s, path, &good_query(), &body.to_string()).await
}

async fn get_attrs(s: &FakeServer, group: &str) -> Answer {
    call(s, GET, json!({ "GroupId": group })).await
}

fn assert_envelope(a: &Answer, code: i64) {
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.code(), code, "{}", a.json);
    let status = if code == 0 { "OK" } else { "FAIL" };
    assert_eq!(a.json["ActionStatus"], status, "{}", a.json);
    assert!(a.json["ErrorInfo"].is_string(), "{}", a.json);
}

fn pairs(a: &Answer) -> Vec<(String, String)> {
    a.json["GroupAttrAry"]
        .as_array()
        .expect("GroupAttrAry is an array")
        .iter()
        .map(|kv| {
            (
                kv["key"].as_str().expect("key").to_owned(),
                kv["value"].as_str().expect("value").to_owned(),
            )
        })
        .collect()
}

fn owned(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn get_group_attr_answers_the_documented_body() {
    let s = start(base_scenario()).await;
    let a = get_attrs(&s, "@TGS#a").await;
    assert_envelope(&a, 0);
    assert_eq!(a.json["ErrorInfo"], "");
    assert_eq!(pairs(&a), owned(&[("k1", "v1"), ("k2", "v2")]));
    let empty = get_attrs(&s, "@TGS#b").await;
    assert_envelope(&empty, 0);
    assert!(pairs(&empty).is_empty());
}

#[tokio::test]
async fn query_checks_answer_their_codes() {
    let s = start(base_scenario()).await;
    let sig = sig_for(KEY, APP, ADMIN);
    let q = |app: &str, id: &str, sig: &str, random: &str, ct: &str| {
        format!("sdkappid={app}&identifier={id}&usersig={sig}&random={random}&contenttype={ct}")
    };
    let app = APP.to_string();
    let body = r#"{"GroupId":"@TGS#a"}"#;
    let expired = usersig::generate(&SecretKey::new(KEY), APP, ADMIN, now() - 1000, 10);
    let bob = sig_for(KEY, APP, "bob");
    let other_app = sig_for(KEY, APP + 1, ADMIN);
    let wrong_key = sig_for("another-key", APP, ADMIN);
    let cases: Vec<(&str, String, i64)> = vec![
        ("ok", q(&app, ADMIN, &sig, "1", "json"), 0),
        ("random max", q(&app, ADMIN, &sig, "4294967295", "json"), 0),
        ("random zero", q(&app, ADMIN, &sig, "0", "json"), 0),
        (
            "sdkappid missing",
            format!("identifier={ADMIN}&usersig={sig}&random=1&contenttype=json"),
            60012,
        ),
        ("sdkappid empty", q("", ADMIN, &sig, "1", "json"), 60012),
        (
            "sdkappid not a number",
            q("14x", ADMIN, &sig, "1", "json"),
            60006,
        ),
        (
            "sdkappid unknown",
            q("1400000009", ADMIN, &sig, "1", "json"),
            70020,
        ),
        ("contenttype other", q(&app, ADMIN, &sig, "1", "xml"), 60002),
        (
            "contenttype missing",
            format!("sdkappid={APP}&identifier={ADMIN}&usersig={sig}&random=1"),
            60002,
        ),
        ("contenttype case", q(&app, ADMIN, &sig, "1", "JSON"), 60002),
        (
            "random over u32",
            q(&app, ADMIN, &sig, "4294967296", "json"),
            70402,
        ),
        ("random negative", q(&app, ADMIN, &sig, "-1", "json"), 70402),
        (
            "random missing",
            format!("sdkappid={APP}&identifier={ADMIN}&usersig={sig}&contenttype=json"),
            70402,
        ),
        (
            "identifier missing",
            format!("sdkappid={APP}&usersig={sig}&random=1&contenttype=json"),
            60004,
        ),
        ("usersig empty", q(&app, ADMIN, "", "1", "json"), 70002),
        (
            "usersig garbage",
            q(&app, ADMIN, "eJy!!", "1", "json"),
            70003,
        ),
        (
            "usersig expired",
            q(&app, ADMIN, expired.expose(), "1", "json"),
            70001,
        ),
        (
            "usersig wrong key",
            q(&app, ADMIN, &wrong_key, "1", "json"),
            70009,
        ),
        (
            "usersig of another identifier",
            q(&app, ADMIN, &bob, "1", "json"),
            70013,
        ),
        (
            "usersig of another app",
            q(&app, ADMIN, &other_app, "1", "json"),
            70014,
        ),
        ("not the admin", q(&app, "bob", &bob, "1", "json"), 60010),
    ];
    for (name, query, code) in cases {
        let a = call_q(&s, GET, &query, body).await;
        assert_eq!(a.status, 200, "{name}");
        assert_eq!(a.code(), code, "{name}: {}", a.json);
        assert_envelope(&a, code);
    }
    // The reference lists 10007 (admin only) for the group list.
    let a = call_q(&s, LIST, &q(&app, "bob", &bob, "1", "json"), "{}").await;
    assert_envelope(&a, 10007);
    // Counted per outcome, under app 0 when the SDKAppID is not a number.
    let counts = s.counts();
    assert_eq!(counts.outcome(APP, "get_group_attr", "70013"), 1);
    assert_eq!(counts.outcome(0, "get_group_attr", "60006"), 1);
    assert_eq!(counts.outcome(APP, "get_group_attr", "0"), 3);
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let s = start(base_scenario()).await;
    let a = call_q(
        &s,
        "/v4/group_open_http_svc/no_such_call",
        &good_query(),
        "{}",
    )
    .await;
    assert_envelope(&a, 60009);
    let a = call_q(&s, "/", &good_query(), "{}").await;
    assert_envelope(&a, 60009);
    let url = format!(
        "{}{}?{}",
        s.base_url(),
        GET.trim_start_matches('/'),
        good_query()
    );
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let resp = client()
            .request(method.clone(), &url)
            .body(r#"{"GroupId":"@TGS#a"}"#)
            .send()
            .await
            .expect("answered");
        assert_eq!(resp.status(), 200);
        let v: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
        assert_eq!(v["ErrorCode"], 60002, "{method}");
    }
    // Counted under the app the query names, as API "unknown".
    assert_eq!(s.counts().outcome(APP, "unknown", "60009"), 2);
}

#[tokio::test]
async fn body_checks() {
    let s = start(base_scenario()).await;
    let q = good_query();
    for (name, body, code) in [
        ("empty", "", 60003),
        ("not json", "GroupId=@TGS#a", 60003),
        ("truncated", r#"{"GroupId":"@TGS#a""#, 60003),
        ("array", r#"["@TGS#a"]"#, 60003),
        ("GroupId missing", "{}", 10004),
        ("GroupId a number", r#"{"GroupId":5}"#, 10004),
        (
            "unknown fields ignored",
            r#"{"GroupId":"@TGS#a","Extra":1}"#,
            0,
        ),
    ] {
        let a = call_q(&s, GET, &q, body).await;
        assert_eq!(a.code(), code, "{name}: {}", a.json);
    }
    let big = format!(
        r#"{{"GroupId":"@TGS#a","Pad":"{}"}}"#,
        "x".repeat(1024 * 1024 + 1)
    );
    assert_eq!(call_q(&s, GET, &q, &big).await.code(), 60002);
    // Writes check their lists too.
    for body in [
        json!({"GroupId": "@TGS#a"}),
        json!({"GroupId": "@TGS#a", "GroupAttr": {"key": "k"}}),
        json!({"GroupId": "@TGS#a", "GroupAttr": [{"key": "k"}]}),
        json!({"GroupId": "@TGS#a", "GroupAttr": [{"value": "v"}]}),
        json!({"GroupId": "@TGS#a", "GroupAttr": [{"key": "", "value": "v"}]}),
    ] {
        assert_eq!(call(&s, MODIFY, body.clone()).await.code(), 10004, "{body}");
    }
}

#[tokio::test]
async fn group_checks() {
    let s = start(base_scenario()).await;
    let long = format!("@TGS#{}", "x".repeat(44));
    assert_eq!(long.len(), 49);
    let max = format!("@TGS#{}", "x".repeat(43));
    for id in ["", "@TGS# a", "@TGS#ä", "tab\there", long.as_str()] {
        assert_envelope(&get_attrs(&s, id).await, 10015);
    }
    assert_envelope(&get_attrs(&s, &max).await, 10010);
    assert_envelope(&get_attrs(&s, "@TGS#nope").await, 10010);
    // The types each support attributes until switched off.
    assert_envelope(&get_attrs(&s, "@TGS#c").await, 0);
    s.set_attr_support(APP, GroupType::Community, false);
    assert_envelope(&get_attrs(&s, "@TGS#c").await, 10007);
    assert_eq!(
        call(
            &s,
            MODIFY,
            json!({"GroupId": "@TGS#c", "GroupAttr": [{"key": "k", "value": "v"}]})
        )
        .await
        .code(),
        10007
    );
    s.set_attr_support(APP, GroupType::Community, true);
    assert_envelope(&get_attrs(&s, "@TGS#c").await, 0);
    // Destroyed over the API: 10010 from then on, for reads, writes and another destroy.
    assert_envelope(&call(&s, DESTROY, json!({"GroupId": "@TGS#a"})).await, 0);
    assert_envelope(&get_attrs(&s, "@TGS#a").await, 10010);
    assert_envelope(&call(&s, CLEAR, json!({"GroupId": "@TGS#a"})).await, 10010);
    assert_envelope(
        &call(&s, DESTROY, json!({"GroupId": "@TGS#a"})).await,
        10010,
    );
    assert_eq!(s.attrs(APP, "@TGS#a"), Err(10010));
    // And through the control method.
    s.destroy_group(APP, "@TGS#b").expect("exists");
    assert_envelope(&get_attrs(&s, "@TGS#b").await, 10010);
    assert_eq!(s.counts().group(APP, "@TGS#a"), 4);
}

#[tokio::test]
async fn writes_follow_the_reference_and_its_limits() {
    let s = start(base_scenario()).await;
    let kv = |k: &str, v: &str| json!({"key": k, "value": v});
    let w = |path: &'static str, attrs: Vec<Value>| {
        let s = &s;
        async move {
            call(s, path, json!({"GroupId": "@TGS#b", "GroupAttr": attrs}))
                .await
                .code()
        }
    };
    assert_eq!(w(MODIFY, vec![kv("a", "1"), kv("b", "2")]).await, 0);
    assert_eq!(w(MODIFY, vec![kv("b", "3"), kv("c", "4")]).await, 0);
    assert_eq!(
        pairs(&get_attrs(&s, "@TGS#b").await),
        owned(&[("a", "1"), ("b", "3"), ("c", "4")])
    );
    assert_eq!(
        call(
            &s,
            DELETE,
            json!({"GroupId": "@TGS#b", "GroupAttr": [{"key": "a"}]})
        )
        .await
        .code(),
        0
    );
    assert_eq!(
        pairs(&get_attrs(&s, "@TGS#b").await),
        owned(&[("b", "3"), ("c", "4")])
    );
    assert_eq!(w(SET, vec![kv("only", "x")]).await, 0);
    assert_eq!(
        pairs(&get_attrs(&s, "@TGS#b").await),
        owned(&[("only", "x")])
    );
    // Limits, one per code; none of these counts as an accepted write.
    let k33 = "k".repeat(33);
    let v4001 = "v".repeat(4001);
    let v4000 = "v".repeat(4000);
    // Space the writes: 5 per second per group is itself a limit.
    let pause = || tokio::time::sleep(Duration::from_millis(1100));
    pause().await;
    assert_eq!(w(MODIFY, vec![kv(&k33, "v")]).await, 10045);
    assert_eq!(w(MODIFY, vec![kv(&"k".repeat(32), "v")]).await, 0);
    let many: Vec<Value> = (0..17).map(|i| kv(&format!("k{i}"), "v")).collect();
    assert_eq!(w(SET, many.clone()).await, 10047);
    assert_eq!(w(SET, many[..16].to_vec()).await, 0);
    assert_eq!(w(MODIFY, vec![kv("one_more", "v")]).await, 10047);
    assert_eq!(w(SET, vec![kv("big", &v4001)]).await, 10046);
    pause().await;
    let total: Vec<Value> = (0..5).map(|i| kv(&format!("k{i}"), &v4000)).collect();
    assert_eq!(w(SET, total.clone()).await, 10048);
    assert_eq!(w(SET, total[..4].to_vec()).await, 0);
    assert_eq!(w(MODIFY, vec![kv("k4", "v")]).await, 10048);
    assert_eq!(
        call(&s, CLEAR, json!({"GroupId": "@TGS#b"})).await.code(),
        0
    );
    assert!(pairs(&get_attrs(&s, "@TGS#b").await).is_empty());
    // Five writes per second per group: the sixth within the second is refused.
    pause().await;
    let before = s.request_times(APP, "modify_group_attr").len();
    let mut codes = Vec::new();
    for i in 0..6 {
        codes.push(w(MODIFY, vec![kv("n", &i.to_string())]).await);
    }
    let times = s.request_times(APP, "modify_group_attr");
    let burst = &times[before..];
    assert!(
        burst[5] - burst[0] < Duration::from_secs(1),
        "the machine is too slow for this check"
    );
    assert_eq!(codes, vec![0, 0, 0, 0, 0, 10049]);
    // Another group has its own budget.
    assert_eq!(
        call(
            &s,
            MODIFY,
            json!({"GroupId": "@TGS#c", "GroupAttr": [kv("x", "y")]})
        )
        .await
        .code(),
        0
    );
    // The control methods apply the size limits but not the write frequency.
    assert_eq!(s.set_attrs(APP, "@TGS#b", &[(&k33, "v")]), Err(10045));
    assert_eq!(s.set_attrs(APP, "@TGS#b", &[("big", &v4001)]), Err(10046));
    for i in 0..10 {
        s.modify_attrs(APP, "@TGS#b", &[("n", &i.to_string())])
            .expect("no frequency limit");
    }
    assert_eq!(
        s.attrs(APP, "@TGS#b").expect("exists"),
        owned(&[("n", "9")])
    );
    s.delete_attrs(APP, "@TGS#b", &["n"]).expect("exists");
    assert_eq!(s.attrs(APP, "@TGS#b"), Ok(vec![]));
}

#[tokio::test]
async fn create_group_call() {
    let s = start(base_scenario()).await;
    let a = call(
        &s,
        CREATE,
        json!({"GroupId": "@TGS#new", "Type": "Work", "Name": "n"}),
    )
    .await;
    assert_envelope(&a, 0);
    assert_eq!(a.json["GroupId"], "@TGS#new");
    assert_eq!(
        call(&s, CREATE, json!({"GroupId": "@TGS#new", "Type": "Public"}))
            .await
            .code(),
        10021
    );
    assert_eq!(
        call(&s, CREATE, json!({"GroupId": "@TGS#x", "Type": "Castle"}))
            .await
            .code(),
        10004
    );
    assert_eq!(
        call(&s, CREATE, json!({"GroupId": "bad id", "Type": "Public"}))
            .await
            .code(),
        10015
    );
    let made = call(&s, CREATE, json!({"Type": "Meeting"})).await;
    assert_envelope(&made, 0);
    let id = made.json["GroupId"]
        .as_str()
        .expect("an ID is made up")
        .to_owned();
    assert_envelope(&get_attrs(&s, &id).await, 0);
    assert_envelope(&get_attrs(&s, "@TGS#new").await, 0);
    assert_eq!(
        s.create_group(APP, "@TGS#new", GroupType::Public),
        Err(10021)
    );
    assert_eq!(
        s.create_group(APP + 1, "@TGS#z", GroupType::Public),
        Err(70020)
    );
}

#[tokio::test]
async fn group_list_pages_with_large_cursors_and_filters() {
    let app = AppSpec::new(APP, ADMIN, SecretKey::new(KEY)).with_rate_limits(RateLimits {
        get_appid_group_list: None,
        ..RateLimits::default()
    });
    let mut scenario = Scenario::new()
        .app(app)
        .generate(timattr_exporter::fake::Generate {
            sdkappid: APP,
            count: 25_000,
            prefix: "@TGS#p".into(),
            attrs: 0,
            value_bytes: 0,
            group_type: GroupType::Public,
        });
    for i in 0..7 {
        scenario = scenario.group(APP, &format!("@TGS#av{i}"), GroupType::AVChatRoom, &[]);
    }
    let s = start(scenario).await;
    s.destroy_group(APP, "@TGS#p3").expect("exists");
    let mut seen = BTreeSet::new();
    let mut next = 0u64;
    let mut pages = 0;
    loop {
        let a = call(&s, LIST, json!({"Limit": 10000, "Next": next})).await;
        assert_envelope(&a, 0);
        assert_eq!(a.json["TotalCount"], 25_006);
        for g in a.json["GroupIdList"].as_array().expect("list") {
            assert!(seen.insert(g["GroupId"].as_str().expect("GroupId").to_owned()));
        }
        pages += 1;
        next = a.json["Next"].as_u64().expect("Next is a u64");
        if next == 0 {
            break;
        }
        assert!(next > u64::from(u32::MAX), "cursor {next} fits in 32 bits");
        assert!(next >= NEXT_CURSOR_BASE);
    }
    assert_eq!((pages, seen.len()), (3, 25_006));
    assert!(!seen.contains("@TGS#p3"));
    // Defaults: all groups, first page.
    let a = call(&s, LIST, json!({})).await;
    assert_eq!(
        a.json["GroupIdList"].as_array().expect("list").len(),
        10_000
    );
    // Filter by type, in small pages.
    let a = call(&s, LIST, json!({"Limit": 5, "GroupType": "AVChatRoom"})).await;
    assert_eq!(a.json["TotalCount"], 7);
    assert_eq!(a.json["GroupIdList"].as_array().expect("list").len(), 5);
    let next = a.json["Next"].as_u64().expect("Next");
    let b = call(
        &s,
        LIST,
        json!({"Limit": 5, "Next": next, "GroupType": "AVChatRoom"}),
    )
    .await;
    let ids: Vec<&str> = b.json["GroupIdList"]
        .as_array()
        .expect("list")
        .iter()
        .map(|g| g["GroupId"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, vec!["@TGS#av5", "@TGS#av6"]);
    assert_eq!(b.json["Next"], 0);
    let none = call(&s, LIST, json!({"GroupType": "BChatRoom"})).await;
    assert_envelope(&none, 0);
    assert_eq!(none.json["TotalCount"], 0);
    for bad in [
        json!({"Limit": 0}),
        json!({"Limit": 10001}),
        json!({"Limit": "10"}),
        json!({"Next": 12345}),
        json!({"Next": -1}),
        json!({"GroupType": "Castle"}),
    ] {
        assert_eq!(call(&s, LIST, bad.clone()).await.code(), 10004, "{bad}");
    }
}

#[tokio::test]
async fn group_list_is_limited_to_one_call_per_second() {
    let s = start(base_scenario()).await;
    let first = call(&s, LIST, json!({"Limit": 10})).await;
    let second = call(&s, LIST, json!({"Limit": 10})).await;
    let times = s.request_times(APP, "get_appid_group_list");
    assert!(times[1] - times[0] < Duration::from_secs(1));
    assert_envelope(&first, 0);
    assert_envelope(&second, 60007);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_group_attr_is_limited_to_200_per_second() {
    let s = start(base_scenario()).await;
    let c = client();
    let url = format!(
        "{}{}?{}",
        s.base_url(),
        GET.trim_start_matches('/'),
        good_query()
    );
    let requests = (0..300).map(|_| {
        let c = c.clone();
        let url = url.clone();
        async move {
            let resp = c
                .post(url)
                .body(r#"{"GroupId":"@TGS#a"}"#)
                .send()
                .await
                .expect("answered");
            let v: Value =
                serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
            v["ErrorCode"].as_i64().expect("code")
        }
    });
    let codes = futures::future::join_all(requests).await;
    let times = s.request_times(APP, "get_group_attr");
    assert_eq!(times.len(), 300);
    let span = *times.last().expect("300") - times[0];
    assert!(
        span < Duration::from_secs(1),
        "300 requests took {span:?}: too slow a machine for this check"
    );
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 200);
    assert_eq!(codes.iter().filter(|c| **c == 60007).count(), 100);
    assert_eq!(s.counts().outcome(APP, "get_group_attr", "60007"), 100);
    // A second later the window has moved on.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_envelope(&get_attrs(&s, "@TGS#a").await, 0);
}

async fn with_fault(s: &FakeServer, fault: Fault) -> reqwest::Response {
    s.set_fault(FaultTarget::Group(APP, "@TGS#a".into()), Some(fault));
    post_raw(s, GET, &good_query(), r#"{"GroupId":"@TGS#a"}"#).await
}

#[tokio::test]
async fn faults_of_every_kind() {
    let s = start(base_scenario()).await;

    let t = tokio::time::Instant::now();
    let resp = with_fault(&s, Fault::Latency(Duration::from_millis(300))).await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    let v: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
    assert_eq!(v["ErrorCode"], 0);

    let resp = with_fault(&s, Fault::HttpStatus(502)).await;
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.expect("text").contains("502"));

    let resp = with_fault(&s, Fault::TruncatedJson).await;
    assert_eq!(resp.status(), 200);
    let b = resp.bytes().await.expect("body");
    assert!(serde_json::from_slice::<Value>(&b).is_err());
    assert!(b.starts_with(b"{"));

    let b = with_fault(&s, Fault::InvalidJson)
        .await
        .bytes()
        .await
        .expect("body");
    assert!(serde_json::from_slice::<Value>(&b).is_err());

    let b = with_fault(&s, Fault::InvalidUtf8)
        .await
        .bytes()
        .await
        .expect("body");
    assert!(std::str::from_utf8(&b).is_err());

    let n = 5 * 1024 * 1024 + 3;
    let mut resp = with_fault(&s, Fault::OversizedBody(n)).await;
    assert_eq!(resp.content_length(), Some(n as u64));
    let mut body = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        chunks += 1;
        body.extend_from_slice(&chunk);
    }
    assert_eq!(body.len(), n);
    assert!(chunks > 1);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("valid JSON")["ErrorCode"],
        0
    );

    let v: Value = serde_json::from_slice(
        &with_fault(&s, Fault::ErrorCode(70500))
            .await
            .bytes()
            .await
            .expect("b"),
    )
    .expect("json");
    assert_eq!(
        (v["ErrorCode"].as_i64(), v["ActionStatus"].as_str()),
        (Some(70500), Some("FAIL"))
    );

    s.set_fault(
        FaultTarget::Group(APP, "@TGS#a".into()),
        Some(Fault::Intermittent {
            code: 10002,
            every: 3,
        }),
    );
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(get_attrs(&s, "@TGS#a").await.code());
    }
    assert_eq!(codes, vec![0, 0, 10002, 0, 0, 10002]);

    s.set_fault(
        FaultTarget::Group(APP, "@TGS#a".into()),
        Some(Fault::Flaky {
            p_error: 1.0,
            p_timeout: 0.0,
        }),
    );
    assert_eq!(get_attrs(&s, "@TGS#a").await.code(), 10002);
    s.set_fault(
        FaultTarget::Group(APP, "@TGS#a".into()),
        Some(Fault::Flaky {
            p_error: 0.0,
            p_timeout: 0.0,
        }),
    );
    assert_eq!(get_attrs(&s, "@TGS#a").await.code(), 0);

    s.set_fault(
        FaultTarget::Group(APP, "@TGS#a".into()),
        Some(Fault::DuplicateKey),
    );
    let a = get_attrs(&s, "@TGS#a").await;
    let keys: Vec<String> = pairs(&a).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["k1", "k2", "k1"]);

    s.set_fault(
        FaultTarget::Group(APP, "@TGS#a".into()),
        Some(Fault::StatusMismatch),
    );
    let a = get_attrs(&s, "@TGS#a").await;
    assert_eq!(a.json["ActionStatus"], "OK");
    assert_ne!(a.code(), 0);

    // A group fault touches only its group; clearing it restores the group.
    assert_envelope(&get_attrs(&s, "@TGS#b").await, 0);
    s.set_fault(FaultTarget::Group(APP, "@TGS#a".into()), None);
    assert_envelope(&get_attrs(&s, "@TGS#a").await, 0);

    // An app fault touches every request of the app.
    s.set_fault(FaultTarget::App(APP), Some(Fault::ErrorCode(10002)));
    assert_eq!(get_attrs(&s, "@TGS#b").await.code(), 10002);
    assert_eq!(call(&s, LIST, json!({})).await.code(), 10002);
    s.set_fault(FaultTarget::App(APP), None);
    assert_envelope(&get_attrs(&s, "@TGS#b").await, 0);

    let counts = s.counts();
    let group = &counts.apps[&APP].by_group["@TGS#a"];
    for outcome in [
        "http_502",
        "truncated_json",
        "invalid_json",
        "invalid_utf8",
        "oversized_body",
        "duplicate_key",
        "status_mismatch",
        "70500",
    ] {
        assert_eq!(group.outcome(outcome), 1, "{outcome}");
    }
    assert_eq!(group.outcome("10002"), 3);
}

#[tokio::test]
async fn hang_holds_the_request_until_the_client_gives_up_or_shutdown() {
    let s = start(base_scenario()).await;
    s.set_fault(FaultTarget::App(APP), Some(Fault::Hang));
    let url = format!(
        "{}{}?{}",
        s.base_url(),
        GET.trim_start_matches('/'),
        good_query()
    );
    let err = client()
        .post(&url)
        .timeout(Duration::from_millis(300))
        .body(r#"{"GroupId":"@TGS#a"}"#)
        .send()
        .await
        .expect_err("no answer");
    assert!(err.is_timeout(), "{err}");
    assert_eq!(s.counts().outcome(APP, "get_group_attr", "hang"), 1);
    // A client that never gives up is let go at shutdown, promptly.
    let pending = tokio::spawn({
        let c = client();
        async move { c.post(url).body(r#"{"GroupId":"@TGS#a"}"#).send().await }
    });
    let fake = s.fake.clone();
    tokio::time::timeout(Duration::from_secs(5), async {
        while fake.counts().outcome(APP, "get_group_attr", "hang") < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the second request arrives");
    tokio::time::timeout(Duration::from_secs(4), s.shutdown())
        .await
        .expect("shutdown does not wait for the hang");
    let result = pending.await.expect("task");
    assert!(result.is_err(), "the hanging request got no answer");
}

#[tokio::test]
async fn key_rotation_breaks_old_credentials() {
    let s = start(base_scenario()).await;
    assert_envelope(&get_attrs(&s, "@TGS#a").await, 0);
    s.set_secret_key(APP, SecretKey::new("rotated"));
    assert_envelope(&get_attrs(&s, "@TGS#a").await, 70009);
    let q = format!(
        "sdkappid={APP}&identifier={ADMIN}&usersig={}&random=7&contenttype=json",
        sig_for("rotated", APP, ADMIN)
    );
    assert_envelope(&call_q(&s, GET, &q, r#"{"GroupId":"@TGS#a"}"#).await, 0);
}

#[tokio::test]
async fn counts_and_request_times() {
    let s = start(base_scenario()).await;
    get_attrs(&s, "@TGS#a").await;
    get_attrs(&s, "@TGS#nope").await;
    call(&s, LIST, json!({})).await;
    let c = s.counts();
    assert_eq!(c.total, 3);
    assert_eq!(c.requests(APP, "get_group_attr"), 2);
    assert_eq!(c.outcome(APP, "get_group_attr", "10010"), 1);
    assert_eq!(c.group(APP, "@TGS#a"), 1);
    assert_eq!(c.by_outcome["0"], 2);
    let times = s.request_times(APP, "get_group_attr");
    assert_eq!(times.len(), 2);
    assert!(times[0] <= times[1]);
    assert_eq!(s.request_times(APP, "get_appid_group_list").len(), 1);
    s.reset_counts();
    assert_eq!(s.counts().total, 0);
    assert!(s.request_times(APP, "get_group_attr").is_empty());
}

async fn control(
    s: &FakeServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client().request(
        method,
        format!("{}{}", s.base_url(), path.trim_start_matches('/')),
    );
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.expect("answered");
    let status = resp.status().as_u16();
    let v =
        serde_json::from_slice(&resp.bytes().await.expect("body")).expect("control answers JSON");
    (status, v)
}

#[tokio::test]
async fn control_endpoints() {
    use reqwest::Method;
    let s = start(base_scenario()).await;
    assert_eq!(
        control(&s, Method::GET, "/fake/healthy", None).await,
        (200, json!("ok"))
    );
    get_attrs(&s, "@TGS#a").await;
    let (st, counts) = control(&s, Method::GET, "/fake/counts", None).await;
    assert_eq!(st, 200);
    assert_eq!(
        counts["apps"][APP.to_string()]["by_api"]["get_group_attr"]["by_outcome"]["0"],
        1
    );
    let (_, times) = control(
        &s,
        Method::GET,
        &format!("/fake/requests?sdkappid={APP}&api=get_group_attr"),
        None,
    )
    .await;
    assert_eq!(times["seconds"].as_array().expect("seconds").len(), 1);
    assert_eq!(control(&s, Method::POST, "/fake/reset", None).await.0, 200);
    assert_eq!(s.counts().total, 0);

    let ok = (200, json!({"ok": true}));
    let app2 = APP + 7;
    assert_eq!(
        control(&s, Method::POST, "/fake/apps", Some(json!({"sdkappid": app2, "identifier": "root", "secret_key": "k2", "attr_unsupported": ["Public"]}))).await,
        ok
    );
    assert_eq!(
        control(
            &s,
            Method::POST,
            "/fake/groups",
            Some(json!({"sdkappid": app2, "group_id": "@TGS#g", "type": "Public"}))
        )
        .await,
        ok
    );
    assert_eq!(
        control(
            &s,
            Method::POST,
            "/fake/groups",
            Some(json!({"sdkappid": app2, "group_id": "@TGS#g", "type": "Public"}))
        )
        .await,
        (422, json!({"error_code": 10021}))
    );
    // Attributes through the path (with # as %23) and through the body.
    let path = format!("/fake/groups/{app2}/%40TGS%23g/attrs");
    assert_eq!(s.attrs(app2, "@TGS#g"), Err(10007));
    assert_eq!(
        control(
            &s,
            Method::POST,
            "/fake/attr_support",
            Some(json!({"sdkappid": app2, "group_type": "Public", "supported": true}))
        )
        .await,
        ok
    );
    assert_eq!(
        control(&s, Method::POST, &path, Some(json!({"a": "1", "b": "2"}))).await,
        ok
    );
    assert_eq!(
        control(
            &s,
            Method::POST,
            &format!("{path}?mode=modify"),
            Some(json!({"b": "3"}))
        )
        .await,
        ok
    );
    assert_eq!(
        control(&s, Method::GET, &path, None).await,
        (200, json!({"attrs": {"a": "1", "b": "3"}}))
    );
    assert_eq!(
        control(
            &s,
            Method::POST,
            &format!("{path}?mode=delete"),
            Some(json!(["a"]))
        )
        .await,
        ok
    );
    assert_eq!(s.attrs(app2, "@TGS#g"), Ok(owned(&[("b", "3")])));
    assert_eq!(
        control(&s, Method::POST, "/fake/attrs", Some(json!({"sdkappid": app2, "group_id": "@TGS#g", "mode": "modify", "attrs": {"c": "4"}}))).await,
        ok
    );
    assert_eq!(
        s.attrs(app2, "@TGS#g"),
        Ok(owned(&[("b", "3"), ("c", "4")]))
    );
    assert_eq!(
        control(&s, Method::POST, &format!("{path}?mode=clear"), None).await,
        ok
    );
    assert_eq!(s.attrs(app2, "@TGS#g"), Ok(vec![]));
    assert_eq!(
        control(
            &s,
            Method::POST,
            &path,
            Some(json!({"k": "v".repeat(4001)}))
        )
        .await,
        (422, json!({"error_code": 10046}))
    );
    // Faults: on a group, then cleared with null.
    assert_eq!(
        control(
            &s,
            Method::POST,
            "/fake/fault",
            Some(json!({"sdkappid": APP, "group_id": "@TGS#a", "fault": {"error_code": 10002}}))
        )
        .await,
        ok
    );
    assert_eq!(get_attrs(&s, "@TGS#a").await.code(), 10002);
    assert_eq!(
        control(
            &s,
            Method::POST,
            "/fake/fault",
            Some(json!({"sdkappid": APP, "group_id": "@TGS#a", "fault": null}))
        )
        .await,
        ok
    );
    assert_eq!(get_attrs(&s, "@TGS#a").await.code(), 0);
    assert_eq!(
        control(
            &s,
            Method::POST,
            "/fake/fault",
            Some(json!({"sdkappid": APP, "fault": {"http_status": 503}}))
        )
        .await,
        ok
    );
    assert_eq!(
        post_raw(&s, GET, &good_query(), r#"{"GroupId":"@TGS#a"}"#)
            .await
            .status(),
        503
    );
    control(
        &s,
        Method::POST,
        "/fake/fault",
        Some(json!({"sdkappid": APP, "fault": null})),
    )
    .await;
    // Key rotation and destroy.
    assert_eq!(
        control(
            &s,
            Method::POST,
            "/fake/key",
            Some(json!({"sdkappid": APP, "secret_key": "new"}))
        )
        .await,
        ok
    );
    assert_eq!(get_attrs(&s, "@TGS#a").await.code(), 70009);
    s.set_secret_key(APP, SecretKey::new(KEY));
    assert_eq!(
        control(
            &s,
            Method::POST,
            "/fake/destroy",
            Some(json!({"sdkappid": APP, "group_id": "@TGS#a"}))
        )
        .await,
        ok
    );
    assert_eq!(get_attrs(&s, "@TGS#a").await.code(), 10010);
    // Mistakes.
    assert_eq!(control(&s, Method::GET, "/fake/nothing", None).await.0, 404);
    assert_eq!(
        control(
            &s,
            Method::POST,
            "/fake/fault",
            Some(json!({"sdkappid": APP, "fault": "explode"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        control(
            &s,
            Method::POST,
            "/fake/destroy",
            Some(json!({"sdkappid": APP}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        control(
            &s,
            Method::POST,
            "/fake/destroy",
            Some(json!({"sdkappid": APP, "group_id": "@TGS#zz"}))
        )
        .await,
        (422, json!({"error_code": 10010}))
    );
    assert_eq!(
        control(&s, Method::GET, "/fake/requests?api=x", None)
            .await
            .0,
        400
    );
    assert_eq!(control(&s, Method::PUT, &path, None).await.0, 405);
}

fn manifest(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn scenario_files_parse() {
    let demo =
        Scenario::from_file(manifest("config/scenarios/demo.yml")).expect("demo.yml is valid");
    let code = demo_scenario();
    assert_eq!(demo.groups, code.groups);
    assert_eq!(demo.events.len(), code.events.len());
    assert_eq!(demo.apps[0].attr_unsupported, code.apps[0].attr_unsupported);
    assert_eq!(demo.apps[0].secret_key.expose(), DEMO_SECRET_KEY);
    Scenario::from_file(manifest("config/scenarios/outage.yml")).expect("outage.yml is valid");
    // bench.yml reads its key from the environment; any set variable will do here.
    let bench = std::fs::read_to_string(manifest("config/scenarios/bench.yml")).expect("exists");
    let missing =
        Scenario::from_yaml(&bench.replace("TIMATTR_BENCH_SECRET_KEY", "TIMATTR_SURELY_UNSET_VAR"))
            .expect_err("the variable is not set");
    assert!(
        missing.to_string().contains(
            "apps[0].secret_key_env: environment variable TIMATTR_SURELY_UNSET_VAR is not set"
        ),
        "{missing}"
    );
    let bench =
        Scenario::from_yaml(&bench.replace("TIMATTR_BENCH_SECRET_KEY", "CARGO_MANIFEST_DIR"))
            .expect("bench.yml is valid");
    assert_eq!(bench.apps[0].rate_limits, RateLimits::unlimited());
    let fake = Fake::new(bench);
    assert_eq!(fake.group_count(1_400_000_001), 100_000);
    assert_eq!(
        fake.attrs(1_400_000_001, "@TGS#bench99999")
            .expect("made")
            .len(),
        4
    );
}

#[test]
fn scenario_errors_name_their_place() {
    let app = "apps:\n  - sdkappid: 1\n    identifier: admin\n    secret_key: k\n";
    let cases: Vec<(String, &str)> = vec![
        ("colour: blue\n".into(), "unknown field `colour`"),
        (format!("{app}    colour: blue\n"), "unknown field `colour`"),
        (
            format!("{app}    groups:\n      - id: @TGS#x\n"),
            "must be quoted",
        ),
        (
            format!("{app}    groups:\n      - {{id: \"a b\"}}\n"),
            "apps[0].groups[0].id: \"a b\" is not a valid group ID",
        ),
        (
            format!("{app}    groups:\n      - {{id: g}}\n      - {{id: g}}\n"),
            "apps[0].groups[1].id: \"g\" appears twice",
        ),
        (
            format!("{app}    groups:\n      - {{id: g, type: Castle}}\n"),
            "unknown group type \"Castle\"",
        ),
        (
            format!(
                "{app}    groups:\n      - {{id: g, attrs: {{{}: v}}}}\n",
                "k".repeat(33)
            ),
            "apps[0].groups[0].attrs: a key is longer than 32 bytes",
        ),
        (
            format!("{app}    generate:\n      - {{count: 10, prefix: \"a b\"}}\n"),
            "apps[0].generate[0].prefix",
        ),
        (
            format!("{app}    generate:\n      - {{count: 10, prefix: p, attrs: 17}}\n"),
            "apps[0].generate[0].attrs: at most 16",
        ),
        (
            format!("{app}  - sdkappid: 1\n    identifier: x\n    secret_key: k\n"),
            "apps[1].sdkappid: 1 appears twice",
        ),
        (
            "apps:\n  - {sdkappid: 1, identifier: a}\n".into(),
            "apps[0]: one of secret_key and secret_key_env is required",
        ),
        (
            "apps:\n  - {sdkappid: 1, identifier: a, secret_key: k, secret_key_env: X}\n".into(),
            "apps[0]: set only one of",
        ),
        (
            format!("{app}events:\n  - {{at: 1m, group: g}}\n"),
            "events[0]: one action is required",
        ),
        (
            format!("{app}events:\n  - {{at: 1m, group: g, destroy: true, clear_attrs: true}}\n"),
            "events[0]: one action per event",
        ),
        (
            format!("{app}events:\n  - {{at: 1m, every: 1m, group: g, destroy: true}}\n"),
            "events[0]: set one of `at` and `every`",
        ),
        (
            format!("{app}events:\n  - {{group: g, destroy: true}}\n"),
            "events[0]: one of `at` and `every` is required",
        ),
        (
            format!("{app}events:\n  - {{at: 1m, destroy: true}}\n"),
            "events[0].group: required for destroy",
        ),
        (
            format!("{app}events:\n  - {{at: 1m, sdkappid: 2, group: g, destroy: true}}\n"),
            "events[0].sdkappid: no app 2",
        ),
        (
            format!("{app}events:\n  - {{at: 90, group: g, destroy: true}}\n"),
            "invalid duration",
        ),
        (
            format!("{app}events:\n  - {{at: 1m, fault: explode}}\n"),
            "unknown variant `explode`",
        ),
        (
            format!("{app}events:\n  - {{at: 1m, rotate_key_env: TIMATTR_SURELY_UNSET_VAR}}\n"),
            "events[0].rotate_key_env: environment variable",
        ),
    ];
    for (yaml, expected) in cases {
        let err = Scenario::from_yaml(&yaml).expect_err(&yaml).to_string();
        assert!(
            err.contains(expected),
            "for\n{yaml}\nexpected {expected:?} in: {err}"
        );
    }
    // Every problem at once.
    let err =
        Scenario::from_yaml("apps:\n  - {sdkappid: 1, identifier: \"\"}\nevents:\n  - {at: 1m}\n")
            .expect_err("bad");
    assert_eq!(err.problems.len(), 3, "{err}");
    // Secrets never appear in errors.
    let err = Scenario::from_yaml(
        "apps:\n  - {sdkappid: 1, identifier: a, secret_key: hunter2, secret_key_env: X}\n",
    )
    .expect_err("bad");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

#[test]
fn scenario_reads_every_action() {
    let yaml = r#"
apps:
  - sdkappid: 5
    identifier: admin
    secret_key: k
    rate_limits: {get_group_attr: 10, writes: null}
    attr_support: {Work: false}
    groups:
      - {id: "@TGS#g", type: Meeting, attrs: {n: 1, on: true}}
events:
  - {every: 10s, start: 1s, group: "@TGS#g", set_attrs: {a: "{n}"}}
  - {at: 1s, group: "@TGS#g", modify_attrs: {b: x}}
  - {at: 2s, group: "@TGS#g", delete_attrs: [b]}
  - {at: 3s, group: "@TGS#g", clear_attrs: true}
  - {at: 4s, group: "@TGS#h", create: Public}
  - {at: 5s, group: "@TGS#g", fault: {intermittent: {code: 10002, every: 2}}}
  - {at: 6s, fault: hang}
  - {at: 7s, clear_fault: true}
  - {at: 8s, rotate_key: k2}
  - {at: 9s, attr_support: {type: Private, supported: true}}
  - {at: 1h30m, group: "@TGS#g", destroy: true}
"#;
    let s = Scenario::from_yaml(yaml).expect("valid");
    assert_eq!(s.events.len(), 11);
    assert_eq!(
        s.apps[0].rate_limits,
        RateLimits {
            get_group_attr: Some(10),
            get_appid_group_list: Some(1),
            writes: None
        }
    );
    assert_eq!(s.apps[0].attr_unsupported, vec![GroupType::Private]);
    assert_eq!(s.groups[0].group_type, GroupType::ChatRoom);
    assert_eq!(s.groups[0].attrs, owned(&[("n", "1"), ("on", "true")]));
    assert_eq!(
        s.events[0].schedule,
        timattr_exporter::fake::Schedule::Every {
            period: Duration::from_secs(10),
            first: Duration::from_secs(1)
        }
    );
    assert_eq!(
        s.events[10].schedule,
        timattr_exporter::fake::Schedule::At(Duration::from_secs(5400))
    );
}

#[tokio::test(start_paused = true)]
async fn timed_events_follow_the_clock() {
    let yaml = r#"
apps:
  - sdkappid: 5
    identifier: admin
    secret_key: k
    groups:
      - {id: "@TGS#tick", attrs: {n: "0"}}
      - {id: "@TGS#doomed"}
events:
  - {every: 30s, group: "@TGS#tick", modify_attrs: {n: "{n}", "k{n}": v}}
  - {at: 1m, group: "@TGS#doomed", destroy: true}
  - {at: 45s, group: "@TGS#born", create: AVChatRoom}
  - {at: 50s, attr_support: {type: AVChatRoom, supported: false}}
"#;
    let fake = Fake::new(Scenario::from_yaml(yaml).expect("valid"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let events = tokio::spawn(fake.clone().run_events(async move {
        let _ = stopped.await;
    }));
    let at = |secs: u64| {
        tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(secs))
    };
    at(29).await;
    assert_eq!(fake.attrs(5, "@TGS#tick"), Ok(owned(&[("n", "0")])));
    at(2).await; // 31 s
    assert_eq!(
        fake.attrs(5, "@TGS#tick"),
        Ok(owned(&[("n", "1"), ("k1", "v")]))
    );
    at(16).await; // 47 s
    assert_eq!(fake.attrs(5, "@TGS#born"), Ok(vec![]));
    at(4).await; // 51 s
    assert_eq!(fake.attrs(5, "@TGS#born"), Err(10007));
    assert_eq!(fake.attrs(5, "@TGS#doomed"), Ok(vec![]));
    at(10).await; // 61 s
    assert_eq!(fake.attrs(5, "@TGS#doomed"), Err(10010));
    assert_eq!(
        fake.attrs(5, "@TGS#tick").expect("exists")[0],
        ("n".to_owned(), "2".to_owned())
    );
    let _ = stop.send(());
    events.await.expect("events stop on shutdown");
}

#[tokio::test(start_paused = true)]
async fn demo_scenario_changes_and_loses_groups() {
    let fake = Fake::new(demo_scenario());
    let ids = demo_group_ids();
    let app = DEMO_SDKAPPID;
    let ticker = "@TGS#demo_ticker";
    let doomed = "@TGS#demo_doomed";
    assert!(ids.iter().any(|id| id == ticker) && ids.iter().any(|id| id == doomed));
    assert_eq!(fake.attrs(app, "@TGS#demo_community"), Err(10007));
    let invalid: Vec<&String> = ids
        .iter()
        .filter(|id| fake.attrs(app, id) == Err(10015))
        .collect();
    assert_eq!(invalid.len(), 1);
    let healthy = ids.iter().filter(|id| fake.attrs(app, id).is_ok()).count();
    assert_eq!(healthy, ids.len() - 2);
    let before = fake.attrs(app, ticker).expect("exists");
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(fake.clone().run_events(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(31)).await;
    let after = fake.attrs(app, ticker).expect("exists");
    assert_ne!(before, after);
    assert_eq!(fake.attrs(app, doomed).map(|_| ()), Ok(()));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(fake.attrs(app, doomed), Err(10010));
    assert_ne!(fake.attrs(app, ticker).expect("exists"), after);
}

#[tokio::test]
async fn scenario_faults_switch_on_and_off_while_serving() {
    let yaml = r#"
apps:
  - {sdkappid: 1400000000, identifier: administrator, secret_key: test-secret-key, groups: [{id: "@TGS#a"}]}
events:
  - {at: 1s, group: "@TGS#a", fault: {error_code: 10002}}
  - {at: 2s, group: "@TGS#a", clear_fault: true}
"#;
    let s = start(Scenario::from_yaml(yaml).expect("valid")).await;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.last() != Some(&0) || !seen.contains(&10002) {
        assert!(tokio::time::Instant::now() < deadline, "saw {seen:?}");
        let code = get_attrs(&s, "@TGS#a").await.code();
        if seen.last() != Some(&code) {
            seen.push(code);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, vec![0, 10002, 0]);
}

#[tokio::test]
async fn binary_prints_its_address_serves_the_demo_and_stops_on_sigterm() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_timattr_fake_api"))
        .args(["--listen", "127.0.0.1:0", "--demo"])
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
        .expect("the documented line");
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");
    let q = format!(
        "sdkappid={DEMO_SDKAPPID}&identifier={DEMO_IDENTIFIER}&usersig={}&random=1&contenttype=json",
        sig_for(DEMO_SECRET_KEY, DEMO_SDKAPPID, DEMO_IDENTIFIER)
    );
    let url = format!("{base}{GET}?{q}");
    let mut codes = Vec::new();
    for id in [
        "@TGS#demo_lobby",
        "@TGS#demo_community",
        demo_group_ids().last().expect("ids").as_str(),
    ] {
        let resp = client()
            .post(&url)
            .body(json!({"GroupId": id}).to_string())
            .send()
            .await
            .expect("answered");
        let v: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
        codes.push(v["ErrorCode"].as_i64().expect("code"));
    }
    assert_eq!(codes, vec![0, 10007, 10015]);
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits in time")
        .expect("waits");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn binary_rejects_a_bad_scenario_with_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yml");
    std::fs::write(&path, "apps:\n  - {sdkappid: 1, identifier: a}\n").expect("write");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_timattr_fake_api"))
        .arg("--scenario")
        .arg(&path)
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("one of secret_key and secret_key_env is required"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// The reference's attribute-limit table (1047/44190): 10046 is a value over 4,000 bytes,
/// 10047 more than 16 keys.
#[tokio::test]
async fn value_and_key_count_limits_answer_the_reference_codes() {
    let s = start(base_scenario()).await;
    let kv = |k: &str, v: &str| json!({"key": k, "value": v});
    let v4001 = "v".repeat(4001);
    let a = call(
        &s,
        SET,
        json!({"GroupId": "@TGS#b", "GroupAttr": [kv("big", &v4001)]}),
    )
    .await;
    assert_envelope(&a, 10046);
    let many: Vec<Value> = (0..17).map(|i| kv(&format!("k{i}"), "v")).collect();
    let a = call(&s, SET, json!({"GroupId": "@TGS#b", "GroupAttr": many})).await;
    assert_envelope(&a, 10047);
    assert_eq!(s.set_attrs(APP, "@TGS#b", &[("big", &v4001)]), Err(10046));
}

/// `delete_group_attr` of a key that does not exist answers 10050, and the call fails whole.
#[tokio::test]
async fn deleting_a_missing_key_answers_10050() {
    let s = start(base_scenario()).await;
    let a = call(
        &s,
        DELETE,
        json!({"GroupId": "@TGS#a", "GroupAttr": [{"key": "k1"}, {"key": "missing"}]}),
    )
    .await;
    assert_envelope(&a, 10050);
    assert_eq!(
        pairs(&get_attrs(&s, "@TGS#a").await),
        owned(&[("k1", "v1"), ("k2", "v2")])
    );
    assert_eq!(s.delete_attrs(APP, "@TGS#a", &["missing"]), Err(10050));
    let a = call(
        &s,
        DELETE,
        json!({"GroupId": "@TGS#a", "GroupAttr": [{"key": "k1"}]}),
    )
    .await;
    assert_envelope(&a, 0);
    assert_eq!(
        pairs(&get_attrs(&s, "@TGS#a").await),
        owned(&[("k2", "v2")])
    );
}

/// Community groups support every attribute call but `clear_group_attr` (10007).
#[tokio::test]
async fn clearing_a_community_group_answers_10007() {
    let s = start(base_scenario()).await;
    let kv = |k: &str, v: &str| json!({"key": k, "value": v});
    let a = call(&s, CLEAR, json!({"GroupId": "@TGS#c"})).await;
    assert_envelope(&a, 10007);
    assert_eq!(pairs(&get_attrs(&s, "@TGS#c").await), owned(&[("c", "1")]));
    let a = call(
        &s,
        MODIFY,
        json!({"GroupId": "@TGS#c", "GroupAttr": [kv("d", "2")]}),
    )
    .await;
    assert_envelope(&a, 0);
    let a = call(
        &s,
        DELETE,
        json!({"GroupId": "@TGS#c", "GroupAttr": [{"key": "d"}]}),
    )
    .await;
    assert_envelope(&a, 0);
    assert_eq!(s.clear_attrs(APP, "@TGS#c"), Err(10007));
    // Other types clear as before.
    assert_envelope(&call(&s, CLEAR, json!({"GroupId": "@TGS#a"})).await, 0);
}

/// `cycling_next` makes `get_appid_group_list` page 0 → A → B → A whatever the groups, for
/// clients that must notice a cursor cycle; other calls are served as usual.
#[tokio::test]
async fn cycling_next_fault_cycles_the_list_cursor() {
    let app = AppSpec::new(APP, ADMIN, SecretKey::new(KEY)).with_rate_limits(RateLimits {
        get_appid_group_list: None,
        ..RateLimits::default()
    });
    let s = start(
        Scenario::new()
            .app(app)
            .group(APP, "@TGS#a", GroupType::Public, &[("k", "v")]),
    )
    .await;
    s.set_fault(FaultTarget::App(APP), Some(Fault::CyclingNext));
    let mut cursors = Vec::new();
    let mut next = 0u64;
    for _ in 0..4 {
        let a = call(&s, LIST, json!({"Limit": 10, "Next": next})).await;
        assert_envelope(&a, 0);
        next = a.json["Next"].as_u64().expect("Next is a u64");
        cursors.push(next);
    }
    let (a, b) = (NEXT_CURSOR_BASE, NEXT_CURSOR_BASE + 1);
    assert_eq!(cursors, vec![a, b, a, b]);
    assert_eq!(pairs(&get_attrs(&s, "@TGS#a").await), owned(&[("k", "v")]));
    s.set_fault(FaultTarget::App(APP), None);
    let a = call(&s, LIST, json!({"Limit": 10, "Next": 0})).await;
    assert_eq!(a.json["Next"], 0, "{}", a.json);
}
