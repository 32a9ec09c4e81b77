//! Element keys <-> the bytes the kernel stores. Pure, so it is tested on
//! every platform and the netlink code only moves bytes.
//!
//! Layouts (each concatenated field is padded to 4 bytes, as nftables does):
//! - service sets (pipapo): `addr . proto(1 byte + 3 pad) . port(2 bytes BE + 2 pad)`,
//!   always sent with KEY and KEY_END, even for a single value;
//! - all-ports sets (rbtree): the address, plus a second element flagged
//!   interval-end holding `last + 1` (omitted when the range reaches the top
//!   of the address space);
//! - DNS sets: the address.

use std::net::IpAddr;

use egress_core::ruleset::{addr_value, AddrRange, ElementKey, Family, SetId, SetKind};
use egress_core::{PortRange, Proto};

/// Key length in bytes of a set.
pub fn key_len(set: SetId) -> u32 {
    let addr = match set.family() {
        Family::V4 => 4,
        Family::V6 => 16,
    };
    match set.kind() {
        SetKind::Service => addr + 8,
        SetKind::AddressRange | SetKind::Address => addr,
    }
}

/// Datatype id nft uses to print the key (`ipv4_addr` = 7, `ipv6_addr` = 8,
/// `inet_proto` = 12, `inet_service` = 13; concatenations shift each
/// previous type left by 6 bits).
pub fn key_type(set: SetId) -> u32 {
    let addr: u32 = match set.family() {
        Family::V4 => 7,
        Family::V6 => 8,
    };
    match set.kind() {
        SetKind::Service => (((addr << 6) | 12) << 6) | 13,
        SetKind::AddressRange | SetKind::Address => addr,
    }
}

/// Field lengths of a concatenated key (for NFTNL_SET_DESC_CONCAT).
pub fn concat_fields(set: SetId) -> Option<[u8; 3]> {
    match (set.kind(), set.family()) {
        (SetKind::Service, Family::V4) => Some([4, 1, 2]),
        (SetKind::Service, Family::V6) => Some([16, 1, 2]),
        _ => None,
    }
}

fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn svc_bytes(addr: &IpAddr, proto: Proto, port: u16) -> Vec<u8> {
    let mut v = addr_bytes(addr);
    v.extend_from_slice(&[proto.number(), 0, 0, 0]);
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v
}

/// One kernel element as it goes over netlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawElement {
    /// NFTA_SET_ELEM_KEY.
    pub key: Vec<u8>,
    /// NFTA_SET_ELEM_KEY_END (pipapo only).
    pub key_end: Option<Vec<u8>>,
    /// NFT_SET_ELEM_INTERVAL_END (rbtree end marker).
    pub interval_end: bool,
    /// The interval runs to the top of the address space (no end element);
    /// recorded in user data so `nft list` prints it as a prefix.
    pub open_end: bool,
}

/// The kernel elements of one key (one or two).
pub fn encode(set: SetId, key: &ElementKey) -> Vec<RawElement> {
    match key {
        ElementKey::Service { addr, proto, ports } => vec![RawElement {
            key: svc_bytes(&addr.start, *proto, ports.start),
            key_end: Some(svc_bytes(&addr.end, *proto, ports.end)),
            interval_end: false,
            open_end: false,
        }],
        ElementKey::Range(r) => {
            let fam = set.family();
            let end = addr_value(&r.end);
            if end == fam.max_value() {
                vec![RawElement {
                    key: addr_bytes(&r.start),
                    key_end: None,
                    interval_end: false,
                    open_end: true,
                }]
            } else {
                vec![
                    RawElement {
                        key: addr_bytes(&r.start),
                        key_end: None,
                        interval_end: false,
                        open_end: false,
                    },
                    RawElement {
                        key: addr_bytes(&fam.addr(end + 1)),
                        key_end: None,
                        interval_end: true,
                        open_end: false,
                    },
                ]
            }
        }
        ElementKey::Addr(a) => vec![RawElement {
            key: addr_bytes(a),
            key_end: None,
            interval_end: false,
            open_end: false,
        }],
    }
}

