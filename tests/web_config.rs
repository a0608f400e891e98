//! `web_config::load`: every bad file gets an error that names the file and says what is wrong;
//! good files (including exporter-toolkit's optional keys) load.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use timattr_exporter::web_config::{self, RateLimit, WebConfigError};

/// A directory with a CA, a server certificate and key, and a `web.yml` to fill in.
struct Files {
    dir: tempfile::TempDir,
    cert: String,
    key: String,
}

impl Files {
    fn new() -> Files {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca).unwrap().pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.crt"), &cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        Files {
            dir,
            cert,
            key: key.serialize_pem(),
        }
    }

    fn load(&self, yaml: &str) -> Result<web_config::WebConfig, WebConfigError> {
        let path = self.dir.path().join("web.yml");
        std::fs::write(&path, yaml).unwrap();
        web_config::load(&path)
    }

    fn error(&self, yaml: &str) -> String {
        match self.load(yaml) {
            Ok(c) => panic!("expected an error for:\n{yaml}\ngot {c:?}"),
            Err(e) => e.to_string(),
        }
    }
}

const TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

#[test]
fn bad_files_are_reported_clearly() {
    let files = Files::new();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let cases: &[(&str, String, &[&str])] = &[
        (
            "unknown top-level key",
            "tls_config:\n  cert_file: x\n".into(),
            &["unknown field `tls_config`", "tls_server_config"],
        ),
        (
            "unknown TLS key",
            format!("{TLS}  certfile: server.crt\n"),
            &["unknown field `certfile`"],
        ),
        (
            "unknown http key",
            "http_server_config:\n  http3: true\n".into(),
            &["unknown field `http3`"],
        ),
        (
            "missing cert file",
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n".into(),
            &["tls_server_config.cert_file: cannot read", "missing.crt"],
        ),
        (
            "missing key",
            "tls_server_config:\n  cert_file: server.crt\n".into(),
            &["key_file (or key) is required"],
        ),
        (
            "not a certificate",
            "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n".into(),
            &["no PEM CERTIFICATE block"],
        ),
        (
            "not a key",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n".into(),
            &["no usable private key"],
        ),
        (
            "bad bcrypt hash",
            "basic_auth_users:\n  alice: plaintext-password\n".into(),
            &["basic_auth_users.alice: not a bcrypt hash"],
        ),
        (
            "bad min version",
            format!("{TLS}  min_version: TLS14\n"),
            &["min_version: unknown TLS version \"TLS14\""],
        ),
        (
            "bad max version",
            format!("{TLS}  max_version: SSL3\n"),
            &["max_version: unknown TLS version \"SSL3\""],
        ),
        (
            "max below what rustls speaks",
            format!("{TLS}  min_version: TLS10\n  max_version: TLS11\n"),
            &["max_version: TLS11 leaves no version"],
        ),
        (
            "min above max",
            format!("{TLS}  min_version: TLS13\n  max_version: TLS12\n"),
            &["min_version TLS13 is above max_version TLS12"],
        ),
        (
            "unverified client certs",
            format!("{TLS}  client_auth_type: RequireAnyClientCert\n  client_ca_file: ca.crt\n"),
            &["RequireAnyClientCert is not supported"],
        ),
        (
            "unknown client auth type",
            format!("{TLS}  client_auth_type: Sometimes\n"),
            &["client_auth_type: unknown value \"Sometimes\""],
        ),
        (
            "a CA without verification",
            format!("{TLS}  client_ca_file: ca.crt\n"),
            &["client_ca_file is set but client_auth_type is NoClientCert"],
        ),
        (
            // Go would ignore the list without client certificates: refused, not ignored.
            "client_allowed_sans without client certificates",
            format!("{TLS}  client_allowed_sans: [scraper]\n"),
            &[
                "client_allowed_sans needs client_auth_type VerifyClientCertIfGiven or RequireAndVerifyClientCert",
            ],
        ),
        (
            "an empty client_allowed_sans",
            format!(
                "{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  client_allowed_sans: []\n"
            ),
            &["client_allowed_sans: the list is empty, so no client could connect"],
        ),
        (
            "inline and file together",
            format!("{TLS}  cert: |\n    x\n"),
            &["either cert or cert_file, not both"],
        ),
        (
            "cipher suite rustls lacks",
            format!("{TLS}  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n"),
            &[
                "cipher_suites: \"TLS_RSA_WITH_AES_128_CBC_SHA\" is not supported",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            ],
        ),
        (
            "curve rustls lacks",
            format!("{TLS}  curve_preferences: [CurveP521]\n"),
            &["curve_preferences: \"CurveP521\" is not supported"],
        ),
        (
            "header not allowed",
            "http_server_config:\n  headers:\n    Server: nginx\n".into(),
            &["headers: \"Server\" cannot be configured"],
        ),
        (
            "header value not allowed",
            "http_server_config:\n  headers:\n    X-Frame-Options: allow-from\n".into(),
            &["headers.X-Frame-Options: invalid value \"allow-from\""],
        ),
        (
            "bad rate limit",
            "rate_limit:\n  interval: soon\n  burst: 1\n".into(),
            &["rate_limit.interval: invalid duration \"soon\": expected a whole number and a unit"],
        ),
        (
            // The config file's rule, as in Prometheus: units largest first, each once.
            "rate limit interval with units out of order",
            "rate_limit:\n  interval: 1m1h\n  burst: 1\n".into(),
            &[
                "rate_limit.interval: invalid duration \"1m1h\": units must go from largest to smallest",
            ],
        ),
        (
            "rate limit without burst",
            "rate_limit:\n  interval: 1s\n".into(),
            &["rate_limit.burst: must be at least 1"],
        ),
        ("not YAML", "tls_server_config: [\n".into(), &["web.yml"]),
        (
            "every problem at once",
            format!(
                "tls_server_config:\n  cert_file: gone.crt\n  key_file: server.key\n  min_version: TLS9\nbasic_auth_users:\n  ok: '{hash}'\n  bad: nope\n"
            ),
            &[
                "gone.crt",
                "unknown TLS version \"TLS9\"",
                "basic_auth_users.bad: not a bcrypt hash",
            ],
        ),
    ];
    for (name, yaml, needles) in cases {
        let error = files.error(yaml);
        assert!(
            error.starts_with("web config ") && error.contains("web.yml"),
            "{name}: the error names the file: {error}"
        );
        for needle in *needles {
            assert!(error.contains(needle), "{name}: {error:?} lacks {needle:?}");
        }
    }
}

