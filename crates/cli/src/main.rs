//! `openclaw-egress`: check, plan, apply, show, flush, allow, remove and
//! status of the egress policy.
//!
//! Exit codes: 0 success; 1 error (invalid config or allowlist, kernel
//! refused, ...); 2 usage error; 3 applied or planned, but some hostnames
//! could not be resolved (they are closed: no addresses); `status` has its
//! own: 0 ok, 1 the daemon holds a config error, 4 the daemon is unreachable.

mod args;
mod edit;
mod load;
mod net;
mod probe;
mod status;
mod verify;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use args::{Cli, Command};
use clap::Parser;
use egress_core::diff::{ChangeKind, Diff};
use egress_core::render::nft_duration;
use egress_core::ruleset::SetId;
use egress_firewall::{ApplyMode, BackendKind};
use serde_json::json;

use load::{Desired, Invalid, Loaded};

/// Exit code when some hostnames did not resolve.
const EXIT_PARTIAL: u8 = 3;

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, which turns `openclaw-egress status | head` into
    // a panic; a command-line tool should just stop.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    #[cfg(debug_assertions)]
    if let Some(code) = egress_firewall::sim::fake_program() {
        return code;
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(inv) = e.downcast_ref::<Invalid>() {
                eprintln!("{inv}");
            } else {
                eprintln!("openclaw-egress: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Verify {
            json,
            from,
            timeout,
        } => {
            let from: verify::From = from.parse()?;
            let loaded = load::load(config)?;
            print_warnings(&loaded);
            verify::run(
                &loaded,
                from,
                json,
                std::time::Duration::from_secs(timeout.max(1)),
            )
        }
        Command::SetupNetwork { bridge, subnet } => {
            let (_, config) = load::load_config(config)?;
            net::setup_network(&config, bridge, subnet)
        }
        Command::Check => {
            let loaded = load::load(config)?;
            print_warnings(&loaded);
            let entries = loaded.inputs.entries.len();
            println!(
                "{}: ok ({} entries, {} hostnames; allowlist {})",
                loaded.config_path.display(),
                entries,
                loaded.inputs.hosts.len(),
                loaded.inputs.config.allowlist.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { json } => {
            let desired = load_desired(config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ruleset_json(&desired))?);
            } else {
                // Rendering is pure: no privileges, nothing read live.
                print!("{}", firewall()?.render(&desired.ruleset)?);
            }
            Ok(partial_code(&desired))
        }
        Command::Plan { json } => {
            let desired = load_desired(config)?;
            let mut fw = firewall()?;
            let object = fw.kind().object(&desired.ruleset.layout.table);
            let egress_firewall::Plan { reason, diff, .. } = fw
                .plan(&desired.ruleset)
                .with_context(|| format!("reading {object}"))?;
            if json {
                let v = json!({
                    "table": desired.ruleset.layout.table,
                    "firewall": fw.kind().name(),
                    "full_reload": reason.is_some(),
                    "reason": reason,
                    "changes": changes_json(&diff),
                    "unresolved": desired.resolution.failed.iter().map(|(h, why)| json!({"host": h.as_str(), "error": why})).collect::<Vec<_>>(),
                    "refused": refused_json(&desired),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                if let Some(r) = &reason {
                    println!("{object}: full load ({r})");
                }
                for (kind, c) in &diff.changes {
                    let sign = match kind {
                        ChangeKind::Added => '+',
                        ChangeKind::Removed => '-',
                        ChangeKind::Refreshed => '~',
                    };
                    let mut line = format!("{sign} {} {}", c.set.name(), c.key);
                    if *kind != ChangeKind::Removed {
                        if let Some(t) = c.attrs.timeout {
                            line.push_str(&format!(" timeout {}", nft_duration(t)));
                        }
                        if !c.attrs.comment.is_empty() {
                            line.push_str(&format!("  # {}", c.attrs.comment));
                        }
                    }
                    println!("{line}");
                }
                println!("{}", diff_summary(&diff));
            }
            Ok(partial_code(&desired))
        }
        Command::Apply => apply(config),
        Command::Flush => {
            let table = load::load_config(config)?.1.firewall.table;
            let mut fw = firewall()?;
            let object = fw.kind().object(&table);
            if fw
                .flush(&table)
                .with_context(|| format!("removing {object}"))?
            {
                println!("removed {object}");
            } else {
                println!("{object} was not present");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => status::run(config, json),
        Command::Allow {
            entry,
            comment,
            apply: then_apply,
        } => {
            edit::allow(config, &entry, comment.as_deref())?;
            if then_apply {
                apply(config)
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Remove {
            entry,
            apply: then_apply,
        } => {
            if !edit::remove(config, &entry)? {
                return Ok(ExitCode::FAILURE);
            }
            if then_apply {
                apply(config)
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// The firewall of this platform (debug builds: or the pf simulation, see
/// `egress_firewall::sim`).
fn firewall() -> Result<Box<dyn egress_firewall::Backend>> {
    let (fw, sim) = egress_firewall::open()?;
    if let Some(dir) = sim {
        eprintln!(
            "warning: SIMULATED pf in {} ({}): nothing on this machine is filtered",
            dir.display(),
            egress_firewall::sim::ENV
        );
    }
    Ok(fw)
}

/// `apply`: resolve once and make the kernel enforce the policy (also run
/// by `allow --apply` and `remove --apply`).
fn apply(config: Option<&Path>) -> Result<ExitCode> {
    let desired = load_desired(config)?;
    let mut fw = firewall()?;
    let object = fw.kind().object(&desired.ruleset.layout.table);
    let report = fw
        .apply(&desired.ruleset)
        .with_context(|| format!("applying {object}"))?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    let how = match report.mode {
        ApplyMode::Full => format!(
            "full load ({})",
            report.reason.as_deref().unwrap_or("requested")
        ),
        ApplyMode::Elements => "element diff".to_string(),
        ApplyMode::Unchanged => "no change".to_string(),
    };
    // The bench parses this line; nft counts netlink messages, pf counts
    // pfctl commands and table replacements.
    let (ops, element_ops) = match fw.kind() {
        BackendKind::Nftables => ("messages", "element messages"),
        BackendKind::Pf => ("pfctl commands", "table replacements"),
    };
    println!(
        "{object}: {how}; {}; {} {ops} ({} {element_ops}, {} bytes); resolve {:.1} ms, read {:.1} ms, write {:.1} ms",
        diff_summary(&report.diff),
        report.operations,
        report.element_operations,
        report.bytes,
        desired.resolve_time.as_secs_f64() * 1e3,
        report.read_time.as_secs_f64() * 1e3,
        report.write_time.as_secs_f64() * 1e3,
    );
    println!("filtering {}", desired.bridge.describe());
    Ok(partial_code(&desired))
}

/// Loads the config and the allowlist and resolves once, printing the
/// warnings of both steps (how `show`, `plan` and `apply` start).
fn load_desired(config: Option<&Path>) -> Result<Desired> {
    let loaded = load::load(config)?;
    print_warnings(&loaded);
    let desired = load::desired(&loaded)?;
    report_resolution(&desired);
    Ok(desired)
}

fn print_warnings(loaded: &Loaded) {
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
}

fn report_resolution(d: &Desired) {
    for (host, why) in &d.resolution.failed {
        eprintln!("warning: {host}: not fully resolved, closed until it resolves: {why}");
    }
    for r in &d.refused {
        eprintln!(
            "warning: {}: refused answer {}: {} (list it in [firewall] allow_private to allow)",
            r.host, r.addr, r.reason
        );
    }
}

fn partial_code(d: &Desired) -> ExitCode {
    if d.resolution.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    }
}

fn diff_summary(d: &Diff) -> String {
    format!(
        "{} added, {} removed, {} refreshed",
        d.count(ChangeKind::Added),
        d.count(ChangeKind::Removed),
        d.count(ChangeKind::Refreshed)
    )
}

fn changes_json(d: &Diff) -> Vec<serde_json::Value> {
    d.changes
        .iter()
        .map(|(kind, c)| {
            json!({
                "change": match kind { ChangeKind::Added => "add", ChangeKind::Removed => "remove", ChangeKind::Refreshed => "refresh" },
                "set": c.set.name(),
                "element": c.key.to_string(),
                "timeout_ms": c.attrs.timeout.map(|t| t.as_millis() as u64),
                "comment": c.attrs.comment,
            })
        })
        .collect()
}

fn refused_json(d: &Desired) -> Vec<serde_json::Value> {
    d.refused
        .iter()
        .map(
            |r| json!({"host": r.host.as_str(), "address": r.addr.to_string(), "reason": r.reason}),
        )
        .collect()
}

fn ruleset_json(d: &Desired) -> serde_json::Value {
    let rs = &d.ruleset;
    let mut sets = serde_json::Map::new();
    for set in SetId::ALL {
        let elems: Vec<serde_json::Value> = rs
            .elements
            .set(set)
            .map(|(k, a)| {
                json!({
                    "element": k.to_string(),
                    "timeout_ms": a.timeout.map(|t| t.as_millis() as u64),
                    "comment": a.comment,
                })
            })
            .collect();
        sets.insert(set.name().to_string(), serde_json::Value::Array(elems));
    }
    json!({
        "table": rs.layout.table,
        "family": "inet",
        "interfaces": rs.layout.interfaces,
        "interface_source": d.bridge.describe(),
        "action": rs.layout.action.name(),
        "dns_allow": d.dns_allow.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "sets": sets,
        "unresolved": d.resolution.failed.iter().map(|(h, why)| json!({"host": h.as_str(), "error": why})).collect::<Vec<_>>(),
        "refused": refused_json(d),
    })
}
