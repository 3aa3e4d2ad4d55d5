//! Broker policies a test applies to its own queues only, and the operator commands run
//! as the binary.

use super::AMQP_URL;
use iam_provisioner::amqp::topology::TopologyNames;
use std::process::{Command, Output};

/// A policy on exactly one of the test's queues (the pattern is the escaped, anchored
/// name, so no other test's queue matches), cleared when dropped, even on failure.
pub struct ScopedPolicy {
    name: String,
}

impl ScopedPolicy {
    /// Applies `definition` (JSON) to `queue`.
    pub fn apply(queue: &str, definition: &str) -> Self {
        let name = format!("{queue}-policy");
        let pattern = format!("^{}$", regex_escape(queue));
        let output = Command::new("rabbitmqctl")
            .args([
                "set_policy",
                &name,
                &pattern,
                definition,
                "--apply-to",
                "queues",
                "--priority",
                "100",
            ])
            .output()
            .expect("rabbitmqctl runs");
        assert!(output.status.success(), "{output:?}");
        ScopedPolicy { name }
    }
}

impl Drop for ScopedPolicy {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["clear_policy", &self.name])
            .output();
    }
}

fn regex_escape(text: &str) -> String {
    let mut escaped = String::new();
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() && c != '-' && c != '_' {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Runs an operator command (`dlq …`, `replay …`, `held …`) configured for `names` and
/// nothing else, off the test's runtime.
pub async fn operator_command(names: &TopologyNames, args: &[&str]) -> Output {
    let mut command = Command::new(super::process::BINARY);
    command
        .args(args)
        .env_clear()
        .env("AMQP_URL", AMQP_URL)
        .env("INPUT_EXCHANGE", &names.input_exchange)
        .env("WORK_QUEUE", &names.work_queue)
        .env("RESULTS_EXCHANGE", &names.results_exchange)
        .env("DEAD_LETTER_EXCHANGE", &names.dead_letter_exchange)
        .env("DEAD_LETTER_QUEUE", &names.dead_letter_queue);
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .expect("the binary's task")
}

/// Waits until `queue` holds `expected` ready messages. Messages an operator command took
/// and did not acknowledge return to the queue when its connection is gone, which the
/// broker finishes a moment after the process exited.
pub async fn depth_settles(world: &super::World, queue: &str, expected: u32, what: &str) {
    super::eventually(what, || async {
        world.queue_depth(queue).await == expected
    })
    .await;
}
