//! The Docker edge: find the bridge interface of the agents' network, follow
//! it through Docker events, create it (`setup-network`), and start the
//! probe containers of `verify`.
//!
//! Everything that can be decided without Docker (which interface a network
//! has, how an existing network differs from what `setup-network` would
//! create) is a pure function here and unit-tested; the rest is a thin
//! layer over bollard.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, EventMessage, HostConfig, Ipam, IpamConfig, NetworkCreateRequest,
    NetworkInspect,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, InspectNetworkOptions,
    ListContainersOptions, RemoveContainerOptions,
};
use futures::{Stream, TryStreamExt};
use ipnet::IpNet;

/// The network option that names a bridge network's interface.
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// Time limit of one Docker API call (not of an event stream, which stays
/// open: bollard applies the limit to the response head only).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong talking to Docker.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The daemon's socket cannot be reached (not running, no permission).
    #[error("cannot reach the Docker daemon ({endpoint}): {source}")]
    Unreachable {
        /// DOCKER_HOST or the default socket.
        endpoint: String,
        /// The client's error.
        source: bollard::errors::Error,
    },
    /// An API call failed.
    #[error("Docker API: {call}: {source}")]
    Api {
        /// What was asked, e.g. `inspect network openclaw-egress`.
        call: String,
        /// The client's error.
        source: bollard::errors::Error,
    },
    /// The network exists but cannot be used.
    #[error("Docker network {name:?}: {why}")]
    BadNetwork {
        /// Network name.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// The probe image is neither present nor pullable.
    #[error("image {image:?} is not present and cannot be pulled ({why}); load it with `docker load`/`docker import`, or set [verify] image")]
    NoImage {
        /// The image reference.
        image: String,
        /// Why the pull failed.
        why: String,
    },
    /// A probe container did not finish in time.
    #[error("probe container {name} did not finish within {after:?}")]
    ProbeTimeout {
        /// Container name.
        name: String,
        /// The limit.
        after: Duration,
    },
}

type Result<T, E = DockerError> = std::result::Result<T, E>;

/// A Docker network as the firewall needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    /// Network name.
    pub name: String,
    /// Network id (64 hex digits).
    pub id: String,
    /// Driver (`bridge` for the networks this project filters).
    pub driver: String,
    /// The bridge interface on the host.
    pub bridge: String,
    /// The `com.docker.network.bridge.name` option, when set.
    pub bridge_option: Option<String>,
    /// IPv6 enabled.
    pub ipv6: bool,
    /// `--internal` network (no route out at all).
    pub internal: bool,
    /// Subnets of the network.
    pub subnets: Vec<IpNet>,
    /// Gateway addresses (the host's addresses on the bridge).
    pub gateways: Vec<IpAddr>,
}

/// The interface of a bridge network: its `com.docker.network.bridge.name`
/// option, else `br-` and the first 12 characters of its id (what Docker's
/// bridge driver names it).
pub fn bridge_of(id: &str, options: &HashMap<String, String>) -> String {
    match options.get(BRIDGE_NAME_OPTION) {
        Some(name) if !name.is_empty() => name.clone(),
        _ => format!("br-{}", id.get(..12).unwrap_or(id)),
    }
}

impl NetworkInfo {
    /// Builds the view from Docker's answer; errors when it is not a bridge
    /// network with an id.
    pub fn from_inspect(n: &NetworkInspect) -> Result<NetworkInfo> {
        let name = n.name.clone().unwrap_or_default();
        let id = n.id.clone().unwrap_or_default();
        let driver = n.driver.clone().unwrap_or_default();
        if id.is_empty() {
            return Err(DockerError::BadNetwork {
                name,
                why: "Docker returned no id".into(),
            });
        }
        let options = n.options.clone().unwrap_or_default();
        let mut subnets = Vec::new();
        let mut gateways = Vec::new();
        for c in n
            .ipam
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .into_iter()
            .flatten()
        {
            if let Some(s) = c.subnet.as_deref().and_then(|s| s.parse().ok()) {
                subnets.push(s);
            }
            if let Some(g) = c.gateway.as_deref().and_then(|g| g.parse().ok()) {
                gateways.push(g);
            }
        }
        Ok(NetworkInfo {
            bridge: bridge_of(&id, &options),
            bridge_option: options.get(BRIDGE_NAME_OPTION).cloned(),
            name,
            id,
            driver,
            ipv6: n.enable_ipv6.unwrap_or(false),
            internal: n.internal.unwrap_or(false),
            subnets,
            gateways,
        })
    }
}

