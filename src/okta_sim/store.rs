//! The fake's one piece of mutable state, shared by the server's handlers and every
//! handle: the directory, the OAuth apps and tokens, and what the gate counts, injects
//! and logs. Below every handler and the gate, above the plain data it holds, so that
//! each depends on it in one direction.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;

use super::limits::{Bucket, RateLimit, SimBucket};
use super::oauth::OAuthState;
use super::state::{Directory, SentEmail};

/// A scripted misbehaviour: the next `times` matching `/api/` requests get `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// HTTP method to match (any case); `None` matches every method.
    pub method: Option<String>,
    /// Substring of the path to match; `None` matches every path.
    pub path_contains: Option<String>,
    /// How many requests the fault applies to.
    pub times: u32,
    pub kind: FaultKind,
}

/// What an injected fault does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer this status with an Okta error body carrying `error_code`.
    Status { status: u16, error_code: String },
    /// Wait this long, then answer normally (lets a client's timeout fire).
    Hang(Duration),
    /// Drop the connection without a complete answer (the client sees a network error).
    CloseConnection,
}

/// One `/api/` request as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    /// Okta's operationId, e.g. `createUser`; `unknown` for routes the fake lacks.
    pub operation: &'static str,
    /// The answer's `X-Okta-Request-Id`.
    pub request_id: String,
    /// `X-Okta-Retry-For` as sent: the request id of the 429 this request retries.
    pub retry_for: Option<String>,
    /// `X-Okta-Retry-Count` as sent.
    pub retry_count: Option<String>,
}

/// Everything mutable, behind one lock that is never held across an `.await`.
#[derive(Debug, Default)]
pub(super) struct Store {
    pub(super) directory: Directory,
    pub(super) latency: Duration,
    pub(super) outage: Option<u16>,
    pub(super) rate_limit: Option<RateLimit>,
    pub(super) concurrency_limit: Option<usize>,
    pub(super) in_flight: usize,
    pub(super) buckets: HashMap<SimBucket, Bucket>,
    pub(super) faults: Vec<Fault>,
    pub(super) log: VecDeque<RequestRecord>,
    pub(super) rate_limited: u64,
    pub(super) oauth: OAuthState,
    /// Every email the org would have sent, oldest first.
    pub(super) emails: Vec<SentEmail>,
}

/// State shared by the server and every [`OktaSim`](super::OktaSim) handle.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) store: Mutex<Store>,
    /// The token accepted as `Authorization: SSWS <token>`.
    pub(super) api_token: String,
    /// The id of the org's default user type, shown as `type.id` on every user.
    pub(super) user_type_id: String,
}

impl Shared {
    pub(super) fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the directory half-written in a
        // way that matters to a fake; keep serving.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
