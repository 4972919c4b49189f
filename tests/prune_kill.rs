//! `secateur prune` SIGKILLed 0.5 s, 1.5 s and 4 s after it started, then `--resume`d to
//! the end (issue 17), with `pruning.repair = "none"` and `"obs"`: every kill either
//! resumes to the uninterrupted run's result — same `masks.bin` and weight files
//! (sha256), same stop reason, iterations 1..=n stored once each with the same
//! records and the same stored profiles and statistics (wall times aside) — or, when
//! it came before the run was recorded, `--resume` says so clearly.
//!
//! Each iteration of the killed runs pauses [`PAUSE_MS`] (the
//! `SECATEUR_TEST_PAUSE_BEFORE_EVAL_MS` fault, which changes no result), so the run
//! cannot be over by 4 s however fast the machine; the test checks that from the run
//! folder rather than trusting it. The resumes and the reference run do not pause.

mod kill_support;

use std::path::Path;
use std::time::Duration;

use actors::faults::PAUSE_BEFORE_EVAL_ENV;
use actors::testing::write_fixture;
use kill_support::{kill_config, on_disk, outputs, prune, spawn_prune, started_run, OnDisk};

/// The pause of every iteration of a killed run.
const PAUSE_MS: u64 = 250;
/// When each kill lands, after the process was spawned.
const KILL_AT_MS: [u64; 3] = [500, 1500, 4000];

fn kill_and_resume(repair: config::Repair) {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 7, 24, 48).unwrap();
    let cfg = dir.path().join("kill.toml");
    let c = kill_config(&fx, Path::new("unused"), repair);
    std::fs::write(&cfg, c.to_toml_string()).unwrap();
    let cfg = cfg.to_str().unwrap();

    // The uninterrupted run.
    let runs = dir.path().join("reference");
    let out = prune(&["--config", cfg], &runs);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let id = err
        .lines()
        .find_map(|l| l.strip_prefix("starting run "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    let reference = outputs(&runs.join(id));
    let n = reference.records.len() as u64;
    assert_eq!(reference.iterations(), (1..=n).collect::<Vec<_>>());
    assert_eq!(reference.stop_reason, "target_reached");
    assert_eq!(
        reference.weights.is_some(),
        repair == config::Repair::Obs,
        "weight files exactly when repairing"
    );
    // With the pause, the last kill must come before the loop could end.
    assert!(n * PAUSE_MS > KILL_AT_MS[2] + 1000, "{n} iterations");

    let mut mid_run = Vec::new();
    for at in KILL_AT_MS {
        let runs = dir.path().join(format!("killed-{at}"));
        let log = dir.path().join(format!("killed-{at}.log"));
        let pause = PAUSE_MS.to_string();
        let mut child = spawn_prune(
            &["--config", cfg],
            &runs,
            &log,
            &[(PAUSE_BEFORE_EVAL_ENV, &pause)],
        );
        std::thread::sleep(Duration::from_millis(at));
        let early = child.try_wait().unwrap();
        let text = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            early.is_none(),
            "exited before the kill at {at} ms: {}",
            text()
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let Some(id) = started_run(&log) else {
            // Killed before it printed its id: it cannot have created anything.
            assert!(!runs.exists(), "a run folder without a printed id");
            assert_ne!(at, KILL_AT_MS[2], "nothing started in 4 s: {}", text());
            continue;
        };
        let state = on_disk(&runs, &id);
        let resumed = prune(&["--resume", &id], &runs);
        let err = String::from_utf8_lossy(&resumed.stderr);
        let stored = match state {
            OnDisk::NoFolder | OnDisk::NotRecorded => {
                // The documented answer when there is nothing to resume.
                assert!(!resumed.status.success(), "{err}");
                assert!(
                    err.contains("no checkpoint at")
                        || err.contains("was stopped before it recorded anything"),
                    "kill at {at} ms, {state:?}: {err}"
                );
                assert_ne!(at, KILL_AT_MS[2], "nothing recorded in 4 s: {}", text());
                continue;
            }
            OnDisk::Recorded {
                iterations,
                outputs,
                ..
            } => {
                assert!(!outputs, "kill at {at} ms: the run was already over");
                let k = iterations.len() as u32;
                assert_eq!(iterations, (1..=k).collect::<Vec<_>>(), "at {at} ms");
                assert!(u64::from(k) < n, "at {at} ms: {k} of {n} stored");
                k
            }
        };
        assert!(resumed.status.success(), "kill at {at} ms: {err}");
        assert!(
            err.contains(&format!("starting at iteration {}", stored + 1)),
            "kill at {at} ms, {stored} stored: {err}"
        );
        println!("{repair:?}: killed at {at} ms with {stored} of {n} iterations stored; resumed");
        mid_run.push(at);

        let got = outputs(&runs.join(&id));
        assert_eq!(got.masks, reference.masks, "masks.bin, kill at {at} ms");
        assert_eq!(got.weights, reference.weights, "weights, kill at {at} ms");
        assert_eq!(got.weight_files, reference.weight_files, "at {at} ms");
        assert_eq!(got.stop_reason, reference.stop_reason, "at {at} ms");
        assert_eq!(got.records, reference.records, "records, kill at {at} ms");
        for (a, b) in reference.stored.iter().zip(&got.stored) {
            let mut diff = Vec::new();
            kill_support::json_diff(a, b, "", &mut diff);
            assert!(diff.is_empty(), "kill at {at} ms, stored: {diff:?}");
        }
        match on_disk(&runs, &id) {
            OnDisk::Recorded {
                iterations,
                outputs: true,
                ..
            } => assert_eq!(iterations, (1..=n as u32).collect::<Vec<_>>()),
            other => panic!("kill at {at} ms: after the resume {other:?}"),
        }
    }
    assert!(
        mid_run.contains(&KILL_AT_MS[2]),
        "the 4 s kill must land mid-run: {mid_run:?}"
    );
}

#[test]
fn sigkill_at_fixed_times_then_resume_equals_uninterrupted() {
    kill_and_resume(config::Repair::None);
}

#[test]
fn sigkill_at_fixed_times_then_resume_equals_uninterrupted_with_obs_repair() {
    kill_and_resume(config::Repair::Obs);
}
