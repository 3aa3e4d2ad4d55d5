//! Staying under Okta's rate limits instead of running into them.
//!
//! Okta counts requests **per endpoint** (method and path template: `POST /api/v1/users`
//! is one bucket, `GET /api/v1/users/{id}` another, `POST .../lifecycle/deactivate` a
//! third), and its answers do not name the bucket. So the pacer keys its state by the
//! endpoint of each request ([`endpoint_of`]): a createUser bucket at 0 never holds back a
//! leaver's `getUser`, `revokeUserSessions` or `deactivateUser`.
//!
//! Every Okta answer says how many requests its bucket has left in the current window
//! (`X-Rate-Limit-Remaining`) and when the window resets (`X-Rate-Limit-Reset`). The
//! pacer keeps that per endpoint and lets a request go only while the bucket, less the
//! requests already in flight, has room; otherwise the request waits for the reset. A
//! sustained burst then runs at the limit with few 429s, rather than bursting into
//! 429s and backing off. While an endpoint's state is unknown (at start, after a window
//! reset) one request goes first and the others wait for its answer, so a burst of
//! concurrent requests cannot overrun a small limit before the first answer is in.
//!
//! Leavers go first. Requests made for a removal run [`with_priority`]; where they compete
//! with hires for one bucket, normal requests leave them the room they wait for, a
//! leaver is the one that goes first into a new window, and a hire whose window opens
//! while a leaver still waits for its own (perhaps the same bucket on Okta's side: the
//! search a removal by employee id makes shares Okta's `/api/v1/users` bucket with
//! `createUser`, under another endpoint here) yields for up to [`YIELD_TO_PRIORITY`].
//! Reset times are known to a second only, so that is the margin that puts the leaver
//! first.
//!
//! The pacer is also the only layer that knows what a 429 means for the requests after
//! it (issue 13, "One layer handles rate limits"). The client reports a refusal here
//! ([`Permit::refused`]) and does not retry; the pacer holds the endpoint (a bucket
//! 429: until Okta's reset, as Okta's SDKs wait) or every request (a concurrency 429:
//! a short, growing backoff) and answers how long the next request will wait. That is
//! the delay the client hands up in `OktaError::RateLimited`, and the pipeline retries
//! after it without using an attempt. So the pacer decides *when*, the pipeline decides
//! *what*, and the client only reports.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long after its own window opened a normal request still gives way to a priority
/// request waiting for a window: Okta's reset is given in whole seconds.
pub const YIELD_TO_PRIORITY: Duration = Duration::from_millis(1100);

/// The longest a reset Okta announces is believed: a window lasts a minute, so a reset
/// further away is a skewed `Date` or a proxy's header, and waiting it out would stall
/// work on a bad number.
pub const MAX_RESET_WAIT: Duration = Duration::from_secs(65);

/// How long a bucket 429 without a usable `X-Rate-Limit-Reset` holds its endpoint.
pub const WAIT_WITHOUT_RESET: Duration = Duration::from_secs(1);

/// Whose request it is: a leaver's requests go before others in the same bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    #[default]
    Normal,
    /// A removal: access must end quickly, whatever the backlog of hires.
    Leaver,
}

tokio::task_local! {
    static PRIORITY: Priority;
}

/// Runs `work` with every Okta request it makes paced at `priority`.
pub async fn with_priority<F: Future>(priority: Priority, work: F) -> F::Output {
    PRIORITY.scope(priority, work).await
}

/// The priority of the task making a request ([`Priority::Normal`] outside
/// [`with_priority`]).
pub fn current_priority() -> Priority {
    PRIORITY.try_with(|p| *p).unwrap_or_default()
}

/// What one answer said about its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketReport {
    pub remaining: u64,
    /// Time until the window resets, by Okta's clock.
    pub resets_in: Duration,
}

