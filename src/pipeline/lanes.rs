//! Two lanes into the service, so that a leaver is cut off within seconds even behind a
//! burst of thousands of hires.
//!
//! The **work lane** is the contract's work queue: every event, bound with `employee.*`,
//! consumed in publication order. The **leavers lane** is `<work queue>.leavers`, bound
//! to the same input exchange with `employee.removed` only and consumed with its own
//! small prefetch, so a removal starts at once however long the work queue is. The
//! contract fixes the work queue's binding, so every removal published to the input
//! exchange lands in *both* queues: the two copies are *twins* with the same event id.
//!
//! This module decides, without I/O, what each copy does:
//!
//! - Whichever twin settles first (its outcome confirmed) does the work and reports it;
//!   the later one is acknowledged without an Okta call or an outcome
//!   ([`Admission::TwinSettled`]). Twins share their employee's ordering keys, so the
//!   [`Sequencer`](crate::pipeline::sequencer::Sequencer) never runs them at once and the later
//!   one always sees the first one's record.
//! - A removal carried out on the leavers lane has overtaken the events published
//!   before it that still wait in the work queue. Its twin in the work queue marks
//!   exactly where it was published: until that twin arrives, an `employee.added` for
//!   the same employee on the work lane was published *before* the removal. If HR dates
//!   it no later than the removal ([`Admission::OvertakenByRemoval`]), running it as
//!   usual would enable the leaver again; instead the provisioner brings the account to
//!   where publication order leaves it — created or adopted with the hire's profile and
//!   groups, then offboarded — without enabling it on the way. A hire dated after the
//!   removal (clocks of two HR systems, say) runs as usual, and then the removal's twin
//!   runs too instead of being skipped, so publication order still has the last word.
//!   Updates never change a status and run as usual; removals are never skipped.
//! - A removal that arrives with no twin (replayed from the dead-letter queue, returned
//!   from a delay queue, or published before the leavers queue existed) is an ordinary
//!   event of its lane.
//!
//! The record lives in this process only. With several replicas, or across a restart,
//! a twin may find no record: it then runs again, which converges (the user is already
//! deactivated, nothing is done) but publishes a second outcome for the event; and a
//! hire the record would have caught runs, after which the removal's work-queue twin —
//! finding no record either — offboards the user again. Okta ends in the published
//! order's state either way; access is removed when in doubt. A record whose twin went
//! to another replica only ever holds back hires dated no later than its removal.
//!
//! In partitioned mode ([`Lanes::draining`]) per-employee order across replicas comes
//! from the partitions, which a removal taken early would bypass: there the leavers
//! lane's copies are acknowledged unprocessed and their twins, in the partitions, do
//! the work in order.

use crate::domain::event::{EventBody, EventType, HrEvent};
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use time::OffsetDateTime;

/// Twins remembered at most; the oldest record is forgotten first. A forgotten twin
/// runs again (see the module documentation), so this bounds memory, not correctness.
pub const DEFAULT_TWIN_MEMORY: usize = 20_000;

/// Which queue a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The work queue: every event type, in publication order.
    Work,
    /// `<work queue>.leavers`: removals only, never behind hires.
    Leavers,
}

impl Lane {
    /// The lane's name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Work => "work",
            Lane::Leavers => "leavers",
        }
    }
}

/// What a parsed delivery should do, decided when its employee's turn has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Carry it out as usual.
    Process,
    /// Its twin in the other lane has settled: acknowledge it, publish nothing.
    TwinSettled,
    /// A hire published before a removal the leavers lane has already carried out: it
    /// must leave the account offboarded, as publication order would.
    OvertakenByRemoval,
}

/// How a processed delivery ended, once its outcome was confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Outcome `succeeded`: the removal is in effect in Okta.
    CarriedOut,
    /// Anything else that ended the delivery (dead-lettered, or not carried out now).
    Other,
}

