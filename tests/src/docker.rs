//! Real Docker for the end-to-end lab: a dockerd of the lab's own, its
//! networks and containers, and probes from inside the containers.
//!
//! Every dockerd the lab uses runs in a network namespace of its own (the
//! "lab host"), not in the machine's: its bridges, its iptables rules
//! (FORWARD policy DROP, DOCKER-USER, the subnet's MASQUERADE), its
//! containers' host-side links and the firewall under test all live there.
//! The lab host has no default route; its only routes lead to the
//! [`crate::Upstream`]s the tests attach to it, so nothing a container
//! sends can leave the lab, and the machine's own network, firewall and
//! Docker (if any) are never touched.
//!
//! - [`Docker::shared`]: one dockerd for every test process running at
//!   once (lab host namespace `oclab`), started by the first that needs it
//!   and stopped, with its namespace and folders, by the last one to exit.
//! - [`Docker::private`]: a dockerd a test owns, for scenarios that stop,
//!   restart or kill it; stopped and removed on drop.
//!
//! Each dockerd runs with its own `--data-root` (under
//! `/var/lib/openclaw-egress-lab/`), `--exec-root`, socket and pid file
//! (under `/run/openclaw-egress-lab/`). The product talks to one through
//! `DOCKER_HOST` = [`Docker::docker_host`] and runs inside
//! [`Docker::host`].

