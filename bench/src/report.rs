//! Markdown for docs/benchmarks.md: one generated section per figure,
//! written between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, so the
//! prose around them stays as written.

use std::fmt::Write as _;

use anyhow::{bail, Result};

use crate::dataplane::Filter;
use crate::stats::{ratio, Summary};
use crate::Results;

/// `1234567` -> `1,234,567`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Replaces what is between the markers of section `name` with `text`.
pub fn replace_section(doc: &str, name: &str, text: &str) -> Result<String> {
    let begin = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let (Some(b), Some(e)) = (doc.find(&begin), doc.find(&end)) else {
        bail!("markers {begin} ... {end} are missing");
    };
    if e < b {
        bail!("{end} comes before {begin}");
    }
    let body = text.trim_end();
    Ok(format!("{}{begin}\n{body}\n{}", &doc[..b], &doc[e..]))
}

fn cell(v: &[f64], digits: usize) -> String {
    Summary::of(v).map_or("-".into(), |s| s.cell(digits))
}

fn times(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}x"))
}

fn not_measured() -> String {
    "*Not measured in this run.*\n".into()
}

/// Every generated section, by marker name.
pub fn sections(res: &Results) -> Vec<(String, String)> {
    vec![
        ("machine".into(), machine(res)),
        ("headline".into(), headline(res)),
        ("apply".into(), apply(res)),
        ("rotate".into(), rotate(res)),
        ("dataplane".into(), dataplane(res)),
        ("resolve".into(), resolve(res)),
        ("footprint".into(), footprint(res)),
        ("latency".into(), latency(res)),
    ]
}

fn machine(res: &Results) -> String {
    let m = &res.machine;
    let load = |l: Option<f64>| l.map_or("?".into(), |l| format!("{l:.2}"));
    format!(
        "Measured {} at commit `{}`{}: {} ({} CPUs), {} GiB RAM, Linux {}, {}; {}, libnftnl {}, {}. \
         1-minute load average {} at the start, {} at the end: the machine is shared (other \
         engineers compile on it), so expect noise; every figure is a median with its spread.\n",
        m.date,
        m.commit,
        if res.quick { " (`--quick` run)" } else { "" },
        m.cpu,
        m.cpus,
        m.mem_gib,
        m.kernel,
        m.os,
        m.nft,
        m.libnftnl,
        m.dnsmasq,
        load(m.load_start),
        load(m.load_end),
    )
}

fn med(v: &[f64]) -> Option<Summary> {
    Summary::of(v)
}

