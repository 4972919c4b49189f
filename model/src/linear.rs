//! Prunable linear layers: the stored weight, the two ways of pruning it, and Wanda
//! statistics collected inside the layer (as mistral.rs `imatrix.rs` does, no hooks).
//!
//! Two pruning modes, on purpose:
//! - **in place** ([`PrunableLinear::prune_in_place`]): the stored weight becomes
//!   `W ⊙ M` and the dense values are gone; the layer keeps only the keep bits (1 bit
//!   per weight). This is how the pruning loop commits: a model holds one copy of its
//!   weights, whatever the sparsity.
//! - **non-destructive** ([`PrunableLinear::set_mask`]): a u8 mask and a cached `W ⊙ M`
//!   next to the untouched stored weight, cleared with `None`. Baselines, comparisons,
//!   export and tests use it; it costs a second copy of each masked layer.
//!
//! They compose in one order only: a non-destructive mask may be set on a layer
//! pruned in place (its effective weight is then `W_stored ⊙ M`, with `W_stored`
//! already zero where pruned), but `prune_in_place` refuses while a non-destructive
//! mask is committed, so the cached `W ⊙ M` can never go stale.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use candle_core::{DType, Tensor, D};
use kernels::Mask;

use crate::overlay::{OverlayEntry, WeightOverlay};
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

/// Per-call switches threaded through the decoder.
#[derive(Clone, Copy)]
pub(crate) struct Pass<'a> {
    pub overlay: Option<&'a WeightOverlay>,
    pub record_stats: bool,
    /// Build a graph `backward()` can differentiate (see `crate::decoder`).
    pub grad: bool,
    /// When set, every linear appends `(its name, a zero variable added to its
    /// output)`: the gradient pass reads ∂L/∂y of each projection as that variable's
    /// gradient.
    pub capture: Option<&'a OutputCapture>,
}

/// Projection outputs of one block forward, in call order (see [`Pass::capture`]).
pub(crate) type OutputCapture = std::cell::RefCell<Vec<(String, Tensor)>>;

/// A committed non-destructive mask and the cached effective weight `W ⊙ M` built
/// from it once, so forwards do not multiply by the mask every call.
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
    /// `(out_features, in_features)`.
    shape: (usize, usize),
    /// The stored `[out, in]` weight: the checkpoint's tensor (shared with the caller,
    /// never written) until the layer is pruned in place, then `W ⊙ M` in a tensor of
    /// its own. It is replaced, never written through, so a handle taken earlier
    /// (e.g. by `Model::layer_weight`) keeps the values it had.
    weight: RwLock<Tensor>,
    bias: Option<Tensor>,
    /// Keep bits of the weights pruned in place (1 = kept); `None` until the first
    /// `prune_in_place`. Monotone: each later mask is a subset of this one.
    pruned: RwLock<Option<Arc<Mask>>>,
    /// Non-destructive mask (`set_mask`).
    committed: RwLock<Option<Committed>>,
    stats: Mutex<Option<StatsAcc>>,
    /// Opt-in per layer: a Gram matrix is in² numbers, too big to collect everywhere
    /// at once on large models, so callers switch it on for the layers they process.
    gram_enabled: AtomicBool,
    gram: Mutex<Option<StatsAcc>>,
}

