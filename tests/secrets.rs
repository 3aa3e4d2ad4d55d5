//! Secrets hygiene of the binary (issue: security): run as operators run it, as an
//! OAuth service app at `RUST_LOG=trace`, through token renewals and failures, and
//! look for the private key, the client assertions and the access tokens in everything
//! it wrote. Also checks that values from a message cannot forge a log line.

mod common;

use common::process::{ServiceProcess, BINARY};
use common::*;
use futures_util::StreamExt;
use iam_provisioner::amqp::topology::TopologyNames;
use iam_provisioner::okta_sim::{test_key_pair, KeyKind, OktaSim, SimConfig, SimOAuthClient};
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test]
async fn no_key_assertion_or_access_token_reaches_the_output_even_at_trace() {
    let names = TopologyNames::prefixed(&unique_prefix("secrets"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    let keys = test_key_pair(KeyKind::Rsa).expect("key pair");
    let sim = OktaSim::start(SimConfig {
        groups: vec!["Sales-App-Access".into()],
        oauth_clients: vec![SimOAuthClient {
            client_id: "0oaSECRETS".into(),
            public_key_pem: keys.public_pem.clone(),
            scopes: vec![
                "okta.users.read".into(),
                "okta.users.manage".into(),
                "okta.groups.read".into(),
                "okta.groups.manage".into(),
            ],
        }],
        access_token_lifetime: Duration::from_secs(2),
        // Hires as fast as the service goes until tokens renew: hundreds in a few seconds,
        // past a workforce org's 600 createUser calls a minute, which would hold the
        // leaver's search (same bucket) for the rest of the window. Secrets are tested
        // here; rate limits in tests/rate_limits.rs.
        rate_limit: None,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let (_conn, channel, mut outcomes) = observe(&names).await;
    let mut service = ServiceProcess::spawn_without_okta(
        &names,
        &[
            ("RUST_LOG", "trace"),
            ("OKTA_ORG_URL", &sim.base_url()),
            ("OKTA_CLIENT_ID", "0oaSECRETS"),
            ("OKTA_PRIVATE_KEY", &keys.private_pem),
        ],
    );
    service.wait_for_log("consuming").await;

    let exchange = names.input_exchange.clone();
    let publish = |key: &'static str, body: Vec<u8>, message_id: &'static str| {
        let channel = channel.clone();
        let exchange = exchange.clone();
        async move {
            let properties = lapin::BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(message_id.into());
            publish_to(&channel, &exchange, key, &body, properties).await;
        }
    };
    let mut expected = 0;
    // Hires until the two-second tokens have been renewed twice.
    let deadline = Instant::now() + PATIENCE;
    while sim.issued_access_tokens().len() < 3 {
        assert!(Instant::now() < deadline, "tokens were never renewed");
        let body = hire(
            &event_id("secret"),
            &format!("E-S{expected}"),
            &format!("s{expected}@example.com"),
            &["Sales"],
        );
        publish("employee.added", body.to_string().into_bytes(), "hire").await;
        expected += 1;
        let outcome = next_outcome(&mut outcomes).await;
        assert_eq!(outcome["status"], "succeeded", "{outcome}");
    }
    // A token Okta ends early: one 401, a renewal, a retry.
    sim.expire_access_tokens();
    publish(
        "employee.removed",
        leaver(&event_id("secret-leave"), Some("E-S0"), None)
            .to_string()
            .into_bytes(),
        "leave",
    )
    .await;
    assert_eq!(next_outcome(&mut outcomes).await["status"], "succeeded");
    // An invalid message whose id tries to forge a log line.
    publish(
        "employee.added",
        br#"{"event_id": 42}"#.to_vec(),
        "x\nFORGED level=ERROR the log was forged\u{1b}[31m",
    )
    .await;
    assert_eq!(next_outcome(&mut outcomes).await["status"], "failed");

    service.terminate();
    assert_eq!(service.wait_exit().await.code(), Some(0));
    let log = service.log_text();
    assert!(log.contains("TRACE"), "trace level was on");
    assert!(
        log.contains("obtained an Okta access token"),
        "tokens were fetched"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a message forged a log line"
    );
    assert!(
        !log.contains("forged\u{1b}"),
        "an escape sequence from a message reached the log"
    );
    assert!(
        log.contains("forged\\u{1b}[31m"),
        "the message id was logged, escaped"
    );

    let mut secrets: Vec<(String, String)> = Vec::new();
    for line in keys.private_pem.lines().filter(|l| !l.starts_with("-----")) {
        secrets.push(("a line of the private key".into(), line.to_owned()));
    }
    let assertions = sim.received_client_assertions();
    assert!(assertions.len() >= 4, "{} assertions", assertions.len());
    for assertion in &assertions {
        secrets.push(("a client assertion".into(), assertion.clone()));
        // Its signature alone, and its claims alone.
        for part in assertion.split('.').skip(1) {
            secrets.push(("part of a client assertion".into(), part.to_owned()));
        }
    }
    let tokens = sim.issued_access_tokens();
    for token in &tokens {
        secrets.push(("an access token".into(), token.clone()));
        secrets.push(("part of an access token".into(), token[3..27].to_owned()));
    }
    for (what, secret) in &secrets {
        assert!(!log.contains(secret.as_str()), "{what} leaked into the log");
    }
    println!(
        "searched {} lines of output for {} secrets ({} assertions, {} access tokens)",
        log.lines().count(),
        secrets.len(),
        assertions.len(),
        tokens.len()
    );
}

async fn next_outcome(outcomes: &mut lapin::Consumer) -> serde_json::Value {
    let delivery = tokio::time::timeout(PATIENCE, outcomes.next())
        .await
        .expect("outcome in time")
        .expect("stream")
        .expect("delivery");
    serde_json::from_slice(&delivery.data).expect("json")
}

#[test]
fn a_bad_service_app_configuration_stops_start_up_in_one_line_without_the_key() {
    let keys = test_key_pair(KeyKind::P256).expect("key pair");
    let private_line = keys.private_pem.lines().nth(1).expect("a base64 line");
    let public_line = keys.public_pem.lines().nth(1).expect("a base64 line");
    let cases: [(&[(&str, &str)], &str); 3] = [
        // The public key where the private one belongs.
        (
            &[
                ("OKTA_CLIENT_ID", "0oaBAD"),
                ("OKTA_PRIVATE_KEY", &keys.public_pem),
            ],
            "OKTA_PRIVATE_KEY",
        ),
        // A key that is not PEM at all (say, a pasted JWK).
        (
            &[
                ("OKTA_CLIENT_ID", "0oaBAD"),
                ("OKTA_PRIVATE_KEY", r#"{"kty":"RSA","d":"c2VjcmV0"}"#),
            ],
            "OKTA_PRIVATE_KEY",
        ),
        // Two ways to authenticate at once.
        (
            &[
                ("OKTA_API_TOKEN", "00token"),
                ("OKTA_CLIENT_ID", "0oaBAD"),
                ("OKTA_PRIVATE_KEY", &keys.private_pem),
            ],
            "OKTA_API_TOKEN",
        ),
    ];
    for (vars, variable) in cases {
        let output = Command::new(BINARY)
            .arg("run")
            .env_clear()
            .env("OKTA_ORG_URL", "https://acme.okta.com")
            .envs(vars.iter().copied())
            .output()
            .expect("runs");
        assert!(!output.status.success(), "{variable} must stop start-up");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
        assert!(stderr.contains(variable), "{stderr}");
        for secret in [private_line, public_line, "c2VjcmV0"] {
            assert!(!stderr.contains(secret), "key material in: {stderr}");
        }
    }
}
