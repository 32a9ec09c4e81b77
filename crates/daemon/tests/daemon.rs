//! `openclaw-egressd` end to end, as root: every test gets its own network
//! namespace (only `lo`, up), a DNS server on 127.0.0.1:53 in it, a config
//! and allowlist in a temporary folder, and a daemon started in the
//! namespace. The filtered interface does not need to exist, so no topology
//! is built: the tests watch the kernel (`nft list table`) and the daemon
//! (`openclaw-egress status --json`, its log, its sd-notify datagrams).
//!
//! Nothing leaves the namespaces: DNS is on loopback, and every address in
//! the allowlists and records is in 198.18.0.0/15 or 2001:db8::/32.
//!
//! Timing: waits poll with short intervals and generous upper bounds; a few
//! checks need a lower bound ("still there at T"), and each of those keeps
//! at least a second of margin to the earliest moment a correct daemon may
//! change the state.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use egress_core::status::{EntryStatus, Status};
use testkit::{
    assert_holds, dns_query, error_locations, nft_set_addresses, require_root, sibling_binary,
    wait_for, wait_until, Daemon, Dnsmasq, Netns, NotifySocket, QType, TempDir, Transport, POLL,
};

const DAEMON: &str = env!("CARGO_BIN_EXE_openclaw-egressd");

/// The `openclaw-egress` CLI (these tests run `openclaw-egress status`).
fn cli_bin() -> PathBuf {
    sibling_binary(DAEMON, "openclaw-egress")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- fixture

/// The settings a test varies.
struct Cfg {
    grace: &'static str,
    timeout: &'static str,
    /// More `[resolver]` lines.
    resolver: String,
}

impl Default for Cfg {
    fn default() -> Cfg {
        Cfg {
            grace: "2s",
            timeout: "1s",
            resolver: String::new(),
        }
    }
}

/// A namespace, a folder with the config and allowlist, and the table name.
struct Fixture {
    ns: Netns,
    dir: TempDir,
    table: String,
    iface: String,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        require_root();
        cli_bin();
        let ns = Netns::new(tag);
        let dir = TempDir::new(&format!("d-{tag}"));
        Fixture {
            ns,
            dir,
            table: format!("oc_d_{}", tag.replace('-', "_")),
            iface: format!("oc-d{}", &tag[..tag.len().min(10)]),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("egressd.toml")
    }

    fn allowlist_path(&self) -> PathBuf {
        self.dir.join("allowlist.conf")
    }

    fn config_text(&self, c: &Cfg) -> String {
        format!(
            "allowlist = \"allowlist.conf\"\n\
             [network]\n\
             interface = \"{iface}\"\n\
             [resolver]\n\
             servers = [\"127.0.0.1:53\"]\n\
             min_ttl = \"1s\"\n\
             grace = \"{grace}\"\n\
             timeout = \"{timeout}\"\n\
             attempts = 1\n\
             {extra}\
             [dns]\n\
             allow = []\n\
             [firewall]\n\
             table = \"{table}\"\n\
             allow_private = [\"198.18.0.0/15\", \"2001:db8::/32\"]\n\
             [control]\n\
             socket = \"{socket}\"\n",
            iface = self.iface,
            grace = c.grace,
            timeout = c.timeout,
            extra = c.resolver,
            table = self.table,
            socket = self.dir.join("control.sock").display(),
        )
    }

    /// Writes egressd.toml (atomically).
    fn config(&self, c: &Cfg) {
        self.dir.write("egressd.toml", &self.config_text(c));
    }

    /// Writes allowlist.conf (atomically: temporary file + rename).
    fn allowlist(&self, text: &str) {
        self.dir.write("allowlist.conf", text);
    }

    /// testkit's dnsmasq on 127.0.0.1:53 (authoritative for `.test`).
    fn dnsmasq(&self, ttl: u32, records: &[(&str, &str)]) -> Dnsmasq<'_> {
        Dnsmasq::start(&self.ns, &LOCALHOST, ttl, &parsed(records))
    }

    /// Like [`Fixture::dnsmasq`], counting queries, and REFUSING names
    /// it has no record of the asked type for unless `authoritative`.
    fn logged_dnsmasq(
        &self,
        ttl: u32,
        records: &[(&str, &str)],
        authoritative: bool,
    ) -> Dnsmasq<'_> {
        Dnsmasq::start_logged(&self.ns, &LOCALHOST, ttl, &parsed(records), authoritative)
    }

    fn start(&self) -> Daemon {
        self.start_with(&[], &[])
    }

    /// Starts the daemon in the namespace with extra arguments and
    /// environment; its stderr and stdout go to `daemon.log`.
    fn start_with(&self, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name(), DAEMON, "--config"])
            .arg(self.config_path())
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied());
        // `ip netns exec` execs the program: the child's pid is the daemon's.
        Daemon::spawn(&mut cmd, &self.dir.join("daemon.log"))
    }

    /// Runs the daemon to completion (for configs it must refuse).
    fn run_daemon_to_exit(&self) -> (ExitStatus, String) {
        let mut d = self.start();
        let st = d.wait_exit(secs(15)).unwrap_or_else(|| {
            panic!(
                "the daemon did not exit on an invalid config; its log:\n{}",
                d.log()
            )
        });
        (st, d.log())
    }

    /// `nft list table inet TABLE` in the namespace, `None` if absent.
    fn listing(&self) -> Option<String> {
        self.ns.nft_table(&self.table)
    }

    fn table_exists(&self) -> bool {
        self.listing().is_some()
    }

    /// The addresses in the table's sets (empty when the table is absent).
    fn elements(&self) -> BTreeSet<String> {
        self.listing()
            .map(|l| nft_set_addresses(&l))
            .unwrap_or_default()
    }

    fn has(&self, addr: &str) -> bool {
        self.elements().contains(addr)
    }

    /// `openclaw-egress status [--json]` in the namespace.
    fn status_cmd(&self, json: bool) -> Output {
        self.status_cmd_at(&self.config_path(), json)
    }

    /// A config for the CLI alone, naming the daemon's control socket: the
    /// CLI falls back to the default socket when the daemon's config is
    /// invalid.
    fn client_config(&self) -> PathBuf {
        let text = format!(
            "[control]\nsocket = \"{}\"\n",
            self.dir.join("control.sock").display()
        );
        self.dir.write("client.toml", &text)
    }

    /// `openclaw-egress --config CONFIG status [--json]` in the namespace.
    fn status_cmd_at(&self, config: &Path, json: bool) -> Output {
        let cli = cli_bin();
        let mut args: Vec<&std::ffi::OsStr> = vec![
            cli.as_os_str(),
            "--config".as_ref(),
            config.as_os_str(),
            "status".as_ref(),
        ];
        if json {
            args.push("--json".as_ref());
        }
        self.ns.exec(args)
    }

    /// The daemon's status; panics unless it answers (exit 0 or 1).
    #[track_caller]
    fn status(&self) -> Status {
        self.status_at(&self.config_path())
    }

    #[track_caller]
    fn status_at(&self, config: &Path) -> Status {
        let out = self.status_cmd_at(config, true);
        let code = out.status.code();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            matches!(code, Some(0 | 1)),
            "status --json failed ({:?}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("status --json is not a status ({e}):\n{stdout}"))
    }

    /// Waits until `status` answers.
    fn wait_status(&self, d: &mut Daemon) -> Status {
        wait_for("the daemon answers status", secs(15), || {
            assert!(d.is_running(), "the daemon exited; its log:\n{}", d.log());
            let out = self.status_cmd(true);
            matches!(out.status.code(), Some(0 | 1))
                .then(|| serde_json::from_slice::<Status>(&out.stdout).ok())
                .flatten()
        })
    }

    /// Waits until the kernel's elements are exactly `want`.
    #[track_caller]
    fn wait_elements(&self, want: &BTreeSet<String>, limit: Duration, d: &Daemon) {
        wait_until(
            &format!("the table's elements to be exactly {want:?}"),
            limit,
            || &self.elements() == want,
            || {
                format!(
                    "now: {:?}\nlisting:\n{}\ndaemon log:\n{}",
                    self.elements(),
                    self.listing().unwrap_or_else(|| "(no table)".into()),
                    d.log()
                )
            },
        );
    }

    #[track_caller]
    fn wait_present(&self, addr: &str, limit: Duration, d: &Daemon) {
        wait_until(
            &format!("{addr} in the table"),
            limit,
            || self.has(addr),
            || self.explain(d),
        );
    }

    #[track_caller]
    fn wait_absent(&self, addr: &str, limit: Duration, d: &Daemon) {
        wait_until(
            &format!("{addr} gone from the table"),
            limit,
            || self.table_exists() && !self.has(addr),
            || self.explain(d),
        );
    }

    fn explain(&self, d: &Daemon) -> String {
        format!(
            "elements: {:?}\nlisting:\n{}\ndaemon log:\n{}",
            self.elements(),
            self.listing().unwrap_or_else(|| "(no table)".into()),
            d.log()
        )
    }
}

