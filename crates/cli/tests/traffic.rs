//! The `openclaw-egress` binary end to end: real packets from a client
//! namespace through a router namespace (where the CLI loads the table) to
//! servers and a dnsmasq in a server namespace. Every blocked probe is
//! checked open before the table is loaded (or after it is flushed), so a
//! block is the firewall's doing, not the topology's.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use testkit::errno::{EACCES, EHOSTUNREACH};
use testkit::{
    dns_tcp, dns_udp, error_locations, require_root, tcp, udp, Dnsmasq, Netns, Probe, Run, Servers,
    Target, TempDir, Topology, Transport, BLOCKED_TIMEOUT, DNS_V4, DNS_V6, ROUTER_IN_V4,
    ROUTER_OUT_V4,
};

const BIN: &str = env!("CARGO_BIN_EXE_openclaw-egress");

/// The settings a test varies.
struct Settings {
    action: &'static str,
    dns_allow: Vec<&'static str>,
    allow_private: Vec<&'static str>,
    host_ports: Vec<&'static str>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            action: "reject",
            dns_allow: vec!["198.18.1.53", "2001:db8:1::53"],
            allow_private: vec!["198.18.0.0/15", "2001:db8::/32"],
            host_ports: Vec::new(),
        }
    }
}

/// The CLI pointed at a config and allowlist in a temp folder, run in the
/// router namespace.
struct Cli<'a> {
    router: &'a Netns,
    iface: String,
    dir: TempDir,
    table: String,
}

