//! The broker's settings: where it is, how the connection is secured, the names of the
//! service's objects on it, and how publishing waits for the broker.

use super::{invalid, is_loopback, read, secret_file, set_only, ConfigError};
use crate::amqp::topology::{QueueType, TopologyNames};
use crate::amqp::BrokerSettings;
use crate::secret::Secret;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The broker variables as read; checked in [`BrokerSettings::from_vars`]. Apart from
/// the service's other variables so that commands needing only the broker ignore them.
#[derive(Deserialize, Default)]
struct RawBrokerEnv {
    amqp_url: Option<Secret>,
    input_exchange: Option<String>,
    work_queue: Option<String>,
    results_exchange: Option<String>,
    dead_letter_exchange: Option<String>,
    dead_letter_queue: Option<String>,
    queue_type: Option<String>,
    amqp_password_file: Option<PathBuf>,
    amqp_ca_file: Option<PathBuf>,
    amqp_allow_plaintext: Option<bool>,
}

/// Built here rather than in `crate::amqp`: the adapter takes checked values and never
/// reads the environment's variables itself (but for `AMQP_CA_FILE`, see
/// `crate::amqp::connect`).
impl BrokerSettings {
    /// Reads the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that is wrong.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the broker settings from name/value pairs; other variables are ignored.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that is wrong.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let raw: RawBrokerEnv =
            envy::from_iter(set_only(vars)).map_err(|e| ConfigError::Env(e.to_string()))?;

        let amqp_url = raw
            .amqp_url
            .unwrap_or_else(|| Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"));
        let scheme_ok =
            amqp_url.expose().starts_with("amqp://") || amqp_url.expose().starts_with("amqps://");
        if !scheme_ok {
            return Err(invalid("AMQP_URL", "must start with amqp:// or amqps://"));
        }
        let amqp_url = broker_url(
            amqp_url,
            raw.amqp_password_file.as_deref(),
            raw.amqp_allow_plaintext.unwrap_or(false),
        )?;
        let ca_file = broker_ca_file(raw.amqp_ca_file, &amqp_url)?;

        let queue_type = match raw.queue_type.as_deref() {
            None => QueueType::Quorum,
            Some(value) => QueueType::parse(value).ok_or_else(|| {
                invalid(
                    "QUEUE_TYPE",
                    format!("unknown queue type {value:?} (use quorum or classic)"),
                )
            })?,
        };
        let topology = TopologyNames {
            input_exchange: name(raw.input_exchange, "INPUT_EXCHANGE", "hr.events")?,
            work_queue: name(raw.work_queue, "WORK_QUEUE", "iam-provisioner")?,
            results_exchange: name(raw.results_exchange, "RESULTS_EXCHANGE", "identity.results")?,
            dead_letter_exchange: name(
                raw.dead_letter_exchange,
                "DEAD_LETTER_EXCHANGE",
                "iam-provisioner.dlx",
            )?,
            dead_letter_queue: name(
                raw.dead_letter_queue,
                "DEAD_LETTER_QUEUE",
                "iam-provisioner.dlq",
            )?,
            queue_type,
        };

        Ok(Self {
            amqp_url,
            topology,
            ca_file,
        })
    }
}

/// What the service's own broker side needs beyond [`BrokerSettings`].
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// Broker URL; holds the broker password, hence secret.
    pub url: Secret,
    pub topology: TopologyNames,
    /// `PUBLISH_CONFIRM_TIMEOUT_MS`: how long a publish waits for the broker's confirm
    /// (not counting time the broker blocks the connection) before the session ends.
    pub publish_confirm_timeout: Duration,
    /// `MAX_MESSAGE_BYTES`: largest message body accepted, in bytes; a larger one is
    /// dead-lettered unread.
    pub max_message_bytes: usize,
}

#[derive(Deserialize)]
struct RawPublishEnv {
    publish_confirm_timeout_ms: Option<u64>,
    max_message_bytes: Option<usize>,
}

impl AmqpSettings {
    pub(super) fn from_vars(vars: &[(String, String)]) -> Result<Self, ConfigError> {
        let BrokerSettings {
            amqp_url, topology, ..
        } = BrokerSettings::from_vars(vars.to_vec())?;
        let raw: RawPublishEnv = read(vars)?;
        Ok(Self {
            url: amqp_url,
            topology,
            publish_confirm_timeout: match raw.publish_confirm_timeout_ms {
                Some(0) => {
                    return Err(invalid(
                        "PUBLISH_CONFIRM_TIMEOUT_MS",
                        "must be at least 1 (milliseconds)",
                    ))
                }
                Some(ms) => Duration::from_millis(ms),
                None => crate::amqp::publisher::DEFAULT_CONFIRM_TIMEOUT,
            },
            max_message_bytes: max_message_bytes(raw.max_message_bytes)?,
        })
    }
}

