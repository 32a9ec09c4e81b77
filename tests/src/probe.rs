//! Probes: does a TCP connection, a UDP round trip or a DNS query get
//! through, and if not, how does it fail?

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::dns::{self, QType};
use crate::netns::{enter, Netns};
use crate::servers::Transport;
use crate::topology::Topology;

/// Timeout for probes that are expected to be blocked (or to time out
/// under `action = "drop"`): short, so the suite stays fast.
pub const BLOCKED_TIMEOUT: Duration = Duration::from_secs(1);

/// Timeout [`Netns::expect`] gives probes that are expected to end some
/// other way than by timing out.
pub const PATIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// TCP: the handshake completed.
    Connected,
    /// UDP: the echo came back (or, for DNS, a DNS response arrived).
    Answered,
    /// TCP: a reset came back (ECONNREFUSED): a closed port, or the
    /// firewall's `reject with tcp reset`.
    Refused,
    /// An ICMP error came back, as this errno (see [`crate::errno`]): for
    /// UDP, ECONNREFUSED is a port unreachable; EHOSTUNREACH (IPv4) and
    /// EACCES (IPv6) are what the firewall's admin-prohibited reject gives.
    Unreachable(i32),
    /// Nothing came back in time (a drop).
    TimedOut,
    /// A probe by name never sent a packet: the name did not resolve (no
    /// such name, no address, or no DNS answer at all). Only the busybox
    /// probes run inside containers ([`crate::Container::nc`]) give it.
    NoAddress,
    /// Anything else (a local error), in words.
    Failed(String),
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Unreachable(e) => write!(
                f,
                "Unreachable({})",
                io::Error::from_raw_os_error(*e)
                    .to_string()
                    .split(" (os error")
                    .next()
                    .unwrap_or("?")
            ),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Maps a socket error to a probe outcome.
pub(crate) fn classify(e: io::Error) -> Probe {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Probe::Refused,
        Some(
            n @ (libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EACCES
            | libc::EPERM
            | libc::EPROTO
            | libc::EHOSTDOWN
            | libc::ENONET),
        ) => Probe::Unreachable(n),
        Some(libc::ETIMEDOUT) | Some(libc::EAGAIN) => Probe::TimedOut,
        _ if matches!(
            e.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        ) =>
        {
            Probe::TimedOut
        }
        _ => Probe::Failed(e.to_string()),
    }
}

/// The network rule of this suite: traffic goes only to loopback or to the
/// test ranges 198.18.0.0/15 and 2001:db8::/32. Panics on anything else.
pub(crate) fn check_target(addr: SocketAddr) {
    let ok = match addr.ip() {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_loopback() || (o[0] == 198 && (o[1] & 0xfe) == 18)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            a.is_loopback() || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    };
    assert!(
        ok,
        "refusing to send test traffic to {addr}: only loopback, 198.18.0.0/15 \
         and 2001:db8::/32 are allowed"
    );
}

/// Connects to `addr:port` over TCP from the calling thread's namespace.
pub fn tcp_connect(addr: IpAddr, port: u16, timeout: Duration) -> Probe {
    let sa = SocketAddr::new(addr, port);
    check_target(sa);
    match TcpStream::connect_timeout(&sa, timeout) {
        Ok(_) => Probe::Connected,
        Err(e) => classify(e),
    }
}

