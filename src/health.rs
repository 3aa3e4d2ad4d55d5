//! Liveness and readiness, as Kubernetes probes and load balancers read them:
//! `/healthz` says the process and its loops are turning; `/readyz` says it can do its
//! job now (broker connected, consumer active), and the body says which part is not.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// The protected groups have not been read yet (`crate::trust::protected`).
    protected_loading: AtomicBool,
    /// Unix milliseconds of the consumer loop's last turn.
    last_tick_ms: AtomicU64,
}

/// A loop that has not turned for this long is considered stuck.
const STUCK_AFTER: Duration = Duration::from_secs(60);

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
        problems
    }

    /// Whether the loops are turning.
    pub fn is_live(&self) -> bool {
        let last = self.inner.last_tick_ms.load(Ordering::Relaxed);
        last == 0 || now_ms().saturating_sub(last) < STUCK_AFTER.as_millis() as u64
    }
}

/// The router of the health endpoints; the metrics route is added beside it.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
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
    (
        status,
        Json(serde_json::json!({"ready": problems.is_empty(), "not_ready": problems})),
    )
}
