//! GGUF loading on fixtures written by the test: every storage type dequantises to
//! exactly what candle's `QTensor::dequantize` gives, within a per-type bound of the
//! original weights; names map to HF; llama q/k rows come back in HF order, which a
//! forward pass with HF RoPE confirms against candle's own GGUF llama.

mod load_support;

use std::collections::HashMap;

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use load_support::*;
use model::{load_checkpoint, Architecture, ChatMessage, ChatTemplate, SourceFormat};

/// (storage type, name in `source_dtypes`, bound on ‖deq − w‖/‖w‖ for uniform weights).
const TYPES: [(GgmlDType, &str, f32); 13] = [
    // Bounds are about twice the error measured on these weights (uniform in [-1, 1)).
    (GgmlDType::F32, "f32", 0.0),
    (GgmlDType::F16, "f16", 4e-4),
    (GgmlDType::BF16, "bf16", 3e-3),
    (GgmlDType::Q8_0, "q8_0", 8e-3),
    (GgmlDType::Q6K, "q6_k", 0.025),
    (GgmlDType::Q5_0, "q5_0", 0.05),
    (GgmlDType::Q5_1, "q5_1", 0.05),
    (GgmlDType::Q5K, "q5_k", 0.05),
    (GgmlDType::Q4_0, "q4_0", 0.1),
    (GgmlDType::Q4_1, "q4_1", 0.1),
    (GgmlDType::Q4K, "q4_k", 0.1),
    (GgmlDType::Q3K, "q3_k", 0.2),
    (GgmlDType::Q2K, "q2_k", 0.4),
];

#[test]
fn every_storage_type_dequantises_like_candle_and_close_to_the_weights() {
    let spec = Spec::llama_k();
    let hf = hf_weights(&spec, 7);
    let dir = tempfile::tempdir().unwrap();
    for (dtype, dtype_name, bound) in TYPES {
        let qts = gguf_tensors(&spec, &hf, dtype);
        let path = dir.path().join(format!("{dtype_name}.gguf"));
        write_gguf(&path, &gguf_metadata(&spec), &qts);
        let ck = load_checkpoint(&path).unwrap();
        assert_eq!(ck.format, SourceFormat::Gguf);
        assert_eq!(ck.tensors.len(), hf.len());
        for (gname, qt) in &qts {
            let hf_name = hf
                .keys()
                .find(|n| gguf_name(n) == *gname)
                .expect("fixture name");
            let loaded = &ck.tensors[hf_name];
            let expected_dtype = if qt.rank() == 2 { dtype_name } else { "f32" };
            assert_eq!(ck.source_dtypes[hf_name], expected_dtype, "{hf_name}");
            // Bit-exact against candle's dequantisation of the stored tensor, after
            // putting the loaded q/k rows back into GGUF order with the converter's permute.
            let mut as_stored = loaded.clone();
            if hf_name.contains(".q_proj.") {
                as_stored = converter_permute(loaded, spec.heads);
            } else if hf_name.contains(".k_proj.") {
                as_stored = converter_permute(loaded, spec.kv_heads);
            }
            let candle_deq = qt.dequantize(&Device::Cpu).unwrap();
            assert_eq!(as_stored.dims(), candle_deq.dims(), "{hf_name}");
            let (a, b) = (values(&as_stored), values(&candle_deq));
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{dtype_name} {hf_name}: not bit-exact with QTensor::dequantize"
            );
            // Close to the original HF weights (this also checks the unpermute).
            let err = rel_err(loaded, &hf[hf_name]);
            let b = if qt.rank() == 2 { bound } else { 0.0 };
            assert!(
                err <= b,
                "{dtype_name} {hf_name}: relative error {err} > {b}"
            );
        }
    }
}

#[test]
fn quantisation_error_bounds_are_not_vacuous() {
    // The bounds above must separate the types: a 4-bit type fails the 8-bit bound.
    let spec = Spec::llama_k();
    let w = &hf_weights(&spec, 3)["model.layers.0.mlp.up_proj.weight"];
    let err = |dt| {
        let q = candle_core::quantized::QTensor::quantize(w, dt).unwrap();
        rel_err(&q.dequantize(&Device::Cpu).unwrap(), w)
    };
    assert!(err(GgmlDType::Q4_0) > 0.01);
    assert!(err(GgmlDType::Q8_0) > 0.0);
    assert!(err(GgmlDType::Q2K) > err(GgmlDType::Q6K));
}

