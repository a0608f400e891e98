//! `--web.config.file`: TLS, basic auth, extra response headers and a request rate limit for the
//! HTTP server, in [exporter-toolkit]'s web-config format, so a file written for node_exporter
//! works here unchanged.
//!
//! [`load`] parses and validates the file once at startup (so `main` can exit 64 on a bad file).
//! The server then re-reads it through a [`WebConfigSource`], like exporter-toolkit does: once per
//! connection for TLS (certificates rotate without a restart) and once per request for basic
//! auth, headers and the rate limit (a removed user loses access even on a kept-alive
//! connection). A [`WebConfigSource`] rebuilds only when the bytes of the file or of a file it
//! names change, so the common case costs a few small reads and a SHA-256.
//!
//! ## Support matrix
//! | key | support |
//! |---|---|
//! | `tls_server_config.cert_file` / `key_file`, inline `cert` / `key` | yes (PEM; PKCS#8, PKCS#1 or SEC1 keys) |
//! | `client_auth_type` | `NoClientCert`, `VerifyClientCertIfGiven`, `RequireAndVerifyClientCert`. `RequestClientCert` and `RequireAnyClientCert` accept certificates nobody verified; they are rejected with an error |
//! | `client_ca_file`, inline `client_ca` | yes; without one, client certificates are verified against the system roots, as in Go |
//! | `client_allowed_sans` | yes: the verified client certificate needs one of the listed DNS, IP, e-mail or URI SANs (exact match); a client without a certificate is refused. An error with `NoClientCert` (Go would ignore the list) and for an empty list (Go would refuse everyone) |
//! | `min_version` / `max_version` | `TLS10`..`TLS13`; rustls speaks only TLS 1.2 and 1.3, so `TLS10`/`TLS11` as a minimum mean TLS 1.2, and a maximum below `TLS12` is an error |
//! | `cipher_suites` | the TLS 1.2 suites rustls has (the ECDHE AES-GCM and ChaCha20-Poly1305 ones) by their Go names; TLS 1.3 names are accepted and ignored (as Go does); anything else is an error |
//! | `prefer_server_cipher_suites` | yes (rustls `ignore_client_order`), default `true` |
//! | `curve_preferences` | `X25519`, `CurveP256`, `CurveP384`; `CurveP521` is an error (not in rustls's ring provider) |
//! | `http_server_config.http2` | yes, over TLS (ALPN `h2`); plaintext is HTTP/1.1 only, as in Go |
//! | `http_server_config.headers` | the same fixed set exporter-toolkit allows, with its value checks |
//! | `basic_auth_users` | yes, bcrypt (`$2a$`, `$2b$`, `$2x$`, `$2y$`), verified off the runtime one at a time, results (failures too) cached |
//! | `rate_limit.interval` / `burst` | yes: a token bucket for the whole server, 429 when empty |
//!
//! [exporter-toolkit]: https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::duration;

/// How many basic-auth results are remembered, successes and failures each. A handful of
/// scrapers and users need a few entries; the bound keeps a flood of distinct logins from
/// growing memory.
const AUTH_CACHE_CAPACITY: usize = 1024;

/// What a file naming a place in the config could not do, with that place.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("web config {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("web config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("web config {path}: {}", problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// A validated web config, ready to serve with.
#[derive(Clone)]
pub struct WebConfig {
    tls: Option<Arc<rustls::ServerConfig>>,
    http2: bool,
    headers: HeaderMap,
    /// user name -> bcrypt hash. Empty means no basic auth.
    users: Arc<BTreeMap<String, String>>,
    rate_limit: Option<RateLimit>,
}

/// exporter-toolkit's `rate_limit`: one request per `interval`, with bursts of `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub interval: Duration,
    pub burst: u32,
}

impl WebConfig {
    /// The rustls config to terminate TLS with, or `None` to serve plaintext.
    pub fn tls(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.tls.as_ref()
    }

    /// Whether HTTP/2 is offered (over TLS, through ALPN).
    pub fn http2(&self) -> bool {
        self.http2
    }

