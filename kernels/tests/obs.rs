//! OBS repair against a dense, unbatched re-implementation of `sparsegpt.py`, and the
//! properties the Executor relies on: forced masks, exact counts, zeros, lower error.

mod common;

use common::rng;
use kernels::{
    hessian_factor, obs_prune, obs_prune_weighted, obs_saliency, obs_saliency_weighted,
    output_error, KernelError, Mask,
};
use kernels::{InverseHessian, Selection};
use rand::Rng;

/// Correlated inputs `[tokens, cols]` (a shared component plus noise) so the OBS update
/// has something to exploit; column `dead` (if any) is always zero.
fn inputs(tokens: usize, cols: usize, seed: u64, dead: Option<usize>) -> Vec<f64> {
    let mut r = rng(seed);
    let mix: Vec<f64> = (0..cols).map(|_| r.random_range(-1.0..1.0)).collect();
    let mut x = vec![0.0; tokens * cols];
    for t in 0..tokens {
        let z: f64 = r.random_range(-2.0..2.0);
        for c in 0..cols {
            x[t * cols + c] = z * mix[c] + r.random_range(-1.0..1.0);
        }
        if let Some(d) = dead {
            x[t * cols + d] = 0.0;
        }
    }
    x
}

fn gram(x: &[f64], cols: usize) -> Vec<f64> {
    let mut g = vec![0.0; cols * cols];
    for t in x.chunks(cols) {
        for a in 0..cols {
            for b in 0..cols {
                g[a * cols + b] += t[a] * t[b];
            }
        }
    }
    g
}

fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..rows * cols)
        .map(|_| r.random_range(-1.0..1.0))
        .collect()
}

/// Every row with `k` random weights pruned.
fn random_mask(rows: usize, cols: usize, k: usize, seed: u64) -> Mask {
    let mut r = rng(seed);
    let mut kept = vec![true; rows * cols];
    for row in kept.chunks_mut(cols) {
        let mut n = 0;
        while n < k {
            let c = r.random_range(0..cols);
            if row[c] {
                row[c] = false;
                n += 1;
            }
        }
    }
    Mask::from_bools(rows, cols, &kept).unwrap()
}

/// Gauss–Jordan inverse with partial pivoting.
fn inverse(a: &[f64], n: usize) -> Vec<f64> {
    let mut m = a.to_vec();
    let mut inv: Vec<f64> = (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| m[i * n + c].abs().total_cmp(&m[j * n + c].abs()))
            .unwrap();
        for k in 0..n {
            m.swap(c * n + k, p * n + k);
            inv.swap(c * n + k, p * n + k);
        }
        let d = m[c * n + c];
        for k in 0..n {
            m[c * n + k] /= d;
            inv[c * n + k] /= d;
        }
        for r in (0..n).filter(|&r| r != c) {
            let f = m[r * n + c];
            for k in 0..n {
                m[r * n + k] -= f * m[c * n + k];
                inv[r * n + k] -= f * inv[c * n + k];
            }
        }
    }
    inv
}

/// Upper `U` with `UᵀU = a`: the transpose of the lower Cholesky factor.
fn upper_cholesky(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            l[i * n + j] = if i == j {
                (a[i * n + i] - s).sqrt()
            } else {
                (a[i * n + j] - s) / l[j * n + j]
            };
        }
    }
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            u[j * n + i] = l[i * n + j];
        }
    }
    u
}

/// The reference's Hessian steps, literally: damp, invert, upper Cholesky.
fn naive_factor(g: &[f64], tokens: u64, n: usize, damp: f64) -> Vec<f64> {
    let mut h: Vec<f64> = g.iter().map(|v| v / tokens as f64).collect();
    for i in 0..n {
        if h[i * n + i] == 0.0 {
            h[i * n + i] = 1.0;
        }
    }
    let mean = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    for i in 0..n {
        h[i * n + i] += damp * mean;
    }
    upper_cholesky(&inverse(&h, n), n)
}

