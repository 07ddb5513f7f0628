//! `ssegate bench --chart FILE.png`: one picture of the run to share, beside
//! the table. Three panels, from the same run:
//!
//! ```text
//!  ┌──────────────────────────────────────────────────────────┐
//!  │ latency p50 / p99 / p99.9 per second (ms, log scale)      │
//!  ├─────────────────────────────┬────────────────────────────┤
//!  │ latency histogram, whole run │ open streams over time     │
//!  │ (ms, log scale; count)       │                            │
//!  └─────────────────────────────┴────────────────────────────┘
//! ```
//!
//! Drawn with plotters into a [`WIDTH`] × [`HEIGHT`] PNG. Text needs a
//! TrueType font, read at run time so that nothing is embedded in the
//! binary: `$SSEGATE_CHART_FONT`, else DejaVu Sans (Debian's
//! `fonts-dejavu-core`). With neither, the chart is drawn without any text
//! (curves, bars and grid only) and the bench says so.

use std::error::Error;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::stats::to_ms;
use super::timeline::Sample;

/// The PNG's size in pixels.
pub const WIDTH: u32 = 1600;
pub const HEIGHT: u32 = 1000;

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Light to dark: p50, p99, p99.9.
const PERCENTILE_COLORS: [RGBColor; 3] = [
    RGBColor(66, 146, 198),
    RGBColor(230, 85, 13),
    RGBColor(117, 17, 5),
];
const BARS: RGBColor = RGBColor(66, 146, 198);
const OPEN: RGBColor = RGBColor(49, 163, 84);

type Res<T> = Result<T, Box<dyn Error>>;
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// What the chart shows.
pub struct ChartData<'a> {
    /// The first line: what was measured.
    pub title: String,
    /// The second line: how (streams, protocol, window).
    pub subtitle: String,
    pub duration_s: f64,
    pub samples: &'a [Sample],
    /// The latency of the whole run, µs.
    pub latency: &'a Histogram<u64>,
}

/// Makes a TrueType font plotters' "sans-serif" for this process; the path
/// it came from, or why there is none.
pub fn load_font() -> Result<PathBuf, String> {
    let path = match std::env::var_os("SSEGATE_CHART_FONT") {
        Some(p) => PathBuf::from(p),
        None => FONT_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or("no TrueType font found (apt-get install fonts-dejavu-core, or set SSEGATE_CHART_FONT)")?,
    };
    let bytes = std::fs::read(&path).map_err(|e| format!("font {}: {e}", path.display()))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("font {}: not a usable TrueType font", path.display()))?;
    Ok(path)
}

/// Draws `data` into the PNG at `path`, with text when `text` (a font
/// was loaded by [`load_font`]).
pub fn draw(path: &Path, data: &ChartData<'_>, text: bool) -> Result<(), String> {
    draw_panels(path, data, text).map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

fn draw_panels(path: &Path, data: &ChartData<'_>, text: bool) -> Res<()> {
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let body = if text {
        let titled = root.titled(&data.title, ("sans-serif", 26))?;
        let (subtitle, body) = titled.split_vertically(28);
        subtitle.draw(&Text::new(
            data.subtitle.clone(),
            (16, 4),
            ("sans-serif", 16).into_font().color(&RGBColor(80, 80, 80)),
        ))?;
        body
    } else {
        root.clone()
    };
    let (_, height) = body.dim_in_pixel();
    let (top, bottom) = body.split_vertically(height as i32 / 2);
    let (left, right) = bottom.split_horizontally(WIDTH as i32 / 2);
    percentiles_panel(&top, data, text)?;
    histogram_panel(&left, data.latency, text)?;
    open_streams_panel(&right, data, text)?;
    root.present()?;
    Ok(())
}

/// "what: no data" in the middle of a panel (nothing without a font).
fn no_data(area: &Area<'_>, what: &str, text: bool) -> Res<()> {
    if text {
        let (_, h) = area.dim_in_pixel();
        area.draw(&Text::new(
            format!("{what}: no data in this run"),
            (24, h as i32 / 2),
            ("sans-serif", 18).into_font().color(&BLACK),
        ))?;
    }
    Ok(())
}

/// Powers of ten around the positive `values`, for a log axis.
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

/// Short number: 3 significant digits at most.
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

/// A chart builder with a caption and label areas when there is text.
fn builder<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    text: bool,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut builder = ChartBuilder::on(area);
    builder.margin(16);
    if text {
        builder
            .caption(caption, ("sans-serif", 20))
            .x_label_area_size(44)
            .y_label_area_size(64);
    }
    builder
}

