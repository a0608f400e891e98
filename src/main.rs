//! `timattr_exporter`: parses flags, sets up logging, loads the config, binds, and hands over
//! to [`timattr_exporter::daemon::run`]. Exit codes: 0 after a clean shutdown, 64 for a bad
//! command line or config, 1 for any other fatal error.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing::{error, info, warn};

use timattr_exporter::config;
use timattr_exporter::daemon::{self, ConfigSource, Options};
use timattr_exporter::http::{self, ServerOptions};
use timattr_exporter::logging::{self, LogFormat, LogLevel};
use timattr_exporter::metrics::BuildInfo;
use timattr_exporter::secret::SecretKey;
use timattr_exporter::shard::Shard;
use timattr_exporter::{auto_reload, fake, shutdown, web_config};

const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "timattr_exporter",
    // `--version` is ours: Prometheus tools print revision, build date and toolchain too.
    disable_version_flag = true,
    about = "Prometheus exporter for Tencent Cloud Chat (TIM) group custom attributes"
)]
struct Flags {
    /// The YAML config file.
    #[arg(
        long = "config.file",
        value_name = "PATH",
        default_value = "timattr.yml"
    )]
    config_file: PathBuf,
    /// Validate the config (and the secrets' presence), print the result, and exit 0 or 64.
    #[arg(long = "config.check")]
    config_check: bool,
    /// Where /metrics is served (`:9877` means every interface, IPv4 and IPv6).
    #[arg(
        long = "web.listen-address",
        value_name = "ADDR",
        default_value = ":9877"
    )]
    listen_address: String,
    /// Receive Tencent Chat's webhooks (`POST /callback`) on this listener of its own.
    #[arg(long = "callback.listen-address", value_name = "ADDR")]
    callback_listen_address: Option<String>,
    /// TLS and basic auth for the HTTP server, in exporter-toolkit's web-config format.
    #[arg(long = "web.config.file", value_name = "PATH")]
    web_config_file: Option<PathBuf>,
    /// error, warn, info or debug.
    #[arg(long = "log.level", default_value = "info")]
    log_level: LogLevel,
    /// logfmt or json.
    #[arg(long = "log.format", default_value = "logfmt")]
    log_format: LogFormat,
    /// Concurrent /metrics requests served at once; more answer 503 (0: no limit).
    #[arg(
        long = "web.max-requests",
        value_name = "N",
        default_value_t = http::DEFAULT_MAX_REQUESTS
    )]
    max_requests: usize,
    /// Poll only the groups in shard N of --total-shards.
    #[arg(long = "shard", value_name = "N", default_value_t = 0)]
    shard: u32,
    /// How many replicas share the groups.
    #[arg(long = "total-shards", value_name = "M", default_value_t = 1)]
    total_shards: u32,
    /// Take the shard ordinal from the number after the last `-` of the host name (a
    /// StatefulSet pod `timattr-exporter-2` is shard 2) instead of --shard.
    #[arg(long = "shard.from-hostname", conflicts_with = "shard")]
    shard_from_hostname: bool,
    /// Re-read the config file and the secret, token and TLS files it names this often, and reload
    /// when any content changed (`0s`: off).
    #[arg(
        long = "config.auto-reload-interval",
        value_name = "D",
        default_value = "0s",
        value_parser = auto_reload::parse_interval
    )]
    auto_reload_interval: Duration,
    /// Run against a built-in simulated Tencent Chat API with sample groups; needs no config.
    #[arg(long = "demo")]
    demo: bool,
    /// Print the version, revision, build date and toolchain, and exit.
    #[arg(short = 'V', long = "version")]
    version: bool,
}

