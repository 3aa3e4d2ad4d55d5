//! Partitioned mode with several replicas on the real broker: replica processes (the
//! binary, as users run it) sharing one fake Okta. Per-employee order across replicas,
//! a replica killed mid-run, the missing-plugin error, and a model-based convergence
//! test. `throughput_of_one_two_and_three_replicas` is ignored: it measures, it does not
//! assert (`cargo test --release --test scale_out -- --ignored --nocapture`).

mod common;

use common::process::ServiceProcess;
use common::*;
use futures_util::StreamExt;
use iam_provisioner::amqp::topology::{self, TopologyError, TopologyNames};
use iam_provisioner::okta_sim::{Fault, FaultKind, OktaSim, SimConfig, UserStatus};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::PublisherConfirm;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

const MAPPING: &str =
    r#"{"Engineering": ["Engineering-Core", "GitHub-Users"], "Sales": "Sales-App-Access"}"#;
const OKTA_GROUPS: [&str; 3] = ["Engineering-Core", "GitHub-Users", "Sales-App-Access"];

/// Replica processes in partitioned mode around one fake Okta, with a test client that
/// publishes events and hears every outcome.
struct Cluster {
    names: TopologyNames,
    partitions: u16,
    sim: OktaSim,
    replicas: Vec<Option<ServiceProcess>>,
    env: Vec<(String, String)>,
    _conn: Connection,
    channel: Channel,
    outcomes: Consumer,
    /// Terminal outcomes heard so far, per source event id: how many, and the statuses.
    finals: HashMap<String, Vec<String>>,
    unconfirmed: Vec<PublisherConfirm>,
    // Dropped last: the processes are gone by then.
    _exchange_cleanup: PartitionsExchangeCleanup,
    _cleanup: BrokerCleanup,
}

impl Cluster {
    async fn start(test: &str, replicas: u16, partitions: u16, sim: SimConfig) -> Cluster {
        Self::start_with(test, replicas, partitions, sim, &[]).await
    }

    async fn start_with(
        test: &str,
        replicas: u16,
        partitions: u16,
        sim: SimConfig,
        extra_env: &[(&str, &str)],
    ) -> Cluster {
        let names = TopologyNames::prefixed(&unique_prefix(test));
        let cleanup = BrokerCleanup {
            names: names.clone(),
            extra_queues: (0..partitions).map(|p| names.partition_queue(p)).collect(),
        };
        let exchange_cleanup = PartitionsExchangeCleanup(names.partitions_exchange());
        let sim = OktaSim::start(sim).await.expect("fake Okta starts");
        for group in OKTA_GROUPS {
            sim.create_group(group, iam_provisioner::okta_sim::GroupType::OktaGroup);
        }
        let (conn, channel, outcomes) = observe(&names).await;
        let mut env: Vec<(String, String)> = [
            ("GROUP_MAPPING", MAPPING.to_owned()),
            ("PARTITIONS", partitions.to_string()),
            ("REPLICAS", replicas.to_string()),
            ("PARTITION_STANDBY_DELAY_MS", "1500".to_owned()),
            ("RETRY_BASE_DELAY_MS", "20".to_owned()),
            ("RETRY_MAX_DELAY_MS", "200".to_owned()),
            ("MAX_ATTEMPTS", "10".to_owned()),
            ("RUST_LOG", "info,lapin=warn".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra_env {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.to_string()));
        }
        let mut cluster = Cluster {
            names,
            partitions,
            sim,
            replicas: Vec::new(),
            env,
            _conn: conn,
            channel,
            outcomes,
            finals: HashMap::new(),
            unconfirmed: Vec::new(),
            _exchange_cleanup: exchange_cleanup,
            _cleanup: cleanup,
        };
        for index in 0..replicas {
            let process = cluster.spawn_replica(index);
            cluster.replicas.push(Some(process));
        }
        for replica in cluster.replicas.iter().flatten() {
            replica.wait_for_log("consuming partitions").await;
        }
        cluster
    }

    fn spawn_replica(&self, index: u16) -> ServiceProcess {
        let index = index.to_string();
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.push(("REPLICA_INDEX", &index));
        ServiceProcess::spawn(&self.names, &self.sim, &env)
    }

    /// Waits until every replica has subscribed to all partitions (its standby ones too).
    async fn wait_all_subscribed(&self) {
        for replica in self.replicas.iter().flatten() {
            replica.wait_for_log("subscribed as standby").await;
        }
    }

