//! The nftables backend of openclaw-egress.
//!
//! It speaks netlink directly (libnftnl through `nftnl`/`nftnl-sys`, the
//! socket through `mnl`), never the `nft` binary, for two reasons: every
//! change must be one atomic batch whose acknowledgements are checked one by
//! one, and after the first load only changed elements may be sent.
//!
//! Two ways to apply:
//! - **whole table** (first apply, or when the live table's layout drifted
//!   from the desired one): add table, delete table, add table and everything
//!   in it, in one batch; the kernel swaps atomically, so there is never a
//!   moment without rules, and a refused batch leaves the old table intact;
//! - **element diff**: read the live elements back, diff them against the
//!   desired ones (`egress_core::diff`), send only the changes in one batch;
//!   nothing at all when nothing changed.

#![warn(missing_docs)]

pub mod encode;

#[cfg(target_os = "linux")]
mod netlink;

#[cfg(target_os = "linux")]
mod monitor;

#[cfg(target_os = "linux")]
pub use monitor::spawn_monitor;
#[cfg(target_os = "linux")]
pub use netlink::{Nft, NftError};

use std::time::Duration;

use egress_core::diff::{Diff, LiveElements};

/// What the kernel holds for our table.
#[derive(Debug, Clone, Default)]
pub struct LiveTable {
    /// True when the table's layout (comment fingerprint, sets, chains, and
    /// each rule's tag) is exactly the desired one, so an element diff is
    /// enough. False means the whole table must be replaced.
    pub layout_matches: bool,
    /// Why the layout does not match, for logs.
    pub drift: Option<String>,
    /// The live elements of our sets (empty when a set is missing).
    pub elements: LiveElements,
    /// Packets counted by the deny rules.
    pub denied_packets: u64,
    /// Bytes counted by the deny rules.
    pub denied_bytes: u64,
}

/// How a change was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// The whole table was (re)loaded.
    Full,
    /// Only changed elements were sent.
    Elements,
    /// Nothing needed to be sent.
    Unchanged,
}

/// What one apply did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// Full load, element diff, or nothing.
    pub mode: ApplyMode,
    /// Why a full load was needed (absent table, drift), if it was.
    pub reason: Option<String>,
    /// The element changes (for a full load: every element as added).
    pub diff: Diff,
    /// Netlink messages in the batch (without batch begin/end).
    pub messages: usize,
    /// Of those, element messages (NEWSETELEM/DELSETELEM).
    pub element_messages: usize,
    /// Bytes sent.
    pub bytes: usize,
    /// Time to read the live state back.
    pub read_time: Duration,
    /// Time to build, send and acknowledge the batch.
    pub write_time: Duration,
    /// Packets counted by the deny rules when the live table was read
    /// (0 when the table was absent or replaced).
    pub denied_packets: u64,
    /// Bytes counted by the deny rules, likewise.
    pub denied_bytes: u64,
}
