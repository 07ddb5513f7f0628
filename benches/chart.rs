//! Draws the comparison chart from a `results.json` written by
//! `benches/compare.sh`: latency percentiles per target, the proxy's
//! CPU-seconds per million delivered events, and its memory per idle stream.
//!
//! Run with:
//!
//! ```sh
//! cargo bench --bench chart -- benches/results/results.json benches/results/chart.png
//! ```
//!
//! (`compare.sh` runs this itself at the end.) It is a bench target with
//! `harness = false` so that its plotting dependencies stay dev-dependencies
//! and out of the proxy's build.
//!
//! Text needs a TrueType font, read at run time so the build needs nothing
//! but crates.io: `$SSEGATE_CHART_FONT`, else DejaVu Sans from Debian's
//! `fonts-dejavu-core` (`/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf`).
//!
//! Which runs it reads: latency from the `latency` scenario (from `fanout`
//! if there is none), CPU from `fanout`, memory from `idle`. A target whose
//! run failed or has no such figure is left out of that panel.

use std::error::Error;
use std::process::ExitCode;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

type Res<T> = Result<T, Box<dyn Error>>;

/// The targets in the order the report uses; unknown ones follow.
const ORDER: &[&str] = &["direct", "ssegate", "nginx", "caddy", "haproxy"];

const PERCENTILES: [(&str, &str); 4] = [
    ("p50", "lat_p50_ms"),
    ("p90", "lat_p90_ms"),
    ("p99", "lat_p99_ms"),
    ("p99.9", "lat_p999_ms"),
];

/// Light to dark: one shade per percentile.
const SHADES: [RGBColor; 4] = [
    RGBColor(158, 202, 225),
    RGBColor(66, 146, 198),
    RGBColor(8, 81, 156),
    RGBColor(8, 38, 84),
];

const SSEGATE: RGBColor = RGBColor(230, 85, 13);
const PEER: RGBColor = RGBColor(120, 120, 120);

/// What the chart shows, pulled out of results.json.
struct Figures {
    subtitle: String,
    latency_from: String,
    latency: Vec<(String, [Option<f64>; 4])>,
    cpu: Vec<(String, f64)>,
    memory: Vec<(String, f64)>,
}

fn ok_runs<'a>(doc: &'a Value, scenario: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    doc["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |r| r["scenario"] == scenario && r["ok"] == true)
}

fn rank(target: &str) -> usize {
    ORDER
        .iter()
        .position(|t| *t == target)
        .unwrap_or(ORDER.len())
}

fn sorted<T>(mut v: Vec<(String, T)>) -> Vec<(String, T)> {
    v.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then(a.0.cmp(&b.0)));
    v
}

/// `key` of the derived figures of every good run of `scenario`, by target.
fn per_target(doc: &Value, scenario: &str, key: &str) -> Vec<(String, f64)> {
    sorted(
        ok_runs(doc, scenario)
            .filter_map(|r| {
                let v = r["derived"][key].as_f64()?;
                Some((r["target"].as_str()?.to_string(), v))
            })
            .collect(),
    )
}

fn figures(doc: &Value) -> Figures {
    let latency_from = if ok_runs(doc, "latency").next().is_some() {
        "latency"
    } else {
        "fanout"
    };
    let latency = sorted(
        ok_runs(doc, latency_from)
            .filter_map(|r| {
                let d = &r["derived"];
                let values = PERCENTILES.map(|(_, key)| d[key].as_f64());
                let target = r["target"].as_str()?.to_string();
                values
                    .iter()
                    .any(Option::is_some)
                    .then_some((target, values))
            })
            .collect(),
    );
    let summary = ok_runs(doc, latency_from)
        .find_map(|r| r["params"]["summary"].as_str())
        .unwrap_or("")
        .to_string();
    let machine = &doc["machine"];
    let subtitle = format!(
        "{}{} · {} cores, {} · proxies on one pinned core, one worker",
        doc["started"].as_str().unwrap_or("?"),
        if doc["quick"] == true {
            " · QUICK SMOKE RUN, not a measurement"
        } else {
            ""
        },
        machine["nproc"],
        machine["cpu_model"].as_str().unwrap_or("?"),
    );
    Figures {
        subtitle,
        latency_from: format!("{latency_from}: {summary}"),
        latency,
        cpu: per_target(doc, "fanout", "proxy_cpu_s_per_m_events"),
        memory: per_target(doc, "idle", "kib_per_stream"),
    }
}

/// Short label: 3 significant digits at most.
fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Black text whose bottom centre sits at the given point.
fn above(size: u32) -> TextStyle<'static> {
    ("sans-serif", size)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom))
}

/// Powers of ten around the data, for a log axis.
fn log_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.01, 10.0);
    }
    (
        10f64.powf((lo / 1.5).log10().floor()),
        10f64.powf((hi * 1.5).log10().ceil()),
    )
}

