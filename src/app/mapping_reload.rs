//! Picks up edits of `GROUP_MAPPING_FILE` without a restart: on SIGHUP, and by reading
//! the file every `GROUP_MAPPING_POLL_MS` (a ConfigMap update in Kubernetes sends no
//! signal). A new mapping is parsed completely first; an invalid one is logged as an
//! error and the mapping in force stays. A valid one replaces it as a whole (an event
//! sees one version or the other, never a mix), then its groups are resolved so the
//! next hires find them cached.

use crate::domain::mapping::{GroupMapping, MappingError};
use crate::pipeline::provisioner::Provisioner;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What one look at the file found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The file is as it was last seen.
    Unchanged,
    /// A new mapping is in force.
    Applied,
    /// The file changed but is not a valid mapping (or cannot be read): the mapping in
    /// force stays.
    Rejected(String),
}

/// Remembers the file's content last seen, so an unchanged file costs nothing and a
/// broken one is reported once, not at every poll.
pub struct MappingReloader {
    path: PathBuf,
    last_seen: Option<Vec<u8>>,
    /// Whether the last look could not read the file (reported once).
    unreadable: bool,
    provisioner: Arc<Provisioner>,
}

impl MappingReloader {
    /// A reloader for `path`. The first look compares the file's mapping with the one
    /// in force (the file may have changed since start-up read it).
    pub fn new(path: PathBuf, provisioner: Arc<Provisioner>) -> Self {
        Self {
            path,
            last_seen: None,
            unreadable: false,
            provisioner,
        }
    }

    /// Reads the file and puts a changed, valid mapping in force.
    pub async fn check(&mut self) -> ReloadOutcome {
        let content = match tokio::fs::read(&self.path).await {
            Ok(content) => content,
            Err(e) => {
                let problem = format!("cannot read {}: {e}", self.path.display());
                if !self.unreadable {
                    self.unreadable = true;
                    tracing::error!(path = %self.path.display(), error = %e, "group mapping file unreadable; the mapping in force stays");
                }
                return ReloadOutcome::Rejected(problem);
            }
        };
        self.unreadable = false;
        if self.last_seen.as_deref() == Some(content.as_slice()) {
            return ReloadOutcome::Unchanged;
        }
        // The bytes just read are the ones parsed: one read per look, never blocking.
        let parsed = match std::str::from_utf8(&content) {
            Ok(text) => GroupMapping::from_file_text(&self.path, text),
            Err(e) => Err(MappingError::Syntax {
                format: "UTF-8 text",
                message: e.to_string(),
            }),
        };
        self.last_seen = Some(content);
        match parsed {
            Ok(mapping) if *self.provisioner.mapping().current() == mapping => {
                ReloadOutcome::Unchanged
            }
            Ok(mapping) => {
                let entries = mapping.entries().count();
                self.provisioner.mapping().replace(mapping);
                tracing::info!(path = %self.path.display(), entries, "group mapping reloaded");
                for problem in self.provisioner.warm_group_cache().await {
                    tracing::warn!(problem = %problem, "a mapped group cannot be used; events that need it will be dead-lettered");
                }
                ReloadOutcome::Applied
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "group mapping rejected; the mapping in force stays");
                ReloadOutcome::Rejected(e.to_string())
            }
        }
    }
}

/// Runs until `stop`: checks the file on SIGHUP and every `poll` (if any).
pub async fn watch(
    path: PathBuf,
    poll: Option<Duration>,
    provisioner: Arc<Provisioner>,
    stop: CancellationToken,
) {
    let mut reloader = MappingReloader::new(path, provisioner);
    let mut hangups = hangup_signals();
    let mut ticker = poll.map(|every| {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = next_hangup(&mut hangups) => {
                tracing::info!("SIGHUP: checking the group mapping file");
            }
            _ = async { match ticker.as_mut() {
                Some(ticker) => { ticker.tick().await; }
                None => std::future::pending().await,
            } } => {}
        }
        reloader.check().await;
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the mapping file is only polled");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signals() -> Hangups {}

#[cfg(unix)]
async fn next_hangup(hangups: &mut Hangups) {
    match hangups {
        Some(signal) => {
            if signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangups) {
    std::future::pending().await
}
