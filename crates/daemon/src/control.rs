//! The control socket.
//!
//! A Unix stream socket (`[control] socket`, default
//! `/run/openclaw-egress/control.sock`, mode 0600) on which root, or the
//! daemon's own user, asks the daemon for its [`Status`]. The format is
//! documented in `docs/status-json.md`.
//!
//! # Protocol
//!
//! The client writes one JSON [`Request`] per line (`{"cmd":"status"}\n`); the
//! server answers every line with exactly one line: the [`Status`] as JSON, or
//! `{"error":"..."}`. A client may send several requests on one connection.
//!
//! * A line longer than [`MAX_LINE`] bytes gets an error line, then the
//!   connection is closed.
//! * A connection that sends no complete line within [`READ_TIMEOUT`] gets an
//!   error line and is closed.
//! * A malformed or unknown request gets an error line; the connection stays
//!   open.
//! * A peer whose uid (`SO_PEERCRED`) is neither 0 nor the daemon's effective
//!   uid gets `{"error":"permission denied: uid N is not root"}` and is
//!   closed; a warning is logged.
//! * When the engine is gone (its receiver dropped), the client gets an error
//!   line and is closed.
//!
//! # Design
//!
//! [`serve`] prepares the path and binds the socket synchronously (so that
//! the caller learns about a bad path before it reports readiness), then
//! spawns one accept task on the current tokio runtime. Every connection is
//! its own task, so a slow or hostile client never blocks the engine: the
//! socket code only moves bytes, and the engine answers [`ControlCall`]s from
//! its `mpsc` receiver whenever it is ready. Connection tasks belong to the
//! accept task; dropping the returned [`ControlServer`] stops accepting,
//! aborts open connections and removes the socket file.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use egress_core::status::{Request, Status};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

/// One request from a client, with where to send the answer. The engine
/// task owns the state and answers; the socket code only moves bytes.
pub struct ControlCall {
    /// What the client asked.
    pub request: Request,
    /// The engine's answer.
    pub reply: oneshot::Sender<Status>,
}

/// Longest request line accepted, in bytes (without its `\n`).
pub const MAX_LINE: usize = 64 * 1024;

/// How long a client may take to send each complete request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long writing one answer line may take before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How much a closing connection's unread input is drained at most, and
/// for how long (see `close_with_error`).
const DRAIN_LIMIT: usize = 4 * MAX_LINE;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Connections served at once; more are answered with an error and closed.
const MAX_CONNECTIONS: usize = 64;

/// Mode of the socket file.
const SOCKET_MODE: u32 = 0o600;

/// Mode of the socket's folder when the daemon creates it.
const DIR_MODE: u32 = 0o755;

/// A running control socket. Dropping it stops accepting, aborts the open
/// connections and removes the socket file (if it is still the one bound).
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// `(st_dev, st_ino)` of the socket file we bound, so that drop never
    /// removes a socket some other process put at the path since.
    id: (u64, u64),
    task: JoinHandle<()>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_socket() && (m.dev(), m.ino()) == self.id => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), "cannot remove the control socket: {e}");
                }
            }
            _ => {}
        }
    }
}

