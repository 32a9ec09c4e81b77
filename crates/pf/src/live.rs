//! Reading pfctl's output back. pfctl prints rules in its own normalised
//! form, so rules are recognised by their labels (printed verbatim), never
//! by their text.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

/// One rule as `pfctl -a ANCHOR -v -s rules` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveRule {
    /// The rule line.
    pub text: String,
    /// Its label, if it has one.
    pub label: Option<String>,
    /// Packets that matched it (from the verbose counters line).
    pub packets: u64,
    /// Bytes that matched it.
    pub bytes: u64,
}

/// Parses `pfctl [-a A] [-v] -s rules`. Rule lines start at the left
/// margin; with `-v` each is followed by indented `[ ... ]` lines, of which
/// the one with `Packets:` carries the counters.
pub fn parse_rules(out: &str) -> Vec<LiveRule> {
    let mut rules: Vec<LiveRule> = Vec::new();
    for line in out.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if t.starts_with('[') {
            if let Some(last) = rules.last_mut() {
                if let Some(p) = counter(t, "Packets:") {
                    last.packets = p;
                }
                if let Some(b) = counter(t, "Bytes:") {
                    last.bytes = b;
                }
            }
            continue;
        }
        rules.push(LiveRule {
            text: t.to_owned(),
            label: label(t),
            packets: 0,
            bytes: 0,
        });
    }
    rules
}

fn counter(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn label(rule: &str) -> Option<String> {
    let start = rule.find("label \"")? + "label \"".len();
    let len = rule[start..].find('"')?;
    Some(rule[start..start + len].to_owned())
}

/// Parses `pfctl -a A -s Tables`: one table name a line.
pub fn parse_table_names(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Parses `pfctl -a A -t T -T show`: one address or CIDR a line, indented.
pub fn parse_table(out: &str) -> Result<BTreeSet<IpNet>, String> {
    let mut set = BTreeSet::new();
    for line in out.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let net = if let Ok(n) = t.parse::<IpNet>() {
            n
        } else if let Ok(a) = t.parse::<IpAddr>() {
            IpNet::from(a)
        } else {
            // A negated entry (`!198.18.0.1`) or anything else this
            // backend never writes.
            return Err(format!("unexpected table entry {t:?}"));
        };
        set.insert(net);
    }
    Ok(set)
}

/// `Status: Enabled ...` / `Status: Disabled ...` in `pfctl -s info`.
pub fn parse_enabled(info: &str) -> Option<bool> {
    info.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("Status:")?.trim_start();
        if rest.starts_with("Enabled") {
            Some(true)
        } else if rest.starts_with("Disabled") {
            Some(false)
        } else {
            None
        }
    })
}

/// The reference token in what `pfctl -E` printed (`Token : 1234...`);
/// both streams are searched, as pfctl's choice of stream is not
/// documented.
pub fn parse_token(stdout: &str, stderr: &str) -> Option<u64> {
    stdout.lines().chain(stderr.lines()).find_map(|l| {
        let rest = l.trim().strip_prefix("Token")?.trim_start();
        rest.strip_prefix(':')?.trim().parse().ok()
    })
}

/// True when the main ruleset, as `pfctl -s rules` prints it, has the
/// anchor rule for `anchor` (`anchor "openclaw-egress" all`).
pub fn main_references(main_rules: &str, anchor: &str) -> bool {
    let quoted = format!("\"{anchor}\"");
    main_rules.lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some("anchor") && words.next() == Some(quoted.as_str())
    })
}

/// pfctl's complaint when an anchor has never been created: the kernel
/// answers EINVAL to a rules query on it (and ENOENT/ESRCH to table
/// queries).
pub fn anchor_missing(stderr: &str) -> bool {
    [
        "Invalid argument",
        "does not exist",
        "No such file or directory",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

/// The names in `ifconfig -l` (one line, space-separated).
pub fn parse_interfaces(out: &str) -> Vec<String> {
    out.split_whitespace().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_rules_with_counters_and_labels() {
        let out = "pass in quick on bridge100 inet6 proto icmp6 from any to ff02::/16 icmp6-type routersol no state label \"openclaw-egress:0011:nd\"\n  [ Evaluations: 10        Packets: 0         Bytes: 0           States: 0     ]\n  [ Inserted: uid 0 pid 42 State Creations: 0     ]\nblock return in log quick on bridge100 all label \"openclaw-egress:0011:deny\"\n  [ Evaluations: 7         Packets: 5         Bytes: 300         States: 0     ]\npass out all flags S/SA keep state\n";
        let r = parse_rules(out);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].label.as_deref(), Some("openclaw-egress:0011:nd"));
        assert_eq!((r[1].packets, r[1].bytes), (5, 300));
        assert_eq!(r[1].label.as_deref(), Some("openclaw-egress:0011:deny"));
        assert_eq!(r[2].label, None);
        assert_eq!(r[2].packets, 0);
    }

    #[test]
    fn tables_and_entries() {
        assert_eq!(
            parse_table_names("dns\nany_ports\n\nsvc_tcp_443\n"),
            ["dns", "any_ports", "svc_tcp_443"]
        );
        let t = parse_table("   198.18.1.10\n   198.18.3.2/31\n   2001:db8::/112\n").unwrap();
        let s: Vec<String> = t.iter().map(|n| n.to_string()).collect();
        assert_eq!(s, ["198.18.1.10/32", "198.18.3.2/31", "2001:db8::/112"]);
        assert_eq!(
            parse_table("   !198.18.1.10\n").unwrap_err(),
            "unexpected table entry \"!198.18.1.10\""
        );
    }

    #[test]
    fn status_token_and_main_ruleset() {
        assert_eq!(
            parse_enabled("Status: Enabled for 0 days 00:01:02           Debug: Urgent\n"),
            Some(true)
        );
        assert_eq!(
            parse_enabled("No ALTQ support in kernel\nStatus: Disabled for 3 days\n"),
            Some(false)
        );
        assert_eq!(parse_enabled("garbage"), None);
        assert_eq!(
            parse_token(
                "",
                "No ALTQ support in kernel\npf enabled\nToken : 13863718475093651479\n"
            ),
            Some(13863718475093651479)
        );
        assert_eq!(parse_token("Token : 7\n", ""), Some(7));
        assert_eq!(parse_token("pf enabled\n", ""), None);
        let main = "scrub-anchor \"com.apple/*\" all fragment reassemble\nanchor \"com.apple/*\" all\nanchor \"openclaw-egress\" all\n";
        assert!(main_references(main, "openclaw-egress"));
        assert!(!main_references(main, "openclaw"));
        assert!(!main_references(
            "anchor \"openclaw-egress/*\" all\n",
            "openclaw-egress"
        ));
        assert_eq!(
            parse_interfaces("lo0 gif0 en0 bridge100\n"),
            ["lo0", "gif0", "en0", "bridge100"]
        );
        assert!(anchor_missing("pfctl: DIOCGETRULES: Invalid argument\n"));
        assert!(!anchor_missing("pfctl: Permission denied\n"));
    }
}