const LOCALHOST: [IpAddr; 1] = [IpAddr::V4(Ipv4Addr::LOCALHOST)];

/// `(name, address)` records with the addresses parsed.
fn parsed<'r>(records: &[(&'r str, &str)]) -> Vec<(&'r str, IpAddr)> {
    records
        .iter()
        .map(|(n, a)| (*n, a.parse().unwrap()))
        .collect()
}

/// The status of the entry whose text is `text`.
#[track_caller]
fn entry<'s>(s: &'s Status, text: &str) -> &'s EntryStatus {
    s.entries
        .iter()
        .find(|e| e.text == text)
        .unwrap_or_else(|| panic!("no entry {text:?} in the status: {s:#?}"))
}

fn addresses(e: &EntryStatus) -> BTreeSet<String> {
    e.addresses.iter().map(|a| a.address.clone()).collect()
}

// ------------------------------------------------------- DNS of our own

/// A DNS server of the test's own on 127.0.0.1:53 in a namespace: answers
/// every A query with `addr` (TTL 60) after `delay`, every other query at
/// once with no records (NOERROR, empty answer). Stops on drop.
struct SlowDns {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The answer to `query`: header and question copied, `a` as the answer
/// when given.
fn dns_reply(query: &[u8], a: Option<Ipv4Addr>) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut i = 12;
    while i < query.len() && query[i] != 0 {
        i += 1 + query[i] as usize;
    }
    let qend = i + 1 + 4;
    if qend > query.len() {
        return None;
    }
    let mut r = Vec::with_capacity(qend + 16);
    r.extend_from_slice(&query[..2]);
    r.push(0x84 | (query[2] & 0x01)); // QR, AA, RD as asked
    r.push(0x80); // RA, NOERROR
    r.extend_from_slice(&[0, 1, 0, u8::from(a.is_some()), 0, 0, 0, 0]);
    r.extend_from_slice(&query[12..qend]);
    if let Some(a) = a {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        r.extend_from_slice(&60u32.to_be_bytes());
        r.extend_from_slice(&[0, 4]);
        r.extend_from_slice(&a.octets());
    }
    Some(r)
}

