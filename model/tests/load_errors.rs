//! Bad input gives a `ModelError` naming the file and the tensor or field, never a
//! panic: truncated and byte-flipped files, unknown architectures, missing tokenizer,
//! wrong shapes, missing fields and tensors. Fixtures are broken by the test itself.

mod load_support;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::GgmlDType;
use candle_core::DType;
use load_support::*;
use model::{load_checkpoint, ModelError};

fn gguf_fixture(
    dir: &Path,
    edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<(String, candle_core::quantized::QTensor)>),
) -> PathBuf {
    let spec = Spec::llama();
    let mut md = gguf_metadata(&spec);
    let mut ts = gguf_tensors(&spec, &hf_weights(&spec, 1), GgmlDType::Q8_0);
    edit(&mut md, &mut ts);
    let path = dir.join("m.gguf");
    write_gguf(&path, &md, &ts);
    path
}

fn hf_fixture(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let spec = Spec::llama();
    let mut cfg = hf_config(&spec);
    edit(&mut cfg);
    write_hf_dir(dir, &cfg, &hf_weights(&spec, 1), DType::BF16, 2);
    dir.to_path_buf()
}

fn load_err(path: &Path) -> ModelError {
    match load_checkpoint(path) {
        Ok(_) => panic!("{} loaded although broken", path.display()),
        Err(e) => e,
    }
}

/// The message names the file and carries every `needle`.
fn assert_names(err: &ModelError, file: &Path, needles: &[&str]) {
    let msg = err.to_string();
    assert!(
        msg.contains(&file.display().to_string()),
        "no file in: {msg}"
    );
    for n in needles {
        assert!(msg.contains(n), "`{n}` missing in: {msg}");
    }
}

#[test]
fn truncated_gguf_names_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = gguf_fixture(dir.path(), |_, _| {});
    let len = std::fs::metadata(&path).unwrap().len();
    // Cut inside the tensor data: the header parses, a tensor read fails.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 500).unwrap();
    let e = load_err(&path);
    assert!(
        matches!(e, ModelError::Malformed { format: "GGUF", .. }),
        "{e:?}"
    );
    assert_names(&e, &path, &["tensor `"]);
    // Cut inside the header.
    f.set_len(40).unwrap();
    let e = load_err(&path);
    assert!(
        matches!(e, ModelError::Malformed { format: "GGUF", .. }),
        "{e:?}"
    );
    assert_names(&e, &path, &[]);
}

#[test]
fn byte_flipped_gguf_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = gguf_fixture(dir.path(), |_, _| {});
    let pristine = std::fs::read(&path).unwrap();

    // Magic.
    let mut bytes = pristine.clone();
    bytes[0] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(load_err(&path), ModelError::Malformed { .. }));

    // Tensor count (bytes 8..16): far more tensors than the file can hold.
    let mut bytes = pristine.clone();
    bytes[12] = 0x7f;
    std::fs::write(&path, &bytes).unwrap();
    let e = load_err(&path);
    assert!(matches!(e, ModelError::Malformed { .. }), "{e:?}");

    // Data of an F32 norm: 0xff bytes are a NaN, which the loader must catch.
    let content = gguf_file::Content::read(&mut std::io::Cursor::new(&pristine)).unwrap();
    let info = &content.tensor_infos["blk.1.ffn_norm.weight"];
    let at = (content.tensor_data_offset + info.offset) as usize + 4 * 3;
    let mut bytes = pristine.clone();
    bytes[at..at + 4].copy_from_slice(&[0xff; 4]);
    std::fs::write(&path, &bytes).unwrap();
    let e = load_err(&path);
    assert_names(
        &e,
        &path,
        &["model.layers.1.post_attention_layernorm.weight", "index 3"],
    );
}