/// The lanes' shared record of settled twins. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Lanes {
    input_exchange: String,
    capacity: usize,
    /// False in partitioned mode: the leavers lane's copies are only acknowledged.
    fast_track: bool,
    ledger: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Event id → the twin that settled first.
    settled: HashMap<String, SettledTwin>,
    /// Settled twins, oldest first, for forgetting past `capacity`.
    order: VecDeque<(u64, String)>,
    next_seq: u64,
    /// Ordering key → the latest removal carried out on the leavers lane whose
    /// work-queue twin has not arrived yet.
    superseding: HashMap<String, CarriedOutRemoval>,
}

#[derive(Debug)]
struct SettledTwin {
    seq: u64,
    lane: Lane,
    /// The ordering keys this twin put in `superseding` (empty unless it was carried
    /// out on the leavers lane).
    superseding_keys: Vec<String>,
    /// A hire of the same employee ran as usual (it may have enabled the account)
    /// between this removal and its work-queue twin: the twin must run again.
    reenabled: bool,
}

#[derive(Debug, Clone)]
struct CarriedOutRemoval {
    event_id: String,
    occurred_at: OffsetDateTime,
}

impl Lanes {
    /// Lanes for a service whose input exchange is `input_exchange`.
    pub fn new(input_exchange: &str) -> Self {
        Self::with_capacity(input_exchange, DEFAULT_TWIN_MEMORY)
    }

    /// As [`Lanes::new`], remembering at most `capacity` settled twins.
    pub fn with_capacity(input_exchange: &str, capacity: usize) -> Self {
        Self {
            input_exchange: input_exchange.to_owned(),
            capacity: capacity.max(1),
            fast_track: true,
            ledger: Mutex::new(Ledger::default()),
        }
    }

    /// Lanes for partitioned mode: per-employee order across replicas comes from the
    /// partitions, which a removal taken early from the leavers lane would bypass, so
    /// the leavers lane's copies of removals are acknowledged unprocessed and their
    /// twins, in the partitions, do the work.
    pub fn draining(input_exchange: &str) -> Self {
        Self {
            fast_track: false,
            ..Self::new(input_exchange)
        }
    }

    /// Whether a delivery has a twin: a removal routed by the input exchange, which
    /// binds both queues for `employee.removed`.
    pub fn has_twin(&self, exchange: &str, routing_key: &str) -> bool {
        exchange == self.input_exchange && routing_key == EventType::Removed.as_str()
    }

    /// Whether an unreadable delivery should be acknowledged without a word: the leavers
    /// lane's copy of an invalid removal, whose work-queue twin is dead-lettered and
    /// reported (an invalid message has no event id to match twins by, nor keys to order
    /// them by, so one lane must own it).
    pub fn leave_invalid_to_work_lane(
        &self,
        lane: Lane,
        exchange: &str,
        routing_key: &str,
    ) -> bool {
        lane == Lane::Leavers && self.has_twin(exchange, routing_key)
    }

    /// Decides what a parsed delivery does. Call once its turn has come.
    pub fn admit(
        &self,
        lane: Lane,
        exchange: &str,
        routing_key: &str,
        event: &HrEvent,
    ) -> Admission {
        if !self.fast_track {
            return match lane {
                Lane::Leavers if self.has_twin(exchange, routing_key) => Admission::TwinSettled,
                _ => Admission::Process,
            };
        }
        let mut ledger = self.lock();
        if self.has_twin(exchange, routing_key) {
            let event_id = event.event_id.as_str();
            if let Some(twin) = ledger.settled.get(event_id).filter(|t| t.lane != lane) {
                let reenabled = twin.reenabled;
                ledger.forget(event_id);
                return if reenabled {
                    Admission::Process
                } else {
                    Admission::TwinSettled
                };
            }
        }
        if lane == Lane::Work && matches!(event.body, EventBody::Added(_)) {
            let removals: Vec<CarriedOutRemoval> = event
                .ordering_keys()
                .iter()
                .filter_map(|key| ledger.superseding.get(key).cloned())
                .collect();
            if removals.iter().any(|r| event.occurred_at <= r.occurred_at) {
                return Admission::OvertakenByRemoval;
            }
            // HR says this hire happened after the removal, though it was published
            // before it: it runs as usual, and the removal's twin runs again after it,
            // so that publication order still has the last word.
            for removal in removals {
                if let Some(twin) = ledger.settled.get_mut(&removal.event_id) {
                    twin.reenabled = true;
                }
            }
        }
        Admission::Process
    }

