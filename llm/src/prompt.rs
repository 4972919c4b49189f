//! The prompt LLM planners receive (paper §3.3–3.4): current and target sparsity, layer
//! profiles sorted by z_sens, baseline and current PPL, and the critic's feedback on
//! past iterations. The system prompt asks the model to analyse its past decisions and
//! to answer JSON per [`protocol::plan_json_schema`].
//!
//! Long layer lists are grouped by name pattern (`model.layers.{N}.mlp.down_proj`), one
//! short row per layer, so a 30-block model (210 layers) fits well under 6k tokens;
//! short lists keep one full name per line. Both keep the z_sens order (a global rank
//! column survives the grouping).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use config::PromptConfig;
use protocol::{
    plan_json_schema, projected_sparsity, LayerDecision, LayerProfile, PlanRequest, DELTA_MAX,
    DELTA_MIN,
};

/// Share of `max_iterations` within which the pace line plans to reach the target.
/// Half: the PPL cost of a unit of sparsity grows with sparsity (steps shrink late in a
/// run) and a rolled-back iteration gains nothing, so a run paced to use every
/// iteration ends short of the target after its first rollback.
pub const PLAN_HORIZON: f64 = 0.5;

/// The δs of the scale table in shortlisted prompts (the range, in even steps).
const SCALE_DELTAS: [f64; 5] = [0.03, 0.06, 0.09, 0.12, DELTA_MAX];

/// How fast a run must gain global sparsity to reach its target in time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Iterations left, this one included.
    pub iterations_left: u32,
    /// Gain per iteration that reaches the target in exactly `iterations_left`.
    pub least: f64,
    /// Iterations (this one included) within which the run plans to finish: up to
    /// [`PLAN_HORIZON`] of `max_iterations`, all those left once that is past.
    pub planned_within: u32,
    /// Gain per iteration that finishes within `planned_within`.
    pub planned: f64,
}

/// The pace of `r`: remaining gap over iterations left (all of them, and the planned
/// share). Small models cannot divide the gap by the budget themselves; without the
/// figure they took 0.5 % steps where 50 % in 40 iterations needs more than 1.25 %.
pub fn pace(r: &PlanRequest) -> Pace {
    pace_of(
        r.target_sparsity - r.current_sparsity,
        r.iteration,
        r.max_iterations,
    )
}

/// [`pace`] from its parts: the gap to the target (negative counts as none), the
/// iteration being planned (1-based) and the run's iteration budget. The critic's
/// `under_pace` rule holds plans to the same figure the prompt states.
pub fn pace_of(gap: f64, iteration: u32, max_iterations: u32) -> Pace {
    let gap = gap.max(0.0);
    let iterations_left = (max_iterations + 1).saturating_sub(iteration).max(1);
    let horizon = (f64::from(max_iterations) * PLAN_HORIZON).ceil() as u32;
    let planned_within = match (horizon + 1).saturating_sub(iteration) {
        0 => iterations_left,
        n => n.min(iterations_left),
    };
    Pace {
        iterations_left,
        least: gap / f64::from(iterations_left),
        planned_within,
        planned: gap / f64::from(planned_within),
    }
}

/// Global gain of the same `delta` on every layer of `listed`.
fn uniform_gain(r: &PlanRequest, listed: &[LayerProfile], delta: f64) -> f64 {
    let all: Vec<LayerDecision> = listed
        .iter()
        .map(|p| LayerDecision {
            layer: p.name.clone(),
            delta,
        })
        .collect();
    projected_sparsity(&r.profiles, &all) - r.current_sparsity
}

/// The δ (3 decimals, rounded up, within the allowed range) that, on every layer of
/// `listed`, gains at least `want`; `None` when even [`DELTA_MAX`] gains less.
pub fn uniform_delta_for(r: &PlanRequest, listed: &[LayerProfile], want: f64) -> Option<f64> {
    if uniform_gain(r, listed, DELTA_MAX) + 1e-12 < want {
        return None;
    }
    // The gain is non-decreasing in δ: bisect, then round up to a readable value.
    let (mut lo, mut hi) = (0.0, DELTA_MAX);
    for _ in 0..50 {
        let mid = 0.5 * (lo + hi);
        if uniform_gain(r, listed, mid) + 1e-12 < want {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(((hi * 1e3 - 1e-6).ceil() / 1e3).clamp(DELTA_MIN, DELTA_MAX))
}

/// A system + user message pair, as sent to chat backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub system: String,
    pub user: String,
}

impl Prompt {
    /// Total characters (≈ 4 per token for English and numbers).
    pub fn chars(&self) -> usize {
        self.system.chars().count() + self.user.chars().count()
    }
}

/// What candidate `index` of K should aim for; index 0 is the model's best guess. The
/// ladder matches the heuristic planner's variants so K candidates differ in kind.
pub fn candidate_style(index: usize) -> &'static str {
    const STYLES: [&str; 6] = [
        "balanced: your best estimate of the right step",
        "conservative: about half your usual step, only the safest layers",
        "bold: about 1.5 times your usual step",
        "spread: many layers with small deltas",
        "focused: few layers with large deltas",
        "exploratory: prefer safe layers you have not pruned yet",
    ];
    STYLES[index.min(STYLES.len() - 1)]
}

