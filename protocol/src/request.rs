//! What the Planner actor is asked each iteration and what it hands back, plus the
//! iteration memory the planner and critic read (paper §3.3–3.4, Algorithm 1 line 23).
//!
//! These types cross actors (Supervisor → Planner → Critic → Checkpointer), so they live
//! here as plain data. The sparsity arithmetic lives here too, because the planner, the
//! critic and the supervisor must agree on it to the last bit.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::plan::{LayerDecision, LayerProfile, Plan};
use crate::run::{Feedback, IterationOutcome};

/// Slack when comparing global sparsities: a plan scaled to land exactly on the target
/// may miss it by rounding, and must still count as having reached it.
pub const SPARSITY_EPS: f64 = 1e-9;

/// Global sparsity weighted by parameter count: Σ params·s / Σ params.
/// Zero when there are no parameters (nothing to prune is nothing pruned).
pub fn global_sparsity(profiles: &[LayerProfile]) -> f64 {
    let total: f64 = profiles.iter().map(|p| p.params as f64).sum();
    if total <= 0.0 {
        return 0.0;
    }
    profiles
        .iter()
        .map(|p| p.params as f64 * p.sparsity.clamp(0.0, 1.0))
        .sum::<f64>()
        / total
}

/// The global sparsity a plan would reach: Σ params·min(1, s+δ) / Σ params.
/// Decisions naming unknown layers add nothing; a layer named twice counts once with
/// the larger δ (the executor would apply it once), and negative or NaN δs add nothing.
pub fn projected_sparsity(profiles: &[LayerProfile], decisions: &[LayerDecision]) -> f64 {
    let total: f64 = profiles.iter().map(|p| p.params as f64).sum();
    if total <= 0.0 {
        return 0.0;
    }
    let mut delta: HashMap<&str, f64> = HashMap::new();
    for d in decisions {
        let v = if d.delta.is_finite() {
            d.delta.max(0.0)
        } else {
            0.0
        };
        let e = delta.entry(d.layer.as_str()).or_insert(0.0);
        *e = e.max(v);
    }
    profiles
        .iter()
        .map(|p| {
            let s = p.sparsity.clamp(0.0, 1.0);
            let d = delta.get(p.name.as_str()).copied().unwrap_or(0.0);
            p.params as f64 * (s + d).min(1.0)
        })
        .sum::<f64>()
        / total
}

/// How far below the target a run still counts as finished: the executor prunes
/// `round(ρ·cols)` weights per row, so a plan that lands exactly on the target leaves the
/// masks up to half a weight per row short of it (≈ 1e-4 on SmolLM2). Another iteration
/// (a full profile and evaluation) for that would be waste.
pub const TARGET_TOLERANCE: f64 = 5e-4;

/// True when `current` has reached `target` within [`TARGET_TOLERANCE`].
pub fn target_reached(current: f64, target: f64) -> bool {
    current + TARGET_TOLERANCE >= target
}

/// The PPL rise (a fraction) that a step gaining `gain` of global sparsity may cause
/// before it is rolled back. `span` = 0: τ per iteration, whatever the step (the
/// paper). `span` > 0: τ per `span` of sparsity gained, compounded — a step of
/// `k·span` may multiply the PPL by `(1 + τ)^k` — and never less than τ, so steps up
/// to `span` are judged as the paper judges them. The PPL a repaired (OBS) step costs
/// grows with its size, and few large OBS steps end better than many small ones; a
/// per-iteration τ would force small steps on every planner.
pub fn allowed_rise(tau: f64, span: f64, gain: f64) -> f64 {
    if span <= 0.0 || gain <= span || !gain.is_finite() {
        return tau;
    }
    (1.0 + tau).powf(gain / span) - 1.0
}