#[test]
fn a_missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let error = web_config::load(&dir.path().join("nope.yml"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("nope.yml") && error.contains("cannot read"),
        "{error}"
    );
}

#[test]
fn good_files_load() {
    let files = Files::new();

    let empty = files.load("").unwrap();
    assert!(empty.tls().is_none() && !empty.requires_basic_auth());
    assert!(empty.rate_limit().is_none());

    let tls = files.load(TLS).unwrap();
    let config = tls.tls().expect("TLS configured");
    assert!(tls.http2());
    assert_eq!(
        config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    assert!(
        config.ignore_client_order,
        "prefer_server_cipher_suites defaults to true"
    );

    let hash = bcrypt::hash("pw", 4).unwrap();
    let everything = files
        .load(&format!(
            "{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS10\n  max_version: TLS13\n  cipher_suites:\n    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n    - TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305\n    - TLS_AES_128_GCM_SHA256\n  prefer_server_cipher_suites: false\n  curve_preferences: [X25519, CurveP256]\nhttp_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: sameorigin\n    X-Content-Type-Options: nosniff\n    Strict-Transport-Security: max-age=31536000\nbasic_auth_users:\n  alice: '{hash}'\nrate_limit:\n  interval: 100ms\n  burst: 5\n"
        ))
        .unwrap();
    let config = everything.tls().unwrap();
    assert!(!config.ignore_client_order);
    assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    assert!(!everything.http2());
    assert!(everything.requires_basic_auth());
    assert_eq!(everything.headers()["x-frame-options"], "sameorigin");
    assert_eq!(everything.headers().len(), 3);
    assert_eq!(
        everything.rate_limit(),
        Some(RateLimit {
            interval: std::time::Duration::from_millis(100),
            burst: 5
        })
    );
    let debug = format!("{everything:?}");
    assert!(debug.contains("alice") && !debug.contains(&hash), "{debug}");

    // Inline PEM instead of files.
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let inline = files
        .load(&format!(
            "tls_server_config:\n  cert: |\n{}  key: |\n{}",
            indent(&files.cert),
            indent(&files.key)
        ))
        .unwrap();
    assert!(inline.tls().is_some());

    // A zero interval disables the rate limit, as in exporter-toolkit.
    let off = files
        .load("rate_limit:\n  interval: 0s\n  burst: 0\n")
        .unwrap();
    assert!(off.rate_limit().is_none());
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let files = Files::new();
    std::fs::write(files.dir.path().join("web.yml"), TLS).unwrap();
    // Loaded from a path in another directory than the process's working directory.
    assert_ne!(std::env::current_dir().unwrap(), files.dir.path());
    assert!(
        web_config::load(&files.dir.path().join("web.yml"))
            .unwrap()
            .tls()
            .is_some()
    );
    let nested = files.dir.path().join("conf");
    std::fs::create_dir(&nested).unwrap();
    std::fs::write(
        nested.join("web.yml"),
        "tls_server_config:\n  cert_file: ../server.crt\n  key_file: ../server.key\n",
    )
    .unwrap();
    assert!(web_config::load(&nested.join("web.yml")).is_ok());
}

#[test]
fn source_reloads_only_on_change() {
    let files = Files::new();
    let path = files.dir.path().join("web.yml");
    std::fs::write(&path, TLS).unwrap();
    let source = web_config::WebConfigSource::new(&path);
    let a = source.load().unwrap();
    let b = source.load().unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&a, &b),
        "unchanged files reuse the built config"
    );
    std::fs::write(&path, format!("{TLS}  min_version: TLS13\n")).unwrap();
    let c = source.load().unwrap();
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
    std::fs::write(&path, "bogus: 1\n").unwrap();
    assert!(
        source.load().is_err(),
        "a broken file is an error, not the cached config"
    );
}

