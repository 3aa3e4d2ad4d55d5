//! A stateful fake of Okta's Management API, for tests, benchmarks and local runs.
//!
//! Real Okta cannot be reached from development or CI, so this fake is the only Okta
//! the service's tests ever see: it must be as strict as Okta where Okta is strict
//! (lifecycle rules, validation, escaping in `search=`, error bodies, rate limits), or
//! bugs in the client would pass unnoticed. The rules it reproduces are written down
//! in `/work/shared/okta/BEHAVIOUR.md`.
//!
//! Tests start it in-process on port 0 with [`OktaSim::start`] and steer it through
//! the same handle (seeding, fault injection, outages, the request log); a person
//! running it beside the service uses [`serve_until`] and the unauthenticated
//! `/__sim/` admin routes instead.
//!
//! A test double, not production code: compiled only with the cargo feature `okta-sim`
//! (on by default), which the deploy image leaves out (`docs/okta.md`).
//!
//! Layout, lowest first; each module uses only modules listed before it, so there is
//! no import cycle: `search` the `search=` language; `state` the directory and Okta's
//! rules (plain data; HTTP only in the body an `ApiError` becomes); `limits` the
//! rate-limit buckets; `operations` Okta's operationId for a request; `dpop` and
//! `oauth` DPoP proofs, the service apps and their tokens; `store` the one lock over
//! everything mutable; `gate` what happens to every request before a route sees it
//! (auth, rate limits, faults, latency, request log); `admin` the `/__sim/` endpoints;
//! `routes` the Okta endpoints and the router that puts them behind the gate. This
//! module starts the server and is the handle tests use.

mod admin;
mod dpop;
#[cfg(test)]
mod dpop_tests;
mod gate;
mod limits;
mod oauth;
#[cfg(test)]
mod oauth_tests;
mod operations;
mod routes;
mod search;
mod state;
mod store;
#[cfg(test)]
mod strict_tests;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use store::{Shared, Store};

pub use limits::{BucketSnapshot, RateLimit, SimBucket, WORKFORCE_CONCURRENCY_LIMIT};
pub use oauth::{test_key_pair, KeyKind, SimOAuthClient, TestKeyPair, TokenRecord};
pub use state::{GroupType, SentEmail, UserStatus};
pub use store::{Fault, FaultKind, RequestRecord};

/// How to start the fake.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The token clients must send as `Authorization: SSWS <token>`.
    pub api_token: String,
    /// Delay added before every `/api/` response.
    pub latency: Duration,
    /// Per-bucket request limits; `None` never answers 429 for volume. Default: a
    /// workforce org's ([`RateLimit::workforce`]), as strict as a real org.
    pub rate_limit: Option<RateLimit>,
    /// Most `/api/` requests in flight at once; more get 429 (Limit and Remaining 0).
    /// `None` is unlimited. Default: a workforce org's 75.
    pub concurrency_limit: Option<usize>,
    /// Names of `OKTA_GROUP` groups to create at start.
    pub groups: Vec<String>,
    /// OAuth 2.0 service apps that may get access tokens (the API token works too).
    pub oauth_clients: Vec<SimOAuthClient>,
    /// How long an issued access token lives (Okta: one hour); short in tests.
    pub access_token_lifetime: Duration,
    /// The org setting "Edit Deactivated User Profile Updates": off (Okta's default),
    /// `updateUser` and `assignUserToGroup` on a `DEPROVISIONED` user answer 403
    /// `E0000038`; on, they work.
    pub deactivated_profile_edits: bool,
    /// How long a user created through `createUser` stays invisible to `search=` (Okta's
    /// search lags writes; `getUser` does not). Users seeded through the handle or
    /// `/__sim/` existed long before and are searchable at once. Zero: no lag.
    pub search_lag: Duration,
    /// The service apps require DPoP, as an API Services app made in the Admin Console
    /// does by default; `false` is an app created through the API
    /// (`dpop_bound_access_tokens: false`). A proof sent anyway still binds the token.
    pub oauth_dpop_required: bool,
    /// The API asks for its own DPoP nonce (401 `use_dpop_nonce`) in proofs that come
    /// with DPoP-bound tokens.
    pub oauth_dpop_api_nonce: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_token: format!("00{}", state::random_token(40)),
            latency: Duration::ZERO,
            rate_limit: Some(RateLimit::workforce()),
            concurrency_limit: Some(WORKFORCE_CONCURRENCY_LIMIT),
            groups: Vec::new(),
            oauth_clients: Vec::new(),
            access_token_lifetime: Duration::from_secs(3600),
            deactivated_profile_edits: false,
            search_lag: DEFAULT_SEARCH_LAG,
            oauth_dpop_required: true,
            oauth_dpop_api_nonce: true,
        }
    }
}

