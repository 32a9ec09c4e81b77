//! Linux: batches and dumps over an nf_tables netlink socket.

use std::ffi::{c_char, c_void, CStr, CString};
use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use egress_core::diff::{diff, kernel_timeout, Change, Diff, LiveAttrs, LiveElements};
use egress_core::ruleset::{
    ChainSpec, ElementKey, Family, Hook, Layout, RuleSpec, Ruleset, SetId, SetKind, BASE_PRIORITY,
    DENY_CHAIN,
};
use egress_core::Proto;
use libc::nlmsghdr;
use nftnl::expr::{Expression, Verdict};
use nftnl::nftnl_sys as sys;
use nftnl::{Chain, MsgType, NlMsg, ProtoFamily, Rule, Table};

use crate::encode::{self, DecodeError, DumpedElement, RawElement};
use crate::{ApplyMode, ApplyReport, LiveTable};

/// Errors of the nftables backend. Each names the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The netlink socket could not be opened or configured.
    #[error("cannot open a netlink socket to nf_tables: {0}")]
    Socket(#[source] io::Error),
    /// Sending or receiving failed.
    #[error("netlink {what} failed: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused one message; the whole batch was rolled back.
    #[error("the kernel refused to {op}: {source}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Kernel {
        /// The message that caused it, in words.
        op: String,
        /// The errno.
        #[source]
        source: io::Error,
        /// The kernel's extended-ack text, when it gave one.
        detail: Option<String>,
    },
    /// The kernel did not acknowledge every message.
    #[error("no acknowledgement from the kernel for: {0}")]
    MissingAck(String),
    /// A reply could not be parsed.
    #[error("cannot parse the kernel's reply to {0}")]
    Parse(String),
    /// A set holds an element this version cannot read.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A name contains a NUL byte.
    #[error("name contains a NUL byte: {0:?}")]
    BadName(String),
}

type Result<T> = std::result::Result<T, NftError>;

// Constants the bindings do not export under a stable name.
const NFPROTO_INET: u16 = libc::NFPROTO_INET as u16;
const NLM_F_CAPPED: u16 = 0x100;
const NFT_SET_CONCAT: libc::c_int = 0x80;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
/// Upper bound of one message we build (libnftnl's own bound).
const MAX_MSG: usize = 65535 + 4096;
/// Elements per NEWSETELEM/DELSETELEM message: keeps each message well
/// under 64 KiB even with long comments.
const ELEMS_PER_MSG: usize = 128;
const RCVBUF: libc::c_int = 16 << 20;

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| NftError::BadName(s.to_owned()))
}

/// An open nf_tables netlink socket.
pub struct Nft {
    sock: mnl::Socket,
    fd: RawFd,
    portid: u32,
    seq: u32,
    /// What the last layout's table must hold; the layout only changes on
    /// reload, so it is derived once, not on every read.
    expected: Option<Expected>,
}

/// What a live table of one layout must hold.
struct Expected {
    layout: Layout,
    table_udata: Vec<u8>,
    chains: Vec<ChainSpec>,
    /// Per chain, each rule's (comment user data, expression text).
    rules: Vec<Vec<(Vec<u8>, String)>>,
    /// Comment user data of the rules that count denied packets.
    deny_tags: Vec<Vec<u8>>,
}

impl Expected {
    fn new(layout: &Layout) -> Result<Expected> {
        let name = cstring(&layout.table)?;
        let table = Table::new(&name, ProtoFamily::Inet);
        let chains = layout.chains();
        let rules = chains
            .iter()
            .map(|c| expected_rules(&table, c))
            .collect::<Result<_>>()?;
        let deny_tags = chains
            .iter()
            .flat_map(|c| c.rules.iter())
            .filter(|r| r.counts_denied())
            .map(|r| udata_comment(sys::NFTNL_UDATA_RULE_COMMENT, &r.tag()))
            .collect::<Result<_>>()?;
        Ok(Expected {
            layout: layout.clone(),
            table_udata: udata_comment(sys::NFTNL_UDATA_TABLE_COMMENT, &layout.table_comment())?,
            chains,
            rules,
            deny_tags,
        })
    }

    fn deny_counters(&self, rules: &[LiveRule]) -> (u64, u64) {
        let mut total = (0, 0);
        for r in rules.iter().filter(|r| self.deny_tags.contains(&r.udata)) {
            total.0 += r.packets;
            total.1 += r.bytes;
        }
        total
    }
}

