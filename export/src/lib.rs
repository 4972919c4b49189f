//! Export of pruned models.
//!
//! - [`export_hf`]: a Hugging Face directory (`config.json`, `generation_config.json`,
//!   `tokenizer.json`, `tokenizer_config.json`, safetensors weights, sharded with
//!   `model.safetensors.index.json` past a size) that `transformers` and our own
//!   [`model::load_checkpoint`] read. Pruned weights are stored as zeros: the file is as
//!   big as the dense one, which is what the ecosystem can consume.
//! - [`export_sparse`]: the compressed form of [`model::load::sparse`]: per pruned weight
//!   a packed bitmask plus its non-zero values, so a model at sparsity `s` takes about
//!   `(1 − s)` of the dense bytes plus one bit per weight. `load_checkpoint` reads it back.
//! - [`export_gguf`]: for GGUF sources, the same file with the pruned weights
//!   re-quantised to their source types, for llama.cpp (see [`gguf`] for what happens to
//!   zeros in block formats).
//!
//! Both write into a temporary directory next to the destination and rename it at the
//! end, so a failed export (disk full, bad tensor) leaves no partial directory behind.
//! An existing destination is refused unless `force` is set.

mod atomic;
pub mod gguf;
mod hf;
pub mod masks;
mod sparse;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Tensor;
use kernels::Mask;
use model::Checkpoint;

pub use hf::{config_json, DEFAULT_SHARD_BYTES};
pub use masks::{apply_masks, read_masks_file, replace_weights};

/// Storage dtype of exported floating-point weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportDtype {
    F32,
    F16,
    Bf16,
}

impl ExportDtype {
    /// Parse `f32`, `f16`, `bf16` (the names `source_dtypes` and the CLI use).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Some(Self::F32),
            "f16" | "float16" => Some(Self::F16),
            "bf16" | "bfloat16" => Some(Self::Bf16),
            _ => None,
        }
    }

    /// The `torch_dtype` name in `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }

    pub(crate) fn bytes_per_value(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    pub(crate) fn safetensors(self) -> safetensors::Dtype {
        match self {
            Self::F32 => safetensors::Dtype::F32,
            Self::F16 => safetensors::Dtype::F16,
            Self::Bf16 => safetensors::Dtype::BF16,
        }
    }

    /// The dtype to write when none is chosen: the source's when every tensor was stored
    /// in one float type, else f32. Quantised GGUF tensors (q4_1, ...) have no float
    /// counterpart; f32 holds their dequantised values exactly, so the export computes
    /// the same logits as the pruned model in memory.
    pub fn from_source(ckpt: &Checkpoint) -> Self {
        let mut kinds = ckpt.source_dtypes.values().map(|s| Self::parse(s));
        match kinds.next() {
            Some(Some(first)) if kinds.all(|k| k == Some(first)) => first,
            _ => Self::F32,
        }
    }
}

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Weights dtype; [`ExportDtype::from_source`] when `None`.
    pub dtype: Option<ExportDtype>,
    /// Replace an existing destination directory.
    pub force: bool,
    /// HF export: start a new shard when the current one would pass this many bytes.
    pub max_shard_bytes: u64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            force: false,
            max_shard_bytes: DEFAULT_SHARD_BYTES,
        }
    }
}

/// What went wrong during an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0} already exists (pass --force to replace it)")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mask for `{layer}`: {reason}")]
    Mask { layer: String, reason: String },
    #[error("masks file: {0}")]
    MasksFile(String),
    #[error("tensor `{name}`: {reason}")]
    Tensor { name: String, reason: String },
    #[error("safetensors: {0}")]
    Safetensors(String),
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, ExportError>;

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub dir: PathBuf,
    /// Files written, relative names, sorted.
    pub files: Vec<String>,
    /// Bytes of the weight files only.
    pub weight_bytes: u64,
    /// Bytes of every file.
    pub total_bytes: u64,
    pub dtype: ExportDtype,
}

/// Write `ckpt` with `masks` applied (layer name → mask, 1 = kept) as an HF directory.
pub fn export_hf(
    ckpt: &Checkpoint,
    masks: &HashMap<String, Mask>,
    out: &std::path::Path,
    opts: &ExportOptions,
) -> Result<ExportSummary> {
    let dtype = opts.dtype.unwrap_or_else(|| ExportDtype::from_source(ckpt));
    let tensors = apply_masks(&ckpt.tensors, masks)?;
    atomic::write_dir(out, opts.force, |tmp| {
        hf::write_metadata_files(ckpt, dtype, tmp)?;
        hf::write_weights(&tensors, dtype, opts.max_shard_bytes, tmp)
    })
    .and_then(|weights| summarise(out, dtype, &weights))
}

