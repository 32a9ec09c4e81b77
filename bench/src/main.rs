//! `openclaw-egress-bench`: the benchmark harness of openclaw-egress.
//!
//! `measure` runs the figures (each beside its comparison, in the same run,
//! in throwaway network namespaces), saves the raw samples as JSON, and
//! renders them: tables into docs/benchmarks.md (between its
//! `<!-- bench:NAME -->` markers) and PNG plots into docs/img/. `render`
//! redoes the second half from the JSON. `bench/run` is the documented entry
//! point (it installs the tools and builds the release binaries first).
//!
//! Needs root (namespaces, nftables). Never run by the test suite: timings
//! are reported, never asserted.

mod apply;
mod daemon;
mod dataplane;
mod machine;
mod plot;
mod report;
mod resolve;
mod scripts;
mod stats;
mod util;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use dataplane::Filter;

#[derive(Parser)]
#[command(about = "openclaw-egress benchmarks, side by side with the scripts' method")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Figure {
    Apply,
    Rotate,
    Dataplane,
    Resolve,
    Footprint,
    Latency,
}

#[derive(clap::Args)]
struct Paths {
    /// Raw samples (written by `measure`, read by `render`).
    #[arg(long, default_value = "bench/results.json")]
    json: PathBuf,
    /// The page whose `<!-- bench:NAME -->` sections are rewritten.
    #[arg(long, default_value = "docs/benchmarks.md")]
    doc: PathBuf,
    /// Folder of the PNG plots.
    #[arg(long, default_value = "docs/img")]
    img: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure (all figures, or those given with --only), then render.
    Measure {
        /// Fewer runs and sizes, shorter windows: a smoke run of a few minutes.
        #[arg(long)]
        quick: bool,
        /// Runs per figure (default 7, quick 3).
        #[arg(long)]
        runs: Option<usize>,
        /// Only these figures; the others are kept from the existing JSON.
        #[arg(long, value_delimiter = ',')]
        only: Vec<Figure>,
        /// Folder of the release binaries under test.
        #[arg(long, default_value = "target/release")]
        bin_dir: PathBuf,
        #[command(flatten)]
        paths: Paths,
    },
    /// Render docs/benchmarks.md and the plots from the saved samples.
    Render {
        #[command(flatten)]
        paths: Paths,
    },
}

/// Everything one run measured; absent figures were not measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    /// The machine.
    pub machine: machine::Machine,
    /// Whether this was a `--quick` run.
    pub quick: bool,
    /// Figure 1.
    pub apply: Option<Vec<apply::ApplyResult>>,
    /// Figure 1, the rotated host.
    pub rotate: Option<apply::RotateResult>,
    /// Figure 2.
    pub dataplane: Option<Vec<dataplane::DataplaneResult>>,
    /// Figure 2's load: client threads and seconds counted per run.
    pub dataplane_load: Option<(usize, f64)>,
    /// Figure 3.
    pub resolve: Option<Vec<resolve::ResolveResult>>,
    /// Figure 4.
    pub footprint: Option<Vec<daemon::FootprintResult>>,
    /// Figure 5.
    pub latency: Option<daemon::LatencyResult>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Measure {
            quick,
            runs,
            only,
            bin_dir,
            paths,
        } => {
            testkit::require_root();
            let bins = util::Bins::in_dir(&bin_dir)?;
            let mut res = if only.is_empty() {
                Results::default()
            } else {
                load(&paths.json).unwrap_or_default()
            };
            res.machine = machine::describe();
            res.quick = quick;
            let want = |f: Figure| only.is_empty() || only.contains(&f);
            let runs = runs.unwrap_or(if quick { 3 } else { 7 });
            if want(Figure::Apply) {
                let sizes: &[usize] = if quick {
                    &[100, 1_000, 10_000]
                } else {
                    &[100, 1_000, 10_000, 50_000]
                };
                res.apply = Some(apply::run(&bins, sizes, runs)?);
            }
            if want(Figure::Rotate) {
                res.rotate = Some(apply::rotate(&bins, 10_000, runs)?);
            }
            if want(Figure::Dataplane) {
                let load = dataplane::Load {
                    clients: 4,
                    warmup: Duration::from_millis(500),
                    measure: Duration::from_secs(if quick { 1 } else { 3 }),
                };
                let filters = [
                    Filter::None,
                    Filter::Ours(0),
                    Filter::Ours(1_000),
                    Filter::Ours(10_000),
                    Filter::Scripts(0),
                    Filter::Scripts(1_000),
                    Filter::Scripts(10_000),
                ];
                let dp_runs = if quick { 2 } else { runs };
                res.dataplane = Some(dataplane::run(&bins, &filters, dp_runs, load)?);
                res.dataplane_load = Some((load.clients, load.measure.as_secs_f64()));
            }
            if want(Figure::Resolve) {
                // One dig costs tens of ms on a busy machine (process start),
                // so a 10,000-name loop takes minutes: fewer runs of it.
                let dig_runs = |n: usize| match (quick, n >= 10_000) {
                    (true, _) => 1,
                    (false, true) => 1,
                    (false, false) => 3,
                };
                let sizes: &[usize] = if quick { &[1_000] } else { &[1_000, 10_000] };
                res.resolve = Some(resolve::run(
                    sizes,
                    if quick { 3 } else { runs },
                    dig_runs,
                    64,
                )?);
            }
            if want(Figure::Footprint) {
                let mut fp = Vec::new();
                for hosts in [1_000, 10_000] {
                    let (windows, idle, churn) = if quick {
                        (1, Duration::from_secs(10), Duration::from_secs(10))
                    } else {
                        (2, Duration::from_secs(60), Duration::from_secs(30))
                    };
                    fp.push(daemon::footprint(&bins, hosts, windows, idle, churn, 5)?);
                }
                res.footprint = Some(fp);
            }
            if want(Figure::Latency) {
                res.latency = Some(daemon::latency(&bins, if quick { 5 } else { 15 })?);
            }
            res.machine.load_end = machine::loadavg();
            save(&paths.json, &res)?;
            render(&res, &paths)
        }
        Cmd::Render { paths } => {
            let res = load(&paths.json)?;
            render(&res, &paths)
        }
    }
}

fn load(path: &Path) -> Result<Results> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))
}

fn save(path: &Path, res: &Results) -> Result<()> {
    let text = serde_json::to_string_pretty(res)? + "\n";
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn render(res: &Results, paths: &Paths) -> Result<()> {
    std::fs::create_dir_all(&paths.img)
        .with_context(|| format!("cannot create {}", paths.img.display()))?;
    plot::init_font()?;
    let plots = plot::all(res, &paths.img)?;
    let doc = std::fs::read_to_string(&paths.doc)
        .with_context(|| format!("cannot read {}", paths.doc.display()))?;
    let mut out = doc;
    for (name, text) in report::sections(res) {
        out = report::replace_section(&out, &name, &text)
            .with_context(|| format!("in {}", paths.doc.display()))?;
    }
    std::fs::write(&paths.doc, out)
        .with_context(|| format!("cannot write {}", paths.doc.display()))?;
    if plots.is_empty() {
        bail!("nothing to plot: {} holds no figure", paths.json.display());
    }
    eprintln!(
        "wrote {} and {} plots in {}",
        paths.doc.display(),
        plots.len(),
        paths.img.display()
    );
    Ok(())
}
