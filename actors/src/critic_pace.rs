//! The critic's `under_pace` rule: a plan that gains less global sparsity than the
//! planned pace is scaled up to it.
//!
//! Why a critic rule and not a planner change: small LLM planners choose sensible layers
//! but under-step (Qwen2.5-Coder-0.5B gained ~1 % per iteration on SmolLM2-135M where a
//! 50 % target in 40 iterations needs 1.25 %, and more once an iteration is rolled back),
//! even with the pace written in the prompt. Scaling every δ by one factor keeps the
//! LLM's choice of layers and their relative sizes; the Evaluator still rolls back a step
//! that costs too much perplexity, and after a rollback the rule stands aside so that a
//! smaller step can be tried.

use std::collections::HashMap;

use config::CriticRules;
use llm::prompt::pace_of;
use protocol::{
    projected_sparsity, recent_rollbacks, LayerDecision, Plan, DELTA_MAX, DELTA_MIN, SPARSITY_EPS,
};

use crate::critic_rules::{floor4, ReviewContext};

/// Round up to 4 decimals (the readable δs the other amendments write).
fn ceil4(x: f64) -> f64 {
    (x * 1e4 - 1e-9).ceil() / 1e4
}

/// Apply the rule to a plan that survived the other amendments. Returns the reason when
/// the plan was scaled, `None` when it keeps the pace already, gains nothing, stops, or
/// an iteration within `rollback_window` was rolled back.
pub(crate) fn check_pace(
    plan: &mut Plan,
    ctx: &ReviewContext,
    rules: &CriticRules,
    current: f64,
) -> Option<String> {
    if plan.stop_pruning || plan.layer_decisions.is_empty() {
        return None;
    }
    if recent_rollbacks(ctx.history, ctx.iteration, rules.rollback_window)
        .next()
        .is_some()
    {
        return None;
    }
    let pace = pace_of(
        ctx.target_sparsity - current,
        ctx.iteration,
        ctx.max_iterations,
    );
    let want = pace.planned;
    let gain = |ds: &[LayerDecision]| projected_sparsity(ctx.profiles, ds) - current;
    let before = gain(&plan.layer_decisions);
    if before <= 0.0 || before + SPARSITY_EPS >= want {
        return None;
    }

    // Largest δ per decision: the allowed range, the layer cap when that rule is on, and
    // the room left in the layer. A δ already above it (rules off) is never lowered.
    let sparsity: HashMap<&str, f64> = ctx
        .profiles
        .iter()
        .map(|p| (p.name.as_str(), p.sparsity))
        .collect();
    let layer_cap = if rules.max_layer_sparsity.is_on() {
        rules.layer_sparsity_cap
    } else {
        1.0
    };
    let caps: Vec<f64> = plan
        .layer_decisions
        .iter()
        .map(|d| {
            let s = sparsity.get(d.layer.as_str()).copied().unwrap_or(1.0);
            let room = (layer_cap.min(1.0) - s).max(0.0);
            floor4(room).min(DELTA_MAX).max(d.delta)
        })
        .collect();
    let scaled = |k: f64| -> Vec<LayerDecision> {
        plan.layer_decisions
            .iter()
            .zip(&caps)
            .map(|(d, &cap)| LayerDecision {
                layer: d.layer.clone(),
                delta: ceil4(d.delta * k).max(DELTA_MIN).min(cap),
            })
            .collect()
    };
    // The gain is non-decreasing in k: bisect for the smallest k that keeps the pace,
    // or take every decision at its cap when even that falls short.
    let k_max = plan
        .layer_decisions
        .iter()
        .zip(&caps)
        .map(|(d, &cap)| cap / d.delta.max(DELTA_MIN))
        .fold(1.0, f64::max);
    let k = if gain(&scaled(k_max)) + SPARSITY_EPS < want {
        k_max
    } else {
        let (mut lo, mut hi) = (1.0, k_max);
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if gain(&scaled(mid)) + SPARSITY_EPS >= want {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    };
    let decisions = scaled(k);
    let after = gain(&decisions);
    if after <= before + SPARSITY_EPS {
        // Every decision is already at its largest δ: nothing to repair.
        return None;
    }
    plan.layer_decisions = decisions;
    let mut reason = format!(
        "global sparsity gain {before:.4} is below the planned pace {want:.4} (gap {:.4} over \
{} iteration(s)): deltas scaled up to gain {after:.4} (x{:.2})",
        (ctx.target_sparsity - current).max(0.0),
        pace.planned_within,
        after / before
    );
    if after + SPARSITY_EPS < want {
        reason.push_str(" (every layer at its largest delta)");
    }
    Some(reason)
}
