//! The daemon's settings file, `egressd.toml`.
//!
//! Every key is optional, so an empty file is a valid configuration. The text
//! is deserialised into "raw" structs that keep each value's span, then
//! validated in one pass so that a user sees every mistake at once, each with
//! its `PATH:LINE:COL`. Reading the file, `/etc/resolv.conf` or Docker is left
//! to the edges; this module only turns text into a [`Config`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::diag::{Diagnostic, Diagnostics, Severity};
use crate::entry::{PortRange, Proto};

/// Where the daemon and the CLI look for the settings file unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/openclaw-egress/egressd.toml";

const DEFAULT_ALLOWLIST: &str = "/etc/openclaw-egress/allowlist.conf";
const DEFAULT_NETWORK: &str = "openclaw-egress";
const DEFAULT_TABLE: &str = "openclaw_egress";
const DEFAULT_LOG_PREFIX: &str = "openclaw-egress deny: ";
/// Where the control socket lives by default: /run on Linux; macOS has no
/// /run (and its / is read-only), its runtime folder is /var/run.
#[cfg(not(target_os = "macos"))]
pub const DEFAULT_SOCKET: &str = "/run/openclaw-egress/control.sock";
/// Where the control socket lives by default: /run on Linux; macOS has no
/// /run (and its / is read-only), its runtime folder is /var/run.
#[cfg(target_os = "macos")]
pub const DEFAULT_SOCKET: &str = "/var/run/openclaw-egress/control.sock";

/// The port a server given without one listens on.
const DNS_PORT: u16 = 53;
/// Linux `IFNAMSIZ` minus the terminating NUL.
const IFNAME_MAX: usize = 15;
const TABLE_MAX: usize = 64;
/// The kernel's `NF_LOG_PREFIXLEN` (128) minus the terminating NUL.
const LOG_PREFIX_MAX: usize = 127;
const CONCURRENCY_MAX: i64 = 4096;

/// The whole settings file, validated, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The allowlist file; a relative path in the file is resolved against the
    /// folder of the settings file.
    pub allowlist: PathBuf,
    /// Which containers are filtered.
    pub network: NetworkConfig,
    /// How the daemon resolves the allowlist's host names.
    pub resolver: ResolverConfig,
    /// Which DNS servers the containers themselves may query.
    pub dns: DnsConfig,
    /// The kernel-side ruleset.
    pub firewall: FirewallConfig,
    /// The daemon's control socket.
    pub control: ControlConfig,
    /// `openclaw-egress verify`.
    pub verify: VerifyConfig,
}

/// `[verify]`: how `openclaw-egress verify` probes.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyConfig {
    /// Image of the short-lived probe container (it only needs `sleep`).
    pub image: String,
    /// An address that is not allowlisted, probed to show that it is
    /// refused (default 192.0.2.1, a documentation address that is never
    /// routed, so a broken firewall leaks nothing).
    pub unlisted: IpAddr,
}

impl Default for VerifyConfig {
    fn default() -> VerifyConfig {
        VerifyConfig {
            image: "alpine".into(),
            unlisted: IpAddr::from([192, 0, 2, 1]),
        }
    }
}

/// `[network]`: the Docker network whose bridge is filtered.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// Name of the Docker network.
    pub docker: String,
    /// Explicit interface name to filter. When unset, the bridge of the
    /// Docker network is looked up through the Docker API (the fallback
    /// without Docker: the network name cut to 15 bytes).
    pub interface: Option<String>,
    /// Traffic between two containers of the network (in and out on the
    /// same bridge).
    pub intra: Intra,
    /// Ports of the host itself (the gateway address, or any address of the
    /// host) that containers may reach. Everything else on the host is
    /// denied, apart from the DNS servers of `[dns] allow` that live on it.
    pub host_ports: Vec<HostPort>,
}

/// Whether containers of the agent network may reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intra {
    /// Denied (the default): one compromised agent must not reach another
    /// agent's sandbox.
    Deny,
    /// Allowed (the firewall takes no part in it).
    Allow,
}

impl Intra {
    /// Accepted spellings, for error messages.
    pub const CHOICES: &'static str = "\"deny\" or \"allow\"";

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Intra::Deny => "deny",
            Intra::Allow => "allow",
        }
    }
}

/// One `[network] host_ports` entry: `tcp/8080`, `udp/5000-5010`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    /// Protocol.
    pub proto: Proto,
    /// Port or inclusive range.
    pub ports: PortRange,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto, self.ports)
    }
}

/// Parses `tcp/8080` or `udp/5000-5010` (protocol first, as in nft).
pub fn parse_host_port(s: &str) -> Result<HostPort, String> {
    let bad = |why: &str| format!("network.host_ports: {s:?} {why}");
    let (proto, ports) = s
        .split_once('/')
        .ok_or_else(|| bad("must be PROTO/PORT or PROTO/FIRST-LAST, e.g. \"tcp/8080\""))?;
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return Err(bad("has an unknown protocol (tcp or udp)")),
    };
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(bad("has a port that is not a number in 1..=65535")),
        }
    };
    let ports = match ports.split_once('-') {
        Some((a, b)) => {
            let (start, end) = (port(a)?, port(b)?);
            if start > end {
                return Err(bad("has a port range whose first port is above its last"));
            }
            PortRange { start, end }
        }
        None => PortRange::single(port(ports)?),
    };
    Ok(HostPort { proto, ports })
}

/// `[resolver]`: the daemon's own DNS lookups of allowlisted names.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolverConfig {
    /// Servers to ask; `None` means the nameservers of `/etc/resolv.conf`,
    /// which the edge reads.
    pub servers: Option<Vec<SocketAddr>>,
    /// Answers are kept at least this long, whatever their TTL.
    pub min_ttl: Duration,
    /// Answers are kept at most this long, whatever their TTL.
    pub max_ttl: Duration,
    /// An address stays allowed this long after the last answer that held it.
    pub grace: Duration,
    /// How long the last good answer is kept while DNS fails.
    pub serve_stale: Duration,
    /// How long to wait before asking again after "no such name" or "no
    /// records of this type" (clamped to `[min_ttl, max_ttl]`). Most hosts
    /// have no AAAA records, so this sets how often those are re-asked.
    pub negative_ttl: Duration,
    /// Time limit of one query.
    pub timeout: Duration,
    /// Tries per query (at least 1).
    pub attempts: usize,
    /// Queries in flight at most (`1..=4096`).
    pub concurrency: usize,
    /// Addresses kept per host and address family (at least 1).
    pub max_addresses: usize,
}