/// What a 429 said, as the client read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The endpoint's bucket is spent until its window resets, `resets_in` from now by
    /// Okta's clock (`None`: no usable `X-Rate-Limit-Reset`).
    BucketEmpty { resets_in: Option<Duration> },
    /// Okta's org-wide concurrency limit (`X-Rate-Limit-Limit` and `-Remaining` both 0):
    /// too many requests in flight, not a bucket at 0. It clears as soon as one of them
    /// finishes, so its reset (only an estimate) is not waited for.
    Concurrency,
}

/// How long a bucket 429 holds its endpoint: the time left in the window, as for a
/// bucket an ordinary answer shows empty, or [`WAIT_WITHOUT_RESET`]; never more than
/// [`MAX_RESET_WAIT`]. Okta's SDKs add 1 s to `Reset − Date`; the time left is already
/// measured against a `Date` truncated to the second, never short of the real time
/// left, and a second more per 429 cost the rate-limited benchmark (4a) 1.6 % of its
/// throughput.
pub fn wait_after_refusal(resets_in: Option<Duration>) -> Duration {
    resets_in.unwrap_or(WAIT_WITHOUT_RESET).min(MAX_RESET_WAIT)
}

/// The pause after the `refusal`-th (1-based) concurrency 429 in a row: half of
/// `50 ms × 2^(refusal−1)` (at most 1 s) plus a random share (`unit` in `[0, 1]`) of
/// the other half, so that requests refused together do not all come back together.
pub fn concurrency_backoff(refusal: u32, unit: f64) -> Duration {
    let cap = Duration::from_millis(50)
        .saturating_mul(1 << refusal.saturating_sub(1).min(10))
        .min(Duration::from_secs(1));
    cap / 2 + (cap / 2).mul_f64(unit.clamp(0.0, 1.0))
}

#[derive(Debug, Default)]
struct Bucket {
    remaining: Option<u64>,
    resets_at: Option<Instant>,
    /// When the current window was seen to open (the last reset that passed).
    opened_at: Option<Instant>,
    in_flight: u64,
    /// Priority requests waiting for room in this bucket.
    priority_waiting: u64,
    /// The last answer had no rate-limit headers (a proxy's error page, say): nothing
    /// to pace by, so do not hold requests back waiting for them.
    unmetered: bool,
    /// A 429 spent this bucket: nothing goes before then, whatever answers that were
    /// already on their way say.
    refused_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<&'static str, Bucket>,
    /// Priority requests waiting in any bucket.
    priority_waiting: u64,
    /// A concurrency 429: no request, to any endpoint, goes before then.
    held_until: Option<Instant>,
    /// Concurrency 429s since the last other answer, for the growing backoff.
    concurrency_refusals: u32,
}

/// Paces requests per endpoint. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    state: Arc<Mutex<State>>,
    /// Woken whenever a request finishes, for requests waiting on an unknown bucket.
    answered: Arc<Notify>,
}

enum Decision {
    Go,
    WaitFor(Duration),
    WaitForAnswer,
}

/// A request's permission to go. Its answer is given back with [`Permit::report`] or,
/// for a 429, [`Permit::refused`]; dropping it without either (a transport error) just
/// releases its place.
pub struct Permit {
    pacer: Pacer,
    endpoint: &'static str,
    reported: bool,
}

/// A priority request's place among the waiters; taken back however the wait ends
/// (cancelled included), so normal requests never keep yielding to nobody.
struct Waiting<'a> {
    pacer: &'a Pacer,
    endpoint: &'static str,
    registered: bool,
}

impl Waiting<'_> {
    fn register(&mut self, state: &mut State) {
        if !self.registered {
            self.registered = true;
            state.priority_waiting += 1;
            state
                .buckets
                .entry(self.endpoint)
                .or_default()
                .priority_waiting += 1;
        }
    }

    fn unregister(&mut self, state: &mut State) {
        if self.registered {
            self.registered = false;
            state.priority_waiting = state.priority_waiting.saturating_sub(1);
            let bucket = state.buckets.entry(self.endpoint).or_default();
            bucket.priority_waiting = bucket.priority_waiting.saturating_sub(1);
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.registered {
            let mut state = lock(&self.pacer.state);
            self.unregister(&mut state);
            drop(state);
            self.pacer.answered.notify_waiters();
        }
    }
}

