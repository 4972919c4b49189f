use super::*;

fn layer(name: &str, z_grad: f64, sparsity: f64, params: u64) -> LayerProfile {
    LayerProfile {
        name: name.into(),
        z_sens: 0.0,
        z_grad,
        sparsity,
        params,
        cost: Vec::new(),
    }
}

/// Four equal layers at 20 % (global 0.2); `hot` has a high z_grad, `full` sits at 0.85.
fn profiles() -> Vec<LayerProfile> {
    vec![
        layer("a", -0.5, 0.2, 1000),
        layer("b", 0.0, 0.2, 1000),
        layer("hot", 3.0, 0.2, 1000),
        layer("full", 0.0, 0.2, 1000),
    ]
}

fn d(layer: &str, delta: f64) -> LayerDecision {
    LayerDecision {
        layer: layer.into(),
        delta,
    }
}

fn plan(decisions: Vec<LayerDecision>) -> Plan {
    Plan {
        reasoning: "because".into(),
        stop_pruning: false,
        layer_decisions: decisions,
    }
}

fn ctx<'a>(profiles: &'a [LayerProfile], history: &'a [IterationRecord]) -> ReviewContext<'a> {
    ReviewContext {
        profiles,
        target_sparsity: 0.5,
        iteration: 5,
        max_iterations: 40,
        history,
    }
}

fn rules() -> CriticRules {
    CriticRules::default()
}

/// Review with default rules and no history.
fn verdict(p: &Plan, rules: &CriticRules) -> Verdict {
    let prof = profiles();
    review(p, &ctx(&prof, &[]), rules)
}

fn amended(v: Verdict) -> (Plan, Vec<String>) {
    match v {
        Verdict::Amend { plan, reasons } => (plan, reasons),
        other => panic!("expected Amend, got {other:?}"),
    }
}

fn vetoed(v: Verdict) -> Vec<String> {
    match v {
        Verdict::Veto { reasons } => reasons,
        other => panic!("expected Veto, got {other:?}"),
    }
}

#[test]
fn a_clean_plan_is_approved() {
    let p = plan(vec![d("a", 0.05), d("b", 0.1)]);
    assert_eq!(verdict(&p, &rules()), Verdict::Approve);
}

#[test]
fn unknown_layer_amend_veto_off() {
    let p = plan(vec![d("a", 0.05), d("nope", 0.05)]);
    let (fixed, reasons) = amended(verdict(&p, &rules()));
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.05)]);
    assert_eq!(fixed.reasoning, "because");
    assert_eq!(reasons, vec!["unknown layer `nope`: dropped"]);
    let r = CriticRules {
        unknown_layer: RuleAction::Veto,
        ..rules()
    };
    assert_eq!(
        vetoed(verdict(&p, &r)),
        vec!["unknown layer `nope`: dropped"]
    );
    let r = CriticRules {
        unknown_layer: RuleAction::Off,
        ..rules()
    };
    assert_eq!(verdict(&p, &r), Verdict::Approve);
}

#[test]
fn duplicate_layer_keeps_first() {
    let p = plan(vec![d("a", 0.05), d("b", 0.02), d("a", 0.1)]);
    let (fixed, reasons) = amended(verdict(&p, &rules()));
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.05), d("b", 0.02)]);
    assert_eq!(
        reasons,
        vec!["`a` is named more than once (delta 0.1): kept the first decision"]
    );
    let r = CriticRules {
        duplicate_layer: RuleAction::Veto,
        ..rules()
    };
    assert_eq!(vetoed(verdict(&p, &r)).len(), 1);
}

#[test]
fn delta_bounds_clamp_or_drop() {
    let p = plan(vec![d("a", 0.3), d("b", 0.001), d("full", f64::NAN)]);
    let (fixed, reasons) = amended(verdict(&p, &rules()));
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.15), d("b", 0.01)]);
    assert_eq!(
        reasons,
        vec![
            "`a`: delta 0.3 above 0.15: lowered to 0.15",
            "`b`: delta 0.001 below 0.01: raised to 0.01",
            "`full`: delta NaN is not a number: dropped",
        ]
    );
    let r = CriticRules {
        delta_bounds: RuleAction::Veto,
        ..rules()
    };
    assert_eq!(vetoed(verdict(&p, &r)).len(), 3);
}