    /// Extra headers for every response.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Whether requests must carry basic-auth credentials.
    pub fn requires_basic_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// The request rate limit, if one is configured (a zero interval disables it).
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.rate_limit
    }
}

impl fmt::Debug for WebConfig {
    // Hashes are not printed: they are offline-crackable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("http2", &self.http2)
            .field("headers", &self.headers)
            .field("basic_auth_users", &self.users.keys().collect::<Vec<_>>())
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

/// Reads, parses and validates a web config file and every file it names.
pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
    let sources = Sources::read(path)?;
    sources.build()
}

/// A web config file that is re-read on every use and rebuilt only when its bytes (or the bytes
/// of a certificate, key or CA file it names) change.
pub struct WebConfigSource {
    path: PathBuf,
    last: Mutex<Option<([u8; 32], Arc<WebConfig>)>>,
}

impl WebConfigSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        WebConfigSource {
            path: path.into(),
            last: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current config. Blocking (file reads): call it from `spawn_blocking`.
    pub fn load(&self) -> Result<Arc<WebConfig>, WebConfigError> {
        let sources = Sources::read(&self.path)?;
        let fingerprint = sources.fingerprint();
        if let Some((seen, config)) = &*self.lock() {
            if *seen == fingerprint {
                return Ok(Arc::clone(config));
            }
        }
        // Keeping the same `ServerConfig` while nothing changed also keeps its TLS session
        // cache, so reconnecting scrapers resume instead of doing a full handshake.
        let config = Arc::new(sources.build()?);
        *self.lock() = Some((fingerprint, Arc::clone(&config)));
        Ok(config)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<([u8; 32], Arc<WebConfig>)>> {
        // A panic while holding this lock leaves at worst a stale cache entry.
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    interval: Option<String>,
    burst: Option<u32>,
}

/// A PEM blob from the config: inline, or read from a file (whose read may have failed).
enum Pem {
    Absent,
    Inline(Vec<u8>),
    File(PathBuf, io::Result<Vec<u8>>),
}

impl Pem {
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Pem::Inline(b) | Pem::File(_, Ok(b)) => Some(b),
            _ => None,
        }
    }
}

/// Everything read from disk for one build: the YAML and the PEM files it names.
struct Sources {
    path: PathBuf,
    yaml: Vec<u8>,
    raw: RawWebConfig,
    cert: Pem,
    key: Pem,
    client_ca: Pem,
    /// Problems found while pairing inline values with file names.
    problems: Vec<String>,
}

