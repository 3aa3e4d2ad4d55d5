//! What DPoP costs per Okta request (issue 12): `cargo bench --bench dpop`.
//!
//! 1. Signing one proof with the service's ephemeral P-256 key (ES256), the work added
//!    to every API request; beside it, signing one RS256 JWT with a 2048-bit RSA key,
//!    what a proof would cost had the app's own (usually RSA) key been chosen.
//! 2. `createUser` calls per second through the real `OktaClient` against the fake Okta
//!    (no latency, 32 in flight), as a service app with and without DPoP: the whole
//!    per-request cost, client signing plus the fake's verification, on one machine.
//!    A hire is one `createUser` call, so this is the Okta side of events/s; the broker
//!    side is unchanged by DPoP (see the throughput benchmark).
//!
//! Nothing asserts: a benchmark measures. Rounds alternate DPoP on and off so that load
//! from other processes falls on both alike; the median round is reported.

use std::time::{Duration, Instant};

use iam_provisioner::okta::auth::{OktaAuth, ServiceApp, SigningKey};
use iam_provisioner::okta::dpop::{access_token_hash, DpopKey};
use iam_provisioner::okta::{OktaClient, OktaClientSettings};
use iam_provisioner::okta_sim::{test_key_pair, KeyKind, OktaSim, SimConfig, SimOAuthClient};
use iam_provisioner::secret::Secret;
use reqwest::{Method, Url};
use serde_json::json;

const PROOFS: u32 = 20_000;
const CALLS: usize = 3_000;
const ROUNDS: usize = 5;
const IN_FLIGHT: usize = 32;
const CLIENT_ID: &str = "0oaBENCH";

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn per_op(elapsed: Duration, n: u32) -> f64 {
    elapsed.as_secs_f64() * 1e6 / f64::from(n)
}

fn signing() -> anyhow::Result<(f64, f64)> {
    let key = DpopKey::generate()?;
    let url = Url::parse("https://acme.okta.com/api/v1/users/00u1abcd/lifecycle/deactivate")?;
    let ath = access_token_hash("oat0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ");
    let mut es256 = Vec::new();
    let mut rs256 = Vec::new();
    let pair = test_key_pair(KeyKind::Rsa)?;
    let app = ServiceApp {
        client_id: CLIENT_ID.into(),
        key: SigningKey::from_pem(&Secret::new(pair.private_pem))?,
        key_id: None,
        scopes: vec![],
    };
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for i in 0..PROOFS {
            let proof = key.proof(&Method::POST, &url, Some(&ath), Some("nonce"), u64::from(i))?;
            std::hint::black_box(proof);
        }
        es256.push(per_op(started.elapsed(), PROOFS));
        let n = PROOFS / 10;
        let started = Instant::now();
        for i in 0..n {
            let jwt = app.client_assertion(&url, u64::from(i), i.to_string())?;
            std::hint::black_box(jwt);
        }
        rs256.push(per_op(started.elapsed(), n));
    }
    Ok((median(es256), median(rs256)))
}

async fn calls_per_second(dpop: bool, round: usize) -> anyhow::Result<f64> {
    let pair = test_key_pair(KeyKind::P256)?;
    let sim = OktaSim::start(SimConfig {
        oauth_clients: vec![SimOAuthClient {
            client_id: CLIENT_ID.into(),
            public_key_pem: pair.public_pem.clone(),
            scopes: vec!["okta.users.manage".into()],
        }],
        oauth_dpop_required: dpop,
        ..SimConfig::default()
    })
    .await?;
    let auth = OktaAuth::ServiceApp(ServiceApp {
        client_id: CLIENT_ID.into(),
        key: SigningKey::from_pem(&Secret::new(pair.private_pem))?,
        key_id: None,
        scopes: vec!["okta.users.manage".into()],
    });
    let client = OktaClient::with_auth(
        Url::parse(&sim.base_url())?,
        &auth,
        OktaClientSettings {
            max_in_flight: IN_FLIGHT,
            ..OktaClientSettings::default()
        },
    )?;
    // The token (and, with DPoP, both nonces) before the clock starts.
    let warm = |i: usize| {
        let email = format!("warm{round}-{i}-{dpop}@example.com");
        json!({"login": email, "email": email, "firstName": "W", "lastName": "U"})
    };
    for i in 0..2 {
        let profile = warm(i);
        client
            .create_user(profile.as_object().expect("object"), &[], true)
            .await?;
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..IN_FLIGHT {
        let client = client.clone();
        let next = next.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= CALLS {
                    return Ok::<_, anyhow::Error>(());
                }
                let email = format!("u{round}-{i}-{dpop}@example.com");
                let profile =
                    json!({"login": email, "email": email, "firstName": "B", "lastName": "U"});
                client
                    .create_user(profile.as_object().expect("object"), &[], true)
                    .await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = started.elapsed();
    Ok(CALLS as f64 / elapsed.as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let (es256, rs256) = signing()?;
    println!("DPoP proof, ES256 (ephemeral P-256 key): {es256:.1} µs per proof (median of {ROUNDS} × {PROOFS})");
    println!("RS256 JWT with a 2048-bit RSA key (the app's own key, for comparison): {rs256:.1} µs per JWT");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut with = Vec::new();
    let mut without = Vec::new();
    for round in 0..ROUNDS {
        without.push(runtime.block_on(calls_per_second(false, round))?);
        with.push(runtime.block_on(calls_per_second(true, round))?);
    }
    let (with, without) = (median(with), median(without));
    println!(
        "createUser through OktaClient → fake Okta, {IN_FLIGHT} in flight, {CALLS} calls, median of {ROUNDS}: \
         Bearer {without:.0} calls/s, DPoP {with:.0} calls/s ({:.1} % fewer; {:.1} µs more per call)",
        (1.0 - with / without) * 100.0,
        (1.0 / with - 1.0 / without) * 1e6
    );
    Ok(())
}