impl Nft {
    /// Opens the socket. Needs CAP_NET_ADMIN for anything but reading.
    pub fn new() -> Result<Nft> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(NftError::Socket)?;
        // SAFETY: the socket pointer is valid for the lifetime of `sock`.
        let fd = unsafe { mnl::mnl_sys::mnl_socket_get_fd(sock.as_raw_socket()) };
        let portid = sock.portid();
        let nft = Nft {
            sock,
            fd,
            portid,
            seq: std::process::id().wrapping_mul(1000),
            expected: None,
        };
        // Extended acks give the kernel's reason in words; capped acks keep
        // each ack small so thousands fit in the receive buffer.
        nft.setsockopt(libc::SOL_NETLINK, NETLINK_EXT_ACK, 1)?;
        nft.setsockopt(libc::SOL_NETLINK, NETLINK_CAP_ACK, 1)?;
        // FORCE needs CAP_NET_ADMIN; without it fall back to the capped size.
        if nft
            .setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF)
            .is_err()
        {
            let _ = nft.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
        }
        let timeout = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: fd is a valid socket; the option value is a timeval of the
        // size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout as *const libc::timeval as *const c_void,
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NftError::Socket(io::Error::last_os_error()));
        }
        Ok(nft)
    }

    /// The netlink port id of this socket; change notifications caused by
    /// our own batches carry it.
    pub fn portid(&self) -> u32 {
        self.portid
    }

    fn setsockopt(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> Result<()> {
        // SAFETY: fd is a valid socket; the value is an int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                level,
                name,
                &value as *const libc::c_int as *const c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NftError::Socket(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Reads the live table: layout check, elements, deny counters.
    /// `Ok(None)` when the table does not exist.
    pub fn read(&mut self, layout: &Layout) -> Result<Option<LiveTable>> {
        let exp = self.take_expected(layout)?;
        let live = self.read_with(layout, &exp);
        self.expected = Some(exp);
        live
    }

    /// The cached [`Expected`] of `layout`, derived again when the layout
    /// changed. Taken out of `self` so the dumps can borrow `self`.
    fn take_expected(&mut self, layout: &Layout) -> Result<Expected> {
        match self.expected.take() {
            Some(e) if e.layout == *layout => Ok(e),
            _ => Expected::new(layout),
        }
    }

    fn read_with(&mut self, layout: &Layout, exp: &Expected) -> Result<Option<LiveTable>> {
        let name = cstring(&layout.table)?;
        let Some(table_udata) = self.get_table(&name)? else {
            return Ok(None);
        };
        let mut live = LiveTable::default();
        let mut drift = Vec::new();
        if table_udata != exp.table_udata {
            drift.push("the table comment (layout fingerprint) differs".to_string());
        }

        // Sets: exactly ours, with the expected flags and key length.
        let sets = self.dump_sets(&name)?;
        for set in SetId::ALL {
            match sets.iter().find(|s| s.name == set.name()) {
                None => drift.push(format!("set {} is missing", set.name())),
                Some(s) => {
                    if s.flags != set_flags(set) || s.key_len != encode::key_len(set) {
                        drift.push(format!("set {} has another definition", set.name()));
                    }
                }
            }
        }
        for s in &sets {
            if SetId::from_name(&s.name).is_none() {
                drift.push(format!("unexpected set {}", s.name));
            }
        }

        // Chains and rules: the same chains, each rule as expected.
        let chains = self.dump_chains(&name)?;
        let rules = self.dump_rules(&name)?;
        let want_chains = &exp.chains;
        for (spec, want) in want_chains.iter().zip(&exp.rules) {
            match chains.iter().find(|c| c.name == spec.name) {
                None => drift.push(format!("chain {} is missing", spec.name)),
                Some(c) => {
                    let hook_ok = match spec.hook {
                        None => c.hook.is_none(),
                        Some(h) => {
                            c.hook == Some(hook_num(h) as u32)
                                && c.prio == BASE_PRIORITY
                                && c.policy == Some(libc::NF_ACCEPT as u32)
                        }
                    };
                    if !hook_ok {
                        drift.push(format!("chain {} has another hook or policy", spec.name));
                    }
                    let live: Vec<&LiveRule> =
                        rules.iter().filter(|r| r.chain == spec.name).collect();
                    // Tags (comments) and the expressions themselves: an
                    // edited rule that kept its comment is drift too.
                    if live.len() != want.len() {
                        drift.push(format!(
                            "chain {} has {} rules instead of {}",
                            spec.name,
                            live.len(),
                            want.len()
                        ));
                    } else if let Some(i) = live
                        .iter()
                        .zip(want.iter())
                        .position(|(l, (tag, exprs))| l.udata != *tag || l.exprs != *exprs)
                    {
                        drift.push(format!(
                            "rule {}#{} ({}) was changed",
                            spec.name,
                            i + 1,
                            spec.rules[i].tag()
                        ));
                    }
                }
            }
        }
        for c in &chains {
            if !want_chains.iter().any(|s| s.name == c.name) {
                drift.push(format!("unexpected chain {}", c.name));
            }
        }
        (live.denied_packets, live.denied_bytes) = exp.deny_counters(&rules);

        for set in SetId::ALL {
            if sets.iter().any(|s| s.name == set.name()) {
                for (key, attrs) in self.dump_elements(&name, set)? {
                    live.elements.insert(set, key, attrs);
                }
            }
        }
        live.layout_matches = drift.is_empty();
        live.drift = (!drift.is_empty()).then(|| drift.join("; "));
        Ok(Some(live))
    }

    /// Packets and bytes counted by the deny rules (rules only, no
    /// elements: cheap enough for every `status`). `(0, 0)` when the table
    /// is absent.
    pub fn denied_counters(&mut self, layout: &Layout) -> Result<(u64, u64)> {
        let exp = self.take_expected(layout)?;
        let rules = cstring(&layout.table).and_then(|name| self.dump_rules(&name));
        let counts = rules.map(|r| exp.deny_counters(&r));
        self.expected = Some(exp);
        counts
    }

    /// What [`Nft::apply`] would do, without doing it: the live table (if
    /// any), whether a full load is needed, and the element diff.
    pub fn plan(&mut self, ruleset: &Ruleset) -> Result<(Option<LiveTable>, Option<String>, Diff)> {
        let live = self.read(&ruleset.layout)?;
        let nothing = LiveElements::new();
        let (reason, base) = match &live {
            None => (Some("the table does not exist".to_string()), &nothing),
            Some(l) if !l.layout_matches => (l.drift.clone(), &nothing),
            Some(l) => (None, &l.elements),
        };
        let d = diff(&ruleset.elements, base);
        Ok((live, reason, d))
    }

    /// Makes the kernel hold `ruleset`: a whole-table load when the table is
    /// absent or drifted, otherwise only the changed elements.
    pub fn apply(&mut self, ruleset: &Ruleset) -> Result<ApplyReport> {
        let t0 = Instant::now();
        let (live, reason, d) = self.plan(ruleset)?;
        let read_time = t0.elapsed();
        let t1 = Instant::now();
        let (mode, sent) = match &reason {
            Some(_) => (ApplyMode::Full, self.load_full(ruleset, &d)?),
            None if d.is_empty() => (ApplyMode::Unchanged, Sent::default()),
            None => (ApplyMode::Elements, self.load_diff(&ruleset.layout, &d)?),
        };
        let (denied_packets, denied_bytes) = live
            .as_ref()
            .map_or((0, 0), |l| (l.denied_packets, l.denied_bytes));
        Ok(ApplyReport {
            mode,
            reason,
            diff: d,
            messages: sent.messages,
            element_messages: sent.element_messages,
            bytes: sent.bytes,
            read_time,
            write_time: t1.elapsed(),
            denied_packets,
            denied_bytes,
        })
    }

    /// Replaces the whole table, whatever is live.
    pub fn apply_full(&mut self, ruleset: &Ruleset) -> Result<ApplyReport> {
        let t1 = Instant::now();
        let d = diff(&ruleset.elements, &LiveElements::new());
        let sent = self.load_full(ruleset, &d)?;
        Ok(ApplyReport {
            mode: ApplyMode::Full,
            reason: Some("forced".into()),
            diff: d,
            messages: sent.messages,
            element_messages: sent.element_messages,
            bytes: sent.bytes,
            read_time: Duration::ZERO,
            write_time: t1.elapsed(),
            denied_packets: 0,
            denied_bytes: 0,
        })
    }

    /// Removes the table. Returns whether it existed.
    pub fn flush(&mut self, table: &str) -> Result<bool> {
        let name = cstring(table)?;
        let existed = self.get_table(&name)?.is_some();
        // Adding before deleting makes the delete succeed when the table is
        // already gone, so flush is idempotent and still one atomic batch.
        let mut b = BatchBuf::new(self);
        let t = TableMsg::new(&name, None)?;
        b.push(format!("add table inet {table}"), |buf, seq| unsafe {
            // SAFETY: buf has room for MAX_MSG bytes (BatchBuf::push).
            t.write(buf, seq, libc::NFT_MSG_NEWTABLE, libc::NLM_F_CREATE)
        });
        b.push(format!("delete table inet {table}"), |buf, seq| unsafe {
            // SAFETY: as above.
            t.write(buf, seq, libc::NFT_MSG_DELTABLE, 0)
        });
        self.send_batch(b)?;
        Ok(existed)
    }

    fn load_full(&mut self, ruleset: &Ruleset, d: &Diff) -> Result<Sent> {
        let layout = &ruleset.layout;
        let name = cstring(&layout.table)?;
        let mut b = BatchBuf::new(self);
        let bare = TableMsg::new(&name, None)?;
        let full = TableMsg::new(&name, Some(&layout.table_comment()))?;
        let tname = &layout.table;
        // SAFETY (all pushes below): BatchBuf::push hands the closure a
        // buffer with room for MAX_MSG bytes, more than any one message.
        b.push(format!("add table inet {tname}"), |buf, seq| unsafe {
            bare.write(buf, seq, libc::NFT_MSG_NEWTABLE, libc::NLM_F_CREATE)
        });
        b.push(format!("delete table inet {tname}"), |buf, seq| unsafe {
            bare.write(buf, seq, libc::NFT_MSG_DELTABLE, 0)
        });
        b.push(format!("create table inet {tname}"), |buf, seq| unsafe {
            full.write(buf, seq, libc::NFT_MSG_NEWTABLE, libc::NLM_F_CREATE)
        });
        for set in SetId::ALL {
            let s = SetMsg::new(&name, set, set_id(set))?;
            b.push(format!("create set {}", set.name()), |buf, seq| unsafe {
                s.write(buf, seq)
            });
        }
        let ntable = Table::new(&name, ProtoFamily::Inet);
        let chains = layout.chains();
        let built: Vec<(Chain<'_>, &ChainSpec)> = chains
            .iter()
            .map(|spec| Ok((build_chain(&ntable, spec)?, spec)))
            .collect::<Result<_>>()?;
        // Chains first: rules jump to the policy chain, which must exist.
        for (chain, spec) in &built {
            b.push(format!("create chain {}", spec.name), |buf, seq| unsafe {
                chain.write(buf.cast(), seq, MsgType::Add);
                buf.cast()
            });
        }
        for (chain, spec) in &built {
            for (i, rs) in spec.rules.iter().enumerate() {
                let rule = build_rule(chain, rs)?;
                b.push(
                    format!("add rule {}#{} ({})", spec.name, i + 1, rs.tag()),
                    |buf, seq| unsafe {
                        rule.write(buf.cast(), seq, MsgType::Add);
                        buf.cast()
                    },
                );
            }
        }
        let element_messages = push_elements(&mut b, &name, tname, &d.add, true)?;
        let sent = Sent {
            messages: b.count(),
            element_messages,
            bytes: b.len(),
        };
        self.send_batch(b)?;
        Ok(sent)
    }

    fn load_diff(&mut self, layout: &Layout, d: &Diff) -> Result<Sent> {
        let name = cstring(&layout.table)?;
        let mut b = BatchBuf::new(self);
        // Deletes first: a refreshed element is deleted and re-added in the
        // same batch, which renews its timeout on every set type.
        let mut element_messages = push_elements(&mut b, &name, &layout.table, &d.delete, false)?;
        element_messages += push_elements(&mut b, &name, &layout.table, &d.add, true)?;
        let sent = Sent {
            messages: b.count(),
            element_messages,
            bytes: b.len(),
        };
        self.send_batch(b)?;
        Ok(sent)
    }

    /// Sends the batch in ONE sendmsg (a batch split over several sends can
    /// hit ENOBUFS and is no longer atomic from the sender's view), then
    /// checks one acknowledgement per message.
    fn send_batch(&mut self, b: BatchBuf) -> Result<()> {
        if b.count() == 0 {
            return Ok(());
        }
        let data = b.finish();
        self.seq = data.first_seq.wrapping_add(data.ops.len() as u32);
        // The kernel takes the whole batch as one skb, bounded by SO_SNDBUF.
        let want = (data.bytes.len() + (1 << 20)).min(i32::MAX as usize) as libc::c_int;
        if self
            .setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want)
            .is_err()
        {
            let _ = self.setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUF, want);
        }
        let sent = self.sock.send(&data.bytes).map_err(|e| NftError::Io {
            what: format!(
                "send of a {}-message batch ({} bytes)",
                data.ops.len(),
                data.bytes.len()
            ),
            source: e,
        })?;
        if sent != data.bytes.len() {
            return Err(NftError::Io {
                what: "send of the batch".into(),
                source: io::Error::other(format!("sent {sent} of {} bytes", data.bytes.len())),
            });
        }
        // nf_tables processes the batch inside sendmsg, so every reply is
        // queued by now; read until each message is acknowledged, or until
        // an error has been seen and nothing more is queued.
        let mut acked = vec![false; data.ops.len()];
        let mut pending = data.ops.len();
        let mut first_error: Option<NftError> = None;
        let mut buf = AlignedBuf::new(1 << 16);
        loop {
            let nonblock = first_error.is_some();
            let n = match self.recv(&mut buf, nonblock) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if nonblock && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    return Err(first_error.unwrap_or(NftError::Io {
                        what: "receive of batch acknowledgements".into(),
                        source: e,
                    }))
                }
            };
            for msg in messages(&buf.bytes()[..n]) {
                let Some(err) = parse_error(msg) else {
                    continue;
                };
                let Some(idx) = err.seq.checked_sub(data.first_seq).map(|i| i as usize) else {
                    continue;
                };
                if idx >= acked.len() {
                    continue;
                }
                if err.errno == 0 {
                    if !acked[idx] {
                        acked[idx] = true;
                        pending -= 1;
                    }
                } else if first_error.is_none() {
                    first_error = Some(NftError::Kernel {
                        op: data.ops[idx].clone(),
                        source: io::Error::from_raw_os_error(err.errno),
                        detail: err.detail,
                    });
                }
            }
            if first_error.is_none() && pending == 0 {
                return Ok(());
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let missing = acked.iter().position(|a| !a).map(|i| data.ops[i].clone());
        Err(NftError::MissingAck(missing.unwrap_or_default()))
    }

    fn recv(&self, buf: &mut AlignedBuf, nonblock: bool) -> io::Result<usize> {
        let flags = if nonblock { libc::MSG_DONTWAIT } else { 0 };
        let bytes = buf.bytes_mut();
        // SAFETY: the pointer and length describe a writable buffer we own.
        let n = unsafe {
            libc::recv(
                self.fd,
                bytes.as_mut_ptr() as *mut c_void,
                bytes.len(),
                flags,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Sends one request and collects the reply messages (a dump, or a
    /// single object). `Ok(None)` for ENOENT.
    fn request(
        &mut self,
        what: &str,
        build: impl FnOnce(*mut c_char, u32) -> *mut nlmsghdr,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        let seq = self.next_seq();
        let mut req = AlignedBuf::new(MAX_MSG);
        let hdr = build(req.bytes_mut().as_mut_ptr() as *mut c_char, seq);
        // SAFETY: build returned a pointer to the header it wrote in `req`.
        let len = unsafe { (*hdr).nlmsg_len } as usize;
        self.sock
            .send(&req.bytes()[..len])
            .map_err(|e| NftError::Io {
                what: format!("request for {what}"),
                source: e,
            })?;
        let mut out = Vec::new();
        let mut buf = AlignedBuf::new(1 << 18);
        loop {
            let n = self.recv(&mut buf, false).map_err(|e| NftError::Io {
                what: format!("reply to the request for {what}"),
                source: e,
            })?;
            for msg in messages(&buf.bytes()[..n]) {
                let h = header(msg);
                if h.nlmsg_seq != seq || h.nlmsg_pid != self.portid {
                    continue;
                }
                match h.nlmsg_type as libc::c_int {
                    libc::NLMSG_DONE => return Ok(Some(out)),
                    libc::NLMSG_ERROR => {
                        let e = parse_error(msg).ok_or_else(|| NftError::Parse(what.into()))?;
                        return match e.errno {
                            0 => Ok(Some(out)),
                            libc::ENOENT => Ok(None),
                            errno => Err(NftError::Kernel {
                                op: format!("answer the request for {what}"),
                                source: io::Error::from_raw_os_error(errno),
                                detail: e.detail,
                            }),
                        };
                    }
                    _ => out.push(msg.to_vec()),
                }
            }
        }
    }

    /// The table's user data, or `None` when it does not exist.
    fn get_table(&mut self, name: &CStr) -> Result<Option<Vec<u8>>> {
        let t = TableMsg::new(name, None)?;
        let what = format!("table inet {}", name.to_string_lossy());
        let Some(msgs) = self.request(&what, |buf, seq| unsafe {
            // SAFETY: buf has MAX_MSG bytes; the table object is valid.
            let h = sys::nftnl_nlmsg_build_hdr(
                buf,
                libc::NFT_MSG_GETTABLE as u16,
                NFPROTO_INET,
                libc::NLM_F_ACK as u16,
                seq,
            );
            sys::nftnl_table_nlmsg_build_payload(h, t.ptr.0.as_ptr());
            h
        })?
        else {
            return Ok(None);
        };
        let Some(msg) = msgs.first() else {
            return Ok(None);
        };
        let parsed = OwnedTable::alloc();
        // SAFETY: msg holds one complete netlink message; the table object
        // is valid and owned by `parsed`.
        let rc = unsafe {
            sys::nftnl_table_nlmsg_parse(msg.as_ptr() as *const nlmsghdr, parsed.0.as_ptr())
        };
        if rc < 0 {
            return Err(NftError::Parse(what));
        }
        let mut len = 0u32;
        // SAFETY: returns a pointer into the parsed object, valid while it lives.
        let data = unsafe {
            sys::nftnl_table_get_data(
                parsed.0.as_ptr(),
                sys::NFTNL_TABLE_USERDATA as u16,
                &mut len,
            )
        };
        Ok(Some(copy_bytes(data, len)))
    }

    fn dump_sets(&mut self, table: &CStr) -> Result<Vec<LiveSet>> {
        let what = format!("the sets of table {}", table.to_string_lossy());
        let msgs = self
            .request(&what, |buf, seq| unsafe {
                // SAFETY: buf has MAX_MSG bytes; the set object lives for the call.
                let s = OwnedSet::alloc();
                sys::nftnl_set_set_str(s.0.as_ptr(), sys::NFTNL_SET_TABLE as u16, table.as_ptr());
                let h = sys::nftnl_nlmsg_build_hdr(
                    buf,
                    libc::NFT_MSG_GETSET as u16,
                    NFPROTO_INET,
                    (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16,
                    seq,
                );
                sys::nftnl_set_nlmsg_build_payload(h, s.0.as_ptr());
                h
            })?
            .unwrap_or_default();
        let mut out = Vec::new();
        for msg in msgs {
            let s = OwnedSet::alloc();
            // SAFETY: msg is one complete message; s is a valid set object.
            unsafe {
                if sys::nftnl_set_nlmsg_parse(msg.as_ptr() as *const nlmsghdr, s.0.as_ptr()) < 0 {
                    return Err(NftError::Parse(what));
                }
                if get_str(sys::nftnl_set_get_str(
                    s.0.as_ptr(),
                    sys::NFTNL_SET_TABLE as u16,
                ))
                .as_deref()
                    != Some(&*table.to_string_lossy())
                {
                    continue;
                }
                out.push(LiveSet {
                    name: get_str(sys::nftnl_set_get_str(
                        s.0.as_ptr(),
                        sys::NFTNL_SET_NAME as u16,
                    ))
                    .unwrap_or_default(),
                    flags: sys::nftnl_set_get_u32(s.0.as_ptr(), sys::NFTNL_SET_FLAGS as u16),
                    key_len: sys::nftnl_set_get_u32(s.0.as_ptr(), sys::NFTNL_SET_KEY_LEN as u16),
                });
            }
        }
        Ok(out)
    }

    fn dump_chains(&mut self, table: &CStr) -> Result<Vec<LiveChain>> {
        let what = format!("the chains of table {}", table.to_string_lossy());
        let msgs = self
            .request(&what, |buf, seq| unsafe {
                // SAFETY: buf has MAX_MSG bytes; the chain object is freed
                // here. The table attribute lets the kernel filter the dump
                // (the reply is still checked below, for older kernels).
                let c = sys::nftnl_chain_alloc();
                if c.is_null() {
                    std::process::abort();
                }
                sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_TABLE as u16, table.as_ptr());
                let h = sys::nftnl_nlmsg_build_hdr(
                    buf,
                    libc::NFT_MSG_GETCHAIN as u16,
                    NFPROTO_INET,
                    (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16,
                    seq,
                );
                sys::nftnl_chain_nlmsg_build_payload(h, c);
                sys::nftnl_chain_free(c);
                h
            })?
            .unwrap_or_default();
        let mut out = Vec::new();
        for msg in msgs {
            // SAFETY: msg is one complete message; the chain object is freed
            // at the end of the block.
            unsafe {
                let c = sys::nftnl_chain_alloc();
                let Some(c) = NonNull::new(c) else {
                    return Err(NftError::Parse(what));
                };
                let rc = sys::nftnl_chain_nlmsg_parse(msg.as_ptr() as *const nlmsghdr, c.as_ptr());
                let p = c.as_ptr();
                let same_table =
                    get_str(sys::nftnl_chain_get_str(p, sys::NFTNL_CHAIN_TABLE as u16)).as_deref()
                        == Some(&*table.to_string_lossy());
                if rc >= 0 && same_table {
                    let has_hook = sys::nftnl_chain_is_set(p, sys::NFTNL_CHAIN_HOOKNUM as u16);
                    out.push(LiveChain {
                        name: get_str(sys::nftnl_chain_get_str(p, sys::NFTNL_CHAIN_NAME as u16))
                            .unwrap_or_default(),
                        hook: has_hook
                            .then(|| sys::nftnl_chain_get_u32(p, sys::NFTNL_CHAIN_HOOKNUM as u16)),
                        prio: sys::nftnl_chain_get_s32(p, sys::NFTNL_CHAIN_PRIO as u16),
                        policy: sys::nftnl_chain_is_set(p, sys::NFTNL_CHAIN_POLICY as u16)
                            .then(|| sys::nftnl_chain_get_u32(p, sys::NFTNL_CHAIN_POLICY as u16)),
                    });
                }
                sys::nftnl_chain_free(p);
                if rc < 0 {
                    return Err(NftError::Parse(what));
                }
            }
        }
        Ok(out)
    }

    fn dump_rules(&mut self, table: &CStr) -> Result<Vec<LiveRule>> {
        let what = format!("the rules of table {}", table.to_string_lossy());
        let msgs = self
            .request(&what, |buf, seq| unsafe {
                // SAFETY: buf has MAX_MSG bytes; the rule object is freed here.
                let r = sys::nftnl_rule_alloc();
                sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
                sys::nftnl_rule_set_u32(r, sys::NFTNL_RULE_FAMILY as u16, NFPROTO_INET as u32);
                let h = sys::nftnl_nlmsg_build_hdr(
                    buf,
                    libc::NFT_MSG_GETRULE as u16,
                    NFPROTO_INET,
                    (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16,
                    seq,
                );
                sys::nftnl_rule_nlmsg_build_payload(h, r);
                sys::nftnl_rule_free(r);
                h
            })?
            .unwrap_or_default();
        let mut out = Vec::new();
        for msg in msgs {
            // SAFETY: msg is one complete message; objects are freed below.
            unsafe {
                let r = sys::nftnl_rule_alloc();
                if r.is_null() {
                    return Err(NftError::Parse(what));
                }
                let rc = sys::nftnl_rule_nlmsg_parse(msg.as_ptr() as *const nlmsghdr, r);
                let same_table = get_str(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_TABLE as u16))
                    .as_deref()
                    == Some(&*table.to_string_lossy());
                if rc >= 0 && same_table {
                    let mut len = 0u32;
                    let data =
                        sys::nftnl_rule_get_data(r, sys::NFTNL_RULE_USERDATA as u16, &mut len);
                    let mut rule = LiveRule {
                        chain: get_str(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_CHAIN as u16))
                            .unwrap_or_default(),
                        udata: copy_bytes(data, len),
                        exprs: rule_text(r),
                        packets: 0,
                        bytes: 0,
                    };
                    let it = sys::nftnl_expr_iter_create(r);
                    if !it.is_null() {
                        let mut e = sys::nftnl_expr_iter_next(it);
                        while !e.is_null() {
                            if get_str(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16))
                                .as_deref()
                                == Some("counter")
                            {
                                rule.packets +=
                                    sys::nftnl_expr_get_u64(e, sys::NFTNL_EXPR_CTR_PACKETS as u16);
                                rule.bytes +=
                                    sys::nftnl_expr_get_u64(e, sys::NFTNL_EXPR_CTR_BYTES as u16);
                            }
                            e = sys::nftnl_expr_iter_next(it);
                        }
                        sys::nftnl_expr_iter_destroy(it);
                    }
                    out.push(rule);
                }
                sys::nftnl_rule_free(r);
                if rc < 0 {
                    return Err(NftError::Parse(what));
                }
            }
        }
        Ok(out)
    }

    fn dump_elements(&mut self, table: &CStr, set: SetId) -> Result<Vec<(ElementKey, LiveAttrs)>> {
        let what = format!("the elements of set {}", set.name());
        let sname = cstring(set.name())?;
        let msgs = self
            .request(&what, |buf, seq| unsafe {
                // SAFETY: buf has MAX_MSG bytes; the set object lives for the call.
                let s = OwnedSet::alloc();
                sys::nftnl_set_set_str(s.0.as_ptr(), sys::NFTNL_SET_TABLE as u16, table.as_ptr());
                sys::nftnl_set_set_str(s.0.as_ptr(), sys::NFTNL_SET_NAME as u16, sname.as_ptr());
                sys::nftnl_set_set_u32(
                    s.0.as_ptr(),
                    sys::NFTNL_SET_FAMILY as u16,
                    NFPROTO_INET as u32,
                );
                let h = sys::nftnl_nlmsg_build_hdr(
                    buf,
                    libc::NFT_MSG_GETSETELEM as u16,
                    NFPROTO_INET,
                    (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16,
                    seq,
                );
                sys::nftnl_set_elems_nlmsg_build_payload(h, s.0.as_ptr());
                h
            })?
            .unwrap_or_default();
        let mut dumped = Vec::new();
        for msg in msgs {
            let s = OwnedSet::alloc();
            // SAFETY: msg is one complete message; s owns the parsed elements,
            // and the iterator is destroyed before s is dropped.
            unsafe {
                if sys::nftnl_set_elems_nlmsg_parse(msg.as_ptr() as *const nlmsghdr, s.0.as_ptr())
                    < 0
                {
                    return Err(NftError::Parse(what));
                }
                let it = sys::nftnl_set_elems_iter_create(s.0.as_ptr());
                if it.is_null() {
                    continue;
                }
                let mut e = sys::nftnl_set_elems_iter_cur(it);
                while !e.is_null() {
                    let mut len = 0u32;
                    let key = copy_bytes(
                        sys::nftnl_set_elem_get(e, sys::NFTNL_SET_ELEM_KEY as u16, &mut len),
                        len,
                    );
                    let key_end = sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_KEY_END as u16)
                        .then(|| {
                            let mut len = 0u32;
                            copy_bytes(
                                sys::nftnl_set_elem_get(
                                    e,
                                    sys::NFTNL_SET_ELEM_KEY_END as u16,
                                    &mut len,
                                ),
                                len,
                            )
                        });
                    let flags = if sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_FLAGS as u16) {
                        sys::nftnl_set_elem_get_u32(e, sys::NFTNL_SET_ELEM_FLAGS as u16)
                    } else {
                        0
                    };
                    let ms = |attr: u32| {
                        sys::nftnl_set_elem_is_set(e, attr as u16).then(|| {
                            Duration::from_millis(sys::nftnl_set_elem_get_u64(e, attr as u16))
                        })
                    };
                    let attrs = LiveAttrs {
                        timeout: ms(sys::NFTNL_SET_ELEM_TIMEOUT),
                        expires: ms(sys::NFTNL_SET_ELEM_EXPIRATION),
                    };
                    dumped.push(DumpedElement {
                        raw: RawElement {
                            key,
                            key_end,
                            interval_end: flags & libc::NFT_SET_ELEM_INTERVAL_END as u32 != 0,
                            open_end: false,
                        },
                        attrs,
                    });
                    e = sys::nftnl_set_elems_iter_next(it);
                }
                sys::nftnl_set_elems_iter_destroy(it);
            }
        }
        Ok(encode::decode(set, &dumped)?)
    }
}

/// What one batch carried (its begin and end markers not counted).
#[derive(Default)]
struct Sent {
    messages: usize,
    element_messages: usize,
    bytes: usize,
}

struct LiveSet {
    name: String,
    flags: u32,
    key_len: u32,
}

struct LiveChain {
    name: String,
    hook: Option<u32>,
    prio: i32,
    policy: Option<u32>,
}

struct LiveRule {
    chain: String,
    udata: Vec<u8>,
    /// The rule's expressions as libnftnl prints them, counters zeroed.
    exprs: String,
    packets: u64,
    bytes: u64,
}

fn set_flags(set: SetId) -> u32 {
    match set.kind() {
        SetKind::Service => {
            (libc::NFT_SET_INTERVAL | libc::NFT_SET_TIMEOUT | NFT_SET_CONCAT) as u32
        }
        SetKind::AddressRange => (libc::NFT_SET_INTERVAL | libc::NFT_SET_TIMEOUT) as u32,
        SetKind::Address => 0,
    }
}

fn hook_num(h: Hook) -> libc::c_int {
    match h {
        Hook::Forward => libc::NF_INET_FORWARD,
        Hook::Input => libc::NF_INET_LOCAL_IN,
    }
}

/// # Safety
/// `p` must be null or a NUL-terminated string.
unsafe fn get_str(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: caller guarantees NUL termination.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

fn copy_bytes(p: *const c_void, len: u32) -> Vec<u8> {
    if p.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: libnftnl returned `len` readable bytes at `p`, owned by an
    // object that outlives this copy.
    unsafe { std::slice::from_raw_parts(p as *const u8, len as usize) }.to_vec()
}

/// A user-data TLV buffer holding one comment string, the way nft writes
/// comments; also what is compared when checking a live table for drift.
fn udata_comment(kind: u32, text: &str) -> Result<Vec<u8>> {
    udata(&[(kind as u8, Udata::Str(cstring(text)?))])
}

enum Udata {
    Str(CString),
    U32(u32),
}

fn udata(items: &[(u8, Udata)]) -> Result<Vec<u8>> {
    // SAFETY: the buffer is allocated, filled and freed here; the data
    // pointer is read before the free.
    unsafe {
        let buf = sys::nftnl_udata_buf_alloc(sys::NFTNL_UDATA_COMMENT_MAXLEN + 64);
        if buf.is_null() {
            return Err(NftError::BadName("user data".into()));
        }
        for (kind, item) in items {
            let ok = match item {
                Udata::Str(s) => sys::nftnl_udata_put_strz(buf, *kind, s.as_ptr()),
                Udata::U32(v) => sys::nftnl_udata_put_u32(buf, *kind, *v),
            };
            if !ok {
                sys::nftnl_udata_buf_free(buf);
                return Err(NftError::BadName("comment too long".into()));
            }
        }
        let out = copy_bytes(
            sys::nftnl_udata_buf_data(buf),
            sys::nftnl_udata_buf_len(buf),
        );
        sys::nftnl_udata_buf_free(buf);
        Ok(out)
    }
}

struct OwnedTable(NonNull<sys::nftnl_table>);
impl OwnedTable {
    fn alloc() -> OwnedTable {
        // SAFETY: plain allocation; abort on OOM like the nftnl crate.
        let p = unsafe { sys::nftnl_table_alloc() };
        OwnedTable(NonNull::new(p).unwrap_or_else(|| std::process::abort()))
    }
}
impl Drop for OwnedTable {
    fn drop(&mut self) {
        // SAFETY: we own the object.
        unsafe { sys::nftnl_table_free(self.0.as_ptr()) }
    }
}

struct OwnedSet(NonNull<sys::nftnl_set>);
impl OwnedSet {
    fn alloc() -> OwnedSet {
        // SAFETY: plain allocation; abort on OOM like the nftnl crate.
        let p = unsafe { sys::nftnl_set_alloc() };
        OwnedSet(NonNull::new(p).unwrap_or_else(|| std::process::abort()))
    }
}
impl Drop for OwnedSet {
    fn drop(&mut self) {
        // SAFETY: we own the object (and, through it, its elements).
        unsafe { sys::nftnl_set_free(self.0.as_ptr()) }
    }
}

/// A table message with an optional comment (the nftnl crate's table has
/// no user data, and the comment carries the layout fingerprint).
struct TableMsg {
    ptr: OwnedTable,
    _udata: Vec<u8>,
}

impl TableMsg {
    fn new(name: &CStr, comment: Option<&str>) -> Result<TableMsg> {
        let t = OwnedTable::alloc();
        let udata = match comment {
            Some(c) => udata_comment(sys::NFTNL_UDATA_TABLE_COMMENT, c)?,
            None => Vec::new(),
        };
        // SAFETY: t is valid; strings and data are copied by libnftnl.
        unsafe {
            let p = t.0.as_ptr();
            sys::nftnl_table_set_u32(p, sys::NFTNL_TABLE_FAMILY as u16, NFPROTO_INET as u32);
            sys::nftnl_table_set_str(p, sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
            sys::nftnl_table_set_u32(p, sys::NFTNL_TABLE_FLAGS as u16, 0);
            if !udata.is_empty() {
                sys::nftnl_table_set_data(
                    p,
                    sys::NFTNL_TABLE_USERDATA as u16,
                    udata.as_ptr() as *const c_void,
                    udata.len() as u32,
                );
            }
        }
        Ok(TableMsg {
            ptr: t,
            _udata: udata,
        })
    }

    /// # Safety
    /// `buf` must have room for [`MAX_MSG`] bytes.
    unsafe fn write(
        &self,
        buf: *mut c_char,
        seq: u32,
        kind: libc::c_int,
        flags: libc::c_int,
    ) -> *mut nlmsghdr {
        // SAFETY: per the function contract.
        unsafe {
            let h = sys::nftnl_nlmsg_build_hdr(
                buf,
                kind as u16,
                NFPROTO_INET,
                (flags | libc::NLM_F_ACK) as u16,
                seq,
            );
            sys::nftnl_table_nlmsg_build_payload(h, self.ptr.0.as_ptr());
            h
        }
    }
}

/// A set definition (flags, concatenated key description) – beyond what the
/// nftnl crate's `Set` can express.
struct SetMsg {
    set: OwnedSet,
}

impl SetMsg {
    fn new(table: &CStr, set: SetId, id: u32) -> Result<SetMsg> {
        let s = OwnedSet::alloc();
        let name = cstring(set.name())?;
        // SAFETY: s is valid; libnftnl copies strings and data.
        unsafe {
            let p = s.0.as_ptr();
            sys::nftnl_set_set_str(p, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            sys::nftnl_set_set_str(p, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FAMILY as u16, NFPROTO_INET as u32);
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_ID as u16, id);
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FLAGS as u16, set_flags(set));
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_TYPE as u16, encode::key_type(set));
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_LEN as u16, encode::key_len(set));
            if let Some(fields) = encode::concat_fields(set) {
                sys::nftnl_set_set_data(
                    p,
                    sys::NFTNL_SET_DESC_CONCAT as u16,
                    fields.as_ptr() as *const c_void,
                    fields.len() as u32,
                );
            }
            // nft reads the key byte order from user data to print keys;
            // 2 is nft's BYTEORDER_BIG_ENDIAN.
            let ud = udata(&[(sys::NFTNL_UDATA_SET_KEYBYTEORDER as u8, Udata::U32(2))])?;
            sys::nftnl_set_set_data(
                p,
                sys::NFTNL_SET_USERDATA as u16,
                ud.as_ptr() as *const c_void,
                ud.len() as u32,
            );
        }
        Ok(SetMsg { set: s })
    }

    /// # Safety
    /// `buf` must have room for [`MAX_MSG`] bytes.
    unsafe fn write(&self, buf: *mut c_char, seq: u32) -> *mut nlmsghdr {
        // SAFETY: per the function contract.
        unsafe {
            let h = sys::nftnl_nlmsg_build_hdr(
                buf,
                libc::NFT_MSG_NEWSET as u16,
                NFPROTO_INET,
                (libc::NLM_F_CREATE | libc::NLM_F_ACK) as u16,
                seq,
            );
            sys::nftnl_set_nlmsg_build_payload(h, self.set.0.as_ptr());
            h
        }
    }
}

/// Appends element messages for `changes` (grouped by set, at most
/// [`ELEMS_PER_MSG`] keys per message). Returns how many messages.
fn push_elements(
    b: &mut BatchBuf,
    table: &CStr,
    tname: &str,
    changes: &[Change],
    add: bool,
) -> Result<usize> {
    let mut count = 0;
    for set in SetId::ALL {
        let of_set: Vec<&Change> = changes.iter().filter(|c| c.set == set).collect();
        for chunk in of_set.chunks(ELEMS_PER_MSG) {
            let s = OwnedSet::alloc();
            let sname = cstring(set.name())?;
            // SAFETY: s is valid; elements are handed to (and freed with) s;
            // libnftnl copies all data passed to it.
            unsafe {
                let p = s.0.as_ptr();
                sys::nftnl_set_set_str(p, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
                sys::nftnl_set_set_str(p, sys::NFTNL_SET_NAME as u16, sname.as_ptr());
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FAMILY as u16, NFPROTO_INET as u32);
                for c in chunk {
                    for raw in encode::encode(set, &c.key) {
                        let e = sys::nftnl_set_elem_alloc();
                        if e.is_null() {
                            std::process::abort();
                        }
                        sys::nftnl_set_elem_set(
                            e,
                            sys::NFTNL_SET_ELEM_KEY as u16,
                            raw.key.as_ptr() as *const c_void,
                            raw.key.len() as u32,
                        );
                        if let Some(end) = &raw.key_end {
                            sys::nftnl_set_elem_set(
                                e,
                                sys::NFTNL_SET_ELEM_KEY_END as u16,
                                end.as_ptr() as *const c_void,
                                end.len() as u32,
                            );
                        }
                        if raw.interval_end {
                            sys::nftnl_set_elem_set_u32(
                                e,
                                sys::NFTNL_SET_ELEM_FLAGS as u16,
                                libc::NFT_SET_ELEM_INTERVAL_END as u32,
                            );
                        }
                        if add {
                            // The kernel refuses a timeout on an interval-end
                            // element (EINVAL); the start element's timeout
                            // governs the whole interval.
                            if let Some(t) = c.attrs.timeout.filter(|_| !raw.interval_end) {
                                // The kernel needs at least 1 ms.
                                let ms = (kernel_timeout(t).as_millis() as u64).max(1);
                                sys::nftnl_set_elem_set_u64(
                                    e,
                                    sys::NFTNL_SET_ELEM_TIMEOUT as u16,
                                    ms,
                                );
                            }
                            let mut items = Vec::new();
                            if !c.attrs.comment.is_empty() && !raw.interval_end {
                                items.push((
                                    sys::NFTNL_UDATA_SET_ELEM_COMMENT as u8,
                                    Udata::Str(cstring(&c.attrs.comment)?),
                                ));
                            }
                            if raw.open_end {
                                items.push((
                                    sys::NFTNL_UDATA_SET_ELEM_FLAGS as u8,
                                    Udata::U32(sys::NFTNL_SET_ELEM_F_INTERVAL_OPEN),
                                ));
                            }
                            if !items.is_empty() {
                                let ud = udata(&items)?;
                                sys::nftnl_set_elem_set(
                                    e,
                                    sys::NFTNL_SET_ELEM_USERDATA as u16,
                                    ud.as_ptr() as *const c_void,
                                    ud.len() as u32,
                                );
                            }
                        }
                        sys::nftnl_set_elem_add(p, e);
                    }
                }
            }
            let verb = if add { "add" } else { "delete" };
            let first = chunk.first().map(|c| c.key.to_string()).unwrap_or_default();
            let op = if chunk.len() == 1 {
                format!("{verb} element {first} in set {tname} {}", set.name())
            } else {
                format!(
                    "{verb} {} elements (first {first}) in set {tname} {}",
                    chunk.len(),
                    set.name()
                )
            };
            let (kind, flags) = if add {
                // NLM_F_EXCL: an element that already exists is an error,
                // which the fresh read before every diff rules out.
                (
                    libc::NFT_MSG_NEWSETELEM,
                    libc::NLM_F_CREATE | libc::NLM_F_EXCL,
                )
            } else {
                (libc::NFT_MSG_DELSETELEM, 0)
            };
            b.push(op, |buf, seq| unsafe {
                // SAFETY: buf has MAX_MSG bytes; ELEMS_PER_MSG keeps the
                // payload below it.
                let h = sys::nftnl_nlmsg_build_hdr(
                    buf,
                    kind as u16,
                    NFPROTO_INET,
                    (flags | libc::NLM_F_ACK) as u16,
                    seq,
                );
                sys::nftnl_set_elems_nlmsg_build_payload(h, s.0.as_ptr());
                h
            });
            count += 1;
        }
    }
    Ok(count)
}

fn build_chain<'a>(table: &'a Table, spec: &ChainSpec) -> Result<Chain<'a>> {
    let mut chain = Chain::new(cstring(spec.name)?, table);
    if let Some(hook) = spec.hook {
        let h = match hook {
            Hook::Forward => nftnl::Hook::Forward,
            Hook::Input => nftnl::Hook::In,
        };
        chain.set_hook(h, BASE_PRIORITY);
        chain.set_type(nftnl::ChainType::Filter);
        chain.set_policy(nftnl::Policy::Accept);
    }
    Ok(chain)
}