/// What the planner must respect so the critic need not amend its plan. The supervisor
/// fills it from the critic's rule configuration, so planner and critic share one truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanConstraints {
    /// No layer may end an iteration above this sparsity.
    pub max_layer_sparsity: f64,
    /// Layers with z_grad above this are off limits; `None` when the rule is off.
    pub max_z_grad: Option<f64>,
    /// Layers the planner must not touch (e.g. they caused a recent rollback).
    pub forbidden_layers: BTreeSet<String>,
    /// Smallest global sparsity gain worth an evaluation (or the remaining gap, when
    /// smaller); 0 when any progress will do.
    pub min_gain: f64,
}

impl Default for PlanConstraints {
    fn default() -> Self {
        Self {
            max_layer_sparsity: 1.0,
            max_z_grad: None,
            forbidden_layers: BTreeSet::new(),
            min_gain: 0.0,
        }
    }
}

impl PlanConstraints {
    /// Whether a layer may be chosen at all (it still needs room for δ ≥ DELTA_MIN).
    pub fn allows(&self, profile: &LayerProfile) -> bool {
        !self.forbidden_layers.contains(&profile.name)
            && self.max_z_grad.is_none_or(|m| profile.z_grad <= m)
            && profile.sparsity + crate::plan::DELTA_MIN <= self.max_layer_sparsity + SPARSITY_EPS
    }
}

/// One finished iteration in the run's memory 𝓗 (Algorithm 1, line 23).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationRecord {
    /// The plan that was evaluated (after the critic's amendments). With K candidates,
    /// the committed one, or on rollback the candidate with the lowest PPL.
    pub plan: Plan,
    /// Measured result. On rollback `sparsity_after`/`ppl_after` are the values the
    /// rejected plan produced before the state was restored.
    pub outcome: IterationOutcome,
    /// The critic's reflection on this iteration, shown to the planner next time.
    pub feedback: Feedback,
}

/// The rolled-back iterations among the `window` before `iteration` (iterations
/// `iteration - window ..= iteration - 1`). `window = 0` gives none.
pub fn recent_rollbacks(
    history: &[IterationRecord],
    iteration: u32,
    window: u32,
) -> impl Iterator<Item = &IterationRecord> {
    let first = iteration.saturating_sub(window);
    history.iter().filter(move |r| {
        r.outcome.rolled_back && r.outcome.iteration >= first && r.outcome.iteration < iteration
    })
}

/// Layers of plans that were rolled back in the `window` iterations before `iteration`
/// (see [`recent_rollbacks`]).
pub fn recently_rolled_back(
    history: &[IterationRecord],
    iteration: u32,
    window: u32,
) -> BTreeSet<String> {
    recent_rollbacks(history, iteration, window)
        .flat_map(|r| r.plan.layer_decisions.iter().map(|d| d.layer.clone()))
        .collect()
}

/// A candidate the critic vetoed earlier in this iteration, shown to the planner when
/// it is asked again (a bounded number of times).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub plan: Plan,
    pub reasons: Vec<String>,
}

/// A candidate of the iteration that ended the run with `stop_pruning`, with the
/// critic's verdict on it: no iteration is stored for that planning round, so this is
/// the only record of the plan that stopped the run (and of its siblings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoppingPlan {
    /// `PlanResponse::backend` (and, for remote backends, its JSON mode).
    pub backend: String,
    pub plan: Plan,
    pub verdict: crate::Verdict,
}

/// Everything a planner backend needs for one iteration (paper §3.3's agent inputs plus
/// the constraints and memory our critic adds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// 1-based iteration number t.
    pub iteration: u32,
    /// The run stops after this many iterations whatever happens.
    pub max_iterations: u32,
    /// Every prunable layer, in model order.
    pub profiles: Vec<LayerProfile>,
    /// Global sparsity now; [`PlanRequest::new`] computes it with [`global_sparsity`].
    pub current_sparsity: f64,
    pub target_sparsity: f64,
    /// PPL of the dense model (PPL₀).
    pub baseline_ppl: f64,
    /// PPL of the last committed state (PPL_{t-1}).
    pub current_ppl: f64,
    /// Rollback threshold: an iteration raising PPL by more than this fraction is undone
    /// (per `tau_span` of sparsity gained when that is > 0: [`allowed_rise`]).
    pub tau: f64,
    /// Sparsity gain τ applies to (0 = per iteration, the paper).
    #[serde(default)]
    pub tau_span: f64,
    /// Finished iterations, oldest first.
    pub history: Vec<IterationRecord>,
    pub constraints: PlanConstraints,
    /// Candidates vetoed earlier in this same iteration, with the critic's reasons.
    pub rejections: Vec<Rejection>,
}

