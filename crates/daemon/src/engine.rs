//! The engine: one task owns all state; everything else sends it messages.
//!
//! Inputs: DNS results from query tasks, file-system events (debounced
//! here), firewall change notifications (nf_tables monitor; pf has none and
//! is re-checked on a timer), signals, control-socket requests, and timers. The loop computes its next wake-up from the
//! scheduler (the earliest TTL expiry, kube-rs' "requeue after"), so an idle
//! daemon sleeps until a TTL runs out instead of polling.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use egress_core::allowlist::Allowlist;
use egress_core::config::Config;
use egress_core::diff::ChangeKind;
use egress_core::inputs::Inputs;
use egress_core::ruleset::{Layout, Ruleset};
use egress_core::schedule::{Family, HostStatus, QueryOutcome, ScheduleConfig, Scheduler};
use egress_core::status::{
    summary_line, AddressStatus, ApplyStatus, ConfigError, Counters, EntryStatus, Status,
    STATUS_FORMAT,
};
use egress_core::{HostName, Target};
use egress_firewall::{ApplyMode, Backend, ChangeWatch};
use egress_resolve::{Outcome, Resolver, ResolverSettings};
use futures::{FutureExt, StreamExt};
use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tokio::sync::mpsc;
use tokio::time::sleep_until;
use tracing::{debug, error, info, warn};

use crate::control::ControlCall;
use crate::docker::{self, BridgeMsg};
use crate::watch::FileWatcher;

/// How long file events are collected before one reload.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);
/// How long DNS results are collected into one batch while other queries
/// are still in flight.
const APPLY_DEBOUNCE: Duration = Duration::from_millis(50);
/// Delay before restoring the table after someone else changed it: long
/// enough to coalesce a burst of notifications, far below the one second
/// the table may stay wrong.
const DRIFT_DEBOUNCE: Duration = Duration::from_millis(20);
/// Retry delay after a failed apply.
const APPLY_RETRY: Duration = Duration::from_secs(1);

/// Options from the command line.
pub struct Opts {
    /// The config file.
    pub config_path: PathBuf,
    /// Remove the table on SIGTERM/SIGINT.
    pub flush_on_exit: bool,
}

/// Reads and validates both files; every error comes back as a
/// `PATH:LINE:COL: message` line (or `PATH: message` for I/O errors).
pub fn load(config_path: &Path) -> Result<(Inputs, Vec<String>), Vec<String>> {
    let lines = |d: egress_core::Diagnostics| -> Vec<String> {
        d.0.iter().map(|x| x.to_string()).collect()
    };
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", config_path.display())])?;
    let config = Config::parse(config_path, &text).map_err(lines)?;
    let bytes = std::fs::read(&config.allowlist)
        .map_err(|e| vec![format!("{}: cannot read: {e}", config.allowlist.display())])?;
    let parsed =
        Allowlist::parse_bytes(&config.allowlist.display().to_string(), &bytes).map_err(lines)?;
    let warnings = parsed.warnings.iter().map(|w| w.to_string()).collect();
    let servers =
        egress_resolve::configured_servers(&config.resolver).map_err(|e| vec![e.to_string()])?;
    Ok((Inputs::new(config, parsed.allowlist, servers), warnings))
}

