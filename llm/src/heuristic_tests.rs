use super::*;
use crate::sim::SimModel;
use protocol::{Feedback, IterationOutcome, PlanConstraints, Rejection};

/// The step policy these tests' figures were worked out for: base step 0.04,
/// aggressiveness up to 2, half of τ per step (the default takes 0.125 steps at
/// aggressiveness ≤ 1 and may spend all of τ's allowance).
pub(super) fn small_steps() -> HeuristicConfig {
    HeuristicConfig {
        base_step: 0.04,
        max_aggressiveness: 2.0,
        ppl_budget: 0.5,
        ..HeuristicConfig::default()
    }
}

fn planner() -> HeuristicPlanner {
    HeuristicPlanner::new(small_steps(), 42)
}

fn layer(name: &str, z_sens: f64, z_grad: f64, sparsity: f64, params: u64) -> LayerProfile {
    LayerProfile {
        name: name.into(),
        z_sens,
        z_grad,
        sparsity,
        params,
        cost: Vec::new(),
    }
}

fn record(it: u32, gain: f64, ppl_change: f64, rolled_back: bool) -> IterationRecord {
    IterationRecord {
        plan: Plan {
            reasoning: String::new(),
            stop_pruning: false,
            layer_decisions: vec![],
        },
        outcome: IterationOutcome {
            iteration: it,
            sparsity_before: 0.1,
            sparsity_after: 0.1 + gain,
            ppl_before: 10.0,
            ppl_after: 10.0 * (1.0 + ppl_change),
            rolled_back,
        },
        feedback: Feedback {
            iteration: it,
            summary: String::new(),
            assessment: String::new(),
        },
    }
}

/// Σ δ over a plan's decisions.
fn total_delta(p: &Plan) -> f64 {
    p.layer_decisions.iter().map(|d| d.delta).sum()
}

fn gain(req: &PlanRequest, p: &Plan) -> f64 {
    projected_sparsity(&req.profiles, &p.layer_decisions) - global_sparsity(&req.profiles)
}

fn sim_request(m: &SimModel, iteration: u32) -> PlanRequest {
    let mut r = PlanRequest::new(iteration, 40, m.profiles(), 0.5, m.base_ppl, m.ppl(), 0.15);
    r.constraints = PlanConstraints {
        max_layer_sparsity: 0.9,
        max_z_grad: Some(2.5),
        forbidden_layers: Default::default(),
        min_gain: 0.001,
    };
    r
}

fn delta_of(p: &Plan, name: &str) -> f64 {
    p.layer_decisions
        .iter()
        .find(|d| d.layer == name)
        .map_or(0.0, |d| d.delta)
}

#[test]
fn prefers_negative_z_sens_and_non_positive_z_grad() {
    // One kind (mlp.up_proj) in 21 blocks: safe ones 0–9, risky ones 10–19, and
    // block 20 with a low z_sens but a hot gradient.
    let name = |b: usize| format!("model.layers.{b}.mlp.up_proj");
    let mut profiles = Vec::new();
    for i in 0..10 {
        profiles.push(layer(&name(i), -1.0 - 0.01 * i as f64, -0.5, 0.0, 1000));
        profiles.push(layer(&name(10 + i), 1.0, 0.5, 0.0, 1000));
    }
    profiles.push(layer(&name(20), -1.2, 3.0, 0.0, 1000));
    let cfg = HeuristicConfig {
        base_step: 0.05,
        ..small_steps()
    };
    let p = HeuristicPlanner::new(cfg, 1);
    let req = PlanRequest::new(1, 40, profiles, 0.5, 10.0, 10.0, 0.15);
    let plan = p.plan(&req, 0);
    assert!(!plan.stop_pruning);
    assert_eq!(plan.layer_decisions.len(), 21, "{plan:?}");
    let safe: Vec<f64> = (0..10).map(|i| delta_of(&plan, &name(i))).collect();
    let risky: Vec<f64> = (0..10).map(|i| delta_of(&plan, &name(10 + i))).collect();
    let hot = delta_of(&plan, &name(20));
    let min_safe = safe.iter().copied().fold(f64::MAX, f64::min);
    let max_risky = risky.iter().copied().fold(0.0, f64::max);
    assert!(
        min_safe > hot && hot > max_risky,
        "{safe:?} {hot} {risky:?}"
    );
    // Safer within the group: safe9 has the lowest z_sens.
    assert!(safe[9] >= safe[0], "{safe:?}");
    // The tilt: δ ∝ 1 − 0.2·tanh(risk); the two groups sit about one standard deviation
    // either side of the mean, so their δs differ by a clear factor (< 1.2/0.8).
    let ratio = safe[0] / risky[0];
    assert!(ratio > 1.2 && ratio < 1.5, "{safe:?} {risky:?}");
    // The step is covered (0.05 of global sparsity), not exceeded by more than rounding.
    let g = gain(&req, &plan);
    assert!((g - 0.05).abs() < 1e-3, "gain {g}");
}

