//! The allowlist language: parsing, lossless editing and printing.
//!
//! The file format is a strict superset of the reference `allowlist.conf`
//! (`host:port` or a bare `host` per line, `#` comments, blank lines). Users
//! edit this file by hand and through `allow`/`remove`, so the parsed value keeps
//! every line exactly as written (including its line terminator and a leading
//! BOM): printing it back gives the input byte for byte, and edits touch only
//! the lines they add or drop.
//!
//! Errors are collected for the whole file and reported together with line
//! and column, compiler style, because a half-applied allowlist is worse than
//! none and fixing one error per run is tedious.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use ipnet::IpNet;

use crate::diag::{Diagnostic, Diagnostics, Severity};
use crate::entry::{Entry, HostName, PortRange, Proto, Service, Target};

/// Editors on some platforms write one; it is invisible, so it must neither
/// count as a character of line 1 nor be lost when the file is written back.
const BOM: char = '\u{FEFF}';
/// RFC 1035 limits (textual form, without the trailing dot).
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

const WILDCARD_MESSAGE: &str = "wildcards (`*.example.com`) need the DNS-aware mode, \
     which is not available yet; list each host name explicitly";

/// How a line ended in the input, so it can be written back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Terminator {
    /// The last line of a file without a final newline.
    None,
    Lf,
    CrLf,
}

impl Terminator {
    fn as_str(self) -> &'static str {
        match self {
            Terminator::None => "",
            Terminator::Lf => "\n",
            Terminator::CrLf => "\r\n",
        }
    }
}

/// One line of the file, kept verbatim next to what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    /// The line as written, without terminator (and without the BOM).
    text: String,
    term: Terminator,
    /// `None` for blank and comment-only lines.
    entry: Option<LineEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LineEntry {
    entry: Entry,
    /// 1-based column (in characters) where the entry starts.
    col: usize,
    /// Byte range of the trimmed trailing comment in `Line::text`.
    comment: Option<Range<usize>>,
}

/// A parsed allowlist file that remembers its exact text.
///
/// Equality compares the text, not just the entries, since two files with
/// the same entries but different comments are different files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    bom: bool,
    lines: Vec<Line>,
}

/// The result of a successful parse: the allowlist and what is worth fixing
/// in it without being wrong (duplicates).
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The parsed file.
    pub allowlist: Allowlist,
    /// Warnings (severity [`Severity::Warning`]), in file order.
    pub warnings: Vec<Diagnostic>,
}

/// One entry line of an allowlist, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryLine<'a> {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column (in characters) where the entry starts.
    pub col: usize,
    /// The whole line as written, without its terminator.
    pub text: &'a str,
    /// What the line allows.
    pub entry: &'a Entry,
    /// The trailing comment after `#`, trimmed; `None` when there is no
    /// comment or it is empty.
    pub comment: Option<&'a str>,
}

/// Why an edit of an [`Allowlist`] was refused; the allowlist is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The comment would break the line structure of the file.
    #[error("invalid comment: {0}")]
    BadComment(String),
    /// The entry has no spelling that parses back to it (e.g. a network with
    /// host bits set, or port 0), so writing it would corrupt the file.
    #[error("cannot write entry: {0}")]
    Unrepresentable(String),
}

/// A problem at a byte offset of one line; turned into a [`Diagnostic`]
/// once the line is known.
#[derive(Debug)]
struct Issue {
    at: usize,
    message: String,
}

impl Issue {
    fn new(at: usize, message: impl Into<String>) -> Issue {
        Issue {
            at,
            message: message.into(),
        }
    }
}

impl Allowlist {
    /// Parses an allowlist file. `path` is only used in diagnostics.
    ///
    /// Returns every error of the file at once; warnings come with a
    /// successful result only.
    pub fn parse(path: &str, text: &str) -> Result<Parsed, Diagnostics> {
        let (bom, body) = match text.strip_prefix(BOM) {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let mut lines = Vec::new();
        let mut errors = Vec::new();
        for (index, raw) in body.split_inclusive('\n').enumerate() {
            let (content, term) = if let Some(c) = raw.strip_suffix("\r\n") {
                (c, Terminator::CrLf)
            } else if let Some(c) = raw.strip_suffix('\n') {
                (c, Terminator::Lf)
            } else {
                (raw, Terminator::None)
            };
            let (entry, issues) = parse_line(content);
            errors.extend(issues.into_iter().map(|issue| Diagnostic {
                path: path.to_string(),
                line: index + 1,
                col: column(content, issue.at),
                severity: Severity::Error,
                message: issue.message,
            }));
            lines.push(Line {
                text: content.to_string(),
                term,
                entry,
            });
        }
        if !errors.is_empty() {
            return Err(Diagnostics(errors));
        }
        let allowlist = Allowlist { bom, lines };
        let warnings = allowlist.duplicate_warnings(path);
        Ok(Parsed {
            allowlist,
            warnings,
        })
    }

    /// Parses raw file contents. Invalid UTF-8 is reported with the line and
    /// column where it occurs, together with the other errors of the file.
    pub fn parse_bytes(path: &str, bytes: &[u8]) -> Result<Parsed, Diagnostics> {
        let mut text = String::with_capacity(bytes.len());
        // (offset in `text` of the replacement character, first bad byte)
        let mut bad = Vec::new();
        for chunk in bytes.utf8_chunks() {
            text.push_str(chunk.valid());
            if let Some(&byte) = chunk.invalid().first() {
                bad.push((text.len(), byte));
                text.push(char::REPLACEMENT_CHARACTER);
            }
        }
        if bad.is_empty() {
            return Allowlist::parse(path, &text);
        }
        let mut utf8_errors: Vec<Diagnostic> = Vec::new();
        // The offsets ascend, so lines are counted incrementally: a binary
        // file full of bad bytes stays linear.
        let (mut seen, mut line, mut line_start) = (0, 1, 0);
        for (offset, byte) in bad {
            let span = &text[seen..offset];
            line += span.matches('\n').count();
            if let Some(i) = span.rfind('\n') {
                line_start = seen + i + 1;
            }
            seen = offset;
            // One report per line is enough; later columns are unreliable.
            if utf8_errors.last().is_some_and(|d| d.line == line) {
                continue;
            }
            let mut col = column(&text[line_start..], offset - line_start);
            if line_start == 0 && text.starts_with(BOM) {
                col -= 1;
            }
            utf8_errors.push(Diagnostic {
                path: path.to_string(),
                line,
                col,
                severity: Severity::Error,
                message: format!(
                    "invalid UTF-8 (byte 0x{byte:02x}); the allowlist must be UTF-8 text"
                ),
            });
        }
        // The other lines are still worth checking, so the user sees every
        // error in one run; lines with bad bytes only get the UTF-8 error.
        let bad_lines: HashSet<usize> = utf8_errors.iter().map(|d| d.line).collect();
        let mut all: Vec<Diagnostic> = match Allowlist::parse(path, &text) {
            Err(Diagnostics(others)) => others
                .into_iter()
                .filter(|d| !bad_lines.contains(&d.line))
                .collect(),
            Ok(_) => Vec::new(),
        };
        all.extend(utf8_errors);
        all.sort_by_key(|d| (d.line, d.col));
        Err(Diagnostics(all))
    }

    /// Every entry line in file order, duplicates included.
    pub fn entries(&self) -> impl Iterator<Item = EntryLine<'_>> {
        self.lines.iter().enumerate().filter_map(|(index, line)| {
            let le = line.entry.as_ref()?;
            Some(EntryLine {
                line: index + 1,
                col: le.col,
                text: &line.text,
                entry: &le.entry,
                comment: le
                    .comment
                    .clone()
                    .map(|r| &line.text[r])
                    .filter(|c| !c.is_empty()),
            })
        })
    }

