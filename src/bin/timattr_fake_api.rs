//! `timattr_fake_api`: the fake Tencent Chat API as a process, for the end-to-end test, load
//! generators and shell users. Prints `listening on http://ADDR` once bound; exits 0 on
//! SIGTERM or SIGINT, 64 for a bad command line or scenario, 1 if it cannot bind.
//! `--callback-url` makes every app send its callbacks there, as the Chat console would.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use timattr_exporter::fake::{CallbackTarget, Fake, Scenario, demo_scenario};
use timattr_exporter::secret::SecretKey;
use url::Url;

#[derive(Parser)]
#[command(
    version,
    about = "A fake of the Tencent Cloud Chat REST API (group attributes)"
)]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// A scenario file (YAML): apps, groups, timed events.
    #[arg(long, conflicts_with = "demo")]
    scenario: Option<PathBuf>,
    /// The built-in demo scenario (the one `timattr_exporter --demo` uses).
    #[arg(long)]
    demo: bool,
    /// Send every app's callbacks (attribute changes, destroyed and created groups) here,
    /// e.g. http://127.0.0.1:9100/callback; apps may override it with POST /fake/callback.
    #[arg(long, value_name = "URL", value_parser = parse_callback_url)]
    callback_url: Option<Url>,
    /// Sign the callbacks with this token (adds Sign and RequestTime).
    #[arg(long, value_name = "TOKEN", requires = "callback_url")]
    callback_token: Option<String>,
}

fn parse_callback_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the callback URL must be http or https".to_owned());
    }
    Ok(url)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let scenario = match (&args.scenario, args.demo) {
        (Some(path), _) => match Scenario::from_file(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::from(64);
            }
        },
        (None, true) => demo_scenario(),
        (None, false) => {
            tracing::warn!(
                "no --scenario or --demo: starting empty (add apps with POST /fake/apps)"
            );
            Scenario::new()
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    };
    let fake = Fake::new(scenario);
    if let Some(url) = args.callback_url {
        let mut target = CallbackTarget::new(url);
        if let Some(token) = args.callback_token {
            target = target.with_token(SecretKey::new(token));
        }
        tracing::info!(
            url = %target.url,
            signed = target.token.is_some(),
            "sending callbacks"
        );
        fake.set_default_callback(Some(target));
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    }
    tracing::info!(%addr, "fake Tencent Chat API serving");
    match fake.serve(listener, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("serving failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
