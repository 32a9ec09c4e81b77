//! `openclaw-egress status [--json]`: asks the running daemon for its
//! [`Status`] over its control socket and prints it.
//!
//! Exit codes: [`EXIT_OK`] when the daemon answered and holds no config
//! error; [`EXIT_CONFIG_ERROR`] when it holds one (everything is still
//! printed); [`EXIT_UNREACHABLE`] when no status could be had from it.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use egress_core::config::Config;
use egress_core::status::{Request, Status};

use crate::load;

/// The daemon answered and its config is valid.
pub const EXIT_OK: u8 = 0;
/// The daemon holds a config error (it keeps enforcing the last good policy).
pub const EXIT_CONFIG_ERROR: u8 = 1;
/// The daemon could not be asked: socket missing, connection refused,
/// permission denied, or no answer.
pub const EXIT_UNREACHABLE: u8 = 4;

/// How long to wait for the daemon's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest answer line accepted.
const MAX_ANSWER: u64 = 64 << 20;

/// Why no status could be had from the daemon.
#[derive(Debug)]
pub enum Unreachable {
    /// No socket at the path.
    Missing,
    /// A socket file, but nobody listens on it.
    Refused,
    /// The socket's permissions, or the daemon itself, refused us; the
    /// daemon's message if it sent one.
    PermissionDenied(Option<String>),
    /// Connected, but no answer line came.
    NoAnswer(String),
    /// The daemon answered with an error line.
    DaemonError(String),
    /// Any other error while connecting or talking.
    Io(io::Error),
}

impl Unreachable {
    /// The explanation printed after the socket path.
    pub fn describe(&self) -> String {
        match self {
            Unreachable::Missing => "socket missing (is openclaw-egressd running?)".to_string(),
            Unreachable::Refused => {
                "connection refused (nothing listens on the socket: the daemon is not running)"
                    .to_string()
            }
            Unreachable::PermissionDenied(None) => {
                "permission denied (only root can use the control socket)".to_string()
            }
            Unreachable::PermissionDenied(Some(m)) => {
                format!("{m} (only root can use the control socket)")
            }
            Unreachable::NoAnswer(why) => format!("no answer: {why}"),
            Unreachable::DaemonError(m) => format!("the daemon answered with an error: {m}"),
            Unreachable::Io(e) => e.to_string(),
        }
    }
}

/// Runs the command.
pub fn run(config: Option<&Path>, json: bool) -> Result<ExitCode> {
    let socket = socket_path(config)?;
    let status = match query(&socket, ANSWER_TIMEOUT)? {
        Ok(s) => s,
        Err(u) => {
            eprintln!(
                "openclaw-egress: cannot get the status from the daemon at {}: {}",
                socket.display(),
                u.describe()
            );
            return Ok(ExitCode::from(EXIT_UNREACHABLE));
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status, now_unix_ms()));
    }
    Ok(ExitCode::from(exit_code(&status)))
}

/// The exit code for a status the daemon sent.
pub fn exit_code(status: &Status) -> u8 {
    if status.config_error.is_some() {
        EXIT_CONFIG_ERROR
    } else {
        EXIT_OK
    }
}

/// The socket of the config. An invalid config does not stop `status`
/// (the daemon is the one to ask about it): its errors are printed and the
/// default socket is used.
fn socket_path(config: Option<&Path>) -> Result<PathBuf> {
    match load::load_config(config) {
        Ok((_, c)) => Ok(c.control.socket),
        Err(e) if e.downcast_ref::<load::Invalid>().is_some() => {
            let socket = Config::default().control.socket;
            eprintln!("{e}");
            eprintln!(
                "warning: the config is invalid; asking the daemon on the default socket {}",
                socket.display()
            );
            Ok(socket)
        }
        Err(e) => Err(e),
    }
}

