//! Prunable linear layers: dense weight + optional mask, Wanda statistics collected
//! inside the layer (as mistral.rs `imatrix.rs` does, no hooks), and per-call weight
//! overlays so several candidate masks can be evaluated on one shared model.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use candle_core::{DType, Tensor, D};

use crate::{ModelError, Result};

/// Name and shape of one prunable projection, e.g. `model.layers.3.mlp.down_proj`
/// with `out_features = hidden_size`, `in_features = intermediate_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// HF checkpoint name without the `.weight` suffix.
    pub name: String,
    pub out_features: usize,
    pub in_features: usize,
}

/// Activation statistics of one prunable linear: Σx² per input column over every
/// token seen while statistics were on. Wanda's ‖X_j‖₂ is `sum_sq.sqrt()`.
#[derive(Debug, Clone)]
pub struct ActivationStats {
    /// `[in_features]`, f64. Each forward call reduces its own tokens in the model
    /// dtype (f32), then adds that partial sum into this f64 accumulator, so long
    /// calibration runs do not lose the small columns to rounding.
    pub sum_sq: Tensor,
    /// Number of token rows accumulated into `sum_sq`.
    pub tokens: u64,
}

/// Input Gram matrix of one prunable linear: `H = Σ xᵀx` over every token seen while
/// the Gram was on (SparseGPT's layer Hessian up to the factor 2/n).
#[derive(Debug, Clone)]
pub struct ActivationGram {
    /// `[in_features, in_features]`, f64; each forward's `xᵀx` is computed in the model
    /// dtype and added here in f64, as for [`ActivationStats`].
    pub gram: Tensor,
    /// Number of token rows accumulated into `gram`.
    pub tokens: u64,
}

/// Effective (already masked) weights that replace some layers' weights for one
/// forward call only; untouched layers use the model's committed weights. This is
/// what lets K candidate masks run concurrently on one shared [`crate::Model`].
#[derive(Debug, Clone, Default)]
pub struct WeightOverlay {
    weights: HashMap<String, Tensor>,
}

impl WeightOverlay {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace layer `name`'s effective weight (`[out, in]`, model dtype) for calls
    /// that use this overlay. Returns the previous entry, if any. Names and shapes are
    /// checked when the overlay is used, against the model it is used with.
    pub fn insert(&mut self, name: impl Into<String>, effective_weight: Tensor) -> Option<Tensor> {
        self.weights.insert(name.into(), effective_weight)
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.weights.get(name)
    }

    /// Layer names this overlay replaces.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.weights.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }
}

/// Per-call switches threaded through the decoder.
#[derive(Clone, Copy)]
pub(crate) struct Pass<'a> {
    pub overlay: Option<&'a WeightOverlay>,
    pub record_stats: bool,
    /// Build a graph `backward()` can differentiate (see `crate::decoder`).
    pub grad: bool,
}

/// A committed mask and the cached effective weight `W ⊙ M` built from it once, so
/// forwards do not multiply by the mask every call.
struct Committed {
    /// `[out, in]` u8, 1 = keep.
    mask: Tensor,
    effective: Tensor,
}

struct StatsAcc {
    sum_sq: Tensor,
    tokens: u64,
}

/// A q/k/v/o/gate/up/down projection that can be pruned.
pub(crate) struct PrunableLinear {
    name: String,
    /// Dense `[out, in]` weight; never modified.
    weight: Tensor,
    bias: Option<Tensor>,
    committed: RwLock<Option<Committed>>,
    stats: Mutex<Option<StatsAcc>>,
    /// Opt-in per layer: a Gram matrix is in² numbers, too big to collect everywhere
    /// at once on large models, so callers switch it on for the layers they process.
    gram_enabled: AtomicBool,
    gram: Mutex<Option<StatsAcc>>,
}