fn settings(l: &Inputs) -> ResolverSettings {
    ResolverSettings::from_config(&l.config.resolver, l.servers.clone())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn to_query_outcome(host: &HostName, family: Family, o: Outcome) -> QueryOutcome {
    if let Outcome::Answer {
        addrs,
        truncated_from: Some(n),
        ..
    } = &o
    {
        warn!(host = %host, family = family.record_type(), answered = n, kept = addrs.len(), "answer over the address cap; cut");
    }
    o.into_query()
}

struct DnsDone {
    host: HostName,
    family: Family,
    outcome: QueryOutcome,
}

/// Notifies systemd (a no-op without NOTIFY_SOCKET).
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// The engine's state.
pub struct Engine {
    opts: Opts,
    loaded: Inputs,
    layout: Layout,
    resolver: Resolver,
    sched: Scheduler,
    /// nftables on Linux, pf on macOS.
    fw: Box<dyn Backend>,
    /// The earliest expiry of an allowed address, when the firewall does
    /// not expire elements itself (pf): the apply that removes it is due
    /// then, query or not.
    expiry_at: Option<Instant>,
    /// pf cannot report foreign changes: re-check the anchor this often.
    poll: Option<Duration>,
    poll_at: Option<Instant>,
    /// The backend's last warnings, logged when they change (pf says "no
    /// bridge yet" on every apply).
    fw_warnings: Vec<String>,
    /// Queries started and not answered yet (the first round is complete,
    /// and a batch of results can go out, when this reaches zero).
    pending: usize,
    dns_tx: mpsc::UnboundedSender<DnsDone>,
    fs_tx: mpsc::UnboundedSender<()>,
    watcher: Option<FileWatcher>,
    apply_at: Option<Instant>,
    reload_at: Option<Instant>,
    config_error: Option<ConfigError>,
    last_apply: Option<ApplyStatus>,
    denied: Counters,
    element_count: usize,
    refused_logged: HashSet<(HostName, IpAddr)>,
    ready: bool,
    started_unix_ms: u64,
    last_status_line: String,
    /// The interface filtered now.
    bridge: String,
    /// The Docker follower's task (it follows `[network] docker`), and
    /// its channel.
    follow: Option<tokio::task::JoinHandle<()>>,
    bridge_tx: mpsc::UnboundedSender<BridgeMsg>,
    /// Last Docker problem reported (warn once per episode, not per retry).
    docker_problem: Option<String>,
}

impl Engine {
    fn watched_files(&self) -> Vec<PathBuf> {
        vec![
            self.opts.config_path.clone(),
            self.loaded.config.allowlist.clone(),
        ]
    }

    fn rewatch(&mut self) {
        let files = self.watched_files();
        if self
            .watcher
            .as_ref()
            .is_some_and(|w| !w.needs_rebuild(&files))
        {
            return;
        }
        match FileWatcher::new(&files, self.fs_tx.clone()) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                error!(error = %e, "cannot watch the config and allowlist; edits need SIGHUP")
            }
        }
    }

    /// Starts DNS queries for everything due. The scheduler marks them
    /// asked until the longest a query can take, so none is started twice
    /// and the next wake-up is never in the past.
    fn launch_due(&mut self, now: Instant) {
        let r = &self.loaded.config.resolver;
        let hold = r.timeout * r.attempts.max(1) as u32 + Duration::from_secs(1);
        for (host, family) in self.sched.take_due(now, hold) {
            self.pending += 1;
            let resolver = self.resolver.clone();
            let tx = self.dns_tx.clone();
            tokio::spawn(async move {
                let o = resolver.query(&host, family).await;
                let outcome = to_query_outcome(&host, family, o);
                let _ = tx.send(DnsDone {
                    host,
                    family,
                    outcome,
                });
            });
        }
    }

    fn on_dns(&mut self, d: DnsDone, now: Instant) {
        self.pending = self.pending.saturating_sub(1);
        let fam = d.family.record_type();
        match &d.outcome {
            QueryOutcome::Answer { addrs, ttl } => {
                debug!(host = %d.host, family = fam, addresses = ?addrs, ttl = ttl.as_secs(), "answer")
            }
            QueryOutcome::NoData => debug!(host = %d.host, family = fam, "no records"),
            QueryOutcome::NxDomain => {
                warn!(host = %d.host, family = fam, "NXDOMAIN; its addresses expire after grace")
            }
            QueryOutcome::Failed { reason } => {
                warn!(host = %d.host, family = fam, error = %reason, "query failed; keeping the last good answer")
            }
        }
        let r = self.sched.record(&d.host, d.family, d.outcome, now);
        if let Some(n) = r.truncated {
            warn!(host = %d.host, family = fam, dropped = n, "more addresses than max_addresses; oldest dropped");
        }
        if r.changed || r.refreshed {
            self.mark_dirty(now, APPLY_DEBOUNCE);
        }
    }

    fn mark_dirty(&mut self, now: Instant, within: Duration) {
        let at = now + within;
        self.apply_at = Some(self.apply_at.map_or(at, |a| a.min(at)));
    }

    fn apply(&mut self, now: Instant) {
        self.apply_at = None;
        let answers = self.sched.answers(now);
        let out = self.loaded.desired_elements(&answers);
        for r in &out.refused {
            if self.refused_logged.insert((r.host.clone(), r.addr)) {
                warn!(host = %r.host, address = %r.addr, reason = r.reason, "answer refused: private or special range (see [firewall] allow_private)");
            }
        }
        self.element_count = out.elements.len();
        let rs = Ruleset {
            layout: self.layout.clone(),
            elements: out.elements,
        };
        let t0 = Instant::now();
        let result = self.fw.apply(&rs);
        if !self.fw.expires_elements() {
            self.expiry_at = self.sched.next_expiry(now);
        }
        match result {
            Ok(report) => {
                if report.warnings != self.fw_warnings {
                    for w in &report.warnings {
                        warn!(firewall = self.fw.kind().name(), warning = %w, "firewall");
                    }
                    self.fw_warnings = report.warnings.clone();
                }
                let took = t0.elapsed();
                let (a, r, f) = (
                    report.diff.count(ChangeKind::Added),
                    report.diff.count(ChangeKind::Removed),
                    report.diff.count(ChangeKind::Refreshed),
                );
                let mode = report.mode.name();
                if report.mode == ApplyMode::Full {
                    info!(firewall = %self.fw.kind().object(&self.layout.table), reason = report.reason.as_deref().unwrap_or(""), elements = a, "table loaded");
                } else if report.mode == ApplyMode::Elements {
                    info!(
                        added = a,
                        removed = r,
                        refreshed = f,
                        micros = took.as_micros() as u64,
                        "elements updated"
                    );
                }
                self.denied = Counters {
                    packets: report.denied_packets,
                    bytes: report.denied_bytes,
                };
                self.last_apply = Some(ApplyStatus {
                    at_unix_ms: unix_ms(SystemTime::now()),
                    duration_us: took.as_micros() as u64,
                    mode: mode.into(),
                    reason: report.reason,
                    added: a,
                    removed: r,
                    refreshed: f,
                    error: None,
                });
            }
            Err(e) => {
                error!(firewall = %self.fw.kind().object(&self.layout.table), error = %e, "apply failed; the kernel keeps the previous state; retrying");
                self.last_apply = Some(ApplyStatus {
                    at_unix_ms: unix_ms(SystemTime::now()),
                    duration_us: t0.elapsed().as_micros() as u64,
                    mode: "failed".into(),
                    reason: None,
                    added: 0,
                    removed: 0,
                    refreshed: 0,
                    error: Some(e.to_string()),
                });
                self.mark_dirty(now, APPLY_RETRY);
            }
        }
    }

    /// Re-reads both files. Invalid files keep the last good policy.
    fn reload(&mut self, force_resolve: bool, now: Instant) {
        self.reload_at = None;
        notify(&[
            NotifyState::Reloading,
            NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Custom("")),
        ]);
        match load(&self.opts.config_path) {
            Err(msgs) => {
                for m in &msgs {
                    error!(error = %m, "invalid config or allowlist; keeping the last good policy");
                }
                self.config_error = Some(ConfigError {
                    since_unix_ms: unix_ms(SystemTime::now()),
                    messages: msgs,
                });
            }
            Ok((loaded, warnings)) => {
                for w in &warnings {
                    warn!(warning = %w, "allowlist");
                }
                if self.config_error.take().is_some() {
                    info!("config and allowlist valid again");
                }
                let old_table = self.layout.table.clone();
                if loaded.config.control.socket != self.loaded.config.control.socket {
                    // The socket is bound once; moving it needs a restart.
                    warn!(
                        socket = %self.loaded.config.control.socket.display(),
                        "[control] socket changed; the daemon keeps serving the old path until restarted"
                    );
                }
                let new_settings = settings(&loaded);
                let resolver_changed = new_settings != settings(&self.loaded);
                let network_changed = loaded.config.network.docker
                    != self.loaded.config.network.docker
                    || loaded.config.network.interface != self.loaded.config.network.interface;
                self.sched
                    .set_config(ScheduleConfig::from_resolver(&loaded.config.resolver));
                self.sched.set_hosts(loaded.hosts.iter().cloned(), now);
                if resolver_changed {
                    match Resolver::new(new_settings) {
                        Ok(r) => self.resolver = r,
                        Err(e) => {
                            error!(error = %e, "cannot rebuild the resolver; keeping the old one")
                        }
                    }
                }
                info!(
                    entries = loaded.entries.len(),
                    hosts = loaded.hosts.len(),
                    "reloaded"
                );
                self.loaded = loaded;
                if network_changed {
                    self.refollow();
                }
                self.layout = self.layout_now();
                self.rewatch();
                self.apply(now);
                if old_table != self.layout.table {
                    let object = self.fw.kind().object(&old_table);
                    match self.fw.flush(&old_table) {
                        Ok(_) => {
                            info!(firewall = %object, "removed the rules of the previous config")
                        }
                        Err(e) => {
                            error!(firewall = %object, error = %e, "cannot remove the rules of the previous config")
                        }
                    }
                }
            }
        }
        if force_resolve {
            self.sched.force_all(now);
        }
        self.launch_due(now);
        self.update_status_line(now, true);
        notify(&[NotifyState::Ready]);
    }

    /// The layout for the current config and interface.
    fn layout_now(&self) -> Layout {
        self.loaded.layout(self.bridge.clone())
    }

    /// (Re)starts following the Docker network of the config, or stops
    /// when `[network] interface` names the interface itself.
    fn refollow(&mut self) {
        if let Some(task) = self.follow.take() {
            task.abort();
        }
        let net = &self.loaded.config.network;
        match &net.interface {
            Some(i) => self.bridge = i.clone(),
            None => {
                self.follow = Some(docker::spawn_follow(
                    net.docker.clone(),
                    self.bridge_tx.clone(),
                ));
            }
        }
    }

    fn on_bridge(&mut self, msg: BridgeMsg, now: Instant) {
        let network = self.loaded.config.network.docker.clone();
        match msg {
            BridgeMsg::Found(info) => {
                if self.docker_problem.take().is_some() {
                    info!(network = %network, bridge = %info.bridge, "Docker network found");
                }
                let file = docker::state_file(&self.loaded.config.control.socket);
                if let Err(e) = docker::remember(&file, &network, &info.bridge) {
                    debug!(file = %file.display(), error = %e, "cannot remember the bridge");
                }
                if info.bridge != self.bridge {
                    info!(network = %network, bridge = %info.bridge, previous = %self.bridge, "following the Docker network to its bridge");
                    self.bridge = info.bridge;
                    self.layout = self.layout_now();
                    if self.ready {
                        self.apply(now);
                    }
                }
            }
            BridgeMsg::Missing => {
                let why = format!("Docker has no network {network:?}");
                if self.docker_problem.as_deref() != Some(why.as_str()) {
                    warn!(network = %network, bridge = %self.bridge, "Docker has no such network (removed, or not created yet); still filtering the last bridge");
                    self.docker_problem = Some(why);
                }
            }
            BridgeMsg::Unreachable(why) => {
                if self.docker_problem.is_none() {
                    warn!(network = %network, bridge = %self.bridge, error = %why, "Docker unreachable; still filtering the last bridge; retrying");
                } else {
                    debug!(error = %why, "Docker still unreachable");
                }
                self.docker_problem = Some(why);
            }
        }
    }

    /// The full status (control socket, SIGUSR1), with the deny counters
    /// read from the kernel now.
    pub fn status(&mut self, now: Instant) -> Status {
        match self.fw.denied_counters(&self.layout) {
            Ok((packets, bytes)) => self.denied = Counters { packets, bytes },
            Err(e) => debug!(error = %e, "cannot read the deny counters"),
        }
        let snap = self.sched.snapshot(now);
        let by_host: std::collections::BTreeMap<&HostName, &HostStatus> =
            snap.iter().map(|h| (&h.host, h)).collect();
        let entries = self
            .loaded
            .allowlist
            .entries()
            .map(|l| {
                let (host, addresses, next, err) = match &l.entry.target {
                    Target::Host(h) => {
                        let s = by_host.get(h).copied();
                        let mut addrs = Vec::new();
                        let mut next = None;
                        let mut errs = Vec::new();
                        if let Some(s) = s {
                            for f in [&s.v4, &s.v6] {
                                for a in &f.addresses {
                                    addrs.push(AddressStatus {
                                        address: a.addr.to_string(),
                                        expires_ms: Some(a.remaining.as_millis() as u64),
                                    });
                                }
                                let n = f.next_query_in.as_millis() as u64;
                                next = Some(next.map_or(n, |x: u64| x.min(n)));
                                if let Some(e) = &f.last_error {
                                    errs.push(format!("{}: {e}", f.family.record_type()));
                                }
                            }
                        }
                        (
                            Some(h.to_string()),
                            addrs,
                            next,
                            (!errs.is_empty()).then(|| errs.join("; ")),
                        )
                    }
                    Target::Net(_) => (
                        None,
                        vec![AddressStatus {
                            address: l.entry.target.to_string(),
                            expires_ms: None,
                        }],
                        None,
                        None,
                    ),
                };
                EntryStatus {
                    line: l.line,
                    text: l.text.to_string(),
                    entry: l.entry.to_string(),
                    host,
                    addresses,
                    next_refresh_ms: next,
                    last_error: err,
                }
            })
            .collect();
        Status {
            format: STATUS_FORMAT,
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_unix_ms: self.started_unix_ms,
            config: self.opts.config_path.display().to_string(),
            allowlist: self.loaded.config.allowlist.display().to_string(),
            table: self.layout.table.clone(),
            firewall: self.fw.kind().object(&self.layout.table),
            interfaces: self.layout.interfaces.clone(),
            config_error: self.config_error.clone(),
            last_apply: self.last_apply.clone(),
            next_refresh_ms: self
                .sched
                .next_wakeup()
                .map(|t| t.saturating_duration_since(now).as_millis() as u64),
            entry_count: self.loaded.entries.len(),
            address_count: self.element_count,
            denied: self.denied,
            entries,
        }
    }

    /// systemd's STATUS=, from the engine's own counts: no kernel read, no
    /// per-entry work, so it can run on every loop iteration.
    fn update_status_line(&mut self, now: Instant, force: bool) {
        let line = summary_line(
            self.loaded.entries.len(),
            self.element_count,
            self.sched
                .next_wakeup()
                .map(|t| t.saturating_duration_since(now).as_millis() as u64),
            self.sched.failing_hosts(),
            self.config_error.as_ref(),
        );
        if force || line != self.last_status_line {
            notify(&[NotifyState::Status(&line)]);
            self.last_status_line = line;
        }
    }

    /// When the loop must wake up next by itself.
    fn next_deadline(&self, watchdog_at: Option<Instant>) -> Option<Instant> {
        // Before readiness the first apply waits for the first round of
        // answers, so a pending apply must not wake the loop (it would spin).
        let apply_at = if self.ready { self.apply_at } else { None };
        let mut next = [
            apply_at,
            self.reload_at,
            watchdog_at,
            self.expiry_at,
            self.poll_at,
        ]
        .into_iter()
        .flatten()
        .min();
        // launch_due marks what it starts, so this is never in the past.
        let sched = self.sched.next_wakeup();
        if let Some(s) = sched {
            next = Some(next.map_or(s, |n| n.min(s)));
        }
        next
    }
}

