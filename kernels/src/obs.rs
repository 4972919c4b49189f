//! OBS / SparseGPT weight repair for incremental pruning (issue 15).
//!
//! [`obs_prune`] takes a layer from its current mask `M` to a sparser `M' ⊆ M` and updates
//! the kept weights so the layer output on the calibration inputs moves as little as
//! possible: the SparseGPT column sweep (Frantar & Alistarh 2023, `sparsegpt.py`) with the
//! weights pruned in `M` forced into the mask. One-shot SparseGPT is the special case
//! `M` = all kept. [`obs_saliency`] estimates, for a planner, what the next δ of a layer
//! would cost.
//!
//! **The sweep.** Columns are processed left to right in blocks of `block` (128). At each
//! block start the new weights to prune in that block are chosen among the still-kept
//! ones by the reference's key `w² / U_ii²` on the *updated* weights; then every column
//! `i` of the block is quantised to `q = 0` (pruned: forced or new) or `q = w` (kept),
//! its error `e = (w − q) / U_ii` is subtracted as `e · U[i, i+1..]` from the rest of the
//! block at once and from the columns after the block lazily (one batch per block). A
//! weight pruned in `M` may have become non-zero through earlier corrections; it is zeroed
//! when its column is reached and its error propagated like any other. Pruned weights are
//! exactly 0 in the result; no pruned weight is ever re-enabled.
//!
//! **Selection and counts** ([`Selection`]). `PerRow`: every row ends with
//! `round(target · cols)` pruned weights (a row already above is left as is), like the
//! Executor's per-row Wanda. `Tile`: the layer ends with `round(target · rows · cols)`
//! pruned, chosen per `[rows × block]` tile like the reference. A row's (tile's) still
//! needed count is spread over the blocks in proportion to the kept weights in each:
//! block `b` takes `round(need_left · kept_b / kept_from_b)` (capped), so the last block
//! takes the rest and the total is exact. Ties: lowest key first, then lowest column
//! (per row) or flat index `r · cols + c` (tile).
//!
//! Measured (SmolLM2-135M, one-shot 50 % from dense Grams of 16 × 256 XSum tokens, QuAC
//! PPL over 60 × 512 tokens, dense 30.03, `model/examples/obs_gradual/main.rs`): `Tile` leaves
//! 9 % less summed layer output error (1.48e-3 against 1.62e-3 of the output energy) but
//! a worse perplexity (68.77 against 63.76), so `PerRow` is the one to use. Weighting each
//! row's keys by its output Fisher ([`obs_prune_weighted`], tile counts) did not help
//! either: 63.07 against 59.39 for per-row selection in the gradual cost-allocated run.

mod factor;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

pub use factor::{cholesky_lower, hessian_factor, InverseHessian};

use crate::{KernelError, Mask, Result};

/// Where the new pruned weights of a block are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Within each row: every output row keeps the same count.
    PerRow,
    /// Within each `[rows × block]` tile, as `sparsegpt.py` does.
    Tile,
}

/// SparseGPT's column block.
pub const DEFAULT_BLOCK: usize = 128;

/// Prune the `[rows, cols]` weight `w` (row-major, f32) from `current` to `target`
/// sparsity with the OBS update (module docs). `w` is overwritten with the repaired
/// weights, exactly 0 where the returned mask prunes. Errors on shape mismatches, a
/// `target` outside [0, 1] or below the current sparsity (by the selection's count rule),
/// `block == 0` and NaN weights.
pub fn obs_prune(
    w: &mut [f32],
    factor: &InverseHessian,
    current: &Mask,
    target: f64,
    block: usize,
    selection: Selection,
) -> Result<Mask> {
    sweep(w, factor, current, target, block, selection, None)
}

/// [`obs_prune`] with [`Selection::Tile`] counts and each row's keys multiplied by
/// `row_weight[r]` (e.g. ½ × the layer's output Fisher: the key becomes the expected
/// loss rise), so rows whose output matters less give up more weights. Errors as
/// [`obs_prune`], and on a weight count other than the rows or a negative or non-finite
/// weight.
pub fn obs_prune_weighted(
    w: &mut [f32],
    factor: &InverseHessian,
    current: &Mask,
    target: f64,
    block: usize,
    row_weight: &[f64],
) -> Result<Mask> {
    if row_weight.len() != current.rows() {
        return Err(KernelError::Shape(format!(
            "{} row weights for {} rows",
            row_weight.len(),
            current.rows()
        )));
    }
    if row_weight.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(KernelError::Argument(
            "row weights must be finite and non-negative".into(),
        ));
    }
    sweep(
        w,
        factor,
        current,
        target,
        block,
        Selection::Tile,
        Some(row_weight),
    )
}

