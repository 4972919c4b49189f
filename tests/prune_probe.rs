//! `secateur prune` with the in-loop knowledge probe on (`[evaluation.probe]`), as a
//! real child process on the tiny fixture model: the summary line, report.json's
//! `probe` object and report.md's section; and a missing question file is a clean
//! set-up error naming it.

use std::process::Command;

use actors::testing::{fixture_config, write_fixture, write_qa_fixture};

fn secateur() -> Command {
    Command::new(env!("CARGO_BIN_EXE_secateur"))
}

#[test]
fn prune_with_probe_reports_dense_and_final_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    // Seed 3: a fixture whose greedy answers vary (see actors/tests/probe_loop.rs).
    let fx = write_fixture(dir.path(), 3, 24, 48).unwrap();
    let qa = write_qa_fixture(&fx, 3, 24, 8).unwrap();
    let runs = dir.path().join("runs");
    let mut cfg = fixture_config(&fx, &runs);
    cfg.pruning.max_iterations = 3;
    cfg.evaluation.probe.every = 2;
    cfg.evaluation.probe.path = qa;
    cfg.evaluation.probe.questions = 12;
    cfg.evaluation.probe.max_new_tokens = 8;
    let cfg_path = dir.path().join("probe.toml");
    std::fs::write(&cfg_path, cfg.to_toml_string()).unwrap();

    let out = secateur()
        .args(["prune", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("knowledge probe (12 questions): dense "),
        "{stdout}"
    );
    // 12 questions < 20: flagged, as every knowledge metric on too few questions.
    assert!(stdout.contains("[uninformative"), "{stdout}");

    let id = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let run = runs.join(id);
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    let points = j["probe"]["points"].as_array().unwrap();
    let its: Vec<u64> = points
        .iter()
        .map(|p| p["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(its, vec![0, 2, 3], "dense, iteration 2, the end");
    assert_eq!(j["probe"]["dense_accuracy"], points[0]["accuracy"]);
    assert_eq!(j["probe"]["final_accuracy"], points[2]["accuracy"]);
    for p in points {
        let (c, t) = (p["correct"].as_u64().unwrap(), p["total"].as_u64().unwrap());
        assert_eq!(t, 12);
        assert_eq!(p["accuracy"].as_f64().unwrap(), c as f64 / t as f64);
    }
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("## Knowledge probe"), "{md}");
}

#[test]
fn missing_probe_file_is_a_set_up_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 7, 24, 48).unwrap();
    let mut cfg = fixture_config(&fx, &dir.path().join("runs"));
    cfg.evaluation.probe.every = 1;
    cfg.evaluation.probe.path = dir.path().join("no-such-questions.jsonl");
    let cfg_path = dir.path().join("probe.toml");
    std::fs::write(&cfg_path, cfg.to_toml_string()).unwrap();
    let out = secateur()
        .args(["prune", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(
        e.contains("evaluation.probe.path") && e.contains("no-such-questions.jsonl"),
        "{e}"
    );
}
