//! The exporter's HTTP server: `/metrics`, `/-/healthy`, `/-/ready`, `/-/reload` and a landing
//! page, behind the TLS, basic auth, headers and rate limit of `--web.config.file`
//! (see [`crate::web_config`]).
//!
//! The server never lets one client hold up another: connections are capped (over the cap a new
//! connection is closed at once), a TLS handshake, the request head and each whole request have
//! deadlines, idle connections are closed, `/metrics` renders in flight are capped
//! (`--web.max-requests`: over the cap, 503 at once), and rendering and bcrypt run on the
//! blocking pool (bcrypt one check at a time).
//!
//! `/metrics` is streamed: the render writes into bounded chunks that a channel of
//! [`STREAM_CHUNKS`] carries to the response body (chunked; with gzip, compressed on a second
//! thread as the render goes), so a scrape holds a few hundred KiB rather than the whole text,
//! and a slow reader
//! slows the render down instead of piling text up. The render keeps its `max_requests` slot
//! until it really ends; a reader that goes away or outlasts `request_timeout` stops it at its
//! next chunk.
//! Plaintext connections speak HTTP/1.1; TLS connections speak HTTP/2 too when ALPN picks it.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::web_config::{Authenticator, RateLimit, WebConfig, WebConfigSource};

/// What the server serves; the daemon implements it.
pub trait Service: Send + Sync + 'static {
    /// Writes the full Prometheus text exposition (format 0.0.4), rendered from in-memory state,
    /// to `out` as it goes. The server calls it on the blocking pool: it may take hundreds of
    /// milliseconds, and `out` blocks while the reader is slow, so no lock may be held while
    /// writing to it. An error from `out` (the reader went away, the request timed out) must
    /// stop the render and be returned.
    fn render_metrics(&self, out: &mut dyn io::Write) -> io::Result<()>;
    fn is_ready(&self) -> bool;
    /// Apply a reload; `Err(text)` when the new config is bad (served as 500 with the text).
    fn reload(&self) -> BoxFuture<'static, Result<(), String>>;
}

/// What the callbacks listener serves ([`crate::callback`] implements it): `POST /callback`
/// only, without basic auth (Tencent sends no credentials; `Sign` is the authentication).
pub trait CallbackService: Send + Sync + 'static {
    /// One callback: its query string and whole body (at most [`MAX_CALLBACK_BODY`]). Returns
    /// the status and the body to answer.
    fn callback(&self, query: &str, body: &[u8]) -> (StatusCode, &'static str);
    /// A body over [`MAX_CALLBACK_BODY`], refused with 413 without being kept.
    fn too_large(&self);
}

/// The largest callback body read (SPEC: over 1 MiB is 413).
pub const MAX_CALLBACK_BODY: usize = crate::callback::MAX_BODY_BYTES;

/// How much of an oversized callback body is read and dropped before its 413, so that the
/// sender gets the answer (see [`callback`]); past this the answer goes out and the connection
/// closes. Nothing past [`MAX_CALLBACK_BODY`] is kept, and the request's deadline bounds the time.
const DRAIN_OVERSIZED_BYTES: u64 = 16 << 20;

/// Which endpoints a listener serves.
#[derive(Clone)]
pub enum Site {
    /// `/metrics`, the health and reload endpoints and the landing page.
    Exporter(Arc<dyn Service>),
    /// `/callback` alone, on a listener of its own.
    Callbacks(Arc<dyn CallbackService>),
}

impl From<Arc<dyn Service>> for Site {
    fn from(service: Arc<dyn Service>) -> Site {
        Site::Exporter(service)
    }
}

impl From<Arc<dyn CallbackService>> for Site {
    fn from(service: Arc<dyn CallbackService>) -> Site {
        Site::Callbacks(service)
    }
}

/// The `/metrics` Content-Type: Prometheus text format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bytes of `/metrics` text (compressed, with gzip) per chunk of the response body.
pub const STREAM_CHUNK: usize = 256 * 1024;

/// The gzip level of `/metrics`: the fastest, since at 100k groups a scrape's time is the
/// render's and the compression's CPU on a 2-core host. zlib-rs's level 1 (static Huffman codes)
/// makes the body 41% larger than miniz_oxide's level 1 did (14.4 against 10.2 MB at 100,000
/// groups); its level 2 makes it 9.7 MB but took the gzip scrape from 160-240 ms to 240-350 ms
/// (BENCHMARKS, W5), past the 300 ms target. The default level (6) costs more than rendering.
pub const GZIP_LEVEL: flate2::Compression = flate2::Compression::fast();

/// Chunks a render may have waiting for the connection: with the one being filled, the bound
/// on what one scrape holds besides the socket's buffers.
pub const STREAM_CHUNKS: usize = 3;