fn sweep(
    w: &mut [f32],
    factor: &InverseHessian,
    current: &Mask,
    target: f64,
    block: usize,
    selection: Selection,
    row_weight: Option<&[f64]>,
) -> Result<Mask> {
    let (rows, cols) = (current.rows(), current.cols());
    check_args(w, factor, current, target, block)?;
    let mut keep = current.to_bools();
    let mut need = Need::new(&keep, rows, cols, target, selection)?;
    need.row_weight = row_weight.map(<[f64]>::to_vec);
    let mut x: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    for (c, _) in factor.dead().iter().enumerate().filter(|(_, d)| **d) {
        x.iter_mut().skip(c).step_by(cols).for_each(|v| *v = 0.0);
    }
    let u = factor.u();
    let diag: Vec<f64> = (0..cols).map(|i| u[i * cols + i]).collect();
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + block).min(cols);
        need.select(&x, &mut keep, &diag, i1, i2);
        x.par_chunks_mut(cols)
            .zip(keep.par_chunks(cols))
            .for_each(|(row, k)| sweep_block(row, k, u, i1, i2));
        i1 = i2;
    }
    for ((o, v), k) in w.iter_mut().zip(&x).zip(&keep) {
        *o = if *k { *v as f32 } else { 0.0 };
    }
    Mask::from_bools(rows, cols, &keep)
}

fn check_args(
    w: &[f32],
    factor: &InverseHessian,
    current: &Mask,
    target: f64,
    block: usize,
) -> Result<()> {
    let (rows, cols) = (current.rows(), current.cols());
    if w.len() != rows * cols {
        return Err(KernelError::Shape(format!(
            "{} weights for a {rows}x{cols} mask",
            w.len()
        )));
    }
    if factor.cols() != cols {
        return Err(KernelError::Shape(format!(
            "Hessian of {} inputs for {cols} columns",
            factor.cols()
        )));
    }
    if !(0.0..=1.0).contains(&target) {
        return Err(KernelError::Sparsity(format!("target {target}")));
    }
    if block == 0 {
        return Err(KernelError::Argument("block of 0 columns".into()));
    }
    if w.iter().any(|v| v.is_nan()) {
        return Err(KernelError::NaN("weights"));
    }
    Ok(())
}

/// Still-needed new pruned weights: one count per row, or one for the whole layer.
struct Need {
    selection: Selection,
    cols: usize,
    left: Vec<usize>,
    /// Multiplies each row's keys (tile selection only).
    row_weight: Option<Vec<f64>>,
}

impl Need {
    fn new(keep: &[bool], rows: usize, cols: usize, target: f64, sel: Selection) -> Result<Self> {
        let pruned_rows: Vec<usize> = keep
            .chunks(cols.max(1))
            .map(|r| r.iter().filter(|k| !**k).count())
            .collect();
        let pruned: usize = pruned_rows.iter().sum();
        let left = match sel {
            Selection::PerRow => {
                let t = (target * cols as f64).round() as usize;
                if t * rows < pruned {
                    return Err(below(target, pruned, rows * cols));
                }
                pruned_rows.iter().map(|p| t.saturating_sub(*p)).collect()
            }
            Selection::Tile => {
                let t = (target * (rows * cols) as f64).round() as usize;
                if t < pruned {
                    return Err(below(target, pruned, rows * cols));
                }
                vec![t - pruned]
            }
        };
        Ok(Self {
            selection: sel,
            cols,
            left,
            row_weight: None,
        })
    }

