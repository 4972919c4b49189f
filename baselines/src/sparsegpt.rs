//! SparseGPT (Frantar & Alistarh 2023): prune a layer column block by column block,
//! choosing weights by `w² / [H⁻¹]ᵢᵢ²` and updating the remaining weights of each row
//! with the optimal brain surgeon correction, so the layer output `W X` moves as
//! little as possible. `H = XᵀX / n + δ·I` with δ = 1 % of the mean diagonal; the
//! upper Cholesky factor `U` of `H⁻¹` (`UᵀU = H⁻¹`) supplies every update, as in the
//! reference `sparsegpt.py`. The reference's `H = 2XXᵀ/n` (a running average over
//! samples) differs from ours by a constant factor only, and since the damping is
//! relative to the mean diagonal, the factor cancels out of every mask and update.
//! The reference computes in f32; we accumulate the Gram and factor in f64.
//!
//! Layout: `w` is `[rows, cols]` row-major f64. Given the block masks, every row is
//! independent (its updates only read `U`), so rows run in parallel. The unstructured
//! mask of a block is chosen over the whole `[rows × block]` tile at the block start,
//! as the reference's `prunen == 0` path (exactly `round(rows · block_cols ·
//! sparsity)` weights, ties by flat index; the reference prunes every weight up to
//! and including the sorted tile's element `int(n · sparsity)`, i.e. one more, plus
//! ties); N:M masks are
//! chosen per row in each group of M columns, just before the group is processed.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor};
use kernels::Mask;
use model::{ActivationGram, LayerInfo, Model};
use rayon::prelude::*;

use crate::sequential::{self, gram_source, Collect};
use crate::{BaselineError, Pruned, Result};

/// Dampening, block size and the memory allowed for Gram matrices at once.
#[derive(Debug, Clone)]
pub struct SparseGptOptions {
    /// Fraction of the mean Hessian diagonal added to the diagonal (1 %).
    pub damp: f64,
    /// Columns per block (128).
    pub block: usize,
    /// Gram matrices (f64) collected in one calibration pass, in bytes; more blocks
    /// than fit are processed in several passes.
    pub gram_budget_bytes: usize,
}

impl Default for SparseGptOptions {
    fn default() -> Self {
        Self {
            damp: 0.01,
            block: 128,
            gram_budget_bytes: 512 << 20,
        }
    }
}

/// In-place lower Cholesky factor of the symmetric `n × n` matrix `a` (row-major);
/// the strict upper triangle is zeroed. The kernels crate's factorisation, with this
/// crate's error.
pub fn cholesky(a: &mut [f64], n: usize) -> Result<()> {
    kernels::obs::cholesky_lower(a, n).map_err(|e| BaselineError::Numerics(e.to_string()))
}

/// Upper Cholesky factor `U` of `H⁻¹` (`UᵀU = H⁻¹`) for the damped Gram `h`.
pub fn inverse_hessian_factor(mut h: Vec<f64>, n: usize) -> Result<Vec<f64>> {
    cholesky(&mut h, n)?;
    // X = L⁻¹ column by column (forward substitution on unit vectors).
    let cols: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|j| {
            let mut x = vec![0.0; n];
            for i in j..n {
                let row = &h[i * n..(i + 1) * n];
                let s: f64 = (j..i).map(|k| row[k] * x[k]).sum();
                x[i] = (if i == j { 1.0 } else { 0.0 } - s) / row[i];
            }
            x
        })
        .collect();
    // H⁻¹ = XᵀX; cols[j] is column j of X, so (XᵀX)[a][b] = Σ_k X[k][a] X[k][b].
    let mut x = vec![0.0; n * n];
    for (j, c) in cols.iter().enumerate() {
        for (i, v) in c.iter().enumerate() {
            x[i * n + j] = *v;
        }
    }
    let xt = Tensor::from_vec(x, (n, n), &candle_core::Device::Cpu)?;
    let mut hinv: Vec<f64> = xt.t()?.matmul(&xt)?.flatten_all()?.to_vec1()?;
    cholesky(&mut hinv, n)?;
    // U = Lᵀ.
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = hinv[i * n + j];
        }
    }
    Ok(u)
}

