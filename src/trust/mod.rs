//! Trust boundaries in processing (contract section 3, "Trust").
//!
//! Whoever can publish to the input exchange must not be able to do more than HR's
//! events allow. This module decides, at the first contact with a delivery:
//! - which of the service's own headers it may carry: the ones that relax a safety rule
//!   or change what is done (guard release, schedule and activation markers, the recorded
//!   publisher) are honoured only on deliveries that came back through the service's own
//!   exchanges, whose name the broker sets and no publisher can forge; on anything else
//!   they are removed and counted, so no copy the service makes can launder them;
//! - who published it: the broker-validated AMQP `user_id` of the original, recorded in
//!   [`ORIGINAL_USER_ID`] because the copies the service publishes cannot keep a
//!   `user_id` (the broker checks it against the publishing connection's user);
//! - whether `TRUSTED_PUBLISHERS` and `ALLOWED_EMAIL_DOMAINS` admit it.
//!
//! Protected accounts (`PROTECTED_GROUPS`, `PROTECTED_LOGINS`) live in [`protected`].
//! The decisions are pure functions over plain types (header names, the publisher the
//! decoded envelope records, the event); [`Trust`] adds the log lines and metrics. Stripping the
//! headers from a delivery's properties is the AMQP adapter's part
//! (`crate::amqp::decode`), so no broker type enters this module.

pub mod protected;

use crate::domain::event::{printable, Email, HrEvent, ValidationError};
use crate::domain::schedule::{RECHECK_UNTIL, SCHEDULED_FOR, SCHEDULED_KIND};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::collections::BTreeSet;

pub use protected::{ProtectedAccounts, ProtectedSettings};

/// Header on every copy the service publishes: the broker-validated `user_id` of the
/// message's original publisher (absent when it had none). Trusted only on own routes.
pub const ORIGINAL_USER_ID: &str = "x-original-user-id";

/// Header set by `held release`: the removal was approved by an operator and bypasses
/// the offboarding guard.
pub const GUARD_BYPASS: &str = "x-offboarding-guard-bypass";

/// The service's own headers that relax a safety rule or change what is done; honoured
/// only on deliveries that came back through the service's own exchanges. The replay
/// marker (`x-replay-count`) is not among them: it only makes processing more careful.
pub const OWN_ROUTE_HEADERS: [&str; 5] = [
    GUARD_BYPASS,
    SCHEDULED_KIND,
    SCHEDULED_FOR,
    RECHECK_UNTIL,
    ORIGINAL_USER_ID,
];

/// The exchanges through which the service's own copies come back: `<wq>.retry` (delay
/// queues expire into it; `held release` publishes to it), `<wq>.delay`, `<wq>.replay`
/// (the dead-letter commands) and, in partitioned mode, `<wq>.partitions` (the intake,
/// which removes forged headers before it re-publishes). The AMQP adapter names them
/// (`From<&TopologyNames>` in `crate::amqp::topology`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnRoutes {
    exchanges: Vec<String>,
}

impl OwnRoutes {
    /// The own exchanges, by name.
    pub fn new(exchanges: Vec<String>) -> Self {
        Self { exchanges }
    }

    /// Whether a delivery from `exchange` is one of the service's own copies. The
    /// default exchange (`""`) is not: anyone may publish to a queue by its name.
    pub fn contains(&self, exchange: &str) -> bool {
        !exchange.is_empty() && self.exchanges.iter().any(|own| own == exchange)
    }
}

/// The own-route headers a delivery carries that must not be honoured: all of them on a
/// delivery from outside the own routes, none on one from them. `carries` says whether
/// the delivery has a header of that name.
pub fn untrusted_own_headers(
    from_own_route: bool,
    carries: impl Fn(&str) -> bool,
) -> Vec<&'static str> {
    if from_own_route {
        return Vec::new();
    }
    OWN_ROUTE_HEADERS
        .into_iter()
        .filter(|name| carries(name))
        .collect()
}

/// Whether `TRUSTED_PUBLISHERS` admits `publisher`; the refusal says why (printable).
///
/// # Errors
/// The refusal's message, naming the publisher.
pub fn judge_publisher(
    trusted: Option<&BTreeSet<String>>,
    publisher: Option<&str>,
) -> Result<(), String> {
    let Some(trusted) = trusted else {
        return Ok(());
    };
    match publisher {
        Some(user) if trusted.contains(user) => Ok(()),
        Some(user) => Err(format!(
            "publisher {:?} (AMQP user_id) is not in TRUSTED_PUBLISHERS",
            printable(user)
        )),
        None => Err(
            "the message has no AMQP user_id, and TRUSTED_PUBLISHERS is set: only listed \
             publishers are accepted"
                .to_owned(),
        ),
    }
}

