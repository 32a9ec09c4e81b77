//! `openclaw-egress verify`: probes from inside the agents' network.
//!
//! The probes run in the network namespace of a short-lived container on
//! the Docker network (the agent's own view: its address, its routes, its
//! resolv.conf), or, when no image can be used, of a temporary namespace
//! plugged into the bridge with a veth pair. A second container (or
//! namespace) is the peer for the container-to-container probe. Everything
//! started here is removed before the command returns, also on errors.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use egress_core::config::Config;
use egress_core::verify::{self, judge, Verdict};
use egress_docker::{ContainerSpec, Docker, Lookup};
use ipnet::IpNet;
use serde_json::json;

use crate::load::Loaded;
use crate::net::{runtime, Bridge, Source, LOOKUP_LIMIT};
use crate::probe::{self, Site};

/// Where the probes run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum From {
    /// A container when the image can be used, else a namespace.
    Auto,
    /// A container (error when it cannot be started).
    Container,
    /// A temporary namespace on the bridge.
    Netns,
}

impl std::str::FromStr for From {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<From> {
        match s {
            "auto" => Ok(From::Auto),
            "container" => Ok(From::Container),
            "netns" => Ok(From::Netns),
            _ => bail!("--from {s:?}: expected auto, container or netns"),
        }
    }
}

/// The bridge's IPv4/IPv6 networks and the host's addresses on it, read
/// from the interface itself (so it works without Docker too).
fn bridge_addrs(iface: &str) -> Result<Vec<IpNet>> {
    let out = Command::new("ip")
        .args(["-j", "addr", "show", "dev", iface])
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "interface {iface} not found on this host ({}); is the Docker network created \
             (openclaw-egress setup-network) and is its bridge here (not inside a VM such as \
             Docker Desktop)?",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing `ip -j addr`")?;
    let mut nets = Vec::new();
    for info in v[0]["addr_info"].as_array().into_iter().flatten() {
        let (Some(local), Some(len)) = (info["local"].as_str(), info["prefixlen"].as_u64()) else {
            continue;
        };
        if info["scope"].as_str() == Some("link") {
            continue;
        }
        if let Ok(ip) = local.parse::<IpAddr>() {
            if let Ok(n) = IpNet::new(ip, len as u8) {
                nets.push(n);
            }
        }
    }
    Ok(nets)
}

/// One `verify` run's runtime and Docker client (connected once, when
/// first needed), and what it started, removed at the end whatever
/// happens.
struct Session {
    rt: tokio::runtime::Runtime,
    docker: Option<Result<Docker, String>>,
    containers: Vec<String>,
    netns: Vec<String>,
    links: Vec<String>,
}

impl Session {
    fn new() -> Result<Session> {
        Ok(Session {
            rt: runtime()?,
            docker: None,
            containers: Vec::new(),
            netns: Vec::new(),
            links: Vec::new(),
        })
    }

    /// The Docker client, connecting on first use.
    fn docker(&mut self) -> Result<Docker> {
        let rt = &self.rt;
        self.docker
            .get_or_insert_with(|| rt.block_on(Docker::connect()).map_err(|e| e.to_string()))
            .clone()
            .map_err(anyhow::Error::msg)
    }

