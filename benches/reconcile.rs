//! The reconciliation benchmark of issue 15: 100,000 Okta users against a
//! 100,000-line roster with 1 % drift, at 600 requests/min in every rate-limit bucket of
//! the fake.
//!
//! ```sh
//! cargo bench --bench reconcile              # 100,000 users
//! cargo bench --bench reconcile -- --quick   # 10,000 users, a smoke run
//! cargo bench --bench reconcile -- --users 50000
//! ```
//!
//! The fake Okta runs in this process and is seeded through its bulk seeding call (not
//! 100,000 HTTP requests); `iam-provisioner reconcile` runs as a child process (the
//! release binary), so the peak memory it reports (`VmHWM`) is its own. Its summary
//! event is sent to an exchange that does not exist (a warning on standard error), so
//! nothing is left on the broker. Okta calls are counted by the fake. Results go to `target/bench/reconcile.json`.
//!
//! Measurements, not assertions; the only failure is a wrong drift count.

use anyhow::{bail, Context, Result};
use iam_provisioner::okta_sim::{GroupType, OktaSim, RateLimit, SimConfig, UserStatus};
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_iam-provisioner");

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick") || std::env::var("BENCH_QUICK").is_ok();
    let users: usize = match args.iter().position(|a| a == "--users") {
        Some(at) => args
            .get(at + 1)
            .context("--users needs a number")?
            .parse()
            .context("--users")?,
        None if quick => 10_000,
        None => 100_000,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(bench(users))
}

/// The fake's limit per endpoint bucket and minute.
const RATE_PER_MINUTE: usize = 600;

/// Per kind of drift, one in this many employees (1 % in all: five kinds × 0.2 %).
const DRIFT_EVERY: usize = 500;

