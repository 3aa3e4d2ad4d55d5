//! `iam-provisioner`: the command line. Thin on purpose: it parses arguments, installs
//! logging, builds the application from the environment and runs it until a signal.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use iam_provisioner::app::{Application, OktaEndpoint};
use iam_provisioner::config::{OktaTarget, Settings};
use iam_provisioner::domain::mapping::GroupMapping;
use iam_provisioner::okta::groups::GroupDirectory;
use iam_provisioner::okta::OktaClient;
use iam_provisioner::ops::dlq::cli as dlq;
use iam_provisioner::ops::held::{self, HeldAction, HeldSelection};
use iam_provisioner::ops::mapping_check;
use iam_provisioner::ops::walker::OpsBroker;
use std::net::SocketAddr;
use std::process::ExitCode;

// What only the fake Okta's commands use.
#[cfg(feature = "okta-sim")]
use iam_provisioner::config::secret::Secret;
#[cfg(feature = "okta-sim")]
use iam_provisioner::domain::mapping::GroupTarget;
#[cfg(feature = "okta-sim")]
use iam_provisioner::okta_sim::{self, OktaSim, RateLimit, SimConfig};
#[cfg(feature = "okta-sim")]
use std::path::PathBuf;
#[cfg(feature = "okta-sim")]
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "iam-provisioner",
    version,
    about = "Keeps Okta in step with HR events published to RabbitMQ"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: consume HR events, provision Okta, publish outcomes.
    /// Configured by environment variables (see the README).
    Run(RunArgs),
    /// Run the fake Okta on its own, for local work and docker-compose.
    #[cfg(feature = "okta-sim")]
    OktaSim(SimArgs),
    /// Inspect, replay or purge the dead-letter queue. Needs only the broker settings.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Move dead-lettered messages back to processing under their original routing key
    /// (the same as `dlq replay`). Try --dry-run first.
    Replay(dlq::ReplayArgs),
    /// Release or discard removals held by the offboarding guard.
    #[command(subcommand)]
    Held(HeldCommand),
    /// Tools for the group mapping.
    #[command(subcommand)]
    Mapping(MappingCommand),
    /// Compare HR's roster with Okta and report the drift; with --fix, repair it by
    /// publishing corrective events. Exit 0: no drift, 1: drift, 2: error.
    Reconcile(iam_provisioner::ops::reconcile::cli::ReconcileArgs),
}

#[derive(Subcommand)]
enum HeldCommand {
    /// Send the selected held removals back to processing, past the guard.
    Release(HeldArgs),
    /// Drop the selected held removals: they will not be carried out.
    Discard(HeldArgs),
}

#[derive(Args)]
struct HeldArgs {
    /// Only messages with this event type (routing key), e.g. employee.removed.
    #[arg(long)]
    routing_key: Option<String>,
    /// Only messages of this employee id.
    #[arg(long)]
    employee_id: Option<String>,
    /// Only the message with this event id.
    #[arg(long)]
    event_id: Option<String>,
    /// Only messages held before this time (RFC 3339, e.g. 2026-11-28T09:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = dlq::parse_time)]
    held_before: Option<time::OffsetDateTime>,
    /// Only messages held at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = dlq::parse_time)]
    held_after: Option<time::OffsetDateTime>,
    /// Act on at most this many messages.
    #[arg(long)]
    limit: Option<usize>,
    /// List what would be released or discarded; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Really release or discard. Without it (and without --dry-run) the command lists
    /// what it would do and refuses.
    #[arg(long, conflicts_with = "dry_run")]
    yes: bool,
    /// Refused: the broker URL comes from AMQP_URL only (a flag would leave the password
    /// in shell history and `ps`).
    #[arg(long, hide = true, value_name = "URL")]
    amqp_url: Option<String>,
    /// The work queue whose hold queue (`<WORK_QUEUE>.holding`) is read.
    #[arg(long, env = "WORK_QUEUE", default_value = "iam-provisioner")]
    work_queue: String,
}

#[derive(Subcommand)]
enum MappingCommand {
    /// Resolve every mapped Okta group against the configured Okta (OKTA_ORG_URL,
    /// OKTA_API_TOKEN, GROUP_MAPPING or GROUP_MAPPING_FILE); exit 1 on any problem.
    Check,
}

