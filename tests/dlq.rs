//! Dead-letter operations (issue 4, contract section 6) as operators run them: the
//! binary's `dlq list`, `replay` and `dlq purge` against the real broker, with
//! dead letters the service produced or that look exactly like them.

mod common;

use common::*;
use iam_provisioner::amqp::topology::{self, TopologyNames};
use iam_provisioner::okta_sim::{GroupType, UserStatus};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicGetOptions, BasicRejectOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_iam-provisioner");

/// The binary, configured for a test's names and nothing else: no Okta settings, since
/// the dead-letter commands must not need them.
fn command(names: &TopologyNames, args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_clear()
        .env("AMQP_URL", AMQP_URL)
        .env("INPUT_EXCHANGE", &names.input_exchange)
        .env("WORK_QUEUE", &names.work_queue)
        .env("RESULTS_EXCHANGE", &names.results_exchange)
        .env("DEAD_LETTER_EXCHANGE", &names.dead_letter_exchange)
        .env("DEAD_LETTER_QUEUE", &names.dead_letter_queue);
    command
}

/// Runs the binary to its end without blocking the test's runtime (the service under
/// test may share it).
async fn run(names: &TopologyNames, args: &[&str]) -> Output {
    let mut command = command(names, args);
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .expect("the binary's task")
}

