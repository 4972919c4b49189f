//! The Critic's rule engine: pure functions, so every verdict is reproducible and
//! testable without actors.
//!
//! [`review`] applies the switchable rules of `[critic.rules]` to one candidate plan:
//! first a stop before the target (`premature_stop`: by default the stop is cleared
//! and the decisions kept); per decision, in this order — unknown layer, duplicate
//! layer, δ bounds, recent rollback, high z_grad, layer sparsity cap — then, on the
//! surviving decisions, the empty-plan check, overshoot, the pace (`under_pace`,
//! [`crate::critic_pace`]) and minimum progress. An `amend` rule repairs the plan
//! and records a reason naming the layer and the value; a `veto` rule records a reason
//! and the verdict becomes a veto (all reasons are collected, so the planner sees every
//! problem at once).
//!
//! [`reflect`] writes the feedback the planner sees next iteration (paper §3.4).

use std::collections::{HashMap, HashSet};

use crate::critic_pace::check_pace;
use config::{AssessmentThresholds, CriticRules, PaceRule, RuleAction};
use llm::prompt::decisions_text;
use protocol::{
    global_sparsity, projected_sparsity, recently_rolled_back, target_reached, Feedback,
    IterationOutcome, IterationRecord, LayerDecision, LayerProfile, Plan, PlanRequest, Verdict,
    DELTA_MAX, DELTA_MIN, SPARSITY_EPS,
};

/// The paper's exact wording for a rolled-back iteration (§3.5).
pub const ROLLBACK_ASSESSMENT: &str =
    "Poor - Excessive PPL degradation, consider more conservative approach";

/// What the critic knows when it reviews a plan.
#[derive(Debug, Clone, Copy)]
pub struct ReviewContext<'a> {
    pub profiles: &'a [LayerProfile],
    pub target_sparsity: f64,
    /// The iteration being planned (1-based).
    pub iteration: u32,
    /// The run's iteration budget (the pace of the `under_pace` rule).
    pub max_iterations: u32,
    /// Finished iterations, oldest first.
    pub history: &'a [IterationRecord],
}

impl<'a> ReviewContext<'a> {
    /// The context of the request the plan answers.
    pub fn from_request(request: &'a PlanRequest) -> Self {
        Self {
            profiles: &request.profiles,
            target_sparsity: request.target_sparsity,
            iteration: request.iteration,
            max_iterations: request.max_iterations,
            history: &request.history,
        }
    }
}

/// Collects what the rules say while the plan is being walked.
#[derive(Default)]
struct Findings {
    amends: Vec<String>,
    vetoes: Vec<String>,
}

impl Findings {
    /// Record a firing rule. Returns true when the caller should apply the repair.
    fn fire(&mut self, action: RuleAction, reason: String) -> bool {
        match action {
            RuleAction::Off => false,
            RuleAction::Amend => {
                self.amends.push(reason);
                true
            }
            RuleAction::Veto => {
                self.vetoes.push(reason);
                false
            }
        }
    }
}

