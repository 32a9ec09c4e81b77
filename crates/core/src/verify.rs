//! What `openclaw-egress verify` probes and how a result is judged. Pure:
//! the edge runs the probes (from a container or a namespace on the
//! bridge) and hands the results back here.
//!
//! Reachability is proven without listeners where it can be: a UDP datagram
//! answered by an ICMP *port unreachable* reached the destination's kernel,
//! while the firewall answers with *admin prohibited* (or nothing, with
//! `action = "drop"`). TCP is used where an agent would use it (every
//! allowlisted entry), and there a reset cannot tell the firewall from a
//! closed port, so it counts as not reached.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;

use crate::config::{Action, HostPort, Intra};
use crate::entry::{Entry, HostName, PortRange, Proto, Service, Target};

/// Where a probe goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dest {
    /// A name, resolved by the prober as an agent would (its resolv.conf).
    Name(HostName),
    /// An address.
    Addr(IpAddr),
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dest::Name(h) => write!(f, "{h}"),
            Dest::Addr(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Dest::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProbeKind {
    /// TCP connect to the first port that connects, tried in order.
    Tcp {
        /// Ports to try.
        ports: Vec<u16>,
    },
    /// One UDP datagram; waits for a reply or an ICMP error.
    Udp {
        /// Port.
        port: u16,
    },
    /// A DNS query for `name` (A) to the destination's port 53 over UDP.
    Dns {
        /// Name asked.
        name: String,
    },
    /// Resolve `name` the way the agent does (its resolv.conf).
    Resolve {
        /// Name asked.
        name: HostName,
    },
}

/// What must happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The destination must be reached.
    Reach,
    /// The firewall must stop it.
    Blocked,
}

/// One planned probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// What it checks, for people (`allowlisted: api.example:443`).
    pub what: String,
    /// Destination.
    pub dest: Dest,
    /// What it sends.
    #[serde(flatten)]
    pub kind: ProbeKind,
    /// What must happen.
    pub expect: Expect,
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "seen", content = "detail", rename_all = "snake_case")]
pub enum Seen {
    /// TCP handshake completed (on this port).
    Connected(u16),
    /// TCP reset: the firewall's reject, or a closed port.
    Refused,
    /// UDP: a reply came back.
    Answered,
    /// ICMP port unreachable: the datagram reached the destination's kernel.
    PortUnreachable,
    /// ICMP admin-prohibited / host unreachable: the firewall's reject.
    Prohibited(String),
    /// Nothing came back in time.
    TimedOut,
    /// DNS: an answer with these addresses.
    Resolved(Vec<IpAddr>),
    /// DNS: no usable answer (NXDOMAIN, no records, refused, timeout).
    NoDnsAnswer(String),
    /// The probe could not run (no route, name did not resolve, ...).
    Error(String),
}

impl Seen {
    /// True when the destination (or the resolver) was reached.
    pub fn reached(&self) -> bool {
        matches!(
            self,
            Seen::Connected(_) | Seen::Answered | Seen::PortUnreachable | Seen::Resolved(_)
        )
    }

    /// Words for the result table.
    pub fn describe(&self) -> String {
        match self {
            Seen::Connected(p) => format!("connected (port {p})"),
            Seen::Refused => "refused (TCP reset: the firewall, or a closed port)".into(),
            Seen::Answered => "answered".into(),
            Seen::PortUnreachable => "reached (ICMP port unreachable from the destination)".into(),
            Seen::Prohibited(e) => format!("refused by the firewall (ICMP: {e})"),
            Seen::TimedOut => "timed out".into(),
            Seen::Resolved(a) => {
                let a: Vec<String> = a.iter().map(|a| a.to_string()).collect();
                format!("resolved to {}", a.join(", "))
            }
            Seen::NoDnsAnswer(e) => format!("no DNS answer ({e})"),
            Seen::Error(e) => format!("error: {e}"),
        }
    }
}

