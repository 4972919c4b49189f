//! The offline default planner: a deterministic policy, no LLM.
//!
//! 1. **Posture** from the run's memory: aggressiveness starts at 1, is multiplied by
//!    `rollback_factor` after each rollback and by `bold_factor` after each cheap gain
//!    (PPL rise ≤ `cheap_cost`·τ). The last iteration that gained sparsity gives the
//!    observed PPL cost per unit of global sparsity.
//! 2. **Step** (global sparsity to add): `base_step`·aggressiveness, at least what is
//!    needed to finish in the iterations left, at most what the PPL budget allows
//!    (`ppl_budget`·τ / observed cost), never past the target.
//! 3. **Layers**: those the constraints allow, ranked by risk
//!    `z_sens + grad_weight·z_grad + sparsity_weight·sparsity` (negative z_sens and
//!    non-positive z_grad first); safest first, each with δ ≈ `layer_delta` scaled by
//!    its safety, until the step is covered (the last δ trimmed to land on it).
//!
//! K candidates walk a fixed ladder — balanced, conservative (½ step), bold (1.5×),
//! spread (½ δ, more layers), focused (2× δ, fewer layers) — then seeded variants whose
//! risk ranking is jittered (different layer subsets). Same request + seed ⇒ same plans.

use std::time::Instant;

use config::HeuristicConfig;
use protocol::{
    global_sparsity, projected_sparsity, target_reached, IterationRecord, LayerDecision,
    LayerProfile, Plan, PlanRequest, PlanResponse, DELTA_MAX, DELTA_MIN,
};

use crate::error::Result;
use crate::planner::{check_request, PlannerBackend};
use crate::rng::unit;

/// One rung of the candidate ladder.
#[derive(Debug, Clone, Copy)]
struct Variant {
    label: &'static str,
    /// Multiplier of the global step.
    step: f64,
    /// Multiplier of the per-layer δ.
    delta: f64,
    /// Amplitude of seeded noise added to the risk ranking (0 = none).
    jitter: f64,
}

/// A fixed rung (no jitter): (label, step multiplier, δ multiplier).
const fn rung(label: &'static str, step: f64, delta: f64) -> Variant {
    Variant {
        label,
        step,
        delta,
        jitter: 0.0,
    }
}

const LADDER: [Variant; 5] = [
    rung("balanced", 1.0, 1.0),
    rung("conservative", 0.5, 1.0),
    rung("bold", 1.5, 1.25),
    rung("spread", 1.0, 0.5),
    rung("focused", 1.0, 2.0),
];

fn variant(index: usize) -> Variant {
    LADDER.get(index).copied().unwrap_or(Variant {
        label: "exploratory",
        step: 1.0,
        delta: 1.0,
        jitter: 1.0,
    })
}

/// How many extra ladder rungs `candidates` may try to fill K distinct plans.
const EXTRA_TRIES: usize = 8;

/// What the planner reads from its memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Posture {
    pub aggressiveness: f64,
    pub rollbacks: usize,
    pub cheap_gains: usize,
    /// Relative PPL rise per unit of global sparsity in the last iteration that gained
    /// sparsity (rolled back or not); `None` before any.
    pub last_cost: Option<f64>,
}

/// The deterministic heuristic planner.
#[derive(Debug, Clone)]
pub struct HeuristicPlanner {
    cfg: HeuristicConfig,
    seed: u64,
}

impl HeuristicPlanner {
    /// `seed` only affects the exploratory candidates (index ≥ 5) and is mixed with the
    /// iteration, so a run is reproducible from its config.
    pub fn new(cfg: HeuristicConfig, seed: u64) -> Self {
        Self { cfg, seed }
    }

    /// Aggressiveness and observed cost from the run's memory (oldest record first).
    pub fn posture(&self, history: &[IterationRecord], tau: f64) -> Posture {
        let c = &self.cfg;
        let mut p = Posture {
            aggressiveness: 1.0,
            rollbacks: 0,
            cheap_gains: 0,
            last_cost: None,
        };
        for r in history {
            let o = &r.outcome;
            if o.rolled_back {
                p.rollbacks += 1;
                p.aggressiveness *= c.rollback_factor;
            } else if o.sparsity_gain() > 0.0 && o.ppl_change() <= c.cheap_cost * tau {
                p.cheap_gains += 1;
                p.aggressiveness *= c.bold_factor;
            }
            p.aggressiveness = p
                .aggressiveness
                .clamp(c.min_aggressiveness, c.max_aggressiveness);
        }
        p.last_cost = history
            .iter()
            .rev()
            .map(|r| &r.outcome)
            .find(|o| o.sparsity_gain() > 0.0)
            .map(|o| o.ppl_change().max(0.0) / o.sparsity_gain());
        p
    }

    /// The global sparsity step for the balanced candidate, with a note on what bound it.
    fn step(&self, req: &PlanRequest, current: f64, posture: &Posture) -> (f64, String) {
        let gap = (req.target_sparsity - current).max(0.0);
        let iters_left = (req.max_iterations + 1)
            .saturating_sub(req.iteration)
            .max(1);
        let mut step = self.cfg.base_step * posture.aggressiveness;
        let mut why = format!(
            "base step {:.4} x aggressiveness {:.2}",
            self.cfg.base_step, posture.aggressiveness
        );
        let pace = gap / f64::from(iters_left);
        if pace > step {
            step = pace;
            why = format!("pace to finish in {iters_left} iterations");
        }
        if let Some(cost) = posture.last_cost.filter(|c| *c > 0.0) {
            let cap = self.cfg.ppl_budget * req.tau / cost;
            if cap < step {
                step = cap;
                why = format!(
                    "PPL budget: {:.0}% of tau at the last observed cost of {:.2} PPL per unit sparsity",
                    self.cfg.ppl_budget * 100.0,
                    cost
                );
            }
        }
        if req.constraints.min_gain > step {
            step = req.constraints.min_gain;
            why = "the critic's minimum gain".into();
        }
        (step.min(gap), why)
    }

