//! The command line, apart from what runs it: clap and std only, so the
//! packaging can build man pages and completions from the same definitions.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Command-line arguments of `openclaw-egress`.
#[derive(Parser)]
#[command(
    name = "openclaw-egress",
    version,
    about = "Egress allowlist firewall for sandboxed agents"
)]
pub struct Cli {
    /// Config file (default /etc/openclaw-egress/egressd.toml; when that is
    /// absent, built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Validate the config and the allowlist; print every error.
    Check,
    /// Resolve, then show what `apply` would change in the live table.
    Plan {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Resolve once and make the kernel enforce the policy.
    Apply,
    /// Resolve, then print the desired ruleset as nft text (loadable with `nft -f`).
    Show {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove the table (egress is then no longer filtered).
    Flush,
    /// Add an entry to the allowlist file (a running daemon applies it).
    ///
    /// ENTRY is `host`, `host:port`, `10.0.0.0/8`, `[2001:db8::1]:53/udp`,
    /// ... as in the allowlist. The new line is appended; every other byte of
    /// the file is kept. An entry that is already listed is not added again
    /// (exit 0). The file is replaced atomically, keeping its owner and mode;
    /// it is created (mode 0644) when missing.
    Allow {
        /// The entry to allow.
        entry: String,
        /// A comment for the new line (`ENTRY  # TEXT`); one line, no
        /// control characters.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
        /// Then apply the policy once, like `apply` (for when no daemon
        /// runs); exit 3 when some hostname did not resolve.
        #[arg(long)]
        apply: bool,
    },
    /// Remove every line holding an entry from the allowlist file.
    ///
    /// Every other byte of the file is kept; the file is replaced
    /// atomically, keeping its owner and mode. Exit 1 when the entry is not
    /// in the allowlist (nothing is written).
    Remove {
        /// The entry to remove, spelled as for `allow` (it is compared by
        /// meaning: `Example.COM:443` matches `example.com:443`).
        entry: String,
        /// Then apply the policy once, like `apply` (for when no daemon
        /// runs); exit 3 when some hostname did not resolve.
        #[arg(long)]
        apply: bool,
    },
    /// Ask the running daemon for its status (over its control socket).
    ///
    /// Exit codes: 0 the daemon answered and its config and allowlist are
    /// valid; 1 the daemon holds a config error (it keeps enforcing the last
    /// good policy; the status is still printed), or another error (e.g. an
    /// unreadable --config); 4 the daemon is unreachable: socket missing,
    /// connection refused, permission denied (root only) or no answer.
    Status {
        /// Print the status as JSON (format: docs/status-json.md).
        #[arg(long)]
        json: bool,
    },
    /// Probe the filter from inside the Docker network, as an agent sees it.
    ///
    /// Every allowlisted entry must connect; an unlisted address, another
    /// port of an allowed address, port 53 of a non-DNS address, UDP to an
    /// allowed address, the host through the gateway, and the other paths of
    /// docs/security-model.md must be refused; an allowlisted name must
    /// resolve. Probes run in a short-lived container (`[verify] image`), or,
    /// when no image can be used, from a temporary network namespace attached
    /// to the bridge. Exit 0 only when every expectation holds.
    Verify {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Where the probes run: `auto` (a container when the image is
        /// there, else a namespace), `container` or `netns`.
        #[arg(long, value_name = "WHERE", default_value = "auto")]
        from: String,
        /// Seconds each probe waits for an answer.
        #[arg(long, value_name = "SECONDS", default_value_t = 2)]
        timeout: u64,
    },
    /// Create (or check) the Docker network the agents run in.
    ///
    /// A bridge network named by `[network] docker`, IPv6 off, its interface
    /// named through `com.docker.network.bridge.name`. When it exists, it is
    /// checked and every difference printed (exit 1); running it twice
    /// changes nothing.
    SetupNetwork {
        /// Bridge interface name (at most 15 bytes; default from
        /// `[network] interface`, else derived from the network name).
        #[arg(long, value_name = "NAME")]
        bridge: Option<String>,
        /// Subnet of the network (e.g. 172.30.0.0/24); default: Docker picks.
        #[arg(long, value_name = "CIDR")]
        subnet: Option<String>,
    },
}
