//! The heuristic planner with measured cost curves (`allocation = "cost"`).

use super::tests::small_steps;
use super::*;
use protocol::PlanConstraints;

fn layer(name: &str, per_chunk: f64, params: u64) -> LayerProfile {
    LayerProfile {
        name: name.into(),
        z_sens: 0.0,
        z_grad: 0.0,
        sparsity: 0.2,
        params,
        // Convex: the k-th chunk costs k × per_chunk.
        cost: (1..=15)
            .map(|k| per_chunk * f64::from(k * (k + 1)) / 2.0)
            .collect(),
    }
}

fn request(profiles: Vec<LayerProfile>) -> PlanRequest {
    let mut r = PlanRequest::new(1, 40, profiles, 0.5, 10.0, 10.0, 0.15);
    r.constraints = PlanConstraints {
        max_layer_sparsity: 0.9,
        max_z_grad: None,
        forbidden_layers: Default::default(),
        min_gain: 0.0,
    };
    r
}

fn delta_of(p: &Plan, name: &str) -> f64 {
    p.layer_decisions
        .iter()
        .find(|d| d.layer == name)
        .map_or(0.0, |d| d.delta)
}

fn gain(req: &PlanRequest, p: &Plan) -> f64 {
    projected_sparsity(&req.profiles, &p.layer_decisions) - global_sparsity(&req.profiles)
}

#[test]
fn cheaper_layers_take_more_of_the_step() {
    let req = request(vec![
        layer("a.cheap", 1.0, 1000),
        layer("b.mid", 2.0, 1000),
        layer("c.dear", 8.0, 1000),
    ]);
    let plan = HeuristicPlanner::new(small_steps(), 1).plan(&req, 0);
    let (a, b, c) = (
        delta_of(&plan, "a.cheap"),
        delta_of(&plan, "b.mid"),
        delta_of(&plan, "c.dear"),
    );
    assert!(a > b && b > c, "{a} {b} {c}: {}", plan.reasoning);
    // Equal marginal cost: the k-th chunk costs k × per_chunk, so a takes about twice
    // b's chunks and eight times c's.
    assert!((a / b - 2.0).abs() < 0.6, "{a} vs {b}");
    // The whole step (base step 0.04 at aggressiveness 1), to 1e-4 rounding per layer.
    let g = gain(&req, &plan);
    assert!((g - 0.04).abs() < 3e-4, "gain {g}");
    assert!(
        plan.reasoning.contains("measured expected loss rise"),
        "{}",
        plan.reasoning
    );
}

#[test]
fn without_curves_the_plan_is_the_level_plan() {
    let mut profiles = vec![layer("a", 1.0, 1000), layer("b", 4.0, 1000)];
    profiles[1].cost.clear();
    let req = request(profiles);
    let cost = HeuristicPlanner::new(small_steps(), 1).plan(&req, 0);
    let level_cfg = HeuristicConfig {
        allocation: Allocation::Level,
        ..small_steps()
    };
    let level = HeuristicPlanner::new(level_cfg.clone(), 1).plan(&req, 0);
    assert_eq!(cost, level);
    // And level mode ignores the curves.
    let req = request(vec![layer("a", 1.0, 1000), layer("b", 4.0, 1000)]);
    let level = HeuristicPlanner::new(level_cfg, 1).plan(&req, 0);
    assert_eq!(delta_of(&level, "a"), delta_of(&level, "b"));
}

#[test]
fn the_ladder_still_gives_distinct_cost_plans() {
    let profiles: Vec<LayerProfile> = (0..12)
        .map(|i| layer(&format!("l{i}"), 1.0 + f64::from(i) * 0.1, 1000))
        .collect();
    let req = request(profiles);
    let p = HeuristicPlanner::new(small_steps(), 9);
    let plans = p.candidates(&req, 5);
    assert_eq!(plans.len(), 5);
    for (i, a) in plans.iter().enumerate() {
        for b in &plans[i + 1..] {
            assert_ne!(a.layer_decisions, b.layer_decisions);
        }
    }
    // Conservative takes half the balanced step, bold one and a half.
    let g: Vec<f64> = plans.iter().map(|pl| gain(&req, pl)).collect();
    assert!((g[1] - 0.5 * g[0]).abs() < 1e-3, "{g:?}");
    assert!((g[2] - 1.5 * g[0]).abs() < 1e-3, "{g:?}");
    assert_eq!(plans, p.candidates(&req, 5), "deterministic");
}

#[test]
fn the_last_step_lands_on_the_target_by_cost() {
    let mut profiles: Vec<LayerProfile> = (0..4)
        .map(|i| layer(&format!("l{i}"), 1.0 + f64::from(i), 1000))
        .collect();
    for p in &mut profiles {
        p.sparsity = 0.48;
    }
    let req = request(profiles);
    let plan = HeuristicPlanner::new(small_steps(), 1).plan(&req, 0);
    let after = projected_sparsity(&req.profiles, &plan.layer_decisions);
    assert!((after - 0.5).abs() < 1e-9, "{after}");
    assert!(plan
        .layer_decisions
        .iter()
        .all(|d| (DELTA_MIN..=DELTA_MAX).contains(&d.delta)));
}
