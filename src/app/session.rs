//! Broker sessions: one connection at a time, consuming what a [`SessionPlan`] names,
//! until shutdown or until the broker fails under it; then a new session with backoff.
//!
//! Plain and partitioned mode run the same loop. What differs is data, decided once from
//! the settings: which queues are consumed at once and which after the standby delay,
//! whether the session runs the intake, and how a stop hands the rest back (cancel the
//! consumers first, or close the channels after the drain).

use super::{patient_backoff, Application, StartupError};
use crate::amqp::intake::{Intake, LOCK_RETRY};
use crate::amqp::publisher::{Publisher, SessionLink};
use crate::amqp::topology::{self, TopologyNames};
use crate::amqp::{decode, settle};
use crate::config::{Partitioning, Settings};
use crate::domain::partition::preferred_partitions;
use crate::http::Health;
use crate::pipeline::lanes::Lane;
use crate::secret::{redact_url_password, Secret};
use futures_util::stream::{BoxStream, SelectAll};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A session that lasted this long resets the reconnection delays.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// One queue a session consumes, on a channel of its own (closing it hands exactly that
/// queue's unacknowledged deliveries back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct QueueToConsume {
    pub queue: String,
    pub lane: Lane,
    /// The channel's prefetch: how many of its deliveries may be in progress at once.
    pub prefetch: u16,
    /// Empty: the broker names the consumer.
    pub consumer_tag: String,
    /// How session errors name it: "the work lane", "partition 3".
    pub name: String,
}

/// What a session consumes and how it stops, decided once from the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SessionPlan {
    /// Consumed from the start.
    pub queues: Vec<QueueToConsume>,
    /// Consumed after `standby_delay`, as a standby (partitions other replicas prefer).
    pub standby: Vec<QueueToConsume>,
    pub standby_delay: Duration,
    /// Whether the session runs the intake (partitioned mode: whoever holds its lock
    /// moves events from the work queue to the partitions).
    pub intake: bool,
    /// Whether a stop cancels the consumers before draining. Not on single-active-consumer
    /// queues: cancelling the active consumer lets the next one start while this one
    /// still works on its deliveries; closing the channels after the drain hands the rest
    /// back and the partition over in one step, in order.
    pub cancel_consumers_on_stop: bool,
}

impl SessionPlan {
    pub(super) fn for_settings(settings: &Settings) -> Self {
        let names = &settings.amqp.topology;
        // One channel per lane, each with its own prefetch: the leavers lane's few slots
        // are never taken by hires. The leavers queue is consumed in every mode;
        // partitioned, its copies are only acknowledged (their twins come through the
        // partitions, in order).
        let leavers = QueueToConsume {
            queue: names.leavers_queue(),
            lane: Lane::Leavers,
            prefetch: settings.pipeline.leaver_concurrency,
            consumer_tag: String::new(),
            name: "the leavers lane".into(),
        };
        match settings.partitioning {
            None => Self {
                queues: vec![
                    leavers,
                    QueueToConsume {
                        queue: names.work_queue.clone(),
                        lane: Lane::Work,
                        prefetch: settings.pipeline.concurrency,
                        consumer_tag: String::new(),
                        name: "the work lane".into(),
                    },
                ],
                standby: vec![],
                standby_delay: Duration::ZERO,
                intake: false,
                cancel_consumers_on_stop: true,
            },
            Some(partitioning) => {
                let preferred = preferred_partitions(partitioning.partitions, partitioning.slot);
                let partition = |p: u16| partition_queue(settings, &partitioning, p);
                let (mine, others): (Vec<u16>, Vec<u16>) =
                    (0..partitioning.partitions).partition(|p| preferred.contains(p));
                let mut queues = vec![leavers];
                queues.extend(mine.into_iter().map(partition));
                Self {
                    queues,
                    standby: others.into_iter().map(partition).collect(),
                    standby_delay: partitioning.standby_delay,
                    intake: true,
                    cancel_consumers_on_stop: false,
                }
            }
        }
    }
}

