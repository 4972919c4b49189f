//! The decoder shared by every family: RMSNorm, RoPE (HF "rotate_half", not
//! interleaved), causal grouped-query attention, SwiGLU MLP.
//!
//! Trap: `candle_nn::ops::{rms_norm, softmax_last_dim}` and
//! `candle_nn::rotary_emb::rope` are built with `apply_op*_no_bwd`, so gradients
//! through them vanish without an error. Each of these ops therefore has two forms
//! under one name, as in candle-nn's `ops.rs`: a differentiable one written from
//! basic ops (used when [`Pass::grad`] is set, i.e. by `gradient_importance`) and
//! candle's fused kernel (every other call). The fused kernels are 5–20× faster on
//! the CPU (RMSNorm 0.2 vs 4.9 ms, softmax 4.6 vs 22 ms at SmolLM2 shapes, 512
//! tokens), about a sixth of a forward. Unit tests below check both forms agree.

use candle_core::{DType, Device, Tensor, D};

use crate::families::{FamilySpec, PROJECTIONS};
use crate::linear::{Pass, PrunableLinear};
use crate::{ModelConfig, Result};

/// `x / sqrt(mean(x²) + eps) · weight` over the last dimension.
/// Candle's fused kernel has no f64 version; f64 models (gradient checks) take the
/// differentiable form.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, grad: bool) -> Result<Tensor> {
    if grad || x.dtype() == DType::F64 {
        let dim = x.dim(D::Minus1)? as f64;
        let mean_sq = (x.sqr()?.sum_keepdim(D::Minus1)? / dim)?;
        Ok(x.broadcast_div(&(mean_sq + eps)?.sqrt()?)?
            .broadcast_mul(weight)?)
    } else {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            weight,
            eps as f32,
        )?)
    }
}

/// Softmax over the last dimension. In the differentiable form the row max is
/// detached: it only guards `exp` against overflow and cancels out of the value and
/// of the gradient.
pub(crate) fn softmax_last_dim(x: &Tensor, grad: bool) -> Result<Tensor> {
    if grad {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&max)?.exp()?;
        Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?)
    }
}

/// Log-softmax over the last dimension (differentiable; candle has no fused one).
pub(crate) fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&log_sum)?)
}

/// Rotary position embedding tables for one call: `cos`, `sin` of shape
/// `[seq, head_dim]`, each half repeated twice as HF's `rotate_half` expects.
pub(crate) struct RopeTables {
    cos: Tensor,
    sin: Tensor,
    /// `[seq, head_dim / 2]`: the halves candle's fused `rope` kernel takes.
    cos_half: Tensor,
    sin_half: Tensor,
}

impl RopeTables {
    /// Tables for positions `offset .. offset + len`. Angles and their sines are
    /// computed in f64, then cast to the model dtype; building them per call costs
    /// `len · head_dim` sin/cos, nothing next to one matmul, and needs no
    /// `max_position_embeddings`-sized cache in the shared model.
    pub fn new(
        cfg: &ModelConfig,
        offset: usize,
        len: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let d = cfg.head_dim;
        let inv_freq: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64))
            .collect();
        let mut cos = Vec::with_capacity(len * d);
        let mut sin = Vec::with_capacity(len * d);
        for pos in offset..offset + len {
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = pos as f64 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let table = |v: Vec<f64>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (len, d), dev)?.to_dtype(dtype)?)
        };
        let (cos, sin) = (table(cos)?, table(sin)?);
        Ok(Self {
            cos_half: cos.narrow(1, 0, d / 2)?.contiguous()?,
            sin_half: sin.narrow(1, 0, d / 2)?.contiguous()?,
            cos,
            sin,
        })
    }

    /// Apply to `x` of shape `[batch, heads, seq, head_dim]`:
    /// `x · cos + rotate_half(x) · sin`.
    pub fn apply(&self, x: &Tensor, grad: bool) -> Result<Tensor> {
        if !grad {
            return Ok(candle_nn::rotary_emb::rope(
                &x.contiguous()?,
                &self.cos_half,
                &self.sin_half,
            )?);
        }
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(&self.cos)? + rotated.broadcast_mul(&self.sin)?)?)
    }
}

