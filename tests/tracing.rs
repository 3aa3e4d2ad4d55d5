//! Distributed tracing (issue: observability and deployment): the W3C context of an HR
//! event continues through the service into its outcome and dead-letter copy, and the
//! spans reach an OTLP collector with the messaging conventions' attributes and no
//! employee data.
//!
//! This test binary installs a global subscriber with the service's OpenTelemetry
//! layer, exporting to an in-process collector; nothing is printed.

mod common;
mod support;

use common::*;
use futures_util::StreamExt;
use iam_provisioner::amqp::topology::TopologyNames;
use iam_provisioner::okta_sim::{GroupType, OktaSim, SimConfig};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::otlp::{Collector, ReceivedSpan, KIND_CLIENT, KIND_CONSUMER, KIND_PRODUCER};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

struct Tracing {
    collector: Collector,
    provider: SdkTracerProvider,
}

/// The process-wide subscriber and its collector, installed once for every test here.
fn tracing() -> &'static Tracing {
    static TRACING: OnceLock<Tracing> = OnceLock::new();
    TRACING.get_or_init(|| {
        let collector = Collector::start();
        let provider = iam_provisioner::telemetry::otel::tracer_provider(&collector.traces_url)
            .expect("provider");
        tracing_subscriber::registry()
            .with(iam_provisioner::telemetry::otel::layer(&provider))
            .init();
        Tracing {
            collector,
            provider,
        }
    })
}

/// Sends what the batch processor holds now.
async fn flush() {
    tokio::task::spawn_blocking(|| tracing().provider.force_flush())
        .await
        .expect("flush task")
        .expect("spans flushed");
}

/// (trace id, parent span id, flags) of a `traceparent`.
fn parse_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[2].len(), 16);
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

/// A fresh `traceparent` (sampled) as an upstream HR system would send.
fn upstream_traceparent() -> (String, String, String) {
    let (trace, span) = (random_hex(16), random_hex(8));
    (format!("00-{trace}-{span}-01"), trace, span)
}

fn trace_headers(traceparent: &str, tracestate: Option<&str>) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(traceparent.into()),
    );
    if let Some(state) = tracestate {
        headers.insert("tracestate".into(), AMQPValue::LongString(state.into()));
    }
    headers
}

fn json_properties(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(headers)
}

/// The next outcome of `event_id`, with its headers.
async fn outcome_of(world: &mut World, event_id: &str) -> (Value, Option<FieldTable>) {
    loop {
        let (_, body, headers) = world.next_outcome().await;
        if body["source_event_id"] == event_id && body["status"] != "retrying" {
            return (body, headers);
        }
    }
}

#[tokio::test]
async fn outcomes_and_dead_letters_continue_the_trace_of_their_input() {
    tracing();
    let mut world = World::start("trace-continue").await;

    let (traceparent, trace, upstream_span) = upstream_traceparent();
    let id = event_id("traced-hire");
    let body = hire(&id, "E-9101", "traced@example.com", &["Sales"]).to_string();
    world
        .publish_raw(
            "employee.added",
            body.as_bytes(),
            json_properties(trace_headers(&traceparent, Some("vendor=abc"))),
        )
        .await;
    let (outcome, headers) = outcome_of(&mut world, &id).await;
    assert_eq!(outcome["status"], "succeeded");
    let carried = header_str(&headers, "traceparent").expect("the outcome carries a traceparent");
    let (carried_trace, carried_parent, flags) = parse_traceparent(&carried);
    assert_eq!(carried_trace, trace, "same trace");
    assert_ne!(carried_parent, upstream_span, "the parent is now our span");
    assert_eq!(flags, "01", "still sampled");
    assert_eq!(
        header_str(&headers, "tracestate").as_deref(),
        Some("vendor=abc"),
        "the upstream's trace state travels on"
    );

    // A message that fails validation: its dead-letter copy and failed outcome continue
    // the trace too.
    let (traceparent, trace, upstream_span) = upstream_traceparent();
    let bad = event_id("traced-bad");
    world
        .publish_raw(
            "employee.added",
            b"{not json",
            json_properties(trace_headers(&traceparent, None)).with_message_id(bad.as_str().into()),
        )
        .await;
    let (outcome, headers) = outcome_of(&mut world, &bad).await;
    assert_eq!(outcome["status"], "failed");
    let (outcome_trace, outcome_parent, _) =
        parse_traceparent(&header_str(&headers, "traceparent").expect("traceparent"));
    assert_eq!(outcome_trace, trace);
    assert_ne!(outcome_parent, upstream_span);
    let dead = world.drain_dead_letters().await;
    assert_eq!(dead.len(), 1);
    let dead_headers = dead[0].delivery.properties.headers().clone();
    let (dead_trace, dead_parent, _) =
        parse_traceparent(&header_str(&dead_headers, "traceparent").expect("traceparent"));
    assert_eq!(dead_trace, trace);
    assert_ne!(dead_parent, upstream_span);
    assert_ne!(
        dead_parent, outcome_parent,
        "each published message has its own producer span"
    );

    // An event without trace context starts a trace of its own, and says so downstream.
    let plain = event_id("untraced");
    world
        .publish(
            "employee.added",
            &hire(&plain, "E-9102", "untraced@example.com", &[]),
        )
        .await;
    let (_, headers) = outcome_of(&mut world, &plain).await;
    let (new_trace, _, _) =
        parse_traceparent(&header_str(&headers, "traceparent").expect("a new trace"));
    assert_ne!(new_trace, "0".repeat(32));
}

