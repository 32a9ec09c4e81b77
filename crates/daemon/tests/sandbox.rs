//! The real `openclaw-egressd` under the sandbox of its systemd unit,
//! reproduced without systemd (systemd is not PID 1 on the CI machines, so
//! `systemd-run -p ...` is not available), as root.
//!
//! The restrictions are read from `systemd/openclaw-egressd.service` itself,
//! so the unit and this test cannot drift apart: every `[Service]` directive
//! must be known here, either reproduced or listed in [`NOT_REPRODUCED`] with
//! the reason; a new directive fails the tests until it is classified.
//!
//! What is reproduced, in the child between fork and exec (like systemd's
//! own exec path): the network namespace of the test (`testkit::Netns`);
//! a private mount namespace with the whole tree read-only but the unit's
//! writable paths (`ProtectSystem=strict`, `ReadWritePaths=`,
//! `RuntimeDirectory=`), fresh `/tmp` and `/var/tmp` (`PrivateTmp=`),
//! inaccessible `/home`, `/root`, `/run/user` (`ProtectHome=`), a minimal
//! `/dev` (`PrivateDevices=`, without the cgroup device list), a `/proc` with
//! `hidepid=invisible,subset=pid` (`ProtectProc=`, `ProcSubset=`); `UMask=`;
//! the capability bounding set and ambient set; `NoNewPrivileges=`; and one
//! seccomp filter holding `SystemCallFilter=` (groups expanded by
//! `systemd-analyze syscall-filter` of this machine, plus `@default` as systemd
//! adds it), `SystemCallErrorNumber=`, `SystemCallArchitectures=native`,
//! `RestrictAddressFamilies=` and `MemoryDenyWriteExecute=`.
//!
//! The unit's paths are mapped into a fixture folder under /run: its
//! binaries to bind mounts of the freshly built ones, /etc/openclaw-egress to
//! the fixture's config folder, /run/openclaw-egress to its run folder.
//! Nothing is mounted, written or loaded outside the test's own namespaces
//! and that folder.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use egress_core::status::Status;
use testkit::{
    require_root, sibling_binary, wait_until, Daemon, Dnsmasq, Netns, NotifySocket, TempDir, POLL,
};

const DAEMON: &str = env!("CARGO_BIN_EXE_openclaw-egressd");
const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../systemd/openclaw-egressd.service"
);
const PACKAGING_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/packaging.md");

/// The bound for `systemd-analyze security --offline=yes`.
const MAX_EXPOSURE: f64 = 2.5;

/// Set in the environment of this test binary when it runs as the probe
/// inside the sandbox (see [`the_sandbox_enforces_what_the_unit_says`]).
const PROBE_ENV: &str = "OPENCLAW_EGRESS_SANDBOX_PROBE";

// ------------------------------------------------------------------ the unit

/// The `[Service]` section of the unit, in order.
struct Unit {
    service: Vec<(String, String)>,
}