impl SlowDns {
    fn start(ns: &Netns, addr: Ipv4Addr, delay: Duration) -> SlowDns {
        let sock = ns.run(|| UdpSocket::bind("127.0.0.1:53").expect("bind 127.0.0.1:53"));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let q = &buf[..n];
                let qtype = dns_reply(q, None)
                    .map(|r| u16::from_be_bytes([r[r.len() - 4], r[r.len() - 3]]));
                if qtype == Some(1) {
                    let Some(reply) = dns_reply(q, Some(addr)) else {
                        continue;
                    };
                    let s = sock.try_clone().unwrap();
                    std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        let _ = s.send_to(&reply, peer);
                    });
                } else if let Some(reply) = dns_reply(q, None) {
                    let _ = sock.send_to(&reply, peer);
                }
            }
        });
        SlowDns {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SlowDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// True when `s` reads "N entries, M addresses, next refresh Xs, E errors"
/// (or "no refresh scheduled" in place of the refresh).
fn is_summary(s: &str) -> bool {
    let num = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = s.split(", ").collect();
    if parts.len() != 4 {
        return false;
    }
    let two = |p: &str, word: &str| p.split_once(' ').is_some_and(|(n, w)| num(n) && w == word);
    let refresh = parts[2] == "no refresh scheduled"
        || parts[2]
            .strip_prefix("next refresh ")
            .and_then(|r| r.strip_suffix('s'))
            .is_some_and(num);
    two(parts[0], "entries") && two(parts[1], "addresses") && refresh && two(parts[3], "errors")
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

// ================================================================= tests

#[test]
fn an_invalid_config_or_allowlist_at_start_exits_non_zero_with_every_error_located() {
    let fx = Fixture::new("badstart");
    fx.allowlist("198.18.1.1\n");
    // Three broken settings, on lines 6, 9 and 13.
    let mut text = fx.config_text(&Cfg::default());
    text = text.replace("min_ttl = \"1s\"", "min_ttl = \"soon\"");
    text = text.replace("attempts = 1", "attempts = 0");
    text = text.replace("[firewall]\n", "[firewall]\naction = \"explode\"\n");
    std::fs::write(fx.config_path(), &text).unwrap();
    let (st, log) = fx.run_daemon_to_exit();
    assert!(!st.success(), "the daemon accepted a broken config:\n{log}");
    let locs = error_locations(&log, &fx.config_path());
    let lines: Vec<usize> = locs.iter().map(|(l, _)| *l).collect();
    assert_eq!(
        lines,
        vec![6, 9, 13],
        "every error as PATH:LINE:COL (text:\n{text})\nlog:\n{log}"
    );
    assert!(locs.iter().all(|(_, c)| *c >= 1), "{log}");
    assert!(
        !fx.table_exists(),
        "a table was loaded from a broken config"
    );

    // A valid config with a broken allowlist: both errors, nothing loaded.
    std::fs::remove_file(fx.dir.join("daemon.log")).unwrap();
    fx.config(&Cfg::default());
    fx.allowlist("198.18.1.1\n198.18.1.2:99999\n# fine\nbad_host!:443\n");
    let (st, log) = fx.run_daemon_to_exit();
    assert!(
        !st.success(),
        "the daemon accepted a broken allowlist:\n{log}"
    );
    let lines: Vec<usize> = error_locations(&log, &fx.allowlist_path())
        .iter()
        .map(|(l, _)| *l)
        .collect();
    assert_eq!(lines, vec![2, 4], "log:\n{log}");
    assert!(
        !fx.table_exists(),
        "a table was loaded from a broken allowlist"
    );
}

#[test]
fn the_table_is_closed_before_the_first_answer_and_ready_follows_the_first_apply() {
    let fx = Fixture::new("start");
    // The A answer comes 3 s late; the daemon waits up to 6 s for it.
    let _dns = SlowDns::start(&fx.ns, Ipv4Addr::new(198, 18, 1, 1), secs(3));
    fx.config(&Cfg {
        timeout: "6s",
        ..Cfg::default()
    });
    fx.allowlist("slow.test:443\n198.18.1.9\n");
    let notify = NotifySocket::bind(fx.dir.join("notify.sock"));
    let t0 = Instant::now();
    let mut d = fx.start_with(&[], &[("NOTIFY_SOCKET", notify.path().to_str().unwrap())]);
    let listing = wait_for("the table to be loaded", secs(10), || {
        assert!(d.is_running(), "the daemon exited:\n{}", d.log());
        fx.listing()
    });
    let seen = t0.elapsed();
    assert!(
        notify.with_line("READY=1").is_empty(),
        "READY=1 before the first answer arrived (table seen after {seen:?}):\n{}",
        notify.dump()
    );
    // The final rules are there, the hostname has no address: closed.
    assert!(
        listing.contains(&format!("iifname \"{}\" jump egress", fx.iface)),
        "{listing}"
    );
    assert!(listing.contains("reject"), "{listing}");
    assert_eq!(
        nft_set_addresses(&listing),
        set(&["198.18.1.9"]),
        "{listing}"
    );
    let s = fx.wait_status(&mut d);
    assert_eq!(s.firewall, format!("table inet {}", fx.table));
    assert!(
        entry(&s, "slow.test:443").addresses.is_empty(),
        "addresses before any answer: {s:#?}"
    );
    assert!(notify.with_line("READY=1").is_empty(), "{}", notify.dump());

    // READY comes once the answer is applied: the element is in the kernel
    // the moment READY=1 is received.
    wait_until(
        "READY=1",
        secs(15),
        || !notify.with_line("READY=1").is_empty(),
        || format!("{}\n{}", notify.dump(), d.log()),
    );
    assert_eq!(
        fx.elements(),
        set(&["198.18.1.1", "198.18.1.9"]),
        "READY=1 sent before the first answer was applied:\n{}",
        d.log()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(2500),
        "READY=1 came before the (3 s late) answer"
    );
}

#[test]
fn a_rotated_address_is_added_and_the_old_one_expires_after_grace() {
    let fx = Fixture::new("rotate");
    let dns = fx.dnsmasq(1, &[("rot.test", "198.18.5.5")]);
    fx.config(&Cfg {
        grace: "4s",
        ..Cfg::default()
    });
    fx.allowlist("rot.test:443\n");
    let d = fx.start();
    fx.wait_present("198.18.5.5", secs(10), &d);

    dns.set_records(&[("rot.test", "198.18.5.6".parse().unwrap())]);
    let changed = Instant::now();
    // TTL 1 s: the new address within a few seconds.
    fx.wait_present("198.18.5.6", secs(6), &d);
    // The old one was last answered at most ~1 s before the change, so it is
    // allowed until at least ~change - 1 s + 1 s TTL + 4 s grace - 1 s (the
    // kernel's refresh slack): check up to change + 1.5 s.
    let both = fx.elements();
    let early = changed.elapsed();
    if early < Duration::from_millis(1500) {
        assert!(
            both.contains("198.18.5.5"),
            "the old address was dropped {early:?} after the change, before its grace ran out: {both:?}"
        );
        let s = fx.status();
        let addrs = addresses(entry(&s, "rot.test:443"));
        assert!(addrs.contains("198.18.5.6"), "{s:#?}");
    }
    assert_holds(
        "the old address, until its grace runs out,",
        changed,
        Duration::from_millis(1500),
        || fx.has("198.18.5.5"),
        || fx.explain(&d),
    );
    fx.wait_absent("198.18.5.5", secs(10), &d);
    let s = fx.status();
    assert_eq!(
        addresses(entry(&s, "rot.test:443")),
        set(&["198.18.5.6"]),
        "{s:#?}"
    );
    assert_eq!(fx.elements(), set(&["198.18.5.6"]));
}

#[test]
fn a_long_ttl_is_not_asked_early_and_sighup_asks_every_host_again() {
    let fx = Fixture::new("longttl");
    let dns = fx.logged_dnsmasq(
        3600,
        &[("one.test", "198.18.3.1"), ("two.test", "198.18.3.2")],
        true,
    );
    fx.config(&Cfg {
        resolver: "max_ttl = \"2h\"\nnegative_ttl = \"1h\"\n".into(),
        ..Cfg::default()
    });
    fx.allowlist("one.test:443\ntwo.test\n");
    let base = |q: &str, n: &str| dns.queries(q, n);
    let b1 = base("A", "one.test");
    let b2 = base("A", "two.test");
    let mut d = fx.start();
    fx.wait_present("198.18.3.1", secs(10), &d);
    fx.wait_present("198.18.3.2", secs(10), &d);
    let counts = || {
        [
            dns.queries("A", "one.test") - b1,
            dns.queries("AAAA", "one.test"),
            dns.queries("A", "two.test") - b2,
            dns.queries("AAAA", "two.test"),
        ]
    };
    wait_until(
        "one query of each kind",
        secs(5),
        || counts() == [1, 1, 1, 1],
        || format!("{:?}\n{}", counts(), dns.log()),
    );
    // Well past min_ttl (1 s): nothing is asked again.
    std::thread::sleep(secs(3));
    assert_eq!(
        counts(),
        [1, 1, 1, 1],
        "a 3600 s answer was asked again early:\n{}",
        dns.log()
    );
    let s = fx.status();
    let next = entry(&s, "one.test:443").next_refresh_ms.unwrap();
    assert!(next > 3_000_000, "next refresh in {next} ms: {s:#?}");

    d.signal(libc::SIGHUP);
    wait_until(
        "every host and family asked again after SIGHUP",
        secs(5),
        || counts() == [2, 2, 2, 2],
        || format!("{:?}\n{}\n{}", counts(), dns.log(), d.log()),
    );
    std::thread::sleep(secs(1));
    assert_eq!(counts(), [2, 2, 2, 2], "{}", dns.log());
    assert_eq!(fx.elements(), set(&["198.18.3.1", "198.18.3.2"]));
}

#[test]
fn edits_in_place_by_rename_and_by_symlink_swap_are_enforced() {
    let fx = Fixture::new("edits");
    let dns = fx.dnsmasq(1, &[("e1.test", "198.18.4.11"), ("e2.test", "198.18.4.12")]);
    fx.config(&Cfg {
        timeout: "5s",
        ..Cfg::default()
    });
    fx.allowlist("198.18.4.1\n");
    let mut d = fx.start();
    fx.wait_status(&mut d);
    fx.wait_elements(&set(&["198.18.4.1"]), secs(10), &d);

    // 1. Appended in place (same inode).
    let mut f = OpenOptions::new()
        .append(true)
        .open(fx.allowlist_path())
        .unwrap();
    f.write_all(b"198.18.4.2\ne1.test:443\n").unwrap();
    drop(f);
    fx.wait_elements(
        &set(&["198.18.4.1", "198.18.4.2", "198.18.4.11"]),
        secs(5),
        &d,
    );

    // 2. A new file renamed over it.
    let tmp = fx.dir.join("allowlist.conf.new");
    std::fs::write(&tmp, "198.18.4.3\ne1.test:443\n").unwrap();
    std::fs::rename(&tmp, fx.allowlist_path()).unwrap();
    fx.wait_elements(&set(&["198.18.4.3", "198.18.4.11"]), secs(5), &d);

    // 3. The allowlist becomes a symlink into another folder (itself a
    // rename), then the symlink is swapped atomically to a third folder.
    for (sub, text) in [("v1", "198.18.4.4\n"), ("v2", "198.18.4.5\ne2.test\n")] {
        std::fs::create_dir(fx.dir.join(sub)).unwrap();
        std::fs::write(fx.dir.join(sub).join("list.conf"), text).unwrap();
    }
    let swap = |target: &str| {
        let tmp = fx.dir.join(".allowlist.conf.link");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, fx.allowlist_path()).unwrap();
    };
    swap("v1/list.conf");
    fx.wait_elements(&set(&["198.18.4.4"]), secs(5), &d);
    swap("v2/list.conf");
    fx.wait_elements(&set(&["198.18.4.5", "198.18.4.12"]), secs(5), &d);
    // An in-place edit of the new target (in a folder not watched before).
    let mut f = OpenOptions::new()
        .append(true)
        .open(fx.dir.join("v2").join("list.conf"))
        .unwrap();
    f.write_all(b"198.18.4.6\n").unwrap();
    drop(f);
    fx.wait_elements(
        &set(&["198.18.4.5", "198.18.4.6", "198.18.4.12"]),
        secs(5),
        &d,
    );

    // 4. A literal address does not wait for DNS: with the server frozen,
    // an edit adding a hostname and an address enforces the address while
    // the hostname's query is still pending (timeout 5 s).
    dns.signal(libc::SIGSTOP);
    let mut f = OpenOptions::new()
        .append(true)
        .open(fx.dir.join("v2").join("list.conf"))
        .unwrap();
    f.write_all(b"e3.test:80\n198.18.4.7\n").unwrap();
    drop(f);
    fx.wait_present("198.18.4.7", secs(4), &d);
    let s = fx.status();
    let e3 = entry(&s, "e3.test:80");
    assert!(
        e3.addresses.is_empty() && e3.last_error.is_none(),
        "the literal address waited for the hostname's DNS query: {e3:#?}"
    );
    dns.signal(libc::SIGCONT);
}

#[test]
fn a_directory_symlink_swap_is_enforced() {
    // The Kubernetes ConfigMap layout: allowlist.conf -> ..data/allowlist.conf,
    // ..data -> ..v1; an update writes ..v2 and renames a new ..data link
    // over the old one. No event names allowlist.conf itself.
    let fx = Fixture::new("dirswap");
    for (sub, text) in [("..v1", "198.18.6.1\n"), ("..v2", "198.18.6.2\n")] {
        std::fs::create_dir(fx.dir.join(sub)).unwrap();
        std::fs::write(fx.dir.join(sub).join("allowlist.conf"), text).unwrap();
    }
    std::os::unix::fs::symlink("..v1", fx.dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/allowlist.conf", fx.allowlist_path()).unwrap();
    let _dns = fx.dnsmasq(1, &[]);
    fx.config(&Cfg::default());
    let mut d = fx.start();
    fx.wait_elements(&set(&["198.18.6.1"]), secs(10), &d);
    let tmp = fx.dir.join("..data_tmp");
    std::os::unix::fs::symlink("..v2", &tmp).unwrap();
    std::fs::rename(&tmp, fx.dir.join("..data")).unwrap();
    let want = set(&["198.18.6.2"]);
    let deadline = Instant::now() + secs(5);
    while Instant::now() < deadline && fx.elements() != want {
        std::thread::sleep(POLL);
    }
    if fx.elements() != want {
        // Make sure the new file itself is fine: SIGHUP applies it.
        let missed = fx.elements();
        d.signal(libc::SIGHUP);
        fx.wait_elements(&want, secs(5), &d);
        panic!(
            "the swap of the ..data symlink was not noticed within 5 s (the table still \
             held {missed:?}); SIGHUP applied the new allowlist at once, so the file watch \
             missed the change. daemon log:\n{}",
            d.log()
        );
    }
}

#[test]
fn a_malformed_edit_keeps_the_old_rules_and_is_reported_until_fixed() {
    let fx = Fixture::new("malformed");
    let _dns = fx.dnsmasq(1, &[("m.test", "198.18.8.8")]);
    fx.config(&Cfg::default());
    fx.allowlist("198.18.8.1\nm.test:443\n");
    let mut d = fx.start();
    fx.wait_status(&mut d);
    let good = set(&["198.18.8.1", "198.18.8.8"]);
    fx.wait_elements(&good, secs(10), &d);
    assert_eq!(fx.status_cmd(false).status.code(), Some(0));

    // Two bad lines next to a valid new entry: nothing of it is applied.
    fx.allowlist("198.18.8.2\n198.18.8.3:99999\nbad_host!:443\n");
    let s = wait_for("config_error in status", secs(5), || {
        let s = fx.status();
        s.config_error.is_some().then_some(s)
    });
    let msgs = s.config_error.as_ref().unwrap().messages.join("\n");
    let lines: Vec<usize> = error_locations(&msgs, &fx.allowlist_path())
        .iter()
        .map(|(l, _)| *l)
        .collect();
    assert_eq!(lines, vec![2, 3], "messages as PATH:LINE:COL: {msgs}");
    // The old policy stays enforced, and the status still shows it.
    assert_eq!(entry(&s, "m.test:443").addresses.len(), 1, "{s:#?}");
    std::thread::sleep(secs(3)); // past TTL + grace: refreshes go on
    assert_eq!(fx.elements(), good, "{}", fx.explain(&d));
    let human = fx.status_cmd(false);
    assert_eq!(
        human.status.code(),
        Some(1),
        "status must exit 1 while a config error is held:\n{}",
        String::from_utf8_lossy(&human.stdout)
    );
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("198.18.8.3:99999")
            || String::from_utf8_lossy(&human.stdout).contains(":2:"),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );

    // Fixed: the error clears and the new file is enforced.
    fx.allowlist("198.18.8.2\nm.test:443\n");
    fx.wait_elements(&set(&["198.18.8.2", "198.18.8.8"]), secs(5), &d);
    let s = fx.status();
    assert!(s.config_error.is_none(), "{s:#?}");
    assert_eq!(fx.status_cmd(false).status.code(), Some(0));

    // A broken config file is reported the same way, with its location.
    let broken = fx
        .config_text(&Cfg::default())
        .replace("grace = \"2s\"", "grace = \"forever\"");
    fx.dir.write("egressd.toml", &broken);
    let client = fx.client_config();
    let s = wait_for("config_error for egressd.toml", secs(5), || {
        let s = fx.status_at(&client);
        s.config_error.is_some().then_some(s)
    });
    let msgs = s.config_error.as_ref().unwrap().messages.join("\n");
    assert_eq!(
        error_locations(&msgs, &fx.config_path())
            .iter()
            .map(|(l, _)| *l)
            .collect::<Vec<_>>(),
        vec![7],
        "{msgs}"
    );
    assert_eq!(fx.status_cmd_at(&client, false).status.code(), Some(1));
    assert_eq!(fx.elements(), set(&["198.18.8.2", "198.18.8.8"]));
    fx.config(&Cfg::default());
    wait_until(
        "config_error cleared",
        secs(5),
        || fx.status().config_error.is_none(),
        || d.log(),
    );
    assert_eq!(fx.status_cmd(false).status.code(), Some(0));
}

#[test]
fn while_dns_is_down_addresses_are_served_stale_then_expire_and_come_back() {
    let fx = Fixture::new("stale");
    let dns = fx.dnsmasq(1, &[("st.test", "198.18.9.1")]);
    fx.config(&Cfg {
        grace: "2s",
        timeout: "500ms",
        resolver: "serve_stale = \"8s\"\n".into(),
    });
    fx.allowlist("st.test:443\n");
    let d = fx.start();
    fx.wait_present("198.18.9.1", secs(10), &d);
    std::thread::sleep(secs(2)); // a few refreshes
    fx.wait_present("198.18.9.1", secs(1), &d);

    dns.signal(libc::SIGSTOP);
    let down = Instant::now();
    // Without serve-stale it would be gone by down + 1 s TTL + 2 s grace;
    // the last good answer is at most ~1 s old, so serve-stale keeps it
    // until at least down + 7 s.
    assert_holds(
        "the address, served stale (serve_stale 8s) after DNS went down,",
        down,
        Duration::from_millis(4500),
        || fx.has("198.18.9.1"),
        || fx.explain(&d),
    );
    let s = fx.status();
    let e = entry(&s, "st.test:443");
    assert!(
        e.last_error.as_deref().is_some_and(|m| m.contains("A:")),
        "{e:#?}"
    );
    // After serve_stale it closes. (The kernel may close it up to the
    // refresh slack, 1 s, before the daemon's own expiry: see diff.rs.)
    fx.wait_absent("198.18.9.1", secs(10), &d);
    wait_until(
        "the status to show no address",
        secs(3),
        || entry(&fx.status(), "st.test:443").addresses.is_empty(),
        || format!("{:#?}", fx.status()),
    );

    // DNS back: the address returns (retry backoff is at most 8 s by now).
    dns.signal(libc::SIGCONT);
    fx.wait_present("198.18.9.1", secs(20), &d);
    let s = fx.status();
    assert!(entry(&s, "st.test:443").last_error.is_none(), "{s:#?}");
}

#[test]
fn after_nxdomain_the_address_expires_and_the_name_is_asked_again_after_negative_ttl() {
    let fx = Fixture::new("nxdomain");
    let dns = fx.dnsmasq(1, &[("nx.test", "198.18.7.7")]);
    fx.config(&Cfg {
        grace: "4s",
        resolver: "negative_ttl = \"3s\"\n".into(),
        ..Cfg::default()
    });
    fx.allowlist("nx.test:443\n198.18.7.1\n");
    let d = fx.start();
    fx.wait_present("198.18.7.7", secs(10), &d);

    dns.set_records(&[]);
    let gone = Instant::now();
    // Allowed until at least the removal - 1 s + 1 s TTL + 4 s grace - 1 s
    // (refresh slack).
    assert_holds(
        "the address, after NXDOMAIN until its grace runs out,",
        gone,
        Duration::from_millis(1500),
        || fx.has("198.18.7.7"),
        || fx.explain(&d),
    );
    fx.wait_absent("198.18.7.7", secs(10), &d);
    assert_eq!(fx.elements(), set(&["198.18.7.1"]));
    // The status follows (the kernel may close up to 1 s of refresh slack
    // before the daemon's own expiry).
    let s = wait_for("the status to show no address", secs(3), || {
        let s = fx.status();
        entry(&s, "nx.test:443").addresses.is_empty().then_some(s)
    });
    let e = entry(&s, "nx.test:443");
    assert!(
        e.last_error.is_none(),
        "NXDOMAIN is an answer, not an error: {e:#?}"
    );
    let next = e.next_refresh_ms.expect("a next refresh");
    assert!(
        next <= 3_000,
        "asked again in {next} ms, negative_ttl is 3 s"
    );

    // The name comes back: asked again within negative_ttl.
    dns.set_records(&[("nx.test", "198.18.7.8".parse().unwrap())]);
    fx.wait_present("198.18.7.8", secs(8), &d);
}

#[test]
fn a_failing_aaaa_query_does_not_close_the_a_address() {
    let fx = Fixture::new("aaaa");
    // Without --local dnsmasq answers A from its hosts file and REFUSES
    // AAAA for the name.
    let dns = fx.logged_dnsmasq(1, &[("v4only.test", "198.18.2.4")], false);
    let refused = fx.ns.run(|| {
        dns_query(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 53)),
            "v4only.test",
            QType::Aaaa,
            Transport::Udp,
            secs(1),
        )
    });
    assert!(
        matches!(&refused, Ok(r) if r.rcode == 5),
        "dnsmasq should refuse AAAA: {refused:?}\n{}",
        dns.log()
    );
    fx.config(&Cfg {
        grace: "2s",
        ..Cfg::default()
    });
    fx.allowlist("v4only.test:443\n");
    let d = fx.start();
    fx.wait_present("198.18.2.4", secs(10), &d);
    let s = wait_for("the AAAA error in status", secs(10), || {
        let s = fx.status();
        entry(&s, "v4only.test:443")
            .last_error
            .is_some()
            .then_some(s)
    });
    let e = entry(&s, "v4only.test:443");
    let err = e.last_error.as_deref().unwrap();
    assert!(
        err.starts_with("AAAA:") && !err.contains("; A:") && !err.starts_with("A:"),
        "only AAAA fails: {err}"
    );
    assert_eq!(addresses(e), set(&["198.18.2.4"]), "{e:#?}");
    // Well past TTL + grace, the A address stays.
    assert_holds(
        "the A address, well past TTL + grace,",
        Instant::now(),
        secs(4),
        || fx.has("198.18.2.4"),
        || fx.explain(&d),
    );
    assert!(dns.queries("A", "v4only.test") >= 3, "{}", dns.log());
    let human = String::from_utf8_lossy(&fx.status_cmd(false).stdout).into_owned();
    assert!(human.contains("1 errors"), "{human}");
}