/// `MAX_MESSAGE_BYTES`: 64 KiB by default; HR events are well under 4 KiB.
fn max_message_bytes(value: Option<usize>) -> Result<usize, ConfigError> {
    match value {
        None => Ok(65_536),
        Some(n) if n < 1024 => Err(invalid(
            "MAX_MESSAGE_BYTES",
            "must be at least 1024 (an HR event needs a few hundred bytes)",
        )),
        Some(n) => Ok(n),
    }
}

fn name(
    value: Option<String>,
    variable: &'static str,
    default: &str,
) -> Result<String, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_owned());
    if value.len() > 255 || value.chars().any(char::is_control) {
        return Err(invalid(
            variable,
            "must be at most 255 bytes without control characters",
        ));
    }
    if value.starts_with("amq.") {
        return Err(invalid(
            variable,
            "names starting with amq. are reserved by RabbitMQ",
        ));
    }
    Ok(value)
}

/// `run --okta-sim` refuses a broker that is not on this machine: the fake Okta would
/// answer for real HR events taken off a shared queue, and they would be acknowledged as
/// done. `--okta-sim-allow-remote-broker` skips this check.
///
/// # Errors
/// [`ConfigError`] naming `AMQP_URL` and the flag.
pub fn refuse_remote_broker_for_sim(amqp_url: &Secret) -> Result<(), ConfigError> {
    let loopback = url::Url::parse(amqp_url.expose())
        .map(|url| is_loopback(&url))
        .unwrap_or(false);
    if loopback {
        return Ok(());
    }
    Err(invalid(
        "AMQP_URL",
        "is not a loopback broker, and --okta-sim would consume its events against the FAKE Okta; use a local broker, or add --okta-sim-allow-remote-broker if this broker is a test one",
    ))
}

/// Checks `AMQP_URL` and applies `AMQP_PASSWORD_FILE` and `AMQP_ALLOW_PLAINTEXT`. The URL
/// must parse here: a password with an unescaped `/` or `@` would otherwise fail later, in
/// the AMQP library, with an error that may repeat the URL. No error shows the URL.
fn broker_url(
    amqp_url: Secret,
    password_file: Option<&std::path::Path>,
    allow_plaintext: bool,
) -> Result<Secret, ConfigError> {
    let mut url = url::Url::parse(amqp_url.expose()).map_err(|e| {
        invalid(
            "AMQP_URL",
            format!(
                "not a valid URL ({e}); percent-encode / ? # @ : in the password, or put it in AMQP_PASSWORD_FILE"
            ),
        )
    })?;
    let host = match url.host() {
        Some(host) => host.to_string(),
        None => return Err(invalid("AMQP_URL", "has no host")),
    };
    if url.scheme() == "amqp" && !allow_plaintext && !is_loopback(&url) {
        return Err(invalid(
            "AMQP_URL",
            format!(
                "plaintext amqp:// to {host}, which is not loopback: use amqps://, or set AMQP_ALLOW_PLAINTEXT=true if the network is trusted"
            ),
        ));
    }
    let Some(path) = password_file else {
        return Ok(amqp_url);
    };
    let password = secret_file("AMQP_PASSWORD_FILE", path)?;
    if url.username().is_empty() {
        return Err(invalid(
            "AMQP_PASSWORD_FILE",
            "AMQP_URL names no user for the password (amqps://USER@host/vhost)",
        ));
    }
    // `set_password` percent-encodes what a URL cannot carry as it is.
    url.set_password(Some(password.expose()))
        .map_err(|()| invalid("AMQP_PASSWORD_FILE", "AMQP_URL cannot carry a password"))?;
    let with_password = Secret::new(url.as_str());
    // The parsed URL held the password; overwrite it before it is freed.
    let mut text: String = url.into();
    zeroize::Zeroize::zeroize(&mut text);
    Ok(with_password)
}

