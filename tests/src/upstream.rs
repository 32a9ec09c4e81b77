//! "The internet" of the lab: a namespace attached to a lab host by a veth
//! pair, with servers and a DNS server on a /24 of its own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::dnsmasq::Dnsmasq;
use crate::lock::Subnet;
use crate::netns::Netns;
use crate::servers::{Servers, Transport};

/// TCP ports every [`Upstream`] service address listens on.
pub const UPSTREAM_TCP_PORTS: &[u16] = &[22, 80, 443, 8080];
/// UDP ports every [`Upstream`] service address echoes on.
pub const UPSTREAM_UDP_PORTS: &[u16] = &[443, 5000];
/// How many service addresses an [`Upstream`] has (`.10` upwards).
pub const UPSTREAM_SERVICES: u8 = 5;

/// Upstream hosts for the containers of a lab host (the namespace of a
/// [`crate::Docker`]), on a /24 out of 198.18.0.0/15 no other test holds
/// ([`Subnet`], index N):
///
/// ```text
///  lab host                           upstream namespace
///  ocluN  198.X.Y.1/24  <-- veth -->  eth0  .10-.14 services (TCP 22 80 443 8080, UDP 443 5000)
///  (route to the /24)                       .53 DNS (dnsmasq, when started)
///                                           .54 not a DNS server: TCP/UDP 53 open
///                                           default route via .1
/// ```
///
/// Docker masquerades what leaves its bridges, so the servers see the lab
/// host's `.1` as the client. Everything (servers, the namespace, the link
/// and its route, the subnet claim) goes on drop.
pub struct Upstream {
    // Dropped in this order: the servers' sockets hold the namespace.
    servers: Servers,
    ns: Netns,
    host: String,
    link: String,
    subnet: Subnet,
}

impl Upstream {
    /// Creates the upstream namespace, attaches it to `host`, and starts
    /// the servers.
    pub fn start(host: &Netns, tag: &str) -> Upstream {
        let subnet = Subnet::claim();
        let ns = Netns::new(tag);
        let link = format!("oclu{}", subnet.index());
        ns.sysctl(&[
            ("net.ipv4.icmp_ratelimit", "0"),
            ("net.ipv6.conf.all.disable_ipv6", "1"),
        ]);
        // Built in the lab host, the peer moved at once: the pair lives and
        // dies with the upstream namespace.
        host.ip_batch(&[format!(
            "link add {link} type veth peer name eth0 netns {}",
            ns.name()
        )]);
        let gw = subnet.addr(1);
        host.ip_batch(&[
            format!("addr add {gw}/24 dev {link}"),
            format!("link set {link} up"),
        ]);
        let mut cmds = Vec::new();
        for a in Upstream::addresses(&subnet) {
            cmds.push(format!("addr add {a}/24 dev eth0"));
        }
        cmds.push("link set eth0 up".into());
        cmds.push(format!("route add default via {gw}"));
        ns.ip_batch(&cmds);

        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for i in 0..UPSTREAM_SERVICES {
            let a = IpAddr::V4(subnet.addr(10 + i));
            tcp.extend(UPSTREAM_TCP_PORTS.iter().map(|p| SocketAddr::new(a, *p)));
            udp.extend(UPSTREAM_UDP_PORTS.iter().map(|p| SocketAddr::new(a, *p)));
        }
        let other = IpAddr::V4(subnet.addr(54));
        tcp.push(SocketAddr::new(other, 53));
        udp.push(SocketAddr::new(other, 53));
        let servers = Servers::start(&ns, &tcp, &udp);
        Upstream {
            servers,
            ns,
            host: host.name().to_owned(),
            link,
            subnet,
        }
    }

    fn addresses(subnet: &Subnet) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = (0..UPSTREAM_SERVICES)
            .map(|i| subnet.addr(10 + i))
            .collect();
        v.push(subnet.addr(53));
        v.push(subnet.addr(54));
        v
    }

    /// The upstream namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Its /24.
    pub fn subnet(&self) -> &Subnet {
        &self.subnet
    }

    /// Service address `i` (0..5): `.10 + i`.
    pub fn service(&self, i: u8) -> Ipv4Addr {
        assert!(i < UPSTREAM_SERVICES, "service address {i} out of 0..5");
        self.subnet.addr(10 + i)
    }

    /// Where [`Upstream::dns`] serves (`.53`).
    pub fn dns_addr(&self) -> Ipv4Addr {
        self.subnet.addr(53)
    }

    /// An address with TCP and UDP port 53 open that is no DNS server
    /// (`.54`): what "port 53 only to the DNS servers" must block.
    pub fn other_dns_addr(&self) -> Ipv4Addr {
        self.subnet.addr(54)
    }

    /// The link's name in the lab host (`ocluN`).
    pub fn link(&self) -> &str {
        &self.link
    }

    /// Starts dnsmasq on `.53` (authoritative for `.test`, nothing
    /// forwarded), answering `records` with TTL `ttl` seconds; rewrite them
    /// with [`Dnsmasq::set_records`].
    pub fn dns(&self, ttl: u32, records: &[(&str, IpAddr)]) -> Dnsmasq<'_> {
        Dnsmasq::start(&self.ns, &[IpAddr::V4(self.dns_addr())], ttl, records)
    }

    /// How many TCP connections or UDP datagrams reached `addr` (on a
    /// service or the `.54` address).
    pub fn hits(&self, transport: Transport, addr: SocketAddr) -> usize {
        self.servers.hits(transport, addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Deleting one end deletes the pair (and the route) at once, so the
        // subnet and link name are free when the claim is released, even
        // while the kernel is still tearing the namespace down.
        let _ = std::process::Command::new("ip")
            .args(["-n", &self.host, "link", "del", &self.link])
            .stdin(std::process::Stdio::null())
            .output();
    }
}