impl Unit {
    fn load() -> Unit {
        let text = std::fs::read_to_string(UNIT)
            .unwrap_or_else(|e| panic!("cannot read the unit {UNIT}: {e}"));
        let mut section = String::new();
        let mut service = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            assert!(
                !line.ends_with('\\'),
                "{UNIT}:{}: continuation lines are not understood by this test",
                n + 1
            );
            if line.starts_with('[') {
                section = line.to_string();
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{UNIT}:{}: not KEY=VALUE: {line}", n + 1));
            if section == "[Service]" {
                service.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        Unit { service }
    }

    /// Every value of `key`, in order.
    fn all(&self, key: &str) -> Vec<&str> {
        self.service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The last value of `key` (later assignments win).
    fn last(&self, key: &str) -> Option<&str> {
        self.all(key).last().copied()
    }

    fn yes(&self, key: &str) -> bool {
        matches!(self.last(key), Some("yes" | "true" | "1" | "on"))
    }

    /// The words of a list setting; an empty assignment resets the list.
    fn list(&self, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        for v in self.all(key) {
            if v.is_empty() {
                out.clear();
            }
            out.extend(v.split_whitespace().map(str::to_string));
        }
        out
    }
}

/// Directives of the unit that only manage the service (no sandboxing).
const SERVICE_MANAGEMENT: &[&str] = &[
    "Type",
    "NotifyAccess",
    "ExecStartPre",
    "ExecStart",
    "ExecReload",
    "WatchdogSec",
    "Restart",
    "RestartSec",
    "KillSignal",
    "TimeoutStartSec",
    "TimeoutStopSec",
];

/// Sandboxing directives this test reproduces.
const REPRODUCED: &[&str] = &[
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "NoNewPrivileges",
    "ProtectSystem",
    "ReadWritePaths",
    "RuntimeDirectory",
    "RuntimeDirectoryMode",
    "PrivateMounts",
    "PrivateTmp",
    "ProtectHome",
    "PrivateDevices",
    "ProtectProc",
    "ProcSubset",
    "ProtectKernelTunables",
    "ProtectControlGroups",
    "RestrictAddressFamilies",
    "SystemCallFilter",
    "SystemCallErrorNumber",
    "SystemCallArchitectures",
    "MemoryDenyWriteExecute",
    "UMask",
];

/// Sandboxing directives this test does not reproduce, and why that does not
/// weaken what it shows (docs/packaging.md repeats this list).
const NOT_REPRODUCED: &[(&str, &str)] = &[
    (
        "ProtectKernelModules",
        "CAP_SYS_MODULE is outside the bounding set and @module outside the syscall filter",
    ),
    (
        "ProtectKernelLogs",
        "CAP_SYSLOG is outside the bounding set, /dev/kmsg outside the private /dev, /proc/kmsg hidden by ProcSubset=pid",
    ),
    (
        "ProtectClock",
        "CAP_SYS_TIME is outside the bounding set and @clock outside the syscall filter",
    ),
    (
        "ProtectHostname",
        "no UTS namespace; sethostname needs CAP_SYS_ADMIN, which is outside the bounding set",
    ),
    (
        "RestrictNamespaces",
        "not reproduced; creating namespaces needs CAP_SYS_ADMIN, outside the bounding set",
    ),
    (
        "RestrictRealtime",
        "not reproduced; the daemon sets no scheduling policy",
    ),
    (
        "RestrictSUIDSGID",
        "not reproduced; the daemon creates no set-id files (and CAP_FSETID is outside the bounding set)",
    ),
    (
        "LockPersonality",
        "not reproduced; the daemon never calls personality()",
    ),
];

/// Fails unless every `[Service]` directive is classified above.
fn assert_every_directive_is_known(unit: &Unit) {
    for (k, _) in &unit.service {
        let known = SERVICE_MANAGEMENT.contains(&k.as_str())
            || REPRODUCED.contains(&k.as_str())
            || NOT_REPRODUCED.iter().any(|(n, _)| n == k);
        assert!(
            known,
            "{UNIT} has {k}=, which crates/daemon/tests/sandbox.rs does not know: reproduce it \
             there or list it in NOT_REPRODUCED with the reason (and in docs/packaging.md)"
        );
    }
}

// -------------------------------------------------------------- the fixture

/// A folder under /run standing in for the unit's paths:
/// `bin/` (the unit's /usr/bin, bind mounts of the built binaries),
/// `etc/` (its /etc/openclaw-egress), `run/` (its /run/openclaw-egress),
/// `log/` (outside every unit path). Removed on drop.
struct Root {
    dir: TempDir,
}

impl Root {
    fn new(tag: &str) -> Root {
        let dir = TempDir::new_in(Path::new("/run"), tag);
        for d in ["bin", "etc", "run", "log"] {
            std::fs::create_dir(dir.join(d)).expect("create a fixture folder");
        }
        Root { dir }
    }

    fn join(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// Maps a path of the unit to the fixture; panics on a path the test
    /// does not know how to stand in for.
    fn map(&self, unit_path: &str) -> PathBuf {
        const MAP: &[(&str, &str)] = &[
            ("/usr/bin/", "bin/"),
            ("/etc/openclaw-egress/", "etc/"),
            ("/run/openclaw-egress/", "run/"),
        ];
        let with_slash = if unit_path.ends_with('/') {
            unit_path.to_string()
        } else {
            format!("{unit_path}/")
        };
        for (from, to) in MAP {
            if let Some(rest) = unit_path.strip_prefix(from) {
                return self.join(to).join(rest);
            }
            if with_slash == *from {
                return self.join(to.trim_end_matches('/'));
            }
        }
        panic!(
            "the unit names {unit_path}, which the sandbox test cannot map into its fixture; \
             extend Root::map"
        );
    }

    /// An Exec line of the unit as a command line in the fixture.
    fn exec_line(&self, line: &str, mainpid: Option<u32>) -> Vec<String> {
        assert!(
            !line.starts_with(['+', '!', '@', ':', '-']),
            "Exec prefixes ({line}) are not understood by the sandbox test"
        );
        assert!(
            !line.contains(['"', '\'']),
            "quoting in Exec lines ({line}) is not understood by the sandbox test"
        );
        line.split_whitespace()
            .map(|w| {
                if w == "$MAINPID" {
                    mainpid.expect("$MAINPID outside ExecReload").to_string()
                } else if w.starts_with("/usr/bin/") || w.starts_with("/etc/openclaw-egress/") {
                    self.map(w).display().to_string()
                } else {
                    w.to_string()
                }
            })
            .collect()
    }
}

// ------------------------------------------------------- the sandbox spec

/// What the unit asks for, with its paths mapped into the fixture.
#[derive(Clone)]
struct Spec {
    bounding: u64,
    ambient: u64,
    no_new_privs: bool,
    read_only_root: bool,
    writable: Vec<PathBuf>,
    private_tmp: bool,
    protect_home: bool,
    private_devices: bool,
    /// `/sys` stays read-only (ProtectKernelTunables, ProtectControlGroups).
    read_only_sys: bool,
    proc_options: Option<String>,
    families: Option<Vec<i32>>,
    syscalls: Option<BTreeSet<String>>,
    errno: i32,
    mdwe: bool,
    native_only: bool,
    umask: Option<u32>,
}

/// Capability names, by number.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const CAP_NET_ADMIN: u32 = 12;

fn cap_mask(names: &[String], what: &str) -> u64 {
    let all: u64 = (1u64 << CAPS.len()) - 1;
    let (invert, names) = match names.first() {
        Some(first) if first.starts_with('~') => {
            let mut v = names.to_vec();
            v[0] = first[1..].to_string();
            (true, v)
        }
        _ => (false, names.to_vec()),
    };
    let mut mask = 0u64;
    for n in &names {
        let bit = CAPS
            .iter()
            .position(|c| c == n)
            .unwrap_or_else(|| panic!("{what}: unknown capability {n}"));
        mask |= 1 << bit;
    }
    if invert {
        all & !mask
    } else {
        mask
    }
}

fn family(name: &str) -> i32 {
    match name {
        "AF_UNIX" => libc::AF_UNIX,
        "AF_INET" => libc::AF_INET,
        "AF_INET6" => libc::AF_INET6,
        "AF_NETLINK" => libc::AF_NETLINK,
        "AF_PACKET" => libc::AF_PACKET,
        other => panic!("RestrictAddressFamilies: {other} is not known to the sandbox test"),
    }
}

fn errno_named(name: &str) -> i32 {
    match name {
        "EPERM" => libc::EPERM,
        "EACCES" => libc::EACCES,
        "ENOSYS" => libc::ENOSYS,
        other => panic!("SystemCallErrorNumber={other} is not known to the sandbox test"),
    }
}

impl Spec {
    fn from_unit(unit: &Unit, root: &Root) -> Spec {
        assert_every_directive_is_known(unit);
        let protect_system = unit.last("ProtectSystem");
        assert!(
            matches!(protect_system, None | Some("strict")),
            "ProtectSystem={protect_system:?}: the sandbox test reproduces `strict` only"
        );
        let mut writable: Vec<PathBuf> = unit
            .list("ReadWritePaths")
            .iter()
            .map(|p| root.map(p.trim_start_matches('-')))
            .collect();
        for d in unit.list("RuntimeDirectory") {
            writable.push(root.map(&format!("/run/{d}")));
        }
        writable.sort();
        writable.dedup();

        let bounding = match unit.all("CapabilityBoundingSet").is_empty() {
            true => (1u64 << CAPS.len()) - 1,
            false => cap_mask(&unit.list("CapabilityBoundingSet"), "CapabilityBoundingSet"),
        };
        let ambient = cap_mask(&unit.list("AmbientCapabilities"), "AmbientCapabilities");

        let proc_options = {
            let mut opts = Vec::new();
            if let Some(p) = unit.last("ProtectProc") {
                if p != "default" {
                    opts.push(format!("hidepid={p}"));
                }
            }
            if let Some(s) = unit.last("ProcSubset") {
                if s != "all" {
                    opts.push(format!("subset={s}"));
                }
            }
            (!opts.is_empty()).then(|| opts.join(","))
        };

        let families = {
            let l = unit.list("RestrictAddressFamilies");
            if l.is_empty() {
                None
            } else {
                assert!(
                    !l[0].starts_with('~'),
                    "RestrictAddressFamilies=~...: deny lists are not reproduced"
                );
                Some(l.iter().map(|f| family(f)).collect())
            }
        };

        let syscalls = {
            let lines = unit.all("SystemCallFilter");
            if lines.is_empty() {
                None
            } else {
                Some(syscall_allow_list(&lines))
            }
        };

        let native = unit.last("SystemCallArchitectures");
        assert!(
            matches!(native, None | Some("native")),
            "SystemCallArchitectures={native:?}: only `native` is reproduced"
        );

        Spec {
            bounding,
            ambient,
            no_new_privs: unit.yes("NoNewPrivileges"),
            read_only_root: protect_system == Some("strict"),
            writable,
            private_tmp: unit.yes("PrivateTmp"),
            protect_home: unit.yes("ProtectHome"),
            private_devices: unit.yes("PrivateDevices"),
            read_only_sys: unit.yes("ProtectKernelTunables") || unit.yes("ProtectControlGroups"),
            proc_options,
            families,
            syscalls,
            errno: unit
                .last("SystemCallErrorNumber")
                .map(errno_named)
                .unwrap_or(libc::EPERM),
            mdwe: unit.yes("MemoryDenyWriteExecute"),
            native_only: native == Some("native"),
            umask: unit
                .last("UMask")
                .map(|u| u32::from_str_radix(u, 8).expect("UMask is octal")),
        }
    }
}

// ------------------------------------------------------------ system calls

/// `systemd-analyze syscall-filter`: every group and its members.
fn syscall_groups() -> BTreeMap<String, Vec<String>> {
    let out = Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run systemd-analyze ({e}); it expands the unit's SystemCallFilter groups: \
                 install the Debian package systemd (.ci/run does)"
            )
        });
    assert!(
        out.status.success(),
        "systemd-analyze syscall-filter failed"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut groups = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('@') {
            let name = line.trim().to_string();
            groups.insert(name.clone(), Vec::new());
            current = Some(name);
        } else if let (Some(g), true) = (&current, line.starts_with("    ")) {
            let item = line.trim();
            if !item.starts_with('#') && !item.is_empty() {
                groups.get_mut(g).unwrap().push(item.to_string());
            }
        } else {
            current = None;
        }
    }
    assert!(
        groups.contains_key("@system-service") && groups.contains_key("@default"),
        "systemd-analyze syscall-filter printed no @system-service/@default:\n{text}"
    );
    groups
}

fn expand(groups: &BTreeMap<String, Vec<String>>, item: &str, out: &mut BTreeSet<String>) {
    if item.starts_with('@') {
        let members = groups
            .get(item)
            .unwrap_or_else(|| panic!("unknown system call group {item}"));
        for m in members {
            expand(groups, m, out);
        }
    } else {
        out.insert(item.to_string());
    }
}

/// systemd's semantics: the first line decides allow or deny list; an allow
/// list starts from `@default`; `~` lines remove from it.
fn syscall_allow_list(lines: &[&str]) -> BTreeSet<String> {
    let groups = syscall_groups();
    let mut allow: Option<BTreeSet<String>> = None;
    for line in lines {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, *line),
        };
        let mut set = BTreeSet::new();
        for item in items.split_whitespace() {
            expand(&groups, item, &mut set);
        }
        match (&mut allow, deny) {
            (None, true) => panic!("SystemCallFilter=~...: deny lists are not reproduced"),
            (None, false) => {
                let mut base = BTreeSet::new();
                expand(&groups, "@default", &mut base);
                base.extend(set);
                allow = Some(base);
            }
            (Some(a), false) => a.extend(set),
            (Some(a), true) => a.retain(|s| !set.contains(s)),
        }
    }
    allow.expect("SystemCallFilter has lines")
}

