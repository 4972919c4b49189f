//! Perplexity over a token stream: non-overlapping windows (the WikiText-2 protocol),
//! `exp` of the mean next-token negative log-likelihood.

use candle_core::{DType, Tensor};

use crate::decoder::log_softmax_last_dim;
use crate::overlay::WeightOverlay;
use crate::transformer::Model;
use crate::{ModelError, Result};

/// Window length used when the caller has no preference.
pub const DEFAULT_PPL_WINDOW: usize = 512;

/// Result of a perplexity evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// `exp(mean_nll)`.
    pub ppl: f64,
    /// Mean negative log-likelihood per scored token, in nats.
    pub mean_nll: f64,
    /// Tokens whose likelihood was scored (each window's first token is context only).
    pub tokens_scored: usize,
    /// Windows evaluated (a last window of a single token has nothing to score and is
    /// not counted).
    pub windows: usize,
}

impl Perplexity {
    /// Pool several evaluations (e.g. one per calibration sample) as if their scored
    /// tokens had been scored together: token-weighted mean NLL.
    pub fn combine(parts: &[Perplexity]) -> Result<Perplexity> {
        let tokens: usize = parts.iter().map(|p| p.tokens_scored).sum();
        if tokens == 0 {
            return Err(ModelError::InvalidArgument(
                "perplexity: nothing to combine (0 tokens scored)".into(),
            ));
        }
        let nll: f64 = parts
            .iter()
            .map(|p| p.mean_nll * p.tokens_scored as f64)
            .sum();
        Ok(Self::from_sum(
            nll,
            tokens,
            parts.iter().map(|p| p.windows).sum(),
        ))
    }

    fn from_sum(nll_sum: f64, tokens_scored: usize, windows: usize) -> Self {
        let mean_nll = nll_sum / tokens_scored as f64;
        Self {
            ppl: mean_nll.exp(),
            mean_nll,
            tokens_scored,
            windows,
        }
    }
}

impl Model {
    /// Perplexity of `tokens` cut into consecutive windows of `window` tokens. In each
    /// window the first token is context only, so a window of L tokens scores L − 1;
    /// the last, shorter window counts when it has at least 2 tokens. Windows may not
    /// exceed `max_position_embeddings`.
    pub fn perplexity(&self, tokens: &[u32], window: usize) -> Result<Perplexity> {
        self.perplexity_with(tokens, window, None)
    }

    /// [`Model::perplexity`] with some layers' weights replaced for this call.
    pub fn perplexity_with(
        &self,
        tokens: &[u32],
        window: usize,
        overlay: Option<&WeightOverlay>,
    ) -> Result<Perplexity> {
        if window < 2 {
            return Err(ModelError::InvalidArgument(format!(
                "perplexity: window must be at least 2 tokens, got {window}"
            )));
        }
        if tokens.len() < 2 {
            return Err(ModelError::InvalidArgument(format!(
                "perplexity: need at least 2 tokens, got {}",
                tokens.len()
            )));
        }
        self.check_len(window.min(tokens.len()))?;
        self.check_ids(tokens)?;
        if let Some(o) = overlay {
            self.check_overlay(o)?;
        }
        let (mut nll_sum, mut scored, mut windows) = (0.0f64, 0usize, 0usize);
        for chunk in tokens.chunks(window).filter(|c| c.len() >= 2) {
            let input = Tensor::new(chunk, self.device())?.unsqueeze(0)?;
            let hidden = self.hidden(&input, overlay, None, false)?.squeeze(0)?;
            nll_sum += self.nll_sum(&hidden, &chunk[1..])?;
            scored += chunk.len() - 1;
            windows += 1;
        }
        Ok(Perplexity::from_sum(nll_sum, scored, windows))
    }

    /// Σ of the next-token NLL of `targets` (`n` ids) under the first `n` rows of
    /// `hidden` (`[≥ n, hidden]`, final-normed), in f64. The logits are built
    /// [`LOGIT_ROWS`] rows at a time: a whole window's `[seq, vocab]` logits and their
    /// log-softmax temporaries (~4 × 100 MB for 512 tokens of a 49k vocabulary) would
    /// be most of a small model's peak memory, per concurrent evaluation.
    pub(crate) fn nll_sum(&self, hidden: &Tensor, targets: &[u32]) -> Result<f64> {
        let mut sum = 0f64;
        for (c, ids) in targets.chunks(LOGIT_ROWS).enumerate() {
            let rows = hidden.narrow(0, c * LOGIT_ROWS, ids.len())?;
            let nll = next_token_nll(&self.logits(&rows)?, ids)?;
            sum += nll.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        }
        Ok(sum)
    }
}

/// Rows of logits materialised at a time (perplexity and the gradient head): 64 rows
/// of a 49k vocabulary are 12.6 MB in f32.
pub(crate) const LOGIT_ROWS: usize = 64;

/// Negative log-likelihood `[n]` of `targets` (`n` ids) under the first `n` rows of
/// `logits` (`[≥ n, vocab]`): row `i` predicts `targets[i]`. Differentiable, so the
/// gradient path uses the same loss perplexity reports.
pub(crate) fn next_token_nll(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let n = targets.len();
    let log_probs = log_softmax_last_dim(&logits.narrow(0, 0, n)?)?;
    let idx = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    Ok(log_probs.gather(&idx, 1)?.squeeze(1)?.neg()?)
}