/// `[dns]`: what the containers may use for DNS.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DnsConfig {
    /// Servers the containers may reach on port 53 (UDP and TCP); `None`
    /// means the resolver's servers (see [`Config::effective_dns_allow`]).
    pub allow: Option<Vec<IpAddr>>,
}

/// `[firewall]`: the generated ruleset.
#[derive(Debug, Clone, PartialEq)]
pub struct FirewallConfig {
    /// Name of the nft table (family `inet`); the pf anchor is derived from it.
    pub table: String,
    /// What happens to denied packets.
    pub action: Action,
    /// Private networks that allowlisted host names may resolve into; any
    /// other private answer is ignored (DNS rebinding protection).
    pub allow_private: Vec<IpNet>,
    /// Deny log lines per second; 0 turns logging off.
    pub log_rate: u32,
    /// Deny log lines allowed in a burst above `log_rate`.
    pub log_burst: u32,
    /// Prefix of each deny log line.
    pub log_prefix: String,
}

/// What the firewall does with a denied packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer with an ICMP error / TCP reset, so clients fail fast.
    Reject,
    /// Discard silently, so clients wait for their timeout.
    Drop,
}

/// `[control]`: the daemon's control socket.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    /// Path of the Unix socket (absolute).
    pub socket: PathBuf,
}

impl Action {
    const CHOICES: &'static str = "\"reject\" or \"drop\"";

    /// The name as written in the settings file and in nft.
    pub fn name(self) -> &'static str {
        match self {
            Action::Reject => "reject",
            Action::Drop => "drop",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            allowlist: PathBuf::from(DEFAULT_ALLOWLIST),
            network: NetworkConfig::default(),
            resolver: ResolverConfig::default(),
            dns: DnsConfig::default(),
            firewall: FirewallConfig::default(),
            control: ControlConfig::default(),
            verify: VerifyConfig::default(),
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> NetworkConfig {
        NetworkConfig {
            docker: DEFAULT_NETWORK.to_owned(),
            interface: None,
            intra: Intra::Deny,
            host_ports: Vec::new(),
        }
    }
}

impl Default for ResolverConfig {
    fn default() -> ResolverConfig {
        ResolverConfig {
            servers: None,
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(300),
            serve_stale: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(2),
            attempts: 2,
            concurrency: 64,
            max_addresses: 256,
        }
    }
}

impl Default for FirewallConfig {
    fn default() -> FirewallConfig {
        FirewallConfig {
            table: DEFAULT_TABLE.to_owned(),
            action: Action::Reject,
            allow_private: Vec::new(),
            log_rate: 5,
            log_burst: 10,
            log_prefix: DEFAULT_LOG_PREFIX.to_owned(),
        }
    }
}

impl Default for ControlConfig {
    fn default() -> ControlConfig {
        ControlConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

impl FirewallConfig {
    /// The pf anchor name: the table name with `_` turned into `-`, so the
    /// default is `openclaw-egress`, the anchor the old scripts used.
    pub fn pf_anchor(&self) -> String {
        pf_anchor_name(&self.table)
    }
}

/// The pf anchor of an nft table name (see [`FirewallConfig::pf_anchor`]);
/// backends that only get the table name (flush) derive it the same way.
pub fn pf_anchor_name(table: &str) -> String {
    table.replace('_', "-")
}

impl NetworkConfig {
    /// The interface to filter when it is not looked up in Docker: the
    /// explicit `interface`, else the Docker network name cut to the 15 bytes
    /// Linux allows (never inside a UTF-8 character).
    pub fn interface_name(&self) -> String {
        if let Some(name) = &self.interface {
            return name.clone();
        }
        let mut end = self.docker.len().min(IFNAME_MAX);
        while !self.docker.is_char_boundary(end) {
            end -= 1;
        }
        self.docker[..end].to_owned()
    }
}

impl Config {
    /// Parses and validates the text of a settings file.
    ///
    /// `path` is where the text came from: it names the file in diagnostics
    /// and anchors a relative `allowlist`. A syntax error, an unknown key or a
    /// section or list of the wrong shape stops parsing and yields one
    /// diagnostic; otherwise every invalid value is reported, in file order.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Diagnostics> {
        let mut v = Validator {
            path: path.display().to_string(),
            text,
            errors: Vec::new(),
        };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                v.error(e.span(), e.message().to_owned());
                return Err(Diagnostics(v.errors));
            }
        };
        let config = v.config(path, raw);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            v.errors.sort_by_key(|d| (d.line, d.col));
            Err(Diagnostics(v.errors))
        }
    }

    /// The addresses containers may query on port 53: `dns.allow` if set,
    /// else the addresses of `resolver_servers` (the configured servers or
    /// those the edge read from `/etc/resolv.conf`). Duplicates are dropped,
    /// first occurrence wins, so the order stays the user's.
    pub fn effective_dns_allow(&self, resolver_servers: &[SocketAddr]) -> Vec<IpAddr> {
        let candidates: Vec<IpAddr> = match &self.dns.allow {
            Some(allow) => allow.clone(),
            None => resolver_servers.iter().map(SocketAddr::ip).collect(),
        };
        let mut out: Vec<IpAddr> = Vec::with_capacity(candidates.len());
        for ip in candidates {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        out
    }
}

// Raw mirror of the file. Every leaf is kept as a spanned `toml::Value` and
// checked by hand, so that a bad value (even one of the wrong type) becomes a
// diagnostic of ours, collected with the others, instead of a serde error
// that stops at the first one and names Rust types ("expected i64").

type Raw = Option<Spanned<toml::Value>>;
type RawList = Option<Spanned<Vec<Spanned<toml::Value>>>>;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
struct RawConfig {
    allowlist: Raw,
    network: RawNetwork,
    resolver: RawResolver,
    dns: RawDns,
    firewall: RawFirewall,
    control: RawControl,
    verify: RawVerify,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
struct RawVerify {
    image: Raw,
    unlisted: Raw,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
struct RawNetwork {
    docker: Raw,
    interface: Raw,
    intra: Raw,
    host_ports: RawList,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
struct RawResolver {
    servers: RawList,
    min_ttl: Raw,
    max_ttl: Raw,
    grace: Raw,
    serve_stale: Raw,
    negative_ttl: Raw,
    timeout: Raw,
    attempts: Raw,
    concurrency: Raw,
    max_addresses: Raw,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
struct RawDns {
    allow: RawList,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
struct RawFirewall {
    table: Raw,
    action: Raw,
    allow_private: RawList,
    log_rate: Raw,
    log_burst: Raw,
    log_prefix: Raw,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
struct RawControl {
    socket: Raw,
}

/// Turns raw values into checked ones, collecting an error per bad value.
struct Validator<'a> {
    path: String,
    text: &'a str,
    errors: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error(&mut self, span: Option<Range<usize>>, message: String) {
        let (line, col) = match span {
            Some(span) => line_col(self.text, span.start),
            None => (1, 1),
        };
        self.errors.push(Diagnostic {
            path: self.path.clone(),
            line,
            col,
            severity: Severity::Error,
            message,
        });
    }

