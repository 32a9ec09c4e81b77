//! The daemon's status, as sent over the control socket and printed by
//! `openclaw-egress status --json`.
//!
//! This is a stable, documented format (docs/status-json.md): fields may be
//! added, never renamed or removed, and `format` is bumped if that ever has
//! to change. Times are Unix milliseconds; durations are milliseconds.

use serde::{Deserialize, Serialize};

/// Current version of the format.
pub const STATUS_FORMAT: u32 = 1;

/// A request on the control socket (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Ask for [`Status`].
    Status,
}

/// The whole status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// [`STATUS_FORMAT`].
    pub format: u32,
    /// Daemon version.
    pub version: String,
    /// Daemon process id.
    pub pid: u32,
    /// When the daemon started.
    pub started_unix_ms: u64,
    /// The config file.
    pub config: String,
    /// The allowlist file.
    pub allowlist: String,
    /// nft table (family inet); on pf, the anchor is named after it.
    pub table: String,
    /// What holds the rules, as the firewall names it: `table inet X` or
    /// `pf anchor X` (empty from daemons older than this field).
    #[serde(default)]
    pub firewall: String,
    /// Interfaces being filtered.
    pub interfaces: Vec<String>,
    /// The last reload's errors, if the files on disk are invalid. The
    /// daemon keeps enforcing the last good policy meanwhile.
    pub config_error: Option<ConfigError>,
    /// The last apply, if any.
    pub last_apply: Option<ApplyStatus>,
    /// Milliseconds until the next scheduled DNS query, if any.
    pub next_refresh_ms: Option<u64>,
    /// Number of distinct entries.
    pub entry_count: usize,
    /// Number of elements in the kernel's sets (desired state).
    pub address_count: usize,
    /// Packets and bytes the deny rules have counted.
    pub denied: Counters,
    /// Every entry of the allowlist in file order.
    pub entries: Vec<EntryStatus>,
}

/// Invalid config or allowlist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigError {
    /// When the error was seen.
    pub since_unix_ms: u64,
    /// Every diagnostic, as `PATH:LINE:COL: message` lines.
    pub messages: Vec<String>,
}

/// One apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyStatus {
    /// When it finished.
    pub at_unix_ms: u64,
    /// How long it took (read + write), in microseconds.
    pub duration_us: u64,
    /// "full", "elements" or "unchanged".
    pub mode: String,
    /// Why a full load was done.
    pub reason: Option<String>,
    /// Elements added.
    pub added: usize,
    /// Elements removed.
    pub removed: usize,
    /// Elements whose timeout was renewed.
    pub refreshed: usize,
    /// The error, if the apply failed (the kernel then keeps the previous
    /// state: a batch is all-or-nothing).
    pub error: Option<String>,
}

/// Deny counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryStatus {
    /// 1-based line in the allowlist.
    pub line: usize,
    /// The line as written (without its terminator).
    pub text: String,
    /// The canonical entry.
    pub entry: String,
    /// The hostname, for hostname entries.
    pub host: Option<String>,
    /// Current addresses (for IP/CIDR entries: the entry itself, permanent).
    pub addresses: Vec<AddressStatus>,
    /// Milliseconds until this host's next DNS query.
    pub next_refresh_ms: Option<u64>,
    /// The last resolution error of this host, if its last query failed.
    pub last_error: Option<String>,
}

/// One address of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressStatus {
    /// The address or network.
    pub address: String,
    /// Milliseconds until it expires; `None` for permanent ones.
    pub expires_ms: Option<u64>,
}

impl Status {
    /// The one-line summary used in systemd's STATUS= and by `status`.
    pub fn summary(&self) -> String {
        // Errors are counted per host: a host listed on several lines is one
        // failing name.
        let failing: std::collections::BTreeSet<&str> = self
            .entries
            .iter()
            .filter(|e| e.last_error.is_some())
            .map(|e| e.host.as_deref().unwrap_or(&e.entry))
            .collect();
        summary_line(
            self.entry_count,
            self.address_count,
            self.next_refresh_ms,
            failing.len(),
            self.config_error.as_ref(),
        )
    }
}

/// The summary line from its parts, so the daemon can write STATUS= without
/// building a whole [`Status`].
pub fn summary_line(
    entries: usize,
    addresses: usize,
    next_refresh_ms: Option<u64>,
    failing_hosts: usize,
    config_error: Option<&ConfigError>,
) -> String {
    let next = match next_refresh_ms {
        Some(ms) => format!("next refresh {}s", ms.div_ceil(1000)),
        None => "no refresh scheduled".into(),
    };
    let mut s = format!("{entries} entries, {addresses} addresses, {next}, {failing_hosts} errors");
    if let Some(e) = config_error {
        let first = e.messages.first().map(String::as_str).unwrap_or("");
        s.push_str(&format!("; CONFIG ERROR (old policy kept): {first}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format_is_stable() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(r, Request::Status);
    }

    #[test]
    fn summary_counts_errors_and_shows_config_errors() {
        let mut s = Status {
            format: STATUS_FORMAT,
            version: "0".into(),
            pid: 1,
            started_unix_ms: 0,
            config: "c".into(),
            allowlist: "a".into(),
            table: "t".into(),
            firewall: "table inet t".into(),
            interfaces: vec![],
            config_error: None,
            last_apply: None,
            next_refresh_ms: Some(11_500),
            entry_count: 2,
            address_count: 5,
            denied: Counters::default(),
            entries: vec![EntryStatus {
                line: 1,
                text: "a.example:443".into(),
                entry: "a.example:443".into(),
                host: Some("a.example".into()),
                addresses: vec![],
                next_refresh_ms: Some(1000),
                last_error: Some("timeout".into()),
            }],
        };
        assert_eq!(
            s.summary(),
            "2 entries, 5 addresses, next refresh 12s, 1 errors"
        );
        // The same failing host on a second line is still one error.
        let mut twice = s.clone();
        let mut again = twice.entries[0].clone();
        again.line = 2;
        again.text = "a.example:80".into();
        twice.entries.push(again);
        assert_eq!(
            twice.summary(),
            "2 entries, 5 addresses, next refresh 12s, 1 errors"
        );
        s.config_error = Some(ConfigError {
            since_unix_ms: 0,
            messages: vec!["a.conf:3:5: bad port".into()],
        });
        assert!(s
            .summary()
            .ends_with("CONFIG ERROR (old policy kept): a.conf:3:5: bad port"));
        let json = serde_json::to_string(&s).unwrap();
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
