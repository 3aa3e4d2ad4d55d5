//! What Okta's rate-limit headers say: when a bucket's window resets (by Okta's own
//! clock, `Date`), and whether a 429 is the org-wide concurrency limit. Read by the
//! client for the pacer, and by the token endpoint's caller in `auth`, which the pacer
//! does not see.

use super::pacing;
use reqwest::header::HeaderMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time until `X-Rate-Limit-Reset`, measured on Okta's clock (`Date`) so that clock
/// skew does not matter; zero for a reset already past. `Date` is truncated to the
/// second, so this is never short of the true time left.
pub(super) fn resets_in(headers: &HeaderMap) -> Option<Duration> {
    let reset = header_i64(headers, "x-rate-limit-reset")?;
    let now = headers
        .get("date")
        .and_then(|v| v.to_str().ok())
        .and_then(httpdate_to_unix)
        .unwrap_or_else(unix_now);
    Some(Duration::from_secs(u64::try_from(reset - now).unwrap_or(0)))
}

/// Whether a 429 is Okta's concurrency limit (too many requests in flight org-wide)
/// rather than an endpoint's bucket at 0: its `X-Rate-Limit-Limit` and
/// `X-Rate-Limit-Remaining` are both 0 (see `okta/BEHAVIOUR.md`, "Rate limits").
pub fn is_concurrency_limit(headers: &HeaderMap) -> bool {
    header_i64(headers, "x-rate-limit-limit") == Some(0)
        && header_i64(headers, "x-rate-limit-remaining") == Some(0)
}

pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

pub(super) fn header_i64(headers: &HeaderMap, name: &str) -> Option<i64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// How long to wait after a 429 from an endpoint the pacer does not see (the token
/// endpoint): the pacer's rule for a bucket 429, `X-Rate-Limit-Reset − Date`, bounded
/// by [`pacing::MAX_RESET_WAIT`].
pub fn rate_limit_wait(headers: &HeaderMap) -> Duration {
    pacing::wait_after_refusal(resets_in(headers))
}

/// Parses an IMF-fixdate (`Sun, 29 Nov 2026 06:07:40 GMT`) to Unix seconds.
pub(super) fn httpdate_to_unix(value: &str) -> Option<i64> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(value.trim(), format)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}
