//! Allowlist + address answers -> desired set elements.
//!
//! Addresses reach the policy as [`AddressAnswer`]s from whatever source
//! produced them (the one-shot resolver, the daemon's TTL scheduler, later a
//! DNS-aware proxy); nothing here knows how they were obtained. Each answer
//! carries how long it may stay allowed, which becomes the element timeout.
//!
//! Two rules hold here:
//! - a hostname never opens a private or special-purpose address (DNS
//!   rebinding, cloud metadata at 169.254.169.254) unless the operator listed
//!   it in `allow_private`; explicit IP/CIDR entries are taken as written;
//! - overlapping entries are merged into disjoint intervals, because the
//!   kernel's interval sets refuse overlaps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;

use crate::config::Config;
use crate::entry::{Entry, HostName, PortRange, Proto, Service, Target};
use crate::ruleset::{
    addr_value, AddrRange, ElementAttrs, ElementKey, Elements, Family, Layout, LogSpec, SetId,
};

/// One address a source says a host has, and how long it may stay allowed
/// from now (TTL plus grace, as the source computes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressAnswer {
    /// The address.
    pub addr: IpAddr,
    /// Remaining allowed lifetime.
    pub lifetime: Duration,
}

/// Answers per hostname. A host that is absent has no usable answer (yet):
/// it gets no addresses, so it stays closed.
pub type Answers = BTreeMap<HostName, Vec<AddressAnswer>>;

/// An answer the policy refused to allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The host whose answer it was.
    pub host: HostName,
    /// The address.
    pub addr: IpAddr,
    /// Which special range it falls in.
    pub reason: &'static str,
}

/// Result of [`desired_elements`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyOutcome {
    /// The set contents to enforce.
    pub elements: Elements,
    /// Answers dropped because they point into private/special ranges.
    pub refused: Vec<Refusal>,
    /// Hostnames of the allowlist without any answer.
    pub unresolved: Vec<HostName>,
}

/// The layout for a config and the interfaces to filter.
pub fn layout(config: &Config, interfaces: Vec<String>) -> Layout {
    let fw = &config.firewall;
    Layout {
        table: fw.table.clone(),
        interfaces,
        action: fw.action,
        log: (fw.log_rate > 0).then(|| LogSpec {
            rate: fw.log_rate,
            burst: fw.log_burst,
            prefix: fw.log_prefix.clone(),
        }),
        intra: config.network.intra,
        host_ports: config.network.host_ports.clone(),
    }
}

/// Computes the elements for `entries` (deduplicated allowlist entries),
/// the `answers` for their hostnames, and the DNS servers containers may use.
pub fn desired_elements(
    entries: &[Entry],
    answers: &Answers,
    dns_servers: &[IpAddr],
    allow_private: &[IpNet],
) -> PolicyOutcome {
    let mut out = PolicyOutcome::default();
    let mut rects: BTreeMap<(SetId, Option<Proto>), Vec<Rect>> = BTreeMap::new();
    let mut seen_unresolved = BTreeSet::new();
    let mut seen_refused = BTreeSet::new();

    for entry in entries {
        // (address range, lifetime, comment) for this entry.
        let mut spans: Vec<(IpAddr, IpAddr, Lifetime, String)> = Vec::new();
        match &entry.target {
            Target::Net(net) => {
                spans.push((
                    net.network(),
                    net.broadcast(),
                    Lifetime::Permanent,
                    entry.to_string(),
                ));
            }
            Target::Host(host) => match answers.get(host) {
                None => {
                    if seen_unresolved.insert(host.clone()) {
                        out.unresolved.push(host.clone());
                    }
                }
                Some(list) => {
                    for a in list {
                        // An IPv4-mapped answer (`::ffff:a.b.c.d`) is the IPv4
                        // address for filtering: the kernel sees IPv4 packets.
                        let addr = a.addr.to_canonical();
                        let refused =
                            special_range(addr).filter(|_| !allowed_private(addr, allow_private));
                        if let Some(reason) = refused {
                            if seen_refused.insert((host.clone(), addr)) {
                                out.refused.push(Refusal {
                                    host: host.clone(),
                                    addr,
                                    reason,
                                });
                            }
                            continue;
                        }
                        spans.push((
                            addr,
                            addr,
                            Lifetime::For(a.lifetime),
                            host.as_str().to_owned(),
                        ));
                    }
                }
            },
        }
        for (start, end, lifetime, name) in spans {
            let family = Family::of(&start);
            let label = Label {
                lifetime,
                names: BTreeSet::from([name]),
            };
            let (set, plo, phi) = match entry.service {
                Service::AllPorts => ((SetId::any(family), None), 0, 0),
                Service::Ports { proto, ports } => (
                    (SetId::svc(family), Some(proto)),
                    u32::from(ports.start),
                    u32::from(ports.end),
                ),
            };
            rects.entry(set).or_default().push(Rect {
                lo: addr_value(&start),
                hi: addr_value(&end),
                plo,
                phi,
                label,
            });
        }
    }

    for ((set, proto), list) in rects {
        let family = set.family();
        for piece in cover(list, family.max_value()) {
            let addr = AddrRange {
                start: family.addr(piece.lo),
                end: family.addr(piece.hi),
            };
            let key = match proto {
                Some(proto) => ElementKey::Service {
                    addr,
                    proto,
                    ports: PortRange {
                        start: piece.plo as u16,
                        end: piece.phi as u16,
                    },
                },
                None => ElementKey::Range(addr),
            };
            out.elements.insert(set, key, piece.label.attrs());
        }
    }

    for server in dns_servers {
        let server = server.to_canonical();
        out.elements.insert(
            SetId::dns(Family::of(&server)),
            ElementKey::Addr(server),
            ElementAttrs {
                timeout: None,
                comment: "dns server".into(),
            },
        );
    }
    out
}

