//! Machine-wide state of the lab: the folder every test process shares,
//! file locks that serialise its updates across processes, and the
//! allocator of test subnets.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Folder of the lab's shared runtime state (sockets, pid files, locks,
/// the subnet table). On tmpfs: a reboot forgets it, as it forgets the
/// namespaces and processes it describes.
pub(crate) const LAB_RUN: &str = "/run/openclaw-egress-lab";

/// `LAB_RUN/name`, the folder created if needed.
pub(crate) fn lab_path(name: &str) -> PathBuf {
    std::fs::create_dir_all(LAB_RUN).unwrap_or_else(|e| panic!("cannot create {LAB_RUN}: {e}"));
    Path::new(LAB_RUN).join(name)
}

/// An exclusive `flock` on a file, held until drop. Every test process
/// (and every thread: each lock opens its own file description) waits for
/// the holder.
pub(crate) struct FileLock {
    file: File,
}

impl FileLock {
    /// Opens (creating) `path` and waits for the exclusive lock.
    pub(crate) fn exclusive(path: &Path) -> FileLock {
        FileLock::acquire(path, libc::LOCK_EX).expect("a blocking flock always ends locked")
    }

    /// Opens (creating) `path` and waits for a shared lock: many holders
    /// at once, none while someone holds it exclusively.
    pub(crate) fn shared(path: &Path) -> FileLock {
        FileLock::acquire(path, libc::LOCK_SH).expect("a blocking flock always ends locked")
    }

    /// The exclusive lock if nobody holds any lock on `path` now.
    pub(crate) fn try_exclusive(path: &Path) -> Option<FileLock> {
        FileLock::acquire(path, libc::LOCK_EX | libc::LOCK_NB)
    }

    fn acquire(path: &Path, op: libc::c_int) -> Option<FileLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open the lock file {}: {e}", path.display()));
        loop {
            // SAFETY: plain syscall on an fd `file` owns for the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                return Some(FileLock { file });
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EWOULDBLOCK) => return None,
                _ => panic!("flock {}: {e}", path.display()),
            }
        }
    }

    /// The locked file's contents.
    pub(crate) fn read(&mut self) -> String {
        let mut s = String::new();
        self.file.seek(SeekFrom::Start(0)).expect("seek lock file");
        self.file.read_to_string(&mut s).expect("read lock file");
        s
    }

    /// Replaces the locked file's contents.
    pub(crate) fn write(&mut self, text: &str) {
        self.file.set_len(0).expect("truncate lock file");
        self.file.seek(SeekFrom::Start(0)).expect("seek lock file");
        self.file
            .write_all(text.as_bytes())
            .expect("write lock file");
    }
}
// The lock goes with the file description when `file` closes.

/// True while process `pid` exists.
pub(crate) fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The owner pid of a name of the kit's form (`oct-PID-N-TAG`).
pub(crate) fn owner_pid(name: &str) -> Option<u32> {
    let mut parts = name.splitn(3, '-');
    if parts.next() != Some(crate::netns::PREFIX) {
        return None;
    }
    parts.next()?.parse().ok()
}

/// True for names of the kit's form whose owner process is gone.
pub(crate) fn is_stale(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| pid != std::process::id() && !pid_alive(pid))
}

/// Indices handed out: 198.18.2.0/24 .. 198.19.255.0/24. 198.18.0.0/24 and
/// 198.18.1.0/24 stay with [`crate::Topology`], whose fixed addresses a
/// reader would otherwise confuse with the lab's.
const FIRST: u16 = 2;
const COUNT: u16 = 512;

/// One /24 out of 198.18.0.0/15 that no other test of any process on the
/// machine holds until this one drops. Its index also names the links the
/// lab creates for it (bridges `oclbN`, upstream links `ocluN`), which
/// makes those names unique too.
///
/// The table of claims (`LAB_RUN/subnets`, "INDEX PID" lines) is updated
/// under a file lock; claims of processes that are gone are taken back,
/// after the stale resources of those processes have been removed.
#[derive(Debug)]
pub struct Subnet {
    index: u16,
}

