//! Okta as a default real org behaves, not as a lenient fake would (issue 12, parts of
//! issue 17): status-aware writes on deactivated users, activation emails, search lag
//! on removals by employee id, logins with `/`, group names differing in case, `Link`
//! only to the org, and adoption only of accounts HR owns. Real RabbitMQ, the strict
//! fake Okta, and, where a real org has another setting, that setting too.

mod common;

use common::*;
use iam_provisioner::okta_sim::{SimConfig, UserStatus};
use serde_json::{json, Value};
use std::time::Duration;

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

/// Options for an org that allows edits of deactivated users (not Okta's default).
fn edits_allowed() -> Options {
    Options {
        sim: SimConfig {
            deactivated_profile_edits: true,
            ..SimConfig::default()
        },
        ..Options::default()
    }
}

/// The changing calls the fake saw, by operation, in order.
fn writes(world: &World) -> Vec<&'static str> {
    world
        .sim
        .request_log()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| r.operation)
        .collect()
}

/// A deactivated former employee in the old job's mapped group and an unmanaged one.
fn former_employee(world: &World, employee_id: &str, login: &str) -> String {
    let user_id = world
        .sim
        .create_user(profile(employee_id, login), UserStatus::Deprovisioned);
    let sales = world.sim.group_id("Sales-App-Access").expect("group");
    world.sim.add_member(&sales, &user_id);
    user_id
}

