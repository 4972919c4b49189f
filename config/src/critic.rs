//! `[critic]`: the explicit, switchable rules the Critic applies to each candidate plan
//! (DESIGN.md §3), the thresholds of its qualitative assessment (paper §3.4), and an
//! optional LLM backend for writing reflections.

use serde::{Deserialize, Serialize};

use protocol::{recently_rolled_back, IterationRecord, PlanConstraints};

use crate::backend::{BackendConfig, BackendKind};
use crate::check::Checker;

/// What a rule does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// The rule is not checked.
    Off,
    /// Repair the plan (clamp, drop, scale) and say why; the repaired plan goes on.
    Amend,
    /// Refuse the plan with reasons; the planner is asked again (bounded).
    Veto,
}

impl RuleAction {
    pub fn is_on(self) -> bool {
        self != Self::Off
    }

    fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Amend => "amend",
            Self::Veto => "veto",
        }
    }
}

/// When the `under_pace` rule repairs plans. `auto` (the default) is `amend` when an LLM
/// plans and `off` for the heuristic planner, which sizes its own steps from the gap and
/// the PPL budget; the Supervisor resolves it once it knows the planner backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PaceRule {
    #[default]
    Auto,
    Off,
    Amend,
}

impl PaceRule {
    /// `auto` made concrete for a planner backend; `off` and `amend` stay as they are.
    pub fn resolve(self, planner: BackendKind) -> Self {
        match (self, planner) {
            (Self::Auto, BackendKind::Heuristic) => Self::Off,
            (Self::Auto, _) => Self::Amend,
            (other, _) => other,
        }
    }
}

/// `[critic.rules]`. Each `*` rule is an action (`off` | `amend` | `veto`), with its
/// threshold next to it. Rules that can only refuse (`empty_plan`, `min_progress`)
/// accept `off` | `veto`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriticRules {
    /// Decisions naming a layer the model does not have. Amend: drop them.
    pub unknown_layer: RuleAction,
    /// A layer named more than once. Amend: keep the first decision.
    pub duplicate_layer: RuleAction,
    /// δ outside [0.01, 0.15]. Amend: clamp into range (NaN δ is dropped).
    pub delta_bounds: RuleAction,
    /// A layer that would exceed `layer_sparsity_cap`. Amend: shrink δ to fit, or drop
    /// the layer when less than 0.01 of room is left.
    pub max_layer_sparsity: RuleAction,
    pub layer_sparsity_cap: f64,
    /// A layer whose z_grad exceeds `z_grad_cap` (gradient says it matters). Amend: drop.
    pub high_z_grad: RuleAction,
    pub z_grad_cap: f64,
    /// A layer that was in a rolled-back plan in the last `rollback_window` iterations.
    /// Amend: drop. Off by default: plans that spread a step over many layers (the
    /// heuristic's do) would leave only the riskiest layers after one rollback. Meant
    /// for planners that pick a few layers with large δ.
    pub recent_rollback: RuleAction,
    pub rollback_window: u32,
    /// A plan that would land more than `overshoot_tolerance` above the target sparsity.
    /// Amend: scale all δs down (dropping layers whose δ would fall below 0.01).
    pub overshoot: RuleAction,
    pub overshoot_tolerance: f64,
    /// A plan with no decisions that does not stop, or whose decisions were all dropped
    /// by amendments. Veto only.
    pub empty_plan: RuleAction,
    /// A plan whose global sparsity gain is below `min_gain` (or below the remaining
    /// gap, when that is smaller). Veto only.
    pub min_progress: RuleAction,
    pub min_gain: f64,
    /// A plan gaining less than the planned pace (the gap over the iterations left within
    /// half of `max_iterations`, the figure the prompt states) is scaled up to it: every
    /// δ by one factor, within [0.01, 0.15] and the layer cap, so the LLM's choice of
    /// layers and their relative δs survive. Small LLMs under-step (Qwen2.5-0.5B gained
    /// ~1 % per iteration where 50 % in 40 iterations needs 1.25 %). Not applied while an
    /// iteration within the last `rollback_window` was rolled back: then a smaller step
    /// is the right answer.
    pub under_pace: PaceRule,
    /// `stop_pruning` while the target is not reached. Amend (the default): the stop is
    /// cleared and the plan's layer decisions are kept (and reviewed like any other);
    /// a plan with no decisions to keep is then an empty plan. Veto: the plan goes back
    /// with the reason. Off: the stop is approved and the run ends, as the paper
    /// allows. Not off by default: LLM planners (local or remote) said stop at 0 %
    /// sparsity and a run ended with nothing pruned; the heuristic stops early only
    /// when no layer can take more, which amend turns into an empty-plan veto.
    pub premature_stop: RuleAction,
}

impl Default for CriticRules {
    fn default() -> Self {
        Self {
            unknown_layer: RuleAction::Amend,
            duplicate_layer: RuleAction::Amend,
            delta_bounds: RuleAction::Amend,
            max_layer_sparsity: RuleAction::Amend,
            layer_sparsity_cap: 0.9,
            high_z_grad: RuleAction::Amend,
            z_grad_cap: 2.5,
            recent_rollback: RuleAction::Off,
            rollback_window: 2,
            overshoot: RuleAction::Amend,
            overshoot_tolerance: 0.005,
            empty_plan: RuleAction::Veto,
            min_progress: RuleAction::Veto,
            min_gain: 0.001,
            under_pace: PaceRule::Auto,
            premature_stop: RuleAction::Amend,
        }
    }
}

