//! The vector steps of the selection in [`super`]: comparisons of up to 64 keys (one mask
//! word) packed into bit masks, and the gathering of the keys in a range, for SSE2 (the x86_64
//! baseline), AVX2 (chosen at run time) and portable loops elsewhere.

/// `(above, equal)`: bit `j` set iff `keys[j] > t`, resp. `keys[j] == t`, for up to 64 keys.
/// Vector compares (SSE2, in every x86_64 CPU, or AVX2) and `movmskps`, which packs the
/// results into bits: the compiler's own vectorisation of the bit packing is several times
/// slower.
#[inline(always)]
pub(super) fn compare<const AVX2: bool>(keys: &[u32], t: u32) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is in the x86_64 baseline; AVX2 only when the caller detected it.
        unsafe {
            if AVX2 {
                simd::compare_avx2(keys, t)
            } else {
                simd::compare_sse2(keys, t)
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    compare_scalar(keys, t)
}

/// Copies the keys of `keys` in `lo ..= hi` (`lo <= hi`) to the front of `out` (at least as
/// long as `keys`), in order; returns how many, and how many keys are `< lo`. Branch-free: a
/// loop over the set bits of a membership mask mispredicts its exit once per block, which made
/// gathering ~1800 keys of a row cost three times the compare pass itself.
#[inline(always)]
pub(super) fn gather<const AVX2: bool>(
    keys: &[u32],
    lo: u32,
    hi: u32,
    out: &mut [u32],
) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        // SAFETY: AVX2 only when the caller detected it (with POPCNT: `select::avx2`).
        return unsafe { simd::gather_avx2(keys, lo, hi, out) };
    }
    gather_scalar(keys, lo, hi, out)
}

/// [`gather`] a key at a time: each key is stored at the end of the output, which only
/// advances when it is inside (the SSE2 and portable form: x86_64 has no 32-bit lane shuffle
/// before AVX2).
fn gather_scalar(keys: &[u32], lo: u32, hi: u32, out: &mut [u32]) -> (usize, usize) {
    let out = &mut out[..keys.len()];
    let (mut n, mut below) = (0, 0);
    for &k in keys {
        // n ≤ the index of k < out.len().
        out[n] = k;
        n += usize::from(k.wrapping_sub(lo) <= hi - lo);
        below += usize::from(k < lo);
    }
    (n, below)
}

fn compare_scalar(keys: &[u32], t: u32) -> (u64, u64) {
    let bits = |f: &dyn Fn(u32) -> bool| {
        (keys.iter().enumerate()).fold(0, |m, (j, &k)| m | u64::from(f(k)) << j)
    };
    (bits(&|k| k > t), bits(&|k| k == t))
}

