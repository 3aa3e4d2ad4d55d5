//! What happens to every request before a route sees it, in this order: the
//! concurrency limit, latency, the per-bucket rate limit, a simulated outage,
//! authentication (API token, or an access token and the operation's scope), then
//! injected faults. Also stamps the headers every Okta answer
//! carries (`X-Okta-Request-Id`, `Date`, `X-Rate-Limit-*`) and writes the request log.
//!
//! Rate limits are Okta's management limits (`limits`): per endpoint bucket, a fixed
//! window of about a minute, and a workforce org's numbers unless a test sets others,
//! so that a client pacing by a coarser key than Okta's, or waiting a window out where
//! none applies, is seen to be wrong.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use super::limits::{Bucket, BucketSnapshot, SimBucket};
use super::oauth;
use super::operations::operation_id;
use super::state::{random_token, ApiError};
use super::store::{FaultKind, RequestRecord, Shared, Store};

/// `bucket`'s running window, if any.
pub(super) fn snapshot(store: &Store, bucket: SimBucket) -> Option<BucketSnapshot> {
    let limit = store.rate_limit.map_or(UNLIMITED, |r| r.limit(bucket));
    store
        .buckets
        .get(&bucket)
        .filter(|b| tokio::time::Instant::now() < b.ends)
        .map(|b| BucketSnapshot {
            used: b.count,
            limit,
            remaining: limit.saturating_sub(b.count),
            reset_epoch: b.ends_epoch,
        })
}

/// Limit reported when no rate limit is configured: large enough that no client
/// throttles itself, while the headers stay present as they are on every Okta answer.
const UNLIMITED: u32 = 1_000_000;
const UNLIMITED_WINDOW: Duration = Duration::from_secs(60);
/// Oldest request-log entries are dropped past this many, to bound memory in benchmarks.
const MAX_LOG: usize = 200_000;

/// What an `/api/` caller proved to be, in [`authorize`]: the holder of the API token
/// (every right), or of an access token with some scopes.
#[derive(Debug, Clone)]
enum Credential {
    ApiToken,
    AccessToken { scopes: Vec<String> },
}

/// The rate-limit headers of one answer.
struct RateHeaders {
    limit: u32,
    remaining: u32,
    reset_epoch: i64,
}

/// Outcome of the checks that run before the route.
enum Verdict {
    Pass,
    Refuse(ApiError),
    /// 403 for an access token without this scope.
    MissingScope(&'static str),
    /// A DPoP rule broken (400 or 401 with a `DPoP` challenge).
    Dpop(oauth::DpopRefusal),
    HangThenPass(Duration),
    CloseConnection,
}

/// Middleware for every route: Okta's headers everywhere, the full gate on `/api/`.
pub async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let mut response = if request.uri().path().starts_with("/api/") {
        api_gate(&shared, request, next).await
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    if !headers.contains_key("x-okta-request-id") {
        if let Ok(id) = HeaderValue::from_str(&random_token(27)) {
            headers.insert("x-okta-request-id", id);
        }
    }
    if let Ok(date) = HeaderValue::from_str(&http_date(OffsetDateTime::now_utc())) {
        headers.insert(header::DATE, date);
    }
    response
}

/// Books one `/api/` request: counts it in flight while admitted and writes its log
/// entry however it ends. A client that hangs up first (say, timing out on a `Hang`
/// fault) is logged with status 499, as proxies do.
struct Tracked {
    shared: Arc<Shared>,
    record: RequestRecord,
    in_flight: bool,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut store = self.shared.store();
        if self.in_flight {
            store.in_flight = store.in_flight.saturating_sub(1);
        }
        if store.log.len() >= MAX_LOG {
            store.log.pop_front();
        }
        store.log.push_back(self.record.clone());
    }
}

async fn api_gate(shared: &Arc<Shared>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let (retry_for, retry_count) = (
        header_value(request.headers(), "x-okta-retry-for"),
        header_value(request.headers(), "x-okta-retry-count"),
    );
    let request_id = random_token(27);
    let mut tracked = Tracked {
        shared: shared.clone(),
        record: RequestRecord {
            method: method.to_string(),
            operation: operation_id(&method, &path),
            path: path.clone(),
            query: request.uri().query().map(str::to_owned),
            status: 499,
            request_id: request_id.clone(),
            retry_for,
            retry_count,
        },
        in_flight: false,
    };
    let latency = {
        let mut store = shared.store();
        if store
            .concurrency_limit
            .is_some_and(|limit| store.in_flight >= limit)
        {
            store.rate_limited += 1;
            None
        } else {
            store.in_flight += 1;
            tracked.in_flight = true;
            Some(store.latency)
        }
    };
    let response = match latency {
        None => {
            // Okta's reset on a concurrency 429 is only an estimate; the fake gives the
            // time-based window's, so a client that takes the 429 for a bucket at 0 and
            // waits for it is seen waiting needlessly.
            let reset_epoch = {
                let store = shared.store();
                snapshot(&store, SimBucket::of(&method, &path)).map_or_else(
                    || OffsetDateTime::now_utc().unix_timestamp() + 60,
                    |window| window.reset_epoch,
                )
            };
            let rate = RateHeaders {
                limit: 0,
                remaining: 0,
                reset_epoch,
            };
            with_rate_headers(ApiError::rate_limited().into_response(), &rate)
        }
        Some(latency) => {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let (verdict, rate) = check(shared, &method, &path, request.headers());
            let response = match verdict {
                Verdict::Pass => next.run(request).await,
                Verdict::HangThenPass(delay) => {
                    tokio::time::sleep(delay).await;
                    next.run(request).await
                }
                Verdict::Refuse(error) => error.into_response(),
                Verdict::MissingScope(scope) => oauth::insufficient_scope_response(scope, &path),
                Verdict::Dpop(refusal) => refusal.into_response(&path),
                Verdict::CloseConnection => broken_response(),
            };
            with_rate_headers(response, &rate)
        }
    };
    tracked.record.status = response.status().as_u16();
    let mut response = response;
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-okta-request-id", id);
    }
    response
}

fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Rate limit, outage, authentication and faults, decided under one lock.
fn check(
    shared: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> (Verdict, RateHeaders) {
    let mut store = shared.store();
    let (rate, exceeded) = count_request(&mut store, SimBucket::of(method, path));
    let verdict = if exceeded {
        store.rate_limited += 1;
        Verdict::Refuse(ApiError::rate_limited())
    } else if let Some(status) = store.outage {
        Verdict::Refuse(ApiError::simulated(status, ""))
    } else if let Some(verdict) = authorize(shared, &mut store, method, path, headers) {
        verdict
    } else {
        match take_fault(&mut store, method, path) {
            None => Verdict::Pass,
            Some(FaultKind::Status { status, error_code }) => {
                Verdict::Refuse(ApiError::simulated(status, &error_code))
            }
            Some(FaultKind::Hang(delay)) => Verdict::HangThenPass(delay),
            Some(FaultKind::CloseConnection) => Verdict::CloseConnection,
        }
    };
    (verdict, rate)
}

/// Who the caller is, from `Authorization`; `None` for an unknown or expired token.
fn credential(shared: &Shared, store: &Store, headers: &HeaderMap) -> Option<Credential> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())?;
    if let Some(token) = presented.strip_prefix("SSWS ") {
        return (token == shared.api_token).then_some(Credential::ApiToken);
    }
    // The scheme's rules (DPoP-bound or not) are `oauth::dpop_refusal`'s; here only
    // whether the token is valid, and for what.
    let token = presented
        .strip_prefix("Bearer ")
        .or_else(|| presented.strip_prefix("DPoP "))?;
    store
        .oauth
        .scopes_of(token)
        .map(|scopes| Credential::AccessToken {
            scopes: scopes.to_vec(),
        })
}

/// Refuses a caller without a valid credential (401 `E0000011`), or whose access token
/// lacks the operation's scope (403 `E0000006`); `None` lets the request through.
fn authorize(
    shared: &Shared,
    store: &mut Store,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<Verdict> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    if let Some(refusal) =
        oauth::dpop_refusal(&mut store.oauth, method.as_str(), host, path, headers)
    {
        return Some(Verdict::Dpop(refusal));
    }
    match credential(shared, store, headers) {
        None => Some(Verdict::Refuse(ApiError::new(
            401,
            "E0000011",
            "Invalid token provided",
        ))),
        Some(Credential::ApiToken) => None,
        Some(Credential::AccessToken { scopes }) => {
            let (named, accepted) = oauth::required_scope(operation_id(method, path))?;
            let allowed = scopes.iter().any(|s| accepted.contains(&s.as_str()));
            (!allowed).then_some(Verdict::MissingScope(named))
        }
    }
}

/// Counts a request in its bucket's fixed window; true when it is over the limit.
fn count_request(store: &mut Store, bucket: SimBucket) -> (RateHeaders, bool) {
    let (limit, window) = match store.rate_limit {
        Some(r) => (r.limit(bucket), r.window()),
        None => (UNLIMITED, UNLIMITED_WINDOW),
    };
    let now = tokio::time::Instant::now();
    let fresh = || {
        let end = OffsetDateTime::now_utc() + window;
        Bucket {
            count: 0,
            ends: now + window,
            ends_epoch: end.unix_timestamp() + i64::from(end.nanosecond() > 0),
        }
    };
    let entry = store.buckets.entry(bucket).or_insert_with(fresh);
    if now >= entry.ends {
        *entry = fresh();
    }
    entry.count = entry.count.saturating_add(1);
    let exceeded = store.rate_limit.is_some() && entry.count > limit;
    let rate = RateHeaders {
        limit,
        remaining: limit.saturating_sub(entry.count),
        reset_epoch: entry.ends_epoch,
    };
    (rate, exceeded)
}

/// Takes one use of the first matching fault, dropping it when used up.
fn take_fault(store: &mut Store, method: &Method, path: &str) -> Option<FaultKind> {
    let index = store.faults.iter().position(|f| {
        f.times > 0
            && f.method
                .as_ref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
            && f.path_contains
                .as_ref()
                .is_none_or(|p| path.contains(p.as_str()))
    })?;
    let fault = &mut store.faults[index];
    fault.times -= 1;
    let kind = fault.kind.clone();
    if fault.times == 0 {
        store.faults.remove(index);
    }
    Some(kind)
}

fn with_rate_headers(mut response: Response, rate: &RateHeaders) -> Response {
    // After a 429 nothing is left in the window, whatever produced it.
    let remaining = if response.status() == StatusCode::TOO_MANY_REQUESTS {
        0
    } else {
        rate.remaining
    };
    let headers = response.headers_mut();
    headers.insert("x-rate-limit-limit", HeaderValue::from(rate.limit));
    headers.insert("x-rate-limit-remaining", HeaderValue::from(remaining));
    headers.insert("x-rate-limit-reset", HeaderValue::from(rate.reset_epoch));
    response
}

/// An answer whose body fails at once: hyper then drops the connection, and the client
/// sees it closed before a complete message (or, at worst, a truncated body).
fn broken_response() -> Response {
    let chunks = futures_util::stream::iter([Err::<Bytes, _>(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "simulated connection drop",
    ))]);
    let mut response = Response::new(Body::from_stream(chunks));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("4096"));
    response
}

/// An HTTP `Date` value (IMF-fixdate).
fn http_date(now: OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    now.format(&format).unwrap_or_default()
}
