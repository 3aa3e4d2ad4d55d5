//! The leavers lane (issue: performance): a removal is not kept waiting behind a backlog
//! of hires, yet it is carried out and reported once, and publication order still
//! decides how each employee ends. Real broker, fake Okta. These tests check order and
//! state, never durations: the backlog is made slow (one hire at a time, each Okta call
//! taking a few milliseconds) so that "before the backlog drains" is a matter of order.

mod common;

use common::*;
use iam_provisioner::okta_sim::{SimConfig, UserStatus};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// A service whose work lane takes one hire at a time from a fake Okta that answers
/// each request after `latency`: a backlog of `n` hires takes at least `n × latency`.
/// The service is stopped on return: a test queues its whole backlog and then calls
/// `restart_service`, so that a loaded machine cannot drain the backlog while it is still
/// being published (order, not timing, decides what the test sees).
async fn slow_backlog_world(test: &str, latency: Duration) -> World {
    let mut world = World::start_with(
        test,
        Options {
            env: vec![("CONCURRENCY", "1".into())],
            sim: SimConfig {
                latency,
                ..SimConfig::default()
            },
            ..Options::default()
        },
    )
    .await;
    world.stop_service().await;
    world
}

/// Publishes `n` hires of employees nobody else uses; returns their event ids.
async fn publish_backlog(world: &World, label: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = event_id(&format!("{label}-hire"));
        world
            .publish(
                "employee.added",
                &hire(
                    &id,
                    &format!("B-{i}"),
                    &format!("backlog{i}@example.com"),
                    &["Sales"],
                ),
            )
            .await;
        ids.push(id);
    }
    ids
}

/// Every outcome until each of `event_ids` has its terminal one: (event id, body), in
/// arrival order.
async fn outcomes_until_all_final(world: &mut World, event_ids: &[String]) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    let mut finals = 0;
    while finals < event_ids.len() {
        let (_, body, _) = world.next_outcome().await;
        let id = body["source_event_id"].as_str().unwrap_or("").to_owned();
        if event_ids.contains(&id) && body["status"] != "retrying" {
            finals += 1;
        }
        seen.push((id, body));
    }
    seen
}

