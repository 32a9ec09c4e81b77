//! Figure 2: new TCP connections per second from a client namespace through
//! the filtering (router) namespace to a server namespace, with no filter,
//! with our sets, and with the scripts' one-rule-per-address chain.
//!
//! Only the first packet of a connection (the SYN) walks the filter chain;
//! everything after it is accepted by the conntrack rule at the top. So the
//! load is many short connections: connect, then close with an RST
//! (`SO_LINGER` 0), which also keeps the client's ports out of TIME_WAIT.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use testkit::{TempDir, Topology, SERVER_V4};

use crate::scripts;
use crate::util::{ms, nth_addr, timed, Bins, ConfigSpec};

const TABLE: &str = "openclaw_egress";
const INGRESS: &str = "oc-dp0";
const PORT: u16 = 8080;
/// Filler addresses for the allowlist, clear of the topology's 198.18.0/24
/// and 198.18.1/24.
const FILL: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);

/// Which filter the router runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Filter {
    /// No table at all (no conntrack either).
    None,
    /// `openclaw-egress apply` with this many entries besides the server.
    Ours(usize),
    /// The scripts' chain with this many rules besides the server's.
    Scripts(usize),
}

impl Filter {
    /// A label for tables and plots.
    pub fn label(self) -> String {
        match self {
            Filter::None => "no filter".into(),
            Filter::Ours(n) => format!("ours, {n} entries"),
            Filter::Scripts(n) => format!("scripts, {n} rules"),
        }
    }
}

/// Connection rates of one filter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataplaneResult {
    /// The filter.
    pub filter: Filter,
    /// New connections per second, one value per run.
    pub cps: Vec<f64>,
}

/// Settings of the load.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Client threads, each with one connection attempt at a time.
    pub clients: usize,
    /// Time before counting starts.
    pub warmup: Duration,
    /// Time counted.
    pub measure: Duration,
}

/// The allowlist entries: `n` fillers with the server in the middle (on
/// average a connection's address sits in the middle of the scripts'
/// chain; the first entry would be their best case, the last their worst).
fn entries(n: usize) -> Vec<(Ipv4Addr, u16)> {
    let mut e: Vec<(Ipv4Addr, u16)> = (0..n).map(|i| (nth_addr(FILL, i), 443)).collect();
    e.insert(n / 2, (SERVER_V4[0], PORT));
    e
}

fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is an open socket owned by `s`; the option value is a
    // `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Connects once to `to`; true when the handshake completed.
fn connect_once(to: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
        Ok(s) => {
            set_linger_zero(&s);
            true
        }
        Err(_) => false,
    }
}

