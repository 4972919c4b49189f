//! [`WeightOverlay`]: per-call replacement weights, so K candidate masks can be
//! evaluated concurrently on one shared [`crate::Model`] without touching its state.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use kernels::Mask;

/// One overlay entry: a full effective weight, or a keep-mask applied lazily.
#[derive(Debug, Clone)]
pub(crate) enum OverlayEntry {
    /// `[out, in]` effective weight in the model dtype, used as is.
    Weight(Tensor),
    /// Keep bits (1 = kept): the forward uses `mask ⊙ stored weight`, built per call
    /// for one layer at a time and dropped after its matmul.
    Mask(Arc<Mask>),
}

/// Weights that replace some layers' weights for one forward call only; untouched
/// layers use the model's committed weights. This is what lets K candidate masks run
/// concurrently on one shared [`crate::Model`].
///
/// Two kinds of entries: [`WeightOverlay::insert`] holds a full weight tensor (any
/// values, e.g. SparseGPT's updated weights); [`WeightOverlay::insert_mask`] holds
/// only keep bits, applied to the layer's stored weight (see
/// [`crate::Model::layer_weight`]) at forward time. A mask entry costs 1 bit per
/// weight instead of a 32-bit copy — for SmolLM2-135M a candidate touching every
/// layer is ~13 MB of bits instead of ~425 MB of weights — and each forward pays one
/// pass over the layer's weight to build the transient masked copy.
#[derive(Debug, Clone, Default)]
pub struct WeightOverlay {
    entries: HashMap<String, OverlayEntry>,
}

impl WeightOverlay {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace layer `name`'s effective weight (`[out, in]`, model dtype) for calls
    /// that use this overlay. Returns the previous full-weight entry, if any (a
    /// previous mask entry is replaced too). Names and shapes are checked when the
    /// overlay is used, against the model it is used with.
    pub fn insert(&mut self, name: impl Into<String>, effective_weight: Tensor) -> Option<Tensor> {
        match self
            .entries
            .insert(name.into(), OverlayEntry::Weight(effective_weight))
        {
            Some(OverlayEntry::Weight(w)) => Some(w),
            _ => None,
        }
    }

    /// Make layer `name` use `keep ⊙ W` for calls that use this overlay, `W` the
    /// layer's stored weight (dense, or already pruned in place) and `keep` `[out, in]`
    /// bits (1 = kept). Replaces any previous entry of `name`. The masked weight is
    /// built per forward call, one layer at a time, and never stored.
    pub fn insert_mask(&mut self, name: impl Into<String>, keep: Arc<Mask>) {
        self.entries.insert(name.into(), OverlayEntry::Mask(keep));
    }

    /// The full-weight entry of `name` (`None` for a mask entry or no entry).
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        match self.entries.get(name) {
            Some(OverlayEntry::Weight(w)) => Some(w),
            _ => None,
        }
    }

    /// The mask entry of `name` (`None` for a full-weight entry or no entry).
    pub fn mask(&self, name: &str) -> Option<&Arc<Mask>> {
        match self.entries.get(name) {
            Some(OverlayEntry::Mask(m)) => Some(m),
            _ => None,
        }
    }

    pub(crate) fn entry(&self, name: &str) -> Option<&OverlayEntry> {
        self.entries.get(name)
    }

    /// Layer names this overlay replaces (both kinds of entries).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