/// What `setup-network` creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// Network name.
    pub name: String,
    /// Bridge interface name.
    pub bridge: String,
    /// Subnet, when one is asked for.
    pub subnet: Option<IpNet>,
}

/// How an existing network differs from `spec`, one line per difference
/// (empty: it is what `setup-network` would have created).
pub fn differences(info: &NetworkInfo, spec: &NetworkSpec) -> Vec<String> {
    let mut out = Vec::new();
    if info.driver != "bridge" {
        out.push(format!(
            "driver is {:?}, expected \"bridge\" (only a bridge on this host can be filtered)",
            info.driver
        ));
    }
    if info.ipv6 {
        out.push(
            "IPv6 is enabled; expected off (the firewall filters IPv6 too, but the scripts' \
             network had it off and agents gain nothing from it)"
                .into(),
        );
    }
    match &info.bridge_option {
        Some(b) if *b == spec.bridge => {}
        Some(b) => out.push(format!(
            "bridge interface is {b:?} ({BRIDGE_NAME_OPTION}), expected {:?}",
            spec.bridge
        )),
        None => out.push(format!(
            "bridge interface is {:?} (no {BRIDGE_NAME_OPTION} option), expected {:?}",
            info.bridge, spec.bridge
        )),
    }
    if let Some(want) = spec.subnet {
        if !info.subnets.contains(&want) {
            let have: Vec<String> = info.subnets.iter().map(|s| s.to_string()).collect();
            out.push(format!(
                "subnets are [{}], expected {want}",
                have.join(", ")
            ));
        }
    }
    if info.internal {
        out.push("the network is --internal (containers cannot reach allowlisted hosts)".into());
    }
    out
}

/// What Docker says about a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The network exists with this bridge.
    Found(NetworkInfo),
    /// Docker answers, but has no such network (removed, not created yet).
    Missing,
    /// Docker cannot be reached, or did not answer, with why.
    Unreachable(String),
}

/// Connects and looks the network up, all within `limit` (for a start-up
/// or a one-shot command that must not hang on Docker).
pub async fn lookup_once(name: &str, limit: Duration) -> Lookup {
    let asked = tokio::time::timeout(limit, async {
        match Docker::connect().await {
            Ok(d) => d.lookup(name).await,
            Err(e) => Lookup::Unreachable(e.to_string()),
        }
    })
    .await;
    asked.unwrap_or_else(|_| Lookup::Unreachable(format!("no answer within {limit:?}")))
}

/// What happened to the followed network, from Docker's event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkEvent {
    /// The network was created (again): look it up.
    Created,
    /// The network was removed.
    Destroyed,
}

/// A published port of a container (for `verify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Container name.
    pub container: String,
    /// The container's addresses on its networks, with the network names.
    pub addresses: Vec<(String, IpAddr)>,
    /// Port inside the container.
    pub private_port: u16,
    /// Port published on the host.
    pub public_port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
}

/// A started container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// Its address on the network it was started on.
    pub ip: Option<IpAddr>,
    /// Its main process on the host (0 or missing when it already exited).
    pub pid: Option<u32>,
}

/// A short-lived container to run.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Container name (unique).
    pub name: String,
    /// Image.
    pub image: String,
    /// Network to attach it to.
    pub network: String,
    /// DNS servers for its resolv.conf (empty: Docker's default).
    pub dns: Vec<IpAddr>,
    /// Command (argv).
    pub cmd: Vec<String>,
}

/// A Docker client.
#[derive(Clone)]
pub struct Docker {
    api: bollard::Docker,
}

