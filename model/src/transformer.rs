//! The model: embeddings, the shared decoder layers, final norm and lm_head, plus
//! the pruning-facing API (layer list, masks, overlays, activation statistics).
//!
//! One `Model` is shared (`Arc<Model>`, `Send + Sync`) by every thread that evaluates
//! candidates: per-call state (overlays, KV caches, gradient variables) lives in the
//! caller's stack, never in the model. Masks (and in-place pruned weights) sit behind
//! per-layer `RwLock`s so they can be committed through `&self`; a forward that runs
//! while masks are being committed may see some layers before and some after the
//! commit, so commit between evaluation rounds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use kernels::Mask;

use crate::decoder::{causal_mask, rms_norm, DecoderLayer, LayerKv, RopeTables};
use crate::families::{self, FamilySpec};
use crate::linear::{ActivationGram, ActivationStats, LayerInfo, Pass, PrunableLinear};
use crate::overlay::{OverlayEntry, WeightOverlay};
use crate::{ModelConfig, ModelError, Result};

/// A decoder-only transformer of one of the supported families.
pub struct Model {
    config: ModelConfig,
    spec: FamilySpec,
    dtype: DType,
    device: Device,
    embed: Tensor,
    layers: Vec<DecoderLayer>,
    final_norm: Tensor,
    /// `[vocab, hidden]`; the embedding matrix itself when embeddings are tied.
    lm_head: Tensor,
    /// Prunable layer name → (decoder layer, projection slot).
    index: HashMap<String, (usize, usize)>,
    stats_enabled: AtomicBool,
}

const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Model>();
};

impl Model {
    /// Build an f32 model from HF-named weights (e.g. `Checkpoint::tensors`). Tensors
    /// not used by the architecture are ignored; missing or mis-shaped ones are errors
    /// naming the tensor.
    pub fn new(
        cfg: &ModelConfig,
        tensors: &HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        Self::new_with_dtype(cfg, tensors, device, DType::F32)
    }

    /// As [`Model::new`] in another float dtype. F32 is the CPU's; BF16 the GPU's (see
    /// [`Model::new_owned_with_dtype`]); F64 exists so gradient checks against finite
    /// differences are free of rounding noise.
    pub fn new_with_dtype(
        cfg: &ModelConfig,
        tensors: &HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Self::build(cfg, device, dtype, &mut |name| tensors.get(name).cloned())
    }

    /// As [`Model::new`], taking the tensors by value: each is removed from the map as
    /// the model takes it, so a tensor the model converts (dtype, device) is freed
    /// right after, and the caller is left holding none of the weights. The pruning
    /// loop builds its model this way: pruning in place then releases the dense
    /// values, which a caller-held map would keep alive.
    pub fn new_owned(
        cfg: &ModelConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        Self::new_owned_with_dtype(cfg, tensors, device, DType::F32)
    }

    /// As [`Model::new_owned`] in another float dtype: the pruning loop on a GPU keeps
    /// its weights in bf16 (half the memory and bandwidth of f32; candle's CUDA matmuls
    /// and kernels take it), while the CPU keeps f32.
    pub fn new_owned_with_dtype(
        cfg: &ModelConfig,
        mut tensors: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Self::build(cfg, device, dtype, &mut |name| tensors.remove(name))
    }

