//! Configuration from the environment (contract section 5), validated completely before
//! anything connects: a mistake stops start-up with one line naming the variable.
//!
//! [`Settings`] nests the settings of each component, as zero-to-production nests its
//! own: each file here reads the variables of one component (its own `envy` struct, so a
//! variable is read where it is checked) and builds the plain values that component
//! takes. Components never read this module; the composition root (`crate::app`, `main`
//! and the operator commands' wiring) hands them what they need.

mod amqp;
mod http;
mod mapping;
mod okta;
mod partitioning;
mod pipeline;
mod telemetry;
mod trust;

pub use self::amqp::{refuse_remote_broker_for_sim, AmqpSettings};
pub use self::http::HttpSettings;
pub use self::mapping::{MappingSettings, MappingSource};
pub use self::okta::{OktaSettings, OktaTarget};
pub use self::partitioning::{Partitioning, MAX_PARTITIONS};
pub use self::pipeline::PipelineSettings;
pub use self::telemetry::TelemetrySettings;
pub use crate::amqp::BrokerSettings;
/// Kept here too: secrets are read with the configuration (`config::secret::Secret`).
pub use crate::secret;

use crate::domain::mapping::MappingError;
use serde::de::DeserializeOwned;
use std::net::IpAddr;

/// A configuration mistake; the message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Env(String),
    #[error("{variable}: {problem}")]
    Invalid {
        variable: &'static str,
        problem: String,
    },
    #[error("{variable}")]
    Mapping {
        variable: &'static str,
        #[source]
        source: MappingError,
    },
}

fn invalid(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        variable,
        problem: problem.into(),
    }
}

/// Drops empty variables: an empty variable means "not set", which is how compose files
/// and Kubernetes manifests usually leave an optional value out.
fn set_only(
    vars: impl IntoIterator<Item = (String, String)>,
) -> impl Iterator<Item = (String, String)> {
    vars.into_iter().filter(|(_, v)| !v.trim().is_empty())
}

/// One component's variables, as read (every one optional; the component checks them).
/// Variables of other components are ignored.
fn read<T: DeserializeOwned>(vars: &[(String, String)]) -> Result<T, ConfigError> {
    envy::from_iter(vars.iter().cloned()).map_err(|e| ConfigError::Env(e.to_string()))
}

/// The validated settings of `iam-provisioner run`, by the component that owns them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The broker, the topology's names and publishing.
    pub amqp: AmqpSettings,
    /// Where Okta is, how to authenticate, and the client's own limits.
    pub okta: OktaSettings,
    /// Where the group mapping comes from and how often a file is checked for changes.
    pub mapping: MappingSettings,
    /// What happens to each delivery: concurrency, retries, deferral, the guard.
    pub pipeline: PipelineSettings,
    /// Partitioned mode (`PARTITIONS`), or `None`: one work queue, as without it.
    pub partitioning: Option<Partitioning>,
    /// `/healthz`, `/readyz` and `/metrics`.
    pub http: HttpSettings,
    /// What log lines may show.
    pub telemetry: TelemetrySettings,
    /// `TRUSTED_PUBLISHERS`, `ALLOWED_EMAIL_DOMAINS`, `PROTECTED_*` (see `crate::trust`).
    pub trust: crate::trust::TrustSettings,
}

impl Settings {
    /// Reads the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that is wrong.
    pub fn from_env(okta_sim: bool) -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars(), okta_sim)
    }

    /// Reads settings from name/value pairs (the environment, or a test's own). The
    /// mapping file, if any, is only named here: [`MappingSettings::load`] reads it.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that is wrong.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
        okta_sim: bool,
    ) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = set_only(vars).collect();
        let amqp = AmqpSettings::from_vars(&vars)?;
        let trust = trust::from_vars(&vars)?;
        let pipeline = PipelineSettings::from_vars(&vars)?;
        let mut okta = OktaSettings::from_vars(&vars, okta_sim)?;
        // DRY_RUN is the pipeline's; the client is where no write is sent.
        okta.client.dry_run = pipeline.dry_run;
        Ok(Settings {
            okta,
            mapping: MappingSettings::from_vars(&vars)?,
            http: HttpSettings::from_vars(&vars)?,
            partitioning: partitioning::from_vars(&vars)?,
            telemetry: TelemetrySettings::from_vars(&vars)?,
            amqp,
            pipeline,
            trust,
        })
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        // `amqp://` is not a special scheme to the URL parser: its IPv4 hosts stay text.
        Some(url::Host::Domain(domain)) => {
            domain.eq_ignore_ascii_case("localhost")
                || domain.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// A secret read from a file, without the trailing line break editors and `echo` add.
/// The error names the file, never its content.
fn secret_file(
    variable: &'static str,
    path: &std::path::Path,
) -> Result<secret::Secret, ConfigError> {
    let text = secret::Secret::new(
        std::fs::read_to_string(path)
            .map_err(|e| invalid(variable, format!("cannot read {}: {e}", path.display())))?,
    );
    let value = text.expose().trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(invalid(variable, format!("{} is empty", path.display())));
    }
    if value.contains(['\n', '\r']) {
        return Err(invalid(
            variable,
            format!("{} holds more than one line", path.display()),
        ));
    }
    Ok(secret::Secret::new(value))
}