/// The system prompt: role, meaning of the statistics, rules, the instruction to
/// analyse past decisions, and the answer schema.
pub fn system_prompt() -> String {
    // Keys in the paper's order (reasoning first), as the structured-output request has them.
    let schema = plan_json_schema(None).to_json();
    format!(
        "You are a pruning agent. One iteration at a time, you decide which linear layers of a \
large language model to prune further and by how much, so that the model reaches a target \
global sparsity with as little perplexity (PPL) damage as possible. Inside a layer, weights are \
removed by Wanda (smallest |W|*||X||_2 of each output row first); you only choose layers and \
amounts.

How to read the layer statistics:
- z_sens: z-score across layers of the layer's Wanda sensitivity (10th percentile of its \
active |W|*||X||_2 scores). Negative = below-average sensitivity, safer to prune; positive = riskier.
- z_grad: z-score of the layer's mean gradient magnitude |dL/dW|. Positive = the loss depends on \
this layer more than average; prefer layers with z_grad <= 0.
- sparsity: the layer's current fraction of pruned weights. Heavily pruned layers get riskier.
- Global sparsity is weighted by parameter count: sum(params * min(1, s + delta)) / sum(params), \
so large layers move it more.

Rules: each decision adds delta in [{DELTA_MIN}, {DELTA_MAX}] to one layer; name each layer at \
most once, exactly as listed; respect the constraints you are given. An iteration that raises \
PPL by more than the rollback threshold is undone and reported back to you. Set stop_pruning to \
true only when the target is reached or further pruning would clearly be too harmful.

Before deciding, analyse your previous decisions against their outcomes in the feedback: which \
choices gained sparsity cheaply, which cost perplexity or caused a rollback. Adjust: more \
conservative after damage, bolder after cheap gains. Put this analysis and your strategy in \
`reasoning` (a few sentences).

Answer with one JSON object and nothing else, following this JSON schema:
{schema}"
    )
}

/// Build the prompt for candidate `candidate` (0-based) of `k` for this request, listing
/// the layers of [`listing`].
pub fn build_prompt(
    request: &PlanRequest,
    options: &PromptConfig,
    candidate: usize,
    k: usize,
) -> Prompt {
    build_prompt_listing(request, options, candidate, k, &listing(request, options))
}

/// The `n` layers a small model is shown instead of the whole profile: among the layers
/// the constraints allow, the cheapest per parameter by the measured cost of the next
/// 0.05 when every one of them has a cost curve, else those with the lowest z_sens; in
/// model order. A 30-block model's full table is ~5k tokens (numbers are tokenized
/// digit by digit), which a CPU-bound model would re-read at every plan and a 135M one
/// cannot use anyway.
pub fn shortlist(request: &PlanRequest, n: usize) -> Vec<LayerProfile> {
    let mut allowed: Vec<(usize, &LayerProfile)> = request
        .profiles
        .iter()
        .enumerate()
        .filter(|(_, p)| request.constraints.allows(p))
        .collect();
    let costs = allowed.iter().all(|(_, p)| p.cost.len() >= COST_SHOWN);
    let key = |p: &LayerProfile| {
        if costs {
            p.cost[COST_SHOWN - 1] / (p.params.max(1) as f64)
        } else {
            p.z_sens
        }
    };
    allowed.sort_by(|a, b| key(a.1).total_cmp(&key(b.1)).then(a.0.cmp(&b.0)));
    allowed.truncate(n);
    allowed.sort_by_key(|(i, _)| *i);
    allowed.into_iter().map(|(_, p)| p.clone()).collect()
}

