//! A small client for the Okta Management API operations this service needs.
//!
//! It owns the Okta-specific protocol details: authentication (asked of
//! [`auth`](super::auth) per request; the header is marked sensitive so no HTTP log shows
//! it, and an OAuth token Okta rejects is renewed once), `X-Okta-Request-Id`, error bodies,
//! `Link`-header pagination, reading the rate-limit headers, and a cap on requests in
//! flight (Okta's concurrency limit).
//!
//! Rate limits are not handled here. Every request waits for the [`Pacer`]'s permission
//! and every answer is reported to it; a 429 is reported as a refusal and comes back at
//! once as [`OktaError::RateLimited`], carrying the delay the pacer will now impose. The
//! client never loops on a 429: the pipeline retries the event after that delay (issue
//! 13, "One layer handles rate limits"). For the same reason it sends no
//! `X-Okta-Retry-For` / `X-Okta-Retry-Count`: Okta's SDKs send them when they resend
//! the same request, but the retry here is a new attempt at the event, which plans its
//! calls afresh, so no later request can honestly claim to be the one refused.

use super::auth::OktaSetupError;
use super::auth::{self, Authorizer, OktaAuth};
use super::error::{ApiError, LimitKind, OktaError};
use super::pacing::{endpoint_of, BucketReport, Pacer, Refusal};
use super::rate_headers::{header_i64, is_concurrency_limit, resets_in};
use super::search;
use crate::domain::plan::AccountStatus;
use crate::secret::Secret;
use crate::telemetry::metrics::Metrics;
#[cfg(test)]
use reqwest::header::HeaderValue;
use reqwest::header::{HeaderMap, AUTHORIZATION};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

/// An Okta user, with the fields this service reads.
#[derive(Debug, Clone, Deserialize)]
pub struct OktaUser {
    pub id: String,
    pub status: String,
    #[serde(rename = "statusChanged", default)]
    pub status_changed: Option<String>,
    #[serde(default)]
    pub profile: Map<String, Value>,
}

impl OktaUser {
    /// The user's lifecycle state.
    pub fn account_status(&self) -> AccountStatus {
        AccountStatus::parse(&self.status)
    }

    /// When the status last changed, if Okta says.
    pub fn status_changed_at(&self) -> Option<OffsetDateTime> {
        self.status_changed.as_deref().and_then(|s| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
    }
}

/// What a hire reads of `createUser`'s answer. Okta echoes the whole user back; its
/// profile is what was just sent, so it is skipped rather than built into a map (a hot
/// path: one per hire).
#[derive(Deserialize)]
struct CreatedUser {
    id: String,
    status: String,
    #[serde(rename = "statusChanged", default)]
    status_changed: Option<String>,
}

impl From<CreatedUser> for OktaUser {
    fn from(user: CreatedUser) -> Self {
        Self {
            id: user.id,
            status: user.status,
            status_changed: user.status_changed,
            profile: Map::new(),
        }
    }
}

/// An Okta group, with the fields this service reads.
#[derive(Debug, Clone, Deserialize)]
pub struct OktaGroup {
    pub id: String,
    #[serde(rename = "type", default)]
    pub group_type: String,
    pub profile: GroupProfile,
}

/// The part of a group's profile this service reads.
#[derive(Debug, Clone, Deserialize)]
pub struct GroupProfile {
    pub name: String,
}

/// Tuning of the client; defaults suit a production org.
#[derive(Debug, Clone)]
pub struct OktaClientSettings {
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// At most this many requests in flight (Okta's org-wide concurrency limit is 75 for
    /// workforce orgs; stay well under it so other integrations keep working).
    pub max_in_flight: usize,
    /// `DRY_RUN`: send reads only; changing calls are answered by `dry_run.rs`.
    pub dry_run: bool,
    /// `OKTA_ACTIVATION_EMAIL`: whether a user this service activates (rehire, future
    /// start date) gets Okta's activation email, as `createUser` gives one. Off only for
    /// orgs whose users need no Okta password (federated, passwordless).
    pub activation_email: bool,
}

impl Default for OktaClientSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(15),
            max_in_flight: 32,
            dry_run: false,
            activation_email: true,
        }
    }
}

