//! A minimal DNS client (one question, A or AAAA) over UDP or TCP, enough
//! to probe a DNS server through the firewall and to check what dnsmasq
//! serves.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use crate::probe::{check_target, classify, Probe};
use crate::servers::Transport;

/// The record type asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
}

impl QType {
    fn code(self) -> u16 {
        match self {
            QType::A => 1,
            QType::Aaaa => 28,
        }
    }
}

/// A parsed DNS response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsReply {
    /// Response code (0 NOERROR, 3 NXDOMAIN, 5 REFUSED, ...).
    pub rcode: u8,
    /// Addresses of the answer section's A/AAAA records.
    pub addrs: Vec<IpAddr>,
    /// Their TTLs, in the same order.
    pub ttls: Vec<u32>,
}

static NEXT_ID: AtomicU16 = AtomicU16::new(0x4a11);

fn build(id: u16, name: &str, qtype: QType) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question
    for label in name.trim_end_matches('.').split('.') {
        assert!(
            !label.is_empty() && label.len() < 64,
            "bad DNS name {name:?}"
        );
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.code().to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes()); // IN
    q
}

fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)? as usize;
        if len == 0 {
            return Some(at + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(at + 2);
        }
        at += 1 + len;
    }
}

fn u16_at(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

/// Parses a response to query `id`; `None` when it is not one (wrong id,
/// not a response, truncated).
fn parse(msg: &[u8], id: u16) -> Option<DnsReply> {
    if u16_at(msg, 0)? != id || msg.get(2)? & 0x80 == 0 {
        return None;
    }
    let rcode = msg.get(3)? & 0x0f;
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(msg, at)? + 4;
    }
    let mut reply = DnsReply {
        rcode,
        addrs: Vec::new(),
        ttls: Vec::new(),
    };
    for _ in 0..an {
        at = skip_name(msg, at)?;
        let rtype = u16_at(msg, at)?;
        let ttl = u32::from_be_bytes(msg.get(at + 4..at + 8)?.try_into().ok()?);
        let rdlen = u16_at(msg, at + 8)? as usize;
        let data = msg.get(at + 10..at + 10 + rdlen)?;
        match (rtype, rdlen) {
            (1, 4) => {
                let o: [u8; 4] = data.try_into().ok()?;
                reply.addrs.push(IpAddr::V4(Ipv4Addr::from(o)));
                reply.ttls.push(ttl);
            }
            (28, 16) => {
                let o: [u8; 16] = data.try_into().ok()?;
                reply.addrs.push(IpAddr::V6(Ipv6Addr::from(o)));
                reply.ttls.push(ttl);
            }
            _ => {}
        }
        at += 10 + rdlen;
    }
    Some(reply)
}

/// Asks `server` for `name`'s `qtype` records over `transport`, from the
/// calling thread's namespace. `Err` says how the exchange failed, as a
/// [`Probe`] (never [`Probe::Connected`] or [`Probe::Answered`]).
pub fn query(
    server: SocketAddr,
    name: &str,
    qtype: QType,
    transport: Transport,
    timeout: Duration,
) -> Result<DnsReply, Probe> {
    check_target(server);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let msg = build(id, name, qtype);
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    match transport {
        Transport::Udp => {
            let bind: SocketAddr = if server.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            let s = UdpSocket::bind(bind).map_err(classify)?;
            s.connect(server).map_err(classify)?;
            s.send(&msg).map_err(classify)?;
            let mut buf = [0u8; 4096];
            loop {
                let t = left();
                if t.is_zero() {
                    return Err(Probe::TimedOut);
                }
                s.set_read_timeout(Some(t)).map_err(classify)?;
                let n = s.recv(&mut buf).map_err(classify)?;
                if let Some(r) = parse(&buf[..n], id) {
                    return Ok(r);
                }
            }
        }
        Transport::Tcp => {
            let mut s = TcpStream::connect_timeout(&server, timeout).map_err(classify)?;
            let t = left().max(Duration::from_millis(1));
            s.set_read_timeout(Some(t)).map_err(classify)?;
            s.set_write_timeout(Some(t)).map_err(classify)?;
            let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&msg);
            s.write_all(&framed).map_err(classify)?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).map_err(classify)?;
            let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut body).map_err(classify)?;
            parse(&body, id).ok_or_else(|| Probe::Failed("not a DNS response".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_laid_out_as_in_rfc_1035() {
        let q = build(0x1234, "a.bc.", QType::Aaaa);
        assert_eq!(
            q,
            [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 2, b'b', b'c', 0, 0, 28, 0, 1]
        );
    }

    #[test]
    fn a_response_with_a_compressed_answer_parses() {
        let mut r = build(7, "x.test", QType::A);
        r[2] |= 0x80; // QR
        r[7] = 1; // ANCOUNT
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 1, 10]);
        let p = parse(&r, 7).unwrap();
        assert_eq!(p.rcode, 0);
        assert_eq!(p.addrs, vec!["198.18.1.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(p.ttls, vec![60]);
        assert!(parse(&r, 8).is_none(), "another id is not our answer");
        r[2] &= 0x7f;
        assert!(parse(&r, 7).is_none(), "a query is not an answer");
    }
}
