//! What the dead-letter commands print: a table of messages, counts by cause with the
//! first and last failure (the view on-call starts from: "40 mapping failures since
//! 09:12"), and progress for long runs.
//!
//! Pure: strings in, strings out, so the layout is tested without a terminal. Values
//! from messages are escaped before they are printed, so a crafted body cannot move the
//! operator's cursor or forge table lines.

use super::record::{serialize_optional_time, DeadLetter};
use crate::domain::outcome::format_timestamp;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// What `dlq list --group-by` counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// The error kind (`mapping`, `okta`, `validation`, `transient`, `broker:…`).
    Kind,
    /// Okta's error code.
    OktaCode,
    /// The original routing key (event type).
    RoutingKey,
}

impl GroupBy {
    fn heading(self) -> &'static str {
        match self {
            GroupBy::Kind => "KIND",
            GroupBy::OktaCode => "OKTA CODE",
            GroupBy::RoutingKey => "EVENT TYPE",
        }
    }

    fn key_of(self, message: &DeadLetter) -> Option<&str> {
        match self {
            GroupBy::Kind => message.error_kind.as_deref(),
            GroupBy::OktaCode => message.okta_error_code.as_deref(),
            GroupBy::RoutingKey => Some(message.routing_key.as_str()),
        }
    }
}

/// The messages sharing one value of the grouping key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    /// The shared value; `None` for messages without one (no Okta code, say).
    pub key: Option<String>,
    pub count: u64,
    /// The earliest failure time in the group.
    #[serde(serialize_with = "serialize_optional_time")]
    pub first_failed_at: Option<OffsetDateTime>,
    /// The latest failure time in the group.
    #[serde(serialize_with = "serialize_optional_time")]
    pub last_failed_at: Option<OffsetDateTime>,
}

/// Counts `messages` by `by`, largest group first (ties by key).
pub fn group(messages: &[DeadLetter], by: GroupBy) -> Vec<Group> {
    let mut groups: BTreeMap<Option<&str>, Group> = BTreeMap::new();
    for message in messages {
        let key = by.key_of(message);
        let group = groups.entry(key).or_insert_with(|| Group {
            key: key.map(str::to_owned),
            count: 0,
            first_failed_at: None,
            last_failed_at: None,
        });
        group.count += 1;
        if let Some(at) = message.failed_at {
            group.first_failed_at = Some(group.first_failed_at.map_or(at, |f| f.min(at)));
            group.last_failed_at = Some(group.last_failed_at.map_or(at, |l| l.max(at)));
        }
    }
    let mut groups: Vec<Group> = groups.into_values().collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    groups
}

/// The table of `messages`, one line each, with a heading; empty when there are none.
pub fn message_table(messages: &[DeadLetter]) -> String {
    let headings = [
        "#",
        "EVENT TYPE",
        "EMPLOYEE",
        "EVENT ID",
        "KIND",
        "OKTA CODE",
        "ATTEMPTS",
        "REPLAYS",
        "FAILED AT",
        "ERROR",
    ];
    let rows = messages.iter().map(|m| {
        vec![
            m.position.to_string(),
            cell(Some(&m.routing_key)),
            cell(m.employee_id.as_deref()),
            cell(m.event_id.as_deref()),
            cell(m.error_kind.as_deref()),
            cell(m.okta_error_code.as_deref()),
            m.attempts.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            m.replay_count.to_string(),
            time_cell(m.failed_at),
            cell(m.error_summary()),
        ]
    });
    render(&headings, rows.collect())
}

/// The table of `groups`, with a heading; empty when there are none.
pub fn group_table(groups: &[Group], by: GroupBy) -> String {
    let headings = [by.heading(), "COUNT", "FIRST FAILED", "LAST FAILED"];
    let rows = groups.iter().map(|g| {
        vec![
            g.key
                .as_deref()
                .map_or_else(|| "(none)".to_owned(), |k| cell(Some(k))),
            g.count.to_string(),
            time_cell(g.first_failed_at),
            time_cell(g.last_failed_at),
        ]
    });
    render(&headings, rows.collect())
}

/// The longest cell; longer values are cut with `…`.
const MAX_CELL: usize = 60;

/// A value as a table cell: control characters escaped, bounded, `-` when absent.
fn cell(value: Option<&str>) -> String {
    let Some(value) = value else {
        return "-".to_owned();
    };
    let escaped: String = value.chars().flat_map(char::escape_debug).collect();
    if escaped.chars().count() <= MAX_CELL {
        return escaped;
    }
    let mut cut: String = escaped.chars().take(MAX_CELL - 1).collect();
    cut.push('…');
    cut
}

fn time_cell(at: Option<OffsetDateTime>) -> String {
    at.map_or_else(|| "-".to_owned(), format_timestamp)
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn render(headings: &[&str], rows: Vec<Vec<String>>) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut widths: Vec<usize> = headings.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, value) in cells.enumerate() {
            if i + 1 == widths.len() {
                out.push_str(value);
            } else {
                out.push_str(value);
                let pad = widths[i] - value.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(&mut headings.iter().copied());
    out.push('\n');
    for row in &rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
        out.push('\n');
    }
    out
}

