//! The test world: a real RabbitMQ (names unique to the test), a fake Okta on port 0,
//! and the service built as users run it. Everything a test creates is removed when
//! its `World` is dropped, even when the test fails.

#![allow(dead_code)]

pub mod policy;
pub mod process;

use futures_util::StreamExt;
use iam_provisioner::amqp::parking::ParkingNames;
use iam_provisioner::amqp::topology::{self, QueueType, TopologyNames};
use iam_provisioner::app::{Application, OktaEndpoint};
use iam_provisioner::config::secret::Secret;
use iam_provisioner::config::{OktaTarget, Settings};
use iam_provisioner::domain::mapping::GroupMapping;
use iam_provisioner::okta_sim::{OktaSim, SimConfig};
use lapin::message::BasicGetMessage;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// How long a test waits for something the service should do within seconds.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// How long a helper that waits for several outcomes may wait in all: a retry loop that
/// never ends (a regression) fails the test here instead of hanging the suite while other
/// events' outcomes keep arriving one by one within `PATIENCE`.
pub const OVERALL_PATIENCE: Duration = Duration::from_secs(180);

/// A unique prefix for one test's broker objects.
pub fn unique_prefix(test: &str) -> String {
    format!("test-{test}-{:08x}.", fastrand::u32(..))
}

/// What a test may change about the service it runs.
#[derive(Clone)]
pub struct Options {
    pub mapping: Value,
    /// Okta groups to create in the fake before the service starts.
    pub okta_groups: Vec<&'static str>,
    pub env: Vec<(&'static str, String)>,
    pub sim: SimConfig,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mapping: json!({
                "Engineering": ["Engineering-Core", "GitHub-Users"],
                "Sales": "Sales-App-Access",
            }),
            okta_groups: vec!["Engineering-Core", "GitHub-Users", "Sales-App-Access"],
            env: vec![],
            sim: SimConfig::default(),
        }
    }
}

/// Deletes a test's broker objects when dropped.
pub struct BrokerCleanup {
    pub names: TopologyNames,
    pub extra_queues: Vec<String>,
}

/// Deletes a partitioned test's consistent-hash exchange when dropped: it is not among
/// the objects `BrokerCleanup` knows, and deleting a missing exchange would close that
/// cleanup's channel.
pub struct PartitionsExchangeCleanup(pub String);

impl Drop for PartitionsExchangeCleanup {
    fn drop(&mut self) {
        let exchange = self.0.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(conn) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await
                else {
                    return;
                };
                if let Ok(channel) = conn.create_channel().await {
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
                let _ = conn.close(200, "test cleanup".into()).await;
            });
        })
        .join();
    }
}

impl Drop for BrokerCleanup {
    fn drop(&mut self) {
        let names = self.names.clone();
        let replay_exchange = names.replay_exchange();
        let mut extra = std::mem::take(&mut self.extra_queues);
        extra.push(names.leavers_queue());
        extra.push(names.dead_letter_watch_queue());
        extra.extend(ParkingNames::for_work_queue(&names.work_queue).legacy_queues());
        // Drop cannot await; a short-lived runtime on its own thread does the deleting.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(conn) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await
                else {
                    return;
                };
                let Ok(channel) = conn.create_channel().await else {
                    return;
                };
                let parking = ParkingNames::for_work_queue(&names.work_queue);
                for queue in [names.work_queue.clone(), names.dead_letter_queue]
                    .into_iter()
                    .chain(parking.queues())
                    .chain(extra)
                {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for exchange in [
                    replay_exchange,
                    names.input_exchange,
                    names.results_exchange,
                    names.dead_letter_exchange,
                    parking.retry_exchange,
                    parking.delay_exchange,
                ] {
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
                let _ = conn.close(200, "test cleanup".into()).await;
            });
        })
        .join();
    }
}