/// The rule's expressions as libnftnl prints them (`[ meta load ... ]`),
/// without the table/chain/handle header and with counter values zeroed, so
/// a live rule and a locally built one compare equal when they match.
///
/// # Safety
/// `r` must be a valid rule object.
unsafe fn rule_text(r: *const sys::nftnl_rule) -> String {
    let mut buf = vec![0u8; 16384];
    // SAFETY: buf is writable for its length; r is valid per the contract.
    let n = unsafe {
        sys::nftnl_rule_snprintf(
            buf.as_mut_ptr() as *mut c_char,
            buf.len(),
            r,
            sys::NFTNL_OUTPUT_DEFAULT,
            0,
        )
    };
    let n = (n.max(0) as usize).min(buf.len());
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let exprs = match text.find('[') {
        Some(i) => &text[i..],
        None => "",
    };
    let mut out = String::with_capacity(exprs.len());
    for part in exprs.split('[').filter(|p| !p.trim().is_empty()) {
        let part = part.trim().trim_end_matches(']').trim();
        let part = if part.starts_with("counter") {
            "counter"
        } else {
            part
        };
        out.push('[');
        out.push_str(part);
        out.push(']');
    }
    out
}

/// (comment user data, expression text) of every rule `spec` should hold,
/// built exactly as a full load builds them and parsed back the way a dump
/// is parsed.
fn expected_rules(table: &Table, spec: &ChainSpec) -> Result<Vec<(Vec<u8>, String)>> {
    let chain = build_chain(table, spec)?;
    let mut out = Vec::new();
    for rs in &spec.rules {
        let rule = build_rule(&chain, rs)?;
        let mut buf = AlignedBuf::new(MAX_MSG);
        // SAFETY: buf has MAX_MSG bytes; the message is parsed back from the
        // same buffer, and the parsed rule is freed below.
        unsafe {
            let p = buf.bytes_mut().as_mut_ptr();
            rule.write(p.cast(), 0, MsgType::Add);
            let r = sys::nftnl_rule_alloc();
            if r.is_null() {
                std::process::abort();
            }
            let rc = sys::nftnl_rule_nlmsg_parse(p as *const nlmsghdr, r);
            let text = rule_text(r);
            sys::nftnl_rule_free(r);
            if rc < 0 {
                return Err(NftError::Parse("a locally built rule".into()));
            }
            out.push((
                udata_comment(sys::NFTNL_UDATA_RULE_COMMENT, &rs.tag())?,
                text,
            ));
        }
    }
    Ok(out)
}

