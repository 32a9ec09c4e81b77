//! The resolver proper: hickory configured for an address source, plus the
//! mapping of its answers and errors to [`Outcome`]s.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use egress_core::HostName;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::{FailReason, Family, HostResult, Outcome, ResolveError, ResolverSettings};

/// Hickory's own default; raised with `concurrency` so that TCP fallback
/// (truncated answers) is not refused as "busy" below our own bound.
const MIN_ACTIVE_REQUESTS_PER_CONNECTION: usize = 32;

/// Resolves host names to addresses, one query per host and family.
///
/// Every call asks the servers: there is no cache, `/etc/hosts` is not read
/// and no search domain is tried. Hickory still answers the special-use names
/// of RFC 6761 itself: `localhost` and names under it resolve to the loopback
/// addresses (TTL one day), names under `invalid.` and `onion.` are NXDOMAIN.
///
/// Cloning is cheap; clones share the servers and the `concurrency` bound.
#[derive(Debug, Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dns: TokioResolver,
    /// One permit per query in flight, so the bound holds across concurrent
    /// `resolve` and `resolve_all` calls, not just within one call.
    permits: Semaphore,
    max_addresses: usize,
}

impl Resolver {
    /// A resolver asking `settings.servers`; an error for empty or
    /// out-of-range settings. Needs neither the network nor a Tokio runtime
    /// until the first query; queries need a Tokio runtime.
    pub fn new(settings: ResolverSettings) -> Result<Resolver, ResolveError> {
        if settings.servers.is_empty() {
            return Err(ResolveError::NoServers);
        }
        if settings.timeout.is_zero() {
            return Err(ResolveError::InvalidSettings("timeout must not be zero"));
        }
        if settings.attempts == 0 {
            return Err(ResolveError::InvalidSettings("attempts must be at least 1"));
        }
        if settings.concurrency == 0 {
            return Err(ResolveError::InvalidSettings(
                "concurrency must be at least 1",
            ));
        }
        if settings.max_addresses == 0 {
            return Err(ResolveError::InvalidSettings(
                "max_addresses must be at least 1",
            ));
        }
        let concurrency = settings.concurrency.min(Semaphore::MAX_PERMITS);

        let name_servers = settings
            .servers
            .iter()
            .map(|server| {
                // UDP first; TCP is only used when an answer comes back truncated.
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                NameServerConfig::new(server.ip(), true, vec![udp, tcp])
            })
            .collect();
        // No domain and no search list: allowlist names are absolute.
        let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);

        let mut opts = ResolverOpts::default();
        opts.timeout = settings.timeout;
        // Hickory counts retries after the first try.
        opts.attempts = settings.attempts - 1;
        // The daemon schedules re-resolution by TTL: a cache would answer
        // repeated questions itself, with TTLs counting down to zero.
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        // Keep the CNAMEs in the answer so the chain's TTLs can be checked.
        opts.preserve_intermediates = true;
        opts.max_active_requests = concurrency.max(MIN_ACTIVE_REQUESTS_PER_CONNECTION);

        let dns = hickory_resolver::Resolver::builder_with_config(
            config,
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| ResolveError::Build(e.to_string()))?;

        Ok(Resolver {
            inner: Arc::new(Inner {
                dns,
                permits: Semaphore::new(concurrency),
                max_addresses: settings.max_addresses,
            }),
        })
    }

    /// Asks one record type (A or AAAA) for `host`; the daemon schedules
    /// each family on its own TTL.
    pub async fn query(&self, host: &HostName, family: Family) -> Outcome {
        self.inner.query(host, family).await
    }

    /// Asks A and AAAA for `host`, concurrently.
    pub async fn resolve(&self, host: &HostName) -> HostResult {
        self.inner.resolve(host).await
    }

    /// Resolves every host; the results are in the order of `hosts`, one per
    /// entry (duplicates included). At most `concurrency` queries are in
    /// flight at any time, and one host or family failing never affects the
    /// others.
    pub async fn resolve_all(&self, hosts: &[HostName]) -> Vec<HostResult> {
        let mut tasks = JoinSet::new();
        for (index, host) in hosts.iter().enumerate() {
            let inner = Arc::clone(&self.inner);
            let host = host.clone();
            tasks.spawn(async move { (index, inner.resolve(&host).await) });
        }

        let mut results: Vec<Option<HostResult>> = vec![None; hosts.len()];
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((index, result)) => results[index] = Some(result),
                // A panicking query is a bug; it must still not take the other
                // hosts down with it. Its slot is filled in below.
                Err(e) => tracing::error!(error = %e, "resolver task failed"),
            }
        }

        results
            .into_iter()
            .zip(hosts)
            .map(|(result, host)| {
                result.unwrap_or_else(|| {
                    let failed = Outcome::Failed {
                        reason: FailReason::Other,
                        detail: "resolver task failed".to_string(),
                    };
                    HostResult {
                        host: host.clone(),
                        v4: failed.clone(),
                        v6: failed,
                    }
                })
            })
            .collect()
    }
}

