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
//! The decisions are pure functions; [`Trust`] adds the log lines and metrics.

pub mod protected;

use crate::amqp::headers;
use crate::amqp::parking::GUARD_BYPASS;
use crate::amqp::publisher::DeliveredMessage;
use crate::amqp::topology::TopologyNames;
use crate::domain::event::{printable, Email, HrEvent, ValidationError};
use crate::domain::schedule::{RECHECK_UNTIL, SCHEDULED_FOR, SCHEDULED_KIND};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, BTreeSet};

pub use crate::amqp::headers::clean_properties;
pub use protected::{ProtectedAccounts, ProtectedSettings};

/// Header on every copy the service publishes: the broker-validated `user_id` of the
/// message's original publisher (absent when it had none). Trusted only on own routes.
pub const ORIGINAL_USER_ID: &str = "x-original-user-id";

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
/// which removes forged headers before it re-publishes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnRoutes {
    exchanges: Vec<String>,
}

impl OwnRoutes {
    /// The own exchanges of `topology`'s work queue.
    pub fn new(topology: &TopologyNames) -> Self {
        let work_queue = &topology.work_queue;
        Self {
            exchanges: vec![
                format!("{work_queue}.retry"),
                format!("{work_queue}.delay"),
                topology.replay_exchange(),
                topology.partitions_exchange(),
            ],
        }
    }

    /// Whether a delivery from `exchange` is one of the service's own copies. The
    /// default exchange (`""`) is not: anyone may publish to a queue by its name.
    pub fn contains(&self, exchange: &str) -> bool {
        !exchange.is_empty() && self.exchanges.iter().any(|own| own == exchange)
    }
}

/// The own-route headers a delivery carries that must not be honoured: all of them on a
/// delivery from outside the own routes, none on one from them.
pub fn untrusted_own_headers(
    from_own_route: bool,
    headers: Option<&FieldTable>,
) -> Vec<&'static str> {
    if from_own_route {
        return Vec::new();
    }
    let Some(table) = headers else {
        return Vec::new();
    };
    OWN_ROUTE_HEADERS
        .into_iter()
        .filter(|name| table.inner().contains_key(*name))
        .collect()
}

/// A delivery as the service keeps it after its first contact.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// The properties every later copy starts from: forged own headers removed, the
    /// publisher recorded in [`ORIGINAL_USER_ID`], no `user_id`, no `expiration`.
    pub properties: BasicProperties,
    /// The own-route headers a delivery from outside carried (and lost).
    pub forged: Vec<&'static str>,
}

/// The first contact with a delivery from `exchange` (pure): see [`Admitted`]. On an own
/// route the recorded publisher is the copy's; elsewhere it is the broker-validated
/// `user_id` (printable, bounded), and any recorded one is forged.
pub fn admit(from_own_route: bool, properties: &BasicProperties) -> Admitted {
    let original = properties.headers().as_ref();
    let forged = untrusted_own_headers(from_own_route, original);
    let mut table: BTreeMap<ShortString, AMQPValue> =
        original.map(|t| t.inner().clone()).unwrap_or_default();
    for name in &forged {
        table.remove(*name);
    }
    let mut table = FieldTable::from(table);
    if !from_own_route {
        if let Some(user) = properties.user_id() {
            headers::set_str(&mut table, ORIGINAL_USER_ID, &printable(user.as_str()));
        }
    }
    let had_headers = original.is_some() || !table.inner().is_empty();
    let mut cleaned = clean_properties(properties);
    if had_headers {
        cleaned = cleaned.with_headers(table);
    }
    Admitted {
        properties: cleaned,
        forged,
    }
}

/// The properties of a replayed copy of a dead letter (pure), as `replay_copy` starts
/// from them: no `user_id` or `expiration`; the publisher recorded from the `user_id` a
/// message the broker dead-lettered itself still carries. Such a message (its latest
/// `x-death` record names a queue other than a delay queue: an expiry or reject on the
/// work queue) never passed the service's first contact, so its own-route headers are
/// whatever its publisher wrote: they are removed, as they would have been at intake.
pub fn replay_properties(properties: &BasicProperties) -> BasicProperties {
    let original = properties.headers().as_ref();
    let raw = dead_lettered_raw(original);
    let mut table: BTreeMap<ShortString, AMQPValue> =
        original.map(|t| t.inner().clone()).unwrap_or_default();
    if raw {
        for name in OWN_ROUTE_HEADERS {
            table.remove(name);
        }
    }
    let mut table = FieldTable::from(table);
    if let Some(user) = properties.user_id() {
        headers::set_str(&mut table, ORIGINAL_USER_ID, &printable(user.as_str()));
    }
    clean_properties(properties).with_headers(table)
}

