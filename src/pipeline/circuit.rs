//! Okta outage detection: a circuit breaker over transient failures.
//!
//! When Okta fails consistently (`OKTA_OUTAGE_THRESHOLD` transient failures in a row,
//! across all events) the circuit opens: the consumer stops taking deliveries, events
//! already in hand wait instead of spending their attempts, and a prober asks Okta with
//! backoff until it answers. Then the circuit closes and everything resumes. So an outage
//! of any length dead-letters nothing; only a failure that persists while Okta otherwise
//! answers uses up `MAX_ATTEMPTS`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// The circuit's state, shared by workers, the consumer loop and the prober.
#[derive(Clone)]
pub struct OktaCircuit {
    inner: Arc<Inner>,
}

struct Inner {
    threshold: u32,
    consecutive_failures: AtomicU32,
    open: watch::Sender<bool>,
}

impl OktaCircuit {
    /// A closed circuit that opens after `threshold` consecutive transient failures
    /// (at least 1).
    pub fn new(threshold: u32) -> Self {
        let (open, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                threshold: threshold.max(1),
                consecutive_failures: AtomicU32::new(0),
                open,
            }),
        }
    }

    /// Okta answered a request: the run of failures is over.
    pub fn record_success(&self) {
        self.inner.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// A transient failure (network, timeout, 5xx). Returns true when this one opened
    /// the circuit.
    pub fn record_transient_failure(&self) -> bool {
        let failures = self
            .inner
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures >= self.inner.threshold {
            return self.inner.open.send_if_modified(|open| {
                let opened = !*open;
                *open = true;
                opened
            });
        }
        false
    }

    /// Whether Okta is considered down.
    pub fn is_open(&self) -> bool {
        *self.inner.open.borrow()
    }

    /// Closes the circuit (the prober saw Okta answer). Returns true if it was open.
    pub fn close(&self) -> bool {
        self.inner.consecutive_failures.store(0, Ordering::Relaxed);
        self.inner.open.send_if_modified(|open| {
            let was_open = *open;
            *open = false;
            was_open
        })
    }

    /// Completes once the circuit is closed (at once if it is).
    pub async fn wait_closed(&self) {
        let mut receiver = self.inner.open.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = receiver.wait_for(|open| !*open).await;
    }

    /// Completes once the circuit is open.
    pub async fn wait_open(&self) {
        let mut receiver = self.inner.open.subscribe();
        let _ = receiver.wait_for(|open| *open).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures_only() {
        let circuit = OktaCircuit::new(3);
        assert!(!circuit.record_transient_failure());
        assert!(!circuit.record_transient_failure());
        circuit.record_success();
        assert!(!circuit.record_transient_failure());
        assert!(!circuit.record_transient_failure());
        assert!(!circuit.is_open());
        assert!(
            circuit.record_transient_failure(),
            "third in a row opens it"
        );
        assert!(circuit.is_open());
        assert!(!circuit.record_transient_failure(), "already open");
    }

    #[tokio::test]
    async fn waiters_resume_when_it_closes() {
        let circuit = OktaCircuit::new(1);
        circuit.record_transient_failure();
        let waiter = {
            let circuit = circuit.clone();
            tokio::spawn(async move { circuit.wait_closed().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(circuit.close());
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("waiter released")
            .expect("task");
        assert!(!circuit.close(), "closing a closed circuit changes nothing");
    }
}
