//! The TTL-driven address source: which names to query when, and which
//! addresses stay allowed for how long.
//!
//! The daemon owns the clock and the sockets; this module only keeps the
//! state. It is told the time (`now`) with every call, asks nothing of the
//! system, and hands back plain values: the queries that are due, the moment
//! the daemon should next wake up, and the [`Answers`] to enforce.
//!
//! Rules, per host and address family (A and AAAA are independent, so a
//! broken AAAA server never closes IPv4):
//! - an answer's TTL is clamped to `[min_ttl, max_ttl]`; every address in it
//!   stays allowed until `grace` after that TTL; addresses of earlier answers
//!   keep their own expiry, so the allowed set is the union of recent answers
//!   (round-robin and CDN rotation give containers different addresses than
//!   the daemon got);
//! - a negative answer (NODATA, NXDOMAIN) refreshes nothing: what was
//!   allowed runs out on its own, and the name is asked again after
//!   `negative_ttl`;
//! - a failed query is retried with exponential backoff, and meanwhile the
//!   last good answer is served stale, at most `serve_stale` after it was
//!   received; after that the host closes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::ResolverConfig;
use crate::entry::HostName;
use crate::policy::{AddressAnswer, Answers};

/// Default first retry delay after a failed query.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Default longest retry delay after failed queries.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The address family of a query (A or AAAA records): the ruleset's.
pub use crate::ruleset::Family;

/// Shortest delay before a name is asked again, whatever the TTL: a TTL of
/// 0 with `min_ttl = "0s"` must not turn into a query loop.
pub const MIN_REQUERY: Duration = Duration::from_secs(1);

/// The result of one query, as the resolver edge classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryOutcome {
    /// Records were returned.
    Answer {
        /// The addresses (of the queried family; others are ignored).
        addrs: Vec<IpAddr>,
        /// The TTL of the answer (the smallest TTL of its records).
        ttl: Duration,
    },
    /// The name exists but has no records of this type.
    NoData,
    /// The name does not exist.
    NxDomain,
    /// No usable answer: timeout, SERVFAIL, REFUSED, network error.
    Failed {
        /// Why, for `status` and logs.
        reason: String,
    },
}

/// The kind of the last [`QueryOutcome`] recorded, for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Records were returned.
    Answer,
    /// The name has no records of this type.
    NoData,
    /// The name does not exist.
    NxDomain,
    /// The query failed.
    Failed,
}

/// Timing knobs of the [`Scheduler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// Answers are kept at least this long, whatever their TTL.
    pub min_ttl: Duration,
    /// Answers are kept at most this long, whatever their TTL.
    pub max_ttl: Duration,
    /// An address stays allowed this long after the last answer that held it.
    pub grace: Duration,
    /// How long after the last good answer its addresses are kept while
    /// queries fail.
    pub serve_stale: Duration,
    /// Addresses kept per host and family; values below 1 count as 1.
    pub max_addresses: usize,
    /// Delay before asking again after NODATA or NXDOMAIN (clamped to
    /// `[min_ttl, max_ttl]` like any TTL).
    pub negative_ttl: Duration,
    /// Retry delay after the first failure; it doubles per failure.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl ScheduleConfig {
    /// The schedule for a `[resolver]` section, with the default negative
    /// TTL and backoff (they are not configurable there).
    pub fn from_resolver(r: &ResolverConfig) -> ScheduleConfig {
        ScheduleConfig {
            min_ttl: r.min_ttl,
            max_ttl: r.max_ttl,
            grace: r.grace,
            serve_stale: r.serve_stale,
            max_addresses: r.max_addresses,
            negative_ttl: r.negative_ttl,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
        }
    }

    /// `ttl` clamped to `[min_ttl, max_ttl]`. Written without
    /// [`Ord::clamp`] because that panics on `min_ttl > max_ttl`; here the
    /// upper bound wins, as it is the safer one.
    fn clamp_ttl(&self, ttl: Duration) -> Duration {
        ttl.max(self.min_ttl).min(self.max_ttl)
    }

    /// The retry delay after `failures` consecutive failures (at least 1).
    fn backoff(&self, failures: u32) -> Duration {
        let mut delay = self.backoff_initial;
        for _ in 1..failures {
            if delay >= self.backoff_max {
                break;
            }
            delay = delay.saturating_mul(2);
        }
        delay.min(self.backoff_max)
    }

    fn cap(&self) -> usize {
        self.max_addresses.max(1)
    }
}

impl Default for ScheduleConfig {
    fn default() -> ScheduleConfig {
        ScheduleConfig::from_resolver(&ResolverConfig::default())
    }
}

/// What [`Scheduler::record`] did with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recorded {
    /// The set of live addresses of the host changed (an address appeared or
    /// was dropped), so the ruleset needs an update.
    pub changed: bool,
    /// Some address got a later expiry, so the kernel's element timeouts
    /// need refreshing even if the set is the same.
    pub refreshed: bool,
    /// The union of answers exceeded `max_addresses`; this many addresses
    /// (those expiring soonest) were dropped.
    pub truncated: Option<usize>,
    /// The query failed and the last good answer was kept alive (served
    /// stale).
    pub served_stale: bool,
    /// The host is not in the allowlist (any more); the result was dropped.
    pub ignored: bool,
}

/// One allowed address of a host, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressStatus {
    /// The address.
    pub addr: IpAddr,
    /// When it stops being allowed.
    pub expires: Instant,
    /// Time left until then.
    pub remaining: Duration,
}

