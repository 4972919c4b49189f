//! Fixture writers shared by the `load_*` integration tests: tiny random models
//! written as GGUF (llama.cpp layout, q/k permuted for llama as its converter does)
//! and as HF directories (config.json + safetensors + tokenizer.json).
//!
//! Everything here is written independently of the loader under test: the GGUF
//! permutation follows convert_hf_to_gguf.py's formula, names follow llama.cpp.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use model::Architecture;

/// Shape of a tiny model.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub arch: Architecture,
    pub vocab: usize,
    pub hidden: usize,
    pub inter: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub tied: bool,
}

impl Spec {
    /// Small llama (GQA 4:2); every dimension is a multiple of 32, so the non-K quants fit.
    pub fn llama() -> Self {
        Self {
            arch: Architecture::Llama,
            vocab: 32,
            hidden: 64,
            inter: 96,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            tied: true,
        }
    }

    /// Llama whose every matrix has rows of a multiple of 256 values (K-quant blocks).
    pub fn llama_k() -> Self {
        Self {
            hidden: 256,
            inter: 512,
            layers: 1,
            head_dim: 64,
            ..Self::llama()
        }
    }

    /// Small Qwen2 (q/k/v biases), untied lm_head.
    pub fn qwen2() -> Self {
        Self {
            arch: Architecture::Qwen2,
            tied: false,
            ..Self::llama()
        }
    }
}

/// Deterministic uniform values in [-1, 1) (no `rand` dependency, stable across versions).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(
            seed.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    }

    pub fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn tensor(&mut self, shape: &[usize], scale: f32, offset: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| offset + scale * self.next_f32()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

/// Random HF-layout weights of `spec`, keyed by HF name.
pub fn hf_weights(spec: &Spec, seed: u64) -> BTreeMap<String, Tensor> {
    let mut rng = Lcg::new(seed);
    let (h, q, kv, i) = (
        spec.hidden,
        spec.heads * spec.head_dim,
        spec.kv_heads * spec.head_dim,
        spec.inter,
    );
    let mut w = BTreeMap::new();
    let mut put = |name: String, shape: &[usize], scale: f32, offset: f32, rng: &mut Lcg| {
        w.insert(name, rng.tensor(shape, scale, offset));
    };
    put(
        "model.embed_tokens.weight".into(),
        &[spec.vocab, h],
        1.0,
        0.0,
        &mut rng,
    );
    for l in 0..spec.layers {
        let p = format!("model.layers.{l}");
        put(
            format!("{p}.input_layernorm.weight"),
            &[h],
            0.1,
            1.0,
            &mut rng,
        );
        put(
            format!("{p}.self_attn.q_proj.weight"),
            &[q, h],
            1.0,
            0.0,
            &mut rng,
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            &[kv, h],
            1.0,
            0.0,
            &mut rng,
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            &[kv, h],
            1.0,
            0.0,
            &mut rng,
        );
        put(
            format!("{p}.self_attn.o_proj.weight"),
            &[h, q],
            1.0,
            0.0,
            &mut rng,
        );
        if spec.arch == Architecture::Qwen2 {
            put(
                format!("{p}.self_attn.q_proj.bias"),
                &[q],
                0.5,
                0.0,
                &mut rng,
            );
            put(
                format!("{p}.self_attn.k_proj.bias"),
                &[kv],
                0.5,
                0.0,
                &mut rng,
            );
            put(
                format!("{p}.self_attn.v_proj.bias"),
                &[kv],
                0.5,
                0.0,
                &mut rng,
            );
        }
        if spec.arch == Architecture::Qwen3 {
            let d = spec.head_dim;
            put(
                format!("{p}.self_attn.q_norm.weight"),
                &[d],
                0.1,
                1.0,
                &mut rng,
            );
            put(
                format!("{p}.self_attn.k_norm.weight"),
                &[d],
                0.1,
                1.0,
                &mut rng,
            );
        }
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            0.1,
            1.0,
            &mut rng,
        );
        put(
            format!("{p}.mlp.gate_proj.weight"),
            &[i, h],
            1.0,
            0.0,
            &mut rng,
        );
        put(
            format!("{p}.mlp.up_proj.weight"),
            &[i, h],
            1.0,
            0.0,
            &mut rng,
        );
        put(
            format!("{p}.mlp.down_proj.weight"),
            &[h, i],
            1.0,
            0.0,
            &mut rng,
        );
    }
    put("model.norm.weight".into(), &[h], 0.1, 1.0, &mut rng);
    if !spec.tied {
        put(
            "lm_head.weight".into(),
            &[spec.vocab, h],
            1.0,
            0.0,
            &mut rng,
        );
    }
    w
}

/// convert_hf_to_gguf.py `permute`:
/// `w.reshape(n_head, 2, rows / n_head / 2, *rest).swapaxes(1, 2).reshape(w.shape)`.
pub fn converter_permute(w: &Tensor, n_head: usize) -> Tensor {
    let dims = w.dims().to_vec();
    let mut split = vec![n_head, 2, dims[0] / n_head / 2];
    split.extend_from_slice(&dims[1..]);
    w.reshape(split)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape(dims)
        .unwrap()
}