impl Sources {
    fn read(path: &Path) -> Result<Sources, WebConfigError> {
        let yaml = std::fs::read(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw: RawWebConfig = if yaml.iter().all(u8::is_ascii_whitespace) {
            // An empty file is a valid config with nothing in it, as in exporter-toolkit.
            RawWebConfig::default()
        } else {
            serde_yaml::from_slice(&yaml).map_err(|e| WebConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut problems = Vec::new();
        let (cert, key, client_ca) = match &raw.tls_server_config {
            None => (Pem::Absent, Pem::Absent, Pem::Absent),
            Some(tls) => (
                pem_source(
                    base,
                    "cert",
                    &tls.cert,
                    "cert_file",
                    &tls.cert_file,
                    &mut problems,
                ),
                pem_source(
                    base,
                    "key",
                    &tls.key,
                    "key_file",
                    &tls.key_file,
                    &mut problems,
                ),
                pem_source(
                    base,
                    "client_ca",
                    &tls.client_ca,
                    "client_ca_file",
                    &tls.client_ca_file,
                    &mut problems,
                ),
            ),
        };
        Ok(Sources {
            path: path.to_owned(),
            yaml,
            raw,
            cert,
            key,
            client_ca,
            problems,
        })
    }

    fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [
            Some(self.yaml.as_slice()),
            self.cert.bytes(),
            self.key.bytes(),
            self.client_ca.bytes(),
        ] {
            // Length-prefixed so that moving bytes between parts changes the digest.
            let part = part.unwrap_or_default();
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize().into()
    }

    fn build(self) -> Result<WebConfig, WebConfigError> {
        let mut problems = self.problems;
        let tls = match &self.raw.tls_server_config {
            None => None,
            Some(raw) => build_tls(
                raw,
                &self.cert,
                &self.key,
                &self.client_ca,
                self.raw.http_server_config.as_ref(),
                &mut problems,
            ),
        };
        let http = self.raw.http_server_config.unwrap_or_default();
        let headers = build_headers(http.headers.unwrap_or_default(), &mut problems);
        let users = self.raw.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            if user.contains(':') {
                problems.push(format!(
                    "basic_auth_users: user {user:?} contains ':', which basic auth cannot carry"
                ));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                problems.push(format!(
                    "basic_auth_users.{user}: not a bcrypt hash (expected $2y$<cost>$... as made by `htpasswd -nBC 10`)"
                ));
            }
        }
        let rate_limit = self
            .raw
            .rate_limit
            .and_then(|raw| build_rate_limit(raw, &mut problems));
        if !problems.is_empty() {
            return Err(WebConfigError::Invalid {
                path: self.path,
                problems,
            });
        }
        Ok(WebConfig {
            tls,
            http2: http.http2.unwrap_or(true),
            headers,
            users: Arc::new(users),
            rate_limit,
        })
    }
}

/// Resolves `inline` / `file` into one PEM source, reading the file (relative to the web config
/// file's directory).
fn pem_source(
    base: &Path,
    inline_key: &str,
    inline: &Option<String>,
    file_key: &str,
    file: &Option<String>,
    problems: &mut Vec<String>,
) -> Pem {
    let inline = inline.as_deref().filter(|s| !s.is_empty());
    let file = file.as_deref().filter(|s| !s.is_empty());
    match (inline, file) {
        (None, None) => Pem::Absent,
        (Some(_), Some(_)) => {
            problems.push(format!(
                "tls_server_config: set either {inline_key} or {file_key}, not both"
            ));
            Pem::Absent
        }
        (Some(pem), None) => Pem::Inline(pem.as_bytes().to_vec()),
        (None, Some(name)) => {
            let path = base.join(name);
            let bytes = std::fs::read(&path);
            Pem::File(path, bytes)
        }
    }
}

/// Parses a PEM source's contents, or records why it cannot be used.
fn pem_bytes<'a>(pem: &'a Pem, what: &str, problems: &mut Vec<String>) -> Option<&'a [u8]> {
    match pem {
        Pem::Absent => None,
        Pem::Inline(bytes) => Some(bytes),
        Pem::File(_, Ok(bytes)) => Some(bytes),
        Pem::File(path, Err(e)) => {
            problems.push(format!(
                "tls_server_config.{what}: cannot read {}: {e}",
                path.display()
            ));
            None
        }
    }
}

fn pem_place(pem: &Pem, inline_key: &str, file_key: &str) -> String {
    match pem {
        Pem::File(path, _) => format!("{file_key} {}", path.display()),
        _ => inline_key.to_owned(),
    }
}

fn parse_certs(
    pem: &Pem,
    inline_key: &str,
    file_key: &str,
    problems: &mut Vec<String>,
) -> Option<Vec<CertificateDer<'static>>> {
    let bytes = pem_bytes(pem, file_key, problems)?;
    let place = pem_place(pem, inline_key, file_key);
    match CertificateDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if certs.is_empty() => {
            problems.push(format!(
                "tls_server_config.{place}: no PEM CERTIFICATE block found"
            ));
            None
        }
        Ok(certs) => Some(certs),
        Err(e) => {
            problems.push(format!("tls_server_config.{place}: bad PEM: {e}"));
            None
        }
    }
}

/// rustls's TLS versions, by exporter-toolkit's names. TLS 1.0 and 1.1 exist in the file format
/// but not in rustls: they map to the lowest version rustls has.
fn tls_version_rank(name: &str) -> Option<u8> {
    match name {
        "TLS10" => Some(10),
        "TLS11" => Some(11),
        "TLS12" => Some(12),
        "TLS13" => Some(13),
        _ => None,
    }
}