/// A judged probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The probe.
    #[serde(flatten)]
    pub probe: Probe,
    /// What it saw.
    pub result: Seen,
    /// Whether the expectation holds.
    pub ok: bool,
    /// A remark (e.g. why a pass is weaker than it looks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Judges one result.
pub fn judge(probe: Probe, result: Seen, action: Action) -> Verdict {
    let (ok, note) = match probe.expect {
        Expect::Reach => match (&probe.kind, &result) {
            (_, r) if r.reached() => (true, None),
            // A UDP service may simply not answer; the firewall would have
            // said "prohibited" (reject) or stayed silent (drop).
            (ProbeKind::Udp { .. }, Seen::TimedOut) if action == Action::Reject => (
                true,
                Some(
                    "no reply and no ICMP error: not refused, but delivery is unproven (UDP)"
                        .into(),
                ),
            ),
            (ProbeKind::Tcp { .. }, Seen::Refused) => (
                false,
                Some("a reset: blocked here, or nothing listens on that port".into()),
            ),
            _ => (false, None),
        },
        Expect::Blocked => match &result {
            r if r.reached() => (false, Some("reached: the firewall let it through".into())),
            Seen::Error(_) => (
                false,
                Some("the probe could not run, so nothing is shown".into()),
            ),
            Seen::TimedOut if action == Action::Reject => (
                true,
                Some(
                    "timed out where this firewall answers with a reject: dropped elsewhere?"
                        .into(),
                ),
            ),
            _ => (true, None),
        },
    };
    Verdict {
        probe,
        result,
        ok,
        note,
    }
}

/// Everything the planner needs to know.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// Deduplicated allowlist entries.
    pub entries: &'a [Entry],
    /// DNS servers containers may use.
    pub dns_allow: &'a [IpAddr],
    /// The firewall's action.
    pub action: Action,
    /// Containers of the network reaching each other.
    pub intra: Intra,
    /// Ports of the host containers may reach.
    pub host_ports: &'a [HostPort],
    /// The network's gateways (the host on the bridge).
    pub gateways: &'a [IpAddr],
    /// Whether the network has IPv6.
    pub ipv6: bool,
    /// An address that is not allowlisted, probed on TCP 443 and UDP.
    pub unlisted: IpAddr,
    /// Another container (or namespace) on the same network.
    pub peer: Option<IpAddr>,
    /// Published ports of containers on other networks: label, the
    /// container's address and port, the host port.
    pub published: &'a [(String, SocketAddr, u16)],
}

/// The cloud metadata address (AWS, GCP, Azure, OpenStack, ...).
pub const METADATA: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));

/// A UDP port nothing is expected to listen on (traceroute's first port),
/// so a reached destination answers "port unreachable".
pub const SILENT_UDP_PORT: u16 = 33434;

/// True when an IP/CIDR entry of the allowlist opens `addr` `proto`/`port`
/// (hostname entries cannot be judged without resolving them; they do not
/// count).
pub fn listed(entries: &[Entry], addr: IpAddr, proto: Proto, port: u16) -> bool {
    entries.iter().any(|e| {
        let Target::Net(n) = &e.target else {
            return false;
        };
        n.contains(&addr) && e.service.opens(proto, port)
    })
}

fn host_port_listed(host_ports: &[HostPort], proto: Proto, port: u16) -> bool {
    host_ports
        .iter()
        .any(|h| h.proto == proto && h.ports.contains(port))
}

fn dest_of(t: &Target) -> Option<Dest> {
    match t {
        Target::Host(h) => Some(Dest::Name(h.clone())),
        Target::Net(n) if n.prefix_len() == n.max_prefix_len() => Some(Dest::Addr(n.addr())),
        Target::Net(_) => None,
    }
}

/// Does any entry for the same target open `proto`/`port`?
fn target_opens(entries: &[Entry], t: &Target, proto: Proto, port: u16) -> bool {
    entries
        .iter()
        .any(|e| e.target == *t && e.service.opens(proto, port))
}

