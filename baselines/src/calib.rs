//! Calibration: token windows from texts, and Σx² per layer on the dense model.

use std::collections::HashMap;

use candle_core::Tensor;
use model::Model;

use crate::{BaselineError, Result};

/// Up to `count` consecutive windows of `len` tokens from the token stream `tokens`
/// (the texts concatenated and tokenised once), the last partial window dropped.
pub fn calibration_windows(tokens: &[u32], len: usize, count: usize) -> Vec<Vec<u32>> {
    if len == 0 {
        return Vec::new();
    }
    tokens
        .chunks_exact(len)
        .take(count)
        .map(<[u32]>::to_vec)
        .collect()
}

/// Σx² per input column of every prunable layer over `windows` (dense model, f64).
pub fn calibration_stats(model: &Model, windows: &[Vec<u32>]) -> Result<HashMap<String, Tensor>> {
    if windows.is_empty() || windows.iter().all(Vec::is_empty) {
        return Err(BaselineError::Argument(
            "calibration needs at least one non-empty token window".into(),
        ));
    }
    let was = model.stats_enabled();
    model.reset_stats();
    model.set_stats_enabled(true);
    let run = || -> Result<()> {
        for w in windows.iter().filter(|w| !w.is_empty()) {
            let t = Tensor::new(w.as_slice(), model.device())?.unsqueeze(0)?;
            model.forward_hidden(&t)?;
        }
        Ok(())
    };
    let result = run();
    model.set_stats_enabled(was);
    result?;
    Ok(model
        .take_stats()
        .into_iter()
        .map(|(k, s)| (k, s.sum_sq))
        .collect())
}
