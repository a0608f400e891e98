//! Secrets: the app's SecretKey and the UserSigs made from it.
//!
//! Both are newtypes whose `Debug` and `Display` print `<redacted>`, so a secret can travel
//! through structs that derive `Debug`, error values and `tracing` fields without ever being
//! written out. The only way to the bytes is the explicitly named `expose()`.

use std::fmt;

/// The console SecretKey of an app. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// Wraps a key as read from a file or an environment variable, trimming the surrounding
    /// whitespace (a trailing newline) that such sources nearly always carry.
    pub fn new(raw: impl Into<String>) -> Self {
        let raw = raw.into();
        let trimmed = raw.trim();
        if trimmed.len() == raw.len() {
            SecretKey(raw)
        } else {
            SecretKey(trimmed.to_owned())
        }
    }

    /// The key's bytes, for the HMAC and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A generated UserSig: a bearer credential for the app admin account. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct UserSig(String);

impl UserSig {
    pub fn new(sig: String) -> Self {
        UserSig(sig)
    }

    /// The UserSig as it goes into the query string, and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserSig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserSig(<redacted>)")
    }
}

impl fmt::Display for UserSig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Replaces the value of the `usersig` query parameter in a URL (or any text holding one) with
/// `<redacted>`, for logs and error messages.
pub fn redact_usersig(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("usersig=") {
        let (head, tail) = rest.split_at(pos + "usersig=".len());
        out.push_str(head);
        out.push_str("<redacted>");
        let end = tail
            .find(|c: char| c == '&' || c == '#' || c.is_whitespace() || c == '"' || c == ')')
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

    #[test]
    fn secret_key_never_prints() {
        let key = SecretKey::new(KEY);
        let wrapped = Some(vec![key.clone()]);
        for rendered in [
            format!("{key}"),
            format!("{key:?}"),
            format!("{key:#?}"),
            format!("{wrapped:?}"),
        ] {
            assert!(!rendered.contains(KEY), "leaked in {rendered}");
            assert!(rendered.contains("<redacted>"));
        }
        assert_eq!(key.expose(), KEY);
    }

    #[test]
    fn usersig_never_prints() {
        let sig = UserSig::new("eJyrVgrxCdYrSy1SslIy0jNQ0gHz".into());
        assert!(!format!("{sig:?} {sig}").contains("eJyr"));
        assert_eq!(sig.expose(), "eJyrVgrxCdYrSy1SslIy0jNQ0gHz");
    }

    #[test]
    fn key_is_trimmed() {
        assert_eq!(SecretKey::new("  abc\n").expose(), "abc");
        assert_eq!(SecretKey::new("abc").expose(), "abc");
        assert!(SecretKey::new("\n").is_empty());
    }

    #[test]
    fn redacts_usersig_in_urls() {
        let url = "https://x/v4/a/b?sdkappid=1&identifier=admin&usersig=eJy*-_abc&random=5&contenttype=json";
        assert_eq!(
            redact_usersig(url),
            "https://x/v4/a/b?sdkappid=1&identifier=admin&usersig=<redacted>&random=5&contenttype=json"
        );
        assert_eq!(redact_usersig("usersig=abc"), "usersig=<redacted>");
        assert_eq!(redact_usersig("no sig here"), "no sig here");
        assert_eq!(
            redact_usersig("a usersig=1 b usersig=2"),
            "a usersig=<redacted> b usersig=<redacted>"
        );
    }
}