    /// Marks this block's share of the needed weights pruned in `keep`.
    fn select(&mut self, x: &[f64], keep: &mut [bool], diag: &[f64], i1: usize, i2: usize) {
        let cols = self.cols;
        let weight = |r: usize| self.row_weight.as_ref().map_or(1.0, |w| w[r]);
        let key = |r: usize, c: usize| (x[r * cols + c] / diag[c]).powi(2) * weight(r);
        match self.selection {
            Selection::PerRow => {
                for (r, (k, left)) in keep.chunks_mut(cols).zip(&mut self.left).enumerate() {
                    let mut cand: Vec<(f64, usize)> =
                        (i1..i2).filter(|&c| k[c]).map(|c| (key(r, c), c)).collect();
                    let rest = k[i1..].iter().filter(|v| **v).count();
                    let take = share(*left, cand.len(), rest);
                    prune_lowest(&mut cand, take, |c| k[c] = false);
                    *left -= take;
                }
            }
            Selection::Tile => {
                let rows = keep.len() / cols.max(1);
                let mut cand: Vec<(f64, usize)> = (0..rows)
                    .flat_map(|r| (i1..i2).map(move |c| (r, c)))
                    .filter(|&(r, c)| keep[r * cols + c])
                    .map(|(r, c)| (key(r, c), r * cols + c))
                    .collect();
                let rest = (0..rows)
                    .map(|r| {
                        keep[r * cols + i1..(r + 1) * cols]
                            .iter()
                            .filter(|v| **v)
                            .count()
                    })
                    .sum();
                let take = share(self.left[0], cand.len(), rest);
                prune_lowest(&mut cand, take, |i| keep[i] = false);
                self.left[0] -= take;
            }
        }
    }
}

fn below(target: f64, pruned: usize, len: usize) -> KernelError {
    KernelError::Sparsity(format!(
        "target {target} is below the current {pruned} of {len} pruned"
    ))
}

/// This block's share of `left`: proportional to its `here` kept weights among the
/// `rest` kept from the block to the end of the row (tile), never more than `here`.
fn share(left: usize, here: usize, rest: usize) -> usize {
    if rest == 0 {
        return 0;
    }
    let t = (left as f64 * here as f64 / rest as f64).round() as usize;
    t.min(here).min(left)
}

/// Calls `mark` on the ids of the `take` lowest `(key, id)` pairs (ties by id).
fn prune_lowest(cand: &mut [(f64, usize)], take: usize, mut mark: impl FnMut(usize)) {
    if take == 0 {
        return;
    }
    let order = |a: &(f64, usize), b: &(f64, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if take < cand.len() {
        cand.select_nth_unstable_by(take - 1, order);
    }
    cand[..take].iter().for_each(|&(_, id)| mark(id));
}

/// One row, one block: quantise columns `i1..i2` to the mask, propagate each error inside
/// the block at once and to the columns after the block in one lazy batch.
fn sweep_block(row: &mut [f64], keep: &[bool], u: &[f64], i1: usize, i2: usize) {
    let cols = row.len();
    let mut err = vec![0.0; i2 - i1];
    for i in i1..i2 {
        if keep[i] {
            continue;
        }
        let urow = &u[i * cols..(i + 1) * cols];
        let e = row[i] / urow[i];
        if e != 0.0 {
            for (v, h) in row[i + 1..i2].iter_mut().zip(&urow[i + 1..i2]) {
                *v -= e * h;
            }
        }
        row[i] = 0.0;
        err[i - i1] = e;
    }
    for (k, e) in err.iter().enumerate().filter(|(_, e)| **e != 0.0) {
        let urow = &u[(i1 + k) * cols..(i1 + k + 1) * cols];
        for (v, h) in row[i2..].iter_mut().zip(&urow[i2..]) {
            *v -= e * h;
        }
    }
}

/// For each `δ` of `deltas`, the OBS estimate of the layer's output error if it went from
/// its current sparsity `s` to `s + δ`: per row, the `round((s + δ) · cols) − pruned_row`
/// kept weights of lowest `w² / [H⁻¹]ᵢᵢ` would go, and their keys are summed.
///
/// Scale: with `H = XᵀX / n` (as [`hessian_factor`] builds it, damped), `w_q² / [H⁻¹]_qq`
/// is exactly the increase of the per-token squared output error `‖ΔW x‖²` (summed over
/// output rows, averaged over tokens) when weight `q` alone is removed and its row
/// optimally repaired — no ½ (that belongs to the loss `½ δwᵀ (2XᵀX) δw`). The sum over
/// several weights ignores their interactions (it is what the sweep's cost would be if
/// each removal were independent). Monotone in `δ`.
pub fn obs_saliency(
    w: &[f32],
    hinv_diag: &[f64],
    current: &Mask,
    deltas: &[f64],
) -> Result<Vec<f64>> {
    saliency(w, hinv_diag, current, deltas, None)
}

/// [`obs_saliency`] with row `j`'s keys weighted by `row_weights[j]`: with the layer's
/// output Fisher `F_j` (e.g. `model`'s `gradient_profile`) and weights `½·F_j` it is the
/// expected rise of the per-token loss, a cost comparable across layers. The selection
/// within a row does not change (one weight per row), so it is the same weights'
/// cost.
pub fn obs_saliency_weighted(
    w: &[f32],
    hinv_diag: &[f64],
    current: &Mask,
    deltas: &[f64],
    row_weights: &[f64],
) -> Result<Vec<f64>> {
    if row_weights.len() != current.rows() {
        return Err(KernelError::Shape(format!(
            "{} row weights for a {}x{} mask",
            row_weights.len(),
            current.rows(),
            current.cols()
        )));
    }
    if row_weights.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(KernelError::Argument(
            "row weights must be finite and non-negative".into(),
        ));
    }
    saliency(w, hinv_diag, current, deltas, Some(row_weights))
}

