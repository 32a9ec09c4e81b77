//! The desired anchor as pf.conf text.
//!
//! pf tables hold addresses only, so the nft sets map onto pf like this:
//! - `dns_v4`/`dns_v6` -> table `<dns>`;
//! - `allow_all_ports_v4/v6` -> table `<any_ports>`;
//! - `allow_v4/v6` (address . protocol . port) -> one table per (protocol,
//!   port range) group, `<svc_tcp_443>`, `<svc_udp_5000_5010>`, each with
//!   one rule naming that port.
//!
//! Both address families share a table (pf tables are dual-stack). The rules
//! therefore depend only on the layout and on the set of groups; addresses
//! only ever change table contents. Every rule carries a label
//! `openclaw-egress:<fingerprint>:<tag>`, which `pfctl -s rules` prints back:
//! that is how a live anchor is recognised as this layout's, and how the
//! deny rules' counters are found.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use egress_core::config::{pf_anchor_name, Action};
use egress_core::ruleset::{AddrRange, ElementAttrs, ElementKey, Elements, Layout, Ruleset, SetId};
use egress_core::{PortRange, Proto};
use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};

use crate::error::PfError;

/// First part of every rule label.
pub const LABEL_PREFIX: &str = "openclaw-egress";

/// pf's limit on a label (`PF_RULE_LABEL_SIZE` minus the NUL).
const LABEL_MAX: usize = 63;

/// A table of the anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableId {
    /// DNS servers the containers may query on port 53.
    Dns,
    /// Bare allowlist entries: every TCP and UDP port.
    AnyPorts,
    /// Addresses allowed on one protocol and port range.
    Service {
        /// Protocol.
        proto: Proto,
        /// Ports.
        ports: PortRange,
    },
}

impl TableId {
    /// The table's name in pf (`dns`, `any_ports`, `svc_tcp_443`,
    /// `svc_udp_5000_5010`); at most 19 bytes, within pf's 31.
    pub fn name(&self) -> String {
        match self {
            TableId::Dns => "dns".into(),
            TableId::AnyPorts => "any_ports".into(),
            TableId::Service { proto, ports } if ports.start == ports.end => {
                format!("svc_{proto}_{}", ports.start)
            }
            TableId::Service { proto, ports } => {
                format!("svc_{proto}_{}_{}", ports.start, ports.end)
            }
        }
    }

    /// Inverse of [`TableId::name`]; `None` for a name this backend never
    /// makes (including non-canonical spellings such as `svc_tcp_0443`).
    pub fn from_name(name: &str) -> Option<TableId> {
        let id = match name {
            "dns" => TableId::Dns,
            "any_ports" => TableId::AnyPorts,
            _ => {
                let rest = name.strip_prefix("svc_")?;
                let (proto, ports) = rest.split_once('_')?;
                let proto = match proto {
                    "tcp" => Proto::Tcp,
                    "udp" => Proto::Udp,
                    _ => return None,
                };
                let (start, end) = match ports.split_once('_') {
                    Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
                    None => {
                        let p = ports.parse().ok()?;
                        (p, p)
                    }
                };
                if start == 0 || start > end {
                    return None;
                }
                TableId::Service {
                    proto,
                    ports: PortRange { start, end },
                }
            }
        };
        (id.name() == name).then_some(id)
    }

    /// The table an element goes to (by the shape of its key), and its
    /// addresses.
    pub fn of_element(key: &ElementKey) -> (TableId, AddrRange) {
        match key {
            ElementKey::Service { addr, proto, ports } => (
                TableId::Service {
                    proto: *proto,
                    ports: *ports,
                },
                *addr,
            ),
            ElementKey::Range(r) => (TableId::AnyPorts, *r),
            ElementKey::Addr(a) => (TableId::Dns, AddrRange::single(*a)),
        }
    }
}

/// Table contents: every table of the anchor with its CIDR blocks. The DNS
/// and any-ports tables are always present (their rules always exist).
pub type Tables = BTreeMap<TableId, BTreeSet<IpNet>>;

