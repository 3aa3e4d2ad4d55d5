//! The one shutdown idiom of the application, after mini-redis's (`src/server.rs`,
//! `src/shutdown.rs`): shutdown is a future passed in by the caller (a signal in `main`,
//! a token in tests); one [`CancellationToken`] reaches every task, each of which stops
//! at its next turn when it is cancelled; then the tasks are waited for, within a bound.
//!
//! The session (consuming) drains its in-flight deliveries itself, within
//! `SHUTDOWN_TIMEOUT_SECS`, because only it knows which work may be handed back to the
//! broker. The tasks here are the ones around it: HTTP, the Okta prober, the mapping
//! reload, the protected accounts' refresh, the dead-letter watch.

use std::future::Future;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long the background tasks get to end once cancelled: they only finish a request
/// in progress (an HTTP answer, an Okta probe) before returning.
pub(super) const BACKGROUND_DRAIN: Duration = Duration::from_secs(5);

/// Every background task of a running application, and the token that stops them.
pub(super) struct Shutdown {
    token: CancellationToken,
    tasks: JoinSet<()>,
}

impl Shutdown {
    pub(super) fn new() -> Self {
        Self {
            token: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    /// The token cancelled when shutdown starts; every task gets a clone.
    pub(super) fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Starts a task that ends once the token is cancelled.
    pub(super) fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Whether shutdown has started.
    pub(super) fn is_started(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Cancels every task and waits for them, at most `bound`; a task still running then
    /// is aborted (and waited for, so nothing of it outlives the application).
    pub(super) async fn drain(mut self, bound: Duration) {
        self.token.cancel();
        let drained = tokio::time::timeout(bound, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                unfinished = self.tasks.len(),
                "background tasks did not stop in time; aborting them"
            );
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_cancels_every_task_and_bounds_the_wait() {
        let mut shutdown = Shutdown::new();
        let token = shutdown.token();
        let (stopped_tx, mut stopped_rx) = tokio::sync::mpsc::channel(2);
        let polite = stopped_tx.clone();
        shutdown.spawn(async move {
            token.cancelled().await;
            let _ = polite.send("polite").await;
        });
        // A task that ignores the token: aborted once the bound has passed.
        shutdown.spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let _ = stopped_tx.send("stubborn").await;
        });
        assert!(!shutdown.is_started());
        let started = tokio::time::Instant::now();
        shutdown.drain(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(stopped_rx.recv().await, Some("polite"));
        assert_eq!(
            stopped_rx.recv().await,
            None,
            "the stubborn task was aborted"
        );
    }
}