#[test]
fn layers_past_their_goal_wait_for_the_others() {
    // Earlier steps left the first half at 0.4 and the second half dense.
    let profiles: Vec<LayerProfile> = (0..10)
        .map(|i| {
            layer(
                &format!("l{i}"),
                0.0,
                0.0,
                if i < 5 { 0.4 } else { 0.0 },
                1000,
            )
        })
        .collect();
    let req = PlanRequest::new(2, 40, profiles, 0.5, 10.0, 10.0, 0.15);
    let plan = planner().plan(&req, 0);
    for d in &plan.layer_decisions {
        let i: usize = d.layer[1..].parse().unwrap();
        assert!(i >= 5, "{} is already ahead: {plan:?}", d.layer);
    }
    assert_eq!(plan.layer_decisions.len(), 5);
    // All lagging layers are equal here, so they get the same δ (0.04 / 0.5 of weight).
    for d in &plan.layer_decisions {
        assert!((d.delta - 0.08).abs() < 2e-4, "{plan:?}");
    }
}

/// Global sparsity after `planner`'s balanced plan for the simulated model with every
/// layer at `level`.
fn sparsity_after_plan(planner: &HeuristicPlanner, iteration: u32, level: f64) -> f64 {
    let m = SimModel::smollm_like(30, 3, 2.0);
    let mut req = sim_request(&m, iteration);
    for p in &mut req.profiles {
        p.sparsity = level;
    }
    projected_sparsity(&req.profiles, &planner.plan(&req, 0).layer_decisions)
}

#[test]
fn the_last_step_lands_on_the_target() {
    let after = sparsity_after_plan(&planner(), 1, 0.47);
    assert!(target_reached(after, 0.5), "{after}");
    assert!(after < 0.5 + 0.001, "{after}");
}

#[test]
fn a_small_rest_of_the_gap_is_taken_with_the_step() {
    // Default 0.125 steps from 0.374: a 0.001 tail would cost a whole iteration.
    let default = HeuristicPlanner::new(HeuristicConfig::default(), 42);
    let after = sparsity_after_plan(&default, 4, 0.374);
    assert!(target_reached(after, 0.5) && after < 0.501, "{after}");
    // A tail of more than a quarter of the step waits for the next iteration.
    let after = sparsity_after_plan(&default, 4, 0.3);
    assert!((after - 0.425).abs() < 2e-3, "{after}");
}

