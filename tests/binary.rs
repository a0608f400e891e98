//! The real binary against the fake API: startup log, metrics after polls, change counting,
//! deleted (10010) and unreadable (10007) groups, reload by signal and by HTTP, SIGTERM, exit
//! codes, `--config.check`, `--web.listen-address=:PORT` (IPv4 and IPv6), `--version` and `--demo`.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;
use timattr_exporter::fake::GroupType;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_counts_changes_and_handles_deleted_and_denied_groups() {
    let server = fake_with_app().await;
    group(&server, "@TGS#ok", &[("status", "open"), ("pin", "1")]);
    group(&server, "@TGS#gone", &[("a", "b")]);
    server
        .fake
        .create_group(APP, "@TGS#voice", GroupType::AVChatRoom)
        .unwrap();
    server
        .fake
        .set_attr_support(APP, GroupType::AVChatRoom, false);
    let cfg = ConfigDir::new(
        server.base_url().as_str(),
        &["@TGS#ok", "@TGS#gone", "@TGS#voice"],
        "",
    );
    let exporter = Exporter::start(&cfg.path(), &[]);
    let startup = exporter.logs();
    assert!(startup.contains("version="), "{startup}");
    assert!(startup.contains("apps=1"), "{startup}");
    assert!(startup.contains("groups=3"), "{startup}");

    let url = exporter.url("/metrics");
    let ok = [("group_id", "@TGS#ok")];
    let text = eventually(WAIT, || async {
        let t = scrape(&url).await;
        (value(&t, "timattr_group_up", &ok) == Some(1.0)
            && value(
                &t,
                "timattr_group_error_code",
                &[("group_id", "@TGS#voice")],
            )
            .is_some())
        .then_some(t)
    })
    .await
    .expect("first polls show up");
    assert_eq!(value(&text, "timattr_group_attributes", &ok), Some(2.0));
    assert_eq!(
        value(&text, "timattr_group_attributes_bytes", &ok),
        Some(5.0)
    );
    assert_eq!(
        value(
            &text,
            "timattr_group_attribute_changes_total",
            &[("group_id", "@TGS#ok"), ("change", "modified")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            "timattr_group_error_code",
            &[("group_id", "@TGS#voice")]
        ),
        Some(10007.0)
    );
    assert_eq!(
        value(
            &text,
            "timattr_group_attributes",
            &[("group_id", "@TGS#voice")]
        ),
        None
    );
    assert_eq!(value(&text, "timattr_groups", &[]), Some(3.0));

    // Change attributes: one modified, one added, one removed.
    server
        .fake
        .set_attrs(APP, "@TGS#ok", &[("status", "closed"), ("topic", "x")])
        .unwrap();
    server.fake.destroy_group(APP, "@TGS#gone").unwrap();
    let text = eventually(WAIT, || async {
        let t = scrape(&url).await;
        (value(
            &t,
            "timattr_group_attribute_changes_total",
            &[("group_id", "@TGS#ok"), ("change", "modified")],
        ) == Some(1.0)
            && value(&t, "timattr_group_error_code", &[("group_id", "@TGS#gone")]) == Some(10010.0))
        .then_some(t)
    })
    .await
    .expect("changes counted and the deleted group seen");
    for (change, n) in [("added", 1.0), ("removed", 1.0), ("modified", 1.0)] {
        assert_eq!(
            value(
                &text,
                "timattr_group_attribute_changes_total",
                &[("group_id", "@TGS#ok"), ("change", change)]
            ),
            Some(n),
            "{change}"
        );
    }
    assert_eq!(
        value(&text, "timattr_group_up", &[("group_id", "@TGS#gone")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            "timattr_group_attributes",
            &[("group_id", "@TGS#gone")]
        ),
        None,
        "a deleted group's attribute series are removed"
    );
    assert_eq!(
        value(
            &text,
            "timattr_groups_by_error_code",
            &[("error_code", "10010")]
        ),
        Some(1.0)
    );
    assert!(exporter.wait_for_log("attributes changed", WAIT).is_some());
    assert!(!exporter.logs().contains(KEY));
    assert!(!text.contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_by_signal_and_http_and_exits_0_on_sigterm() {
    let server = fake_with_app().await;
    group(&server, "@TGS#a", &[("k", "v")]);
    group(&server, "@TGS#b", &[("k", "v")]);
    let cfg = ConfigDir::new(server.base_url().as_str(), &["@TGS#a"], "");
    let mut exporter = Exporter::start(&cfg.path(), &[]);
    let url = exporter.url("/metrics");
    let client = reqwest::Client::new();

    assert_eq!(
        client
            .get(exporter.url("/-/healthy"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    eventually(WAIT, || async {
        let s = client
            .get(exporter.url("/-/ready"))
            .send()
            .await
            .ok()?
            .status();
        (s == 200).then_some(())
    })
    .await
    .expect("ready");
    let a = [("group_id", "@TGS#a")];
    let modified = [("group_id", "@TGS#a"), ("change", "modified")];
    eventually(WAIT, || async {
        let t = scrape(&url).await;
        (value(&t, "timattr_group_up", &a) == Some(1.0)).then_some(())
    })
    .await
    .expect("a polled");
    // A change of a is counted before the reload, so that there is a counter to keep.
    server
        .fake
        .set_attrs(APP, "@TGS#a", &[("k", "v2")])
        .unwrap();
    eventually(WAIT, || async {
        let t = scrape(&url).await;
        (value(&t, "timattr_group_attribute_changes_total", &modified) == Some(1.0)).then_some(())
    })
    .await
    .expect("a's change counted");
    let a_success_before = value(
        &scrape(&url).await,
        "timattr_group_last_success_timestamp_seconds",
        &a,
    )
    .expect("a has succeeded");

    // SIGHUP with a second group added: the first keeps its counters, the second appears.
    cfg.write(server.base_url().as_str(), &["@TGS#a", "@TGS#b"], "");
    exporter.signal("HUP");
    let t = eventually(WAIT, || async {
        let t = scrape(&url).await;
        (value(&t, "timattr_group_up", &[("group_id", "@TGS#b")]) == Some(1.0)
            && value(&t, "timattr_groups", &[]) == Some(2.0))
        .then_some(t)
    })
    .await
    .expect("reload by SIGHUP applied");
    assert_eq!(
        value(&t, "timattr_group_attribute_changes_total", &modified),
        Some(1.0),
        "a's change counter survived the reload"
    );
    assert!(
        value(&t, "timattr_group_last_success_timestamp_seconds", &a)
            .is_some_and(|ts| ts >= a_success_before),
        "a's series survived the reload"
    );

    // A bad config over HTTP: 500 with the error text, the old config keeps running.
    std::fs::write(cfg.path(), "apps: []\nbogus: 1\n").unwrap();
    let resp = client.post(exporter.url("/-/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    let body = resp.text().await.unwrap();
    assert!(body.contains("bogus"), "{body}");
    let t = scrape(&url).await;
    assert_eq!(
        value(&t, "timattr_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(value(&t, "timattr_groups", &[]), Some(2.0));
    assert_eq!(
        client
            .get(exporter.url("/-/reload"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );

    // A good config over HTTP: only b remains; a's series vanish.
    cfg.write(server.base_url().as_str(), &["@TGS#b"], "");
    let resp = client.post(exporter.url("/-/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let t = scrape(&url).await;
    assert_eq!(
        value(&t, "timattr_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_eq!(value(&t, "timattr_group_up", &a), None);

    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn bad_config_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("timattr.yml");
    std::fs::write(
        &path,
        "apps:\n  - sdkappid: 1400000000\n    region: mars\n    identifier: admin\n    secret_key: x\n    groups: [\"@TGS#a\"]\n",
    )
    .unwrap();
    let out = Command::new(exporter_bin())
        .arg(format!("--config.file={}", path.display()))
        .arg("--web.listen-address=127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apps[0].region"), "{stderr}");

    let out = Command::new(exporter_bin())
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    for bad in [
        "--web.max-requests=-1",
        "--web.max-requests=many",
        "--web.max-requests=",
    ] {
        let out = Command::new(exporter_bin()).arg(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--web.max-requests"), "{bad}: {stderr}");
    }
    // With a valid config, so that the 64 is the shard check's and not a missing file's.
    let cfg = ConfigDir::new("http://127.0.0.1:9/", &["@TGS#a"], "");
    let config = format!("--config.file={}", cfg.path().display());
    let out = Command::new(exporter_bin())
        .args([config.as_str(), "--config.check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "the config itself is valid");
    let out = Command::new(exporter_bin())
        .args([
            config.as_str(),
            "--total-shards=2",
            "--shard=2",
            "--config.check",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shard 2 is out of range for --total-shards 2"),
        "{stderr}"
    );
}

/// `--config.check` on the config in `cfg`, with `extra` flags.
fn config_check(cfg: &ConfigDir, extra: &[String]) -> std::process::Output {
    Command::new(exporter_bin())
        .arg(format!("--config.file={}", cfg.path().display()))
        .args(extra)
        .arg("--config.check")
        .output()
        .unwrap()
}

#[test]
fn config_check_prints_the_result_without_secrets() {
    let cfg = ConfigDir::new("http://127.0.0.1:9/", &["@TGS#a", "@TGS#b"], "");
    let out = config_check(&cfg, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("valid"), "{stdout}");
    assert!(stdout.contains(&APP.to_string()), "{stdout}");
    assert!(!stdout.contains(KEY) && !stderr.contains(KEY));

    std::fs::write(cfg.path(), "poll_interval: 0s\napps: []\n").unwrap();
    let out = config_check(&cfg, &[]);
    assert_eq!(out.status.code(), Some(64));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("poll_interval") && stdout.contains("apps"),
        "all errors at once: {stdout}"
    );

    // A bad web config is part of the result, on stdout beside the config's own.
    let web = cfg.path().with_file_name("web.yml");
    std::fs::write(&web, "bogus: 1\n").unwrap();
    let out = config_check(&cfg, &[format!("--web.config.file={}", web.display())]);
    assert_eq!(out.status.code(), Some(64));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("--web.config.file") && stdout.contains("bogus"),
        "{stdout}"
    );
    assert!(
        stdout.contains("poll_interval"),
        "both files' errors: {stdout}"
    );
}

/// `--version` as Prometheus tools print it: version and revision, build date, toolchain.
#[test]
fn version_prints_revision_build_date_and_toolchain() {
    for flag in ["--version", "-V"] {
        let out = Command::new(exporter_bin()).arg(flag).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        let head = format!(
            "timattr_exporter, version {} (revision: ",
            env!("CARGO_PKG_VERSION")
        );
        let revision = lines
            .first()
            .and_then(|l| l.strip_prefix(head.as_str()))
            .and_then(|l| l.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{flag}: first line: {stdout}"));
        assert!(!revision.is_empty(), "{stdout}");
        let field = |name: &str| {
            lines
                .iter()
                .find_map(|l| l.trim_start().strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("{flag}: no {name}: {stdout}"))
        };
        let date = field("build date:");
        let shape = date.len() == 20
            && date.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                10 => b == b'T',
                13 | 16 => b == b':',
                19 => b == b'Z',
                _ => b.is_ascii_digit(),
            });
        assert!(shape, "build date is RFC 3339 UTC: {date:?}");
        assert!(field("rust version:").starts_with("rustc 1."), "{stdout}");
        assert!(field("platform:").contains('/'), "{stdout}");
        assert!(out.stderr.is_empty(), "no log on --version");
    }
}

/// The port of a logged `host:port` (IPv6 hosts in brackets).
fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// The status `path` answers on loopback `ip` at `port` (the server must answer on it).
async fn status_at(ip: &str, port: u16, path: &str) -> u16 {
    install_crypto();
    let url = format!("http://{ip}:{port}{path}");
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .expect("client")
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url} not served: {e}"))
        .status()
        .as_u16()
}

/// `:PORT` listens on every interface, IPv4 and IPv6 alike, as Go exporters do (SPEC), for the
/// metrics and the callbacks listener (they share the address syntax).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colon_port_listens_on_ipv4_and_ipv6() {
    let server = fake_with_app().await;
    group(&server, "@TGS#a", &[("k", "v")]);
    let cfg = ConfigDir::new(server.base_url().as_str(), &["@TGS#a"], "");
    let config_flag = format!("--config.file={}", cfg.path().display());
    let mut exporter = Exporter::spawn_exact(
        &[
            &config_flag,
            "--web.listen-address=:0",
            "--callback.listen-address=:0",
        ],
        &[],
    );
    let port = port_of(&exporter.addr);
    let callbacks = exporter
        .wait_for_log("receiving callbacks", WAIT)
        .and_then(|line| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix("callback_listen_address="))
                .map(|a| port_of(a.trim_matches('"')))
        })
        .unwrap_or_else(|| panic!("no callback address logged: {}", exporter.logs()));
    for ip in ["127.0.0.1", "[::1]"] {
        assert_eq!(status_at(ip, port, "/-/healthy").await, 200, "{ip}");
        // The callbacks listener serves POST /callback only: a 405 shows it answers here.
        assert_eq!(status_at(ip, callbacks, "/callback").await, 405, "{ip}");
    }
    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(Duration::from_secs(10)), Some(0));
}

/// An IPv6 address in brackets is a listen address like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bracketed_ipv6_listen_address() {
    let server = fake_with_app().await;
    let cfg = ConfigDir::new(server.base_url().as_str(), &["@TGS#a"], "");
    let config_flag = format!("--config.file={}", cfg.path().display());
    let mut exporter = Exporter::spawn_exact(&[&config_flag, "--web.listen-address=[::1]:0"], &[]);
    assert!(exporter.addr.starts_with("[::1]:"), "{}", exporter.addr);
    let port = port_of(&exporter.addr);
    assert_eq!(status_at("[::1]", port, "/-/healthy").await, 200);
    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(Duration::from_secs(10)), Some(0));
}

/// `--demo` needs no config: it polls the built-in fake's sample groups (SPEC "Command line").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_polls_the_sample_groups_without_a_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let absent = format!("--config.file={}", dir.path().join("none.yml").display());
    let mut exporter = Exporter::spawn_exact(
        &["--demo", &absent, "--web.listen-address=127.0.0.1:0"],
        &[],
    );
    let groups = timattr_exporter::fake::demo_group_ids().len() as f64;
    let startup = exporter.logs();
    assert!(startup.contains("apps=1"), "{startup}");
    assert!(startup.contains(&format!("groups={groups}")), "{startup}");
    let url = exporter.url("/metrics");
    eventually(WAIT, || async {
        let t = scrape(&url).await;
        (value(&t, "timattr_groups", &[]) == Some(groups)
            && value(&t, "timattr_group_up", &[("group_id", "@TGS#demo_lobby")]) == Some(1.0))
        .then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("demo groups polled: {}", exporter.logs()));
    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(Duration::from_secs(10)), Some(0));
}

/// `HTTP_PROXY` in the environment is honoured, as Go exporters honour it: the endpoint's host
/// does not resolve, so the group can only come up through the proxy (the fake API takes the
/// proxy's absolute-form requests). Without a proxy variable the client skips reqwest's proxy
/// matcher; this keeps that shortcut from dropping proxies that are set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_from_the_environment_carries_the_requests() {
    let server = fake_with_app().await;
    group(&server, "@TGS#proxied", &[("k", "v")]);
    let cfg = ConfigDir::new("http://timattr-proxy-test.invalid/", &["@TGS#proxied"], "");
    let yaml = std::fs::read_to_string(cfg.path()).unwrap().replace(
        "    identifier:",
        "    allow_insecure_http: true\n    identifier:",
    );
    std::fs::write(cfg.path(), yaml).unwrap();
    let proxy = server.base_url().as_str().trim_end_matches('/').to_string();
    let exporter = Exporter::start_with_env(&cfg.path(), &[], &[("HTTP_PROXY", &proxy)]);
    let url = exporter.url("/metrics");
    let proxied = [("group_id", "@TGS#proxied")];
    let up = eventually(WAIT, || async {
        let t = scrape(&url).await;
        (value(&t, "timattr_group_up", &proxied) == Some(1.0)).then_some(())
    })
    .await;
    assert!(
        up.is_some(),
        "the group never came up through the proxy:\n{}",
        exporter.logs()
    );
}

/// The threads that render `/metrics` run at a lower priority (nice `BLOCKING_NICE`) than the
/// poll thread (the main thread, nice 0), so a scrape competing for a core does not delay poll
/// slots. Read from `/proc`: a scrape leaves its render thread idle in the pool for a while.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_threads_run_below_the_poll_thread() {
    let server = fake_with_app().await;
    group(&server, "@TGS#nice", &[("k", "v")]);
    let cfg = ConfigDir::new(server.base_url().as_str(), &["@TGS#nice"], "");
    let exporter = Exporter::start(&cfg.path(), &[]);
    let body = scrape(&exporter.url("/metrics")).await;
    assert!(body.contains("timattr_groups"), "{body}");
    let pid = exporter.child.id();
    // `/proc/PID/task/TID/stat`: "TID (COMM) STATE ..." with the nice value the 19th field.
    let threads: Vec<(u32, String, i32)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(") ")?;
            let (tid, comm) = head.split_once(" (")?;
            let nice = rest.split_whitespace().nth(16)?.parse().ok()?;
            Some((tid.parse().ok()?, comm.to_string(), nice))
        })
        .collect();
    let main = threads.iter().find(|(tid, _, _)| *tid == pid);
    assert_eq!(main.map(|t| t.2), Some(0), "the poll thread: {threads:?}");
    let render = threads.iter().find(|(_, comm, _)| comm == "timattr-render");
    assert_eq!(
        render.map(|t| t.2),
        Some(timattr_exporter::http::BLOCKING_NICE),
        "a render thread: {threads:?}"
    );
}