impl Docker {
    /// Connects (DOCKER_HOST or the local socket) and agrees on an API
    /// version, so an older daemon (20.10 speaks 1.41) is understood.
    pub async fn connect() -> Result<Docker> {
        let endpoint = std::env::var("DOCKER_HOST")
            .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
        let unreachable = |source| DockerError::Unreachable {
            endpoint: endpoint.clone(),
            source,
        };
        let api = bollard::Docker::connect_with_local_defaults()
            .map_err(unreachable)?
            .with_timeout(CALL_TIMEOUT);
        let api = api.negotiate_version().await.map_err(unreachable)?;
        Ok(Docker { api })
    }

    /// Maps a client error to [`DockerError::Api`] naming the call.
    fn api_err(call: impl Into<String>) -> impl FnMut(bollard::errors::Error) -> DockerError {
        let call = call.into();
        move |source| DockerError::Api {
            call: call.clone(),
            source,
        }
    }

    /// The network called `name`; `None` when there is none.
    pub async fn network(&self, name: &str) -> Result<Option<NetworkInfo>> {
        match self
            .api
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(n) => {
                // Docker also matches an id prefix; only the name counts here.
                if n.name.as_deref() != Some(name) {
                    return Ok(None);
                }
                NetworkInfo::from_inspect(&n).map(Some)
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(Self::api_err(format!("inspect network {name}"))(e)),
        }
    }

    /// What Docker says about the network called `name`, as a [`Lookup`].
    pub async fn lookup(&self, name: &str) -> Lookup {
        match self.network(name).await {
            Ok(Some(info)) => Lookup::Found(info),
            Ok(None) => Lookup::Missing,
            Err(e) => Lookup::Unreachable(e.to_string()),
        }
    }

