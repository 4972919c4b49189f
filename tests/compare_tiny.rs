//! `secateur compare` end to end on the tiny fixture model: a short `secateur prune`
//! run provides the agent row, then compare must list dense, every baseline and the
//! agent, each baseline within ±1 % of the target sparsity, and write the markdown,
//! JSON and PNG outputs; a second call reuses the cached dense row.

use std::path::Path;
use std::process::Command;

use actors::testing::{fixture_config, write_fixture};

fn secateur() -> Command {
    Command::new(env!("CARGO_BIN_EXE_secateur"))
}

/// The fixture's word-level tokenizer maps unknown words to `w0`; give the answer
/// letters their own tokens (replacing the last four words) so MMLU can be scored.
fn add_letters(model_dir: &Path) {
    let p = model_dir.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let n = vocab.len();
    for (k, letter) in ["A", "B", "C", "D"].iter().enumerate() {
        let old = format!("w{}", n - 4 + k);
        let id = vocab.remove(&old).unwrap();
        vocab.insert(letter.to_string(), id);
    }
    std::fs::write(&p, tok.to_string()).unwrap();
}

#[test]
fn compare_lists_every_method_at_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 3, 16, 48).unwrap();
    let runs = dir.path().join("runs");
    let cfg_path = dir.path().join("tiny.toml");
    std::fs::write(&cfg_path, fixture_config(&fx, &runs).to_toml_string()).unwrap();
    let out = secateur()
        .args(["prune", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let run_id = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("starting run ")?
                .split_whitespace()
                .next()
                .map(str::to_string)
        })
        .expect("run id");
    add_letters(&fx.model_dir);

    let mmlu = dir.path().join("mmlu.jsonl");
    let mut lines = String::new();
    for i in 0..12 {
        lines.push_str(&format!(
            "{{\"question\": \"w{} w{}\", \"choices\": [\"w3\", \"w4\", \"w5\", \"w6\"], \"answer\": {}}}\n",
            i + 7,
            i + 9,
            i % 4
        ));
    }
    std::fs::write(&mmlu, lines).unwrap();
    let qa = dir.path().join("qa.jsonl");
    let qa_lines: String = (0..6)
        .map(|i| {
            format!(
                "{{\"question\": \"w{} w{}\", \"answer\": [\"w{}\"]}}\n",
                i + 11,
                i + 12,
                i + 20
            )
        })
        .collect();
    std::fs::write(&qa, qa_lines).unwrap();
    let out_dir = dir.path().join("cmp");
    let args = |cmd: &mut Command, agent: Option<&Path>| {
        cmd.arg("compare")
            .arg(&fx.model_dir)
            .args([
                "--sparsity",
                "0.5",
                "--calib-samples",
                "4",
                "--calib-len",
                "32",
                "--window",
                "48",
            ])
            .arg("--calib")
            .arg(format!("{}:text", fx.calib.display()))
            .arg("--ppl")
            .arg(format!("{}:text", fx.final_text.display()))
            .arg("--mmlu")
            .arg(&mmlu)
            .args([
                "--shots",
                "2",
                "--qa-shots",
                "0",
                "--max-new-tokens",
                "4",
                "--json",
            ])
            .arg("--qa")
            .arg(&qa)
            .arg("--out")
            .arg(&out_dir);
        if let Some(agent) = agent {
            cmd.arg("--agent-run").arg(agent);
        }
    };
    let mut cmd = secateur();
    args(&mut cmd, Some(&runs.join(&run_id)));
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = table["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    let mut expected = vec!["dense"];
    expected.extend(baselines::ALL_METHODS);
    expected.push("agent");
    assert_eq!(names, expected);
    for r in rows {
        assert_eq!(r["status"], "ok", "{r}");
        let s = r["sparsity"].as_f64().unwrap();
        match r["method"].as_str().unwrap() {
            "dense" => assert_eq!(s, 0.0),
            // The agent stops at the loop's own target (0.5 by default) within its step size.
            "agent" => assert!(s > 0.0 && s <= 0.51, "agent {s}"),
            m => assert!((s - 0.5).abs() <= 0.01, "{m}: {s}"),
        }
        assert!(r["ppl"].as_f64().unwrap() > 1.0);
        assert!(r["mmlu"].as_f64().is_some() && r["qa"].as_f64().is_some());
    }
    assert_eq!(rows[0]["vs_dense"]["ppl"].as_f64(), Some(0.0));
    assert_eq!(
        table["mmlu_questions"], 10,
        "the last 2 questions are the shots"
    );
    for f in ["compare.md", "compare.json", "compare.png", "dense.json"] {
        assert!(out_dir.join(f).exists(), "{f}");
    }
    let md = std::fs::read_to_string(out_dir.join("compare.md")).unwrap();
    assert!(
        md.contains("| sparsegpt |") && md.contains("chance 25.0 %"),
        "{md}"
    );

    // Second call: dense row from the cache; no agent run → a "not run" row with the reason.
    let mut cmd = secateur();
    args(&mut cmd, Some(&dir.path().join("missing")));
    let out = cmd.args(["--methods", "wanda"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("dense: reusing"), "{stderr}");
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows[2]["status"].as_str().unwrap().starts_with("not run:"),
        "{}",
        rows[2]
    );

    // Third call: no --agent-run → compare runs the loop itself (the fixture's prune
    // config, with compare's model, target and calibration) and scores its masks.
    let mut cmd = secateur();
    args(&mut cmd, None);
    let out = cmd
        .args(["--methods", "wanda", "--agent-config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let agent = &table["rows"][2];
    assert_eq!(agent["method"], "agent");
    assert_eq!(agent["status"], "ok", "{agent}");
    let s = agent["sparsity"].as_f64().unwrap();
    assert!(
        (s - 0.5).abs() <= 0.01,
        "agent loop run by compare reached {s}"
    );
    assert!(agent["prune_seconds"].as_f64().unwrap() > 0.0, "{agent}");
    let agent_runs: Vec<_> = std::fs::read_dir(out_dir.join("agent-runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(agent_runs.len(), 1, "{agent_runs:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent_runs[0].join("report.json")).unwrap()).unwrap();
    let final_sparsity = report["table4"]["final_sparsity"].as_f64().unwrap();
    assert!((final_sparsity - s).abs() < 1e-9, "{final_sparsity} vs {s}");

    // --no-agent leaves the row out, saying so.
    let mut cmd = secateur();
    args(&mut cmd, None);
    let out = cmd
        .args(["--methods", "wanda", "--no-agent"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(table["rows"][2]["status"], "not run: --no-agent");
}

#[test]
fn compare_rejects_bad_arguments() {
    let out = secateur()
        .args(["compare", "--sparsity", "1.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sparsity 1.5"));
    let out = secateur()
        .args(["compare", "--methods", "sgd"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown pruning method `sgd`"));
}

/// `--sweep`: one comparison per target (its own folder), then the trade-off of every
/// method as sweep.{json,md,png}; the agent loop runs at each target.
#[test]
fn sweep_compares_at_every_target() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 3, 16, 48).unwrap();
    let cfg_path = dir.path().join("tiny.toml");
    let cfg = fixture_config(&fx, &dir.path().join("unused"));
    std::fs::write(&cfg_path, cfg.to_toml_string()).unwrap();
    let qa = dir.path().join("qa.jsonl");
    let qa_lines: String = (0..6)
        .map(|i| {
            format!(
                "{{\"question\": \"w{} w{}\", \"answer\": [\"w{}\"]}}\n",
                i + 11,
                i + 12,
                i + 20
            )
        })
        .collect();
    std::fs::write(&qa, qa_lines).unwrap();
    let out_dir = dir.path().join("sweep");
    let run = |sweep: &str| {
        secateur()
            .arg("compare")
            .arg(&fx.model_dir)
            .args(["--sweep", sweep, "--methods", "magnitude,wanda"])
            .args([
                "--calib-samples",
                "4",
                "--calib-len",
                "32",
                "--window",
                "48",
            ])
            .arg("--calib")
            .arg(format!("{}:text", fx.calib.display()))
            .arg("--ppl")
            .arg(format!("{}:text", fx.final_text.display()))
            .args(["--max-new-tokens", "4", "--json"])
            .arg("--qa")
            .arg(&qa)
            .arg("--agent-config")
            .arg(&cfg_path)
            .arg("--out")
            .arg(&out_dir)
            .output()
            .unwrap()
    };
    let out = run("0.3,0.5");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let sweep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sweep["targets"], serde_json::json!([0.3, 0.5]));
    assert!(sweep["dense_ppl"].as_f64().unwrap() > 1.0);
    assert!(sweep["dense_qa"].is_number());
    let series = sweep["series"].as_array().unwrap();
    let names: Vec<&str> = series
        .iter()
        .map(|s| s["method"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["magnitude", "wanda", "agent"]);
    for s in series {
        let points = s["points"].as_array().unwrap();
        assert_eq!(points.len(), 2, "{s}");
        for (p, target) in points.iter().zip([0.3, 0.5]) {
            let reached = p["sparsity"].as_f64().unwrap_or_else(|| panic!("{s}"));
            assert!((reached - target).abs() < 0.02, "{s}");
            assert!(p["ppl"].as_f64().unwrap() > 1.0);
            assert!(p["qa"].is_number());
        }
    }
    for target in ["0.30", "0.50"] {
        let point = out_dir.join(format!("sparsity-{target}"));
        let table: serde_json::Value =
            serde_json::from_slice(&std::fs::read(point.join("compare.json")).unwrap()).unwrap();
        assert_eq!(table["rows"].as_array().unwrap().len(), 4);
        assert!(point.join("agent-runs").is_dir());
    }
    assert!(out_dir.join("sweep.md").is_file());
    assert_eq!(
        &std::fs::read(out_dir.join("sweep.png")).unwrap()[..4],
        b"\x89PNG"
    );

    let bad = run("0.3,1.5");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("--sweep 1.5"), "{stderr}");
}