/// Throttles progress lines: on a terminal one live line, rewritten a few times a
/// second; elsewhere (a log, a pipe) a plain line every few seconds. Short runs print
/// nothing.
#[derive(Debug)]
pub struct Progress {
    live: bool,
    every: Duration,
    last: Instant,
    shown_live: bool,
}

impl Progress {
    /// Starts at `now`; `live` when standard error is a terminal.
    pub fn new(live: bool, now: Instant) -> Self {
        Self {
            live,
            every: if live {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(5)
            },
            last: now,
            shown_live: false,
        }
    }

    /// What to write to standard error at `now`, if anything; `line` is only called
    /// when something is due.
    pub fn update(&mut self, now: Instant, line: impl FnOnce() -> String) -> Option<String> {
        if now.duration_since(self.last) < self.every {
            return None;
        }
        self.last = now;
        if self.live {
            self.shown_live = true;
            // Carriage return and "erase line": the live line rewrites itself.
            Some(format!("\r\x1b[K{}", line()))
        } else {
            Some(format!("{}\n", line()))
        }
    }

    /// What to write when the run ends: clears a live line.
    pub fn finish(&mut self) -> Option<String> {
        std::mem::take(&mut self.shown_live).then(|| "\r\x1b[K".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn message(position: u64, kind: &str, at: OffsetDateTime) -> DeadLetter {
        DeadLetter {
            position,
            routing_key: "employee.added".into(),
            event_id: Some(format!("evt-{position}")),
            employee_id: Some("E-1".into()),
            error_kind: Some(kind.into()),
            okta_error_code: (kind == "okta").then(|| "E0000006".to_owned()),
            okta_request_id: None,
            attempts: Some(1),
            failed_at: Some(at),
            error_message: Some("first line\nsecond line".into()),
            replay_count: 0,
        }
    }

    #[test]
    fn groups_count_with_first_and_last_failure_largest_first() {
        let early = datetime!(2026-11-28 09:00 UTC);
        let late = datetime!(2026-11-28 17:00 UTC);
        let messages = [
            message(1, "okta", late),
            message(2, "mapping", late),
            message(3, "mapping", early),
        ];
        let groups = group(&messages, GroupBy::Kind);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].key.as_deref(), Some("mapping"));
        assert_eq!(groups[0].count, 2);
        assert_eq!(groups[0].first_failed_at, Some(early));
        assert_eq!(groups[0].last_failed_at, Some(late));
        assert_eq!(groups[1].key.as_deref(), Some("okta"));

        let by_code = group(&messages, GroupBy::OktaCode);
        assert_eq!(by_code[0].key, None, "messages without a code form a group");
        assert_eq!(by_code[0].count, 2);
        assert_eq!(group(&messages, GroupBy::RoutingKey)[0].count, 3);

        let table = group_table(&by_code, GroupBy::OktaCode);
        assert!(table.starts_with("OKTA CODE"), "{table}");
        assert!(table.contains("(none)"), "{table}");
    }

    #[test]
    fn the_table_shows_one_aligned_line_per_message_and_the_errors_first_line() {
        let at = datetime!(2026-11-28 09:00 UTC);
        let table = message_table(&[message(1, "mapping", at), message(12, "okta", at)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("#   EVENT TYPE"), "{table}");
        assert!(lines[1].ends_with("first line"), "{table}");
        assert!(!table.contains("second line"));
        let kind_column = lines[0].find("KIND").expect("heading");
        assert_eq!(&lines[2][kind_column..kind_column + 4], "okta", "{table}");
        assert_eq!(message_table(&[]), "");
    }

    #[test]
    fn values_from_messages_cannot_control_the_terminal() {
        let mut evil = message(1, "validation", datetime!(2026-11-28 09:00 UTC));
        evil.employee_id = Some("E-1\u{1b}[2J\rforged".into());
        evil.event_id = Some("x".repeat(500));
        let table = message_table(&[evil]);
        assert!(!table.contains('\u{1b}'), "{table}");
        assert!(!table.contains('\r'), "{table}");
        assert!(table.contains("x…"), "long values are cut");
    }

    #[test]
    fn progress_is_throttled_plain_off_a_terminal_and_live_on_one() {
        let start = Instant::now();
        let mut plain = Progress::new(false, start);
        assert_eq!(
            plain.update(start + Duration::from_secs(1), || "x".into()),
            None
        );
        assert_eq!(
            plain.update(start + Duration::from_secs(5), || "scanned 5".into()),
            Some("scanned 5\n".into())
        );
        assert_eq!(
            plain.update(start + Duration::from_secs(6), || "x".into()),
            None
        );
        assert_eq!(plain.finish(), None, "nothing to clear");

        let mut live = Progress::new(true, start);
        let line = live
            .update(start + Duration::from_millis(300), || "scanned 5".into())
            .expect("due");
        assert!(
            line.starts_with('\r') && line.ends_with("scanned 5"),
            "{line:?}"
        );
        assert!(
            live.finish().is_some(),
            "the live line is cleared at the end"
        );
    }
}
