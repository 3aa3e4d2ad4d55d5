//! The measurements of issue 7, one function each. Every scenario declares its own
//! prefixed topology, binds its outcome counter before anything is processed, and
//! leaves nothing behind (the topology and the service process are removed on drop).

use crate::broker::{self, OutcomeCounter, Tally, Topology};
use crate::procfs::{self, CpuMeter, CpuShare};
use crate::service::{ServiceProcess, GROUPS};
use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use iam_provisioner::okta_sim::{
    OktaSim, RateLimit, RequestRecord, SimBucket, SimConfig, UserStatus,
};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The service's default `CONCURRENCY` (and prefetch); the broker ceiling uses it too.
pub const DEFAULT_CONCURRENCY: u16 = 32;
/// Okta's concurrency limit for workforce orgs; the fake enforces it in every scenario.
const OKTA_CONCURRENCY_LIMIT: usize = 75;
/// How long the service may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What the scenarios share: the harness's broker connection and where logs go.
pub struct Bench {
    pub conn: Connection,
    pub log_dir: PathBuf,
}

/// Finished events per second and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub events: u64,
    /// (events − 1) / seconds between the first and the last finished event.
    pub events_per_sec: f64,
    pub span_secs: f64,
    pub failed: u64,
    pub retrying: u64,
    /// Cores used while the events were processed.
    pub cpu_cores: CpuShare,
}

