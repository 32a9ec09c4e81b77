//! The pf backend: plan, apply, flush and read an anchor through pfctl.
//!
//! Three ways to apply, chosen after reading the live anchor back:
//! - **full load** when the anchor is missing, its rules are not this
//!   layout's (labels carry a fingerprint), its tables are not the desired
//!   ones (a new or removed (protocol, port) group), or the main ruleset no
//!   longer evaluates it: check the host, make pf.conf reference the
//!   anchor, then one `pfctl -a ANCHOR -f -` with the rules and every
//!   table's addresses (one pf transaction), then remove tables of groups
//!   that are gone and empty tables that should be empty;
//! - **table replace** when only addresses changed: one
//!   `pfctl -a ANCHOR -t TABLE -T replace -f -` per changed table, rules
//!   untouched;
//! - **nothing** when nothing changed.
//!
//! In every case pf is then made sure to be enabled, holding a reference
//! of our own (`pfctl -E`, token kept in a state file) so that another
//! program releasing its reference cannot switch filtering off under us;
//! flush releases exactly that reference (`pfctl -X TOKEN`), never
//! `pfctl -d`, which would disable pf for everyone.
//!
//! pf tables have no per-address timeouts. Expired addresses leave the
//! tables when the daemon next applies (its scheduler drops addresses past
//! their deadline when it builds the desired state); see docs/macos.md.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use egress_core::config::pf_anchor_name;
use egress_core::diff::{diff, Diff, LiveAttrs, LiveElements};
use egress_core::ruleset::{AddrRange, ElementKey, Family, Layout, Ruleset, SetId};
use ipnet::IpNet;

use crate::error::PfError;
use crate::host::{HostCheck, HostProbe};
use crate::live::{self, LiveRule};
use crate::pfconf::{self, PfConfChange};
use crate::render::{self, Anchor, TableId, Tables, DENY_TAG, LABEL_PREFIX};
use crate::runner::{failure, run_checked, run_unchecked, CommandRunner};

/// Paths and programs of the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PfOptions {
    /// The pfctl program.
    pub pfctl: String,
    /// The ifconfig program (`ifconfig -l` lists interfaces).
    pub ifconfig: String,
    /// The pf.conf that must reference the anchor.
    pub pf_conf: PathBuf,
    /// Where the pf enable token is kept (`pf-token-ANCHOR`). On macOS
    /// `/var/run` is emptied at boot, as pf's tokens are.
    pub state_dir: PathBuf,
    /// Where to look for Docker Desktop / OrbStack.
    pub host: HostProbe,
}

impl Default for PfOptions {
    fn default() -> PfOptions {
        PfOptions {
            pfctl: "/sbin/pfctl".into(),
            ifconfig: "/sbin/ifconfig".into(),
            pf_conf: PathBuf::from("/etc/pf.conf"),
            state_dir: PathBuf::from("/var/run/openclaw-egress"),
            host: HostProbe::system(),
        }
    }
}

/// What pf holds for an anchor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PfLive {
    /// The main ruleset has `anchor "NAME"`, so the anchor is evaluated.
    pub referenced: bool,
    /// Why the anchor is not exactly this layout's (`None`: it is).
    pub drift: Option<String>,
    /// Every table of the anchor with its entries, by name.
    pub tables: BTreeMap<String, BTreeSet<IpNet>>,
    /// The tables' entries as elements (no timeouts), for diffs.
    pub elements: LiveElements,
    /// Packets counted by the deny rules.
    pub denied_packets: u64,
    /// Bytes counted by the deny rules.
    pub denied_bytes: u64,
}

impl PfLive {
    /// True when an address-only update is enough.
    pub fn layout_matches(&self) -> bool {
        self.drift.is_none()
    }
}

/// What [`Pf::apply`] would do.
#[derive(Debug, Clone)]
pub struct PfPlan {
    /// The live anchor, if any.
    pub live: Option<PfLive>,
    /// `Some(why)`: a full load.
    pub reason: Option<String>,
    /// Element changes (for a full load: every element, as added).
    pub diff: Diff,
    /// Tables whose contents change (for a full load: every table); their
    /// new contents are what [`render::desired`] makes of the ruleset.
    pub tables: Vec<TableId>,
    anchor: Anchor,
    desired: Tables,
}