/// An address range as the fewest CIDR blocks covering exactly it (pf
/// tables hold prefixes, not arbitrary ranges).
pub fn cidrs(range: &AddrRange) -> Vec<IpNet> {
    match (range.start, range.end) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(e)) => {
            Ipv4Subnets::new(s, e, 0).map(IpNet::V4).collect()
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(e)) => {
            Ipv6Subnets::new(s, e, 0).map(IpNet::V6).collect()
        }
        // Ranges never mix families (policy builds them per family).
        _ => Vec::new(),
    }
}

/// The tables for a set of elements.
pub fn desired_tables(elements: &Elements) -> Tables {
    let mut tables = Tables::new();
    tables.insert(TableId::Dns, BTreeSet::new());
    tables.insert(TableId::AnyPorts, BTreeSet::new());
    for set in SetId::ALL {
        for (key, _) in elements.set(set) {
            let (id, range) = TableId::of_element(key);
            tables.entry(id).or_default().extend(cidrs(&range));
        }
    }
    tables
}

/// The elements as pf holds them: each range cut into CIDR blocks and no
/// timeouts (pf tables have none). Diffing these against what was read back
/// from pf gives the add/remove report of an apply.
pub fn pf_elements(elements: &Elements) -> Elements {
    let mut out = Elements::new();
    for set in SetId::ALL {
        for (key, attrs) in elements.set(set) {
            let attrs = ElementAttrs {
                timeout: None,
                comment: attrs.comment.clone(),
            };
            let (_, range) = TableId::of_element(key);
            for net in cidrs(&range) {
                let r = AddrRange {
                    start: net.network(),
                    end: net.broadcast(),
                };
                let k = match key {
                    ElementKey::Service { proto, ports, .. } => ElementKey::Service {
                        addr: r,
                        proto: *proto,
                        ports: *ports,
                    },
                    ElementKey::Range(_) => ElementKey::Range(r),
                    ElementKey::Addr(a) => ElementKey::Addr(*a),
                };
                out.insert(set, k, attrs.clone());
            }
        }
    }
    out
}

/// ICMPv6 neighbour discovery a container may send the host, by pf's type
/// name, with the destinations it goes to: router solicitations go to the
/// all-routers multicast group; neighbour solicitations and advertisements
/// to a solicited-node or all-nodes group, or to one of the host's own
/// addresses (link-local, which pf leaves out of `(if)`, or any other of
/// the bridge). pf cannot match the hop limit as nft does (255 proves the
/// packet was not routed), so the destinations keep these types from being
/// forwarded anywhere else.
const ND_RULES: [(&str, &[NdDest]); 3] = [
    ("routersol", &[NdDest::Multicast]),
    (
        "neighbrsol",
        &[NdDest::Multicast, NdDest::LinkLocal, NdDest::Interface],
    ),
    (
        "neighbradv",
        &[NdDest::Multicast, NdDest::LinkLocal, NdDest::Interface],
    ),
];

/// Destination of a neighbour-discovery rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdDest {
    /// `ff02::/16`: link-local multicast.
    Multicast,
    /// `fe80::/10`: link-local unicast.
    LinkLocal,
    /// `(if)`: the bridge's own addresses, followed as they change.
    Interface,
}

/// One rule of the anchor. Each becomes exactly one line and one kernel
/// rule (no `{ }` lists, which pfctl would expand into several), so the
/// labels read back correspond one to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PfRule {
    /// IPv6 neighbour discovery with the host (stateless, as nft's).
    NeighborDiscovery {
        /// Interface.
        iface: String,
        /// pf's ICMPv6 type name.
        icmp6_type: &'static str,
        /// Where it may go.
        to: NdDest,
    },
    /// DNS to the allowed servers.
    Dns {
        /// Interface.
        iface: String,
        /// Protocol.
        proto: Proto,
    },
    /// One (protocol, port range) group of allowlisted addresses.
    Service {
        /// Interface.
        iface: String,
        /// Protocol.
        proto: Proto,
        /// Ports.
        ports: PortRange,
    },
    /// Bare entries: any port of the protocol.
    AllPorts {
        /// Interface.
        iface: String,
        /// Protocol.
        proto: Proto,
    },
    /// A port of the Mac itself (`[network] host_ports`).
    HostPort {
        /// Interface.
        iface: String,
        /// Protocol.
        proto: Proto,
        /// Ports.
        ports: PortRange,
    },
    /// Everything else to the Mac itself (nft's `host` chain): the
    /// allowlist never opens the host.
    HostDeny {
        /// Interface.
        iface: String,
        /// Reject or drop.
        action: Action,
        /// Log to `pflog0`.
        log: bool,
    },
    /// Everything else from the interface.
    Deny {
        /// Interface.
        iface: String,
        /// Reject (`block return`: TCP reset, ICMP unreachable) or drop.
        action: Action,
        /// Log to `pflog0`.
        log: bool,
    },
}