impl Inner {
    async fn resolve(&self, host: &HostName) -> HostResult {
        let (v4, v6) = tokio::join!(self.query(host, Family::V4), self.query(host, Family::V6));
        HostResult {
            host: host.clone(),
            v4,
            v6,
        }
    }

    async fn query(&self, host: &HostName, family: Family) -> Outcome {
        // The trailing dot makes the name absolute, so hickory asks exactly
        // this name and nothing derived from it.
        let name = match Name::from_ascii(format!("{}.", host.as_str())) {
            Ok(name) => name,
            Err(e) => {
                return Outcome::Failed {
                    reason: FailReason::Other,
                    detail: format!("not a DNS name: {e}"),
                }
            }
        };

        let lookup = {
            let _permit = self
                .permits
                .acquire()
                .await
                .expect("the query semaphore is never closed");
            self.dns.lookup(name.clone(), record_type(family)).await
        };

        let outcome = match lookup {
            Ok(lookup) => answer_outcome(&name, family, lookup.answers(), self.max_addresses),
            Err(e) => error_outcome(&e),
        };
        // Per query, so only at debug level: the daemon reports what it does
        // with the outcomes (including cut answers) itself.
        tracing::debug!(%host, %family, ?outcome, "resolved");
        outcome
    }
}

fn record_type(family: Family) -> RecordType {
    match family {
        Family::V4 => RecordType::A,
        Family::V6 => RecordType::AAAA,
    }
}

/// Builds the outcome from the answer section of a successful lookup of
/// `qname`: follows the CNAME chain from `qname`, keeps the addresses owned
/// by a name on that chain, and takes the smallest TTL along the way.
fn answer_outcome(qname: &Name, family: Family, answers: &[Record], max: usize) -> Outcome {
    let mut chain = vec![qname.clone()];
    let mut ttl: Option<u32> = None;
    // Each step adds a new name, so a CNAME loop cannot spin forever.
    while let Some((target, link_ttl)) = answers.iter().find_map(|r| match &r.data {
        RData::CNAME(CNAME(target)) if chain.last() == Some(&r.name) => Some((target, r.ttl)),
        _ => None,
    }) {
        if chain.contains(target) {
            break;
        }
        chain.push(target.clone());
        ttl = Some(ttl.map_or(link_ttl, |t| t.min(link_ttl)));
    }

    let mut addrs = Vec::new();
    for record in answers.iter().filter(|r| chain.contains(&r.name)) {
        let addr = match (&record.data, family) {
            (RData::A(A(ip)), Family::V4) => IpAddr::V4(*ip),
            (RData::AAAA(AAAA(ip)), Family::V6) => IpAddr::V6(*ip),
            _ => continue,
        };
        addrs.push(addr);
        ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
    }
    // An answer whose records all belong to other names says nothing about
    // this one.
    let Some(ttl) = ttl.filter(|_| !addrs.is_empty()) else {
        return Outcome::NoData;
    };

    addrs.sort_unstable();
    addrs.dedup();
    let truncated_from = (addrs.len() > max).then_some(addrs.len());
    addrs.truncate(max);
    Outcome::Answer {
        addrs,
        ttl: Duration::from_secs(u64::from(ttl)),
        truncated_from,
    }
}

fn error_outcome(err: &NetError) -> Outcome {
    let failed = |reason| Outcome::Failed {
        reason,
        detail: err.to_string(),
    };
    match err {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. })) => {
            match *response_code {
                ResponseCode::NXDomain => Outcome::NxDomain,
                ResponseCode::NoError => Outcome::NoData,
                code => failed(rcode_reason(code)),
            }
        }
        NetError::Dns(DnsError::ResponseCode(code)) => failed(rcode_reason(*code)),
        NetError::Timeout => failed(FailReason::Timeout),
        NetError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => failed(FailReason::Timeout),
        _ => failed(FailReason::Other),
    }
}