    /// The first line of each distinct entry, in file order; this is what
    /// the policy is built from.
    pub fn unique_entries(&self) -> Vec<EntryLine<'_>> {
        let mut seen = HashSet::new();
        self.entries().filter(|e| seen.insert(e.entry)).collect()
    }

    /// Whether some line allows exactly this entry.
    pub fn contains(&self, entry: &Entry) -> bool {
        self.entries().any(|e| e.entry == entry)
    }

    /// The file text: byte for byte the parsed input, with any edits.
    pub fn to_text(&self) -> String {
        self.to_string()
    }

    /// Appends `entry` (with an optional trailing comment) as a new last line.
    ///
    /// Returns `Ok(false)` and changes nothing if the entry is already
    /// present. Uses the file's dominant line ending; every existing byte is
    /// kept, except that a missing final newline is added so the new line is
    /// not glued to the previous one.
    pub fn add(&mut self, entry: &Entry, comment: Option<&str>) -> Result<bool, EditError> {
        if let Some(c) = comment {
            if c.contains(['\n', '\r']) {
                return Err(EditError::BadComment(
                    "a comment must be a single line".to_string(),
                ));
            }
            if let Some(ch) = c.chars().find(|&ch| ch.is_control() && ch != '\t') {
                return Err(EditError::BadComment(format!(
                    "control character U+{:04X} is not allowed",
                    u32::from(ch)
                )));
            }
        }
        let comment = comment.map(str::trim).filter(|c| !c.is_empty());
        let spelled = entry.to_string();
        // A value built by hand (not by the parser) may have no valid
        // spelling; refusing it keeps the file parseable.
        match parse_entry(&spelled) {
            Ok(back) if back == *entry => {}
            Ok(_) | Err(_) => {
                return Err(EditError::Unrepresentable(format!(
                    "`{spelled}` does not parse back to the same entry"
                )))
            }
        }
        if self.contains(entry) {
            return Ok(false);
        }
        let term = self.dominant_terminator();
        if let Some(last) = self.lines.last_mut() {
            if last.term == Terminator::None {
                last.term = term;
            }
        }
        let (text, comment_range) = match comment {
            Some(c) => {
                let text = format!("{spelled}  # {c}");
                let start = text.len() - c.len();
                let range = start..text.len();
                (text, Some(range))
            }
            None => (spelled, None),
        };
        self.lines.push(Line {
            text,
            term,
            entry: Some(LineEntry {
                entry: entry.clone(),
                col: 1,
                comment: comment_range,
            }),
        });
        Ok(true)
    }

    /// Drops every line holding `entry` (terminator included); returns how
    /// many lines were dropped. All other bytes stay as they are.
    pub fn remove(&mut self, entry: &Entry) -> usize {
        let before = self.lines.len();
        self.lines
            .retain(|line| line.entry.as_ref().is_none_or(|le| le.entry != *entry));
        before - self.lines.len()
    }

    /// CRLF if most terminated lines use it; LF otherwise (also for a file
    /// without terminated lines), as that is what the daemon's host uses.
    fn dominant_terminator(&self) -> Terminator {
        let crlf = self
            .lines
            .iter()
            .filter(|l| l.term == Terminator::CrLf)
            .count();
        let lf = self
            .lines
            .iter()
            .filter(|l| l.term == Terminator::Lf)
            .count();
        if crlf > lf {
            Terminator::CrLf
        } else {
            Terminator::Lf
        }
    }

    fn duplicate_warnings(&self, path: &str) -> Vec<Diagnostic> {
        let mut first_line: HashMap<&Entry, usize> = HashMap::new();
        let mut warnings = Vec::new();
        for e in self.entries() {
            match first_line.get(e.entry) {
                Some(&first) => warnings.push(Diagnostic {
                    path: path.to_string(),
                    line: e.line,
                    col: e.col,
                    severity: Severity::Warning,
                    message: format!("`{}` is a duplicate of line {first}", e.entry),
                }),
                None => {
                    first_line.insert(e.entry, e.line);
                }
            }
        }
        warnings
    }
}

impl fmt::Display for Allowlist {
    /// The file text, same as [`Allowlist::to_text`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bom {
            write!(f, "{BOM}")?;
        }
        for line in &self.lines {
            f.write_str(&line.text)?;
            f.write_str(line.term.as_str())?;
        }
        Ok(())
    }
}

/// Parses one entry (`host:443`, `10.0.0.0/8`, `[2001:db8::1]:53/udp`, ...).
///
/// Surrounding whitespace is ignored; comments are not allowed. The error
/// message has no location, for callers that have their own (a command-line
/// argument, a socket request).
pub fn parse_entry(s: &str) -> Result<Entry, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty entry".to_string());
    }
    if s.contains('#') {
        return Err("a comment is not allowed here".to_string());
    }
    match parse_line(s) {
        (Some(le), _) => Ok(le.entry),
        (None, issues) => Err(issues
            .into_iter()
            .min_by_key(|i| i.at)
            .map_or_else(|| "empty entry".to_string(), |i| i.message)),
    }
}

