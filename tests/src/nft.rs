//! Reading the nftables table a test's firewall loaded.

use std::collections::BTreeSet;

use crate::netns::Netns;

impl Netns {
    /// `nft list table inet TABLE` in the namespace; `None` when the table
    /// does not exist.
    pub fn nft_table(&self, table: &str) -> Option<String> {
        let out = self.exec(["nft", "list", "table", "inet", table]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The first component (the address) of every element of every set of an
/// `nft list` output.
pub fn nft_set_addresses(listing: &str) -> BTreeSet<String> {
    const START: &str = "elements = {";
    let mut out = BTreeSet::new();
    let mut rest = listing;
    while let Some(i) = rest.find(START) {
        let after = &rest[i + START.len()..];
        let end = after.find('}').unwrap_or(after.len());
        for el in after[..end].split(',') {
            if let Some(tok) = el.split_whitespace().next() {
                out.insert(tok.to_string());
            }
        }
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_every_set_and_stop_at_each_closing_brace() {
        let listing = "table inet t {\n\
            \tset v4 {\n\t\telements = { 198.18.1.10 . tcp . 443 expires 3s,\n\
            \t\t\t     198.18.1.11 . udp . 53 }\n\t}\n\
            \tset v6 {\n\t\telements = { 2001:db8::1 . tcp . 443 }\n\t}\n\
            \tchain c { ip daddr { 198.18.9.9 } drop }\n}\n";
        let want: BTreeSet<String> = ["198.18.1.10", "198.18.1.11", "2001:db8::1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(nft_set_addresses(listing), want);
    }
}
