//! Configuration from the environment (contract section 5), validated completely before
//! anything connects: a mistake stops start-up with one line naming the variable.

use crate::amqp::topology::{QueueType, TopologyNames};
use crate::domain::mapping::{GroupMapping, MappingError};
use crate::domain::plan::OffboardingMode;
use crate::guard::GuardLimits;
use crate::okta::OktaClientSettings;
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The variables as read; every one optional here, checked in [`Settings::from_vars`].
#[derive(Deserialize, Default)]
struct RawEnv {
    amqp_url: Option<Secret>,
    okta_org_url: Option<String>,
    okta_api_token: Option<Secret>,
    okta_client_id: Option<String>,
    okta_private_key: Option<Secret>,
    group_mapping_file: Option<PathBuf>,
    group_mapping: Option<String>,
    offboarding_mode: Option<String>,
    input_exchange: Option<String>,
    work_queue: Option<String>,
    results_exchange: Option<String>,
    dead_letter_exchange: Option<String>,
    dead_letter_queue: Option<String>,
    queue_type: Option<String>,
    concurrency: Option<u16>,
    max_attempts: Option<u32>,
    retry_base_delay_ms: Option<u64>,
    retry_max_delay_ms: Option<u64>,
    http_listen: Option<String>,
    shutdown_timeout_secs: Option<u64>,
    okta_timeout_secs: Option<u64>,
    okta_max_in_flight: Option<u16>,
    group_cache_ttl_secs: Option<u64>,
    okta_outage_threshold: Option<u32>,
    dry_run: Option<bool>,
    offboarding_guard_max: Option<u32>,
    offboarding_guard_window: Option<u64>,
    activation_time_of_day: Option<String>,
    group_mapping_poll_ms: Option<u64>,
}

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
    #[error("{variable}: {source}")]
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

/// Where Okta is.
#[derive(Debug, Clone)]
pub enum OktaTarget {
    /// A real org, with an SSWS API token.
    Org {
        url: reqwest::Url,
        api_token: Secret,
    },
    /// The built-in fake Okta, started in-process (`run --okta-sim`).
    Simulated,
}

/// The validated settings of `iam-provisioner run`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Broker URL; holds the broker password, hence secret.
    pub amqp_url: Secret,
    pub okta: OktaTarget,
    /// The mapping, or `None` when neither variable is set.
    pub mapping: Option<GroupMapping>,
    /// Where the mapping came from, for logs and reloads.
    pub mapping_file: Option<PathBuf>,
    pub offboarding: OffboardingMode,
    pub topology: TopologyNames,
    /// Deliveries processed at once; also the prefetch.
    pub concurrency: u16,
    pub retry: RetryPolicy,
    /// Address of /healthz, /readyz and /metrics.
    pub http_listen: SocketAddr,
    /// How long shutdown waits for in-flight work before handing it back to the broker.
    pub shutdown_timeout: Duration,
    pub okta_client: OktaClientSettings,
    /// How long a resolved group name stays cached.
    pub group_cache_ttl: Duration,
    /// Consecutive transient Okta failures (across all events) that mean "Okta is
    /// down": consuming pauses and events wait instead of spending attempts.
    pub okta_outage_threshold: u32,
    /// `DRY_RUN`: read Okta, change nothing, report what would have been done.
    pub dry_run: bool,
    /// `OFFBOARDING_GUARD_MAX` / `OFFBOARDING_GUARD_WINDOW`; off when `None`.
    pub offboarding_guard: Option<GuardLimits>,
    /// `ACTIVATION_TIME_OF_DAY`: when (UTC) a staged hire's start date begins.
    pub activation_time: time::Time,
    /// `GROUP_MAPPING_POLL_MS`: how often `GROUP_MAPPING_FILE` is checked for changes;
    /// `None`: only on SIGHUP.
    pub mapping_poll: Option<Duration>,
}

