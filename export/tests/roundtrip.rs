//! Export round trips on tiny models: HF and sparse exports reload through
//! `model::load_checkpoint` into a model whose logits match the pruned model in memory.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use candle_core::{Device, Tensor};
use export::{export_hf, export_sparse, ExportDtype, ExportError, ExportOptions};
use kernels::Mask;
use model::testing::{random_weights, tiny_config};
use model::{load_checkpoint, Architecture, Checkpoint, Model, SourceFormat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TOKENIZER_JSON: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
  "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "unk_token": "[UNK]",
            "vocab": {"[UNK]": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4, "the": 5, "end": 6}}
}"#;

fn checkpoint(arch: Architecture, source_dtype: &str) -> Checkpoint {
    let config = tiny_config(arch);
    let tensors = random_weights(&config, 7, &Device::Cpu).unwrap();
    let source_dtypes = tensors
        .keys()
        .map(|k| (k.clone(), source_dtype.to_string()))
        .collect();
    Checkpoint {
        path: "memory".into(),
        format: SourceFormat::Safetensors,
        config,
        tensors,
        source_dtypes,
        tokenizer: tokenizers::Tokenizer::from_str(TOKENIZER_JSON).unwrap(),
        chat_template: Some("{% for m in messages %}{{ m.content }}{% endfor %}".into()),
    }
}

/// A random mask keeping about half of each prunable layer.
fn half_masks(ck: &Checkpoint, seed: u64) -> HashMap<String, Mask> {
    let m = Model::new(&ck.config, &ck.tensors, &Device::Cpu).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    m.prunable_layers()
        .into_iter()
        .map(|l| {
            let kept: Vec<bool> = (0..l.out_features * l.in_features)
                .map(|_| rng.random_bool(0.5))
                .collect();
            let mask = Mask::from_bools(l.out_features, l.in_features, &kept).unwrap();
            (l.name, mask)
        })
        .collect()
}

const TOKENS: [u32; 8] = [1, 5, 9, 33, 2, 60, 17, 4];

/// Logits of `ck`'s weights with `masks` set through the engine (the pruned model in memory).
fn pruned_logits(ck: &Checkpoint, masks: &HashMap<String, Mask>) -> Vec<f32> {
    let m = Model::new(&ck.config, &ck.tensors, &Device::Cpu).unwrap();
    for (name, mask) in masks {
        let t = mask
            .to_tensor(candle_core::DType::F32, &Device::Cpu)
            .unwrap();
        m.set_mask(name, Some(&t)).unwrap();
    }
    logits(&m)
}

fn logits(m: &Model) -> Vec<f32> {
    let tokens = Tensor::new(&TOKENS[..], &Device::Cpu)
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

fn reloaded_logits(dir: &Path) -> (Checkpoint, Vec<f32>) {
    let ck = load_checkpoint(dir).unwrap();
    let m = Model::new(&ck.config, &ck.tensors, &Device::Cpu).unwrap();
    let l = logits(&m);
    (ck, l)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn hf_export_reloads_with_the_pruned_logits_for_every_family() {
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Mistral,
    ] {
        let ck = checkpoint(arch, "f32");
        let masks = half_masks(&ck, 3);
        let expected = pruned_logits(&ck, &masks);
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("hf");
        let summary = export_hf(&ck, &masks, &out, &ExportOptions::default()).unwrap();
        assert_eq!(summary.dtype, ExportDtype::F32);
        for f in [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "model.safetensors",
        ] {
            assert!(
                summary.files.contains(&f.to_string()),
                "{arch:?}: {f} in {:?}",
                summary.files
            );
        }
        let (back, got) = reloaded_logits(&out);
        assert_eq!(back.config, ck.config, "{arch:?}");
        assert_eq!(back.chat_template, ck.chat_template);
        assert_eq!(
            back.tokenizer
                .encode("hello world", false)
                .unwrap()
                .get_ids(),
            [3, 4]
        );
        let d = max_abs_diff(&expected, &got);
        assert!(d <= 1e-5, "{arch:?}: max abs diff {d}");
        // The pruned entries are stored as zeros: half of each prunable weight.
        for (layer, mask) in &masks {
            let w: Vec<f32> = back.tensors[&format!("{layer}.weight")]
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let zeros = w.iter().filter(|v| **v == 0.0).count();
            assert_eq!(zeros, mask.count_pruned(), "{arch:?} {layer}");
        }
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["torch_dtype"], "float32");
        assert_eq!(cfg["model_type"], arch.name());
        assert_eq!(cfg["tie_word_embeddings"], ck.config.tie_word_embeddings);
        // Nothing left next to the export.
        let siblings: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(siblings.len(), 1);
    }
}

