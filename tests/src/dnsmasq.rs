//! dnsmasq as the DNS server of a test, inside a namespace.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::dns::{self, QType};
use crate::netns::{Netns, NsChild};
use crate::servers::Transport;
use crate::tempdir::TempDir;

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// Where [`Dnsmasq::start_logged`] has dnsmasq log (queries included).
const QUERY_LOG: &str = "queries.log";

/// A dnsmasq (`/usr/sbin/dnsmasq`, Debian package dnsmasq-base) serving
/// records from an addn-hosts file, authoritative for `.test` (unknown
/// names there get NXDOMAIN; nothing is forwarded anywhere). Killed on drop.
pub struct Dnsmasq<'a> {
    ns: &'a Netns,
    child: Mutex<NsChild<'a>>,
    dir: TempDir,
    listen: Vec<IpAddr>,
}

fn hosts_text(records: &[(&str, IpAddr)]) -> String {
    records.iter().map(|(n, a)| format!("{a} {n}\n")).collect()
}

impl<'a> Dnsmasq<'a> {
    /// Starts dnsmasq in `ns` on port 53 of `listen` (addresses that exist
    /// in `ns`), answering `records` (`name -> address`, a name may appear
    /// several times) with TTL `ttl` seconds. Returns once it answers.
    pub fn start(
        ns: &'a Netns,
        listen: &[IpAddr],
        ttl: u32,
        records: &[(&str, IpAddr)],
    ) -> Dnsmasq<'a> {
        Self::launch(ns, listen, ttl, records, true, false)
    }

    /// Like [`Dnsmasq::start`], but logging every query it gets (counted
    /// by [`Dnsmasq::queries`]), and, unless `authoritative`, without
    /// `--local=/test/`: then a name without a record of the asked type is
    /// REFUSED (nothing to forward to) rather than answered empty.
    pub fn start_logged(
        ns: &'a Netns,
        listen: &[IpAddr],
        ttl: u32,
        records: &[(&str, IpAddr)],
        authoritative: bool,
    ) -> Dnsmasq<'a> {
        Self::launch(ns, listen, ttl, records, authoritative, true)
    }

    fn launch(
        ns: &'a Netns,
        listen: &[IpAddr],
        ttl: u32,
        records: &[(&str, IpAddr)],
        authoritative: bool,
        log_queries: bool,
    ) -> Dnsmasq<'a> {
        assert!(!listen.is_empty(), "dnsmasq needs a listen address");
        let dir = TempDir::new("dnsmasq");
        let hosts = dir.write("hosts", &hosts_text(records));
        let log = dir.join("dnsmasq.log");
        let mut args: Vec<String> = vec![
            DNSMASQ.into(),
            "--no-daemon".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--port=53".into(),
            "--bind-interfaces".into(),
            format!("--local-ttl={ttl}"),
            format!("--addn-hosts={}", hosts.display()),
            format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        ];
        if authoritative {
            args.push("--local=/test/".into());
        }
        if log_queries {
            args.push("--log-queries".into());
            args.push(format!("--log-facility={}", dir.join(QUERY_LOG).display()));
        }
        args.extend(listen.iter().map(|a| format!("--listen-address={a}")));
        let child = ns.spawn(&args, Some(&log));
        let d = Dnsmasq {
            ns,
            child: Mutex::new(child),
            dir,
            listen: listen.to_vec(),
        };
        d.wait_until(|| {
            // Any answer (NXDOMAIN for this name) means it is serving.
            d.query_first("ready.testkit.test", QType::A).is_ok()
        });
        for (name, addr) in records {
            d.wait_until(|| d.resolves(name, *addr));
        }
        d
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().pid()
    }

    /// Sends `signal` to dnsmasq (e.g. `libc::SIGSTOP` to make it stop
    /// answering, `libc::SIGCONT` to resume); panics if it is gone.
    pub fn signal(&self, signal: i32) {
        self.child.lock().unwrap().signal(signal);
    }

    /// What dnsmasq printed and logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.join(QUERY_LOG)).unwrap_or_default()
    }

    /// How many `qtype` (`"A"`, `"AAAA"`) queries for `name` dnsmasq got so
    /// far; only a [`Dnsmasq::start_logged`] one logs them.
    pub fn queries(&self, qtype: &str, name: &str) -> usize {
        let needle = format!("query[{qtype}] {name} ");
        std::fs::read_to_string(self.dir.join(QUERY_LOG))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// The addn-hosts file.
    pub fn hosts_file(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    /// Replaces every record, makes dnsmasq re-read them (SIGHUP), and
    /// returns once each new record is served.
    pub fn set_records(&self, records: &[(&str, IpAddr)]) {
        self.dir.write("hosts", &hosts_text(records));
        self.child.lock().unwrap().signal(libc::SIGHUP);
        for (name, addr) in records {
            self.wait_until(|| self.resolves(name, *addr));
        }
    }

    fn query_first(&self, name: &str, qtype: QType) -> Result<dns::DnsReply, crate::Probe> {
        let server = SocketAddr::new(self.listen[0], 53);
        self.ns.run(|| {
            dns::query(
                server,
                name,
                qtype,
                Transport::Udp,
                Duration::from_millis(300),
            )
        })
    }

    fn resolves(&self, name: &str, addr: IpAddr) -> bool {
        let qtype = if addr.is_ipv4() {
            QType::A
        } else {
            QType::Aaaa
        };
        matches!(self.query_first(name, qtype), Ok(r) if r.addrs.contains(&addr))
    }

    fn wait_until(&self, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if ok() {
                return;
            }
            let running = self.child.lock().unwrap().is_running();
            if !running || Instant::now() > deadline {
                panic!(
                    "dnsmasq in {} is {} and not serving as expected; its log:\n{}",
                    self.ns.name(),
                    if running { "running" } else { "gone" },
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
