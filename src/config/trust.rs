//! The trust boundary's settings (see `crate::trust`): `TRUSTED_PUBLISHERS`,
//! `ALLOWED_EMAIL_DOMAINS`, `PROTECTED_GROUPS`, `PROTECTED_LOGINS`,
//! `PROTECTED_REFRESH_SECS`.

use super::{invalid, read, ConfigError};
use crate::domain::event::printable;
use crate::trust::protected::DEFAULT_REFRESH;
use crate::trust::{ProtectedSettings, TrustSettings};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Deserialize)]
struct RawTrustEnv {
    trusted_publishers: Option<String>,
    allowed_email_domains: Option<String>,
    protected_groups: Option<String>,
    protected_logins: Option<String>,
    protected_refresh_secs: Option<u64>,
}

/// The items of a comma-separated list, trimmed, empty ones dropped.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A set list that ends up empty is a mistake, not "off": refusing it at start-up beats
/// a service that silently trusts everyone.
fn non_empty(variable: &'static str, value: &str) -> Result<Vec<String>, ConfigError> {
    let items = list(value);
    if items.is_empty() {
        return Err(invalid(
            variable,
            "is set but lists nothing (comma-separated; unset it to turn it off)",
        ));
    }
    Ok(items)
}

/// Reads the trust variables (set ones only, as [`super::Settings::from_vars`] passes them).
pub(super) fn from_vars(vars: &[(String, String)]) -> Result<TrustSettings, ConfigError> {
    let raw: RawTrustEnv = read(vars)?;
    let trusted_publishers = match &raw.trusted_publishers {
        None => None,
        Some(value) => {
            let users = non_empty("TRUSTED_PUBLISHERS", value)?;
            if let Some(bad) = users.iter().find(|u| u.chars().any(char::is_control)) {
                return Err(invalid(
                    "TRUSTED_PUBLISHERS",
                    format!("{:?} contains control characters", printable(bad)),
                ));
            }
            Some(users.into_iter().collect())
        }
    };
    let allowed_email_domains = match &raw.allowed_email_domains {
        None => None,
        Some(value) => {
            let domains: Vec<String> = non_empty("ALLOWED_EMAIL_DOMAINS", value)?
                .into_iter()
                .map(|d| d.to_lowercase())
                .collect();
            if let Some(bad) = domains.iter().find(|d| {
                d.contains('@')
                    || d.starts_with('.')
                    || d.ends_with('.')
                    || !d.contains('.')
                    || d.chars().any(|c| c.is_whitespace() || c.is_control())
            }) {
                return Err(invalid(
                    "ALLOWED_EMAIL_DOMAINS",
                    format!(
                        "{:?} is not a domain like example.com (no '@', no leading dot)",
                        printable(bad)
                    ),
                ));
            }
            Some(domains)
        }
    };
    let groups = match &raw.protected_groups {
        None => Vec::new(),
        Some(value) => non_empty("PROTECTED_GROUPS", value)?,
    };
    let logins = match &raw.protected_logins {
        None => BTreeSet::new(),
        Some(value) => {
            let logins = non_empty("PROTECTED_LOGINS", value)?;
            if let Some(bad) = logins.iter().find(|l| !l.contains('@')) {
                return Err(invalid(
                    "PROTECTED_LOGINS",
                    format!("{:?} is not a login (an email address)", printable(bad)),
                ));
            }
            logins.iter().map(|l| l.to_lowercase()).collect()
        }
    };
    let refresh = match raw.protected_refresh_secs {
        Some(0) => return Err(invalid("PROTECTED_REFRESH_SECS", "must be at least 1")),
        Some(secs) => Duration::from_secs(secs),
        None => DEFAULT_REFRESH,
    };
    Ok(TrustSettings {
        trusted_publishers,
        allowed_email_domains,
        protected: ProtectedSettings {
            groups,
            logins,
            refresh,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn settings_parse_and_bad_values_name_the_variable() {
        let settings = from_vars(&vars(&[
            ("TRUSTED_PUBLISHERS", "hr-publisher, hr-backup"),
            ("ALLOWED_EMAIL_DOMAINS", "Example.com,example.org"),
            ("PROTECTED_GROUPS", "Okta Administrators,00g1"),
            ("PROTECTED_LOGINS", "Root@example.com"),
            ("PROTECTED_REFRESH_SECS", "60"),
        ]))
        .expect("valid");
        assert_eq!(
            settings.trusted_publishers,
            Some(["hr-publisher".to_owned(), "hr-backup".to_owned()].into())
        );
        assert_eq!(
            settings.allowed_email_domains,
            Some(vec!["example.com".to_owned(), "example.org".to_owned()])
        );
        assert_eq!(
            settings.protected.groups,
            vec!["Okta Administrators", "00g1"]
        );
        assert!(settings.protected.logins.contains("root@example.com"));
        assert_eq!(settings.protected.refresh, Duration::from_secs(60));
        assert_eq!(
            from_vars(&vars(&[])).expect("valid"),
            TrustSettings {
                protected: ProtectedSettings::default(),
                ..TrustSettings::default()
            }
        );
        for (variable, value) in [
            ("TRUSTED_PUBLISHERS", " , "),
            ("ALLOWED_EMAIL_DOMAINS", "@example.com"),
            ("ALLOWED_EMAIL_DOMAINS", "localhost"),
            ("PROTECTED_GROUPS", ","),
            ("PROTECTED_LOGINS", "root"),
            ("PROTECTED_REFRESH_SECS", "0"),
            ("PROTECTED_REFRESH_SECS", "soon"),
        ] {
            let error = from_vars(&vars(&[(variable, value)]))
                .expect_err("refused")
                .to_string();
            assert!(
                error.contains(variable) || error.to_lowercase().contains(&variable.to_lowercase()),
                "{variable}={value}: {error}"
            );
        }
    }
}
