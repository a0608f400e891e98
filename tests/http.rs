//! The HTTP server end to end: a stub `Service`, the real server on 127.0.0.1:0, real clients
//! (reqwest, tokio-rustls, hyper's HTTP/2 client, raw TCP), certificates made by rcgen.

mod common;

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ca::Ca;
use futures::future::BoxFuture;
use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use timattr_exporter::http::{self, ServerOptions, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A scrape that any of the attacks below delayed would blow this bound.
const PROMPT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The stub service and the server under test

struct Stub {
    renders: AtomicU64,
    ready: AtomicBool,
    reload: Mutex<Result<(), String>>,
    reloads: AtomicU64,
    /// How long a render takes (for timeout and shutdown tests).
    render_delay: Mutex<Duration>,
    /// Told when a render starts.
    render_started: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// While true, renders wait (after telling `render_started`) until [`Stub::release`].
    hold: Mutex<bool>,
    released: std::sync::Condvar,
    /// When set, the next render writes [`HUGE`] bytes (a scrape at millions of groups), and
    /// records how far it got and how it ended.
    huge: AtomicBool,
    huge_ended: Mutex<Option<(u64, std::io::ErrorKind)>>,
    /// When set, the next render writes this many bytes and then fails.
    fail_after: Mutex<Option<u64>>,
}

/// 64 KiB of pseudo-random text: repeated, it still does not compress (deflate looks back only
/// 32 KiB), so a gzip scrape moves as many bytes as a plain one.
fn incompressible_line() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'!' + (x % 90) as u8
        })
        .collect()
}

/// What a huge render would write: far more than socket buffers and the stream's chunks hold.
const HUGE: u64 = 1 << 30;

impl Stub {
    fn new() -> Arc<Stub> {
        Arc::new(Stub {
            renders: AtomicU64::new(0),
            ready: AtomicBool::new(true),
            reload: Mutex::new(Ok(())),
            reloads: AtomicU64::new(0),
            render_delay: Mutex::new(Duration::ZERO),
            render_started: Mutex::new(None),
            hold: Mutex::new(false),
            released: std::sync::Condvar::new(),
            huge: AtomicBool::new(false),
            huge_ended: Mutex::new(None),
            fail_after: Mutex::new(None),
        })
    }

    /// Holds every render from now on until [`Stub::release`]; returns a receiver told when
    /// each render starts.
    fn hold(&self) -> std::sync::mpsc::Receiver<()> {
        *self.hold.lock().unwrap() = true;
        let (tx, rx) = std::sync::mpsc::channel();
        *self.render_started.lock().unwrap() = Some(tx);
        rx
    }

    fn release(&self) {
        *self.hold.lock().unwrap() = false;
        self.released.notify_all();
    }
}

/// Waits (off the runtime) until `n` renders have started.
async fn renders_started(
    rx: std::sync::mpsc::Receiver<()>,
    n: usize,
) -> std::sync::mpsc::Receiver<()> {
    tokio::task::spawn_blocking(move || {
        for i in 0..n {
            rx.recv_timeout(PROMPT)
                .unwrap_or_else(|_| panic!("render {} of {n} did not start", i + 1));
        }
        rx
    })
    .await
    .unwrap()
}

