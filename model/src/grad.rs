//! Gradient importance (the paper's z_grad input): |∂L/∂W| of every prunable weight,
//! L a calibration sample's mean next-token cross-entropy, averaged over samples.
//!
//! Memory is the point of this file. candle's `backward()` keeps a gradient for every
//! leaf of the graph — every weight, variable or not (a matmul's backward always
//! computes both operands' gradients) — so one backward through the whole model holds
//! a model-sized set of gradients next to the weights, plus every activation. Here the
//! backward runs one decoder block at a time instead:
//!
//! 1. a forward stores each block's input (`seq × hidden` numbers per block) and keeps
//!    no graph (no tensor is tracked);
//! 2. the head: the loss's softmax gradient, written out in row chunks (no
//!    `[seq, vocab]` logits, no lm_head gradient), then `backward()` through the final
//!    norm from a `Var` copy of the last hidden state, gives ∂L/∂h for the top block;
//! 3. from the top block down: the block's 7 weights become `Var`s (a transient copy
//!    of one block), its forward is rebuilt from the stored input, and `backward()` of
//!    ⟨out, ∂L/∂out⟩ gives ∂L/∂W for the block's weights and ∂L/∂x, the output
//!    gradient of the block below. Each weight gradient goes to a visitor, and the
//!    block's gradient store is dropped before the next block.
//!
//! This is the chain rule split at block boundaries: the same gradients as one
//! backward through the model (the finite-difference tests in `tests/grad_check.rs`
//! check them), for the cost of one extra forward per sample. The forward uses the
//! differentiable op forms (see `crate::decoder`) in both passes, so the rebuilt
//! block sees exactly the stored values.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Tensor, Var};
use kernels::Mask;

use crate::decoder::{causal_mask, rms_norm, softmax_last_dim, RopeTables};
use crate::linear::{OutputCapture, Pass, PrunableLinear};
use crate::overlay::WeightOverlay;
use crate::perplexity::LOGIT_ROWS;
use crate::transformer::Model;
use crate::{ModelError, Result};

/// Gradient importance of one prunable layer, per weight.
#[derive(Debug, Clone)]
pub struct GradImportance {
    /// `[out, in]`, model dtype: mean over samples of |∂L/∂W|. Zero where the layer is
    /// pruned (in place or by a committed non-destructive mask).
    pub mean_abs: Tensor,
    /// Mean of `mean_abs` over all entries (pruned ones included).
    pub mean: f64,
}

/// What [`Model::gradient_profile`] measures.
#[derive(Debug, Clone, Default)]
pub struct GradientProfile {
    /// Per layer, the mean |∂L/∂W| over samples and kept weights
    /// ([`Model::gradient_importance_means`]).
    pub means: HashMap<String, f64>,
    /// Per layer, the output Fisher per output row; empty unless asked for.
    pub output_fisher: HashMap<String, Vec<f64>>,
}

/// Receives ∂L/∂W (`[out, in]`, model dtype) of one sample for prunable layer number
/// `index` (model order). With a non-destructive mask committed the gradient is
/// already zero where it prunes; where the layer is pruned in place it is
/// ∂L/∂W_effective, generally non-zero: visitors mask it as they need.
type Visit<'a> = dyn FnMut(usize, &PrunableLinear, &Tensor) -> Result<()> + 'a;

/// Receives ∂L/∂y (`[seq, out]`, model dtype) of one sample for the projection named.
type OutputVisit<'a> = dyn FnMut(&str, &Tensor) -> Result<()> + 'a;