/// `sparsegpt.py` without lazy batching: every column's error goes to all later columns
/// at once. Selection at each block start by the documented quota and tie rules.
fn naive_prune(
    w: &[f32],
    u: &[f64],
    cur: &Mask,
    target: f64,
    block: usize,
    sel: Selection,
) -> (Vec<f64>, Vec<bool>) {
    naive_prune_weighted(w, u, cur, target, block, sel, None)
}

/// [`naive_prune`] with each row's keys multiplied by its weight.
fn naive_prune_weighted(
    w: &[f32],
    u: &[f64],
    cur: &Mask,
    target: f64,
    block: usize,
    sel: Selection,
    row_weight: Option<&[f64]>,
) -> (Vec<f64>, Vec<bool>) {
    let (rows, cols) = (cur.rows(), cur.cols());
    let mut x: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    let mut keep = cur.to_bools();
    let pruned = |k: &[bool]| k.iter().filter(|v| !**v).count();
    let round = |v: f64| v.round() as usize;
    let mut need: Vec<usize> = match sel {
        Selection::PerRow => keep
            .chunks(cols)
            .map(|r| round(target * cols as f64).saturating_sub(pruned(r)))
            .collect(),
        Selection::Tile => vec![round(target * (rows * cols) as f64) - pruned(&keep)],
    };
    let share = |left: usize, here: usize, rest: usize| {
        let t = round(left as f64 * here as f64 / rest.max(1) as f64);
        t.min(here).min(left)
    };
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        let groups: Vec<Vec<usize>> = match sel {
            Selection::PerRow => (0..rows).map(|r| vec![r]).collect(),
            Selection::Tile => vec![(0..rows).collect()],
        };
        for (g, rs) in groups.iter().enumerate() {
            let mut cand = Vec::new();
            let mut rest = 0;
            for &r in rs {
                for c in i1..cols {
                    if keep[r * cols + c] {
                        rest += 1;
                        if c < i2 {
                            let key = (x[r * cols + c] / u[c * cols + c]).powi(2)
                                * row_weight.map_or(1.0, |rw| rw[r]);
                            cand.push((key, r * cols + c));
                        }
                    }
                }
            }
            cand.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let take = share(need[g], cand.len(), rest);
            for &(_, i) in &cand[..take] {
                keep[i] = false;
            }
            need[g] -= take;
        }
        for i in i1..i2 {
            for r in 0..rows {
                let wv = x[r * cols + i];
                let q = if keep[r * cols + i] { wv } else { 0.0 };
                let e = (wv - q) / u[i * cols + i];
                for j in i..cols {
                    x[r * cols + j] -= e * u[i * cols + j];
                }
                x[r * cols + i] = q;
            }
        }
    }
    (x, keep)
}

struct Layer {
    g: Vec<f64>,
    tokens: u64,
    w: Vec<f32>,
    f: InverseHessian,
}

fn layer(rows: usize, cols: usize, seed: u64, dead: Option<usize>) -> Layer {
    let tokens = 3 * cols;
    let g = gram(&inputs(tokens, cols, seed, dead), cols);
    let f = hessian_factor(&g, tokens as u64, cols, 0.01).unwrap();
    Layer {
        g,
        tokens: tokens as u64,
        w: weights(rows, cols, seed + 1),
        f,
    }
}

#[test]
fn factor_matches_reference_steps() {
    let l = layer(1, 23, 1, Some(5));
    let want = naive_factor(&l.g, l.tokens, 23, 0.01);
    for (a, b) in l.f.u().iter().zip(&want) {
        assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()), "{a} vs {b}");
    }
    for i in 0..23 {
        let d: f64 = (0..23).map(|k| want[k * 23 + i].powi(2)).sum();
        assert!((l.f.hinv_diag()[i] - d).abs() < 1e-9 * d);
    }
    assert_eq!(l.f.dead().iter().filter(|d| **d).count(), 1);
    assert!(l.f.dead()[5]);
}

