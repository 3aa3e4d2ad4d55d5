//! Property tests over message decoding and validation (issue: security): whatever a
//! publisher sends — arbitrary bytes, JSON-ish bodies, odd routing keys and content
//! types — parsing never panics, and every message is either accepted or refused with a
//! reason. Valid events survive a round trip through their JSON.
//!
//! The case count is bounded (256 per property unless `PROPTEST_CASES` says otherwise)
//! so the suite stays within seconds in CI; run with `PROPTEST_CASES=100000` to dig.

use iam_provisioner::domain::event::{
    parse_message, parse_message_bounded, printable, EventBody, RawMessage,
};
use proptest::prelude::*;
use serde_json::{json, Value};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // A failure is a bug to fix, not a file to keep in the repository.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn routing_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("employee.added".to_owned()),
        Just("employee.updated".to_owned()),
        Just("employee.removed".to_owned()),
        any::<String>(),
        "employee\\.[a-z\\x00-\\x1f\u{202e}]{0,20}",
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("application/json; charset=utf-8".to_owned())),
        any::<String>().prop_map(Some),
    ]
}

/// Strings that stress validation: empty, long, control and bidi characters, quotes.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9@. _-]{0,120}",
        "[\\x00-\\x1f\\x7f\u{80}-\u{9f}\u{202a}-\u{202e}\u{2066}-\u{2069}\u{2028}\"\\\\a@.]{0,12}",
        Just(String::new()),
        Just("x".repeat(300)),
    ]
}

/// JSON values of any shape, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(nasty_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies shaped like HR events, each field possibly missing, mistyped or hostile.
fn event_like() -> impl Strategy<Value = Value> {
    let field = || {
        prop_oneof![
            3 => nasty_string().prop_map(Value::String),
            1 => any_json(),
            1 => Just(Value::Null),
        ]
    };
    let timestamp = prop_oneof![
        Just(json!("2026-11-28T09:00:00Z")),
        Just(json!("2026-11-28T09:00:00+01:00")),
        field(),
    ];
    let employee = (
        field(),
        field(),
        field(),
        field(),
        prop::collection::vec(field(), 0..4),
        field(),
        field(),
        field(),
    )
        .prop_map(|(id, email, first, last, groups, dept, manager, start)| {
            json!({
                "id": id, "email": email, "first_name": first, "last_name": last,
                "groups": groups, "department": dept, "manager_email": manager,
                "start_date": start,
            })
        });
    (field(), timestamp.clone(), employee, timestamp).prop_map(
        |(event_id, occurred_at, employee, effective_at)| {
            json!({
                "event_id": event_id, "occurred_at": occurred_at,
                "employee": employee, "effective_at": effective_at,
            })
        },
    )
}

fn check(routing_key: &str, content_type: Option<&str>, body: &[u8]) -> Result<(), TestCaseError> {
    let message = RawMessage {
        routing_key,
        content_type,
        body,
    };
    match parse_message(message) {
        Ok(event) => {
            // Whatever is accepted is clean: no control characters in what reaches
            // Okta or the logs.
            prop_assert!(!event.event_id.as_str().chars().any(char::is_control));
            if let Some(email) = event.email() {
                let length = email.as_str().chars().count();
                prop_assert!((5..=100).contains(&length), "email length {length}");
            }
            if let EventBody::Added(record) | EventBody::Updated(record) = &event.body {
                for name in [&record.first_name, &record.last_name] {
                    let length = name.chars().count();
                    prop_assert!((1..=50).contains(&length), "name length {length}");
                    prop_assert!(!name.chars().any(char::is_control));
                }
            }
        }
        Err((reason, _)) => {
            prop_assert!(!reason.to_string().trim().is_empty(), "a reason is given");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(
        key in routing_key(),
        content in content_type(),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        check(&key, content.as_deref(), &body)?;
    }

    #[test]
    fn arbitrary_json_never_panics(key in routing_key(), value in any_json()) {
        check(&key, Some("application/json"), value.to_string().as_bytes())?;
    }

    #[test]
    fn event_shaped_bodies_are_accepted_or_refused_with_a_reason(
        key in routing_key(),
        value in event_like(),
    ) {
        check(&key, None, value.to_string().as_bytes())?;
    }

    #[test]
    fn valid_hires_round_trip_through_their_json(
        id in "[A-Z]-[0-9]{1,8}",
        local in "[a-z][a-z0-9.]{0,30}",
        domain in "[a-z]{1,20}\\.(com|org|de)",
        first in "[A-Za-zÀ-ÿ' -]{0,48}[A-Za-z]",
        last in "[A-Za-zÀ-ÿ' -]{0,48}[A-Za-z]",
        groups in prop::collection::vec("[A-Za-z][A-Za-z -]{0,30}", 0..5),
    ) {
        let email = format!("{local}@{domain}");
        let body = json!({
            "event_id": "round-trip", "occurred_at": "2026-11-28T09:00:00Z",
            "employee": {"id": id, "email": email, "first_name": first,
                         "last_name": last, "groups": groups},
        });
        let event = parse_message(RawMessage {
            routing_key: "employee.added",
            content_type: Some("application/json"),
            body: body.to_string().as_bytes(),
        });
        let event = match event {
            Ok(event) => event,
            Err((reason, _)) => return Err(TestCaseError::fail(format!("{reason}: {body}"))),
        };
        let EventBody::Added(record) = event.body else {
            return Err(TestCaseError::fail("not a hire"));
        };
        prop_assert_eq!(record.id.as_str(), id.as_str());
        prop_assert_eq!(record.email.as_str(), email.as_str());
        prop_assert_eq!(record.first_name.as_str(), first.trim());
        prop_assert_eq!(record.last_name.as_str(), last.trim());
        let mut unique = groups.clone();
        let mut seen = std::collections::HashSet::new();
        unique.retain(|g| seen.insert(g.clone()));
        prop_assert_eq!(record.groups, unique);
    }

    #[test]
    fn the_size_limit_is_exact(extra in 0usize..64, limit in 1024usize..4096) {
        let body = vec![b' '; limit + extra];
        let message = RawMessage { routing_key: "employee.added", content_type: None, body: &body };
        let refused = match parse_message_bounded(message, limit) {
            Ok(_) => false,
            Err((reason, _)) => reason.to_string().contains("MAX_MESSAGE_BYTES"),
        };
        prop_assert_eq!(refused, extra > 0);
    }

    #[test]
    fn printable_output_is_safe_for_logs_and_short_strings(value in any::<String>()) {
        let shown = printable(&value);
        prop_assert!(!shown.chars().any(char::is_control));
        prop_assert!(shown.len() <= 243, "{} bytes", shown.len());
    }
}