/// Logged by every fake Okta that starts. `.ci/check-no-fake-okta` looks for this text in
/// the binary built as the deploy image builds it: absent, the fake was left out.
pub const FAKE_OKTA_MARKER: &str = "fake Okta (okta-sim feature) started";

/// The fake's search lag unless told otherwise: long enough that a removal arriving
/// right after a hire meets it, short enough that tests do not wait on it.
pub const DEFAULT_SEARCH_LAG: Duration = Duration::from_secs(1);

/// A snapshot of a user, for assertions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimUser {
    pub id: String,
    pub status: UserStatus,
    pub profile: Value,
    /// When the status last changed (creation time if it never did).
    #[serde(with = "time::serde::rfc3339")]
    pub status_changed: OffsetDateTime,
    /// How many times `revokeUserSessions` was called for this user.
    pub sessions_revoked: u32,
}

/// Stops the server when the last [`OktaSim`] handle goes away.
#[derive(Debug)]
struct ServerTask {
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A running fake Okta. Cheap to clone; dropping the last clone stops the server.
#[derive(Debug, Clone)]
pub struct OktaSim {
    shared: Arc<Shared>,
    server: Arc<ServerTask>,
    base_url: String,
}

impl OktaSim {
    /// Binds `config.listen` and serves on a tokio task.
    ///
    /// # Errors
    /// When the address cannot be bound, or a service app's public key is unusable.
    pub async fn start(config: SimConfig) -> std::io::Result<OktaSim> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let local = listener.local_addr()?;
        let host = if local.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], local.port()))
        } else {
            local
        };
        let mut store = Store {
            latency: config.latency,
            rate_limit: config.rate_limit,
            concurrency_limit: config.concurrency_limit,
            ..Store::default()
        };
        store.oauth.lifetime = config.access_token_lifetime;
        store.directory.deactivated_profile_edits = config.deactivated_profile_edits;
        store.directory.search_lag = config.search_lag;
        store.oauth.dpop.required = config.oauth_dpop_required;
        store.oauth.dpop.api_nonce = config.oauth_dpop_api_nonce;
        for client in &config.oauth_clients {
            store
                .oauth
                .register(client)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        }
        for name in &config.groups {
            store
                .directory
                .insert_group(name, GroupType::OktaGroup, None);
        }
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            api_token: config.api_token,
            user_type_id: format!("oty{}", state::random_token(17)),
        });
        let stop = CancellationToken::new();
        let app = routes::router(shared.clone());
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        tracing::info!(listen = %host, "{FAKE_OKTA_MARKER}");
        let task = tokio::spawn(async move {
            if let Err(error) = serve.await {
                tracing::error!(%error, "fake Okta server stopped");
            }
        });
        Ok(OktaSim {
            shared,
            server: Arc::new(ServerTask {
                stop,
                task: Mutex::new(Some(task)),
            }),
            base_url: format!("http://{host}"),
        })
    }

    /// Where clients reach it, e.g. `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The token to send as `Authorization: SSWS <token>`.
    pub fn api_token(&self) -> String {
        self.shared.api_token.clone()
    }

    /// Registers (or replaces) an OAuth 2.0 service app.
    ///
    /// # Errors
    /// When its public key is not an RSA or P-256 EC public key in PEM.
    pub fn register_oauth_client(&self, client: &SimOAuthClient) -> Result<(), String> {
        self.shared.store().oauth.register(client)
    }

    /// How long access tokens issued from now on live.
    pub fn set_access_token_lifetime(&self, lifetime: Duration) {
        self.shared.store().oauth.lifetime = lifetime;
    }

    /// Ends the life of every access token issued so far (their holders get 401
    /// `E0000011`), as if their hour had passed without the client noticing.
    pub fn expire_access_tokens(&self) {
        self.shared.store().oauth.expire_all();
    }

    /// Whether the service apps require DPoP from now on.
    pub fn set_oauth_dpop_required(&self, required: bool) {
        self.shared.store().oauth.dpop.required = required;
    }

    /// Moves the token endpoint and the API to new DPoP nonces; the previous ones stay
    /// valid until the next rotation (Okta keeps an old nonce for days).
    pub fn rotate_dpop_nonces(&self) {
        self.shared.store().oauth.dpop.rotate_nonces();
    }

    /// The key thumbprint (`cnf.jkt`) an issued, unexpired access token is bound to;
    /// `None` for a Bearer token.
    pub fn access_token_binding(&self, token: &str) -> Option<String> {
        self.shared
            .store()
            .oauth
            .binding_of(token)
            .map(str::to_owned)
    }

    /// Every access token issued so far, oldest first.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.shared.store().oauth.issued.clone()
    }

    /// Every client assertion received at the token endpoint, oldest first.
    pub fn received_client_assertions(&self) -> Vec<String> {
        self.shared.store().oauth.assertions.clone()
    }

    /// Every token request and its answer, oldest first.
    pub fn token_requests(&self) -> Vec<TokenRecord> {
        self.shared.store().oauth.log.clone()
    }

    /// Creates a group (any type, duplicate names allowed) and returns its id.
    pub fn create_group(&self, name: &str, kind: GroupType) -> String {
        self.shared.store().directory.insert_group(name, kind, None)
    }

    /// Seeds a user in any status, without validating the profile; returns its id.
    pub fn create_user(&self, profile: Value, status: UserStatus) -> String {
        let profile = match profile {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        self.shared.store().directory.insert_user(profile, status)
    }

    /// Seeds many users at once under one lock, each in any status and made a member of
    /// the given group ids (unknown ones skipped), without validation; returns their ids
    /// in order. A benchmark's 100,000 users take well under a second this way.
    pub fn seed_users(
        &self,
        users: impl IntoIterator<Item = (Value, UserStatus, Vec<String>)>,
    ) -> Vec<String> {
        let mut store = self.shared.store();
        let directory = &mut store.directory;
        users
            .into_iter()
            .map(|(profile, status, groups)| {
                let profile = match profile {
                    Value::Object(map) => map,
                    _ => serde_json::Map::new(),
                };
                let id = directory.insert_user(profile, status);
                for group in &groups {
                    directory.add_member(group, &id);
                }
                id
            })
            .collect()
    }

    /// Sets a user's status directly, stamping `statusChanged`; false if unknown.
    pub fn set_user_status(&self, user_id: &str, status: UserStatus) -> bool {
        self.shared.store().directory.force_status(user_id, status)
    }

    /// Makes a user a member of any group, whatever its type; false if either is unknown.
    pub fn add_member(&self, group_id: &str, user_id: &str) -> bool {
        self.shared.store().directory.add_member(group_id, user_id)
    }

    /// A user by id or login (any case).
    pub fn user(&self, id_or_login: &str) -> Option<SimUser> {
        self.shared
            .store()
            .directory
            .find_user(id_or_login)
            .map(sim_user)
    }

    /// Every user, in creation order.
    pub fn users(&self) -> Vec<SimUser> {
        self.shared
            .store()
            .directory
            .users
            .iter()
            .map(sim_user)
            .collect()
    }

    /// The id of the first group with exactly this name.
    pub fn group_id(&self, name: &str) -> Option<String> {
        let store = self.shared.store();
        store
            .directory
            .groups
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.id.clone())
    }

    /// Names of the groups a user belongs to, sorted.
    pub fn user_group_names(&self, user_id: &str) -> Vec<String> {
        let store = self.shared.store();
        let mut names: Vec<String> = match store.directory.find_user(user_id) {
            Some(user) => store
                .directory
                .groups_of(&user.id)
                .iter()
                .map(|g| g.name.clone())
                .collect(),
            None => Vec::new(),
        };
        names.sort();
        names
    }

    /// Queues a fault; faults are consumed in the order they were injected.
    pub fn inject_fault(&self, fault: Fault) {
        self.shared.store().faults.push(fault);
    }

    /// `Some(status)`: every `/api/` request answers that status until `None`.
    pub fn set_outage(&self, status: Option<u16>) {
        self.shared.store().outage = status;
    }

    /// Delay before every `/api/` answer from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.store().latency = latency;
    }

    /// Replaces the rate limit; counting restarts with fresh windows.
    pub fn set_rate_limit(&self, rate_limit: Option<RateLimit>) {
        let mut store = self.shared.store();
        store.rate_limit = rate_limit;
        store.buckets.clear();
    }

    /// Replaces the limit on requests in flight.
    pub fn set_concurrency_limit(&self, limit: Option<usize>) {
        self.shared.store().concurrency_limit = limit;
    }

    /// Every `/api/` request answered so far, oldest first.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.store().log.iter().cloned().collect()
    }

    pub fn clear_request_log(&self) {
        self.shared.store().log.clear();
    }

    /// The current window of a rate-limit bucket, as the next answer's headers would
    /// report it before counting itself; `None` when no window is running there.
    pub fn bucket(&self, bucket: SimBucket) -> Option<BucketSnapshot> {
        gate::snapshot(&self.shared.store(), bucket)
    }

    /// How many requests were refused with 429 (rate or concurrency limit, not faults).
    pub fn rate_limited_count(&self) -> u64 {
        self.shared.store().rate_limited
    }

    /// Every email the org would have sent (activation emails), oldest first.
    pub fn emails_sent(&self) -> Vec<SentEmail> {
        self.shared.store().emails.clone()
    }

    /// Turns the org setting "Edit Deactivated User Profile Updates" on or off.
    pub fn set_deactivated_profile_edits(&self, allowed: bool) {
        self.shared.store().directory.deactivated_profile_edits = allowed;
    }

    /// How long users created from now on stay invisible to `search=`.
    pub fn set_search_lag(&self, lag: Duration) {
        self.shared.store().directory.search_lag = lag;
    }

    /// Stops accepting connections and waits (up to 5 s) for requests in flight.
    pub async fn shutdown(self) {
        self.server.stop.cancel();
        let task = self
            .server
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut task) = task {
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

fn sim_user(user: &state::User) -> SimUser {
    SimUser {
        id: user.id.clone(),
        status: user.status,
        profile: Value::Object(user.profile.clone()),
        status_changed: user.status_changed.unwrap_or(user.created),
        sessions_revoked: user.sessions_revoked,
    }
}

/// Runs the fake until `shutdown` completes (the `okta-sim` command).
///
/// # Errors
/// When the listen address cannot be bound.
pub async fn serve_until(
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sim = OktaSim::start(config).await?;
    // The token is never logged: logs are shipped and kept, and a fake reachable from a
    // network is still an API that changes state.
    tracing::warn!(
        base_url = %sim.base_url(),
        "this is a FAKE Okta for local use and tests; nothing here reaches a real Okta org \
         (admin routes under /__sim/, send Authorization: SSWS <its token>)"
    );
    shutdown.await;
    tracing::info!("fake Okta shutting down");
    sim.shutdown().await;
    Ok(())
}