fn build_tls(
    raw: &RawTls,
    cert: &Pem,
    key: &Pem,
    client_ca: &Pem,
    http: Option<&RawHttp>,
    problems: &mut Vec<String>,
) -> Option<Arc<rustls::ServerConfig>> {
    let before = problems.len();
    if matches!(cert, Pem::Absent) {
        problems.push("tls_server_config: cert_file (or cert) is required".into());
    }
    if matches!(key, Pem::Absent) {
        problems.push("tls_server_config: key_file (or key) is required".into());
    }
    let certs = parse_certs(cert, "cert", "cert_file", problems);
    let key_pem = key;
    let key = pem_bytes(key_pem, "key_file", problems).and_then(|bytes| {
        match PrivateKeyDer::from_pem_slice(bytes) {
            Ok(k) => Some(k),
            Err(_) => {
                // The parser's own message may quote bytes of the key: leave it out.
                problems.push(format!(
                    "tls_server_config.{}: no usable private key (expected a PKCS#8, PKCS#1 or SEC1 PEM block)",
                    pem_place(key_pem, "key", "key_file")
                ));
                None
            }
        }
    });

    let min = raw.min_version.as_deref().unwrap_or("TLS12");
    let max = raw.max_version.as_deref().unwrap_or("TLS13");
    let mut versions = Vec::new();
    match (tls_version_rank(min), tls_version_rank(max)) {
        (Some(lo), Some(hi)) => {
            if lo > hi {
                problems.push(format!(
                    "tls_server_config: min_version {min} is above max_version {max}"
                ));
            } else if hi < 12 {
                problems.push(format!(
                    "tls_server_config.max_version: {max} leaves no version this server speaks (TLS12, TLS13)"
                ));
            } else {
                if lo <= 12 {
                    versions.push(&rustls::version::TLS12);
                }
                if hi >= 13 {
                    versions.push(&rustls::version::TLS13);
                }
            }
        }
        (lo, hi) => {
            for (key, value, rank) in [("min_version", min, lo), ("max_version", max, hi)] {
                if rank.is_none() {
                    problems.push(format!(
                        "tls_server_config.{key}: unknown TLS version {value:?} (TLS10, TLS11, TLS12, TLS13)"
                    ));
                }
            }
        }
    }

    let provider = build_provider(raw, problems);

    let auth_type = raw.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let roots = parse_certs(client_ca, "client_ca", "client_ca_file", problems);
    // (roots: None for the system roots, optional)
    let verification = match auth_type {
        "NoClientCert" | "" => {
            if !matches!(client_ca, Pem::Absent) {
                problems.push(
                    "tls_server_config: client_ca_file is set but client_auth_type is NoClientCert; set client_auth_type: RequireAndVerifyClientCert".into(),
                );
            }
            if raw.client_allowed_sans.is_some() {
                // Go would ignore the list here; ignoring it would let in clients the file
                // means to keep out.
                problems.push(
                    "tls_server_config.client_allowed_sans needs client_auth_type VerifyClientCertIfGiven or RequireAndVerifyClientCert (no client certificate is asked for)".into(),
                );
            }
            None
        }
        "VerifyClientCertIfGiven" | "RequireAndVerifyClientCert" => {
            let optional = auth_type == "VerifyClientCertIfGiven";
            match client_ca {
                // Go verifies against the system roots when no CA is given.
                Pem::Absent => Some((None, optional)),
                _ => roots.map(|r| (Some(r), optional)),
            }
        }
        "RequestClientCert" | "RequireAnyClientCert" => {
            problems.push(format!(
                "tls_server_config.client_auth_type: {auth_type} is not supported: it accepts client certificates nobody verified; use RequireAndVerifyClientCert with client_ca_file"
            ));
            None
        }
        other => {
            problems.push(format!(
                "tls_server_config.client_auth_type: unknown value {other:?} (NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
            ));
            None
        }
    };
    if raw.client_allowed_sans.as_ref().is_some_and(Vec::is_empty) {
        // Go would start and then refuse every client; say so at load instead.
        problems.push(
            "tls_server_config.client_allowed_sans: the list is empty, so no client could connect; list the allowed SANs or remove the key".into(),
        );
    }

    if problems.len() > before {
        return None;
    }
    let (certs, key, provider) = (certs?, key?, Arc::new(provider?));

    let builder = match rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
    {
        Ok(b) => b,
        Err(e) => {
            problems.push(format!(
                "tls_server_config: cipher_suites and versions do not fit together: {e}"
            ));
            return None;
        }
    };
    let builder = match verification {
        None => builder.with_no_client_auth(),
        Some((roots, optional)) => {
            let allowed_sans = raw.client_allowed_sans.clone();
            match ClientVerifier::new(roots, optional, allowed_sans, &provider) {
                Ok(v) => builder.with_client_cert_verifier(Arc::new(v)),
                Err(problem) => {
                    problems.push(problem);
                    return None;
                }
            }
        }
    };
    let mut config = match builder.with_single_cert(certs, key) {
        Ok(c) => c,
        Err(e) => {
            problems.push(format!(
                "tls_server_config: certificate and key do not make a usable pair: {e}"
            ));
            return None;
        }
    };
    config.ignore_client_order = raw.prefer_server_cipher_suites.unwrap_or(true);
    let http2 = http.and_then(|h| h.http2).unwrap_or(true);
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Some(Arc::new(config))
}

