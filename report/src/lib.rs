//! Run reports from a run's iteration records (protocol types), and compare's table:
//!
//! - `report.json`: the summary, the paper's Table 4 statistics, per-layer sparsity,
//!   timings and sizes;
//! - `report.md`: the same statistics as a Markdown table (paper Table 4);
//! - `iterations.png`: the paper's Figure 1 — sparsity and PPL per iteration, before and
//!   after, rollbacks marked, the knowledge probe's accuracy under the PPL when the run
//!   has probe points, and the per-iteration sparsity gains;
//! - `layers.png`: final sparsity per prunable layer;
//! - [`compare`]: `secateur compare`'s table (`compare.json`, `compare.md`) and its
//!   `compare.png` (paper Figures 3–6 style), from rows the command evaluated with
//!   `eval`'s suite.
//!
//! Plots use plotters' bitmap backend with `ab_glyph` and an embedded DejaVu Sans
//! (fonts/DejaVuSans.ttf, Bitstream Vera license in fonts/DejaVu-LICENSE.txt), so text
//! renders without fontconfig or any system font.

pub mod compare;
mod compare_plot;
mod plots;
pub mod sweep;

use std::path::{Path, PathBuf};

use protocol::{ProbePoint, ProbeSeries, RunSummary};
use serde::{Deserialize, Serialize};

pub use plots::{plot_iterations, plot_layers};

/// Errors writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plot {path}: {reason}")]
    Plot { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, ReportError>;

/// Final perplexity on the `[evaluation.final]` text, dense vs pruned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalPpl {
    pub text: String,
    pub tokens_scored: usize,
    pub dense_ppl: f64,
    pub pruned_ppl: f64,
}

/// The paper's Table 4 statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table4 {
    pub iterations: usize,
    pub successful: usize,
    pub rollbacks: usize,
    /// rollbacks / iterations (0 when there were none).
    pub rollback_rate: f64,
    pub target_sparsity: f64,
    pub final_sparsity: f64,
    pub baseline_ppl: f64,
    pub final_ppl: f64,
    /// (final − baseline) / baseline.
    pub ppl_degradation: f64,
}

impl Table4 {
    pub fn of(s: &RunSummary) -> Self {
        let iterations = s.iterations();
        let rollbacks = s.rollbacks();
        Self {
            iterations,
            successful: s.successful(),
            rollbacks,
            rollback_rate: if iterations == 0 {
                0.0
            } else {
                rollbacks as f64 / iterations as f64
            },
            target_sparsity: s.target_sparsity,
            final_sparsity: s.final_sparsity,
            baseline_ppl: s.baseline_ppl,
            final_ppl: s.final_ppl,
            ppl_degradation: (s.final_ppl - s.baseline_ppl) / s.baseline_ppl,
        }
    }
}

/// What goes into the report besides the summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extras {
    pub model: String,
    pub model_f32_bytes: u64,
    pub wall_seconds: f64,
    /// CPU seconds of the process, all threads, user + system (`None` where the
    /// process also ran other work, as the daemon does, or the platform has no count).
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    pub final_ppl: Option<FinalPpl>,
}

/// What a run cost its process, as the caller measured it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub wall_seconds: f64,
    pub cpu_seconds: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
}

/// The JSON document of `report.json`. Has a `probe` object (dense and final accuracy,
/// the verdict, every point) only when the run has knowledge-probe data.
pub fn report_json(s: &RunSummary, x: &Extras) -> serde_json::Value {
    let n = s.delta_bytes.len().max(1) as f64;
    let mean_delta = s.delta_bytes.iter().sum::<u64>() as f64 / n;
    let mut doc = serde_json::json!({
        "run_id": s.run_id,
        "state": s.state,
        "stop_reason": s.stop_reason,
        "failure": s.failure,
        "model": x.model,
        "table4": Table4::of(s),
        "final_ppl": x.final_ppl,
        "wall_seconds": x.wall_seconds,
        "cpu_seconds": x.cpu_seconds,
        "peak_rss_bytes": x.peak_rss_bytes,
        "model_f32_bytes": x.model_f32_bytes,
        "checkpoint_bytes_per_commit": mean_delta,
        "checkpoint_bytes_max": s.delta_bytes.iter().max(),
        "timings_ms": s.timings,
        "started_at_iteration": s.started_at_iteration,
        "layers": s.layer_sparsity.iter().map(|(n, sp, p)| serde_json::json!({"name": n, "sparsity": sp, "params": p})).collect::<Vec<_>>(),
        "iterations": s.records,
    });
    if !s.rejected.is_empty() {
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("rejected".into(), serde_json::json!(s.rejected));
        }
    }
    if !s.stopped_by.is_empty() {
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("stopped_by".into(), serde_json::json!(s.stopped_by));
        }
    }
    if let (Some(p), Some(obj)) = (probe_of(s), doc.as_object_mut()) {
        obj.insert(
            "probe".into(),
            serde_json::json!({
                "path": p.path,
                "style": p.style,
                "questions": p.questions,
                "every": p.every,
                "chance": p.chance,
                "informative": p.informative,
                "dense_accuracy": p.dense().map(|d| d.accuracy),
                "final_accuracy": p.last().map(|d| d.accuracy),
                "final_iteration": p.last().map(|d| d.iteration),
                "points": p.points,
            }),
        );
    }
    doc
}

