//! PNG plots of the figures (plotters, bitmap backend, text by ab_glyph).
//!
//! ab_glyph renders a TrueType font it is handed as bytes, so nothing here
//! needs fontconfig or freetype; the font is DejaVu Sans (Debian package
//! fonts-dejavu-core, which bench/run installs).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::dataplane::Filter;
use crate::report::thousands;
use crate::stats::Summary;
use crate::Results;

const W: u32 = 900;
const H: u32 = 520;
const FONT: &str = "sans-serif";

/// Where bench/run's font package puts the font (and a few other places).
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

const OURS: RGBColor = RGBColor(31, 119, 180);
const SCRIPTS: RGBColor = RGBColor(214, 39, 40);
const RELOAD: RGBColor = RGBColor(255, 127, 14);
const FLOOR: RGBColor = RGBColor(44, 160, 44);
const NONE: RGBColor = RGBColor(127, 127, 127);

/// Registers the font with plotters (once per process).
pub fn init_font() -> Result<()> {
    let path = FONT_PATHS
        .iter()
        .find(|p| Path::new(p).is_file())
        .with_context(|| {
            format!("no DejaVuSans.ttf (looked in {FONT_PATHS:?}); install fonts-dejavu-core")
        })?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    // plotters keeps fonts for the whole process and wants them 'static.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path} is not a usable font"))
}

type Err = Box<dyn std::error::Error>;

/// Draws into a W x H RGB buffer and writes it as PNG.
fn png(
    path: &Path,
    draw: impl FnOnce(DrawingArea<BitMapBackend, Shift>) -> Result<(), Err>,
) -> Result<()> {
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        draw(root).map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W, H);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(&buf)?;
    w.finish()?;
    Ok(())
}

/// One line of the apply plot: label, colour, (entries, summary) points.
type Line<'a> = (&'a str, RGBColor, Vec<(f64, Summary)>);

/// One bar series: a label, a colour, one summary per group (or none).
struct Series {
    label: String,
    color: RGBColor,
    values: Vec<Option<Summary>>,
}

/// Grouped bars with min-max whiskers, on a linear or log y axis.
fn bars(
    root: &DrawingArea<BitMapBackend, Shift>,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[Series],
    log_y: bool,
) -> Result<(), Err> {
    let all: Vec<&Summary> = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .collect();
    if all.is_empty() {
        return Err("no values".into());
    }
    let max = all.iter().map(|s| s.max).fold(0.0, f64::max) * 1.15;
    let min = all.iter().map(|s| s.min).fold(f64::INFINITY, f64::min);
    let x = -0.5..(groups.len() as f64 - 0.5);
    let mut b = ChartBuilder::on(root);
    b.caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    if log_y {
        let lo = (min / 2.0).max(1e-3);
        let mut c = b.build_cartesian_2d(x, (lo..max * 2.0).log_scale())?;
        draw_bars(&mut c, y_desc, groups, series, lo)
    } else {
        let mut c = b.build_cartesian_2d(x, 0.0..max)?;
        draw_bars(&mut c, y_desc, groups, series, 0.0)
    }
}

fn draw_bars<'a, Y>(
    c: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    y_desc: &str,
    groups: &[String],
    series: &[Series],
    base: f64,
) -> Result<(), Err>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < groups.len() {
            groups[i as usize].clone()
        } else {
            String::new()
        }
    };
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() * 10 + 1)
        .x_label_formatter(&label)
        .y_label_formatter(&|y| {
            if *y >= 10.0 {
                format!("{y:.0}")
            } else if *y >= 1.0 {
                format!("{y:.1}")
            } else {
                format!("{y:.2}")
            }
        })
        .y_desc(y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    let width = 0.8 / series.len() as f64;
    for (j, s) in series.iter().enumerate() {
        let color = s.color;
        let bars: Vec<(f64, Summary)> = s
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i as f64 - 0.4 + j as f64 * width, v)))
            .collect();
        c.draw_series(bars.iter().map(|(x0, v)| {
            Rectangle::new(
                [(*x0 + width * 0.05, base), (*x0 + width * 0.95, v.median)],
                color.filled(),
            )
        }))?
        .label(s.label.clone())
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
        c.draw_series(bars.iter().map(|(x0, v)| {
            let mid = x0 + width / 2.0;
            PathElement::new(vec![(mid, v.min), (mid, v.max)], BLACK.stroke_width(2))
        }))?;
    }
    c.configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

