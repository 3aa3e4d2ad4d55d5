//! Staying under Okta's rate limits instead of running into them.
//!
//! Every Okta answer says how many requests its bucket has left in the current window
//! (`X-Rate-Limit-Remaining`) and when the window resets (`X-Rate-Limit-Reset`). The
//! pacer keeps that per bucket and lets a request go only while the bucket, less the
//! requests already in flight, has room; otherwise the request waits for the reset. A
//! sustained burst then runs at the limit with few 429s, rather than bursting into
//! 429s and backing off. While a bucket's state is unknown (at start, after a window
//! reset) one request goes first and the others wait for its answer, so a burst of
//! concurrent requests cannot overrun a small limit before the first answer is in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What one answer said about its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketReport {
    pub remaining: u64,
    /// Time until the window resets, by Okta's clock.
    pub resets_in: Duration,
}

#[derive(Debug, Default)]
struct Bucket {
    remaining: Option<u64>,
    resets_at: Option<Instant>,
    in_flight: u64,
    /// The last answer had no rate-limit headers (a proxy's error page, say): nothing
    /// to pace by, so do not hold requests back waiting for them.
    unmetered: bool,
}

/// Paces requests per rate-limit bucket. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    buckets: Arc<Mutex<HashMap<&'static str, Bucket>>>,
    /// Woken whenever a request finishes, for requests waiting on an unknown bucket.
    answered: Arc<Notify>,
}

enum Decision {
    Go,
    WaitFor(Duration),
    WaitForAnswer,
}

/// A request's permission to go; dropping it without [`Permit::report`] (a transport
/// error, say) just releases its place.
pub struct Permit {
    pacer: Pacer,
    bucket: &'static str,
    reported: bool,
}

impl Pacer {
    /// A pacer that knows nothing yet (every bucket open).
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until `bucket` has room, then takes a place in it.
    pub async fn acquire(&self, bucket: &'static str) -> Permit {
        loop {
            // Registered before the check, so an answer arriving in between is not missed.
            let answered = self.answered.notified();
            let decision = {
                let mut buckets = lock(&self.buckets);
                let state = buckets.entry(bucket).or_default();
                let now = Instant::now();
                if state.resets_at.is_some_and(|reset| now >= reset) {
                    // A new window: what is left is unknown until the next answer.
                    state.remaining = None;
                    state.resets_at = None;
                }
                let decision = match (state.remaining, state.resets_at) {
                    (Some(remaining), Some(reset)) if remaining <= state.in_flight => {
                        Decision::WaitFor(reset.saturating_duration_since(now))
                    }
                    (None, _) if state.in_flight > 0 && !state.unmetered => Decision::WaitForAnswer,
                    _ => Decision::Go,
                };
                if matches!(decision, Decision::Go) {
                    state.in_flight += 1;
                }
                decision
            };
            match decision {
                Decision::Go => {
                    return Permit {
                        pacer: self.clone(),
                        bucket,
                        reported: false,
                    }
                }
                // A little spread so waiters do not all return in the same millisecond.
                Decision::WaitFor(wait) => {
                    tokio::time::sleep(wait + Duration::from_millis(fastrand::u64(0..50))).await
                }
                Decision::WaitForAnswer => answered.await,
            }
        }
    }

    fn release(&self, bucket: &'static str, answer: Option<Option<BucketReport>>) {
        let mut buckets = lock(&self.buckets);
        let state = buckets.entry(bucket).or_default();
        state.in_flight = state.in_flight.saturating_sub(1);
        match answer {
            Some(Some(report)) => {
                state.remaining = Some(report.remaining);
                state.resets_at = Some(Instant::now() + report.resets_in);
                state.unmetered = false;
            }
            Some(None) => state.unmetered = true,
            None => {}
        }
        drop(buckets);
        self.answered.notify_waiters();
    }
}

impl Permit {
    /// Records what an answer said about the bucket (`None`: it had no rate-limit
    /// headers) and releases the place.
    pub fn report(mut self, report: Option<BucketReport>) {
        self.reported = true;
        self.pacer.release(self.bucket, Some(report));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.pacer.release(self.bucket, None);
        }
    }
}

/// The rate-limit bucket of a request path. Okta's buckets are per endpoint family;
/// grouping by the resource (`users`, `groups`, …) errs on the careful side.
pub fn bucket_of(path: &str) -> &'static str {
    let mut segments = path.trim_start_matches('/').split('/');
    match (segments.next(), segments.next(), segments.next()) {
        (Some("api"), Some("v1"), Some("users")) => "users",
        (Some("api"), Some("v1"), Some("groups")) => "groups",
        (Some("oauth2"), _, _) => "oauth2",
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

    #[test]
    fn paths_map_to_buckets() {
        assert_eq!(bucket_of("/api/v1/users/00u1/lifecycle/activate"), "users");
        assert_eq!(bucket_of("/api/v1/groups/00g1/users/00u1"), "groups");
        assert_eq!(bucket_of("/oauth2/v1/token"), "oauth2");
        assert_eq!(bucket_of("/api/v1/org"), "other");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_bucket_lets_one_request_go_first() {
        let pacer = Pacer::new();
        let first = pacer.acquire("users").await;
        let second = tokio::time::timeout(Duration::from_secs(1), pacer.acquire("users")).await;
        assert!(second.is_err(), "the second waits for the first answer");
        first.report(Some(BucketReport {
            remaining: 5,
            resets_in: Duration::from_secs(10),
        }));
        let started = Instant::now();
        let (a, b) = (pacer.acquire("users").await, pacer.acquire("users").await);
        assert_eq!(started.elapsed(), Duration::ZERO, "room known: no waiting");
        drop((a, b));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_request_lets_the_next_try() {
        let pacer = Pacer::new();
        let first = pacer.acquire("users").await;
        let waiter = {
            let pacer = pacer.clone();
            tokio::spawn(async move { drop(pacer.acquire("users").await) })
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
        pacer.acquire("users").await.report(Some(BucketReport {
            remaining: 0,
            resets_in: Duration::from_secs(2),
        }));
        let started = Instant::now();
        let permit = pacer.acquire("users").await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(2), "{waited:?}");
        assert!(waited < Duration::from_millis(2100), "{waited:?}");
        drop(permit);
        // Another bucket was never held up.
        let other = Instant::now();
        drop(pacer.acquire("groups").await);
        assert_eq!(other.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_count_against_what_is_left() {
        let pacer = Pacer::new();
        pacer.acquire("users").await.report(Some(BucketReport {
            remaining: 2,
            resets_in: Duration::from_secs(10),
        }));
        let first = pacer.acquire("users").await;
        let second = pacer.acquire("users").await;
        // Two in flight, two left: the third must wait for the window.
        let third = tokio::time::timeout(Duration::from_secs(5), pacer.acquire("users")).await;
        assert!(third.is_err(), "a third request would overrun the bucket");
        drop((first, second));
    }
}