fn port_text(ports: PortRange) -> String {
    if ports.start == ports.end {
        ports.start.to_string()
    } else {
        // pf's inclusive range operator.
        format!("{}:{}", ports.start, ports.end)
    }
}

fn block_word(action: Action) -> &'static str {
    match action {
        Action::Reject => "return",
        Action::Drop => "drop",
    }
}

/// TCP state is created by the first SYN only, as pf does by default since
/// OpenBSD 4.1; spelled out because the rule is read by people too.
fn keep_state(proto: Proto) -> &'static str {
    match proto {
        Proto::Tcp => "flags S/SA keep state",
        Proto::Udp => "keep state",
    }
}

impl PfRule {
    /// The rule in pf.conf syntax, without its label.
    pub fn text(&self) -> String {
        match self {
            PfRule::NeighborDiscovery {
                iface,
                icmp6_type,
                to,
            } => {
                let dest = match to {
                    NdDest::Multicast => "ff02::/16".to_string(),
                    NdDest::LinkLocal => "fe80::/10".to_string(),
                    NdDest::Interface => format!("({iface})"),
                };
                format!(
                    "pass in quick on {iface} inet6 proto icmp6 from any to {dest} icmp6-type {icmp6_type} no state"
                )
            }
            PfRule::Dns { iface, proto } => format!(
                "pass in quick on {iface} proto {proto} from any to <{}> port 53 {}",
                TableId::Dns.name(),
                keep_state(*proto)
            ),
            PfRule::Service {
                iface,
                proto,
                ports,
            } => format!(
                "pass in quick on {iface} proto {proto} from any to <{}> port {} {}",
                TableId::Service {
                    proto: *proto,
                    ports: *ports
                }
                .name(),
                port_text(*ports),
                keep_state(*proto)
            ),
            PfRule::AllPorts { iface, proto } => format!(
                "pass in quick on {iface} proto {proto} from any to <{}> {}",
                TableId::AnyPorts.name(),
                keep_state(*proto)
            ),
            PfRule::HostPort {
                iface,
                proto,
                ports,
            } => format!(
                "pass in quick on {iface} proto {proto} from any to (self) port {} {}",
                port_text(*ports),
                keep_state(*proto)
            ),
            PfRule::HostDeny { iface, action, log } => format!(
                "block {} in{} quick on {iface} from any to (self)",
                block_word(*action),
                if *log { " log" } else { "" }
            ),
            PfRule::Deny { iface, action, log } => format!(
                "block {} in{} quick on {iface} all",
                block_word(*action),
                if *log { " log" } else { "" }
            ),
        }
    }

    /// Short word in the label saying what the rule is for.
    pub fn tag(&self) -> &'static str {
        match self {
            PfRule::NeighborDiscovery { .. } => "nd",
            PfRule::Dns { .. } => "dns",
            PfRule::Service { .. } => "svc",
            PfRule::AllPorts { .. } => "any",
            PfRule::HostPort { .. } => "host",
            // Counted with the other denies.
            PfRule::HostDeny { .. } | PfRule::Deny { .. } => "deny",
        }
    }
}

/// Tag of the rules whose counters are the denied packets.
pub const DENY_TAG: &str = "deny";

