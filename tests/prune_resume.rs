//! `secateur prune` as a real child process on the tiny fixture model: an uninterrupted
//! run, and a run SIGKILLed in the middle of iteration 3 then resumed with `--resume`,
//! must end with byte-identical final masks and the same iteration records.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use actors::testing::{fixture_config, write_fixture};
use protocol::RunState;

fn secateur() -> Command {
    Command::new(env!("CARGO_BIN_EXE_secateur"))
}

/// The run id from the "starting run <id> in <dir>" line.
fn run_id(line: &str) -> Option<String> {
    let rest = line.strip_prefix("starting run ")?;
    Some(rest.split_whitespace().next()?.to_string())
}

fn report(runs: &Path, id: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(runs.join(id).join("report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn killed_mid_iteration_and_resumed_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 7, 24, 48).unwrap();
    let runs = dir.path().join("runs");
    let cfg_path = dir.path().join("tiny.toml");
    std::fs::write(&cfg_path, fixture_config(&fx, &runs).to_toml_string()).unwrap();

    // 1. Uninterrupted.
    let out = secateur()
        .args(["prune", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let clean = stderr.lines().find_map(run_id).unwrap();

    // 2. Killed while iteration 3 is being evaluated.
    let mut child = secateur()
        .args(["prune", "--config"])
        .arg(&cfg_path)
        .env("SECATEUR_TEST_PAUSE_BEFORE_EVAL_MS", "3000")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut killed = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(id) = run_id(&line) {
            killed = Some(id);
        }
        if line.starts_with("iteration 2 ") {
            break;
        }
    }
    // Iteration 3 pauses 3 s in `evaluating`: wait until the status says so, then kill.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed = killed.unwrap();
    let db = actors::folder::db_dir(&runs.join(&killed));
    let stored = actors::checkpointer::load_run(&db, &killed).unwrap();
    assert_eq!(stored.iterations.len(), 2, "iterations 1 and 2 are stored");
    let st = stored.status.unwrap();
    assert_eq!(st.state, RunState::Evaluating, "killed mid-iteration");
    assert_eq!(st.iteration, 3);

    // 3. Resume to the end.
    let out = secateur()
        .args(["prune", "--resume", &killed, "--runs-dir"])
        .arg(&runs)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("starting at iteration 3"), "{stderr}");

    let a = std::fs::read(runs.join(&clean).join("masks.bin")).unwrap();
    let b = std::fs::read(runs.join(&killed).join("masks.bin")).unwrap();
    assert!(a.len() > 8);
    assert!(a == b, "final masks differ");
    let (ra, rb) = (report(&runs, &clean), report(&runs, &killed));
    assert_eq!(
        ra["iterations"], rb["iterations"],
        "same records, none lost or duplicated"
    );
    assert_eq!(ra["table4"], rb["table4"]);
    let its: Vec<u64> = rb["iterations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"]["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(its, (1..=its.len() as u64).collect::<Vec<_>>());
    let sp = rb["table4"]["final_sparsity"].as_f64().unwrap();
    assert!((sp - 0.5).abs() <= 0.01, "{sp}");
    for f in ["report.md", "iterations.png", "layers.png"] {
        assert!(runs.join(&killed).join(f).is_file(), "{f}");
    }
}

#[test]
fn invalid_config_values_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[pruning]\ntau = 1.7\ncandidates = 0\n").unwrap();
    let out = secateur()
        .args(["prune", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("pruning.tau") && e.contains("1.7"), "{e}");
    assert!(e.contains("pruning.candidates"), "{e}");
    let out = secateur()
        .args(["prune", "--resume", "no-such-run", "--runs-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("run `no-such-run`: no checkpoint"), "{e}");
}