    /// Creates the network of `spec`: bridge driver, IPv6 off, the bridge
    /// interface named.
    pub async fn create_network(&self, spec: &NetworkSpec) -> Result<NetworkInfo> {
        let mut options = HashMap::new();
        options.insert(BRIDGE_NAME_OPTION.to_owned(), spec.bridge.clone());
        let ipam = spec.subnet.map(|s| Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some(s.to_string()),
                ..Default::default()
            }]),
            options: None,
        });
        let mut labels = HashMap::new();
        labels.insert("ai.openclaw.egress".to_owned(), "agents".to_owned());
        self.api
            .create_network(NetworkCreateRequest {
                name: spec.name.clone(),
                driver: Some("bridge".into()),
                enable_ipv6: Some(false),
                ipam,
                options: Some(options),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(Self::api_err(format!("create network {}", spec.name)))?;
        self.network(&spec.name)
            .await?
            .ok_or_else(|| DockerError::BadNetwork {
                name: spec.name.clone(),
                why: "created, but not found right after".into(),
            })
    }

    /// Create and destroy events of the network called `name`. The stream
    /// ends (or yields an error) when Docker goes away; the caller
    /// reconnects and looks the network up again.
    pub fn network_events(&self, name: &str) -> impl Stream<Item = Result<NetworkEvent>> + 'static {
        let mut filters = HashMap::new();
        filters.insert("type".to_owned(), vec!["network".to_owned()]);
        filters.insert(
            "event".to_owned(),
            vec!["create".to_owned(), "destroy".to_owned()],
        );
        let name = name.to_owned();
        let call = format!("events of network {name}");
        self.api
            .events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .map_err(Self::api_err(call))
            .try_filter_map(move |ev| {
                let out = event_for(&ev, &name);
                async move { Ok(out) }
            })
    }

    /// Published ports of running containers that are not on `network`.
    pub async fn published_elsewhere(&self, network: &str) -> Result<Vec<Published>> {
        let list = self
            .api
            .list_containers(None::<ListContainersOptions>)
            .await
            .map_err(Self::api_err("list containers"))?;
        let mut out = Vec::new();
        for c in list {
            let nets = c
                .network_settings
                .as_ref()
                .and_then(|s| s.networks.as_ref())
                .cloned()
                .unwrap_or_default();
            if nets.contains_key(network) {
                continue;
            }
            let addresses: Vec<(String, IpAddr)> = nets
                .iter()
                .filter_map(|(n, e)| {
                    let ip = e.ip_address.as_deref()?.parse().ok()?;
                    Some((n.clone(), ip))
                })
                .collect();
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_default();
            for p in c.ports.iter().flatten() {
                let Some(public) = p.public_port else {
                    continue;
                };
                // One entry per port (Docker lists 0.0.0.0 and :: apart).
                if out
                    .iter()
                    .any(|o: &Published| o.container == name && o.public_port == public)
                {
                    continue;
                }
                out.push(Published {
                    container: name.clone(),
                    addresses: addresses.clone(),
                    private_port: p.private_port,
                    public_port: public,
                    proto: p.typ.map(|t| t.to_string()).unwrap_or_else(|| "tcp".into()),
                });
            }
        }
        Ok(out)
    }

    /// Makes sure `image` is there: present, or pulled now.
    pub async fn ensure_image(&self, image: &str) -> Result<()> {
        if self.api.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let pulled = tokio::time::timeout(
            Duration::from_secs(60),
            self.api
                .create_image(
                    Some(CreateImageOptions {
                        from_image: Some(image.to_owned()),
                        ..Default::default()
                    }),
                    None,
                    None,
                )
                .try_collect::<Vec<_>>(),
        )
        .await;
        match pulled {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(DockerError::NoImage {
                image: image.to_owned(),
                why: e.to_string(),
            }),
            Err(_) => Err(DockerError::NoImage {
                image: image.to_owned(),
                why: "the pull did not finish within 60s".into(),
            }),
        }
    }

    /// Starts a container that stays up (`cmd` should not exit) and returns
    /// its address on `spec.network` and its main process (whose network
    /// namespace the probes join). Remove it with
    /// [`Docker::remove_container`].
    pub async fn start_container(&self, spec: &ContainerSpec) -> Result<Started> {
        self.create_and_start(spec).await?;
        let c = self
            .api
            .inspect_container(&spec.name, None)
            .await
            .map_err(Self::api_err(format!("inspect container {}", spec.name)))?;
        let pid = c
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .map(|p| p as u32);
        let ip = c
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|n| n.get(&spec.network).cloned())
            .and_then(|e| e.ip_address)
            .and_then(|ip| ip.parse().ok());
        Ok(Started { ip, pid })
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<()> {
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.cmd.clone()),
            host_config: Some(HostConfig {
                network_mode: Some(spec.network.clone()),
                dns: (!spec.dns.is_empty())
                    .then(|| spec.dns.iter().map(|d| d.to_string()).collect()),
                ..Default::default()
            }),
            labels: Some(HashMap::from([(
                "ai.openclaw.egress".to_owned(),
                "probe".to_owned(),
            )])),
            ..Default::default()
        };
        self.api
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(spec.name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(Self::api_err(format!("create container {}", spec.name)))?;
        if let Err(e) = self.api.start_container(&spec.name, None).await {
            let _ = self.remove_container(&spec.name).await;
            return Err(Self::api_err(format!("start container {}", spec.name))(e));
        }
        Ok(())
    }

    /// Removes a container, running or not.
    pub async fn remove_container(&self, name: &str) -> Result<()> {
        self.api
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(Self::api_err(format!("remove container {name}")))
    }
}

