//! Scores and masks: Wanda scores, incremental per-row / per-layer pruning, magnitude, N:M.
//!
//! **Order and tie rule.** Weights are pruned lowest score first; equal scores are pruned in
//! increasing column index (per-row and N:M) or increasing flat index `r * cols + c`
//! (per-layer). `-0.0` and `+0.0` are equal scores. This total order makes every result
//! deterministic and identical on every device. NaN scores are an error.
//!
//! **Counts.** A target sparsity `ρ'` means exactly `round(ρ' · cols)` pruned weights in each
//! row (per-row, `f64::round`: halves away from zero), or `round(ρ' · rows · cols)` in the
//! layer (per-layer). Pruning is incremental: weights already pruned in the given mask stay
//! pruned and only still-active weights are added. A row (or layer) that already has more
//! pruned weights than the target, e.g. from a non-uniform method, is left as is.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::device::{backend, matrix_dims, with_host_f32, Backend};
use crate::select::{self, KeySource, BLOCK};
use crate::{cuda, KernelError, Mask, Result};

/// Wanda score `S = |W| ⊙ sqrt(Σx²)`: `w` is `[d_out, d_in]` (torch `Linear` layout) and
/// `sq_norms` the `[d_in]` per-input-column sums of squared activations. Returns f32
/// `[d_out, d_in]` on the device of `w`. Negative or NaN `sq_norms` are an error.
pub fn wanda_scores(w: &Tensor, sq_norms: &Tensor) -> Result<Tensor> {
    let (rows, cols) = matrix_dims(w, "weight")?;
    check_sq_norms(sq_norms, cols)?;
    match backend(w, &[sq_norms])? {
        Backend::Cuda => cuda::wanda_scores(w, sq_norms),
        Backend::Cpu => {
            let norms = sqrt_norms(sq_norms)?;
            let mut out = crate::device::output_f32(rows * cols);
            with_host_f32(w, |w| {
                out.par_chunks_mut(cols)
                    .zip(w.par_chunks(cols))
                    .for_each(|(o, w)| {
                        for ((o, w), n) in o.iter_mut().zip(w).zip(&norms) {
                            *o = w.abs() * n;
                        }
                    });
                Ok(())
            })?;
            Ok(Tensor::from_vec(out, (rows, cols), &Device::Cpu)?)
        }
    }
}

/// Wanda pruning in one call: the mask that [`prune_rows_incremental`] gives for
/// [`wanda_scores`]`(w, sq_norms)`, with the same order, tie rule, counts and errors.
///
/// Why a second entry point: on the CPU the score matrix is never materialised. Each row's
/// scores go straight into a per-thread buffer of order keys and are selected there, so the
/// weight is read from memory once and nothing of its size is written (the composition reads
/// it, writes the scores, then reads them again). On CUDA it composes the two CUDA kernels.
pub fn wanda_prune_rows(
    w: &Tensor,
    sq_norms: &Tensor,
    mask: &Mask,
    target_sparsity: f64,
) -> Result<Mask> {
    let (rows, cols) = matrix_dims(w, "weight")?;
    check_sq_norms(sq_norms, cols)?;
    mask.check_shape((rows, cols), "weight")?;
    let per_row = target_count(target_sparsity, cols)?;
    if per_row * rows < mask.count_pruned() {
        return Err(below_current(target_sparsity, mask));
    }
    match backend(w, &[sq_norms])? {
        Backend::Cuda => {
            prune_rows_incremental(&cuda::wanda_scores(w, sq_norms)?, mask, target_sparsity)
        }
        Backend::Cpu => {
            // -0.0 → +0.0: the order of wanda_scores' -0.0 scores, and non-negative bits.
            let norms: Vec<f32> = sqrt_norms(sq_norms)?.iter().map(|n| n + 0.0).collect();
            with_host_f32(w, |w| {
                select::prune_rows(
                    mask,
                    per_row,
                    &WandaKeys {
                        w,
                        norms: &norms,
                        cols,
                    },
                )
            })
        }
    }
}

fn check_sq_norms(sq_norms: &Tensor, cols: usize) -> Result<()> {
    if sq_norms.dims() != [cols] {
        return Err(KernelError::Shape(format!(
            "sq_norms is {:?}, weight has {cols} input columns",
            sq_norms.dims()
        )));
    }
    Ok(())
}

/// `sqrt(Σx²)` per column on the host; negative or NaN sums are an error.
fn sqrt_norms(sq_norms: &Tensor) -> Result<Vec<f32>> {
    with_host_f32(sq_norms, |sq| {
        if sq.iter().any(|v| v.is_nan() || *v < 0.0) {
            return Err(KernelError::Argument(
                "sq_norms has a negative or NaN entry".into(),
            ));
        }
        Ok(sq.iter().map(|v| v.sqrt()).collect())
    })
}

