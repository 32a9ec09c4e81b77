//! A small DNS server for the tests: UDP on 127.0.0.1 (ephemeral port),
//! answering from a table the test changes while it runs.
//!
//! It behaves like a recursive resolver that already knows every answer:
//! CNAME chains are followed inside the table and returned in one response
//! (unless told not to), negative answers carry an SOA. Faults can be set per
//! name and per record type. It counts the queries it receives, and how many
//! it held at once, so tests can check what the client really sent.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{CNAME, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What the server does instead of answering from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Reply with this response code and no records.
    Rcode(ResponseCode),
    /// Never reply.
    Drop,
}

/// Handle to a running server; stops it when dropped.
pub struct TestDns {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    table: Mutex<Table>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

struct Table {
    addrs: HashMap<(String, RecordType), (Vec<IpAddr>, u32)>,
    cnames: HashMap<String, (String, u32)>,
    /// `None` as the type: every type.
    faults: HashMap<(String, Option<RecordType>), Fault>,
    queries: HashMap<(String, RecordType), usize>,
    delay: Duration,
    chase_cnames: bool,
}

/// Names in the table are kept like the client's `HostName`: lower case,
/// no trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{}.", key(name))).expect("valid test name")
}

impl TestDns {
    /// Starts a server on 127.0.0.1 with an empty table.
    pub async fn start() -> TestDns {
        let socket = Arc::new(
            UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind test DNS server"),
        );
        let addr = socket.local_addr().unwrap();
        let shared = Arc::new(Shared {
            table: Mutex::new(Table {
                addrs: HashMap::new(),
                cnames: HashMap::new(),
                faults: HashMap::new(),
                queries: HashMap::new(),
                delay: Duration::ZERO,
                chase_cnames: true,
            }),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let task = tokio::spawn(serve(socket, Arc::clone(&shared)));
        TestDns { addr, shared, task }
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.shared.table.lock().unwrap()
    }

    /// Sets the A records of `name` (replacing earlier ones); duplicates are
    /// sent as given.
    pub fn set_a(&self, name: &str, addrs: &[&str], ttl: u32) {
        self.set_addrs(name, RecordType::A, addrs, ttl);
    }

    /// Sets the AAAA records of `name` (replacing earlier ones).
    pub fn set_aaaa(&self, name: &str, addrs: &[&str], ttl: u32) {
        self.set_addrs(name, RecordType::AAAA, addrs, ttl);
    }

    fn set_addrs(&self, name: &str, rtype: RecordType, addrs: &[&str], ttl: u32) {
        let addrs = addrs
            .iter()
            .map(|a| a.parse().expect("valid test address"))
            .collect();
        self.table().addrs.insert((key(name), rtype), (addrs, ttl));
    }

    /// Makes `name` an alias of `target`.
    pub fn set_cname(&self, name: &str, target: &str, ttl: u32) {
        self.table().cnames.insert(key(name), (key(target), ttl));
    }

    /// Sets a fault for one record type of `name`, or for every type (`None`).
    pub fn set_fault(&self, name: &str, rtype: Option<RecordType>, fault: Fault) {
        self.table().faults.insert((key(name), rtype), fault);
    }

    /// Delays every reply by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.table().delay = delay;
    }

    /// With `false`, a CNAME answer stops at the alias, so the client has to
    /// ask for the target itself.
    pub fn set_chase_cnames(&self, chase: bool) {
        self.table().chase_cnames = chase;
    }

    /// Queries received for `name` and `rtype`, answered or not.
    pub fn queries(&self, name: &str, rtype: RecordType) -> usize {
        self.table()
            .queries
            .get(&(key(name), rtype))
            .copied()
            .unwrap_or(0)
    }

    /// Queries received in all.
    pub fn total_queries(&self) -> usize {
        self.table().queries.values().sum()
    }

    /// The most queries that were received but not yet replied to at one
    /// time (dropped queries are not counted).
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let Some((reply, delay)) = shared.table.lock().unwrap().handle(&request) else {
            continue;
        };
        let Ok(bytes) = reply.to_vec() else {
            continue;
        };

        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let socket = Arc::clone(&socket);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            // Counted out before the reply leaves: once the client has it, it
            // may send its next query, which must not find this one still
            // counted.
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = socket.send_to(&bytes, peer).await;
        });
    }
}

impl Table {
    /// The reply to `request` and how long to hold it, or `None` to stay
    /// silent.
    fn handle(&mut self, request: &Message) -> Option<(Message, Duration)> {
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let query = request.queries.first()?;
        let qname = key(&query.name().to_ascii());
        let qtype = query.query_type();
        *self.queries.entry((qname.clone(), qtype)).or_default() += 1;

        let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
        reply.metadata.recursion_desired = request.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.add_query(query.clone());

        let mut name = qname;
        // A bound instead of loop detection: a chain this long is a test bug.
        for _ in 0..16 {
            let fault = self
                .faults
                .get(&(name.clone(), Some(qtype)))
                .or_else(|| self.faults.get(&(name.clone(), None)));
            match fault {
                Some(Fault::Drop) => return None,
                Some(Fault::Rcode(code)) => {
                    reply.metadata.response_code = *code;
                    return Some((reply, self.delay));
                }
                None => {}
            }

            if let Some((target, ttl)) = self.cnames.get(&name) {
                reply.add_answer(Record::from_rdata(
                    fqdn(&name),
                    *ttl,
                    RData::CNAME(CNAME(fqdn(target))),
                ));
                if !self.chase_cnames {
                    return Some((reply, self.delay));
                }
                name = target.clone();
                continue;
            }

            if let Some((addrs, ttl)) = self.addrs.get(&(name.clone(), qtype)) {
                for addr in addrs {
                    reply.add_answer(Record::from_rdata(fqdn(&name), *ttl, RData::from(*addr)));
                }
                return Some((reply, self.delay));
            }

            let exists = self.addrs.keys().any(|(n, _)| *n == name);
            if !exists {
                reply.metadata.response_code = ResponseCode::NXDomain;
            }
            reply.add_authority(soa());
            return Some((reply, self.delay));
        }
        reply.metadata.response_code = ResponseCode::ServFail;
        Some((reply, self.delay))
    }
}

fn soa() -> Record {
    Record::from_rdata(
        fqdn("test"),
        60,
        RData::SOA(SOA::new(
            fqdn("ns.test"),
            fqdn("hostmaster.test"),
            1,
            3600,
            600,
            86400,
            60,
        )),
    )
}
