//! Llama 2/3, SmolLM, TinyLlama: the plain layout of the shared decoder.
//!
//! HF `LlamaAttention` puts `attention_bias` on all four attention projections
//! (q, k, v and o); no released checkpoint we target sets it, but honouring it costs
//! nothing. Llama has no q/k norm. Llama 3.1 `rope_scaling` is not in `ModelConfig`
//! and therefore not applied: contexts under `original_max_position_embeddings`
//! (8192) are unaffected.

use super::{unsupported, FamilySpec};
use crate::{ModelConfig, Result};

pub(super) fn spec(cfg: &ModelConfig) -> Result<FamilySpec> {
    if cfg.qk_norm {
        return Err(unsupported(cfg, "qk_norm"));
    }
    Ok(FamilySpec {
        qkv_bias: cfg.attention_bias,
        o_bias: cfg.attention_bias,
        qk_norm: false,
    })
}
