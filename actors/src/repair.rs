//! The Executor's weight repair (`pruning.repair = "obs"`): a candidate prunes each
//! layer its plan names from the committed mask `M` to `M' ⊆ M` with the OBS/SparseGPT
//! update of [`kernels::obs::obs_prune`] — the new pruned weights are those of lowest
//! `w² / [H⁻¹]ᵢᵢ` in each row, and the kept ones absorb their error — so the layer's
//! output on the calibration inputs moves as little as possible.
//!
//! **Which output the update preserves.** The current (committed, already repaired)
//! layer's output, on inputs that pass block by block through the candidate's own
//! repaired blocks before it: sequential calibration as `sparsegpt.py` does it, once per
//! candidate. The Grams `XᵀX` of a block's layer inputs are collected with the block's
//! committed weights (q/k/v share one input, as do gate/up), every touched layer of the
//! block is repaired, and the block is run again with its repaired weights to give the
//! next block its inputs. Aiming at the dense layer's output instead would need the
//! dense weights alongside the pruned ones (a second copy of the model, 425 MB for
//! SmolLM2-135M in f32). Measured with `model/examples/obs_gradual/main.rs` (cost
//! allocation, 0.1 steps, QuAC PPL over 30,720 tokens), re-solving each step from the
//! dense weights on the current inputs (SparseGPT's own target, `FROM_DENSE`) ends at
//! 59.02 / 106.72 / 263.18 at 50 / 60 / 70 % against 59.39 / 106.73 / 234.18 for the
//! current-output target: no gain for the memory, and worse at 70 %.
//!
//! **Cost.** Two block passes over the calibration windows per candidate (up to the last
//! touched block), one Gram per distinct input of a touched block (`in²` f64: 2.6 MB for
//! SmolLM2's 576-wide inputs, 19 MB for down_proj's 1536), at most one block's Grams
//! alive at a time, and the candidate's repaired weights of the touched layers (a full
//! tensor per layer, in the model's dtype) until the next `Apply`.

mod fit;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use kernels::obs::{hessian_factor, obs_prune, InverseHessian};
use kernels::{Mask, MaskDelta, Selection, DEFAULT_BLOCK};
use model::{gram_source, LayerInfo, Model, WeightOverlay};
use protocol::{target_reached, CandidateId, CandidateMasks, LayerDelta, Plan};

use crate::engine::{embedded_batches, Engine};
use crate::error::{ActorError, Result};
use crate::state::PruningState;

pub use fit::FitSpec;

/// A candidate's repaired layers: the full new weight (`⊙ M'`, model dtype and device)
/// and the new mask `M'` of every layer its plan touched.
#[derive(Debug)]
pub struct RepairedLayers {
    pub weights: WeightOverlay,
    pub masks: BTreeMap<String, Mask>,
}

/// Shared between the Executor (pending), the Evaluator and the Checkpointer.
pub type RepairedWeights = Arc<RepairedLayers>;

/// Bytes the Checkpointer stores for `r`: per layer a weight file of its kept values
/// ([`crate::folder::WeightFiles`]).
pub fn stored_bytes(r: &RepairedLayers) -> u64 {
    r.masks
        .values()
        .map(|m| crate::folder::weights::file_bytes(m.count_kept()))
        .sum()
}

/// Masks and repaired weights for every plan, one candidate after the other; with
/// `fit`, a candidate that reaches the target is also block-fitted ([`fit`]).
pub fn repair_all(
    engine: &Engine,
    committed: &PruningState,
    plans: Vec<(CandidateId, Plan)>,
    damp: f64,
    fit: Option<FitSpec>,
) -> Result<Vec<(CandidateMasks, RepairedWeights)>> {
    let total: u64 = engine.params().iter().sum();
    let pruned = committed.pruned()?;
    let inputs = embedded_batches(&engine.model, &engine.calib)
        .map_err(|e| ActorError::Model(format!("calibration batches: {e}")))?;
    plans
        .into_iter()
        .map(|(id, plan)| {
            let (mut deltas, newly, mut layers) =
                repair_plan(engine, committed, &plan, &inputs, damp)?;
            let sparsity_after = if total == 0 {
                0.0
            } else {
                (pruned + newly) as f64 / total as f64
            };
            if let Some(f) = fit.filter(|f| target_reached(sparsity_after, f.target_sparsity)) {
                fit::fit_candidate(engine, committed, &inputs, f.opts, &mut layers, &mut deltas)?;
            }
            let masks = CandidateMasks {
                id,
                deltas,
                newly_pruned: newly,
                sparsity_after,
                plan,
            };
            Ok((masks, Arc::new(layers)))
        })
        .collect()
}

