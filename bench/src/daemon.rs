//! Figures 4 and 5: the daemon's footprint (idle and under churn) and its
//! latencies (allowlist write -> kernel, TTL expiry -> kernel).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use egress_core::status::Status;
use serde::{Deserialize, Serialize};
use testkit::{Dnsmasq, Netns, NsChild, TempDir};

use crate::util::{
    context_switches, cpu_time, daemon_status, host_records, kernel_has, ms, rss_kib, threads,
    wait_for, Bins, ConfigSpec,
};

const TABLE: &str = "bench_egress";

/// A daemon with its DNS server in a throwaway namespace.
struct Lab<'a> {
    ns: &'a Netns,
    dir: &'a TempDir,
    dns: Dnsmasq<'a>,
    daemon: Option<NsChild<'a>>,
    socket: PathBuf,
    allowlist: PathBuf,
}

impl<'a> Lab<'a> {
    /// dnsmasq answering `records` with `ttl`, and the daemon's files
    /// (allowlist `allow`); the daemon is not started yet.
    fn new(
        ns: &'a Netns,
        dir: &'a TempDir,
        records: &[(String, IpAddr)],
        ttl: u32,
        allow: &str,
        resolver_extra: &str,
    ) -> Lab<'a> {
        let refs: Vec<(&str, IpAddr)> = records.iter().map(|(h, a)| (h.as_str(), *a)).collect();
        let dns = Dnsmasq::start(ns, &[IpAddr::V4(Ipv4Addr::LOCALHOST)], ttl, &refs);
        let allowlist = dir.write("allowlist.conf", allow);
        let socket = dir.join("control.sock");
        dir.write(
            "egressd.toml",
            &ConfigSpec {
                allowlist: &allowlist,
                interface: "oc-bench0",
                table: TABLE,
                server: IpAddr::V4(Ipv4Addr::LOCALHOST),
                socket: Some(&socket),
                resolver_extra,
            }
            .text(),
        );
        Lab {
            ns,
            dir,
            dns,
            daemon: None,
            socket,
            allowlist,
        }
    }

    /// Starts the daemon; returns once `ready` holds for its status (or
    /// fails after `limit`), with the time it took.
    fn start(
        &mut self,
        bins: &Bins,
        limit: Duration,
        ready: impl Fn(&Status) -> bool,
    ) -> Result<Duration> {
        let conf = self.dir.join("egressd.toml");
        let log = self.dir.join("daemon.log");
        let t0 = Instant::now();
        let child = self.ns.spawn(
            [
                bins.daemon.as_os_str(),
                "--config".as_ref(),
                conf.as_os_str(),
                "--log-level".as_ref(),
                "warn".as_ref(),
            ],
            Some(&log),
        );
        self.daemon = Some(child);
        let ok = wait_for(limit, Duration::from_millis(20), || {
            daemon_status(&self.socket).is_ok_and(|s| ready(&s))
        });
        if ok.is_none() {
            bail!(
                "the daemon was not ready within {limit:?}; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(t0.elapsed())
    }

    fn pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, |d| d.pid())
    }

    /// Rewrites dnsmasq's records and makes it re-read them (SIGHUP),
    /// without waiting for them to be served.
    fn set_records_now(&self, records: &[(String, IpAddr)]) -> Result<()> {
        let text: String = records.iter().map(|(h, a)| format!("{a} {h}\n")).collect();
        let path = self.dns.hosts_file();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        // SAFETY: plain syscall; the pid is dnsmasq's, alive while `dns` is.
        let rc = unsafe { libc::kill(self.dns.pid() as libc::pid_t, libc::SIGHUP) };
        if rc != 0 {
            bail!("cannot signal dnsmasq: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// One measurement window of the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Window {
    /// Length (s).
    pub secs: f64,
    /// CPU time per minute (ms of CPU per minute of wall time).
    pub cpu_ms_per_min: f64,
    /// Context switches of all threads per minute.
    pub wakeups_per_min: f64,
    /// RSS at the end (KiB).
    pub rss_kib: u64,
}

fn window(pid: u32, len: Duration) -> Result<Window> {
    let (c0, w0, t0) = (cpu_time(pid)?, context_switches(pid)?, Instant::now());
    std::thread::sleep(len);
    let (c1, w1, t1) = (cpu_time(pid)?, context_switches(pid)?, Instant::now());
    let secs = (t1 - t0).as_secs_f64();
    Ok(Window {
        secs,
        cpu_ms_per_min: ms(c1 - c0) * 60.0 / secs,
        wakeups_per_min: (w1.saturating_sub(w0)) as f64 * 60.0 / secs,
        rss_kib: rss_kib(pid)?,
    })
}

/// The footprint with one number of hosts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FootprintResult {
    /// Hostnames.
    pub hosts: usize,
    /// TTL of the churn run (s).
    pub churn_ttl: u32,
    /// Start to every address in the kernel (ms), idle run.
    pub ready_ms: f64,
    /// Threads of the daemon.
    pub threads: usize,
    /// Idle windows (TTL 1 h: nothing is due).
    pub idle: Vec<Window>,
    /// Churn windows (short TTL, every record alternating between two
    /// addresses at each TTL).
    pub churn: Vec<Window>,
    /// Elements in the kernel at the end of the churn run.
    pub churn_elements: u64,
}

/// Runs figure 4 at `hosts`.
pub fn footprint(
    bins: &Bins,
    hosts: usize,
    windows: usize,
    idle_len: Duration,
    churn_len: Duration,
    churn_ttl: u32,
) -> Result<FootprintResult> {
    eprintln!(
        "footprint: {hosts} hosts, {windows} windows of {:.0} s idle, then of {:.0} s under churn",
        idle_len.as_secs_f64(),
        churn_len.as_secs_f64()
    );
    let records = host_records(hosts);
    let allow: String = records.iter().map(|(h, _)| format!("{h}:443\n")).collect();
    let mut res = FootprintResult {
        hosts,
        churn_ttl,
        ready_ms: 0.0,
        threads: 0,
        idle: Vec::new(),
        churn: Vec::new(),
        churn_elements: 0,
    };
    {
        let ns = Netns::new("fpi");
        let dir = TempDir::new("fpi");
        let mut lab = Lab::new(&ns, &dir, &records, 3600, &allow, "concurrency = 64");
        let ready = lab.start(bins, Duration::from_secs(120), |s| s.address_count == hosts)?;
        res.ready_ms = ms(ready);
        // Let the first batch's aftermath (allocator, monitor echo) settle.
        std::thread::sleep(Duration::from_secs(2));
        res.threads = threads(lab.pid())?;
        for _ in 0..windows {
            res.idle.push(window(lab.pid(), idle_len)?);
        }
    }
    {
        let ns = Netns::new("fpc");
        let dir = TempDir::new("fpc");
        let mut lab = Lab::new(&ns, &dir, &records, churn_ttl, &allow, "concurrency = 64");
        lab.start(bins, Duration::from_secs(120), |s| s.address_count >= hosts)?;
        let alt: Vec<(String, IpAddr)> = records
            .iter()
            .enumerate()
            .map(|(i, (h, _))| {
                (
                    h.clone(),
                    IpAddr::V4(Ipv4Addr::new(198, 19, (i / 250) as u8, (i % 250 + 1) as u8)),
                )
            })
            .collect();
        let stop = AtomicBool::new(false);
        let result = std::thread::scope(|s| -> Result<()> {
            let rotator = s.spawn(|| -> Result<()> {
                let mut flip = false;
                while !stop.load(Ordering::Relaxed) {
                    flip = !flip;
                    lab.set_records_now(if flip { &alt } else { &records })?;
                    // Sleep in small steps so the stop is quick.
                    let until = Instant::now() + Duration::from_secs(churn_ttl.into());
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                Ok(())
            });
            let measured = (|| -> Result<()> {
                // Two TTLs of churn first, so every host is rotating.
                std::thread::sleep(Duration::from_secs(2 * u64::from(churn_ttl) + 2));
                for _ in 0..windows {
                    res.churn.push(window(lab.pid(), churn_len)?);
                }
                res.churn_elements = daemon_status(&lab.socket)?.address_count as u64;
                Ok(())
            })();
            stop.store(true, Ordering::Relaxed);
            rotator
                .join()
                .map_err(|_| anyhow::anyhow!("rotator panicked"))??;
            measured
        });
        result?;
    }
    Ok(res)
}

/// Latency samples.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyResult {
    /// Allowlist write -> the new literal element in the kernel (ms).
    pub edit_ms: Vec<f64>,
    /// TTL expiry of the old answer -> the new address in the kernel (ms).
    pub ttl_ms: Vec<f64>,
    /// TTL of the rotating record (s).
    pub ttl_s: u32,
    /// Time of one kernel check (`nft list set`), the resolution of both (ms).
    pub poll_ms: f64,
}

/// Runs figure 5.
pub fn latency(bins: &Bins, samples: usize) -> Result<LatencyResult> {
    eprintln!("latency: {samples} samples each");
    const TTL: u32 = 2;
    let ns = Netns::new("lat");
    let dir = TempDir::new("lat");
    let rot = |i: usize| -> Vec<(String, IpAddr)> {
        vec![(
            "rot.test".to_string(),
            IpAddr::V4(Ipv4Addr::new(198, 18, 7, i as u8)),
        )]
    };
    let mut lab = Lab::new(
        &ns,
        &dir,
        &rot(1),
        TTL,
        "rot.test:443\n",
        "min_ttl = \"1s\"",
    );
    lab.start(bins, Duration::from_secs(30), |s| s.address_count >= 1)?;
    let has = |needle: &str| kernel_has(&ns, TABLE, "allow_v4", needle);
    if wait_for(Duration::from_secs(10), Duration::from_millis(10), || {
        has("198.18.7.1 ")
    })
    .is_none()
    {
        bail!("rot.test never reached the kernel");
    }
    let mut res = LatencyResult {
        edit_ms: Vec::new(),
        ttl_ms: Vec::new(),
        ttl_s: TTL,
        poll_ms: 0.0,
    };
    let t = Instant::now();
    for _ in 0..10 {
        has("nothing");
    }
    res.poll_ms = ms(t.elapsed()) / 10.0;

    for i in 1..=samples {
        let line = format!("198.18.8.{i}:443\n");
        let t0 = Instant::now();
        // An append, as `echo >> allowlist.conf` or an editor's save does.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&lab.allowlist)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()))
            .with_context(|| format!("appending to {}", lab.allowlist.display()))?;
        let needle = format!("198.18.8.{i} ");
        let t1 = wait_for(Duration::from_secs(10), Duration::ZERO, || has(&needle))
            .with_context(|| format!("198.18.8.{i} never reached the kernel"))?;
        res.edit_ms.push(ms(t1 - t0));
    }

    let mut i = 2;
    while res.ttl_ms.len() < samples {
        // When is the daemon's next query of rot.test due? The status says
        // it in ms; the request's midpoint is "now" for that figure.
        let a = Instant::now();
        let s = daemon_status(&lab.socket)?;
        let b = Instant::now();
        let due_in = s
            .entries
            .iter()
            .find(|e| e.host.as_deref() == Some("rot.test"))
            .and_then(|e| e.next_refresh_ms)
            .context("no next_refresh_ms for rot.test in the status")?;
        let expiry = a + (b - a) / 2 + Duration::from_millis(due_in);
        // The new record must be served before the query: skip this round
        // when it is too close.
        if due_in < 600 {
            std::thread::sleep(Duration::from_millis(due_in + 100));
            continue;
        }
        lab.set_records_now(&rot(i))?;
        let needle = format!("198.18.7.{i} ");
        let t1 = wait_for(
            Duration::from_secs(u64::from(TTL) * 3 + 5),
            Duration::ZERO,
            || has(&needle),
        )
        .with_context(|| format!("198.18.7.{i} never reached the kernel"))?;
        res.ttl_ms.push(ms(t1.saturating_duration_since(expiry)));
        i += 1;
    }
    Ok(res)
}