impl Service for Stub {
    fn render_metrics(&self, sink: &mut dyn std::io::Write) -> std::io::Result<()> {
        let n = self.renders.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(limit) = self.fail_after.lock().unwrap().take() {
            let line = incompressible_line();
            let mut written = 0;
            while written < limit {
                sink.write_all(&line)?;
                written += line.len() as u64;
            }
            return Err(std::io::Error::other("the render broke"));
        }
        if self.huge.swap(false, Ordering::SeqCst) {
            let line = incompressible_line();
            let mut written = 0;
            while written < HUGE {
                if let Err(e) = sink.write_all(&line) {
                    *self.huge_ended.lock().unwrap() = Some((written, e.kind()));
                    return Err(e);
                }
                written += line.len() as u64;
            }
            *self.huge_ended.lock().unwrap() = Some((written, std::io::ErrorKind::Other));
            return Ok(());
        }
        if let Some(tx) = &*self.render_started.lock().unwrap() {
            let _ = tx.send(());
        }
        // Bounded, so a failing test ends instead of hanging in the runtime's drop, which waits
        // for blocking tasks.
        let held = self.hold.lock().unwrap();
        drop(
            self.released
                .wait_timeout_while(held, 3 * PROMPT, |held| *held)
                .unwrap(),
        );
        let delay = *self.render_delay.lock().unwrap();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        // Long and repetitive enough that gzip visibly shrinks it.
        let mut out = format!(
            "# HELP stub_renders_total Renders.\n# TYPE stub_renders_total counter\nstub_renders_total {n}\n"
        );
        for i in 0..200 {
            out.push_str(&format!("stub_line{{i=\"{i}\"}} 1\n"));
        }
        sink.write_all(out.as_bytes())
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn reload(&self) -> BoxFuture<'static, Result<(), String>> {
        self.reloads.fetch_add(1, Ordering::SeqCst);
        let result = self.reload.lock().unwrap().clone();
        Box::pin(async move { result })
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(options: ServerOptions, stub: Arc<Stub>) -> Server {
        Server::serve(options, stub).await
    }

    async fn serve(options: ServerOptions, service: Arc<dyn Service>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(http::serve(listener, options, service, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn https(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn plain_client() -> reqwest::Client {
    install_provider();
    reqwest::Client::builder().timeout(PROMPT).build().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// Server and client leaves of the shared test CA.
impl Ca {
    fn server(&self, cn: &str) -> (String, String) {
        self.leaf(cn, ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, cn: &str) -> (String, String) {
        self.leaf(cn, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A directory holding a web config and the files it names.
struct WebDir {
    dir: tempfile::TempDir,
}

impl WebDir {
    fn new() -> WebDir {
        WebDir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, contents: &str) {
        // Write then rename, as a certificate manager would, so a reader never sees half a file.
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(name)).unwrap();
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("web.yml")
    }

    fn options(&self) -> ServerOptions {
        ServerOptions {
            web_config_file: Some(self.config()),
            ..ServerOptions::default()
        }
    }
}

fn https_client(ca: &Ca) -> reqwest::ClientBuilder {
    install_provider();
    reqwest::Client::builder()
        .timeout(PROMPT)
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
}

/// A rustls client trusting `ca`, limited to `versions`, optionally with a client certificate.
fn rustls_client(
    ca: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
    identity: Option<(String, String)>,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // With TLS 1.3 a rejected client certificate surfaces on the first read, not the handshake:
    // make a request and read the status line so every refusal shows up here.
    tls.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).await?;
    if &head != b"HTTP/1.1 200" {
        return Err(std::io::Error::other(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&head)
        )));
    }
    Ok(tls)
}

fn peer_cert(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Writes a TLS web config (server cert from `ca`) plus `extra` YAML.
fn tls_dir(ca: &Ca, extra_tls: &str, extra: &str) -> WebDir {
    let dir = WebDir::new();
    let (cert, key) = ca.server("server one");
    dir.write("server.crt", &cert);
    dir.write("server.key", &key);
    dir.write("ca.crt", &ca.pem());
    dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra_tls}{extra}"
        ),
    );
    dir
}

// ---------------------------------------------------------------------------------------------
// Endpoints

#[tokio::test]
async fn endpoints_statuses_and_bodies() {
    let stub = Stub::new();
    let server = Server::start(ServerOptions::default(), Arc::clone(&stub)).await;
    let client = plain_client();

    let landing = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(landing.status(), 200);
    assert!(
        landing.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = landing.text().await.unwrap();
    for needle in [
        "href=\"metrics\"",
        "href=\"-/healthy\"",
        "href=\"-/ready\"",
        timattr_exporter::VERSION,
    ] {
        assert!(page.contains(needle), "landing page lacks {needle}: {page}");
    }

    let metrics = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert_eq!(
        metrics.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(metrics.headers().get("content-encoding").is_none());
    let body = metrics.text().await.unwrap();
    assert!(body.contains("stub_renders_total 1\n"), "{body}");

    let healthy = client.get(server.url("/-/healthy")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
    assert_eq!(healthy.text().await.unwrap(), "Healthy");

    let ready = client.get(server.url("/-/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.text().await.unwrap(), "Ready");
    stub.ready.store(false, Ordering::SeqCst);
    let unready = client.get(server.url("/-/ready")).send().await.unwrap();
    assert_eq!(unready.status(), 503);
    stub.ready.store(true, Ordering::SeqCst);
    let ready = client.get(server.url("/-/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    for path in ["/nope", "/metrics/", "/-/", "/favicon.ico"] {
        let r = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }

    for (method, path) in [
        (reqwest::Method::POST, "/metrics"),
        (reqwest::Method::PUT, "/-/healthy"),
        (reqwest::Method::DELETE, "/-/ready"),
        (reqwest::Method::POST, "/"),
    ] {
        let r = client
            .request(method.clone(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], "GET, HEAD", "{method} {path}");
    }
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let r = client
            .request(method.clone(), server.url("/-/reload"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} /-/reload");
        assert_eq!(r.headers()["allow"], "POST");
    }
    assert_eq!(stub.reloads.load(Ordering::SeqCst), 0);

    server.shutdown().await;
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let stub = Stub::new();
    let server = Server::start(ServerOptions::default(), Arc::clone(&stub)).await;
    let client = plain_client();
    let get_len = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    for path in ["/metrics", "/", "/-/healthy", "/-/ready"] {
        let r = client.head(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        if path == "/metrics" {
            assert_eq!(
                r.headers()["content-length"].to_str().unwrap(),
                get_len.to_string()
            );
            assert_eq!(
                r.headers()["content-type"],
                "text/plain; version=0.0.4; charset=utf-8"
            );
        }
        assert!(r.bytes().await.unwrap().is_empty(), "{path}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn reload_ok_and_error_text() {
    let stub = Stub::new();
    let server = Server::start(ServerOptions::default(), Arc::clone(&stub)).await;
    let client = plain_client();

    let ok = client.post(server.url("/-/reload")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(stub.reloads.load(Ordering::SeqCst), 1);

    *stub.reload.lock().unwrap() = Err("apps[0].groups[3]: empty group ID".into());
    let bad = client.post(server.url("/-/reload")).send().await.unwrap();
    assert_eq!(bad.status(), 500);
    assert_eq!(
        bad.text().await.unwrap(),
        "apps[0].groups[3]: empty group ID"
    );
    assert_eq!(stub.reloads.load(Ordering::SeqCst), 2);
    server.shutdown().await;
}

fn gunzip(bytes: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut out)
        .expect("a valid gzip stream");
    out
}

#[tokio::test]
async fn gzip_is_negotiated_from_accept_encoding() {
    let stub = Stub::new();
    let server = Server::start(ServerOptions::default(), Arc::clone(&stub)).await;
    let client = plain_client();

    let gz = client
        .get(server.url("/metrics"))
        .header("Accept-Encoding", "deflate, gzip;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.status(), 200);
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    assert_eq!(gz.headers()["vary"], "Accept-Encoding");
    let compressed = gz.bytes().await.unwrap();
    let text = gunzip(&compressed);
    assert!(text.contains("stub_renders_total 1\n"), "{text}");
    assert!(
        compressed.len() < text.len() / 2,
        "gzip actually compresses"
    );

    // The same render, uncompressed, is byte-for-byte what gzip carried (apart from the counter).
    let plain = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        plain.replace("stub_renders_total 2", "stub_renders_total 1"),
        text
    );

    for refused in ["gzip;q=0", "identity", "br", "*;q=0"] {
        let r = client
            .get(server.url("/metrics"))
            .header("Accept-Encoding", refused)
            .send()
            .await
            .unwrap();
        assert!(
            r.headers().get("content-encoding").is_none(),
            "Accept-Encoding: {refused}"
        );
        assert!(r.text().await.unwrap().contains("stub_renders_total"));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn http1_keep_alive_serves_several_requests_on_one_connection() {
    let server = Server::start(ServerOptions::default(), Stub::new()).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..3 {
        conn.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        while !buf.ends_with(b"Healthy") {
            let mut chunk = [0u8; 512];
            let n = tokio::time::timeout(PROMPT, conn.read(&mut chunk))
                .await
                .expect("answer in time")
                .unwrap();
            assert!(
                n > 0,
                "connection closed: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
        assert!(buf.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn slow_request_answers_503_after_request_timeout() {
    let stub = Stub::new();
    *stub.render_delay.lock().unwrap() = Duration::from_secs(2);
    let options = ServerOptions {
        request_timeout: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let server = Server::start(options, Arc::clone(&stub)).await;
    let r = plain_client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_scrape_finish() {
    let stub = Stub::new();
    *stub.render_delay.lock().unwrap() = Duration::from_millis(300);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    *stub.render_started.lock().unwrap() = Some(started_tx);
    let server = Server::start(ServerOptions::default(), Arc::clone(&stub)).await;
    let client = plain_client();
    let url = server.url("/metrics");
    let scrape = tokio::spawn(async move { client.get(url).send().await });
    tokio::task::spawn_blocking(move || started_rx.recv_timeout(PROMPT))
        .await
        .unwrap()
        .expect("the render starts");
    let addr = server.addr;
    server.shutdown().await;
    let response = scrape
        .await
        .unwrap()
        .expect("the in-flight scrape completes");
    assert_eq!(response.status(), 200);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

/// `--web.max-requests` (SPEC): with 1, a scrape arriving while a render is held answers 503 at
/// once, other endpoints still answer, and the slot frees when the render ends.
#[tokio::test]
async fn max_requests_refuses_scrapes_over_the_limit_with_503() {
    let stub = Stub::new();
    let started = stub.hold();
    let options = ServerOptions {
        max_requests: 1,
        ..ServerOptions::default()
    };
    let server = Server::start(options, Arc::clone(&stub)).await;
    let client = plain_client();
    let url = server.url("/metrics");
    let first = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(url).send().await }
    });
    let started = renders_started(started, 1).await;

    let second = client.get(&url).send().await.unwrap();
    assert_eq!(second.status(), 503);
    let body = second.text().await.unwrap();
    assert!(
        body.contains("Limit of concurrent requests reached (1)"),
        "{body}"
    );
    let healthy = client.get(server.url("/-/healthy")).send().await.unwrap();
    assert_eq!(healthy.status(), 200, "only /metrics counts");
    assert_eq!(
        stub.renders.load(Ordering::SeqCst),
        1,
        "the refused scrape rendered nothing"
    );

    stub.release();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.text().await.unwrap().contains("stub_renders_total 1"));
    drop(started);
    let third = client.get(&url).send().await.unwrap();
    assert_eq!(third.status(), 200, "the slot is free again");
    server.shutdown().await;
}

/// `--web.max-requests=0`: no limit; many held renders run at once.
#[tokio::test]
async fn max_requests_zero_means_no_limit() {
    const SCRAPES: usize = 6;
    let stub = Stub::new();
    let started = stub.hold();
    let options = ServerOptions {
        max_requests: 0,
        ..ServerOptions::default()
    };
    let server = Server::start(options, Arc::clone(&stub)).await;
    let client = plain_client();
    let scrapes: Vec<_> = (0..SCRAPES)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/metrics"));
            tokio::spawn(async move { client.get(url).send().await })
        })
        .collect();
    // Every render started while all are held: they run at once, none was refused.
    let _started = renders_started(started, SCRAPES).await;
    stub.release();
    for scrape in scrapes {
        assert_eq!(scrape.await.unwrap().unwrap().status(), 200);
    }
    server.shutdown().await;
}

/// `:0` binds one socket that IPv4 and IPv6 clients both reach (SPEC: `:PORT` is every
/// interface, IPv4 and IPv6 alike).
#[tokio::test]
async fn colon_port_serves_ipv4_and_ipv6_loopback() {
    let addr = http::resolve_listen_address(":0").await.unwrap();
    let listener = http::bind(addr).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel::<()>();
    let service: Arc<dyn Service> = Stub::new();
    let task = tokio::spawn(http::serve(
        listener,
        ServerOptions::default(),
        service,
        async {
            let _ = stopped.await;
        },
    ));
    let client = plain_client();
    for host in ["127.0.0.1", "[::1]"] {
        let r = client
            .get(format!("http://{host}:{port}/-/healthy"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host} not served: {e}"));
        assert_eq!(r.status(), 200, "{host}");
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Hardening: slowloris, garbage, connection cap

async fn scrape_ok(client: &reqwest::Client, url: &str) {
    let r = tokio::time::timeout(PROMPT, client.get(url).send())
        .await
        .expect("the scrape is not delayed")
        .expect("the scrape succeeds");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn slowloris_and_garbage_do_not_delay_scrapes() {
    let options = ServerOptions {
        // Long enough that a scrape waiting on the attackers would time out first.
        header_read_timeout: Duration::from_secs(60),
        ..ServerOptions::default()
    };
    let server = Server::start(options, Stub::new()).await;
    let client = plain_client();

    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // A connection that says nothing at all.
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    garbage.write_all(&noise).await.unwrap();

    scrape_ok(&client, &server.url("/metrics")).await;

    // The garbage connection got a 400 (or was just closed), not a hang.
    let mut answer = Vec::new();
    tokio::time::timeout(PROMPT, garbage.read_to_end(&mut answer))
        .await
        .expect("garbage is answered promptly")
        .ok();
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Keep trickling a header byte at a time: still no effect on scrapes.
    for s in &mut slow {
        s.write_all(b"a").await.unwrap();
    }
    scrape_ok(&client, &server.url("/-/healthy")).await;
    drop((slow, silent));
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let options = ServerOptions {
        max_header_bytes: 8192,
        ..ServerOptions::default()
    };
    let server = Server::start(options, Stub::new()).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let big = "a".repeat(64 * 1024);
    let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    // The server may close before taking it all; either way no 200.
    let _ = s.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PROMPT, s.read_to_end(&mut answer))
        .await
        .expect("answered promptly");
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
    scrape_ok(&plain_client(), &server.url("/metrics")).await;
    server.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_and_idle_ones_time_out() {
    let options = ServerOptions {
        max_connections: 3,
        header_read_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let server = Server::start(options, Stub::new()).await;

    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        idle.push(s);
    }
    // Wait until the server has taken all three (a fourth is closed at once).
    let mut over = None;
    for _ in 0..100 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                over = Some(());
                break;
            }
            _ => drop(s), // accepted: the cap was not reached yet; try again
        }
    }
    assert!(
        over.is_some(),
        "a connection over the cap is closed immediately"
    );

    // The idle ones are closed by the header timeout...
    for s in &mut idle {
        let mut buf = Vec::new();
        tokio::time::timeout(PROMPT, s.read_to_end(&mut buf))
            .await
            .expect("idle connections are closed by the server")
            .ok();
    }
    // ...and then scrapes get through again.
    let client = plain_client();
    let mut last = None;
    for _ in 0..50 {
        match client.get(server.url("/metrics")).send().await {
            Ok(r) if r.status() == 200 => {
                last = None;
                break;
            }
            other => last = Some(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        last, None,
        "scrapes get through once the idle ones are gone"
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// TLS

#[tokio::test]
async fn tls_serves_with_a_generated_certificate() {
    let ca = Ca::new("test CA");
    let dir = tls_dir(&ca, "", "");
    let server = Server::start(dir.options(), Stub::new()).await;

    let client = https_client(&ca).build().unwrap();
    let r = client.get(server.https("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("stub_renders_total"));

    // Plain HTTP to the TLS port does not get served.
    let plain = plain_client().get(server.url("/metrics")).send().await;
    assert!(
        plain.is_err() || plain.unwrap().status() != 200,
        "plaintext must not be served when TLS is configured"
    );
    // A client that does not trust the CA is refused.
    let other = https_client(&Ca::new("other CA")).build().unwrap();
    assert!(other.get(server.https("/metrics")).send().await.is_err());
    server.shutdown().await;
}

#[tokio::test]
async fn min_version_tls13_refuses_a_tls12_only_client() {
    let ca = Ca::new("test CA");
    let dir = tls_dir(&ca, "  min_version: TLS13\n", "");
    let server = Server::start(dir.options(), Stub::new()).await;

    let tls12 = rustls_client(&ca, &[&rustls::version::TLS12], None, &[]);
    assert!(tls_connect(&tls12, server.addr).await.is_err());
    let tls13 = rustls_client(&ca, &[&rustls::version::TLS13], None, &[]);
    tls_connect(&tls13, server.addr).await.unwrap();
    server.shutdown().await;

    // The default minimum is TLS 1.2: the same TLS 1.2 client gets in.
    let dir = tls_dir(&ca, "", "");
    let server = Server::start(dir.options(), Stub::new()).await;
    let tls = tls_connect(&tls12, server.addr).await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn certificates_rotate_without_a_restart() {
    let ca = Ca::new("test CA");
    let dir = tls_dir(&ca, "", "");
    let first = der_of(&std::fs::read_to_string(dir.dir.path().join("server.crt")).unwrap());
    let server = Server::start(dir.options(), Stub::new()).await;
    let connector = rustls_client(&ca, &[&rustls::version::TLS13], None, &[]);

    let before = tls_connect(&connector, server.addr).await.unwrap();
    assert_eq!(peer_cert(&before), first);

    let (cert, key) = ca.server("server two");
    // Key first, then certificate: in between, the pair does not match and connections are
    // refused (never served with the wrong key, never plaintext).
    dir.write("server.key", &key);
    dir.write("server.crt", &cert);
    let after = tls_connect(&connector, server.addr).await.unwrap();
    assert_eq!(peer_cert(&after), der_of(&cert));
    assert_ne!(der_of(&cert), first);
    server.shutdown().await;
}

#[tokio::test]
async fn a_broken_web_config_refuses_connections_until_fixed() {
    let ca = Ca::new("test CA");
    let dir = tls_dir(&ca, "", "");
    let server = Server::start(dir.options(), Stub::new()).await;
    let client = https_client(&ca).build().unwrap();
    assert_eq!(
        client
            .get(server.https("/-/healthy"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let good = std::fs::read_to_string(dir.config()).unwrap();
    dir.write("web.yml", &format!("{good}  bogus_key: 1\n"));
    let fresh = https_client(&ca).build().unwrap();
    assert!(
        fresh.get(server.https("/-/healthy")).send().await.is_err(),
        "refused while the file is bad"
    );
    assert!(
        plain_client()
            .get(server.url("/-/healthy"))
            .send()
            .await
            .is_err(),
        "and never served in plaintext instead"
    );

    dir.write("web.yml", &good);
    let fresh = https_client(&ca).build().unwrap();
    assert_eq!(
        fresh
            .get(server.https("/-/healthy"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_require_and_verify() {
    let ca = Ca::new("test CA");
    let dir = tls_dir(
        &ca,
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
        "",
    );
    let server = Server::start(dir.options(), Stub::new()).await;
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];

    let trusted = rustls_client(&ca, &versions, Some(ca.client("scraper")), &[]);
    tls_connect(&trusted, server.addr).await.unwrap();

    let anonymous = rustls_client(&ca, &versions, None, &[]);
    assert!(tls_connect(&anonymous, server.addr).await.is_err());

    let stranger = Ca::new("other CA");
    let untrusted = rustls_client(&ca, &versions, Some(stranger.client("intruder")), &[]);
    assert!(tls_connect(&untrusted, server.addr).await.is_err());

    // And with reqwest, as a real scraper would.
    let identity = {
        let (cert, key) = ca.client("reqwest");
        reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap()
    };
    let client = https_client(&ca).identity(identity).build().unwrap();
    let r = client.get(server.https("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn verify_client_cert_if_given() {
    let ca = Ca::new("test CA");
    let dir = tls_dir(
        &ca,
        "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n",
        "",
    );
    let server = Server::start(dir.options(), Stub::new()).await;
    let versions = [&rustls::version::TLS13];
    tls_connect(&rustls_client(&ca, &versions, None, &[]), server.addr)
        .await
        .unwrap();
    tls_connect(
        &rustls_client(&ca, &versions, Some(ca.client("c")), &[]),
        server.addr,
    )
    .await
    .unwrap();
    let stranger = Ca::new("other CA");
    assert!(
        tls_connect(
            &rustls_client(&ca, &versions, Some(stranger.client("x")), &[]),
            server.addr
        )
        .await
        .is_err()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn http2_over_tls_when_enabled() {
    let ca = Ca::new("test CA");
    let dir = tls_dir(&ca, "", "");
    let server = Server::start(dir.options(), Stub::new()).await;

    let connector = rustls_client(&ca, &[&rustls::version::TLS13], None, &[b"h2", b"http/1.1"]);
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for (path, status) in [("/metrics", 200), ("/nope", 404), ("/-/ready", 200)] {
        let request = ::http::Request::get(server.https(path))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    server.shutdown().await;

    // http2: false leaves only HTTP/1.1 in ALPN.
    let dir = tls_dir(&ca, "", "http_server_config:\n  http2: false\n");
    let server = Server::start(dir.options(), Stub::new()).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    server.shutdown().await;
}

#[tokio::test]
async fn tls_handshake_stalls_do_not_delay_scrapes() {
    let ca = Ca::new("test CA");
    let dir = tls_dir(&ca, "", "");
    let server = Server::start(dir.options(), Stub::new()).await;
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        // The first bytes of a ClientHello, then nothing.
        s.write_all(&[0x16, 0x03, 0x01, 0x02]).await.unwrap();
        stalled.push(s);
    }
    let client = https_client(&ca).build().unwrap();
    scrape_ok(&client, &server.https("/metrics")).await;
    drop(stalled);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Basic auth, headers, rate limit

fn auth_dir(users: &[(&str, &str)], extra: &str) -> WebDir {
    let dir = WebDir::new();
    let mut yaml = String::from("basic_auth_users:\n");
    for (user, password) in users {
        // Cost 4: the lowest bcrypt allows, to keep the test quick.
        let hash = bcrypt::hash(password, 4).unwrap();
        yaml.push_str(&format!("  {user}: '{hash}'\n"));
    }
    yaml.push_str(extra);
    dir.write("web.yml", &yaml);
    dir
}

#[tokio::test]
async fn basic_auth_good_bad_and_missing() {
    let dir = auth_dir(&[("alice", "wonderland"), ("bob", "builder")], "");
    let server = Server::start(dir.options(), Stub::new()).await;
    let client = plain_client();

    for _ in 0..3 {
        // Repeated: the second and later answers come from the cache.
        let ok = client
            .get(server.url("/metrics"))
            .basic_auth("alice", Some("wonderland"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }
    let bob = client
        .get(server.url("/-/ready"))
        .basic_auth("bob", Some("builder"))
        .send()
        .await
        .unwrap();
    assert_eq!(bob.status(), 200);

    for (what, request) in [
        ("missing", client.get(server.url("/metrics"))),
        (
            "wrong password",
            client
                .get(server.url("/metrics"))
                .basic_auth("alice", Some("builder")),
        ),
        (
            "unknown user",
            client
                .get(server.url("/metrics"))
                .basic_auth("mallory", Some("wonderland")),
        ),
        (
            "another user's password",
            client
                .get(server.url("/metrics"))
                .basic_auth("bob", Some("wonderland")),
        ),
        (
            "not basic",
            client
                .get(server.url("/metrics"))
                .header("Authorization", "Bearer wonderland"),
        ),
        ("every endpoint", client.get(server.url("/-/healthy"))),
        ("even 404s", client.get(server.url("/nope"))),
        ("and reload", client.post(server.url("/-/reload"))),
    ] {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        assert_eq!(r.headers()["www-authenticate"], "Basic", "{what}");
    }

    // A password change in the file applies to the next request, cache or not.
    let new = bcrypt::hash("looking-glass", 4).unwrap();
    dir.write("web.yml", &format!("basic_auth_users:\n  alice: '{new}'\n"));
    let old = client
        .get(server.url("/metrics"))
        .basic_auth("alice", Some("wonderland"))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401);
    let fresh = client
        .get(server.url("/metrics"))
        .basic_auth("alice", Some("looking-glass"))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn basic_auth_over_tls() {
    let ca = Ca::new("test CA");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let dir = tls_dir(&ca, "", &format!("basic_auth_users:\n  prom: '{hash}'\n"));
    let server = Server::start(dir.options(), Stub::new()).await;
    let client = https_client(&ca).build().unwrap();
    let denied = client.get(server.https("/metrics")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    let ok = client
        .get(server.https("/metrics"))
        .basic_auth("prom", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn configured_headers_are_on_every_response() {
    let dir = WebDir::new();
    dir.write(
        "web.yml",
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    Content-Security-Policy: \"default-src 'self'\"\n",
    );
    let server = Server::start(dir.options(), Stub::new()).await;
    let client = plain_client();
    for path in ["/", "/metrics", "/nope"] {
        let r = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.headers()["x-frame-options"], "deny", "{path}");
        assert_eq!(
            r.headers()["content-security-policy"],
            "default-src 'self'",
            "{path}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn rate_limit_answers_429() {
    let dir = WebDir::new();
    dir.write("web.yml", "rate_limit:\n  interval: 1h\n  burst: 2\n");
    let server = Server::start(dir.options(), Stub::new()).await;
    let client = plain_client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            client
                .get(server.url("/-/healthy"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    server.shutdown().await;
}

#[tokio::test]
async fn cipher_suites_restrict_tls12() {
    let ca = Ca::new("test CA");
    let dir = tls_dir(
        &ca,
        "  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n",
        "",
    );
    let server = Server::start(dir.options(), Stub::new()).await;
    let client_with = |suite: rustls::CipherSuite| {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites.retain(|s| s.suite() == suite);
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };
    let allowed = client_with(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
    tls_connect(&allowed, server.addr).await.unwrap();
    let other = client_with(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256);
    assert!(tls_connect(&other, server.addr).await.is_err());
    server.shutdown().await;
}

#[tokio::test]
async fn stalled_tls_handshakes_are_closed_after_the_timeout() {
    let ca = Ca::new("test CA");
    let dir = tls_dir(&ca, "", "");
    let options = ServerOptions {
        tls_handshake_timeout: Duration::from_millis(200),
        ..dir.options()
    };
    let server = Server::start(options, Stub::new()).await;
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PROMPT, stalled.read_to_end(&mut rest))
        .await
        .expect("the server closes a stalled handshake")
        .ok();
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Streaming `/metrics`, with the real renderer

use std::collections::{BTreeMap, HashMap};
use timattr_exporter::metrics::{BuildInfo, Metrics, ValueHashes};
use timattr_exporter::outcome::Outcome;
use timattr_exporter::pattern::Patterns;
use timattr_exporter::store::{AppSettings, GroupSettings, Seeds, Store};

/// The daemon's renderer over a store of `groups` groups in every state, every family on.
struct Real {
    metrics: Metrics,
    store: Arc<Store>,
    ids: Vec<String>,
    /// Renders that returned, and how the last one ended.
    ended: AtomicU64,
    last: Mutex<Option<std::io::Result<()>>>,
}

const REAL_APP: u64 = 1_400_000_000;

impl Real {
    fn new(groups: usize) -> Arc<Real> {
        let metrics = Metrics::new(BuildInfo {
            version: "1.2.3",
            revision: "abc".into(),
            rustc: "1.85.0".into(),
        });
        let _observer = metrics.observer(REAL_APP);
        let store = Store::new();
        let ids: Vec<String> = (0..groups).map(|i| format!("@TGS#g{i:06}")).collect();
        store.set_settings(
            REAL_APP,
            AppSettings {
                app: GroupSettings {
                    labels: Arc::new(BTreeMap::from([("team".into(), "rooms".into())])),
                    ignore_keys: Some(Arc::new(Patterns::new(["hb"]).unwrap())),
                },
                groups: HashMap::new(),
            },
        );
        store.set_assigned(REAL_APP, &ids, Seeds::DropUnlisted);
        for (i, id) in ids.iter().enumerate() {
            let outcome = match i % 5 {
                0 => continue,
                1 => Outcome::NoAnswer(timattr_exporter::outcome::FailureReason::Timeout),
                _ => Outcome::Ok(Real::attrs(i, 0)),
            };
            store.apply(REAL_APP, id, &outcome, 1_700_000_000.0);
            if i % 5 == 2 {
                store.apply(
                    REAL_APP,
                    id,
                    &Outcome::Ok(Real::attrs(i, 1)),
                    1_700_000_060.5,
                );
            }
        }
        Arc::new(Real {
            metrics,
            store: Arc::new(store),
            ids,
            ended: AtomicU64::new(0),
            last: Mutex::new(None),
        })
    }

    fn attrs(i: usize, round: usize) -> Vec<(String, String)> {
        [
            ("color", "blue"),
            ("hb", "x"),
            ("round", ""),
            ("quote\"", "a\nb"),
        ]
        .iter()
        .map(|(k, v)| {
            let v = if k == &"round" {
                format!("{i}-{round}")
            } else {
                v.to_string()
            };
            (k.to_string(), v)
        })
        .collect()
    }

    /// The whole exposition at once, as before streaming.
    fn full(&self) -> String {
        String::from_utf8(self.metrics.render(&self.store, ValueHashes::PerKey, None)).unwrap()
    }
}

impl Service for Real {
    fn render_metrics(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let result = self
            .metrics
            .render_to(&self.store, ValueHashes::PerKey, None, out);
        let kind = result.as_ref().map_err(|e| e.kind()).map(|_| ());
        *self.last.lock().unwrap() = Some(kind.map_err(std::io::Error::from));
        self.ended.fetch_add(1, Ordering::SeqCst);
        result
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn reload(&self) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

async fn start_real(options: ServerOptions, real: Arc<Real>) -> Server {
    Server::serve(options, real).await
}

/// Without the `process_*` families, whose values move from one render to the next.
fn without_process(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("process_") && !l.contains(" process_"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Waits, without sleeping longer than needed, until `cond` holds.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < PROMPT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_streamed_scrape_is_the_full_render_byte_for_byte() {
    let real = Real::new(2_000);
    let server = start_real(ServerOptions::default(), Arc::clone(&real)).await;
    let client = plain_client();
    let full = without_process(&real.full());
    assert!(
        full.len() > 3 * http::STREAM_CHUNK,
        "several chunks: {}",
        full.len()
    );

    let plain = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.headers()["transfer-encoding"], "chunked", "streamed");
    assert_eq!(
        plain.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let plain = plain.text().await.unwrap();
    assert!(without_process(&plain) == full, "the plain stream differs");

    let gz = client
        .get(server.url("/metrics"))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let compressed = gz.bytes().await.unwrap();
    assert!(compressed.len() < full.len() / 4);
    assert!(
        without_process(&gunzip(&compressed)) == full,
        "the gzip stream differs"
    );

    // HEAD: the length of what GET sends (the process_* values may differ in length, not here:
    // only compare that one is given and the body is empty).
    let head = client.head(server.url("/metrics")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let len: usize = head.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(len.abs_diff(plain.len()) < 200, "{len} vs {}", plain.len());
    assert!(head.bytes().await.unwrap().is_empty());
    server.shutdown().await;
}

/// A scraper that closes its connection after the first chunk: the render stops (it does not
/// run on to its end) and frees its `--web.max-requests` slot; with gzip too, where the render
/// and the compression run on two threads.
#[tokio::test]
async fn a_scraper_leaving_mid_body_stops_the_render_and_frees_its_slot() {
    scraper_leaves_mid_body("").await;
}

#[tokio::test]
async fn a_gzip_scraper_leaving_mid_body_stops_the_render_and_frees_its_slot() {
    scraper_leaves_mid_body("Accept-Encoding: gzip\r\n").await;
}

async fn scraper_leaves_mid_body(extra_header: &str) {
    let stub = Stub::new();
    stub.huge.store(true, Ordering::SeqCst);
    let options = ServerOptions {
        max_requests: 1,
        ..ServerOptions::default()
    };
    let server = Server::start(options, Arc::clone(&stub)).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{extra_header}\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < http::STREAM_CHUNK {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(PROMPT, conn.read(&mut chunk))
            .await
            .expect("the body flows")
            .unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    drop(conn);

    wait_until("the render ended", || {
        stub.huge_ended.lock().unwrap().is_some()
    })
    .await;
    let (written, kind) = stub.huge_ended.lock().unwrap().unwrap();
    assert_eq!(
        kind,
        std::io::ErrorKind::BrokenPipe,
        "the render was stopped"
    );
    assert!(written < HUGE / 4, "stopped soon: {written} bytes");

    // The slot is free: the next scrape renders (the permit drops as the render task returns).
    let client = plain_client();
    let start = tokio::time::Instant::now();
    loop {
        let r = client.get(server.url("/metrics")).send().await.unwrap();
        if r.status() == 200 {
            assert!(r.text().await.unwrap().contains("stub_renders_total 2"));
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(start.elapsed() < PROMPT, "the slot stays taken");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.shutdown().await;
}

/// A render that fails halfway cuts the body short, plain or gzip: the scraper gets an error,
/// never a body that looks whole (for gzip: never a finished stream with a valid trailer).
#[tokio::test]
async fn a_render_failing_mid_body_cuts_the_body() {
    let stub = Stub::new();
    let server = Server::start(ServerOptions::default(), Arc::clone(&stub)).await;
    let client = plain_client();
    for gzip in [false, true] {
        *stub.fail_after.lock().unwrap() = Some(4 * http::STREAM_CHUNK as u64);
        let mut request = client.get(server.url("/metrics"));
        if gzip {
            request = request.header("Accept-Encoding", "gzip");
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "the head left with the first chunk");
        let body = response.bytes().await;
        assert!(body.is_err(), "gzip {gzip}: the body ended as if whole");
    }
    server.shutdown().await;
}

/// A scraper reading 1 byte every 10 ms holds its render back, but not the store: polls keep
/// writing it meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_does_not_delay_polls() {
    let real = Real::new(10_000);
    let server = start_real(ServerOptions::default(), Arc::clone(&real)).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut byte = [0u8; 1];
        loop {
            match conn.read(&mut byte).await {
                Ok(1) => tokio::time::sleep(Duration::from_millis(10)).await,
                _ => return,
            }
        }
    });
    // Let the render fill what the socket and the stream's chunks hold.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let polls = {
        let (store, ids) = (Arc::clone(&real.store), real.ids.clone());
        tokio::task::spawn_blocking(move || {
            for round in 2..4 {
                for (i, id) in ids.iter().enumerate() {
                    let attrs = Outcome::Ok(Real::attrs(i, round));
                    store.apply(REAL_APP, id, &attrs, 1_700_000_100.0 + round as f64);
                }
            }
        })
    };
    tokio::time::timeout(PROMPT, polls)
        .await
        .expect("the polls are not held up by the slow scrape")
        .unwrap();
    assert_eq!(
        real.ended.load(Ordering::SeqCst),
        0,
        "the scrape was still in progress"
    );
    assert!(
        real.store.error_code(REAL_APP, &real.ids[0]) == Some(0),
        "the polls landed"
    );

    // The reader gives up: the render stops at its next chunk.
    reader.abort();
    let _ = reader.await;
    wait_until("the render stopped", || {
        real.ended.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(
        real.last
            .lock()
            .unwrap()
            .as_ref()
            .map(|r| r.as_ref().map_err(|e| e.kind())),
        Some(Err(std::io::ErrorKind::BrokenPipe))
    );
    server.shutdown().await;
}

/// A body still flowing at `request_timeout` is cut (the scrape fails, as the scraper's own
/// timeout would make it), and its render stops instead of holding its slot.
#[tokio::test]
async fn a_body_past_the_request_timeout_is_cut_and_its_render_stops() {
    let stub = Stub::new();
    stub.huge.store(true, Ordering::SeqCst);
    let options = ServerOptions {
        request_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let server = Server::start(options, Arc::clone(&stub)).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Read nothing: the render fills the buffers and waits, until the deadline cuts it.
    wait_until("the render ended", || {
        stub.huge_ended.lock().unwrap().is_some()
    })
    .await;
    let (written, kind) = stub.huge_ended.lock().unwrap().unwrap();
    assert_eq!(kind, std::io::ErrorKind::TimedOut, "the render was stopped");
    assert!(written < HUGE / 4, "stopped soon: {written} bytes");
    // What arrived is a 200 whose chunked body never ends properly.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(PROMPT, conn.read_to_end(&mut got)).await;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(!got.ends_with(b"0\r\n\r\n"), "no final chunk");
    server.shutdown().await;
}