/// System call numbers of this architecture, from the kernel headers.
#[cfg(target_arch = "x86_64")]
fn syscall_numbers() -> BTreeMap<String, u32> {
    const HEADER: &str = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
    let text = std::fs::read_to_string(HEADER).unwrap_or_else(|e| {
        panic!("cannot read {HEADER} ({e}): install linux-libc-dev (libc6-dev pulls it in)")
    });
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if let (Some("#define"), Some(name), Some(nr)) = (w.next(), w.next(), w.next()) {
            if let (Some(name), Ok(nr)) = (name.strip_prefix("__NR_"), nr.parse::<u32>()) {
                out.insert(name.to_string(), nr);
            }
        }
    }
    assert!(out.len() > 300, "{HEADER}: only {} system calls", out.len());
    out
}

#[cfg(not(target_arch = "x86_64"))]
fn syscall_numbers() -> BTreeMap<String, u32> {
    panic!(
        "the sandbox test builds its seccomp filter for x86_64 only; port syscall_numbers and \
         AUDIT_ARCH to this architecture"
    )
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// classic BPF opcodes
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

// offsets in struct seccomp_data
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
fn data_arg(i: u32) -> u32 {
    16 + 8 * i // low 32 bits on little-endian
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn ret_errno(e: i32) -> libc::sock_filter {
    stmt(RET_K, libc::SECCOMP_RET_ERRNO | e as u32)
}

fn ret_allow() -> libc::sock_filter {
    stmt(RET_K, libc::SECCOMP_RET_ALLOW)
}

/// One filter with what systemd installs as several: the system call allow
/// list, the address families of socket(), and W^X for mmap/mprotect/shmat.
fn seccomp_program(spec: &Spec) -> Option<Vec<libc::sock_filter>> {
    if spec.syscalls.is_none() && spec.families.is_none() && !spec.mdwe && !spec.native_only {
        return None;
    }
    let numbers = syscall_numbers();
    let nr = |n: &str| numbers.get(n).copied();
    let allowed: BTreeSet<u32> = match &spec.syscalls {
        Some(names) => names.iter().filter_map(|n| nr(n)).collect(),
        None => numbers.values().copied().collect(),
    };
    let mut p = vec![
        stmt(LD_W_ABS, DATA_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        ret_errno(spec.errno),
        stmt(LD_W_ABS, DATA_NR),
        // x32 system calls share the arch value; they are not native.
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        ret_errno(spec.errno),
    ];
    let socket = nr("socket");
    let wx_mmap = [nr("mmap")];
    let x_mprotect = [nr("mprotect"), nr("pkey_mprotect")];
    let shmat = nr("shmat");
    const PROT_WX: u32 = (libc::PROT_WRITE | libc::PROT_EXEC) as u32;
    for n in allowed {
        let mut block: Vec<libc::sock_filter> = Vec::new();
        if Some(n) == socket {
            if let Some(fams) = &spec.families {
                block.push(stmt(LD_W_ABS, data_arg(0)));
                for f in fams {
                    block.push(jump(JEQ_K, *f as u32, 0, 1));
                    block.push(ret_allow());
                }
                block.push(ret_errno(libc::EAFNOSUPPORT));
            }
        } else if spec.mdwe && wx_mmap.contains(&Some(n)) {
            block.extend([
                stmt(LD_W_ABS, data_arg(2)),
                stmt(AND_K, PROT_WX),
                jump(JEQ_K, PROT_WX, 0, 1),
                ret_errno(libc::EPERM),
                ret_allow(),
            ]);
        } else if spec.mdwe && x_mprotect.contains(&Some(n)) {
            block.extend([
                stmt(LD_W_ABS, data_arg(2)),
                jump(JSET_K, libc::PROT_EXEC as u32, 0, 1),
                ret_errno(libc::EPERM),
                ret_allow(),
            ]);
        } else if spec.mdwe && Some(n) == shmat {
            block.extend([
                stmt(LD_W_ABS, data_arg(2)),
                jump(JSET_K, libc::SHM_EXEC as u32, 0, 1),
                ret_errno(libc::EPERM),
                ret_allow(),
            ]);
        }
        if block.is_empty() {
            p.push(jump(JEQ_K, n, 0, 1));
            p.push(ret_allow());
        } else {
            let len = u8::try_from(block.len()).expect("a short block");
            p.push(jump(JEQ_K, n, 0, len));
            p.extend(block);
        }
    }
    p.push(ret_errno(spec.errno));
    assert!(p.len() < 4096, "seccomp program too long: {}", p.len());
    Some(p)
}

// ------------------------------------------------------ applying the sandbox

/// Everything the child needs, computed before fork: after fork only
/// async-signal-safe system calls run (the test process has threads), so
/// nothing below allocates.
struct Prepared {
    netns: Option<OwnedFd>,
    binds: Vec<(CString, CString)>,
    writable: Vec<CString>,
    read_only_root: bool,
    read_only_sys: bool,
    private_tmp: bool,
    inaccessible: Vec<CString>,
    private_devices: bool,
    proc_options: Option<CString>,
    umask: Option<u32>,
    last_cap: u32,
    bounding: u64,
    ambient: u64,
    no_new_privs: bool,
    filter: Option<Vec<libc::sock_filter>>,
}

fn cstr(p: impl AsRef<OsStr>) -> CString {
    CString::new(p.as_ref().as_bytes()).expect("no NUL in paths")
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// Writes `what` to stderr and returns the errno of the failed call.
fn fail(what: &[u8]) -> io::Error {
    let e = io::Error::last_os_error();
    // SAFETY: write(2) on fd 2 with a valid buffer; async-signal-safe.
    unsafe {
        libc::write(2, b"sandbox setup failed: ".as_ptr().cast(), 22);
        libc::write(2, what.as_ptr().cast(), what.len());
        libc::write(2, b"\n".as_ptr().cast(), 1);
    }
    e
}

/// prctl(2) with every argument as the `unsigned long` the kernel reads
/// (a bare integer literal would go through the varargs as a 32-bit int).
///
/// # Safety
/// As prctl(2) for the given option.
unsafe fn prctl(option: libc::c_int, a2: libc::c_ulong, a3: libc::c_ulong) -> libc::c_long {
    libc::prctl(option, a2, a3, 0 as libc::c_ulong, 0 as libc::c_ulong) as libc::c_long
}

fn check(rc: libc::c_long, what: &[u8]) -> io::Result<()> {
    if rc < 0 {
        Err(fail(what))
    } else {
        Ok(())
    }
}

impl Prepared {
    fn new(spec: &Spec, ns: Option<&Netns>, binds: &[(PathBuf, PathBuf)]) -> Prepared {
        let netns = ns.map(|ns| {
            OwnedFd::from(
                File::open(ns.path())
                    .unwrap_or_else(|e| panic!("open {}: {e}", ns.path().display())),
            )
        });
        let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .expect("read cap_last_cap")
            .trim()
            .parse()
            .expect("cap_last_cap is a number");
        let inaccessible = if spec.protect_home {
            ["/home", "/root", "/run/user"]
                .iter()
                .filter(|p| Path::new(p).is_dir())
                .map(cstr)
                .collect()
        } else {
            Vec::new()
        };
        Prepared {
            netns,
            binds: binds.iter().map(|(s, d)| (cstr(s), cstr(d))).collect(),
            writable: spec.writable.iter().map(cstr).collect(),
            read_only_root: spec.read_only_root,
            read_only_sys: spec.read_only_sys,
            private_tmp: spec.private_tmp,
            inaccessible,
            private_devices: spec.private_devices,
            proc_options: spec.proc_options.as_deref().map(cstr),
            umask: spec.umask,
            last_cap,
            bounding: spec.bounding,
            ambient: spec.ambient,
            no_new_privs: spec.no_new_privs,
            filter: seccomp_program(spec),
        }
    }

    /// Runs in the child between fork and exec.
    fn apply(&self) -> io::Result<()> {
        // SAFETY (for every call below): plain system calls on NUL-terminated
        // strings and structs owned by `self` or on the stack, all valid for
        // the duration of each call; the child is single-threaded.
        unsafe {
            if let Some(fd) = &self.netns {
                check(
                    libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) as _,
                    b"setns",
                )?;
            }
            check(libc::unshare(libc::CLONE_NEWNS) as _, b"unshare(NEWNS)")?;
            // PrivateMounts: nothing done here propagates back to the host.
            check(
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) as _,
                b"make / private",
            )?;
            for (src, dst) in &self.binds {
                check(
                    libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) as _,
                    b"bind a binary",
                )?;
            }
            // Writable paths become mounts of their own, so the read-only
            // flag can be cleared on them alone.
            for w in &self.writable {
                check(
                    libc::mount(
                        w.as_ptr(),
                        w.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ) as _,
                    b"bind a writable path",
                )?;
            }
            if self.private_devices {
                self.private_dev()?;
            }
            if self.read_only_root {
                let set_ro = MountAttr {
                    attr_set: MOUNT_ATTR_RDONLY,
                    attr_clr: 0,
                    propagation: 0,
                    userns_fd: 0,
                };
                let clear_ro = MountAttr {
                    attr_set: 0,
                    attr_clr: MOUNT_ATTR_RDONLY,
                    propagation: 0,
                    userns_fd: 0,
                };
                let setattr = |path: &std::ffi::CStr, attr: &MountAttr| {
                    libc::syscall(
                        libc::SYS_mount_setattr,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        AT_RECURSIVE,
                        attr as *const MountAttr,
                        std::mem::size_of::<MountAttr>(),
                    )
                };
                check(setattr(c"/", &set_ro), b"make / read-only")?;
                // The API file systems stay as systemd leaves them: /dev and
                // /proc writable, /sys read-only only when asked for.
                check(setattr(c"/dev", &clear_ro), b"make /dev writable")?;
                check(setattr(c"/proc", &clear_ro), b"make /proc writable")?;
                if !self.read_only_sys {
                    check(setattr(c"/sys", &clear_ro), b"make /sys writable")?;
                }
                for w in &self.writable {
                    check(setattr(w, &clear_ro), b"make a writable path writable")?;
                }
            }
            if self.private_tmp {
                for t in [c"/tmp", c"/var/tmp"] {
                    check(
                        libc::mount(
                            c"tmpfs".as_ptr(),
                            t.as_ptr(),
                            c"tmpfs".as_ptr(),
                            libc::MS_NOSUID | libc::MS_NODEV,
                            c"mode=1777".as_ptr().cast(),
                        ) as _,
                        b"private tmp",
                    )?;
                }
            }
            for p in &self.inaccessible {
                check(
                    libc::mount(
                        c"tmpfs".as_ptr(),
                        p.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        c"mode=000".as_ptr().cast(),
                    ) as _,
                    b"protect home",
                )?;
            }
            if let Some(opts) = &self.proc_options {
                check(
                    libc::mount(
                        c"proc".as_ptr(),
                        c"/proc".as_ptr(),
                        c"proc".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        opts.as_ptr().cast(),
                    ) as _,
                    b"mount /proc",
                )?;
            }
            if let Some(u) = self.umask {
                libc::umask(u as libc::mode_t);
            }
            // Capabilities: the bounding set decides what root keeps over
            // exec; inheritable and ambient as systemd sets them.
            for cap in 0..=self.last_cap {
                if cap >= 64 || self.bounding & (1 << cap) == 0 {
                    check(
                        prctl(libc::PR_CAPBSET_DROP, cap.into(), 0),
                        b"drop a bounding capability",
                    )?;
                }
            }
            let mut hdr = CapHeader {
                version: CAP_V3,
                pid: 0,
            };
            let mut data = [CapData::default(); 2];
            check(
                libc::syscall(
                    libc::SYS_capget,
                    &mut hdr as *mut CapHeader,
                    data.as_mut_ptr(),
                ),
                b"capget",
            )?;
            data[0].inheritable = self.ambient as u32;
            data[1].inheritable = (self.ambient >> 32) as u32;
            check(
                libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()),
                b"capset",
            )?;
            check(
                prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                    0,
                ),
                b"clear ambient",
            )?;
            for cap in 0..64u32 {
                if self.ambient & (1 << cap) != 0 {
                    check(
                        prctl(
                            libc::PR_CAP_AMBIENT,
                            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                            cap.into(),
                        ),
                        b"raise an ambient capability",
                    )?;
                }
            }
            if self.no_new_privs {
                check(prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0), b"no_new_privs")?;
            }
            if let Some(filter) = &self.filter {
                let prog = libc::sock_fprog {
                    len: filter.len() as libc::c_ushort,
                    filter: filter.as_ptr() as *mut libc::sock_filter,
                };
                check(
                    libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        0,
                        &prog as *const libc::sock_fprog,
                    ),
                    b"seccomp",
                )?;
            }
        }
        Ok(())
    }

    /// A /dev with the usual pseudo-devices only, as PrivateDevices makes it.
    ///
    /// # Safety
    /// Only system calls on static strings; call in the child only.
    unsafe fn private_dev(&self) -> io::Result<()> {
        check(
            libc::mount(
                c"tmpfs".as_ptr(),
                c"/dev".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                c"mode=0755".as_ptr().cast(),
            ) as _,
            b"mount a private /dev",
        )?;
        let old = libc::umask(0);
        for (path, major, minor) in [
            (c"/dev/null", 1, 3),
            (c"/dev/zero", 1, 5),
            (c"/dev/full", 1, 7),
            (c"/dev/random", 1, 8),
            (c"/dev/urandom", 1, 9),
            (c"/dev/tty", 5, 0),
        ] {
            check(
                libc::mknod(
                    path.as_ptr(),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(major, minor),
                ) as _,
                b"mknod in the private /dev",
            )?;
        }
        check(
            libc::mkdir(c"/dev/shm".as_ptr(), 0o1777) as _,
            b"mkdir /dev/shm",
        )?;
        check(
            libc::mount(
                c"tmpfs".as_ptr(),
                c"/dev/shm".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=1777".as_ptr().cast(),
            ) as _,
            b"mount /dev/shm",
        )?;
        for (target, link) in [
            (c"/proc/self/fd", c"/dev/fd"),
            (c"/proc/self/fd/0", c"/dev/stdin"),
            (c"/proc/self/fd/1", c"/dev/stdout"),
            (c"/proc/self/fd/2", c"/dev/stderr"),
        ] {
            check(
                libc::symlink(target.as_ptr(), link.as_ptr()) as _,
                b"symlink in the private /dev",
            )?;
        }
        libc::umask(old);
        Ok(())
    }
}