fn rcode_reason(code: ResponseCode) -> FailReason {
    match code {
        ResponseCode::ServFail => FailReason::ServFail,
        ResponseCode::Refused => FailReason::Refused,
        _ => FailReason::Other,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
    }

    fn aaaa(owner: &str, ttl: u32, ip: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::AAAA(AAAA(ip.parse().unwrap())))
    }

    fn cname(owner: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
    }

    fn v4(addrs: &[[u8; 4]]) -> Vec<IpAddr> {
        addrs.iter().map(|a| IpAddr::from(*a)).collect()
    }

    #[test]
    fn plain_answer_is_sorted_and_deduplicated_with_min_ttl() {
        let answers = [
            a("h.test.", 300, [192, 0, 2, 9]),
            a("h.test.", 120, [192, 0, 2, 1]),
            a("h.test.", 300, [192, 0, 2, 9]),
        ];
        assert_eq!(
            answer_outcome(&name("h.test."), Family::V4, &answers, 10),
            Outcome::Answer {
                addrs: v4(&[[192, 0, 2, 1], [192, 0, 2, 9]]),
                ttl: Duration::from_secs(120),
                truncated_from: None,
            }
        );
    }

    #[test]
    fn cname_chain_ttl_is_the_smallest_link() {
        let answers = [
            cname("h.test.", 30, "mid.test."),
            cname("mid.test.", 600, "end.test."),
            aaaa("end.test.", 900, "2001:db8::1"),
        ];
        assert_eq!(
            answer_outcome(&name("h.test."), Family::V6, &answers, 10),
            Outcome::Answer {
                addrs: vec![IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap())],
                ttl: Duration::from_secs(30),
                truncated_from: None,
            }
        );
    }

    #[test]
    fn records_off_the_chain_are_ignored() {
        let answers = [
            a("other.test.", 5, [198, 51, 100, 1]),
            cname("unrelated.test.", 1, "h.test."),
            a("h.test.", 60, [192, 0, 2, 1]),
        ];
        assert_eq!(
            answer_outcome(&name("h.test."), Family::V4, &answers, 10),
            Outcome::Answer {
                addrs: v4(&[[192, 0, 2, 1]]),
                ttl: Duration::from_secs(60),
                truncated_from: None,
            }
        );
        assert_eq!(
            answer_outcome(&name("h.test."), Family::V4, &answers[..1], 10),
            Outcome::NoData
        );
    }

    #[test]
    fn wrong_family_records_are_no_data() {
        let answers = [a("h.test.", 60, [192, 0, 2, 1])];
        assert_eq!(
            answer_outcome(&name("h.test."), Family::V6, &answers, 10),
            Outcome::NoData
        );
    }

    #[test]
    fn cname_loop_terminates() {
        let answers = [
            cname("h.test.", 10, "x.test."),
            cname("x.test.", 10, "h.test."),
        ];
        assert_eq!(
            answer_outcome(&name("h.test."), Family::V4, &answers, 10),
            Outcome::NoData
        );
    }

    #[test]
    fn cut_keeps_the_lowest_and_reports_the_distinct_count() {
        let answers: Vec<Record> = (1..=6u8)
            .rev()
            .chain([3, 3])
            .map(|i| a("h.test.", 60, [192, 0, 2, i]))
            .collect();
        assert_eq!(
            answer_outcome(&name("h.test."), Family::V4, &answers, 4),
            Outcome::Answer {
                addrs: v4(&[
                    [192, 0, 2, 1],
                    [192, 0, 2, 2],
                    [192, 0, 2, 3],
                    [192, 0, 2, 4]
                ]),
                ttl: Duration::from_secs(60),
                truncated_from: Some(6),
            }
        );
        // Exactly at the limit is not a cut.
        assert!(matches!(
            answer_outcome(&name("h.test."), Family::V4, &answers, 6),
            Outcome::Answer { truncated_from: None, ref addrs, .. } if addrs.len() == 6
        ));
    }

    #[test]
    fn errors_map_to_outcomes() {
        let q = hickory_resolver::proto::op::Query::query(name("h.test."), RecordType::A);
        let no_records = |code| NetError::from(NoRecords::new(q.clone(), code));
        assert_eq!(
            error_outcome(&no_records(ResponseCode::NXDomain)),
            Outcome::NxDomain
        );
        assert_eq!(
            error_outcome(&no_records(ResponseCode::NoError)),
            Outcome::NoData
        );

        let reason = |err: NetError| match error_outcome(&err) {
            Outcome::Failed { reason, detail } => {
                assert!(!detail.is_empty());
                reason
            }
            other => panic!("{err} gave {other:?}"),
        };
        let rcode = |code| NetError::Dns(DnsError::ResponseCode(code));
        assert_eq!(reason(rcode(ResponseCode::ServFail)), FailReason::ServFail);
        assert_eq!(reason(rcode(ResponseCode::Refused)), FailReason::Refused);
        assert_eq!(reason(rcode(ResponseCode::FormErr)), FailReason::Other);
        assert_eq!(reason(NetError::Timeout), FailReason::Timeout);
        assert_eq!(
            reason(NetError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut
            ))),
            FailReason::Timeout
        );
        assert_eq!(
            reason(NetError::from(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused
            ))),
            FailReason::Other
        );
        assert_eq!(reason(NetError::NoConnections), FailReason::Other);
    }

    #[test]
    fn settings_are_checked() {
        let good = ResolverSettings {
            servers: vec!["127.0.0.1:53".parse().unwrap()],
            timeout: Duration::from_secs(1),
            attempts: 1,
            concurrency: 1,
            max_addresses: 1,
        };
        // Building needs neither a runtime nor the network.
        assert!(Resolver::new(good.clone()).is_ok());

        type Spoil = fn(&mut ResolverSettings);
        let bad: [(Spoil, &str); 5] = [
            (|s| s.servers.clear(), "no DNS servers"),
            (|s| s.timeout = Duration::ZERO, "timeout"),
            (|s| s.attempts = 0, "attempts"),
            (|s| s.concurrency = 0, "concurrency"),
            (|s| s.max_addresses = 0, "max_addresses"),
        ];
        for (spoil, message) in bad {
            let mut settings = good.clone();
            spoil(&mut settings);
            let err = Resolver::new(settings).unwrap_err();
            assert!(err.to_string().contains(message), "{err}");
        }
    }
}
