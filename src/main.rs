//! `iam-provisioner`: the command line. Thin on purpose: it parses arguments, installs
//! logging, builds the application from the environment and runs it until a signal.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use iam_provisioner::app::{Application, OktaEndpoint};
use iam_provisioner::config::{OktaTarget, Settings};
use iam_provisioner::dlq::cli as dlq;
use iam_provisioner::domain::mapping::{GroupMapping, GroupTarget};
use iam_provisioner::held::{self, HeldAction, HeldSelection};
use iam_provisioner::mapping_check;
use iam_provisioner::okta::groups::GroupDirectory;
use iam_provisioner::okta::OktaClient;
use iam_provisioner::okta_sim::{self, OktaSim, RateLimit, SimConfig};
use iam_provisioner::secret::Secret;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
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
    /// Broker URL (the password is never printed).
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
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
    #[arg(long)]
    okta_sim: bool,
    /// With --okta-sim: where the fake Okta listens (its /__sim/users shows what the
    /// service did).
    #[arg(long, default_value = "127.0.0.1:8081", requires = "okta_sim")]
    okta_sim_listen: SocketAddr,
}

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
    /// Requests allowed per rate-limit window and endpoint bucket (0: unlimited).
    #[arg(long, default_value_t = 0)]
    rate_limit: u32,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = match cli.command {
        // Their errors are reported as their one line; the AMQP library's own log lines
        // about the same failure would only repeat it.
        Command::Dlq(_) | Command::Replay(_) => {
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
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::OktaSim(args) => run_sim(args).await,
            Command::Dlq(command) => Ok(dlq::run_dlq(command).await?),
            Command::Replay(args) => Ok(dlq::replay(args).await?),
            Command::Held(command) => run_held(command).await,
            Command::Mapping(MappingCommand::Check) => run_mapping_check().await,
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

/// The mapping used by `run --okta-sim` when none is configured, so a newcomer sees
/// groups assigned.
fn demo_mapping() -> GroupMapping {
    GroupMapping::from_pairs([
        ("*", &["All-Staff"][..]),
        ("Engineering", &["Engineering-Core", "GitHub-Users"][..]),
        ("Sales", &["Sales-App-Access"][..]),
    ])
}

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
    let settings = Settings::from_env(args.okta_sim)?;
    let mut mapping = settings.mapping.clone();
    let mut _sim_guard = None;
    let okta = match &settings.okta {
        OktaTarget::Org { url, auth } => OktaEndpoint {
            url: url.clone(),
            auth: auth.clone(),
        },
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
    if settings.dry_run {
        tracing::warn!("DRY_RUN: Okta is read but never changed; outcomes list what would have been done (\"dry_run\": true)");
    }
    tracing::info!(
        okta = %okta.url,
        offboarding = ?settings.offboarding,
        concurrency = settings.concurrency,
        work_queue = %settings.topology.work_queue,
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
    let selection = HeldSelection {
        routing_key: args.routing_key,
        employee_id: args.employee_id,
        event_id: args.event_id,
        held_before: args.held_before,
        held_after: args.held_after,
        limit: args.limit,
        dry_run: args.dry_run,
    };
    let verb = if selection.dry_run {
        "would be ".to_owned() + verb
    } else {
        verb.to_owned()
    };
    let report = held::run(
        &Secret::new(args.amqp_url),
        &args.work_queue,
        action,
        &selection,
    )
    .await?;
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
    Ok(())
}

async fn run_mapping_check() -> anyhow::Result<()> {
    let settings = Settings::from_env(false)?;
    let OktaTarget::Org { url, auth } = &settings.okta else {
        anyhow::bail!(
            "mapping check needs a real Okta (OKTA_ORG_URL and OKTA_API_TOKEN or OKTA_CLIENT_ID)"
        );
    };
    let Some(mapping) = &settings.mapping else {
        anyhow::bail!("GROUP_MAPPING or GROUP_MAPPING_FILE: no mapping configured to check");
    };
    let client = OktaClient::with_auth(url.clone(), auth, settings.okta_client.clone())?;
    let groups = GroupDirectory::new(client, settings.group_cache_ttl);
    let rows = mapping_check::check(mapping, &groups).await;
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

async fn run_sim(args: SimArgs) -> anyhow::Result<()> {
    let mut groups = args.groups.clone();
    if let Some(path) = &args.groups_file {
        groups.extend(read_group_names(path)?);
    }
    let mut config = SimConfig {
        listen: args.listen,
        groups,
        latency: Duration::from_millis(args.latency_ms),
        rate_limit: (args.rate_limit > 0).then(|| RateLimit {
            requests_per_window: args.rate_limit,
            window: Duration::from_secs(args.rate_window_secs.max(1)),
        }),
        ..SimConfig::default()
    };
    if let Some(token) = args.token {
        config.api_token = token;
    }
    config.access_token_lifetime = Duration::from_secs(args.access_token_lifetime_secs);
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
