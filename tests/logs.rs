//! What reaches the log: the exporter's own structured lines only. Dependencies that log
//! through the `log` crate (rustls-platform-verifier on every failed TLS handshake) would add
//! `target=log` lines of their own, carrying the build machine's cargo registry path in
//! `log.file`, beside the exporter's classified line.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A TLS server on 127.0.0.1:0 with a self-signed certificate no client trusts: every
/// handshake fails on the client's side.
async fn untrusted_tls_server() -> std::net::SocketAddr {
    install_crypto();
    let key = KeyPair::generate().expect("a key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("a certificate");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("a server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(stream).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tls_handshakes_log_only_the_exporters_own_line() {
    let addr = untrusted_tls_server().await;
    let cfg = ConfigDir::new(&format!("https://{addr}/"), &["@TGS#a"], "");
    let exporter = Exporter::start(&cfg.path(), &["--log.level=debug"]);
    // The exporter's own line for the group, once its attempts (each a handshake) are spent.
    let own = exporter
        .wait_for_log("group poll got no valid answer", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no failed poll: {}", exporter.logs()));
    assert!(own.contains("reason=connect"), "{own}");
    exporter.signal("TERM");
    let logs = exporter.logs();
    // At debug the exporter's own attempt lines carry what the verifier said.
    assert!(
        logs.lines()
            .any(|l| l.contains("target=timattr_exporter") && l.contains("UnknownIssuer")),
        "the cause is in the exporter's own lines: {logs}"
    );
    for line in logs.lines() {
        assert!(
            line.contains("target=timattr_exporter"),
            "a line that is not the exporter's own: {line}"
        );
        for leak in ["log.file", "log.target", ".cargo/registry", "target=log"] {
            assert!(!line.contains(leak), "{leak} in {line}");
        }
    }
}
