//! The service binary run as a child process, as operators run it.

use super::{AMQP_URL, PATIENCE};
use iam_provisioner::amqp::topology::TopologyNames;
use iam_provisioner::okta_sim::OktaSim;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_iam-provisioner");

/// `iam-provisioner run` with a clean environment: the broker at `amqp_url`, the
/// topology `names`, health on a free port. Okta settings and the rest are the caller's.
pub fn run_command(names: &TopologyNames, amqp_url: &str) -> Command {
    let mut command = Command::new(BINARY);
    command
        .arg("run")
        .env_clear()
        .env("AMQP_URL", amqp_url)
        .env("INPUT_EXCHANGE", &names.input_exchange)
        .env("WORK_QUEUE", &names.work_queue)
        .env("RESULTS_EXCHANGE", &names.results_exchange)
        .env("DEAD_LETTER_EXCHANGE", &names.dead_letter_exchange)
        .env("DEAD_LETTER_QUEUE", &names.dead_letter_queue)
        .env("HTTP_LISTEN", "127.0.0.1:0");
    command
}

/// A service process whose standard error is collected line by line.
pub struct ServiceProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServiceProcess {
    pub fn spawn(names: &TopologyNames, sim: &OktaSim, extra: &[(&str, &str)]) -> Self {
        let (url, token) = (sim.base_url(), sim.api_token());
        let mut env = vec![
            ("OKTA_ORG_URL", url.as_str()),
            ("OKTA_API_TOKEN", token.as_str()),
        ];
        env.extend_from_slice(extra);
        Self::spawn_without_okta(names, &env)
    }

    /// Like [`ServiceProcess::spawn`], with no Okta settings of its own: `extra` gives
    /// them (an OAuth service app, say).
    pub fn spawn_without_okta(names: &TopologyNames, extra: &[(&str, &str)]) -> Self {
        let mut command = run_command(names, AMQP_URL);
        command
            .env("GROUP_MAPPING", r#"{"Sales": "Sales-App-Access"}"#)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in extra {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("service starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().expect("log").push(line);
                }
            });
        }
        Self { child, log }
    }

    pub async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if self
                .log
                .lock()
                .expect("log")
                .iter()
                .any(|l| l.contains(needle))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the log never said {needle:?}: {:#?}",
            self.log.lock().expect("log")
        );
    }

    /// Sends a signal by name (`HUP`, `TERM`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the service did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        // Let the reader threads catch the last lines.
        std::thread::sleep(Duration::from_millis(100));
        self.log.lock().expect("log").join("\n")
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