/// Additive causal mask `[seq, offset + seq]`: 0 where query `i` (absolute position
/// `offset + i`) may attend key `j`, −∞ after it. `None` for a single query, which
/// sees every cached key.
pub(crate) fn causal_mask(
    seq: usize,
    offset: usize,
    dtype: DType,
    dev: &Device,
) -> Result<Option<Tensor>> {
    if seq <= 1 {
        return Ok(None);
    }
    let keys = offset + seq;
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| {
            (0..keys).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(
        Tensor::from_vec(mask, (seq, keys), dev)?.to_dtype(dtype)?,
    ))
}

/// Keys and values of one layer for the positions already processed, after RoPE,
/// `[batch, kv_heads, cached, head_dim]` each.
pub(crate) type LayerKv = Option<(Tensor, Tensor)>;

/// One transformer block.
pub(crate) struct DecoderLayer {
    input_norm: Tensor,
    post_attn_norm: Tensor,
    /// q, k, v, o, gate, up, down in [`PROJECTIONS`] order.
    proj: [PrunableLinear; 7],
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
}

impl DecoderLayer {
    /// Build layer `index`, taking tensors by HF name through `take`.
    pub fn new(
        cfg: &ModelConfig,
        spec: FamilySpec,
        index: usize,
        take: &mut dyn FnMut(&str) -> Result<Tensor>,
    ) -> Result<Self> {
        let p = format!("model.layers.{index}");
        let mut make = |name: &str| -> Result<PrunableLinear> {
            let full = format!("{p}.{name}");
            let weight = take(&format!("{full}.weight"))?;
            let bias = if spec.has_bias(name) {
                Some(take(&format!("{full}.bias"))?)
            } else {
                None
            };
            PrunableLinear::new(full, weight, bias)
        };
        let proj = [
            make(PROJECTIONS[0])?,
            make(PROJECTIONS[1])?,
            make(PROJECTIONS[2])?,
            make(PROJECTIONS[3])?,
            make(PROJECTIONS[4])?,
            make(PROJECTIONS[5])?,
            make(PROJECTIONS[6])?,
        ];
        let (q_norm, k_norm) = if spec.qk_norm {
            (
                Some(take(&format!("{p}.self_attn.q_norm.weight"))?),
                Some(take(&format!("{p}.self_attn.k_norm.weight"))?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            input_norm: take(&format!("{p}.input_layernorm.weight"))?,
            post_attn_norm: take(&format!("{p}.post_attention_layernorm.weight"))?,
            proj,
            q_norm,
            k_norm,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            eps: cfg.rms_norm_eps,
        })
    }

    pub fn projections(&self) -> &[PrunableLinear; 7] {
        &self.proj
    }

    pub fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        mask: Option<&Tensor>,
        kv: Option<&mut LayerKv>,
        pass: Pass<'_>,
    ) -> Result<Tensor> {
        let h = rms_norm(x, &self.input_norm, self.eps, pass.grad)?;
        let x = (x + self.attention(&h, rope, mask, kv, pass)?)?;
        let h = rms_norm(&x, &self.post_attn_norm, self.eps, pass.grad)?;
        let [.., gate, up, down] = &self.proj;
        let act = (gate.forward(&h, pass)?.silu()? * up.forward(&h, pass)?)?;
        Ok((x + down.forward(&act, pass)?)?)
    }

