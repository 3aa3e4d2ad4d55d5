//! The service under test, run as operators run it: the release binary as a child
//! process, configured by environment variables, pointed at the in-process fake Okta and
//! at one scenario's broker objects. A separate process makes its memory and CPU figures
//! its own, not the benchmark harness's.

use anyhow::{bail, Context, Result};
use iam_provisioner::amqp::topology::TopologyNames;
use iam_provisioner::okta_sim::OktaSim;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary Cargo built for this benchmark (same profile: release).
pub const BINARY: &str = env!("CARGO_BIN_EXE_iam-provisioner");

/// The group mapping every scenario uses: a hire in Engineering and Sales lands in three
/// Okta groups, all assigned by its one `createUser`.
pub const MAPPING: &str =
    r#"{"Engineering": ["Engineering-Core", "GitHub-Users"], "Sales": "Sales-App-Access"}"#;

/// The Okta groups [`MAPPING`] names; created in the fake before the service starts.
pub const GROUPS: [&str; 3] = ["Engineering-Core", "GitHub-Users", "Sales-App-Access"];

/// A running service. Dropping it kills the process.
pub struct ServiceProcess {
    child: Child,
    log_path: PathBuf,
}

impl ServiceProcess {
    /// Starts `iam-provisioner run` with the scenario's names, the fake's address and
    /// token, and `extra` variables (e.g. `CONCURRENCY`). Its log goes to `log_path`.
    pub fn spawn(
        names: &TopologyNames,
        sim: &OktaSim,
        extra: &[(&str, String)],
        log_path: &Path,
    ) -> Result<Self> {
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let log = File::create(log_path)
            .with_context(|| format!("creating the service log {}", log_path.display()))?;
        // `BENCH_SERVICE_WRAPPER="valgrind --tool=callgrind"` runs the service under a
        // profiler (its figures then describe the profiler, not the service).
        let wrapper = std::env::var("BENCH_SERVICE_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(BINARY);
                command
            }
            None => Command::new(BINARY),
        };
        command
            .arg("run")
            .env_clear()
            .env("AMQP_URL", crate::broker::AMQP_URL)
            .env("OKTA_ORG_URL", sim.base_url())
            .env("OKTA_API_TOKEN", sim.api_token())
            .env("GROUP_MAPPING", MAPPING)
            .env("INPUT_EXCHANGE", &names.input_exchange)
            .env("WORK_QUEUE", &names.work_queue)
            .env("RESULTS_EXCHANGE", &names.results_exchange)
            .env("DEAD_LETTER_EXCHANGE", &names.dead_letter_exchange)
            .env("DEAD_LETTER_QUEUE", &names.dead_letter_queue)
            .env("HTTP_LISTEN", "127.0.0.1:0")
            // Production's default log level: one line per event is part of the cost.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {BINARY}"))?;
        Ok(Self {
            child,
            log_path: log_path.to_owned(),
        })
    }

    /// The process id, for `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the service says it is consuming (start-up done, group cache warm).
    pub async fn wait_until_consuming(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            if log.contains("consuming") {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the service exited ({status}) before consuming; its log ({}):\n{log}",
                    self.log_path.display()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the service did not start consuming within {timeout:?}; see {}",
                    self.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit (killing it after 30 s).
    pub async fn stop(mut self) -> Result<ExitStatus> {
        let signalled = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("running kill")?;
        if !signalled.success() {
            bail!("could not signal the service");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("the service did not exit within 30 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        // After a clean `stop` this finds the process gone; otherwise it must not outlive
        // the benchmark.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
