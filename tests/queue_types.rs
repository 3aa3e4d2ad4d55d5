//! Explicit queue types and the upgrade of the waiting rooms of earlier versions, on the
//! real broker.

mod common;

use common::*;
use iam_provisioner::amqp::topology::{self, TopologyNames};
use iam_provisioner::okta_sim::UserStatus;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;
use std::collections::BTreeMap;

/// `rabbitmqctl list_queues name type arguments` for the queues starting with `prefix`.
fn queue_listing(prefix: &str) -> BTreeMap<String, (String, String)> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "name",
            "type",
            "arguments",
            "-q",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| {
            let mut columns = line.splitn(3, '\t');
            Some((
                columns.next()?.to_owned(),
                (columns.next()?.to_owned(), columns.next()?.to_owned()),
            ))
        })
        .collect()
}

#[tokio::test]
async fn the_dead_letter_hold_and_delay_queues_have_explicit_types() {
    let world = World::start("queue-types").await;
    let prefix = world
        .names
        .work_queue
        .trim_end_matches("iam-provisioner")
        .to_owned();
    let queues = queue_listing(&prefix);
    let parking = world.parking();
    let kind = |queue: &str| queues.get(queue).map(|(t, _)| t.as_str());
    assert_eq!(
        kind(&world.names.dead_letter_queue),
        Some("classic"),
        "{queues:?}"
    );
    assert_eq!(
        kind(&world.names.dead_letter_watch_queue()),
        Some("classic")
    );
    for queue in parking.queues() {
        assert_eq!(kind(&queue), Some("quorum"), "{queue}: {queues:?}");
        let (_, arguments) = &queues[&queue];
        assert!(
            arguments.contains("at-least-once") && arguments.contains("reject-publish"),
            "{queue} dead-letters at least once: {arguments}"
        );
    }
    // The type is an argument the broker keeps: a vhost default cannot have chosen it.
    assert!(queues[&world.names.dead_letter_queue]
        .1
        .contains("x-queue-type"));
}