/// A generic expression: libnftnl name plus attributes. The nftnl crate's
/// expressions always write register 1; the concatenated lookup needs the
/// 32-bit registers after it, and log/limit/reject are not in the crate.
struct RawExpr {
    name: &'static CStr,
    attrs: Vec<(u32, Attr)>,
}

enum Attr {
    U32(u32),
    U64(u64),
    Str(CString),
    Data(Vec<u8>),
}

impl Expression for RawExpr {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: allocation plus setters on the freshly allocated
        // expression; libnftnl copies the data.
        unsafe {
            let e = sys::nftnl_expr_alloc(self.name.as_ptr());
            let e = NonNull::new(e).unwrap_or_else(|| std::process::abort());
            for (attr, v) in &self.attrs {
                let a = *attr as u16;
                match v {
                    Attr::U32(x) => sys::nftnl_expr_set_u32(e.as_ptr(), a, *x),
                    Attr::U64(x) => sys::nftnl_expr_set_u64(e.as_ptr(), a, *x),
                    Attr::Str(s) => {
                        sys::nftnl_expr_set_str(e.as_ptr(), a, s.as_ptr());
                    }
                    Attr::Data(d) => {
                        sys::nftnl_expr_set(
                            e.as_ptr(),
                            a,
                            d.as_ptr() as *const c_void,
                            d.len() as u32,
                        );
                    }
                }
            }
            e
        }
    }
}