/// Keys of the Wanda scores `|w| · norm`, computed exactly as [`wanda_scores`] does (up to the
/// sign of zero, which the order ignores).
struct WandaKeys<'a> {
    w: &'a [f32],
    norms: &'a [f32],
    cols: usize,
}

impl KeySource for WandaKeys<'_> {
    #[inline(always)]
    fn keys(&self, r: usize, c0: usize, out: &mut [u32]) -> bool {
        select::prefetch(self.w, r * self.cols + c0);
        let w = &self.w[r * self.cols + c0..][..out.len()];
        let norms = &self.norms[c0..][..out.len()];
        // Whole blocks as arrays: a loop of known length, unrolled with no remainder code.
        match (
            <&mut [u32; BLOCK]>::try_from(&mut *out),
            <&[f32; BLOCK]>::try_from(w),
            <&[f32; BLOCK]>::try_from(norms),
        ) {
            (Ok(out), Ok(w), Ok(norms)) => wanda_keys(out, w, norms),
            _ => wanda_keys(out, w, norms),
        }
    }
}

/// [`WandaKeys`] for one block: the keys of `|w| · norm`, and whether any score is NaN.
#[inline(always)]
fn wanda_keys(out: &mut [u32], w: &[f32], norms: &[f32]) -> bool {
    let mut max = 0;
    for ((o, w), n) in out.iter_mut().zip(w).zip(norms) {
        // `s` is +0.0, positive or NaN (the norms have no -0.0), so its bits are in numeric
        // order: this is `order_key(s)` in one instruction.
        let k = (w.abs() * n).to_bits() | 0x8000_0000;
        *o = k;
        max = max.max(k);
    }
    // A NaN's key, whatever its sign bit, lies above +∞'s: one vector max per 8 keys instead
    // of a float compare whose results had to be packed (a quarter of the key pass).
    max > order_key(f32::INFINITY)
}

/// Keys of a score matrix.
struct ScoreKeys<'a> {
    s: &'a [f32],
    cols: usize,
}

impl KeySource for ScoreKeys<'_> {
    #[inline(always)]
    fn keys(&self, r: usize, c0: usize, out: &mut [u32]) -> bool {
        select::prefetch(self.s, r * self.cols + c0);
        let s = &self.s[r * self.cols + c0..][..out.len()];
        let mut nan = false;
        for (o, &s) in out.iter_mut().zip(s) {
            nan |= s.is_nan();
            *o = order_key(s);
        }
        nan
    }
}

/// Magnitude score `|W|` as f32, on the device of `w`.
pub fn magnitude_scores(w: &Tensor) -> Result<Tensor> {
    matrix_dims(w, "weight")?;
    Ok(w.abs()?.to_dtype(DType::F32)?)
}

/// Prunes, in every row, the lowest-scoring still-active weights until the row has exactly
/// `round(target_sparsity · cols)` pruned weights (order, ties and rows already above the
/// target: module docs). The returned mask contains every weight `mask` pruned.
///
/// Errors: shape mismatch, `target_sparsity` outside [0, 1] or below the mask's current
/// sparsity (in counts: `rows · round(ρ'·cols) < mask.count_pruned()`), NaN scores.
/// Runs in O(cols) per row (radix selection of a threshold key, then one sweep; no sort: see
/// the `select` module), rows in parallel.
pub fn prune_rows_incremental(scores: &Tensor, mask: &Mask, target_sparsity: f64) -> Result<Mask> {
    let (rows, cols) = matrix_dims(scores, "scores")?;
    mask.check_shape((rows, cols), "scores")?;
    let per_row = target_count(target_sparsity, cols)?;
    if per_row * rows < mask.count_pruned() {
        return Err(below_current(target_sparsity, mask));
    }
    match backend(scores, &[])? {
        Backend::Cuda => cuda::prune_rows(scores, mask, per_row),
        Backend::Cpu => with_host_f32(scores, |s| {
            select::prune_rows(mask, per_row, &ScoreKeys { s, cols })
        }),
    }
}

