//! Sequential calibration, as the reference code does it (locuslab/wanda
//! `prune_wanda` / `prune_sparsegpt`, IST-DASLab/sparsegpt `llama_sequential`,
//! luuyin/OWL `prune_wanda_outlier`): the calibration windows are embedded once; then
//! for each block `i` in order, block `i` runs on the cached hidden states (which
//! already went through the *pruned* blocks `0..i`) while its seven linears collect
//! their statistics in that one pass, the block is pruned, and block `i` runs again
//! with its pruned weights to produce the inputs of block `i + 1`.
//!
//! Why: a later layer's statistics then describe the inputs it will really see in
//! the pruned model, and SparseGPT's weight updates compensate the errors of the
//! blocks before it. It costs two block passes per block, i.e. about two forward
//! passes of calibration in all, against one for the one-shot variant.

use std::collections::HashMap;

use candle_core::Tensor;
use model::{ActivationGram, LayerInfo, Model};

use crate::{BaselineError, Pruned, Result};

/// What a block's calibration pass collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Collect {
    /// Σx² per input column of every linear of the block (Wanda, OWL).
    SumSq,
    /// The Gram `Σ xᵀx` of each distinct input of the block (SparseGPT): q/k/v share
    /// one, gate/up share one, so four Grams per block.
    Gram,
}

/// The statistics of one block's pass, by layer name.
#[derive(Default)]
pub(crate) struct BlockStats {
    /// `name → Σx²` (`[in]`, f64), for [`Collect::SumSq`].
    pub sum_sq: HashMap<String, Tensor>,
    /// `source name → Gram`, for [`Collect::Gram`]; see [`gram_source`].
    pub grams: HashMap<String, ActivationGram>,
}

pub(crate) use model::gram_source;

/// The calibration windows embedded, in batches of up to `model::FORWARD_BATCH`
/// consecutive windows of equal length (`[batch, len, hidden]` each).
fn embed_windows(model: &Model, windows: &[Vec<u32>]) -> Result<Vec<Tensor>> {
    let windows: Vec<&Vec<u32>> = windows.iter().filter(|w| !w.is_empty()).collect();
    if windows.is_empty() {
        return Err(BaselineError::Argument(
            "calibration needs at least one non-empty token window".into(),
        ));
    }
    let mut out = Vec::new();
    let mut start = 0;
    while start < windows.len() {
        let len = windows[start].len();
        let mut end = start + 1;
        while end < windows.len() && end - start < model::FORWARD_BATCH && windows[end].len() == len
        {
            end += 1;
        }
        let flat: Vec<u32> = windows[start..end]
            .iter()
            .flat_map(|w| w.iter().copied())
            .collect();
        let tokens = Tensor::from_vec(flat, (end - start, len), model.device())?;
        out.push(model.embed_tokens(&tokens)?);
        start = end;
    }
    Ok(out)
}

/// Run block `i` (dense weights) on `hidden` with collection on, and return what it
/// collected. Collection is switched off again whatever happens.
fn collect_block(
    model: &Model,
    i: usize,
    layers: &[LayerInfo],
    hidden: &[Tensor],
    collect: Collect,
) -> Result<BlockStats> {
    let sources: Vec<String> = match collect {
        Collect::SumSq => Vec::new(),
        Collect::Gram => {
            let mut s: Vec<String> = layers.iter().map(|l| gram_source(&l.name)).collect();
            s.dedup();
            s
        }
    };
    let was = model.stats_enabled();
    model.reset_stats();
    model.set_stats_enabled(collect == Collect::SumSq);
    let pass = || -> Result<()> {
        for s in &sources {
            model.set_gram_enabled(s, true)?;
        }
        for h in hidden {
            model.forward_block(i, h, None)?;
        }
        Ok(())
    };
    let result = pass();
    model.set_stats_enabled(was);
    for s in &sources {
        model.set_gram_enabled(s, false)?;
    }
    result?;
    let mut stats = BlockStats::default();
    match collect {
        Collect::SumSq => {
            stats.sum_sq = model
                .take_stats()
                .into_iter()
                .map(|(k, s)| (k, s.sum_sq))
                .collect();
        }
        Collect::Gram => {
            for s in sources {
                let g = model.take_gram(&s)?.ok_or_else(|| {
                    BaselineError::Argument(format!("no calibration tokens reached {s}"))
                })?;
                stats.grams.insert(s, g);
            }
        }
    }
    Ok(stats)
}

/// Sequential calibration over every block of `model` (see the module docs).
/// `prune_block(i, layers, stats)` prunes block `i`'s layers from the statistics of
/// its inputs and returns their masks (and updated weights, if any); the dense model
/// is never modified: block outputs are recomputed through an overlay.
pub(crate) fn prune_sequential<F>(
    model: &Model,
    windows: &[Vec<u32>],
    collect: Collect,
    mut prune_block: F,
) -> Result<Pruned>
where
    F: FnMut(usize, &[LayerInfo], &BlockStats) -> Result<Pruned>,
{
    let mut hidden = embed_windows(model, windows)?;
    let mut out = Pruned::default();
    let blocks = model.num_blocks();
    for i in 0..blocks {
        let layers = model.block_layers(i)?;
        let stats = collect_block(model, i, &layers, &hidden, collect)?;
        let block = prune_block(i, &layers, &stats)?;
        if i + 1 < blocks {
            let overlay = block.overlay(model)?;
            for h in hidden.iter_mut() {
                *h = model.forward_block(i, h, Some(&overlay))?;
            }
        }
        out.masks.extend(block.masks);
        out.weights.extend(block.weights);
    }
    Ok(out)
}
