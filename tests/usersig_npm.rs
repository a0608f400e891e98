//! UserSigs from `usersig::generate` are accepted by the official npm package `tls-sig-api-v2`
//! (1.0.2), decoded with Node's zlib and re-signed with the library's own HMAC code
//! (`tests/npm/verify.js`). Needs `node` and `npm`; installs the package from the lockfile
//! (`npm ci`) when `tests/npm/node_modules` is missing. There is no skip switch: a machine
//! without Node fails this test (the test command's machines have Node and npm).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::write::ZlibEncoder;
use serde_json::json;
use timattr_exporter::secret::SecretKey;
use timattr_exporter::usersig;

fn npm_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/npm")
}

/// Installs once per test binary: both tests call this, and two concurrent `npm ci` runs in
/// one directory would trample each other.
fn ensure_installed() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(install);
}

fn install() {
    let dir = npm_dir();
    if dir
        .join("node_modules/tls-sig-api-v2/TLSSigAPIv2.js")
        .exists()
    {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("npm must be installed to run this test");
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

/// Runs verify.js on the cases; returns (exit code, stdout).
fn run_node(cases: &serde_json::Value) -> (i32, String) {
    let mut child = Command::new("node")
        .arg("verify.js")
        .current_dir(npm_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node must be installed to run this test");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(cases.to_string().as_bytes())
        .expect("write cases to node");
    let out = child.wait_with_output().expect("node runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn case(key: &str, sdkappid: u64, identifier: &str, usersig: &str) -> serde_json::Value {
    json!({"key": key, "sdkappid": sdkappid, "identifier": identifier, "usersig": usersig})
}

#[test]
fn official_library_accepts_our_usersigs() {
    ensure_installed();
    let inputs: &[(&str, u64, &str, u64, u64)] = &[
        (
            "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e",
            1_400_000_000,
            "administrator",
            1_700_000_000,
            86_400,
        ),
        ("k", 1_400_000_001, "0", 1_569_910_200, 15_552_000),
        (
            "a key with spaces, symbols +/= and ünïcödé",
            20_000_000_000,
            "admin_01-x",
            4_000_000_000,
            1,
        ),
        ("x", 1, "a", 0, 180 * 86_400),
    ];
    let cases: Vec<_> = inputs
        .iter()
        .map(|&(key, app, id, time, ttl)| {
            let sig = usersig::generate(&SecretKey::new(key), app, id, time, ttl);
            case(key, app, id, sig.expose())
        })
        .collect();
    let (code, out) = run_node(&json!(cases));
    assert_eq!(code, 0, "node rejected our UserSigs:\n{out}");
    assert_eq!(out.matches(": ok").count(), inputs.len(), "{out}");
}

#[test]
fn official_library_rejects_tampered_usersigs() {
    ensure_installed();
    let key = SecretKey::new("the-right-key");
    let good = usersig::generate(&key, 1_400_000_000, "admin", 1_700_000_000, 86_400);

    // Signed with another key.
    let wrong_key = usersig::generate(
        &SecretKey::new("another-key"),
        1_400_000_000,
        "admin",
        1_700_000_000,
        86_400,
    );
    // The right signature over a document whose expiry was extended afterwards.
    let mut doc = usersig::decode(good.expose()).expect("our own UserSig decodes");
    doc.expire += 1;
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    z.write_all(&serde_json::to_vec(&doc).expect("document serializes"))
        .expect("write to Vec");
    let extended: String = STANDARD
        .encode(z.finish().expect("finish zlib into Vec"))
        .chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            c => c,
        })
        .collect();

    for (what, sig, sdkappid, identifier) in [
        ("wrong key", wrong_key.expose(), 1_400_000_000, "admin"),
        ("extended expiry", extended.as_str(), 1_400_000_000, "admin"),
        ("other identifier", good.expose(), 1_400_000_000, "admin2"),
        ("other sdkappid", good.expose(), 1_400_000_001, "admin"),
        (
            "garbage",
            "eJyrVgrxCdYrSy1SslIy0jNQ0gHz",
            1_400_000_000,
            "admin",
        ),
    ] {
        let (code, out) = run_node(&json!([case(key.expose(), sdkappid, identifier, sig)]));
        assert_eq!(code, 1, "{what}: node should reject it:\n{out}");
        assert!(out.contains("FAIL"), "{what}: {out}");
    }
    // And the untampered one passes, so the rejections above are about the tampering.
    let (code, out) = run_node(&json!([case(
        key.expose(),
        1_400_000_000,
        "admin",
        good.expose()
    )]));
    assert_eq!(code, 0, "{out}");
}
