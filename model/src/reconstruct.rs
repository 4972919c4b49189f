//! Block reconstruction: the kept weights of one decoder block adjusted by Adam so
//! that the block's output on given inputs approaches given targets.
//!
//! The OBS update minimises each projection's own output error on its own inputs; it
//! cannot see how seven projections' errors combine through attention and SwiGLU, nor
//! undo what earlier blocks already lost. Fitting the whole block's output to the
//! dense model's output (on the dense model's own input, while the block reads the
//! pruned model's input) does both; with a mask on every weight the pruned entries
//! stay zero (their gradient is zero and Adam's moments of a zero gradient stay zero).

use candle_core::{DType, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::decoder::{causal_mask, RopeTables};
use crate::linear::Pass;
use crate::overlay::WeightOverlay;
use crate::{Model, ModelError, Result};

/// How long and how fast a block is fitted.
#[derive(Debug, Clone, Copy)]
pub struct ReconstructOptions {
    /// Passes over all input batches.
    pub epochs: usize,
    /// Adam's learning rate (no weight decay).
    pub lr: f64,
}

/// One projection of the block: its current weight and its keep mask (1 = kept), both
/// `[out, in]` in the model's dtype.
pub struct BlockWeight {
    pub name: String,
    pub weight: Tensor,
    pub keep: Tensor,
}

/// What a fit did: the squared error per token, mean over all batches, before the first step and
/// after the last, so a caller can keep the old weights when the fit did not help.
#[derive(Debug, Clone, Copy)]
pub struct ReconstructStats {
    pub loss_before: f64,
    pub loss_after: f64,
}

impl Model {
    /// Fits block `i`'s given projections so that its output on each `inputs[k]`
    /// (`[batch, seq, hidden]`, one `seq` for all) approaches `targets[k]` (same
    /// shape), squared error per token, one Adam step per batch. Projections not in
    /// `weights` keep their stored weights. Returns the new weights (masked, in
    /// `weights`' order) and the losses.
    pub fn reconstruct_block(
        &self,
        i: usize,
        inputs: &[Tensor],
        targets: &[Tensor],
        weights: &[BlockWeight],
        opts: ReconstructOptions,
    ) -> Result<(Vec<Tensor>, ReconstructStats)> {
        if inputs.len() != targets.len() || inputs.is_empty() {
            return Err(ModelError::InvalidArgument(format!(
                "reconstruct block {i}: {} input batches for {} targets",
                inputs.len(),
                targets.len()
            )));
        }
        let seq = inputs[0].dim(1)?;
        if let Some(x) = inputs.iter().find(|x| x.dim(1).ok() != Some(seq)) {
            return Err(ModelError::InvalidArgument(format!(
                "reconstruct block {i}: input batches of {seq} and {:?} tokens",
                x.dims()
            )));
        }
        let block = Fit {
            block: self.block(i)?,
            rope: RopeTables::new(self.config(), 0, seq, self.dtype(), self.device())?,
            mask: causal_mask(seq, 0, self.dtype(), self.device())?,
            weights,
        };
        let vars = weights
            .iter()
            .map(|w| Ok(Var::from_tensor(&w.weight.to_dtype(DType::F32)?)?))
            .collect::<Result<Vec<_>>>()?;
        let keeps = weights
            .iter()
            .map(|w| Ok(w.keep.to_dtype(DType::F32)?))
            .collect::<Result<Vec<_>>>()?;
        let params = ParamsAdamW {
            lr: opts.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        };
        let mut adam = AdamW::new(vars.clone(), params)?;
        let loss_before = block.mean_loss(self, inputs, targets, &vars, &keeps)?;
        for _ in 0..opts.epochs {
            for (x, y) in inputs.iter().zip(targets) {
                let loss = block.loss(self, x, y, &vars, &keeps, true)?;
                adam.backward_step(&loss)?;
            }
        }
        let loss_after = block.mean_loss(self, inputs, targets, &vars, &keeps)?;
        let fitted = vars
            .iter()
            .zip(&keeps)
            // Detached: a fitted weight that still tracked the variables would drag
            // this block's graph into every later block's backward (the inputs of the
            // next block are computed with it), making each step slower than the last.
            .map(|(v, k)| Ok((v.as_tensor().detach() * k)?.to_dtype(self.dtype())?))
            .collect::<Result<Vec<_>>>()?;
        Ok((
            fitted,
            ReconstructStats {
                loss_before,
                loss_after,
            },
        ))
    }
}

/// One block's fit: the block, its per-call tables for the inputs' length, and the
/// projections being fitted.
struct Fit<'a> {
    block: &'a crate::decoder::DecoderLayer,
    rope: RopeTables,
    mask: Option<Tensor>,
    weights: &'a [BlockWeight],
}