async fn bench(users: usize) -> Result<()> {
    let sim = OktaSim::start(SimConfig {
        // 600 requests per minute in every endpoint bucket (listUsers' workforce limit;
        // the group-members bucket is 1,000 in a real workforce org, 600 here).
        rate_limit: Some(RateLimit::uniform(
            RATE_PER_MINUTE as u32,
            Duration::from_secs(60),
        )),
        search_lag: Duration::ZERO,
        ..SimConfig::default()
    })
    .await?;
    let eng = sim.create_group("Engineering-Core", GroupType::OktaGroup);
    let github = sim.create_group("GitHub-Users", GroupType::OktaGroup);
    let sales = sim.create_group("Sales-App-Access", GroupType::OktaGroup);
    let mapping =
        json!({"Engineering": ["Engineering-Core", "GitHub-Users"], "Sales": "Sales-App-Access"});

    // Employee n: Engineering when even, Sales when odd. Drift, one kind per residue:
    // 0 orphan (Okta only), 1 missing (roster only), 2 disabled, 3 extra group,
    // 4 profile; the rest in step.
    let seeding = Instant::now();
    let dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(&dir)?;
    let roster_path = dir.join("reconcile-roster.jsonl");
    let mut roster = std::io::BufWriter::new(std::fs::File::create(&roster_path)?);
    let mut seeds = Vec::with_capacity(users);
    let mut expected = [0u64; 5];
    for n in 0..users {
        let id = format!("E-{n:06}");
        let email = format!("user{n:06}@example.com");
        let engineering = n % 2 == 0;
        let hr_group = if engineering { "Engineering" } else { "Sales" };
        let mut groups = if engineering {
            vec![eng.clone(), github.clone()]
        } else {
            vec![sales.clone()]
        };
        let drift = (n % DRIFT_EVERY < 5).then_some(n % DRIFT_EVERY);
        let mut last_name = "Lovelace";
        let mut status = UserStatus::Active;
        if let Some(kind) = drift {
            expected[kind] += 1;
            match kind {
                2 => status = UserStatus::Deprovisioned,
                3 => groups.push(if engineering {
                    sales.clone()
                } else {
                    eng.clone()
                }),
                4 => last_name = "Byron",
                _ => {}
            }
        }
        if drift != Some(0) {
            writeln!(
                roster,
                "{}",
                json!({"id": id, "email": email, "first_name": "Ada", "last_name": "Lovelace",
                       "groups": [hr_group], "title": "Engineer"})
            )?;
        }
        if drift != Some(1) {
            let profile = json!({"login": email, "email": email, "firstName": "Ada",
                                 "lastName": last_name, "employeeNumber": id, "title": "Engineer"});
            seeds.push((profile, status, groups));
        }
    }
    roster.flush()?;
    drop(roster);
    sim.seed_users(seeds);
    let seeded_in = seeding.elapsed();
    eprintln!(
        "seeded {} Okta users and a {}-line roster in {:.1}s",
        sim.users().len(),
        users - expected[0] as usize,
        seeded_in.as_secs_f64()
    );

    let started = Instant::now();
    let output = Command::new(BINARY)
        .args(["reconcile", "--json", "--roster"])
        .arg(&roster_path)
        .env_clear()
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
        .env("RESULTS_EXCHANGE", "bench-reconcile-undeclared")
        .env("OKTA_ORG_URL", sim.base_url())
        .env("OKTA_API_TOKEN", sim.api_token())
        .env("GROUP_MAPPING", mapping.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running reconcile")?;
    let elapsed = started.elapsed();
    let report: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "reconcile's report: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let counts = &report["counts"];
    for (kind, want) in ["orphan", "missing", "disabled", "groups", "profile"]
        .iter()
        .zip(expected)
    {
        if counts[kind].as_u64() != Some(want) {
            bail!("{kind}: found {}, expected {want}", counts[kind]);
        }
    }

    let log = sim.request_log();
    let list_users = log.iter().filter(|r| r.path == "/api/v1/users").count();
    let group_pages = log
        .iter()
        .filter(|r| r.path.starts_with("/api/v1/groups/") && r.path.ends_with("/users"))
        .count();
    let okta_calls = log.len();
    // What the rate limits allow. Okta's windows are fixed (about 60 s from the first
    // request of a bucket): a bucket's first 600 calls go at once, the next 600 after a
    // minute, and so on; the listing reads users, then groups, one after the other. The
    // sustained figure is the calls at 600/min with no free first window.
    let windows = |calls: usize| calls.saturating_sub(1) / RATE_PER_MINUTE;
    let bound_secs = ((windows(list_users) + windows(group_pages)) * 60) as f64;
    let sustained_secs = (list_users + group_pages) as f64 / RATE_PER_MINUTE as f64 * 60.0;
    let peak_rss = report["metrics"]["peak_rss_bytes"].as_u64().unwrap_or(0);
    let row = json!({
        "okta_users": sim.users().len(),
        "roster_lines": users - expected[0] as usize,
        "drift": counts,
        "exit_code": output.status.code(),
        "okta_calls": okta_calls,
        "list_users_calls": list_users,
        "group_member_pages": group_pages,
        "expected_list_users_calls": report["okta_users_in_scope"].as_u64().unwrap_or(0).div_ceil(200),
        "seconds": elapsed.as_secs_f64(),
        "rate_limit_bound_seconds": bound_secs,
        "sustained_rate_seconds": sustained_secs,
        "peak_rss_mib": peak_rss as f64 / 1_048_576.0,
        "metrics": report["metrics"],
    });
    println!(
        "\n| Okta users | roster lines | drift | Okta calls (listUsers + group pages + other) | time | rate-limit bound at 600/min per bucket (fixed windows / sustained) | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} ({} + {} + {}) | {:.1} s | {:.1} s / {:.1} s | {:.0} MiB |",
        row["okta_users"],
        row["roster_lines"],
        counts
            .as_object()
            .map(|c| c.values().filter_map(Value::as_u64).sum::<u64>())
            .unwrap_or(0),
        okta_calls,
        list_users,
        group_pages,
        okta_calls - list_users - group_pages,
        elapsed.as_secs_f64(),
        bound_secs,
        sustained_secs,
        row["peak_rss_mib"].as_f64().unwrap_or(0.0),
    );
    let out = dir.join("reconcile.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&row)?)?;
    eprintln!("written to {}", out.display());
    let _ = std::fs::remove_file(&roster_path);
    Ok(())
}