/// A partition queue, with the consumer tag naming the replica and partition.
fn partition_queue(settings: &Settings, partitioning: &Partitioning, p: u16) -> QueueToConsume {
    QueueToConsume {
        queue: settings.amqp.topology.partition_queue(p),
        lane: Lane::Work,
        prefetch: settings.pipeline.concurrency,
        consumer_tag: format!("iam-provisioner r{} p{p}", partitioning.slot.index),
        name: format!("partition {p}"),
    }
}

pub(super) enum SessionEnd {
    Stopped,
    Lost(String),
}

/// A consumer's deliveries, tagged with the index of its queue; a final `None` tells the
/// session that the broker ended the consumer.
type Deliveries = BoxStream<'static, (usize, Option<Result<Delivery, lapin::Error>>)>;

/// The queues a session has subscribed to, in [`SessionPlan`] order.
#[derive(Default)]
struct Subscriptions {
    queues: Vec<QueueToConsume>,
    channels: Vec<(Channel, String)>,
    /// The leavers lane, read before the others.
    leavers: SelectAll<Deliveries>,
    work: SelectAll<Deliveries>,
}

impl Subscriptions {
    /// Opens a channel with the queue's prefetch and consumes the queue on it.
    async fn subscribe(
        &mut self,
        connection: &Connection,
        queue: &QueueToConsume,
    ) -> Result<(), lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(queue.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.queue.as_str().into(),
                queue.consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let index = self.queues.len();
        let tag = consumer.tag().to_string();
        let stream = consumer
            .map(move |delivery| (index, Some(delivery)))
            .chain(futures_util::stream::once(async move { (index, None) }))
            .boxed();
        match queue.lane {
            Lane::Leavers => self.leavers.push(stream),
            Lane::Work => self.work.push(stream),
        }
        self.queues.push(queue.clone());
        self.channels.push((channel, tag));
        Ok(())
    }

    async fn subscribe_all(
        &mut self,
        connection: &Connection,
        queues: &[QueueToConsume],
    ) -> Result<(), lapin::Error> {
        for queue in queues {
            self.subscribe(connection, queue).await?;
        }
        Ok(())
    }
}

/// The channels of a session's subscriptions, with their consumer tags. Apart from the
/// streams (which are not `Sync`) so they can be used across an `await`.
struct Channels(Vec<(Channel, String)>);