#[test]
fn sharded_export_writes_an_index_and_loads_the_same() {
    let ck = checkpoint(Architecture::Qwen2, "f32");
    let masks = half_masks(&ck, 4);
    let expected = pruned_logits(&ck, &masks);
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("hf");
    let opts = ExportOptions {
        max_shard_bytes: 8_000,
        ..Default::default()
    };
    let s = export_hf(&ck, &masks, &out, &opts).unwrap();
    let shards: Vec<_> = s
        .files
        .iter()
        .filter(|f| f.starts_with("model-0"))
        .collect();
    assert!(shards.len() > 2, "{:?}", s.files);
    assert!(out.join("model.safetensors.index.json").is_file());
    let (_, got) = reloaded_logits(&out);
    assert!(max_abs_diff(&expected, &got) <= 1e-5);
}

#[test]
fn half_precision_exports_store_the_chosen_dtype() {
    let ck = checkpoint(Architecture::Llama, "bf16");
    let masks = half_masks(&ck, 5);
    let expected = pruned_logits(&ck, &masks);
    let root = tempfile::tempdir().unwrap();
    // Default follows the source (bf16); f16 when chosen.
    for (dtype, name) in [(None, "bf16"), (Some(ExportDtype::F16), "f16")] {
        let out = root.path().join(name);
        let s = export_hf(
            &ck,
            &masks,
            &out,
            &ExportOptions {
                dtype,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.dtype, ExportDtype::parse(name).unwrap());
        let (back, got) = reloaded_logits(&out);
        assert!(back.source_dtypes.values().all(|d| d == name), "{name}");
        // Rounding to 8 (bf16) or 11 (f16) mantissa bits moves the logits a little, not a lot.
        let d = max_abs_diff(&expected, &got);
        assert!(d > 0.0 && d < 0.1, "{name}: {d}");
    }
}

#[test]
fn existing_destination_is_refused_unless_forced() {
    let ck = checkpoint(Architecture::Llama, "f32");
    let masks = half_masks(&ck, 6);
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("hf");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "user data").unwrap();
    let err = export_hf(&ck, &masks, &out, &ExportOptions::default()).unwrap_err();
    assert!(matches!(err, ExportError::Exists(_)), "{err}");
    assert!(err.to_string().contains("--force"));
    assert!(
        out.join("keep.txt").is_file(),
        "refusal must not touch the directory"
    );
    let opts = ExportOptions {
        force: true,
        ..Default::default()
    };
    export_hf(&ck, &masks, &out, &opts).unwrap();
    assert!(!out.join("keep.txt").exists());
    assert!(out.join("model.safetensors").is_file());
}