fn no_data(area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>, what: &str) -> Res<()> {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        format!("{what}: no data in this run"),
        (20, h as i32 / 2),
        ("sans-serif", 18).into_font().color(&BLACK),
    ))?;
    let _ = w;
    Ok(())
}

fn latency_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    f: &Figures,
) -> Res<()> {
    if f.latency.is_empty() {
        return no_data(area, "latency");
    }
    let n = f.latency.len();
    let (lo, hi) = log_bounds(
        f.latency
            .iter()
            .flat_map(|(_, v)| v.iter().flatten().copied()),
    );
    let names: Vec<String> = f.latency.iter().map(|(t, _)| t.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Event latency percentiles, ms (log scale)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_label_style(("sans-serif", 16))
        .x_desc(f.latency_from.as_str())
        .axis_desc_style(("sans-serif", 13))
        .y_desc("ms")
        .y_label_formatter(&|y| short(*y))
        .draw()?;
    let width = 0.8 / PERCENTILES.len() as f64;
    for (p, (label, _)) in PERCENTILES.iter().enumerate() {
        let shade = SHADES[p];
        let bars: Vec<_> = f
            .latency
            .iter()
            .enumerate()
            .filter_map(|(i, (_, v))| v[p].map(|v| (i, v)))
            .collect();
        chart
            .draw_series(bars.iter().map(|&(i, v)| {
                let x0 = i as f64 - 0.4 + p as f64 * width;
                Rectangle::new([(x0, lo), (x0 + width * 0.9, v.max(lo))], shade.filled())
            }))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], shade.filled()));
        chart.draw_series(bars.iter().map(|&(i, v)| {
            let x = i as f64 - 0.4 + (p as f64 + 0.45) * width;
            Text::new(short(v), (x, v.max(lo) * 1.05), above(11))
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// One bar per target, ssegate highlighted, the value (and its ratio to
/// nginx, when there is an nginx bar) above each bar.
fn bar_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    what: &str,
    bars: &[(String, f64)],
) -> Res<()> {
    if bars.is_empty() {
        return no_data(area, what);
    }
    let n = bars.len();
    let top = bars.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1e-9) * 1.25;
    let nginx = bars.iter().find(|(t, _)| t == "nginx").map(|(_, v)| *v);
    let names: Vec<String> = bars.iter().map(|(t, _)| t.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_label_style(("sans-serif", 16))
        .x_desc(what)
        .axis_desc_style(("sans-serif", 13))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (t, v))| {
        let color = if t == "ssegate" { SSEGATE } else { PEER };
        Rectangle::new(
            [(i as f64 - 0.3, 0.0), (i as f64 + 0.3, *v)],
            color.filled(),
        )
    }))?;
    chart.draw_series(
        bars.iter()
            .enumerate()
            .map(|(i, (_, v))| Text::new(short(*v), (i as f64, v + top * 0.055), above(15))),
    )?;
    if let Some(n) = nginx.filter(|n| *n > 0.0) {
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            Text::new(
                format!("{:.2}× nginx", v / n),
                (i as f64, v + top * 0.015),
                above(12),
            )
        }))?;
    }
    Ok(())
}

fn draw(f: &Figures, out: &str) -> Res<()> {
    let root = BitMapBackend::new(out, (1800, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled("ssegate and its peers, one run", ("sans-serif", 28))?;
    let (sub, body) = root.split_vertically(30);
    sub.draw(&Text::new(
        f.subtitle.clone(),
        (12, 4),
        ("sans-serif", 15).into_font().color(&RGBColor(80, 80, 80)),
    ))?;
    let (left, rest) = body.split_horizontally(820);
    let (middle, right) = rest.split_horizontally(490);
    latency_panel(&left, f)?;
    bar_panel(
        &middle,
        "Proxy CPU-s per million events",
        "fanout: utime+stime of the proxy's processes",
        &f.cpu,
    )?;
    bar_panel(
        &right,
        "Proxy memory per idle stream, KiB",
        "idle: RSS delta over the baseline / streams",
        &f.memory,
    )?;
    root.present()?;
    Ok(())
}

fn run() -> Res<()> {
    // cargo bench passes --bench to harness = false targets.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [input, output] = args.as_slice() else {
        return Err("usage: cargo bench --bench chart -- RESULTS.json OUT.png".into());
    };
    let text = std::fs::read_to_string(input).map_err(|e| format!("{input}: {e}"))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{input}: {e}"))?;
    // The same font lookup as `ssegate bench --chart`.
    ssegate::bench::chart::load_font()?;
    draw(&figures(&doc), output)?;
    println!("chart: {output}");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chart: {e}");
            ExitCode::FAILURE
        }
    }
}
