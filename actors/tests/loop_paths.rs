//! The loop's decision paths on the tiny fixture: rollback with negative feedback in
//! the next prompt, critic veto (replan) and amend, K = 3 candidates, and failures of
//! actors (Profiler / Evaluator panics survived, Checkpointer failure stops the run).

use std::sync::{Arc, Mutex};

use actors::critic_rules::ROLLBACK_ASSESSMENT;
use actors::pipeline::choose;
use actors::testing::{fixture_config, write_fixture, Fixture};
use actors::{run_pruning, Faults, RunOptions, RunOutput};
use config::RuleAction;
use llm::{LlmError, PlanRequest, PlanResponse, PlannerBackend};
use protocol::{LayerDecision, Plan, RunState, StopReason, Verdict};

/// A planner whose answers a test writes; it records every request it gets.
struct Scripted {
    script: Box<dyn Fn(&PlanRequest) -> Plan + Send + Sync>,
    seen: Mutex<Vec<PlanRequest>>,
}

impl PlannerBackend for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn propose(&self, request: &PlanRequest, _k: usize) -> Result<Vec<PlanResponse>, LlmError> {
        self.seen.lock().unwrap().push(request.clone());
        let plan = (self.script)(request);
        Ok(vec![PlanResponse {
            raw_response: serde_json::to_string(&plan).unwrap(),
            plan,
            backend: "scripted".into(),
            model: None,
            system_prompt: String::new(),
            user_prompt: String::new(),
            latency_ms: 0,
            input_tokens: None,
            output_tokens: None,
        }])
    }
}

fn plan(decisions: Vec<(String, f64)>, stop: bool) -> Plan {
    Plan {
        reasoning: "scripted".into(),
        stop_pruning: stop,
        layer_decisions: decisions
            .into_iter()
            .map(|(layer, delta)| LayerDecision { layer, delta })
            .collect(),
    }
}

fn all_layers(r: &PlanRequest, delta: f64) -> Vec<(String, f64)> {
    r.profiles.iter().map(|p| (p.name.clone(), delta)).collect()
}

fn fixture() -> (tempfile::TempDir, Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 7, 24, 48).unwrap();
    (dir, fx)
}

async fn run(cfg: config::Config, opts: RunOptions) -> RunOutput {
    run_pruning(cfg, opts).await.unwrap()
}

