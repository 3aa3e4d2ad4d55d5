//! Operator safety (issue 17): the commands that change what the service will do ask for
//! `--yes`, take the broker URL from the environment only, and leave an audit event
//! `operator.<action>` on the results exchange, seen here as a consumer of that exchange
//! sees it. Also the fake Okta's fences: `run --okta-sim` refuses a remote broker and its
//! outcomes say they are simulated; `okta-sim` never logs its token.

mod common;

use common::process::{run_command, BINARY};
use common::*;
use futures_util::StreamExt;
use iam_provisioner::amqp::topology::TopologyNames;
use iam_provisioner::okta_sim::UserStatus;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs the binary to its end, as an operator named `audit-tester` on this machine.
async fn operator(args: &[&str], names: &TopologyNames) -> (Option<i32>, String, String) {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_clear()
        .env("USER", "audit-tester")
        .env("AMQP_URL", AMQP_URL)
        .env("INPUT_EXCHANGE", &names.input_exchange)
        .env("WORK_QUEUE", &names.work_queue)
        .env("RESULTS_EXCHANGE", &names.results_exchange)
        .env("DEAD_LETTER_EXCHANGE", &names.dead_letter_exchange)
        .env("DEAD_LETTER_QUEUE", &names.dead_letter_queue);
    let output = tokio::task::spawn_blocking(move || command.output().expect("binary runs"))
        .await
        .expect("binary task");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The next `operator.*` event on the results exchange, skipping outcomes.
async fn next_audit(world: &mut World) -> (String, Value) {
    loop {
        let (key, body, _) = world.next_outcome().await;
        if key.starts_with("operator.") {
            return (key, body);
        }
    }
}

fn assert_operator(event: &Value) {
    assert_eq!(event["operator"]["user"], "audit-tester", "{event}");
    assert!(
        event["operator"]["host"]
            .as_str()
            .is_some_and(|h| !h.is_empty() && h != "unknown"),
        "{event}"
    );
    assert!(event["operator"]["uid"].is_u64(), "{event}");
    assert_eq!(event["operator"]["broker_user"], "guest", "{event}");
    assert!(event["occurred_at"].is_string(), "{event}");
}

#[tokio::test]
async fn held_release_needs_yes_refuses_a_url_flag_and_is_audited() {
    let mut options = Options::default();
    options.env.push(("OFFBOARDING_GUARD_MAX", "1".into()));
    options.env.push(("OFFBOARDING_GUARD_WINDOW", "300".into()));
    let mut world = World::start_with("op-held", options).await;
    let mut ids = Vec::new();
    for n in 0..2 {
        let (employee, email) = (format!("E-OH{n}"), format!("oh{n}@example.com"));
        world
            .sim
            .create_user(profile(&employee, &email), UserStatus::Active);
        let id = event_id("op-held");
        world
            .publish(
                "employee.removed",
                &leaver(&id, Some(&employee), Some(&email)),
            )
            .await;
        ids.push(id);
    }
    let finals = world.final_outcomes_of(&ids).await;
    let held_id = ids
        .iter()
        .find(|id| finals[*id]["status"] == "held")
        .expect("the second removal within the window is held")
        .clone();
    let held_queue = world.parking().held_queue;
    assert_eq!(world.queue_depth(&held_queue).await, 1);

    // Without --yes: it lists, refuses, and keeps the removal held.
    let (code, out, err) = operator(&["held", "release"], &world.names).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("1 would be released"), "{out}");
    assert!(err.contains("add --yes"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let (code, _, err) = operator(&["held", "discard"], &world.names).await;
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(world.queue_depth(&held_queue).await, 1);

    // The broker URL on the command line is refused, before connecting.
    let (code, _, err) = operator(
        &[
            "held",
            "release",
            "--yes",
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        ],
        &world.names,
    )
    .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("AMQP_URL"), "{err}");
    assert!(!err.contains("guest:guest"), "{err}");
    assert_eq!(world.queue_depth(&held_queue).await, 1);

    // With --yes: released, and the audit event says who, what and which.
    let (code, out, err) = operator(&["held", "release", "--yes"], &world.names).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("1 released, 0 still held"), "{out}");
    let (key, event) = next_audit(&mut world).await;
    assert_eq!(key, "operator.held_release");
    assert_eq!(event["event_type"], "operator.held_release");
    assert_eq!(event["action"], "held_release");
    assert_eq!(event["count"], 1);
    assert_eq!(event["event_ids"], json!([held_id]));
    assert_eq!(event["queue"], held_queue);
    assert_operator(&event);
    // The released removal is carried out (its outcome may have come before the audit
    // event, so the fake's state says it).
    let sim = &world.sim;
    eventually("the released removal is carried out", || async move {
        sim.user("oh1@example.com")
            .zip(sim.user("oh0@example.com"))
            .is_some_and(|(a, b)| {
                a.status == UserStatus::Deprovisioned && b.status == UserStatus::Deprovisioned
            })
    })
    .await;
}

/// A hire without an email: a validation failure, dead-lettered at once.
fn invalid_hire(id: &str) -> Value {
    json!({"event_id": id, "occurred_at": now_rfc3339(), "employee": {"id": "E-OPD"}})
}

