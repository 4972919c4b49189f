//! The `under_pace` rule ([`crate::critic_pace`]) through [`review`].

use super::*;
use config::PaceRule;

fn pacing() -> CriticRules {
    CriticRules {
        under_pace: PaceRule::Amend,
        ..rules()
    }
}

/// Three equal layers; `b` sits 0.04 below the layer cap (0.9).
fn near_cap() -> Vec<LayerProfile> {
    vec![
        layer("a", 0.0, 0.2, 1000),
        layer("b", 0.0, 0.86, 1000),
        layer("c", 0.0, 0.2, 1000),
    ]
}

fn at(profiles: &[LayerProfile], target: f64, iteration: u32) -> ReviewContext<'_> {
    ReviewContext {
        profiles,
        target_sparsity: target,
        iteration,
        max_iterations: 40,
        history: &[],
    }
}

#[test]
fn a_plan_below_the_pace_is_scaled_up_keeping_its_layers_and_proportions() {
    // Global 0.2, target 0.5, iteration 5 of 40: the planned pace is the gap over the 16
    // iterations left within half of the budget, 0.3 / 16 = 0.01875. The plan gains 0.0075.
    let p = plan(vec![d("a", 0.02), d("b", 0.01)]);
    let (fixed, reasons) = amended(verdict(&p, &pacing()));
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.05), d("b", 0.025)]);
    assert_eq!(fixed.reasoning, "because");
    assert_eq!(
        reasons,
        vec![
            "global sparsity gain 0.0075 is below the planned pace 0.0187 (gap 0.3000 over 16 \
             iteration(s)): deltas scaled up to gain 0.0187 (x2.50)"
        ]
    );
    let prof = profiles();
    let gain = projected_sparsity(&prof, &fixed.layer_decisions) - global_sparsity(&prof);
    assert!((gain - 0.01875).abs() < 1e-12, "{gain}");
}

#[test]
fn a_plan_at_the_pace_and_the_rule_switched_off_are_left_alone() {
    let at_pace = plan(vec![d("a", 0.05), d("b", 0.025)]);
    assert_eq!(verdict(&at_pace, &pacing()), Verdict::Approve);
    let small = plan(vec![d("a", 0.02), d("b", 0.01)]);
    let off = CriticRules {
        under_pace: PaceRule::Off,
        ..rules()
    };
    assert_eq!(verdict(&small, &off), Verdict::Approve);
    // `auto` is resolved by the Supervisor; unresolved it does nothing.
    assert_eq!(verdict(&small, &rules()), Verdict::Approve);
}

#[test]
fn no_scaling_right_after_a_rollback() {
    let prof = profiles();
    let small = plan(vec![d("a", 0.02), d("b", 0.01)]);
    // Iteration 4 was rolled back: within the window (2) of iteration 5.
    let recent = [rolled_back_record(4, "hot")];
    assert_eq!(
        review(&small, &ctx(&prof, &recent), &pacing()),
        Verdict::Approve
    );
    // Iteration 2 is outside it: the pace applies again.
    let old = [rolled_back_record(2, "hot")];
    let (fixed, _) = amended(review(&small, &ctx(&prof, &old), &pacing()));
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.05), d("b", 0.025)]);
}

#[test]
fn scaling_respects_the_layer_cap_and_the_delta_range() {
    let prof = near_cap();
    let p = plan(vec![d("a", 0.01), d("b", 0.02)]);
    // Iteration 20 of 40 is the last of the planned half: the pace is the whole gap.
    // Target 0.45 from 0.42: b stops at its room (0.04), a carries the rest (0.05).
    let (fixed, reasons) = amended(review(&p, &at(&prof, 0.45, 20), &pacing()));
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.05), d("b", 0.04)]);
    assert!(!reasons[0].contains("largest delta"), "{}", reasons[0]);
    // Target 0.5: even a at 0.15 and b at 0.04 gain less than 0.08.
    let (fixed, reasons) = amended(review(&p, &at(&prof, 0.5, 20), &pacing()));
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.15), d("b", 0.04)]);
    assert!(
        reasons[0].ends_with("(every layer at its largest delta)"),
        "{}",
        reasons[0]
    );
}

#[test]
fn past_the_planned_half_the_pace_is_the_gap_over_the_iterations_left() {
    let prof = near_cap();
    // Iteration 31 of 40: 10 iterations left, gap 0.08 -> 0.008 per iteration.
    let p = plan(vec![d("a", 0.01)]);
    let (fixed, reasons) = amended(review(&p, &at(&prof, 0.5, 31), &pacing()));
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.024)]);
    assert!(reasons[0].contains("planned pace 0.0080"), "{}", reasons[0]);
    assert!(
        reasons[0].contains("over 10 iteration(s)"),
        "{}",
        reasons[0]
    );
}

#[test]
fn amendments_before_the_pace_still_apply() {
    // `hot` is dropped (z_grad above the cap); what is left is then scaled to the pace.
    let p = plan(vec![d("hot", 0.1), d("a", 0.01)]);
    let (fixed, reasons) = amended(verdict(&p, &pacing()));
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.075)]);
    assert_eq!(reasons.len(), 2);
    assert!(reasons[0].contains("`hot`"), "{reasons:?}");
    assert!(reasons[1].contains("planned pace"), "{reasons:?}");
}
