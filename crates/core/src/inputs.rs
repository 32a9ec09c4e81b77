//! What the policy is computed from, once the files are read: the config,
//! the allowlist, and the DNS servers. The CLI and the daemon read the
//! files themselves (I/O stays at the edges) and both derive the rest here.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use crate::allowlist::Allowlist;
use crate::config::Config;
use crate::entry::{Entry, HostName, Target};
use crate::policy::{self, Answers, PolicyOutcome};
use crate::ruleset::Layout;

/// A validated config and allowlist with what follows from them.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The config.
    pub config: Config,
    /// The allowlist document (all lines, for status and edits).
    pub allowlist: Allowlist,
    /// Distinct entries, in file order.
    pub entries: Vec<Entry>,
    /// Distinct hostnames of those entries, sorted.
    pub hosts: Vec<HostName>,
    /// DNS servers used to resolve the hostnames.
    pub servers: Vec<SocketAddr>,
    /// DNS servers the containers may query: `[dns] allow`, or the
    /// addresses of `servers`.
    pub dns_allow: Vec<IpAddr>,
}

impl Inputs {
    /// Derives entries, hosts and the DNS allow list. `servers` are the
    /// config's `[resolver] servers`, or the system's when it has none.
    pub fn new(config: Config, allowlist: Allowlist, servers: Vec<SocketAddr>) -> Inputs {
        let entries: Vec<Entry> = allowlist
            .unique_entries()
            .into_iter()
            .map(|l| l.entry.clone())
            .collect();
        let hosts = entries
            .iter()
            .filter_map(|e| match &e.target {
                Target::Host(h) => Some(h.clone()),
                Target::Net(_) => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let dns_allow = config.effective_dns_allow(&servers);
        Inputs {
            config,
            allowlist,
            entries,
            hosts,
            servers,
            dns_allow,
        }
    }

    /// The layout: the config's table and action on `interface` (the
    /// bridge found in Docker, or `[network] interface`).
    pub fn layout(&self, interface: String) -> Layout {
        policy::layout(&self.config, vec![interface])
    }

    /// The elements the policy allows given `answers`, and the answers it
    /// refuses (private ranges not in `[firewall] allow_private`).
    pub fn desired_elements(&self, answers: &Answers) -> PolicyOutcome {
        policy::desired_elements(
            &self.entries,
            answers,
            &self.dns_allow,
            &self.config.firewall.allow_private,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn entries_hosts_and_dns_allow_are_derived_once() {
        let config = Config::parse(Path::new("/x/egressd.toml"), "").unwrap();
        let text = "b.example:443\na.example\nb.example:443\n192.0.2.1:22\nA.example:80\n";
        let allowlist = Allowlist::parse("a.conf", text).unwrap().allowlist;
        let servers = vec![
            "192.0.2.53:53".parse().unwrap(),
            "192.0.2.53:5353".parse().unwrap(),
        ];
        let i = Inputs::new(config, allowlist, servers);
        let entries: Vec<String> = i.entries.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            entries,
            ["b.example:443", "a.example", "192.0.2.1:22", "a.example:80"]
        );
        let hosts: Vec<&str> = i.hosts.iter().map(|h| h.as_str()).collect();
        assert_eq!(hosts, ["a.example", "b.example"]);
        assert_eq!(i.dns_allow, vec!["192.0.2.53".parse::<IpAddr>().unwrap()]);
        let iface = i.config.network.interface_name();
        assert_eq!(
            i.layout(iface).interfaces,
            vec!["openclaw-egress".to_string()]
        );
    }
}
