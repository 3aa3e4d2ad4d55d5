//! The benchmark's side of RabbitMQ: a uniquely prefixed topology per scenario (removed
//! afterwards, even when the scenario fails or the run is interrupted), publishing
//! batches of events with confirms, and counting outcome events as they arrive.

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use iam_provisioner::amqp::parking::ParkingNames;
use iam_provisioner::amqp::topology::{self, TopologyNames};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The broker every scenario uses (the README's and the tests' broker).
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Publishes in flight at once while preloading: enough to keep the broker busy, few
/// enough that a refused publish is noticed quickly.
const PUBLISH_WINDOW: usize = 1_000;

/// Opens a connection with a name that says what it is in the management UI.
pub async fn connect(purpose: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("iam-provisioner bench {purpose}").into());
    Connection::connect(AMQP_URL, properties)
        .await
        .context("connecting to RabbitMQ at 127.0.0.1:5672 (is it running?)")
}

/// One scenario's broker objects, named `bench-<scenario>-<random>.…`. Declared on
/// creation, deleted on drop.
pub struct Topology {
    pub names: TopologyNames,
}

impl Topology {
    /// Declares the service's topology under a fresh prefix, exactly as the service does.
    pub async fn declare(channel: &Channel, scenario: &str) -> Result<Self> {
        let prefix = format!("bench-{scenario}-{:08x}.", fastrand::u32(..));
        let names = TopologyNames::prefixed(&prefix);
        // The guard exists before the declaration, so a half-declared topology is
        // removed too.
        let topology = Self { names };
        topology::declare(channel, &topology.names)
            .await
            .context("declaring the scenario's topology")?;
        Ok(topology)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let names = self.names.clone();
        // Drop cannot await, and the scenario's runtime may be shutting down: delete
        // from a short-lived runtime on a thread of its own.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let conn = connect("cleanup").await.ok()?;
                let channel = conn.create_channel().await.ok()?;
                let parking = ParkingNames::for_work_queue(&names.work_queue);
                let queues = [
                    names.work_queue.clone(),
                    names.leavers_queue(),
                    names.dead_letter_queue.clone(),
                ];
                for queue in queues.into_iter().chain(parking.queues()) {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for exchange in [
                    names.replay_exchange(),
                    names.input_exchange.clone(),
                    names.results_exchange.clone(),
                    names.dead_letter_exchange.clone(),
                    parking.retry_exchange,
                    parking.delay_exchange,
                ] {
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
                let _ = conn.close(200, "bench cleanup".into()).await;
                Some(())
            })
        })
        .join();
        if !matches!(deleted, Ok(Some(()))) {
            eprintln!(
                "warning: could not delete the benchmark's queues and exchanges with prefix {:?}",
                self.names.work_queue.trim_end_matches("iam-provisioner")
            );
        }
    }
}

/// A confirm-mode channel for publishing events.
pub async fn confirm_channel(conn: &Connection) -> Result<Channel> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Properties of an event as an HR system publishes it.
pub fn event_properties(event_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event_id.into())
}

/// Publishes `(routing key, event id, body)` triples, keeping up to [`PUBLISH_WINDOW`]
/// unconfirmed, and returns once the broker has confirmed every one.
pub async fn publish_all(
    channel: &Channel,
    exchange: &str,
    events: impl IntoIterator<Item = (&'static str, String, String)>,
) -> Result<usize> {
    let mut pending = Vec::with_capacity(PUBLISH_WINDOW);
    let mut published = 0;
    for (routing_key, event_id, body) in events {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                event_properties(&event_id),
            )
            .await
            .context("publishing an event")?;
        pending.push(confirm);
        published += 1;
        if pending.len() >= PUBLISH_WINDOW {
            await_confirms(&mut pending).await?;
        }
    }
    await_confirms(&mut pending).await?;
    Ok(published)
}