async fn rehire_in_order(mut world: World) {
    let user_id = former_employee(&world, "E-100", "back@example.com");
    world.sim.clear_request_log();
    let id = event_id("rehire");
    let mut body = hire(&id, "E-100", "back@example.com", &["Engineering"]);
    body["employee"]["title"] = json!("Principal Engineer");
    world.publish("employee.added", &body).await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(
        strings(&outcome["actions"]),
        vec![
            "group.removed:Sales-App-Access",
            "user.reactivated",
            "profile.updated",
            "group.assigned:Engineering-Core",
            "group.assigned:GitHub-Users",
        ]
    );
    assert_eq!(
        writes(&world),
        vec![
            "createUser",
            "unassignUserFromGroup",
            "activateUser",
            "updateUser",
            "assignUserToGroup",
            "assignUserToGroup",
        ],
        "stale access off, activate, then profile and groups"
    );
    let user = world.sim.user(&user_id).expect("user");
    assert_eq!(user.status, UserStatus::Provisioned);
    assert_eq!(user.profile["title"], "Principal Engineer");
    assert_eq!(
        world.sim.user_group_names(&user_id),
        vec!["Engineering-Core", "GitHub-Users"]
    );
    let emails = world.sim.emails_sent();
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(
        (emails[0].user_id.as_str(), emails[0].operation),
        (user_id.as_str(), "activateUser"),
        "a rehire without a password learns how to sign in"
    );
    assert!(world.drain_dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_rehire_in_a_default_org_is_reactivated_before_its_profile_and_groups_are_written() {
    rehire_in_order(World::start("fidelity-rehire").await).await;
}

#[tokio::test]
async fn a_rehire_in_an_org_allowing_deactivated_edits_ends_the_same() {
    rehire_in_order(World::start_with("fidelity-rehire-edits", edits_allowed()).await).await;
}

#[tokio::test]
async fn an_update_of_a_deactivated_user_skips_what_a_default_org_refuses() {
    let mut world = World::start("fidelity-update-gone").await;
    let user_id = former_employee(&world, "E-110", "gone@example.com");
    let id = event_id("update-gone");
    world
        .publish(
            "employee.updated",
            &hire(&id, "E-110", "gone@example.com", &["Engineering"]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(
        strings(&outcome["actions"]),
        vec![
            "group.removed:Sales-App-Access",
            "profile.skipped:deactivated",
            "group.skipped:deactivated:Engineering-Core",
            "group.skipped:deactivated:GitHub-Users",
        ]
    );
    let user = world.sim.user(&user_id).expect("user");
    assert_eq!(
        user.status,
        UserStatus::Deprovisioned,
        "never a status change"
    );
    assert_eq!(user.profile["firstName"], "Grace", "profile untouched");
    assert!(world.sim.user_group_names(&user_id).is_empty());
    assert!(
        world.drain_dead_letters().await.is_empty(),
        "never a dead letter"
    );
}

#[tokio::test]
async fn an_update_of_a_deactivated_user_is_written_where_the_org_allows_it() {
    let mut world = World::start_with("fidelity-update-edits", edits_allowed()).await;
    let user_id = former_employee(&world, "E-111", "gone2@example.com");
    let id = event_id("update-edits");
    world
        .publish(
            "employee.updated",
            &hire(&id, "E-111", "gone2@example.com", &["Sales"]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(strings(&outcome["actions"]), vec!["profile.updated"]);
    let user = world.sim.user(&user_id).expect("user");
    assert_eq!(user.status, UserStatus::Deprovisioned);
    assert_eq!(user.profile["firstName"], "Ada");
}

#[tokio::test]
async fn activation_emails_can_be_turned_off_for_passwordless_orgs() {
    let mut options = Options::default();
    options.env.push(("OKTA_ACTIVATION_EMAIL", "false".into()));
    let mut world = World::start_with("fidelity-no-email", options).await;
    let user_id = former_employee(&world, "E-120", "sso@example.com");
    let id = event_id("no-email");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-120", "sso@example.com", &["Sales"]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(
        world.sim.user(&user_id).expect("user").status,
        UserStatus::Provisioned
    );
    assert!(world.sim.emails_sent().is_empty(), "no email sent");

    let mut vars: Vec<(String, String)> = vec![
        ("OKTA_ORG_URL".into(), world.sim.base_url()),
        ("OKTA_API_TOKEN".into(), "t".into()),
        ("OKTA_ACTIVATION_EMAIL".into(), "sometimes".into()),
    ];
    let error = iam_provisioner::config::Settings::from_vars(vars.drain(..), false)
        .expect_err("a bad value stops start-up");
    assert!(
        error.to_string().starts_with("OKTA_ACTIVATION_EMAIL: "),
        "{error}"
    );
}

#[tokio::test]
async fn a_future_dated_rehire_in_a_default_org_is_written_when_it_is_activated() {
    let at = (time::OffsetDateTime::now_utc() + time::Duration::seconds(4))
        .replace_nanosecond(0)
        .expect("nanoseconds");
    let mut options = Options::default();
    options.env.push((
        "ACTIVATION_TIME_OF_DAY",
        format!("{:02}:{:02}:{:02}", at.hour(), at.minute(), at.second()),
    ));
    let mut world = World::start_with("fidelity-staged-rehire", options).await;
    let user_id = former_employee(&world, "E-130", "later@example.com");
    let id = event_id("staged-rehire");
    let mut body = hire(&id, "E-130", "later@example.com", &["Engineering"]);
    body["employee"]["start_date"] = json!(format!(
        "{:04}-{:02}-{:02}",
        at.year(),
        u8::from(at.month()),
        at.day()
    ));
    world.publish("employee.added", &body).await;
    let staged = world.final_outcome(&id).await;
    let actions = strings(&staged["actions"]);
    assert_eq!(actions[0], "group.removed:Sales-App-Access", "{staged}");
    assert!(
        actions.contains(&"profile.skipped:deactivated".to_owned()),
        "{actions:?}"
    );
    assert!(world.sim.emails_sent().is_empty(), "not before the start");

    let activated = world.final_outcome(&id).await;
    assert_eq!(activated["status"], "succeeded", "{activated}");
    assert_eq!(
        strings(&activated["actions"]),
        vec![
            "user.reactivated",
            "profile.updated",
            "group.assigned:Engineering-Core",
            "group.assigned:GitHub-Users",
        ]
    );
    let user = world.sim.user(&user_id).expect("user");
    assert_eq!(user.status, UserStatus::Provisioned);
    assert_eq!(user.profile["firstName"], "Ada");
    let emails = world.sim.emails_sent();
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0].operation, "activateUser");
}

/// Hires `employee_id` through the service and removes it by employee id alone at once.
async fn hire_then_remove_by_id(world: &mut World, employee_id: &str, email: &str) -> String {
    let hired = event_id("lag-hire");
    world
        .publish("employee.added", &hire(&hired, employee_id, email, &[]))
        .await;
    assert_eq!(world.final_outcome(&hired).await["status"], "succeeded");
    let removal = event_id("lag-rm");
    world
        .publish(
            "employee.removed",
            &leaver(&removal, Some(employee_id), None),
        )
        .await;
    removal
}

#[tokio::test]
async fn a_removal_by_id_that_meets_search_lag_is_checked_again_until_the_user_is_found() {
    let options = Options {
        sim: SimConfig {
            search_lag: Duration::from_secs(3),
            ..SimConfig::default()
        },
        ..Options::default()
    };
    let mut world = World::start_with("fidelity-lag", options).await;
    let removal = hire_then_remove_by_id(&mut world, "E-140", "lag@example.com").await;
    let outcomes = world.outcomes_until_final(&removal).await;
    let first = &outcomes[0];
    assert_eq!(first["status"], "retrying", "{outcomes:?}");
    assert_eq!(first["error"]["kind"], "transient");
    assert!(
        strings(&first["actions"])[0].starts_with("removal.recheck_scheduled:"),
        "{first}"
    );
    let last = outcomes.last().expect("final");
    assert_eq!(last["status"], "succeeded", "{outcomes:?}");
    assert_eq!(
        strings(&last["actions"]),
        vec!["sessions.revoked", "user.deactivated"]
    );
    assert_eq!(
        world.sim.user("lag@example.com").expect("user").status,
        UserStatus::Deprovisioned,
        "the leaver keeps no enabled account"
    );
}

#[tokio::test]
async fn without_search_lag_a_removal_by_id_is_carried_out_at_once() {
    let options = Options {
        sim: SimConfig {
            search_lag: Duration::ZERO,
            ..SimConfig::default()
        },
        ..Options::default()
    };
    let mut world = World::start_with("fidelity-no-lag", options).await;
    let removal = hire_then_remove_by_id(&mut world, "E-141", "nolag@example.com").await;
    let outcomes = world.outcomes_until_final(&removal).await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(
        strings(&outcomes[0]["actions"]),
        vec!["sessions.revoked", "user.deactivated"]
    );
}

#[tokio::test]
async fn a_removal_by_id_that_finds_nobody_is_done_once_the_recheck_window_is_over() {
    let mut options = Options::default();
    options.env.push(("REMOVAL_RECHECK_SECS", "3".into()));
    let mut world = World::start_with("fidelity-nobody", options).await;
    let started = std::time::Instant::now();
    let removal = event_id("nobody");
    world
        .publish("employee.removed", &leaver(&removal, Some("E-404"), None))
        .await;
    let outcomes = world.outcomes_until_final(&removal).await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before the window ended"
    );
    assert!(outcomes.len() >= 2, "{outcomes:?}");
    assert!(outcomes[..outcomes.len() - 1]
        .iter()
        .all(|o| o["status"] == "retrying"));
    let last = outcomes.last().expect("final");
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(strings(&last["actions"]), vec!["user.not_found"]);
    assert_eq!(last["okta_user_id"], Value::Null);
}

#[tokio::test]
async fn a_removal_being_rechecked_survives_a_restart() {
    let mut world = World::start("fidelity-recheck-restart").await;
    let removal = event_id("recheck-restart");
    world
        .publish("employee.removed", &leaver(&removal, Some("E-150"), None))
        .await;
    let (_, first, _) = world.next_outcome().await;
    assert_eq!(first["status"], "retrying", "{first}");
    world.stop_service().await;
    // The search catches up while the service is down.
    let user_id = world
        .sim
        .create_user(profile("E-150", "late@example.com"), UserStatus::Active);
    world.restart_service().await;
    let last = world.final_outcome(&removal).await;
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(last["okta_user_id"], user_id.as_str());
    assert_eq!(
        world.sim.user(&user_id).expect("user").status,
        UserStatus::Deprovisioned
    );
}

#[tokio::test]
async fn an_account_hr_does_not_own_is_never_adopted_changed_or_disabled() {
    let mut options = Options::default();
    options.okta_groups.push("Super-Admins");
    let mut world = World::start_with("fidelity-conflict", options).await;
    let admin = world
        .sim
        .create_user(profile("ADM-1", "root@example.com"), UserStatus::Active);
    let admins = world.sim.group_id("Super-Admins").expect("group");
    world.sim.add_member(&admins, &admin);
    let before = world.sim.user(&admin).expect("user");

    for (routing_key, body) in [
        (
            "employee.added",
            hire(
                &event_id("takeover"),
                "E-999",
                "root@example.com",
                &["Sales"],
            ),
        ),
        (
            "employee.updated",
            hire(
                &event_id("takeover-upd"),
                "E-999",
                "root@example.com",
                &["Sales"],
            ),
        ),
        (
            "employee.removed",
            leaver(
                &event_id("takeover-rm"),
                Some("E-999"),
                Some("root@example.com"),
            ),
        ),
    ] {
        let id = body["event_id"].as_str().expect("id").to_owned();
        world.publish(routing_key, &body).await;
        let outcomes = world.outcomes_until_final(&id).await;
        assert_eq!(outcomes.len(), 1, "no retries: {outcomes:?}");
        let outcome = &outcomes[0];
        assert_eq!(outcome["status"], "failed", "{outcome}");
        assert_eq!(outcome["error"]["kind"], "conflict", "{outcome}");
        let message = outcome["error"]["message"].as_str().expect("message");
        assert!(
            message.contains("ADM-1") && message.contains("E-999"),
            "{message}"
        );
        let dead = world.drain_dead_letters().await;
        assert_eq!(dead.len(), 1, "{routing_key}");
        assert_eq!(
            header_str(dead[0].properties.headers(), "x-error-kind").as_deref(),
            Some("conflict")
        );
    }
    let after = world.sim.user(&admin).expect("user");
    assert_eq!(after, before, "the account is untouched");
    assert_eq!(
        world.sim.user_group_names(&admin),
        vec!["Super-Admins"],
        "no group added or removed"
    );
}

#[tokio::test]
async fn an_account_without_an_employee_number_is_adopted_and_claimed() {
    let mut world = World::start("fidelity-claim").await;
    let user_id = world.sim.create_user(
        json!({"login": "fresh@example.com", "email": "fresh@example.com",
            "firstName": "F", "lastName": "R"}),
        UserStatus::Active,
    );
    let id = event_id("claim");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-160", "fresh@example.com", &[]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(
        world.sim.user(&user_id).expect("user").profile["employeeNumber"],
        "E-160"
    );
}

#[tokio::test]
async fn a_login_with_a_slash_is_found_by_search() {
    let mut world = World::start("fidelity-slash").await;
    let login = "ops/ada@example.com";
    let user_id = world
        .sim
        .create_user(profile("E-170", login), UserStatus::Active);
    let id = event_id("slash");
    world
        .publish("employee.added", &hire(&id, "E-170", login, &["Sales"]))
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["okta_user_id"], user_id.as_str());
    let removal = event_id("slash-rm");
    world
        .publish("employee.removed", &leaver(&removal, None, Some(login)))
        .await;
    let outcome = world.final_outcome(&removal).await;
    assert_eq!(
        strings(&outcome["actions"]),
        vec!["sessions.revoked", "user.deactivated"],
        "{outcome}"
    );
}