/// Parses and normalises a DNS host name (lower case, no trailing dot).
///
/// IP literals are refused: they are not names, and callers that accept
/// both go through [`parse_entry`].
pub fn parse_host(s: &str) -> Result<HostName, String> {
    if s.parse::<IpAddr>().is_ok() {
        return Err(format!("`{s}` is an IP address, not a host name"));
    }
    if s.contains('*') {
        return Err(WILDCARD_MESSAGE.to_string());
    }
    if let Some(c) = s.chars().find(|&c| c == ' ' || c == '\t') {
        return Err(format!("a name cannot contain whitespace ({c:?})"));
    }
    parse_name(s).map_err(|issue| issue.message)
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// 1-based character column of byte offset `at` in `line`.
fn column(line: &str, at: usize) -> usize {
    line.get(..at).map_or(at, |s| s.chars().count()) + 1
}

/// Parses one line (without terminator): `None` for a blank or comment-only
/// line or one with errors; the issues carry byte offsets into `text`.
fn parse_line(text: &str) -> (Option<LineEntry>, Vec<Issue>) {
    // Control characters are never intended and would make the rest of the
    // line's diagnostics confusing, so the line is not looked at further.
    if let Some((at, c)) = text
        .char_indices()
        .find(|&(_, c)| c.is_control() && c != '\t')
    {
        let message = if c == '\r' {
            "stray carriage return (U+000D) not followed by a newline".to_string()
        } else {
            format!("control character U+{:04X} is not allowed", u32::from(c))
        };
        return (None, vec![Issue::new(at, message)]);
    }
    let (body, comment) = match text.find('#') {
        Some(hash) => {
            let after = &text[hash + 1..];
            let start = hash + 1 + (after.len() - after.trim_start().len());
            let end = start + text[start..].trim_end().len();
            (&text[..hash], Some(start..end))
        }
        None => (text, None),
    };
    let start = body.len() - body.trim_start_matches(is_blank).len();
    let content = body[start..].trim_end_matches(is_blank);
    if content.is_empty() {
        return (None, Vec::new());
    }
    let mut issues = Vec::new();
    let token_len = content.find(is_blank).unwrap_or(content.len());
    let token = &content[..token_len];
    let rest = &content[token_len..];
    let extra = rest.trim_start_matches(is_blank);
    if !extra.is_empty() {
        let at = start + token_len + (rest.len() - extra.len());
        let has_service = token.contains(':') || token.contains('/');
        let message = if has_service {
            format!("unexpected `{extra}` after the entry; only a `#` comment may follow an entry")
        } else {
            format!(
                "unexpected `{extra}` after `{token}`: a name cannot contain spaces, \
                 and only a `#` comment may follow an entry"
            )
        };
        issues.push(Issue::new(at, message));
    }
    let entry = parse_token(token, start, &mut issues);
    match entry {
        Some(entry) if issues.is_empty() => (
            Some(LineEntry {
                entry,
                col: column(text, start),
                comment,
            }),
            issues,
        ),
        _ => (None, issues),
    }
}

/// Parses an entry without whitespace or comment; `off` is its byte offset
/// in the line, so issues point into the line.
fn parse_token(token: &str, off: usize, issues: &mut Vec<Issue>) -> Option<Entry> {
    if let Some(star) = token.find('*') {
        issues.push(Issue::new(off + star, WILDCARD_MESSAGE));
        return None;
    }
    if let Some(inner_and_rest) = token.strip_prefix('[') {
        return parse_bracketed(inner_and_rest, off + 1, issues);
    }
    if let Some(close) = token.find(']') {
        issues.push(Issue::new(
            off + close,
            "unbalanced `]`: an IPv6 address with a port is written `[2001:db8::1]:443`",
        ));
        return None;
    }
    // An IPv6 address has at least two colons, a `host:port` exactly one; so
    // an unbracketed IPv6 address never has a port.
    match token.matches(':').count() {
        1 => {
            let colon = token.find(':').unwrap_or(token.len());
            let target = parse_target(&token[..colon], off, true, issues);
            let service = parse_service(&token[colon + 1..], off + colon + 1, issues);
            Some(Entry {
                target: target?,
                service: service?,
            })
        }
        _ => parse_target(token, off, false, issues).map(|target| Entry {
            target,
            service: Service::AllPorts,
        }),
    }
}

/// Parses `2001:db8::1]...` (the part after `[`).
fn parse_bracketed(s: &str, off: usize, issues: &mut Vec<Issue>) -> Option<Entry> {
    let Some(close) = s.find(']') else {
        issues.push(Issue::new(
            off - 1,
            "unbalanced `[`: missing `]` after the IPv6 address",
        ));
        return None;
    };
    let inner = &s[..close];
    let after = &s[close + 1..];
    let after_off = off + close + 1;
    let target = parse_bracketed_net(inner, off, issues);
    let service = if after.is_empty() {
        Some(Service::AllPorts)
    } else if let Some(svc) = after.strip_prefix(':') {
        parse_service(svc, after_off + 1, issues)
    } else {
        let message = match after.strip_prefix('/') {
            Some(p) if parse_proto(p).is_some() => {
                format!("`/{p}` needs a port: write `[{inner}]:PORT/{p}`")
            }
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                format!("the prefix length goes inside the brackets: `[{inner}/{p}]`")
            }
            _ => format!("expected `:PORT` or nothing after `]`, found `{after}`"),
        };
        issues.push(Issue::new(after_off, message));
        None
    };
    Some(Entry {
        target: target?,
        service: service?,
    })
}

/// The inside of brackets: an IPv6 address or network, nothing else.
fn parse_bracketed_net(inner: &str, off: usize, issues: &mut Vec<Issue>) -> Option<Target> {
    let (base, prefix) = match inner.split_once('/') {
        Some((b, p)) => (b, Some(p)),
        None => (inner, None),
    };
    match base.parse::<Ipv6Addr>() {
        Ok(addr) => match prefix {
            None => Some(Target::addr(IpAddr::V6(addr))),
            Some(p) => parse_cidr(IpAddr::V6(addr), p, off, off + base.len() + 1, issues),
        },
        Err(_) => {
            let message = if inner.is_empty() {
                "empty brackets: expected an IPv6 address".to_string()
            } else if base.parse::<Ipv4Addr>().is_ok() {
                format!("brackets are only for IPv6 addresses; write `{inner}` without them")
            } else {
                format!("`{inner}` is not an IPv6 address; brackets are only for IPv6 addresses")
            };
            issues.push(Issue::new(off, message));
            None
        }
    }
}

/// Parses a target written without brackets: a name, an IP address or a
/// CIDR. `with_port` tells whether a `:PORT` follows, for better messages.
fn parse_target(s: &str, off: usize, with_port: bool, issues: &mut Vec<Issue>) -> Option<Target> {
    if s.is_empty() {
        issues.push(Issue::new(off, "missing host before `:`"));
        return None;
    }
    let Some(slash) = s.find('/') else {
        return parse_address_or_name(s, off, issues);
    };
    // A protocol is the last `/` part (`10.0.0.0/8/udp` is a CIDR and a
    // protocol); a prefix length is the first.
    let last_slash = s.rfind('/').unwrap_or(slash);
    if let Some(proto) = parse_proto(&s[last_slash + 1..]) {
        let (written, before) = (&s[last_slash..], &s[..last_slash]);
        let before_is_v6 = before
            .split('/')
            .next()
            .is_some_and(|b| b.parse::<Ipv6Addr>().is_ok());
        let message = if with_port {
            format!("the protocol goes after the port: `HOST:PORT/{proto}`")
        } else if before_is_v6 {
            format!(
                "`{written}` needs a port, and an IPv6 address with a port goes in \
                 brackets: `[{before}]:PORT/{proto}`"
            )
        } else {
            format!("`{written}` needs a port: write `{before}:PORT/{proto}`")
        };
        issues.push(Issue::new(off + last_slash, message));
        return None;
    }
    let (base, suffix) = (&s[..slash], &s[slash + 1..]);
    let base_ip = base.parse::<IpAddr>().ok();
    if let Some(ip) = base_ip {
        return parse_cidr(ip, suffix, off, off + slash + 1, issues);
    }
    // Report what is wrong with the name first: `300.1.1.1/8` is a bad
    // address more than a misplaced prefix.
    parse_address_or_name(base, off, issues)?;
    let message = if !suffix.is_empty() && suffix.chars().all(|c| c.is_ascii_alphabetic()) {
        format!(
            "unknown protocol `{suffix}` (expected `tcp` or `udp`), and a protocol needs a port"
        )
    } else {
        "a `/PREFIX` length is only allowed after an IP address".to_string()
    };
    issues.push(Issue::new(off + slash, message));
    None
}

fn parse_address_or_name(s: &str, off: usize, issues: &mut Vec<Issue>) -> Option<Target> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(Target::addr(ip));
    }
    if s.contains(':') {
        issues.push(Issue::new(
            off,
            format!("`{s}` is not a valid IPv6 address (a `HOST:PORT` entry has exactly one `:`)"),
        ));
        return None;
    }
    match parse_name(s) {
        Ok(name) => Some(Target::Host(name)),
        Err(issue) => {
            issues.push(Issue::new(off + issue.at, issue.message));
            None
        }
    }
}

