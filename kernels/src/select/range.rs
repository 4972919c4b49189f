//! The first step of the per-row selection in [`super`]: a key range guessed from a sample,
//! then one vector pass that counts the keys below it exactly and gathers those inside; and
//! the last, the threshold among the gathered keys ([`refine`]).
//!
//! Why: a histogram of every key's top bits costs one scalar memory increment per key, and
//! was ~40 % of the fused Wanda kernel. A histogram of every [`STRIDE`]-th key, made during the
//! key pass, locates the threshold to within a few bins; the exact count then costs vector
//! compares only. The guess is only ever a guess: when the counts show the threshold is not
//! inside the range, the caller falls back to the full histogram, so results never depend on it.

pub(super) use super::lanes::gather;
use super::{find_bin, find_bin_from, Threshold, BLOCK, INACTIVE, LOW_BITS, SMALL, TOP_BITS};

/// One key in `STRIDE` (column `c` with `c % STRIDE == 0`) goes into the sample histogram.
/// 8 rather than 4: half the increments for a range √2 wider, 1.5 ms less CPU time per
/// 4096 x 11008 call, measured (16 was no better than 8).
pub(super) const STRIDE: usize = 8;

/// The sampled columns of a block of [`BLOCK`] as bits of its mask word.
pub(super) const SAMPLED: u64 = 0x0101_0101_0101_0101;
const _: () = assert!(BLOCK % STRIDE == 0 && SAMPLED.count_ones() as usize == BLOCK / STRIDE);

/// Standard deviations of the sample rank kept on each side of the expected one: a miss (and
/// its fallback) in about 1 % of rows or fewer, as the range is rounded out to whole bins.
const Z: f64 = 2.5;

/// The range of keys `lo ..= hi` that should hold the `need`-th smallest of `active` keys,
/// from `hist`, the histogram of the top [`TOP_BITS`] of `samples` of them drawn at fixed
/// columns: the bins of sample ranks `need/active · samples ± (Z σ + 1)`, whole, with `σ` the
/// binomial deviation of that rank. Ranks off either end open the range to that end.
pub(super) fn guess(hist: &[u32], samples: usize, need: usize, active: usize) -> (u32, u32) {
    let p = need as f64 / active as f64;
    let mid = p * samples as f64;
    let margin = Z * (samples as f64 * p * (1.0 - p)).sqrt() + 1.0;
    let (first, last) = ((mid - margin).floor(), (mid + margin).ceil());
    let shift = 32 - TOP_BITS;
    // The second rank is searched from the first one's bin: one scan of the histogram.
    let (lo, from) = if first < 1.0 {
        (0, (0, 0))
    } else {
        let (bin, below) = find_bin(hist, first as usize);
        (bin << shift, (bin as usize, below))
    };
    let hi = if last > samples as f64 {
        INACTIVE - 1
    } else {
        let bin = find_bin_from(hist, last as usize, from.0, from.1).0;
        (((u64::from(bin) + 1) << shift) - 1).min(u64::from(INACTIVE - 1)) as u32
    };
    (lo, hi)
}

/// The threshold among candidate keys `cand`, all in `base ..= base + (2^bits − 1)`, that
/// hold every key of the row whose rank could be the wanted one: it is the `rank`-th (1-based)
/// candidate, and `below` keys of the row are smaller than every candidate. Histograms of the
/// next [`LOW_BITS`] of `k − base` keep the one bin holding it until few candidates are left,
/// then `select_nth_unstable` picks it. `spare` (as long as `cand`) takes each bin's members
/// in turn.
#[inline(always)]
pub(super) fn refine<'a, const AVX2: bool>(
    mut cand: &'a mut [u32],
    mut spare: &'a mut [u32],
    mut rank: usize,
    mut below: usize,
    mut base: u32,
    mut bits: u32,
) -> Threshold {
    let need = below + rank;
    let mut n = cand.len();
    let mut small = [0u32; 1 << LOW_BITS];
    while n > SMALL && bits > 0 {
        let step = LOW_BITS.min(bits);
        bits -= step;
        let shift = bits;
        let start = base;
        let digit = |k: u32| ((k - start) >> shift) as usize;
        let hist = &mut small[..1 << step];
        hist.fill(0);
        for &k in &cand[..n] {
            hist[digit(k)] += 1;
        }
        let (bin, less) = find_bin(hist, rank);
        below += less;
        rank -= less;
        base += bin << shift;
        // The bin's members, by the vector gather (a scalar filter was twice as slow).
        (n, _) = gather::<AVX2>(&cand[..n], base, base + ((1 << shift) - 1), spare);
        std::mem::swap(&mut cand, &mut spare);
    }
    let cand = &mut cand[..n];
    let (_, &mut t, _) = cand.select_nth_unstable(rank - 1);
    let less = cand.iter().filter(|&&k| k < t).count();
    let equal = cand.iter().filter(|&&k| k == t).count();
    below += less;
    Threshold {
        key: t,
        ties: need - below,
        all_ties: need - below == equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guess_covers_the_bins_around_the_expected_rank() {
        let shift = 32 - TOP_BITS;
        let mut hist = [0u32; 1 << TOP_BITS];
        (hist[10], hist[11], hist[12], hist[13]) = (100, 100, 100, 100);
        // Median of 400 samples: rank 200 ± (Z·10 + 1), inside bins 11 and 12.
        const { assert!(Z * 10.0 + 1.0 < 99.0) };
        let (lo, hi) = guess(&hist, 400, 500, 1000);
        assert_eq!((lo, hi), (11 << shift, (13 << shift) - 1));
        // A rank near a bin's end takes in its neighbour: 20 % of 400 is rank 80 of bin 10.
        assert_eq!(guess(&hist, 400, 200, 1000).1, (12 << shift) - 1);
        // Near the ends the range opens.
        assert_eq!(guess(&hist, 400, 1, 1000).0, 0);
        assert_eq!(guess(&hist, 400, 999, 1000).1, INACTIVE - 1);
        // No samples at all: everything.
        assert_eq!(guess(&[0; 1 << TOP_BITS], 0, 3, 10), (0, INACTIVE - 1));
        // The last bin stops below INACTIVE.
        let mut hist = [0u32; 1 << TOP_BITS];
        hist[(1 << TOP_BITS) - 1] = 50;
        assert_eq!(guess(&hist, 50, 10, 20).1, INACTIVE - 1);
    }

    #[test]
    fn gather_counts_below_and_keeps_the_range_in_order() {
        let keys: Vec<u32> = (0..200u32).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
        let mut cand = vec![0; keys.len()];
        for (lo, hi) in [
            (0, u32::MAX),
            (0x4000_0000, 0xc000_0000),
            (7, 7),
            (u32::MAX, u32::MAX),
        ] {
            for len in [0, 1, 63, 64, 65, 200] {
                let keys = &keys[..len];
                for wide in [false, super::super::avx2()] {
                    let (n, below) = if wide {
                        gather::<true>(keys, lo, hi, &mut cand)
                    } else {
                        gather::<false>(keys, lo, hi, &mut cand)
                    };
                    let want: Vec<u32> = keys
                        .iter()
                        .copied()
                        .filter(|k| (lo..=hi).contains(k))
                        .collect();
                    assert_eq!(&cand[..n], &want[..], "{lo:#x} {hi:#x} {len} {wide}");
                    assert_eq!(below, keys.iter().filter(|&&k| k < lo).count());
                }
            }
        }
    }
}