    /// Causal self-attention. Grouped-query attention without copying K/V: the
    /// `group` query heads that share a kv head are stacked along the sequence axis,
    /// so one batched matmul per kv head serves them all.
    fn attention(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        mask: Option<&Tensor>,
        kv: Option<&mut LayerKv>,
        pass: Pass<'_>,
    ) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.heads, self.kv_heads, self.head_dim);
        let [q_proj, k_proj, v_proj, o_proj, ..] = &self.proj;
        let split = |t: Tensor, heads: usize| -> Result<Tensor> {
            Ok(t.reshape((b, l, heads, hd))?.transpose(1, 2)?)
        };
        let mut q = split(q_proj.forward(x, pass)?, nh)?;
        let mut k = split(k_proj.forward(x, pass)?, nkv)?;
        let mut v = split(v_proj.forward(x, pass)?, nkv)?.contiguous()?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = rms_norm(&q, qn, self.eps, pass.grad)?;
            k = rms_norm(&k, kn, self.eps, pass.grad)?;
        }
        let q = rope.apply(&q, pass.grad)?;
        let mut k = rope.apply(&k, pass.grad)?;
        if let Some(cache) = kv {
            if let Some((pk, pv)) = cache.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *cache = Some((k.clone(), v.clone()));
        }
        let keys = k.dim(2)?;
        let group = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let q = q.contiguous()?.reshape((b, nkv, group * l, hd))?;
        let scores = (q.matmul(&k.t()?)? * scale)?.reshape((b, nh, l, keys))?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = softmax_last_dim(&scores, pass.grad)?.reshape((b, nkv, group * l, keys))?;
        let ctx = probs
            .matmul(&v)?
            .reshape((b, nh, l, hd))?
            .transpose(1, 2)?
            .reshape((b, l, nh * hd))?;
        o_proj.forward(&ctx, pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_config;
    use crate::Architecture;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// `[batch 2, heads 3, seq 5, head_dim 8]` input, contiguous and strided (a
    /// transpose, as attention produces), in both float dtypes the model runs in.
    fn inputs(dtype: DType) -> Vec<Tensor> {
        let x = Tensor::randn(0f32, 2.0, (2, 5, 3, 8), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        vec![
            x.transpose(1, 2).unwrap().contiguous().unwrap(),
            x.transpose(1, 2).unwrap(),
        ]
    }

    #[test]
    fn fused_and_differentiable_forms_agree() {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-6)] {
            let w = Tensor::randn(1f32, 0.1, 8, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let cfg = ModelConfig {
                head_dim: 8,
                ..tiny_config(Architecture::Llama)
            };
            let rope = RopeTables::new(&cfg, 7, 5, dtype, &Device::Cpu).unwrap();
            for x in inputs(dtype) {
                let pairs = [
                    (rms_norm(&x, &w, 1e-6, true), rms_norm(&x, &w, 1e-6, false)),
                    (softmax_last_dim(&x, true), softmax_last_dim(&x, false)),
                    (rope.apply(&x, true), rope.apply(&x, false)),
                ];
                for (i, (slow, fast)) in pairs.into_iter().enumerate() {
                    let d = max_diff(&slow.unwrap(), &fast.unwrap());
                    assert!(d < tol, "{dtype:?} op {i}: {d}");
                }
            }
        }
    }

    #[test]
    fn softmax_handles_the_causal_mask() {
        let mask = causal_mask(3, 1, DType::F32, &Device::Cpu)
            .unwrap()
            .unwrap();
        assert_eq!(mask.dims(), &[3, 4]);
        let x = Tensor::zeros((3, 4), DType::F32, &Device::Cpu)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        for grad in [true, false] {
            let p = softmax_last_dim(&x, grad)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(p[0], vec![0.5, 0.5, 0.0, 0.0]);
            assert_eq!(p[2], vec![0.25; 4]);
        }
        assert!(causal_mask(1, 5, DType::F32, &Device::Cpu)
            .unwrap()
            .is_none());
    }

    #[test]
    fn log_softmax_is_log_of_softmax() {
        let x = Tensor::randn(0f32, 3.0, (4, 11), &Device::Cpu).unwrap();
        let a = log_softmax_last_dim(&x).unwrap();
        let b = softmax_last_dim(&x, false).unwrap().log().unwrap();
        assert!(max_diff(&a, &b) < 1e-5);
    }
}