fn headline(res: &Results) -> String {
    let mut s = String::new();
    if let Some(apply) = &res.apply {
        for a in apply.iter().filter(|a| a.entries >= 10_000) {
            if let (Some(o), Some(f), Some(t), Some(rl)) = (
                med(&a.ours_ms),
                med(&a.floor_ms),
                med(&a.scripts_ms),
                med(&a.scripts_reload_ms),
            ) {
                let _ = writeln!(
                    s,
                    "- Apply, {} entries: ours {:.1} ms = **{} the floor** (`nft -f` into one set, {:.1} ms; target <= 1.5x); the scripts' one-rule-per-address load {:.1} ms ({} ours), their delete + reload {:.1} ms.",
                    thousands(a.entries),
                    o.median,
                    times(ratio(&o, &f)),
                    f.median,
                    t.median,
                    times(ratio(&t, &o)),
                    rl.median
                );
            }
        }
    }
    if let Some(r) = &res.rotate {
        let rw: Vec<f64> = r
            .ours_read_ms
            .iter()
            .zip(&r.ours_write_ms)
            .map(|(a, b)| a + b)
            .collect();
        if let (Some(w), Some(rw), Some(f)) = (med(&r.ours_write_ms), med(&rw), med(&r.floor_ms)) {
            let reload = res
                .apply
                .as_ref()
                .and_then(|a| a.iter().find(|a| a.entries == r.entries))
                .and_then(|a| med(&a.scripts_reload_ms));
            let _ = writeln!(
                s,
                "- One rotated host in a {}-entry policy: **{} element messages ({} bytes)**, kernel write **{:.2} ms**, read + diff + write {:.1} ms (target: a few ms); `nft -f` of the same change {:.1} ms; the scripts reload everything: {}.",
                thousands(r.entries),
                r.ours_batch.element_messages,
                r.ours_batch.bytes,
                w.median,
                rw.median,
                f.median,
                reload.map_or("not measured".into(), |x| format!("{:.0} ms", x.median))
            );
        }
    }
    if let Some(dp) = &res.dataplane {
        let get = |f: Filter| dp.iter().find(|d| d.filter == f).and_then(|d| med(&d.cps));
        if let (Some(n), Some(o), Some(t)) = (
            get(Filter::None),
            get(Filter::Ours(10_000)),
            get(Filter::Scripts(10_000)),
        ) {
            let _ = writeln!(
                s,
                "- Data plane at 10,000 entries: ours **{:.0}%** of the no-filter connection rate (target >= 95%), the scripts' chain {:.0}%.",
                o.median / n.median * 100.0,
                t.median / n.median * 100.0
            );
        }
    }
    if let Some(rs) = &res.resolve {
        for r in rs {
            if let (Some(o), Some(d)) = (med(&r.ours_ms), med(&r.dig_ms)) {
                let _ = writeln!(
                    s,
                    "- Resolving {} hostnames: ours {:.0} ms (A and AAAA, {} in flight at most), the dig loop {:.1} s (A only): **{} faster** (target >= 20x).",
                    thousands(r.hosts),
                    o.median,
                    r.concurrency,
                    d.median / 1e3,
                    times(ratio(&d, &o))
                );
            }
        }
    }
    if let Some(fp) = &res.footprint {
        for f in fp {
            let rss = |w: &[crate::daemon::Window]| {
                med(&w
                    .iter()
                    .map(|w| w.rss_kib as f64 / 1024.0)
                    .collect::<Vec<_>>())
            };
            let wake = med(&f.idle.iter().map(|w| w.wakeups_per_min).collect::<Vec<_>>());
            let cpu = med(&f
                .churn
                .iter()
                .map(|w| w.cpu_ms_per_min / 600.0)
                .collect::<Vec<_>>());
            if let (Some(ri), Some(rc), Some(wk), Some(c)) =
                (rss(&f.idle), rss(&f.churn), wake, cpu)
            {
                let _ = writeln!(
                    s,
                    "- Daemon with {} hosts: RSS {:.1} MiB idle, {:.1} MiB under churn (TTL {} s); {:.0} wake-ups per idle minute; {:.1}% of one core under churn.",
                    thousands(f.hosts),
                    ri.median,
                    rc.median,
                    f.churn_ttl,
                    wk.median,
                    c.median
                );
            }
        }
    }
    if let Some(l) = &res.latency {
        if let (Some(e), Some(t)) = (med(&l.edit_ms), med(&l.ttl_ms)) {
            let _ = writeln!(
                s,
                "- Latency: allowlist write -> kernel {:.0} ms (200 ms of it is the reload debounce); TTL expiry -> new address in the kernel {:.0} ms.",
                e.median, t.median
            );
        }
    }
    if s.is_empty() {
        return not_measured();
    }
    s
}

fn apply(res: &Results) -> String {
    let Some(apply) = &res.apply else {
        return not_measured();
    };
    let mut s = String::from(
        "| entries | ours: `openclaw-egress apply` | scripts: `nft -f`, one rule per entry | scripts: `nft delete table` + `nft -f` | floor: `nft -f` into one set | ours / floor | scripts / ours |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for a in apply {
        let (o, f, t) = (med(&a.ours_ms), med(&a.floor_ms), med(&a.scripts_ms));
        let r = |x: Option<Summary>, y: Option<Summary>| match (x, y) {
            (Some(x), Some(y)) => times(ratio(&x, &y)),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            thousands(a.entries),
            cell(&a.ours_ms, 1),
            cell(&a.scripts_ms, 1),
            cell(&a.scripts_reload_ms, 1),
            cell(&a.floor_ms, 1),
            r(o, f),
            r(t, o)
        );
    }
    let runs = apply.first().map_or(0, |a| a.ours_ms.len());
    let _ = writeln!(
        s,
        "\nWall time in ms, median [min-max] of {runs} runs; the three methods take turns within each run."
    );
    s.push_str("\nOur batch (one netlink batch, every message acknowledged):\n\n");
    for a in apply {
        let b = &a.ours_batch;
        let _ = writeln!(
            s,
            "- {} entries: {} messages ({} element messages, {} bytes); kernel write {:.1} ms of the total.",
            thousands(a.entries),
            b.messages,
            b.element_messages,
            thousands(b.bytes),
            b.write_ms
        );
    }
    s.push_str("\n![apply](img/apply.png)\n");
    s
}

