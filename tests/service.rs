//! The service end to end (issue: foundation): real RabbitMQ, the fake Okta, real
//! messages in, real outcomes and dead letters out.

mod common;

use common::*;
use iam_provisioner::okta_sim::{Fault, FaultKind, GroupType, UserStatus};
use lapin::BasicProperties;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hire_gets_exactly_its_mapped_groups_and_unmapped_ones_are_reported() {
    let mut world = World::start("hire").await;
    world.sim.clear_request_log();
    let id = event_id("hire");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-100", "ada@example.com", &["Engineering", "Interns"]),
        )
        .await;

    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["event_type"], "employee.added");
    assert_eq!(outcome["employee_id"], "E-100");
    assert_eq!(outcome["email"], "ada@example.com");
    assert_eq!(outcome["attempt"], 1);
    assert_eq!(outcome["error"], Value::Null);
    assert_eq!(strings(&outcome["unmapped_groups"]), vec!["Interns"]);
    let actions = strings(&outcome["actions"]);
    assert_eq!(
        actions,
        vec![
            "user.created",
            "group.assigned:Engineering-Core",
            "group.assigned:GitHub-Users"
        ]
    );

    let user = world.sim.user("ada@example.com").expect("user created");
    assert_eq!(outcome["okta_user_id"], user.id.as_str());
    assert!(
        matches!(user.status, UserStatus::Provisioned | UserStatus::Active),
        "{:?}",
        user.status
    );
    assert_eq!(user.profile["employeeNumber"], "E-100");
    assert_eq!(user.profile["login"], "ada@example.com");
    assert_eq!(user.profile["department"], "R&D");
    assert_eq!(
        world.sim.user_group_names(&user.id),
        vec!["Engineering-Core", "GitHub-Users"]
    );
    let calls: Vec<&str> = world
        .sim
        .request_log()
        .iter()
        .map(|r| r.operation)
        .collect();
    assert_eq!(
        calls,
        vec!["createUser"],
        "groups cached at start-up: one call per hire"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_twice_leaves_one_user_and_no_error() {
    let mut world = World::start("dup").await;
    let id = event_id("dup");
    let event = hire(&id, "E-200", "dup@example.com", &["Sales"]);
    world.publish("employee.added", &event).await;
    world.publish("employee.added", &event).await;

    let first = world.final_outcome(&id).await;
    let second = world.final_outcome(&id).await;
    assert_eq!(first["status"], "succeeded");
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!(
        strings(&second["actions"]),
        Vec::<String>::new(),
        "nothing left to do"
    );
    assert_eq!(first["okta_user_id"], second["okta_user_id"]);
    let users: Vec<_> = world
        .sim
        .users()
        .into_iter()
        .filter(|u| u.profile["employeeNumber"] == "E-200")
        .collect();
    assert_eq!(users.len(), 1);
    assert_eq!(
        world.sim.user_group_names(&users[0].id),
        vec!["Sales-App-Access"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehire_regains_only_the_new_jobs_groups() {
    let mut options = Options::default();
    options.okta_groups.push("Unmanaged-Wiki");
    let mut world = World::start_with("rehire", options).await;
    let user_id = world.sim.create_user(
        profile("E-300", "grace@example.com"),
        UserStatus::Deprovisioned,
    );
    let sales = world.sim.group_id("Sales-App-Access").expect("group");
    let wiki = world.sim.group_id("Unmanaged-Wiki").expect("group");
    world.sim.add_member(&sales, &user_id);
    world.sim.add_member(&wiki, &user_id);

    let id = event_id("rehire");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-300", "Grace@Example.com", &["Engineering"]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["okta_user_id"], user_id.as_str());
    let actions = strings(&outcome["actions"]);
    assert!(
        actions.contains(&"group.removed:Sales-App-Access".to_owned()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"user.reactivated".to_owned()),
        "{actions:?}"
    );
    assert!(
        !actions.iter().any(|a| a.contains("Unmanaged")),
        "{actions:?}"
    );

    let user = world.sim.user(&user_id).expect("user");
    assert!(
        matches!(user.status, UserStatus::Provisioned | UserStatus::Active),
        "{:?}",
        user.status
    );
    assert_eq!(
        world.sim.user_group_names(&user_id),
        vec!["Engineering-Core", "GitHub-Users", "Unmanaged-Wiki"]
    );
    assert_eq!(
        user.profile["lastName"], "Lovelace",
        "profile brought up to date"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_rehire_is_unsuspended() {
    let mut world = World::start("unsuspend").await;
    let user_id = world
        .sim
        .create_user(profile("E-310", "sus@example.com"), UserStatus::Suspended);
    let id = event_id("unsuspend");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-310", "sus@example.com", &[]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert!(
        strings(&outcome["actions"]).contains(&"user.unsuspended".to_owned()),
        "{outcome}"
    );
    assert_eq!(
        world.sim.user(&user_id).expect("user").status,
        UserStatus::Active
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaver_is_found_by_email_and_deactivated_after_sessions_end() {
    let mut world = World::start("leaver-email").await;
    let user_id = world
        .sim
        .create_user(profile("E-400", "leaver@example.com"), UserStatus::Active);
    let id = event_id("leaver");
    world
        .publish(
            "employee.removed",
            &leaver(&id, None, Some("LEAVER@example.com")),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(
        strings(&outcome["actions"]),
        vec!["sessions.revoked", "user.deactivated"]
    );
    assert_eq!(outcome["okta_user_id"], user_id.as_str());
    let user = world.sim.user(&user_id).expect("user");
    assert_eq!(user.status, UserStatus::Deprovisioned);
    assert_eq!(user.sessions_revoked, 1);

    // Again: already in the target state, nothing to do.
    let again = event_id("leaver-again");
    world
        .publish(
            "employee.removed",
            &leaver(&again, None, Some("leaver@example.com")),
        )
        .await;
    let outcome = world.final_outcome(&again).await;
    assert_eq!(outcome["status"], "succeeded");
    assert_eq!(strings(&outcome["actions"]), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaver_is_found_by_employee_id_alone() {
    let mut world = World::start("leaver-id").await;
    let user_id = world
        .sim
        .create_user(profile("E-410", "byid@example.com"), UserStatus::Active);
    let id = event_id("leaver-id");
    world
        .publish("employee.removed", &leaver(&id, Some("E-410"), None))
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["okta_user_id"], user_id.as_str(), "{outcome}");
    assert_eq!(
        world.sim.user(&user_id).expect("user").status,
        UserStatus::Deprovisioned
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_leaver_is_a_success_with_nothing_done() {
    let mut world = World::start("leaver-unknown").await;
    let id = event_id("ghost");
    world
        .publish(
            "employee.removed",
            &leaver(&id, Some("E-404"), Some("ghost@example.com")),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded");
    assert_eq!(outcome["okta_user_id"], Value::Null);
    assert_eq!(strings(&outcome["actions"]), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_in_an_employee_id_cannot_widen_the_search() {
    // Nobody has the id: a short re-check window lets the removal end soon.
    let options = Options {
        env: vec![("REMOVAL_RECHECK_SECS", "2".into())],
        ..Options::default()
    };
    let mut world = World::start_with("quote", options).await;
    let bystander = world.sim.create_user(
        profile("E-500", "bystander@example.com"),
        UserStatus::Active,
    );
    let id = event_id("quote");
    let hostile = r#"E-9" or profile.employeeNumber sw "E"#;
    world
        .publish("employee.removed", &leaver(&id, Some(hostile), None))
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(
        outcome["okta_user_id"],
        Value::Null,
        "nobody has that literal id"
    );
    assert_eq!(
        world.sim.user(&bystander).expect("user").status,
        UserStatus::Active
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_mode_suspends_an_active_leaver() {
    let options = Options {
        env: vec![("OFFBOARDING_MODE", "suspend".into())],
        ..Options::default()
    };
    let mut world = World::start_with("suspend", options).await;
    let user_id = world
        .sim
        .create_user(profile("E-600", "s@example.com"), UserStatus::Active);
    let id = event_id("suspend");
    world
        .publish(
            "employee.removed",
            &leaver(&id, Some("E-600"), Some("s@example.com")),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(
        strings(&outcome["actions"]),
        vec!["sessions.revoked", "user.suspended"],
        "{outcome}"
    );
    assert_eq!(
        world.sim.user(&user_id).expect("user").status,
        UserStatus::Suspended
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_mode_deactivates_then_deletes() {
    let options = Options {
        env: vec![("OFFBOARDING_MODE", "delete".into())],
        ..Options::default()
    };
    let mut world = World::start_with("delete", options).await;
    let user_id = world
        .sim
        .create_user(profile("E-700", "d@example.com"), UserStatus::Active);
    let id = event_id("delete");
    world
        .publish(
            "employee.removed",
            &leaver(&id, None, Some("d@example.com")),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(
        strings(&outcome["actions"]),
        vec!["sessions.revoked", "user.deactivated", "user.deleted"],
        "{outcome}"
    );
    assert!(world.sim.user(&user_id).is_none(), "user deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_then_removed_back_to_back_ends_deprovisioned() {
    let mut world = World::start("order").await;
    for n in 0..5 {
        let email = format!("order{n}@example.com");
        let employee = format!("E-8{n:02}");
        world
            .publish(
                "employee.added",
                &hire(&event_id("add"), &employee, &email, &["Sales"]),
            )
            .await;
        world
            .publish(
                "employee.removed",
                &leaver(&event_id("rm"), Some(&employee), None),
            )
            .await;
    }
    let mut finished = 0;
    while finished < 10 {
        let (_, outcome, _) = world.next_outcome().await;
        assert_ne!(outcome["status"], "failed", "{outcome}");
        if outcome["status"] == "succeeded" {
            finished += 1;
        }
    }
    for n in 0..5 {
        let user = world
            .sim
            .user(&format!("order{n}@example.com"))
            .expect("user exists");
        assert_eq!(user.status, UserStatus::Deprovisioned, "employee {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_their_reason_and_the_service_goes_on() {
    let mut world = World::start("poison").await;
    let json_props = || BasicProperties::default().with_content_type("application/json".into());
    let good = hire("poison-good", "E-900", "good@example.com", &[]);
    let cases: Vec<(&str, Vec<u8>, BasicProperties, &str)> = vec![
        ("employee.added", b"{not json".to_vec(), json_props(), "not valid JSON"),
        ("employee.added", b"{\"event_id\":\"\xff\"}".to_vec(), json_props(), "not UTF-8"),
        (
            "employee.added",
            good.to_string().into_bytes(),
            BasicProperties::default().with_content_type("text/plain".into()),
            "text/plain",
        ),
        (
            "employee.added",
            json!({"event_id": "poison-missing", "occurred_at": now_rfc3339(), "employee": {"id": "E-1", "first_name": "A", "last_name": "B"}})
                .to_string()
                .into_bytes(),
            json_props(),
            "employee.email",
        ),
        ("employee.promoted", good.to_string().into_bytes(), json_props(), "employee.promoted"),
    ];
    for (key, body, props, _) in &cases {
        world.publish_raw(key, body, props.clone()).await;
    }
    let mut failed = 0;
    while failed < cases.len() {
        let (key, outcome, _) = world.next_outcome().await;
        assert_eq!(outcome["status"], "failed", "{outcome}");
        assert!(key.ends_with(".failed"));
        assert_eq!(outcome["error"]["kind"], "validation");
        failed += 1;
    }
    let mut dead = world.drain_dead_letters().await;
    assert_eq!(dead.len(), cases.len());
    // Different employees (or none) are processed concurrently: the dead letters may be
    // in any order, so each case finds its own by body and original routing key.
    for (key, body, _, reason) in &cases {
        let position = dead
            .iter()
            .position(|message| {
                &message.delivery.data == body
                    && header_str(
                        message.delivery.properties.headers(),
                        "x-original-routing-key",
                    )
                    .as_deref()
                        == Some(*key)
            })
            .unwrap_or_else(|| panic!("a dead letter kept as published for {reason}"));
        let message = dead.remove(position);
        let headers = message.delivery.properties.headers().clone();
        assert_eq!(
            header_str(&headers, "x-error-kind").as_deref(),
            Some("validation")
        );
        assert_eq!(
            header_str(&headers, "x-original-routing-key").as_deref(),
            Some(*key)
        );
        assert_eq!(
            header_str(&headers, "x-original-exchange").as_deref(),
            Some(world.names.input_exchange.as_str())
        );
        let message_text = header_str(&headers, "x-error-message").expect("reason");
        assert!(
            message_text.contains(reason),
            "{message_text} should mention {reason}"
        );
        assert_eq!(header_int(&headers, "x-attempts"), Some(1));
        assert!(header_str(&headers, "x-failed-at").is_some());
    }

    // Still alive: a good event after the poison is processed.
    world.publish("employee.added", &good).await;
    assert_eq!(
        world.final_outcome("poison-good").await["status"],
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_group_missing_in_okta_dead_letters_as_a_mapping_failure() {
    let options = Options {
        mapping: json!({"Sales": "Sales-App-Access", "Finance": "Finance-Ledger"}),
        ..Options::default()
    };
    let mut world = World::start_with("mapping", options).await;
    let id = event_id("mapping");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-950", "fin@example.com", &["Finance"]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["error"]["kind"], "mapping");
    assert!(outcome["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("Finance-Ledger"));
    assert!(
        world.sim.user("fin@example.com").is_none(),
        "no half-provisioned user"
    );
    let dead = world.drain_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header_str(
            &dead[0].delivery.properties.headers().clone(),
            "x-error-kind"
        )
        .as_deref(),
        Some("mapping")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_group_cannot_be_mapped() {
    let options = Options {
        mapping: json!({"Sales": "Salesforce-App"}),
        okta_groups: vec![],
        ..Options::default()
    };
    let mut world = World::start_with("appgroup", options).await;
    world
        .sim
        .create_group("Salesforce-App", GroupType::AppGroup);
    let id = event_id("appgroup");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-960", "app@example.com", &["Sales"]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["error"]["kind"], "mapping", "{outcome}");
    assert!(outcome["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("OKTA_GROUP"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okta_refusing_for_good_dead_letters_with_okta_details() {
    let mut world = World::start("okta-4xx").await;
    world.sim.inject_fault(Fault {
        method: Some("POST".into()),
        path_contains: Some("/api/v1/users".into()),
        times: 1,
        kind: FaultKind::Status {
            status: 403,
            error_code: "E0000006".into(),
        },
    });
    let id = event_id("forbidden");
    world
        .publish("employee.added", &hire(&id, "E-970", "no@example.com", &[]))
        .await;
    let outcomes = world.outcomes_until_final(&id).await;
    assert_eq!(outcomes.len(), 1, "a permanent failure is not retried");
    let outcome = &outcomes[0];
    assert_eq!(outcome["error"]["kind"], "okta");
    assert_eq!(outcome["error"]["okta_error_code"], "E0000006");
    assert!(outcome["error"]["okta_request_id"].is_string());
    let dead = world.drain_dead_letters().await;
    let headers = dead[0].delivery.properties.headers().clone();
    assert_eq!(
        header_str(&headers, "x-okta-error-code").as_deref(),
        Some("E0000006")
    );
    assert!(header_str(&headers, "x-okta-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_then_succeed() {
    let mut world = World::start("retry").await;
    world.sim.inject_fault(Fault {
        method: Some("POST".into()),
        path_contains: Some("/api/v1/users".into()),
        times: 3,
        kind: FaultKind::Status {
            status: 503,
            error_code: "E0000009".into(),
        },
    });
    let id = event_id("retry");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-980", "retry@example.com", &[]),
        )
        .await;
    let outcomes = world.outcomes_until_final(&id).await;
    let statuses: Vec<&str> = outcomes
        .iter()
        .map(|o| o["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        statuses,
        vec!["retrying", "retrying", "retrying", "succeeded"]
    );
    assert_eq!(outcomes[0]["error"]["kind"], "transient");
    assert_eq!(outcomes[3]["attempt"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_transient_failure_is_dead_lettered_after_max_attempts() {
    let options = Options {
        env: vec![("MAX_ATTEMPTS", "3".into())],
        ..Options::default()
    };
    let mut world = World::start_with("exhaust", options).await;
    world.sim.set_outage(Some(503));
    let id = event_id("exhaust");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-990", "down@example.com", &[]),
        )
        .await;
    let outcomes = world.outcomes_until_final(&id).await;
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    assert_eq!(outcomes[2]["status"], "failed");
    assert_eq!(outcomes[2]["error"]["kind"], "transient");
    let dead = world.drain_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header_int(&dead[0].delivery.properties.headers().clone(), "x-attempts"),
        Some(3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outcome_carries_the_input_traceparent() {
    let mut world = World::start("trace").await;
    let id = event_id("trace");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "traceparent".into(),
        lapin::types::AMQPValue::LongString(traceparent.into()),
    );
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(headers);
    let body = hire(&id, "E-991", "trace@example.com", &[]).to_string();
    world
        .publish_raw("employee.added", body.as_bytes(), properties)
        .await;
    loop {
        let (_, outcome, headers) = world.next_outcome().await;
        if outcome["source_event_id"] == id.as_str() {
            assert_eq!(
                header_str(&headers, "traceparent").as_deref(),
                Some(traceparent)
            );
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_existing_queue_stops_start_up_and_is_left_alone() {
    let names =
        iam_provisioner::amqp::topology::TopologyNames::prefixed(&unique_prefix("conflict"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    let conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    // An operator's classic queue with the service's name.
    channel
        .queue_declare(
            names.work_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("declare classic");
    let sim = iam_provisioner::okta_sim::OktaSim::start(Default::default())
        .await
        .expect("sim");
    let settings = settings_for(&names, &sim, &Options::default());
    let error = iam_provisioner::app::Application::build(
        settings,
        iam_provisioner::app::OktaEndpoint::with_api_token(
            reqwest::Url::parse(&sim.base_url()).expect("url"),
            secret(&sim.api_token()),
        ),
        mapping(&json!({})),
    )
    .await
    .err()
    .expect("start-up must fail");
    let message = iam_provisioner::telemetry::error_chain(&error);
    assert!(message.contains(&names.work_queue), "{message}");
    assert!(
        message.contains("x-queue-type") || message.contains("x-dead-letter-exchange"),
        "{message}"
    );
    // Still there, still classic: nothing deleted or re-created.
    let again = conn.create_channel().await.expect("channel");
    again
        .queue_declare(
            names.work_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("the operator's queue still exists");
}
