//! The end-to-end lab: `openclaw-egressd` as a separate process guarding a
//! real Docker network, probed from real containers.
//!
//! Each test gets, on a lab dockerd (testkit's [`Docker`]: a dockerd in a
//! namespace of its own, so the machine's network and firewall are never
//! touched), a Docker network with its bridge named explicitly (what
//! `[network] interface` names), an [`Upstream`] (servers and a dnsmasq on a
//! /24 of 198.18.0.0/15), containers of the busybox test image with `--dns`
//! pointing at that dnsmasq, and a daemon with a table, control socket and
//! config of its own, running in the lab host namespace. Every probe that a
//! test expects to be blocked is first shown to get through without the
//! daemon, so a block is the firewall's doing.
//!
//! Probes from containers run two ways: testkit's socket probes on a
//! thread inside the container's network namespace (exact errno, UDP too),
//! and the container's own busybox `nc` / `nslookup` (names resolved the
//! way an agent resolves them, through Docker's embedded DNS).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::errno::EHOSTUNREACH;
use testkit::{
    dns_tcp, dns_udp, nft_set_addresses, require_root, tcp, udp, unique_name, wait_until,
    Container, Daemon, Docker, Lookup, Network, Probe, TempDir, Transport, Upstream,
    BLOCKED_TIMEOUT, POLL,
};

const DAEMON: &str = env!("CARGO_BIN_EXE_openclaw-egressd");

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---------------------------------------------------------------- fixture

/// The settings a scenario varies.
struct Cfg {
    min_ttl: &'static str,
    grace: &'static str,
    /// Follow this Docker network instead of naming the interface.
    docker: Option<String>,
}

impl Default for Cfg {
    fn default() -> Cfg {
        Cfg {
            min_ttl: "1s",
            grace: "3s",
            docker: None,
        }
    }
}

/// One scenario's world: a network on a lab dockerd, an upstream, and the
/// daemon's folder (config, allowlist, control socket, log).
struct Lab<'d> {
    docker: &'d Docker,
    net: Network<'d>,
    up: Upstream,
    dir: TempDir,
    table: String,
}

impl<'d> Lab<'d> {
    fn new(docker: &'d Docker, tag: &str) -> Lab<'d> {
        require_root();
        let net = Network::create(docker, tag);
        let up = Upstream::start(docker.host(), &format!("{tag}-up"));
        let lab = Lab {
            docker,
            net,
            up,
            dir: TempDir::new(&format!("lab-{tag}")),
            // Named like everything of the kit, so a later run removes it if
            // this one is killed.
            table: unique_name(&format!("lab-{tag}")),
        };
        lab.config(&Cfg::default());
        lab
    }

    /// Upstream service address `i`.
    fn s(&self, i: u8) -> IpAddr {
        IpAddr::V4(self.up.service(i))
    }

    fn dns_addr(&self) -> IpAddr {
        IpAddr::V4(self.up.dns_addr())
    }

    /// A container on the network, resolving through the upstream's DNS.
    fn container(&self, tag: &str) -> Container<'d> {
        Container::run(&self.net, tag, &[self.dns_addr()])
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("egressd.toml")
    }

    /// Writes egressd.toml.
    fn config(&self, c: &Cfg) {
        let dns = self.up.dns_addr();
        let text = format!(
            "allowlist = \"allowlist.conf\"\n\
             [network]\n\
             {network}\n\
             [resolver]\n\
             servers = [\"{dns}:53\"]\n\
             min_ttl = \"{min_ttl}\"\n\
             grace = \"{grace}\"\n\
             timeout = \"1s\"\n\
             attempts = 1\n\
             [dns]\n\
             allow = [\"{dns}\"]\n\
             [firewall]\n\
             table = \"{table}\"\n\
             allow_private = [\"198.18.0.0/15\"]\n\
             [control]\n\
             socket = \"{socket}\"\n",
            network = match &c.docker {
                Some(n) => format!("docker = \"{n}\""),
                None => format!("interface = \"{}\"", self.net.bridge()),
            },
            min_ttl = c.min_ttl,
            grace = c.grace,
            table = self.table,
            socket = self.dir.join("control.sock").display(),
        );
        self.dir.write("egressd.toml", &text);
    }

