//! Configuration from the environment (contract section 5), validated completely before
//! anything connects: a mistake stops start-up with one line naming the variable.

pub mod secret;

use crate::amqp::topology::{QueueType, TopologyNames};
use crate::config::secret::Secret;
use crate::domain::mapping::{GroupMapping, MappingError};
use crate::domain::partition::{index_from_host_name, ReplicaSlot};
use crate::domain::plan::OffboardingMode;
use crate::okta::auth::{OktaAuth, ServiceApp, SigningKey, DEFAULT_SCOPES};
use crate::okta::OktaClientSettings;
use crate::pipeline::guard::GuardLimits;
use crate::pipeline::retry::RetryPolicy;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The broker variables as read; checked in [`BrokerSettings::from_vars`]. Apart from
/// [`RawEnv`] so that commands needing only the broker ignore every other variable.
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

/// The other variables of `run` as read; every one optional here, checked in
/// [`Settings::from_vars`].
#[derive(Deserialize, Default)]
struct RawEnv {
    okta_org_url: Option<String>,
    okta_api_token: Option<Secret>,
    okta_client_id: Option<String>,
    okta_private_key: Option<Secret>,
    okta_private_key_file: Option<PathBuf>,
    okta_key_id: Option<String>,
    okta_scopes: Option<String>,
    max_message_bytes: Option<usize>,
    group_mapping_file: Option<PathBuf>,
    group_mapping: Option<String>,
    offboarding_mode: Option<String>,
    concurrency: Option<u16>,
    leaver_concurrency: Option<u16>,
    max_attempts: Option<u32>,
    retry_base_delay_ms: Option<u64>,
    retry_max_delay_ms: Option<u64>,
    http_listen: Option<String>,
    shutdown_timeout_secs: Option<u64>,
    publish_confirm_timeout_ms: Option<u64>,
    okta_timeout_secs: Option<u64>,
    okta_max_in_flight: Option<u16>,
    group_cache_ttl_secs: Option<u64>,
    okta_outage_threshold: Option<u32>,
    dry_run: Option<bool>,
    offboarding_guard_max: Option<u32>,
    offboarding_guard_window: Option<u64>,
    activation_time_of_day: Option<String>,
    group_mapping_poll_ms: Option<u64>,
    partitions: Option<u16>,
    replicas: Option<u16>,
    replica_index: Option<u16>,
    partition_standby_delay_ms: Option<u64>,
    hostname: Option<String>,
    okta_activation_email: Option<String>,
    removal_recheck_secs: Option<String>,
    okta_api_token_file: Option<PathBuf>,
    log_pii: Option<String>,
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

/// What every command that talks to the broker needs, and nothing more: the dead-letter
/// commands run on an operator's machine that has no Okta credentials.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Broker URL; holds the broker password, hence secret.
    pub amqp_url: Secret,
    pub topology: TopologyNames,
    /// `AMQP_CA_FILE`: extra roots trusted for the broker's certificate only (checked
    /// here; read again by [`crate::amqp::connect`] at each connection).
    pub ca_file: Option<PathBuf>,
}

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

/// Drops empty variables: an empty variable means "not set", which is how compose files
/// and Kubernetes manifests usually leave an optional value out.
fn set_only(
    vars: impl IntoIterator<Item = (String, String)>,
) -> impl Iterator<Item = (String, String)> {
    vars.into_iter().filter(|(_, v)| !v.trim().is_empty())
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
    /// Removals processed at once from the leavers lane (`<work queue>.leavers`), on
    /// top of `concurrency`; also that queue's prefetch.
    pub leaver_concurrency: u16,
    pub retry: RetryPolicy,
    /// Address of /healthz, /readyz and /metrics.
    pub http_listen: SocketAddr,
    /// How long shutdown waits for in-flight work before handing it back to the broker.
    pub shutdown_timeout: Duration,
    /// `PUBLISH_CONFIRM_TIMEOUT_MS`: how long a publish waits for the broker's confirm
    /// (not counting time the broker blocks the connection) before the session ends.
    pub publish_confirm_timeout: Duration,
    pub okta_client: OktaClientSettings,
    /// How long a resolved group name stays cached.
    pub group_cache_ttl: Duration,
    /// Consecutive transient Okta failures (across all events) that mean "Okta is
    /// down": consuming pauses and events wait instead of spending attempts.
    pub okta_outage_threshold: u32,
    /// Largest message body accepted, in bytes; a larger one is dead-lettered unread.
    pub max_message_bytes: usize,
    /// `DRY_RUN`: read Okta, change nothing, report what would have been done.
    pub dry_run: bool,
    /// `OFFBOARDING_GUARD_MAX` / `OFFBOARDING_GUARD_WINDOW`; off when `None`.
    pub offboarding_guard: Option<GuardLimits>,
    /// `ACTIVATION_TIME_OF_DAY`: when (UTC) a staged hire's start date begins.
    pub activation_time: time::Time,
    /// `GROUP_MAPPING_POLL_MS`: how often `GROUP_MAPPING_FILE` is checked for changes;
    /// `None`: only on SIGHUP.
    pub mapping_poll: Option<Duration>,
    /// Partitioned mode (`PARTITIONS`), or `None`: one work queue, as without it.
    pub partitioning: Option<Partitioning>,
    /// `REMOVAL_RECHECK_SECS`: how long a removal by employee id alone that finds nobody
    /// is checked again (Okta's search lags writes); zero: never.
    pub removal_recheck: Duration,
    /// `LOG_PII`: whether log lines show employee ids and emails or their pseudonyms.
    pub log_pii: crate::telemetry::pii::LogPii,
    /// `TRUSTED_PUBLISHERS`, `ALLOWED_EMAIL_DOMAINS`, `PROTECTED_*` (see `crate::trust`).
    pub trust: crate::trust::TrustSettings,
}

