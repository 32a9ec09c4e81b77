//! What the figures were measured on.

use std::process::Command;

use serde::{Deserialize, Serialize};

/// The machine and the software under the measurement.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Memory (GiB).
    pub mem_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// Distribution.
    pub os: String,
    /// `nft --version`.
    pub nft: String,
    /// libnftnl package version.
    pub libnftnl: String,
    /// dnsmasq version.
    pub dnsmasq: String,
    /// 1-minute load average when the run started and when it ended.
    pub load_start: Option<f64>,
    /// See `load_start`.
    pub load_end: Option<f64>,
    /// When the run started (UTC, `date -u`).
    pub date: String,
    /// Commit of the measured tree.
    pub commit: String,
}

fn cmd(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The 1-minute load average.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
}

/// Describes this machine.
pub fn describe() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpu,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: cmd(&["uname", "-r"]),
        os,
        nft: cmd(&["nft", "--version"]),
        libnftnl: cmd(&["dpkg-query", "-W", "-f", "${Version}", "libnftnl11"]),
        dnsmasq: cmd(&["dnsmasq", "--version"])
            .lines()
            .next()
            .unwrap_or("unknown")
            .to_string(),
        load_start: loadavg(),
        load_end: None,
        date: cmd(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
        commit: cmd(&["git", "rev-parse", "--short", "HEAD"]),
    }
}