impl PrunableLinear {
    pub fn new(name: String, weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let shape = weight.dims2()?;
        Ok(Self {
            name,
            shape,
            weight: RwLock::new(weight),
            bias,
            pruned: RwLock::new(None),
            committed: RwLock::new(None),
            stats: Mutex::new(None),
            gram_enabled: AtomicBool::new(false),
            gram: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn info(&self) -> LayerInfo {
        LayerInfo {
            name: self.name.clone(),
            out_features: self.shape.0,
            in_features: self.shape.1,
        }
    }

    /// The stored weight: dense, or `W ⊙ M` once pruned in place. Never includes a
    /// non-destructive mask.
    pub fn stored(&self) -> Tensor {
        read(&self.weight).clone()
    }

    /// The committed non-destructive mask (u8, 1 = keep), if any.
    pub fn mask(&self) -> Option<Tensor> {
        read(&self.committed).as_ref().map(|c| c.mask.clone())
    }

    /// Keep bits of the weights pruned in place, if the layer was ever pruned in place.
    pub fn pruned_mask(&self) -> Option<Arc<Mask>> {
        read(&self.pruned).clone()
    }

    /// The weight a plain forward uses: `W_stored ⊙ M` when a non-destructive mask is
    /// committed, else the stored weight.
    pub fn effective(&self) -> Tensor {
        match read(&self.committed).as_ref() {
            Some(c) => c.effective.clone(),
            None => self.stored(),
        }
    }

    /// Set the stored weight to `W ⊙ keep` and record `keep`. The new weight is a
    /// fresh tensor (one layer's transient copy); the old one is released, so the dense
    /// values are gone unless a caller still holds them. `keep` must be `[out, in]` and,
    /// after a first call, keep no weight the previous call pruned (pruned weights stay
    /// pruned; repeating the same mask is a no-op). Refused while a non-destructive mask
    /// is committed (its cached `W ⊙ M` would go stale): clear it first.
    pub fn prune_in_place(&self, keep: &Mask) -> Result<()> {
        self.commit_pruned(keep, None)
    }

    /// Record `keep` and store `weight` (already `⊙ keep`), or `stored ⊙ keep` when
    /// `None`, under the locks, after the shape, committed-mask and monotony checks.
    fn commit_pruned(&self, keep: &Mask, weight: Option<Tensor>) -> Result<()> {
        if (keep.rows(), keep.cols()) != self.shape {
            return Err(ModelError::WeightShape {
                tensor: format!("in-place mask of {}", self.name),
                expected: vec![self.shape.0, self.shape.1],
                actual: vec![keep.rows(), keep.cols()],
            });
        }
        // Lock order: committed, pruned, weight (set_mask takes committed first too).
        let committed = self
            .committed
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if committed.is_some() {
            return Err(ModelError::InvalidArgument(format!(
                "prune_in_place on {}: a non-destructive mask is committed (set_mask); \
clear it with set_mask(None) first",
                self.name
            )));
        }
        let mut pruned = self.pruned.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(prev) = pruned.as_ref() {
            let revived = keep.count_kept_outside(prev)?;
            if revived > 0 {
                return Err(ModelError::InvalidArgument(format!(
                    "prune_in_place on {}: the mask keeps {revived} weights that are already \
pruned in place; pruned weights stay pruned (their values are gone)",
                    self.name
                )));
            }
        }
        let masked = match weight {
            Some(w) => w,
            None => keep.apply_fast(&self.stored())?,
        };
        *self.weight.write().unwrap_or_else(PoisonError::into_inner) = masked;
        *pruned = Some(Arc::new(keep.clone()));
        drop(committed);
        Ok(())
    }

    /// Set the stored weight to `weight ⊙ keep` (new values for the kept weights, e.g.
    /// an OBS repair) and record `keep`, with the rules of [`Self::prune_in_place`]:
    /// `[out, in]` on the stored weight's dtype and device, monotone against the
    /// previous keep bits, refused while a non-destructive mask is committed. NaN or
    /// infinite kept values are refused (they would poison every later forward).
    pub fn replace_pruned(&self, weight: &Tensor, keep: &Mask) -> Result<()> {
        let stored = self.stored();
        if weight.dims() != stored.dims() {
            return Err(ModelError::WeightShape {
                tensor: format!("replacement weight of {}", self.name),
                expected: stored.dims().to_vec(),
                actual: weight.dims().to_vec(),
            });
        }
        let masked = keep.apply_fast(
            &weight
                .to_device(stored.device())?
                .to_dtype(stored.dtype())?,
        )?;
        let finite = masked
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err(ModelError::InvalidArgument(format!(
                "replacement weight of {} holds NaN or infinite values",
                self.name
            )));
        }
        self.commit_pruned(keep, Some(masked))
    }

    /// Commit (or with `None` clear) a non-destructive mask. The mask must be
    /// `[out, in]` and hold only 0 and 1 (any numeric dtype).
    pub fn set_mask(&self, mask: Option<&Tensor>) -> Result<()> {
        let mut slot = self
            .committed
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *slot = match mask {
            None => None,
            Some(m) => {
                let keep = self.check_mask(m)?;
                let effective = (&self.stored() * &keep)?;
                Some(Committed {
                    mask: keep.to_dtype(DType::U8)?,
                    effective,
                })
            }
        };
        Ok(())
    }

    /// Validate a mask for this layer and return it in the weight's dtype and device.
    pub fn check_mask(&self, mask: &Tensor) -> Result<Tensor> {
        let weight = self.stored();
        if mask.dims() != weight.dims() {
            return Err(ModelError::WeightShape {
                tensor: format!("mask of {}", self.name),
                expected: weight.dims().to_vec(),
                actual: mask.dims().to_vec(),
            });
        }
        let m = mask.to_device(weight.device())?.to_dtype(weight.dtype())?;
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

    /// `x · Wᵀ + b` with the weight chosen by the pass: the overlay's entry (a full
    /// weight, or its mask applied to the stored weight for this call only), else the
    /// committed effective weight.
    pub fn forward(&self, x: &Tensor, pass: Pass<'_>) -> Result<Tensor> {
        if pass.record_stats {
            self.record(x)?;
        }
        if self.gram_enabled.load(Ordering::Relaxed) {
            self.record_gram(x)?;
        }
        let w = match pass.overlay.and_then(|o| o.entry(&self.name)) {
            Some(OverlayEntry::Weight(w)) => w.clone(),
            Some(OverlayEntry::Mask(keep)) => keep.apply_fast(&self.stored())?,
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
        let y = y.reshape(out_dims)?;
        match pass.capture {
            // backward() keeps the gradients of variables only, so the output gets a
            // zero variable added: its gradient is ∂L/∂y.
            Some(c) => {
                let probe = candle_core::Var::zeros(y.shape(), y.dtype(), y.device())?;
                let y = (y + probe.as_tensor())?;
                c.borrow_mut()
                    .push((self.name.clone(), probe.as_tensor().clone()));
                Ok(y)
            }
            None => Ok(y),
        }
    }

    /// Add Σx² per input column of `x` (`[..., in]`) to the statistics.
    fn record(&self, x: &Tensor) -> Result<()> {
        let x = x.detach();
        let rows = x.elem_count() / x.dim(D::Minus1)?.max(1);
        let cols = x.dim(D::Minus1)?;
        let partial = if x.device().is_cpu() {
            // A plain loop over the host copy, accumulating in f64. candle's `sum(0)`
            // (and a ones-vector matmul) over [256, 576] took ~7 ms per call here, ~40 %
            // of a SmolLM2 forward for the 7 linears of a block; this loop takes 0.25 ms.
            let values: Vec<f64> = x.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
            let mut sums = vec![0f64; cols];
            for row in values.chunks_exact(cols.max(1)) {
                for (acc, v) in sums.iter_mut().zip(row) {
                    *acc += v * v;
                }
            }
            Tensor::from_vec(sums, cols, x.device())?
        } else {
            // On a GPU the reduction stays on the device (squares summed in f32, the
            // running total in f64 as on the CPU): a host copy per linear per forward
            // would stall the stream every call.
            x.reshape((rows, cols))?
                .to_dtype(DType::F32)?
                .sqr()?
                .sum(0)?
                .to_dtype(DType::F64)?
        };
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
}

/// A read guard that survives a poisoned lock (the data are plain values, always
/// consistent between statements).
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}
