//! Unauthenticated `/__sim/` routes for a person running the fake beside the service
//! (docker-compose, curl): look at users and groups, seed them, inject faults, change
//! latency, outages and limits, read the request log. Tests use [`OktaSim`](super::OktaSim)
//! methods instead.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::limits::{RateLimit, SimBucket};
use super::state::{timestamp, GroupType, UserStatus};
use super::store::{Fault, FaultKind, Shared};

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/__sim/users", get(users).post(create_user))
        .route("/__sim/users/bulk", post(create_users))
        .route("/__sim/groups", get(groups).post(create_group))
        .route("/__sim/faults", post(inject_fault))
        .route("/__sim/settings", post(settings))
        .route("/__sim/requests", get(requests).delete(clear_requests))
        .route("/__sim/emails", get(emails))
}

/// Every user with its status and group names.
async fn users(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let store = shared.store();
    let directory = &store.directory;
    let users = directory.users.iter().map(|u| {
        let mut groups: Vec<&str> = directory.groups_of(&u.id).iter().map(|g| g.name.as_str()).collect();
        groups.sort_unstable();
        json!({
            "id": u.id, "login": u.login(), "status": u.status, "profile": u.profile, "groups": groups,
            "statusChanged": u.status_changed.map(timestamp), "sessionsRevoked": u.sessions_revoked,
        })
    });
    Json(Value::Array(users.collect()))
}

/// `{"profile": {...}, "status": "ACTIVE"}`: seeds a user without validation.
#[derive(Deserialize)]
struct NewUser {
    profile: Map<String, Value>,
    status: UserStatus,
}

async fn create_user(
    State(shared): State<Arc<Shared>>,
    Json(user): Json<NewUser>,
) -> (StatusCode, Json<Value>) {
    let id = shared
        .store()
        .directory
        .insert_user(user.profile, user.status);
    (StatusCode::CREATED, Json(json!({ "id": id })))
}

/// One user of `POST /__sim/users/bulk`: as `POST /__sim/users`, plus group ids.
#[derive(Deserialize)]
struct NewMember {
    profile: Map<String, Value>,
    status: UserStatus,
    #[serde(default)]
    groups: Vec<String>,
}

/// `[{"profile": {...}, "status": "ACTIVE", "groups": ["00g…"]}, …]`: seeds many users
/// under one lock (a benchmark's 100,000 without 100,000 requests).
async fn create_users(
    State(shared): State<Arc<Shared>>,
    Json(users): Json<Vec<NewMember>>,
) -> (StatusCode, Json<Value>) {
    let mut store = shared.store();
    let directory = &mut store.directory;
    let count = users.len();
    for user in users {
        let id = directory.insert_user(user.profile, user.status);
        for group in &user.groups {
            directory.add_member(group, &id);
        }
    }
    (StatusCode::CREATED, Json(json!({ "created": count })))
}

async fn groups(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let store = shared.store();
    let groups = store.directory.groups.iter().map(|g| {
        let members = store.directory.members_of(&g.id).len();
        json!({"id": g.id, "name": g.name, "type": g.kind, "members": members})
    });
    Json(Value::Array(groups.collect()))
}

/// `{"name": "Sales", "type": "OKTA_GROUP"}` (type optional).
#[derive(Deserialize)]
struct NewGroup {
    name: String,
    #[serde(rename = "type")]
    kind: Option<GroupType>,
}

async fn create_group(
    State(shared): State<Arc<Shared>>,
    Json(group): Json<NewGroup>,
) -> (StatusCode, Json<Value>) {
    let kind = group.kind.unwrap_or(GroupType::OktaGroup);
    let id = shared
        .store()
        .directory
        .insert_group(&group.name, kind, None);
    (StatusCode::CREATED, Json(json!({ "id": id })))
}

/// `{"method": "POST", "path_contains": "/users", "times": 2, "kind": "status",
/// "status": 503, "error_code": "E0000009"}`; `kind` may also be `hang` (with
/// `hang_ms`) or `close_connection`. `times` defaults to 1.
#[derive(Deserialize)]
struct NewFault {
    method: Option<String>,
    path_contains: Option<String>,
    times: Option<u32>,
    kind: String,
    status: Option<u16>,
    error_code: Option<String>,
    hang_ms: Option<u64>,
}

async fn inject_fault(
    State(shared): State<Arc<Shared>>,
    Json(fault): Json<NewFault>,
) -> (StatusCode, String) {
    let kind = match (fault.kind.as_str(), fault.status, fault.hang_ms) {
        ("status", Some(status), _) => FaultKind::Status {
            status,
            error_code: fault.error_code.unwrap_or_default(),
        },
        ("hang", _, Some(ms)) => FaultKind::Hang(Duration::from_millis(ms)),
        ("close_connection", _, _) => FaultKind::CloseConnection,
        _ => {
            let help = "kind must be status (with status), hang (with hang_ms) or close_connection";
            return (StatusCode::BAD_REQUEST, help.into());
        }
    };
    shared.store().faults.push(Fault {
        method: fault.method,
        path_contains: fault.path_contains,
        times: fault.times.unwrap_or(1),
        kind,
    });
    (StatusCode::NO_CONTENT, String::new())
}

/// Settings to change; a key left out keeps its value, `null` clears a limit or outage.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    latency_ms: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    outage_status: Option<Option<u16>>,
    #[serde(default, deserialize_with = "present")]
    concurrency_limit: Option<Option<usize>>,
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<WireRateLimit>>,
    deactivated_profile_edits: Option<bool>,
    search_lag_ms: Option<u64>,
}

#[derive(Deserialize, Serialize)]
struct WireRateLimit {
    requests_per_window: u32,
    window_ms: u64,
}

/// Tells a key given as `null` (`Some(None)`) from a key left out (`None`).
fn present<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Applies the settings and answers with all of them as they now are.
async fn settings(
    State(shared): State<Arc<Shared>>,
    Json(settings): Json<Settings>,
) -> Json<Value> {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut store = shared.store();
    if let Some(ms) = settings.latency_ms {
        store.latency = Duration::from_millis(ms);
    }
    if let Some(outage) = settings.outage_status {
        store.outage = outage;
    }
    if let Some(limit) = settings.concurrency_limit {
        store.concurrency_limit = limit;
    }
    if let Some(rate) = settings.rate_limit {
        store.rate_limit = rate
            .map(|r| RateLimit::uniform(r.requests_per_window, Duration::from_millis(r.window_ms)));
        store.buckets.clear();
    }
    if let Some(allowed) = settings.deactivated_profile_edits {
        store.directory.deactivated_profile_edits = allowed;
    }
    if let Some(ms) = settings.search_lag_ms {
        store.directory.search_lag = Duration::from_millis(ms);
    }
    Json(json!({
        "deactivated_profile_edits": store.directory.deactivated_profile_edits,
        "search_lag_ms": millis(store.directory.search_lag),
        "latency_ms": millis(store.latency),
        "outage_status": store.outage,
        "concurrency_limit": store.concurrency_limit,
        "rate_limit": store.rate_limit.map(|r| json!({
            "window_ms": millis(r.window()),
            "per_bucket": SimBucket::ALL
                .iter()
                .map(|b| (format!("{b:?}"), json!(r.limit(*b))))
                .collect::<Map<String, Value>>(),
        })),
    }))
}

/// Every email the org would have sent (activation emails), oldest first.
async fn emails(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(shared.store().emails))
}

async fn requests(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(shared.store().log))
}

async fn clear_requests(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.store().log.clear();
    StatusCode::NO_CONTENT
}