fn scripted(f: impl Fn(&PlanRequest) -> Plan + Send + Sync + 'static) -> Arc<Scripted> {
    Arc::new(Scripted {
        script: Box::new(f),
        seen: Mutex::new(Vec::new()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_aggressive_plan_is_rolled_back_and_the_next_prompt_says_so() {
    let (dir, fx) = fixture();
    let mut cfg = fixture_config(&fx, &dir.path().join("runs"));
    cfg.pruning.tau = 0.01;
    // τ per iteration (the paper's rule): the 0.15 step must be judged by 1 % itself.
    cfg.pruning.tau_span = 0.0;
    // The script ends the run by stopping.
    cfg.critic.rules.premature_stop = RuleAction::Off;
    let planner = scripted(|r| match r.iteration {
        1 => plan(all_layers(r, 0.01), false),
        2 => plan(all_layers(r, 0.15), false),
        _ => plan(vec![], true),
    });
    let out = run(
        cfg.clone(),
        RunOptions {
            planner: Some(planner.clone()),
            run_id: Some("rb".into()),
            ..Default::default()
        },
    )
    .await;
    let s = &out.summary;
    assert_eq!(s.stop_reason, StopReason::PlannerStopped);
    assert_eq!(s.records.len(), 2);
    // The plan that stopped the run is kept with its verdict (no iteration stores it).
    assert_eq!(s.stopped_by.len(), 1);
    assert!(s.stopped_by[0].plan.stop_pruning);
    assert_eq!(s.stopped_by[0].verdict, Verdict::Approve);
    assert_eq!(s.stopped_by[0].backend, "scripted");
    let (ok, rb) = (&s.records[0].outcome, &s.records[1].outcome);
    assert!(!ok.rolled_back && ok.ppl_change() <= 0.01, "{ok:?}");
    assert!(rb.rolled_back && rb.ppl_change() > 0.01, "{rb:?}");
    assert_eq!(s.records[1].feedback.assessment, ROLLBACK_ASSESSMENT);
    // Nothing of iteration 2 was committed: sparsity is iteration 1's, and the run's
    // PPL is still iteration 1's.
    assert!((s.final_sparsity - ok.sparsity_after).abs() < 1e-12);
    assert_eq!(s.final_ppl, ok.ppl_after);
    assert_eq!(s.rollbacks(), 1);
    // Iteration 3's request carries the negative feedback, and so does its prompt.
    let seen = planner.seen.lock().unwrap();
    let third = seen.iter().find(|r| r.iteration == 3).unwrap();
    assert_eq!(third.history.len(), 2);
    assert!((third.current_ppl - ok.ppl_after).abs() < 1e-12);
    let prompt = llm::build_prompt(third, &cfg.prompt, 0, 1);
    assert!(prompt.user.contains(ROLLBACK_ASSESSMENT), "{}", prompt.user);
    // The store has both iterations, a delta only for the committed one.
    let stored = out.folder.load().unwrap();
    assert_eq!(stored.iterations.len(), 2);
    assert_eq!(stored.deltas.len(), 1);
    assert_eq!(stored.deltas[0].0, 1);
    assert_eq!(stored.status.unwrap().state, RunState::Finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vetoed_plan_goes_back_with_reasons_and_amended_plan_is_applied() {
    let (dir, fx) = fixture();
    let mut cfg = fixture_config(&fx, &dir.path().join("runs"));
    cfg.critic.rules.premature_stop = RuleAction::Off;
    let planner = scripted(|r| {
        if r.iteration >= 2 {
            plan(vec![], true)
        } else if r.rejections.is_empty() {
            plan(vec![], false) // empty plan: vetoed
        } else {
            // δ 0.3 is above 0.15: amended (clamped).
            plan(vec![(r.profiles[4].name.clone(), 0.3)], false)
        }
    });
    let out = run(
        cfg,
        RunOptions {
            planner: Some(planner.clone()),
            run_id: Some("va".into()),
            ..Default::default()
        },
    )
    .await;
    let seen = planner.seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "veto round, replan, then iteration 2");
    assert!(seen[1].rejections[0].reasons[0].contains("empty plan"));
    let stored = out.folder.load().unwrap();
    let c = &stored.iterations[0].candidates;
    assert!(matches!(c[0].verdict, Verdict::Veto { .. }));
    match &c[1].verdict {
        Verdict::Amend { plan, reasons } => {
            assert_eq!(plan.layer_decisions[0].delta, 0.15);
            assert!(reasons[0].contains("lowered to 0.15"), "{reasons:?}");
        }
        v => panic!("expected an amendment, got {v:?}"),
    }
    assert!(c[1].score.is_some() && c[0].score.is_none());
    // The amended δ is what the executor applied: layer 4 at 15 % (rounded per row).
    let (name, sp, _) = &out.summary.layer_sparsity[4];
    assert_eq!(name, &seen[0].profiles[4].name);
    assert!((sp - 0.15).abs() < 0.01, "{sp}");
    assert!(out
        .summary
        .layer_sparsity
        .iter()
        .enumerate()
        .all(|(i, l)| i == 4 || l.1 == 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_stop_is_cleared_by_default_and_its_decisions_applied() {
    let (dir, fx) = fixture();
    let mut cfg = fixture_config(&fx, &dir.path().join("runs"));
    cfg.critic.max_replans = 1;
    // Iteration 1: stop at 0 % with decisions (cleared, decisions applied). Then a
    // bare stop: nothing to keep, vetoed, and the run ends with no acceptable plan.
    let planner = scripted(|r| match r.iteration {
        1 => plan(vec![(r.profiles[0].name.clone(), 0.1)], true),
        _ => plan(vec![], true),
    });
    let out = run(
        cfg,
        RunOptions {
            planner: Some(planner.clone()),
            ..Default::default()
        },
    )
    .await;
    let s = &out.summary;
    assert_eq!(s.stop_reason, StopReason::NoAcceptablePlan);
    assert_eq!(s.records.len(), 1);
    assert!(!s.records[0].outcome.rolled_back);
    assert!(s.layer_sparsity[0].1 > 0.05, "{:?}", s.layer_sparsity[0]);
    assert!(s.stopped_by.is_empty());
    assert_eq!(s.rejected.len(), 2);
    assert!(
        s.rejected[0].reasons[0].ends_with("and no layer decisions to keep"),
        "{:?}",
        s.rejected[0].reasons
    );
    let stored = out.folder.load().unwrap();
    match &stored.iterations[0].candidates[0].verdict {
        Verdict::Amend { plan, reasons } => {
            assert!(!plan.stop_pruning);
            assert!(
                reasons[0].ends_with("cleared, decisions kept"),
                "{reasons:?}"
            );
        }
        v => panic!("expected an amendment, got {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replans_are_bounded() {
    let (dir, fx) = fixture();
    let mut cfg = fixture_config(&fx, &dir.path().join("runs"));
    cfg.critic.max_replans = 1;
    let planner = scripted(|_| plan(vec![], false));
    let out = run(
        cfg,
        RunOptions {
            planner: Some(planner.clone()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(out.summary.stop_reason, StopReason::NoAcceptablePlan);
    assert_eq!(planner.seen.lock().unwrap().len(), 2);
    assert_eq!(out.summary.final_sparsity, 0.0);
    // Both rounds' vetoed plans and reasons come back with the summary.
    let rejected = &out.summary.rejected;
    assert_eq!(rejected.len(), 2);
    for r in rejected {
        assert!(r.plan.layer_decisions.is_empty());
        assert_eq!(
            r.reasons,
            vec!["empty plan: no layer decisions and stop_pruning is false"]
        );
    }
    // The stored status says so too.
    let stored = out.folder.load().unwrap();
    assert_eq!(
        stored.status.unwrap().reason.as_deref(),
        Some(
            "no_acceptable_plan: 2 plan(s) vetoed; last: empty plan: no layer decisions and \
             stop_pruning is false"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_candidates_are_evaluated_and_the_best_is_committed() {
    let (dir, fx) = fixture();
    let mut cfg = fixture_config(&fx, &dir.path().join("runs"));
    cfg.pruning.candidates = 3;
    // Steps small enough that the ladder's three rungs stay distinct until the end (at
    // the default 0.125 the gap clips balanced and bold to the same plan).
    cfg.heuristic.base_step = 0.04;
    cfg.heuristic.max_aggressiveness = 2.0;
    let out = run(
        cfg.clone(),
        RunOptions {
            run_id: Some("k3".into()),
            ..Default::default()
        },
    )
    .await;
    let s = &out.summary;
    assert_eq!(s.stop_reason, StopReason::TargetReached, "{:?}", s.failure);
    assert!((s.final_sparsity - 0.5).abs() <= 0.01);
    let stored = out.folder.load().unwrap();
    for it in &stored.iterations {
        let scores: Vec<_> = it
            .candidates
            .iter()
            .filter_map(|c| c.score.clone())
            .collect();
        assert_eq!(scores.len(), 3, "iteration {}", it.record.outcome.iteration);
        let o = &it.record.outcome;
        let best = choose(
            &scores,
            o.sparsity_before,
            o.ppl_before,
            cfg.pruning.tau,
            cfg.pruning.tau_span,
        );
        assert_eq!(it.committed, best.map(|i| scores[i].id));
        if let Some(i) = best {
            assert_eq!(o.ppl_after, scores[i].ppl);
            assert_eq!(o.sparsity_after, scores[i].sparsity_after);
        }
    }
    // The candidates differ (the ladder: balanced, conservative, bold).
    let first = &stored.iterations[0].candidates;
    assert_ne!(
        first[0].score.as_ref().unwrap().sparsity_after,
        first[1].score.as_ref().unwrap().sparsity_after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiler_and_evaluator_panics_are_survived_with_identical_results() {
    let (dir, fx) = fixture();
    let cfg = fixture_config(&fx, &dir.path().join("runs"));
    let clean = run(cfg.clone(), RunOptions::default()).await;
    let faults = Faults {
        profiler_panic_at: Some(2),
        evaluator_panic_at: Some(3),
        ..Default::default()
    };
    let hurt = run(
        cfg,
        RunOptions {
            faults: faults.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(faults.fired(), vec!["evaluator", "profiler"]);
    assert_eq!(
        hurt.summary.state,
        RunState::Finished,
        "{:?}",
        hurt.summary.failure
    );
    assert_eq!(hurt.summary.records, clean.summary.records);
    assert_eq!(hurt.masks, clean.masks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpointer_failure_stops_the_run_as_failed_with_the_reason() {
    let (dir, fx) = fixture();
    let cfg = fixture_config(&fx, &dir.path().join("runs"));
    let out = run(
        cfg,
        RunOptions {
            run_id: Some("cf".into()),
            faults: Faults {
                checkpointer_fail_at: Some(2),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let s = &out.summary;
    assert_eq!(s.state, RunState::Failed);
    assert_eq!(s.stop_reason, StopReason::Failed);
    let why = s.failure.clone().unwrap();
    assert!(
        why.contains("injected write failure at iteration 2"),
        "{why}"
    );
    // Iteration 2 was neither stored nor applied.
    assert_eq!(s.records.len(), 1);
    assert!((s.final_sparsity - s.records[0].outcome.sparsity_after).abs() < 1e-12);
    let stored = out.folder.load().unwrap();
    assert_eq!(stored.iterations.len(), 1);
    let st = stored.status.unwrap();
    assert_eq!(st.state, RunState::Failed);
    assert!(st.reason.unwrap().contains("injected write failure"));
}
