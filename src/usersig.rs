//! UserSig (TLSSigAPIv2): generation for the client and verification for the fake API,
//! byte for byte as `reference/tencent-chat-rest-api.md` describes.
//!
//! Written by hand because no maintained Rust crate implements Tencent's format; the generic
//! parts (HMAC-SHA256, zlib, base64) come from crates.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::io::{Read, Write};

use crate::secret::{SecretKey, UserSig};

/// A decoded UserSig is a few hundred bytes; refuse to inflate more than this, so a hostile
/// UserSig (a zip bomb in a query string) cannot exhaust the fake's memory.
const MAX_DOCUMENT_BYTES: u64 = 64 * 1024;

/// The signed JSON document inside a UserSig.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    #[serde(rename = "TLS.ver")]
    pub ver: String,
    #[serde(rename = "TLS.identifier")]
    pub identifier: String,
    #[serde(rename = "TLS.sdkappid")]
    pub sdkappid: u64,
    #[serde(rename = "TLS.expire")]
    pub expire: u64,
    #[serde(rename = "TLS.time")]
    pub time: u64,
    #[serde(rename = "TLS.sig")]
    pub sig: String,
}

impl Document {
    /// `TLS.time + TLS.expire`: the Unix second after which the UserSig is rejected.
    pub fn expires_at(&self) -> u64 {
        self.time.saturating_add(self.expire)
    }
}

/// Why a UserSig was rejected, with the `ErrorCode` the real API answers for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("UserSig is empty")]
    Empty,
    #[error("UserSig cannot be decoded: {0}")]
    Malformed(&'static str),
    #[error("UserSig expired at {expired_at}")]
    Expired { expired_at: u64 },
    #[error("UserSig signature does not match the key")]
    BadSignature,
    #[error("identifier differs from the one in the UserSig")]
    IdentifierMismatch,
    #[error("SDKAppID differs from the one in the UserSig")]
    SdkAppIdMismatch,
}

impl VerifyError {
    /// The common error code Tencent answers with for this failure.
    pub fn error_code(&self) -> i64 {
        match self {
            VerifyError::Empty => 70002,
            VerifyError::Malformed(_) => 70003,
            VerifyError::Expired { .. } => 70001,
            VerifyError::BadSignature => 70009,
            VerifyError::IdentifierMismatch => 70013,
            VerifyError::SdkAppIdMismatch => 70014,
        }
    }
}

/// The exact string that is HMAC'd.
pub fn hmac_content(identifier: &str, sdkappid: u64, time: u64, expire: u64) -> String {
    format!(
        "TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{time}\nTLS.expire:{expire}\n"
    )
}

/// `TLS.sig`: standard base64 of HMAC-SHA256(key, content).
pub fn signature(
    key: &SecretKey,
    identifier: &str,
    sdkappid: u64,
    time: u64,
    expire: u64,
) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(hmac_content(identifier, sdkappid, time, expire).as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Generates a UserSig valid from `time` (Unix seconds) for `expire` seconds.
pub fn generate(
    key: &SecretKey,
    sdkappid: u64,
    identifier: &str,
    time: u64,
    expire: u64,
) -> UserSig {
    let doc = Document {
        ver: "2.0".to_owned(),
        identifier: identifier.to_owned(),
        sdkappid,
        expire,
        time,
        sig: signature(key, identifier, sdkappid, time, expire),
    };
    let json = serde_json::to_vec(&doc).expect("a struct of strings and integers serializes");
    let mut z = ZlibEncoder::new(Vec::with_capacity(json.len()), Compression::default());
    z.write_all(&json).expect("writing to a Vec cannot fail");
    let compressed = z
        .finish()
        .expect("finishing a zlib stream into a Vec cannot fail");
    UserSig::new(to_url_alphabet(STANDARD.encode(compressed)))
}

fn to_url_alphabet(b64: String) -> String {
    b64.chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            c => c,
        })
        .collect()
}

/// Reverses the encoding: base64 with Tencent's alphabet, zlib, JSON. Does not check the HMAC.
pub fn decode(usersig: &str) -> Result<Document, VerifyError> {
    if usersig.is_empty() {
        return Err(VerifyError::Empty);
    }
    let b64: String = usersig
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            c => c,
        })
        .collect();
    let compressed = STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| VerifyError::Malformed("not base64"))?;
    let mut json = Vec::new();
    ZlibDecoder::new(compressed.as_slice())
        .take(MAX_DOCUMENT_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|_| VerifyError::Malformed("not a zlib stream"))?;
    if json.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(VerifyError::Malformed("document too large"));
    }
    serde_json::from_slice(&json).map_err(|_| VerifyError::Malformed("not a UserSig document"))
}