/// One plan: per touched layer its target sparsity (committed level + δ, as the
/// masks-only path aims), then the blocks in order up to the last touched one.
fn repair_plan(
    engine: &Engine,
    committed: &PruningState,
    plan: &Plan,
    embedded: &[Tensor],
    damp: f64,
) -> Result<(Vec<LayerDelta>, u64, RepairedLayers)> {
    let model = &engine.model;
    let mut targets: BTreeMap<String, f64> = BTreeMap::new();
    for d in &plan.layer_decisions {
        let i = committed
            .index(&d.layer)
            .map_err(|_| ActorError::Kernel(format!("executor: unknown layer `{}`", d.layer)))?;
        let level = committed.mask(i)?.sparsity();
        targets.insert(d.layer.clone(), (level + d.delta.max(0.0)).min(1.0));
    }
    let blocks: Vec<Vec<LayerInfo>> = (0..model.num_blocks())
        .map(|b| model.block_layers(b))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| ActorError::Model(format!("repair: {e}")))?;
    let last = blocks
        .iter()
        .rposition(|layers| layers.iter().any(|l| targets.contains_key(&l.name)));
    let mut overlay = WeightOverlay::new();
    let mut new_masks = BTreeMap::new();
    let mut deltas: BTreeMap<String, LayerDelta> = BTreeMap::new();
    let mut newly = 0u64;
    let Some(last) = last else {
        let empty = RepairedLayers {
            weights: overlay,
            masks: new_masks,
        };
        return Ok((Vec::new(), 0, empty));
    };
    let merr = |e: model::ModelError| ActorError::Model(format!("repair: {e}"));
    let mut hidden = embedded.to_vec();
    for (b, layers) in blocks.iter().enumerate().take(last + 1) {
        let touched: Vec<&LayerInfo> = layers
            .iter()
            .filter(|l| targets.contains_key(&l.name))
            .collect();
        if !touched.is_empty() {
            let factors = block_factors(model, b, &hidden, &touched, damp)?;
            for l in touched {
                let i = committed.index(&l.name)?;
                let current = committed.mask(i)?;
                let factor = &factors[&gram_source(&l.name)];
                let (w, mask) = repair_layer(model, l, factor, &current, targets[&l.name])?;
                let delta = MaskDelta::between(&current, &mask)
                    .map_err(|e| ActorError::Kernel(format!("repair `{}`: {e}", l.name)))?;
                newly += delta.len() as u64;
                deltas.insert(
                    l.name.clone(),
                    LayerDelta {
                        layer: l.name.clone(),
                        bytes: delta.to_bytes(),
                    },
                );
                overlay.insert(l.name.clone(), w);
                new_masks.insert(l.name.clone(), mask);
            }
        }
        if b < last {
            hidden = hidden
                .iter()
                .map(|h| model.forward_block(b, h, Some(&overlay)))
                .collect::<std::result::Result<_, _>>()
                .map_err(merr)?;
        }
    }
    // Deltas in the plan's order (as the plan lists its layers).
    let ordered = plan
        .layer_decisions
        .iter()
        .filter_map(|d| deltas.remove(&d.layer))
        .collect();
    let layers = RepairedLayers {
        weights: overlay,
        masks: new_masks,
    };
    Ok((ordered, newly, layers))
}