impl Model {
    /// Mean over samples of |∂L/∂W| for every prunable weight (each sample one
    /// sequence, no padding, at least 2 tokens). For checks and tools that need the
    /// per-weight values; it holds one `[out, in]` running sum per layer, the size of
    /// the prunable weights. The pruning loop needs one number per layer and uses
    /// [`Model::gradient_importance_means`], which holds no such sums.
    pub fn gradient_importance(
        &self,
        samples: &[Vec<u32>],
    ) -> Result<HashMap<String, GradImportance>> {
        let layers: Vec<&PrunableLinear> = self.linears().collect();
        let mut sums: Vec<Option<Tensor>> = vec![None; layers.len()];
        self.for_each_sample_gradient(samples, &mut |i, layer, g| {
            let a = g.abs()?;
            let a = match layer.pruned_mask() {
                Some(keep) => keep.apply_fast(&a)?,
                None => a,
            };
            sums[i] = Some(match sums[i].take() {
                Some(acc) => (acc + a)?,
                None => a,
            });
            Ok(())
        })?;
        let n = samples.len() as f64;
        layers
            .into_iter()
            .zip(sums)
            .map(|(layer, sum)| {
                let total = match sum {
                    Some(s) => s,
                    None => layer.stored().zeros_like()?,
                };
                let mean_abs = (total / n)?;
                let mean = mean_abs
                    .mean_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
                Ok((layer.name().to_string(), GradImportance { mean_abs, mean }))
            })
            .collect()
    }

    /// Per layer, the mean over samples and over the layer's kept weights of
    /// |∂L/∂W| — exactly `kernels::gradient_importance(mean_abs, keep)` of
    /// [`Model::gradient_importance`]'s `mean_abs`, `keep` the layer's kept weights
    /// (pruned in place and by a non-destructive mask both count as pruned). Each
    /// sample's gradient is reduced to one number per layer as soon as it exists, so
    /// nothing weight-sized outlives one decoder block. A layer with no kept weight has
    /// no entry.
    pub fn gradient_importance_means(&self, samples: &[Vec<u32>]) -> Result<HashMap<String, f64>> {
        Ok(self.gradient_profile(samples, false)?.means)
    }

    /// [`Model::gradient_importance_means`] and, with `fisher`, each layer's output
    /// Fisher from the same backward passes: per output row `j`, the mean over tokens
    /// of `(N·∂L/∂y_tj)²`, `N` the sample's scored tokens, i.e. the squared gradient of
    /// the token's own loss. With the layer's input Gram `H` (per token), pruning
    /// weight `(j, i)` with the OBS update raises the expected per-token loss by about
    /// `½·F_j·w_ji²/[H⁻¹]_ii` (a Kronecker-factored Fisher with a diagonal output
    /// factor, as in LLM Surgeon): the cost of a weight in loss units, comparable
    /// across layers, which raw OBS saliencies are not.
    pub fn gradient_profile(&self, samples: &[Vec<u32>], fisher: bool) -> Result<GradientProfile> {
        let layers: Vec<&PrunableLinear> = self.linears().collect();
        let keep = layers
            .iter()
            .map(|l| kept_weights(l))
            .collect::<Result<Vec<_>>>()?;
        // Σ over samples of the sample's mean |∂L/∂W| over kept weights; every sample
        // has the same kept set, so the mean of means is the mean over both.
        let mut sums = vec![0f64; layers.len()];
        let mut out_sums: HashMap<String, (Vec<f64>, u64)> = HashMap::new();
        let mut on_output = |name: &str, g: &Tensor| -> Result<()> {
            // One sample per call: `seq` rows, `seq − 1` of them scored.
            let scale = (g.dim(0)?.saturating_sub(1) as f64).powi(2);
            let col: Vec<f64> = g.to_dtype(DType::F64)?.sqr()?.sum(0)?.to_vec1()?;
            let (acc, tokens) = out_sums
                .entry(name.to_string())
                .or_insert_with(|| (vec![0.0; col.len()], 0));
            for (a, v) in acc.iter_mut().zip(col) {
                *a += scale * v;
            }
            *tokens += g.dim(0)? as u64;
            Ok(())
        };
        self.check_gradient_samples(samples)?;
        for s in samples {
            let out: Option<&mut OutputVisit<'_>> =
                if fisher { Some(&mut on_output) } else { None };
            self.sample_gradient(
                s,
                &mut |i, _, g| {
                    if keep[i].count_kept() > 0 {
                        sums[i] += kernels::gradient_importance(g, &keep[i])?;
                    }
                    Ok(())
                },
                out,
            )?;
        }
        let n = samples.len() as f64;
        let means = layers
            .iter()
            .zip(keep.iter().zip(sums))
            .filter(|(_, (k, _))| k.count_kept() > 0)
            .map(|(l, (_, s))| (l.name().to_string(), s / n))
            .collect();
        let fisher = out_sums
            .into_iter()
            .map(|(name, (acc, tokens))| {
                let t = tokens.max(1) as f64;
                (name, acc.into_iter().map(|v| v / t).collect())
            })
            .collect();
        Ok(GradientProfile {
            means,
            output_fisher: fisher,
        })
    }

