//! client ns --veth--> router ns --veth--> server ns.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::netns::Netns;

/// The client's address (the "container").
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The client's IPv6 address.
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The router's address on the ingress (client) side: the containers'
/// gateway, reached through the firewall's input hook.
pub const ROUTER_IN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The router's IPv6 address on the ingress side.
pub const ROUTER_IN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The router's address on the server side (not filtered).
pub const ROUTER_OUT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The router's IPv6 address on the server side.
pub const ROUTER_OUT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);

const fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, last)
}

/// The server's IPv4 addresses: .10-.14 for services, .53 for the DNS
/// server, .54 for "another server on port 53".
pub const SERVER_V4: [Ipv4Addr; 7] = [
    Ipv4Addr::new(198, 18, 1, 10),
    Ipv4Addr::new(198, 18, 1, 11),
    Ipv4Addr::new(198, 18, 1, 12),
    Ipv4Addr::new(198, 18, 1, 13),
    Ipv4Addr::new(198, 18, 1, 14),
    DNS_V4,
    OTHER_V4,
];
/// The server's IPv6 addresses (`::10`-`::14`, `::53`, `::54`; hex digits
/// written as they read, e.g. `2001:db8:1::10`).
pub const SERVER_V6: [Ipv6Addr; 7] = [
    v6(0x10),
    v6(0x11),
    v6(0x12),
    v6(0x13),
    v6(0x14),
    DNS_V6,
    OTHER_V6,
];
/// Where tests run dnsmasq (198.18.1.53).
pub const DNS_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 53);
/// Where tests run dnsmasq over IPv6 (2001:db8:1::53).
pub const DNS_V6: Ipv6Addr = v6(0x53);
/// A second address with port 53 open (UDP echo, TCP listener) that is not
/// an allowed DNS server (198.18.1.54).
pub const OTHER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 54);
/// IPv6 counterpart of [`OTHER_V4`] (2001:db8:1::54).
pub const OTHER_V6: Ipv6Addr = v6(0x54);

/// Builds a [`Topology`].
pub struct TopologyBuilder {
    tag: String,
    ingress: String,
}

impl TopologyBuilder {
    /// Name of the router's client-side interface (at most 15 bytes); the
    /// interface the firewall filters. Default `oc-in0`.
    pub fn ingress(mut self, name: &str) -> TopologyBuilder {
        assert!(
            !name.is_empty() && name.len() <= 15,
            "interface name {name:?} must have 1..=15 bytes"
        );
        self.ingress = name.to_owned();
        self
    }

    /// A word that goes into the namespace names, to tell them apart in
    /// `ip netns list` (letters, digits, `-`).
    pub fn tag(mut self, tag: &str) -> TopologyBuilder {
        self.tag = tag.to_owned();
        self
    }

    /// Creates the three namespaces and wires them up.
    pub fn build(self) -> Topology {
        let t = &self.tag;
        let topo = Topology {
            client: Netns::new(&format!("{t}-c")),
            router: Netns::new(&format!("{t}-r")),
            server: Netns::new(&format!("{t}-s")),
            ingress: self.ingress,
        };
        for ns in [&topo.client, &topo.router, &topo.server] {
            ns.sysctl(&[
                // Addresses usable at once, link-local ones included.
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
                // Every rejected probe gets its ICMP error, however many
                // a test sends.
                ("net.ipv4.icmp_ratelimit", "0"),
                ("net.ipv6.icmp.ratelimit", "0"),
            ]);
        }
        topo.router.sysctl(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ]);
        let ing = &topo.ingress;
        let (c, s) = (topo.client.name(), topo.server.name());
        topo.router.ip_batch(&[
            format!("link add {ing} type veth peer name eth0 netns {c}"),
            format!("link add srv0 type veth peer name eth0 netns {s}"),
            format!("addr add {ROUTER_IN_V4}/24 dev {ing}"),
            format!("addr add {ROUTER_IN_V6}/64 dev {ing} nodad"),
            format!("addr add {ROUTER_OUT_V4}/24 dev srv0"),
            format!("addr add {ROUTER_OUT_V6}/64 dev srv0 nodad"),
            format!("link set {ing} up"),
            "link set srv0 up".to_string(),
        ]);
        topo.client.ip_batch(&[
            format!("addr add {CLIENT_V4}/24 dev eth0"),
            format!("addr add {CLIENT_V6}/64 dev eth0 nodad"),
            "link set eth0 up".to_string(),
            format!("route add default via {ROUTER_IN_V4}"),
            format!("route add default via {ROUTER_IN_V6}"),
        ]);
        let mut server = Vec::new();
        for a in SERVER_V4 {
            server.push(format!("addr add {a}/24 dev eth0"));
        }
        for a in SERVER_V6 {
            server.push(format!("addr add {a}/64 dev eth0 nodad"));
        }
        server.push("link set eth0 up".to_string());
        server.push(format!("route add default via {ROUTER_OUT_V4}"));
        server.push(format!("route add default via {ROUTER_OUT_V6}"));
        topo.server.ip_batch(&server);
        topo
    }
}

/// Three namespaces: `client` (the "container"), `router` (the host, where
/// the firewall runs) and `server` (the outside world), each deleted on drop.
pub struct Topology {
    /// Sends the probes.
    pub client: Netns,
    /// Forwards between client and server; the firewall's home.
    pub router: Netns,
    /// Runs servers on [`SERVER_V4`] / [`SERVER_V6`].
    pub server: Netns,
    ingress: String,
}

impl Topology {
    /// A builder (ingress `oc-in0`, tag `t`).
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder {
            tag: "t".into(),
            ingress: "oc-in0".into(),
        }
    }

    /// A topology whose router ingress interface is called `ingress`.
    pub fn new(ingress: &str) -> Topology {
        Topology::builder().ingress(ingress).build()
    }

    /// The router's client-side interface: what the firewall filters.
    pub fn ingress(&self) -> &str {
        &self.ingress
    }
}