/// Builds a command that runs `argv` in the sandbox `spec` (in `ns` when
/// given), with systemd's minimal environment plus `env`, cwd `/`.
fn sandboxed(
    spec: &Spec,
    root: &Root,
    ns: Option<&Netns>,
    argv: &[String],
    env: &[(&str, &str)],
) -> Command {
    // The unit's binaries are bind mounts of the built ones, made inside the
    // sandbox, so /home, /root and /tmp can be hidden even when the target
    // folder lies there.
    let mut binds = Vec::new();
    let bin_dir = root.join("bin");
    for (name, built) in built_binaries() {
        let stand_in = bin_dir.join(name);
        if !stand_in.exists() {
            File::create(&stand_in).expect("create a bind-mount point");
        }
        binds.push((built, stand_in));
    }
    let prepared = Prepared::new(spec, ns, &binds);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env.iter().copied())
        .current_dir("/")
        .stdin(Stdio::null());
    // SAFETY: `apply` makes only async-signal-safe system calls and does not
    // allocate (everything was prepared above).
    unsafe {
        cmd.pre_exec(move || prepared.apply());
    }
    cmd
}

/// The binaries the fixture's `bin/` stands in with: the daemon, the CLI
/// next to it, and this test binary (the probe).
fn built_binaries() -> Vec<(&'static str, PathBuf)> {
    let daemon = PathBuf::from(DAEMON);
    let cli = sibling_binary(DAEMON, "openclaw-egress");
    let probe = std::env::current_exe().expect("the test binary's path");
    vec![
        ("openclaw-egressd", daemon),
        ("openclaw-egress", cli),
        ("sandbox-probe", probe),
    ]
}

