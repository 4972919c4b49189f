//! Property tests of per-row incremental selection: for random shapes, scores (with many ties)
//! masks and targets, the result is monotone, has exactly max(old, round(ρ'·cols)) pruned per
//! row, prunes in (score, column) order, and equals the full-sort reference.

mod common;

use common::{is_monotone, tensor};
use kernels::{reference, Mask};
use proptest::prelude::*;

/// (rows, cols, scores from a small set so that ties are common, kept bits, target).
fn case() -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<bool>, f64)> {
    (1usize..6, 1usize..150).prop_flat_map(|(rows, cols)| {
        let n = rows * cols;
        (
            Just(rows),
            Just(cols),
            prop::collection::vec(prop_oneof![(-4i8..5).prop_map(f32::from), -1e3f32..1e3], n),
            prop::collection::vec(prop::bool::weighted(0.7), n),
            0.0f64..=1.0,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn per_row_selection_invariants((rows, cols, s, kept, rho) in case()) {
        let scores = tensor(rows, cols, s.clone());
        let old = Mask::from_bools(rows, cols, &kept).unwrap();
        let target = (rho * cols as f64).round() as usize;
        let result = kernels::prune_rows_incremental(&scores, &old, rho);
        if target * rows < old.count_pruned() {
            prop_assert!(result.is_err(), "target below current sparsity must be refused");
            return Ok(());
        }
        let new = result.unwrap();
        prop_assert!(is_monotone(&old, &new));
        for (r, (before, after)) in old.pruned_per_row().into_iter().zip(new.pruned_per_row()).enumerate() {
            prop_assert_eq!(after, before.max(target), "row {}", r);
            // Every newly pruned weight precedes every still-active one in (score, column) order.
            let row = &s[r * cols..(r + 1) * cols];
            let newly = (0..cols).filter(|&c| old.get(r, c) == Some(true) && new.get(r, c) == Some(false));
            let active: Vec<usize> = (0..cols).filter(|&c| new.get(r, c) == Some(true)).collect();
            for p in newly {
                for &a in &active {
                    prop_assert!(row[p] < row[a] || (row[p] == row[a] && p < a), "row {} cols {} {}", r, p, a);
                }
            }
        }
        prop_assert_eq!(new, reference::prune_rows_incremental(&scores, &old, rho).unwrap());
    }
}

/// (rows, cols, weights and Σx² from small sets so that scores tie often, zero norms
/// included, kept bits, target).
fn wanda_case() -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<f32>, Vec<bool>, f64)> {
    (1usize..6, 1usize..200).prop_flat_map(|(rows, cols)| {
        let n = rows * cols;
        (
            Just(rows),
            Just(cols),
            prop::collection::vec(prop_oneof![(-3i8..4).prop_map(f32::from), -1f32..1f32], n),
            prop::collection::vec(prop_oneof![(0u8..3).prop_map(f32::from), 0f32..4f32], cols),
            prop::collection::vec(prop::bool::weighted(0.8), n),
            0.0f64..=1.0,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The fused kernel is the composition of the reference score and selection.
    #[test]
    fn wanda_prune_rows_is_score_then_select((rows, cols, w, sq, kept, rho) in wanda_case()) {
        let w = tensor(rows, cols, w);
        let sq = candle_core::Tensor::new(sq, &candle_core::Device::Cpu).unwrap();
        let old = Mask::from_bools(rows, cols, &kept).unwrap();
        let target = (rho * cols as f64).round() as usize;
        let result = kernels::wanda_prune_rows(&w, &sq, &old, rho);
        if target * rows < old.count_pruned() {
            prop_assert!(result.is_err());
            return Ok(());
        }
        let new = result.unwrap();
        let s = reference::wanda_scores(&w, &sq).unwrap();
        prop_assert_eq!(&new, &reference::prune_rows_incremental(&s, &old, rho).unwrap());
        for (before, after) in old.pruned_per_row().into_iter().zip(new.pruned_per_row()) {
            prop_assert_eq!(after, before.max(target));
        }
    }
}