/// Runs the load from the client namespace; connections per second.
fn measure(topo: &Topology, load: Load) -> Result<f64> {
    let to = SocketAddr::new(IpAddr::V4(SERVER_V4[0]), PORT);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let rate = topo.client.run(|| {
        std::thread::scope(|s| {
            for _ in 0..load.clients {
                // Threads spawned here inherit the client namespace.
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        if connect_once(to) {
                            done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            std::thread::sleep(load.warmup);
            let (c0, t0) = (done.load(Ordering::Relaxed), Instant::now());
            std::thread::sleep(load.measure);
            let (c1, t1) = (done.load(Ordering::Relaxed), Instant::now());
            stop.store(true, Ordering::Relaxed);
            (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
        })
    });
    let (f, d) = (failed.load(Ordering::Relaxed), done.load(Ordering::Relaxed));
    // A few time-outs under overload are possible (a dropped SYN is only
    // sent again after 1 s); many mean the filter or the topology is wrong.
    if f * 100 > d {
        bail!("{f} of {} connections failed during the load", f + d);
    }
    Ok(rate)
}

/// Whether a connection to a port the filter does not allow gets through.
fn blocked_port_open(topo: &Topology) -> bool {
    let to = SocketAddr::new(IpAddr::V4(SERVER_V4[1]), PORT);
    topo.client.run(|| connect_once(to))
}

fn load_filter(topo: &Topology, bins: &Bins, dir: &TempDir, f: Filter) -> Result<()> {
    timed(&topo.router, &["nft", "flush", "ruleset"])?;
    match f {
        Filter::None => {}
        Filter::Ours(n) => {
            let allow = dir.write("allowlist.conf", &scripts::allowlist(&entries(n)));
            let conf = dir.write(
                "egressd.toml",
                &ConfigSpec {
                    allowlist: &allow,
                    interface: INGRESS,
                    table: TABLE,
                    server: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    socket: None,
                    resolver_extra: "",
                }
                .text(),
            );
            let cli = bins.cli.to_str().context("binary path")?;
            timed(
                &topo.router,
                &[cli, "--config", conf.to_str().context("path")?, "apply"],
            )?;
        }
        Filter::Scripts(n) => {
            let text = scripts::scripts_ruleset(TABLE, INGRESS, &entries(n));
            let file = dir.write("scripts.nft", &text);
            timed(&topo.router, &["nft", "-f", file.to_str().context("path")?])?;
        }
    }
    // The filter must really be in the path: .11 is not allowed.
    let open = blocked_port_open(topo);
    if open != (f == Filter::None) {
        bail!(
            "{}: a connection to a port the filter does not allow {}",
            f.label(),
            if open { "got through" } else { "was blocked" }
        );
    }
    Ok(())
}

/// Runs figure 2: every filter in `filters`, `runs` times, interleaved.
pub fn run(
    bins: &Bins,
    filters: &[Filter],
    runs: usize,
    load: Load,
) -> Result<Vec<DataplaneResult>> {
    eprintln!(
        "dataplane: {} filters x {runs} runs x {:.1} s",
        filters.len(),
        load.measure.as_secs_f64()
    );
    let topo = Topology::builder().ingress(INGRESS).tag("dp").build();
    // Room for many connections in flight and in the accept queue.
    topo.server.sysctl(&[("net.core.somaxconn", "4096")]);
    topo.client
        .sysctl(&[("net.ipv4.ip_local_port_range", "10000 65000")]);
    let dir = TempDir::new("dp");
    let listener: TcpListener = topo
        .server
        .run(|| TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT)))?;
    // std listens with a backlog of 128; a burst of SYNs beyond it is
    // dropped and retried a second later. Listening again raises it.
    // SAFETY: plain syscall on the listener's open fd.
    if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
        bail!("listen: {}", std::io::Error::last_os_error());
    }
    let listener = Arc::new(listener);
    let servers: Vec<_> = (0..2)
        .map(|_| {
            let l = Arc::clone(&listener);
            std::thread::spawn(move || {
                // Ends when the listener is shut down below.
                while let Ok((s, _)) = l.accept() {
                    drop(s);
                }
            })
        })
        .collect();
    let mut out: Vec<DataplaneResult> = filters
        .iter()
        .map(|&filter| DataplaneResult {
            filter,
            cps: Vec::new(),
        })
        .collect();
    let result = (|| -> Result<()> {
        for r in 0..runs {
            for k in 0..filters.len() {
                let i = (r + k) % filters.len();
                let t0 = Instant::now();
                load_filter(&topo, bins, &dir, filters[i])?;
                let rate = measure(&topo, load)?;
                eprintln!(
                    "  run {r} {:<22} {rate:>8.0} conn/s (load {:.0} ms)",
                    filters[i].label(),
                    ms(t0.elapsed()) - ms(load.warmup + load.measure)
                );
                out[i].cps.push(rate);
            }
        }
        Ok(())
    })();
    // SAFETY: plain syscall on the listener's open fd; it makes the blocked
    // accept() calls return, so the server threads end.
    unsafe {
        libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR);
    }
    for s in servers {
        let _ = s.join();
    }
    result?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_sits_in_the_middle() {
        let e = entries(10);
        assert_eq!(e.len(), 11);
        assert_eq!(e[5], (SERVER_V4[0], PORT));
        assert_eq!(entries(0), vec![(SERVER_V4[0], PORT)]);
    }
}