#[test]
fn gguf_architecture_fields_tensors_and_tokenizer_errors() {
    let dir = tempfile::tempdir().unwrap();

    let p = gguf_fixture(dir.path(), |md, _| {
        md[0].1 = Value::String("gptneox".into())
    });
    let e = load_err(&p);
    assert!(
        matches!(e, ModelError::UnsupportedArchitecture { .. }),
        "{e:?}"
    );
    assert_names(&e, &p, &["gptneox"]);

    let p = gguf_fixture(dir.path(), |md, _| {
        md.retain(|(k, _)| k != "llama.embedding_length")
    });
    let e = load_err(&p);
    assert!(matches!(e, ModelError::Field { .. }), "{e:?}");
    assert_names(&e, &p, &["llama.embedding_length"]);

    let p = gguf_fixture(dir.path(), |md, _| {
        md.iter_mut()
            .find(|(k, _)| k == "llama.block_count")
            .unwrap()
            .1 = Value::String("two".into())
    });
    assert_names(&load_err(&p), &p, &["llama.block_count"]);

    let p = gguf_fixture(dir.path(), |md, _| {
        md.retain(|(k, _)| !k.starts_with("tokenizer.ggml"))
    });
    let e = load_err(&p);
    assert!(matches!(e, ModelError::Tokenizer { .. }), "{e:?}");
    assert_names(&e, &p, &["tokenizer"]);

    let p = gguf_fixture(dir.path(), |_, ts| {
        ts.retain(|(n, _)| n != "blk.1.ffn_up.weight")
    });
    let e = load_err(&p);
    assert!(matches!(e, ModelError::MissingTensor { .. }), "{e:?}");
    assert_names(&e, &p, &["model.layers.1.mlp.up_proj.weight"]);

    // ffn_down stored transposed: [hidden, inter] expected, [inter, hidden] found.
    let p = gguf_fixture(dir.path(), |_, ts| {
        let t = &mut ts
            .iter_mut()
            .find(|(n, _)| n == "blk.0.ffn_down.weight")
            .unwrap()
            .1;
        let wrong = Lcg::new(3).tensor(&[96, 64], 1.0, 0.0);
        *t = candle_core::quantized::QTensor::quantize(&wrong, GgmlDType::Q8_0).unwrap();
    });
    let e = load_err(&p);
    match &e {
        ModelError::ShapeMismatch {
            expected, actual, ..
        } => {
            assert_eq!(
                (expected.as_slice(), actual.as_slice()),
                (&[64, 96][..], &[96, 64][..])
            )
        }
        other => panic!("{other:?}"),
    }
    assert_names(&e, &p, &["model.layers.0.mlp.down_proj.weight"]);

    // A q_proj whose rows do not split into heads fails as a shape error, not a panic.
    let p = gguf_fixture(dir.path(), |_, ts| {
        let t = &mut ts
            .iter_mut()
            .find(|(n, _)| n == "blk.0.attn_q.weight")
            .unwrap()
            .1;
        let wrong = Lcg::new(3).tensor(&[63, 64], 1.0, 0.0);
        *t = candle_core::quantized::QTensor::quantize(&wrong, GgmlDType::Q8_0).unwrap();
    });
    let e = load_err(&p);
    assert!(matches!(e, ModelError::ShapeMismatch { .. }), "{e:?}");
    assert_names(&e, &p, &["model.layers.0.self_attn.q_proj.weight"]);

    let p = gguf_fixture(dir.path(), |_, ts| {
        let t = candle_core::quantized::QTensor::quantize(
            &Lcg::new(1).tensor(&[8], 1.0, 0.0),
            GgmlDType::F32,
        )
        .unwrap();
        ts.push(("rope_freqs.weight".into(), t));
    });
    let e = load_err(&p);
    assert!(matches!(e, ModelError::UnsupportedTensor { .. }), "{e:?}");
    assert_names(&e, &p, &["rope_freqs.weight", "RoPE"]);
}

#[test]
fn broken_safetensors_name_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let root = hf_fixture(dir.path(), |_| {});
    let shard = root.join("model-00002-of-00002.safetensors");
    let pristine = std::fs::read(&shard).unwrap();

    std::fs::write(&shard, &pristine[..pristine.len() - 100]).unwrap();
    let e = load_err(&root);
    assert!(
        matches!(
            e,
            ModelError::Malformed {
                format: "safetensors",
                ..
            }
        ),
        "{e:?}"
    );
    assert_names(&e, &shard, &[]);

    // Flip bytes inside the JSON header (after the 8-byte length).
    let mut bytes = pristine.clone();
    for b in &mut bytes[9..14] {
        *b ^= 0x5a;
    }
    std::fs::write(&shard, &bytes).unwrap();
    let e = load_err(&root);
    assert!(matches!(e, ModelError::Malformed { .. }), "{e:?}");
    assert_names(&e, &shard, &[]);

    // Header length pointing past the end of the file.
    let mut bytes = pristine.clone();
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&shard, &bytes).unwrap();
    assert_names(&load_err(&root), &shard, &[]);

    // A shard listed in the index that does not exist.
    std::fs::remove_file(&shard).unwrap();
    let e = load_err(&root);
    assert!(matches!(e, ModelError::Io { .. }), "{e:?}");
    assert_names(&e, &shard, &[]);
}

