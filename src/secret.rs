//! A wrapper for secret values (API tokens, private keys, broker passwords) that cannot be
//! printed by accident: `Debug` shows `[redacted]`, and there is no `Display`. Its memory
//! is overwritten when it is dropped, so a freed secret does not linger in the heap (core
//! dumps, swap).

use std::fmt;
use zeroize::Zeroize;

/// A secret string. Read it with [`Secret::expose`] only where it is sent.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only to put it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Zeroize for Secret {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Hides the password of a URL such as `amqp://user:pass@host/vhost`, for logs and errors.
///
/// Works on the text, not on a parsed URL: the URLs shown are often the ones that did not
/// parse, and a password may itself hold `/`, `?`, `#` or `@` (base64 passwords do).
/// Everything between the first `:` after the scheme and the last `@` before the host is
/// hidden; with no `@` at all there is no password to hide.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL at all: it may still be `user:password@host`; show nothing of it.
        return if url.contains('@') {
            "[redacted]".to_owned()
        } else {
            url.to_owned()
        };
    };
    // The host part starts after the last `@`: an unescaped `@` in a password would
    // otherwise end the user information too early.
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host_and_path) = (&rest[..at], &rest[at + 1..]);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:[redacted]@{host_and_path}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("00abcSECRET");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(secret.expose(), "00abcSECRET");
    }

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url_password("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:[redacted]@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url_password("amqp://127.0.0.1:5672"),
            "amqp://127.0.0.1:5672"
        );
    }

    #[test]
    fn passwords_are_redacted_even_when_the_url_does_not_parse() {
        // A base64 password with `/`, `+` and `=`, unescaped: not a valid URL.
        for (url, password) in [
            ("amqp://svc:ab/cd+ef==@broker:5672/%2f", "ab/cd+ef=="),
            ("amqps://svc:p@ss/w?rd#x@broker/vhost", "p@ss/w?rd#x"),
            ("amqp://svc:s3cr/et@[::1:5672", "s3cr/et"),
            ("amqp://:only/pw@host", "only/pw"),
        ] {
            let shown = redact_url_password(url);
            assert!(!shown.contains(password), "{url} → {shown}");
            assert!(shown.contains("[redacted]"), "{url} → {shown}");
        }
        assert_eq!(
            redact_url_password("amqp://svc:ab/cd@broker:5672/%2f"),
            "amqp://svc:[redacted]@broker:5672/%2f"
        );
        assert_eq!(redact_url_password("svc:pw/x@broker"), "[redacted]");
    }

    #[test]
    fn a_dropped_secret_is_zeroised() {
        let mut secret = Secret::new("00abcSECRET");
        secret.zeroize();
        assert_eq!(secret.expose(), "");
    }
}