/// Interface names go into rules unquoted; allow only what cannot be read
/// as anything else (pf takes a name without a trailing digit as an
/// interface group, which is legal and documented).
fn check_interface(name: &str) -> Result<(), PfError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > 15 {
        "it is longer than 15 bytes (IFNAMSIZ)"
    } else if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        "it must start with a letter"
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        "only letters, digits, '_', '-' and '.' are allowed"
    } else {
        return Ok(());
    };
    Err(PfError::BadName {
        what: "interface",
        name: name.to_owned(),
        why,
    })
}

/// Checks an anchor name: it goes on pfctl's command line and into pf.conf
/// in quotes.
pub fn check_anchor(name: &str) -> Result<(), PfError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        "only letters, digits, '_' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(PfError::BadName {
        what: "anchor",
        name: name.to_owned(),
        why,
    })
}

/// The rules of a layout for a set of service groups.
fn rules(layout: &Layout, groups: &BTreeSet<(Proto, PortRange)>) -> Vec<PfRule> {
    let mut out = Vec::new();
    // Per interface, in the order of nft's egress chain. Replies and ICMP
    // errors of allowed connections need no rule: pf matches them to the
    // state the pass rule created before any rule is evaluated. Traffic to
    // the Mac itself enters here too (nft's input hook): after DNS (whose
    // servers may live on the Mac), the host ports, then a block of
    // everything else to `(self)`, before any allowlist rule can match a
    // host address. Traffic between two members of the bridge is bridged,
    // not routed, and never reaches these `in on bridge` rules, so
    // `[network] intra` cannot be enforced here (docs/macos.md).
    for iface in &layout.interfaces {
        for (icmp6_type, dests) in ND_RULES {
            for to in dests {
                out.push(PfRule::NeighborDiscovery {
                    iface: iface.clone(),
                    icmp6_type,
                    to: *to,
                });
            }
        }
        for proto in [Proto::Udp, Proto::Tcp] {
            out.push(PfRule::Dns {
                iface: iface.clone(),
                proto,
            });
        }
        for hp in &layout.host_ports {
            out.push(PfRule::HostPort {
                iface: iface.clone(),
                proto: hp.proto,
                ports: hp.ports,
            });
        }
        out.push(PfRule::HostDeny {
            iface: iface.clone(),
            action: layout.action,
            log: layout.log.is_some(),
        });
        for (proto, ports) in groups {
            out.push(PfRule::Service {
                iface: iface.clone(),
                proto: *proto,
                ports: *ports,
            });
        }
        for proto in [Proto::Tcp, Proto::Udp] {
            out.push(PfRule::AllPorts {
                iface: iface.clone(),
                proto,
            });
        }
        // `quick` makes the block final: a later `pass` in pf.conf cannot
        // reopen what the anchor denied.
        out.push(PfRule::Deny {
            iface: iface.clone(),
            action: layout.action,
            log: layout.log.is_some(),
        });
    }
    out
}

/// The rules and table names of one layout and set of service groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The anchor's name.
    pub name: String,
    /// FNV-1a over the rules and table names (not the addresses).
    pub fingerprint: String,
    /// The rules, in order.
    pub rules: Vec<PfRule>,
    /// The tables the rules use, in order.
    pub tables: Vec<TableId>,
}

impl Anchor {
    /// The anchor for `layout` with these service groups.
    pub fn new(
        name: &str,
        layout: &Layout,
        groups: &BTreeSet<(Proto, PortRange)>,
    ) -> Result<Anchor, PfError> {
        check_anchor(name)?;
        for iface in &layout.interfaces {
            check_interface(iface)?;
        }
        let rules = rules(layout, groups);
        let mut tables = vec![TableId::Dns, TableId::AnyPorts];
        tables.extend(groups.iter().map(|(proto, ports)| TableId::Service {
            proto: *proto,
            ports: *ports,
        }));
        let mut skeleton = String::new();
        for t in &tables {
            let _ = writeln!(skeleton, "table <{}> persist", t.name());
        }
        for r in &rules {
            let _ = writeln!(skeleton, "{}", r.text());
        }
        Ok(Anchor {
            name: name.to_owned(),
            fingerprint: egress_core::ruleset::fingerprint(&skeleton),
            rules,
            tables,
        })
    }