    /// What Docker says about the network `name`, through the session's
    /// client (as `egress_docker::lookup_once` would, without a second
    /// connection).
    fn lookup(&mut self, name: &str) -> Lookup {
        let d = match self.docker() {
            Ok(d) => d,
            Err(e) => return Lookup::Unreachable(e.to_string()),
        };
        // The timer must be made inside the runtime.
        self.rt
            .block_on(async { tokio::time::timeout(LOOKUP_LIMIT, d.lookup(name)).await })
            .unwrap_or_else(|_| Lookup::Unreachable(format!("no answer within {LOOKUP_LIMIT:?}")))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(Ok(d)) = &self.docker {
            for c in &self.containers {
                if let Err(e) = self.rt.block_on(d.remove_container(c)) {
                    eprintln!("openclaw-egress: warning: cannot remove container {c}: {e}");
                }
            }
        }
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
        for n in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn ip_ok(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip`")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Host addresses for temporary namespaces: from the top of the bridge's
/// IPv4 subnet down (Docker hands addresses out from the bottom), skipping
/// the gateway.
fn spare_addresses(net: &IpNet, n: usize, taken: &[IpAddr]) -> Vec<IpAddr> {
    let IpNet::V4(v4) = net else {
        return Vec::new();
    };
    let top = u32::from(v4.broadcast());
    let base = u32::from(v4.network());
    (1..)
        .map(|i| top.saturating_sub(i))
        .take_while(|a| *a > base)
        .map(|a| IpAddr::from(std::net::Ipv4Addr::from(a)))
        .filter(|a| !taken.contains(a))
        .take(n)
        .collect()
}

/// A namespace named `name` plugged into `bridge` with `addr`.
fn make_netns(
    session: &mut Session,
    name: &str,
    bridge: &str,
    net: &IpNet,
    addr: IpAddr,
    gw: IpAddr,
) -> Result<()> {
    ip_ok(&["netns", "add", name])?;
    session.netns.push(name.to_owned());
    let host_end = format!("ocv{}", &name[name.len().saturating_sub(8)..]);
    ip_ok(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", name,
    ])?;
    session.links.push(host_end.clone());
    ip_ok(&["link", "set", &host_end, "master", bridge, "up"])?;
    let cidr = format!("{addr}/{}", net.prefix_len());
    ip_ok(&["-n", name, "addr", "add", &cidr, "dev", "eth0"])?;
    ip_ok(&["-n", name, "link", "set", "eth0", "up"])?;
    ip_ok(&["-n", name, "link", "set", "lo", "up"])?;
    ip_ok(&[
        "-n",
        name,
        "route",
        "add",
        "default",
        "via",
        &gw.to_string(),
    ])?;
    Ok(())
}

/// The probe site, its peer address, and what runs it.
struct Sites {
    site: Site,
    peer: Option<IpAddr>,
    how: String,
}

fn container_sites(config: &Config, session: &mut Session, dns: &[IpAddr]) -> Result<Sites> {
    let d = session.docker()?;
    let containers = &mut session.containers;
    session.rt.block_on(async {
        d.ensure_image(&config.verify.image).await?;
        let base = format!("openclaw-egress-verify-{}", std::process::id());
        let spec = |suffix: &str| ContainerSpec {
            name: format!("{base}-{suffix}"),
            image: config.verify.image.clone(),
            network: config.network.docker.clone(),
            dns: dns.to_vec(),
            cmd: vec!["sleep".into(), "300".into()],
        };
        let prober = spec("probe");
        containers.push(prober.name.clone());
        let started = d.start_container(&prober).await?;
        let pid = started
            .pid
            .with_context(|| format!("container {} exited at once", prober.name))?;
        let peer = spec("peer");
        containers.push(peer.name.clone());
        let peer_ip = d.start_container(&peer).await?.ip;
        let resolv = PathBuf::from(format!("/proc/{pid}/root/etc/resolv.conf"));
        let resolvers = std::fs::read_to_string(&resolv)
            .map(|t| egress_resolve::parse_resolv_conf(&t))
            .unwrap_or_default();
        Ok::<_, anyhow::Error>(Sites {
            site: Site {
                netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
                resolvers,
            },
            peer: peer_ip,
            how: format!("container {} (image {})", prober.name, config.verify.image),
        })
    })
}

fn netns_sites(
    bridge: &str,
    nets: &[IpNet],
    session: &mut Session,
    dns: &[IpAddr],
) -> Result<Sites> {
    let v4 = nets
        .iter()
        .find(|n| n.addr().is_ipv4())
        .with_context(|| format!("bridge {bridge} has no IPv4 address to route through"))?;
    let gw = v4.addr();
    let spare = spare_addresses(&v4.trunc(), 2, &[gw]);
    if spare.len() < 2 {
        bail!("no spare address in {v4} for the probe namespaces");
    }
    let base = format!("ocv-{}", std::process::id());
    let prober = format!("{base}-a");
    let peer = format!("{base}-b");
    make_netns(session, &prober, bridge, v4, spare[0], gw)?;
    make_netns(session, &peer, bridge, v4, spare[1], gw)?;
    Ok(Sites {
        site: Site {
            netns: PathBuf::from(format!("/run/netns/{prober}")),
            resolvers: dns.iter().map(|a| SocketAddr::new(*a, 53)).collect(),
        },
        peer: Some(spare[1]),
        how: format!(
            "network namespace {prober} ({}) on bridge {bridge}",
            spare[0]
        ),
    })
}

/// Published ports of containers on other networks (at most a few).
fn published(
    session: &mut Session,
    bridge: &Bridge,
    config: &Config,
) -> Vec<(String, SocketAddr, u16)> {
    if matches!(bridge.source, Source::Fallback(_)) {
        return Vec::new();
    }
    let Ok(d) = session.docker() else {
        return Vec::new();
    };
    let found = session
        .rt
        .block_on(d.published_elsewhere(&config.network.docker))
        .ok();
    let mut out = Vec::new();
    for p in found.unwrap_or_default() {
        if p.proto != "tcp" {
            continue;
        }
        if let Some((_, ip)) = p.addresses.iter().find(|(_, ip)| ip.is_ipv4()) {
            out.push((
                p.container.clone(),
                SocketAddr::new(*ip, p.private_port),
                p.public_port,
            ));
        }
        if out.len() == 4 {
            break;
        }
    }
    out
}

/// Runs `verify`.
pub fn run(loaded: &Loaded, from: From, json: bool, timeout: Duration) -> Result<ExitCode> {
    if !cfg!(target_os = "linux") {
        // Before anything is started: the probes need a network namespace.
        anyhow::bail!(
            "verify is Linux-only: its probes run inside the agent's network namespace; on macOS see docs/macos.md for checking by hand"
        );
    }
    let config = &loaded.inputs.config;
    // One runtime and one Docker connection for the whole run: the bridge
    // lookup, the probe containers and the published ports.
    let mut session = Session::new()?;
    let bridge = crate::net::bridge_from(config, |name| session.lookup(name));
    bridge.warn();
    let nets = bridge_addrs(&bridge.iface)?;
    let gateways: Vec<IpAddr> = nets.iter().map(|n| n.addr()).collect();
    let dns = loaded.inputs.dns_allow.clone();
    let sites = match from {
        From::Netns => netns_sites(&bridge.iface, &nets, &mut session, &dns)?,
        From::Container => container_sites(config, &mut session, &dns)?,
        From::Auto => match container_sites(config, &mut session, &dns) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("openclaw-egress: note: no probe container ({e:#}); probing from a network namespace instead");
                netns_sites(&bridge.iface, &nets, &mut session, &dns)?
            }
        },
    };
    let published = published(&mut session, &bridge, config);
    let ipv6 = match &bridge.source {
        Source::Docker(n) => n.ipv6,
        _ => nets.iter().any(|n| n.addr().is_ipv6()),
    };
    let ctx = verify::Context {
        entries: &loaded.inputs.entries,
        dns_allow: &dns,
        action: config.firewall.action,
        intra: config.network.intra,
        host_ports: &config.network.host_ports,
        gateways: &gateways,
        ipv6,
        unlisted: config.verify.unlisted,
        peer: sites.peer,
        published: &published,
    };
    let probes = verify::plan(&ctx);
    let seen = probe::run(&sites.site, &probes, config, timeout)?;
    drop(session);
    let verdicts: Vec<Verdict> = probes
        .into_iter()
        .zip(seen)
        .map(|(p, s)| judge(p, s, config.firewall.action))
        .collect();
    let failed = verdicts.iter().filter(|v| !v.ok).count();
    if json {
        let v = json!({
            "ok": failed == 0,
            "interface": bridge.iface,
            "interface_source": bridge.describe(),
            "probed_from": sites.how,
            "failed": failed,
            "probes": verdicts,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "probing from {}; filtering {}",
            sites.how,
            bridge.describe()
        );
        for v in &verdicts {
            let mark = if v.ok { "ok  " } else { "FAIL" };
            let expect = match v.probe.expect {
                verify::Expect::Reach => "reach",
                verify::Expect::Blocked => "block",
            };
            println!(
                "{mark} {expect:<5} {:<64} {}",
                format!("{} -> {}", v.probe.what, v.probe.dest),
                v.result.describe()
            );
            if let Some(n) = &v.note {
                println!("           {n}");
            }
        }
        println!(
            "{} probes, {} as expected, {failed} not",
            verdicts.len(),
            verdicts.len() - failed
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_addresses_come_from_the_top_and_skip_what_is_taken() {
        let net: IpNet = "172.30.0.0/24".parse().unwrap();
        let taken: Vec<IpAddr> = vec!["172.30.0.253".parse().unwrap()];
        let got = spare_addresses(&net, 2, &taken);
        assert_eq!(
            got,
            vec![
                "172.30.0.254".parse::<IpAddr>().unwrap(),
                "172.30.0.252".parse().unwrap()
            ]
        );
        let tiny: IpNet = "10.0.0.0/30".parse().unwrap();
        assert_eq!(spare_addresses(&tiny, 5, &[]).len(), 2);
        let v6: IpNet = "2001:db8::/64".parse().unwrap();
        assert!(spare_addresses(&v6, 1, &[]).is_empty());
    }
}