fn rotate(res: &Results) -> String {
    let Some(r) = &res.rotate else {
        return not_measured();
    };
    let rw: Vec<f64> = r
        .ours_read_ms
        .iter()
        .zip(&r.ours_write_ms)
        .map(|(a, b)| a + b)
        .collect();
    let reload = res
        .apply
        .as_ref()
        .and_then(|a| a.iter().find(|a| a.entries == r.entries))
        .map_or("-".into(), |a| cell(&a.scripts_reload_ms, 1));
    let b = &r.ours_batch;
    format!(
        "| what | ms, median [min-max] |\n|---|---:|\n\
         | ours: kernel write (build, send, acknowledge the batch) | {} |\n\
         | ours: read the live table back + diff | {} |\n\
         | ours: read + diff + write | {} |\n\
         | ours: whole `openclaw-egress apply` (parse {} entries, resolve the host, read, diff, write) | {} |\n\
         | of which resolving the rotated host | {} |\n\
         | floor: `nft -f` deleting the old and adding the new element (set of {}) | {} |\n\
         | scripts: `nft delete table` + `nft -f` of {} rules (from the table above) | {} |\n\n\
         Policy: every entry a literal address but one hostname, whose record changes between two \
         applies. Our batch: {}; {} messages, **{} element messages, {} bytes**. {} runs, each on a \
         fresh first load.\n\n![rotate](img/rotate.png)\n",
        cell(&r.ours_write_ms, 2),
        cell(&r.ours_read_ms, 1),
        cell(&rw, 1),
        thousands(r.entries),
        cell(&r.ours_total_ms, 0),
        cell(&r.ours_resolve_ms, 1),
        thousands(r.entries),
        cell(&r.floor_ms, 1),
        thousands(r.entries),
        reload,
        b.diff,
        b.messages,
        b.element_messages,
        b.bytes,
        r.ours_total_ms.len(),
    )
}

fn dataplane(res: &Results) -> String {
    let Some(dp) = &res.dataplane else {
        return not_measured();
    };
    let none = dp
        .iter()
        .find(|d| d.filter == Filter::None)
        .and_then(|d| med(&d.cps));
    let mut s = String::from(
        "| filter | new connections/s, median [min-max] | vs no filter |\n|---|---:|---:|\n",
    );
    for d in dp {
        let rel = match (med(&d.cps), none) {
            (Some(x), Some(n)) => format!("{:.1}%", x.median / n.median * 100.0),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            d.filter.label(),
            cell(&d.cps, 0),
            rel
        );
    }
    if let Some((clients, secs)) = res.dataplane_load {
        let runs = dp.first().map_or(0, |d| d.cps.len());
        let _ = writeln!(
            s,
            "\n{runs} runs; each counts {secs:.0} s of {clients} client threads connecting (and resetting) as fast as they can, after 0.5 s of warm-up; the filters take turns within each run."
        );
    }
    s.push_str("\n![dataplane](img/dataplane.png)\n");
    s
}