#[tokio::test]
async fn a_mapped_group_differing_in_case_is_named_in_the_error() {
    let options = Options {
        mapping: json!({"Sales": "sales-app-access"}),
        ..Options::default()
    };
    let mut world = World::start_with("fidelity-case", options).await;
    let id = event_id("case");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-180", "case@example.com", &["Sales"]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "failed", "{outcome}");
    assert_eq!(outcome["error"]["kind"], "mapping");
    let message = outcome["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("found 'Sales-App-Access', which differs in case"),
        "{message}"
    );
}

#[tokio::test]
async fn a_link_to_another_origin_is_never_followed_with_the_credential() {
    use axum::routing::get;
    use iam_provisioner::domain::outcome::ErrorKind;
    use iam_provisioner::okta::{OktaClient, OktaClientSettings, OktaError};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    // Another origin (same host, other port) that counts what reaches it.
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&reached);
    let other = axum::Router::new().fallback(move || {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!([]))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let other_address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, other).await });
    // An "org" whose first page links the next one there.
    let link = format!("<http://{other_address}/api/v1/users?after=00u2>; rel=\"next\"");
    let org = axum::Router::new().route(
        "/api/v1/users",
        get(move || {
            let link = link.clone();
            async move { ([("link", link)], axum::Json(json!([]))) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let org_address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, org).await });

    let client = OktaClient::new(
        reqwest::Url::parse(&format!("http://{org_address}")).expect("url"),
        &secret("00token-that-must-stay-home"),
        OktaClientSettings::default(),
    )
    .expect("client");
    let error = client
        .find_users_by_employee_number("E-1")
        .await
        .expect_err("the listing stops");
    assert!(
        matches!(&error, OktaError::ForeignLink { origin, .. } if *origin == format!("http://{other_address}")),
        "{error}"
    );
    assert_eq!(
        error.kind(),
        ErrorKind::Okta,
        "a person must look: no retry"
    );
    assert_eq!(reached.load(Ordering::SeqCst), 0, "nothing was sent there");
}

#[test]
fn a_bad_okta_writes_setting_stops_start_up_with_one_line_naming_it() {
    for (variable, value) in [
        ("OKTA_ACTIVATION_EMAIL", "sometimes"),
        ("REMOVAL_RECHECK_SECS", "2m"),
    ] {
        let output = std::process::Command::new(common::process::BINARY)
            .arg("run")
            .env_clear()
            .env("OKTA_ORG_URL", "https://acme.okta.com")
            .env("OKTA_API_TOKEN", "t")
            .env(variable, value)
            .output()
            .expect("runs");
        assert!(
            !output.status.success(),
            "{variable}={value} must not start"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one clear line: {stderr}");
        assert!(lines[0].contains(variable), "{stderr}");
    }
}
