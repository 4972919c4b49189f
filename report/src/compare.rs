//! `secateur compare`'s table: one [`Row`] per method (dense first, the baselines, the
//! agent), each metric's relative change against dense and against the best baseline
//! ([`fill_relative`]), and the table as `compare.json` ([`Table`]'s serde form),
//! `compare.md` ([`markdown`]) and `compare.png` ([`plot`]).
//!
//! The command evaluates the rows; this module only arranges and renders numbers, so
//! the rules (which row is the best baseline, how a change is written) are tested here
//! without a model.

use std::path::PathBuf;

use eval::suite::{describe_suite, SuiteResult, SuiteSpec};
use eval::verdict::Verdict;
use serde::{Deserialize, Serialize};

pub use crate::compare_plot::plot;

/// Relative change `(x − ref) / ref` of each metric; `None` where either value is
/// missing or the reference is 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rel {
    pub ppl: Option<f64>,
    pub mmlu: Option<f64>,
    pub qa: Option<f64>,
}

/// One method's numbers. Serialised as a row of `compare.json` and, for dense, into
/// compare's cache, so the field names and order are a file format.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub method: String,
    /// `ok`, or `not run: <reason>`.
    pub status: String,
    pub sparsity: Option<f64>,
    pub ppl: Option<f64>,
    pub mmlu: Option<f64>,
    pub qa: Option<f64>,
    pub prune_seconds: f64,
    pub eval_seconds: f64,
    /// CPU seconds (process, all threads) of the pruning and of the evaluation; `None`
    /// where not measured (older tables, a run folder whose report lacks it).
    #[serde(default)]
    pub prune_cpu_seconds: Option<f64>,
    #[serde(default)]
    pub eval_cpu_seconds: Option<f64>,
    pub vs_dense: Rel,
    pub vs_best_baseline: Rel,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<SuiteResult>,
}

impl Row {
    /// A method that could not run (pruning failed, `--no-agent`): listed with the
    /// reason and no numbers, so the table still names every method asked for.
    pub fn not_run(method: &str, reason: String) -> Self {
        Self {
            method: method.into(),
            status: format!("not run: {reason}"),
            sparsity: None,
            ppl: None,
            mmlu: None,
            qa: None,
            prune_seconds: 0.0,
            eval_seconds: 0.0,
            prune_cpu_seconds: None,
            eval_cpu_seconds: None,
            vs_dense: Rel::default(),
            vs_best_baseline: Rel::default(),
            detail: None,
        }
    }
}

/// The whole comparison: the settings every row shares, then the rows (dense first).
/// Its serde form is `compare.json`.
#[derive(Debug, Serialize)]
pub struct Table {
    pub model: PathBuf,
    pub target_sparsity: f64,
    pub calibration: String,
    pub calibration_windows: usize,
    pub calibration_len: usize,
    /// Windows skipped before the calibration windows (another slice of the same text).
    #[serde(default)]
    pub calibration_offset: usize,
    /// Of the baselines' calibration windows, those of answered questions
    /// (`--knowledge-share`).
    #[serde(default)]
    pub calibration_knowledge: usize,
    pub ppl_text: String,
    pub ppl_tokens: usize,
    pub window: usize,
    pub suite: SuiteSpec,
    pub mmlu_questions: Option<usize>,
    pub qa_questions: Option<usize>,
    pub dense_mmlu: Option<Verdict>,
    pub dense_qa: Option<Verdict>,
    pub best_baseline: Option<String>,
    pub rows: Vec<Row>,
}

/// `(x − reference) / reference`, when both exist and the reference is not 0.
pub fn rel(x: Option<f64>, reference: Option<f64>) -> Option<f64> {
    match (x, reference) {
        (Some(x), Some(r)) if r != 0.0 => Some((x - r) / r),
        _ => None,
    }
}

/// The best baseline: the lowest perplexity among the rows that ran, dense and the
/// agent excluded (the agent is what the baselines are compared with).
pub fn best_baseline(rows: &[Row]) -> Option<&Row> {
    rows.iter()
        .filter(|r| r.method != "dense" && r.method != "agent" && r.ppl.is_some())
        .min_by(|a, b| {
            a.ppl
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.ppl.unwrap_or(f64::INFINITY))
        })
}

