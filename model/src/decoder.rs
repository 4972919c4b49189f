//! The decoder shared by every family: RMSNorm, RoPE (HF "rotate_half", not
//! interleaved), causal grouped-query attention, SwiGLU MLP.
//!
//! Every op here is written from basic candle ops that have a backward pass.
//! `candle_nn::ops::{rms_norm, softmax_last_dim}` and `candle_nn::rotary_emb::rope`
//! are built with `apply_op*_no_bwd`: gradients through them vanish without an
//! error. One differentiable implementation serves both the inference and the
//! gradient path, so the two can never disagree.

use candle_core::{DType, Device, Tensor, D};

use crate::families::{FamilySpec, PROJECTIONS};
use crate::linear::{Pass, PrunableLinear};
use crate::{ModelConfig, Result};

/// `x / sqrt(mean(x²) + eps) · weight` over the last dimension.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dim = x.dim(D::Minus1)? as f64;
    let mean_sq = (x.sqr()?.sum_keepdim(D::Minus1)? / dim)?;
    Ok(x.broadcast_div(&(mean_sq + eps)?.sqrt()?)?
        .broadcast_mul(weight)?)
}

/// Softmax over the last dimension. The row max is detached: it only guards
/// `exp` against overflow and cancels out of the value and of the gradient.
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Log-softmax over the last dimension (same max trick as [`softmax_last_dim`]).
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
        Ok(Self {
            cos: table(cos)?,
            sin: table(sin)?,
        })
    }

    /// Apply to `x` of shape `[batch, heads, seq, head_dim]`.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
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
            Ok(PrunableLinear::new(full, weight, bias))
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
        let h = rms_norm(x, &self.input_norm, self.eps)?;
        let x = (x + self.attention(&h, rope, mask, kv, pass)?)?;
        let h = rms_norm(&x, &self.post_attn_norm, self.eps)?;
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
            q = rms_norm(&q, qn, self.eps)?;
            k = rms_norm(&k, kn, self.eps)?;
        }
        let q = rope.apply(&q)?;
        let mut k = rope.apply(&k)?;
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
        let probs = softmax_last_dim(&scores)?.reshape((b, nkv, group * l, keys))?;
        let ctx = probs
            .matmul(&v)?
            .reshape((b, nh, l, hd))?
            .transpose(1, 2)?
            .reshape((b, l, nh * hd))?;
        o_proj.forward(&ctx, pass)
    }
}