const REG1: u32 = libc::NFT_REG_1 as u32;

fn meta(key: libc::c_int, dreg: u32) -> RawExpr {
    RawExpr {
        name: c"meta",
        attrs: vec![
            (sys::NFTNL_EXPR_META_KEY, Attr::U32(key as u32)),
            (sys::NFTNL_EXPR_META_DREG, Attr::U32(dreg)),
        ],
    }
}

fn cmp(op: libc::c_int, data: Vec<u8>) -> RawExpr {
    RawExpr {
        name: c"cmp",
        attrs: vec![
            (sys::NFTNL_EXPR_CMP_SREG, Attr::U32(REG1)),
            (sys::NFTNL_EXPR_CMP_OP, Attr::U32(op as u32)),
            (sys::NFTNL_EXPR_CMP_DATA, Attr::Data(data)),
        ],
    }
}

fn payload(base: libc::c_int, offset: u32, len: u32, dreg: u32) -> RawExpr {
    RawExpr {
        name: c"payload",
        attrs: vec![
            (sys::NFTNL_EXPR_PAYLOAD_BASE, Attr::U32(base as u32)),
            (sys::NFTNL_EXPR_PAYLOAD_OFFSET, Attr::U32(offset)),
            (sys::NFTNL_EXPR_PAYLOAD_LEN, Attr::U32(len)),
            (sys::NFTNL_EXPR_PAYLOAD_DREG, Attr::U32(dreg)),
        ],
    }
}

