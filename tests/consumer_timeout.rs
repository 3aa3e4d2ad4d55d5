//! RabbitMQ's consumer timeout (issue 16), in a test binary of its own because it
//! changes broker-global settings: a delivery held unacknowledged through an Okta outage
//! longer than `consumer_timeout` makes the broker close the channel. The service must
//! notice while Okta is still down, and the event must run against Okta exactly once
//! after it recovers.
//!
//! RabbitMQ 3.10 reads `consumer_timeout` when a channel opens, and checks it on the
//! channel's tick (`channel_tick_interval`, 60 s by default). The test lowers both, lets
//! the service open its channels, and puts `consumer_timeout` back at once, so that only
//! channels opened in that short window (the service's, and the test's own outcome
//! consumer, which acknowledges nothing) carry the low value; the tick interval is put
//! back when the test ends. Both are restored by guards even when the test fails.

mod broker_admin;
mod common;

use broker_admin::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_timeout_in_an_okta_outage_is_noticed_at_once_and_the_event_runs_once() {
    let tick = BrokerSetting::set("channel_tick_interval", "1000");
    let timeout = BrokerSetting::set("consumer_timeout", "5000");
    let options = Options {
        env: vec![("OKTA_OUTAGE_THRESHOLD", "2".into())],
        ..Options::default()
    };
    let mut world = World::start_with("ctimeout", options).await;
    eventually("the service consumes", || async {
        readyz(world.http).await.0 == 200
    })
    .await;
    timeout.restore();

    world.sim.set_outage(Some(503));
    let email = "outage.hire@example.com";
    let id = event_id("hire");
    world
        .publish("employee.added", &hire(&id, "E-CT", email, &["Sales"]))
        .await;
    eventually("the consumer is paused: Okta is failing", || async {
        readyz(world.http).await.1.contains("Okta is failing")
    })
    .await;
    // The broker closes the channel after about 5 s plus one tick; the service must see
    // it now, not when Okta answers again.
    let patience = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    while metric(world.http, "iam_provisioner_broker_sessions_lost_total").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < patience,
            "the service never noticed the channel the broker closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(world.sim.user(email).is_none(), "Okta is still down");
    eventually("the service consumes again", || async {
        readyz(world.http).await.1.contains("Okta is failing")
            && !readyz(world.http).await.1.contains("broker not connected")
    })
    .await;

    world.sim.set_outage(None);
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    let answered: Vec<_> = world
        .sim
        .request_log()
        .into_iter()
        .filter(|r| r.operation == "createUser" && r.status != 503)
        .collect();
    assert_eq!(
        answered.len(),
        1,
        "the event ran once against Okta: {answered:?}"
    );
    let user = world.sim.user(email).expect("created");
    // Created with activation: PROVISIONED until the user sets a password.
    assert_eq!(
        user.status,
        iam_provisioner::okta_sim::UserStatus::Provisioned
    );
    eventually("the input is acknowledged", || async {
        queue_counts(&world.names.work_queue) == (0, 0)
    })
    .await;
    drop(tick);
}
