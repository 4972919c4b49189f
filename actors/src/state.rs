//! The committed pruning state and its one owner: the model. Each prunable layer's
//! stored weight is the committed weight (`W ⊙ M` once pruned in place) and the model
//! keeps the keep bits `M` beside it, so there is no second copy of the masks to keep
//! in step. [`PruningState`] is the API over it: the Executor is the only writer
//! (restore at start, commit a candidate); everyone else reads through it or through
//! the model's own accessors.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use kernels::{Mask, MaskDelta};
use model::WeightOverlay;
use protocol::{CandidateMasks, LayerDelta};

use crate::engine::Engine;
use crate::error::{ActorError, Result};

/// Reads and writes of the committed state (see the module docs).
#[derive(Clone)]
pub struct PruningState {
    engine: Arc<Engine>,
}

impl PruningState {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    /// Layer `i`'s committed keep bits (all kept when it was never pruned).
    pub fn mask(&self, i: usize) -> Result<Arc<Mask>> {
        let info = &self.engine.layers[i];
        let stored = self
            .engine
            .model
            .pruned_mask(&info.name)
            .map_err(|e| ActorError::Model(format!("mask `{}`: {e}", info.name)))?;
        Ok(stored.unwrap_or_else(|| Arc::new(Mask::ones(info.out_features, info.in_features))))
    }

    /// Pruned weights over all prunable layers.
    pub fn pruned(&self) -> Result<u64> {
        (0..self.engine.layers.len())
            .map(|i| self.pruned_in(i))
            .sum()
    }

    fn pruned_in(&self, i: usize) -> Result<u64> {
        let name = &self.engine.layers[i].name;
        let stored = self
            .engine
            .model
            .pruned_mask(name)
            .map_err(|e| ActorError::Model(format!("mask `{name}`: {e}")))?;
        Ok(stored.map_or(0, |m| m.count_pruned() as u64))
    }

    /// Per layer (model order): (name, sparsity, weights), counted on the masks.
    pub fn layer_sparsity(&self) -> Result<Vec<(String, f64, u64)>> {
        (0..self.engine.layers.len())
            .map(|i| {
                let m = self.mask(i)?;
                Ok((
                    self.engine.layers[i].name.clone(),
                    m.sparsity(),
                    m.len() as u64,
                ))
            })
            .collect()
    }

    /// The committed masks as deltas from all-kept, one per layer in model order (the
    /// form of `masks.bin`).
    pub fn final_masks(&self) -> Result<Vec<LayerDelta>> {
        (0..self.engine.layers.len())
            .map(|i| {
                let mask = self.mask(i)?;
                Ok(full_delta(&self.engine.layers[i].name, &mask))
            })
            .collect()
    }

    /// Start from stored masks and repaired weights (a resumed run): the layers with
    /// stored weights take them, the other layers with pruned weights are pruned in
    /// place. Heavy: call from a blocking thread.
    pub fn restore(&self, masks: &[Mask], weights: &HashMap<String, Tensor>) -> Result<()> {
        for (info, mask) in self.engine.layers.iter().zip(masks) {
            match weights.get(&info.name) {
                Some(w) => self.replace(&info.name, w, mask)?,
                None if mask.count_pruned() > 0 => self.prune_in_place(&info.name, mask)?,
                None => {}
            }
        }
        self.settle()
    }

    /// Make `candidate` the committed state: each touched layer's committed mask plus
    /// the candidate's delta, pruned in place, with the candidate's repaired weights
    /// when it has them. Heavy: call from a blocking thread.
    pub fn commit(
        &self,
        candidate: &CandidateMasks,
        repaired: Option<&WeightOverlay>,
    ) -> Result<()> {
        for d in &candidate.deltas {
            let i = self.index(&d.layer)?;
            let mut mask = (*self.mask(i)?).clone();
            let err =
                |e: kernels::KernelError| ActorError::Kernel(format!("commit `{}`: {e}", d.layer));
            MaskDelta::from_bytes(&d.bytes)
                .and_then(|delta| delta.apply_to(&mut mask))
                .map_err(err)?;
            match repaired.and_then(|w| w.get(&d.layer)) {
                Some(w) => self.replace(&d.layer, w, &mask)?,
                None => self.prune_in_place(&d.layer, &mask)?,
            }
        }
        // The pruned weights are read next by other threads (streams).
        self.settle()
    }

    /// Model-order index of layer `name`.
    pub fn index(&self, name: &str) -> Result<usize> {
        self.engine
            .layers
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| ActorError::Kernel(format!("unknown layer `{name}`")))
    }

    fn prune_in_place(&self, name: &str, mask: &Mask) -> Result<()> {
        self.engine
            .model
            .prune_in_place(name, mask)
            .map_err(|e| ActorError::Model(format!("mask `{name}`: {e}")))
    }

    fn replace(&self, name: &str, weight: &Tensor, mask: &Mask) -> Result<()> {
        self.engine
            .model
            .replace_pruned(name, weight, mask)
            .map_err(|e| ActorError::Model(format!("repaired weight `{name}`: {e}")))
    }

    fn settle(&self) -> Result<()> {
        device::settle(self.engine.model.device()).map_err(ActorError::Model)
    }
}

/// A mask as the delta from all-kept.
pub fn full_delta(name: &str, m: &Mask) -> LayerDelta {
    let ones = Mask::ones(m.rows(), m.cols());
    // Same shape and monotone by construction: cannot fail.
    let bytes = MaskDelta::between(&ones, m)
        .map(|d| d.to_bytes())
        .unwrap_or_default();
    LayerDelta {
        layer: name.to_string(),
        bytes,
    }
}