#[test]
fn hf_config_tokenizer_and_tensor_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    let p = hf_fixture(&root.join("a"), |c| {
        c.as_object_mut().unwrap().remove("hidden_size");
    });
    let e = load_err(&p);
    assert!(matches!(e, ModelError::Field { .. }), "{e:?}");
    assert_names(&e, &p.join("config.json"), &["hidden_size"]);

    let p = hf_fixture(&root.join("b"), |c| c["model_type"] = "gpt_neox".into());
    let e = load_err(&p);
    assert!(
        matches!(e, ModelError::UnsupportedArchitecture { .. }),
        "{e:?}"
    );
    assert_names(&e, &p, &["gpt_neox"]);

    let p = hf_fixture(&root.join("c"), |c| c["num_attention_heads"] = (-4).into());
    assert_names(&load_err(&p), &p, &["num_attention_heads"]);

    let p = hf_fixture(&root.join("d"), |c| {
        c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0})
    });
    assert_names(&load_err(&p), &p, &["rope_scaling"]);
    let p = hf_fixture(&root.join("d2"), |c| {
        c["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "rope_theta": 1e6})
    });
    assert_names(&load_err(&p), &p, &["rope_parameters", "yarn"]);

    // Config disagrees with the weights: tensors are 64 wide, config says 32.
    let p = hf_fixture(&root.join("e"), |c| c["intermediate_size"] = 32.into());
    let e = load_err(&p);
    assert!(matches!(e, ModelError::ShapeMismatch { .. }), "{e:?}");
    assert_names(&e, &p, &["mlp.gate_proj.weight"]);

    // Untied config without an lm_head tensor.
    let p = hf_fixture(&root.join("f"), |c| c["tie_word_embeddings"] = false.into());
    let e = load_err(&p);
    assert!(matches!(e, ModelError::MissingTensor { .. }), "{e:?}");
    assert_names(&e, &p, &["lm_head.weight"]);

    let p = hf_fixture(&root.join("g"), |_| {});
    std::fs::remove_file(p.join("tokenizer.json")).unwrap();
    let e = load_err(&p);
    assert!(matches!(e, ModelError::Tokenizer { .. }), "{e:?}");
    assert_names(&e, &p.join("tokenizer.json"), &[]);
    std::fs::write(p.join("tokenizer.json"), "{\"model\": 17").unwrap();
    assert!(matches!(load_err(&p), ModelError::Tokenizer { .. }));

    let p = hf_fixture(&root.join("h"), |_| {});
    std::fs::write(p.join("config.json"), "{\"model_type\": \"llama\",").unwrap();
    let e = load_err(&p);
    assert!(
        matches!(e, ModelError::Malformed { format: "JSON", .. }),
        "{e:?}"
    );

    let p = hf_fixture(&root.join("i"), |_| {});
    std::fs::write(p.join("tokenizer_config.json"), "{\"chat_template\": 3}").unwrap();
    assert_names(
        &load_err(&p),
        &p.join("tokenizer_config.json"),
        &["chat_template"],
    );

    // Integer tensors have no place in the weights.
    let p = root.join("j");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("config.json"), hf_config(&Spec::llama()).to_string()).unwrap();
    let ints = candle_core::Tensor::new(&[1i64, 2], &candle_core::Device::Cpu).unwrap();
    let map = std::collections::HashMap::from([("model.step".to_string(), ints)]);
    candle_core::safetensors::save(&map, p.join("model.safetensors")).unwrap();
    let e = load_err(&p);
    assert!(matches!(e, ModelError::UnsupportedDtype { .. }), "{e:?}");
    assert_names(&e, &p.join("model.safetensors"), &["model.step"]);
}

#[test]
fn paths_that_are_not_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_err(&dir.path().join("absent.gguf"));
    assert!(matches!(e, ModelError::Io { .. }), "{e:?}");
    let e = load_err(dir.path());
    assert_names(&e, &dir.path().join("config.json"), &[]);
    let txt = dir.path().join("notes.txt");
    std::fs::write(&txt, "hello").unwrap();
    assert!(matches!(load_err(&txt), ModelError::Malformed { .. }));
    // A directory with config.json but no weights.
    std::fs::write(
        dir.path().join("config.json"),
        hf_config(&Spec::llama()).to_string(),
    )
    .unwrap();
    assert!(matches!(load_err(dir.path()), ModelError::Io { .. }));
}