/// Client-certificate verification as exporter-toolkit does it: the chain against the client CA
/// (or, without one, the system roots, as Go does), then `client_allowed_sans` on the verified
/// certificate.
#[derive(Debug)]
struct ClientVerifier {
    /// `None` when the system has no roots at all: Go then starts and refuses every certificate.
    chain: Option<Arc<dyn ClientCertVerifier>>,
    /// Whether a client may connect without a certificate (`VerifyClientCertIfGiven`).
    optional: bool,
    allowed_sans: Option<Vec<String>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ClientVerifier {
    fn new(
        ca: Option<Vec<CertificateDer<'static>>>,
        optional: bool,
        allowed_sans: Option<Vec<String>>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<ClientVerifier, String> {
        let system = ca.is_none();
        let roots = match ca {
            None => system_roots(),
            Some(certs) => {
                let mut store = rustls::RootCertStore::empty();
                for cert in certs {
                    store.add(cert).map_err(|e| {
                        format!("tls_server_config.client_ca_file: unusable CA certificate: {e}")
                    })?;
                }
                Arc::new(store)
            }
        };
        let chain = if roots.is_empty() {
            None
        } else {
            let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots,
                Arc::clone(provider),
            );
            if system {
                // Go names no acceptable CAs when it uses the system roots; a hundred-odd
                // names would only bloat every handshake.
                builder = builder.clear_root_hint_subjects();
            }
            Some(
                builder
                    .build()
                    .map_err(|e| format!("tls_server_config.client_ca_file: {e}"))?,
            )
        };
        Ok(ClientVerifier {
            chain,
            optional,
            allowed_sans,
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.chain
            .as_ref()
            .map_or(&[], |chain| chain.root_hint_subjects())
    }

    fn client_auth_mandatory(&self) -> bool {
        // A SAN list needs a certificate to check; Go's check fails without one too.
        !self.optional || self.allowed_sans.is_some()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Err(rustls::CertificateError::UnknownIssuer.into());
        };
        let verified = chain.verify_client_cert(end_entity, intermediates, now)?;
        match &self.allowed_sans {
            Some(allowed) if !has_allowed_san(end_entity, allowed) => Err(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(SanNotAllowed {
                    reason: "the client certificate has none of the client_allowed_sans",
                })))
                .into(),
            ),
            _ => Ok(verified),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a verified client certificate was refused (its `Debug` is what rustls logs).
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
struct SanNotAllowed {
    reason: &'static str,
}

/// The system's trusted roots, read once per process as Go reads them (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` honoured); unreadable or unparsable entries are skipped, as in Go.
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        Arc::new(store)
    }))
}

