//! Figure 1: applying N entries (ours, the scripts' reload, the floor), and
//! the change after one rotated host in a 10,000-host policy.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use testkit::{Dnsmasq, Netns, TempDir};

use crate::scripts;
use crate::util::{ms, nth_addr, timed, Bins, ConfigSpec, FILL_BASE};

const TABLE: &str = "openclaw_egress";
const FLOOR_TABLE: &str = "bench_floor";
const PORT: u16 = 443;

/// What `openclaw-egress apply` printed about its batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplyLine {
    /// `full load (...)`, `element diff` or `no change`.
    pub mode: String,
    /// `A added, R removed, F refreshed`.
    pub diff: String,
    /// Netlink messages in the batch.
    pub messages: usize,
    /// Of those, element messages.
    pub element_messages: usize,
    /// Bytes sent.
    pub bytes: usize,
    /// Resolution time (ms).
    pub resolve_ms: f64,
    /// Reading the live table back, plus the diff (ms).
    pub read_ms: f64,
    /// Building, sending and acknowledging the batch (ms).
    pub write_ms: f64,
}

fn number_before(s: &str, unit: &str) -> Option<f64> {
    let end = s.find(unit)?;
    s[..end]
        .trim()
        .rsplit(' ')
        .next()?
        .trim_start_matches('(')
        .parse()
        .ok()
}

/// Parses the summary line of `openclaw-egress apply`:
/// `table inet T: MODE; DIFF; N messages (E element messages, B bytes); resolve R ms, read X ms, write W ms`.
pub fn parse_apply_line(out: &str) -> Option<ApplyLine> {
    let line = out.lines().find(|l| l.starts_with("table inet "))?;
    let (_, rest) = line.split_once(": ")?;
    // From the right: a full load's reason may itself hold "; ".
    let mut parts: Vec<&str> = rest.rsplitn(4, "; ").collect();
    if parts.len() != 4 {
        return None;
    }
    parts.reverse();
    let counts = parts[2];
    let times = parts[3];
    let field = |s: &str, key: &str| -> Option<f64> {
        s.split(", ")
            .find_map(|p| p.trim().strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("ms").trim().parse().ok())
    };
    Some(ApplyLine {
        mode: parts[0].to_string(),
        diff: parts[1].to_string(),
        messages: number_before(counts, " messages (")? as usize,
        element_messages: number_before(counts, " element messages")? as usize,
        bytes: number_before(counts, " bytes)")? as usize,
        resolve_ms: field(times, "resolve ")?,
        read_ms: field(times, "read ")?,
        write_ms: field(times, "write ")?,
    })
}

/// Samples of one policy size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResult {
    /// Entries in the policy.
    pub entries: usize,
    /// `openclaw-egress apply` into an empty kernel, whole command (ms).
    pub ours_ms: Vec<f64>,
    /// The scripts' first load: `nft -f` of one rule per entry (ms).
    pub scripts_ms: Vec<f64>,
    /// The scripts' reload, as on every change: `nft delete table` then
    /// `nft -f` (ms).
    pub scripts_reload_ms: Vec<f64>,
    /// The floor: `nft -f` of the same elements into one set (ms).
    pub floor_ms: Vec<f64>,
    /// Our batch, as the last run reported it.
    pub ours_batch: ApplyLine,
}

/// Runs figure 1 for each size.
pub fn run(bins: &Bins, sizes: &[usize], runs: usize) -> Result<Vec<ApplyResult>> {
    sizes.iter().map(|&n| run_size(bins, n, runs)).collect()
}