/// `prefix` is the text after `/`; `addr_off` and `prefix_off` are where the
/// address and the prefix start in the line.
fn parse_cidr(
    addr: IpAddr,
    prefix: &str,
    addr_off: usize,
    prefix_off: usize,
    issues: &mut Vec<Issue>,
) -> Option<Target> {
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    if prefix.is_empty() {
        issues.push(Issue::new(prefix_off, "missing prefix length after `/`"));
        return None;
    }
    // `u8::from_str` accepts a leading `+`, which is not a prefix length.
    let net = prefix
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| prefix.parse::<u8>().ok())
        .flatten()
        .and_then(|len| IpNet::new(addr, len).ok());
    let Some(net) = net else {
        issues.push(Issue::new(
            prefix_off,
            format!("bad prefix length `{prefix}`: expected a number from 0 to {max}"),
        ));
        return None;
    };
    if net.network() != addr {
        issues.push(Issue::new(
            addr_off,
            format!(
                "`{addr}/{prefix}` has host bits set; did you mean `{}`?",
                net.trunc()
            ),
        ));
        return None;
    }
    Some(Target::Net(net))
}

/// Parses `PORT`, `PORT-PORT`, optionally followed by `/PROTO`.
fn parse_service(s: &str, off: usize, issues: &mut Vec<Issue>) -> Option<Service> {
    let (ports_text, proto_text) = match s.split_once('/') {
        Some((p, proto)) => (p, Some(proto)),
        None => (s, None),
    };
    let ports = parse_ports(ports_text, off, issues);
    let proto_off = off + ports_text.len() + 1;
    let proto = match proto_text {
        None => Some(Proto::Tcp),
        Some("") => {
            issues.push(Issue::new(
                proto_off,
                "missing protocol after `/` (expected `tcp` or `udp`)",
            ));
            None
        }
        Some(p) => {
            let proto = parse_proto(p);
            if proto.is_none() {
                issues.push(Issue::new(
                    proto_off,
                    format!("unknown protocol `{p}` (expected `tcp` or `udp`)"),
                ));
            }
            proto
        }
    };
    Some(Service::Ports {
        proto: proto?,
        ports: ports?,
    })
}

fn parse_proto(s: &str) -> Option<Proto> {
    if s.eq_ignore_ascii_case("tcp") {
        Some(Proto::Tcp)
    } else if s.eq_ignore_ascii_case("udp") {
        Some(Proto::Udp)
    } else {
        None
    }
}

fn parse_ports(s: &str, off: usize, issues: &mut Vec<Issue>) -> Option<PortRange> {
    if s.is_empty() {
        issues.push(Issue::new(off, "missing port after `:`"));
        return None;
    }
    let Some((first, last)) = s.split_once('-') else {
        return push_err(parse_port(s, off), issues).map(PortRange::single);
    };
    let start = if first.is_empty() {
        issues.push(Issue::new(
            off,
            format!("port range `{s}` is missing its first port"),
        ));
        None
    } else {
        push_err(parse_port(first, off), issues)
    };
    let last_off = off + first.len() + 1;
    let end = if last.is_empty() {
        issues.push(Issue::new(
            last_off,
            format!("port range `{s}` is missing its last port"),
        ));
        None
    } else {
        push_err(parse_port(last, last_off), issues)
    };
    let (start, end) = (start?, end?);
    if start > end {
        issues.push(Issue::new(
            off,
            format!("reversed port range `{s}`: write `{end}-{start}`"),
        ));
        return None;
    }
    Some(PortRange { start, end })
}

fn push_err<T>(result: Result<T, Issue>, issues: &mut Vec<Issue>) -> Option<T> {
    result.map_err(|issue| issues.push(issue)).ok()
}

fn parse_port(s: &str, off: usize) -> Result<u16, Issue> {
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        let hint = match s.to_ascii_lowercase().as_str() {
            "http" => "; write `80`",
            "https" => "; write `443`",
            "ssh" => "; write `22`",
            "dns" | "domain" => "; write `53`",
            _ => "",
        };
        return Err(Issue::new(
            off,
            format!("port `{s}` is not a number (service names are not supported){hint}"),
        ));
    }
    // Leading zeros are harmless; strip them so a long run of them is not
    // mistaken for an overflow. Only digits are left, so a failed parse can
    // only mean the number is too large.
    let digits = s.trim_start_matches('0');
    if digits.is_empty() {
        return Err(Issue::new(off, "port 0 is not allowed (ports are 1-65535)"));
    }
    digits
        .parse::<u16>()
        .map_err(|_| Issue::new(off, format!("port {s} is out of range (1-65535)")))
}

