//! Errors of the model engine. Every variant names the file and, where there is
//! one, the tensor or metadata field at fault, so a user can act on it.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be opened or read at all.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid GGUF / safetensors / JSON file (truncated, corrupted).
    #[error("{path}: malformed {format} file: {reason}")]
    Malformed {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    /// A required metadata field or config key is absent or has the wrong type.
    #[error("{path}: field `{field}`: {reason}")]
    Field {
        path: PathBuf,
        field: String,
        reason: String,
    },
    /// The checkpoint declares an architecture this engine does not implement.
    #[error("{path}: unsupported architecture `{arch}` (supported: llama, mistral, qwen2, qwen3)")]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    /// A tensor is missing from the checkpoint.
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor { path: PathBuf, tensor: String },
    /// A tensor's shape disagrees with the architecture's config.
    #[error("{path}: tensor `{tensor}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// A tensor is stored in a dtype / quantisation we cannot dequantise.
    #[error("{path}: tensor `{tensor}` has unsupported type {dtype}")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    /// A tensor the engine does not know how to use (e.g. llama3 `rope_freqs`): refusing it
    /// beats silently computing a different model.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    UnsupportedTensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    /// A chat template that does not compile or fails to render.
    #[error("chat template: {reason}")]
    ChatTemplate { reason: String },
    /// No tokenizer could be found or built.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// Text input that cannot be used (empty, not UTF-8, bad JSONL field).
    #[error("{path}: {reason}")]
    BadText { path: PathBuf, reason: String },
    /// Invalid arguments to an engine call (e.g. empty token sequence).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A weight map handed to the forward pass lacks a tensor the architecture needs.
    #[error("missing weight `{tensor}` in the tensor map")]
    MissingWeight { tensor: String },
    /// A weight, mask or overlay tensor has the wrong shape for the layer it targets.
    #[error("tensor `{tensor}` has shape {actual:?}, expected {expected:?}")]
    WeightShape {
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// A mask operation failed in the kernels (shape mismatch, unsupported device).
    #[error(transparent)]
    Kernel(#[from] kernels::KernelError),
    /// A layer name that is not one of the model's prunable linears.
    #[error("no prunable layer named `{name}`")]
    UnknownLayer { name: String },
}