/// Review one candidate plan against the rules.
pub fn review(plan: &Plan, ctx: &ReviewContext, rules: &CriticRules) -> Verdict {
    let current = global_sparsity(ctx.profiles);
    let target = ctx.target_sparsity;

    let mut f = Findings::default();
    if plan.stop_pruning {
        if target_reached(current, target) {
            // Algorithm 1 stops before applying anything, so decisions do not matter.
            return Verdict::Approve;
        }
        let why =
            format!("stop_pruning at global sparsity {current:.4}, below the target {target:.4}");
        match rules.premature_stop {
            RuleAction::Off => return Verdict::Approve,
            RuleAction::Veto => return Verdict::Veto { reasons: vec![why] },
            RuleAction::Amend if plan.layer_decisions.is_empty() => {
                // Nothing to keep: an empty plan that does not stop.
                return match rules.empty_plan {
                    RuleAction::Veto => Verdict::Veto {
                        reasons: vec![format!("{why}, and no layer decisions to keep")],
                    },
                    _ => Verdict::Amend {
                        plan: Plan {
                            stop_pruning: false,
                            ..plan.clone()
                        },
                        reasons: vec![format!("{why}: cleared (no layer decisions)")],
                    },
                };
            }
            RuleAction::Amend => f.amends.push(format!("{why}: cleared, decisions kept")),
        }
    }
    if plan.layer_decisions.is_empty() {
        return match rules.empty_plan {
            RuleAction::Veto => Verdict::Veto {
                reasons: vec!["empty plan: no layer decisions and stop_pruning is false".into()],
            },
            _ => Verdict::Approve,
        };
    }

    let kept = check_decisions(plan, ctx, rules, &mut f);
    let mut amended = Plan {
        reasoning: plan.reasoning.clone(),
        stop_pruning: false,
        layer_decisions: kept,
    };

    if amended.layer_decisions.is_empty() && f.vetoes.is_empty() {
        let why = format!("every layer decision was dropped ({})", f.amends.join("; "));
        if rules.empty_plan == RuleAction::Veto {
            f.vetoes.push(why);
        }
    } else if !amended.layer_decisions.is_empty() {
        check_overshoot(&mut amended, ctx, rules, current, &mut f);
        if rules.under_pace == PaceRule::Amend {
            if let Some(reason) = check_pace(&mut amended, ctx, rules, current) {
                f.amends.push(reason);
            }
        }
        if rules.min_progress == RuleAction::Veto && !amended.stop_pruning {
            let gain = projected_sparsity(ctx.profiles, &amended.layer_decisions) - current;
            let need = rules.min_gain.min((target - current).max(0.0));
            if gain + SPARSITY_EPS < need {
                f.vetoes.push(format!(
                    "global sparsity gain {gain:.4} is below the minimum {need:.4}"
                ));
            }
        }
    }

    if !f.vetoes.is_empty() {
        Verdict::Veto { reasons: f.vetoes }
    } else if !f.amends.is_empty() {
        Verdict::Amend {
            plan: amended,
            reasons: f.amends,
        }
    } else {
        Verdict::Approve
    }
}

/// The per-decision rules. Returns the decisions that survive (possibly changed).
fn check_decisions(
    plan: &Plan,
    ctx: &ReviewContext,
    rules: &CriticRules,
    f: &mut Findings,
) -> Vec<LayerDecision> {
    let by_name: HashMap<&str, &LayerProfile> =
        ctx.profiles.iter().map(|p| (p.name.as_str(), p)).collect();
    let rolled_back = if rules.recent_rollback.is_on() {
        recently_rolled_back(ctx.history, ctx.iteration, rules.rollback_window)
    } else {
        Default::default()
    };
    let mut seen = HashSet::new();
    let mut kept = Vec::new();
    for d in &plan.layer_decisions {
        let name = d.layer.as_str();
        let Some(p) = by_name.get(name) else {
            if !f.fire(
                rules.unknown_layer,
                format!("unknown layer `{name}`: dropped"),
            ) {
                // Off or veto: nothing more can be checked without a profile.
                kept.push(d.clone());
            }
            continue;
        };
        if !seen.insert(name) {
            let r = format!(
                "`{name}` is named more than once (delta {}): kept the first decision",
                d.delta
            );
            if f.fire(rules.duplicate_layer, r) {
                continue;
            }
        }
        let mut delta = d.delta;
        if !delta.is_finite() {
            if f.fire(
                rules.delta_bounds,
                format!("`{name}`: delta {delta} is not a number: dropped"),
            ) {
                continue;
            }
        } else if delta < DELTA_MIN {
            let r = format!("`{name}`: delta {delta} below {DELTA_MIN}: raised to {DELTA_MIN}");
            if f.fire(rules.delta_bounds, r) {
                delta = DELTA_MIN;
            }
        } else if delta > DELTA_MAX {
            let r = format!("`{name}`: delta {delta} above {DELTA_MAX}: lowered to {DELTA_MAX}");
            if f.fire(rules.delta_bounds, r) {
                delta = DELTA_MAX;
            }
        }
        if rolled_back.contains(name) {
            let r = format!(
                "`{name}` was in a plan rolled back within the last {} iteration(s): dropped",
                rules.rollback_window
            );
            if f.fire(rules.recent_rollback, r) {
                continue;
            }
        }
        if p.z_grad > rules.z_grad_cap {
            let r = format!(
                "`{name}`: z_grad {:.2} above the cap {:.2}: dropped",
                p.z_grad, rules.z_grad_cap
            );
            if f.fire(rules.high_z_grad, r) {
                continue;
            }
        }
        let cap = rules.layer_sparsity_cap;
        if delta.is_finite() && p.sparsity + delta > cap + SPARSITY_EPS {
            let room = floor4(cap - p.sparsity);
            let (reason, keep) = if room >= DELTA_MIN {
                (
                    format!(
                        "`{name}`: sparsity {:.4} + delta {delta} would exceed the layer cap {cap}: delta lowered to {room}",
                        p.sparsity
                    ),
                    true,
                )
            } else {
                (
                    format!(
                        "`{name}`: sparsity {:.4} leaves less than {DELTA_MIN} below the layer cap {cap}: dropped",
                        p.sparsity
                    ),
                    false,
                )
            };
            if f.fire(rules.max_layer_sparsity, reason) {
                if !keep {
                    continue;
                }
                delta = room;
            }
        }
        kept.push(LayerDecision {
            layer: d.layer.clone(),
            delta,
        });
    }
    kept
}

