//! Reconciliation (issue 15): finds the drift between HR's roster and Okta, and with
//! `--fix` repairs it through the same pipeline the events use.
//!
//! Events are the fast path, but state drifts: a removal HR never published, a group
//! membership added by hand, a leaver re-enabled in the console, a mapping change that
//! existing employees only pick up at their next event. A run reads the roster
//! ([`roster`], streamed), reads Okta's side ([`okta_side`], paged and paced), computes
//! the drift per employee ([`drift`], pure), reports it ([`report`]) and, when asked,
//! publishes corrective events ([`fix`]) and a `reconcile.completed` summary.
//!
//! Invariants: without `--fix` nothing is published but the summary event; Okta is only
//! ever read here (repairs are events the service carries out, with its ordering, trust
//! rules and offboarding guard); groups no mapping names are never looked at.

pub mod cli;
pub mod drift;
pub mod fix;
pub mod okta_side;
pub mod progress;
pub mod report;
pub mod roster;

use crate::config::BrokerSettings;
use crate::domain::event::{parse_employee_record, EventType};
use crate::domain::mapping::{GroupMapping, GroupTarget};
use crate::domain::outcome::format_timestamp;
use crate::okta::groups::{GroupDirectory, GroupLookupError};
use crate::okta::{OktaClient, OktaError};
use drift::{DriftKind, Finding, GroupIx, OktaAccount, Wanted};
use fix::{BrokerLink, Corrective, FixError};
use okta_side::{OktaReader, Scope, Snapshot};
use progress::Progress;
use report::{BadLineRow, FindingRow, FixReport, Report, RunMetrics};
use roster::{Roster, RosterError};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The roster file; `-` is standard input.
    pub roster: PathBuf,
    pub scope: Scope,
    pub fix: bool,
    /// `--force`: fix even when the orphans exceed `max_orphan_share`.
    pub force: bool,
    /// `--only groups`.
    pub only_groups: bool,
    /// Users per Okta list page (Okta's most, 200, unless a test wants more pages).
    pub page_limit: u32,
    /// `RECONCILE_MAX_BAD_LINES`.
    pub max_bad_lines: usize,
    /// `RECONCILE_MAX_ORPHAN_SHARE`, a fraction of the users in scope.
    pub max_orphan_share: f64,
    pub run_id: String,
}

