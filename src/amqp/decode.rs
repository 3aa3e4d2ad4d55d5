//! The first contact with a delivery: its AMQP properties and headers read once, into
//! the event and the typed [`Envelope`] the pipeline works with.
//!
//! Here the service's own headers that a delivery from outside its own exchanges
//! carried are removed (the rule is `crate::trust`'s, the stripping this module's), the
//! broker-validated publisher is recorded for every copy to carry, and `user_id` and
//! `expiration` are dropped so no copy inherits them. What remains of the delivery —
//! body, admitted properties, acker — stays in [`Inbound`] for the settle step
//! (`super::settle`), which alone publishes copies and acknowledges.

use super::headers;
use super::publisher::DeliveredMessage;
use crate::domain::event::{parse_message_bounded, printable, RawMessage};
use crate::domain::schedule::{
    Scheduled, ScheduledKind, BUCKETS, RECHECK_UNTIL, SCHEDULED_FOR, SCHEDULED_KIND,
};
use crate::pipeline::envelope::{Decoded, Envelope};
use crate::pipeline::lanes::{Lane, Lanes};
use crate::trust::{
    untrusted_own_headers, Trust, GUARD_BYPASS, ORIGINAL_USER_ID, OWN_ROUTE_HEADERS,
};
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Acker, BasicProperties};
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Header on held and parked copies (and dead letters): where the message was first
/// published.
const ORIGINAL_EXCHANGE: &str = "x-original-exchange";

/// What the adapter keeps of a delivery to settle it: the message as admitted (for its
/// copies) and its acker.
pub struct Inbound {
    pub message: DeliveredMessage,
    pub acker: Acker,
}

/// Reads `delivery`, from `lane`: parses its body (refusing bodies over
/// `max_body_bytes`), admits its properties and decodes its envelope.
pub fn decode(
    delivery: Delivery,
    lane: Lane,
    trust: &Trust,
    lanes: &Lanes,
    max_body_bytes: usize,
) -> (Inbound, Decoded) {
    let exchange = delivery.exchange.to_string();
    let routing_key = delivery.routing_key.to_string();
    let event = parse_message_bounded(
        RawMessage {
            routing_key: &routing_key,
            content_type: delivery
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str()),
            body: &delivery.data,
        },
        max_body_bytes,
    );
    let from_own_route = trust.own_routes().contains(&exchange);
    let admitted = admit(from_own_route, &delivery.properties);
    let mut envelope = envelope_of(lane, &exchange, &routing_key, &admitted.properties);
    envelope.twin_routed = lanes.has_twin(&exchange, &routing_key);
    envelope.from_own_route = from_own_route;
    envelope.forged_headers = admitted.forged;
    let message = DeliveredMessage {
        exchange,
        routing_key,
        properties: admitted.properties,
        body: delivery.data,
    };
    let inbound = Inbound {
        message,
        acker: delivery.acker,
    };
    (inbound, Decoded { envelope, event })
}

/// The envelope of a message with admitted `properties`.
pub fn envelope_of(
    lane: Lane,
    exchange: &str,
    routing_key: &str,
    properties: &BasicProperties,
) -> Envelope {
    let table = properties.headers().as_ref();
    let timestamp =
        |name| headers::get_str(table, name).and_then(|v| OffsetDateTime::parse(v, &Rfc3339).ok());
    let scheduled = headers::get_str(table, SCHEDULED_KIND)
        .and_then(ScheduledKind::parse)
        .zip(timestamp(SCHEDULED_FOR))
        .map(|(kind, due)| Scheduled { kind, due });
    let trace_context = [headers::TRACEPARENT, headers::TRACESTATE]
        .into_iter()
        .filter_map(|name| Some((name.to_owned(), headers::get_str(table, name)?.to_owned())))
        .collect();
    Envelope {
        lane,
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
        message_id: properties.message_id().as_ref().map(|m| m.to_string()),
        twin_routed: false,
        scheduled,
        recheck_until: timestamp(RECHECK_UNTIL),
        replay_count: headers::get_u64(table, headers::REPLAY_COUNT)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .unwrap_or(0),
        guard_bypass: headers::get_str(table, GUARD_BYPASS).is_some(),
        trace_context,
        original_exchange: headers::get_str(table, ORIGINAL_EXCHANGE).map(str::to_owned),
        publisher: headers::get_str(table, ORIGINAL_USER_ID).map(str::to_owned),
        from_own_route: false,
        forged_headers: Vec::new(),
    }
}

/// The trace headers of an envelope, as an AMQP table for the messages it causes.
pub fn trace_table(envelope: &Envelope) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in &envelope.trace_context {
        headers::set_str(&mut table, name, value);
    }
    table
}

/// A delivery's properties as the service keeps them after its first contact.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// The properties every later copy starts from: forged own headers removed, the
    /// publisher recorded in `x-original-user-id`, no `user_id`, no `expiration`.
    pub properties: BasicProperties,
    /// The own-route headers a delivery from outside carried (and lost).
    pub forged: Vec<&'static str>,
}

