//! Per-employee ordering with concurrency across employees.
//!
//! Each delivery is registered, in delivery order, under the keys that identify its
//! employee (id and email). It may start only when every earlier delivery sharing a key
//! has finished. Registration is synchronous (done by the consumer loop before the
//! delivery's task is spawned), so order is exactly delivery order; waiting happens in
//! the task, so one employee's slow event never blocks another employee's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Tracks, per key, the last registered delivery.
#[derive(Clone, Default)]
pub struct Sequencer {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    /// key → the last delivery registered under it
    tails: HashMap<String, Tail>,
}

struct Tail {
    ticket: u64,
    /// Cancelled when that delivery finishes.
    finished: CancellationToken,
    /// All keys that delivery registered under (its employee's linked identity).
    keys: Arc<Vec<String>>,
}

/// A delivery's place in line. Dropping it (finished, failed, or abandoned) lets the
/// next delivery of the same employee go.
pub struct Turn {
    ticket: u64,
    keys: Vec<String>,
    predecessors: Vec<CancellationToken>,
    sequencer: Sequencer,
    _finished: DropGuard,
}

impl Sequencer {
    /// A sequencer with no deliveries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a delivery under `keys`; call in delivery order.
    pub fn register(&self, keys: Vec<String>) -> Turn {
        let finished = CancellationToken::new();
        let mut state = lock(&self.inner);
        state.next_ticket += 1;
        let ticket = state.next_ticket;
        // Every key a pending predecessor holds is this employee's too.
        let mut linked = keys;
        let mut index = 0;
        while index < linked.len() {
            if let Some(tail) = state.tails.get(&linked[index]) {
                for key in tail.keys.iter() {
                    if !linked.contains(key) {
                        linked.push(key.clone());
                    }
                }
            }
            index += 1;
        }
        let mut predecessors: Vec<(u64, CancellationToken)> = Vec::new();
        let shared_keys = Arc::new(linked.clone());
        for key in &linked {
            let tail = Tail {
                ticket,
                finished: finished.clone(),
                keys: Arc::clone(&shared_keys),
            };
            if let Some(previous) = state.tails.insert(key.clone(), tail) {
                if !predecessors.iter().any(|(t, _)| *t == previous.ticket) {
                    predecessors.push((previous.ticket, previous.finished));
                }
            }
        }
        drop(state);
        let predecessors = predecessors.into_iter().map(|(_, token)| token).collect();
        let keys = linked;
        Turn {
            ticket,
            keys,
            predecessors,
            sequencer: self.clone(),
            _finished: finished.drop_guard(),
        }
    }

    /// How many keys have a delivery registered; for tests and metrics.
    pub fn tracked_keys(&self) -> usize {
        lock(&self.inner).tails.len()
    }
}

impl Turn {
    /// Waits until every earlier delivery of the same employee has finished.
    pub async fn wait(&mut self) {
        for predecessor in self.predecessors.drain(..) {
            predecessor.cancelled().await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut state = lock(&self.sequencer.inner);
        for key in &self.keys {
            if state
                .tails
                .get(key)
                .is_some_and(|t| t.ticket == self.ticket)
            {
                state.tails.remove(key);
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    match state.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn same_employee_runs_in_order_others_run_at_once() {
        let sequencer = Sequencer::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        let plan = [
            ("a1", keys(&["id:A", "email:a@x"]), 30u64),
            ("b1", keys(&["id:B"]), 10),
            ("a2", keys(&["email:a@x"]), 1), // shares only the email with a1
            ("a3", keys(&["id:A"]), 1),
        ];
        for (name, ks, millis) in plan {
            let mut turn = sequencer.register(ks);
            let log = Arc::clone(&log);
            tasks.spawn(async move {
                turn.wait().await;
                log.lock().expect("log").push(format!("start {name}"));
                tokio::time::sleep(Duration::from_millis(millis)).await;
                log.lock().expect("log").push(format!("end {name}"));
                drop(turn);
            });
        }
        while tasks.join_next().await.is_some() {}
        let log = log.lock().expect("log").clone();
        let position = |entry: &str| log.iter().position(|e| e == entry).expect(entry);
        assert!(position("end a1") < position("start a2"), "{log:?}");
        assert!(position("end a2") < position("start a3"), "{log:?}");
        assert!(
            position("end b1") < position("end a1"),
            "b not blocked by a: {log:?}"
        );
        assert_eq!(sequencer.tracked_keys(), 0, "all keys released");
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_turn_does_not_release_those_behind_a_later_one() {
        let sequencer = Sequencer::new();
        let first = sequencer.register(keys(&["id:A"]));
        let second = sequencer.register(keys(&["id:A"]));
        drop(first);
        // Registered after the first finished: it still waits for the second.
        let mut third = sequencer.register(keys(&["id:A"]));
        let waiter = tokio::spawn(async move {
            third.wait().await;
            third
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !waiter.is_finished(),
            "the third ran while the second was still pending"
        );
        drop(second);
        let _third = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the third goes once the second is done")
            .expect("waiter task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_under_two_pending_keys_waits_for_both_holders() {
        let sequencer = Sequencer::new();
        let by_id = sequencer.register(keys(&["id:A"]));
        let by_email = sequencer.register(keys(&["email:a@x"]));
        // The first event to carry both keys links the two deliveries before it.
        let mut both = sequencer.register(keys(&["id:A", "email:a@x"]));
        drop(by_id);
        let waiter = tokio::spawn(async move {
            both.wait().await;
            both
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !waiter.is_finished(),
            "it ran while the delivery under its email was pending"
        );
        drop(by_email);
        let _both = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("it goes once both are done")
            .expect("waiter task");
    }

    #[test]
    fn keys_are_tracked_while_a_delivery_is_pending_and_only_then() {
        let sequencer = Sequencer::new();
        let first = sequencer.register(keys(&["id:A", "email:a@x"]));
        // Shares the email only, and inherits the id through it.
        let second = sequencer.register(keys(&["email:a@x"]));
        let other = sequencer.register(keys(&["id:B"]));
        assert_eq!(sequencer.tracked_keys(), 3);
        drop(first);
        assert_eq!(sequencer.tracked_keys(), 3, "the second holds both A keys");
        drop(second);
        assert_eq!(sequencer.tracked_keys(), 1);
        drop(other);
        assert_eq!(sequencer.tracked_keys(), 0);
    }

    #[tokio::test]
    async fn an_abandoned_turn_releases_the_next() {
        let sequencer = Sequencer::new();
        let first = sequencer.register(keys(&["id:A"]));
        let mut second = sequencer.register(keys(&["id:A"]));
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), second.wait())
            .await
            .expect("second may go once the first is dropped");
    }

    #[tokio::test]
    async fn deliveries_without_keys_never_wait() {
        let sequencer = Sequencer::new();
        let _first = sequencer.register(vec![]);
        let mut second = sequencer.register(vec![]);
        tokio::time::timeout(Duration::from_millis(100), second.wait())
            .await
            .expect("no keys, no waiting");
    }
}
