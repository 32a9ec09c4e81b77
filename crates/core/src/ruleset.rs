//! The desired ruleset: a fixed layout (table, sets, chains, rules) and the
//! elements of its sets.
//!
//! The layout depends only on the config; the elements depend on the
//! allowlist and on address answers. Backends turn the layout into kernel
//! objects once (and again on drift) and afterwards only move elements, so
//! the layout is described here as data that both the nft backend and the
//! text renderer ([`crate::render`]) read: they cannot disagree.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::config::{Action, HostPort, Intra};
use crate::entry::{PortRange, Proto};

/// Address family of a set or rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The DNS record type that asks for this family (`A` / `AAAA`).
    pub fn record_type(self) -> &'static str {
        match self {
            Family::V4 => "A",
            Family::V6 => "AAAA",
        }
    }

    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Highest address of the family, as a number.
    pub fn max_value(self) -> u128 {
        match self {
            Family::V4 => u32::MAX as u128,
            Family::V6 => u128::MAX,
        }
    }

    /// Number to address.
    pub fn addr(self, v: u128) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
        }
    }

    /// nft's keyword for the network header (`ip` / `ip6`).
    pub fn nft_keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.record_type())
    }
}

/// Address to number (IPv4 in the low 32 bits).
pub fn addr_value(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(*a) as u128,
        IpAddr::V6(a) => u128::from(*a),
    }
}

/// The sets of the table. Their names are part of the interface people read
/// (`nft list table`), so they say what they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetId {
    /// `ipv4_addr . inet_proto . inet_service`, intervals (CIDR, port ranges).
    Svc4,
    /// `ipv6_addr . inet_proto . inet_service`, intervals.
    Svc6,
    /// `ipv4_addr`, intervals: bare entries (every TCP and UDP port).
    Any4,
    /// `ipv6_addr`, intervals: bare entries.
    Any6,
    /// `ipv4_addr`: DNS servers the containers may query on port 53.
    Dns4,
    /// `ipv6_addr`: DNS servers.
    Dns6,
}

impl SetId {
    /// All sets, in the order they are created and listed.
    pub const ALL: [SetId; 6] = [
        SetId::Svc4,
        SetId::Svc6,
        SetId::Any4,
        SetId::Any6,
        SetId::Dns4,
        SetId::Dns6,
    ];

    /// Set name in the kernel.
    pub fn name(self) -> &'static str {
        match self {
            SetId::Svc4 => "allow_v4",
            SetId::Svc6 => "allow_v6",
            SetId::Any4 => "allow_all_ports_v4",
            SetId::Any6 => "allow_all_ports_v6",
            SetId::Dns4 => "dns_v4",
            SetId::Dns6 => "dns_v6",
        }
    }

    /// Inverse of [`SetId::name`].
    pub fn from_name(name: &str) -> Option<SetId> {
        SetId::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Address family of the set's keys.
    pub fn family(self) -> Family {
        match self {
            SetId::Svc4 | SetId::Any4 | SetId::Dns4 => Family::V4,
            SetId::Svc6 | SetId::Any6 | SetId::Dns6 => Family::V6,
        }
    }

    /// What kind of key the set holds.
    pub fn kind(self) -> SetKind {
        match self {
            SetId::Svc4 | SetId::Svc6 => SetKind::Service,
            SetId::Any4 | SetId::Any6 => SetKind::AddressRange,
            SetId::Dns4 | SetId::Dns6 => SetKind::Address,
        }
    }

    /// The service set of a family.
    pub fn svc(family: Family) -> SetId {
        match family {
            Family::V4 => SetId::Svc4,
            Family::V6 => SetId::Svc6,
        }
    }

    /// The all-ports set of a family.
    pub fn any(family: Family) -> SetId {
        match family {
            Family::V4 => SetId::Any4,
            Family::V6 => SetId::Any6,
        }
    }

    /// The DNS-server set of a family.
    pub fn dns(family: Family) -> SetId {
        match family {
            Family::V4 => SetId::Dns4,
            Family::V6 => SetId::Dns6,
        }
    }
}

/// Shape of a set's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    /// Concatenation address . protocol . port, with intervals and timeouts.
    Service,
    /// Address intervals with timeouts.
    AddressRange,
    /// Plain addresses, no intervals, no timeouts.
    Address,
}

/// An inclusive address range within one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    /// First address.
    pub start: IpAddr,
    /// Last address (inclusive).
    pub end: IpAddr,
}

impl AddrRange {
    /// One address.
    pub fn single(addr: IpAddr) -> AddrRange {
        AddrRange {
            start: addr,
            end: addr,
        }
    }

