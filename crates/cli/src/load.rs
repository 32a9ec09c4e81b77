//! Config + allowlist + one-shot DNS -> the desired ruleset.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use egress_core::allowlist::Allowlist;
use egress_core::config::{Config, DEFAULT_CONFIG_PATH};
use egress_core::inputs::Inputs;
use egress_core::policy::{Answers, Refusal};
use egress_core::ruleset::Ruleset;
use egress_core::schedule::{Family, ScheduleConfig, Scheduler};
use egress_core::{Diagnostic, HostName};
use egress_resolve::{Outcome, Resolver, ResolverSettings};

/// Config and allowlist, validated, with what follows from them.
pub struct Loaded {
    pub inputs: Inputs,
    pub config_path: PathBuf,
    pub warnings: Vec<Diagnostic>,
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

/// Reads and validates the config and the allowlist, and finds the DNS
/// servers (the config's, or /etc/resolv.conf's).
pub fn load(config_path: Option<&Path>) -> Result<Loaded> {
    let (path, config) = load_config(config_path)?;
    let bytes = std::fs::read(&config.allowlist)
        .with_context(|| format!("cannot read allowlist {}", config.allowlist.display()))?;
    let shown = config.allowlist.display().to_string();
    let parsed = Allowlist::parse_bytes(&shown, &bytes).map_err(|d| Invalid(d.to_string()))?;
    let servers = egress_resolve::configured_servers(&config.resolver)?;
    Ok(Loaded {
        inputs: Inputs::new(config, parsed.allowlist, servers),
        config_path: path,
        warnings: parsed.warnings,
    })
}

/// Per-host result of the one-shot resolution.
pub struct Resolution {
    pub answers: Answers,
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

/// Resolves every hostname once (A and AAAA, concurrently, bounded). The
/// answers go through the daemon's scheduler, so a one-shot apply gives
/// addresses exactly the lifetimes the daemon would (TTL clamped, plus
/// grace, capped).
pub fn resolve(inputs: &Inputs) -> Result<Resolution> {
    let mut res = Resolution {
        answers: Answers::new(),
        failed: Vec::new(),
    };
    if inputs.hosts.is_empty() {
        return Ok(res);
    }
    let settings = ResolverSettings::from_config(&inputs.config.resolver, inputs.servers.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let results = rt.block_on(async {
        let resolver = Resolver::new(settings)?;
        Ok::<_, anyhow::Error>(resolver.resolve_all(&inputs.hosts).await)
    })?;
    let now = Instant::now();
    let mut sched = Scheduler::new(ScheduleConfig::from_resolver(&inputs.config.resolver));
    sched.set_hosts(inputs.hosts.iter().cloned(), now);
    for hr in results {
        let any_failed =
            matches!(hr.v4, Outcome::Failed { .. }) || matches!(hr.v6, Outcome::Failed { .. });
        let no_addrs = hr.v4.addrs().is_empty() && hr.v6.addrs().is_empty();
        if any_failed || no_addrs {
            res.failed.push((
                hr.host.clone(),
                format!("A: {}; AAAA: {}", describe(&hr.v4), describe(&hr.v6)),
            ));
        }
        sched.record(&hr.host, Family::V4, hr.v4.into_query(), now);
        sched.record(&hr.host, Family::V6, hr.v6.into_query(), now);
    }
    res.answers = sched.answers(now);
    Ok(res)
}

/// Everything a command needs to talk about the desired state.
pub struct Desired {
    pub ruleset: Ruleset,
    pub refused: Vec<Refusal>,
    pub resolution: Resolution,
    pub dns_allow: Vec<IpAddr>,
    pub resolve_time: Duration,
    pub bridge: crate::net::Bridge,
}

pub fn desired(loaded: &Loaded) -> Result<Desired> {
    let inputs = &loaded.inputs;
    let t0 = Instant::now();
    let resolution = resolve(inputs)?;
    let resolve_time = t0.elapsed();
    let outcome = inputs.desired_elements(&resolution.answers);
    let bridge = crate::net::find_bridge(&inputs.config);
    bridge.warn();
    let layout = inputs.layout(bridge.iface.clone());
    Ok(Desired {
        ruleset: Ruleset {
            layout,
            elements: outcome.elements,
        },
        refused: outcome.refused,
        resolution,
        dns_allow: inputs.dns_allow.clone(),
        resolve_time,
        bridge,
    })
}