impl Pacer {
    /// A pacer that knows nothing yet (every bucket open).
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until `endpoint` has room, then takes a place in it, at the priority of
    /// the calling task ([`with_priority`]).
    pub async fn acquire(&self, endpoint: &'static str) -> Permit {
        self.acquire_as(endpoint, current_priority()).await
    }

    /// [`Pacer::acquire`] at an explicit priority.
    pub async fn acquire_as(&self, endpoint: &'static str, priority: Priority) -> Permit {
        let mut waiting = Waiting {
            pacer: self,
            endpoint,
            registered: false,
        };
        loop {
            // Registered before the check, so an answer arriving in between is not missed.
            let answered = self.answered.notified();
            let decision = {
                let mut state = lock(&self.state);
                let decision = decide(&mut state, endpoint, priority, Instant::now());
                if matches!(decision, Decision::Go) {
                    waiting.unregister(&mut state);
                    state.buckets.entry(endpoint).or_default().in_flight += 1;
                } else if priority == Priority::Leaver {
                    waiting.register(&mut state);
                }
                decision
            };
            match decision {
                Decision::Go => {
                    return Permit {
                        pacer: self.clone(),
                        endpoint,
                        reported: false,
                    }
                }
                // A little spread so waiters do not all return in the same millisecond;
                // less for leavers, so that they are back first.
                Decision::WaitFor(wait) => {
                    let spread = match priority {
                        Priority::Leaver => fastrand::u64(0..10),
                        Priority::Normal => fastrand::u64(0..50),
                    };
                    tokio::time::sleep(wait + Duration::from_millis(spread)).await
                }
                Decision::WaitForAnswer => answered.await,
            }
        }
    }

    fn release(&self, endpoint: &'static str, answer: Option<Option<BucketReport>>) {
        let mut state = lock(&self.state);
        if answer.is_some() {
            // Okta answered something other than a concurrency 429: in-flight room again.
            state.concurrency_refusals = 0;
        }
        let bucket = state.buckets.entry(endpoint).or_default();
        bucket.in_flight = bucket.in_flight.saturating_sub(1);
        match answer {
            Some(Some(report)) => {
                bucket.remaining = Some(report.remaining);
                bucket.resets_at = Some(Instant::now() + report.resets_in.min(MAX_RESET_WAIT));
                bucket.unmetered = false;
            }
            Some(None) => bucket.unmetered = true,
            None => {}
        }
        drop(state);
        self.answered.notify_waiters();
    }

    /// Records a 429 for `endpoint` and returns how long the next request will be held
    /// back by it: for a bucket, that endpoint's; for the concurrency limit, any.
    fn refuse(&self, endpoint: &'static str, refusal: Refusal) -> Duration {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let wait = match refusal {
            Refusal::BucketEmpty { resets_in } => {
                state.concurrency_refusals = 0;
                let until = now + wait_after_refusal(resets_in);
                let bucket = state.buckets.entry(endpoint).or_default();
                let until = bucket.refused_until.map_or(until, |held| held.max(until));
                bucket.refused_until = Some(until);
                // Spent until then; what is left after it is unknown, so one request
                // goes first into the new window.
                bucket.remaining = Some(0);
                bucket.resets_at = Some(until);
                bucket.unmetered = false;
                until - now
            }
            Refusal::Concurrency => {
                state.concurrency_refusals = state.concurrency_refusals.saturating_add(1);
                let backoff = concurrency_backoff(state.concurrency_refusals, fastrand::f64());
                let until = state
                    .held_until
                    .map_or(now + backoff, |held| held.max(now + backoff));
                state.held_until = Some(until);
                until - now
            }
        };
        let bucket = state.buckets.entry(endpoint).or_default();
        bucket.in_flight = bucket.in_flight.saturating_sub(1);
        drop(state);
        self.answered.notify_waiters();
        wait
    }
}

