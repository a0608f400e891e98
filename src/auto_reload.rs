//! `--config.auto-reload-interval` (SPEC "Command line"): re-read the config file and the secret
//! and token files it names this often, and reload when any content changed, as Prometheus 3
//! does. Kubernetes updates a mounted ConfigMap or Secret under a running pod; this applies it
//! without a shell in the image to send SIGHUP.
//!
//! What is compared is a [`Fingerprint`]: a SHA-256 over the config file's bytes and, for every
//! app, the bytes of its `secret_key_file`, `callback_token_file` and `tls_*_file`s (a CA
//! rotated in a mounted Secret applies like a rotated key). It is taken before each
//! reload reads the files (so a change made while a reload runs is seen at the next tick, never
//! lost) and kept only when that reload succeeded: a bad config is retried every interval, and
//! `timattr_config_last_reload_successful` stays 0 until it is fixed.
//!
//! Reading can block (a FIFO, a hung NFS mount), so it runs on the blocking pool under
//! [`READ_TIMEOUT`]: a hung read costs one blocking thread, never the poll thread.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::{AppConfig, Config, SecretSource};

/// How long a fingerprint's (or a reload's) file reads may take before the attempt is given
/// up; the config, the secret and token files are small, so only a hung file system is slower.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the watcher compares between two ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

/// The files a config's content depends on besides the config file itself, in config order.
pub fn named_files(config: &Config) -> Vec<PathBuf> {
    fn file(source: Option<&SecretSource>) -> Option<PathBuf> {
        match source {
            Some(SecretSource::File(path)) => Some(path.clone()),
            _ => None,
        }
    }
    config
        .apps
        .iter()
        .flat_map(|app: &AppConfig| {
            [
                file(Some(&app.secret_source)),
                file(app.callback_token_source.as_ref()),
                app.tls_files.ca_file.clone(),
                app.tls_files.cert_file.clone(),
                app.tls_files.key_file.clone(),
            ]
        })
        .flatten()
        .collect()
}

/// The fingerprint of `config_file` and `files`, read now (blocking). A file that cannot be
/// read adds its error kind instead of its bytes, so a file that vanishes or comes back also
/// counts as a change, and the reload it causes reports the error.
pub fn fingerprint(config_file: &Path, files: &[PathBuf]) -> Fingerprint {
    let mut hash = Sha256::new();
    for path in std::iter::once(config_file).chain(files.iter().map(PathBuf::as_path)) {
        // Lengths frame each part, so moving bytes from one file to the next changes the hash.
        hash.update((path.as_os_str().len() as u64).to_be_bytes());
        hash.update(path.as_os_str().as_encoded_bytes());
        match std::fs::read(path) {
            Ok(bytes) => {
                hash.update([0]);
                hash.update((bytes.len() as u64).to_be_bytes());
                hash.update(&bytes);
            }
            Err(e) => {
                hash.update([1]);
                hash.update(format!("{:?}", e.kind()).as_bytes());
            }
        }
    }
    Fingerprint(hash.finalize().into())
}

/// [`fingerprint`] on the blocking pool, `None` when it did not finish within
/// [`READ_TIMEOUT`].
pub async fn fingerprint_off_thread(
    config_file: PathBuf,
    files: Vec<PathBuf>,
) -> Option<Fingerprint> {
    let read = tokio::task::spawn_blocking(move || fingerprint(&config_file, &files));
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(fp)) => Some(fp),
        _ => None,
    }
}

/// Parses the flag's value: a Prometheus duration.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

/// The watch interval, `None` for `0s` (the default: off).
pub fn enabled(interval: Duration) -> Option<Duration> {
    (!interval.is_zero()).then_some(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_named_files_content_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("timattr.yml");
        let key = dir.path().join("key");
        std::fs::write(&cfg, "a").unwrap();
        std::fs::write(&key, "k1\n").unwrap();
        let files = vec![key.clone()];
        let first = fingerprint(&cfg, &files);
        assert_eq!(
            first,
            fingerprint(&cfg, &files),
            "stable while nothing changes"
        );
        std::fs::write(&key, "k2\n").unwrap();
        let rotated = fingerprint(&cfg, &files);
        assert_ne!(first, rotated, "a rotated key");
        std::fs::write(&cfg, "b").unwrap();
        assert_ne!(rotated, fingerprint(&cfg, &files), "a changed config");
        std::fs::remove_file(&key).unwrap();
        let gone = fingerprint(&cfg, &files);
        std::fs::write(&key, "").unwrap();
        assert_ne!(
            gone,
            fingerprint(&cfg, &files),
            "a missing file is not an empty one"
        );
    }

    #[test]
    fn bytes_moved_between_files_change_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c");
        let key = dir.path().join("k");
        std::fs::write(&cfg, "ab").unwrap();
        std::fs::write(&key, "c").unwrap();
        let before = fingerprint(&cfg, std::slice::from_ref(&key));
        std::fs::write(&cfg, "a").unwrap();
        std::fs::write(&key, "bc").unwrap();
        assert_ne!(before, fingerprint(&cfg, std::slice::from_ref(&key)));
    }

    #[test]
    fn interval_zero_is_off_and_bad_values_are_errors() {
        assert_eq!(parse_interval("0s").map(enabled), Ok(None));
        assert_eq!(
            parse_interval("30s").map(enabled),
            Ok(Some(Duration::from_secs(30)))
        );
        assert!(parse_interval("soon").is_err());
        assert!(parse_interval("-1s").is_err());
    }
}
