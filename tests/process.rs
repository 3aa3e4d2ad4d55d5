//! The binary as operators run it: signals, exit codes, configuration errors, and what
//! it writes to its logs.

mod common;

use common::process::{ServiceProcess, BINARY};
use common::*;
use iam_provisioner::amqp::topology::TopologyNames;
use iam_provisioner::okta_sim::{OktaSim, SimConfig, UserStatus};
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test]
async fn sigterm_finishes_in_flight_work_and_exits_zero() {
    let names = TopologyNames::prefixed(&unique_prefix("sigterm"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    let sim = OktaSim::start(SimConfig {
        latency: Duration::from_millis(1500),
        groups: vec!["Sales-App-Access".into()],
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let (conn, channel, mut outcomes) = observe(&names).await;
    let mut service = ServiceProcess::spawn(&names, &sim, &[]);
    service.wait_for_log("consuming").await;

    let world_publish = |n: usize| {
        hire(
            &format!("sigterm-{n}"),
            &format!("E-T{n}"),
            &format!("t{n}@example.com"),
            &["Sales"],
        )
    };
    for n in 0..3 {
        let body = world_publish(n).to_string();
        publish_to(
            &channel,
            &names.input_exchange,
            "employee.added",
            body.as_bytes(),
            lapin::BasicProperties::default().with_content_type("application/json".into()),
        )
        .await;
    }
    // Wait until the service holds all three (none ready in the queue): they are in flight,
    // each waiting 1.5 s on the fake Okta.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let probe = conn.create_channel().await.expect("channel");
        let queue = probe
            .queue_declare(
                names.work_queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("queue");
        if queue.message_count() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries never reached the service"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.terminate();
    let status = service.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", service.log_text());

    use futures_util::StreamExt;
    let mut succeeded = 0;
    while succeeded < 3 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), outcomes.next())
            .await
            .expect("in-flight work finished with an outcome before exit")
            .expect("stream")
            .expect("delivery");
        let outcome: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
        assert_eq!(outcome["status"], "succeeded", "{outcome}");
        succeeded += 1;
    }
    for n in 0..3 {
        let user = sim
            .user(&format!("t{n}@example.com"))
            .expect("user created");
        assert_ne!(user.status, UserStatus::Deprovisioned);
    }
}

#[tokio::test]
async fn the_api_token_never_appears_in_logs_even_at_trace() {
    let names = TopologyNames::prefixed(&unique_prefix("secret"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    let token = format!("00SECRET{:016x}tok", fastrand::u64(..));
    let sim = OktaSim::start(SimConfig {
        api_token: token.clone(),
        groups: vec!["Sales-App-Access".into()],
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let (_conn, channel, mut outcomes) = observe(&names).await;
    let mut service = ServiceProcess::spawn(&names, &sim, &[("RUST_LOG", "trace")]);
    service.wait_for_log("consuming").await;

    let bodies = [
        (
            "employee.added",
            hire("secret-1", "E-S1", "s1@example.com", &["Sales"]),
        ),
        ("employee.removed", leaver("secret-2", Some("E-S1"), None)),
        (
            "employee.added",
            serde_json::json!({"event_id": "secret-3"}),
        ),
    ];
    for (key, body) in &bodies {
        publish_to(
            &channel,
            &names.input_exchange,
            key,
            body.to_string().as_bytes(),
            lapin::BasicProperties::default().with_content_type("application/json".into()),
        )
        .await;
    }
    use futures_util::StreamExt;
    for _ in 0..bodies.len() {
        tokio::time::timeout(PATIENCE, outcomes.next())
            .await
            .expect("outcome in time")
            .expect("stream")
            .expect("delivery");
    }
    service.terminate();
    let status = service.wait_exit().await;
    assert_eq!(status.code(), Some(0));
    let log = service.log_text();
    assert!(
        log.contains("event succeeded"),
        "the trace log is not empty"
    );
    assert!(log.contains("TRACE"), "trace level was on");
    assert!(
        !log.contains('\u{1b}'),
        "no colour codes when standard error is not a terminal"
    );
    assert!(!log.contains(&token), "the API token leaked into the log");
    assert!(
        !log.contains(&token[8..24]),
        "part of the API token leaked into the log"
    );
}

#[tokio::test]
async fn bad_configuration_stops_start_up_with_one_line_naming_the_variable() {
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[], "OKTA_ORG_URL"),
        (
            &[
                ("OKTA_ORG_URL", "https://acme.okta.com"),
                ("OKTA_API_TOKEN", "t"),
                ("OFFBOARDING_MODE", "archive"),
            ],
            "OFFBOARDING_MODE",
        ),
        (
            &[
                ("OKTA_ORG_URL", "http://acme.okta.com"),
                ("OKTA_API_TOKEN", "t"),
            ],
            "OKTA_ORG_URL",
        ),
    ];
    for (vars, variable) in cases {
        let output = Command::new(BINARY)
            .arg("run")
            .env_clear()
            .envs(vars.iter().copied())
            .output()
            .expect("runs");
        assert!(!output.status.success(), "{vars:?} must not start");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one clear line: {stderr}");
        assert!(lines[0].contains(variable), "{stderr}");
    }
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["okta-sim", "--help"],
    ] {
        let output = Command::new(BINARY).args(&args).output().expect("runs");
        assert!(output.status.success(), "{args:?}");
        assert!(!output.stdout.is_empty());
    }
}
