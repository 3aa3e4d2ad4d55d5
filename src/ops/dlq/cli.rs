//! The command line of the dead-letter operations: `dlq list`, `replay` (also
//! `dlq replay`) and `dlq purge`. `main` only dispatches here.
//!
//! Results go to standard output — a table and a summary line, or one JSON document
//! with `--json` (the summary then goes to standard error, so scripts read clean JSON).
//! Progress goes to standard error. The commands use only the broker's settings, which
//! `main` reads and passes in.

use super::ops::{DeadLetterQueue, Disposal, DlqError, Interrupted, Walk};
use super::report::{self, GroupBy, Progress};
use super::selection::{Filter, Selection};
use crate::ops::audit::{self, AuditError, AuditEvent, OperatorAction};
use crate::ops::walker::OpsBroker;
use clap::{Args, Subcommand};
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `iam-provisioner dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List the dead-lettered messages, or count them by cause. Removes nothing.
    List(ListArgs),
    /// Move selected messages back to processing (the same as `iam-provisioner replay`).
    Replay(ReplayArgs),
    /// Delete selected messages: with --yes only; without it, show what would be deleted.
    Purge(PurgeArgs),
}

/// Which messages a command applies to. Filters combine: a message is selected when it
/// matches all of them.
#[derive(Debug, Clone, Args)]
pub struct SelectionArgs {
    /// Only messages first published with this routing key (event type), e.g.
    /// employee.added.
    #[arg(long, value_name = "KEY")]
    pub routing_key: Option<String>,
    /// Only messages of this employee (header x-employee-id, else the body's employee.id).
    #[arg(long, value_name = "ID")]
    pub employee_id: Option<String>,
    /// Only messages that failed with this error kind: validation, mapping, okta,
    /// transient; broker:rejected (or another reason) for messages the broker
    /// dead-lettered itself.
    #[arg(long, value_name = "KIND")]
    pub error_kind: Option<String>,
    /// Only messages with this Okta error code, e.g. E0000006.
    #[arg(long, value_name = "CODE")]
    pub okta_code: Option<String>,
    /// Only the message with this event id.
    #[arg(long, value_name = "ID")]
    pub event_id: Option<String>,
    /// Only messages that failed before this time (RFC 3339, e.g. 2026-11-28T09:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub failed_before: Option<OffsetDateTime>,
    /// Only messages that failed at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub failed_after: Option<OffsetDateTime>,
    /// At most N messages: the first N selected, from the head of the queue.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

impl SelectionArgs {
    fn selection(&self) -> Selection {
        Selection {
            filter: Filter {
                routing_key: self.routing_key.clone(),
                employee_id: self.employee_id.clone(),
                error_kind: self.error_kind.clone(),
                okta_code: self.okta_code.clone(),
                event_id: self.event_id.clone(),
                failed_before: self.failed_before,
                failed_after: self.failed_after,
            },
            limit: self.limit,
        }
    }
}

/// `dlq list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub select: SelectionArgs,
    /// Count the selected messages by this key, with their first and last failure.
    #[arg(long, value_enum, value_name = "KEY")]
    pub group_by: Option<GroupBy>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub select: SelectionArgs,
    /// List what would be replayed, and move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replay at most this many messages per second (N/s, N/m, or N meaning N/s), to
    /// spare Okta's rate limits when the queue is long.
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<Rate>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `dlq purge`.
#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub select: SelectionArgs,
    /// Really delete. Without it, the command only shows what it would delete.
    #[arg(long)]
    pub yes: bool,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A replay rate, in messages per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(f64);

impl Rate {
    /// The time between two re-publications.
    pub fn pace(self) -> Duration {
        Duration::from_secs_f64(1.0 / self.0)
    }
}

/// Parses `N/s`, `N/m` (per minute) or `N` (per second); N may be a fraction.
///
/// # Errors
/// A message saying what is expected.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let text = text.trim();
    let (number, per_seconds) = match text.split_once('/') {
        None => (text, 1.0),
        Some((n, "s" | "sec" | "second")) => (n, 1.0),
        Some((n, "m" | "min" | "minute")) => (n, 60.0),
        Some((_, unit)) => return Err(format!("unknown unit /{unit} (use /s or /m)")),
    };
    let count: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{number:?} is not a number (write e.g. 10/s)"))?;
    let rate = count / per_seconds;
    // Slower than one a day is a typo, and would overflow nothing but patience.
    if !rate.is_finite() || rate < 1.0 / 86_400.0 {
        return Err("must be a positive rate such as 10/s or 30/m".into());
    }
    Ok(Rate(rate))
}

/// Parses an RFC 3339 time given on the command line.
///
/// # Errors
/// A message saying what form is expected.
pub fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text.trim(), &Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time such as 2026-11-28T09:00:00Z ({e})"))
}

