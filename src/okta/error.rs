//! Errors from Okta, and their classification: the one place that decides whether a
//! failure is transient (retry), a rate limit (wait), or permanent (dead-letter).

use crate::domain::outcome::{ErrorKind, Failure};
use std::time::Duration;

/// What Okta said when it refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The Okta operation, by its operationId (e.g. `createUser`).
    pub operation: &'static str,
    pub status: u16,
    /// Okta's `errorCode`, e.g. `E0000001`; the only field meant for program logic.
    pub code: Option<String>,
    pub summary: String,
    pub causes: Vec<String>,
    pub request_id: Option<String>,
}

/// Okta's refusal of an OAuth 2.0 access token request (an OAuth error body, not an
/// Okta `errorCode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    pub status: u16,
    /// The OAuth `error`, e.g. `invalid_client`, `invalid_scope`.
    pub error: String,
    /// Okta's `error_description`, made printable.
    pub description: String,
    pub request_id: Option<String>,
}

/// A failed Okta call.
#[derive(Debug, thiserror::Error)]
pub enum OktaError {
    /// No usable HTTP answer: connection refused or reset, DNS, TLS, timeout.
    #[error("Okta {operation} request failed{}", if *.timed_out { " (timed out)" } else { "" })]
    Transport {
        operation: &'static str,
        timed_out: bool,
        #[source]
        source: reqwest::Error,
    },
    /// Okta answered with an error status.
    #[error("Okta answered {} {} to {}: {}{}", .0.status, .0.code.as_deref().unwrap_or("(no error code)"), .0.operation, .0.summary, causes_suffix(&.0.causes))]
    Api(Box<ApiError>),
    /// Okta answered 429. The client does not retry: the pacer now holds the next
    /// request for `retry_after`, and the pipeline tries again after it without using
    /// an attempt.
    #[error("Okta {} reached on {operation}; next try in {} ms", .limit.describe(), .retry_after.as_millis())]
    RateLimited {
        operation: &'static str,
        /// Which of Okta's limits refused the request.
        limit: LimitKind,
        /// How long the pacer holds the next request: until the bucket's reset, or a
        /// short backoff for the concurrency limit.
        retry_after: Duration,
        request_id: Option<String>,
    },
    /// The token endpoint refused to give the service app an access token.
    #[error("Okta refused the OAuth 2.0 access token request ({} {}): {}", .0.status, .0.error, if .0.description.is_empty() { "no description" } else { .0.description.as_str() })]
    Token(Box<TokenError>),
    /// The client assertion could not be signed (the key was accepted at start-up).
    #[error("cannot sign the OAuth 2.0 client assertion: {reason}")]
    Assertion { reason: String },
    /// Okta answered 2xx with a body this client cannot read.
    #[error("Okta's answer to {operation} could not be read: {message}")]
    Decode {
        operation: &'static str,
        message: String,
        request_id: Option<String>,
    },
    /// A `Link: rel="next"` pointed outside the org's origin. The credential is sent
    /// only to the org, so the listing stops; a misbehaving proxy or a forged header
    /// needs a person, not a retry.
    #[error("Okta's answer to {operation} links its next page to {origin}, not to the org's origin; not followed")]
    ForeignLink {
        operation: &'static str,
        /// The link's scheme, host and port only (never its query).
        origin: String,
        request_id: Option<String>,
    },
}

/// Which of Okta's limits a 429 came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// The endpoint's rate-limit bucket is spent until its window resets.
    Bucket,
    /// Too many requests in flight org-wide (`X-Rate-Limit-Limit` and `-Remaining` 0):
    /// no window to wait for; it clears when one finishes.
    Concurrency,
}

impl LimitKind {
    fn describe(self) -> &'static str {
        match self {
            LimitKind::Bucket => "rate limit",
            LimitKind::Concurrency => "concurrency limit (too many requests in flight)",
        }
    }
}

fn causes_suffix(causes: &[String]) -> String {
    if causes.is_empty() {
        String::new()
    } else {
        format!(" ({})", causes.join("; "))
    }
}

/// Whether an HTTP status is worth retrying: 408, 429 and 5xx except 501.
pub fn is_transient_status(status: u16) -> bool {
    status == 408 || status == 429 || ((500..600).contains(&status) && status != 501)
}

