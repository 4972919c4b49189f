//! The local planner's network: a llama / qwen2 decoder over Q8_0 weights on the CPU,
//! with a KV cache that can be cut back to any prefix.
//!
//! candle-transformers has both families (`quantized_llama`, `quantized_qwen2`), but
//! for a planner that re-reads a long prompt every iteration they lack what matters
//! here: their KV cache grows by concatenation (copying the whole cache for every new
//! token, ~0.3 GB per token at a 7k-token prompt on SmolLM2) and repeats K/V across
//! query heads; it cannot be cut back to a shared prefix; the Qwen2 model cannot be
//! cloned either; and the llama one stops at 4096 positions. This decoder writes new
//! keys and values into a preallocated cache in place, groups query heads over shared
//! K/V instead of copying them, and [`Net::truncate`]s to the prefix the next prompt
//! shares with the last one. Its logits agree with the project's f32 model on the
//! same file up to quantization noise, as closely as candle's models do (tested on the
//! assets).
//!
//! Every weight matrix is held as Q8_0 blocks (re-encoded at load when stored in
//! another type: at most an 8-bit rounding of values that had 16–64 levels) and
//! multiplied by this module's own kernels, for two measured reasons:
//!
//! - candle 0.11 has AVX2 dot products for Q8_0 but only a scalar loop for Q4_1 and
//!   Q5_0 (SmolLM2's and Qwen2.5-Coder-0.5B's storage types): `vec_dot_unopt` took 82 %
//!   of the planner's time under perf.
//! - candle's quantized matmul runs on a spinning barrier pool; on a 2-core machine
//!   shared with other work (load ~9) every one of the ~200 matmuls per token waited
//!   for a descheduled worker, and decoding fell to 2–3 tokens/s from ~40 on one thread.
//!   One decoding step here is a single-threaded pass over the weights (memory-bound),
//!   using candle's AVX2 Q8_0 dot product; a prompt chunk dequantizes each weight and
//!   uses the f32 GEMM, ~4x faster than int8 dot products row by row.

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType, QK8_0};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use model::{Architecture, ModelConfig};

/// Prompt tokens per forward pass while prefilling: bounds the attention scores
/// (chunk × context × heads floats) without giving up the matmuls' efficiency.
pub const PREFILL_CHUNK: usize = 256;
/// Forward passes over at least this many tokens multiply by dequantized weights.
pub const DENSE_FROM: usize = 16;
/// The KV cache grows in steps of this many positions.
const CACHE_STEP: usize = 1024;

/// A `[rows, cols]` weight as Q8_0 blocks, row by row.
struct Q8 {
    rows: usize,
    cols: usize,
    blocks: Vec<BlockQ8_0>,
}

impl Q8 {
    fn new(t: &QTensor) -> candle_core::Result<Self> {
        let (rows, cols) = t.shape().dims2()?;
        if cols % QK8_0 != 0 {
            candle_core::bail!("{cols} columns are not a multiple of the Q8_0 block ({QK8_0})");
        }
        let values = t
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut blocks = vec![BlockQ8_0::zeros(); rows * cols / QK8_0];
        BlockQ8_0::from_float(&values, &mut blocks);
        Ok(Self { rows, cols, blocks })
    }

    fn row(&self, r: usize) -> &[BlockQ8_0] {
        let nb = self.cols / QK8_0;
        &self.blocks[r * nb..(r + 1) * nb]
    }

    /// Rows `ids` as f32, `[ids.len(), cols]` (embedding lookup).
    fn gather(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let mut out = vec![0f32; ids.len() * self.cols];
        for (dst, &id) in out.chunks_mut(self.cols).zip(ids) {
            if id as usize >= self.rows {
                candle_core::bail!("token id {id} outside the vocabulary of {}", self.rows);
            }
            BlockQ8_0::to_float(self.row(id as usize), dst);
        }
        Tensor::from_vec(out, (ids.len(), self.cols), &Device::Cpu)
    }