#[test]
fn a_bad_mask_fails_without_leaving_a_directory() {
    let ck = checkpoint(Architecture::Llama, "f32");
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("hf");
    let mut masks = half_masks(&ck, 7);
    masks.insert("model.layers.0.mlp.up_proj".into(), Mask::ones(3, 3));
    let err = export_hf(&ck, &masks, &out, &ExportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("up_proj"), "{err}");
    let mut masks = half_masks(&ck, 7);
    masks.insert("model.layers.9.nope".into(), Mask::ones(3, 3));
    let err = export_sparse(&ck, &masks, &out, &ExportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("model.layers.9.nope"), "{err}");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

#[test]
fn sparse_export_reloads_with_identical_logits_and_shrinks() {
    for arch in [Architecture::Llama, Architecture::Qwen2] {
        let ck = checkpoint(arch, "f32");
        let masks = half_masks(&ck, 8);
        let expected = pruned_logits(&ck, &masks);
        let root = tempfile::tempdir().unwrap();
        let (hf, sp) = (root.path().join("hf"), root.path().join("sparse"));
        let h = export_hf(&ck, &masks, &hf, &ExportOptions::default()).unwrap();
        let s = export_sparse(&ck, &masks, &sp, &ExportOptions::default()).unwrap();
        let (back, got) = reloaded_logits(&sp);
        assert_eq!(back.format, SourceFormat::Sparse);
        assert_eq!(
            expected, got,
            "{arch:?}: sparse logits must be bit-identical"
        );
        let hf_back = load_checkpoint(&hf).unwrap();
        for (name, t) in &hf_back.tensors {
            let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = back.tensors[name].flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a, b, "{name}");
        }
        // Expected size: dense tensors as they are; each pruned weight as nnz f32 values
        // plus one bit per weight (rows · ceil(cols/8) bytes) plus its 16-byte shape.
        let mut expected_bytes = 0usize;
        for (name, t) in &ck.tensors {
            let layer = name.trim_end_matches(".weight");
            expected_bytes += match masks.get(layer) {
                Some(m) => 4 * m.count_kept() + m.rows() * m.cols().div_ceil(8) + 16,
                None => 4 * t.elem_count(),
            };
        }
        let header = s.weight_bytes as usize - expected_bytes;
        assert!(
            header < 12_000,
            "{arch:?}: {} bytes vs {expected_bytes} of data",
            s.weight_bytes
        );
        assert!(
            s.weight_bytes < h.weight_bytes,
            "{} vs {}",
            s.weight_bytes,
            h.weight_bytes
        );
    }
}

#[test]
fn sparse_file_with_a_wrong_version_is_refused() {
    let ck = checkpoint(Architecture::Llama, "f32");
    let masks = half_masks(&ck, 9);
    let root = tempfile::tempdir().unwrap();
    let sp = root.path().join("sparse");
    export_sparse(&ck, &masks, &sp, &ExportOptions::default()).unwrap();
    let path = sp.join(model::load::sparse::SPARSE_FILE);
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let needle = b"\"version\":\"1\"";
    let at = bytes[..8 + n]
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("version in header");
    let mut bad = bytes.clone();
    bad[at + 11] = b'9';
    std::fs::write(&path, bad).unwrap();
    let err = load_checkpoint(&sp)
        .err()
        .expect("version 9 must be refused")
        .to_string();
    assert!(err.contains("version"), "{err}");
}

#[test]
fn masks_file_round_trips_and_rejects_truncation() {
    let ck = checkpoint(Architecture::Llama, "f32");
    let masks = half_masks(&ck, 10);
    // The layout of `protocol::masks_file`.
    let mut bytes = b"SCMK".to_vec();
    bytes.extend((masks.len() as u32).to_le_bytes());
    for (name, m) in &masks {
        let delta = kernels::MaskDelta::between(&Mask::ones(m.rows(), m.cols()), m)
            .unwrap()
            .to_bytes();
        bytes.extend((name.len() as u16).to_le_bytes());
        bytes.extend(name.as_bytes());
        bytes.extend((delta.len() as u32).to_le_bytes());
        bytes.extend(delta);
    }
    let back = export::read_masks_file(&bytes).unwrap();
    assert_eq!(back.len(), masks.len());
    for (name, m) in &masks {
        assert_eq!(back[name].to_bools(), m.to_bools(), "{name}");
    }
    let err = export::read_masks_file(&bytes[..bytes.len() - 3]).unwrap_err();
    assert!(err.to_string().contains("masks"), "{err}");
    assert!(export::read_masks_file(b"XXXX").is_err());
}
