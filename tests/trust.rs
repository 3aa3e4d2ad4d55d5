//! Trust boundaries (issue 17): what someone who can publish to the input exchange can
//! and cannot make the service do — real RabbitMQ, the fake Okta.

mod common;

use common::*;
use iam_provisioner::okta_sim::UserStatus;
use lapin::options::ConfirmSelectOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::process::Command;

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

/// An event as an HR system publishes it, with extra properties and headers.
fn properties_for(body: &Value, headers: &[(&str, &str)]) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(
            (*name).into(),
            lapin::types::AMQPValue::LongString((*value).into()),
        );
    }
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(body["event_id"].as_str().unwrap_or("no-id").into())
        .with_headers(table)
}

/// A second broker user, as an HR publisher would have one; deleted when dropped.
struct BrokerUser {
    name: String,
    password: String,
}

impl BrokerUser {
    fn create(label: &str) -> Self {
        let name = format!("test-{label}-{:08x}", fastrand::u32(..));
        let password = format!("pw{:016x}", fastrand::u64(..));
        let user = Self { name, password };
        rabbitmqctl(&["add_user", &user.name, &user.password]);
        rabbitmqctl(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]);
        user
    }

    /// A user with the permissions (and topic permissions) `deploy/rabbitmq` gives
    /// `example`, its regular expressions moved under this test's `prefix`.
    fn like_example(label: &str, example: &str, prefix: &str) -> Self {
        let name = format!("test-{label}-{:08x}", fastrand::u32(..));
        let password = format!("pw{:016x}", fastrand::u64(..));
        let user = Self { name, password };
        rabbitmqctl(&["add_user", &user.name, &user.password]);
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/rabbitmq/definitions.json"),
        )
        .expect("definitions");
        let definitions: Value = serde_json::from_str(&text).expect("JSON");
        let escaped = prefix.replace('.', "\\.");
        // `^X$` becomes `^<prefix>(?:X)$`, so that every alternative stays under the prefix.
        let moved = |regex: &str| -> String {
            match regex.strip_prefix('^').and_then(|r| r.strip_suffix('$')) {
                Some(inner) if !inner.is_empty() => format!("^{escaped}(?:{inner})$"),
                _ => regex.to_owned(),
            }
        };
        let permission = definitions["permissions"]
            .as_array()
            .expect("permissions")
            .iter()
            .find(|p| p["user"] == example)
            .expect("example user");
        let field = |key: &str| moved(permission[key].as_str().expect("regex"));
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            "/",
            &user.name,
            &field("configure"),
            &field("write"),
            &field("read"),
        ]);
        for topic in definitions["topic_permissions"]
            .as_array()
            .expect("topic permissions")
            .iter()
            .filter(|p| p["user"] == example)
        {
            rabbitmqctl(&[
                "set_topic_permissions",
                "-p",
                "/",
                &user.name,
                &format!("{prefix}{}", topic["exchange"].as_str().expect("exchange")),
                topic["write"].as_str().expect("write"),
                topic["read"].as_str().expect("read"),
            ]);
        }
        user
    }

    /// A confirm-mode channel on a connection of this user.
    async fn channel(&self) -> (Connection, Channel) {
        let url = format!("amqp://{}:{}@127.0.0.1:5672/%2f", self.name, self.password);
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("the test user connects");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        (conn, channel)
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["--quiet", "delete_user", &self.name])
            .output();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .arg("--quiet")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A sample's value in the service's `/metrics`, 0 when absent.