/// Sends one datagram to `addr:port` from a connected UDP socket in the
/// calling thread's namespace and waits for the same bytes to come back.
/// An ICMP error surfaces as [`Probe::Unreachable`] (port unreachable as
/// ECONNREFUSED).
pub fn udp_roundtrip(addr: IpAddr, port: u16, timeout: Duration) -> Probe {
    let sa = SocketAddr::new(addr, port);
    check_target(sa);
    let unreachable = |e: io::Error| match classify(e) {
        Probe::Refused => Probe::Unreachable(libc::ECONNREFUSED),
        other => other,
    };
    let bind: SocketAddr = if sa.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let s = match UdpSocket::bind(bind).and_then(|s| s.connect(sa).map(|()| s)) {
        Ok(s) => s,
        Err(e) => return unreachable(e),
    };
    let payload = format!("openclaw-egress probe {sa} {:?}", Instant::now());
    if let Err(e) = s.send(payload.as_bytes()) {
        return unreachable(e);
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Probe::TimedOut;
        }
        if let Err(e) = s.set_read_timeout(Some(left)) {
            return Probe::Failed(e.to_string());
        }
        match s.recv(&mut buf) {
            Ok(n) if &buf[..n] == payload.as_bytes() => return Probe::Answered,
            Ok(_) => continue,
            Err(e) => return unreachable(e),
        }
    }
}

/// What a [`Target`] probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// A TCP connection ([`tcp_connect`]).
    Tcp,
    /// A UDP echo round trip ([`udp_roundtrip`]).
    Udp,
    /// A DNS query for this name (A for an IPv4 server, AAAA for IPv6);
    /// any DNS response counts as [`Probe::Answered`].
    Dns(Transport, String),
}

/// One thing to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// How.
    pub kind: TargetKind,
    /// Where.
    pub addr: SocketAddr,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TargetKind::Tcp => write!(f, "tcp {}", self.addr),
            TargetKind::Udp => write!(f, "udp {}", self.addr),
            TargetKind::Dns(Transport::Udp, n) => write!(f, "dns/udp {} ({n})", self.addr),
            TargetKind::Dns(Transport::Tcp, n) => write!(f, "dns/tcp {} ({n})", self.addr),
        }
    }
}

fn sockaddr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not ADDR:PORT: {e}"))
}

/// A TCP target, `"198.18.1.10:443"` or `"[2001:db8:1::10]:443"`.
pub fn tcp(addr: &str) -> Target {
    Target {
        kind: TargetKind::Tcp,
        addr: sockaddr(addr),
    }
}

/// A UDP echo target.
pub fn udp(addr: &str) -> Target {
    Target {
        kind: TargetKind::Udp,
        addr: sockaddr(addr),
    }
}

/// A DNS query for `name` over UDP to `server` (`ADDR:PORT`).
pub fn dns_udp(server: &str, name: &str) -> Target {
    Target {
        kind: TargetKind::Dns(Transport::Udp, name.to_owned()),
        addr: sockaddr(server),
    }
}

/// A DNS query for `name` over TCP to `server` (`ADDR:PORT`).
pub fn dns_tcp(server: &str, name: &str) -> Target {
    Target {
        kind: TargetKind::Dns(Transport::Tcp, name.to_owned()),
        addr: sockaddr(server),
    }
}

/// Probes `target` from the calling thread's namespace.
pub fn run_probe(target: &Target, timeout: Duration) -> Probe {
    let (ip, port) = (target.addr.ip(), target.addr.port());
    match &target.kind {
        TargetKind::Tcp => tcp_connect(ip, port, timeout),
        TargetKind::Udp => udp_roundtrip(ip, port, timeout),
        TargetKind::Dns(transport, name) => {
            let qtype = if ip.is_ipv4() { QType::A } else { QType::Aaaa };
            match dns::query(target.addr, name, qtype, *transport, timeout) {
                Ok(_) => Probe::Answered,
                Err(Probe::Refused) if *transport == Transport::Udp => {
                    Probe::Unreachable(libc::ECONNREFUSED)
                }
                Err(p) => p,
            }
        }
    }
}

impl Netns {
    /// Probes `target` from inside this namespace.
    pub fn probe(&self, target: &Target, timeout: Duration) -> Probe {
        self.run(|| run_probe(target, timeout))
    }