/// Whether a request for `endpoint` at `priority` may go now.
fn decide(state: &mut State, endpoint: &'static str, priority: Priority, now: Instant) -> Decision {
    // The org is at its concurrency limit: nobody goes for a moment, leavers included
    // (Okta would refuse them too).
    if let Some(held) = state.held_until {
        if now < held {
            return Decision::WaitFor(held - now);
        }
        state.held_until = None;
    }
    let leavers_waiting_anywhere = state.priority_waiting;
    let bucket = state.buckets.entry(endpoint).or_default();
    if let Some(refused) = bucket.refused_until {
        if now < refused {
            return Decision::WaitFor(refused - now);
        }
        bucket.refused_until = None;
    }
    if let Some(reset) = bucket.resets_at.filter(|reset| now >= *reset) {
        // A new window: what is left is unknown until the next answer.
        bucket.remaining = None;
        bucket.resets_at = None;
        bucket.opened_at = Some(reset);
    }
    // Normal requests leave room for the leavers waiting in this bucket.
    let reserved = match priority {
        Priority::Leaver => 0,
        Priority::Normal => bucket.priority_waiting,
    };
    let decision = match (bucket.remaining, bucket.resets_at) {
        (Some(remaining), Some(reset)) if remaining <= bucket.in_flight + reserved => {
            Decision::WaitFor(reset.saturating_duration_since(now))
        }
        (None, _) if !bucket.unmetered && bucket.in_flight + reserved > 0 => {
            Decision::WaitForAnswer
        }
        _ => Decision::Go,
    };
    if matches!(decision, Decision::Go) && priority == Priority::Normal {
        // A window that just opened here may be the one a leaver elsewhere waits for
        // (Okta's buckets can span endpoints, and resets are known to the second): give
        // way for a moment.
        if let Some(yield_until) = bucket
            .opened_at
            .map(|opened| opened + YIELD_TO_PRIORITY)
            .filter(|until| leavers_waiting_anywhere > 0 && now < *until)
        {
            return Decision::WaitFor((yield_until - now).min(Duration::from_millis(50)));
        }
    }
    decision
}

impl Permit {
    /// Records what an answer said about the bucket (`None`: it had no rate-limit
    /// headers) and releases the place.
    pub fn report(mut self, report: Option<BucketReport>) {
        self.reported = true;
        self.pacer.release(self.endpoint, Some(report));
    }

    /// Records a 429 and releases the place. Returns how long the pacer will now hold
    /// the next request (of this endpoint for a bucket, of any for the concurrency
    /// limit): the delay after which trying again is worth it.
    #[must_use = "the caller reports this delay to whoever retries"]
    pub fn refused(mut self, refusal: Refusal) -> Duration {
        self.reported = true;
        self.pacer.refuse(self.endpoint, refusal)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.pacer.release(self.endpoint, None);
        }
    }
}

