//! The block fit of the candidate that reaches the target (`[pruning.reconstruct]`).
//!
//! The OBS update keeps each layer's own output on its own inputs; it cannot see how a
//! block's seven projections' errors combine through attention and SwiGLU, nor undo
//! what earlier blocks already lost. After the OBS repair, every block's kept weights
//! are fitted by Adam ([`Model::reconstruct_block`]) so that the block's output on the
//! candidate's inputs (the calibration pool through the candidate's own, already
//! fitted blocks) approaches the dense block's output on the dense inputs
//! ([`Engine::dense_outputs`]). The masks do not change: pruned weights stay zero.
//!
//! **Why only at the target.** Measured with `model/examples/obs_gradual/` (SmolLM2-135M,
//! one-shot OBS at 50 %, QuAC PPL over 30,720 tokens): 63.76 → 58.75 after one epoch at
//! lr 4e-4. A fit costs one forward and one backward of every block per batch, so the
//! loop pays it once, on the candidate that ends the run; a rolled-back final
//! candidate takes its fit with it.
//!
//! **Cost.** The dense block outputs (`blocks × windows × seq × hidden` values in the
//! model's dtype: 283 MB for SmolLM2-135M's 16 × 256 calibration pool, f32) are held for
//! the whole run; the fitted candidate carries every prunable layer's weight (one more
//! copy of the prunable weights until its commit), and its checkpoint stores all of
//! them.

use candle_core::Tensor;
use kernels::{Mask, MaskDelta};
use model::{BlockWeight, ReconstructOptions};
use protocol::LayerDelta;

use super::RepairedLayers;
use crate::engine::Engine;
use crate::error::{ActorError, Result};
use crate::state::PruningState;

/// `[pruning.reconstruct]` as the Executor applies it.
#[derive(Debug, Clone, Copy)]
pub struct FitSpec {
    pub opts: ReconstructOptions,
    /// The run's `pruning.target_sparsity`: a candidate that reaches it is fitted.
    pub target_sparsity: f64,
}

/// Summed per-token calibration error of the blocks before and after their fit, and
/// how many blocks kept the fitted weights (logged).
#[derive(Debug, Clone, Copy, Default)]
struct FitStats {
    loss_before: f64,
    loss_after: f64,
    blocks_fitted: usize,
}

/// Fits every block of a repaired candidate (`layers`, with its `deltas`) to the dense
/// block outputs, starting from the `embedded` calibration batches. A block whose error did not fall keeps its weights; the layers of a
/// fitted block that the plan did not touch join `layers` with their committed mask and
/// an empty delta, so commit, checkpoint and resume carry their new weights like any
/// other.
pub(super) fn fit_candidate(
    engine: &Engine,
    committed: &PruningState,
    embedded: &[Tensor],
    opts: ReconstructOptions,
    layers: &mut RepairedLayers,
    deltas: &mut Vec<LayerDelta>,
) -> Result<()> {
    let model = &engine.model;
    let targets = engine.dense_outputs.as_ref().ok_or_else(|| {
        ActorError::Model("block fit: the dense block outputs were not computed".into())
    })?;
    let merr = |e: model::ModelError| ActorError::Model(format!("block fit: {e}"));
    let mut hidden = embedded.to_vec();
    let mut stats = FitStats::default();
    for (b, target) in targets.iter().enumerate() {
        let (weights, masks) = block_weights(engine, committed, b, layers)?;
        let (fitted, s) = model
            .reconstruct_block(b, &hidden, target, &weights, opts)
            .map_err(merr)?;
        tracing::debug!(
            block = b,
            before = s.loss_before,
            after = s.loss_after,
            "block fit"
        );
        stats.loss_before += s.loss_before;
        if s.loss_after < s.loss_before {
            stats.loss_after += s.loss_after;
            stats.blocks_fitted += 1;
            for ((w, mask), new) in weights.into_iter().zip(masks).zip(fitted) {
                if !layers.masks.contains_key(&w.name) {
                    deltas.push(unchanged(&w.name, &mask)?);
                    layers.masks.insert(w.name.clone(), mask);
                }
                layers.weights.insert(w.name, new);
            }
        } else {
            stats.loss_after += s.loss_before;
        }
        hidden = hidden
            .iter()
            .map(|h| model.forward_block(b, h, Some(&layers.weights)))
            .collect::<std::result::Result<_, _>>()
            .map_err(merr)?;
    }
    tracing::info!(
        before = stats.loss_before,
        after = stats.loss_after,
        blocks = stats.blocks_fitted,
        "block fit of the final candidate"
    );
    Ok(())
}

