//! `secateur compare --sweep`: one comparison per target sparsity, drawn as the
//! perplexity–knowledge trade-off of every method. [`Sweep`] is `sweep.json`,
//! [`sweep_markdown`] is `sweep.md` (one row per method, one column pair per target)
//! and [`sweep_plot`] is `sweep.png` (PPL and QA accuracy against sparsity, one line
//! per method, dense as a reference line).

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::compare::{Row, Table};
use crate::compare_plot::PALETTE;
use crate::plots::{err, font, FONT};
use crate::Result;

/// One method's result at one target of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepPoint {
    pub target: f64,
    /// Reached sparsity (`None` when the method did not run).
    pub sparsity: Option<f64>,
    pub ppl: Option<f64>,
    pub qa: Option<f64>,
    pub mmlu: Option<f64>,
}

/// One method across the sweep, in target order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepSeries {
    pub method: String,
    pub points: Vec<SweepPoint>,
}

/// `sweep.json`: the dense row and every other method's series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sweep {
    pub targets: Vec<f64>,
    pub dense_ppl: Option<f64>,
    pub dense_qa: Option<f64>,
    pub dense_mmlu: Option<f64>,
    pub series: Vec<SweepSeries>,
}

impl Sweep {
    /// Gather the tables of one sweep (one per target, in target order). Methods are
    /// listed in their first table's order; a method missing at a target has an empty
    /// point there.
    pub fn from_tables(tables: &[Table]) -> Self {
        let dense: Option<&Row> = tables.first().and_then(|t| t.rows.first());
        let mut methods: Vec<String> = Vec::new();
        for r in tables.iter().flat_map(|t| t.rows.iter().skip(1)) {
            if !methods.contains(&r.method) {
                methods.push(r.method.clone());
            }
        }
        let series = methods
            .into_iter()
            .map(|method| {
                let points = tables
                    .iter()
                    .map(|t| {
                        let row = t.rows.iter().skip(1).find(|r| r.method == method);
                        let ok = row.filter(|r| r.status == "ok");
                        SweepPoint {
                            target: t.target_sparsity,
                            sparsity: ok.and_then(|r| r.sparsity),
                            ppl: ok.and_then(|r| r.ppl),
                            qa: ok.and_then(|r| r.qa),
                            mmlu: ok.and_then(|r| r.mmlu),
                        }
                    })
                    .collect();
                SweepSeries { method, points }
            })
            .collect();
        Self {
            targets: tables.iter().map(|t| t.target_sparsity).collect(),
            dense_ppl: dense.and_then(|r| r.ppl),
            dense_qa: dense.and_then(|r| r.qa),
            dense_mmlu: dense.and_then(|r| r.mmlu),
            series,
        }
    }
}

fn cell(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "–".into(), f)
}

/// `sweep.md`: PPL and (when asked) QA accuracy of every method at every target, QA
/// also as the share of dense accuracy it retains.
pub fn sweep_markdown(s: &Sweep) -> String {
    let qa = s.dense_qa.is_some();
    let mut out = String::from("# secateur compare — sparsity sweep\n\n");
    out.push_str(&format!(
        "Dense: PPL {}{}.\n\n",
        cell(s.dense_ppl, |v| format!("{v:.2}")),
        if qa {
            format!(
                ", QA {}",
                cell(s.dense_qa, |v| format!("{:.1} %", 100.0 * v))
            )
        } else {
            String::new()
        }
    ));
    out.push_str("| method |");
    for t in &s.targets {
        out.push_str(&format!(" PPL @ {:.0} % |", 100.0 * t));
        if qa {
            out.push_str(&format!(" QA @ {:.0} % (kept) |", 100.0 * t));
        }
    }
    out.push_str("\n|---|");
    let cols = s.targets.len() * if qa { 2 } else { 1 };
    out.push_str(&"---|".repeat(cols));
    out.push('\n');
    for series in &s.series {
        out.push_str(&format!("| {} |", series.method));
        for p in &series.points {
            out.push_str(&format!(" {} |", cell(p.ppl, |v| format!("{v:.2}"))));
            if qa {
                let kept = p.qa.zip(s.dense_qa).filter(|(_, d)| *d > 0.0);
                out.push_str(&format!(
                    " {}{} |",
                    cell(p.qa, |v| format!("{:.1} %", 100.0 * v)),
                    kept.map_or(String::new(), |(v, d)| format!(" ({:.0} %)", 100.0 * v / d))
                ));
            }
        }
        out.push('\n');
    }
    out
}

