//! The pure core of openclaw-egress.
//!
//! Data flows one way: config + allowlist + address answers -> [`policy`] ->
//! desired [`ruleset`] -> [`diff`] against the live elements a backend read
//! from the kernel -> one batch. Nothing here does I/O, talks to Docker or to
//! the kernel; the edges (resolver, nft, pf, daemon, CLI) do, so everything
//! here is testable with plain values.

#![warn(missing_docs)]

pub mod allowlist;
pub mod config;
pub mod diag;
pub mod diff;
pub mod entry;
pub mod inputs;
pub mod policy;
pub mod render;
pub mod ruleset;
pub mod schedule;
pub mod status;
pub mod verify;

pub use diag::{Diagnostic, Diagnostics, Severity};
pub use entry::{Entry, HostName, PortRange, Proto, Service, Target};
