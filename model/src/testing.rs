//! Tiny configurations and deterministic random weights, so tests (here and in other
//! crates) and `secateur bench` can build a model of any family without checkpoint
//! files. Names and shapes come from `families::expected_weights`, the same list
//! `Model::new` checks against.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::families::expected_weights;
use crate::{Architecture, ModelConfig, Result};

/// A two-layer model small enough for finite differences: vocab 64, hidden 32,
/// 4 query heads over 2 kv heads (GQA), intermediate 48. Family quirks are exercised:
/// Llama and Qwen2 tie embeddings (as SmolLM2 and Qwen2.5-0.5B do), Qwen2 has q/k/v
/// bias, Qwen3 has q/k norm and `head_dim` 16 ≠ hidden / heads.
pub fn tiny_config(architecture: Architecture) -> ModelConfig {
    let qwen3 = architecture == Architecture::Qwen3;
    ModelConfig {
        architecture,
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: if qwen3 { 16 } else { 8 },
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        max_position_embeddings: 128,
        tie_word_embeddings: matches!(architecture, Architecture::Llama | Architecture::Qwen2),
        attention_bias: architecture == Architecture::Qwen2,
        qk_norm: qwen3,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// Deterministic random f32 weights for `cfg`, keyed by HF name. Linear weights are
/// uniform in ±√(3 / in_features) (unit variance of each output for unit inputs),
/// embeddings uniform in ±1, norm weights 1 ± 0.1, biases ±0.1, so activations and
/// logits stay O(1) through the layers.
pub fn random_weights(
    cfg: &ModelConfig,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for (name, shape) in expected_weights(cfg)? {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            (0..n).map(|_| 1.0 + rng.random_range(-0.1..0.1)).collect()
        } else if name.ends_with(".bias") {
            (0..n).map(|_| rng.random_range(-0.1..0.1)).collect()
        } else {
            let bound = if name == "model.embed_tokens.weight" {
                1.0
            } else {
                (3.0 / shape[1] as f32).sqrt()
            };
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        out.insert(name, Tensor::from_vec(values, shape, device)?);
    }
    Ok(out)
}