/// Binds the control socket at `path` and serves it on the current tokio
/// runtime, forwarding every request to the engine through `calls`.
///
/// Before binding: creates the parent folder if it is missing (mode 0755,
/// owned by the daemon's user), and removes a stale socket left at the path
/// by a previous run. It refuses to remove anything that is not a socket
/// (`ErrorKind::AlreadyExists`) and a socket some live process still
/// listens on (`ErrorKind::AddrInUse`). The socket file gets mode 0600.
///
/// Must be called from within a tokio runtime (it spawns the accept task).
pub async fn serve(path: &Path, calls: mpsc::Sender<ControlCall>) -> io::Result<ControlServer> {
    prepare_path(path).await?;
    let listener = UnixListener::bind(path).map_err(|e| annotate(e, "cannot bind", path))?;
    let id = match finish_socket_file(path) {
        Ok(id) => id,
        Err(e) => {
            drop(listener);
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    };
    tracing::info!(path = %path.display(), "control socket listening");
    let task = tokio::spawn(accept_loop(listener, calls));
    Ok(ControlServer {
        path: path.to_path_buf(),
        id,
        task,
    })
}

/// Sets the socket file's mode; returns its identity.
fn finish_socket_file(path: &Path) -> io::Result<(u64, u64)> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| annotate(e, "cannot set the mode of", path))?;
    let m = std::fs::symlink_metadata(path).map_err(|e| annotate(e, "cannot stat", path))?;
    Ok((m.dev(), m.ino()))
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Creates the parent folder if needed and clears a stale socket.
async fn prepare_path(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("control socket {}: no parent folder", path.display()),
            ))
        }
    };
    match std::fs::symlink_metadata(parent) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(parent)
                .map_err(|e| annotate(e, "cannot create", parent))?;
            // The umask may have narrowed the mode; the folder must be
            // searchable for the socket to be usable.
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(DIR_MODE))
                .map_err(|e| annotate(e, "cannot set the mode of", parent))?;
            tracing::info!(path = %parent.display(), "created the control socket's folder");
        }
        Err(e) => return Err(annotate(e, "cannot stat", parent)),
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(annotate(e, "cannot stat", path)),
    };
    let ft = meta.file_type();
    if !ft.is_socket() {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_file() {
            "a regular file"
        } else if ft.is_symlink() {
            "a symbolic link"
        } else {
            "not a socket"
        };
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "control socket {} already exists and is {what}; refusing to replace it",
                path.display()
            ),
        ));
    }
    // A socket: stale unless something still listens on it.
    if UnixStream::connect(path).await.is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "control socket {}: another process is listening on it (is the daemon already running?)",
                path.display()
            ),
        ));
    }
    std::fs::remove_file(path).map_err(|e| annotate(e, "cannot remove stale socket", path))?;
    tracing::info!(path = %path.display(), "removed a stale control socket");
    Ok(())
}

async fn accept_loop(listener: UnixListener, calls: mpsc::Sender<ControlCall>) {
    // SAFETY: geteuid has no preconditions, touches no memory and cannot fail.
    let own_euid = unsafe { libc::geteuid() };
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if conns.len() >= MAX_CONNECTIONS {
                        tracing::warn!("control socket: too many connections, refusing one");
                        // A fresh socket's send buffer is empty: this does not block.
                        let _ = stream.try_write(error_line("too many connections").as_bytes());
                        continue;
                    }
                    conns.spawn(handle(stream, calls.clone(), own_euid));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        tracing::error!("control socket: a connection task panicked: {e}");
                    }
                }
            }
        }
    }
}

/// `{"error":"..."}` plus the line terminator.
fn error_line(msg: &str) -> String {
    let mut s = serde_json::json!({ "error": msg }).to_string();
    s.push('\n');
    s
}

async fn write_line<W: AsyncWrite + Unpin>(w: &mut W, line: &[u8]) -> io::Result<()> {
    match timeout(WRITE_TIMEOUT, w.write_all(line)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
    }
}

/// What to answer one request line.
enum Answer {
    Status(Box<Status>),
    /// Error line; keep serving the connection.
    Error(String),
    /// Error line, then close.
    Fatal(String),
}

async fn answer(line: &[u8], calls: &mpsc::Sender<ControlCall>) -> Answer {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Answer::Error("bad request: empty line".into());
    }
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return Answer::Error(format!("bad request: {e}")),
    };
    let (reply, rx) = oneshot::channel();
    if calls.send(ControlCall { request, reply }).await.is_err() {
        return Answer::Fatal("the daemon is shutting down (engine gone)".into());
    }
    match rx.await {
        Ok(s) => Answer::Status(Box::new(s)),
        Err(_) => Answer::Error("the engine dropped the request".into()),
    }
}