fn run_size(bins: &Bins, n: usize, runs: usize) -> Result<ApplyResult> {
    eprintln!("apply: {n} entries, {runs} runs");
    let ns = Netns::new("apply");
    let dir = TempDir::new("apply");
    let entries: Vec<(Ipv4Addr, u16)> = (0..n).map(|i| (nth_addr(FILL_BASE, i), PORT)).collect();
    let allow = dir.write("allowlist.conf", &scripts::allowlist(&entries));
    let conf = dir.write(
        "egressd.toml",
        &ConfigSpec {
            allowlist: &allow,
            interface: "oc-bench0",
            table: TABLE,
            server: IpAddr::V4(Ipv4Addr::LOCALHOST),
            socket: None,
            resolver_extra: "",
        }
        .text(),
    );
    let theirs = dir.write(
        "scripts.nft",
        &scripts::scripts_ruleset(TABLE, "oc-bench0", &entries),
    );
    let floor = dir.write("floor.nft", &scripts::floor_ruleset(FLOOR_TABLE, &entries));
    let (conf, theirs, floor) = (
        conf.to_str().context("temp path")?.to_owned(),
        theirs.to_str().context("temp path")?.to_owned(),
        floor.to_str().context("temp path")?.to_owned(),
    );
    let cli = bins.cli.to_str().context("binary path")?;
    let mut res = ApplyResult {
        entries: n,
        ours_ms: Vec::new(),
        scripts_ms: Vec::new(),
        scripts_reload_ms: Vec::new(),
        floor_ms: Vec::new(),
        ours_batch: ApplyLine::default(),
    };
    let flush = || timed(&ns, &["nft", "flush", "ruleset"]).map(|_| ());
    for r in 0..runs {
        // Rotate the order, so that a slow patch of the shared machine
        // does not always hit the same method.
        for k in 0..3 {
            flush()?;
            match (r + k) % 3 {
                0 => {
                    let (t, out) = timed(&ns, &[cli, "--config", &conf, "apply"])?;
                    let text = String::from_utf8_lossy(&out.stdout);
                    let line = parse_apply_line(&text)
                        .with_context(|| format!("cannot parse the apply summary: {text}"))?;
                    if !line.mode.starts_with("full load") {
                        bail!("expected a full load into an empty kernel, got: {text}");
                    }
                    res.ours_ms.push(ms(t));
                    res.ours_batch = line;
                }
                1 => {
                    let (t, _) = timed(&ns, &["nft", "-f", &theirs])?;
                    res.scripts_ms.push(ms(t));
                    let (t1, _) = timed(&ns, &["nft", "delete", "table", "inet", TABLE])?;
                    let (t2, _) = timed(&ns, &["nft", "-f", &theirs])?;
                    res.scripts_reload_ms.push(ms(t1 + t2));
                }
                _ => {
                    let (t, _) = timed(&ns, &["nft", "-f", &floor])?;
                    res.floor_ms.push(ms(t));
                }
            }
        }
    }
    flush()?;
    Ok(res)
}

/// The change after one rotated host in a policy of `entries` entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateResult {
    /// Entries in the policy (all literal addresses but the rotated host).
    pub entries: usize,
    /// Whole `openclaw-egress apply` after the rotation (ms).
    pub ours_total_ms: Vec<f64>,
    /// Of it: reading the live table back plus the diff (ms).
    pub ours_read_ms: Vec<f64>,
    /// Of it: building, sending and acknowledging the batch (ms).
    pub ours_write_ms: Vec<f64>,
    /// Of it: resolving the rotated host (ms).
    pub ours_resolve_ms: Vec<f64>,
    /// The batch of the last run.
    pub ours_batch: ApplyLine,
    /// The floor: `nft -f` deleting the old and adding the new element of a
    /// set holding `entries` elements (ms).
    pub floor_ms: Vec<f64>,
}

/// The rotated host.
const ROT_HOST: &str = "rot.test";

fn rot_addr(r: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 255, (r % 250 + 1) as u8)
}

