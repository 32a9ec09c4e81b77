//! The command line, apart from what runs it: clap and std only, so the
//! packaging can build the man page from the same definitions.

use std::path::PathBuf;

use clap::Parser;

/// Default config path; the same as `egress_core::config::DEFAULT_CONFIG_PATH`
/// (a test in main.rs holds them equal), spelled out here so this file
/// needs nothing but clap.
pub const DEFAULT_CONFIG: &str = "/etc/openclaw-egress/egressd.toml";

/// Command-line arguments of `openclaw-egressd`.
#[derive(Parser)]
#[command(
    name = "openclaw-egressd",
    version,
    about = "Egress allowlist firewall daemon for sandboxed agents"
)]
pub struct Cli {
    /// Config file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Log level (error, warn, info, debug, trace); RUST_LOG, when set, wins.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Remove the table on SIGTERM/SIGINT (by default the rules stay in
    /// place, so traffic stays closed while the daemon is down).
    #[arg(long)]
    pub flush_on_exit: bool,
}
