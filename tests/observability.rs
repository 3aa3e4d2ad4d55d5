//! Observability as operators use it (issue: observability and deployment): `/readyz`
//! following the broker connection, `/metrics` in the OpenMetrics text format with
//! exact counts and bounded labels, and the dashboards, alerts and manifests under
//! `deploy/` agreeing with what the service exports.

mod common;
mod support;

use common::*;
use iam_provisioner::okta_sim::{Fault, FaultKind};
use lapin::BasicProperties;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::broker_proxy::BrokerProxy;
use support::openmetrics::{self, Exposition};

async fn get(world_http: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{world_http}{path}"))
        .await
        .expect("the HTTP endpoint answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

async fn scrape(world: &World) -> Exposition {
    let response = reqwest::get(format!("http://{}/metrics", world.http))
        .await
        .expect("/metrics answers");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    openmetrics::parse(&text).unwrap_or_else(|e| panic!("/metrics is not OpenMetrics: {e}\n{text}"))
}

/// Polls `/readyz` until its status is `status`; returns the body then.
async fn wait_for_readiness(world: &World, status: u16) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (now, body) = get(world.http, "/readyz").await;
        if now == status {
            return serde_json::from_str(&body).expect("/readyz answers JSON");
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {status}; last {now}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn readyz_turns_not_ready_when_the_broker_connection_drops_and_ready_after_recovery() {
    let proxy = BrokerProxy::start().await;
    let options = Options {
        env: vec![("AMQP_URL", proxy.amqp_url())],
        ..Options::default()
    };
    let mut world = World::start_with("readyz", options).await;
    let ready = wait_for_readiness(&world, 200).await;
    assert_eq!(ready["ready"], true);
    assert_eq!(
        scrape(&world)
            .await
            .value("iam_provisioner_broker_connected", &[]),
        Some(1.0)
    );

    proxy.cut();
    let not_ready = wait_for_readiness(&world, 503).await;
    assert_eq!(not_ready["ready"], false);
    let problems = not_ready["not_ready"].to_string();
    assert!(problems.contains("broker not connected"), "{problems}");
    assert_eq!(
        scrape(&world)
            .await
            .value("iam_provisioner_broker_connected", &[]),
        Some(0.0)
    );
    let (live, _) = get(world.http, "/healthz").await;
    assert_eq!(
        live, 200,
        "a lost broker is not a reason to restart the pod"
    );

    proxy.restore();
    wait_for_readiness(&world, 200).await;
    // Ready means working: an event published now is processed.
    let id = event_id("after-recovery");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-7001", "recovered@example.com", &["Sales"]),
        )
        .await;
    assert_eq!(world.final_outcome(&id).await["status"], "succeeded");
}

/// Okta operation names the client uses: the only values the `operation` label takes.
const OKTA_OPERATIONS: [&str; 15] = [
    "createUser",
    "getUser",
    "listUsers",
    "updateUser",
    "listGroups",
    "getGroup",
    "listUserGroups",
    "assignUserToGroup",
    "unassignUserFromGroup",
    "activateUser",
    "unsuspendUser",
    "suspendUser",
    "deactivateUser",
    "revokeUserSessions",
    "deleteUser",
];

/// Every label of `/metrics` takes its values from a small fixed set.
fn assert_labels_are_bounded(exposition: &Exposition, per_employee: &[&str]) {
    let event_types = [
        "employee.added",
        "employee.updated",
        "employee.removed",
        "other",
    ];
    let error_kinds = [
        "validation",
        "mapping",
        "okta",
        "transient",
        "rate_limited",
        "conflict",
    ];
    let status_classes = ["1xx", "2xx", "3xx", "4xx", "5xx", "other", "error"];
    for (sample, label, value) in exposition.label_pairs() {
        let allowed = match label {
            "event_type" => event_types.contains(&value),
            "error_kind" => error_kinds.contains(&value),
            "operation" => OKTA_OPERATIONS.contains(&value),
            "status_class" => status_classes.contains(&value),
            "message" => ["outcome", "dead_letter"].contains(&value),
            "result" => ["confirmed", "nacked", "returned", "error", "timed_out"].contains(&value),
            "lane" => ["work", "leavers"].contains(&value),
            "header" => iam_provisioner::trust::OWN_ROUTE_HEADERS.contains(&value),
            "reason" => iam_provisioner::trust::REFUSAL_REASONS.contains(&value),
            "le" => value == "+Inf" || value.parse::<f64>().is_ok(),
            _ => false,
        };
        assert!(allowed, "{sample} has label {label}={value:?}");
        for personal in per_employee {
            assert!(
                !value.contains(personal),
                "{sample} has a per-employee label value {label}={value:?}"
            );
        }
    }
}

#[tokio::test]
async fn metrics_parse_and_count_exactly_the_events_processed_with_bounded_labels() {
    let options = Options {
        mapping: json!({"Sales": "Sales-App-Access", "Ghosts": "Ghost-Group"}),
        ..Options::default()
    };
    let mut world = World::start_with("metrics", options).await;
    let before = scrape(&world).await;
    let consumed = |e: &Exposition, event_type| {
        e.value(
            "iam_provisioner_events_consumed_total",
            &[("event_type", event_type)],
        )
    };
    for event_type in ["employee.added", "employee.removed", "other"] {
        assert_eq!(
            consumed(&before, event_type),
            Some(0.0),
            "series exist at zero before the first event"
        );
    }

    // Two hires that succeed; one that fails once with a 503, then succeeds.
    let (a, b, c) = (event_id("a"), event_id("b"), event_id("c"));
    world
        .publish(
            "employee.added",
            &hire(&a, "E-8001", "ada.metrics@example.com", &["Sales"]),
        )
        .await;
    assert_eq!(world.final_outcome(&a).await["status"], "succeeded");
    world
        .publish(
            "employee.added",
            &hire(&b, "E-8002", "bob.metrics@example.com", &[]),
        )
        .await;
    assert_eq!(world.final_outcome(&b).await["status"], "succeeded");
    world.sim.inject_fault(Fault {
        method: Some("POST".into()),
        path_contains: Some("/api/v1/users".into()),
        times: 1,
        kind: FaultKind::Status {
            status: 503,
            error_code: "E0000009".into(),
        },
    });
    world
        .publish(
            "employee.added",
            &hire(&c, "E-8003", "cy.metrics@example.com", &[]),
        )
        .await;
    let c_outcomes = world.outcomes_until_final(&c).await;
    assert_eq!(c_outcomes.len(), 2, "one retrying, then succeeded");
    // A leaver Okta does not know: a success with nothing done.
    let d = event_id("d");
    world
        .publish(
            "employee.removed",
            &leaver(&d, Some("E-8004"), Some("dee.metrics@example.com")),
        )
        .await;
    assert_eq!(world.final_outcome(&d).await["status"], "succeeded");
    // A mapped group Okta does not have: dead-lettered as a mapping failure.
    let e = event_id("e");
    world
        .publish(
            "employee.added",
            &hire(&e, "E-8005", "eve.metrics@example.com", &["Ghosts"]),
        )
        .await;
    assert_eq!(world.final_outcome(&e).await["status"], "failed");
    // A body that is not JSON, and a routing key that carries an email (an HR system's
    // mistake): both validation failures, the second counted as `other`.
    let f = event_id("f");
    world
        .publish_raw(
            "employee.added",
            b"{not json",
            BasicProperties::default().with_message_id(f.as_str().into()),
        )
        .await;
    assert_eq!(world.final_outcome(&f).await["status"], "failed");
    let g = event_id("g");
    world
        .publish(
            "employee.E-8007",
            &hire(&g, "E-8007", "gus.metrics@example.com", &[]),
        )
        .await;
    assert_eq!(world.final_outcome(&g).await["status"], "failed");

    // The last counts move after the broker confirms; wait until every delivery has
    // been acknowledged and timed.
    let deadline = Instant::now() + PATIENCE;
    let after = loop {
        let now = scrape(&world).await;
        let timed: f64 = ["employee.added", "employee.removed", "other"]
            .iter()
            .filter_map(|t| {
                now.value(
                    "iam_provisioner_event_duration_seconds_count",
                    &[("event_type", t)],
                )
            })
            .sum();
        let in_flight = now.value("iam_provisioner_deliveries_in_flight", &[]);
        if timed >= 7.0 && in_flight == Some(0.0) {
            break now;
        }
        assert!(Instant::now() < deadline, "deliveries never all completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels).unwrap_or(-1.0) - before.value(name, labels).unwrap_or(0.0)
    };
    let added = [("event_type", "employee.added")];
    let removed = [("event_type", "employee.removed")];
    let other = [("event_type", "other")];
    assert_eq!(moved("iam_provisioner_events_consumed_total", &added), 5.0);
    assert_eq!(
        moved("iam_provisioner_events_consumed_total", &removed),
        1.0
    );
    assert_eq!(moved("iam_provisioner_events_consumed_total", &other), 1.0);
    assert_eq!(moved("iam_provisioner_events_succeeded_total", &added), 3.0);
    assert_eq!(
        moved("iam_provisioner_events_succeeded_total", &removed),
        1.0
    );
    // The removal reached both lanes; one copy did the work, the other was skipped.
    assert_eq!(
        moved(
            "iam_provisioner_removal_copies_skipped_total",
            &[("lane", "work")]
        ) + moved(
            "iam_provisioner_removal_copies_skipped_total",
            &[("lane", "leavers")]
        ),
        1.0
    );
    let with_kind = |event_type, kind| [("event_type", event_type), ("error_kind", kind)];
    assert_eq!(
        moved(
            "iam_provisioner_events_retried_total",
            &with_kind("employee.added", "transient")
        ),
        1.0
    );
    for (event_type, kind) in [
        ("employee.added", "mapping"),
        ("employee.added", "validation"),
        ("other", "validation"),
    ] {
        for family in [
            "iam_provisioner_events_failed_total",
            "iam_provisioner_events_dead_lettered_total",
        ] {
            assert_eq!(
                moved(family, &with_kind(event_type, kind)),
                1.0,
                "{family} {event_type} {kind}"
            );
        }
    }
    let total = |e: &Exposition, name: &str| -> f64 {
        e.families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    };
    for (name, expected) in [
        ("iam_provisioner_events_consumed_total", 7.0),
        ("iam_provisioner_events_succeeded_total", 4.0),
        ("iam_provisioner_events_failed_total", 3.0),
        ("iam_provisioner_events_retried_total", 1.0),
        ("iam_provisioner_events_dead_lettered_total", 3.0),
        ("iam_provisioner_event_duration_seconds_count", 7.0),
    ] {
        assert_eq!(
            total(&after, name) - total(&before, name),
            expected,
            "{name} moved by exactly the events of this test"
        );
    }
    assert_eq!(
        moved(
            "iam_provisioner_publishes_total",
            &[("message", "outcome"), ("result", "confirmed")]
        ),
        8.0,
        "7 final outcomes and 1 retrying"
    );
    assert_eq!(
        moved(
            "iam_provisioner_publishes_total",
            &[("message", "dead_letter"), ("result", "confirmed")]
        ),
        3.0
    );
    let create = |class| [("operation", "createUser"), ("status_class", class)];
    assert_eq!(
        moved("iam_provisioner_okta_requests_total", &create("2xx")),
        3.0
    );
    assert_eq!(
        moved("iam_provisioner_okta_requests_total", &create("5xx")),
        1.0
    );
    assert_eq!(
        moved(
            "iam_provisioner_okta_request_duration_seconds_count",
            &[("operation", "createUser")]
        ),
        4.0
    );
    assert!(
        after
            .value("iam_provisioner_okta_rate_limit_remaining", &[])
            .is_some_and(|v| v > 0.0),
        "the fake Okta's X-Rate-Limit-Remaining is shown"
    );
    assert!(
        after
            .value("iam_provisioner_group_cache_hits_total", &[])
            .is_some_and(|hits| hits >= 1.0),
        "the warmed group was used from the cache"
    );
    assert_eq!(
        after.value("iam_provisioner_consumer_paused", &[]),
        Some(0.0)
    );

    let per_employee = [
        a.as_str(),
        b.as_str(),
        c.as_str(),
        d.as_str(),
        e.as_str(),
        f.as_str(),
        g.as_str(),
        "E-800",
        "metrics@example.com",
        "Sales-App-Access",
        "Ghost",
    ];
    assert_labels_are_bounded(&after, &per_employee);
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("readable");
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|document| !document.is_null())
        .collect()
}

use serde::Deserialize;

#[test]
fn every_yaml_and_json_file_under_deploy_and_the_compose_file_parse() {
    let mut checked = 0;
    let compose = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml");
    for path in files_under(&deploy_dir()).into_iter().chain([compose]) {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => {
                let text = std::fs::read_to_string(&path).expect("readable");
                serde_json::from_str::<Value>(&text)
                    .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
                checked += 1;
            }
            Some("yaml" | "yml") => {
                assert!(
                    !yaml_documents(&path).is_empty(),
                    "{} is empty",
                    path.display()
                );
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(checked >= 8, "only {checked} YAML/JSON files under deploy/");
}

/// Every PromQL expression of a Grafana dashboard (`targets[].expr`, nested panels and
/// template queries included).
fn grafana_expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    ("query", Value::String(q)) if q.contains("iam_provisioner_") => {
                        out.push(q.clone())
                    }
                    _ => grafana_expressions(inner, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| grafana_expressions(i, out)),
        _ => {}
    }
}

/// The metric names in a PromQL expression: identifiers starting with one of the
/// prefixes (label names and functions do not).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    let mut in_string = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
            current.clear();
            continue;
        }
        if in_string {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
        } else {
            if current.starts_with("iam_provisioner_") || current.starts_with("rabbitmq_") {
                names.push(current.clone());
            }
            current.clear();
        }
    }
    names
}

