//! Broker objects beside the work queue for messages that must wait: future-dated
//! events (delay queues) and removals held by the offboarding guard (the hold queue),
//! and the exchange through which both return to the work queue.
//!
//! Every name starts with the work queue's name (contract section 1):
//! - `<work queue>.retry`: topic exchange; the work queue is bound to it with `#`, so
//!   a message published there reaches the work queue alone, with its routing key
//!   (the event type) kept — other queues bound to the input exchange never see it.
//! - `<work queue>.delay`: headers exchange; parked messages carry `x-delay-bucket`.
//! - `<work queue>.parked.<bucket>`: quorum queues with `x-message-ttl` = the bucket and
//!   `x-dead-letter-exchange` = `<work queue>.retry`; nobody consumes them, a message
//!   expires back into the work queue.
//! - `<work queue>.holding`: quorum queue nobody consumes; the operator's
//!   `held release|discard` empties it.
//!
//! Why quorum queues with `x-dead-letter-strategy: at-least-once`: a classic queue
//! dead-letters at most once — if the retry exchange, its binding or the work queue is
//! missing or refuses the message when it expires, the broker drops it, and a parked
//! removal is lost without an outcome. A quorum queue with the at-least-once strategy
//! keeps the expired message until the target confirmed it and retries meanwhile. The
//! strategy needs `x-overflow: reject-publish` (RabbitMQ 3.10 and later; the explicit
//! `x-queue-type` also keeps a vhost's default type from choosing for us). The classic
//! queues of earlier versions (`<work queue>.delay.<bucket>`, `<work queue>.held`) are
//! drained into these by `super::migration`; docs/upgrade-queues.md.
//!
//! This module names the objects and builds the copies; `super::topology` declares the
//! objects, and `super::settle` publishes the copies.

use super::headers;
use super::publisher::{DeliveredMessage, PublishError, Publisher};
use crate::domain::outcome::format_timestamp;
use crate::domain::schedule::{
    DelayBucket, Scheduled, ScheduledKind, BUCKETS, DELAY_BUCKET, RECHECK_UNTIL, SCHEDULED_FOR,
    SCHEDULED_KIND,
};
use crate::telemetry::metrics::PublishedMessage;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Header on a held message: when the guard held it (RFC 3339).
pub const HELD_AT: &str = "x-held-at";
/// Header set by `held release`: the removal was approved by an operator and bypasses
/// the offboarding guard (one of `crate::trust`'s own-route headers).
pub use crate::trust::GUARD_BYPASS;
/// Header on held and released messages: the event type, since the hold queue is
/// reached through the default exchange under the queue's name.
pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
/// Header on held and parked messages: where the message was first published.
pub const ORIGINAL_EXCHANGE: &str = "x-original-exchange";
/// Header on held messages: the employee id, for `held --employee-id`.
pub const EMPLOYEE_ID: &str = "x-employee-id";

/// Headers the broker adds when it dead-letters; a re-published copy must not carry
/// them, or they would grow and mislead.
const BROKER_DEATH_HEADERS: [&str; 7] = [
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

/// Deliveries a held message may have before the broker dead-letters it. Every
/// `held release|discard` (even `--dry-run`) takes the messages it does not select
/// and returns them, and a quorum queue counts each return as a delivery; RabbitMQ 4.x
/// would otherwise apply its default of 20 and dead-letter a held removal after twenty
/// listings. A thousand listings of one held removal do not happen; if they did, the
/// removal goes to the dead-letter queue (at least once), not nowhere.
pub const HOLD_DELIVERY_LIMIT: i64 = 1000;

/// The names of the waiting-room objects of one work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkingNames {
    pub retry_exchange: String,
    pub delay_exchange: String,
    pub held_queue: String,
    /// The classic hold queue of earlier versions, drained at start-up.
    pub legacy_held_queue: String,
    work_queue: String,
}

impl ParkingNames {
    /// The names for `work_queue`.
    pub fn for_work_queue(work_queue: &str) -> Self {
        Self {
            retry_exchange: format!("{work_queue}.retry"),
            delay_exchange: format!("{work_queue}.delay"),
            held_queue: format!("{work_queue}.holding"),
            legacy_held_queue: format!("{work_queue}.held"),
            work_queue: work_queue.to_owned(),
        }
    }

    /// The work queue these objects belong to.
    pub fn work_queue(&self) -> &str {
        &self.work_queue
    }

    /// The queue of one delay bucket.
    pub fn delay_queue(&self, bucket: &DelayBucket) -> String {
        format!("{}.parked.{}", self.work_queue, bucket.name)
    }

    /// The classic queue of one delay bucket in earlier versions, drained at start-up.
    pub fn legacy_delay_queue(&self, bucket: &DelayBucket) -> String {
        format!("{}.delay.{}", self.work_queue, bucket.name)
    }

