//! `secateur export` on a real run of the tiny fixture: the HF and sparse exports reload
//! through `model::load_checkpoint` with the logits of the pruned model in memory (the
//! fixture model with the run's `masks.bin` applied), and bad input fails cleanly.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use actors::testing::{fixture_config, write_fixture};
use candle_core::{DType, Device, Tensor};
use model::{load_checkpoint, Model, SourceFormat};

fn secateur() -> Command {
    Command::new(env!("CARGO_BIN_EXE_secateur"))
}

fn logits(ck: &model::Checkpoint, masks: &HashMap<String, kernels::Mask>) -> Vec<f32> {
    let m = Model::new(&ck.config, &ck.tensors, &Device::Cpu).unwrap();
    for (name, mask) in masks {
        m.set_mask(
            name,
            Some(&mask.to_tensor(DType::F32, &Device::Cpu).unwrap()),
        )
        .unwrap();
    }
    let tokens = Tensor::new(&[1u32, 5, 9, 33, 2, 60, 17, 4][..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&tokens)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn export(run: &Path, format: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    secateur()
        .arg("export")
        .arg(run)
        .args(["--format", format, "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn exports_of_a_pruned_run_reload_with_the_pruned_logits() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), 7, 24, 48).unwrap();
    let runs = dir.path().join("runs");
    let cfg_path = dir.path().join("tiny.toml");
    std::fs::write(&cfg_path, fixture_config(&fx, &runs).to_toml_string()).unwrap();
    let out = secateur()
        .args(["prune", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();

    let masks = export::read_masks_file(&std::fs::read(run.join("masks.bin")).unwrap()).unwrap();
    let pruned: usize = masks.values().map(kernels::Mask::count_pruned).sum();
    assert!(pruned > 0, "the run pruned something");
    let dense = load_checkpoint(&fx.model_dir).unwrap();
    let expected = logits(&dense, &masks);

    let hf = dir.path().join("export-hf");
    let o = export(&run, "hf", &hf, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let back = load_checkpoint(&hf).unwrap();
    let got = logits(&back, &HashMap::new());
    let d = expected
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d <= 1e-5, "hf export: max abs diff {d}");
    let zeros: usize = masks
        .keys()
        .map(|l| {
            let w: Vec<f32> = back.tensors[&format!("{l}.weight")]
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            w.iter().filter(|v| **v == 0.0).count()
        })
        .sum();
    assert_eq!(zeros, pruned);

    let sparse = dir.path().join("export-sparse");
    let o = export(&run, "sparse", &sparse, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let back = load_checkpoint(&sparse).unwrap();
    assert_eq!(back.format, SourceFormat::Sparse);
    assert_eq!(
        logits(&back, &HashMap::new()),
        got,
        "sparse = hf export, bit for bit"
    );

    // The fixture is an HF directory: --format gguf says why it cannot, and writes nothing.
    let gguf = dir.path().join("export-gguf");
    let o = export(&run, "gguf", &gguf, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("re-quantises a GGUF source"), "{err}");
    assert!(!gguf.exists());

    // The destination exists now: refused without --force, replaced with it.
    let o = export(&run, "hf", &hf, &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    let o = export(&run, "hf", &hf, &["--force", "--dtype", "bf16"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = std::fs::read_to_string(hf.join("config.json")).unwrap();
    assert!(cfg.contains("\"bfloat16\""), "{cfg}");

    // By id under --runs-dir, and a bad dtype.
    let id = run.file_name().unwrap().to_str().unwrap();
    let o = secateur()
        .args(["export", id, "--runs-dir"])
        .arg(&runs)
        .arg("--out")
        .arg(dir.path().join("by-id"))
        .args(["--dtype", "int3"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("--dtype `int3`"));
    assert!(!dir.path().join("by-id").exists());
}

#[test]
fn unknown_and_uncommitted_runs_are_refused_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = secateur()
        .args(["export", "no-such-run", "--runs-dir"])
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown run `no-such-run`"));

    // A run recorded in the database but without any iteration.
    let fx = write_fixture(dir.path(), 7, 24, 48).unwrap();
    let runs = dir.path().join("runs");
    let cfg = fixture_config(&fx, &runs);
    let run_dir = runs.join("empty-run");
    let store = actors::store::Store::open(&actors::folder::db_dir(&run_dir)).unwrap();
    let meta = protocol::RunMeta {
        run_id: "empty-run".into(),
        config_toml: cfg.to_toml_string(),
        created_unix: 0,
        baseline_ppl: 10.0,
        layers: vec![],
        baseline_probe: None,
    };
    let status = protocol::RunStatus {
        state: protocol::RunState::Failed,
        iteration: 0,
        stored_iterations: 0,
        reason: Some("test".into()),
        stop_reason: None,
    };
    store.create_run(&meta, &status).unwrap();
    drop(store);
    let o = export(&run_dir, "sparse", &out, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no committed iteration"), "{err}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".secateur-export"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
