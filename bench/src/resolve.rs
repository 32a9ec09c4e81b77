//! Figure 3: resolving N hostnames against a local dnsmasq: our concurrent
//! resolver (egress_resolve, A and AAAA, at most `concurrency` queries in
//! flight) against the scripts' sequential `dig` loop (one process per
//! name, A only).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use egress_core::allowlist::parse_host;
use egress_core::config::ResolverConfig;
use egress_resolve::{Outcome, Resolver, ResolverSettings};
use serde::{Deserialize, Serialize};
use testkit::{Dnsmasq, Netns, TempDir};

use crate::util::{host_records, ms, timed};

/// Samples of one size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveResult {
    /// Hostnames.
    pub hosts: usize,
    /// Queries in flight at most (ours).
    pub concurrency: usize,
    /// Ours: every host, A and AAAA (ms).
    pub ours_ms: Vec<f64>,
    /// The scripts' `dig` loop, A only (ms).
    pub dig_ms: Vec<f64>,
}

/// The `[resolver]` defaults the daemon and the CLI use, but `concurrency`.
fn settings(server: IpAddr, concurrency: usize) -> ResolverSettings {
    let mut s = ResolverSettings::from_config(
        &ResolverConfig::default(),
        vec![SocketAddr::new(server, 53)],
    );
    s.concurrency = concurrency;
    s
}

fn ours_once(ns: &Netns, hosts: &[egress_core::HostName], concurrency: usize) -> Result<f64> {
    let server = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (took, answered) = ns.run(|| -> Result<(Duration, usize)> {
        // Like the CLI: a two-worker runtime; its threads start in this
        // (namespaced) thread and so live in the namespace.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let resolver = Resolver::new(settings(server, concurrency))?;
        let t0 = Instant::now();
        let results = rt.block_on(resolver.resolve_all(hosts));
        let took = t0.elapsed();
        let answered = results
            .iter()
            .filter(|r| matches!(r.v4, Outcome::Answer { .. }))
            .count();
        Ok((took, answered))
    })?;
    if answered != hosts.len() {
        bail!("only {answered} of {} hosts resolved", hosts.len());
    }
    Ok(ms(took))
}

/// Runs figure 3 for each size; `dig_runs(n)` says how many runs of the
/// (slow) dig loop to make at size `n`.
pub fn run(
    sizes: &[usize],
    runs: usize,
    dig_runs: impl Fn(usize) -> usize,
    concurrency: usize,
) -> Result<Vec<ResolveResult>> {
    let dig = std::process::Command::new("dig").arg("-v").output();
    if !dig.is_ok_and(|o| o.status.success()) {
        bail!("`dig` is missing: install dnsutils (bench/run does)");
    }
    let mut out = Vec::new();
    for &n in sizes {
        let dig_n = dig_runs(n);
        eprintln!("resolve: {n} hosts, {runs} runs (dig: {dig_n})");
        let ns = Netns::new("res");
        let dir = TempDir::new("res");
        let records = host_records(n);
        let refs: Vec<(&str, IpAddr)> = records.iter().map(|(h, a)| (h.as_str(), *a)).collect();
        let _dns = Dnsmasq::start(&ns, &[IpAddr::V4(Ipv4Addr::LOCALHOST)], 3600, &refs);
        let hosts = records
            .iter()
            .map(|(h, _)| parse_host(h).map_err(|e| anyhow::anyhow!("{h}: {e}")))
            .collect::<Result<Vec<_>>>()?;
        let list: String = records.iter().map(|(h, _)| format!("{h}\n")).collect();
        let list = dir.write("hosts.txt", &list);
        let answers = dir.join("answers.txt");
        // The scripts' loop: one dig per name, in order.
        let script = format!(
            "while read -r h; do dig +short A \"$h\" @127.0.0.1 || exit 1; done < {} > {}",
            list.display(),
            answers.display()
        );
        let mut res = ResolveResult {
            hosts: n,
            concurrency,
            ours_ms: Vec::new(),
            dig_ms: Vec::new(),
        };
        for r in 0..runs.max(dig_n) {
            if r < runs {
                res.ours_ms.push(ours_once(&ns, &hosts, concurrency)?);
            }
            if r < dig_n {
                let (t, _) = timed(&ns, &["bash", "-c", &script])?;
                let got = std::fs::read_to_string(&answers)
                    .with_context(|| format!("reading {}", answers.display()))?
                    .lines()
                    .count();
                if got != n {
                    bail!("the dig loop got {got} answers for {n} hosts");
                }
                res.dig_ms.push(ms(t));
            }
        }
        out.push(res);
    }
    Ok(out)
}