/// Like [`prune_rows_incremental`] but over the whole layer: prunes the lowest-scoring active
/// weights until the layer has `round(target_sparsity · rows · cols)` pruned, ties by flat
/// index. Needs a temporary of 8 bytes per active weight; layers of 2^32 weights or more are
/// refused.
pub fn prune_layer_incremental(scores: &Tensor, mask: &Mask, target_sparsity: f64) -> Result<Mask> {
    let (rows, cols) = matrix_dims(scores, "scores")?;
    mask.check_shape((rows, cols), "scores")?;
    if u32::try_from(rows * cols).is_err() {
        return Err(KernelError::Shape(
            "per-layer selection needs < 2^32 weights".into(),
        ));
    }
    let target = target_count(target_sparsity, rows * cols)?;
    let pruned = mask.count_pruned();
    if target < pruned {
        return Err(below_current(target_sparsity, mask));
    }
    let wpr = mask.words_per_row();
    with_host_f32(scores, |s| {
        // Each row is gathered into a full-width window after the active keys so far.
        let mut keys = vec![0u64; mask.count_kept() + cols];
        let mut active = 0;
        for (r, (row, words)) in s.chunks(cols).zip(mask.words().chunks(wpr)).enumerate() {
            active += gather_active(row, words, r * cols, &mut keys[active..active + cols])?;
        }
        keys.truncate(active);
        let mut out = mask.clone();
        for &key in smallest(&mut keys, target - pruned, select_nth) {
            let i = (key & 0xffff_ffff) as usize;
            out.prune(i / cols, i % cols);
        }
        Ok(out)
    })
}

/// Per-row magnitude pruning: [`prune_rows_incremental`] on `|W|`.
pub fn magnitude_mask_per_row(w: &Tensor, mask: &Mask, target_sparsity: f64) -> Result<Mask> {
    prune_rows_incremental(&magnitude_scores(w)?, mask, target_sparsity)
}

/// Per-layer magnitude pruning: [`prune_layer_incremental`] on `|W|`.
pub fn magnitude_mask_per_layer(w: &Tensor, mask: &Mask, target_sparsity: f64) -> Result<Mask> {
    prune_layer_incremental(&magnitude_scores(w)?, mask, target_sparsity)
}

/// N:M semi-structured mask: in every row, of each group of `m` consecutive columns the `n`
/// lowest-scoring are pruned (ties by column), as in Wanda's `prune.py` (2:4 prunes 2 of 4).
/// Needs `0 < n < m` and `m` dividing the column count. Costs O(m) per weight: meant for the
/// small M of semi-structured sparsity (4, 8).
pub fn nm_mask(scores: &Tensor, n: usize, m: usize) -> Result<Mask> {
    let (rows, cols) = matrix_dims(scores, "scores")?;
    let bad = |reason: &str| {
        Err(KernelError::NM {
            n,
            m,
            reason: reason.into(),
        })
    };
    if n == 0 || m == 0 || n >= m {
        return bad("needs 0 < N < M");
    }
    if cols % m != 0 {
        return bad(&format!("M does not divide the {cols} columns"));
    }
    match backend(scores, &[])? {
        Backend::Cuda => cuda::nm_mask(scores, n, m),
        Backend::Cpu => with_host_f32(scores, |s| {
            let mut out = Mask::ones(rows, cols);
            let wpr = out.words_per_row();
            out.words_mut()
                .par_chunks_mut(wpr)
                .zip(s.par_chunks(cols))
                .try_for_each_init(Vec::new, |keys: &mut Vec<u32>, (words, row)| {
                    if row.iter().any(|s| s.is_nan()) {
                        return Err(KernelError::NaN("scores"));
                    }
                    keys.clear();
                    keys.extend(row.iter().map(|&s| order_key(s)));
                    // Constant M for the usual patterns lets the compiler unroll the group loop.
                    match m {
                        4 => nm_row(keys, n, 4, words),
                        8 => nm_row(keys, n, 8, words),
                        _ => nm_row(keys, n, m, words),
                    }
                    Ok::<_, KernelError>(())
                })?;
            Ok(out)
        }),
    }
}

/// N:M for one row of order keys: a weight is pruned iff fewer than `n` of its group precede
/// it in (score, column) order. O(m) per weight and no selection, like the CUDA kernel.
#[inline(always)]
fn nm_row(keys: &[u32], n: usize, m: usize, words: &mut [u64]) {
    for (g, group) in keys.chunks_exact(m).enumerate() {
        for (j, &k) in group.iter().enumerate() {
            let before: usize = (group.iter().enumerate())
                .map(|(o, &ko)| usize::from((ko < k) | ((ko == k) & (o < j))))
                .sum();
            let c = g * m + j;
            words[c / 64] &= !(u64::from(before < n) << (c % 64));
        }
    }
}

/// How a kernel finds the `k` smallest keys: moves them to `keys[..k]` (any order).
pub(crate) type Select = fn(&mut [u64], usize);