    /// Kills replica `index` at once (SIGKILL), as a crash would.
    fn kill(&mut self, index: usize) {
        if let Some(mut process) = self.replicas[index].take() {
            process.kill_hard();
        }
    }

    /// Starts replica `index` again.
    fn restart(&mut self, index: usize) {
        self.kill(index);
        let index_u16 = u16::try_from(index).expect("few replicas");
        self.replicas[index] = Some(self.spawn_replica(index_u16));
    }

    /// The replica that holds the intake lock now, by its log.
    fn intake_holder(&self) -> Option<usize> {
        self.replicas.iter().enumerate().find_map(|(i, r)| {
            r.as_ref()
                .filter(|p| p.log_text().contains("this replica is the intake"))
                .map(|_| i)
        })
    }

    /// Publishes an event as HR does, without waiting for the confirm (see [`flush`]),
    /// so that events arrive in bursts, as they do from a real HR system.
    async fn publish(&mut self, routing_key: &str, body: &Value) {
        let exchange = self.names.input_exchange.clone();
        self.publish_pipelined(&exchange, routing_key, body, event_properties(body))
            .await;
    }

    /// Publishes as `iam-provisioner replay` does: to the replay exchange, with
    /// `x-replay-count`.
    async fn publish_replay(&mut self, routing_key: &str, body: &Value) {
        let mut headers = FieldTable::default();
        headers.insert("x-replay-count".into(), AMQPValue::LongLongInt(1));
        let exchange = self.names.replay_exchange();
        let properties = event_properties(body).with_headers(headers);
        self.publish_pipelined(&exchange, routing_key, body, properties)
            .await;
    }

    async fn publish_pipelined(
        &mut self,
        exchange: &str,
        routing_key: &str,
        body: &Value,
        properties: BasicProperties,
    ) {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                properties,
            )
            .await
            .expect("publish");
        self.unconfirmed.push(confirm);
    }

    /// Waits for the broker's confirm of everything published.
    async fn flush(&mut self) {
        for confirm in self.unconfirmed.drain(..) {
            let confirmation = confirm.await.expect("confirm");
            assert!(confirmation.is_ack(), "broker confirmed the test's publish");
        }
    }

    /// Takes in every outcome already delivered to the test.
    async fn collect_outcomes(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.outcomes.next()).await;
            let Ok(Some(Ok(delivery))) = next else { return };
            let body: Value = serde_json::from_slice(&delivery.data).expect("outcome is JSON");
            let status = body["status"].as_str().unwrap_or_default().to_owned();
            if status == "retrying" {
                continue;
            }
            let id = body["source_event_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            self.finals.entry(id).or_default().push(status);
        }
    }

    /// Waits until every id in `event_ids` has a terminal outcome.
    async fn wait_finals(&mut self, event_ids: &[String], patience: Duration) {
        let deadline = Instant::now() + patience;
        loop {
            self.collect_outcomes(Duration::from_millis(200)).await;
            let missing: Vec<&String> = event_ids
                .iter()
                .filter(|id| !self.finals.contains_key(*id))
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} events have no final outcome, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
        }
    }

    /// Messages in the work queue and every partition, ready or unacknowledged.
    fn messages_in_flight(&self) -> u64 {
        let mut queues: Vec<String> = (0..self.partitions)
            .map(|p| self.names.partition_queue(p))
            .collect();
        queues.push(self.names.work_queue.clone());
        queue_message_counts()
            .into_iter()
            .filter(|(name, _)| queues.contains(name))
            .map(|(_, n)| n)
            .sum()
    }

    /// Which replica is the active consumer of each partition (from the consumer tags
    /// `iam-provisioner r<replica> p<partition>`), and how many each owns.
    fn ownership(&self) -> (BTreeMap<u16, String>, BTreeMap<String, usize>) {
        let owners = partition_owners(&self.names, self.partitions);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for owner in owners.values() {
            *counts.entry(owner.clone()).or_default() += 1;
        }
        (owners, counts)
    }
}

fn event_properties(body: &Value) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(body["event_id"].as_str().unwrap_or("no-id").into())
}

/// `rabbitmqctl list_queues`: messages ready plus unacknowledged, per queue.
fn queue_message_counts() -> Vec<(String, u64)> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut columns = line.split('\t');
            let name = columns.next()?.trim().to_owned();
            let ready: u64 = columns.next()?.trim().parse().ok()?;
            let unacked: u64 = columns.next()?.trim().parse().ok()?;
            Some((name, ready + unacked))
        })
        .collect()
}

