//! SplitMix64: a tiny, stable PRNG. Its output never changes across crate versions
//! (unlike `rand`'s `StdRng`), so seeded heuristic candidates and synthetic test data
//! stay reproducible forever.

/// Next 64 random bits; advances `state`.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1) from [`splitmix64`] (53 random mantissa bits).
pub fn unit(state: &mut u64) -> f64 {
    (splitmix64(state) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // SplitMix64 seeded with 0 (Vigna's reference implementation).
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn unit_stays_in_range() {
        let mut s = 9;
        assert!((0..1000)
            .map(|_| unit(&mut s))
            .all(|u| (0.0..1.0).contains(&u)));
    }
}