/// Whether `ALLOWED_EMAIL_DOMAINS` (lower-case) admits `email`; exact domain match, so a
/// subdomain must be listed itself. An event without an email (a removal by id) names no
/// domain and is not refused here.
///
/// # Errors
/// The refusal's message, naming the domain.
pub fn judge_email_domain(allowed: Option<&[String]>, email: Option<&Email>) -> Result<(), String> {
    let (Some(allowed), Some(email)) = (allowed, email) else {
        return Ok(());
    };
    let domain = email
        .as_str()
        .rsplit_once('@')
        .map(|(_, domain)| domain.to_lowercase())
        .unwrap_or_default();
    if allowed.contains(&domain) {
        Ok(())
    } else {
        Err(format!(
            "email domain {:?} is not in ALLOWED_EMAIL_DOMAINS",
            printable(&domain)
        ))
    }
}

/// `TRUSTED_PUBLISHERS`, `ALLOWED_EMAIL_DOMAINS` and the protected accounts (read and
/// checked by `crate::config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustSettings {
    /// AMQP `user_id`s accepted; `None`: anyone who may publish to the input exchange.
    pub trusted_publishers: Option<BTreeSet<String>>,
    /// Email domains (lower-case) HR events may name; `None`: any.
    pub allowed_email_domains: Option<Vec<String>>,
    /// Accounts no event may change.
    pub protected: ProtectedSettings,
}

/// Why a delivery's own headers were ignored, or an event refused, as metric labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct HeaderLabels {
    header: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The reasons an event is refused by the trust rules (the `reason` label).
pub const REFUSAL_REASONS: [&str; 3] = ["publisher", "email_domain", "protected_account"];

/// The trust rules' series. Cheap to clone; every clone records into the same series.
#[derive(Clone, Default)]
pub struct TrustMetrics {
    forged_headers: Family<HeaderLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    protected_refreshes_failed: Counter,
}

impl std::fmt::Debug for TrustMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustMetrics").finish_non_exhaustive()
    }
}

impl TrustMetrics {
    /// Fresh series, every label value at zero (so that an alert on an increase works
    /// from the start).
    pub fn new() -> Self {
        let metrics = Self::default();
        for header in OWN_ROUTE_HEADERS {
            let _ = metrics
                .forged_headers
                .get_or_create(&HeaderLabels { header });
        }
        for reason in REFUSAL_REASONS {
            let _ = metrics.refused.get_or_create(&ReasonLabels { reason });
        }
        metrics
    }

    /// Adds the series to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "iam_provisioner_forged_own_headers",
            "Own-route headers (guard release, schedule markers, recorded publisher) found on messages from outside the service's own exchanges, ignored",
            self.forged_headers.clone(),
        );
        registry.register(
            "iam_provisioner_trust_refusals",
            "Events refused by the trust rules: untrusted publisher, foreign email domain, protected account",
            self.refused.clone(),
        );
        registry.register(
            "iam_provisioner_protected_refresh_failures",
            "Failed refreshes of the protected groups' membership",
            self.protected_refreshes_failed.clone(),
        );
    }

    /// `header` arrived on a message from outside the own routes.
    pub fn forged_header(&self, header: &'static str) {
        self.forged_headers
            .get_or_create(&HeaderLabels { header })
            .inc();
    }

    /// An event was refused; `reason` is one of [`REFUSAL_REASONS`].
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A refresh of the protected groups failed.
    pub fn protected_refresh_failed(&self) {
        self.protected_refreshes_failed.inc();
    }
}

/// The trust rules as the worker and the intake apply them.
#[derive(Debug, Clone)]
pub struct Trust {
    own: OwnRoutes,
    settings: TrustSettings,
    metrics: TrustMetrics,
}

impl Trust {
    /// The rules of `settings` for the own routes `own` (a work queue's `TopologyNames`
    /// names them), recording into `metrics`.
    pub fn new(own: impl Into<OwnRoutes>, settings: TrustSettings, metrics: TrustMetrics) -> Self {
        Self {
            own: own.into(),
            settings,
            metrics,
        }
    }

    /// The service's own exchanges.
    pub fn own_routes(&self) -> &OwnRoutes {
        &self.own
    }

