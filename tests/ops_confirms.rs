//! `replay` and `held release` remove an original only after the broker confirmed its
//! copy: with the target refusing copies (a policy of `max-length 0`, `overflow
//! reject-publish` on this test's work queue), the originals stay where they are and the
//! command exits non-zero; once the policy is lifted, each is moved exactly once. Its own
//! test binary: it applies broker policies.

mod common;

use common::policy::{depth_settles, operator_command, ScopedPolicy};
use common::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

const REFUSE_ALL: &str = r#"{"max-length": 0, "overflow": "reject-publish"}"#;

/// Refuses every copy the work queue would get: the policy, and one message in the
/// queue, since a quorum queue enters its reject-publish state only once a message put
/// it over its limit. Returns the policy's guard; the filler is taken out again by
/// [`take_filler`].
async fn refuse_copies(world: &World) -> ScopedPolicy {
    let policy = ScopedPolicy::apply(&world.names.work_queue, REFUSE_ALL);
    publish_to(
        &world.channel,
        "",
        &world.names.work_queue,
        b"filler",
        BasicProperties::default(),
    )
    .await;
    policy
}

/// Takes the filler out of the work queue, so that only the moved copies remain.
async fn take_filler(world: &World) {
    let taken = drain_queue(&world.channel, &world.names.work_queue).await;
    let bodies: Vec<&[u8]> = taken.iter().map(|m| m.delivery.data.as_slice()).collect();
    assert_eq!(bodies, [b"filler".as_slice()], "only the filler was let in");
}

#[tokio::test]
async fn replay_keeps_the_dead_letter_when_the_broker_refuses_its_copy() {
    let mut world = World::start("replay-refused").await;
    let id = event_id("replay-refused");
    // Not JSON: a validation failure, dead-lettered at once.
    world
        .publish_raw(
            "employee.added",
            b"not json",
            BasicProperties::default().with_message_id(id.clone().into()),
        )
        .await;
    let failed = world.final_outcome(&id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    world.stop_service().await;
    let dlq = world.names.dead_letter_queue.clone();
    assert_eq!(world.queue_depth(&dlq).await, 1);

    let refuse = refuse_copies(&world).await;
    let replay = operator_command(&world.names, &["replay"]).await;
    assert_ne!(replay.status.code(), Some(0), "{replay:?}");
    depth_settles(
        &world,
        &dlq,
        1,
        "the original stays in the dead-letter queue",
    )
    .await;
    take_filler(&world).await;

    drop(refuse);
    let replay = operator_command(&world.names, &["replay"]).await;
    assert_eq!(replay.status.code(), Some(0), "{replay:?}");
    depth_settles(&world, &dlq, 0, "the replayed original is removed").await;
    assert_eq!(
        world.queue_depth(&world.names.work_queue).await,
        1,
        "moved exactly once"
    );
}

#[tokio::test]
async fn held_release_keeps_the_held_removal_when_the_broker_refuses_its_copy() {
    let mut world = World::start("held-refused").await;
    let parking = world.parking();
    let id = event_id("held-refused");
    // A removal as the guard holds it.
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("x-original-routing-key", "employee.removed"),
        ("x-held-at", now_rfc3339().as_str()),
        ("x-employee-id", "E-960"),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    publish_to(
        &world.channel,
        "",
        &parking.held_queue,
        leaver(&id, Some("E-960"), Some("held-refused@example.com"))
            .to_string()
            .as_bytes(),
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(id.clone().into())
            .with_headers(headers),
    )
    .await;

    // The service is stopped so that it does not take the filler.
    world.stop_service().await;
    let refuse = refuse_copies(&world).await;
    let release = operator_command(&world.names, &["held", "release", "--yes"]).await;
    assert_ne!(release.status.code(), Some(0), "{release:?}");
    depth_settles(&world, &parking.held_queue, 1, "the held removal stays").await;
    take_filler(&world).await;

    drop(refuse);
    world.restart_service().await;
    let release = operator_command(&world.names, &["held", "release", "--yes"]).await;
    assert_eq!(release.status.code(), Some(0), "{release:?}");
    depth_settles(
        &world,
        &parking.held_queue,
        0,
        "the released removal leaves",
    )
    .await;
    let done = world.final_outcome(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    world.stop_service().await;
    assert_eq!(
        world.queue_depth(&world.names.work_queue).await,
        0,
        "released exactly once"
    );
}
