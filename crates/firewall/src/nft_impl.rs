//! The nftables backend behind the facade (Linux).

use egress_core::ruleset::{Layout, Ruleset};
use egress_nft::{ApplyMode as NftMode, LiveTable, Nft};

use crate::{ApplyMode, ApplyReport, Backend, BackendKind, ChangeWatch, Error, LiveState, Plan};

fn live(l: LiveTable) -> LiveState {
    LiveState {
        layout_matches: l.layout_matches,
        drift: l.drift,
        elements: l.elements,
        denied_packets: l.denied_packets,
        denied_bytes: l.denied_bytes,
    }
}

fn report(r: egress_nft::ApplyReport) -> ApplyReport {
    ApplyReport {
        mode: match r.mode {
            NftMode::Full => ApplyMode::Full,
            NftMode::Elements => ApplyMode::Elements,
            NftMode::Unchanged => ApplyMode::Unchanged,
        },
        reason: r.reason,
        diff: r.diff,
        operations: r.messages,
        element_operations: r.element_messages,
        bytes: r.bytes,
        read_time: r.read_time,
        write_time: r.write_time,
        denied_packets: r.denied_packets,
        denied_bytes: r.denied_bytes,
        warnings: Vec::new(),
    }
}

impl Backend for Nft {
    fn kind(&self) -> BackendKind {
        BackendKind::Nftables
    }

    fn render(&self, ruleset: &Ruleset) -> Result<String, Error> {
        Ok(egress_core::render::ruleset_text(ruleset))
    }

    fn read(&mut self, layout: &Layout) -> Result<Option<LiveState>, Error> {
        Ok(Nft::read(self, layout)?.map(live))
    }

    fn plan(&mut self, ruleset: &Ruleset) -> Result<Plan, Error> {
        let (l, reason, diff) = Nft::plan(self, ruleset)?;
        Ok(Plan {
            live: l.map(live),
            reason,
            diff,
        })
    }

    fn apply(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, Error> {
        Ok(report(Nft::apply(self, ruleset)?))
    }

    fn apply_full(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, Error> {
        Ok(report(Nft::apply_full(self, ruleset)?))
    }

    fn flush(&mut self, table: &str) -> Result<bool, Error> {
        Ok(Nft::flush(self, table)?)
    }

    fn denied_counters(&mut self, layout: &Layout) -> Result<(u64, u64), Error> {
        Ok(Nft::denied_counters(self, layout)?)
    }

    fn expires_elements(&self) -> bool {
        true
    }

    fn watch(&mut self, changed: Box<dyn FnMut() -> bool + Send>) -> Result<ChangeWatch, Error> {
        egress_nft::spawn_monitor(self.portid(), changed).map_err(Error::Watch)?;
        Ok(ChangeWatch::Notified)
    }
}