// ------------------------------------------------------------ daemon fixture

/// A namespace with a DNS server, a fixture folder with config and
/// allowlist, and the unit's sandbox mapped onto it.
struct Lab {
    ns: Netns,
    root: Root,
    unit: Unit,
    spec: Spec,
    table: String,
}

const A_ADDR: &str = "198.18.7.1";
const B_ADDR: &str = "198.18.7.2";

impl Lab {
    fn new(tag: &str) -> Lab {
        require_root();
        let ns = Netns::new(tag);
        let root = Root::new(tag);
        let unit = Unit::load();
        let spec = Spec::from_unit(&unit, &root);
        if let Some(mode) = unit.last("RuntimeDirectoryMode") {
            let mode = u32::from_str_radix(mode, 8).expect("RuntimeDirectoryMode is octal");
            std::fs::set_permissions(root.join("run"), std::fs::Permissions::from_mode(mode))
                .expect("chmod the run folder");
        }
        let table = format!("oc_sb_{}", tag.replace('-', "_"));
        let lab = Lab {
            ns,
            root,
            unit,
            spec,
            table,
        };
        lab.write_etc("allowlist.conf", "a.test:443\n");
        lab.write_etc("egressd.toml", &lab.config_text());
        lab
    }

    fn config_text(&self) -> String {
        format!(
            "allowlist = \"allowlist.conf\"\n\
             [network]\n\
             interface = \"oc-sb0\"\n\
             [resolver]\n\
             servers = [\"127.0.0.1:53\"]\n\
             min_ttl = \"1s\"\n\
             timeout = \"1s\"\n\
             attempts = 1\n\
             [dns]\n\
             allow = []\n\
             [firewall]\n\
             table = \"{table}\"\n\
             allow_private = [\"198.18.0.0/15\"]\n\
             [control]\n\
             socket = \"{socket}\"\n",
            table = self.table,
            socket = self.root.map("/run/openclaw-egress/control.sock").display(),
        )
    }

    /// Writes a file of the config folder atomically (as editors do).
    fn write_etc(&self, name: &str, text: &str) {
        self.root.dir.write(&format!("etc/{name}"), text);
    }