/// llama.cpp name of an HF tensor name.
pub fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (module, suffix) = rest.rsplit_once('.').unwrap();
    let g = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        other => panic!("no gguf name for {other}"),
    };
    format!("blk.{layer}.{g}.{suffix}")
}

/// The tensors llama.cpp's converter would write: GGUF names, q/k rows permuted for
/// llama, 2-D weights stored as `dtype`, 1-D norms and biases as F32.
pub fn gguf_tensors(
    spec: &Spec,
    hf: &BTreeMap<String, Tensor>,
    dtype: GgmlDType,
) -> Vec<(String, QTensor)> {
    hf.iter()
        .map(|(name, t)| {
            let mut t = t.clone();
            if spec.arch == Architecture::Llama {
                if name.contains(".q_proj.") {
                    t = converter_permute(&t, spec.heads);
                } else if name.contains(".k_proj.") {
                    t = converter_permute(&t, spec.kv_heads);
                }
            }
            let dt = if t.rank() == 2 { dtype } else { GgmlDType::F32 };
            (gguf_name(name), QTensor::quantize(&t, dt).unwrap())
        })
        .collect()
}

/// A byte-level BPE vocabulary of exactly `vocab` tokens with two merges, enough for
/// candle's `TokenizerFromGguf` to build a working tokenizer.
pub fn gguf_vocab(vocab: usize) -> (Vec<String>, Vec<String>) {
    let mut tokens: Vec<String> = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "Ġ",
        "ab",
        "Ġa",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    tokens.extend(('a'..='z').map(|c| c.to_string()));
    assert!(tokens.len() <= vocab, "fixture vocab too small");
    let mut i = 0;
    while tokens.len() < vocab {
        tokens.push(format!("<extra_{i}>"));
        i += 1;
    }
    (tokens, vec!["a b".into(), "Ġ a".into()])
}

pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Metadata llama.cpp writes for `spec` (architecture keys, tokenizer, chat template).
pub fn gguf_metadata(spec: &Spec) -> Vec<(String, Value)> {
    let a = spec.arch.name();
    let (tokens, merges) = gguf_vocab(spec.vocab);
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    vec![
        ("general.architecture".into(), Value::String(a.into())),
        (
            format!("{a}.embedding_length"),
            Value::U32(spec.hidden as u32),
        ),
        (format!("{a}.block_count"), Value::U32(spec.layers as u32)),
        (
            format!("{a}.feed_forward_length"),
            Value::U32(spec.inter as u32),
        ),
        (
            format!("{a}.attention.head_count"),
            Value::U32(spec.heads as u32),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            Value::U32(spec.kv_heads as u32),
        ),
        (
            format!("{a}.attention.key_length"),
            Value::U32(spec.head_dim as u32),
        ),
        (
            format!("{a}.rope.dimension_count"),
            Value::U32(spec.head_dim as u32),
        ),
        (format!("{a}.rope.freq_base"), Value::F32(10_000.0)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{a}.context_length"), Value::U32(256)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        ("tokenizer.ggml.merges".into(), strings(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        (
            "tokenizer.chat_template".into(),
            Value::String(CHATML.into()),
        ),
    ]
}

pub fn write_gguf(path: &Path, metadata: &[(String, Value)], tensors: &[(String, QTensor)]) {
    let mut f = File::create(path).unwrap();
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md, &ts).unwrap();
}

/// config.json of `spec` as `transformers` writes it.
pub fn hf_config(spec: &Spec) -> serde_json::Value {
    serde_json::json!({
        "model_type": spec.arch.name(),
        "vocab_size": spec.vocab,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.inter,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 256,
        "tie_word_embeddings": spec.tied,
        "bos_token_id": 1,
        "eos_token_id": [2, 3],
        "rope_scaling": null,
    })
}

/// A word-level tokenizer.json over the words `hello world the end`.
pub const TOKENIZER_JSON: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
  "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "unk_token": "[UNK]",
            "vocab": {"[UNK]": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4, "the": 5, "end": 6}}
}"#;

/// Write an HF checkpoint directory: config.json, tokenizer.json, and the weights as
/// `dtype` in `shards` safetensors files (with an index when `shards > 1`).
pub fn write_hf_dir(
    dir: &Path,
    config: &serde_json::Value,
    weights: &BTreeMap<String, Tensor>,
    dtype: DType,
    shards: usize,
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER_JSON).unwrap();
    let names: Vec<&String> = weights.keys().collect();
    let per_shard = names.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (s, chunk) in names.chunks(per_shard).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", s + 1)
        };
        let map: std::collections::HashMap<String, Tensor> = chunk
            .iter()
            .map(|n| ((*n).clone(), weights[*n].to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&map, dir.join(&file)).unwrap();
        for n in chunk {
            weight_map.insert((*n).clone(), file.clone().into());
        }
    }
    if shards > 1 {
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
}

/// Flat f32 values of a tensor.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (values(a), values(b));
    assert_eq!(a.len(), b.len());
    let num: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}