/// Why a dead-letter command failed; shown as one line.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Boxed: broker errors are large, and this travels up every call.
    #[error(transparent)]
    Dlq(Box<DlqError>),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// Boxed, as broker errors are.
    #[error(transparent)]
    Audit(Box<AuditError>),
}

impl From<AuditError> for CommandError {
    fn from(error: AuditError) -> Self {
        Self::Audit(Box::new(error))
    }
}

impl From<DlqError> for CommandError {
    fn from(error: DlqError) -> Self {
        Self::Dlq(Box::new(error))
    }
}

/// Runs `iam-provisioner dlq …` on `broker`; `stop` (the operator's Ctrl-C) ends the
/// walk early, and what was done by then is printed and audited.
///
/// # Errors
/// [`CommandError`]; whatever was not done stays in the dead-letter queue.
pub async fn run_dlq(
    command: DlqCommand,
    broker: &OpsBroker,
    stop: impl Future<Output = ()>,
) -> Result<(), CommandError> {
    match command {
        DlqCommand::List(args) => list(args, broker, stop).await,
        DlqCommand::Replay(args) => replay(args, broker, stop).await,
        DlqCommand::Purge(args) => purge(args, broker, stop).await,
    }
}

/// Runs `iam-provisioner replay` on `broker`, until done or `stop`.
///
/// # Errors
/// [`CommandError`]; whatever was not replayed stays in the dead-letter queue.
pub async fn replay(
    args: ReplayArgs,
    broker: &OpsBroker,
    stop: impl Future<Output = ()>,
) -> Result<(), CommandError> {
    let disposal = if args.dry_run {
        Disposal::Keep
    } else {
        Disposal::Replay {
            pace: args.rate.map(Rate::pace),
        }
    };
    let verb = if args.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    let run = walk("replay", broker, &args.select, disposal, verb, stop).await?;
    let exchange = run.broker.topology.replay_exchange();
    let shown = &run.walk.messages;
    let summary = if args.dry_run {
        format!(
            "dry run: {} of {} message(s) in '{}' would be replayed to '{exchange}'; nothing was moved",
            shown.len(),
            run.walk.depth,
            run.queue(),
        )
    } else {
        format!(
            "replayed {} of {} message(s) in '{}' to '{exchange}'{}",
            run.walk.done,
            run.walk.depth,
            run.queue(),
            if run.error.is_some() {
                ", then stopped on an error"
            } else {
                ""
            },
        )
    };
    let document = serde_json::json!({
        "queue": run.queue(),
        "exchange": exchange,
        "dry_run": args.dry_run,
        "depth": run.walk.depth,
        "scanned": run.walk.scanned,
        "replayed": run.walk.done,
        "messages": shown,
    });
    print_result(
        args.json,
        &document,
        &report::message_table(shown),
        &summary,
    )?;
    if !args.dry_run {
        audit(&run, OperatorAction::Replay, &args.select).await?;
    }
    run.finish()
}

async fn list(
    args: ListArgs,
    broker: &OpsBroker,
    stop: impl Future<Output = ()>,
) -> Result<(), CommandError> {
    let run = walk(
        "dlq list",
        broker,
        &args.select,
        Disposal::Keep,
        "listed",
        stop,
    )
    .await?;
    let summary = format!(
        "{} of {} message(s) in '{}' listed; nothing was removed",
        run.walk.selected,
        run.walk.depth,
        run.queue(),
    );
    let (document, table) = match args.group_by {
        None => (
            serde_json::json!({
                "queue": run.queue(),
                "depth": run.walk.depth,
                "scanned": run.walk.scanned,
                "messages": run.walk.messages,
            }),
            report::message_table(&run.walk.messages),
        ),
        Some(by) => {
            let groups = report::group(&run.walk.messages, by);
            (
                serde_json::json!({
                    "queue": run.queue(),
                    "depth": run.walk.depth,
                    "scanned": run.walk.scanned,
                    "selected": run.walk.selected,
                    "groups": groups,
                }),
                report::group_table(&groups, by),
            )
        }
    };
    print_result(args.json, &document, &table, &summary)?;
    run.finish()
}

async fn purge(
    args: PurgeArgs,
    broker: &OpsBroker,
    stop: impl Future<Output = ()>,
) -> Result<(), CommandError> {
    let disposal = if args.yes {
        Disposal::Delete
    } else {
        Disposal::Keep
    };
    let verb = if args.yes { "deleted" } else { "would delete" };
    let run = walk("dlq purge", broker, &args.select, disposal, verb, stop).await?;
    let shown = &run.walk.messages;
    let summary = if args.yes {
        format!(
            "deleted {} of {} message(s) from '{}'",
            run.walk.done,
            run.walk.depth,
            run.queue()
        )
    } else {
        format!(
            "would delete {} of {} message(s) from '{}'; nothing was deleted (add --yes to delete them)",
            shown.len(),
            run.walk.depth,
            run.queue()
        )
    };
    let document = serde_json::json!({
        "queue": run.queue(),
        "confirmed": args.yes,
        "depth": run.walk.depth,
        "scanned": run.walk.scanned,
        "deleted": run.walk.done,
        "messages": shown,
    });
    print_result(
        args.json,
        &document,
        &report::message_table(shown),
        &summary,
    )?;
    if args.yes {
        audit(&run, OperatorAction::Purge, &args.select).await?;
    }
    run.finish()
}