    /// Records how a delivery admitted with [`Admission::Process`] ended, before it is
    /// acknowledged (and so before the next delivery of its employee may start).
    pub fn settled(
        &self,
        lane: Lane,
        exchange: &str,
        routing_key: &str,
        event: &HrEvent,
        settlement: Settlement,
    ) {
        if !self.fast_track || !self.has_twin(exchange, routing_key) {
            return;
        }
        let event_id = event.event_id.as_str();
        let mut ledger = self.lock();
        // A redelivery of a copy already recorded (its acknowledgement was lost) keeps
        // the first record.
        if ledger.settled.contains_key(event_id) {
            return;
        }
        let mut superseding_keys = Vec::new();
        if (lane, settlement) == (Lane::Leavers, Settlement::CarriedOut) {
            for key in event.ordering_keys() {
                let removal = CarriedOutRemoval {
                    event_id: event_id.to_owned(),
                    occurred_at: event.occurred_at,
                };
                ledger.superseding.insert(key.clone(), removal);
                superseding_keys.push(key);
            }
        }
        ledger.next_seq += 1;
        let seq = ledger.next_seq;
        ledger.order.push_back((seq, event_id.to_owned()));
        ledger.settled.insert(
            event_id.to_owned(),
            SettledTwin {
                seq,
                lane,
                superseding_keys,
                reenabled: false,
            },
        );
        while ledger.settled.len() > self.capacity {
            let Some((seq, oldest)) = ledger.order.pop_front() else {
                break;
            };
            if ledger.settled.get(&oldest).is_some_and(|t| t.seq == seq) {
                ledger.forget(&oldest);
            }
        }
    }

