//! Privileged test kit of openclaw-egress.
//!
//! Everything here runs as root and builds its own little network out of
//! network namespaces, so tests can send real packets through the firewall
//! without touching the host's own network or firewall:
//!
//! ```text
//!  client ns                 router ns                         server ns
//!  eth0 198.18.0.2  <-veth->  INGRESS 198.18.0.1  srv0 198.18.1.1  <-veth->  eth0 198.18.1.10-.14,.53,.54
//!       2001:db8::2                  2001:db8::1       2001:db8:1::1              2001:db8:1::10-::14,::53,::54
//! ```
//!
//! The router's client-side interface (`INGRESS`, named by the test) is the
//! one the firewall filters. Traffic only ever goes to loopback or to the
//! benchmarking (198.18.0.0/15) and documentation (2001:db8::/32) addresses
//! of the namespaces a test created; the probes refuse any other target.
//!
//! Every namespace, process, thread and temporary folder the kit creates is
//! removed by a `Drop` guard, so a panicking test cleans up too. Names carry
//! the process id and a counter, so tests can run in parallel.
//!
//! # The Docker lab
//!
//! For end-to-end tests with real containers, the kit runs a dockerd of its
//! own in a namespace of its own (the "lab host"), so the machine's network,
//! firewall and Docker are never touched:
//!
//! ```text
//!  lab host namespace (Docker::host)                     Upstream namespace
//!  dockerd, its iptables rules, the firewall under test
//!  bridge oclbN 198.X.N.1/24 (Network)    ocluM 198.X.M.1/24 <-veth-> eth0 198.X.M.10-.14 servers
//!    |- container 198.X.N.2 (Container)                                  198.X.M.53 dnsmasq
//!    |- container 198.X.N.3                                              198.X.M.54 port 53, no DNS
//! ```
//!
//! [`Docker::shared`] is one dockerd for every test (started when it does
//! not answer, left running); [`Docker::private`] is one a test owns (to
//! stop, restart or kill it). [`Network`]s and [`Upstream`]s each take a /24
//! of 198.18.0.0/15 that no other test process holds ([`Subnet`]); the lab
//! host has no route anywhere else. Containers run the busybox image
//! ([`TEST_IMAGE`], imported from Debian's busybox-static, no registry).
//!
//! Run the product inside [`Docker::host`] (`ip netns exec`) with
//! `DOCKER_HOST` = [`Docker::docker_host`], and name its nft table with
//! [`unique_name`]: a later run then removes the table if this one is
//! killed (a leftover table filtering a bridge name would block the next
//! test that gets that bridge).

#![warn(missing_docs)]

mod daemon;
mod dns;
mod dnsmasq;
mod docker;
mod lock;
mod netns;
mod nft;
mod notify;
mod probe;
mod run;
mod servers;
mod tempdir;
mod topology;
mod upstream;
mod wait;

pub use daemon::{sibling_binary, Daemon};
pub use dns::{query as dns_query, DnsReply, QType};
pub use dnsmasq::Dnsmasq;
pub use docker::{Container, Docker, Lookup, Network, TEST_IMAGE};
pub use lock::Subnet;
pub use netns::{require_root, unique_name, Netns, NsChild};
pub use nft::nft_set_addresses;
pub use notify::NotifySocket;
pub use probe::{
    dns_tcp, dns_udp, run_probe, tcp, tcp_connect, udp, udp_roundtrip, Probe, Target, TargetKind,
    BLOCKED_TIMEOUT, PATIENT_TIMEOUT,
};
pub use run::{error_locations, Run};
pub use servers::{Servers, Transport, STANDARD_TCP_PORTS, STANDARD_UDP_PORTS};
pub use tempdir::TempDir;
pub use topology::{
    Topology, TopologyBuilder, CLIENT_V4, CLIENT_V6, DNS_V4, DNS_V6, OTHER_V4, OTHER_V6,
    ROUTER_IN_V4, ROUTER_IN_V6, ROUTER_OUT_V4, ROUTER_OUT_V6, SERVER_V4, SERVER_V6,
};
pub use upstream::{Upstream, UPSTREAM_SERVICES, UPSTREAM_TCP_PORTS, UPSTREAM_UDP_PORTS};
pub use wait::{assert_holds, wait_for, wait_until, POLL};

/// errno values a [`Probe::Unreachable`] carries, re-exported so tests need
/// no `libc` of their own.
pub mod errno {
    /// ICMPv6 administratively prohibited (what `reject` sends over IPv6).
    pub const EACCES: i32 = libc::EACCES;
    /// ICMP port unreachable on a connected UDP socket.
    pub const ECONNREFUSED: i32 = libc::ECONNREFUSED;
    /// ICMP host unreachable or communication administratively prohibited
    /// (what `reject` sends over IPv4).
    pub const EHOSTUNREACH: i32 = libc::EHOSTUNREACH;
    /// ICMP network unreachable.
    pub const ENETUNREACH: i32 = libc::ENETUNREACH;
}
