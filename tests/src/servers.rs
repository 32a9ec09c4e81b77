//! TCP listeners and UDP echo servers inside a namespace.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::netns::{run_in, Netns};
use crate::topology::{OTHER_V4, OTHER_V6, SERVER_V4, SERVER_V6};

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// TCP ports [`Servers::standard`] listens on, on every server address
/// (port 53 only on [`OTHER_V4`] / [`OTHER_V6`], the DNS addresses being
/// left to dnsmasq).
pub const STANDARD_TCP_PORTS: &[u16] = &[22, 80, 443, 5353, 7999, 8000, 8010, 8011, 8080];
/// UDP ports [`Servers::standard`] echoes on, on every server address
/// (port 53 only on [`OTHER_V4`] / [`OTHER_V6`]).
pub const STANDARD_UDP_PORTS: &[u16] = &[443, 5000, 5353, 7999, 8000, 8010, 8011];

enum Sock {
    Tcp(TcpListener, SocketAddr),
    Udp(UdpSocket, SocketAddr),
}

type Hits = Arc<Mutex<HashMap<(Transport, SocketAddr), usize>>>;

/// TCP listeners that accept and write one byte (`!`), and UDP sockets that
/// echo every datagram, all served by one thread; stopped on drop. Counts
/// what reached each socket, so a test can tell "blocked on the way" from
/// "answered".
pub struct Servers {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    hits: Hits,
}

impl Servers {
    /// Binds every address (inside `ns`) and starts serving.
    pub fn start(ns: &Netns, tcp: &[SocketAddr], udp: &[SocketAddr]) -> Servers {
        Servers::start_at(&ns.path(), ns.name(), tcp, udp)
    }

    /// [`Servers::start`] in the network namespace at `path` (e.g. a
    /// container's `/proc/PID/ns/net`); `label` names it in messages.
    pub(crate) fn start_at(
        path: &Path,
        label: &str,
        tcp: &[SocketAddr],
        udp: &[SocketAddr],
    ) -> Servers {
        let socks: Vec<Sock> = run_in(path, label, || {
            let mut v = Vec::new();
            for a in tcp {
                let l =
                    TcpListener::bind(a).unwrap_or_else(|e| panic!("bind tcp {a} in {label}: {e}"));
                l.set_nonblocking(true).expect("nonblocking");
                v.push(Sock::Tcp(l, *a));
            }
            for a in udp {
                let s =
                    UdpSocket::bind(a).unwrap_or_else(|e| panic!("bind udp {a} in {label}: {e}"));
                s.set_nonblocking(true).expect("nonblocking");
                v.push(Sock::Udp(s, *a));
            }
            v
        });
        let stop = Arc::new(AtomicBool::new(false));
        let hits: Hits = Arc::default();
        let thread = {
            let (stop, hits) = (stop.clone(), hits.clone());
            std::thread::Builder::new()
                .name(format!("servers-{label}"))
                .spawn(move || serve(socks, &stop, &hits))
                .expect("spawn server thread")
        };
        Servers {
            stop,
            thread: Some(thread),
            hits,
        }
    }

    /// Every port of [`STANDARD_TCP_PORTS`] / [`STANDARD_UDP_PORTS`] on every
    /// address of [`SERVER_V4`] and [`SERVER_V6`] (the DNS addresses included:
    /// dnsmasq only takes port 53 there),
    /// plus TCP and UDP port 53 on [`OTHER_V4`] and [`OTHER_V6`].
    pub fn standard(ns: &Netns) -> Servers {
        let addrs: Vec<IpAddr> = SERVER_V4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(SERVER_V6.iter().map(|a| IpAddr::V6(*a)))
            .collect();
        let other = [IpAddr::V4(OTHER_V4), IpAddr::V6(OTHER_V6)];
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for a in &addrs {
            for p in STANDARD_TCP_PORTS {
                tcp.push(SocketAddr::new(*a, *p));
            }
            for p in STANDARD_UDP_PORTS {
                udp.push(SocketAddr::new(*a, *p));
            }
            if other.contains(a) {
                tcp.push(SocketAddr::new(*a, 53));
                udp.push(SocketAddr::new(*a, 53));
            }
        }
        Servers::start(ns, &tcp, &udp)
    }

    /// How many connections (TCP) or datagrams (UDP) reached `addr`.
    pub fn hits(&self, transport: Transport, addr: SocketAddr) -> usize {
        self.hits
            .lock()
            .unwrap()
            .get(&(transport, addr))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socks: Vec<Sock>, stop: &AtomicBool, hits: &Hits) {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: match s {
                Sock::Tcp(l, _) => l.as_raw_fd(),
                Sock::Udp(u, _) => u.as_raw_fd(),
            },
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: fds is a valid array of fds.len() pollfd structs whose fds
        // stay open (owned by `socks`) for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if n <= 0 {
            continue;
        }
        for (pfd, sock) in fds.iter_mut().zip(&socks) {
            if pfd.revents == 0 {
                continue;
            }
            pfd.revents = 0;
            match sock {
                Sock::Tcp(l, addr) => {
                    while let Ok((mut stream, _)) = l.accept() {
                        *hits
                            .lock()
                            .unwrap()
                            .entry((Transport::Tcp, *addr))
                            .or_default() += 1;
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.write_all(b"!");
                    }
                }
                Sock::Udp(u, addr) => {
                    while let Ok((len, peer)) = u.recv_from(&mut buf) {
                        *hits
                            .lock()
                            .unwrap()
                            .entry((Transport::Udp, *addr))
                            .or_default() += 1;
                        let _ = u.send_to(&buf[..len], peer);
                    }
                }
            }
        }
    }
}