impl Throughput {
    fn from_tally(tally: &Tally, cpu: CpuShare) -> Result<Self> {
        Ok(Self {
            events: tally.terminal,
            events_per_sec: tally.rate().context("fewer than two events finished")?,
            span_secs: tally.span_seconds().unwrap_or_default(),
            failed: tally.failed(),
            retrying: tally.retrying(),
            cpu_cores: cpu,
        })
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A unique tag for the events of one scenario, so event ids never repeat across runs.
fn run_tag() -> String {
    format!("{:08x}", fastrand::u32(..))
}

/// An `employee.added` in Engineering and Sales: three mapped Okta groups.
fn hire(tag: &str, n: usize) -> (&'static str, String, String) {
    let event_id = format!("bench-{tag}-hire-{n}");
    let body = json!({
        "event_id": event_id,
        "occurred_at": now_rfc3339(),
        "employee": {
            "id": format!("B-{tag}-{n}"),
            "email": format!("h{n}.{tag}@bench.example.com"),
            "first_name": "Ada",
            "last_name": "Lovelace",
            "groups": ["Engineering", "Sales"],
            "department": "R&D",
            "title": "Engineer",
            "manager_email": "grace@bench.example.com",
        }
    });
    ("employee.added", event_id, body.to_string())
}

/// An `employee.removed`; either identifier may be left out.
fn removal(
    tag: &str,
    label: &str,
    id: Option<&str>,
    email: Option<&str>,
) -> (&'static str, String, String) {
    let event_id = format!("bench-{tag}-leaver-{label}");
    let mut employee = serde_json::Map::new();
    if let Some(id) = id {
        employee.insert("id".into(), json!(id));
    }
    if let Some(email) = email {
        employee.insert("email".into(), json!(email));
    }
    let body = json!({"event_id": event_id, "occurred_at": now_rfc3339(), "employee": employee});
    ("employee.removed", event_id, body.to_string())
}

async fn fake_okta(latency: Duration, rate_limit: Option<RateLimit>) -> Result<OktaSim> {
    OktaSim::start(SimConfig {
        latency,
        rate_limit,
        concurrency_limit: Some(OKTA_CONCURRENCY_LIMIT),
        groups: GROUPS.iter().map(|g| (*g).to_owned()).collect(),
        ..SimConfig::default()
    })
    .await
    .context("starting the fake Okta")
}

/// Generous time for `events` at no less than `floor_per_sec`, plus start-up.
fn deadline_for(events: usize, floor_per_sec: f64) -> Duration {
    Duration::from_secs_f64(events as f64 / floor_per_sec + 60.0)
}

/// The parts every service scenario starts with: a topology, the counter, the backlog.
struct Stage {
    topology: Topology,
    outcomes: OutcomeCounter,
    publisher: lapin::Channel,
    tag: String,
}

impl Stage {
    async fn new(bench: &Bench, scenario: &str) -> Result<Self> {
        let publisher = broker::confirm_channel(&bench.conn).await?;
        let topology = Topology::declare(&publisher, scenario).await?;
        let outcomes = OutcomeCounter::start(&bench.conn, &topology.names).await?;
        Ok(Self {
            topology,
            outcomes,
            publisher,
            tag: run_tag(),
        })
    }

    async fn publish(
        &self,
        events: impl IntoIterator<Item = (&'static str, String, String)>,
    ) -> Result<usize> {
        broker::publish_all(&self.publisher, &self.topology.names.input_exchange, events).await
    }

    fn spawn_service(
        &self,
        bench: &Bench,
        sim: &OktaSim,
        scenario: &str,
        extra: &[(&str, String)],
    ) -> Result<ServiceProcess> {
        ServiceProcess::spawn(
            &self.topology.names,
            sim,
            extra,
            &bench.log_dir.join(format!("{scenario}.log")),
        )
    }
}

/// (1) The broker path alone: consume with the service's prefetch, publish one outcome
/// with a confirm, acknowledge — the service's per-message broker work, without parsing,
/// Okta or logging.
pub async fn broker_ceiling(bench: &Bench, events: usize, concurrency: u16) -> Result<Throughput> {
    let stage = Stage::new(bench, "ceiling").await?;
    let tag = stage.tag.clone();
    stage.publish((0..events).map(|n| hire(&tag, n))).await?;

    // Like the service: its own connection, one channel consuming, one publishing.
    let conn = broker::connect("ceiling loop").await?;
    let consuming = conn.create_channel().await?;
    consuming
        .basic_qos(concurrency, BasicQosOptions::default())
        .await?;
    let publishing = broker::confirm_channel(&conn).await?;
    let mut consumer = consuming
        .basic_consume(
            stage.topology.names.work_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let results = stage.topology.names.results_exchange.clone();
    let meter = CpuMeter::start(None);
    let raw_loop = tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let publishing = publishing.clone();
            let results = results.clone();
            tokio::spawn(async move {
                let event_id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_default();
                // An outcome of the size and shape the service publishes.
                let body = json!({
                    "source_event_id": event_id,
                    "event_type": "employee.added",
                    "status": "succeeded",
                    "employee_id": "B-00000000-0",
                    "email": "h0.00000000@bench.example.com",
                    "okta_user_id": "00u0123456789abcdefg",
                    "actions": ["user.created", "group.assigned:Engineering-Core", "group.assigned:GitHub-Users", "group.assigned:Sales-App-Access"],
                    "unmapped_groups": [],
                    "attempt": 1,
                    "error": null,
                    "completed_at": now_rfc3339(),
                })
                .to_string();
                let properties = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_correlation_id(event_id.into());
                let confirmed = match publishing
                    .basic_publish(
                        results.as_str().into(),
                        "employee.added.succeeded".into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        properties,
                    )
                    .await
                {
                    Ok(confirm) => confirm.await.map(|c| c.is_ack()).unwrap_or(false),
                    Err(_) => false,
                };
                if confirmed {
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                }
            });
        }
    });
    let finished = stage
        .outcomes
        .wait_terminal(events as u64, deadline_for(events, 50.0))
        .await;
    let cpu = meter.stop();
    raw_loop.abort();
    let _ = conn.close(200, "done".into()).await;
    Throughput::from_tally(&finished?, cpu)
}

/// (2), (5) and (7): the service with a 0 ms fake Okta.
#[derive(Debug, Clone, Serialize)]
pub struct FastOkta {
    pub throughput: Throughput,
    /// Every Okta request of the run, by operation (the `listGroups` are the start-up
    /// warm-up of the group cache).
    pub requests_by_operation: BTreeMap<String, u64>,
    /// Okta requests per hire, the warm-up excluded.
    pub calls_per_hire: f64,
    /// The operations a leaver identified by email (and id) cost, in order.
    pub leaver_by_email_calls: Vec<String>,
    /// The operations a leaver identified by employee id only cost, in order.
    pub leaver_by_id_calls: Vec<String>,
    /// `VmHWM` at the end of the run: the highest resident size, start-up included.
    pub peak_rss_mib: f64,
    pub idle: Idle,
}

/// The service with nothing to do.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub rss_mib: f64,
    pub cpu_percent_of_one_core: f64,
    pub measured_secs: f64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn by_operation(log: &[RequestRecord]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for record in log {
        *counts.entry(record.operation.to_owned()).or_default() += 1;
    }
    counts
}

/// (2), (5), (7): `hires` preloaded, then the service started against a fake that answers
/// at once; afterwards two leavers (for their Okta call counts) and an idle period.
pub async fn fast_okta(bench: &Bench, hires: usize, idle_for: Duration) -> Result<FastOkta> {
    let stage = Stage::new(bench, "fast").await?;
    let tag = stage.tag.clone();
    let sim = fake_okta(Duration::ZERO, None).await?;
    stage.publish((0..hires).map(|n| hire(&tag, n))).await?;

    let service = stage.spawn_service(bench, &sim, "fast-okta", &[])?;
    let pid = service.pid();
    let meter = CpuMeter::start(Some(pid));
    let tally = stage
        .outcomes
        .wait_terminal(hires as u64, deadline_for(hires, 50.0))
        .await?;
    let cpu = meter.stop();
    let busy = procfs::memory(pid)?;
    let throughput = Throughput::from_tally(&tally, cpu)?;

    let requests = by_operation(&sim.request_log());
    let warm_up = requests.get("listGroups").copied().unwrap_or_default();
    let total: u64 = requests.values().sum();
    let calls_per_hire = (total - warm_up) as f64 / hires as f64;

    // (5): one leaver known by email (HR sends both), one known by employee id only.
    let mut leaver_calls = Vec::new();
    for (label, id, email) in [
        (
            "by-email",
            Some(format!("B-{tag}-0")),
            Some(format!("h0.{tag}@bench.example.com")),
        ),
        ("by-id", Some(format!("B-{tag}-1")), None),
    ] {
        sim.clear_request_log();
        stage.outcomes.reset();
        stage
            .publish([removal(&tag, label, id.as_deref(), email.as_deref())])
            .await?;
        let done = stage
            .outcomes
            .wait_terminal(1, Duration::from_secs(30))
            .await?;
        if done.failed() > 0 {
            bail!("the {label} leaver failed: {:?}", done.by_key);
        }
        leaver_calls.push(
            sim.request_log()
                .iter()
                .map(|r| format!("{} {}", r.operation, r.status))
                .collect::<Vec<_>>(),
        );
    }
    let leaver_by_id_calls = leaver_calls.pop().unwrap_or_default();
    let leaver_by_email_calls = leaver_calls.pop().unwrap_or_default();

    // (7): let the last work settle, then watch it do nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_meter = CpuMeter::start(Some(pid));
    tokio::time::sleep(idle_for).await;
    let idle_cpu = idle_meter.stop();
    let idle_memory = procfs::memory(pid)?;
    let status = service.stop().await?;
    if !status.success() {
        bail!("the service exited with {status} after SIGTERM");
    }
    Ok(FastOkta {
        throughput,
        requests_by_operation: requests,
        calls_per_hire,
        leaver_by_email_calls,
        leaver_by_id_calls,
        peak_rss_mib: mib(busy.peak_kib),
        idle: Idle {
            rss_mib: mib(idle_memory.rss_kib),
            cpu_percent_of_one_core: idle_cpu.service.unwrap_or_default() * 100.0,
            measured_secs: idle_for.as_secs_f64(),
        },
    })
}

/// (3): a fake Okta that takes `latency` per request.
#[derive(Debug, Clone, Serialize)]
pub struct SlowOkta {
    pub concurrency: u16,
    /// `OKTA_MAX_IN_FLIGHT`; `None` is the service's default (32).
    pub okta_max_in_flight: Option<u16>,
    pub latency_ms: u64,
    pub throughput: Throughput,
    pub calls_per_event: f64,
    /// CONCURRENCY / (Okta calls per event × latency).
    pub bound_events_per_sec: f64,
    pub fraction_of_bound: f64,
}

/// (3): `hires` against a fake Okta with `latency`, with the given concurrency settings.
pub async fn slow_okta(
    bench: &Bench,
    hires: usize,
    latency: Duration,
    concurrency: u16,
    okta_max_in_flight: Option<u16>,
    calls_per_event: f64,
) -> Result<SlowOkta> {
    let stage = Stage::new(bench, "slow").await?;
    let tag = stage.tag.clone();
    let sim = fake_okta(latency, None).await?;
    stage.publish((0..hires).map(|n| hire(&tag, n))).await?;
    let mut env = vec![("CONCURRENCY", concurrency.to_string())];
    if let Some(max) = okta_max_in_flight {
        env.push(("OKTA_MAX_IN_FLIGHT", max.to_string()));
    }
    let label = match okta_max_in_flight {
        Some(max) => format!("slow-okta-c{concurrency}-inflight{max}"),
        None => format!("slow-okta-c{concurrency}-inflight-default"),
    };
    let service = stage.spawn_service(bench, &sim, &label, &env)?;
    let meter = CpuMeter::start(Some(service.pid()));
    let tally = stage
        .outcomes
        .wait_terminal(hires as u64, deadline_for(hires, 20.0))
        .await?;
    let throughput = Throughput::from_tally(&tally, meter.stop())?;
    service.stop().await?;
    let bound = f64::from(concurrency) / (calls_per_event * latency.as_secs_f64());
    Ok(SlowOkta {
        concurrency,
        okta_max_in_flight,
        latency_ms: latency.as_millis() as u64,
        fraction_of_bound: throughput.events_per_sec / bound,
        throughput,
        calls_per_event,
        bound_events_per_sec: bound,
    })
}

/// (4): a rate-limited fake Okta.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimited {
    pub limit_per_window: u32,
    pub window_secs: f64,
    /// Full windows the backlog needs: it holds `windows × limit + 1` hires, so the last
    /// hire finishes at the start of window `windows + 1`.
    pub windows: u32,
    pub hires: usize,
    pub limit_per_min: f64,
    /// Hires (one `createUser` each) finished per minute, first to last.
    pub achieved_per_min: f64,
    pub fraction_of_limit: f64,
    pub calls: u64,
    pub rate_limited_429s: u64,
    pub per_1000_calls: f64,
    pub throughput: Throughput,
}