/// Decoding failures: the set holds something this version did not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("set {set}: cannot decode element key {hex}: {why}")]
pub struct DecodeError {
    /// Set name.
    pub set: &'static str,
    /// The key bytes in hex.
    pub hex: String,
    /// What was wrong.
    pub why: &'static str,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_addr(set: SetId, b: &[u8]) -> Result<IpAddr, DecodeError> {
    let err = |why| DecodeError {
        set: set.name(),
        hex: hex(b),
        why,
    };
    match set.family() {
        Family::V4 => {
            let a: [u8; 4] = b
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| err("short"))?;
            Ok(IpAddr::from(a))
        }
        Family::V6 => {
            let a: [u8; 16] = b
                .get(..16)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| err("short"))?;
            Ok(IpAddr::from(a))
        }
    }
}

fn decode_svc(set: SetId, b: &[u8]) -> Result<(IpAddr, Proto, u16), DecodeError> {
    let err = |why| DecodeError {
        set: set.name(),
        hex: hex(b),
        why,
    };
    if b.len() != key_len(set) as usize {
        return Err(err("wrong length"));
    }
    let alen = b.len() - 8;
    let addr = decode_addr(set, &b[..alen])?;
    let proto = Proto::from_number(b[alen]).ok_or_else(|| err("unknown protocol"))?;
    let port = u16::from_be_bytes([b[alen + 4], b[alen + 5]]);
    Ok((addr, proto, port))
}

/// One element as dumped by the kernel, before pairing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedElement<A> {
    /// The element as stored.
    pub raw: RawElement,
    /// Extra attributes carried along (timeouts).
    pub attrs: A,
}