/// Settings as the environment would give them, for this test's names and fake Okta.
pub fn settings_for(names: &TopologyNames, sim: &OktaSim, options: &Options) -> Settings {
    let mut vars: Vec<(String, String)> = vec![
        ("AMQP_URL".into(), AMQP_URL.into()),
        ("OKTA_ORG_URL".into(), sim.base_url()),
        ("OKTA_API_TOKEN".into(), sim.api_token()),
        ("GROUP_MAPPING".into(), options.mapping.to_string()),
        ("INPUT_EXCHANGE".into(), names.input_exchange.clone()),
        ("WORK_QUEUE".into(), names.work_queue.clone()),
        ("RESULTS_EXCHANGE".into(), names.results_exchange.clone()),
        (
            "DEAD_LETTER_EXCHANGE".into(),
            names.dead_letter_exchange.clone(),
        ),
        ("DEAD_LETTER_QUEUE".into(), names.dead_letter_queue.clone()),
        ("HTTP_LISTEN".into(), "127.0.0.1:0".into()),
        ("RETRY_BASE_DELAY_MS".into(), "20".into()),
        ("RETRY_MAX_DELAY_MS".into(), "200".into()),
        ("SHUTDOWN_TIMEOUT_SECS".into(), "10".into()),
    ];
    for (k, v) in &options.env {
        vars.retain(|(name, _)| name != k);
        vars.push((k.to_string(), v.clone()));
    }
    Settings::from_vars(vars, false).expect("test settings are valid")
}

/// A running service with everything around it.
pub struct World {
    pub names: TopologyNames,
    pub sim: OktaSim,
    pub conn: Connection,
    /// A confirm-mode channel for publishing test events.
    pub channel: Channel,
    outcomes: Consumer,
    stop: CancellationToken,
    app: Option<JoinHandle<()>>,
    pub http: std::net::SocketAddr,
    pub cleanup: BrokerCleanup,
    /// What the service was built from, to start it again.
    restart: (Settings, OktaEndpoint, GroupMapping),
}

impl World {
    /// Starts the fake Okta and the service with the default options.
    pub async fn start(test: &str) -> World {
        Self::start_with(test, Options::default()).await
    }

    /// Starts the fake Okta and the service.
    pub async fn start_with(test: &str, options: Options) -> World {
        let names = TopologyNames::prefixed(&unique_prefix(test));
        let cleanup = BrokerCleanup {
            names: names.clone(),
            extra_queues: vec![],
        };
        let sim = OktaSim::start(options.sim.clone())
            .await
            .expect("fake Okta starts");
        for group in &options.okta_groups {
            sim.create_group(group, iam_provisioner::okta_sim::GroupType::OktaGroup);
        }
        let settings = settings_for(&names, &sim, &options);
        let OktaTarget::Org { url, auth } = settings.okta.target.clone() else {
            panic!("tests use a real-mode configuration")
        };
        let mapping = settings
            .mapping
            .load()
            .await
            .expect("the mapping loads")
            .unwrap_or_default();
        let endpoint = OktaEndpoint { url, auth };
        let restart = (settings.clone(), endpoint.clone(), mapping.clone());
        let app = Application::build(settings, endpoint, mapping)
            .await
            .expect("service builds");
        let http = app.http_address();
        let (conn, channel, outcomes) = observe(&names).await;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let app = tokio::spawn(async move { app.run_until(token.cancelled_owned()).await });
        World {
            names,
            sim,
            conn,
            channel,
            outcomes,
            stop,
            app: Some(app),
            http,
            cleanup,
            restart,
        }
    }

    /// Starts a new service, as a restart would, after [`World::stop_service`].
    pub async fn restart_service(&mut self) {
        assert!(self.app.is_none(), "stop the service first");
        let (settings, endpoint, mapping) = self.restart.clone();
        let app = Application::build(settings, endpoint, mapping)
            .await
            .expect("service builds again");
        self.http = app.http_address();
        self.stop = CancellationToken::new();
        let token = self.stop.clone();
        self.app = Some(tokio::spawn(async move {
            app.run_until(token.cancelled_owned()).await
        }));
    }

    /// The names of the delay queues, hold queue and retry exchange.
    pub fn parking(&self) -> ParkingNames {
        ParkingNames::for_work_queue(&self.names.work_queue)
    }

    /// Stops the service gracefully and waits for it.
    pub async fn stop_service(&mut self) {
        self.stop.cancel();
        if let Some(app) = self.app.take() {
            tokio::time::timeout(PATIENCE, app)
                .await
                .expect("service stops in time")
                .expect("service task ends cleanly");
        }
    }

    /// Publishes an event as an HR system would: JSON, persistent, message id = event id.
    pub async fn publish(&self, routing_key: &str, body: &Value) {
        let event_id = body["event_id"].as_str().unwrap_or("no-id").to_owned();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(event_id.into());
        self.publish_raw(routing_key, body.to_string().as_bytes(), properties)
            .await;
    }

