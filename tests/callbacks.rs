//! Push (SPEC "Callbacks"): the whole daemon in process with its callbacks listener, against the
//! fake API, which sends Tencent's callbacks itself after its writes, `destroy_group` and
//! `create_group` (signed with the app's token when the test gives one). Forged, stale and
//! foreign callbacks go out through the fake's raw sender. Polls are counted at the fake.
//!
//! Every app polls at `poll_interval: 24h`, so a poll within seconds of a callback was caused by
//! it: a group's regular slot comes once a day at a fixed wall-clock phase, and the chance that
//! it falls inside a test's few seconds is below 1 in 10,000. Each test starts its groups' first
//! poll with a callback too.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use timattr_exporter::config;
use timattr_exporter::daemon::{self, ConfigSource, Options};
use timattr_exporter::fake::{CallbackTarget, FakeServer, GroupType, callback_sign};
use timattr_exporter::http::ServerOptions;
use timattr_exporter::metrics::BuildInfo;
use timattr_exporter::secret::SecretKey;
use timattr_exporter::shard::Shard;
use timattr_exporter::shutdown::{self, Trigger};

const TOKEN: &str = "cb-token-7c1d0e9a";
const WAIT: Duration = Duration::from_secs(20);

struct Running {
    metrics: String,
    callbacks: String,
    stop: Trigger,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.fire();
    }
}

