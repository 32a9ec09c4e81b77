//! A long-running process under test (the product's daemon) whose output
//! goes to a log file the test reads.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::wait::POLL;

/// A started process with stdout and stderr appended to a log file;
/// SIGKILLed and reaped on drop.
pub struct Daemon {
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `cmd` with stdin from `/dev/null` and stdout and stderr
    /// appended to `log` (created when missing).
    pub fn spawn(cmd: &mut Command, log: &Path) -> Daemon {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open the log {}: {e}", log.display()));
        let f2 = f.try_clone().expect("dup the log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {cmd:?}: {e}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            });
        Daemon {
            child,
            log: log.to_path_buf(),
            exited: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote to its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, once [`Daemon::is_running`] has seen the exit.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.exited
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(st)) => {
                self.exited = Some(st);
                false
            }
            Err(_) => false,
        }
    }

    /// Sends `sig`; panics (with the log) if the process has exited.
    #[track_caller]
    pub fn signal(&mut self, sig: i32) {
        assert!(
            self.is_running(),
            "the daemon has exited ({:?}); its log:\n{}",
            self.exited,
            self.log()
        );
        // SAFETY: plain syscall; the child was not reaped (try_wait just said
        // it runs), so the pid still names it.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if !self.is_running() {
                return self.exited;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The binary `name` cargo built into the same folder as `built` (a
/// `CARGO_BIN_EXE_*` path). Cargo builds only the tested package's own
/// binaries for its tests, so this panics, saying how to build it, when it
/// is missing.
pub fn sibling_binary(built: &str, name: &str) -> PathBuf {
    let path = Path::new(built)
        .parent()
        .expect("a built binary has a folder")
        .join(name);
    assert!(
        path.is_file(),
        "the binary {} is missing: build it first (`cargo build -p {name}` with the same \
         CARGO_TARGET_DIR, or run `cargo test --workspace`)",
        path.display()
    );
    path
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
