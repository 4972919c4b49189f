//! Loader of the compressed sparse export written by `secateur export --format sparse`.
//!
//! A sparse export is an HF-like directory (`config.json`, `tokenizer.json`,
//! `tokenizer_config.json`, `generation_config.json`) whose weights live in ONE file,
//! [`SPARSE_FILE`], instead of `*.safetensors` shards. The layout is defined here, next
//! to the only code that has to agree with the writer byte for byte:
//!
//! - safetensors `__metadata__`: `format` = [`SPARSE_FORMAT`], `version` = [`SPARSE_VERSION`]
//!   (a reader refuses any other), `dtype` = the values' dtype.
//! - A pruned 2-D weight `W` of shape `[rows, cols]` named `<name>` is stored as three
//!   tensors (the compressed-tensors "sparse-bitmask" idea, without its row offsets,
//!   which a reader recomputes):
//!   - `<name>.shape`: I64 `[2]` = `[rows, cols]`.
//!   - `<name>.bitmask`: U8 `[rows, ceil(cols / 8)]`; bit `c % 8` (least significant
//!     first, numpy `packbits(bitorder="little")`) of byte `c / 8` in row `r` is 1 when
//!     `W[r, c] ≠ 0`. Padding bits past `cols` are 0.
//!   - `<name>.values`: F32/F16/BF16 `[nnz]`: the non-zero entries in row-major order.
//! - Every other tensor (embeddings, norms, biases, unpruned weights) is stored dense
//!   under its own name.
//!
//! The size of a pruned weight is thus `nnz · sizeof(dtype) + rows · ceil(cols/8)`
//! bytes: about `(1 − s)` of the dense values plus one bit per weight.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use tokenizers::Tokenizer;

use super::{hf, validate, Checkpoint, SourceFormat};
use crate::{ModelError, Result};

/// The weights file of a sparse export; its presence marks the directory as one.
pub const SPARSE_FILE: &str = "model.sparse.safetensors";
/// `__metadata__.format` of [`SPARSE_FILE`].
pub const SPARSE_FORMAT: &str = "secateur-sparse-bitmask";
/// `__metadata__.version` of [`SPARSE_FILE`]; bumped on any layout change.
pub const SPARSE_VERSION: &str = "1";
/// Suffixes of the three tensors that make up one compressed weight.
pub const SHAPE_SUFFIX: &str = ".shape";
pub const BITMASK_SUFFIX: &str = ".bitmask";
pub const VALUES_SUFFIX: &str = ".values";

/// Whether `dir` holds a sparse export.
pub(crate) fn is_sparse_dir(dir: &Path) -> bool {
    dir.join(SPARSE_FILE).is_file()
}

/// Load a sparse export into a validated [`Checkpoint`] with dense f32 tensors (the
/// pruned entries are exact zeros).
pub(crate) fn load_sparse_dir(dir: &Path) -> Result<Checkpoint> {
    let config_path = dir.join("config.json");
    let config = hf::parse_config(&config_path, &hf::read_json(&config_path)?)?;
    validate::check_config(&config_path, &config)?;
    let path = dir.join(SPARSE_FILE);
    let bytes = std::fs::read(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    let (tensors, source_dtypes) = decode(&path, &bytes)?;
    validate::validate_checkpoint(dir, &config, &tensors)?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| ModelError::Tokenizer {
        path: tokenizer_path.clone(),
        reason: e.to_string(),
    })?;
    let chat_template = hf::read_chat_template(dir)?;
    Ok(Checkpoint {
        path: dir.to_path_buf(),
        format: SourceFormat::Sparse,
        config,
        tensors,
        source_dtypes,
        tokenizer,
        chat_template,
    })
}

type Decoded = (HashMap<String, Tensor>, HashMap<String, String>);