impl Fit<'_> {
    /// Mean over batches of [`Fit::loss`], no graph kept.
    fn mean_loss(
        &self,
        model: &Model,
        inputs: &[Tensor],
        targets: &[Tensor],
        vars: &[Var],
        keeps: &[Tensor],
    ) -> Result<f64> {
        let mut sum = 0.0;
        for (x, y) in inputs.iter().zip(targets) {
            let l = self.loss(model, x, y, vars, keeps, false)?;
            sum += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        Ok(sum / inputs.len() as f64)
    }

    /// Squared error per token of the block's output on `x` against `y`, with the
    /// masked variables in place of the fitted projections; a graph for `backward`
    /// only when `grad`.
    fn loss(
        &self,
        model: &Model,
        x: &Tensor,
        y: &Tensor,
        vars: &[Var],
        keeps: &[Tensor],
        grad: bool,
    ) -> Result<Tensor> {
        let mut overlay = WeightOverlay::new();
        for ((w, v), k) in self.weights.iter().zip(vars).zip(keeps) {
            let v = if grad {
                v.as_tensor().clone()
            } else {
                v.as_tensor().detach()
            };
            overlay.insert(w.name.clone(), (v * k)?.to_dtype(model.dtype())?);
        }
        let pass = Pass {
            overlay: Some(&overlay),
            record_stats: false,
            grad,
            capture: None,
        };
        let out = self
            .block
            .forward(x, &self.rope, self.mask.as_ref(), None, pass)?;
        // Per token, summed over the hidden width, so the loss and its gradients keep
        // the scale of one token's error whatever the batch (a mean over every element
        // made each gradient ~1/(tokens × hidden)).
        let tokens = (x.elem_count() / x.dim(candle_core::D::Minus1)?.max(1)) as f64;
        Ok(((out - y)?.sqr()?.sum_all()? / tokens)?.to_dtype(DType::F32)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::testing::{random_weights, tiny_config};
    use crate::Architecture;

    fn tiny() -> Model {
        let cfg = tiny_config(Architecture::Llama);
        let w = random_weights(&cfg, 7, &Device::Cpu).unwrap();
        Model::new(&cfg, &w, &Device::Cpu).unwrap()
    }

    /// Block 0's projections with every other weight of each row pruned (zeroed).
    fn half_pruned(m: &Model) -> Vec<BlockWeight> {
        m.block_layers(0)
            .unwrap()
            .iter()
            .map(|l| {
                let w = m.layer_weight(&l.name).unwrap();
                let keep: Vec<f32> = (0..l.out_features * l.in_features)
                    .map(|i| (i % 2) as f32)
                    .collect();
                let keep =
                    Tensor::from_vec(keep, (l.out_features, l.in_features), &Device::Cpu).unwrap();
                BlockWeight {
                    name: l.name.clone(),
                    weight: (w * &keep).unwrap(),
                    keep,
                }
            })
            .collect()
    }

    fn inputs(m: &Model) -> Vec<Tensor> {
        (0..3u32)
            .map(|s| {
                let ids: Vec<u32> = (0..24).map(|i| (i * 7 + s * 5) % 64).collect();
                let t = Tensor::from_vec(ids, (2, 12), &Device::Cpu).unwrap();
                m.embed_tokens(&t).unwrap()
            })
            .collect()
    }

    #[test]
    fn fit_moves_a_pruned_block_towards_the_dense_output_and_keeps_pruned_weights_zero() {
        let m = tiny();
        let xs = inputs(&m);
        let ys: Vec<Tensor> = xs
            .iter()
            .map(|x| m.forward_block(0, x, None).unwrap())
            .collect();
        let weights = half_pruned(&m);
        let opts = ReconstructOptions {
            epochs: 30,
            lr: 1e-2,
        };
        let (fitted, stats) = m.reconstruct_block(0, &xs, &ys, &weights, opts).unwrap();
        assert!(stats.loss_before > 1e-3, "{stats:?}");
        assert!(
            stats.loss_after < 0.5 * stats.loss_before,
            "the fit should at least halve the error: {stats:?}"
        );
        for (w, f) in weights.iter().zip(&fitted) {
            assert!(!f.track_op(), "{} still carries the fit's graph", w.name);
            let pruned_sum: f32 = ((f.abs().unwrap() * (1.0 - &w.keep).unwrap()).unwrap())
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert_eq!(pruned_sum, 0.0, "{} revived a pruned weight", w.name);
        }
        // The returned loss is the loss of the returned weights.
        let mut o = WeightOverlay::new();
        for (w, f) in weights.iter().zip(&fitted) {
            o.insert(w.name.clone(), f.clone());
        }
        let mut mse = 0.0;
        for (x, y) in xs.iter().zip(&ys) {
            let out = m.forward_block(0, x, Some(&o)).unwrap();
            let d: f32 = (out - y)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            mse += d as f64 / 24.0 / xs.len() as f64;
        }
        assert!(
            (mse - stats.loss_after).abs() < 1e-6 * mse.max(1.0),
            "{mse} vs {stats:?}"
        );
    }

    #[test]
    fn unequal_inputs_and_targets_are_refused() {
        let m = tiny();
        let xs = inputs(&m);
        let opts = ReconstructOptions {
            epochs: 1,
            lr: 1e-3,
        };
        let err = m
            .reconstruct_block(0, &xs, &xs[..1], &half_pruned(&m), opts)
            .unwrap_err();
        assert!(
            err.to_string().contains("3 input batches for 1 targets"),
            "{err}"
        );
    }
}
