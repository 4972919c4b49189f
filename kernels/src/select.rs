//! Per-row selection on `u32` order keys: the CPU core of [`crate::prune_rows_incremental`]
//! and [`crate::wanda_prune_rows`].
//!
//! Under the tie rule (lowest score first, equal scores in increasing column order) the
//! weights a row loses are fixed by one threshold key `T`, the `need`-th smallest active key:
//! every active weight with a key `< T`, then the first `need − count(< T)` active weights with
//! key `== T`, in column order. So no `(score, column)` pair ever has to be ordered: `T` is
//! found by selection on the keys and one sweep then clears the mask bits.
//!
//! Finding `T`: a histogram of the top key bits of every 8th key (made in the key pass) guesses
//! a key range that holds it; one vector pass counts the keys below the range exactly and
//! gathers those inside ([`range`]). If the counts show `T` inside, radix selection goes on in
//! the gathered keys (histogram of the next bits, keep the bin holding `T`, repeat, then
//! `select_nth_unstable` on the last few dozen). If not (a rare unlucky sample) the row falls
//! back to the histogram of every key's top bits and the members of its bin: the same answer,
//! later. A row costs a few passes over its `cols` keys in a per-thread buffer (43 KiB for
//! 11008 columns, so in L1/L2) and no sort; the scores are read from memory once.

use rayon::prelude::*;

use crate::mask::count_ones;
use crate::{KernelError, Mask, Result};

mod keys;
mod lanes;
mod range;
use lanes::compare;

/// Key of an inactive (already pruned) weight. No score has it (the largest non-NaN order key
/// is +∞'s, `0xFF80_0000`, and NaN scores are refused), so inactive weights come after every
/// active one and are never selected.
const INACTIVE: u32 = u32::MAX;

/// Bits of the first radix digit: 4096 bins, 16 KiB. Finer bins than 11 bits narrow the
/// sampled range (fewer candidates to gather and refine) for a little more zeroing: 1.5 ms
/// less CPU time per 4096 x 11008 call, measured.
const TOP_BITS: u32 = 12;
/// Bits of each later digit, applied only to the gathered candidates (a few per cent of the
/// row), so a small histogram is enough.
const LOW_BITS: u32 = 8;
/// At or below this many candidates `select_nth_unstable` is cheaper than another histogram.
const SMALL: usize = 64;

/// Bits per mask word, and columns per block of the key pass.
pub(crate) const BLOCK: usize = 64;

/// Writes the order keys ([`crate::prune::order_key`]) of columns `c0 .. c0 + out.len()` of
/// row `r` to `out` (at most [`BLOCK`] long) and returns whether any of those scores is NaN.
/// Inactive columns may get any key: the caller overwrites them.
pub(crate) trait KeySource: Sync {
    fn keys(&self, r: usize, c0: usize, out: &mut [u32]) -> bool;
}

/// How far ahead of the key pass [`prefetch`] asks for the matrix, in f32: 16 KiB, about the
/// data of the next 64 blocks.
const AHEAD: usize = 4096;

