//! Checkpoint loading. Every loader yields the same [`Checkpoint`]: a config, the
//! dense weights as f32 tensors keyed by their **HF checkpoint names**
//! (`model.layers.3.self_attn.q_proj.weight`, also for GGUF inputs), the tokenizer
//! and the chat template. The dense weights are never modified afterwards.
//!
//! Both loaders end in [`validate::validate_checkpoint`], so a checkpoint that
//! reaches the forward pass has every tensor its architecture needs, in the shape
//! the config implies, with finite values.

mod gguf;
mod hf;
pub mod sparse;
mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use tokenizers::Tokenizer;

use crate::{ModelConfig, ModelError, Result};

pub use gguf::{gguf_header, hf_name, permute_rope_rows, unpermute_rope_rows, GgufHeader};

/// Which kind of file(s) a checkpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Gguf,
    Safetensors,
    /// The compressed sparse export of `secateur export --format sparse` ([`sparse`]).
    Sparse,
}

/// A loaded model: everything needed to build the transformer and talk to it.
pub struct Checkpoint {
    pub path: PathBuf,
    pub format: SourceFormat,
    pub config: ModelConfig,
    /// Dense f32 weights on the CPU, keyed by HF name.
    pub tensors: HashMap<String, Tensor>,
    /// Storage type of each tensor in the source file (e.g. "q4_1", "bf16"), keyed by HF name.
    pub source_dtypes: HashMap<String, String>,
    pub tokenizer: Tokenizer,
    /// Jinja chat template from GGUF `tokenizer.chat_template` or `tokenizer_config.json`.
    pub chat_template: Option<String>,
}

/// One row of [`Checkpoint::tensor_summary`]: what `secateur inspect` prints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorSummary {
    /// HF checkpoint name.
    pub name: String,
    pub shape: Vec<usize>,
    /// Storage type in the source file ("q4_1", "bf16", ...).
    pub source_dtype: String,
}

impl Checkpoint {
    /// Number of stored parameters. Tied embeddings count once, because the
    /// lm_head is then not a tensor of its own.
    pub fn parameter_count(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }

    /// Every tensor with its shape and source type, in model order: embeddings, then
    /// layer 0, 1, ... (numerically, so layer 10 follows layer 9), each layer in
    /// dataflow order (norm, q, k, v, o, norm, gate, up, down), then final norm and
    /// lm_head.
    pub fn tensor_summary(&self) -> Vec<TensorSummary> {
        let mut rows: Vec<TensorSummary> = self
            .tensors
            .iter()
            .map(|(name, t)| TensorSummary {
                name: name.clone(),
                shape: t.dims().to_vec(),
                source_dtype: self
                    .source_dtypes
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| "unknown".to_string()),
            })
            .collect();
        rows.sort_by_key(|r| layer_order_key(&r.name));
        rows
    }
}

/// Sort key placing a tensor name in model order; unknown names sort by name
/// after the known ones of the same layer.
fn layer_order_key(name: &str) -> (u8, usize, u8, String) {
    const IN_LAYER: [&str; 11] = [
        "input_layernorm",
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.q_norm",
        "self_attn.k_norm",
        "self_attn.o_proj",
        "post_attention_layernorm",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
    if name.starts_with("model.embed_tokens") {
        return (0, 0, 0, name.to_string());
    }
    if let Some(rest) = name.strip_prefix("model.layers.") {
        if let Some((idx, tail)) = rest.split_once('.') {
            if let Ok(idx) = idx.parse::<usize>() {
                let rank = IN_LAYER
                    .iter()
                    .position(|p| tail.starts_with(p))
                    .unwrap_or(IN_LAYER.len());
                return (1, idx, rank as u8, tail.to_string());
            }
        }
    }
    if name.starts_with("model.norm") {
        return (2, 0, 0, name.to_string());
    }
    if name.starts_with("lm_head") {
        return (3, 0, 0, name.to_string());
    }
    (4, 0, 0, name.to_string())
}

/// Load a GGUF file, an HF directory (config.json + *.safetensors + tokenizer.json) or a
/// sparse export (config.json + [`sparse::SPARSE_FILE`] + tokenizer.json).
///
/// A path ending in `.gguf` (or any regular file starting with the GGUF magic) is read
/// as GGUF; a directory holding `config.json` as an HF checkpoint. Anything else is an
/// error naming the path.
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let meta = std::fs::metadata(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        let config = path.join("config.json");
        if !config.is_file() {
            return Err(ModelError::Io {
                path: config,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "an HF checkpoint directory must contain config.json",
                ),
            });
        }
        if sparse::is_sparse_dir(path) {
            return sparse::load_sparse_dir(path);
        }
        return hf::load_hf_dir(path);
    }
    let is_gguf_ext = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if is_gguf_ext || gguf::has_gguf_magic(path) {
        return gguf::load_gguf(path);
    }
    Err(ModelError::Malformed {
        path: path.to_path_buf(),
        format: "checkpoint",
        reason: "expected a .gguf file or a directory with config.json".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::layer_order_key;

    #[test]
    fn layer_order_is_numeric_and_dataflow() {
        let mut names = vec![
            "lm_head.weight",
            "model.layers.10.mlp.down_proj.weight",
            "model.layers.2.self_attn.q_proj.bias",
            "model.layers.2.self_attn.q_proj.weight",
            "model.norm.weight",
            "model.layers.2.input_layernorm.weight",
            "model.embed_tokens.weight",
            "model.layers.2.mlp.down_proj.weight",
        ];
        names.sort_by_key(|n| layer_order_key(n));
        assert_eq!(
            names,
            vec![
                "model.embed_tokens.weight",
                "model.layers.2.input_layernorm.weight",
                "model.layers.2.self_attn.q_proj.bias",
                "model.layers.2.self_attn.q_proj.weight",
                "model.layers.2.mlp.down_proj.weight",
                "model.layers.10.mlp.down_proj.weight",
                "model.norm.weight",
                "lm_head.weight",
            ]
        );
    }
}