/// Write `ckpt` with `masks` applied in the compressed sparse form of
/// [`model::load::sparse`]: metadata files as in [`export_hf`], weights in one
/// [`model::load::sparse::SPARSE_FILE`].
pub fn export_sparse(
    ckpt: &Checkpoint,
    masks: &HashMap<String, Mask>,
    out: &std::path::Path,
    opts: &ExportOptions,
) -> Result<ExportSummary> {
    let dtype = opts.dtype.unwrap_or_else(|| ExportDtype::from_source(ckpt));
    let tensors = apply_masks(&ckpt.tensors, masks)?;
    let compressed: Vec<String> = masks.keys().map(|l| format!("{l}.weight")).collect();
    atomic::write_dir(out, opts.force, |tmp| {
        hf::write_metadata_files(ckpt, dtype, tmp)?;
        sparse::write_sparse(&tensors, &compressed, dtype, tmp)
    })
    .and_then(|weights| summarise(out, dtype, &weights))
}

/// Write `ckpt`'s source GGUF with `masks` applied, re-quantised to the source types,
/// as `out/model.gguf` ([`gguf::GGUF_FILE`]). Only GGUF sources; `opts.dtype` must be
/// unset (each tensor keeps its own type).
pub fn export_gguf(
    ckpt: &Checkpoint,
    masks: &HashMap<String, Mask>,
    out: &std::path::Path,
    opts: &ExportOptions,
) -> Result<ExportSummary> {
    if opts.dtype.is_some() {
        return Err(ExportError::Unsupported(
            "--format gguf keeps every tensor's source type; --dtype does not apply".into(),
        ));
    }
    let all = apply_masks(&ckpt.tensors, masks)?;
    let pruned: HashMap<String, Tensor> = masks
        .keys()
        .map(|l| format!("{l}.weight"))
        .filter_map(|n| all.get(&n).map(|t| (n, t.clone())))
        .collect();
    drop(all);
    atomic::write_dir(out, opts.force, |tmp| gguf::write_gguf(ckpt, &pruned, tmp))
        .and_then(|weights| summarise(out, ExportDtype::F32, &weights))
}

fn summarise(
    dir: &std::path::Path,
    dtype: ExportDtype,
    weights: &[String],
) -> Result<ExportSummary> {
    let io = |path: PathBuf, source| ExportError::Io { path, source };
    let mut files = Vec::new();
    let (mut weight_bytes, mut total_bytes) = (0, 0);
    for e in std::fs::read_dir(dir).map_err(|e| io(dir.to_path_buf(), e))? {
        let e = e.map_err(|e| io(dir.to_path_buf(), e))?;
        let len = e.metadata().map_err(|err| io(e.path(), err))?.len();
        let name = e.file_name().to_string_lossy().into_owned();
        total_bytes += len;
        if weights.contains(&name) {
            weight_bytes += len;
        }
        files.push(name);
    }
    files.sort();
    Ok(ExportSummary {
        dir: dir.to_path_buf(),
        files,
        weight_bytes,
        total_bytes,
        dtype,
    })
}

/// A tensor's values converted to `dtype`, as little-endian bytes.
pub(crate) fn tensor_bytes(name: &str, t: &Tensor, dtype: ExportDtype) -> Result<Vec<u8>> {
    let err = |e: candle_core::Error| ExportError::Tensor {
        name: name.to_string(),
        reason: e.to_string(),
    };
    let flat = t.flatten_all().map_err(err)?;
    Ok(match dtype {
        ExportDtype::F32 => flat
            .to_vec1::<f32>()
            .map_err(err)?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        ExportDtype::F16 => flat
            .to_dtype(candle_core::DType::F16)
            .and_then(|t| t.to_vec1::<half::f16>())
            .map_err(err)?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        ExportDtype::Bf16 => flat
            .to_dtype(candle_core::DType::BF16)
            .and_then(|t| t.to_vec1::<half::bf16>())
            .map_err(err)?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    })
}