#[derive(Args)]
struct RunArgs {
    /// Use the built-in FAKE Okta, started in-process, instead of a real org.
    /// For trying the service out; never for production.
    // A build without the fake (the deploy image) keeps this flag and the two below,
    // hidden, only to refuse `--okta-sim` with one clear line rather than clap's
    // "unexpected argument".
    #[arg(long)]
    #[cfg_attr(not(feature = "okta-sim"), arg(hide = true))]
    okta_sim: bool,
    /// With --okta-sim: where the fake Okta listens (its /__sim/users shows what the
    /// service did).
    #[arg(long, default_value = "127.0.0.1:8081", requires = "okta_sim")]
    #[cfg_attr(not(feature = "okta-sim"), arg(hide = true))]
    okta_sim_listen: SocketAddr,
    /// With --okta-sim: accept a broker that is not on this machine. Without it the fake
    /// refuses one, so that a trial run never consumes (and "provisions") real HR events.
    #[arg(long, requires = "okta_sim")]
    #[cfg_attr(not(feature = "okta-sim"), arg(hide = true))]
    okta_sim_allow_remote_broker: bool,
}

#[cfg(feature = "okta-sim")]
#[derive(Args)]
struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081", env = "OKTA_SIM_LISTEN")]
    listen: SocketAddr,
    /// The API token clients must send as `Authorization: SSWS <token>`.
    #[arg(long, env = "OKTA_SIM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An OKTA_GROUP group to create at start (repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// A file with one group name per line (blank lines and # comments ignored), or a
    /// mapping file (.json/.yaml/.toml) whose target groups are created.
    #[arg(long, env = "OKTA_SIM_GROUPS_FILE")]
    groups_file: Option<PathBuf>,
    /// Delay added to every API response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Requests allowed per rate-limit window in every endpoint bucket (0: unlimited).
    /// Without it, a workforce org's per-bucket limits (600/min for creating users, …).
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Length of the rate-limit window, in seconds.
    #[arg(long, default_value_t = 60)]
    rate_window_secs: u64,
    /// Register an OAuth 2.0 service app, granted the four scopes the service needs:
    /// its client id and the file of its public key (PEM). Repeatable.
    #[arg(long = "oauth-client", value_name = "CLIENT_ID=PUBLIC_KEY_FILE")]
    oauth_clients: Vec<String>,
    /// Lifetime of the access tokens the fake issues, in seconds.
    #[arg(long, default_value_t = 3600)]
    access_token_lifetime_secs: u64,
    /// The service apps do not require DPoP (an app created through the API); by
    /// default they do, as one made in the Admin Console does.
    #[arg(long)]
    oauth_without_dpop: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = match cli.command {
        // Their errors are reported as their one line; the AMQP library's own log lines
        // about the same failure would only repeat it.
        Command::Dlq(_) | Command::Replay(_) | Command::Held(_) | Command::Reconcile(_) => {
            iam_provisioner::telemetry::init_with_default_filter("warn,lapin=off")
        }
        _ => iam_provisioner::telemetry::init(),
    };
    let telemetry = match logging {
        Ok(guard) => guard,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Its own exit statuses (0 no drift, 1 drift, 2 error), so handled apart.
    let command = match cli.command {
        Command::Reconcile(args) => {
            let code = runtime.block_on(iam_provisioner::ops::reconcile::cli::command(args));
            telemetry.shutdown();
            return ExitCode::from(code);
        }
        other => other,
    };
    let result = runtime.block_on(async {
        match command {
            Command::Run(args) => run(args).await,
            #[cfg(feature = "okta-sim")]
            Command::OktaSim(args) => run_sim(args).await,
            Command::Dlq(command) => {
                Ok(dlq::run_dlq(command, &ops_broker()?, shutdown_signal()).await?)
            }
            Command::Replay(args) => {
                Ok(dlq::replay(args, &ops_broker()?, shutdown_signal()).await?)
            }
            Command::Held(command) => run_held(command).await,
            Command::Mapping(MappingCommand::Check) => run_mapping_check().await,
            Command::Reconcile(_) => Ok(()),
        }
    });
    // The last spans (the shutdown itself) reach the collector before the process ends.
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, with the cause chain, for humans and log collectors alike.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The one line `run --okta-sim` fails with in a build without the fake Okta.
#[cfg(not(feature = "okta-sim"))]
const NO_FAKE_OKTA: &str = "--okta-sim: this build has no fake Okta (built without the `okta-sim` \
     feature, as the deploy image is); build from source with default features to try the \
     service against it";

/// The mapping used by `run --okta-sim` when none is configured, so a newcomer sees
/// groups assigned.
#[cfg(feature = "okta-sim")]
fn demo_mapping() -> GroupMapping {
    GroupMapping::from_pairs([
        ("*", &["All-Staff"][..]),
        ("Engineering", &["Engineering-Core", "GitHub-Users"][..]),
        ("Sales", &["Sales-App-Access"][..]),
    ])
}

#[cfg(feature = "okta-sim")]
fn mapped_group_names(mapping: &GroupMapping) -> Vec<String> {
    mapping
        .all_targets()
        .into_iter()
        .filter_map(|t| match t {
            GroupTarget::Name(name) => Some(name),
            GroupTarget::Id(_) => None,
        })
        .collect()
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Before reading any setting or reaching the broker: nothing is consumed by a run
    // that cannot do what it was asked.
    #[cfg(not(feature = "okta-sim"))]
    if args.okta_sim {
        anyhow::bail!(NO_FAKE_OKTA);
    }
    let settings = Settings::from_env(args.okta_sim)?;
    iam_provisioner::telemetry::pii::set_log_mode(settings.telemetry.log_pii);
    if args.okta_sim && !args.okta_sim_allow_remote_broker {
        iam_provisioner::config::refuse_remote_broker_for_sim(&settings.amqp.url)?;
    }
    // The one read of GROUP_MAPPING_FILE at start-up (asynchronous; it checks the file).
    // Only the fake Okta fills in a missing mapping (the demo one).
    #[cfg_attr(not(feature = "okta-sim"), allow(unused_mut))]
    let mut mapping = settings.mapping.load().await?;
    #[cfg(feature = "okta-sim")]
    let mut _sim_guard = None;
    let okta = match &settings.okta.target {
        OktaTarget::Org { url, auth } => OktaEndpoint {
            url: url.clone(),
            auth: auth.clone(),
        },
        // Only `--okta-sim` asks for it, refused above in a build without the fake.
        #[cfg(not(feature = "okta-sim"))]
        OktaTarget::Simulated => anyhow::bail!(NO_FAKE_OKTA),
        #[cfg(feature = "okta-sim")]
        OktaTarget::Simulated => {
            let mapping = mapping.get_or_insert_with(|| {
                tracing::warn!("no GROUP_MAPPING or GROUP_MAPPING_FILE: using the demo mapping {{\"*\": \"All-Staff\", \"Engineering\": [\"Engineering-Core\", \"GitHub-Users\"], \"Sales\": \"Sales-App-Access\"}}");
                demo_mapping()
            });
            let sim = OktaSim::start(SimConfig {
                listen: args.okta_sim_listen,
                groups: mapped_group_names(mapping),
                ..SimConfig::default()
            })
            .await
            .with_context(|| format!("cannot start the fake Okta on {}", args.okta_sim_listen))?;
            tracing::warn!(
                okta_sim = %sim.base_url(),
                "!!! RUNNING AGAINST THE BUILT-IN FAKE OKTA (--okta-sim): no real Okta org is changed. \
                 Never use this in production. See what the service did at {}/__sim/users",
                sim.base_url()
            );
            let endpoint = OktaEndpoint::with_api_token(
                reqwest::Url::parse(&sim.base_url()).context("fake Okta URL")?,
                Secret::new(sim.api_token()),
            );
            _sim_guard = Some(sim);
            endpoint
        }
    };
    let mapping = mapping.unwrap_or_else(|| {
        tracing::warn!("no group mapping configured: users are created without groups");
        GroupMapping::default()
    });
    if settings.pipeline.dry_run {
        tracing::warn!("DRY_RUN: Okta is read but never changed; outcomes list what would have been done (\"dry_run\": true)");
    }
    tracing::info!(
        okta = %okta.url,
        offboarding = ?settings.pipeline.offboarding,
        concurrency = settings.pipeline.concurrency,
        work_queue = %settings.amqp.topology.work_queue,
        "starting iam-provisioner"
    );
    let app = Application::build(settings, okta, mapping).await?;
    tracing::info!(http = %app.http_address(), "health endpoints listening");
    // On a worker thread rather than the thread blocked in `block_on`: each delivery's
    // task then starts on the thread that received it (tokio's LIFO slot), not after a
    // wake-up of another thread.
    tokio::spawn(app.run_until(shutdown_signal()))
        .await
        .context("the service's main task failed")?;
    Ok(())
}

async fn run_held(command: HeldCommand) -> anyhow::Result<()> {
    let (action, args, verb) = match command {
        HeldCommand::Release(args) => (HeldAction::Release, args, "released"),
        HeldCommand::Discard(args) => (HeldAction::Discard, args, "discarded"),
    };
    if args.amqp_url.is_some() {
        anyhow::bail!(
            "--amqp-url is not accepted: set AMQP_URL (and AMQP_PASSWORD_FILE) in the environment, so the password stays out of shell history and ps"
        );
    }
    let broker = ops_broker()?;
    // Without --yes, only look: as `dlq purge` does, but refusing, since the operator
    // asked for an action that was not carried out.
    let refused = !args.dry_run && !args.yes;
    let selection = HeldSelection {
        routing_key: args.routing_key.clone(),
        employee_id: args.employee_id.clone(),
        event_id: args.event_id.clone(),
        held_before: args.held_before,
        held_after: args.held_after,
        limit: args.limit,
        dry_run: args.dry_run || refused,
    };
    let verb = if selection.dry_run {
        "would be ".to_owned() + verb
    } else {
        verb.to_owned()
    };
    let report = match held::run(
        &broker,
        &args.work_queue,
        action,
        &selection,
        shutdown_signal(),
    )
    .await
    {
        Ok(report) => report,
        Err(stopped) => {
            // What was released or discarded before the error stays done: audit it.
            if !selection.dry_run && !stopped.done.selected.is_empty() {
                if let Err(e) = audit_held(&broker, &args, action, &stopped.done, true).await {
                    eprintln!("warning: the audit event was not published: {e:#}");
                }
            }
            return Err(stopped.into());
        }
    };
    for message in &report.selected {
        println!(
            "{verb}: {} employee_id={} event_id={} message_id={} held_at={}",
            message.routing_key,
            message.employee_id.as_deref().unwrap_or("-"),
            message.event_id.as_deref().unwrap_or("-"),
            message.message_id.as_deref().unwrap_or("-"),
            message.held_at.as_deref().unwrap_or("-"),
        );
    }
    println!(
        "{} {verb}, {} still held",
        report.selected.len(),
        report.kept
    );
    if refused {
        anyhow::bail!(
            "nothing was {}: add --yes to do it (or --dry-run to only list)",
            if action == HeldAction::Release {
                "released"
            } else {
                "discarded"
            }
        );
    }
    if !selection.dry_run {
        audit_held(&broker, &args, action, &report, false).await?;
    }
    Ok(())
}

/// The broker settings of the operator commands, read from the environment and handed
/// to them as plain values.
fn ops_broker() -> anyhow::Result<OpsBroker> {
    let settings = iam_provisioner::config::BrokerSettings::from_env()?;
    let url = settings.amqp_url.expose();
    Ok(OpsBroker::new(
        url,
        iam_provisioner::config::secret::redact_url_password(url),
        settings.topology,
    ))
}

/// The audit event of a `held release|discard --yes` that ran.
async fn audit_held(
    broker: &OpsBroker,
    args: &HeldArgs,
    action: HeldAction,
    report: &held::HeldReport,
    interrupted: bool,
) -> anyhow::Result<()> {
    use iam_provisioner::ops::audit::{self, AuditEvent, OperatorAction};
    let time =
        |t: Option<time::OffsetDateTime>| t.map(iam_provisioner::domain::outcome::format_timestamp);
    let mut event = AuditEvent::new(
        match action {
            HeldAction::Release => OperatorAction::HeldRelease,
            HeldAction::Discard => OperatorAction::HeldDiscard,
        },
        &iam_provisioner::amqp::parking::ParkingNames::for_work_queue(&args.work_queue).held_queue,
        audit::selection_of([
            ("routing_key", args.routing_key.clone()),
            ("employee_id", args.employee_id.clone()),
            ("event_id", args.event_id.clone()),
            ("held_before", time(args.held_before)),
            ("held_after", time(args.held_after)),
            ("limit", args.limit.map(|l| l.to_string())),
        ]),
        report.selected.len() as u64,
        report.selected.iter().map(|m| {
            m.event_id
                .clone()
                .or_else(|| m.message_id.clone())
                .unwrap_or_else(|| "-".to_owned())
        }),
    );
    event.interrupted = interrupted;
    audit::publish(broker, &event).await?;
    Ok(())
}

async fn run_mapping_check() -> anyhow::Result<()> {
    let settings = Settings::from_env(false)?;
    let OktaTarget::Org { url, auth } = &settings.okta.target else {
        anyhow::bail!(
            "mapping check needs a real Okta (OKTA_ORG_URL and OKTA_API_TOKEN or OKTA_CLIENT_ID)"
        );
    };
    let Some(mapping) = settings.mapping.load().await? else {
        anyhow::bail!("GROUP_MAPPING or GROUP_MAPPING_FILE: no mapping configured to check");
    };
    let client = OktaClient::with_auth(url.clone(), auth, settings.okta.client.clone())?;
    let groups = GroupDirectory::new(client, settings.okta.group_cache_ttl);
    let rows = mapping_check::check(&mapping, &groups).await;
    print!("{}", mapping_check::render(&rows));
    let problems = rows.iter().filter(|r| r.result.is_err()).count();
    if problems > 0 {
        anyhow::bail!(
            "{problems} of {} mapped Okta groups cannot be used",
            rows.len()
        );
    }
    Ok(())
}

/// The fake's rate limits from `--rate-limit` and `--rate-window-secs`.
#[cfg(feature = "okta-sim")]
fn sim_rate_limit(per_window: Option<u32>, window_secs: u64) -> Option<RateLimit> {
    let window = Duration::from_secs(window_secs.max(1));
    match per_window {
        None => Some(RateLimit::workforce().with_window(window)),
        Some(0) => None,
        Some(n) => Some(RateLimit::uniform(n, window)),
    }
}

#[cfg(feature = "okta-sim")]
async fn run_sim(args: SimArgs) -> anyhow::Result<()> {
    let mut groups = args.groups.clone();
    if let Some(path) = &args.groups_file {
        groups.extend(read_group_names(path)?);
    }
    let mut config = SimConfig {
        listen: args.listen,
        groups,
        latency: Duration::from_millis(args.latency_ms),
        rate_limit: sim_rate_limit(args.rate_limit, args.rate_window_secs),
        ..SimConfig::default()
    };
    match args.token {
        Some(token) => config.api_token = token,
        None => {
            // Generated: written to a file only its owner can read, never to the log.
            let path = write_sim_token(&config.api_token, args.listen)?;
            tracing::warn!(
                token_file = %path.display(),
                "no --token or OKTA_SIM_TOKEN: a random API token was generated and written to the token file"
            );
        }
    }
    if !args.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %args.listen,
            "the fake Okta listens beyond this machine (--listen): anyone who can reach it and knows its token can read and change its users"
        );
    }
    config.access_token_lifetime = Duration::from_secs(args.access_token_lifetime_secs);
    config.oauth_dpop_required = !args.oauth_without_dpop;
    for client in &args.oauth_clients {
        let Some((client_id, key_file)) = client.split_once('=') else {
            anyhow::bail!("--oauth-client: expected CLIENT_ID=PUBLIC_KEY_FILE, got {client:?}");
        };
        let public_key_pem = std::fs::read_to_string(key_file)
            .with_context(|| format!("--oauth-client: cannot read {key_file}"))?;
        config.oauth_clients.push(okta_sim::SimOAuthClient {
            client_id: client_id.to_owned(),
            public_key_pem,
            scopes: iam_provisioner::okta::auth::DEFAULT_SCOPES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        });
    }
    okta_sim::serve_until(config, shutdown_signal())
        .await
        .with_context(|| format!("cannot start the fake Okta on {}", args.listen))
}

/// Writes the fake's generated token to `<tmp>/iam-provisioner-okta-sim-<port>.token`,
/// readable by its owner only.
#[cfg(feature = "okta-sim")]
fn write_sim_token(token: &str, listen: SocketAddr) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    let path =
        std::env::temp_dir().join(format!("iam-provisioner-okta-sim-{}.token", listen.port()));
    let _ = std::fs::remove_file(&path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot write the token file {}", path.display()))?;
    writeln!(file, "{token}")
        .with_context(|| format!("cannot write the token file {}", path.display()))?;
    Ok(path)
}

#[cfg(feature = "okta-sim")]
fn read_group_names(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    if matches!(extension, "json" | "yaml" | "yml" | "toml") {
        let mapping = GroupMapping::from_file(path)?;
        return Ok(mapped_group_names(&mapping));
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read groups file {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// Completes on the first SIGTERM or Ctrl-C; a second one exits at once (nothing is
/// lost: unacknowledged deliveries go back to the queue when the connection drops).
async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("signal received; shutting down (send another to exit at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("second signal: exiting at once");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