/// The Okta Management API client. Cheap to clone.
#[derive(Clone)]
pub struct OktaClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    auth: Authorizer,
    in_flight: Semaphore,
    pacer: Pacer,
    settings: OktaClientSettings,
    /// Last `X-Rate-Limit-Remaining` seen, -1 before any; for metrics and pacing.
    last_remaining: AtomicI64,
    metrics: Metrics,
}

impl std::fmt::Debug for OktaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OktaClient")
            .field("base", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

/// A successful answer, already read.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
}

impl OktaClient {
    /// Builds a client for the org at `base` (e.g. `https://acme.okta.com`) with an SSWS
    /// API token.
    ///
    /// # Errors
    /// [`OktaSetupError`] when the token is not a valid header value or TLS cannot start.
    pub fn new(
        base: Url,
        api_token: &Secret,
        settings: OktaClientSettings,
    ) -> Result<Self, OktaSetupError> {
        Self::with_auth(base, &OktaAuth::ApiToken(api_token.clone()), settings)
    }

    /// Builds a client for the org at `base` that authenticates as `auth` says.
    ///
    /// # Errors
    /// [`OktaSetupError`] when an API token is not a valid header value or TLS cannot
    /// start.
    pub fn with_auth(
        base: Url,
        auth: &OktaAuth,
        settings: OktaClientSettings,
    ) -> Result<Self, OktaSetupError> {
        Self::with_auth_and_metrics(base, auth, settings, Metrics::default())
    }