impl Settings {
    /// Reads the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that is wrong.
    pub fn from_env(okta_sim: bool) -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars(), okta_sim)
    }

    /// Reads settings from name/value pairs (the environment, or a test's own).
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that is wrong.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
        okta_sim: bool,
    ) -> Result<Self, ConfigError> {
        // An empty variable means "not set": that is how compose files and Kubernetes
        // manifests usually leave an optional value out.
        let vars = vars.into_iter().filter(|(_, v)| !v.trim().is_empty());
        let raw: RawEnv = envy::from_iter(vars).map_err(|e| ConfigError::Env(e.to_string()))?;

        let amqp_url = raw
            .amqp_url
            .clone()
            .unwrap_or_else(|| Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"));
        let scheme_ok =
            amqp_url.expose().starts_with("amqp://") || amqp_url.expose().starts_with("amqps://");
        if !scheme_ok {
            return Err(invalid("AMQP_URL", "must start with amqp:// or amqps://"));
        }

        let okta = okta_target(&raw, okta_sim)?;

        let (mapping, mapping_file) = match (&raw.group_mapping, &raw.group_mapping_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "GROUP_MAPPING",
                    "set either GROUP_MAPPING or GROUP_MAPPING_FILE, not both",
                ))
            }
            (Some(inline), None) => (
                Some(
                    GroupMapping::from_json(inline).map_err(|source| ConfigError::Mapping {
                        variable: "GROUP_MAPPING",
                        source,
                    })?,
                ),
                None,
            ),
            (None, Some(path)) => (
                Some(
                    GroupMapping::from_file(path).map_err(|source| ConfigError::Mapping {
                        variable: "GROUP_MAPPING_FILE",
                        source,
                    })?,
                ),
                Some(path.clone()),
            ),
            (None, None) => (None, None),
        };

        let offboarding = match &raw.offboarding_mode {
            None => OffboardingMode::default(),
            Some(value) => OffboardingMode::parse(value).ok_or_else(|| {
                invalid(
                    "OFFBOARDING_MODE",
                    format!("unknown mode {value:?} (use deactivate, suspend or delete)"),
                )
            })?,
        };

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

        let concurrency = raw.concurrency.unwrap_or(32);
        if concurrency == 0 {
            return Err(invalid("CONCURRENCY", "must be at least 1"));
        }
        let max_attempts = raw.max_attempts.unwrap_or(5);
        if max_attempts == 0 {
            return Err(invalid("MAX_ATTEMPTS", "must be at least 1"));
        }
        let defaults = RetryPolicy::default();
        let retry = RetryPolicy {
            max_attempts,
            base_delay: raw
                .retry_base_delay_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.base_delay),
            max_delay: raw
                .retry_max_delay_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.max_delay),
        };
        if retry.max_delay < retry.base_delay {
            return Err(invalid(
                "RETRY_MAX_DELAY_MS",
                "must not be smaller than RETRY_BASE_DELAY_MS",
            ));
        }

        let http_listen = raw
            .http_listen
            .as_deref()
            .unwrap_or("0.0.0.0:8080")
            .parse::<SocketAddr>()
            .map_err(|e| {
                invalid(
                    "HTTP_LISTEN",
                    format!("not an address like 0.0.0.0:8080 ({e})"),
                )
            })?;

        let mut okta_client = OktaClientSettings::default();
        if let Some(secs) = raw.okta_timeout_secs {
            if secs == 0 {
                return Err(invalid("OKTA_TIMEOUT_SECS", "must be at least 1"));
            }
            okta_client.request_timeout = Duration::from_secs(secs);
        }
        if let Some(max) = raw.okta_max_in_flight {
            if max == 0 {
                return Err(invalid("OKTA_MAX_IN_FLIGHT", "must be at least 1"));
            }
            okta_client.max_in_flight = usize::from(max);
        }
        let dry_run = raw.dry_run.unwrap_or(false);
        okta_client.dry_run = dry_run;
        let offboarding_guard =
            guard_limits(raw.offboarding_guard_max, raw.offboarding_guard_window)?;
        let activation_time = match raw.activation_time_of_day.as_deref() {
            None => time::Time::MIDNIGHT,
            Some(value) => crate::schedule::parse_time_of_day(value).ok_or_else(|| {
                invalid(
                    "ACTIVATION_TIME_OF_DAY",
                    format!("not a time of day like 06:00 or 06:00:00 (UTC): {value:?}"),
                )
            })?,
        };
        let mapping_poll = match raw.group_mapping_poll_ms {
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
            None => Some(Duration::from_secs(30)),
        };

        Ok(Settings {
            amqp_url,
            okta,
            mapping,
            mapping_file,
            offboarding,
            topology,
            concurrency,
            retry,
            http_listen,
            shutdown_timeout: Duration::from_secs(raw.shutdown_timeout_secs.unwrap_or(25)),
            okta_client,
            group_cache_ttl: Duration::from_secs(raw.group_cache_ttl_secs.unwrap_or(300)),
            okta_outage_threshold: match raw.okta_outage_threshold {
                Some(0) => return Err(invalid("OKTA_OUTAGE_THRESHOLD", "must be at least 1")),
                Some(n) => n,
                None => 5,
            },
            dry_run,
            offboarding_guard,
            activation_time,
            mapping_poll,
        })
    }
}