/// RabbitMQ's own metrics (its Prometheus plugin, per-object endpoint) that the alerts
/// and the dashboard use; the service does not export them.
const RABBITMQ_METRICS: [&str; 3] = [
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_messages",
];

#[tokio::test]
async fn every_metric_in_the_dashboard_and_alert_rules_is_exported() {
    let mut world = World::start("dashboards").await;
    // One event, so that per-operation Okta series exist too.
    let id = event_id("dash");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-8100", "dash@example.com", &["Sales"]),
        )
        .await;
    world.final_outcome(&id).await;
    let exposition = scrape(&world).await;
    let mut exported: BTreeSet<String> = exposition
        .sample_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    // A family declared without samples yet (no 429 so far) still exists.
    for family in &exposition.families {
        let suffixes: &[&str] = match family.kind.as_str() {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        for suffix in suffixes {
            exported.insert(format!("{}{suffix}", family.name));
        }
    }

    let mut expressions: Vec<(String, String)> = Vec::new();
    for path in files_under(&deploy_dir().join("grafana")) {
        let text = std::fs::read_to_string(&path).expect("readable");
        let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
        let mut found = Vec::new();
        grafana_expressions(&dashboard, &mut found);
        assert!(!found.is_empty(), "{} has no queries", path.display());
        expressions.extend(found.into_iter().map(|e| (path.display().to_string(), e)));
    }
    for path in files_under(&deploy_dir().join("prometheus")) {
        for document in yaml_documents(&path) {
            let groups = document["groups"]
                .as_array()
                .or_else(|| document["spec"]["groups"].as_array())
                .unwrap_or_else(|| panic!("{} has no rule groups", path.display()));
            for group in groups {
                for rule in group["rules"].as_array().expect("rules") {
                    let expr = rule["expr"].as_str().expect("every rule has an expr");
                    expressions.push((path.display().to_string(), expr.to_owned()));
                }
            }
        }
    }
    assert!(expressions.len() >= 10, "{expressions:#?}");

    let mut used = BTreeSet::new();
    for (file, expr) in &expressions {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{file}: no metric in {expr:?}");
        for name in names {
            if name.starts_with("rabbitmq_") {
                assert!(
                    RABBITMQ_METRICS.contains(&name.as_str()),
                    "{file}: {name} is not a RabbitMQ metric this check knows"
                );
            } else {
                assert!(
                    exported.contains(&name),
                    "{file}: {name} is not in /metrics ({expr})"
                );
            }
            used.insert(name);
        }
    }
    // The alerts the issue asks for are there.
    for required in [
        "rabbitmq_queue_messages",
        "iam_provisioner_consumer_paused",
        "iam_provisioner_events_succeeded_total",
        "rabbitmq_queue_messages_ready",
    ] {
        assert!(used.contains(required), "nothing uses {required}");
    }
}

