//! Perplexity over a token stream: non-overlapping windows (the WikiText-2 protocol),
//! `exp` of the mean next-token negative log-likelihood.

use candle_core::{DType, Tensor};

use crate::decoder::log_softmax_last_dim;
use crate::overlay::WeightOverlay;
use crate::transformer::Model;
use crate::{ModelError, Result};

/// Window length used when the caller has no preference.
pub const DEFAULT_PPL_WINDOW: usize = 512;

/// Sequences per forward for batched evaluation ([`Model::perplexity_each`]) and the
/// Profiler's statistics: enough rows for the matmuls to spread over the cores of a
/// small CPU, while the activations of one batch of 512-token windows stay a few tens
/// of MB.
pub const FORWARD_BATCH: usize = 4;

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

    /// [`Model::perplexity`] with some layers' weights replaced for this call. The
    /// windows go through the model [`FORWARD_BATCH`] at a time
    /// ([`Model::perplexity_each`]).
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
        let windows: Vec<&[u32]> = tokens.chunks(window).filter(|c| c.len() >= 2).collect();
        Perplexity::combine(&self.perplexity_each(&windows, FORWARD_BATCH, overlay)?)
    }

    /// The perplexity of each of `windows` taken as one window (its first token is
    /// context only), in order: what [`Model::perplexity_with`] gives for each of them
    /// alone. Consecutive windows of equal length go through the model up to `batch`
    /// at a time as one `[batch, len]` forward: on a CPU, a 256-token sequence's
    /// matmuls are too small to keep two cores busy, a batch's are not. A window
    /// shorter than 2 tokens, or longer than the model context, is an error.
    pub fn perplexity_each(
        &self,
        windows: &[&[u32]],
        batch: usize,
        overlay: Option<&WeightOverlay>,
    ) -> Result<Vec<Perplexity>> {
        if batch == 0 {
            return Err(ModelError::InvalidArgument(
                "perplexity: batch must be at least 1".into(),
            ));
        }
        for w in windows {
            if w.len() < 2 {
                return Err(ModelError::InvalidArgument(format!(
                    "perplexity: every window needs at least 2 tokens, got {}",
                    w.len()
                )));
            }
            self.check_len(w.len())?;
            self.check_ids(w)?;
        }
        if let Some(o) = overlay {
            self.check_overlay(o)?;
        }
        let mut out = Vec::with_capacity(windows.len());
        let mut rest = windows;
        while let Some(first) = rest.first() {
            let len = first.len();
            let same = rest
                .iter()
                .take(batch)
                .take_while(|w| w.len() == len)
                .count();
            let (group, tail) = rest.split_at(same);
            let ids: Vec<u32> = group.iter().flat_map(|w| w.iter().copied()).collect();
            let input = Tensor::from_vec(ids, (group.len(), len), self.device())?;
            let hidden = self.hidden(&input, overlay, None, false)?;
            for (i, w) in group.iter().enumerate() {
                let nll = self.nll_sum(&hidden.get(i)?, &w[1..])?;
                out.push(Perplexity::from_sum(nll, len - 1, 1));
            }
            rest = tail;
        }
        Ok(out)
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
    let logits = logits.narrow(0, 0, n)?;
    // A bf16 (GPU) model's logits are scored in f32: bf16 keeps 8 significant bits, so
    // log-probabilities near -10 would come out in steps of 1/16 nat.
    let logits = match logits.dtype() {
        DType::F32 | DType::F64 => logits,
        _ => logits.to_dtype(DType::F32)?,
    };
    let log_probs = log_softmax_last_dim(&logits)?;
    let idx = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    Ok(log_probs.gather(&idx, 1)?.squeeze(1)?.neg()?)
}