/// Asks the daemon at `socket` for its status. The outer error is for an
/// answer that cannot be understood (a daemon of another version, or not a
/// daemon at all); the inner one for a daemon that cannot be asked.
pub fn query(socket: &Path, timeout: Duration) -> Result<Result<Status, Unreachable>> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            return Ok(Err(match e.kind() {
                io::ErrorKind::NotFound => Unreachable::Missing,
                io::ErrorKind::ConnectionRefused => Unreachable::Refused,
                io::ErrorKind::PermissionDenied => Unreachable::PermissionDenied(None),
                _ => Unreachable::Io(e),
            }))
        }
    };
    let talk = |stream: &mut UnixStream| -> io::Result<String> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut req = serde_json::to_string(&Request::Status).map_err(io::Error::other)?;
        req.push('\n');
        stream.write_all(req.as_bytes())?;
        let mut line = String::new();
        BufReader::new(stream.take(MAX_ANSWER)).read_line(&mut line)?;
        Ok(line)
    };
    let line = match talk(&mut stream) {
        Ok(l) => l,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Ok(Err(Unreachable::NoAnswer(format!(
                "nothing within {}s",
                timeout.as_secs()
            ))))
        }
        Err(e) => return Ok(Err(Unreachable::Io(e))),
    };
    if line.is_empty() {
        return Ok(Err(Unreachable::NoAnswer(
            "the daemon closed the connection".into(),
        )));
    }
    let value: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| anyhow!("unreadable answer from {}: {e}", socket.display()))?;
    if let Some(err) = value.get("error") {
        let msg = err
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| err.to_string());
        return Ok(Err(if msg.starts_with("permission denied") {
            Unreachable::PermissionDenied(Some(msg))
        } else {
            Unreachable::DaemonError(msg)
        }));
    }
    let status: Status = serde_json::from_value(value)
        .map_err(|e| anyhow!("unexpected answer from {}: {e}", socket.display()))?;
    Ok(Ok(status))
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A duration in whole seconds as at most two units: `42s`, `4m12s`,
/// `2h5m`, `3d4h`.
pub fn human_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// A time to come, in milliseconds, rounded up to the second.
fn until(ms: u64) -> String {
    format!("in {}", human_secs(ms.div_ceil(1000)))
}

/// A past instant, against `now`.
fn ago(at_unix_ms: u64, now_unix_ms: u64) -> String {
    format!(
        "{} ago",
        human_secs(now_unix_ms.saturating_sub(at_unix_ms) / 1000)
    )
}

/// Width of the address column of the entry table.
const ADDRESS_WIDTH: usize = 44;