/// What `--version` prints, in the layout of Prometheus' `version.Print`.
fn version_text() -> String {
    format!(
        "timattr_exporter, version {} (revision: {})\n  build date:       {}\n  rust version:     rustc {}\n  platform:         {}/{}\n",
        timattr_exporter::VERSION,
        env!("TIMATTR_REVISION"),
        env!("TIMATTR_BUILD_DATE"),
        env!("TIMATTR_RUSTC_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH,
    )
}

fn main() -> ExitCode {
    let flags = match Flags::try_parse() {
        Ok(flags) => flags,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if flags.version {
        print!("{}", version_text());
        return ExitCode::SUCCESS;
    }
    logging::init(flags.log_level, flags.log_format);
    match real_main(flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal::Usage(msg)) => {
            error!(error = %msg, "bad command line or config");
            eprintln!("{msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Fatal::Other(msg)) => {
            error!(error = %msg, "fatal");
            ExitCode::FAILURE
        }
    }
}

enum Fatal {
    Usage(String),
    Other(String),
}

fn shard_from(flags: &Flags) -> Result<Shard, Fatal> {
    let shard = if flags.shard_from_hostname {
        Shard::from_hostname(&host_name(), flags.total_shards)
    } else {
        Shard::new(flags.shard, flags.total_shards)
    };
    shard.map_err(|e| Fatal::Usage(e.to_string()))
}

/// `$HOSTNAME`, else `/etc/hostname`, else nothing (which no shard can be taken from).
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default()
}

fn build_info() -> BuildInfo {
    BuildInfo {
        version: timattr_exporter::VERSION,
        revision: env!("TIMATTR_REVISION").to_owned(),
        rustc: env!("TIMATTR_RUSTC_VERSION").to_owned(),
    }
}

fn real_main(flags: Flags) -> Result<(), Fatal> {
    let shard = shard_from(&flags)?;
    let web = match &flags.web_config_file {
        Some(path) => web_config::load(path)
            .map(|_| ())
            .map_err(|e| format!("--web.config.file {}: {e}", path.display())),
        None => Ok(()),
    };
    if flags.config_check {
        return config_check(&flags, web);
    }
    web.map_err(Fatal::Usage)?;
    // One scheduler thread. Polling is I/O paced by the API quota (200 requests/s per app costs
    // a few percent of a core), and with worker threads every request paid for cross-thread
    // wake-ups (futex, context switches): ~25% of its CPU (issue 5, BENCHMARKS.md W1). The CPU-
    // heavy work — rendering and compressing /metrics, bcrypt, the state file — runs on the
    // blocking pool, and the HTTP server on a thread of its own (`http::serve_on_own_thread`),
    // so a scrape never holds up a poll.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fatal::Other(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(async_main(flags, shard));
    // A read stuck on the blocking pool (a FIFO, a hung mount) must not keep a clean shutdown
    // from exiting: the daemon gave up on it already (`auto_reload::READ_TIMEOUT`).
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// `--config.check`: both files' results on stdout, all at once, then 0 or 64.
fn config_check(flags: &Flags, web: Result<(), String>) -> Result<(), Fatal> {
    let web_ok = match (&flags.web_config_file, web) {
        (Some(path), Ok(())) => {
            println!("web config {} is valid", path.display());
            true
        }
        (_, Err(e)) => {
            println!("{e}");
            false
        }
        (None, Ok(())) => true,
    };
    let config_ok = match config::load(&flags.config_file) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                println!("warning: {w}");
            }
            println!(
                "config {} is valid\n{}",
                flags.config_file.display(),
                loaded.config.summary()
            );
            true
        }
        Err(e) => {
            println!("config {} is invalid:\n{e}", flags.config_file.display());
            false
        }
    };
    match (config_ok, web_ok) {
        (true, true) => Ok(()),
        (false, _) => Err(Fatal::Usage(format!(
            "config {} is invalid",
            flags.config_file.display()
        ))),
        (true, false) => Err(Fatal::Usage("--web.config.file is invalid".into())),
    }
}