/// Fill every row's `vs_dense` (against the first row, dense) and, when a baseline
/// ran, `vs_best_baseline`; returns the best baseline's method.
pub fn fill_relative(rows: &mut [Row]) -> Option<String> {
    let best = best_baseline(rows).cloned();
    let dense = rows.first().cloned()?;
    for r in rows.iter_mut() {
        r.vs_dense = Rel {
            ppl: rel(r.ppl, dense.ppl),
            mmlu: rel(r.mmlu, dense.mmlu),
            qa: rel(r.qa, dense.qa),
        };
        if let Some(b) = &best {
            r.vs_best_baseline = Rel {
                ppl: rel(r.ppl, b.ppl),
                mmlu: rel(r.mmlu, b.mmlu),
                qa: rel(r.qa, b.qa),
            };
        }
    }
    best.map(|b| b.method)
}

/// A share as a percentage with one decimal (`50.0 %`), `–` when missing.
fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.1} %", 100.0 * v))
}

/// A relative change as a signed percentage (`+23.4 %`), `–` when missing.
fn change(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:+.1} %", 100.0 * v))
}

/// `compare.md`: the settings as a list (with the dense suite results and their
/// verdicts, from the first row's detail), then one table line per row.
pub fn markdown(t: &Table) -> String {
    use std::fmt::Write;
    let dense = t
        .rows
        .first()
        .and_then(|r| r.detail.clone())
        .unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# secateur compare — target sparsity {:.0} %\n",
        100.0 * t.target_sparsity
    );
    let _ = writeln!(s, "- model: `{}`", t.model.display());
    let _ = writeln!(
        s,
        "- calibration: {} windows × {} tokens of `{}`{}",
        t.calibration_windows,
        t.calibration_len,
        t.calibration,
        if t.calibration_offset > 0 {
            format!(", after the first {} windows", t.calibration_offset)
        } else {
            String::new()
        }
    );
    if t.calibration_knowledge > 0 {
        let _ = writeln!(
            s,
            "  ({} of the windows are answered factual questions, `--knowledge-share`)",
            t.calibration_knowledge
        );
    }
    let _ = writeln!(
        s,
        "- perplexity: first {} tokens of `{}`, windows of {}",
        t.ppl_tokens, t.ppl_text, t.window
    );
    if let Some(n) = t.mmlu_questions {
        let _ = writeln!(
            s,
            "- MMLU: {n} questions, {}-shot, {} prompt",
            t.suite.shots,
            t.suite.mmlu_style.name()
        );
    }
    if let Some(n) = t.qa_questions {
        let _ = writeln!(
            s,
            "- factual QA: {n} questions, {}-shot, ≤{} new tokens",
            t.suite.qa_shots, t.suite.max_new_tokens
        );
    }
    for line in describe_suite(&dense) {
        if !line.starts_with("  e.g.") {
            let _ = writeln!(s, "- dense {line}");
        }
    }
    let _ = writeln!(
        s,
        "- best baseline (lowest PPL): {}\n",
        t.best_baseline.as_deref().unwrap_or("–")
    );
    let _ = writeln!(
        s,
        "| method | sparsity | PPL | MMLU | QA | Δ PPL vs dense | Δ MMLU vs dense | Δ QA vs dense | Δ PPL vs best | Δ MMLU vs best | Δ QA vs best | prune s | prune CPU s | eval s | eval CPU s | status |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &t.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {:.1} | {} | {} |",
            r.method,
            pct(r.sparsity),
            r.ppl.map_or("–".into(), |p| format!("{p:.2}")),
            pct(r.mmlu),
            pct(r.qa),
            change(r.vs_dense.ppl),
            change(r.vs_dense.mmlu),
            change(r.vs_dense.qa),
            change(r.vs_best_baseline.ppl),
            change(r.vs_best_baseline.mmlu),
            change(r.vs_best_baseline.qa),
            r.prune_seconds,
            seconds(r.prune_cpu_seconds),
            r.eval_seconds,
            seconds(r.eval_cpu_seconds),
            r.status
        );
    }
    s
}

/// Seconds with one decimal, "–" when not measured.
fn seconds(s: Option<f64>) -> String {
    s.map_or("–".into(), |s| format!("{s:.1}"))
}

#[cfg(test)]
#[path = "compare_tests.rs"]
mod tests;
