//! The real daemon process on the tiny model: SIGKILLed in the middle of a run (while
//! iteration 3 is being evaluated), restarted on the same data folder; the run resumes
//! from its last committed iteration and ends with the same final masks and the same
//! iteration records as an uninterrupted run — none lost, none repeated. SIGTERM stops
//! a daemon cleanly. Prints the daemon's idle RSS and the time from restart to resume.

mod daemon_support;

use std::time::{Duration, Instant};

use daemon::types::JobState;
use daemon_support::{wait_ended, wait_for, Env, Proc};
use protocol::RunState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_then_restart_resumes_to_identical_masks() {
    let env = Env::new();

    // 1. Uninterrupted reference run; the daemon idles first (RSS) and stops on SIGTERM.
    let a = Proc::spawn(&env, &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = a.rss_mib();
    let clean = a.client.submit(&env.submit_request(|_| {})).await.unwrap();
    let clean = wait_ended(&a.client, &clean.id, Duration::from_secs(300)).await;
    assert_eq!(
        clean.run.state,
        JobState::Finished,
        "{:?}",
        clean.run.reason
    );
    let after_rss = a.rss_mib();
    let (_, term_took) = a.terminate();

    // 2. A run that pauses 3 s in `evaluating`: SIGKILL while iteration 3 is evaluated.
    let b = Proc::spawn(&env, &[("SECATEUR_TEST_PAUSE_BEFORE_EVAL_MS", "3000")]);
    let run = b.client.submit(&env.submit_request(|_| {})).await.unwrap();
    wait_for(&b.client, &run.id, Duration::from_secs(300), |v| {
        v.iteration == 3 && v.phase == Some(RunState::Evaluating)
    })
    .await;
    b.kill();
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            env.data_dir()
                .join("registry")
                .join(format!("{}.json", run.id)),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(record["state"], "running");
    let db = actors::folder::db_dir(&env.run_dir(&run.id));
    let stored = actors::checkpointer::load_run(&db, &run.id).unwrap();
    assert_eq!(stored.iterations.len(), 2, "iterations 1 and 2 committed");
    let st = stored.status.unwrap();
    assert_eq!((st.state, st.iteration), (RunState::Evaluating, 3));

    // 3. Restart on the same folder: the run resumes at iteration 3 and finishes.
    let restart = Instant::now();
    let c = Proc::spawn(&env, &[]);
    let resumed = wait_for(&c.client, &run.id, Duration::from_secs(300), |v| {
        v.resumes == 1 && v.iteration >= 3 && v.phase.is_some()
    })
    .await;
    let resume_took = restart.elapsed();
    assert_eq!(resumed.state, JobState::Running);
    let det = wait_ended(&c.client, &run.id, Duration::from_secs(300)).await;
    assert_eq!(det.run.state, JobState::Finished, "{:?}", det.run.reason);
    let its: Vec<u32> = det.history.iter().map(|h| h.iteration).collect();
    assert_eq!(its, (1..=clean.history.len() as u32).collect::<Vec<_>>());
    for (x, y) in clean.history.iter().zip(&det.history) {
        assert_eq!(x.record, y.record, "iteration {}", x.iteration);
    }
    // A finished run's database is closed again (the daemon holds no lock on it).
    let stored = actors::checkpointer::load_run(&db, &run.id).unwrap();
    assert_eq!(stored.iterations.len(), clean.history.len());
    let masks = |id: &str| std::fs::read(env.run_dir(id).join("masks.bin")).unwrap();
    let (ma, mb) = (masks(&clean.run.id), masks(&run.id));
    assert!(ma.len() > 8);
    assert!(ma == mb, "final masks differ");
    assert!(
        (det.run.sparsity - 0.5).abs() <= 0.01,
        "{}",
        det.run.sparsity
    );
    let log = c.stderr.lock().unwrap().clone();
    assert!(log.contains("resuming run from its checkpoint"), "{log}");
    let listening = c.listening_after;
    c.terminate();

    println!(
        "daemon: idle RSS {:.1} MiB (after one tiny run {:.1} MiB); SIGTERM exit {:.0} ms; \
         restart to listening {:.0} ms; restart to the run resuming (iteration 3 in progress) {:.0} ms",
        idle_rss.unwrap_or(f64::NAN),
        after_rss.unwrap_or(f64::NAN),
        term_took.as_secs_f64() * 1e3,
        listening.as_secs_f64() * 1e3,
        resume_took.as_secs_f64() * 1e3
    );
}