/// hyper refuses an HTTP/1 read buffer smaller than this.
const MIN_HTTP1_BUF: usize = 8192;

/// Limits and timeouts. `Default` holds production values; tests shorten them.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// `--web.config.file`: re-read per connection (TLS) and per request (auth, headers).
    pub web_config_file: Option<PathBuf>,
    /// Connections open at once; a connection over the cap is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Time a client has to send a request head, counted from the connection's start or from
    /// the end of its previous response. An HTTP/1.1 keep-alive connection idle for longer is
    /// closed (clients reconnect).
    pub header_read_timeout: Duration,
    /// Bound on a request head (HTTP/1: the read buffer, at least 8 KiB; HTTP/2: the header list).
    pub max_header_bytes: usize,
    /// Time a client has to complete the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time from a request's head to its response (auth, rendering, reload); past it: 503.
    /// A streamed `/metrics` body must also be complete by then, or the connection is cut
    /// (the scrape fails, as a scraper's own timeout would make it) and the render stops.
    pub request_timeout: Duration,
    /// A connection with no request in flight for this long is closed (what bounds idle
    /// HTTP/2 connections, which have no head timeout).
    pub idle_timeout: Duration,
    /// On shutdown, how long in-flight requests get to finish before connections are dropped.
    pub shutdown_grace: Duration,
    /// `--web.max-requests`: `/metrics` renders at once; a scrape over it answers 503 at once
    /// (node_exporter's limit). 0: no limit.
    pub max_requests: usize,
}

/// `--web.max-requests`'s default, as node_exporter's.
pub const DEFAULT_MAX_REQUESTS: usize = 40;

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            web_config_file: None,
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            tls_handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(5),
            max_requests: DEFAULT_MAX_REQUESTS,
        }
    }
}

/// A listen address that is neither `host:port` nor `:port`, or names a host that does not
/// resolve. The caller adds the flag it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not host:port")]
pub struct ListenAddressError(pub String);

/// Where a listen address says to listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddress {
    /// `:PORT` or `[::]:PORT`: every interface, IPv4 and IPv6 alike, on one dual-stack socket
    /// (as Go exporters bind it).
    Every(u16),
    /// A resolved `host:port`.
    Socket(SocketAddr),
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::Every(port) => write!(f, ":{port}"),
            ListenAddress::Socket(addr) => addr.fmt(f),
        }
    }
}

/// What a listen address (`--web.listen-address`, `--callback.listen-address`) names, as Go
/// exporters spell them: `:9877` is port 9877 on every interface; anything else is
/// `host:port` (an IPv6 host in brackets), resolved, and its first address taken.
pub async fn resolve_listen_address(addr: &str) -> Result<ListenAddress, ListenAddressError> {
    let error = || ListenAddressError(addr.to_owned());
    if let Some(port) = addr.strip_prefix(':') {
        return port.parse().map(ListenAddress::Every).map_err(|_| error());
    }
    match tokio::net::lookup_host(addr)
        .await
        .ok()
        .and_then(|mut it| it.next())
    {
        Some(SocketAddr::V6(v6)) if v6.ip().is_unspecified() => Ok(ListenAddress::Every(v6.port())),
        Some(socket) => Ok(ListenAddress::Socket(socket)),
        None => Err(error()),
    }
}

/// Binds a listener on `addr`. Must be called within a tokio runtime.
///
/// [`ListenAddress::Every`] is one IPv6 socket with `IPV6_V6ONLY` off, which takes IPv4
/// connections too (as mapped addresses), whatever the host's `net.ipv6.bindv6only` default;
/// on a host without IPv6 it falls back to `0.0.0.0`.
pub fn bind(addr: ListenAddress) -> io::Result<TcpListener> {
    let listener = match addr {
        ListenAddress::Socket(socket) => bind_socket(socket, None)?,
        ListenAddress::Every(port) => {
            let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
            match bind_socket(any6, Some(false)) {
                Ok(listener) => listener,
                // Taken or forbidden: IPv4 would fail alike, and the IPv6 error says why.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
                    ) =>
                {
                    return Err(e);
                }
                Err(e) => {
                    warn!(error = %e, port, "no IPv6 here: listening on IPv4 only");
                    bind_socket(
                        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
                        None,
                    )?
                }
            }
        }
    };
    TcpListener::from_std(listener)
}