    /// Probes every target concurrently and panics, with a table of every
    /// probe (mismatches marked), unless each ended as expected.
    ///
    /// `timeout` applies to the probes expected to time out; the others get
    /// at least [`PATIENT_TIMEOUT`], which costs nothing when they end as
    /// expected (at once) and keeps a busy machine or a neighbour lookup
    /// from failing them.
    #[track_caller]
    pub fn expect(&self, cases: &[(Target, Probe)], timeout: Duration) {
        expect_in(
            &self.path(),
            &format!("namespace {}", self.name()),
            cases,
            timeout,
        )
    }
}

/// Probes every target concurrently, each on its own thread inside the
/// network namespace at `path`, each with its own timeout.
pub(crate) fn probe_each_in(path: &Path, targets: &[(&Target, Duration)]) -> Vec<Probe> {
    std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|(t, timeout)| {
                s.spawn(move || {
                    enter(path);
                    run_probe(t, *timeout)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(p) => p,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// [`Netns::expect`] for the network namespace at `path`; `who` names it
/// in the failure message.
#[track_caller]
pub(crate) fn expect_in(path: &Path, who: &str, cases: &[(Target, Probe)], timeout: Duration) {
    let timed: Vec<(&Target, Duration)> = cases
        .iter()
        .map(|(t, want)| match want {
            Probe::TimedOut => (t, timeout),
            _ => (t, timeout.max(PATIENT_TIMEOUT)),
        })
        .collect();
    let got = probe_each_in(path, &timed);
    let mut table = String::new();
    let mut bad = 0;
    for ((t, want), got) in cases.iter().zip(&got) {
        let mark = if want == got { "  " } else { "✗ " };
        if want != got {
            bad += 1;
        }
        table.push_str(&format!(
            "{mark}{:<40} expected {:<24} got {got}\n",
            t.to_string(),
            want.to_string()
        ));
    }
    assert!(
        bad == 0,
        "{bad} of {} probes from {who} ended otherwise than expected:\n{table}",
        cases.len(),
    );
}

impl Topology {
    /// [`tcp_connect`] from the client namespace.
    pub fn tcp_connect(&self, addr: IpAddr, port: u16, timeout: Duration) -> Probe {
        self.client.run(|| tcp_connect(addr, port, timeout))
    }

    /// [`udp_roundtrip`] from the client namespace.
    pub fn udp_roundtrip(&self, addr: IpAddr, port: u16, timeout: Duration) -> Probe {
        self.client.run(|| udp_roundtrip(addr, port, timeout))
    }

    /// [`Netns::expect`] from the client namespace.
    #[track_caller]
    pub fn expect(&self, cases: &[(Target, Probe)], timeout: Duration) {
        self.client.expect(cases, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_test_ranges_and_loopback_are_targets() {
        for ok in [
            "127.0.0.1:1",
            "[::1]:1",
            "198.18.0.1:1",
            "198.19.255.255:1",
            "[2001:db8:ffff::1]:1",
        ] {
            check_target(ok.parse().unwrap());
        }
        for bad in [
            "198.20.0.1:1",
            "198.17.255.255:1",
            "10.0.0.1:1",
            "169.254.169.254:80",
            "[2001:db9::1]:1",
            "[fe80::1]:1",
        ] {
            let r = std::panic::catch_unwind(|| check_target(bad.parse().unwrap()));
            assert!(r.is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn socket_errors_map_to_outcomes() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(classify(e(libc::ECONNREFUSED)), Probe::Refused);
        assert_eq!(
            classify(e(libc::EHOSTUNREACH)),
            Probe::Unreachable(libc::EHOSTUNREACH)
        );
        assert_eq!(classify(e(libc::EACCES)), Probe::Unreachable(libc::EACCES));
        assert_eq!(classify(e(libc::EAGAIN)), Probe::TimedOut);
        assert_eq!(
            classify(io::Error::new(io::ErrorKind::TimedOut, "x")),
            Probe::TimedOut
        );
        assert!(matches!(classify(e(libc::EBADF)), Probe::Failed(_)));
    }
}