/// The active consumer's replica per partition, read with `rabbitmqctl list_consumers`.
fn partition_owners(names: &TopologyNames, partitions: u16) -> BTreeMap<u16, String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_consumers",
            "-q",
            "--no-table-headers",
            "queue_name",
            "consumer_tag",
            "active",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let mut owners = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let columns: Vec<&str> = line.split('\t').map(str::trim).collect();
        let [queue, tag, active] = columns[..] else {
            continue;
        };
        if active != "true" {
            continue;
        }
        if let Some(p) = (0..partitions).find(|&p| names.partition_queue(p) == queue) {
            let replica = tag
                .strip_prefix("iam-provisioner ")
                .and_then(|t| t.split(' ').next())
                .unwrap_or(tag);
            owners.insert(p, replica.to_owned());
        }
    }
    owners
}

fn event_body(event_id: &str, employee: &str, email: &str, groups: &[&str]) -> Value {
    json!({
        "event_id": event_id,
        "occurred_at": now_rfc3339(),
        "employee": {
            "id": employee, "email": email, "first_name": "Ada", "last_name": "Lovelace",
            "groups": groups,
        }
    })
}

/// Publishes `employee.added` then `employee.removed` for `count` employees, each removal
/// right after the next employee's hire, so neighbours' events interleave. Returns the
/// event ids and the emails.
async fn publish_hires_and_removals(
    cluster: &mut Cluster,
    label: &str,
    count: usize,
    mut after_each: impl FnMut(usize),
) -> (Vec<String>, Vec<String>) {
    let mut ids = Vec::new();
    let mut emails = Vec::new();
    let employee = |i: usize| (format!("{label}-{i}"), format!("{label}.{i}@example.com"));
    for i in 0..=count {
        if i < count {
            let (id, email) = employee(i);
            let event = event_id("add");
            cluster
                .publish(
                    "employee.added",
                    &event_body(&event, &id, &email, &["Sales"]),
                )
                .await;
            ids.push(event);
            emails.push(email);
        }
        if i >= 1 {
            let (id, email) = employee(i - 1);
            let event = event_id("rm");
            cluster
                .publish("employee.removed", &leaver(&event, Some(&id), Some(&email)))
                .await;
            ids.push(event);
        }
        after_each(i);
    }
    cluster.flush().await;
    (ids, emails)
}