/// Whether the certificate carries one of `allowed` among its DNS, e-mail, IP or URI SANs,
/// compared exactly as exporter-toolkit compares them (IPs in Go's `net.IP.String` form).
fn has_allowed_san(cert: &CertificateDer<'_>, allowed: &[String]) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert) else {
        return false;
    };
    let Ok(Some(sans)) = cert.subject_alternative_name() else {
        return false;
    };
    sans.value.general_names.iter().any(|name| {
        let value = match name {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                (*s).to_owned()
            }
            GeneralName::IPAddress(bytes) => match go_ip_string(bytes) {
                Some(ip) => ip,
                None => return false,
            },
            _ => return false,
        };
        allowed.contains(&value)
    })
}

/// An IP SAN as Go prints it: IPv4 dotted, IPv4-mapped IPv6 as IPv4, other IPv6 per RFC 5952.
fn go_ip_string(bytes: &[u8]) -> Option<String> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(std::net::Ipv4Addr::from(v4).to_string());
    }
    let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => v6.to_string(),
    })
}

/// The ring provider narrowed to the configured TLS 1.2 cipher suites and curves.
fn build_provider(raw: &RawTls, problems: &mut Vec<String>) -> Option<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let before = problems.len();
    if let Some(names) = raw.cipher_suites.as_ref().filter(|n| !n.is_empty()) {
        let (tls13, tls12): (Vec<_>, Vec<_>) = provider
            .cipher_suites
            .iter()
            .copied()
            .partition(|s| s.version() == &rustls::version::TLS13);
        let mut chosen = tls13.clone();
        for name in names {
            // Go also spells the ChaCha20 suites without the `_SHA256` suffix.
            let canonical = if name.ends_with("CHACHA20_POLY1305") {
                format!("{name}_SHA256")
            } else {
                name.clone()
            };
            if let Some(suite) = tls12
                .iter()
                .find(|s| format!("{:?}", s.suite()) == canonical)
            {
                if !chosen.contains(suite) {
                    chosen.push(*suite);
                }
            } else if tls13.iter().any(|s| {
                // rustls says TLS13_AES_128_GCM_SHA256 where Go says TLS_AES_128_GCM_SHA256.
                format!("{:?}", s.suite()).replacen("TLS13_", "TLS_", 1) == canonical
            }) {
                // Go ignores cipher_suites for TLS 1.3 and so does this server.
            } else {
                let known: Vec<String> = tls12.iter().map(|s| format!("{:?}", s.suite())).collect();
                problems.push(format!(
                    "tls_server_config.cipher_suites: {name:?} is not supported (TLS 1.2 suites available: {})",
                    known.join(", ")
                ));
            }
        }
        provider.cipher_suites = chosen;
    }
    if let Some(names) = raw.curve_preferences.as_ref().filter(|n| !n.is_empty()) {
        let mut chosen = Vec::new();
        for name in names {
            let group = match name.as_str() {
                "X25519" => Some(rustls::NamedGroup::X25519),
                "CurveP256" => Some(rustls::NamedGroup::secp256r1),
                "CurveP384" => Some(rustls::NamedGroup::secp384r1),
                _ => None,
            };
            match group.and_then(|g| provider.kx_groups.iter().find(|k| k.name() == g)) {
                Some(kx) => chosen.push(*kx),
                None => problems.push(format!(
                    "tls_server_config.curve_preferences: {name:?} is not supported (X25519, CurveP256, CurveP384)"
                )),
            }
        }
        provider.kx_groups = chosen;
    }
    (problems.len() == before).then_some(provider)
}

/// The headers exporter-toolkit lets a web config add, and the values it allows (`None`: any).
const ALLOWED_HEADERS: &[(&str, Option<&[&str]>)] = &[
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
    ("Content-Security-Policy", None),
];