    /// Publishes raw bytes with the given properties, waiting for the broker's confirm.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        publish_to(
            &self.channel,
            &self.names.input_exchange,
            routing_key,
            body,
            properties,
        )
        .await;
    }

    /// The next outcome event: (routing key, body, headers).
    pub async fn next_outcome(&mut self) -> (String, Value, Option<FieldTable>) {
        let delivery = tokio::time::timeout(PATIENCE, self.outcomes.next())
            .await
            .expect("an outcome arrives in time")
            .expect("outcome stream open")
            .expect("outcome delivery");
        let body: Value = serde_json::from_slice(&delivery.data).expect("outcome is JSON");
        (
            delivery.routing_key.to_string(),
            body,
            delivery.properties.headers().clone(),
        )
    }

    /// Outcomes until the terminal one (succeeded or failed) for `event_id`; returns
    /// every outcome seen for that event, terminal last.
    pub async fn outcomes_until_final(&mut self, event_id: &str) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + OVERALL_PATIENCE;
        let mut seen = Vec::new();
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no final outcome for {event_id} within {OVERALL_PATIENCE:?}; seen: {seen:?}"
            );
            let (key, body, _) = self.next_outcome().await;
            if body["source_event_id"] != event_id {
                continue;
            }
            assert_eq!(
                key,
                format!(
                    "{}.{}",
                    body["event_type"].as_str().unwrap_or(""),
                    body["status"].as_str().unwrap_or("")
                )
            );
            let done = body["status"] != "retrying";
            seen.push(body);
            if done {
                return seen;
            }
        }
    }

    /// Every outcome of each of `event_ids`, in the order published, until all are final
    /// (whatever order they finish in), within [`OVERALL_PATIENCE`].
    pub async fn outcomes_until_all_final(
        &mut self,
        event_ids: &[String],
    ) -> std::collections::HashMap<String, Vec<Value>> {
        let deadline = tokio::time::Instant::now() + OVERALL_PATIENCE;
        let mut seen: std::collections::HashMap<String, Vec<Value>> =
            std::collections::HashMap::new();
        let finished = |seen: &std::collections::HashMap<String, Vec<Value>>| {
            event_ids.iter().all(|id| {
                seen.get(id)
                    .and_then(|outcomes| outcomes.last())
                    .is_some_and(|last| last["status"] != "retrying")
            })
        };
        while !finished(&seen) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not every event finished within {OVERALL_PATIENCE:?}: {seen:#?}"
            );
            let (_, body, _) = self.next_outcome().await;
            let Some(id) = body["source_event_id"].as_str() else {
                continue;
            };
            if event_ids.iter().any(|wanted| wanted == id) {
                seen.entry(id.to_owned()).or_default().push(body);
            }
        }
        seen
    }

    /// The terminal outcome of each of `event_ids`, whatever order they finish in
    /// (waiting for one at a time would skip another's that came first).
    pub async fn final_outcomes_of(
        &mut self,
        event_ids: &[String],
    ) -> std::collections::HashMap<String, Value> {
        let deadline = tokio::time::Instant::now() + OVERALL_PATIENCE;
        let mut finals = std::collections::HashMap::new();
        while finals.len() < event_ids.len() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {} final outcomes within {OVERALL_PATIENCE:?}",
                finals.len(),
                event_ids.len()
            );
            let (_, body, _) = self.next_outcome().await;
            let Some(id) = body["source_event_id"].as_str() else {
                continue;
            };
            if body["status"] != "retrying" && event_ids.iter().any(|wanted| wanted == id) {
                finals.insert(id.to_owned(), body);
            }
        }
        finals
    }

    /// The terminal outcome for `event_id`.
    pub async fn final_outcome(&mut self, event_id: &str) -> Value {
        self.outcomes_until_final(event_id)
            .await
            .pop()
            .expect("at least the final outcome")
    }

    /// Takes every message now in the dead-letter queue.
    pub async fn drain_dead_letters(&self) -> Vec<BasicGetMessage> {
        drain_queue(&self.channel, &self.names.dead_letter_queue).await
    }

    /// Messages ready in a queue, as the broker counts them.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let channel = self.conn.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        let _ = channel.close(200, "".into()).await;
        declared.message_count()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(app) = self.app.take() {
            app.abort();
        }
    }
}

/// Connects as a test client: a confirm-mode channel and a consumer of every outcome.
pub async fn observe(names: &TopologyNames) -> (Connection, Channel, Consumer) {
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("test connects to RabbitMQ");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    // Declaring the same topology is idempotent, and lets a test observe before the
    // service has started (or when it runs as a separate process).
    topology::declare(&channel, names).await.expect("topology");
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("outcome queue");
    channel
        .queue_bind(
            queue.name().clone(),
            names.results_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind outcomes");
    let outcomes = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume outcomes");
    (conn, channel, outcomes)
}

/// Publishes and waits for the broker's confirm.
pub async fn publish_to(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let confirmation = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirmation.is_ack(), "broker confirmed the test's publish");
}