    /// The anchor whose groups are those of `tables`.
    pub fn for_tables(name: &str, layout: &Layout, tables: &Tables) -> Result<Anchor, PfError> {
        Anchor::new(name, layout, &groups(tables.keys()))
    }

    /// The label of a rule of this anchor.
    pub fn label(&self, rule: &PfRule) -> String {
        let l = format!("{LABEL_PREFIX}:{}:{}", self.fingerprint, rule.tag());
        debug_assert!(l.len() <= LABEL_MAX);
        l
    }

    /// Every rule's label, in order: what `pfctl -a ANCHOR -s rules` must
    /// print back for the live anchor to be this one.
    pub fn labels(&self) -> Vec<String> {
        self.rules.iter().map(|r| self.label(r)).collect()
    }

    /// The file `pfctl -a ANCHOR -f -` loads: table definitions with their
    /// addresses, then the rules. Loading it is one pf transaction, so the
    /// rules and the addresses change together. A table with no addresses
    /// is declared without a list, which keeps whatever it holds; the
    /// backend empties it with `-T flush` right after.
    pub fn rules_file(&self, tables: &Tables) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# openclaw-egress: pf anchor \"{}\" (layout {}).",
            self.name, self.fingerprint
        );
        let _ = writeln!(
            out,
            "# Loaded by openclaw-egressd with `pfctl -a {} -f -`; edits here are overwritten.",
            self.name
        );
        let empty = BTreeSet::new();
        for t in &self.tables {
            let addrs = tables.get(t).unwrap_or(&empty);
            if addrs.is_empty() {
                let _ = writeln!(out, "table <{}> persist", t.name());
            } else {
                let _ = writeln!(out, "table <{}> persist {{ \\", t.name());
                let last = addrs.len() - 1;
                for (i, a) in addrs.iter().enumerate() {
                    let sep = if i == last { "" } else { "," };
                    let _ = writeln!(out, "\t{}{sep} \\", addr_text(a));
                }
                let _ = writeln!(out, "}}");
            }
        }
        for r in &self.rules {
            let _ = writeln!(out, "{} label \"{}\"", r.text(), self.label(r));
        }
        out
    }
}

/// The anchor and tables `ruleset` becomes (the anchor named after
/// `Layout::table`): what `show` prints and what a full load sends.
pub fn desired(ruleset: &Ruleset) -> Result<(Anchor, Tables), PfError> {
    let tables = desired_tables(&ruleset.elements);
    let name = pf_anchor_name(&ruleset.layout.table);
    let anchor = Anchor::for_tables(&name, &ruleset.layout, &tables)?;
    Ok((anchor, tables))
}

/// The service groups of a table set.
pub fn groups<'a>(ids: impl IntoIterator<Item = &'a TableId>) -> BTreeSet<(Proto, PortRange)> {
    ids.into_iter()
        .filter_map(|t| match t {
            TableId::Service { proto, ports } => Some((*proto, *ports)),
            _ => None,
        })
        .collect()
}