fn saliency(
    w: &[f32],
    hinv_diag: &[f64],
    current: &Mask,
    deltas: &[f64],
    row_weights: Option<&[f64]>,
) -> Result<Vec<f64>> {
    let (rows, cols) = (current.rows(), current.cols());
    if w.len() != rows * cols || hinv_diag.len() != cols {
        return Err(KernelError::Shape(format!(
            "{} weights and {} diagonal entries for a {rows}x{cols} mask",
            w.len(),
            hinv_diag.len()
        )));
    }
    if deltas.iter().any(|d| !(0.0..=1.0).contains(d)) {
        return Err(KernelError::Sparsity(format!("deltas {deltas:?}")));
    }
    if w.iter().any(|v| v.is_nan()) {
        return Err(KernelError::NaN("weights"));
    }
    let s = current.sparsity();
    let keep = current.to_bools();
    let per_row: Vec<Vec<f64>> = w
        .par_chunks(cols.max(1))
        .zip(keep.par_chunks(cols.max(1)))
        .enumerate()
        .map(|(j, (row, k))| {
            let weight = row_weights.map_or(1.0, |r| r[j]);
            let mut keys: Vec<f64> = (0..cols)
                .filter(|&c| k[c])
                .map(|c| f64::from(row[c]).powi(2) / hinv_diag[c])
                .collect();
            keys.sort_by(f64::total_cmp);
            let pruned = cols - keys.len();
            let mut prefix = vec![0.0; keys.len() + 1];
            for (i, v) in keys.iter().enumerate() {
                prefix[i + 1] = prefix[i] + v;
            }
            deltas
                .iter()
                .map(|d| {
                    let t = (((s + d).min(1.0)) * cols as f64).round() as usize;
                    weight * prefix[t.saturating_sub(pruned).min(keys.len())]
                })
                .collect()
        })
        .collect();
    Ok((0..deltas.len())
        .map(|i| per_row.iter().map(|r| r[i]).sum())
        .collect())
}

/// `‖(A − B) X‖² / n`: the per-token squared output difference of two `[rows, cols]`
/// weights on inputs with Gram `Σ xᵀx` over `tokens` tokens. With `b` all zero it is the
/// layer's output energy, the natural scale for [`obs_saliency`].
pub fn output_error(a: &[f32], b: &[f32], gram: &[f64], tokens: u64, cols: usize) -> Result<f64> {
    if a.len() != b.len() || cols == 0 || a.len() % cols != 0 {
        return Err(KernelError::Shape(format!(
            "weights of {} and {} values for {cols} columns",
            a.len(),
            b.len()
        )));
    }
    if gram.len() != cols * cols || tokens == 0 {
        return Err(KernelError::Shape(format!(
            "Gram of {} values over {tokens} tokens for {cols} columns",
            gram.len()
        )));
    }
    let rows = a.len() / cols;
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| f64::from(x - y)).collect();
    let d = Tensor::from_vec(d, (rows, cols), &Device::Cpu)?;
    let g = Tensor::from_slice(gram, (cols, cols), &Device::Cpu)?;
    let e: f64 = (d.matmul(&g)? * &d)?.sum_all()?.to_scalar()?;
    Ok(e / tokens as f64)
}