#[tokio::test]
async fn an_existing_untyped_classic_dead_letter_queue_still_starts_and_a_quorum_one_is_named() {
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("connects");
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    // As an earlier version declared it: no x-queue-type.
    let names = TopologyNames::prefixed(&unique_prefix("untyped-dlq"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    let channel = conn.create_channel().await.expect("channel");
    channel
        .queue_declare(
            names.dead_letter_queue.as_str().into(),
            durable,
            FieldTable::default(),
        )
        .await
        .expect("old-style dead-letter queue");
    topology::declare(&channel, &names)
        .await
        .expect("an untyped classic queue is equivalent to x-queue-type classic");

    // A quorum dead-letter queue (a vhost whose default type is quorum made it so) is
    // refused with the object and the argument named, and left as it is.
    let quorum = TopologyNames::prefixed(&unique_prefix("quorum-dlq"));
    let _cleanup_quorum = BrokerCleanup {
        names: quorum.clone(),
        extra_queues: vec![],
    };
    let channel = conn.create_channel().await.expect("channel");
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(quorum.dead_letter_queue.as_str().into(), durable, arguments)
        .await
        .expect("quorum dead-letter queue");
    let channel = conn.create_channel().await.expect("channel");
    let error = topology::declare(&channel, &quorum)
        .await
        .expect_err("a quorum dead-letter queue is refused");
    let text = format!("{error} / {:?}", std::error::Error::source(&error));
    assert!(text.contains(&quorum.dead_letter_queue), "{text}");
    assert!(text.contains("x-queue-type"), "{text}");
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn the_classic_waiting_rooms_of_an_earlier_version_are_drained_into_the_new_ones() {
    let mut world = World::start("upgrade-queues").await;
    world
        .sim
        .create_user(profile("E-930", "upgrade@example.com"), UserStatus::Active);
    world.stop_service().await;
    let parking = world.parking();

    // What an earlier version left: a removal parked in the classic 1-day queue (bound
    // to the delay exchange), and a removal held in the classic hold queue.
    let legacy_delay = parking.legacy_delay_queue(&iam_provisioner::domain::schedule::BUCKETS[0]);
    let channel = &world.channel;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut arguments = FieldTable::default();
    arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(86_400_000));
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(parking.retry_exchange.as_str().into()),
    );
    channel
        .queue_declare(legacy_delay.as_str().into(), durable, arguments)
        .await
        .expect("legacy delay queue");
    channel
        .queue_declare(
            parking.legacy_held_queue.as_str().into(),
            durable,
            FieldTable::default(),
        )
        .await
        .expect("legacy hold queue");
    channel
        .exchange_declare(
            parking.delay_exchange.as_str().into(),
            ExchangeKind::Headers,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("delay exchange");
    let mut binding = FieldTable::default();
    binding.insert("x-match".into(), AMQPValue::LongString("all".into()));
    binding.insert(
        "iam-delay-bucket".into(),
        AMQPValue::LongString("1d".into()),
    );
    channel
        .queue_bind(
            legacy_delay.as_str().into(),
            parking.delay_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            binding,
        )
        .await
        .expect("legacy binding");

    let parked_id = event_id("upgrade-parked");
    let due = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let due_text = due
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let mut body = leaver(&parked_id, Some("E-930"), Some("upgrade@example.com"));
    body["effective_at"] = json!(due_text);
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("x-scheduled-kind", "removal"),
        ("x-scheduled-for", due_text.as_str()),
        ("iam-delay-bucket", "1d"),
        ("x-original-exchange", world.names.input_exchange.as_str()),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(parked_id.clone().into())
        .with_headers(headers);
    publish_to(
        channel,
        &parking.delay_exchange,
        "employee.removed",
        body.to_string().as_bytes(),
        properties,
    )
    .await;
    let held_id = event_id("upgrade-held");
    let mut held_headers = FieldTable::default();
    held_headers.insert(
        "x-original-routing-key".into(),
        AMQPValue::LongString("employee.removed".into()),
    );
    publish_to(
        channel,
        "",
        &parking.legacy_held_queue,
        leaver(&held_id, Some("E-931"), None).to_string().as_bytes(),
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(held_headers),
    )
    .await;
    assert_eq!(world.queue_depth(&legacy_delay).await, 1);

    // The new version starts: both are moved, and the old queues are gone.
    world.restart_service().await;
    let done = world.final_outcome(&parked_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let user = world.sim.user("upgrade@example.com").expect("user");
    assert_eq!(user.status, UserStatus::Deprovisioned);
    assert!(user.status_changed >= due, "not before it was due");
    assert_eq!(world.queue_depth(&parking.held_queue).await, 1);
    for queue in [legacy_delay, parking.legacy_held_queue.clone()] {
        let probe = world.conn.create_channel().await.expect("channel");
        let gone = probe
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        assert!(gone.is_err(), "{queue} is deleted once empty");
    }
}

#[tokio::test]
async fn held_sees_a_removal_an_older_replica_held_in_the_classic_hold_queue() {
    let world = World::start("held-upgrade").await;
    let parking = world.parking();
    // An older replica, still running during a rolling upgrade, holds a removal.
    world
        .channel
        .queue_declare(
            parking.legacy_held_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("legacy hold queue");
    let id = event_id("held-upgrade");
    let mut headers = FieldTable::default();
    headers.insert(
        "x-original-routing-key".into(),
        AMQPValue::LongString("employee.removed".into()),
    );
    publish_to(
        &world.channel,
        "",
        &parking.legacy_held_queue,
        leaver(&id, Some("E-932"), None).to_string().as_bytes(),
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers),
    )
    .await;

    let listed =
        common::policy::operator_command(&world.names, &["held", "release", "--dry-run"]).await;
    let text = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    assert!(text.contains(&id), "{text}");
    common::policy::depth_settles(&world, &parking.held_queue, 1, "the moved removal is held")
        .await;
}
