//! The report of a run: what a person reads (counts per kind first, then one line per
//! finding, a missed leaver first) and what a machine reads (`--json`, the same facts).
//! Rendering is pure; the command prints it.

use super::drift::DriftKind;
use super::okta_side::ListingStats;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One finding, ready to show.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FindingRow {
    pub kind: DriftKind,
    /// HR's employee id (the Okta `employeeNumber`), when there is one.
    pub employee_id: Option<String>,
    pub okta_user_id: Option<String>,
    pub login: Option<String>,
    /// The roster line of the employee, when the roster has them.
    pub roster_line: Option<u64>,
    pub detail: String,
}

/// A roster line that could not be used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadLineRow {
    pub line: u64,
    pub message: String,
}

/// What `--fix` did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FixReport {
    pub requested: bool,
    /// `groups` with `--only groups`.
    pub only: Option<&'static str>,
    /// Corrective events confirmed by the broker, per event type.
    pub published: BTreeMap<&'static str, u64>,
    /// Employees with drift that no event repairs (unmatched users, or not selected by
    /// `--only`), and events that failed the service's own validation.
    pub not_fixed: u64,
    /// Why `--fix` did nothing, when it was refused.
    pub refused: Option<String>,
}

impl FixReport {
    /// Events published in all.
    pub fn published_total(&self) -> u64 {
        self.published.values().sum()
    }
}

/// Figures of the run, for the report and the log (a one-shot command has no /metrics).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunMetrics {
    pub duration_ms: u64,
    pub okta_list_requests: u64,
    pub okta_pages: u64,
    pub okta_group_lookups: u64,
    pub rate_limit_waits: u64,
    pub rate_limit_wait_ms: u64,
    /// Peak resident memory of this process (Linux `VmHWM`), when known.
    pub peak_rss_bytes: Option<u64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: String,
    pub scope: &'static str,
    pub started_at: String,
    pub roster_employees: u64,
    pub roster_bad_lines: Vec<BadLineRow>,
    pub okta_users_in_scope: u64,
    pub duplicate_employee_numbers: u64,
    /// Every kind, zeros included.
    pub counts: BTreeMap<&'static str, u64>,
    pub orphan_share: f64,
    pub findings: Vec<FindingRow>,
    pub fix: FixReport,
    pub metrics: RunMetrics,
}

impl Report {
    /// Whether anything differs.
    pub fn has_drift(&self) -> bool {
        !self.findings.is_empty()
    }

    /// The count of one kind.
    pub fn count(&self, kind: DriftKind) -> u64 {
        self.counts.get(kind.as_str()).copied().unwrap_or(0)
    }

    /// Figures of the listing into the metrics.
    pub fn set_listing(&mut self, stats: ListingStats) {
        self.metrics.okta_list_requests = stats.requests;
        self.metrics.okta_pages = stats.pages;
        self.metrics.rate_limit_waits = stats.rate_limit_waits;
        self.metrics.rate_limit_wait_ms = stats.rate_limit_wait_ms;
    }
}

/// Counts per kind of `findings`, every kind present.
pub fn count_by_kind(findings: &[FindingRow]) -> BTreeMap<&'static str, u64> {
    let mut counts: BTreeMap<&'static str, u64> =
        DriftKind::ALL.iter().map(|k| (k.as_str(), 0)).collect();
    for finding in findings {
        *counts.entry(finding.kind.as_str()).or_default() += 1;
    }
    counts
}

/// Sorts findings for the report: by kind (orphans first), then employee id, login.
pub fn sort_findings(findings: &mut [FindingRow]) {
    findings.sort_by(|a, b| {
        (a.kind, &a.employee_id, &a.login).cmp(&(b.kind, &b.employee_id, &b.login))
    });
}

