//! The offline default planner: a deterministic policy, no LLM.
//!
//! 1. **Posture** from the run's memory: aggressiveness starts at 1, is multiplied by
//!    `rollback_factor` after each rollback and by `bold_factor` after each cheap gain
//!    (PPL rise ≤ `cheap_cost`·τ). The last iteration that gained sparsity gives the
//!    observed PPL cost per unit of global sparsity.
//! 2. **Step** (global sparsity to add): `base_step`·aggressiveness, at least what is
//!    needed to finish in the iterations left, at most what the PPL budget allows
//!    (`ppl_budget`·τ / observed cost), never past the target.
//! 3. **Layers**: every layer the constraints allow is raised towards a common level
//!    L tilted by its risk `r = z_sens + grad_weight·z_grad` (with `within_kind`, the
//!    z-scores are re-standardised within each layer kind first): its goal is
//!    `L·(1 − tilt·tanh(r))`, so negative z_sens and non-positive z_grad end sparser.
//!    L is found by bisection so that the plan adds exactly the step (δ within
//!    [0.01, 0.15] and the layer cap). Near-uniform on purpose: on SmolLM2 a plan that
//!    piled δ on the "safest" layers reached 3× the dense perplexity at 48 % where
//!    uniform Wanda is at 2× at 50 %.
//!
//! K candidates walk a fixed ladder — balanced, conservative (½ step), bold (1.5×),
//! flat (½ tilt), steep (2× tilt) — then seeded variants whose risk is jittered.
//! Same request + seed ⇒ same plans.

use std::time::Instant;

use config::{Allocation, HeuristicConfig};
use protocol::{
    allowed_rise, global_sparsity, projected_sparsity, target_reached, IterationRecord,
    LayerDecision, LayerProfile, Plan, PlanRequest, PlanResponse, DELTA_MAX, DELTA_MIN,
};

use crate::allocate::{by_cost, CostLayer};
use crate::error::Result;
use crate::planner::{check_request, PlannerBackend};
use crate::rng::unit;

/// One rung of the candidate ladder.
#[derive(Debug, Clone, Copy)]
struct Variant {
    label: &'static str,
    /// Multiplier of the global step.
    step: f64,
    /// Multiplier of the tilt.
    tilt: f64,
    /// Amplitude of seeded noise added to the risk ranking (0 = none).
    jitter: f64,
}

/// A fixed rung (no jitter): (label, step multiplier, tilt multiplier).
const fn rung(label: &'static str, step: f64, tilt: f64) -> Variant {
    Variant {
        label,
        step,
        tilt,
        jitter: 0.0,
    }
}

const LADDER: [Variant; 5] = [
    rung("balanced", 1.0, 1.0),
    rung("conservative", 0.5, 1.0),
    rung("bold", 1.5, 1.0),
    rung("flat", 1.0, 0.5),
    rung("steep", 1.0, 2.0),
];

fn variant(index: usize) -> Variant {
    LADDER.get(index).copied().unwrap_or(Variant {
        label: "exploratory",
        step: 1.0,
        tilt: 1.0,
        jitter: 1.0,
    })
}

/// How many extra ladder rungs `candidates` may try to fill K distinct plans.
const EXTRA_TRIES: usize = 8;

/// A gap left after a step below this share of the step is taken with it.
const TAIL_SHARE: f64 = 0.25;

