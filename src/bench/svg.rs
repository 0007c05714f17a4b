//! The chart of `ferry bench --svg`: for each workload a group of bars, one per target in one
//! colour each, their height the median on a logarithmic time axis (the rows span
//! microseconds to seconds, and on a log axis equal ratios are equal steps, so a group reads
//! as ratios to the baseline), with a min-max whisker. Each bar carries its numbers as data
//! attributes and a tooltip. Plain SVG 1.1 text, no script.

use std::fmt::Write as _;

use super::Results;

/// Okabe-Ito colours: told apart with the common colour-vision deficiencies.
const COLOURS: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

const BAR: f64 = 12.0;
const GAP: f64 = 14.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 78.0;
const PLOT: f64 = 300.0;
const BOTTOM: f64 = 120.0;

/// `s` with XML's special characters escaped.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `10^k` seconds, for an axis label.
fn decade(k: i32) -> String {
    let (unit, base) = match k {
        ..=-7 => return format!("1e{k} s"),
        -6..=-4 => ("µs", -6),
        -3..=-1 => ("ms", -3),
        0..=2 => ("s", 0),
        _ => return format!("1e{k} s"),
    };
    format!("{} {unit}", 10u32.pow((k - base) as u32))
}

pub(super) fn chart(res: &Results) -> String {
    let nt = res.targets.len();
    let nw = res.rows.len();
    let group = nt as f64 * BAR + GAP;
    let width = (LEFT + nw as f64 * group + RIGHT).max(820.0);
    let height = TOP + PLOT + BOTTOM;
    let floor = TOP + PLOT;

    // The axis spans whole decades around every sample.
    let all = res.cells.iter().flatten().flat_map(|c| [c.min(), c.max()]);
    // NaN (no samples) fails `> 0`.
    let (lo, hi) = all
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, mut hi) = if lo <= hi {
        (lo.log10().floor() as i32, hi.log10().ceil() as i32)
    } else {
        (-3, 0)
    };
    if hi <= lo {
        hi = lo + 1;
    }
    let y = |v: f64| {
        let l = v.max(10f64.powi(lo)).log10();
        TOP + PLOT * (f64::from(hi) - l) / f64::from(hi - lo)
    };

    let mut o = String::new();
    let _ = writeln!(
        o,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="15" font-weight="bold">ferry bench: median per workload, lower is faster</text>
<text x="{LEFT}" y="40" fill="#444">{} round(s), order rotated per round; whiskers: min-max; ×: nothing measured; log scale: equal steps are equal ratios (baseline: {})</text>"##,
        res.plan.rounds,
        esc(&res.targets[res.baseline])
    );

    // Legend.
    let mut lx = LEFT;
    for (t, name) in res.targets.iter().enumerate() {
        let label = if t == res.baseline {
            format!("{name} (baseline)")
        } else {
            name.clone()
        };
        let _ = writeln!(
            o,
            r#"<g class="legend"><rect class="swatch" x="{lx}" y="50" width="12" height="12" fill="{}"/><text x="{}" y="60">{}</text></g>"#,
            COLOURS[t % COLOURS.len()],
            lx + 16.0,
            esc(&label)
        );
        lx += 16.0 + 6.5 * label.chars().count() as f64 + 16.0;
    }

    // Axes and decade grid lines.
    let right = width - RIGHT;
    for k in lo..=hi {
        let gy = y(10f64.powi(k));
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" x2="{right}" y1="{gy:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 6.0,
            gy + 4.0,
            decade(k)
        );
    }
    let _ = writeln!(
        o,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{floor}" stroke="#000"/><line x1="{LEFT}" x2="{right}" y1="{floor}" y2="{floor}" stroke="#000"/>
<text transform="translate(18 {:.0}) rotate(-90)" text-anchor="middle">time (s, log scale; fio: per op; events: per event)</text>
<text x="{:.0}" y="{:.0}" text-anchor="middle">workload</text>"##,
        TOP + PLOT / 2.0,
        (LEFT + right) / 2.0,
        height - 8.0
    );

    // Bars.
    for (r, row) in res.rows.iter().enumerate() {
        let gx = LEFT + r as f64 * group + GAP / 2.0;
        for (t, name) in res.targets.iter().enumerate() {
            let c = &res.cells[t][r];
            let (m, lo_v, hi_v) = (c.median(), c.min(), c.max());
            let x = gx + t as f64 * BAR;
            if c.is_empty() {
                // Nothing measured (no events heard): a mark on the axis instead of a bar.
                let _ = writeln!(
                    o,
                    r#"<text class="none" data-workload="{}" data-target="{}" x="{:.1}" y="{:.1}" text-anchor="middle" fill="{}">×<title>{}, {}: nothing measured</title></text>"#,
                    row.id,
                    esc(name),
                    x + (BAR - 2.0) / 2.0,
                    floor - 3.0,
                    COLOURS[t % COLOURS.len()],
                    esc(row.title),
                    esc(name),
                );
                continue;
            }
            let top = y(m);
            let ratio = res.ratio(t, r, res.baseline);
            let _ = writeln!(
                o,
                r#"<rect class="bar" data-workload="{}" data-target="{}" data-median-s="{m:e}" data-ratio="{ratio:.4}" x="{x:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}, {}: median {m:.3e} s (min {lo_v:.3e}, max {hi_v:.3e}), {ratio:.2}x the baseline</title></rect>"#,
                row.id,
                esc(name),
                BAR - 2.0,
                (floor - top).max(0.5),
                COLOURS[t % COLOURS.len()],
                esc(row.title),
                esc(name),
            );
            let cx = x + (BAR - 2.0) / 2.0;
            let _ = writeln!(
                o,
                r##"<line class="spread" x1="{cx:.1}" x2="{cx:.1}" y1="{:.1}" y2="{:.1}" stroke="#222"/>"##,
                y(hi_v),
                y(lo_v)
            );
        }
        let lx = gx + nt as f64 * BAR / 2.0;
        let _ = writeln!(
            o,
            r#"<text class="workload" x="{lx:.1}" y="{:.1}" text-anchor="end" transform="rotate(-45 {lx:.1} {:.1})">{}<title>{}</title></text>"#,
            floor + 14.0,
            floor + 14.0,
            row.id,
            esc(row.title)
        );
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decades_read_as_units() {
        assert_eq!(decade(-6), "1 µs");
        assert_eq!(decade(-4), "100 µs");
        assert_eq!(decade(-3), "1 ms");
        assert_eq!(decade(0), "1 s");
        assert_eq!(decade(2), "100 s");
        assert_eq!(esc("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
    }
}
