//! The whole loop on the tiny fixture model: target reached, sparsity counted on the
//! weights, reports consistent with the store.

use actors::testing::{fixture_config, write_fixture};
use actors::{run_pruning, RunOptions};
use protocol::{RunState, StopReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_loop_reaches_the_target_and_counts_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 7, 24, 48).unwrap();
    let cfg = fixture_config(&fx, &dir.path().join("runs"));
    let out = run_pruning(
        cfg.clone(),
        RunOptions {
            run_id: Some("t1".into()),
            final_eval: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let s = &out.summary;
    eprintln!(
        "baseline {} final {} sparsity {} iterations {} rollbacks {}",
        s.baseline_ppl,
        s.final_ppl,
        s.final_sparsity,
        s.iterations(),
        s.rollbacks()
    );
    for r in &s.records {
        eprintln!("{:?} {}", r.outcome, r.feedback.assessment);
    }
    assert_eq!(s.state, RunState::Finished, "{:?}", s.failure);
    assert_eq!(s.stop_reason, StopReason::TargetReached);
    assert!(
        (s.final_sparsity - 0.5).abs() <= 0.01,
        "{}",
        s.final_sparsity
    );
    assert_eq!(out.masks.len(), 14);
    let fe = out.final_eval.as_ref().unwrap();
    eprintln!("{fe:?}");
    assert!(fe.pruned_ppl > fe.dense_ppl);
}
