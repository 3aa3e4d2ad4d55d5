//! What the publish-failure, consumer-timeout and alarm tests ask of the broker's
//! operator tool: policies scoped to one test's names, queue counts with the
//! unacknowledged ones (a passive declare counts only the ready), broker settings changed
//! and put back, and reading one sample of `/metrics`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;

/// Runs `rabbitmqctl` and returns its standard output; fails the test if it fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A policy pattern that matches exactly `name`.
pub fn exactly(name: &str) -> String {
    let mut pattern = String::from("^");
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() && c != '-' && c != '_' {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('$');
    pattern
}

/// A queue policy that the broker applies until it is lifted or dropped.
pub struct Policy {
    name: String,
    lifted: bool,
}

impl Policy {
    /// Sets `definition` (JSON) on the queues matching `pattern`, above any other policy,
    /// and waits until the broker shows it on `queue`.
    pub fn set(name: &str, pattern: &str, definition: &str, queue: &str) -> Policy {
        rabbitmqctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            "--priority",
            "900",
            name,
            pattern,
            definition,
        ]);
        let policy = Policy {
            name: name.to_owned(),
            lifted: false,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while queue_field(queue, "policy").as_deref() != Some(name) {
            assert!(
                std::time::Instant::now() < deadline,
                "policy {name} never applied to {queue}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        policy
    }

    /// Lifts the policy now.
    pub fn lift(mut self) {
        rabbitmqctl(&["clear_policy", &self.name]);
        self.lifted = true;
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        if !self.lifted {
            let _ = Command::new("rabbitmqctl")
                .args(["clear_policy", &self.name])
                .output();
        }
    }
}

/// One column of `rabbitmqctl list_queues` for `queue`.
pub fn queue_field(queue: &str, field: &str) -> Option<String> {
    let listing = rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name", field]);
    listing.lines().find_map(|line| {
        let mut columns = line.split('\t');
        (columns.next() == Some(queue)).then(|| columns.next().unwrap_or("").trim().to_owned())
    })
}

/// (ready, unacknowledged) messages of `queue`, as the broker counts them.
pub fn queue_counts(queue: &str) -> (u64, u64) {
    let listing = rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ]);
    for line in listing.lines() {
        let columns: Vec<&str> = line.split('\t').collect();
        if columns.first() == Some(&queue) && columns.len() == 3 {
            let number = |s: &str| s.trim().parse::<u64>().expect("a count");
            return (number(columns[1]), number(columns[2]));
        }
    }
    panic!("queue {queue} not listed")
}

/// A `rabbit` application setting, put back to what it was when dropped.
pub struct BrokerSetting {
    key: &'static str,
    original: String,
}

impl BrokerSetting {
    /// Reads `key` and sets it to `value` (an Erlang term).
    pub fn set(key: &'static str, value: &str) -> BrokerSetting {
        let original = read_setting(key);
        eval(&format!("application:set_env(rabbit, {key}, {value})."));
        BrokerSetting { key, original }
    }

    /// Puts the original value back now (also done on drop).
    pub fn restore(&self) {
        eval(&format!(
            "application:set_env(rabbit, {}, {}).",
            self.key, self.original
        ));
    }
}

impl Drop for BrokerSetting {
    fn drop(&mut self) {
        self.restore();
    }
}

/// The value of a `rabbit` application setting, as an Erlang term.
pub fn read_setting(key: &str) -> String {
    let answer = eval(&format!("application:get_env(rabbit, {key})."));
    let answer = answer.trim();
    answer
        .strip_prefix("{ok,")
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or_else(|| panic!("setting {key} is unset: {answer}"))
        .to_owned()
}

fn eval(expression: &str) -> String {
    rabbitmqctl(&["eval", expression])
}

/// The value of one sample on `/metrics` (0 when absent); `selector` is the sample as
/// written, e.g. `iam_provisioner_events_succeeded_total{event_type="employee.added"}`.
pub async fn metric(http: SocketAddr, selector: &str) -> f64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("body");
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(selector)?;
            rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
        .unwrap_or(0.0)
}

/// The `/readyz` answer: (status, body).
pub async fn readyz(http: SocketAddr) -> (u16, String) {
    let response = reqwest::get(format!("http://{http}/readyz"))
        .await
        .expect("/readyz answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}
