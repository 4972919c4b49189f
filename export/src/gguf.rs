//! `--format gguf`: the source GGUF file with its pruned weights re-quantised to each
//! tensor's source type, so llama.cpp (and every GGUF reader) runs the pruned model.
//!
//! Everything no mask touches — the metadata (architecture, tokenizer, chat template)
//! and every other tensor — is copied exactly as stored. A pruned tensor is taken from
//! the dequantised checkpoint with its mask applied, put back into llama.cpp's q/k row
//! order for llama, and quantised again to its source type.
//!
//! What happens to pruned zeros depends on the type: f32, f16, bf16 and the symmetric
//! block formats (q8_0, q4_0, q5_0: w = d·q) store them as exact zeros. The affine
//! formats (q4_1, q5_1 and the k-quants: w = d·q + m) can only represent 0 when the
//! block's grid happens to pass through it, so a pruned weight comes back within half a
//! quantisation step of zero; the kept weights of a block are re-quantised on the
//! block's new range (usually a little finer, since zeros narrow it less than outliers).
//! Choose a symmetric type upstream when exact zeros matter.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{Device, Tensor};
use model::{Architecture, Checkpoint, SourceFormat};

use crate::{ExportError, Result};

/// The file an export writes into its directory.
pub const GGUF_FILE: &str = "model.gguf";

/// Write `DIR/model.gguf`: the source GGUF of `ckpt` with the tensors named in
/// `pruned` (HF names, masks already applied) replaced. Returns the weight file names.
pub(crate) fn write_gguf(
    ckpt: &Checkpoint,
    pruned: &HashMap<String, Tensor>,
    dir: &Path,
) -> Result<Vec<String>> {
    if ckpt.format != SourceFormat::Gguf {
        return Err(ExportError::Unsupported(format!(
            "--format gguf re-quantises a GGUF source; {} is not one (use --format hf or sparse)",
            ckpt.path.display()
        )));
    }
    let io = |path: &Path, source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let source = &ckpt.path;
    let mut reader = std::fs::File::open(source).map_err(|e| io(source, e))?;
    let content = gguf_file::Content::read(&mut reader).map_err(|e| ExportError::Tensor {
        name: source.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut replaced = HashSet::new();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let err = |e: candle_core::Error| ExportError::Tensor {
            name: name.clone(),
            reason: e.to_string(),
        };
        let stored = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(err)?;
        let hf = model::load::hf_name(name);
        let qt = match hf.as_ref().and_then(|h| pruned.get(h).map(|t| (h, t))) {
            None => stored,
            Some((hf, t)) => {
                replaced.insert(hf.clone());
                let t = to_gguf_rows(ckpt, hf, t).map_err(err)?;
                QTensor::quantize(&t, stored.dtype()).map_err(|e| ExportError::Tensor {
                    name: name.clone(),
                    reason: format!("re-quantising to {:?}: {e}", stored.dtype()),
                })?
            }
        };
        tensors.push((name.clone(), qt));
    }
    if let Some(missing) = pruned.keys().find(|k| !replaced.contains(*k)) {
        return Err(ExportError::Tensor {
            name: missing.clone(),
            reason: format!("not found in {}", source.display()),
        });
    }
    let mut keys: Vec<&String> = content.metadata.keys().collect();
    keys.sort();
    let metadata: Vec<(&str, &gguf_file::Value)> = keys
        .into_iter()
        .map(|k| (k.as_str(), &content.metadata[k]))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let path = dir.join(GGUF_FILE);
    let file = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
    let mut w = std::io::BufWriter::new(file);
    gguf_file::write(&mut w, &metadata, &refs).map_err(|e| ExportError::Tensor {
        name: path.display().to_string(),
        reason: e.to_string(),
    })?;
    use std::io::Write;
    w.flush().map_err(|e| io(&path, e))?;
    Ok(vec![GGUF_FILE.to_string()])
}

/// llama q/k weights go back into the converter's row order (the loader undid it).
fn to_gguf_rows(ckpt: &Checkpoint, hf: &str, t: &Tensor) -> candle_core::Result<Tensor> {
    if ckpt.config.architecture != Architecture::Llama {
        return Ok(t.clone());
    }
    if hf.contains(".q_proj.") {
        model::load::permute_rope_rows(t, ckpt.config.num_attention_heads)
    } else if hf.contains(".k_proj.") {
        model::load::permute_rope_rows(t, ckpt.config.num_key_value_heads)
    } else {
        Ok(t.clone())
    }
}
