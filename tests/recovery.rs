//! Recoverability (issue: recoverability): rate limits, Okta outages, broker loss,
//! crashes and shutdown — nothing lost, nothing duplicated.

mod common;

use common::process::ServiceProcess;
use common::*;
use iam_provisioner::amqp::topology::TopologyNames;
use iam_provisioner::okta_sim::{Fault, FaultKind, OktaSim, RateLimit, SimConfig};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Consumes outcomes until `expected` distinct events have succeeded; fails on any
/// `failed` outcome.
async fn wait_all_succeeded(world: &mut World, expected: usize) -> HashSet<String> {
    let mut succeeded = HashSet::new();
    while succeeded.len() < expected {
        let (_, outcome, _) = world.next_outcome().await;
        assert_ne!(outcome["status"], "failed", "{outcome}");
        if outcome["status"] == "succeeded" {
            succeeded.insert(outcome["source_event_id"].as_str().unwrap_or("").to_owned());
        }
    }
    succeeded
}

#[tokio::test]
async fn a_burst_at_a_small_rate_limit_all_succeeds_and_every_429_is_waited_out() {
    let window = Duration::from_secs(2);
    let options = Options {
        sim: SimConfig {
            rate_limit: Some(RateLimit::uniform(10, window)),
            ..SimConfig::default()
        },
        ..Options::default()
    };
    let mut world = World::start_with("ratelimit", options).await;
    world.sim.clear_request_log();
    let refused_at_start = world.sim.rate_limited_count();
    // Pacing keeps the fake's own 429s rare, so how many there are is timing; these
    // three are certain, so the pipeline's handling of a 429 is always exercised.
    let injected = 3;
    world.sim.inject_fault(Fault {
        method: Some("POST".into()),
        path_contains: Some("/api/v1/users".into()),
        times: injected,
        kind: FaultKind::Status {
            status: 429,
            error_code: "E0000047".into(),
        },
    });
    let started = Instant::now();
    let mut ids = Vec::new();
    for n in 0..100 {
        let id = format!("rl-{n}");
        let body = hire(&id, &format!("E-RL{n}"), &format!("rl{n}@example.com"), &[]);
        world.publish("employee.added", &body).await;
        ids.push(id);
    }
    let outcomes = world.outcomes_until_all_final(&ids).await;
    let elapsed = started.elapsed();
    // Every 429 was followed by its event's success, at its first attempt.
    let retried = rate_limited_retries_before_success(&outcomes).len();
    assert!(
        world.drain_dead_letters().await.is_empty(),
        "rate limiting never dead-letters"
    );
    let log = world.sim.request_log();
    let refused = log.iter().filter(|r| r.status == 429).count();
    let by_volume = (world.sim.rate_limited_count() - refused_at_start) as usize;
    println!(
        "rate limit 10/2s: 100 hires in {elapsed:?}, {} Okta calls, {by_volume} 429s for volume, {injected} injected, {retried} retrying outcomes",
        log.len()
    );
    assert_eq!(refused, by_volume + injected as usize, "{log:?}");
    // A hire's calls are made one after another, so each 429 ended one attempt and
    // became one `retrying` outcome: the client retried none of them itself.
    assert_eq!(retried, refused, "one retry by the pipeline per 429");
    // Pacing lets at most one request go blind into each new window of a bucket (a
    // hire touches at most two: getUser and createUser), however slow the machine: a
    // bound that grows with the time taken, not a count that depends on it.
    let windows = elapsed.as_secs_f64() / window.as_secs_f64() + 1.0;
    assert!(
        (by_volume as f64) <= 2.0 * windows,
        "{by_volume} 429s for volume in about {windows:.0} windows"
    );
}

#[tokio::test]
async fn an_okta_outage_longer_than_the_retry_budget_dead_letters_nothing() {
    let options = Options {
        env: vec![
            ("MAX_ATTEMPTS", "3".into()),
            ("OKTA_OUTAGE_THRESHOLD", "2".into()),
        ],
        ..Options::default()
    };
    let mut world = World::start_with("outage", options).await;
    world.sim.set_outage(Some(503));
    for n in 0..10 {
        let body = hire(
            &format!("out-{n}"),
            &format!("E-O{n}"),
            &format!("o{n}@example.com"),
            &["Sales"],
        );
        world.publish("employee.added", &body).await;
    }
    let http = world.http;
    eventually("readyz reports the pause", || async move {
        let (status, body) = http_get(http, "/readyz").await;
        status == 503 && body.contains("Okta")
    })
    .await;
    // Keep Okta down until the prober has been refused a few times: far past the
    // 3-attempt budget of every event.
    let sim = world.sim.clone();
    eventually("the prober was refused three times", || {
        let sim = sim.clone();
        async move {
            sim.request_log()
                .iter()
                .filter(|r| r.operation == "listGroups" && r.status == 503)
                .count()
                >= 3
        }
    })
    .await;
    world.sim.set_outage(None);
    wait_all_succeeded(&mut world, 10).await;
    assert!(
        world.drain_dead_letters().await.is_empty(),
        "nothing dead-lettered"
    );
    let http = world.http;
    eventually("ready again", || async move {
        http_get(http, "/readyz").await.0 == 200
    })
    .await;
    for n in 0..10 {
        let user = world
            .sim
            .user(&format!("o{n}@example.com"))
            .expect("user created");
        assert_eq!(
            world.sim.user_group_names(&user.id),
            vec!["Sales-App-Access"]
        );
    }
}

