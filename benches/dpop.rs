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
//! Both are given as wall time and as CPU time (`/proc`: the thread's for signing, the
//! process's — client and fake together — for the calls), because on a shared machine
//! wall time mostly measures the other processes.
//!
//! Nothing asserts: a benchmark measures. Rounds alternate DPoP on and off so that load
//! from other processes falls on both alike; the median round is reported.

use std::time::{Duration, Instant};

use iam_provisioner::config::secret::Secret;
use iam_provisioner::okta::auth::{OktaAuth, ServiceApp, SigningKey};
use iam_provisioner::okta::dpop::{access_token_hash, DpopKey};
use iam_provisioner::okta::{OktaClient, OktaClientSettings};
use iam_provisioner::okta_sim::{test_key_pair, KeyKind, OktaSim, SimConfig, SimOAuthClient};
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

/// CPU time (user + system) from a `/proc/…/stat` file, in seconds.
fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn signing() -> anyhow::Result<(f64, f64, f64, f64)> {
    let key = DpopKey::generate()?;
    let url = Url::parse("https://acme.okta.com/api/v1/users/00u1abcd/lifecycle/deactivate")?;
    let ath = access_token_hash("oat0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ");
    let mut es256 = Vec::new();
    let mut rs256 = Vec::new();
    let (mut es256_cpu, mut rs256_cpu) = (Vec::new(), Vec::new());
    let pair = test_key_pair(KeyKind::Rsa)?;
    let app = ServiceApp {
        client_id: CLIENT_ID.into(),
        key: SigningKey::from_pem(&Secret::new(pair.private_pem))?,
        key_id: None,
        scopes: vec![],
    };
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let cpu = cpu_seconds("/proc/thread-self/stat");
        for i in 0..PROOFS {
            let proof = key.proof(&Method::POST, &url, Some(&ath), Some("nonce"), u64::from(i))?;
            std::hint::black_box(proof);
        }
        es256.push(per_op(started.elapsed(), PROOFS));
        es256_cpu.push((cpu_seconds("/proc/thread-self/stat") - cpu) * 1e6 / f64::from(PROOFS));
        let n = PROOFS / 10;
        let started = Instant::now();
        let cpu = cpu_seconds("/proc/thread-self/stat");
        for i in 0..n {
            let jwt = app.client_assertion(&url, u64::from(i), i.to_string())?;
            std::hint::black_box(jwt);
        }
        rs256.push(per_op(started.elapsed(), n));
        rs256_cpu.push((cpu_seconds("/proc/thread-self/stat") - cpu) * 1e6 / f64::from(n));
    }
    Ok((
        median(es256),
        median(es256_cpu),
        median(rs256),
        median(rs256_cpu),
    ))
}

/// Calls per second (wall) and CPU µs per call (the whole process).
async fn calls_per_second(dpop: bool, round: usize) -> anyhow::Result<(f64, f64)> {
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
    let cpu = cpu_seconds("/proc/self/stat");
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
    let cpu_per_call = (cpu_seconds("/proc/self/stat") - cpu) * 1e6 / CALLS as f64;
    Ok((CALLS as f64 / elapsed.as_secs_f64(), cpu_per_call))
}

fn main() -> anyhow::Result<()> {
    let (es256, es256_cpu, rs256, rs256_cpu) = signing()?;
    println!("DPoP proof, ES256 (ephemeral P-256 key): {es256:.1} µs wall, {es256_cpu:.1} µs CPU per proof (median of {ROUNDS} × {PROOFS})");
    println!("RS256 JWT with a 2048-bit RSA key (the app's own key, for comparison): {rs256:.1} µs wall, {rs256_cpu:.1} µs CPU per JWT");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (mut with, mut without, mut with_cpu, mut without_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (rate, cpu) = runtime.block_on(calls_per_second(false, round))?;
        without.push(rate);
        without_cpu.push(cpu);
        let (rate, cpu) = runtime.block_on(calls_per_second(true, round))?;
        with.push(rate);
        with_cpu.push(cpu);
    }
    let (with, without) = (median(with), median(without));
    let (with_cpu, without_cpu) = (median(with_cpu), median(without_cpu));
    println!(
        "createUser through OktaClient → fake Okta, {IN_FLIGHT} in flight, {CALLS} calls, median of {ROUNDS}: \
         Bearer {without:.0} calls/s, DPoP {with:.0} calls/s ({:.1} % fewer; {:.1} µs more per call)",
        (1.0 - with / without) * 100.0,
        (1.0 / with - 1.0 / without) * 1e6
    );
    println!(
        "CPU per createUser call (client and fake Okta, one process): Bearer {without_cpu:.0} µs, DPoP {with_cpu:.0} µs"
    );
    Ok(())
}