async fn assert_all_deprovisioned(cluster: &Cluster, emails: &[String]) {
    let sim = &cluster.sim;
    eventually("every employee DEPROVISIONED", || async {
        emails.iter().all(|email| {
            sim.user(email)
                .is_some_and(|u| u.status == UserStatus::Deprovisioned)
        })
    })
    .await;
    let not_deprovisioned: Vec<(&String, Option<UserStatus>)> = emails
        .iter()
        .map(|e| (e, cluster.sim.user(e).map(|u| u.status)))
        .filter(|(_, s)| *s != Some(UserStatus::Deprovisioned))
        .collect();
    assert!(not_deprovisioned.is_empty(), "{not_deprovisioned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hires_then_removals_of_100_employees_end_deprovisioned_across_three_replicas() {
    let mut cluster = Cluster::start("so-order", 3, 6, SimConfig::default()).await;
    cluster.wait_all_subscribed().await;
    let (owners, counts) = cluster.ownership();
    println!("partition owners with 3 replicas up: {owners:?}; partitions per replica: {counts:?}");
    assert_eq!(owners.len(), 6, "every partition has an active consumer");

    let (ids, emails) = publish_hires_and_removals(&mut cluster, "ORD", 100, |_| {}).await;
    cluster.wait_finals(&ids, Duration::from_secs(120)).await;
    assert_all_deprovisioned(&cluster, &emails).await;
    let failed: Vec<(&String, &Vec<String>)> = cluster
        .finals
        .iter()
        .filter(|(_, s)| s.iter().any(|s| s != "succeeded"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let dead = drain_queue(&cluster.channel, &cluster.names.dead_letter_queue).await;
    assert!(dead.is_empty(), "{} dead letters", dead.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_intake_replica_mid_run_loses_nothing_and_its_partitions_are_taken_over() {
    let sim = SimConfig {
        latency: Duration::from_millis(5),
        ..SimConfig::default()
    };
    let mut cluster = Cluster::start("so-kill", 3, 6, sim).await;
    cluster.wait_all_subscribed().await;
    let victim = cluster.intake_holder().expect("one replica is the intake");
    let (before, _) = cluster.ownership();
    println!("owners before the kill: {before:?}; killing replica {victim}");

    // Half the events, then the kill while they are being processed, then the rest.
    let (mut ids, mut emails) =
        publish_hires_and_removals(&mut cluster, "KILL-A", 50, |_| {}).await;
    cluster.collect_outcomes(Duration::from_millis(300)).await;
    cluster.kill(victim);
    let (more_ids, more_emails) =
        publish_hires_and_removals(&mut cluster, "KILL-B", 50, |_| {}).await;
    ids.extend(more_ids);
    emails.extend(more_emails);

    cluster.wait_finals(&ids, Duration::from_secs(120)).await;
    assert_all_deprovisioned(&cluster, &emails).await;
    let victim_tag = format!("r{victim}");
    let mut after = BTreeMap::new();
    eventually("every partition owned by a survivor", || {
        let owners = cluster.ownership().0;
        after = owners.clone();
        let taken_over = owners.len() == 6 && owners.values().all(|o| *o != victim_tag);
        async move { taken_over }
    })
    .await;
    println!("owners after the kill: {after:?}");
    let dead = drain_queue(&cluster.channel, &cluster.names.dead_letter_queue).await;
    assert!(dead.is_empty(), "{} dead letters", dead.len());
    eventually("nothing left in the work queue or partitions", || async {
        cluster.messages_in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn a_broker_without_the_consistent_hash_exchange_is_named_in_the_error() {
    let names = TopologyNames::prefixed(&unique_prefix("so-plugin"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    // The broker closes the whole connection for an unknown exchange type: its own one.
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("connects");
    let channel = conn.create_channel().await.expect("channel");
    let error = topology::declare_partitions_of_type(&channel, &names, 2, "x-no-such-type")
        .await
        .expect_err("an unknown exchange type is refused");
    assert!(
        matches!(error, TopologyError::PluginMissing { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("rabbitmq_consistent_hash_exchange") && message.contains("PARTITIONS"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------
// Convergence: random HR histories through 3 replicas, compared with a model.

/// What HR intends for one employee, as the contract defines the effect of each event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Intended {
    exists: bool,
    enabled: bool,
    /// Mapped Okta groups.
    groups: BTreeSet<String>,
}

#[derive(Debug, Clone)]
enum Op {
    Added(Vec<&'static str>),
    Updated(Vec<&'static str>),
    Removed,
}

fn okta_groups_of(hr_groups: &[&'static str]) -> BTreeSet<String> {
    let mut groups = BTreeSet::new();
    for g in hr_groups {
        match *g {
            "Engineering" => {
                groups.insert("Engineering-Core".to_owned());
                groups.insert("GitHub-Users".to_owned());
            }
            "Sales" => {
                groups.insert("Sales-App-Access".to_owned());
            }
            _ => {}
        }
    }
    groups
}

/// The model: applies an event as the contract says. A replay (old `occurred_at`, with
/// `x-replay-count`) of a hire or update is stale for any existing user: it changes
/// nothing. Removals always apply.
fn apply(state: &mut Intended, op: &Op, replay: bool) {
    match op {
        Op::Added(groups) => {
            if replay && state.exists {
                return;
            }
            state.exists = true;
            state.enabled = true;
            state.groups = okta_groups_of(groups);
        }
        Op::Updated(groups) => {
            if state.exists && !replay {
                let desired = okta_groups_of(groups);
                state.groups = if state.enabled {
                    desired
                } else {
                    // A default org adds no group to a deactivated user; stale ones
                    // still come off (the next rehire adds the rest).
                    state.groups.intersection(&desired).cloned().collect()
                };
            }
        }
        Op::Removed => {
            if state.exists {
                state.enabled = false;
            }
        }
    }
}

fn observed(sim: &OktaSim, email: &str) -> Intended {
    let Some(user) = sim.user(email) else {
        return Intended::default();
    };
    let mapped: BTreeSet<String> = OKTA_GROUPS.iter().map(|g| (*g).to_owned()).collect();
    Intended {
        exists: true,
        enabled: !matches!(
            user.status,
            UserStatus::Deprovisioned | UserStatus::Suspended
        ),
        groups: sim
            .user_group_names(&user.id)
            .into_iter()
            .filter(|g| mapped.contains(g))
            .collect(),
    }
}

struct Published {
    routing_key: &'static str,
    body: Value,
    op: Op,
}

/// Runs one random history; returns a description of the divergence, if any.
async fn run_sequence(cluster: &mut Cluster, seq: usize, seed: u64, run: &str) -> Option<String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    const EMPLOYEES: usize = 4;
    const STEPS: usize = 30;
    let hr_groups: [&[&'static str]; 4] = [
        &[],
        &["Sales"],
        &["Engineering"],
        &["Engineering", "Sales", "Interns"],
    ];
    let email = |e: usize| format!("c{seq}.e{e}.{run}@example.com");
    let employee = |e: usize| format!("C{seq}-{run}-E{e}");
    let mut model = vec![Intended::default(); EMPLOYEES];
    let mut history: Vec<Vec<Published>> = (0..EMPLOYEES).map(|_| Vec::new()).collect();
    let mut restarted = false;
    let mut script = Vec::new();
    for _ in 0..STEPS {
        let e = rng.usize(..EMPLOYEES);
        let roll = rng.u32(..100);
        match roll {
            0..=59 => {
                let (routing_key, op) = match rng.u32(..3) {
                    0 => (
                        "employee.added",
                        Op::Added(hr_groups[rng.usize(..4)].to_vec()),
                    ),
                    1 => (
                        "employee.updated",
                        Op::Updated(hr_groups[rng.usize(..4)].to_vec()),
                    ),
                    _ => ("employee.removed", Op::Removed),
                };
                let id = event_id(&format!("s{seq}"));
                let groups: &[&str] = match &op {
                    Op::Added(g) | Op::Updated(g) => g,
                    Op::Removed => &[],
                };
                let body = if matches!(op, Op::Removed) {
                    leaver(&id, Some(&employee(e)), Some(&email(e)))
                } else {
                    event_body(&id, &employee(e), &email(e), groups)
                };
                cluster.publish(routing_key, &body).await;
                apply(&mut model[e], &op, false);
                script.push(format!("{routing_key} e{e} {op:?}"));
                history[e].push(Published {
                    routing_key,
                    body,
                    op,
                });
            }
            60..=71 if !history[e].is_empty() => {
                // A duplicate: HR (or the broker) delivers an earlier event again.
                let old = &history[e][rng.usize(..history[e].len())];
                cluster.publish(old.routing_key, &old.body).await;
                apply(&mut model[e], &old.op, false);
                script.push(format!("duplicate {} e{e} {:?}", old.routing_key, old.op));
            }
            72..=83 if !history[e].is_empty() => {
                // An operator replays a long-failed event from the dead-letter queue.
                let old = &history[e][rng.usize(..history[e].len())];
                let mut body = old.body.clone();
                body["occurred_at"] = json!("2000-01-01T00:00:00Z");
                cluster.publish_replay(old.routing_key, &body).await;
                apply(&mut model[e], &old.op, true);
                script.push(format!("replay {} e{e} {:?}", old.routing_key, old.op));
            }
            84..=95 => {
                let kind = match rng.u32(..3) {
                    0 => FaultKind::Status {
                        status: 503,
                        error_code: "E0000009".into(),
                    },
                    1 => FaultKind::Status {
                        status: 500,
                        error_code: "E0000009".into(),
                    },
                    _ => FaultKind::CloseConnection,
                };
                let times = rng.u32(1..=2);
                script.push(format!("fault {kind:?} x{times}"));
                cluster.sim.inject_fault(Fault {
                    method: None,
                    path_contains: None,
                    times,
                    kind,
                });
            }
            96..=99 if !restarted => {
                let replica = rng.usize(..cluster.replicas.len());
                script.push(format!("kill -9 and restart replica {replica}"));
                cluster.restart(replica);
                restarted = true;
            }
            _ => {}
        }
    }

    cluster.flush().await;
    // Done when nothing is left to process and Okta says what the model says.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        cluster.collect_outcomes(Duration::from_millis(100)).await;
        let drained = cluster.messages_in_flight() == 0;
        let states: Vec<Intended> = (0..EMPLOYEES)
            .map(|e| observed(&cluster.sim, &email(e)))
            .collect();
        if drained && states == model {
            let dead = drain_queue(&cluster.channel, &cluster.names.dead_letter_queue).await;
            if dead.is_empty() {
                return None;
            }
            return Some(format!("{} dead letters; script: {script:#?}", dead.len()));
        }
        if Instant::now() > deadline {
            let dead = drain_queue(&cluster.channel, &cluster.names.dead_letter_queue).await;
            return Some(format!(
                "drained: {drained}, dead letters: {}\nmodel:    {model:?}\nobserved: {states:?}\nscript: {script:#?}",
                dead.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `CONVERGENCE_SEQUENCES` random histories (default 4; the longer job sets hundreds),
/// seeded by `CONVERGENCE_SEED` (default: random, printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_histories_through_three_replicas_converge_to_what_hr_intended() {
    let sequences: usize = std::env::var("CONVERGENCE_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("CONVERGENCE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!(
        "convergence: seed {seed}, {sequences} sequences (CONVERGENCE_SEED={seed} repeats them)"
    );
    let mut cluster = Cluster::start_with(
        "so-conv",
        3,
        6,
        SimConfig::default(),
        &[("PARTITION_STANDBY_DELAY_MS", "500")],
    )
    .await;
    cluster.wait_all_subscribed().await;
    let run = format!("{:06x}", fastrand::u32(..0xff_ffff));
    let mut diverged = Vec::new();
    for seq in 0..sequences {
        let sequence_seed = seed.wrapping_add(seq as u64);
        if let Some(problem) = run_sequence(&mut cluster, seq, sequence_seed, &run).await {
            println!("sequence {seq} (seed {sequence_seed}) diverged: {problem}");
            diverged.push(sequence_seed);
        }
    }
    println!(
        "convergence: {sequences} sequences run, {} diverged (seed {seed})",
        diverged.len()
    );
    assert!(
        diverged.is_empty(),
        "diverged sequences, by seed: {diverged:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Throughput: a measurement, not a test of timings.

/// Publishes `BENCH_EVENTS` hires (default 2000) into the work queue, starts 1, 2 and then
/// 3 replicas on them, and prints the steady rate (from the 10th to the 90th percentile of
/// completions). `BENCH_OKTA_LATENCY_MS` adds latency to every fake Okta answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn throughput_of_one_two_and_three_replicas() {
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let latency_ms: u64 = std::env::var("BENCH_OKTA_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let partitions: u16 = std::env::var("BENCH_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    for replicas in 1..=3u16 {
        let sim = SimConfig {
            latency: Duration::from_millis(latency_ms),
            ..SimConfig::default()
        };
        let mut cluster = Cluster::start("so-bench", 0, partitions, sim).await;
        let mut ids = Vec::with_capacity(events);
        for i in 0..events {
            let id = event_id("bench");
            let body = event_body(
                &id,
                &format!("B-{i}"),
                &format!("bench.{i}@example.com"),
                &["Sales"],
            );
            cluster.publish("employee.added", &body).await;
            ids.push(id);
        }
        cluster.flush().await;
        let started = Instant::now();
        for index in 0..replicas {
            let process = {
                let index = index.to_string();
                let replicas = replicas.to_string();
                let mut env: Vec<(&str, &str)> = cluster
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .filter(|(k, _)| *k != "REPLICAS")
                    .collect();
                env.push(("REPLICA_INDEX", &index));
                env.push(("REPLICAS", &replicas));
                env.push(("RUST_LOG", "warn"));
                ServiceProcess::spawn(&cluster.names, &cluster.sim, &env)
            };
            cluster.replicas.push(Some(process));
        }
        let mut done_at: Vec<Duration> = Vec::with_capacity(events);
        let deadline = Instant::now() + Duration::from_secs(600);
        while done_at.len() < events && Instant::now() < deadline {
            let before = cluster.finals.len();
            cluster.collect_outcomes(Duration::from_millis(50)).await;
            let now = started.elapsed();
            done_at.extend(std::iter::repeat_n(now, cluster.finals.len() - before));
        }
        assert_eq!(done_at.len(), events, "every hire finished");
        let p10 = done_at[events / 10];
        let p90 = done_at[events * 9 / 10];
        let rate = (events * 8 / 10) as f64 / (p90 - p10).as_secs_f64().max(0.001);
        println!(
            "throughput: {replicas} replica(s), {partitions} partitions, Okta latency {latency_ms} ms: \
             {rate:.0} events/s steady (all {events} in {:.1} s)",
            done_at[events - 1].as_secs_f64()
        );
    }
}