impl Channels {
    async fn cancel_consumers(&self) {
        for (channel, tag) in &self.0 {
            let _ = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
    }

    /// Closing the channels returns whatever was not acknowledged to the queues.
    async fn close(&self) {
        for (channel, _) in &self.0 {
            let _ = channel.close(200, "shutting down".into()).await;
        }
    }
}

impl Application {
    pub(super) async fn run_sessions(&mut self, stop: CancellationToken) {
        let plan = SessionPlan::for_settings(&self.settings);
        let mut reconnect_attempt = 0u32;
        let mut delays = patient_backoff();
        loop {
            let connection = match self.first_connection.take() {
                Some(connection) => connection,
                None => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(30));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return,
                    }
                    match connect_and_declare(
                        &self.settings.amqp.url,
                        &self.settings.amqp.topology,
                        self.settings.partitioning.map(|p| p.partitions),
                    )
                    .await
                    {
                        Ok(connection) => {
                            tracing::info!(
                                attempt = reconnect_attempt + 1,
                                "reconnected to the broker"
                            );
                            connection
                        }
                        Err(e) => {
                            reconnect_attempt = reconnect_attempt.saturating_add(1);
                            self.report_reconnect_failure(&e, reconnect_attempt);
                            continue;
                        }
                    }
                }
            };
            self.health.set_broker_connected(true);
            self.health.set_broker_conflict(None);
            reconnect_attempt = 0;
            let session_started = std::time::Instant::now();
            let end = self.run_session(&connection, &stop, &plan).await;
            self.health.set_consuming(false);
            self.health.set_broker_connected(false);
            // A session that fails at once (a publish refused for good, a channel closed
            // again) must not reconnect in a tight loop: the delays grow until a session
            // has lasted.
            if session_started.elapsed() >= STABLE_SESSION {
                delays = patient_backoff();
            }
            match end {
                SessionEnd::Stopped => {
                    close_bounded(&connection, 200, "shutting down").await;
                    self.health.set_broker_blocked(false);
                    return;
                }
                SessionEnd::Lost(reason) => {
                    self.health.session_lost();
                    tracing::warn!(reason = %reason, "broker session lost; reconnecting");
                    close_bounded(&connection, 320, "reconnecting").await;
                    self.health.set_broker_blocked(false);
                }
            }
        }
    }

    /// One session: consumes the plan's queues (the standby ones after the delay), runs
    /// the intake if the plan says so, and starts each delivery's task, until `stop` or
    /// until the broker fails under it.
    async fn run_session(
        &self,
        connection: &Connection,
        stop: &CancellationToken,
        plan: &SessionPlan,
    ) -> SessionEnd {
        let names = &self.settings.amqp.topology;
        let hand_back = CancellationToken::new();
        let broken = CancellationToken::new();
        // Listening from the start: the broker may block the connection at any time.
        let watch = watch_connection(connection.events_listener(), self.health.clone());
        tokio::pin!(watch);
        let publisher = match Publisher::open(
            connection,
            &names.results_exchange,
            &names.dead_letter_exchange,
        )
        .await
        {
            Ok(publisher) => Arc::new(
                publisher
                    .with_metrics(self.worker.metrics.clone())
                    .with_simulated_okta(self.settings.okta.target.is_simulated())
                    .with_confirm_timeout(self.settings.amqp.publish_confirm_timeout)
                    .for_session(self.session_link(&hand_back, &broken)),
            ),
            Err(e) => return SessionEnd::Lost(e.to_string()),
        };
        let mut subscriptions = Subscriptions::default();
        if let Err(e) = subscriptions.subscribe_all(connection, &plan.queues).await {
            return SessionEnd::Lost(e.to_string());
        }
        let intake_stop = stop.child_token();
        // Polled by the loop below rather than spawned: it borrows the connection.
        let intake = async {
            if plan.intake {
                let intake = Intake {
                    names: names.clone(),
                    max_body_bytes: self.settings.amqp.max_message_bytes,
                    trust: self.worker.trust.clone(),
                };
                run_intake(intake, connection, &intake_stop).await;
            }
        };
        tokio::pin!(intake);
        let mut intake_running = plan.intake;
        self.health.set_consuming(true);
        let queues: Vec<&str> = plan.queues.iter().map(|q| q.queue.as_str()).collect();
        if plan.intake {
            let standby: Vec<&str> = plan.standby.iter().map(|q| q.queue.as_str()).collect();
            tracing::info!(
                queues = ?queues,
                standby = ?standby,
                standby_in_ms = plan.standby_delay.as_millis() as u64,
                concurrency = self.settings.pipeline.concurrency,
                "consuming partitions"
            );
        } else {
            tracing::info!(
                queues = ?queues,
                concurrency = self.settings.pipeline.concurrency,
                leaver_concurrency = self.settings.pipeline.leaver_concurrency,
                "consuming"
            );
        }

        let mut tasks = JoinSet::new();
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        let standby_timer = tokio::time::sleep(plan.standby_delay);
        tokio::pin!(standby_timer);
        let mut standby_pending = !plan.standby.is_empty();
        let circuit = &self.worker.circuit;
        // Deliveries taken while Okta is down, in delivery order (at most the prefetch).
        let mut waiting: VecDeque<(Delivery, Lane)> = VecDeque::new();
        let end = loop {
            // While Okta is down no new delivery is started: they wait in the prefetch
            // (here, or in the queue for another replica) until Okta answers again. The
            // consumers are still read, so that a channel the broker closes (a consumer
            // timeout in a long outage) ends the session at once.
            let okta_down = circuit.is_open();
            if !okta_down {
                if let Some((delivery, lane)) = waiting.pop_front() {
                    self.start_delivery(delivery, lane, &publisher, &hand_back, &mut tasks);
                    continue;
                }
            }
            // Biased: a removal waiting in the leavers lane is taken before the next hire.
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => break SessionEnd::Stopped,
                _ = broken.cancelled() => break SessionEnd::Lost(
                    publisher.session_failure().unwrap_or_else(|| "a publish failed".into())
                ),
                reason = &mut watch => break SessionEnd::Lost(reason),
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                _ = ticker.tick() => {
                    self.health.tick();
                    if let Some(reason) = publishing_problem(&publisher, connection, &self.health) {
                        break SessionEnd::Lost(reason);
                    }
                    continue;
                }
                () = &mut intake, if intake_running => {
                    intake_running = false;
                    continue;
                }
                _ = circuit.wait_closed(), if okta_down => continue,
                _ = circuit.wait_open(), if !okta_down => continue,
                () = &mut standby_timer, if standby_pending => {
                    standby_pending = false;
                    if let Err(e) = subscriptions.subscribe_all(connection, &plan.standby).await {
                        break SessionEnd::Lost(e.to_string());
                    }
                    tracing::info!(
                        standby = ?plan.standby.iter().map(|q| q.queue.as_str()).collect::<Vec<_>>(),
                        "subscribed as standby"
                    );
                    continue;
                }
                Some(next) = subscriptions.leavers.next(), if !subscriptions.leavers.is_empty() => next,
                Some(next) = subscriptions.work.next(), if !subscriptions.work.is_empty() => next,
            };
            let (index, delivery) = next;
            let queue = &subscriptions.queues[index];
            match delivery {
                Some(Ok(delivery)) if circuit.is_open() || !waiting.is_empty() => {
                    waiting.push_back((delivery, queue.lane));
                }
                Some(Ok(delivery)) => {
                    self.start_delivery(delivery, queue.lane, &publisher, &hand_back, &mut tasks);
                }
                Some(Err(e)) => break SessionEnd::Lost(format!("{}: {e}", queue.name)),
                None => {
                    break SessionEnd::Lost(format!(
                        "the broker cancelled the consumer of {}",
                        queue.name
                    ))
                }
            }
        };

        intake_stop.cancel();
        if intake_running {
            intake.await;
        }
        if matches!(end, SessionEnd::Stopped) {
            // Stop new deliveries first where that is safe; what was prefetched but not
            // started is returned to the queue when the channel closes.
            let channels = Channels(std::mem::take(&mut subscriptions.channels));
            if plan.cancel_consumers_on_stop {
                channels.cancel_consumers().await;
            }
            // Waiting work (a backoff, a turn) is handed back at once; work talking to
            // Okta is given the shutdown timeout to finish.
            hand_back.cancel();
            let drained = tokio::time::timeout(self.settings.pipeline.shutdown_timeout, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    unfinished = tasks.len(),
                    "shutdown timeout reached; unfinished deliveries are handed back to the broker"
                );
                tasks.abort_all();
            }
            channels.close().await;
            publisher.close().await;
        } else {
            // The broker has requeued (or is requeuing) everything unacknowledged, and a
            // new session (or another replica) may soon receive it again: no task of this
            // one may reach Okta after that, so all are stopped, and waited for, before
            // this returns.
            hand_back.cancel();
            abort_and_wait(&mut tasks).await;
        }
        end
    }

    /// Registers a delivery with the sequencer (here, in delivery order; both lanes share
    /// one) and starts its task.
    fn start_delivery(
        &self,
        delivery: Delivery,
        lane: Lane,
        publisher: &Arc<Publisher>,
        hand_back: &CancellationToken,
        tasks: &mut JoinSet<()>,
    ) {
        let (inbound, decoded) = decode::decode(
            delivery,
            lane,
            &self.worker.trust,
            &self.worker.lanes,
            self.settings.amqp.max_message_bytes,
        );
        let turn = self.sequencer.register(decoded.ordering_keys());
        let worker = Arc::clone(&self.worker);
        let publisher = Arc::clone(publisher);
        let hand_back = hand_back.clone();
        tasks.spawn(async move {
            settle::deliver(&worker, inbound, decoded, turn, &publisher, &hand_back).await
        });
    }

    /// Says why a reconnection failed. A declaration the broker refuses (an object that
    /// exists with other arguments) is the operator's to fix, not a broker that is
    /// still away: it is logged as the conflict it is and shown on `/readyz`.
    fn report_reconnect_failure(&self, error: &StartupError, attempt: u32) {
        let chain = crate::telemetry::error_chain(error);
        match error {
            StartupError::Topology(_) => {
                tracing::error!(
                    error = chain,
                    attempt,
                    "the broker refuses the service's declarations (an object exists with \
                     other arguments); an operator must resolve the conflict"
                );
                self.health.set_broker_conflict(Some(chain));
            }
            _ => {
                tracing::warn!(error = chain, attempt, "broker still unavailable");
                self.health.set_broker_conflict(None);
            }
        }
    }

    /// What ties a session's publisher to it (see [`SessionLink`]).
    fn session_link(
        &self,
        hand_back: &CancellationToken,
        broken: &CancellationToken,
    ) -> SessionLink {
        SessionLink {
            health: self.health.clone(),
            broken: broken.clone(),
            hand_back: hand_back.clone(),
            reason: std::sync::Mutex::new(None),
        }
    }
}