/// Why a run stopped with nothing fixed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot open the roster {path}")]
    OpenRoster {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Roster(#[from] RosterError),
    #[error("cannot resolve the mapped Okta groups (see `iam-provisioner mapping check`)")]
    Groups(#[from] GroupLookupError),
    #[error("cannot read Okta's users")]
    Okta(#[from] OktaError),
    #[error(transparent)]
    Fix(Box<FixError>),
}

impl From<FixError> for ReconcileError {
    fn from(error: FixError) -> Self {
        Self::Fix(Box::new(error))
    }
}

/// A finished run: its report and the exit status it means.
#[derive(Debug)]
pub struct RunOutcome {
    pub report: Report,
    /// 0: no drift; 1: drift (reported, or repaired with `--fix`); 2: `--fix` refused.
    pub exit_code: u8,
}

/// A mapped Okta group of the run.
#[derive(Debug, Clone)]
struct MappedGroup {
    id: String,
    name: String,
}

/// Runs one reconciliation.
///
/// # Errors
/// [`ReconcileError`] when the roster, the mapping, Okta or (with `--fix`) the broker
/// stopped the run; nothing was fixed unless the error says events were confirmed.
pub async fn run(
    options: &Options,
    okta: &OktaClient,
    mapping: &GroupMapping,
    broker: &BrokerSettings,
    progress: &mut Progress,
) -> Result<RunOutcome, ReconcileError> {
    let started = Instant::now();
    let started_at = format_timestamp(time::OffsetDateTime::now_utc());

    // The roster first: a bad one stops the run before a single Okta call.
    let roster = read_roster_source(options, progress)?;
    progress.note(&format!(
        "roster: {} employees read, {} bad lines",
        roster.employees.len(),
        roster.bad.len()
    ));
    for bad in &roster.bad {
        progress.warn(&format!("roster line {}: {}", bad.line, bad.message));
    }

    // The mapped groups, each resolved once.
    let directory = GroupDirectory::new(okta.clone(), Duration::from_secs(24 * 3600));
    let mut groups: Vec<MappedGroup> = Vec::new();
    let mut target_ix: HashMap<GroupTarget, GroupIx> = HashMap::new();
    let targets = mapping.all_targets();
    for target in &targets {
        let resolved = directory.resolve(target).await?;
        let ix = match groups.iter().position(|g| g.id == resolved.id) {
            Some(ix) => ix,
            None => {
                groups.push(MappedGroup {
                    id: resolved.id,
                    name: resolved.name,
                });
                groups.len() - 1
            }
        };
        target_ix.insert(target.clone(), ix as GroupIx);
    }
    progress.note(&format!("okta: {} mapped groups resolved", groups.len()));

    // Okta's side.
    let written_keys = written_profile_keys();
    let mut reader = OktaReader::new(okta, options.page_limit, &written_keys, progress);
    if options.scope == Scope::EmployeeNumber {
        reader.read_employee_number_scope().await?;
    }
    for (ix, group) in groups.iter().enumerate() {
        reader
            .read_group(
                ix as GroupIx,
                &group.id,
                &group.name,
                options.scope == Scope::MappedGroups,
            )
            .await?;
    }
    let mut snapshot = reader.finish();
    let mut group_lookups = targets.len() as u64;

    // Drift, per roster employee, then the users the roster lacks.
    let occurred_at = format_timestamp(time::OffsetDateTime::now_utc());
    let mut findings: Vec<FindingRow> = Vec::new();
    let mut correctives: Vec<Corrective> = Vec::new();
    let mut fix = FixReport {
        requested: options.fix,
        only: options.only_groups.then_some("groups"),
        ..FixReport::default()
    };
    let mut matched = vec![false; snapshot.records.len()];
    let group_name = |ix: &GroupIx| {
        groups
            .get(usize::from(*ix))
            .map_or("?", |g| g.name.as_str())
            .to_owned()
    };
    for (employee_id, entry) in &roster.employees {
        let Ok(record) = entry.record() else {
            continue;
        };
        let wanted = Wanted {
            profile: crate::pipeline::provisioner::okta_profile(&record),
            groups: mapping
                .resolve(&record.groups)
                .targets
                .iter()
                .filter_map(|t| target_ix.get(t).copied())
                .collect(),
        };
        let mut index = snapshot.by_employee.get(&**employee_id).copied();
        if index.is_none() && options.scope == Scope::MappedGroups {
            // Outside every mapped group: only a lookup by login tells missing from
            // present-without-groups.
            group_lookups += 1;
            index = look_up_outside_groups(
                okta,
                &mut snapshot,
                record.email.as_str(),
                employee_id,
                &written_keys,
            )
            .await?;
            // A user found so has a record of its own now.
            matched.resize(snapshot.records.len(), false);
        }
        let okta_record = index.map(|i| &snapshot.records[i as usize]);
        if let Some(i) = index {
            matched[i as usize] = true;
        }
        let okta_profile = okta_record.map(|r| r.profile_map()).unwrap_or_default();
        let okta_groups: BTreeSet<GroupIx> = okta_record.map(|r| r.group_set()).unwrap_or_default();
        let account = okta_record.map(|r| OktaAccount {
            status: &r.status,
            profile: &okta_profile,
            groups: &okta_groups,
        });
        let found = drift::compare_employee(&wanted, account);
        if found.is_empty() {
            continue;
        }
        let kinds: Vec<DriftKind> = found.iter().map(Finding::kind).collect();
        for finding in found {
            findings.push(FindingRow {
                kind: finding.kind(),
                employee_id: Some(employee_id.to_string()),
                okta_user_id: okta_record.map(|r| r.user_id.to_string()),
                login: Some(
                    okta_record
                        .map(|r| r.login.to_string())
                        .unwrap_or_else(|| record.email.as_str().to_owned()),
                ),
                roster_line: Some(entry.line),
                detail: describe(&finding, &group_name),
            });
        }
        if options.fix {
            let Some(event_type) = drift::fix_for(&kinds, options.only_groups) else {
                fix.not_fixed += 1;
                continue;
            };
            let employee = if options.only_groups {
                fix::groups_only_employee(employee_id, &okta_profile, &record.groups)
            } else {
                entry.object()
            };
            match fix::build(
                event_type,
                &options.run_id,
                employee_id,
                &occurred_at,
                employee,
            ) {
                Ok(event) => correctives.push(event),
                Err(e) => {
                    fix.not_fixed += 1;
                    progress.warn(&format!(
                        "no {event_type} for employee {employee_id}: the service would refuse it: {e}"
                    ));
                }
            }
        }
    }

    // Users in scope the roster lacks, and members of mapped groups HR cannot own.
    let excluded: HashSet<&str> = roster
        .bad
        .iter()
        .filter_map(|b| b.employee_id.as_deref())
        .collect();
    let mut users_in_scope = 0u64;
    let mut orphans = 0u64;
    for (i, record) in snapshot.records.iter().enumerate() {
        let Some(number) = &record.employee_number else {
            if !record.groups.is_empty() {
                let names: Vec<String> = record.groups.iter().map(&group_name).collect();
                findings.push(FindingRow {
                    kind: DriftKind::Unmatched,
                    employee_id: None,
                    okta_user_id: Some(record.user_id.to_string()),
                    login: Some(record.login.to_string()),
                    roster_line: None,
                    detail: format!(
                        "{} user in mapped groups {} has no employeeNumber",
                        drift::status_name(&record.status),
                        names.join(", ")
                    ),
                });
                if options.fix {
                    fix.not_fixed += 1;
                }
            }
            continue;
        };
        if !record.in_scope {
            continue;
        }
        users_in_scope += 1;
        let stands_for_number = snapshot.by_employee.get(number) == Some(&(i as u32));
        if matched[i] || !stands_for_number || excluded.contains(&**number) {
            continue;
        }
        if roster.employees.contains_key(number) {
            continue;
        }
        let Some(finding) = drift::compare_unlisted(&record.status) else {
            continue;
        };
        orphans += 1;
        findings.push(FindingRow {
            kind: DriftKind::Orphan,
            employee_id: Some(number.to_string()),
            okta_user_id: Some(record.user_id.to_string()),
            login: Some(record.login.to_string()),
            roster_line: None,
            detail: describe(&finding, &group_name),
        });
        if options.fix && !options.only_groups {
            let employee = fix::removal_employee(number, &record.login);
            match fix::build(
                EventType::Removed,
                &options.run_id,
                number,
                &occurred_at,
                employee.clone(),
            )
            .or_else(|_| {
                // A login the service would not take as an email: remove by id alone.
                let mut by_id = Map::new();
                by_id.insert("id".into(), json!(&**number));
                fix::build(
                    EventType::Removed,
                    &options.run_id,
                    number,
                    &occurred_at,
                    by_id,
                )
            }) {
                Ok(event) => correctives.push(event),
                Err(e) => {
                    fix.not_fixed += 1;
                    progress.warn(&format!("no removal for employee {number}: {e}"));
                }
            }
        } else if options.fix {
            fix.not_fixed += 1;
        }
    }
    report::sort_findings(&mut findings);
    let orphan_share = drift::orphan_share(orphans, users_in_scope);

    let mut report = Report {
        run_id: options.run_id.clone(),
        scope: options.scope.as_str(),
        started_at,
        roster_employees: roster.employees.len() as u64,
        roster_bad_lines: roster
            .bad
            .iter()
            .map(|b| BadLineRow {
                line: b.line,
                message: b.message.clone(),
            })
            .collect(),
        okta_users_in_scope: users_in_scope,
        duplicate_employee_numbers: snapshot.duplicate_employee_numbers,
        counts: report::count_by_kind(&findings),
        orphan_share,
        findings,
        fix,
        metrics: RunMetrics::default(),
    };
    report.set_listing(snapshot.stats);
    report.metrics.okta_group_lookups = group_lookups;
    drop(roster);
    drop(snapshot);

    // The truncated-roster guard, then the repairs.
    let mut exit_code = if report.has_drift() { 1 } else { 0 };
    if options.fix && orphan_share > options.max_orphan_share && !options.force {
        report.fix.refused = Some(format!(
            "{orphans} orphans are {:.1}% of the {users_in_scope} users in scope, more than RECONCILE_MAX_ORPHAN_SHARE ({:.1}%): is the roster truncated? Nothing was published; check the roster, or add --force",
            orphan_share * 100.0,
            options.max_orphan_share * 100.0
        ));
        exit_code = 2;
    }
    let fixing = options.fix && report.fix.refused.is_none();
    let link = match BrokerLink::connect(broker).await {
        Ok(link) => Some(link),
        Err(e) if fixing => return Err(e.into()),
        Err(e) => {
            progress.warn(&format!(
                "the reconcile.completed event cannot be published: {}",
                crate::telemetry::error_chain(&e)
            ));
            None
        }
    };
    let mut published = Ok(Default::default());
    if let (true, Some(broker_link)) = (fixing, &link) {
        progress.note(&format!(
            "fix: publishing {} corrective events",
            correctives.len()
        ));
        let total = correctives.len();
        published = broker_link
            .publish_events(&options.run_id, &correctives, |n| {
                if n as usize == total || n % 1000 == 0 {
                    eprintln!("reconcile: fix: {n} of {total} events confirmed");
                }
            })
            .await;
    }
    match published {
        Ok(published) => report.fix.published = published,
        Err(e) => {
            if let Some(link) = link {
                link.close().await;
            }
            return Err(e.into());
        }
    }
    report.metrics.duration_ms = started.elapsed().as_millis() as u64;
    report.metrics.peak_rss_bytes = peak_rss_bytes();
    if let Some(link) = link {
        let summary = summary_event(&report, fixing);
        let sent = link.publish_summary(&summary).await;
        link.close().await;
        if let Err(e) = sent {
            if fixing {
                return Err(e.into());
            }
            progress.warn(&crate::telemetry::error_chain(&e));
        }
    }
    let m = &report.metrics;
    progress.note(&format!(
        "metrics: duration_ms={} okta_list_requests={} okta_pages={} okta_group_lookups={} rate_limit_waits={} rate_limit_wait_ms={} peak_rss_bytes={} findings={} published={}",
        m.duration_ms,
        m.okta_list_requests,
        m.okta_pages,
        m.okta_group_lookups,
        m.rate_limit_waits,
        m.rate_limit_wait_ms,
        m.peak_rss_bytes.map_or("-".to_owned(), |b| b.to_string()),
        report.findings.len(),
        report.fix.published_total(),
    ));
    tracing::info!(
        run_id = %report.run_id,
        duration_ms = m.duration_ms,
        okta_list_requests = m.okta_list_requests,
        findings = report.findings.len(),
        published = report.fix.published_total(),
        "reconcile run finished"
    );
    Ok(RunOutcome { report, exit_code })
}

/// The `reconcile.completed` event: run id, counts per kind, whether it fixed, duration.
pub fn summary_event(report: &Report, fixed: bool) -> Value {
    json!({
        "event_type": fix::SUMMARY_EVENT,
        "run_id": report.run_id,
        "scope": report.scope,
        "started_at": report.started_at,
        "completed_at": format_timestamp(time::OffsetDateTime::now_utc()),
        "duration_ms": report.metrics.duration_ms,
        "roster_employees": report.roster_employees,
        "roster_bad_lines": report.roster_bad_lines.len(),
        "okta_users_in_scope": report.okta_users_in_scope,
        "counts": report.counts,
        "drift": report.has_drift(),
        "fixed": fixed,
        "fix_refused": report.fix.refused,
        "only": report.fix.only,
        "published": report.fix.published,
        "metrics": report.metrics,
    })
}

fn read_roster_source(
    options: &Options,
    progress: &mut Progress,
) -> Result<Roster, ReconcileError> {
    let tick = |n: u64| eprintln!("reconcile: roster: {n} lines read");
    let max = options.max_bad_lines;
    let read = |input: &mut dyn BufRead| roster::read_roster(input, max, tick);
    let roster = if options.roster.as_os_str() == "-" {
        progress.note("roster: reading standard input");
        read(&mut std::io::stdin().lock())?
    } else {
        let file =
            std::fs::File::open(&options.roster).map_err(|source| ReconcileError::OpenRoster {
                path: options.roster.display().to_string(),
                source,
            })?;
        read(&mut std::io::BufReader::with_capacity(256 * 1024, file))?
    };
    Ok(roster)
}

/// In the mapped-groups scope, a roster employee none of the mapped groups has: the
/// user with the employee's login, if it is theirs (`getUser` is consistent, unlike
/// search).
async fn look_up_outside_groups(
    okta: &OktaClient,
    snapshot: &mut Snapshot,
    login: &str,
    employee_id: &str,
    written_keys: &[String],
) -> Result<Option<u32>, OktaError> {
    let Some(user) = okta.get_user(login).await? else {
        return Ok(None);
    };
    let number = user
        .profile
        .get("employeeNumber")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if number != employee_id {
        return Ok(None);
    }
    let profile: Map<String, Value> = user
        .profile
        .iter()
        .filter(|(k, v)| !v.is_null() && written_keys.iter().any(|w| w == *k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let index = snapshot.records.len() as u32;
    snapshot.records.push(okta_side::OktaRecord {
        user_id: user.id.clone().into_boxed_str(),
        status: user.account_status(),
        login: user
            .profile
            .get("login")
            .and_then(Value::as_str)
            .unwrap_or(login)
            .into(),
        employee_number: Some(employee_id.into()),
        profile: serde_json::to_string(&profile)
            .unwrap_or_default()
            .into_boxed_str(),
        groups: Vec::new(),
        in_scope: false,
    });
    Ok(Some(index))
}

/// The profile keys the service writes: those of `okta_profile` for an employee with
/// every optional field, so that a field the service starts writing is compared too.
pub fn written_profile_keys() -> Vec<String> {
    let sample = json!({
        "id": "E-0", "email": "a@example.com", "first_name": "A", "last_name": "B",
        "department": "D", "title": "T", "manager_email": "m@example.com",
        "start_date": "2026-01-01", "groups": [],
    });
    let record = sample
        .as_object()
        .and_then(|o| parse_employee_record(o).ok());
    match record {
        Some(record) => crate::pipeline::provisioner::okta_profile(&record)
            .keys()
            .cloned()
            .collect(),
        None => Vec::new(),
    }
}

fn describe(finding: &Finding, group_name: &dyn Fn(&GroupIx) -> String) -> String {
    let names = |ixs: &[GroupIx]| ixs.iter().map(group_name).collect::<Vec<_>>().join(", ");
    match finding {
        Finding::Orphan { status } => format!("{status} in Okta, not in the roster"),
        Finding::Missing => "in the roster, no Okta user with this employeeNumber".to_owned(),
        Finding::Disabled { status } => format!("in the roster, {status} in Okta"),
        Finding::Groups { extra, missing } => {
            let mut parts = Vec::new();
            if !extra.is_empty() {
                parts.push(format!("extra: {}", names(extra)));
            }
            if !missing.is_empty() {
                parts.push(format!("missing: {}", names(missing)));
            }
            parts.join("; ")
        }
        Finding::Profile { fields } => format!("differs: {}", fields.join(", ")),
        Finding::Unmatched => "no employeeNumber".to_owned(),
    }
}

/// This process's peak resident memory (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_keys_are_the_services() {
        let keys = written_profile_keys();
        for key in [
            "login",
            "email",
            "firstName",
            "lastName",
            "employeeNumber",
            "title",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
        }
    }
}