/// A listening socket as tokio's `TcpListener::bind` makes one (`SO_REUSEADDR`, so a restart
/// need not wait out `TIME_WAIT`), with `IPV6_V6ONLY` set when `only_v6` says.
fn bind_socket(addr: SocketAddr, only_v6: Option<bool>) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(only_v6) = only_v6 {
        socket.set_only_v6(only_v6)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// State shared by every connection.
struct Shared {
    options: ServerOptions,
    site: Site,
    web: Option<Arc<WebConfigSource>>,
    auth: Authenticator,
    limiter: RateLimiter,
    /// `/metrics` renders in flight (`max_requests`); `None` when unlimited.
    renders: Option<Arc<Semaphore>>,
}

/// Every answer's body: whole, or a streamed `/metrics`.
type Body = UnsyncBoxBody<Bytes, io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// The nice value of the server's blocking threads (renders and their gzip threads, bcrypt):
/// when a scrape and the poll thread want the same core, the poll keeps its slot and the
/// scrape takes a little longer (BENCHMARKS W5). Only the threads' share of a busy CPU changes.
pub const BLOCKING_NICE: i32 = 10;

/// Applied by the server's runtime to each thread it starts: its own thread (which only moves
/// bytes) keeps the process's nice value, as `on_thread_start` runs for the blocking pool only
/// here. A failure (a platform without per-thread nice values) changes nothing else.
fn lower_blocking_priority() {
    #[cfg(target_os = "linux")]
    {
        // On Linux the nice value belongs to the thread, so this leaves the poll thread alone.
        let tid = rustix::thread::gettid();
        let _ = rustix::process::setpriority_process(Some(tid), BLOCKING_NICE);
    }
}

/// [`serve`] on a thread of its own, with its own single-threaded runtime; the returned future
/// completes with `serve`'s result.
///
/// The daemon polls on one scheduler thread (see `main.rs`); were the server on it too, writing
/// a large `/metrics` body, TLS handshakes or a burst of connections would delay the poll
/// slots, and the rate limiter drops a slot it wakes up late for rather than bursting. Here
/// nothing a scraper does reaches the poll thread: they share only the store's short,
/// chunked locks.
pub fn serve_on_own_thread(
    listener: TcpListener,
    options: ServerOptions,
    site: impl Into<Site>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<impl Future<Output = io::Result<()>>> {
    let site = site.into();
    // Thread names are cut at 15 bytes.
    let (name, pool) = match site {
        Site::Exporter(_) => ("timattr-http", "timattr-render"),
        Site::Callbacks(_) => ("timattr-callbacks", "timattr-cb-pool"),
    };
    // A tokio socket belongs to the runtime that registered it: hand it over as a std one.
    let listener = listener.into_std()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(pool)
                .on_thread_start(lower_blocking_priority)
                .build()
                .and_then(|runtime| {
                    let result = runtime.block_on(async move {
                        serve(TcpListener::from_std(listener)?, options, site, shutdown).await
                    });
                    // A render still running on the blocking pool is not waited for.
                    runtime.shutdown_background();
                    result
                });
            let _ = done_tx.send(result);
        })?;
    Ok(async move {
        done_rx
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the HTTP server thread panicked")))
    })
}

/// Serves until `shutdown` completes, then stops accepting, gives in-flight requests up to
/// `shutdown_grace` and returns.
pub async fn serve(
    listener: TcpListener,
    options: ServerOptions,
    site: impl Into<Site>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let site = site.into();
    let web = options
        .web_config_file
        .clone()
        .map(|p| Arc::new(WebConfigSource::new(p)));
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let grace = options.shutdown_grace;
    let renders =
        (options.max_requests > 0).then(|| Arc::new(Semaphore::new(options.max_requests)));
    let shared = Arc::new(Shared {
        renders,
        options,
        site,
        web,
        auth: Authenticator::new(),
        limiter: RateLimiter::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                        debug!(%peer, "connection limit reached, closing new connection");
                        drop(stream);
                        continue;
                    };
                    connections.spawn(connection(
                        stream,
                        peer,
                        Arc::clone(&shared),
                        stop_rx.clone(),
                        permit,
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin; the
                    // listener itself stays usable.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!(
            remaining = connections.len(),
            "shutdown grace elapsed, dropping connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// One accepted connection, from TLS handshake (if configured) to close.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let config = match &shared.web {
        None => None,
        Some(source) => match load_web_config(source).await {
            Ok(config) => Some(config),
            Err(e) => {
                // Never fall back to plaintext or to no auth: refuse until the file is fixed.
                error!(%peer, error = %e, "web config unusable, refusing connection");
                return;
            }
        },
    };
    let activity = Arc::new(Activity::new());
    let options = &shared.options;
    let Some(tls) = config.as_ref().and_then(|c| c.tls()).cloned() else {
        let io = TokioIo::new(stream);
        serve_http1(io, &shared, activity, stop).await;
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let handshake = tokio::time::timeout(options.tls_handshake_timeout, acceptor.accept(stream));
    let tls_stream = tokio::select! {
        result = handshake => match result {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        _ = stop.wait_for(|stopped| *stopped) => return,
    };
    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls_stream);
    if h2 {
        serve_http2(io, &shared, activity, stop).await;
    } else {
        serve_http1(io, &shared, activity, stop).await;
    }
}

async fn load_web_config(source: &Arc<WebConfigSource>) -> Result<Arc<WebConfig>, String> {
    let source = Arc::clone(source);
    match tokio::task::spawn_blocking(move || source.load()).await {
        Ok(Ok(config)) => Ok(config),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("loading the web config panicked: {e}")),
    }
}

fn request_service(
    shared: Arc<Shared>,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let busy = activity.begin();
        async move {
            let _busy = busy;
            let deadline = Instant::now() + shared.options.request_timeout;
            let response =
                match tokio::time::timeout_at(deadline, handle(&shared, request, deadline)).await {
                    Ok(response) => response,
                    Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "request timed out\n"),
                };
            Ok::<_, Infallible>(response)
        }
    })
}

