//! The macOS pf backend of openclaw-egress.
//!
//! It keeps one pf anchor (`[firewall] table` with `_` turned into `-`,
//! `openclaw-egress` by default, as the old scripts used) whose rules are
//! fixed for a layout and a set of (protocol, port range) groups, and whose
//! addresses live in pf tables: an address change replaces table contents
//! (`pfctl -a ANCHOR -t TABLE -T replace`) and never reloads rules. See
//! [`render`] for the rules, [`backend`] for how changes are applied, and
//! docs/macos.md for operating it.
//!
//! Everything runs through `pfctl` and `ifconfig` via [`CommandRunner`], so
//! the crate builds and is tested on any platform: tests substitute
//! [`testing::FakePf`]. Nothing here has been run against a real pf (see
//! docs/macos.md, "What was tested").

#![warn(missing_docs)]

pub mod backend;
pub mod error;
pub mod host;
pub mod live;
pub mod pfconf;
pub mod render;
pub mod runner;
pub mod testing;

pub use backend::{Pf, PfApplyMode, PfApplyReport, PfLive, PfOptions, PfPlan, DEFAULT_POLL};
pub use error::PfError;
pub use host::{HostCheck, HostProbe, VmRuntime};
pub use pfconf::PfConfChange;
pub use runner::{CommandOutput, CommandRunner, SystemRunner};