    /// The whole weight as f32.
    fn dense(&self) -> candle_core::Result<Tensor> {
        let mut out = vec![0f32; self.rows * self.cols];
        BlockQ8_0::to_float(&self.blocks, &mut out);
        Tensor::from_vec(out, (self.rows, self.cols), &Device::Cpu)
    }

    /// `x · wᵀ` for the rows of `x` (`[n, cols]` as a flat slice), one pass over the
    /// weight for all of them: each weight row meets every input row while in cache.
    fn mul_rows(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len() / self.cols;
        let nb = self.cols / QK8_0;
        let mut xq = vec![BlockQ8_0::zeros(); n * nb];
        BlockQ8_0::from_float(x, &mut xq);
        let mut out = vec![0f32; n * self.rows];
        for r in 0..self.rows {
            let w = self.row(r);
            for i in 0..n {
                out[i * self.rows + r] =
                    BlockQ8_0::vec_dot(self.cols, w, &xq[i * nb..(i + 1) * nb]);
            }
        }
        out
    }
}

/// One layer's keys or values: `[1, kv_heads, capacity, head_dim]`, the first `len`
/// positions valid.
struct Cache {
    buf: Option<Tensor>,
    len: usize,
}

impl Cache {
    /// Write `x` (`[1, kv_heads, s, head_dim]`) after the valid positions; the valid
    /// positions afterwards, as a view of the buffer (no copy).
    fn append(&mut self, x: &Tensor, context: usize) -> candle_core::Result<Tensor> {
        let (b, h, s, d) = x.dims4()?;
        let need = self.len + s;
        let cap = self.buf.as_ref().map_or(0, |t| t.dim(2).unwrap_or(0));
        if need > cap {
            let new_cap = need
                .next_multiple_of(CACHE_STEP)
                .max(cap * 2)
                .min(context.max(need));
            let grown = Tensor::zeros((b, h, new_cap, d), x.dtype(), x.device())?;
            if let Some(old) = &self.buf {
                if self.len > 0 {
                    grown.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
            }
            self.buf = Some(grown);
        }
        let buf = self.buf.as_ref().expect("allocated above");
        buf.slice_set(&x.contiguous()?, 2, self.len)?;
        self.len = need;
        buf.narrow(2, 0, self.len)
    }
}

struct Layer {
    attn_norm: Tensor,
    q: Q8,
    k: Q8,
    v: Q8,
    /// q/k/v biases (qwen2).
    bias: Option<[Tensor; 3]>,
    o: Q8,
    ffn_norm: Tensor,
    gate: Q8,
    up: Q8,
    down: Q8,
    k_cache: Cache,
    v_cache: Cache,
}

/// A llama- or qwen2-family model with its KV cache.
pub struct Net {
    embed: Q8,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `None` when tied to the embedding.
    output: Option<Q8>,
    cos: Tensor,
    sin: Tensor,
    /// llama GGUFs permute q/k rows for llama.cpp's interleaved RoPE; qwen2 ones do not.
    interleaved: bool,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
    /// Longest sequence (prompt + answer) this network takes.
    pub context: usize,
    /// Positions in the cache.
    len: usize,
    /// Tensors re-encoded as Q8_0 at load.
    pub requantized: usize,
}

impl Net {
    /// Build the network `cfg` describes from the tensors of `content` (read from
    /// `reader`), re-encoding slow quant types.
    pub fn load<R: std::io::Read + std::io::Seek>(
        cfg: &ModelConfig,
        content: &Content,
        reader: &mut R,
    ) -> candle_core::Result<Self> {
        let interleaved = match cfg.architecture {
            Architecture::Llama | Architecture::Mistral => true,
            Architecture::Qwen2 => false,
            other => {
                candle_core::bail!("{other:?} is not supported by the local planner (llama, qwen2)")
            }
        };
        if cfg.qk_norm {
            candle_core::bail!("q/k norms are not supported by the local planner");
        }
        let dev = Device::Cpu;
        let mut requantized = 0;
        let mut q =
            |name: &str| -> candle_core::Result<QTensor> { content.tensor(reader, name, &dev) };
        let mut matmul = |t: QTensor| -> candle_core::Result<Q8> {
            requantized += usize::from(t.dtype() != GgmlDType::Q8_0);
            Q8::new(&t)
        };
        let embed = matmul(q("token_embd.weight")?)?;
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => Some(matmul(q("output.weight")?)?),
            false => None,
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let bias = if cfg.attention_bias {
                Some([
                    q(&p("attn_q.bias"))?.dequantize(&dev)?,
                    q(&p("attn_k.bias"))?.dequantize(&dev)?,
                    q(&p("attn_v.bias"))?.dequantize(&dev)?,
                ])
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: q(&p("attn_norm.weight"))?.dequantize(&dev)?,
                q: matmul(q(&p("attn_q.weight"))?)?,
                k: matmul(q(&p("attn_k.weight"))?)?,
                v: matmul(q(&p("attn_v.weight"))?)?,
                bias,
                o: matmul(q(&p("attn_output.weight"))?)?,
                ffn_norm: q(&p("ffn_norm.weight"))?.dequantize(&dev)?,
                gate: matmul(q(&p("ffn_gate.weight"))?)?,
                up: matmul(q(&p("ffn_up.weight"))?)?,
                down: matmul(q(&p("ffn_down.weight"))?)?,
                k_cache: Cache { buf: None, len: 0 },
                v_cache: Cache { buf: None, len: 0 },
            });
        }
        let norm = q("output_norm.weight")?.dequantize(&dev)?;
        let (cos, sin) = rope_tables(cfg.head_dim, cfg.rope_theta, cfg.max_position_embeddings)?;
        Ok(Self {
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            interleaved,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            eps: cfg.rms_norm_eps as f32,
            context: cfg.max_position_embeddings,
            len: 0,
            requantized,
        })
    }

    /// Positions held in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget every position from `len` on (no-op when the cache is shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        for l in &mut self.layers {
            l.k_cache.len = self.len;
            l.v_cache.len = self.len;
        }
    }

    /// Run `ids` after the cached positions; the logits for the token after the last.
    pub fn forward(&mut self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        let s = ids.len();
        if s == 0 || self.len + s > self.context {
            candle_core::bail!(
                "{s} tokens after {} cached do not fit the context of {}",
                self.len,
                self.context
            );
        }
        let pos = self.len;
        let mut x = self.embed.gather(ids)?.unsqueeze(0)?;
        let cos = self.cos.narrow(0, pos, s)?;
        let sin = self.sin.narrow(0, pos, s)?;
        let mask = (s > 1).then(|| causal_mask(s, pos)).transpose()?;
        for i in 0..self.layers.len() {
            let h = candle_nn::ops::rms_norm(&x, &self.layers[i].attn_norm, self.eps)?;
            let a = self.attention(i, &h, &cos, &sin, mask.as_ref())?;
            x = (x + a)?;
            let l = &self.layers[i];
            let h = candle_nn::ops::rms_norm(&x, &l.ffn_norm, self.eps)?;
            let f = (candle_nn::ops::silu(&linear(&l.gate, &h)?)? * linear(&l.up, &h)?)?;
            x = (x + linear(&l.down, &f)?)?;
        }
        self.len += s;
        let last = x.narrow(1, s - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?;
        let last = last.flatten_all()?.to_vec1::<f32>()?;
        Ok(self.output.as_ref().unwrap_or(&self.embed).mul_rows(&last))
    }

    /// [`Net::forward`] in chunks of [`PREFILL_CHUNK`] tokens.
    pub fn prefill(&mut self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        let mut logits = Vec::new();
        for chunk in ids.chunks(PREFILL_CHUNK) {
            logits = self.forward(chunk)?;
        }
        if logits.is_empty() {
            candle_core::bail!("prefill of an empty prompt");
        }
        Ok(logits)
    }

    /// Self-attention of layer `i` on the normed input `h` (`[1, s, hidden]`): the query
    /// heads sharing a K/V head are stacked as extra query rows, so K/V are never copied.
    fn attention(
        &mut self,
        i: usize,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (hd, nh, nkv) = (self.head_dim, self.heads, self.kv_heads);
        let (interleaved, context) = (self.interleaved, self.context);
        let s = h.dim(1)?;
        let l = &mut self.layers[i];
        let (mut q, mut k, mut v) = (linear(&l.q, h)?, linear(&l.k, h)?, linear(&l.v, h)?);
        if let Some([bq, bk, bv]) = &l.bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        let split = |t: Tensor, n: usize| t.reshape((1, s, n, hd))?.transpose(1, 2)?.contiguous();
        let rope = |t: &Tensor| match interleaved {
            true => candle_nn::rotary_emb::rope_i(t, cos, sin),
            false => candle_nn::rotary_emb::rope(t, cos, sin),
        };
        let q = rope(&split(q, nh)?)?;
        let k = rope(&split(k, nkv)?)?;
        let v = split(v, nkv)?;
        let k = l.k_cache.append(&k, context)?;
        let v = l.v_cache.append(&v, context)?;
        let t = k.dim(2)?;
        let group = nh / nkv;
        // [1, nh, s, hd] -> [1, nkv, group·s, hd]: rows of the heads that share K/V head j.
        let q = q.reshape((1, nkv, group * s, hd))?;
        let att = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let att = match mask {
            Some(m) => att
                .reshape((1, nkv, group, s, t))?
                .broadcast_add(m)?
                .reshape((1, nkv, group * s, t))?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?; // [1, nkv, group·s, hd]
        let y = y
            .reshape((1, nh, s, hd))?
            .transpose(1, 2)?
            .reshape((1, s, nh * hd))?;
        linear(&l.o, &y)
    }
}

/// `x · wᵀ` for `x` of shape `[1, s, in]`: Q8_0 dot products for a few rows (one
/// memory-bound pass over the weight), the dequantized weight and the f32 GEMM for a
/// prompt chunk (compute-bound; ~4x faster than the int8 dot products row by row).
fn linear(w: &Q8, x: &Tensor) -> candle_core::Result<Tensor> {
    let s = x.dim(1)?;
    if s >= DENSE_FROM {
        return x.broadcast_matmul(&w.dense()?.t()?);
    }
    let rows = x.flatten_all()?.to_vec1::<f32>()?;
    Tensor::from_vec(w.mul_rows(&rows), (1, s, w.rows), &Device::Cpu)
}

/// `[s, pos + s]`: 0 where query `i` (at position `pos + i`) may see key `j`, −∞ after.
fn causal_mask(s: usize, pos: usize) -> candle_core::Result<Tensor> {
    let t = pos + s;
    let m: Vec<f32> = (0..s)
        .flat_map(|i| (0..t).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (s, t), &Device::Cpu)
}

/// cos and sin of every position × frequency, `[positions, head_dim / 2]`.
fn rope_tables(
    head_dim: usize,
    theta: f64,
    positions: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let freqs: Vec<f64> = (0..half)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
        .collect();
    let (mut cos, mut sin) = (
        Vec::with_capacity(positions * half),
        Vec::with_capacity(positions * half),
    );
    for p in 0..positions {
        for f in &freqs {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    let dev = Device::Cpu;
    Ok((
        Tensor::from_vec(cos, (positions, half), &dev)?,
        Tensor::from_vec(sin, (positions, half), &dev)?,
    ))
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("layers", &self.layers.len())
            .field("heads", &self.heads)
            .field("kv_heads", &self.kv_heads)
            .field("context", &self.context)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}