    fn build(
        cfg: &ModelConfig,
        device: &Device,
        dtype: DType,
        source: &mut dyn FnMut(&str) -> Option<Tensor>,
    ) -> Result<Self> {
        if !dtype.is_float() {
            return Err(ModelError::InvalidArgument(format!(
                "model dtype must be a float type, got {dtype:?}"
            )));
        }
        let spec = families::spec(cfg)?;
        let shapes: HashMap<String, Vec<usize>> =
            families::expected_weights(cfg)?.into_iter().collect();
        let mut take = |name: &str| -> Result<Tensor> {
            let t = source(name).ok_or_else(|| ModelError::MissingWeight {
                tensor: name.to_string(),
            })?;
            if let Some(expected) = shapes.get(name) {
                if t.dims() != expected.as_slice() {
                    return Err(ModelError::WeightShape {
                        tensor: name.to_string(),
                        expected: expected.clone(),
                        actual: t.dims().to_vec(),
                    });
                }
            }
            // Convert on the host first: a bf16 GPU model never holds an f32 copy of a
            // tensor on the device, and the transfer is half as large.
            Ok(t.to_dtype(dtype)?.to_device(device)?)
        };
        let embed = take("model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            layers.push(DecoderLayer::new(cfg, spec, i, &mut take)?);
        }
        let final_norm = take("model.norm.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            take("lm_head.weight")?
        };
        let mut index = HashMap::new();
        for (l, layer) in layers.iter().enumerate() {
            for (slot, proj) in layer.projections().iter().enumerate() {
                index.insert(proj.name().to_string(), (l, slot));
            }
        }
        Ok(Self {
            config: cfg.clone(),
            spec,
            dtype,
            device: device.clone(),
            embed,
            layers,
            final_norm,
            lm_head,
            index,
            stats_enabled: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn family(&self) -> FamilySpec {
        self.spec
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Logits `[batch, seq, vocab]` (model dtype, f32 by default) for `tokens`
    /// (`[batch, seq]`, u32, `seq ≤ max_position_embeddings`). Rows of a batch must
    /// have equal length: there is no padding mask, so run sequences of different
    /// lengths one at a time.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        self.forward_with(tokens, None)
    }

    /// [`Model::forward`] with some layers' weights replaced for this call only.
    pub fn forward_with(&self, tokens: &Tensor, overlay: Option<&WeightOverlay>) -> Result<Tensor> {
        self.check_tokens(tokens)?;
        if let Some(o) = overlay {
            self.check_overlay(o)?;
        }
        let hidden = self.hidden(tokens, overlay, None, false)?;
        self.logits(&hidden)
    }

    /// The final-normed hidden states `[batch, seq, hidden]` of `tokens`, without the
    /// lm_head: for passes that only collect activation statistics. The lm_head is a
    /// large share of a small model's forward (SmolLM2-135M: a 49k × 576 matrix, ~28 M
    /// weights, against ~106 M in the blocks), wasted when the logits are dropped.
    pub fn forward_hidden(&self, tokens: &Tensor) -> Result<Tensor> {
        self.check_tokens(tokens)?;
        self.hidden(tokens, None, None, false)
    }

    /// Final-norm hidden states `[batch, seq, hidden]`. With a cache, `tokens` follow
    /// the cached positions and their keys/values are appended to it. With `grad`,
    /// every op keeps its backward (slower). Inputs are assumed checked.
    pub(crate) fn hidden(
        &self,
        tokens: &Tensor,
        overlay: Option<&WeightOverlay>,
        cache: Option<&mut Vec<LayerKv>>,
        grad: bool,
    ) -> Result<Tensor> {
        let l = tokens.dim(1)?;
        let offset = match &cache {
            Some(c) => c
                .first()
                .and_then(|kv| kv.as_ref())
                .map_or(Ok(0), |(k, _)| k.dim(2))?,
            None => 0,
        };
        let pass = Pass {
            overlay,
            record_stats: self.stats_enabled.load(Ordering::Relaxed),
            grad,
            capture: None,
        };
        let rope = RopeTables::new(&self.config, offset, l, self.dtype, &self.device)?;
        let mask = causal_mask(l, offset, self.dtype, &self.device)?;
        let mut x = self.embed(tokens)?;
        match cache {
            Some(cache) => {
                cache.resize(self.layers.len(), None);
                for (layer, kv) in self.layers.iter().zip(cache.iter_mut()) {
                    x = layer.forward(&x, &rope, mask.as_ref(), Some(kv), pass)?;
                }
            }
            None => {
                for layer in &self.layers {
                    x = layer.forward(&x, &rope, mask.as_ref(), None, pass)?;
                }
            }
        }
        rms_norm(&x, &self.final_norm, self.config.rms_norm_eps, grad)
    }

    /// Embedding rows of `tokens` (`[batch, seq]`, checked) → `[batch, seq, hidden]`.
    pub(crate) fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, l) = tokens.dims2()?;
        Ok(self
            .embed
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, l, self.config.hidden_size))?)
    }

    /// The decoder blocks, bottom to top.
    pub(crate) fn decoder_layers(&self) -> &[DecoderLayer] {
        &self.layers
    }

    /// The `[vocab, hidden]` output matrix (the embedding itself when tied).
    pub(crate) fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    /// The final RMSNorm weight.
    pub(crate) fn final_norm(&self) -> &Tensor {
        &self.final_norm
    }

    /// lm_head over hidden states `[..., hidden]` → `[..., vocab]`.
    pub(crate) fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let mut dims = hidden.dims().to_vec();
        let h = self.config.hidden_size;
        let rows = hidden.elem_count() / h;
        let y = hidden.reshape((rows, h))?.matmul(&self.lm_head.t()?)?;
        if let Some(last) = dims.last_mut() {
            *last = self.config.vocab_size;
        }
        Ok(y.reshape(dims)?)
    }

    /// Every prunable projection, in model order (layer by layer: q, k, v, o, gate,
    /// up, down).
    pub fn prunable_layers(&self) -> Vec<LayerInfo> {
        self.linears().map(PrunableLinear::info).collect()
    }

    /// Prune layer `name` in place: its stored weight becomes `W ⊙ keep` (1 = kept) and
    /// the dense values are released — the model keeps one copy of its weights and 1
    /// bit per weight, whatever the sparsity. Monotone: after a first call, `keep` may
    /// not keep a weight an earlier call pruned (an error says how many it would
    /// re-enable); repeating a mask is a no-op. Refused while a non-destructive mask
    /// ([`Model::set_mask`]) is committed on the layer: clear that first.
    pub fn prune_in_place(&self, name: &str, keep: &Mask) -> Result<()> {
        self.linear(name)?.prune_in_place(keep)
    }

    /// Replace layer `name`'s stored weight by `weight ⊙ keep` and record `keep`: a
    /// pruning step that also updated the kept weights (see
    /// [`PrunableLinear::replace_pruned`]).
    pub fn replace_pruned(&self, name: &str, weight: &Tensor, keep: &Mask) -> Result<()> {
        self.linear(name)?.replace_pruned(weight, keep)
    }

    /// The keep bits of layer `name`'s in-place pruning, `None` if it was never pruned
    /// in place. Shared, not copied: the model keeps its own handle.
    pub fn pruned_mask(&self, name: &str) -> Result<Option<Arc<Mask>>> {
        Ok(self.linear(name)?.pruned_mask())
    }

    /// Commit a non-destructive mask (`[out, in]`, any numeric dtype, only 0/1,
    /// 1 = keep) to layer `name`, or clear it with `None`. The masked weight
    /// `W ⊙ M` is computed once here and used by every later forward; the stored
    /// weight is kept unchanged (`W` is the dense weight, or `W ⊙ M_inplace` on a
    /// layer pruned in place: the two masks then combine by AND).
    pub fn set_mask(&self, name: &str, mask: Option<&Tensor>) -> Result<()> {
        self.linear(name)?.set_mask(mask)
    }

    /// The committed non-destructive mask of `name` (u8, 1 = keep), `None` when there
    /// is none. In-place pruning is reported by [`Model::pruned_mask`] instead.
    pub fn layer_mask(&self, name: &str) -> Result<Option<Tensor>> {
        Ok(self.linear(name)?.mask())
    }

    /// The stored weight `[out, in]` of layer `name`: the dense weight, or `W ⊙ M`
    /// once the layer was pruned in place. Never includes a non-destructive mask. The
    /// returned handle is not affected by later pruning (pruning replaces the stored
    /// tensor, it never writes into it).
    pub fn layer_weight(&self, name: &str) -> Result<Tensor> {
        Ok(self.linear(name)?.stored())
    }

    /// The weight a plain forward uses for `name`: `W_stored ⊙ M` with a
    /// non-destructive mask, else the stored weight.
    pub fn effective_weight(&self, name: &str) -> Result<Tensor> {
        Ok(self.linear(name)?.effective())
    }

    /// Build an overlay from candidate masks (layer name → `[out, in]` 0/1 mask): each
    /// entry becomes the full weight `W_stored ⊙ M`. Only the listed layers are
    /// copied; [`WeightOverlay::insert_mask`] avoids the copies altogether.
    pub fn overlay_from_masks<'a>(
        &self,
        masks: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    ) -> Result<WeightOverlay> {
        let mut overlay = WeightOverlay::new();
        for (name, mask) in masks {
            let layer = self.linear(name)?;
            let keep = layer.check_mask(mask)?;
            overlay.insert(name, (layer.stored() * keep)?);
        }
        Ok(overlay)
    }

    /// Turn activation statistics on or off for every later forward (all entry
    /// points, overlays and gradient passes included). Leave them off while
    /// evaluating candidates, or the statistics mix in candidate activations.
    pub fn set_stats_enabled(&self, enabled: bool) {
        self.stats_enabled.store(enabled, Ordering::Relaxed);
    }

    pub fn stats_enabled(&self) -> bool {
        self.stats_enabled.load(Ordering::Relaxed)
    }

    /// Remove and return the statistics gathered so far, one entry per layer that
    /// has seen at least one token.
    pub fn take_stats(&self) -> HashMap<String, ActivationStats> {
        self.linears()
            .filter_map(|l| l.take_stats().map(|s| (l.name().to_string(), s)))
            .collect()
    }

    /// Turn collection of the input Gram matrix `Σ xᵀx` (SparseGPT's Hessian) on or
    /// off for layer `name`, for every later forward. Off by default: it costs
    /// `in²` f64 per layer and `tokens · in²` flops per forward, so switch it on only
    /// for the layers being processed and take the result with [`Model::take_gram`].
    pub fn set_gram_enabled(&self, name: &str, enabled: bool) -> Result<()> {
        self.linear(name)?.set_gram_enabled(enabled);
        Ok(())
    }

    /// Remove and return layer `name`'s Gram matrix (`None` if no token was seen
    /// while it was on).
    pub fn take_gram(&self, name: &str) -> Result<Option<ActivationGram>> {
        Ok(self.linear(name)?.take_gram())
    }

    /// Discard the statistics gathered so far.
    pub fn reset_stats(&self) {
        for l in self.linears() {
            l.take_stats();
        }
    }

    pub(crate) fn linears(&self) -> impl Iterator<Item = &PrunableLinear> {
        self.layers.iter().flat_map(|l| l.projections().iter())
    }

    pub(crate) fn linear(&self, name: &str) -> Result<&PrunableLinear> {
        let (l, slot) = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::UnknownLayer {
                name: name.to_string(),
            })?;
        Ok(&self.layers[*l].projections()[*slot])
    }

    /// Tokens must be `[batch, seq]` u32 with `seq ≥ 1` and ids below the vocab size.
    pub(crate) fn check_tokens(&self, tokens: &Tensor) -> Result<()> {
        let (b, l) = tokens.dims2().map_err(|_| {
            ModelError::InvalidArgument(format!(
                "tokens must be [batch, seq], got shape {:?}",
                tokens.dims()
            ))
        })?;
        if tokens.dtype() != DType::U32 {
            return Err(ModelError::InvalidArgument(format!(
                "tokens must be u32, got {:?}",
                tokens.dtype()
            )));
        }
        if b == 0 || l == 0 {
            return Err(ModelError::InvalidArgument(format!(
                "tokens must be non-empty, got shape [{b}, {l}]"
            )));
        }
        self.check_len(l)?;
        let max = tokens.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        self.check_ids(&[max])
    }

    /// One forward sees at most `max_position_embeddings` positions: RoPE would
    /// extrapolate beyond it and the numbers would silently stop meaning anything.
    pub(crate) fn check_len(&self, len: usize) -> Result<()> {
        let context = self.config.max_position_embeddings;
        if len > context {
            return Err(ModelError::InvalidArgument(format!(
                "sequence of {len} tokens exceeds the model context of {context}"
            )));
        }
        Ok(())
    }

    pub(crate) fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            Some(t) => Err(ModelError::InvalidArgument(format!(
                "token id {t} is out of range for vocab size {}",
                self.config.vocab_size
            ))),
            None => Ok(()),
        }
    }

    /// Every overlay entry must name a prunable layer and match its shape (and, for a
    /// full weight, its dtype and device).
    pub(crate) fn check_overlay(&self, overlay: &WeightOverlay) -> Result<()> {
        for name in overlay.names() {
            let layer = self.linear(name)?;
            let info = layer.info();
            let expected = vec![info.out_features, info.in_features];
            let w = match overlay.entry(name) {
                Some(OverlayEntry::Weight(w)) => w,
                Some(OverlayEntry::Mask(keep)) => {
                    let actual = vec![keep.rows(), keep.cols()];
                    if actual != expected {
                        return Err(ModelError::WeightShape {
                            tensor: format!("overlay mask of {name}"),
                            expected,
                            actual,
                        });
                    }
                    continue;
                }
                None => continue,
            };
            if w.dims() != expected.as_slice() {
                return Err(ModelError::WeightShape {
                    tensor: format!("overlay weight of {name}"),
                    expected,
                    actual: w.dims().to_vec(),
                });
            }
            if !w.device().same_device(&self.device) {
                return Err(ModelError::InvalidArgument(format!(
                    "overlay weight of {name} is on {:?}, the model on {:?}",
                    w.device(),
                    self.device
                )));
            }
            if w.dtype() != self.dtype {
                return Err(ModelError::InvalidArgument(format!(
                    "overlay weight of {name} is {:?}, the model runs in {:?}",
                    w.dtype(),
                    self.dtype
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{random_weights, tiny_config};
    use crate::Architecture;

    /// The fused-kernel path (every forward) and the differentiable path (gradient
    /// importance) compute the same logits for every family.
    #[test]
    fn fused_and_differentiable_paths_agree() {
        let tokens = Tensor::new(&[[3u32, 1, 4, 1, 5, 9, 2, 6]], &Device::Cpu).unwrap();
        for arch in [
            Architecture::Llama,
            Architecture::Mistral,
            Architecture::Qwen2,
            Architecture::Qwen3,
        ] {
            let cfg = tiny_config(arch);
            let w = random_weights(&cfg, 5, &Device::Cpu).unwrap();
            let m = Model::new(&cfg, &w, &Device::Cpu).unwrap();
            let fast = m
                .logits(&m.hidden(&tokens, None, None, false).unwrap())
                .unwrap();
            let slow = m
                .logits(&m.hidden(&tokens, None, None, true).unwrap())
                .unwrap();
            let d = (fast - slow)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "{arch:?}: {d}");
        }
    }
}
