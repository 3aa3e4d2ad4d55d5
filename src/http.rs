//! The service's HTTP endpoints. Liveness and readiness, as Kubernetes probes and load
//! balancers read them: `/healthz` says the process and its loops are turning; `/readyz`
//! says it can do its job now (broker connected, consumer active), and the body says
//! which part is not. `/metrics` serves the OpenMetrics text of
//! [`crate::telemetry::metrics`].
//!
//! [`Health`] is a set of plain flags the other parts set; this module reads no other
//! part of the service.

use crate::telemetry::metrics::{MetricsRegistry, CONTENT_TYPE};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

/// The service's health, updated by its loops and read by the HTTP endpoints.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<HealthState>,
}

#[derive(Default)]
struct HealthState {
    broker_connected: AtomicBool,
    consuming: AtomicBool,
    okta_paused: AtomicBool,
    shutting_down: AtomicBool,
    /// The protected accounts have not been read from Okta yet: no event may run.
    protected_loading: AtomicBool,
    /// Unix milliseconds of the consumer loop's last turn.
    last_tick_ms: AtomicU64,
    /// The broker's state as seen by publishing; see [`BrokerState`].
    broker: BrokerState,
}

/// What the broker does to this service's publishing: blocked connections, refused
/// publishes, sessions ended because a publish could not be trusted, and the declaration
/// conflict met on reconnect. Kept apart so that `/readyz` and `/metrics` read one place.
#[derive(Default)]
struct BrokerState {
    /// The broker sent `connection.blocked` (a memory or disk alarm) and no `unblocked` yet.
    blocked: AtomicBool,
    /// Publishes refused (nack or returned) and waiting to be published again right now.
    publishes_waiting: AtomicU64,
    /// Every publish that was not confirmed: refused, returned, timed out or failed.
    publish_failures: AtomicU64,
    /// Sessions ended because a channel or the connection failed under them.
    sessions_lost: AtomicU64,
    /// The last declaration conflict met on reconnect, as the operator must read it.
    conflict: std::sync::Mutex<Option<String>>,
}

/// A loop that has not turned for this long is considered stuck.
const STUCK_AFTER: Duration = Duration::from_secs(60);

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Health {
    pub fn set_broker_connected(&self, value: bool) {
        self.inner.broker_connected.store(value, Ordering::Relaxed);
    }
    pub fn set_consuming(&self, value: bool) {
        self.inner.consuming.store(value, Ordering::Relaxed);
    }
    pub fn set_okta_paused(&self, value: bool) {
        self.inner.okta_paused.store(value, Ordering::Relaxed);
    }
    pub fn set_protected_loading(&self, value: bool) {
        self.inner.protected_loading.store(value, Ordering::Relaxed);
    }
    pub fn set_shutting_down(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
    }
    /// Whether a broker connection is held now.
    pub fn is_broker_connected(&self) -> bool {
        self.inner.broker_connected.load(Ordering::Relaxed)
    }
    /// Whether consumption is paused because Okta is failing.
    pub fn is_okta_paused(&self) -> bool {
        self.inner.okta_paused.load(Ordering::Relaxed)
    }
    /// Records that a loop turned.
    pub fn tick(&self) {
        self.inner.last_tick_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The broker blocked (`true`) or unblocked the connection.
    pub fn set_broker_blocked(&self, value: bool) {
        self.inner.broker.blocked.store(value, Ordering::Relaxed);
    }
    /// Whether the broker holds the connection blocked (a resource alarm).
    pub fn is_broker_blocked(&self) -> bool {
        self.inner.broker.blocked.load(Ordering::Relaxed)
    }
    /// A publish was not confirmed (refused, returned, timed out or failed).
    pub fn publish_failed(&self) {
        self.inner
            .broker
            .publish_failures
            .fetch_add(1, Ordering::Relaxed);
    }
    /// How many publishes were not confirmed since start.
    pub fn publish_failures(&self) -> u64 {
        self.inner.broker.publish_failures.load(Ordering::Relaxed)
    }
    /// A refused publish starts (`true`) or stops (`false`) waiting to be sent again.
    pub fn publish_waiting(&self, waiting: bool) {
        let counter = &self.inner.broker.publishes_waiting;
        if waiting {
            counter.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        }
    }
    /// Refused publishes waiting to be sent again now.
    pub fn publishes_waiting(&self) -> u64 {
        self.inner.broker.publishes_waiting.load(Ordering::Relaxed)
    }
    /// A session ended because the broker closed a channel or the connection under it.
    pub fn session_lost(&self) {
        self.inner
            .broker
            .sessions_lost
            .fetch_add(1, Ordering::Relaxed);
    }
    /// Sessions lost since start.
    pub fn sessions_lost(&self) -> u64 {
        self.inner.broker.sessions_lost.load(Ordering::Relaxed)
    }
    /// The declaration conflict met on the last reconnect, or `None` once declared.
    pub fn set_broker_conflict(&self, conflict: Option<String>) {
        *lock(&self.inner.broker.conflict) = conflict;
    }
    /// The declaration conflict that keeps the service from reconnecting, if any.
    pub fn broker_conflict(&self) -> Option<String> {
        lock(&self.inner.broker.conflict).clone()
    }

    /// What is not ready, empty when ready.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut problems = Vec::new();
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            problems.push("shutting down");
        }
        if !self.inner.broker_connected.load(Ordering::Relaxed) {
            problems.push("broker not connected");
        }
        if !self.inner.consuming.load(Ordering::Relaxed) {
            problems.push("consumer not active");
        }
        if self.inner.okta_paused.load(Ordering::Relaxed) {
            problems.push("consumer paused: Okta is failing");
        }
        if self.inner.protected_loading.load(Ordering::Relaxed) {
            problems.push("protected groups not read from Okta yet: no event is processed");
        }
        if self.is_broker_blocked() {
            problems.push("broker blocked the connection: resource alarm");
        }
        if self.publishes_waiting() > 0 {
            problems.push("publishes refused by the broker: deliveries wait unacknowledged");
        }
        if lock(&self.inner.broker.conflict).is_some() {
            problems.push("broker objects conflict with the service's declarations");
        }
        problems
    }

    /// Whether the loops are turning.
    pub fn is_live(&self) -> bool {
        let last = self.inner.last_tick_ms.load(Ordering::Relaxed);
        last == 0 || now_ms().saturating_sub(last) < STUCK_AFTER.as_millis() as u64
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until `shutdown` completes;
/// requests in progress then finish.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    registry: Arc<MetricsRegistry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = router(health).merge(metrics_router(registry));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "health endpoint stopped");
    }
}

