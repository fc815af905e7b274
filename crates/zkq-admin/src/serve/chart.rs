//! The throughput chart: inline SVG drawn on the server, so it needs no script or library.

use maud::{html, Markup};

use super::throughput::{SAMPLE_EVERY, WINDOW};

/// The drawing's size: about its size on a page, so that its text matches the page's.
const WIDTH: f64 = 1100.0;
const HEIGHT: f64 = 180.0;
/// Room for the y axis' labels on the left, half a label above, and the x axis' below.
const LEFT: f64 = 48.0;
const TOP: f64 = 8.0;
const BOTTOM: f64 = 20.0;

/// A line of jobs finished per second over the last [`WINDOW`], ending at `now_ms`;
/// `uncountable` partitions are left out of it (and the caption says so).
pub fn throughput(points: &[(u64, f64)], uncountable: usize, now_ms: u64) -> Markup {
    let window_ms = WINDOW.as_millis() as f64;
    let peak = points.iter().map(|(_, r)| *r).fold(0.0, f64::max);
    let top = nice_ceiling(peak);
    let x = |at_ms: u64| {
        LEFT + (WIDTH - LEFT) * (1.0 - (now_ms.saturating_sub(at_ms) as f64 / window_ms).min(1.0))
    };
    let y = |rate: f64| TOP + (HEIGHT - BOTTOM - TOP) * (1.0 - rate / top);
    let line: Vec<String> = points
        .iter()
        .map(|(at, rate)| format!("{:.1},{:.1}", x(*at), y(*rate)))
        .collect();
    let area = match (points.first(), points.last()) {
        (Some((first, _)), Some((last, _))) => format!(
            "{:.1},{:.1} {} {:.1},{:.1}",
            x(*first),
            HEIGHT - BOTTOM,
            line.join(" "),
            x(*last),
            HEIGHT - BOTTOM
        ),
        _ => String::new(),
    };
    let latest = points.last().map_or(0.0, |(_, r)| *r);
    let label = format!(
        "Jobs finished per second over the last 15 minutes: now {}, peak {}",
        rate_text(latest),
        rate_text(peak)
    );
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(label) {
                title { (label) }
                @for fraction in [0.0, 0.5, 1.0] {
                    line.grid x1=(LEFT) x2=(WIDTH) y1=(y(top * fraction)) y2=(y(top * fraction)) {}
                    text.axis x=(LEFT - 6.0) y=(y(top * fraction) + 4.0) text-anchor="end" { (rate_text(top * fraction)) }
                }
                @for minutes in [15u64, 10, 5, 0] {
                    text.axis x=(round(x(now_ms.saturating_sub(minutes * 60_000)))) y=(HEIGHT - 4.0)
                        text-anchor=(if minutes == 15 { "start" } else if minutes == 0 { "end" } else { "middle" }) {
                        @if minutes == 0 { "now" } @else { "−" (minutes) " min" }
                    }
                }
                @if points.len() >= 2 {
                    polygon.area points=(area) {}
                    polyline.line points=(line.join(" ")) {}
                }
            }
            figcaption {
                @if points.len() < 2 {
                    "Collecting: a point every " (SAMPLE_EVERY.as_secs()) " s from the dashboard's start. "
                } @else {
                    "Now " strong { (rate_text(latest)) } " jobs/s, peak " (rate_text(peak)) ". "
                }
                "Every attempt that ended counts: done, retried, dead, released."
                @if uncountable > 0 {
                    " " strong { (uncountable) " partition(s) are not counted" }
                    ": their claims folder passed ZooKeeper's limit of 2³¹ changes."
                }
            }
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// A round value at or above `peak`, for the top of the y axis.
fn nice_ceiling(peak: f64) -> f64 {
    if peak <= 1.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(peak.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|step| step * magnitude)
        .find(|ceiling| *ceiling >= peak)
        .unwrap_or(10.0 * magnitude)
}

/// A rate with the precision that matters: `0.4`, `12`, `1.5k`.
fn rate_text(rate: f64) -> String {
    if rate >= 10_000.0 {
        format!("{:.0}k", rate / 1000.0)
    } else if rate >= 1000.0 {
        format!("{:.1}k", rate / 1000.0)
    } else if rate >= 10.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_tops_at_a_round_value_above_the_peak() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(10.0), 10.0);
        assert_eq!(nice_ceiling(17_000.0), 20_000.0);
        assert_eq!(nice_ceiling(61.0), 100.0);
    }

    #[test]
    fn the_line_runs_from_the_oldest_point_on_the_left_to_now_on_the_right() {
        let now = 1_000_000_000;
        let svg = throughput(&[(now - WINDOW.as_millis() as u64, 0.0), (now, 10.0)], 0, now).into_string();
        let line = format!("points=\"{LEFT:.1},{:.1} {WIDTH:.1},{TOP:.1}\"", HEIGHT - BOTTOM);
        assert!(svg.contains(&line), "{svg}");
        assert!(svg.contains("now 10, peak 10"), "{svg}");
    }
}
