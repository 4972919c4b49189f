//! Sizes and load times of the exports of a model pruned to 50 % by per-row magnitude
//! (a stand-in for a finished agent run: the formats only see the zeros).
//!
//! `cargo run --release -p export --example measure -- MODEL OUT_DIR`
//!
//! Writes OUT_DIR/{dense-f32, hf-f32, hf-bf16, sparse-f32, sparse-bf16}, then prints per
//! export its weight bytes and the wall time of `model::load_checkpoint` (best of 3,
//! page cache warm), next to the source file's.
//!
//! Measured 2026-11-28 on SmolLM2-135M-Instruct.Q4_1.gguf (2-core CPU, dev profile with
//! optimised dependencies), 106,168,320 prunable weights at 0.5000:
//! source gguf 98,362,432 B / 0.542 s; dense f32 538,090,408 B / 0.345 s; hf f32
//! 538,090,408 B / 0.209 s; hf bf16 269,060,552 B / 0.460 s; sparse f32 339,075,104 B /
//! 1.267 s; sparse bf16 176,213,456 B / 0.884 s. Sparse f32 = 113.4 MB unpruned tensors
//! + 212.3 MB non-zeros + 13.3 MB bitmask: the prunable part takes 0.531 of its dense size.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use export::{export_hf, export_sparse, ExportDtype, ExportOptions};
use kernels::Mask;
use model::{load_checkpoint, Model};

fn dir_bytes(p: &Path) -> u64 {
    if p.is_file() {
        return std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    }
    std::fs::read_dir(p)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn load_seconds(p: &Path) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let ck = load_checkpoint(p).expect("export loads");
            std::hint::black_box(ck.tensors.len());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (model_path, out) = match &args[1..] {
        [m, o] => (PathBuf::from(m), PathBuf::from(o)),
        _ => return Err("usage: measure MODEL OUT_DIR".into()),
    };
    let ck = load_checkpoint(&model_path)?;
    let m = Model::new(&ck.config, &ck.tensors, &Device::Cpu)?;
    let mut masks: HashMap<String, Mask> = HashMap::new();
    for l in m.prunable_layers() {
        let w = &ck.tensors[&format!("{}.weight", l.name)];
        let all = Mask::ones(l.out_features, l.in_features);
        masks.insert(
            l.name.clone(),
            kernels::magnitude_mask_per_row(w, &all, 0.5)?,
        );
    }
    let pruned: usize = masks.values().map(Mask::count_pruned).sum();
    let prunable: usize = masks.values().map(Mask::len).sum();
    println!(
        "{}: {} parameters, {} prunable, {:.4} of them pruned",
        model_path.display(),
        ck.parameter_count(),
        prunable,
        pruned as f64 / prunable as f64
    );
    println!("{:<12} {:>14} {:>10}", "export", "weight bytes", "load s");
    println!(
        "{:<12} {:>14} {:>10.3}",
        "source",
        dir_bytes(&model_path),
        load_seconds(&model_path)
    );
    let opts = |dtype| ExportOptions {
        dtype: Some(dtype),
        force: true,
        ..Default::default()
    };
    let none = HashMap::new();
    let runs: [(&str, bool, bool, ExportDtype); 5] = [
        ("dense-f32", false, false, ExportDtype::F32),
        ("hf-f32", true, false, ExportDtype::F32),
        ("hf-bf16", true, false, ExportDtype::Bf16),
        ("sparse-f32", true, true, ExportDtype::F32),
        ("sparse-bf16", true, true, ExportDtype::Bf16),
    ];
    for (name, masked, sparse, dtype) in runs {
        let dir = out.join(name);
        let ms = if masked { &masks } else { &none };
        let s = if sparse {
            export_sparse(&ck, ms, &dir, &opts(dtype))?
        } else {
            export_hf(&ck, ms, &dir, &opts(dtype))?
        };
        println!(
            "{:<12} {:>14} {:>10.3}",
            name,
            s.weight_bytes,
            load_seconds(&dir)
        );
    }
    Ok(())
}