impl PlanRequest {
    /// A request for `iteration` with no history, rejections or constraints yet; the
    /// current sparsity is derived from `profiles` so the two cannot disagree.
    pub fn new(
        iteration: u32,
        max_iterations: u32,
        profiles: Vec<LayerProfile>,
        target_sparsity: f64,
        baseline_ppl: f64,
        current_ppl: f64,
        tau: f64,
    ) -> Self {
        let current_sparsity = global_sparsity(&profiles);
        Self {
            iteration,
            max_iterations,
            profiles,
            current_sparsity,
            target_sparsity,
            baseline_ppl,
            current_ppl,
            tau,
            tau_span: 0.0,
            history: Vec::new(),
            constraints: PlanConstraints::default(),
            rejections: Vec::new(),
        }
    }

    /// The same request with τ applying per `span` of sparsity gained.
    pub fn with_tau_span(mut self, span: f64) -> Self {
        self.tau_span = span;
        self
    }

    /// The PPL rise a step gaining `gain` may cause before it is rolled back.
    pub fn allowed_rise(&self, gain: f64) -> f64 {
        allowed_rise(self.tau, self.tau_span, gain)
    }

    /// Names of all prunable layers, in model order (for [`Plan::validate`]).
    pub fn layer_names(&self) -> Vec<&str> {
        self.profiles.iter().map(|p| p.name.as_str()).collect()
    }

    /// Feedback of the last `n` iterations, oldest first.
    pub fn recent_feedback(&self, n: usize) -> impl Iterator<Item = &Feedback> {
        let skip = self.history.len().saturating_sub(n);
        self.history.iter().skip(skip).map(|r| &r.feedback)
    }
}

/// One candidate plan as a backend produced it, with what is needed to audit it later.
/// Never holds API keys: backends record the prompt they sent and the text they got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanResponse {
    pub plan: Plan,
    /// Backend that produced it, e.g. `heuristic`, `gemini`.
    pub backend: String,
    /// Model name for LLM backends; `None` for the heuristic.
    pub model: Option<String>,
    /// System prompt sent; empty for backends that use no prompt.
    pub system_prompt: String,
    /// User prompt sent; empty for backends that use no prompt.
    pub user_prompt: String,
    /// Raw answer text as received (for the heuristic: the plan as JSON).
    pub raw_response: String,
    /// Wall time of the call in milliseconds.
    pub latency_ms: u64,
    /// Prompt tokens, as the API reported them (summed over a repair round); `None`
    /// when the backend does not say (or uses no model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Generated tokens, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
}

impl IterationOutcome {
    /// Δρ = sparsity_after − sparsity_before (paper §3.4).
    pub fn sparsity_gain(&self) -> f64 {
        self.sparsity_after - self.sparsity_before
    }