/// How an apply changed pf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PfApplyMode {
    /// Rules and tables loaded together.
    Full,
    /// Only table contents replaced.
    Tables,
    /// Nothing sent.
    Unchanged,
}

/// What one apply did.
#[derive(Debug, Clone)]
pub struct PfApplyReport {
    /// Full, tables, or nothing.
    pub mode: PfApplyMode,
    /// Why a full load was needed.
    pub reason: Option<String>,
    /// The element changes.
    pub diff: Diff,
    /// Commands that changed something (loads, replaces, kills, flushes,
    /// pf.conf reloads, `pfctl -E`); reads are not counted.
    pub commands: usize,
    /// Names of the tables whose contents were replaced or loaded.
    pub tables: Vec<String>,
    /// Bytes piped to pfctl.
    pub bytes: usize,
    /// Time to read the live state.
    pub read_time: Duration,
    /// Time to change it.
    pub write_time: Duration,
    /// Packets counted by the deny rules before the change (0 after a full
    /// load, which resets them).
    pub denied_packets: u64,
    /// Bytes counted by the deny rules, likewise.
    pub denied_bytes: u64,
    /// What happened to pf.conf (full loads only).
    pub pf_conf: Option<PfConfChange>,
    /// True when this apply took a new pf enable reference.
    pub enabled_pf: bool,
    /// Things the operator should know that did not stop the apply.
    pub warnings: Vec<String>,
}

/// The pf backend. `R` runs the programs: [`crate::SystemRunner`] on a
/// Mac, [`crate::testing::FakePf`] in tests.
pub struct Pf<R: CommandRunner> {
    runner: R,
    opts: PfOptions,
    poll: Duration,
}

/// How often a caller should re-apply by default: pf tells nobody about
/// changes, so this bounds how long a hand-made change (an anchor flushed,
/// pf.conf reloaded without the anchor, `pfctl -d`) stays unrepaired.
pub const DEFAULT_POLL: Duration = Duration::from_secs(30);

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

impl<R: CommandRunner> Pf<R> {
    /// A backend running its commands through `runner`.
    pub fn new(runner: R, opts: PfOptions) -> Pf<R> {
        Pf {
            runner,
            opts,
            poll: DEFAULT_POLL,
        }
    }

    /// The same backend, asking callers to re-check every `every` instead
    /// of [`DEFAULT_POLL`].
    pub fn with_poll(mut self, every: Duration) -> Pf<R> {
        self.poll = every;
        self
    }

    /// How often a caller should re-apply to repair foreign changes.
    pub fn poll(&self) -> Duration {
        self.poll
    }

    /// The runner (tests inspect the fake's calls).
    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// The runner, mutably (tests change the fake's state).
    pub fn runner_mut(&mut self) -> &mut R {
        &mut self.runner
    }

    fn pfctl(&mut self, a: &[&str], stdin: Option<&[u8]>) -> Result<String, PfError> {
        Ok(run_checked(&mut self.runner, &self.opts.pfctl, &args(a), stdin)?.stdout)
    }

    /// Path of the enable-token file of an anchor.
    pub fn token_path(&self, anchor: &str) -> PathBuf {
        self.opts.state_dir.join(format!("pf-token-{anchor}"))
    }

    /// The anchor's rules as pfctl prints them, `None` when the anchor
    /// does not exist.
    fn live_rules(
        &mut self,
        anchor: &str,
        verbose: bool,
    ) -> Result<Option<Vec<LiveRule>>, PfError> {
        let a: Vec<String> = if verbose {
            args(&["-a", anchor, "-v", "-s", "rules"])
        } else {
            args(&["-a", anchor, "-s", "rules"])
        };
        let out = run_unchecked(&mut self.runner, &self.opts.pfctl, &a, None)?;
        if out.success() {
            Ok(Some(live::parse_rules(&out.stdout)))
        } else if live::anchor_missing(&out.stderr) {
            Ok(None)
        } else {
            Err(failure(&self.opts.pfctl, &a, &out))
        }
    }