/// Renders every figure present in `res` into `dir`; returns the files.
pub fn all(res: &Results, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if let Some(apply) = &res.apply {
        let p = dir.join("apply.png");
        let lines: Vec<Line> = vec![
            (
                "openclaw-egress apply",
                OURS,
                apply
                    .iter()
                    .filter_map(|a| Summary::of(&a.ours_ms).map(|s| (a.entries as f64, s)))
                    .collect(),
            ),
            (
                "scripts: nft -f, one rule per entry",
                SCRIPTS,
                apply
                    .iter()
                    .filter_map(|a| Summary::of(&a.scripts_ms).map(|s| (a.entries as f64, s)))
                    .collect(),
            ),
            (
                "scripts: delete table + nft -f",
                RELOAD,
                apply
                    .iter()
                    .filter_map(|a| {
                        Summary::of(&a.scripts_reload_ms).map(|s| (a.entries as f64, s))
                    })
                    .collect(),
            ),
            (
                "floor: nft -f into one set",
                FLOOR,
                apply
                    .iter()
                    .filter_map(|a| Summary::of(&a.floor_ms).map(|s| (a.entries as f64, s)))
                    .collect(),
            ),
        ];
        png(&p, |root| {
            root.fill(&WHITE)?;
            let pts: Vec<&Summary> = lines
                .iter()
                .flat_map(|l| l.2.iter().map(|p| &p.1))
                .collect();
            if pts.is_empty() {
                return Err("no apply samples".into());
            }
            let ymin = pts.iter().map(|s| s.min).fold(f64::INFINITY, f64::min) / 1.5;
            let ymax = pts.iter().map(|s| s.max).fold(0.0, f64::max) * 1.5;
            let xs: Vec<f64> = apply.iter().map(|a| a.entries as f64).collect();
            let xmin = xs.iter().cloned().fold(f64::INFINITY, f64::min) / 1.5;
            let xmax = xs.iter().cloned().fold(0.0, f64::max) * 1.5;
            let mut c = ChartBuilder::on(&root)
                .caption(
                    "Apply N entries into an empty kernel (median, min-max)",
                    (FONT, 20),
                )
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(70)
                .build_cartesian_2d((xmin..xmax).log_scale(), (ymin.max(0.1)..ymax).log_scale())?;
            c.configure_mesh()
                .x_desc("entries")
                .y_desc("wall time (ms)")
                .x_label_formatter(&|x| thousands(x.round() as usize))
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 15))
                .draw()?;
            for (label, color, pts) in &lines {
                let color = *color;
                c.draw_series(LineSeries::new(
                    pts.iter().map(|(x, s)| (*x, s.median)),
                    color.stroke_width(2),
                ))?
                .label(*label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
                c.draw_series(
                    pts.iter()
                        .map(|(x, s)| Circle::new((*x, s.median), 4, color.filled())),
                )?;
                c.draw_series(pts.iter().map(|(x, s)| {
                    PathElement::new(vec![(*x, s.min), (*x, s.max)], color.stroke_width(2))
                }))?;
            }
            c.configure_series_labels()
                .label_font((FONT, 14))
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()?;
            root.present()?;
            Ok(())
        })?;
        out.push(p);
    }
    if let Some(rot) = &res.rotate {
        let p = dir.join("rotate.png");
        let reload = res
            .apply
            .iter()
            .flatten()
            .find(|a| a.entries == rot.entries)
            .and_then(|a| Summary::of(&a.scripts_reload_ms));
        let read_write: Vec<f64> = rot
            .ours_read_ms
            .iter()
            .zip(&rot.ours_write_ms)
            .map(|(r, w)| r + w)
            .collect();
        let groups = vec![
            "ours: kernel write".to_string(),
            "ours: read + diff + write".to_string(),
            "floor: nft -f, same change".to_string(),
            "scripts: full reload".to_string(),
        ];
        let series = vec![Series {
            label: format!("one rotated host, {} entries", thousands(rot.entries)),
            color: OURS,
            values: vec![
                Summary::of(&rot.ours_write_ms),
                Summary::of(&read_write),
                Summary::of(&rot.floor_ms),
                reload,
            ],
        }];
        png(&p, |root| {
            root.fill(&WHITE)?;
            bars(
                &root,
                "One rotated host in a 10,000-entry policy (median, min-max)",
                "ms (log)",
                &groups,
                &series,
                true,
            )?;
            root.present()?;
            Ok(())
        })?;
        out.push(p);
    }
    if let Some(dp) = &res.dataplane {
        let p = dir.join("dataplane.png");
        let get = |f: Filter| {
            dp.iter()
                .find(|d| d.filter == f)
                .and_then(|d| Summary::of(&d.cps))
        };
        let sizes = [0usize, 1_000, 10_000];
        let groups: Vec<String> = sizes
            .iter()
            .map(|n| format!("{} entries", thousands(*n)))
            .collect();
        let series = vec![
            Series {
                label: "no filter".into(),
                color: NONE,
                values: sizes.iter().map(|_| get(Filter::None)).collect(),
            },
            Series {
                label: "ours (sets)".into(),
                color: OURS,
                values: sizes.iter().map(|n| get(Filter::Ours(*n))).collect(),
            },
            Series {
                label: "scripts (one rule per address)".into(),
                color: SCRIPTS,
                values: sizes.iter().map(|n| get(Filter::Scripts(*n))).collect(),
            },
        ];
        png(&p, |root| {
            root.fill(&WHITE)?;
            bars(
                &root,
                "New TCP connections per second through the filter (median, min-max)",
                "connections/s",
                &groups,
                &series,
                false,
            )?;
            root.present()?;
            Ok(())
        })?;
        out.push(p);
    }
    if let Some(rs) = &res.resolve {
        let p = dir.join("resolve.png");
        let groups: Vec<String> = rs
            .iter()
            .map(|r| format!("{} hosts", thousands(r.hosts)))
            .collect();
        let series = vec![
            Series {
                label: "ours: concurrent, A + AAAA".into(),
                color: OURS,
                values: rs.iter().map(|r| Summary::of(&r.ours_ms)).collect(),
            },
            Series {
                label: "scripts: sequential dig, A only".into(),
                color: SCRIPTS,
                values: rs.iter().map(|r| Summary::of(&r.dig_ms)).collect(),
            },
        ];
        png(&p, |root| {
            root.fill(&WHITE)?;
            bars(
                &root,
                "Resolving N hostnames against a local dnsmasq (median, min-max)",
                "ms (log)",
                &groups,
                &series,
                true,
            )?;
            root.present()?;
            Ok(())
        })?;
        out.push(p);
    }
    if let Some(fp) = &res.footprint {
        let p = dir.join("footprint.png");
        let groups: Vec<String> = fp
            .iter()
            .map(|f| format!("{} hosts", thousands(f.hosts)))
            .collect();
        let rss = |w: &[crate::daemon::Window]| {
            Summary::of(
                &w.iter()
                    .map(|w| w.rss_kib as f64 / 1024.0)
                    .collect::<Vec<_>>(),
            )
        };
        let cpu = |w: &[crate::daemon::Window]| {
            Summary::of(
                &w.iter()
                    .map(|w| w.cpu_ms_per_min / 600.0)
                    .collect::<Vec<_>>(),
            )
        };
        let rss_series = vec![
            Series {
                label: "idle".into(),
                color: NONE,
                values: fp.iter().map(|f| rss(&f.idle)).collect(),
            },
            Series {
                label: "churn".into(),
                color: OURS,
                values: fp.iter().map(|f| rss(&f.churn)).collect(),
            },
        ];
        let cpu_series = vec![
            Series {
                label: "idle".into(),
                color: NONE,
                values: fp.iter().map(|f| cpu(&f.idle)).collect(),
            },
            Series {
                label: "churn".into(),
                color: OURS,
                values: fp.iter().map(|f| cpu(&f.churn)).collect(),
            },
        ];
        png(&p, |root| {
            root.fill(&WHITE)?;
            let halves = root.split_evenly((1, 2));
            bars(&halves[0], "Daemon RSS", "MiB", &groups, &rss_series, false)?;
            bars(
                &halves[1],
                "Daemon CPU",
                "% of one core",
                &groups,
                &cpu_series,
                false,
            )?;
            root.present()?;
            Ok(())
        })?;
        out.push(p);
    }
    if let Some(lat) = &res.latency {
        let p = dir.join("latency.png");
        let groups = vec![
            "allowlist write -> kernel".to_string(),
            "TTL expiry -> kernel".to_string(),
        ];
        let series = vec![Series {
            label: "openclaw-egressd".into(),
            color: OURS,
            values: vec![Summary::of(&lat.edit_ms), Summary::of(&lat.ttl_ms)],
        }];
        png(&p, |root| {
            root.fill(&WHITE)?;
            bars(
                &root,
                "Daemon latency (median, min-max)",
                "ms",
                &groups,
                &series,
                false,
            )?;
            root.present()?;
            Ok(())
        })?;
        out.push(p);
    }
    if let Some(p) = out.iter().find(|p| !p.is_file()) {
        bail!("{} was not written", p.display());
    }
    Ok(out)
}