    /// Logs and counts the own-route headers `forged` that a delivery from `exchange`
    /// carried and lost at its first contact (`crate::amqp::decode`).
    pub fn report_forged(
        &self,
        exchange: &str,
        message_id: Option<&str>,
        publisher: Option<&str>,
        forged: &[&'static str],
    ) {
        if forged.is_empty() {
            return;
        }
        for header in forged {
            self.metrics.forged_header(header);
        }
        tracing::warn!(
            exchange = printable(exchange),
            message_id = message_id.map(printable),
            publisher = publisher.map(printable),
            headers = ?forged,
            "message from outside the service's own exchanges carried the service's own \
             headers; they are ignored"
        );
    }

    /// Why an admitted message's event must be refused as a `validation` failure, if it
    /// must: an untrusted publisher (`publisher` is the one the admitted message
    /// records), or an email of a domain HR does not own. Returns the
    /// metric reason with the error; the caller counts it ([`Trust::count_refusal`]) once
    /// the event is settled, so a removal's two lane copies count once.
    pub fn refusal(
        &self,
        publisher: Option<&str>,
        event: &HrEvent,
    ) -> Option<(&'static str, ValidationError)> {
        if let Err(reason) = judge_publisher(self.settings.trusted_publishers.as_ref(), publisher) {
            return Some(("publisher", ValidationError::refused(reason)));
        }
        if let Err(reason) = judge_email_domain(
            self.settings.allowed_email_domains.as_deref(),
            event.email(),
        ) {
            return Some(("email_domain", ValidationError::refused(reason)));
        }
        None
    }

    /// Counts a refusal; `reason` is one of [`REFUSAL_REASONS`].
    pub fn count_refusal(&self, reason: &'static str) {
        self.metrics.refused(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_routes_are_only_the_listed_exchanges_and_never_the_default() {
        let own = OwnRoutes::new(vec!["wq.retry".into(), "wq.replay".into()]);
        assert!(own.contains("wq.retry"));
        assert!(own.contains("wq.replay"));
        assert!(!own.contains("hr.events"));
        assert!(!own.contains(""));
        assert!(!own.contains("wq.retry.evil"));
        assert!(!OwnRoutes::new(vec![String::new()]).contains(""));
    }

    #[test]
    fn own_headers_are_untrusted_only_off_the_own_routes() {
        let carried = [
            GUARD_BYPASS,
            SCHEDULED_KIND,
            SCHEDULED_FOR,
            "x-replay-count",
            "traceparent",
        ];
        let carries = |name: &str| carried.contains(&name);
        assert_eq!(
            untrusted_own_headers(false, carries),
            vec![GUARD_BYPASS, SCHEDULED_KIND, SCHEDULED_FOR]
        );
        assert!(untrusted_own_headers(true, carries).is_empty());
        assert!(untrusted_own_headers(false, |_| false).is_empty());
    }

    fn trust(settings: TrustSettings) -> Trust {
        Trust::new(OwnRoutes::new(vec![]), settings, TrustMetrics::new())
    }

    fn hire(email: &str) -> HrEvent {
        let body = format!(
            r#"{{"event_id":"e","occurred_at":"2026-11-28T09:00:00Z","employee":{{"id":"E-1","email":"{email}","first_name":"A","last_name":"B"}}}}"#
        );
        crate::domain::event::parse_message(crate::domain::event::RawMessage {
            routing_key: "employee.added",
            content_type: None,
            body: body.as_bytes(),
        })
        .expect("valid")
    }

    #[test]
    fn refusals_judge_the_recorded_publisher_then_the_email_domain() {
        let strict = trust(TrustSettings {
            trusted_publishers: Some(["hr".to_owned()].into()),
            allowed_email_domains: Some(vec!["example.com".to_owned()]),
            ..TrustSettings::default()
        });
        let good = hire("a@example.com");
        assert!(strict.refusal(Some("hr"), &good).is_none());
        assert_eq!(
            strict.refusal(Some("mallory"), &good).map(|r| r.0),
            Some("publisher")
        );
        assert_eq!(strict.refusal(None, &good).map(|r| r.0), Some("publisher"));
        assert_eq!(
            strict.refusal(Some("hr"), &hire("a@evil.com")).map(|r| r.0),
            Some("email_domain")
        );
        let open = trust(TrustSettings::default());
        assert!(open.refusal(None, &hire("a@evil.com")).is_none());
    }

    #[test]
    fn publishers_are_judged_only_when_a_list_is_set() {
        let trusted: BTreeSet<String> = ["hr".to_owned()].into();
        assert!(judge_publisher(None, None).is_ok());
        assert!(judge_publisher(None, Some("anyone")).is_ok());
        assert!(judge_publisher(Some(&trusted), Some("hr")).is_ok());
        let refused = judge_publisher(Some(&trusted), Some("mallory")).expect_err("refused");
        assert!(refused.contains("mallory") && refused.contains("TRUSTED_PUBLISHERS"));
        assert!(judge_publisher(Some(&trusted), None).is_err());
        assert!(judge_publisher(Some(&trusted), Some("HR")).is_err());
    }

    #[test]
    fn email_domains_match_exactly_and_case_insensitively() {
        let allowed = vec!["example.com".to_owned()];
        let email = |v: &str| Email::parse("e", v).expect("valid");
        assert!(judge_email_domain(Some(&allowed), Some(&email("a@EXAMPLE.com"))).is_ok());
        assert!(judge_email_domain(Some(&allowed), Some(&email("a@evil.com"))).is_err());
        assert!(judge_email_domain(Some(&allowed), Some(&email("a@sub.example.com"))).is_err());
        assert!(judge_email_domain(Some(&allowed), Some(&email("a@example.com.evil"))).is_err());
        assert!(judge_email_domain(Some(&allowed), None).is_ok());
        assert!(judge_email_domain(None, Some(&email("a@evil.com"))).is_ok());
    }
}