async fn serve_http1<I>(
    io: TokioIo<I>,
    shared: &Arc<Shared>,
    activity: Arc<Activity>,
    stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let options = &shared.options;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes.max(MIN_HTTP1_BUF))
        .keep_alive(true);
    let conn = builder.serve_connection(
        io,
        request_service(Arc::clone(shared), Arc::clone(&activity)),
    );
    drive(
        conn,
        |c| c.graceful_shutdown(),
        stop,
        &activity,
        options.idle_timeout,
        options.shutdown_grace,
    )
    .await;
}

async fn serve_http2<I>(
    io: TokioIo<I>,
    shared: &Arc<Shared>,
    activity: Arc<Activity>,
    stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let options = &shared.options;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(32);
    let conn = builder.serve_connection(
        io,
        request_service(Arc::clone(shared), Arc::clone(&activity)),
    );
    drive(
        conn,
        |c| c.graceful_shutdown(),
        stop,
        &activity,
        options.idle_timeout,
        options.shutdown_grace,
    )
    .await;
}

/// Runs a hyper connection until it ends, the server stops, or it sits idle too long; in the
/// last two cases it is shut down gracefully, with `grace` to finish.
async fn drive<C, E>(
    conn: C,
    graceful: impl FnOnce(Pin<&mut C>),
    mut stop: watch::Receiver<bool>,
    activity: &Activity,
    idle_timeout: Duration,
    grace: Duration,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = stop.wait_for(|stopped| *stopped) => {}
        () = activity.idle_for(idle_timeout) => debug!("closing idle connection"),
    }
    graceful(conn.as_mut());
    let _ = tokio::time::timeout(grace, conn).await;
}

/// When a connection last started or finished a request, and how many are in flight.
struct Activity {
    last: Mutex<Instant>,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            last: Mutex::new(Instant::now()),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Busy(Arc::clone(self))
    }

    /// Completes once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = *self.last.lock().unwrap_or_else(|p| p.into_inner()) + timeout;
            if Instant::now() >= deadline && self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            // Busy past the deadline: look again a timeout later (requests are bounded by
            // request_timeout, and finishing one moves `last`).
            let next = deadline.max(Instant::now() + timeout.min(Duration::from_secs(1)));
            tokio::time::sleep_until(next).await;
        }
    }
}

/// A request in flight; dropping it marks the end.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// The endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Landing,
    Metrics,
    Healthy,
    Ready,
    Reload,
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        match path {
            "/" => Some(Route::Landing),
            "/metrics" => Some(Route::Metrics),
            "/-/healthy" => Some(Route::Healthy),
            "/-/ready" => Some(Route::Ready),
            "/-/reload" => Some(Route::Reload),
            _ => None,
        }
    }

    fn allows(self, method: &Method) -> bool {
        match self {
            Route::Reload => method == Method::POST,
            _ => method == Method::GET || method == Method::HEAD,
        }
    }

    fn allow_header(self) -> &'static str {
        match self {
            Route::Reload => "POST",
            _ => "GET, HEAD",
        }
    }
}

