//! Mask-only methods layer by layer: magnitude and Wanda scores, per row, per layer
//! or N:M. Shared by the one-shot and the sequential drivers, which differ only in
//! where the Σx² statistics come from.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use kernels::Mask;
use model::{LayerInfo, Model};

use crate::{BaselineError, Pruned, Result};

/// Which weights of a layer go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rule {
    /// This fraction of every output row (Wanda's comparison group).
    Rows(f64),
    /// This fraction of the whole layer.
    Layer(f64),
    /// N of every M consecutive weights of a row.
    NM(usize, usize),
}

fn mask_for(scores: &Tensor, rows: usize, cols: usize, rule: Rule) -> Result<Mask> {
    let ones = Mask::ones(rows, cols);
    Ok(match rule {
        Rule::Rows(s) => kernels::prune_rows_incremental(scores, &ones, s)?,
        Rule::Layer(s) => kernels::prune_layer_incremental(scores, &ones, s)?,
        Rule::NM(n, m) => kernels::nm_mask(scores, n, m)?,
    })
}

/// Magnitude scores |W| for every layer in `layers`.
pub(crate) fn magnitude(model: &Model, layers: &[LayerInfo], rule: Rule) -> Result<Pruned> {
    let mut out = Pruned::default();
    for l in layers {
        let scores = kernels::magnitude_scores(&model.layer_weight(&l.name)?)?;
        let mask = mask_for(&scores, l.out_features, l.in_features, rule)?;
        out.masks.insert(l.name.clone(), mask);
    }
    Ok(out)
}

/// Wanda scores |W|·‖X_j‖₂ from `sum_sq` (`name → Σx²`), the rule chosen per layer
/// name by `rule_of` (OWL gives each block its own sparsity).
pub(crate) fn wanda(
    model: &Model,
    layers: &[LayerInfo],
    sum_sq: &HashMap<String, Tensor>,
    rule_of: impl Fn(&str) -> Rule,
) -> Result<Pruned> {
    let mut out = Pruned::default();
    for l in layers {
        let sq = sum_sq.get(&l.name).ok_or_else(|| {
            BaselineError::Argument(format!("no calibration statistics for {}", l.name))
        })?;
        let w = model.layer_weight(&l.name)?;
        let scores = kernels::wanda_scores(&w, &sq.to_dtype(DType::F32)?)?;
        let mask = mask_for(&scores, l.out_features, l.in_features, rule_of(&l.name))?;
        out.masks.insert(l.name.clone(), mask);
    }
    Ok(out)
}