#[test]
fn conservative_after_rollback_bolder_after_cheap_gain() {
    let m = SimModel::smollm_like(30, 3, 2.0);
    let base = sim_request(&m, 2);
    let with = |h: Vec<IterationRecord>| {
        let mut r = base.clone();
        r.history = h;
        let plan = planner().plan(&r, 0);
        (gain(&r, &plan), total_delta(&plan))
    };
    let (g_none, d_none) = with(vec![]);
    let (g_cheap, d_cheap) = with(vec![record(1, 0.04, 0.01, false)]);
    let (g_rb, d_rb) = with(vec![record(1, 0.04, 0.20, true)]);
    assert!(
        g_rb < g_none && g_none < g_cheap,
        "{g_rb} {g_none} {g_cheap}"
    );
    assert!(
        d_rb < d_none && d_none < d_cheap,
        "{d_rb} {d_none} {d_cheap}"
    );
    // The numbers follow the documented policy: 0.04 base; ×1.25 after a cheap gain;
    // after the rollback the budget 0.5·τ / (0.20 / 0.04) = 0.015 binds.
    assert!((g_none - 0.04).abs() < 1e-3, "{g_none}");
    assert!((g_cheap - 0.05).abs() < 1e-3, "{g_cheap}");
    assert!((g_rb - 0.015).abs() < 1e-3, "{g_rb}");
    let posture = planner().posture(&[record(1, 0.04, 0.2, true)], 0.15, 0.0);
    assert_eq!(posture.aggressiveness, 0.5);
    assert_eq!(posture.rollbacks, 1);
    assert!((posture.last_cost.unwrap() - 5.0).abs() < 1e-9);
}

#[test]
fn k_candidates_differ_and_are_deterministic() {
    let m = SimModel::smollm_like(30, 3, 2.0);
    let req = sim_request(&m, 1);
    let plans = planner().candidates(&req, 6);
    assert_eq!(plans.len(), 6);
    for i in 0..plans.len() {
        for j in 0..i {
            assert_ne!(
                plans[i].layer_decisions, plans[j].layer_decisions,
                "{i} vs {j}"
            );
        }
    }
    let g: Vec<f64> = plans.iter().map(|p| gain(&req, p)).collect();
    // balanced, conservative, bold, flat, steep, exploratory
    assert!(g[1] < g[0] && g[0] < g[2], "{g:?}");
    // Same step for the tilt rungs, spread of δ growing with the tilt.
    assert!(
        (g[3] - g[0]).abs() < 1e-3 && (g[4] - g[0]).abs() < 1e-3,
        "{g:?}"
    );
    let spread = |p: &Plan| {
        let d: Vec<f64> = p.layer_decisions.iter().map(|d| d.delta).collect();
        d.iter().copied().fold(0.0, f64::max) - d.iter().copied().fold(f64::MAX, f64::min)
    };
    let s: Vec<f64> = plans.iter().map(spread).collect();
    assert!(s[3] < s[0] && s[0] < s[4], "{s:?}");
    assert!(plans[1].reasoning.contains("conservative candidate"));
    // Exploratory ranks the layers differently, not just by other δs.
    let order = |p: &Plan| {
        let mut d: Vec<(String, f64)> = p
            .layer_decisions
            .iter()
            .map(|d| (d.layer.clone(), d.delta))
            .collect();
        d.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        d.into_iter().map(|(n, _)| n).collect::<Vec<_>>()
    };
    assert_ne!(order(&plans[5]), order(&plans[0]));
    // Same seed: same plans. Other seed: only the seeded rung changes.
    assert_eq!(planner().candidates(&req, 6), plans);
    let other = HeuristicPlanner::new(small_steps(), 7).candidates(&req, 6);
    assert_eq!(other[..5], plans[..5]);
    assert_ne!(other[5], plans[5]);
}

#[test]
fn a_rejection_moves_to_the_next_rung() {
    let m = SimModel::smollm_like(4, 3, 2.0);
    let req = sim_request(&m, 1);
    let first = planner().plan(&req, 0);
    let mut again = req.clone();
    again.rejections.push(Rejection {
        plan: first.clone(),
        reasons: vec!["no".into()],
    });
    let second = planner().candidates(&again, 1);
    assert_eq!(second, vec![planner().plan(&req, 1)]);
    assert_ne!(second[0], first);
}