fn lookup(set: SetId, id: u32) -> Result<RawExpr> {
    Ok(RawExpr {
        name: c"lookup",
        attrs: vec![
            (sys::NFTNL_EXPR_LOOKUP_SREG, Attr::U32(REG1)),
            (sys::NFTNL_EXPR_LOOKUP_SET, Attr::Str(cstring(set.name())?)),
            (sys::NFTNL_EXPR_LOOKUP_SET_ID, Attr::U32(id)),
            // The kernel reports the flags back; setting them here keeps a
            // locally built rule and its dump textually equal.
            (sys::NFTNL_EXPR_LOOKUP_FLAGS, Attr::U32(0)),
        ],
    })
}

fn counter() -> RawExpr {
    RawExpr {
        name: c"counter",
        attrs: vec![
            (sys::NFTNL_EXPR_CTR_PACKETS, Attr::U64(0)),
            (sys::NFTNL_EXPR_CTR_BYTES, Attr::U64(0)),
        ],
    }
}

fn reject(kind: libc::c_int, code: u8) -> RawExpr {
    RawExpr {
        name: c"reject",
        attrs: vec![
            (sys::NFTNL_EXPR_REJECT_TYPE, Attr::U32(kind as u32)),
            (sys::NFTNL_EXPR_REJECT_CODE, Attr::U32(u32::from(code))),
        ],
    }
}