    fn dnsmasq(&self) -> Dnsmasq<'_> {
        let records: Vec<(&str, IpAddr)> = vec![
            ("a.test", A_ADDR.parse().unwrap()),
            ("b.test", B_ADDR.parse().unwrap()),
        ];
        Dnsmasq::start(&self.ns, &[IpAddr::V4(Ipv4Addr::LOCALHOST)], 60, &records)
    }

    fn listing(&self) -> Option<String> {
        self.ns.nft_table(&self.table)
    }

    /// Runs one of the unit's Exec lines in the sandbox, to completion.
    fn run_exec(&self, line: &str, mainpid: Option<u32>) -> Output {
        let argv = self.root.exec_line(line, mainpid);
        sandboxed(&self.spec, &self.root, Some(&self.ns), &argv, &[])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {argv:?} in the sandbox: {e}"))
    }

    /// Starts the unit's ExecStart in the sandbox `spec`; output to
    /// `log/daemon.log`.
    fn start(&self, spec: &Spec, env: &[(&str, &str)]) -> Daemon {
        let exec = self.unit.all("ExecStart");
        assert_eq!(exec.len(), 1, "one ExecStart in the unit");
        let argv = self.root.exec_line(exec[0], None);
        let mut cmd = sandboxed(spec, &self.root, Some(&self.ns), &argv, env);
        Daemon::spawn(&mut cmd, &self.root.join("log/daemon.log"))
    }
}

/// `NAME:\tVALUE` of /proc/PID/status.
fn proc_status(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// The top mount at `point` in /proc/PID/mountinfo: (options, fstype,
/// super options).
fn mount_at(pid: u32, point: &Path) -> Option<(String, String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let point = point.to_str().unwrap();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            (f.get(4) == Some(&point))
                .then(|| (f[5].to_string(), r[0].to_string(), r[2].to_string()))
        })
        .next_back()
}

/// The options of the mount `path` lies on, in /proc/PID/mountinfo.
fn mount_options_of(pid: u32, path: &Path) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let point = Path::new(f.get(4)?);
            path.starts_with(point)
                .then(|| (point.components().count(), f[5].to_string()))
        })
        // The deepest mount point; among equals, the last (top) one.
        .fold(
            None,
            |best: Option<(usize, String)>, (depth, opts)| match best {
                Some((d, _)) if d > depth => best,
                _ => Some((depth, opts)),
            },
        )
        .map(|(_, o)| o)
        .unwrap_or_else(|| panic!("no mount holds {}", path.display()))
}

// --------------------------------------------------------------------- tests