    /// The anchor's table names; none when the anchor does not exist.
    fn live_table_names(&mut self, anchor: &str) -> Result<Vec<String>, PfError> {
        let a = args(&["-a", anchor, "-s", "Tables"]);
        let out = run_unchecked(&mut self.runner, &self.opts.pfctl, &a, None)?;
        if out.success() {
            Ok(live::parse_table_names(&out.stdout))
        } else if live::anchor_missing(&out.stderr) {
            Ok(Vec::new())
        } else {
            Err(failure(&self.opts.pfctl, &a, &out))
        }
    }

    /// Reads the live anchor of `layout` (named after its table). `None`
    /// when the anchor does not exist or holds no rules and no tables.
    /// Whether it matches is judged against this layout with the live
    /// anchor's own (protocol, port) groups: a group change is a matter of
    /// the desired elements, seen by [`Pf::plan`].
    pub fn read(&mut self, layout: &Layout) -> Result<Option<PfLive>, PfError> {
        let anchor = pf_anchor_name(&layout.table);
        render::check_anchor(&anchor)?;
        let main = self.pfctl(&["-s", "rules"], None)?;
        let referenced = live::main_references(&main, &anchor);
        let Some(rules) = self.live_rules(&anchor, true)? else {
            return Ok(None);
        };
        let names = self.live_table_names(&anchor)?;
        if rules.is_empty() && names.is_empty() {
            return Ok(None);
        }
        let mut live = PfLive {
            referenced,
            ..PfLive::default()
        };
        let mut drift = Vec::new();
        if !referenced {
            drift.push(format!(
                "the main ruleset does not evaluate anchor \"{anchor}\" (pf.conf without it was loaded)"
            ));
        }
        // Only which tables exist shapes the expected rules; their entries
        // go to `live` alone.
        let mut ids = BTreeSet::new();
        for name in &names {
            let cmd = ["-a", anchor.as_str(), "-t", name.as_str(), "-T", "show"];
            let out = self.pfctl(&cmd, None)?;
            let entries = live::parse_table(&out).map_err(|what| PfError::Parse {
                command: crate::runner::command_line(&self.opts.pfctl, &args(&cmd)),
                what,
            })?;
            match TableId::from_name(name) {
                Some(id) => {
                    add_live_elements(&mut live.elements, id, &entries);
                    ids.insert(id);
                }
                None => drift.push(format!("unexpected table <{name}>")),
            }
            live.tables.insert(name.clone(), entries);
        }
        for t in [TableId::Dns, TableId::AnyPorts] {
            if !ids.contains(&t) {
                drift.push(format!("table <{}> is missing", t.name()));
            }
        }
        let expected = Anchor::new(&anchor, layout, &render::groups(&ids))?;
        let want = expected.labels();
        let have: Vec<String> = rules
            .iter()
            .map(|r| r.label.clone().unwrap_or_default())
            .collect();
        if have != want {
            drift.push(format!(
                "the anchor's {} rules are not this layout's {} (labels {LABEL_PREFIX}:{}:...)",
                have.len(),
                want.len(),
                expected.fingerprint
            ));
        }
        (live.denied_packets, live.denied_bytes) = deny_counters(&rules);
        live.drift = (!drift.is_empty()).then(|| drift.join("; "));
        Ok(Some(live))
    }