/// (4): `windows × limit + 1` hires against a fake that allows `limit` requests per
/// `window` in each endpoint bucket.
pub async fn rate_limited(
    bench: &Bench,
    limit: u32,
    window: Duration,
    windows: u32,
) -> Result<RateLimited> {
    let stage = Stage::new(bench, "ratelimit").await?;
    let tag = stage.tag.clone();
    let sim = fake_okta(Duration::ZERO, Some(RateLimit::uniform(limit, window))).await?;
    let hires = (windows * limit + 1) as usize;
    stage.publish((0..hires).map(|n| hire(&tag, n))).await?;
    let service = stage.spawn_service(bench, &sim, "rate-limited", &[])?;
    let meter = CpuMeter::start(Some(service.pid()));
    let timeout = window * (windows + 1) + Duration::from_secs(30 * u64::from(windows) + 60);
    let tally = stage.outcomes.wait_terminal(hires as u64, timeout).await?;
    let throughput = Throughput::from_tally(&tally, meter.stop())?;
    service.stop().await?;
    let calls = sim.request_log().len() as u64;
    let rate_limited_429s = sim.rate_limited_count();
    let limit_per_min = f64::from(limit) * 60.0 / window.as_secs_f64();
    let achieved_per_min = throughput.events_per_sec * 60.0;
    Ok(RateLimited {
        limit_per_window: limit,
        window_secs: window.as_secs_f64(),
        windows,
        hires,
        limit_per_min,
        achieved_per_min,
        fraction_of_limit: achieved_per_min / limit_per_min,
        calls,
        rate_limited_429s,
        per_1000_calls: rate_limited_429s as f64 * 1000.0 / calls.max(1) as f64,
        throughput,
    })
}

