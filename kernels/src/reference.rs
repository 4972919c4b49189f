//! Naive reference implementations: plain loops and full sorts, written for obviousness, not
//! speed. Tests compare every fast kernel with its namesake here. They assume valid
//! arguments (the fast kernels do the checking) and CPU tensors.

use candle_core::{Device, Tensor};

use crate::device::with_host_f32;
use crate::prune::{prune_rows_cpu, select_nth, target_count};
use crate::{Mask, Result};

/// `|W[r][c]| * sqrt(sq_norms[c])`.
pub fn wanda_scores(w: &Tensor, sq_norms: &Tensor) -> Result<Tensor> {
    let sq = sq_norms.to_vec1::<f32>()?;
    let s: Vec<Vec<f32>> = w
        .to_vec2::<f32>()?
        .into_iter()
        .map(|row| {
            row.iter()
                .zip(&sq)
                .map(|(w, q)| w.abs() * q.sqrt())
                .collect()
        })
        .collect();
    Ok(Tensor::new(s, &Device::Cpu)?)
}

/// Per row: sort the active (score, column) pairs and prune the first ones until the row has
/// `round(ρ'·cols)` pruned.
pub fn prune_rows_incremental(scores: &Tensor, mask: &Mask, target_sparsity: f64) -> Result<Mask> {
    let s = scores.to_vec2::<f32>()?;
    let target = target_count(target_sparsity, mask.cols())?;
    let mut kept = mask.to_bools();
    for (r, row) in s.iter().enumerate() {
        let kept_row = &mut kept[r * mask.cols()..(r + 1) * mask.cols()];
        let mut active: Vec<(f32, usize)> = (0..row.len())
            .filter(|&c| kept_row[c])
            .map(|c| (row[c], c))
            .collect();
        active.sort_by(|a, b| cmp_score(a.0, b.0).then(a.1.cmp(&b.1)));
        let need = target.saturating_sub(row.len() - active.len());
        for &(_, c) in active.iter().take(need) {
            kept_row[c] = false;
        }
    }
    Mask::from_bools(mask.rows(), mask.cols(), &kept)
}

/// Sort all active (score, flat index) pairs of the layer and prune the first ones until the
/// layer has `round(ρ'·rows·cols)` pruned.
pub fn prune_layer_incremental(scores: &Tensor, mask: &Mask, target_sparsity: f64) -> Result<Mask> {
    let s = scores.flatten_all()?.to_vec1::<f32>()?;
    let target = target_count(target_sparsity, s.len())?;
    let mut kept = mask.to_bools();
    let mut active: Vec<(f32, usize)> = (0..s.len())
        .filter(|&i| kept[i])
        .map(|i| (s[i], i))
        .collect();
    active.sort_by(|a, b| cmp_score(a.0, b.0).then(a.1.cmp(&b.1)));
    let need = target.saturating_sub(s.len() - active.len());
    for &(_, i) in active.iter().take(need) {
        kept[i] = false;
    }
    Mask::from_bools(mask.rows(), mask.cols(), &kept)
}

/// Per row, per group of `m` columns: sort the group and prune its `n` first.
pub fn nm_mask(scores: &Tensor, n: usize, m: usize) -> Result<Mask> {
    let s = scores.to_vec2::<f32>()?;
    let cols = s[0].len();
    let mut kept = vec![true; s.len() * cols];
    for (r, row) in s.iter().enumerate() {
        for g in (0..cols).step_by(m) {
            let mut group: Vec<usize> = (g..g + m).collect();
            group.sort_by(|&a, &b| cmp_score(row[a], row[b]).then(a.cmp(&b)));
            for &c in &group[..n] {
                kept[r * cols + c] = false;
            }
        }
    }
    Mask::from_bools(s.len(), cols, &kept)
}

/// Full sort, then numpy's linear interpolation.
pub fn percentile(mut values: Vec<f32>, k: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let pos = (values.len() - 1) as f64 * k / 100.0;
    let (i, j) = (pos.floor() as usize, pos.ceil() as usize);
    f64::from(values[i]) + (f64::from(values[j]) - f64::from(values[i])) * (pos - i as f64)
}

/// Sum of `|g|` over kept weights divided by their number.
pub fn gradient_importance(abs_grad: &Tensor, mask: &Mask) -> Result<f64> {
    let g = abs_grad.flatten_all()?.to_vec1::<f32>()?;
    let kept = mask.to_bools();
    let active: Vec<f64> = (0..g.len())
        .filter(|&i| kept[i])
        .map(|i| f64::from(g[i].abs()))
        .collect();
    Ok(active.iter().sum::<f64>() / active.len() as f64)
}

/// The fast per-row kernel with its selection replaced by a full sort of each row's keys:
/// the baseline that the benchmark compares selection against.
pub fn prune_rows_full_sort(scores: &Tensor, mask: &Mask, target_sparsity: f64) -> Result<Mask> {
    let per_row = target_count(target_sparsity, mask.cols())?;
    with_host_f32(scores, |s| {
        prune_rows_cpu(s, mask, per_row, |keys, _| keys.sort_unstable())
    })
}

/// The per-row kernel before radix selection: `select_nth_unstable` on packed
/// `(score, column)` u64 keys of each row. A second baseline for the benchmark, and a second
/// independent implementation for the tests.
pub fn prune_rows_select_nth(scores: &Tensor, mask: &Mask, target_sparsity: f64) -> Result<Mask> {
    let per_row = target_count(target_sparsity, mask.cols())?;
    with_host_f32(scores, |s| prune_rows_cpu(s, mask, per_row, select_nth))
}

/// Numeric order with `-0.0 == +0.0` (NaN never reaches the reference).
fn cmp_score(a: f32, b: f32) -> std::cmp::Ordering {
    (a + 0.0).total_cmp(&(b + 0.0))
}
