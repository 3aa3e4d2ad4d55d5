//! `iam-provisioner mapping check`: resolves every Okta group the mapping names against
//! the configured Okta, the way the service would, and prints one row per HR group and
//! target — the group's id, or the problem. An admin runs it before putting a mapping
//! in force; it needs Okta, not the broker.

use crate::domain::mapping::{GroupMapping, GroupTarget};
use crate::okta::groups::GroupDirectory;
use std::fmt::Write as _;

/// One mapped target and what Okta says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRow {
    pub hr_group: String,
    pub target: GroupTarget,
    /// The Okta group id, or the problem.
    pub result: Result<String, String>,
}

/// Resolves every target of `mapping`, in the mapping's order.
pub async fn check(mapping: &GroupMapping, groups: &GroupDirectory) -> Vec<CheckRow> {
    let mut rows = Vec::new();
    for (hr_group, targets) in mapping.entries() {
        for target in targets {
            let result = groups
                .resolve(target)
                .await
                .map(|group| group.id)
                .map_err(|problem| problem.to_string());
            rows.push(CheckRow {
                hr_group: hr_group.to_owned(),
                target: target.clone(),
                result,
            });
        }
    }
    rows
}

/// Whether any row has a problem.
pub fn has_problems(rows: &[CheckRow]) -> bool {
    rows.iter().any(|r| r.result.is_err())
}

/// The rows as an aligned table: `HR GROUP  OKTA GROUP  RESULT`.
pub fn render(rows: &[CheckRow]) -> String {
    let header = ("HR GROUP", "OKTA GROUP", "RESULT");
    let cells: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r.hr_group.clone(),
                r.target.to_string(),
                match &r.result {
                    Ok(id) => id.clone(),
                    Err(problem) => format!("PROBLEM: {problem}"),
                },
            )
        })
        .collect();
    let width_hr = cells
        .iter()
        .map(|c| c.0.chars().count())
        .chain([header.0.len()])
        .max()
        .unwrap_or_default();
    let width_okta = cells
        .iter()
        .map(|c| c.1.chars().count())
        .chain([header.1.len()])
        .max()
        .unwrap_or_default();
    let mut out = String::new();
    for (hr, okta, result) in
        std::iter::once((header.0.into(), header.1.into(), header.2.into())).chain(cells)
    {
        let _ = writeln!(out, "{hr:<width_hr$}  {okta:<width_okta$}  {result}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_ids_and_problems_aligned() {
        let rows = vec![
            CheckRow {
                hr_group: "Engineering".into(),
                target: GroupTarget::Name("Engineering-Core".into()),
                result: Ok("00g1".into()),
            },
            CheckRow {
                hr_group: "*".into(),
                target: GroupTarget::Name("All".into()),
                result: Err("mapped Okta group \"All\" does not exist in Okta".into()),
            },
        ];
        let table = render(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "HR GROUP     OKTA GROUP          RESULT");
        assert_eq!(lines[1], "Engineering  \"Engineering-Core\"  00g1");
        assert!(lines[2].starts_with("*            \"All\"               PROBLEM: "));
        assert!(has_problems(&rows));
        assert!(!has_problems(&rows[..1]));
    }
}