/// Takes every message now in a queue (acknowledging them).
pub async fn drain_queue(channel: &Channel, queue: &str) -> Vec<BasicGetMessage> {
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        messages.push(message);
    }
    messages
}

/// A header of a message as a string.
pub fn header_str(headers: &Option<FieldTable>, name: &str) -> Option<String> {
    match headers.as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A header of a message as an integer.
pub fn header_int(headers: &Option<FieldTable>, name: &str) -> Option<i64> {
    match headers.as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
        _ => None,
    }
}

/// A unique event id.
pub fn event_id(label: &str) -> String {
    format!("{label}-{:016x}", fastrand::u64(..))
}

/// An `employee.added` body.
pub fn hire(event_id: &str, employee_id: &str, email: &str, groups: &[&str]) -> Value {
    json!({
        "event_id": event_id,
        "occurred_at": now_rfc3339(),
        "employee": {
            "id": employee_id,
            "email": email,
            "first_name": "Ada",
            "last_name": "Lovelace",
            "groups": groups,
            "department": "R&D",
            "title": "Engineer",
        }
    })
}

/// An `employee.removed` body; pass `None` to leave a field out.
pub fn leaver(event_id: &str, employee_id: Option<&str>, email: Option<&str>) -> Value {
    let mut employee = serde_json::Map::new();
    if let Some(id) = employee_id {
        employee.insert("id".into(), json!(id));
    }
    if let Some(email) = email {
        employee.insert("email".into(), json!(email));
    }
    json!({"event_id": event_id, "occurred_at": now_rfc3339(), "employee": employee})
}

/// Now, in RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

/// A profile for seeding a user directly into the fake Okta.
pub fn profile(employee_id: &str, email: &str) -> Value {
    json!({"login": email, "email": email, "firstName": "Grace", "lastName": "Hopper", "employeeNumber": employee_id})
}

/// The secret type, re-exported for tests that build settings by hand.
pub fn secret(value: &str) -> Secret {
    Secret::new(value)
}

/// A queue type, for tests that pre-declare conflicting queues.
pub fn quorum() -> QueueType {
    QueueType::Quorum
}

/// Reads a group mapping for tests that build the app by hand.
pub fn mapping(value: &Value) -> GroupMapping {
    GroupMapping::from_json(&value.to_string()).expect("mapping")
}

/// Closes, from the broker's side, every connection whose client-provided name is
/// `connection_name` (the service names its connection `iam-provisioner <work queue>`),
/// as a broker restart or a network cut would. Returns how many were closed.
pub fn close_broker_connections(connection_name: &str) -> usize {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "-q",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let listing = String::from_utf8_lossy(&output.stdout);
    // Each line: `<pid>\t[... {"connection_name","<name>"} ...]`.
    let wanted = format!("{{\"connection_name\",\"{connection_name}\"}}");
    let mut closed = 0;
    for line in listing.lines().filter(|l| l.contains(&wanted)) {
        let pid = line.split('\t').next().expect("pid column").trim();
        let status = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "closed by a test"])
            .output()
            .expect("rabbitmqctl runs");
        assert!(status.status.success(), "{status:?}");
        closed += 1;
    }
    closed
}

/// Polls `condition` until it holds, or fails the test after `PATIENCE`.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// GET on the service's HTTP endpoint: (status, body).
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://{address}{path}")).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Checks that every event in `outcomes` (from [`World::outcomes_until_all_final`])
/// succeeded at its first attempt after retries of kind `rate_limited` only, also at
/// attempt 1 (a 429 uses no attempt); returns those retries, for the caller's own checks.
pub fn rate_limited_retries_before_success(
    outcomes: &std::collections::HashMap<String, Vec<Value>>,
) -> Vec<&Value> {
    let mut retries = Vec::new();
    for (id, seen) in outcomes {
        let (last, retrying) = seen.split_last().expect("a final outcome");
        assert_eq!(last["status"], "succeeded", "{id}: {seen:#?}");
        assert_eq!(last["attempt"], 1, "a 429 uses no attempt: {id}: {seen:#?}");
        for outcome in retrying {
            assert_eq!(outcome["status"], "retrying", "{id}: {outcome}");
            assert_eq!(outcome["error"]["kind"], "rate_limited", "{id}: {outcome}");
            assert_eq!(outcome["attempt"], 1, "{id}: {outcome}");
        }
        retries.extend(retrying);
    }
    retries
}
