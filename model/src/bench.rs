//! Timing helper for `secateur bench`: forward (and optionally gradient) cost of a
//! model on synthetic tokens, so throughput can be compared across machines and
//! builds without any data files.

use std::time::Instant;

use candle_core::Tensor;

use crate::transformer::Model;
use crate::{ModelError, Result};

/// Measured cost of one model call, averaged over the timed repetitions.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    pub seq_len: usize,
    pub reps: usize,
    /// Mean wall time of one `forward` of `[1, seq_len]` tokens, in seconds.
    pub forward_secs: f64,
    pub forward_tokens_per_sec: f64,
    /// Mean wall time of `gradient_importance_means` (the pruning loop's gradient
    /// pass) on one sample of `seq_len` tokens.
    pub gradient_secs: Option<f64>,
}

/// Time `reps` forwards (after one untimed warm-up) and, with `gradient`, `reps`
/// single-sample gradient passes, on deterministic synthetic token ids.
pub fn bench(model: &Model, seq_len: usize, reps: usize, gradient: bool) -> Result<BenchReport> {
    if seq_len < 2 || reps == 0 {
        return Err(ModelError::InvalidArgument(format!(
            "bench: need seq_len ≥ 2 and reps ≥ 1, got seq_len {seq_len}, reps {reps}"
        )));
    }
    let vocab = model.config().vocab_size as u64;
    let ids: Vec<u32> = (0..seq_len as u64)
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect();
    let tokens = Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?;
    model.forward(&tokens)?;
    let start = Instant::now();
    for _ in 0..reps {
        model.forward(&tokens)?;
    }
    let forward_secs = start.elapsed().as_secs_f64() / reps as f64;
    let gradient_secs = if gradient {
        let samples = [ids.clone()];
        let start = Instant::now();
        for _ in 0..reps {
            model.gradient_importance_means(&samples)?;
        }
        Some(start.elapsed().as_secs_f64() / reps as f64)
    } else {
        None
    };
    Ok(BenchReport {
        seq_len,
        reps,
        forward_secs,
        forward_tokens_per_sec: seq_len as f64 / forward_secs,
        gradient_secs,
    })
}

/// Median of `v` (sorted in place; the mean of the two middle values for an even
/// length), the statistic our benchmarks quote on these shared, noisy machines.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}
