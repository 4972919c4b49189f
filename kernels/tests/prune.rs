//! Fast pruning kernels against their naive references, on the inputs that break selection:
//! ties, all-equal and all-zero rows, partly pruned rows, ρ' = ρ, 0, 1, odd shapes.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use kernels::{reference, KernelError, Mask};
use rand::Rng;

const SHAPES: [(usize, usize); 7] = [
    (1, 1),
    (3, 7),
    (5, 64),
    (4, 65),
    (17, 130),
    (9, 1000),
    (2, 11008),
];

/// Checks one incremental per-row call against the reference and the count rule.
fn check_rows(scores: &Tensor, old: &Mask, rho: f64) {
    let new = kernels::prune_rows_incremental(scores, old, rho).unwrap();
    let want = reference::prune_rows_incremental(scores, old, rho).unwrap();
    assert_eq!(new, want, "rho {rho}, {}x{}", old.rows(), old.cols());
    assert!(is_monotone(old, &new));
    let target = target_per_row(rho, old.cols());
    for (before, after) in old.pruned_per_row().into_iter().zip(new.pruned_per_row()) {
        assert_eq!(after, before.max(target));
    }
}

#[test]
fn rows_incremental_matches_reference() {
    let mut rng = rng(1);
    for (rows, cols) in SHAPES {
        for kind in ALL_SCORES {
            let s = scores(kind, rows, cols, &mut rng);
            let ones = Mask::ones(rows, cols);
            for rho in [0.0, 0.3, 0.5, 0.55, 1.0] {
                check_rows(&s, &ones, rho);
            }
            // Rows already partly pruned, some above the later target (non-uniform origin).
            let partial = random_mask(rows, cols, 0.3, &mut rng);
            let rho = (partial.sparsity() + 0.1).min(1.0);
            check_rows(&s, &partial, rho);
            check_rows(&s, &partial, 1.0);
            // Fully active words next to partly pruned ones in the same row.
            let kept: Vec<bool> = (0..rows * cols)
                .map(|i| i % cols >= 64 || rng.random_bool(0.5))
                .collect();
            let mixed = Mask::from_bools(rows, cols, &kept).unwrap();
            check_rows(&s, &mixed, (mixed.sparsity() + 0.2).min(1.0));
            // ρ' = ρ on a mask this kernel made: nothing changes.
            let half = kernels::prune_rows_incremental(&s, &ones, 0.5).unwrap();
            assert_eq!(
                kernels::prune_rows_incremental(&s, &half, 0.5).unwrap(),
                half
            );
        }
    }
}

#[test]
fn two_steps_equal_one_step() {
    let mut rng = rng(2);
    let s = scores(Scores::Ties, 8, 333, &mut rng);
    let ones = Mask::ones(8, 333);
    let step = kernels::prune_rows_incremental(&s, &ones, 0.5).unwrap();
    let step = kernels::prune_rows_incremental(&s, &step, 0.55).unwrap();
    assert_eq!(
        step,
        kernels::prune_rows_incremental(&s, &ones, 0.55).unwrap()
    );
}

#[test]
fn ties_prune_lower_columns_first() {
    let s = tensor(2, 6, vec![1., 1., 1., 1., 1., 1., 3., 0., 0., 2., 0., -0.]);
    let m = kernels::prune_rows_incremental(&s, &Mask::ones(2, 6), 0.5).unwrap();
    let kept: Vec<bool> = m.to_bools();
    assert_eq!(&kept[..6], &[false, false, false, true, true, true]);
    assert_eq!(&kept[6..], &[true, false, false, true, false, true]);
}

#[test]
fn rows_above_target_are_left_as_is() {
    // Row 0 has 3 of 4 pruned, row 1 none; target 50 % → row 0 keeps its 3, row 1 gets 2.
    let s = tensor(2, 4, vec![4., 3., 2., 1., 4., 3., 2., 1.]);
    let old = Mask::from_bools(2, 4, &[true, false, false, false, true, true, true, true]).unwrap();
    let new = kernels::prune_rows_incremental(&s, &old, 0.5).unwrap();
    assert_eq!(new.pruned_per_row(), vec![3, 2]);
    assert_eq!(new.get(1, 3), Some(false));
    assert_eq!(new.get(1, 2), Some(false));
}

#[test]
fn wanda_scores_match_reference() {
    let mut rng = rng(3);
    // The last shape's output (5.6 MB) spans whole 2 MiB pages: the huge-page advised buffer.
    for (rows, cols) in SHAPES.into_iter().chain([(128, 11008)]) {
        let w = scores(Scores::Random, rows, cols, &mut rng);
        let sq: Vec<f32> = (0..cols).map(|_| rng.random_range(0.0..10.0)).collect();
        let sq = Tensor::new(sq, &Device::Cpu).unwrap();
        let got = kernels::wanda_scores(&w, &sq)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let want = reference::wanda_scores(&w, &sq)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(got, want);
    }
    // Hand-computed: |W| ⊙ sqrt(Σx²) broadcast over rows.
    let w = tensor(2, 2, vec![-1., 2., 3., -4.]);
    let sq = Tensor::new(&[4f32, 9.], &Device::Cpu).unwrap();
    let s = kernels::wanda_scores(&w, &sq)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(s, vec![vec![2., 6.], vec![6., 12.]]);
    // Other dtypes and non-contiguous inputs are read as f32.
    let wt = w.t().unwrap().to_dtype(DType::F64).unwrap();
    let s = kernels::wanda_scores(&wt, &sq)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(s, vec![vec![2., 9.], vec![4., 12.]]);
}

