//! `iam-provisioner reconcile`: the command's arguments, its configuration from the
//! environment (the service's own variables, plus `RECONCILE_*`), and its exit status:
//! 0 no drift, 1 drift, 2 error (nothing fixed, unless the message says what was).

use super::okta_side::Scope;
use super::progress::Progress;
use super::{report, Options};
use crate::config::{BrokerSettings, OktaTarget, Settings};
use crate::okta::listing::MAX_PAGE_LIMIT;
use crate::okta::OktaClient;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// What `--only` may select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Only {
    /// Re-apply the group mapping (after a mapping change); fix nothing else.
    Groups,
}

/// `reconcile`'s arguments.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// HR's roster: JSON Lines (one `employee` object per line, as in employee.added) or
    /// a JSON array of them; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub roster: PathBuf,
    /// Which Okta users are compared: those with an employeeNumber, or those in any
    /// mapped group.
    #[arg(
        long,
        value_enum,
        env = "RECONCILE_SCOPE",
        default_value = "employee-number"
    )]
    pub scope: Scope,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Publish corrective events to the input exchange (the service carries them out).
    /// Without it nothing is changed.
    #[arg(long)]
    pub fix: bool,
    /// With --fix: fix even when the orphans exceed RECONCILE_MAX_ORPHAN_SHARE.
    #[arg(long, requires = "fix")]
    pub force: bool,
    /// With --fix: fix only this kind of drift.
    #[arg(long, value_enum, requires = "fix")]
    pub only: Option<Only>,
    /// More bad roster lines than this stop the run with nothing compared or fixed.
    #[arg(long, env = "RECONCILE_MAX_BAD_LINES", default_value_t = 0)]
    pub max_bad_lines: usize,
    /// --fix is refused when orphans would be more than this share (0 to 1) of the
    /// users in scope: a truncated roster looks like a mass departure.
    #[arg(long, env = "RECONCILE_MAX_ORPHAN_SHARE", default_value_t = 0.1)]
    pub max_orphan_share: f64,
    /// Users per Okta list page (1 to 200; Okta's most, 200, is the cheapest).
    #[arg(long, env = "RECONCILE_PAGE_LIMIT", default_value_t = MAX_PAGE_LIMIT)]
    pub page_limit: u32,
    /// The run id used in event ids (`reconcile-<run id>-<employee id>`) and the
    /// summary; by default the start time and a random suffix. Reusing one makes
    /// a repeated --fix publish the same event ids.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Only warnings on standard error, no progress.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs the command; returns the exit status.
pub async fn command(args: ReconcileArgs) -> u8 {
    match run(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            2
        }
    }
}

async fn run(args: ReconcileArgs) -> anyhow::Result<u8> {
    if !(0.0..=1.0).contains(&args.max_orphan_share) {
        anyhow::bail!("RECONCILE_MAX_ORPHAN_SHARE (--max-orphan-share) must be between 0 and 1");
    }
    if !(1..=MAX_PAGE_LIMIT).contains(&args.page_limit) {
        anyhow::bail!("RECONCILE_PAGE_LIMIT (--page-limit) must be between 1 and {MAX_PAGE_LIMIT}");
    }
    let run_id = match &args.run_id {
        Some(id) => {
            let valid = !id.is_empty()
                && id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                anyhow::bail!("--run-id: 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' and '.'");
            }
            id.clone()
        }
        None => new_run_id(),
    };
    let settings = Settings::from_env(false)?;
    let OktaTarget::Org { url, auth } = &settings.okta.target else {
        anyhow::bail!(
            "reconcile needs a real Okta (OKTA_ORG_URL and OKTA_API_TOKEN or OKTA_CLIENT_ID)"
        );
    };
    // Every 429 comes back here at once (the client never loops on one), to be waited
    // out as the pacer says and said on standard error.
    let client_settings = settings.okta.client.clone();
    // Reads only; a DRY_RUN setting changes nothing for a reconciliation.
    let okta = OktaClient::with_auth(url.clone(), auth, client_settings)?;
    let mapping = settings.mapping.load().await?.unwrap_or_default();
    let broker = BrokerSettings::from_env()?;
    let options = Options {
        roster: args.roster.clone(),
        scope: args.scope,
        fix: args.fix,
        force: args.force,
        only_groups: args.only == Some(Only::Groups),
        page_limit: args.page_limit,
        max_bad_lines: args.max_bad_lines,
        max_orphan_share: args.max_orphan_share,
        run_id,
    };
    let mut progress = Progress::stderr(args.quiet);
    let outcome = super::run(&options, &okta, &mapping, &broker, &mut progress).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.report)?);
    } else {
        print!("{}", report::render_text(&outcome.report));
    }
    if let Some(reason) = &outcome.report.fix.refused {
        eprintln!("error: --fix refused: {reason}");
    }
    Ok(outcome.exit_code)
}

/// `20261204T101500Z-3f9a`: sortable, and unique enough among runs of one org.
fn new_run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let stamp = now
        .format(&format)
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    format!("{stamp}-{:04x}", fastrand::u16(..))
}
