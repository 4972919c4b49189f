//! Final masks of a run and their application to the dense weights.

use std::collections::HashMap;

use candle_core::Tensor;
use kernels::{Mask, MaskDelta};

use crate::{ExportError, Result};

/// Dense tensors with every mask applied to `<layer>.weight` (pruned entries become
/// exact zeros, as `Model::set_mask` computes `W ⊙ M`). A mask naming a missing tensor
/// or disagreeing with its shape is an error, never silently skipped.
pub fn apply_masks(
    tensors: &HashMap<String, Tensor>,
    masks: &HashMap<String, Mask>,
) -> Result<HashMap<String, Tensor>> {
    let mut out = tensors.clone();
    for (layer, mask) in masks {
        let name = format!("{layer}.weight");
        let err = |reason: String| ExportError::Mask {
            layer: layer.clone(),
            reason,
        };
        let w = tensors
            .get(&name)
            .ok_or_else(|| err(format!("the checkpoint has no tensor `{name}`")))?;
        if w.dims() != [mask.rows(), mask.cols()] {
            return Err(err(format!(
                "mask is {}x{}, `{name}` is {:?}",
                mask.rows(),
                mask.cols(),
                w.dims()
            )));
        }
        let masked = mask.apply(w).map_err(|e| err(e.to_string()))?;
        out.insert(name, masked);
    }
    Ok(out)
}

/// Parse `masks.bin` as written by `secateur prune` (`actors::run::masks_file`):
/// `b"SCMK"`, u32 LE layer count, then per layer u16 LE name length, the name, u32 LE
/// byte length and the `MaskDelta` bytes from all-kept. Returns layer name → mask.
pub fn read_masks_file(bytes: &[u8]) -> Result<HashMap<String, Mask>> {
    let bad = |r: &str| ExportError::MasksFile(r.to_string());
    let mut rest = bytes
        .strip_prefix(b"SCMK")
        .ok_or_else(|| bad("missing the SCMK magic"))?;
    let mut take = |n: usize| -> Result<&[u8]> {
        if rest.len() < n {
            return Err(bad("truncated"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad("count"))?);
    let mut masks = HashMap::new();
    for _ in 0..count {
        let n = u16::from_le_bytes(take(2)?.try_into().map_err(|_| bad("name length"))?);
        let name = String::from_utf8(take(n as usize)?.to_vec())
            .map_err(|_| bad("layer name is not UTF-8"))?;
        let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad("delta length"))?);
        let delta = MaskDelta::from_bytes(take(len as usize)?).map_err(|e| ExportError::Mask {
            layer: name.clone(),
            reason: e.to_string(),
        })?;
        let mut mask = Mask::ones(delta.rows(), delta.cols());
        delta.apply_to(&mut mask).map_err(|e| ExportError::Mask {
            layer: name.clone(),
            reason: e.to_string(),
        })?;
        if masks.insert(name.clone(), mask).is_some() {
            return Err(bad(&format!("layer `{name}` appears twice")));
        }
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the last layer"));
    }
    Ok(masks)
}
