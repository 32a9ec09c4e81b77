//! The comparisons' rulesets, as `nft -f` text.
//!
//! **The scripts' method.** `apply-rules-linux.sh` resolved each allowlist
//! host with `dig`, wrote one rule per address and port into a chain, and
//! reloaded the whole table: `nft delete table inet openclaw_egress`, then
//! `nft -f` of the new text. Its source is not in this repository; the
//! reference documentation gives its shape (IPv4 only, established traffic
//! and port 53 accepted, a final `drop`, forward hook on the bridge). This is
//! the cheapest form of that shape: the interface is matched once in the
//! base chain, so each address rule is only `ip daddr A tcp dport P accept`.
//! Any extra match per rule the real script had would make it slower, so
//! the comparison errs in the scripts' favour.
//!
//! **The floor.** `nft -f` loading the same elements into one set: the least
//! any tool can do to put them into the kernel.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// The scripts' ruleset: one rule per `(address, port)`, in order.
pub fn scripts_ruleset(table: &str, interface: &str, entries: &[(Ipv4Addr, u16)]) -> String {
    let mut s = String::with_capacity(64 * entries.len() + 512);
    let _ = write!(
        s,
        "table inet {table} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority 0; policy accept;\n\
         \t\tiifname \"{interface}\" jump egress\n\
         \t}}\n\
         \tchain egress {{\n\
         \t\tct state established,related accept\n\
         \t\tudp dport 53 accept\n\
         \t\ttcp dport 53 accept\n"
    );
    for (addr, port) in entries {
        let _ = writeln!(s, "\t\tip daddr {addr} tcp dport {port} accept");
    }
    s.push_str("\t\tdrop\n\t}\n}\n");
    s
}

/// The floor: the same `(address, port)` pairs as elements of one set with
/// the type and flags of our `allow_v4`, and nothing else.
pub fn floor_ruleset(table: &str, entries: &[(Ipv4Addr, u16)]) -> String {
    let mut s = String::with_capacity(32 * entries.len() + 256);
    let _ = write!(
        s,
        "table inet {table} {{\n\
         \tset s {{\n\
         \t\ttype ipv4_addr . inet_proto . inet_service; flags interval,timeout;\n"
    );
    if !entries.is_empty() {
        s.push_str("\t\telements = {\n");
        let body: Vec<String> = entries
            .iter()
            .map(|(a, p)| format!("\t\t\t{a} . tcp . {p}"))
            .collect();
        s.push_str(&body.join(",\n"));
        s.push_str("\n\t\t}\n");
    }
    s.push_str("\t}\n}\n");
    s
}

/// `nft -f` text for the floor of a rotated host: drop its old element and
/// add the new one, in one transaction.
pub fn floor_rotation(table: &str, old: Ipv4Addr, new: Ipv4Addr, port: u16) -> String {
    format!(
        "delete element inet {table} s {{ {old} . tcp . {port} }}\n\
         add element inet {table} s {{ {new} . tcp . {port} }}\n"
    )
}

/// The allowlist text for literal `(address, port)` entries.
pub fn allowlist(entries: &[(Ipv4Addr, u16)]) -> String {
    entries.iter().map(|(a, p)| format!("{a}:{p}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: [(Ipv4Addr, u16); 2] = [
        (Ipv4Addr::new(198, 18, 0, 1), 443),
        (Ipv4Addr::new(198, 18, 0, 2), 8080),
    ];

    #[test]
    fn scripts_ruleset_has_one_rule_per_entry_before_the_drop() {
        let s = scripts_ruleset("t", "br0", &E);
        let rules: Vec<&str> = s.lines().filter(|l| l.contains("ip daddr")).collect();
        assert_eq!(
            rules,
            [
                "\t\tip daddr 198.18.0.1 tcp dport 443 accept",
                "\t\tip daddr 198.18.0.2 tcp dport 8080 accept"
            ]
        );
        let drop = s.lines().position(|l| l.trim() == "drop").unwrap();
        let last_rule = s.lines().position(|l| l.contains("8080")).unwrap();
        assert!(drop > last_rule);
        assert!(s.contains("iifname \"br0\" jump egress"));
    }

    #[test]
    fn floor_ruleset_lists_every_element_once() {
        let s = floor_ruleset("f", &E);
        assert!(s.contains("198.18.0.1 . tcp . 443,\n"));
        assert!(s.contains("198.18.0.2 . tcp . 8080\n"));
        assert_eq!(s.matches(" . tcp . ").count(), 2);
    }

    #[test]
    fn empty_floor_has_no_elements_clause() {
        assert!(!floor_ruleset("f", &[]).contains("elements"));
    }

    #[test]
    fn allowlist_is_one_line_per_entry() {
        assert_eq!(allowlist(&E), "198.18.0.1:443\n198.18.0.2:8080\n");
    }
}
