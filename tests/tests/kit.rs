//! The kit itself: without any firewall the topology forwards everything,
//! so a blocked probe in the other suites is the firewall's doing; and
//! every guard cleans up.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use testkit::{
    dns_query, dns_tcp, dns_udp, errno, require_root, tcp, udp, wait_until, Dnsmasq, Netns, Probe,
    QType, Servers, Topology, Transport, BLOCKED_TIMEOUT, DNS_V4, DNS_V6, ROUTER_IN_V4,
};

const T: Duration = Duration::from_secs(2);

#[test]
fn topology_forwards_tcp_udp_and_dns_without_a_firewall() {
    require_root();
    let topo = Topology::builder().tag("kit").ingress("oc-in-kit").build();
    let servers = Servers::standard(&topo.server);
    let dns = Dnsmasq::start(
        &topo.server,
        &[IpAddr::V4(DNS_V4), IpAddr::V6(DNS_V6)],
        30,
        &[("api.kit.test", "198.18.1.10".parse().unwrap())],
    );
    let _router_svc = Servers::start(
        &topo.router,
        &[SocketAddr::new(IpAddr::V4(ROUTER_IN_V4), 8080)],
        &[],
    );
    topo.expect(
        &[
            (tcp("198.18.1.10:443"), Probe::Connected),
            (tcp("198.18.1.14:8011"), Probe::Connected),
            (tcp("198.18.1.54:53"), Probe::Connected),
            (tcp("[2001:db8:1::10]:443"), Probe::Connected),
            (tcp("[2001:db8:1::54]:53"), Probe::Connected),
            (udp("198.18.1.12:5353"), Probe::Answered),
            (udp("198.18.1.54:53"), Probe::Answered),
            (udp("[2001:db8:1::11]:5000"), Probe::Answered),
            (dns_udp("198.18.1.53:53", "api.kit.test"), Probe::Answered),
            (dns_tcp("198.18.1.53:53", "api.kit.test"), Probe::Answered),
            (
                dns_udp("[2001:db8:1::53]:53", "api.kit.test"),
                Probe::Answered,
            ),
            (tcp("198.18.0.1:8080"), Probe::Connected),
            // Nothing listens here: a closed port looks like this.
            (tcp("198.18.1.10:9"), Probe::Refused),
            (
                udp("198.18.1.10:9"),
                Probe::Unreachable(errno::ECONNREFUSED),
            ),
        ],
        T,
    );
    let hit = SocketAddr::new("198.18.1.10".parse().unwrap(), 443);
    assert_eq!(servers.hits(Transport::Tcp, hit), 1);
    assert_eq!(
        servers.hits(Transport::Tcp, SocketAddr::new(hit.ip(), 80)),
        0
    );

    // The DNS answers are dnsmasq's records, and a reload changes them.
    let ask = |name: &str| {
        topo.client.run(|| {
            dns_query(
                "198.18.1.53:53".parse().unwrap(),
                name,
                QType::A,
                Transport::Udp,
                T,
            )
        })
    };
    let r = ask("api.kit.test").expect("answer");
    assert_eq!(r.addrs, vec!["198.18.1.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(r.ttls, vec![30]);
    assert_eq!(ask("missing.kit.test").expect("answer").rcode, 3);
    dns.set_records(&[("api.kit.test", "198.18.1.11".parse().unwrap())]);
    let r = ask("api.kit.test").expect("answer");
    assert_eq!(r.addrs, vec!["198.18.1.11".parse::<IpAddr>().unwrap()]);

    let pid = dns.pid();
    drop(dns);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "dnsmasq {pid} still runs after its guard dropped"
    );
}

#[test]
fn probes_time_out_when_packets_vanish() {
    require_root();
    let topo = Topology::builder().tag("kitdrop").build();
    let _servers = Servers::standard(&topo.server);
    // A drop in the router made by hand (not by the product): what a
    // dropping firewall looks like to the probes.
    topo.router.exec_ok([
        "nft",
        "add table inet kit; add chain inet kit f { type filter hook forward priority 0; policy drop; }",
    ]);
    let start = std::time::Instant::now();
    topo.expect(
        &[
            (tcp("198.18.1.10:443"), Probe::TimedOut),
            (udp("198.18.1.10:443"), Probe::TimedOut),
            (udp("[2001:db8:1::10]:443"), Probe::TimedOut),
        ],
        BLOCKED_TIMEOUT,
    );
    assert!(
        start.elapsed() < BLOCKED_TIMEOUT * 2,
        "probes run concurrently"
    );
}

#[test]
fn namespaces_go_away_on_drop_even_after_a_panic() {
    require_root();
    let ns = Netns::new("kitdrop");
    let path = ns.path();
    assert!(path.exists());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.run(|| panic!("inside the namespace"))
    }));
    let msg = r.expect_err("the panic propagates");
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"inside the namespace"));
    let child = ns.spawn(["sleep", "60"], None);
    let pid = child.pid();
    std::mem::forget(child);
    drop(ns);
    assert!(!path.exists(), "{} still exists", path.display());
    // The leaked child was killed by the namespace (its zombie may remain,
    // unreaped, since its guard was forgotten).
    // SIGKILL takes effect when the process is next scheduled: wait for it.
    let status = || std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    wait_until(
        "the leaked child to be killed",
        Duration::from_secs(5),
        || {
            let s = status();
            s.is_empty() || s.contains("State:\tZ")
        },
        status,
    );
}
