//! Reading and writing AMQP headers: the few this service understands, read leniently
//! (publishers use different AMQP types for the same number), written in one way.

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

/// `x-replay-count` of a replayed message.
pub const REPLAY_COUNT: &str = "x-replay-count";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state.
pub const TRACESTATE: &str = "tracestate";

/// A header as a string, if it is a string.
pub fn get_str<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a str> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// A header as a non-negative integer, whatever integer type or decimal string it was
/// sent as.
pub fn get_u64(headers: Option<&FieldTable>, name: &str) -> Option<u64> {
    let value = headers?.inner().get(name)?;
    let number: i128 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        AMQPValue::Timestamp(v) => (*v).into(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok()?,
        _ => return None,
    };
    u64::try_from(number).ok()
}

/// Sets a string header.
pub fn set_str(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
}

/// Sets an integer header (a signed 64-bit AMQP long, which every client reads).
pub fn set_int(headers: &mut FieldTable, name: &str, value: i64) {
    headers.insert(ShortString::from(name), AMQPValue::LongLongInt(value));
}

/// The W3C trace headers of a message, to carry onward.
pub fn trace_context(headers: Option<&FieldTable>) -> FieldTable {
    let mut carried = FieldTable::default();
    for name in [TRACEPARENT, TRACESTATE] {
        if let Some(value) = get_str(headers, name) {
            set_str(&mut carried, name, value);
        }
    }
    carried
}

/// The properties of a copy the service publishes: the original's, without `user_id`
/// (the broker refuses a `user_id` other than the publishing connection's, so a copy
/// keeping it would fail forever) and without `expiration` (a publisher's TTL would let
/// a dead letter, a parked removal or a held one silently expire).
pub fn clean_properties(properties: &BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default();
    if let Some(v) = properties.content_type() {
        copy = copy.with_content_type(v.clone());
    }
    if let Some(v) = properties.content_encoding() {
        copy = copy.with_content_encoding(v.clone());
    }
    if let Some(v) = properties.headers() {
        copy = copy.with_headers(v.clone());
    }
    if let Some(v) = properties.delivery_mode() {
        copy = copy.with_delivery_mode(*v);
    }
    if let Some(v) = properties.priority() {
        copy = copy.with_priority(*v);
    }
    if let Some(v) = properties.correlation_id() {
        copy = copy.with_correlation_id(v.clone());
    }
    if let Some(v) = properties.reply_to() {
        copy = copy.with_reply_to(v.clone());
    }
    if let Some(v) = properties.message_id() {
        copy = copy.with_message_id(v.clone());
    }
    if let Some(v) = properties.timestamp() {
        copy = copy.with_timestamp(*v);
    }
    if let Some(v) = properties.kind() {
        copy = copy.with_type(v.clone());
    }
    if let Some(v) = properties.app_id() {
        copy = copy.with_app_id(v.clone());
    }
    if let Some(v) = properties.cluster_id() {
        copy = copy.with_cluster_id(v.clone());
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_read_whatever_their_amqp_type() {
        let mut table = FieldTable::default();
        table.insert("a".into(), AMQPValue::ShortShortUInt(2));
        table.insert("b".into(), AMQPValue::LongLongInt(3));
        table.insert("c".into(), AMQPValue::LongString("4".into()));
        table.insert("d".into(), AMQPValue::LongInt(-1));
        assert_eq!(get_u64(Some(&table), "a"), Some(2));
        assert_eq!(get_u64(Some(&table), "b"), Some(3));
        assert_eq!(get_u64(Some(&table), "c"), Some(4));
        assert_eq!(get_u64(Some(&table), "d"), None);
        assert_eq!(get_u64(None, "a"), None);
    }

    #[test]
    fn trace_context_keeps_only_trace_headers() {
        let mut table = FieldTable::default();
        set_str(&mut table, TRACEPARENT, "00-abc-def-01");
        set_str(&mut table, "x-other", "no");
        let carried = trace_context(Some(&table));
        assert_eq!(get_str(Some(&carried), TRACEPARENT), Some("00-abc-def-01"));
        assert_eq!(get_str(Some(&carried), "x-other"), None);
    }
}