/// `sweep.png`: 1200 × 500; PPL against reached sparsity (log axis) and, when the
/// sweep scored QA, QA accuracy against sparsity; one coloured line per method, the
/// dense value as a black reference line.
pub fn sweep_plot(path: &Path, s: &Sweep) -> Result<()> {
    font();
    let e = |x: &dyn std::fmt::Display| err(path, x);
    type Pick = fn(&SweepPoint) -> Option<f64>;
    let mut panels: Vec<(&str, Pick, Option<f64>, bool)> =
        vec![("Perplexity (log)", |p| p.ppl, s.dense_ppl, true)];
    if s.dense_qa.is_some() {
        panels.push((
            "Factual QA accuracy %",
            |p| p.qa.map(|v| 100.0 * v),
            s.dense_qa.map(|v| 100.0 * v),
            false,
        ));
    }
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let areas = root.split_evenly((1, panels.len()));
    let palette = PALETTE;
    let x_hi = s.targets.iter().copied().fold(0.1, f64::max) + 0.05;
    for (area, (title, pick, dense, log)) in areas.iter().zip(panels) {
        let lines: Vec<(&str, Vec<(f64, f64)>)> = s
            .series
            .iter()
            .map(|sr| {
                let pts = sr
                    .points
                    .iter()
                    .filter_map(|p| Some((p.sparsity?, pick(p)?)))
                    .collect();
                (sr.method.as_str(), pts)
            })
            .collect();
        let values = lines
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
            .chain(dense);
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo > hi { (1.0, 10.0) } else { (lo, hi) };
        let mut b = ChartBuilder::on(area);
        b.caption(title, (FONT, 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60);
        let dense_line = |x: f64| dense.map(|d| vec![(0.0, d), (x, d)]);
        if log {
            let (lo, hi) = (lo.max(1e-3) / 1.3, hi.max(lo * 2.0) * 1.3);
            let mut c = b
                .build_cartesian_2d(0.0..x_hi, (lo..hi).log_scale())
                .map_err(|x| e(&x))?;
            c.configure_mesh()
                .x_desc("sparsity")
                .label_style((FONT, 14))
                .draw()
                .map_err(|x| e(&x))?;
            draw_lines(&mut c, &lines, &palette, dense_line(x_hi)).map_err(|x| e(&x))?;
        } else {
            let hi = (hi * 1.15).max(10.0);
            let mut c = b
                .build_cartesian_2d(0.0..x_hi, 0.0..hi)
                .map_err(|x| e(&x))?;
            c.configure_mesh()
                .x_desc("sparsity")
                .label_style((FONT, 14))
                .draw()
                .map_err(|x| e(&x))?;
            draw_lines(&mut c, &lines, &palette, dense_line(x_hi)).map_err(|x| e(&x))?;
        }
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

type Chart<'a, Y> =
    ChartContext<'a, BitMapBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

/// One line (with point markers) per method, a legend, and the dense reference line.
fn draw_lines<Y>(
    c: &mut Chart<'_, Y>,
    lines: &[(&str, Vec<(f64, f64)>)],
    palette: &[RGBColor],
    dense: Option<Vec<(f64, f64)>>,
) -> std::result::Result<(), String>
where
    Y: Ranged<ValueType = f64>,
{
    let s = |x: &dyn std::fmt::Display| x.to_string();
    if let Some(d) = dense {
        c.draw_series(LineSeries::new(d, BLACK.stroke_width(1)))
            .map_err(|x| s(&x))?
            .label("dense")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    }
    for (i, (name, pts)) in lines.iter().enumerate() {
        let colour = palette[i % palette.len()];
        c.draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
            .map_err(|x| s(&x))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
        c.draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(|x| s(&x))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()
        .map_err(|x| s(&x))
}

#[cfg(test)]
#[path = "sweep_tests.rs"]
mod tests;