/// The run's probe series when it has at least one point.
fn probe_of(s: &RunSummary) -> Option<&ProbeSeries> {
    s.probe.as_ref().filter(|p| !p.points.is_empty())
}

/// The Markdown section of the knowledge probe: dense and final accuracy, the verdict
/// (dense vs chance, flagged when uninformative, as every knowledge metric is), and
/// one row per point.
fn probe_md(p: &ProbeSeries) -> String {
    let acc = |q: &ProbePoint| format!("{:.1} % ({}/{})", q.accuracy * 100.0, q.correct, q.total);
    let mut out = format!(
        "\n## Knowledge probe\n\n{} questions from `{}` ({} prompts), asked of the dense model \
(iteration 0), of the committed model at every iteration divisible by {}, and of the final \
model.\n\n",
        p.questions, p.path, p.style, p.every
    );
    match (p.dense(), p.last()) {
        (Some(d), Some(f)) => {
            out.push_str(&format!(
                "Accuracy: dense {} → iteration {} {} ({:+.1} points).\n\n",
                acc(d),
                f.iteration,
                acc(f),
                (f.accuracy - d.accuracy) * 100.0
            ));
            let flag = if p.informative {
                ""
            } else {
                "  **[UNINFORMATIVE: dense model within 5 points of chance/zero or too few questions]**"
            };
            out.push_str(&format!(
                "Verdict: dense {:.1} % vs chance {:.1} %{flag}\n",
                d.accuracy * 100.0,
                p.chance * 100.0
            ));
        }
        (None, Some(f)) => out.push_str(&format!(
            "Accuracy: iteration {} {} (no dense point: the run was stored before the probe \
was on, so there is no verdict).\n",
            f.iteration,
            acc(f)
        )),
        _ => {}
    }
    out.push_str(
        "\n| it | sparsity | in-loop PPL | correct | accuracy | seconds |\n|---|---|---|---|---|---|\n",
    );
    for q in &p.points {
        out.push_str(&format!(
            "| {} | {:.4} | {:.3} | {}/{} | {:.1} % | {:.1} |\n",
            q.iteration,
            q.sparsity,
            q.ppl,
            q.correct,
            q.total,
            q.accuracy * 100.0,
            q.seconds
        ));
    }
    out
}

/// The vetoed plans of the iteration that ended the run with no acceptable plan, one
/// line each: the layers and δs, then the critic's reasons. Empty otherwise.
fn rejected_md(s: &RunSummary) -> String {
    if s.rejected.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n## Vetoed plans\n\nThe last iteration found no acceptable plan: the critic vetoed all {} candidate(s).\n\n",
        s.rejected.len()
    );
    for (i, r) in s.rejected.iter().enumerate() {
        let plan = decisions_md(&r.plan);
        out.push_str(&format!("{}. {plan}: {}\n", i + 1, r.reasons.join("; ")));
    }
    out
}

/// A plan's layers and δs, or that it has none.
fn decisions_md(plan: &protocol::Plan) -> String {
    if plan.layer_decisions.is_empty() {
        return "no layer decisions".to_string();
    }
    plan.layer_decisions
        .iter()
        .map(|d| format!("`{}` {}", d.layer, d.delta))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plans of the iteration in which the planner stopped the run, one line each:
/// stop or not, the layers, the verdict, the planner's reasoning. Empty otherwise.
fn stopped_md(s: &RunSummary) -> String {
    if s.stopped_by.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n## Stopped by the planner\n\nThe planner ended the run at global sparsity {:.2} % \
(target {:.2} %); the last iteration's {} plan(s):\n\n",
        s.final_sparsity * 100.0,
        s.target_sparsity * 100.0,
        s.stopped_by.len()
    );
    for (i, p) in s.stopped_by.iter().enumerate() {
        let verdict = match &p.verdict {
            protocol::Verdict::Approve => "approved".to_string(),
            protocol::Verdict::Amend { reasons, .. } => format!("amended ({})", reasons.join("; ")),
            protocol::Verdict::Veto { reasons } => format!("vetoed ({})", reasons.join("; ")),
        };
        out.push_str(&format!(
            "{}. {} {}, {}: {verdict}. Reasoning: {}\n",
            i + 1,
            p.backend,
            if p.plan.stop_pruning {
                "stop"
            } else {
                "continue"
            },
            decisions_md(&p.plan),
            p.plan.reasoning.replace('\n', " ")
        ));
    }
    out
}