/// Runs the intake for as long as the session lasts: standing by while another replica
/// holds the lock, starting again after a failure.
async fn run_intake(intake: Intake, connection: &Connection, stop: &CancellationToken) {
    loop {
        match intake.run(connection, stop).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(
                error = crate::telemetry::error_chain(&e),
                "intake stopped; unacknowledged messages return to the work queue"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(LOCK_RETRY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Connects and declares the topology, with `partitions` partition queues and their
/// exchange when partitioned.
///
/// # Errors
/// [`StartupError::Broker`] or [`StartupError::Topology`] (which says so when the
/// consistent-hash exchange plugin is not enabled).
pub(super) async fn connect_and_declare(
    amqp_url: &Secret,
    names: &TopologyNames,
    partitions: Option<u16>,
) -> Result<Connection, StartupError> {
    let connection = crate::amqp::connect(amqp_url.expose(), &names.work_queue)
        .await
        .map_err(|source| StartupError::Broker {
            url: redact_url_password(amqp_url.expose()),
            source,
        })?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|source| StartupError::Broker {
            url: redact_url_password(amqp_url.expose()),
            source,
        })?;
    topology::declare(&channel, names).await?;
    crate::amqp::migration::migrate_legacy_queues(&connection, names).await?;
    if let Some(partitions) = partitions {
        topology::declare_partitions(&channel, names, partitions).await?;
    }
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(connection)
}

/// Closes a connection, giving up after a few seconds: a connection the broker blocks
/// sends nothing, not even its close; dropping it then ends the socket.
async fn close_bounded(connection: &Connection, code: u16, text: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.close(code, text.into())).await;
}

/// Stops every task of a session and waits until each has ended, so that none runs
/// on (and reaches Okta) beside the next session.
async fn abort_and_wait(tasks: &mut JoinSet<()>) {
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Follows the connection's events for a session: a blocked or unblocked connection
/// (a resource alarm) goes to `/readyz` and `/metrics`; an error ends the session, and
/// its text is returned.
async fn watch_connection(
    events: impl futures_util::Stream<Item = lapin::Event> + Send,
    health: Health,
) -> String {
    tokio::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            lapin::Event::ConnectionBlocked(reason) => {
                health.set_broker_blocked(true);
                tracing::error!(
                    reason = %reason,
                    "the broker blocks the connection (resource alarm): publishes and \
                     acknowledgements wait until it unblocks"
                );
            }
            lapin::Event::ConnectionUnblocked => {
                health.set_broker_blocked(false);
                tracing::info!("the broker unblocked the connection");
            }
            // A channel-level (soft) error is reported here too: every channel this
            // session depends on reports it itself (its consumer stream, the publisher's
            // next publish or tick), and some are expected (the intake lock held by
            // another replica). Only the connection's own failures end the session here.
            lapin::Event::Error(e) if !is_channel_error(&e) => {
                return format!("connection error: {e}")
            }
            _ => {}
        }
    }
    "the connection ended".into()
}

/// Whether `error` closed one channel only (an AMQP soft error), not the connection.
fn is_channel_error(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), lapin::protocol::AMQPErrorKind::Soft(_))
    )
}