/// The real daemon under the unit's sandbox: it loads its table through
/// netlink, answers on its control socket, applies an allowlist edit,
/// restores its table when it is deleted, reloads through the unit's
/// ExecReload, pings the watchdog, and exits 0 on the unit's KillSignal.
#[test]
fn the_daemon_works_under_the_units_sandbox() {
    let lab = Lab::new("sbx-run");
    let _dns = lab.dnsmasq();
    // In the config folder: read-only inside the sandbox, as
    // /run/systemd/notify is under ProtectSystem=strict.
    let notify = NotifySocket::bind(lab.root.join("etc/notify.sock"));

    // The code's default socket lies in a folder the unit makes writable.
    let default_socket = egress_core::config::Config::default().control.socket;
    let folder = default_socket
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        lab.spec.writable.contains(&lab.root.map(&folder)),
        "the default control socket {} is not in a writable path of the unit",
        default_socket.display()
    );

    for line in lab.unit.all("ExecStartPre") {
        let out = lab.run_exec(line, None);
        assert!(
            out.status.success(),
            "ExecStartPre={line} failed in the sandbox: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let mut d = lab.start(
        &lab.spec,
        &[
            ("NOTIFY_SOCKET", notify.path().to_str().unwrap()),
            // The unit's WatchdogSec is 30 s; a short one shows the pings.
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let pid = d.pid();
    let deadline = Instant::now() + Duration::from_secs(20);
    while notify.count("READY=1") == 0 {
        assert!(
            d.is_running(),
            "the sandboxed daemon exited ({:?}):\n{}",
            d.exited(),
            d.log()
        );
        assert!(
            Instant::now() < deadline,
            "no READY=1 from the sandboxed daemon after 20 s:\n{}",
            d.log()
        );
        std::thread::sleep(POLL);
    }

    // The restrictions are really on the daemon process.
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status(pid, "Seccomp"), "2");
    let hex = |m: u64| format!("{m:016x}");
    assert_eq!(proc_status(pid, "CapBnd"), hex(lab.spec.bounding));
    assert_eq!(proc_status(pid, "CapEff"), hex(lab.spec.bounding));
    assert_eq!(proc_status(pid, "CapAmb"), hex(lab.spec.ambient));
    assert_eq!(
        lab.spec.bounding,
        1 << CAP_NET_ADMIN,
        "the unit's bounding set"
    );
    for (path, want) in [
        (PathBuf::from("/"), "ro"),
        (PathBuf::from("/usr/bin"), "ro"),
        (lab.root.join("etc"), "ro"),
        (lab.root.join("bin/openclaw-egressd"), "ro"),
        (lab.root.join("run"), "rw"),
    ] {
        let opts = mount_options_of(pid, &path);
        assert!(
            opts.starts_with(want),
            "{} is on a mount with {opts}, want {want}",
            path.display()
        );
    }
    let (_, fstype, _) = mount_at(pid, Path::new("/tmp")).expect("a private /tmp");
    assert_eq!(fstype, "tmpfs");
    let (_, fstype, superopts) = mount_at(pid, Path::new("/proc")).expect("/proc");
    assert_eq!(fstype, "proc");
    assert!(superopts.contains("subset=pid"), "/proc: {superopts}");

    // Its table, through netlink.
    wait_until(
        "a.test's address in the table",
        Duration::from_secs(10),
        || lab.listing().is_some_and(|l| l.contains(A_ADDR)),
        || format!("{:?}\n{}", lab.listing(), d.log()),
    );

    // Its control socket, asked by the CLI in a sandbox where even the run
    // folder is read-only: connect() to a Unix socket needs no writable
    // mount (the case of /run/docker.sock).
    let mut client = lab.spec.clone();
    client.writable.clear();
    let argv = vec![
        lab.root
            .map("/usr/bin/openclaw-egress")
            .display()
            .to_string(),
        "--config".into(),
        lab.root
            .map("/etc/openclaw-egress/egressd.toml")
            .display()
            .to_string(),
        "status".into(),
        "--json".into(),
    ];
    let out = sandboxed(&client, &lab.root, Some(&lab.ns), &argv, &[])
        .output()
        .expect("run status");
    assert_eq!(
        out.status.code(),
        Some(0),
        "status in the sandbox: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Status = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert!(status.entries.iter().any(|e| e.text == "a.test:443"));

    // An allowlist edit, seen through the read-only mount.
    lab.write_etc("allowlist.conf", "a.test:443\nb.test:443\n");
    wait_until(
        "b.test's address after the allowlist edit",
        Duration::from_secs(10),
        || lab.listing().is_some_and(|l| l.contains(B_ADDR)),
        || format!("{:?}\n{}", lab.listing(), d.log()),
    );

    // Drift repair: the netlink monitor works in the sandbox.
    lab.ns
        .exec_ok(["nft", "delete", "table", "inet", &lab.table]);
    wait_until(
        "the table restored after its deletion",
        Duration::from_secs(10),
        || {
            lab.listing()
                .is_some_and(|l| l.contains(A_ADDR) && l.contains(B_ADDR))
        },
        || format!("{:?}\n{}", lab.listing(), d.log()),
    );

    // The unit's ExecReload, run in the sandbox like systemd runs it.
    let reloading = notify.count("RELOADING=1");
    let ready = notify.count("READY=1");
    for line in lab.unit.all("ExecReload") {
        let out = lab.run_exec(line, Some(pid));
        assert!(
            out.status.success(),
            "ExecReload={line} failed in the sandbox: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_until(
        "RELOADING=1 then READY=1 after ExecReload",
        Duration::from_secs(10),
        || notify.count("RELOADING=1") > reloading && notify.count("READY=1") > ready,
        || format!("{}\n{}", notify.dump(), d.log()),
    );

    wait_until(
        "watchdog pings",
        Duration::from_secs(5),
        || notify.count("WATCHDOG=1") >= 2,
        || notify.dump(),
    );

    // KillSignal: exit 0, the rules stay.
    let sig = lab.unit.last("KillSignal").unwrap_or("SIGTERM");
    assert_eq!(sig, "SIGTERM", "the test sends the unit's KillSignal");
    // SAFETY: kill(2) on the pid of our child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let st = d
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", d.log()));
    assert!(st.success(), "exit after SIGTERM: {st}\n{}", d.log());
    assert!(lab.listing().is_some(), "the table stays after SIGTERM");

    let log = d.log();
    for bad in [
        "Operation not permitted",
        "Permission denied",
        "Read-only file system",
        " ERROR ",
    ] {
        assert!(!log.contains(bad), "the daemon's log has {bad:?}:\n{log}");
    }
}

/// Negative control: the same sandbox without CAP_NET_ADMIN. The daemon
/// must fail, early and saying what the kernel refused.
#[test]
fn without_cap_net_admin_the_daemon_fails_clearly() {
    let lab = Lab::new("sbx-nocap");
    let mut spec = lab.spec.clone();
    spec.bounding &= !(1 << CAP_NET_ADMIN);
    let mut d = lab.start(&spec, &[]);
    let st = d
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the daemon kept running without CAP_NET_ADMIN\n{}", d.log()));
    assert_eq!(st.code(), Some(1), "{}", d.log());
    let log = d.log();
    assert!(
        log.contains("Operation not permitted")
            && log.contains(&format!("table inet {}", lab.table)),
        "the error does not say what was refused:\n{log}"
    );
    assert!(
        lab.listing().is_none(),
        "a table was loaded without CAP_NET_ADMIN"
    );
}

/// Negative control: the same sandbox without the unit's writable paths.
/// The daemon cannot create its control socket and says where.
#[test]
fn without_its_writable_folder_the_daemon_cannot_bind_its_socket() {
    let lab = Lab::new("sbx-ro");
    let _dns = lab.dnsmasq();
    let mut spec = lab.spec.clone();
    spec.writable.clear();
    let mut d = lab.start(&spec, &[]);
    let st = d
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the daemon kept running on a read-only system\n{}", d.log()));
    assert!(!st.success(), "{}", d.log());
    let log = d.log();
    let socket = lab.root.map("/run/openclaw-egress/control.sock");
    assert!(
        log.contains("Read-only file system") && log.contains(socket.to_str().unwrap()),
        "the error does not name the socket and the cause:\n{log}"
    );
}

/// The sandbox itself: a probe (this test binary, re-run with PROBE_ENV)
/// tries, inside it, what the unit forbids and what the daemon needs; the
/// same probe outside shows that each check can tell the difference.
#[test]
fn the_sandbox_enforces_what_the_unit_says() {
    if let Ok(args) = std::env::var(PROBE_ENV) {
        probe(&args);
        return;
    }
    require_root();
    let root = Root::new("sbx-probe");
    let unit = Unit::load();
    let spec = Spec::from_unit(&unit, &root);

    // A stand-in for /run/docker.sock (root:docker 0660): a listening socket
    // in a folder that is read-only inside the sandbox.
    let docker = root.join("etc/docker.sock");
    let listener = UnixListener::bind(&docker).expect("bind the docker stand-in");
    std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o660)).unwrap();
    let server = std::thread::spawn(move || {
        // Answers up to two connections (inside and outside the sandbox).
        for _ in 0..2 {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(b"ok");
                }
                Err(_) => return,
            }
        }
    });
    let marker = format!("oct-probe-{}", std::process::id());
    let args = format!(
        "{}|{}|{}|{marker}",
        root.join("etc").display(),
        root.map("/run/openclaw-egress").display(),
        docker.display()
    );
    let probe_bin = root.join("bin/sandbox-probe").display().to_string();
    let argv = vec![
        probe_bin,
        "--exact".into(),
        "the_sandbox_enforces_what_the_unit_says".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ];

    let run = |spec: Option<&Spec>| -> BTreeMap<String, String> {
        let mut cmd = match spec {
            Some(s) => sandboxed(s, &root, None, &argv, &[(PROBE_ENV, &args)]),
            None => {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.args(&argv[1..]).env(PROBE_ENV, &args);
                c
            }
        };
        let out = cmd.output().expect("run the probe");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "the probe failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix("probe "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };

    let inside = run(Some(&spec));
    let tmp_marker = Path::new("/tmp").join(&marker);
    assert!(
        !tmp_marker.exists(),
        "the sandboxed probe's /tmp file reached the host's /tmp"
    );
    let outside = run(None);
    // The unsandboxed probe wrote it to the real /tmp.
    let _ = std::fs::remove_file(&tmp_marker);
    let _ = UnixStream::connect(&docker); // unblock the server if a probe failed early
    let _ = server.join();

    let errno = |e: i32| format!("err {e}");
    let ok = "ok".to_string();
    let expect_inside: &[(&str, String)] = &[
        ("write-ro", errno(libc::EROFS)),
        ("write-rw", ok.clone()),
        ("write-tmp", ok.clone()),
        ("home", errno(libc::EACCES)),
        ("proc-sys", errno(libc::ENOENT)),
        ("dev-kmsg", errno(libc::ENOENT)),
        ("dev-null", ok.clone()),
        ("af-packet", errno(libc::EAFNOSUPPORT)),
        ("af-netlink-netfilter", ok.clone()),
        ("af-inet6", ok.clone()),
        ("mmap-wx", errno(libc::EPERM)),
        ("mprotect-x", errno(libc::EPERM)),
        ("mmap-rx", ok.clone()),
        ("setpriority", errno(spec.errno)),
        ("chown", errno(libc::EPERM)),
        ("cap-eff", format!("{:016x}", spec.bounding)),
        ("bounding-sys-admin", "0".into()),
        ("no-new-privs", "1".into()),
        ("umask", format!("{:04o}", spec.umask.unwrap_or(0o022))),
        ("docker-connect", ok.clone()),
    ];
    let mut failures = Vec::new();
    for (k, want) in expect_inside {
        let got = inside.get(*k).map(String::as_str).unwrap_or("(missing)");
        if got != want {
            failures.push(format!("inside: {k} = {got}, want {want}"));
        }
    }
    // Outside, every restriction above is absent (so the probe can see it).
    for k in [
        "write-ro",
        "af-packet",
        "mmap-wx",
        "mprotect-x",
        "setpriority",
        "chown",
        "no-new-privs",
        "proc-sys",
        "bounding-sys-admin",
    ] {
        if inside.get(k) == outside.get(k) {
            failures.push(format!(
                "{k} is {:?} both inside and outside the sandbox",
                inside.get(k)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\ninside: {inside:#?}\noutside: {outside:#?}",
        failures.join("\n")
    );
}

/// The probe side of [`the_sandbox_enforces_what_the_unit_says`]: prints
/// `probe NAME=ok` or `probe NAME=err ERRNO` (or a value) per check.
fn probe(args: &str) {
    let parts: Vec<&str> = args.split('|').collect();
    let (ro, rw, docker, marker) = (parts[0], parts[1], parts[2], parts[3]);
    fn res<T>(r: io::Result<T>) -> String {
        match r {
            Ok(_) => "ok".into(),
            Err(e) => format!("err {}", e.raw_os_error().unwrap_or(-1)),
        }
    }
    fn sys(rc: libc::c_long) -> io::Result<()> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    let report = |k: &str, v: String| println!("probe {k}={v}");
    // libtest has printed `test NAME ... ` without a newline.
    println!();

    let ro_file = Path::new(ro).join(format!("{marker}-probe"));
    let r = File::create(&ro_file);
    let _ = std::fs::remove_file(&ro_file);
    report("write-ro", res(r));
    let rw_file = Path::new(rw).join(format!("{marker}-probe"));
    let r = File::create(&rw_file);
    let _ = std::fs::remove_file(&rw_file);
    report("write-rw", res(r));
    // Left in place: the test checks it did not reach the host's /tmp.
    report(
        "write-tmp",
        res(File::create(Path::new("/tmp").join(marker))),
    );
    report("home", res(std::fs::read_dir("/root")));
    report("proc-sys", res(std::fs::metadata("/proc/sys/kernel")));
    report("dev-kmsg", res(std::fs::metadata("/dev/kmsg")));
    report(
        "dev-null",
        res(OpenOptions::new().write(true).open("/dev/null")),
    );

    let socket = |domain: i32, ty: i32, proto: i32| {
        // SAFETY: socket(2) with constant arguments; the fd is closed at once.
        let fd = unsafe { libc::socket(domain, ty, proto) };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: fd was just returned by socket(2).
            unsafe { libc::close(fd) };
            Ok(())
        }
    };
    report("af-packet", res(socket(libc::AF_PACKET, libc::SOCK_RAW, 0)));
    report(
        "af-netlink-netfilter",
        res(socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW,
            libc::NETLINK_NETFILTER,
        )),
    );
    report("af-inet6", res(socket(libc::AF_INET6, libc::SOCK_DGRAM, 0)));

    let map = |prot: i32| {
        // SAFETY: an anonymous private mapping, unmapped right after.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            Err(io::Error::last_os_error())
        } else {
            Ok(p)
        }
    };
    let unmap = |p: *mut libc::c_void| {
        // SAFETY: p is a 4096-byte mapping made by `map`.
        unsafe { libc::munmap(p, 4096) };
    };
    let r = map(libc::PROT_WRITE | libc::PROT_EXEC);
    if let Ok(p) = &r {
        unmap(*p);
    }
    report("mmap-wx", res(r));
    let r = map(libc::PROT_READ | libc::PROT_EXEC);
    if let Ok(p) = &r {
        unmap(*p);
    }
    report("mmap-rx", res(r));
    let page = map(libc::PROT_READ | libc::PROT_WRITE).expect("a plain mapping");
    // SAFETY: mprotect on the page mapped just above.
    let r = sys(unsafe { libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC) } as _);
    unmap(page);
    report("mprotect-x", res(r));

    // @resources is outside the filter. (Not setrlimit: glibc calls
    // prlimit64, which systemd puts in @default.) Raising one's own nice
    // value needs no privilege, so only the filter can refuse it.
    // SAFETY: setpriority(2) on the calling process.
    let r = sys(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 5) } as _);
    report("setpriority", res(r));

    let target = Path::new(rw).join(format!("{marker}-chown"));
    File::create(&target).expect("create in the writable folder");
    let c = CString::new(target.as_os_str().as_bytes()).unwrap();
    // SAFETY: chown(2) on a NUL-terminated path.
    let r = sys(unsafe { libc::chown(c.as_ptr(), 1, 1) } as _);
    let _ = std::fs::remove_file(&target);
    report("chown", res(r));

    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a v3 header and two data structs.
    unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    let eff = (data[1].effective as u64) << 32 | data[0].effective as u64;
    report("cap-eff", format!("{eff:016x}"));
    // SAFETY: prctl reads of the calling process's state.
    let (bset, nnp) = unsafe {
        (
            prctl(libc::PR_CAPBSET_READ, 21 /* CAP_SYS_ADMIN */, 0),
            prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0),
        )
    };
    report("bounding-sys-admin", bset.to_string());
    report("no-new-privs", nnp.to_string());
    // SAFETY: umask(2) cannot fail; the old value is put back.
    let old = unsafe { libc::umask(0) };
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    report("umask", format!("{old:04o}"));

    let r = UnixStream::connect(docker).and_then(|mut s| {
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf)?;
        Ok(buf)
    });
    report("docker-connect", res(r.map(|b| assert_eq!(&b, b"ok"))));
}

