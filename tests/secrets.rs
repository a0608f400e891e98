//! Secret hygiene: the real binary at `--log.level=debug` is driven through every failure path
//! (wrong key → 70009, expired UserSig, 5xx, timeouts, undecodable answers, an API that echoes
//! the request URL back, bad configs, a failed reload, `--config.check`), and every log line,
//! `/metrics`, the reload answer and every `--config.check` output is searched for the secret
//! key, for every UserSig the API actually received, and for anything shaped like a UserSig.
//! A key file readable by others draws a warning.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use timattr_exporter::fake::{Fault, FaultTarget};
use timattr_exporter::secret::SecretKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);
const ECHO_APP: u64 = 1_400_000_009;

/// A stand-in API that records every request target and answers 70009 with an `ErrorInfo`
/// quoting that target, query string and UserSig included, as a careless gateway might.
async fn echoing_api() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let sink = Arc::clone(&sink);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // The head, then as much body as Content-Length says.
                let head_end = loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                sink.lock().unwrap().push(target.clone());
                let body = serde_json::json!({
                    "ActionStatus": "FAIL",
                    "ErrorCode": 70009,
                    "ErrorInfo": format!("signature check failed for POST {target}"),
                })
                .to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

/// The UserSigs in recorded request targets.
fn usersigs(targets: &[String]) -> Vec<String> {
    let mut sigs: Vec<String> = targets
        .iter()
        .filter_map(|t| {
            let query = t.split_once('?')?.1;
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "usersig")
                .map(|(_, v)| v.into_owned())
        })
        .collect();
    sigs.sort();
    sigs.dedup();
    sigs
}

/// Whether `text` holds something shaped like a UserSig: base64 of a zlib stream starts `eJ`,
/// and a real one runs to 150+ characters of Tencent's alphabet (`*`, `-`, `_` for `+`, `/`,
/// `=`). Forty is far longer than any word that starts `eJ` by chance.
fn usersig_shaped(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let sig_char = |b: u8| b.is_ascii_alphanumeric() || b"*-_+/=%".contains(&b);
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'e' && bytes[i + 1] == b'J' {
            let len = bytes[i..].iter().take_while(|b| sig_char(**b)).count();
            if len >= 42 {
                return Some(&text[i..i + len]);
            }
        }
        i += 1;
    }
    None
}

fn assert_clean(what: &str, text: &str, sigs: &[String]) {
    assert!(!text.contains(KEY), "{what} holds the secret key:\n{text}");
    for sig in sigs {
        assert!(
            !text.contains(sig.as_str()),
            "{what} holds a UserSig:\n{text}"
        );
        // A prefix long enough to be unmistakable, in case something truncates.
        assert!(
            !text.contains(&sig[..40.min(sig.len())]),
            "{what} holds the start of a UserSig:\n{text}"
        );
    }
    if let Some(found) = usersig_shaped(text) {
        panic!("{what} holds something shaped like a UserSig ({found}):\n{text}");
    }
    assert!(!text.contains("panicked"), "{what} shows a panic:\n{text}");
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("timattr.yml");
    std::fs::write(&path, body).unwrap();
    path
}