/// Web config (per request), rate limit, auth, then the endpoint; config headers on every answer.
async fn handle(shared: &Shared, request: Request<Incoming>, deadline: Instant) -> Response<Body> {
    let config = match &shared.web {
        None => None,
        Some(source) => match load_web_config(source).await {
            Ok(c) => Some(c),
            Err(e) => {
                error!(error = %e, "web config unusable, refusing request");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "web config unusable; see the exporter's log\n",
                );
            }
        },
    };
    let mut response = match (&shared.site, &config) {
        (Site::Callbacks(service), _) => callback(service, request).await,
        (Site::Exporter(_), None) => route(shared, &request, deadline).await,
        (Site::Exporter(_), Some(config)) => {
            if !shared.limiter.allow(config.rate_limit()) {
                text(StatusCode::TOO_MANY_REQUESTS, "too many requests\n")
            } else if !shared
                .auth
                .authorize(config, request.headers().get(header::AUTHORIZATION))
                .await
            {
                let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
                r
            } else {
                route(shared, &request, deadline).await
            }
        }
    };
    if let Some(config) = &config {
        for (name, value) in config.headers() {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// `POST /callback`: the body read up to its bound, then handed over whole.
///
/// A body over the bound is answered 413 once it has been read to its end and thrown away, up
/// to [`DRAIN_OVERSIZED_BYTES`]: a sender still writing when the listener answers and closes
/// gets a broken pipe, and HTTP clients such as reqwest then report the write error and never
/// read the 413. A sender that waits for `100 Continue` is answered at once, before it sends.
async fn callback(
    service: &Arc<dyn CallbackService>,
    request: Request<Incoming>,
) -> Response<Body> {
    if request.uri().path() != "/callback" {
        return text(StatusCode::NOT_FOUND, "Not Found\n");
    }
    if request.method() != Method::POST {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let too_large = |close: bool| {
        service.too_large();
        let mut r = text(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB\n");
        if close {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    };
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_CALLBACK_BODY as u64) {
        // Unpolled, the body is never asked for: hyper sends `100 Continue` on the first read.
        let waits = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if waits || declared.is_some_and(|len| len > DRAIN_OVERSIZED_BYTES) {
            return too_large(true);
        }
    }
    let query = request.uri().query().unwrap_or("").to_owned();
    let mut incoming = request.into_body();
    let declared_within = declared.filter(|len| *len <= MAX_CALLBACK_BODY as u64);
    let mut body = Vec::with_capacity(declared_within.unwrap_or(0) as usize);
    let mut seen = 0u64;
    while let Some(frame) = incoming.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_trailers) => continue,
            },
            Err(e) if seen > MAX_CALLBACK_BODY as u64 => {
                debug!(error = %e, "an oversized callback body broke off");
                return too_large(true);
            }
            Err(e) => {
                debug!(error = %e, "reading a callback body failed");
                return text(StatusCode::BAD_REQUEST, "body could not be read\n");
            }
        };
        seen += data.len() as u64;
        if seen > DRAIN_OVERSIZED_BYTES {
            return too_large(true);
        }
        if seen <= MAX_CALLBACK_BODY as u64 {
            body.extend_from_slice(&data);
        } else if !body.is_empty() {
            body = Vec::new();
        }
    }
    if seen > MAX_CALLBACK_BODY as u64 {
        return too_large(false);
    }
    let (status, answer) = service.callback(&query, &body);
    let mut response = Response::new(full(Bytes::from_static(answer.as_bytes())));
    *response.status_mut() = status;
    let content_type = if status == StatusCode::OK {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn route(shared: &Shared, request: &Request<Incoming>, deadline: Instant) -> Response<Body> {
    let Site::Exporter(service) = &shared.site else {
        return text(StatusCode::NOT_FOUND, "Not Found\n");
    };
    let Some(route) = Route::of(request.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "Not Found\n");
    };
    let method = request.method();
    if !route.allows(method) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        r.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static(route.allow_header()),
        );
        return r;
    }
    let response = match route {
        Route::Landing => html(landing_page()),
        Route::Healthy => text(StatusCode::OK, "Healthy"),
        Route::Ready if service.is_ready() => text(StatusCode::OK, "Ready"),
        Route::Ready => text(StatusCode::SERVICE_UNAVAILABLE, "Not ready"),
        Route::Reload => {
            // A task of its own, so a request that times out does not cancel a reload halfway.
            match tokio::spawn(service.reload()).await {
                Ok(Ok(())) => text(StatusCode::OK, "Reloaded\n"),
                Ok(Err(message)) => text(StatusCode::INTERNAL_SERVER_ERROR, message),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reload failed: {e}\n"),
                ),
            }
        }
        Route::Metrics => {
            let gzip = accepts_gzip(request.headers());
            match render_slot(shared) {
                // HEAD has its answer (the length) only once the render ended.
                Ok(permit) if method == Method::HEAD => {
                    return metrics_head(Arc::clone(service), gzip, permit).await;
                }
                Ok(permit) => metrics(Arc::clone(service), gzip, permit, deadline).await,
                // As promhttp's MaxRequestsInFlight: refuse at once rather than queue, so
                // piled-up scrapes cannot multiply the rendering work.
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "Limit of concurrent requests reached ({}), try again later.\n",
                        shared.options.max_requests
                    ),
                ),
            }
        }
    };
    if method == Method::HEAD {
        without_body(response)
    } else {
        response
    }
}