    /// Every queue, for tests' clean-up.
    pub fn queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = BUCKETS.iter().map(|b| self.delay_queue(b)).collect();
        queues.push(self.held_queue.clone());
        queues
    }

    /// Every queue of earlier versions, for tests' clean-up.
    pub fn legacy_queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = BUCKETS.iter().map(|b| self.legacy_delay_queue(b)).collect();
        queues.push(self.legacy_held_queue.clone());
        queues
    }
}

/// The headers of `message` without the broker's dead-lettering records.
fn carried_headers(properties: &BasicProperties) -> BTreeMap<ShortString, AMQPValue> {
    let mut table: BTreeMap<ShortString, AMQPValue> = properties
        .headers()
        .as_ref()
        .map(|t| t.inner().clone())
        .unwrap_or_default();
    for name in BROKER_DEATH_HEADERS {
        table.remove(name);
    }
    table
}

/// Properties for a copy: persistent, with `headers`, and the original's other
/// properties except `expiration` (a publisher's TTL would cut a wait short) and
/// `user-id` (the broker checks it against the publishing connection's user).
fn durable_copy(properties: &BasicProperties, headers: FieldTable) -> BasicProperties {
    headers::clean_properties(properties)
        .with_headers(headers)
        .with_delivery_mode(2)
}

/// A message ready to publish: (exchange, routing key, body, properties).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// The copy of `message` parked in `bucket` until `schedule.due`: same body, routing
/// key and properties, plus the schedule headers.
pub fn parked_copy(
    names: &ParkingNames,
    message: &DeliveredMessage,
    schedule: Scheduled,
    bucket: DelayBucket,
) -> Outgoing {
    let mut table = FieldTable::from(carried_headers(&message.properties));
    headers::set_str(&mut table, SCHEDULED_KIND, schedule.kind.as_str());
    headers::set_str(&mut table, SCHEDULED_FOR, &format_timestamp(schedule.due));
    headers::set_str(&mut table, DELAY_BUCKET, bucket.name);
    if headers::get_str(Some(&table), ORIGINAL_EXCHANGE).is_none() {
        headers::set_str(&mut table, ORIGINAL_EXCHANGE, &message.exchange);
    }
    Outgoing {
        exchange: names.delay_exchange.clone(),
        routing_key: message.routing_key.clone(),
        body: message.body.clone(),
        properties: durable_copy(&message.properties, table),
    }
}

/// The copy of a removal that found nobody by employee id alone, parked until its next
/// check at `due`; it carries the last moment it is checked, `until`.
pub fn recheck_copy(
    names: &ParkingNames,
    message: &DeliveredMessage,
    due: OffsetDateTime,
    until: OffsetDateTime,
    bucket: DelayBucket,
) -> Outgoing {
    let schedule = Scheduled {
        kind: ScheduledKind::RemovalRecheck,
        due,
    };
    let mut out = parked_copy(names, message, schedule, bucket);
    let mut table = out.properties.headers().clone().unwrap_or_default();
    headers::set_str(&mut table, RECHECK_UNTIL, &format_timestamp(until));
    out.properties = out.properties.with_headers(table);
    out
}

/// The copy of a removal held by the guard, for the hold queue (through the default
/// exchange).
pub fn held_copy(
    names: &ParkingNames,
    message: &DeliveredMessage,
    employee_id: Option<&str>,
    now: OffsetDateTime,
) -> Outgoing {
    let mut table = FieldTable::from(carried_headers(&message.properties));
    headers::set_str(&mut table, HELD_AT, &format_timestamp(now));
    headers::set_str(&mut table, ORIGINAL_ROUTING_KEY, &message.routing_key);
    if headers::get_str(Some(&table), ORIGINAL_EXCHANGE).is_none() {
        headers::set_str(&mut table, ORIGINAL_EXCHANGE, &message.exchange);
    }
    if let Some(id) = employee_id {
        headers::set_str(
            &mut table,
            EMPLOYEE_ID,
            &crate::domain::event::printable(id),
        );
    }
    Outgoing {
        exchange: String::new(),
        routing_key: names.held_queue.clone(),
        body: message.body.clone(),
        properties: durable_copy(&message.properties, table),
    }
}

/// The copy of a held message that an operator released: back to the work queue
/// (through the retry exchange, under its event type), past the guard.
pub fn released_copy(
    names: &ParkingNames,
    routing_key: &str,
    body: &[u8],
    properties: &BasicProperties,
) -> Outgoing {
    let mut table = carried_headers(properties);
    table.remove(HELD_AT);
    let mut table = FieldTable::from(table);
    headers::set_str(&mut table, GUARD_BYPASS, "released");
    Outgoing {
        exchange: names.retry_exchange.clone(),
        routing_key: routing_key.to_owned(),
        body: body.to_vec(),
        properties: durable_copy(properties, table),
    }
}

