//! A cancel survives a crash (issue 17, item 2): cancel a running run (202), SIGKILL
//! the daemon (or SIGTERM it with no grace period) before the run could stop, restart
//! it on the same folder — the run ends `cancelled`, not `target_reached`. The request is in the run's record on disk by the
//! time the 202 arrives.

mod daemon_support;

use std::time::Duration;

use daemon::types::{JobState, RunView};
use daemon_support::{wait_ended, wait_for, Env, Proc};
use protocol::{RunState, StopReason};

/// How the first daemon goes away after the 202.
enum Stop {
    Kill,
    /// SIGTERM with `shutdown_grace_secs = 0`: the iteration in progress is abandoned.
    TermGraceExpired,
}

async fn cancel_then_stop_then_restart(stop: Stop) {
    let env = Env::new();
    // Iterations pause 3 s before their evaluation: time to cancel and stop mid-way.
    let pause = [("SECATEUR_TEST_PAUSE_BEFORE_EVAL_MS", "3000")];
    let toml = env.daemon_toml_with(|c| c.daemon.shutdown_grace_secs = 0);
    let a = Proc::spawn_with(&pause, toml);
    let run = a.client.submit(&env.submit_request(|_| {})).await.unwrap();
    wait_for(&a.client, &run.id, Duration::from_secs(300), |v| {
        v.iteration == 2 && v.phase == Some(RunState::Evaluating)
    })
    .await;
    let r = a
        .client
        .request(reqwest::Method::POST, &format!("/runs/{}/cancel", run.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let v: RunView = r.json().await.unwrap();
    assert!(v.cancel_requested);
    match stop {
        Stop::Kill => a.kill(),
        Stop::TermGraceExpired => {
            let (log, _) = a.terminate();
            assert!(log.contains("grace period over"), "{log}");
        }
    }
    let path = env
        .data_dir()
        .join("registry")
        .join(format!("{}.json", run.id));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(
        (&record["state"], &record["cancel_requested"]),
        (&"running".into(), &true.into())
    );

    let b = Proc::spawn(&env, &[]);
    let det = wait_ended(&b.client, &run.id, Duration::from_secs(300)).await;
    assert_eq!(det.run.state, JobState::Cancelled, "{:?}", det.run.reason);
    assert_eq!(det.run.stop_reason, Some(StopReason::Cancelled));
    assert_eq!(det.run.resumes, 1);
    // Iteration 1 was committed before the cancel; at most the one in progress follows.
    assert!(
        (1..=3).contains(&det.history.len()),
        "{} iterations",
        det.history.len()
    );
    b.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_then_sigkill_then_restart_ends_cancelled() {
    cancel_then_stop_then_restart(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_then_sigterm_past_the_grace_then_restart_ends_cancelled() {
    cancel_then_stop_then_restart(Stop::TermGraceExpired).await;
}