/// What the planner reads from its memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Posture {
    pub aggressiveness: f64,
    pub rollbacks: usize,
    pub cheap_gains: usize,
    /// Relative PPL rise per unit of global sparsity in the last iteration that gained
    /// sparsity (rolled back or not); `None` before any.
    pub last_cost: Option<f64>,
    /// Midpoint sparsity of that iteration's step.
    pub last_cost_at: f64,
    /// Growth rate k of the cost with sparsity, cost ∝ exp(k·s), from the last two
    /// iterations that gained sparsity (0 before two, never negative). Pruning costs
    /// grow steeply: on SmolLM2 the cost doubled from one 7 % step to the next around
    /// 30 % sparsity, so a budget judged by the last cost alone lands near τ.
    pub cost_growth: f64,
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
    /// A gain is cheap when its PPL rise is at most `cheap_cost` × the rise τ allowed it
    /// (per `tau_span` of sparsity, [`allowed_rise`]).
    pub fn posture(&self, history: &[IterationRecord], tau: f64, tau_span: f64) -> Posture {
        let c = &self.cfg;
        let mut p = Posture {
            aggressiveness: 1.0,
            rollbacks: 0,
            cheap_gains: 0,
            last_cost: None,
            last_cost_at: 0.0,
            cost_growth: 0.0,
        };
        for r in history {
            let o = &r.outcome;
            if o.rolled_back {
                p.rollbacks += 1;
                p.aggressiveness *= c.rollback_factor;
            } else if o.sparsity_gain() > 0.0
                && o.ppl_change() <= c.cheap_cost * allowed_rise(tau, tau_span, o.sparsity_gain())
            {
                p.cheap_gains += 1;
                p.aggressiveness *= c.bold_factor;
            }
            p.aggressiveness = p
                .aggressiveness
                .clamp(c.min_aggressiveness, c.max_aggressiveness);
        }
        let mut gains = history
            .iter()
            .rev()
            .map(|r| &r.outcome)
            .filter(|o| o.sparsity_gain() > 0.0)
            .map(|o| {
                let cost = o.ppl_change().max(0.0) / o.sparsity_gain();
                (cost, 0.5 * (o.sparsity_before + o.sparsity_after))
            });
        if let Some((cost, at)) = gains.next() {
            p.last_cost = Some(cost);
            p.last_cost_at = at;
            if let Some((before, before_at)) = gains.next() {
                if cost > 0.0 && before > 0.0 && at - before_at > 1e-3 {
                    p.cost_growth = ((cost / before).ln() / (at - before_at)).clamp(0.0, 30.0);
                }
            }
        }
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
            let cap = budget_step(
                |x| self.cfg.ppl_budget * req.allowed_rise(x),
                cost,
                posture.last_cost_at,
                posture.cost_growth,
                current,
            );
            if cap < step {
                step = cap;
                why = format!(
                    "PPL budget: {:.0}% of the rise tau allows the step, at the last observed cost of {:.2} PPL per unit \
sparsity, growing x{:.2} per 0.01 of sparsity",
                    self.cfg.ppl_budget * 100.0,
                    cost,
                    (posture.cost_growth * 0.01).exp()
                );
            }
        }
        if req.constraints.min_gain > step {
            step = req.constraints.min_gain;
            why = "the critic's minimum gain".into();
        }
        if gap > step && gap - step < TAIL_SHARE * step {
            // A tail this small would cost a whole iteration (profiling, evaluation)
            // for next to no sparsity: take it now.
            step = gap;
            why = format!("{why}, with the small rest of the gap");
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
        let posture = self.posture(&req.history, req.tau, req.tau_span);
        let (base, why) = self.step(req, current, &posture);
        let gap = target - current;
        let step = (base * v.step).min(gap);

        let cap = req.constraints.max_layer_sparsity.min(1.0);
        let tilt = (self.cfg.tilt * v.tilt).min(0.95);
        let mut rng = self.seed ^ (u64::from(req.iteration) << 32) ^ index as u64;
        let risks = self.risks(&req.profiles);
        let eligible: Vec<Goal> = req
            .profiles
            .iter()
            .zip(&risks)
            .filter(|(p, _)| {
                req.constraints.allows(p) && cap - p.sparsity >= DELTA_MIN && p.params > 0
            })
            .map(|(p, risk)| {
                let draw = unit(&mut rng) - 0.5;
                let noise = v.jitter * draw;
                Goal {
                    name: &p.name,
                    sparsity: p.sparsity,
                    weight: p.params as f64,
                    factor: 1.0 - tilt * (risk + noise).tanh(),
                    room: (cap - p.sparsity).min(DELTA_MAX),
                    curve: &p.cost,
                    draw,
                }
            })
            .collect();
        if eligible.is_empty() {
            return stop(format!(
                "No layer can take more sparsity within the constraints (layer cap {cap:.2}, \
{} forbidden layers); stopping at global sparsity {current:.4}.",
                req.constraints.forbidden_layers.len()
            ));
        }
        let total: f64 = req.profiles.iter().map(|p| p.params as f64).sum();
        let level = level_for_step(&eligible, total, step);
        let level_deltas: Vec<f64> = eligible.iter().map(|g| g.delta_at(level)).collect();
        let by_cost =
            self.cfg.allocation == Allocation::Cost && eligible.iter().all(|g| !g.curve.is_empty());
        let (deltas, spread) = if by_cost {
            cost_deltas(&eligible, &level_deltas, total, step, v)
        } else {
            (
                level_deltas,
                format!(
                    "raised towards level {level:.4} x (1 - {tilt:.2}*tanh(z_sens + {}*z_grad))",
                    self.cfg.grad_weight
                ),
            )
        };
        // The last step must land on the target, so its δs stay exact; the others are
        // rounded down to four decimals (readable plans, never above the cap).
        let last_step = step >= gap - 1e-12;
        let mut decisions: Vec<LayerDecision> = eligible
            .iter()
            .zip(&deltas)
            .filter_map(|(g, &delta)| {
                let delta = if last_step {
                    delta
                } else {
                    (delta * 1e4).floor() / 1e4
                };
                (delta >= DELTA_MIN).then(|| LayerDecision {
                    layer: g.name.to_string(),
                    delta,
                })
            })
            .collect();
        if decisions.is_empty() {
            // A step smaller than any layer's minimal δ: the most lagging layer takes it.
            let g = eligible
                .iter()
                .max_by(|a, b| {
                    let lag = |g: &Goal| level * g.factor - g.sparsity;
                    lag(a).total_cmp(&lag(b)).then(b.name.cmp(a.name))
                })
                .expect("eligible is not empty");
            decisions.push(LayerDecision {
                layer: g.name.to_string(),
                delta: DELTA_MIN,
            });
        }
        let projected = projected_sparsity(&req.profiles, &decisions);
        let (lo, hi) = decisions.iter().fold((f64::MAX, 0.0f64), |(lo, hi), d| {
            (lo.min(d.delta), hi.max(d.delta))
        });
        let reasoning = format!(
            "Heuristic planner, {} candidate. Gap to target {gap:.4}; aggressiveness {:.2} after \
{} rollback(s) and {} cheap gain(s). Step {step:.4} of global sparsity (bound by {why}) over \
{} layers {spread}, delta {lo:.3}..{hi:.3}; projected global sparsity {projected:.4}.",
            v.label,
            posture.aggressiveness,
            posture.rollbacks,
            posture.cheap_gains,
            decisions.len(),
        );
        Plan {
            reasoning,
            stop_pruning: false,
            layer_decisions: decisions,
        }
    }

    /// Risk per layer (lower is safer): `z_sens + grad_weight·z_grad`, with both
    /// z-scores re-standardised among the layers of the same kind (`self_attn.q_proj` of
    /// every block, …). The profile's z-scores span all layers, so they mostly tell the
    /// kinds apart (a v_proj's Wanda scores sit on another scale than a down_proj's);
    /// tilting by them would prune whole kinds harder. Within a kind they rank blocks.
    /// A kind with a single layer, or with constant scores, has risk 0. With
    /// `within_kind` off, the profile's own z-scores are used as they are.
    fn risks(&self, profiles: &[LayerProfile]) -> Vec<f64> {
        let mut groups: std::collections::HashMap<&str, Vec<usize>> = Default::default();
        for (i, p) in profiles.iter().enumerate() {
            groups.entry(layer_kind(&p.name)).or_default().push(i);
        }
        if !self.cfg.within_kind {
            return profiles
                .iter()
                .map(|p| p.z_sens + self.cfg.grad_weight * p.z_grad)
                .collect();
        }
        let mut risk = vec![0.0; profiles.len()];
        for members in groups.values() {
            let zs = within(members, |i| profiles[i].z_sens);
            let zg = within(members, |i| profiles[i].z_grad);
            for (k, &i) in members.iter().enumerate() {
                risk[i] = zs[k] + self.cfg.grad_weight * zg[k];
            }
        }
        risk
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

/// The largest step x whose predicted PPL rise x·c(current + x/2) stays within
/// `budget(x)` (the budget may grow with the step, as τ per span does), with the cost
/// c(s) = cost·exp(growth·(s − at)) extrapolated from the last observed one: the first
/// crossing on a 0.001 grid, refined by bisection.
fn budget_step(budget: impl Fn(f64) -> f64, cost: f64, at: f64, growth: f64, current: f64) -> f64 {
    let rise = |x: f64| x * cost * (growth * (current + 0.5 * x - at)).exp();
    let fits = |x: f64| rise(x) <= budget(x);
    const GRID: u32 = 1000;
    let Some(k) = (1..=GRID).find(|&k| !fits(f64::from(k) / f64::from(GRID))) else {
        return 1.0;
    };
    let (mut lo, mut hi) = (
        f64::from(k - 1) / f64::from(GRID),
        f64::from(k) / f64::from(GRID),
    );
    for _ in 0..50 {
        let mid = 0.5 * (lo + hi);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The kind of a layer: its name after the block index (`model.layers.3.mlp.up_proj` →
/// `mlp.up_proj`); the whole name when it has no numeric component.
fn layer_kind(name: &str) -> &str {
    let mut offset = 0;
    for part in name.split('.') {
        offset += part.len() + 1;
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            return name.get(offset..).filter(|k| !k.is_empty()).unwrap_or(name);
        }
    }
    name
}

/// z-scores of `value` over `members` (population std); all 0 when constant.
fn within(members: &[usize], value: impl Fn(usize) -> f64) -> Vec<f64> {
    let n = members.len() as f64;
    let mean = members.iter().map(|&i| value(i)).sum::<f64>() / n;
    let var = members
        .iter()
        .map(|&i| (value(i) - mean).powi(2))
        .sum::<f64>()
        / n;
    let sd = var.sqrt();
    members
        .iter()
        .map(|&i| {
            if sd > 1e-9 {
                (value(i) - mean) / sd
            } else {
                0.0
            }
        })
        .collect()
}

/// One eligible layer and where the common level puts it.
struct Goal<'a> {
    name: &'a str,
    sparsity: f64,
    weight: f64,
    /// Goal sparsity per unit of level: 1 − tilt·tanh(risk).
    factor: f64,
    /// Largest δ this iteration allows (DELTA_MAX, the layer cap).
    room: f64,
    /// The layer's measured cost curve (empty when not measured).
    curve: &'a [f64],
    /// This candidate's seeded draw for the layer, in [-½, ½).
    draw: f64,
}

/// The cost allocation of `step` (see [`crate::allocate`]) and how it was spread. The
/// ladder's rungs keep their meaning: the step multiplier as for levels; a tilt below 1
/// (`flat`) blends the cost δs with the level δs by that weight, a hedge towards
/// uniform; a tilt above 1 (`steep`) and the seeded rungs jitter the layers' marginal
/// costs by up to ×e^(±½·amplitude).
fn cost_deltas(
    goals: &[Goal],
    level_deltas: &[f64],
    total: f64,
    step: f64,
    v: Variant,
) -> (Vec<f64>, String) {
    let amplitude = v.jitter + (v.tilt - 1.0).max(0.0) * 0.5;
    let layers: Vec<CostLayer> = goals
        .iter()
        .map(|g| CostLayer {
            curve: g.curve,
            weight: g.weight,
            room: g.room,
            factor: (amplitude * g.draw).exp(),
        })
        .collect();
    let a = by_cost(&layers, total, step);
    let blend = v.tilt.min(1.0);
    let deltas = a
        .deltas
        .iter()
        .zip(level_deltas)
        .map(|(c, l)| blend * c + (1.0 - blend) * l)
        .collect();
    let how = format!(
        "given 0.01 at a time to the cheapest measured expected loss rise per pruned weight \
(threshold {:.3e} nats per weight, expected rise of the step {:.4} nats{})",
        a.threshold,
        a.expected,
        if blend < 1.0 {
            format!(
                ", blended {:.0}% with the risk-tilted level",
                (1.0 - blend) * 100.0
            )
        } else {
            String::new()
        }
    );
    (deltas, how)
}

impl Goal<'_> {
    /// δ that brings the layer to `level`·factor; 0 when it is already there or the
    /// step would be below DELTA_MIN (a plan never carries dust-sized decisions).
    fn delta_at(&self, level: f64) -> f64 {
        let want = (level * self.factor - self.sparsity).min(self.room);
        if want < DELTA_MIN {
            0.0
        } else {
            want
        }
    }
}

/// The common level whose plan adds `step` of global sparsity (weights over `total`
/// parameters), by bisection: the added sparsity is non-decreasing in the level. When
/// even the highest useful level adds less (every layer at its room), that level.
fn level_for_step(goals: &[Goal], total: f64, step: f64) -> f64 {
    let gain = |level: f64| -> f64 {
        goals
            .iter()
            .map(|g| g.weight * g.delta_at(level))
            .sum::<f64>()
            / total
    };
    let mut lo = 0.0;
    // Above this level every layer wants more than its room.
    let mut hi = goals
        .iter()
        .map(|g| (g.sparsity + g.room) / g.factor.max(1e-6))
        .fold(0.0f64, f64::max);
    if gain(hi) <= step {
        return hi;
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if gain(mid) < step {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // `hi` covers the step; past it by at most one layer's jump from 0 to DELTA_MIN.
    hi
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
                input_tokens: None,
                output_tokens: None,
            })
            .collect())
    }
}

#[cfg(test)]
#[path = "heuristic_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "heuristic_cost_tests.rs"]
mod cost_tests;