impl CriticRules {
    pub(crate) fn check(&self, c: &mut Checker) {
        let p = "critic.rules";
        for (name, action) in [
            ("empty_plan", self.empty_plan),
            ("min_progress", self.min_progress),
        ] {
            if action == RuleAction::Amend {
                c.fail(
                    &format!("{p}.{name}"),
                    format!("\"{}\"", action.name()),
                    "this rule can only refuse a plan: use \"off\" or \"veto\"",
                );
            }
        }
        c.open_closed(
            &format!("{p}.layer_sparsity_cap"),
            self.layer_sparsity_cap,
            0.0,
            1.0,
        );
        if !self.z_grad_cap.is_finite() {
            c.fail(
                &format!("{p}.z_grad_cap"),
                self.z_grad_cap,
                "must be a finite number",
            );
        }
        c.int_range(
            &format!("{p}.rollback_window"),
            self.rollback_window.into(),
            0,
            1000,
        );
        c.closed(
            &format!("{p}.overshoot_tolerance"),
            self.overshoot_tolerance,
            0.0,
            0.5,
        );
        c.closed(&format!("{p}.min_gain"), self.min_gain, 0.0, 0.5);
    }

    /// What the planner must respect this iteration so that these rules would not
    /// amend its plan: the layer cap, the z_grad cap and the recently rolled-back
    /// layers and the minimum gain, each only when its rule is on.
    pub fn plan_constraints(&self, history: &[IterationRecord], iteration: u32) -> PlanConstraints {
        PlanConstraints {
            max_layer_sparsity: if self.max_layer_sparsity.is_on() {
                self.layer_sparsity_cap
            } else {
                1.0
            },
            max_z_grad: self.high_z_grad.is_on().then_some(self.z_grad_cap),
            forbidden_layers: if self.recent_rollback.is_on() {
                recently_rolled_back(history, iteration, self.rollback_window)
            } else {
                Default::default()
            },
            min_gain: if self.min_progress.is_on() {
                self.min_gain
            } else {
                0.0
            },
        }
    }
}

/// `[critic.assessment]`: when the reflection calls an iteration Excellent, Good, Fair
/// or Risky. "Cost" is the PPL increase as a fraction of τ (1.0 = at the rollback line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssessmentThresholds {
    /// Global sparsity gain an iteration needs to be called Excellent.
    pub excellent_min_gain: f64,
    /// Largest cost still Excellent.
    pub excellent_max_cost: f64,
    /// Largest cost still Good.
    pub good_max_cost: f64,
    /// Largest cost still Fair; above it the iteration is Risky.
    pub fair_max_cost: f64,
}

impl Default for AssessmentThresholds {
    fn default() -> Self {
        Self {
            excellent_min_gain: 0.02,
            excellent_max_cost: 0.2,
            good_max_cost: 0.5,
            fair_max_cost: 0.8,
        }
    }
}

impl AssessmentThresholds {
    fn check(&self, c: &mut Checker) {
        let p = "critic.assessment";
        c.closed(
            &format!("{p}.excellent_min_gain"),
            self.excellent_min_gain,
            0.0,
            1.0,
        );
        c.closed(
            &format!("{p}.excellent_max_cost"),
            self.excellent_max_cost,
            0.0,
            1.0,
        );
        c.closed(&format!("{p}.good_max_cost"), self.good_max_cost, 0.0, 1.0);
        c.closed(&format!("{p}.fair_max_cost"), self.fair_max_cost, 0.0, 1.0);
        let ordered = self.excellent_max_cost <= self.good_max_cost
            && self.good_max_cost <= self.fair_max_cost;
        if !ordered {
            c.fail(
                &format!("{p}.good_max_cost"),
                self.good_max_cost,
                format!(
                    "costs must satisfy excellent_max_cost ({}) <= good_max_cost <= fair_max_cost ({})",
                    self.excellent_max_cost, self.fair_max_cost
                ),
            );
        }
    }
}

/// `[critic]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriticConfig {
    /// How many times per iteration a fully vetoed set of candidates goes back to the
    /// planner with the reasons before the iteration counts as "no plan" (the run stops).
    pub max_replans: u32,
    pub rules: CriticRules,
    pub assessment: AssessmentThresholds,
    /// LLM that writes the reflection; unset uses the built-in template (offline).
    pub reflection: Option<BackendConfig>,
}

impl Default for CriticConfig {
    fn default() -> Self {
        Self {
            max_replans: 2,
            rules: CriticRules::default(),
            assessment: AssessmentThresholds::default(),
            reflection: None,
        }
    }
}

impl CriticConfig {
    pub(crate) fn check(&self, c: &mut Checker) {
        c.int_range("critic.max_replans", self.max_replans.into(), 0, 20);
        self.rules.check(c);
        self.assessment.check(c);
        if let Some(r) = &self.reflection {
            r.check("critic.reflection", c);
        }
    }
}