    /// What [`Pf::apply`] would do, without doing it.
    pub fn plan(&mut self, ruleset: &Ruleset) -> Result<PfPlan, PfError> {
        let (anchor, desired) = render::desired(ruleset)?;
        let live = self.read(&ruleset.layout)?;
        let reason = match &live {
            None => Some(format!(
                "anchor \"{}\" does not exist or is empty",
                anchor.name
            )),
            Some(l) if !l.layout_matches() => l.drift.clone(),
            Some(l) => group_change(&desired, l),
        };
        let wanted = render::pf_elements(&ruleset.elements);
        let (d, tables) = match (&reason, &live) {
            (None, Some(l)) => {
                let changed = desired
                    .iter()
                    .filter(|(id, addrs)| l.tables.get(&id.name()) != Some(*addrs))
                    .map(|(id, _)| *id)
                    .collect();
                (diff(&wanted, &l.elements), changed)
            }
            _ => (
                diff(&wanted, &LiveElements::new()),
                desired.keys().copied().collect(),
            ),
        };
        Ok(PfPlan {
            live,
            reason,
            diff: d,
            tables,
            anchor,
            desired,
        })
    }

    /// Makes pf enforce `ruleset`: a full load when needed, otherwise only
    /// the changed tables; then pf is made sure to be enabled.
    pub fn apply(&mut self, ruleset: &Ruleset) -> Result<PfApplyReport, PfError> {
        let t0 = Instant::now();
        let plan = self.plan(ruleset)?;
        let read_time = t0.elapsed();
        self.apply_plan(ruleset, plan, read_time)
    }

    /// Loads rules and tables whatever is live.
    pub fn apply_full(&mut self, ruleset: &Ruleset) -> Result<PfApplyReport, PfError> {
        let t0 = Instant::now();
        let mut plan = self.plan(ruleset)?;
        if plan.reason.is_none() {
            plan.reason = Some("forced".into());
            plan.diff = diff(
                &render::pf_elements(&ruleset.elements),
                &LiveElements::new(),
            );
        }
        let read_time = t0.elapsed();
        self.apply_plan(ruleset, plan, read_time)
    }

    fn apply_plan(
        &mut self,
        ruleset: &Ruleset,
        mut plan: PfPlan,
        read_time: Duration,
    ) -> Result<PfApplyReport, PfError> {
        let t1 = Instant::now();
        let (denied_packets, denied_bytes) = plan
            .live
            .as_ref()
            .map_or((0, 0), |l| (l.denied_packets, l.denied_bytes));
        let mut report = PfApplyReport {
            mode: PfApplyMode::Unchanged,
            reason: plan.reason.take(),
            diff: std::mem::take(&mut plan.diff),
            commands: 0,
            tables: Vec::new(),
            bytes: 0,
            read_time,
            write_time: Duration::ZERO,
            denied_packets,
            denied_bytes,
            pf_conf: None,
            enabled_pf: false,
            warnings: Vec::new(),
        };
        let name = plan.anchor.name.clone();
        if report.reason.is_some() {
            report.mode = PfApplyMode::Full;
            self.load_full(&ruleset.layout, &plan, &mut report)?;
        } else if !plan.tables.is_empty() {
            report.mode = PfApplyMode::Tables;
            for id in &plan.tables {
                let table = id.name();
                let file = render::table_file(&plan.desired[id]);
                self.pfctl(
                    &["-a", &name, "-t", &table, "-T", "replace", "-f", "-"],
                    Some(file.as_bytes()),
                )?;
                report.commands += 1;
                report.bytes += file.len();
                report.tables.push(table);
            }
        }
        report.enabled_pf = self.ensure_enabled(&name)?;
        if report.enabled_pf {
            report.commands += 1;
        }
        report.write_time = t1.elapsed();
        Ok(report)
    }