/// Runs the binary, expects success, and reads its JSON output.
async fn run_json(names: &TopologyNames, args: &[&str]) -> Value {
    let output = run(names, args).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn event_ids_of(document: &Value) -> Vec<String> {
    document["messages"]
        .as_array()
        .expect("a messages array")
        .iter()
        .map(|m| m["event_id"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// A dead letter as the service writes it (contract section 6).
#[derive(Clone)]
struct DeadLetterSpec {
    event_id: String,
    routing_key: &'static str,
    employee_id: &'static str,
    /// Whether `x-employee-id` is set; else the id is only in the body.
    employee_header: bool,
    kind: &'static str,
    okta_code: Option<&'static str>,
    failed_at: &'static str,
    replay_count: Option<i64>,
}

impl DeadLetterSpec {
    fn new(label: &str, routing_key: &'static str, employee_id: &'static str) -> Self {
        Self {
            event_id: event_id(label),
            routing_key,
            employee_id,
            employee_header: true,
            kind: "mapping",
            okta_code: None,
            failed_at: "2026-11-28T09:00:00.000Z",
            replay_count: None,
        }
    }
}

/// A test's own topology on the real broker, without the service running: what is
/// replayed stays in the work queue for the test to read.
struct Broker {
    names: TopologyNames,
    _conn: Connection,
    channel: Channel,
    _cleanup: BrokerCleanup,
}

impl Broker {
    async fn new(test: &str) -> Self {
        Self::with_extra_queues(test, &[]).await
    }

    async fn with_extra_queues(test: &str, extra: &[&str]) -> Self {
        let names = TopologyNames::prefixed(&unique_prefix(test));
        let cleanup = BrokerCleanup {
            names: names.clone(),
            extra_queues: extra
                .iter()
                .map(|q| format!("{}{q}", names.work_queue))
                .collect(),
        };
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        topology::declare(&channel, &names).await.expect("topology");
        Self {
            names,
            _conn: conn,
            channel,
            _cleanup: cleanup,
        }
    }

    async fn dead_letter(&self, spec: &DeadLetterSpec) {
        dead_letter(&self.channel, &self.names, spec).await;
    }

    async fn seed(&self, specs: &[DeadLetterSpec]) {
        for spec in specs {
            self.dead_letter(spec).await;
        }
    }

    async fn drain(&self, queue: &str) -> Vec<BasicGetMessage> {
        drain_queue(&self.channel, queue).await
    }

    /// Event ids of everything in a queue, in order (taking the messages).
    async fn drain_ids(&self, queue: &str) -> Vec<String> {
        self.drain(queue)
            .await
            .iter()
            .map(message_event_id)
            .collect()
    }

    async fn depth(&self, queue: &str) -> u32 {
        queue_depth(&self.channel, queue).await
    }
}

async fn dead_letter(channel: &Channel, names: &TopologyNames, spec: &DeadLetterSpec) {
    let mut headers = FieldTable::default();
    let mut text = |name: &str, value: &str| {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    };
    text("x-original-exchange", &names.input_exchange);
    text("x-original-routing-key", spec.routing_key);
    text("x-error-kind", spec.kind);
    text(
        "x-error-message",
        &format!("{} failure of {}\nsecond line", spec.kind, spec.event_id),
    );
    text("x-failed-at", spec.failed_at);
    if let Some(code) = spec.okta_code {
        text("x-okta-error-code", code);
        text("x-okta-request-id", "req-test");
    }
    if spec.employee_header {
        text("x-employee-id", spec.employee_id);
    }
    headers.insert("x-attempts".into(), AMQPValue::LongLongInt(1));
    if let Some(count) = spec.replay_count {
        headers.insert("x-replay-count".into(), AMQPValue::LongLongInt(count));
    }
    let body = if spec.routing_key == "employee.removed" {
        leaver(&spec.event_id, Some(spec.employee_id), None)
    } else {
        hire(
            &spec.event_id,
            spec.employee_id,
            &format!("{}@example.com", spec.employee_id.to_lowercase()),
            &["Finance"],
        )
    };
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(spec.event_id.as_str().into())
        .with_headers(headers);
    publish_to(
        channel,
        &names.dead_letter_exchange,
        spec.routing_key,
        body.to_string().as_bytes(),
        properties,
    )
    .await;
}

async fn queue_depth(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists")
        .message_count()
}

fn message_event_id(message: &BasicGetMessage) -> String {
    let body: Value = serde_json::from_slice(&message.delivery.data).unwrap_or(Value::Null);
    body["event_id"].as_str().unwrap_or("").to_owned()
}

fn ids(specs: &[&DeadLetterSpec]) -> Vec<String> {
    specs.iter().map(|s| s.event_id.clone()).collect()
}

/// Six dead letters, each standing out for one filter.
fn six() -> Vec<DeadLetterSpec> {
    let mut m1 = DeadLetterSpec::new("m1", "employee.added", "E-1");
    m1.failed_at = "2026-11-28T09:00:00.000Z";
    let mut m2 = DeadLetterSpec::new("m2", "employee.removed", "E-2");
    m2.employee_header = false;
    m2.kind = "okta";
    m2.okta_code = Some("E0000006");
    m2.failed_at = "2026-11-28T09:10:00.000Z";
    let mut m3 = DeadLetterSpec::new("m3", "employee.added", "E-3");
    m3.kind = "validation";
    m3.failed_at = "2026-11-28T09:20:00.000Z";
    let mut m4 = DeadLetterSpec::new("m4", "employee.updated", "E-1");
    m4.kind = "transient";
    m4.failed_at = "2026-11-28T09:30:00.000Z";
    let mut m5 = DeadLetterSpec::new("m5", "employee.added", "E-5");
    m5.kind = "okta";
    m5.okta_code = Some("E0000001");
    m5.failed_at = "2026-11-28T09:40:00.000Z";
    let mut m6 = DeadLetterSpec::new("m6", "employee.added", "E-6");
    m6.failed_at = "2026-11-27T12:00:00.000Z";
    vec![m1, m2, m3, m4, m5, m6]
}

#[tokio::test]
async fn each_filter_replays_exactly_its_messages_and_the_rest_stay_in_order() {
    let broker = Broker::new("dlq-filters").await;
    let names = broker.names.clone();
    let all = six();
    let [m1, m2, m3, m4, m5, m6] = [&all[0], &all[1], &all[2], &all[3], &all[4], &all[5]];
    let cases: Vec<(Vec<String>, Vec<&DeadLetterSpec>)> = vec![
        (
            vec!["--routing-key".into(), "employee.removed".into()],
            vec![m2],
        ),
        (vec!["--employee-id".into(), "E-1".into()], vec![m1, m4]),
        (
            vec!["--employee-id".into(), "E-2".into()],
            vec![m2], // only in the body
        ),
        (vec!["--error-kind".into(), "mapping".into()], vec![m1, m6]),
        (vec!["--okta-code".into(), "E0000006".into()], vec![m2]),
        (vec!["--event-id".into(), m3.event_id.clone()], vec![m3]),
        (
            vec!["--failed-before".into(), "2026-11-28T00:00:00Z".into()],
            vec![m6],
        ),
        (
            vec!["--failed-after".into(), "2026-11-28T09:30:00Z".into()],
            vec![m4, m5],
        ),
        (
            vec![
                "--error-kind".into(),
                "okta".into(),
                "--routing-key".into(),
                "employee.added".into(),
            ],
            vec![m5],
        ),
    ];
    for (filter, expected) in cases {
        broker.seed(&all).await;
        let mut args = vec!["replay", "--json"];
        args.extend(filter.iter().map(String::as_str));
        let document = run_json(&names, &args).await;
        assert_eq!(event_ids_of(&document), ids(&expected), "{filter:?}");
        assert_eq!(document["replayed"], expected.len(), "{filter:?}");

        let replayed = broker.drain(&names.work_queue).await;
        assert_eq!(
            replayed.iter().map(message_event_id).collect::<Vec<_>>(),
            ids(&expected),
            "{filter:?}: the work queue got exactly the selected messages"
        );
        for (message, spec) in replayed.iter().zip(&expected) {
            assert_eq!(message.delivery.routing_key.as_str(), spec.routing_key);
            assert_eq!(
                message.delivery.exchange.as_str(),
                names.replay_exchange(),
                "published to the replay exchange"
            );
        }
        let rest: Vec<&DeadLetterSpec> = all
            .iter()
            .filter(|s| !expected.iter().any(|e| e.event_id == s.event_id))
            .collect();
        assert_eq!(
            broker.drain_ids(&names.dead_letter_queue).await,
            ids(&rest),
            "{filter:?}: the others stay, in their order"
        );
    }
}

#[tokio::test]
async fn a_dry_run_moves_nothing_and_lists_exactly_the_selected() {
    let broker = Broker::new("dlq-dry").await;
    let names = &broker.names;
    let all = six();
    broker.seed(&all).await;

    let document = run_json(
        names,
        &["replay", "--dry-run", "--error-kind", "mapping", "--json"],
    )
    .await;
    assert_eq!(event_ids_of(&document), ids(&[&all[0], &all[5]]));
    assert_eq!(document["dry_run"], true);
    assert_eq!(document["replayed"], 0);

    let output = run(names, &["replay", "--dry-run", "--okta-code", "E0000006"]).await;
    assert_eq!(output.status.code(), Some(0));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains(&all[1].event_id), "{table}");
    for other in [&all[0], &all[2], &all[3], &all[4], &all[5]] {
        assert!(!table.contains(&other.event_id), "{table}");
    }
    assert!(
        table
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("dry run: 1 of 6")),
        "{table}"
    );

    assert_eq!(broker.depth(&names.work_queue).await, 0, "nothing moved");
    assert_eq!(
        broker.drain_ids(&names.dead_letter_queue).await,
        ids(&all.iter().collect::<Vec<_>>()),
        "everything stays, in order"
    );
}

#[tokio::test]
async fn the_limit_replays_only_the_first_selected_messages() {
    let broker = Broker::new("dlq-limit").await;
    let names = &broker.names;
    let all = six();
    broker.seed(&all).await;

    let document = run_json(names, &["replay", "--limit", "2", "--json"]).await;
    assert_eq!(event_ids_of(&document), ids(&[&all[0], &all[1]]));
    let document = run_json(
        names,
        &["replay", "--error-kind", "okta", "--limit", "1", "--json"],
    )
    .await;
    assert_eq!(
        event_ids_of(&document),
        ids(&[&all[4]]),
        "m2 already replayed; the next okta failure"
    );

    assert_eq!(
        broker.drain_ids(&names.work_queue).await,
        ids(&[&all[0], &all[1], &all[4]])
    );
    assert_eq!(
        broker.drain_ids(&names.dead_letter_queue).await,
        ids(&[&all[2], &all[3], &all[5]])
    );
}

#[tokio::test]
async fn list_shows_and_groups_without_removing_anything() {
    let broker = Broker::new("dlq-list").await;
    let names = &broker.names;
    let all = six();
    broker.seed(&all).await;

    let document = run_json(names, &["dlq", "list", "--json"]).await;
    assert_eq!(
        event_ids_of(&document),
        ids(&all.iter().collect::<Vec<_>>())
    );
    let second = &document["messages"][1];
    assert_eq!(second["routing_key"], "employee.removed");
    assert_eq!(second["employee_id"], "E-2");
    assert_eq!(second["error_kind"], "okta");
    assert_eq!(second["okta_error_code"], "E0000006");
    assert_eq!(second["okta_request_id"], "req-test");
    assert_eq!(second["attempts"], 1);
    assert_eq!(second["failed_at"], "2026-11-28T09:10:00Z");
    assert_eq!(second["replay_count"], 0);
    assert!(second["error_message"]
        .as_str()
        .is_some_and(|m| m.starts_with("okta failure")));

    let grouped = run_json(names, &["dlq", "list", "--group-by", "kind", "--json"]).await;
    let groups = grouped["groups"].as_array().expect("groups");
    let summary: Vec<(String, u64)> = groups
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap_or("").to_owned(),
                g["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("mapping".to_owned(), 2),
            ("okta".to_owned(), 2),
            ("transient".to_owned(), 1),
            ("validation".to_owned(), 1)
        ]
    );
    assert_eq!(groups[0]["first_failed_at"], "2026-11-27T12:00:00Z");
    assert_eq!(groups[0]["last_failed_at"], "2026-11-28T09:00:00Z");

    let output = run(names, &["dlq", "list", "--group-by", "okta-code"]).await;
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.starts_with("OKTA CODE"), "{table}");
    assert!(table.contains("(none)"), "{table}");

    let output = run(names, &["dlq", "list", "--employee-id", "E-1"]).await;
    assert_eq!(output.status.code(), Some(0));
    let table = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "heading, two messages, summary: {table}");
    assert!(lines[0].contains("EVENT TYPE") && lines[0].contains("ERROR"));
    assert!(
        lines[1].contains(&all[0].event_id)
            && lines[1].ends_with(&format!("mapping failure of {}", all[0].event_id))
    );
    assert!(lines[2].contains(&all[3].event_id));
    assert_eq!(
        lines[3],
        format!(
            "2 of 6 message(s) in '{}' listed; nothing was removed",
            names.dead_letter_queue
        )
    );

    assert_eq!(
        broker.drain_ids(&names.dead_letter_queue).await,
        ids(&all.iter().collect::<Vec<_>>()),
        "listing removed nothing and kept the order"
    );
}

