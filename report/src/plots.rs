//! The two PNG plots (paper Figures 1–2 style), drawn with plotters' bitmap backend
//! and the embedded font.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use protocol::{IterationRecord, ProbeSeries};

use crate::{ReportError, Result};

pub(crate) const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Register the embedded font once (plotters' ab_glyph registry is global); every plot
/// of this crate calls it first, so the font is embedded once in the workspace.
pub(crate) fn font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded file is a valid TTF; a failure would only drop the text.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

pub(crate) fn err(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

const COMMIT: RGBColor = RGBColor(46, 139, 87);
const ROLLBACK: RGBColor = RGBColor(200, 30, 30);
const BEFORE: RGBColor = RGBColor(120, 120, 120);
const PROBE: RGBColor = RGBColor(31, 119, 180);

/// Figure 1: (top) global sparsity before/after each iteration, (middle) PPL
/// before/after, rollbacks as red crosses, then — only when the run has knowledge-probe
/// points — the probe's accuracy per iteration right under the PPL it is read against
/// (iteration 0 = dense, so every panel's axis then starts at 0), and (bottom) sparsity
/// gain per iteration, green when committed and red when rolled back.
pub fn plot_iterations(
    path: &Path,
    records: &[IterationRecord],
    probe: Option<&ProbeSeries>,
) -> Result<()> {
    font();
    let probe = probe.filter(|p| !p.points.is_empty());
    let (panels, height) = if probe.is_some() {
        (4, 1450)
    } else {
        (3, 1100)
    };
    let root = BitMapBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let areas = root.split_evenly((panels, 1));
    let last_probe = probe
        .and_then(|p| p.points.iter().map(|q| q.iteration).max())
        .unwrap_or(0);
    let n = records.len().max(last_probe as usize).max(1) as f64;
    let xs = if probe.is_some() { -0.5 } else { 0.5 }..n + 0.5;
    // Records are iterations 1..=n in order (a resumed run reports all of them).
    let x_of = |i: usize| i as f64 + 1.0;
    let int = |x: &f64| format!("{x:.0}");
    let ticks = records.len().clamp(1, 20);

    // Sparsity.
    let smax = records
        .iter()
        .map(|r| r.outcome.sparsity_after.max(r.outcome.sparsity_before))
        .fold(0.05, f64::max)
        * 1.1;
    let mut c = ChartBuilder::on(&areas[0])
        .caption("Global sparsity per iteration", (FONT, 26))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(xs.clone(), 0.0..smax)
        .map_err(|e| err(path, e))?;
    c.configure_mesh()
        .x_desc("iteration")
        .x_labels(ticks)
        .x_label_formatter(&int)
        .y_desc("sparsity")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(|e| err(path, e))?;
    draw_before_after(
        &mut c,
        records,
        |r| (r.outcome.sparsity_before, r.outcome.sparsity_after),
        path,
    )?;

    // PPL.
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for r in records {
        for v in [r.outcome.ppl_before, r.outcome.ppl_after] {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    if lo > hi {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let mut c = ChartBuilder::on(&areas[1])
        .caption(
            "Perplexity per iteration (rollbacks: red crosses)",
            (FONT, 26),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(xs.clone(), (lo - pad)..(hi + pad))
        .map_err(|e| err(path, e))?;
    c.configure_mesh()
        .x_desc("iteration")
        .x_labels(ticks)
        .x_label_formatter(&int)
        .y_desc("PPL")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(|e| err(path, e))?;
    draw_before_after(
        &mut c,
        records,
        |r| (r.outcome.ppl_before, r.outcome.ppl_after),
        path,
    )?;

    if let Some(p) = probe {
        draw_probe(&areas[2], xs.clone(), ticks, p, path)?;
    }

    // Gains.
    let gmax = records
        .iter()
        .map(|r| r.outcome.sparsity_gain())
        .fold(0.01, f64::max)
        * 1.15;
    let mut c = ChartBuilder::on(&areas[panels - 1])
        .caption(
            "Sparsity gain per iteration (green committed, red rolled back)",
            (FONT, 26),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(xs.clone(), 0.0..gmax)
        .map_err(|e| err(path, e))?;
    c.configure_mesh()
        .x_desc("iteration")
        .x_labels(ticks)
        .x_label_formatter(&int)
        .y_desc("gain")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(|e| err(path, e))?;
    c.draw_series(records.iter().enumerate().map(|(i, r)| {
        let x = x_of(i);
        let color = if r.outcome.rolled_back {
            ROLLBACK
        } else {
            COMMIT
        };
        Rectangle::new(
            [
                (x - 0.35, 0.0),
                (x + 0.35, r.outcome.sparsity_gain().max(0.0)),
            ],
            color.filled(),
        )
    }))
    .map_err(|e| err(path, e))?;
    // No legend here: the caption names the two colours (an unlabelled series would
    // draw an empty legend box).
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}

/// The knowledge probe's accuracy per point (iteration 0 = dense), the dense level as
/// a dashed line, and chance when it is above zero; the caption carries the verdict.
fn draw_probe(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    xs: std::ops::Range<f64>,
    ticks: usize,
    p: &ProbeSeries,
    path: &Path,
) -> Result<()> {
    let top = p
        .points
        .iter()
        .map(|q| q.accuracy)
        .fold(p.chance.max(0.05), f64::max);
    let ymax = (top * 1.2).min(1.05);
    let caption = format!(
        "Knowledge probe accuracy ({} questions){}",
        p.questions,
        if p.informative {
            ""
        } else {
            " [uninformative: dense near chance/zero]"
        }
    );
    let mut c = ChartBuilder::on(area)
        .caption(caption, (FONT, 26))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(xs.clone(), 0.0..ymax)
        .map_err(|e| err(path, e))?;
    let pct = |y: &f64| format!("{:.0} %", y * 100.0);
    c.configure_mesh()
        .x_desc("iteration (0 = dense)")
        .x_labels(ticks + 1)
        .x_label_formatter(&|x: &f64| format!("{x:.0}"))
        .y_desc("accuracy")
        .y_label_formatter(&pct)
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(|e| err(path, e))?;
    let xy: Vec<(f64, f64)> = p
        .points
        .iter()
        .map(|q| (f64::from(q.iteration), q.accuracy))
        .collect();
    c.draw_series(LineSeries::new(xy.clone(), PROBE.stroke_width(2)))
        .map_err(|e| err(path, e))?
        .label("probe accuracy (committed model)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], PROBE.stroke_width(2)));
    c.draw_series(
        xy.iter()
            .map(|&(x, y)| Circle::new((x, y), 5, PROBE.filled())),
    )
    .map_err(|e| err(path, e))?;
    if let Some(d) = p.dense() {
        c.draw_series(DashedLineSeries::new(
            vec![(xs.start, d.accuracy), (xs.end, d.accuracy)],
            8,
            5,
            BEFORE.stroke_width(1),
        ))
        .map_err(|e| err(path, e))?
        .label("dense")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BEFORE.stroke_width(1)));
    }
    if p.chance > 0.0 {
        c.draw_series(DashedLineSeries::new(
            vec![(xs.start, p.chance), (xs.end, p.chance)],
            3,
            4,
            ROLLBACK.stroke_width(1),
        ))
        .map_err(|e| err(path, e))?
        .label("chance")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], ROLLBACK.stroke_width(1)));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(path, e))?;
    Ok(())
}

type Chart<'a> = ChartContext<
    'a,
    BitMapBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Before (grey) and after (green; red cross when rolled back) with a line of the
/// committed trajectory.
fn draw_before_after(
    c: &mut Chart<'_>,
    records: &[IterationRecord],
    value: impl Fn(&IterationRecord) -> (f64, f64),
    path: &Path,
) -> Result<()> {
    let xy = |i: usize| i as f64 + 1.0;
    let committed: Vec<(f64, f64)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (b, a) = value(r);
            (xy(i), if r.outcome.rolled_back { b } else { a })
        })
        .collect();
    c.draw_series(LineSeries::new(committed, COMMIT.stroke_width(2)))
        .map_err(|e| err(path, e))?
        .label("after (committed state)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], COMMIT.stroke_width(2)));
    c.draw_series(
        records
            .iter()
            .enumerate()
            .map(|(i, r)| Circle::new((xy(i) - 0.15, value(r).0), 4, BEFORE.filled())),
    )
    .map_err(|e| err(path, e))?
    .label("before")
    .legend(|(x, y)| Circle::new((x + 9, y), 4, BEFORE.filled()));
    c.draw_series(
        records
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.outcome.rolled_back)
            .map(|(i, r)| Circle::new((xy(i) + 0.15, value(r).1), 5, COMMIT.filled())),
    )
    .map_err(|e| err(path, e))?;
    c.draw_series(
        records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.outcome.rolled_back)
            .map(|(i, r)| Cross::new((xy(i) + 0.15, value(r).1), 7, ROLLBACK.stroke_width(3))),
    )
    .map_err(|e| err(path, e))?
    .label("rolled back (value it produced)")
    .legend(|(x, y)| Cross::new((x + 9, y), 6, ROLLBACK.stroke_width(3)));
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(path, e))?;
    Ok(())
}