/// A `max_requests` slot for one render (`None` when unlimited), or `Err` when all are taken.
fn render_slot(shared: &Shared) -> Result<Option<OwnedSemaphorePermit>, TryAcquireError> {
    match &shared.renders {
        None => Ok(None),
        Some(renders) => Arc::clone(renders).try_acquire_owned().map(Some),
    }
}

/// Streams a render from the blocking pool. `permit` (a `max_requests` slot) moves into the
/// render, so a scrape that times out or whose reader goes away keeps its slot until the render
/// it started really ends, which it does at its next chunk: the chunk's send fails once the
/// body (and so the channel's receiver) is dropped.
///
/// The answer's head waits for the first chunk, so a render that fails or stalls before it
/// still answers 500 or (past `request_timeout`) 503.
async fn metrics(
    service: Arc<dyn Service>,
    gzip: bool,
    permit: Option<OwnedSemaphorePermit>,
    deadline: Instant,
) -> Response<Body> {
    let (tx, mut rx) = mpsc::channel(STREAM_CHUNKS);
    // Fires at the deadline, so a send waiting on a reader that reads nothing gives up. A task
    // here, not a timer in the render's thread: at shutdown this runtime's timer goes away
    // while a render may still be waiting.
    let (expire, expired) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                let _ = expire.send(true);
            }
            () = expire.closed() => {}
        }
    });
    let render = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        render_into(&*service, gzip, Chunks::new(tx, expired))
    });
    let body = match rx.recv().await {
        Some(first) => {
            let rest = futures::stream::unfold(Some((rx, render)), move |state| async move {
                let (mut rx, render) = state?;
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(chunk)) => Some((Ok(Frame::data(chunk)), Some((rx, render)))),
                    // The sender is gone: the render ended, well or not. A failure must cut the
                    // body short rather than end it as if it were whole.
                    Ok(None) => match ended(render).await {
                        Ok(()) => None,
                        Err(e) => Some((Err(e), None)),
                    },
                    Err(_) => {
                        debug!("a /metrics body outlasted the request timeout; cutting it");
                        let e = io::Error::new(io::ErrorKind::TimedOut, "request timed out");
                        Some((Err(e), None))
                    }
                }
            });
            let first =
                futures::stream::once(std::future::ready(Ok::<_, io::Error>(Frame::data(first))));
            StreamBody::new(futures::StreamExt::chain(first, rest)).boxed_unsync()
        }
        // Nothing sent: an empty exposition, or a render that failed before its first chunk.
        None => match ended(render).await {
            Ok(()) => full(Bytes::new()),
            Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n"),
        },
    };
    metrics_response(body, gzip)
}

/// HEAD `/metrics`: the GET answer's headers, with the length of the body it would carry,
/// counted by rendering it (compressed, when gzip is asked) into nothing.
async fn metrics_head(
    service: Arc<dyn Service>,
    gzip: bool,
    permit: Option<OwnedSemaphorePermit>,
) -> Response<Body> {
    let counted = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut count = Counter(0);
        render_into(&*service, gzip, &mut count).map(|()| count.0)
    });
    match counted.await {
        Ok(Ok(len)) => {
            let mut response = metrics_response(full(Bytes::new()), gzip);
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            response
        }
        Ok(Err(e)) => {
            error!(error = %e, "rendering /metrics failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n")
        }
        Err(e) => {
            error!(error = %e, "rendering /metrics panicked");
            text(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n")
        }
    }
}

fn metrics_response(body: Body, gzip: bool) -> Response<Body> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// The end of a render task: its error (logged unless the reader went away, which is no fault
/// of the exporter), or a panic as an error.
async fn ended(render: tokio::task::JoinHandle<io::Result<()>>) -> io::Result<()> {
    match render.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            // The reader's doing, no fault of the exporter.
            if !matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::TimedOut
            ) {
                error!(error = %e, "rendering /metrics failed");
            }
            Err(e)
        }
        Err(e) => {
            error!(error = %e, "rendering /metrics panicked");
            Err(io::Error::other("rendering /metrics panicked"))
        }
    }
}

/// Renders into `out`, through a streaming gzip encoder when `gzip`.
///
/// With gzip the render and the compression run on two threads, [`PIPE_CHUNKS`] chunks apart,
/// so a scrape takes about as long as the slower of the two instead of their sum (at 100k
/// groups each is 100-200 ms of CPU; BENCHMARKS W5).
fn render_into<W: io::Write + Send>(
    service: &dyn Service,
    gzip: bool,
    mut out: W,
) -> io::Result<()> {
    use io::Write as _;
    if !gzip {
        service.render_metrics(&mut out)?;
        return out.flush();
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIPE_CHUNKS);
    std::thread::scope(|scope| {
        let compressor = std::thread::Builder::new()
            .name("metrics-gzip".into())
            .spawn_scoped(scope, move || -> io::Result<_> {
                let mut encoder = flate2::write::GzEncoder::new(out, GZIP_LEVEL);
                for chunk in rx {
                    encoder.write_all(&chunk)?;
                }
                Ok(encoder)
            })?;
        let mut pipe = Chunked::new(Pipe(tx));
        let rendered = service
            .render_metrics(&mut pipe)
            .and_then(|()| pipe.flush());
        // Closes the channel: the compressor ends once it has taken what is in it.
        drop(pipe);
        let compressed = compressor
            .join()
            .map_err(|_| io::Error::other("compressing /metrics panicked"))?;
        // The compressor's error first: when it failed (the scraper went away), the render only
        // saw the pipe close.
        let encoder = compressed?;
        rendered?;
        encoder.finish()?.flush()
    })
}