#[tokio::test]
async fn purge_deletes_nothing_without_yes_and_exactly_the_selected_with_it() {
    let broker = Broker::new("dlq-purge").await;
    let names = &broker.names;
    let all = six();
    broker.seed(&all).await;

    let output = run(names, &["dlq", "purge", "--error-kind", "okta"]).await;
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&all[1].event_id) && stdout.contains(&all[4].event_id));
    assert!(
        stdout.contains("would delete 2 of 6") && stdout.contains("--yes"),
        "{stdout}"
    );
    assert_eq!(broker.depth(&names.dead_letter_queue).await, 6);

    let document = run_json(
        names,
        &["dlq", "purge", "--error-kind", "okta", "--yes", "--json"],
    )
    .await;
    assert_eq!(document["deleted"], 2);
    assert_eq!(event_ids_of(&document), ids(&[&all[1], &all[4]]));
    assert_eq!(broker.depth(&names.work_queue).await, 0, "nothing replayed");
    assert_eq!(
        broker.drain_ids(&names.dead_letter_queue).await,
        ids(&[&all[0], &all[2], &all[3], &all[5]])
    );
}

#[tokio::test]
async fn a_replayed_copy_keeps_the_message_starts_afresh_and_reaches_only_the_work_queue() {
    let broker = Broker::with_extra_queues("dlq-copy", &[".spy"]).await;
    let names = &broker.names;
    // Another subscriber of the input exchange, which must not see replays.
    let spy = format!("{}.spy", names.work_queue);
    broker
        .channel
        .queue_declare(
            spy.as_str().into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("spy queue");
    broker
        .channel
        .queue_bind(
            spy.as_str().into(),
            names.input_exchange.as_str().into(),
            "#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind spy");

    let mut spec = DeadLetterSpec::new("copy", "employee.added", "E-7");
    spec.kind = "okta";
    spec.okta_code = Some("E0000006");
    spec.replay_count = Some(1);
    broker.dead_letter(&spec).await;
    // Taken and put back as it was, to compare the copy with it.
    let original = broker.drain(&names.dead_letter_queue).await;
    let original_body = original[0].delivery.data.clone();
    publish_to(
        &broker.channel,
        &names.dead_letter_exchange,
        "employee.added",
        &original_body,
        original[0].delivery.properties.clone(),
    )
    .await;

    let before = time::OffsetDateTime::now_utc() - Duration::from_secs(1);
    run_json(names, &["replay", "--json"]).await;
    let copies = broker.drain(&names.work_queue).await;
    assert_eq!(copies.len(), 1);
    let copy = &copies[0].delivery;
    assert_eq!(copy.data, original_body, "body kept");
    assert_eq!(copy.routing_key.as_str(), "employee.added");
    assert_eq!(
        copy.properties.message_id(),
        &Some(spec.event_id.as_str().into())
    );
    assert_eq!(
        copy.properties.content_type(),
        &Some("application/json".into())
    );
    assert_eq!(copy.properties.delivery_mode(), &Some(2));
    let headers = copy.properties.headers().clone();
    assert_eq!(header_int(&headers, "x-replay-count"), Some(2));
    let replayed_at = header_str(&headers, "x-replayed-at").expect("x-replayed-at");
    let replayed_at =
        time::OffsetDateTime::parse(&replayed_at, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
    assert!(replayed_at >= before, "{replayed_at}");
    for gone in [
        "x-error-kind",
        "x-error-message",
        "x-attempts",
        "x-failed-at",
        "x-okta-error-code",
        "x-okta-request-id",
    ] {
        assert_eq!(header_str(&headers, gone), None, "{gone} removed");
    }
    assert_eq!(
        header_str(&headers, "x-original-exchange").as_deref(),
        Some(names.input_exchange.as_str())
    );
    assert_eq!(
        header_str(&headers, "x-original-routing-key").as_deref(),
        Some("employee.added")
    );
    assert_eq!(
        broker.depth(&spy).await,
        0,
        "other subscribers see no replay"
    );
    assert_eq!(broker.depth(&names.dead_letter_queue).await, 0);
}

#[tokio::test]
async fn a_message_the_broker_dead_lettered_is_replayed_under_its_original_routing_key() {
    let broker = Broker::new("dlq-xdeath").await;
    let names = &broker.names;
    let id = event_id("xdeath");
    publish_to(
        &broker.channel,
        &names.input_exchange,
        "employee.removed",
        leaver(&id, Some("E-8"), None).to_string().as_bytes(),
        BasicProperties::default().with_content_type("application/json".into()),
    )
    .await;
    // An operator rejects it from the work queue: RabbitMQ dead-letters it with x-death.
    let got = broker
        .channel
        .basic_get(
            names.work_queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .expect("get")
        .expect("the message is in the work queue");
    got.delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    let deadline = Instant::now() + PATIENCE;
    while broker.depth(&names.dead_letter_queue).await == 0 {
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let listed = run_json(names, &["dlq", "list", "--json"]).await;
    let message = &listed["messages"][0];
    assert_eq!(message["error_kind"], "broker:rejected");
    assert_eq!(message["routing_key"], "employee.removed");
    assert_eq!(message["employee_id"], "E-8");
    assert!(message["failed_at"].is_string(), "{message}");

    let document = run_json(
        names,
        &["replay", "--error-kind", "broker:rejected", "--json"],
    )
    .await;
    assert_eq!(event_ids_of(&document), vec![id.clone()]);
    let copies = broker.drain(&names.work_queue).await;
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].delivery.routing_key.as_str(), "employee.removed");
    let headers = copies[0].delivery.properties.headers().clone();
    assert_eq!(
        header_str(&headers, "x-original-exchange").as_deref(),
        Some(names.input_exchange.as_str())
    );
    assert_eq!(header_int(&headers, "x-replay-count"), Some(1));
}

#[tokio::test]
async fn a_paced_replay_killed_halfway_loses_nothing() {
    // Paced, one copy in flight at a time: at most that one is duplicated.
    replay_killed_halfway("dlq-kill-paced", 20, &["replay", "--rate", "10/s"], 1).await;
}

#[tokio::test]
async fn a_full_speed_replay_killed_halfway_loses_nothing() {
    // At full speed up to 64 copies await their confirms: at most those are duplicated.
    replay_killed_halfway("dlq-kill-fast", 1000, &["replay"], 64).await;
}

/// Seeds `count` dead letters, starts `args`, kills it (SIGKILL: no chance to clean up)
/// once about half are re-published, and checks that every message is either still in
/// the dead-letter queue or re-published, with at most `max_duplicates` in both.
async fn replay_killed_halfway(test: &str, count: usize, args: &[&str], max_duplicates: usize) {
    let broker = Broker::new(test).await;
    let names = &broker.names;
    let specs: Vec<DeadLetterSpec> = (0..count)
        .map(|n| DeadLetterSpec::new(&format!("kill{n}"), "employee.added", "E-9"))
        .collect();
    broker.seed(&specs).await;

    let mut child = command(names, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("replay starts");
    let half = u32::try_from(count / 2).expect("small");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if broker.depth(&names.work_queue).await >= half {
            break;
        }
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "replay ended before it was killed"
        );
        assert!(Instant::now() < deadline, "replay made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("kill -9");
    child.wait().expect("reaped");

    // The broker returns the killed client's unacknowledged messages when it notices the
    // connection is gone. Until then, those whose copies are not in the work queue are
    // counted nowhere; once every message is counted, each is in one queue or both.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let total =
            broker.depth(&names.work_queue).await + broker.depth(&names.dead_letter_queue).await;
        if total as usize >= count {
            break;
        }
        assert!(Instant::now() < deadline, "messages went missing: {total}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replayed = broker.drain_ids(&names.work_queue).await;
    let remaining = broker.drain_ids(&names.dead_letter_queue).await;
    assert!(
        !remaining.is_empty() && replayed.len() < count,
        "killed halfway: {} replayed, {} remaining",
        replayed.len(),
        remaining.len()
    );
    let seen: BTreeSet<&String> = replayed.iter().chain(&remaining).collect();
    let expected: BTreeSet<&String> = specs.iter().map(|s| &s.event_id).collect();
    assert_eq!(
        seen, expected,
        "every message is replayed or still dead-lettered"
    );
    assert!(
        replayed.len() + remaining.len() <= count + max_duplicates,
        "at most the copies in flight are duplicated: {} + {}",
        replayed.len(),
        remaining.len()
    );
    // What was not replayed is still in queue order.
    let order: Vec<&String> = specs
        .iter()
        .map(|s| &s.event_id)
        .filter(|id| remaining.contains(id))
        .collect();
    assert_eq!(remaining.iter().collect::<Vec<_>>(), order);
}

#[tokio::test]
async fn a_mapping_failure_replayed_after_the_group_is_created_succeeds() {
    let options = Options {
        mapping: json!({"Finance": "Finance-Ledger"}),
        ..Options::default()
    };
    let mut world = World::start_with("dlq-mapping", options).await;
    let id = event_id("dlq-mapping");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-950", "fin@example.com", &["Finance"]),
        )
        .await;
    let failed = world.final_outcome(&id).await;
    assert_eq!(failed["error"]["kind"], "mapping", "{failed}");
    assert_eq!(world.queue_depth(&world.names.dead_letter_queue).await, 1);

    // The admin creates the group; the operator replays.
    world
        .sim
        .create_group("Finance-Ledger", GroupType::OktaGroup);
    let document = run_json(
        &world.names,
        &["replay", "--error-kind", "mapping", "--json"],
    )
    .await;
    assert_eq!(document["replayed"], 1);

    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["attempt"], 1, "a fresh attempt count");
    let user = world.sim.user("fin@example.com").expect("user created");
    assert_eq!(world.sim.user_group_names(&user.id), vec!["Finance-Ledger"]);
    assert_eq!(world.queue_depth(&world.names.dead_letter_queue).await, 0);
}

#[tokio::test]
async fn a_stale_hire_replayed_after_the_leaver_was_deactivated_stays_deactivated() {
    let options = Options {
        mapping: json!({"Finance": "Finance-Ledger"}),
        ..Options::default()
    };
    let mut world = World::start_with("dlq-stale", options).await;
    let user_id = world
        .sim
        .create_user(profile("E-960", "stale@example.com"), UserStatus::Active);

    // A hire (a rehire, say) fails because its group is missing…
    let hire_id = event_id("dlq-stale-hire");
    world
        .publish(
            "employee.added",
            &hire(&hire_id, "E-960", "stale@example.com", &["Finance"]),
        )
        .await;
    assert_eq!(world.final_outcome(&hire_id).await["status"], "failed");
    // …then the employee leaves, and is deactivated.
    let leave_id = event_id("dlq-stale-leave");
    world
        .publish(
            "employee.removed",
            &leaver(&leave_id, Some("E-960"), Some("stale@example.com")),
        )
        .await;
    assert_eq!(world.final_outcome(&leave_id).await["status"], "succeeded");
    assert_eq!(
        world.sim.user(&user_id).expect("user").status,
        UserStatus::Deprovisioned
    );

    // The group is fixed and the old hire replayed: it must not re-enable the leaver.
    world
        .sim
        .create_group("Finance-Ledger", GroupType::OktaGroup);
    let document = run_json(&world.names, &["replay", "--event-id", &hire_id, "--json"]).await;
    assert_eq!(document["replayed"], 1);
    let outcome = world.final_outcome(&hire_id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["actions"], json!(["skipped.stale"]));
    assert_eq!(
        world.sim.user(&user_id).expect("user").status,
        UserStatus::Deprovisioned
    );
    assert!(world.sim.user_group_names(&user_id).is_empty());
}

#[tokio::test]
async fn broker_errors_end_with_one_clear_line_and_a_non_zero_status() {
    let names = TopologyNames::prefixed(&unique_prefix("dlq-errors"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };

    let mut unreachable = command(&names, &["dlq", "list"]);
    unreachable.env("AMQP_URL", "amqp://guest:hunter2@127.0.0.1:1/%2f");
    let output = unreachable.output().expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("error: cannot connect to the broker"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(output.stdout.is_empty());

    // Nothing declared yet: the dead-letter queue does not exist, and is not created.
    let output = run(&names, &["replay", "--dry-run"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&names.dead_letter_queue), "{stderr}");
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("connect");
    let probe = conn.create_channel().await.expect("channel");
    let exists = probe
        .queue_declare(
            names.dead_letter_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(exists.is_err(), "a mistyped name leaves no queue behind");
}

#[tokio::test]
async fn a_replay_that_cannot_set_up_its_route_moves_nothing_and_says_why() {
    let broker = Broker::new("dlq-conflict").await;
    let names = &broker.names;
    let all = six();
    broker.seed(&all).await;
    // Configured for a classic work queue while the broker has a quorum one: the replay
    // cannot set up its route, and must not take anything.
    let mut replay = command(names, &["replay"]);
    replay.env("QUEUE_TYPE", "classic");
    let output = tokio::task::spawn_blocking(move || replay.output().expect("runs"))
        .await
        .expect("task");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&names.work_queue), "{stderr}");
    assert_eq!(broker.depth(&names.work_queue).await, 0);
    assert_eq!(
        broker.drain_ids(&names.dead_letter_queue).await,
        ids(&all.iter().collect::<Vec<_>>())
    );
}

#[test]
fn the_dead_letter_commands_have_help() {
    for args in [
        vec!["dlq", "--help"],
        vec!["dlq", "list", "--help"],
        vec!["dlq", "replay", "--help"],
        vec!["dlq", "purge", "--help"],
        vec!["replay", "--help"],
    ] {
        let output = Command::new(BINARY).args(&args).output().expect("runs");
        assert!(output.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("Usage:"), "{args:?}: {help}");
    }
}

#[tokio::test]
async fn a_replay_stopped_with_ctrl_c_settles_reports_and_audits_what_it_did() {
    let broker = Broker::new("dlq-ctrl-c").await;
    let names = &broker.names;
    // The audit event, as a consumer of the results exchange sees it.
    let audit_queue = format!("{}.audit-seen", names.work_queue);
    broker
        .channel
        .queue_declare(
            audit_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("audit queue");
    broker
        .channel
        .queue_bind(
            audit_queue.as_str().into(),
            names.results_exchange.as_str().into(),
            "operator.#".into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("audit binding");
    let count = 40;
    let specs: Vec<DeadLetterSpec> = (0..count)
        .map(|n| DeadLetterSpec::new(&format!("stop{n}"), "employee.added", "E-9"))
        .collect();
    broker.seed(&specs).await;

    let child = command(names, &["replay", "--rate", "20/s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("replay starts");
    let deadline = Instant::now() + PATIENCE;
    while broker.depth(&names.work_queue).await < 5 {
        assert!(Instant::now() < deadline, "replay made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let interrupt = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(interrupt.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().expect("output"))
        .await
        .expect("the binary's task");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopped by the operator"), "{stderr}");

    // What it printed is what happened: each replayed message left the dead-letter
    // queue, the rest stayed, in order, and nothing is in both.
    let printed: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let replayed = broker.drain_ids(&names.work_queue).await;
    let remaining = broker.drain_ids(&names.dead_letter_queue).await;
    assert_eq!(printed["replayed"], json!(replayed.len()), "{printed}");
    assert_eq!(event_ids_of(&printed), replayed);
    assert!(!remaining.is_empty(), "stopped before the end");
    let mut all = replayed.clone();
    all.extend(remaining);
    let expected: Vec<String> = specs.iter().map(|s| s.event_id.clone()).collect();
    assert_eq!(all, expected, "every message once, in order");

    let audit = broker.drain(&audit_queue).await;
    assert_eq!(audit.len(), 1, "one audit event");
    let event: Value = serde_json::from_slice(&audit[0].delivery.data).expect("audit JSON");
    assert_eq!(event["event_type"], "operator.replay", "{event}");
    assert_eq!(event["interrupted"], true, "{event}");
    assert_eq!(event["count"], json!(replayed.len()), "{event}");
}