async fn metric(world: &World, sample: &str) -> f64 {
    let (status, text) = http_get(world.http, "/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_forged_guard_bypass_from_the_input_exchange_is_ignored_and_counted() {
    let mut options = Options::default();
    options.env.push(("OFFBOARDING_GUARD_MAX", "2".into()));
    options.env.push(("OFFBOARDING_GUARD_WINDOW", "300".into()));
    let mut world = World::start_with("forged-bypass", options).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        let email = format!("bypass{n}@example.com");
        world
            .sim
            .create_user(profile(&format!("E-80{n}"), &email), UserStatus::Active);
        let id = event_id("bypass");
        let body = leaver(&id, Some(&format!("E-80{n}")), Some(&email));
        world
            .publish_raw(
                "employee.removed",
                body.to_string().as_bytes(),
                properties_for(&body, &[("x-offboarding-guard-bypass", "released")]),
            )
            .await;
        ids.push(id);
    }
    let finals = world.final_outcomes_of(&ids).await;
    let held = finals.values().filter(|o| o["status"] == "held").count();
    let done = finals
        .values()
        .filter(|o| o["status"] == "succeeded")
        .count();
    assert_eq!(
        (done, held),
        (2, 2),
        "the guard holds beyond its max: {finals:?}"
    );
    let deactivated = world
        .sim
        .users()
        .iter()
        .filter(|u| u.status == UserStatus::Deprovisioned)
        .count();
    assert_eq!(deactivated, 2);
    // The held copies do not carry the forged release either.
    let held_copies = drain_queue(&world.channel, &world.parking().held_queue).await;
    assert_eq!(held_copies.len(), 2);
    for copy in &held_copies {
        assert_eq!(
            header_str(
                copy.delivery.properties.headers(),
                "x-offboarding-guard-bypass"
            ),
            None
        );
    }
    // Two of the four removals were held at the service's first contact with it; each of
    // the four carried the forged header (removals arrive in both lanes: 8 deliveries).
    let forged = metric(
        &world,
        "iam_provisioner_forged_own_headers_total{header=\"x-offboarding-guard-bypass\"}",
    )
    .await;
    assert!(forged >= 4.0, "forged headers counted: {forged}");
}