/// The probes for `ctx`, in the order they are reported.
pub fn plan(ctx: &Context<'_>) -> Vec<Probe> {
    let mut out = Vec::new();
    let tcp = |ports: Vec<u16>| ProbeKind::Tcp { ports };
    // Every allowlisted entry is reachable.
    for e in ctx.entries {
        let Some(dest) = dest_of(&e.target) else {
            continue;
        };
        let kind = match e.service {
            Service::AllPorts => tcp(vec![443, 80]),
            Service::Ports {
                proto: Proto::Tcp,
                ports,
            } => tcp(vec![ports.start]),
            Service::Ports {
                proto: Proto::Udp,
                ports,
            } => ProbeKind::Udp { port: ports.start },
        };
        out.push(Probe {
            what: format!("allowlisted: {e}"),
            dest,
            kind,
            expect: Expect::Reach,
        });
    }
    // DNS through the agent's resolver.
    if let Some(h) = ctx.entries.iter().find_map(|e| match &e.target {
        Target::Host(h) => Some(h.clone()),
        Target::Net(_) => None,
    }) {
        out.push(Probe {
            what: "dns: an allowlisted name resolves".into(),
            dest: Dest::Name(h.clone()),
            kind: ProbeKind::Resolve { name: h },
            expect: Expect::Reach,
        });
    }
    for s in ctx.dns_allow {
        out.push(Probe {
            what: "dns: an allowed server answers".into(),
            dest: Dest::Addr(*s),
            kind: ProbeKind::Dns {
                name: "localhost".into(),
            },
            expect: Expect::Reach,
        });
    }
    // Must fail: an unlisted address.
    if !listed(ctx.entries, ctx.unlisted, Proto::Tcp, 443) {
        out.push(Probe {
            what: "unlisted address, tcp/443".into(),
            dest: Dest::Addr(ctx.unlisted),
            kind: tcp(vec![443]),
            expect: Expect::Blocked,
        });
    }
    if !listed(ctx.entries, ctx.unlisted, Proto::Udp, SILENT_UDP_PORT) {
        out.push(Probe {
            what: "unlisted address, udp".into(),
            dest: Dest::Addr(ctx.unlisted),
            kind: ProbeKind::Udp {
                port: SILENT_UDP_PORT,
            },
            expect: Expect::Blocked,
        });
    }
    // Must fail: another port, port 53 and UDP on an allowed address.
    let tcp_entry = ctx.entries.iter().find_map(|e| match e.service {
        Service::Ports {
            proto: Proto::Tcp,
            ports,
        } => dest_of(&e.target).map(|d| (e, d, ports)),
        _ => None,
    });
    if let Some((e, dest, ports)) = tcp_entry {
        let other = other_port(ports);
        if !target_opens(ctx.entries, &e.target, Proto::Tcp, other) {
            out.push(Probe {
                what: format!(
                    "another port of an allowed destination ({} tcp/{other})",
                    e.target
                ),
                dest: dest.clone(),
                kind: tcp(vec![other]),
                expect: Expect::Blocked,
            });
        }
        let is_dns_server = matches!(dest, Dest::Addr(a) if ctx.dns_allow.contains(&a));
        if !is_dns_server && !target_opens(ctx.entries, &e.target, Proto::Udp, 53) {
            out.push(Probe {
                what: format!(
                    "port 53 of an address that is not a DNS server ({})",
                    e.target
                ),
                dest: dest.clone(),
                kind: ProbeKind::Dns {
                    name: "localhost".into(),
                },
                expect: Expect::Blocked,
            });
        }
        if !target_opens(ctx.entries, &e.target, Proto::Udp, ports.start) {
            out.push(Probe {
                what: format!(
                    "udp to an address allowed for tcp ({} udp/{})",
                    e.target, ports.start
                ),
                dest,
                kind: ProbeKind::Udp { port: ports.start },
                expect: Expect::Blocked,
            });
        }
    }
    // The host itself, through the network's gateway.
    for gw in ctx.gateways {
        // ssh, Docker's TCP API, a common web port; else any free one.
        let port = [22u16, 2375, 8080]
            .into_iter()
            .chain(1..=u16::MAX)
            .find(|p| !host_port_listed(ctx.host_ports, Proto::Tcp, *p))
            .unwrap_or(1);
        out.push(Probe {
            what: format!("the host through the gateway, tcp/{port}"),
            dest: Dest::Addr(*gw),
            kind: tcp(vec![port]),
            expect: Expect::Blocked,
        });
        if !host_port_listed(ctx.host_ports, Proto::Udp, SILENT_UDP_PORT) {
            out.push(Probe {
                what: "the host through the gateway, udp".into(),
                dest: Dest::Addr(*gw),
                kind: ProbeKind::Udp {
                    port: SILENT_UDP_PORT,
                },
                expect: Expect::Blocked,
            });
        }
        for hp in ctx.host_ports {
            let kind = match hp.proto {
                Proto::Tcp => tcp(vec![hp.ports.start]),
                Proto::Udp => ProbeKind::Udp {
                    port: hp.ports.start,
                },
            };
            out.push(Probe {
                what: format!("host port {hp} ([network] host_ports)"),
                dest: Dest::Addr(*gw),
                kind,
                expect: Expect::Reach,
            });
        }
    }
    // Another container on the same network.
    if let Some(peer) = ctx.peer {
        out.push(Probe {
            what: format!(
                "another container on the network (intra = \"{}\")",
                ctx.intra.as_str()
            ),
            dest: Dest::Addr(peer),
            kind: ProbeKind::Udp {
                port: SILENT_UDP_PORT,
            },
            expect: match ctx.intra {
                Intra::Allow => Expect::Reach,
                Intra::Deny => Expect::Blocked,
            },
        });
    }
    // Published ports of containers on other networks: through the host's
    // address (Docker's DNAT) and directly.
    for (label, addr, host_port) in ctx.published {
        let allowed = listed(ctx.entries, addr.ip(), Proto::Tcp, addr.port());
        let expect = if allowed {
            Expect::Reach
        } else {
            Expect::Blocked
        };
        if let Some(gw) = ctx.gateways.iter().find(|g| g.is_ipv4() == addr.is_ipv4()) {
            out.push(Probe {
                what: format!(
                    "published port {host_port} of {label} on another network, via the host"
                ),
                dest: Dest::Addr(*gw),
                kind: tcp(vec![*host_port]),
                expect,
            });
        }
        out.push(Probe {
            what: format!("{label} on another network, directly ({addr})"),
            dest: Dest::Addr(addr.ip()),
            kind: tcp(vec![addr.port()]),
            expect,
        });
    }
    // The cloud metadata service.
    if !listed(ctx.entries, METADATA, Proto::Tcp, 80) {
        out.push(Probe {
            what: "cloud metadata 169.254.169.254, tcp/80".into(),
            dest: Dest::Addr(METADATA),
            kind: tcp(vec![80]),
            expect: Expect::Blocked,
        });
    }
    if ctx.ipv6 {
        let v6: IpAddr = "2001:db8::1".parse().expect("literal");
        if !listed(ctx.entries, v6, Proto::Tcp, 443) {
            out.push(Probe {
                what: "unlisted IPv6 address, tcp/443".into(),
                dest: Dest::Addr(v6),
                kind: tcp(vec![443]),
                expect: Expect::Blocked,
            });
        }
    }
    out
}

