//! Network namespaces that delete themselves, and processes run in them.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};

use crate::lock::is_stale;

/// Prefix of every name the kit gives to namespaces and folders.
pub(crate) const PREFIX: &str = "oct";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics with a clear message unless the process runs as root: the
/// privileged tests create namespaces and load nftables tables.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "these tests need root (they create network namespaces and load nftables \
         tables inside them); run them as root, e.g. `sudo -E cargo test`. euid is {euid}"
    );
}

/// A name no other test of this or any concurrent run uses:
/// `oct-PID-N-TAG`. It starts with a letter and holds only letters, digits
/// and `-`, so it is also a valid nft table name (when `tag` is).
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}-{}-{n}-{tag}", std::process::id())
}

/// Removes namespaces and folders left by earlier runs of the kit whose
/// process is gone (a run killed before its guards could drop), after
/// killing the processes those runs left running: those inside such a
/// namespace, and those whose command line names such a folder (a daemon
/// under test started with a config in it). Only names of the kit's own
/// form whose owner pid no longer exists are touched.
pub(crate) fn clean_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let stale_ns: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|dir| {
                dir.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| is_stale(n))
                    .collect()
            })
            .unwrap_or_default();
        let mut doomed: Vec<u32> = Vec::new();
        for name in &stale_ns {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
                doomed.extend(
                    String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
        doomed.extend(processes_naming_stale_folders());
        for pid in doomed {
            // SAFETY: plain syscall. The process runs in a namespace of a
            // test run that is gone, or names that run's folder: the kit
            // started it.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        for name in &stale_ns {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
        if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if is_stale(&name) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    });
}

/// Pids of processes whose command line names a temporary folder of the
/// kit (`TMP/oct-PID-N-TAG`) whose owner is gone.
fn processes_naming_stale_folders() -> Vec<u32> {
    let needle = format!("{}/{PREFIX}-", std::env::temp_dir().display());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
            let named_stale = cmdline.match_indices(&needle).any(|(i, _)| {
                let name: String = cmdline[i + needle.len() - PREFIX.len() - 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                is_stale(&name)
            });
            named_stale.then_some(pid)
        })
        .collect()
}