/// Turns dumped elements back into keys. rbtree sets dump start and end
/// elements separately and in no promised order; they are sorted and paired
/// here (an end at the same key as a start sorts first, so adjacent ranges
/// pair correctly). A lone end (nft writes one at 0.0.0.0) is ignored.
pub fn decode<A: Clone>(
    set: SetId,
    dumped: &[DumpedElement<A>],
) -> Result<Vec<(ElementKey, A)>, DecodeError> {
    let mut out = Vec::with_capacity(dumped.len());
    match set.kind() {
        SetKind::Service => {
            for d in dumped {
                let (a1, p1, port1) = decode_svc(set, &d.raw.key)?;
                let (a2, p2, port2) = match &d.raw.key_end {
                    Some(e) => decode_svc(set, e)?,
                    None => (a1, p1, port1),
                };
                if p1 != p2 {
                    return Err(DecodeError {
                        set: set.name(),
                        hex: hex(&d.raw.key),
                        why: "protocol range",
                    });
                }
                out.push((
                    ElementKey::Service {
                        addr: AddrRange { start: a1, end: a2 },
                        proto: p1,
                        ports: PortRange {
                            start: port1,
                            end: port2,
                        },
                    },
                    d.attrs.clone(),
                ));
            }
        }
        SetKind::Address => {
            for d in dumped {
                out.push((
                    ElementKey::Addr(decode_addr(set, &d.raw.key)?),
                    d.attrs.clone(),
                ));
            }
        }
        SetKind::AddressRange => {
            let mut items: Vec<(u128, bool, &DumpedElement<A>)> = Vec::with_capacity(dumped.len());
            for d in dumped {
                let a = decode_addr(set, &d.raw.key)?;
                items.push((addr_value(&a), !d.raw.interval_end, d));
            }
            // (key, is_start): false < true, so ends come before starts.
            items.sort_by_key(|(k, start, _)| (*k, *start));
            let fam = set.family();
            let mut i = 0;
            while i < items.len() {
                let (k, is_start, d) = items[i];
                if !is_start {
                    i += 1;
                    continue;
                }
                let end = match items.get(i + 1) {
                    Some((e, false, _)) if *e > k => {
                        i += 1;
                        e - 1
                    }
                    _ => fam.max_value(),
                };
                out.push((
                    ElementKey::Range(AddrRange {
                        start: fam.addr(k),
                        end: fam.addr(end),
                    }),
                    d.attrs.clone(),
                ));
                i += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn roundtrip(set: SetId, key: ElementKey) {
        let raws = encode(set, &key);
        let dumped: Vec<DumpedElement<()>> = raws
            .into_iter()
            .rev() // the kernel promises no order
            .map(|raw| DumpedElement { raw, attrs: () })
            .collect();
        let back = decode(set, &dumped).unwrap();
        assert_eq!(back, vec![(key, ())]);
    }

    #[test]
    fn service_keys_have_the_nft_layout() {
        let key = ElementKey::Service {
            addr: AddrRange::single(ip("1.2.3.4")),
            proto: Proto::Udp,
            ports: PortRange::single(53),
        };
        let raw = encode(SetId::Svc4, &key);
        assert_eq!(raw.len(), 1);
        // Same bytes nft printed for `1.2.3.4 . udp . 53`:
        // element 04030201 00000011 00003500 (little-endian words).
        assert_eq!(raw[0].key, vec![1, 2, 3, 4, 17, 0, 0, 0, 0, 53, 0, 0]);
        assert_eq!(raw[0].key_end.as_deref(), Some(&raw[0].key[..]));
        roundtrip(SetId::Svc4, key);
        roundtrip(
            SetId::Svc6,
            ElementKey::Service {
                addr: AddrRange {
                    start: ip("2001:db8::"),
                    end: ip("2001:db8::ffff"),
                },
                proto: Proto::Tcp,
                ports: PortRange {
                    start: 8000,
                    end: 8100,
                },
            },
        );
    }

    #[test]
    fn ranges_use_an_end_element_except_at_the_top() {
        let r = ElementKey::Range(AddrRange {
            start: ip("10.0.0.0"),
            end: ip("10.255.255.255"),
        });
        let raw = encode(SetId::Any4, &r);
        assert_eq!(raw.len(), 2);
        assert_eq!(raw[1].key, vec![11, 0, 0, 0]);
        assert!(raw[1].interval_end);
        roundtrip(SetId::Any4, r);
        let top = ElementKey::Range(AddrRange {
            start: ip("255.255.255.0"),
            end: ip("255.255.255.255"),
        });
        let raw = encode(SetId::Any4, &top);
        assert_eq!(raw.len(), 1);
        assert!(raw[0].open_end);
        roundtrip(SetId::Any4, top);
        roundtrip(
            SetId::Any6,
            ElementKey::Range(AddrRange {
                start: ip("::"),
                end: ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            }),
        );
    }

    #[test]
    fn adjacent_ranges_and_nft_markers_pair_correctly() {
        let a = ElementKey::Range(AddrRange {
            start: ip("1.2.3.0"),
            end: ip("1.2.3.5"),
        });
        let b = ElementKey::Range(AddrRange {
            start: ip("1.2.3.6"),
            end: ip("1.2.3.9"),
        });
        let mut dumped: Vec<DumpedElement<u8>> = Vec::new();
        for (k, tag) in [(&a, 1u8), (&b, 2u8)] {
            for raw in encode(SetId::Any4, k) {
                dumped.push(DumpedElement { raw, attrs: tag });
            }
        }
        // nft's own leading interval-end marker at 0.0.0.0.
        dumped.push(DumpedElement {
            raw: RawElement {
                key: vec![0, 0, 0, 0],
                key_end: None,
                interval_end: true,
                open_end: false,
            },
            attrs: 0,
        });
        dumped.reverse();
        let back = decode(SetId::Any4, &dumped).unwrap();
        assert_eq!(back, vec![(a, 1), (b, 2)]);
    }

    #[test]
    fn garbage_is_an_error_not_a_guess() {
        let d = DumpedElement {
            raw: RawElement {
                key: vec![1, 2, 3],
                key_end: None,
                interval_end: false,
                open_end: false,
            },
            attrs: (),
        };
        assert!(decode(SetId::Svc4, std::slice::from_ref(&d)).is_err());
        assert!(decode(SetId::Dns4, &[d]).is_err());
        let bad_proto = DumpedElement {
            raw: RawElement {
                key: vec![1, 2, 3, 4, 1, 0, 0, 0, 0, 53, 0, 0],
                key_end: None,
                interval_end: false,
                open_end: false,
            },
            attrs: (),
        };
        // The error is built only on failure (not eagerly for every
        // element read back), and still names the bytes and the reason.
        let e = decode(SetId::Svc4, &[bad_proto]).unwrap_err();
        assert_eq!(e.why, "unknown protocol");
        assert_eq!(e.hex, "010203040100000000350000");
    }

    #[test]
    fn key_types_match_nft() {
        // nft's concat type for ipv4_addr . inet_proto . inet_service.
        assert_eq!(key_type(SetId::Svc4), 29453);
        assert_eq!(key_len(SetId::Svc4), 12);
        assert_eq!(key_len(SetId::Svc6), 24);
        assert_eq!(key_len(SetId::Any6), 16);
    }
}
