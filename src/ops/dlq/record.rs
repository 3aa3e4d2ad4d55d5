//! What a dead-lettered message says about itself, and the copy a replay publishes.
//!
//! Pure: these functions read and write message properties and bodies, never a socket,
//! so the rules an operator depends on (which routing key a replay uses, which headers a
//! replayed copy keeps) are tested here without a broker.
//!
//! Two kinds of message wait in the dead-letter queue: copies this service published
//! (with the headers of contract section 6), and messages the broker dead-lettered itself
//! (an operator's reject on the work queue, an expiry), which carry only RabbitMQ's
//! `x-death` header. Both are read; the second kind gets its facts from `x-death`.

/// Kept importable from here: a dead-letter record says whether the broker itself put it there.
pub use crate::amqp::dead_letter_watch::{broker_death, BrokerDeath};
use crate::amqp::dead_letter_watch::{death_routing_key, last_death, table_str};
use crate::amqp::headers;
use crate::amqp::publisher::dead_letter_headers as dl;
use crate::domain::outcome::format_timestamp;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use serde::Serialize;
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// When a replayed copy was published (RFC 3339, UTC); contract section 6.
pub const REPLAYED_AT: &str = "x-replayed-at";

/// The headers of one failure. A replayed copy starts afresh, so they are dropped from it;
/// if it fails again, the service writes them anew.
const PER_FAILURE_HEADERS: [&str; 6] = [
    dl::ERROR_KIND,
    dl::ERROR_MESSAGE,
    dl::ATTEMPTS,
    dl::FAILED_AT,
    dl::OKTA_ERROR_CODE,
    dl::OKTA_REQUEST_ID,
];

/// What an operator needs to know about one dead-lettered message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Position in the dead-letter queue when the command started, from 1 (the head).
    pub position: u64,
    /// The routing key the message was first published with: its event type.
    pub routing_key: String,
    /// The body's `event_id`, else the `message_id` property.
    pub event_id: Option<String>,
    /// `x-employee-id`, else the body's `employee.id`.
    pub employee_id: Option<String>,
    /// `x-error-kind`; for a message the broker dead-lettered, `broker:<reason>`.
    pub error_kind: Option<String>,
    /// `x-okta-error-code`, when Okta answered.
    pub okta_error_code: Option<String>,
    /// `x-okta-request-id`, for Okta support.
    pub okta_request_id: Option<String>,
    /// `x-attempts`: attempts made before the message was dead-lettered.
    pub attempts: Option<u64>,
    /// `x-failed-at`; for a message the broker dead-lettered, the time in `x-death`.
    #[serde(serialize_with = "serialize_optional_time")]
    pub failed_at: Option<OffsetDateTime>,
    /// `x-error-message`.
    pub error_message: Option<String>,
    /// `x-replay-count`: how often the message was replayed before; 0 when never.
    pub replay_count: u64,
}