/// The layers a prompt lists under `options`: the [`shortlist`] of
/// `options.listed_layers`, or every layer when that is 0.
pub fn listing(request: &PlanRequest, options: &PromptConfig) -> Vec<LayerProfile> {
    match options.listed_layers {
        0 => request.profiles.clone(),
        n => shortlist(request, n),
    }
}

/// [`build_prompt`] with the layer table limited to `listed` (e.g. a [`shortlist`]);
/// when that is not every layer, the prompt says so.
pub fn build_prompt_listing(
    request: &PlanRequest,
    options: &PromptConfig,
    candidate: usize,
    k: usize,
    listed: &[LayerProfile],
) -> Prompt {
    let mut u = String::new();
    let r = request;
    let gap = (r.target_sparsity - r.current_sparsity).max(0.0);
    let _ = writeln!(
        u,
        "Iteration {} of at most {}.",
        r.iteration, r.max_iterations
    );
    let _ = writeln!(
        u,
        "Global sparsity: {:.4} now, target {:.4} (gap {:.4}).",
        r.current_sparsity, r.target_sparsity, gap
    );
    u.push_str(&pace_text(&pace(r)));
    let _ = writeln!(
        u,
        "Perplexity: baseline {:.3}, current {:.3} ({:+.1}% vs baseline). {}",
        r.baseline_ppl,
        r.current_ppl,
        pct(r.current_ppl, r.baseline_ppl),
        rollback_text(r)
    );
    u.push_str(&constraints_text(request));

    u.push_str("\nFeedback on previous iterations (oldest first):\n");
    let feedback: Vec<_> = r.recent_feedback(options.feedback_window).collect();
    if feedback.is_empty() {
        u.push_str("(none yet: this is the first iteration)\n");
    }
    for f in feedback {
        let _ = writeln!(
            u,
            "- Iteration {}: {}\n  Assessment: {}",
            f.iteration,
            f.summary.trim().replace('\n', "\n  "),
            f.assessment
        );
    }

    if !r.rejections.is_empty() {
        u.push_str("\nThe critic vetoed these earlier plans for this iteration; do not repeat their mistakes:\n");
        for (i, rej) in r.rejections.iter().enumerate() {
            let _ = writeln!(
                u,
                "- Vetoed plan {}: {}\n  Reasons: {}",
                i + 1,
                decisions_text(&rej.plan.layer_decisions, 8),
                rej.reasons.join("; ")
            );
        }
    }

    u.push('\n');
    if listed.len() < r.profiles.len() {
        let by = if listed.iter().all(|p| p.cost.len() >= COST_SHOWN) {
            "the lowest cost per parameter"
        } else {
            "the lowest z_sens"
        };
        let _ = writeln!(
            u,
            "Only the {} layers with {by} that the constraints allow are listed (of {} \
prunable layers); choose among them.",
            listed.len(),
            r.profiles.len()
        );
        u.push_str(&scale_text(r, listed));
    }
    u.push_str(&layer_table(listed, options.compact_above));
    // After the (long) layer table, so the K candidates' prompts share everything before
    // this line and a local model computes that prefix once per iteration.
    if k > 1 {
        let _ = writeln!(
            u,
            "\nYou are asked for candidate {} of {k}; the candidates are evaluated side by side \
and the best one within the rollback threshold is kept. Make this one {}.",
            candidate + 1,
            candidate_style(candidate)
        );
    }
    u.push_str(
        "\nAnalyse your previous decisions against their outcomes, then answer with the JSON \
object only.\n",
    );
    Prompt {
        system: system_prompt(),
        user: u,
    }
}

/// The pace line every prompt carries.
fn pace_text(p: &Pace) -> String {
    let mut t = format!(
        "Pace: {} iteration(s) left, this one included: a gain of at least {:.2} % of global \
sparsity per iteration reaches the target in time.",
        p.iterations_left,
        p.least * 100.0
    );
    if p.planned_within < p.iterations_left {
        let _ = write!(
            t,
            " Plan to finish within {} (+{:.2} % per iteration): later steps cost more \
perplexity per unit of sparsity, and a rolled-back iteration gains nothing.",
            p.planned_within,
            p.planned * 100.0
        );
    }
    t.push('\n');
    t
}