#[test]
fn high_z_grad_is_dropped_with_its_value() {
    let p = plan(vec![d("a", 0.05), d("hot", 0.05)]);
    let (fixed, reasons) = amended(verdict(&p, &rules()));
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.05)]);
    assert_eq!(
        reasons,
        vec!["`hot`: z_grad 3.00 above the cap 2.50: dropped"]
    );
    let r = CriticRules {
        z_grad_cap: 3.5,
        ..rules()
    };
    assert_eq!(verdict(&p, &r), Verdict::Approve);
    let r = CriticRules {
        high_z_grad: RuleAction::Off,
        ..rules()
    };
    assert_eq!(verdict(&p, &r), Verdict::Approve);
}

#[test]
fn layer_cap_shrinks_or_drops() {
    let mut prof = profiles();
    prof[3].sparsity = 0.85; // full
    prof[1].sparsity = 0.895; // b
    prof.push(layer("big", 0.0, 0.0, 10_000)); // keeps the global sparsity low
    let p = plan(vec![d("a", 0.05), d("full", 0.1), d("b", 0.02)]);
    let (fixed, reasons) = amended(review(&p, &ctx(&prof, &[]), &rules()));
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.05), d("full", 0.05)]);
    assert_eq!(
        reasons,
        vec![
            "`full`: sparsity 0.8500 + delta 0.1 would exceed the layer cap 0.9: delta lowered to 0.05",
            "`b`: sparsity 0.8950 leaves less than 0.01 below the layer cap 0.9: dropped",
        ]
    );
    let r = CriticRules {
        max_layer_sparsity: RuleAction::Veto,
        ..rules()
    };
    assert_eq!(vetoed(review(&p, &ctx(&prof, &[]), &r)).len(), 2);
}

fn rolled_back_record(iteration: u32, layer: &str) -> IterationRecord {
    IterationRecord {
        plan: plan(vec![d(layer, 0.1)]),
        outcome: IterationOutcome {
            iteration,
            sparsity_before: 0.2,
            sparsity_after: 0.225,
            ppl_before: 10.0,
            ppl_after: 13.0,
            rolled_back: true,
        },
        feedback: Feedback {
            iteration,
            summary: String::new(),
            assessment: ROLLBACK_ASSESSMENT.into(),
        },
    }
}

#[test]
fn recent_rollback_drops_layers_within_the_window() {
    let prof = profiles();
    let history = [rolled_back_record(2, "a"), rolled_back_record(4, "b")];
    let p = plan(vec![d("a", 0.05), d("b", 0.05), d("full", 0.05)]);
    let on = CriticRules {
        recent_rollback: RuleAction::Amend,
        rollback_window: 2,
        ..rules()
    };
    let (fixed, reasons) = amended(review(&p, &ctx(&prof, &history), &on));
    // Iteration 4 is inside the window of iteration 5; iteration 2 is not.
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.05), d("full", 0.05)]);
    assert_eq!(
        reasons,
        vec!["`b` was in a plan rolled back within the last 2 iteration(s): dropped"]
    );
    let wide = CriticRules {
        rollback_window: 3,
        ..on.clone()
    };
    let (fixed, _) = amended(review(&p, &ctx(&prof, &history), &wide));
    assert_eq!(fixed.layer_decisions, vec![d("full", 0.05)]);
    // Off by default.
    assert_eq!(
        review(&p, &ctx(&prof, &history), &rules()),
        Verdict::Approve
    );
}