fn basic(user: &str, password: &str) -> http::HeaderValue {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    http::HeaderValue::from_str(&format!("Basic {token}")).expect("base64 is a valid header")
}

/// A flood of wrong passwords costs one bcrypt at a time (at most one core), each distinct
/// login is checked once (failures are cached too), and the right password still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcrypt_runs_one_at_a_time_and_caches_failures() {
    const FLOOD: usize = 8;
    // Cost 6: slow enough that checks released together would overlap, quick in debug builds.
    let hash = bcrypt::hash("right", 6).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yml");
    std::fs::write(&path, format!("basic_auth_users:\n  alice: '{hash}'\n")).unwrap();
    let config = std::sync::Arc::new(web_config::load(&path).unwrap());
    let auth = std::sync::Arc::new(web_config::Authenticator::new());
    let flood = |passwords: Vec<String>| {
        let mut tasks = tokio::task::JoinSet::new();
        for password in passwords {
            let (auth, config) = (auth.clone(), config.clone());
            tasks.spawn(async move {
                auth.authorize(&config, Some(&basic("alice", &password)))
                    .await
            });
        }
        tasks.join_all()
    };

    let answers = flood((0..FLOOD).map(|i| format!("wrong{i}")).collect()).await;
    assert_eq!(answers, vec![false; FLOOD]);
    assert_eq!(
        auth.bcrypt_runs(),
        FLOOD as u64,
        "each distinct login checked once"
    );
    assert_eq!(auth.bcrypt_max_concurrent(), 1, "never two bcrypts at once");

    // The same wrong password again, alone or many at once: answered from the cache.
    assert!(
        !auth
            .authorize(&config, Some(&basic("alice", "wrong0")))
            .await
    );
    let answers = flood(vec!["again".to_owned(); FLOOD]).await;
    assert_eq!(answers, vec![false; FLOOD]);
    assert_eq!(
        auth.bcrypt_runs(),
        FLOOD as u64 + 1,
        "one check for {FLOOD} identical logins"
    );

    // The right password works, and keeps working from the cache; wrong ones stay 401.
    assert!(
        auth.authorize(&config, Some(&basic("alice", "right")))
            .await
    );
    assert!(
        auth.authorize(&config, Some(&basic("alice", "right")))
            .await
    );
    assert_eq!(auth.bcrypt_runs(), FLOOD as u64 + 2);
    assert!(
        !auth
            .authorize(&config, Some(&basic("alice", "wrong1")))
            .await
    );
    assert!(
        !auth
            .authorize(&config, Some(&basic("mallory", "right")))
            .await
    );
    assert!(
        !auth
            .authorize(&config, Some(&basic("mallory", "right")))
            .await
    );
    assert_eq!(
        auth.bcrypt_runs(),
        FLOOD as u64 + 3,
        "unknown users cached too"
    );
    assert_eq!(auth.bcrypt_max_concurrent(), 1);
}