/// `deploy/rabbitmq/definitions.json`, pre-provisioned by an operator (here under this
/// test's prefix), must be exactly what the service declares: start-up then finds
/// nothing to conflict with, and nothing it needs is missing (the broker's own export
/// after start-up's declarations holds the definitions' objects and no others).
#[tokio::test]
async fn the_rabbitmq_definitions_are_what_the_service_declares() {
    use iam_provisioner::amqp::topology::{self, TopologyNames};
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};

    let text = std::fs::read_to_string(deploy_dir().join("rabbitmq/definitions.json"))
        .expect("definitions exist");
    let definitions: Value = serde_json::from_str(&text).expect("JSON");
    let defaults = TopologyNames::prefixed("");
    let prefix = unique_prefix("definitions");
    let names = TopologyNames::prefixed(&prefix);
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    // The service's objects are the contract's five and ones named after the work queue.
    let rename = |name: &str| -> String {
        let pairs = [
            (&defaults.input_exchange, &names.input_exchange),
            (&defaults.work_queue, &names.work_queue),
            (&defaults.results_exchange, &names.results_exchange),
            (&defaults.dead_letter_exchange, &names.dead_letter_exchange),
            (&defaults.dead_letter_queue, &names.dead_letter_queue),
        ];
        if let Some((_, prefixed)) = pairs.iter().find(|(default, _)| default.as_str() == name) {
            return prefixed.to_string();
        }
        match name.strip_prefix(&format!("{}.", defaults.work_queue)) {
            Some(rest) => format!("{}.{rest}", names.work_queue),
            None => panic!("{name} is not an object the service declares"),
        }
    };
    let to_amqp = |value: &Value| -> AMQPValue {
        match value {
            Value::String(text) => AMQPValue::LongString(rename_if_object(text, &rename).into()),
            Value::Number(n) => AMQPValue::LongLongInt(n.as_i64().expect("integer argument")),
            other => panic!("unexpected argument {other}"),
        }
    };
    let table = |arguments: &Value| -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in arguments.as_object().expect("arguments") {
            table.insert(key.as_str().into(), to_amqp(value));
        }
        table
    };

    let conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    for exchange in definitions["exchanges"].as_array().expect("exchanges") {
        let kind = match exchange["type"].as_str().expect("type") {
            "topic" => lapin::ExchangeKind::Topic,
            "headers" => lapin::ExchangeKind::Headers,
            other => panic!("unexpected exchange type {other}"),
        };
        channel
            .exchange_declare(
                rename(exchange["name"].as_str().expect("name"))
                    .as_str()
                    .into(),
                kind,
                ExchangeDeclareOptions {
                    durable: exchange["durable"] == true,
                    auto_delete: exchange["auto_delete"] == true,
                    internal: exchange["internal"] == true,
                    ..ExchangeDeclareOptions::default()
                },
                table(&exchange["arguments"]),
            )
            .await
            .expect("exchange from the definitions");
    }
    for queue in definitions["queues"].as_array().expect("queues") {
        channel
            .queue_declare(
                rename(queue["name"].as_str().expect("name"))
                    .as_str()
                    .into(),
                QueueDeclareOptions {
                    durable: queue["durable"] == true,
                    auto_delete: queue["auto_delete"] == true,
                    ..QueueDeclareOptions::default()
                },
                table(&queue["arguments"]),
            )
            .await
            .expect("queue from the definitions");
    }
    for binding in definitions["bindings"].as_array().expect("bindings") {
        channel
            .queue_bind(
                rename(binding["destination"].as_str().expect("destination"))
                    .as_str()
                    .into(),
                rename(binding["source"].as_str().expect("source"))
                    .as_str()
                    .into(),
                binding["routing_key"].as_str().expect("key").into(),
                QueueBindOptions::default(),
                table(&binding["arguments"]),
            )
            .await
            .expect("binding from the definitions");
    }

    // What start-up does: any difference would be refused with PRECONDITION_FAILED.
    let service_channel = conn.create_channel().await.expect("channel");
    topology::declare(&service_channel, &names)
        .await
        .expect("the service's declarations agree with the pre-provisioned objects");
    let _ = conn.close(200, "done".into()).await;

    // And it declared nothing the definitions lack.
    let exported = export_definitions();
    let ours = |name: &str| name.starts_with(&prefix);
    let expected = object_summary(&definitions, &|name| rename(name), &|_| true);
    let actual = object_summary(&exported, &|name| name.to_owned(), &ours);
    assert_eq!(actual, expected);
}

