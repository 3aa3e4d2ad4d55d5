//! The service authenticating as an OAuth 2.0 service app (issue: security): real
//! RabbitMQ, the fake Okta's token endpoint, and the failures an administrator must be
//! able to understand from the outcome alone.

mod common;

use common::*;
use iam_provisioner::okta_sim::{test_key_pair, KeyKind, SimConfig, SimOAuthClient, TestKeyPair};
use serde_json::Value;
use std::time::{Duration, Instant};

const CLIENT_ID: &str = "0oaPROVISIONER";
const ALL_SCOPES: [&str; 4] = [
    "okta.users.read",
    "okta.users.manage",
    "okta.groups.read",
    "okta.groups.manage",
];

/// Options for a service that uses `service_key` against a fake that trusts
/// `registered`'s public key and grants `granted`.
fn oauth_options(
    service_key: &TestKeyPair,
    registered: &TestKeyPair,
    granted: &[&str],
    extra_env: &[(&'static str, &str)],
) -> Options {
    let mut env = vec![
        ("OKTA_API_TOKEN", String::new()),
        ("OKTA_CLIENT_ID", CLIENT_ID.to_owned()),
        ("OKTA_PRIVATE_KEY", service_key.private_pem.clone()),
        ("OKTA_KEY_ID", "kid-1".to_owned()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Options {
        env,
        sim: SimConfig {
            oauth_clients: vec![SimOAuthClient {
                client_id: CLIENT_ID.into(),
                public_key_pem: registered.public_pem.clone(),
                scopes: granted.iter().map(|s| s.to_string()).collect(),
            }],
            // An app created through the API, without DPoP: served exactly as before
            // DPoP existed. tests/dpop.rs has the Admin Console's default.
            oauth_dpop_required: false,
            ..SimConfig::default()
        },
        ..Options::default()
    }
}

fn key(kind: KeyKind) -> TestKeyPair {
    test_key_pair(kind).expect("key pair")
}

#[tokio::test]
async fn the_service_provisions_end_to_end_as_a_service_app() {
    let keys = key(KeyKind::Rsa);
    let mut world =
        World::start_with("oauth-e2e", oauth_options(&keys, &keys, &ALL_SCOPES, &[])).await;
    let hired = event_id("oauth-hire");
    world
        .publish(
            "employee.added",
            &hire(&hired, "E-OA1", "oauth1@example.com", &["Sales"]),
        )
        .await;
    let outcome = world.final_outcome(&hired).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    let user = world.sim.user("oauth1@example.com").expect("created");
    let groups = world.sim.user_group_names(&user.id);
    assert_eq!(groups, vec!["Sales-App-Access"]);

    let left = event_id("oauth-leave");
    world
        .publish(
            "employee.removed",
            &leaver(&left, Some("E-OA1"), Some("oauth1@example.com")),
        )
        .await;
    let outcome = world.final_outcome(&left).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");

    // One token served start-up and both events; every API call carried it.
    let requests = world.sim.token_requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].status, 200);
    assert!(world.sim.request_log().iter().all(|r| r.status != 401));
}

#[tokio::test]
async fn an_es256_key_works_too() {
    let keys = key(KeyKind::P256);
    let mut world =
        World::start_with("oauth-es256", oauth_options(&keys, &keys, &ALL_SCOPES, &[])).await;
    let id = event_id("es256");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-OA2", "oauth2@example.com", &[]),
        )
        .await;
    assert_eq!(world.final_outcome(&id).await["status"], "succeeded");
}

/// Publishes hires one after another until `done` says so or the deadline passes;
/// asserts each one succeeded at its first attempt.
async fn hire_until(world: &mut World, label: &str, done: impl Fn(&World) -> bool) -> usize {
    let deadline = Instant::now() + PATIENCE;
    let mut n = 0;
    while !done(world) {
        assert!(
            Instant::now() < deadline,
            "{label}: the condition never held"
        );
        let id = event_id(label);
        world
            .publish(
                "employee.added",
                &hire(
                    &id,
                    &format!("E-{label}-{n}"),
                    &format!("{label}{n}@example.com"),
                    &["Sales"],
                ),
            )
            .await;
        let seen = world.outcomes_until_final(&id).await;
        assert_eq!(seen.len(), 1, "no retry was needed: {seen:?}");
        assert_eq!(seen[0]["status"], "succeeded", "{}", seen[0]);
        assert_eq!(seen[0]["attempt"], 1);
        n += 1;
    }
    n
}

#[tokio::test]
async fn tokens_that_expire_mid_run_are_renewed_without_a_failed_event() {
    let keys = key(KeyKind::Rsa);
    let mut options = oauth_options(&keys, &keys, &ALL_SCOPES, &[]);
    // Two seconds: the client renews at 1.6 s, so a run of a few seconds crosses
    // several expiries.
    options.sim.access_token_lifetime = Duration::from_secs(2);
    // The test hires as fast as the service goes until tokens renew: hundreds of hires in
    // two seconds, past a workforce org's 600 createUser calls a minute. Renewal is what
    // is tested here; rate limits have their own tests (tests/rate_limits.rs).
    options.sim.rate_limit = None;
    let mut world = World::start_with("oauth-expiry", options).await;

    let events = hire_until(&mut world, "renew", |w| {
        w.sim.issued_access_tokens().len() >= 3
    })
    .await;
    // Every hire succeeded at its first attempt (`hire_until` asserts it) across the
    // renewals: that is the guarantee. Whether each renewal beat its expiry by a margin is
    // wall-clock luck on a loaded machine, and a late one costs a 401 and a retry inside
    // the call, not a failed event, so the fake's 401 count is not asserted here.
    assert!(events >= 2, "several events ran across the renewals");

    // A token Okta ends early (revoked, clock skew) is renewed after its 401 and the
    // call retried once, invisibly to the event.
    world
        .sim
        .set_access_token_lifetime(Duration::from_secs(3600));
    let before = world.sim.issued_access_tokens().len();
    // The next renewal, within 1.6 s, brings an hour-long token.
    hire_until(&mut world, "long", |w| {
        w.sim.issued_access_tokens().len() > before
    })
    .await;
    let issued = world.sim.issued_access_tokens().len();
    world.sim.expire_access_tokens();
    world.sim.clear_request_log();
    hire_until(&mut world, "revoked", |w| {
        w.sim.issued_access_tokens().len() > issued
    })
    .await;
    let statuses: Vec<u16> = world.sim.request_log().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        1,
        "one rejected call, retried with the new token: {statuses:?}"
    );
}