/// The endpoint of a request, as Okta's rate limits see it: the method and the path
/// template (`POST /api/v1/users/{id}/lifecycle/deactivate`). Paths this service does
/// not call share one `other` key.
pub fn endpoint_of(method: &str, path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // The org URL may carry a path prefix: the template starts at `api/v1` or `oauth2`.
    let start = segments
        .iter()
        .position(|s| *s == "api" || *s == "oauth2")
        .unwrap_or(segments.len());
    let method = method.to_ascii_uppercase();
    match (method.as_str(), &segments[start..]) {
        ("POST", ["oauth2", .., "token"]) => "POST /oauth2/v1/token",
        ("GET", ["api", "v1", "users"]) => "GET /api/v1/users",
        ("POST", ["api", "v1", "users"]) => "POST /api/v1/users",
        ("GET", ["api", "v1", "users", _]) => "GET /api/v1/users/{id}",
        ("POST", ["api", "v1", "users", _]) => "POST /api/v1/users/{id}",
        ("PUT", ["api", "v1", "users", _]) => "PUT /api/v1/users/{id}",
        ("DELETE", ["api", "v1", "users", _]) => "DELETE /api/v1/users/{id}",
        ("POST", ["api", "v1", "users", _, "lifecycle", step]) => match *step {
            "activate" => "POST /api/v1/users/{id}/lifecycle/activate",
            "deactivate" => "POST /api/v1/users/{id}/lifecycle/deactivate",
            "reactivate" => "POST /api/v1/users/{id}/lifecycle/reactivate",
            "suspend" => "POST /api/v1/users/{id}/lifecycle/suspend",
            "unsuspend" => "POST /api/v1/users/{id}/lifecycle/unsuspend",
            _ => "POST /api/v1/users/{id}/lifecycle/{other}",
        },
        ("DELETE", ["api", "v1", "users", _, "sessions"]) => "DELETE /api/v1/users/{id}/sessions",
        ("GET", ["api", "v1", "users", _, "groups"]) => "GET /api/v1/users/{id}/groups",
        ("GET", ["api", "v1", "groups"]) => "GET /api/v1/groups",
        ("GET", ["api", "v1", "groups", _]) => "GET /api/v1/groups/{id}",
        ("GET", ["api", "v1", "groups", _, "users"]) => "GET /api/v1/groups/{id}/users",
        ("PUT", ["api", "v1", "groups", _, "users", _]) => "PUT /api/v1/groups/{id}/users/{uid}",
        ("DELETE", ["api", "v1", "groups", _, "users", _]) => {
            "DELETE /api/v1/groups/{id}/users/{uid}"
        }
        _ => "other",
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: &str = "POST /api/v1/users";
    const SEARCH: &str = "GET /api/v1/users";
    const GET_USER: &str = "GET /api/v1/users/{id}";

    fn empty_for(resets_in: Duration) -> Option<BucketReport> {
        Some(BucketReport {
            remaining: 0,
            resets_in,
        })
    }

    #[test]
    fn requests_map_to_their_endpoint() {
        let cases = [
            ("POST", "/api/v1/users", "POST /api/v1/users"),
            ("GET", "/api/v1/users", "GET /api/v1/users"),
            (
                "GET",
                "/api/v1/users/a%40b.example",
                "GET /api/v1/users/{id}",
            ),
            ("POST", "/api/v1/users/00u1", "POST /api/v1/users/{id}"),
            ("DELETE", "/api/v1/users/00u1", "DELETE /api/v1/users/{id}"),
            (
                "POST",
                "/api/v1/users/00u1/lifecycle/deactivate",
                "POST /api/v1/users/{id}/lifecycle/deactivate",
            ),
            (
                "DELETE",
                "/api/v1/users/00u1/sessions",
                "DELETE /api/v1/users/{id}/sessions",
            ),
            (
                "PUT",
                "/api/v1/groups/00g1/users/00u1",
                "PUT /api/v1/groups/{id}/users/{uid}",
            ),
            ("GET", "/api/v1/groups", "GET /api/v1/groups"),
            ("post", "/oauth2/v1/token", "POST /oauth2/v1/token"),
            ("GET", "/prefix/api/v1/users/00u1", "GET /api/v1/users/{id}"),
            ("GET", "/api/v1/org", "other"),
        ];
        for (method, path, endpoint) in cases {
            assert_eq!(endpoint_of(method, path), endpoint, "{method} {path}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_create_bucket_never_delays_a_leavers_endpoints() {
        let pacer = Pacer::new();
        pacer
            .acquire(CREATE)
            .await
            .report(empty_for(Duration::from_secs(60)));
        let started = Instant::now();
        for endpoint in [
            GET_USER,
            "DELETE /api/v1/users/{id}/sessions",
            "POST /api/v1/users/{id}/lifecycle/deactivate",
        ] {
            pacer.acquire(endpoint).await.report(Some(BucketReport {
                remaining: 100,
                resets_in: Duration::from_secs(60),
            }));
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        let create = tokio::time::timeout(Duration::from_secs(30), pacer.acquire(CREATE)).await;
        assert!(
            create.is_err(),
            "createUser itself still waits for its reset"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_bucket_lets_one_request_go_first() {
        let pacer = Pacer::new();
        let first = pacer.acquire(CREATE).await;
        let second = tokio::time::timeout(Duration::from_secs(1), pacer.acquire(CREATE)).await;
        assert!(second.is_err(), "the second waits for the first answer");
        first.report(Some(BucketReport {
            remaining: 5,
            resets_in: Duration::from_secs(10),
        }));
        let started = Instant::now();
        let (a, b) = (pacer.acquire(CREATE).await, pacer.acquire(CREATE).await);
        assert_eq!(started.elapsed(), Duration::ZERO, "room known: no waiting");
        drop((a, b));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_request_lets_the_next_try() {
        let pacer = Pacer::new();
        let first = pacer.acquire(CREATE).await;
        let waiter = {
            let pacer = pacer.clone();
            tokio::spawn(async move { drop(pacer.acquire(CREATE).await) })
        };
        tokio::task::yield_now().await;
        drop(first); // a transport error: no report
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("released")
            .expect("task");
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_bucket_waits_for_the_reset() {
        let pacer = Pacer::new();
        pacer
            .acquire(CREATE)
            .await
            .report(empty_for(Duration::from_secs(2)));
        let started = Instant::now();
        let permit = pacer.acquire(CREATE).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(2), "{waited:?}");
        assert!(waited < Duration::from_millis(2100), "{waited:?}");
        drop(permit);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_count_against_what_is_left() {
        let pacer = Pacer::new();
        pacer.acquire(CREATE).await.report(Some(BucketReport {
            remaining: 2,
            resets_in: Duration::from_secs(10),
        }));
        let first = pacer.acquire(CREATE).await;
        let second = pacer.acquire(CREATE).await;
        // Two in flight, two left: the third must wait for the window.
        let third = tokio::time::timeout(Duration::from_secs(5), pacer.acquire(CREATE)).await;
        assert!(third.is_err(), "a third request would overrun the bucket");
        drop((first, second));
    }

    /// Spawns a request at `priority`; its name is sent once it has its permit, which
    /// it then holds until the test ends.
    fn spawn_request(
        pacer: &Pacer,
        endpoint: &'static str,
        priority: Priority,
        name: &'static str,
        order: &tokio::sync::mpsc::UnboundedSender<&'static str>,
    ) -> tokio::task::JoinHandle<Permit> {
        let (pacer, order) = (pacer.clone(), order.clone());
        tokio::spawn(async move {
            let permit = pacer.acquire_as(endpoint, priority).await;
            let _ = order.send(name);
            permit
        })
    }

    #[tokio::test(start_paused = true)]
    async fn in_one_bucket_a_leaver_goes_before_the_hires_waiting_with_it() {
        let pacer = Pacer::new();
        pacer
            .acquire(SEARCH)
            .await
            .report(empty_for(Duration::from_secs(2)));
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let hires: Vec<_> = ["hire-1", "hire-2", "hire-3"]
            .into_iter()
            .map(|name| spawn_request(&pacer, SEARCH, Priority::Normal, name, &tx))
            .collect();
        tokio::task::yield_now().await;
        let leaver = spawn_request(&pacer, SEARCH, Priority::Leaver, "leaver", &tx);
        assert_eq!(
            order.recv().await,
            Some("leaver"),
            "first into the new window"
        );
        // The leaver's answer: one place left; it goes to a hire, the others wait.
        leaver.await.expect("task").report(Some(BucketReport {
            remaining: 1,
            resets_in: Duration::from_secs(60),
        }));
        assert!(order
            .recv()
            .await
            .is_some_and(|name| name.starts_with("hire")));
        drop(hires);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_place_in_a_window_goes_to_the_waiting_leaver() {
        let pacer = Pacer::new();
        let first = pacer.acquire_as(SEARCH, Priority::Normal).await;
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let hire = spawn_request(&pacer, SEARCH, Priority::Normal, "hire", &tx);
        tokio::task::yield_now().await;
        let leaver = spawn_request(&pacer, SEARCH, Priority::Leaver, "leaver", &tx);
        tokio::task::yield_now().await;
        first.report(Some(BucketReport {
            remaining: 1,
            resets_in: Duration::from_secs(60),
        }));
        assert_eq!(order.recv().await, Some("leaver"));
        let next = tokio::time::timeout(Duration::from_secs(30), order.recv()).await;
        assert!(next.is_err(), "the hire waits for the next window");
        drop((hire, leaver));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hire_gives_way_to_a_leaver_waiting_for_a_window_a_moment_later() {
        // createUser and the leaver's search share one bucket at Okta, under two
        // endpoints here, whose resets were read a fraction of a second apart.
        let pacer = Pacer::new();
        pacer
            .acquire(CREATE)
            .await
            .report(empty_for(Duration::from_secs(2)));
        pacer
            .acquire(SEARCH)
            .await
            .report(empty_for(Duration::from_millis(2600)));
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let leaver = spawn_request(&pacer, SEARCH, Priority::Leaver, "leaver", &tx);
        tokio::task::yield_now().await;
        let hire = spawn_request(&pacer, CREATE, Priority::Normal, "hire", &tx);
        assert_eq!(order.recv().await, Some("leaver"));
        assert_eq!(order.recv().await, Some("hire"));
        drop((leaver, hire));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hire_yields_for_a_bounded_time_only() {
        let pacer = Pacer::new();
        pacer
            .acquire(CREATE)
            .await
            .report(empty_for(Duration::from_secs(1)));
        pacer
            .acquire(SEARCH)
            .await
            .report(empty_for(Duration::from_secs(60)));
        let leaver = {
            let pacer = pacer.clone();
            tokio::spawn(async move { pacer.acquire_as(SEARCH, Priority::Leaver).await })
        };
        tokio::task::yield_now().await;
        let started = Instant::now();
        drop(pacer.acquire_as(CREATE, Priority::Normal).await);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(1), "{waited:?}");
        assert!(waited <= Duration::from_millis(2200), "{waited:?}");
        leaver.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_leaver_that_gives_up_waiting_holds_nobody_back() {
        let pacer = Pacer::new();
        pacer
            .acquire(SEARCH)
            .await
            .report(empty_for(Duration::from_secs(1)));
        let gave_up = tokio::time::timeout(
            Duration::from_millis(10),
            pacer.acquire_as(SEARCH, Priority::Leaver),
        )
        .await;
        assert!(gave_up.is_err());
        let started = Instant::now();
        drop(pacer.acquire_as(SEARCH, Priority::Normal).await);
        assert!(started.elapsed() < Duration::from_millis(1100));
    }

    fn bucket_429(resets_in_s: u64) -> Refusal {
        Refusal::BucketEmpty {
            resets_in: Some(Duration::from_secs(resets_in_s)),
        }
    }

    /// How long an `acquire` of `endpoint` waits, in paused time (the permit is dropped).
    async fn wait_for(pacer: &Pacer, endpoint: &'static str) -> Duration {
        let started = Instant::now();
        drop(pacer.acquire(endpoint).await);
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_429_holds_its_endpoint_for_the_delay_it_returns() {
        let pacer = Pacer::new();
        let retry_after = pacer.acquire(CREATE).await.refused(bucket_429(3));
        assert_eq!(retry_after, Duration::from_secs(3), "until the reset");
        assert_eq!(
            wait_for(&pacer, GET_USER).await,
            Duration::ZERO,
            "other endpoints go"
        );
        let waited = wait_for(&pacer, CREATE).await;
        assert!(waited >= retry_after, "{waited:?}");
        assert!(
            waited < retry_after + Duration::from_millis(100),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_429_one_request_goes_first_into_the_new_window() {
        let pacer = Pacer::new();
        let retry_after = pacer.acquire(CREATE).await.refused(bucket_429(1));
        tokio::time::sleep(retry_after).await;
        let first = pacer.acquire(CREATE).await;
        let second = tokio::time::timeout(Duration::from_secs(5), pacer.acquire(CREATE)).await;
        assert!(
            second.is_err(),
            "the window's room is unknown until an answer"
        );
        drop(first);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_outlasts_an_answer_that_was_already_on_its_way() {
        let pacer = Pacer::new();
        pacer.acquire(CREATE).await.report(Some(BucketReport {
            remaining: 5,
            resets_in: Duration::from_secs(1),
        }));
        let (early, refused) = (pacer.acquire(CREATE).await, pacer.acquire(CREATE).await);
        let retry_after = refused.refused(bucket_429(10));
        // Sent before the 429, answered after it, with a stale picture of the bucket.
        early.report(Some(BucketReport {
            remaining: 4,
            resets_in: Duration::from_secs(1),
        }));
        let waited = wait_for(&pacer, CREATE).await;
        assert!(waited >= retry_after, "{waited:?} < {retry_after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_without_a_reset_holds_one_second_and_a_far_reset_at_most_max() {
        let pacer = Pacer::new();
        let no_reset = pacer
            .acquire(CREATE)
            .await
            .refused(Refusal::BucketEmpty { resets_in: None });
        assert_eq!(no_reset, WAIT_WITHOUT_RESET);
        let far = pacer.acquire(GET_USER).await.refused(bucket_429(3_600));
        assert_eq!(far, MAX_RESET_WAIT);
        let waited = wait_for(&pacer, GET_USER).await;
        assert!(
            waited < MAX_RESET_WAIT + Duration::from_millis(100),
            "{waited:?}"
        );
        // An ordinary answer's reset is bounded the same way.
        pacer
            .acquire(SEARCH)
            .await
            .report(empty_for(Duration::from_secs(3_600)));
        let waited = wait_for(&pacer, SEARCH).await;
        assert!(
            waited <= MAX_RESET_WAIT + Duration::from_millis(100),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_concurrency_429_holds_every_endpoint_briefly_and_leaves_buckets_alone() {
        let pacer = Pacer::new();
        pacer.acquire(CREATE).await.report(Some(BucketReport {
            remaining: 50,
            resets_in: Duration::from_secs(60),
        }));
        let retry_after = pacer.acquire(CREATE).await.refused(Refusal::Concurrency);
        assert!(
            (Duration::from_millis(25)..=Duration::from_millis(50)).contains(&retry_after),
            "{retry_after:?}"
        );
        let waited = wait_for(&pacer, GET_USER).await;
        assert!(waited >= retry_after, "the org is at its limit: {waited:?}");
        assert!(
            waited < Duration::from_millis(150),
            "no window waited for: {waited:?}"
        );
        assert_eq!(wait_for(&pacer, CREATE).await, Duration::ZERO, "room left");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_429s_in_a_row_back_off_further_until_okta_answers() {
        let pacer = Pacer::new();
        let mut waits = Vec::new();
        for _ in 0..3 {
            let permit = pacer.acquire(GET_USER).await;
            waits.push(permit.refused(Refusal::Concurrency));
        }
        assert!(
            (Duration::from_millis(100)..=Duration::from_millis(200)).contains(&waits[2]),
            "third in a row: {waits:?}"
        );
        pacer.acquire(GET_USER).await.report(Some(BucketReport {
            remaining: 50,
            resets_in: Duration::from_secs(60),
        }));
        let after_answer = pacer.acquire(GET_USER).await.refused(Refusal::Concurrency);
        assert!(
            after_answer <= Duration::from_millis(50),
            "{after_answer:?}"
        );
    }

    #[test]
    fn concurrency_backoff_is_short_growing_and_spread() {
        assert_eq!(concurrency_backoff(1, 0.0), Duration::from_millis(25));
        assert_eq!(concurrency_backoff(1, 1.0), Duration::from_millis(50));
        assert_eq!(concurrency_backoff(3, 0.0), Duration::from_millis(100));
        for refusal in 1..=20 {
            assert!(concurrency_backoff(refusal, 1.0) <= Duration::from_secs(1));
        }
    }

    #[tokio::test]
    async fn priority_is_that_of_the_task() {
        assert_eq!(current_priority(), Priority::Normal);
        let inside = with_priority(Priority::Leaver, async { current_priority() }).await;
        assert_eq!(inside, Priority::Leaver);
    }
}