#[test]
fn a_burst_of_a_thousand_sighups_is_survived_and_coalesced() {
    let fx = Fixture::new("hupburst");
    let dns = fx.dnsmasq(3600, &[("h.test", "198.18.13.1")]);
    fx.config(&Cfg {
        resolver: "max_ttl = \"2h\"\n".into(),
        ..Cfg::default()
    });
    fx.allowlist("h.test:443\n198.18.13.100\n");
    let mut d = fx.start();
    fx.wait_status(&mut d);
    fx.wait_elements(&set(&["198.18.13.1", "198.18.13.100"]), secs(10), &d);

    // New records and a new allowlist; only a re-query (TTL 3600 s) can see
    // the new address.
    dns.set_records(&[
        ("h.test", "198.18.13.2".parse().unwrap()),
        ("g.test", "198.18.13.3".parse().unwrap()),
    ]);
    fx.allowlist("h.test:443\ng.test\n198.18.13.101\n");
    let pid = d.pid();
    for _ in 0..1000 {
        // SAFETY: plain syscall; the daemon is our unreaped child.
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }
    let t = Instant::now();
    let s = fx.wait_status(&mut d);
    assert!(
        t.elapsed() < secs(10),
        "status took {:?} after the burst",
        t.elapsed()
    );
    assert!(d.is_running(), "the daemon died:\n{}", d.log());
    // The old address stays (grace after its last answer, TTL 3600 s).
    fx.wait_elements(
        &set(&["198.18.13.1", "198.18.13.2", "198.18.13.3", "198.18.13.101"]),
        secs(10),
        &d,
    );
    let s2 = fx.status();
    assert!(s2.config_error.is_none(), "{s:#?}");
    assert_eq!(s2.entry_count, 3);
    let reloads = d.log().matches("SIGHUP: reloading").count();
    assert!(
        (1..1000).contains(&reloads),
        "{reloads} reloads for 1000 SIGHUPs: a burst must coalesce"
    );
    assert!(d.is_running());
}

