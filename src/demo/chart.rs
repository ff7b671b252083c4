//! The demo's chart: servers busy, clients waiting and the p99 checkout wait over the run, as
//! one self-contained SVG file (no image library, opens in any browser). Stretches where
//! clients waited are shaded.

use std::fmt::Write as _;

/// One reading of the pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t_s: f64,
    pub busy: usize,
    pub pool_size: usize,
    pub waiting: usize,
    pub wait_p99_ms: f64,
}

/// Samples kept at most; beyond it every other one is dropped, so a long run keeps its shape.
const MAX_SAMPLES: usize = 2000;

/// The run's samples, bounded.
#[derive(Debug, Default)]
pub struct Samples {
    list: Vec<Sample>,
    /// Keep one reading in `stride` (doubles each time the list is halved).
    stride: u32,
    seen: u32,
}

impl Samples {
    pub fn push(&mut self, s: Sample) {
        self.stride = self.stride.max(1);
        self.seen += 1;
        if (self.seen - 1) % self.stride != 0 {
            return;
        }
        if self.list.len() >= MAX_SAMPLES {
            let mut i = 0;
            self.list.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.stride *= 2;
        }
        self.list.push(s);
    }

    pub fn list(&self) -> &[Sample] {
        &self.list
    }
}

const W: f64 = 900.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const PANEL_H: f64 = 170.0;

fn x(t: f64, t_max: f64) -> f64 {
    LEFT + (W - LEFT - RIGHT) * if t_max > 0.0 { t / t_max } else { 0.0 }
}

fn polyline(out: &mut String, id: &str, colour: &str, points: impl Iterator<Item = (f64, f64)>) {
    let mut p = String::new();
    for (px, py) in points {
        let _ = write!(p, "{px:.1},{py:.1} ");
    }
    let _ = writeln!(
        out,
        r#"<polyline id="{id}" fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
        p.trim_end()
    );
}

/// A panel's frame, title and y-axis labels; returns the y of a value.
fn panel(out: &mut String, top: f64, title: &str, y_max: f64, unit: &str) -> impl Fn(f64) -> f64 {
    let bottom = top + PANEL_H;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{}" height="{PANEL_H}" fill="none" stroke="#999"/>"##,
        W - LEFT - RIGHT
    );
    let _ = writeln!(out, r#"<text x="{LEFT}" y="{}" font-size="13">{title}</text>"#, top - 6.0);
    for frac in [0.0, 0.5, 1.0] {
        let y = bottom - PANEL_H * frac;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" font-size="11" text-anchor="end">{:.0}{unit}</text>"#,
            LEFT - 4.0,
            y + 4.0,
            y_max * frac
        );
    }
    move |v: f64| bottom - PANEL_H * if y_max > 0.0 { (v / y_max).min(1.0) } else { 0.0 }
}

/// The whole chart as an SVG document.
pub fn svg(samples: &[Sample], title: &str) -> String {
    let t_max = samples.last().map_or(0.0, |s| s.t_s);
    let count_max =
        samples.iter().map(|s| s.pool_size.max(s.busy).max(s.waiting)).max().unwrap_or(0).max(1) as f64;
    let wait_max = samples.iter().map(|s| s.wait_p99_ms).fold(0.0, f64::max).max(1.0);
    let height = 2.0 * PANEL_H + 140.0;
    let mut out = String::with_capacity(64 * samples.len() + 2048);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{height}" fill="white"/>"#);
    let _ = writeln!(out, r#"<text x="{LEFT}" y="22" font-size="16">{}</text>"#, escape(title));
    let top1 = 50.0;
    let top2 = top1 + PANEL_H + 45.0;
    // Shade the stretches where clients waited, across both panels.
    for pair in samples.windows(2).filter(|p| p[0].waiting > 0) {
        let (x0, x1) = (x(pair[0].t_s, t_max), x(pair[1].t_s, t_max));
        for top in [top1, top2] {
            let _ = writeln!(
                out,
                r##"<rect class="saturated" x="{x0:.1}" y="{top}" width="{:.1}" height="{PANEL_H}" fill="#fde2e2"/>"##,
                (x1 - x0).max(0.5)
            );
        }
    }
    let y =
        panel(&mut out, top1, "servers busy (blue), pool size (grey), clients waiting (red)", count_max, "");
    polyline(&mut out, "pool-size", "#999", samples.iter().map(|s| (x(s.t_s, t_max), y(s.pool_size as f64))));
    polyline(
        &mut out,
        "servers-busy",
        "#1f5fbf",
        samples.iter().map(|s| (x(s.t_s, t_max), y(s.busy as f64))),
    );
    polyline(
        &mut out,
        "clients-waiting",
        "#c62828",
        samples.iter().map(|s| (x(s.t_s, t_max), y(s.waiting as f64))),
    );
    let y = panel(&mut out, top2, "p99 checkout wait per sample (ms)", wait_max, "");
    polyline(&mut out, "wait-p99", "#6a1b9a", samples.iter().map(|s| (x(s.t_s, t_max), y(s.wait_p99_ms))));
    let axis = top2 + PANEL_H + 18.0;
    for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{axis}" font-size="11" text-anchor="middle">{:.0}s</text>"#,
            x(t_max * frac, t_max),
            t_max * frac
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="11">shaded: clients waited for a server</text>"#,
        axis + 22.0
    );
    out.push_str("</svg>\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, waiting: usize) -> Sample {
        Sample { t_s, busy: 3, pool_size: 4, waiting, wait_p99_ms: waiting as f64 * 10.0 }
    }

    #[test]
    fn samples_stay_bounded_and_span_the_run() {
        let mut s = Samples::default();
        for i in 0..10 * MAX_SAMPLES {
            s.push(sample(i as f64, 0));
        }
        assert!(s.list().len() <= MAX_SAMPLES);
        assert_eq!(s.list()[0].t_s, 0.0);
        assert!(s.list().last().unwrap().t_s > 9.0 * MAX_SAMPLES as f64);
    }

    #[test]
    fn the_chart_has_its_series_and_shades_the_waits() {
        let svg = svg(&[sample(0.0, 0), sample(1.0, 5), sample(2.0, 0)], "a <demo>");
        for id in ["servers-busy", "clients-waiting", "wait-p99", "pool-size"] {
            assert!(svg.contains(&format!("id=\"{id}\"")), "{id}");
        }
        assert_eq!(svg.matches("class=\"saturated\"").count(), 2);
        assert!(svg.contains("a &lt;demo&gt;"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