/// Partitioned mode: events spread over `partitions` single-active-consumer queues by
/// employee, every replica consuming all of them (see ARCHITECTURE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitioning {
    /// Number of partition queues (`PARTITIONS`), at least 1.
    pub partitions: u16,
    /// This replica's place among its peers (`REPLICA_INDEX`, `REPLICAS`).
    pub slot: ReplicaSlot,
    /// How long a replica waits before subscribing, as a standby, to the partitions it
    /// does not prefer (`PARTITION_STANDBY_DELAY_MS`).
    pub standby_delay: Duration,
}

/// The most partitions accepted; each is a quorum queue with a consumer per replica.
pub const MAX_PARTITIONS: u16 = 256;

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
        let vars: Vec<(String, String)> = set_only(vars).collect();
        let BrokerSettings {
            amqp_url, topology, ..
        } = BrokerSettings::from_vars(vars.clone())?;
        let trust = crate::trust::TrustSettings::from_vars(vars.clone())?;
        let raw: RawEnv = envy::from_iter(vars).map_err(|e| ConfigError::Env(e.to_string()))?;

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

        let concurrency = raw.concurrency.unwrap_or(32);
        if concurrency == 0 {
            return Err(invalid("CONCURRENCY", "must be at least 1"));
        }
        let leaver_concurrency = raw.leaver_concurrency.unwrap_or(8);
        if leaver_concurrency == 0 {
            return Err(invalid("LEAVER_CONCURRENCY", "must be at least 1"));
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
        okta_client.activation_email = activation_email(raw.okta_activation_email.as_deref())?;
        let offboarding_guard =
            guard_limits(raw.offboarding_guard_max, raw.offboarding_guard_window)?;
        let activation_time = match raw.activation_time_of_day.as_deref() {
            None => time::Time::MIDNIGHT,
            Some(value) => crate::domain::schedule::parse_time_of_day(value).ok_or_else(|| {
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
            leaver_concurrency,
            retry,
            http_listen,
            shutdown_timeout: Duration::from_secs(raw.shutdown_timeout_secs.unwrap_or(25)),
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
            okta_client,
            group_cache_ttl: Duration::from_secs(raw.group_cache_ttl_secs.unwrap_or(300)),
            okta_outage_threshold: match raw.okta_outage_threshold {
                Some(0) => return Err(invalid("OKTA_OUTAGE_THRESHOLD", "must be at least 1")),
                Some(n) => n,
                None => 5,
            },
            max_message_bytes: max_message_bytes(raw.max_message_bytes)?,
            dry_run,
            offboarding_guard,
            activation_time,
            mapping_poll,
            partitioning: partitioning(&raw)?,
            removal_recheck: removal_recheck(raw.removal_recheck_secs.as_deref())?,
            log_pii: log_pii(raw.log_pii.as_deref())?,
            trust,
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

/// The longest `REMOVAL_RECHECK_SECS`: a removal is never kept open for longer.
const MAX_REMOVAL_RECHECK_SECS: u64 = 86_400;

/// `REMOVAL_RECHECK_SECS`: whole seconds, 0 to [`MAX_REMOVAL_RECHECK_SECS`].
fn removal_recheck(value: Option<&str>) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(crate::pipeline::deferral::DEFAULT_REMOVAL_RECHECK);
    };
    match value.trim().parse::<u64>() {
        Ok(secs) if secs <= MAX_REMOVAL_RECHECK_SECS => Ok(Duration::from_secs(secs)),
        _ => Err(invalid(
            "REMOVAL_RECHECK_SECS",
            format!("must be whole seconds from 0 (never re-check) to {MAX_REMOVAL_RECHECK_SECS}"),
        )),
    }
}

#[cfg(test)]
mod okta_writes_tests {
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
    fn removal_recheck_defaults_to_two_minutes_and_is_bounded() {
        assert_eq!(
            removal_recheck(None).expect("default"),
            Duration::from_secs(120)
        );
        assert_eq!(removal_recheck(Some("0")).expect("off"), Duration::ZERO);
        for bad in ["-1", "2m", "86401"] {
            let error = removal_recheck(Some(bad)).expect_err(bad);
            assert!(
                error.to_string().starts_with("REMOVAL_RECHECK_SECS: "),
                "{error}"
            );
        }
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

/// `PARTITIONS`, `REPLICAS`, `REPLICA_INDEX` (else derived from `HOSTNAME`) and
/// `PARTITION_STANDBY_DELAY_MS`. The replica variables mean nothing without `PARTITIONS`
/// and are refused alone, so a half-done scale-out configuration is noticed.
fn partitioning(raw: &RawEnv) -> Result<Option<Partitioning>, ConfigError> {
    let Some(partitions) = raw.partitions else {
        for (variable, set) in [
            ("REPLICAS", raw.replicas.is_some()),
            ("REPLICA_INDEX", raw.replica_index.is_some()),
            (
                "PARTITION_STANDBY_DELAY_MS",
                raw.partition_standby_delay_ms.is_some(),
            ),
        ] {
            if set {
                return Err(invalid(
                    variable,
                    "is set, but PARTITIONS is not; it only applies in partitioned mode",
                ));
            }
        }
        return Ok(None);
    };
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(invalid(
            "PARTITIONS",
            format!("must be between 1 and {MAX_PARTITIONS}"),
        ));
    }
    let replicas = raw.replicas.unwrap_or(1);
    if replicas == 0 {
        return Err(invalid("REPLICAS", "must be at least 1"));
    }
    let index = match (raw.replica_index, raw.hostname.as_deref()) {
        (Some(index), _) if index >= replicas => {
            return Err(invalid(
                "REPLICA_INDEX",
                format!("must be below REPLICAS ({replicas})"),
            ))
        }
        (Some(index), _) => index,
        (None, Some(host)) => index_from_host_name(host, replicas),
        (None, None) => 0,
    };
    Ok(Some(Partitioning {
        partitions,
        slot: ReplicaSlot { index, replicas },
        standby_delay: Duration::from_millis(raw.partition_standby_delay_ms.unwrap_or(3_000)),
    }))
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
fn service_app(raw: &RawEnv) -> Result<ServiceApp, ConfigError> {
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

fn is_loopback(url: &reqwest::Url) -> bool {
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

/// `LOG_PII`: `full` (the default) or `minimal`.
fn log_pii(value: Option<&str>) -> Result<crate::telemetry::pii::LogPii, ConfigError> {
    match value {
        None => Ok(crate::telemetry::pii::LogPii::Full),
        Some(text) => crate::telemetry::pii::LogPii::parse(text).ok_or_else(|| {
            invalid(
                "LOG_PII",
                format!("unknown mode {text:?} (use full or minimal)"),
            )
        }),
    }
}

/// The Okta API token from `OKTA_API_TOKEN` or `OKTA_API_TOKEN_FILE` (a mounted secret
/// file, so the token is not in the process environment); never both.
fn api_token(raw: &RawEnv) -> Result<Option<Secret>, ConfigError> {
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

/// A secret read from a file, without the trailing line break editors and `echo` add.
/// The error names the file, never its content.
fn secret_file(variable: &'static str, path: &std::path::Path) -> Result<Secret, ConfigError> {
    let text = Secret::new(
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
    Ok(Secret::new(value))
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
    fn the_publish_confirm_timeout_is_bounded_and_never_zero() {
        let settings = Settings::from_vars(vars(&OKTA), false).expect("valid");
        assert_eq!(settings.publish_confirm_timeout, Duration::from_secs(30));
        let mut pairs = OKTA.to_vec();
        pairs.push(("PUBLISH_CONFIRM_TIMEOUT_MS", "1500"));
        let settings = Settings::from_vars(vars(&pairs), false).expect("valid");
        assert_eq!(
            settings.publish_confirm_timeout,
            Duration::from_millis(1500)
        );
        pairs.pop();
        pairs.push(("PUBLISH_CONFIRM_TIMEOUT_MS", "0"));
        assert!(error(&pairs, false).contains("PUBLISH_CONFIRM_TIMEOUT_MS"));
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
            (with(("LEAVER_CONCURRENCY", "0")), "LEAVER_CONCURRENCY"),
            (with(("LEAVER_CONCURRENCY", "many")), "LEAVER_CONCURRENCY"),
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

    // The service-app tests below take their keys from the fake Okta's `test_key_pair`,
    // so they are built with its feature only.
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
        } = &settings.okta
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
        let Ok(Settings {
            okta:
                OktaTarget::Org {
                    auth: OktaAuth::ServiceApp(app),
                    ..
                },
            ..
        }) = settings
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
    fn max_message_bytes_defaults_to_64_kib_and_has_a_floor() {
        let settings = Settings::from_vars(vars(&OKTA), false).expect("valid");
        assert_eq!(settings.max_message_bytes, 65_536);
        let mut pairs = OKTA.to_vec();
        pairs.push(("MAX_MESSAGE_BYTES", "1000"));
        assert!(error(&pairs, false).contains("MAX_MESSAGE_BYTES"));
        pairs.pop();
        pairs.push(("MAX_MESSAGE_BYTES", "2048"));
        let settings = Settings::from_vars(vars(&pairs), false).expect("valid");
        assert_eq!(settings.max_message_bytes, 2048);
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
    fn partitioned_mode_is_off_by_default_and_read_with_its_replica_slot() {
        let settings = Settings::from_vars(vars(&OKTA), false).expect("valid");
        assert_eq!(settings.partitioning, None);

        let mut pairs = OKTA.to_vec();
        pairs.extend([
            ("PARTITIONS", "6"),
            ("REPLICAS", "3"),
            ("REPLICA_INDEX", "2"),
        ]);
        let settings = Settings::from_vars(vars(&pairs), false).expect("valid");
        let partitioning = settings.partitioning.expect("partitioned");
        assert_eq!(partitioning.partitions, 6);
        assert_eq!(
            partitioning.slot,
            ReplicaSlot {
                index: 2,
                replicas: 3
            }
        );
        assert_eq!(partitioning.standby_delay, Duration::from_secs(3));

        let mut pairs = OKTA.to_vec();
        pairs.extend([
            ("PARTITIONS", "4"),
            ("REPLICAS", "2"),
            ("HOSTNAME", "iam-provisioner-1"),
        ]);
        let settings = Settings::from_vars(vars(&pairs), false).expect("valid");
        assert_eq!(settings.partitioning.expect("partitioned").slot.index, 1);
    }

    #[test]
    fn partitioning_mistakes_name_their_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("PARTITIONS", "0")], "PARTITIONS"),
            (&[("PARTITIONS", "1000")], "PARTITIONS"),
            (&[("PARTITIONS", "many")], "PARTITIONS"),
            (&[("PARTITIONS", "4"), ("REPLICAS", "0")], "REPLICAS"),
            (
                &[
                    ("PARTITIONS", "4"),
                    ("REPLICAS", "3"),
                    ("REPLICA_INDEX", "3"),
                ],
                "REPLICA_INDEX",
            ),
            (&[("REPLICAS", "3")], "REPLICAS"),
            (&[("REPLICA_INDEX", "1")], "REPLICA_INDEX"),
        ];
        for (extra, variable) in cases {
            let mut pairs = OKTA.to_vec();
            pairs.extend_from_slice(extra);
            let message = error(&pairs, false);
            assert!(message.contains(variable), "{extra:?} → {message}");
        }
    }

    #[test]
    fn both_mapping_sources_at_once_are_refused() {
        let mut pairs = OKTA.to_vec();
        pairs.push(("GROUP_MAPPING", "{}"));
        pairs.push(("GROUP_MAPPING_FILE", "/tmp/x.json"));
        assert!(error(&pairs, false).contains("GROUP_MAPPING"));
    }

    fn temp_file(content: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("iam-secret-{:x}", fastrand::u64(..)));
        std::fs::write(&path, content).expect("write temp file");
        path
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
        } = &settings.okta
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
    fn log_pii_is_full_or_minimal() {
        let settings = Settings::from_vars(vars(&OKTA), false).expect("valid");
        assert_eq!(settings.log_pii, crate::telemetry::pii::LogPii::Full);
        let mut pairs = OKTA.to_vec();
        pairs.push(("LOG_PII", "minimal"));
        let settings = Settings::from_vars(vars(&pairs), false).expect("valid");
        assert_eq!(settings.log_pii, crate::telemetry::pii::LogPii::Minimal);
        pairs.pop();
        pairs.push(("LOG_PII", "none"));
        assert!(error(&pairs, false).starts_with("LOG_PII:"));
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
