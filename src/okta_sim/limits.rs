//! Okta's management rate limits as the fake keeps them: the endpoint buckets, the
//! requests each allows per window, and the count of a running window. The gate counts
//! every request here; the handle and `/__sim/settings` change the limits. Plain data,
//! so that the store can hold it without depending on the gate.
//!
//! The numbers are a workforce org's, per minute (the table in `okta/BEHAVIOUR.md`,
//! from developer.okta.com/docs/reference/rl-global-mgmt), unless a test sets others.

use std::time::Duration;

use axum::http::Method;

/// A workforce org's limit on requests in flight (Okta: "75 concurrent transactions").
pub const WORKFORCE_CONCURRENCY_LIMIT: usize = 75;

/// One of Okta's management rate-limit buckets (per minute, workforce org, from
/// developer.okta.com/docs/reference/rl-global-mgmt as `okta/BEHAVIOUR.md` lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimBucket {
    /// `GET|POST /api/v1/users`: list, search, create. 600.
    Users,
    /// `GET /api/v1/users/{idOrLogin}`. 2,000.
    UserById,
    /// `POST|PUT|DELETE /api/v1/users/{id}`: update, replace, delete. 600.
    UserWrites,
    /// `/api/v1/groups`. 500.
    Groups,
    /// `/api/v1/groups/{id}` and below (members). 1,000.
    GroupById,
    /// Every other `/api/v1` path (lifecycle, sessions, a user's groups). 1,200.
    Other,
}

impl SimBucket {
    /// Every bucket, in the order of [`RateLimit`]'s table.
    pub const ALL: [SimBucket; 6] = [
        SimBucket::Users,
        SimBucket::UserById,
        SimBucket::UserWrites,
        SimBucket::Groups,
        SimBucket::GroupById,
        SimBucket::Other,
    ];

    /// The bucket a request counts in.
    pub fn of(method: &Method, path: &str) -> SimBucket {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(3).collect();
        match (segments.as_slice(), method.as_str()) {
            (["users"], "GET" | "POST") => SimBucket::Users,
            (["users", _], "GET") => SimBucket::UserById,
            (["users", _], "POST" | "PUT" | "DELETE") => SimBucket::UserWrites,
            (["groups"], _) => SimBucket::Groups,
            (["groups", _, ..], _) => SimBucket::GroupById,
            _ => SimBucket::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Okta's rate limits: requests allowed per window in each [`SimBucket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    limits: [u32; SimBucket::ALL.len()],
    window: Duration,
}

impl RateLimit {
    /// The same limit in every bucket (each bucket counted on its own).
    pub fn uniform(requests_per_window: u32, window: Duration) -> RateLimit {
        RateLimit {
            limits: [requests_per_window; SimBucket::ALL.len()],
            window,
        }
    }

    /// A workforce org's per-minute limits (`okta/BEHAVIOUR.md`, "Rate limits").
    pub fn workforce() -> RateLimit {
        RateLimit {
            limits: [600, 2_000, 600, 500, 1_000, 1_200],
            window: Duration::from_secs(60),
        }
    }

    /// This limit, with `bucket` allowing `requests_per_window`.
    pub fn with_limit(mut self, bucket: SimBucket, requests_per_window: u32) -> RateLimit {
        self.limits[bucket.index()] = requests_per_window;
        self
    }

    /// This limit, with windows of `window`.
    pub fn with_window(mut self, window: Duration) -> RateLimit {
        self.window = window;
        self
    }

    /// Requests allowed per window in `bucket`.
    pub fn limit(&self, bucket: SimBucket) -> u32 {
        self.limits[bucket.index()]
    }

    /// Length of a window; Okta's is one minute.
    pub fn window(&self) -> Duration {
        self.window
    }
}

/// A bucket's current window, for assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSnapshot {
    /// Requests counted in this window (refused ones included).
    pub used: u32,
    pub limit: u32,
    pub remaining: u32,
    /// When the window ends, UTC epoch seconds (`X-Rate-Limit-Reset`).
    pub reset_epoch: i64,
}

/// Fixed-window counter for one rate-limit bucket.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    pub(super) count: u32,
    pub(super) ends: tokio::time::Instant,
    /// Window end as UTC epoch seconds, rounded up so a client waiting for it is never early.
    pub(super) ends_epoch: i64,
}