/// A string argument that names one of the service's objects (a dead-letter exchange)
/// is renamed like the object; any other string is kept.
fn rename_if_object(text: &str, rename: &dyn Fn(&str) -> String) -> String {
    if text.contains("iam-provisioner") {
        rename(text)
    } else {
        text.to_owned()
    }
}

/// The broker's definitions, as `rabbitmqctl export_definitions` prints them.
fn export_definitions() -> Value {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["--quiet", "export_definitions", "-"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("exported definitions are JSON")
}

/// Exchanges (name, type), queues (name, arguments), bindings (source, destination, key,
/// arguments).
type ObjectSummary = (
    BTreeSet<(String, String)>,
    BTreeSet<(String, String)>,
    BTreeSet<(String, String, String, String)>,
);

/// Exchanges (name, type), queues (name, arguments) and bindings (source, destination,
/// key, arguments) of a definitions document, names passed through `rename`, keeping
/// only objects whose (renamed) name `keep` accepts. Arguments are compared as text so
/// that a number is a number whatever AMQP integer type declared it.
fn object_summary(
    definitions: &Value,
    rename: &dyn Fn(&str) -> String,
    keep: &dyn Fn(&str) -> bool,
) -> ObjectSummary {
    let arguments = |value: &Value| -> String {
        let mut pairs: Vec<(String, String)> = value
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Value::String(text) => rename_if_object(text, rename),
                            other => other.to_string(),
                        };
                        (k.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        pairs.sort();
        format!("{pairs:?}")
    };
    let items = |key: &str| definitions[key].as_array().cloned().unwrap_or_default();
    let name = |item: &Value, key: &str| rename(item[key].as_str().expect("name"));
    let exchanges = items("exchanges")
        .iter()
        .filter(|e| keep(e["name"].as_str().unwrap_or("")))
        .map(|e| (name(e, "name"), e["type"].as_str().unwrap_or("").to_owned()))
        .collect();
    let queues = items("queues")
        .iter()
        .filter(|q| keep(q["name"].as_str().unwrap_or("")))
        .map(|q| (name(q, "name"), arguments(&q["arguments"])))
        .collect();
    let bindings = items("bindings")
        .iter()
        .filter(|b| keep(b["destination"].as_str().unwrap_or("")))
        .map(|b| {
            (
                name(b, "source"),
                name(b, "destination"),
                b["routing_key"].as_str().unwrap_or("").to_owned(),
                arguments(&b["arguments"]),
            )
        })
        .collect();
    (exchanges, queues, bindings)
}

/// Polls `/metrics` until `name` (no labels) has `value`.
async fn wait_for_gauge(world: &World, name: &str, value: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = scrape(world).await.value(name, &[]);
        if now == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {value}; last {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_consumer_paused_gauge_follows_an_okta_outage() {
    let options = Options {
        env: vec![
            ("MAX_ATTEMPTS", "3".into()),
            ("OKTA_OUTAGE_THRESHOLD", "2".into()),
        ],
        ..Options::default()
    };
    let mut world = World::start_with("paused-gauge", options).await;
    wait_for_gauge(&world, "iam_provisioner_consumer_paused", 0.0).await;
    world.sim.set_outage(Some(503));
    let ids: Vec<String> = (0..2).map(|n| event_id(&format!("outage-{n}"))).collect();
    for (n, id) in ids.iter().enumerate() {
        world
            .publish(
                "employee.added",
                &hire(
                    id,
                    &format!("E-86{n}"),
                    &format!("paused{n}@example.com"),
                    &[],
                ),
            )
            .await;
    }
    wait_for_gauge(&world, "iam_provisioner_consumer_paused", 1.0).await;
    world.sim.set_outage(None);
    wait_for_gauge(&world, "iam_provisioner_consumer_paused", 0.0).await;
    let finals = world.final_outcomes_of(&ids).await;
    for id in &ids {
        assert_eq!(finals[id]["status"], "succeeded", "{id}");
    }
}
