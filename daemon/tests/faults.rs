//! Faults and shutdowns, in process: a checkpointer write error fails the run with the
//! reason while earlier checkpoints stay intact and the daemon keeps serving; a graceful
//! shutdown in the middle of a run leaves it `running` on disk, and a daemon restarted
//! on the same folder resumes it with no committed iteration lost or repeated.

mod common;

use std::time::Duration;

use common::{wait_ended, wait_for, Env, Running};
use daemon::types::JobState;
use daemon::Hooks;
use protocol::{RunState, StopReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpointer_write_error_fails_the_run_and_the_daemon_keeps_serving() {
    let env = Env::new();
    let hooks = Hooks {
        faults: actors::Faults {
            checkpointer_fail_at: Some(3),
            ..Default::default()
        },
    };
    let d = Running::start(env.daemon_config(), None, hooks).await;
    let bad = d.client.submit(&env.submit_request(|_| {})).await.unwrap();
    let good = d.client.submit(&env.submit_request(|_| {})).await.unwrap();
    let det = wait_ended(&d.client, &bad.id, Duration::from_secs(120)).await;
    assert_eq!(det.run.state, JobState::Failed);
    assert_eq!(det.run.stop_reason, Some(StopReason::Failed));
    let reason = det.run.reason.clone().unwrap();
    assert!(
        reason.contains("injected write failure at iteration 3"),
        "{reason}"
    );
    assert_eq!(
        common::iterations(&det),
        [1, 2],
        "iterations before the fault"
    );
    // The run's database: iterations 1 and 2 intact, status failed with the reason.
    let db = actors::folder::db_dir(&env.data_dir().join("runs").join(&bad.id));
    let stored = actors::checkpointer::load_run(&db, &bad.id).unwrap();
    let its: Vec<u32> = stored
        .iterations
        .iter()
        .map(|s| s.record.outcome.iteration)
        .collect();
    assert_eq!(its, [1, 2]);
    assert_eq!(
        stored.deltas.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        its.iter()
            .copied()
            .filter(|i| stored.iterations[*i as usize - 1].committed.is_some())
            .collect::<Vec<_>>()
    );
    for (s, h) in stored.iterations.iter().zip(&det.history) {
        assert_eq!(s.record, h.record, "the API shows what is stored");
    }
    let st = stored.status.unwrap();
    assert_eq!(st.state, RunState::Failed);
    assert!(st.reason.unwrap().contains("injected write failure"));
    // Still serving: health, and the next run (the fault fires once) finishes.
    assert_eq!(d.client.health().await.unwrap().status, "ok");
    let g = wait_ended(&d.client, &good.id, Duration::from_secs(120)).await;
    assert_eq!(g.run.state, JobState::Finished, "{:?}", g.run.reason);
    assert!(g.history.len() > 2);
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_mid_run_then_restart_resumes_without_loss() {
    let env = Env::new();
    // Reference: the same run uninterrupted.
    let d = Running::start(env.daemon_config(), None, Hooks::default()).await;
    let clean = d.client.submit(&env.submit_request(|_| {})).await.unwrap();
    let clean = wait_ended(&d.client, &clean.id, Duration::from_secs(120)).await;
    assert_eq!(clean.run.state, JobState::Finished);
    // A slow run (pauses in `evaluating`), stopped gracefully after iteration 2.
    let slow = Hooks {
        faults: actors::Faults {
            pause_before_eval_ms: 400,
            ..Default::default()
        },
    };
    d.stop().await.unwrap();
    let d = Running::start(env.daemon_config(), None, slow).await;
    let run = d.client.submit(&env.submit_request(|_| {})).await.unwrap();
    wait_for(&d.client, &run.id, Duration::from_secs(120), |v| {
        v.iterations >= 2
    })
    .await;
    d.stop().await.unwrap();
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            env.data_dir()
                .join("registry")
                .join(format!("{}.json", run.id)),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(record["state"], "running", "left for the restart");
    let db = actors::folder::db_dir(&env.data_dir().join("runs").join(&run.id));
    let stored = actors::checkpointer::load_run(&db, &run.id).unwrap();
    let before = stored.iterations.len();
    assert!(
        before >= 2 && before < clean.history.len(),
        "{before} of {}",
        clean.history.len()
    );
    assert_eq!(
        stored.status.unwrap().state,
        RunState::Committed,
        "the iteration in progress finished"
    );
    // Restart on the same folder: the run resumes and ends as the clean one did.
    let d = Running::start(env.daemon_config(), None, Hooks::default()).await;
    let det = wait_ended(&d.client, &run.id, Duration::from_secs(120)).await;
    assert_eq!(det.run.state, JobState::Finished, "{:?}", det.run.reason);
    assert_eq!(det.run.resumes, 1);
    assert_eq!(
        common::iterations(&det),
        (1..=clean.history.len() as u32).collect::<Vec<_>>()
    );
    for (a, b) in clean.history.iter().zip(&det.history) {
        assert_eq!(a.record, b.record, "iteration {}", a.iteration);
    }
    let masks =
        |id: &str| std::fs::read(env.data_dir().join("runs").join(id).join("masks.bin")).unwrap();
    assert!(masks(&clean.run.id) == masks(&run.id), "same final masks");
    // The first run is still listed, with its history read back from its database.
    let first = d.client.show(&clean.run.id).await.unwrap();
    assert_eq!(first.history.len(), clean.history.len());
    for (a, b) in first.history.iter().zip(&clean.history) {
        assert_eq!(a.record, b.record);
        assert_eq!(a.planner, b.planner);
        assert_eq!(a.delta_bytes, b.delta_bytes);
    }
    d.stop().await.unwrap();
}
