//! Progress lines on standard error, so that a run of minutes (100,000 users at Okta's
//! list rate) shows it is alive and what it waits for, while standard output stays the
//! report alone (`--json` pipes into `jq`).

use std::io::Write;
use std::time::{Duration, Instant};

/// Writes progress lines; routine ones at most once per `interval`.
pub struct Progress {
    quiet: bool,
    interval: Duration,
    last: Option<Instant>,
}

impl Progress {
    /// Progress to standard error, routine lines at most once a second; `quiet` keeps
    /// only warnings.
    pub fn stderr(quiet: bool) -> Self {
        Self {
            quiet,
            interval: Duration::from_secs(1),
            last: None,
        }
    }

    /// A line that always matters (a phase done, a rate-limit wait).
    pub fn note(&mut self, line: &str) {
        if !self.quiet {
            self.write(line);
        }
    }

    /// A warning: written even when quiet.
    pub fn warn(&mut self, line: &str) {
        self.write(&format!("warning: {line}"));
    }

    /// A routine line, made only when it is written.
    pub fn tick(&mut self, line: impl FnOnce() -> String) {
        if self.quiet {
            return;
        }
        if self.last.is_some_and(|last| last.elapsed() < self.interval) {
            return;
        }
        self.write(&line());
    }

    fn write(&mut self, line: &str) {
        self.last = Some(Instant::now());
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "reconcile: {line}");
    }
}