#[test]
fn overshoot_scales_deltas_down_to_the_target() {
    // Four equal layers at 0.45: the target 0.5 + tolerance 0.005 allows 0.22 of δ in
    // total; this plan asks for 0.26.
    let prof: Vec<LayerProfile> = profiles()
        .into_iter()
        .map(|mut p| {
            p.sparsity = 0.45;
            p.z_grad = 0.0;
            p
        })
        .collect();
    let p = plan(vec![
        d("a", 0.1),
        d("b", 0.1),
        d("hot", 0.04),
        d("full", 0.02),
    ]);
    let (fixed, reasons) = amended(review(&p, &ctx(&prof, &[]), &rules()));
    let reached = projected_sparsity(&prof, &fixed.layer_decisions);
    assert!((0.5..=0.505 + 1e-9).contains(&reached), "{reached}");
    // 0.26 of total δ must shrink to 0.22 (factor ≈ 0.846); the smallest, `full`
    // (0.02 → 0.0169), stays above 0.01, so all four layers survive.
    assert_eq!(fixed.layer_decisions.len(), 4);
    assert_eq!(reasons.len(), 1);
    assert!(
        reasons[0].starts_with(
            "projected global sparsity 0.5150 overshoots the target 0.5000 + tolerance 0.005: scaled deltas by 0.846"
        ),
        "{}",
        reasons[0]
    );
    let r = CriticRules {
        overshoot: RuleAction::Veto,
        ..rules()
    };
    assert_eq!(
        vetoed(review(&p, &ctx(&prof, &[]), &r)),
        vec!["projected global sparsity 0.5150 overshoots the target 0.5000 + tolerance 0.005"]
    );
}

#[test]
fn overshoot_drops_layers_that_would_fall_below_the_minimum_delta() {
    let prof: Vec<LayerProfile> = profiles()
        .into_iter()
        .map(|mut p| {
            p.sparsity = 0.49;
            p.z_grad = 0.0;
            p
        })
        .collect();
    // Room to target + tolerance: 0.015 global = 0.06 layer-units; the plan asks 0.31.
    let p = plan(vec![d("a", 0.15), d("b", 0.15), d("hot", 0.01)]);
    let (fixed, reasons) = amended(review(&p, &ctx(&prof, &[]), &rules()));
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.03), d("b", 0.03)]);
    assert!(
        reasons[0].ends_with("dropping 1 layer(s) whose delta would fall below 0.01"),
        "{}",
        reasons[0]
    );
}

#[test]
fn past_the_target_a_plan_is_amended_to_stop() {
    let prof: Vec<LayerProfile> = profiles()
        .into_iter()
        .map(|mut p| {
            p.sparsity = 0.5;
            p
        })
        .collect();
    let (fixed, reasons) = amended(review(
        &plan(vec![d("a", 0.05)]),
        &ctx(&prof, &[]),
        &rules(),
    ));
    assert!(fixed.stop_pruning);
    assert!(fixed.layer_decisions.is_empty());
    assert_eq!(
        reasons,
        vec!["target already reached (global sparsity 0.5000 >= 0.5000): amended to stop"]
    );
}

#[test]
fn empty_plans_and_fully_dropped_plans_are_vetoed() {
    assert_eq!(
        vetoed(verdict(&plan(vec![]), &rules())),
        vec!["empty plan: no layer decisions and stop_pruning is false"]
    );
    let all_bad = plan(vec![d("hot", 0.05), d("nope", 0.05)]);
    assert_eq!(
        vetoed(verdict(&all_bad, &rules())),
        vec![
            "every layer decision was dropped (`hot`: z_grad 3.00 above the cap 2.50: dropped; \
             unknown layer `nope`: dropped)"
        ]
    );
    let off = CriticRules {
        empty_plan: RuleAction::Off,
        ..rules()
    };
    assert_eq!(verdict(&plan(vec![]), &off), Verdict::Approve);
    let (fixed, reasons) = amended(verdict(&all_bad, &off));
    assert!(fixed.layer_decisions.is_empty());
    assert_eq!(reasons.len(), 2);
}