/// Worked figures relating δ to the global gain for a shortlisted prompt: small models
/// cannot do the parameter-weighted sum, and with a single figure (δ 0.05) they copied
/// it on every iteration, gaining ~0.5 % where the run needed several. The table spans
/// the allowed range; the last sentence names the δ that keeps the planned pace. Gains
/// are in percent so that no figure but a δ looks like one: given the pace as 0.0125,
/// Qwen2.5-0.5B wrote δ 0.0125 on a single layer.
fn scale_text(r: &PlanRequest, listed: &[LayerProfile]) -> String {
    let rows: Vec<String> = SCALE_DELTAS
        .iter()
        .map(|&d| format!("{d:.2} -> +{:.2} %", uniform_gain(r, listed, d) * 100.0))
        .collect();
    let mut t = format!(
        "Scale: the same delta on every listed layer raises global sparsity by: {}.",
        rows.join(", ")
    );
    let planned = pace(r).planned;
    match uniform_delta_for(r, listed, planned) {
        Some(d) => {
            let _ = write!(
                t,
                " The planned pace (+{:.2} %) is delta {d:.3} on every listed layer.",
                planned * 100.0
            );
        }
        None => {
            let _ = write!(
                t,
                " Even delta {DELTA_MAX} on every listed layer gains less than the planned pace \
(+{:.2} %).",
                planned * 100.0
            );
        }
    }
    t.push('\n');
    t
}

fn pct(now: f64, base: f64) -> f64 {
    if base > 0.0 {
        (now / base - 1.0) * 100.0
    } else {
        0.0
    }
}

fn constraints_text(r: &PlanRequest) -> String {
    let c = &r.constraints;
    let mut t = format!(
        "Constraints: delta per layer in [{DELTA_MIN}, {DELTA_MAX}]; no layer may exceed sparsity {:.2}",
        c.max_layer_sparsity
    );
    if let Some(m) = c.max_z_grad {
        let _ = write!(t, "; layers with z_grad above {m:.2} are off limits");
    }
    if !c.forbidden_layers.is_empty() {
        let names: Vec<_> = c.forbidden_layers.iter().map(String::as_str).collect();
        let _ = write!(
            t,
            "; do not choose these layers (they were in a plan that was rolled back recently): {}",
            names.join(", ")
        );
    }
    if c.min_gain > 0.0 {
        let _ = write!(
            t,
            "; plans must gain at least {:.4} of global sparsity (or the whole remaining gap)",
            c.min_gain
        );
    }
    t.push_str(".\n");
    t
}

/// `a +0.050, b +0.030, … and 4 more`.
pub fn decisions_text(decisions: &[LayerDecision], max: usize) -> String {
    if decisions.is_empty() {
        return "no layers".into();
    }
    let mut parts: Vec<String> = decisions
        .iter()
        .take(max)
        .map(|d| format!("{} +{:.3}", d.layer, d.delta))
        .collect();
    if decisions.len() > max {
        parts.push(format!("and {} more", decisions.len() - max));
    }
    parts.join(", ")
}

/// Split `model.layers.12.mlp.down_proj` into (`model.layers.{N}.mlp.down_proj`, 12) at
/// the first all-digit segment; `None` for names without one.
fn split_pattern(name: &str) -> Option<(String, u64)> {
    let segs: Vec<&str> = name.split('.').collect();
    let i = segs
        .iter()
        .position(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))?;
    let n = segs[i].parse().ok()?;
    let mut pat: Vec<&str> = segs.clone();
    pat[i] = "{N}";
    Some((pat.join("."), n))
}

/// Entries of a cost curve up to the δ the table shows (0.05).
const COST_SHOWN: usize = 5;

const COST_NOTE: &str = "cost: the measured expected rise of the calibration loss (nats per \
token) if the layer alone gained 0.05 more sparsity (OBS estimate weighted by the layer's output \
Fisher). It already accounts for the layer's size and current sparsity: prefer the cheapest \
layers per pruned parameter (cost / params).\n";