    /// Check every sample, then run [`Model::sample_gradient`] on each in turn.
    fn for_each_sample_gradient(&self, samples: &[Vec<u32>], visit: &mut Visit<'_>) -> Result<()> {
        self.check_gradient_samples(samples)?;
        for s in samples {
            self.sample_gradient(s, visit, None)?;
        }
        Ok(())
    }

    fn check_gradient_samples(&self, samples: &[Vec<u32>]) -> Result<()> {
        if samples.is_empty() {
            return Err(ModelError::InvalidArgument(
                "gradient importance: no samples".into(),
            ));
        }
        for (i, s) in samples.iter().enumerate() {
            if s.len() < 2 {
                return Err(ModelError::InvalidArgument(format!(
                    "gradient importance: sample {i} has {} tokens, needs at least 2",
                    s.len()
                )));
            }
            self.check_len(s.len())?;
            self.check_ids(s)?;
        }
        Ok(())
    }

    /// One sample's backward, block by block (module docs); calls `visit` once per
    /// prunable layer, top block first. Activation statistics, when on, are recorded by
    /// the first forward only.
    /// With `outputs`, also passes each projection's ∂L/∂y to it.
    fn sample_gradient(
        &self,
        sample: &[u32],
        visit: &mut Visit<'_>,
        mut outputs: Option<&mut OutputVisit<'_>>,
    ) -> Result<()> {
        let (dtype, dev) = (self.dtype(), self.device());
        let len = sample.len();
        let tokens = Tensor::new(sample, dev)?.unsqueeze(0)?;
        let rope = RopeTables::new(self.config(), 0, len, dtype, dev)?;
        let mask = causal_mask(len, 0, dtype, dev)?;
        let blocks = self.decoder_layers();
        let first = Pass {
            overlay: None,
            record_stats: self.stats_enabled(),
            grad: true,
            capture: None,
        };
        // 1. Block inputs; nothing is tracked, so no graph is kept.
        let mut inputs = Vec::with_capacity(blocks.len());
        let mut x = self.embed(&tokens)?;
        for block in blocks {
            let next = block.forward(&x, &rope, mask.as_ref(), None, first)?;
            inputs.push(x);
            x = next;
        }
        // 2. The head: ∂L/∂(top block output), through the final norm by backward()
        // from the softmax gradient of the loss (see `Model::head_gradient`).
        let h = Var::from_tensor(&x)?;
        drop(x);
        let normed = rms_norm(
            h.as_tensor(),
            self.final_norm(),
            self.config().rms_norm_eps,
            true,
        )?;
        let g_normed = self.head_gradient(&normed.detach().squeeze(0)?, &sample[1..])?;
        let grads = (normed * g_normed.unsqueeze(0)?)?.sum_all()?.backward()?;
        let mut upstream = gradient_of(&grads, h.as_tensor())?;
        drop((grads, h));
        // 3. Blocks from the top; per block one transient copy of its 7 weights.
        let per_block = blocks.first().map_or(0, |b| b.projections().len());
        for (b, (block, input)) in blocks.iter().zip(inputs).enumerate().rev() {
            let x = Var::from_tensor(&input)?;
            drop(input);
            let projections = block.projections();
            let vars = projections
                .iter()
                .map(|p| Ok(Var::from_tensor(&p.stored())?))
                .collect::<Result<Vec<_>>>()?;
            let mut overlay = WeightOverlay::new();
            for (p, v) in projections.iter().zip(&vars) {
                // A non-destructive mask is part of the forward, as in plain calls.
                let w = match p.mask() {
                    Some(m) => (v.as_tensor() * m.to_dtype(dtype)?)?,
                    None => v.as_tensor().clone(),
                };
                overlay.insert(p.name(), w);
            }
            let captured = OutputCapture::default();
            let pass = Pass {
                overlay: Some(&overlay),
                record_stats: false,
                grad: true,
                capture: outputs.is_some().then_some(&captured),
            };
            let out = block.forward(x.as_tensor(), &rope, mask.as_ref(), None, pass)?;
            let grads = (out * &upstream)?.sum_all()?.backward()?;
            if let Some(on_output) = outputs.as_mut() {
                for (name, y) in captured.take() {
                    let g = gradient_of(&grads, &y)?;
                    let rows = g.elem_count() / g.dim(candle_core::D::Minus1)?.max(1);
                    let cols = g.dim(candle_core::D::Minus1)?;
                    on_output(&name, &g.reshape((rows, cols))?)?;
                }
            }
            for (slot, (p, v)) in projections.iter().zip(&vars).enumerate() {
                visit(
                    b * per_block + slot,
                    p,
                    &gradient_of(&grads, v.as_tensor())?,
                )?;
            }
            upstream = gradient_of(&grads, x.as_tensor())?;
        }
        Ok(())
    }
}

