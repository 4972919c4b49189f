//! Mask bitsets and mask deltas: packing, tensors, deltas, and the checked byte form.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use kernels::{KernelError, Mask, MaskDelta};

#[test]
fn ones_zeros_and_counts() {
    for (rows, cols) in [(1, 1), (3, 7), (2, 64), (2, 65), (4, 130)] {
        let ones = Mask::ones(rows, cols);
        assert_eq!(
            (ones.count_kept(), ones.count_pruned(), ones.sparsity()),
            (rows * cols, 0, 0.0)
        );
        let zeros = Mask::zeros(rows, cols);
        assert_eq!((zeros.count_pruned(), zeros.sparsity()), (rows * cols, 1.0));
        assert_eq!(zeros.pruned_per_row(), vec![cols; rows]);
    }
}

#[test]
fn pack_unpack_and_tensor_round_trips() {
    let mut rng = rng(21);
    for (rows, cols) in [(1, 1), (3, 7), (5, 64), (4, 65), (3, 200)] {
        let mask = random_mask(rows, cols, 0.4, &mut rng);
        let bools = mask.to_bools();
        assert_eq!(Mask::from_bools(rows, cols, &bools).unwrap(), mask);
        assert_eq!(
            Mask::from_words(rows, cols, mask.words().to_vec()).unwrap(),
            mask
        );
        for dtype in [DType::U8, DType::F32, DType::BF16] {
            let t = mask.to_tensor(dtype, &Device::Cpu).unwrap();
            assert_eq!(t.dtype(), dtype);
            assert_eq!(Mask::from_tensor(&t).unwrap(), mask);
        }
        let t = mask
            .to_tensor(DType::F32, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap();
        let want: Vec<f32> = bools.iter().map(|&k| if k { 1. } else { 0. }).collect();
        assert_eq!(t.to_vec1::<f32>().unwrap(), want, "1 = kept, 0 = pruned");
    }
    assert!(Mask::from_bools(2, 2, &[true; 3]).is_err());
    assert!(
        Mask::from_words(1, 3, vec![0b1111]).is_err(),
        "padding bit set"
    );
    assert!(Mask::from_words(1, 3, vec![0, 0]).is_err());
}

#[test]
fn apply_zeroes_pruned_weights() {
    let w = tensor(2, 3, vec![1., f32::INFINITY, -3., f32::NAN, 5., 6.]);
    let mask = Mask::from_bools(2, 3, &[true, false, true, false, true, true]).unwrap();
    let v = mask.apply(&w).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(v, vec![vec![1., 0., -3.], vec![0., 5., 6.]]);
    assert!(matches!(
        mask.apply(&w.t().unwrap()),
        Err(KernelError::Shape(_))
    ));
}

/// The one-pass f32 path gives exactly `apply`'s values (NaN and inf pruned to 0, padding
/// columns, transposed input), and other dtypes go through `apply` itself.
#[test]
fn apply_fast_equals_apply() {
    let w = tensor(2, 3, vec![1., f32::INFINITY, -3., f32::NAN, 5., 6.]);
    let mask = Mask::from_bools(2, 3, &[true, false, true, false, true, true]).unwrap();
    let v = mask.apply_fast(&w).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(v, vec![vec![1., 0., -3.], vec![0., 5., 6.]]);
    assert!(matches!(
        mask.apply_fast(&w.t().unwrap()),
        Err(KernelError::Shape(_))
    ));
    let mut rng = rng(31);
    for (rows, cols) in [(1, 1), (3, 64), (5, 65), (7, 130)] {
        let mask = random_mask(rows, cols, 0.5, &mut rng);
        let w = Tensor::randn(0f32, 1.0, (cols, rows), &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        let fast = mask.apply_fast(&w).unwrap().to_vec2::<f32>().unwrap();
        let slow = mask.apply(&w).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(fast, slow, "{rows}x{cols}");
        let w64 = w.to_dtype(DType::F64).unwrap();
        let fast = mask.apply_fast(&w64).unwrap();
        assert_eq!(fast.dtype(), DType::F64);
        assert_eq!(
            fast.to_vec2::<f64>().unwrap(),
            mask.apply(&w64).unwrap().to_vec2::<f64>().unwrap()
        );
    }
}

#[test]
fn kept_outside_counts_re_enabled_weights() {
    let old = Mask::from_bools(2, 3, &[true, false, true, false, true, true]).unwrap();
    let sub = Mask::from_bools(2, 3, &[true, false, false, false, true, false]).unwrap();
    let other = Mask::from_bools(2, 3, &[false, true, true, true, true, true]).unwrap();
    assert_eq!(sub.count_kept_outside(&old).unwrap(), 0);
    assert_eq!(old.count_kept_outside(&old).unwrap(), 0);
    assert_eq!(other.count_kept_outside(&old).unwrap(), 2);
    assert_eq!(old.count_kept_outside(&sub).unwrap(), 2);
    assert!(old.count_kept_outside(&Mask::ones(3, 2)).is_err());
}

#[test]
fn delta_between_and_apply() {
    let mut rng = rng(22);
    let old = random_mask(9, 101, 0.3, &mut rng);
    let extra = random_mask(9, 101, 0.1, &mut rng);
    let new_words: Vec<u64> = old
        .words()
        .iter()
        .zip(extra.words())
        .map(|(o, e)| o & e)
        .collect();
    let new = Mask::from_words(9, 101, new_words).unwrap();
    let delta = MaskDelta::between(&old, &new).unwrap();
    assert_eq!(delta.len(), old.count_kept() - new.count_kept());
    assert!(delta.indices().windows(2).all(|w| w[0] < w[1]));
    let mut rebuilt = old.clone();
    delta.apply_to(&mut rebuilt).unwrap();
    assert_eq!(rebuilt, new);
    // Applying again changes nothing; an empty delta is empty.
    delta.apply_to(&mut rebuilt).unwrap();
    assert_eq!(rebuilt, new);
    assert!(MaskDelta::between(&new, &new).unwrap().is_empty());

    assert!(
        matches!(MaskDelta::between(&new, &old), Err(KernelError::Mask(_))),
        "not monotone"
    );
    assert!(matches!(
        MaskDelta::between(&old, &Mask::ones(9, 100)),
        Err(KernelError::Shape(_))
    ));
    assert!(delta.apply_to(&mut Mask::ones(1, 1)).is_err());
}

/// A delta pruning each kept weight of `old` with probability `p`.
fn delta_of(rows: usize, cols: usize, p: f64, seed: u64) -> MaskDelta {
    let mut rng = rng(seed);
    let extra = random_mask(rows, cols, p, &mut rng);
    MaskDelta::between(&Mask::ones(rows, cols), &extra).unwrap()
}

#[test]
fn delta_bytes_round_trip_both_encodings() {
    for (p, seed) in [(0.0, 1), (0.01, 2), (0.05, 3), (0.3, 4), (0.9, 5), (1.0, 6)] {
        for (rows, cols) in [(1, 1), (3, 7), (64, 300)] {
            let delta = delta_of(rows, cols, p, seed);
            let bytes = delta.to_bytes();
            assert_eq!(
                MaskDelta::from_bytes(&bytes).unwrap(),
                delta,
                "p {p} {rows}x{cols}"
            );
        }
    }
}

#[test]
fn delta_bytes_are_compact() {
    // 5 % newly pruned of a 512x2048 layer: well under 2 % of its f32 size.
    let delta = delta_of(512, 2048, 0.05, 7);
    let f32_bytes = 512 * 2048 * 4;
    let size = delta.to_bytes().len();
    assert!(
        size * 50 <= f32_bytes,
        "{size} bytes for {} indices",
        delta.len()
    );
    // Dense deltas fall back to the bitset: at most 1 bit per weight plus the header.
    let dense = delta_of(512, 2048, 0.5, 8);
    assert!(dense.to_bytes().len() <= 512 * 2048 / 8 + 32);
}

#[test]
fn corrupt_delta_bytes_are_errors() {
    for p in [0.05, 0.5] {
        let bytes = delta_of(16, 40, p, 9).to_bytes();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[i] ^= flip;
                let err = MaskDelta::from_bytes(&bad).unwrap_err();
                assert!(
                    matches!(err, KernelError::CorruptDelta(_)),
                    "byte {i}: {err}"
                );
            }
        }
        for len in 0..bytes.len() {
            assert!(
                MaskDelta::from_bytes(&bytes[..len]).is_err(),
                "truncated to {len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(MaskDelta::from_bytes(&longer).is_err());
    }
}

#[test]
fn mask_from_tensor_reads_nonzero_as_kept() {
    let t = Tensor::new(&[[0f32, 0.5, -1.], [f32::NAN, 0., -0.]], &Device::Cpu).unwrap();
    let m = Mask::from_tensor(&t).unwrap();
    assert_eq!(m.to_bools(), vec![false, true, true, true, false, false]);
    assert!(Mask::from_tensor(&t.flatten_all().unwrap()).is_err());
}
