//! The rule engine against a whole simulated loop, and its guarantees on arbitrary plans.

use super::*;
use config::Config;
use llm::sim::SimModel;
use llm::{HeuristicPlanner, PlannerBackend};
use proptest::prelude::*;

/// Algorithm 1 on the synthetic model with the heuristic planner, the critic's rules and
/// its reflections, all from the default config.
#[test]
fn heuristic_plans_pass_the_default_critic_and_reach_the_target() {
    let cfg = Config::default();
    let planner = HeuristicPlanner::new(cfg.heuristic.clone(), cfg.run.seed);
    let rules = &cfg.critic.rules;
    let (target, tau, max_it) = (
        cfg.pruning.target_sparsity,
        cfg.pruning.tau,
        cfg.pruning.max_iterations,
    );
    let mut m = SimModel::smollm_like(30, 11, 2.5);
    let mut ppl = m.ppl();
    let mut history: Vec<IterationRecord> = Vec::new();
    for it in 1..=max_it {
        let mut req = PlanRequest::new(it, max_it, m.profiles(), target, m.base_ppl, ppl, tau);
        req.history = history.clone();
        req.constraints = rules.plan_constraints(&history, it);
        let plan = planner.propose(&req, 1).unwrap().remove(0).plan;
        let verdict = review(&plan, &ReviewContext::from_request(&req), rules);
        assert_eq!(verdict, Verdict::Approve, "iteration {it}: {plan:?}");
        if plan.stop_pruning {
            break;
        }
        let before = global_sparsity(&req.profiles);
        let after = projected_sparsity(&req.profiles, &plan.layer_decisions);
        let new_ppl = m.ppl_with(&plan.layer_decisions);
        let rolled_back = (new_ppl - ppl) / ppl > tau;
        let outcome = IterationOutcome {
            iteration: it,
            sparsity_before: before,
            sparsity_after: after,
            ppl_before: ppl,
            ppl_after: new_ppl,
            rolled_back,
        };
        let feedback = reflect(&outcome, &plan, tau, &cfg.critic.assessment);
        assert_eq!(feedback.iteration, it);
        if !rolled_back {
            m.apply(&plan.layer_decisions);
            ppl = new_ppl;
        }
        history.push(IterationRecord {
            plan,
            outcome,
            feedback,
        });
        if target_reached(m.global_sparsity(), target) {
            break;
        }
    }
    let s = m.global_sparsity();
    assert!(
        target_reached(s, target) && s <= target + rules.overshoot_tolerance,
        "{s}"
    );
    assert!(
        m.ppl() < m.uniform_ppl(s),
        "{} vs {}",
        m.ppl(),
        m.uniform_ppl(s)
    );
    // Every reflection carries a paper-style assessment.
    assert!(history
        .iter()
        .all(|r| ["Excellent", "Good", "Fair", "Risky", "Poor"]
            .iter()
            .any(|w| r.feedback.assessment.starts_with(w))));
}

fn arb_decision(n_layers: usize) -> impl Strategy<Value = LayerDecision> {
    let delta = prop_oneof![
        8 => -0.05..0.3f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
    ];
    (0..n_layers + 2, delta).prop_map(|(i, delta)| LayerDecision {
        layer: format!("l{i}"), // indices ≥ n_layers are unknown layers
        delta,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the planner sends, an approved or amended plan satisfies every amend rule.
    #[test]
    fn approved_or_amended_plans_satisfy_every_rule(
        layers in prop::collection::vec((-3.0..3.0f64, 0.0..1.0f64, 1u64..5000), 1..12),
        decisions in prop::collection::vec(arb_decision(12), 0..16),
        target in 0.1..0.9f64,
        stop in prop::bool::weighted(0.1),
        pace in prop::bool::ANY,
        max_iterations in 1u32..60,
    ) {
        let profiles: Vec<LayerProfile> = layers
            .iter()
            .enumerate()
            .map(|(i, &(zg, s, p))| LayerProfile {
                name: format!("l{i}"),
                z_sens: 0.0,
                z_grad: zg,
                sparsity: s,
                params: p,
                cost: Vec::new(),
            })
            .collect();
        let rules = CriticRules {
            under_pace: if pace { PaceRule::Amend } else { PaceRule::Off },
            ..CriticRules::default()
        };
        let plan = Plan { reasoning: String::new(), stop_pruning: stop, layer_decisions: decisions };
        let ctx = ReviewContext {
            profiles: &profiles,
            target_sparsity: target,
            iteration: 3.min(max_iterations),
            max_iterations,
            history: &[],
        };
        let out = match review(&plan, &ctx, &rules) {
            Verdict::Approve => plan.clone(),
            Verdict::Amend { plan, reasons } => {
                prop_assert!(!reasons.is_empty());
                plan
            }
            Verdict::Veto { reasons } => {
                prop_assert!(!reasons.is_empty());
                return Ok(());
            }
        };
        if out.stop_pruning {
            return Ok(());
        }
        let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
        prop_assert!(out.validate(&names).is_empty(), "{:?}", out.validate(&names));
        prop_assert!(!out.layer_decisions.is_empty());
        let total: f64 = profiles.iter().map(|p| p.params as f64).sum();
        let max_w = profiles.iter().map(|p| p.params as f64 / total).fold(0.0, f64::max);
        for d in &out.layer_decisions {
            let p = profiles.iter().find(|p| p.name == d.layer).unwrap();
            prop_assert!(p.sparsity + d.delta <= rules.layer_sparsity_cap + 1e-9);
            prop_assert!(p.z_grad <= rules.z_grad_cap);
        }
        let current = global_sparsity(&profiles);
        let proj = projected_sparsity(&profiles, &out.layer_decisions);
        prop_assert!(proj <= (target + rules.overshoot_tolerance).max(current) + DELTA_MIN * max_w + 1e-9);
        prop_assert!(proj - current + 1e-9 >= rules.min_gain.min(target - current));
    }
}