/// Whether the broker dead-lettered this message from a queue other than one of the
/// delay queues (`<wq>.parked.<bucket>`, or `<wq>.delay.<bucket>` of earlier versions,
/// whose expiry is the service's own route back).
fn dead_lettered_raw(headers: Option<&FieldTable>) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = headers.and_then(|t| t.inner().get("x-death")) else {
        return false;
    };
    let latest = deaths.as_slice().iter().find_map(|d| match d {
        AMQPValue::FieldTable(record) => Some(record),
        _ => None,
    });
    let Some(latest) = latest else {
        return false;
    };
    let queue = headers::get_str(Some(latest), "queue").unwrap_or_default();
    !crate::domain::schedule::BUCKETS.iter().any(|bucket| {
        queue.ends_with(&format!(".parked.{}", bucket.name))
            || queue.ends_with(&format!(".delay.{}", bucket.name))
    })
}

/// The original publisher recorded on an admitted message.
pub fn recorded_publisher(properties: &BasicProperties) -> Option<&str> {
    headers::get_str(properties.headers().as_ref(), ORIGINAL_USER_ID)
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
    /// The rules of `settings` for `topology`'s own routes, recording into `metrics`.
    pub fn new(topology: &TopologyNames, settings: TrustSettings, metrics: TrustMetrics) -> Self {
        Self {
            own: OwnRoutes::new(topology),
            settings,
            metrics,
        }
    }

    /// The service's own exchanges.
    pub fn own_routes(&self) -> &OwnRoutes {
        &self.own
    }

    /// First contact with a delivery (see [`admit`]): replaces its properties with the
    /// admitted ones, and logs and counts forged own headers.
    pub fn admit(&self, exchange: &str, properties: &BasicProperties) -> BasicProperties {
        let admitted = admit(self.own.contains(exchange), properties);
        if !admitted.forged.is_empty() {
            for header in &admitted.forged {
                self.metrics.forged_header(header);
            }
            tracing::warn!(
                exchange = printable(exchange),
                message_id = properties
                    .message_id()
                    .as_ref()
                    .map(|m| printable(m.as_str())),
                publisher = properties.user_id().as_ref().map(|u| printable(u.as_str())),
                headers = ?admitted.forged,
                "message from outside the service's own exchanges carried the service's own \
                 headers; they are ignored"
            );
        }
        admitted.properties
    }

    /// [`Trust::admit`] for a delivered message, in place.
    pub fn admit_message(&self, message: &mut DeliveredMessage) {
        message.properties = self.admit(&message.exchange, &message.properties);
    }

    /// Why an admitted message's event must be refused as a `validation` failure, if it
    /// must: an untrusted publisher, or an email of a domain HR does not own. Returns the
    /// metric reason with the error; the caller counts it ([`Trust::count_refusal`]) once
    /// the event is settled, so a removal's two lane copies count once.
    pub fn refusal(
        &self,
        message: &DeliveredMessage,
        event: &HrEvent,
    ) -> Option<(&'static str, ValidationError)> {
        let publisher = recorded_publisher(&message.properties);
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

    fn names() -> TopologyNames {
        TopologyNames::prefixed("t.")
    }

    fn with_headers(pairs: &[(&str, &str)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (k, v) in pairs {
            headers::set_str(&mut table, k, v);
        }
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn own_routes_are_the_service_exchanges_and_never_the_input_or_default() {
        let topology = names();
        let own = OwnRoutes::new(&topology);
        let wq = &topology.work_queue;
        for exchange in [
            format!("{wq}.retry"),
            format!("{wq}.delay"),
            format!("{wq}.replay"),
            format!("{wq}.partitions"),
        ] {
            assert!(own.contains(&exchange), "{exchange}");
        }
        assert!(!own.contains(&topology.input_exchange));
        assert!(!own.contains(""));
        assert!(!own.contains(&topology.dead_letter_exchange));
        assert!(!own.contains(&format!("{wq}.retry.evil")));
    }

    #[test]
    fn own_headers_are_untrusted_only_off_the_own_routes() {
        let props = with_headers(&[
            (GUARD_BYPASS, "released"),
            (SCHEDULED_KIND, "activation"),
            (SCHEDULED_FOR, "2020-01-01T00:00:00Z"),
            (headers::REPLAY_COUNT, "1"),
            ("traceparent", "00-a-b-01"),
        ]);
        let table = props.headers().as_ref();
        assert_eq!(
            untrusted_own_headers(false, table),
            vec![GUARD_BYPASS, SCHEDULED_KIND, SCHEDULED_FOR]
        );
        assert!(untrusted_own_headers(true, table).is_empty());
        assert!(untrusted_own_headers(false, None).is_empty());
    }

    #[test]
    fn admitting_from_outside_strips_forged_headers_and_records_the_publisher() {
        let props = with_headers(&[
            (GUARD_BYPASS, "released"),
            (ORIGINAL_USER_ID, "hr-publisher"),
            (headers::REPLAY_COUNT, "2"),
        ])
        .with_user_id("mallory".into())
        .with_expiration("1000".into())
        .with_message_id("m-1".into())
        .with_delivery_mode(2);
        let admitted = admit(false, &props);
        assert_eq!(admitted.forged, vec![GUARD_BYPASS, ORIGINAL_USER_ID]);
        let p = &admitted.properties;
        assert_eq!(p.user_id(), &None);
        assert_eq!(p.expiration(), &None);
        assert_eq!(p.message_id().as_ref().map(|m| m.as_str()), Some("m-1"));
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(recorded_publisher(p), Some("mallory"));
        assert_eq!(headers::get_str(p.headers().as_ref(), GUARD_BYPASS), None);
        // The replay marker may come from anywhere.
        assert_eq!(
            headers::get_u64(p.headers().as_ref(), headers::REPLAY_COUNT),
            Some(2)
        );
    }

    #[test]
    fn admitting_an_own_copy_keeps_its_headers_and_its_recorded_publisher() {
        let props = with_headers(&[(GUARD_BYPASS, "released"), (ORIGINAL_USER_ID, "hr")])
            .with_user_id("iam-provisioner".into());
        let admitted = admit(true, &props);
        assert!(admitted.forged.is_empty());
        assert_eq!(recorded_publisher(&admitted.properties), Some("hr"));
        assert_eq!(admitted.properties.user_id(), &None);
        assert_eq!(
            headers::get_str(admitted.properties.headers().as_ref(), GUARD_BYPASS),
            Some("released")
        );
    }

    #[test]
    fn a_message_without_publisher_or_headers_stays_without_them() {
        let admitted = admit(false, &BasicProperties::default());
        assert_eq!(recorded_publisher(&admitted.properties), None);
        assert!(admitted.forged.is_empty());
    }

    fn death(queue: &str) -> AMQPValue {
        let mut record = FieldTable::default();
        headers::set_str(&mut record, "queue", queue);
        headers::set_str(&mut record, "reason", "expired");
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(record)].into())
    }

    #[test]
    fn a_replay_of_a_message_the_broker_dead_lettered_loses_its_own_headers() {
        let mut table = FieldTable::default();
        headers::set_str(&mut table, GUARD_BYPASS, "released");
        headers::set_str(&mut table, ORIGINAL_USER_ID, "forged");
        table.insert("x-death".into(), death("iam-provisioner"));
        let raw = BasicProperties::default()
            .with_headers(table)
            .with_user_id("mallory".into())
            .with_expiration("1".into());
        let replayed = replay_properties(&raw);
        assert_eq!(replayed.user_id(), &None);
        assert_eq!(replayed.expiration(), &None);
        let h = replayed.headers().as_ref();
        assert_eq!(headers::get_str(h, GUARD_BYPASS), None);
        assert_eq!(headers::get_str(h, ORIGINAL_USER_ID), Some("mallory"));
    }

    #[test]
    fn a_replay_of_the_service_own_copy_keeps_its_own_headers() {
        let mut table = FieldTable::default();
        headers::set_str(&mut table, SCHEDULED_KIND, "activation");
        headers::set_str(&mut table, ORIGINAL_USER_ID, "hr");
        table.insert("x-death".into(), death("iam-provisioner.delay.1m"));
        let copy = BasicProperties::default().with_headers(table);
        let replayed = replay_properties(&copy);
        let h = replayed.headers().as_ref();
        assert_eq!(headers::get_str(h, SCHEDULED_KIND), Some("activation"));
        assert_eq!(headers::get_str(h, ORIGINAL_USER_ID), Some("hr"));
        // The same from today's (quorum) delay queues.
        let mut table = FieldTable::default();
        headers::set_str(&mut table, SCHEDULED_KIND, "activation");
        table.insert("x-death".into(), death("iam-provisioner.parked.1m"));
        let replayed = replay_properties(&BasicProperties::default().with_headers(table));
        assert_eq!(
            headers::get_str(replayed.headers().as_ref(), SCHEDULED_KIND),
            Some("activation")
        );
        // No x-death at all: the service published it to the dead-letter exchange.
        let mut table = FieldTable::default();
        headers::set_str(&mut table, GUARD_BYPASS, "released");
        let replayed = replay_properties(&BasicProperties::default().with_headers(table));
        assert_eq!(
            headers::get_str(replayed.headers().as_ref(), GUARD_BYPASS),
            Some("released")
        );
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