/// The daemon with `app_extra` appended to its one app (indented by four spaces), and groups;
/// the fake sends the app's callbacks to it, signed with `signing` when given (the console's
/// token, which a test may set wrong).
async fn start(
    server: &FakeServer,
    groups: &[&str],
    app_extra: &str,
    signing: Option<&str>,
) -> Running {
    let list: String = groups.iter().map(|g| format!("\"{g}\", ")).collect();
    let yaml = format!(
        "poll_interval: 24h\napps:\n  - sdkappid: {APP}\n    endpoint: {}\n    identifier: {ADMIN}\n    secret_key: {KEY}\n    rate_limit: 50\n    timeout: 2s\n    groups: [{list}]\n{app_extra}",
        server.base_url()
    );
    let loaded = config::parse(&yaml, &|_| None, Path::new(".")).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let callbacks = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr: SocketAddr = listener.local_addr().unwrap();
    let callbacks_addr: SocketAddr = callbacks.local_addr().unwrap();
    let (stop, shutdown) = shutdown::channel();
    let (_tx, reloads) = tokio::sync::mpsc::channel(1);
    let options = Options {
        source: ConfigSource::Fixed(Box::new(loaded.config.clone())),
        config: loaded.config,
        shard: Shard::default(),
        server: ServerOptions::default(),
        build: BuildInfo {
            version: "test",
            revision: "test".into(),
            rustc: "test".into(),
        },
        reloads,
        callbacks: Some(callbacks),
        auto_reload: None,
    };
    tokio::spawn(daemon::run(options, listener, shutdown));
    let callbacks = format!("http://{callbacks_addr}/callback");
    let mut target = CallbackTarget::new(callbacks.parse().unwrap());
    if let Some(token) = signing {
        target = target.with_token(SecretKey::new(token));
    }
    server.fake.set_callback(APP, Some(target));
    Running {
        metrics: format!("http://{metrics_addr}/metrics"),
        callbacks,
        stop,
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The query string Tencent sends, signed with `token` at `time` when given.
fn query(sdkappid: u64, command: &str, signed: Option<(&str, u64)>) -> String {
    let mut q = format!(
        "SdkAppid={sdkappid}&CallbackCommand={command}&contenttype=json&ClientIP=10.0.0.1&OptPlatform=RESTAPI"
    );
    if let Some((token, time)) = signed {
        q.push_str(&format!(
            "&Sign={}&RequestTime={time}",
            callback_sign(token, time)
        ));
    }
    q
}

fn body(command: &str, group: &str, group_type: &str) -> String {
    serde_json::json!({
        "CallbackCommand": command,
        "GroupId": group,
        "Type": group_type,
        "Operator_Account": "admin",
        "EventTime": 1_669_872_112_000u64,
    })
    .to_string()
}

const CHANGED: &str = "Group.CallbackAfterGroupAttrChanged";
const DESTROYED: &str = "Group.CallbackAfterGroupDestroyed";
const CREATED: &str = "Group.CallbackAfterCreateGroup";

fn polls(server: &FakeServer, group: &str) -> usize {
    server
        .fake
        .request_times_with_groups(APP, "get_group_attr")
        .iter()
        .filter(|(_, g)| g.as_deref() == Some(group))
        .count()
}

/// Waits for a group's first (regular or pushed) poll to land in /metrics.
async fn polled_once(r: &Running, group: &str) {
    eventually(WAIT, || async {
        let t = scrape(&r.metrics).await;
        value(&t, "timattr_group_up", &[("group_id", group)]).filter(|v| *v == 1.0)
    })
    .await
    .expect("first poll");
}

/// Waits until the fake has sent `n` callbacks of `command` for `group` and the exporter took
/// each (HTTP 200).
async fn delivered(server: &FakeServer, group: &str, command: &str, n: usize) {
    let sent = eventually(WAIT, || async {
        let sent: Vec<_> = server
            .fake
            .sent_callbacks()
            .into_iter()
            .filter(|c| c.group_id == group && c.command.command() == command)
            .collect();
        (sent.len() >= n).then_some(sent)
    })
    .await
    .unwrap_or_else(|| panic!("the fake sent {n} {command} for {group}"));
    for c in &sent {
        assert_eq!(c.answer, Ok(200), "{c:?}");
    }
}

async fn changes(r: &Running, group: &str, kind: &str) -> Option<f64> {
    let t = scrape(&r.metrics).await;
    value(
        &t,
        "timattr_group_attribute_changes_total",
        &[("group_id", group), ("change", kind)],
    )
}

#[tokio::test]
async fn a_signed_change_callback_is_counted_within_about_a_second() {
    let server = fake_with_app().await;
    group(&server, "@TGS#live", &[("state", "idle")]);
    let r = start(
        &server,
        &["@TGS#live"],
        &format!("    callback_token: {TOKEN}\n"),
        Some(TOKEN),
    )
    .await;
    // Its first poll: pushed by the write's callback, so the test need not wait for its phase.
    server
        .fake
        .set_attrs(APP, "@TGS#live", &[("state", "idle")])
        .unwrap();
    delivered(&server, "@TGS#live", CHANGED, 1).await;
    polled_once(&r, "@TGS#live").await;
    // Past the one-poll-a-second spacing, a change; the fake sends its callback.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let written = std::time::Instant::now();
    server
        .fake
        .set_attrs(APP, "@TGS#live", &[("state", "playing")])
        .unwrap();
    let seen = eventually(WAIT, || async {
        changes(&r, "@TGS#live", "modified")
            .await
            .filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(seen, Some(1.0), "the change was counted");
    let took = written.elapsed();
    // A second is SPEC's promise; the margin is for a loaded CI machine's scrapes.
    assert!(
        took < Duration::from_secs(3),
        "seen {took:?} after the write"
    );
    delivered(&server, "@TGS#live", CHANGED, 2).await;
    assert_eq!(polls(&server, "@TGS#live"), 2, "one poll per callback");
    let t = scrape(&r.metrics).await;
    assert_eq!(
        value(
            &t,
            "timattr_callbacks_total",
            &[("sdkappid", &APP.to_string()), ("command", CHANGED)]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_destroyed_group_shows_10010_at_once() {
    let server = fake_with_app().await;
    group(&server, "@TGS#doomed", &[("k", "v")]);
    // An app without a token takes unsigned callbacks.
    let r = start(&server, &["@TGS#doomed"], "", None).await;
    server
        .fake
        .set_attrs(APP, "@TGS#doomed", &[("k", "v")])
        .unwrap();
    delivered(&server, "@TGS#doomed", CHANGED, 1).await;
    polled_once(&r, "@TGS#doomed").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    server.fake.destroy_group(APP, "@TGS#doomed").unwrap();
    let code = eventually(WAIT, || async {
        let t = scrape(&r.metrics).await;
        value(
            &t,
            "timattr_group_error_code",
            &[("group_id", "@TGS#doomed")],
        )
        .filter(|v| *v == 10010.0)
    })
    .await;
    assert_eq!(code, Some(10010.0));
    delivered(&server, "@TGS#doomed", DESTROYED, 1).await;
    let t = scrape(&r.metrics).await;
    assert_eq!(
        value(
            &t,
            "timattr_group_attributes",
            &[("group_id", "@TGS#doomed")]
        ),
        None,
        "a deleted group's attribute series are gone"
    );
}

#[tokio::test]
async fn forged_stale_unsigned_and_foreign_callbacks_are_refused_with_no_poll() {
    let server = fake_with_app().await;
    group(&server, "@TGS#quiet", &[("k", "v")]);
    // The console's token is not the one the exporter holds: every callback the fake sends
    // for the app's own writes is a forgery to the exporter.
    let r = start(
        &server,
        &["@TGS#quiet"],
        &format!("    callback_token: {TOKEN}\n"),
        Some("not-the-token"),
    )
    .await;
    server
        .fake
        .set_attrs(APP, "@TGS#quiet", &[("k", "w")])
        .unwrap();
    let forged = eventually(WAIT, || async {
        let sent = server.fake.sent_callbacks();
        (!sent.is_empty()).then(|| sent[0].answer.clone())
    })
    .await;
    assert_eq!(
        forged,
        Some(Ok(403)),
        "a wrongly signed callback is refused"
    );

    let b = || body(CHANGED, "@TGS#quiet", "Public");
    let now = now_unix();
    let cases = [
        ("forged", query(APP, CHANGED, Some(("not-the-token", now)))),
        ("stale", query(APP, CHANGED, Some((TOKEN, now - 400)))),
        ("future", query(APP, CHANGED, Some((TOKEN, now + 400)))),
        ("unsigned", query(APP, CHANGED, None)),
        ("foreign", query(APP + 1, CHANGED, Some((TOKEN, now)))),
        ("no app", "CallbackCommand=x".to_owned()),
    ];
    for (name, q) in &cases {
        let status = server.fake.send_raw_callback(&r.callbacks, q, b()).await;
        assert_eq!(status, Ok(403), "{name}");
    }
    let signed = query(APP, CHANGED, Some((TOKEN, now)));
    let raw = |body: String| server.fake.send_raw_callback(&r.callbacks, &signed, body);
    assert_eq!(raw("not json".into()).await, Ok(400));
    assert_eq!(raw("{}".into()).await, Ok(400));
    let big = format!("{{\"GroupId\":\"{}\"}}", "x".repeat(1 << 20));
    assert_eq!(raw(big).await, Ok(413));
    // Not the callback endpoint.
    let client = reqwest::Client::new();
    let other = r.callbacks.replace("/callback", "/metrics");
    assert_eq!(client.get(&other).send().await.unwrap().status(), 404);
    assert_eq!(client.get(&r.callbacks).send().await.unwrap().status(), 405);
    let on_metrics = r.metrics.replace("/metrics", "/callback");
    assert_eq!(
        client
            .post(&on_metrics)
            .body(b())
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "/callback is not served on the metrics listener"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        polls(&server, "@TGS#quiet"),
        0,
        "no refused callback caused a poll"
    );
    let t = scrape(&r.metrics).await;
    let refused = |reason: &str| {
        value(
            &t,
            "timattr_callback_rejections_total",
            &[("reason", reason)],
        )
        .unwrap_or(-1.0)
    };
    // The fake's own forgery, the raw forged one and the unsigned one.
    assert_eq!(refused("signature"), 3.0);
    assert_eq!(refused("stale"), 2.0);
    assert_eq!(refused("unknown_app"), 2.0);
    assert_eq!(refused("bad_request"), 3.0);
}

#[tokio::test]
async fn a_burst_for_one_group_makes_at_most_two_polls() {
    let server = fake_with_app().await;
    group(&server, "@TGS#hot", &[("score", "0")]);
    let r = start(&server, &["@TGS#hot"], "", None).await;
    // 20 writes, each with its callback, within a second (the in-process writes are not held
    // to Tencent's 5 a second, so the burst is as dense as the test can make it).
    let started = std::time::Instant::now();
    for i in 0..20 {
        server
            .fake
            .set_attrs(APP, "@TGS#hot", &[("score", &i.to_string())])
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the burst took {:?}",
        started.elapsed()
    );
    delivered(&server, "@TGS#hot", CHANGED, 20).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = polls(&server, "@TGS#hot");
    assert!(n >= 1, "the burst was seen");
    assert!(n <= 2, "{n} polls for a burst within a second");
    // The last value of the burst is what /metrics shows: the folded poll came after it.
    let t = scrape(&r.metrics).await;
    assert_eq!(
        value(
            &t,
            "timattr_group_attribute_value_hash",
            &[("group_id", "@TGS#hot"), ("key", "score")]
        ),
        Some(value_hash("19")),
        "{t}"
    );
}

#[tokio::test]
async fn a_created_group_of_a_discovered_type_is_polled_at_once() {
    let server = fake_with_app().await;
    group(&server, "@TGS#static", &[("k", "v")]);
    let r = start(
        &server,
        &["@TGS#static"],
        "    discover:\n      group_types: [Public]\n      refresh_interval: 10m\n",
        None,
    )
    .await;
    // The first listing has answered (one list call per page).
    eventually(WAIT, || async {
        let t = scrape(&r.metrics).await;
        value(&t, "timattr_groups", &[("sdkappid", &APP.to_string())]).filter(|v| *v >= 1.0)
    })
    .await
    .expect("groups assigned");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lists = server.fake.request_times(APP, "get_appid_group_list").len();
    assert!(lists >= 1, "discovery listed");

    // The fake sends each creation's callback; a created group starts with no attributes.
    server
        .fake
        .create_group(APP, "@TGS#new", GroupType::Public)
        .unwrap();
    server
        .fake
        .create_group(APP, "@TGS#room", GroupType::AVChatRoom)
        .unwrap();
    delivered(&server, "@TGS#new", CREATED, 1).await;
    delivered(&server, "@TGS#room", CREATED, 1).await;
    let up = eventually(WAIT, || async {
        let t = scrape(&r.metrics).await;
        value(&t, "timattr_group_up", &[("group_id", "@TGS#new")]).filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(up, Some(1.0), "the created group was polled");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(polls(&server, "@TGS#room"), 0, "another type is ignored");
    assert_eq!(
        server.fake.request_times(APP, "get_appid_group_list").len(),
        lists,
        "no list call for the created group"
    );
    let t = scrape(&r.metrics).await;
    assert!(!t.contains("@TGS#room"), "no series for the ignored group");
    assert_eq!(
        value(&t, "timattr_groups", &[("sdkappid", &APP.to_string())]),
        Some(2.0),
        "the static group and the created one"
    );
}

/// SPEC: a body over 1 MiB is answered 413. The sender must see that answer, not a broken pipe:
/// a listener that answers before the body has arrived and then closes makes the sender's
/// remaining writes fail, and a sender such as reqwest then reports only the write error. The
/// bodies here are well past what loopback socket buffers absorb, so that failure would show on
/// every run, and each is followed by a good callback on the same client.
#[tokio::test]
async fn an_oversized_body_is_answered_413_to_a_sender_still_writing_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = fake_with_app().await;
    group(&server, "@TGS#big", &[("k", "v")]);
    let token = format!("    callback_token: {TOKEN}\n");
    let r = start(&server, &["@TGS#big"], &token, Some(TOKEN)).await;
    let signed = query(APP, CHANGED, Some((TOKEN, now_unix())));
    let url = format!("{}?{signed}", r.callbacks);
    let client = reqwest::Client::new();
    let good = body(CHANGED, "@TGS#big", "Public");
    for size in [(1 << 20) + 1, 3 << 20, 8 << 20, 3 << 20] {
        let sent = client.post(&url).body(vec![b' '; size]).send().await;
        let status = sent
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("{e:?}"));
        assert_eq!(status, Ok(413), "a {size}-byte body");
        let then = client.post(&url).body(good.clone()).send().await.unwrap();
        assert_eq!(
            then.status(),
            200,
            "a good callback after the {size}-byte body"
        );
    }

    // Chunked, so no length is declared up front: refused once the bound is passed.
    let addr = r
        .callbacks
        .trim_start_matches("http://")
        .trim_end_matches("/callback");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /callback?{signed} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 << 10];
    for _ in 0..48 {
        let sent = async {
            stream
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            stream.write_all(&chunk).await?;
            stream.write_all(b"\r\n").await
        };
        sent.await
            .expect("the listener reads a chunked body to its end");
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = vec![0; 1024];
    let n = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A sender that declares a body far past the bound is answered at once, without its body:
    // one that waits for `100 Continue` never gets it, and one that does not is not read for long.
    for expect in ["Expect: 100-continue\r\n", ""] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /callback?{signed} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{expect}\r\n",
            1u64 << 30
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{expect}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }

    let t = scrape(&r.metrics).await;
    let refused = value(
        &t,
        "timattr_callback_rejections_total",
        &[("reason", "bad_request")],
    );
    assert_eq!(refused, Some(7.0), "each oversized body is counted once");
}