/// Validates and normalises a DNS name; the issue offset is relative to `s`.
fn parse_name(s: &str) -> Result<HostName, Issue> {
    if s.is_empty() {
        return Err(Issue::new(0, "missing host name"));
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    let mut label_start = 0;
    for label in name.split('.') {
        if label.is_empty() {
            return Err(Issue::new(
                label_start,
                format!("empty label in `{s}` (a leading dot or two dots in a row)"),
            ));
        }
        for (i, c) in label.char_indices() {
            if !c.is_ascii() {
                return Err(Issue::new(
                    label_start + i,
                    format!(
                        "non-ASCII character `{c}` in a name; write the name in its \
                         punycode form (`xn--...`)"
                    ),
                ));
            }
            if !(c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(Issue::new(
                    label_start + i,
                    format!(
                        "character `{c}` is not allowed in a name (only letters, digits, `-` and `_`)"
                    ),
                ));
            }
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(Issue::new(
                label_start,
                format!(
                    "label is {} characters long; the limit is {MAX_LABEL_LEN}",
                    label.len()
                ),
            ));
        }
        if label.starts_with('-') {
            return Err(Issue::new(
                label_start,
                format!("label `{label}` starts with a hyphen"),
            ));
        }
        if label.ends_with('-') {
            return Err(Issue::new(
                label_start + label.len() - 1,
                format!("label `{label}` ends with a hyphen"),
            ));
        }
        label_start += label.len() + 1;
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Issue::new(
            0,
            format!(
                "name is {} characters long; the limit is {MAX_NAME_LEN}",
                name.len()
            ),
        ));
    }
    // A name ending in a number would be taken for a mistyped address by
    // every reader, and no public top-level domain is numeric.
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Issue::new(
            0,
            format!(
                "`{s}` is not a valid IPv4 address (four numbers from 0 to 255, \
                 without leading zeros)"
            ),
        ));
    }
    Ok(HostName::new_unchecked(name.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> Target {
        Target::Host(HostName::new_unchecked(name.to_string()))
    }

    fn net(s: &str) -> Target {
        Target::Net(s.parse().expect("test network"))
    }

    fn tcp(port: u16) -> Service {
        Service::Ports {
            proto: Proto::Tcp,
            ports: PortRange::single(port),
        }
    }

    fn udp(port: u16) -> Service {
        Service::Ports {
            proto: Proto::Udp,
            ports: PortRange::single(port),
        }
    }

    fn range(proto: Proto, start: u16, end: u16) -> Service {
        Service::Ports {
            proto,
            ports: PortRange { start, end },
        }
    }

    const ALL: Service = Service::AllPorts;

    fn e(target: Target, service: Service) -> Entry {
        Entry { target, service }
    }

    fn ok(text: &str) -> Parsed {
        match Allowlist::parse("allowlist.conf", text) {
            Ok(p) => p,
            Err(d) => panic!("unexpected errors for {text:?}:\n{d}"),
        }
    }

    fn errors(text: &str) -> Vec<Diagnostic> {
        match Allowlist::parse("allowlist.conf", text) {
            Ok(_) => panic!("{text:?} should not parse"),
            Err(Diagnostics(d)) => d,
        }
    }

    fn valid_cases() -> Vec<(&'static str, Entry)> {
        vec![
            // The reference format.
            (
                "registry.npmjs.org:443",
                e(host("registry.npmjs.org"), tcp(443)),
            ),
            ("github.com:22", e(host("github.com"), tcp(22))),
            (
                "internal-api.example.com",
                e(host("internal-api.example.com"), ALL),
            ),
            // Names: case, trailing dot, punycode, digits, underscores.
            ("Example.COM:443", e(host("example.com"), tcp(443))),
            ("example.com.:443", e(host("example.com"), tcp(443))),
            ("example.com.", e(host("example.com"), ALL)),
            (
                "xn--bcher-kva.example",
                e(host("xn--bcher-kva.example"), ALL),
            ),
            (
                "XN--BCHER-KVA.example:80",
                e(host("xn--bcher-kva.example"), tcp(80)),
            ),
            ("123.example.com", e(host("123.example.com"), ALL)),
            ("a1-b2.c3:1", e(host("a1-b2.c3"), tcp(1))),
            ("_dmarc.example.com", e(host("_dmarc.example.com"), ALL)),
            (
                "_sip._udp.example.com:5060/udp",
                e(host("_sip._udp.example.com"), udp(5060)),
            ),
            ("localhost", e(host("localhost"), ALL)),
            ("db:5432", e(host("db"), tcp(5432))),
            ("a--b.example", e(host("a--b.example"), ALL)),
            ("1.2.3.example", e(host("1.2.3.example"), ALL)),
            ("example.123abc", e(host("example.123abc"), ALL)),
            // Ports, ranges, protocols.
            ("host:65535", e(host("host"), tcp(65535))),
            ("host:1", e(host("host"), tcp(1))),
            ("host:0443", e(host("host"), tcp(443))),
            (
                "host:8000-8100",
                e(host("host"), range(Proto::Tcp, 8000, 8100)),
            ),
            ("host:8000-8000", e(host("host"), tcp(8000))),
            ("host:1-65535", e(host("host"), range(Proto::Tcp, 1, 65535))),
            ("host:53/udp", e(host("host"), udp(53))),
            ("host:53/UDP", e(host("host"), udp(53))),
            ("host:53/Tcp", e(host("host"), tcp(53))),
            ("host:443/tcp", e(host("host"), tcp(443))),
            (
                "host:6000-6010/udp",
                e(host("host"), range(Proto::Udp, 6000, 6010)),
            ),
            // IPv4.
            ("1.2.3.4:443", e(net("1.2.3.4/32"), tcp(443))),
            ("1.2.3.4", e(net("1.2.3.4/32"), ALL)),
            ("0.0.0.0:80", e(net("0.0.0.0/32"), tcp(80))),
            ("255.255.255.255", e(net("255.255.255.255/32"), ALL)),
            ("1.2.3.4/32", e(net("1.2.3.4/32"), ALL)),
            ("10.0.0.0/8:5432", e(net("10.0.0.0/8"), tcp(5432))),
            ("192.0.2.0/24", e(net("192.0.2.0/24"), ALL)),
            ("0.0.0.0/0:443", e(net("0.0.0.0/0"), tcp(443))),
            ("10.0.0.0/8:53/udp", e(net("10.0.0.0/8"), udp(53))),
            // IPv6.
            ("[2001:db8::1]:443", e(net("2001:db8::1/128"), tcp(443))),
            ("2001:db8::1", e(net("2001:db8::1/128"), ALL)),
            ("[2001:db8::1]", e(net("2001:db8::1/128"), ALL)),
            ("[2001:DB8::1]:53/udp", e(net("2001:db8::1/128"), udp(53))),
            ("[2001:db8::/32]:443", e(net("2001:db8::/32"), tcp(443))),
            ("2001:db8::/32", e(net("2001:db8::/32"), ALL)),
            ("[2001:db8::/32]", e(net("2001:db8::/32"), ALL)),
            ("::1", e(net("::1/128"), ALL)),
            (
                "[::1]:8080-8090",
                e(net("::1/128"), range(Proto::Tcp, 8080, 8090)),
            ),
            ("::/0", e(net("::/0"), ALL)),
            ("::ffff:1.2.3.4", e(net("::ffff:1.2.3.4/128"), ALL)),
            // A bare IPv6 address never has a port: the last group is part of it.
            ("2001:db8::1:443", e(net("2001:db8::1:443/128"), ALL)),
        ]
    }

    #[test]
    fn valid_entries_parse() {
        for (input, expected) in valid_cases() {
            assert_eq!(
                parse_entry(input),
                Ok(expected.clone()),
                "parse_entry({input:?})"
            );
            let parsed = ok(&format!("{input}\n"));
            assert!(parsed.warnings.is_empty(), "{input:?}");
            let lines: Vec<_> = parsed.allowlist.entries().collect();
            assert_eq!(lines.len(), 1, "{input:?}");
            assert_eq!(lines[0].entry, &expected, "{input:?}");
        }
    }

    #[test]
    fn valid_entries_with_whitespace_and_comments() {
        for (input, expected) in valid_cases() {
            let line = format!(" \t{input}\t # note # more ");
            let parsed = ok(&line);
            let lines: Vec<_> = parsed.allowlist.entries().collect();
            assert_eq!(lines.len(), 1, "{line:?}");
            assert_eq!(lines[0].entry, &expected, "{line:?}");
            assert_eq!(lines[0].col, 3, "{line:?}");
            assert_eq!(lines[0].comment, Some("note # more"), "{line:?}");
            assert_eq!(lines[0].text, line, "{line:?}");
            // A comment glued to the entry works too.
            let glued = ok(&format!("{input}#x"));
            assert_eq!(
                glued.allowlist.entries().next().map(|l| l.entry),
                Some(&expected)
            );
        }
    }

    #[test]
    fn display_reparses_to_the_same_entry() {
        for (input, expected) in valid_cases() {
            let printed = expected.to_string();
            assert_eq!(
                parse_entry(&printed),
                Ok(expected.clone()),
                "{input:?} printed as {printed:?}"
            );
        }
    }

    #[test]
    fn long_names_at_the_limits() {
        let label63 = "a".repeat(63);
        let entry = parse_entry(&format!("{label63}.example:443")).expect("63-char label");
        assert_eq!(entry, e(host(&format!("{label63}.example")), tcp(443)));
        // 4 * 63 + 3 dots = 255 > 253; 3 * 63 + 61 + 3 = 253 exactly.
        let name253 = format!("{l}.{l}.{l}.{}", "b".repeat(61), l = label63);
        assert_eq!(name253.len(), 253);
        assert!(parse_entry(&name253).is_ok());
        assert!(
            parse_entry(&format!("{name253}.")).is_ok(),
            "trailing dot is not counted"
        );
        let name254 = format!("{l}.{l}.{l}.{}", "b".repeat(62), l = label63);
        let err = parse_entry(&name254).expect_err("254 chars");
        assert!(
            err.contains("254 characters") && err.contains("253"),
            "{err}"
        );
        let err = parse_entry(&format!("{}.example", "a".repeat(64))).expect_err("64-char label");
        assert!(err.contains("64 characters") && err.contains("63"), "{err}");
    }

    /// (line, expected column, substring of the message)
    fn invalid_cases() -> Vec<(&'static str, usize, &'static str)> {
        vec![
            // Ports.
            ("host:0", 6, "port 0"),
            ("host:65536", 6, "out of range"),
            ("host:99999999999999999999", 6, "out of range"),
            ("host:https", 6, "not a number"),
            ("host:https", 6, "443"),
            ("host:", 6, "missing port"),
            ("host:/udp", 6, "missing port"),
            ("host:-80", 6, "missing its first port"),
            ("host:80-", 9, "missing its last port"),
            (
                "host:9000-8000",
                6,
                "reversed port range `9000-8000`: write `8000-9000`",
            ),
            ("host:80-70000", 9, "out of range"),
            ("host:0-80", 6, "port 0"),
            ("host:1-2-3", 8, "not a number"),
            ("host:4 43", 8, "unexpected `43`"),
            ("host:+443", 6, "not a number"),
            // Protocols.
            ("host:53/icmp", 9, "unknown protocol `icmp`"),
            ("host:53/", 9, "missing protocol"),
            ("host:53/udp/tcp", 9, "unknown protocol"),
            ("host/udp", 5, "needs a port"),
            ("host/TCP", 5, "needs a port"),
            ("10.0.0.0/8/udp", 11, "write `10.0.0.0/8:PORT/udp`"),
            ("2001:db8::/32/UDP", 14, "`[2001:db8::/32]:PORT/udp`"),
            ("1.2.3.4/udp", 8, "needs a port"),
            ("2001:db8::1/udp", 12, "in brackets"),
            ("[2001:db8::1]/udp", 14, "needs a port"),
            ("host/icmp", 5, "unknown protocol `icmp`"),
            ("host/udp:53", 5, "after the port"),
            // Names.
            ("exa mple.com:443", 5, "cannot contain spaces"),
            ("a..b", 3, "empty label"),
            (".a", 1, "empty label"),
            ("a.b..", 5, "empty label"),
            (".", 1, "empty label"),
            ("-a.example", 1, "starts with a hyphen"),
            ("a-.example:443", 2, "ends with a hyphen"),
            ("www.-x.com", 5, "starts with a hyphen"),
            ("bücher.example", 2, "punycode"),
            ("bücher.example", 2, "xn--"),
            ("exa$mple.com", 4, "character `$` is not allowed"),
            ("exa\u{a0}mple.com", 4, "non-ASCII"),
            ("host:443 foo", 10, "unexpected `foo`"),
            ("host:443 foo bar", 10, "only a `#` comment"),
            ("\thost:443\tfoo # c", 11, "unexpected `foo`"),
            (":443", 1, "missing host"),
            ("host.com/24:443", 9, "only allowed after an IP address"),
            ("a:b:c", 1, "not a valid IPv6 address"),
            // Numeric-looking names.
            ("300.1.1.1", 1, "not a valid IPv4"),
            ("1.2.3", 1, "not a valid IPv4"),
            ("1.2.3.4.5:443", 1, "not a valid IPv4"),
            ("1.2.3.04", 1, "not a valid IPv4"),
            ("example.123", 1, "not a valid IPv4"),
            ("42", 1, "not a valid IPv4"),
            ("  300.1.1.1/8", 3, "not a valid IPv4"),
            // Prefixes.
            ("10.0.0.0/33", 10, "bad prefix length `33`"),
            ("10.0.0.0/abc", 10, "bad prefix length `abc`"),
            ("10.0.0.0/", 10, "missing prefix length"),
            ("10.0.0.0/-1", 10, "bad prefix length"),
            ("10.0.0.0/+8", 10, "bad prefix length `+8`"),
            ("10.0.0.0/256", 10, "0 to 32"),
            ("2001:db8::/129", 12, "0 to 128"),
            ("[2001:db8::/129]:443", 13, "bad prefix length"),
            ("10.0.0.1/8", 1, "did you mean `10.0.0.0/8`"),
            ("10.0.0.1/8:443", 1, "host bits"),
            ("2001:db8::1/32", 1, "did you mean `2001:db8::/32`"),
            ("[2001:db8::1/32]:443", 2, "2001:db8::/32"),
            ("[2001:db8::]/32", 13, "inside the brackets"),
            // Brackets.
            ("[2001:db8::1:443", 1, "missing `]`"),
            ("2001:db8::1]:443", 12, "unbalanced `]`"),
            ("[1.2.3.4]:443", 2, "only for IPv6"),
            ("[example.com]:443", 2, "only for IPv6"),
            ("[]:443", 2, "empty brackets"),
            ("[2001:db8::1]443", 14, "expected `:PORT`"),
            ("[2001:db8::1]:", 15, "missing port"),
            ("[2001:db8::1]:0", 15, "port 0"),
            ("[fe80::1%eth0]", 2, "not an IPv6 address"),
            // Wildcards.
            ("*.example.com", 1, "DNS-aware mode"),
            ("*.example.com:443", 1, "wildcards"),
            ("foo.*.com", 5, "not available yet"),
            ("*", 1, "wildcards"),
            // Control characters.
            ("host:443\u{7}", 9, "U+0007"),
            ("ho\u{0}st", 3, "U+0000"),
            ("host:443 # bell \u{7}", 17, "control character"),
            ("host\r:443", 5, "carriage return"),
            ("host:443\u{1b}[0m", 9, "U+001B"),
            ("\u{7f}", 1, "U+007F"),
        ]
    }

    #[test]
    fn invalid_entries_are_located() {
        for (input, col, needle) in invalid_cases() {
            let errs = errors(input);
            assert!(
                errs.iter().any(|d| d.line == 1
                    && d.col == col
                    && d.severity == Severity::Error
                    && d.path == "allowlist.conf"
                    && d.message.contains(needle)),
                "{input:?}: expected 1:{col} containing {needle:?}, got {errs:#?}"
            );
            // The same line in the middle of a file keeps its line number.
            let file = format!("# header\n\nok.example:443\n{input}\nok2.example\n");
            let errs = errors(&file);
            assert!(
                errs.iter().all(|d| d.line == 4) && errs.iter().any(|d| d.col == col),
                "{input:?} in a file: {errs:#?}"
            );
        }
    }

    #[test]
    fn invalid_entries_are_refused_by_parse_entry() {
        for (input, _, needle) in invalid_cases() {
            if input.contains('#') {
                continue;
            }
            let err = parse_entry(input).expect_err(input);
            assert!(!err.is_empty(), "{input:?}");
            // The first error of the line is the one reported; it is the
            // table's one whenever the line has only one.
            if errors(input).len() == 1 {
                assert!(err.contains(needle), "{input:?}: {err}");
            }
        }
    }

    #[test]
    fn every_error_of_a_file_is_reported() {
        let text = "\
# allowlist
good.example:443
host:0
\tbad..name:443

also-good.example
host:https # named port
[2001:db8::1:443
host:9000-8000/icmp
*.example.com
1.2.3
good.example:443
";
        let got: Vec<(usize, usize)> = errors(text).iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(
            got,
            vec![
                (3, 6),
                (4, 6),
                (7, 6),
                (8, 1),
                (9, 6),
                (9, 16),
                (10, 1),
                (11, 1)
            ]
        );
        assert!(errors(text).iter().all(|d| d.severity == Severity::Error));
    }

    #[test]
    fn two_errors_in_one_entry_are_both_reported() {
        let errs = errors("bad..name:0/icmp");
        let got: Vec<(usize, &str)> = errs
            .iter()
            .map(|d| (d.col, d.message.split(' ').next().unwrap_or("")))
            .collect();
        assert_eq!(got, vec![(5, "empty"), (11, "port"), (13, "unknown")]);
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let errs = errors("é.example:443 # ü\nbücher:0");
        let got: Vec<(usize, usize)> = errs.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(got, vec![(1, 1), (2, 2), (2, 8)]);
    }

    #[test]
    fn diagnostics_print_compiler_style() {
        let errs =
            Allowlist::parse("/etc/openclaw/allowlist.conf", "ok\nhost:0\n").expect_err("port 0");
        assert_eq!(
            errs.to_string(),
            "/etc/openclaw/allowlist.conf:2:6: port 0 is not allowed (ports are 1-65535)"
        );
    }

    #[test]
    fn round_trip_is_byte_exact() {
        let inputs = [
            "",
            "\n",
            "\r\n",
            "example.com:443",
            "example.com:443\n",
            "example.com:443\r\n",
            "a:1\r\nb:2\nc:3\r\n",
            "a:1\r\nb:2\nc:3",
            "\u{feff}example.com:443\n",
            "\u{feff}",
            "\u{feff}# only a comment",
            "\t  example.com:443\t\t# comment\t \n",
            "# comment\n\n   \n\t\n#\n##\n",
            "   ",
            "\t",
            "Example.COM.:443/TCP\nexample.com:443\n",
            "[2001:DB8::1]:443   #x\r\n\r\n\r\n",
            "a # é ü ∞ 🚀\n",
            "host:1\n\n\n",
            "\r\n\n\r\n",
        ];
        for input in inputs {
            let parsed = ok(input);
            assert_eq!(parsed.allowlist.to_text(), input, "{input:?}");
            assert_eq!(parsed.allowlist.to_string(), input, "{input:?}");
            let from_bytes = Allowlist::parse_bytes("f", input.as_bytes()).expect("valid UTF-8");
            assert_eq!(from_bytes.allowlist, parsed.allowlist, "{input:?}");
        }
    }

    #[test]
    fn crlf_and_bom_do_not_leak_into_entries() {
        let parsed = ok("\u{feff}a.example:443\r\n  b.example # c\r\nc.example");
        let lines: Vec<_> = parsed.allowlist.entries().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].text, "a.example:443");
        assert_eq!(lines[0].col, 1, "the BOM is not a column");
        assert_eq!(lines[0].comment, None);
        assert_eq!(lines[1].text, "  b.example # c");
        assert_eq!((lines[1].line, lines[1].col), (2, 3));
        assert_eq!(lines[1].comment, Some("c"));
        assert_eq!(lines[2].entry, &e(host("c.example"), ALL));
        let errs = errors("\u{feff}host:0\r\n");
        assert_eq!((errs[0].line, errs[0].col), (1, 6));
    }

    #[test]
    fn empty_comment_is_none() {
        let parsed = ok("a.example #   \nb.example#\n");
        assert!(parsed.allowlist.entries().all(|l| l.comment.is_none()));
    }

    #[test]
    fn duplicates_are_merged_with_a_warning() {
        let text =
            "Example.com:443\n# x\nexample.com.:443/tcp\nexample.com:443/udp\n  EXAMPLE.COM:443\n";
        let parsed = ok(text);
        let got: Vec<(usize, usize, Severity)> = parsed
            .warnings
            .iter()
            .map(|d| (d.line, d.col, d.severity))
            .collect();
        assert_eq!(
            got,
            vec![(3, 1, Severity::Warning), (5, 3, Severity::Warning)]
        );
        assert!(parsed
            .warnings
            .iter()
            .all(|d| d.message.contains("duplicate of line 1")));
        assert_eq!(parsed.allowlist.entries().count(), 4);
        let unique: Vec<(usize, &Entry)> = parsed
            .allowlist
            .unique_entries()
            .iter()
            .map(|l| (l.line, l.entry))
            .collect();
        assert_eq!(
            unique,
            vec![
                (1, &e(host("example.com"), tcp(443))),
                (4, &e(host("example.com"), udp(443)))
            ]
        );
        assert_eq!(parsed.allowlist.to_text(), text);
    }

    #[test]
    fn duplicate_addresses_in_different_spellings() {
        let parsed = ok("1.2.3.4\n1.2.3.4/32\n[2001:db8::1]\n2001:DB8:0::1\n");
        let got: Vec<(usize, String)> = parsed
            .warnings
            .iter()
            .map(|d| (d.line, d.message.clone()))
            .collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 2);
        assert!(got[0].1.contains("duplicate of line 1"), "{}", got[0].1);
        assert_eq!(got[1].0, 4);
        assert!(got[1].1.contains("duplicate of line 3"), "{}", got[1].1);
    }

    #[test]
    fn no_warnings_are_returned_with_errors() {
        let errs = errors("a:1\na:1\nhost:0\n");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].severity, Severity::Error);
    }

    #[test]
    fn contains_and_unique_entries() {
        let list = ok("a.example:443\nb.example\n").allowlist;
        assert!(list.contains(&e(host("a.example"), tcp(443))));
        assert!(list.contains(&e(host("b.example"), ALL)));
        assert!(!list.contains(&e(host("a.example"), udp(443))));
        assert!(!list.contains(&e(host("a.example"), ALL)));
        assert_eq!(list.unique_entries().len(), 2);
        assert!(!Allowlist::default().contains(&e(host("a.example"), ALL)));
        assert_eq!(Allowlist::default().to_text(), "");
        assert_eq!(Allowlist::default().entries().count(), 0);
    }

    fn add(text: &str, entry: &str, comment: Option<&str>) -> (Result<bool, EditError>, String) {
        let mut list = ok(text).allowlist;
        let entry = parse_entry(entry).expect("test entry");
        let result = list.add(&entry, comment);
        (result, list.to_text())
    }

    #[test]
    fn add_appends_and_keeps_every_byte() {
        let cases: &[(&str, &str, Option<&str>, &str)] = &[
            ("", "a.example:443", None, "a.example:443\n"),
            ("", "a.example:443", Some("why"), "a.example:443  # why\n"),
            ("x\n", "Example.COM.:443/TCP", None, "x\nexample.com:443\n"),
            ("x", "y", None, "x\ny\n"),
            ("x\r\n", "y", None, "x\r\ny\r\n"),
            ("x\r\ny", "z", None, "x\r\ny\r\nz\r\n"),
            ("x\r\ny\r\nz\n", "w", None, "x\r\ny\r\nz\nw\r\n"),
            ("x\r\ny\n", "w", None, "x\r\ny\nw\n"),
            ("x\ny\nz\r\n", "w", None, "x\ny\nz\r\nw\n"),
            (
                "\u{feff}# c\t \n\n",
                "[2001:db8::1]:53/udp",
                Some("  dns  "),
                "\u{feff}# c\t \n\n[2001:db8::1]:53/udp  # dns\n",
            ),
            (
                "  a # note\n",
                "10.0.0.0/8",
                Some(""),
                "  a # note\n10.0.0.0/8\n",
            ),
            ("a\n", "b:1-2", Some("x # y"), "a\nb:1-2  # x # y\n"),
        ];
        for &(text, entry, comment, expected) in cases {
            let (result, got) = add(text, entry, comment);
            assert_eq!(result, Ok(true), "{text:?} + {entry:?}");
            assert_eq!(got, expected, "{text:?} + {entry:?}");
            // The result is itself a valid file holding the entry.
            let reparsed = ok(&got);
            let wanted = parse_entry(entry).expect("test entry");
            let last = reparsed.allowlist.entries().last().expect("an entry");
            assert_eq!(last.entry, &wanted);
            assert_eq!(
                last.comment,
                comment.map(str::trim).filter(|c| !c.is_empty())
            );
        }
    }

    #[test]
    fn added_line_is_visible_through_entries() {
        let mut list = ok("a\n").allowlist;
        let entry = e(host("b.example"), udp(53));
        assert_eq!(list.add(&entry, Some("resolver")), Ok(true));
        let last = list.entries().last().expect("an entry");
        assert_eq!(
            (last.line, last.col, last.text),
            (2, 1, "b.example:53/udp  # resolver")
        );
        assert_eq!(last.comment, Some("resolver"));
        assert!(list.contains(&entry));
    }

    #[test]
    fn add_existing_entry_changes_nothing() {
        for (text, entry) in [
            ("example.com:443", "EXAMPLE.com.:443/tcp"),
            ("a\r\nexample.com:443 # c", "example.com:443"),
            ("1.2.3.4/32", "1.2.3.4"),
        ] {
            let (result, got) = add(text, entry, Some("new"));
            assert_eq!(result, Ok(false), "{text:?}");
            assert_eq!(got, text, "{text:?}");
        }
    }

    #[test]
    fn add_refuses_bad_comments_and_changes_nothing() {
        for (comment, needle) in [
            ("a\nb", "single line"),
            ("a\rb", "single line"),
            ("\n", "single line"),
            ("x\r\n", "single line"),
            ("bell\u{7}", "U+0007"),
            ("\u{1b}[31m", "U+001B"),
        ] {
            let mut list = ok("x").allowlist;
            let result = list.add(&e(host("y"), ALL), Some(comment));
            assert!(
                matches!(&result, Err(EditError::BadComment(m)) if m.contains(needle)),
                "{comment:?}: {result:?}"
            );
            assert_eq!(list.to_text(), "x", "{comment:?}");
        }
        // A tab inside a comment is fine.
        let (result, got) = add("", "y", Some("a\tb"));
        assert_eq!(result, Ok(true));
        assert_eq!(got, "y  # a\tb\n");
    }

    #[test]
    fn add_refuses_entries_without_a_valid_spelling() {
        let cases = [
            e(net("10.0.0.1/8"), ALL),
            e(host("a"), tcp(0)),
            e(host("a"), range(Proto::Tcp, 9, 1)),
            e(host("Upper.example"), ALL),
        ];
        for entry in cases {
            let mut list = ok("x\n").allowlist;
            let result = list.add(&entry, None);
            assert!(
                matches!(result, Err(EditError::Unrepresentable(_))),
                "{entry:?}: {result:?}"
            );
            assert_eq!(list.to_text(), "x\n");
        }
    }

    fn remove(text: &str, entry: &str) -> (usize, String) {
        let mut list = ok(text).allowlist;
        let n = list.remove(&parse_entry(entry).expect("test entry"));
        (n, list.to_text())
    }

    #[test]
    fn remove_drops_only_matching_lines() {
        let cases: &[(&str, &str, usize, &str)] = &[
            ("a:1\nb:2\nc:3\n", "b:2", 1, "a:1\nc:3\n"),
            ("a:1\r\nb:2\r\nc:3", "b:2", 1, "a:1\r\nc:3"),
            ("a:1\nb:2", "b:2", 1, "a:1\n"),
            ("b:2", "b:2", 1, ""),
            ("\u{feff}b:2\n# keep\n", "b:2", 1, "\u{feff}# keep\n"),
            (
                "# b:2\nB:2 # dup\n\n\tb.:2/tcp\t\nb:2/udp\n",
                "b:2",
                2,
                "# b:2\n\nb:2/udp\n",
            ),
            ("a:1\nb:2\n", "c:3", 0, "a:1\nb:2\n"),
            (
                "10.0.0.0/8\n10.0.0.0/8:443\n",
                "10.0.0.0/8",
                1,
                "10.0.0.0/8:443\n",
            ),
            (
                "[2001:db8::1]:443\n2001:db8::1\n",
                "[2001:DB8::1]:443/tcp",
                1,
                "2001:db8::1\n",
            ),
        ];
        for &(text, entry, count, expected) in cases {
            let (n, got) = remove(text, entry);
            assert_eq!(n, count, "{text:?} - {entry:?}");
            assert_eq!(got, expected, "{text:?} - {entry:?}");
        }
    }

    #[test]
    fn remove_then_add_round_trips() {
        let text = "a:1\r\nb:2 # keep me\r\nc:3\r\n";
        let mut list = ok(text).allowlist;
        let b = parse_entry("b:2").expect("entry");
        assert_eq!(list.remove(&b), 1);
        assert!(!list.contains(&b));
        assert_eq!(list.add(&b, Some("keep me")), Ok(true));
        assert_eq!(list.to_text(), "a:1\r\nc:3\r\nb:2  # keep me\r\n");
        let lines: Vec<usize> = list.entries().map(|l| l.line).collect();
        assert_eq!(lines, vec![1, 2, 3]);
    }

    #[test]
    fn invalid_utf8_is_located() {
        let errs = Allowlist::parse_bytes("f", b"ok.example\nab\xffcd\n").expect_err("bad UTF-8");
        assert_eq!(errs.0.len(), 1);
        assert_eq!((errs.0[0].line, errs.0[0].col), (2, 3));
        assert!(errs.0[0].message.contains("UTF-8"), "{}", errs.0[0].message);
        assert!(errs.0[0].message.contains("0xff"), "{}", errs.0[0].message);
    }

    #[test]
    fn invalid_utf8_is_reported_with_other_errors() {
        let bytes = b"\xef\xbb\xbfx\xc3\n\xe9\xe9\nhost:0\n# \xfe in a comment\nok\n";
        let errs = Allowlist::parse_bytes("f", bytes).expect_err("bad UTF-8");
        let got: Vec<(usize, usize, bool)> = errs
            .0
            .iter()
            .map(|d| (d.line, d.col, d.message.contains("UTF-8")))
            .collect();
        assert_eq!(
            got,
            vec![(1, 2, true), (2, 1, true), (3, 6, false), (4, 3, true)]
        );
    }

    #[test]
    fn parse_entry_trims_and_refuses_comments() {
        assert_eq!(
            parse_entry("  a.example:443\t"),
            Ok(e(host("a.example"), tcp(443)))
        );
        let err = parse_entry("a.example # c").expect_err("comment");
        assert!(err.contains("comment"), "{err}");
        assert!(parse_entry("").expect_err("empty").contains("empty"));
        assert!(parse_entry(" \t ").expect_err("blank").contains("empty"));
        let err = parse_entry("host:0").expect_err("port 0");
        assert!(!err.contains("1:"), "no location in {err:?}");
    }

    #[test]
    fn parse_host_accepts_only_names() {
        assert_eq!(
            parse_host("Example.COM.").map(|h| h.as_str().to_string()),
            Ok("example.com".to_string())
        );
        assert_eq!(
            parse_host("xn--bcher-kva.example").map(|h| h.to_string()),
            Ok("xn--bcher-kva.example".to_string())
        );
        for (input, needle) in [
            ("1.2.3.4", "IP address"),
            ("2001:db8::1", "IP address"),
            ("*.example.com", "wildcard"),
            ("a b", "whitespace"),
            ("a\tb", "whitespace"),
            ("bücher.example", "punycode"),
            ("a..b", "empty label"),
            ("", "missing"),
            ("example.com:443", "`:`"),
            ("300.1.1.1", "IPv4"),
        ] {
            let err = parse_host(input).expect_err(input);
            assert!(err.contains(needle), "{input:?}: {err}");
        }
    }
}