impl DeadLetter {
    /// Reads a message as the dead-letter queue delivered it.
    pub fn read(
        position: u64,
        delivered_routing_key: &str,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Self {
        let table = properties.headers().as_ref();
        let death = last_death(table);
        let text = |name: &str| headers::get_str(table, name).map(str::to_owned);
        let body: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let body_text = |pointer: &str| {
            body.as_ref()
                .and_then(|b| b.pointer(pointer))
                .and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .filter(|s| !s.is_empty())
        };
        Self {
            position,
            routing_key: original_routing_key(table, delivered_routing_key),
            event_id: body_text("/event_id").or_else(|| {
                properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
            }),
            employee_id: text(dl::EMPLOYEE_ID).or_else(|| body_text("/employee/id")),
            error_kind: text(dl::ERROR_KIND).or_else(|| {
                death
                    .and_then(|d| table_str(d, "reason"))
                    .map(|reason| format!("broker:{reason}"))
            }),
            okta_error_code: text(dl::OKTA_ERROR_CODE),
            okta_request_id: text(dl::OKTA_REQUEST_ID),
            attempts: headers::get_u64(table, dl::ATTEMPTS),
            failed_at: text(dl::FAILED_AT)
                .and_then(|t| OffsetDateTime::parse(t.trim(), &Rfc3339).ok())
                .or_else(|| death.and_then(death_time)),
            error_message: text(dl::ERROR_MESSAGE),
            replay_count: headers::get_u64(table, headers::REPLAY_COUNT).unwrap_or(0),
        }
    }

    /// The first line of the error message, for a table cell.
    pub fn error_summary(&self) -> Option<&str> {
        self.error_message
            .as_deref()
            .and_then(|m| m.lines().find(|l| !l.trim().is_empty()))
            .map(str::trim)
    }
}

/// The routing key a message was first published with: `x-original-routing-key` (set
/// by this service), else the first routing key of the broker's `x-death` record, else
/// the key it was delivered with.
pub fn original_routing_key(table: Option<&FieldTable>, delivered_routing_key: &str) -> String {
    headers::get_str(table, dl::ORIGINAL_ROUTING_KEY)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .or_else(|| last_death(table).and_then(death_routing_key))
        .unwrap_or_else(|| delivered_routing_key.to_owned())
}

/// The copy of a dead letter that replay publishes: the routing key to publish it
/// under, and its properties — the original ones, with `x-replay-count` one higher,
/// `x-replayed-at` set, the last failure's headers removed (a fresh attempt count) and
/// the `x-original-*` headers kept (added from `x-death` when the broker dead-lettered
/// the message, so its lineage survives a second failure).
pub fn replay_copy(
    properties: &BasicProperties,
    delivered_routing_key: &str,
    now: OffsetDateTime,
) -> (String, BasicProperties) {
    let trusted = crate::amqp::decode::replay_properties(properties);
    let properties = &trusted;
    let original = properties.headers().as_ref();
    let routing_key = original_routing_key(original, delivered_routing_key);
    let previous_replays = headers::get_u64(original, headers::REPLAY_COUNT).unwrap_or(0);
    let original_exchange = headers::get_str(original, dl::ORIGINAL_EXCHANGE)
        .map(str::to_owned)
        .or_else(|| last_death(original).and_then(|d| table_str(d, "exchange")));

    let mut table: BTreeMap<ShortString, AMQPValue> =
        original.map(|t| t.inner().clone()).unwrap_or_default();
    for name in PER_FAILURE_HEADERS {
        table.remove(name);
    }
    let mut copy = FieldTable::from(table);
    headers::set_int(
        &mut copy,
        headers::REPLAY_COUNT,
        i64::try_from(previous_replays.saturating_add(1)).unwrap_or(i64::MAX),
    );
    headers::set_str(&mut copy, REPLAYED_AT, &format_timestamp(now));
    headers::set_str(&mut copy, dl::ORIGINAL_ROUTING_KEY, &routing_key);
    if let Some(exchange) = original_exchange {
        headers::set_str(&mut copy, dl::ORIGINAL_EXCHANGE, &exchange);
    }
    // No `user_id` (the broker would refuse it from the operator's connection) and no
    // `expiration` (a replayed removal must not silently expire): `crate::amqp::decode`.
    (
        routing_key,
        headers::clean_properties(properties).with_headers(copy),
    )
}

fn death_time(death: &FieldTable) -> Option<OffsetDateTime> {
    let seconds = headers::get_u64(Some(death), "time")?;
    OffsetDateTime::from_unix_timestamp(i64::try_from(seconds).ok()?).ok()
}

/// Serialises an optional time as RFC 3339 (UTC, milliseconds), like outcome events.
pub(crate) fn serialize_optional_time<S: serde::Serializer>(
    at: &Option<OffsetDateTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_str(&format_timestamp(*at)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::dead_letter_watch::X_DEATH;
    use lapin::types::FieldArray;
    use time::macros::datetime;

    fn service_dead_letter() -> BasicProperties {
        let mut table = FieldTable::default();
        headers::set_str(&mut table, dl::ORIGINAL_EXCHANGE, "hr.events");
        headers::set_str(&mut table, dl::ORIGINAL_ROUTING_KEY, "employee.added");
        headers::set_str(&mut table, dl::ERROR_KIND, "okta");
        headers::set_str(
            &mut table,
            dl::ERROR_MESSAGE,
            "\nOkta refused: 403 E0000006\nmore detail",
        );
        headers::set_int(&mut table, dl::ATTEMPTS, 1);
        headers::set_str(&mut table, dl::FAILED_AT, "2026-11-28T09:00:01.5Z");
        headers::set_str(&mut table, dl::OKTA_ERROR_CODE, "E0000006");
        headers::set_str(&mut table, dl::OKTA_REQUEST_ID, "req-1");
        headers::set_str(&mut table, "traceparent", "00-abc-def-01");
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("evt-1".into())
            .with_delivery_mode(2)
            .with_headers(table)
    }

    /// The headers RabbitMQ adds when it dead-letters a message rejected from the work
    /// queue.
    fn broker_dead_letter() -> BasicProperties {
        let mut death = FieldTable::default();
        headers::set_str(&mut death, "reason", "rejected");
        headers::set_str(&mut death, "queue", "iam-provisioner");
        headers::set_str(&mut death, "exchange", "hr.events");
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
                "employee.removed".into(),
            )])),
        );
        death.insert("time".into(), AMQPValue::Timestamp(1_795_856_400));
        let mut table = FieldTable::default();
        table.insert(
            X_DEATH.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn a_service_dead_letter_is_read_from_its_headers_and_body() {
        let body = br#"{"event_id":"evt-body","employee":{"id":"E-1","email":"a@b.c"}}"#;
        let record = DeadLetter::read(3, "employee.added", &service_dead_letter(), body);
        assert_eq!(record.position, 3);
        assert_eq!(record.routing_key, "employee.added");
        assert_eq!(record.event_id.as_deref(), Some("evt-body"));
        assert_eq!(record.employee_id.as_deref(), Some("E-1"));
        assert_eq!(record.error_kind.as_deref(), Some("okta"));
        assert_eq!(record.okta_error_code.as_deref(), Some("E0000006"));
        assert_eq!(record.okta_request_id.as_deref(), Some("req-1"));
        assert_eq!(record.attempts, Some(1));
        assert_eq!(record.failed_at, Some(datetime!(2026-11-28 09:00:01.5 UTC)));
        assert_eq!(record.error_summary(), Some("Okta refused: 403 E0000006"));
        assert_eq!(record.replay_count, 0);
    }

    #[test]
    fn the_employee_id_header_wins_over_the_body_and_the_message_id_stands_in_for_the_event_id() {
        let mut properties = service_dead_letter();
        let mut table = properties.headers().clone().unwrap_or_default();
        headers::set_str(&mut table, dl::EMPLOYEE_ID, "E-header");
        properties = properties.with_headers(table);
        let record = DeadLetter::read(1, "employee.added", &properties, b"{not json");
        assert_eq!(record.employee_id.as_deref(), Some("E-header"));
        assert_eq!(record.event_id.as_deref(), Some("evt-1"));
    }

    #[test]
    fn the_broker_death_is_the_last_hand_only_without_the_services_failure_headers() {
        let death = broker_death(broker_dead_letter().headers().as_ref()).expect("a death");
        assert_eq!(death.reason, "rejected");
        assert_eq!(death.queue, "iam-provisioner");
        assert_eq!(death.routing_key.as_deref(), Some("employee.removed"));
        assert_eq!(broker_death(service_dead_letter().headers().as_ref()), None);
        // Broker-dead-lettered, replayed, then dead-lettered by the service: its own.
        let mut table = broker_dead_letter().headers().clone().unwrap_or_default();
        headers::set_str(&mut table, dl::ERROR_KIND, "okta");
        assert_eq!(broker_death(Some(&table)), None);
        assert_eq!(broker_death(None), None);
    }

    #[test]
    fn a_broker_dead_letter_is_read_from_x_death() {
        let record = DeadLetter::read(1, "employee.removed", &broker_dead_letter(), b"{}");
        assert_eq!(record.routing_key, "employee.removed");
        assert_eq!(record.error_kind.as_deref(), Some("broker:rejected"));
        assert_eq!(
            record.failed_at,
            OffsetDateTime::from_unix_timestamp(1_795_856_400).ok()
        );
        assert_eq!(record.attempts, None);
    }

    #[test]
    fn the_original_routing_key_comes_from_the_header_then_x_death_then_the_delivery() {
        let service = service_dead_letter();
        assert_eq!(
            original_routing_key(service.headers().as_ref(), "other"),
            "employee.added"
        );
        let broker = broker_dead_letter();
        assert_eq!(
            original_routing_key(broker.headers().as_ref(), "other"),
            "employee.removed"
        );
        assert_eq!(
            original_routing_key(None, "employee.updated"),
            "employee.updated"
        );
    }

    #[test]
    fn a_replayed_copy_starts_afresh_and_counts_its_replays() {
        let now = datetime!(2026-12-01 10:00:00 UTC);
        let (key, copy) = replay_copy(&service_dead_letter(), "employee.added", now);
        assert_eq!(key, "employee.added");
        let table = copy.headers().as_ref();
        for gone in PER_FAILURE_HEADERS {
            assert!(headers::get_str(table, gone).is_none(), "{gone} removed");
            assert!(headers::get_u64(table, gone).is_none(), "{gone} removed");
        }
        assert_eq!(headers::get_u64(table, headers::REPLAY_COUNT), Some(1));
        assert_eq!(
            headers::get_str(table, REPLAYED_AT),
            Some("2026-12-01T10:00:00Z")
        );
        assert_eq!(
            headers::get_str(table, dl::ORIGINAL_EXCHANGE),
            Some("hr.events")
        );
        assert_eq!(
            headers::get_str(table, "traceparent"),
            Some("00-abc-def-01")
        );
        assert_eq!(copy.message_id(), &Some("evt-1".into()));
        assert_eq!(copy.content_type(), &Some("application/json".into()));
        assert_eq!(copy.delivery_mode(), &Some(2));

        let (_, again) = replay_copy(&copy, "employee.added", now);
        assert_eq!(
            headers::get_u64(again.headers().as_ref(), headers::REPLAY_COUNT),
            Some(2)
        );
    }

    #[test]
    fn a_replayed_copy_carries_no_user_id_or_expiration_and_records_the_publisher() {
        let now = datetime!(2026-12-01 10:00:00 UTC);
        let original = service_dead_letter()
            .with_user_id("hr-publisher".into())
            .with_expiration("1000".into());
        let (_, copy) = replay_copy(&original, "employee.added", now);
        assert_eq!(
            copy.user_id(),
            &None,
            "the operator's connection would be refused"
        );
        assert_eq!(copy.expiration(), &None, "a replayed event must not expire");
        assert_eq!(
            headers::get_str(copy.headers().as_ref(), crate::trust::ORIGINAL_USER_ID),
            Some("hr-publisher")
        );
    }

    #[test]
    fn a_replayed_broker_dead_letter_gains_its_lineage_from_x_death() {
        let now = datetime!(2026-12-01 10:00:00 UTC);
        let (key, copy) = replay_copy(&broker_dead_letter(), "employee.removed", now);
        assert_eq!(key, "employee.removed");
        let table = copy.headers().as_ref();
        assert_eq!(
            headers::get_str(table, dl::ORIGINAL_ROUTING_KEY),
            Some("employee.removed")
        );
        assert_eq!(
            headers::get_str(table, dl::ORIGINAL_EXCHANGE),
            Some("hr.events")
        );
        assert!(
            table.is_some_and(|t| t.contains_key(X_DEATH)),
            "history kept"
        );
    }
}
