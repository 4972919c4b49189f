//! Checkpoint loading. Every loader yields the same [`Checkpoint`]: a config, the
//! dense weights as f32 tensors keyed by their **HF checkpoint names**
//! (`model.layers.3.self_attn.q_proj.weight`, also for GGUF inputs), the tokenizer
//! and the chat template. The dense weights are never modified afterwards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use tokenizers::Tokenizer;

use crate::{ModelConfig, Result};

/// Which kind of file(s) a checkpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Gguf,
    Safetensors,
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

/// Load a GGUF file or an HF directory (config.json + *.safetensors + tokenizer.json).
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let _ = path;
    Err(crate::ModelError::InvalidArgument(
        "loaders not implemented yet".into(),
    ))
}
