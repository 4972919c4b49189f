//! `--format gguf`: a tiny llama GGUF (q/k rows in llama.cpp's order) is pruned,
//! exported and read back by our loader. f32 sources round-trip exactly; q8_0 keeps
//! pruned zeros exact; q4_1 (affine) keeps them within a quantisation step.

// The GGUF fixture writers of the model crate's loader tests (written independently of
// the loader: converter permutation, llama.cpp names).
#[path = "../../model/tests/load_support/mod.rs"]
mod load_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use export::{export_gguf, ExportDtype, ExportError, ExportOptions};
use kernels::Mask;
use load_support::{gguf_metadata, gguf_tensors, hf_weights, values, write_gguf, Spec};
use model::{load_checkpoint, Checkpoint, Model};

fn fixture(dir: &Path, dtype: GgmlDType) -> PathBuf {
    let spec = Spec::llama();
    let hf = hf_weights(&spec, 3);
    let path = dir.join(format!("tiny-{dtype:?}.gguf"));
    write_gguf(
        &path,
        &gguf_metadata(&spec),
        &gguf_tensors(&spec, &hf, dtype),
    );
    path
}

/// 50 % per-row magnitude masks on every prunable layer.
fn masks(ckpt: &Checkpoint) -> HashMap<String, Mask> {
    let m = Model::new(&ckpt.config, &ckpt.tensors, &Device::Cpu).unwrap();
    m.prunable_layers()
        .into_iter()
        .map(|l| {
            let w = &ckpt.tensors[&format!("{}.weight", l.name)];
            let ones = Mask::ones(l.out_features, l.in_features);
            let mask = kernels::magnitude_mask_per_row(w, &ones, 0.5).unwrap();
            (l.name, mask)
        })
        .collect()
}

fn logits(ckpt_tensors: &HashMap<String, Tensor>, ckpt: &Checkpoint) -> Tensor {
    let m = Model::new(&ckpt.config, ckpt_tensors, &Device::Cpu).unwrap();
    let tokens = Tensor::new(&[[1u32, 7, 9, 12, 3, 30]], &Device::Cpu).unwrap();
    m.forward(&tokens).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Export, reload, and return (pruned source in memory, reloaded export, masks).
fn round_trip(
    dtype: GgmlDType,
) -> (
    Checkpoint,
    HashMap<String, Tensor>,
    Checkpoint,
    HashMap<String, Mask>,
) {
    let dir = tempfile::tempdir().unwrap();
    let src = load_checkpoint(&fixture(dir.path(), dtype)).unwrap();
    let masks = masks(&src);
    let out = dir.path().join("out");
    let summary = export_gguf(&src, &masks, &out, &ExportOptions::default()).unwrap();
    assert_eq!(summary.files, vec![export::gguf::GGUF_FILE.to_string()]);
    let back = load_checkpoint(&out.join(export::gguf::GGUF_FILE)).unwrap();
    let pruned = export::apply_masks(&src.tensors, &masks).unwrap();
    (src, pruned, back, masks)
}

#[test]
fn f32_gguf_round_trips_the_pruned_model_exactly() {
    let (src, pruned, back, masks) = round_trip(GgmlDType::F32);
    assert_eq!(back.config, src.config);
    assert_eq!(back.chat_template, src.chat_template);
    assert_eq!(back.source_dtypes, src.source_dtypes);
    for (name, t) in &pruned {
        assert_eq!(max_abs(&back.tensors[name], t), 0.0, "{name}");
    }
    // q/k went back into llama.cpp's row order: the loader's un-permutation gives the
    // same logits as the pruned model in memory.
    let d = max_abs(&logits(&back.tensors, &back), &logits(&pruned, &src));
    assert!(d <= 1e-5, "{d}");
    let dense = max_abs(&logits(&src.tensors, &src), &logits(&pruned, &src));
    assert!(dense > 1e-3, "the masks changed nothing ({dense})");
    assert_eq!(masks.len(), 2 * 7);
}

#[test]
fn q8_0_keeps_pruned_zeros_exact_and_copies_other_tensors() {
    let (src, pruned, back, masks) = round_trip(GgmlDType::Q8_0);
    for (layer, mask) in &masks {
        let name = format!("{layer}.weight");
        let w = values(&back.tensors[&name]);
        let keep = mask.to_bools();
        assert!(
            w.iter().zip(&keep).all(|(v, k)| *k || *v == 0.0),
            "{name}: a pruned weight is not 0"
        );
        let err = load_support::rel_err(&back.tensors[&name], &pruned[&name]);
        assert!(err < 0.01, "{name}: {err}");
    }
    // Unmasked tensors (embedding, norms) are copied as stored: dequantised values equal.
    for name in ["model.embed_tokens.weight", "model.norm.weight"] {
        assert_eq!(
            max_abs(&back.tensors[name], &src.tensors[name]),
            0.0,
            "{name}"
        );
    }
    assert_eq!(
        back.source_dtypes["model.layers.0.mlp.up_proj.weight"],
        "q8_0"
    );
}

#[test]
fn q4_1_keeps_pruned_weights_within_a_quantisation_step() {
    let (_, pruned, back, masks) = round_trip(GgmlDType::Q4_1);
    for (layer, mask) in &masks {
        let name = format!("{layer}.weight");
        let w = values(&back.tensors[&name]);
        let keep = mask.to_bools();
        let mean = |kept: bool| {
            let v: Vec<f32> = w
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k == kept)
                .map(|(v, _)| v.abs())
                .collect();
            v.iter().sum::<f32>() / v.len() as f32
        };
        // Affine blocks cannot always hit 0, but pruned weights stay far below kept ones.
        assert!(
            mean(false) < 0.15 * mean(true),
            "{name}: {} vs {}",
            mean(false),
            mean(true)
        );
        let err = load_support::rel_err(&back.tensors[&name], &pruned[&name]);
        assert!(err < 0.2, "{name}: {err}");
    }
    assert_eq!(
        back.source_dtypes["model.layers.0.mlp.up_proj.weight"],
        "q4_1"
    );
}

#[test]
fn non_gguf_sources_and_dtype_choices_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = load_checkpoint(&fixture(dir.path(), GgmlDType::F32)).unwrap();
    let masks = masks(&src);
    let out = dir.path().join("out");
    let with_dtype = ExportOptions {
        dtype: Some(ExportDtype::F16),
        ..ExportOptions::default()
    };
    let err = export_gguf(&src, &masks, &out, &with_dtype).unwrap_err();
    assert!(
        matches!(err, ExportError::Unsupported(ref m) if m.contains("--dtype")),
        "{err}"
    );
    src.format = model::SourceFormat::Safetensors;
    let err = export_gguf(&src, &masks, &out, &ExportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("is not one"), "{err}");
    assert!(!out.exists(), "no partial output");
}