/// The interface to filter at the start: `[network] interface`; else the
/// Docker network's bridge; when Docker cannot say, the bridge remembered
/// from the last run, else the name `setup-network` gives it.
async fn initial_bridge(loaded: &Inputs) -> String {
    let net = &loaded.config.network;
    if let Some(i) = &net.interface {
        return i.clone();
    }
    let why = match docker::lookup_once(&net.docker, Duration::from_secs(3)).await {
        BridgeMsg::Found(info) => {
            info!(network = %net.docker, bridge = %info.bridge, "filtering the bridge of the Docker network");
            return info.bridge;
        }
        BridgeMsg::Missing => format!("Docker has no network {:?}", net.docker),
        BridgeMsg::Unreachable(why) => why,
    };
    let file = docker::state_file(&loaded.config.control.socket);
    let (bridge, from) = match docker::remembered(&file, &net.docker) {
        Some(b) => (b, "remembered from the last run"),
        None => (net.interface_name(), "the name setup-network gives it"),
    };
    warn!(network = %net.docker, bridge = %bridge, from, error = %why, "cannot ask Docker for the bridge; filtering by name until it answers");
    bridge
}

/// The firewall of this platform (debug builds: or the pf simulation, see
/// `egress_firewall::sim`).
fn firewall() -> Result<Box<dyn Backend>, egress_firewall::Error> {
    let (fw, sim) = egress_firewall::open()?;
    if let Some(dir) = sim {
        warn!(dir = %dir.display(), "SIMULATED pf ({}): nothing on this machine is filtered", egress_firewall::sim::ENV);
    }
    Ok(fw)
}

