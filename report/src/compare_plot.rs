//! `compare.png`: one bar panel per metric (PPL, MMLU, QA), one bar per method that
//! ran, the dense value as a reference line — the layout of the paper's Figures 3–6.
//! Drawn like the run plots, with plotters' bitmap backend and the embedded font.

use std::path::Path;

use plotters::prelude::*;

use crate::compare::{Row, Table};
use crate::plots::{err, font, FONT};
use crate::Result;

/// One colour per method, in row order (compare.png's bars, sweep.png's lines).
pub(crate) const PALETTE: [RGBColor; 10] = [
    BLUE,
    RED,
    GREEN,
    MAGENTA,
    CYAN,
    RGBColor(230, 140, 0),
    RGBColor(120, 60, 160),
    BLACK,
    RGBColor(90, 90, 90),
    RGBColor(0, 120, 120),
];

/// Three significant figures at most: 1.23, 45.6, 789.
fn short(x: f64) -> String {
    match x.abs() {
        a if a < 10.0 => format!("{x:.2}"),
        a if a < 100.0 => format!("{x:.1}"),
        _ => format!("{x:.0}"),
    }
}

/// Write `compare.png` for `t` to `path`: 1500 × 560, the rows with status `ok`, the
/// first of them (dense) on top and as each panel's reference line.
pub fn plot(path: &Path, t: &Table) -> Result<()> {
    font();
    let e = |e: &dyn std::fmt::Display| err(path, e);
    type Pick = fn(&Row) -> Option<f64>;
    let metrics: [(&str, Pick); 3] = [
        ("Perplexity (lower is better)", |r| r.ppl),
        ("MMLU accuracy %", |r| r.mmlu.map(|v| 100.0 * v)),
        ("Factual QA accuracy %", |r| r.qa.map(|v| 100.0 * v)),
    ];
    let root = BitMapBackend::new(path, (1500, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let panels = root.split_evenly((1, 3));
    let rows: Vec<&Row> = t.rows.iter().filter(|r| r.status == "ok").collect();
    let palette = PALETTE;
    let names: Vec<String> = rows.iter().map(|r| r.method.clone()).collect();
    let n = rows.len() as f64;
    // Horizontal bars: method names read left of their bar and never overlap; the
    // first row (dense) is on top. The dense value is a vertical reference line.
    let y_of = |i: usize| n - 1.0 - i as f64;
    for (k, (area, (title, pick))) in panels.iter().zip(metrics).enumerate() {
        let vals: Vec<(usize, f64)> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| pick(r).map(|v| (i, v)))
            .collect();
        let dense = rows.first().and_then(|r| pick(r));
        let label = |y: &f64| {
            let i = n - 1.0 - y.round();
            if (y - y.round()).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let bars = |v: f64, base: f64, i: usize| {
            let y = y_of(i);
            Rectangle::new(
                [(base, y - 0.35), (v, y + 0.35)],
                palette[i % palette.len()].filled(),
            )
        };
        let builder = |area| {
            let mut b = ChartBuilder::on(area);
            b.caption(title, (FONT, 22))
                .margin(10)
                .margin_right(25)
                .x_label_area_size(40)
                .y_label_area_size(130);
            b
        };
        if k == 0 {
            // Perplexities span orders of magnitude (dense ≈ 30, magnitude 2:4 > 1000):
            // a log axis keeps the good methods distinguishable.
            let lo = vals.iter().map(|v| v.1).fold(f64::MAX, f64::min).max(1e-3) / 1.5;
            let hi = vals.iter().map(|v| v.1).fold(lo * 2.0, f64::max) * 1.5;
            let mut c = builder(area)
                .build_cartesian_2d((lo..hi).log_scale(), -0.5..(n - 0.5))
                .map_err(|x| e(&x))?;
            c.configure_mesh()
                .disable_y_mesh()
                .y_labels(rows.len().max(1))
                .y_label_formatter(&label)
                .x_label_formatter(&|x| short(*x))
                .label_style((FONT, 14))
                .draw()
                .map_err(|x| e(&x))?;
            c.draw_series(vals.iter().map(|&(i, v)| bars(v, lo, i)))
                .map_err(|x| e(&x))?;
            c.draw_series(
                vals.iter()
                    .map(|&(i, v)| Text::new(short(v), (v, y_of(i) + 0.2), (FONT, 13))),
            )
            .map_err(|x| e(&x))?;
            if let Some(d) = dense {
                c.draw_series(LineSeries::new(
                    vec![(d, -0.5), (d, n - 0.5)],
                    BLACK.stroke_width(1),
                ))
                .map_err(|x| e(&x))?;
            }
        } else {
            // Accuracies in %, from 0; at least 0..10 so an all-zero panel has an axis.
            let hi = (vals.iter().map(|v| v.1).fold(0.0, f64::max) * 1.15).max(10.0);
            let mut c = builder(area)
                .build_cartesian_2d(0.0..hi, -0.5..(n - 0.5))
                .map_err(|x| e(&x))?;
            c.configure_mesh()
                .disable_y_mesh()
                .y_labels(rows.len().max(1))
                .y_label_formatter(&label)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .label_style((FONT, 14))
                .draw()
                .map_err(|x| e(&x))?;
            c.draw_series(vals.iter().map(|&(i, v)| bars(v, 0.0, i)))
                .map_err(|x| e(&x))?;
            c.draw_series(
                vals.iter()
                    .map(|&(i, v)| Text::new(short(v), (v, y_of(i) + 0.2), (FONT, 13))),
            )
            .map_err(|x| e(&x))?;
            if let Some(d) = dense {
                c.draw_series(LineSeries::new(
                    vec![(d, -0.5), (d, n - 0.5)],
                    BLACK.stroke_width(1),
                ))
                .map_err(|x| e(&x))?;
            }
        }
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