    /// The range as a CIDR when it is exactly one.
    pub fn as_cidr(&self) -> Option<ipnet::IpNet> {
        let fam = Family::of(&self.start);
        let (s, e) = (addr_value(&self.start), addr_value(&self.end));
        let bits = match fam {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        let span = e.wrapping_sub(s);
        // A CIDR block is aligned and its size is a power of two.
        let size = span.checked_add(1);
        let host_bits = match size {
            None => 128,
            Some(n) if n.is_power_of_two() => n.trailing_zeros(),
            Some(_) => return None,
        };
        if host_bits > bits || (host_bits < 128 && s & ((1u128 << host_bits) - 1) != 0) {
            return None;
        }
        ipnet::IpNet::new(self.start, (bits - host_bits) as u8).ok()
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            return self.start.fmt(f);
        }
        match self.as_cidr() {
            Some(net) => net.fmt(f),
            None => write!(f, "{}-{}", self.start, self.end),
        }
    }
}

/// The key of one set element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ElementKey {
    /// In a service set: address range . protocol . port range.
    Service {
        /// Addresses.
        addr: AddrRange,
        /// Protocol.
        proto: Proto,
        /// Ports.
        ports: PortRange,
    },
    /// In an all-ports set: an address range.
    Range(AddrRange),
    /// In a DNS set: one address.
    Addr(IpAddr),
}

impl fmt::Display for ElementKey {
    /// nft's element syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElementKey::Service { addr, proto, ports } => write!(f, "{addr} . {proto} . {ports}"),
            ElementKey::Range(r) => r.fmt(f),
            ElementKey::Addr(a) => a.fmt(f),
        }
    }
}

/// What a desired element carries besides its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementAttrs {
    /// `None`: permanent (a literal entry or a DNS server). `Some`: the
    /// kernel removes the element after this long unless it is refreshed, so
    /// stale resolved addresses close even when the daemon is gone.
    pub timeout: Option<Duration>,
    /// Which entries put it there (shown by `nft list`).
    pub comment: String,
}

/// The elements of every set, keyed for diffing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Elements {
    sets: BTreeMap<SetId, BTreeMap<ElementKey, ElementAttrs>>,
}

impl Elements {
    /// No elements.
    pub fn new() -> Elements {
        Elements::default()
    }

    /// Adds or replaces one element.
    pub fn insert(&mut self, set: SetId, key: ElementKey, attrs: ElementAttrs) {
        self.sets.entry(set).or_default().insert(key, attrs);
    }

    /// The elements of one set, ordered by key.
    pub fn set(&self, set: SetId) -> impl Iterator<Item = (&ElementKey, &ElementAttrs)> {
        self.sets.get(&set).into_iter().flat_map(|m| m.iter())
    }

    /// Looks one element up.
    pub fn get(&self, set: SetId, key: &ElementKey) -> Option<&ElementAttrs> {
        self.sets.get(&set).and_then(|m| m.get(key))
    }

    /// Number of elements in one set.
    pub fn count(&self, set: SetId) -> usize {
        self.sets.get(&set).map_or(0, |m| m.len())
    }

    /// Number of elements in all sets.
    pub fn len(&self) -> usize {
        self.sets.values().map(|m| m.len()).sum()
    }

    /// True when no set has an element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Deny logging: a rate-limited log rule before the final action, so a
/// flood of blocked packets cannot flood the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    /// Lines per second.
    pub rate: u32,
    /// Burst allowance in packets.
    pub burst: u32,
    /// Kernel log prefix.
    pub prefix: String,
}

/// The fixed part of the ruleset: everything but the set elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// nft table name (family inet).
    pub table: String,
    /// Interfaces whose ingress traffic is filtered, matched by name so the
    /// rules hold before the interface exists.
    pub interfaces: Vec<String>,
    /// What happens to traffic no rule accepts.
    pub action: Action,
    /// Deny logging, if enabled.
    pub log: Option<LogSpec>,
    /// Traffic between containers of one bridge.
    pub intra: Intra,
    /// Ports of the host containers may reach.
    pub host_ports: Vec<HostPort>,
}

/// A base chain: where the kernel hands packets to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Routed traffic (container to anywhere off the host).
    Forward,
    /// Traffic to the host itself (container to the gateway address).
    Input,
}

/// A chain of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    /// Chain name.
    pub name: &'static str,
    /// `Some` for base chains.
    pub hook: Option<Hook>,
    /// Rules in order.
    pub rules: Vec<RuleSpec>,
}

/// Base chain priority: just before the default filter priority so this
/// table decides first. (A drop anywhere is final in nftables, so the order
/// against Docker's own chains only matters for counters and logs.)
pub const BASE_PRIORITY: i32 = -10;

