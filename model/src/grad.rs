//! Gradient importance (the paper's z_grad input): mean over calibration samples of
//! |∂L/∂W| for every prunable weight, L the sample's mean next-token cross-entropy.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};

use crate::linear::WeightOverlay;
use crate::perplexity::next_token_nll;
use crate::transformer::Model;
use crate::{ModelError, Result};

/// Gradient importance of one prunable layer.
#[derive(Debug, Clone)]
pub struct GradImportance {
    /// `[out, in]`, model dtype: mean over samples of |∂L/∂W|. Zero where the
    /// committed mask has pruned the weight.
    pub mean_abs: Tensor,
    /// Mean of `mean_abs` over all entries (pruned ones included).
    pub mean: f64,
}

impl Model {
    /// Backpropagate each sample (one sequence at a time, no padding; each needs ≥ 2
    /// tokens) and average |∂L/∂W| per weight. Committed masks are respected: the
    /// forward uses `W ⊙ M` with `W` a candle `Var`, so ∂L/∂W = M ⊙ ∂L/∂(W ⊙ M).
    ///
    /// Memory: a `Var` copy of every prunable weight, its gradient and the running sum
    /// are live at once, about three times the prunable weights' size.
    pub fn gradient_importance(
        &self,
        samples: &[Vec<u32>],
    ) -> Result<HashMap<String, GradImportance>> {
        if samples.is_empty() {
            return Err(ModelError::InvalidArgument(
                "gradient_importance: no samples".into(),
            ));
        }
        for (i, s) in samples.iter().enumerate() {
            if s.len() < 2 {
                return Err(ModelError::InvalidArgument(format!(
                    "gradient_importance: sample {i} has {} tokens, needs at least 2",
                    s.len()
                )));
            }
            self.check_len(s.len())?;
            self.check_ids(s)?;
        }
        let vars = self
            .linears()
            .map(|l| {
                let mask = l.mask().map(|m| m.to_dtype(self.dtype())).transpose()?;
                Ok((l.name().to_string(), Var::from_tensor(l.dense())?, mask))
            })
            .collect::<Result<Vec<_>>>()?;
        // Built once: each sample's backward walks from its own loss through these
        // shared `W ⊙ M` nodes to the variables, so they need not be rebuilt.
        let mut overlay = WeightOverlay::new();
        for (name, var, mask) in &vars {
            let w = match mask {
                Some(m) => (var.as_tensor() * m)?,
                None => var.as_tensor().clone(),
            };
            overlay.insert(name.clone(), w);
        }
        let mut sums: Vec<Option<Tensor>> = vec![None; vars.len()];
        for sample in samples {
            let tokens = Tensor::new(sample.as_slice(), self.device())?.unsqueeze(0)?;
            let hidden = self.hidden(&tokens, Some(&overlay), None, true)?;
            let logits = self.logits(&hidden)?.squeeze(0)?;
            let loss = next_token_nll(&logits, &sample[1..])?.mean_all()?;
            let grads = loss.backward()?;
            for ((_, var, _), sum) in vars.iter().zip(sums.iter_mut()) {
                let g = match grads.get(var.as_tensor()) {
                    Some(g) => g.detach().abs()?,
                    None => var.as_tensor().zeros_like()?,
                };
                *sum = Some(match sum.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        let n = samples.len() as f64;
        vars.into_iter()
            .zip(sums)
            .map(|((name, var, _), sum)| {
                let total = match sum {
                    Some(s) => s,
                    None => var.as_tensor().zeros_like()?,
                };
                let mean_abs = (total / n)?;
                let mean = mean_abs
                    .mean_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
                Ok((name, GradImportance { mean_abs, mean }))
            })
            .collect()
    }
}
