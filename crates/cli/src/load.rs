//! Config + allowlist + one-shot DNS -> the desired ruleset.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use egress_core::allowlist::Allowlist;
use egress_core::config::{Config, DEFAULT_CONFIG_PATH};
use egress_core::policy::{self, AddressAnswer, Answers, Refusal};
use egress_core::ruleset::Ruleset;
use egress_core::{Diagnostic, Entry, HostName, Target};
use egress_resolve::{HostResult, Outcome, Resolver, ResolverSettings};

/// Config and allowlist, validated.
pub struct Loaded {
    pub config: Config,
    pub config_path: PathBuf,
    pub allowlist: Allowlist,
    pub warnings: Vec<Diagnostic>,
}

impl Loaded {
    pub fn entries(&self) -> Vec<Entry> {
        self.allowlist
            .unique_entries()
            .into_iter()
            .map(|l| l.entry.clone())
            .collect()
    }

    pub fn hosts(&self) -> Vec<HostName> {
        let mut hosts: Vec<HostName> = self
            .entries()
            .into_iter()
            .filter_map(|e| match e.target {
                Target::Host(h) => Some(h),
                Target::Net(_) => None,
            })
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

/// Errors that carry their own `PATH:LINE:COL` lines; printed as they are.
#[derive(Debug)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

/// Reads and validates the config alone (enough for `flush`, which must
/// work while the allowlist is broken).
pub fn load_config(config_path: Option<&Path>) -> Result<(PathBuf, Config)> {
    let (path, text) = match config_path {
        Some(p) => (
            p.to_path_buf(),
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config {}", p.display()))?,
        ),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG_PATH);
            match std::fs::read_to_string(&p) {
                Ok(t) => (p, t),
                // Every key has a default, so a missing default config is
                // an empty one; an explicit --config must exist.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (p, String::new()),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot read config {}", p.display()))
                }
            }
        }
    };
    let config = Config::parse(&path, &text).map_err(|d| Invalid(d.to_string()))?;
    Ok((path, config))
}

/// Reads and validates the config and the allowlist.
pub fn load(config_path: Option<&Path>) -> Result<Loaded> {
    let (path, config) = load_config(config_path)?;
    let bytes = std::fs::read(&config.allowlist)
        .with_context(|| format!("cannot read allowlist {}", config.allowlist.display()))?;
    let shown = config.allowlist.display().to_string();
    let parsed = Allowlist::parse_bytes(&shown, &bytes).map_err(|d| Invalid(d.to_string()))?;
    Ok(Loaded {
        config,
        config_path: path,
        allowlist: parsed.allowlist,
        warnings: parsed.warnings,
    })
}

/// The DNS servers to ask: the config's, or /etc/resolv.conf's.
pub fn resolver_servers(config: &Config) -> Result<Vec<std::net::SocketAddr>> {
    match &config.resolver.servers {
        Some(s) => Ok(s.clone()),
        None => Ok(egress_resolve::system_servers()?),
    }
}

/// Per-host result of the one-shot resolution.
pub struct Resolution {
    pub answers: Answers,
    pub results: Vec<HostResult>,
    /// Hosts for which some query failed (timeout, SERVFAIL, ...), or that
    /// have no address at all: they are closed or partly closed.
    pub failed: Vec<(HostName, String)>,
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Answer { addrs, .. } => format!("{} address(es)", addrs.len()),
        Outcome::NoData => "no records".into(),
        Outcome::NxDomain => "NXDOMAIN".into(),
        Outcome::Failed { reason, detail } => format!("{reason} ({detail})"),
    }
}

/// Resolves every hostname once (A and AAAA, concurrently, bounded).
pub fn resolve(config: &Config, hosts: &[HostName]) -> Result<Resolution> {
    let mut res = Resolution {
        answers: Answers::new(),
        results: Vec::new(),
        failed: Vec::new(),
    };
    if hosts.is_empty() {
        return Ok(res);
    }
    let r = &config.resolver;
    let settings = ResolverSettings {
        servers: resolver_servers(config)?,
        timeout: r.timeout,
        attempts: r.attempts,
        concurrency: r.concurrency,
        max_addresses: r.max_addresses,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let results = rt.block_on(async {
        let resolver = Resolver::new(settings)?;
        Ok::<_, anyhow::Error>(resolver.resolve_all(hosts).await)
    })?;
    for hr in &results {
        let mut list = Vec::new();
        for o in [&hr.v4, &hr.v6] {
            if let Outcome::Answer { addrs, ttl, .. } = o {
                let ttl = (*ttl).clamp(r.min_ttl, r.max_ttl);
                for a in addrs {
                    list.push(AddressAnswer {
                        addr: *a,
                        lifetime: ttl + r.grace,
                    });
                }
            }
        }
        let any_failed =
            matches!(hr.v4, Outcome::Failed { .. }) || matches!(hr.v6, Outcome::Failed { .. });
        if any_failed || list.is_empty() {
            res.failed.push((
                hr.host.clone(),
                format!("A: {}; AAAA: {}", describe(&hr.v4), describe(&hr.v6)),
            ));
        }
        if !list.is_empty() {
            res.answers.insert(hr.host.clone(), list);
        }
    }
    res.results = results;
    Ok(res)
}

/// Everything a command needs to talk about the desired state.
pub struct Desired {
    pub ruleset: Ruleset,
    pub refused: Vec<Refusal>,
    pub resolution: Resolution,
    pub dns_allow: Vec<IpAddr>,
    pub resolve_time: Duration,
}

pub fn desired(loaded: &Loaded) -> Result<Desired> {
    let config = &loaded.config;
    let t0 = std::time::Instant::now();
    let resolution = resolve(config, &loaded.hosts())?;
    let resolve_time = t0.elapsed();
    let dns_allow = match &config.dns.allow {
        Some(a) => a.clone(),
        None => config.effective_dns_allow(&resolver_servers(config).unwrap_or_default()),
    };
    let outcome = policy::desired_elements(
        &loaded.entries(),
        &resolution.answers,
        &dns_allow,
        &config.firewall.allow_private,
    );
    let layout = policy::layout(config, vec![config.network.interface_name()]);
    if layout.interfaces.iter().any(|i| i.is_empty()) {
        return Err(anyhow!("no interface name to filter"));
    }
    Ok(Desired {
        ruleset: Ruleset {
            layout,
            elements: outcome.elements,
        },
        refused: outcome.refused,
        resolution,
        dns_allow,
        resolve_time,
    })
}
