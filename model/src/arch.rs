//! Architecture description shared by every loader and the forward pass.
//!
//! Loaders (GGUF metadata or HF `config.json`) produce a [`ModelConfig`]; the
//! transformer is built from it. One struct covers the four families because they
//! differ only in a few switches (q/k/v bias, q/k norm, tied embeddings).

use serde::{Deserialize, Serialize};

/// The model families the engine implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama 2/3, SmolLM, SmolLM2, TinyLlama.
    Llama,
    /// Mistral (Llama layout; sliding window ignored for contexts within it).
    Mistral,
    /// Qwen2 / Qwen2.5: biases on q/k/v projections.
    Qwen2,
    /// Qwen3: RMS norm on per-head q and k, explicit head_dim.
    Qwen3,
}

impl Architecture {
    /// Parse the names used by GGUF `general.architecture` and HF `model_type`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "llama" | "smollm" | "smollm2" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }
}

/// Hyper-parameters of a decoder-only transformer, in HF `config.json` terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Per-head dimension; `hidden_size / num_attention_heads` unless the checkpoint says otherwise (Qwen3).
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    /// lm_head shares the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    /// Per-head RMS norm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}
