//! Final masks of a run and their application to the dense weights.

use std::collections::HashMap;

use candle_core::Tensor;
use kernels::{Mask, MaskDelta};

use crate::{ExportError, Result};

/// Replace the weights of `ckpt`'s repaired layers (layer name → `[out, in]` row-major
/// f32 values, as a run with `pruning.repair = "obs"` stores them) before the masks are
/// applied, so every export format carries the repaired values, not `W ⊙ M` of the
/// source. A layer the checkpoint lacks or a value count that disagrees with its shape
/// is an error naming the layer.
pub fn replace_weights(
    tensors: &mut HashMap<String, Tensor>,
    weights: HashMap<String, Vec<f32>>,
) -> Result<()> {
    for (layer, values) in weights {
        let name = format!("{layer}.weight");
        let err = |reason: String| ExportError::Mask {
            layer: layer.clone(),
            reason,
        };
        let source = tensors
            .get(&name)
            .ok_or_else(|| err(format!("the checkpoint has no tensor `{name}`")))?;
        let (rows, cols) = source.dims2().map_err(|e| err(e.to_string()))?;
        if values.len() != rows * cols {
            return Err(err(format!(
                "{} repaired values, `{name}` is {rows}x{cols}",
                values.len()
            )));
        }
        let t = Tensor::from_vec(values, (rows, cols), source.device())
            .map_err(|e| err(e.to_string()))?;
        tensors.insert(name, t);
    }
    Ok(())
}

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

/// Parse `masks.bin` ([`protocol::masks_file`], as `secateur prune` writes it) into
/// layer name → mask.
pub fn read_masks_file(bytes: &[u8]) -> Result<HashMap<String, Mask>> {
    let layers = protocol::masks_file::decode(bytes).map_err(|e| ExportError::MasksFile(e.0))?;
    let mut masks = HashMap::new();
    for d in layers {
        let err = |e: kernels::KernelError| ExportError::Mask {
            layer: d.layer.clone(),
            reason: e.to_string(),
        };
        let delta = MaskDelta::from_bytes(&d.bytes).map_err(err)?;
        let mut mask = Mask::ones(delta.rows(), delta.cols());
        delta.apply_to(&mut mask).map_err(err)?;
        masks.insert(d.layer, mask);
    }
    Ok(masks)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn repaired_weights_replace_the_source_before_the_masks() {
        let dense = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu).unwrap();
        let mut tensors = HashMap::from([("l.weight".to_string(), dense)]);
        let repaired = vec![1.5f32, 0.0, 3.5, 0.0, 5.5, 6.5];
        replace_weights(&mut tensors, HashMap::from([("l".to_string(), repaired)])).unwrap();
        let mask = Mask::from_bools(2, 3, &[true, false, true, false, true, true]).unwrap();
        let out = apply_masks(&tensors, &HashMap::from([("l".to_string(), mask)])).unwrap();
        let got: Vec<f32> = out["l.weight"].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, vec![1.5, 0.0, 3.5, 0.0, 5.5, 6.5]);
        // A wrong count or an unknown layer names the layer.
        let err = replace_weights(
            &mut tensors,
            HashMap::from([("l".to_string(), vec![0.0; 5])]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains('l') && err.contains("5 repaired values"),
            "{err}"
        );
        let err = replace_weights(&mut tensors, HashMap::from([("m".to_string(), vec![0.0])]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.weight"), "{err}");
    }
}
