//! Messages built to hurt (issue: security): each is dead-lettered as `validation`
//! with its reason and its body as published, and the service goes on.

mod common;

use common::*;
use lapin::BasicProperties;
use serde_json::{json, Value};

fn json_props() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

fn with_employee_field(field: &str, value: Value) -> Vec<u8> {
    let mut body = hire(&event_id("hostile"), "E-H1", "hostile@example.com", &[]);
    body["employee"][field] = value;
    body.to_string().into_bytes()
}

#[tokio::test]
async fn each_hostile_message_is_dead_lettered_with_its_reason() {
    let mut world = World::start("hostile").await;
    let mut oversized = hire(&event_id("big"), "E-H2", "big@example.com", &[]);
    oversized["employee"]["title"] = json!("x".repeat(70_000));
    // A routing key that `employee.*` routes, made of characters whose escaping
    // multiplies their length: an outcome routing key or type built from it unbounded
    // would not fit an AMQP short string.
    let control_key = format!("employee.{}", "\u{1}".repeat(240));
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (
            "employee.added".into(),
            oversized.to_string().into_bytes(),
            "more than the 65536 allowed (MAX_MESSAGE_BYTES)",
        ),
        (
            "employee.added".into(),
            // `/` as an overlong two-byte sequence.
            b"{\"event_id\":\"\xc0\xaf\"}".to_vec(),
            "not UTF-8 (invalid, overlong or truncated byte sequence at offset 13)",
        ),
        (
            "employee.added".into(),
            with_employee_field("first_name", json!("Ada\u{7}")),
            "`employee.first_name` contains control characters (U+0007)",
        ),
        (
            "employee.added".into(),
            with_employee_field("last_name", json!("Lovelace\u{202E}nimda")),
            "`employee.last_name` contains control characters (U+202E)",
        ),
        (
            "employee.added".into(),
            with_employee_field("email", json!("a@b")),
            "`employee.email` must be 5 to 100 characters long",
        ),
        (
            "employee.added".into(),
            with_employee_field("first_name", json!("A".repeat(51))),
            "`employee.first_name` must be 1 to 50 characters long",
        ),
        (
            control_key.clone(),
            hire(&event_id("key"), "E-H3", "key@example.com", &[])
                .to_string()
                .into_bytes(),
            "is not an event type",
        ),
    ];
    for (key, body, _) in &cases {
        world.publish_raw(key, body, json_props()).await;
    }
    for _ in &cases {
        let (key, outcome, _) = world.next_outcome().await;
        assert_eq!(outcome["status"], "failed", "{outcome}");
        assert_eq!(outcome["error"]["kind"], "validation", "{outcome}");
        assert!(key.len() <= 255 && key.ends_with(".failed"), "{key}");
    }
    let dead = world.drain_dead_letters().await;
    assert_eq!(dead.len(), cases.len());
    for (key, body, reason) in &cases {
        // Deliveries run concurrently: find each by its body, kept as published.
        let message = dead
            .iter()
            .find(|m| &m.delivery.data == body)
            .unwrap_or_else(|| panic!("no dead letter kept the body for {reason:?}"));
        let headers = message.delivery.properties.headers().clone();
        assert_eq!(
            header_str(&headers, "x-error-kind").as_deref(),
            Some("validation")
        );
        let message_header = header_str(&headers, "x-error-message").unwrap_or_default();
        assert!(
            message_header.contains(reason),
            "{reason:?} not in {message_header:?}"
        );
        assert!(
            !message_header.chars().any(char::is_control),
            "the reason is escaped: {message_header:?}"
        );
        assert_eq!(
            header_str(&headers, "x-original-routing-key").as_deref(),
            Some(key.as_str())
        );
    }

    // The service goes on.
    let id = event_id("after");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-H4", "after@example.com", &[]),
        )
        .await;
    assert_eq!(world.final_outcome(&id).await["status"], "succeeded");
}

#[tokio::test]
async fn max_message_bytes_is_configurable() {
    let options = Options {
        env: vec![("MAX_MESSAGE_BYTES", "2048".into())],
        ..Options::default()
    };
    let mut world = World::start_with("hostile-limit", options).await;
    let mut body = hire(&event_id("limit"), "E-H5", "limit@example.com", &[]);
    body["employee"]["title"] = json!("t".repeat(2100));
    let bytes = body.to_string().into_bytes();
    world
        .publish_raw("employee.added", &bytes, json_props())
        .await;
    let (_, outcome, _) = world.next_outcome().await;
    assert_eq!(outcome["status"], "failed");
    let message = outcome["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(
        message,
        format!(
            "body is {} bytes, more than the 2048 allowed (MAX_MESSAGE_BYTES)",
            bytes.len()
        )
    );
    let dead = world.drain_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delivery.data, bytes);
}
