//! Where Okta is and how the service authenticates to it (an API token or an OAuth 2.0
//! service app), and the client's own limits.

use super::{invalid, is_loopback, read, secret_file, ConfigError};
use crate::okta::auth::{OktaAuth, ServiceApp, SigningKey, DEFAULT_SCOPES};
use crate::okta::OktaClientSettings;
use crate::secret::Secret;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The Okta variables as read; every one optional here.
#[derive(Deserialize)]
struct RawOktaEnv {
    okta_org_url: Option<String>,
    okta_api_token: Option<Secret>,
    okta_api_token_file: Option<PathBuf>,
    okta_client_id: Option<String>,
    okta_private_key: Option<Secret>,
    okta_private_key_file: Option<PathBuf>,
    okta_key_id: Option<String>,
    okta_scopes: Option<String>,
    okta_timeout_secs: Option<u64>,
    okta_max_in_flight: Option<u16>,
    okta_activation_email: Option<String>,
    group_cache_ttl_secs: Option<u64>,
}

/// Where Okta is.
#[derive(Debug, Clone)]
pub enum OktaTarget {
    /// A real org, and how to authenticate to it.
    Org { url: reqwest::Url, auth: OktaAuth },
    /// The built-in fake Okta, started in-process (`run --okta-sim`).
    Simulated,
}

impl OktaTarget {
    /// Whether this is the fake Okta, whose outcomes must say so.
    pub fn is_simulated(&self) -> bool {
        matches!(self, OktaTarget::Simulated)
    }
}

/// Everything the Okta client and the group cache are built from.
#[derive(Debug, Clone)]
pub struct OktaSettings {
    pub target: OktaTarget,
    /// Timeouts, in-flight bound, activation email, dry run (set from `DRY_RUN`).
    pub client: OktaClientSettings,
    /// `GROUP_CACHE_TTL_SECS`: how long a resolved group name stays cached.
    pub group_cache_ttl: Duration,
}

impl OktaSettings {
    pub(super) fn from_vars(
        vars: &[(String, String)],
        okta_sim: bool,
    ) -> Result<Self, ConfigError> {
        let raw: RawOktaEnv = read(vars)?;
        let target = okta_target(&raw, okta_sim)?;
        let mut client = OktaClientSettings::default();
        if let Some(secs) = raw.okta_timeout_secs {
            if secs == 0 {
                return Err(invalid("OKTA_TIMEOUT_SECS", "must be at least 1"));
            }
            client.request_timeout = Duration::from_secs(secs);
        }
        if let Some(max) = raw.okta_max_in_flight {
            if max == 0 {
                return Err(invalid("OKTA_MAX_IN_FLIGHT", "must be at least 1"));
            }
            client.max_in_flight = usize::from(max);
        }
        client.activation_email = activation_email(raw.okta_activation_email.as_deref())?;
        Ok(Self {
            target,
            client,
            group_cache_ttl: Duration::from_secs(raw.group_cache_ttl_secs.unwrap_or(300)),
        })
    }
}

/// `OKTA_ACTIVATION_EMAIL`: `true` (the default, as Okta's own) or `false`.
fn activation_email(value: Option<&str>) -> Result<bool, ConfigError> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(invalid(
            "OKTA_ACTIVATION_EMAIL",
            "must be true (Okta emails users the service activates) or false (orgs whose users need no Okta password)",
        )),
    }
}

