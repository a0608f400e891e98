//! How an app's client speaks TLS to its endpoint: the CA certificates it trusts
//! (`tls_ca_file`) and the client certificate it presents (`tls_cert_file`, `tls_key_file`),
//! for an endpoint behind a corporate TLS-inspecting proxy or one that wants mutual TLS.
//!
//! `tls_ca_file` replaces the system roots rather than adding to them, as `tls_config.ca_file`
//! does in Prometheus and exporter-toolkit: an operator who names the proxy's CA means "trust
//! this", and a bundle that should also hold the public roots can say so itself.
//!
//! A leaf module: `config` reads the files and names the places, `client` hands the material
//! to reqwest. Parsing here never puts file content into an error message: a private key pasted
//! into the wrong file or field must not be echoed.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS settings of one app's connection. The default trusts the system roots (and
/// `SSL_CERT_FILE`) and presents no client certificate. Equality compares the certificates'
/// and the key's bytes, so a rotated file makes a reload rebuild the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// Trusted instead of the system roots; never empty.
    pub ca_certs: Option<Vec<CertificateDer<'static>>>,
    pub identity: Option<ClientIdentity>,
}

/// A client certificate chain (end entity first) and its private key, checked to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: ClientKey,
}

/// A client certificate's private key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey(Arc<PrivateKeyDer<'static>>);

impl ClientKey {
    /// The key's DER, for the TLS handshake and nothing else.
    pub fn expose(&self) -> &PrivateKeyDer<'static> {
        &self.0
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
}

/// Why a PEM file could not be read, without quoting any of it (pki-types' own errors quote the
/// offending line, which could be key material).
fn pem_problem(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a PEM section in it has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line in it is malformed".into(),
        pem::Error::Base64Decode(_) => "a PEM section in it is not valid base64".into(),
        pem::Error::SectionTooLarge => "a PEM section in it is too large".into(),
        pem::Error::Io(e) => format!("cannot read it: {}", e.kind()),
        _ => "it is not valid PEM".into(),
    }
}

/// Every `CERTIFICATE` in a PEM bundle; an error when there is none or one is not a certificate
/// a TLS client can use as a trust anchor.
pub fn ca_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = certificates(pem)?;
    let mut store = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        if store.add(cert.clone()).is_err() {
            return Err(format!(
                "certificate {} in the file it names is not a valid X.509 CA certificate",
                i + 1
            ));
        }
    }
    Ok(certs)
}

/// Every `CERTIFICATE` in a PEM file, in file order; an error when there is none.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the file it names is not valid PEM: {}", pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(
            "the file it names holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        );
    }
    Ok(certs)
}

/// The first private key in a PEM file (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`).
pub fn private_key(pem: &[u8]) -> Result<ClientKey, String> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(ClientKey(Arc::new(key))),
        Err(pem::Error::NoItemsFound) => Err(
            "the file it names holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC \
             PRIVATE KEY)"
                .into(),
        ),
        Err(e) => Err(format!(
            "the file it names is not valid PEM: {}",
            pem_problem(&e)
        )),
    }
}

/// Pairs a chain with its key, refusing a key that is not the end-entity certificate's.
pub fn identity(
    chain: Vec<CertificateDer<'static>>,
    key: ClientKey,
) -> Result<ClientIdentity, String> {
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain.clone(), key.expose().clone_key(), &provider) {
        Ok(_) => Ok(ClientIdentity { chain, key }),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err("the private key does not match the first certificate in tls_cert_file".into())
        }
        Err(rustls::Error::InvalidCertificate(_)) => {
            Err("the first certificate in tls_cert_file is not a valid X.509 certificate".into())
        }
        // Only a key the ring provider cannot load gets here (an unsupported algorithm or
        // malformed DER); rustls' text names no key material but says little, so it is not used.
        Err(_) => Err(
            "the private key cannot be used: malformed, or not an RSA, ECDSA or Ed25519 key".into(),
        ),
    }
}

impl ClientIdentity {
    /// The chain and key as one PEM document, the form reqwest's rustls `Identity` takes.
    pub fn to_pem(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for cert in &self.chain {
            pem_section(&mut out, "CERTIFICATE", cert.as_ref());
        }
        let (label, der) = match self.key.expose() {
            PrivateKeyDer::Pkcs1(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der()),
            PrivateKeyDer::Sec1(k) => ("EC PRIVATE KEY", k.secret_sec1_der()),
            PrivateKeyDer::Pkcs8(k) => ("PRIVATE KEY", k.secret_pkcs8_der()),
            // Non-exhaustive; pki-types parses no other kind from PEM.
            _ => ("PRIVATE KEY", self.key.expose().secret_der()),
        };
        pem_section(&mut out, label, der);
        out
    }
}

fn pem_section(out: &mut Vec<u8>, label: &str, der: &[u8]) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    out.extend_from_slice(format!("-----BEGIN {label}-----\n").as_bytes());
    for line in b64.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(format!("-----END {label}-----\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_and_key() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn identity_round_trips_through_pem_and_checks_the_key() {
        let (cert, key) = cert_and_key();
        let (_, other_key) = cert_and_key();
        let chain = certificates(cert.as_bytes()).unwrap();
        let id = identity(chain.clone(), private_key(key.as_bytes()).unwrap()).unwrap();
        let pem = id.to_pem();
        assert_eq!(certificates(&pem).unwrap(), chain);
        assert_eq!(&private_key(&pem).unwrap(), &id.key);
        assert!(reqwest::Identity::from_pem(&pem).is_ok());
        let wrong = identity(chain, private_key(other_key.as_bytes()).unwrap());
        assert_eq!(
            wrong.unwrap_err(),
            "the private key does not match the first certificate in tls_cert_file"
        );
    }

    #[test]
    fn errors_and_debug_never_show_the_key() {
        let (_, key) = cert_and_key();
        let k = private_key(key.as_bytes()).unwrap();
        assert_eq!(format!("{k:?}"), "ClientKey(<redacted>)");
        // A key where certificates are expected, and a truncated key.
        let e = certificates(key.as_bytes()).unwrap_err();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let cut = &key[..key.len() / 2];
        let e = private_key(cut.as_bytes()).unwrap_err();
        let body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(body.iter().all(|l| !e.contains(l)), "{e}");
        assert!(e.contains("no END line"), "{e}");
    }
}