    /// Δ_PPL as a fraction: (PPL_after − PPL_before) / PPL_before; 0 when PPL_before is
    /// not positive (no meaningful relative change).
    pub fn ppl_change(&self) -> f64 {
        if self.ppl_before > 0.0 && self.ppl_before.is_finite() {
            (self.ppl_after - self.ppl_before) / self.ppl_before
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_rise_compounds_tau_per_span_and_never_goes_below_tau() {
        // Per iteration (span 0): τ whatever the step.
        assert_eq!(allowed_rise(0.15, 0.0, 0.3), 0.15);
        // Steps up to the span are judged by τ itself.
        assert_eq!(allowed_rise(0.15, 0.02, 0.001), 0.15);
        assert_eq!(allowed_rise(0.15, 0.02, 0.02), 0.15);
        // Five spans: 1.15^5 - 1.
        assert!((allowed_rise(0.15, 0.02, 0.1) - 1.011_357_187_5).abs() < 1e-9);
        assert!((allowed_rise(0.15, 0.02, 0.03) - (1.15f64.powf(1.5) - 1.0)).abs() < 1e-12);
        assert_eq!(allowed_rise(0.15, 0.02, f64::NAN), 0.15);
        let req = PlanRequest::new(1, 10, Vec::new(), 0.5, 30.0, 30.0, 0.15).with_tau_span(0.02);
        assert_eq!(req.allowed_rise(0.1), allowed_rise(0.15, 0.02, 0.1));
    }

    fn layer(name: &str, s: f64, params: u64) -> LayerProfile {
        LayerProfile {
            name: name.into(),
            z_sens: 0.0,
            z_grad: 0.0,
            sparsity: s,
            params,
            cost: Vec::new(),
        }
    }

    fn decision(layer: &str, delta: f64) -> LayerDecision {
        LayerDecision {
            layer: layer.into(),
            delta,
        }
    }

    #[test]
    fn global_sparsity_is_weighted_by_params() {
        let p = [layer("a", 0.5, 300), layer("b", 0.0, 100)];
        assert!((global_sparsity(&p) - 0.375).abs() < 1e-12);
        assert_eq!(global_sparsity(&[]), 0.0);
    }

    #[test]
    fn projected_sparsity_caps_at_one_and_ignores_unknown() {
        let p = [layer("a", 0.95, 100), layer("b", 0.0, 100)];
        let plan = [
            decision("a", 0.1),
            decision("b", 0.1),
            decision("zz", 0.15),
            decision("b", 0.05),
        ];
        // a: min(1, 1.05) = 1; b: 0.1 (duplicate counts once, larger δ).
        assert!((projected_sparsity(&p, &plan) - 0.55).abs() < 1e-12);
        assert!((projected_sparsity(&p, &[decision("b", f64::NAN)]) - 0.475).abs() < 1e-12);
    }

    #[test]
    fn recent_rollbacks_respect_window() {
        let rec = |it: u32, rolled_back: bool, layer: &str| IterationRecord {
            plan: Plan {
                reasoning: String::new(),
                stop_pruning: false,
                layer_decisions: vec![decision(layer, 0.05)],
            },
            outcome: IterationOutcome {
                iteration: it,
                sparsity_before: 0.0,
                sparsity_after: 0.1,
                ppl_before: 10.0,
                ppl_after: 13.0,
                rolled_back,
            },
            feedback: Feedback {
                iteration: it,
                summary: String::new(),
                assessment: String::new(),
            },
        };
        let h = [rec(1, true, "a"), rec(2, false, "b"), rec(3, true, "c")];
        let names = |w| {
            recently_rolled_back(&h, 4, w)
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(names(1), vec!["c".to_string()]);
        assert_eq!(names(3), vec!["a".to_string(), "c".to_string()]);
        assert!(names(0).is_empty());
        assert!((h[0].outcome.ppl_change() - 0.3).abs() < 1e-12);
        assert!((h[0].outcome.sparsity_gain() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn constraints_allow_only_layers_with_room() {
        let c = PlanConstraints {
            max_layer_sparsity: 0.5,
            max_z_grad: Some(1.0),
            forbidden_layers: ["f".to_string()].into(),
            min_gain: 0.0,
        };
        assert!(c.allows(&layer("a", 0.49, 1)));
        assert!(!c.allows(&layer("a", 0.495, 1)));
        assert!(!c.allows(&layer("f", 0.0, 1)));
        let mut hot = layer("h", 0.0, 1);
        hot.z_grad = 1.5;
        assert!(!c.allows(&hot));
    }
}
