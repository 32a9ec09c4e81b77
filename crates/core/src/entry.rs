//! The meaning of one allowlist entry, independent of how it was written.
//!
//! `allowlist.rs` turns text into these values; `policy.rs` turns them (plus
//! DNS answers) into set elements. Keeping them apart means a future source of
//! entries (a control-socket `allow`, DNS-aware mode) reuses the same model.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Transport protocol of an entry with a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Proto {
    /// The IANA protocol number, as the kernel sees it in `meta l4proto`.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// Inverse of [`Proto::number`].
    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }

    /// Lower-case name as written in the allowlist and printed by nft.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An inclusive port range; `start <= end`, both in `1..=65535`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// First port of the range.
    pub start: u16,
    /// Last port of the range (inclusive).
    pub end: u16,
}

impl PortRange {
    /// A range of one port.
    pub fn single(port: u16) -> PortRange {
        PortRange {
            start: port,
            end: port,
        }
    }
}

impl PortRange {
    /// True when `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// What an entry allows on its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// A bare entry: every TCP and UDP port.
    AllPorts,
    /// One protocol on a port range.
    Ports {
        /// Protocol (TCP unless the entry says `/udp`).
        proto: Proto,
        /// The port or port range.
        ports: PortRange,
    },
}

impl Service {
    /// True when the service lets `proto`/`port` through.
    pub fn opens(&self, proto: Proto, port: u16) -> bool {
        match self {
            Service::AllPorts => true,
            Service::Ports { proto: p, ports } => *p == proto && ports.contains(port),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::AllPorts => f.write_str("all tcp/udp ports"),
            Service::Ports { proto, ports } => write!(f, "{ports}/{proto}"),
        }
    }
}

/// A DNS name, normalised: lower case, no trailing dot, every label valid.
///
/// Only `allowlist.rs` (and tests) construct it, after validation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostName(String);

impl HostName {
    /// Wraps an already validated, normalised name. Callers outside the
    /// parser should go through [`crate::allowlist::parse_host`].
    pub(crate) fn new_unchecked(name: String) -> HostName {
        HostName(name)
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an entry points: a name to resolve, or addresses taken as written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A hostname; its addresses come from an address source (DNS today).
    Host(HostName),
    /// An IP literal (as a /32 or /128) or a CIDR, taken as written.
    Net(IpNet),
}

impl Target {
    /// A single address as a host-length network.
    pub fn addr(addr: IpAddr) -> Target {
        Target::Net(IpNet::from(addr))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Host(h) => h.fmt(f),
            Target::Net(n) if n.prefix_len() == n.max_prefix_len() => n.addr().fmt(f),
            Target::Net(n) => n.fmt(f),
        }
    }
}

/// One allowlist entry: a target and what is allowed on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    /// Host or network.
    pub target: Target,
    /// Ports and protocol.
    pub service: Service,
}

impl fmt::Display for Entry {
    /// The canonical allowlist spelling (`host:443`, `[2001:db8::1]:53/udp`,
    /// `10.0.0.0/8`), which parses back to the same entry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = matches!(&self.target, Target::Net(IpNet::V6(_)));
        match self.service {
            Service::AllPorts => self.target.fmt(f),
            Service::Ports { proto, ports } => {
                if v6 {
                    write!(f, "[{}]:{ports}", self.target)?;
                } else {
                    write!(f, "{}:{ports}", self.target)?;
                }
                if proto != Proto::Tcp {
                    write!(f, "/{proto}")?;
                }
                Ok(())
            }
        }
    }
}

impl serde::Serialize for HostName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
