//! The ruleset as nft text: what `openclaw-egress show` prints and what
//! `nft -f` can load. It follows `nft list table` closely so that what
//! people read here is what they later see in the kernel.

use std::fmt::Write as _;
use std::time::Duration;

use crate::ruleset::{
    ChainSpec, Elements, Hook, Layout, RuleSpec, Ruleset, SetId, SetKind, BASE_PRIORITY,
    POLICY_CHAIN,
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
        RuleSpec::JumpFromInterface { iface } => {
            format!("iifname {} jump {POLICY_CHAIN}", quote(iface))
        }
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