/// ICMPv6 types of neighbour discovery a container may send the host.
pub const ND_TYPES: [u8; 3] = [133, 135, 136];

/// nft's name of an ICMPv6 neighbour-discovery type.
pub fn nd_name(icmp_type: u8) -> &'static str {
    match icmp_type {
        133 => "nd-router-solicit",
        135 => "nd-neighbor-solicit",
        136 => "nd-neighbor-advert",
        _ => "unknown",
    }
}

/// Name of the regular chain holding the policy for traffic leaving the
/// host (forward hook).
pub const POLICY_CHAIN: &str = "egress";

/// Name of the regular chain for traffic to the host itself (input hook).
pub const HOST_CHAIN: &str = "host";

/// Name of the regular chain every denied packet ends in: one place for the
/// log rule and the counters.
pub const DENY_CHAIN: &str = "deny";

/// One rule. The backend builds expressions from it, the renderer text, and
/// its [`RuleSpec::tag`] goes into the rule's comment so drift is detected
/// by reading rules back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSpec {
    /// `iifname "X" jump CHAIN` (CHAIN: `egress` from the forward hook,
    /// `host` from the input hook).
    JumpFromInterface {
        /// Interface name.
        iface: String,
        /// The chain jumped to.
        chain: &'static str,
    },
    /// `iifname "X" oifname "X" accept` (intra = allow) or `... jump deny`
    /// (intra = deny): traffic between two containers of one bridge. With
    /// br_netfilter (Docker loads it) bridged packets pass the forward hook
    /// with the bridge as both input and output interface, which is what
    /// tells them apart exactly, whatever the addresses.
    Intra {
        /// Interface name.
        iface: String,
        /// Accept (true) or deny (false).
        allow: bool,
    },
    /// `meta l4proto tcp th dport 8080 accept`: a port of the host that
    /// containers may reach (`[network] host_ports`).
    HostPortAccept(HostPort),
    /// `jump deny`: the end of the `egress` and `host` chains.
    JumpDeny,
    /// `ct state established,related accept`: replies and ICMP errors of
    /// connections that were allowed.
    EstablishedAccept,
    /// `icmpv6 type nd-neighbor-solicit ip6 hoplimit 255 accept`: IPv6
    /// neighbour discovery with the host (the input hook sees it, and
    /// conntrack does not track it, so without this rule IPv6 to any allowed
    /// address breaks once neighbour caches expire). Hop limit 255 proves
    /// the packet was not routed.
    NeighborDiscovery {
        /// ICMPv6 type: 133 router solicitation, 135 neighbour
        /// solicitation, 136 neighbour advertisement.
        icmp_type: u8,
    },
    /// `ip daddr @dns_v4 udp dport 53 accept` and friends.
    DnsAccept {
        /// Family of the destination.
        family: Family,
        /// Protocol.
        proto: Proto,
    },
    /// `ip daddr . meta l4proto . th dport @allow_v4 accept`.
    ServiceAccept {
        /// Family.
        family: Family,
    },
    /// `meta l4proto tcp ip daddr @allow_all_ports_v4 accept`.
    AllPortsAccept {
        /// Family.
        family: Family,
        /// Protocol.
        proto: Proto,
    },
    /// `limit rate R/second burst B packets log prefix "P"`.
    Log(LogSpec),
    /// `meta l4proto tcp counter reject with tcp reset`.
    RejectTcp,
    /// `counter reject with icmpx admin-prohibited`.
    RejectOther,
    /// `counter drop`.
    Drop,
}

impl RuleSpec {
    /// Short human comment stored with the rule; also identifies the rule
    /// when the live table is checked for drift.
    pub fn tag(&self) -> String {
        match self {
            RuleSpec::JumpFromInterface { chain, .. } if *chain == HOST_CHAIN => {
                "traffic from the agent network to the host".into()
            }
            RuleSpec::JumpFromInterface { .. } => "traffic from the agent network".into(),
            RuleSpec::Intra { allow: true, .. } => "containers of the network: allowed".into(),
            RuleSpec::Intra { allow: false, .. } => "containers of the network: denied".into(),
            RuleSpec::HostPortAccept(hp) => format!("host port {hp}"),
            RuleSpec::JumpDeny => "everything else is denied".into(),
            RuleSpec::EstablishedAccept => "replies to allowed connections".into(),
            RuleSpec::NeighborDiscovery { icmp_type } => {
                format!("ipv6 neighbour discovery ({})", nd_name(*icmp_type))
            }
            RuleSpec::DnsAccept { family, proto } => {
                format!("dns {proto} to allowed servers ({})", family.nft_keyword())
            }
            RuleSpec::ServiceAccept { family } => {
                format!("allowlisted address:port ({})", family.nft_keyword())
            }
            RuleSpec::AllPortsAccept { family, proto } => {
                format!(
                    "allowlisted address, any {proto} port ({})",
                    family.nft_keyword()
                )
            }
            RuleSpec::Log(_) => "log denied (rate-limited)".into(),
            RuleSpec::RejectTcp => "deny: tcp reset".into(),
            RuleSpec::RejectOther => "deny: icmp admin-prohibited".into(),
            RuleSpec::Drop => "deny: drop".into(),
        }
    }