/// Decode the bytes of a [`SPARSE_FILE`] into dense f32 tensors and their stored dtypes.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Decoded> {
    let malformed = |reason: String| ModelError::Malformed {
        path: path.to_path_buf(),
        format: "sparse safetensors",
        reason,
    };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| malformed(e.to_string()))?;
    let info = meta.metadata().clone().unwrap_or_default();
    match (info.get("format"), info.get("version")) {
        (Some(f), Some(v)) if f == SPARSE_FORMAT && v == SPARSE_VERSION => {}
        (f, v) => {
            return Err(malformed(format!(
                "metadata format {f:?} version {v:?}, expected {SPARSE_FORMAT:?} version {SPARSE_VERSION:?}"
            )))
        }
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| malformed(e.to_string()))?;
    let mut names = st.names();
    names.sort();
    let mut tensors = HashMap::new();
    let mut dtypes = HashMap::new();
    for name in names {
        if name.ends_with(BITMASK_SUFFIX) || name.ends_with(VALUES_SUFFIX) {
            continue; // read with their `.shape`
        }
        let view = |n: &str| {
            st.tensor(n)
                .map_err(|e| malformed(format!("tensor `{n}`: {e}")))
        };
        if let Some(base) = name.strip_suffix(SHAPE_SUFFIX) {
            let shape = view(name)?;
            let bits = view(&format!("{base}{BITMASK_SUFFIX}"))?;
            let values = view(&format!("{base}{VALUES_SUFFIX}"))?;
            let (t, dtype) = decode_one(base, &shape, &bits, &values).map_err(malformed)?;
            tensors.insert(base.to_string(), t);
            dtypes.insert(base.to_string(), dtype.to_string());
        } else {
            let v = view(name)?;
            let (dtype, dname) = float_dtype(v.dtype())
                .ok_or_else(|| malformed(format!("tensor `{name}`: dtype {:?}", v.dtype())))?;
            let t = Tensor::from_raw_buffer(v.data(), dtype, v.shape(), &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| malformed(format!("tensor `{name}`: {e}")))?;
            tensors.insert(name.to_string(), t);
            dtypes.insert(name.to_string(), dname.to_string());
        }
    }
    Ok((tensors, dtypes))
}

fn float_dtype(d: Dtype) -> Option<(DType, &'static str)> {
    match d {
        Dtype::F32 => Some((DType::F32, "f32")),
        Dtype::F16 => Some((DType::F16, "f16")),
        Dtype::BF16 => Some((DType::BF16, "bf16")),
        _ => None,
    }
}

/// One compressed weight back to a dense f32 `[rows, cols]` tensor.
fn decode_one(
    base: &str,
    shape: &safetensors::tensor::TensorView<'_>,
    bits: &safetensors::tensor::TensorView<'_>,
    values: &safetensors::tensor::TensorView<'_>,
) -> std::result::Result<(Tensor, &'static str), String> {
    let err = |what: &str| format!("compressed tensor `{base}`: {what}");
    if shape.dtype() != Dtype::I64 || shape.shape() != [2] {
        return Err(err("`.shape` must be I64 [2]"));
    }
    let dims: Vec<i64> = shape
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let (rows, cols) = match dims[..] {
        [r, c] if r >= 0 && c >= 0 => (r as usize, c as usize),
        _ => return Err(err("negative dimension")),
    };
    let row_bytes = cols.div_ceil(8);
    if bits.dtype() != Dtype::U8 || bits.shape() != [rows, row_bytes] {
        return Err(err(&format!(
            "`.bitmask` must be U8 [{rows}, {row_bytes}], is {:?} {:?}",
            bits.dtype(),
            bits.shape()
        )));
    }
    let (dtype, dname) = float_dtype(values.dtype()).ok_or_else(|| err("`.values` dtype"))?;
    let nnz = values.shape().iter().product::<usize>();
    let vals = Tensor::from_raw_buffer(values.data(), dtype, &[nnz], &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| err(&e.to_string()))?;
    let mask = bits.data();
    let popcount: usize = mask.iter().map(|b| b.count_ones() as usize).sum();
    if popcount != nnz {
        return Err(err(&format!("{popcount} bits set but {nnz} values stored")));
    }
    let mut dense = vec![0f32; rows * cols];
    let mut next = vals.iter();
    for r in 0..rows {
        let row = &mask[r * row_bytes..(r + 1) * row_bytes];
        for (byte_idx, &byte) in row.iter().enumerate() {
            let mut b = byte;
            while b != 0 {
                let c = byte_idx * 8 + b.trailing_zeros() as usize;
                if c >= cols {
                    return Err(err("padding bit set past the last column"));
                }
                // popcount == nnz, so the iterator cannot run dry.
                dense[r * cols + c] = next.next().copied().unwrap_or(0.0);
                b &= b - 1;
            }
        }
    }
    let t = Tensor::from_vec(dense, (rows, cols), &Device::Cpu).map_err(|e| err(&e.to_string()))?;
    Ok((t, dname))
}
