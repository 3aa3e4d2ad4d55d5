//! Personal data (issue 17): in partitioned mode the partition key header that travels
//! with every message is a stable hash, not the employee id or email; with
//! `LOG_PII=minimal` the service's log lines carry pseudonyms instead of ids and emails.

mod common;

use common::process::ServiceProcess;
use common::*;
use futures_util::StreamExt;
use iam_provisioner::amqp::topology::{TopologyNames, PARTITION_KEY_HEADER};
use iam_provisioner::okta_sim::{OktaSim, SimConfig, UserStatus};
use iam_provisioner::telemetry::pii::pseudonym;
use serde_json::json;

#[tokio::test]
async fn the_partition_key_header_is_a_stable_hash_of_the_employee() {
    let mut world = World::start_with(
        "pii-partition",
        Options {
            env: vec![
                ("PARTITIONS", "2".into()),
                ("REPLICAS", "1".into()),
                ("REPLICA_INDEX", "0".into()),
            ],
            ..Options::default()
        },
    )
    .await;
    world
        .cleanup
        .extra_queues
        .extend([0, 1].map(|p| world.names.partition_queue(p)));
    let _exchange = PartitionsExchangeCleanup(world.names.partitions_exchange());
    // Invalid hires (no names, no date): dead-lettered with the headers they travelled with.
    let bodies = [
        json!({"event_id": event_id("pii-a"), "employee": {"id": "E-PII1", "email": "pii.one@example.com"}}),
        json!({"event_id": event_id("pii-b"), "employee": {"id": "E-PII1", "email": "renamed@example.com"}}),
        json!({"event_id": event_id("pii-c"), "employee": {"email": "Only.Email@example.com"}}),
    ];
    let ids: Vec<String> = bodies
        .iter()
        .map(|b| b["event_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    for body in &bodies {
        world.publish("employee.added", body).await;
    }
    for outcome in world.final_outcomes_of(&ids).await.values() {
        assert_eq!(outcome["status"], "failed", "{outcome}");
    }
    let mut keys = std::collections::HashMap::new();
    for message in world.drain_dead_letters().await {
        let body: serde_json::Value = serde_json::from_slice(&message.delivery.data).expect("JSON");
        let key = header_str(message.delivery.properties.headers(), PARTITION_KEY_HEADER)
            .expect("the copy carries the partition key");
        keys.insert(
            body["event_id"].as_str().unwrap_or_default().to_owned(),
            key,
        );
    }
    assert_eq!(keys.len(), 3, "{keys:?}");
    for key in keys.values() {
        assert!(key.starts_with("h:") && key.len() == 18, "{key}");
        for personal in ["E-PII1", "pii.one", "renamed", "only.email", "Only.Email"] {
            assert!(!key.contains(personal), "{key}");
        }
    }
    assert_eq!(
        keys[&ids[0]], keys[&ids[1]],
        "one employee, one key, whatever the email"
    );
    assert_ne!(keys[&ids[0]], keys[&ids[2]]);
    assert_eq!(keys[&ids[0]], pseudonym("id:E-PII1"));
}

#[tokio::test]
async fn log_pii_minimal_puts_pseudonyms_in_the_log_lines() {
    let names = TopologyNames::prefixed(&unique_prefix("pii-log"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    let sim = OktaSim::start(SimConfig::default()).await.expect("sim");
    let people = [
        ("E-PIILOG0", "pii.log0@example.com"),
        ("E-PIILOG1", "pii.log1@example.com"),
    ];
    for (id, email) in people {
        sim.create_user(profile(id, email), UserStatus::Active);
    }
    let (_conn, channel, mut outcomes) = observe(&names).await;
    let mut service = ServiceProcess::spawn(
        &names,
        &sim,
        &[
            ("LOG_PII", "minimal"),
            ("RUST_LOG", "info"),
            ("OFFBOARDING_GUARD_MAX", "1"),
            ("OFFBOARDING_GUARD_WINDOW", "300"),
        ],
    );
    service.wait_for_log("consuming").await;
    for (id, email) in people {
        let body = leaver(&event_id("pii-log"), Some(id), Some(email));
        publish_to(
            &channel,
            &names.input_exchange,
            "employee.removed",
            body.to_string().as_bytes(),
            lapin::BasicProperties::default().with_content_type("application/json".into()),
        )
        .await;
    }
    let mut statuses = Vec::new();
    while statuses.len() < 2 {
        let delivery = tokio::time::timeout(PATIENCE, outcomes.next())
            .await
            .expect("an outcome in time")
            .expect("stream open")
            .expect("delivery");
        let outcome: serde_json::Value = serde_json::from_slice(&delivery.data).expect("JSON");
        if outcome["status"] != "retrying" {
            statuses.push(outcome["status"].as_str().unwrap_or_default().to_owned());
        }
    }
    statuses.sort();
    assert_eq!(statuses, ["held", "succeeded"]);
    service.wait_for_log("offboarding guard").await;
    service.terminate();
    service.wait_exit().await;
    let log = service.log_text();
    let held_line = log
        .lines()
        .find(|l| l.contains("offboarding guard"))
        .expect("the hold is logged");
    assert!(
        people
            .iter()
            .any(|(id, _)| held_line.contains(&pseudonym(id))),
        "the held employee is named by pseudonym: {held_line}"
    );
    for (id, email) in people {
        assert!(!log.contains(id), "{id} in the log:\n{log}");
        assert!(!log.contains(email), "{email} in the log:\n{log}");
    }
}
