//! The ruleset as nft text: what `openclaw-egress show` prints and what
//! `nft -f` can load. It follows `nft list table` closely so that what
//! people read here is what they later see in the kernel.

use std::fmt::Write as _;
use std::time::Duration;

use crate::ruleset::{
    ChainSpec, Elements, Hook, Layout, RuleSpec, Ruleset, SetId, SetKind, BASE_PRIORITY, DENY_CHAIN,
};

/// nft's duration syntax (`1h2m3s`, `250ms`).
pub fn nft_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= len {
            let _ = write!(out, "{}{unit}", ms / len);
            ms %= len;
        }
    }
    if ms > 0 {
        let _ = write!(out, "{ms}ms");
    }
    out
}

/// nft quotes strings with `"`; the config forbids `"` in what reaches here,
/// but comments come from hostnames and entries, so escape defensively.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace(['"', '\\'], "_"))
}

fn set_type(set: SetId) -> &'static str {
    match set {
        SetId::Svc4 => "ipv4_addr . inet_proto . inet_service",
        SetId::Svc6 => "ipv6_addr . inet_proto . inet_service",
        SetId::Any4 | SetId::Dns4 => "ipv4_addr",
        SetId::Any6 | SetId::Dns6 => "ipv6_addr",
    }
}

fn set_flags(set: SetId) -> Option<&'static str> {
    match set.kind() {
        SetKind::Service | SetKind::AddressRange => Some("interval,timeout"),
        SetKind::Address => None,
    }
}

/// The text of one rule, without its comment.
pub fn rule_text(rule: &RuleSpec) -> String {
    match rule {
        RuleSpec::JumpFromInterface { iface, chain } => {
            format!("iifname {} jump {chain}", quote(iface))
        }
        RuleSpec::Intra { iface, allow } => format!(
            "iifname {} oifname {} {}",
            quote(iface),
            quote(iface),
            if *allow {
                "accept".to_owned()
            } else {
                format!("jump {DENY_CHAIN}")
            }
        ),
        RuleSpec::HostPortAccept(hp) => {
            format!("{} dport {} accept", hp.proto, hp.ports)
        }
        RuleSpec::JumpDeny => format!("jump {DENY_CHAIN}"),
        RuleSpec::EstablishedAccept => "ct state established,related accept".into(),
        RuleSpec::NeighborDiscovery { icmp_type } => format!(
            "icmpv6 type {} ip6 hoplimit 255 accept",
            crate::ruleset::nd_name(*icmp_type)
        ),
        RuleSpec::DnsAccept { family, proto } => format!(
            "{} daddr @{} {proto} dport 53 accept",
            family.nft_keyword(),
            SetId::dns(*family).name()
        ),
        RuleSpec::ServiceAccept { family } => format!(
            "{} daddr . meta l4proto . th dport @{} accept",
            family.nft_keyword(),
            SetId::svc(*family).name()
        ),
        RuleSpec::AllPortsAccept { family, proto } => format!(
            "meta l4proto {proto} {} daddr @{} accept",
            family.nft_keyword(),
            SetId::any(*family).name()
        ),
        RuleSpec::Log(l) => format!(
            "limit rate {}/second burst {} packets log prefix {}",
            l.rate,
            l.burst,
            quote(&l.prefix)
        ),
        RuleSpec::RejectTcp => "meta l4proto tcp counter reject with tcp reset".into(),
        RuleSpec::RejectOther => "counter reject with icmpx admin-prohibited".into(),
        RuleSpec::Drop => "counter drop".into(),
    }
}

fn hook_name(h: Hook) -> &'static str {
    match h {
        Hook::Forward => "forward",
        Hook::Input => "input",
    }
}

fn write_chain(out: &mut String, chain: &ChainSpec) {
    let _ = writeln!(out, "\tchain {} {{", chain.name);
    if let Some(hook) = chain.hook {
        let _ = writeln!(
            out,
            "\t\ttype filter hook {} priority {BASE_PRIORITY}; policy accept;",
            hook_name(hook)
        );
    }
    for rule in &chain.rules {
        let _ = writeln!(
            out,
            "\t\t{} comment {}",
            rule_text(rule),
            quote(&rule.tag())
        );
    }
    let _ = writeln!(out, "\t}}");
}

fn write_table(out: &mut String, layout: &Layout, elements: Option<&Elements>, comment: bool) {
    let _ = writeln!(out, "table inet {} {{", layout.table);
    if comment {
        let _ = writeln!(out, "\tcomment {}", quote(&layout.table_comment()));
    }
    for set in SetId::ALL {
        let _ = writeln!(out, "\tset {} {{", set.name());
        let _ = writeln!(out, "\t\ttype {}", set_type(set));
        if let Some(flags) = set_flags(set) {
            let _ = writeln!(out, "\t\tflags {flags}");
        }
        if let Some(elements) = elements {
            let items: Vec<String> = elements
                .set(set)
                .map(|(key, attrs)| {
                    let mut s = key.to_string();
                    if let Some(t) = attrs.timeout {
                        let _ = write!(s, " timeout {}", nft_duration(t));
                    }
                    if !attrs.comment.is_empty() {
                        let _ = write!(s, " comment {}", quote(&attrs.comment));
                    }
                    s
                })
                .collect();
            if !items.is_empty() {
                let _ = writeln!(out, "\t\telements = {{ {} }}", items.join(",\n\t\t\t     "));
            }
        }
        let _ = writeln!(out, "\t}}");
    }
    for chain in layout.chains() {
        write_chain(out, &chain);
    }
    let _ = writeln!(out, "}}");
}