impl Outgoing {
    /// Publishes with `mandatory` and waits for the confirm: a missing queue is an
    /// error, never a silent loss.
    ///
    /// # Errors
    /// [`PublishError`] when the broker did not confirm or could not route it.
    pub async fn send(&self, publisher: &Publisher) -> Result<(), PublishError> {
        publisher
            .publish(
                PublishedMessage::Parked,
                &self.exchange,
                &self.routing_key,
                &self.body,
                self.properties.clone(),
                true,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::decode::envelope_of;
    use crate::pipeline::envelope::Envelope;
    use crate::pipeline::lanes::Lane;
    use time::macros::datetime;

    /// What the service reads back from a copy when it is delivered through its own
    /// routes.
    fn read_back(properties: &BasicProperties) -> Envelope {
        envelope_of(Lane::Work, "q.retry", "employee.removed", properties)
    }

    fn delivered() -> DeliveredMessage {
        let mut table = FieldTable::default();
        headers::set_str(&mut table, "traceparent", "00-abc-def-01");
        headers::set_str(&mut table, "x-first-death-queue", "q.delay.1s");
        table.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        DeliveredMessage {
            exchange: "hr.events".into(),
            routing_key: "employee.removed".into(),
            properties: BasicProperties::default()
                .with_message_id("ev-1".into())
                .with_expiration("5000".into())
                .with_headers(table),
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn a_parked_copy_keeps_its_event_type_and_drops_broker_death_records() {
        let names = ParkingNames::for_work_queue("q");
        let schedule = Scheduled {
            kind: ScheduledKind::Removal,
            due: datetime!(2026-12-01 00:00 UTC),
        };
        let out = parked_copy(&names, &delivered(), schedule, BUCKETS[3]);
        assert_eq!(out.exchange, "q.delay");
        assert_eq!(out.routing_key, "employee.removed");
        let h = out.properties.headers().as_ref();
        assert_eq!(headers::get_str(h, SCHEDULED_KIND), Some("removal"));
        assert_eq!(
            headers::get_str(h, SCHEDULED_FOR),
            Some("2026-12-01T00:00:00Z")
        );
        assert_eq!(headers::get_str(h, DELAY_BUCKET), Some("1s"));
        assert_eq!(headers::get_str(h, ORIGINAL_EXCHANGE), Some("hr.events"));
        assert_eq!(headers::get_str(h, "traceparent"), Some("00-abc-def-01"));
        assert!(h.is_some_and(|t| !t.inner().contains_key("x-death")));
        assert_eq!(headers::get_str(h, "x-first-death-queue"), None);
        assert_eq!(
            out.properties.expiration(),
            &None,
            "a publisher TTL must not cut the wait"
        );
        assert_eq!(
            out.properties.message_id().as_ref().map(|m| m.as_str()),
            Some("ev-1")
        );
        assert_eq!(out.properties.delivery_mode(), &Some(2));
        assert_eq!(read_back(&out.properties).scheduled, Some(schedule));
    }

    #[test]
    fn a_recheck_copy_carries_its_next_check_and_its_deadline() {
        let names = ParkingNames::for_work_queue("q");
        let due = datetime!(2026-12-01 00:00:02 UTC);
        let until = datetime!(2026-12-01 00:02:00 UTC);
        let out = recheck_copy(&names, &delivered(), due, until, BUCKETS[3]);
        assert_eq!(out.exchange, "q.delay");
        assert_eq!(out.routing_key, "employee.removed");
        let back = read_back(&out.properties);
        assert_eq!(
            back.scheduled,
            Some(Scheduled {
                kind: ScheduledKind::RemovalRecheck,
                due
            })
        );
        assert_eq!(back.recheck_until, Some(until));
        assert_eq!(read_back(&delivered().properties).recheck_until, None);
    }

    #[test]
    fn a_held_copy_can_be_released_past_the_guard_under_its_event_type() {
        let names = ParkingNames::for_work_queue("q");
        let held = held_copy(
            &names,
            &delivered(),
            Some("E-1"),
            datetime!(2026-12-01 00:00 UTC),
        );
        assert_eq!(held.exchange, "");
        assert_eq!(held.routing_key, "q.holding");
        let h = held.properties.headers().as_ref();
        assert_eq!(
            headers::get_str(h, ORIGINAL_ROUTING_KEY),
            Some("employee.removed")
        );
        assert_eq!(headers::get_str(h, EMPLOYEE_ID), Some("E-1"));
        let released = released_copy(&names, "employee.removed", &held.body, &held.properties);
        assert_eq!(released.exchange, "q.retry");
        assert_eq!(released.routing_key, "employee.removed");
        assert!(read_back(&released.properties).guard_bypass);
        assert!(!read_back(&delivered().properties).guard_bypass);
        assert_eq!(
            headers::get_str(released.properties.headers().as_ref(), HELD_AT),
            None
        );
    }
}