#[test]
fn stops_when_target_reached_or_nothing_is_allowed() {
    let at_target = vec![layer("a", 0.0, 0.0, 0.5, 10), layer("b", 0.0, 0.0, 0.5, 10)];
    let req = PlanRequest::new(3, 40, at_target, 0.5, 10.0, 12.0, 0.15);
    let out = planner().propose(&req, 3).unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].plan.stop_pruning);
    assert!(out[0].plan.layer_decisions.is_empty());
    assert!(out[0].plan.reasoning.starts_with("Target reached"));
    assert_eq!(out[0].backend, "heuristic");
    assert_eq!(Plan::from_json(&out[0].raw_response).unwrap(), out[0].plan);

    let capped = vec![layer("a", 0.0, 0.0, 0.3, 10), layer("b", 0.0, 0.0, 0.0, 10)];
    let mut req = PlanRequest::new(3, 40, capped, 0.5, 10.0, 12.0, 0.15);
    req.constraints.max_layer_sparsity = 0.305;
    req.constraints.forbidden_layers.insert("b".into());
    let plan = planner().plan(&req, 0);
    assert!(plan.stop_pruning);
    assert!(
        plan.reasoning
            .starts_with("No layer can take more sparsity"),
        "{}",
        plan.reasoning
    );
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let mut req = PlanRequest::new(
        1,
        40,
        vec![layer("a", f64::NAN, 0.0, 0.0, 1)],
        0.5,
        1.0,
        1.0,
        0.15,
    );
    assert!(planner().propose(&req, 1).is_err());
    req.profiles[0].z_sens = 0.0;
    assert!(planner().propose(&req, 0).is_err());
    assert_eq!(planner().propose(&req, 1).unwrap().len(), 1);
}

/// One simulated run of Algorithm 1 with the heuristic planner and no critic.
struct SimRun {
    model: SimModel,
    history: Vec<IterationRecord>,
    stopped_by_planner: bool,
}

fn simulate(cfg: HeuristicConfig, ratio: f64, seed: u64, max_iterations: u32) -> SimRun {
    simulate_spanned(cfg, ratio, seed, max_iterations, 0.0)
}

/// The loop on a simulated model with τ per `span` of sparsity (0: per iteration).
fn simulate_spanned(
    cfg: HeuristicConfig,
    ratio: f64,
    seed: u64,
    max_iterations: u32,
    span: f64,
) -> SimRun {
    let planner = HeuristicPlanner::new(cfg, 42);
    let mut m = SimModel::smollm_like(30, seed, ratio);
    let (target, tau) = (0.5, 0.15);
    let mut history: Vec<IterationRecord> = Vec::new();
    let mut ppl = m.ppl();
    let mut stopped_by_planner = false;
    for it in 1..=max_iterations {
        let mut req = PlanRequest::new(
            it,
            max_iterations,
            m.profiles(),
            target,
            m.base_ppl,
            ppl,
            tau,
        )
        .with_tau_span(span);
        req.history = history.clone();
        req.constraints = PlanConstraints {
            max_layer_sparsity: 0.9,
            max_z_grad: Some(2.5),
            // No rollback memory: it would forbid most layers of a spread-out plan.
            forbidden_layers: Default::default(),
            min_gain: 0.001,
        };
        let plan = planner.propose(&req, 1).unwrap().remove(0).plan;
        if plan.stop_pruning {
            stopped_by_planner = true;
            break;
        }
        assert!(plan.validate(&req.layer_names()).is_empty());
        let before = global_sparsity(&req.profiles);
        let after = projected_sparsity(&req.profiles, &plan.layer_decisions);
        let new_ppl = m.ppl_with(&plan.layer_decisions);
        let rolled_back = (new_ppl - ppl) / ppl > req.allowed_rise(after - before);
        if !rolled_back {
            m.apply(&plan.layer_decisions);
        }
        history.push(IterationRecord {
            outcome: IterationOutcome {
                iteration: it,
                sparsity_before: before,
                sparsity_after: after,
                ppl_before: ppl,
                ppl_after: new_ppl,
                rolled_back,
            },
            plan,
            feedback: Feedback {
                iteration: it,
                summary: String::new(),
                assessment: String::new(),
            },
        });
        if !rolled_back {
            ppl = new_ppl;
        }
        if target_reached(m.global_sparsity(), target) {
            break;
        }
    }
    SimRun {
        model: m,
        history,
        stopped_by_planner,
    }
}

