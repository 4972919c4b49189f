//! The damped layer Hessian and the upper Cholesky factor of its inverse.
//!
//! SparseGPT needs `U` upper triangular with `UᵀU = H⁻¹`: row `i` of `U`, divided by
//! `U_ii`, is the optimal correction of the columns after `i` when weight `i` is removed
//! and the columns before `i` are already fixed. The reference computes it as
//! `cholesky(cholesky_inverse(cholesky(H)), upper)` — three O(n³) passes. Here it is one
//! Cholesky and one triangular inverse: with `J` the reversal permutation and
//! `J H J = L Lᵀ`, `U = J L⁻¹ J` is upper and `UᵀU = J L⁻ᵀ L⁻¹ J = H⁻¹`. By uniqueness of
//! the Cholesky factor with positive diagonal this is the same `U` as the reference's.

use rayon::prelude::*;

use crate::{KernelError, Result};

/// Factors of the damped Hessian of one layer input (shared by every layer that reads it,
/// e.g. q/k/v or gate/up).
#[derive(Debug, Clone)]
pub struct InverseHessian {
    cols: usize,
    /// `U`, row-major `[cols, cols]`, upper triangular, `UᵀU = H⁻¹`.
    u: Vec<f64>,
    /// `[H⁻¹]ᵢᵢ`: OBS saliency denominators for a whole-layer estimate.
    hinv_diag: Vec<f64>,
    /// Inputs that never fired during calibration (zero Gram diagonal).
    dead: Vec<bool>,
}

impl InverseHessian {
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `U`, row-major, upper triangular (`UᵀU = H⁻¹`).
    pub fn u(&self) -> &[f64] {
        &self.u
    }

    /// The diagonal of `H⁻¹`.
    pub fn hinv_diag(&self) -> &[f64] {
        &self.hinv_diag
    }

    /// Inputs with a zero Gram diagonal: their weights are zeroed by `obs_prune`, as in
    /// the reference (they never contributed to the calibration output).
    pub fn dead(&self) -> &[bool] {
        &self.dead
    }
}

/// Damped `H = gram / tokens + damp · mean(diag) · I` (dead inputs get `H_ii = 1` first,
/// as in the reference) and its inverse factor. `gram` is `Σ xᵀx`, row-major
/// `[cols, cols]`, f64. The reference's `H = 2XXᵀ/n` differs by the factor 2, which
/// changes neither the selection (`w²/U_ii²` ranks the same) nor the update (`U_ij/U_ii`).
pub fn hessian_factor(gram: &[f64], tokens: u64, cols: usize, damp: f64) -> Result<InverseHessian> {
    if gram.len() != cols * cols {
        return Err(KernelError::Shape(format!(
            "Gram has {} values, expected {cols}x{cols}",
            gram.len()
        )));
    }
    if tokens == 0 || cols == 0 {
        return Err(KernelError::Argument(format!(
            "Hessian of {cols} inputs over {tokens} tokens"
        )));
    }
    if !(damp.is_finite() && damp >= 0.0) {
        return Err(KernelError::Argument(format!("damping {damp}")));
    }
    if gram.iter().any(|v| !v.is_finite()) {
        return Err(KernelError::NaN("Gram matrix"));
    }
    let n = cols;
    let scale = 1.0 / tokens as f64;
    let mut dead = vec![false; n];
    // Reversed: h[a][b] = H[n-1-a][n-1-b].
    let mut h = vec![0.0; n * n];
    for a in 0..n {
        for b in 0..n {
            h[a * n + b] = gram[(n - 1 - a) * n + (n - 1 - b)] * scale;
        }
    }
    for (a, d) in dead.iter_mut().rev().enumerate() {
        if h[a * n + a] == 0.0 {
            h[a * n + a] = 1.0;
            *d = true;
        }
    }
    let mean = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    for i in 0..n {
        h[i * n + i] += damp * mean;
    }
    cholesky_lower(&mut h, n)?;
    let linv = invert_lower(&h, n);
    // U = J L⁻¹ J: U[i][j] = L⁻¹[n-1-i][n-1-j].
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = linv[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    let mut hinv_diag = vec![0.0; n];
    for (k, row) in u.chunks(n).enumerate() {
        for (d, v) in hinv_diag[k..].iter_mut().zip(&row[k..]) {
            *d += v * v;
        }
    }
    Ok(InverseHessian {
        cols: n,
        u,
        hinv_diag,
        dead,
    })
}

/// In-place lower Cholesky factor of the symmetric positive definite `a` (row-major);
/// the strict upper triangle is zeroed. Row-oriented so every inner product is over
/// contiguous memory.
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<()> {
    for j in 0..n {
        let (head, tail) = a.split_at_mut((j + 1) * n);
        let row_j = &mut head[j * n..];
        let d = row_j[j] - row_j[..j].iter().map(|v| v * v).sum::<f64>();
        if d.is_nan() || d <= 0.0 {
            return Err(KernelError::Argument(format!(
                "Hessian is not positive definite (pivot {j} is {d:e}); raise the damping"
            )));
        }
        row_j[j] = d.sqrt();
        let row_j: &[f64] = row_j;
        tail.par_chunks_mut(n).for_each(|row_i| {
            let dot: f64 = row_i[..j].iter().zip(&row_j[..j]).map(|(a, b)| a * b).sum();
            row_i[j] = (row_i[j] - dot) / row_j[j];
        });
    }
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n].fill(0.0);
    }
    Ok(())
}

/// `L⁻¹` of a lower triangular `l` with positive diagonal, row-major. Each column of the
/// inverse is one forward substitution (independent, so in parallel); the result is
/// transposed back to row-major.
fn invert_lower(l: &[f64], n: usize) -> Vec<f64> {
    let columns: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|j| {
            // x = L⁻¹ e_j; x[i] = 0 for i < j.
            let mut x = vec![0.0; n];
            x[j] = 1.0 / l[j * n + j];
            for i in j + 1..n {
                let row = &l[i * n + j..i * n + i];
                let s: f64 = row.iter().zip(&x[j..i]).map(|(a, b)| a * b).sum();
                x[i] = -s / l[i * n + i];
            }
            x
        })
        .collect();
    let mut out = vec![0.0; n * n];
    for (j, c) in columns.iter().enumerate() {
        for (i, v) in c.iter().enumerate().skip(j) {
            out[i * n + j] = *v;
        }
    }
    out
}
