//! The loop with measured layer costs (`pruning.layer_costs`, heuristic `allocation =
//! "cost"`) on the tiny fixture: every profile carries a non-decreasing 15-point curve,
//! the heuristic spreads its steps by them (unevenly, unlike the level allocation), and
//! the run reaches its target, with and without the repair.

use actors::faults::Faults;
use actors::testing::{fixture_config, write_fixture};
use actors::{run_pruning, RunOptions};
use protocol::{StopReason, COST_POINTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_carry_measured_costs_and_plans_follow_them() {
    for repair in [config::Repair::None, config::Repair::Obs] {
        let dir = tempfile::tempdir().unwrap();
        let fx = write_fixture(dir.path(), 11, 24, 48).unwrap();
        let mut cfg = fixture_config(&fx, &dir.path().join("runs"));
        cfg.pruning.target_sparsity = 0.3;
        cfg.pruning.repair = repair;
        cfg.pruning.layer_costs = true;
        cfg.heuristic.allocation = config::Allocation::Cost;
        let opts = RunOptions {
            run_id: Some("costs".into()),
            faults: Faults::default(),
            ..Default::default()
        };
        let out = run_pruning(cfg, opts).await.unwrap();
        assert_eq!(
            out.summary.stop_reason,
            StopReason::TargetReached,
            "{repair:?}"
        );
        let stored = out.folder.load().unwrap();
        assert!(!stored.iterations.is_empty());
        for it in &stored.iterations {
            for p in &it.profiles {
                assert_eq!(p.cost.len(), COST_POINTS, "{repair:?} {}", p.name);
                assert!(p.cost.iter().all(|c| c.is_finite() && *c >= 0.0));
                assert!(
                    p.cost.windows(2).all(|w| w[0] <= w[1]),
                    "{repair:?} {}: {:?}",
                    p.name,
                    p.cost
                );
            }
            // Costs differ between layers, so the first plan is not uniform.
            let costs: Vec<f64> = it.profiles.iter().map(|p| p.cost[4]).collect();
            assert!(costs
                .iter()
                .any(|c| (c - costs[0]).abs() > 1e-9 * costs[0].abs()));
        }
        let first = &stored.iterations[0].record.plan;
        assert!(
            first.reasoning.contains("measured expected loss rise"),
            "{}",
            first.reasoning
        );
        let deltas: Vec<f64> = first.layer_decisions.iter().map(|d| d.delta).collect();
        let (lo, hi) = deltas
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), d| (l.min(*d), h.max(*d)));
        assert!(hi - lo > 0.005, "{repair:?}: uniform deltas {deltas:?}");
    }
}