#[test]
fn llama_config_names_and_tokenizer_come_from_metadata() {
    let spec = Spec::llama();
    let hf = hf_weights(&spec, 11);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(
        &path,
        &gguf_metadata(&spec),
        &gguf_tensors(&spec, &hf, GgmlDType::F32),
    );
    let ck = load_checkpoint(&path).unwrap();
    let c = &ck.config;
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(
        (
            c.vocab_size,
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers
        ),
        (32, 64, 96, 2)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (4, 2, 16)
    );
    assert_eq!((c.rms_norm_eps as f32, c.rope_theta), (1e-5, 10_000.0));
    assert_eq!(c.max_position_embeddings, 256);
    assert!(c.tie_word_embeddings && !c.attention_bias && !c.qk_norm);
    assert_eq!((c.bos_token_id, c.eos_token_id), (Some(1), Some(2)));
    // F32 storage: loaded tensors equal the HF originals exactly, q/k included.
    let mut names: Vec<_> = ck.tensors.keys().cloned().collect();
    names.sort();
    assert_eq!(names, hf.keys().cloned().collect::<Vec<_>>());
    for (name, t) in &hf {
        assert_eq!(values(&ck.tensors[name]), values(t), "{name}");
    }
    assert_eq!(
        ck.parameter_count(),
        hf.values().map(|t| t.elem_count()).sum::<usize>()
    );
    let summary = ck.tensor_summary();
    assert_eq!(summary[0].name, "model.embed_tokens.weight");
    assert_eq!(summary[1].name, "model.layers.0.input_layernorm.weight");
    assert_eq!(summary[2].name, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(summary[2].shape, vec![64, 64]);
    assert_eq!(summary.last().unwrap().name, "model.norm.weight");

    // Byte-level BPE from the GGUF vocabulary, without a spurious prefix space.
    let enc = ck.tokenizer.encode("ab a", false).unwrap();
    assert_eq!(enc.get_tokens(), ["ab", "Ġa"]);
    assert_eq!(ck.tokenizer.decode(enc.get_ids(), false).unwrap(), "ab a");
    let chat = ChatTemplate::for_checkpoint(&ck).unwrap().unwrap();
    assert_eq!(
        chat.render(&[ChatMessage::user("ab")]).unwrap(),
        "<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn qwen2_keeps_rows_and_biases_and_unties_lm_head() {
    let spec = Spec::qwen2();
    let hf = hf_weights(&spec, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen.gguf");
    let qts = gguf_tensors(&spec, &hf, GgmlDType::F32);
    assert!(qts.iter().any(|(n, _)| n == "blk.1.attn_q.bias"));
    write_gguf(&path, &gguf_metadata(&spec), &qts);
    let ck = load_checkpoint(&path).unwrap();
    assert_eq!(ck.config.architecture, Architecture::Qwen2);
    assert!(ck.config.attention_bias && !ck.config.tie_word_embeddings);
    for (name, t) in &hf {
        assert_eq!(values(&ck.tensors[name]), values(t), "{name}");
    }
    assert!(ck.tensors.contains_key("lm_head.weight"));
}

#[test]
fn qwen3_takes_head_dim_from_key_length_and_maps_qk_norms() {
    let spec = Spec {
        arch: Architecture::Qwen3,
        head_dim: 32,
        ..Spec::llama()
    };
    let hf = hf_weights(&spec, 13);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen3.gguf");
    let qts = gguf_tensors(&spec, &hf, GgmlDType::F32);
    assert!(qts.iter().any(|(n, _)| n == "blk.0.attn_k_norm.weight"));
    write_gguf(&path, &gguf_metadata(&spec), &qts);
    let ck = load_checkpoint(&path).unwrap();
    let c = &ck.config;
    assert_eq!(c.architecture, Architecture::Qwen3);
    assert_eq!(
        c.head_dim, 32,
        "from qwen3.attention.key_length, not 64 / 4"
    );
    assert!(c.qk_norm && !c.attention_bias && c.tie_word_embeddings);
    // Qwen3, like Qwen2, is stored without the llama permutation.
    for (name, t) in &hf {
        assert_eq!(values(&ck.tensors[name]), values(t), "{name}");
    }
}

/// candle's GGUF llama (interleaved RoPE on permuted rows) and candle's HF llama
/// (rotate-half RoPE) on our loaded tensors must compute the same logits. Feeding the
/// HF llama the rows *without* our unpermute must not: that is what the test guards.
#[test]
fn unpermuted_llama_matches_candles_gguf_llama() {
    use candle_transformers::models::{llama, quantized_llama};
    let spec = Spec::llama();
    let hf = hf_weights(&spec, 21);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fwd.gguf");
    let qts = gguf_tensors(&spec, &hf, GgmlDType::F32);
    write_gguf(&path, &gguf_metadata(&spec), &qts);
    let ck = load_checkpoint(&path).unwrap();

    let dev = Device::Cpu;
    let ids = Tensor::new(&[[1u32, 7, 3, 30, 12, 5, 9]], &dev).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut reference = quantized_llama::ModelWeights::from_gguf(content, &mut file, &dev).unwrap();
    let want = reference.forward(&ids, 0).unwrap();

    let cfg = llama::Config {
        hidden_size: spec.hidden,
        intermediate_size: spec.inter,
        vocab_size: spec.vocab,
        num_hidden_layers: spec.layers,
        num_attention_heads: spec.heads,
        num_key_value_heads: spec.kv_heads,
        use_flash_attn: false,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: None,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
    };
    let logits = |tensors: HashMap<String, Tensor>| {
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let m = llama::Llama::load(vb, &cfg).unwrap();
        let mut cache = llama::Cache::new(false, DType::F32, &cfg, &dev).unwrap();
        m.forward(&ids, 0, &mut cache).unwrap()
    };
    let ours = logits(ck.tensors.clone());
    let err = rel_err(&ours, &want);
    assert!(
        err < 1e-4,
        "HF-RoPE forward on loaded weights differs: {err}"
    );

    // Negative control: the rows as stored in the GGUF file.
    let mut stored = ck.tensors.clone();
    for (name, t) in stored.iter_mut() {
        if name.contains(".q_proj.") {
            *t = converter_permute(t, spec.heads);
        } else if name.contains(".k_proj.") {
            *t = converter_permute(t, spec.kv_heads);
        }
    }
    let wrong = rel_err(&logits(stored), &want);
    assert!(
        wrong > 100.0 * err.max(1e-6),
        "control did not diverge: {wrong}"
    );
}
