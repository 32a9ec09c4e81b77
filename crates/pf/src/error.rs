//! Errors of the pf backend. Each names what failed: the command line and
//! pfctl's own words, the file and the operation, or the name pf refused.

use std::io;
use std::path::PathBuf;

/// What went wrong in the pf backend.
#[derive(Debug, thiserror::Error)]
pub enum PfError {
    /// The program could not be started (missing, not executable).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The program ran and failed.
    #[error("`{command}` failed ({status}): {}", stderr_text(stderr))]
    Command {
        /// The command line.
        command: String,
        /// Exit status in words (`exit status 1`, `killed by signal 9`).
        status: String,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
    /// The program's output is not what this version understands.
    #[error("cannot understand the output of `{command}`: {what}")]
    Parse {
        /// The command line.
        command: String,
        /// What was unexpected.
        what: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: cannot {what}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The operation (`read`, `write a backup to ...`).
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A name cannot be written into pf.conf syntax as is.
    #[error("{what} {name:?} cannot be used with pf: {why}")]
    BadName {
        /// What the name is (interface, anchor).
        what: &'static str,
        /// The name.
        name: String,
        /// Why.
        why: &'static str,
    },
    /// Editing pf.conf produced a file pfctl refuses; the original was put
    /// back.
    #[error("{}: adding the anchor made a file pfctl refuses, so the original was restored: {source}", path.display())]
    PfConfRejected {
        /// pf.conf.
        path: PathBuf,
        /// The failed check (`pfctl -n -f`).
        #[source]
        source: Box<PfError>,
    },
    /// Containers run inside a VM (Docker Desktop, OrbStack): their traffic
    /// never crosses an interface of this host, so pf cannot filter it.
    #[error(
        "refusing to load pf rules: {runtime} runs the containers inside its own virtual machine \
         ({evidence}), and the agent network's bridge ({interfaces}) is not an interface of this Mac, \
         so pf here never sees the containers' traffic. Run openclaw-egress inside that Linux VM \
         (nftables backend) instead, or use a VM whose traffic enters the Mac through a host bridge \
         and set [network] interface to that bridge (see docs/macos.md)"
    )]
    ContainersInVm {
        /// Docker Desktop or OrbStack.
        runtime: &'static str,
        /// What showed it (a socket path, a symlink target, DOCKER_HOST).
        evidence: String,
        /// The interfaces of the layout, comma-separated.
        interfaces: String,
    },
}

fn stderr_text(stderr: &str) -> &str {
    if stderr.is_empty() {
        "no message on stderr"
    } else {
        stderr
    }
}