#[test]
fn min_progress_vetoes_tiny_plans_but_not_the_last_step() {
    // One layer of 1000 params in a 4000+1e6 param model: gain 0.0000x.
    let mut prof = profiles();
    prof.push(layer("huge", 0.0, 0.2, 1_000_000));
    let tiny = plan(vec![d("a", 0.01)]);
    let reasons = vetoed(review(&tiny, &ctx(&prof, &[]), &rules()));
    assert_eq!(
        reasons,
        vec!["global sparsity gain 0.0000 is below the minimum 0.0010"]
    );
    let off = CriticRules {
        min_progress: RuleAction::Off,
        ..rules()
    };
    assert_eq!(review(&tiny, &ctx(&prof, &[]), &off), Verdict::Approve);
    // When the remaining gap is smaller than min_gain, closing it is enough.
    // (A gap below protocol::TARGET_TOLERANCE would count as reached: `mid` makes it
    // 0.00065, above the tolerance and below min_gain.)
    let mut near: Vec<LayerProfile> = prof
        .iter()
        .cloned()
        .map(|mut p| {
            p.sparsity = 0.5;
            p
        })
        .collect();
    near.push(layer("mid", 0.0, 0.49, 70_000));
    let gap = 0.5 - global_sparsity(&near);
    assert!(gap > protocol::TARGET_TOLERANCE && gap < 0.001, "{gap}");
    let closing = plan(vec![d("mid", 0.01)]);
    assert_eq!(
        review(&closing, &ctx(&near, &[]), &rules()),
        Verdict::Approve
    );
    // A minimal step on the huge layer overshoots; it is kept as the smallest step.
    let (fixed, reasons) = amended(review(
        &plan(vec![d("huge", 0.05)]),
        &ctx(&near, &[]),
        &rules(),
    ));
    assert_eq!(fixed.layer_decisions, vec![d("huge", 0.01)]);
    assert!(
        reasons[0].ends_with("(one layer at the minimum delta 0.01 is the smallest possible step)"),
        "{}",
        reasons[0]
    );
}

#[test]
fn an_early_stop_is_cleared_by_default_and_its_decisions_kept() {
    let mut stop = plan(vec![d("a", 0.05)]);
    stop.stop_pruning = true;
    let (fixed, reasons) = amended(verdict(&stop, &rules()));
    assert!(!fixed.stop_pruning);
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.05)]);
    assert_eq!(
        reasons,
        vec!["stop_pruning at global sparsity 0.2000, below the target 0.5000: cleared, decisions kept"]
    );
    // Its decisions are reviewed like any other plan's: `hot` is still dropped.
    stop.layer_decisions.push(d("hot", 0.05));
    let (fixed, reasons) = amended(verdict(&stop, &rules()));
    assert_eq!(fixed.layer_decisions, vec![d("a", 0.05)]);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    // A stop with nothing to keep is an empty plan: vetoed, with the reason.
    let bare = Plan {
        reasoning: "enough".into(),
        stop_pruning: true,
        layer_decisions: vec![],
    };
    assert_eq!(
        vetoed(verdict(&bare, &rules())),
        vec!["stop_pruning at global sparsity 0.2000, below the target 0.5000, and no layer decisions to keep"]
    );
    let lax = CriticRules {
        empty_plan: RuleAction::Off,
        ..rules()
    };
    let (fixed, _) = amended(verdict(&bare, &lax));
    assert!(!fixed.stop_pruning && fixed.layer_decisions.is_empty());
}