impl Subnet {
    /// Claims a free /24.
    pub fn claim() -> Subnet {
        crate::docker::clean_stale_lab();
        let mut lock = FileLock::exclusive(&lab_path("subnets"));
        let mut taken: Vec<(u16, u32)> = lock
            .read()
            .lines()
            .filter_map(|l| {
                let (i, p) = l.split_once(' ')?;
                Some((i.parse().ok()?, p.parse().ok()?))
            })
            .filter(|(_, pid)| *pid == std::process::id() || pid_alive(*pid))
            .collect();
        // A claim of a process that is gone is free again, unless a link
        // named after it is still there, or a firewall table still filters
        // its bridge (leftovers not removed yet: a table that filters the
        // bridge of the next test to get the index would block it).
        let (links, ruleset) = shared_host_state();
        let index = (FIRST..COUNT)
            .find(|i| {
                taken.iter().all(|(t, _)| t != i)
                    && !links.contains(&format!("oclb{i}"))
                    && !links.contains(&format!("oclu{i}"))
                    && !ruleset.contains(&format!("\"oclb{i}\""))
            })
            .unwrap_or_else(|| panic!("every lab subnet of 198.18.0.0/15 is taken: {taken:?}"));
        taken.push((index, std::process::id()));
        lock.write(&claims_text(&taken));
        Subnet { index }
    }

    /// The index (2..512), unique among live claims.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Host `host` of the /24 (`.0` is the network, `.255` broadcast).
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        subnet_addr(self.index, host)
    }

    /// `198.X.Y.0/24`.
    pub fn cidr(&self) -> String {
        format!("{}/24", self.addr(0))
    }
}

impl Drop for Subnet {
    fn drop(&mut self) {
        let mut lock = FileLock::exclusive(&lab_path("subnets"));
        let me = (self.index, std::process::id());
        let left: Vec<(u16, u32)> = lock
            .read()
            .lines()
            .filter_map(|l| {
                let (i, p) = l.split_once(' ')?;
                Some((i.parse().ok()?, p.parse().ok()?))
            })
            .filter(|c| *c != me)
            .collect();
        lock.write(&claims_text(&left));
    }
}

/// Names of the links in the shared lab host namespace, and its nftables
/// ruleset (nothing when the namespace does not exist).
fn shared_host_state() -> (Vec<String>, String) {
    if !Path::new("/run/netns").join(crate::docker::SHARED).exists() {
        return (Vec::new(), String::new());
    }
    let run = |args: &[&str]| -> String {
        std::process::Command::new("ip")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let links = run(&["-n", crate::docker::SHARED, "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect();
    let ruleset = run(&[
        "netns",
        "exec",
        crate::docker::SHARED,
        "nft",
        "list",
        "ruleset",
    ]);
    (links, ruleset)
}

fn subnet_addr(index: u16, host: u8) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + u32::from(index) * 256;
    Ipv4Addr::from(base + u32::from(host))
}

fn claims_text(claims: &[(u16, u32)]) -> String {
    claims.iter().map(|(i, p)| format!("{i} {p}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_indices_map_onto_198_18_0_0_slash_15() {
        assert_eq!(subnet_addr(2, 1), Ipv4Addr::new(198, 18, 2, 1));
        assert_eq!(subnet_addr(255, 0), Ipv4Addr::new(198, 18, 255, 0));
        assert_eq!(subnet_addr(256, 53), Ipv4Addr::new(198, 19, 0, 53));
        assert_eq!(
            subnet_addr(COUNT - 1, 254),
            Ipv4Addr::new(198, 19, 255, 254)
        );
    }

    #[test]
    fn kit_names_carry_their_owner() {
        assert_eq!(owner_pid("oct-123-4-up"), Some(123));
        assert_eq!(owner_pid("oct-x-4-up"), None);
        assert_eq!(owner_pid("oclab"), None);
        assert!(!is_stale(&format!("oct-{}-0-me", std::process::id())));
    }
}
