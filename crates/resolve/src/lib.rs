//! Address source for allowlisted host names: A and AAAA lookups with TTLs.
//!
//! The daemon asks this crate for the addresses of every host name in the
//! allowlist and asks again when an answer's TTL runs out. That schedule only
//! works if every call really goes to the DNS server and reports the TTL the
//! server gave, so the underlying hickory resolver runs without a cache,
//! without `/etc/hosts` and without search domains (allowlist names are
//! absolute).
//!
//! Every host and address family gets its own [`Outcome`]: one name failing,
//! or one family failing for a name, never hides the answers of the others.

#![warn(missing_docs)]

mod resolv_conf;
mod resolver;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use egress_core::HostName;

pub use resolv_conf::{
    configured_servers, parse_resolv_conf, read_resolv_conf, system_servers, RESOLV_CONF,
};
pub use resolver::Resolver;

/// How a [`Resolver`] talks to DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Recursive DNS servers to ask (at least one). Usually port 53, but any
    /// port is honoured.
    pub servers: Vec<SocketAddr>,
    /// Time limit of one attempt of one query (must not be zero).
    pub timeout: Duration,
    /// Tries per query, the first one included (at least 1). Only failures
    /// that may go away are tried again (timeouts, SERVFAIL, REFUSED, I/O
    /// errors); NXDOMAIN and "no records" are final.
    pub attempts: usize,
    /// Queries (one host, one family) in flight at most, shared by all calls
    /// on one [`Resolver`] and its clones (at least 1).
    pub concurrency: usize,
    /// Addresses kept per host and family (at least 1); see
    /// [`Outcome::Answer::truncated_from`].
    pub max_addresses: usize,
}

impl ResolverSettings {
    /// The settings of a `[resolver]` section, with the servers to ask
    /// (its `servers`, or the system's when it has none).
    pub fn from_config(
        r: &egress_core::config::ResolverConfig,
        servers: Vec<SocketAddr>,
    ) -> ResolverSettings {
        ResolverSettings {
            servers,
            timeout: r.timeout,
            attempts: r.attempts,
            concurrency: r.concurrency,
            max_addresses: r.max_addresses,
        }
    }
}

/// An address family, i.e. which record type is asked (shared with the
/// scheduler, which tracks each family on its own TTL).
pub use egress_core::schedule::Family;

/// What one query (one host, one family) produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server returned addresses.
    Answer {
        /// Distinct addresses, sorted, at most `max_addresses` of them.
        addrs: Vec<IpAddr>,
        /// Smallest TTL of the records the answer was built from: the
        /// address records and every CNAME on the way to them (the chain can
        /// change as soon as any link expires). Hickory caps TTLs at one day;
        /// zero is passed through.
        ttl: Duration,
        /// When the answer had more than `max_addresses` distinct addresses,
        /// how many; `addrs` then holds the lowest `max_addresses` of them.
        truncated_from: Option<usize>,
    },
    /// The name exists but has no records of this type (NOERROR, empty).
    NoData,
    /// The name does not exist (NXDOMAIN).
    NxDomain,
    /// No usable answer; worth trying again later.
    Failed {
        /// Coarse class of the failure.
        reason: FailReason,
        /// Human-readable detail for logs.
        detail: String,
    },
}

impl Outcome {
    /// The scheduler's view of this outcome (the cut of an over-long
    /// answer was already made here; callers log `truncated_from`).
    pub fn into_query(self) -> egress_core::schedule::QueryOutcome {
        use egress_core::schedule::QueryOutcome;
        match self {
            Outcome::Answer { addrs, ttl, .. } => QueryOutcome::Answer { addrs, ttl },
            Outcome::NoData => QueryOutcome::NoData,
            Outcome::NxDomain => QueryOutcome::NxDomain,
            Outcome::Failed { reason, detail } => QueryOutcome::Failed {
                reason: format!("{reason}: {detail}"),
            },
        }
    }

    /// The addresses of an [`Outcome::Answer`]; empty for anything else.
    pub fn addrs(&self) -> &[IpAddr] {
        match self {
            Outcome::Answer { addrs, .. } => addrs,
            _ => &[],
        }
    }
}

/// Why a query [`Outcome::Failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// No response within the timeout, on any attempt.
    Timeout,
    /// The server answered SERVFAIL (it could not resolve the name).
    ServFail,
    /// The server answered REFUSED (it will not serve us).
    Refused,
    /// Anything else: I/O errors, malformed responses, other response codes.
    Other,
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailReason::Timeout => "timeout",
            FailReason::ServFail => "SERVFAIL",
            FailReason::Refused => "REFUSED",
            FailReason::Other => "error",
        })
    }
}

/// Both outcomes for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostResult {
    /// The host that was asked.
    pub host: HostName,
    /// Outcome of the `A` query.
    pub v4: Outcome,
    /// Outcome of the `AAAA` query.
    pub v6: Outcome,
}

impl HostResult {
    /// The outcome for one family.
    pub fn outcome(&self, family: Family) -> &Outcome {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }
}

/// Errors setting up resolution (never per-query failures, see [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// [`ResolverSettings::servers`] is empty.
    #[error("no DNS servers configured")]
    NoServers,
    /// A setting is out of range.
    #[error("invalid resolver setting: {0}")]
    InvalidSettings(&'static str),
    /// Hickory refused the configuration.
    #[error("cannot set up the DNS resolver: {0}")]
    Build(String),
    /// The resolver configuration file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadResolvConf {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The resolver configuration file names no usable nameserver.
    #[error("{} has no usable nameserver line", path.display())]
    NoNameserver {
        /// The file.
        path: PathBuf,
    },
}
