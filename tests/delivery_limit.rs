//! A message the broker dead-letters by itself past a quorum queue's delivery limit still
//! gets its `failed` outcome, and `dlq list` shows why. Its own test binary: it applies a
//! broker policy (scoped to this test's work queue).

mod common;

use common::policy::{depth_settles, operator_command, ScopedPolicy};
use common::*;
use lapin::options::BasicGetOptions;

#[tokio::test]
async fn a_message_past_the_delivery_limit_gets_a_failed_outcome_and_is_listed_with_its_reason() {
    let mut world = World::start("delivery-limit").await;
    let _limit = ScopedPolicy::apply(&world.names.work_queue, r#"{"delivery-limit": 1}"#);
    // The service is down while a consumer that never acknowledges (a crash loop, a
    // consumer timeout) takes the message twice: the broker dead-letters it.
    world.stop_service().await;
    let id = event_id("limit");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-950", "limit@example.com", &["Sales"]),
        )
        .await;
    for _ in 0..2 {
        let crashing = world.conn.create_channel().await.expect("channel");
        let got = crashing
            .basic_get(
                world.names.work_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .expect("basic.get");
        assert!(got.is_some(), "the message is delivered again");
        crashing.close(200, "crash".into()).await.expect("close");
    }
    eventually("the broker dead-lettered the message", || async {
        world.queue_depth(&world.names.dead_letter_queue).await == 1
    })
    .await;

    world.restart_service().await;
    let failed = world.final_outcome(&id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["event_type"], "employee.added");
    assert_eq!(failed["employee_id"], "E-950");
    let message = failed["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("delivery_limit"), "{failed}");
    assert!(
        world.sim.user("limit@example.com").is_none(),
        "the hire never ran"
    );

    let listed = operator_command(&world.names, &["dlq", "list"]).await;
    let text = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    assert!(text.contains("broker:delivery_limit"), "{text}");
    assert!(text.contains(&id), "{text}");
    // Listing leaves it there, as often as anyone lists.
    depth_settles(
        &world,
        &world.names.dead_letter_queue,
        1,
        "listing leaves it",
    )
    .await;
}