/// Publishes the audit event of a replay or purge that ran, with what it did (also when it
/// stopped on an error part-way).
async fn audit(
    run: &Run,
    action: OperatorAction,
    select: &SelectionArgs,
) -> Result<(), CommandError> {
    let time = |t: Option<OffsetDateTime>| t.map(crate::domain::outcome::format_timestamp);
    let mut event = AuditEvent::new(
        action,
        run.queue(),
        audit::selection_of([
            ("routing_key", select.routing_key.clone()),
            ("employee_id", select.employee_id.clone()),
            ("error_kind", select.error_kind.clone()),
            ("okta_code", select.okta_code.clone()),
            ("event_id", select.event_id.clone()),
            ("failed_before", time(select.failed_before)),
            ("failed_after", time(select.failed_after)),
            ("limit", select.limit.map(|l| l.to_string())),
        ]),
        run.walk.done,
        run.walk
            .messages
            .iter()
            .map(|m| m.event_id.clone().unwrap_or_else(|| "-".to_owned())),
    );
    event.interrupted = run.error.is_some();
    audit::publish(&run.broker, &event).await?;
    Ok(())
}

/// A finished walk, and the error that stopped it early, if one did.
struct Run {
    broker: OpsBroker,
    walk: Walk,
    error: Option<DlqError>,
}

impl Run {
    fn queue(&self) -> &str {
        &self.broker.topology.dead_letter_queue
    }

    fn finish(self) -> Result<(), CommandError> {
        self.error.map_or(Ok(()), |e| Err(e.into()))
    }
}

/// Connects and walks the queue, showing progress on standard error. An error before
/// the walk began is returned; one during the walk is kept in the [`Run`], so that what
/// was done is still printed.
async fn walk(
    purpose: &str,
    broker: &OpsBroker,
    select: &SelectionArgs,
    disposal: Disposal,
    verb: &str,
    stop: impl Future<Output = ()>,
) -> Result<Run, CommandError> {
    let queue = DeadLetterQueue::open(broker, purpose).await?;
    let mut progress = Progress::new(std::io::stderr().is_terminal(), Instant::now());
    let show = |text: Option<String>| {
        if let Some(text) = text {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        }
    };
    let result = queue
        .walk(
            select.selection(),
            disposal,
            |walk| {
                show(progress.update(Instant::now(), || {
                    let acted = if disposal == Disposal::Keep {
                        walk.selected
                    } else {
                        walk.done
                    };
                    format!(
                        "{purpose}: scanned {} of {}, {verb} {acted}",
                        walk.scanned, walk.depth
                    )
                }));
            },
            stop,
        )
        .await;
    show(progress.finish());
    queue.close().await;
    let (walk, error) = match result {
        Ok(walk) => (walk, None),
        Err(Interrupted { walk, error }) => (walk, Some(error)),
    };
    Ok(Run {
        broker: broker.clone(),
        walk,
        error,
    })
}

/// Writes the result to standard output: the JSON document, or the table and the
/// summary line. A closed pipe (`| head`) is not an error.
fn print_result(
    json: bool,
    document: &serde_json::Value,
    table: &str,
    summary: &str,
) -> Result<(), CommandError> {
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, document)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
            .and_then(|()| writeln!(std::io::stderr(), "{summary}"))
    } else {
        write!(out, "{table}").and_then(|()| writeln!(out, "{summary}"))
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_read_per_second_or_per_minute() {
        assert_eq!(parse_rate("10/s"), Ok(Rate(10.0)));
        assert_eq!(parse_rate("4"), Ok(Rate(4.0)));
        assert_eq!(parse_rate("30/m"), Ok(Rate(0.5)));
        assert_eq!(
            parse_rate("0.5/s").map(Rate::pace),
            Ok(Duration::from_secs(2))
        );
        for wrong in ["0/s", "-1/s", "fast", "10/h", "inf", "NaN"] {
            assert!(parse_rate(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn times_must_be_rfc_3339() {
        assert!(parse_time("2026-11-28T09:00:00Z").is_ok());
        assert!(parse_time("2026-11-28T10:00:00+01:00").is_ok());
        assert!(parse_time("2026-11-28").is_err());
        assert!(parse_time("yesterday").is_err());
    }
}
