//! A parked message survives a missing route back to the work queue: the delay queues
//! dead-letter at least once. Its own test binary, because it lowers a broker-global
//! setting (how often the broker retries an unconfirmed dead-lettering; 180 s by
//! default), restored when the test ends.

mod common;

use common::*;
use iam_provisioner::okta_sim::UserStatus;
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use serde_json::json;

/// Sets `rabbit.dead_letter_worker_publisher_confirm_timeout` (ms) while alive.
struct SettleTimeout;

impl SettleTimeout {
    fn lower(ms: u32) -> Self {
        eval(&format!(
            "application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout, {ms})."
        ));
        SettleTimeout
    }
}

impl Drop for SettleTimeout {
    fn drop(&mut self) {
        eval("application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout, 180000).");
    }
}

fn eval(expression: &str) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["eval", expression])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Messages a quorum queue holds for dead-lettering that the target has not confirmed.
fn messages_awaiting_dead_lettering(queue: &str) -> u64 {
    let answer = eval(&format!(
        "{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"/\">>, queue, <<\"{queue}\">>)), \
         proplists:get_value(messages_dlx, rabbit_amqqueue:info(Q, [messages_dlx]))."
    ));
    answer.parse().unwrap_or(0)
}

#[tokio::test]
async fn a_parked_removal_survives_a_missing_binding_and_comes_back_when_it_is_restored() {
    let _settle = SettleTimeout::lower(1000);
    let mut world = World::start("at-least-once").await;
    let user = world
        .sim
        .create_user(profile("E-940", "survivor@example.com"), UserStatus::Active);
    let effective = (time::OffsetDateTime::now_utc() + time::Duration::seconds(3))
        .replace_nanosecond(0)
        .expect("whole second");
    let id = event_id("survivor");
    let mut body = leaver(&id, Some("E-940"), Some("survivor@example.com"));
    body["effective_at"] = json!(effective
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format"));
    world.publish("employee.removed", &body).await;
    let scheduled = world.final_outcome(&id).await;
    assert!(
        scheduled["actions"]
            .to_string()
            .contains("removal.scheduled"),
        "{scheduled}"
    );

    // The way back is cut: the work queue's binding to the retry exchange is gone.
    let parking = world.parking();
    let work_queue = world.names.work_queue.clone();
    world
        .channel
        .queue_unbind(
            work_queue.as_str().into(),
            parking.retry_exchange.as_str().into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .expect("unbind");

    // The removal expires with nowhere to go: the broker keeps it and retries.
    eventually("the expired removal is kept for dead-lettering", || {
        let queues = parking.queues();
        async move {
            queues
                .iter()
                .map(|q| messages_awaiting_dead_lettering(q))
                .sum::<u64>()
                == 1
        }
    })
    .await;
    assert_eq!(
        world.sim.user(&user).expect("user").status,
        UserStatus::Active,
        "nothing ran while the route was missing"
    );

    // The route is restored: the removal comes back and runs.
    world
        .channel
        .queue_bind(
            work_queue.as_str().into(),
            parking.retry_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind again");
    let done = world.final_outcome(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        world.sim.user(&user).expect("user").status,
        UserStatus::Deprovisioned
    );
}
