//! The application: builds every part from [`Settings`], then runs the consumer until a
//! shutdown future completes. Tests build the same application with their own settings.
//!
//! Start-up fails fast and clearly (broker unreachable, topology conflict, HTTP address
//! taken). After start-up, a lost broker connection is survived: the session ends, its
//! unfinished deliveries are left to the broker, and a new session connects with backoff
//! and declares the topology again.

pub mod mapping_reload;

use crate::amqp::intake::{Intake, LOCK_RETRY};
use crate::amqp::publisher::{Publisher, SessionLink};
use crate::amqp::topology::{self, TopologyError, TopologyNames};
use crate::amqp::{decode, settle};
use crate::config::secret::{redact_url_password, Secret};
use crate::config::{Partitioning, Settings};
use crate::domain::mapping::GroupMapping;
use crate::domain::partition::preferred_partitions;
use crate::http::{self, Health};
use crate::okta::groups::GroupDirectory;
use crate::okta::{OktaAuth, OktaClient};
use crate::pipeline::circuit::OktaCircuit;
use crate::pipeline::deferral::Deferral;
use crate::pipeline::lanes::{Lane, Lanes};
use crate::pipeline::provisioner::{Provisioner, SharedMapping};
use crate::pipeline::sequencer::Sequencer;
use crate::pipeline::worker::Worker;
use crate::telemetry::metrics::{self, Metrics, MetricsRegistry};
use backon::BackoffBuilder;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot connect to the broker at {url}")]
    Broker {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("cannot set up the Okta client")]
    Okta(#[from] crate::okta::client::OktaSetupError),
    #[error("cannot listen on HTTP_LISTEN {address}")]
    Http {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Where Okta is, once any fake has been started, and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct OktaEndpoint {
    pub url: reqwest::Url,
    pub auth: OktaAuth,
}

impl OktaEndpoint {
    /// An org reached with an SSWS API token.
    pub fn with_api_token(url: reqwest::Url, api_token: Secret) -> Self {
        Self {
            url,
            auth: OktaAuth::ApiToken(api_token),
        }
    }
}

/// A built application, ready to run.
pub struct Application {
    settings: Settings,
    worker: Arc<Worker>,
    health: Health,
    sequencer: Sequencer,
    first_connection: Option<Connection>,
    http_listener: Option<TcpListener>,
    http_address: SocketAddr,
    metrics_registry: Arc<MetricsRegistry>,
}

impl Application {
    /// Builds everything and checks the broker: connects, declares the topology, warms
    /// the group cache, binds the HTTP address.
    ///
    /// # Errors
    /// [`StartupError`] naming what failed.
    pub async fn build(
        settings: Settings,
        okta: OktaEndpoint,
        mapping: GroupMapping,
    ) -> Result<Self, StartupError> {
        let metrics = Metrics::new();
        let client = OktaClient::with_auth_and_metrics(
            okta.url.clone(),
            &okta.auth,
            settings.okta_client.clone(),
            metrics.clone(),
        )?;
        let groups = GroupDirectory::new(client.clone(), settings.group_cache_ttl);
        let protected = crate::trust::ProtectedAccounts::new(
            settings.trust.protected.clone(),
            metrics.trust().clone(),
        );
        let provisioner = Arc::new(
            Provisioner::new(
                client,
                groups,
                SharedMapping::new(mapping),
                settings.offboarding,
            )
            .with_protected(protected),
        );

        let connection = connect_and_declare_partitioned(
            &settings.amqp_url,
            &settings.topology,
            settings.partitioning.map(|p| p.partitions),
        )
        .await?;

        for problem in provisioner.warm_group_cache().await {
            tracing::warn!(
                problem = crate::telemetry::error_chain(&problem),
                "a mapped group cannot be used; events that need it will be dead-lettered"
            );
        }

        let http_listener = TcpListener::bind(settings.http_listen)
            .await
            .map_err(|source| StartupError::Http {
                address: settings.http_listen,
                source,
            })?;
        let http_address = http_listener
            .local_addr()
            .map_err(|source| StartupError::Http {
                address: settings.http_listen,
                source,
            })?;

        let health = Health::default();
        health.set_broker_connected(true);
        let metrics_registry = Arc::new(MetricsRegistry::new(
            &metrics,
            Arc::clone(&provisioner),
            health.clone(),
        ));
        let trust = crate::trust::Trust::new(
            &settings.topology,
            settings.trust.clone(),
            metrics.trust().clone(),
        );
        Ok(Self {
            worker: Arc::new(Worker {
                provisioner,
                retry: settings.retry,
                circuit: OktaCircuit::new(settings.okta_outage_threshold),
                metrics,
                deferral: Deferral::new(
                    &settings.topology.work_queue,
                    settings.activation_time,
                    settings.offboarding_guard,
                    settings.dry_run,
                )
                .with_removal_recheck(settings.removal_recheck),
                // Partitioned, per-employee order across replicas comes from the
                // partitions, which the leavers lane would bypass: its copies are only
                // drained there (see `crate::pipeline::lanes`).
                lanes: match settings.partitioning {
                    None => Lanes::new(&settings.topology.input_exchange),
                    Some(_) => Lanes::draining(&settings.topology.input_exchange),
                },
                trust,
            }),
            settings,
            health,
            sequencer: Sequencer::new(),
            first_connection: Some(connection),
            http_listener: Some(http_listener),
            http_address,
            metrics_registry,
        })
    }

    /// The address the health endpoints listen on (useful with port 0).
    pub fn http_address(&self) -> SocketAddr {
        self.http_address
    }

    /// Runs until `shutdown` completes, then stops consuming, lets in-flight work finish
    /// (or hands it back to the broker) within the shutdown timeout, and closes.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()> + Send) {
        let stop = CancellationToken::new();
        let health = self.health.clone();
        let registry = Arc::clone(&self.metrics_registry);
        let http = self.http_listener.take().map(|listener| {
            tokio::spawn(serve_http(listener, health.clone(), registry, stop.clone()))
        });
        let prober = tokio::spawn(probe_okta_while_down(
            self.worker.circuit.clone(),
            self.worker.provisioner.okta().clone(),
            health.clone(),
            stop.clone(),
        ));
        let reload = self.settings.mapping_file.clone().map(|path| {
            tokio::spawn(crate::app::mapping_reload::watch(
                path,
                self.settings.mapping_poll,
                Arc::clone(&self.worker.provisioner),
                stop.clone(),
            ))
        });
        let protected = self.spawn_protected_refresh(&health, &stop);
        let dead_letter_watch = tokio::spawn(crate::amqp::dead_letter_watch::run(
            self.settings.amqp_url.clone(),
            self.settings.topology.clone(),
            stop.clone(),
        ));
        let sessions = self.run_sessions(stop.clone());
        tokio::pin!(sessions);
        tokio::select! {
            () = shutdown => {
                tracing::info!("shutdown requested; finishing in-flight work");
                health.set_shutting_down();
                stop.cancel();
                sessions.await;
            }
            () = &mut sessions => {}
        }
        stop.cancel();
        let _ = prober.await;
        let _ = protected.await;
        let _ = dead_letter_watch.await;
        if let Some(reload) = reload {
            let _ = reload.await;
        }
        if let Some(http) = http {
            let _ = http.await;
        }
        tracing::info!("stopped");
    }

    /// Reads the protected groups now and then (`crate::trust::protected`); `/readyz`
    /// says "not ready" until the first read succeeded, since no event runs before.
    fn spawn_protected_refresh(
        &self,
        health: &Health,
        stop: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let protected = self.worker.provisioner.protected().clone();
        let okta = self.worker.provisioner.okta().clone();
        let health = health.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            if protected.is_loaded() {
                return;
            }
            health.set_protected_loading(true);
            let refresh = tokio::spawn(protected.clone().run_refresh(okta, stop.clone()));
            tokio::select! {
                _ = protected.wait_loaded() => health.set_protected_loading(false),
                _ = stop.cancelled() => {}
            }
            let _ = refresh.await;
        })
    }

    async fn run_sessions(&mut self, stop: CancellationToken) {
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
                    match connect_and_declare_partitioned(
                        &self.settings.amqp_url,
                        &self.settings.topology,
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
            let end = match self.settings.partitioning {
                None => self.run_session(&connection, &stop).await,
                Some(partitioning) => {
                    self.run_partitioned_session(&connection, &stop, partitioning)
                        .await
                }
            };
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

    async fn run_session(&self, connection: &Connection, stop: &CancellationToken) -> SessionEnd {
        let names = &self.settings.topology;
        let hand_back = CancellationToken::new();
        let broken = CancellationToken::new();
        // Listening from the start: the broker may block the connection at any time.
        let watch = watch_connection(connection.events_listener(), self.health.clone());
        tokio::pin!(watch);
        let setup = async {
            let publisher = Publisher::open(
                connection,
                &names.results_exchange,
                &names.dead_letter_exchange,
            )
            .await?
            .with_metrics(self.worker.metrics.clone())
            .with_simulated_okta(self.settings.okta.is_simulated())
            .with_confirm_timeout(self.settings.publish_confirm_timeout)
            .for_session(self.session_link(&hand_back, &broken));
            // One channel per lane, each with its own prefetch: the leavers lane's few
            // slots are never taken by hires.
            let work = self
                .consume(connection, &names.work_queue, self.settings.concurrency)
                .await?;
            let leavers = self.consume_leavers(connection).await?;
            Ok::<_, lapin::Error>((Arc::new(publisher), work, leavers))
        };
        let (publisher, (channel, mut consumer), (leavers_channel, mut leavers)) = match setup.await
        {
            Ok(parts) => parts,
            Err(e) => return SessionEnd::Lost(e.to_string()),
        };
        self.health.set_consuming(true);
        tracing::info!(
            queue = %names.work_queue,
            concurrency = self.settings.concurrency,
            leavers_queue = %names.leavers_queue(),
            leaver_concurrency = self.settings.leaver_concurrency,
            "consuming"
        );

        let mut tasks = JoinSet::new();
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
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
            let (next, lane) = tokio::select! {
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
                _ = circuit.wait_closed(), if okta_down => continue,
                _ = circuit.wait_open(), if !okta_down => continue,
                next = leavers.next() => (next, Lane::Leavers),
                next = consumer.next() => (next, Lane::Work),
            };
            match next {
                Some(Ok(delivery)) if circuit.is_open() || !waiting.is_empty() => {
                    waiting.push_back((delivery, lane));
                }
                Some(Ok(delivery)) => {
                    self.start_delivery(delivery, lane, &publisher, &hand_back, &mut tasks);
                }
                Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                None => {
                    break SessionEnd::Lost(format!(
                        "the broker cancelled the consumer of the {} lane",
                        lane.as_str()
                    ))
                }
            }
        };

        if matches!(end, SessionEnd::Stopped) {
            // Stop new deliveries first; what was prefetched but not started is returned
            // to the queue when the channel closes.
            let _ = channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
            let _ = leavers_channel
                .basic_cancel(leavers.tag(), BasicCancelOptions::default())
                .await;
            // Waiting work (a backoff, a turn) is handed back at once; work talking to
            // Okta is given the shutdown timeout to finish.
            hand_back.cancel();
            let drained = tokio::time::timeout(self.settings.shutdown_timeout, async {
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
            // Closing the channels returns whatever was not acknowledged to the queue.
            let _ = channel.close(200, "shutting down".into()).await;
            let _ = leavers_channel.close(200, "shutting down".into()).await;
            publisher.close().await;
        } else {
            // The broker has requeued (or is requeuing) everything unacknowledged, and a
            // new session may soon receive it again: no task of this one may reach Okta
            // after that, so all are stopped, and waited for, before this returns.
            hand_back.cancel();
            abort_and_wait(&mut tasks).await;
        }
        end
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

/// A session that lasted this long resets the reconnection delays.
const STABLE_SESSION: Duration = Duration::from_secs(30);

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

impl Application {
    /// Opens a channel with `prefetch` and consumes `queue` on it.
    async fn consume(
        &self,
        connection: &Connection,
        queue: &str,
        prefetch: u16,
    ) -> Result<(Channel, lapin::Consumer), lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer))
    }

    /// The leavers lane's channel and consumer (`LEAVER_CONCURRENCY` is its prefetch).
    async fn consume_leavers(
        &self,
        connection: &Connection,
    ) -> Result<(Channel, lapin::Consumer), lapin::Error> {
        let queue = self.settings.topology.leavers_queue();
        self.consume(connection, &queue, self.settings.leaver_concurrency)
            .await
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
            self.settings.max_message_bytes,
        );
        let turn = self.sequencer.register(decoded.ordering_keys());
        let worker = Arc::clone(&self.worker);
        let publisher = Arc::clone(publisher);
        let hand_back = hand_back.clone();
        tasks.spawn(async move {
            settle::deliver(&worker, inbound, decoded, turn, &publisher, &hand_back).await
        });
    }

    /// Partitioned mode: one session consumes every partition queue (its preferred ones
    /// at once, the others after the standby delay) and, when it holds the lock, runs the
    /// intake. Partition queues have single active consumer, so this replica receives
    /// only from the partitions it owns.
    ///
    /// Stopping differs from the single-queue session: consumers are not cancelled,
    /// because cancelling the active consumer of a single-active-consumer queue lets the
    /// next one start while this one still works on its deliveries. Instead the channels
    /// are closed once the work in progress has finished, which hands the rest back and
    /// the partition over in one step, in order.
    async fn run_partitioned_session(
        &self,
        connection: &Connection,
        stop: &CancellationToken,
        partitioning: Partitioning,
    ) -> SessionEnd {
        let names = &self.settings.topology;
        let preferred = preferred_partitions(partitioning.partitions, partitioning.slot);
        let standby: Vec<u16> = (0..partitioning.partitions)
            .filter(|p| !preferred.contains(p))
            .collect();
        let hand_back = CancellationToken::new();
        let broken = CancellationToken::new();
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
                    .with_simulated_okta(self.settings.okta.is_simulated())
                    .with_confirm_timeout(self.settings.publish_confirm_timeout)
                    .for_session(self.session_link(&hand_back, &broken)),
            ),
            Err(e) => return SessionEnd::Lost(e.to_string()),
        };
        // The leavers queue is declared in every mode; partitioned, its copies are only
        // acknowledged (their twins come through the partitions, in order).
        let (leavers_channel, mut leavers) = match self.consume_leavers(connection).await {
            Ok(parts) => parts,
            Err(e) => return SessionEnd::Lost(e.to_string()),
        };
        let mut channels = vec![leavers_channel];
        let mut consumers = futures_util::stream::SelectAll::new();
        for &partition in &preferred {
            match self.subscribe_partition(connection, partition).await {
                Ok((channel, stream)) => {
                    channels.push(channel);
                    consumers.push(stream);
                }
                Err(e) => return SessionEnd::Lost(e.to_string()),
            }
        }
        let intake_stop = stop.child_token();
        // Polled by the loop below rather than spawned: it borrows the connection.
        let intake = run_intake(
            Intake {
                names: names.clone(),
                max_body_bytes: self.settings.max_message_bytes,
                trust: self.worker.trust.clone(),
            },
            connection,
            &intake_stop,
        );
        tokio::pin!(intake);
        let mut intake_running = true;
        self.health.set_consuming(true);
        tracing::info!(
            replica = partitioning.slot.index,
            replicas = partitioning.slot.replicas,
            preferred = ?preferred,
            standby_in_ms = partitioning.standby_delay.as_millis() as u64,
            concurrency = self.settings.concurrency,
            "consuming partitions"
        );

        let mut tasks = JoinSet::new();
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        let standby_timer = tokio::time::sleep(partitioning.standby_delay);
        tokio::pin!(standby_timer);
        let mut standby_pending = !standby.is_empty();
        let circuit = &self.worker.circuit;
        // As in the single-queue session: taken while Okta is down, started once it
        // answers, so that a closed channel is noticed at once.
        let mut waiting: VecDeque<(Delivery, Lane)> = VecDeque::new();
        let end = loop {
            let okta_down = circuit.is_open();
            if !okta_down {
                if let Some((delivery, lane)) = waiting.pop_front() {
                    self.start_delivery(delivery, lane, &publisher, &hand_back, &mut tasks);
                    continue;
                }
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => break SessionEnd::Stopped,
                _ = broken.cancelled() => break SessionEnd::Lost(
                    publisher.session_failure().unwrap_or_else(|| "a publish failed".into())
                ),
                reason = &mut watch => break SessionEnd::Lost(reason),
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = ticker.tick() => {
                    self.health.tick();
                    if let Some(reason) = publishing_problem(&publisher, connection, &self.health) {
                        break SessionEnd::Lost(reason);
                    }
                }
                () = &mut intake, if intake_running => intake_running = false,
                _ = circuit.wait_closed(), if okta_down => {}
                _ = circuit.wait_open(), if !okta_down => {}
                () = &mut standby_timer, if standby_pending => {
                    standby_pending = false;
                    let mut failed = None;
                    for &partition in &standby {
                        match self.subscribe_partition(connection, partition).await {
                            Ok((channel, stream)) => {
                                channels.push(channel);
                                consumers.push(stream);
                            }
                            Err(e) => {
                                failed = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    if let Some(reason) = failed {
                        break SessionEnd::Lost(reason);
                    }
                    tracing::info!(standby = ?standby, "subscribed as standby");
                }
                next = leavers.next() => match next {
                    Some(Ok(delivery)) if okta_down => waiting.push_back((delivery, Lane::Leavers)),
                    Some(Ok(delivery)) => {
                        self.start_delivery(delivery, Lane::Leavers, &publisher, &hand_back, &mut tasks);
                    }
                    Some(Err(e)) => break SessionEnd::Lost(format!("leavers lane: {e}")),
                    None => {
                        break SessionEnd::Lost(
                            "the broker cancelled the consumer of the leavers lane".into(),
                        );
                    }
                },
                next = consumers.next(), if !consumers.is_empty() => match next {
                    Some((_, Some(Ok(delivery)))) if okta_down => {
                        waiting.push_back((delivery, Lane::Work));
                    }
                    Some((_, Some(Ok(delivery)))) => {
                        self.start_delivery(delivery, Lane::Work, &publisher, &hand_back, &mut tasks);
                    }
                    Some((partition, Some(Err(e)))) => {
                        break SessionEnd::Lost(format!("partition {partition}: {e}"));
                    }
                    Some((partition, None)) => {
                        break SessionEnd::Lost(format!(
                            "the broker cancelled the consumer of partition {partition}"
                        ));
                    }
                    None => {}
                },
            }
        };

        intake_stop.cancel();
        if intake_running {
            intake.await;
        }
        hand_back.cancel();
        if matches!(end, SessionEnd::Stopped) {
            let drained = tokio::time::timeout(self.settings.shutdown_timeout, async {
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
            for channel in &channels {
                let _ = channel.close(200, "shutting down".into()).await;
            }
            publisher.close().await;
        } else {
            // Another replica takes these partitions over now: stop every task, and wait
            // until each has ended, so none of them reaches Okta beside the new owner.
            abort_and_wait(&mut tasks).await;
        }
        end
    }

    /// Subscribes to one partition on a channel of its own (closing it hands exactly
    /// that partition back), with the consumer tag naming the replica and partition.
    async fn subscribe_partition(
        &self,
        connection: &Connection,
        partition: u16,
    ) -> Result<(Channel, PartitionStream), lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(self.settings.concurrency, BasicQosOptions::default())
            .await?;
        let slot = self
            .settings
            .partitioning
            .map(|p| p.slot.index)
            .unwrap_or_default();
        let consumer = channel
            .basic_consume(
                self.settings
                    .topology
                    .partition_queue(partition)
                    .as_str()
                    .into(),
                format!("iam-provisioner r{slot} p{partition}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // A final `None` tells the session that the broker ended this consumer.
        let stream = consumer
            .map(move |delivery| (partition, Some(delivery)))
            .chain(futures_util::stream::once(async move { (partition, None) }))
            .boxed();
        Ok((channel, stream))
    }
}

type PartitionStream =
    futures_util::stream::BoxStream<'static, (u16, Option<Result<Delivery, lapin::Error>>)>;

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

/// While the circuit is open, asks Okta with backoff whether it answers again, and
/// closes the circuit when it does. `/readyz` reports the pause meanwhile.
async fn probe_okta_while_down(
    circuit: OktaCircuit,
    okta: OktaClient,
    health: Health,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = circuit.wait_open() => {}
            _ = stop.cancelled() => return,
        }
        health.set_okta_paused(true);
        tracing::error!("Okta is failing consistently: consuming paused until it answers again");
        let started = std::time::Instant::now();
        let mut attempt = 0u32;
        let mut delays = patient_backoff();
        loop {
            let delay = delays.next().unwrap_or(Duration::from_secs(30));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
            match okta.probe().await {
                Ok(()) => break,
                Err(e) if e.kind() == crate::domain::outcome::ErrorKind::Transient => {
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(error = %e, attempt, "Okta still failing");
                }
                // Any answer but a transient failure means Okta is up (a 429 or a 403 is
                // Okta talking); events will meet whatever it is themselves.
                Err(_) => break,
            }
        }
        circuit.close();
        health.set_okta_paused(false);
        tracing::info!(
            paused_for_s = started.elapsed().as_secs(),
            "Okta answers again: consuming resumed"
        );
    }
}

enum SessionEnd {
    Stopped,
    Lost(String),
}

/// Connects and declares the topology.
///
/// # Errors
/// [`StartupError::Broker`] or [`StartupError::Topology`].
pub async fn connect_and_declare(
    amqp_url: &Secret,
    names: &TopologyNames,
) -> Result<Connection, StartupError> {
    connect_and_declare_partitioned(amqp_url, names, None).await
}

/// Connects and declares the topology, with `partitions` partition queues and their
/// exchange when partitioned.
///
/// # Errors
/// [`StartupError::Broker`] or [`StartupError::Topology`] (which says so when the
/// consistent-hash exchange plugin is not enabled).
pub async fn connect_and_declare_partitioned(
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

/// Delays between reconnection attempts or Okta probes: from 0.2 s, doubling to 30 s,
/// with jitter so that replicas do not knock all at once; never gives up.
fn patient_backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

async fn serve_http(
    listener: TcpListener,
    health: Health,
    registry: Arc<MetricsRegistry>,
    stop: CancellationToken,
) {
    let app = http::router(health).merge(metrics::router(registry));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "health endpoint stopped");
    }
}
