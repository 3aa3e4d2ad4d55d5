//! What happens to each delivery: how many run at once (also the prefetch of each lane),
//! how failures are retried, when Okta counts as down, what a removal does, the
//! offboarding guard, staged hires' activation time, dry run, and how long shutdown waits.

use super::{invalid, read, ConfigError};
use crate::domain::plan::OffboardingMode;
use crate::pipeline::guard::GuardLimits;
use crate::pipeline::retry::RetryPolicy;
use serde::Deserialize;
use std::time::Duration;

#[derive(Deserialize)]
struct RawPipelineEnv {
    offboarding_mode: Option<String>,
    concurrency: Option<u16>,
    leaver_concurrency: Option<u16>,
    max_attempts: Option<u32>,
    retry_base_delay_ms: Option<u64>,
    retry_max_delay_ms: Option<u64>,
    shutdown_timeout_secs: Option<u64>,
    okta_outage_threshold: Option<u32>,
    dry_run: Option<bool>,
    offboarding_guard_max: Option<u32>,
    offboarding_guard_window: Option<u64>,
    activation_time_of_day: Option<String>,
    removal_recheck_secs: Option<String>,
}

/// The settings of the worker and the session that feeds it.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// `OFFBOARDING_MODE`: what a removal does to the Okta user.
    pub offboarding: OffboardingMode,
    /// `CONCURRENCY`: deliveries processed at once; also the prefetch.
    pub concurrency: u16,
    /// `LEAVER_CONCURRENCY`: removals processed at once from the leavers lane
    /// (`<work queue>.leavers`), on top of `concurrency`; also that queue's prefetch.
    pub leaver_concurrency: u16,
    /// `MAX_ATTEMPTS`, `RETRY_BASE_DELAY_MS`, `RETRY_MAX_DELAY_MS`.
    pub retry: RetryPolicy,
    /// `SHUTDOWN_TIMEOUT_SECS`: how long shutdown waits for in-flight work before handing
    /// it back to the broker.
    pub shutdown_timeout: Duration,
    /// `OKTA_OUTAGE_THRESHOLD`: consecutive transient Okta failures (across all events)
    /// that mean "Okta is down": consuming pauses and events wait instead of spending
    /// attempts.
    pub okta_outage_threshold: u32,
    /// `DRY_RUN`: read Okta, change nothing, report what would have been done.
    pub dry_run: bool,
    /// `OFFBOARDING_GUARD_MAX` / `OFFBOARDING_GUARD_WINDOW`; off when `None`.
    pub offboarding_guard: Option<GuardLimits>,
    /// `ACTIVATION_TIME_OF_DAY`: when (UTC) a staged hire's start date begins.
    pub activation_time: time::Time,
    /// `REMOVAL_RECHECK_SECS`: how long a removal by employee id alone that finds nobody
    /// is checked again (Okta's search lags writes); zero: never.
    pub removal_recheck: Duration,
}

impl PipelineSettings {
    pub(super) fn from_vars(vars: &[(String, String)]) -> Result<Self, ConfigError> {
        let raw: RawPipelineEnv = read(vars)?;
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
        let activation_time = match raw.activation_time_of_day.as_deref() {
            None => time::Time::MIDNIGHT,
            Some(value) => crate::domain::schedule::parse_time_of_day(value).ok_or_else(|| {
                invalid(
                    "ACTIVATION_TIME_OF_DAY",
                    format!("not a time of day like 06:00 or 06:00:00 (UTC): {value:?}"),
                )
            })?,
        };
        Ok(Self {
            offboarding,
            concurrency,
            leaver_concurrency,
            retry,
            shutdown_timeout: Duration::from_secs(raw.shutdown_timeout_secs.unwrap_or(25)),
            okta_outage_threshold: match raw.okta_outage_threshold {
                Some(0) => return Err(invalid("OKTA_OUTAGE_THRESHOLD", "must be at least 1")),
                Some(n) => n,
                None => 5,
            },
            dry_run: raw.dry_run.unwrap_or(false),
            offboarding_guard: guard_limits(
                raw.offboarding_guard_max,
                raw.offboarding_guard_window,
            )?,
            activation_time,
            removal_recheck: removal_recheck(raw.removal_recheck_secs.as_deref())?,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

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
