//! The resolver against a real (test) DNS server on loopback.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use egress_core::allowlist::parse_host;
use egress_core::HostName;
use egress_resolve::{FailReason, Family, Outcome, Resolver, ResolverSettings};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::{Fault, TestDns};

fn host(name: &str) -> HostName {
    parse_host(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn settings(server: &TestDns) -> ResolverSettings {
    ResolverSettings {
        servers: vec![server.addr()],
        timeout: Duration::from_secs(2),
        attempts: 1,
        concurrency: 16,
        max_addresses: 32,
    }
}

fn resolver(server: &TestDns) -> Resolver {
    Resolver::new(settings(server)).unwrap()
}

fn answer(addrs: &[&str], ttl: u64) -> Outcome {
    Outcome::Answer {
        addrs: ips(addrs),
        ttl: Duration::from_secs(ttl),
        truncated_from: None,
    }
}

fn failed_reason(outcome: &Outcome) -> FailReason {
    match outcome {
        Outcome::Failed { reason, .. } => *reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn both_families_answer_with_their_own_ttls() {
    let dns = TestDns::start().await;
    dns.set_a("www.example.test", &["192.0.2.20", "192.0.2.3"], 300);
    dns.set_aaaa("www.example.test", &["2001:db8::b", "2001:db8::a"], 60);

    let result = resolver(&dns).resolve(&host("www.example.test")).await;

    assert_eq!(result.host, host("www.example.test"));
    assert_eq!(result.v4, answer(&["192.0.2.3", "192.0.2.20"], 300));
    assert_eq!(result.v6, answer(&["2001:db8::a", "2001:db8::b"], 60));
    assert_eq!(result.outcome(Family::V4), &result.v4);
    assert_eq!(dns.queries("www.example.test", RecordType::A), 1);
    assert_eq!(dns.queries("www.example.test", RecordType::AAAA), 1);
    // The name is absolute: no search-domain variants were asked.
    assert_eq!(dns.total_queries(), 2);
}

#[tokio::test]
async fn families_are_asked_concurrently() {
    let dns = TestDns::start().await;
    dns.set_a("slow.test", &["192.0.2.1"], 60);
    dns.set_aaaa("slow.test", &["2001:db8::1"], 60);
    // Below hickory's 333 ms UDP retransmission floor, so one query each.
    let delay = Duration::from_millis(250);
    dns.set_delay(delay);

    let started = Instant::now();
    let result = resolver(&dns).resolve(&host("slow.test")).await;
    let elapsed = started.elapsed();

    assert_eq!(result.v4, answer(&["192.0.2.1"], 60));
    assert_eq!(result.v6, answer(&["2001:db8::1"], 60));
    assert!(elapsed < delay * 2, "took {elapsed:?}");
    assert_eq!(dns.max_in_flight(), 2);
}

#[tokio::test]
async fn cname_chain_ttl_is_the_smallest_on_the_way() {
    let dns = TestDns::start().await;
    dns.set_cname("www.example.test", "cdn.example.test", 120);
    dns.set_cname("cdn.example.test", "origin.example.test", 45);
    dns.set_a("origin.example.test", &["192.0.2.7"], 300);
    dns.set_aaaa("origin.example.test", &["2001:db8::7"], 20);

    let r = resolver(&dns);
    let result = r.resolve(&host("www.example.test")).await;
    assert_eq!(result.v4, answer(&["192.0.2.7"], 45));
    assert_eq!(result.v6, answer(&["2001:db8::7"], 20));

    // The same when the server returns only the first link and the client
    // has to follow the chain with queries of its own.
    dns.set_chase_cnames(false);
    let result = r.resolve(&host("www.example.test")).await;
    assert_eq!(result.v4, answer(&["192.0.2.7"], 45));
    assert_eq!(result.v6, answer(&["2001:db8::7"], 20));
    assert_eq!(dns.queries("origin.example.test", RecordType::A), 1);
    assert_eq!(dns.queries("cdn.example.test", RecordType::A), 1);
}

#[tokio::test]
async fn cname_to_a_name_without_addresses() {
    let dns = TestDns::start().await;
    dns.set_cname("alias.test", "gone.test", 60);
    dns.set_cname("alias6.test", "v4only.test", 60);
    dns.set_a("v4only.test", &["192.0.2.4"], 60);

    let r = resolver(&dns);
    let gone = r.resolve(&host("alias.test")).await;
    assert_eq!(gone.v4, Outcome::NxDomain);
    assert_eq!(gone.v6, Outcome::NxDomain);
    let v4only = r.resolve(&host("alias6.test")).await;
    assert_eq!(v4only.v4, answer(&["192.0.2.4"], 60));
    assert_eq!(v4only.v6, Outcome::NoData);
}

#[tokio::test]
async fn no_data_for_aaaa_while_a_answers() {
    let dns = TestDns::start().await;
    dns.set_a("v4only.test", &["192.0.2.1"], 90);

    let result = resolver(&dns).resolve(&host("v4only.test")).await;

    assert_eq!(result.v4, answer(&["192.0.2.1"], 90));
    assert_eq!(result.v6, Outcome::NoData);
}

#[tokio::test]
async fn nxdomain_for_unknown_and_forced_names() {
    let dns = TestDns::start().await;
    dns.set_a("known.test", &["192.0.2.1"], 60);
    dns.set_fault("forced.test", None, Fault::Rcode(ResponseCode::NXDomain));
    let r = resolver(&dns);

    let unknown = r.resolve(&host("unknown.test")).await;
    assert_eq!(unknown.v4, Outcome::NxDomain);
    assert_eq!(unknown.v6, Outcome::NxDomain);

    let forced = r.resolve(&host("forced.test")).await;
    assert_eq!(forced.v4, Outcome::NxDomain);
    assert_eq!(forced.v6, Outcome::NxDomain);
}

#[tokio::test]
async fn servfail_and_refused_fail_with_their_reason_after_all_attempts() {
    let dns = TestDns::start().await;
    dns.set_fault("broken.test", None, Fault::Rcode(ResponseCode::ServFail));
    dns.set_fault("closed.test", None, Fault::Rcode(ResponseCode::Refused));
    dns.set_fault("odd.test", None, Fault::Rcode(ResponseCode::NotImp));
    let r = Resolver::new(ResolverSettings {
        attempts: 3,
        ..settings(&dns)
    })
    .unwrap();

    let broken = r.resolve(&host("broken.test")).await;
    assert_eq!(failed_reason(&broken.v4), FailReason::ServFail);
    assert_eq!(failed_reason(&broken.v6), FailReason::ServFail);
    let closed = r.resolve(&host("closed.test")).await;
    assert_eq!(failed_reason(&closed.v4), FailReason::Refused);
    assert_eq!(failed_reason(&closed.v6), FailReason::Refused);
    let odd = r.resolve(&host("odd.test")).await;
    assert_eq!(failed_reason(&odd.v4), FailReason::Other);

    // `attempts` counts tries, the first one included.
    assert_eq!(dns.queries("broken.test", RecordType::A), 3);
    assert_eq!(dns.queries("closed.test", RecordType::AAAA), 3);
    if let Outcome::Failed { detail, .. } = &broken.v4 {
        assert!(detail.to_lowercase().contains("serv"), "{detail}");
    }
}

#[tokio::test]
async fn nxdomain_is_final_and_not_retried() {
    let dns = TestDns::start().await;
    let r = Resolver::new(ResolverSettings {
        attempts: 3,
        ..settings(&dns)
    })
    .unwrap();

    assert_eq!(r.resolve(&host("nx.test")).await.v4, Outcome::NxDomain);
    assert_eq!(dns.queries("nx.test", RecordType::A), 1);
}

#[tokio::test]
async fn dropped_query_times_out_and_the_other_family_still_answers() {
    let dns = TestDns::start().await;
    dns.set_aaaa("half.test", &["2001:db8::1"], 60);
    dns.set_fault("half.test", Some(RecordType::A), Fault::Drop);
    let timeout = Duration::from_millis(300);
    let r = Resolver::new(ResolverSettings {
        timeout,
        ..settings(&dns)
    })
    .unwrap();

    let started = Instant::now();
    let result = r.resolve(&host("half.test")).await;
    let elapsed = started.elapsed();

    assert_eq!(failed_reason(&result.v4), FailReason::Timeout);
    assert_eq!(result.v6, answer(&["2001:db8::1"], 60));
    assert!(
        elapsed >= timeout - Duration::from_millis(50) && elapsed < timeout * 4,
        "took {elapsed:?}"
    );
    assert_eq!(dns.queries("half.test", RecordType::A), 1);
}

#[tokio::test]
async fn one_family_failing_leaves_the_other_intact() {
    let dns = TestDns::start().await;
    dns.set_a("a-ok.test", &["192.0.2.1"], 60);
    dns.set_aaaa("a-ok.test", &["2001:db8::1"], 60);
    dns.set_fault(
        "a-ok.test",
        Some(RecordType::AAAA),
        Fault::Rcode(ResponseCode::ServFail),
    );
    dns.set_a("aaaa-ok.test", &["192.0.2.2"], 60);
    dns.set_aaaa("aaaa-ok.test", &["2001:db8::2"], 70);
    dns.set_fault(
        "aaaa-ok.test",
        Some(RecordType::A),
        Fault::Rcode(ResponseCode::Refused),
    );
    let r = resolver(&dns);

    let a_ok = r.resolve(&host("a-ok.test")).await;
    assert_eq!(a_ok.v4, answer(&["192.0.2.1"], 60));
    assert_eq!(failed_reason(&a_ok.v6), FailReason::ServFail);

    let aaaa_ok = r.resolve(&host("aaaa-ok.test")).await;
    assert_eq!(failed_reason(&aaaa_ok.v4), FailReason::Refused);
    assert_eq!(aaaa_ok.v6, answer(&["2001:db8::2"], 70));
}

#[tokio::test]
async fn duplicate_records_are_merged() {
    let dns = TestDns::start().await;
    dns.set_a(
        "dup.test",
        &[
            "192.0.2.2",
            "192.0.2.1",
            "192.0.2.2",
            "192.0.2.1",
            "192.0.2.2",
        ],
        60,
    );
    dns.set_aaaa("dup.test", &["2001:db8::1", "2001:0db8:0::1"], 60);

    let result = resolver(&dns).resolve(&host("dup.test")).await;

    assert_eq!(result.v4, answer(&["192.0.2.1", "192.0.2.2"], 60));
    assert_eq!(result.v6, answer(&["2001:db8::1"], 60));
}

#[tokio::test]
async fn max_addresses_cuts_and_reports_the_count() {
    let dns = TestDns::start().await;
    let many: Vec<String> = (1..=20).rev().map(|i| format!("192.0.2.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    dns.set_a("big.test", &many, 60);
    dns.set_aaaa("big.test", &["2001:db8::2", "2001:db8::1"], 60);
    let r = Resolver::new(ResolverSettings {
        max_addresses: 5,
        ..settings(&dns)
    })
    .unwrap();

    let result = r.resolve(&host("big.test")).await;

    assert_eq!(
        result.v4,
        Outcome::Answer {
            addrs: ips(&[
                "192.0.2.1",
                "192.0.2.2",
                "192.0.2.3",
                "192.0.2.4",
                "192.0.2.5"
            ]),
            ttl: Duration::from_secs(60),
            truncated_from: Some(20),
        }
    );
    assert_eq!(result.v6, answer(&["2001:db8::1", "2001:db8::2"], 60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_all_keeps_order_and_bounds_queries_in_flight() {
    const HOSTS: u32 = 500;
    const CONCURRENCY: usize = 8;
    let dns = TestDns::start().await;
    dns.set_delay(Duration::from_millis(3));
    let mut hosts = Vec::new();
    for i in 0..HOSTS {
        let name = format!("h{i}.bulk.test");
        let (hi, lo) = (i / 256, i % 256);
        match i % 10 {
            // Some hosts fail entirely or partly; their neighbours must not care.
            3 => {}
            7 => {
                dns.set_a(&name, &[&format!("10.0.{hi}.{lo}")], 100 + i);
                dns.set_fault(
                    &name,
                    Some(RecordType::AAAA),
                    Fault::Rcode(ResponseCode::ServFail),
                );
            }
            _ => {
                dns.set_a(&name, &[&format!("10.0.{hi}.{lo}")], 100 + i);
                dns.set_aaaa(&name, &[&format!("2001:db8::{i:x}")], 100 + i);
            }
        }
        hosts.push(host(&name));
    }
    // A name twice: both slots are filled, in place.
    hosts.push(host("h1.bulk.test"));

    let r = Resolver::new(ResolverSettings {
        concurrency: CONCURRENCY,
        ..settings(&dns)
    })
    .unwrap();
    let results = r.resolve_all(&hosts).await;

    assert_eq!(results.len(), hosts.len());
    for (i, (result, asked)) in results.iter().zip(&hosts).enumerate() {
        assert_eq!(&result.host, asked, "slot {i}");
        let i = if i == HOSTS as usize { 1 } else { i as u32 };
        let (hi, lo) = (i / 256, i % 256);
        let v4 = format!("10.0.{hi}.{lo}");
        let v6 = format!("2001:db8::{i:x}");
        match i % 10 {
            3 => {
                assert_eq!(result.v4, Outcome::NxDomain, "{asked}");
                assert_eq!(result.v6, Outcome::NxDomain, "{asked}");
            }
            7 => {
                assert_eq!(result.v4, answer(&[&v4], 100 + u64::from(i)), "{asked}");
                assert_eq!(failed_reason(&result.v6), FailReason::ServFail, "{asked}");
            }
            _ => {
                assert_eq!(result.v4, answer(&[&v4], 100 + u64::from(i)), "{asked}");
                assert_eq!(result.v6, answer(&[&v6], 100 + u64::from(i)), "{asked}");
            }
        }
    }

    let max = dns.max_in_flight();
    assert!(max <= CONCURRENCY, "{max} queries in flight");
    // The bound is used, not just respected.
    assert!(max >= CONCURRENCY / 2, "only {max} queries in flight");
}

#[tokio::test]
async fn concurrency_bound_holds_across_calls() {
    let dns = TestDns::start().await;
    dns.set_delay(Duration::from_millis(20));
    let names: Vec<HostName> = (0..6)
        .map(|i| {
            let name = format!("c{i}.test");
            dns.set_a(&name, &["192.0.2.1"], 60);
            host(&name)
        })
        .collect();
    let r = Resolver::new(ResolverSettings {
        concurrency: 3,
        ..settings(&dns)
    })
    .unwrap();

    let clone = r.clone();
    let (a, b, c) = tokio::join!(
        r.resolve_all(&names[..3]),
        clone.resolve_all(&names[3..]),
        r.resolve(&names[0]),
    );

    assert_eq!(a.len() + b.len(), 6);
    assert_eq!(c.v4, answer(&["192.0.2.1"], 60));
    assert_eq!(dns.max_in_flight(), 3);
}

#[tokio::test]
async fn every_resolve_asks_the_server_again() {
    let dns = TestDns::start().await;
    dns.set_a("fresh.test", &["192.0.2.1"], 300);
    let r = resolver(&dns);

    let first = r.resolve(&host("fresh.test")).await;
    assert_eq!(first.v4, answer(&["192.0.2.1"], 300));
    // A cache would now report 299 s or less.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = r.resolve(&host("fresh.test")).await;
    assert_eq!(second.v4, answer(&["192.0.2.1"], 300));

    dns.set_a("fresh.test", &["192.0.2.9"], 30);
    let third = r.resolve(&host("fresh.test")).await;
    assert_eq!(third.v4, answer(&["192.0.2.9"], 30));

    assert_eq!(dns.queries("fresh.test", RecordType::A), 3);
    assert_eq!(dns.queries("fresh.test", RecordType::AAAA), 3);
}

#[tokio::test]
async fn negative_answers_are_not_cached_either() {
    let dns = TestDns::start().await;
    let r = resolver(&dns);

    assert_eq!(r.resolve(&host("late.test")).await.v4, Outcome::NxDomain);
    dns.set_a("late.test", &["192.0.2.5"], 60);
    assert_eq!(
        r.resolve(&host("late.test")).await.v4,
        answer(&["192.0.2.5"], 60)
    );
}

#[tokio::test]
async fn hosts_file_is_not_consulted() {
    // A name from this machine's /etc/hosts, so a resolver that read the file
    // would answer with its address instead of asking the server.
    let text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let name = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace().skip(1))
        .find(|n| !n.contains("localhost") && parse_host(n).is_ok())
        .unwrap_or("fallback.test");
    let dns = TestDns::start().await;
    dns.set_a(name, &["192.0.2.77"], 60);
    dns.set_aaaa(name, &["2001:db8::77"], 60);

    let result = resolver(&dns).resolve(&host(name)).await;

    assert_eq!(result.v4, answer(&["192.0.2.77"], 60), "{name}");
    assert_eq!(result.v6, answer(&["2001:db8::77"], 60), "{name}");
    assert_eq!(dns.queries(name, RecordType::A), 1);
}

#[tokio::test]
async fn a_silent_server_does_not_hide_a_working_one() {
    let silent = TestDns::start().await;
    silent.set_fault("both.test", None, Fault::Drop);
    let working = TestDns::start().await;
    working.set_a("both.test", &["192.0.2.8"], 60);
    working.set_aaaa("both.test", &["2001:db8::8"], 60);
    let timeout = Duration::from_millis(500);
    let r = Resolver::new(ResolverSettings {
        servers: vec![silent.addr(), working.addr()],
        timeout,
        ..settings(&working)
    })
    .unwrap();

    let started = Instant::now();
    let result = r.resolve(&host("both.test")).await;

    assert_eq!(result.v4, answer(&["192.0.2.8"], 60));
    assert_eq!(result.v6, answer(&["2001:db8::8"], 60));
    assert!(started.elapsed() < timeout, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn localhost_is_answered_without_asking() {
    let dns = TestDns::start().await;

    let result = resolver(&dns).resolve(&host("localhost")).await;

    assert_eq!(result.v4.addrs(), ips(&["127.0.0.1"]).as_slice());
    assert_eq!(result.v6.addrs(), ips(&["::1"]).as_slice());
    assert_eq!(dns.total_queries(), 0);
}
