//! A resource alarm (issue 16), in a test binary of its own because it changes a
//! broker-global setting: with the memory watermark lowered, the broker blocks every
//! connection that publishes. `/readyz` and `/metrics` must say so, the delivery must
//! wait unacknowledged (a confirm delayed by a block is not a failed publish), and after
//! the alarm clears the event is done once: nothing lost, nothing run twice.
//!
//! The watermark is read first and put back by a guard, even when the test fails; the
//! window is kept to the few seconds the service needs to meet the block.

mod broker_admin;
mod common;

use broker_admin::*;
use common::*;
use std::time::Duration;

/// Lowers the memory high watermark until cleared or dropped. A watchdog thread puts it
/// back after `ALARM_AT_MOST` whatever happens to the test (a hang included), so that
/// other tests on the broker are never blocked for long.
struct MemoryAlarm {
    clear: Option<std::sync::mpsc::Sender<()>>,
    watchdog: Option<std::thread::JoinHandle<()>>,
}

const ALARM_AT_MOST: Duration = Duration::from_secs(45);

impl MemoryAlarm {
    fn raise() -> MemoryAlarm {
        let original = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])
            .trim()
            .to_owned();
        let (clear, cleared) = std::sync::mpsc::channel::<()>();
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.00001"]);
        let watchdog = std::thread::spawn(move || {
            // Cleared, dropped or timed out: put the original back in every case.
            let _ = cleared.recv_timeout(ALARM_AT_MOST);
            rabbitmqctl(&[
                "eval",
                &format!("vm_memory_monitor:set_vm_memory_high_watermark({original})."),
            ]);
        });
        MemoryAlarm {
            clear: Some(clear),
            watchdog: Some(watchdog),
        }
    }

    fn clear(self) {
        drop(self);
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        drop(self.clear.take());
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_connection_shows_in_readyz_and_loses_or_repeats_nothing() {
    // A confirm timeout far shorter than the block: a block must not count as one.
    let options = Options {
        env: vec![("PUBLISH_CONFIRM_TIMEOUT_MS", "1000".into())],
        ..Options::default()
    };
    let mut world = World::start_with("alarm", options).await;
    eventually("the service consumes", || async {
        readyz(world.http).await.0 == 200
    })
    .await;
    // A blocked connection publishes nothing, the test's included: both events are
    // published before the alarm. The hire is done first; Okta then answers slowly, so
    // the update's outcome is published while the alarm is raised.
    let email = "blocked.hire@example.com";
    let hire_id = event_id("hire");
    world
        .publish("employee.added", &hire(&hire_id, "E-AL", email, &["Sales"]))
        .await;
    let first = world.final_outcome(&hire_id).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    world.sim.set_latency(Duration::from_millis(2500));
    let id = event_id("update");
    world
        .publish(
            "employee.updated",
            &hire(&id, "E-AL", email, &["Sales", "Engineering"]),
        )
        .await;
    let alarm = MemoryAlarm::raise();

    eventually("/readyz says the broker blocks the connection", || async {
        let (status, body) = readyz(world.http).await;
        status == 503 && body.contains("broker blocked the connection")
    })
    .await;
    assert_eq!(
        metric(world.http, "iam_provisioner_broker_blocked").await,
        1.0
    );
    eventually("the update waits unacknowledged", || async {
        let (ready, unacked) = queue_counts(&world.names.work_queue);
        unacked >= 1 && ready + unacked <= 2
    })
    .await;
    let updated = r#"iam_provisioner_events_succeeded_total{event_type="employee.updated"}"#;
    assert_eq!(
        metric(world.http, updated).await,
        0.0,
        "not done while blocked"
    );
    // Longer than the confirm timeout, and the session still stands.
    let blocked_since = tokio::time::Instant::now();
    eventually("blocked for longer than the confirm timeout", || async {
        blocked_since.elapsed() > Duration::from_millis(1500)
    })
    .await;
    alarm.clear();

    world.sim.set_latency(Duration::ZERO);
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    eventually("/readyz is ready again", || async {
        readyz(world.http).await.0 == 200
    })
    .await;
    assert_eq!(
        metric(world.http, "iam_provisioner_broker_blocked").await,
        0.0
    );
    assert_eq!(metric(world.http, updated).await, 1.0, "done once");
    assert_eq!(
        metric(world.http, "iam_provisioner_broker_sessions_lost_total").await,
        0.0,
        "the block ended no session, so nothing was redelivered"
    );
    let creates = world
        .sim
        .request_log()
        .iter()
        .filter(|r| r.operation == "createUser")
        .count();
    assert_eq!(creates, 1, "Okta saw the hire once");
    let groups = world
        .sim
        .user_group_names(&world.sim.user(email).expect("user").id);
    assert!(
        groups.contains(&"Engineering-Core".to_owned()),
        "{groups:?}"
    );
    eventually("the input is acknowledged", || async {
        queue_counts(&world.names.work_queue) == (0, 0)
    })
    .await;
}