/// Damped `H = gram / tokens + δ I`; dead inputs (zero diagonal) get `H_ii = 1` and
/// their weights are zeroed, as in the reference implementation.
fn damped_hessian(gram: &[f64], tokens: u64, n: usize, w: &mut [f64], damp: f64) -> Vec<f64> {
    let scale = 1.0 / tokens.max(1) as f64;
    let mut h: Vec<f64> = gram.iter().map(|v| v * scale).collect();
    for i in 0..n {
        if h[i * n + i] == 0.0 {
            h[i * n + i] = 1.0;
            w.chunks_mut(n).for_each(|row| row[i] = 0.0);
        }
    }
    let mean_diag = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    for i in 0..n {
        h[i * n + i] += damp * mean_diag;
    }
    h
}

/// Prune one layer in place. `w` `[rows, cols]`, `u` from [`inverse_hessian_factor`].
/// Returns the kept flags (row-major); pruned entries of `w` are exactly 0.
pub fn prune_layer(
    w: &mut [f64],
    rows: usize,
    cols: usize,
    u: &[f64],
    sparsity: f64,
    nm: Option<(usize, usize)>,
    block: usize,
) -> Result<Vec<bool>> {
    if let Some((n, m)) = nm {
        if n == 0 || n >= m || !cols.is_multiple_of(m) || !block.is_multiple_of(m) {
            return Err(BaselineError::Argument(format!(
                "SparseGPT {n}:{m}: needs 0 < N < M with M dividing the {cols} columns and the block {block}"
            )));
        }
    }
    let mut kept = vec![true; rows * cols];
    let diag: Vec<f64> = (0..cols).map(|i| u[i * cols + i]).collect();
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + block).min(cols);
        let count = i2 - i1;
        if nm.is_none() {
            // Lowest w²/d² in the block over all rows, ties by flat index.
            let mut keys: Vec<(f64, usize)> = (0..rows)
                .flat_map(|r| (i1..i2).map(move |c| (r, c)))
                .map(|(r, c)| (w[r * cols + c].powi(2) / diag[c].powi(2), r * cols + c))
                .collect();
            let k = ((rows * count) as f64 * sparsity).round() as usize;
            if k > 0 {
                keys.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                for &(_, i) in &keys[..k] {
                    kept[i] = false;
                }
            }
        }
        w.par_chunks_mut(cols)
            .zip(kept.par_chunks_mut(cols))
            .for_each(|(row, keep)| {
                let mut err = vec![0.0; count];
                for i in i1..i2 {
                    if let Some((n, m)) = nm {
                        if (i - i1) % m == 0 {
                            let mut g: Vec<(f64, usize)> = (i..i + m)
                                .map(|c| (row[c].powi(2) / diag[c].powi(2), c))
                                .collect();
                            g.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                            for &(_, c) in &g[..n] {
                                keep[c] = false;
                            }
                        }
                    }
                    let wv = row[i];
                    let q = if keep[i] { wv } else { 0.0 };
                    let e = (wv - q) / diag[i];
                    let urow = &u[i * cols..(i + 1) * cols];
                    for j in i..i2 {
                        row[j] -= e * urow[j];
                    }
                    row[i] = q;
                    err[i - i1] = e;
                }
                // Lazy update of the columns after the block.
                for (k, e) in err.iter().enumerate() {
                    if *e != 0.0 {
                        let urow = &u[(i1 + k) * cols..(i1 + k + 1) * cols];
                        for j in i2..cols {
                            row[j] -= e * urow[j];
                        }
                    }
                }
            });
        i1 = i2;
    }
    Ok(kept)
}

/// SparseGPT on `layers` from their inputs' Grams (`source name → Gram`, see
/// [`gram_source`]): one inverse Hessian factor per distinct input, then
/// [`prune_layer`] on each layer. Returns masks and updated weights (model dtype).
fn prune_with_grams(
    model: &Model,
    layers: &[LayerInfo],
    grams: &HashMap<String, ActivationGram>,
    sparsity: f64,
    nm: Option<(usize, usize)>,
    opts: &SparseGptOptions,
) -> Result<Pruned> {
    let mut out = Pruned::default();
    let mut factors: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for l in layers {
        let src = gram_source(&l.name);
        let g = grams
            .get(&src)
            .ok_or_else(|| BaselineError::Argument(format!("no calibration Gram for {src}")))?;
        let (rows, cols) = (l.out_features, l.in_features);
        let mut w: Vec<f64> = model
            .layer_weight(&l.name)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        let gram: Vec<f64> = g.gram.flatten_all()?.to_vec1()?;
        let h = damped_hessian(&gram, g.tokens, cols, &mut w, opts.damp);
        if !factors.contains_key(&src) {
            factors.insert(src.clone(), inverse_hessian_factor(h, cols)?);
        }
        let kept = prune_layer(&mut w, rows, cols, &factors[&src], sparsity, nm, opts.block)?;
        out.masks
            .insert(l.name.clone(), Mask::from_bools(rows, cols, &kept)?);
        // In the model's dtype: an overlay weight must match it (bf16 on a GPU).
        let t = Tensor::from_vec(w, (rows, cols), model.device())?.to_dtype(model.dtype())?;
        out.weights.insert(l.name.clone(), t);
    }
    Ok(out)
}

