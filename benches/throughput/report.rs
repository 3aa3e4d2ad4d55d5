//! Turning measurements into the table of issue 7 (each figure beside its target, met
//! or missed by how much) and describing the machine they were taken on.

use serde::Serialize;
use std::process::Command;

/// One line of the results table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub item: String,
    pub measured: String,
    pub target: String,
    /// `met`, `missed: …`, `—` (no target) or `not run`.
    pub verdict: String,
}

impl Row {
    pub fn new(item: &str, measured: String, target: &str, verdict: String) -> Self {
        Self {
            item: item.to_owned(),
            measured,
            target: target.to_owned(),
            verdict,
        }
    }
}

/// `met` when `ok`, else `missed: <how>`.
pub fn verdict(ok: bool, how: impl FnOnce() -> String) -> String {
    if ok {
        "met".to_owned()
    } else {
        format!("missed: {}", how())
    }
}

/// The table as aligned plain text (it is also valid Markdown).
pub fn table(rows: &[Row]) -> String {
    let headers = ["item", "measured", "target", "verdict"];
    let cells: Vec<[&str; 4]> = rows
        .iter()
        .map(|r| [r.item.as_str(), &r.measured, &r.target, &r.verdict])
        .collect();
    let mut widths = headers.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cols: [&str; 4]| {
        let padded: Vec<String> = cols
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(headers);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    for row in cells {
        out.push_str(&line(row));
    }
    out
}

/// What the figures were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub rabbitmq: String,
    pub rustc: String,
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl Machine {
    /// Asks `/proc/cpuinfo`, `nproc`, `/proc/meminfo`, `uname`, `rabbitmqctl` and `rustc`.
    pub fn describe() -> Self {
        let unknown = || "unknown".to_owned();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(unknown);
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map(|kib| kib / 1024.0 / 1024.0)
            .unwrap_or_default();
        Self {
            cpu_model,
            cpus: command_output("nproc", &[])
                .and_then(|n| n.parse().ok())
                .unwrap_or_default(),
            memory_gib,
            kernel: command_output("uname", &["-sr"]).unwrap_or_else(unknown),
            rabbitmq: command_output("rabbitmqctl", &["version"]).unwrap_or_else(unknown),
            rustc: command_output("rustc", &["--version"]).unwrap_or_else(unknown),
        }
    }
}

/// The 1-, 5- and 15-minute load averages: figures taken while other work shares the
/// machine's cores are lower than the service can do, and say so.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}