/// Points the demo's fake API at the exporter's callback listener, signing with the demo
/// app's token, so the demo's scripted changes and deletion also arrive by push.
fn wire_demo_callbacks(server: &fake::FakeServer, bound: std::net::SocketAddr) {
    // A wildcard bind (`:PORT`) is reached through loopback.
    let ip = match bound.ip() {
        ip if ip.is_unspecified() && ip.is_ipv6() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip => ip,
    };
    let target = std::net::SocketAddr::new(ip, bound.port());
    let url = url::Url::parse(&format!("http://{target}/callback"))
        .expect("a socket address makes a valid URL");
    info!(callback_url = %url, "demo: the simulated API sends its callbacks here");
    server.set_default_callback(Some(
        fake::CallbackTarget::new(url).with_token(SecretKey::new(fake::DEMO_CALLBACK_TOKEN)),
    ));
}

async fn async_main(flags: Flags, shard: Shard) -> Result<(), Fatal> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The demo's fake API lives as long as this function.
    let mut demo_server = None;
    let (source, config) = if flags.demo {
        let server = fake::Fake::start(fake::demo_scenario())
            .await
            .map_err(|e| Fatal::Other(format!("cannot start the demo API: {e}")))?;
        let config = fake::demo_config(&server.base_url());
        info!(api = %server.base_url(), "demo: simulated Tencent Chat API started");
        demo_server = Some(server);
        (ConfigSource::Fixed(Box::new(config.clone())), config)
    } else {
        let loaded = config::load(&flags.config_file).map_err(|e| {
            Fatal::Usage(format!(
                "config {} is invalid:\n{e}",
                flags.config_file.display()
            ))
        })?;
        for w in &loaded.warnings {
            warn!(warning = %w, "config");
        }
        (ConfigSource::File(flags.config_file.clone()), loaded.config)
    };

    let addr = http::resolve_listen_address(&flags.listen_address)
        .await
        .map_err(|e| Fatal::Usage(format!("--web.listen-address {e}")))?;
    let listener =
        http::bind(addr).map_err(|e| Fatal::Other(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Fatal::Other(e.to_string()))?;
    // The demo receives its fake API's callbacks on a free loopback port unless told where.
    let callback_address = flags
        .callback_listen_address
        .clone()
        .or_else(|| flags.demo.then(|| "127.0.0.1:0".to_owned()));
    let callbacks = match &callback_address {
        None => None,
        Some(address) => {
            let addr = http::resolve_listen_address(address)
                .await
                .map_err(|e| Fatal::Usage(format!("--callback.listen-address {e}")))?;
            let listener = http::bind(addr)
                .map_err(|e| Fatal::Other(format!("cannot listen on {addr}: {e}")))?;
            let bound = listener
                .local_addr()
                .map_err(|e| Fatal::Other(e.to_string()))?;
            info!(callback_listen_address = %bound, "receiving callbacks on POST /callback");
            if let Some(server) = &demo_server {
                wire_demo_callbacks(server, bound);
            }
            Some(listener)
        }
    };
    info!(
        version = timattr_exporter::VERSION,
        listen_address = %local,
        apps = config.apps.len(),
        groups = daemon::Daemon::configured_groups(&config, shard),
        shard = shard.ordinal,
        total_shards = shard.total,
        "timattr_exporter starting"
    );
    if flags.demo {
        let port = local.port();
        info!(
            "demo: open http://localhost:{port}/metrics (metrics), http://localhost:{port}/ (landing page)"
        );
    }

    let (trigger, stop) = shutdown::channel();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    shutdown::spawn_signal_handler(trigger, reload_tx)
        .map_err(|e| Fatal::Other(format!("cannot install signal handlers: {e}")))?;
    let options = Options {
        source,
        config,
        shard,
        server: ServerOptions {
            web_config_file: flags.web_config_file.clone(),
            max_requests: flags.max_requests,
            ..ServerOptions::default()
        },
        build: build_info(),
        reloads: reload_rx,
        callbacks,
        auto_reload: auto_reload::enabled(flags.auto_reload_interval),
    };
    let result = daemon::run(options, listener, stop).await;
    drop(demo_server);
    result.map_err(|e| Fatal::Other(format!("HTTP server failed: {e}")))?;
    info!("stopped");
    Ok(())
}