    /// How many settled twins are remembered; for tests and metrics.
    pub fn remembered(&self) -> usize {
        self.lock().settled.len()
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Ledger {
    /// Drops a settled twin's record and the supersessions it holds.
    fn forget(&mut self, event_id: &str) {
        let Some(twin) = self.settled.remove(event_id) else {
            return;
        };
        for key in twin.superseding_keys {
            if self
                .superseding
                .get(&key)
                .is_some_and(|r| r.event_id == event_id)
            {
                self.superseding.remove(&key);
            }
        }
        // `order` keeps a stale entry; its sequence number no longer matches, so the
        // eviction loop skips it. Trim what is stale at the front now and then.
        while let Some((seq, front)) = self.order.front() {
            if self.settled.get(front).is_some_and(|t| t.seq == *seq) {
                break;
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{parse_message, RawMessage};
    use serde_json::json;

    const INPUT: &str = "hr.events";
    const REMOVED: &str = "employee.removed";

    fn event(routing_key: &str, event_id: &str, id: &str, email: &str) -> HrEvent {
        event_at(routing_key, event_id, id, email, "2026-11-28T09:00:00Z")
    }

    fn event_at(
        routing_key: &str,
        event_id: &str,
        id: &str,
        email: &str,
        occurred_at: &str,
    ) -> HrEvent {
        let body = json!({
            "event_id": event_id,
            "occurred_at": occurred_at,
            "employee": {"id": id, "email": email, "first_name": "A", "last_name": "B"}
        })
        .to_string();
        parse_message(RawMessage {
            routing_key,
            content_type: None,
            body: body.as_bytes(),
        })
        .expect("valid event")
    }

    fn removal(event_id: &str, id: &str, email: &str) -> HrEvent {
        event(REMOVED, event_id, id, email)
    }

    #[test]
    fn lane_names_are_the_metric_labels() {
        assert_eq!(Lane::Work.as_str(), "work");
        assert_eq!(Lane::Leavers.as_str(), "leavers");
    }

    #[test]
    fn only_removals_routed_by_the_input_exchange_have_twins() {
        let lanes = Lanes::new(INPUT);
        assert!(lanes.has_twin(INPUT, REMOVED));
        assert!(!lanes.has_twin(INPUT, "employee.added"));
        assert!(!lanes.has_twin("iam-provisioner.replay", REMOVED));
        assert!(!lanes.has_twin("", REMOVED));
        assert!(lanes.leave_invalid_to_work_lane(Lane::Leavers, INPUT, REMOVED));
        assert!(!lanes.leave_invalid_to_work_lane(Lane::Work, INPUT, REMOVED));
        assert!(!lanes.leave_invalid_to_work_lane(Lane::Leavers, "", REMOVED));
    }

    #[test]
    fn the_later_twin_is_settled_whichever_lane_went_first() {
        for (first, second) in [(Lane::Leavers, Lane::Work), (Lane::Work, Lane::Leavers)] {
            let lanes = Lanes::new(INPUT);
            let r = removal("r1", "E-1", "a@example.com");
            assert_eq!(lanes.admit(first, INPUT, REMOVED, &r), Admission::Process);
            lanes.settled(first, INPUT, REMOVED, &r, Settlement::CarriedOut);
            assert_eq!(
                lanes.admit(second, INPUT, REMOVED, &r),
                Admission::TwinSettled
            );
            assert_eq!(lanes.remembered(), 0, "the record goes with the twin");
        }
    }

    #[test]
    fn a_redelivered_copy_in_the_same_lane_runs_again() {
        let lanes = Lanes::new(INPUT);
        let r = removal("r1", "E-1", "a@example.com");
        lanes.settled(Lane::Leavers, INPUT, REMOVED, &r, Settlement::CarriedOut);
        assert_eq!(
            lanes.admit(Lane::Leavers, INPUT, REMOVED, &r),
            Admission::Process
        );
        lanes.settled(Lane::Leavers, INPUT, REMOVED, &r, Settlement::Other);
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, REMOVED, &r),
            Admission::TwinSettled
        );
    }

    #[test]
    fn a_replayed_removal_is_an_ordinary_event() {
        let lanes = Lanes::new(INPUT);
        let r = removal("r1", "E-1", "a@example.com");
        lanes.settled(Lane::Leavers, INPUT, REMOVED, &r, Settlement::CarriedOut);
        let replay = "iam-provisioner.replay";
        assert_eq!(
            lanes.admit(Lane::Work, replay, REMOVED, &r),
            Admission::Process
        );
        lanes.settled(Lane::Work, replay, REMOVED, &r, Settlement::Other);
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, REMOVED, &r),
            Admission::TwinSettled
        );
    }

    #[test]
    fn a_hire_queued_before_a_fast_tracked_removal_is_overtaken_until_its_twin() {
        let lanes = Lanes::new(INPUT);
        let r = removal("r1", "E-1", "a@example.com");
        lanes.settled(Lane::Leavers, INPUT, REMOVED, &r, Settlement::CarriedOut);
        // Published before the removal: by id, or by email alone.
        for (id, email) in [("E-1", "other@example.com"), ("E-9", "A@example.com")] {
            let hire = event("employee.added", "h0", id, email);
            assert_eq!(
                lanes.admit(Lane::Work, INPUT, "employee.added", &hire),
                Admission::OvertakenByRemoval
            );
        }
        let update = event("employee.updated", "u0", "E-1", "a@example.com");
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, "employee.updated", &update),
            Admission::Process,
            "updates never reactivate"
        );
        let unrelated = event("employee.added", "h1", "E-2", "b@example.com");
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, "employee.added", &unrelated),
            Admission::Process
        );
        // The removal's twin marks where it was published; a rehire after it proceeds.
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, REMOVED, &r),
            Admission::TwinSettled
        );
        let rehire = event("employee.added", "h2", "E-1", "a@example.com");
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, "employee.added", &rehire),
            Admission::Process
        );
    }

    #[test]
    fn a_hire_queued_before_the_removal_but_dated_after_it_runs_and_the_removal_runs_again() {
        let lanes = Lanes::new(INPUT);
        let r = removal("r1", "E-1", "a@example.com");
        lanes.settled(Lane::Leavers, INPUT, REMOVED, &r, Settlement::CarriedOut);
        let later = event_at(
            "employee.added",
            "h1",
            "E-1",
            "a@example.com",
            "2026-11-28T10:00:00Z",
        );
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, "employee.added", &later),
            Admission::Process
        );
        // Published after that hire, the removal has the last word: its twin runs.
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, REMOVED, &r),
            Admission::Process
        );
        assert_eq!(lanes.remembered(), 0);
    }

    #[test]
    fn a_removal_whose_twin_never_comes_never_holds_back_a_later_rehire() {
        // Another replica took the twin: the record stays until it is forgotten.
        let lanes = Lanes::new(INPUT);
        let r = removal("r1", "E-1", "a@example.com");
        lanes.settled(Lane::Leavers, INPUT, REMOVED, &r, Settlement::CarriedOut);
        let rehire = event_at(
            "employee.added",
            "h2",
            "E-1",
            "a@example.com",
            "2026-12-28T09:00:00Z",
        );
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, "employee.added", &rehire),
            Admission::Process
        );
    }

    #[test]
    fn draining_acknowledges_the_leavers_copies_and_records_nothing() {
        let lanes = Lanes::draining(INPUT);
        let r = removal("r1", "E-1", "a@example.com");
        assert_eq!(
            lanes.admit(Lane::Leavers, INPUT, REMOVED, &r),
            Admission::TwinSettled
        );
        assert_eq!(
            lanes.admit(Lane::Work, "wq.partitions", REMOVED, &r),
            Admission::Process
        );
        lanes.settled(Lane::Work, INPUT, REMOVED, &r, Settlement::CarriedOut);
        lanes.settled(Lane::Leavers, INPUT, REMOVED, &r, Settlement::CarriedOut);
        assert_eq!(lanes.remembered(), 0);
        let hire = event("employee.added", "h0", "E-1", "a@example.com");
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, "employee.added", &hire),
            Admission::Process
        );
        // Published straight to the leavers queue, a removal has no twin: it runs.
        assert_eq!(
            lanes.admit(Lane::Leavers, "", REMOVED, &r),
            Admission::Process
        );
    }

    #[test]
    fn a_removal_not_carried_out_supersedes_nothing() {
        let lanes = Lanes::new(INPUT);
        let r = removal("r1", "E-1", "a@example.com");
        lanes.settled(Lane::Leavers, INPUT, REMOVED, &r, Settlement::Other);
        let hire = event("employee.added", "h0", "E-1", "a@example.com");
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, "employee.added", &hire),
            Admission::Process
        );
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, REMOVED, &r),
            Admission::TwinSettled
        );
    }

    #[test]
    fn a_removal_settled_on_the_work_lane_supersedes_nothing() {
        let lanes = Lanes::new(INPUT);
        let r = removal("r1", "E-1", "a@example.com");
        lanes.settled(Lane::Work, INPUT, REMOVED, &r, Settlement::CarriedOut);
        let rehire = event("employee.added", "h2", "E-1", "a@example.com");
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, "employee.added", &rehire),
            Admission::Process
        );
    }

    #[test]
    fn of_two_fast_tracked_removals_the_later_one_supersedes_until_its_own_twin() {
        let lanes = Lanes::new(INPUT);
        let r1 = removal("r1", "E-1", "a@example.com");
        let r2 = removal("r2", "E-1", "a@example.com");
        lanes.settled(Lane::Leavers, INPUT, REMOVED, &r1, Settlement::CarriedOut);
        lanes.settled(Lane::Leavers, INPUT, REMOVED, &r2, Settlement::CarriedOut);
        let hire = event("employee.added", "h", "E-1", "a@example.com");
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, REMOVED, &r1),
            Admission::TwinSettled
        );
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, "employee.added", &hire),
            Admission::OvertakenByRemoval
        );
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, REMOVED, &r2),
            Admission::TwinSettled
        );
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, "employee.added", &hire),
            Admission::Process
        );
    }

    #[test]
    fn a_twin_recorded_again_is_forgotten_by_its_new_age_not_its_old_one() {
        let lanes = Lanes::with_capacity(INPUT, 3);
        let r = |n: &str| removal(n, &format!("E-{n}"), &format!("{n}@example.com"));
        let carried_out = |event: &HrEvent| {
            lanes.settled(Lane::Leavers, INPUT, REMOVED, event, Settlement::CarriedOut);
        };
        let (a, x, b, c, d) = (r("a"), r("x"), r("b"), r("c"), r("d"));
        carried_out(&a);
        carried_out(&x);
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, REMOVED, &x),
            Admission::TwinSettled
        );
        carried_out(&b);
        // The leavers copy of `x` comes again (its acknowledgement was lost after the
        // twin ran): it runs and is recorded anew, younger than `b`.
        assert_eq!(
            lanes.admit(Lane::Leavers, INPUT, REMOVED, &x),
            Admission::Process
        );
        carried_out(&x);
        carried_out(&c); // forgets `a`, the oldest
        carried_out(&d); // forgets `b`: `x`'s first record is no longer its age
        assert_eq!(lanes.remembered(), 3);
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, REMOVED, &x),
            Admission::TwinSettled,
            "`x` was recorded after `b`, so it is remembered longer"
        );
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, REMOVED, &b),
            Admission::Process
        );
    }

    #[test]
    fn over_many_twins_the_latest_are_the_ones_remembered() {
        let lanes = Lanes::with_capacity(INPUT, 2);
        let removals: Vec<HrEvent> = (0..10)
            .map(|n| {
                removal(
                    &format!("r{n}"),
                    &format!("E-{n}"),
                    &format!("{n}@example.com"),
                )
            })
            .collect();
        for r in &removals {
            lanes.settled(Lane::Leavers, INPUT, REMOVED, r, Settlement::CarriedOut);
        }
        assert_eq!(lanes.remembered(), 2);
        for (n, r) in removals.iter().enumerate().rev() {
            let expected = if n >= 8 {
                Admission::TwinSettled
            } else {
                Admission::Process
            };
            assert_eq!(lanes.admit(Lane::Work, INPUT, REMOVED, r), expected, "r{n}");
        }
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_twin_is_forgotten_first() {
        let lanes = Lanes::with_capacity(INPUT, 2);
        let removals: Vec<HrEvent> = (0..3)
            .map(|n| {
                removal(
                    &format!("r{n}"),
                    &format!("E-{n}"),
                    &format!("{n}@example.com"),
                )
            })
            .collect();
        for r in &removals {
            lanes.settled(Lane::Leavers, INPUT, REMOVED, r, Settlement::CarriedOut);
        }
        assert_eq!(lanes.remembered(), 2);
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, REMOVED, &removals[0]),
            Admission::Process
        );
        let hire = event("employee.added", "h", "E-0", "0@example.com");
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, "employee.added", &hire),
            Admission::Process,
            "a forgotten removal supersedes nothing"
        );
        assert_eq!(
            lanes.admit(Lane::Work, INPUT, REMOVED, &removals[2]),
            Admission::TwinSettled
        );
    }
}
