//! Is the agent network's bridge on this Mac at all?
//!
//! Docker Desktop and OrbStack run containers inside their own Linux VM and
//! carry the containers' traffic out through a user-space network stack:
//! the bridge lives inside the VM and nothing crosses an interface of the
//! Mac as forwarded packets, so pf here cannot filter it. Loading rules
//! anyway would look like protection and be none, so the backend refuses.
//!
//! Evidence is only taken as decisive when the configured interface is also
//! missing from the host: when it exists, something does route through the
//! Mac (for example a VM attached to a vmnet bridge) and pf can filter it.

use std::fs;
use std::path::{Path, PathBuf};

/// A container runtime that keeps its bridge inside a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmRuntime {
    /// Docker Desktop for Mac.
    DockerDesktop,
    /// OrbStack.
    OrbStack,
}

impl VmRuntime {
    /// Product name for messages.
    pub fn name(self) -> &'static str {
        match self {
            VmRuntime::DockerDesktop => "Docker Desktop",
            VmRuntime::OrbStack => "OrbStack",
        }
    }

    /// The runtime a Docker socket path belongs to, if it is one of these.
    pub fn of_socket(path: &str) -> Option<VmRuntime> {
        if path.contains("/.orbstack/") || path.contains("OrbStack") {
            Some(VmRuntime::OrbStack)
        } else if path.contains("/.docker/run/")
            || path.contains("com.docker.docker")
            || path.contains("/Docker.app/")
        {
            Some(VmRuntime::DockerDesktop)
        } else {
            None
        }
    }
}

/// What showed that containers run in a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEvidence {
    /// The runtime.
    pub runtime: VmRuntime,
    /// The path or setting that showed it.
    pub evidence: String,
}

/// Where to look for the evidence: a root folder (`/` on a real system, a
/// temporary folder in tests) and the `DOCKER_HOST` the daemon was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProbe {
    /// Prefix of every path looked at.
    pub root: PathBuf,
    /// `DOCKER_HOST`, if set.
    pub docker_host: Option<String>,
}

impl HostProbe {
    /// The real system: `/` and this process's `DOCKER_HOST`.
    pub fn system() -> HostProbe {
        HostProbe {
            root: PathBuf::from("/"),
            docker_host: std::env::var("DOCKER_HOST").ok(),
        }
    }

    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// Looks, in order, at `DOCKER_HOST`, at where `/var/run/docker.sock`
    /// points (both products link it into the user's home), and at the
    /// sockets both products keep in each home under `/Users` (the daemon
    /// runs as root, so its own home says nothing).
    pub fn vm_runtime(&self) -> Option<VmEvidence> {
        if let Some(host) = &self.docker_host {
            if let Some(runtime) = VmRuntime::of_socket(host) {
                return Some(VmEvidence {
                    runtime,
                    evidence: format!("DOCKER_HOST={host}"),
                });
            }
        }
        if let Ok(target) = fs::read_link(self.path("/var/run/docker.sock")) {
            let t = target.to_string_lossy();
            if let Some(runtime) = VmRuntime::of_socket(&t) {
                return Some(VmEvidence {
                    runtime,
                    evidence: format!("/var/run/docker.sock -> {t}"),
                });
            }
        }
        let mut homes: Vec<PathBuf> = fs::read_dir(self.path("/Users"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        homes.sort();
        for home in homes {
            for (rel, runtime) in [
                (".orbstack/run/docker.sock", VmRuntime::OrbStack),
                (".docker/run/docker.sock", VmRuntime::DockerDesktop),
            ] {
                let sock = home.join(rel);
                if fs::symlink_metadata(&sock).is_ok() {
                    return Some(VmEvidence {
                        runtime,
                        evidence: format!("{} exists", display_from_root(&self.root, &sock)),
                    });
                }
            }
        }
        None
    }
}

fn display_from_root(root: &Path, p: &Path) -> String {
    match p.strip_prefix(root) {
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => p.display().to_string(),
    }
}

/// The outcome of a host check that did not refuse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostCheck {
    /// Interfaces of the layout that do not exist (yet). Their rules are
    /// loaded anyway and take effect when the interface appears, as nft's
    /// do; the caller should warn.
    pub missing: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    fn probe(dir: &TempDir) -> HostProbe {
        HostProbe {
            root: dir.path().to_path_buf(),
            docker_host: None,
        }
    }

    #[test]
    fn nothing_found_on_a_plain_host() {
        let dir = TempDir::new("host-none");
        fs::create_dir_all(dir.join("Users/alice")).unwrap();
        fs::create_dir_all(dir.join("var/run")).unwrap();
        std::os::unix::fs::symlink(
            "/Users/alice/.colima/default/docker.sock",
            dir.join("var/run/docker.sock"),
        )
        .unwrap();
        assert_eq!(probe(&dir).vm_runtime(), None);
    }

    #[test]
    fn docker_desktops_socket_link() {
        let dir = TempDir::new("host-dd");
        fs::create_dir_all(dir.join("var/run")).unwrap();
        std::os::unix::fs::symlink(
            "/Users/alice/.docker/run/docker.sock",
            dir.join("var/run/docker.sock"),
        )
        .unwrap();
        assert_eq!(
            probe(&dir).vm_runtime(),
            Some(VmEvidence {
                runtime: VmRuntime::DockerDesktop,
                evidence: "/var/run/docker.sock -> /Users/alice/.docker/run/docker.sock".into(),
            })
        );
    }

    #[test]
    fn orbstacks_socket_in_a_home() {
        let dir = TempDir::new("host-orb");
        fs::create_dir_all(dir.join("Users/bob/.orbstack/run")).unwrap();
        fs::write(dir.join("Users/bob/.orbstack/run/docker.sock"), "").unwrap();
        assert_eq!(
            probe(&dir).vm_runtime(),
            Some(VmEvidence {
                runtime: VmRuntime::OrbStack,
                evidence: "/Users/bob/.orbstack/run/docker.sock exists".into(),
            })
        );
    }

    #[test]
    fn docker_host_wins() {
        let dir = TempDir::new("host-env");
        let mut p = probe(&dir);
        p.docker_host = Some("unix:///Users/carol/.orbstack/run/docker.sock".into());
        assert_eq!(
            p.vm_runtime().map(|e| (e.runtime, e.evidence)),
            Some((
                VmRuntime::OrbStack,
                "DOCKER_HOST=unix:///Users/carol/.orbstack/run/docker.sock".into()
            ))
        );
        p.docker_host = Some("tcp://192.168.64.2:2375".into());
        assert_eq!(p.vm_runtime(), None);
    }
}