/// Runs the daemon until SIGTERM/SIGINT. `loaded` was validated by main.
pub async fn run(opts: Opts, loaded: Inputs) -> anyhow::Result<()> {
    let now = Instant::now();
    let mut fw = firewall()?;
    let bridge = initial_bridge(&loaded).await;
    let layout = loaded.layout(bridge.clone());

    // Closed from the first moment: unless a table with exactly this layout
    // is already live (a restart, whose resolved elements are still valid
    // until their kernel timeouts), the table is loaded with its final rules
    // before the first DNS query; hostnames have no addresses until answered.
    let live = fw.read(&layout)?;
    let mut sched = Scheduler::new(ScheduleConfig::from_resolver(&loaded.config.resolver));
    let resolver = Resolver::new(settings(&loaded))?;
    let (dns_tx, mut dns_rx) = mpsc::unbounded_channel();
    let (fs_tx, mut fs_rx) = mpsc::unbounded_channel();
    let (fw_tx, mut fw_rx) = mpsc::unbounded_channel();
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlCall>(64);
    let (bridge_tx, mut bridge_rx) = mpsc::unbounded_channel();
    sched.set_hosts(loaded.hosts.iter().cloned(), now);
    let poll = match fw.watch(Box::new(move || fw_tx.send(()).is_ok()))? {
        ChangeWatch::Notified => None,
        ChangeWatch::Poll(every) => {
            info!(firewall = fw.kind().name(), every = ?every, "the firewall reports no changes; re-checking it on a timer");
            Some(every)
        }
    };

    let mut eng = Engine {
        opts,
        layout,
        resolver,
        sched,
        fw,
        expiry_at: None,
        poll,
        poll_at: poll.map(|d| now + d),
        fw_warnings: Vec::new(),
        pending: 0,
        dns_tx,
        fs_tx,
        watcher: None,
        apply_at: None,
        reload_at: None,
        config_error: None,
        last_apply: None,
        denied: Counters::default(),
        element_count: 0,
        refused_logged: HashSet::new(),
        ready: false,
        started_unix_ms: unix_ms(SystemTime::now()),
        last_status_line: String::new(),
        bridge,
        follow: None,
        bridge_tx,
        docker_problem: None,
        loaded,
    };
    eng.refollow();
    match &live {
        Some(l) if l.layout_matches => {
            info!(firewall = %eng.fw.kind().object(&eng.layout.table), "already live with this layout; keeping its elements until the first answers")
        }
        _ => eng.apply(now),
    }
    eng.rewatch();
    let _control = crate::control::serve(&eng.loaded.config.control.socket, ctl_tx).await?;
    let mut signals = signal_hook_tokio::Signals::new([SIGHUP, SIGTERM, SIGINT, SIGUSR1])?;

    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut watchdog_at = watchdog.map(|d| Instant::now() + d);
    eng.launch_due(Instant::now());

    loop {
        let now = Instant::now();
        if !eng.ready && eng.pending == 0 {
            // The first round of answers is in: apply it, then declare
            // readiness (the table itself was closed since the start).
            eng.apply(now);
            eng.ready = true;
            eng.update_status_line(now, true);
            notify(&[NotifyState::Ready]);
            info!(
                entries = eng.loaded.entries.len(),
                hosts = eng.loaded.hosts.len(),
                "ready"
            );
        }
        let deadline = eng.next_deadline(watchdog_at);
        let sleep = async {
            match deadline {
                Some(d) => sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        let mut hup = false;
        let mut stop = false;
        let mut usr1 = false;
        let mut on_signal = |s: i32| match s {
            SIGHUP => hup = true,
            SIGUSR1 => usr1 = true,
            _ => stop = true,
        };
        tokio::select! {
            Some(d) = dns_rx.recv() => eng.on_dns(d, Instant::now()),
            Some(()) = fs_rx.recv() => eng.reload_at = Some(Instant::now() + RELOAD_DEBOUNCE),
            Some(()) = fw_rx.recv() => {
                debug!("the firewall was changed by someone else; checking ours");
                eng.mark_dirty(Instant::now(), DRIFT_DEBOUNCE);
            }
            Some(call) = ctl_rx.recv() => match call.request {
                egress_core::status::Request::Status => {
                    let _ = call.reply.send(eng.status(Instant::now()));
                }
            },
            Some(s) = signals.next() => on_signal(s),
            Some(m) = bridge_rx.recv() => eng.on_bridge(m, Instant::now()),
            _ = sleep => {}
        }
        // Coalesce whatever else is already queued: a burst of SIGHUPs is
        // one reload, many DNS results are one batch, the notifications of
        // one foreign commit (one per object it touched) are one check.
        while let Some(Some(s)) = signals.next().now_or_never() {
            on_signal(s);
        }
        let now = Instant::now();
        while let Ok(d) = dns_rx.try_recv() {
            eng.on_dns(d, now);
        }
        while fs_rx.try_recv().is_ok() {
            eng.reload_at = Some(now + RELOAD_DEBOUNCE);
        }
        while fw_rx.try_recv().is_ok() {
            eng.mark_dirty(now, DRIFT_DEBOUNCE);
        }
        if stop {
            notify(&[NotifyState::Stopping]);
            if eng.opts.flush_on_exit {
                let object = eng.fw.kind().object(&eng.layout.table);
                match eng.fw.flush(&eng.layout.table) {
                    Ok(_) => info!(firewall = %object, "stopping; rules removed (--flush-on-exit)"),
                    Err(e) => {
                        error!(firewall = %object, error = %e, "stopping; cannot remove the rules")
                    }
                }
            } else {
                info!(firewall = %eng.fw.kind().object(&eng.layout.table), "stopping; rules stay in place");
            }
            return Ok(());
        }
        if usr1 {
            match serde_json::to_string(&eng.status(now)) {
                Ok(s) => info!(state = %s, "state dump (SIGUSR1)"),
                Err(e) => error!(error = %e, "cannot serialise the state"),
            }
        }
        if hup {
            info!("SIGHUP: reloading and re-resolving every host");
            eng.reload(true, now);
        } else if eng.reload_at.is_some_and(|t| t <= now) {
            eng.reload(false, now);
        }
        eng.launch_due(now);
        if eng.expiry_at.is_some_and(|t| t <= now) {
            // pf: an address ran out; the apply drops it from the tables.
            eng.expiry_at = None;
            eng.mark_dirty(now, Duration::ZERO);
        }
        if let (Some(at), Some(every)) = (eng.poll_at, eng.poll) {
            if at <= now {
                // pf: each apply reads the anchor back and repairs drift.
                eng.poll_at = Some(now + every);
                eng.mark_dirty(now, Duration::ZERO);
            }
        }
        if eng.ready
            && eng
                .apply_at
                .is_some_and(|t| t <= now || (eng.pending == 0 && t <= now + APPLY_DEBOUNCE))
        {
            eng.apply(now);
        }
        if let (Some(at), Some(every)) = (watchdog_at, watchdog) {
            if at <= now {
                notify(&[NotifyState::Watchdog]);
                watchdog_at = Some(now + every);
            }
        }
        if eng.ready {
            eng.update_status_line(now, false);
        }
    }
}