/// Runs a command, panicking with its output when it fails.
pub(crate) fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Moves the calling thread into the network namespace mounted at `path`.
pub(crate) fn enter(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    // SAFETY: the fd is a valid, open namespace file for the duration of the
    // call; setns only changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        panic!(
            "setns({}) failed: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// Runs `f` on a thread that has entered the network namespace at `path`
/// (a `/run/netns/NAME` mount or a `/proc/PID/ns/net` file), and returns
/// its result; `label` names the thread. A panic in `f` is propagated.
pub(crate) fn run_in<T: Send>(path: &Path, label: &str, f: impl FnOnce() -> T + Send) -> T {
    // Named after the calling thread (the test), so a panic in `f` says
    // which test it belongs to.
    let mut builder = std::thread::Builder::new();
    if let Some(name) = std::thread::current().name() {
        builder = builder.name(format!("{name} [{label}]"));
    }
    std::thread::scope(|s| {
        let handle = builder
            .spawn_scoped(s, move || {
                enter(path);
                f()
            })
            .expect("spawn a thread");
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// A network namespace (`ip netns add`) with `lo` up, deleted on drop.
///
/// Processes started with [`Netns::spawn`] are killed before the namespace
/// is deleted (their guards borrow the namespace, so they drop first; any
/// guard leaked with `mem::forget` is still killed by the namespace's drop).
pub struct Netns {
    name: String,
    pids: Mutex<Vec<u32>>,
    /// Deleted on drop (false for [`Netns::persistent`] ones).
    owned: bool,
}

impl Netns {
    /// Creates a namespace named `oct-PID-N-TAG`.
    pub fn new(tag: &str) -> Netns {
        require_root();
        clean_stale();
        let name = unique_name(tag);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        // Built before anything else can fail, so drop deletes it.
        let ns = Netns {
            name,
            pids: Mutex::new(Vec::new()),
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace called `name` (created, with `lo` up, when it does not
    /// exist yet), which outlives this handle: drop neither deletes it nor
    /// kills what runs in it (processes started with [`Netns::spawn`] are
    /// still killed by their own guards). For state shared by every test
    /// run on the machine, such as the lab's Docker daemon. Callers
    /// serialise creation (two processes racing on a fresh name both see
    /// `ip netns add` succeed or fail harmlessly only under a lock).
    pub fn persistent(name: &str) -> Netns {
        require_root();
        let ns = Netns {
            name: name.to_owned(),
            pids: Mutex::new(Vec::new()),
            owned: false,
        };
        if !ns.path().exists() {
            run_ok(Command::new("ip").args(["netns", "add", name]));
            ns.ip(&["link", "set", "lo", "up"]);
        }
        ns
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that has entered the namespace, and returns its
    /// result. A panic in `f` is propagated with its own message. Sockets
    /// created by `f` stay in the namespace wherever they are used later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in(&self.path(), &self.name, f)
    }

    /// Runs a command in the namespace (`ip netns exec NAME ARGS...`) and
    /// returns its output, whatever its exit status.
    pub fn exec<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd.stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    /// Like [`Netns::exec`], but panics (with stdout and stderr) unless the
    /// command succeeds; returns its stdout.
    pub fn exec_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        run_ok(&mut cmd)
    }

    /// `ip -n NAME ARGS...`; panics when it fails, returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs several `ip` commands (one per line, without the leading `ip`)
    /// in one `ip -n NAME -batch -`; panics when one fails.
    pub fn ip_batch(&self, commands: &[String]) {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run ip -batch");
        {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            for c in commands {
                writeln!(stdin, "{c}").expect("cannot write to ip -batch");
            }
        }
        let out = child.wait_with_output().expect("ip -batch");
        if !out.status.success() {
            panic!(
                "ip -n {} -batch failed ({}):\n{}\ncommands:\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr),
                commands.join("\n")
            );
        }
    }

    /// Sets sysctls inside the namespace (`sysctl -w`); panics on failure.
    pub fn sysctl(&self, settings: &[(&str, &str)]) {
        let mut args: Vec<String> = vec!["sysctl".into(), "-q".into(), "-w".into()];
        args.extend(settings.iter().map(|(k, v)| format!("{k}={v}")));
        self.exec_ok(&args);
    }

    /// Starts a long-running process in the namespace; it is killed when the
    /// returned guard drops. Its stdout and stderr go to `log` (appended),
    /// or nowhere.
    pub fn spawn<I, S>(&self, args: I, log: Option<&Path>) -> NsChild<'_>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (out, err) = match log {
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
                let f2 = f.try_clone().expect("dup log file");
                (Stdio::from(f), Stdio::from(f2))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = Command::new("ip");
        // `ip netns exec` execs the program (no fork), so the child's pid is
        // the program's pid.
        cmd.args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        self.pids.lock().unwrap().push(child.id());
        NsChild { ns: self, child }
    }

    fn untrack(&self, pid: u32) {
        self.pids.lock().unwrap().retain(|p| *p != pid);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let pids = std::mem::take(&mut *self.pids.lock().unwrap_or_else(|e| e.into_inner()));
        for pid in pids {
            // SAFETY: plain syscall. The pid belongs to a child this kit
            // started and never reaped (its guard was leaked), so it still
            // names that process (or its zombie), not a reused pid.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "testkit: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("testkit: cannot run ip netns del {}: {e}", self.name),
        }
    }
}

/// A process started in a namespace; killed (SIGKILL) and reaped on drop.
pub struct NsChild<'a> {
    ns: &'a Netns,
    child: Child,
}

impl NsChild<'_> {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`); panics if the process is gone.
    pub fn signal(&mut self, signal: i32) {
        assert!(
            self.is_running(),
            "process {} has exited; cannot signal it",
            self.pid()
        );
        // SAFETY: plain syscall; the child has not been reaped (try_wait just
        // said it is running), so its pid cannot have been reused.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }
}

impl Drop for NsChild<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.ns.untrack(self.child.id());
    }
}