// ---------------------------------------------------------------------------------------------
// Client certificates, checked with real TLS handshakes against the loaded rustls config.

const VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS12, &rustls::version::TLS13];

/// A CA that signs the server certificate and client certificates, and a directory holding a
/// web config with them.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            ca: ca("test CA"),
            dir: tempfile::tempdir().unwrap(),
        };
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &pki.ca).unwrap();
        std::fs::write(pki.dir.path().join("server.crt"), cert.pem()).unwrap();
        std::fs::write(pki.dir.path().join("server.key"), key.serialize_pem()).unwrap();
        std::fs::write(pki.dir.path().join("ca.crt"), pki.ca.pem()).unwrap();
        pki
    }

    /// Loads the server TLS config plus `extra_tls` lines.
    fn load(&self, extra_tls: &str) -> web_config::WebConfig {
        let path = self.dir.path().join("web.yml");
        std::fs::write(&path, format!("{TLS}{extra_tls}")).unwrap();
        web_config::load(&path).unwrap()
    }

    /// Runs one handshake and one byte each way between a server with `config` and a client
    /// presenting `identity`. Err carries the server's reason for refusing the client.
    async fn handshake(
        &self,
        config: &web_config::WebConfig,
        identity: Option<&Identity>,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let acceptor = tokio_rustls::TlsAcceptor::from(config.tls().expect("TLS").clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            tls.write_all(b"k").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())
        });

        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots);
        let client = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => builder
                .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())
                .unwrap(),
        };
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        // With TLS 1.3 a refused client certificate shows only when the client reads.
        let client_result = async {
            let mut tls = connector.connect(name, tcp).await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map(|_| ())
        }
        .await;
        let server_result = server.await.unwrap();
        match (server_result, client_result) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(format!("client failed, server did not: {e}")),
        }
    }
}