/// Whether `span` is `ancestor` or lies below it.
fn descends_from(spans: &[ReceivedSpan], span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
    let mut current = span;
    for _ in 0..spans.len() {
        if current.span_id == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == current.parent_span_id) {
            Some(parent) => current = parent,
            None => return false,
        }
    }
    false
}

fn attribute<'a>(span: &'a ReceivedSpan, key: &str) -> Option<&'a str> {
    span.attributes.get(key).map(String::as_str)
}

#[tokio::test]
async fn spans_reach_the_collector_with_messaging_conventions_and_no_employee_data() {
    let tracing = tracing();
    let mut world = World::start("trace-export").await;
    let (traceparent, trace, upstream_span) = upstream_traceparent();
    let id = event_id("exported");
    let body = hire(&id, "E-9201", "exported.person@example.com", &["Sales"]).to_string();
    world
        .publish_raw(
            "employee.added",
            body.as_bytes(),
            json_properties(trace_headers(&traceparent, None)),
        )
        .await;
    let (outcome, headers) = outcome_of(&mut world, &id).await;
    assert_eq!(outcome["status"], "succeeded");
    let (_, outcome_parent, _) =
        parse_traceparent(&header_str(&headers, "traceparent").expect("traceparent"));

    // The consumer span ends after the acknowledgement: flush until it is there.
    let deadline = Instant::now() + PATIENCE;
    let spans = loop {
        flush().await;
        let spans: Vec<ReceivedSpan> = tracing
            .collector
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace)
            .collect();
        let kinds = |kind| spans.iter().any(|s| s.kind == kind);
        if kinds(KIND_CONSUMER) && kinds(KIND_CLIENT) && kinds(KIND_PRODUCER) {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans never arrived: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let consumer = spans
        .iter()
        .find(|s| s.kind == KIND_CONSUMER)
        .expect("consumer span");
    assert_eq!(consumer.name, "process");
    assert_eq!(
        consumer.parent_span_id, upstream_span,
        "the incoming traceparent is the parent"
    );
    assert_eq!(consumer.service_name, "iam-provisioner");
    assert_eq!(
        attribute(consumer, "messaging.destination.name"),
        Some(world.names.input_exchange.as_str())
    );
    assert_eq!(attribute(consumer, "messaging.system"), Some("rabbitmq"));
    assert_eq!(
        attribute(consumer, "messaging.operation.type"),
        Some("process")
    );
    assert_eq!(
        attribute(consumer, "messaging.rabbitmq.destination.routing_key"),
        Some("employee.added")
    );
    assert_eq!(attribute(consumer, "event.type"), Some("employee.added"));
    assert_eq!(attribute(consumer, "outcome.status"), Some("succeeded"));

    let create = spans
        .iter()
        .find(|s| s.kind == KIND_CLIENT && s.name == "createUser")
        .expect("a CLIENT span for the Okta call");
    assert!(
        descends_from(&spans, create, consumer),
        "the Okta call happened within the delivery: {spans:#?}"
    );
    assert_eq!(attribute(create, "http.response.status_code"), Some("200"));
    assert_eq!(attribute(create, "http.request.method"), Some("POST"));

    let producer = spans
        .iter()
        .find(|s| s.kind == KIND_PRODUCER)
        .expect("a PRODUCER span for the outcome");
    assert_eq!(producer.parent_span_id, consumer.span_id);
    assert_eq!(
        producer.span_id, outcome_parent,
        "the outcome's traceparent names the span that published it"
    );
    assert_eq!(
        producer.name,
        format!("send {}", world.names.results_exchange)
    );
    assert_eq!(
        attribute(producer, "messaging.operation.type"),
        Some("send")
    );
    assert_eq!(
        attribute(producer, "messaging.destination.name"),
        Some(world.names.results_exchange.as_str())
    );
    assert_eq!(
        attribute(producer, "messaging.rabbitmq.destination.routing_key"),
        Some("employee.added.succeeded")
    );

    let user = world.sim.user("exported.person@example.com").expect("user");
    for span in &spans {
        for (key, value) in &span.attributes {
            for personal in [
                "E-9201",
                "exported.person",
                "Ada",
                "Lovelace",
                user.id.as_str(),
                "Sales-App-Access",
            ] {
                assert!(
                    !value.contains(personal),
                    "span {} has employee data in {key}={value:?}",
                    span.name
                );
            }
        }
    }
}

/// The binary, as deployed: `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans exported (even with
/// `RUST_LOG=warn`, which hides the spans' level from the logs), and the last ones
/// flushed when SIGTERM stops it. The batch delay is ten minutes, so only the shutdown
/// flush can have sent them.
#[tokio::test]
async fn the_binary_exports_spans_when_the_endpoint_is_set_and_flushes_them_on_shutdown() {
    let collector = Collector::start();
    let names = TopologyNames::prefixed(&unique_prefix("otlp-process"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    let sim = OktaSim::start(SimConfig::default())
        .await
        .expect("fake Okta");
    sim.create_group("Sales-App-Access", GroupType::OktaGroup);
    let (_conn, channel, mut outcomes) = observe(&names).await;

    let mut service = common::process::ServiceProcess::spawn(
        &names,
        &sim,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            // Quieter logs must not silence the traces.
            ("RUST_LOG", "warn"),
        ],
    );

    let (traceparent, trace, _) = upstream_traceparent();
    let id = event_id("process-traced");
    let body = hire(&id, "E-9301", "process.traced@example.com", &["Sales"]).to_string();
    publish_to(
        &channel,
        &names.input_exchange,
        "employee.added",
        body.as_bytes(),
        json_properties(trace_headers(&traceparent, None)),
    )
    .await;
    loop {
        let delivery = tokio::time::timeout(PATIENCE, outcomes.next())
            .await
            .expect("an outcome in time")
            .expect("stream open")
            .expect("delivery");
        let outcome: Value = serde_json::from_slice(&delivery.data).expect("JSON");
        if outcome["source_event_id"] == id.as_str() {
            assert_eq!(outcome["status"], "succeeded");
            break;
        }
    }

    service.terminate();
    let status = service.wait_exit().await;
    assert!(status.success(), "{status:?}");

    let complete = |spans: &[ReceivedSpan]| {
        [KIND_CONSUMER, KIND_CLIENT, KIND_PRODUCER]
            .iter()
            .all(|kind| spans.iter().any(|s| s.kind == *kind))
    };
    // The flush happened before the process exited: the spans are there now.
    let spans: Vec<ReceivedSpan> = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == trace)
        .collect();
    assert!(
        complete(&spans),
        "spans of {trace} missing after exit: {spans:#?}\nservice log:\n{}",
        service.log_text()
    );
    assert!(spans.iter().all(|s| s.service_name == "iam-provisioner"));
}