/// Round down to 4 decimals (readable deltas that never exceed the computed bound).
pub(crate) fn floor4(x: f64) -> f64 {
    (x * 1e4 + 1e-9).floor() / 1e4
}

/// The overshoot rule: scale δs down so the plan lands at most `overshoot_tolerance`
/// above the target; when the target is already reached, amend to a stop.
fn check_overshoot(
    plan: &mut Plan,
    ctx: &ReviewContext,
    rules: &CriticRules,
    current: f64,
    f: &mut Findings,
) {
    let target = ctx.target_sparsity;
    let limit = target + rules.overshoot_tolerance;
    let projected = projected_sparsity(ctx.profiles, &plan.layer_decisions);
    if projected <= limit + SPARSITY_EPS {
        return;
    }
    if target_reached(current, target) {
        let r = format!(
            "target already reached (global sparsity {current:.4} >= {target:.4}): amended to stop"
        );
        if f.fire(rules.overshoot, r) {
            plan.layer_decisions.clear();
            plan.stop_pruning = true;
        }
        return;
    }
    let mut reason = format!(
        "projected global sparsity {projected:.4} overshoots the target {target:.4} + tolerance {}",
        rules.overshoot_tolerance
    );
    if rules.overshoot != RuleAction::Amend {
        f.fire(rules.overshoot, reason);
        return;
    }
    let before = plan.layer_decisions.len();
    let smallest = scale_to_gain(&mut plan.layer_decisions, ctx.profiles, limit - current);
    let after = projected_sparsity(ctx.profiles, &plan.layer_decisions);
    let factor = (after - current) / (projected - current);
    reason.push_str(&format!(
        ": scaled deltas by {factor:.3} to reach {after:.4}"
    ));
    if plan.layer_decisions.len() < before {
        reason.push_str(&format!(
            ", dropping {} layer(s) whose delta would fall below {DELTA_MIN}",
            before - plan.layer_decisions.len()
        ));
    }
    if smallest {
        reason.push_str(&format!(
            " (one layer at the minimum delta {DELTA_MIN} is the smallest possible step)"
        ));
    }
    f.fire(RuleAction::Amend, reason);
}

