//! Our forward pass against candle-transformers' reference implementations on the
//! same random weights: every position's logits, max abs difference < 1e-4 (f32).
//!
//! The references return only the last position's logits, so each prefix of each
//! batch row is run through the reference separately.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Activation, VarBuilder};
use candle_transformers::models::{llama, mistral, qwen2, qwen3};
use model::testing::{random_weights, tiny_config};
use model::{Architecture, Model, ModelConfig};

const TOL: f32 = 1e-4;

fn batch() -> Vec<Vec<u32>> {
    vec![
        vec![1, 5, 9, 33, 63, 0, 17, 42],
        vec![2, 2, 40, 7, 11, 58, 3, 30],
    ]
}

/// Run our model on the whole batch, then compare every prefix of every row with
/// `reference(prefix) -> [vocab]` last-position logits.
fn compare(
    cfg: &ModelConfig,
    weights: &HashMap<String, Tensor>,
    mut reference: impl FnMut(&Tensor) -> Tensor,
) {
    let dev = Device::Cpu;
    let model = Model::new(cfg, weights, &dev).expect("model");
    let rows = batch();
    let tokens = Tensor::new(rows.clone(), &dev).unwrap();
    let ours = model.forward(&tokens).expect("forward");
    assert_eq!(ours.dims(), &[2, 8, cfg.vocab_size]);
    let mut worst = 0f32;
    for (b, row) in rows.iter().enumerate() {
        for t in 1..=row.len() {
            let prefix = Tensor::new(&row[..t], &dev).unwrap().unsqueeze(0).unwrap();
            let theirs = reference(&prefix).flatten_all().unwrap();
            let mine = ours.get(b).unwrap().get(t - 1).unwrap();
            let diff = (mine - theirs)
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            worst = worst.max(diff);
        }
    }
    println!("{:?}: max abs logit difference {worst:e}", cfg.architecture);
    assert!(worst < TOL, "max abs logit difference {worst} ≥ {TOL}");
    // Logits must not be trivially equal: the weights are random, so rows differ.
    let spread = ours.max_all().unwrap().to_scalar::<f32>().unwrap()
        - ours.min_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(spread > 1.0, "degenerate logits (spread {spread})");
}

fn vb(weights: &HashMap<String, Tensor>) -> VarBuilder<'static> {
    VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu)
}

#[test]
fn llama_matches_candle_transformers() {
    let cfg = tiny_config(Architecture::Llama);
    let w = random_weights(&cfg, 11, &Device::Cpu).unwrap();
    let rc = llama::Config {
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        vocab_size: cfg.vocab_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        use_flash_attn: false,
        rms_norm_eps: cfg.rms_norm_eps,
        rope_theta: cfg.rope_theta as f32,
        bos_token_id: None,
        eos_token_id: None,
        rope_scaling: None,
        max_position_embeddings: cfg.max_position_embeddings,
        tie_word_embeddings: cfg.tie_word_embeddings,
    };
    let reference = llama::Llama::load(vb(&w), &rc).unwrap();
    compare(&cfg, &w, |x| {
        let mut cache = llama::Cache::new(false, DType::F32, &rc, &Device::Cpu).unwrap();
        reference.forward(x, 0, &mut cache).unwrap()
    });
}

#[test]
fn mistral_matches_candle_transformers() {
    let cfg = tiny_config(Architecture::Mistral);
    let w = random_weights(&cfg, 12, &Device::Cpu).unwrap();
    let rc = mistral::Config {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        head_dim: Some(cfg.head_dim),
        num_key_value_heads: cfg.num_key_value_heads,
        hidden_act: Activation::Silu,
        max_position_embeddings: cfg.max_position_embeddings,
        rms_norm_eps: cfg.rms_norm_eps,
        rope_theta: cfg.rope_theta,
        sliding_window: None,
        use_flash_attn: false,
    };
    let mut reference = mistral::Model::new(&rc, vb(&w)).unwrap();
    compare(&cfg, &w, |x| {
        reference.clear_kv_cache();
        reference.forward(x, 0).unwrap()
    });
}

fn qwen2_reference(cfg: &ModelConfig, w: &HashMap<String, Tensor>) -> qwen2::ModelForCausalLM {
    let rc = qwen2::Config {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        max_position_embeddings: cfg.max_position_embeddings,
        sliding_window: cfg.max_position_embeddings,
        max_window_layers: cfg.num_hidden_layers,
        tie_word_embeddings: cfg.tie_word_embeddings,
        rope_theta: cfg.rope_theta,
        rms_norm_eps: cfg.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: Activation::Silu,
    };
    qwen2::ModelForCausalLM::new(&rc, vb(w)).unwrap()
}

#[test]
fn qwen2_matches_candle_transformers() {
    let cfg = tiny_config(Architecture::Qwen2);
    let w = random_weights(&cfg, 13, &Device::Cpu).unwrap();
    assert!(w.contains_key("model.layers.1.self_attn.v_proj.bias"));
    let mut reference = qwen2_reference(&cfg, &w);
    compare(&cfg, &w, |x| {
        reference.clear_kv_cache();
        reference.forward(x, 0).unwrap()
    });
}

#[test]
fn qwen2_untied_matches_candle_transformers() {
    let cfg = ModelConfig {
        tie_word_embeddings: false,
        ..tiny_config(Architecture::Qwen2)
    };
    let w = random_weights(&cfg, 14, &Device::Cpu).unwrap();
    assert!(w.contains_key("lm_head.weight"));
    let mut reference = qwen2_reference(&cfg, &w);
    compare(&cfg, &w, |x| {
        reference.clear_kv_cache();
        reference.forward(x, 0).unwrap()
    });
}

fn qwen3_case(cfg: ModelConfig, seed: u64) {
    let w = random_weights(&cfg, seed, &Device::Cpu).unwrap();
    let rc = qwen3::Config {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        head_dim: cfg.head_dim,
        attention_bias: cfg.attention_bias,
        num_key_value_heads: cfg.num_key_value_heads,
        max_position_embeddings: cfg.max_position_embeddings,
        sliding_window: None,
        max_window_layers: cfg.num_hidden_layers,
        tie_word_embeddings: cfg.tie_word_embeddings,
        rope_theta: cfg.rope_theta,
        rms_norm_eps: cfg.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: Activation::Silu,
    };
    let mut reference = qwen3::ModelForCausalLM::new(&rc, vb(&w)).unwrap();
    compare(&cfg, &w, |x| {
        reference.clear_kv_cache();
        reference.forward(x, 0).unwrap()
    });
}

#[test]
fn qwen3_matches_candle_transformers() {
    let cfg = tiny_config(Architecture::Qwen3);
    assert_ne!(cfg.head_dim * cfg.num_attention_heads, cfg.hidden_size);
    qwen3_case(cfg, 15);
}

#[test]
fn qwen3_with_bias_and_tied_embeddings_matches_candle_transformers() {
    let cfg = ModelConfig {
        attention_bias: true,
        tie_word_embeddings: true,
        ..tiny_config(Architecture::Qwen3)
    };
    qwen3_case(cfg, 16);
}