    /// True for the rules that count denied packets.
    pub fn counts_denied(&self) -> bool {
        matches!(
            self,
            RuleSpec::RejectTcp | RuleSpec::RejectOther | RuleSpec::Drop
        )
    }
}

impl Layout {
    /// The chains, base chains first (and each chain before the chains
    /// that jump to it is not required: the backend creates every chain
    /// before any rule).
    pub fn chains(&self) -> Vec<ChainSpec> {
        let mut forward = Vec::new();
        let mut input = Vec::new();
        for iface in &self.interfaces {
            // Before the jump: bridged container-to-container packets would
            // otherwise meet the egress policy, where a listed private
            // address could let them through by accident.
            forward.push(RuleSpec::Intra {
                iface: iface.clone(),
                allow: self.intra == Intra::Allow,
            });
            forward.push(RuleSpec::JumpFromInterface {
                iface: iface.clone(),
                chain: POLICY_CHAIN,
            });
            input.push(RuleSpec::JumpFromInterface {
                iface: iface.clone(),
                chain: HOST_CHAIN,
            });
        }
        let mut egress = vec![RuleSpec::EstablishedAccept];
        for icmp_type in ND_TYPES {
            egress.push(RuleSpec::NeighborDiscovery { icmp_type });
        }
        for family in Family::ALL {
            for proto in [Proto::Udp, Proto::Tcp] {
                egress.push(RuleSpec::DnsAccept { family, proto });
            }
        }
        // The host chain shares the head of the egress chain: replies,
        // neighbour discovery with the gateway, and DNS to the allowed
        // servers (in the input hook the destination is an address of the
        // host, so only servers that live on the host match).
        let mut host = egress.clone();
        for family in Family::ALL {
            egress.push(RuleSpec::ServiceAccept { family });
        }
        for family in Family::ALL {
            for proto in [Proto::Tcp, Proto::Udp] {
                egress.push(RuleSpec::AllPortsAccept { family, proto });
            }
        }
        egress.push(RuleSpec::JumpDeny);
        host.extend(
            self.host_ports
                .iter()
                .copied()
                .map(RuleSpec::HostPortAccept),
        );
        host.push(RuleSpec::JumpDeny);
        let mut deny = Vec::new();
        if let Some(log) = &self.log {
            deny.push(RuleSpec::Log(log.clone()));
        }
        match self.action {
            Action::Reject => {
                deny.push(RuleSpec::RejectTcp);
                deny.push(RuleSpec::RejectOther);
            }
            Action::Drop => deny.push(RuleSpec::Drop),
        }
        vec![
            ChainSpec {
                name: "forward",
                hook: Some(Hook::Forward),
                rules: forward,
            },
            ChainSpec {
                name: "input",
                hook: Some(Hook::Input),
                rules: input,
            },
            ChainSpec {
                name: POLICY_CHAIN,
                hook: None,
                rules: egress,
            },
            ChainSpec {
                name: HOST_CHAIN,
                hook: None,
                rules: host,
            },
            ChainSpec {
                name: DENY_CHAIN,
                hook: None,
                rules: deny,
            },
        ]
    }

    /// A stable fingerprint of the layout (FNV-1a over its rendering). It is
    /// written into the table's comment; a live table whose comment differs
    /// was made by another version or another config and is replaced whole.
    pub fn fingerprint(&self) -> String {
        fingerprint(&crate::render::layout_text(self))
    }

    /// The table comment carrying the fingerprint.
    pub fn table_comment(&self) -> String {
        format!(
            "managed by openclaw-egress (layout {}); edits here are overwritten",
            self.fingerprint()
        )
    }
}

/// The whole desired state: layout plus elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// Table, chains, rules, set definitions.
    pub layout: Layout,
    /// Set contents.
    pub elements: Elements,
}

/// FNV-1a (64 bit) of `text` as 16 hex digits: the layout fingerprint of
/// the nft table's comment and of the pf anchor's labels. Not for security:
/// it only tells one rendering from another.
pub fn fingerprint(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