struct Identity {
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A client certificate from `issuer` with common name `cn` and exactly `sans`.
fn client(issuer: &CertifiedIssuer<'static, KeyPair>, cn: &str, sans: Vec<SanType>) -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).unwrap();
    Identity {
        cert: cert.der().clone(),
        key: rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    }
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

fn email(address: &str) -> SanType {
    SanType::Rfc822Name(address.try_into().unwrap())
}

fn uri(uri: &str) -> SanType {
    SanType::URI(uri.try_into().unwrap())
}

fn ip(ip: &str) -> SanType {
    SanType::IpAddress(ip.parse().unwrap())
}

const ALLOWED_SANS: &str = "  client_allowed_sans:\n    - scraper.example\n    - 10.0.0.7\n    - \"2001:db8::7\"\n    - ops@example.com\n    - spiffe://example.org/prometheus\n";

/// exporter-toolkit's `client_allowed_sans`: a verified client certificate gets in only when one
/// of its DNS, IP, e-mail or URI SANs is in the list, compared exactly (IPs in Go's notation).
#[tokio::test]
async fn client_allowed_sans_admit_only_certificates_with_a_listed_san() {
    let pki = Pki::new();
    let config = pki.load(&format!(
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n{ALLOWED_SANS}"
    ));
    let admitted = [
        ("DNS", vec![dns("other.example"), dns("scraper.example")]),
        ("IPv4", vec![ip("10.0.0.7")]),
        // Written out in full in the certificate; Go compares its canonical form.
        ("IPv6", vec![ip("2001:0db8:0000:0000:0000:0000:0000:0007")]),
        ("e-mail", vec![email("ops@example.com")]),
        ("URI", vec![uri("spiffe://example.org/prometheus")]),
    ];
    let refused = [
        (
            "other SANs",
            vec![
                dns("intruder.example"),
                ip("10.0.0.8"),
                email("ops@example.org"),
                uri("spiffe://example.org/intruder"),
            ],
        ),
        // Exact match, as Go: no case folding, no wildcards, no sub-domains.
        ("a SAN in other case", vec![dns("Scraper.example")]),
        ("a sub-domain", vec![dns("a.scraper.example")]),
        ("no SAN at all", vec![]),
    ];
    for version in VERSIONS {
        for (what, sans) in &admitted {
            let id = client(&pki.ca, "scraper", sans.clone());
            if let Err(e) = pki.handshake(&config, Some(&id), version).await {
                panic!("{version:?}: a certificate with an allowed {what} SAN was refused: {e}");
            }
        }
        for (what, sans) in &refused {
            let id = client(&pki.ca, "scraper.example", sans.clone());
            let error = pki
                .handshake(&config, Some(&id), version)
                .await
                .expect_err(what);
            assert!(
                error.contains("client_allowed_sans"),
                "{version:?} {what}: refused for the SANs: {error}"
            );
        }
        // The chain is verified first: an allowed SAN from an unknown CA does not get in.
        let stranger = client(&ca("other CA"), "x", vec![dns("scraper.example")]);
        let error = pki
            .handshake(&config, Some(&stranger), version)
            .await
            .expect_err("unknown CA");
        assert!(!error.contains("client_allowed_sans"), "{error}");
        assert!(pki.handshake(&config, None, version).await.is_err());
    }
}

/// With VerifyClientCertIfGiven, a SAN list still keeps out a client that shows no certificate
/// (in Go such a handshake fails too: its SAN check finds no certificate to read).
#[tokio::test]
async fn client_allowed_sans_with_verify_if_given_require_a_certificate() {
    let pki = Pki::new();
    let config = pki.load(&format!(
        "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n{ALLOWED_SANS}"
    ));
    for version in VERSIONS {
        assert!(pki.handshake(&config, None, version).await.is_err());
        let allowed = client(&pki.ca, "c", vec![dns("scraper.example")]);
        pki.handshake(&config, Some(&allowed), version)
            .await
            .unwrap();
        let other = client(&pki.ca, "c", vec![dns("intruder.example")]);
        assert!(pki.handshake(&config, Some(&other), version).await.is_err());
    }
}

/// Without `client_ca_file`, Go verifies client certificates against the system roots; so does
/// this server. VerifyClientCertIfGiven then still serves clients without a certificate (five of
/// exporter-toolkit's own test files rely on it), and RequireAndVerifyClientCert refuses them.
#[tokio::test]
async fn verification_without_a_client_ca_uses_the_system_roots() {
    let pki = Pki::new();
    let private = client(&pki.ca, "c", vec![dns("scraper.example")]);

    let if_given = pki.load("  client_auth_type: VerifyClientCertIfGiven\n");
    for version in VERSIONS {
        pki.handshake(&if_given, None, version).await.unwrap();
        // The test CA is no system root.
        assert!(
            pki.handshake(&if_given, Some(&private), version)
                .await
                .is_err()
        );
    }

    let required = pki.load("  client_auth_type: RequireAndVerifyClientCert\n");
    for version in VERSIONS {
        assert!(pki.handshake(&required, None, version).await.is_err());
        assert!(
            pki.handshake(&required, Some(&private), version)
                .await
                .is_err()
        );
    }

    // A SAN list with the system roots loads too.
    pki.load(&format!(
        "  client_auth_type: RequireAndVerifyClientCert\n{ALLOWED_SANS}"
    ));
}
