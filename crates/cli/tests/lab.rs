//! The lab, from the command's side: `setup-network` and `verify` against a
//! real dockerd, and the sideways paths of the policy (containers beside
//! the agent, the host, another network's published port, the metadata
//! address) probed from real containers after a one-shot `apply`.
//!
//! Everything runs in testkit's lab: a dockerd in a namespace of its own,
//! upstream hosts on 198.18.0.0/15, the busybox test image. Every path a
//! test expects the firewall to block is first shown open (or shown to
//! fail differently) without the table, so the block is the firewall's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use testkit::errno::EHOSTUNREACH;
use testkit::{
    require_root, tcp, udp, unique_name, Container, Docker, Network, Probe, Run, Servers, Subnet,
    TempDir, Upstream, BLOCKED_TIMEOUT,
};

const BIN: &str = env!("CARGO_BIN_EXE_openclaw-egress");

/// A network, an upstream, and a config folder for the command.
struct Lab<'d> {
    docker: &'d Docker,
    net: Network<'d>,
    up: Upstream,
    dir: TempDir,
    table: String,
}

#[derive(Default)]
struct Extra {
    network: String,
    verify: String,
}

impl<'d> Lab<'d> {
    fn new(docker: &'d Docker, tag: &str) -> Lab<'d> {
        require_root();
        let lab = Lab {
            docker,
            net: Network::create(docker, tag),
            up: Upstream::start(docker.host(), &format!("{tag}-up")),
            dir: TempDir::new(&format!("clilab-{tag}")),
            table: unique_name(&format!("clilab-{tag}")),
        };
        lab.config(&Extra::default());
        lab
    }

    fn s(&self, i: u8) -> IpAddr {
        IpAddr::V4(self.up.service(i))
    }

    fn config(&self, x: &Extra) {
        let dns = self.up.dns_addr();
        let text = format!(
            "allowlist = \"allowlist.conf\"\n\
             [network]\ndocker = \"{net}\"\n{network}\n\
             [resolver]\nservers = [\"{dns}:53\"]\ntimeout = \"1s\"\nattempts = 1\n\
             [dns]\nallow = [\"{dns}\"]\n\
             [firewall]\ntable = \"{table}\"\nallow_private = [\"198.18.0.0/15\"]\n\
             [control]\nsocket = \"{socket}\"\n\
             [verify]\nimage = \"{image}\"\n{verify}\n",
            net = self.net.name(),
            network = x.network,
            table = self.table,
            socket = self.dir.join("control.sock").display(),
            image = self.docker.image(),
            verify = x.verify,
        );
        self.dir.write("egressd.toml", &text);
    }

    fn allowlist(&self, text: &str) {
        self.dir.write("allowlist.conf", text);
    }

    /// Runs the command in the lab host, talking to the lab's dockerd.
    fn run(&self, args: &[&str]) -> Run {
        let config = self.dir.join("egressd.toml");
        let out = Command::new("ip")
            .args(["netns", "exec", self.docker.host().name(), BIN, "--config"])
            .arg(&config)
            .args(args)
            .env("DOCKER_HOST", self.docker.docker_host())
            .output()
            .expect("run openclaw-egress");
        Run::from(out)
    }

    fn container(&self, tag: &str) -> Container<'d> {
        Container::run(&self.net, tag, &[IpAddr::V4(self.up.dns_addr())])
    }

    fn verify_json(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let mut a = vec!["verify", "--json", "--timeout", "1"];
        a.extend_from_slice(args);
        let r = self.run(&a);
        assert!(!r.stderr.contains("cannot remove"), "{r}");
        let v: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("verify --json is not JSON ({e}):\n{r}"));
        (r.code, v)
    }
}

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        let _ = self
            .docker
            .host()
            .exec(["nft", "delete", "table", "inet", &self.table]);
    }
}

/// TCP from the container's own busybox `nc` to the metadata address. The
/// kit's probes refuse 169.254.169.254 on purpose; this one scenario serves
/// it itself, from an upstream namespace of the lab, which has no other
/// route, so the address is named here and nowhere else.
fn meta_nc(docker: &Docker, c: &Container<'_>) -> Probe {
    let out = docker.cmd(["exec", c.name(), "nc", "-w", "2", "169.254.169.254", "80"]);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Probe::Connected
    } else if err.contains("Connection refused") {
        Probe::Refused
    } else if err.contains("timed out") {
        Probe::TimedOut
    } else {
        Probe::Failed(err.into_owned())
    }
}

