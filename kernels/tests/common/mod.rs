//! Shared helpers of the integration tests: seeded random matrices, masks and tensors.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use kernels::Mask;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Pruned weights per row that a target sparsity asks for: `round(ρ'·cols)`.
pub fn target_per_row(rho: f64, cols: usize) -> usize {
    (rho * cols as f64).round() as usize
}

pub fn tensor(rows: usize, cols: usize, v: Vec<f32>) -> Tensor {
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

/// Kinds of score matrices the kernels must agree on.
#[derive(Clone, Copy, Debug)]
pub enum Scores {
    /// Continuous values in [-1, 1).
    Random,
    /// Values from {0, 1, 2}: many ties.
    Ties,
    /// Every entry equal.
    AllEqual,
    /// Every entry zero, half of them -0.0.
    AllZero,
    /// Zero rows between random rows.
    SomeZeroRows,
    /// A few hundred adjacent floats just above 1.0: keys that share their top 19 bits, so
    /// radix selection has to go through every digit, with many ties.
    Narrow,
    /// ±∞, ±f32::MAX, ±1, ±MIN_POSITIVE, ±subnormal, ±0.0: the ends of the key order.
    Extremes,
}

pub const ALL_SCORES: [Scores; 5] = [
    Scores::Random,
    Scores::Ties,
    Scores::AllEqual,
    Scores::AllZero,
    Scores::SomeZeroRows,
];

/// [`ALL_SCORES`] and the kinds aimed at the radix selection's digits and key order.
pub const SELECT_SCORES: [Scores; 7] = [
    Scores::Random,
    Scores::Ties,
    Scores::AllEqual,
    Scores::AllZero,
    Scores::SomeZeroRows,
    Scores::Narrow,
    Scores::Extremes,
];

const EXTREMES: [f32; 14] = [
    f32::NEG_INFINITY,
    f32::MIN,
    -1.0,
    -f32::MIN_POSITIVE,
    -1e-45,
    -0.0,
    0.0,
    1e-45,
    f32::MIN_POSITIVE,
    1.0,
    1.0,
    f32::MAX,
    f32::INFINITY,
    f32::INFINITY,
];

pub fn scores(kind: Scores, rows: usize, cols: usize, rng: &mut StdRng) -> Tensor {
    let v = (0..rows * cols)
        .map(|i| match kind {
            Scores::Random => rng.random_range(-1.0..1.0),
            Scores::Ties => rng.random_range(0..3) as f32,
            Scores::AllEqual => 0.25,
            Scores::AllZero if rng.random_bool(0.5) => -0.0,
            Scores::AllZero => 0.0,
            Scores::SomeZeroRows if (i / cols) % 2 == 1 => 0.0,
            Scores::SomeZeroRows => rng.random_range(0.0..1.0),
            Scores::Narrow => f32::from_bits(1f32.to_bits() + rng.random_range(0..300)),
            Scores::Extremes => EXTREMES[rng.random_range(0..EXTREMES.len())],
        })
        .collect();
    tensor(rows, cols, v)
}

/// A mask with each weight pruned with probability `p`.
pub fn random_mask(rows: usize, cols: usize, p: f64, rng: &mut StdRng) -> Mask {
    let kept: Vec<bool> = (0..rows * cols).map(|_| !rng.random_bool(p)).collect();
    Mask::from_bools(rows, cols, &kept).unwrap()
}

/// Whether every weight `new` keeps is kept by `old` too.
pub fn is_monotone(old: &Mask, new: &Mask) -> bool {
    old.words()
        .iter()
        .zip(new.words())
        .all(|(o, n)| n & !o == 0)
}