/// An interface name as `meta iifname` compares it: NUL-padded to IFNAMSIZ.
fn ifname(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.resize(libc::IFNAMSIZ, 0);
    bytes
}

fn family_checks(family: Family) -> [RawExpr; 2] {
    let proto = match family {
        Family::V4 => libc::NFPROTO_IPV4,
        Family::V6 => libc::NFPROTO_IPV6,
    };
    [
        meta(libc::NFT_META_NFPROTO, REG1),
        cmp(libc::NFT_CMP_EQ, vec![proto as u8]),
    ]
}

fn daddr(family: Family) -> RawExpr {
    match family {
        Family::V4 => payload(libc::NFT_PAYLOAD_NETWORK_HEADER, 16, 4, REG1),
        Family::V6 => payload(libc::NFT_PAYLOAD_NETWORK_HEADER, 24, 16, REG1),
    }
}

fn l4proto_is(proto: Proto) -> [RawExpr; 2] {
    [
        meta(libc::NFT_META_L4PROTO, REG1),
        cmp(libc::NFT_CMP_EQ, vec![proto.number()]),
    ]
}

/// Set ids used by lookups must match the ids given in [`Nft::load_full`].
fn set_id(set: SetId) -> u32 {
    SetId::ALL.iter().position(|s| *s == set).unwrap_or(0) as u32 + 1
}

fn build_rule<'a>(chain: &'a Chain<'a>, spec: &RuleSpec) -> Result<Rule<'a>> {
    let mut r = Rule::new(chain);
    let mut exprs: Vec<RawExpr> = Vec::new();
    let mut verdict = Some(Verdict::Accept);
    match spec {
        RuleSpec::JumpFromInterface { iface, chain } => {
            exprs.push(meta(libc::NFT_META_IIFNAME, REG1));
            exprs.push(cmp(libc::NFT_CMP_EQ, ifname(iface)));
            verdict = Some(Verdict::Jump {
                chain: cstring(chain)?,
            });
        }
        RuleSpec::Intra { iface, allow } => {
            exprs.push(meta(libc::NFT_META_IIFNAME, REG1));
            exprs.push(cmp(libc::NFT_CMP_EQ, ifname(iface)));
            exprs.push(meta(libc::NFT_META_OIFNAME, REG1));
            exprs.push(cmp(libc::NFT_CMP_EQ, ifname(iface)));
            if !allow {
                verdict = Some(Verdict::Jump {
                    chain: cstring(DENY_CHAIN)?,
                });
            }
        }
        RuleSpec::HostPortAccept(hp) => {
            exprs.extend(l4proto_is(hp.proto));
            exprs.push(payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, REG1));
            if hp.ports.start == hp.ports.end {
                exprs.push(cmp(libc::NFT_CMP_EQ, hp.ports.start.to_be_bytes().to_vec()));
            } else {
                // What nft emits for `th dport A-B`: one range expression on
                // the big-endian port.
                exprs.push(RawExpr {
                    name: c"range",
                    attrs: vec![
                        (sys::NFTNL_EXPR_RANGE_SREG, Attr::U32(REG1)),
                        (sys::NFTNL_EXPR_RANGE_OP, Attr::U32(0)), // NFT_RANGE_EQ
                        (
                            sys::NFTNL_EXPR_RANGE_FROM_DATA,
                            Attr::Data(hp.ports.start.to_be_bytes().to_vec()),
                        ),
                        (
                            sys::NFTNL_EXPR_RANGE_TO_DATA,
                            Attr::Data(hp.ports.end.to_be_bytes().to_vec()),
                        ),
                    ],
                });
            }
        }
        RuleSpec::JumpDeny => {
            verdict = Some(Verdict::Jump {
                chain: cstring(DENY_CHAIN)?,
            });
        }
        RuleSpec::EstablishedAccept => {
            let bits = (1u32 << 1) | (1u32 << 2); // IP_CT_ESTABLISHED, IP_CT_RELATED
            exprs.push(RawExpr {
                name: c"ct",
                attrs: vec![
                    (sys::NFTNL_EXPR_CT_KEY, Attr::U32(libc::NFT_CT_STATE as u32)),
                    (sys::NFTNL_EXPR_CT_DREG, Attr::U32(REG1)),
                ],
            });
            exprs.push(RawExpr {
                name: c"bitwise",
                attrs: vec![
                    (sys::NFTNL_EXPR_BITWISE_SREG, Attr::U32(REG1)),
                    (sys::NFTNL_EXPR_BITWISE_DREG, Attr::U32(REG1)),
                    (sys::NFTNL_EXPR_BITWISE_LEN, Attr::U32(4)),
                    (
                        sys::NFTNL_EXPR_BITWISE_MASK,
                        Attr::Data(bits.to_ne_bytes().to_vec()),
                    ),
                    (sys::NFTNL_EXPR_BITWISE_XOR, Attr::Data(vec![0; 4])),
                ],
            });
            exprs.push(cmp(libc::NFT_CMP_NEQ, vec![0; 4]));
        }
        RuleSpec::NeighborDiscovery { icmp_type } => {
            // The same expressions nft generates, so `nft list` reads it back
            // as written.
            exprs.extend(family_checks(Family::V6));
            exprs.push(meta(libc::NFT_META_L4PROTO, REG1));
            exprs.push(cmp(libc::NFT_CMP_EQ, vec![libc::IPPROTO_ICMPV6 as u8]));
            exprs.push(payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1, REG1));
            exprs.push(cmp(libc::NFT_CMP_EQ, vec![*icmp_type]));
            exprs.push(payload(libc::NFT_PAYLOAD_NETWORK_HEADER, 7, 1, REG1));
            exprs.push(cmp(libc::NFT_CMP_EQ, vec![255]));
        }
        RuleSpec::DnsAccept { family, proto } => {
            exprs.extend(family_checks(*family));
            exprs.extend(l4proto_is(*proto));
            exprs.push(daddr(*family));
            exprs.push(lookup(SetId::dns(*family), set_id(SetId::dns(*family)))?);
            exprs.push(payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, REG1));
            exprs.push(cmp(libc::NFT_CMP_EQ, 53u16.to_be_bytes().to_vec()));
        }
        RuleSpec::ServiceAccept { family } => {
            // Concatenation: address in reg 1 (as many 32-bit registers as it
            // needs), then protocol and port in the next 32-bit registers.
            let (proto_reg, port_reg) = match family {
                Family::V4 => (libc::NFT_REG32_01, libc::NFT_REG32_02),
                // 32-bit register 12 is the start of 128-bit register 2,
                // and the kernel reports it by that name; use the same one.
                Family::V6 => (libc::NFT_REG_2, libc::NFT_REG32_05),
            };
            exprs.extend(family_checks(*family));
            exprs.push(daddr(*family));
            exprs.push(meta(libc::NFT_META_L4PROTO, proto_reg as u32));
            exprs.push(payload(
                libc::NFT_PAYLOAD_TRANSPORT_HEADER,
                2,
                2,
                port_reg as u32,
            ));
            exprs.push(lookup(SetId::svc(*family), set_id(SetId::svc(*family)))?);
        }
        RuleSpec::AllPortsAccept { family, proto } => {
            exprs.extend(l4proto_is(*proto));
            exprs.extend(family_checks(*family));
            exprs.push(daddr(*family));
            exprs.push(lookup(SetId::any(*family), set_id(SetId::any(*family)))?);
        }
        RuleSpec::Log(l) => {
            exprs.push(RawExpr {
                name: c"limit",
                attrs: vec![
                    (sys::NFTNL_EXPR_LIMIT_RATE, Attr::U64(u64::from(l.rate))),
                    (sys::NFTNL_EXPR_LIMIT_UNIT, Attr::U64(1)),
                    (sys::NFTNL_EXPR_LIMIT_BURST, Attr::U32(l.burst)),
                    (
                        sys::NFTNL_EXPR_LIMIT_TYPE,
                        Attr::U32(libc::NFT_LIMIT_PKTS as u32),
                    ),
                    (sys::NFTNL_EXPR_LIMIT_FLAGS, Attr::U32(0)),
                ],
            });
            exprs.push(RawExpr {
                name: c"log",
                attrs: vec![
                    (sys::NFTNL_EXPR_LOG_PREFIX, Attr::Str(cstring(&l.prefix)?)),
                    // The kernel's default (warning), stated so the dump
                    // matches what was sent.
                    (sys::NFTNL_EXPR_LOG_LEVEL, Attr::U32(4)),
                ],
            });
            verdict = None;
        }
        RuleSpec::RejectTcp => {
            exprs.extend(l4proto_is(Proto::Tcp));
            exprs.push(counter());
            exprs.push(reject(libc::NFT_REJECT_TCP_RST, 0));
            verdict = None;
        }
        RuleSpec::RejectOther => {
            exprs.push(counter());
            exprs.push(reject(
                libc::NFT_REJECT_ICMPX_UNREACH,
                libc::NFT_REJECT_ICMPX_ADMIN_PROHIBITED as u8,
            ));
            verdict = None;
        }
        RuleSpec::Drop => {
            exprs.push(counter());
            verdict = Some(Verdict::Drop);
        }
    }
    for e in &exprs {
        r.add_expr(e);
    }
    if let Some(v) = verdict {
        r.add_expr(&v);
    }
    r.set_comment(cstring(&spec.tag())?)
        .map_err(|e| NftError::BadName(e.to_string()))?;
    Ok(r)
}

