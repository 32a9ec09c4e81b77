//! One firewall for the CLI and the daemon, whatever the platform.
//!
//! [`Backend`] is what both call: read, plan, apply, flush, deny counters,
//! and how to learn of foreign changes. It is implemented by the nftables
//! backend ([`egress_nft::Nft`], Linux) and by the pf backend
//! ([`egress_pf::Pf`], macOS, and on every platform with a test runner).
//! [`native`] opens the one of the running platform. Results come in the
//! facade's own types ([`ApplyReport`], [`LiveState`], [`Plan`]), so callers
//! never name a backend's types.
//!
//! Both backends take the same desired state, an
//! [`egress_core::ruleset::Ruleset`], and name their kernel object after
//! `Layout::table`: the nft table `inet TABLE`, or the pf anchor TABLE with
//! `_` turned into `-`.

#![warn(missing_docs)]

use std::time::Duration;

use egress_core::diff::{Diff, LiveElements};
use egress_core::ruleset::{Layout, Ruleset};

pub use egress_pf as pf;

#[cfg(target_os = "linux")]
pub use egress_nft as nft;

#[cfg(target_os = "linux")]
mod nft_impl;
mod pf_impl;
pub mod sim;

/// Which kind of firewall a backend drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// nftables, over netlink (Linux).
    Nftables,
    /// pf, through pfctl (macOS).
    Pf,
}

impl BackendKind {
    /// Short name for logs and `status`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Nftables => "nftables",
            BackendKind::Pf => "pf",
        }
    }

    /// The kernel object that holds the rules of `table`, as messages name
    /// it: `table inet openclaw_egress` or `pf anchor openclaw-egress`.
    pub fn object(self, table: &str) -> String {
        match self {
            BackendKind::Nftables => format!("table inet {table}"),
            BackendKind::Pf => format!("pf anchor {}", egress_core::config::pf_anchor_name(table)),
        }
    }
}

/// What the firewall holds for the layout's table or anchor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveState {
    /// True when an element-only update is enough.
    pub layout_matches: bool,
    /// Why the layout does not match, for logs.
    pub drift: Option<String>,
    /// The live elements (pf: table entries as CIDR pieces, no timeouts).
    pub elements: LiveElements,
    /// Packets counted by the deny rules.
    pub denied_packets: u64,
    /// Bytes counted by the deny rules.
    pub denied_bytes: u64,
}

/// What an apply would do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The live state, if the table or anchor exists.
    pub live: Option<LiveState>,
    /// `Some(why)`: a full load.
    pub reason: Option<String>,
    /// The element changes.
    pub diff: Diff,
}

/// How an apply changed the firewall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Everything (re)loaded: nft's whole table, pf's rules and tables.
    Full,
    /// Only elements: nft set elements, pf table contents.
    Elements,
    /// Nothing sent.
    Unchanged,
}

impl ApplyMode {
    /// `full`, `elements`, `unchanged` (as `status` shows it).
    pub fn name(self) -> &'static str {
        match self {
            ApplyMode::Full => "full",
            ApplyMode::Elements => "elements",
            ApplyMode::Unchanged => "unchanged",
        }
    }
}

/// What one apply did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// Full load, element update, or nothing.
    pub mode: ApplyMode,
    /// Why a full load was needed.
    pub reason: Option<String>,
    /// The element changes.
    pub diff: Diff,
    /// Operations sent: nft netlink messages; pf commands that changed
    /// something.
    pub operations: usize,
    /// Of those, element operations: nft element messages; pf table
    /// replacements (or tables loaded with the rules).
    pub element_operations: usize,
    /// Bytes sent (netlink batch; text piped to pfctl).
    pub bytes: usize,
    /// Time to read the live state.
    pub read_time: Duration,
    /// Time to change it.
    pub write_time: Duration,
    /// Packets counted by the deny rules when read.
    pub denied_packets: u64,
    /// Bytes counted by the deny rules when read.
    pub denied_bytes: u64,
    /// Conditions the operator should see that did not stop the apply (pf:
    /// a missing bridge, pf.conf edited).
    pub warnings: Vec<String>,
}

/// How the caller learns that someone else changed the firewall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeWatch {
    /// The callback given to [`Backend::watch`] is called on every foreign
    /// change (nft: an nf_tables monitor thread).
    Notified,
    /// No notifications exist (pf): re-apply at least this often; each
    /// apply reads the live state back and repairs drift.
    Poll(Duration),
}

/// A firewall backend. Object safe: callers hold a `Box<dyn Backend>`.
pub trait Backend {
    /// Which firewall this is.
    fn kind(&self) -> BackendKind;