fn okta_target(raw: &RawOktaEnv, okta_sim: bool) -> Result<OktaTarget, ConfigError> {
    if okta_sim {
        if raw.okta_org_url.is_some() {
            return Err(invalid(
                "OKTA_ORG_URL",
                "is set, but --okta-sim asks for the built-in fake Okta; unset one of them",
            ));
        }
        return Ok(OktaTarget::Simulated);
    }
    let Some(url_text) = &raw.okta_org_url else {
        return Err(invalid(
            "OKTA_ORG_URL",
            "is required (or run with --okta-sim to use the built-in fake Okta)",
        ));
    };
    let url = reqwest::Url::parse(url_text)
        .map_err(|e| invalid("OKTA_ORG_URL", format!("not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(invalid(
                "OKTA_ORG_URL",
                "http:// is allowed only for loopback hosts; use https://",
            ))
        }
        other => {
            return Err(invalid(
                "OKTA_ORG_URL",
                format!("unsupported scheme {other}://"),
            ))
        }
    }
    if url.host_str().is_none() {
        return Err(invalid("OKTA_ORG_URL", "has no host"));
    }
    let oauth_set: Vec<&str> = [
        ("OKTA_CLIENT_ID", raw.okta_client_id.is_some()),
        ("OKTA_PRIVATE_KEY", raw.okta_private_key.is_some()),
        ("OKTA_PRIVATE_KEY_FILE", raw.okta_private_key_file.is_some()),
        ("OKTA_KEY_ID", raw.okta_key_id.is_some()),
        ("OKTA_SCOPES", raw.okta_scopes.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    let api_token = api_token(raw)?;
    let auth = match (&api_token, oauth_set.is_empty()) {
        (Some(_), false) => {
            return Err(invalid(
                "OKTA_API_TOKEN",
                format!(
                    "is set together with {}: configure either an API token or an OAuth 2.0 service app, not both",
                    oauth_set.join(", ")
                ),
            ))
        }
        (Some(token), true) => OktaAuth::ApiToken(token.clone()),
        (None, false) => OktaAuth::ServiceApp(service_app(raw)?),
        (None, true) => {
            return Err(invalid(
                "OKTA_API_TOKEN",
                "is required, or OKTA_API_TOKEN_FILE (or an OAuth 2.0 service app: OKTA_CLIENT_ID with OKTA_PRIVATE_KEY or OKTA_PRIVATE_KEY_FILE)",
            ))
        }
    };
    Ok(OktaTarget::Org { url, auth })
}

/// The OAuth 2.0 service app from `OKTA_CLIENT_ID`, `OKTA_PRIVATE_KEY` or
/// `OKTA_PRIVATE_KEY_FILE`, `OKTA_KEY_ID` and `OKTA_SCOPES`. The key is checked here by
/// signing once, so a bad key stops start-up instead of failing every event; its text is
/// never part of an error.
fn service_app(raw: &RawOktaEnv) -> Result<ServiceApp, ConfigError> {
    let Some(client_id) = raw.okta_client_id.as_deref().map(str::trim) else {
        return Err(invalid(
            "OKTA_CLIENT_ID",
            "is required for an OAuth 2.0 service app (or set OKTA_API_TOKEN instead)",
        ));
    };
    if !is_visible_ascii(client_id) {
        return Err(invalid(
            "OKTA_CLIENT_ID",
            "must be printable ASCII without spaces",
        ));
    }
    let (variable, pem) = match (&raw.okta_private_key, &raw.okta_private_key_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "OKTA_PRIVATE_KEY",
                "set either OKTA_PRIVATE_KEY or OKTA_PRIVATE_KEY_FILE, not both",
            ))
        }
        (None, None) => {
            return Err(invalid(
                "OKTA_PRIVATE_KEY",
                "is required with OKTA_CLIENT_ID (the PEM inline, or its path in OKTA_PRIVATE_KEY_FILE)",
            ))
        }
        // A PEM squeezed onto one line (compose files, CI variables) carries `\n`.
        (Some(inline), None) if !inline.expose().contains('\n') => (
            "OKTA_PRIVATE_KEY",
            Secret::new(inline.expose().replace("\\n", "\n")),
        ),
        (Some(inline), None) => ("OKTA_PRIVATE_KEY", inline.clone()),
        (None, Some(path)) => (
            "OKTA_PRIVATE_KEY_FILE",
            Secret::new(std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "OKTA_PRIVATE_KEY_FILE",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?),
        ),
    };
    let key = SigningKey::from_pem(&pem).map_err(|e| invalid(variable, e.to_string()))?;
    let key_id = match raw.okta_key_id.as_deref().map(str::trim) {
        Some(kid) if !is_visible_ascii(kid) => {
            return Err(invalid(
                "OKTA_KEY_ID",
                "must be printable ASCII without spaces",
            ))
        }
        kid => kid.map(str::to_owned),
    };
    let scopes: Vec<String> = match &raw.okta_scopes {
        None => DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        Some(text) => text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    // RFC 6749 scope tokens: visible ASCII except `"` and `\`.
    if scopes
        .iter()
        .any(|s| !is_visible_ascii(s) || s.contains(['"', '\\']))
    {
        return Err(invalid(
            "OKTA_SCOPES",
            "must be scope names separated by spaces, such as okta.users.read",
        ));
    }
    Ok(ServiceApp {
        client_id: client_id.to_owned(),
        key,
        key_id,
        scopes,
    })
}