use std::fs::{File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use crate::lock::{is_stale, lab_path, FileLock, Subnet, LAB_RUN};
use crate::netns::{run_in, unique_name, Netns};
use crate::probe::{check_target, expect_in, run_probe, Probe, Target};
use crate::servers::Servers;
use crate::tempdir::TempDir;

/// The tag of the test image: Debian's static busybox and its applet links
/// in `/bin`, `PATH=/bin`, default command
/// `sh -c "trap 'exit 0' TERM INT; sleep 3600 & wait"` (an idle hour that
/// ends at once on SIGTERM).
pub const TEST_IMAGE: &str = "openclaw-egress-test/busybox:2";

/// What the test image runs: an hour of sleep that ends at once on SIGTERM
/// (a plain `sleep` as pid 1 ignores it, and every `docker stop` or dockerd
/// shutdown would wait out the stop timeout).
const IDLE_COMMAND: &str = "trap 'exit 0' TERM INT; sleep 3600 & wait";

/// Where dockerds of the lab keep their data roots and logs.
const LAB_DATA: &str = "/var/lib/openclaw-egress-lab";

/// Name of the shared dockerd: its namespace, and its folders under
/// `LAB_RUN` and `LAB_DATA`.
pub(crate) const SHARED: &str = "oclab";

/// How long a dockerd may take to answer after it was started (a fresh
/// machine creates its data root first).
const START_LIMIT: Duration = Duration::from_secs(90);

/// The `docker` client.
const DOCKER: &str = "docker";

/// A dockerd in a network namespace of its own. See the module docs.
pub struct Docker {
    name: String,
    host: Netns,
    run_dir: PathBuf,
    data_root: PathBuf,
    extra_args: Vec<String>,
    private: bool,
    child: Mutex<Option<Child>>,
    image: OnceLock<()>,
}

impl Docker {
    /// The machine's shared lab dockerd, started (once, under a lock every
    /// test process honours) when it does not answer yet. Each process
    /// using it holds a shared lock on `oclab.users` until it exits; the
    /// last one out stops it and removes its namespace and folders (see
    /// [`teardown_shared`]). Leftovers of test processes that are gone
    /// (containers and networks named `oct-PID-...`) are removed on first
    /// use.
    pub fn shared() -> &'static Docker {
        static SHARED_DOCKER: OnceLock<Docker> = OnceLock::new();
        let d = SHARED_DOCKER.get_or_init(|| {
            crate::require_root();
            let _lock = FileLock::exclusive(&lab_path(&format!("{SHARED}.lock")));
            let d = Docker::describe(SHARED.to_owned(), Netns::persistent(SHARED), false, &[]);
            d.ensure_running();
            d.remove_stale_objects();
            *SHARED_USER.lock().unwrap() =
                Some(FileLock::shared(&lab_path(&format!("{SHARED}.users"))));
            // SAFETY: registers a plain `extern "C" fn` that takes no
            // arguments; it runs once, at process exit.
            unsafe {
                libc::atexit(teardown_shared);
            }
            d
        });
        clean_stale_lab();
        d
    }

    /// Removes containers and networks named `oct-PID-...` whose process
    /// is gone.
    fn remove_stale_objects(&self) {
        let names = self.ok(["ps", "-a", "--format", "{{.Names}}"]);
        let stale: Vec<&str> = names.lines().filter(|n| is_stale(n)).collect();
        if !stale.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(stale);
            let _ = self.cmd(args);
        }
        let names = self.ok(["network", "ls", "--format", "{{.Name}}"]);
        for n in names.lines().filter(|n| is_stale(n)) {
            let _ = self.cmd(["network", "rm", n]);
        }
    }

    /// A dockerd this test owns, in a new namespace, with `extra_args`
    /// added to its command line (e.g. `--live-restore`). Stopped, and its
    /// namespace, folders and containers removed, on drop.
    pub fn private(tag: &str, extra_args: &[&str]) -> Docker {
        crate::require_root();
        clean_stale_lab();
        let host = Netns::new(tag);
        let d = Docker::describe(host.name().to_owned(), host, true, extra_args);
        d.ensure_running();
        d
    }

    fn describe(name: String, host: Netns, private: bool, extra_args: &[&str]) -> Docker {
        let run_dir = lab_path(&name);
        let data_root = Path::new(LAB_DATA).join(&name);
        for dir in [&run_dir, &data_root] {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        Docker {
            name,
            host,
            run_dir,
            data_root,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            private,
            child: Mutex::new(None),
            image: OnceLock::new(),
        }
    }

    /// The lab host: the namespace the dockerd, its bridges and the
    /// containers' host-side links live in. Run the daemon under test (and
    /// the CLI) here, and attach [`crate::Upstream`]s to it.
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("docker.sock")
    }

    /// `unix:///run/openclaw-egress-lab/NAME/docker.sock`: the `DOCKER_HOST`
    /// value that makes a Docker client (the `docker` CLI, bollard) talk to
    /// this dockerd.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The dockerd's log (stdout and stderr, appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        Path::new(LAB_DATA).join(format!("{}.log", self.name))
    }

    /// The last `lines` lines of the dockerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn pid_file(&self) -> PathBuf {
        self.run_dir.join("docker.pid")
    }

    /// Runs `docker -H THIS ARGS...` and returns its output, whatever its
    /// exit status.
    pub fn cmd<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(DOCKER);
        cmd.arg("--host")
            .arg(self.docker_host())
            .args(args)
            .stdin(Stdio::null());
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is docker.io installed?): {e}"))
    }

    /// Like [`Docker::cmd`], but panics (with both streams and the tail of
    /// the dockerd log) unless the command succeeds; returns its stdout,
    /// trimmed.
    #[track_caller]
    pub fn ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.cmd(&args);
        if !out.status.success() {
            panic!(
                "docker {args:?} failed ({}):\nstdout: {}\nstderr: {}\ndockerd log (tail):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(20)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// True when the dockerd answers on its socket.
    pub fn is_up(&self) -> bool {
        self.socket().exists()
            && self
                .cmd(["version", "--format", "{{.Server.Version}}"])
                .status
                .success()
    }

    /// The pid in the pid file, when it names a live dockerd of ours.
    fn running_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let needle = self.data_root.to_string_lossy();
        String::from_utf8_lossy(&cmdline)
            .contains(needle.as_ref())
            .then_some(pid)
    }

    fn ensure_running(&self) {
        if self.is_up() {
            return;
        }
        if self.running_pid().is_some() {
            // Started by another process that has not seen it answer yet.
            self.wait_up(START_LIMIT);
            return;
        }
        self.start();
    }

    /// Starts the dockerd (a private one, after [`Docker::stop`] or
    /// [`Docker::kill`]) and returns once it answers.
    pub fn start(&self) {
        assert!(
            self.private || self.child.lock().unwrap().is_none(),
            "the shared dockerd was already started"
        );
        // Like a fresh host: Docker turns forwarding on itself, and sets the
        // FORWARD policy to DROP when it does.
        self.host.sysctl(&[
            ("net.ipv4.ip_forward", "0"),
            // Every rejected probe gets its ICMP error.
            ("net.ipv4.icmp_ratelimit", "0"),
        ]);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path().display()));
        let log2 = log.try_clone().expect("dup the dockerd log");
        let netns = File::open(self.host.path())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.host.path().display()));
        let netns_fd = netns.as_raw_fd();
        let path = std::env::var("PATH").unwrap_or_default();
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(&self.data_root)
            .arg("--exec-root")
            .arg(self.run_dir.join("exec"))
            .arg("--host")
            .arg(self.docker_host())
            .arg("--pidfile")
            .arg(self.pid_file())
            // No docker0: every test brings its own network.
            .args(["--bridge", "none"])
            // Containers run `sleep`, which as pid 1 ignores SIGTERM: do
            // not wait the default 15 s for each on shutdown.
            .args(["--shutdown-timeout", "1"])
            .args(&self.extra_args)
            .env(
                "PATH",
                format!("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{path}"),
            )
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: between fork and exec the child only calls setsid and
        // setns, both async-signal-safe; `netns_fd` stays open in the
        // parent (and so in the child) until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                // Its own session: a test's Ctrl-C or process group kill
                // does not reach a dockerd that outlives the test.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start dockerd (is docker.io installed? /usr/sbin on PATH?): {e}")
        });
        drop(netns);
        *self.child.lock().unwrap() = Some(child);
        self.wait_up(START_LIMIT);
    }

    fn wait_up(&self, limit: Duration) {
        let t0 = Instant::now();
        loop {
            if self.is_up() {
                return;
            }
            if let Some(child) = self.child.lock().unwrap().as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!(
                        "dockerd {} exited ({st}) before answering; its log (tail):\n{}",
                        self.name,
                        self.log_tail(30)
                    );
                }
            }
            assert!(
                t0.elapsed() < limit,
                "dockerd {} did not answer on {} within {limit:?}; its log (tail):\n{}",
                self.name,
                self.socket().display(),
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn assert_private(&self, what: &str) {
        assert!(
            self.private,
            "{what}: the shared lab dockerd serves every test running in parallel; \
             use a Docker::private one"
        );
    }

    /// Stops the dockerd (SIGTERM, as `systemctl stop docker` does) and
    /// returns once it has exited. Private dockerds only.
    pub fn stop(&self) {
        self.assert_private("stop");
        self.signal_and_reap(libc::SIGTERM, Duration::from_secs(30));
    }

    /// Kills the dockerd with SIGKILL (a crash) and reaps it. Private
    /// dockerds only.
    pub fn kill(&self) {
        self.assert_private("kill");
        self.signal_and_reap(libc::SIGKILL, Duration::from_secs(10));
    }

    /// [`Docker::stop`] then [`Docker::start`].
    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    fn signal_and_reap(&self, sig: i32, limit: Duration) {
        let mut guard = self.child.lock().unwrap();
        let Some(child) = guard.as_mut() else {
            panic!("dockerd {} is not running", self.name)
        };
        if let Ok(None) = child.try_wait() {
            // SAFETY: plain syscall; the child is not reaped (try_wait just
            // said it runs), so its pid names it.
            unsafe {
                libc::kill(child.id() as libc::pid_t, sig);
            }
        }
        let t0 = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if t0.elapsed() > limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        *guard = None;
    }

    /// The test image in this dockerd, imported when missing (under a file
    /// lock, so parallel test processes import it once); returns its tag.
    pub fn image(&self) -> &'static str {
        self.image.get_or_init(|| {
            let _lock = FileLock::exclusive(&self.run_dir.join("image.lock"));
            if self.cmd(["image", "inspect", TEST_IMAGE]).status.success() {
                return;
            }
            import_busybox(self);
        });
        TEST_IMAGE
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if !self.private {
            return;
        }
        // Containers first, with SIGKILL: faster than the daemon's own
        // shutdown, and nothing is left for live-restore to keep.
        if self.is_up() {
            let ids = self.cmd(["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.cmd(args);
            }
        }
        if self.child.lock().map(|c| c.is_some()).unwrap_or(false) {
            self.signal_and_reap(libc::SIGTERM, Duration::from_secs(30));
        }
        remove_dockerd_leftovers(&self.run_dir, &self.data_root);
        let _ = std::fs::remove_file(self.log_path());
    }
}

