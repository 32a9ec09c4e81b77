//! Running `verify`'s probes inside a network namespace (a container's, or
//! one made for the purpose): a thread joins the namespace and runs every
//! probe there on its own single-threaded runtime, so every socket it opens
//! belongs to that namespace and leaves through the bridge like an agent's.

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use egress_core::config::Config;
use egress_core::verify::{Dest, Probe, ProbeKind, Seen};
use egress_resolve::{Outcome, Resolver, ResolverSettings};
use tokio::net::{TcpStream, UdpSocket};

/// Where the probes run.
pub struct Site {
    /// `/proc/PID/ns/net` or `/run/netns/NAME`.
    pub netns: PathBuf,
    /// The DNS servers the agent there uses.
    pub resolvers: Vec<SocketAddr>,
}

/// Runs `probes` concurrently in `site`, each limited to `timeout`, and
/// returns what each saw, in order.
pub fn run(site: &Site, probes: &[Probe], config: &Config, timeout: Duration) -> Result<Vec<Seen>> {
    let ns = File::open(&site.netns)
        .with_context(|| format!("cannot open network namespace {}", site.netns.display()))?;
    let mut settings = ResolverSettings::from_config(&config.resolver, site.resolvers.clone());
    settings.timeout = timeout;
    settings.attempts = 1;
    let probes = probes.to_vec();
    std::thread::scope(|s| {
        s.spawn(move || -> Result<Vec<Seen>> {
            enter(&ns).with_context(|| format!("cannot enter {}", site.netns.display()))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the probe runtime")?;
            rt.block_on(async {
                let resolver =
                    Resolver::new(settings).context("cannot build the probe resolver")?;
                let futs = probes.iter().map(|p| one(p, &resolver, timeout));
                Ok(futures::future::join_all(futs).await)
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
    })
}

/// Moves the calling thread into the network namespace `ns`.
#[cfg(target_os = "linux")]
fn enter(ns: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a valid, open namespace fd; it affects only this
    // thread, which is used for nothing else.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Network namespaces are Linux's: on a Mac the containers run in a VM (or
/// on a bridge the host can only route to), so there is nothing to enter.
#[cfg(not(target_os = "linux"))]
fn enter(_ns: &File) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "verify runs its probes inside the agent's network namespace, which only Linux has",
    ))
}

async fn one(p: &Probe, resolver: &Resolver, timeout: Duration) -> Seen {
    if let ProbeKind::Resolve { name } = &p.kind {
        return match lookup(resolver, name).await {
            Ok(addrs) => Seen::Resolved(addrs),
            Err(e) => Seen::NoDnsAnswer(e),
        };
    }
    let addr = match &p.dest {
        Dest::Addr(a) => *a,
        Dest::Name(h) => match lookup(resolver, h).await {
            Ok(a) => a[0],
            Err(e) => return Seen::Error(format!("{h} did not resolve: {e}")),
        },
    };
    match &p.kind {
        ProbeKind::Tcp { ports } => {
            let mut last = Seen::Error("no port to try".into());
            for port in ports {
                last = tcp(SocketAddr::new(addr, *port), timeout).await;
                if matches!(last, Seen::Connected(_)) {
                    break;
                }
            }
            last
        }
        ProbeKind::Udp { port } => {
            udp(
                SocketAddr::new(addr, *port),
                b"openclaw-egress verify\n",
                timeout,
            )
            .await
        }
        ProbeKind::Dns { name } => udp(SocketAddr::new(addr, 53), &dns_query(name), timeout).await,
        ProbeKind::Resolve { .. } => unreachable!("handled above"),
    }
}

async fn lookup(resolver: &Resolver, h: &egress_core::HostName) -> Result<Vec<IpAddr>, String> {
    let r = resolver.resolve(h).await;
    let mut addrs: Vec<IpAddr> = r.v4.addrs().to_vec();
    addrs.extend_from_slice(r.v6.addrs());
    if addrs.is_empty() {
        let why = |o: &Outcome| match o {
            Outcome::Answer { .. } => "answer".to_owned(),
            Outcome::NoData => "no records".to_owned(),
            Outcome::NxDomain => "NXDOMAIN".to_owned(),
            Outcome::Failed { reason, .. } => reason.to_string(),
        };
        return Err(format!("A: {}; AAAA: {}", why(&r.v4), why(&r.v6)));
    }
    Ok(addrs)
}

/// What an errno from a socket says about the path.
fn classify(e: &io::Error) -> Seen {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Seen::Refused,
        // Linux maps ICMP admin-prohibited to EHOSTUNREACH (IPv4) and
        // EACCES (IPv6); ENETUNREACH and EHOSTUNREACH also come from the
        // router's "unreachable".
        Some(libc::EHOSTUNREACH) => Seen::Prohibited("host unreachable / admin prohibited".into()),
        Some(libc::EACCES) | Some(libc::EPERM) => Seen::Prohibited("admin prohibited".into()),
        Some(libc::ENETUNREACH) => Seen::Prohibited("network unreachable".into()),
        Some(libc::ETIMEDOUT) => Seen::TimedOut,
        _ => Seen::Error(e.to_string()),
    }
}

async fn tcp(to: SocketAddr, timeout: Duration) -> Seen {
    match tokio::time::timeout(timeout, TcpStream::connect(to)).await {
        Err(_) => Seen::TimedOut,
        Ok(Ok(_)) => Seen::Connected(to.port()),
        Ok(Err(e)) => classify(&e),
    }
}

async fn udp(to: SocketAddr, payload: &[u8], timeout: Duration) -> Seen {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => return Seen::Error(format!("udp socket: {e}")),
    };
    // Connected, so ICMP errors for this destination come back on recv.
    if let Err(e) = sock.connect(to).await {
        return classify(&e);
    }
    if let Err(e) = sock.send(payload).await {
        return classify(&e);
    }
    let mut buf = [0u8; 1500];
    match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
        Err(_) => Seen::TimedOut,
        Ok(Ok(_)) => Seen::Answered,
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Seen::PortUnreachable,
        Ok(Err(e)) => classify(&e),
    }
}

/// A minimal DNS query (one A question, recursion desired).
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x6f, 0x63, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_query_is_well_formed() {
        let q = dns_query("localhost");
        assert_eq!(&q[..12], &[0x6f, 0x63, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&q[12..22], b"\x09localhost");
        assert_eq!(&q[22..], &[0, 0, 1, 0, 1]);
        let q = dns_query("a.example.");
        assert_eq!(&q[12..], b"\x01a\x07example\x00\x00\x01\x00\x01");
    }

    #[test]
    fn errnos_say_what_stopped_the_packet() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(classify(&e(libc::ECONNREFUSED)), Seen::Refused);
        assert!(matches!(
            classify(&e(libc::EHOSTUNREACH)),
            Seen::Prohibited(_)
        ));
        assert!(matches!(classify(&e(libc::EACCES)), Seen::Prohibited(_)));
        assert_eq!(classify(&e(libc::ETIMEDOUT)), Seen::TimedOut);
        assert!(matches!(classify(&e(libc::EINVAL)), Seen::Error(_)));
    }
}
