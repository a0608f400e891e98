//! Push with the real binary: `--callback.listen-address`, a token from a file, the fake API
//! sending its signed callbacks (and a forged one), the token in no output (log, `/metrics`,
//! `--config.check`, the refusal bodies); and `--demo`, whose built-in fake pushes to it.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use timattr_exporter::fake::{CallbackTarget, DEMO_CALLBACK_TOKEN, DEMO_SDKAPPID, callback_sign};
use timattr_exporter::secret::SecretKey;

const TOKEN: &str = "T0KEN-cb-5e4d3c2b1a0f9e8d";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn callbacks_through_the_binary_never_show_the_token() {
    let server = fake_with_app().await;
    group(&server, "@TGS#bin", &[("k", "v1")]);
    let cfg = ConfigDir::new(server.base_url().as_ref(), &["@TGS#bin"], "");
    std::fs::write(cfg.dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let yaml = std::fs::read_to_string(cfg.path())
        .unwrap()
        .replace("poll_interval: 1s", "poll_interval: 24h")
        .replace(
            "    secret_key_file: key\n",
            "    secret_key_file: key\n    callback_token_file: token\n",
        );
    std::fs::write(cfg.path(), yaml).unwrap();

    let check = Command::new(exporter_bin())
        .arg(format!("--config.file={}", cfg.path().display()))
        .arg("--config.check")
        .output()
        .unwrap();
    let check_out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{check_out}");
    assert!(
        check_out.contains("callback_token: from file"),
        "{check_out}"
    );
    assert!(
        check_out.contains("readable by group or others"),
        "a world-readable token file is warned about: {check_out}"
    );

    let port = free_port();
    let listen = format!("--callback.listen-address=127.0.0.1:{port}");
    let mut exporter = Exporter::start(&cfg.path(), &["--log.level=debug", &listen]);
    let url = format!("http://127.0.0.1:{port}/callback");
    // The fake signs its callbacks with the console's token, the one in the file.
    server.fake.set_callback(
        APP,
        Some(CallbackTarget::new(url.parse().unwrap()).with_token(SecretKey::new(TOKEN))),
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    server
        .fake
        .set_attrs(APP, "@TGS#bin", &[("k", "v2")])
        .unwrap();
    let sent = eventually(Duration::from_secs(20), || async {
        let sent = server.fake.sent_callbacks();
        (!sent.is_empty()).then(|| sent[0].clone())
    })
    .await
    .expect("the fake sent the write's callback");
    assert_eq!(sent.answer, Ok(200), "{sent:?}");
    let body = r#"{"CallbackCommand":"Group.CallbackAfterGroupAttrChanged","GroupId":"@TGS#bin","Type":"Public"}"#;
    let forged_query = format!(
        "SdkAppid={APP}&CallbackCommand=Group.CallbackAfterGroupAttrChanged&contenttype=json&ClientIP=1.2.3.4&OptPlatform=RESTAPI&Sign={}&RequestTime={now}",
        callback_sign("guess", now)
    );
    let forged = reqwest::Client::new()
        .post(format!("{url}?{forged_query}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let refusal = forged.text().await.unwrap();

    let metrics = exporter.url("/metrics");
    let up = eventually(Duration::from_secs(20), || async {
        let t = scrape(&metrics).await;
        value(&t, "timattr_group_up", &[("group_id", "@TGS#bin")]).filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(up, Some(1.0), "the accepted callback polled the group");
    let text = scrape(&metrics).await;
    assert_eq!(
        value(
            &text,
            "timattr_callback_rejections_total",
            &[("reason", "signature")]
        ),
        Some(1.0)
    );
    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(Duration::from_secs(15)), Some(0));
    let logs = exporter.logs();
    for (name, output) in [
        ("log", &logs),
        ("/metrics", &text),
        ("--config.check", &check_out),
        ("refusal", &refusal),
    ] {
        assert!(!output.contains(TOKEN), "the token is in the {name}");
        for t in now - 5..now + 5 {
            assert!(
                !output.contains(&callback_sign(TOKEN, t)),
                "a valid Sign is in the {name}"
            );
        }
    }
    assert!(logs.contains("receiving callbacks"), "{logs}");
}

/// `--demo` wires its built-in fake's callbacks to its own callback listener: a write and a
/// deletion made through the demo API's control endpoints arrive by push, signed.
#[tokio::test]
async fn the_demo_receives_its_fake_apis_callbacks() {
    let exporter = Exporter::start_demo(&[]);
    let line = exporter
        .wait_for_log(
            "simulated Tencent Chat API started",
            Duration::from_secs(10),
        )
        .expect("the demo names its API");
    let api = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("api="))
        .expect("api= in the demo line")
        .trim_matches('"')
        .trim_end_matches('/')
        .to_owned();
    assert!(
        exporter
            .wait_for_log(
                "demo: the simulated API sends its callbacks",
                Duration::from_secs(10)
            )
            .is_some(),
        "{}",
        exporter.logs()
    );
    let metrics = exporter.url("/metrics");
    const LOBBY: &str = "@TGS#demo_lobby";
    let up = eventually(Duration::from_secs(20), || async {
        let t = scrape(&metrics).await;
        value(&t, "timattr_group_up", &[("group_id", LOBBY)]).filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(up, Some(1.0), "the demo polled its lobby");
    let app = DEMO_SDKAPPID.to_string();
    let pushed = |command: &'static str| {
        let metrics = metrics.clone();
        let app = app.clone();
        async move {
            let t = scrape(&metrics).await;
            value(
                &t,
                "timattr_callbacks_total",
                &[("sdkappid", &app), ("command", command)],
            )
            .unwrap_or(0.0)
        }
    };
    let changed_before = pushed("Group.CallbackAfterGroupAttrChanged").await;

    let client = reqwest::Client::new();
    let answer = client
        .post(format!("{api}/fake/attrs"))
        .body(
            serde_json::json!({"sdkappid": DEMO_SDKAPPID, "group_id": LOBBY, "mode": "modify", "attrs": {"pushed": "1"}})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let seen = eventually(Duration::from_secs(20), || async {
        let t = scrape(&metrics).await;
        value(
            &t,
            "timattr_group_attribute_changes_total",
            &[("group_id", LOBBY), ("change", "added")],
        )
        .filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(seen, Some(1.0), "the pushed change was counted");
    assert!(
        pushed("Group.CallbackAfterGroupAttrChanged").await > changed_before,
        "the change came by push"
    );

    let answer = client
        .post(format!("{api}/fake/destroy"))
        .body(serde_json::json!({"sdkappid": DEMO_SDKAPPID, "group_id": LOBBY}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let code = eventually(Duration::from_secs(20), || async {
        let t = scrape(&metrics).await;
        value(&t, "timattr_group_error_code", &[("group_id", LOBBY)]).filter(|v| *v == 10010.0)
    })
    .await;
    assert_eq!(code, Some(10010.0), "the deletion shows");
    assert!(pushed("Group.CallbackAfterGroupDestroyed").await >= 1.0);
    let sent: serde_json::Value = serde_json::from_str(
        &client
            .get(format!("{api}/fake/callbacks"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .expect("JSON");
    let sent = sent["sent"].as_array().expect("a list of sent callbacks");
    assert!(!sent.is_empty());
    for c in sent {
        assert_eq!(c["status"], 200, "{c}");
    }
    let t = scrape(&metrics).await;
    assert_eq!(
        value(
            &t,
            "timattr_callback_rejections_total",
            &[("reason", "signature")]
        ),
        Some(0.0),
        "the demo's callbacks are signed with the token it verifies"
    );
    assert!(
        !exporter.logs().contains(DEMO_CALLBACK_TOKEN),
        "the demo token is printed"
    );
}