/// Final sparsity per layer (model order), with the target as a line.
pub fn plot_layers(path: &Path, layers: &[(String, f64, u64)], target: f64) -> Result<()> {
    font();
    let w = (layers.len() as u32 * 6).clamp(900, 2400);
    let root = BitMapBackend::new(path, (w, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let n = layers.len().max(1) as f64;
    let mut c = ChartBuilder::on(&root)
        .caption("Final sparsity per layer (dashed: target)", (FONT, 26))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n, 0.0..1.0)
        .map_err(|e| err(path, e))?;
    c.configure_mesh()
        .x_desc("prunable layer (model order: q, k, v, o, gate, up, down per block)")
        .y_desc("sparsity")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(|e| err(path, e))?;
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
    ];
    const KINDS: [&str; 7] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let kind_of = |name: &str| KINDS.iter().position(|k| name.ends_with(k));
    for (k, kind) in KINDS.iter().enumerate() {
        let bars: Vec<_> = layers
            .iter()
            .enumerate()
            .filter(|(_, (name, _, _))| kind_of(name) == Some(k))
            .map(|(i, (_, s, _))| {
                let x = i as f64;
                Rectangle::new([(x + 0.1, 0.0), (x + 0.9, *s)], palette[k].filled())
            })
            .collect();
        if bars.is_empty() {
            continue;
        }
        let color = palette[k];
        c.draw_series(bars)
            .map_err(|e| err(path, e))?
            .label(*kind)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    // Layers of other names (other architectures) in grey.
    c.draw_series(
        layers
            .iter()
            .enumerate()
            .filter(|(_, (name, _, _))| kind_of(name).is_none())
            .map(|(i, (_, s, _))| {
                let x = i as f64;
                Rectangle::new([(x + 0.1, 0.0), (x + 0.9, *s)], BEFORE.filled())
            }),
    )
    .map_err(|e| err(path, e))?;
    c.draw_series(DashedLineSeries::new(
        vec![(0.0, target), (n, target)],
        8,
        5,
        BLACK.stroke_width(2),
    ))
    .map_err(|e| err(path, e))?;
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}
