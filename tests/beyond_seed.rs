//! Beyond the seed (issue 5): transfers, profile attributes, future-dated events, the
//! mass-offboarding guard, dry run and the mapping tools — real RabbitMQ, the fake Okta.

mod common;

use common::*;
use iam_provisioner::okta_sim::UserStatus;
use serde_json::{json, Value};

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// An `employee.updated` body (same shape as a hire).
fn update(event_id: &str, employee_id: &str, email: &str, groups: &[&str]) -> Value {
    let mut body = hire(event_id, employee_id, email, groups);
    body["employee"]["title"] = json!("Staff Engineer");
    body
}

#[tokio::test]
async fn a_transfer_moves_exactly_the_mapped_groups_and_leaves_unmanaged_ones() {
    let mut options = Options::default();
    options.okta_groups.push("Unmanaged-Wiki");
    let mut world = World::start_with("transfer", options).await;
    let user_id = world
        .sim
        .create_user(profile("E-500", "mover@example.com"), UserStatus::Active);
    let sales = world.sim.group_id("Sales-App-Access").expect("group");
    let wiki = world.sim.group_id("Unmanaged-Wiki").expect("group");
    world.sim.add_member(&sales, &user_id);
    world.sim.add_member(&wiki, &user_id);

    let id = event_id("transfer");
    world
        .publish(
            "employee.updated",
            &update(&id, "E-500", "mover@example.com", &["Engineering"]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["event_type"], "employee.updated");
    assert_eq!(outcome["okta_user_id"], user_id.as_str());
    let mut actions = strings(&outcome["actions"]);
    actions.sort();
    assert_eq!(
        actions,
        vec![
            "group.assigned:Engineering-Core",
            "group.assigned:GitHub-Users",
            "group.removed:Sales-App-Access",
            "profile.updated",
        ]
    );
    assert_eq!(
        world.sim.user_group_names(&user_id),
        vec!["Engineering-Core", "GitHub-Users", "Unmanaged-Wiki"]
    );
    let user = world.sim.user(&user_id).expect("user");
    assert_eq!(user.status, UserStatus::Active, "status never changes");
    assert_eq!(user.profile["title"], "Staff Engineer");
}

#[tokio::test]
async fn an_update_never_changes_status_and_finds_the_user_by_employee_number() {
    // Groups added to a deactivated user need an org that allows it; a default org's
    // refusal is tested in tests/okta_fidelity.rs.
    let mut options = Options::default();
    options.sim.deactivated_profile_edits = true;
    let mut world = World::start_with("update-status", options).await;
    // The email changed in HR: the user is found by employeeNumber instead.
    let suspended = world.sim.create_user(
        profile("E-510", "old-510@example.com"),
        UserStatus::Suspended,
    );
    let gone = world.sim.create_user(
        profile("E-511", "gone@example.com"),
        UserStatus::Deprovisioned,
    );

    for (employee, email, user_id, status) in [
        (
            "E-510",
            "new-510@example.com",
            &suspended,
            UserStatus::Suspended,
        ),
        (
            "E-511",
            "gone@example.com",
            &gone,
            UserStatus::Deprovisioned,
        ),
    ] {
        let id = event_id("update-status");
        world
            .publish(
                "employee.updated",
                &update(&id, employee, email, &["Sales"]),
            )
            .await;
        let outcome = world.final_outcome(&id).await;
        assert_eq!(outcome["status"], "succeeded", "{outcome}");
        assert_eq!(outcome["okta_user_id"], user_id.as_str());
        let actions = strings(&outcome["actions"]);
        assert!(
            actions.contains(&"group.assigned:Sales-App-Access".to_owned()),
            "{actions:?}"
        );
        assert!(
            !actions.iter().any(|a| a.starts_with("user.")),
            "no lifecycle change: {actions:?}"
        );
        let user = world.sim.user(user_id).expect("user");
        assert_eq!(user.status, status);
        assert_eq!(user.profile["login"], email, "login follows the new email");
        assert_eq!(
            world.sim.user_group_names(user_id),
            vec!["Sales-App-Access"]
        );
    }
}

#[tokio::test]
async fn an_update_for_a_missing_user_is_a_success_with_nothing_done() {
    let mut world = World::start("update-missing").await;
    let id = event_id("update-missing");
    world
        .publish(
            "employee.updated",
            &update(&id, "E-520", "nobody@example.com", &["Sales"]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["okta_user_id"], Value::Null);
    assert_eq!(strings(&outcome["actions"]), Vec::<String>::new());
    assert!(world.sim.users().is_empty(), "an update never creates");
}

#[tokio::test]
async fn department_title_and_manager_reach_the_okta_profile() {
    let mut world = World::start("profile").await;
    let id = event_id("profile");
    let mut body = hire(&id, "E-530", "prof@example.com", &[]);
    body["employee"]["manager_email"] = json!("grace@example.com");
    world.publish("employee.added", &body).await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    let user = world.sim.user("prof@example.com").expect("user");
    assert_eq!(user.profile["department"], "R&D");
    assert_eq!(user.profile["title"], "Engineer");
    assert_eq!(user.profile["managerId"], "grace@example.com");
    assert_eq!(user.profile["manager"], "grace@example.com");
    assert_eq!(user.profile["employeeNumber"], "E-530");

    // A transfer to a new manager and department changes just those fields.
    let id = event_id("profile");
    body["event_id"] = json!(id);
    body["employee"]["manager_email"] = json!("alan@example.com");
    body["employee"]["department"] = json!("Research");
    world.publish("employee.updated", &body).await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(strings(&outcome["actions"]), vec!["profile.updated"]);
    let user = world.sim.user("prof@example.com").expect("user");
    assert_eq!(user.profile["department"], "Research");
    assert_eq!(user.profile["managerId"], "alan@example.com");
    assert_eq!(user.profile["manager"], "alan@example.com");
    assert_eq!(user.profile["title"], "Engineer");
}

/// The terminal outcomes of several events processed concurrently, in the order of
/// `ids` (they may arrive in any order).
async fn final_outcomes(world: &mut World, ids: Vec<String>) -> Vec<Value> {
    let mut found: Vec<Option<Value>> = vec![None; ids.len()];
    while found.iter().any(Option::is_none) {
        let (_, body, _) = world.next_outcome().await;
        if body["status"] == "retrying" {
            continue;
        }
        if let Some(i) = ids
            .iter()
            .position(|id| body["source_event_id"] == id.as_str())
        {
            found[i] = Some(body);
        }
    }
    found.into_iter().flatten().collect()
}

/// How far ahead a test's start date lies. `ACTIVATION_TIME_OF_DAY` is read when the
/// service starts, so the instant is fixed before start-up; the margin covers start-up and
/// the hire's processing on a loaded two-core machine, so that the hire is still early.
const START_MARGIN_SECS: i64 = 8;

/// A whole-second instant at least `secs` ahead, as (RFC 3339, date, time of day).
fn whole_second_ahead(secs: i64) -> (time::OffsetDateTime, String, String) {
    let at = (time::OffsetDateTime::now_utc() + time::Duration::seconds(secs + 1))
        .replace_nanosecond(0)
        .expect("nanoseconds");
    let date = format!(
        "{:04}-{:02}-{:02}",
        at.year(),
        u8::from(at.month()),
        at.day()
    );
    let time_of_day = format!("{:02}:{:02}:{:02}", at.hour(), at.minute(), at.second());
    (at, date, time_of_day)
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

/// A world whose hires start `secs` ahead: their start date is the date of that
/// instant, and `ACTIVATION_TIME_OF_DAY` its time.
async fn world_with_start_ahead(test: &str, secs: i64) -> (World, time::OffsetDateTime, String) {
    let (at, date, time_of_day) = whole_second_ahead(secs);
    let mut options = Options::default();
    options.env.push(("ACTIVATION_TIME_OF_DAY", time_of_day));
    (World::start_with(test, options).await, at, date)
}

#[tokio::test]
async fn a_hire_starting_in_a_few_seconds_is_staged_with_its_groups_then_activated() {
    let (mut world, start, start_date) = world_with_start_ahead("staged", START_MARGIN_SECS).await;
    let id = event_id("staged");
    let mut body = hire(&id, "E-600", "future@example.com", &["Sales"]);
    body["employee"]["start_date"] = json!(start_date);
    world.publish("employee.added", &body).await;

    let staged = world.final_outcome(&id).await;
    assert_eq!(staged["status"], "succeeded", "{staged}");
    assert_eq!(
        strings(&staged["actions"]),
        vec![
            "user.created".to_owned(),
            "group.assigned:Sales-App-Access".to_owned(),
            format!("activation.scheduled:{}", rfc3339(start)),
        ]
    );
    let user = world.sim.user("future@example.com").expect("user created");
    assert_eq!(user.status, UserStatus::Staged);
    assert_eq!(
        world.sim.user_group_names(&user.id),
        vec!["Sales-App-Access"]
    );
    assert_eq!(
        world.queue_depth(&world.names.work_queue).await,
        0,
        "the waiting activation holds no place in the work queue"
    );

    let activated = world.final_outcome(&id).await;
    assert!(
        time::OffsetDateTime::now_utc() >= start,
        "activated before the start: {activated}"
    );
    assert_eq!(activated["status"], "succeeded", "{activated}");
    assert_eq!(activated["event_type"], "employee.added");
    assert_eq!(strings(&activated["actions"]), vec!["user.activated"]);
    assert_eq!(activated["okta_user_id"], user.id.as_str());
    let user = world.sim.user(&user.id).expect("user");
    assert!(
        matches!(user.status, UserStatus::Provisioned | UserStatus::Active),
        "{:?}",
        user.status
    );
    assert!(user.status_changed >= start, "{}", user.status_changed);
}

#[tokio::test]
async fn a_future_dated_rehire_gets_its_new_groups_now_and_is_reenabled_on_the_start_date() {
    // Groups before the start date need an org that allows edits of deactivated users;
    // a default org gets them on the start date (tests/okta_fidelity.rs).
    let (start, start_date, time_of_day) = whole_second_ahead(START_MARGIN_SECS);
    let mut options = Options::default();
    options.env.push(("ACTIVATION_TIME_OF_DAY", time_of_day));
    options.sim.deactivated_profile_edits = true;
    let mut world = World::start_with("staged-rehire", options).await;
    let user_id = world.sim.create_user(
        profile("E-605", "back@example.com"),
        UserStatus::Deprovisioned,
    );
    let sales = world.sim.group_id("Sales-App-Access").expect("group");
    world.sim.add_member(&sales, &user_id);
    let id = event_id("staged-rehire");
    let mut body = hire(&id, "E-605", "back@example.com", &["Engineering"]);
    body["employee"]["start_date"] = json!(start_date);
    world.publish("employee.added", &body).await;

    let adopted = world.final_outcome(&id).await;
    let actions = strings(&adopted["actions"]);
    assert!(
        actions.contains(&"group.removed:Sales-App-Access".to_owned()),
        "{actions:?}"
    );
    assert!(
        !actions.iter().any(|a| a.starts_with("user.")),
        "not re-enabled before the start: {actions:?}"
    );
    assert_eq!(
        actions.last().map(String::as_str),
        Some(format!("activation.scheduled:{}", rfc3339(start)).as_str())
    );
    assert_eq!(
        world.sim.user(&user_id).expect("user").status,
        UserStatus::Deprovisioned
    );
    assert_eq!(
        world.sim.user_group_names(&user_id),
        vec!["Engineering-Core", "GitHub-Users"]
    );

    let reenabled = world.final_outcome(&id).await;
    assert!(time::OffsetDateTime::now_utc() >= start);
    assert_eq!(strings(&reenabled["actions"]), vec!["user.reactivated"]);
    let user = world.sim.user(&user_id).expect("user");
    assert!(
        matches!(user.status, UserStatus::Provisioned | UserStatus::Active),
        "{:?}",
        user.status
    );
}

#[tokio::test]
async fn a_later_removal_cancels_a_pending_activation() {
    let (mut world, _start, start_date) = world_with_start_ahead("cancel", START_MARGIN_SECS).await;
    let id = event_id("cancel");
    let mut body = hire(&id, "E-610", "cancelled@example.com", &["Sales"]);
    body["employee"]["start_date"] = json!(start_date);
    world.publish("employee.added", &body).await;
    let staged = world.final_outcome(&id).await;
    assert_eq!(staged["status"], "succeeded", "{staged}");

    let removal = event_id("cancel-removal");
    world
        .publish(
            "employee.removed",
            &leaver(&removal, Some("E-610"), Some("cancelled@example.com")),
        )
        .await;
    let removed = world.final_outcome(&removal).await;
    assert!(
        strings(&removed["actions"]).contains(&"user.deactivated".to_owned()),
        "{removed}"
    );

    let activation = world.final_outcome(&id).await;
    assert_eq!(activation["status"], "succeeded", "{activation}");
    assert_eq!(strings(&activation["actions"]), Vec::<String>::new());
    let user = world.sim.user("cancelled@example.com").expect("user");
    assert_eq!(user.status, UserStatus::Deprovisioned);
}

#[tokio::test]
async fn a_removal_effective_in_a_few_seconds_happens_after_it_across_a_restart() {
    let mut world = World::start("effective").await;
    let user_id = world
        .sim
        .create_user(profile("E-620", "leaving@example.com"), UserStatus::Active);
    let (effective, _, _) = whole_second_ahead(START_MARGIN_SECS);
    let id = event_id("effective");
    let mut body = leaver(&id, Some("E-620"), Some("leaving@example.com"));
    body["effective_at"] = json!(rfc3339(effective));
    world.publish("employee.removed", &body).await;

    let scheduled = world.final_outcome(&id).await;
    assert_eq!(scheduled["status"], "succeeded", "{scheduled}");
    assert_eq!(
        strings(&scheduled["actions"]),
        vec![format!("removal.scheduled:{}", rfc3339(effective))]
    );
    assert_eq!(
        world.sim.user(&user_id).expect("user").status,
        UserStatus::Active
    );

    // The wait lives on the broker, not in the process: stop the service, and the
    // removal is still there for the next one.
    world.stop_service().await;
    let parking = world.parking();
    let mut waiting = 0;
    for queue in parking.queues() {
        waiting += world.queue_depth(&queue).await;
    }
    waiting += world.queue_depth(&world.names.work_queue).await;
    assert_eq!(waiting, 1, "the parked removal is on the broker");
    assert_eq!(
        world.sim.user(&user_id).expect("user").status,
        UserStatus::Active
    );
    world.restart_service().await;

    let done = world.final_outcome(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        strings(&done["actions"]),
        vec!["sessions.revoked", "user.deactivated"]
    );
    let user = world.sim.user(&user_id).expect("user");
    assert_eq!(user.status, UserStatus::Deprovisioned);
    assert!(
        user.status_changed >= effective,
        "deactivated at {} before it took effect at {effective}",
        user.status_changed
    );
}

/// Runs the binary with `args` and `env` (blocking, off the runtime that serves the
/// fake Okta): (exit code, stdout, stderr).
async fn run_binary(args: &[&str], env: Vec<(String, String)>) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(common::process::BINARY)
            .args(&args)
            .env_clear()
            .envs(env)
            .output()
            .expect("binary runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("binary task")
}

fn held_env(world: &World) -> Vec<(String, String)> {
    vec![
        ("AMQP_URL".into(), AMQP_URL.into()),
        ("WORK_QUEUE".into(), world.names.work_queue.clone()),
        // Where `held release|discard --yes` publishes its audit event.
        (
            "RESULTS_EXCHANGE".into(),
            world.names.results_exchange.clone(),
        ),
    ]
}

#[tokio::test]
async fn the_guard_holds_removals_over_its_limit_until_an_operator_releases_or_discards_them() {
    let mut options = Options::default();
    options.env.push(("OFFBOARDING_GUARD_MAX", "2".into()));
    options.env.push(("OFFBOARDING_GUARD_WINDOW", "300".into()));
    let mut world = World::start_with("guard", options).await;
    let mut events = Vec::new();
    for n in 0..3 {
        let employee = format!("E-70{n}");
        let email = format!("guard{n}@example.com");
        world
            .sim
            .create_user(profile(&employee, &email), UserStatus::Active);
        let id = event_id("guard");
        world
            .publish(
                "employee.removed",
                &leaver(&id, Some(&employee), Some(&email)),
            )
            .await;
        events.push((id, employee, email));
    }
    let finals = final_outcomes(&mut world, events.iter().map(|e| e.0.clone()).collect()).await;
    let mut held = Vec::new();
    for ((id, employee, email), outcome) in events.iter().zip(finals) {
        match outcome["status"].as_str() {
            Some("succeeded") => assert_eq!(
                world.sim.user(email).expect("user").status,
                UserStatus::Deprovisioned
            ),
            Some("held") => {
                assert_eq!(strings(&outcome["actions"]), vec!["removal.held"]);
                assert_eq!(outcome["error"], Value::Null);
                held.push((id.clone(), employee.clone(), email.clone()));
            }
            _ => panic!("unexpected outcome {outcome}"),
        }
    }
    assert_eq!(held.len(), 1, "the third removal within the window is held");
    let (held_id, held_employee, held_email) = held.pop().expect("one held");
    assert_eq!(
        world.sim.user(&held_email).expect("user").status,
        UserStatus::Active,
        "a held removal is not executed"
    );
    let parking = world.parking();
    assert_eq!(world.queue_depth(&parking.held_queue).await, 1);
    assert!(
        world.drain_dead_letters().await.is_empty(),
        "nothing dead-lettered"
    );

    // A dry run lists and keeps.
    let (code, out, err) = run_binary(&["held", "release", "--dry-run"], held_env(&world)).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("employee_id={held_employee}")),
        "{out}"
    );
    assert_eq!(world.queue_depth(&parking.held_queue).await, 1);

    // A filter that selects nothing keeps it too.
    let (code, out, _) = run_binary(
        &["held", "release", "--yes", "--employee-id", "E-nobody"],
        held_env(&world),
    )
    .await;
    assert_eq!(code, Some(0));
    assert!(out.contains("0 released, 1 still held"), "{out}");

    let (code, out, err) = run_binary(
        &["held", "release", "--yes", "--employee-id", &held_employee],
        held_env(&world),
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("1 released, 0 still held"), "{out}");
    // The guard is still full: only the bypass lets the released removal through.
    let released = world.final_outcome(&held_id).await;
    assert_eq!(released["status"], "succeeded", "{released}");
    assert_eq!(
        strings(&released["actions"]),
        vec!["sessions.revoked", "user.deactivated"]
    );
    assert_eq!(
        world.sim.user(&held_email).expect("user").status,
        UserStatus::Deprovisioned
    );
    assert_eq!(world.queue_depth(&parking.held_queue).await, 0);

    // Another removal within the window is held; discarding drops it for good.
    world
        .sim
        .create_user(profile("E-709", "kept@example.com"), UserStatus::Active);
    let id = event_id("guard-discard");
    world
        .publish(
            "employee.removed",
            &leaver(&id, Some("E-709"), Some("kept@example.com")),
        )
        .await;
    assert_eq!(world.final_outcome(&id).await["status"], "held");
    let (code, out, err) = run_binary(
        &[
            "held",
            "discard",
            "--yes",
            "--routing-key",
            "employee.removed",
        ],
        held_env(&world),
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("1 discarded, 0 still held"), "{out}");
    assert_eq!(world.queue_depth(&parking.held_queue).await, 0);
    assert_eq!(
        world.sim.user("kept@example.com").expect("user").status,
        UserStatus::Active
    );
}

#[tokio::test]
async fn a_dry_run_reads_okta_changes_nothing_and_reports_what_it_would_do() {
    let mut options = Options::default();
    options.env.push(("DRY_RUN", "true".into()));
    let mut world = World::start_with("dry-run", options).await;
    let existing = world
        .sim
        .create_user(profile("E-801", "stays@example.com"), UserStatus::Active);
    let sales = world.sim.group_id("Sales-App-Access").expect("group");
    world.sim.add_member(&sales, &existing);
    world.sim.clear_request_log();

    let id = event_id("dry-hire");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-800", "new@example.com", &["Engineering"]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["dry_run"], true);
    assert_eq!(outcome["okta_user_id"], Value::Null, "no user exists");
    assert_eq!(
        strings(&outcome["actions"]),
        vec![
            "user.created",
            "group.assigned:Engineering-Core",
            "group.assigned:GitHub-Users"
        ]
    );

    let id = event_id("dry-transfer");
    world
        .publish(
            "employee.updated",
            &update(&id, "E-801", "stays@example.com", &["Engineering"]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["dry_run"], true);
    assert_eq!(outcome["okta_user_id"], existing.as_str());
    let actions = strings(&outcome["actions"]);
    assert!(
        actions.contains(&"group.removed:Sales-App-Access".to_owned()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"profile.updated".to_owned()),
        "{actions:?}"
    );

    let id = event_id("dry-leaver");
    world
        .publish(
            "employee.removed",
            &leaver(&id, Some("E-801"), Some("stays@example.com")),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["dry_run"], true);
    assert_eq!(
        strings(&outcome["actions"]),
        vec!["sessions.revoked", "user.deactivated"]
    );

    // Okta is as it was.
    assert!(world.sim.user("new@example.com").is_none());
    let user = world.sim.user(&existing).expect("user");
    assert_eq!(user.status, UserStatus::Active);
    assert_eq!(user.sessions_revoked, 0);
    assert_eq!(user.profile["lastName"], "Hopper");
    assert_eq!(
        world.sim.user_group_names(&existing),
        vec!["Sales-App-Access"]
    );
    let log = world.sim.request_log();
    assert!(!log.is_empty(), "Okta was read");
    assert!(
        log.iter().all(|r| r.method == "GET"),
        "only reads were sent: {:?}",
        log.iter()
            .map(|r| (r.method.clone(), r.operation))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_normal_outcome_says_it_was_not_a_dry_run() {
    let mut world = World::start("not-dry").await;
    let id = event_id("not-dry");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-810", "real@example.com", &[]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["dry_run"], false, "{outcome}");
    assert!(world.sim.user("real@example.com").is_some());
}

#[tokio::test]
async fn mapping_check_prints_each_group_and_fails_on_a_missing_one() {
    let sim = iam_provisioner::okta_sim::OktaSim::start(iam_provisioner::okta_sim::SimConfig {
        groups: vec!["Sales-App-Access".into(), "Engineering-Core".into()],
        ..Default::default()
    })
    .await
    .expect("sim");
    let sales = sim.group_id("Sales-App-Access").expect("group");
    let env = |mapping: &str| {
        vec![
            ("OKTA_ORG_URL".to_owned(), sim.base_url()),
            ("OKTA_API_TOKEN".to_owned(), sim.api_token()),
            ("GROUP_MAPPING".to_owned(), mapping.to_owned()),
            // No broker is needed: this one does not exist.
            (
                "AMQP_URL".to_owned(),
                "amqp://nobody:x@127.0.0.1:1/%2f".to_owned(),
            ),
        ]
    };
    let (code, out, err) = run_binary(
        &["mapping", "check"],
        env(r#"{"Sales": "Sales-App-Access", "Engineering": ["Engineering-Core", "Missing-Group"]}"#),
    )
    .await;
    assert_eq!(code, Some(1), "{out}{err}");
    let row = |needle: &str| {
        out.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no row for {needle}: {out}"))
            .to_owned()
    };
    assert!(row("\"Sales-App-Access\"").contains(&sales), "{out}");
    assert!(row("\"Sales-App-Access\"").starts_with("Sales"), "{out}");
    assert!(row("\"Missing-Group\"").contains("PROBLEM"), "{out}");
    assert!(row("\"Missing-Group\"").contains("does not exist"), "{out}");
    assert!(
        err.contains("1 of 3 mapped Okta groups cannot be used"),
        "{err}"
    );

    let (code, out, err) = run_binary(
        &["mapping", "check"],
        env(r#"{"Sales": "Sales-App-Access"}"#),
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(!out.contains("PROBLEM"), "{out}");
}

/// The terminal outcome for `event_id` from a test's own outcome consumer.
async fn final_outcome_from(outcomes: &mut lapin::Consumer, event_id: &str) -> Value {
    use futures_util::StreamExt;
    loop {
        let delivery = tokio::time::timeout(PATIENCE, outcomes.next())
            .await
            .expect("an outcome in time")
            .expect("stream open")
            .expect("delivery");
        let body: Value = serde_json::from_slice(&delivery.data).expect("JSON");
        if body["source_event_id"] == event_id && body["status"] != "retrying" {
            return body;
        }
    }
}

#[tokio::test]
async fn a_mapping_file_edit_takes_effect_on_sighup_and_a_broken_edit_is_refused() {
    use common::process::ServiceProcess;
    use iam_provisioner::amqp::topology::TopologyNames;
    let names = TopologyNames::prefixed(&unique_prefix("reload"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    let sim = iam_provisioner::okta_sim::OktaSim::start(iam_provisioner::okta_sim::SimConfig {
        groups: vec!["Sales-App-Access".into(), "Engineering-Core".into()],
        ..Default::default()
    })
    .await
    .expect("sim");
    let dir = std::env::temp_dir().join(unique_prefix("mapping"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("mapping.json");
    std::fs::write(&file, r#"{"Sales": "Sales-App-Access"}"#).expect("write");
    let (_conn, channel, mut outcomes) = observe(&names).await;
    let path = file.to_string_lossy().into_owned();
    let service = ServiceProcess::spawn(
        &names,
        &sim,
        &[
            ("GROUP_MAPPING", ""),
            ("GROUP_MAPPING_FILE", &path),
            ("GROUP_MAPPING_POLL_MS", "0"),
        ],
    );
    service.wait_for_log("consuming").await;

    let hire_groups = |n: u32| {
        let id = event_id("reload");
        let body = hire(
            &id,
            &format!("E-90{n}"),
            &format!("r{n}@example.com"),
            &["Engineering"],
        );
        (id, body)
    };
    let publish = |body: Value| {
        let channel = channel.clone();
        let exchange = names.input_exchange.clone();
        async move {
            publish_to(
                &channel,
                &exchange,
                "employee.added",
                body.to_string().as_bytes(),
                lapin::BasicProperties::default().with_content_type("application/json".into()),
            )
            .await
        }
    };

    let (id, body) = hire_groups(1);
    publish(body).await;
    let outcome = final_outcome_from(&mut outcomes, &id).await;
    assert_eq!(strings(&outcome["unmapped_groups"]), vec!["Engineering"]);

    std::fs::write(&file, r#"{"Engineering": "Engineering-Core"}"#).expect("write");
    service.signal("HUP");
    service.wait_for_log("group mapping reloaded").await;
    let (id, body) = hire_groups(2);
    publish(body).await;
    let outcome = final_outcome_from(&mut outcomes, &id).await;
    assert_eq!(
        strings(&outcome["actions"]),
        vec!["user.created", "group.assigned:Engineering-Core"]
    );

    std::fs::write(&file, r#"{"Engineering": ["#).expect("write");
    service.signal("HUP");
    service.wait_for_log("group mapping rejected").await;
    let (id, body) = hire_groups(3);
    publish(body).await;
    let outcome = final_outcome_from(&mut outcomes, &id).await;
    assert_eq!(
        strings(&outcome["actions"]),
        vec!["user.created", "group.assigned:Engineering-Core"],
        "the mapping in force stays"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_mapping_file_edit_is_picked_up_by_polling() {
    let dir = std::env::temp_dir().join(unique_prefix("poll"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("mapping.yaml");
    std::fs::write(&file, "Sales: Sales-App-Access\n").expect("write");
    let mut options = Options::default();
    options.env.push(("GROUP_MAPPING", String::new()));
    options
        .env
        .push(("GROUP_MAPPING_FILE", file.to_string_lossy().into_owned()));
    options.env.push(("GROUP_MAPPING_POLL_MS", "100".into()));
    let mut world = World::start_with("poll", options).await;

    std::fs::write(&file, "Engineering: GitHub-Users\n").expect("write");
    // Each try is a new hire; the poll picks the edit up within 100 ms, so a few do.
    let deadline = std::time::Instant::now() + PATIENCE;
    for n in 0.. {
        assert!(
            std::time::Instant::now() < deadline,
            "the edited mapping never took effect"
        );
        let id = event_id("poll");
        let body = hire(
            &id,
            &format!("E-95{n}"),
            &format!("p{n}@example.com"),
            &["Engineering"],
        );
        world.publish("employee.added", &body).await;
        let outcome = world.final_outcome(&id).await;
        if strings(&outcome["actions"]).contains(&"group.assigned:GitHub-Users".to_owned()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