/// Runs the rotation: a policy of `entries - 1` literal addresses and one
/// hostname; after a first load the hostname's record changes and `apply`
/// runs again. (Literal addresses rather than 10,000 hostnames: resolving
/// those again would take seconds on this machine, after which every
/// resolved element is due for a timeout refresh, and the measurement would
/// be of the refresh instead; see the footprint figure for that.)
pub fn rotate(bins: &Bins, entries: usize, runs: usize) -> Result<RotateResult> {
    eprintln!("rotate: one host in {entries} entries, {runs} runs");
    let ns = Netns::new("rot");
    let dir = TempDir::new("rot");
    let literal: Vec<(Ipv4Addr, u16)> = (0..entries - 1)
        .map(|i| (nth_addr(FILL_BASE, i), PORT))
        .collect();
    let mut allow = scripts::allowlist(&literal[..literal.len() / 2]);
    allow.push_str(&format!("{ROT_HOST}:{PORT}\n"));
    allow.push_str(&scripts::allowlist(&literal[literal.len() / 2..]));
    let allow = dir.write("allowlist.conf", &allow);
    let record = |r: usize| vec![(ROT_HOST, IpAddr::V4(rot_addr(r)))];
    let dns = Dnsmasq::start(&ns, &[IpAddr::V4(Ipv4Addr::LOCALHOST)], 3600, &record(0));
    let conf = dir.write(
        "egressd.toml",
        &ConfigSpec {
            allowlist: &allow,
            interface: "oc-bench0",
            table: TABLE,
            server: IpAddr::V4(Ipv4Addr::LOCALHOST),
            socket: None,
            resolver_extra: "",
        }
        .text(),
    );
    let conf = conf.to_str().context("temp path")?.to_owned();
    let cli = bins.cli.to_str().context("binary path")?;
    let mut res = RotateResult {
        entries,
        ours_total_ms: Vec::new(),
        ours_read_ms: Vec::new(),
        ours_write_ms: Vec::new(),
        ours_resolve_ms: Vec::new(),
        ours_batch: ApplyLine::default(),
        floor_ms: Vec::new(),
    };
    for r in 0..runs {
        // A fresh load each run: the resolved element carries a timeout, and
        // an apply more than its refresh slack (10 s at TTL 1 h) later would
        // renew it as well.
        timed(&ns, &["nft", "flush", "ruleset"])?;
        dns.set_records(&record(2 * r));
        timed(&ns, &[cli, "--config", &conf, "apply"])?;
        dns.set_records(&record(2 * r + 1));
        let (t, out) = timed(&ns, &[cli, "--config", &conf, "apply"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = parse_apply_line(&text)
            .with_context(|| format!("cannot parse the apply summary: {text}"))?;
        if line.mode != "element diff" || line.diff != "1 added, 1 removed, 0 refreshed" {
            bail!("expected an element diff of the rotated host only, got: {text}");
        }
        res.ours_total_ms.push(ms(t));
        res.ours_read_ms.push(line.read_ms);
        res.ours_write_ms.push(line.write_ms);
        res.ours_resolve_ms.push(line.resolve_ms);
        res.ours_batch = line;
    }
    timed(&ns, &["nft", "flush", "ruleset"])?;

    // The floor: the same set size, one element swapped by `nft -f`.
    let mut all = literal;
    all.push((rot_addr(0), PORT));
    let floor = dir.write("floor.nft", &scripts::floor_ruleset(FLOOR_TABLE, &all));
    timed(&ns, &["nft", "-f", floor.to_str().context("temp path")?])?;
    for r in 0..runs {
        let f = dir.write(
            "rotate.nft",
            &scripts::floor_rotation(FLOOR_TABLE, rot_addr(r), rot_addr(r + 1), PORT),
        );
        let (t, _) = timed(&ns, &["nft", "-f", f.to_str().context("temp path")?])?;
        res.floor_ms.push(ms(t));
    }
    timed(&ns, &["nft", "flush", "ruleset"])?;
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_apply_summary() {
        let out = "table inet openclaw_egress: element diff; 1 added, 1 removed, 0 refreshed; 2 messages (2 element messages, 296 bytes); resolve 412.3 ms, read 35.1 ms, write 0.7 ms\n";
        let l = parse_apply_line(out).unwrap();
        assert_eq!(l.mode, "element diff");
        assert_eq!(l.diff, "1 added, 1 removed, 0 refreshed");
        assert_eq!((l.messages, l.element_messages, l.bytes), (2, 2, 296));
        assert_eq!((l.resolve_ms, l.read_ms, l.write_ms), (412.3, 35.1, 0.7));
    }

    #[test]
    fn parses_a_full_load_with_a_reason() {
        let out = "table inet t: full load (the table does not exist); 100 added, 0 removed, 0 refreshed; 107 messages (79 element messages, 690560 bytes); resolve 0.0 ms, read 0.1 ms, write 40.2 ms";
        let l = parse_apply_line(out).unwrap();
        assert_eq!(l.mode, "full load (the table does not exist)");
        assert_eq!((l.messages, l.element_messages, l.bytes), (107, 79, 690560));
        assert_eq!(l.write_ms, 40.2);
    }

    #[test]
    fn rejects_other_text() {
        assert_eq!(parse_apply_line("nothing here"), None);
    }
}