#[test]
fn simulated_loop_reaches_target_better_than_uniform() {
    // The simulated model's sensitivities differ by kind on purpose (its z-scores are
    // the truth), so the tilt may use them across kinds here.
    let across = HeuristicConfig {
        within_kind: false,
        ..small_steps()
    };
    let run = simulate(across.clone(), 2.0, 3, 40);
    let s = run.model.global_sparsity();
    assert!(target_reached(s, 0.5), "ended at {s}");
    assert!(s < 0.5 + 0.001, "overshot to {s}");
    assert!(!run.stopped_by_planner);
    let n = run.history.len();
    assert!((8..=20).contains(&n), "{n} iterations");
    // Sensitivity-aware allocation must beat uniform pruning at the same sparsity.
    let (ppl, uniform) = (run.model.ppl(), run.model.uniform_ppl(s));
    assert!(ppl < uniform * 0.95, "ppl {ppl} vs uniform {uniform}");
    // No layer beyond the cap; the next request is a stop.
    assert!(run.model.sparsity.iter().all(|&x| x <= 0.9 + 1e-12));
    let req = PlanRequest::new(n as u32 + 1, 40, run.model.profiles(), 0.5, 10.0, ppl, 0.15);
    assert!(planner().plan(&req, 0).stop_pruning);
    // Deterministic: a second run is identical.
    assert_eq!(simulate(across, 2.0, 3, 40).history, run.history);
    // Comparing blocks within each kind only gives up the kind signal but still beats
    // uniform.
    let within = HeuristicConfig {
        within_kind: true,
        ..small_steps()
    };
    let run = simulate(within, 2.0, 3, 40);
    let s = run.model.global_sparsity();
    assert!(target_reached(s, 0.5), "ended at {s}");
    let (ppl, uniform) = (run.model.ppl(), run.model.uniform_ppl(s));
    assert!(ppl < uniform, "ppl {ppl} vs uniform {uniform}");
}

#[test]
fn default_steps_with_tau_per_span_reach_the_target_in_few_iterations() {
    // The default policy (0.125 steps) under τ = 0.15 per 0.02 of sparsity: four or five
    // large steps, none rolled back, still better than uniform.
    let run = simulate_spanned(HeuristicConfig::default(), 2.0, 3, 40, 0.02);
    let s = run.model.global_sparsity();
    assert!(target_reached(s, 0.5) && s < 0.501, "ended at {s}");
    let n = run.history.len();
    assert!((4..=6).contains(&n), "{n} iterations: {:?}", run.history);
    assert!(run.history.iter().all(|r| !r.outcome.rolled_back));
    let first = run.history[0].outcome.sparsity_gain();
    assert!((first - 0.125).abs() < 1e-3, "first step {first}");
    let (ppl, uniform) = (run.model.ppl(), run.model.uniform_ppl(s));
    assert!(ppl < uniform, "ppl {ppl} vs uniform {uniform}");
    // The same policy under a per-iteration τ is held back by rollbacks or its budget.
    let paper = simulate(HeuristicConfig::default(), 2.0, 3, 40);
    assert!(paper.history.len() > n, "{} vs {n}", paper.history.len());
}

#[test]
fn harsh_model_recovers_from_rollbacks_with_smaller_steps() {
    // A reckless configuration on a harsh model, so that rollbacks do happen.
    let reckless = HeuristicConfig {
        base_step: 0.1,
        ppl_budget: 1.0,
        bold_factor: 2.0,
        ..small_steps()
    };
    let run = simulate(reckless, 8.0, 5, 40);
    let s = run.model.global_sparsity();
    assert!(
        target_reached(s, 0.5),
        "ended at {s} after {} iterations",
        run.history.len()
    );
    let rollbacks: Vec<usize> = (0..run.history.len())
        .filter(|&i| run.history[i].outcome.rolled_back)
        .collect();
    assert!(
        !rollbacks.is_empty(),
        "a model this harsh should trigger a rollback"
    );
    for &i in &rollbacks {
        if let Some(next) = run.history.get(i + 1) {
            let g = |r: &IterationRecord| r.outcome.sparsity_gain();
            assert!(g(next) < g(&run.history[i]), "iteration {}", i + 2);
        }
    }
    // Committed iterations never exceed τ.
    for r in &run.history {
        assert!(r.outcome.rolled_back || r.outcome.ppl_change() <= 0.15);
    }
}

