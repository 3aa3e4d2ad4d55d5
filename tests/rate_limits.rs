//! Okta's rate limits as a real org applies them (issue 12, "Rate-limit buckets per
//! endpoint"; issue 14, "A 429-storm test"): buckets per endpoint, a concurrency limit
//! that is not a bucket at 0, and 429s that never dead-letter nor use an attempt. Real
//! broker, fake Okta with per-endpoint buckets. The tests assert on outcomes and on the
//! fake's own account of its buckets, never on durations: a bucket's window is made far
//! longer than the tests' patience, so "did not wait for the reset" is "finished while
//! the fake still reports the same window at 0".

mod common;

use common::*;
use iam_provisioner::okta_sim::{
    Fault, FaultKind, RateLimit, RequestRecord, SimBucket, SimConfig, UserStatus,
};
use serde_json::Value;
use std::time::Duration;

/// Longer than any wait in these tests (`PATIENCE` is 30 s): a client that waits for
/// this window to reset times the test out.
const LONG_WINDOW: Duration = Duration::from_secs(120);

/// Publishes `n` hires of employees nobody else uses; returns their event ids.
async fn publish_hires(world: &World, label: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = event_id(&format!("{label}-hire"));
        let body = hire(
            &id,
            &format!("{label}-E{i}"),
            &format!("{label}{i}@example.com"),
            &[],
        );
        world.publish("employee.added", &body).await;
        ids.push(id);
    }
    ids
}

/// Every retried request names a 429 the fake answered, and counts up from 1.
fn assert_retries_name_their_429(log: &[RequestRecord]) -> usize {
    let mut retries = 0;
    for record in log.iter().filter(|r| r.retry_for.is_some()) {
        retries += 1;
        let named = record.retry_for.as_deref().unwrap_or_default();
        assert!(
            log.iter().any(|r| r.request_id == named && r.status == 429),
            "X-Okta-Retry-For {named} names no 429: {record:?}"
        );
        let count: u32 = record
            .retry_count
            .as_deref()
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("X-Okta-Retry-Count missing or bad: {record:?}"));
        assert!(count >= 1, "{record:?}");
    }
    retries
}

#[tokio::test]
async fn a_leaver_is_not_held_back_by_an_empty_create_user_bucket() {
    let create_limit = 5;
    let options = Options {
        sim: SimConfig {
            rate_limit: Some(
                RateLimit::workforce()
                    .with_window(LONG_WINDOW)
                    .with_limit(SimBucket::Users, create_limit),
            ),
            ..SimConfig::default()
        },
        ..Options::default()
    };
    let mut world = World::start_with("rl-leaver", options).await;
    let leaver_id = world.sim.create_user(
        profile("RL-LEAVER", "rl-leaver@example.com"),
        UserStatus::Active,
    );
    publish_hires(&world, "rlbacklog", 20).await;
    let sim = world.sim.clone();
    eventually("the createUser bucket at 0", || {
        let sim = sim.clone();
        async move {
            sim.bucket(SimBucket::Users)
                .is_some_and(|window| window.remaining == 0)
        }
    })
    .await;
    let exhausted = world.sim.bucket(SimBucket::Users).expect("window running");

    let removal = event_id("rl-removal");
    world
        .publish(
            "employee.removed",
            &leaver(&removal, None, Some("rl-leaver@example.com")),
        )
        .await;
    let outcome = world.final_outcome(&removal).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");

    // Done within the window that emptied the createUser bucket.
    let now = world.sim.bucket(SimBucket::Users).expect("same window");
    assert_eq!(
        now.reset_epoch, exhausted.reset_epoch,
        "the window never reset"
    );
    assert_eq!(now.remaining, 0);
    let created = world
        .sim
        .request_log()
        .iter()
        .filter(|r| r.operation == "createUser" && r.status == 200)
        .count();
    assert_eq!(
        created, create_limit as usize,
        "hires still wait for the reset"
    );
    let user = world.sim.user(&leaver_id).expect("user");
    assert_eq!(user.status, UserStatus::Deprovisioned);
    assert!(user.sessions_revoked >= 1);
}

#[tokio::test]
async fn a_concurrency_limit_429_is_retried_without_waiting_for_a_window() {
    let options = Options {
        sim: SimConfig {
            rate_limit: Some(RateLimit::workforce().with_window(LONG_WINDOW)),
            concurrency_limit: Some(2),
            latency: Duration::from_millis(100),
            ..SimConfig::default()
        },
        ..Options::default()
    };
    let mut world = World::start_with("rl-concurrency", options).await;
    let hires = publish_hires(&world, "rlconc", 12).await;
    let finals = world.final_outcomes_of(&hires).await;
    for (id, outcome) in &finals {
        assert_eq!(outcome["status"], "succeeded", "{id}: {outcome}");
    }
    assert!(world.drain_dead_letters().await.is_empty());
    let log = world.sim.request_log();
    let refused = log.iter().filter(|r| r.status == 429).count();
    assert!(refused > 0, "the in-flight cap of 2 was met: {log:?}");
    // The 429s carried the bucket's reset two minutes ahead; still in that window.
    let window = world.sim.bucket(SimBucket::Users).expect("first window");
    assert!(
        window.remaining > 0,
        "{window:?}: the bucket itself had room"
    );
    assert!(
        assert_retries_name_their_429(&log) >= refused,
        "every 429 was retried, naming it"
    );
}

#[tokio::test]
async fn a_429_storm_longer_than_the_attempts_ends_in_success_not_the_dead_letter_queue() {
    let options = Options {
        env: vec![("MAX_ATTEMPTS", "2".into())],
        sim: SimConfig {
            // Short windows, so that each 429 is waited out quickly.
            rate_limit: Some(RateLimit::workforce().with_window(Duration::from_secs(1))),
            ..SimConfig::default()
        },
        ..Options::default()
    };
    let mut world = World::start_with("rl-storm", options).await;
    // The client waits out two 429s itself per call; seven outlast MAX_ATTEMPTS=2
    // twice over.
    world.sim.inject_fault(Fault {
        method: Some("POST".into()),
        path_contains: Some("/api/v1/users".into()),
        times: 7,
        kind: FaultKind::Status {
            status: 429,
            error_code: "E0000047".into(),
        },
    });
    let id = event_id("rl-storm");
    world
        .publish(
            "employee.added",
            &hire(&id, "RL-STORM", "rl-storm@example.com", &[]),
        )
        .await;
    let outcomes = world.outcomes_until_final(&id).await;
    let (last, retrying) = outcomes.split_last().expect("a final outcome");
    assert!(
        retrying.len() >= 2,
        "more 429s than attempts: {outcomes:#?}"
    );
    for outcome in retrying {
        assert_eq!(outcome["status"], "retrying", "{outcome}");
        assert_eq!(outcome["error"]["kind"], "rate_limited", "{outcome}");
        assert_eq!(outcome["attempt"], 1, "a 429 uses no attempt: {outcome}");
    }
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(last["attempt"], Value::from(1));
    assert!(world.drain_dead_letters().await.is_empty());
    let user = world.sim.user("rl-storm@example.com").expect("created");
    assert!(
        matches!(user.status, UserStatus::Active | UserStatus::Provisioned),
        "{user:?}"
    );
    let log = world.sim.request_log();
    assert_eq!(log.iter().filter(|r| r.status == 429).count(), 7);
    assert!(assert_retries_name_their_429(&log) >= 1);
}
