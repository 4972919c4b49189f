//! Resumes from the crash points a kill can leave behind (tiny fixture): a run recorded
//! but killed before its baseline, a finished run killed during its final evaluation,
//! and a finished run whose outputs are written.

use actors::store::Store;
use actors::testing::{fixture_config, write_fixture};
use actors::{run_pruning, RunError, RunOptions};
use protocol::{RunState, StopReason};

fn opts(resume: Option<&str>, id: &str) -> RunOptions {
    RunOptions {
        resume: resume.map(str::to_string),
        run_id: Some(id.to_string()),
        final_eval: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_run_resumes_to_the_same_stop_reason_and_then_says_it_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 7, 24, 48).unwrap();
    let runs = dir.path().join("runs");
    let mut cfg = fixture_config(&fx, &runs);
    cfg.pruning.target_sparsity = 0.2;
    let count = run_pruning(cfg.clone(), opts(None, "count")).await.unwrap();
    assert_eq!(count.summary.stop_reason, StopReason::TargetReached);
    // The target is reached in the last allowed iteration: a resume that ran the loop
    // again would stop on max_iterations instead.
    cfg.pruning.max_iterations = count.summary.records.len() as u32;
    let first = run_pruning(cfg.clone(), opts(None, "fin")).await.unwrap();
    assert_eq!(first.summary.stop_reason, StopReason::TargetReached);
    // The stored status keeps the stop reason.
    let stored = first.folder.load().unwrap();
    assert_eq!(
        stored.status.as_ref().and_then(|s| s.stop_reason),
        Some(StopReason::TargetReached)
    );
    // … and its note spells it as every output does (the serde name), not `targetreached`.
    assert_eq!(
        stored.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("target_reached")
    );
    // Killed during the final evaluation (no outputs yet): the resume ends the same way,
    // with the same masks and no new iteration.
    let again = run_pruning(cfg.clone(), opts(Some("fin"), "fin"))
        .await
        .unwrap();
    assert_eq!(again.summary.state, RunState::Finished);
    assert_eq!(again.summary.stop_reason, StopReason::TargetReached);
    assert_eq!(again.summary.records.len(), first.summary.records.len());
    assert_eq!(again.masks, first.masks);
    assert!(again.final_eval.is_some());
    // Once the outputs are written, a resume says the run is finished.
    again
        .write_outputs(actors::Usage {
            wall_seconds: 1.0,
            ..Default::default()
        })
        .unwrap();
    match run_pruning(cfg, opts(Some("fin"), "fin")).await {
        Err(e @ RunError::Finished { .. }) => {
            let text = e.to_string();
            assert!(text.contains("already finished (target_reached)"), "{text}");
        }
        Err(e) => panic!("expected Finished, got {e}"),
        Ok(_) => panic!("expected Finished, got a run"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_recorded_before_its_baseline_resumes_from_iteration_one() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 7, 24, 48).unwrap();
    let runs = dir.path().join("runs");
    let mut cfg = fixture_config(&fx, &runs);
    cfg.pruning.target_sparsity = 0.1;
    // What a kill right after the run was recorded leaves: the meta (no baseline) and
    // the `created` status, written the way `run_pruning` writes them.
    let reference = run_pruning(cfg.clone(), opts(None, "whole")).await.unwrap();
    let whole = reference.folder.load().unwrap();
    let mut meta = whole.meta.clone();
    meta.run_id = "early".into();
    meta.baseline_ppl = f64::NAN;
    let folder = actors::RunFolder::new(&runs, "early");
    std::fs::create_dir_all(folder.dir()).unwrap();
    let status = protocol::RunStatus {
        state: RunState::Created,
        iteration: 1,
        stored_iterations: 0,
        reason: None,
        stop_reason: None,
    };
    Store::open(&folder.db_dir())
        .unwrap()
        .create_run(&meta, &status)
        .unwrap();
    let resumed = run_pruning(cfg, opts(Some("early"), "early"))
        .await
        .unwrap();
    assert_eq!(resumed.summary.started_at_iteration, 1);
    assert_eq!(resumed.summary.stop_reason, reference.summary.stop_reason);
    assert_eq!(resumed.summary.baseline_ppl, reference.summary.baseline_ppl);
    assert_eq!(
        resumed.masks, reference.masks,
        "same run as an uninterrupted one"
    );
}