    /// Candidate `index` of the ladder for this request. Never panics; a request that
    /// fails [`check_request`] should not reach here (the backend entry point checks).
    pub fn plan(&self, req: &PlanRequest, index: usize) -> Plan {
        let current = global_sparsity(&req.profiles);
        let target = req.target_sparsity;
        if target_reached(current, target) {
            return stop(format!(
                "Target reached: global sparsity {current:.4} >= target {target:.4}."
            ));
        }
        let v = variant(index);
        let posture = self.posture(&req.history, req.tau);
        let (base, why) = self.step(req, current, &posture);
        let gap = target - current;
        let step = (base * v.step).min(gap);

        let cap = req.constraints.max_layer_sparsity.min(1.0);
        let mut rng = self.seed ^ (u64::from(req.iteration) << 32) ^ index as u64;
        let mut ranked: Vec<(f64, &LayerProfile)> = req
            .profiles
            .iter()
            .filter(|p| req.constraints.allows(p) && cap - p.sparsity >= DELTA_MIN)
            .map(|p| {
                let noise = v.jitter * (unit(&mut rng) - 0.5);
                (self.risk(p) + noise, p)
            })
            .collect();
        if ranked.is_empty() {
            return stop(format!(
                "No layer can take more sparsity within the constraints (layer cap {cap:.2}, \
{} forbidden layers); stopping at global sparsity {current:.4}.",
                req.constraints.forbidden_layers.len()
            ));
        }
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.name.cmp(&b.1.name)));

        let total: f64 = req.profiles.iter().map(|p| p.params as f64).sum();
        let mut decisions = Vec::new();
        let mut acc = 0.0;
        for (risk, p) in ranked {
            if acc >= step {
                break;
            }
            if p.params == 0 {
                continue; // adds nothing to the global sparsity
            }
            let room = (cap - p.sparsity).min(DELTA_MAX);
            let safety = 1.0 - 0.5 * risk.tanh();
            let mut delta = (self.cfg.layer_delta * v.delta * safety).clamp(DELTA_MIN, room);
            let weight = p.params as f64 / total;
            if acc + weight * delta > step {
                delta = ((step - acc) / weight).clamp(DELTA_MIN, room);
            }
            // Four decimals keep plans readable; rounding down never breaks the cap.
            let delta = ((delta * 1e4).floor() / 1e4).clamp(DELTA_MIN, room);
            acc += weight * delta;
            decisions.push(LayerDecision {
                layer: p.name.clone(),
                delta,
            });
        }
        let projected = projected_sparsity(&req.profiles, &decisions);
        let (lo, hi) = decisions.iter().fold((f64::MAX, 0.0f64), |(lo, hi), d| {
            (lo.min(d.delta), hi.max(d.delta))
        });
        let reasoning = format!(
            "Heuristic planner, {} candidate. Gap to target {gap:.4}; aggressiveness {:.2} after \
{} rollback(s) and {} cheap gain(s). Step {step:.4} of global sparsity (bound by {why}) over \
the {} lowest-risk layers (risk = z_sens + {}*z_grad + {}*sparsity), delta {lo:.3}..{hi:.3}; \
projected global sparsity {projected:.4}.",
            v.label,
            posture.aggressiveness,
            posture.rollbacks,
            posture.cheap_gains,
            decisions.len(),
            self.cfg.grad_weight,
            self.cfg.sparsity_weight,
        );
        Plan {
            reasoning,
            stop_pruning: false,
            layer_decisions: decisions,
        }
    }

    /// Lower is safer.
    fn risk(&self, p: &LayerProfile) -> f64 {
        p.z_sens + self.cfg.grad_weight * p.z_grad + self.cfg.sparsity_weight * p.sparsity
    }

    /// Up to `k` distinct plans. Rungs already vetoed this iteration (one per
    /// rejection) are skipped, so asking again yields a different plan.
    pub fn candidates(&self, req: &PlanRequest, k: usize) -> Vec<Plan> {
        let first = req.rejections.len();
        let mut plans: Vec<Plan> = Vec::new();
        for index in first..first + k + EXTRA_TRIES {
            if plans.len() == k {
                break;
            }
            let plan = self.plan(req, index);
            let stop = plan.stop_pruning;
            if !plans
                .iter()
                .any(|p| p.layer_decisions == plan.layer_decisions && p.stop_pruning == stop)
            {
                plans.push(plan);
            }
            if stop {
                break; // every rung agrees when there is nothing left to do
            }
        }
        plans
    }
}

fn stop(reasoning: String) -> Plan {
    Plan {
        reasoning,
        stop_pruning: true,
        layer_decisions: Vec::new(),
    }
}

impl PlannerBackend for HeuristicPlanner {
    fn name(&self) -> &str {
        "heuristic"
    }

    fn propose(&self, request: &PlanRequest, k: usize) -> Result<Vec<PlanResponse>> {
        check_request(request, k)?;
        let start = Instant::now();
        let plans = self.candidates(request, k);
        let latency_ms = start.elapsed().as_millis() as u64;
        Ok(plans
            .into_iter()
            .map(|plan| PlanResponse {
                raw_response: serde_json::to_string(&plan).unwrap_or_default(),
                plan,
                backend: "heuristic".into(),
                model: None,
                system_prompt: String::new(),
                user_prompt: String::new(),
                latency_ms,
            })
            .collect())
    }
}

#[cfg(test)]
#[path = "heuristic_tests.rs"]
mod tests;