#[tokio::test]
async fn an_assertion_signed_with_the_wrong_key_fails_the_event_clearly() {
    let registered = key(KeyKind::Rsa);
    let wrong = key(KeyKind::Rsa);
    let mut world = World::start_with(
        "oauth-wrong-key",
        oauth_options(&wrong, &registered, &ALL_SCOPES, &[]),
    )
    .await;
    let id = event_id("wrong-key");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-OA3", "oauth3@example.com", &[]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "failed", "{outcome}");
    assert_eq!(outcome["attempt"], 1, "a refused key is not retried");
    let error = &outcome["error"];
    assert_eq!(error["kind"], "okta", "{error}");
    assert_eq!(error["okta_error_code"], "invalid_client");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("OAuth 2.0 access token request")
            && message.contains("The client_assertion signature is invalid."),
        "{message}"
    );
    assert!(world.sim.user("oauth3@example.com").is_none());
    let dead = world.drain_dead_letters().await;
    assert_eq!(dead.len(), 1);
    let headers = dead[0].delivery.properties.headers().clone();
    assert_eq!(
        header_str(&headers, "x-error-kind").as_deref(),
        Some("okta")
    );
    assert_eq!(
        header_str(&headers, "x-okta-error-code").as_deref(),
        Some("invalid_client")
    );
    assert!(world
        .sim
        .token_requests()
        .iter()
        .all(|r| r.error.as_deref() == Some("invalid_client")));
}

#[tokio::test]
async fn a_missing_scope_is_an_okta_failure_that_names_the_scope() {
    let keys = key(KeyKind::P256);
    let mut world = World::start_with(
        "oauth-scope",
        oauth_options(
            &keys,
            &keys,
            &ALL_SCOPES,
            &[(
                "OKTA_SCOPES",
                "okta.users.read okta.groups.read okta.groups.manage",
            )],
        ),
    )
    .await;
    let id = event_id("scope");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-OA4", "oauth4@example.com", &[]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    assert_eq!(outcome["status"], "failed", "{outcome}");
    let error = &outcome["error"];
    assert_eq!(error["kind"], "okta", "{error}");
    assert_eq!(error["okta_error_code"], "E0000006");
    assert!(error["okta_request_id"].is_string());
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("lacks the scope okta.users.manage that createUser needs"),
        "{message}"
    );
}

#[tokio::test]
async fn a_scope_the_app_was_not_granted_is_named_by_the_token_refusal() {
    let keys = key(KeyKind::Rsa);
    let mut world = World::start_with(
        "oauth-grant",
        oauth_options(
            &keys,
            &keys,
            &["okta.users.read", "okta.users.manage", "okta.groups.read"],
            &[],
        ),
    )
    .await;
    let id = event_id("grant");
    world
        .publish(
            "employee.added",
            &hire(&id, "E-OA5", "oauth5@example.com", &[]),
        )
        .await;
    let outcome = world.final_outcome(&id).await;
    let error: &Value = &outcome["error"];
    assert_eq!(error["kind"], "okta", "{outcome}");
    assert_eq!(error["okta_error_code"], "invalid_scope");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("okta.groups.manage"), "{message}");
}

#[tokio::test]
async fn the_okta_sim_command_registers_service_apps_from_the_command_line() {
    use iam_provisioner::okta::{OktaAuth, OktaClient, OktaClientSettings, ServiceApp, SigningKey};
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let keys = key(KeyKind::P256);
    let key_file = std::env::temp_dir().join(format!("iam-sim-pub-{:x}.pem", fastrand::u64(..)));
    std::fs::write(&key_file, &keys.public_pem).expect("write key");
    let mut child = Command::new(env!("CARGO_BIN_EXE_iam-provisioner"))
        .args(["okta-sim", "--listen", "127.0.0.1:0", "--oauth-client"])
        .arg(format!("0oaCLI={}", key_file.display()))
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("okta-sim starts");
    let stderr = child.stderr.take().expect("stderr");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let base = loop {
        let line = receiver
            .recv_timeout(PATIENCE)
            .expect("the fake says where it is");
        if let Some(start) = line.find("http://127.0.0.1:") {
            let url: String = line[start..]
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '\u{1b}')
                .collect();
            break url;
        }
    };
    let _ = std::fs::remove_file(&key_file);
    let app = ServiceApp {
        client_id: "0oaCLI".into(),
        key: SigningKey::from_pem(&secret(&keys.private_pem)).expect("key"),
        key_id: None,
        scopes: ALL_SCOPES.iter().map(|s| s.to_string()).collect(),
    };
    let client = OktaClient::with_auth(
        reqwest::Url::parse(&base).expect("url"),
        &OktaAuth::ServiceApp(app),
        OktaClientSettings::default(),
    )
    .expect("client");
    let groups = client.find_groups_by_name("Nobody").await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(groups.expect("authorized as the service app").is_empty());
}
