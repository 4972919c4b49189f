//! Mistral: the Llama layout without biases or q/k norm.
//!
//! Mistral 7B v0.1 attends within a 4096-token sliding window; `ModelConfig` has no
//! window field and the decoder uses full causal attention, which is identical for
//! every window we evaluate (perplexity windows of 512–2048 tokens).

use super::{unsupported, FamilySpec};
use crate::{ModelConfig, Result};

pub(super) fn spec(cfg: &ModelConfig) -> Result<FamilySpec> {
    if cfg.attention_bias {
        return Err(unsupported(cfg, "attention_bias"));
    }
    if cfg.qk_norm {
        return Err(unsupported(cfg, "qk_norm"));
    }
    Ok(FamilySpec {
        qkv_bias: false,
        o_bias: false,
        qk_norm: false,
    })
}