/// `AMQP_CA_FILE`: PEM certificates trusted as roots for the broker's certificate, and for
/// nothing else (Okta's connections keep the system's roots). Only meaningful with
/// `amqps://`.
fn broker_ca_file(
    path: Option<PathBuf>,
    amqp_url: &Secret,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some(path) = path else {
        return Ok(None);
    };
    if !amqp_url.expose().starts_with("amqps://") {
        return Err(invalid(
            "AMQP_CA_FILE",
            "is set, but AMQP_URL is not amqps://; the CA would never be used",
        ));
    }
    let pem = std::fs::read_to_string(&path).map_err(|e| {
        invalid(
            "AMQP_CA_FILE",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid(
            "AMQP_CA_FILE",
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{error, temp_file, vars, OKTA};
    use super::super::Settings;
    use super::*;

    #[test]
    fn the_publish_confirm_timeout_is_bounded_and_never_zero() {
        let settings = Settings::from_vars(vars(&OKTA), false).expect("valid");
        assert_eq!(
            settings.amqp.publish_confirm_timeout,
            Duration::from_secs(30)
        );
        let mut pairs = OKTA.to_vec();
        pairs.push(("PUBLISH_CONFIRM_TIMEOUT_MS", "1500"));
        let settings = Settings::from_vars(vars(&pairs), false).expect("valid");
        assert_eq!(
            settings.amqp.publish_confirm_timeout,
            Duration::from_millis(1500)
        );
        pairs.pop();
        pairs.push(("PUBLISH_CONFIRM_TIMEOUT_MS", "0"));
        assert!(error(&pairs, false).contains("PUBLISH_CONFIRM_TIMEOUT_MS"));
    }

    #[test]
    fn max_message_bytes_defaults_to_64_kib_and_has_a_floor() {
        let settings = Settings::from_vars(vars(&OKTA), false).expect("valid");
        assert_eq!(settings.amqp.max_message_bytes, 65_536);
        let mut pairs = OKTA.to_vec();
        pairs.push(("MAX_MESSAGE_BYTES", "1000"));
        assert!(error(&pairs, false).contains("MAX_MESSAGE_BYTES"));
        pairs.pop();
        pairs.push(("MAX_MESSAGE_BYTES", "2048"));
        let settings = Settings::from_vars(vars(&pairs), false).expect("valid");
        assert_eq!(settings.amqp.max_message_bytes, 2048);
    }

    #[test]
    fn the_broker_settings_need_nothing_of_okta_and_ignore_other_mistakes() {
        let settings = BrokerSettings::from_vars(vars(&[
            ("WORK_QUEUE", "hr-sync"),
            ("DEAD_LETTER_QUEUE", ""),
            ("CONCURRENCY", "lots"),
            ("OFFBOARDING_MODE", "archive"),
        ]))
        .expect("only broker variables are read");
        assert_eq!(settings.topology.work_queue, "hr-sync");
        assert_eq!(settings.topology.dead_letter_queue, "iam-provisioner.dlq");
        assert_eq!(settings.topology.replay_exchange(), "hr-sync.replay");
        for (pair, variable) in [
            (("AMQP_URL", "http://broker"), "AMQP_URL"),
            (("QUEUE_TYPE", "stream"), "QUEUE_TYPE"),
            (("DEAD_LETTER_QUEUE", "amq.mine"), "DEAD_LETTER_QUEUE"),
        ] {
            let message = match BrokerSettings::from_vars(vars(&[pair])) {
                Ok(_) => panic!("{pair:?} must be refused"),
                Err(e) => e.to_string(),
            };
            assert!(message.contains(variable), "{pair:?} → {message}");
        }
    }

    #[test]
    fn the_broker_password_file_replaces_the_url_password_encoded() {
        let file = temp_file("ab/cd+e@f==\n");
        let settings = BrokerSettings::from_vars(vars(&[
            (
                "AMQP_URL",
                "amqps://svc:placeholder@broker.example:5671/%2f",
            ),
            ("AMQP_PASSWORD_FILE", &file.display().to_string()),
        ]))
        .expect("valid");
        let _ = std::fs::remove_file(&file);
        let url = url::Url::parse(settings.amqp_url.expose()).expect("still a URL");
        assert_eq!(url.username(), "svc");
        assert_eq!(url.host_str(), Some("broker.example"));
        assert_eq!(url.path(), "/%2f");
        let password = url.password().expect("a password");
        let decoded: String = url::form_urlencoded::parse(format!("p={password}").as_bytes())
            .map(|(_, v)| v.into_owned())
            .collect();
        assert!(
            password.contains("%2F") && password.contains("%40"),
            "{password}"
        );
        assert!(decoded.starts_with("ab/cd"), "{decoded}");
        assert!(!format!("{settings:?}").contains("ab/cd"));

        let message = BrokerSettings::from_vars(vars(&[
            ("AMQP_URL", "amqps://broker.example/%2f"),
            ("AMQP_PASSWORD_FILE", "/nonexistent/pw"),
        ]))
        .expect_err("missing file")
        .to_string();
        assert!(message.contains("AMQP_PASSWORD_FILE"), "{message}");
    }

    #[test]
    fn an_unparsable_broker_url_is_refused_without_showing_it() {
        let message = BrokerSettings::from_vars(vars(&[(
            "AMQP_URL",
            "amqps://svc:s3cr/et+pw@broker.example:5671/%2f",
        )]))
        .expect_err("a / in the password breaks the URL")
        .to_string();
        assert!(message.starts_with("AMQP_URL:"), "{message}");
        assert!(!message.contains("s3cr"), "{message}");
        assert!(!message.contains("et+pw"), "{message}");
    }

    #[test]
    fn plaintext_amqp_beyond_loopback_needs_an_opt_in() {
        let refused = |url: &str, extra: &[(&str, &str)]| {
            let mut pairs = vec![("AMQP_URL", url)];
            pairs.extend_from_slice(extra);
            BrokerSettings::from_vars(vars(&pairs))
                .err()
                .map(|e| e.to_string())
        };
        let message = refused("amqp://svc:pw@rabbitmq.messaging:5672/%2f", &[]).expect("refused");
        assert!(message.contains("AMQP_URL") && message.contains("AMQP_ALLOW_PLAINTEXT"));
        assert!(!message.contains("pw@"), "{message}");
        assert_eq!(message.lines().count(), 1);
        for url in [
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqp://guest:guest@localhost:5672/%2f",
            "amqp://guest:guest@[::1]:5672/%2f",
            "amqps://svc:pw@rabbitmq.messaging:5671/%2f",
        ] {
            assert_eq!(refused(url, &[]), None, "{url}");
        }
        assert_eq!(
            refused(
                "amqp://svc:pw@rabbitmq.messaging:5672/%2f",
                &[("AMQP_ALLOW_PLAINTEXT", "true")]
            ),
            None
        );
        let message = refused(
            "amqp://guest:guest@127.0.0.1/%2f",
            &[("AMQP_ALLOW_PLAINTEXT", "yes please")],
        )
        .expect("not a boolean");
        assert!(
            message.contains("amqp_allow_plaintext") || message.contains("AMQP_ALLOW_PLAINTEXT"),
            "{message}"
        );
    }

    #[test]
    fn the_broker_ca_file_is_checked() {
        let cert = temp_file("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
        let not_pem = temp_file("hello");
        let ca = |url: &str, path: &PathBuf| {
            BrokerSettings::from_vars(vars(&[
                ("AMQP_URL", url),
                ("AMQP_CA_FILE", &path.display().to_string()),
            ]))
        };
        let ok = ca("amqps://svc:pw@broker.example/%2f", &cert).expect("valid");
        assert_eq!(ok.ca_file.as_ref(), Some(&cert));
        for (url, path) in [
            ("amqp://guest:guest@127.0.0.1/%2f", &cert),
            ("amqps://svc:pw@broker.example/%2f", &not_pem),
            (
                "amqps://svc:pw@broker.example/%2f",
                &PathBuf::from("/nonexistent/ca.pem"),
            ),
        ] {
            let message = ca(url, path).expect_err("refused").to_string();
            assert!(message.starts_with("AMQP_CA_FILE:"), "{message}");
        }
        let _ = std::fs::remove_file(&cert);
        let _ = std::fs::remove_file(&not_pem);
    }

    #[test]
    fn the_fake_okta_refuses_a_remote_broker() {
        assert!(
            refuse_remote_broker_for_sim(&Secret::new("amqp://g:g@127.0.0.1:5672/%2f")).is_ok()
        );
        assert!(refuse_remote_broker_for_sim(&Secret::new("amqp://g:g@localhost/%2f")).is_ok());
        let message =
            refuse_remote_broker_for_sim(&Secret::new("amqps://svc:pw@rabbitmq.prod.example/%2f"))
                .expect_err("remote")
                .to_string();
        assert!(
            message.contains("--okta-sim-allow-remote-broker"),
            "{message}"
        );
        assert!(!message.contains("pw"), "{message}");
    }
}