/// Sends a last error line, then closes without resetting the connection:
/// the client's unread bytes are drained (briefly, boundedly) first, since
/// closing a Unix socket with unread input makes the peer's read fail with
/// ECONNRESET instead of returning the line.
async fn close_with_error(conn: &mut BufReader<UnixStream>, msg: &str) {
    if write_line(conn.get_mut(), error_line(msg).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let _ = conn.get_mut().shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left = DRAIN_LIMIT;
        while left > 0 {
            match conn.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = timeout(DRAIN_TIME, drain).await;
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<ControlCall>, own_euid: u32) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("control socket: cannot read the peer's credentials, closing: {e}");
            return;
        }
    };
    let mut conn = BufReader::new(stream);
    let uid = cred.uid();
    if uid != 0 && uid != own_euid {
        tracing::warn!(
            uid,
            pid = cred.pid(),
            "control socket: refused a client that is neither root nor the daemon's user"
        );
        let msg = format!("permission denied: uid {uid} is not root");
        close_with_error(&mut conn, &msg).await;
        return;
    }
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut limited = (&mut conn).take(MAX_LINE as u64 + 1);
        let n = match timeout(READ_TIMEOUT, limited.read_until(b'\n', &mut buf)).await {
            Err(_) => {
                let msg = format!(
                    "timeout: no complete request line within {}s",
                    READ_TIMEOUT.as_secs()
                );
                close_with_error(&mut conn, &msg).await;
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!("control socket: read failed: {e}");
                return;
            }
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return; // end of stream
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        } else if buf.len() > MAX_LINE {
            let msg = format!("request line longer than {MAX_LINE} bytes");
            tracing::warn!(uid, "control socket: {msg}, closing");
            close_with_error(&mut conn, &msg).await;
            return;
        }
        // else: a last line without terminator before end of stream; serve it.
        let out = match answer(&buf, &calls).await {
            Answer::Status(s) => match serde_json::to_string(&s) {
                Ok(mut j) => {
                    j.push('\n');
                    j
                }
                Err(e) => error_line(&format!("cannot encode the status: {e}")),
            },
            Answer::Error(m) => error_line(&m),
            Answer::Fatal(m) => {
                close_with_error(&mut conn, &m).await;
                return;
            }
        };
        if let Err(e) = write_line(conn.get_mut(), out.as_bytes()).await {
            tracing::debug!("control socket: write failed: {e}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_core::status::{AddressStatus, Counters, EntryStatus, STATUS_FORMAT};
    use std::os::unix::process::CommandExt;
    use tokio::io::AsyncBufReadExt;

    /// Env var that turns [`peer_client_helper`] into a client of this path.
    const HELPER_ENV: &str = "OPENCLAW_EGRESS_CONTROL_TEST_PEER";
    const HELPER_MARK: &str = "PEER-REPLY:";

    fn sample_status() -> Status {
        Status {
            format: STATUS_FORMAT,
            version: "0.1.0".into(),
            pid: 0,
            started_unix_ms: 1_700_000_000_000,
            config: "/etc/openclaw-egress/egressd.toml".into(),
            allowlist: "/etc/openclaw-egress/allowlist.conf".into(),
            table: "openclaw_egress".into(),
            firewall: "table inet openclaw_egress".into(),
            interfaces: vec!["br-test".into()],
            config_error: None,
            last_apply: None,
            next_refresh_ms: Some(1000),
            entry_count: 1,
            address_count: 1,
            denied: Counters::default(),
            entries: vec![EntryStatus {
                line: 1,
                text: "example.com:443".into(),
                entry: "example.com:443".into(),
                host: Some("example.com".into()),
                addresses: vec![AddressStatus {
                    address: "192.0.2.1".into(),
                    expires_ms: Some(60_000),
                }],
                next_refresh_ms: Some(1000),
                last_error: None,
            }],
        }
    }

    /// A fresh, empty folder for one test.
    fn test_dir(name: &str) -> PathBuf {
        let d = PathBuf::from(format!(
            "/tmp/openclaw-egress-control-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// An engine that answers every call with `sample_status()`, its `pid`
    /// set to the call's number (1, 2, ...); returns the number of calls.
    fn fake_engine() -> (mpsc::Sender<ControlCall>, JoinHandle<u32>) {
        let (tx, mut rx) = mpsc::channel::<ControlCall>(4);
        let task = tokio::spawn(async move {
            let mut n = 0;
            while let Some(call) = rx.recv().await {
                assert_eq!(call.request, Request::Status);
                n += 1;
                let mut s = sample_status();
                s.pid = n;
                let _ = call.reply.send(s);
            }
            n
        });
        (tx, task)
    }

    struct Client {
        rd: BufReader<tokio::net::unix::OwnedReadHalf>,
        wr: tokio::net::unix::OwnedWriteHalf,
    }

    /// One line, without its terminator; `None` at end of stream.
    async fn read_line(rd: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Option<String> {
        let mut s = String::new();
        let n = timeout(Duration::from_secs(10), rd.read_line(&mut s))
            .await
            .expect("no answer within 10s")
            .unwrap();
        if n == 0 {
            return None;
        }
        assert!(s.ends_with('\n'), "unterminated line {s:?}");
        s.pop();
        Some(s)
    }

    impl Client {
        async fn connect(path: &Path) -> Client {
            let (rd, wr) = UnixStream::connect(path).await.unwrap().into_split();
            Client {
                rd: BufReader::new(rd),
                wr,
            }
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.wr.write_all(bytes).await.unwrap();
        }

        async fn line(&mut self) -> Option<String> {
            read_line(&mut self.rd).await
        }

        async fn error(&mut self) -> String {
            let line = self.line().await.expect("an error line");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v.as_object().unwrap().len(), 1, "{line}");
            v["error"].as_str().expect("an error string").to_owned()
        }
    }

    #[tokio::test]
    async fn status_round_trip() {
        let dir = test_dir("round-trip");
        let path = dir.join("control.sock");
        let (calls, engine) = fake_engine();
        let server = serve(&path, calls).await.unwrap();
        let mut c = Client::connect(&path).await;
        c.send(b"{\"cmd\":\"status\"}\n").await;
        let got: Status = serde_json::from_str(&c.line().await.unwrap()).unwrap();
        let mut want = sample_status();
        want.pid = 1;
        assert_eq!(got, want);
        drop(c);
        drop(server);
        assert_eq!(engine.await.unwrap(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn several_requests_on_one_connection() {
        let dir = test_dir("two-requests");
        let path = dir.join("control.sock");
        let (calls, _engine) = fake_engine();
        let _server = serve(&path, calls).await.unwrap();
        let mut c = Client::connect(&path).await;
        // Both in one write, the second with CRLF, then one without a
        // terminator followed by end of stream.
        c.send(b"{\"cmd\":\"status\"}\n{\"cmd\":\"status\"}\r\n")
            .await;
        for pid in [1, 2] {
            let s: Status = serde_json::from_str(&c.line().await.unwrap()).unwrap();
            assert_eq!(s.pid, pid);
        }
        c.send(b"{\"cmd\":\"status\"}").await;
        c.wr.shutdown().await.unwrap();
        let s: Status = serde_json::from_str(&c.line().await.unwrap()).unwrap();
        assert_eq!(s.pid, 3);
        assert_eq!(c.line().await, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn malformed_and_unknown_requests_get_errors() {
        let dir = test_dir("malformed");
        let path = dir.join("control.sock");
        let (calls, _engine) = fake_engine();
        let _server = serve(&path, calls).await.unwrap();
        let mut c = Client::connect(&path).await;
        c.send(b"{\"cmd\":\n").await;
        assert!(c.error().await.starts_with("bad request: "));
        c.send(b"{\"cmd\":\"reload\"}\n").await;
        let e = c.error().await;
        assert!(e.contains("unknown variant `reload`"), "{e}");
        c.send(b"\n").await;
        assert_eq!(c.error().await, "bad request: empty line");
        c.send(b"\xff\xfe\n").await;
        assert!(c.error().await.starts_with("bad request: "));
        // The connection is still usable.
        c.send(b"{\"cmd\":\"status\"}\n").await;
        let s: Status = serde_json::from_str(&c.line().await.unwrap()).unwrap();
        assert_eq!(s.pid, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn over_long_line_gets_an_error_and_is_closed() {
        let dir = test_dir("long-line");
        let path = dir.join("control.sock");
        let (calls, engine) = fake_engine();
        let server = serve(&path, calls).await.unwrap();

        // Exactly MAX_LINE bytes is still a (bad) request.
        let mut c = Client::connect(&path).await;
        let mut line = vec![b' '; MAX_LINE - 16];
        line.extend_from_slice(b"{\"cmd\":\"status\"}\n");
        assert_eq!(line.len(), MAX_LINE + 1);
        c.send(&line).await;
        let s: Status = serde_json::from_str(&c.line().await.unwrap()).unwrap();
        assert_eq!(s.pid, 1);

        let Client { rd, mut wr } = Client::connect(&path).await;
        let long = vec![b'x'; MAX_LINE + 1];
        let writer = tokio::spawn(async move {
            // The server may close before reading it all.
            let _ = wr.write_all(&long).await;
            let _ = wr.write_all(b"\n").await;
            wr
        });
        let mut rd = rd;
        let line = read_line(&mut rd).await.expect("an error line");
        assert_eq!(line, r#"{"error":"request line longer than 65536 bytes"}"#);
        assert_eq!(read_line(&mut rd).await, None);
        drop(writer.await.unwrap());
        drop(server);
        assert_eq!(engine.await.unwrap(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let dir = test_dir("timeout");
        let path = dir.join("control.sock");
        let (calls, _engine) = fake_engine();
        let _server = serve(&path, calls).await.unwrap();
        let mut c = Client::connect(&path).await;
        c.send(b"{\"cmd\":").await;
        let t0 = std::time::Instant::now();
        assert_eq!(
            c.error().await,
            "timeout: no complete request line within 5s"
        );
        assert!(t0.elapsed() >= READ_TIMEOUT - Duration::from_millis(100));
        assert_eq!(c.line().await, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn engine_gone_gives_an_error() {
        let dir = test_dir("engine-gone");
        let path = dir.join("control.sock");
        let (calls, rx) = mpsc::channel::<ControlCall>(1);
        drop(rx);
        let _server = serve(&path, calls).await.unwrap();
        let mut c = Client::connect(&path).await;
        c.send(b"{\"cmd\":\"status\"}\n").await;
        assert_eq!(c.error().await, "the daemon is shutting down (engine gone)");
        assert_eq!(c.line().await, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_slow_engine_does_not_block_other_connections_from_connecting() {
        let dir = test_dir("slow-engine");
        let path = dir.join("control.sock");
        // Nobody reads the receiver yet: requests queue up.
        let (calls, mut rx) = mpsc::channel::<ControlCall>(8);
        let _server = serve(&path, calls).await.unwrap();
        let mut a = Client::connect(&path).await;
        let mut b = Client::connect(&path).await;
        a.send(b"{\"cmd\":\"status\"}\n").await;
        b.send(b"{\"cmd\":\"status\"}\n").await;
        for pid in [10, 20] {
            let call = rx.recv().await.unwrap();
            let mut s = sample_status();
            s.pid = pid;
            call.reply.send(s).unwrap();
        }
        let pa: Status = serde_json::from_str(&a.line().await.unwrap()).unwrap();
        let pb: Status = serde_json::from_str(&b.line().await.unwrap()).unwrap();
        let mut pids = [pa.pid, pb.pid];
        pids.sort();
        assert_eq!(pids, [10, 20]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_drop_removes_the_socket() {
        let dir = test_dir("stale");
        let path = dir.join("control.sock");
        // A socket nobody listens on any more.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket());
        let (calls, _engine) = fake_engine();
        let server = serve(&path, calls).await.unwrap();
        let mut c = Client::connect(&path).await;
        c.send(b"{\"cmd\":\"status\"}\n").await;
        assert!(c.line().await.is_some());
        drop(server);
        assert!(std::fs::symlink_metadata(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn live_socket_is_not_taken_over() {
        let dir = test_dir("live");
        let path = dir.join("control.sock");
        let (calls, _engine) = fake_engine();
        let first = serve(&path, calls.clone()).await.unwrap();
        let e = serve(&path, calls).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        // The first one still works.
        let mut c = Client::connect(&path).await;
        c.send(b"{\"cmd\":\"status\"}\n").await;
        assert!(c.line().await.is_some());
        drop(first);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn drop_leaves_a_replaced_socket_alone() {
        let dir = test_dir("replaced");
        let path = dir.join("control.sock");
        let (calls, _engine) = fake_engine();
        let server = serve(&path, calls).await.unwrap();
        std::fs::remove_file(&path).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(server);
        assert!(std::fs::symlink_metadata(&path).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn regular_file_or_directory_at_the_path_is_refused() {
        let dir = test_dir("not-a-socket");
        let file = dir.join("file.sock");
        std::fs::write(&file, b"precious").unwrap();
        let (calls, _engine) = fake_engine();
        let e = serve(&file, calls.clone()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("is a regular file"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");

        let sub = dir.join("dir.sock");
        std::fs::create_dir(&sub).unwrap();
        let e = serve(&sub, calls).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("is a directory"), "{e}");
        assert!(sub.is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn parent_folder_is_created_and_socket_mode_is_0600() {
        let dir = test_dir("parent");
        let path = dir.join("run/openclaw-egress/control.sock");
        let (calls, _engine) = fake_engine();
        let server = serve(&path, calls).await.unwrap();
        let parent = std::fs::metadata(dir.join("run/openclaw-egress")).unwrap();
        assert!(parent.is_dir());
        assert_eq!(parent.permissions().mode() & 0o7777, 0o755);
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(parent.uid(), unsafe { libc::geteuid() });
        let sock = std::fs::symlink_metadata(&path).unwrap();
        assert!(sock.file_type().is_socket());
        assert_eq!(sock.permissions().mode() & 0o7777, 0o600);
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Not a test on its own: the client half of
    /// [`non_root_peer_is_refused`], run as an unprivileged child process
    /// (a copy of this test binary) when [`HELPER_ENV`] is set.
    #[test]
    fn peer_client_helper() {
        let Some(path) = std::env::var_os(HELPER_ENV) else {
            return;
        };
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        println!("uid={uid}");
        for line in out.lines() {
            println!("{HELPER_MARK}{line}");
        }
    }

    #[tokio::test]
    async fn non_root_peer_is_refused() {
        const NOBODY: u32 = 65534;
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test must run as root");
        let dir = test_dir("non-root");
        let path = dir.join("control.sock");
        let (calls, engine) = fake_engine();
        let server = serve(&path, calls).await.unwrap();
        // Let the unprivileged child reach the socket (this test only).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        // The target folder may not be readable by nobody: run a copy.
        let exe = dir.join("peer-helper");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let module = module_path!().split_once("::").unwrap().1;
        let test_name = format!("{module}::peer_client_helper");
        let child_path = path.clone();
        let child_dir = dir.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(&exe)
                .args([
                    test_name.as_str(),
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(HELPER_ENV, &child_path)
                .current_dir(&child_dir)
                // std drops the supplementary groups when root sets a uid.
                .gid(NOBODY)
                .uid(NOBODY)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "helper failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("uid={NOBODY}")), "{stdout}");
        let replies: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix(HELPER_MARK))
            .collect();
        assert_eq!(
            replies,
            [r#"{"error":"permission denied: uid 65534 is not root"}"#],
            "{stdout}"
        );
        drop(server);
        // The engine never saw the request.
        assert_eq!(engine.await.unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