/// Linear-time selection: `select_nth_unstable` on the packed keys.
pub(crate) fn select_nth(keys: &mut [u64], k: usize) {
    if k < keys.len() {
        keys.select_nth_unstable(k);
    }
}

fn smallest(keys: &mut [u64], k: usize, select: Select) -> &[u64] {
    let k = k.min(keys.len());
    select(keys, k);
    &keys[..k]
}

/// Per-row selection on packed `(score, column)` u64 keys, generic over the selection step:
/// the baselines of the benchmark ([`crate::reference::prune_rows_full_sort`] and
/// [`crate::reference::prune_rows_select_nth`]; the fast kernel is in the `select` module).
pub(crate) fn prune_rows_cpu(
    s: &[f32],
    mask: &Mask,
    per_row: usize,
    select: Select,
) -> Result<Mask> {
    let cols = mask.cols();
    let mut out = mask.clone();
    let wpr = out.words_per_row();
    out.words_mut()
        .par_chunks_mut(wpr)
        .zip(s.par_chunks(cols))
        .try_for_each_init(
            || vec![0u64; cols],
            |keys, (words, row)| {
                let active = gather_active(row, words, 0, keys)?;
                let need = per_row.saturating_sub(cols - active);
                for &key in smallest(&mut keys[..active], need, select) {
                    let c = (key & 0xffff_ffff) as usize;
                    words[c / 64] &= !(1u64 << (c % 64));
                }
                Ok::<_, KernelError>(())
            },
        )?;
    Ok(out)
}

/// Writes the [`key`] of each active weight of `row` (index `base + column`) to the front of
/// `out` (at least `row.len()` long) and returns how many. Errors on any NaN in `row`, active
/// or not.
fn gather_active(row: &[f32], words: &[u64], base: usize, out: &mut [u64]) -> Result<usize> {
    let (mut end, mut nan) = (0, false);
    for (chunk, (&word, c0)) in row.chunks(64).zip(words.iter().zip((base..).step_by(64))) {
        if word == u64::MAX >> (64 - chunk.len()) {
            // All active (the common case of a fresh mask): a plain, vectorisable copy.
            for ((o, &s), c) in out[end..end + chunk.len()].iter_mut().zip(chunk).zip(c0..) {
                nan |= s.is_nan();
                *o = key(s, c);
            }
            end += chunk.len();
        } else {
            // Branchless: every key is written, only active ones advance the end.
            for (j, &s) in chunk.iter().enumerate() {
                nan |= s.is_nan();
                out[end] = key(s, c0 + j);
                end += (word >> j & 1) as usize;
            }
        }
    }
    if nan {
        return Err(KernelError::NaN("scores"));
    }
    Ok(end)
}

/// Selection key of score `s` at index `i` (< 2^32): integer order = (score, index) order.
#[inline]
fn key(s: f32, i: usize) -> u64 {
    u64::from(order_key(s)) << 32 | i as u64
}

/// Maps an f32 to a u32 whose unsigned order is the numeric order (−0.0 maps like +0.0).
#[inline]
pub(crate) fn order_key(s: f32) -> u32 {
    let b = (s + 0.0).to_bits(); // -0.0 + 0.0 == +0.0
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// `round(sparsity · n)` after checking `sparsity` is in [0, 1].
pub(crate) fn target_count(sparsity: f64, n: usize) -> Result<usize> {
    if !(0.0..=1.0).contains(&sparsity) {
        return Err(KernelError::Sparsity(format!(
            "{sparsity} is outside [0, 1]"
        )));
    }
    Ok((sparsity * n as f64).round() as usize)
}

fn below_current(target: f64, mask: &Mask) -> KernelError {
    KernelError::Sparsity(format!(
        "target {target} is below the mask's current sparsity {}",
        mask.sparsity()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_key_is_numeric_order() {
        let v = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            2.0,
            f32::INFINITY,
        ];
        for w in v.windows(2) {
            assert!(order_key(w[0]) <= order_key(w[1]), "{w:?}");
            assert_eq!(order_key(w[0]) == order_key(w[1]), w[0] == w[1], "{w:?}");
        }
    }

    #[test]
    fn target_count_rounds_half_away_from_zero() {
        assert_eq!(target_count(0.5, 7).unwrap(), 4);
        assert_eq!(target_count(0.5, 6).unwrap(), 3);
        assert_eq!(target_count(1.0, 11008).unwrap(), 11008);
        assert!(target_count(1.01, 4).is_err());
        assert!(target_count(-0.01, 4).is_err());
        assert!(target_count(f64::NAN, 4).is_err());
    }
}
