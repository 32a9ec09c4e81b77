//! The pf backend behind the facade.

use egress_core::ruleset::{Layout, Ruleset};
use egress_pf::{CommandRunner, Pf, PfApplyMode, PfApplyReport, PfLive};

use crate::{ApplyMode, ApplyReport, Backend, BackendKind, ChangeWatch, Error, LiveState, Plan};

fn live(l: PfLive) -> LiveState {
    LiveState {
        layout_matches: l.layout_matches(),
        drift: l.drift,
        elements: l.elements,
        denied_packets: l.denied_packets,
        denied_bytes: l.denied_bytes,
    }
}

fn report(r: PfApplyReport) -> ApplyReport {
    let mut warnings = r.warnings;
    if let Some(egress_pf::PfConfChange::Added { path, backup }) = &r.pf_conf {
        warnings.push(format!(
            "added the anchor to {} (backup: {})",
            path.display(),
            backup.display()
        ));
    }
    ApplyReport {
        mode: match r.mode {
            PfApplyMode::Full => ApplyMode::Full,
            PfApplyMode::Tables => ApplyMode::Elements,
            PfApplyMode::Unchanged => ApplyMode::Unchanged,
        },
        reason: r.reason,
        diff: r.diff,
        operations: r.commands,
        element_operations: r.tables.len(),
        bytes: r.bytes,
        read_time: r.read_time,
        write_time: r.write_time,
        denied_packets: r.denied_packets,
        denied_bytes: r.denied_bytes,
        warnings,
    }
}

impl<R: CommandRunner> Backend for Pf<R> {
    fn kind(&self) -> BackendKind {
        BackendKind::Pf
    }

    fn render(&self, ruleset: &Ruleset) -> Result<String, Error> {
        let (anchor, tables) = egress_pf::render::desired(ruleset)?;
        Ok(anchor.rules_file(&tables))
    }

    fn read(&mut self, layout: &Layout) -> Result<Option<LiveState>, Error> {
        Ok(Pf::read(self, layout)?.map(live))
    }

    fn plan(&mut self, ruleset: &Ruleset) -> Result<Plan, Error> {
        let p = Pf::plan(self, ruleset)?;
        Ok(Plan {
            live: p.live.map(live),
            reason: p.reason,
            diff: p.diff,
        })
    }

    fn apply(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, Error> {
        Ok(report(Pf::apply(self, ruleset)?))
    }

    fn apply_full(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, Error> {
        Ok(report(Pf::apply_full(self, ruleset)?))
    }

    fn flush(&mut self, table: &str) -> Result<bool, Error> {
        Ok(Pf::flush(self, table)?)
    }

    fn denied_counters(&mut self, layout: &Layout) -> Result<(u64, u64), Error> {
        Ok(Pf::denied_counters(self, layout)?)
    }

    fn expires_elements(&self) -> bool {
        false
    }

    fn watch(&mut self, _changed: Box<dyn FnMut() -> bool + Send>) -> Result<ChangeWatch, Error> {
        // pf tells nobody about changes: the caller re-applies on a timer,
        // and every apply reads the anchor back.
        Ok(ChangeWatch::Poll(self.poll()))
    }
}