#[test]
fn a_hundred_rapid_edits_end_in_exactly_the_last_file() {
    let fx = Fixture::new("rapid");
    let _dns = fx.dnsmasq(1, &[("r.test", "198.18.12.1")]);
    fx.config(&Cfg::default());
    fx.allowlist("r.test:443\n");
    let mut d = fx.start();
    fx.wait_status(&mut d);
    fx.wait_present("198.18.12.1", secs(10), &d);
    let text = |i: u32| {
        format!(
            "r.test:443\n198.18.10.{}\n198.18.11.{}:443\n",
            i + 1,
            (i * 7) % 250 + 1
        )
    };
    for i in 0..100 {
        if i % 2 == 0 {
            std::fs::write(fx.allowlist_path(), text(i)).unwrap();
        } else {
            fx.allowlist(&text(i));
        }
    }
    let want = set(&["198.18.12.1", "198.18.10.100", "198.18.11.194"]);
    fx.wait_elements(&want, secs(10), &d);
    // And it stays so (no late reload of an older version).
    std::thread::sleep(secs(1));
    assert_eq!(fx.elements(), want);
    let s = fx.status();
    let texts: Vec<&str> = s.entries.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(
        texts,
        vec!["r.test:443", "198.18.10.100", "198.18.11.194:443"]
    );
    assert!(s.config_error.is_none());
}