async fn await_confirms(pending: &mut Vec<lapin::PublisherConfirm>) -> Result<()> {
    for confirm in pending.drain(..) {
        let confirmation = confirm.await.context("waiting for a publisher confirm")?;
        if !confirmation.is_ack() {
            bail!("the broker refused (nack) an event the benchmark published");
        }
    }
    Ok(())
}

/// Messages ready (not delivered) in a queue.
pub async fn ready_messages(conn: &Connection, queue: &str) -> Result<u32> {
    let channel = conn.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "".into()).await;
    Ok(declared.message_count())
}

/// What the outcome consumer has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Outcomes with status `succeeded` or `failed`: the event is finished.
    pub terminal: u64,
    /// Every outcome by routing key (`employee.added.succeeded`, `….retrying`, …).
    pub by_key: BTreeMap<String, u64>,
    pub first_terminal: Option<Instant>,
    pub last_terminal: Option<Instant>,
}

impl Tally {
    /// Finished events per second between the first and the last finished one: the
    /// steady rate, free of start-up time (n events span n − 1 intervals).
    pub fn rate(&self) -> Option<f64> {
        let (first, last) = (self.first_terminal?, self.last_terminal?);
        let seconds = last.duration_since(first).as_secs_f64();
        (self.terminal >= 2 && seconds > 0.0).then(|| (self.terminal - 1) as f64 / seconds)
    }

    /// Seconds between the first and the last finished event.
    pub fn span_seconds(&self) -> Option<f64> {
        Some(
            self.last_terminal?
                .duration_since(self.first_terminal?)
                .as_secs_f64(),
        )
    }

    /// Outcomes whose routing key ends in `.failed`.
    pub fn failed(&self) -> u64 {
        self.by_key
            .iter()
            .filter(|(key, _)| key.ends_with(".failed"))
            .map(|(_, n)| n)
            .sum()
    }

    /// Outcomes whose routing key ends in `.retrying`.
    pub fn retrying(&self) -> u64 {
        self.by_key
            .iter()
            .filter(|(key, _)| key.ends_with(".retrying"))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Consumes every outcome of a scenario's results exchange, as a dashboard would, and
/// counts them (by routing key: the status is its last word, no JSON parsing needed).
pub struct OutcomeCounter {
    tally: Arc<Mutex<Tally>>,
    task: JoinHandle<()>,
}

impl OutcomeCounter {
    /// Binds an exclusive queue to the results exchange and starts counting. Bind before
    /// anything is processed, or early outcomes are missed.
    pub async fn start(conn: &Connection, names: &TopologyNames) -> Result<Self> {
        let channel = conn.create_channel().await?;
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
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                names.results_exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let counting = Arc::clone(&tally);
        let task = tokio::spawn(async move {
            // The channel lives as long as the consumer task.
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                let now = Instant::now();
                let key = delivery.routing_key.as_str();
                let mut tally = lock(&counting);
                *tally.by_key.entry(key.to_owned()).or_default() += 1;
                if key.ends_with(".succeeded") || key.ends_with(".failed") {
                    tally.terminal += 1;
                    tally.first_terminal.get_or_insert(now);
                    tally.last_terminal = Some(now);
                }
            }
        });
        Ok(Self { tally, task })
    }

    /// A copy of the counts now.
    pub fn snapshot(&self) -> Tally {
        lock(&self.tally).clone()
    }

    /// Forgets everything counted so far (between phases of one scenario).
    pub fn reset(&self) {
        *lock(&self.tally) = Tally::default();
    }

    /// Waits until `count` events have finished, or fails after `timeout`.
    pub async fn wait_terminal(&self, count: u64, timeout: Duration) -> Result<Tally> {
        let deadline = Instant::now() + timeout;
        loop {
            let tally = self.snapshot();
            if tally.terminal >= count {
                return Ok(tally);
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "only {} of {count} events finished within {timeout:?} (outcomes: {:?})",
                    tally.terminal,
                    tally.by_key
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for OutcomeCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(tally: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}