/// Checked on every tick: a publishing channel that closed without a publish noticing
/// ends the session (never a silent stall with `/readyz` green); the blocked state is
/// read again in case an event was missed.
fn publishing_problem(
    publisher: &Publisher,
    connection: &Connection,
    health: &Health,
) -> Option<String> {
    health.set_broker_blocked(connection.status().blocked());
    if publisher.is_open() {
        None
    } else {
        Some("the publishing channel closed".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &[(&str, &str)]) -> Settings {
        let mut vars = vec![
            (
                "OKTA_ORG_URL".to_owned(),
                "https://acme.okta.com".to_owned(),
            ),
            ("OKTA_API_TOKEN".to_owned(), "00token".to_owned()),
            ("WORK_QUEUE".to_owned(), "wq".to_owned()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Settings::from_vars(vars, false).expect("valid")
    }

    #[test]
    fn plain_mode_consumes_both_lanes_and_cancels_its_consumers_on_stop() {
        let plan = SessionPlan::for_settings(&settings(&[("LEAVER_CONCURRENCY", "3")]));
        let queues: Vec<(&str, Lane, u16)> = plan
            .queues
            .iter()
            .map(|q| (q.queue.as_str(), q.lane, q.prefetch))
            .collect();
        assert_eq!(
            queues,
            [("wq.leavers", Lane::Leavers, 3), ("wq", Lane::Work, 32)]
        );
        assert!(plan.standby.is_empty());
        assert!(!plan.intake);
        assert!(plan.cancel_consumers_on_stop);
    }

    #[test]
    fn partitioned_mode_prefers_its_partitions_runs_the_intake_and_never_cancels() {
        let plan = SessionPlan::for_settings(&settings(&[
            ("PARTITIONS", "4"),
            ("REPLICAS", "2"),
            ("REPLICA_INDEX", "1"),
            ("PARTITION_STANDBY_DELAY_MS", "700"),
        ]));
        assert!(plan.intake);
        assert!(!plan.cancel_consumers_on_stop);
        assert_eq!(plan.standby_delay, Duration::from_millis(700));
        assert_eq!(plan.queues[0].lane, Lane::Leavers);
        let mut all: Vec<String> = plan.queues[1..]
            .iter()
            .chain(&plan.standby)
            .map(|q| q.queue.clone())
            .collect();
        all.sort();
        let settings = settings(&[]);
        let expected: Vec<String> = (0..4)
            .map(|p| settings.amqp.topology.partition_queue(p))
            .collect();
        assert_eq!(all, expected, "every partition, once");
        assert!(!plan.standby.is_empty() && plan.queues.len() > 1);
        assert!(plan.queues[1..]
            .iter()
            .all(|q| q.consumer_tag.starts_with("iam-provisioner r1 p") && q.lane == Lane::Work));
    }
}