fn quoted(list: &[&str]) -> String {
    list.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl<'a> Cli<'a> {
    fn new(topo: &'a Topology, tag: &str) -> Cli<'a> {
        let cli = Cli {
            router: &topo.router,
            iface: topo.ingress().to_string(),
            dir: TempDir::new(&format!("cli-{tag}")),
            table: format!("oc_cli_{tag}_{}", std::process::id()),
        };
        cli.settings(&Settings::default());
        cli
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("egressd.toml")
    }

    fn allowlist_path(&self) -> PathBuf {
        self.dir.join("allowlist.conf")
    }

    /// Writes egressd.toml.
    fn settings(&self, s: &Settings) {
        let text = format!(
            "allowlist = \"allowlist.conf\"\n\
             [network]\ninterface = \"{}\"\nhost_ports = [{}]\n\
             [resolver]\nservers = [\"198.18.1.53:53\"]\ntimeout = \"1s\"\nattempts = 1\n\
             [dns]\nallow = [{}]\n\
             [firewall]\ntable = \"{}\"\naction = \"{}\"\nallow_private = [{}]\n",
            self.iface,
            quoted(&s.host_ports),
            quoted(&s.dns_allow),
            self.table,
            s.action,
            quoted(&s.allow_private),
        );
        self.dir.write("egressd.toml", &text);
    }

    /// Writes allowlist.conf.
    fn allowlist(&self, text: &str) {
        self.dir.write("allowlist.conf", text);
    }

    fn run(&self, command: &str) -> Run {
        self.run_args(&[command])
    }

    fn run_args(&self, args: &[&str]) -> Run {
        let config = self.config_path();
        let mut argv = vec![BIN, "--config", config.to_str().unwrap()];
        argv.extend_from_slice(args);
        Run::from(self.router.exec(argv))
    }

    /// `nft list table inet TABLE` in the router (panics if absent).
    fn listing(&self) -> String {
        self.router
            .exec_ok(["nft", "list", "table", "inet", &self.table])
    }

    fn table_exists(&self) -> bool {
        self.router.nft_table(&self.table).is_some()
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Topology with the standard servers running.
fn setup(tag: &str) -> (Topology, Servers) {
    require_root();
    let topo = Topology::builder()
        .tag(tag)
        .ingress(&format!("oc-in-{}", &tag[..tag.len().min(9)]))
        .build();
    let servers = Servers::standard(&topo.server);
    (topo, servers)
}

fn dnsmasq<'a>(topo: &'a Topology, records: &[(&str, &str)]) -> Dnsmasq<'a> {
    let records: Vec<(&str, IpAddr)> = records.iter().map(|(n, a)| (*n, addr(a))).collect();
    Dnsmasq::start(
        &topo.server,
        &[IpAddr::V4(DNS_V4), IpAddr::V6(DNS_V6)],
        30,
        &records,
    )
}

/// Every target answers (Connected for TCP, Answered otherwise).
fn open(targets: &[Target]) -> Vec<(Target, Probe)> {
    targets
        .iter()
        .map(|t| {
            let want = match t.kind {
                testkit::TargetKind::Tcp => Probe::Connected,
                _ => Probe::Answered,
            };
            (t.clone(), want)
        })
        .collect()
}

#[test]
fn an_allowed_port_connects_while_other_ports_and_addresses_are_refused() {
    let (topo, servers) = setup("port");
    let cli = Cli::new(&topo, "port");
    cli.allowlist("198.18.1.10:443\n");
    let blocked = [
        tcp("198.18.1.10:80"),
        tcp("198.18.1.14:443"),
        udp("198.18.1.10:443"),
        udp("198.18.1.14:5000"),
        tcp("[2001:db8:1::10]:443"),
    ];
    topo.expect(&open(&blocked), BLOCKED_TIMEOUT);

    let r = cli.run("apply");
    r.expect_code(0);
    assert!(r.stdout.contains("full load"), "{r}");
    let hits_80 = servers.hits(Transport::Tcp, sa("198.18.1.10:80"));
    topo.expect(
        &[
            (tcp("198.18.1.10:443"), Probe::Connected),
            // The reject rule answers a TCP SYN with a reset.
            (tcp("198.18.1.10:80"), Probe::Refused),
            (tcp("198.18.1.14:443"), Probe::Refused),
            // Anything else with ICMP admin-prohibited.
            (udp("198.18.1.10:443"), Probe::Unreachable(EHOSTUNREACH)),
            (udp("198.18.1.14:5000"), Probe::Unreachable(EHOSTUNREACH)),
            (tcp("[2001:db8:1::10]:443"), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
    // The reset came from the router: the server never saw the SYN.
    assert_eq!(servers.hits(Transport::Tcp, sa("198.18.1.10:80")), hits_80);
    let listing = cli.listing();
    assert!(listing.contains(&format!("iifname \"{}\" jump egress", topo.ingress())));
    assert!(listing.contains("198.18.1.10 . tcp . 443"), "{listing}");
}

#[test]
fn a_bare_entry_opens_every_tcp_and_udp_port_of_its_address() {
    let (topo, _servers) = setup("bare");
    let cli = Cli::new(&topo, "bare");
    cli.allowlist("198.18.1.11\n");
    let blocked = [tcp("198.18.1.12:22"), udp("198.18.1.12:5000")];
    topo.expect(&open(&blocked), BLOCKED_TIMEOUT);
    cli.run("apply").expect_code(0);
    let mut cases = open(&[
        tcp("198.18.1.11:22"),
        tcp("198.18.1.11:80"),
        tcp("198.18.1.11:443"),
        tcp("198.18.1.11:7999"),
        tcp("198.18.1.11:8080"),
        udp("198.18.1.11:443"),
        udp("198.18.1.11:5000"),
        udp("198.18.1.11:8011"),
    ]);
    cases.push((tcp("198.18.1.12:22"), Probe::Refused));
    cases.push((udp("198.18.1.12:5000"), Probe::Unreachable(EHOSTUNREACH)));
    topo.expect(&cases, BLOCKED_TIMEOUT);
}

#[test]
fn a_udp_entry_answers_while_tcp_to_the_same_port_is_refused() {
    let (topo, _servers) = setup("udp");
    let cli = Cli::new(&topo, "udp");
    cli.allowlist("198.18.1.12:5353/udp\n");
    let blocked = [tcp("198.18.1.12:5353"), udp("198.18.1.12:5000")];
    topo.expect(&open(&blocked), BLOCKED_TIMEOUT);
    cli.run("apply").expect_code(0);
    topo.expect(
        &[
            (udp("198.18.1.12:5353"), Probe::Answered),
            (tcp("198.18.1.12:5353"), Probe::Refused),
            (udp("198.18.1.12:5000"), Probe::Unreachable(EHOSTUNREACH)),
        ],
        BLOCKED_TIMEOUT,
    );
}

#[test]
fn a_port_range_opens_its_ends_and_nothing_just_outside() {
    let (topo, _servers) = setup("range");
    let cli = Cli::new(&topo, "range");
    cli.allowlist("198.18.1.13:8000-8010\n");
    let blocked = [
        tcp("198.18.1.13:7999"),
        tcp("198.18.1.13:8011"),
        udp("198.18.1.13:8000"),
    ];
    topo.expect(&open(&blocked), BLOCKED_TIMEOUT);
    cli.run("apply").expect_code(0);
    topo.expect(
        &[
            (tcp("198.18.1.13:8000"), Probe::Connected),
            (tcp("198.18.1.13:8010"), Probe::Connected),
            (tcp("198.18.1.13:7999"), Probe::Refused),
            (tcp("198.18.1.13:8011"), Probe::Refused),
            // TCP unless the entry says /udp.
            (udp("198.18.1.13:8000"), Probe::Unreachable(EHOSTUNREACH)),
        ],
        BLOCKED_TIMEOUT,
    );
}

#[test]
fn dns_goes_only_to_the_allowed_servers() {
    let (topo, _servers) = setup("dns");
    let _dns = dnsmasq(&topo, &[("api.oc.test", "198.18.1.10")]);
    let cli = Cli::new(&topo, "dns");
    cli.settings(&Settings {
        dns_allow: vec!["198.18.1.53"],
        ..Settings::default()
    });
    cli.allowlist("198.18.1.10:443\n");
    // Port 53 elsewhere: the hole the old scripts left for exfiltration.
    let blocked = [
        udp("198.18.1.54:53"),
        tcp("198.18.1.54:53"),
        tcp("198.18.1.53:443"),
    ];
    topo.expect(&open(&blocked), BLOCKED_TIMEOUT);
    cli.run("apply").expect_code(0);
    topo.expect(
        &[
            (dns_udp("198.18.1.53:53", "api.oc.test"), Probe::Answered),
            (dns_tcp("198.18.1.53:53", "api.oc.test"), Probe::Answered),
            (udp("198.18.1.54:53"), Probe::Unreachable(EHOSTUNREACH)),
            (tcp("198.18.1.54:53"), Probe::Refused),
            // Being a DNS server opens port 53 only.
            (tcp("198.18.1.53:443"), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
}

#[test]
fn ipv6_is_filtered_like_ipv4() {
    let (topo, _servers) = setup("v6");
    let _dns = dnsmasq(&topo, &[("api.oc.test", "2001:db8:1::10")]);
    let cli = Cli::new(&topo, "v6");
    cli.settings(&Settings {
        dns_allow: vec!["2001:db8:1::53"],
        ..Settings::default()
    });
    cli.allowlist(
        "[2001:db8:1::10]:443\n2001:db8:1::11\n[2001:db8:1::12]:5353/udp\n[2001:db8:1::13]:8000-8010\n",
    );
    let blocked = [
        tcp("[2001:db8:1::10]:80"),
        tcp("[2001:db8:1::14]:443"),
        udp("[2001:db8:1::14]:5000"),
        tcp("[2001:db8:1::12]:5353"),
        tcp("[2001:db8:1::13]:8011"),
        udp("[2001:db8:1::54]:53"),
        tcp("[2001:db8:1::54]:53"),
        tcp("198.18.1.10:443"),
    ];
    topo.expect(&open(&blocked), BLOCKED_TIMEOUT);
    cli.run("apply").expect_code(0);
    topo.expect(
        &[
            (tcp("[2001:db8:1::10]:443"), Probe::Connected),
            (tcp("[2001:db8:1::10]:80"), Probe::Refused),
            (tcp("[2001:db8:1::14]:443"), Probe::Refused),
            (udp("[2001:db8:1::14]:5000"), Probe::Unreachable(EACCES)),
            (tcp("[2001:db8:1::11]:22"), Probe::Connected),
            (udp("[2001:db8:1::11]:5000"), Probe::Answered),
            (udp("[2001:db8:1::12]:5353"), Probe::Answered),
            (tcp("[2001:db8:1::12]:5353"), Probe::Refused),
            (tcp("[2001:db8:1::13]:8000"), Probe::Connected),
            (tcp("[2001:db8:1::13]:8010"), Probe::Connected),
            (tcp("[2001:db8:1::13]:8011"), Probe::Refused),
            (
                dns_udp("[2001:db8:1::53]:53", "api.oc.test"),
                Probe::Answered,
            ),
            (
                dns_tcp("[2001:db8:1::53]:53", "api.oc.test"),
                Probe::Answered,
            ),
            (udp("[2001:db8:1::54]:53"), Probe::Unreachable(EACCES)),
            (tcp("[2001:db8:1::54]:53"), Probe::Refused),
            // The IPv4 twin of an allowed IPv6 address is not allowed.
            (tcp("198.18.1.10:443"), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
}

#[test]
fn ipv6_neighbor_discovery_with_the_gateway_passes_the_firewall() {
    // A container must be able to resolve its gateway's link-layer address
    // (ICMPv6 neighbor solicitation/advertisement, which conntrack leaves
    // untracked) while the table is loaded; otherwise IPv6 dies as soon as
    // the neighbor caches expire. The caches are emptied after the open
    // check, so nothing learnt before the table was loaded helps.
    let (topo, _servers) = setup("nd");
    let cli = Cli::new(&topo, "nd");
    cli.allowlist("[2001:db8:1::10]:443\n198.18.1.10:443\n");
    let allowed = [tcp("[2001:db8:1::10]:443"), tcp("198.18.1.10:443")];
    topo.expect(&open(&allowed), BLOCKED_TIMEOUT);
    cli.run("apply").expect_code(0);
    for ns in [&topo.client, &topo.router] {
        ns.ip(&["neigh", "flush", "all"]);
    }
    topo.expect(&open(&allowed), BLOCKED_TIMEOUT);
}

#[test]
fn a_hostname_is_opened_at_the_addresses_dnsmasq_gives() {
    let (topo, _servers) = setup("host");
    let dns = dnsmasq(
        &topo,
        &[
            ("api.oc.test", "198.18.1.10"),
            ("api.oc.test", "2001:db8:1::10"),
        ],
    );
    let cli = Cli::new(&topo, "host");
    cli.allowlist("api.oc.test:443\n");
    let blocked = [
        tcp("198.18.1.11:443"),
        tcp("198.18.1.10:80"),
        tcp("[2001:db8:1::11]:443"),
    ];
    topo.expect(&open(&blocked), BLOCKED_TIMEOUT);
    let r = cli.run("apply");
    r.expect_code(0);
    // Two for the name, two for the DNS servers.
    assert!(r.stdout.contains("4 added, 0 removed"), "{r}");
    topo.expect(
        &[
            (tcp("198.18.1.10:443"), Probe::Connected),
            (tcp("[2001:db8:1::10]:443"), Probe::Connected),
            (tcp("198.18.1.11:443"), Probe::Refused),
            (tcp("198.18.1.10:80"), Probe::Refused),
            (tcp("[2001:db8:1::11]:443"), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
    let listing = cli.listing();
    // TTL 30 s (at least min_ttl 5 s) plus the default grace of 5 min,
    // written with the 1% refresh slack on top (so it never closes early).
    for want in [
        "198.18.1.10 . tcp . 443 timeout 5m33s300ms",
        "2001:db8:1::10 . tcp . 443 timeout 5m33s300ms",
        "comment \"api.oc.test\"",
    ] {
        assert!(listing.contains(want), "{want:?} missing in\n{listing}");
    }

    // The name moves: the next apply follows it.
    dns.set_records(&[("api.oc.test", addr("198.18.1.11"))]);
    let plan = cli.run("plan");
    plan.expect_code(0);
    assert_eq!(
        plan.stdout,
        "- allow_v4 198.18.1.10 . tcp . 443\n\
         + allow_v4 198.18.1.11 . tcp . 443 timeout 5m30s  # api.oc.test\n\
         - allow_v6 2001:db8:1::10 . tcp . 443\n\
         1 added, 2 removed, 0 refreshed\n",
        "{plan}"
    );
    cli.run("apply").expect_code(0);
    topo.expect(
        &[
            (tcp("198.18.1.11:443"), Probe::Connected),
            (tcp("198.18.1.10:443"), Probe::Refused),
            (tcp("[2001:db8:1::10]:443"), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
}

#[test]
fn hostnames_resolving_into_private_ranges_are_refused_unless_allowed() {
    let (topo, _servers) = setup("private");
    let _dns = dnsmasq(
        &topo,
        &[
            ("meta.oc.test", "169.254.169.254"),
            ("db.oc.test", "10.20.30.40"),
            ("good.oc.test", "198.18.1.10"),
        ],
    );
    let cli = Cli::new(&topo, "private");
    cli.allowlist("meta.oc.test:80\ndb.oc.test:5432\ngood.oc.test:443\n");
    let r = cli.run("apply");
    r.expect_code(0);
    for want in [
        "warning: meta.oc.test: refused answer 169.254.169.254",
        "warning: db.oc.test: refused answer 10.20.30.40",
    ] {
        assert!(r.stderr.contains(want), "{want:?} missing:\n{r}");
    }
    let listing = cli.listing();
    assert!(listing.contains("198.18.1.10 . tcp . 443"), "{listing}");
    assert!(
        !listing.contains("169.254"),
        "metadata address opened:\n{listing}"
    );
    assert!(
        !listing.contains("10.20.30.40"),
        "private address opened:\n{listing}"
    );
    // The allowed one works (no traffic goes to the refused ones).
    topo.expect(
        &[(tcp("198.18.1.10:443"), Probe::Connected)],
        BLOCKED_TIMEOUT,
    );

    // Listed in allow_private, the 10/8 answer is taken; 169.254 still not.
    cli.settings(&Settings {
        allow_private: vec!["198.18.0.0/15", "2001:db8::/32", "10.0.0.0/8"],
        ..Settings::default()
    });
    let r = cli.run("apply");
    r.expect_code(0);
    assert!(r.stdout.contains("1 added"), "{r}");
    assert!(r.stderr.contains("refused answer 169.254.169.254"), "{r}");
    assert!(!r.stderr.contains("10.20.30.40"), "{r}");
    let listing = cli.listing();
    assert!(listing.contains("10.20.30.40 . tcp . 5432"), "{listing}");
    assert!(!listing.contains("169.254"), "{listing}");
}

#[test]
fn an_unresolvable_hostname_exits_3_stays_closed_and_the_rest_applies() {
    let (topo, _servers) = setup("nxdomain");
    let dns = dnsmasq(&topo, &[("other.oc.test", "198.18.1.14")]);
    let cli = Cli::new(&topo, "nxdomain");
    cli.allowlist("198.18.1.10:443\nlate.oc.test:443\n");
    topo.expect(&open(&[tcp("198.18.1.12:443")]), BLOCKED_TIMEOUT);
    let r = cli.run("apply");
    r.expect_code(3);
    assert!(r.stdout.contains("full load"), "{r}");
    assert!(
        r.stderr.contains("late.oc.test") && r.stderr.contains("not fully resolved"),
        "{r}"
    );
    topo.expect(
        &[
            (tcp("198.18.1.10:443"), Probe::Connected),
            (tcp("198.18.1.12:443"), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
    let listing = cli.listing();
    assert!(!listing.contains("late.oc.test"), "{listing}");
    assert_eq!(listing.matches(" . tcp . 443").count(), 1, "{listing}");

    // Once it resolves, it opens, and the exit code is 0 again.
    dns.set_records(&[("late.oc.test", addr("198.18.1.12"))]);
    let r = cli.run("apply");
    r.expect_code(0);
    assert!(r.stdout.contains("element diff; 1 added, 0 removed"), "{r}");
    topo.expect(
        &[(tcp("198.18.1.12:443"), Probe::Connected)],
        BLOCKED_TIMEOUT,
    );
}

#[test]
fn the_input_hook_guards_the_routers_own_address() {
    let (topo, _servers) = setup("input");
    let _router_services = Servers::start(
        &topo.router,
        &[
            SocketAddr::new(IpAddr::V4(ROUTER_IN_V4), 8080),
            SocketAddr::new(IpAddr::V4(ROUTER_IN_V4), 8081),
            SocketAddr::new(IpAddr::V4(ROUTER_OUT_V4), 8080),
        ],
        &[
            SocketAddr::new(IpAddr::V4(ROUTER_IN_V4), 5000),
            SocketAddr::new(IpAddr::V4(ROUTER_IN_V4), 5001),
        ],
    );
    let cli = Cli::new(&topo, "input");
    // An allowlist entry naming the host's own address does not open the
    // host: only `host_ports` does (the host is not "the internet").
    cli.allowlist("198.18.0.1:8081\n198.18.0.1:5001/udp\n");
    let blocked = [tcp("198.18.0.1:8080"), udp("198.18.0.1:5000")];
    topo.expect(&open(&blocked), BLOCKED_TIMEOUT);
    cli.run("apply").expect_code(0);
    topo.expect(
        &[
            (tcp("198.18.0.1:8080"), Probe::Refused),
            (udp("198.18.0.1:5000"), Probe::Unreachable(EHOSTUNREACH)),
            (tcp("198.18.0.1:8081"), Probe::Refused),
            (udp("198.18.0.1:5001"), Probe::Unreachable(EHOSTUNREACH)),
            // The router's other address is the host too.
            (tcp("198.18.1.1:8080"), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
    cli.settings(&Settings {
        host_ports: vec!["tcp/8081", "udp/5000-5001"],
        ..Settings::default()
    });
    cli.run("apply").expect_code(0);
    topo.expect(
        &[
            (tcp("198.18.0.1:8080"), Probe::Refused),
            (tcp("198.18.0.1:8081"), Probe::Connected),
            (udp("198.18.0.1:5000"), Probe::Answered),
            (udp("198.18.0.1:5001"), Probe::Answered),
            (tcp("198.18.1.1:8080"), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
    // Only traffic entering through the filtered interface is filtered.
    topo.server.expect(
        &[(tcp("198.18.1.1:8080"), Probe::Connected)],
        BLOCKED_TIMEOUT,
    );
}

#[test]
fn with_action_drop_blocked_probes_time_out() {
    let (topo, servers) = setup("drop");
    let cli = Cli::new(&topo, "drop");
    cli.settings(&Settings {
        action: "drop",
        ..Settings::default()
    });
    cli.allowlist("198.18.1.10:443\n");
    let blocked = [
        tcp("198.18.1.10:80"),
        tcp("198.18.1.14:443"),
        udp("198.18.1.14:5000"),
        tcp("[2001:db8:1::14]:443"),
    ];
    topo.expect(&open(&blocked), BLOCKED_TIMEOUT);
    let before = servers.hits(Transport::Tcp, sa("198.18.1.10:80"));
    cli.run("apply").expect_code(0);
    let mut cases = vec![(tcp("198.18.1.10:443"), Probe::Connected)];
    cases.extend(blocked.iter().map(|t| (t.clone(), Probe::TimedOut)));
    topo.expect(&cases, BLOCKED_TIMEOUT);
    assert_eq!(servers.hits(Transport::Tcp, sa("198.18.1.10:80")), before);
    let listing = cli.listing();
    assert!(
        listing.contains("counter packets") && listing.contains(" drop comment"),
        "{listing}"
    );
    assert!(!listing.contains("reject"), "{listing}");
}

#[test]
fn reapply_says_no_change_and_plan_shows_exactly_the_edit() {
    let (topo, _servers) = setup("plan");
    let cli = Cli::new(&topo, "plan");
    cli.allowlist("198.18.1.10:443\n198.18.1.11:22\n");
    let r = cli.run("apply");
    r.expect_code(0);
    assert!(
        r.stdout
            .contains("full load (the table does not exist); 4 added"),
        "{r}"
    );
    let r = cli.run("apply");
    r.expect_code(0);
    assert!(
        r.stdout.contains(&format!(
            "table inet {}: no change; 0 added, 0 removed, 0 refreshed; 0 messages",
            cli.table
        )),
        "{r}"
    );

    cli.allowlist("# edited\n198.18.1.11:22\n198.18.1.14:8080\n");
    let plan = cli.run("plan");
    plan.expect_code(0);
    assert_eq!(
        plan.stdout,
        "- allow_v4 198.18.1.10 . tcp . 443\n\
         + allow_v4 198.18.1.14 . tcp . 8080  # 198.18.1.14:8080\n\
         1 added, 1 removed, 0 refreshed\n",
        "{plan}"
    );
    // plan changed nothing.
    topo.expect(
        &[
            (tcp("198.18.1.10:443"), Probe::Connected),
            (tcp("198.18.1.14:8080"), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
    let r = cli.run("apply");
    r.expect_code(0);
    assert!(
        r.stdout
            .contains("element diff; 1 added, 1 removed, 0 refreshed; 2 messages"),
        "{r}"
    );
    topo.expect(
        &[
            (tcp("198.18.1.10:443"), Probe::Refused),
            (tcp("198.18.1.14:8080"), Probe::Connected),
            (tcp("198.18.1.11:22"), Probe::Connected),
        ],
        BLOCKED_TIMEOUT,
    );
    let plan = cli.run("plan");
    plan.expect_code(0);
    assert_eq!(plan.stdout, "0 added, 0 removed, 0 refreshed\n", "{plan}");
}

#[test]
fn check_on_a_broken_allowlist_exits_1_and_prints_every_error_with_its_location() {
    let (topo, _servers) = setup("check");
    let cli = Cli::new(&topo, "check");
    cli.allowlist("198.18.1.10:443\n");
    let ok = cli.run("check");
    ok.expect_code(0);
    assert!(ok.stdout.contains("ok (1 entries"), "{ok}");

    cli.allowlist(
        "# a comment\n\
         198.18.1.10:443\n\
         198.18.1.10:99999\n\
         bad_host!:443\n\
         [2001:db8::1:443\n\
         198.18.1.11:80/sctp\n\
         198.18.1.12:22 # fine\n",
    );
    let r = cli.run("check");
    r.expect_code(1);
    let path = cli.allowlist_path();
    let locs = error_locations(&r.stderr, &path);
    let lines: Vec<usize> = locs.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, vec![3, 4, 5, 6], "one error per broken line:\n{r}");
    assert!(locs.iter().all(|(_, c)| *c >= 1), "{r}");
    // The port error points at the port, the bracket error at the bracket.
    assert_eq!(locs[0], (3, 13), "{r}");
    assert_eq!(locs[2], (5, 1), "{r}");
    // Nothing was loaded, and apply refuses the same file.
    assert!(!cli.table_exists());
    let r = cli.run("apply");
    r.expect_code(1);
    assert_eq!(error_locations(&r.stderr, &path).len(), 4, "{r}");
    assert!(!cli.table_exists(), "apply loaded a broken allowlist");
}

#[test]
fn flush_removes_the_table_and_traffic_flows_again() {
    let (topo, _servers) = setup("flush");
    let cli = Cli::new(&topo, "flush");
    cli.allowlist("198.18.1.10:443\n");
    cli.run("apply").expect_code(0);
    let blocked = [tcp("198.18.1.14:443"), udp("198.18.1.14:5000")];
    topo.expect(
        &[
            (blocked[0].clone(), Probe::Refused),
            (blocked[1].clone(), Probe::Unreachable(EHOSTUNREACH)),
        ],
        BLOCKED_TIMEOUT,
    );
    let r = cli.run("flush");
    r.expect_code(0);
    assert_eq!(
        r.stdout,
        format!("removed table inet {}\n", cli.table),
        "{r}"
    );
    assert!(!cli.table_exists());
    topo.expect(&open(&blocked), BLOCKED_TIMEOUT);
    let r = cli.run("flush");
    r.expect_code(0);
    assert_eq!(
        r.stdout,
        format!("table inet {} was not present\n", cli.table),
        "{r}"
    );
}

#[test]
fn flush_removes_the_configured_table_even_when_the_allowlist_is_broken() {
    // Flushing is how an operator gets traffic back after breaking the
    // allowlist; the configured table must go, not the default one.
    let (topo, _servers) = setup("flush2");
    let cli = Cli::new(&topo, "flush2");
    cli.allowlist("198.18.1.10:443\n");
    cli.run("apply").expect_code(0);
    cli.allowlist("198.18.1.10:99999\n");
    let r = cli.run("flush");
    r.expect_code(0);
    assert!(
        r.stdout
            .contains(&format!("removed table inet {}", cli.table)),
        "flush ignored the configured table:\n{r}"
    );
    assert!(!cli.table_exists(), "the table is still loaded");
    topo.expect(&open(&[tcp("198.18.1.14:443")]), BLOCKED_TIMEOUT);
}

#[test]
fn plan_and_show_json_describe_the_change_and_the_ruleset() {
    let (topo, _servers) = setup("json");
    let cli = Cli::new(&topo, "json");
    cli.allowlist("198.18.1.10:443\n198.18.1.11:22\n");
    cli.run("apply").expect_code(0);
    cli.allowlist("198.18.1.11:22\n198.18.1.14:8080\n");

    let plan = cli.run_args(&["plan", "--json"]);
    plan.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&plan.stdout).expect("plan --json is JSON");
    assert_eq!(v["table"], cli.table.as_str(), "{plan}");
    assert_eq!(v["full_reload"], false, "{plan}");
    let changes: Vec<(String, String, String)> = v["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().to_string(),
                c["set"].as_str().unwrap().to_string(),
                c["element"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            (
                "remove".into(),
                "allow_v4".into(),
                "198.18.1.10 . tcp . 443".into()
            ),
            (
                "add".into(),
                "allow_v4".into(),
                "198.18.1.14 . tcp . 8080".into()
            ),
        ],
        "{plan}"
    );
    assert_eq!(v["unresolved"], serde_json::json!([]), "{plan}");

    let show = cli.run_args(&["show", "--json"]);
    show.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&show.stdout).expect("show --json is JSON");
    assert_eq!(v["table"], cli.table.as_str(), "{show}");
    assert_eq!(v["action"], "reject", "{show}");
    assert_eq!(
        v["interfaces"],
        serde_json::json!([topo.ingress()]),
        "{show}"
    );
    let v4: Vec<&str> = v["sets"]["allow_v4"]
        .as_array()
        .expect("allow_v4")
        .iter()
        .map(|e| e["element"].as_str().unwrap())
        .collect();
    assert_eq!(
        v4,
        ["198.18.1.11 . tcp . 22", "198.18.1.14 . tcp . 8080"],
        "{show}"
    );
    assert_eq!(v["sets"]["dns_v4"][0]["element"], "198.18.1.53", "{show}");

    // show and plan only describe: the kernel still holds the applied state.
    let listing = cli.listing();
    assert!(listing.contains("198.18.1.10 . tcp . 443"), "{listing}");
    assert!(!listing.contains("198.18.1.14"), "{listing}");
}