/// The Markdown of `report.md`.
pub fn report_md(s: &RunSummary, x: &Extras) -> String {
    let t = Table4::of(s);
    let pct = |v: f64| format!("{:.2} %", v * 100.0);
    let mut out = format!(
        "# secateur run `{}`\n\nModel: `{}` — state **{:?}** ({:?}){}\n\n",
        s.run_id,
        x.model,
        s.state,
        s.stop_reason,
        s.failure
            .as_deref()
            .map(|f| format!(": {f}"))
            .unwrap_or_default()
    );
    out.push_str("## Pruning statistics (paper Table 4)\n\n| statistic | value |\n|---|---|\n");
    let rows = [
        ("Total iterations", t.iterations.to_string()),
        ("Successful iterations", t.successful.to_string()),
        ("Rollbacks", t.rollbacks.to_string()),
        ("Rollback rate", pct(t.rollback_rate)),
        ("Target sparsity", pct(t.target_sparsity)),
        ("Final sparsity", pct(t.final_sparsity)),
        ("Baseline PPL (in-loop)", format!("{:.3}", t.baseline_ppl)),
        ("Final PPL (in-loop)", format!("{:.3}", t.final_ppl)),
        (
            "PPL degradation",
            format!("{:+.1} %", t.ppl_degradation * 100.0),
        ),
    ];
    for (k, v) in rows {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    if let Some(f) = &x.final_ppl {
        out.push_str(&format!(
            "\nFinal perplexity on `{}` ({} tokens): dense {:.3} → pruned {:.3} ({:+.1} %).\n",
            f.text,
            f.tokens_scored,
            f.dense_ppl,
            f.pruned_ppl,
            (f.pruned_ppl / f.dense_ppl - 1.0) * 100.0
        ));
    }
    if let Some(p) = probe_of(s) {
        out.push_str(&probe_md(p));
    }
    out.push_str(&rejected_md(s));
    out.push_str(&stopped_md(s));
    let tm = &s.timings;
    let cpu = x
        .cpu_seconds
        .map(|c| format!(", CPU time {c:.1} s"))
        .unwrap_or_default();
    out.push_str(&format!(
        "\n## Cost\n\nWall time {:.1} s{cpu}. Time by actor (ms): profiler {}, planner {}, critic {}, executor {}, evaluator {}, checkpointer {}.\n",
        x.wall_seconds, tm.profiler_ms, tm.planner_ms, tm.critic_ms, tm.executor_ms, tm.evaluator_ms, tm.checkpointer_ms
    ));
    if let Some(rss) = x.peak_rss_bytes {
        out.push_str(&format!(
            "Peak RSS {:.0} MiB ({:.2}x the f32 model, {:.0} MiB).\n",
            rss as f64 / 1048576.0,
            rss as f64 / x.model_f32_bytes.max(1) as f64,
            x.model_f32_bytes as f64 / 1048576.0
        ));
    }
    if !s.delta_bytes.is_empty() {
        let mean = s.delta_bytes.iter().sum::<u64>() as f64 / s.delta_bytes.len() as f64;
        out.push_str(&format!(
            "Checkpoint per committed iteration: {:.0} bytes on average ({:.3} % of the f32 model).\n",
            mean,
            mean / x.model_f32_bytes.max(1) as f64 * 100.0
        ));
    }
    out.push_str("\n## Iterations\n\n| it | sparsity before → after | PPL before → after | rolled back | assessment |\n|---|---|---|---|---|\n");
    for r in &s.records {
        let o = &r.outcome;
        out.push_str(&format!(
            "| {} | {:.4} → {:.4} | {:.3} → {:.3} | {} | {} |\n",
            o.iteration,
            o.sparsity_before,
            o.sparsity_after,
            o.ppl_before,
            o.ppl_after,
            if o.rolled_back { "yes" } else { "no" },
            r.feedback.assessment
        ));
    }
    out.push_str("\n![iterations](iterations.png)\n\n![layers](layers.png)\n");
    out
}

/// Write report.json, report.md, iterations.png and layers.png into `dir`.
pub fn write_all(dir: &Path, s: &RunSummary, x: &Extras) -> Result<Vec<PathBuf>> {
    let write = |name: &str, text: String| -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| ReportError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    };
    let json = serde_json::to_string_pretty(&report_json(s, x)).unwrap_or_default();
    let mut out = vec![
        write("report.json", json)?,
        write("report.md", report_md(s, x))?,
    ];
    let it = dir.join("iterations.png");
    plot_iterations(&it, &s.records, probe_of(s))?;
    out.push(it);
    let layers = dir.join("layers.png");
    plot_layers(&layers, &s.layer_sparsity, s.target_sparsity)?;
    out.push(layers);
    Ok(out)
}