/// A table entry as pfctl prints it: a bare address for a host, else CIDR.
pub fn addr_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// The input of `pfctl -a ANCHOR -t TABLE -T replace -f -`: one entry a
/// line (an empty input empties the table).
pub fn table_file(addrs: &BTreeSet<IpNet>) -> String {
    let mut out = String::new();
    for a in addrs {
        let _ = writeln!(out, "{}", addr_text(a));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_core::ruleset::LogSpec;
    use std::time::Duration;

    fn layout(ifaces: &[&str], action: Action, log: bool) -> Layout {
        Layout {
            table: "openclaw_egress".into(),
            interfaces: ifaces.iter().map(|s| s.to_string()).collect(),
            action,
            log: log.then(|| LogSpec {
                rate: 5,
                burst: 10,
                prefix: "openclaw-egress deny: ".into(),
            }),
            intra: egress_core::config::Intra::Deny,
            host_ports: vec![egress_core::config::HostPort {
                proto: Proto::Tcp,
                ports: PortRange::single(8080),
            }],
        }
    }

    fn attrs(comment: &str, timeout: Option<u64>) -> ElementAttrs {
        ElementAttrs {
            timeout: timeout.map(Duration::from_secs),
            comment: comment.into(),
        }
    }

    fn svc(addr: &str, proto: Proto, start: u16, end: u16) -> ElementKey {
        ElementKey::Service {
            addr: AddrRange::single(addr.parse().unwrap()),
            proto,
            ports: PortRange { start, end },
        }
    }

    fn small_elements() -> Elements {
        let mut e = Elements::new();
        e.insert(
            SetId::Svc4,
            svc("198.18.1.10", Proto::Tcp, 443, 443),
            attrs("api.example", Some(330)),
        );
        e.insert(
            SetId::Svc4,
            svc("198.18.1.11", Proto::Tcp, 443, 443),
            attrs("api.example", Some(330)),
        );
        e.insert(
            SetId::Svc6,
            svc("2001:db8::10", Proto::Tcp, 443, 443),
            attrs("api.example", Some(330)),
        );
        e.insert(
            SetId::Svc4,
            svc("198.18.2.1", Proto::Udp, 5000, 5010),
            attrs("198.18.2.1:5000-5010/udp", None),
        );
        e.insert(
            SetId::Any6,
            ElementKey::Range(AddrRange {
                start: "2001:db8::".parse().unwrap(),
                end: "2001:db8::ffff".parse().unwrap(),
            }),
            attrs("2001:db8::/112", None),
        );
        // Not a CIDR: three blocks.
        e.insert(
            SetId::Any4,
            ElementKey::Range(AddrRange {
                start: "198.18.3.1".parse().unwrap(),
                end: "198.18.3.4".parse().unwrap(),
            }),
            attrs("198.18.3.1-198.18.3.4", None),
        );
        e.insert(
            SetId::Dns4,
            ElementKey::Addr("198.18.1.53".parse().unwrap()),
            attrs("dns server", None),
        );
        e
    }

    /// The whole anchor file of a small ruleset, as `pfctl -a -f -` gets it.
    #[test]
    fn snapshot_of_the_anchor_file() {
        let tables = desired_tables(&small_elements());
        let a = Anchor::for_tables(
            "openclaw-egress",
            &layout(&["bridge100"], Action::Reject, true),
            &tables,
        )
        .unwrap();
        let fp = &a.fingerprint;
        let want = format!(
            r#"# openclaw-egress: pf anchor "openclaw-egress" (layout {fp}).
# Loaded by openclaw-egressd with `pfctl -a openclaw-egress -f -`; edits here are overwritten.
table <dns> persist {{ \
	198.18.1.53 \
}}
table <any_ports> persist {{ \
	198.18.3.1, \
	198.18.3.2/31, \
	198.18.3.4, \
	2001:db8::/112 \
}}
table <svc_tcp_443> persist {{ \
	198.18.1.10, \
	198.18.1.11, \
	2001:db8::10 \
}}
table <svc_udp_5000_5010> persist {{ \
	198.18.2.1 \
}}
pass in quick on bridge100 inet6 proto icmp6 from any to ff02::/16 icmp6-type routersol no state label "openclaw-egress:{fp}:nd"
pass in quick on bridge100 inet6 proto icmp6 from any to ff02::/16 icmp6-type neighbrsol no state label "openclaw-egress:{fp}:nd"
pass in quick on bridge100 inet6 proto icmp6 from any to fe80::/10 icmp6-type neighbrsol no state label "openclaw-egress:{fp}:nd"
pass in quick on bridge100 inet6 proto icmp6 from any to (bridge100) icmp6-type neighbrsol no state label "openclaw-egress:{fp}:nd"
pass in quick on bridge100 inet6 proto icmp6 from any to ff02::/16 icmp6-type neighbradv no state label "openclaw-egress:{fp}:nd"
pass in quick on bridge100 inet6 proto icmp6 from any to fe80::/10 icmp6-type neighbradv no state label "openclaw-egress:{fp}:nd"
pass in quick on bridge100 inet6 proto icmp6 from any to (bridge100) icmp6-type neighbradv no state label "openclaw-egress:{fp}:nd"
pass in quick on bridge100 proto udp from any to <dns> port 53 keep state label "openclaw-egress:{fp}:dns"
pass in quick on bridge100 proto tcp from any to <dns> port 53 flags S/SA keep state label "openclaw-egress:{fp}:dns"
pass in quick on bridge100 proto tcp from any to (self) port 8080 flags S/SA keep state label "openclaw-egress:{fp}:host"
block return in log quick on bridge100 from any to (self) label "openclaw-egress:{fp}:deny"
pass in quick on bridge100 proto tcp from any to <svc_tcp_443> port 443 flags S/SA keep state label "openclaw-egress:{fp}:svc"
pass in quick on bridge100 proto udp from any to <svc_udp_5000_5010> port 5000:5010 keep state label "openclaw-egress:{fp}:svc"
pass in quick on bridge100 proto tcp from any to <any_ports> flags S/SA keep state label "openclaw-egress:{fp}:any"
pass in quick on bridge100 proto udp from any to <any_ports> keep state label "openclaw-egress:{fp}:any"
block return in log quick on bridge100 all label "openclaw-egress:{fp}:deny"
"#
        );
        assert_eq!(a.rules_file(&tables), want);
        assert!(a.labels().iter().all(|l| l.len() <= LABEL_MAX));
    }

    /// Drop without logging, two interfaces, no addresses at all: the rules
    /// exist anyway (closed), and empty tables are declared without a list.
    #[test]
    fn snapshot_of_an_empty_drop_anchor_on_two_interfaces() {
        let tables = desired_tables(&Elements::new());
        let a = Anchor::for_tables(
            "oc",
            &layout(&["bridge100", "bridge101"], Action::Drop, false),
            &tables,
        )
        .unwrap();
        let file = a.rules_file(&tables);
        let fp = &a.fingerprint;
        let interesting: Vec<&str> = file
            .lines()
            .filter(|l| !l.contains("icmp6"))
            .skip(2)
            .collect();
        assert_eq!(
            interesting,
            [
                "table <dns> persist".to_string(),
                "table <any_ports> persist".to_string(),
                format!("pass in quick on bridge100 proto udp from any to <dns> port 53 keep state label \"openclaw-egress:{fp}:dns\""),
                format!("pass in quick on bridge100 proto tcp from any to <dns> port 53 flags S/SA keep state label \"openclaw-egress:{fp}:dns\""),
                format!("pass in quick on bridge100 proto tcp from any to (self) port 8080 flags S/SA keep state label \"openclaw-egress:{fp}:host\""),
                format!("block drop in quick on bridge100 from any to (self) label \"openclaw-egress:{fp}:deny\""),
                format!("pass in quick on bridge100 proto tcp from any to <any_ports> flags S/SA keep state label \"openclaw-egress:{fp}:any\""),
                format!("pass in quick on bridge100 proto udp from any to <any_ports> keep state label \"openclaw-egress:{fp}:any\""),
                format!("block drop in quick on bridge100 all label \"openclaw-egress:{fp}:deny\""),
                format!("pass in quick on bridge101 proto udp from any to <dns> port 53 keep state label \"openclaw-egress:{fp}:dns\""),
                format!("pass in quick on bridge101 proto tcp from any to <dns> port 53 flags S/SA keep state label \"openclaw-egress:{fp}:dns\""),
                format!("pass in quick on bridge101 proto tcp from any to (self) port 8080 flags S/SA keep state label \"openclaw-egress:{fp}:host\""),
                format!("block drop in quick on bridge101 from any to (self) label \"openclaw-egress:{fp}:deny\""),
                format!("pass in quick on bridge101 proto tcp from any to <any_ports> flags S/SA keep state label \"openclaw-egress:{fp}:any\""),
                format!("pass in quick on bridge101 proto udp from any to <any_ports> keep state label \"openclaw-egress:{fp}:any\""),
                format!("block drop in quick on bridge101 all label \"openclaw-egress:{fp}:deny\""),
            ]
        );
        assert_eq!(
            file.lines().filter(|l| l.contains("icmp6")).count(),
            14,
            "{file}"
        );
        assert_eq!(a.rules.len(), 2 * 14);
    }

    #[test]
    fn table_contents_are_cidr_blocks_per_group() {
        let t = desired_tables(&small_elements());
        let names: Vec<String> = t.keys().map(TableId::name).collect();
        assert_eq!(
            names,
            ["dns", "any_ports", "svc_tcp_443", "svc_udp_5000_5010"]
        );
        assert_eq!(
            table_file(
                &t[&TableId::Service {
                    proto: Proto::Tcp,
                    ports: PortRange::single(443)
                }]
            ),
            "198.18.1.10\n198.18.1.11\n2001:db8::10\n"
        );
        assert_eq!(
            table_file(&t[&TableId::AnyPorts]),
            "198.18.3.1\n198.18.3.2/31\n198.18.3.4\n2001:db8::/112\n"
        );
        assert_eq!(table_file(&BTreeSet::new()), "");
    }

    /// The rules depend on the layout and the groups, never on addresses:
    /// that is what lets an address change skip the rules.
    #[test]
    fn the_fingerprint_follows_rules_and_groups_not_addresses() {
        let l = layout(&["bridge100"], Action::Reject, true);
        let a = Anchor::for_tables("a", &l, &desired_tables(&small_elements())).unwrap();
        let mut other = small_elements();
        other.insert(
            SetId::Svc4,
            svc("198.18.9.9", Proto::Tcp, 443, 443),
            attrs("x", None),
        );
        let b = Anchor::for_tables("a", &l, &desired_tables(&other)).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        other.insert(
            SetId::Svc4,
            svc("198.18.9.9", Proto::Tcp, 8443, 8443),
            attrs("x", None),
        );
        let c = Anchor::for_tables("a", &l, &desired_tables(&other)).unwrap();
        assert_ne!(a.fingerprint, c.fingerprint);
        let d = Anchor::for_tables(
            "a",
            &layout(&["bridge100"], Action::Drop, true),
            &desired_tables(&small_elements()),
        )
        .unwrap();
        assert_ne!(a.fingerprint, d.fingerprint);
    }

    #[test]
    fn table_names_round_trip_and_reject_foreign_names() {
        for id in [
            TableId::Dns,
            TableId::AnyPorts,
            TableId::Service {
                proto: Proto::Tcp,
                ports: PortRange::single(443),
            },
            TableId::Service {
                proto: Proto::Udp,
                ports: PortRange {
                    start: 1,
                    end: 65535,
                },
            },
        ] {
            assert_eq!(TableId::from_name(&id.name()), Some(id));
        }
        for bad in [
            "svc_tcp_0443",
            "svc_icmp_1",
            "svc_tcp_5_4",
            "svc_tcp_0",
            "svc_tcp_443_443",
            "svc_tcp",
            "other",
            "",
        ] {
            assert_eq!(TableId::from_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_pf_cannot_take_are_refused_with_the_reason() {
        let tables = desired_tables(&Elements::new());
        let err = Anchor::for_tables("a", &layout(&["bad name"], Action::Drop, false), &tables)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "interface \"bad name\" cannot be used with pf: only letters, digits, '_', '-' and '.' are allowed"
        );
        let err = Anchor::for_tables("x\"y", &layout(&["bridge0"], Action::Drop, false), &tables)
            .unwrap_err();
        assert!(err.to_string().starts_with("anchor \"x\\\"y\""), "{err}");
    }

    #[test]
    fn pf_elements_are_cidr_pieces_without_timeouts() {
        let e = pf_elements(&small_elements());
        let any4: Vec<String> = e.set(SetId::Any4).map(|(k, _)| k.to_string()).collect();
        assert_eq!(any4, ["198.18.3.1", "198.18.3.2/31", "198.18.3.4"]);
        assert!(SetId::ALL
            .iter()
            .flat_map(|s| e.set(*s))
            .all(|(_, a)| a.timeout.is_none()));
        assert_eq!(
            e.get(SetId::Svc4, &svc("198.18.1.10", Proto::Tcp, 443, 443))
                .map(|a| a.comment.as_str()),
            Some("api.example")
        );
    }
}
