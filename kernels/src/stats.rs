//! Layer statistics of the paper's §3.2: sensitivity percentile, gradient importance, z-scores.

use candle_core::Tensor;
use rayon::prelude::*;

use crate::device::{matrix_dims, with_host_f32};
use crate::{KernelError, Mask, Result};

/// The paper's ε in `z = (x − mean) / (std + ε)`.
pub const Z_EPSILON: f64 = 1e-9;

/// The paper's default percentile for layer sensitivity.
pub const SENSITIVITY_PERCENTILE: f64 = 10.0;

/// The `k`-th percentile (`0 ≤ k ≤ 100`) with linear interpolation, numpy's default method:
/// for the ascending values `x[0..n]`, `pos = (n − 1) · k / 100`, `i = floor(pos)`, and the
/// result is `x[i] + (x[i+1] − x[i]) · (pos − i)` in f64. Uses selection, not a full sort
/// (consumes `values`). Errors on empty input, `k` outside [0, 100], NaN values.
pub fn percentile(mut values: Vec<f32>, k: f64) -> Result<f64> {
    if values.is_empty() {
        return Err(KernelError::Argument("percentile of no values".into()));
    }
    if !(0.0..=100.0).contains(&k) {
        return Err(KernelError::Argument(format!(
            "percentile {k} is outside [0, 100]"
        )));
    }
    if values.iter().any(|v| v.is_nan()) {
        return Err(KernelError::NaN("percentile values"));
    }
    let pos = (values.len() - 1) as f64 * k / 100.0;
    let i = pos.floor() as usize;
    let frac = pos - i as f64;
    let (_, lo, above) = values.select_nth_unstable_by(i, f32::total_cmp);
    let lo = f64::from(*lo);
    if frac == 0.0 {
        return Ok(lo);
    }
    let hi = f64::from(above.iter().copied().fold(f32::INFINITY, f32::min));
    Ok(lo + (hi - lo) * frac)
}

/// Layer sensitivity: the `k`-th [`percentile`] of `scores` over the active weights of `mask`
/// (paper: k = [`SENSITIVITY_PERCENTILE`]). Errors when no weight is active.
pub fn layer_sensitivity(scores: &Tensor, mask: &Mask, k: f64) -> Result<f64> {
    mask.check_shape(matrix_dims(scores, "scores")?, "scores")?;
    let active = with_host_f32(scores, |s| Ok(active_values(s, mask)))?;
    if active.is_empty() {
        return Err(KernelError::Argument(
            "sensitivity of a layer with no active weight".into(),
        ));
    }
    percentile(active, k)
}

/// Gradient importance: the mean of `|abs_grad|` over the active weights of `mask`, in f64
/// (the accumulated `|∇W|`; its absolute value is taken again, so signed gradients work too).
/// Errors when no weight is active or on NaN.
pub fn gradient_importance(abs_grad: &Tensor, mask: &Mask) -> Result<f64> {
    mask.check_shape(matrix_dims(abs_grad, "gradient")?, "gradient")?;
    let active = with_host_f32(abs_grad, |g| Ok(active_values(g, mask)))?;
    if active.is_empty() {
        return Err(KernelError::Argument(
            "gradient importance with no active weight".into(),
        ));
    }
    // Sequential f64 sum: the same value on every run, whatever the thread count.
    let sum: f64 = active.iter().map(|g| f64::from(g.abs())).sum();
    if sum.is_nan() {
        return Err(KernelError::NaN("gradients"));
    }
    Ok(sum / active.len() as f64)
}

/// Paper eq. 3 across layers: `z = (x − mean) / (std + ε)` with the **population** standard
/// deviation (divide by n, numpy's default `ddof = 0`) and ε = [`Z_EPSILON`]. Equal values
/// give all-zero z-scores; empty input gives an empty vector. Errors on non-finite input.
pub fn z_scores(values: &[f64]) -> Result<Vec<f64>> {
    if values.iter().any(|v| !v.is_finite()) {
        return Err(KernelError::Argument(
            "z-scores of a non-finite value".into(),
        ));
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    Ok(values
        .iter()
        .map(|v| (v - mean) / (std + Z_EPSILON))
        .collect())
}

/// The values of `data` (row-major like `mask`) at the mask's active positions.
fn active_values(data: &[f32], mask: &Mask) -> Vec<f32> {
    let (cols, wpr) = (mask.cols(), mask.words_per_row());
    data.par_chunks(cols)
        .zip(mask.words().par_chunks(wpr))
        .flat_map_iter(|(row, words)| {
            row.iter()
                .enumerate()
                .filter(|(c, _)| words[c / 64] >> (c % 64) & 1 == 1)
                .map(|(_, &v)| v)
        })
        .collect()
}