/// SparseGPT with sequential calibration (the default `sparsegpt`): each block's
/// Grams come from inputs that passed through the already pruned and updated blocks
/// before it, as in IST-DASLab/sparsegpt `llama_sequential` and locuslab/wanda
/// `prune_sparsegpt` (all seven linears of a block calibrated in one pass of the block).
pub fn prune_sequential(
    model: &Model,
    sparsity: f64,
    nm: Option<(usize, usize)>,
    windows: &[Vec<u32>],
    opts: &SparseGptOptions,
) -> Result<Pruned> {
    let sparsity = nm.map_or(sparsity, |(n, m)| n as f64 / m as f64);
    sequential::prune_sequential(model, windows, Collect::Gram, |_, layers, stats| {
        prune_with_grams(model, layers, &stats.grams, sparsity, nm, opts)
    })
}

/// One-shot SparseGPT (`sparsegpt-oneshot`): every layer's Gram from the dense model,
/// blocks of layers per calibration pass so at most `gram_budget_bytes` of Gram
/// matrices exist at once.
pub fn prune_model(
    model: &Model,
    sparsity: f64,
    nm: Option<(usize, usize)>,
    windows: &[Vec<u32>],
    opts: &SparseGptOptions,
) -> Result<Pruned> {
    if windows.iter().all(Vec::is_empty) {
        return Err(BaselineError::Argument(
            "SparseGPT needs at least one non-empty calibration window".into(),
        ));
    }
    let sparsity = nm.map_or(sparsity, |(n, m)| n as f64 / m as f64);
    let mut out = Pruned::default();
    for group in gram_groups(model.prunable_layers(), opts.gram_budget_bytes) {
        let grams = dense_grams(model, &group, windows)?;
        let part = prune_with_grams(model, &group, &grams, sparsity, nm, opts)?;
        out.masks.extend(part.masks);
        out.weights.extend(part.weights);
    }
    Ok(out)
}

/// Consecutive groups of layers whose Grams fit in `budget` bytes together (a layer
/// sharing its source's Gram costs nothing, so a group never splits q from k/v).
fn gram_groups(layers: Vec<LayerInfo>, budget: usize) -> Vec<Vec<LayerInfo>> {
    let mut groups: Vec<Vec<LayerInfo>> = vec![Vec::new()];
    let mut bytes = 0;
    for l in layers {
        let need = if gram_source(&l.name) == l.name {
            8 * l.in_features * l.in_features
        } else {
            0
        };
        if bytes + need > budget && !groups.last().is_some_and(Vec::is_empty) {
            groups.push(Vec::new());
            bytes = 0;
        }
        bytes += need;
        if let Some(g) = groups.last_mut() {
            g.push(l);
        }
    }
    groups.retain(|g| !g.is_empty());
    groups
}

/// The Grams of `group`'s inputs from one pass of the dense model over `windows`.
fn dense_grams(
    model: &Model,
    group: &[LayerInfo],
    windows: &[Vec<u32>],
) -> Result<HashMap<String, ActivationGram>> {
    let mut sources: Vec<String> = group.iter().map(|l| gram_source(&l.name)).collect();
    sources.dedup();
    for s in &sources {
        model.set_gram_enabled(s, true)?;
    }
    let pass = windows
        .iter()
        .filter(|w| !w.is_empty())
        .try_for_each(|w| -> Result<()> {
            let t = Tensor::new(w.as_slice(), model.device())?.unsqueeze(0)?;
            model.forward_hidden(&t)?;
            Ok(())
        });
    for s in &sources {
        model.set_gram_enabled(s, false)?;
    }
    pass?;
    let mut grams = HashMap::new();
    for s in sources {
        let g = model
            .take_gram(&s)?
            .ok_or_else(|| BaselineError::Argument(format!("no calibration tokens reached {s}")))?;
        grams.insert(s, g);
    }
    Ok(grams)
}
