//! Push with the real binary: `--callback.listen-address`, a token from a file, callbacks
//! accepted and refused, and the token in no output (log, `/metrics`, `--config.check`, the
//! refusal bodies).

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use timattr_exporter::callback::sign;

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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let body = r#"{"CallbackCommand":"Group.CallbackAfterGroupAttrChanged","GroupId":"@TGS#bin","Type":"Public"}"#;
    let client = reqwest::Client::new();
    let send = |sign: String| {
        let q = format!(
            "SdkAppid={APP}&CallbackCommand=Group.CallbackAfterGroupAttrChanged&contenttype=json&ClientIP=1.2.3.4&OptPlatform=RESTAPI&Sign={sign}&RequestTime={now}"
        );
        client.post(format!("{url}?{q}")).body(body).send()
    };
    let good = send(sign(TOKEN, &now)).await.unwrap();
    assert_eq!(good.status(), 200);
    let forged = send(sign("guess", &now)).await.unwrap();
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
        assert!(
            !output.contains(&sign(TOKEN, &now)),
            "a valid Sign is in the {name}"
        );
    }
    assert!(logs.contains("receiving callbacks"), "{logs}");
}
