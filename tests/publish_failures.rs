//! Publishes the broker refuses (issue 16, "A failed publish keeps the order"; issue 14,
//! "Ack-after-confirm tests"), on the real broker: a delivery whose outcome or
//! dead-letter copy is not confirmed stays unacknowledged and keeps its employee's turn,
//! nothing is counted as done, and once the broker accepts again each event is
//! processed exactly once.

mod broker_admin;
mod common;

use broker_admin::*;
use common::*;
use iam_provisioner::okta_sim::UserStatus;
use lapin::options::{
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

/// Declares a dashboard's queue bound to every outcome; `arguments` as given.
async fn declare_dashboard(world: &World, queue: &str, arguments: FieldTable) {
    world
        .channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .expect("dashboard queue");
    world
        .channel
        .queue_bind(
            queue.into(),
            world.names.results_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("dashboard binding");
}

fn prefix_of(world: &World) -> String {
    world
        .names
        .work_queue
        .strip_suffix("iam-provisioner")
        .expect("prefixed work queue")
        .to_owned()
}

/// Issue 16's history: a hire whose outcome the broker refuses, then the same
/// employee's removal, then a restart. The leaver must end disabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_outcome_keeps_the_hire_before_the_removal_and_the_leaver_stays_disabled() {
    let mut world = World::start("pubfail-order").await;
    let dashboard = format!("{}dashboard", prefix_of(&world));
    world.cleanup.extra_queues.push(dashboard.clone());
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    declare_dashboard(&world, &dashboard, arguments).await;
    // Fill it: from now on it refuses every outcome.
    publish_to(
        &world.channel,
        "",
        &dashboard,
        b"{}",
        BasicProperties::default(),
    )
    .await;

    let email = "refused.hire@example.com";
    let hire_id = event_id("hire");
    world
        .publish(
            "employee.added",
            &hire(&hire_id, "E-16", email, &["Engineering"]),
        )
        .await;
    eventually(
        "Okta has the hire and the broker refused its outcome",
        || async {
            world.sim.user(email).is_some()
                && metric(world.http, "iam_provisioner_publish_failures_total").await >= 1.0
        },
    )
    .await;
    // The broker's counts of a quorum queue lag by a few seconds.
    eventually(
        "the hire is unacknowledged while its outcome is refused",
        || async { queue_counts(&world.names.work_queue) == (0, 1) },
    )
    .await;
    let (status, body) = readyz(world.http).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("publishes refused"), "{body}");

    // The dashboard goes away; the same employee leaves.
    world
        .channel
        .queue_purge(dashboard.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    world
        .channel
        .queue_delete(dashboard.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the dashboard queue");
    let removal_id = event_id("removal");
    world
        .publish(
            "employee.removed",
            &leaver(&removal_id, Some("E-16"), Some(email)),
        )
        .await;
    let removal = world.final_outcome(&removal_id).await;
    assert_eq!(removal["status"], "succeeded", "{removal}");

    world.stop_service().await;
    world.restart_service().await;
    // Whatever the broker still held comes back first; an update of the same employee
    // published now runs after it (same employee, later in the queue), and changes no
    // status itself.
    let update_id = event_id("update");
    world
        .publish(
            "employee.updated",
            &hire(&update_id, "E-16", email, &["Engineering"]),
        )
        .await;
    let update = world.final_outcome(&update_id).await;
    assert_eq!(update["status"], "succeeded", "{update}");
    let user = world.sim.user(email).expect("the user exists");
    assert_eq!(
        user.status,
        UserStatus::Deprovisioned,
        "the hire must not come back after the removal and re-enable the leaver"
    );
}

/// Issue 14: a queue bound to the results exchange refuses everything (policy
/// `max-length 0` + `reject-publish`). The input stays unacknowledged, nothing is counted
/// as succeeded, and once the policy is lifted the event is done exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_the_broker_refuses_is_acknowledged_only_after_it_is_confirmed() {
    let mut world = World::start("pubfail-outcome").await;
    let dashboard = format!("{}dashboard", prefix_of(&world));
    world.cleanup.extra_queues.push(dashboard.clone());
    declare_dashboard(&world, &dashboard, FieldTable::default()).await;
    let policy = Policy::set(
        &format!("{}refuse", prefix_of(&world)),
        &exactly(&dashboard),
        r#"{"max-length":0,"overflow":"reject-publish"}"#,
        &dashboard,
    );

    let email = "refused.outcome@example.com";
    let id = event_id("hire");
    world
        .publish("employee.added", &hire(&id, "E-14", email, &["Sales"]))
        .await;
    // Refused more than once: the publish is sent again, holding the delivery.
    eventually("the outcome was refused twice", || async {
        metric(world.http, "iam_provisioner_publish_failures_total").await >= 2.0
    })
    .await;
    assert!(world.sim.user(email).is_some(), "Okta did the work");
    // The broker's counts of a quorum queue lag by a few seconds.
    eventually("the input is unacknowledged", || async {
        queue_counts(&world.names.work_queue) == (0, 1)
    })
    .await;
    let succeeded = r#"iam_provisioner_events_succeeded_total{event_type="employee.added"}"#;
    assert_eq!(
        metric(world.http, succeeded).await,
        0.0,
        "nothing counted as done"
    );
    assert_eq!(
        metric(world.http, "iam_provisioner_publishes_waiting").await,
        1.0
    );
    let (status, body) = readyz(world.http).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("publishes refused"), "{body}");

    policy.lift();
    eventually("the input is acknowledged", || async {
        queue_counts(&world.names.work_queue) == (0, 0)
    })
    .await;
    assert_eq!(metric(world.http, succeeded).await, 1.0, "done once");
    assert_eq!(
        metric(world.http, "iam_provisioner_publishes_waiting").await,
        0.0
    );
    // A refused publish still reaches the queues that accepted it (RabbitMQ routes to
    // each queue on its own), so consumers see copies; every copy says the same.
    let outcomes = world.outcomes_until_final(&id).await;
    assert!(outcomes
        .iter()
        .all(|o| o["status"] == "succeeded" && o["attempt"] == 1));
    let creates = world
        .sim
        .request_log()
        .iter()
        .filter(|r| r.operation == "createUser")
        .count();
    assert_eq!(creates, 1, "Okta saw the hire once");
    let (status, body) = readyz(world.http).await;
    assert_eq!(status, 200, "{body}");
}