fn percentiles_panel(area: &Area<'_>, data: &ChartData<'_>, text: bool) -> Res<()> {
    let series: [(&str, Vec<(f64, f64)>); 3] = [
        ("p50", points(data.samples, |l| l.p50)),
        ("p99", points(data.samples, |l| l.p99)),
        ("p99.9", points(data.samples, |l| l.p999)),
    ];
    if series[0].1.is_empty() {
        return no_data(area, "latency (events carrying \"ts_us\")", text);
    }
    let (lo, hi) = log_bounds(series.iter().flat_map(|(_, p)| p.iter().map(|(_, v)| *v)));
    let mut chart = builder(area, "Event latency per second, ms (log scale)", text)
        .build_cartesian_2d(0f64..data.duration_s.max(1.0), (lo..hi).log_scale())?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds since the start")
            .y_desc("ms")
            .y_label_formatter(&|y| short(*y))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 14));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    for ((label, points), color) in series.iter().zip(PERCENTILE_COLORS) {
        let style = color.stroke_width(2);
        let drawn = chart.draw_series(std::iter::once(PathElement::new(points.clone(), style)))?;
        if text {
            drawn
                .label(*label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        // Dots, so that a run of one or two seconds still shows its values.
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    Ok(())
}

/// (second, value) of the samples that measured latency; values floored at
/// 1 µs for the log axis.
fn points(
    samples: &[Sample],
    value: impl Fn(&super::timeline::IntervalLatency) -> f64,
) -> Vec<(f64, f64)> {
    samples
        .iter()
        .filter_map(|s| s.latency.as_ref().map(|l| (s.at_s, value(l).max(0.001))))
        .collect()
}

/// Bins a quarter of a power of two wide, in ms: (from, to, count).
fn latency_bins(latency: &Histogram<u64>) -> Vec<(f64, f64, u64)> {
    const STEP: f64 = 1.189_207_115; // 2^(1/4)
    latency
        .iter_log(1, STEP)
        .filter(|v| v.count_since_last_iteration() > 0)
        .map(|v| {
            let to = to_ms(v.value_iterated_to()).max(0.001);
            (to / STEP, to, v.count_since_last_iteration())
        })
        .collect()
}

fn histogram_panel(area: &Area<'_>, latency: &Histogram<u64>, text: bool) -> Res<()> {
    let bins = latency_bins(latency);
    if bins.is_empty() {
        return no_data(area, "latency histogram", text);
    }
    let (lo, hi) = log_bounds(bins.iter().flat_map(|(from, to, _)| [*from, *to]));
    let top = bins.iter().map(|b| b.2).max().unwrap_or(1) as f64 * 1.1;
    let caption = format!("Latency of all {} events, ms (log scale)", latency.len());
    let mut chart =
        builder(area, &caption, text).build_cartesian_2d((lo..hi).log_scale(), 0f64..top)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("ms")
            .y_desc("events")
            .x_label_formatter(&|x| short(*x))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 14));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    chart.draw_series(bins.iter().map(|&(from, to, count)| {
        Rectangle::new([(from, 0.0), (to, count as f64)], BARS.filled())
    }))?;
    Ok(())
}

fn open_streams_panel(area: &Area<'_>, data: &ChartData<'_>, text: bool) -> Res<()> {
    if data.samples.is_empty() {
        return no_data(area, "open streams", text);
    }
    // Nothing is open when the run starts.
    let curve: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
        .chain(data.samples.iter().map(|s| (s.at_s, s.open.max(0) as f64)))
        .collect();
    let top = curve.iter().map(|p| p.1).fold(0.0, f64::max) * 1.15 + 1.0;
    let mut chart = builder(area, "Open streams", text)
        .build_cartesian_2d(0f64..data.duration_s.max(1.0), 0f64..top)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds since the start")
            .y_desc("streams")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 14));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    chart.draw_series(std::iter::once(PathElement::new(
        curve.clone(),
        OPEN.stroke_width(2),
    )))?;
    chart.draw_series(curve.iter().map(|p| Circle::new(*p, 3, OPEN.filled())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::new_histogram;

    #[test]
    fn bins_cover_the_samples_on_a_log_axis() {
        let mut h = new_histogram();
        for us in [100, 110, 120, 1_000, 50_000] {
            h.record(us).unwrap();
        }
        let bins = latency_bins(&h);
        assert_eq!(bins.iter().map(|b| b.2).sum::<u64>(), 5);
        for (from, to, _) in &bins {
            assert!(from < to && *from > 0.0, "{bins:?}");
        }
        assert!(
            bins.first().unwrap().0 <= 0.1 && bins.last().unwrap().1 >= 50.0,
            "{bins:?}"
        );
        assert!(latency_bins(&new_histogram()).is_empty());
    }
}