/// Block `b`'s projections as the candidate has them (its repaired weight and new mask
/// where it touched the layer, the committed ones elsewhere), and their masks.
fn block_weights(
    engine: &Engine,
    committed: &PruningState,
    b: usize,
    layers: &RepairedLayers,
) -> Result<(Vec<BlockWeight>, Vec<Mask>)> {
    let model = &engine.model;
    let infos = model
        .block_layers(b)
        .map_err(|e| ActorError::Model(format!("block fit: {e}")))?;
    infos
        .iter()
        .map(|l| {
            let err = |e: &dyn std::fmt::Display| {
                ActorError::Model(format!("block fit `{}`: {e}", l.name))
            };
            let mask = match layers.masks.get(&l.name) {
                Some(m) => m.clone(),
                None => (*committed.mask(committed.index(&l.name)?)?).clone(),
            };
            let weight = match layers.weights.get(&l.name) {
                Some(w) => w.clone(),
                None => model.layer_weight(&l.name).map_err(|e| err(&e))?,
            };
            let keep = mask
                .to_tensor(weight.dtype(), weight.device())
                .map_err(|e| err(&e))?;
            let w = BlockWeight {
                name: l.name.clone(),
                weight,
                keep,
            };
            Ok((w, mask))
        })
        .collect::<Result<Vec<_>>>()
        .map(|pairs| pairs.into_iter().unzip())
}

/// An empty delta: the layer's weights change, its mask does not.
fn unchanged(name: &str, mask: &Mask) -> Result<LayerDelta> {
    let bytes = MaskDelta::between(mask, mask)
        .map_err(|e| ActorError::Kernel(format!("block fit `{name}`: {e}")))?
        .to_bytes();
    Ok(LayerDelta {
        layer: name.to_string(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use protocol::{LayerDecision, Plan};

    use super::*;
    use crate::repair::repair_all;
    use crate::testing::{fixture_config, write_fixture};

    fn engine(dir: &std::path::Path) -> Arc<Engine> {
        let fx = write_fixture(dir, 5, 16, 48).unwrap();
        let mut cfg = fixture_config(&fx, &dir.join("runs"));
        cfg.pruning.repair = config::Repair::Obs;
        cfg.pruning.reconstruct.epochs = 1;
        Arc::new(Engine::load(&cfg).unwrap())
    }

    /// Σ |a − b|.
    fn abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.sum_all())
            .and_then(|d| d.to_scalar())
            .unwrap()
    }

    fn plan(layer: &str) -> Vec<(u32, Plan)> {
        let plan = Plan {
            reasoning: String::new(),
            stop_pruning: false,
            layer_decisions: vec![LayerDecision {
                layer: layer.to_string(),
                delta: 0.3,
            }],
        };
        vec![(0, plan)]
    }

    #[test]
    fn a_candidate_at_the_target_is_fitted_and_carries_every_layer_of_the_fitted_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        let committed = PruningState::new(engine.clone());
        let first = engine.layers[0].name.clone();
        let spec = |target| FitSpec {
            opts: ReconstructOptions {
                epochs: 3,
                lr: 1e-5,
            },
            target_sparsity: target,
        };
        // A step far too large for the fixture's small weights raises every block's
        // error: no block keeps its fit, the candidate is the OBS repair alone.
        let wild = FitSpec {
            opts: ReconstructOptions {
                epochs: 3,
                lr: 1e-1,
            },
            target_sparsity: 0.001,
        };
        // Far from the target: the OBS repair alone, one layer.
        let (plain, plain_w) = repair_all(&engine, &committed, plan(&first), 0.01, Some(spec(0.9)))
            .unwrap()
            .remove(0);
        assert_eq!(plain.deltas.len(), 1);
        assert_eq!(plain_w.masks.len(), 1);
        let (unfit, unfit_w) = repair_all(&engine, &committed, plan(&first), 0.01, Some(wild))
            .unwrap()
            .remove(0);
        assert_eq!(unfit.deltas, plain.deltas);
        assert_eq!(unfit_w.masks.len(), 1);
        let same = abs_diff(
            unfit_w.weights.get(&first).unwrap(),
            plain_w.weights.get(&first).unwrap(),
        );
        assert_eq!(same, 0.0, "a block kept a fit that raised its error");
        // At the target (the same plan): every layer of every fitted block travels.
        let (fitted, fitted_w) =
            repair_all(&engine, &committed, plan(&first), 0.01, Some(spec(0.001)))
                .unwrap()
                .remove(0);
        assert_eq!(
            fitted.deltas[0].layer, first,
            "the plan's delta comes first"
        );
        assert_eq!(fitted.deltas[0].bytes, plain.deltas[0].bytes, "same mask");
        assert_eq!(fitted.newly_pruned, plain.newly_pruned);
        assert!(
            fitted.deltas.len() > 1,
            "no block was fitted: {:?}",
            fitted.deltas.len()
        );
        let pruned_w: f32 = fitted_w
            .weights
            .get(&first)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .zip(fitted_w.masks[&first].to_bools())
            .map(|(w, keep)| if keep { 0.0 } else { w.abs() })
            .sum();
        assert_eq!(pruned_w, 0.0, "a pruned weight came back");
        for d in &fitted.deltas[1..] {
            // Untouched layers: an empty delta (their mask stays all-kept) but new weights.
            let delta = MaskDelta::from_bytes(&d.bytes).unwrap();
            assert_eq!(delta.len(), 0, "{}", d.layer);
            assert_eq!(fitted_w.masks[&d.layer].count_pruned(), 0, "{}", d.layer);
            let stored = engine.model.layer_weight(&d.layer).unwrap();
            let new = fitted_w.weights.get(&d.layer).unwrap();
            let moved = abs_diff(new, &stored);
            assert!(moved > 0.0, "{} was not fitted", d.layer);
        }
    }
}