/// State of one host and family, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyStatus {
    /// The family.
    pub family: Family,
    /// Addresses allowed now, ordered by address.
    pub addresses: Vec<AddressStatus>,
    /// When the name is asked next.
    pub next_query: Instant,
    /// Time until then (zero if due).
    pub next_query_in: Duration,
    /// Failed queries since the last answer (positive or negative).
    pub failures: u32,
    /// Reason of the last failure, cleared by any answer.
    pub last_error: Option<String>,
    /// When the last answer with addresses arrived.
    pub last_good: Option<Instant>,
    /// What the last query returned; `None` before the first.
    pub last_outcome: Option<OutcomeKind>,
}

/// State of one host, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    /// The host name.
    pub host: HostName,
    /// `A` state.
    pub v4: FamilyStatus,
    /// `AAAA` state.
    pub v6: FamilyStatus,
}

#[derive(Debug, Clone)]
struct FamilyState {
    /// Address -> the instant it stops being allowed. Entries at or past
    /// their expiry are dead; they are pruned whenever the state is touched.
    addrs: BTreeMap<IpAddr, Instant>,
    next_query: Instant,
    failures: u32,
    last_error: Option<String>,
    last_good: Option<Instant>,
    /// The addresses of the last good answer (after the cap): what serve
    /// stale keeps alive.
    last_good_addrs: Vec<IpAddr>,
    last_outcome: Option<OutcomeKind>,
}

impl FamilyState {
    fn new(now: Instant) -> FamilyState {
        FamilyState {
            addrs: BTreeMap::new(),
            next_query: now,
            failures: 0,
            last_error: None,
            last_good: None,
            last_good_addrs: Vec::new(),
            last_outcome: None,
        }
    }

    fn live(&self, now: Instant) -> impl Iterator<Item = (&IpAddr, &Instant)> {
        self.addrs.iter().filter(move |(_, exp)| **exp > now)
    }

    /// Moves `addr`'s expiry to `expiry` if that is later (or adds it).
    /// Never shortens: a container's stub resolver may have cached an
    /// earlier, longer answer and still use it.
    fn extend(&mut self, addr: IpAddr, expiry: Instant) -> bool {
        match self.addrs.get_mut(&addr) {
            Some(slot) if *slot >= expiry => false,
            Some(slot) => {
                *slot = expiry;
                true
            }
            None => {
                self.addrs.insert(addr, expiry);
                true
            }
        }
    }

    /// Drops the soonest-expiring addresses beyond `cap`; returns how many.
    fn enforce_cap(&mut self, cap: usize) -> usize {
        if self.addrs.len() <= cap {
            return 0;
        }
        let mut order: Vec<(IpAddr, Instant)> = self.addrs.iter().map(|(a, e)| (*a, *e)).collect();
        // Latest expiry first; ties by address so the result is deterministic.
        order.sort_by(|(a1, e1), (a2, e2)| e2.cmp(e1).then(a1.cmp(a2)));
        let dropped = order.len() - cap;
        for (addr, _) in &order[cap..] {
            self.addrs.remove(addr);
        }
        dropped
    }

    fn status(&self, family: Family, now: Instant) -> FamilyStatus {
        FamilyStatus {
            family,
            addresses: self
                .live(now)
                .map(|(addr, exp)| AddressStatus {
                    addr: *addr,
                    expires: *exp,
                    remaining: *exp - now,
                })
                .collect(),
            next_query: self.next_query,
            next_query_in: self.next_query.saturating_duration_since(now),
            failures: self.failures,
            last_error: self.last_error.clone(),
            last_good: self.last_good,
            last_outcome: self.last_outcome,
        }
    }
}

#[derive(Debug, Clone)]
struct HostState {
    v4: FamilyState,
    v6: FamilyState,
}

impl HostState {
    fn new(now: Instant) -> HostState {
        HostState {
            v4: FamilyState::new(now),
            v6: FamilyState::new(now),
        }
    }

    fn family(&self, family: Family) -> &FamilyState {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn family_mut(&mut self, family: Family) -> &mut FamilyState {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }
}

/// The state of the TTL-driven address source: per allowlisted host and
/// family, the allowed addresses with their expiry and when to ask again.
#[derive(Debug, Clone)]
pub struct Scheduler {
    cfg: ScheduleConfig,
    hosts: BTreeMap<HostName, HostState>,
}

impl Scheduler {
    /// An empty scheduler: no hosts, nothing due.
    pub fn new(cfg: ScheduleConfig) -> Scheduler {
        Scheduler {
            cfg,
            hosts: BTreeMap::new(),
        }
    }

    /// The current configuration.
    pub fn config(&self) -> &ScheduleConfig {
        &self.cfg
    }

    /// Replaces the configuration (reload). Cached addresses and schedules
    /// stay as they are; results recorded from now on use the new values.
    pub fn set_config(&mut self, cfg: ScheduleConfig) {
        self.cfg = cfg;
    }

    /// The allowlist changed: hosts not seen before are due now; hosts that
    /// stay keep their cached answers and schedule; hosts gone are forgotten.
    pub fn set_hosts(&mut self, hosts: impl IntoIterator<Item = HostName>, now: Instant) {
        let mut next = BTreeMap::new();
        for host in hosts {
            if next.contains_key(&host) {
                continue;
            }
            let state = self
                .hosts
                .remove(&host)
                .unwrap_or_else(|| HostState::new(now));
            next.insert(host, state);
        }
        self.hosts = next;
    }

    /// The hosts currently scheduled, in order.
    pub fn hosts(&self) -> impl Iterator<Item = &HostName> {
        self.hosts.keys()
    }