    /// The rules `ruleset` becomes, as this firewall's own text: an
    /// `nft -f` script, or the pf anchor file with its tables (what `show`
    /// prints). Pure: reads nothing live.
    fn render(&self, ruleset: &Ruleset) -> Result<String, Error>;

    /// Reads what is live for `layout`; `None` when its table or anchor
    /// does not exist.
    fn read(&mut self, layout: &Layout) -> Result<Option<LiveState>, Error>;

    /// What [`Backend::apply`] would do, without doing it.
    fn plan(&mut self, ruleset: &Ruleset) -> Result<Plan, Error>;

    /// Makes the firewall enforce `ruleset`, sending as little as possible.
    fn apply(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, Error>;

    /// Loads everything, whatever is live.
    fn apply_full(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, Error>;

    /// Removes the table (or anchor) named after `table`. Returns whether
    /// it held anything.
    fn flush(&mut self, table: &str) -> Result<bool, Error>;

    /// Packets and bytes counted by the deny rules, cheaply.
    fn denied_counters(&mut self, layout: &Layout) -> Result<(u64, u64), Error>;

    /// True when the firewall removes expired elements by itself (nft
    /// element timeouts). When false (pf tables have no timeouts), the
    /// caller must re-apply by the earliest expiry
    /// (`Scheduler::next_expiry`), or stale addresses stay allowed until
    /// the next apply.
    fn expires_elements(&self) -> bool;

    /// Arranges for `changed` to be called when someone else changes the
    /// firewall, where the firewall can tell; see [`ChangeWatch`].
    fn watch(&mut self, changed: Box<dyn FnMut() -> bool + Send>) -> Result<ChangeWatch, Error>;
}

/// Errors of the facade: the backend's own, unchanged.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the nftables backend.
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Nft(#[from] egress_nft::NftError),
    /// From the pf backend.
    #[error(transparent)]
    Pf(#[from] egress_pf::PfError),
    /// The nf_tables change monitor could not start.
    #[error("cannot watch the firewall for changes: {0}")]
    Watch(#[source] std::io::Error),
    /// No backend for this operating system.
    #[error(
        "no firewall backend for {0}: openclaw-egress filters with nftables on Linux and pf on macOS"
    )]
    Unsupported(&'static str),
}

/// Opens the backend of the running platform: nftables on Linux, pf (the
/// real pfctl, default paths) on macOS.
pub fn native() -> Result<Box<dyn Backend>, Error> {
    imp::native()
}

/// The backend the binaries use: [`native`], or, in debug builds with
/// [`sim::ENV`] set, the pf simulation, whose folder comes back so the
/// caller can say loudly that nothing is filtered. Release builds never
/// read the variable.
pub fn open() -> Result<(Box<dyn Backend>, Option<std::path::PathBuf>), Error> {
    #[cfg(debug_assertions)]
    if let Some((fw, dir)) = sim::backend() {
        return Ok((fw, Some(dir)));
    }
    Ok((native()?, None))
}

#[cfg(target_os = "linux")]
mod imp {
    use super::{Backend, Error};

    pub fn native() -> Result<Box<dyn Backend>, Error> {
        Ok(Box::new(egress_nft::Nft::new()?))
    }
}

#[cfg(target_os = "macos")]
mod imp {
    use super::{Backend, Error};
    use egress_pf::{Pf, PfOptions, SystemRunner};

    pub fn native() -> Result<Box<dyn Backend>, Error> {
        Ok(Box::new(Pf::new(SystemRunner, PfOptions::default())))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod imp {
    use super::{Backend, Error};

    pub fn native() -> Result<Box<dyn Backend>, Error> {
        Err(Error::Unsupported(std::env::consts::OS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_named_like_each_firewall_names_them() {
        assert_eq!(
            BackendKind::Nftables.object("openclaw_egress"),
            "table inet openclaw_egress"
        );
        assert_eq!(
            BackendKind::Pf.object("openclaw_egress"),
            "pf anchor openclaw-egress"
        );
        assert_eq!(BackendKind::Pf.name(), "pf");
        assert_eq!(ApplyMode::Elements.name(), "elements");
    }

    /// On Linux the native backend is nftables; opening it only opens a
    /// netlink socket (no privileges, no change).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_native_backend_on_linux_is_nftables() {
        let b = native().unwrap();
        assert_eq!(b.kind(), BackendKind::Nftables);
        assert!(b.expires_elements());
        let rs = Ruleset {
            layout: Layout {
                table: "openclaw_egress".into(),
                interfaces: vec!["br-x".into()],
                action: egress_core::config::Action::Reject,
                log: None,
                intra: egress_core::config::Intra::Deny,
                host_ports: Vec::new(),
            },
            elements: Default::default(),
        };
        let text = b.render(&rs).unwrap();
        assert!(text.contains("table inet openclaw_egress"), "{text}");
    }
}