/// The layout alone (no elements, no table comment): the input of the
/// layout fingerprint.
pub fn layout_text(layout: &Layout) -> String {
    let mut out = String::new();
    write_table(&mut out, layout, None, false);
    out
}

/// The whole ruleset as an `nft -f` file.
pub fn ruleset_text(ruleset: &Ruleset) -> String {
    let mut out = String::new();
    write_table(&mut out, &ruleset.layout, Some(&ruleset.elements), true);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, HostPort, Intra};
    use crate::ruleset::{AddrRange, ElementAttrs, ElementKey, LogSpec};
    use crate::{PortRange, Proto};

    fn layout(action: Action, log: bool) -> Layout {
        Layout {
            table: "openclaw_egress".into(),
            interfaces: vec!["openclaw-egress".into()],
            action,
            log: log.then(|| LogSpec {
                rate: 5,
                burst: 10,
                prefix: "openclaw-egress deny: ".into(),
            }),
            intra: Intra::Deny,
            host_ports: vec![HostPort {
                proto: Proto::Tcp,
                ports: PortRange::single(8080),
            }],
        }
    }

    /// The whole rendering, as a person reads it in `show` (and as
    /// `nft list table` prints the same table: checked against the kernel in
    /// crates/nft/tests/kernel.rs).
    #[test]
    fn snapshot_of_a_small_ruleset() {
        let mut elements = Elements::new();
        elements.insert(
            SetId::Svc4,
            ElementKey::Service {
                addr: AddrRange::single("198.18.1.10".parse().unwrap()),
                proto: Proto::Tcp,
                ports: PortRange::single(443),
            },
            ElementAttrs {
                timeout: Some(Duration::from_secs(330)),
                comment: "api.example".into(),
            },
        );
        elements.insert(
            SetId::Any6,
            ElementKey::Range(AddrRange {
                start: "2001:db8::".parse().unwrap(),
                end: "2001:db8::ffff".parse().unwrap(),
            }),
            ElementAttrs {
                timeout: None,
                comment: "2001:db8::/112".into(),
            },
        );
        elements.insert(
            SetId::Dns4,
            ElementKey::Addr("198.18.1.53".parse().unwrap()),
            ElementAttrs {
                timeout: None,
                comment: "dns server".into(),
            },
        );
        let rs = Ruleset {
            layout: layout(Action::Reject, true),
            elements,
        };
        let want = format!(
            r#"table inet openclaw_egress {{
	comment "{}"
	set allow_v4 {{
		type ipv4_addr . inet_proto . inet_service
		flags interval,timeout
		elements = {{ 198.18.1.10 . tcp . 443 timeout 5m30s comment "api.example" }}
	}}
	set allow_v6 {{
		type ipv6_addr . inet_proto . inet_service
		flags interval,timeout
	}}
	set allow_all_ports_v4 {{
		type ipv4_addr
		flags interval,timeout
	}}
	set allow_all_ports_v6 {{
		type ipv6_addr
		flags interval,timeout
		elements = {{ 2001:db8::/112 comment "2001:db8::/112" }}
	}}
	set dns_v4 {{
		type ipv4_addr
		elements = {{ 198.18.1.53 comment "dns server" }}
	}}
	set dns_v6 {{
		type ipv6_addr
	}}
	chain forward {{
		type filter hook forward priority -10; policy accept;
		iifname "openclaw-egress" oifname "openclaw-egress" jump deny comment "containers of the network: denied"
		iifname "openclaw-egress" jump egress comment "traffic from the agent network"
	}}
	chain input {{
		type filter hook input priority -10; policy accept;
		iifname "openclaw-egress" jump host comment "traffic from the agent network to the host"
	}}
	chain egress {{
		ct state established,related accept comment "replies to allowed connections"
		icmpv6 type nd-router-solicit ip6 hoplimit 255 accept comment "ipv6 neighbour discovery (nd-router-solicit)"
		icmpv6 type nd-neighbor-solicit ip6 hoplimit 255 accept comment "ipv6 neighbour discovery (nd-neighbor-solicit)"
		icmpv6 type nd-neighbor-advert ip6 hoplimit 255 accept comment "ipv6 neighbour discovery (nd-neighbor-advert)"
		ip daddr @dns_v4 udp dport 53 accept comment "dns udp to allowed servers (ip)"
		ip daddr @dns_v4 tcp dport 53 accept comment "dns tcp to allowed servers (ip)"
		ip6 daddr @dns_v6 udp dport 53 accept comment "dns udp to allowed servers (ip6)"
		ip6 daddr @dns_v6 tcp dport 53 accept comment "dns tcp to allowed servers (ip6)"
		ip daddr . meta l4proto . th dport @allow_v4 accept comment "allowlisted address:port (ip)"
		ip6 daddr . meta l4proto . th dport @allow_v6 accept comment "allowlisted address:port (ip6)"
		meta l4proto tcp ip daddr @allow_all_ports_v4 accept comment "allowlisted address, any tcp port (ip)"
		meta l4proto udp ip daddr @allow_all_ports_v4 accept comment "allowlisted address, any udp port (ip)"
		meta l4proto tcp ip6 daddr @allow_all_ports_v6 accept comment "allowlisted address, any tcp port (ip6)"
		meta l4proto udp ip6 daddr @allow_all_ports_v6 accept comment "allowlisted address, any udp port (ip6)"
		jump deny comment "everything else is denied"
	}}
	chain host {{
		ct state established,related accept comment "replies to allowed connections"
		icmpv6 type nd-router-solicit ip6 hoplimit 255 accept comment "ipv6 neighbour discovery (nd-router-solicit)"
		icmpv6 type nd-neighbor-solicit ip6 hoplimit 255 accept comment "ipv6 neighbour discovery (nd-neighbor-solicit)"
		icmpv6 type nd-neighbor-advert ip6 hoplimit 255 accept comment "ipv6 neighbour discovery (nd-neighbor-advert)"
		ip daddr @dns_v4 udp dport 53 accept comment "dns udp to allowed servers (ip)"
		ip daddr @dns_v4 tcp dport 53 accept comment "dns tcp to allowed servers (ip)"
		ip6 daddr @dns_v6 udp dport 53 accept comment "dns udp to allowed servers (ip6)"
		ip6 daddr @dns_v6 tcp dport 53 accept comment "dns tcp to allowed servers (ip6)"
		tcp dport 8080 accept comment "host port tcp/8080"
		jump deny comment "everything else is denied"
	}}
	chain deny {{
		limit rate 5/second burst 10 packets log prefix "openclaw-egress deny: " comment "log denied (rate-limited)"
		meta l4proto tcp counter reject with tcp reset comment "deny: tcp reset"
		counter reject with icmpx admin-prohibited comment "deny: icmp admin-prohibited"
	}}
}}
"#,
            rs.layout.table_comment()
        );
        assert_eq!(ruleset_text(&rs), want);
    }

    #[test]
    fn intra_allow_and_host_port_ranges() {
        let mut l = layout(Action::Reject, false);
        l.intra = Intra::Allow;
        l.host_ports = vec![
            HostPort {
                proto: Proto::Udp,
                ports: PortRange {
                    start: 5000,
                    end: 5010,
                },
            },
            HostPort {
                proto: Proto::Tcp,
                ports: PortRange::single(22),
            },
        ];
        l.interfaces = vec!["a".into(), "b".into()];
        let text = layout_text(&l);
        for want in [
            "iifname \"a\" oifname \"a\" accept comment \"containers of the network: allowed\"",
            "iifname \"b\" oifname \"b\" accept comment",
            "iifname \"b\" jump host comment",
            "udp dport 5000-5010 accept comment \"host port udp/5000-5010\"",
            "tcp dport 22 accept comment \"host port tcp/22\"",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        // Each interface's intra rule comes before its jump into the policy.
        let a_intra = text.find("iifname \"a\" oifname").unwrap();
        let a_jump = text.find("iifname \"a\" jump egress").unwrap();
        assert!(a_intra < a_jump, "{text}");
        assert_ne!(l.fingerprint(), layout(Action::Reject, false).fingerprint());
    }

    #[test]
    fn drop_without_logging_ends_in_one_counted_drop() {
        let text = layout_text(&layout(Action::Drop, false));
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        assert_eq!(
            tail,
            ["}", "\t}", "\t\tcounter drop comment \"deny: drop\""],
            "{text}"
        );
        assert!(!text.contains("log prefix"), "{text}");
        assert!(!text.contains("reject"), "{text}");
    }

    #[test]
    fn the_fingerprint_follows_the_layout_not_the_elements() {
        let a = layout(Action::Reject, true);
        let mut b = a.clone();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.interfaces = vec!["other0".into()];
        assert_ne!(a.fingerprint(), b.fingerprint());
        let c = layout(Action::Drop, true);
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn durations_use_nft_syntax() {
        assert_eq!(nft_duration(Duration::from_millis(333_300)), "5m33s300ms");
        assert_eq!(nft_duration(Duration::from_secs(90_061)), "1d1h1m1s");
        assert_eq!(nft_duration(Duration::ZERO), "0s");
    }
}