    /// Which (host, family) queries are due at `now` (`next_query <= now`),
    /// ordered by host name, then A before AAAA.
    pub fn due(&self, now: Instant) -> Vec<(HostName, Family)> {
        let mut out = Vec::new();
        for (host, state) in &self.hosts {
            for family in Family::ALL {
                if state.family(family).next_query <= now {
                    out.push((host.clone(), family));
                }
            }
        }
        out
    }

    /// Hands out the queries due at `now` (as [`Scheduler::due`]) and marks
    /// them asked: each is not due again before `now + hold` unless its
    /// result arrives first ([`Scheduler::record`] reschedules it). `hold`
    /// is the longest a query can take, so a lost result is asked again
    /// and [`Scheduler::next_wakeup`] stays in the future while queries
    /// are in flight.
    pub fn take_due(&mut self, now: Instant, hold: Duration) -> Vec<(HostName, Family)> {
        let due = self.due(now);
        for (host, family) in &due {
            if let Some(state) = self.hosts.get_mut(host) {
                state.family_mut(*family).next_query = now + hold;
            }
        }
        due
    }

    /// Marks every host and family due now (SIGHUP), whatever its TTL.
    /// Failure counts stay, so a failing server is not hammered harder.
    pub fn force_all(&mut self, now: Instant) {
        for state in self.hosts.values_mut() {
            for family in Family::ALL {
                state.family_mut(family).next_query = now;
            }
        }
    }

    /// Feeds the result of one query made for `host` and `family`. Results
    /// for hosts no longer scheduled (removed while the query was in
    /// flight) are ignored.
    pub fn record(
        &mut self,
        host: &HostName,
        family: Family,
        outcome: QueryOutcome,
        now: Instant,
    ) -> Recorded {
        let cfg = &self.cfg;
        let Some(state) = self.hosts.get_mut(host) else {
            return Recorded {
                ignored: true,
                ..Recorded::default()
            };
        };
        let st = state.family_mut(family);
        let before: Vec<IpAddr> = st.live(now).map(|(a, _)| *a).collect();
        st.addrs.retain(|_, exp| *exp > now);
        let mut rec = Recorded::default();

        // An answer whose addresses are all of the other family (or none)
        // says as much as NODATA.
        let outcome = match outcome {
            QueryOutcome::Answer { addrs, ttl } => {
                let addrs: Vec<IpAddr> = addrs
                    .into_iter()
                    .filter(|a| Family::of(a) == family)
                    .collect();
                if addrs.is_empty() {
                    QueryOutcome::NoData
                } else {
                    QueryOutcome::Answer { addrs, ttl }
                }
            }
            other => other,
        };

        match outcome {
            QueryOutcome::Answer { addrs, ttl } => {
                let ttl = cfg.clamp_ttl(ttl);
                let expiry = now + ttl + cfg.grace;
                for addr in &addrs {
                    rec.refreshed |= st.extend(*addr, expiry);
                }
                let dropped = st.enforce_cap(cfg.cap());
                if dropped > 0 {
                    rec.truncated = Some(dropped);
                }
                let mut good: Vec<IpAddr> = addrs
                    .into_iter()
                    .filter(|a| st.addrs.contains_key(a))
                    .collect();
                good.sort();
                good.dedup();
                st.last_good_addrs = good;
                st.last_good = Some(now);
                st.next_query = now + ttl.max(MIN_REQUERY);
                st.failures = 0;
                st.last_error = None;
                st.last_outcome = Some(OutcomeKind::Answer);
            }
            QueryOutcome::NoData | QueryOutcome::NxDomain => {
                st.last_outcome = Some(if outcome == QueryOutcome::NoData {
                    OutcomeKind::NoData
                } else {
                    OutcomeKind::NxDomain
                });
                // DNS now says there are no addresses: a later failure must
                // not revive the ones it withdrew.
                st.last_good_addrs.clear();
                st.next_query = now + cfg.clamp_ttl(cfg.negative_ttl).max(MIN_REQUERY);
                st.failures = 0;
                st.last_error = None;
            }
            QueryOutcome::Failed { reason } => {
                st.failures = st.failures.saturating_add(1);
                let backoff = cfg.backoff(st.failures);
                st.next_query = now + backoff;
                st.last_error = Some(reason);
                st.last_outcome = Some(OutcomeKind::Failed);
                if let Some(good) = st.last_good {
                    let limit = good + cfg.serve_stale;
                    if now < limit && !st.last_good_addrs.is_empty() {
                        // Until the next retry (plus grace, as the kernel
                        // timeout must outlive a late retry), never beyond
                        // the serve-stale window.
                        let expiry = (now + backoff + cfg.grace).min(limit);
                        let addrs = st.last_good_addrs.clone();
                        for addr in addrs {
                            rec.refreshed |= st.extend(addr, expiry);
                        }
                        rec.served_stale = true;
                    }
                }
            }
        }

        let after: Vec<IpAddr> = st.live(now).map(|(a, _)| *a).collect();
        rec.changed = before != after;
        rec
    }

    /// How many hosts have a failing family (their last query failed).
    pub fn failing_hosts(&self) -> usize {
        self.hosts
            .values()
            .filter(|s| s.v4.last_error.is_some() || s.v6.last_error.is_some())
            .count()
    }

    /// The earliest `next_query` of all hosts, `None` without hosts: an idle
    /// daemon sleeps until then instead of polling.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.hosts
            .values()
            .flat_map(|s| [s.v4.next_query, s.v6.next_query])
            .min()
    }

