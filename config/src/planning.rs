//! `[heuristic]` (the offline planner's policy) and `[prompt]` (how LLM planners are
//! prompted). Both are read by the `llm` crate.

use serde::{Deserialize, Serialize};

use crate::check::Checker;

/// `[heuristic]`: the deterministic planner. It decides a global step from the gap, the
/// iterations left and the PPL budget, then raises every layer towards the new global
/// level tilted by its risk `z_sens + grad_weight·z_grad`: a layer's level is the global
/// one × (1 − `tilt`·tanh(risk)), so safer layers (negative risk) end sparser and riskier
/// ones less sparse, but none strays far from uniform (a heavily skewed allocation costs
/// far more perplexity than uniform Wanda on real models). Its aggressiveness starts at 1
/// and is multiplied by `rollback_factor` after a rollback and by `bold_factor` after a
/// cheap gain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeuristicConfig {
    /// Global sparsity gain aimed for per iteration at aggressiveness 1.
    pub base_step: f64,
    /// Largest relative deviation of a layer's sparsity from the global level: the
    /// safest layers aim at level × (1 + tilt), the riskiest at level × (1 − tilt).
    /// 0 = uniform.
    pub tilt: f64,
    /// Weight of z_grad in the risk score (0 ignores gradients).
    pub grad_weight: f64,
    /// Re-standardise z_sens and z_grad among the layers of one kind (q_proj of every
    /// block, …) before tilting, so the tilt ranks blocks rather than kinds: across all
    /// layers the Wanda-score percentile mostly reflects each kind's scale.
    pub within_kind: bool,
    /// Fraction of the PPL rise τ allows a step (`pruning.tau_span`) that one step may
    /// spend, judged by the PPL cost per unit sparsity seen in the last iteration that
    /// gained sparsity and its growth.
    pub ppl_budget: f64,
    /// Aggressiveness multiplier after a rollback (< 1: more conservative).
    pub rollback_factor: f64,
    /// A committed gain is "cheap" when its PPL rise is at most this fraction of the rise
    /// τ allowed it.
    pub cheap_cost: f64,
    /// Aggressiveness multiplier after a cheap gain (> 1: bolder).
    pub bold_factor: f64,
    /// Aggressiveness never goes below this …
    pub min_aggressiveness: f64,
    /// … nor above this.
    pub max_aggressiveness: f64,
    /// How a step is spread over the layers. `cost` (default): in chunks of 0.01 to the
    /// layer whose measured cost curve (`pruning.layer_costs`) gives the lowest expected
    /// loss rise per pruned weight, until the step is reached — equal marginal cost;
    /// layers without a curve fall back to `level`. `level`: towards a common level
    /// tilted by risk (above).
    pub allocation: Allocation,
}

/// `heuristic.allocation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// Equal marginal measured cost (the layers' `cost` curves).
    #[default]
    Cost,
    /// A common level tilted by `z_sens + grad_weight·z_grad`.
    Level,
}

impl Default for HeuristicConfig {
    fn default() -> Self {
        Self {
            base_step: 0.125,
            tilt: 0.2,
            grad_weight: 0.5,
            within_kind: false,
            ppl_budget: 1.0,
            rollback_factor: 0.5,
            cheap_cost: 0.25,
            bold_factor: 1.25,
            min_aggressiveness: 0.125,
            max_aggressiveness: 1.0,
            allocation: Allocation::Cost,
        }
    }
}

impl HeuristicConfig {
    pub(crate) fn check(&self, c: &mut Checker) {
        let p = "heuristic";
        c.open_closed(&format!("{p}.base_step"), self.base_step, 0.0, 0.5);
        c.closed(&format!("{p}.tilt"), self.tilt, 0.0, 0.9);
        c.closed(&format!("{p}.grad_weight"), self.grad_weight, 0.0, 10.0);
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
    /// Layers listed in the prompt (0 = every layer): among those the constraints allow,
    /// the cheapest per parameter by the measured cost (lowest z_sens without one), with
    /// the scale lines that relate δ to the global gain. A 30-block model's whole table is
    /// ~5k tokens; a CPU-hosted model re-reads it at every plan (164–812 s per plan for
    /// Qwen2.5-0.5B on 2 cores), and a small one picked layers the critic then dropped.
    pub listed_layers: usize,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            feedback_window: 3,
            compact_above: 48,
            listed_layers: 40,
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
        c.int_range(
            "prompt.listed_layers",
            self.listed_layers as u64,
            0,
            100_000,
        );
    }
}