/// (6): how long a leaver waits behind a backlog of hires.
#[derive(Debug, Clone, Serialize)]
pub struct LeaverLatency {
    pub backlog: usize,
    pub latency_ms_of_fake: u64,
    pub trials: usize,
    /// Publish of the removal → the fake Okta has the user `DEPROVISIONED`, per trial.
    pub latencies_ms: Vec<f64>,
    /// Hires still waiting in the queue (not yet delivered) when the removal was published.
    pub hires_ready_ahead: Vec<u32>,
    /// Publish of the removal → the last event of the trial finished: what the removal
    /// would have waited in the work queue alone, behind the backlog.
    pub backlog_drained_ms: Vec<f64>,
    pub backlog_drained_p50_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// (6): per trial, `backlog` hires then one removal of an active user; the time from
/// publishing the removal until the fake Okta has deactivated the user.
pub async fn leaver_latency(
    bench: &Bench,
    backlog: usize,
    trials: usize,
    latency: Duration,
) -> Result<LeaverLatency> {
    let stage = Stage::new(bench, "leaver").await?;
    let tag = stage.tag.clone();
    let sim = fake_okta(latency, None).await?;
    let mut service = stage.spawn_service(bench, &sim, "leaver-latency", &[])?;
    service.wait_until_consuming(START_TIMEOUT).await?;
    let mut latencies = Vec::with_capacity(trials);
    let mut ready_ahead = Vec::with_capacity(trials);
    let mut drained = Vec::with_capacity(trials);
    for trial in 0..trials {
        let leaver_email = format!("leaver{trial}.{tag}@bench.example.com");
        let leaver_id = format!("L-{tag}-{trial}");
        let user_id = sim.create_user(
            json!({"login": leaver_email, "email": leaver_email, "firstName": "Grace",
                   "lastName": "Hopper", "employeeNumber": leaver_id}),
            UserStatus::Active,
        );
        stage.outcomes.reset();
        let first = trial * backlog;
        stage
            .publish((first..first + backlog).map(|n| hire(&tag, n)))
            .await?;
        ready_ahead
            .push(broker::ready_messages(&bench.conn, &stage.topology.names.work_queue).await?);
        let published = Instant::now();
        stage
            .publish([removal(
                &tag,
                &trial.to_string(),
                Some(&leaver_id),
                Some(&leaver_email),
            )])
            .await?;
        let deadline = published + deadline_for(backlog, 20.0);
        loop {
            if sim
                .user(&user_id)
                .is_some_and(|u| u.status == UserStatus::Deprovisioned)
            {
                latencies.push(published.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() >= deadline {
                bail!("trial {trial}: the leaver was not deactivated in time");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The next trial starts with an empty queue.
        let done = stage
            .outcomes
            .wait_terminal(backlog as u64 + 1, deadline_for(backlog, 20.0))
            .await?;
        if done.failed() > 0 {
            bail!("trial {trial}: {} events failed", done.failed());
        }
        if let Some(last) = done.last_terminal {
            drained.push(last.saturating_duration_since(published).as_secs_f64() * 1000.0);
        }
    }
    service.stop().await?;
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let mut sorted_drained = drained.clone();
    sorted_drained.sort_by(f64::total_cmp);
    Ok(LeaverLatency {
        backlog,
        latency_ms_of_fake: latency.as_millis() as u64,
        trials,
        p50_ms: percentile(&sorted, 50.0),
        p99_ms: percentile(&sorted, 99.0),
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        latencies_ms: latencies,
        hires_ready_ahead: ready_ahead,
        backlog_drained_p50_ms: percentile(&sorted_drained, 50.0),
        backlog_drained_ms: drained,
    })
}

/// (6b): how long a leaver waits while a backlog of hires keeps Okta's createUser
/// bucket at 0 (issue 12). The leaver's calls (`getUser`, `revokeUserSessions`,
/// `deactivateUser`) are in other buckets, so it should not wait for the window.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimitedLeaver {
    pub backlog: usize,
    pub limit_per_window: u32,
    pub window_secs: u64,
    pub latency_ms_of_fake: u64,
    pub trials: usize,
    /// Publish of the removal → the fake Okta has the user `DEPROVISIONED`, per trial.
    pub latencies_ms: Vec<f64>,
    /// Trials whose removal was published, and whose user was deactivated, while the
    /// fake reported the createUser bucket at 0 in one and the same window.
    pub trials_within_an_empty_window: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// 429s the fake answered during the scenario.
    pub rate_limited_429s: u64,
}

/// (6b): `backlog` hires against `limit` requests per `window` per bucket; once the
/// createUser bucket is at 0, `trials` removals one after the other.
pub async fn leaver_behind_rate_limit(
    bench: &Bench,
    backlog: usize,
    trials: usize,
    limit: u32,
    window: Duration,
    latency: Duration,
) -> Result<RateLimitedLeaver> {
    let stage = Stage::new(bench, "leaverrl").await?;
    let tag = stage.tag.clone();
    let sim = fake_okta(latency, Some(RateLimit::uniform(limit, window))).await?;
    stage.publish((0..backlog).map(|n| hire(&tag, n))).await?;
    let mut service = stage.spawn_service(bench, &sim, "leaver-ratelimit", &[])?;
    service.wait_until_consuming(START_TIMEOUT).await?;
    let deadline = Instant::now() + window + START_TIMEOUT;
    while sim.bucket(SimBucket::Users).is_none_or(|w| w.remaining > 0) {
        if Instant::now() >= deadline {
            bail!("the createUser bucket never reached 0");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let empty_window = |sim: &OktaSim| {
        sim.bucket(SimBucket::Users)
            .filter(|w| w.remaining == 0)
            .map(|w| w.reset_epoch)
    };
    let mut latencies = Vec::with_capacity(trials);
    let mut within = 0;
    for trial in 0..trials {
        let leaver_email = format!("rl-leaver{trial}.{tag}@bench.example.com");
        let leaver_id = format!("RL-{tag}-{trial}");
        let user_id = sim.create_user(
            json!({"login": leaver_email, "email": leaver_email, "firstName": "Grace",
                   "lastName": "Hopper", "employeeNumber": leaver_id}),
            UserStatus::Active,
        );
        let window_at_publish = empty_window(&sim);
        let published = Instant::now();
        stage
            .publish([removal(
                &tag,
                &format!("rl{trial}"),
                Some(&leaver_id),
                Some(&leaver_email),
            )])
            .await?;
        let deadline = published + window + Duration::from_secs(30);
        loop {
            if sim
                .user(&user_id)
                .is_some_and(|u| u.status == UserStatus::Deprovisioned)
            {
                latencies.push(published.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() >= deadline {
                bail!("trial {trial}: the leaver was not deactivated in time");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if window_at_publish.is_some() && window_at_publish == empty_window(&sim) {
            within += 1;
        }
    }
    // The rest of the backlog would take minutes at the limit: it is not waited for.
    service.stop().await?;
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(RateLimitedLeaver {
        backlog,
        limit_per_window: limit,
        window_secs: window.as_secs(),
        latency_ms_of_fake: latency.as_millis() as u64,
        trials,
        p50_ms: percentile(&sorted, 50.0),
        p99_ms: percentile(&sorted, 99.0),
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        latencies_ms: latencies,
        trials_within_an_empty_window: within,
        rate_limited_429s: sim.rate_limited_count(),
    })
}