/// The first contact with a delivery's properties (pure): see [`Admitted`]. On an own
/// route the recorded publisher is the copy's; elsewhere it is the broker-validated
/// `user_id` (printable, bounded), and any recorded one is forged.
pub fn admit(from_own_route: bool, properties: &BasicProperties) -> Admitted {
    let original = properties.headers().as_ref();
    let forged = untrusted_own_headers(from_own_route, |name| {
        original.is_some_and(|t| t.inner().contains_key(name))
    });
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
    let mut cleaned = headers::clean_properties(properties);
    if had_headers {
        cleaned = cleaned.with_headers(table);
    }
    Admitted {
        properties: cleaned,
        forged,
    }
}

/// [`admit`] for a delivery from `exchange`, logging and counting forged own headers;
/// the partitioned intake's first contact, before it re-publishes.
pub fn admit_from(trust: &Trust, exchange: &str, properties: &BasicProperties) -> BasicProperties {
    let admitted = admit(trust.own_routes().contains(exchange), properties);
    trust.report_forged(
        exchange,
        properties.message_id().as_ref().map(|m| m.as_str()),
        properties.user_id().as_ref().map(|u| u.as_str()),
        &admitted.forged,
    );
    admitted.properties
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
    headers::clean_properties(properties).with_headers(table)
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
    !BUCKETS.iter().any(|bucket| {
        queue.ends_with(&format!(".parked.{}", bucket.name))
            || queue.ends_with(&format!(".delay.{}", bucket.name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn with_headers(pairs: &[(&str, &str)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (k, v) in pairs {
            headers::set_str(&mut table, k, v);
        }
        BasicProperties::default().with_headers(table)
    }

    fn recorded_publisher(properties: &BasicProperties) -> Option<&str> {
        headers::get_str(properties.headers().as_ref(), ORIGINAL_USER_ID)
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
        let envelope = envelope_of(Lane::Work, "hr.events", "employee.removed", p);
        assert!(!envelope.guard_bypass);
        assert_eq!(envelope.publisher.as_deref(), Some("mallory"));
        assert_eq!(envelope.replay_count, 2);
    }

    #[test]
    fn admitting_an_own_copy_keeps_its_headers_and_its_recorded_publisher() {
        let props = with_headers(&[(GUARD_BYPASS, "released"), (ORIGINAL_USER_ID, "hr")])
            .with_user_id("iam-provisioner".into());
        let admitted = admit(true, &props);
        assert!(admitted.forged.is_empty());
        assert_eq!(recorded_publisher(&admitted.properties), Some("hr"));
        assert_eq!(admitted.properties.user_id(), &None);
        let envelope = envelope_of(
            Lane::Work,
            "wq.retry",
            "employee.removed",
            &admitted.properties,
        );
        assert!(envelope.guard_bypass);
        assert_eq!(envelope.publisher.as_deref(), Some("hr"));
    }

    #[test]
    fn a_message_without_publisher_or_headers_stays_without_them() {
        let admitted = admit(false, &BasicProperties::default());
        assert_eq!(recorded_publisher(&admitted.properties), None);
        assert!(admitted.forged.is_empty());
        assert_eq!(admitted.properties.headers(), &None);
        assert_eq!(
            envelope_of(
                Lane::Leavers,
                "hr.events",
                "employee.removed",
                &admitted.properties
            ),
            Envelope::plain(Lane::Leavers, "hr.events", "employee.removed")
        );
    }

    #[test]
    fn the_envelope_reads_schedule_replay_trace_and_lineage_once() {
        let mut props = with_headers(&[
            (SCHEDULED_KIND, "removal-recheck"),
            (SCHEDULED_FOR, "2026-12-01T00:00:02Z"),
            (RECHECK_UNTIL, "2026-12-01T00:02:00Z"),
            (headers::TRACEPARENT, "00-abc-def-01"),
            (ORIGINAL_EXCHANGE, "hr.events"),
            ("x-other", "ignored"),
        ])
        .with_message_id("m-9".into());
        let mut table = props.headers().clone().unwrap_or_default();
        table.insert(headers::REPLAY_COUNT.into(), AMQPValue::ShortShortUInt(3));
        props = props.with_headers(table);
        let envelope = envelope_of(Lane::Work, "wq.retry", "employee.removed", &props);
        assert_eq!(
            envelope.scheduled,
            Some(Scheduled {
                kind: ScheduledKind::RemovalRecheck,
                due: datetime!(2026-12-01 00:00:02 UTC)
            })
        );
        assert_eq!(
            envelope.recheck_until,
            Some(datetime!(2026-12-01 00:02 UTC))
        );
        assert_eq!(envelope.replay_count, 3);
        assert_eq!(envelope.message_id.as_deref(), Some("m-9"));
        assert_eq!(envelope.original_exchange.as_deref(), Some("hr.events"));
        assert_eq!(
            envelope.trace_context,
            BTreeMap::from([(headers::TRACEPARENT.to_owned(), "00-abc-def-01".to_owned())])
        );
        assert_eq!(
            headers::get_str(Some(&trace_table(&envelope)), headers::TRACEPARENT),
            Some("00-abc-def-01")
        );
        // A schedule that cannot be read is no schedule.
        let unreadable = with_headers(&[(SCHEDULED_KIND, "removal"), (SCHEDULED_FOR, "soon")]);
        assert_eq!(
            envelope_of(Lane::Work, "wq.retry", "employee.removed", &unreadable).scheduled,
            None
        );
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
}