mod bounds {
    use super::*;
    use proptest::prelude::*;

    fn arb_profile() -> impl Strategy<Value = (f64, f64, f64, u64)> {
        (-3.0..3.0f64, -3.0..3.0f64, 0.0..1.0f64, 0u64..10_000)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn plans_respect_bounds_and_constraints(
            layers in prop::collection::vec(arb_profile(), 1..40),
            target in 0.05..0.95f64,
            cap in 0.3..1.0f64,
            z_cap in prop::option::of(-1.0..3.0f64),
            forbid_every in 2usize..6,
            history in prop::collection::vec((0.0..0.1f64, -0.05..0.5f64, any::<bool>()), 0..4),
            k in 1usize..7,
            seed in any::<u64>(),
        ) {
            let profiles: Vec<LayerProfile> = layers
                .iter()
                .enumerate()
                .map(|(i, &(zs, zg, s, p))| layer(&format!("l{i}"), zs, zg, s, p))
                .collect();
            prop_assume!(profiles.iter().any(|p| p.params > 0));
            let mut req = PlanRequest::new(3, 40, profiles, target, 10.0, 11.0, 0.15);
            req.constraints.max_layer_sparsity = cap;
            req.constraints.max_z_grad = z_cap;
            req.constraints.forbidden_layers =
                (0..layers.len()).step_by(forbid_every).map(|i| format!("l{i}")).collect();
            req.history = history
                .iter()
                .enumerate()
                .map(|(i, &(g, c, rb))| record(i as u32 + 1, g, c, rb))
                .collect();
            let out = HeuristicPlanner::new(small_steps(), seed)
                .propose(&req, k)
                .unwrap();
            prop_assert!(!out.is_empty() && out.len() <= k);
            let total: f64 = req.profiles.iter().map(|p| p.params as f64).sum();
            let max_w = req.profiles.iter().map(|p| p.params as f64 / total).fold(0.0, f64::max);
            for r in &out {
                let plan = &r.plan;
                prop_assert!(plan.validate(&req.layer_names()).is_empty());
                prop_assert!(plan.stop_pruning || !plan.layer_decisions.is_empty());
                for d in &plan.layer_decisions {
                    let p = req.profiles.iter().find(|p| p.name == d.layer).unwrap();
                    prop_assert!((DELTA_MIN..=DELTA_MAX).contains(&d.delta), "{}", d.delta);
                    prop_assert!(p.sparsity + d.delta <= cap + 1e-12);
                    prop_assert!(!req.constraints.forbidden_layers.contains(&d.layer));
                    if let Some(z) = z_cap {
                        prop_assert!(p.z_grad <= z);
                    }
                }
                let proj = projected_sparsity(&req.profiles, &plan.layer_decisions);
                let start = global_sparsity(&req.profiles);
                // Never past the target by more than one minimal δ on one layer.
                prop_assert!(proj <= target.max(start) + DELTA_MIN * max_w + 1e-12);
            }
        }
    }
}