    /// Checks one optional string value with `check`, which says what is
    /// wrong; a missing or bad value yields `default` so that validation goes
    /// on to the next key.
    fn string<T>(
        &mut self,
        raw: Raw,
        key: &str,
        default: T,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        let Some(raw) = raw else { return default };
        let span = raw.span();
        match as_str(raw.get_ref(), key).and_then(check) {
            Ok(value) => value,
            Err(message) => {
                self.error(Some(span), message);
                default
            }
        }
    }

    /// Like [`Validator::string`] for a list of strings: an empty list is an
    /// error when `non_empty`, and every bad element is reported at its own
    /// place.
    fn list<T>(
        &mut self,
        raw: RawList,
        key: &str,
        non_empty: bool,
        check: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let raw = raw?;
        let span = raw.span();
        let items = raw.into_inner();
        if non_empty && items.is_empty() {
            self.error(
                Some(span),
                format!("{key} must not be an empty list (leave it out for the default)"),
            );
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match as_str(item.get_ref(), key).and_then(&check) {
                Ok(value) => out.push(value),
                Err(message) => self.error(Some(item.span()), message),
            }
        }
        Some(out)
    }

    fn duration(&mut self, raw: Raw, key: &str, default: Duration) -> Duration {
        self.string(raw, key, default, |s| {
            humantime::parse_duration(s).map_err(|e| {
                format!("{key}: invalid duration {s:?}: {e} (write e.g. \"5s\" or \"1h 30m\")")
            })
        })
    }

    fn integer<T: TryFrom<i64>>(
        &mut self,
        raw: Raw,
        key: &str,
        range: RangeInclusive<i64>,
        default: T,
    ) -> T {
        let Some(raw) = raw else { return default };
        let result = match raw.get_ref() {
            toml::Value::Integer(n) if range.contains(n) => {
                T::try_from(*n).map_err(|_| out_of_range(key, *n, &range))
            }
            toml::Value::Integer(n) => Err(out_of_range(key, *n, &range)),
            other => Err(wrong_type(key, "an integer", other)),
        };
        result.unwrap_or_else(|message| {
            self.error(Some(raw.span()), message);
            default
        })
    }

    fn config(&mut self, path: &Path, raw: RawConfig) -> Config {
        let d = Config::default();
        let allowlist = self.string(raw.allowlist, "allowlist", d.allowlist, |s| {
            if s.is_empty() {
                return Err("allowlist must not be empty".to_owned());
            }
            // Relative to the settings file, not to the daemon's working
            // directory (which is `/` under systemd).
            let dir = path.parent().unwrap_or(Path::new(""));
            Ok(dir.join(s))
        });
        Config {
            allowlist,
            network: self.network(raw.network, d.network),
            resolver: self.resolver(raw.resolver, d.resolver),
            dns: DnsConfig {
                allow: self.list(raw.dns.allow, "dns.allow", false, |s| {
                    s.parse::<IpAddr>()
                        .map_err(|_| format!("dns.allow: {s:?} is not an IP address"))
                }),
            },
            firewall: self.firewall(raw.firewall, d.firewall),
            verify: VerifyConfig {
                image: self.string(raw.verify.image, "verify.image", d.verify.image, |s| {
                    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        Err(format!("verify.image: {s:?} is not an image reference"))
                    } else {
                        Ok(s.to_owned())
                    }
                }),
                unlisted: self.string(
                    raw.verify.unlisted,
                    "verify.unlisted",
                    d.verify.unlisted,
                    |s| {
                        s.parse::<IpAddr>()
                            .map_err(|_| format!("verify.unlisted: {s:?} is not an IP address"))
                    },
                ),
            },
            control: ControlConfig {
                socket: self.string(
                    raw.control.socket,
                    "control.socket",
                    d.control.socket,
                    |s| {
                        if Path::new(s).is_absolute() {
                            Ok(PathBuf::from(s))
                        } else {
                            Err(format!("control.socket: {s:?} must be an absolute path"))
                        }
                    },
                ),
            },
        }
    }

    fn network(&mut self, raw: RawNetwork, d: NetworkConfig) -> NetworkConfig {
        NetworkConfig {
            docker: self.string(raw.docker, "network.docker", d.docker, |s| {
                if s.is_empty() {
                    Err("network.docker must not be empty".to_owned())
                } else {
                    Ok(s.to_owned())
                }
            }),
            interface: self.string(raw.interface, "network.interface", d.interface, |s| {
                check_interface(s).map(|()| Some(s.to_owned()))
            }),
            intra: self.string(raw.intra, "network.intra", d.intra, |s| match s {
                "deny" => Ok(Intra::Deny),
                "allow" => Ok(Intra::Allow),
                _ => Err(format!(
                    "network.intra: unknown value {s:?}, expected {}",
                    Intra::CHOICES
                )),
            }),
            host_ports: self
                .list(raw.host_ports, "network.host_ports", false, parse_host_port)
                .unwrap_or(d.host_ports),
        }
    }