fn build_headers(raw: BTreeMap<String, String>, problems: &mut Vec<String>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in raw {
        let Some((canonical, allowed)) = ALLOWED_HEADERS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&name))
        else {
            let names: Vec<&str> = ALLOWED_HEADERS.iter().map(|(n, _)| *n).collect();
            problems.push(format!(
                "http_server_config.headers: {name:?} cannot be configured (allowed: {})",
                names.join(", ")
            ));
            continue;
        };
        if value.is_empty() {
            continue; // exporter-toolkit: unset if blank
        }
        if let Some(allowed) = allowed {
            if !allowed.contains(&value.as_str()) {
                problems.push(format!(
                    "http_server_config.headers.{canonical}: invalid value {value:?} (expected one of {allowed:?})"
                ));
                continue;
            }
        }
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                headers.insert(HeaderName::from_static(lower(canonical)), v);
            }
            Err(_) => problems.push(format!(
                "http_server_config.headers.{canonical}: value is not a valid HTTP header value"
            )),
        }
    }
    headers
}

/// `HeaderName::from_static` wants lowercase; the allowed names are fixed, so map them here.
fn lower(name: &'static str) -> &'static str {
    match name {
        "Strict-Transport-Security" => "strict-transport-security",
        "X-Content-Type-Options" => "x-content-type-options",
        "X-Frame-Options" => "x-frame-options",
        "X-XSS-Protection" => "x-xss-protection",
        _ => "content-security-policy",
    }
}

fn build_rate_limit(raw: RawRateLimit, problems: &mut Vec<String>) -> Option<RateLimit> {
    let interval = match raw.interval.as_deref() {
        None => Duration::ZERO,
        Some(s) => match duration::parse(s) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("rate_limit.interval: {e}"));
                return None;
            }
        },
    };
    if interval.is_zero() {
        return None;
    }
    let burst = raw.burst.unwrap_or(0);
    if burst == 0 {
        problems.push("rate_limit.burst: must be at least 1 when interval is set".into());
        return None;
    }
    Some(RateLimit { interval, burst })
}

/// Checks basic-auth credentials against a config's users, the way exporter-toolkit does:
/// one bcrypt at a time, on the blocking pool, and every result cached, failures included.
///
/// bcrypt is deliberately slow (tens of milliseconds a check). With one check at a time and
/// wrong answers remembered, a flood of bad passwords costs at most one core, and repeating the
/// same wrong password costs a hash lookup; rendering and polling keep the other cores.
pub struct Authenticator {
    /// Results by [`cache_key`] (a SHA-256 of user, hash and password: no plaintext is kept).
    /// Keying on the hash too means a changed password in the file invalidates entries by
    /// itself.
    cache: Arc<Mutex<AuthCache>>,
    /// The one bcrypt permit. Moved into the blocking task, so a request that is abandoned
    /// (timed out, disconnected) still holds it until its bcrypt really ends.
    bcrypt: Arc<tokio::sync::Semaphore>,
    stats: Arc<BcryptStats>,
}

/// Remembered results. Successes and failures are bounded apart, so a flood of wrong
/// passwords can evict only other failures, never a scraper's good login.
#[derive(Default)]
struct AuthCache {
    ok: HashSet<[u8; 32]>,
    failed: HashSet<[u8; 32]>,
}

impl AuthCache {
    fn get(&self, key: &[u8; 32]) -> Option<bool> {
        if self.ok.contains(key) {
            Some(true)
        } else if self.failed.contains(key) {
            Some(false)
        } else {
            None
        }
    }

    fn insert(&mut self, key: [u8; 32], ok: bool) {
        let set = if ok { &mut self.ok } else { &mut self.failed };
        if set.len() >= AUTH_CACHE_CAPACITY {
            // Any entry will do: a dropped one costs one bcrypt on its next use.
            if let Some(victim) = set.iter().next().copied() {
                set.remove(&victim);
            }
        }
        set.insert(key);
    }
}

/// bcrypt checks run so far and the most ever running at once (1 unless the lock is broken).
#[derive(Default)]
struct BcryptStats {
    runs: std::sync::atomic::AtomicU64,
    running: std::sync::atomic::AtomicUsize,
    max_running: std::sync::atomic::AtomicUsize,
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::new()
    }
}