#[tokio::test]
async fn a_connection_closed_by_the_broker_mid_batch_loses_nothing() {
    let options = Options {
        sim: SimConfig {
            latency: Duration::from_millis(30),
            ..SimConfig::default()
        },
        ..Options::default()
    };
    let mut world = World::start_with("conndrop", options).await;
    for n in 0..60 {
        let body = hire(
            &format!("cd-{n}"),
            &format!("E-CD{n}"),
            &format!("cd{n}@example.com"),
            &["Sales"],
        );
        world.publish("employee.added", &body).await;
    }
    let mut succeeded = HashSet::new();
    while succeeded.len() < 5 {
        let (_, outcome, _) = world.next_outcome().await;
        if outcome["status"] == "succeeded" {
            succeeded.insert(outcome["source_event_id"].as_str().unwrap_or("").to_owned());
        }
    }
    let service_connection = format!("iam-provisioner {}", world.names.work_queue);
    assert_eq!(close_broker_connections(&service_connection), 1);
    let dropped_at = Instant::now();
    // For the record (not asserted): how long until /readyz is green again.
    let mut seen_down = false;
    let mut ready_again_after = None;
    while dropped_at.elapsed() < Duration::from_secs(10) {
        let ready = http_get(world.http, "/readyz").await.0 == 200;
        seen_down |= !ready;
        if seen_down && ready {
            ready_again_after = Some(dropped_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("broker connection closed: ready again after {ready_again_after:?}");
    while succeeded.len() < 60 {
        let (_, outcome, _) = world.next_outcome().await;
        assert_ne!(outcome["status"], "failed", "{outcome}");
        if outcome["status"] == "succeeded" {
            succeeded.insert(outcome["source_event_id"].as_str().unwrap_or("").to_owned());
        }
    }
    for n in 0..60 {
        let user = world.sim.user(&format!("cd{n}@example.com")).expect("user");
        assert_eq!(
            world.sim.user_group_names(&user.id),
            vec!["Sales-App-Access"]
        );
    }
    assert_eq!(world.queue_depth(&world.names.work_queue).await, 0);
    // And the service is still at work.
    world
        .publish(
            "employee.added",
            &hire("cd-after", "E-CDX", "cdx@example.com", &[]),
        )
        .await;
    assert_eq!(world.final_outcome("cd-after").await["status"], "succeeded");
}

#[tokio::test]
async fn a_deleted_work_queue_is_declared_again_and_consumed() {
    let mut world = World::start("qdelete").await;
    world
        .publish(
            "employee.added",
            &hire("qd-1", "E-QD1", "qd1@example.com", &[]),
        )
        .await;
    assert_eq!(world.final_outcome("qd-1").await["status"], "succeeded");
    let channel = world.conn.create_channel().await.expect("channel");
    channel
        .queue_delete(world.names.work_queue.as_str().into(), Default::default())
        .await
        .expect("delete the work queue");
    // The service re-declares its topology when it reconnects; wait for the queue (and
    // its binding) to be back before publishing, or the event would be unroutable.
    let conn = &world.conn;
    let queue = world.names.work_queue.clone();
    eventually("the work queue is back", || {
        let queue = queue.clone();
        async move {
            let probe = conn.create_channel().await.expect("channel");
            probe
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .is_ok()
        }
    })
    .await;
    let http = world.http;
    eventually("consuming again", || async move {
        http_get(http, "/readyz").await.0 == 200
    })
    .await;
    world
        .publish(
            "employee.added",
            &hire("qd-2", "E-QD2", "qd2@example.com", &[]),
        )
        .await;
    assert_eq!(world.final_outcome("qd-2").await["status"], "succeeded");
}

#[tokio::test]
async fn kill_dash_nine_mid_batch_then_restart_converges_without_duplicates() {
    let names = TopologyNames::prefixed(&unique_prefix("kill9"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    let sim = OktaSim::start(SimConfig {
        latency: Duration::from_millis(20),
        groups: vec!["Sales-App-Access".into()],
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let (_conn, channel, mut outcomes) = observe(&names).await;
    let total = 200;
    for n in 0..total {
        let body = hire(
            &format!("k9-{n}"),
            &format!("E-K{n}"),
            &format!("k{n}@example.com"),
            &["Sales"],
        );
        publish_to(
            &channel,
            &names.input_exchange,
            "employee.added",
            body.to_string().as_bytes(),
            lapin::BasicProperties::default().with_content_type("application/json".into()),
        )
        .await;
    }
    let mut first = ServiceProcess::spawn(&names, &sim, &[]);
    use futures_util::StreamExt;
    let mut succeeded = HashSet::new();
    while succeeded.len() < 20 {
        let delivery = tokio::time::timeout(PATIENCE, outcomes.next())
            .await
            .expect("outcomes")
            .expect("stream")
            .expect("delivery");
        let outcome: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
        if outcome["status"] == "succeeded" {
            succeeded.insert(outcome["source_event_id"].as_str().unwrap_or("").to_owned());
        }
    }
    first.kill_hard();
    let _second = ServiceProcess::spawn(&names, &sim, &[]);
    while succeeded.len() < total {
        let delivery = tokio::time::timeout(PATIENCE, outcomes.next())
            .await
            .expect("outcomes after restart")
            .expect("stream")
            .expect("delivery");
        let outcome: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
        assert_ne!(outcome["status"], "failed", "{outcome}");
        if outcome["status"] == "succeeded" {
            succeeded.insert(outcome["source_event_id"].as_str().unwrap_or("").to_owned());
        }
    }
    let users: Vec<_> = sim
        .users()
        .into_iter()
        .filter(|u| {
            u.profile["employeeNumber"]
                .as_str()
                .is_some_and(|n| n.starts_with("E-K"))
        })
        .collect();
    assert_eq!(users.len(), total, "one user per hire, no duplicates");
    let numbers: HashSet<_> = users
        .iter()
        .map(|u| u.profile["employeeNumber"].to_string())
        .collect();
    assert_eq!(numbers.len(), total);
    for user in &users {
        assert_eq!(sim.user_group_names(&user.id), vec!["Sales-App-Access"]);
    }
}

#[tokio::test]
async fn sigterm_during_a_batch_loses_nothing() {
    let names = TopologyNames::prefixed(&unique_prefix("sigbatch"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    let sim = OktaSim::start(SimConfig {
        latency: Duration::from_millis(200),
        groups: vec!["Sales-App-Access".into()],
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let (conn, channel, mut outcomes) = observe(&names).await;
    let total = 40;
    let mut service = ServiceProcess::spawn(&names, &sim, &[("CONCURRENCY", "4")]);
    service.wait_for_log("consuming").await;
    for n in 0..total {
        let body = hire(
            &format!("sb-{n}"),
            &format!("E-SB{n}"),
            &format!("sb{n}@example.com"),
            &[],
        );
        publish_to(
            &channel,
            &names.input_exchange,
            "employee.added",
            body.to_string().as_bytes(),
            lapin::BasicProperties::default().with_content_type("application/json".into()),
        )
        .await;
    }
    use futures_util::StreamExt;
    let mut succeeded = HashSet::new();
    while succeeded.len() < 4 {
        let delivery = tokio::time::timeout(PATIENCE, outcomes.next())
            .await
            .expect("outcomes")
            .expect("stream")
            .expect("delivery");
        let outcome: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
        if outcome["status"] == "succeeded" {
            succeeded.insert(outcome["source_event_id"].as_str().unwrap_or("").to_owned());
        }
    }
    service.terminate();
    assert_eq!(
        service.wait_exit().await.code(),
        Some(0),
        "{}",
        service.log_text()
    );
    // Outcomes published before exit are all in the test's queue by now.
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(500), outcomes.next()).await
    {
        let outcome: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
        assert_eq!(outcome["status"], "succeeded");
        succeeded.insert(outcome["source_event_id"].as_str().unwrap_or("").to_owned());
    }
    let probe = conn.create_channel().await.expect("channel");
    let left = probe
        .queue_declare(
            names.work_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("queue")
        .message_count() as usize;
    assert!(
        succeeded.len() < total,
        "the batch was cut short (else the test proves nothing)"
    );
    assert!(
        succeeded.len() + left >= total,
        "{} done + {left} waiting in the queue must cover all {total}",
        succeeded.len()
    );
}