    fn resolver(&mut self, raw: RawResolver, d: ResolverConfig) -> ResolverConfig {
        let servers = self.list(raw.servers, "resolver.servers", true, parse_server);
        let min_span = raw.min_ttl.as_ref().map(Spanned::span);
        let max_span = raw.max_ttl.as_ref().map(Spanned::span);
        let timeout_span = raw.timeout.as_ref().map(Spanned::span);
        let before = self.errors.len();
        let min_ttl = self.duration(raw.min_ttl, "resolver.min_ttl", d.min_ttl);
        let max_ttl = self.duration(raw.max_ttl, "resolver.max_ttl", d.max_ttl);
        // Comparing a value with the fallback of an unparsable one would only
        // add a confusing second message about the same line.
        let both_parsed = self.errors.len() == before;
        if both_parsed && max_ttl.is_zero() {
            self.error(max_span, "resolver.max_ttl must be more than 0s".to_owned());
        } else if both_parsed && min_ttl > max_ttl {
            // When only max_ttl was written, the clash is with the default
            // min_ttl, and max_ttl is the line the user has to change.
            self.error(
                min_span.or(max_span),
                format!(
                    "resolver.min_ttl ({}) must not exceed resolver.max_ttl ({})",
                    humantime::format_duration(min_ttl),
                    humantime::format_duration(max_ttl)
                ),
            );
        }
        let timeout = self.duration(raw.timeout, "resolver.timeout", d.timeout);
        if timeout.is_zero() {
            self.error(
                timeout_span,
                "resolver.timeout must be more than 0s".to_owned(),
            );
        }
        ResolverConfig {
            servers,
            min_ttl,
            max_ttl,
            grace: self.duration(raw.grace, "resolver.grace", d.grace),
            serve_stale: self.duration(raw.serve_stale, "resolver.serve_stale", d.serve_stale),
            negative_ttl: self.duration(raw.negative_ttl, "resolver.negative_ttl", d.negative_ttl),
            timeout,
            attempts: self.integer(raw.attempts, "resolver.attempts", 1..=i64::MAX, d.attempts),
            concurrency: self.integer(
                raw.concurrency,
                "resolver.concurrency",
                1..=CONCURRENCY_MAX,
                d.concurrency,
            ),
            max_addresses: self.integer(
                raw.max_addresses,
                "resolver.max_addresses",
                1..=i64::MAX,
                d.max_addresses,
            ),
        }
    }

    fn firewall(&mut self, raw: RawFirewall, d: FirewallConfig) -> FirewallConfig {
        let u32_range = 0..=i64::from(u32::MAX);
        FirewallConfig {
            table: self.string(raw.table, "firewall.table", d.table, |s| {
                check_table(s).map(|()| s.to_owned())
            }),
            action: self.string(raw.action, "firewall.action", d.action, |s| match s {
                "reject" => Ok(Action::Reject),
                "drop" => Ok(Action::Drop),
                _ => Err(format!(
                    "firewall.action: unknown action {s:?}, expected {}",
                    Action::CHOICES
                )),
            }),
            allow_private: self
                .list(
                    raw.allow_private,
                    "firewall.allow_private",
                    false,
                    parse_private,
                )
                .unwrap_or(d.allow_private),
            log_rate: self.integer(
                raw.log_rate,
                "firewall.log_rate",
                u32_range.clone(),
                d.log_rate,
            ),
            log_burst: self.integer(raw.log_burst, "firewall.log_burst", u32_range, d.log_burst),
            log_prefix: self.string(raw.log_prefix, "firewall.log_prefix", d.log_prefix, |s| {
                check_log_prefix(s).map(|()| s.to_owned())
            }),
        }
    }
}

fn as_str<'v>(value: &'v toml::Value, key: &str) -> Result<&'v str, String> {
    match value {
        toml::Value::String(s) => Ok(s),
        other => Err(wrong_type(key, "a string", other)),
    }
}

fn wrong_type(key: &str, expected: &str, found: &toml::Value) -> String {
    format!("{key}: expected {expected}, found {}", found.type_str())
}

fn out_of_range(key: &str, n: i64, range: &RangeInclusive<i64>) -> String {
    if *range.end() == i64::MAX {
        format!("{key} must be at least {}, not {n}", range.start())
    } else {
        format!(
            "{key} must be in {}..={}, not {n}",
            range.start(),
            range.end()
        )
    }
}

/// 1-based line and character column of a byte offset; an offset past the
/// end (toml reports some errors at EOF) or inside a character is clamped.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare `IP` / `IPv6` / `[IPv6]` on port 53.
fn parse_server(s: &str) -> Result<SocketAddr, String> {
    let bad = |why: &str| format!("resolver.servers: {s:?} {why}");
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DNS_PORT));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(bad("has no closing ']'"));
        };
        if after.is_empty() {
            (host, None)
        } else if let Some(port) = after.strip_prefix(':') {
            (host, Some(port))
        } else {
            return Err(bad("has text after ']' that is not \":PORT\""));
        }
    } else {
        match s.rsplit_once(':') {
            // A bare IPv6 address would have parsed above, so several colons
            // here are an unbracketed IPv6 address with a port.
            Some((host, _)) if host.contains(':') => {
                return Err(bad(
                    "is ambiguous: write an IPv6 address with a port as \"[IPv6]:PORT\"",
                ));
            }
            Some((host, port)) => (host, Some(port)),
            None => return Err(bad("is not an IP address or IP:PORT")),
        }
    };
    let ip: IpAddr = match host.parse() {
        Ok(ip) if s.starts_with('[') && !matches!(ip, IpAddr::V6(_)) => {
            return Err(bad("has brackets around an address that is not IPv6"));
        }
        Ok(ip) => ip,
        Err(_) => return Err(bad(&format!("has {host:?}, which is not an IP address"))),
    };
    let port = match port {
        None => DNS_PORT,
        Some(p) => match p.parse::<u32>() {
            Ok(n @ 1..=65535) => n as u16,
            _ => {
                return Err(bad(&format!(
                    "has port {p:?}; a port is a number in 1..=65535"
                )))
            }
        },
    };
    Ok(SocketAddr::new(ip, port))
}