fn t(addr: IpAddr, port: u16) -> testkit::Target {
    tcp(&SocketAddr::new(addr, port).to_string())
}

/// The verdict of the probe whose `what` starts with `prefix`.
fn verdict<'a>(v: &'a serde_json::Value, prefix: &str) -> &'a serde_json::Value {
    v["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["what"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no probe {prefix:?} in {v:#}"))
}

#[test]
fn setup_network_creates_once_then_checks_and_names_every_difference() {
    require_root();
    let docker = Docker::shared();
    let dir = TempDir::new("setupnet");
    let name = unique_name("setupnet");
    let subnet = Subnet::claim();
    let bridge = format!("ocsn{}", subnet.index());
    dir.write(
        "egressd.toml",
        &format!("allowlist = \"a.conf\"\n[network]\ndocker = \"{name}\"\n"),
    );
    let run = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", docker.host().name(), BIN, "--config"])
            .arg(dir.join("egressd.toml"))
            .arg("setup-network")
            .args(args)
            .env("DOCKER_HOST", docker.docker_host())
            .output()
            .unwrap();
        Run::from(out)
    };
    struct Rm<'a>(&'a Docker, String);
    impl Drop for Rm<'_> {
        fn drop(&mut self) {
            let _ = self.0.cmd(["network", "rm", &self.1]);
        }
    }
    let _rm = Rm(docker, name.clone());
    let cidr = subnet.cidr();
    run(&["--bridge", &bridge, "--subnet", &cidr])
        .expect_code(0)
        .stdout_has("created");
    let inspect = docker.ok([
        "network",
        "inspect",
        "--format",
        "{{.Driver}} {{.EnableIPv6}} {{index .Options \"com.docker.network.bridge.name\"}} {{range .IPAM.Config}}{{.Subnet}}{{end}}",
        &name,
    ]);
    assert_eq!(inspect.trim(), format!("bridge false {bridge} {cidr}"));
    assert!(docker
        .host()
        .exec(["ip", "link", "show", &bridge])
        .status
        .success());
    // Twice changes nothing.
    run(&["--bridge", &bridge, "--subnet", &cidr])
        .expect_code(0)
        .stdout_has("exists as expected");
    // A different wish is reported, not applied.
    let r = run(&["--bridge", "other0", "--subnet", "10.99.0.0/24"]);
    r.expect_code(1)
        .stdout_has(&format!("bridge interface is \"{bridge}\""))
        .stdout_has("expected 10.99.0.0/24");
    run(&["--bridge", "much-too-long-name0"])
        .expect_code(1)
        .stderr_has("longer than 15 bytes");
}

#[test]
fn verify_passes_on_a_good_setup_from_a_container_and_from_a_namespace() {
    let docker = Docker::shared();
    let lab = Lab::new(docker, "vgood");
    let _dns = lab.up.dns(1, &[("api.lab.test", lab.s(1))]);
    lab.config(&Extra {
        verify: format!("unlisted = \"{}\"", lab.s(2)),
        ..Extra::default()
    });
    lab.allowlist(&format!("{}:443\napi.lab.test:443\n", lab.s(0)));
    lab.run(&["apply"]).expect_code(0);
    for from in ["container", "netns"] {
        let (code, v) = lab.verify_json(&["--from", from]);
        assert_eq!(code, 0, "verify --from {from} failed:\n{v:#}");
        assert_eq!(v["ok"], true);
        // Everything this verify started is gone (other tests may be
        // verifying at the same time: look for its own names only).
        let from_what = v["probed_from"].as_str().unwrap().to_owned();
        let started = from_what.split_whitespace().nth(2).unwrap().to_owned();
        let base = started
            .trim_end_matches("-probe")
            .trim_end_matches("-a")
            .to_owned();
        let left = docker.ok(["ps", "-a", "--format", "{{.Names}}"]);
        assert!(!left.contains(&base), "{base} left in:\n{left}");
        let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(
            !String::from_utf8_lossy(&ns.stdout).contains(&base),
            "{base}"
        );
        assert!(v["probed_from"]
            .as_str()
            .unwrap()
            .starts_with(if from == "netns" {
                "network namespace"
            } else {
                "container"
            }));
        assert_eq!(
            verdict(&v, "allowlisted: api.lab.test:443")["result"]["seen"],
            "connected"
        );
        assert_eq!(
            verdict(&v, "dns: an allowlisted name resolves")["result"]["seen"],
            "resolved"
        );
        // The unlisted address listens on 443: the reset is the firewall's.
        assert_eq!(
            verdict(&v, "unlisted address, tcp/443")["result"]["seen"],
            "refused"
        );
        assert_eq!(
            verdict(&v, "unlisted address, udp")["result"]["seen"],
            "prohibited"
        );
        assert_eq!(
            verdict(&v, "another container")["result"]["seen"],
            "prohibited"
        );
        assert_eq!(
            verdict(&v, "the host through the gateway, udp")["result"]["seen"],
            "prohibited"
        );
    }
    // The table for people says the same.
    lab.run(&["verify", "--timeout", "1"])
        .expect_code(0)
        .stdout_has("as expected, 0 not");
}

