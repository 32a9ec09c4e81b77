//! A systemd notification socket (`NOTIFY_SOCKET`) that records what a
//! daemon under test sends (READY=1, STATUS=..., WATCHDOG=1, ...).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A datagram socket whose messages a thread collects, each with the
/// moment it arrived. The thread stops on drop.
pub struct NotifySocket {
    path: PathBuf,
    msgs: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NotifySocket {
    /// Binds the socket at `path` (what `NOTIFY_SOCKET` is set to).
    pub fn bind(path: PathBuf) -> NotifySocket {
        let sock = UnixDatagram::bind(&path)
            .unwrap_or_else(|e| panic!("bind the notify socket {}: {e}", path.display()));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set a read timeout");
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m2, s2) = (msgs.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s2.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    m2.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        NotifySocket {
            path,
            msgs,
            stop,
            thread: Some(thread),
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every message (datagram) so far, in order of arrival.
    pub fn all(&self) -> Vec<(Instant, String)> {
        self.msgs.lock().unwrap().clone()
    }

    /// The messages holding the line `line`.
    pub fn with_line(&self, line: &str) -> Vec<(Instant, String)> {
        self.all()
            .into_iter()
            .filter(|(_, m)| m.lines().any(|l| l == line))
            .collect()
    }

    /// How many messages held the line `line`.
    pub fn count(&self, line: &str) -> usize {
        self.with_line(line).len()
    }

    /// Every message, one `{:?}` a line, for failure messages.
    pub fn dump(&self) -> String {
        self.all().iter().map(|(_, m)| format!("{m:?}\n")).collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