fn allowed_private(addr: IpAddr, allow: &[IpNet]) -> bool {
    let embedded = match addr {
        IpAddr::V6(v6) => embedded_v4(v6).map(|(v4, _)| IpAddr::V4(v4)),
        IpAddr::V4(_) => None,
    };
    allow
        .iter()
        .any(|n| n.contains(&addr) || embedded.is_some_and(|e| n.contains(&e)))
}

/// If `addr` is in a private or special-purpose range that a hostname must
/// not open, the name of that range.
pub fn special_range(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

const V4_SPECIAL: &[([u8; 4], u8, &str)] = &[
    ([0, 0, 0, 0], 8, "\"this network\" (0.0.0.0/8)"),
    ([10, 0, 0, 0], 8, "private (RFC 1918, 10.0.0.0/8)"),
    ([100, 64, 0, 0], 10, "carrier-grade NAT (100.64.0.0/10)"),
    ([127, 0, 0, 0], 8, "loopback (127.0.0.0/8)"),
    (
        [169, 254, 0, 0],
        16,
        "link-local (169.254.0.0/16, includes cloud metadata 169.254.169.254)",
    ),
    ([172, 16, 0, 0], 12, "private (RFC 1918, 172.16.0.0/12)"),
    (
        [192, 0, 0, 0],
        24,
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    ([192, 0, 2, 0], 24, "documentation (192.0.2.0/24)"),
    ([192, 168, 0, 0], 16, "private (RFC 1918, 192.168.0.0/16)"),
    ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
    ([198, 51, 100, 0], 24, "documentation (198.51.100.0/24)"),
    ([203, 0, 113, 0], 24, "documentation (203.0.113.0/24)"),
    ([224, 0, 0, 0], 4, "multicast (224.0.0.0/4)"),
    (
        [240, 0, 0, 0],
        4,
        "reserved (240.0.0.0/4, includes broadcast)",
    ),
];

fn special_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let a = u32::from(v4);
    V4_SPECIAL.iter().find_map(|(net, len, name)| {
        let n = u32::from(Ipv4Addr::from(*net));
        let mask = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
        (a & mask == n).then_some(*name)
    })
}

/// Refusal reason of an address in the Teredo prefix (2001::/32).
const TEREDO_SPECIAL: &str = "Teredo form of a special IPv4 range";

/// IPv4 addresses embedded in IPv6 forms that carry traffic to them
/// (mapped, compatible, NAT64, 6to4, Teredo), with the refusal reason for
/// when that IPv4 address is special.
fn embedded_v4(v6: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let s = v6.segments();
    let o = v6.octets();
    let low32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some((v4, "IPv4-mapped form of a special IPv4 range"));
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && u128::from(v6) > 1 {
        return Some((low32, "IPv4-compatible form of a special IPv4 range"));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some((low32, "NAT64 form of a special IPv4 range"));
    }
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new(o[2], o[3], o[4], o[5]);
        return Some((v4, "6to4 form of a special IPv4 range"));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        // Teredo obfuscates the client address by inverting its bits.
        let client = Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]);
        return Some((client, TEREDO_SPECIAL));
    }
    None
}

fn special_v6(v6: Ipv6Addr) -> Option<&'static str> {
    let v = u128::from(v6);
    if v == 0 {
        return Some("unspecified (::)");
    }
    if v == 1 {
        return Some("loopback (::1)");
    }
    if let Some((v4, reason)) = embedded_v4(v6) {
        if special_v4(v4).is_some() {
            return Some(reason);
        }
        // Teredo servers are also embedded; check the server field too.
        if reason == TEREDO_SPECIAL {
            let o = v6.octets();
            if special_v4(Ipv4Addr::new(o[4], o[5], o[6], o[7])).is_some() {
                return Some(TEREDO_SPECIAL);
            }
        }
    }
    const V6_SPECIAL: &[(u128, u8, &str)] = &[
        (
            0x0064_ff9b_0001 << 80,
            48,
            "local-use NAT64 (64:ff9b:1::/48)",
        ),
        (0x0100 << 112, 64, "discard-only (100::/64)"),
        (0x2001_0db8 << 96, 32, "documentation (2001:db8::/32)"),
        (0xfc00 << 112, 7, "unique local (fc00::/7)"),
        (0xfe80 << 112, 10, "link-local (fe80::/10)"),
        (0xfec0 << 112, 10, "site-local (fec0::/10, deprecated)"),
        (0xff00 << 112, 8, "multicast (ff00::/8)"),
    ];
    V6_SPECIAL.iter().find_map(|(net, len, name)| {
        let mask = u128::MAX << (128 - u32::from(*len));
        (v & mask == *net).then_some(*name)
    })
}

