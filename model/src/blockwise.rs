//! Block-by-block evaluation: embed once, run one decoder block at a time on cached
//! hidden states, finish with the final norm and lm_head.
//!
//! Sequential calibration (Wanda, SparseGPT, OWL reference code) prunes block `i` on
//! inputs that already passed through the pruned blocks `0..i`, then feeds block `i`'s
//! pruned outputs to block `i + 1`: one calibration pass in all instead of one full
//! forward per block. This file only exposes the pieces of [`Model::forward`] that
//! such a caller needs; what to do between blocks (statistics, pruning) is the
//! caller's business. `embed`, then `forward_block` for every block in order, then
//! `head` computes the same logits as `forward` (a test below checks it).

use candle_core::Tensor;

use crate::decoder::{causal_mask, rms_norm, RopeTables};
use crate::linear::{LayerInfo, Pass, PrunableLinear};
use crate::overlay::WeightOverlay;
use crate::{Model, ModelError, Result};

/// The prunable layer whose input `name` reads: q/k/v read the same input, as do
/// gate/up, so one Gram (and one inverse Hessian factor) serves each group. Sequential
/// calibration (baselines) and the loop's OBS repair both key their Grams by it.
pub fn gram_source(name: &str) -> String {
    for (from, to) in [
        ("self_attn.k_proj", "self_attn.q_proj"),
        ("self_attn.v_proj", "self_attn.q_proj"),
        ("mlp.up_proj", "mlp.gate_proj"),
    ] {
        if let Some(prefix) = name.strip_suffix(from) {
            return format!("{prefix}{to}");
        }
    }
    name.to_string()
}

impl Model {
    /// Number of decoder blocks (`num_hidden_layers`).
    pub fn num_blocks(&self) -> usize {
        self.decoder_layers().len()
    }

    /// The prunable projections of block `i` (q, k, v, o, gate, up, down).
    pub fn block_layers(&self, i: usize) -> Result<Vec<LayerInfo>> {
        Ok(self
            .block(i)?
            .projections()
            .iter()
            .map(PrunableLinear::info)
            .collect())
    }

    /// Embedding rows of `tokens` (`[batch, seq]` u32, checked as by
    /// [`Model::forward`]) → the hidden states `[batch, seq, hidden]` block 0 takes.
    pub fn embed_tokens(&self, tokens: &Tensor) -> Result<Tensor> {
        self.check_tokens(tokens)?;
        self.embed(tokens)
    }

    /// Run decoder block `i` on `hidden` (`[batch, seq, hidden]`, positions `0..seq`,
    /// causal) with some of its weights replaced by `overlay` for this call. Activation
    /// statistics and Gram matrices are recorded exactly as in a full forward (only
    /// block `i`'s layers see tokens).
    pub fn forward_block(
        &self,
        i: usize,
        hidden: &Tensor,
        overlay: Option<&WeightOverlay>,
    ) -> Result<Tensor> {
        let layer = self.block(i)?;
        let l = self.check_hidden(hidden)?;
        if let Some(o) = overlay {
            self.check_overlay(o)?;
        }
        let pass = Pass {
            overlay,
            record_stats: self.stats_enabled(),
            grad: false,
            capture: None,
        };
        let rope = RopeTables::new(self.config(), 0, l, self.dtype(), self.device())?;
        let mask = causal_mask(l, 0, self.dtype(), self.device())?;
        layer.forward(hidden, &rope, mask.as_ref(), None, pass)
    }