impl OktaError {
    /// The contract's error kind for this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            OktaError::Transport { .. } | OktaError::Decode { .. } => ErrorKind::Transient,
            OktaError::RateLimited { .. } => ErrorKind::RateLimited,
            OktaError::Api(api) if api.status == 429 => ErrorKind::RateLimited,
            // "User is still being activated": Okta will finish on its own; try later.
            OktaError::Api(api) if api.code.as_deref() == Some("E0000112") => ErrorKind::Transient,
            OktaError::Api(api) if is_transient_status(api.status) => ErrorKind::Transient,
            OktaError::Api(_) => ErrorKind::Okta,
            // A 5xx from the token endpoint is Okta having trouble; a 4xx (bad key,
            // replayed assertion, scope not granted) needs an administrator.
            OktaError::Token(token) if is_transient_status(token.status) => ErrorKind::Transient,
            OktaError::Token(_) | OktaError::Assertion { .. } => ErrorKind::Okta,
            OktaError::ForeignLink { .. } => ErrorKind::Okta,
        }
    }

    /// Okta's `errorCode`, when Okta answered with one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            OktaError::Api(api) => api.code.as_deref(),
            OktaError::Token(token) => Some(token.error.as_str()),
            OktaError::RateLimited { .. } => Some("E0000047"),
            _ => None,
        }
    }

    /// Okta's `X-Okta-Request-Id`, when Okta answered.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            OktaError::Api(api) => api.request_id.as_deref(),
            OktaError::Token(token) => token.request_id.as_deref(),
            OktaError::RateLimited { request_id, .. }
            | OktaError::Decode { request_id, .. }
            | OktaError::ForeignLink { request_id, .. } => request_id.as_deref(),
            OktaError::Transport { .. } | OktaError::Assertion { .. } => None,
        }
    }

    /// True for Okta's answer `status` with `errorCode` `code`.
    pub fn is(&self, status: u16, code: &str) -> bool {
        matches!(self, OktaError::Api(api) if api.status == status && api.code.as_deref() == Some(code))
    }

    /// True when a create failed because the login is taken (400 `E0000001` with an
    /// "already exists" cause): the service then adopts the existing user.
    pub fn is_duplicate_login(&self) -> bool {
        match self {
            OktaError::Api(api) => {
                api.status == 400
                    && api.code.as_deref() == Some("E0000001")
                    && api
                        .causes
                        .iter()
                        .any(|c| c.to_ascii_lowercase().contains("already exists"))
            }
            _ => false,
        }
    }

    /// This error as reported in outcomes and dead-letter headers.
    pub fn to_failure(&self) -> Failure {
        Failure {
            kind: self.kind(),
            message: self.to_string(),
            okta_error_code: self.error_code().map(str::to_owned),
            okta_request_id: self.request_id().map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, causes: &[&str]) -> OktaError {
        OktaError::Api(Box::new(ApiError {
            operation: "createUser",
            status,
            code: Some(code.into()),
            summary: "summary".into(),
            causes: causes.iter().map(|c| c.to_string()).collect(),
            request_id: Some("req-1".into()),
        }))
    }

    #[test]
    fn statuses_are_classified_as_the_retry_rules_say() {
        for status in [408, 500, 502, 503, 504] {
            assert_eq!(
                api(status, "E0000009", &[]).kind(),
                ErrorKind::Transient,
                "{status}"
            );
        }
        assert_eq!(api(429, "E0000047", &[]).kind(), ErrorKind::RateLimited);
        assert_eq!(
            api(409, "E0000112", &[]).kind(),
            ErrorKind::Transient,
            "still activating"
        );
        for status in [400, 401, 403, 404, 409, 501] {
            assert_eq!(
                api(status, "E0000001", &[]).kind(),
                ErrorKind::Okta,
                "{status}"
            );
        }
    }

    #[test]
    fn both_kinds_of_429_are_rate_limits() {
        let concurrency = OktaError::RateLimited {
            operation: "getUser",
            limit: LimitKind::Concurrency,
            retry_after: Duration::from_millis(40),
            request_id: Some("req-3".into()),
        };
        let failure = concurrency.to_failure();
        assert_eq!(failure.kind, ErrorKind::RateLimited);
        assert_eq!(failure.okta_error_code.as_deref(), Some("E0000047"));
        assert_eq!(failure.okta_request_id.as_deref(), Some("req-3"));
        assert!(
            failure.message.contains("concurrency limit") && failure.message.contains("in 40 ms"),
            "{}",
            failure.message
        );
        let bucket = OktaError::RateLimited {
            operation: "createUser",
            limit: LimitKind::Bucket,
            retry_after: Duration::from_millis(3_400),
            request_id: None,
        };
        assert_eq!(bucket.kind(), ErrorKind::RateLimited);
        assert_eq!(
            bucket.to_string(),
            "Okta rate limit reached on createUser; next try in 3400 ms"
        );
    }

    #[test]
    fn duplicate_login_is_recognised_by_code_and_cause() {
        let duplicate = api(
            400,
            "E0000001",
            &["login: An object with this field already exists in the current organization"],
        );
        assert!(duplicate.is_duplicate_login());
        assert!(!api(400, "E0000001", &["firstName: required"]).is_duplicate_login());
        assert!(!api(400, "E0000003", &["already exists"]).is_duplicate_login());
    }

    #[test]
    fn token_refusals_are_permanent_unless_okta_is_failing() {
        let token = |status: u16| {
            OktaError::Token(Box::new(TokenError {
                status,
                error: "invalid_client".into(),
                description: "The client_assertion signature is invalid.".into(),
                request_id: Some("req-2".into()),
            }))
        };
        let failure = token(401).to_failure();
        assert_eq!(failure.kind, ErrorKind::Okta);
        assert_eq!(failure.okta_error_code.as_deref(), Some("invalid_client"));
        assert_eq!(failure.okta_request_id.as_deref(), Some("req-2"));
        assert!(
            failure.message.contains("signature is invalid"),
            "{}",
            failure.message
        );
        assert_eq!(token(503).kind(), ErrorKind::Transient);
    }

    #[test]
    fn transient_statuses_are_408_429_and_5xx_but_501() {
        for status in [408, 429, 500, 502, 503, 504, 599] {
            assert!(is_transient_status(status), "{status}");
        }
        for status in [200, 400, 404, 407, 409, 428, 499, 501, 600] {
            assert!(!is_transient_status(status), "{status}");
        }
    }

    #[test]
    fn a_429_is_a_rate_limit_whatever_its_error_code() {
        let mut error = api(429, "E0000047", &[]);
        if let OktaError::Api(api) = &mut error {
            api.code = None;
        }
        assert_eq!(error.kind(), ErrorKind::RateLimited);
    }

    #[test]
    fn answers_that_need_a_person_are_permanent_and_unreadable_ones_are_retried() {
        let decode = OktaError::Decode {
            operation: "listUsers",
            message: "expected an array".into(),
            request_id: Some("req-4".into()),
        };
        assert_eq!(decode.kind(), ErrorKind::Transient);
        assert_eq!(decode.request_id(), Some("req-4"));
        assert_eq!(decode.error_code(), None);
        let foreign = OktaError::ForeignLink {
            operation: "listUsers",
            origin: "https://elsewhere.example".into(),
            request_id: Some("req-5".into()),
        };
        assert_eq!(foreign.kind(), ErrorKind::Okta);
        assert_eq!(foreign.request_id(), Some("req-5"));
        assert_eq!(foreign.error_code(), None);
        let assertion = OktaError::Assertion {
            reason: "key rejected".into(),
        };
        assert_eq!(assertion.kind(), ErrorKind::Okta);
        assert_eq!(assertion.request_id(), None);
        assert_eq!(assertion.error_code(), None);
        let bucket = OktaError::RateLimited {
            operation: "createUser",
            limit: LimitKind::Bucket,
            retry_after: Duration::from_secs(3),
            request_id: Some("req-6".into()),
        };
        assert_eq!(bucket.request_id(), Some("req-6"));
        assert_eq!(bucket.error_code(), Some("E0000047"));
    }

    #[test]
    fn is_matches_both_the_status_and_the_error_code() {
        let not_found = api(404, "E0000007", &[]);
        assert!(not_found.is(404, "E0000007"));
        assert!(!not_found.is(404, "E0000001"));
        assert!(!not_found.is(400, "E0000007"));
        let bucket = OktaError::RateLimited {
            operation: "getUser",
            limit: LimitKind::Bucket,
            retry_after: Duration::from_secs(1),
            request_id: None,
        };
        assert!(!bucket.is(429, "E0000047"), "only Okta's own answers");
    }

    #[test]
    fn the_message_lists_okta_s_causes() {
        let with_causes = api(400, "E0000001", &["login: taken", "email: invalid"]);
        assert_eq!(
            with_causes.to_string(),
            "Okta answered 400 E0000001 to createUser: summary (login: taken; email: invalid)"
        );
        assert_eq!(
            api(400, "E0000001", &[]).to_string(),
            "Okta answered 400 E0000001 to createUser: summary"
        );
    }

    #[test]
    fn failure_carries_okta_code_and_request_id() {
        let failure = api(403, "E0000006", &[]).to_failure();
        assert_eq!(failure.kind, ErrorKind::Okta);
        assert_eq!(failure.okta_error_code.as_deref(), Some("E0000006"));
        assert_eq!(failure.okta_request_id.as_deref(), Some("req-1"));
        assert!(failure.message.contains("403 E0000006"));
    }
}
