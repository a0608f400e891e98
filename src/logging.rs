//! Log setup: `--log.level` and `--log.format` (logfmt or json), to stderr, as Prometheus
//! exporters do. Structured fields only; secrets never reach a log line because every secret is
//! a redacting newtype ([`crate::secret`]).

use std::str::FromStr;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "error" => Ok(LogLevel::Error),
            "warn" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            other => Err(format!(
                "unknown log level {other:?}: expected error, warn, info or debug"
            )),
        }
    }
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Logfmt,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "logfmt" => Ok(LogFormat::Logfmt),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}: expected logfmt or json"
            )),
        }
    }
}

/// Installs the global subscriber. Dependencies' own `tracing` events are held at `warn` so
/// `debug` shows the exporter's decisions rather than connection-pool chatter.
///
/// Records of the `log` crate are not bridged in (no `LogTracer`, hence `set_global_default`
/// rather than `init`): rustls-platform-verifier logs every failed handshake at `error` there,
/// a second line beside the exporter's own, carrying the build machine's source paths in
/// `log.file`. The exporter's own line says the same (`reason=connect`, and at `debug` the
/// whole error chain, "invalid peer certificate: UnknownIssuer").
pub fn init(level: LogLevel, format: LogFormat) {
    let filter = EnvFilter::new(format!(
        "warn,timattr_exporter={lvl},timattr_fake_api={lvl}",
        lvl = level.directive()
    ));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Logfmt => {
            let layer = tracing_logfmt::builder()
                .with_span_name(false)
                .with_span_path(false)
                .layer()
                .with_writer(std::io::stderr);
            install(registry.with(layer));
        }
        LogFormat::Json => {
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(std::io::stderr);
            install(registry.with(layer));
        }
    }
}

fn install(subscriber: impl tracing::Subscriber + Send + Sync + 'static) {
    // Only fails when a subscriber is already set: a second init in one process (tests).
    let _ = tracing::subscriber::set_global_default(subscriber);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_levels_and_formats() {
        assert_eq!("debug".parse::<LogLevel>(), Ok(LogLevel::Debug));
        assert!(
            "trace"
                .parse::<LogLevel>()
                .unwrap_err()
                .contains("expected error")
        );
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("text".parse::<LogFormat>().is_err());
    }
}
