//! The application: builds every part from [`Settings`], then runs the consumer until a
//! shutdown future completes. Tests build the same application with their own settings.
//!
//! Start-up fails fast and clearly (broker unreachable, topology conflict, HTTP address
//! taken). After start-up, a lost broker connection is survived: the session ends, its
//! unfinished deliveries are left to the broker, and a new session connects with backoff
//! and declares the topology again.

pub mod mapping_reload;
mod session;
mod shutdown;

use crate::amqp::topology::TopologyError;
use crate::config::Settings;
use crate::domain::mapping::GroupMapping;
use crate::http::Health;
use crate::okta::groups::{CacheStatsReader, GroupDirectory};
use crate::okta::{OktaAuth, OktaClient};
use crate::pipeline::circuit::OktaCircuit;
use crate::pipeline::deferral::Deferral;
use crate::pipeline::lanes::{Lane, Lanes};
use crate::pipeline::provisioner::{Provisioner, SharedMapping};
use crate::pipeline::sequencer::Sequencer;
use crate::pipeline::worker::Worker;
use crate::secret::Secret;
use crate::telemetry::metrics::{CacheCounts, LaneLabel, Metrics, MetricsRegistry, ScrapedState};
use crate::trust::TrustMetrics;
use backon::BackoffBuilder;
use lapin::Connection;
use shutdown::Shutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
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
    Okta(#[from] crate::okta::auth::OktaSetupError),
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
        let trust_metrics = TrustMetrics::new();
        let client = OktaClient::with_auth_and_metrics(
            okta.url.clone(),
            &okta.auth,
            settings.okta.client.clone(),
            metrics.clone(),
        )?;
        let groups = GroupDirectory::new(client.clone(), settings.okta.group_cache_ttl);
        let protected = crate::trust::ProtectedAccounts::new(
            settings.trust.protected.clone(),
            trust_metrics.clone(),
        );
        let provisioner = Arc::new(
            Provisioner::new(
                client,
                groups,
                SharedMapping::new(mapping),
                settings.pipeline.offboarding,
            )
            .with_protected(protected),
        );

        let connection = session::connect_and_declare(
            &settings.amqp.url,
            &settings.amqp.topology,
            settings.partitioning.map(|p| p.partitions),
        )
        .await?;

        for problem in provisioner.warm_group_cache().await {
            tracing::warn!(
                problem = crate::telemetry::error_chain(&problem),
                "a mapped group cannot be used; events that need it will be dead-lettered"
            );
        }

        let listen = settings.http.listen;
        let http_listener =
            TcpListener::bind(listen)
                .await
                .map_err(|source| StartupError::Http {
                    address: listen,
                    source,
                })?;
        let http_address = http_listener
            .local_addr()
            .map_err(|source| StartupError::Http {
                address: listen,
                source,
            })?;

        let health = Health::default();
        health.set_broker_connected(true);
        let mut metrics_registry = MetricsRegistry::new(
            &metrics,
            Scraped {
                group_cache: provisioner.groups().stats_reader(),
                okta: provisioner.okta().clone(),
                health: health.clone(),
            },
        );
        metrics_registry.register(|registry| trust_metrics.register(registry));
        let metrics_registry = Arc::new(metrics_registry);
        let trust = crate::trust::Trust::new(
            &settings.amqp.topology,
            settings.trust.clone(),
            trust_metrics,
        );
        Ok(Self {
            worker: Arc::new(Worker {
                provisioner,
                retry: settings.pipeline.retry,
                circuit: OktaCircuit::new(settings.pipeline.okta_outage_threshold),
                metrics,
                deferral: Deferral::new(
                    &settings.amqp.topology.work_queue,
                    settings.pipeline.activation_time,
                    settings.pipeline.offboarding_guard,
                    settings.pipeline.dry_run,
                )
                .with_removal_recheck(settings.pipeline.removal_recheck),
                // Partitioned, per-employee order across replicas comes from the
                // partitions, which the leavers lane would bypass: its copies are only
                // drained there (see `crate::pipeline::lanes`).
                lanes: match settings.partitioning {
                    None => Lanes::new(&settings.amqp.topology.input_exchange),
                    Some(_) => Lanes::draining(&settings.amqp.topology.input_exchange),
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
    ///
    /// Shutdown follows one idiom (see [`shutdown`]): every task, the session included,
    /// gets the same cancellation token; the session drains its deliveries within
    /// `SHUTDOWN_TIMEOUT_SECS`, the tasks around it are then waited for within a bound.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()> + Send) {
        let mut tasks = Shutdown::new();
        let health = self.health.clone();
        if let Some(listener) = self.http_listener.take() {
            let stop = tasks.token();
            tasks.spawn(crate::http::serve(
                listener,
                health.clone(),
                Arc::clone(&self.metrics_registry),
                async move { stop.cancelled().await },
            ));
        }
        tasks.spawn(probe_okta_while_down(
            self.worker.circuit.clone(),
            self.worker.provisioner.okta().clone(),
            health.clone(),
            tasks.token(),
        ));
        if let Some(path) = self.settings.mapping.file() {
            tasks.spawn(crate::app::mapping_reload::watch(
                path.to_owned(),
                self.settings.mapping.poll,
                Arc::clone(&self.worker.provisioner),
                tasks.token(),
            ));
        }
        tasks.spawn(self.protected_refresh(&health, tasks.token()));
        tasks.spawn(crate::amqp::dead_letter_watch::run(
            self.settings.amqp.url.clone(),
            self.settings.amqp.topology.clone(),
            tasks.token(),
        ));
        let stop = tasks.token();
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
        if !tasks.is_started() {
            tracing::info!("the sessions ended; stopping");
        }
        tasks.drain(shutdown::BACKGROUND_DRAIN).await;
        tracing::info!("stopped");
    }

    /// Reads the protected groups now and then (`crate::trust::protected`); `/readyz`
    /// says "not ready" until the first read succeeded, since no event runs before.
    fn protected_refresh(
        &self,
        health: &Health,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let protected = self.worker.provisioner.protected().clone();
        let okta = self.worker.provisioner.okta().clone();
        let health = health.clone();
        async move {
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
        }
    }
}

/// What `/metrics` reads at scrape time, from the parts that keep it: the group cache's
/// counters, the Okta client's last rate-limit figure, and the health flags.
struct Scraped {
    group_cache: CacheStatsReader,
    okta: OktaClient,
    health: Health,
}

impl ScrapedState for Scraped {
    fn group_cache(&self) -> CacheCounts {
        let stats = self.group_cache.get();
        CacheCounts {
            hits: stats.hits,
            misses: stats.misses,
            refreshes: stats.refreshes,
        }
    }
    fn okta_rate_limit_remaining(&self) -> Option<i64> {
        self.okta.last_rate_limit_remaining()
    }
    fn consumer_paused(&self) -> bool {
        self.health.is_okta_paused()
    }
    fn broker_connected(&self) -> bool {
        self.health.is_broker_connected()
    }
    fn broker_blocked(&self) -> bool {
        self.health.is_broker_blocked()
    }
    fn publishes_waiting(&self) -> u64 {
        self.health.publishes_waiting()
    }
    fn publish_failures(&self) -> u64 {
        self.health.publish_failures()
    }
    fn sessions_lost(&self) -> u64 {
        self.health.sessions_lost()
    }
}

/// Lanes are labelled by their name; told here, where both are known, so that telemetry
/// does not depend on the pipeline.
impl LaneLabel for Lane {
    fn lane_label(self) -> &'static str {
        self.as_str()
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

/// Delays between reconnection attempts or Okta probes: from 0.2 s, doubling to 30 s,
/// with jitter so that replicas do not knock all at once; never gives up.
pub(super) fn patient_backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}
