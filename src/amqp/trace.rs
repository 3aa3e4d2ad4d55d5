//! Trace context across the broker, per OpenTelemetry's messaging conventions.
//!
//! The W3C `traceparent`/`tracestate` headers of a delivery become the parent of its
//! CONSUMER span (`process`); every message the service publishes gets a PRODUCER span
//! (`send <exchange>`) whose context replaces the trace headers it carries, so that the
//! trace id stays the one the HR system started and the parent is this service's span.
//! Attributes are the conventions' (`messaging.system`, `messaging.destination.name`,
//! `messaging.operation.type`, `messaging.rabbitmq.destination.routing_key`) plus the
//! bounded `event.type` and `outcome.status` — never an employee id or an email.
//!
//! Without the OpenTelemetry layer (no exporter configured, or an embedding that
//! installs none) spans carry no trace context; a published message then keeps the
//! trace headers of its input unchanged, and the service is transparent to tracing.

use super::headers;
use crate::domain::event::printable;
use crate::pipeline::envelope::Envelope;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::BTreeMap;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Reads the W3C headers from an AMQP header table.
struct HeaderExtractor<'a>(Option<&'a FieldTable>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        headers::get_str(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|table| table.inner().keys().map(ShortString::as_str).collect())
            .unwrap_or_default()
    }
}

/// Writes the W3C headers into an AMQP header table; an empty `tracestate` is left out.
struct HeaderInjector<'a>(&'a mut BTreeMap<ShortString, AMQPValue>);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0
                .insert(ShortString::from(key), AMQPValue::LongString(value.into()));
        }
    }
}

/// The parent context a delivery's headers name; empty when they name none (or a
/// malformed one), which makes the consumer span the root of a new trace.
pub fn extract_parent(headers: Option<&FieldTable>) -> Context {
    TraceContextPropagator::new().extract_with_context(&Context::new(), &HeaderExtractor(headers))
}

/// Reads the W3C headers from a decoded envelope's trace context.
struct EnvelopeExtractor<'a>(&'a Envelope);

impl Extractor for EnvelopeExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.trace_context.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.trace_context.keys().map(String::as_str).collect()
    }
}

/// The CONSUMER span of one delivery, child of the context its headers carried. Its
/// `event_id` and `event_type` fields also label every log line written inside it.
pub fn consumer_span(envelope: &Envelope, event_id: Option<&str>) -> tracing::Span {
    let event_type = crate::telemetry::metrics::event_type_label(&envelope.routing_key);
    let span = tracing::info_span!(
        "process",
        otel.kind = "consumer",
        event_id = event_id.map(printable),
        event_type,
        outcome.status = Empty,
        otel.status_code = Empty,
    );
    // The parent must be set before the span is first entered.
    let parent = TraceContextPropagator::new()
        .extract_with_context(&Context::new(), &EnvelopeExtractor(envelope));
    let _ = span.set_parent(parent);
    span.set_attribute("messaging.system", "rabbitmq");
    span.set_attribute("messaging.operation.type", "process");
    span.set_attribute("messaging.operation.name", "process");
    span.set_attribute("messaging.destination.name", printable(&envelope.exchange));
    span.set_attribute(
        "messaging.rabbitmq.destination.routing_key",
        printable(&envelope.routing_key),
    );
    if let Some(id) = &envelope.message_id {
        span.set_attribute("messaging.message.id", printable(id));
    }
    span.set_attribute("event.type", event_type);
    span
}

/// The PRODUCER span of one publish.
pub fn producer_span(exchange: &str, routing_key: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "send",
        otel.name = %format_args!("send {}", printable(exchange)),
        otel.kind = "producer",
        otel.status_code = Empty,
    );
    span.set_attribute("messaging.system", "rabbitmq");
    span.set_attribute("messaging.operation.type", "send");
    span.set_attribute("messaging.operation.name", "publish");
    span.set_attribute("messaging.destination.name", printable(exchange));
    span.set_attribute(
        "messaging.rabbitmq.destination.routing_key",
        printable(routing_key),
    );
    span
}

/// `properties` with the trace headers replaced by `span`'s context, when it has one;
/// unchanged otherwise (the headers the caller put there are carried as they are).
pub fn inject_context(span: &tracing::Span, properties: BasicProperties) -> BasicProperties {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return properties;
    }
    let mut table = properties
        .headers()
        .as_ref()
        .map(|t| t.inner().clone())
        .unwrap_or_default();
    table.remove(headers::TRACEPARENT);
    table.remove(headers::TRACESTATE);
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut table));
    properties.with_headers(FieldTable::from(table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_header_is_the_parent() {
        let mut table = FieldTable::default();
        headers::set_str(&mut table, headers::TRACEPARENT, PARENT);
        headers::set_str(&mut table, headers::TRACESTATE, "vendor=abc");
        let cx = extract_parent(Some(&table));
        let span = cx.span();
        let parent = span.span_context();
        assert!(parent.is_remote());
        assert_eq!(
            parent.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex")
        );
        assert_eq!(
            parent.span_id(),
            SpanId::from_hex("00f067aa0ba902b7").expect("hex")
        );
        assert_eq!(parent.trace_state().get("vendor"), Some("abc"));
    }

    #[test]
    fn no_or_malformed_traceparent_gives_no_parent() {
        assert!(!extract_parent(None).span().span_context().is_valid());
        let mut table = FieldTable::default();
        headers::set_str(&mut table, headers::TRACEPARENT, "00-nonsense-01");
        assert!(!extract_parent(Some(&table))
            .span()
            .span_context()
            .is_valid());
    }

    #[test]
    fn injection_writes_traceparent_and_skips_an_empty_tracestate() {
        let context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
            SpanId::from_hex("1111111111111111").expect("hex"),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(context);
        let mut table = BTreeMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut table));
        let table = FieldTable::from(table);
        assert_eq!(
            headers::get_str(Some(&table), headers::TRACEPARENT),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01")
        );
        assert!(!table.contains_key(headers::TRACESTATE));
    }

    #[test]
    fn without_an_opentelemetry_layer_headers_are_kept() {
        let mut table = FieldTable::default();
        headers::set_str(&mut table, headers::TRACEPARENT, PARENT);
        let properties = BasicProperties::default().with_headers(table);
        let span = producer_span("identity.results", "employee.added.succeeded");
        let kept = inject_context(&span, properties);
        assert_eq!(
            headers::get_str(kept.headers().as_ref(), headers::TRACEPARENT),
            Some(PARENT)
        );
    }
}
