//! Outcome events: what the service tells dashboards and automation about each event
//! (contract section 4), and the failure classification they carry.

use serde::Serialize;
use std::fmt;
use time::OffsetDateTime;

/// Where an event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// Done; Okta is as HR said.
    Succeeded,
    /// Terminal: the message is in the dead-letter queue.
    Failed,
    /// A transient failure; another attempt is scheduled.
    Retrying,
    /// Added by this service: a removal held by the mass-offboarding guard, waiting for
    /// an operator (`iam-provisioner held release|discard`); neither done nor failed.
    Held,
}

impl OutcomeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeStatus::Succeeded => "succeeded",
            OutcomeStatus::Failed => "failed",
            OutcomeStatus::Retrying => "retrying",
            OutcomeStatus::Held => "held",
        }
    }
}

/// The classes of failure of the contract; also the `x-error-kind` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The message itself is unusable.
    Validation,
    /// The group mapping names a group Okta does not have (or cannot assign).
    Mapping,
    /// Okta refused the request for good (4xx other than 408/429).
    Okta,
    /// Network error, timeout, Okta 5xx: worth another attempt.
    Transient,
    /// Okta's rate limit; waits, never dead-letters by itself.
    RateLimited,
    /// The event would touch an account HR does not own or an admin protected
    /// (contract section 3, "Trust"); dead-lettered at once, nothing changed.
    Conflict,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Validation => "validation",
            ErrorKind::Mapping => "mapping",
            ErrorKind::Okta => "okta",
            ErrorKind::Transient => "transient",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Conflict => "conflict",
        }
    }

    /// Whether another attempt may succeed without anyone changing anything.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient | ErrorKind::RateLimited)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure as reported in outcomes and dead-letter headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub okta_error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub okta_request_id: Option<String>,
}

impl Failure {
    /// A failure without Okta details.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            okta_error_code: None,
            okta_request_id: None,
        }
    }
}

/// One outcome event, serialised as the contract's JSON body.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub source_event_id: Option<String>,
    pub event_type: String,
    pub status: OutcomeStatus,
    pub employee_id: Option<String>,
    pub email: Option<String>,
    pub okta_user_id: Option<String>,
    pub actions: Vec<String>,
    pub unmapped_groups: Vec<String>,
    pub attempt: u32,
    pub error: Option<Failure>,
    #[serde(serialize_with = "serialize_millis")]
    pub completed_at: OffsetDateTime,
    /// Added by this service: true when `DRY_RUN` is on, and `actions` are what would
    /// have been done; nothing was changed in Okta.
    pub dry_run: bool,
}

impl Outcome {
    /// `<event type>.<status>`, e.g. `employee.added.succeeded`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.event_type, self.status.as_str())
    }
}

/// RFC 3339 in UTC with milliseconds, as the contract's example shows.
pub fn format_timestamp(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let millis = at.millisecond();
    let at = at.replace_millisecond(millis).unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

fn serialize_millis<S: serde::Serializer>(at: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_timestamp(*at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn names_are_the_contract_s_and_the_serialised_ones() {
        for (status, name) in [
            (OutcomeStatus::Succeeded, "succeeded"),
            (OutcomeStatus::Failed, "failed"),
            (OutcomeStatus::Retrying, "retrying"),
            (OutcomeStatus::Held, "held"),
        ] {
            assert_eq!(status.as_str(), name);
            assert_eq!(serde_json::to_value(status).expect("serialise"), name);
        }
        for (kind, name) in [
            (ErrorKind::Validation, "validation"),
            (ErrorKind::Mapping, "mapping"),
            (ErrorKind::Okta, "okta"),
            (ErrorKind::Transient, "transient"),
            (ErrorKind::RateLimited, "rate_limited"),
            (ErrorKind::Conflict, "conflict"),
        ] {
            // `as_str` is the `x-error-kind` header, Display the log field, serde the
            // outcome body: one name in all three.
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.to_string(), name);
            assert_eq!(serde_json::to_value(kind).expect("serialise"), name);
        }
    }

    #[test]
    fn only_transient_failures_and_rate_limits_are_retried() {
        assert!(ErrorKind::Transient.is_retryable());
        assert!(ErrorKind::RateLimited.is_retryable());
        for kind in [
            ErrorKind::Validation,
            ErrorKind::Mapping,
            ErrorKind::Okta,
            ErrorKind::Conflict,
        ] {
            assert!(!kind.is_retryable(), "{kind}");
        }
    }

    #[test]
    fn serialises_every_contract_field() {
        let outcome = Outcome {
            source_event_id: Some("ev-1".into()),
            event_type: "employee.added".into(),
            status: OutcomeStatus::Failed,
            employee_id: Some("E-1".into()),
            email: None,
            okta_user_id: None,
            actions: vec![],
            unmapped_groups: vec!["Interns".into()],
            attempt: 2,
            error: Some(Failure {
                kind: ErrorKind::RateLimited,
                message: "slow down".into(),
                okta_error_code: Some("E0000047".into()),
                okta_request_id: Some("req-1".into()),
            }),
            completed_at: datetime!(2026-11-28 09:00:01.234567 UTC),
            dry_run: false,
        };
        let json = serde_json::to_value(&outcome).expect("serialise");
        assert_eq!(json["status"], "failed");
        assert_eq!(json["error"]["kind"], "rate_limited");
        assert_eq!(json["error"]["okta_error_code"], "E0000047");
        assert_eq!(json["okta_user_id"], serde_json::Value::Null);
        assert_eq!(json["completed_at"], "2026-11-28T09:00:01.234Z");
        assert_eq!(outcome.routing_key(), "employee.added.failed");
    }
}