fn config_check(path: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(exporter_bin())
        .arg(format!("--config.file={}", path.display()))
        .arg("--config.check")
        .arg("--log.level=debug")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn usersig_shape_detector_works() {
    let sig =
        timattr_exporter::usersig::generate(&SecretKey::new(KEY), APP, ADMIN, 1_700_000_000, 3600);
    assert!(usersig_shaped(&format!("x usersig={} y", sig.expose())).is_some());
    assert!(usersig_shaped("usersig=<redacted> eJust a word").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_usersig_in_any_output_through_every_failure_path() {
    let server = fake_with_app().await;
    let groups = [
        "@TGS#ok",
        "@TGS#http502",
        "@TGS#hang",
        "@TGS#expired",
        "@TGS#garbage",
    ];
    for g in groups {
        group(&server, g, &[("k", "v")]);
    }
    let fault = |g: &str, f: Fault| {
        server
            .fake
            .set_fault(FaultTarget::Group(APP, g.into()), Some(f))
    };
    fault("@TGS#http502", Fault::HttpStatus(502));
    fault("@TGS#hang", Fault::Hang);
    fault("@TGS#expired", Fault::ErrorCode(70001));
    fault("@TGS#garbage", Fault::InvalidJson);
    let (echo_url, echo_seen) = echoing_api().await;

    let dir = tempfile::tempdir().unwrap();
    // World-readable on purpose: it must draw a warning (and still work).
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let group_list: String = groups
        .iter()
        .map(|g| format!("      - \"{g}\"\n"))
        .collect();
    let good = format!(
        "poll_interval: 1s\napps:\n  - sdkappid: {APP}\n    endpoint: {}\n    identifier: {ADMIN}\n    secret_key_file: key\n    usersig_ttl: 1h\n    timeout: 1s\n    groups:\n{group_list}  - sdkappid: {ECHO_APP}\n    endpoint: {echo_url}\n    identifier: {ADMIN}\n    secret_key: \"{KEY}\"\n    timeout: 1s\n    groups: [\"@TGS#echo\"]\n",
        server.base_url()
    );
    let config = write_config(dir.path(), &good);

    let mut exporter = Exporter::start(&config, &["--log.level=debug"]);
    let warning = exporter
        .wait_for_log("readable by group or others", WAIT)
        .unwrap_or_else(|| panic!("no permissions warning:\n{}", exporter.logs()));
    assert!(warning.contains("level=warn"), "{warning}");
    assert!(
        warning.contains("key"),
        "the warning names the file: {warning}"
    );

    let url = exporter.url("/metrics");
    let code = |t: &str, g: &str| value(t, "timattr_group_error_code", &[("group_id", g)]);
    eventually(WAIT, || async {
        let t = scrape(&url).await;
        (code(&t, "@TGS#ok") == Some(0.0)
            && code(&t, "@TGS#http502") == Some(-1.0)
            && code(&t, "@TGS#hang") == Some(-1.0)
            && code(&t, "@TGS#expired") == Some(70001.0)
            && code(&t, "@TGS#garbage") == Some(-1.0)
            && code(&t, "@TGS#echo") == Some(70009.0))
        .then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("every failure shows:\n{}", exporter.logs()));

    // The wrong key: every group of the app answers 70009.
    server
        .fake
        .set_secret_key(APP, SecretKey::new("another-key"));
    eventually(WAIT, || async {
        let t = scrape(&url).await;
        (code(&t, "@TGS#ok") == Some(70009.0)).then_some(())
    })
    .await
    .expect("70009 after the key changed");

    // Failed reloads, by HTTP and by SIGHUP, with the key inline in the bad config.
    let bad = format!(
        "poll_interval: 1s\nbogus: 1\napps:\n  - sdkappid: {APP}\n    region: mars\n    identifier: {ADMIN}\n    secret_key: \"{KEY}\"\n    groups: [\"@TGS#ok\"]\n"
    );
    write_config(dir.path(), &bad);
    let client = reqwest::Client::new();
    let resp = client.post(exporter.url("/-/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    let reload_body = resp.text().await.unwrap();
    assert!(reload_body.contains("bogus"), "{reload_body}");
    exporter.signal("HUP");
    let failed_reloads = || {
        exporter
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("config reload failed"))
            .count()
    };
    for _ in 0..100 {
        if failed_reloads() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(failed_reloads() >= 2, "{}", exporter.logs());
    let metrics = scrape(&url).await;

    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(WAIT), Some(0));
    let logs = exporter.logs();

    // Every UserSig either API received.
    let mut targets = echo_seen.lock().unwrap().clone();
    assert!(!targets.is_empty(), "the echoing API was called");
    let echo_sigs = usersigs(&targets);
    assert!(!echo_sigs.is_empty());
    // The fake's UserSigs: the same key, identifier and app at the second each was made; the
    // exporter makes one per TTL (and on 70001), so they are few. Rebuild every candidate over
    // the run's seconds rather than trusting a capture.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut sigs = echo_sigs;
    for t in now - 120..=now {
        sigs.push(
            timattr_exporter::usersig::generate(&SecretKey::new(KEY), APP, ADMIN, t, 3600)
                .expose()
                .to_owned(),
        );
    }
    targets.clear();

    for (what, text) in [
        ("the log", logs.as_str()),
        ("/metrics", metrics.as_str()),
        ("the reload answer", reload_body.as_str()),
    ] {
        assert_clean(what, text, &sigs);
    }
    // The paths were taken, so the test checked something.
    for needle in [
        "UserSig rejected; regenerating it",
        "reason=timeout",
        "http_status=502",
        "reason=invalid_response",
        "error_code=70009",
        "config reload failed",
    ] {
        assert!(logs.contains(needle), "no {needle:?} in the log:\n{logs}");
    }

    // --config.check: the good config (with its warning), a bad one holding the key inline, a
    // YAML syntax error on the key's own line, and a missing environment variable.
    write_config(dir.path(), &good);
    let (code_, out) = config_check(&config, &[]);
    assert_eq!(code_, Some(0), "{out}");
    assert!(out.contains("readable by group or others"), "{out}");
    assert_clean("--config.check (good)", &out, &sigs);

    let cases = [
        ("bad fields", bad.clone()),
        (
            "syntax error on the key's line",
            format!(
                "apps:\n  - sdkappid: {APP}\n    region: singapore\n    identifier: {ADMIN}\n    secret_key: \"{KEY}\n    groups: [\"@TGS#ok\"]\n"
            ),
        ),
        (
            "key as a mapping",
            format!(
                "apps:\n  - sdkappid: {APP}\n    region: singapore\n    identifier: {ADMIN}\n    secret_key: {{{KEY}: 1}}\n    groups: [\"@TGS#ok\"]\n"
            ),
        ),
        (
            "key as a list",
            format!(
                "apps:\n  - sdkappid: {APP}\n    region: singapore\n    identifier: {ADMIN}\n    secret_key: [\"{KEY}\"]\n    groups: [\"@TGS#ok\"]\n"
            ),
        ),
        (
            "two secrets",
            format!(
                "apps:\n  - sdkappid: {APP}\n    region: singapore\n    identifier: {ADMIN}\n    secret_key: \"{KEY}\"\n    secret_key_env: TIMATTR_TEST_KEY\n    groups: [\"@TGS#ok\"]\n"
            ),
        ),
        (
            "a missing environment variable",
            format!(
                "apps:\n  - sdkappid: {APP}\n    region: singapore\n    identifier: {ADMIN}\n    secret_key_env: TIMATTR_NO_SUCH_VAR\n    groups: [\"@TGS#ok\"]\n"
            ),
        ),
        (
            "the key under an unknown name",
            format!(
                "apps:\n  - sdkappid: {APP}\n    region: singapore\n    identifier: {ADMIN}\n    secretkey: \"{KEY}\"\n    groups: [\"@TGS#ok\"]\n"
            ),
        ),
    ];
    for (what, yaml) in cases {
        write_config(dir.path(), &yaml);
        let (code_, out) = config_check(&config, &[("TIMATTR_TEST_KEY", KEY)]);
        assert_eq!(code_, Some(64), "{what}: {out}");
        assert_clean(&format!("--config.check ({what})"), &out, &sigs);
        // And the daemon's own startup error, which goes through the log.
        let out = Command::new(exporter_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .arg("--log.level=debug")
            .env("TIMATTR_TEST_KEY", KEY)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{what}");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_clean(&format!("startup ({what})"), &text, &sigs);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_at_debug_hold_no_usersig_either() {
    let server = fake_with_app().await;
    group(&server, "@TGS#ok", &[("k", "v")]);
    server.fake.set_fault(
        FaultTarget::Group(APP, "@TGS#ok".into()),
        Some(Fault::Intermittent {
            code: 70001,
            every: 2,
        }),
    );
    let cfg = ConfigDir::new(server.base_url().as_str(), &["@TGS#ok"], "");
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Exporter::start reads the logfmt startup line; a JSON one is read here.
    let mut child = Command::new(exporter_bin())
        .arg(format!("--config.file={}", cfg.path().display()))
        .args([
            "--web.listen-address=127.0.0.1:0",
            "--log.level=debug",
            "--log.format=json",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&lines);
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    let seen = eventually(WAIT, || async {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("regenerating"))
            .then_some(())
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let log = lines.lock().unwrap().join("\n");
    assert!(seen.is_some(), "a UserSig was regenerated:\n{log}");
    assert_eq!(status.code(), Some(0));
    assert!(log.starts_with('{'), "JSON lines: {log}");
    // Every UserSig the exporter can have made in this run: the same key, identifier, app and
    // TTL (the config's 1h) at each second of it, the regenerated ones included.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sigs: Vec<String> = (started - 1..=now)
        .map(|t| {
            timattr_exporter::usersig::generate(&SecretKey::new(KEY), APP, ADMIN, t, 3600)
                .expose()
                .to_owned()
        })
        .collect();
    assert_clean("JSON log", &log, &sigs);
}