    /// Writes allowlist.conf (atomically).
    fn allowlist(&self, text: &str) {
        self.dir.write("allowlist.conf", text);
    }

    /// Starts the daemon in the lab host namespace.
    fn start(&self) -> Daemon {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            self.docker.host().name(),
            DAEMON,
            "--config",
        ])
        .arg(self.config_path())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG")
        .env("DOCKER_HOST", self.docker.docker_host());
        // `ip netns exec` execs the program: the child's pid is the daemon's.
        Daemon::spawn(&mut cmd, &self.dir.join("daemon.log"))
    }

    /// `nft list table inet TABLE` in the lab host, `None` if absent.
    fn listing(&self) -> Option<String> {
        self.docker.host().nft_table(&self.table)
    }

    /// The addresses in the table's sets.
    fn elements(&self) -> BTreeSet<String> {
        self.listing()
            .map(|l| nft_set_addresses(&l))
            .unwrap_or_default()
    }

    /// Waits until the daemon has loaded its table with (at least) these
    /// addresses in its sets.
    #[track_caller]
    fn wait_elements(&self, addrs: &[IpAddr], d: &mut Daemon) {
        let t0 = Instant::now();
        loop {
            let have = self.elements();
            if addrs.iter().all(|a| have.contains(&a.to_string())) {
                return;
            }
            assert!(
                d.is_running(),
                "the daemon exited ({:?}); its log:\n{}",
                d.exited(),
                d.log()
            );
            assert!(
                t0.elapsed() < secs(15),
                "the table never held {addrs:?}; it holds {have:?}\nlisting:\n{}\ndaemon log:\n{}",
                self.listing().unwrap_or_else(|| "(no table)".into()),
                d.log()
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        // The daemon leaves its table on exit (by design); remove it.
        let _ = self
            .docker
            .host()
            .exec(["nft", "delete", "table", "inet", &self.table]);
    }
}

fn t(addr: IpAddr, port: u16) -> testkit::Target {
    tcp(&format!("{addr}:{port}"))
}

fn u(addr: IpAddr, port: u16) -> testkit::Target {
    udp(&format!("{addr}:{port}"))
}

// -------------------------------------------------------------- scenarios

#[test]
fn allowed_and_blocked_by_name_and_by_address_from_a_container() {
    let lab = Lab::new(Docker::shared(), "names");
    let (s0, s1, s2) = (lab.s(0), lab.s(1), lab.s(2));
    let other = IpAddr::V4(lab.up.other_dns_addr());
    let dns = lab.dns_addr();
    let _dns = lab.up.dns(1, &[("a.lab.test", s0), ("b.lab.test", s2)]);
    lab.allowlist(&format!("a.lab.test:443\n{s1}:80\n"));
    let c = lab.container("names");

    let blocked = [
        t(s0, 80),
        t(s1, 443),
        t(s2, 443),
        u(s0, 443),
        u(other, 53),
        t(other, 53),
    ];
    // Without the firewall every one of them gets through.
    let open: Vec<_> = blocked
        .iter()
        .map(|target| {
            let want = if target.kind == testkit::TargetKind::Tcp {
                Probe::Connected
            } else {
                Probe::Answered
            };
            (target.clone(), want)
        })
        .collect();
    c.expect(&open, BLOCKED_TIMEOUT);
    assert_eq!(c.nc("b.lab.test", 443, secs(2)), Probe::Connected);
    let s2_443 = std::net::SocketAddr::new(s2, 443);
    let s2_hits = lab.up.hits(Transport::Tcp, s2_443);

    let mut d = lab.start();
    lab.wait_elements(&[s0, s1], &mut d);
    c.expect(
        &[
            // By name: the resolved address, on the listed port only.
            (t(s0, 443), Probe::Connected),
            (t(s0, 80), Probe::Refused),
            (u(s0, 443), Probe::Unreachable(EHOSTUNREACH)),
            // By address.
            (t(s1, 80), Probe::Connected),
            (t(s1, 443), Probe::Refused),
            // A name the DNS knows but the allowlist does not.
            (t(s2, 443), Probe::Refused),
            // DNS: only the allowed server, UDP and TCP.
            (dns_udp(&format!("{dns}:53"), "a.lab.test"), Probe::Answered),
            (dns_tcp(&format!("{dns}:53"), "a.lab.test"), Probe::Answered),
            (u(other, 53), Probe::Unreachable(EHOSTUNREACH)),
            (t(other, 53), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
    assert_eq!(
        lab.up.hits(Transport::Tcp, s2_443),
        s2_hits,
        "a refused connection reached the server"
    );

    // The agent's own tools, names resolved through Docker's embedded DNS.
    assert_eq!(c.nc("a.lab.test", 443, secs(2)), Probe::Connected);
    assert_eq!(c.nc("a.lab.test", 80, secs(2)), Probe::Refused);
    assert_eq!(c.nc("b.lab.test", 443, secs(2)), Probe::Refused);
    assert_eq!(c.nc(&s1.to_string(), 80, secs(2)), Probe::Connected);
    assert_eq!(c.nc("nx.lab.test", 443, secs(2)), Probe::NoAddress);
    assert_eq!(c.nslookup("nx.lab.test", None, secs(2)), Lookup::NxDomain);
    assert_eq!(
        c.nslookup("a.lab.test", None, secs(2)),
        Lookup::Addresses(vec![s0])
    );
    assert_eq!(
        c.nslookup("a.lab.test", Some(dns), secs(2)),
        Lookup::Addresses(vec![s0])
    );
    assert_eq!(
        c.nslookup("a.lab.test", Some(other), secs(2)),
        Lookup::Unreachable(EHOSTUNREACH)
    );
    assert!(d.is_running(), "{}", d.log());
}

#[test]
fn a_rotated_address_opens_and_the_old_one_closes_after_grace() {
    let lab = Lab::new(Docker::shared(), "rotate");
    let (s0, s1) = (lab.s(0), lab.s(1));
    let dns = lab.up.dns(1, &[("rot.lab.test", s0)]);
    lab.allowlist("rot.lab.test:443\n");
    let c = lab.container("rotate");
    c.expect(
        &[
            (t(s0, 443), Probe::Connected),
            (t(s1, 443), Probe::Connected),
        ],
        BLOCKED_TIMEOUT,
    );
    let mut d = lab.start();
    lab.wait_elements(&[s0], &mut d);
    c.expect(
        &[(t(s0, 443), Probe::Connected), (t(s1, 443), Probe::Refused)],
        BLOCKED_TIMEOUT,
    );

    dns.set_records(&[("rot.lab.test", s1)]);
    let changed = Instant::now();
    // TTL 1 s (min_ttl 1 s): the new address within a few seconds.
    let opened = c.wait_probe(&t(s1, 443), &Probe::Connected, secs(8));
    // The old address was last answered at most ~1 s before the change: it
    // stays allowed until at least that answer + grace (3 s), so it is
    // certainly open until change + 1.5 s.
    let mut closed = None;
    while closed.is_none() {
        let p = c.probe(&t(s0, 443), secs(2));
        let at = changed.elapsed();
        match p {
            Probe::Connected => {}
            Probe::Refused => closed = Some(at),
            other => panic!("{s0}:443 gave {other} {at:?} after the change"),
        }
        assert!(
            at < secs(12),
            "{s0}:443 still open {at:?} after the change:\n{}",
            d.log()
        );
        std::thread::sleep(POLL);
    }
    let closed = closed.unwrap();
    assert!(
        closed >= Duration::from_millis(1500),
        "the old address closed {closed:?} after the change, before its grace (3 s) ran out"
    );
    eprintln!("rotation: new address open after {opened:?}, old closed after {closed:?}");
    c.expect(
        &[(t(s1, 443), Probe::Connected), (t(s0, 443), Probe::Refused)],
        BLOCKED_TIMEOUT,
    );
    assert_eq!(
        c.nslookup("rot.lab.test", None, secs(2)),
        Lookup::Addresses(vec![s1])
    );
}

#[test]
fn an_allowlist_edit_while_running_is_enforced() {
    let lab = Lab::new(Docker::shared(), "edit");
    let (s0, s1) = (lab.s(0), lab.s(1));
    let _dns = lab.up.dns(1, &[("edit.lab.test", s0)]);
    lab.allowlist("edit.lab.test:443\n");
    let c = lab.container("edit");
    c.expect(
        &[
            (t(s0, 443), Probe::Connected),
            (t(s1, 80), Probe::Connected),
        ],
        BLOCKED_TIMEOUT,
    );
    let mut d = lab.start();
    lab.wait_elements(&[s0], &mut d);
    c.expect(
        &[(t(s0, 443), Probe::Connected), (t(s1, 80), Probe::Refused)],
        BLOCKED_TIMEOUT,
    );

    // Swap the name for an address: the address opens, the removed name's
    // address closes at once (no grace for removed entries).
    lab.allowlist(&format!("{s1}:80\n"));
    let opened = c.wait_probe(&t(s1, 80), &Probe::Connected, secs(5));
    let closed = c.wait_probe(&t(s0, 443), &Probe::Refused, secs(5));
    eprintln!("edit: added entry open after {opened:?}, removed one closed after {closed:?}");

    // Append a port range of the address (an in-place write).
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(lab.dir.join("allowlist.conf"))
        .unwrap();
    f.write_all(format!("{s1}:440-450\n").as_bytes()).unwrap();
    drop(f);
    c.wait_probe(&t(s1, 443), &Probe::Connected, secs(5));
    c.expect(
        &[
            (t(s1, 80), Probe::Connected),
            (t(s1, 8080), Probe::Refused),
            (t(s0, 443), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
    assert!(d.is_running(), "{}", d.log());
}

#[test]
fn sighup_re_resolves_at_once() {
    let lab = Lab::new(Docker::shared(), "hup");
    let (s0, s1) = (lab.s(0), lab.s(1));
    let dns = lab.up.dns(1, &[("hup.lab.test", s0)]);
    // The 1 s TTL is clamped up to an hour: nothing asks again by itself.
    lab.config(&Cfg {
        min_ttl: "1h",
        ..Cfg::default()
    });
    lab.allowlist("hup.lab.test:443\n");
    let c = lab.container("hup");
    c.expect(&[(t(s1, 443), Probe::Connected)], BLOCKED_TIMEOUT);
    let mut d = lab.start();
    lab.wait_elements(&[s0], &mut d);
    dns.set_records(&[("hup.lab.test", s1)]);
    // The container's own resolver already sees the new address; the
    // firewall does not (yet).
    assert_eq!(
        c.nslookup("hup.lab.test", None, secs(2)),
        Lookup::Addresses(vec![s1])
    );
    std::thread::sleep(secs(2));
    c.expect(
        &[(t(s0, 443), Probe::Connected), (t(s1, 443), Probe::Refused)],
        BLOCKED_TIMEOUT,
    );

    d.signal(libc::SIGHUP);
    let opened = c.wait_probe(&t(s1, 443), &Probe::Connected, secs(5));
    eprintln!("sighup: new address open {opened:?} after the signal");
    // The old one keeps its (hour-long) lifetime.
    assert_eq!(c.probe(&t(s0, 443), secs(2)), Probe::Connected);
    assert!(d.is_running(), "{}", d.log());
}

#[test]
fn after_kill_9_blocked_stays_blocked_and_a_restart_takes_over() {
    let lab = Lab::new(Docker::shared(), "kill9");
    let (s0, s1, s2) = (lab.s(0), lab.s(1), lab.s(2));
    let _dns = lab.up.dns(1, &[("k.lab.test", s0)]);
    lab.config(&Cfg {
        grace: "60s",
        ..Cfg::default()
    });
    lab.allowlist("k.lab.test:443\n");
    let c = lab.container("kill9");
    c.expect(
        &[
            (t(s0, 443), Probe::Connected),
            (t(s1, 80), Probe::Connected),
            (t(s2, 443), Probe::Connected),
        ],
        BLOCKED_TIMEOUT,
    );
    let mut d = lab.start();
    lab.wait_elements(&[s0], &mut d);
    let enforced = [
        (t(s0, 443), Probe::Connected),
        (t(s1, 80), Probe::Refused),
        (t(s2, 443), Probe::Refused),
        (u(s2, 5000), Probe::Unreachable(EHOSTUNREACH)),
    ];
    c.expect(&enforced, BLOCKED_TIMEOUT);

    d.signal(libc::SIGKILL);
    // Generous: the exit of a killed process can wait on kernel locks
    // (rtnl, nf_tables' commit mutex) while parallel tests tear down
    // namespaces on a loaded 2-core machine; seen once to exceed 5 s in CI.
    assert!(d.wait_exit(secs(30)).is_some(), "SIGKILL did not end it");
    let down = Instant::now();
    // Nobody manages the table now: an edit is not applied...
    lab.allowlist(&format!("k.lab.test:443\n{s1}:80\n"));
    // ...and what was blocked stays blocked, what was allowed stays allowed
    // (the kernel's element timeouts run on: TTL + 60 s grace).
    for _ in 0..3 {
        c.expect(&enforced, BLOCKED_TIMEOUT);
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "kill -9: enforced unchanged for {:?} without a daemon",
        down.elapsed()
    );

    // A new daemon takes the live table over and applies the edit.
    let mut d = lab.start();
    let took_over = c.wait_probe(&t(s1, 80), &Probe::Connected, secs(10));
    eprintln!("kill -9: the new daemon applied the edit {took_over:?} after its start");
    c.expect(
        &[
            (t(s0, 443), Probe::Connected),
            (t(s1, 80), Probe::Connected),
            (t(s2, 443), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
    assert!(d.is_running(), "{}", d.log());
}

#[test]
fn containers_on_the_same_bridge_cannot_reach_each_other() {
    let lab = Lab::new(Docker::shared(), "intra");
    let s0 = lab.s(0);
    let _dns = lab.up.dns(1, &[("i.lab.test", s0)]);
    lab.allowlist("i.lab.test:443\n");
    let c1 = lab.container("intra1");
    let c2 = lab.container("intra2");
    let _srv = c2.servers(&[8080], &[5000]);
    let peer = IpAddr::V4(c2.ip());
    let gw = IpAddr::V4(lab.net.gateway());
    assert_ne!(peer, gw);
    c1.expect(
        &[
            (t(peer, 8080), Probe::Connected),
            (u(peer, 5000), Probe::Answered),
        ],
        BLOCKED_TIMEOUT,
    );
    let mut d = lab.start();
    lab.wait_elements(&[s0], &mut d);
    // br_netfilter hands bridged container-to-container packets to the
    // forward hook with iifname = the bridge: the egress chain denies them
    // like any unlisted destination.
    c1.expect(
        &[
            (t(peer, 8080), Probe::Refused),
            (u(peer, 5000), Probe::Unreachable(EHOSTUNREACH)),
            (t(s0, 443), Probe::Connected),
        ],
        BLOCKED_TIMEOUT,
    );
    assert_eq!(c1.nc(&peer.to_string(), 8080, secs(2)), Probe::Refused);
    assert!(d.is_running(), "{}", d.log());
}

#[test]
fn a_network_re_created_under_the_running_daemon_stays_enforced() {
    let lab = Lab::new(Docker::shared(), "recreate");
    let (s0, s1) = (lab.s(0), lab.s(1));
    let _dns = lab.up.dns(1, &[("r.lab.test", s0)]);
    lab.allowlist("r.lab.test:443\n");
    let c = lab.container("recreate1");
    let mut d = lab.start();
    lab.wait_elements(&[s0], &mut d);
    c.expect(
        &[(t(s0, 443), Probe::Connected), (t(s1, 443), Probe::Refused)],
        BLOCKED_TIMEOUT,
    );
    // The bridge goes away and comes back with the same name: the rules
    // match by name and hold for the new network's containers.
    lab.net.recreate();
    let c = lab.container("recreate2");
    c.expect(
        &[(t(s0, 443), Probe::Connected), (t(s1, 443), Probe::Refused)],
        BLOCKED_TIMEOUT,
    );
    assert_eq!(c.nc("r.lab.test", 443, secs(2)), Probe::Connected);
    assert!(d.is_running(), "{}", d.log());
}

#[test]
fn the_daemon_follows_the_docker_network_to_a_new_bridge() {
    // A network without a bridge name: Docker names the bridge br-<id>, and
    // a re-created network gets a new id, so a new interface. The daemon
    // must move its rules there by itself (issue: within 2 s).
    let docker = Docker::shared();
    let lab = Lab::new(docker, "follow");
    let subnet = testkit::Subnet::claim();
    let name = unique_name("follow-net");
    let create = || {
        docker.ok([
            "network",
            "create",
            "--subnet",
            &subnet.cidr(),
            "--gateway",
            &subnet.addr(1).to_string(),
            &name,
        ]);
        let id = docker.ok(["network", "inspect", "--format", "{{.Id}}", &name]);
        format!("br-{}", &id.trim()[..12])
    };
    struct Rm<'a>(&'a Docker, String);
    impl Drop for Rm<'_> {
        fn drop(&mut self) {
            let _ = self.0.cmd(["rm", "-f", &format!("{}-c", self.1)]);
            let _ = self.0.cmd(["network", "rm", &self.1]);
        }
    }
    let _rm = Rm(docker, name.clone());
    let bridge1 = create();
    lab.config(&Cfg {
        docker: Some(name.clone()),
        ..Cfg::default()
    });
    let s0 = lab.s(0);
    lab.allowlist(&format!("{s0}:443\n"));
    let mut d = lab.start();
    lab.wait_elements(&[s0], &mut d);
    let filters = |b: &str| {
        lab.listing()
            .is_some_and(|l| l.contains(&format!("iifname \"{b}\" jump egress")))
    };
    assert!(filters(&bridge1), "{:?}\n{}", lab.listing(), d.log());
    docker.ok(["network", "rm", &name]);
    let t0 = Instant::now();
    let bridge2 = create();
    assert_ne!(bridge1, bridge2);
    while !filters(&bridge2) {
        assert!(
            t0.elapsed() < secs(2),
            "the rules did not follow to {bridge2} within 2 s:\n{:?}\n{}",
            lab.listing(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("followed the re-created network in {:?}", t0.elapsed());
    // And a container on the new bridge is filtered.
    docker.ok([
        "run",
        "--detach",
        "--name",
        &format!("{name}-c"),
        "--network",
        &name,
        docker.image(),
    ]);
    let cname = format!("{name}-c");
    let nc = |addr: IpAddr| {
        let out = docker.cmd(["exec", &cname, "nc", "-w", "2", &addr.to_string(), "443"]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, why) = nc(s0);
    assert!(
        ok,
        "allowed address not reached from the new bridge: {why}\n{}",
        d.log()
    );
    let (ok, why) = nc(lab.s(1));
    assert!(
        !ok && why.contains("Connection refused"),
        "{why}\n{}",
        d.log()
    );
    assert!(d.is_running(), "{}", d.log());
}

#[test]
fn dockerd_restarted_containers_come_back_under_the_same_rules() {
    let docker = Docker::private("dockerd", &[]);
    let lab = Lab::new(&docker, "dockerd");
    let (s0, s1) = (lab.s(0), lab.s(1));
    let dns = lab.dns_addr().to_string();
    let _dns = lab.up.dns(1, &[("d.lab.test", s0)]);
    lab.allowlist("d.lab.test:443\n");
    let c = Container::run_with(
        &lab.net,
        "dockerd",
        &["--dns", &dns, "--restart", "always"],
        &[],
    );
    let mut d = lab.start();
    lab.wait_elements(&[s0], &mut d);
    let enforced = [(t(s0, 443), Probe::Connected), (t(s1, 443), Probe::Refused)];
    c.expect(&enforced, BLOCKED_TIMEOUT);
    let pid = c.pid();

    let t0 = Instant::now();
    docker.stop();
    let stopped = t0.elapsed();
    // Docker is down: the table does not depend on it.
    let listing = lab
        .listing()
        .expect("the table is gone while dockerd is down");
    assert!(
        listing.contains(&format!("iifname \"{}\" jump egress", lab.net.bridge())),
        "{listing}"
    );
    docker.start();
    let new_pid = c.wait_running(secs(30));
    let back = t0.elapsed();
    assert_ne!(pid, new_pid, "the container was not restarted");
    c.expect(&enforced, BLOCKED_TIMEOUT);
    assert_eq!(c.nc("d.lab.test", 443, secs(2)), Probe::Connected);
    eprintln!("dockerd restart: stopped after {stopped:?}, container back after {back:?}");
    assert!(d.is_running(), "{}", d.log());
}

#[test]
fn with_live_restore_enforcement_holds_while_dockerd_is_down() {
    let docker = Docker::private("live", &["--live-restore"]);
    let lab = Lab::new(&docker, "live");
    let (s0, s1) = (lab.s(0), lab.s(1));
    let _dns = lab.up.dns(1, &[("l.lab.test", s0)]);
    lab.allowlist(&format!("l.lab.test:443\n{s1}:80\n"));
    let c = lab.container("live");
    let mut d = lab.start();
    lab.wait_elements(&[s0, s1], &mut d);
    let enforced = [
        (t(s0, 443), Probe::Connected),
        (t(s1, 80), Probe::Connected),
        (t(s1, 443), Probe::Refused),
        (u(s0, 443), Probe::Unreachable(EHOSTUNREACH)),
    ];
    c.expect(&enforced, BLOCKED_TIMEOUT);
    let pid = c.pid();

    docker.stop();
    // The container runs on without its dockerd (live-restore); the
    // firewall holds throughout the window.
    let window = Instant::now();
    for _ in 0..3 {
        c.expect(&enforced, BLOCKED_TIMEOUT);
        std::thread::sleep(Duration::from_millis(300));
    }
    let probed = window.elapsed();
    docker.start();
    assert_eq!(
        c.wait_running(secs(30)),
        pid,
        "live-restore restarted the container"
    );
    c.expect(&enforced, BLOCKED_TIMEOUT);
    assert_eq!(c.nc("l.lab.test", 443, secs(2)), Probe::Connected);
    eprintln!("live-restore: probed for {probed:?} with dockerd down");
    assert!(d.is_running(), "{}", d.log());
}

#[test]
fn following_docker_the_rules_hold_while_docker_is_down_and_across_a_restart() {
    // The daemon follows the Docker network (no [network] interface).
    // With live-restore the container runs on while dockerd is down, so
    // the window can be probed.
    let docker = Docker::private("ddown", &["--live-restore"]);
    let lab = Lab::new(&docker, "ddown");
    lab.config(&Cfg {
        docker: Some(lab.net.name().to_owned()),
        ..Cfg::default()
    });
    let (s0, s1) = (lab.s(0), lab.s(1));
    lab.allowlist(&format!("{s0}:443\n"));
    let c = lab.container("ddown");
    let mut d = lab.start();
    lab.wait_elements(&[s0], &mut d);
    let enforced = [(t(s0, 443), Probe::Connected), (t(s1, 443), Probe::Refused)];
    c.expect(&enforced, BLOCKED_TIMEOUT);
    let filters_bridge = || {
        lab.listing()
            .is_some_and(|l| l.contains(&format!("iifname \"{}\" jump egress", lab.net.bridge())))
    };
    assert!(filters_bridge(), "{:?}", lab.listing());

    docker.stop();
    wait_until(
        "a warning that Docker is unreachable",
        secs(15),
        || d.log().contains("Docker unreachable"),
        || d.log(),
    );
    c.expect(&enforced, BLOCKED_TIMEOUT);
    // A daemon started while Docker is down filters the remembered bridge
    // (the name it would guess from the network name is different).
    assert_ne!(
        &lab.net.name()[..15.min(lab.net.name().len())],
        lab.net.bridge()
    );
    d.signal(libc::SIGKILL);
    assert!(d.wait_exit(secs(30)).is_some(), "SIGKILL did not end it");
    let mut d = lab.start();
    wait_until(
        "the bridge remembered from the last run",
        secs(15),
        || d.log().contains("remembered from the last run"),
        || d.log(),
    );
    lab.wait_elements(&[s0], &mut d);
    assert!(filters_bridge(), "{:?}\n{}", lab.listing(), d.log());
    c.expect(&enforced, BLOCKED_TIMEOUT);

    docker.start();
    wait_until(
        "Docker's return to be noticed",
        secs(30),
        || d.log().contains("Docker network found"),
        || d.log(),
    );
    assert!(filters_bridge(), "{:?}", lab.listing());
    c.expect(&enforced, BLOCKED_TIMEOUT);
    assert!(d.is_running(), "{}", d.log());
}

#[test]
fn the_lab_never_routes_outside_its_own_addresses() {
    // The lab host has routes to its bridges and upstreams only: a container
    // cannot reach anything else even with no firewall at all.
    let docker = Docker::shared();
    let net = Network::create(docker, "noroute");
    let c = Container::run(&net, "noroute", &[]);
    let out = docker.host().exec(["ip", "-4", "route", "show", "default"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "the lab host has a default route"
    );
    // 198.18.0.1 is in no lab subnet (index 0 is never handed out).
    let target = Ipv4Addr::new(198, 18, 0, 1);
    assert_eq!(
        c.nc(&target.to_string(), 80, secs(2)),
        Probe::Unreachable(libc::ENETUNREACH)
    );
}

#[test]
fn the_host_is_not_reachable_through_the_gateway() {
    let lab = Lab::new(Docker::shared(), "host");
    let s0 = lab.s(0);
    let _dns = lab.up.dns(1, &[("h.lab.test", s0)]);
    lab.allowlist("h.lab.test:443\n");
    let c = lab.container("host");
    // Services of the lab host itself, on its address on the bridge: what
    // the input hook guards.
    let gw = IpAddr::V4(lab.net.gateway());
    let _host = testkit::Servers::start(
        lab.docker.host(),
        &[std::net::SocketAddr::new(gw, 8081)],
        &[std::net::SocketAddr::new(gw, 5001)],
    );
    c.expect(
        &[
            (t(gw, 8081), Probe::Connected),
            (u(gw, 5001), Probe::Answered),
        ],
        BLOCKED_TIMEOUT,
    );
    let mut d = lab.start();
    lab.wait_elements(&[s0], &mut d);
    c.expect(
        &[
            (t(gw, 8081), Probe::Refused),
            (u(gw, 5001), Probe::Unreachable(EHOSTUNREACH)),
            (t(s0, 443), Probe::Connected),
        ],
        BLOCKED_TIMEOUT,
    );
    assert!(d.is_running(), "{}", d.log());
}