fn guard_limits(
    max: Option<u32>,
    window_secs: Option<u64>,
) -> Result<Option<GuardLimits>, ConfigError> {
    match (max, window_secs) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid(
            "OFFBOARDING_GUARD_WINDOW",
            "is required with OFFBOARDING_GUARD_MAX (seconds)",
        )),
        (None, Some(_)) => Err(invalid(
            "OFFBOARDING_GUARD_MAX",
            "is required with OFFBOARDING_GUARD_WINDOW",
        )),
        (Some(_), Some(0)) => Err(invalid(
            "OFFBOARDING_GUARD_WINDOW",
            "must be at least 1 (seconds)",
        )),
        (Some(max), Some(window)) => Ok(Some(GuardLimits {
            max,
            window: Duration::from_secs(window),
        })),
    }
}

fn okta_target(raw: &RawEnv, okta_sim: bool) -> Result<OktaTarget, ConfigError> {
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
    match (
        &raw.okta_api_token,
        &raw.okta_client_id,
        &raw.okta_private_key,
    ) {
        (Some(token), _, _) => Ok(OktaTarget::Org {
            url,
            api_token: token.clone(),
        }),
        (None, Some(_), Some(_)) => Err(invalid(
            "OKTA_CLIENT_ID",
            "OAuth 2.0 service-app authentication is not implemented yet; set OKTA_API_TOKEN",
        )),
        (None, Some(_), None) => Err(invalid(
            "OKTA_PRIVATE_KEY",
            "is required with OKTA_CLIENT_ID",
        )),
        (None, None, _) => Err(invalid(
            "OKTA_API_TOKEN",
            "is required (or OKTA_CLIENT_ID with OKTA_PRIVATE_KEY)",
        )),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const OKTA: [(&str, &str); 2] = [
        ("OKTA_ORG_URL", "https://acme.okta.com"),
        ("OKTA_API_TOKEN", "00secret-token"),
    ];

    fn error(pairs: &[(&str, &str)], sim: bool) -> String {
        match Settings::from_vars(vars(pairs), sim) {
            Ok(_) => panic!("expected a configuration error for {pairs:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        let settings = Settings::from_vars(vars(&OKTA), false).expect("valid");
        assert_eq!(settings.topology.input_exchange, "hr.events");
        assert_eq!(settings.topology.work_queue, "iam-provisioner");
        assert_eq!(settings.topology.results_exchange, "identity.results");
        assert_eq!(
            settings.topology.dead_letter_exchange,
            "iam-provisioner.dlx"
        );
        assert_eq!(settings.topology.dead_letter_queue, "iam-provisioner.dlq");
        assert_eq!(settings.topology.queue_type, QueueType::Quorum);
        assert_eq!(settings.offboarding, OffboardingMode::Deactivate);
        assert_eq!(
            settings.amqp_url.expose(),
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
            (with(("MAX_ATTEMPTS", "0")), "MAX_ATTEMPTS"),
            (with(("GROUP_MAPPING", "{oops")), "GROUP_MAPPING"),
            (
                with(("GROUP_MAPPING_FILE", "/nonexistent/map.json")),
                "GROUP_MAPPING_FILE",
            ),
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
        assert!(matches!(settings.okta, OktaTarget::Simulated));
        assert!(error(&OKTA, true).contains("OKTA_ORG_URL"));
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let settings = Settings::from_vars(vars(&OKTA), false).expect("valid");
        let printed = format!("{settings:?}");
        assert!(!printed.contains("00secret-token"), "{printed}");
        assert!(!printed.contains("guest:guest"), "{printed}");
    }

    #[test]
    fn both_mapping_sources_at_once_are_refused() {
        let mut pairs = OKTA.to_vec();
        pairs.push(("GROUP_MAPPING", "{}"));
        pairs.push(("GROUP_MAPPING_FILE", "/tmp/x.json"));
        assert!(error(&pairs, false).contains("GROUP_MAPPING"));
    }
}