#[tokio::test]
async fn a_forged_activation_marker_is_ignored() {
    let mut world = World::start("forged-activation").await;
    let id = event_id("activation");
    let body = hire(&id, "E-810", "marker@example.com", &["Sales"]);
    world
        .publish_raw(
            "employee.added",
            body.to_string().as_bytes(),
            properties_for(
                &body,
                &[
                    ("x-scheduled-kind", "activation"),
                    ("x-scheduled-for", "2020-01-01T00:00:00Z"),
                ],
            ),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    // Honoured, the marker would run `activate_scheduled`, which creates no one.
    assert!(
        strings(&outcome["actions"]).contains(&"user.created".to_owned()),
        "{outcome}"
    );
    let user = world.sim.user("marker@example.com").expect("created");
    // Activated (PROVISIONED until the user sets a password), not left STAGED.
    assert!(
        matches!(user.status, UserStatus::Active | UserStatus::Provisioned),
        "{:?}",
        user.status
    );
    assert_eq!(
        world.sim.user_group_names(&user.id),
        vec!["Sales-App-Access".to_owned()]
    );
}

#[tokio::test]
async fn protected_accounts_survive_removals_and_leavers_still_cost_three_okta_calls() {
    let mut options = Options::default();
    options.okta_groups.push("Okta-Admins");
    options.env.push(("PROTECTED_GROUPS", "Okta-Admins".into()));
    options
        .env
        .push(("PROTECTED_LOGINS", "Super@example.com".into()));
    options.env.push(("PROTECTED_REFRESH_SECS", "1".into()));
    let mut world = World::start_with("protected", options).await;
    let admin = world
        .sim
        .create_user(profile("ADM-1", "root@example.com"), UserStatus::Active);
    let admins = world.sim.group_id("Okta-Admins").expect("group");
    world.sim.add_member(&admins, &admin);
    world
        .sim
        .create_user(profile("ADM-2", "super@example.com"), UserStatus::Active);
    world
        .sim
        .create_user(profile("E-820", "leaver@example.com"), UserStatus::Active);
    // Two group reads after the membership change: the first has then been put in force.
    world.sim.clear_request_log();
    eventually("the protected group is read twice", || async {
        world
            .sim
            .request_log()
            .iter()
            .filter(|r| r.operation == "listGroupUsers")
            .count()
            >= 2
    })
    .await;

    for (email, employee) in [
        ("root@example.com", "ADM-1"),
        ("super@example.com", "ADM-2"),
    ] {
        let id = event_id("protected");
        world
            .publish(
                "employee.removed",
                &leaver(&id, Some(employee), Some(email)),
            )
            .await;
        let outcome = world.final_outcome(&id).await;
        assert_eq!(outcome["status"], "failed", "{outcome}");
        assert_eq!(outcome["error"]["kind"], "conflict", "{outcome}");
        assert_eq!(outcome["attempt"], 1, "a conflict is not retried");
        assert_eq!(
            world.sim.user(email).expect("user").status,
            UserStatus::Active,
            "a protected account is untouched"
        );
        assert_eq!(world.sim.user(email).expect("user").sessions_revoked, 0);
    }
    // A hire may not adopt a protected account, whoever it names.
    let id = event_id("protected-adopt");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-999", "root@example.com", &["Sales"]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["error"]["kind"], "conflict", "{outcome}");
    let root = world.sim.user("root@example.com").expect("user");
    assert_eq!(root.profile["employeeNumber"], "ADM-1");
    assert_eq!(world.sim.user_group_names(&root.id), vec!["Okta-Admins"]);
    let dead = world.drain_dead_letters().await;
    assert_eq!(dead.len(), 3);
    for message in &dead {
        assert_eq!(
            header_str(message.delivery.properties.headers(), "x-error-kind").as_deref(),
            Some("conflict")
        );
    }
    let refused = metric(
        &world,
        "iam_provisioner_trust_refusals_total{reason=\"protected_account\"}",
    )
    .await;
    assert_eq!(refused, 3.0);

    // An ordinary leaver: find, revoke sessions, deactivate; the cache costs nothing.
    world.sim.clear_request_log();
    let id = event_id("leaver");
    world
        .publish(
            "employee.removed",
            &leaver(&id, Some("E-820"), Some("leaver@example.com")),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    let calls = world
        .sim
        .request_log()
        .iter()
        .filter(|r| !matches!(r.operation, "listGroupUsers" | "listGroups" | "getGroup"))
        .count();
    assert!(calls <= 3, "a leaver costs {calls} Okta calls");
}

#[tokio::test]
async fn no_event_runs_before_the_protected_groups_are_read() {
    let mut options = Options::default();
    // The group does not exist yet: the membership cannot be known.
    options
        .env
        .push(("PROTECTED_GROUPS", "Later-Admins".into()));
    options.env.push(("PROTECTED_REFRESH_SECS", "1".into()));
    let mut world = World::start_with("protected-first", options).await;
    eventually("/readyz says the protected groups are not read", || async {
        let (status, body) = http_get(world.http, "/readyz").await;
        status == 503 && body.contains("protected groups")
    })
    .await;
    let id = event_id("waits");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-830", "waits@example.com", &[]),
        )
        .await;
    // Once the group exists, the next read loads it and the waiting hire runs.
    let read_before = world
        .sim
        .request_log()
        .iter()
        .filter(|r| r.operation == "listGroups")
        .count();
    eventually("another attempt to read the group", || async {
        world
            .sim
            .request_log()
            .iter()
            .filter(|r| r.operation == "listGroups")
            .count()
            > read_before
    })
    .await;
    assert!(
        world.sim.user("waits@example.com").is_none(),
        "nothing is provisioned before the protected groups are read"
    );
    world.sim.create_group(
        "Later-Admins",
        iam_provisioner::okta_sim::GroupType::OktaGroup,
    );
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    eventually("ready", || async {
        http_get(world.http, "/readyz").await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn only_trusted_publishers_are_accepted_and_copies_carry_no_user_id_or_expiration() {
    let hr = BrokerUser::create("hr");
    let mut options = Options::default();
    options.env.push(("TRUSTED_PUBLISHERS", hr.name.clone()));
    let mut world = World::start_with("publishers", options).await;
    let (_hr_conn, hr_channel) = hr.channel().await;

    // The trusted publisher, with a validated user_id and a TTL: processed.
    let trusted = event_id("trusted");
    let body = hire(&trusted, "E-840", "trusted@example.com", &[]);
    publish_to(
        &hr_channel,
        &world.names.input_exchange,
        "employee.added",
        body.to_string().as_bytes(),
        properties_for(&body, &[]).with_user_id(hr.name.as_str().into()),
    )
    .await;
    assert_eq!(world.final_outcome(&trusted).await["status"], "succeeded");

    // Anyone else (here the guest user, validated), and a message without user_id.
    let guest = event_id("guest");
    let body = hire(&guest, "E-841", "guest@example.com", &[]);
    world
        .publish_raw(
            "employee.added",
            body.to_string().as_bytes(),
            properties_for(&body, &[]).with_user_id("guest".into()),
        )
        .await;
    let anonymous = event_id("anonymous");
    world
        .publish(
            "employee.added",
            &hire(&anonymous, "E-842", "anon@example.com", &[]),
        )
        .await;
    // Different employees run concurrently: either may finish first.
    let finals = world
        .final_outcomes_of(&[guest.clone(), anonymous.clone()])
        .await;
    for id in [&guest, &anonymous] {
        let outcome = &finals[id];
        assert_eq!(outcome["status"], "failed", "{outcome}");
        assert_eq!(outcome["error"]["kind"], "validation", "{outcome}");
        assert!(
            outcome["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("TRUSTED_PUBLISHERS")),
            "{outcome}"
        );
    }
    assert!(world.sim.user("guest@example.com").is_none());
    assert!(world.sim.user("anon@example.com").is_none());

    // A trusted publisher's message that fails: its dead-letter copy is published by the
    // service's user, so it cannot keep the HR user_id (the broker would refuse it) or
    // the TTL (the failure would silently expire); the publisher is recorded instead.
    let invalid = event_id("invalid");
    let body =
        json!({"event_id": invalid, "occurred_at": now_rfc3339(), "employee": {"id": "E-843"}});
    publish_to(
        &hr_channel,
        &world.names.input_exchange,
        "employee.added",
        body.to_string().as_bytes(),
        properties_for(&body, &[])
            .with_user_id(hr.name.as_str().into())
            .with_expiration("600000".into()),
    )
    .await;
    assert_eq!(world.final_outcome(&invalid).await["status"], "failed");
    // A future-dated removal from the trusted publisher: its parked copy is clean too.
    world
        .sim
        .create_user(profile("E-844", "later@example.com"), UserStatus::Active);
    let parked = event_id("parked");
    let mut body = leaver(&parked, Some("E-844"), Some("later@example.com"));
    body["effective_at"] = json!("2099-01-01T00:00:00Z");
    publish_to(
        &hr_channel,
        &world.names.input_exchange,
        "employee.removed",
        body.to_string().as_bytes(),
        properties_for(&body, &[])
            .with_user_id(hr.name.as_str().into())
            .with_expiration("600000".into()),
    )
    .await;
    assert_eq!(world.final_outcome(&parked).await["status"], "succeeded");

    let dead = world.drain_dead_letters().await;
    assert_eq!(dead.len(), 3, "guest, anonymous and invalid");
    let delay_queue = format!("{}.parked.1d", world.names.work_queue);
    // Its outcome follows the confirm of the parked copy: the copy is there.
    let parked_copies = drain_queue(&world.channel, &delay_queue).await;
    assert_eq!(parked_copies.len(), 1);
    for copy in dead.iter().chain(parked_copies.iter()) {
        let properties = &copy.delivery.properties;
        assert_eq!(properties.user_id(), &None, "{properties:?}");
        assert_eq!(properties.expiration(), &None, "{properties:?}");
    }
    let recorded = |message: &lapin::message::BasicGetMessage| {
        header_str(message.delivery.properties.headers(), "x-original-user-id")
    };
    let by_id = |id: &str| {
        dead.iter()
            .find(|m| {
                m.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.as_str())
                    == Some(id)
            })
            .expect("dead-lettered")
    };
    assert_eq!(recorded(by_id(&guest)).as_deref(), Some("guest"));
    assert_eq!(recorded(by_id(&anonymous)), None);
    assert_eq!(recorded(by_id(&invalid)).as_deref(), Some(hr.name.as_str()));
    assert_eq!(
        recorded(&parked_copies[0]).as_deref(),
        Some(hr.name.as_str())
    );
}

#[tokio::test]
async fn events_for_another_email_domain_are_refused() {
    let mut options = Options::default();
    options
        .env
        .push(("ALLOWED_EMAIL_DOMAINS", "example.com".into()));
    let mut world = World::start_with("domains", options).await;
    world
        .sim
        .create_user(profile("E-851", "ceo@partner.test"), UserStatus::Active);
    let hire_id = event_id("domain-hire");
    world
        .publish(
            "employee.added",
            &hire(&hire_id, "E-850", "new@evil.test", &[]),
        )
        .await;
    let removal_id = event_id("domain-removal");
    world
        .publish(
            "employee.removed",
            &leaver(&removal_id, None, Some("ceo@partner.test")),
        )
        .await;
    let ok_id = event_id("domain-ok");
    world
        .publish(
            "employee.added",
            &hire(&ok_id, "E-852", "ok@EXAMPLE.com", &[]),
        )
        .await;
    let finals = world
        .final_outcomes_of(&[hire_id.clone(), removal_id.clone(), ok_id.clone()])
        .await;
    for id in [&hire_id, &removal_id] {
        assert_eq!(finals[id]["status"], "failed", "{:?}", finals[id]);
        assert_eq!(finals[id]["error"]["kind"], "validation");
        assert!(finals[id]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ALLOWED_EMAIL_DOMAINS")));
    }
    assert_eq!(finals[&ok_id]["status"], "succeeded");
    assert!(world.sim.user("new@evil.test").is_none());
    assert_eq!(
        world.sim.user("ceo@partner.test").expect("user").status,
        UserStatus::Active
    );
    assert_eq!(world.drain_dead_letters().await.len(), 2);
}

#[tokio::test]
async fn partitioned_the_intake_removes_forged_headers_and_copies_without_user_id() {
    let hr = BrokerUser::create("hr-part");
    let mut world = World::start_with(
        "trust-partitioned",
        Options {
            env: vec![
                ("PARTITIONS", "2".into()),
                ("REPLICAS", "1".into()),
                ("REPLICA_INDEX", "0".into()),
                ("TRUSTED_PUBLISHERS", hr.name.clone()),
            ],
            ..Options::default()
        },
    )
    .await;
    world
        .cleanup
        .extra_queues
        .extend([0, 1].map(|p| world.names.partition_queue(p)));
    let _exchange = PartitionsExchangeCleanup(world.names.partitions_exchange());
    let (_hr_conn, hr_channel) = hr.channel().await;
    // After the intake every delivery comes from the partitions exchange, an own route:
    // the intake is where a forged marker must go. With a validated user_id the intake's
    // copy (published by the service's user) could not even be published if it kept it.
    let id = event_id("part-forged");
    let body = hire(&id, "E-860", "partitioned@example.com", &["Sales"]);
    publish_to(
        &hr_channel,
        &world.names.input_exchange,
        "employee.added",
        body.to_string().as_bytes(),
        properties_for(
            &body,
            &[
                ("x-scheduled-kind", "activation"),
                ("x-scheduled-for", "2020-01-01T00:00:00Z"),
                ("x-original-user-id", "someone-else"),
            ],
        )
        .with_user_id(hr.name.as_str().into())
        .with_expiration("600000".into()),
    )
    .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert!(
        strings(&outcome["actions"]).contains(&"user.created".to_owned()),
        "the forged activation marker was ignored: {outcome}"
    );
    // Judged by the broker-validated publisher, not the forged record.
    let refused = event_id("part-refused");
    let body = hire(&refused, "E-861", "other@example.com", &[]);
    world
        .publish_raw(
            "employee.added",
            body.to_string().as_bytes(),
            properties_for(&body, &[("x-original-user-id", hr.name.as_str())]),
        )
        .await;
    let outcome = world.final_outcome(&refused).await;
    assert_eq!(outcome["error"]["kind"], "validation", "{outcome}");
    let dead = world.drain_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header_str(dead[0].delivery.properties.headers(), "x-original-user-id"),
        None,
        "a forged record is removed at the intake"
    );
}

/// Publishes on a fresh channel of `user`; whether the broker accepted it.
async fn may_publish(user: &BrokerUser, exchange: &str, routing_key: &str) -> bool {
    let (conn, channel) = user.channel().await;
    let sent = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            lapin::options::BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_user_id(user.name.as_str().into()),
        )
        .await;
    let accepted = match sent {
        Ok(confirm) => matches!(confirm.await, Ok(c) if c.is_ack()),
        Err(_) => false,
    };
    let _ = conn.close(200, "done".into()).await;
    accepted
}

#[tokio::test]
async fn the_example_hr_publisher_may_write_to_the_input_exchange_only() {
    let world = World::start("hr-permissions").await;
    let prefix = world
        .names
        .input_exchange
        .strip_suffix("hr.events")
        .expect("prefixed default name")
        .to_owned();
    let hr = BrokerUser::like_example("hr-example", "hr-publisher", &prefix);
    assert!(may_publish(&hr, &world.names.input_exchange, "employee.removed").await);
    let parking = world.parking();
    for own in [
        parking.retry_exchange.as_str(),
        parking.delay_exchange.as_str(),
        &world.names.replay_exchange(),
        &world.names.dead_letter_exchange,
        &world.names.results_exchange,
        "",
    ] {
        assert!(
            !may_publish(&hr, own, "employee.removed").await,
            "the HR publisher must not reach {own:?}"
        );
    }
    assert!(
        !may_publish(&hr, &world.names.input_exchange, "admin.created").await,
        "only the contract's routing keys"
    );
}
