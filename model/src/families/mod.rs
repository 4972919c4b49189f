//! What each model family changes in the shared decoder (`crate::decoder`).
//!
//! The four families share one layout (RMSNorm → attention with RoPE → RMSNorm →
//! SwiGLU MLP); they differ only in which projections carry a bias and whether q/k
//! get a per-head RMS norm. Each family file turns a [`ModelConfig`] into a
//! [`FamilySpec`], rejecting switch combinations the family never uses, so the decoder
//! itself has no `match architecture` anywhere.

mod llama;
mod mistral;
mod qwen2;
mod qwen3;

use crate::{Architecture, ModelConfig, ModelError, Result};

/// The resolved per-family switches the decoder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilySpec {
    /// q, k and v projections carry a bias (`…q_proj.bias`, …).
    pub qkv_bias: bool,
    /// o_proj carries a bias (`…o_proj.bias`).
    pub o_bias: bool,
    /// Per-head RMS norm on q and k before RoPE (`…self_attn.q_norm.weight`).
    pub qk_norm: bool,
}

impl FamilySpec {
    /// Whether projection `proj` (an entry of [`PROJECTIONS`]) carries a bias.
    pub fn has_bias(&self, proj: &str) -> bool {
        match proj {
            "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj" => self.qkv_bias,
            "self_attn.o_proj" => self.o_bias,
            _ => false,
        }
    }
}

/// Resolve the family switches of `cfg`, or say which switch the family cannot take.
pub fn spec(cfg: &ModelConfig) -> Result<FamilySpec> {
    match cfg.architecture {
        Architecture::Llama => llama::spec(cfg),
        Architecture::Mistral => mistral::spec(cfg),
        Architecture::Qwen2 => qwen2::spec(cfg),
        Architecture::Qwen3 => qwen3::spec(cfg),
    }
}

/// The seven prunable projections of one decoder layer, in HF module order.
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Every tensor the decoder reads, with its expected shape, in checkpoint order
/// (HF names). `Model::new` checks a weight map against this list; test helpers use
/// it to make random weights, so both always agree on names and shapes.
pub fn expected_weights(cfg: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
    check_dims(cfg)?;
    let spec = spec(cfg)?;
    let (h, i, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let q_out = cfg.num_attention_heads * d;
    let kv_out = cfg.num_key_value_heads * d;
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, h],
    )];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let shapes = [
            [q_out, h],
            [kv_out, h],
            [kv_out, h],
            [h, q_out],
            [i, h],
            [i, h],
            [h, i],
        ];
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        for (proj, shape) in PROJECTIONS.iter().zip(shapes) {
            out.push((format!("{p}.{proj}.weight"), shape.to_vec()));
            if spec.has_bias(proj) {
                out.push((format!("{p}.{proj}.bias"), vec![shape[0]]));
            }
        }
        if spec.qk_norm {
            out.push((format!("{p}.self_attn.q_norm.weight"), vec![d]));
            out.push((format!("{p}.self_attn.k_norm.weight"), vec![d]));
        }
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    Ok(out)
}

/// Dimension checks shared by every family: the decoder would otherwise fail deep
/// inside a reshape with a message that names no config field.
fn check_dims(cfg: &ModelConfig) -> Result<()> {
    let bad = |what: &str| Err(ModelError::InvalidArgument(format!("model config: {what}")));
    let sizes = [
        ("vocab_size", cfg.vocab_size),
        ("hidden_size", cfg.hidden_size),
        ("intermediate_size", cfg.intermediate_size),
        ("num_hidden_layers", cfg.num_hidden_layers),
        ("num_attention_heads", cfg.num_attention_heads),
        ("num_key_value_heads", cfg.num_key_value_heads),
        ("head_dim", cfg.head_dim),
        ("max_position_embeddings", cfg.max_position_embeddings),
    ];
    if let Some((field, _)) = sizes.iter().find(|(_, v)| *v == 0) {
        return bad(&format!("`{field}` is 0"));
    }
    if !cfg
        .num_attention_heads
        .is_multiple_of(cfg.num_key_value_heads)
    {
        return bad(&format!(
            "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
            cfg.num_attention_heads, cfg.num_key_value_heads
        ));
    }
    if !cfg.head_dim.is_multiple_of(2) {
        return bad(&format!(
            "head_dim ({}) must be even for RoPE",
            cfg.head_dim
        ));
    }
    if !(cfg.rms_norm_eps > 0.0 && cfg.rms_norm_eps.is_finite()) {
        return bad(&format!("rms_norm_eps ({}) must be > 0", cfg.rms_norm_eps));
    }
    if !(cfg.rope_theta > 1.0 && cfg.rope_theta.is_finite()) {
        return bad(&format!("rope_theta ({}) must be > 1", cfg.rope_theta));
    }
    Ok(())
}

/// Error for a switch a family never uses (e.g. q/k norm on Llama).
fn unsupported(cfg: &ModelConfig, switch: &str) -> ModelError {
    ModelError::InvalidArgument(format!(
        "model config: {} does not use `{switch}`",
        cfg.architecture.name()
    ))
}