/// A port next to `ports` (above, or below at the top of the range).
fn other_port(ports: PortRange) -> u16 {
    if ports.end < u16::MAX {
        ports.end + 1
    } else {
        ports.start.saturating_sub(1).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist::parse_entry;

    fn entries(list: &[&str]) -> Vec<Entry> {
        list.iter().map(|s| parse_entry(s).unwrap()).collect()
    }

    fn ctx<'a>(e: &'a [Entry], gw: &'a [IpAddr], hp: &'a [HostPort]) -> Context<'a> {
        Context {
            entries: e,
            dns_allow: &[],
            action: Action::Reject,
            intra: Intra::Deny,
            host_ports: hp,
            gateways: gw,
            ipv6: false,
            unlisted: "192.0.2.1".parse().unwrap(),
            peer: None,
            published: &[],
        }
    }

    fn whats(p: &[Probe]) -> Vec<String> {
        p.iter()
            .map(|p| format!("{:?} {} {:?} {}", p.expect, p.dest, p.kind, p.what))
            .collect()
    }

    #[test]
    fn every_entry_is_probed_as_an_agent_would_use_it() {
        let e = entries(&[
            "api.example:443",
            "cdn.example",
            "198.18.1.10:8000-8010",
            "198.18.1.12:5353/udp",
            "10.0.0.0/8",
        ]);
        let p = plan(&ctx(&e, &[], &[]));
        let w = whats(&p);
        assert!(
            w[0].starts_with("Reach api.example Tcp { ports: [443] }"),
            "{w:#?}"
        );
        assert!(
            w[1].starts_with("Reach cdn.example Tcp { ports: [443, 80] }"),
            "{w:#?}"
        );
        assert!(
            w[2].starts_with("Reach 198.18.1.10 Tcp { ports: [8000] }"),
            "{w:#?}"
        );
        assert!(
            w[3].starts_with("Reach 198.18.1.12 Udp { port: 5353 }"),
            "{w:#?}"
        );
        // A range is not one destination: not probed.
        assert!(!w.iter().any(|x| x.contains("10.0.0.0")), "{w:#?}");
        assert!(w[4].starts_with("Reach api.example Resolve"), "{w:#?}");
        // The must-fail set, built on the first TCP entry.
        let blocked: Vec<&String> = w.iter().filter(|x| x.starts_with("Blocked")).collect();
        assert_eq!(blocked.len(), 6, "{blocked:#?}");
        assert!(blocked[0].contains("192.0.2.1 Tcp { ports: [443] }"));
        assert!(blocked[1].contains("192.0.2.1 Udp"));
        assert!(blocked[2].contains("api.example Tcp { ports: [444] }"));
        assert!(blocked[3].contains("api.example Dns"));
        assert!(blocked[4].contains("api.example Udp { port: 443 }"));
        assert!(blocked[5].contains("169.254.169.254 Tcp { ports: [80] }"));
    }

    #[test]
    fn must_fail_probes_skip_what_the_allowlist_opens() {
        let e = entries(&[
            "198.18.1.10:443",
            "198.18.1.10:444",
            "198.18.1.10:53/udp",
            "198.18.1.10:443/udp",
            "192.0.2.0/24",
            "169.254.169.254:80",
        ]);
        let w = whats(&plan(&ctx(&e, &[], &[])));
        let blocked: Vec<&String> = w.iter().filter(|x| x.starts_with("Blocked")).collect();
        assert!(blocked.is_empty(), "{blocked:#?}");
    }

    #[test]
    fn the_host_is_probed_on_a_port_not_listed_and_listed_ports_must_reach() {
        let e = entries(&[]);
        let gw: Vec<IpAddr> = vec!["172.30.0.1".parse().unwrap()];
        let hp = vec![
            HostPort {
                proto: Proto::Tcp,
                ports: PortRange::single(22),
            },
            HostPort {
                proto: Proto::Udp,
                ports: PortRange {
                    start: 5000,
                    end: 5010,
                },
            },
        ];
        let w = whats(&plan(&ctx(&e, &gw, &hp)));
        assert_eq!(
            w[2..6],
            [
                "Blocked 172.30.0.1 Tcp { ports: [2375] } the host through the gateway, tcp/2375",
                "Blocked 172.30.0.1 Udp { port: 33434 } the host through the gateway, udp",
                "Reach 172.30.0.1 Tcp { ports: [22] } host port tcp/22 ([network] host_ports)",
                "Reach 172.30.0.1 Udp { port: 5000 } host port udp/5000-5010 ([network] host_ports)",
            ]
        );
    }

    #[test]
    fn intra_published_ports_and_ipv6_follow_the_settings() {
        let e = entries(&["172.19.0.5:80"]);
        let gw: Vec<IpAddr> = vec!["172.30.0.1".parse().unwrap()];
        let published = vec![
            ("web".to_owned(), "172.19.0.5:80".parse().unwrap(), 8081),
            ("db".to_owned(), "172.19.0.6:5432".parse().unwrap(), 5432),
        ];
        let mut c = ctx(&e, &gw, &[]);
        c.peer = Some("172.30.0.3".parse().unwrap());
        c.published = &published;
        c.ipv6 = true;
        let w = whats(&plan(&c));
        let find = |needle: &str| {
            w.iter()
                .find(|x| x.contains(needle))
                .unwrap_or_else(|| panic!("{needle} not in {w:#?}"))
                .clone()
        };
        assert!(find("another container").starts_with("Blocked 172.30.0.3 Udp"));
        assert!(find("port 8081 of web").starts_with("Reach 172.30.0.1 Tcp { ports: [8081] }"));
        assert!(find("web on another network, directly").starts_with("Reach 172.19.0.5"));
        assert!(find("port 5432 of db").starts_with("Blocked 172.30.0.1"));
        assert!(find("db on another network, directly").starts_with("Blocked 172.19.0.6"));
        assert!(find("IPv6").starts_with("Blocked [2001:db8::1]"));
        c.intra = Intra::Allow;
        let w = whats(&plan(&c));
        assert!(
            w.iter().any(|x| x.starts_with("Reach 172.30.0.3 Udp")),
            "{w:#?}"
        );
    }

    fn probe(kind: ProbeKind, expect: Expect) -> Probe {
        Probe {
            what: "x".into(),
            dest: Dest::Addr("192.0.2.1".parse().unwrap()),
            kind,
            expect,
        }
    }

    #[test]
    fn judging_results() {
        let tcp = || ProbeKind::Tcp { ports: vec![443] };
        let udp = || ProbeKind::Udp { port: 1 };
        let cases = [
            (
                tcp(),
                Expect::Reach,
                Seen::Connected(443),
                Action::Reject,
                true,
            ),
            (tcp(), Expect::Reach, Seen::Refused, Action::Reject, false),
            (tcp(), Expect::Reach, Seen::TimedOut, Action::Reject, false),
            (
                udp(),
                Expect::Reach,
                Seen::PortUnreachable,
                Action::Reject,
                true,
            ),
            (udp(), Expect::Reach, Seen::TimedOut, Action::Reject, true),
            (udp(), Expect::Reach, Seen::TimedOut, Action::Drop, false),
            (
                udp(),
                Expect::Reach,
                Seen::Prohibited("x".into()),
                Action::Reject,
                false,
            ),
            (tcp(), Expect::Blocked, Seen::Refused, Action::Reject, true),
            (tcp(), Expect::Blocked, Seen::TimedOut, Action::Drop, true),
            (tcp(), Expect::Blocked, Seen::TimedOut, Action::Reject, true),
            (
                tcp(),
                Expect::Blocked,
                Seen::Connected(443),
                Action::Reject,
                false,
            ),
            (
                udp(),
                Expect::Blocked,
                Seen::PortUnreachable,
                Action::Reject,
                false,
            ),
            (
                udp(),
                Expect::Blocked,
                Seen::Answered,
                Action::Reject,
                false,
            ),
            (
                udp(),
                Expect::Blocked,
                Seen::Prohibited("x".into()),
                Action::Reject,
                true,
            ),
            (
                udp(),
                Expect::Blocked,
                Seen::Error("no route".into()),
                Action::Reject,
                false,
            ),
        ];
        for (kind, expect, seen, action, ok) in cases {
            let v = judge(probe(kind.clone(), expect), seen.clone(), action);
            assert_eq!(v.ok, ok, "{kind:?} {expect:?} {seen:?} {action:?}");
        }
        let v = judge(
            probe(tcp(), Expect::Blocked),
            Seen::TimedOut,
            Action::Reject,
        );
        assert!(v.note.unwrap().contains("dropped elsewhere"));
    }
}