/// `systemd-analyze security --offline=yes` scores the unit at most 2.5, and
/// docs/packaging.md states the score this systemd version gives.
#[test]
fn the_units_exposure_is_at_most_2_5_and_documented() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", UNIT])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): install the Debian package systemd")
        });
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{text}"
    );

    let version = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze --version");
    let version = String::from_utf8_lossy(&version.stdout);
    let version = version
        .split_whitespace()
        .nth(1)
        .expect("systemd VERSION")
        .to_string();
    let doc = std::fs::read_to_string(PACKAGING_DOC).expect("read docs/packaging.md");
    let documented = doc
        .lines()
        .find_map(|l| l.strip_prefix("Exposure score: "))
        .unwrap_or_else(|| panic!("docs/packaging.md has no `Exposure score: ` line"));
    // "1.8 (systemd 252, ...)": the number must match when the version does.
    let (doc_score, rest) = documented
        .split_once(' ')
        .expect("Exposure score: N (systemd V)");
    let doc_version = rest
        .trim_start_matches("(systemd ")
        .split([',', ')'])
        .next()
        .unwrap_or("");
    if doc_version == version {
        assert_eq!(
            doc_score,
            format!("{score:.1}"),
            "docs/packaging.md states exposure {doc_score} for systemd {version}; it is {score:.1}"
        );
    }
}
