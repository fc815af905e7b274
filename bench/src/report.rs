//! `--report DIR`: the run's figures as JSON (`figures.json`) and its curves as PNG charts:
//! drain throughput over the sweep's grid (`sweep.png`) and the enqueue-to-start latency
//! distribution of zkq against ZooKeeper's floor (`latency.png`).

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::sweep::{self, Point};

/// Where charts find a font: DejaVu Sans, from Debian's `fonts-dejavu-core` (or another
/// distribution's path for it).
const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Percentiles written for each latency distribution.
const QUANTILES: [f64; 12] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0,
];

/// What a run measured, for the report.
#[derive(Debug, Default)]
pub struct Measured {
    pub figures: BTreeMap<&'static str, f64>,
    pub sweep: Vec<Point>,
    /// Enqueue-to-start latencies of zkq and of the raw start chain, µs.
    pub latency_us: Option<(Vec<u64>, Vec<u64>)>,
}

#[derive(Serialize)]
struct Json<'a> {
    figures: &'a BTreeMap<&'static str, f64>,
    sweep: &'a [Point],
    /// `[quantile, ms]` pairs.
    latency_ms: BTreeMap<&'static str, Vec<(f64, f64)>>,
}

impl Measured {
    /// Writes `figures.json` and the charts the run has data for into `dir`; returns the paths
    /// written.
    pub fn write(&mut self, dir: &Path) -> Result<Vec<String>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut written = Vec::new();
        let mut latency_ms = BTreeMap::new();
        if let Some((zkq, floor)) = &mut self.latency_us {
            zkq.sort_unstable();
            floor.sort_unstable();
            latency_ms.insert("zkq_enqueue_to_start", quantiles(zkq));
            latency_ms.insert("raw_start_chain", quantiles(floor));
        }
        let json = Json {
            figures: &self.figures,
            sweep: &self.sweep,
            latency_ms,
        };
        let path = dir.join("figures.json");
        let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path.display().to_string());

        if self.sweep.is_empty() && self.latency_us.is_none() {
            return Ok(written);
        }
        if let Err(e) = register_font() {
            println!("report: no charts: {e}");
            return Ok(written);
        }
        if !self.sweep.is_empty() {
            let path = dir.join("sweep.png");
            let references = [
                ("ZooKeeper raw single creates", "raw_single_create_per_s", GREY),
                (
                    "ZooKeeper raw job cycle (no queue logic)",
                    "raw_job_cycle_per_s",
                    BLACK,
                ),
            ]
            .into_iter()
            .filter_map(|(label, figure, color)| Some((label, *self.figures.get(figure)?, color)))
            .collect::<Vec<_>>();
            sweep_chart(&path, &self.sweep, &references).map_err(|e| format!("sweep chart: {e}"))?;
            written.push(path.display().to_string());
        }
        if let Some((zkq, floor)) = &self.latency_us {
            let path = dir.join("latency.png");
            latency_chart(&path, zkq, floor).map_err(|e| format!("latency chart: {e}"))?;
            written.push(path.display().to_string());
        }
        Ok(written)
    }
}

/// `[quantile, ms]` of sorted `us`.
fn quantiles(us: &[u64]) -> Vec<(f64, f64)> {
    if us.is_empty() {
        return Vec::new();
    }
    QUANTILES
        .iter()
        .map(|q| {
            let i = ((us.len() - 1) as f64 * q).round() as usize;
            (*q, us[i] as f64 / 1000.0)
        })
        .collect()
}

fn register_font() -> Result<(), String> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or("DejaVu Sans not found (install fonts-dejavu-core)")?;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    // Registered once per process, for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{path} is not a font plotters can read"))
}

const SERIES: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
];
const GREY: RGBColor = RGBColor(0x70, 0x70, 0x70);

type Drawn = Result<(), Box<dyn std::error::Error>>;

/// Jobs/s against partitions (one position per value of [`sweep::PARTITIONS`]), a line per
/// worker count, and horizontal reference lines (label, jobs/s, colour): the raw ceilings.
fn sweep_chart(path: &Path, points: &[Point], references: &[(&str, f64, RGBColor)]) -> Drawn {
    let root = BitMapBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = points
        .iter()
        .map(|p| p.per_s)
        .chain(references.iter().map(|(_, per_s, _)| *per_s))
        .fold(0.0, f64::max)
        // Room above every line for the legend.
        * 1.5;
    let last = (sweep::PARTITIONS.len() - 1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Drain throughput by partitions and worker processes",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.2..last + 0.2, 0.0..top.max(1.0))?;
    chart
        .configure_mesh()
        .x_labels(sweep::PARTITIONS.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            match sweep::PARTITIONS.get(i as usize) {
                Some(p) if (x - i).abs() < 1e-6 && i >= 0.0 => p.to_string(),
                _ => String::new(),
            }
        })
        .x_desc("partitions")
        .y_desc("jobs started per second")
        .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
        .label_style(("sans-serif", 16))
        .draw()?;
    for (color, workers) in SERIES.iter().zip(sweep::WORKERS) {
        let line: Vec<(f64, f64)> = sweep::PARTITIONS
            .iter()
            .enumerate()
            .filter_map(|(i, partitions)| {
                let point = points
                    .iter()
                    .find(|p| p.partitions == *partitions && p.workers == workers)?;
                Some((i as f64, point.per_s))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
            .label(format!(
                "{workers} worker process{}",
                if workers == 1 { "" } else { "es" }
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(line.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    for &(label, per_s, color) in references {
        chart
            .draw_series(LineSeries::new(
                vec![(-0.2, per_s), (last + 0.2, per_s)],
                color.stroke_width(1),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present()?;
    Ok(())
}

/// The series' legend, at `position`.
fn draw_legend<'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> Drawn {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
    Ok(())
}

/// The share of starts within each latency (a CDF, log time axis), of zkq and of the floor.
fn latency_chart(path: &Path, zkq: &[u64], floor: &[u64]) -> Drawn {
    let root = BitMapBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let ms = |us: u64| (us as f64 / 1000.0).max(0.1);
    let longest = zkq.iter().chain(floor).copied().max().map_or(1.0, ms) * 1.2;
    let shortest = zkq.iter().chain(floor).copied().min().map_or(0.1, ms) / 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Enqueue-to-start latency: zkq against ZooKeeper's floor",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((shortest.max(0.1)..longest.max(1.0)).log_scale(), 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds after the enqueue (log scale)")
        .y_desc("% of jobs started")
        .x_label_formatter(&|x| format!("{x}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 16))
        .draw()?;
    let curves = [
        (zkq, SERIES[0], "zkq: enqueue to handler start"),
        (floor, GREY, "floor: create, watch event, read, claim multi"),
    ];
    for (sorted, color, label) in curves {
        if sorted.is_empty() {
            continue;
        }
        // At most ~1,000 points per curve, the tail always in.
        let step = (sorted.len() / 1000).max(1);
        let n = sorted.len() as f64;
        let cdf: Vec<(f64, f64)> = sorted
            .iter()
            .enumerate()
            .filter(|(i, _)| i % step == 0 || *i + 1 == sorted.len())
            .map(|(i, us)| (ms(*us), 100.0 * (i + 1) as f64 / n))
            .collect();
        chart
            .draw_series(LineSeries::new(cdf, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}