#[test]
fn kinds_are_compared_within_themselves() {
    assert_eq!(
        layer_kind("model.layers.12.self_attn.q_proj"),
        "self_attn.q_proj"
    );
    assert_eq!(layer_kind("blk.3.ffn_up"), "ffn_up");
    assert_eq!(layer_kind("lm_head"), "lm_head");
    assert_eq!(layer_kind("model.layers.7"), "model.layers.7");
    // Two kinds on different scales: across layers every q_proj looks risky and every
    // up_proj safe; within kinds, block 1 is the riskier q_proj and block 0 the safer
    // up_proj.
    let profiles = vec![
        layer("model.layers.0.self_attn.q_proj", 1.0, 0.0, 0.0, 1000),
        layer("model.layers.1.self_attn.q_proj", 1.2, 0.0, 0.0, 1000),
        layer("model.layers.0.mlp.up_proj", -1.2, 0.0, 0.0, 1000),
        layer("model.layers.1.mlp.up_proj", -1.0, 0.0, 0.0, 1000),
    ];
    let within = HeuristicPlanner::new(
        HeuristicConfig {
            within_kind: true,
            ..small_steps()
        },
        42,
    )
    .risks(&profiles);
    let expected = [-1.0, 1.0, -1.0, 1.0];
    for (a, b) in within.iter().zip(expected) {
        assert!((a - b).abs() < 1e-9, "{within:?}");
    }
    let across = HeuristicPlanner::new(
        HeuristicConfig {
            within_kind: false,
            ..small_steps()
        },
        42,
    );
    assert_eq!(across.risks(&profiles), vec![1.0, 1.2, -1.2, -1.0]);
}

#[test]
fn the_budget_expects_costs_to_keep_growing() {
    let at = |it: u32, from: f64, to: f64, rise: f64| {
        let mut r = record(it, to - from, rise, false);
        r.outcome.sparsity_before = from;
        r.outcome.sparsity_after = to;
        r
    };
    // Cost 1.0 per unit over 0.20→0.25, then 2.0 over 0.25→0.30: doubling per 0.05.
    let history = vec![at(1, 0.20, 0.25, 0.05), at(2, 0.25, 0.30, 0.10)];
    let p = planner().posture(&history, 0.15, 0.0);
    assert!((p.last_cost.unwrap() - 2.0).abs() < 1e-9);
    assert!((p.last_cost_at - 0.275).abs() < 1e-12);
    let k = 2f64.ln() / 0.05;
    assert!((p.cost_growth - k).abs() < 1e-9, "{}", p.cost_growth);
    // Without growth the budget 0.075 allows 0.075 / 2 = 0.0375; with it, the predicted
    // rise x·2·exp(k·(0.30 + x/2 − 0.275)) hits 0.075 near x = 0.0227.
    let flat = budget_step(|_| 0.075, 2.0, 0.275, 0.0, 0.30);
    assert!((flat - 0.0375).abs() < 1e-9, "{flat}");
    let x = budget_step(|_| 0.075, 2.0, 0.275, k, 0.30);
    let rise = x * 2.0 * (k * (0.30 + x / 2.0 - 0.275)).exp();
    assert!(
        (rise - 0.075).abs() < 1e-9 && (0.022..0.0235).contains(&x),
        "{x} {rise}"
    );
    // A budget that grows with the step (τ = 0.15 per 0.02, half of it spent) allows
    // a larger step than the flat one: with growth 12 the predicted rise
    // x·2·exp(12·(0.025 + x/2)) first exceeds 0.5·(1.15^(x/0.02) − 1) near x = 0.114.
    let grows = |x: f64| 0.5 * protocol::allowed_rise(0.15, 0.02, x);
    let rise = |x: f64| x * 2.0 * (12.0 * (0.025 + x / 2.0)).exp();
    let x = budget_step(grows, 2.0, 0.275, 12.0, 0.30);
    assert!(
        (rise(x) - grows(x)).abs() < 1e-9 && (0.113..0.115).contains(&x),
        "{x}"
    );
    let flat = budget_step(|_| 0.075, 2.0, 0.275, 12.0, 0.30);
    assert!(flat < 0.04, "{flat}");
    // Falling costs never make the planner bolder than the last cost says.
    let falling = vec![at(1, 0.20, 0.25, 0.10), at(2, 0.25, 0.30, 0.05)];
    assert_eq!(planner().posture(&falling, 0.15, 0.0).cost_growth, 0.0);
}
