//! What the kernel knows about a process: resident memory (`/proc/<pid>/status`) and CPU
//! time (`/proc/<pid>/stat`). Read from `/proc` rather than sampled by a library so the
//! figures are exactly what `ps`/`top` would show an operator, and so the service's
//! numbers are its own (it runs as a separate process).

use anyhow::{anyhow, Context, Result};
use std::process::Command;
use std::time::{Duration, Instant};

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the highest resident size the process ever had.
    pub peak_kib: u64,
}

/// Reads `VmRSS` and `VmHWM`.
pub fn memory(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/status has no {name}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// User plus system CPU time of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: Option<u32>) -> Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may contain spaces; the fixed fields follow its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("{path} is not in the expected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let number = |index: usize| -> Result<u64> {
        fields
            .get(index)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("{path}: field {} missing", index + 3))
    };
    Ok(number(11)? + number(12)?)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
pub fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// The RabbitMQ node's Erlang VM on this machine, found by its command name.
pub fn broker_pid() -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        (comm.trim() == "beam.smp").then_some(pid)
    })
}

/// CPU used by the three parties of a scenario, measured between `start` and `stop`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuShare {
    /// Cores used on average (1.0 = one core busy for the whole interval).
    pub service: Option<f64>,
    pub broker: Option<f64>,
    /// This benchmark process: fake Okta, publisher, outcome consumer (and, for the
    /// broker ceiling, the raw loop itself).
    pub harness: Option<f64>,
}

/// Snapshots of CPU time, to turn into a [`CpuShare`].
pub struct CpuMeter {
    started: Instant,
    service: Option<(u32, u64)>,
    broker: Option<(u32, u64)>,
    harness: Option<u64>,
    ticks_per_second: f64,
}

impl CpuMeter {
    /// Starts measuring; `service` is the service's pid when it runs as a child.
    pub fn start(service: Option<u32>) -> Self {
        let snapshot = |pid: u32| cpu_ticks(Some(pid)).ok().map(|t| (pid, t));
        Self {
            started: Instant::now(),
            service: service.and_then(snapshot),
            broker: broker_pid().and_then(snapshot),
            harness: cpu_ticks(None).ok(),
            ticks_per_second: ticks_per_second(),
        }
    }

    /// CPU used since [`CpuMeter::start`].
    pub fn stop(&self) -> CpuShare {
        self.share(self.started.elapsed())
    }

    fn share(&self, elapsed: Duration) -> CpuShare {
        let seconds = elapsed.as_secs_f64().max(1e-3);
        let cores = |before: u64, after: u64| {
            after.saturating_sub(before) as f64 / self.ticks_per_second / seconds
        };
        let of = |snapshot: Option<(u32, u64)>| {
            snapshot.and_then(|(pid, before)| cpu_ticks(Some(pid)).ok().map(|a| cores(before, a)))
        };
        CpuShare {
            service: of(self.service),
            broker: of(self.broker),
            harness: self
                .harness
                .and_then(|before| cpu_ticks(None).ok().map(|a| cores(before, a))),
        }
    }
}