#[test]
fn premature_stop_off_approves_and_veto_refuses() {
    let stop = Plan {
        reasoning: "enough".into(),
        stop_pruning: true,
        layer_decisions: vec![d("a", 0.05)],
    };
    let off = CriticRules {
        premature_stop: RuleAction::Off,
        ..rules()
    };
    assert_eq!(verdict(&stop, &off), Verdict::Approve);
    let strict = CriticRules {
        premature_stop: RuleAction::Veto,
        ..rules()
    };
    assert_eq!(
        vetoed(verdict(&stop, &strict)),
        vec!["stop_pruning at global sparsity 0.2000, below the target 0.5000"]
    );
    // At the target a stop is always approved.
    let prof: Vec<_> = profiles()
        .into_iter()
        .map(|p| LayerProfile { sparsity: 0.5, ..p })
        .collect();
    assert_eq!(review(&stop, &ctx(&prof, &[]), &strict), Verdict::Approve);
}

#[test]
fn veto_collects_every_reason_and_amends_do_not_hide_vetoes() {
    let r = CriticRules {
        high_z_grad: RuleAction::Veto,
        ..rules()
    };
    let p = plan(vec![d("a", 0.3), d("hot", 0.05)]);
    // δ clamp is an amend, z_grad is a veto: the verdict is a veto naming `hot`.
    assert_eq!(
        vetoed(verdict(&p, &r)),
        vec!["`hot`: z_grad 3.00 above the cap 2.50: dropped"]
    );
}

fn outcome(gain: f64, ppl_change: f64, rolled_back: bool) -> IterationOutcome {
    IterationOutcome {
        iteration: 7,
        sparsity_before: 0.3,
        sparsity_after: 0.3 + gain,
        ppl_before: 20.0,
        ppl_after: 20.0 * (1.0 + ppl_change),
        rolled_back,
    }
}

#[test]
fn assessments_follow_the_thresholds() {
    let th = AssessmentThresholds::default();
    let a = |g, c, rb| assess(&outcome(g, c, rb), 0.15, &th);
    assert_eq!(a(0.03, 0.2, true), ROLLBACK_ASSESSMENT);
    assert_eq!(
        ROLLBACK_ASSESSMENT,
        "Poor - Excessive PPL degradation, consider more conservative approach"
    );
    assert!(a(0.03, 0.01, false).starts_with("Excellent - "));
    // Cheap but small: not Excellent.
    assert!(a(0.01, 0.01, false).starts_with("Good - "));
    assert!(a(0.03, 0.06, false).starts_with("Good - "));
    assert!(a(0.03, 0.10, false).starts_with("Fair - "));
    assert!(a(0.03, 0.14, false).starts_with("Risky - "));
    assert!(a(0.0, 0.0, false).starts_with("Neutral - "));
}

#[test]
fn reflection_summarises_reasoning_decisions_gain_and_ppl() {
    let p = plan(vec![d("a", 0.05), d("b", 0.1)]);
    let th = AssessmentThresholds::default();
    let fb = reflect(&outcome(0.021, 0.057, false), &p, 0.15, &th);
    assert_eq!(fb.iteration, 7);
    assert_eq!(
        fb.summary,
        "Your reasoning: \"because\"\nYour decisions (2 layers): a +0.050, b +0.100.\n\
         Result: global sparsity 0.3000 -> 0.3210 (+2.10 pp); PPL 20.000 -> 21.140 (+5.7%; \
         rollback threshold 15.0%)."
    );
    assert!(fb.assessment.starts_with("Good - "));

    let rb = reflect(&outcome(0.04, 0.32, true), &p, 0.15, &th);
    assert_eq!(rb.assessment, ROLLBACK_ASSESSMENT);
    assert!(rb.summary.contains("PPL 20.000 -> 26.400 (+32.0%"));
    assert!(rb.summary.ends_with(
        "The change exceeded the threshold and was rolled back: the model stays at global \
         sparsity 0.3000 and PPL 20.000."
    ));

    let long = Plan {
        reasoning: "x".repeat(1000),
        ..p
    };
    let fb = reflect(&outcome(0.02, 0.0, false), &long, 0.15, &th);
    assert!(fb.summary.contains(&format!("\"{} […]\"", "x".repeat(400))));
}

#[path = "critic_rules_loop_tests.rs"]
mod loop_tests;

#[path = "critic_pace_tests.rs"]
mod pace_tests;