#[test]
fn layer_incremental_and_magnitude_match_reference() {
    let mut rng = rng(4);
    for (rows, cols) in SHAPES {
        for kind in ALL_SCORES {
            let w = scores(kind, rows, cols, &mut rng);
            let abs = w.abs().unwrap();
            let partial = random_mask(rows, cols, 0.2, &mut rng);
            for (mask, rho) in [
                (Mask::ones(rows, cols), 0.5),
                (partial.clone(), 0.6),
                (partial, 1.0),
            ] {
                let got = kernels::magnitude_mask_per_layer(&w, &mask, rho).unwrap();
                let want = reference::prune_layer_incremental(&abs, &mask, rho).unwrap();
                assert_eq!(got, want, "{kind:?} {rows}x{cols} rho {rho}");
                let target = (rho * (rows * cols) as f64).round() as usize;
                assert_eq!(got.count_pruned(), target.max(mask.count_pruned()));
                assert!(is_monotone(&mask, &got));

                let got = kernels::magnitude_mask_per_row(&w, &mask, rho).unwrap();
                let want = reference::prune_rows_incremental(&abs, &mask, rho).unwrap();
                assert_eq!(got, want);
            }
        }
    }
}

#[test]
fn nm_masks_match_reference_block_by_block() {
    let mut rng = rng(5);
    for (n, m) in [(2, 4), (4, 8), (1, 2), (3, 5), (1, 3)] {
        for kind in ALL_SCORES {
            let (rows, cols) = (7, m * 13);
            let s = scores(kind, rows, cols, &mut rng);
            let got = kernels::nm_mask(&s, n, m).unwrap();
            assert_eq!(
                got,
                reference::nm_mask(&s, n, m).unwrap(),
                "{n}:{m} {kind:?}"
            );
            let v = s.to_vec2::<f32>().unwrap();
            for (r, row) in v.iter().enumerate() {
                for g in (0..cols).step_by(m) {
                    let pruned: Vec<usize> = (g..g + m)
                        .filter(|&c| got.get(r, c) == Some(false))
                        .collect();
                    assert_eq!(pruned.len(), n, "row {r} group {g}");
                    let max_pruned = pruned.iter().map(|&c| row[c]).fold(f32::MIN, f32::max);
                    assert!((g..g + m)
                        .filter(|c| !pruned.contains(c))
                        .all(|c| row[c] >= max_pruned));
                }
            }
        }
    }
    // Wanda's 2:4 on one hand-made group: the two lowest go, ties by column.
    let s = tensor(1, 8, vec![0.5, 0.1, 0.9, 0.3, 1., 1., 1., 1.]);
    let kept = kernels::nm_mask(&s, 2, 4).unwrap().to_bools();
    assert_eq!(
        kept,
        vec![true, false, true, false, false, false, true, true]
    );
}

#[test]
fn bad_arguments_are_errors() {
    let s = tensor(2, 4, vec![1.; 8]);
    let ones = Mask::ones(2, 4);
    let half = kernels::prune_rows_incremental(&s, &ones, 0.5).unwrap();
    let sparsity = |r: kernels::Result<Mask>| matches!(r, Err(KernelError::Sparsity(_)));
    assert!(sparsity(kernels::prune_rows_incremental(&s, &half, 0.25)));
    assert!(sparsity(kernels::prune_rows_incremental(&s, &ones, 1.5)));
    assert!(sparsity(kernels::prune_rows_incremental(&s, &ones, -0.1)));
    assert!(sparsity(kernels::prune_rows_incremental(
        &s,
        &ones,
        f64::NAN
    )));
    assert!(sparsity(kernels::prune_layer_incremental(&s, &half, 0.25)));
    let shape = |r: kernels::Result<Mask>| matches!(r, Err(KernelError::Shape(_)));
    assert!(shape(kernels::prune_rows_incremental(
        &s,
        &Mask::ones(4, 2),
        0.5
    )));
    assert!(shape(kernels::prune_layer_incremental(
        &s,
        &Mask::ones(2, 5),
        0.5
    )));
    assert!(shape(kernels::prune_rows_incremental(
        &s.flatten_all().unwrap(),
        &ones,
        0.5
    )));
    let empty = Tensor::zeros((0, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(shape(kernels::prune_rows_incremental(
        &empty,
        &Mask::ones(0, 4),
        0.5
    )));

    let nan = tensor(2, 4, vec![1., 2., f32::NAN, 3., 1., 2., 3., 4.]);
    let is_nan = |r: kernels::Result<Mask>| matches!(r, Err(KernelError::NaN(_)));
    assert!(is_nan(kernels::prune_rows_incremental(&nan, &ones, 0.5)));
    assert!(
        is_nan(kernels::prune_rows_incremental(&nan, &ones, 0.0)),
        "NaN found in rows left as is"
    );
    assert!(is_nan(kernels::prune_layer_incremental(&nan, &ones, 0.5)));
    assert!(is_nan(kernels::nm_mask(&nan, 2, 4)));

    for (n, m) in [(4, 4), (5, 4), (0, 4), (0, 0), (1, 0), (1, 3)] {
        assert!(
            matches!(kernels::nm_mask(&s, n, m), Err(KernelError::NM { .. })),
            "{n}:{m}"
        );
    }

    let sq = Tensor::new(&[1f32, 1., 1.], &Device::Cpu).unwrap();
    assert!(matches!(
        kernels::wanda_scores(&s, &sq),
        Err(KernelError::Shape(_))
    ));
    let sq = Tensor::new(&[1f32, -1., 1., 1.], &Device::Cpu).unwrap();
    assert!(matches!(
        kernels::wanda_scores(&s, &sq),
        Err(KernelError::Argument(_))
    ));
}