/// Outcomes per event id.
fn count_by_event(outcomes: &[(String, Value)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (id, _) in outcomes {
        *counts.entry(id.clone()).or_default() += 1;
    }
    counts
}

fn actions(outcome: &Value) -> Vec<String> {
    outcome["actions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Okta calls of one operation made for one user id.
fn calls_for(world: &World, operation: &str, user_id: &str) -> usize {
    world
        .sim
        .request_log()
        .iter()
        .filter(|r| r.operation == operation && r.path.contains(user_id))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_behind_a_backlog_of_hires_is_carried_out_before_the_backlog_drains() {
    let mut world = slow_backlog_world("leaver-backlog", Duration::from_millis(10)).await;
    let leaver_id = world
        .sim
        .create_user(profile("L-1", "leaver@example.com"), UserStatus::Active);
    let backlog = publish_backlog(&world, "backlog", 150).await;
    let removal = event_id("removal");
    world
        .publish(
            "employee.removed",
            &leaver(&removal, Some("L-1"), Some("leaver@example.com")),
        )
        .await;
    world.restart_service().await;

    let before = outcomes_until_all_final(&mut world, std::slice::from_ref(&removal)).await;
    let (_, outcome) = before.last().expect("the removal's outcome");
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(
        actions(outcome),
        vec!["sessions.revoked", "user.deactivated"]
    );
    let hires_done = before.iter().filter(|(id, _)| backlog.contains(id)).count();
    assert!(
        hires_done < backlog.len(),
        "the removal waited for the whole backlog ({hires_done} hires finished first)"
    );
    assert_eq!(
        world.sim.user(&leaver_id).map(|u| u.status),
        Some(UserStatus::Deprovisioned)
    );
    let last_hire = format!("backlog{}@example.com", backlog.len() - 1);
    assert!(
        world.sim.user(&last_hire).is_none(),
        "the backlog had not drained when the leaver was deactivated"
    );

    // The removal's copy in the work queue comes after the backlog; an update of the
    // same employee published after it is ordered behind that copy.
    let sentinel = event_id("sentinel");
    let mut update = hire(&sentinel, "L-1", "leaver@example.com", &[]);
    update["employee"]["title"] = "Former engineer".into();
    world.publish("employee.updated", &update).await;
    let mut waited_for: Vec<String> = backlog
        .iter()
        .filter(|id| {
            !before
                .iter()
                .any(|(seen, body)| seen == *id && body["status"] != "retrying")
        })
        .cloned()
        .collect();
    waited_for.push(sentinel);
    let after = outcomes_until_all_final(&mut world, &waited_for).await;
    let all: Vec<(String, Value)> = before.into_iter().chain(after).collect();
    assert_eq!(
        count_by_event(&all).get(&removal),
        Some(&1),
        "one outcome for the removal"
    );
    assert_eq!(calls_for(&world, "deactivateUser", &leaver_id), 1);
    assert_eq!(calls_for(&world, "revokeUserSessions", &leaver_id), 1);
    assert_eq!(world.queue_depth(&world.names.work_queue).await, 0);
    assert_eq!(world.queue_depth(&world.names.leavers_queue()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_in_both_queues_is_carried_out_and_reported_once() {
    let mut world = World::start("leaver-twins").await;
    for n in 0..5 {
        let email = format!("twin{n}@example.com");
        let employee = format!("T-{n}");
        let user_id = world
            .sim
            .create_user(profile(&employee, &email), UserStatus::Active);
        let removal = event_id("twin-removal");
        world
            .publish(
                "employee.removed",
                &leaver(&removal, Some(&employee), Some(&email)),
            )
            .await;
        // Published after the removal, so ordered behind both of its copies.
        let sentinel = event_id("twin-sentinel");
        world
            .publish("employee.updated", &hire(&sentinel, &employee, &email, &[]))
            .await;
        let seen = outcomes_until_all_final(&mut world, &[removal.clone(), sentinel]).await;
        let removal_outcomes: Vec<&Value> = seen
            .iter()
            .filter(|(id, _)| *id == removal)
            .map(|(_, body)| body)
            .collect();
        assert_eq!(removal_outcomes.len(), 1, "{seen:?}");
        assert_eq!(removal_outcomes[0]["status"], "succeeded");
        assert_eq!(
            actions(removal_outcomes[0]),
            vec!["sessions.revoked", "user.deactivated"]
        );
        assert_eq!(calls_for(&world, "deactivateUser", &user_id), 1);
        assert_eq!(
            world.sim.user(&user_id).map(|u| u.status),
            Some(UserStatus::Deprovisioned)
        );
    }
    assert_eq!(world.queue_depth(&world.names.work_queue).await, 0);
    assert_eq!(world.queue_depth(&world.names.leavers_queue()).await, 0);
    assert!(world.drain_dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hire_overtaken_by_its_removal_ends_deprovisioned_without_being_enabled() {
    let mut world = slow_backlog_world("leaver-overtakes", Duration::from_millis(10)).await;
    let backlog = publish_backlog(&world, "overtakes", 100).await;
    let added = event_id("added");
    world
        .publish(
            "employee.added",
            &hire(&added, "E-42", "brief@example.com", &["Sales"]),
        )
        .await;
    let removed = event_id("removed");
    world
        .publish(
            "employee.removed",
            &leaver(&removed, Some("E-42"), Some("brief@example.com")),
        )
        .await;
    world.restart_service().await;

    let mut waited_for = backlog.clone();
    waited_for.push(added.clone());
    waited_for.push(removed.clone());
    let seen = outcomes_until_all_final(&mut world, &waited_for).await;
    let position = |event: &str| {
        seen.iter()
            .position(|(id, _)| id == event)
            .expect("an outcome for the event")
    };
    assert!(
        position(&removed) < position(&added),
        "the removal did not overtake the hire queued before it"
    );
    let counts = count_by_event(&seen);
    assert_eq!(counts.get(&added), Some(&1));
    assert_eq!(counts.get(&removed), Some(&1));

    // Publication order: hired, then removed. The removal found nobody yet; the hire,
    // reached later, creates the account without enabling it and offboards it.
    let (_, hire_outcome) = &seen[position(&added)];
    assert_eq!(hire_outcome["status"], "succeeded", "{hire_outcome}");
    assert_eq!(
        actions(hire_outcome),
        vec![
            "user.created",
            "group.assigned:Sales-App-Access",
            "sessions.revoked",
            "user.deactivated"
        ]
    );
    let user = world
        .sim
        .user("brief@example.com")
        .expect("the account exists");
    assert_eq!(user.status, UserStatus::Deprovisioned);
    assert_eq!(hire_outcome["okta_user_id"], user.id.as_str());
    let staged_creations = world
        .sim
        .request_log()
        .iter()
        .filter(|r| r.operation == "createUser" && r.query.as_deref() == Some("activate=false"))
        .count();
    assert_eq!(staged_creations, 1, "created STAGED, never activated");
    assert_eq!(calls_for(&world, "activateUser", &user.id), 0);

    // After the removal's copy in the work queue, a rehire is an ordinary hire again.
    let rehire = event_id("rehire");
    world
        .publish(
            "employee.added",
            &hire(&rehire, "E-42", "brief@example.com", &["Sales"]),
        )
        .await;
    let outcome = world.final_outcome(&rehire).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert!(
        actions(&outcome).contains(&"user.reactivated".to_owned()),
        "{outcome}"
    );
    assert_eq!(
        world.sim.user("brief@example.com").map(|u| u.status),
        Some(UserStatus::Provisioned)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_removal_is_dead_lettered_and_reported_once() {
    let mut world = World::start("leaver-invalid").await;
    let broken = event_id("broken");
    let body =
        serde_json::json!({"event_id": broken, "occurred_at": now_rfc3339(), "employee": {}});
    world.publish("employee.removed", &body).await;
    // A valid removal after it, in both queues, settles behind the broken one's copies.
    let sentinel = event_id("sentinel");
    world
        .publish(
            "employee.removed",
            &leaver(&sentinel, Some("NOBODY"), Some("nobody@example.com")),
        )
        .await;
    let seen = outcomes_until_all_final(&mut world, &[broken.clone(), sentinel.clone()]).await;
    let counts = count_by_event(&seen);
    assert_eq!(counts.get(&broken), Some(&1), "{seen:?}");
    assert_eq!(counts.get(&sentinel), Some(&1), "{seen:?}");
    eventually("both copies of both removals settled", || async {
        world.queue_depth(&world.names.work_queue).await == 0
            && world.queue_depth(&world.names.leavers_queue()).await == 0
    })
    .await;
    let dead = world.drain_dead_letters().await;
    assert_eq!(dead.len(), 1, "one dead-letter copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_dated_removal_in_both_queues_is_parked_once_and_carried_out_once() {
    let mut world = World::start("leaver-parked").await;
    let user_id = world
        .sim
        .create_user(profile("P-1", "parked@example.com"), UserStatus::Active);
    let effective = (time::OffsetDateTime::now_utc() + time::Duration::seconds(3))
        .replace_nanosecond(0)
        .expect("nanoseconds");
    let effective_text = effective
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let removal = event_id("parked");
    let mut body = leaver(&removal, Some("P-1"), Some("parked@example.com"));
    body["effective_at"] = effective_text.clone().into();
    world.publish("employee.removed", &body).await;

    // Outcomes until the removal is carried out: a twin parked as well would have
    // published its own `removal.scheduled` seconds before that.
    let mut scheduled = 0;
    let done = loop {
        let (_, outcome, _) = world.next_outcome().await;
        if outcome["source_event_id"] != removal.as_str() {
            continue;
        }
        let actions = actions(&outcome);
        if actions == vec![format!("removal.scheduled:{effective_text}")] {
            scheduled += 1;
        } else {
            break outcome;
        }
    };
    assert_eq!(scheduled, 1, "parked once");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(actions(&done), vec!["sessions.revoked", "user.deactivated"]);
    assert_eq!(calls_for(&world, "deactivateUser", &user_id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_the_leavers_lane_is_only_drained_and_each_removal_reported_once() {
    let mut world = World::start_with(
        "leaver-partitioned",
        Options {
            env: vec![
                ("PARTITIONS", "2".into()),
                ("REPLICAS", "1".into()),
                ("REPLICA_INDEX", "0".into()),
            ],
            ..Options::default()
        },
    )
    .await;
    // The intake lock is exclusive: the broker deletes it with the service's connection.
    world
        .cleanup
        .extra_queues
        .extend([0, 1].map(|p| world.names.partition_queue(p)));
    let _exchange = PartitionsExchangeCleanup(world.names.partitions_exchange());
    let mut removals = Vec::new();
    let mut users = Vec::new();
    for n in 0..3 {
        let (employee, email) = (format!("PT-{n}"), format!("pt{n}@example.com"));
        users.push(
            world
                .sim
                .create_user(profile(&employee, &email), UserStatus::Active),
        );
        let removal = event_id("pt-removal");
        world
            .publish(
                "employee.removed",
                &leaver(&removal, Some(&employee), Some(&email)),
            )
            .await;
        removals.push(removal);
    }
    // A sentinel per employee, behind each removal in its partition.
    let mut sentinels = Vec::new();
    for n in 0..3 {
        let sentinel = event_id("pt-sentinel");
        world
            .publish(
                "employee.updated",
                &hire(
                    &sentinel,
                    &format!("PT-{n}"),
                    &format!("pt{n}@example.com"),
                    &[],
                ),
            )
            .await;
        sentinels.push(sentinel);
    }
    let all: Vec<String> = removals.iter().chain(&sentinels).cloned().collect();
    let seen = outcomes_until_all_final(&mut world, &all).await;
    let counts = count_by_event(&seen);
    for removal in &removals {
        assert_eq!(counts.get(removal), Some(&1), "{seen:?}");
    }
    for user in &users {
        assert_eq!(calls_for(&world, "deactivateUser", user), 1);
        assert_eq!(
            world.sim.user(user).map(|u| u.status),
            Some(UserStatus::Deprovisioned)
        );
    }
    eventually("the leavers lane drained", || async {
        world.queue_depth(&world.names.leavers_queue()).await == 0
    })
    .await;
}