    /// Final norm and lm_head over the last block's output → logits
    /// `[batch, seq, vocab]`.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.check_hidden(hidden)?;
        let normed = rms_norm(hidden, self.final_norm(), self.config().rms_norm_eps, false)?;
        self.logits(&normed)
    }

    pub(crate) fn block(&self, i: usize) -> Result<&crate::decoder::DecoderLayer> {
        self.decoder_layers().get(i).ok_or_else(|| {
            ModelError::InvalidArgument(format!(
                "block {i} does not exist (the model has {})",
                self.num_blocks()
            ))
        })
    }

    /// Hidden states must be `[batch, seq, hidden_size]` in the model's dtype and on
    /// its device, `1 ≤ seq ≤ context`. Returns `seq`.
    fn check_hidden(&self, hidden: &Tensor) -> Result<usize> {
        let h = self.config().hidden_size;
        let bad = || {
            ModelError::InvalidArgument(format!(
                "hidden states must be [batch, seq, {h}] {:?}, got {:?} {:?}",
                self.dtype(),
                hidden.dims(),
                hidden.dtype()
            ))
        };
        let (b, l, d) = hidden.dims3().map_err(|_| bad())?;
        if b == 0 || l == 0 || d != h || hidden.dtype() != self.dtype() {
            return Err(bad());
        }
        if !hidden.device().same_device(self.device()) {
            return Err(ModelError::InvalidArgument(format!(
                "hidden states are on {:?}, the model on {:?}",
                hidden.device(),
                self.device()
            )));
        }
        self.check_len(l)?;
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use crate::testing::{random_weights, tiny_config};
    use crate::{Architecture, Model, WeightOverlay};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn blockwise(m: &Model, tokens: &Tensor, overlay: Option<&WeightOverlay>) -> Tensor {
        let mut h = m.embed_tokens(tokens).unwrap();
        for i in 0..m.num_blocks() {
            h = m.forward_block(i, &h, overlay).unwrap();
        }
        m.head(&h).unwrap()
    }

    /// embed → every block → head gives `forward`'s logits, for every family, a batch
    /// of two and with an overlay; statistics see the same tokens.
    #[test]
    fn blockwise_equals_forward() {
        let tokens = Tensor::new(
            &[[3u32, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]],
            &Device::Cpu,
        )
        .unwrap();
        for arch in [
            Architecture::Llama,
            Architecture::Mistral,
            Architecture::Qwen2,
            Architecture::Qwen3,
        ] {
            let cfg = tiny_config(arch);
            let w = random_weights(&cfg, 11, &Device::Cpu).unwrap();
            let m = Model::new(&cfg, &w, &Device::Cpu).unwrap();
            assert_eq!(m.num_blocks(), cfg.num_hidden_layers);
            let full = m.forward(&tokens).unwrap();
            let blocks = blockwise(&m, &tokens, None);
            assert_eq!(full.dims(), blocks.dims());
            assert!(max_diff(&full, &blocks) < 1e-5, "{arch:?}");

            let name = "model.layers.1.mlp.down_proj";
            let zeroed = (m.layer_weight(name).unwrap() * 0.0).unwrap();
            let mut o = WeightOverlay::new();
            o.insert(name, zeroed);
            let full_o = m.forward_with(&tokens, Some(&o)).unwrap();
            let blocks_o = blockwise(&m, &tokens, Some(&o));
            assert!(max_diff(&full_o, &blocks_o) < 1e-5, "{arch:?} overlay");
            assert!(
                max_diff(&full, &full_o) > 1e-3,
                "the overlay changes the logits"
            );
        }
    }

    #[test]
    fn blockwise_statistics_match_forward() {
        let cfg = tiny_config(Architecture::Llama);
        let m = Model::new(
            &cfg,
            &random_weights(&cfg, 3, &Device::Cpu).unwrap(),
            &Device::Cpu,
        )
        .unwrap();
        let tokens = Tensor::new(&[[5u32, 6, 7, 8, 9, 10]], &Device::Cpu).unwrap();
        m.set_stats_enabled(true);
        m.forward(&tokens).unwrap();
        let full = m.take_stats();
        blockwise(&m, &tokens, None);
        let blocks = m.take_stats();
        m.set_stats_enabled(false);
        assert_eq!(full.len(), 14);
        for (name, s) in &full {
            let b = &blocks[name];
            assert_eq!(s.tokens, b.tokens);
            let d = (&s.sum_sq - &b.sum_sq)
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(d < 1e-4, "{name}: {d}");
        }
    }

    #[test]
    fn bad_block_inputs_are_errors() {
        let cfg = tiny_config(Architecture::Llama);
        let m = Model::new(
            &cfg,
            &random_weights(&cfg, 3, &Device::Cpu).unwrap(),
            &Device::Cpu,
        )
        .unwrap();
        let h = Tensor::zeros((1, 4, cfg.hidden_size), DType::F32, &Device::Cpu).unwrap();
        assert!(m.forward_block(2, &h, None).is_err());
        let wrong = Tensor::zeros((1, 4, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(m.forward_block(0, &wrong, None).is_err());
        let f64h = h.to_dtype(DType::F64).unwrap();
        assert!(m.forward_block(0, &f64h, None).is_err());
        assert!(m.block_layers(2).is_err());
        assert_eq!(
            m.block_layers(1).unwrap()[6].name,
            "model.layers.1.mlp.down_proj"
        );
        let big = Tensor::new(&[[99u32]], &Device::Cpu).unwrap();
        assert!(m.embed_tokens(&big).is_err());
    }
}
