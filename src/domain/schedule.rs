//! Future-dated events, decided without I/O: when an event is due, which delay bucket
//! holds it meanwhile, and the headers that carry a schedule on a parked message.
//!
//! A future-dated event is parked on the broker, not in memory: it is published to a
//! delay queue whose TTL is one of a few fixed buckets, and expires back into the work
//! queue, where it is checked again. A restart loses nothing and a waiting event holds
//! no prefetch slot. Buckets shrink (1 day, 1 hour, 1 minute, 1 second), so an event
//! months ahead takes a few hundred hops and lands within a second of its time, never
//! before it.

use std::time::Duration;
use time::{Date, OffsetDateTime, Time};

/// Header on a parked message: when it is due (RFC 3339).
pub const SCHEDULED_FOR: &str = "x-scheduled-for";
/// Header on a parked message: what is due then ([`ScheduledKind::as_str`]).
pub const SCHEDULED_KIND: &str = "x-scheduled-kind";
/// Header that routes a parked message to its delay bucket (the delay exchange is a
/// headers exchange, so the message keeps its routing key, the event type). Not
/// `x-…`: a headers exchange ignores headers with that prefix when matching.
pub const DELAY_BUCKET: &str = "iam-delay-bucket";
/// Header on a parked removal re-check: until when (RFC 3339) a removal by employee id
/// alone that finds nobody is checked again (`REMOVAL_RECHECK_SECS` after its first run).
pub const RECHECK_UNTIL: &str = "x-recheck-until";

/// The shortest wait between two checks of a removal that found nobody.
pub const MIN_RECHECK: Duration = Duration::from_secs(2);
/// The longest wait between two checks of a removal that found nobody.
pub const MAX_RECHECK: Duration = Duration::from_secs(60);

/// One delay queue: messages wait there exactly `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayBucket {
    /// Suffix of the queue name (`<work queue>.delay.<name>`) and value of the routing
    /// header.
    pub name: &'static str,
    pub ttl: Duration,
}

/// The delay buckets, longest first. Fixed: a bucket's TTL is a queue argument, and
/// changing it would make the broker refuse the existing queue at start-up.
pub const BUCKETS: [DelayBucket; 4] = [
    DelayBucket {
        name: "1d",
        ttl: Duration::from_secs(86_400),
    },
    DelayBucket {
        name: "1h",
        ttl: Duration::from_secs(3_600),
    },
    DelayBucket {
        name: "1m",
        ttl: Duration::from_secs(60),
    },
    DelayBucket {
        name: "1s",
        ttl: Duration::from_secs(1),
    },
];

/// The bucket for an event due in `remaining`: the longest that does not overshoot, or
/// the shortest when less than it remains (the event is then up to that much late,
/// never early).
pub fn bucket_for(remaining: Duration) -> DelayBucket {
    BUCKETS
        .iter()
        .copied()
        .find(|b| b.ttl <= remaining)
        .unwrap_or(BUCKETS[BUCKETS.len() - 1])
}

/// What a parked message waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduledKind {
    /// A staged hire's activation on its start date (the parked message is the hire).
    Activation,
    /// A termination with a future `effective_at` (the parked message is the removal).
    Removal,
    /// A removal by employee id alone that found nobody, checked again because Okta's
    /// search lags writes (the parked message is the removal).
    RemovalRecheck,
}

impl ScheduledKind {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduledKind::Activation => "activation",
            ScheduledKind::Removal => "removal",
            ScheduledKind::RemovalRecheck => "removal-recheck",
        }
    }

    /// Reads the header value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "activation" => Some(Self::Activation),
            "removal" => Some(Self::Removal),
            "removal-recheck" => Some(Self::RemovalRecheck),
            _ => None,
        }
    }
}

/// The schedule a message carries in its headers, if it was parked before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    pub kind: ScheduledKind,
    pub due: OffsetDateTime,
}

/// When a start date begins: `time_of_day` (UTC) on that date (`ACTIVATION_TIME_OF_DAY`).
pub fn activation_instant(start_date: Date, time_of_day: Time) -> OffsetDateTime {
    start_date.with_time(time_of_day).assume_utc()
}