/// Plain chunks of a gzip render on their way to the compressor: with the one being filled and
/// the one being compressed, the render runs at most this many chunks ahead.
const PIPE_CHUNKS: usize = 2;

/// The render's end of the pipe to the compressor thread.
struct Pipe(std::sync::mpsc::SyncSender<Vec<u8>>);

impl ChunkSink for Pipe {
    fn send(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        self.0
            .send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the compressor stopped"))
    }
}

/// Where [`Chunked`] sends each chunk.
trait ChunkSink {
    fn send(&mut self, chunk: Vec<u8>) -> io::Result<()>;
}

/// A writer that cuts what it is given into [`STREAM_CHUNK`]-byte chunks for its sink; `flush`
/// sends what is left.
struct Chunked<S> {
    buf: Vec<u8>,
    sink: S,
}

impl<S: ChunkSink> Chunked<S> {
    fn new(sink: S) -> Chunked<S> {
        Chunked {
            buf: Vec::with_capacity(STREAM_CHUNK),
            sink,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(STREAM_CHUNK));
        self.sink.send(chunk)
    }
}

impl<S: ChunkSink> io::Write for Chunked<S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = STREAM_CHUNK.saturating_sub(self.buf.len());
        let taken = data.len().min(room);
        self.buf.extend_from_slice(&data[..taken]);
        if self.buf.len() >= STREAM_CHUNK {
            self.send()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

/// The response body as a [`ChunkSink`]: each chunk goes to the body, blocking (backpressure)
/// while [`STREAM_CHUNKS`] are waiting. Fails with `BrokenPipe` once the body is gone, and with
/// `TimedOut` when a chunk still waits once `expired` turns true (the request's deadline):
/// hyper stops polling a body while the socket is full, so a reader that reads nothing would
/// otherwise hold the render (and its slot) for as long as it keeps the connection.
struct Chunks {
    tx: mpsc::Sender<Bytes>,
    expired: watch::Receiver<bool>,
    /// The server's runtime: this runs on its blocking pool and waits there on the channel.
    runtime: tokio::runtime::Handle,
}

impl Chunks {
    /// Must be called on the server's runtime (its blocking pool included).
    fn new(tx: mpsc::Sender<Bytes>, expired: watch::Receiver<bool>) -> Chunked<Chunks> {
        Chunked::new(Chunks {
            tx,
            expired,
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

impl ChunkSink for Chunks {
    fn send(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        let chunk = Bytes::from(chunk);
        let (tx, expired) = (&self.tx, &mut self.expired);
        // Neither branch needs the runtime's timer or I/O driver, only wakers.
        let sent = self.runtime.block_on(async move {
            tokio::select! {
                biased;
                sent = tx.send(chunk) => Some(sent.is_ok()),
                // The watchdog fired, or is gone with its runtime (shutdown).
                _ = expired.wait_for(|expired| *expired) => None,
            }
        });
        match sent {
            Some(true) => Ok(()),
            Some(false) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the scraper went away",
            )),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the scraper did not read the body within the request timeout",
            )),
        }
    }
}

/// A writer that only counts (HEAD).
struct Counter(u64);

impl io::Write for Counter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0 += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether `Accept-Encoding` allows gzip: listed (or `*`) with a q-value above zero.
pub fn accepts_gzip(headers: &http::HeaderMap) -> bool {
    let mut gzip_q = None;
    let mut star_q = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let mut q = 1.0_f32;
            for param in parts {
                if let Some((k, v)) = param.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        // An unparseable q-value is treated as "not acceptable".
                        q = v.trim().parse().unwrap_or(0.0);
                    }
                }
            }
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip_q = Some(q);
            } else if coding == "*" {
                star_q = Some(q);
            }
        }
    }
    gzip_q.or(star_q).is_some_and(|q| q > 0.0)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn html(body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// A HEAD answer: the GET headers (with the GET body's length) and no body.
fn without_body(response: Response<Body>) -> Response<Body> {
    use hyper::body::Body as _;
    let (mut parts, body) = response.into_parts();
    if let Some(len) = body.size_hint().exact() {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Response::from_parts(parts, full(Bytes::new()))
}

fn landing_page() -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>timattr_exporter</title></head>
<body>
<h1>timattr_exporter</h1>
<p>Prometheus exporter for Tencent Cloud Chat group custom attributes.</p>
<p>Version: {version}</p>
<ul>
<li><a href="metrics">Metrics</a></li>
<li><a href="-/healthy">Health</a></li>
<li><a href="-/ready">Readiness</a></li>
</ul>
</body>
</html>
"#,
        version = crate::VERSION
    )
}

