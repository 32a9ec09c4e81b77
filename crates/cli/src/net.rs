//! The Docker network: which interface to filter, and `setup-network`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use egress_core::config::{check_interface, Config};
use egress_docker::{differences, lookup_once, Docker, Lookup, NetworkInfo, NetworkSpec};
use ipnet::IpNet;

/// Where the filtered interface came from.
pub enum Source {
    /// `[network] interface`.
    Config,
    /// The Docker network's bridge.
    Docker(NetworkInfo),
    /// Docker could not say (down, or no such network): the name the
    /// network's bridge gets from `setup-network`, with the reason.
    Fallback(String),
}

/// The interface to filter and where it came from.
pub struct Bridge {
    pub iface: String,
    pub source: Source,
}

/// A single-threaded runtime for the few Docker calls of one command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// How long a one-shot command waits for Docker to say where the network
/// is (connecting included).
pub const LOOKUP_LIMIT: Duration = Duration::from_secs(10);

/// Looks the Docker network up (unless `[network] interface` names the
/// interface). Never fails: when Docker cannot answer, the rules still go
/// on the interface name `setup-network` would give the bridge, and the
/// reason is returned for a warning.
pub fn find_bridge(config: &Config) -> Bridge {
    bridge_from(config, |name| match runtime() {
        Ok(rt) => rt.block_on(lookup_once(name, LOOKUP_LIMIT)),
        Err(e) => Lookup::Unreachable(format!("{e:#}")),
    })
}

/// [`find_bridge`] with Docker asked through `lookup`, which is called only
/// when the config does not name the interface (so a command that already
/// holds a Docker client asks through it).
pub fn bridge_from(config: &Config, lookup: impl FnOnce(&str) -> Lookup) -> Bridge {
    if let Some(i) = &config.network.interface {
        return Bridge {
            iface: i.clone(),
            source: Source::Config,
        };
    }
    let name = &config.network.docker;
    let fallback = |why: String| Bridge {
        iface: config.network.interface_name(),
        source: Source::Fallback(why),
    };
    match lookup(name) {
        Lookup::Found(info) => Bridge {
            iface: info.bridge.clone(),
            source: Source::Docker(info),
        },
        Lookup::Missing => fallback(format!(
            "Docker has no network {name:?} (create it with `openclaw-egress setup-network`)"
        )),
        Lookup::Unreachable(why) => fallback(why),
    }
}

impl Bridge {
    /// Prints a warning when the interface is a guess.
    pub fn warn(&self) {
        if let Source::Fallback(why) = &self.source {
            eprintln!(
                "openclaw-egress: warning: {why}; filtering interface {:?} by name",
                self.iface
            );
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Config => format!("interface {} ([network] interface)", self.iface),
            Source::Docker(n) => format!("interface {} (Docker network {})", self.iface, n.name),
            Source::Fallback(_) => format!("interface {} (not confirmed by Docker)", self.iface),
        }
    }
}

/// `openclaw-egress setup-network`.
pub fn setup_network(
    config: &Config,
    bridge: Option<String>,
    subnet: Option<String>,
) -> Result<ExitCode> {
    let name = config.network.docker.clone();
    let bridge = bridge.unwrap_or_else(|| config.network.interface_name());
    check_interface(&bridge)
        .map_err(|e| anyhow::anyhow!(e.replace("network.interface", "--bridge")))?;
    let subnet: Option<IpNet> = subnet
        .map(|s| {
            s.parse::<IpNet>()
                .map(|n| n.trunc())
                .with_context(|| format!("--subnet {s:?} is not a CIDR such as 172.30.0.0/24"))
        })
        .transpose()?;
    let spec = NetworkSpec {
        name: name.clone(),
        bridge,
        subnet,
    };
    let rt = runtime()?;
    rt.block_on(async {
        let d = Docker::connect().await?;
        match d.network(&name).await? {
            Some(info) => {
                let diffs = differences(&info, &spec);
                if diffs.is_empty() {
                    println!(
                        "network {name}: exists as expected (bridge {}, subnets {})",
                        info.bridge,
                        join(&info.subnets)
                    );
                    Ok(ExitCode::SUCCESS)
                } else {
                    println!(
                        "network {name}: exists, but differs from what setup-network creates:"
                    );
                    for d in diffs {
                        println!("  - {d}");
                    }
                    println!(
                        "the firewall follows its bridge ({}) as it is; to change it, remove the \
                         network (docker network rm {name}) and run setup-network again",
                        info.bridge
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
            None => {
                let info = d.create_network(&spec).await?;
                println!(
                    "network {name}: created (bridge {}, subnets {}, IPv6 off)",
                    info.bridge,
                    join(&info.subnets)
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn join(nets: &[IpNet]) -> String {
    if nets.is_empty() {
        return "none".into();
    }
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