#[test]
fn verify_fails_on_a_seeded_misconfiguration_and_says_what() {
    let docker = Docker::shared();
    let lab = Lab::new(docker, "vbad");
    let _dns = lab.up.dns(1, &[("api.lab.test", lab.s(1))]);
    lab.allowlist(&format!("{}:443\nmissing.lab.test:443\n", lab.s(0)));
    lab.run(&["apply"]).expect_code(3);
    let (code, v) = lab.verify_json(&[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["ok"], false);
    let p = verdict(&v, "allowlisted: missing.lab.test:443");
    assert_eq!(p["ok"], false);
    assert_eq!(p["result"]["seen"], "error");
    assert!(
        p["result"]["detail"]
            .as_str()
            .unwrap()
            .contains("did not resolve"),
        "{p:#}"
    );
    assert_eq!(verdict(&v, "allowlisted: 198.18.")["ok"], true);
    // With the table gone, the must-fail probes that can tell say so.
    lab.run(&["flush"]).expect_code(0);
    let (code, v) = lab.verify_json(&[]);
    assert_eq!(code, 1);
    let p = verdict(&v, "udp to an address allowed for tcp");
    assert_eq!(p["ok"], false, "{p:#}");
}

#[test]
fn intra_deny_and_allow_between_two_containers() {
    let docker = Docker::shared();
    let lab = Lab::new(docker, "intra");
    lab.allowlist(&format!("{}:443\n", lab.s(0)));
    let a = lab.container("intra-a");
    let b = lab.container("intra-b");
    let _srv = b.servers(&[8080], &[5000]);
    let peer = IpAddr::V4(b.ip());
    let peer_udp = udp(&SocketAddr::new(peer, 5000).to_string());
    a.expect(
        &[
            (t(peer, 8080), Probe::Connected),
            (peer_udp.clone(), Probe::Answered),
        ],
        BLOCKED_TIMEOUT,
    );
    lab.run(&["apply"]).expect_code(0);
    a.expect(
        &[
            (t(peer, 8080), Probe::Refused),
            (peer_udp.clone(), Probe::Unreachable(EHOSTUNREACH)),
        ],
        BLOCKED_TIMEOUT,
    );
    // Listing the peer does not open it: intra comes first.
    lab.allowlist(&format!("{}:443\n{peer}:8080\n", lab.s(0)));
    lab.run(&["apply"]).expect_code(0);
    a.expect(&[(t(peer, 8080), Probe::Refused)], BLOCKED_TIMEOUT);
    lab.config(&Extra {
        network: "intra = \"allow\"".into(),
        ..Extra::default()
    });
    lab.run(&["apply"]).expect_code(0);
    a.expect(
        &[
            (t(peer, 8080), Probe::Connected),
            (peer_udp, Probe::Answered),
        ],
        BLOCKED_TIMEOUT,
    );
    // The egress policy is untouched by intra.
    a.expect(
        &[
            (t(lab.s(0), 443), Probe::Connected),
            (t(lab.s(0), 80), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
}

#[test]
fn host_ports_open_only_the_listed_ports_of_the_host() {
    let docker = Docker::shared();
    let lab = Lab::new(docker, "hostports");
    let gw = IpAddr::V4(lab.net.gateway());
    let _host = Servers::start(
        docker.host(),
        &[SocketAddr::new(gw, 8080), SocketAddr::new(gw, 8081)],
        &[],
    );
    lab.allowlist(&format!("{gw}:8081\n"));
    let a = lab.container("hp");
    a.expect(
        &[
            (t(gw, 8080), Probe::Connected),
            (t(gw, 8081), Probe::Connected),
        ],
        BLOCKED_TIMEOUT,
    );
    lab.run(&["apply"]).expect_code(0);
    // An allowlist entry naming the host opens nothing there.
    a.expect(
        &[(t(gw, 8080), Probe::Refused), (t(gw, 8081), Probe::Refused)],
        BLOCKED_TIMEOUT,
    );
    lab.config(&Extra {
        network: "host_ports = [\"tcp/8080\"]".into(),
        ..Extra::default()
    });
    lab.run(&["apply"]).expect_code(0);
    a.expect(
        &[
            (t(gw, 8080), Probe::Connected),
            (t(gw, 8081), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
    // verify reports the entry for the host as unreachable (it is), and
    // the host port as reached.
    let (code, v) = lab.verify_json(&[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(
        verdict(&v, "host port tcp/8080")["result"]["seen"],
        "connected"
    );
    assert_eq!(verdict(&v, &format!("allowlisted: {gw}:8081"))["ok"], false);
    lab.allowlist("");
    lab.run(&["apply"]).expect_code(0);
    let (code, v) = lab.verify_json(&[]);
    assert_eq!(code, 0, "{v:#}");
}

#[test]
fn another_networks_published_port_and_the_metadata_address_need_an_ip_entry() {
    let docker = Docker::shared();
    let lab = Lab::new(docker, "sideways");
    // A service on another Docker network, published on the host.
    let other = Network::create(docker, "sideways-other");
    let public = 20000 + (std::process::id() % 20000) as u16;
    let publish = format!("{public}:8080");
    let svc = Container::run_with(&other, "sideways-svc", &["-p", &publish], &[]);
    let _svc_srv = svc.servers(&[8080], &[]);
    let svc_ip = IpAddr::V4(svc.ip());
    let gw = IpAddr::V4(lab.net.gateway());
    // The metadata address, served by the upstream (the lab has no other
    // route, so this reaches only the lab's own namespace).
    let meta: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));
    lab.up
        .ns()
        .ip(&["addr", "add", "169.254.169.254/32", "dev", "eth0"]);
    docker.host().ip(&[
        "route",
        "add",
        "169.254.169.254/32",
        "via",
        &lab.up.service(0).to_string(),
        "dev",
        lab.up.link(),
    ]);
    let _meta_srv = Servers::start(lab.up.ns(), &[SocketAddr::new(meta, 80)], &[]);
    lab.allowlist(&format!("{}:443\n", lab.s(0)));
    let a = lab.container("sideways-a");
    // Without the table: the metadata address and the published port
    // answer; the other network's container itself is dropped silently by
    // Docker's own isolation between networks.
    assert_eq!(meta_nc(docker, &a), Probe::Connected);
    a.expect(&[(t(gw, public), Probe::Connected)], BLOCKED_TIMEOUT);
    a.expect(
        &[(t(svc_ip, 8080), Probe::TimedOut)],
        Duration::from_secs(1),
    );
    lab.run(&["apply"]).expect_code(0);
    // Our table now refuses all three, before Docker sees them.
    assert_eq!(meta_nc(docker, &a), Probe::Refused);
    a.expect(
        &[
            (t(gw, public), Probe::Refused),
            (t(svc_ip, 8080), Probe::Refused),
        ],
        BLOCKED_TIMEOUT,
    );
    // Explicit IP entries open the metadata address and the container
    // (which Docker's isolation then drops: a time-out, no longer our
    // reset); the published port reached through the host needs the
    // container's entry and, when Docker's userland proxy answers on the
    // host, a host port.
    lab.allowlist(&format!("{}:443\n{meta}:80\n{svc_ip}:8080\n", lab.s(0)));
    lab.config(&Extra {
        network: format!("host_ports = [\"tcp/{public}\"]"),
        ..Extra::default()
    });
    lab.run(&["apply"]).expect_code(0);
    assert_eq!(meta_nc(docker, &a), Probe::Connected);
    a.expect(&[(t(gw, public), Probe::Connected)], BLOCKED_TIMEOUT);
    a.expect(
        &[(t(svc_ip, 8080), Probe::TimedOut)],
        Duration::from_secs(1),
    );
    lab.config(&Extra::default());
    // A hostname never opens them.
    let _dns = lab.up.dns(1, &[("meta.lab.test", meta)]);
    lab.allowlist(&format!("{}:443\nmeta.lab.test:80\n", lab.s(0)));
    lab.run(&["apply"])
        .expect_code(0)
        .stderr_has("refused answer 169.254.169.254");
    assert_eq!(meta_nc(docker, &a), Probe::Refused);
}