/// A CIDR, or a plain address meaning that one address.
fn parse_private(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s.parse().map_err(|_| {
        format!(
            "firewall.allow_private: {s:?} is not a CIDR (e.g. \"10.0.0.0/8\") or an IP address"
        )
    })?;
    // A typo such as 10.1.2.3/8 is most likely meant as the network; saying
    // so beats silently widening or narrowing what the user wrote.
    if net.trunc() != net {
        return Err(format!(
            "firewall.allow_private: {s:?} has host bits set; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Checks an interface name as Linux takes it (at most 15 bytes, no '/',
/// ':', whitespace or control characters, not "." or ".."); the error
/// names the `network.interface` key.
pub fn check_interface(s: &str) -> Result<(), String> {
    let why = if s.is_empty() {
        "must not be empty"
    } else if s.len() > IFNAME_MAX {
        "is longer than 15 bytes (the Linux limit)"
    } else if s == "." || s == ".." {
        "must not be \".\" or \"..\""
    } else if s.contains('/') {
        "must not contain '/'"
    } else if s.contains(':') {
        "must not contain ':' (alias names are not interfaces)"
    } else if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "must not contain whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(format!("network.interface: {s:?} {why}"))
}

fn check_table(s: &str) -> Result<(), String> {
    let why = if s.is_empty() {
        "must not be empty"
    } else if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        "must start with a letter"
    } else if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        "may contain only letters, digits, '_' and '-'"
    } else if s.len() > TABLE_MAX {
        "is longer than 64 characters"
    } else {
        return Ok(());
    };
    Err(format!("firewall.table: {s:?} {why}"))
}

fn check_log_prefix(s: &str) -> Result<(), String> {
    let why = if s.len() > LOG_PREFIX_MAX {
        "is longer than 127 bytes (the kernel's limit)"
    } else if s.chars().any(char::is_control) {
        "must not contain control characters"
    } else if s.contains('"') {
        // nft quotes the prefix with '"' and has no escape for it.
        "must not contain '\"'"
    } else {
        return Ok(());
    };
    Err(format!("firewall.log_prefix: {s:?} {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/x/egressd.toml";

    fn parse(text: &str) -> Result<Config, Diagnostics> {
        Config::parse(Path::new(PATH), text)
    }

    fn ok(text: &str) -> Config {
        match parse(text) {
            Ok(config) => config,
            Err(e) => panic!("unexpected errors:\n{e}"),
        }
    }

    /// Every diagnostic as (line, col, message).
    fn errors(text: &str) -> Vec<(usize, usize, String)> {
        match parse(text) {
            Ok(config) => panic!("expected errors, got {config:?}"),
            Err(Diagnostics(ds)) => ds
                .into_iter()
                .map(|d| {
                    assert_eq!(d.path, PATH);
                    assert_eq!(d.severity, Severity::Error);
                    (d.line, d.col, d.message)
                })
                .collect(),
        }
    }

    /// The only diagnostic, checked to be at `line:col` and to mention `needle`.
    #[track_caller]
    fn one_error(text: &str, line: usize, col: usize, needle: &str) {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        let (l, c, msg) = &errs[0];
        assert_eq!((*l, *c), (line, col), "{msg}");
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::from([a, b, c, d])
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = ok("");
        assert_eq!(c, Config::default());
        assert_eq!(ok("# nothing set\n\n[network]\n[resolver]\n"), c);
        assert_eq!(
            c.allowlist,
            PathBuf::from("/etc/openclaw-egress/allowlist.conf")
        );
        assert_eq!(c.network.docker, "openclaw-egress");
        assert_eq!(c.network.interface, None);
        let r = &c.resolver;
        assert_eq!(r.servers, None);
        assert_eq!(r.min_ttl, Duration::from_secs(5));
        assert_eq!(r.max_ttl, Duration::from_secs(3600));
        assert_eq!(r.grace, Duration::from_secs(300));
        assert_eq!(r.serve_stale, Duration::from_secs(3600));
        assert_eq!(r.timeout, Duration::from_secs(2));
        assert_eq!((r.attempts, r.concurrency, r.max_addresses), (2, 64, 256));
        assert_eq!(c.dns.allow, None);
        let f = &c.firewall;
        assert_eq!(f.table, "openclaw_egress");
        assert_eq!(f.action, Action::Reject);
        assert!(f.allow_private.is_empty());
        assert_eq!((f.log_rate, f.log_burst), (5, 10));
        assert_eq!(f.log_prefix, "openclaw-egress deny: ");
        assert_eq!(c.control.socket, PathBuf::from(DEFAULT_SOCKET));
        #[cfg(target_os = "linux")]
        assert_eq!(DEFAULT_SOCKET, "/run/openclaw-egress/control.sock");
        assert_eq!(DEFAULT_CONFIG_PATH, "/etc/openclaw-egress/egressd.toml");
    }

    #[test]
    fn full_example_parses_to_its_values() {
        let text = r#"
allowlist = "/srv/allow.conf" # a comment
[network]
docker = "claws"
interface = "br-claws"
intra = "allow"
host_ports = ["tcp/8080", "udp/5000-5010"]
[resolver]
servers = ["192.0.2.53:5353", "2001:db8::53", "[2001:db8::54]:54", "192.0.2.54"]
min_ttl = "10s"
max_ttl = "1h 30m"
grace = "2m"
serve_stale = "0s"
timeout = "500ms"
attempts = 3
concurrency = 4096
max_addresses = 1
[dns]
allow = ["192.0.2.53", "2001:db8::53"]
[firewall]
table = "Egress-1_x"
action = "drop"
allow_private = ["10.0.0.0/8", "192.168.1.1", "fd00::/8", "fd00::1"]
log_rate = 0
log_burst = 0
log_prefix = ""
[control]
socket = "/run/x.sock"
[verify]
image = "busybox:1"
unlisted = "198.51.100.7"
"#;
        let expected = Config {
            allowlist: PathBuf::from("/srv/allow.conf"),
            network: NetworkConfig {
                docker: "claws".into(),
                interface: Some("br-claws".into()),
                intra: Intra::Allow,
                host_ports: vec![
                    HostPort {
                        proto: Proto::Tcp,
                        ports: PortRange::single(8080),
                    },
                    HostPort {
                        proto: Proto::Udp,
                        ports: PortRange {
                            start: 5000,
                            end: 5010,
                        },
                    },
                ],
            },
            resolver: ResolverConfig {
                servers: Some(vec![
                    sock("192.0.2.53:5353"),
                    sock("[2001:db8::53]:53"),
                    sock("[2001:db8::54]:54"),
                    sock("192.0.2.54:53"),
                ]),
                min_ttl: Duration::from_secs(10),
                max_ttl: Duration::from_secs(5400),
                grace: Duration::from_secs(120),
                serve_stale: Duration::ZERO,
                negative_ttl: Duration::from_secs(300),
                timeout: Duration::from_millis(500),
                attempts: 3,
                concurrency: 4096,
                max_addresses: 1,
            },
            dns: DnsConfig {
                allow: Some(vec![v4(192, 0, 2, 53), "2001:db8::53".parse().unwrap()]),
            },
            firewall: FirewallConfig {
                table: "Egress-1_x".into(),
                action: Action::Drop,
                allow_private: vec![
                    net("10.0.0.0/8"),
                    net("192.168.1.1/32"),
                    net("fd00::/8"),
                    net("fd00::1/128"),
                ],
                log_rate: 0,
                log_burst: 0,
                log_prefix: String::new(),
            },
            control: ControlConfig {
                socket: PathBuf::from("/run/x.sock"),
            },
            verify: VerifyConfig {
                image: "busybox:1".into(),
                unlisted: v4(198, 51, 100, 7),
            },
        };
        assert_eq!(ok(text), expected);
    }

    #[test]
    fn brief_example_parses() {
        let text = r#"allowlist = "/etc/openclaw-egress/allowlist.conf" # relative paths resolve against this file's folder
[network]
docker = "openclaw-egress"      # Docker network whose bridge is filtered
interface = "openclaw-egress"   # explicit interface name
[resolver]
servers = ["192.0.2.53:53"]
min_ttl = "5s"
max_ttl = "1h"
grace = "5m"
serve_stale = "1h"
[dns]
allow = ["192.0.2.53"]
[firewall]
table = "openclaw_egress"
action = "reject"
allow_private = []
[control]
socket = "/run/openclaw-egress/control.sock"
"#;
        let mut expected = Config::default();
        expected.network.interface = Some("openclaw-egress".into());
        expected.resolver.servers = Some(vec![sock("192.0.2.53:53")]);
        expected.dns.allow = Some(vec![v4(192, 0, 2, 53)]);
        assert_eq!(ok(text), expected);
    }

    #[test]
    fn relative_allowlist_resolves_against_the_config_folder() {
        let c = ok(r#"allowlist = "allow.conf""#);
        assert_eq!(c.allowlist, PathBuf::from("/etc/x/allow.conf"));
        let c = ok(r#"allowlist = "../y/allow.conf""#);
        assert_eq!(c.allowlist, PathBuf::from("/etc/x/../y/allow.conf"));
        let c = ok(r#"allowlist = "/abs/allow.conf""#);
        assert_eq!(c.allowlist, PathBuf::from("/abs/allow.conf"));
        let c = Config::parse(Path::new("egressd.toml"), r#"allowlist = "a.conf""#).unwrap();
        assert_eq!(c.allowlist, PathBuf::from("a.conf"));
    }

    #[test]
    fn empty_allowlist_is_an_error() {
        one_error("\nallowlist = \"\"\n", 2, 13, "allowlist must not be empty");
    }

    #[test]
    fn server_forms() {
        let servers = |s: &str| {
            ok(&format!("[resolver]\nservers = [\"{s}\"]\n"))
                .resolver
                .servers
                .unwrap()
        };
        assert_eq!(servers("192.0.2.1"), vec![sock("192.0.2.1:53")]);
        assert_eq!(servers("192.0.2.1:1"), vec![sock("192.0.2.1:1")]);
        assert_eq!(servers("192.0.2.1:65535"), vec![sock("192.0.2.1:65535")]);
        assert_eq!(servers("::1"), vec![sock("[::1]:53")]);
        assert_eq!(servers("[::1]"), vec![sock("[::1]:53")]);
        assert_eq!(servers("[::1]:853"), vec![sock("[::1]:853")]);
    }

    #[test]
    fn bad_servers_are_reported_at_the_element() {
        let cases = [
            ("\"192.0.2.1:0\"", "port \"0\""),
            ("\"192.0.2.1:65536\"", "1..=65535"),
            ("\"192.0.2.1:\"", "port \"\""),
            ("\"dns.google\"", "not an IP address"),
            ("\"dns.google:53\"", "not an IP address"),
            ("\"[::1\"", "closing"),
            ("\"[::1]53\"", ":PORT"),
            ("\"[192.0.2.1]:53\"", "not IPv6"),
            ("\"2001:db8::1:53x\"", "[IPv6]:PORT"),
            ("53", "expected a string, found integer"),
        ];
        for (value, needle) in cases {
            let text = format!("[resolver]\nservers = [\"192.0.2.1\", {value}]\n");
            one_error(&text, 2, 25, needle);
        }
        one_error(
            "[resolver]\nservers = []\n",
            2,
            11,
            "must not be an empty list",
        );
        one_error(
            "[resolver]\nservers = \"192.0.2.1\"\n",
            2,
            11,
            "expected a sequence",
        );
    }

    #[test]
    fn durations_parse_with_humantime() {
        let c = ok("[resolver]\nmin_ttl = \"0s\"\nmax_ttl = \"1h 30m\"\ngrace = \"1day\"\n");
        assert_eq!(c.resolver.min_ttl, Duration::ZERO);
        assert_eq!(c.resolver.max_ttl, Duration::from_secs(5400));
        assert_eq!(c.resolver.grace, Duration::from_secs(86400));
        for key in ["min_ttl", "max_ttl", "grace", "serve_stale", "timeout"] {
            let text = format!("[resolver]\n{key} = \"5 parsecs\"\n");
            one_error(
                &text,
                2,
                key.len() + 4,
                &format!("resolver.{key}: invalid duration"),
            );
            let text = format!("[resolver]\n{key} = 5\n");
            one_error(&text, 2, key.len() + 4, "expected a string, found integer");
        }
    }

    #[test]
    fn ttl_bounds() {
        one_error(
            "[resolver]\nmin_ttl = \"2h\"\nmax_ttl = \"1h\"\n",
            2,
            11,
            "resolver.min_ttl (2h) must not exceed resolver.max_ttl (1h)",
        );
        // Only max_ttl written: it clashes with the default min_ttl of 5s.
        one_error(
            "[resolver]\nmax_ttl = \"1s\"\n",
            2,
            11,
            "(5s) must not exceed",
        );
        one_error(
            "[resolver]\nmin_ttl = \"0s\"\nmax_ttl = \"0s\"\n",
            3,
            11,
            "max_ttl must be more than 0s",
        );
        // An unparsable max_ttl is reported once, not also as a clash.
        one_error(
            "[resolver]\nmin_ttl = \"2h\"\nmax_ttl = \"x\"\n",
            3,
            11,
            "invalid duration",
        );
        let c = ok("[resolver]\nmin_ttl = \"1h\"\nmax_ttl = \"1h\"\n");
        assert_eq!(c.resolver.min_ttl, c.resolver.max_ttl);
    }

    #[test]
    fn timeout_must_be_positive() {
        one_error(
            "[resolver]\ntimeout = \"0s\"\n",
            2,
            11,
            "resolver.timeout must be more than 0s",
        );
        assert_eq!(
            ok("[resolver]\ntimeout = \"1ms\"\n").resolver.timeout,
            Duration::from_millis(1)
        );
    }

    #[test]
    fn resolver_integer_bounds() {
        one_error(
            "[resolver]\nattempts = 0\n",
            2,
            12,
            "resolver.attempts must be at least 1, not 0",
        );
        one_error(
            "[resolver]\nconcurrency = 0\n",
            2,
            15,
            "resolver.concurrency must be in 1..=4096, not 0",
        );
        one_error("[resolver]\nconcurrency = 4097\n", 2, 15, "not 4097");
        one_error(
            "[resolver]\nmax_addresses = -3\n",
            2,
            17,
            "resolver.max_addresses must be at least 1, not -3",
        );
        one_error(
            "[resolver]\nattempts = \"2\"\n",
            2,
            12,
            "resolver.attempts: expected an integer, found string",
        );
        one_error(
            "[resolver]\nattempts = 2.0\n",
            2,
            12,
            "expected an integer, found float",
        );
        let r = ok("[resolver]\nattempts = 1\nconcurrency = 1\nmax_addresses = 100000\n").resolver;
        assert_eq!(
            (r.attempts, r.concurrency, r.max_addresses),
            (1, 1, 100_000)
        );
    }

    #[test]
    fn dns_allow_must_be_addresses() {
        one_error(
            "[dns]\nallow = [\"192.0.2.1\", \"192.0.2.0/24\"]\n",
            2,
            23,
            "dns.allow: \"192.0.2.0/24\" is not an IP address",
        );
        one_error(
            "[dns]\nallow = [\"192.0.2.1:53\"]\n",
            2,
            10,
            "is not an IP address",
        );
        // An empty list is a choice: the containers get no DNS at all.
        assert_eq!(ok("[dns]\nallow = []\n").dns.allow, Some(vec![]));
    }

    #[test]
    fn table_names() {
        let cases = [
            ("\"\"", "must not be empty"),
            ("\"1table\"", "must start with a letter"),
            ("\"_table\"", "must start with a letter"),
            ("\"my table\"", "only letters, digits"),
            ("\"t.x\"", "only letters, digits"),
            ("\"tä\"", "only letters, digits"),
        ];
        for (value, needle) in cases {
            one_error(&format!("[firewall]\ntable = {value}\n"), 2, 9, needle);
        }
        let long = format!("t{}", "x".repeat(64));
        one_error(
            &format!("[firewall]\ntable = \"{long}\"\n"),
            2,
            9,
            "longer than 64",
        );
        let max = format!("t{}", "_".repeat(63));
        assert_eq!(
            ok(&format!("[firewall]\ntable = \"{max}\"\n"))
                .firewall
                .table,
            max
        );
    }

    #[test]
    fn intra_and_host_ports() {
        let c = ok("");
        assert_eq!(c.network.intra, Intra::Deny);
        assert!(c.network.host_ports.is_empty());
        one_error(
            "[network]\nintra = \"maybe\"\n",
            2,
            9,
            "network.intra: unknown value \"maybe\", expected \"deny\" or \"allow\"",
        );
        for (value, col, needle) in [
            ("\"8080\"", 15, "must be PROTO/PORT"),
            ("\"sctp/1\"", 15, "unknown protocol"),
            ("\"tcp/0\"", 15, "not a number in 1..=65535"),
            ("\"tcp/65536\"", 15, "not a number in 1..=65535"),
            ("\"tcp/+80\"", 15, "not a number in 1..=65535"),
            ("\"tcp/90-80\"", 15, "first port is above its last"),
            ("\"tcp/\"", 15, "not a number"),
            ("8080", 15, "expected a string, found integer"),
        ] {
            one_error(
                &format!("[network]\nhost_ports = [{value}]\n"),
                2,
                col,
                needle,
            );
        }
        let c = ok("[network]\nhost_ports = [\"udp/53\", \"tcp/1-65535\"]\n");
        let shown: Vec<String> = c.network.host_ports.iter().map(|h| h.to_string()).collect();
        assert_eq!(shown, ["udp/53", "tcp/1-65535"]);
    }

    #[test]
    fn interface_names() {
        let cases = [
            ("\"\"", "must not be empty"),
            ("\"abcdefghijklmnop\"", "longer than 15 bytes"),
            ("\"ééééééééé\"", "longer than 15 bytes"),
            ("\".\"", "\"..\""),
            ("\"..\"", "\"..\""),
            ("\"br/x\"", "'/'"),
            ("\"eth0:1\"", "':'"),
            ("\"br x\"", "whitespace"),
            ("\"br\\tx\"", "whitespace"),
        ];
        for (value, needle) in cases {
            one_error(&format!("[network]\ninterface = {value}\n"), 2, 13, needle);
        }
        let c = ok("[network]\ninterface = \"abcdefghijklmno\"\n");
        assert_eq!(c.network.interface.as_deref(), Some("abcdefghijklmno"));
    }

    #[test]
    fn docker_name_must_not_be_empty() {
        one_error(
            "[network]\n docker = \"\"\n",
            2,
            11,
            "network.docker must not be empty",
        );
        assert_eq!(ok("[network]\ndocker = \"n\"\n").network.docker, "n");
    }

    #[test]
    fn allow_private_cidrs() {
        one_error(
            "[firewall]\nallow_private = [\"10.1.2.3/8\"]\n",
            2,
            18,
            "\"10.1.2.3/8\" has host bits set; did you mean \"10.0.0.0/8\"?",
        );
        one_error(
            "[firewall]\nallow_private = [\"fd00::1/8\"]\n",
            2,
            18,
            "did you mean \"fd00::/8\"?",
        );
        one_error(
            "[firewall]\nallow_private = [\"10.0.0.0/33\"]\n",
            2,
            18,
            "not a CIDR",
        );
        one_error(
            "[firewall]\nallow_private = [\"lan\"]\n",
            2,
            18,
            "not a CIDR",
        );
        let f =
            ok("[firewall]\nallow_private = [\"172.16.0.0/12\", \"10.0.0.7\", \"::1\"]\n").firewall;
        assert_eq!(
            f.allow_private,
            vec![net("172.16.0.0/12"), net("10.0.0.7/32"), net("::1/128")]
        );
    }

    #[test]
    fn action_choices() {
        one_error(
            "[firewall]\naction = \"deny\"\n",
            2,
            10,
            "expected \"reject\" or \"drop\"",
        );
        one_error(
            "[firewall]\naction = \"Drop\"\n",
            2,
            10,
            "unknown action \"Drop\"",
        );
        assert_eq!(
            ok("[firewall]\naction = \"drop\"\n").firewall.action,
            Action::Drop
        );
        assert_eq!(
            ok("[firewall]\naction = \"reject\"\n").firewall.action,
            Action::Reject
        );
        assert_eq!(Action::Reject.to_string(), "reject");
        assert_eq!(Action::Drop.to_string(), "drop");
    }

    #[test]
    fn log_settings() {
        one_error(
            "[firewall]\nlog_rate = -1\n",
            2,
            12,
            "firewall.log_rate must be in 0..=4294967295, not -1",
        );
        one_error(
            "[firewall]\nlog_burst = 4294967296\n",
            2,
            13,
            "firewall.log_burst must be in 0..=4294967295",
        );
        let f = ok("[firewall]\nlog_rate = 4294967295\nlog_burst = 0\n").firewall;
        assert_eq!((f.log_rate, f.log_burst), (u32::MAX, 0));

        let long = "x".repeat(128);
        one_error(
            &format!("[firewall]\nlog_prefix = \"{long}\"\n"),
            2,
            14,
            "longer than 127 bytes",
        );
        // 64 two-byte characters are 128 bytes, though only 64 characters.
        let long = "é".repeat(64);
        one_error(
            &format!("[firewall]\nlog_prefix = \"{long}\"\n"),
            2,
            14,
            "longer than 127 bytes",
        );
        one_error(
            "[firewall]\nlog_prefix = \"a\\nb\"\n",
            2,
            14,
            "control characters",
        );
        one_error(
            "[firewall]\nlog_prefix = 'say \"no\"'\n",
            2,
            14,
            "must not contain '\"'",
        );
        let max = "x".repeat(127);
        assert_eq!(
            ok(&format!("[firewall]\nlog_prefix = \"{max}\"\n"))
                .firewall
                .log_prefix,
            max
        );
    }

    #[test]
    fn socket_must_be_absolute() {
        one_error(
            "[control]\nsocket = \"run/x.sock\"\n",
            2,
            10,
            "control.socket: \"run/x.sock\" must be an absolute path",
        );
        one_error(
            "[control]\nsocket = \"\"\n",
            2,
            10,
            "must be an absolute path",
        );
    }

    #[test]
    fn unknown_keys_in_every_section() {
        one_error(
            "allowlist = \"a\"\nbogus = 1\n",
            2,
            1,
            "unknown field `bogus`, expected one of `allowlist`",
        );
        one_error("[bogus]\n", 1, 2, "unknown field `bogus`");
        let sections = [
            ("network", "`docker`"),
            ("resolver", "`servers`"),
            ("dns", "`allow`"),
            ("firewall", "`table`"),
            ("control", "`socket`"),
        ];
        for (section, expected) in sections {
            let text = format!("[{section}]\n\n  typo = 1\n");
            one_error(&text, 3, 3, "unknown field `typo`");
            one_error(&text, 3, 3, expected);
        }
    }

    #[test]
    fn section_of_the_wrong_type() {
        one_error("network = 3\n", 1, 11, "expected a table");
    }

    #[test]
    fn syntax_error_is_one_diagnostic_at_its_place() {
        one_error("[resolver]\nmin_ttl = 5s\n", 2, 11, "");
        one_error(
            "[network]\ndocker = \"a\"\ndocker = \"b\"\n",
            3,
            1,
            "duplicate",
        );
        let errs = errors("[firewall\n");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, 1);
    }

    #[test]
    fn several_errors_are_reported_together_in_file_order() {
        let text = r#"
[firewall]
action = "deny"
table = "9"
[resolver]
servers = ["192.0.2.1:0", "x"]
timeout = "0s"
[control]
socket = "x"
"#;
        let errs = errors(text);
        let places: Vec<(usize, usize)> = errs.iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(
            places,
            vec![(3, 10), (4, 9), (6, 12), (6, 27), (7, 11), (9, 10)],
            "{errs:?}"
        );
        let shown = parse(text).unwrap_err().to_string();
        assert!(
            shown.starts_with("/etc/x/egressd.toml:3:10: firewall.action:"),
            "{shown}"
        );
        assert_eq!(shown.lines().count(), 6);
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // A syntax error (the ';') after a two-byte character.
        one_error("[network]\ndocker = \"é\"; interface = \"\"\n", 2, 13, "");
        // A validation error after two-byte characters on the same line.
        one_error(
            "# é\nfirewall = { log_prefix = \"éé\", action = \"x\" }\n",
            2,
            42,
            "unknown action \"x\"",
        );
        one_error(
            "[dns]\nallow = [\"ü\"]\n",
            2,
            10,
            "\"ü\" is not an IP address",
        );
        assert_eq!(line_col("aé\nb", 3), (1, 3));
        assert_eq!(line_col("aé\nb", 5), (2, 2));
        assert_eq!(line_col("aé", 2), (1, 2));
        assert_eq!(line_col("ab", 99), (1, 3));
    }

    #[test]
    fn effective_dns_allow_prefers_dns_allow() {
        let servers = [sock("192.0.2.9:53")];
        let mut c = Config::default();
        c.dns.allow = Some(vec![v4(192, 0, 2, 1), v4(192, 0, 2, 2), v4(192, 0, 2, 1)]);
        assert_eq!(
            c.effective_dns_allow(&servers),
            vec![v4(192, 0, 2, 1), v4(192, 0, 2, 2)]
        );
        c.dns.allow = Some(vec![]);
        assert!(c.effective_dns_allow(&servers).is_empty());
    }

    #[test]
    fn effective_dns_allow_falls_back_to_the_servers() {
        let c = Config::default();
        let servers = [
            sock("192.0.2.9:53"),
            sock("[2001:db8::1]:53"),
            sock("192.0.2.9:5353"),
            sock("192.0.2.1:53"),
        ];
        assert_eq!(
            c.effective_dns_allow(&servers),
            vec![
                v4(192, 0, 2, 9),
                "2001:db8::1".parse().unwrap(),
                v4(192, 0, 2, 1)
            ]
        );
        assert!(c.effective_dns_allow(&[]).is_empty());
    }

    #[test]
    fn pf_anchor_follows_the_table() {
        assert_eq!(Config::default().firewall.pf_anchor(), "openclaw-egress");
        let f = ok("[firewall]\ntable = \"my_own_table\"\n").firewall;
        assert_eq!(f.pf_anchor(), "my-own-table");
    }

    #[test]
    fn interface_name_truncates_the_docker_name() {
        let mut n = NetworkConfig::default();
        assert_eq!(n.interface_name(), "openclaw-egress");
        n.docker = "openclaw-egress-network".into();
        assert_eq!(n.interface_name(), "openclaw-egress");
        n.docker = "short".into();
        assert_eq!(n.interface_name(), "short");
        // 'é' is two bytes: the 15-byte cut would split the eighth one.
        n.docker = "é".repeat(10);
        assert_eq!(n.interface_name(), "é".repeat(7));
        n.interface = Some("br-1234".into());
        assert_eq!(n.interface_name(), "br-1234");
    }
}