impl Authenticator {
    pub fn new() -> Self {
        Authenticator {
            cache: Arc::new(Mutex::new(AuthCache::default())),
            bcrypt: Arc::new(tokio::sync::Semaphore::new(1)),
            stats: Arc::new(BcryptStats::default()),
        }
    }

    /// How many bcrypt checks have run (cache misses).
    pub fn bcrypt_runs(&self) -> u64 {
        self.stats.runs.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most bcrypt checks ever running at the same time.
    pub fn bcrypt_max_concurrent(&self) -> usize {
        self.stats
            .max_running
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the request's `Authorization` header names a configured user with the right
    /// password. Always true when the config has no users.
    pub async fn authorize(&self, config: &WebConfig, authorization: Option<&HeaderValue>) -> bool {
        if config.users.is_empty() {
            return true;
        }
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        let known = config.users.get(&user).cloned();
        // An unknown user is still checked against a real hash, so the answer takes as long as
        // for a known user with a wrong password and does not reveal which user names exist.
        let hash = known.clone().unwrap_or_else(|| DUMMY_HASH.to_owned());
        let key = cache_key(&user, &hash, &password);
        if let Some(ok) = self.cache_lock().get(&key) {
            return ok && known.is_some();
        }
        let Ok(permit) = Arc::clone(&self.bcrypt).acquire_owned().await else {
            return false;
        };
        // Requests with the same credentials queued behind the one that just computed them.
        if let Some(ok) = self.cache_lock().get(&key) {
            return ok && known.is_some();
        }
        let (stats, cache) = (Arc::clone(&self.stats), Arc::clone(&self.cache));
        tokio::task::spawn_blocking(move || {
            let verified = stats.run(|| bcrypt::verify(&password, &hash).unwrap_or(false));
            let ok = verified && known.is_some();
            // Cached before the permit goes, so whoever waits for it finds the answer.
            lock(&cache).insert(key, ok);
            drop(permit);
            ok
        })
        .await
        .unwrap_or(false)
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, AuthCache> {
        lock(&self.cache)
    }
}

fn lock(cache: &Mutex<AuthCache>) -> std::sync::MutexGuard<'_, AuthCache> {
    // A panic while holding this lock leaves at worst a missing entry.
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

impl BcryptStats {
    fn run<T>(&self, check: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering::SeqCst;
        self.runs.fetch_add(1, SeqCst);
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.max_running.fetch_max(now, SeqCst);
        let result = check();
        self.running.fetch_sub(1, SeqCst);
        result
    }
}

/// A valid bcrypt hash (cost 10) of a random password nobody knows, for unknown users.
const DUMMY_HASH: &str = "$2b$10$0pjBEfcYUXdv8oGfGOvqgOhRXhdCFfLdrmMEh2VCY/N1MqmV2.zBe";

fn cache_key(user: &str, hash: &str, password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [user.as_bytes(), hash.as_bytes(), password] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// `Basic base64(user:password)` -> (user, password).
fn parse_basic(value: &HeaderValue) -> Option<(String, Vec<u8>)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dummy_hash_is_a_valid_bcrypt_hash() {
        assert!(DUMMY_HASH.parse::<bcrypt::HashParts>().is_ok());
        assert_eq!(bcrypt::verify("", DUMMY_HASH).ok(), Some(false));
    }

    #[test]
    fn ip_sans_print_as_go_prints_them() {
        assert_eq!(go_ip_string(&[10, 0, 0, 7]).as_deref(), Some("10.0.0.7"));
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 7];
        assert_eq!(go_ip_string(&mapped).as_deref(), Some("10.0.0.7"));
        let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        assert_eq!(go_ip_string(&v6).as_deref(), Some("2001:db8::7"));
        assert_eq!(go_ip_string(&[1, 2, 3]), None);
    }

    #[test]
    fn basic_header_parsing() {
        let v = HeaderValue::from_static("Basic YWxpY2U6cDpzcw=="); // alice:p:ss
        assert_eq!(parse_basic(&v), Some(("alice".into(), b"p:ss".to_vec())));
        assert_eq!(parse_basic(&HeaderValue::from_static("Bearer x")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic !!!")), None);
    }
}
