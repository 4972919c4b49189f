//! `secateur prune --planner / --planner-model`: bad values fail at once with a message
//! that names what is wrong, before any model is loaded or run folder written.

use std::path::Path;
use std::process::{Command, Output};

fn secateur(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_secateur"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("secateur binary runs")
}

fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks `{n}`: {stderr}");
    }
}

/// A folder where the default target model path exists (the checks under test run
/// before it is read, so any bytes do).
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("assets/models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("SmolLM2-135M-Instruct.Q4_1.gguf"), b"unused").unwrap();
    dir
}

#[test]
fn unknown_planner_lists_the_backends() {
    let dir = workdir();
    let out = secateur(&["prune", "--planner", "llama"], dir.path());
    fails_with(
        &out,
        &["llama", "heuristic, local, openai, gemini or anthropic"],
    );
}

#[test]
fn missing_local_planner_model_fails_before_the_run_starts() {
    let dir = workdir();
    let out = secateur(
        &[
            "prune",
            "--planner",
            "local",
            "--planner-model",
            "nowhere.gguf",
            "--runs-dir",
            "r",
        ],
        dir.path(),
    );
    fails_with(&out, &["nowhere.gguf", "local planner model not found"]);
    // Without --planner-model the default planner model is used (absent here).
    let out = secateur(
        &["prune", "--planner", "local", "--runs-dir", "r"],
        dir.path(),
    );
    fails_with(
        &out,
        &[
            "assets/models/Qwen2.5-Coder-0.5B-Instruct.gguf",
            "not found",
        ],
    );
    assert!(!dir.path().join("r").exists(), "no run folder was written");
}

#[test]
fn hosted_planner_without_its_settings_is_a_config_error() {
    let dir = workdir();
    // gemini needs a model and the NAME of the key's variable: the config check says so.
    let out = secateur(
        &["prune", "--planner", "gemini", "--runs-dir", "r"],
        dir.path(),
    );
    fails_with(&out, &["planner.model", "planner.api_key_env"]);
}
