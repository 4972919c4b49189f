//! The radix-selection kernels ([`kernels::prune_rows_incremental`] and the fused
//! [`kernels::wanda_prune_rows`]) against the full-sort reference and against the older
//! `select_nth` kernel, on the inputs that stress the digits: keys sharing their top bits,
//! the ends of the key order, ties straddling the threshold, zero norms, partly pruned rows.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use kernels::{reference, KernelError, Mask};
use rand::rngs::StdRng;
use rand::Rng;

const SHAPES: [(usize, usize); 8] = [
    (1, 1),
    (3, 7),
    (5, 64),
    (4, 65),
    (17, 130),
    (9, 1000),
    (3, 11008),
    (2, 11009),
];

/// Per-row counts: `max(before, round(ρ'·cols))`, and nothing kept that `old` pruned.
fn check_counts(old: &Mask, new: &Mask, rho: f64) {
    assert!(is_monotone(old, new));
    let target = target_per_row(rho, old.cols());
    for (r, (before, after)) in old
        .pruned_per_row()
        .into_iter()
        .zip(new.pruned_per_row())
        .enumerate()
    {
        assert_eq!(after, before.max(target), "row {r} rho {rho}");
    }
}

/// Masks to prune further: fresh, randomly 30 % pruned, and the kernel's own 50 % mask.
fn masks(s: &Tensor, rng: &mut StdRng) -> Vec<Mask> {
    let (rows, cols) = s.dims2().unwrap();
    let ones = Mask::ones(rows, cols);
    let half = reference::prune_rows_incremental(s, &ones, 0.5).unwrap();
    vec![ones, random_mask(rows, cols, 0.3, rng), half]
}

fn targets(old: &Mask) -> Vec<f64> {
    let rho = old.sparsity();
    let mut t = vec![rho, (rho + 0.05).min(1.0), (rho + 0.3).min(1.0), 1.0];
    if rho == 0.0 {
        t.push(0.0);
    }
    t
}

#[test]
fn prune_rows_matches_both_references_on_every_score_kind() {
    let mut rng = rng(11);
    for (rows, cols) in SHAPES {
        for kind in SELECT_SCORES {
            let s = scores(kind, rows, cols, &mut rng);
            for old in masks(&s, &mut rng) {
                for rho in targets(&old) {
                    // The 50 % mask at ρ' = 0.5: the previous per-row count is the target.
                    if target_per_row(rho, cols) * rows < old.count_pruned() {
                        continue;
                    }
                    let got = kernels::prune_rows_incremental(&s, &old, rho).unwrap();
                    let want = reference::prune_rows_incremental(&s, &old, rho).unwrap();
                    assert_eq!(got, want, "{kind:?} {rows}x{cols} rho {rho}");
                    let nth = reference::prune_rows_select_nth(&s, &old, rho).unwrap();
                    assert_eq!(got, nth, "{kind:?} {rows}x{cols} rho {rho}");
                    check_counts(&old, &got, rho);
                }
            }
        }
    }
}

/// Σx² per column: random, with exact zeros and -0.0 (whole score columns of ±0: ties), or
/// all ones (scores = |w|, so w and -w tie).
fn sq_norms(kind: usize, cols: usize, rng: &mut StdRng) -> Tensor {
    let v: Vec<f32> = (0..cols)
        .map(|c| match kind {
            0 => rng.random_range(0.0..10.0),
            1 if c % 3 == 0 => 0.0,
            1 if c % 3 == 1 => -0.0,
            1 => rng.random_range(0.0..10.0),
            _ => 1.0,
        })
        .collect();
    Tensor::new(v, &Device::Cpu).unwrap()
}

#[test]
fn wanda_prune_rows_equals_scores_then_selection() {
    let mut rng = rng(12);
    for (rows, cols) in SHAPES {
        for kind in SELECT_SCORES {
            let w = scores(kind, rows, cols, &mut rng);
            for sq_kind in 0..3 {
                let sq = sq_norms(sq_kind, cols, &mut rng);
                let s = reference::wanda_scores(&w, &sq).unwrap();
                // ∞ · 0 is a NaN score: an error on both paths (checked below).
                let nan = s
                    .to_vec2::<f32>()
                    .unwrap()
                    .concat()
                    .iter()
                    .any(|x| x.is_nan());
                for old in masks(&w.abs().unwrap(), &mut rng) {
                    for rho in targets(&old) {
                        if target_per_row(rho, cols) * rows < old.count_pruned() {
                            continue;
                        }
                        let got = kernels::wanda_prune_rows(&w, &sq, &old, rho);
                        if nan {
                            assert!(matches!(got, Err(KernelError::NaN(_))), "{kind:?}");
                            continue;
                        }
                        let got = got.unwrap();
                        let want = reference::prune_rows_incremental(&s, &old, rho).unwrap();
                        assert_eq!(got, want, "{kind:?} sq {sq_kind} {rows}x{cols} rho {rho}");
                        let composed = kernels::wanda_scores(&w, &sq).unwrap();
                        assert_eq!(
                            got,
                            kernels::prune_rows_incremental(&composed, &old, rho).unwrap()
                        );
                        check_counts(&old, &got, rho);
                    }
                }
            }
        }
    }
}