/// The layer list, sorted by z_sens (safest first): one full name per line when there
/// are at most `compact_above` layers, else grouped by name pattern.
pub fn layer_table(profiles: &[LayerProfile], compact_above: usize) -> String {
    let mut order: Vec<&LayerProfile> = profiles.iter().collect();
    order.sort_by(|a, b| a.z_sens.total_cmp(&b.z_sens).then(a.name.cmp(&b.name)));
    let rank: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i + 1))
        .collect();
    // The measured cost of the next 0.05, when every layer has a curve.
    let costs = profiles.iter().all(|p| p.cost.len() >= COST_SHOWN);
    let row = |p: &LayerProfile| {
        let mut r = format!("{:+.2} {:+.2} {:.3}", p.z_sens, p.z_grad, p.sparsity);
        if costs {
            let _ = write!(r, " {:.2e}", p.cost[COST_SHOWN - 1]);
        }
        r
    };
    let mut t = String::new();
    if costs {
        t.push_str(COST_NOTE);
    }
    let cost_col = if costs { ", cost" } else { "" };
    if profiles.len() <= compact_above {
        let _ = writeln!(
            t,
            "Layer profiles ({} layers), sorted by z_sens (safest first). Columns: rank, name, \
z_sens, z_grad, sparsity{cost_col}, params.",
            profiles.len()
        );
        for p in &order {
            let _ = writeln!(
                t,
                "#{} {} {} {}",
                rank[p.name.as_str()],
                p.name,
                row(p),
                p.params
            );
        }
        return t;
    }

    // Group by pattern, keeping z_sens order inside each group.
    let mut groups: BTreeMap<String, Vec<(u64, &LayerProfile)>> = BTreeMap::new();
    let mut other: Vec<&LayerProfile> = Vec::new();
    for p in &order {
        match split_pattern(&p.name) {
            Some((pat, n)) => groups.entry(pat).or_default().push((n, p)),
            None => other.push(p),
        }
    }
    // A pattern with one member saves nothing: show it with its full name.
    let singles: Vec<String> = groups
        .iter()
        .filter(|(_, v)| v.len() == 1)
        .map(|(k, _)| k.clone())
        .collect();
    for k in singles {
        if let Some(v) = groups.remove(&k) {
            other.extend(v.into_iter().map(|(_, p)| p));
        }
    }
    other.sort_by_key(|p| rank[p.name.as_str()]);
    let mut groups: Vec<(String, Vec<(u64, &LayerProfile)>)> = groups.into_iter().collect();
    groups.sort_by_key(|(_, v)| v.first().map_or(usize::MAX, |(_, p)| rank[p.name.as_str()]));

    let example = groups
        .first()
        .and_then(|(pat, v)| v.first().map(|(n, _)| pat.replace("{N}", &n.to_string())));
    let _ = write!(
        t,
        "Layer profiles ({} layers), grouped by name pattern: replace {{N}} with the number in the \
first column to get the exact layer name",
        profiles.len()
    );
    if let Some(e) = example {
        let _ = write!(t, " (e.g. {e})");
    }
    t.push_str(
        ". Groups are ordered by their safest layer, rows by z_sens. Columns: N, rank (1 = \
lowest z_sens of all layers), z_sens, z_grad, sparsity",
    );
    t.push_str(cost_col);
    t.push_str(".\n");
    for (pat, rows) in &groups {
        let params = rows[0].1.params;
        let uniform = rows.iter().all(|(_, p)| p.params == params);
        if uniform {
            let _ = writeln!(t, "[{pat}] {} layers x {params} params", rows.len());
        } else {
            let _ = writeln!(t, "[{pat}] {} layers, params in last column", rows.len());
        }
        for (n, p) in rows {
            let _ = write!(t, "{n} #{} {}", rank[p.name.as_str()], row(p));
            if !uniform {
                let _ = write!(t, " {}", p.params);
            }
            t.push('\n');
        }
    }
    if !other.is_empty() {
        let _ = writeln!(
            t,
            "[other layers] full name, rank, z_sens, z_grad, sparsity{cost_col}, params"
        );
        for p in other {
            let _ = writeln!(
                t,
                "{} #{} {} {}",
                p.name,
                rank[p.name.as_str()],
                row(p),
                p.params
            );
        }
    }
    t
}

#[cfg(test)]
#[path = "prompt_tests.rs"]
mod tests;

/// The rollback rule as the planner must plan for it.
fn rollback_text(r: &PlanRequest) -> String {
    if r.tau_span <= 0.0 {
        return format!(
            "An iteration that raises perplexity by more than {:.1}% is rolled back.",
            r.tau * 100.0
        );
    }
    format!(
        "An iteration that raises perplexity by more than {:.1}% per {:.2} of global sparsity \
it gains (compounded, never less than {:.1}%: {:.1}% for a {:.2} step) is rolled back.",
        r.tau * 100.0,
        r.tau_span,
        r.tau * 100.0,
        r.allowed_rise(0.1) * 100.0,
        0.1
    )
}