    /// The earliest instant an allowed address expires, `None` if none is
    /// allowed: when the ruleset loses an address without any query.
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        self.hosts
            .values()
            .flat_map(|s| s.v4.live(now).chain(s.v6.live(now)))
            .map(|(_, exp)| *exp)
            .min()
    }

    /// The addresses to enforce at `now`: per host, every address (A then
    /// AAAA, each ordered) whose expiry is after `now`, with lifetime =
    /// expiry - now. Hosts without any such address are left out.
    pub fn answers(&self, now: Instant) -> Answers {
        let mut out = Answers::new();
        for (host, state) in &self.hosts {
            let list: Vec<AddressAnswer> = state
                .v4
                .live(now)
                .chain(state.v6.live(now))
                .map(|(addr, exp)| AddressAnswer {
                    addr: *addr,
                    lifetime: *exp - now,
                })
                .collect();
            if !list.is_empty() {
                out.insert(host.clone(), list);
            }
        }
        out
    }

    /// Per host and family: allowed addresses with their expiry, next
    /// query, failures, last error and last good answer, ordered by host.
    pub fn snapshot(&self, now: Instant) -> Vec<HostStatus> {
        self.hosts
            .iter()
            .map(|(host, state)| HostStatus {
                host: host.clone(),
                v4: state.v4.status(Family::V4, now),
                v6: state.v6.status(Family::V6, now),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist::parse_host;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn host(s: &str) -> HostName {
        parse_host(s).unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn v6(last: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last))
    }

    /// Round numbers so expected instants are easy to read.
    fn cfg() -> ScheduleConfig {
        ScheduleConfig {
            min_ttl: secs(5),
            max_ttl: secs(3600),
            grace: secs(10),
            serve_stale: secs(100),
            max_addresses: 8,
            negative_ttl: secs(30),
            backoff_initial: secs(1),
            backoff_max: secs(60),
        }
    }

    fn answer(addrs: &[IpAddr], ttl: u64) -> QueryOutcome {
        QueryOutcome::Answer {
            addrs: addrs.to_vec(),
            ttl: secs(ttl),
        }
    }

    fn failed() -> QueryOutcome {
        QueryOutcome::Failed {
            reason: "timeout".into(),
        }
    }

    /// A scheduler with `names` added at `t0`.
    fn sched(names: &[&str], t0: Instant) -> Scheduler {
        let mut s = Scheduler::new(cfg());
        s.set_hosts(names.iter().map(|n| host(n)), t0);
        s
    }

    /// Addresses allowed for `name` at `now`, ordered as `answers` gives them.
    fn allowed(s: &Scheduler, name: &str, now: Instant) -> Vec<IpAddr> {
        s.answers(now)
            .get(&host(name))
            .map(|l| l.iter().map(|a| a.addr).collect())
            .unwrap_or_default()
    }

    fn next_query(s: &Scheduler, name: &str, family: Family, now: Instant) -> Instant {
        let st = s
            .snapshot(now)
            .into_iter()
            .find(|h| h.host == host(name))
            .unwrap();
        match family {
            Family::V4 => st.v4.next_query,
            Family::V6 => st.v6.next_query,
        }
    }

    #[test]
    fn from_resolver_copies_the_resolver_values() {
        let r = ResolverConfig {
            min_ttl: secs(7),
            max_ttl: secs(70),
            grace: secs(3),
            serve_stale: secs(700),
            negative_ttl: secs(45),
            max_addresses: 9,
            ..ResolverConfig::default()
        };
        let c = ScheduleConfig::from_resolver(&r);
        assert_eq!(c.min_ttl, secs(7));
        assert_eq!(c.max_ttl, secs(70));
        assert_eq!(c.grace, secs(3));
        assert_eq!(c.serve_stale, secs(700));
        assert_eq!(c.max_addresses, 9);
        assert_eq!(c.negative_ttl, secs(45));
        assert_eq!(c.backoff_initial, secs(1));
        assert_eq!(c.backoff_max, secs(60));
    }

    #[test]
    fn new_hosts_are_due_now_in_order() {
        let t0 = Instant::now();
        let s = sched(&["b.example", "a.example"], t0);
        assert_eq!(
            s.due(t0),
            vec![
                (host("a.example"), Family::V4),
                (host("a.example"), Family::V6),
                (host("b.example"), Family::V4),
                (host("b.example"), Family::V6),
            ]
        );
        assert!(s.answers(t0).is_empty());
    }

    #[test]
    fn rotation_keeps_the_union_until_the_old_answer_expires() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        let r = s.record(&a, Family::V4, answer(&[v4(1)], 60), t0);
        assert!(r.changed);
        // A expires at t0 + 60 + 10 = t0 + 70.
        let t1 = t0 + secs(60);
        let r = s.record(&a, Family::V4, answer(&[v4(2)], 60), t1);
        assert!(r.changed);
        assert_eq!(allowed(&s, "a.example", t1), vec![v4(1), v4(2)]);
        assert_eq!(
            allowed(&s, "a.example", t0 + secs(70) - ms(1)),
            vec![v4(1), v4(2)]
        );
        assert_eq!(allowed(&s, "a.example", t0 + secs(70)), vec![v4(2)]);
        // B expires at t1 + 70.
        assert_eq!(allowed(&s, "a.example", t1 + secs(70) - ms(1)), vec![v4(2)]);
        assert!(allowed(&s, "a.example", t1 + secs(70)).is_empty());
    }

    #[test]
    fn grace_boundaries() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        s.record(&host("a.example"), Family::V4, answer(&[v4(1)], 20), t0);
        let expiry = t0 + secs(20) + secs(10);
        assert_eq!(allowed(&s, "a.example", t0 + secs(20)), vec![v4(1)]);
        assert_eq!(allowed(&s, "a.example", expiry - ms(1)), vec![v4(1)]);
        assert!(allowed(&s, "a.example", expiry).is_empty());
        assert!(!s.answers(expiry).contains_key(&host("a.example")));
    }

    #[test]
    fn ttl_is_clamped_up_to_min_ttl() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        s.record(&host("a.example"), Family::V4, answer(&[v4(1)], 0), t0);
        assert_eq!(next_query(&s, "a.example", Family::V4, t0), t0 + secs(5));
        assert!(s
            .due(t0 + secs(5) - ms(1))
            .iter()
            .all(|d| d.1 != Family::V4));
        assert_eq!(
            s.answers(t0)[&host("a.example")][0].lifetime,
            secs(5) + secs(10)
        );
    }

    #[test]
    fn ttl_is_clamped_down_to_max_ttl() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        s.record(&host("a.example"), Family::V4, answer(&[v4(1)], 86_400), t0);
        assert_eq!(next_query(&s, "a.example", Family::V4, t0), t0 + secs(3600));
        assert_eq!(
            s.answers(t0)[&host("a.example")][0].lifetime,
            secs(3600) + secs(10)
        );
        assert!(allowed(&s, "a.example", t0 + secs(3610)).is_empty());
    }

    #[test]
    fn long_ttl_is_not_due_early() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        s.record(&a, Family::V4, answer(&[v4(1)], 600), t0);
        s.record(&a, Family::V6, answer(&[v6(1)], 600), t0);
        assert!(s.due(t0).is_empty());
        assert!(s.due(t0 + secs(600) - ms(1)).is_empty());
        assert_eq!(
            s.due(t0 + secs(600)),
            vec![(a.clone(), Family::V4), (a, Family::V6)]
        );
    }

    #[test]
    fn force_all_makes_everything_due() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example", "b.example"], t0);
        for name in ["a.example", "b.example"] {
            for family in Family::ALL {
                let addr = if family == Family::V4 { v4(1) } else { v6(1) };
                s.record(&host(name), family, answer(&[addr], 3000), t0);
            }
        }
        let t1 = t0 + secs(1);
        assert!(s.due(t1).is_empty());
        s.force_all(t1);
        assert_eq!(s.due(t1).len(), 4);
        assert_eq!(s.next_wakeup(), Some(t1));
        // The cached answers are untouched.
        assert_eq!(allowed(&s, "a.example", t1), vec![v4(1), v6(1)]);
    }

    #[test]
    fn answer_resets_failures_and_backoff() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        s.record(&a, Family::V4, failed(), t0);
        s.record(&a, Family::V4, failed(), t0 + secs(1));
        s.record(&a, Family::V4, answer(&[v4(1)], 60), t0 + secs(3));
        let st = &s.snapshot(t0 + secs(3))[0].v4;
        assert_eq!(st.failures, 0);
        assert_eq!(st.last_error, None);
        assert_eq!(st.last_good, Some(t0 + secs(3)));
        let t1 = t0 + secs(63);
        s.record(&a, Family::V4, failed(), t1);
        assert_eq!(next_query(&s, "a.example", Family::V4, t1), t1 + secs(1));
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..9 {
            s.record(&a, Family::V4, failed(), now);
            let next = next_query(&s, "a.example", Family::V4, now);
            delays.push((next - now).as_secs());
            now = next;
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        let st = &s.snapshot(now)[0].v4;
        assert_eq!(st.failures, 9);
        assert_eq!(st.last_error.as_deref(), Some("timeout"));
        assert_eq!(st.last_outcome, Some(OutcomeKind::Failed));
    }

    #[test]
    fn backoff_survives_huge_failure_counts() {
        let c = cfg();
        assert_eq!(c.backoff(1), secs(1));
        assert_eq!(c.backoff(7), secs(60));
        assert_eq!(c.backoff(u32::MAX), secs(60));
    }

    #[test]
    fn never_answered_host_has_no_addresses_after_failure() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let r = s.record(&host("a.example"), Family::V4, failed(), t0);
        assert!(!r.served_stale);
        assert!(!r.changed);
        assert!(s.answers(t0).is_empty());
    }

    #[test]
    fn serve_stale_extends_until_the_next_retry() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        s.record(&a, Family::V4, answer(&[v4(1)], 5), t0);
        // Without serve-stale v4(1) would expire at t0 + 15. Fail at t0 + 5
        // with a backoff of 1 s: extended to t0 + 5 + 1 + 10 = t0 + 16.
        let t1 = t0 + secs(5);
        let r = s.record(&a, Family::V4, failed(), t1);
        assert!(r.served_stale);
        assert!(r.refreshed);
        assert!(!r.changed);
        assert_eq!(s.answers(t1)[&a][0].lifetime, secs(11));
        assert_eq!(allowed(&s, "a.example", t0 + secs(16) - ms(1)), vec![v4(1)]);
        assert!(allowed(&s, "a.example", t0 + secs(16)).is_empty());
    }

    #[test]
    fn serve_stale_never_extends_beyond_its_window() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        s.record(&a, Family::V4, answer(&[v4(1)], 5), t0);
        // Keep failing at every retry; the limit is t0 + 100 (serve_stale).
        let mut now = t0 + secs(5);
        let mut last_stale = None;
        while now < t0 + secs(100) {
            let r = s.record(&a, Family::V4, failed(), now);
            assert!(r.served_stale);
            last_stale = Some(now);
            // Each extension outlives the next retry.
            let next = next_query(&s, "a.example", Family::V4, now);
            if next < t0 + secs(100) {
                assert_eq!(allowed(&s, "a.example", next), vec![v4(1)]);
            }
            now = next;
        }
        // Retries at 5, 6, 8, 12, 20, 36, 68, 128: the last inside the
        // window is at 68; its extension (68 + 60 + 10) is capped at 100.
        assert_eq!(last_stale, Some(t0 + secs(68)));
        assert_eq!(now, t0 + secs(128));
        assert_eq!(
            allowed(&s, "a.example", t0 + secs(100) - ms(1)),
            vec![v4(1)]
        );
        assert!(allowed(&s, "a.example", t0 + secs(100)).is_empty());
        let r = s.record(&a, Family::V4, failed(), now);
        assert!(!r.served_stale);
        assert!(!r.refreshed);
        assert!(s.answers(now).is_empty());
    }

    #[test]
    fn serve_stale_window_boundary() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        s.record(&a, Family::V4, answer(&[v4(1)], 3600), t0);
        // Last moment inside the window (t0 + 100): extended up to it.
        let r = s.record(&a, Family::V4, failed(), t0 + secs(100) - ms(1));
        assert!(r.served_stale);
        // At the window's end nothing is served any more.
        let r = s.record(&a, Family::V4, failed(), t0 + secs(100));
        assert!(!r.served_stale);
        assert!(!r.refreshed);
    }

    #[test]
    fn serve_stale_keeps_only_the_last_good_answer() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        s.record(&a, Family::V4, answer(&[v4(1)], 5), t0);
        let t1 = t0 + secs(5);
        s.record(&a, Family::V4, answer(&[v4(2)], 5), t1);
        // v4(1) expires at t0 + 15, v4(2) at t1 + 15 = t0 + 20.
        let t2 = t0 + secs(10);
        s.record(&a, Family::V4, answer(&[v4(2)], 5), t2);
        // v4(2) now at t0 + 25. A failure at t0 + 12 would extend to t0 + 23:
        // v4(1), not in the last good answer, must not get it.
        s.record(&a, Family::V4, failed(), t0 + secs(12));
        assert_eq!(
            allowed(&s, "a.example", t0 + secs(15) - ms(1)),
            vec![v4(1), v4(2)]
        );
        assert_eq!(allowed(&s, "a.example", t0 + secs(15)), vec![v4(2)]);
    }

    #[test]
    fn serve_stale_uses_the_extension_only_if_later() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        // Expires at t0 + 3610; a failure now must not shorten it.
        s.record(&a, Family::V4, answer(&[v4(1)], 3600), t0);
        let r = s.record(&a, Family::V4, failed(), t0 + secs(1));
        assert!(r.served_stale);
        assert!(!r.refreshed);
        assert_eq!(
            allowed(&s, "a.example", t0 + secs(3610) - ms(1)),
            vec![v4(1)]
        );
    }

    #[test]
    fn nxdomain_leaves_addresses_to_expire() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        s.record(&a, Family::V4, answer(&[v4(1)], 20), t0);
        let t1 = t0 + secs(20);
        let r = s.record(&a, Family::V4, QueryOutcome::NxDomain, t1);
        assert!(!r.changed);
        assert!(!r.refreshed);
        // Not refreshed: still gone at t0 + 30.
        assert_eq!(allowed(&s, "a.example", t0 + secs(30) - ms(1)), vec![v4(1)]);
        assert!(allowed(&s, "a.example", t0 + secs(30)).is_empty());
        // Asked again after the negative TTL.
        assert_eq!(next_query(&s, "a.example", Family::V4, t1), t1 + secs(30));
        let st = &s.snapshot(t1)[0].v4;
        assert_eq!(st.last_outcome, Some(OutcomeKind::NxDomain));
        assert_eq!(st.failures, 0);
    }

    #[test]
    fn nodata_resets_failures_and_clamps_negative_ttl() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        s.set_config(ScheduleConfig {
            negative_ttl: secs(1),
            ..cfg()
        });
        let a = host("a.example");
        s.record(&a, Family::V6, failed(), t0);
        s.record(&a, Family::V6, QueryOutcome::NoData, t0 + secs(1));
        let st = &s.snapshot(t0 + secs(1))[0].v6;
        assert_eq!(st.failures, 0);
        assert_eq!(st.last_error, None);
        assert_eq!(st.last_outcome, Some(OutcomeKind::NoData));
        // negative_ttl 1 s is raised to min_ttl 5 s.
        assert_eq!(st.next_query, t0 + secs(6));
    }

    #[test]
    fn failure_after_negative_answer_does_not_revive_addresses() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        s.record(&a, Family::V4, answer(&[v4(1)], 5), t0);
        s.record(&a, Family::V4, QueryOutcome::NxDomain, t0 + secs(5));
        let r = s.record(&a, Family::V4, failed(), t0 + secs(14));
        assert!(!r.served_stale);
        assert!(allowed(&s, "a.example", t0 + secs(15)).is_empty());
    }

    #[test]
    fn families_are_independent() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        s.record(&a, Family::V4, answer(&[v4(1)], 60), t0);
        s.record(&a, Family::V6, answer(&[v6(1)], 60), t0);
        assert_eq!(allowed(&s, "a.example", t0), vec![v4(1), v6(1)]);
        // AAAA fails for good; A keeps answering.
        let t1 = t0 + secs(60);
        s.record(&a, Family::V4, answer(&[v4(1)], 60), t1);
        let r = s.record(&a, Family::V6, failed(), t1);
        assert!(r.served_stale);
        let snap = &s.snapshot(t1)[0];
        assert_eq!(snap.v4.failures, 0);
        assert_eq!(snap.v6.failures, 1);
        assert_eq!(next_query(&s, "a.example", Family::V4, t1), t1 + secs(60));
        assert_eq!(next_query(&s, "a.example", Family::V6, t1), t1 + secs(1));
        // NXDOMAIN on A leaves AAAA's schedule alone, and the other way round.
        s.record(&a, Family::V4, QueryOutcome::NxDomain, t1);
        assert_eq!(next_query(&s, "a.example", Family::V6, t1), t1 + secs(1));
        // After AAAA's serve-stale window (t0 + 100) only A remains.
        let t2 = t0 + secs(100);
        assert_eq!(allowed(&s, "a.example", t2), vec![v4(1)]);
    }

    #[test]
    fn wrong_family_addresses_are_ignored() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        s.record(&a, Family::V4, answer(&[v4(1), v6(1)], 60), t0);
        assert_eq!(allowed(&s, "a.example", t0), vec![v4(1)]);
        // Only the wrong family: treated as NODATA.
        let r = s.record(&a, Family::V6, answer(&[v4(2)], 60), t0);
        assert!(!r.changed);
        assert_eq!(s.snapshot(t0)[0].v6.last_outcome, Some(OutcomeKind::NoData));
        assert_eq!(allowed(&s, "a.example", t0), vec![v4(1)]);
    }

    #[test]
    fn union_is_capped_dropping_the_soonest_expiring() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        s.set_config(ScheduleConfig {
            max_addresses: 3,
            ..cfg()
        });
        let a = host("a.example");
        s.record(&a, Family::V4, answer(&[v4(1), v4(2)], 60), t0);
        let r = s.record(&a, Family::V4, answer(&[v4(3)], 60), t0 + secs(1));
        assert_eq!(r.truncated, None);
        let r = s.record(&a, Family::V4, answer(&[v4(4)], 60), t0 + secs(2));
        // v4(1) and v4(2) tie for soonest; the higher address goes.
        assert_eq!(r.truncated, Some(1));
        assert!(r.changed);
        assert_eq!(
            allowed(&s, "a.example", t0 + secs(2)),
            vec![v4(1), v4(3), v4(4)]
        );
        // An oversized answer keeps the lowest addresses, and the cap holds.
        let many: Vec<IpAddr> = (10..20).map(v4).collect();
        let r = s.record(&a, Family::V4, answer(&many, 60), t0 + secs(3));
        assert_eq!(r.truncated, Some(10));
        assert_eq!(
            allowed(&s, "a.example", t0 + secs(3)),
            vec![v4(10), v4(11), v4(12)]
        );
        // The cap is per family.
        s.record(&a, Family::V6, answer(&[v6(1), v6(2)], 60), t0 + secs(3));
        assert_eq!(allowed(&s, "a.example", t0 + secs(3)).len(), 5);
    }

    #[test]
    fn set_hosts_keeps_staying_hosts_and_forgets_removed_ones() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example", "b.example"], t0);
        s.record(&host("a.example"), Family::V4, answer(&[v4(1)], 600), t0);
        s.record(&host("a.example"), Family::V6, answer(&[v6(1)], 600), t0);
        s.record(&host("b.example"), Family::V4, answer(&[v4(2)], 600), t0);
        let t1 = t0 + secs(10);
        s.set_hosts([host("a.example"), host("c.example")], t1);
        assert_eq!(allowed(&s, "a.example", t1), vec![v4(1), v6(1)]);
        assert!(allowed(&s, "b.example", t1).is_empty());
        // a keeps its schedule; c is new and due now; b is gone.
        assert_eq!(
            s.due(t1),
            vec![
                (host("c.example"), Family::V4),
                (host("c.example"), Family::V6)
            ]
        );
        assert_eq!(
            s.hosts().cloned().collect::<Vec<_>>(),
            vec![host("a.example"), host("c.example")]
        );
        // A late result for the removed host is dropped.
        let r = s.record(&host("b.example"), Family::V4, answer(&[v4(2)], 60), t1);
        assert!(r.ignored);
        assert!(!s.answers(t1).contains_key(&host("b.example")));
        // Re-adding b starts from scratch.
        s.set_hosts([host("a.example"), host("b.example")], t1);
        assert!(allowed(&s, "b.example", t1).is_empty());
        assert_eq!(s.due(t1).len(), 2);
    }

    #[test]
    fn set_config_keeps_state_and_applies_to_later_answers() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        s.record(&a, Family::V4, answer(&[v4(1)], 600), t0);
        s.set_config(ScheduleConfig {
            max_ttl: secs(60),
            grace: secs(0),
            ..cfg()
        });
        assert_eq!(s.config().max_ttl, secs(60));
        assert_eq!(s.answers(t0)[&a][0].lifetime, secs(610));
        assert_eq!(next_query(&s, "a.example", Family::V4, t0), t0 + secs(600));
        s.record(&a, Family::V4, answer(&[v4(2)], 600), t0);
        assert_eq!(next_query(&s, "a.example", Family::V4, t0), t0 + secs(60));
        assert_eq!(s.answers(t0)[&a][1].lifetime, secs(60));
    }

    #[test]
    fn next_wakeup_is_the_minimum_and_none_when_empty() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(cfg());
        assert_eq!(s.next_wakeup(), None);
        s.set_hosts([host("a.example"), host("b.example")], t0);
        assert_eq!(s.next_wakeup(), Some(t0));
        let a = host("a.example");
        let b = host("b.example");
        s.record(&a, Family::V4, answer(&[v4(1)], 300), t0);
        s.record(&a, Family::V6, answer(&[v6(1)], 200), t0);
        s.record(&b, Family::V4, answer(&[v4(2)], 100), t0);
        s.record(&b, Family::V6, QueryOutcome::NoData, t0);
        assert_eq!(s.next_wakeup(), Some(t0 + secs(30)));
        s.record(&b, Family::V6, QueryOutcome::NoData, t0 + secs(90));
        assert_eq!(s.next_wakeup(), Some(t0 + secs(100)));
        s.set_hosts(Vec::new(), t0);
        assert_eq!(s.next_wakeup(), None);
    }

    #[test]
    fn next_expiry_is_the_soonest_live_expiry() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        assert_eq!(s.next_expiry(t0), None);
        let a = host("a.example");
        s.record(&a, Family::V4, answer(&[v4(1)], 50), t0);
        s.record(&a, Family::V6, answer(&[v6(1)], 20), t0);
        assert_eq!(s.next_expiry(t0), Some(t0 + secs(30)));
        assert_eq!(s.next_expiry(t0 + secs(30)), Some(t0 + secs(60)));
    }

    #[test]
    fn answers_lifetimes_are_expiry_minus_now_and_merge_families() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example", "b.example"], t0);
        let a = host("a.example");
        s.record(&a, Family::V6, answer(&[v6(1)], 100), t0);
        s.record(&a, Family::V4, answer(&[v4(2), v4(1)], 40), t0 + secs(5));
        let now = t0 + secs(7) + ms(250);
        let got = s.answers(now);
        assert_eq!(
            got[&a],
            vec![
                AddressAnswer {
                    addr: v4(1),
                    lifetime: secs(48) - ms(250),
                },
                AddressAnswer {
                    addr: v4(2),
                    lifetime: secs(48) - ms(250),
                },
                AddressAnswer {
                    addr: v6(1),
                    lifetime: secs(103) - ms(250),
                },
            ]
        );
        // b never answered: absent, not an empty list.
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn changed_reports_set_changes_only() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        let r = s.record(&a, Family::V4, answer(&[v4(1)], 60), t0);
        assert!(r.changed && r.refreshed);
        let r = s.record(&a, Family::V4, answer(&[v4(1)], 60), t0 + secs(60));
        assert!(!r.changed);
        assert!(r.refreshed);
        let r = s.record(&a, Family::V4, answer(&[v4(2)], 60), t0 + secs(60));
        assert!(r.changed);
        // Expiry by the passage of time is not caused by a result: the
        // kernel's timeouts handle it (see `next_expiry`).
        let r = s.record(&a, Family::V4, QueryOutcome::NoData, t0 + secs(200));
        assert!(!r.changed);
        assert!(!r.refreshed);
    }

    #[test]
    fn snapshot_reports_per_family_state() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let a = host("a.example");
        s.record(&a, Family::V4, answer(&[v4(1)], 60), t0);
        s.record(
            &a,
            Family::V6,
            QueryOutcome::Failed {
                reason: "SERVFAIL".into(),
            },
            t0,
        );
        let now = t0 + secs(20);
        let snap = s.snapshot(now);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].host, a);
        let v4s = &snap[0].v4;
        assert_eq!(v4s.family, Family::V4);
        assert_eq!(
            v4s.addresses,
            vec![AddressStatus {
                addr: v4(1),
                expires: t0 + secs(70),
                remaining: secs(50),
            }]
        );
        assert_eq!(v4s.next_query, t0 + secs(60));
        assert_eq!(v4s.next_query_in, secs(40));
        assert_eq!(v4s.last_good, Some(t0));
        assert_eq!(v4s.last_outcome, Some(OutcomeKind::Answer));
        let v6s = &snap[0].v6;
        assert!(v6s.addresses.is_empty());
        assert_eq!(v6s.failures, 1);
        assert_eq!(v6s.last_error.as_deref(), Some("SERVFAIL"));
        assert_eq!(v6s.last_good, None);
        assert_eq!(v6s.next_query_in, Duration::ZERO);
    }

    #[test]
    fn take_due_hands_out_each_query_once_until_its_result_or_the_hold() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example"], t0);
        let first = s.take_due(t0, secs(5));
        assert_eq!(first.len(), 2);
        // Asked: not due again, and the next wake-up is the hold, not now.
        assert!(s.take_due(t0, secs(5)).is_empty());
        assert_eq!(s.next_wakeup(), Some(t0 + secs(5)));
        // The A result reschedules A by its TTL; AAAA, never answered, is
        // asked again once the hold is over.
        s.record(
            &host("a.example"),
            Family::V4,
            answer(&[v4(1)], 600),
            t0 + secs(1),
        );
        assert_eq!(
            s.take_due(t0 + secs(5), secs(5)),
            vec![(host("a.example"), Family::V6)]
        );
    }

    #[test]
    fn a_zero_ttl_is_not_asked_again_at_once() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(ScheduleConfig {
            min_ttl: Duration::ZERO,
            negative_ttl: Duration::ZERO,
            ..cfg()
        });
        s.set_hosts([host("a.example")], t0);
        s.record(&host("a.example"), Family::V4, answer(&[v4(1)], 0), t0);
        s.record(&host("a.example"), Family::V6, QueryOutcome::NoData, t0);
        assert!(s.due(t0).is_empty());
        assert_eq!(s.next_wakeup(), Some(t0 + MIN_REQUERY));
    }

    #[test]
    fn failing_hosts_counts_hosts_not_families() {
        let t0 = Instant::now();
        let mut s = sched(&["a.example", "b.example"], t0);
        let fail = || QueryOutcome::Failed {
            reason: "timeout".into(),
        };
        s.record(&host("a.example"), Family::V4, fail(), t0);
        s.record(&host("a.example"), Family::V6, fail(), t0);
        assert_eq!(s.failing_hosts(), 1);
        s.record(&host("b.example"), Family::V6, fail(), t0);
        assert_eq!(s.failing_hosts(), 2);
        s.record(&host("a.example"), Family::V4, answer(&[v4(1)], 60), t0);
        assert_eq!(s.failing_hosts(), 2, "AAAA of a still fails");
    }
}