fn resolve(res: &Results) -> String {
    let Some(rs) = &res.resolve else {
        return not_measured();
    };
    let mut s = String::from(
        "| hostnames | ours: A + AAAA, concurrent (ms) | scripts: `dig` loop, A only (ms) | dig / ours | ours per query (µs) | dig per query (ms) |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rs {
        let (o, d) = (med(&r.ours_ms), med(&r.dig_ms));
        let rel = match (o, d) {
            (Some(o), Some(d)) => times(ratio(&d, &o)),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            thousands(r.hosts),
            cell(&r.ours_ms, 0),
            cell(&r.dig_ms, 0),
            rel,
            o.map_or("-".into(), |o| format!(
                "{:.0}",
                o.median * 1e3 / (2 * r.hosts) as f64
            )),
            d.map_or("-".into(), |d| format!("{:.2}", d.median / r.hosts as f64)),
        );
    }
    let runs: Vec<String> = rs
        .iter()
        .map(|r| {
            format!(
                "{}: {} and {}",
                thousands(r.hosts),
                r.ours_ms.len(),
                r.dig_ms.len()
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "\nRuns (ours and dig) per size: {}. Ours asks {} queries at most in flight (the default `concurrency`).",
        runs.join("; "),
        rs.first().map_or(0, |r| r.concurrency)
    );
    s.push_str("\n![resolve](img/resolve.png)\n");
    s
}

fn footprint(res: &Results) -> String {
    let Some(fp) = &res.footprint else {
        return not_measured();
    };
    let mut s = String::from(
        "| hostnames | state | RSS (MiB) | CPU (ms per minute) | CPU (% of one core) | wake-ups per minute |\n|---:|---|---:|---:|---:|---:|\n",
    );
    for f in fp {
        for (state, w) in [
            ("idle (TTL 1 h)", &f.idle),
            (
                &*format!("churn (TTL {} s, every record alternating)", f.churn_ttl),
                &f.churn,
            ),
        ] {
            let rss: Vec<f64> = w.iter().map(|w| w.rss_kib as f64 / 1024.0).collect();
            let cpu: Vec<f64> = w.iter().map(|w| w.cpu_ms_per_min).collect();
            let pct: Vec<f64> = cpu.iter().map(|c| c / 600.0).collect();
            let wk: Vec<f64> = w.iter().map(|w| w.wakeups_per_min).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                thousands(f.hosts),
                state,
                cell(&rss, 1),
                cell(&cpu, 0),
                cell(&pct, 1),
                cell(&wk, 0)
            );
        }
    }
    s.push('\n');
    for f in fp {
        let secs = |w: &[crate::daemon::Window]| w.first().map_or(0.0, |w| w.secs);
        let _ = writeln!(
            s,
            "- {} hosts: ready (every address in the kernel) {:.1} s after start; {} threads; {} idle windows of {:.0} s and {} churn windows of {:.0} s; {} elements in the kernel at the end of the churn run.",
            thousands(f.hosts),
            f.ready_ms / 1e3,
            f.threads,
            f.idle.len(),
            secs(&f.idle),
            f.churn.len(),
            secs(&f.churn),
            thousands(f.churn_elements as usize)
        );
    }
    s.push_str("\n![footprint](img/footprint.png)\n");
    s
}

fn latency(res: &Results) -> String {
    let Some(l) = &res.latency else {
        return not_measured();
    };
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "| what | ms, median [min-max] | samples (ms) |\n|---|---:|---|\n\
         | allowlist write -> the new literal element in the kernel | {} | {} |\n\
         | TTL expiry of the old answer -> the new address in the kernel (TTL {} s) | {} | {} |\n\n\
         Each sample is read by polling the kernel with `nft list set`, which takes {:.1} ms per \
         call: that is the resolution of both figures.\n\n![latency](img/latency.png)\n",
        cell(&l.edit_ms, 0),
        list(&l.edit_ms),
        l.ttl_s,
        cell(&l.ttl_ms, 0),
        list(&l.ttl_ms),
        l.poll_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_between_the_markers() {
        let doc = "intro\n<!-- bench:x -->\nold\nlines\n<!-- /bench:x -->\noutro\n";
        let out = replace_section(doc, "x", "new\n\n").unwrap();
        assert_eq!(
            out,
            "intro\n<!-- bench:x -->\nnew\n<!-- /bench:x -->\noutro\n"
        );
        // Idempotent.
        assert_eq!(replace_section(&out, "x", "new").unwrap(), out);
    }

    #[test]
    fn missing_markers_are_an_error() {
        assert!(replace_section("nothing", "x", "new").is_err());
        assert!(replace_section("<!-- /bench:x --><!-- bench:x -->", "x", "new").is_err());
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(100), "100");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(50_000), "50,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn every_section_renders_without_results() {
        let res = Results::default();
        for (name, text) in sections(&res) {
            assert!(!text.is_empty(), "section {name} is empty");
        }
    }
}