#[test]
fn wanda_prune_rows_on_a_down_proj_row_block() {
    // 64 rows of LLaMA-7B down_proj width, 50 % then 55 % (the benchmark's steps) and a
    // one-shot 55 %, which must agree with the two steps.
    let (rows, cols) = (64, 11008);
    let mut rng = rng(13);
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-0.1..0.1))
        .collect();
    let w = tensor(rows, cols, w);
    let sq = sq_norms(0, cols, &mut rng);
    let s = reference::wanda_scores(&w, &sq).unwrap();
    let ones = Mask::ones(rows, cols);
    let half = kernels::wanda_prune_rows(&w, &sq, &ones, 0.5).unwrap();
    assert_eq!(
        half,
        reference::prune_rows_incremental(&s, &ones, 0.5).unwrap()
    );
    assert_eq!(half.pruned_per_row(), vec![5504; rows]);
    let more = kernels::wanda_prune_rows(&w, &sq, &half, 0.55).unwrap();
    assert_eq!(
        more,
        reference::prune_rows_incremental(&s, &half, 0.55).unwrap()
    );
    assert_eq!(more.pruned_per_row(), vec![6054; rows]);
    assert_eq!(
        more,
        kernels::wanda_prune_rows(&w, &sq, &ones, 0.55).unwrap()
    );
}

#[test]
fn ties_at_the_threshold_go_in_column_order() {
    // Row 0: scores 2,1,1,1,1,0 (|w|·1), 3 to prune → the 0 and the first two 1s.
    // Row 1: all equal with column 1 already pruned, 50 % → columns 0, 2 (the first active).
    let w = tensor(
        2,
        6,
        vec![2., -1., 1., -1., 1., 0., 5., 5., -5., 5., 5., -5.],
    );
    let sq = Tensor::new(&[1f32; 6], &Device::Cpu).unwrap();
    let old = Mask::from_bools(
        2,
        6,
        &[
            true, true, true, true, true, true, true, false, true, true, true, true,
        ],
    )
    .unwrap();
    let kept = kernels::wanda_prune_rows(&w, &sq, &old, 0.5)
        .unwrap()
        .to_bools();
    assert_eq!(&kept[..6], &[true, false, false, true, true, false]);
    assert_eq!(&kept[6..], &[false, false, false, true, true, true]);
    // -0.0 norms give -0.0 scores that tie with +0.0 ones.
    let sq = Tensor::new(&[-0f32, 0., -0., 0., 4., 4.], &Device::Cpu).unwrap();
    let kept = kernels::wanda_prune_rows(&w, &sq, &Mask::ones(2, 6), 0.5)
        .unwrap()
        .to_bools();
    assert_eq!(&kept[..6], &[false, false, false, true, true, true]);
}

#[test]
fn wanda_prune_rows_bad_arguments_are_errors() {
    let w = tensor(2, 4, vec![1., -2., 3., -4., 5., 6., 7., 8.]);
    let sq = Tensor::new(&[1f32, 2., 3., 4.], &Device::Cpu).unwrap();
    let ones = Mask::ones(2, 4);
    let half = kernels::wanda_prune_rows(&w, &sq, &ones, 0.5).unwrap();
    assert_eq!(half.pruned_per_row(), vec![2, 2]);
    let run = |w: &Tensor, sq: &Tensor, m: &Mask, rho| kernels::wanda_prune_rows(w, sq, m, rho);
    let sparsity = |r: kernels::Result<Mask>| matches!(r, Err(KernelError::Sparsity(_)));
    assert!(sparsity(run(&w, &sq, &half, 0.25)));
    assert!(sparsity(run(&w, &sq, &ones, 1.5)));
    assert!(sparsity(run(&w, &sq, &ones, -0.1)));
    assert!(sparsity(run(&w, &sq, &ones, f64::NAN)));
    let shape = |r: kernels::Result<Mask>| matches!(r, Err(KernelError::Shape(_)));
    assert!(shape(run(&w, &sq, &Mask::ones(4, 2), 0.5)));
    let sq3 = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
    assert!(shape(run(&w, &sq3, &ones, 0.5)));
    assert!(shape(run(&w.flatten_all().unwrap(), &sq, &ones, 0.5)));
    let empty = Tensor::zeros((0, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(shape(run(&empty, &sq, &Mask::ones(0, 4), 0.5)));
    let argument = |r: kernels::Result<Mask>| matches!(r, Err(KernelError::Argument(_)));
    let neg = Tensor::new(&[1f32, -1., 3., 4.], &Device::Cpu).unwrap();
    assert!(argument(run(&w, &neg, &ones, 0.5)));
    let nan_sq = Tensor::new(&[1f32, f32::NAN, 3., 4.], &Device::Cpu).unwrap();
    assert!(argument(run(&w, &nan_sq, &ones, 0.5)));
    let is_nan = |r: kernels::Result<Mask>| matches!(r, Err(KernelError::NaN(_)));
    let nan_w = tensor(2, 4, vec![1., 2., 3., 4., 5., f32::NAN, 7., 8.]);
    assert!(is_nan(run(&nan_w, &sq, &ones, 0.5)));
    assert!(
        is_nan(run(&nan_w, &sq, &ones, 0.0)),
        "NaN in rows left as is"
    );
    // ∞ weight times a zero norm.
    let inf_w = tensor(2, 4, vec![1., f32::INFINITY, 3., 4., 5., 6., 7., 8.]);
    let zero_sq = Tensor::new(&[1f32, 0., 3., 4.], &Device::Cpu).unwrap();
    assert!(is_nan(run(&inf_w, &zero_sq, &ones, 0.5)));
    // Other dtypes and non-contiguous weights are read as f32, as by wanda_scores.
    let wt = w.t().unwrap().contiguous().unwrap().t().unwrap();
    assert_eq!(
        run(&wt.to_dtype(DType::F64).unwrap(), &sq, &ones, 0.5).unwrap(),
        half
    );
}