impl Model {
    /// ∂L/∂hidden (`[seq, hidden]`) for L the mean next-token NLL of `targets`
    /// (`seq − 1` ids) under logits `hidden · lm_headᵀ`: row `i < seq − 1` is
    /// `(softmax(zᵢ) · lm_head − lm_head[targets[i]]) / (seq − 1)`, the last row 0.
    /// Written out rather than left to `backward()`, which would keep `[seq, vocab]`
    /// logits, their log-softmax temporaries and a `[hidden, vocab]` lm_head gradient
    /// (~0.5 GB for SmolLM2 at 256 tokens); here logits exist [`LOGIT_ROWS`] rows at a
    /// time and the lm_head gradient never.
    fn head_gradient(&self, hidden: &Tensor, targets: &[u32]) -> Result<Tensor> {
        let n = targets.len();
        let head = self.lm_head();
        let mut rows = Vec::with_capacity(n.div_ceil(LOGIT_ROWS) + 1);
        for (c, ids) in targets.chunks(LOGIT_ROWS).enumerate() {
            let h = hidden.narrow(0, c * LOGIT_ROWS, ids.len())?;
            let probs = softmax_last_dim(&self.logits(&h)?, true)?;
            let picked = head.index_select(&Tensor::new(ids, hidden.device())?, 0)?;
            rows.push(((probs.matmul(head)? - picked)? / n as f64)?);
        }
        rows.push(hidden.narrow(0, n, hidden.dim(0)? - n)?.zeros_like()?);
        Ok(Tensor::cat(&rows, 0)?)
    }
}

/// The gradient of `t` in `grads`; zeros when `t` did not influence the loss.
fn gradient_of(grads: &candle_core::backprop::GradStore, t: &Tensor) -> Result<Tensor> {
    Ok(match grads.get(t) {
        Some(g) => g.clone(),
        None => t.zeros_like()?,
    })
}

/// The layer's kept weights: in-place keep bits AND its non-destructive mask.
fn kept_weights(layer: &PrunableLinear) -> Result<Arc<Mask>> {
    let info = layer.info();
    let in_place = layer.pruned_mask();
    let Some(m) = layer.mask() else {
        return Ok(
            in_place.unwrap_or_else(|| Arc::new(Mask::ones(info.out_features, info.in_features)))
        );
    };
    let masked = Mask::from_tensor(&m)?;
    Ok(Arc::new(match in_place {
        None => masked,
        Some(p) => Mask::from_words(
            info.out_features,
            info.in_features,
            p.words()
                .iter()
                .zip(masked.words())
                .map(|(a, b)| a & b)
                .collect(),
        )?,
    }))
}