/// The report for a person.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "reconcile run {} (scope {}): roster {} employees, Okta {} users in scope",
        report.run_id, report.scope, report.roster_employees, report.okta_users_in_scope
    );
    let counts: Vec<String> = DriftKind::ALL
        .iter()
        .map(|k| format!("{} {}", k.as_str(), report.count(*k)))
        .collect();
    let total: u64 = report.counts.values().sum();
    let _ = writeln!(out, "drift: {} (total {total})", counts.join(", "));
    if report.count(DriftKind::Orphan) > 0 {
        let _ = writeln!(
            out,
            "orphans are {:.1}% of the users in scope",
            report.orphan_share * 100.0
        );
    }
    if !report.roster_bad_lines.is_empty() {
        let _ = writeln!(
            out,
            "roster: {} bad lines (their employees are not compared):",
            report.roster_bad_lines.len()
        );
        for bad in &report.roster_bad_lines {
            let _ = writeln!(out, "  line {}: {}", bad.line, bad.message);
        }
    }
    if report.duplicate_employee_numbers > 0 {
        let _ = writeln!(
            out,
            "okta: {} users share an employee number with another user (only one of each is compared)",
            report.duplicate_employee_numbers
        );
    }
    if !report.findings.is_empty() {
        let _ = writeln!(out);
        for f in &report.findings {
            let _ = writeln!(
                out,
                "{:<9}  {:<14}  {:<22}  {:<32}  {}",
                f.kind.as_str(),
                f.employee_id.as_deref().unwrap_or("-"),
                f.okta_user_id.as_deref().unwrap_or("-"),
                f.login.as_deref().unwrap_or("-"),
                f.detail
            );
        }
        let _ = writeln!(out);
    }
    let fix = &report.fix;
    if let Some(reason) = &fix.refused {
        let _ = writeln!(out, "fix: REFUSED: {reason}");
    } else if fix.requested {
        let published: Vec<String> = fix
            .published
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        let _ = writeln!(
            out,
            "fix{}: published {} corrective events ({}); {} employees with drift not fixed by an event",
            fix.only.map(|o| format!(" (only {o})")).unwrap_or_default(),
            fix.published_total(),
            if published.is_empty() {
                "none".to_owned()
            } else {
                published.join(", ")
            },
            fix.not_fixed
        );
    } else if report.has_drift() {
        let _ = writeln!(
            out,
            "nothing was changed (--fix publishes corrective events through the service)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: DriftKind, id: &str) -> FindingRow {
        FindingRow {
            kind,
            employee_id: Some(id.to_owned()),
            okta_user_id: None,
            login: None,
            roster_line: None,
            detail: String::new(),
        }
    }

    #[test]
    fn counts_come_first_and_orphans_lead_the_findings() {
        let mut findings = vec![
            row(DriftKind::Profile, "E-1"),
            row(DriftKind::Orphan, "E-9"),
            row(DriftKind::Missing, "E-2"),
        ];
        sort_findings(&mut findings);
        let report = Report {
            run_id: "r1".into(),
            scope: "employee-number",
            started_at: "t".into(),
            roster_employees: 2,
            roster_bad_lines: vec![],
            okta_users_in_scope: 2,
            duplicate_employee_numbers: 0,
            counts: count_by_kind(&findings),
            orphan_share: 0.5,
            findings,
            fix: FixReport::default(),
            metrics: RunMetrics::default(),
        };
        let text = render_text(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].starts_with(
                "drift: orphan 1, missing 1, disabled 0, groups 0, profile 1, unmatched 0"
            ),
            "{text}"
        );
        let first_finding = lines
            .iter()
            .position(|l| l.starts_with("orphan "))
            .expect("an orphan line");
        let missing = lines
            .iter()
            .position(|l| l.starts_with("missing "))
            .expect("a missing line");
        assert!(first_finding < missing);
        assert!(text.contains("nothing was changed"));
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["counts"]["orphan"], 1);
        assert_eq!(json["findings"][0]["kind"], "orphan");
    }
}
