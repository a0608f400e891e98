//! `tls_ca_file`, `tls_cert_file` and `tls_key_file` against a real TLS endpoint: a small
//! TLS-terminating proxy on 127.0.0.1:0 in front of the fake API (which serves plain HTTP),
//! with certificates from test CAs made by rcgen.
//! - the client trusts only the app's CA file: without it the handshake fails (`connect`);
//! - a client certificate is presented when configured, and an endpoint that requires one
//!   refuses the client without it;
//! - through the binary: a CA file rotated under the same name applies with
//!   `--config.auto-reload-interval`, with no change to the config file; `--config.check`
//!   names the files and refuses bad ones at their place, never printing the key.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ca::Ca;
use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use common::*;
use timattr_exporter::client::{Client, ClientSettings, RetryPolicy};
use timattr_exporter::client_tls::{self, ClientTls};
use timattr_exporter::observe::NoopObserver;
use timattr_exporter::outcome::{FailureReason, Outcome};
use timattr_exporter::ratelimit::RateLimiter;
use timattr_exporter::secret::SecretKey;

const GROUP: &str = "@TGS#tls";
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Certificates

fn server_config(ca: &Ca, client_ca: Option<&Ca>) -> Arc<rustls::ServerConfig> {
    install_crypto();
    let (cert, key) = ca.leaf("endpoint", ExtendedKeyUsagePurpose::ServerAuth);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(client_ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(client_ca.pem().as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

// ---------------------------------------------------------------------------------------------
// A TLS-terminating proxy in front of the fake API

struct TlsProxy {
    base: url::Url,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl TlsProxy {
    async fn start(upstream: std::net::SocketAddr, config: Arc<rustls::ServerConfig>) -> TlsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = Arc::new(Mutex::new(config));
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (cfg, conns) = (Arc::clone(&config), Arc::clone(&connections));
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&*cfg.lock().unwrap()));
                let task = tokio::spawn(async move {
                    // A failed handshake just drops the connection: the client sees it fail.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        TlsProxy {
            base: url::Url::parse(&format!("https://127.0.0.1:{port}/")).unwrap(),
            config,
            connections,
            accept,
        }
    }

    /// Serves another certificate from now on, closing the open connections (the client keeps
    /// connections alive, and a handshake already made would hide the change).
    fn set_config(&self, config: Arc<rustls::ServerConfig>) {
        *self.config.lock().unwrap() = config;
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// The fake API with one group, behind a proxy serving `config`.
async fn endpoint(
    config: Arc<rustls::ServerConfig>,
) -> (timattr_exporter::fake::FakeServer, TlsProxy) {
    let server = fake_with_app().await;
    group(&server, GROUP, &[("k", "v")]);
    let upstream = server
        .base_url()
        .socket_addrs(|| None)
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let proxy = TlsProxy::start(upstream, config).await;
    (server, proxy)
}

// ---------------------------------------------------------------------------------------------
// The client

fn tls(ca: Option<&Ca>, identity: Option<(&str, &str)>) -> ClientTls {
    ClientTls {
        ca_certs: ca.map(|ca| client_tls::ca_certs(ca.pem().as_bytes()).unwrap()),
        identity: identity.map(|(cert, key)| {
            client_tls::identity(
                client_tls::certificates(cert.as_bytes()).unwrap(),
                client_tls::private_key(key.as_bytes()).unwrap(),
            )
            .unwrap()
        }),
    }
}

async fn poll(base: &url::Url, tls: ClientTls) -> Outcome<Vec<(String, String)>> {
    install_crypto();
    let settings = ClientSettings {
        sdkappid: APP,
        identifier: ADMIN.into(),
        secret_key: SecretKey::new(KEY),
        base_url: base.clone(),
        usersig_ttl: Duration::from_secs(3600),
        timeout: Duration::from_secs(5),
        max_concurrency: 2,
        // One attempt: a handshake failure would only be repeated.
        retry: RetryPolicy {
            max_attempts: 1,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        },
        tls,
    };
    let client = Client::new(
        settings,
        Arc::new(RateLimiter::new(1000.0)),
        Arc::new(NoopObserver),
    )
    .expect("client builds");
    client
        .get_group_attr(GROUP, None)
        .await
        .expect("not stopping")
}

fn ok() -> Outcome<Vec<(String, String)>> {
    Outcome::Ok(vec![("k".into(), "v".into())])
}

const CONNECT: Outcome<Vec<(String, String)>> = Outcome::NoAnswer(FailureReason::Connect);

#[tokio::test]
async fn the_endpoint_is_trusted_through_the_apps_ca_file_only() {
    let ca = Ca::new("corporate proxy CA");
    let (_server, proxy) = endpoint(server_config(&ca, None)).await;
    assert_eq!(
        poll(&proxy.base, ClientTls::default()).await,
        CONNECT,
        "the system roots do not know the proxy's CA"
    );
    assert_eq!(poll(&proxy.base, tls(Some(&ca), None)).await, ok());
    let other = Ca::new("some other CA");
    assert_eq!(
        poll(&proxy.base, tls(Some(&other), None)).await,
        CONNECT,
        "another CA does not vouch for the endpoint"
    );
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_configured() {
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let (_server, proxy) = endpoint(server_config(&ca, Some(&client_ca))).await;
    let (cert, key) = client_ca.leaf("exporter", ExtendedKeyUsagePurpose::ClientAuth);
    assert_eq!(
        poll(&proxy.base, tls(Some(&ca), Some((&cert, &key)))).await,
        ok()
    );
    assert_eq!(
        poll(&proxy.base, tls(Some(&ca), None)).await,
        CONNECT,
        "the endpoint requires a client certificate"
    );
    let stranger = Ca::new("stranger CA");
    let (cert, key) = stranger.leaf("exporter", ExtendedKeyUsagePurpose::ClientAuth);
    assert_eq!(
        poll(&proxy.base, tls(Some(&ca), Some((&cert, &key)))).await,
        CONNECT,
        "a certificate the endpoint's CA did not sign is refused"
    );
}

// ---------------------------------------------------------------------------------------------
// Through the binary: the config file's paths, and a CA rotated under the same name.

async fn up(metrics: &str) -> Option<f64> {
    let t = scrape(metrics).await;
    value(&t, "timattr_group_up", &[("group_id", GROUP)])
}

#[tokio::test]
async fn a_rotated_ca_file_applies_on_auto_reload() {
    let ca1 = Ca::new("CA one");
    let ca2 = Ca::new("CA two");
    let client_ca = Ca::new("client CA");
    let (server, proxy) = endpoint(server_config(&ca1, Some(&client_ca))).await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &str| {
        // Write then rename, as a Secret volume update would.
        let tmp = dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::fs::rename(&tmp, dir.path().join(name)).unwrap();
    };
    let (cert, key) = client_ca.leaf("exporter", ExtendedKeyUsagePurpose::ClientAuth);
    write("key", &format!("{KEY}\n"));
    write("ca.pem", &ca1.pem());
    write("client.pem", &cert);
    write("client-key.pem", &key);
    write(
        "timattr.yml",
        &format!(
            "poll_interval: 1s\napps:\n  - sdkappid: {APP}\n    endpoint: {}\n    identifier: \
             {ADMIN}\n    secret_key_file: key\n    tls_ca_file: ca.pem\n    tls_cert_file: \
             client.pem\n    tls_key_file: client-key.pem\n    timeout: 2s\n    groups: \
             [\"{GROUP}\"]\n",
            proxy.base
        ),
    );
    let exporter = Exporter::start(
        &dir.path().join("timattr.yml"),
        &["--config.auto-reload-interval=1s"],
    );
    let metrics = exporter.url("/metrics");
    let healthy = eventually(WAIT, || async { up(&metrics).await.filter(|v| *v == 1.0) }).await;
    assert_eq!(healthy, Some(1.0), "{}", exporter.logs());

    // The endpoint's certificate now comes from another CA: polls fail to connect.
    proxy.set_config(server_config(&ca2, Some(&client_ca)));
    let failing = eventually(WAIT, || async {
        let t = scrape(&metrics).await;
        let failed = value(
            &t,
            "timattr_api_request_failures_total",
            &[("api", "get_group_attr"), ("reason", "connect")],
        )?;
        (failed > 0.0 && value(&t, "timattr_group_up", &[("group_id", GROUP)])? == 0.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        failing,
        Some(()),
        "{}\n{}",
        exporter.logs(),
        scrape(&metrics).await
    );

    // The CA file is rotated under the same name; the config file does not change.
    write("ca.pem", &ca2.pem());
    let recovered = eventually(WAIT, || async { up(&metrics).await.filter(|v| *v == 1.0) }).await;
    assert_eq!(
        recovered,
        Some(1.0),
        "the rotated CA applied: {}",
        exporter.logs()
    );
    assert!(
        exporter
            .logs()
            .contains("client rebuilt for the new endpoint, credentials, TLS settings or timeouts"),
        "{}",
        exporter.logs()
    );
    let private = key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>();
    let logs = exporter.logs();
    assert!(
        private.iter().all(|l| !logs.contains(l)),
        "the key is in the log"
    );
    drop(server);
}

/// `--config.check` with the TLS files: the summary names them; a key where the CA bundle
/// should be, or a key that is not the certificate's, is refused at its place (exit 64) without
/// a line of the key in the output.
#[test]
fn config_check_names_the_files_and_never_prints_the_key() {
    let ca = Ca::new("corporate proxy CA");
    let (cert, key) = ca.leaf("exporter", ExtendedKeyUsagePurpose::ClientAuth);
    let (_, other_key) = ca.leaf("someone else", ExtendedKeyUsagePurpose::ClientAuth);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    };
    file("key", &format!("{KEY}\n"));
    file("ca.pem", &ca.pem());
    file("client.pem", &cert);
    file("client.key", &key);
    file("other.key", &other_key);
    let check = |ca_file: &str, key_file: &str| {
        file(
            "timattr.yml",
            &format!(
                "apps:\n  - sdkappid: {APP}\n    endpoint: https://127.0.0.1:9/\n    identifier: \
                 {ADMIN}\n    secret_key_file: key\n    tls_ca_file: {ca_file}\n    \
                 tls_cert_file: client.pem\n    tls_key_file: {key_file}\n    groups: \
                 [\"{GROUP}\"]\n"
            ),
        );
        let out = std::process::Command::new(exporter_bin())
            .arg(format!(
                "--config.file={}",
                dir.path().join("timattr.yml").display()
            ))
            .arg("--config.check")
            .arg("--log.level=debug")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for secret in [key.as_str(), other_key.as_str()] {
            for line in secret.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!text.contains(line), "a key line in the output: {text}");
            }
        }
        (out.status.code(), text)
    };
    let (code, text) = check("ca.pem", "client.key");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("tls_ca_file: ")
            && text.contains("(1 certificate(s), instead of the system roots)"),
        "{text}"
    );
    let (code, text) = check("client.key", "other.key");
    assert_eq!(code, Some(64), "{text}");
    assert!(
        text.contains("apps[0].tls_ca_file: the file it names holds no PEM certificate"),
        "{text}"
    );
    assert!(
        text.contains(
            "apps[0].tls_key_file: the private key does not match the first certificate in \
             tls_cert_file"
        ),
        "{text}"
    );
}
