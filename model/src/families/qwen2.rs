//! Qwen2 / Qwen2.5: biases on q, k and v (never on o_proj), no q/k norm.
//!
//! HF `Qwen2Attention` hard-codes `bias=True` on q/k/v and Qwen2 `config.json` files
//! carry no `attention_bias` key, so the bias is part of the family, not a switch:
//! it is required whatever `ModelConfig::attention_bias` says.

use super::{unsupported, FamilySpec};
use crate::{ModelConfig, Result};

pub(super) fn spec(cfg: &ModelConfig) -> Result<FamilySpec> {
    if cfg.qk_norm {
        return Err(unsupported(cfg, "qk_norm"));
    }
    Ok(FamilySpec {
        qkv_bias: true,
        o_bias: false,
        qk_norm: false,
    })
}