/// Asks the CPU to start loading the block of `data` [`AHEAD`] elements after `i` (one
/// [`BLOCK`], four cache lines). The key pass interleaves its loads with histogram work, and
/// without this it stalled on memory for about a third of its time.
#[inline(always)]
pub(crate) fn prefetch(data: &[f32], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if i + AHEAD + BLOCK <= data.len() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = data[i + AHEAD..].as_ptr().cast::<i8>();
        for line in 0..BLOCK / 16 {
            // SAFETY: a prefetch never faults, and the address is inside `data` anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(line * 64)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, i);
}

/// Prunes, in every row of a copy of `mask`, the `per_row.saturating_sub(pruned)` active
/// weights that come first in (key, column) order, rows in parallel. Errors when any key
/// source block reports a NaN, in any row (checked even in rows that need nothing).
pub(crate) fn prune_rows(mask: &Mask, per_row: usize, src: &impl KeySource) -> Result<Mask> {
    prune_rows_on(avx2(), Level1::Sampled, mask, per_row, src)
}

/// How a row's threshold is first located (the later digits are the same for all).
#[derive(Clone, Copy, Debug)]
enum Level1 {
    /// A range guessed from a sample of the keys, checked by exact counts (the kernel).
    Sampled,
    /// The histogram of the top [`TOP_BITS`] of every active key at once (the fallback, on
    /// every row: for the tests).
    #[cfg(test)]
    Full,
    /// A given range `lo ..= hi` in place of the sampled one: the tests' way of making the
    /// guess miss, or be narrow, at will.
    #[cfg(test)]
    Fixed(u32, u32),
}

/// [`prune_rows`] with the vector width (`avx2` only where the CPU has it) and the first step
/// chosen by the caller, so that the tests run every form.
fn prune_rows_on(
    avx2: bool,
    level1: Level1,
    mask: &Mask,
    per_row: usize,
    src: &impl KeySource,
) -> Result<Mask> {
    let cols = mask.cols();
    let mut out = mask.clone();
    let wpr = out.words_per_row();
    out.words_mut()
        .par_chunks_mut(wpr)
        .enumerate()
        .try_for_each_init(
            || Scratch::new(cols),
            |scratch, (r, words)| scratch.prune_row(avx2, level1, r, words, per_row, src),
        )?;
    Ok(out)
}

/// Whether this CPU has AVX2 and the bit instructions that came with it (POPCNT, BMI1/2; in
/// every AVX2 CPU, but a separate feature to the compiler: without it each `count_ones` of the
/// gather was a multiply-and-mask sequence). x86_64 only; the result is cached by std.
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("popcnt")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("bmi2");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// Per-thread buffers, allocated once per rayon job and reused for its rows.
struct Scratch {
    /// The row's keys, [`INACTIVE`] for pruned columns.
    keys: Vec<u32>,
    /// Keys that may be the threshold while it is narrowed down.
    cand: Vec<u32>,
    /// The other half of `cand`'s double buffer in [`range::refine`].
    spare: Vec<u32>,
    /// Histogram of the top [`TOP_BITS`] of the keys (a fixed-size array: no bounds checks).
    hist: Box<[u32; 1 << TOP_BITS]>,
}

impl Scratch {
    fn new(cols: usize) -> Self {
        Self {
            keys: vec![0; cols],
            cand: vec![0; cols],
            spare: vec![0; cols],
            hist: Box::new([0; 1 << TOP_BITS]),
        }
    }

    /// One row, compiled twice: for the x86_64 baseline (SSE2) and for AVX2, which doubles the
    /// width of the key computation (vectorised by the compiler) and of the comparisons; the
    /// CPU decides at run time. Both give the same bits.
    fn prune_row(
        &mut self,
        avx2: bool,
        level1: Level1,
        r: usize,
        words: &mut [u64],
        per_row: usize,
        src: &impl KeySource,
    ) -> Result<()> {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: `avx2` comes from [`avx2`], which detected these features.
            return unsafe { self.prune_row_avx2(level1, r, words, per_row, src) };
        }
        let _ = avx2;
        self.prune_row_with::<false>(level1, r, words, per_row, src)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt,bmi1,bmi2")]
    unsafe fn prune_row_avx2(
        &mut self,
        level1: Level1,
        r: usize,
        words: &mut [u64],
        per_row: usize,
        src: &impl KeySource,
    ) -> Result<()> {
        self.prune_row_with::<true>(level1, r, words, per_row, src)
    }

    #[inline(always)]
    fn prune_row_with<const AVX2: bool>(
        &mut self,
        level1: Level1,
        r: usize,
        words: &mut [u64],
        per_row: usize,
        src: &impl KeySource,
    ) -> Result<()> {
        let cols = self.keys.len();
        let active = count_ones(words);
        let need = per_row.saturating_sub(cols - active);
        // Only rows that keep some and lose some active weights need a threshold.
        let select = need > 0 && need < active;
        let sampled = select && matches!(level1, Level1::Sampled);
        if sampled {
            self.hist.fill(0);
        }
        let (nan, samples) = keys::key_pass(src, r, words, &mut self.keys, sampled, &mut self.hist);
        if nan {
            return Err(KernelError::NaN("scores"));
        }
        if need == active {
            // Everything still active goes (ρ' = 1, or a row with only `need` left).
            words.fill(0);
        } else if select {
            let guess = match level1 {
                Level1::Sampled => Some(range::guess(&self.hist[..], samples, need, active)),
                #[cfg(test)]
                Level1::Full => None,
                #[cfg(test)]
                Level1::Fixed(lo, hi) => Some((lo, hi)),
            };
            let t = self.threshold::<AVX2>(words, need, guess);
            sweep::<AVX2>(words, &self.keys, t);
        }
        Ok(())
    }

    /// The threshold of a row (`words` its mask, `0 < need < active`): from the keys inside
    /// the range `guess` when it holds the threshold, else (the range missed it, or there is
    /// none) from the histogram of every active key's top bits.
    #[inline(always)]
    fn threshold<const AVX2: bool>(
        &mut self,
        words: &[u64],
        need: usize,
        guess: Option<(u32, u32)>,
    ) -> Threshold {
        if let Some((lo, hi)) = guess {
            let (n, below) = range::gather::<AVX2>(&self.keys, lo, hi, &mut self.cand);
            if below < need && need <= below + n {
                let bits = 32 - (hi - lo).leading_zeros();
                let (cand, spare) = (&mut self.cand[..n], &mut self.spare[..n]);
                return range::refine::<AVX2>(cand, spare, need - below, below, lo, bits);
            }
        }
        #[cfg(test)]
        if guess.is_some() {
            tests::FALLBACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.hist.fill(0);
        for (&word, keys) in words.iter().zip(self.keys.chunks(BLOCK)) {
            if word == u64::MAX >> (BLOCK - keys.len()) {
                for &k in keys {
                    self.hist[(k >> (32 - TOP_BITS)) as usize] += 1;
                }
            } else {
                let mut m = word;
                while m != 0 {
                    let k = keys[m.trailing_zeros() as usize];
                    self.hist[(k >> (32 - TOP_BITS)) as usize] += 1;
                    m &= m - 1;
                }
            }
        }
        let shift = 32 - TOP_BITS;
        let (bin, below) = find_bin(&self.hist[..], need);
        // Members of the chosen bin (a few per cent of the row).
        let lo = bin << shift;
        let (n, _) = range::gather::<AVX2>(&self.keys, lo, lo + ((1 << shift) - 1), &mut self.cand);
        let (cand, spare) = (&mut self.cand[..n], &mut self.spare[..n]);
        range::refine::<AVX2>(cand, spare, need - below, below, lo, shift)
    }
}

/// What one row prunes: every active key `< key`, then the first `ties` (≥ 1) active keys
/// equal to `key` in column order; `all_ties` when that is every key equal to `key`.
struct Threshold {
    key: u32,
    ties: usize,
    all_ties: bool,
}

/// The bin holding the `rank`-th (1-based, `rank ≤ Σ hist`) counted key, and how many keys
/// lie in the bins before it.
fn find_bin(hist: &[u32], rank: usize) -> (u32, usize) {
    find_bin_from(hist, rank, 0, 0)
}

/// [`find_bin`] scanning from bin `first`, with `below` (< `rank`) keys in the bins before it:
/// a second rank is found from the first one's bin instead of from bin 0.
fn find_bin_from(hist: &[u32], rank: usize, first: usize, mut below: usize) -> (u32, usize) {
    // Whole groups of 64 bins (summed with vector adds) at group boundaries, otherwise bin by
    // bin. 64 rather than 16: the sample histogram has 4096 bins, half of them (negative
    // scores) empty for Wanda, and scanning them 16 at a time was ~9 % of the fused kernel.
    const GROUP: usize = 64;
    let mut b = first;
    while b < hist.len() {
        if b % GROUP == 0 {
            while let Some(group) = hist.get(b..b + GROUP) {
                let n = group.iter().sum::<u32>() as usize;
                if below + n >= rank {
                    break;
                }
                below += n;
                b += GROUP;
            }
        }
        let h = hist.get(b).map_or(0, |&h| h as usize);
        if b < hist.len() && below + h >= rank {
            return (b as u32, below);
        }
        below += h;
        b += 1;
    }
    // Unreachable while rank ≤ Σ hist; the last bin is a harmless answer otherwise.
    (
        hist.len() as u32 - 1,
        below - *hist.last().unwrap_or(&0) as usize,
    )
}

/// Clears the mask bits of the weights `t` prunes (`keys` are [`INACTIVE`] where `words` is
/// already 0, so they compare above `t.key`).
#[inline(always)]
fn sweep<const AVX2: bool>(words: &mut [u64], keys: &[u32], t: Threshold) {
    // Whole blocks as arrays, the last one padded with INACTIVE (above any threshold, and its
    // mask bits past the row are 0 anyway): with the length known the compiler unrolls the
    // compares with no remainder code, which was ~40 % of the sweep's instructions.
    let chunks = keys.chunks_exact(BLOCK);
    let mut last = [INACTIVE; BLOCK];
    last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    let last = (!chunks.remainder().is_empty()).then_some(&last);
    let blocks = chunks
        .map(|keys| <&[u32; BLOCK]>::try_from(keys).expect("chunks_exact gives whole blocks"))
        .chain(last);
    if t.all_ties {
        // Every key equal to the threshold goes (the usual case: one key is the threshold):
        // keep only those above it. A loop of its own, so that the equality compares of
        // `compare`, unused here, are dropped by the compiler (a sixth of the kernel's time).
        for (word, keys) in words.iter_mut().zip(blocks) {
            *word &= compare::<AVX2>(keys, t.key).0;
        }
        return;
    }
    let mut ties = t.ties;
    for (word, keys) in words.iter_mut().zip(blocks) {
        let (above, mut equal) = compare::<AVX2>(keys, t.key);
        if ties > 0 && equal != 0 {
            // Of the keys equal to the threshold, the first `ties` in column order go.
            let n = equal.count_ones() as usize;
            let gone = if n > ties {
                lowest_bits(equal, ties)
            } else {
                equal
            };
            ties -= n.min(ties);
            equal &= !gone;
        }
        *word &= above | equal;
    }
}

/// The `n` lowest set bits of `x` (`n` < popcount).
fn lowest_bits(mut x: u64, n: usize) -> u64 {
    let mut out = 0;
    for _ in 0..n {
        let low = x & x.wrapping_neg();
        out |= low;
        x ^= low;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Keys given directly, row-major.
    struct Keys(Vec<u32>, usize);

    impl KeySource for Keys {
        fn keys(&self, r: usize, c0: usize, out: &mut [u32]) -> bool {
            out.copy_from_slice(&self.0[r * self.1 + c0..][..out.len()]);
            false
        }
    }

    /// The full-sort answer: per row, active columns by (key, column), the first ones pruned.
    fn by_sort(keys: &Keys, mask: &Mask, per_row: usize) -> Mask {
        let cols = keys.1;
        let mut kept = mask.to_bools();
        for (r, row) in kept.chunks_mut(cols).enumerate() {
            let mut active: Vec<usize> = (0..cols).filter(|&c| row[c]).collect();
            active.sort_by_key(|&c| (keys.0[r * cols + c], c));
            let need = per_row.saturating_sub(cols - active.len());
            for &c in &active[..need] {
                row[c] = false;
            }
        }
        Mask::from_bools(mask.rows(), cols, &kept).unwrap()
    }

    /// Every first step: the kernel's sampled guess, the full histogram, and fixed ranges that
    /// hold every key, a single key value (a narrow range: hit on the ties of kind 0, missed
    /// elsewhere), only low keys or only high keys (missed thresholds: the fallback).
    const LEVEL1: [Level1; 6] = [
        Level1::Sampled,
        Level1::Full,
        Level1::Fixed(0, INACTIVE - 1),
        Level1::Fixed(0x8000_0002, 0x8000_0002),
        Level1::Fixed(0, 0x8000_0000),
        Level1::Fixed(0xc000_0000, INACTIVE - 1),
    ];

    #[test]
    fn both_vector_widths_give_the_full_sort_answer() {
        // Key sets: few distinct values (ties through every radix level), wide random keys,
        // keys sharing their top 24 bits, one value for the whole row, and keys that mislead
        // the sample (the sampled columns, c % STRIDE == 0, hold the row's largest keys, so the
        // guessed range misses the threshold and the row falls back).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (rows, cols) in [(1, 1), (3, 7), (4, 64), (5, 130), (3, 1000), (2, 11008)] {
            for kind in 0..5 {
                let keys: Vec<u32> = (0..rows * cols)
                    .map(|i| match kind {
                        0 => 0x8000_0000 + (next() % 5) as u32,
                        1 => (next() >> 32) as u32 & !1, // never INACTIVE
                        2 => 0xbf80_0000 + (next() % 300) as u32,
                        3 => 0x9000_0000,
                        _ if i % cols % range::STRIDE == 0 => 0xf000_0000 + (next() % 9) as u32,
                        _ => 0x9000_0000 + (next() >> 40) as u32,
                    })
                    .collect();
                let keys = Keys(keys, cols);
                let kept: Vec<bool> = (0..rows * cols).map(|_| next() % 4 != 0).collect();
                for mask in [
                    Mask::ones(rows, cols),
                    Mask::from_bools(rows, cols, &kept).unwrap(),
                ] {
                    for per_row in [0, 1, cols / 3, cols / 2 + 1, cols - 1, cols] {
                        let want = by_sort(&keys, &mask, per_row);
                        for wide in [false, avx2()] {
                            for level1 in LEVEL1 {
                                let got = prune_rows_on(wide, level1, &mask, per_row, &keys);
                                assert_eq!(
                                    got.unwrap(),
                                    want,
                                    "{rows}x{cols} kind {kind} {per_row} {wide} {level1:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Rows whose guessed range missed the threshold.
    pub(super) static FALLBACKS: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn a_misleading_sample_falls_back_to_the_same_answer() {
        // The sampled columns hold the largest keys, so the range around the sample's median
        // holds none of the row's smallest half: each row has to fall back.
        let (rows, cols) = (3, 11008);
        let keys = (0..rows * cols)
            .map(|i| match i % cols {
                c if c % range::STRIDE == 0 => 0xf000_0000 + (c % 7) as u32,
                c => 0x9000_0000 + (c as u32).wrapping_mul(0x9e37_79b9) % 5000,
            })
            .collect();
        let keys = Keys(keys, cols);
        let mask = Mask::ones(rows, cols);
        for wide in [false, avx2()] {
            let before = FALLBACKS.load(Ordering::Relaxed);
            let got = prune_rows_on(wide, Level1::Sampled, &mask, cols / 2, &keys).unwrap();
            // Other tests may add fallbacks meanwhile, never take them away.
            assert!(FALLBACKS.load(Ordering::Relaxed) >= before + rows);
            assert_eq!(got, by_sort(&keys, &mask, cols / 2));
        }
    }

    #[test]
    fn find_bin_counts_keys_before_the_bin() {
        let hist = [0, 3, 0, 2, 5];
        assert_eq!(find_bin(&hist, 1), (1, 0));
        assert_eq!(find_bin(&hist, 3), (1, 0));
        assert_eq!(find_bin(&hist, 4), (3, 3));
        assert_eq!(find_bin(&hist, 6), (4, 5));
        assert_eq!(find_bin(&hist, 10), (4, 5));
        // Across groups of 16 bins.
        let mut hist = [0u32; 50];
        (hist[3], hist[17], hist[40]) = (2, 5, 1);
        assert_eq!(find_bin(&hist, 2), (3, 0));
        assert_eq!(find_bin(&hist, 3), (17, 2));
        assert_eq!(find_bin(&hist, 7), (17, 2));
        assert_eq!(find_bin(&hist, 8), (40, 7));
        // Across groups of 64, and from a later start.
        let mut hist = [0u32; 300];
        (hist[5], hist[63], hist[64], hist[200], hist[299]) = (1, 2, 3, 4, 5);
        for rank in 1..=15 {
            let want = find_bin(&hist, rank);
            let naive = (0..300).find(|&b| hist[..=b].iter().sum::<u32>() as usize >= rank);
            assert_eq!(want.0 as usize, naive.unwrap(), "rank {rank}");
            assert_eq!(want.1, hist[..want.0 as usize].iter().sum::<u32>() as usize);
            for first in [0, 5, 6, 63, 64, 65, 128] {
                let below = hist[..first].iter().sum::<u32>() as usize;
                if below < rank {
                    assert_eq!(find_bin_from(&hist, rank, first, below), want);
                }
            }
        }
    }

    #[test]
    fn lowest_bits_keeps_the_first_set_bits() {
        assert_eq!(lowest_bits(0b1011_0100, 2), 0b0001_0100);
        assert_eq!(lowest_bits(u64::MAX, 63), u64::MAX >> 1);
        assert_eq!(lowest_bits(1 << 63 | 1, 1), 1);
    }
}
