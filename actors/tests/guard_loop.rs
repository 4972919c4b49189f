//! The knowledge guard (`evaluation.probe.guard`) on the tiny fixture model: at every
//! probe point, a step that τ accepts but that costs more than the guard's share of
//! the last point's accuracy is rolled back with the reason in the planner's feedback,
//! stores no probe point of the refused candidate, and leaves the model as it was; the
//! run goes on.

use std::sync::Arc;

use actors::pipeline::probe::KNOWLEDGE_ASSESSMENT;
use actors::testing::{fixture_config, write_fixture, write_qa_fixture};
use actors::{run_pruning, RunOptions, RunOutput};
use protocol::RunState;

const QUESTIONS: usize = 24;
const GUARD: f64 = 0.05;

async fn run(guard: f64) -> (RunOutput, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // Seed 3: a fixture whose answers change as it is pruned (see probe_loop.rs).
    let fx = write_fixture(dir.path(), 3, 24, 48).unwrap();
    let qa = write_qa_fixture(&fx, 3, QUESTIONS, 8).unwrap();
    let mut cfg = fixture_config(&fx, &dir.path().join("runs"));
    cfg.pruning.max_iterations = 8;
    cfg.evaluation.probe.every = 1;
    cfg.evaluation.probe.path = qa;
    cfg.evaluation.probe.questions = QUESTIONS;
    cfg.evaluation.probe.max_new_tokens = 8;
    cfg.evaluation.probe.guard = guard;
    let out = run_pruning(
        cfg,
        RunOptions {
            run_id: Some("guard".into()),
            progress: Some(Arc::new(|_: &actors::ProgressEvent| {})),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    (out, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_rolls_back_steps_that_lose_knowledge() {
    let (out, _dir) = run(GUARD).await;
    let s = &out.summary;
    assert!(
        matches!(s.state, RunState::Finished),
        "{:?} {:?}",
        s.state,
        s.failure
    );
    let tau = out.config.pruning.tau;
    let points = &s.probe.as_ref().expect("probe series").points;
    let guarded: Vec<_> = s
        .records
        .iter()
        .filter(|r| r.feedback.assessment == KNOWLEDGE_ASSESSMENT)
        .collect();
    assert!(
        !guarded.is_empty(),
        "the fixture loses knowledge: {points:?}"
    );
    for r in &guarded {
        let o = &r.outcome;
        assert!(o.rolled_back);
        assert!(
            o.ppl_change() <= tau,
            "τ alone would have rolled it back: {o:?}"
        );
        assert!(r.feedback.summary.contains("The knowledge probe answered"));
        // No point of the refused candidate: at most the final point, which is the
        // unchanged model's.
        for p in points.iter().filter(|p| p.iteration == o.iteration) {
            assert_eq!(p.sparsity, o.sparsity_before, "{p:?}");
            assert_eq!(Some(p), points.last());
        }
    }
    // Every committed probed step kept within the guard of the point before it.
    for w in points.windows(2) {
        assert!(
            w[1].accuracy >= (1.0 - GUARD) * w[0].accuracy - 1e-12,
            "{points:?}"
        );
    }
    // Guard off: the same fixture commits steps that lose more than that.
    let (off, _dir) = run(0.0).await;
    let off_points = &off.summary.probe.as_ref().unwrap().points;
    assert!(
        off_points
            .windows(2)
            .any(|w| w[1].accuracy < (1.0 - GUARD) * w[0].accuracy),
        "{off_points:?}"
    );
    assert!(off
        .summary
        .records
        .iter()
        .all(|r| r.feedback.assessment != KNOWLEDGE_ASSESSMENT));
}