impl PrunableLinear {
    pub fn new(name: String, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            name,
            weight,
            bias,
            committed: RwLock::new(None),
            stats: Mutex::new(None),
            gram_enabled: AtomicBool::new(false),
            gram: Mutex::new(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn info(&self) -> LayerInfo {
        let (out_features, in_features) = self.weight.dims2().unwrap_or((0, 0));
        LayerInfo {
            name: self.name.clone(),
            out_features,
            in_features,
        }
    }

    /// The dense weight, never masked.
    pub fn dense(&self) -> &Tensor {
        &self.weight
    }

    /// The committed mask (u8, 1 = keep), if any.
    pub fn mask(&self) -> Option<Tensor> {
        self.read_committed().as_ref().map(|c| c.mask.clone())
    }

    /// The weight a plain forward uses: `W ⊙ M` when a mask is committed, else `W`.
    pub fn effective(&self) -> Tensor {
        match self.read_committed().as_ref() {
            Some(c) => c.effective.clone(),
            None => self.weight.clone(),
        }
    }

    /// Commit (or with `None` clear) a mask. The mask must be `[out, in]` and hold
    /// only 0 and 1 (any numeric dtype).
    pub fn set_mask(&self, mask: Option<&Tensor>) -> Result<()> {
        let committed = match mask {
            None => None,
            Some(m) => {
                let keep = self.check_mask(m)?;
                let effective = (&self.weight * &keep)?;
                Some(Committed {
                    mask: keep.to_dtype(DType::U8)?,
                    effective,
                })
            }
        };
        *self
            .committed
            .write()
            .unwrap_or_else(PoisonError::into_inner) = committed;
        Ok(())
    }

    /// Validate a mask for this layer and return it in the weight's dtype and device.
    pub fn check_mask(&self, mask: &Tensor) -> Result<Tensor> {
        if mask.dims() != self.weight.dims() {
            return Err(ModelError::WeightShape {
                tensor: format!("mask of {}", self.name),
                expected: self.weight.dims().to_vec(),
                actual: mask.dims().to_vec(),
            });
        }
        let m = mask
            .to_device(self.weight.device())?
            .to_dtype(self.weight.dtype())?;
        // m·(m−1) is 0 exactly for m ∈ {0, 1}; NaN makes the sum NaN, which fails too.
        let off = (&m * (&m - 1.0)?)?
            .abs()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        if off != 0.0 {
            return Err(ModelError::InvalidArgument(format!(
                "mask of {} holds values other than 0 and 1",
                self.name
            )));
        }
        Ok(m)
    }

    /// `x · Wᵀ + b` with the weight chosen by the pass (overlay, else committed).
    pub fn forward(&self, x: &Tensor, pass: Pass<'_>) -> Result<Tensor> {
        if pass.record_stats {
            self.record(x)?;
        }
        if self.gram_enabled.load(Ordering::Relaxed) {
            self.record_gram(x)?;
        }
        let w = match pass.overlay.and_then(|o| o.get(&self.name)) {
            Some(w) => w.clone(),
            None => self.effective(),
        };
        let dims = x.dims().to_vec();
        let in_features = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / in_features.max(1);
        let y = x.reshape((rows, in_features))?.matmul(&w.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = w.dim(0)?;
        }
        Ok(y.reshape(out_dims)?)
    }

    /// Add Σx² per input column of `x` (`[..., in]`) to the statistics.
    fn record(&self, x: &Tensor) -> Result<()> {
        let x = x.detach();
        let rows = x.elem_count() / x.dim(D::Minus1)?.max(1);
        // A plain loop over the host copy, accumulating in f64. candle's `sum(0)`
        // (and a ones-vector matmul) over [256, 576] took ~7 ms per call here, ~40 %
        // of a SmolLM2 forward for the 7 linears of a block; this loop takes 0.25 ms.
        let cols = x.dim(D::Minus1)?;
        let values: Vec<f64> = x.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
        let mut sums = vec![0f64; cols];
        for row in values.chunks_exact(cols.max(1)) {
            for (acc, v) in sums.iter_mut().zip(row) {
                *acc += v * v;
            }
        }
        let partial = Tensor::from_vec(sums, cols, x.device())?;
        let mut acc = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        *acc = Some(match acc.take() {
            None => StatsAcc {
                sum_sq: partial,
                tokens: rows as u64,
            },
            Some(a) => StatsAcc {
                sum_sq: (a.sum_sq + partial)?,
                tokens: a.tokens + rows as u64,
            },
        });
        Ok(())
    }

    /// Add `xᵀx` of `x` (`[..., in]`) to the Gram accumulator.
    fn record_gram(&self, x: &Tensor) -> Result<()> {
        let x = x.detach().flatten_to(D::Minus2)?;
        let rows = x.dim(0)?;
        let partial = x.t()?.matmul(&x)?.to_dtype(DType::F64)?;
        let mut acc = self.gram.lock().unwrap_or_else(PoisonError::into_inner);
        *acc = Some(match acc.take() {
            None => StatsAcc {
                sum_sq: partial,
                tokens: rows as u64,
            },
            Some(a) => StatsAcc {
                sum_sq: (a.sum_sq + partial)?,
                tokens: a.tokens + rows as u64,
            },
        });
        Ok(())
    }

    /// Switch Gram collection on or off for this layer.
    pub fn set_gram_enabled(&self, enabled: bool) {
        self.gram_enabled.store(enabled, Ordering::Relaxed);
    }

    /// Remove and return the accumulated Gram matrix (`None` if no token was seen).
    pub fn take_gram(&self) -> Option<ActivationGram> {
        let mut acc = self.gram.lock().unwrap_or_else(PoisonError::into_inner);
        acc.take().map(|a| ActivationGram {
            gram: a.sum_sq,
            tokens: a.tokens,
        })
    }

    /// Remove and return the accumulated statistics (`None` if no token was seen).
    pub fn take_stats(&self) -> Option<ActivationStats> {
        let mut acc = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        acc.take().map(|a| ActivationStats {
            sum_sq: a.sum_sq,
            tokens: a.tokens,
        })
    }

    fn read_committed(&self) -> std::sync::RwLockReadGuard<'_, Option<Committed>> {
        self.committed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