/// `openclaw-egress allow` / `remove` without `--apply`: the running
/// daemon picks the edit up through its file watcher.
#[test]
fn allow_and_remove_reach_a_running_daemon_through_its_watcher() {
    let fx = Fixture::new("allow");
    fx.config(&Cfg::default());
    fx.allowlist("# agents' API\n198.18.13.1:443\n");
    let mut d = fx.start();
    fx.wait_status(&mut d);
    fx.wait_elements(&set(&["198.18.13.1"]), secs(10), &d);
    let edit = |args: &[&str]| {
        let out = Command::new(cli_bin())
            .arg("--config")
            .arg(fx.config_path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openclaw-egress {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    edit(&["allow", "198.18.13.2:443", "--comment", "second"]);
    fx.wait_elements(&set(&["198.18.13.1", "198.18.13.2"]), secs(5), &d);
    edit(&["remove", "198.18.13.1:443"]);
    fx.wait_elements(&set(&["198.18.13.2"]), secs(5), &d);
    assert_eq!(
        std::fs::read_to_string(fx.allowlist_path()).unwrap(),
        "# agents' API\n198.18.13.2:443  # second\n"
    );
    assert!(fx.status().config_error.is_none());
}

#[test]
fn after_kill_9_the_rules_stay_and_a_restart_takes_over() {
    let fx = Fixture::new("kill9");
    let _dns = fx.dnsmasq(1, &[("k.test", "198.18.14.1")]);
    fx.config(&Cfg {
        grace: "4s",
        ..Cfg::default()
    });
    fx.allowlist("k.test:443\n198.18.14.2\n");
    let mut d = fx.start();
    fx.wait_status(&mut d);
    let both = set(&["198.18.14.1", "198.18.14.2"]);
    fx.wait_elements(&both, secs(10), &d);
    d.signal(libc::SIGKILL);
    assert!(d.wait_exit(secs(5)).is_some());
    // Right after: everything is in place.
    assert_eq!(fx.elements(), both, "{}", fx.explain(&d));
    let listing = fx.listing().unwrap();
    assert!(listing.contains("jump egress"), "{listing}");
    // The kernel's timeout closes the hostname's address (TTL + grace), the
    // literal one stays, and so do the rules.
    fx.wait_absent("198.18.14.1", secs(10), &d);
    assert_eq!(fx.elements(), set(&["198.18.14.2"]));
    assert!(fx.listing().unwrap().contains("jump egress"));
    // A new daemon takes over the live table.
    drop(d);
    let mut d = fx.start();
    fx.wait_status(&mut d);
    fx.wait_elements(&both, secs(10), &d);
}

#[test]
fn a_table_flushed_or_edited_by_someone_else_is_restored() {
    let fx = Fixture::new("drift");
    let _dns = fx.dnsmasq(1, &[("f.test", "198.18.15.1")]);
    fx.config(&Cfg {
        grace: "3s",
        ..Cfg::default()
    });
    fx.allowlist("f.test:443\n198.18.15.2\n198.18.15.3\n");
    let mut d = fx.start();
    fx.wait_status(&mut d);
    let want = set(&["198.18.15.1", "198.18.15.2", "198.18.15.3"]);
    fx.wait_elements(&want, secs(10), &d);

    fx.ns.exec_ok(["nft", "flush", "ruleset"]);
    fx.wait_elements(&want, secs(5), &d);
    fx.ns.exec_ok(["nft", "delete", "table", "inet", &fx.table]);
    fx.wait_elements(&want, secs(5), &d);
    assert!(fx.listing().unwrap().contains("jump egress"));
    let t = fx.table.clone();
    fx.ns.exec_ok([
        "nft",
        "delete",
        "element",
        "inet",
        &t,
        "allow_all_ports_v4",
        "{ 198.18.15.2 }",
    ]);
    fx.wait_elements(&want, secs(5), &d);
    fx.ns.exec_ok([
        "nft",
        "add",
        "element",
        "inet",
        &t,
        "allow_all_ports_v4",
        "{ 198.18.15.99 }",
    ]);
    fx.wait_elements(&want, secs(5), &d);
    assert!(d.is_running());
}

#[test]
fn the_sd_notify_protocol_ready_status_watchdog_reloading_stopping() {
    let fx = Fixture::new("notify");
    let _dns = fx.dnsmasq(1, &[("n.test", "198.18.16.1")]);
    fx.config(&Cfg::default());
    fx.allowlist("n.test:443\n198.18.16.2\n");
    let notify = NotifySocket::bind(fx.dir.join("notify.sock"));
    let sock = notify.path().to_str().unwrap().to_string();
    let mut d = fx.start_with(
        &[],
        &[("NOTIFY_SOCKET", &sock), ("WATCHDOG_USEC", "400000")],
    );
    wait_until(
        "READY=1",
        secs(10),
        || !notify.with_line("READY=1").is_empty(),
        || format!("{}\n{}", notify.dump(), d.log()),
    );
    assert_eq!(fx.elements(), set(&["198.18.16.1", "198.18.16.2"]));

    // STATUS= summaries.
    let statuses: Vec<String> = notify
        .all()
        .iter()
        .flat_map(|(_, m)| m.lines().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|l| l.strip_prefix("STATUS=").map(str::to_string))
        .collect();
    assert!(!statuses.is_empty(), "no STATUS=:\n{}", notify.dump());
    for s in &statuses {
        assert!(is_summary(s), "STATUS={s:?} is not a summary");
    }
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("2 entries, 2 addresses, ")),
        "{statuses:?}"
    );

    // WATCHDOG=1 every WATCHDOG_USEC / 2 (200 ms): about 15 in 3 s.
    let from = Instant::now();
    std::thread::sleep(secs(3));
    let pings = notify
        .with_line("WATCHDOG=1")
        .iter()
        .filter(|(t, _)| *t >= from)
        .count();
    assert!(
        (7..=30).contains(&pings),
        "{pings} WATCHDOG=1 in 3 s with WATCHDOG_USEC=400000"
    );

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC in the same message, then READY=1.
    let before = notify.all().len();
    d.signal(libc::SIGHUP);
    wait_until(
        "RELOADING=1 then READY=1 after SIGHUP",
        secs(5),
        || {
            let new: Vec<String> = notify.all()[before..]
                .iter()
                .map(|(_, m)| m.clone())
                .collect();
            let r = new
                .iter()
                .position(|m| m.lines().any(|l| l == "RELOADING=1"));
            r.is_some_and(|r| {
                new[r + 1..]
                    .iter()
                    .any(|m| m.lines().any(|l| l == "READY=1"))
            })
        },
        || notify.dump(),
    );
    let reloading = notify.with_line("RELOADING=1");
    let msg = &reloading.last().unwrap().1;
    let usec: u64 = msg
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC= with RELOADING=1: {msg:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("MONOTONIC_USEC is not a number ({e}): {msg:?}"));
    let now = monotonic_usec();
    assert!(
        usec <= now && now - usec < 10_000_000,
        "MONOTONIC_USEC={usec} is not CLOCK_MONOTONIC (now {now})"
    );

    // SIGTERM: STOPPING=1, exit 0, the rules stay.
    d.signal(libc::SIGTERM);
    let st = d
        .wait_exit(secs(10))
        .unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", d.log()));
    assert_eq!(st.code(), Some(0), "{}", d.log());
    wait_until(
        "STOPPING=1",
        secs(2),
        || !notify.with_line("STOPPING=1").is_empty(),
        || notify.dump(),
    );
    assert_eq!(fx.elements(), set(&["198.18.16.1", "198.18.16.2"]));
    assert!(fx.listing().unwrap().contains("jump egress"));
    assert!(
        !fx.dir.join("control.sock").exists(),
        "the control socket was left behind"
    );

    // With --flush-on-exit the table goes.
    let mut d = fx.start_with(&["--flush-on-exit"], &[]);
    fx.wait_status(&mut d);
    fx.wait_elements(&set(&["198.18.16.1", "198.18.16.2"]), secs(10), &d);
    d.signal(libc::SIGTERM);
    let st = d
        .wait_exit(secs(10))
        .unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", d.log()));
    assert_eq!(st.code(), Some(0), "{}", d.log());
    assert!(!fx.table_exists(), "--flush-on-exit left the table");
}

#[test]
fn sigusr1_logs_a_state_dump() {
    let fx = Fixture::new("usr1");
    let _dns = fx.dnsmasq(1, &[("u.test", "198.18.17.1")]);
    fx.config(&Cfg::default());
    fx.allowlist("u.test:443\n");
    let mut d = fx.start();
    fx.wait_status(&mut d);
    fx.wait_present("198.18.17.1", secs(10), &d);
    assert!(!d.log().contains("state dump"));
    d.signal(libc::SIGUSR1);
    let line = wait_for("the state dump in the log", secs(5), || {
        d.log()
            .lines()
            .find(|l| l.contains("state dump"))
            .map(str::to_string)
    });
    for want in [
        format!("\"table\":\"{}\"", fx.table),
        "\"host\":\"u.test\"".to_string(),
        "198.18.17.1".to_string(),
    ] {
        assert!(line.contains(&want), "{want} missing from: {line}");
    }
    assert!(d.is_running());
    fx.status();
}

// ------------------------------------------------- the pf backend, simulated
//
// The macOS path on Linux: the daemon (a debug build) drives the pf backend
// with `pfctl` and `ifconfig` being itself acting as `FakePf`, whose state
// is a JSON file the test reads and edits (see crates/firewall/src/sim.rs).
// What this proves is the daemon's side of pf: what it asks of pfctl and
// when. Whether a real pfctl accepts it is for a Mac (docs/macos.md).

use egress_firewall::pf::testing::FakePf;
use egress_firewall::sim as pf_sim;

/// A simulated Mac: the fake's programs, pf.conf and state.
struct PfSim {
    dir: PathBuf,
    anchor: String,
}

impl PfSim {
    /// Sets up `fx` for pf: a Mac whose bridge is `bridge100`, with
    /// Apple's pf.conf, pf disabled.
    fn new(fx: &mut Fixture) -> PfSim {
        fx.iface = "bridge100".into();
        let dir = fx.dir.join("pf");
        pf_sim::install(&dir, Path::new(DAEMON), &["lo0", "en0", "bridge100"])
            .expect("set up the simulated Mac");
        PfSim {
            anchor: egress_core::config::pf_anchor_name(&fx.table),
            dir,
        }
    }

    fn state_file(&self) -> PathBuf {
        pf_sim::state_file(&self.dir)
    }

    /// Changes the fake's state as someone else on the Mac would.
    fn edit(&self, f: impl FnOnce(&mut FakePf)) {
        FakePf::with_state(&self.state_file(), f).expect("the fake pf's state");
    }

    fn state(&self) -> FakePf {
        FakePf::with_state(&self.state_file(), |f| f.clone()).expect("the fake pf's state")
    }

    /// Every address in the anchor's tables.
    fn addrs(&self) -> BTreeSet<String> {
        self.state()
            .anchors
            .get(&self.anchor)
            .map(|a| a.tables.values().flatten().cloned().collect())
            .unwrap_or_default()
    }

    fn start(&self, fx: &Fixture, poll_ms: u64, args: &[&str]) -> Daemon {
        let dir = self.dir.display().to_string();
        let poll = poll_ms.to_string();
        fx.start_with(args, &[(pf_sim::ENV, &dir), (pf_sim::POLL_ENV, &poll)])
    }

    #[track_caller]
    fn wait_addrs(&self, want: &BTreeSet<String>, limit: Duration, d: &Daemon) {
        wait_until(
            &format!("the pf anchor's tables to hold exactly {want:?}"),
            limit,
            || &self.addrs() == want,
            || format!("now: {:#?}\ndaemon log:\n{}", self.state(), d.log()),
        );
    }
}

#[test]
fn pf_an_address_leaves_the_tables_when_it_expires_without_any_query_or_poll() {
    let mut fx = Fixture::new("pf-expiry");
    let sim = PfSim::new(&mut fx);
    let dns = fx.dnsmasq(1, &[("px.test", "198.18.21.1")]);
    fx.config(&Cfg {
        grace: "2s",
        timeout: "500ms",
        resolver: "serve_stale = \"0s\"\n".into(),
    });
    fx.allowlist("px.test:443\n198.18.21.9:8443\n");
    // Polling once a minute: within this test only the expiry wakes an apply.
    let mut d = sim.start(&fx, 60_000, &[]);
    sim.wait_addrs(&set(&["198.18.21.1", "198.18.21.9"]), secs(10), &d);

    // The first apply: pf.conf references the anchor, pf is enabled with a
    // token of ours, the rules are loaded with their labels.
    let st = sim.state();
    assert!(st.enabled, "{st:#?}");
    assert_eq!(st.tokens.len(), 1, "{st:#?}");
    assert!(st.main_anchors.contains(&sim.anchor), "{st:#?}");
    let rules = &st.anchors[&sim.anchor].rules;
    assert!(
        rules.iter().any(|r| r.contains("on bridge100")),
        "{rules:#?}"
    );
    let conf = std::fs::read_to_string(sim.dir.join("pf.conf")).unwrap();
    assert!(
        conf.contains(&format!("anchor \"{}\"", sim.anchor)),
        "{conf}"
    );
    let s = fx.wait_status(&mut d);
    assert_eq!(s.table, fx.table);
    assert_eq!(s.firewall, format!("pf anchor {}", sim.anchor));

    // Rotation: the new address comes in, the old one leaves.
    dns.set_records(&[("px.test", "198.18.21.2".parse().unwrap())]);
    sim.wait_addrs(&set(&["198.18.21.2", "198.18.21.9"]), secs(10), &d);

    // DNS stops answering: no answer, nothing refreshed, no poll for a
    // minute. pf tables have no timeouts, so only the daemon's apply at the
    // address's expiry (last answer + 1 s TTL + 2 s grace) removes it.
    dns.signal(libc::SIGSTOP);
    let down = Instant::now();
    std::thread::sleep(Duration::from_millis(900));
    assert!(
        sim.addrs().contains("198.18.21.2"),
        "gone before its expiry:\n{}",
        d.log()
    );
    sim.wait_addrs(&set(&["198.18.21.9"]), secs(8), &d);
    let took = down.elapsed();
    eprintln!("pf: the address left the tables {took:?} after DNS stopped answering");
    dns.signal(libc::SIGCONT);
    assert!(d.is_running());
}

#[test]
fn pf_changes_made_by_others_are_repaired_by_the_poll_and_flush_on_exit_releases_pf() {
    let mut fx = Fixture::new("pf-drift");
    let sim = PfSim::new(&mut fx);
    fx.config(&Cfg::default());
    // Addresses only: no DNS answers, so no apply but the poll's.
    fx.allowlist("198.18.22.1:443\n198.18.22.9\n");
    let mut d = sim.start(&fx, 300, &["--flush-on-exit"]);
    let want = set(&["198.18.22.1", "198.18.22.9"]);
    sim.wait_addrs(&want, secs(10), &d);
    fx.wait_status(&mut d);
    let anchor = sim.anchor.clone();

    // The anchor flushed by hand (`pfctl -a A -F all`).
    sim.edit(|f| {
        f.anchors.remove(&anchor);
    });
    sim.wait_addrs(&want, secs(5), &d);
    assert!(!sim.state().anchors[&anchor].rules.is_empty());

    // A table edited by hand: one address removed, a foreign one added.
    sim.edit(|f| {
        for t in f.anchors.get_mut(&anchor).unwrap().tables.values_mut() {
            if t.remove("198.18.22.9") {
                t.insert("198.18.22.99".into());
            }
        }
    });
    sim.wait_addrs(&want, secs(5), &d);

    // pf switched off by someone else (`pfctl -d` drops every reference).
    sim.edit(|f| {
        f.enabled = false;
        f.tokens.clear();
    });
    wait_until(
        "pf enabled again with a token of ours",
        secs(5),
        || {
            let s = sim.state();
            s.enabled && s.tokens.len() == 1
        },
        || format!("{:#?}\n{}", sim.state(), d.log()),
    );

    // SIGTERM with --flush-on-exit: the anchor is emptied and exactly our
    // reference released, so pf goes off again (nobody else holds one).
    d.signal(libc::SIGTERM);
    let st = d
        .wait_exit(secs(10))
        .unwrap_or_else(|| panic!("no exit on SIGTERM:\n{}", d.log()));
    assert!(st.success(), "{st:?}\n{}", d.log());
    let s = sim.state();
    assert!(!s.anchors.contains_key(&anchor), "{s:#?}");
    assert!(s.tokens.is_empty() && !s.enabled, "{s:#?}");
}
