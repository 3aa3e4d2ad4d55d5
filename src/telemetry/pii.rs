//! Personal data kept out of places that outlive an event: the partition key header (it
//! is stored with every partitioned message) and, with `LOG_PII=minimal`, the log lines.
//!
//! Both use a pseudonym: a truncated SHA-256 of the value. The same value always gives the
//! same pseudonym, so routing stays stable and an operator can still follow one employee
//! through the logs (by hashing the id they look for with any SHA-256 tool, see
//! docs/security-operations.md), but the value itself is not there. It is
//! pseudonymisation, not anonymity: an email can be guessed and hashed to compare.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

/// How much personal data log lines carry (`LOG_PII`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogPii {
    /// Employee ids and emails as they are (the default; they are what operators search).
    #[default]
    Full,
    /// Employee ids and emails replaced by their pseudonym.
    Minimal,
}

impl LogPii {
    /// Reads `full` or `minimal`.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "full" => Some(LogPii::Full),
            "minimal" => Some(LogPii::Minimal),
            _ => None,
        }
    }
}

/// The mode in force for log lines. A process-wide switch like the log filter itself:
/// set once at start-up, before the service runs, and read where a field is logged.
static MINIMAL: AtomicBool = AtomicBool::new(false);

/// Sets the log mode for the process (`main`, after the configuration was read).
pub fn set_log_mode(mode: LogPii) {
    MINIMAL.store(mode == LogPii::Minimal, Ordering::Relaxed);
}

pub use crate::domain::pseudonym::pseudonym;

/// An employee id or email as a log line may show it: itself, or its pseudonym under
/// `LOG_PII=minimal`.
pub fn for_log(value: &str) -> Cow<'_, str> {
    if MINIMAL.load(Ordering::Relaxed) {
        Cow::Owned(pseudonym(value))
    } else {
        Cow::Borrowed(value)
    }
}

/// `text` (an error message, say) with every occurrence of the given personal values
/// replaced by their pseudonyms under `LOG_PII=minimal`; unchanged otherwise.
pub fn scrub_for_log<'a>(text: &'a str, values: &[Option<&str>]) -> Cow<'a, str> {
    if !MINIMAL.load(Ordering::Relaxed) {
        return Cow::Borrowed(text);
    }
    scrub(text, values)
}

/// [`scrub_for_log`] with the employee id and email of `event`.
pub fn scrub_event<'a>(text: &'a str, event: &crate::domain::event::HrEvent) -> Cow<'a, str> {
    scrub_for_log(
        text,
        &[
            event.employee_id().map(|i| i.as_str()),
            event.email().map(|e| e.as_str()),
        ],
    )
}

fn scrub<'a>(text: &'a str, values: &[Option<&str>]) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    // Longest first, so an id that is part of an email does not leave the rest behind.
    let mut values: Vec<&str> = values.iter().flatten().copied().collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for value in values.into_iter().filter(|v| !v.is_empty()) {
        if out.contains(value) {
            out = Cow::Owned(out.replace(value, &pseudonym(value)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pseudonym_is_stable_distinct_and_hides_the_value() {
        let a = pseudonym("ada@example.com");
        assert_eq!(a, pseudonym("ada@example.com"));
        assert_ne!(a, pseudonym("bob@example.com"));
        assert!(a.starts_with("h:") && a.len() == 18, "{a}");
        assert!(!a.contains("ada"));
        // The documented shell recipe gives the same (docs/security-operations.md):
        // printf 'iam-provisioner/pii/v1\0%s' E-1001 | sha256sum | cut -c1-16
        assert_eq!(pseudonym("E-1001"), "h:1b0a0b1aa9dd5dd7");
    }

    #[test]
    fn scrubbing_replaces_every_given_value() {
        let text = "2 Okta users have employeeNumber \"E-1\" (ada@example.com)";
        let out = scrub(text, &[Some("E-1"), Some("ada@example.com"), None]);
        assert!(!out.contains("E-1") && !out.contains("ada@"), "{out}");
        assert!(out.contains(&pseudonym("E-1")), "{out}");
        assert_eq!(scrub("nothing here", &[Some("E-1")]), "nothing here");
    }

    #[test]
    fn modes_are_read_case_insensitively() {
        assert_eq!(LogPii::parse("Minimal"), Some(LogPii::Minimal));
        assert_eq!(LogPii::parse("full"), Some(LogPii::Full));
        assert_eq!(LogPii::parse("none"), None);
    }
}
