//! `openclaw-egress status` against a fake daemon on a temporary socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread::JoinHandle;

use egress_core::status::{
    AddressStatus, ApplyStatus, ConfigError, Counters, EntryStatus, Status, STATUS_FORMAT,
};
use testkit::TempDir;

/// A config in `dir` whose `[control] socket` is `socket`.
fn config(dir: &TempDir, socket: &Path) -> PathBuf {
    dir.write(
        "egressd.toml",
        &format!("[control]\nsocket = \"{}\"\n", socket.display()),
    )
}

/// Answers one connection with `answer`; returns the request line.
fn fake_daemon(socket: &Path, answer: String) -> JoinHandle<String> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut rd = BufReader::new(&stream);
        let mut line = String::new();
        rd.read_line(&mut line).unwrap();
        (&stream).write_all(answer.as_bytes()).unwrap();
        (&stream).write_all(b"\n").unwrap();
        line
    })
}

fn status_cmd(config: &Path, json: bool) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_openclaw-egress"));
    cmd.arg("--config").arg(config).arg("status");
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

fn status() -> Status {
    Status {
        format: STATUS_FORMAT,
        version: "0.1.0".into(),
        pid: 4242,
        started_unix_ms: 1_700_000_000_000,
        config: "/etc/openclaw-egress/egressd.toml".into(),
        allowlist: "/etc/openclaw-egress/allowlist.conf".into(),
        table: "openclaw_egress".into(),
        firewall: "table inet openclaw_egress".into(),
        interfaces: vec!["br-1234".into()],
        config_error: None,
        last_apply: Some(ApplyStatus {
            at_unix_ms: 1_700_000_000_000,
            duration_us: 800,
            mode: "full".into(),
            reason: Some("table missing".into()),
            added: 2,
            removed: 0,
            refreshed: 0,
            error: None,
        }),
        next_refresh_ms: Some(30_000),
        entry_count: 1,
        address_count: 1,
        denied: Counters {
            packets: 7,
            bytes: 420,
        },
        entries: vec![EntryStatus {
            line: 1,
            text: "example.com:443".into(),
            entry: "example.com:443".into(),
            host: Some("example.com".into()),
            addresses: vec![AddressStatus {
                address: "192.0.2.1".into(),
                expires_ms: Some(90_000),
            }],
            next_refresh_ms: Some(30_000),
            last_error: None,
        }],
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn healthy_daemon_exits_0() {
    let dir = TempDir::new("status-ok");
    let sock = dir.join("control.sock");
    let cfg = config(&dir, &sock);
    let daemon = fake_daemon(&sock, serde_json::to_string(&status()).unwrap());
    let out = status_cmd(&cfg, false);
    assert_eq!(daemon.join().unwrap(), "{\"cmd\":\"status\"}\n");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with("openclaw-egressd 0.1.0, pid 4242, up "),
        "{stdout}"
    );
    assert!(
        stdout.contains("\n  summary:     1 entries, 1 addresses, next refresh 30s, 0 errors\n")
    );
    assert!(stdout.contains("\n  denied:      7 packets, 420 bytes\n"));
    assert!(stdout.contains("\n   1  example.com:443\n        host example.com, next refresh in 30s\n        192.0.2.1 "));
    assert!(stdout.contains(" in 1m30s\n"));
    assert!(!stdout.contains("CONFIG ERROR"));
}

#[test]
fn json_is_the_status_as_received() {
    let dir = TempDir::new("status-json");
    let sock = dir.join("control.sock");
    let cfg = config(&dir, &sock);
    let daemon = fake_daemon(&sock, serde_json::to_string(&status()).unwrap());
    let out = status_cmd(&cfg, true);
    daemon.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let back: Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(back, status());
    // Pretty-printed.
    assert!(text(&out.stdout).starts_with("{\n  \"format\": 1,\n"));
}

#[test]
fn config_error_exits_1_and_still_prints_everything() {
    let dir = TempDir::new("status-config-error");
    let sock = dir.join("control.sock");
    let cfg = config(&dir, &sock);
    let mut s = status();
    s.config_error = Some(ConfigError {
        since_unix_ms: 1_700_000_000_000,
        messages: vec![
            "/etc/openclaw-egress/allowlist.conf:4:9: bad port".into(),
            "/etc/openclaw-egress/allowlist.conf:6:1: bad host".into(),
        ],
    });
    for json in [false, true] {
        let daemon = fake_daemon(&sock, serde_json::to_string(&s).unwrap());
        let out = status_cmd(&cfg, json);
        daemon.join().unwrap();
        std::fs::remove_file(&sock).unwrap();
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
        if json {
            let back: Status = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(back, s);
        } else {
            assert!(stdout.contains("the last good policy is still enforced:\n  /etc/openclaw-egress/allowlist.conf:4:9: bad port\n  /etc/openclaw-egress/allowlist.conf:6:1: bad host\n"), "{stdout}");
            assert!(stdout.contains("\n   1  example.com:443\n"));
        }
    }
}

#[test]
fn unreachable_daemon_exits_4_and_says_why() {
    let dir = TempDir::new("status-unreachable");
    let sock = dir.join("control.sock");
    let cfg = config(&dir, &sock);

    let out = status_cmd(&cfg, false);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("{}: socket missing", sock.display())),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    // A socket file nobody listens on.
    drop(UnixListener::bind(&sock).unwrap());
    let out = status_cmd(&cfg, true);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("{}: connection refused", sock.display())),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    std::fs::remove_file(&sock).unwrap();

    // The daemon refuses the peer.
    let daemon = fake_daemon(
        &sock,
        r#"{"error":"permission denied: uid 1000 is not root"}"#.into(),
    );
    let out = status_cmd(&cfg, false);
    daemon.join().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: permission denied: uid 1000 is not root",
            sock.display()
        )),
        "{stderr}"
    );
}