/// Scale decisions so their global gain is at most `max_gain`, dropping the smallest
/// contributions whose δ would fall below DELTA_MIN (one layer at DELTA_MIN is the
/// smallest plan there is and is kept). Returns true when that smallest plan still
/// exceeds `max_gain`.
fn scale_to_gain(
    decisions: &mut Vec<LayerDecision>,
    profiles: &[LayerProfile],
    max_gain: f64,
) -> bool {
    let total: f64 = profiles.iter().map(|p| p.params as f64).sum();
    let info: HashMap<&str, (f64, f64)> = profiles
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                (p.params as f64 / total.max(1.0), 1.0 - p.sparsity),
            )
        })
        .collect();
    // Effective δ (capped by the room to 1) and weight of each decision.
    let mut items: Vec<(LayerDecision, f64, f64)> = decisions
        .drain(..)
        .filter_map(|d| {
            let (w, room) = *info.get(d.layer.as_str())?;
            let eff = d.delta.min(room).max(0.0);
            Some((d, w, eff))
        })
        .collect();
    let mut smallest = false;
    loop {
        let gain: f64 = items.iter().map(|(_, w, e)| w * e).sum();
        if gain <= max_gain + SPARSITY_EPS || gain <= 0.0 {
            break;
        }
        let k = (max_gain / gain).max(0.0);
        let fits = items.iter().all(|(_, _, e)| e * k >= DELTA_MIN);
        if fits || items.len() == 1 {
            smallest = !fits;
            for (d, _, e) in &mut items {
                *e = floor4(*e * k).max(DELTA_MIN);
                d.delta = *e;
            }
            break;
        }
        // Drop the smallest contribution (the last one among equals) and rescale.
        let (idx, _) = items
            .iter()
            .enumerate()
            .fold((0, f64::MAX), |(bi, bv), (i, (_, w, e))| {
                if w * e <= bv {
                    (i, w * e)
                } else {
                    (bi, bv)
                }
            });
        items.remove(idx);
    }
    decisions.extend(items.into_iter().map(|(d, _, _)| d));
    smallest
}

/// The qualitative assessment of an iteration (paper §3.4). Cost is the PPL rise as a
/// fraction of τ.
pub fn assess(outcome: &IterationOutcome, tau: f64, th: &AssessmentThresholds) -> String {
    if outcome.rolled_back {
        return ROLLBACK_ASSESSMENT.into();
    }
    let gain = outcome.sparsity_gain();
    if gain <= 0.0 {
        return "Neutral - No sparsity gained, propose layers and deltas that make progress".into();
    }
    let cost = outcome.ppl_change().max(0.0) / tau.max(f64::MIN_POSITIVE);
    let s = if cost <= th.excellent_max_cost && gain >= th.excellent_min_gain {
        "Excellent - High sparsity gain with minimal PPL impact"
    } else if cost <= th.good_max_cost {
        "Good - Solid sparsity gain with acceptable PPL impact"
    } else if cost <= th.fair_max_cost {
        "Fair - Noticeable PPL increase for the sparsity gained, consider safer layers or smaller deltas"
    } else {
        "Risky - PPL increase close to the rollback threshold, be more conservative"
    };
    s.into()
}

/// Longest reasoning quoted back to the planner; the rest is its own text anyway.
const MAX_QUOTED_REASONING: usize = 400;
/// Decisions listed by name in the summary before "and N more".
const MAX_LISTED_DECISIONS: usize = 12;

/// The feedback the planner sees next iteration: its previous reasoning and decisions,
/// the sparsity gain, the PPL change, and the assessment. On rollback, `outcome`'s
/// `*_after` values are those the rejected plan produced.
pub fn reflect(
    outcome: &IterationOutcome,
    plan: &Plan,
    tau: f64,
    thresholds: &AssessmentThresholds,
) -> Feedback {
    let o = outcome;
    let mut reasoning: String = plan
        .reasoning
        .trim()
        .chars()
        .take(MAX_QUOTED_REASONING)
        .collect();
    if plan.reasoning.trim().chars().count() > MAX_QUOTED_REASONING {
        reasoning.push_str(" […]");
    }
    let mut summary = format!(
        "Your reasoning: \"{reasoning}\"\nYour decisions ({} layers): {}.\nResult: global sparsity \
{:.4} -> {:.4} ({:+.2} pp); PPL {:.3} -> {:.3} ({:+.1}%; rollback threshold {:.1}%).",
        plan.layer_decisions.len(),
        decisions_text(&plan.layer_decisions, MAX_LISTED_DECISIONS),
        o.sparsity_before,
        o.sparsity_after,
        o.sparsity_gain() * 100.0,
        o.ppl_before,
        o.ppl_after,
        o.ppl_change() * 100.0,
        tau * 100.0,
    );
    if o.rolled_back {
        summary.push_str(&format!(
            "\nThe change exceeded the threshold and was rolled back: the model stays at global \
sparsity {:.4} and PPL {:.3}.",
            o.sparsity_before, o.ppl_before
        ));
    }
    Feedback {
        iteration: o.iteration,
        summary,
        assessment: assess(o, tau, thresholds),
    }
}

#[cfg(test)]
#[path = "critic_rules_tests.rs"]
mod tests;