/// This process's share of the shared dockerd (see [`Docker::shared`]).
static SHARED_USER: Mutex<Option<FileLock>> = Mutex::new(None);

/// At exit: gives up this process's share of the shared dockerd and, when
/// no other process holds one, stops it and removes its namespace, folders
/// and log, so a finished test run leaves nothing behind. A process killed
/// with SIGKILL skips this; the next run reuses (and finally removes) what
/// it left.
extern "C" fn teardown_shared() {
    // A panic must not unwind out of an atexit handler.
    let _ = std::panic::catch_unwind(|| {
        let Some(share) = SHARED_USER.lock().ok().and_then(|mut s| s.take()) else {
            return;
        };
        drop(share);
        // Serialised with a process starting it right now.
        let _start = FileLock::exclusive(&lab_path(&format!("{SHARED}.lock")));
        let Some(_last) = FileLock::try_exclusive(&lab_path(&format!("{SHARED}.users"))) else {
            return; // Others still use it.
        };
        let run_dir = lab_path(SHARED);
        let data_root = Path::new(LAB_DATA).join(SHARED);
        if let Some(pid) = std::fs::read_to_string(run_dir.join("docker.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            stop_process(pid, Duration::from_secs(30));
        }
        remove_dockerd_leftovers(&run_dir, &data_root);
        let _ = std::fs::remove_file(Path::new(LAB_DATA).join(format!("{SHARED}.log")));
        let _ = Command::new("ip")
            .args(["netns", "del", SHARED])
            .stdin(Stdio::null())
            .output();
    });
}

/// SIGTERM to `pid`, then waits (reaping it when it is this process's
/// child) until it is gone, or SIGKILL after `limit`.
fn stop_process(pid: i32, limit: Duration) {
    let gone = |pid: i32| {
        // SAFETY: plain syscall; reaps `pid` only if it is our exited child.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
        }
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    };
    // SAFETY: plain syscall; the pid file of the lab's own dockerd names it.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let t0 = Instant::now();
    while !gone(pid) {
        if t0.elapsed() > limit {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills what is left of a dockerd whose folders are `run_dir` and
/// `data_root` (itself, its containerd and shims: every process whose
/// command line names one of the folders), unmounts what it mounted below
/// them, and removes them.
fn remove_dockerd_leftovers(run_dir: &Path, data_root: &Path) {
    let needles = [
        run_dir.to_string_lossy().into_owned(),
        data_root.to_string_lossy().into_owned(),
    ];
    // (pid, parent pid, command line) of every process.
    let procs: Vec<(i32, i32, String)> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| {
                    let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                    // "PID (COMM) STATE PPID ...": COMM may hold spaces.
                    let ppid = stat
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse()
                        .ok()?;
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                    Some((
                        pid,
                        ppid,
                        String::from_utf8_lossy(&cmdline).replace('\0', " "),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut doomed: Vec<i32> = procs
        .iter()
        .filter(|(_, _, cmdline)| {
            needles
                .iter()
                .any(|n| cmdline.contains(&format!("{n}/")) || cmdline.contains(&format!("{n} ")))
        })
        .map(|(pid, _, _)| *pid)
        .collect();
    // And their descendants: the containers of a shim (they outlive a
    // dockerd stopped with --live-restore).
    let mut i = 0;
    while i < doomed.len() {
        let parent = doomed[i];
        for (pid, ppid, _) in &procs {
            if *ppid == parent && !doomed.contains(pid) {
                doomed.push(*pid);
            }
        }
        i += 1;
    }
    for pid in doomed {
        // SAFETY: plain syscall. The process's command line names a folder
        // only this lab's dockerd (with this unique name) uses, or it
        // descends from such a process: the lab started it.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    for dir in [run_dir, data_root] {
        unmount_below(dir);
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("testkit: cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// Lazily unmounts every mount at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let c = std::ffi::CString::new(p).expect("mount point without NUL");
        // SAFETY: `c` is a valid C string for the call; a lazy unmount of a
        // mount below the lab's own folder.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Removes what test processes that are gone left behind: namespaces,
/// folders and processes (as [`Netns::new`] does), private dockerds
/// (processes, mounts, folders), and nft tables named `oct-PID-...` in the
/// shared lab host. Once per process. (The shared dockerd's own leftovers go
/// when [`Docker::shared`] first runs in a process.)
pub(crate) fn clean_stale_lab() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        crate::netns::clean_stale();
        for base in [LAB_RUN, LAB_DATA] {
            let Ok(dir) = std::fs::read_dir(base) else {
                continue;
            };
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let name = name.strip_suffix(".log").unwrap_or(&name).to_owned();
                if is_stale(&name) {
                    remove_dockerd_leftovers(
                        &Path::new(LAB_RUN).join(&name),
                        &Path::new(LAB_DATA).join(&name),
                    );
                    let _ = std::fs::remove_file(Path::new(LAB_DATA).join(format!("{name}.log")));
                }
            }
        }
        // Tables of daemons under test that are gone, in the shared lab host
        // (named by testkit::unique_name); their daemons were killed above.
        if Path::new("/run/netns").join(SHARED).exists() {
            let out = Command::new("ip")
                .args(["netns", "exec", SHARED, "nft", "list", "tables"])
                .stdin(Stdio::null())
                .output();
            if let Ok(out) = out {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    let mut words = line.split_whitespace();
                    if let (Some("table"), Some(family), Some(name)) =
                        (words.next(), words.next(), words.next())
                    {
                        if is_stale(name) {
                            let _ = Command::new("ip")
                                .args(["netns", "exec", SHARED, "nft", "delete", "table"])
                                .args([family, name])
                                .output();
                        }
                    }
                }
            }
        }
    });
}

/// True when the ELF file at `path` asks for a program interpreter (is
/// dynamically linked): such a busybox cannot run in an image without libc.
fn is_dynamic_elf(bytes: &[u8]) -> bool {
    // 64-bit little-endian ELF only (what Debian's amd64/arm64 ship).
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        // PT_INTERP = 3.
        bytes.get(at..at + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

/// Builds the test image from `/bin/busybox` (Debian's busybox-static) with
/// `docker import`: no registry is needed.
fn import_busybox(docker: &Docker) {
    let busybox = Path::new("/bin/busybox");
    let bytes = std::fs::read(busybox)
        .unwrap_or_else(|e| panic!("cannot read /bin/busybox (install busybox-static): {e}"));
    assert!(
        !is_dynamic_elf(&bytes),
        "/bin/busybox is dynamically linked; the test image needs the static one \
         (apt-get install busybox-static)"
    );
    let work = TempDir::new("image");
    let root = work.join("rootfs");
    for d in ["", "bin", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir(root.join(d)).expect("image folder");
    }
    std::fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .expect("chmod tmp");
    std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
                .unwrap_or_else(|e| panic!("link applet {applet}: {e}"));
        }
    }
    let tarball = work.join("image.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .output()
        .expect("cannot run tar");
    assert!(
        out.status.success(),
        "tar of the image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cmd = format!("CMD [\"sh\", \"-c\", \"{IDLE_COMMAND}\"]");
    let args: [&std::ffi::OsStr; 7] = [
        "import".as_ref(),
        "--change".as_ref(),
        "ENV PATH=/bin".as_ref(),
        "--change".as_ref(),
        cmd.as_ref(),
        tarball.as_os_str(),
        TEST_IMAGE.as_ref(),
    ];
    let out = docker.cmd(args);
    assert!(
        out.status.success(),
        "docker import of the busybox image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------- networks

/// A Docker bridge network with a subnet of its own out of 198.18.0.0/15
/// (so the testkit probes may target its containers) and the bridge
/// interface named `oclbN` (N the subnet's index) through
/// `com.docker.network.bridge.name`. Removed on drop, with every container
/// still attached.
pub struct Network<'d> {
    docker: &'d Docker,
    name: String,
    bridge: String,
    subnet: Subnet,
}

impl<'d> Network<'d> {
    /// Creates the network `oct-PID-N-TAG`.
    pub fn create(docker: &'d Docker, tag: &str) -> Network<'d> {
        let subnet = Subnet::claim();
        let net = Network {
            docker,
            name: unique_name(tag),
            bridge: format!("oclb{}", subnet.index()),
            subnet,
        };
        net.create_now();
        net
    }

    fn create_now(&self) {
        let args: Vec<String> = vec![
            "network".into(),
            "create".into(),
            "--driver".into(),
            "bridge".into(),
            "--subnet".into(),
            self.subnet.cidr(),
            "--gateway".into(),
            self.gateway().to_string(),
            "--opt".into(),
            format!("com.docker.network.bridge.name={}", self.bridge),
            self.name.clone(),
        ];
        self.docker.ok(&args);
    }

    /// The Docker network's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bridge interface (in [`Docker::host`]): what `[network]
    /// interface` names.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The subnet (`.1` is the gateway, containers get `.2` upwards).
    pub fn subnet(&self) -> &Subnet {
        &self.subnet
    }

    /// The gateway: the lab host's address on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.addr(1)
    }

    /// The dockerd it belongs to.
    pub fn docker(&self) -> &'d Docker {
        self.docker
    }

    fn remove_now(&self) {
        let out = self.docker.cmd([
            "network",
            "inspect",
            "--format",
            "{{range .Containers}}{{.Name}} {{end}}",
            &self.name,
        ]);
        let names = String::from_utf8_lossy(&out.stdout).into_owned();
        let names: Vec<&str> = names.split_whitespace().collect();
        if !names.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(names);
            let _ = self.docker.cmd(args);
        }
        let out = self.docker.cmd(["network", "rm", &self.name]);
        if !out.status.success() {
            eprintln!(
                "testkit: docker network rm {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Removes the network (and every container on it) and creates it
    /// again, same name, subnet and bridge name: what an operator's
    /// `docker network rm` + `setup-network` does under a running daemon.
    pub fn recreate(&self) {
        self.remove_now();
        self.create_now();
    }
}

impl Drop for Network<'_> {
    fn drop(&mut self) {
        self.remove_now();
    }
}

// ----------------------------------------------------------- containers

/// A container of the test image, idle for an hour (or running a given
/// command) on a [`Network`]; removed (`docker rm -f`) on drop.
pub struct Container<'d> {
    docker: &'d Docker,
    name: String,
    /// The last pid Docker reported, used while Docker does not answer
    /// (a dockerd stopped with `--live-restore`) as long as it lives.
    last_pid: std::sync::atomic::AtomicU32,
}

/// How a DNS lookup with busybox `nslookup` inside a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// An answer with these addresses.
    Addresses(Vec<IpAddr>),
    /// An answer without an address of the asked type (NOERROR, no data).
    NoRecords,
    /// NXDOMAIN.
    NxDomain,
    /// SERVFAIL (what Docker's embedded resolver says when it could not
    /// reach its upstream servers fast enough, among other things).
    ServFail,
    /// REFUSED.
    Refused,
    /// No answer in time ("connection timed out; no servers could be
    /// reached").
    TimedOut,
    /// The query could not be sent: an ICMP error came back for it
    /// (errno, see [`crate::errno`]).
    Unreachable(i32),
    /// Anything else: the output.
    Failed(String),
}

impl<'d> Container<'d> {
    /// Runs an idle container on `net` with `--dns` set to each of `dns` (empty:
    /// Docker's default), and returns once it runs.
    pub fn run(net: &Network<'d>, tag: &str, dns: &[IpAddr]) -> Container<'d> {
        let mut args: Vec<String> = Vec::new();
        for d in dns {
            args.push("--dns".into());
            args.push(d.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Container::run_with(net, tag, &args, &[])
    }

    /// Runs a container on `net` with more `docker run` arguments (`--dns`,
    /// `--restart always`, `--ip`, `-p`, ...) and `command` (empty: the
    /// image's idle command); returns once it runs.
    pub fn run_with(
        net: &Network<'d>,
        tag: &str,
        args: &[&str],
        command: &[&str],
    ) -> Container<'d> {
        let docker = net.docker;
        let c = Container {
            docker,
            name: unique_name(tag),
            last_pid: Default::default(),
        };
        let image = docker.image();
        let mut argv: Vec<&str> =
            vec!["run", "--detach", "--name", &c.name, "--network", &net.name];
        argv.extend_from_slice(args);
        argv.push(image);
        argv.extend_from_slice(command);
        docker.ok(&argv);
        c.wait_running(Duration::from_secs(30));
        c
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `docker inspect --format FORMAT NAME`, trimmed.
    pub fn inspect(&self, format: &str) -> String {
        self.docker.ok(["inspect", "--format", format, &self.name])
    }

    /// The container's IPv4 address (on its first network).
    pub fn ip(&self) -> Ipv4Addr {
        let s = self.inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}");
        let first = s.split_whitespace().next().unwrap_or_default().to_owned();
        first
            .parse()
            .unwrap_or_else(|e| panic!("container {} has no IPv4 address ({s:?}): {e}", self.name))
    }

    /// The pid of its init process, 0 when it does not run. While Docker
    /// does not answer, the last pid it reported, if that process lives.
    pub fn pid(&self) -> u32 {
        use std::sync::atomic::Ordering::Relaxed;
        let out = self
            .docker
            .cmd(["inspect", "--format", "{{.State.Pid}}", &self.name]);
        if out.status.success() {
            let pid = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            self.last_pid.store(pid, Relaxed);
            return pid;
        }
        let last = self.last_pid.load(Relaxed);
        if last > 0 && !self.docker.is_up() && crate::lock::pid_alive(last) {
            return last;
        }
        panic!(
            "docker inspect {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// Waits until the container runs; returns its pid.
    #[track_caller]
    pub fn wait_running(&self, limit: Duration) -> u32 {
        let t0 = Instant::now();
        loop {
            let out = self.docker.cmd([
                "inspect",
                "--format",
                "{{.State.Running}} {{.State.Pid}}",
                &self.name,
            ]);
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some(("true", pid)) = s.trim().split_once(' ') {
                if let Ok(pid) = pid.parse::<u32>() {
                    if pid > 0 {
                        self.last_pid
                            .store(pid, std::sync::atomic::Ordering::Relaxed);
                        return pid;
                    }
                }
            }
            assert!(
                t0.elapsed() < limit,
                "container {} did not run within {limit:?} ({s:?}, {}); dockerd log (tail):\n{}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim(),
                self.docker.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its network namespace (`/proc/PID/ns/net`); panics unless it runs.
    #[track_caller]
    pub fn netns_path(&self) -> PathBuf {
        let pid = self.pid();
        assert!(pid > 0, "container {} does not run", self.name);
        PathBuf::from(format!("/proc/{pid}/ns/net"))
    }

    /// `docker exec NAME ARGS...` (no stdin), whatever its exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut argv = vec!["exec", self.name.as_str()];
        argv.extend_from_slice(args);
        self.docker.cmd(argv)
    }

    /// Runs `f` on a thread inside the container's network namespace (the
    /// testkit probes, servers, any socket code). Packets it sends leave
    /// through the container's interface, exactly like the container's own.
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in(&self.netns_path(), &self.name, f)
    }

    /// Probes `target` from inside the container with the testkit's own
    /// socket code (exact errno classification, UDP included).
    pub fn probe(&self, target: &Target, timeout: Duration) -> Probe {
        self.run_inside(|| run_probe(target, timeout))
    }

    /// [`Netns::expect`] from inside the container.
    #[track_caller]
    pub fn expect(&self, cases: &[(Target, Probe)], timeout: Duration) {
        expect_in(
            &self.netns_path(),
            &format!("container {}", self.name),
            cases,
            timeout,
        )
    }

    /// Polls [`Container::probe`] until it gives `want`, for at most
    /// `limit`; returns how long that took, or panics with the last outcome.
    #[track_caller]
    pub fn wait_probe(&self, target: &Target, want: &Probe, limit: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let got = self.probe(target, Duration::from_millis(500));
            if &got == want {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < limit,
                "{target} from container {} gave {got}, not {want}, for {limit:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// TCP and UDP listeners inside the container, on its address
    /// ([`Servers`]: TCP writes `!` and closes, UDP echoes).
    pub fn servers(&self, tcp: &[u16], udp: &[u16]) -> Servers {
        let ip = IpAddr::V4(self.ip());
        let tcp: Vec<SocketAddr> = tcp.iter().map(|p| SocketAddr::new(ip, *p)).collect();
        let udp: Vec<SocketAddr> = udp.iter().map(|p| SocketAddr::new(ip, *p)).collect();
        Servers::start_at(&self.netns_path(), &self.name, &tcp, &udp)
    }

    /// A TCP connection with the container's own busybox `nc` to `host`
    /// (an address, or a name resolved inside the container, through
    /// Docker's embedded DNS and the `--dns` servers) on `port`, waiting at
    /// most `timeout` (whole seconds, at least 1) for the connection.
    pub fn nc(&self, host: &str, port: u16, timeout: Duration) -> Probe {
        if let Ok(ip) = host.parse::<IpAddr>() {
            check_target(SocketAddr::new(ip, port));
        }
        let secs = timeout.as_secs().max(1);
        // `nc -w` bounds the connect only; the outer timeout catches a peer
        // that accepts and never closes.
        let out = self.exec(&[
            "timeout",
            "-s",
            "KILL",
            &(secs + 3).to_string(),
            "nc",
            "-w",
            &secs.to_string(),
            host,
            &port.to_string(),
        ]);
        classify_nc(out.status.code(), &String::from_utf8_lossy(&out.stderr))
    }

    /// An A lookup of `name` with the container's busybox `nslookup`, from
    /// `server` or, when `None`, from the container's resolv.conf (Docker's
    /// embedded DNS, which forwards to the `--dns` servers), waiting at most
    /// `timeout` (whole seconds, at least 1).
    pub fn nslookup(&self, name: &str, server: Option<IpAddr>, timeout: Duration) -> Lookup {
        let secs = timeout.as_secs().max(1).to_string();
        let t = format!("-timeout={secs}");
        let mut args = vec!["nslookup", "-type=a", &t, "-retry=1", name];
        let s;
        if let Some(server) = server {
            check_target(SocketAddr::new(server, 53));
            s = server.to_string();
            args.push(&s);
        }
        let out = self.exec(&args);
        classify_nslookup(
            out.status.code(),
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        )
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.docker.cmd(["rm", "-f", &self.name]);
    }
}

/// Reads busybox `nc`'s exit code and stderr (busybox 1.35, Debian).
fn classify_nc(code: Option<i32>, stderr: &str) -> Probe {
    match code {
        Some(0) => return Probe::Connected,
        // Killed by the outer `timeout`: the connection was up, the peer
        // kept it open.
        Some(137) => return Probe::Connected,
        _ => {}
    }
    let e = stderr.trim();
    if e.contains("Connection refused") {
        Probe::Refused
    } else if e.contains("No route to host") {
        Probe::Unreachable(libc::EHOSTUNREACH)
    } else if e.contains("Network is unreachable") {
        Probe::Unreachable(libc::ENETUNREACH)
    } else if e.contains("Permission denied") {
        Probe::Unreachable(libc::EACCES)
    } else if e.contains("timed out") {
        Probe::TimedOut
    } else if e.contains("bad address") {
        Probe::NoAddress
    } else {
        Probe::Failed(format!("nc exit {code:?}: {e}"))
    }
}

/// Reads busybox `nslookup`'s output (busybox 1.35, Debian).
fn classify_nslookup(code: Option<i32>, stdout: &str, stderr: &str) -> Lookup {
    let all = format!("{stdout}\n{stderr}");
    if all.contains("No route to host") {
        return Lookup::Unreachable(libc::EHOSTUNREACH);
    }
    if all.contains("Network is unreachable") {
        return Lookup::Unreachable(libc::ENETUNREACH);
    }
    if all.contains("Permission denied") {
        return Lookup::Unreachable(libc::EACCES);
    }
    if all.contains(": NXDOMAIN") {
        return Lookup::NxDomain;
    }
    if all.contains(": SERVFAIL") {
        return Lookup::ServFail;
    }
    if all.contains(": REFUSED") {
        return Lookup::Refused;
    }
    if all.contains("connection timed out") {
        return Lookup::TimedOut;
    }
    if code != Some(0) {
        return Lookup::Failed(format!("nslookup exit {code:?}: {}", all.trim()));
    }
    // The answers follow a "Name:" line; the "Address:" lines before it
    // name the server.
    let mut addrs = Vec::new();
    let mut in_answer = false;
    for line in stdout.lines() {
        if line.starts_with("Name:") {
            in_answer = true;
        } else if in_answer {
            if let Some(a) = line.strip_prefix("Address:") {
                if let Ok(ip) = a.trim().parse() {
                    addrs.push(ip);
                }
            }
        }
    }
    if addrs.is_empty() {
        Lookup::NoRecords
    } else {
        Lookup::Addresses(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_nc_outcomes_are_read() {
        let nc = |code, err: &str| classify_nc(Some(code), err);
        assert_eq!(nc(0, ""), Probe::Connected);
        assert_eq!(
            nc(
                1,
                "nc: can't connect to remote host (198.18.2.10): Connection refused"
            ),
            Probe::Refused
        );
        assert_eq!(
            nc(
                1,
                "nc: can't connect to remote host (198.18.2.10): No route to host"
            ),
            Probe::Unreachable(libc::EHOSTUNREACH)
        );
        assert_eq!(
            nc(
                1,
                "nc: can't connect to remote host (198.18.2.10): Network is unreachable"
            ),
            Probe::Unreachable(libc::ENETUNREACH)
        );
        assert_eq!(nc(1, "nc: timed out"), Probe::TimedOut);
        assert_eq!(nc(1, "nc: bad address 'x.lab.test'"), Probe::NoAddress);
        assert!(matches!(nc(2, "odd"), Probe::Failed(_)));
    }

    #[test]
    fn busybox_nslookup_outcomes_are_read() {
        let ok = "Server:\t\t127.0.0.11\nAddress:\t127.0.0.11:53\n\nName:\ta.lab.test\n\
                  Address: 198.18.2.10\nName:\ta.lab.test\nAddress: 198.18.2.11\n\n";
        assert_eq!(
            classify_nslookup(Some(0), ok, ""),
            Lookup::Addresses(vec![
                "198.18.2.10".parse().unwrap(),
                "198.18.2.11".parse().unwrap()
            ])
        );
        let none =
            "Server:\t\t127.0.0.11\nAddress:\t127.0.0.11:53\n\nNon-authoritative answer:\n\n";
        assert_eq!(classify_nslookup(Some(0), none, ""), Lookup::NoRecords);
        let nx = "Server:\t\t127.0.0.11\nAddress:\t127.0.0.11:53\n\n\
                  ** server can't find nx.lab.test: NXDOMAIN\n\n";
        assert_eq!(classify_nslookup(Some(1), nx, ""), Lookup::NxDomain);
        assert_eq!(
            classify_nslookup(
                Some(1),
                ";; connection timed out; no servers could be reached\n\n",
                ""
            ),
            Lookup::TimedOut
        );
        assert_eq!(
            classify_nslookup(
                Some(1),
                ";; connection timed out; no servers could be reached\n\n",
                "nslookup: write to '198.18.2.53': No route to host\n"
            ),
            Lookup::Unreachable(libc::EHOSTUNREACH)
        );
    }

    #[test]
    fn a_static_elf_has_no_interpreter() {
        // This test binary is dynamically linked (Rust's default on Linux
        // gnu targets); a non-ELF is not "dynamic".
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(is_dynamic_elf(&me));
        assert!(!is_dynamic_elf(b"#!/bin/sh\necho not an ELF\n"));
    }
}
