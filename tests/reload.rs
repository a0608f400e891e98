//! Reloads through the real binary (SPEC "Command line", "Reload"):
//! - `--config.auto-reload-interval`: a changed config file or a rotated key file is applied
//!   without a signal, a bad one keeps the running config and is retried, and a file read that
//!   hangs (a FIFO) stalls neither polling nor the shutdown;
//! - reload requests arriving while one runs are merged: a flood of `POST /-/reload` makes far
//!   fewer reloads than requests and does not stall polling.

mod common;

use std::time::Duration;

use common::*;
use timattr_exporter::secret::SecretKey;

const WAIT: Duration = Duration::from_secs(20);

async fn reload_successful(metrics: &str) -> Option<f64> {
    let t = scrape(metrics).await;
    value(&t, "timattr_config_last_reload_successful", &[])
}

async fn up(metrics: &str, group: &str) -> Option<f64> {
    let t = scrape(metrics).await;
    value(&t, "timattr_group_up", &[("group_id", group)])
}

#[tokio::test]
async fn config_and_key_file_changes_apply_without_a_signal() {
    let server = fake_with_app().await;
    group(&server, "@TGS#a", &[("k", "v")]);
    group(&server, "@TGS#b", &[("k", "v")]);
    let cfg = ConfigDir::new(server.base_url().as_ref(), &["@TGS#a"], "");
    let exporter = Exporter::start(&cfg.path(), &["--config.auto-reload-interval=1s"]);
    let metrics = exporter.url("/metrics");
    let a_up = eventually(WAIT, || async {
        up(&metrics, "@TGS#a").await.filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(a_up, Some(1.0), "{}", exporter.logs());
    assert_eq!(
        up(&metrics, "@TGS#b").await,
        None,
        "b is not configured yet"
    );

    // A group added to the file is polled, with no SIGHUP.
    cfg.write(server.base_url().as_ref(), &["@TGS#a", "@TGS#b"], "");
    let b_up = eventually(WAIT, || async {
        up(&metrics, "@TGS#b").await.filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(b_up, Some(1.0), "{}", exporter.logs());
    assert!(
        exporter
            .wait_for_log("auto-reload: the config or a file it names changed", WAIT)
            .is_some()
    );

    // The key rotated in the console, then in the mounted Secret: polls fail until the file
    // changes, then succeed with the new key.
    const NEW_KEY: &str = "rotated-secret-key-0123456789abcdef0123456789abcdef0123456789ab";
    server.fake.set_secret_key(APP, SecretKey::new(NEW_KEY));
    let failing = eventually(WAIT, || async {
        up(&metrics, "@TGS#a").await.filter(|v| *v == 0.0)
    })
    .await;
    assert_eq!(failing, Some(0.0), "the old key is refused");
    std::fs::write(cfg.dir.path().join("key"), format!("{NEW_KEY}\n")).unwrap();
    let healthy = eventually(WAIT, || async {
        let a = up(&metrics, "@TGS#a").await?;
        let b = up(&metrics, "@TGS#b").await?;
        (a == 1.0 && b == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        healthy,
        Some(()),
        "the rotated key file was applied: {}",
        exporter.logs()
    );
    assert!(!exporter.logs().contains(NEW_KEY), "the key is in the log");
}

#[tokio::test]
async fn a_bad_config_keeps_the_running_one_and_is_retried_until_fixed() {
    let server = fake_with_app().await;
    group(&server, "@TGS#a", &[("k", "v")]);
    group(&server, "@TGS#c", &[("k", "v")]);
    let cfg = ConfigDir::new(server.base_url().as_ref(), &["@TGS#a"], "");
    let exporter = Exporter::start(&cfg.path(), &["--config.auto-reload-interval=1s"]);
    let metrics = exporter.url("/metrics");
    eventually(WAIT, || async {
        up(&metrics, "@TGS#a").await.filter(|v| *v == 1.0)
    })
    .await
    .expect("a polled");
    let requests_before = server.fake.request_times(APP, "get_group_attr").len();

    std::fs::write(cfg.path(), "poll_interval: [not a duration\n").unwrap();
    let failed = eventually(WAIT, || async {
        reload_successful(&metrics).await.filter(|v| *v == 0.0)
    })
    .await;
    assert_eq!(failed, Some(0.0), "the bad config is reported");
    // Retried at every tick, not once.
    let retried = eventually(WAIT, || async {
        let n = exporter
            .logs()
            .matches("config reload failed; keeping the running config")
            .count();
        (n >= 2).then_some(n)
    })
    .await;
    assert!(retried.is_some(), "{}", exporter.logs());
    // The running config keeps polling.
    let polled_on = eventually(WAIT, || async {
        let n = server.fake.request_times(APP, "get_group_attr").len();
        (n > requests_before + 2).then_some(n)
    })
    .await;
    assert!(polled_on.is_some(), "polling stopped under a bad config");

    cfg.write(server.base_url().as_ref(), &["@TGS#a", "@TGS#c"], "");
    let fixed = eventually(WAIT, || async {
        let ok = reload_successful(&metrics).await?;
        let c = up(&metrics, "@TGS#c").await?;
        (ok == 1.0 && c == 1.0).then_some(())
    })
    .await;
    assert_eq!(fixed, Some(()), "{}", exporter.logs());
}

#[tokio::test]
async fn a_hung_key_file_read_stalls_neither_polling_nor_shutdown() {
    let server = fake_with_app().await;
    group(&server, "@TGS#a", &[("k", "v")]);
    let cfg = ConfigDir::new(server.base_url().as_ref(), &["@TGS#a"], "");
    let mut exporter = Exporter::start(&cfg.path(), &["--config.auto-reload-interval=1s"]);
    let metrics = exporter.url("/metrics");
    eventually(WAIT, || async {
        up(&metrics, "@TGS#a").await.filter(|v| *v == 1.0)
    })
    .await
    .expect("a polled");
    // The key file becomes a FIFO nobody writes to: opening it for reading blocks forever.
    let key = cfg.dir.path().join("key");
    std::fs::remove_file(&key).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&key)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
    // The watcher is now stuck reading it; polls go on at 1 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = server.fake.request_times(APP, "get_group_attr").len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server.fake.request_times(APP, "get_group_attr").len();
    assert!(
        after >= before + 2,
        "polling stalled: {before} then {after} requests"
    );
    let t = scrape(&metrics).await;
    assert!(t.contains("timattr_group_up"), "/metrics still answers");
    let asked = std::time::Instant::now();
    exporter.signal("TERM");
    assert_eq!(
        exporter.wait_exit(Duration::from_secs(8)),
        Some(0),
        "the shutdown waited on the hung read: {}",
        exporter.logs()
    );
    assert!(asked.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn a_flood_of_reload_requests_is_merged_and_polling_goes_on() {
    let server = fake_with_app().await;
    let groups = ["@TGS#f0", "@TGS#f1", "@TGS#f2"];
    for g in groups {
        group(&server, g, &[("k", "v")]);
    }
    let cfg = ConfigDir::new(server.base_url().as_ref(), &groups, "");
    let exporter = Exporter::start(&cfg.path(), &[]);
    let metrics = exporter.url("/metrics");
    eventually(WAIT, || async {
        up(&metrics, "@TGS#f2").await.filter(|v| *v == 1.0)
    })
    .await
    .expect("polled");
    let reload_url = exporter.url("/-/reload");
    let before = server.fake.request_times(APP, "get_group_attr").len();
    let started = std::time::Instant::now();
    let flood = Duration::from_secs(5);
    // 8 clients, each sending its next request as soon as the last is answered.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = reload_url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut answered = 0u32;
                while started.elapsed() < flood {
                    let status = client.post(&url).send().await.expect("answered").status();
                    assert_eq!(status, 200);
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let mut requests = 0;
    for c in clients {
        requests += c.await.unwrap();
    }
    let elapsed = started.elapsed();
    let polls = server.fake.request_times(APP, "get_group_attr").len() - before;
    // 3 groups at 1 s: about 3 a second; the flood may cost a poll or two, not the rhythm.
    let expected = 3.0 * elapsed.as_secs_f64();
    assert!(
        polls as f64 >= expected * 0.7,
        "{polls} polls in {elapsed:?} during the flood (expected about {expected:.0})"
    );
    let reloads = exporter.logs().matches("config reloaded").count() as u32;
    assert!(
        requests >= 16,
        "only {requests} reload requests were answered"
    );
    assert!(
        reloads < requests,
        "{reloads} reloads for {requests} requests: none were merged"
    );
    assert_eq!(reload_successful(&metrics).await, Some(1.0));
}

/// A key file that became readable by others is warned about when a reload reads it, as at
/// start (SPEC: secrets are never printed; the warning names the file, not its content).
#[tokio::test]
async fn a_key_file_opened_up_is_warned_about_on_reload() {
    use std::os::unix::fs::PermissionsExt;
    let server = fake_with_app().await;
    group(&server, "@TGS#a", &[("k", "v")]);
    let cfg = ConfigDir::new(server.base_url().as_ref(), &["@TGS#a"], "");
    let exporter = Exporter::start(&cfg.path(), &[]);
    assert!(
        !exporter.logs().contains("readable by group or others"),
        "a 0600 key file is not warned about: {}",
        exporter.logs()
    );
    let key = cfg.dir.path().join("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    exporter.signal("HUP");
    let line = exporter
        .wait_for_log("readable by group or others", WAIT)
        .unwrap_or_else(|| panic!("no warning on reload: {}", exporter.logs()));
    assert!(line.contains("level=warn"), "{line}");
    assert!(line.contains("mode 0644"), "{line}");
    assert!(!exporter.logs().contains(KEY), "the key is printed");
}
