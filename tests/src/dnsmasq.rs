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
            "--local=/test/".into(),
            format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        ];
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

    /// What dnsmasq printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
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