/// A byte buffer aligned for `nlmsghdr`.
struct AlignedBuf {
    words: Vec<u64>,
}

impl AlignedBuf {
    fn new(bytes: usize) -> AlignedBuf {
        AlignedBuf {
            words: vec![0; bytes.div_ceil(8)],
        }
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: u64 storage reinterpreted as bytes; length in bytes.
        unsafe {
            std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.words.len() * 8)
        }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe {
            std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, self.words.len() * 8)
        }
    }
}

/// A batch built in one contiguous buffer, with a description per message
/// so an error can name the message that caused it.
struct BatchBuf {
    buf: AlignedBuf,
    len: usize,
    ops: Vec<String>,
    first_seq: u32,
}

struct FinishedBatch {
    bytes: Vec<u8>,
    ops: Vec<String>,
    first_seq: u32,
}

impl BatchBuf {
    fn new(nft: &mut Nft) -> BatchBuf {
        let first_seq = nft.seq.wrapping_add(2);
        // Reserve the sequence numbers: begin, messages, end.
        let mut b = BatchBuf {
            buf: AlignedBuf::new(MAX_MSG * 2),
            len: 0,
            ops: Vec::new(),
            first_seq,
        };
        let begin_seq = nft.next_seq();
        b.raw_push(|buf| unsafe {
            // SAFETY: room for MAX_MSG bytes.
            sys::nftnl_batch_begin(buf, begin_seq)
        });
        b
    }

    fn count(&self) -> usize {
        self.ops.len()
    }

    fn len(&self) -> usize {
        self.len
    }

    fn raw_push(&mut self, f: impl FnOnce(*mut c_char) -> *mut nlmsghdr) {
        if self.buf.words.len() * 8 < self.len + MAX_MSG {
            let grow = (self.buf.words.len() * 8).max(MAX_MSG * 2);
            self.buf.words.resize(self.buf.words.len() + grow / 8, 0);
        }
        let at = self.len;
        let ptr = self.buf.bytes_mut()[at..].as_mut_ptr() as *mut c_char;
        let h = f(ptr);
        // SAFETY: f returned the header it built at `ptr`.
        let n = unsafe { (*h).nlmsg_len } as usize;
        self.len += n.div_ceil(4) * 4;
    }

    /// Appends one message. The closure gets a buffer with room for
    /// [`MAX_MSG`] bytes and the message's sequence number.
    fn push(&mut self, op: String, f: impl FnOnce(*mut c_char, u32) -> *mut nlmsghdr) {
        let seq = self.first_seq.wrapping_add(self.ops.len() as u32);
        self.raw_push(|buf| f(buf, seq));
        self.ops.push(op);
    }

    fn finish(mut self) -> FinishedBatch {
        let end_seq = self.first_seq.wrapping_add(self.ops.len() as u32);
        self.raw_push(|buf| unsafe {
            // SAFETY: room for MAX_MSG bytes.
            sys::nftnl_batch_end(buf, end_seq)
        });
        FinishedBatch {
            bytes: self.buf.bytes()[..self.len].to_vec(),
            ops: self.ops,
            first_seq: self.first_seq,
        }
    }
}

pub(crate) fn header(msg: &[u8]) -> nlmsghdr {
    // SAFETY: `messages` only yields slices of at least a header's length;
    // read_unaligned copes with any alignment.
    unsafe { std::ptr::read_unaligned(msg.as_ptr() as *const nlmsghdr) }
}

/// Splits a receive buffer into netlink messages.
pub(crate) fn messages(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < size_of::<nlmsghdr>() {
            return None;
        }
        let len = header(rest).nlmsg_len as usize;
        if len < size_of::<nlmsghdr>() || len > rest.len() {
            return None;
        }
        let msg = &rest[..len];
        rest = &rest[(len.div_ceil(4) * 4).min(rest.len())..];
        Some(msg)
    })
}

struct AckError {
    seq: u32,
    errno: i32,
    detail: Option<String>,
}

/// Reads an NLMSG_ERROR message (an ack when errno is 0).
fn parse_error(msg: &[u8]) -> Option<AckError> {
    let h = header(msg);
    if h.nlmsg_type as libc::c_int != libc::NLMSG_ERROR {
        return None;
    }
    let hl = size_of::<nlmsghdr>();
    let err_i32 = i32::from_ne_bytes(msg.get(hl..hl + 4)?.try_into().ok()?);
    let orig = msg.get(hl + 4..hl + 4 + hl)?;
    let orig_seq = u32::from_ne_bytes(orig.get(8..12)?.try_into().ok()?);
    let mut detail = None;
    if h.nlmsg_flags & NLM_F_ACK_TLVS != 0 {
        // TLVs follow the original header (capped) or the whole original
        // message (not capped).
        let orig_len = u32::from_ne_bytes(orig.get(0..4)?.try_into().ok()?) as usize;
        let mut off = hl
            + 4
            + if h.nlmsg_flags & NLM_F_CAPPED != 0 {
                hl
            } else {
                orig_len
            };
        off = off.div_ceil(4) * 4;
        while off + 4 <= msg.len() {
            let alen = u16::from_ne_bytes([msg[off], msg[off + 1]]) as usize;
            let atype = u16::from_ne_bytes([msg[off + 2], msg[off + 3]]) & 0x3fff;
            if alen < 4 || off + alen > msg.len() {
                break;
            }
            if atype == NLMSGERR_ATTR_MSG {
                let s = &msg[off + 4..off + alen];
                let s = s.split(|b| *b == 0).next().unwrap_or(&[]);
                detail = Some(String::from_utf8_lossy(s).into_owned());
            }
            off += alen.div_ceil(4) * 4;
        }
    }
    Some(AckError {
        seq: orig_seq,
        errno: -err_i32,
        detail,
    })
}