#[tokio::test]
async fn replay_and_purge_are_audited_and_their_dry_runs_are_not() {
    let mut world = World::start("op-dlq").await;
    let ids: Vec<String> = (0..3).map(|_| event_id("op-dlq")).collect();
    for id in &ids {
        world.publish("employee.added", &invalid_hire(id)).await;
    }
    for outcome in world.final_outcomes_of(&ids).await.values() {
        assert_eq!(outcome["status"], "failed", "{outcome}");
    }

    // Dry runs first: if they published anything, it would be the first event seen.
    let (code, _, err) = operator(&["replay", "--dry-run"], &world.names).await;
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = operator(&["replay", "--event-id", &ids[0]], &world.names).await;
    assert_eq!(code, Some(0), "{err}");
    let (key, event) = next_audit(&mut world).await;
    assert_eq!(key, "operator.replay", "{event}");
    assert_eq!(event["count"], 1, "{event}");
    assert_eq!(event["event_ids"], json!([ids[0]]));
    assert_eq!(event["selection"], json!([format!("event_id={}", ids[0])]));
    assert_eq!(event["queue"], world.names.dead_letter_queue);
    assert_eq!(event["interrupted"], false);
    assert_operator(&event);

    let (code, _, err) = operator(&["dlq", "purge", "--event-id", &ids[1]], &world.names).await;
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = operator(
        &["dlq", "purge", "--yes", "--event-id", &ids[1]],
        &world.names,
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let (key, event) = next_audit(&mut world).await;
    assert_eq!(key, "operator.purge", "{event}");
    assert_eq!(event["count"], 1, "{event}");
    assert_eq!(event["event_ids"], json!([ids[1]]));
    assert_operator(&event);
}

/// `run --okta-sim` as a child process, its output collected.
struct SimService {
    child: std::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl SimService {
    fn spawn(mut command: Command) -> SimService {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let streams: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stderr.take().expect("stderr")),
            Box::new(child.stdout.take().expect("stdout")),
        ];
        for stream in streams {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().expect("log").push(line);
                }
            });
        }
        SimService { child, log }
    }

    async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self
                .log
                .lock()
                .expect("log")
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "the log never said {needle:?}: {:#?}",
                self.log.lock().expect("log")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn text(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }
}

impl Drop for SimService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn outcomes_against_the_fake_okta_say_so() {
    let names = TopologyNames::prefixed(&unique_prefix("op-sim"));
    let _cleanup = BrokerCleanup {
        names: names.clone(),
        extra_queues: vec![],
    };
    let (_conn, channel, mut outcomes) = observe(&names).await;
    let mut command = run_command(&names, AMQP_URL);
    command.args(["--okta-sim", "--okta-sim-listen", "127.0.0.1:0"]);
    let service = SimService::spawn(command);
    service.wait_for_log("consuming").await;
    let id = event_id("op-sim");
    let body = hire(&id, "E-SIM1", "sim1@example.com", &["Sales"]);
    publish_to(
        &channel,
        &names.input_exchange,
        "employee.added",
        body.to_string().as_bytes(),
        lapin::BasicProperties::default().with_content_type("application/json".into()),
    )
    .await;
    let outcome = loop {
        let delivery = tokio::time::timeout(PATIENCE, outcomes.next())
            .await
            .expect("an outcome in time")
            .expect("stream open")
            .expect("delivery");
        let outcome: Value = serde_json::from_slice(&delivery.data).expect("JSON");
        if outcome["source_event_id"] == id.as_str() && outcome["status"] != "retrying" {
            break outcome;
        }
    };
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["okta"], "simulated", "{outcome}");
}

#[tokio::test]
async fn run_with_the_fake_okta_refuses_a_remote_broker() {
    let names = TopologyNames::prefixed(&unique_prefix("op-sim-remote"));
    let mut command = run_command(
        &names,
        "amqps://svc:s3cret-pw@rabbitmq.prod.example.com:5671/%2f",
    );
    command.args(["--okta-sim", "--okta-sim-listen", "127.0.0.1:0"]);
    let output = tokio::task::spawn_blocking(move || command.output().expect("runs"))
        .await
        .expect("task");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: AMQP_URL:"), "{err}");
    assert!(last.contains("--okta-sim-allow-remote-broker"), "{err}");
    assert!(!err.contains("s3cret-pw"), "{err}");
}

#[tokio::test]
async fn okta_sim_listens_on_loopback_by_default_and_never_logs_its_token() {
    // The default address, as the help shows it (starting on it could collide with a
    // developer's running fake).
    let help = Command::new(BINARY)
        .args(["okta-sim", "--help"])
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("[default: 127.0.0.1:8081]"), "{help}");

    // A token given: used, never logged.
    let token = format!("00given-{:016x}", fastrand::u64(..));
    let mut command = Command::new(BINARY);
    command
        .args(["okta-sim", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("RUST_LOG", "trace")
        .env("OKTA_SIM_TOKEN", &token);
    let sim = SimService::spawn(command);
    let line = sim.wait_for_log("FAKE Okta").await;
    assert!(line.contains("http://127.0.0.1:"), "{line}");
    drop(sim_log_without(&sim, &token));

    // No token given: generated, written to an owner-only file, never logged.
    let mut command = Command::new(BINARY);
    command
        .args(["okta-sim", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("RUST_LOG", "trace");
    let sim = SimService::spawn(command);
    let line = sim.wait_for_log("token_file").await;
    let path = line
        .split("token_file=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the token file is named");
    let generated = std::fs::read_to_string(path).expect("token file");
    let generated = generated.trim();
    assert!(generated.len() >= 20, "a real token: {}", generated.len());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "readable by its owner only: {mode:o}");
    }
    sim.wait_for_log("FAKE Okta").await;
    drop(sim_log_without(&sim, generated));
    let _ = std::fs::remove_file(path);
}

fn sim_log_without(sim: &SimService, token: &str) -> String {
    let text = sim.text();
    assert!(!text.contains(token), "the token was logged: {text}");
    text
}
