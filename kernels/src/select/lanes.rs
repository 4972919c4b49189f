//! Comparisons of up to 64 keys (one mask word) packed into bit masks: the vector steps of
//! the selection in [`super`], for SSE2 (the x86_64 baseline), AVX2 (chosen at run time) and
//! portable loops elsewhere.

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

/// Bit `j` set iff `keys[j] >> shift == bin`, for up to 64 keys (vectorised as [`compare`]).
#[inline(always)]
pub(super) fn members<const AVX2: bool>(keys: &[u32], shift: u32, bin: u32) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: as in `compare`.
        unsafe {
            if AVX2 {
                simd::members_avx2(keys, shift, bin)
            } else {
                simd::members_sse2(keys, shift, bin)
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    members_scalar(keys, shift, bin)
}

fn compare_scalar(keys: &[u32], t: u32) -> (u64, u64) {
    let bits = |f: &dyn Fn(u32) -> bool| {
        (keys.iter().enumerate()).fold(0, |m, (j, &k)| m | u64::from(f(k)) << j)
    };
    (bits(&|k| k > t), bits(&|k| k == t))
}

fn members_scalar(keys: &[u32], shift: u32, bin: u32) -> u64 {
    (keys.iter().enumerate()).fold(0, |m, (j, &k)| m | u64::from(k >> shift == bin) << j)
}

/// The x86_64 vector forms of [`compare`] and [`members`]: whole vectors of keys with
/// intrinsics, the remainder (< one vector) by the scalar forms. Unsigned order via signed
/// compares: both sides get their sign bit flipped.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{compare_scalar, members_scalar};

    /// `x << n`, 0 for `n` = 64 (a whole block and no remainder).
    fn shl(x: u64, n: usize) -> u64 {
        x.checked_shl(n as u32).unwrap_or(0)
    }

    /// Needs SSE2 (always there on x86_64).
    #[inline]
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

    /// Needs AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
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

    /// Needs SSE2.
    #[inline]
    pub(super) unsafe fn members_sse2(keys: &[u32], shift: u32, bin: u32) -> u64 {
        let chunks = keys.chunks_exact(4);
        let done = keys.len() - chunks.remainder().len();
        let mut m = shl(members_scalar(chunks.remainder(), shift, bin), done);
        let b = _mm_set1_epi32(bin as i32);
        let s = _mm_cvtsi32_si128(shift as i32);
        for (i, c) in chunks.enumerate() {
            let k = _mm_srl_epi32(_mm_loadu_si128(c.as_ptr().cast()), s);
            let eq = _mm_cmpeq_epi32(k, b);
            m |= (_mm_movemask_ps(_mm_castsi128_ps(eq)) as u64) << (4 * i);
        }
        m
    }

    /// Needs AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn members_avx2(keys: &[u32], shift: u32, bin: u32) -> u64 {
        let chunks = keys.chunks_exact(8);
        let done = keys.len() - chunks.remainder().len();
        let mut m = shl(members_scalar(chunks.remainder(), shift, bin), done);
        let b = _mm256_set1_epi32(bin as i32);
        let s = _mm_cvtsi32_si128(shift as i32);
        for (i, c) in chunks.enumerate() {
            let k = _mm256_srl_epi32(_mm256_loadu_si256(c.as_ptr().cast()), s);
            let eq = _mm256_cmpeq_epi32(k, b);
            m |= (_mm256_movemask_ps(_mm256_castsi256_ps(eq)) as u64) << (8 * i);
        }
        m
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

    #[test]
    fn members_sets_bit_j_for_keys_in_the_bin() {
        let keys: Vec<u32> = (0..64).map(|j| j * 0x0400_0000 + 7).collect();
        for len in [0, 1, 3, 4, 5, 33, 63, 64] {
            for (shift, bin) in [(21, 0), (21, 32), (21, 2016), (26, 63), (0, 7), (5, 0)] {
                let want = (0..len).filter(|&j| keys[j] >> shift == bin);
                let want = want.fold(0, |m, j| m | 1 << j);
                assert_eq!(
                    members::<false>(&keys[..len], shift, bin),
                    want,
                    "{len} {shift}"
                );
                if avx2() {
                    assert_eq!(
                        members::<true>(&keys[..len], shift, bin),
                        want,
                        "avx2 {len}"
                    );
                }
                assert_eq!(members_scalar(&keys[..len], shift, bin), want);
            }
        }
    }
}