/// The x86_64 vector forms of [`compare`] and [`gather`]: whole vectors of keys with
/// intrinsics, the remainder (< one vector) by the scalar forms. Unsigned order via signed
/// compares: both sides get their sign bit flipped.
///
/// The AVX2 forms have no `#[target_feature]` of their own but `#[inline(always)]`: they are
/// only called from the AVX2 row function (`select::Scratch::prune_row_avx2`, which enables
/// AVX2 and POPCNT once CPU detection found them), so they are compiled inside it, with its
/// features. A `#[target_feature]` function can only be `#[inline]`, which the compiler
/// declined inside the big row function: calls per mask word cost ~10 % more instructions.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{compare_scalar, gather_scalar};

    /// `x << n`, 0 for `n` = 64 (a whole block and no remainder).
    fn shl(x: u64, n: usize) -> u64 {
        x.checked_shl(n as u32).unwrap_or(0)
    }

    /// Needs SSE2 (always there on x86_64).
    #[inline(always)]
    pub(super) unsafe fn compare_sse2(keys: &[u32], t: u32) -> (u64, u64) {
        let chunks = keys.chunks_exact(4);
        let done = keys.len() - chunks.remainder().len();
        let (above, equal) = compare_scalar(chunks.remainder(), t);
        let (mut above, mut equal) = (shl(above, done), shl(equal, done));
        let sign = _mm_set1_epi32(i32::MIN);
        let te = _mm_set1_epi32(t as i32);
        let ts = _mm_xor_si128(te, sign);
        for (i, c) in chunks.enumerate() {
            let k = _mm_loadu_si128(c.as_ptr().cast());
            let gt = _mm_cmpgt_epi32(_mm_xor_si128(k, sign), ts);
            let eq = _mm_cmpeq_epi32(k, te);
            above |= (_mm_movemask_ps(_mm_castsi128_ps(gt)) as u64) << (4 * i);
            equal |= (_mm_movemask_ps(_mm_castsi128_ps(eq)) as u64) << (4 * i);
        }
        (above, equal)
    }

    /// Needs AVX2. Only called from code compiled with it: see the module docs.
    #[inline(always)]
    pub(super) unsafe fn compare_avx2(keys: &[u32], t: u32) -> (u64, u64) {
        let chunks = keys.chunks_exact(8);
        let done = keys.len() - chunks.remainder().len();
        let (above, equal) = compare_scalar(chunks.remainder(), t);
        let (mut above, mut equal) = (shl(above, done), shl(equal, done));
        let sign = _mm256_set1_epi32(i32::MIN);
        let te = _mm256_set1_epi32(t as i32);
        let ts = _mm256_xor_si256(te, sign);
        for (i, c) in chunks.enumerate() {
            let k = _mm256_loadu_si256(c.as_ptr().cast());
            let gt = _mm256_cmpgt_epi32(_mm256_xor_si256(k, sign), ts);
            let eq = _mm256_cmpeq_epi32(k, te);
            above |= (_mm256_movemask_ps(_mm256_castsi256_ps(gt)) as u64) << (8 * i);
            equal |= (_mm256_movemask_ps(_mm256_castsi256_ps(eq)) as u64) << (8 * i);
        }
        (above, equal)
    }

    /// For each 8-bit membership mask, the lanes that hold its members, in order, one byte
    /// each (the rest 0): the `vpermd` indices that pack them to the front.
    static PACK: [u64; 256] = {
        let mut t = [0u64; 256];
        let mut m = 0;
        while m < 256 {
            let (mut lane, mut n) = (0, 0);
            while lane < 8 {
                if m >> lane & 1 == 1 {
                    t[m] |= (lane as u64) << (8 * n);
                    n += 1;
                }
                lane += 1;
            }
            m += 1;
        }
        t
    };

    /// Needs AVX2. Per 8 keys: compares, the count below as a vector sum, and the inside keys
    /// packed by `vpermd` and stored at the end of the output (8 lanes written, `popcnt`
    /// kept).
    #[inline(always)]
    pub(super) unsafe fn gather_avx2(
        keys: &[u32],
        lo: u32,
        hi: u32,
        out: &mut [u32],
    ) -> (usize, usize) {
        assert!(out.len() >= keys.len());
        let chunks = keys.chunks_exact(8);
        let rest = chunks.remainder();
        let sign = _mm256_set1_epi32(i32::MIN);
        let los = _mm256_set1_epi32((lo ^ 0x8000_0000) as i32);
        let his = _mm256_set1_epi32((hi ^ 0x8000_0000) as i32);
        let mut below = _mm256_setzero_si256();
        let mut n = 0;
        let dst = out.as_mut_ptr();
        for c in chunks {
            let k = _mm256_loadu_si256(c.as_ptr().cast());
            let ks = _mm256_xor_si256(k, sign);
            let lt = _mm256_cmpgt_epi32(los, ks);
            let outside = _mm256_or_si256(lt, _mm256_cmpgt_epi32(ks, his));
            below = _mm256_sub_epi32(below, lt);
            let m = !_mm256_movemask_ps(_mm256_castsi256_ps(outside)) as u8;
            let idx = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(PACK[m as usize] as i64));
            // SAFETY: n ≤ the index of this chunk's first key, and out.len() ≥ keys.len().
            _mm256_storeu_si256(dst.add(n).cast(), _mm256_permutevar8x32_epi32(k, idx));
            n += m.count_ones() as usize;
        }
        let mut lanes = [0u32; 8];
        _mm256_storeu_si256(lanes.as_mut_ptr().cast(), below);
        let below: usize = lanes.iter().map(|&b| b as usize).sum();
        let (m, b) = gather_scalar(rest, lo, hi, &mut out[n..n + rest.len()]);
        (n + m, below + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::avx2;

    #[test]
    fn compare_sets_bit_j_for_key_j() {
        // Keys on both sides of the sign bit, so that the unsigned order matters.
        let keys: Vec<u32> = (0..64).map(|j| j * 0x0400_0000 + 7).collect();
        for len in [0, 1, 3, 4, 5, 33, 63, 64] {
            for t in [
                0,
                7,
                0x0400_0007,
                0x7c00_0007,
                0x8000_0007,
                0xfc00_0007,
                u32::MAX,
            ] {
                let want = compare_scalar(&keys[..len], t);
                assert_eq!(
                    compare::<false>(&keys[..len], t),
                    want,
                    "len {len} t {t:#x}"
                );
                if avx2() {
                    assert_eq!(compare::<true>(&keys[..len], t), want, "avx2 {len} {t:#x}");
                }
                let above = (0..len).filter(|&j| keys[j] > t);
                assert_eq!(want.0, above.fold(0, |m, j| m | 1 << j));
                let equal = (0..len).filter(|&j| keys[j] == t);
                assert_eq!(want.1, equal.fold(0, |m, j| m | 1 << j));
            }
        }
    }
}