/// The human-readable form, as of `now_unix_ms`.
pub fn render(s: &Status, now_unix_ms: u64) -> String {
    let mut o = String::new();
    // `write!` to a String cannot fail.
    let _ = writeln!(
        o,
        "openclaw-egressd {}, pid {}, up {}",
        s.version,
        s.pid,
        human_secs(now_unix_ms.saturating_sub(s.started_unix_ms) / 1000)
    );
    let _ = writeln!(o, "  config:      {}", s.config);
    let _ = writeln!(o, "  allowlist:   {}", s.allowlist);
    let interfaces = if s.interfaces.is_empty() {
        "no interface".to_string()
    } else {
        s.interfaces.join(", ")
    };
    let firewall = if s.firewall.is_empty() {
        format!("table inet {}", s.table)
    } else {
        s.firewall.clone()
    };
    let _ = writeln!(o, "  firewall:    {firewall} on {interfaces}");
    match &s.last_apply {
        None => {
            let _ = writeln!(o, "  last apply:  never");
        }
        Some(a) => {
            let reason = match &a.reason {
                Some(r) => format!(" ({r})"),
                None => String::new(),
            };
            let _ = writeln!(
                o,
                "  last apply:  {}, {}{reason}, took {:.1} ms, +{} -{} ~{}",
                ago(a.at_unix_ms, now_unix_ms),
                a.mode,
                a.duration_us as f64 / 1000.0,
                a.added,
                a.removed,
                a.refreshed
            );
            if let Some(e) = &a.error {
                let _ = writeln!(o, "  apply error: {e} (the kernel kept the previous state)");
            }
        }
    }
    let _ = writeln!(o, "  summary:     {}", s.summary());
    let _ = writeln!(
        o,
        "  denied:      {} packets, {} bytes",
        s.denied.packets, s.denied.bytes
    );
    if let Some(e) = &s.config_error {
        let _ = writeln!(
            o,
            "\nCONFIG ERROR since {}; the last good policy is still enforced:",
            ago(e.since_unix_ms, now_unix_ms)
        );
        for m in &e.messages {
            let _ = writeln!(o, "  {m}");
        }
    }
    let _ = writeln!(o, "\nLINE  ENTRY");
    if s.entries.is_empty() {
        let _ = writeln!(o, "      (the allowlist is empty: everything is denied)");
    }
    for e in &s.entries {
        let _ = writeln!(o, "{:>4}  {}", e.line, e.text);
        if let Some(host) = &e.host {
            let next = match e.next_refresh_ms {
                Some(ms) => format!("next refresh {}", until(ms)),
                None => "no refresh scheduled".to_string(),
            };
            let _ = writeln!(o, "        host {host}, {next}");
            if e.addresses.is_empty() {
                let _ = writeln!(o, "        no addresses (closed until it resolves)");
            }
        }
        for a in &e.addresses {
            let expiry = match a.expires_ms {
                Some(ms) => until(ms),
                None => "permanent".to_string(),
            };
            let _ = writeln!(
                o,
                "        {:<width$} {expiry}",
                a.address,
                width = ADDRESS_WIDTH
            );
        }
        if let Some(err) = &e.last_error {
            let _ = writeln!(o, "        last error: {err}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_core::status::{
        AddressStatus, ApplyStatus, ConfigError, Counters, EntryStatus, STATUS_FORMAT,
    };

    const NOW: u64 = 1_700_000_000_000;

    fn small() -> Status {
        Status {
            format: STATUS_FORMAT,
            version: "0.1.0".into(),
            pid: 4242,
            started_unix_ms: NOW - 7_530_000,
            config: "/etc/openclaw-egress/egressd.toml".into(),
            allowlist: "/etc/openclaw-egress/allowlist.conf".into(),
            table: "openclaw_egress".into(),
            firewall: String::new(),
            interfaces: vec!["br-1234".into()],
            config_error: None,
            last_apply: Some(ApplyStatus {
                at_unix_ms: NOW - 12_400,
                duration_us: 1_234,
                mode: "elements".into(),
                reason: None,
                added: 3,
                removed: 1,
                refreshed: 5,
                error: None,
            }),
            next_refresh_ms: Some(41_200),
            entry_count: 2,
            address_count: 3,
            denied: Counters {
                packets: 12,
                bytes: 3456,
            },
            entries: vec![
                EntryStatus {
                    line: 3,
                    text: "api.example.com:443  # the API".into(),
                    entry: "api.example.com:443".into(),
                    host: Some("api.example.com".into()),
                    addresses: vec![
                        AddressStatus {
                            address: "93.184.216.34".into(),
                            expires_ms: Some(252_000),
                        },
                        AddressStatus {
                            address: "2606:2800:220:1:248:1893:25c8:1946".into(),
                            expires_ms: Some(251_001),
                        },
                    ],
                    next_refresh_ms: Some(41_200),
                    last_error: Some("AAAA: timeout".into()),
                },
                EntryStatus {
                    line: 5,
                    text: "10.0.0.0/8 tcp:22".into(),
                    entry: "10.0.0.0/8 tcp:22".into(),
                    host: None,
                    addresses: vec![AddressStatus {
                        address: "10.0.0.0/8".into(),
                        expires_ms: None,
                    }],
                    next_refresh_ms: None,
                    last_error: None,
                },
            ],
        }
    }

    #[test]
    fn renders_a_small_status() {
        let want = "\
openclaw-egressd 0.1.0, pid 4242, up 2h5m
  config:      /etc/openclaw-egress/egressd.toml
  allowlist:   /etc/openclaw-egress/allowlist.conf
  firewall:    table inet openclaw_egress on br-1234
  last apply:  12s ago, elements, took 1.2 ms, +3 -1 ~5
  summary:     2 entries, 3 addresses, next refresh 42s, 1 errors
  denied:      12 packets, 3456 bytes

LINE  ENTRY
   3  api.example.com:443  # the API
        host api.example.com, next refresh in 42s
        93.184.216.34                                in 4m12s
        2606:2800:220:1:248:1893:25c8:1946           in 4m12s
        last error: AAAA: timeout
   5  10.0.0.0/8 tcp:22
        10.0.0.0/8                                   permanent
";
        let got = render(&small(), NOW);
        assert_eq!(got, want, "\n{got}");
        assert!(got.lines().all(|l| l.chars().count() <= 100));
    }

    #[test]
    fn renders_config_errors_apply_errors_and_closed_hosts() {
        let mut s = small();
        s.interfaces.clear();
        s.last_apply = Some(ApplyStatus {
            at_unix_ms: NOW + 5, // a clock step back must not underflow
            duration_us: 250_000,
            mode: "full".into(),
            reason: Some("table missing".into()),
            added: 0,
            removed: 0,
            refreshed: 0,
            error: Some("EPERM".into()),
        });
        s.config_error = Some(ConfigError {
            since_unix_ms: NOW - 300_000,
            messages: vec![
                "/etc/openclaw-egress/allowlist.conf:7:1: bad port".into(),
                "/etc/openclaw-egress/allowlist.conf:9:12: unknown protocol".into(),
            ],
        });
        s.entries.truncate(1);
        s.entries[0].addresses.clear();
        s.entries[0].next_refresh_ms = None;
        s.entries[0].last_error = None;
        let got = render(&s, NOW);
        let want = "  firewall:    table inet openclaw_egress on no interface
  last apply:  0s ago, full (table missing), took 250.0 ms, +0 -0 ~0
  apply error: EPERM (the kernel kept the previous state)
  summary:     2 entries, 3 addresses, next refresh 42s, 0 errors; CONFIG ERROR (old policy kept): /etc/openclaw-egress/allowlist.conf:7:1: bad port
  denied:      12 packets, 3456 bytes

CONFIG ERROR since 5m0s ago; the last good policy is still enforced:
  /etc/openclaw-egress/allowlist.conf:7:1: bad port
  /etc/openclaw-egress/allowlist.conf:9:12: unknown protocol

LINE  ENTRY
   3  api.example.com:443  # the API
        host api.example.com, no refresh scheduled
        no addresses (closed until it resolves)
";
        assert!(got.ends_with(want), "\n{got}");
    }

    #[test]
    fn renders_an_empty_allowlist_and_no_apply() {
        let mut s = small();
        s.entries.clear();
        s.last_apply = None;
        let got = render(&s, NOW);
        assert!(got.contains("\n  last apply:  never\n"), "{got}");
        assert!(
            got.ends_with("LINE  ENTRY\n      (the allowlist is empty: everything is denied)\n")
        );
    }

    #[test]
    fn exit_code_follows_the_config_error() {
        let mut s = small();
        assert_eq!(exit_code(&s), EXIT_OK);
        s.config_error = Some(ConfigError {
            since_unix_ms: 0,
            messages: vec!["a:1:1: x".into()],
        });
        assert_eq!(exit_code(&s), EXIT_CONFIG_ERROR);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_secs(0), "0s");
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(60), "1m0s");
        assert_eq!(human_secs(252), "4m12s");
        assert_eq!(human_secs(7530), "2h5m");
        assert_eq!(human_secs(90_000), "1d1h");
        assert_eq!(until(1), "in 1s");
        assert_eq!(until(0), "in 0s");
    }

    #[test]
    fn unreachable_daemon_is_classified() {
        let dir = std::env::temp_dir().join(format!(
            "openclaw-egress-status-unit-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.sock");
        assert!(matches!(
            query(&missing, ANSWER_TIMEOUT).unwrap(),
            Err(Unreachable::Missing)
        ));
        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(matches!(
            query(&stale, ANSWER_TIMEOUT).unwrap(),
            Err(Unreachable::Refused)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
