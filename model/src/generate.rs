//! Greedy generation with a KV cache. The cache lives in the call, not in the
//! shared model, so any number of threads can generate on one `Model` at once.

use candle_core::{DType, Tensor};

use crate::decoder::LayerKv;
use crate::overlay::WeightOverlay;
use crate::transformer::Model;
use crate::{ModelError, Result};

impl Model {
    /// Greedy continuation of `prompt`: at most `max_new_tokens` new tokens, ending
    /// early at the first token in `stop_tokens` (which is not returned) or when the
    /// sequence reaches `max_position_embeddings`. Returns the new tokens only, never
    /// the prompt. Ties between equal logits go to the lowest token id.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        stop_tokens: &[u32],
    ) -> Result<Vec<u32>> {
        self.generate_with(prompt, max_new_tokens, stop_tokens, None)
    }

    /// [`Model::generate`] with some layers' weights replaced for this call.
    pub fn generate_with(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        stop_tokens: &[u32],
        overlay: Option<&WeightOverlay>,
    ) -> Result<Vec<u32>> {
        let mut out =
            self.generate_batch_with(&[prompt.to_vec()], max_new_tokens, stop_tokens, overlay)?;
        Ok(out.pop().unwrap_or_default())
    }

    /// [`Model::generate_with`] for several prompts of one length at once: one forward
    /// of the whole batch per step, which amortises the per-op cost a one-token step is
    /// dominated by. Each row stops at its own first stop token or `max_new_tokens`;
    /// the batch steps until every row has stopped. Row `i` is what `generate_with`
    /// (a batch of one) gives for `prompts[i]`, up to the rounding of the batched
    /// matmuls. Errors on an empty or over-long prompt, prompts of different lengths,
    /// unknown token ids and a bad overlay.
    pub fn generate_batch_with(
        &self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        stop_tokens: &[u32],
        overlay: Option<&WeightOverlay>,
    ) -> Result<Vec<Vec<u32>>> {
        let Some(first) = prompts.first() else {
            return Ok(Vec::new());
        };
        let context = self.config().max_position_embeddings;
        let width = first.len();
        if width == 0 || width > context {
            return Err(ModelError::InvalidArgument(format!(
                "generate: prompt of {width} tokens (context {context})"
            )));
        }
        if let Some(p) = prompts.iter().find(|p| p.len() != width) {
            return Err(ModelError::InvalidArgument(format!(
                "generate_batch: prompts of {width} and {} tokens in one batch",
                p.len()
            )));
        }
        prompts.iter().try_for_each(|p| self.check_ids(p))?;
        if let Some(o) = overlay {
            self.check_overlay(o)?;
        }
        let rows = prompts.len();
        let mut cache: Vec<LayerKv> = Vec::new();
        let mut out = vec![Vec::new(); rows];
        let mut done = vec![max_new_tokens == 0; rows];
        let mut input: Vec<u32> = prompts.concat();
        let (mut step, mut len) = (width, 0);
        while done.iter().any(|d| !d) && len + step <= context {
            let tokens = Tensor::from_vec(input, (rows, step), self.device())?;
            let hidden = self.hidden(&tokens, overlay, Some(&mut cache), false)?;
            len += step;
            let last = hidden.narrow(1, step - 1, 1)?;
            let logits = self
                .logits(&last)?
                .squeeze(1)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            input = logits.iter().map(|row| argmax_of(row)).collect();
            for ((next, o), d) in input.iter().zip(&mut out).zip(&mut done) {
                if *d {
                    continue;
                }
                if stop_tokens.contains(next) {
                    *d = true;
                } else {
                    o.push(*next);
                    *d = o.len() >= max_new_tokens;
                }
            }
            step = 1;
        }
        Ok(out)
    }
}

/// Index of the largest logit, lowest index on ties; NaN never wins.
fn argmax_of(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best as u32
}