fn is_visible_ascii(value: &str) -> bool {
    !value.is_empty() && value.len() <= 255 && value.bytes().all(|b| b.is_ascii_graphic())
}

/// The Okta API token from `OKTA_API_TOKEN` or `OKTA_API_TOKEN_FILE` (a mounted secret
/// file, so the token is not in the process environment); never both.
fn api_token(raw: &RawOktaEnv) -> Result<Option<Secret>, ConfigError> {
    match (&raw.okta_api_token, &raw.okta_api_token_file) {
        (Some(_), Some(_)) => Err(invalid(
            "OKTA_API_TOKEN_FILE",
            "set either OKTA_API_TOKEN or OKTA_API_TOKEN_FILE, not both",
        )),
        (Some(token), None) => Ok(Some(token.clone())),
        (None, Some(path)) => Ok(Some(secret_file("OKTA_API_TOKEN_FILE", path)?)),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{error, temp_file, vars, OKTA};
    use super::super::Settings;
    use super::*;

    #[test]
    fn activation_email_is_on_unless_turned_off() {
        assert!(activation_email(None).expect("default"));
        assert!(activation_email(Some("TRUE")).expect("true"));
        assert!(!activation_email(Some("false")).expect("false"));
        let error = activation_email(Some("no")).expect_err("refused");
        assert!(
            error.to_string().starts_with("OKTA_ACTIVATION_EMAIL: "),
            "{error}"
        );
    }

    #[test]
    fn http_is_allowed_for_loopback_only() {
        for url in [
            "http://127.0.0.1:8081",
            "http://localhost:1",
            "http://[::1]:9",
        ] {
            let pairs = [("OKTA_ORG_URL", url), ("OKTA_API_TOKEN", "t")];
            assert!(Settings::from_vars(vars(&pairs), false).is_ok(), "{url}");
        }
    }

    #[test]
    fn okta_sim_needs_no_okta_settings_and_refuses_a_real_org_beside_it() {
        let settings = Settings::from_vars(vars(&[]), true).expect("sim needs nothing");
        assert!(matches!(settings.okta.target, OktaTarget::Simulated));
        assert!(error(&OKTA, true).contains("OKTA_ORG_URL"));
    }

    #[cfg(feature = "okta-sim")]
    fn oauth_pairs(pem: &str) -> Vec<(String, String)> {
        vars(&[
            ("OKTA_ORG_URL", "https://acme.okta.com"),
            ("OKTA_CLIENT_ID", "0oa1service"),
            ("OKTA_PRIVATE_KEY", pem),
        ])
    }

    #[cfg(feature = "okta-sim")]
    fn oauth_error(pairs: Vec<(String, String)>) -> String {
        match Settings::from_vars(pairs, false) {
            Ok(_) => panic!("expected a configuration error"),
            Err(e) => e.to_string(),
        }
    }

    #[cfg(feature = "okta-sim")]
    fn key_pair(kind: crate::okta_sim::KeyKind) -> crate::okta_sim::TestKeyPair {
        crate::okta_sim::test_key_pair(kind).expect("key pair")
    }

    #[cfg(feature = "okta-sim")]
    #[test]
    fn a_service_app_is_configured_with_the_four_scopes_by_default() {
        let pair = key_pair(crate::okta_sim::KeyKind::Rsa);
        let settings = Settings::from_vars(oauth_pairs(&pair.private_pem), false).expect("valid");
        let OktaTarget::Org {
            auth: OktaAuth::ServiceApp(app),
            ..
        } = &settings.okta.target
        else {
            panic!("a service app: {settings:?}")
        };
        assert_eq!(app.client_id, "0oa1service");
        assert_eq!(app.key.algorithm_name(), "RS256");
        assert_eq!(app.key_id, None);
        assert_eq!(app.scopes, DEFAULT_SCOPES);
        let printed = format!("{settings:?}");
        let body_line = pair.private_pem.lines().nth(2).expect("a base64 line");
        assert!(!printed.contains(body_line), "{printed}");
    }

    #[cfg(feature = "okta-sim")]
    #[test]
    fn the_key_can_come_from_a_file_or_a_single_line_and_scopes_and_kid_are_read() {
        let pair = key_pair(crate::okta_sim::KeyKind::P256);
        let path = std::env::temp_dir().join(format!("iam-key-{:x}.pem", fastrand::u64(..)));
        std::fs::write(&path, &pair.private_pem).expect("write key");
        let mut pairs = vars(&[
            ("OKTA_ORG_URL", "https://acme.okta.com"),
            ("OKTA_CLIENT_ID", "0oa1service"),
            ("OKTA_KEY_ID", "key-2026"),
            ("OKTA_SCOPES", "okta.users.read, okta.users.manage"),
        ]);
        pairs.push(("OKTA_PRIVATE_KEY_FILE".into(), path.display().to_string()));
        let settings = Settings::from_vars(pairs, false);
        let _ = std::fs::remove_file(&path);
        let Ok(OktaTarget::Org {
            auth: OktaAuth::ServiceApp(app),
            ..
        }) = settings.map(|s| s.okta.target)
        else {
            panic!("a service app")
        };
        assert_eq!(app.key.algorithm_name(), "ES256");
        assert_eq!(app.key_id.as_deref(), Some("key-2026"));
        assert_eq!(app.scopes, ["okta.users.read", "okta.users.manage"]);

        let one_line = pair.private_pem.trim().replace('\n', "\\n");
        assert!(Settings::from_vars(oauth_pairs(&one_line), false).is_ok());
    }

    #[cfg(feature = "okta-sim")]
    #[test]
    fn oauth_mistakes_name_their_variable_and_never_echo_the_key() {
        let pair = key_pair(crate::okta_sim::KeyKind::Rsa);
        let first_line = pair
            .private_pem
            .lines()
            .nth(1)
            .expect("a base64 line")
            .to_owned();
        let secret_line = pair
            .private_pem
            .lines()
            .nth(3)
            .expect("a base64 line")
            .to_owned();
        let broken = pair
            .private_pem
            .replace(&secret_line, &"A".repeat(secret_line.len()));
        type Case<'a> = (Vec<(String, String)>, &'a [&'a str]);
        let cases: Vec<Case> = vec![
            (oauth_pairs("not a key"), &["OKTA_PRIVATE_KEY", "not a PEM"]),
            (
                oauth_pairs(&broken),
                &["OKTA_PRIVATE_KEY", "RSA key of 2048 bits"],
            ),
            (
                oauth_pairs(&pair.public_pem),
                &["OKTA_PRIVATE_KEY", "PUBLIC KEY"],
            ),
            (
                {
                    let mut p = oauth_pairs(&pair.private_pem);
                    p.push(("OKTA_API_TOKEN".into(), "00token".into()));
                    p
                },
                &[
                    "OKTA_API_TOKEN",
                    "OKTA_CLIENT_ID",
                    "OKTA_PRIVATE_KEY",
                    "not both",
                ],
            ),
            (
                vars(&[
                    ("OKTA_ORG_URL", "https://acme.okta.com"),
                    ("OKTA_CLIENT_ID", "0oa1service"),
                ]),
                &["OKTA_PRIVATE_KEY", "is required"],
            ),
            (
                vars(&[
                    ("OKTA_ORG_URL", "https://acme.okta.com"),
                    ("OKTA_PRIVATE_KEY", &pair.private_pem),
                ]),
                &["OKTA_CLIENT_ID", "is required"],
            ),
            (
                {
                    let mut p = oauth_pairs(&pair.private_pem);
                    p.push(("OKTA_PRIVATE_KEY_FILE".into(), "/etc/key.pem".into()));
                    p
                },
                &["OKTA_PRIVATE_KEY_FILE", "not both"],
            ),
            (
                {
                    let mut p = oauth_pairs("x");
                    p.retain(|(k, _)| k != "OKTA_PRIVATE_KEY");
                    p.push((
                        "OKTA_PRIVATE_KEY_FILE".into(),
                        "/nonexistent/key.pem".into(),
                    ));
                    p
                },
                &["OKTA_PRIVATE_KEY_FILE", "cannot read /nonexistent/key.pem"],
            ),
            (
                {
                    let mut p = oauth_pairs(&pair.private_pem);
                    p.push(("OKTA_SCOPES".into(), "okta.users.read \"x\"".into()));
                    p
                },
                &["OKTA_SCOPES"],
            ),
            (
                {
                    let mut p = oauth_pairs(&pair.private_pem);
                    p.push(("OKTA_KEY_ID".into(), "a key".into()));
                    p
                },
                &["OKTA_KEY_ID"],
            ),
        ];
        for (pairs, expected) in cases {
            let message = oauth_error(pairs);
            for needle in expected {
                assert!(message.contains(needle), "{needle:?} not in {message}");
            }
            assert!(!message.contains(&secret_line), "the key leaked: {message}");
            assert!(!message.contains(&first_line), "the key leaked: {message}");
        }
    }

    #[test]
    fn the_api_token_can_come_from_a_file_and_never_shows_in_errors() {
        let file = temp_file("00token-from-file\n");
        let pairs = vec![
            (
                "OKTA_ORG_URL".to_owned(),
                "https://acme.okta.com".to_owned(),
            ),
            ("OKTA_API_TOKEN_FILE".to_owned(), file.display().to_string()),
        ];
        let settings = Settings::from_vars(pairs.clone(), false).expect("valid");
        let OktaTarget::Org {
            auth: OktaAuth::ApiToken(token),
            ..
        } = &settings.okta.target
        else {
            panic!("an API token")
        };
        assert_eq!(token.expose(), "00token-from-file");
        assert!(!format!("{settings:?}").contains("00token-from-file"));

        let mut both = pairs.clone();
        both.push(("OKTA_API_TOKEN".into(), "00other".into()));
        let message = Settings::from_vars(both, false)
            .expect_err("both")
            .to_string();
        assert!(message.contains("OKTA_API_TOKEN_FILE"), "{message}");

        std::fs::write(&file, "00line-one\n00line-two\n").expect("rewrite");
        let message = Settings::from_vars(pairs.clone(), false)
            .expect_err("two lines")
            .to_string();
        assert!(message.contains("OKTA_API_TOKEN_FILE"), "{message}");
        assert!(!message.contains("00line"), "{message}");
        std::fs::write(&file, "\n").expect("rewrite");
        let message = Settings::from_vars(pairs.clone(), false)
            .expect_err("empty")
            .to_string();
        assert!(message.contains("is empty"), "{message}");
        let _ = std::fs::remove_file(&file);
        let message = Settings::from_vars(pairs, false)
            .expect_err("missing")
            .to_string();
        assert!(
            message.contains("OKTA_API_TOKEN_FILE: cannot read"),
            "{message}"
        );
    }
}
