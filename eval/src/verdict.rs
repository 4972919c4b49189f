//! Chance levels and the "uninformative" flag. A dense model that scores at chance
//! (MMLU 25 % for four options) or near zero (factual QA) gives a metric on which
//! pruning cannot show a loss, so every report prints the dense score next to chance
//! and flags such metrics instead of letting noise read as a result.

use serde::{Deserialize, Serialize};

/// How far (in accuracy points, 0–1 scale) above chance or zero the dense model must
/// be for a metric to count as informative: 5 points.
pub const INFORMATIVE_MARGIN: f64 = 0.05;

/// Chance accuracy of a k-way multiple choice (0 for open answers).
pub fn chance_level(options: usize) -> f64 {
    if options == 0 {
        0.0
    } else {
        1.0 / options as f64
    }
}

/// Dense score, chance, and whether the metric is worth reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub dense: f64,
    pub chance: f64,
    /// `false` when the dense score is within [`INFORMATIVE_MARGIN`] of chance (or of
    /// zero for open answers, where chance is 0).
    pub informative: bool,
}

impl Verdict {
    /// Judge a dense accuracy against chance. `n` is the number of questions: with
    /// fewer than 20 any score is flagged, the sampling noise is too large.
    pub fn assess(dense: f64, chance: f64, n: usize) -> Self {
        let informative = n >= 20 && dense - chance > INFORMATIVE_MARGIN;
        Self {
            dense,
            chance,
            informative,
        }
    }

    /// One line for text reports.
    pub fn describe(&self) -> String {
        let flag = if self.informative {
            ""
        } else {
            "  [UNINFORMATIVE: dense model within 5 points of chance/zero or too few questions]"
        };
        format!(
            "dense {:.1} % vs chance {:.1} %{flag}",
            100.0 * self.dense,
            100.0 * self.chance
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_chance_and_zero() {
        assert_eq!(chance_level(4), 0.25);
        assert!(!Verdict::assess(0.27, 0.25, 500).informative);
        assert!(Verdict::assess(0.40, 0.25, 500).informative);
        assert!(!Verdict::assess(0.02, 0.0, 500).informative);
        assert!(Verdict::assess(0.12, 0.0, 500).informative);
        assert!(!Verdict::assess(0.9, 0.25, 10).informative);
        assert!(Verdict::assess(0.27, 0.25, 500)
            .describe()
            .contains("UNINFORMATIVE"));
    }
}
