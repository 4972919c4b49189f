//! `[heuristic]` (the offline planner's policy) and `[prompt]` (how LLM planners are
//! prompted). Both are read by the `llm` crate.

use serde::{Deserialize, Serialize};

use protocol::{DELTA_MAX, DELTA_MIN};

use crate::check::Checker;

/// `[heuristic]`: the deterministic planner. It ranks layers by risk
/// `z_sens + grad_weight·z_grad + sparsity_weight·sparsity` (safest first), decides a
/// global step from the gap, the iterations left and the PPL budget, and spreads the step
/// over the safest layers with δ ≈ `layer_delta`. Its aggressiveness starts at 1 and is
/// multiplied by `rollback_factor` after a rollback and by `bold_factor` after a cheap
/// gain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeuristicConfig {
    /// Global sparsity gain aimed for per iteration at aggressiveness 1.
    pub base_step: f64,
    /// δ given to a layer of average risk at aggressiveness 1; safer layers get up to
    /// 1.5×, riskier down to 0.5×, always within [0.01, 0.15].
    pub layer_delta: f64,
    /// Weight of z_grad in the risk score (0 ignores gradients).
    pub grad_weight: f64,
    /// Risk added per unit of a layer's current sparsity, so pruning spreads out.
    pub sparsity_weight: f64,
    /// Fraction of τ one step may spend, judged by the PPL cost per unit sparsity seen in
    /// the last iteration that gained sparsity.
    pub ppl_budget: f64,
    /// Aggressiveness multiplier after a rollback (< 1: more conservative).
    pub rollback_factor: f64,
    /// A committed gain is "cheap" when its PPL rise is at most this fraction of τ.
    pub cheap_cost: f64,
    /// Aggressiveness multiplier after a cheap gain (> 1: bolder).
    pub bold_factor: f64,
    /// Aggressiveness never goes below this …
    pub min_aggressiveness: f64,
    /// … nor above this.
    pub max_aggressiveness: f64,
}

impl Default for HeuristicConfig {
    fn default() -> Self {
        Self {
            base_step: 0.04,
            layer_delta: 0.1,
            grad_weight: 0.5,
            sparsity_weight: 2.0,
            ppl_budget: 0.5,
            rollback_factor: 0.5,
            cheap_cost: 0.25,
            bold_factor: 1.25,
            min_aggressiveness: 0.125,
            max_aggressiveness: 2.0,
        }
    }
}

impl HeuristicConfig {
    pub(crate) fn check(&self, c: &mut Checker) {
        let p = "heuristic";
        c.open_closed(&format!("{p}.base_step"), self.base_step, 0.0, 0.5);
        c.closed(
            &format!("{p}.layer_delta"),
            self.layer_delta,
            DELTA_MIN,
            DELTA_MAX,
        );
        c.closed(&format!("{p}.grad_weight"), self.grad_weight, 0.0, 10.0);
        c.closed(
            &format!("{p}.sparsity_weight"),
            self.sparsity_weight,
            0.0,
            100.0,
        );
        c.open_closed(&format!("{p}.ppl_budget"), self.ppl_budget, 0.0, 1.0);
        c.open_closed(
            &format!("{p}.rollback_factor"),
            self.rollback_factor,
            0.0,
            1.0,
        );
        c.closed(&format!("{p}.cheap_cost"), self.cheap_cost, 0.0, 1.0);
        c.closed(&format!("{p}.bold_factor"), self.bold_factor, 1.0, 4.0);
        c.open_closed(
            &format!("{p}.min_aggressiveness"),
            self.min_aggressiveness,
            0.0,
            1.0,
        );
        c.closed(
            &format!("{p}.max_aggressiveness"),
            self.max_aggressiveness,
            1.0,
            10.0,
        );
    }
}

/// `[prompt]`: what LLM planners are shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptConfig {
    /// Reflections of this many past iterations are shown (paper: the last one).
    pub feedback_window: usize,
    /// Layer lists longer than this are grouped by name pattern
    /// (`model.layers.{N}.mlp.down_proj`) to fit small contexts; shorter ones are one
    /// full name per line.
    pub compact_above: usize,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            feedback_window: 3,
            compact_above: 48,
        }
    }
}

impl PromptConfig {
    pub(crate) fn check(&self, c: &mut Checker) {
        c.int_range("prompt.feedback_window", self.feedback_window as u64, 0, 50);
        c.int_range(
            "prompt.compact_above",
            self.compact_above as u64,
            0,
            100_000,
        );
    }
}