/// How long an element lives. `Permanent` outranks any duration: a literal
/// entry covering a resolved address keeps it open for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Lifetime {
    For(Duration),
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Label {
    lifetime: Lifetime,
    names: BTreeSet<String>,
}

/// Longest element comment; nftnl's limit is 128 bytes with the NUL.
const MAX_COMMENT: usize = 120;

impl Label {
    fn merge(&mut self, other: &Label) {
        self.lifetime = self.lifetime.max(other.lifetime);
        self.names.extend(other.names.iter().cloned());
    }

    fn attrs(&self) -> ElementAttrs {
        let mut comment = String::new();
        let total = self.names.len();
        for (i, n) in self.names.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let more = format!(" +{} more", total - i);
            // Room must stay for the "+N more" of the names after this one;
            // the last name needs none.
            let reserve = if i + 1 < total { more.len() } else { 0 };
            if comment.len() + sep.len() + n.len() + reserve > MAX_COMMENT {
                comment.push_str(&more);
                break;
            }
            comment.push_str(sep);
            comment.push_str(n);
        }
        ElementAttrs {
            timeout: match self.lifetime {
                Lifetime::Permanent => None,
                Lifetime::For(d) => Some(d),
            },
            comment,
        }
    }
}

/// An address range times a port range (ports unused, `0..=0`, for
/// address-only sets).
#[derive(Debug, Clone)]
struct Rect {
    lo: u128,
    hi: u128,
    plo: u32,
    phi: u32,
    label: Label,
}

/// An address segment `lo..=hi` with its disjoint port pieces.
type Segment = (u128, u128, Vec<(u32, u32, Label)>);

/// Cuts possibly overlapping rectangles into disjoint ones whose labels
/// merge the labels of everything covering them, then joins neighbours with
/// identical labels again. A sweep over the address axis: between two
/// consecutive boundaries the set of covering rectangles is constant, and
/// within it a second sweep over the port axis does the same.
fn cover(mut rects: Vec<Rect>, max: u128) -> Vec<Rect> {
    rects.sort_by_key(|r| r.lo);
    let mut points: Vec<u128> = Vec::with_capacity(rects.len() * 2);
    for r in &rects {
        points.push(r.lo);
        if r.hi < max {
            points.push(r.hi + 1);
        }
    }
    points.sort_unstable();
    points.dedup();

    let mut out = Vec::new();
    // Previous address segment: its range and its port pieces.
    let mut prev: Option<Segment> = None;
    let mut active: Vec<usize> = Vec::new();
    let mut next = 0;
    for (i, &seg_lo) in points.iter().enumerate() {
        let seg_hi = points.get(i + 1).map_or(max, |p| p - 1);
        while next < rects.len() && rects[next].lo == seg_lo {
            active.push(next);
            next += 1;
        }
        active.retain(|&k| rects[k].hi >= seg_lo);
        if active.is_empty() {
            flush(&mut prev, &mut out);
            continue;
        }
        let pieces = cover_ports(active.iter().map(|&k| &rects[k]));
        match &mut prev {
            Some((_, hi, p)) if *hi + 1 == seg_lo && *p == pieces => *hi = seg_hi,
            _ => {
                flush(&mut prev, &mut out);
                prev = Some((seg_lo, seg_hi, pieces));
            }
        }
    }
    flush(&mut prev, &mut out);
    out
}

fn flush(prev: &mut Option<Segment>, out: &mut Vec<Rect>) {
    if let Some((lo, hi, pieces)) = prev.take() {
        for (plo, phi, label) in pieces {
            out.push(Rect {
                lo,
                hi,
                plo,
                phi,
                label,
            });
        }
    }
}

fn cover_ports<'a>(rects: impl Iterator<Item = &'a Rect>) -> Vec<(u32, u32, Label)> {
    let rects: Vec<&Rect> = rects.collect();
    let mut points: Vec<u32> = rects.iter().flat_map(|r| [r.plo, r.phi + 1]).collect();
    points.sort_unstable();
    points.dedup();
    let mut out: Vec<(u32, u32, Label)> = Vec::new();
    for w in points.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let mut label: Option<Label> = None;
        for r in rects.iter().filter(|r| r.plo <= lo && r.phi >= hi) {
            match &mut label {
                Some(l) => l.merge(&r.label),
                None => label = Some(r.label.clone()),
            }
        }
        let Some(label) = label else { continue };
        match out.last_mut() {
            Some((_, phi, l)) if *phi + 1 == lo && *l == label => *phi = hi,
            _ => out.push((lo, hi, label)),
        }
    }
    out
}

#[cfg(test)]
mod tests;
