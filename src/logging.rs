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
            install(registry.with(logfmt_layer(|| Logfmt::new(std::io::stderr()))));
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

fn logfmt_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    tracing_logfmt::builder()
        .with_span_name(false)
        .with_span_path(false)
        .layer()
        .with_writer(writer)
}

/// The logfmt layer's writer, undoing one escape of `tracing_logfmt`: it quotes values with
/// Rust's `escape_debug`, which writes `'` as `\'`. logfmt escapes only `"`, `\` and control
/// characters, so `message="this app\'s callbacks..."` would defeat a grep for the plain text
/// and read differently in a strict parser. Only quoted values are touched (a bare value never
/// holds an escape: `"` forces quoting), and every other escape is kept as it is.
struct Logfmt<W> {
    inner: W,
    quoted: bool,
    /// A backslash inside quotes, its escaped character not yet seen (a line split across
    /// writes).
    escape: bool,
    out: Vec<u8>,
}

impl<W: std::io::Write> Logfmt<W> {
    fn new(inner: W) -> Logfmt<W> {
        Logfmt {
            inner,
            quoted: false,
            escape: false,
            out: Vec::new(),
        }
    }
}

impl<W: std::io::Write> std::io::Write for Logfmt<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.clear();
        for &b in buf {
            if self.escape {
                self.escape = false;
                if b != b'\'' {
                    self.out.push(b'\\');
                }
                self.out.push(b);
            } else if self.quoted && b == b'\\' {
                self.escape = true;
            } else {
                if b == b'"' {
                    self.quoted = !self.quoted;
                } else if b == b'\n' {
                    self.quoted = false;
                }
                self.out.push(b);
            }
        }
        self.inner.write_all(&self.out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if std::mem::take(&mut self.escape) {
            self.inner.write_all(b"\\")?;
        }
        self.inner.flush()
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

    /// A `MakeWriter` into a shared buffer, through [`Logfmt`] as `init` sets it up.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn logfmt_writes_a_single_quote_as_itself_and_keeps_other_escapes() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber =
            tracing_subscriber::registry().with(logfmt_layer(move || Logfmt::new(sink.clone())));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                group_id = "it's",
                bare = "a\\'b",
                path = "C:\\ 'x' \"q\"",
                "this app's callbacks"
            );
        });
        let line = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(line.contains(r#"message="this app's callbacks""#), "{line}");
        assert!(line.contains(r#"group_id=it's"#), "{line}");
        assert!(line.contains(r#"bare=a\'b"#), "{line}");
        assert!(line.contains(r#"path="C:\\ 'x' \"q\"""#), "{line}");
        assert!(!line.replace(r"bare=a\'b", "").contains(r"\'"), "{line}");
    }

    #[test]
    fn an_escape_split_across_writes_is_kept() {
        use std::io::Write as _;
        let mut out = Vec::new();
        {
            let mut w = Logfmt::new(&mut out);
            w.write_all(br#"a="x\"#).unwrap();
            w.write_all(br#"'y\"#).unwrap();
            w.write_all(br#"\z" b=c\'d"#).unwrap();
            w.write_all(b"\n").unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "a=\"x'y\\\\z\" b=c\\'d\n");
    }
}
