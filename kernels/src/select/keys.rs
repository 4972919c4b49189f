//! The key pass of the per-row selection in [`super`]: a row's order keys into the per-thread
//! buffer, block by block, with the inactive ones overwritten and the sample histogram of the
//! range guess ([`super::range`]) made while each block is in L1.

use super::{range, KeySource, BLOCK, INACTIVE, TOP_BITS};

/// For each byte of a mask word, the 8 lanes to OR into its keys: [`INACTIVE`] where the bit
/// is 0 (pruned), 0 where it is 1. A branch per key would be mispredicted half the time on a
/// 50 % mask; the table makes the masking a vector OR.
static INACTIVE_LANES: [[u32; 8]; 256] = {
    let mut t = [[0; 8]; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut lane = 0;
        while lane < 8 {
            if byte >> lane & 1 == 0 {
                t[byte][lane] = INACTIVE;
            }
            lane += 1;
        }
        byte += 1;
    }
    t
};

/// Writes the keys of row `r` (mask `words`) to `keys`, [`INACTIVE`] where the mask is 0, and,
/// when `sampled`, counts the top [`TOP_BITS`] of every [`range::STRIDE`]-th active key into
/// `hist` (zeroed by the caller). Returns whether any score of the row is NaN, and how many
/// keys were sampled.
///
/// Whole blocks are passed on as arrays of [`BLOCK`] keys: with the length known, the compiler
/// unrolls each block's loops without remainder code. Passing slices of any length, it had
/// unrolled the masking loop for every possible length, with the loop state spilled to the
/// stack: ~150 instructions of overhead per block.
#[inline(always)]
pub(super) fn key_pass(
    src: &impl KeySource,
    r: usize,
    words: &[u64],
    keys: &mut [u32],
    sampled: bool,
    hist: &mut [u32; 1 << TOP_BITS],
) -> (bool, usize) {
    let (mut nan, mut samples) = (false, 0);
    let full = keys.len() / BLOCK;
    let (head, tail) = keys.split_at_mut(full * BLOCK);
    for (b, (keys, &word)) in head.chunks_exact_mut(BLOCK).zip(words).enumerate() {
        let keys: &mut [u32; BLOCK] = keys.try_into().expect("chunks_exact gives whole blocks");
        nan |= block(src, r, b, word, keys, sampled, hist, &mut samples);
    }
    if !tail.is_empty() {
        nan |= block(src, r, full, words[full], tail, sampled, hist, &mut samples);
    }
    (nan, samples)
}

/// [`key_pass`] for block `b` (mask word `word`), inlined for whole blocks and for the last.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block(
    src: &impl KeySource,
    r: usize,
    b: usize,
    word: u64,
    keys: &mut [u32],
    sampled: bool,
    hist: &mut [u32; 1 << TOP_BITS],
    samples: &mut usize,
) -> bool {
    let nan = src.keys(r, b * BLOCK, keys);
    if word == u64::MAX >> (BLOCK - keys.len()) {
        if sampled {
            for &k in keys.iter().step_by(range::STRIDE) {
                hist[(k >> (32 - TOP_BITS)) as usize] += 1;
            }
            *samples += keys.len().div_ceil(range::STRIDE);
        }
    } else {
        // Only active keys are sampled: INACTIVE ones would all hit one bin, a chain of
        // dependent increments.
        if sampled {
            let mut m = word & range::SAMPLED;
            *samples += m.count_ones() as usize;
            while m != 0 {
                let k = keys[m.trailing_zeros() as usize];
                hist[(k >> (32 - TOP_BITS)) as usize] += 1;
                m &= m - 1;
            }
        }
        for (keys, byte) in keys.chunks_mut(8).zip(word.to_le_bytes()) {
            for (k, m) in keys.iter_mut().zip(&INACTIVE_LANES[byte as usize]) {
                *k |= m;
            }
        }
    }
    nan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inactive_lanes_expand_the_mask_word_bytes() {
        assert_eq!(INACTIVE_LANES[0], [INACTIVE; 8]);
        assert_eq!(INACTIVE_LANES[255], [0; 8]);
        let mut want = [INACTIVE; 8];
        (want[0], want[2], want[7]) = (0, 0, 0);
        assert_eq!(INACTIVE_LANES[0b1000_0101], want);
    }
}