/// One pass of block `b` (committed weights) over `hidden` with Grams on the inputs
/// the touched layers read; each Gram factored for the OBS sweep.
fn block_factors(
    model: &Model,
    b: usize,
    hidden: &[Tensor],
    touched: &[&LayerInfo],
    damp: f64,
) -> Result<BTreeMap<String, InverseHessian>> {
    let sources: Vec<String> = touched.iter().map(|l| gram_source(&l.name)).collect();
    block_grams(model, b, hidden, sources)?
        .0
        .into_iter()
        .map(|(s, g)| {
            let factor = hessian_factor(&g.values, g.tokens, g.cols, damp)
                .map_err(|e| ActorError::Kernel(format!("repair Hessian `{s}`: {e}")))?;
            Ok((s, factor))
        })
        .collect()
}

/// One input Gram `Σ xᵀx` (row-major `[cols, cols]`, f64) over `tokens` tokens.
pub(crate) struct Gram {
    pub values: Vec<f64>,
    pub tokens: u64,
    pub cols: usize,
}

/// Run block `b` (committed weights) on each of `hidden` with Grams on for `sources`
/// (layer names as [`gram_source`] gives them; duplicates are fine) and return them
/// with the block's outputs (the next block's inputs when the weights stay as they
/// are). Statistics, when on, are recorded as in a forward.
pub(crate) fn block_grams(
    model: &Model,
    b: usize,
    hidden: &[Tensor],
    mut sources: Vec<String>,
) -> Result<(BTreeMap<String, Gram>, Vec<Tensor>)> {
    let merr = |e: model::ModelError| ActorError::Model(format!("block {b} Grams: {e}"));
    sources.sort();
    sources.dedup();
    for s in &sources {
        model.set_gram_enabled(s, true).map_err(merr)?;
    }
    let pass: std::result::Result<Vec<_>, _> = hidden
        .iter()
        .map(|h| model.forward_block(b, h, None))
        .collect();
    for s in &sources {
        model.set_gram_enabled(s, false).map_err(merr)?;
    }
    let outputs = pass.map_err(merr)?;
    let mut grams = BTreeMap::new();
    for s in sources {
        let gram = model
            .take_gram(&s)
            .map_err(merr)?
            .ok_or_else(|| ActorError::Model(format!("no Gram for `{s}`")))?;
        let cols = gram
            .gram
            .dim(0)
            .map_err(|e| ActorError::Model(e.to_string()))?;
        let values: Vec<f64> = gram
            .gram
            .to_dtype(DType::F64)
            .and_then(|g| g.flatten_all())
            .and_then(|g| g.to_vec1())
            .map_err(|e| ActorError::Model(format!("Gram `{s}`: {e}")))?;
        let tokens = gram.tokens;
        grams.insert(
            s,
            Gram {
                values,
                tokens,
                cols,
            },
        );
    }
    Ok((grams, outputs))
}

/// The OBS sweep of one layer from its committed weight and mask to `target`; the new
/// weight in the model's dtype and on its device, and the new mask.
fn repair_layer(
    model: &Model,
    layer: &LayerInfo,
    factor: &InverseHessian,
    current: &Mask,
    target: f64,
) -> Result<(Tensor, Mask)> {
    let name = &layer.name;
    let err = |e: &dyn std::fmt::Display| ActorError::Kernel(format!("repair `{name}`: {e}"));
    let stored = model.layer_weight(name).map_err(|e| err(&e))?;
    let mut w: Vec<f32> = stored
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .map_err(|e| err(&e))?;
    let mask = obs_prune(
        &mut w,
        factor,
        current,
        target,
        DEFAULT_BLOCK,
        Selection::PerRow,
    )
    .map_err(|e| err(&e))?;
    let shape = (layer.out_features, layer.in_features);
    let t = Tensor::from_vec(w, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(stored.dtype()))
        .and_then(|t| t.to_device(stored.device()))
        .map_err(|e| err(&e))?;
    Ok((t, mask))
}
