//! Honest errors on reconnect (issue 16): a declaration the broker refuses because the
//! object exists with other arguments is reported as that conflict, naming the object
//! and the argument, not as "broker still unavailable"; it clears once resolved.

mod broker_admin;
mod common;

use broker_admin::*;
use common::*;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_argument_conflict_on_reconnect_is_reported_as_that_conflict() {
    let world = World::start("conflict").await;
    eventually("the service consumes", || async {
        readyz(world.http).await.0 == 200
    })
    .await;
    // An operator re-creates the dead-letter queue with an argument of their own.
    let dlq = world.names.dead_letter_queue.clone();
    world
        .channel
        .queue_delete(dlq.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1000));
    world
        .channel
        .queue_declare(
            dlq.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .expect("conflicting queue");
    // The service's connection drops, as in a broker restart.
    let closed = close_broker_connections(&format!("iam-provisioner {}", world.names.work_queue));
    assert!(closed >= 1);

    eventually("/readyz names the conflict", || async {
        let (status, body) = readyz(world.http).await;
        status == 503
            && body.contains("broker objects conflict")
            && body.contains(&dlq)
            && body.contains("x-max-length")
    })
    .await;

    // Resolved: the service declares its own queue again and consumes.
    world
        .channel
        .queue_delete(dlq.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the conflicting queue");
    eventually("ready again", || async {
        readyz(world.http).await.0 == 200
    })
    .await;
}