#[test]
fn all_kept_reproduces_dense_reference() {
    for (rows, cols, block, target) in [(6, 40, 16, 0.5), (5, 37, 8, 0.6), (3, 20, 128, 0.3)] {
        for sel in [Selection::PerRow, Selection::Tile] {
            let l = layer(rows, cols, 7 + cols as u64, None);
            let cur = Mask::ones(rows, cols);
            let u = naive_factor(&l.g, l.tokens, cols, 0.01);
            let (want_w, want_k) = naive_prune(&l.w, &u, &cur, target, block, sel);
            let mut w = l.w.clone();
            let m = obs_prune(&mut w, &l.f, &cur, target, block, sel).unwrap();
            assert_eq!(m.to_bools(), want_k, "{sel:?} {rows}x{cols}");
            for (a, b) in w.iter().zip(&want_w) {
                assert!((f64::from(*a) - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }
}

#[test]
fn forced_mask_reproduces_dense_reference() {
    let (rows, cols) = (7, 48);
    let l = layer(rows, cols, 3, None);
    let cur = random_mask(rows, cols, 12, 4);
    let u = naive_factor(&l.g, l.tokens, cols, 0.01);
    for sel in [Selection::PerRow, Selection::Tile] {
        // Weights pruned in `cur` are non-zero here on purpose: they must be forced out.
        let (want_w, want_k) = naive_prune(&l.w, &u, &cur, 0.55, 16, sel);
        let mut w = l.w.clone();
        let m = obs_prune(&mut w, &l.f, &cur, 0.55, 16, sel).unwrap();
        assert_eq!(m.to_bools(), want_k);
        for (a, b) in w.iter().zip(&want_w) {
            assert!((f64::from(*a) - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}

#[test]
fn weighted_rows_match_reference_and_spare_heavy_rows() {
    let (rows, cols) = (6, 40);
    let l = layer(rows, cols, 21, None);
    let cur = random_mask(rows, cols, 10, 22);
    let u = naive_factor(&l.g, l.tokens, cols, 0.01);
    let weights = [0.0, 4.0, 0.5, 1.0, 2.0, 0.25];
    let (want_w, want_k) =
        naive_prune_weighted(&l.w, &u, &cur, 0.6, 16, Selection::Tile, Some(&weights));
    let mut w = l.w.clone();
    let m = obs_prune_weighted(&mut w, &l.f, &cur, 0.6, 16, &weights).unwrap();
    assert_eq!(m.to_bools(), want_k);
    for (a, b) in w.iter().zip(&want_w) {
        assert!((f64::from(*a) - b).abs() < 1e-4, "{a} vs {b}");
    }
    assert_eq!(m.count_pruned(), (0.6f64 * 240.0).round() as usize);
    assert_eq!(
        m.count_kept_outside(&cur).unwrap(),
        0,
        "re-enabled a weight"
    );
    // A weightless row goes first; the heaviest row keeps the most.
    let per_row = m.pruned_per_row();
    assert_eq!(per_row[0], cols, "{per_row:?}");
    assert_eq!(per_row.iter().min(), Some(&per_row[1]), "{per_row:?}");
    // One common weight is plain tile selection.
    let mut a = l.w.clone();
    let mut b = l.w.clone();
    let ma = obs_prune_weighted(&mut a, &l.f, &cur, 0.6, 16, &[2.5; 6]).unwrap();
    let mb = obs_prune(&mut b, &l.f, &cur, 0.6, 16, Selection::Tile).unwrap();
    assert_eq!(ma.to_bools(), mb.to_bools());
    assert_eq!(a, b);
    // Bad weights.
    for bad in [
        vec![1.0; 5],
        vec![1.0, 1.0, -1.0, 1.0, 1.0, 1.0],
        vec![f64::NAN; 6],
    ] {
        let e = obs_prune_weighted(&mut l.w.clone(), &l.f, &cur, 0.6, 16, &bad);
        assert!(e.is_err(), "{bad:?}");
    }
}

#[test]
fn forced_mask_is_kept_counts_exact_pruned_zero() {
    let (rows, cols) = (9, 70);
    let l = layer(rows, cols, 11, Some(3));
    let cur = random_mask(rows, cols, 20, 12);
    for (sel, target) in [(Selection::PerRow, 0.5), (Selection::Tile, 0.61)] {
        let mut w = l.w.clone();
        let m = obs_prune(&mut w, &l.f, &cur, target, 32, sel).unwrap();
        assert_eq!(
            m.count_kept_outside(&cur).unwrap(),
            0,
            "re-enabled a weight"
        );
        match sel {
            Selection::PerRow => assert!(m.pruned_per_row().iter().all(|&p| p == 35)),
            Selection::Tile => assert_eq!(m.count_pruned(), (0.61f64 * 630.0).round() as usize),
        }
        for (v, k) in w.iter().zip(m.to_bools()) {
            if !k {
                assert_eq!(v.to_bits(), 0, "pruned weight {v}");
            }
        }
        // Dead column: zeroed like the reference.
        assert!((0..rows).all(|r| w[r * cols + 3] == 0.0));
    }
}

#[test]
fn update_beats_masking_alone() {
    let (rows, cols) = (8, 64);
    let l = layer(rows, cols, 21, None);
    let cur = random_mask(rows, cols, 16, 22);
    let w_cur: Vec<f32> =
        l.w.iter()
            .zip(cur.to_bools())
            .map(|(v, k)| if k { *v } else { 0.0 })
            .collect();
    for sel in [Selection::PerRow, Selection::Tile] {
        let mut w = w_cur.clone();
        let m = obs_prune(&mut w, &l.f, &cur, 0.6, 16, sel).unwrap();
        let masked: Vec<f32> = w_cur
            .iter()
            .zip(m.to_bools())
            .map(|(v, k)| if k { *v } else { 0.0 })
            .collect();
        let with_update = output_error(&w_cur, &w, &l.g, l.tokens, cols).unwrap();
        let mask_only = output_error(&w_cur, &masked, &l.g, l.tokens, cols).unwrap();
        assert!(
            with_update < 0.8 * mask_only,
            "{with_update} vs {mask_only}"
        );
    }
}

#[test]
fn saliency_matches_brute_force_and_grows() {
    let (rows, cols) = (5, 50);
    let l = layer(rows, cols, 31, None);
    let cur = random_mask(rows, cols, 10, 32);
    let deltas = [0.0, 0.02, 0.1, 0.3, 0.8];
    let s = obs_saliency(&l.w, l.f.hinv_diag(), &cur, &deltas).unwrap();
    let keep = cur.to_bools();
    for (d, got) in deltas.iter().zip(&s) {
        let n = ((0.2 + d).min(1.0) * 50.0f64).round() as usize - 10;
        let mut want = 0.0;
        for r in 0..rows {
            let mut keys: Vec<f64> = (0..cols)
                .filter(|&c| keep[r * cols + c])
                .map(|c| f64::from(l.w[r * cols + c]).powi(2) / l.f.hinv_diag()[c])
                .collect();
            keys.sort_by(f64::total_cmp);
            want += keys[..n.min(keys.len())].iter().sum::<f64>();
        }
        assert!(
            (got - want).abs() < 1e-9 * (1.0 + want),
            "δ {d}: {got} vs {want}"
        );
    }
    assert_eq!(s[0], 0.0);
    assert!(s.windows(2).all(|p| p[0] < p[1]), "{s:?}");
}

#[test]
fn weighted_saliency_scales_each_row() {
    let (rows, cols) = (4, 40);
    let l = layer(rows, cols, 33, None);
    let cur = random_mask(rows, cols, 8, 34);
    let deltas = [0.05, 0.2];
    let ones = obs_saliency_weighted(&l.w, l.f.hinv_diag(), &cur, &deltas, &[1.0; 4]).unwrap();
    assert_eq!(
        ones,
        obs_saliency(&l.w, l.f.hinv_diag(), &cur, &deltas).unwrap()
    );
    // Row r alone, by weighting the others 0; the rows' costs add up to the whole.
    let per_row: Vec<Vec<f64>> = (0..rows)
        .map(|r| {
            let mut wts = [0.0; 4];
            wts[r] = 1.0;
            obs_saliency_weighted(&l.w, l.f.hinv_diag(), &cur, &deltas, &wts).unwrap()
        })
        .collect();
    let wts = [0.5, 3.0, 0.0, 7.25];
    let got = obs_saliency_weighted(&l.w, l.f.hinv_diag(), &cur, &deltas, &wts).unwrap();
    for (i, g) in got.iter().enumerate() {
        let want: f64 = (0..rows).map(|r| wts[r] * per_row[r][i]).sum();
        assert!((g - want).abs() < 1e-12 * want.max(1e-30), "{g} vs {want}");
        let sum: f64 = (0..rows).map(|r| per_row[r][i]).sum();
        assert!((ones[i] - sum).abs() < 1e-12 * sum);
    }
    let bad = obs_saliency_weighted(&l.w, l.f.hinv_diag(), &cur, &deltas, &[1.0; 3]);
    assert!(matches!(bad, Err(KernelError::Shape(_))));
    let bad = obs_saliency_weighted(&l.w, l.f.hinv_diag(), &cur, &deltas, &[1.0, -1.0, 1.0, 1.0]);
    assert!(matches!(bad, Err(KernelError::Argument(_))));
    let bad = obs_saliency_weighted(
        &l.w,
        l.f.hinv_diag(),
        &cur,
        &deltas,
        &[1.0, f64::NAN, 1.0, 1.0],
    );
    assert!(matches!(bad, Err(KernelError::Argument(_))));
}

#[test]
fn saliency_predicts_single_weight_error() {
    // One weight removed with its row repaired: the OBS estimate is exact.
    let (rows, cols) = (1, 30);
    let l = layer(rows, cols, 41, None);
    let cur = Mask::ones(rows, cols);
    let s = obs_saliency(&l.w, l.f.hinv_diag(), &cur, &[1.0 / 30.0]).unwrap()[0];
    assert!(s > 0.0);
    let best = (0..cols)
        .map(|c| f64::from(l.w[c]).powi(2) / l.f.hinv_diag()[c])
        .fold(f64::INFINITY, f64::min);
    assert!((s - best).abs() < 1e-12 * best);
}

#[test]
fn bad_arguments_are_errors() {
    let l = layer(4, 16, 51, None);
    let cur = random_mask(4, 16, 8, 52);
    let mut short = vec![0.0f32; 10];
    let e = obs_prune(&mut short, &l.f, &cur, 0.6, 8, Selection::PerRow);
    assert!(matches!(e, Err(KernelError::Shape(_))));
    let mut w = l.w.clone();
    let e = obs_prune(&mut w, &l.f, &cur, 0.25, 8, Selection::PerRow);
    assert!(matches!(e, Err(KernelError::Sparsity(_))));
    let e = obs_prune(&mut w, &l.f, &cur, 1.5, 8, Selection::Tile);
    assert!(matches!(e, Err(KernelError::Sparsity(_))));
    let e = obs_prune(&mut w, &l.f, &cur, 0.6, 0, Selection::Tile);
    assert!(matches!(e, Err(KernelError::Argument(_))));
    let other = layer(4, 8, 53, None).f;
    let e = obs_prune(&mut w, &other, &cur, 0.6, 8, Selection::Tile);
    assert!(matches!(e, Err(KernelError::Shape(_))));
    assert!(matches!(
        hessian_factor(&l.g, 10, 15, 0.01),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        hessian_factor(&l.g, 0, 16, 0.01),
        Err(KernelError::Argument(_))
    ));
    let e = obs_saliency(&l.w, &l.f.hinv_diag()[..3], &cur, &[0.1]);
    assert!(matches!(e, Err(KernelError::Shape(_))));
    // Not positive definite: negative diagonal, no damping.
    let neg: Vec<f64> = (0..4)
        .map(|i| if i % 5 == 0 { -1.0 } else { 0.0 })
        .collect();
    assert!(matches!(
        hessian_factor(&neg, 1, 2, 0.0),
        Err(KernelError::Argument(_))
    ));
}
