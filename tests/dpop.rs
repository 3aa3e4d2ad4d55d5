//! DPoP (RFC 9449) on the service-app path, as users meet it (issue 12): real RabbitMQ,
//! real HR events and outcome events, and the fake Okta as strict as an API Services
//! app made in the Admin Console (DPoP required) or created through the API (not).
//! Nothing is configured on the service side in either case.

mod common;

use common::*;
use iam_provisioner::okta_sim::{
    test_key_pair, KeyKind, RequestRecord, SimConfig, SimOAuthClient, TestKeyPair,
};

const CLIENT_ID: &str = "0oaDPOPAPP";
const ALL_SCOPES: [&str; 4] = [
    "okta.users.read",
    "okta.users.manage",
    "okta.groups.read",
    "okta.groups.manage",
];

fn options(keys: &TestKeyPair, dpop_required: bool) -> Options {
    Options {
        env: vec![
            ("OKTA_API_TOKEN", String::new()),
            ("OKTA_CLIENT_ID", CLIENT_ID.to_owned()),
            ("OKTA_PRIVATE_KEY", keys.private_pem.clone()),
        ],
        sim: SimConfig {
            oauth_clients: vec![SimOAuthClient {
                client_id: CLIENT_ID.into(),
                public_key_pem: keys.public_pem.clone(),
                scopes: ALL_SCOPES.iter().map(|s| s.to_string()).collect(),
            }],
            oauth_dpop_required: dpop_required,
            ..SimConfig::default()
        },
        ..Options::default()
    }
}

/// The token endpoint's answers, as their OAuth error (`None` for a token).
fn token_errors(world: &World) -> Vec<Option<String>> {
    world
        .sim
        .token_requests()
        .into_iter()
        .map(|r| r.error)
        .collect()
}

fn refused(log: &[RequestRecord]) -> Vec<(u16, String)> {
    log.iter()
        .filter(|r| r.status >= 400)
        .map(|r| (r.status, r.operation.to_owned()))
        .collect()
}

async fn hire_and_remove(world: &mut World, label: &str, employee: &str, email: &str) {
    let hired = event_id(&format!("{label}-hire"));
    world
        .publish("employee.added", &hire(&hired, employee, email, &["Sales"]))
        .await;
    let outcome = world.final_outcome(&hired).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["attempt"], 1, "{outcome}");
    let user = world.sim.user(email).expect("created");
    assert_eq!(
        world.sim.user_group_names(&user.id),
        vec!["Sales-App-Access"]
    );

    let left = event_id(&format!("{label}-leave"));
    world
        .publish(
            "employee.removed",
            &leaver(&left, Some(employee), Some(email)),
        )
        .await;
    let outcome = world.final_outcome(&left).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["attempt"], 1, "{outcome}");
    assert_eq!(
        world.sim.user(email).expect("kept").status.as_str(),
        "DEPROVISIONED"
    );
}

#[tokio::test]
async fn an_app_that_requires_dpop_provisions_end_to_end_without_any_setting() {
    let keys = test_key_pair(KeyKind::Rsa).expect("key pair");
    let mut world = World::start_with("dpop-e2e", options(&keys, true)).await;
    hire_and_remove(&mut world, "dpop-e2e", "E-DP1", "dpop1@example.com").await;

    // Learned once: DPoP is required, then the token endpoint's nonce.
    assert_eq!(
        token_errors(&world),
        [
            Some("invalid_dpop_proof".to_owned()),
            Some("use_dpop_nonce".to_owned()),
            None
        ]
    );
    let token = world.sim.issued_access_tokens().pop().expect("a token");
    assert!(
        world.sim.access_token_binding(&token).is_some(),
        "the token is DPoP-bound"
    );
    // The API's nonce is asked for once and then sent with every proof; every other
    // call (DPoP scheme, fresh proof, ath, htm, htu) passed.
    let log = world.sim.request_log();
    assert_eq!(refused(&log).len(), 1, "{:?}", refused(&log));
    assert_eq!(refused(&log)[0].0, 401);
    assert!(log.len() > 5, "{log:?}");
}

#[tokio::test]
async fn an_app_without_dpop_is_served_bearer_tokens_as_before() {
    let keys = test_key_pair(KeyKind::P256).expect("key pair");
    let mut world = World::start_with("dpop-off", options(&keys, false)).await;
    hire_and_remove(&mut world, "dpop-off", "E-DP2", "dpop2@example.com").await;
    assert_eq!(
        token_errors(&world),
        [None],
        "one token request, no proof needed"
    );
    let token = world.sim.issued_access_tokens().pop().expect("a token");
    assert_eq!(
        world.sim.access_token_binding(&token),
        None,
        "a Bearer token"
    );
    assert!(refused(&world.sim.request_log()).is_empty());
}

#[tokio::test]
async fn new_nonces_and_an_expired_token_are_handled_on_the_way() {
    let keys = test_key_pair(KeyKind::P256).expect("key pair");
    let mut world = World::start_with("dpop-renew", options(&keys, true)).await;
    hire_and_remove(&mut world, "dpop-renew-1", "E-DP3", "dpop3@example.com").await;
    let first_token = world.sim.issued_access_tokens().pop().expect("a token");
    let bound_to = world.sim.access_token_binding(&first_token).expect("bound");

    // Okta moved on twice: the nonces the service holds are now refused, and the token
    // died early (revoked): each is handled inside the first call that meets it.
    world.sim.rotate_dpop_nonces();
    world.sim.rotate_dpop_nonces();
    world.sim.expire_access_tokens();
    let before = world.sim.request_log().len();
    hire_and_remove(&mut world, "dpop-renew-2", "E-DP4", "dpop4@example.com").await;

    let second_token = world.sim.issued_access_tokens().pop().expect("a token");
    assert_ne!(first_token, second_token);
    assert_eq!(
        world.sim.access_token_binding(&second_token),
        Some(bound_to),
        "the same ephemeral key for the life of the process"
    );
    let errors = token_errors(&world);
    assert_eq!(
        errors[3..],
        [Some("use_dpop_nonce".to_owned()), None],
        "the renewal needed only the new token-endpoint nonce: {errors:?}"
    );
    let later: Vec<(u16, String)> = refused(&world.sim.request_log()[before..]);
    assert_eq!(
        later.iter().map(|(status, _)| *status).collect::<Vec<_>>(),
        [401, 401],
        "one 401 for the dead token, one for the API's new nonce: {later:?}"
    );
}
