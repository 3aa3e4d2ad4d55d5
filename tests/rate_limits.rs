//! Okta's rate limits as a real org applies them (issue 12, "Rate-limit buckets per
//! endpoint"; issue 14, "A 429-storm test"): buckets per endpoint, a concurrency limit
//! that is not a bucket at 0, and 429s that never dead-letter nor use an attempt. Real
//! broker, fake Okta with per-endpoint buckets. The tests assert on outcomes and on the
//! fake's own account of its buckets, never on durations: a bucket's window is made far
//! longer than the tests' patience, so "did not wait for the reset" is "finished while
//! the fake still reports the same window at 0".
//!
//! One layer owns rate limits (issue 13): the client reports a 429 at once, the pacer
//! holds what follows, and the pipeline retries the event. So every 429 the fake gives
//! is seen as one `retrying` outcome of kind `rate_limited`, and the client's own part
//! is tested here against the fake without a broker.

mod common;

use common::*;
use iam_provisioner::okta::{LimitKind, OktaClient, OktaClientSettings, OktaError};
use iam_provisioner::okta_sim::{
    Fault, FaultKind, OktaSim, RateLimit, SimBucket, SimConfig, UserStatus,
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

/// A client of `sim` as the service builds it.
fn client_of(sim: &OktaSim) -> OktaClient {
    OktaClient::new(
        reqwest::Url::parse(&sim.base_url()).expect("url"),
        &secret(&sim.api_token()),
        OktaClientSettings::default(),
    )
    .expect("client")
}

fn new_user(email: &str) -> serde_json::Map<String, Value> {
    let mut profile = serde_json::Map::new();
    for (field, value) in [
        ("login", email),
        ("email", email),
        ("firstName", "Rate"),
        ("lastName", "Limited"),
    ] {
        profile.insert(field.into(), Value::from(value));
    }
    profile
}

#[tokio::test]
async fn the_client_reports_a_bucket_429_at_once_and_sends_nothing_until_the_reset() {
    // createUser and the search share Okta's `/api/v1/users` bucket, under two endpoints
    // for the pacer: the search spends it, so createUser meets a real 429.
    let window = Duration::from_secs(30);
    let sim = OktaSim::start(SimConfig {
        rate_limit: Some(
            RateLimit::workforce()
                .with_window(window)
                .with_limit(SimBucket::Users, 1),
        ),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let client = client_of(&sim);
    client
        .find_users_by_employee_number("E-RL-CLIENT")
        .await
        .expect("the bucket's one request");
    let error = client
        .create_user(&new_user("rl-client@example.com"), &[], true)
        .await
        .expect_err("the bucket is spent");
    let OktaError::RateLimited {
        limit, retry_after, ..
    } = &error
    else {
        panic!("not a rate limit: {error}");
    };
    assert_eq!(*limit, LimitKind::Bucket);
    // The reset: up to 30 s ahead, by Okta's clock (its `Date` truncated to the second).
    assert!(
        (Duration::from_secs(28)..=Duration::from_secs(31)).contains(retry_after),
        "{retry_after:?}"
    );
    let creates = || {
        sim.request_log()
            .iter()
            .filter(|r| r.operation == "createUser")
            .count()
    };
    assert_eq!(creates(), 1, "one request, no retry inside the call");
    // The pacer now holds createUser: a second call sends nothing while the window runs.
    let second = tokio::time::timeout(
        Duration::from_millis(500),
        client.create_user(&new_user("rl-client2@example.com"), &[], true),
    )
    .await;
    assert!(second.is_err(), "held by the pacer, not sent: {second:?}");
    assert_eq!(creates(), 1);
    assert!(
        sim.request_log().iter().all(|r| r.retry_for.is_none()),
        "nothing claims to resend a refused request"
    );
}

#[tokio::test]
async fn the_client_reports_a_concurrency_429_at_once_with_a_short_delay() {
    let sim = OktaSim::start(SimConfig {
        concurrency_limit: Some(1),
        // Long enough that the two requests are surely in flight together.
        latency: Duration::from_secs(1),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let client = client_of(&sim);
    // Two endpoints, so the pacer lets both go at once.
    let (user, probe) = tokio::join!(client.get_user("nobody@example.com"), client.probe());
    let refused: Vec<&OktaError> = [user.as_ref().err(), probe.as_ref().err()]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(refused.len(), 1, "{user:?} {probe:?}");
    assert!(
        matches!(
            refused[0],
            OktaError::RateLimited {
                limit: LimitKind::Concurrency,
                retry_after,
                ..
            } if *retry_after <= Duration::from_millis(50)
        ),
        "a short hold, not the window's reset: {}",
        refused[0]
    );
    let log = sim.request_log();
    assert_eq!(log.len(), 2, "no retry inside the call: {log:?}");
    assert_eq!(log.iter().filter(|r| r.status == 429).count(), 1);
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
    let outcomes = world.outcomes_until_all_final(&hires).await;
    let retries = rate_limited_retries_before_success(&outcomes);
    for outcome in &retries {
        assert!(
            outcome["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("concurrency limit")),
            "{outcome}"
        );
    }
    let retried = retries.len();
    assert!(world.drain_dead_letters().await.is_empty());
    let log = world.sim.request_log();
    let refused = log.iter().filter(|r| r.status == 429).count();
    assert!(refused > 0, "the in-flight cap of 2 was met: {log:?}");
    // Each refused request ended its event's attempt (the client does not retry); an
    // event's requests in flight together may be refused together.
    assert!(
        (1..=refused).contains(&retried),
        "{retried} retrying outcomes for {refused} 429s"
    );
    // The 429s carried the bucket's reset two minutes ahead; still in that window.
    let window = world.sim.bucket(SimBucket::Users).expect("first window");
    assert!(
        window.remaining > 0,
        "{window:?}: the bucket itself had room"
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
    // Seven 429s outlast MAX_ATTEMPTS=2 three times over.
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
    // The client does not retry: each 429 is one retry by the pipeline.
    assert_eq!(retrying.len(), 7, "one retry per 429: {outcomes:#?}");
    for outcome in retrying {
        assert_eq!(outcome["status"], "retrying", "{outcome}");
        assert_eq!(outcome["error"]["kind"], "rate_limited", "{outcome}");
        assert_eq!(outcome["error"]["okta_error_code"], "E0000047", "{outcome}");
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
}