/// The router of the health endpoints.
fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// The `/metrics` route.
fn metrics_router(registry: Arc<MetricsRegistry>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .with_state(registry)
}

async fn serve_metrics(State(registry): State<Arc<MetricsRegistry>>) -> impl IntoResponse {
    match registry.render() {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "cannot render metrics\n".to_owned(),
        ),
    }
}

async fn healthz(State(health): State<Health>) -> impl IntoResponse {
    if health.is_live() {
        (StatusCode::OK, Json(serde_json::json!({"live": true})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"live": false, "problem": "consumer loop has not turned for 60 s"}),
            ),
        )
    }
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let problems = health.not_ready();
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::json!({"ready": problems.is_empty(), "not_ready": problems});
    // The conflict names the object and the argument: what the operator must fix.
    if let Some(conflict) = health.broker_conflict() {
        body["broker_conflict"] = serde_json::Value::String(conflict);
    }
    (status, Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Health {
        let health = Health::default();
        health.set_broker_connected(true);
        health.set_consuming(true);
        health
    }

    #[test]
    fn a_blocked_connection_is_not_ready_until_unblocked() {
        let health = ready();
        assert!(health.not_ready().is_empty());
        health.set_broker_blocked(true);
        assert_eq!(
            health.not_ready(),
            vec!["broker blocked the connection: resource alarm"]
        );
        health.set_broker_blocked(false);
        assert!(health.not_ready().is_empty());
    }

    #[test]
    fn refused_publishes_are_not_ready_while_any_waits() {
        let health = ready();
        health.publish_waiting(true);
        health.publish_waiting(true);
        health.publish_waiting(false);
        assert_eq!(health.publishes_waiting(), 1);
        assert_eq!(health.not_ready().len(), 1);
        health.publish_waiting(false);
        // Never below zero, whatever the order of the guards.
        health.publish_waiting(false);
        assert_eq!(health.publishes_waiting(), 0);
        assert!(health.not_ready().is_empty());
    }

    #[test]
    fn a_declaration_conflict_is_shown_until_cleared() {
        let health = ready();
        health.set_broker_conflict(Some("inequivalent arg 'x-max-length'".into()));
        assert_eq!(
            health.not_ready(),
            vec!["broker objects conflict with the service's declarations"]
        );
        assert!(health
            .broker_conflict()
            .is_some_and(|c| c.contains("x-max-length")));
        health.set_broker_conflict(None);
        assert!(health.not_ready().is_empty());
    }
}