/// Issue 14: the dead-letter queue refuses the copy. The input stays unacknowledged, no
/// failed outcome is published before the copy is confirmed, and after the policy is
/// lifted there is exactly one copy and one failed outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_copy_the_broker_refuses_keeps_the_input_until_it_is_confirmed() {
    let mut world = World::start("pubfail-dlq").await;
    let dlq = world.names.dead_letter_queue.clone();
    let policy = Policy::set(
        &format!("{}refuse-dlq", prefix_of(&world)),
        &exactly(&dlq),
        r#"{"max-length":0,"overflow":"reject-publish"}"#,
        &dlq,
    );
    let id = event_id("invalid");
    world
        .publish_raw(
            "employee.added",
            b"{not json",
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(id.as_str().into()),
        )
        .await;
    eventually("the dead-letter copy was refused twice", || async {
        metric(world.http, "iam_provisioner_publish_failures_total").await >= 2.0
    })
    .await;
    eventually("the input is unacknowledged", || async {
        queue_counts(&world.names.work_queue) == (0, 1)
    })
    .await;
    let failed = r#"iam_provisioner_events_failed_total{event_type="employee.added",error_kind="validation"}"#;
    assert_eq!(
        metric(world.http, failed).await,
        0.0,
        "no failure counted yet"
    );
    assert_eq!(queue_counts(&dlq), (0, 0));

    policy.lift();
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "failed", "{outcome}");
    assert_eq!(outcome["error"]["kind"], "validation", "{outcome}");
    eventually("the input is acknowledged", || async {
        queue_counts(&world.names.work_queue) == (0, 0)
    })
    .await;
    let copies = world.drain_dead_letters().await;
    assert_eq!(copies.len(), 1, "exactly one dead-letter copy");
    assert_eq!(metric(world.http, failed).await, 1.0);
}
