//! Helpers shared by the figures: timed commands inside a namespace, the
//! config files, the synthetic allowlists, the daemon's control socket and
//! /proc readings.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use egress_core::status::{Request, Status};
use testkit::Netns;

/// Where the release binaries under test are.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `openclaw-egress`.
    pub cli: PathBuf,
    /// `openclaw-egressd`.
    pub daemon: PathBuf,
}

impl Bins {
    /// The binaries in `dir`; an error naming the missing one.
    pub fn in_dir(dir: &Path) -> Result<Bins> {
        let b = Bins {
            cli: dir.join("openclaw-egress"),
            daemon: dir.join("openclaw-egressd"),
        };
        for p in [&b.cli, &b.daemon] {
            if !p.is_file() {
                bail!(
                    "{} is missing; build it first (`cargo build --release -p openclaw-egress -p openclaw-egressd`, as bench/run does)",
                    p.display()
                );
            }
        }
        Ok(b)
    }
}

/// Runs `args` inside `ns` (forked from a thread that entered it, so no
/// `ip netns exec` overhead is timed) and returns its wall time and output.
/// Fails unless it exits 0.
pub fn timed(ns: &Netns, args: &[&str]) -> Result<(Duration, Output)> {
    let (took, out) = ns.run(|| {
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..]).stdin(Stdio::null());
        let t0 = Instant::now();
        let out = cmd.output();
        (t0.elapsed(), out)
    });
    let out = out.with_context(|| format!("cannot run {args:?} in {}", ns.name()))?;
    if !out.status.success() {
        let tail = |b: &[u8]| {
            // The last 2,000 characters: a failing loop repeats itself.
            let s = String::from_utf8_lossy(b);
            let n = s.chars().count().saturating_sub(2000);
            s.chars().skip(n).collect::<String>()
        };
        bail!(
            "{args:?} in {} failed ({}):\n{}{}",
            ns.name(),
            out.status,
            tail(&out.stdout),
            tail(&out.stderr)
        );
    }
    Ok((took, out))
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `i`-th of a run of distinct IPv4 addresses starting after `base`
/// (so `base` itself, often a network address, is never used).
pub fn nth_addr(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + 1 + i as u32)
}

/// Addresses for synthetic allowlists: 198.18.0.1 onwards (198.18.0.0/15
/// holds 131,070 of them).
pub const FILL_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);

/// What goes into an `egressd.toml` for a benchmark.
pub struct ConfigSpec<'a> {
    /// The allowlist file.
    pub allowlist: &'a Path,
    /// The filtered interface.
    pub interface: &'a str,
    /// The nft table.
    pub table: &'a str,
    /// The DNS server the resolver asks.
    pub server: IpAddr,
    /// The control socket (daemon only).
    pub socket: Option<&'a Path>,
    /// Extra `[resolver]` lines (e.g. `min_ttl = "1s"`).
    pub resolver_extra: &'a str,
}

impl ConfigSpec<'_> {
    /// The file's text. Hostnames resolve into 198.18.0.0/15, a special
    /// range, so it is listed in `allow_private`.
    pub fn text(&self) -> String {
        let mut s = format!(
            "allowlist = \"{}\"\n[network]\ninterface = \"{}\"\n[resolver]\nservers = [\"{}\"]\n{}\n[dns]\nallow = []\n[firewall]\ntable = \"{}\"\nallow_private = [\"198.18.0.0/15\"]\n",
            self.allowlist.display(),
            self.interface,
            std::net::SocketAddr::new(self.server, 53),
            self.resolver_extra,
            self.table,
        );
        if let Some(sock) = self.socket {
            s.push_str(&format!("[control]\nsocket = \"{}\"\n", sock.display()));
        }
        s
    }
}

/// `h00000.test` ... for `n` hosts, each with one address in 198.18.0.0/15
/// (as the old footprint script laid them out).
pub fn host_records(n: usize) -> Vec<(String, IpAddr)> {
    (0..n)
        .map(|i| {
            (
                format!("h{i:05}.test"),
                IpAddr::V4(Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8)),
            )
        })
        .collect()
}

/// Asks the daemon's control socket for its status. A daemon busy with a
/// long batch answers late, so the wait is generous.
pub fn daemon_status(socket: &Path) -> Result<Status> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = serde_json::to_string(&Request::Status)?;
    req.push('\n');
    s.write_all(req.as_bytes())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .with_context(|| format!("no status answer on {}", socket.display()))?;
    let v: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("bad status answer from {}", socket.display()))?;
    if let Some(e) = v.get("error") {
        bail!("the daemon answered an error: {e}");
    }
    serde_json::from_value(v)
        .with_context(|| format!("unexpected status answer from {}", socket.display()))
}

/// CPU time (user + system, all threads, dead ones included) of `pid`.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: field 3 is the
    // first one after ") ".
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 here.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis(ticks * 1000 / hz))
}

/// Context switches (voluntary + involuntary) of all live threads of `pid`:
/// each one is a wake-up or a preemption.
pub fn context_switches(pid: u32) -> Result<u64> {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(t?.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if line.contains("ctxt_switches:") {
                total += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Ok(total)
}

/// Threads of `pid`.
pub fn threads(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/task"))?.count())
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// Whether the element text `needle` (e.g. `"198.18.8.1 "`) is in `set` of
/// `table`, asked with `nft list set` (a few ms per call).
pub fn kernel_has(ns: &Netns, table: &str, set: &str, needle: &str) -> bool {
    let out = ns.run(|| {
        Command::new("nft")
            .args(["list", "set", "inet", table, set])
            .stdin(Stdio::null())
            .output()
    });
    matches!(out, Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).contains(needle))
}

/// Polls `ok` every `every` until it holds or `limit` passes; returns the
/// time it first held (measured right after the successful check).
pub fn wait_for(limit: Duration, every: Duration, mut ok: impl FnMut() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        if ok() {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_addr_skips_the_base() {
        assert_eq!(nth_addr(FILL_BASE, 0), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(nth_addr(FILL_BASE, 255), Ipv4Addr::new(198, 18, 1, 0));
        assert_eq!(nth_addr(FILL_BASE, 49_999), Ipv4Addr::new(198, 18, 195, 80));
    }

    #[test]
    fn host_records_are_distinct() {
        let r = host_records(10_000);
        let mut addrs: Vec<_> = r.iter().map(|(_, a)| *a).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 10_000);
        assert_eq!(r[9_999].0, "h09999.test");
    }
}
