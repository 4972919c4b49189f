//! Measured cost of the next δ of every layer (`pruning.layer_costs`), for allocation by
//! equal marginal cost (issue 15, item 3).
//!
//! A layer's cost of pruning `S` more weights is estimated in loss units: for each
//! output row `j`, `½·F_j · Σ_{i∈S_j} w_ji² / [H⁻¹]_ii`, with `H` the per-token Gram of
//! the layer's inputs on the calibration windows (damped as the repair damps it) and
//! `F_j` the layer's output Fisher (mean over tokens of the squared gradient of the
//! token's own loss with respect to output `j`, from `Model::gradient_profile`). This is
//! the OBS error of removing those weights with the repair's update, turned into an
//! expected loss rise by a Kronecker-factored Fisher with a diagonal output factor (as
//! in LLM Surgeon). Masks only (`repair = "none"`), nothing absorbs the error and the
//! key is `w_ji²·H_ii`, the square of the per-row Wanda score the Executor ranks by.
//!
//! Raw OBS saliencies are not comparable across layers — an output error in a q_proj
//! and in a down_proj do not cost the loss alike — and allocating by them was measured
//! far worse than uniform (2.70× against 2.09× the dense QuAC PPL at 50 % on
//! SmolLM2-135M, `model/examples/obs_gradual/main.rs`); weighted by the output Fisher the
//! same greedy allocation beat uniform (1.98×).
//!
//! One blockwise pass over the activation windows: block by block, the Grams of the
//! block's distinct inputs (one block's at a time), then the block's curves. The
//! activation statistics the Profiler needs are recorded by the same pass.

use std::collections::HashMap;

use candle_core::DType;
use config::Repair;
use kernels::obs::{hessian_factor, obs_saliency_weighted};
use kernels::Mask;
use model::{gram_source, Model};
use protocol::{COST_POINTS, COST_STEP};

use crate::engine::{embedded_batches, Engine};
use crate::error::{ActorError, Result};
use crate::repair::{block_grams, Gram};

/// How the curves are measured.
#[derive(Debug, Clone, Copy)]
pub struct CostSpec {
    pub repair: Repair,
    pub damp: f64,
}

/// Cost curve of every prunable layer ([`protocol::LayerProfile::cost`]) for the
/// model's committed state, on `samples`, with output Fishers `fisher` (a layer
/// missing from it gets no curve). Records activation statistics where they are on.
pub fn measure(
    engine: &Engine,
    samples: &[Vec<u32>],
    fisher: &HashMap<String, Vec<f64>>,
    spec: CostSpec,
) -> Result<HashMap<String, Vec<f64>>> {
    let model = &engine.model;
    let merr = |e: model::ModelError| ActorError::Model(format!("layer costs: {e}"));
    let mut hidden = embedded_batches(model, samples).map_err(merr)?;
    let deltas: Vec<f64> = (1..=COST_POINTS).map(|k| k as f64 * COST_STEP).collect();
    let mut curves = HashMap::new();
    for b in 0..model.num_blocks() {
        let layers = model.block_layers(b).map_err(merr)?;
        let sources = layers.iter().map(|l| gram_source(&l.name)).collect();
        // The block's weights stay as they are: its outputs feed the next block.
        let (grams, outputs) = block_grams(model, b, &hidden, sources)?;
        hidden = outputs;
        let keys = grams
            .iter()
            .map(|(s, g)| Ok((s.clone(), inverse_key(g, spec)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        drop(grams);
        for l in &layers {
            let Some(f) = fisher.get(&l.name) else {
                continue;
            };
            let curve = layer_curve(model, &l.name, &keys[&gram_source(&l.name)], f, &deltas)?;
            curves.insert(l.name.clone(), curve);
        }
    }
    Ok(curves)
}

/// The denominator of each input's key, `w²/d_i`: `[H⁻¹]_ii` of the damped per-token
/// Hessian with the repair, `1/H_ii` without (dead inputs: infinite, so key 0).
fn inverse_key(g: &Gram, spec: CostSpec) -> Result<Vec<f64>> {
    match spec.repair {
        Repair::Obs => Ok(hessian_factor(&g.values, g.tokens, g.cols, spec.damp)
            .map_err(|e| ActorError::Kernel(format!("layer costs: {e}")))?
            .hinv_diag()
            .to_vec()),
        Repair::None => {
            let n = g.tokens.max(1) as f64;
            Ok((0..g.cols).map(|i| n / g.values[i * g.cols + i]).collect())
        }
    }
}

/// One layer's curve from its committed weight and keep bits.
fn layer_curve(
    model: &Model,
    name: &str,
    inverse: &[f64],
    fisher: &[f64],
    deltas: &[f64],
) -> Result<Vec<f64>> {
    let err = |e: &dyn std::fmt::Display| ActorError::Model(format!("layer costs `{name}`: {e}"));
    let w: Vec<f32> = model
        .layer_weight(name)
        .and_then(|t| Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?))
        .map_err(|e| err(&e))?;
    let (rows, cols) = (fisher.len(), inverse.len());
    let mask = match model.pruned_mask(name).map_err(|e| err(&e))? {
        Some(m) => (*m).clone(),
        None => Mask::ones(rows, cols),
    };
    let half: Vec<f64> = fisher.iter().map(|f| 0.5 * f).collect();
    obs_saliency_weighted(&w, inverse, &mask, deltas, &half).map_err(|e| err(&e))
}