/// Verifies a UserSig the way the API does: decode, identity, expiry, then the HMAC.
pub fn verify(
    usersig: &str,
    key: &SecretKey,
    sdkappid: u64,
    identifier: &str,
    now: u64,
) -> Result<Document, VerifyError> {
    let doc = decode(usersig)?;
    if doc.sdkappid != sdkappid {
        return Err(VerifyError::SdkAppIdMismatch);
    }
    if doc.identifier != identifier {
        return Err(VerifyError::IdentifierMismatch);
    }
    if now > doc.expires_at() {
        return Err(VerifyError::Expired {
            expired_at: doc.expires_at(),
        });
    }
    let expected = signature(key, &doc.identifier, doc.sdkappid, doc.time, doc.expire);
    // Compare the MACs in constant time: the fake is a test tool, but this is the verifier
    // the project documents, and it should not teach a timing leak.
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(hmac_content(&doc.identifier, doc.sdkappid, doc.time, doc.expire).as_bytes());
    let given = STANDARD
        .decode(doc.sig.as_bytes())
        .map_err(|_| VerifyError::BadSignature)?;
    mac.verify_slice(&given)
        .map_err(|_| VerifyError::BadSignature)?;
    debug_assert_eq!(expected, doc.sig);
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Vectors {
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        sdkappid: u64,
        key: String,
        identifier: String,
        expire: u64,
        time: u64,
        hmac_content: String,
        signed_document: Document,
        usersig: String,
    }

    fn vectors() -> Vec<Case> {
        let text = include_str!("../tests/data/usersig.json");
        serde_json::from_str::<Vectors>(text)
            .expect("vectors parse")
            .cases
    }

    #[test]
    fn reproduces_every_official_vector() {
        let cases = vectors();
        assert!(cases.len() >= 4);
        for c in cases {
            let key = SecretKey::new(c.key.clone());
            assert_eq!(
                hmac_content(&c.identifier, c.sdkappid, c.time, c.expire),
                c.hmac_content
            );
            assert_eq!(
                signature(&key, &c.identifier, c.sdkappid, c.time, c.expire),
                c.signed_document.sig,
                "{}",
                c.identifier
            );
            let ours = generate(&key, c.sdkappid, &c.identifier, c.time, c.expire);
            assert_eq!(decode(ours.expose()).unwrap(), c.signed_document);
            // The official library's own UserSig decodes and verifies with our verifier.
            assert_eq!(decode(&c.usersig).unwrap(), c.signed_document);
            let now = c.time + 1;
            verify(&c.usersig, &key, c.sdkappid, &c.identifier, now).unwrap();
            verify(ours.expose(), &key, c.sdkappid, &c.identifier, now).unwrap();
        }
    }

    #[test]
    fn published_vector() {
        let key =
            SecretKey::new("5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e");
        assert_eq!(
            signature(&key, "0", 1_400_000_000, 1_569_910_200, 15_552_000),
            "CpjuBdQs9ZwnuGAJR8onoOeI9fweX2vIMMY94iOJWJY="
        );
    }

    #[test]
    fn rejections_carry_the_right_codes() {
        let key = SecretKey::new("k1");
        let sig = generate(&key, 1400000000, "admin", 1000, 100);
        let s = sig.expose();
        assert_eq!(
            verify(s, &key, 1400000000, "admin", 1100).unwrap().time,
            1000
        );
        let err = |r: Result<Document, VerifyError>| r.unwrap_err().error_code();
        assert_eq!(err(verify(s, &key, 1400000000, "admin", 1101)), 70001);
        assert_eq!(
            err(verify(s, &SecretKey::new("k2"), 1400000000, "admin", 1050)),
            70009
        );
        assert_eq!(err(verify(s, &key, 1400000000, "other", 1050)), 70013);
        assert_eq!(err(verify(s, &key, 1400000001, "admin", 1050)), 70014);
        assert_eq!(err(verify("", &key, 1400000000, "admin", 1050)), 70002);
        assert_eq!(err(verify("eJy!!", &key, 1400000000, "admin", 1050)), 70003);
        // A tampered document: valid encoding, wrong MAC for its fields.
        let mut doc = decode(s).unwrap();
        doc.expire = 1_000_000;
        let json = serde_json::to_vec(&doc).unwrap();
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&json).unwrap();
        let tampered = to_url_alphabet(STANDARD.encode(z.finish().unwrap()));
        assert_eq!(
            err(verify(&tampered, &key, 1400000000, "admin", 1050)),
            70009
        );
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(s in ".{0,200}") {
            let _ = decode(&s);
        }

        #[test]
        fn roundtrip(key in "[ -~]{1,64}", id in "[a-zA-Z0-9_@-]{1,32}", app in 1u64..5_000_000_000, t in 0u64..4_000_000_000, e in 1u64..100_000_000) {
            let key = SecretKey::new(key);
            if key.is_empty() { return Ok(()); }
            let sig = generate(&key, app, &id, t, e);
            let doc = verify(sig.expose(), &key, app, &id, t).unwrap();
            proptest::prop_assert_eq!(doc.expires_at(), t + e);
        }
    }
}