/// exporter-toolkit's `rate_limit`: one token bucket for the whole server. The bucket survives
/// web config re-reads and starts over when the limit in the file changes.
#[derive(Default)]
struct RateLimiter {
    state: Mutex<Option<(RateLimit, f64, Instant)>>,
}

impl RateLimiter {
    fn allow(&self, limit: Option<RateLimit>) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(limit) = limit else {
            *state = None;
            return true;
        };
        let now = Instant::now();
        let burst = f64::from(limit.burst);
        let (tokens, last) = match *state {
            Some((current, tokens, last)) if current == limit => (tokens, last),
            _ => (burst, now),
        };
        let refill = now.duration_since(last).as_secs_f64() / limit.interval.as_secs_f64();
        let tokens = (tokens + refill).min(burst);
        let (allowed, tokens) = if tokens >= 1.0 {
            (true, tokens - 1.0)
        } else {
            (false, tokens)
        };
        *state = Some((limit, tokens, now));
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ae(value: &'static str) -> bool {
        let mut h = http::HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
        accepts_gzip(&h)
    }

    #[test]
    fn gzip_negotiation() {
        assert!(!accepts_gzip(&http::HeaderMap::new()));
        assert!(ae("gzip"));
        assert!(ae("GZIP"));
        assert!(ae("deflate, gzip;q=0.5"));
        assert!(ae("x-gzip"));
        assert!(ae("*"));
        assert!(!ae("gzip;q=0"));
        assert!(!ae("gzip; q=0.0"));
        assert!(!ae("identity"));
        assert!(!ae("*;q=0"));
        assert!(!ae("gzip;q=0, *"), "an explicit gzip entry wins over *");
        assert!(ae("gzip;q=1, *;q=0"));
        assert!(!ae("gzip;q=bogus"));
    }

    #[tokio::test]
    async fn listen_addresses() {
        let resolved = |addr: &'static str| async move {
            resolve_listen_address(addr)
                .await
                .unwrap_or_else(|e| panic!("{addr}: {e}"))
        };
        let socket = |s: &str| ListenAddress::Socket(s.parse().expect("a socket address"));
        assert_eq!(resolved(":9877").await, ListenAddress::Every(9877));
        assert_eq!(resolved(":0").await, ListenAddress::Every(0));
        assert_eq!(resolved("[::]:9877").await, ListenAddress::Every(9877));
        assert_eq!(resolved("127.0.0.1:9877").await, socket("127.0.0.1:9877"));
        assert_eq!(resolved("0.0.0.0:80").await, socket("0.0.0.0:80"));
        assert_eq!(resolved("[::1]:9877").await, socket("[::1]:9877"));
        assert_eq!(resolved(":9877").await.to_string(), ":9877");
        // No host names among them: a lookup's answer depends on the machine's resolver.
        for bad in [
            "",
            "9877",
            ":",
            ":port",
            ":99999",
            ":-1",
            "127.0.0.1",
            "[::1]",
        ] {
            assert_eq!(
                resolve_listen_address(bad).await,
                Err(ListenAddressError(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(
            ListenAddressError(":x".into()).to_string(),
            "\":x\" is not host:port"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_refills_one_token_per_interval() {
        let limiter = RateLimiter::default();
        let limit = Some(RateLimit {
            interval: Duration::from_secs(1),
            burst: 2,
        });
        assert!(limiter.allow(limit));
        assert!(limiter.allow(limit));
        assert!(!limiter.allow(limit));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(limiter.allow(limit));
        assert!(!limiter.allow(limit));
        assert!(limiter.allow(None), "no limit configured");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_in_flight_requests() {
        let activity = Arc::new(Activity::new());
        let busy = activity.begin();
        let idle = activity.idle_for(Duration::from_secs(5));
        tokio::pin!(idle);
        assert!(
            tokio::time::timeout(Duration::from_secs(30), idle.as_mut())
                .await
                .is_err(),
            "a request in flight keeps the connection"
        );
        drop(busy);
        let start = Instant::now();
        idle.await;
        assert!(start.elapsed() >= Duration::from_secs(5));
    }
}