    fn load_full(
        &mut self,
        layout: &Layout,
        plan: &PfPlan,
        report: &mut PfApplyReport,
    ) -> Result<(), PfError> {
        let name = &plan.anchor.name;
        let check = self.check_host(layout)?;
        if !check.missing.is_empty() {
            report.warnings.push(format!(
                "interface {} does not exist (yet); its rules take effect when it appears",
                check.missing.join(", ")
            ));
        }
        let referenced = plan.live.as_ref().is_some_and(|l| l.referenced);
        let change = self.ensure_referenced(name, referenced, report)?;
        report.pf_conf = Some(change);

        let file = plan.anchor.rules_file(&plan.desired);
        self.pfctl(&["-a", name, "-f", "-"], Some(file.as_bytes()))?;
        report.commands += 1;
        report.bytes += file.len();
        report.tables = plan.desired.keys().map(TableId::name).collect();

        // Tables of groups that are gone: unreferenced now, but they would
        // keep their addresses and show up as drift on the next read.
        // Tables that must be empty were declared without a list, which
        // keeps entries: empty them.
        if let Some(live) = &plan.live {
            for (table, entries) in &live.tables {
                match TableId::from_name(table).and_then(|id| plan.desired.get(&id)) {
                    None => {
                        self.pfctl(&["-a", name, "-t", table, "-T", "kill"], None)?;
                        report.commands += 1;
                    }
                    Some(want) if want.is_empty() && !entries.is_empty() => {
                        self.pfctl(&["-a", name, "-t", table, "-T", "flush"], None)?;
                        report.commands += 1;
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Adds the anchor to pf.conf if needed and reloads pf.conf when the
    /// file changed or the running main ruleset lacks the anchor. An edit
    /// is checked with `pfctl -n -f` first and undone if pfctl refuses it.
    fn ensure_referenced(
        &mut self,
        anchor: &str,
        referenced: bool,
        report: &mut PfApplyReport,
    ) -> Result<PfConfChange, PfError> {
        let conf = self.opts.pf_conf.clone();
        let conf_s = conf.to_string_lossy().into_owned();
        let change = pfconf::ensure_anchor(&conf, anchor)?;
        if let PfConfChange::Added { .. } = &change {
            if let Err(e) = self.pfctl(&["-n", "-f", &conf_s], None) {
                pfconf::restore(&change)?;
                return Err(PfError::PfConfRejected {
                    path: conf,
                    source: Box::new(e),
                });
            }
        }
        if !referenced || change != PfConfChange::Present {
            self.pfctl(&["-f", &conf_s], None)?;
            report.commands += 1;
        }
        Ok(change)
    }

    /// Makes sure pf is enabled with a reference of ours. Returns true when
    /// it took a new reference.
    fn ensure_enabled(&mut self, anchor: &str) -> Result<bool, PfError> {
        let info_args = ["-s", "info"];
        let info = self.pfctl(&info_args, None)?;
        let enabled = live::parse_enabled(&info).ok_or_else(|| PfError::Parse {
            command: crate::runner::command_line(&self.opts.pfctl, &args(&info_args)),
            what: "no \"Status: Enabled\" or \"Status: Disabled\" line".into(),
        })?;
        let path = self.token_path(anchor);
        let have = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        // A disabled pf means every token was invalidated (`pfctl -d`, or a
        // reboot that kept the state file): take a new one.
        if enabled && have.is_some() {
            return Ok(false);
        }
        let a = args(&["-E"]);
        let out = run_checked(&mut self.runner, &self.opts.pfctl, &a, None)?;
        let token = live::parse_token(&out.stdout, &out.stderr).ok_or_else(|| PfError::Parse {
            command: crate::runner::command_line(&self.opts.pfctl, &a),
            what: "no \"Token : N\" line".into(),
        })?;
        fs::create_dir_all(&self.opts.state_dir).map_err(|source| PfError::File {
            path: self.opts.state_dir.clone(),
            what: "create the state folder".into(),
            source,
        })?;
        fs::write(&path, format!("{token}\n")).map_err(|source| PfError::File {
            path: path.clone(),
            what: "write the pf enable token".into(),
            source,
        })?;
        Ok(true)
    }

    /// Removes the anchor's rules and tables and releases our pf enable
    /// reference. Returns whether the anchor held anything. pf.conf keeps
    /// its `anchor` line (an empty anchor passes everything).
    pub fn flush(&mut self, table: &str) -> Result<bool, PfError> {
        let anchor = pf_anchor_name(table);
        render::check_anchor(&anchor)?;
        let mut existed = false;
        if let Some(rules) = self.live_rules(&anchor, false)? {
            let tables = self.live_table_names(&anchor)?;
            existed = !rules.is_empty() || !tables.is_empty();
            if existed {
                self.pfctl(&["-a", &anchor, "-F", "rules"], None)?;
                self.pfctl(&["-a", &anchor, "-F", "Tables"], None)?;
            }
        }
        let path = self.token_path(&anchor);
        if let Ok(text) = fs::read_to_string(&path) {
            // The file goes whatever happens next: a token pfctl refuses is
            // dead (pf was disabled or rebooted), and keeping it would make
            // every later flush fail.
            fs::remove_file(&path).map_err(|source| PfError::File {
                path: path.clone(),
                what: "remove the pf enable token".into(),
                source,
            })?;
            let token = text.trim().to_owned();
            self.pfctl(&["-X", &token], None)?;
        }
        Ok(existed)
    }

    /// Packets and bytes counted by the deny rules; `(0, 0)` when the
    /// anchor does not exist.
    pub fn denied_counters(&mut self, layout: &Layout) -> Result<(u64, u64), PfError> {
        let anchor = pf_anchor_name(&layout.table);
        render::check_anchor(&anchor)?;
        Ok(self
            .live_rules(&anchor, true)?
            .map_or((0, 0), |r| deny_counters(&r)))
    }

    /// Checks that the layout's interfaces can be filtered here: refuses
    /// when one is missing and Docker Desktop or OrbStack is in use.
    pub fn check_host(&mut self, layout: &Layout) -> Result<HostCheck, PfError> {
        let out = run_checked(&mut self.runner, &self.opts.ifconfig, &args(&["-l"]), None)?;
        let present = live::parse_interfaces(&out.stdout);
        let missing: Vec<String> = layout
            .interfaces
            .iter()
            .filter(|i| !present.contains(i))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(HostCheck::default());
        }
        if let Some(ev) = self.opts.host.vm_runtime() {
            return Err(PfError::ContainersInVm {
                runtime: ev.runtime.name(),
                evidence: ev.evidence,
                interfaces: layout.interfaces.join(", "),
            });
        }
        Ok(HostCheck { missing })
    }
}

/// Why the (protocol, port) groups force a full load, if they do.
fn group_change(desired: &Tables, live: &PfLive) -> Option<String> {
    let want: BTreeSet<String> = desired.keys().map(TableId::name).collect();
    let have: BTreeSet<String> = live.tables.keys().cloned().collect();
    if want == have {
        return None;
    }
    let added: Vec<String> = want.difference(&have).map(|t| format!("+{t}")).collect();
    let removed: Vec<String> = have.difference(&want).map(|t| format!("-{t}")).collect();
    Some(format!(
        "the (protocol, port) tables change: {}",
        added
            .into_iter()
            .chain(removed)
            .collect::<Vec<_>>()
            .join(" ")
    ))
}

fn deny_counters(rules: &[LiveRule]) -> (u64, u64) {
    let suffix = format!(":{DENY_TAG}");
    rules
        .iter()
        .filter(|r| {
            r.label
                .as_deref()
                .is_some_and(|l| l.starts_with(LABEL_PREFIX) && l.ends_with(&suffix))
        })
        .fold((0, 0), |(p, b), r| (p + r.packets, b + r.bytes))
}

/// Turns a live table's entries into elements of the nft-shaped sets, so
/// the core diff can report adds and removes.
fn add_live_elements(out: &mut LiveElements, id: TableId, entries: &BTreeSet<IpNet>) {
    for net in entries {
        let family = Family::of(&net.addr());
        let range = AddrRange {
            start: net.network(),
            end: net.broadcast(),
        };
        let (set, key) = match id {
            TableId::Dns => (SetId::dns(family), ElementKey::Addr(net.network())),
            TableId::AnyPorts => (SetId::any(family), ElementKey::Range(range)),
            TableId::Service { proto, ports } => (
                SetId::svc(family),
                ElementKey::Service {
                    addr: range,
                    proto,
                    ports,
                },
            ),
        };
        out.insert(set, key, LiveAttrs::default());
    }
}