    /// [`OktaClient::with_auth`], recording every request in `metrics`.
    ///
    /// # Errors
    /// As [`OktaClient::with_auth`].
    pub fn with_auth_and_metrics(
        base: Url,
        auth: &OktaAuth,
        settings: OktaClientSettings,
        metrics: Metrics,
    ) -> Result<Self, OktaSetupError> {
        // No redirects: Okta's API never redirects, and following one would send the
        // Authorization header's request (and a user's profile) wherever a compromised or
        // mistyped host points. https only, except to a loopback host (the fake Okta, a
        // local proxy): a plaintext hop could read the token.
        let loopback = match base.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!loopback)
            .timeout(settings.request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("iam-provisioner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(OktaSetupError::Http)?;
        let auth = Authorizer::new(&base, auth, http.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                auth,
                in_flight: Semaphore::new(settings.max_in_flight.max(1)),
                pacer: Pacer::new(),
                settings,
                last_remaining: AtomicI64::new(-1),
                metrics,
            }),
        })
    }

    /// The org URL.
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// Whether changing calls are only pretended (`DRY_RUN`).
    pub fn is_dry_run(&self) -> bool {
        self.inner.settings.dry_run
    }

    /// The last `X-Rate-Limit-Remaining` Okta reported, if any.
    pub fn last_rate_limit_remaining(&self) -> Option<i64> {
        let value = self.inner.last_remaining.load(Ordering::Relaxed);
        (value >= 0).then_some(value)
    }

    pub(super) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            for segment in segments {
                path.push(segment);
            }
        }
        url
    }

    /// `createUser`: creates the user, activated or staged, in `group_ids` (at most 20).
    /// The user returned has an empty `profile`: it is the one just sent.
    ///
    /// # Errors
    /// Any [`OktaError`]; a taken login is recognised by [`OktaError::is_duplicate_login`].
    pub async fn create_user(
        &self,
        profile: &Map<String, Value>,
        group_ids: &[String],
        activate: bool,
    ) -> Result<OktaUser, OktaError> {
        let mut url = self.url(&["api", "v1", "users"]);
        url.query_pairs_mut()
            .append_pair("activate", if activate { "true" } else { "false" });
        let mut body = serde_json::json!({ "profile": profile });
        if !group_ids.is_empty() {
            body["groupIds"] = serde_json::json!(group_ids);
        }
        self.call_json::<CreatedUser>("createUser", Method::POST, url, Some(&body))
            .await
            .map(OktaUser::from)
    }

    /// `getUser` by id or login; `None` when Okta has no such user.
    ///
    /// # Errors
    /// Any [`OktaError`] but "not found".
    pub async fn get_user(&self, id_or_login: &str) -> Result<Option<OktaUser>, OktaError> {
        if search::unfit_for_path(id_or_login) {
            return self.find_user_by_login(id_or_login).await;
        }
        let url = self.url(&["api", "v1", "users", id_or_login]);
        match self.call_json("getUser", Method::GET, url, None).await {
            Ok(user) => Ok(Some(user)),
            Err(e) if e.is(404, "E0000007") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `listUsers` with `search=profile.employeeNumber eq "…"` (which, unlike a plain
    /// list, includes deactivated users); the value is quoted so it cannot widen the search.
    ///
    /// # Errors
    /// Any [`OktaError`].
    pub async fn find_users_by_employee_number(
        &self,
        employee_number: &str,
    ) -> Result<Vec<OktaUser>, OktaError> {
        let mut url = self.url(&["api", "v1", "users"]);
        url.query_pairs_mut().append_pair(
            "search",
            &search::equals("profile.employeeNumber", employee_number),
        );
        self.list_all("listUsers", url).await
    }

    /// `listUsers` with `search=profile.login eq "…"`: the way to find a login Okta
    /// cannot take in a path (a `/` in it). Unlike `getUser`, the search lags writes.
    ///
    /// # Errors
    /// Any [`OktaError`].
    async fn find_user_by_login(&self, login: &str) -> Result<Option<OktaUser>, OktaError> {
        let mut url = self.url(&["api", "v1", "users"]);
        url.query_pairs_mut()
            .append_pair("search", &search::equals("profile.login", login));
        let found: Vec<OktaUser> = self.list_all("listUsers", url).await?;
        // Okta compares logins ignoring case, as the search does.
        Ok(found.into_iter().find(|u| {
            u.profile
                .get("login")
                .and_then(Value::as_str)
                .is_some_and(|l| l.eq_ignore_ascii_case(login))
        }))
    }

    /// `updateUser` (partial): sets the given profile fields, leaves the others.
    ///
    /// # Errors
    /// Any [`OktaError`].
    pub async fn update_profile(
        &self,
        user_id: &str,
        changes: &Map<String, Value>,
    ) -> Result<OktaUser, OktaError> {
        let url = self.url(&["api", "v1", "users", user_id]);
        let body = serde_json::json!({ "profile": changes });
        self.call_json("updateUser", Method::POST, url, Some(&body))
            .await
    }

    /// `listGroups` with `search=profile.name eq "…"`: exact name match (never `q=`,
    /// which matches prefixes).
    ///
    /// # Errors
    /// Any [`OktaError`].
    pub async fn find_groups_by_name(&self, name: &str) -> Result<Vec<OktaGroup>, OktaError> {
        let mut url = self.url(&["api", "v1", "groups"]);
        url.query_pairs_mut()
            .append_pair("search", &search::equals("profile.name", name));
        self.list_all("listGroups", url).await
    }

    /// `getGroup`; `None` when Okta has no such group.
    ///
    /// # Errors
    /// Any [`OktaError`] but "not found".
    pub async fn get_group(&self, group_id: &str) -> Result<Option<OktaGroup>, OktaError> {
        let url = self.url(&["api", "v1", "groups", group_id]);
        match self.call_json("getGroup", Method::GET, url, None).await {
            Ok(group) => Ok(Some(group)),
            Err(e) if e.is(404, "E0000007") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `listUserGroups`: every group the user is in, all pages.
    ///
    /// # Errors
    /// Any [`OktaError`].
    pub async fn list_user_groups(&self, user_id: &str) -> Result<Vec<OktaGroup>, OktaError> {
        let url = self.url(&["api", "v1", "users", user_id, "groups"]);
        self.list_all("listUserGroups", url).await
    }

    /// `listGroupUsers`: every member of a group, all pages (the protected groups'
    /// membership cache, `crate::trust::protected`).
    ///
    /// # Errors
    /// Any [`OktaError`].
    pub async fn list_group_users(&self, group_id: &str) -> Result<Vec<OktaUser>, OktaError> {
        let url = self.url(&["api", "v1", "groups", group_id, "users"]);
        self.list_all("listGroupUsers", url).await
    }

    /// `assignUserToGroup` (idempotent in Okta).
    ///
    /// # Errors
    /// Any [`OktaError`].
    pub async fn assign_to_group(&self, group_id: &str, user_id: &str) -> Result<(), OktaError> {
        let url = self.url(&["api", "v1", "groups", group_id, "users", user_id]);
        self.call("assignUserToGroup", Method::PUT, url, None)
            .await
            .map(drop)
    }

    /// `unassignUserFromGroup`.
    ///
    /// # Errors
    /// Any [`OktaError`].
    pub async fn remove_from_group(&self, group_id: &str, user_id: &str) -> Result<(), OktaError> {
        let url = self.url(&["api", "v1", "groups", group_id, "users", user_id]);
        self.call("unassignUserFromGroup", Method::DELETE, url, None)
            .await
            .map(drop)
    }

    /// `activateUser` (from `STAGED` or `DEPROVISIONED`), with Okta's activation email
    /// unless `OKTA_ACTIVATION_EMAIL=false`: without it a user with no password never
    /// learns how to sign in. Returns false when Okta says the user is already active
    /// (403 `E0000016`).
    ///
    /// # Errors
    /// Any other [`OktaError`].
    pub async fn activate_user(&self, user_id: &str) -> Result<bool, OktaError> {
        let mut url = self.lifecycle_url(user_id, "activate");
        let send_email = self.inner.settings.activation_email;
        url.query_pairs_mut()
            .append_pair("sendEmail", if send_email { "true" } else { "false" });
        match self.call("activateUser", Method::POST, url, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.is(403, "E0000016") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `unsuspendUser` (only from `SUSPENDED`).
    ///
    /// # Errors
    /// Any [`OktaError`].
    pub async fn unsuspend_user(&self, user_id: &str) -> Result<(), OktaError> {
        let url = self.lifecycle_url(user_id, "unsuspend");
        self.call("unsuspendUser", Method::POST, url, None)
            .await
            .map(drop)
    }

    /// `suspendUser` (only from `ACTIVE`).
    ///
    /// # Errors
    /// Any [`OktaError`].
    pub async fn suspend_user(&self, user_id: &str) -> Result<(), OktaError> {
        let url = self.lifecycle_url(user_id, "suspend");
        self.call("suspendUser", Method::POST, url, None)
            .await
            .map(drop)
    }

    /// `deactivateUser`. Returns false when the user was already deactivated: real Okta
    /// has been seen answering 404 `E0000007` then (okta-sdk-java #721), which is
    /// "already done", not a failure.
    ///
    /// # Errors
    /// Any other [`OktaError`].
    pub async fn deactivate_user(&self, user_id: &str) -> Result<bool, OktaError> {
        let url = self.lifecycle_url(user_id, "deactivate");
        match self.call("deactivateUser", Method::POST, url, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.is(404, "E0000007") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `revokeUserSessions` including OAuth tokens: ends every session the user has.
    ///
    /// # Errors
    /// Any [`OktaError`].
    pub async fn revoke_sessions(&self, user_id: &str) -> Result<(), OktaError> {
        let mut url = self.url(&["api", "v1", "users", user_id, "sessions"]);
        url.query_pairs_mut().append_pair("oauthTokens", "true");
        self.call("revokeUserSessions", Method::DELETE, url, None)
            .await
            .map(drop)
    }

    /// `deleteUser`: deletes a `DEPROVISIONED` user (Okta only deactivates others).
    /// Returns false when the user is already gone.
    ///
    /// # Errors
    /// Any other [`OktaError`].
    pub async fn delete_user(&self, user_id: &str) -> Result<bool, OktaError> {
        let url = self.url(&["api", "v1", "users", user_id]);
        match self.call("deleteUser", Method::DELETE, url, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.is(404, "E0000007") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A cheap read that tells whether Okta answers (`listGroups` with `limit=1`), for
    /// the outage prober.
    ///
    /// # Errors
    /// Any [`OktaError`].
    pub async fn probe(&self) -> Result<(), OktaError> {
        let mut url = self.url(&["api", "v1", "groups"]);
        url.query_pairs_mut().append_pair("limit", "1");
        self.call("listGroups", Method::GET, url, None)
            .await
            .map(drop)
    }

    fn lifecycle_url(&self, user_id: &str, step: &str) -> Url {
        self.url(&["api", "v1", "users", user_id, "lifecycle", step])
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<T, OktaError> {
        let answer = self.call(operation, method, url, body).await?;
        decode(operation, &answer)
    }

    /// Fetches every page of a list, following `Link: rel="next"`.
    async fn list_all<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        first: Url,
    ) -> Result<Vec<T>, OktaError> {
        let mut items = Vec::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            let answer = self.call(operation, Method::GET, url, None).await?;
            let page: Vec<T> = decode(operation, &answer)?;
            items.extend(page);
            next = answer
                .headers
                .get_all(reqwest::header::LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(search::next_link)
                .and_then(|link| Url::parse(&link).ok());
            if let Some(link) = &next {
                // The next request carries the credential: only ever to the org.
                if link.origin() != self.inner.base.origin() {
                    return Err(OktaError::ForeignLink {
                        operation,
                        origin: link.origin().ascii_serialization(),
                        request_id: header_str(&answer.headers, "x-okta-request-id")
                            .map(str::to_owned),
                    });
                }
            }
        }
        Ok(items)
    }

    /// Sends one request, paced, and turns error answers into [`OktaError`]. A 429 is
    /// [`OktaError::RateLimited`] at once: the pacer holds what follows, the pipeline
    /// retries.
    #[tracing::instrument(name = "okta", skip_all, fields(otel.name = operation, otel.kind = "client", okta.operation = operation, http.request.method = %method, okta.request_id = tracing::field::Empty, http.response.status_code = tracing::field::Empty, otel.status_code = tracing::field::Empty))]
    pub(super) async fn call(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Answer, OktaError> {
        if self.inner.settings.dry_run && super::dry_run::changes_okta(&method) {
            tracing::info!(okta.operation = operation, "dry run: not sent");
            let (status, body) = super::dry_run::synthetic_answer(operation, &url, body);
            return Ok(Answer {
                status,
                headers: HeaderMap::new(),
                body,
            });
        }
        let endpoint = endpoint_of(method.as_str(), url.path());
        let mut renewed_token = false;
        let mut retried_with_nonce = false;
        loop {
            let credentials = self.inner.auth.credentials(&method, &url).await?;
            let authorization = credentials.authorization;
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, authorization.clone())
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(proof) = credentials.proof {
                request = request.header(super::dpop::DPOP, proof);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let paced = self.inner.pacer.acquire(endpoint).await;
            let answer = {
                let _permit = self.inner.in_flight.acquire().await;
                let started = Instant::now();
                let answer = send_and_read(request).await;
                let status = answer.as_ref().ok().map(|a| a.status.as_u16());
                self.inner
                    .metrics
                    .okta_response(operation, status, started.elapsed());
                if status.is_none_or(|code| code >= 400) {
                    tracing::Span::current().record("otel.status_code", "error");
                }
                answer.map_err(|source| OktaError::Transport {
                    operation,
                    timed_out: source.is_timeout(),
                    source,
                })?
            };
            let request_id = header_str(&answer.headers, "x-okta-request-id").map(str::to_owned);
            let span = tracing::Span::current();
            span.record("http.response.status_code", answer.status.as_u16());
            if let Some(id) = &request_id {
                span.record("okta.request_id", id.as_str());
            }
            let refused = answer.status == StatusCode::TOO_MANY_REQUESTS;
            let concurrency = refused && is_concurrency_limit(&answer.headers);
            if !concurrency {
                // A concurrency 429's zeros say nothing about the endpoint's bucket.
                if let Some(remaining) = header_i64(&answer.headers, "x-rate-limit-remaining") {
                    self.inner
                        .last_remaining
                        .store(remaining, Ordering::Relaxed);
                }
            }
            // Remembered even from a 429, so the pipeline's retry has the newest nonce.
            let nonce_asked = self.inner.auth.observe_answer(&answer.headers);
            if refused {
                let (limit, refusal) = if concurrency {
                    (LimitKind::Concurrency, Refusal::Concurrency)
                } else {
                    let resets_in = resets_in(&answer.headers);
                    (LimitKind::Bucket, Refusal::BucketEmpty { resets_in })
                };
                let retry_after = paced.refused(refusal);
                tracing::debug!(
                    okta.operation = operation,
                    retry_in_ms = retry_after.as_millis() as u64,
                    concurrency_limit = concurrency,
                    "Okta answered 429; the pacer holds the next request"
                );
                return Err(OktaError::RateLimited {
                    operation,
                    limit,
                    retry_after,
                    request_id,
                });
            }
            paced.report(bucket_report(&answer.headers));
            if answer.status.is_success() {
                return Ok(answer);
            }
            // Okta wants a (newer) DPoP nonce, now remembered: ask once more with a new proof.
            if nonce_asked && !retried_with_nonce {
                retried_with_nonce = true;
                tracing::debug!("Okta asked for a DPoP nonce; retrying once with it");
                continue;
            }
            let error = api_error(operation, &answer, request_id);
            // An access token can die early (revoked, clock skew): renew it and try once
            // more; a second rejection is reported.
            if error.is(401, "E0000011")
                && !renewed_token
                && self.inner.auth.renew_after_rejection(&authorization).await
            {
                renewed_token = true;
                tracing::debug!("Okta rejected the access token; renewing it and retrying once");
                continue;
            }
            return Err(error);
        }
    }
}

/// What the rate-limit headers say about the bucket (the pacer bounds how far ahead a
/// reset is believed).
fn bucket_report(headers: &HeaderMap) -> Option<BucketReport> {
    let remaining = u64::try_from(header_i64(headers, "x-rate-limit-remaining")?).ok()?;
    Some(BucketReport {
        remaining,
        resets_in: resets_in(headers)?,
    })
}

async fn send_and_read(request: reqwest::RequestBuilder) -> Result<Answer, reqwest::Error> {
    let response = request.send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await?;
    Ok(Answer {
        status,
        headers,
        body: body.to_vec(),
    })
}

pub(super) fn decode<T: DeserializeOwned>(
    operation: &'static str,
    answer: &Answer,
) -> Result<T, OktaError> {
    serde_json::from_slice(&answer.body).map_err(|e| OktaError::Decode {
        operation,
        message: e.to_string(),
        request_id: header_str(&answer.headers, "x-okta-request-id").map(str::to_owned),
    })
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "errorCode")]
    code: Option<String>,
    #[serde(rename = "errorSummary", default)]
    summary: String,
    #[serde(rename = "errorCauses", default)]
    causes: Vec<ErrorCause>,
}

#[derive(Deserialize)]
struct ErrorCause {
    #[serde(rename = "errorSummary", default)]
    summary: String,
}

fn api_error(operation: &'static str, answer: &Answer, request_id: Option<String>) -> OktaError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(&answer.body).ok();
    let (code, summary, mut causes): (_, _, Vec<String>) = match parsed {
        Some(body) => (
            body.code,
            body.summary,
            body.causes.into_iter().map(|c| c.summary).collect(),
        ),
        None => (
            None,
            answer
                .status
                .canonical_reason()
                .unwrap_or("error")
                .to_owned(),
            Vec::new(),
        ),
    };
    if let Some(problem) = super::dpop::problem(&answer.headers) {
        causes.push(problem);
    }
    if answer.status == StatusCode::FORBIDDEN {
        if let Some(scope) = auth::insufficient_scope(&answer.headers) {
            causes.push(format!(
                "the access token lacks the scope {scope} that {operation} needs: grant it to the service app and list it in OKTA_SCOPES"
            ));
        }
    }
    OktaError::Api(Box::new(ApiError {
        operation,
        status: answer.status.as_u16(),
        code,
        summary,
        causes,
        request_id,
    }))
}

pub(super) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::okta::pacing;
    use crate::okta::rate_headers::{httpdate_to_unix, rate_limit_wait, unix_now};

    fn headers_with_reset_in(seconds: i64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "date",
            HeaderValue::from_static("Sun, 29 Nov 2026 06:07:40 GMT"),
        );
        let date = httpdate_to_unix("Sun, 29 Nov 2026 06:07:40 GMT").expect("date parses");
        headers.insert(
            "x-rate-limit-reset",
            HeaderValue::from_str(&(date + seconds).to_string()).expect("header"),
        );
        headers
    }

    #[test]
    fn a_429_waits_for_the_reset_by_okta_clock() {
        assert_eq!(
            rate_limit_wait(&headers_with_reset_in(3)),
            Duration::from_secs(3)
        );
        assert_eq!(
            rate_limit_wait(&headers_with_reset_in(3_600)),
            pacing::MAX_RESET_WAIT,
            "a reset an hour away is not believed"
        );
    }

    #[test]
    fn a_reset_already_past_waits_nothing_and_no_reset_one_second() {
        assert_eq!(
            rate_limit_wait(&headers_with_reset_in(-100)),
            Duration::ZERO
        );
        assert_eq!(rate_limit_wait(&HeaderMap::new()), Duration::from_secs(1));
    }

    #[test]
    fn a_bucket_report_needs_both_headers_and_measures_on_okta_clock() {
        let mut headers = headers_with_reset_in(7);
        assert_eq!(bucket_report(&headers), None, "no Remaining");
        headers.insert("x-rate-limit-remaining", HeaderValue::from_static("12"));
        assert_eq!(
            bucket_report(&headers),
            Some(BucketReport {
                remaining: 12,
                resets_in: Duration::from_secs(7),
            })
        );
    }

    #[test]
    fn a_429_with_limit_and_remaining_at_zero_is_the_concurrency_limit() {
        let headers = |limit: &'static str, remaining: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-rate-limit-limit", HeaderValue::from_static(limit));
            headers.insert(
                "x-rate-limit-remaining",
                HeaderValue::from_static(remaining),
            );
            headers
        };
        assert!(is_concurrency_limit(&headers("0", "0")));
        assert!(!is_concurrency_limit(&headers("600", "0")), "a bucket at 0");
        assert!(!is_concurrency_limit(&HeaderMap::new()), "no headers");
    }

    /// An org that answers every request 429 with `limit`/`remaining` and a reset
    /// `reset_in_s` ahead, counting the requests that reach it.
    async fn refusing_org(
        limit: &'static str,
        remaining: &'static str,
        reset_in_s: i64,
    ) -> (OktaClient, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::AtomicUsize;
        let reached = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&reached);
        let org = axum::Router::new().fallback(move || {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let reset = (unix_now() + reset_in_s).to_string();
                (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    [
                        ("x-rate-limit-limit", limit.to_owned()),
                        ("x-rate-limit-remaining", remaining.to_owned()),
                        ("x-rate-limit-reset", reset),
                        ("x-okta-request-id", "req-429".to_owned()),
                    ],
                    axum::Json(serde_json::json!({
                        "errorCode": "E0000047",
                        "errorSummary": "API call exceeded rate limit due to too many requests.",
                    })),
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, org).await });
        let client = OktaClient::new(
            Url::parse(&format!("http://{address}")).expect("url"),
            &Secret::new("t"),
            OktaClientSettings::default(),
        )
        .expect("client");
        (client, reached)
    }

    #[tokio::test]
    async fn a_bucket_429_is_reported_at_once_and_the_pacer_holds_the_next_request() {
        let (client, reached) = refusing_org("600", "0", 30).await;
        let error = client
            .get_user("someone@example.com")
            .await
            .expect_err("refused");
        assert_eq!(
            reached.load(Ordering::SeqCst),
            1,
            "no retry inside the call"
        );
        let OktaError::RateLimited {
            limit,
            retry_after,
            request_id,
            ..
        } = &error
        else {
            panic!("not a rate limit: {error}");
        };
        assert_eq!(*limit, LimitKind::Bucket);
        assert_eq!(request_id.as_deref(), Some("req-429"));
        // Reset − Date; Date is truncated to the second.
        assert!(
            (Duration::from_secs(30)..=Duration::from_secs(31)).contains(retry_after),
            "{retry_after:?}"
        );
        // The next request to that endpoint waits for the pacer, not for the wire.
        let held = tokio::time::timeout(
            Duration::from_millis(300),
            client.get_user("other@example.com"),
        )
        .await;
        assert!(held.is_err(), "held back by the pacer");
        assert_eq!(reached.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_concurrency_429_is_reported_at_once_with_a_short_delay() {
        let (client, reached) = refusing_org("0", "0", 60).await;
        let error = client.probe().await.expect_err("refused");
        assert_eq!(
            reached.load(Ordering::SeqCst),
            1,
            "no retry inside the call"
        );
        assert!(
            matches!(
                error,
                OktaError::RateLimited {
                    limit: LimitKind::Concurrency,
                    retry_after,
                    ..
                } if retry_after <= Duration::from_millis(50)
            ),
            "not its minute-long reset: {error}"
        );
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        let client = OktaClient::new(
            Url::parse("https://acme.okta.com/").expect("url"),
            &Secret::new("t"),
            OktaClientSettings::default(),
        )
        .expect("client");
        let url = client.url(&["api", "v1", "users", "a b/c@example.com"]);
        assert_eq!(
            url.as_str(),
            "https://acme.okta.com/api/v1/users/a%20b%2Fc@example.com"
        );
    }
}
