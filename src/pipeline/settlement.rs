//! How a delivery ends, as plain data: what the worker hands the AMQP adapter's settle
//! step (`crate::amqp::settle`) to carry out, and the one port through which it
//! publishes before the end (a `retrying` outcome between two attempts).
//!
//! The worker decides and calls Okta; it never publishes or acknowledges itself. The
//! settle step publishes the copies and then the outcome, each confirmed, records what
//! the delivery settled, and only then acknowledges — or, when a publish could not be
//! confirmed, leaves the delivery for redelivery and ends the session.

use crate::domain::event::HrEvent;
use crate::domain::outcome::{ErrorKind, Failure, Outcome};
use crate::domain::schedule::Scheduled;
use crate::pipeline::envelope::Envelope;
use crate::pipeline::guard::GuardLimits;
use crate::pipeline::lanes;
use crate::pipeline::sequencer::Turn;
use crate::telemetry::metrics::DeliveryTimer;
use std::future::Future;
use time::OffsetDateTime;

/// A copy of the delivered message the settle step publishes before the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOf {
    /// To the dead-letter exchange, with the failure headers.
    DeadLetter {
        failure: Failure,
        attempts: u32,
        employee_id: Option<String>,
    },
    /// To a delay queue until `schedule.due`; a removal re-check carries its deadline.
    Parked {
        schedule: Scheduled,
        recheck_until: Option<OffsetDateTime>,
    },
    /// To the hold queue, for an operator.
    Held {
        event_id: String,
        employee_id: Option<String>,
        limits: GuardLimits,
        at: OffsetDateTime,
    },
}

/// The counter a confirmed outcome adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// No outcome counter (a parked, held or skipped delivery).
    Nothing,
    Succeeded,
    Retried(ErrorKind),
    Failed(ErrorKind),
}

/// What a delivery that reached its end publishes, in order, before it is
/// acknowledged.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// Published first, each confirmed.
    pub copies: Vec<CopyOf>,
    /// Published after the copies, confirmed.
    pub outcome: Option<Outcome>,
    /// Counted once the outcome is confirmed.
    pub tally: Tally,
    /// A twin-routed removal's end, for the lanes to remember once everything is
    /// confirmed (before the acknowledgement lets the employee's next event start).
    pub twin: Option<(HrEvent, lanes::Settlement)>,
    /// Whether the delivery's end-to-end time is recorded (a skipped copy's says
    /// nothing about its event).
    pub timed: bool,
}

impl Settlement {
    /// Acknowledged without a word.
    pub fn skip() -> Self {
        Self {
            copies: Vec::new(),
            outcome: None,
            tally: Tally::Nothing,
            twin: None,
            timed: false,
        }
    }
}

/// How the worker left a delivery.
#[derive(Debug)]
pub enum Verdict<E> {
    /// It reached its end: settle it (boxed: a settlement is large, the other
    /// verdicts are not).
    Settle(Box<Settlement>),
    /// The session handed it back before its work began (while it waited for its turn):
    /// leave it unacknowledged for redelivery, without a word.
    NotStarted,
    /// The session handed it back unfinished (shutdown, lost connection): leave it
    /// unacknowledged for redelivery.
    HandedBack,
    /// A progress outcome could not be confirmed: leave it unacknowledged and end the
    /// session.
    Unconfirmed(E),
}

impl<E> Verdict<E> {
    /// Settle `settlement`.
    pub fn settle(settlement: Settlement) -> Self {
        Self::Settle(Box::new(settlement))
    }
}

/// A delivery the worker is done with, and what the settle step needs to end it.
pub struct Finished<E> {
    pub verdict: Verdict<E>,
    pub envelope: Envelope,
    /// Held until the delivery is settled: the employee's next event waits for it.
    pub turn: Turn,
    pub timer: DeliveryTimer,
}

/// Where the worker publishes an outcome before the delivery ends (`retrying`, between
/// two attempts). Implemented by the AMQP adapter; faked in tests.
pub trait OutcomeSink {
    /// Why an outcome was not confirmed.
    type Error;

    /// Publishes `outcome` and waits for the broker's confirm.
    fn progress(&self, outcome: &Outcome) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
