//! What the service's own telemetry may show: `LOG_PII`. (`RUST_LOG`, `LOG_FORMAT` and
//! the `OTEL_*` variables are read by `crate::telemetry` itself, before the configuration,
//! so that a configuration error is logged as configured.)

use super::{invalid, read, ConfigError};
use crate::telemetry::pii::LogPii;
use serde::Deserialize;

#[derive(Deserialize)]
struct RawTelemetryEnv {
    log_pii: Option<String>,
}

/// The telemetry settings.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `LOG_PII`: whether log lines show employee ids and emails or their pseudonyms.
    pub log_pii: LogPii,
}

impl TelemetrySettings {
    pub(super) fn from_vars(vars: &[(String, String)]) -> Result<Self, ConfigError> {
        let raw: RawTelemetryEnv = read(vars)?;
        Ok(Self {
            log_pii: log_pii(raw.log_pii.as_deref())?,
        })
    }
}

/// `LOG_PII`: `full` (the default) or `minimal`.
fn log_pii(value: Option<&str>) -> Result<LogPii, ConfigError> {
    match value {
        None => Ok(LogPii::Full),
        Some(text) => LogPii::parse(text).ok_or_else(|| {
            invalid(
                "LOG_PII",
                format!("unknown mode {text:?} (use full or minimal)"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{error, vars, OKTA};
    use super::super::Settings;
    use super::*;

    #[test]
    fn log_pii_is_full_or_minimal() {
        let settings = Settings::from_vars(vars(&OKTA), false).expect("valid");
        assert_eq!(settings.telemetry.log_pii, LogPii::Full);
        let mut pairs = OKTA.to_vec();
        pairs.push(("LOG_PII", "minimal"));
        let settings = Settings::from_vars(vars(&pairs), false).expect("valid");
        assert_eq!(settings.telemetry.log_pii, LogPii::Minimal);
        pairs.pop();
        pairs.push(("LOG_PII", "none"));
        assert!(error(&pairs, false).starts_with("LOG_PII:"));
    }
}