#[cfg(test)]
pub(crate) mod test_support {
    /// Name/value pairs from string pairs.
    pub fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The least a real-mode configuration needs.
    pub const OKTA: [(&str, &str); 2] = [
        ("OKTA_ORG_URL", "https://acme.okta.com"),
        ("OKTA_API_TOKEN", "00secret-token"),
    ];

    /// The message of the configuration error `pairs` must cause.
    pub fn error(pairs: &[(&str, &str)], sim: bool) -> String {
        match super::Settings::from_vars(vars(pairs), sim) {
            Ok(_) => panic!("expected a configuration error for {pairs:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// A file holding `content`, under a unique name.
    pub fn temp_file(content: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("iam-secret-{:x}", fastrand::u64(..)));
        std::fs::write(&path, content).expect("write temp file");
        path
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{error, vars, OKTA};
    use super::*;
    use crate::amqp::topology::QueueType;
    use crate::domain::plan::OffboardingMode;

    #[test]
    fn defaults_follow_the_contract() {
        let settings = Settings::from_vars(vars(&OKTA), false).expect("valid");
        let topology = &settings.amqp.topology;
        assert_eq!(topology.input_exchange, "hr.events");
        assert_eq!(topology.work_queue, "iam-provisioner");
        assert_eq!(topology.results_exchange, "identity.results");
        assert_eq!(topology.dead_letter_exchange, "iam-provisioner.dlx");
        assert_eq!(topology.dead_letter_queue, "iam-provisioner.dlq");
        assert_eq!(topology.queue_type, QueueType::Quorum);
        assert_eq!(settings.pipeline.offboarding, OffboardingMode::Deactivate);
        assert_eq!(
            settings.amqp.url.expose(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn each_mistake_names_its_variable() {
        let with = |extra: (&'static str, &'static str)| {
            let mut all = OKTA.to_vec();
            all.push(extra);
            all
        };
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (with(("OFFBOARDING_MODE", "archive")), "OFFBOARDING_MODE"),
            (with(("CONCURRENCY", "lots")), "CONCURRENCY"),
            (with(("CONCURRENCY", "0")), "CONCURRENCY"),
            (with(("LEAVER_CONCURRENCY", "0")), "LEAVER_CONCURRENCY"),
            (with(("LEAVER_CONCURRENCY", "many")), "LEAVER_CONCURRENCY"),
            (with(("MAX_ATTEMPTS", "0")), "MAX_ATTEMPTS"),
            (with(("GROUP_MAPPING", "{oops")), "GROUP_MAPPING"),
            (with(("HTTP_LISTEN", "everywhere")), "HTTP_LISTEN"),
            (with(("AMQP_URL", "http://broker")), "AMQP_URL"),
            (with(("QUEUE_TYPE", "stream")), "QUEUE_TYPE"),
            (with(("DRY_RUN", "maybe")), "DRY_RUN"),
            (
                with(("OFFBOARDING_GUARD_MAX", "10")),
                "OFFBOARDING_GUARD_WINDOW",
            ),
            (
                with(("OFFBOARDING_GUARD_WINDOW", "60")),
                "OFFBOARDING_GUARD_MAX",
            ),
            (
                with(("ACTIVATION_TIME_OF_DAY", "9am")),
                "ACTIVATION_TIME_OF_DAY",
            ),
            (with(("TRUSTED_PUBLISHERS", " , ")), "TRUSTED_PUBLISHERS"),
            (with(("LOG_PII", "none")), "LOG_PII"),
            (vec![("OKTA_API_TOKEN", "x")], "OKTA_ORG_URL"),
            (
                vec![("OKTA_ORG_URL", "https://acme.okta.com")],
                "OKTA_API_TOKEN",
            ),
            (
                vec![
                    ("OKTA_ORG_URL", "http://acme.okta.com"),
                    ("OKTA_API_TOKEN", "x"),
                ],
                "OKTA_ORG_URL",
            ),
        ];
        for (pairs, variable) in cases {
            let message = error(&pairs, false);
            assert!(message.contains(variable), "{pairs:?} → {message}");
        }
    }

    #[test]
    fn dry_run_reaches_the_okta_client() {
        let mut pairs = OKTA.to_vec();
        pairs.push(("DRY_RUN", "true"));
        let settings = Settings::from_vars(vars(&pairs), false).expect("valid");
        assert!(settings.pipeline.dry_run);
        assert!(settings.okta.client.dry_run);
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let settings = Settings::from_vars(vars(&OKTA), false).expect("valid");
        let printed = format!("{settings:?}");
        assert!(!printed.contains("00secret-token"), "{printed}");
        assert!(!printed.contains("guest:guest"), "{printed}");
    }
}