/// The event of `msg` for the network called `name`, if it is one.
fn event_for(msg: &EventMessage, name: &str) -> Option<NetworkEvent> {
    let actor_name = msg
        .actor
        .as_ref()
        .and_then(|a| a.attributes.as_ref())
        .and_then(|a| a.get("name"));
    if actor_name.map(String::as_str) != Some(name) {
        return None;
    }
    match msg.action.as_deref() {
        Some("create") => Some(NetworkEvent::Created),
        Some("destroy") => Some(NetworkEvent::Destroyed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    fn info() -> NetworkInfo {
        NetworkInfo {
            name: "openclaw-egress".into(),
            id: "0123456789abcdef0123".into(),
            driver: "bridge".into(),
            bridge: "openclaw-egress".into(),
            bridge_option: Some("openclaw-egress".into()),
            ipv6: false,
            internal: false,
            subnets: vec!["172.30.0.0/24".parse().unwrap()],
            gateways: vec!["172.30.0.1".parse().unwrap()],
        }
    }

    fn spec() -> NetworkSpec {
        NetworkSpec {
            name: "openclaw-egress".into(),
            bridge: "openclaw-egress".into(),
            subnet: None,
        }
    }

    #[test]
    fn the_bridge_is_the_option_else_br_and_twelve_characters_of_the_id() {
        let mut o = HashMap::new();
        assert_eq!(bridge_of("0123456789abcdef", &o), "br-0123456789ab");
        assert_eq!(bridge_of("abc", &o), "br-abc");
        o.insert(BRIDGE_NAME_OPTION.to_owned(), String::new());
        assert_eq!(bridge_of("0123456789abcdef", &o), "br-0123456789ab");
        o.insert(BRIDGE_NAME_OPTION.to_owned(), "claws0".to_owned());
        assert_eq!(bridge_of("0123456789abcdef", &o), "claws0");
    }

    #[test]
    fn a_network_like_the_spec_has_no_differences() {
        assert!(differences(&info(), &spec()).is_empty());
        let mut s = spec();
        s.subnet = Some("172.30.0.0/24".parse().unwrap());
        assert!(differences(&info(), &s).is_empty());
    }

    #[test]
    fn every_difference_is_named() {
        let mut i = info();
        i.driver = "macvlan".into();
        i.ipv6 = true;
        i.internal = true;
        i.bridge_option = None;
        i.bridge = "br-0123456789ab".into();
        let mut s = spec();
        s.subnet = Some("10.9.0.0/16".parse().unwrap());
        let d = differences(&i, &s);
        assert_eq!(d.len(), 5, "{d:#?}");
        assert!(d[0].contains("driver is \"macvlan\""), "{}", d[0]);
        assert!(d[1].contains("IPv6 is enabled"), "{}", d[1]);
        assert!(
            d[2].contains("\"br-0123456789ab\" (no com.docker.network.bridge.name"),
            "{}",
            d[2]
        );
        assert!(
            d[3].contains("subnets are [172.30.0.0/24], expected 10.9.0.0/16"),
            "{}",
            d[3]
        );
        assert!(d[4].contains("--internal"), "{}", d[4]);
        let mut i = info();
        i.bridge_option = Some("other0".into());
        let d = differences(&i, &spec());
        assert_eq!(
            d,
            ["bridge interface is \"other0\" (com.docker.network.bridge.name), expected \"openclaw-egress\""]
        );
    }

    #[test]
    fn inspect_answers_become_network_info() {
        let n = NetworkInspect {
            name: Some("agents".into()),
            id: Some("fedcba9876543210fedcba".into()),
            driver: Some("bridge".into()),
            enable_ipv6: Some(false),
            ipam: Some(Ipam {
                driver: None,
                config: Some(vec![
                    IpamConfig {
                        subnet: Some("172.31.5.0/24".into()),
                        gateway: Some("172.31.5.1".into()),
                        ..Default::default()
                    },
                    IpamConfig {
                        subnet: Some("not a subnet".into()),
                        ..Default::default()
                    },
                ]),
                options: None,
            }),
            ..Default::default()
        };
        let i = NetworkInfo::from_inspect(&n).unwrap();
        assert_eq!(i.bridge, "br-fedcba987654");
        assert_eq!(i.bridge_option, None);
        assert_eq!(i.subnets, vec!["172.31.5.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(i.gateways, vec!["172.31.5.1".parse::<IpAddr>().unwrap()]);
        let no_id = NetworkInspect {
            name: Some("x".into()),
            ..Default::default()
        };
        assert!(NetworkInfo::from_inspect(&no_id).is_err());
    }

    #[test]
    fn only_create_and_destroy_of_the_named_network_are_events() {
        let ev = |action: &str, name: &str| EventMessage {
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("id".into()),
                attributes: Some(HashMap::from([("name".to_owned(), name.to_owned())])),
            }),
            ..Default::default()
        };
        assert_eq!(
            event_for(&ev("create", "n"), "n"),
            Some(NetworkEvent::Created)
        );
        assert_eq!(
            event_for(&ev("destroy", "n"), "n"),
            Some(NetworkEvent::Destroyed)
        );
        assert_eq!(event_for(&ev("connect", "n"), "n"), None);
        assert_eq!(event_for(&ev("create", "other"), "n"), None);
        assert_eq!(event_for(&EventMessage::default(), "n"), None);
    }
}
