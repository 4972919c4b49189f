//! OWL (outlier-weighted layerwise sparsity, Yin et al. 2024): a block whose Wanda
//! scores hold more outliers (scores above `M` × the block mean) keeps more weights.
//! The outlier ratios are min-max normalised to `[0, 2λ]`, centred, and subtracted from
//! the target, so every block's sparsity lies within `target ± 2λ`, the spread between
//! blocks is at most `2λ`, and the mean over blocks (equal parameter counts) is the
//! target. Inside a block, Wanda prunes each row to the block's sparsity.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use model::Model;

use crate::{BaselineError, Result};

/// OWL's two hyper-parameters (paper defaults M = 5, λ = 0.08).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OwlOptions {
    /// Outlier threshold M: a score above `M × mean` of its block is an outlier.
    pub threshold: f64,
    /// λ: half the allowed spread of block sparsities.
    pub lambda: f64,
}

impl Default for OwlOptions {
    fn default() -> Self {
        Self {
            threshold: 5.0,
            lambda: 0.08,
        }
    }
}

/// Per-block sparsities chosen by OWL.
#[derive(Debug, Clone)]
pub struct OwlAllocation {
    /// Sparsity of block `i` (decoder layer `model.layers.i`).
    pub blocks: Vec<f64>,
    /// Outlier ratio of block `i`.
    pub outlier_ratios: Vec<f64>,
}

impl OwlAllocation {
    /// Sparsity of the block a layer name (`model.layers.{i}.…`) belongs to.
    pub fn for_layer(&self, name: &str) -> Option<f64> {
        block_of(name).and_then(|i| self.blocks.get(i).copied())
    }
}

fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Fraction of `scores` above `threshold × mean(scores)`.
pub fn outlier_ratio(scores: &[f32], threshold: f64) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    let mean = scores.iter().map(|&s| f64::from(s)).sum::<f64>() / scores.len() as f64;
    let cut = threshold * mean;
    scores.iter().filter(|&&s| f64::from(s) > cut).count() as f64 / scores.len() as f64
}

/// Block sparsities from outlier ratios (see module docs). Errors when some block would
/// leave `[0, 1]`, since clamping it would move the mean off the target.
pub fn allocate(ratios: &[f64], target: f64, lambda: f64) -> Result<Vec<f64>> {
    if ratios.is_empty() {
        return Err(BaselineError::Argument("OWL: no blocks".into()));
    }
    let (lo, hi) = ratios
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &r| {
            (a.min(r), b.max(r))
        });
    let scaled: Vec<f64> = ratios
        .iter()
        .map(|&r| {
            if hi > lo {
                (r - lo) / (hi - lo) * 2.0 * lambda
            } else {
                0.0
            }
        })
        .collect();
    let mean = scaled.iter().sum::<f64>() / scaled.len() as f64;
    let out: Vec<f64> = scaled.iter().map(|&a| target - (a - mean)).collect();
    if let Some(bad) = out.iter().find(|s| !(0.0..=1.0).contains(*s)) {
        return Err(BaselineError::Argument(format!(
            "OWL: λ = {lambda} puts a block at sparsity {bad:.3} for target {target}; use a smaller λ"
        )));
    }
    Ok(out)
}

/// OWL allocation for `model` from calibration statistics (`name → Σx²`).
pub fn owl_allocation(
    model: &Model,
    stats: &HashMap<String, Tensor>,
    target: f64,
    opts: &OwlOptions,
) -> Result<OwlAllocation> {
    let blocks = model.config().num_hidden_layers;
    let mut scores: Vec<Vec<f32>> = vec![Vec::new(); blocks];
    for layer in model.prunable_layers() {
        let b = block_of(&layer.name)
            .filter(|&b| b < blocks)
            .ok_or_else(|| {
                BaselineError::Argument(format!("OWL: no block index in {}", layer.name))
            })?;
        let sq = stats.get(&layer.name).ok_or_else(|| {
            BaselineError::Argument(format!("no calibration statistics for {}", layer.name))
        })?;
        let s =
            kernels::wanda_scores(&model.layer_weight(&layer.name)?, &sq.to_dtype(DType::F32)?)?;
        scores[b].extend(s.flatten_all()?.to_vec1::<f32>()?);
    }
    let outlier_ratios: Vec<f64> = scores
        .iter()
        .map(|s| outlier_ratio(s, opts.threshold))
        .collect();
    let blocks = allocate(&outlier_ratios, target, opts.lambda)?;
    Ok(OwlAllocation {
        blocks,
        outlier_ratios,
    })
}
