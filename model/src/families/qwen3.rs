//! Qwen3: a per-head RMS norm on q and k before RoPE (`self_attn.q_norm` /
//! `self_attn.k_norm`, one weight of `head_dim` shared by all heads), and an explicit
//! `head_dim` that need not equal `hidden_size / num_attention_heads` (Qwen3-8B:
//! 4096 / 32 = 128 = head_dim, but Qwen3-0.6B: 1024 / 16 = 64 ≠ 128).
//!
//! HF `Qwen3Attention` always builds q/k norms and puts `attention_bias` on all four
//! projections; released checkpoints leave it off.

use super::FamilySpec;
use crate::{ModelConfig, Result};

pub(super) fn spec(cfg: &ModelConfig) -> Result<FamilySpec> {
    Ok(FamilySpec {
        qkv_bias: cfg.attention_bias,
        o_bias: cfg.attention_bias,
        qk_norm: true,
    })
}