/// Parses `ACTIVATION_TIME_OF_DAY`: `HH:MM` or `HH:MM:SS`, UTC.
pub fn parse_time_of_day(value: &str) -> Option<Time> {
    let value = value.trim();
    let long = time::macros::format_description!("[hour]:[minute]:[second]");
    let short = time::macros::format_description!("[hour]:[minute]");
    Time::parse(value, long)
        .or_else(|_| Time::parse(value, short))
        .ok()
}

/// How long until `due`, or `None` when it is due now.
pub fn remaining(due: OffsetDateTime, now: OffsetDateTime) -> Option<Duration> {
    let left = due - now;
    if left.is_positive() {
        Duration::try_from(left).ok()
    } else {
        None
    }
}

/// When a removal by employee id alone that found nobody is checked next: after as
/// long as it has been checked for already (so about log2 of the window checks in
/// all), between [`MIN_RECHECK`] and [`MAX_RECHECK`], and never after `until`, where
/// the last check is made. `None` once `until` has come: the search may be trusted and
/// nobody has that id. `window` is the whole re-check time (`REMOVAL_RECHECK_SECS`).
pub fn next_recheck(
    window: Duration,
    until: OffsetDateTime,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    let left = remaining(until, now)?;
    let elapsed = window.saturating_sub(left);
    let step = elapsed.clamp(MIN_RECHECK, MAX_RECHECK);
    Some(if step >= left { until } else { now + step })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime, time};

    #[test]
    fn the_longest_bucket_that_does_not_overshoot_is_chosen() {
        let secs = Duration::from_secs;
        assert_eq!(bucket_for(secs(3 * 86_400)).name, "1d");
        assert_eq!(bucket_for(secs(86_400)).name, "1d");
        assert_eq!(bucket_for(secs(86_399)).name, "1h");
        assert_eq!(bucket_for(secs(61)).name, "1m");
        assert_eq!(bucket_for(secs(59)).name, "1s");
        assert_eq!(bucket_for(Duration::from_millis(300)).name, "1s");
    }

    #[test]
    fn hops_never_reach_past_the_due_time_by_more_than_the_shortest_bucket() {
        let due =
            Duration::from_secs(40 * 86_400 + 5 * 3_600 + 7 * 60 + 9) + Duration::from_millis(400);
        let mut waited = Duration::ZERO;
        let mut hops = 0;
        while waited < due {
            waited += bucket_for(due - waited).ttl;
            hops += 1;
        }
        assert!(waited - due < Duration::from_secs(1), "{waited:?}");
        assert!(hops <= 40 + 5 + 7 + 10, "{hops} hops");
    }

    #[test]
    fn a_start_date_begins_at_the_configured_time_of_day_in_utc() {
        assert_eq!(
            activation_instant(date!(2026 - 12 - 01), time!(06:30)),
            datetime!(2026-12-01 06:30 UTC)
        );
        assert_eq!(parse_time_of_day("06:30"), Some(time!(06:30)));
        assert_eq!(parse_time_of_day("23:59:58"), Some(time!(23:59:58)));
        assert_eq!(parse_time_of_day("25:00"), None);
        assert_eq!(parse_time_of_day("noon"), None);
    }

    #[test]
    fn only_a_future_time_leaves_time_remaining() {
        let now = datetime!(2026-11-28 09:00 UTC);
        assert_eq!(remaining(now, now), None);
        assert_eq!(remaining(datetime!(2026-11-28 08:00 UTC), now), None);
        assert_eq!(
            remaining(datetime!(2026-11-28 09:00:03 UTC), now),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn rechecks_back_off_and_end_exactly_at_the_deadline() {
        let start = datetime!(2026-11-28 09:00 UTC);
        let window = Duration::from_secs(120);
        let until = start + window;
        let mut now = start;
        let mut checks = vec![];
        while let Some(next) = next_recheck(window, until, now) {
            assert!(next > now && next <= until);
            checks.push((next - start).whole_seconds());
            now = next;
        }
        assert_eq!(checks, vec![2, 4, 8, 16, 32, 64, 120]);
        assert_eq!(
            next_recheck(window, until, until),
            None,
            "due: declare done"
        );
        assert_eq!(
            next_recheck(Duration::ZERO, start, start),
            None,
            "re-checks off"
        );
    }

    #[test]
    fn kinds_round_trip_through_their_header_value() {
        for kind in [
            ScheduledKind::Activation,
            ScheduledKind::Removal,
            ScheduledKind::RemovalRecheck,
        ] {
            assert_eq!(ScheduledKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ScheduledKind::parse("other"), None);
    }
}
