//! Matched pruning baselines, run on the same model, calibration and evaluation data
//! as the agent loop so every comparison is like for like:
//!
//! | method | what it prunes |
//! |---|---|
//! | `magnitude` | lowest \|W\| per layer |
//! | `wanda` | lowest \|W\|·‖X_j‖₂ per output row, uniform sparsity (Wanda) |
//! | `wanda-2:4`, `wanda-4:8`, `magnitude-2:4`, `magnitude-4:8` | N:M semi-structured on those scores (sparsity N/M regardless of the target) |
//! | `owl` | Wanda per row with a per-block sparsity from the block's outlier ratio (OWL) |
//! | `sparsegpt`, `sparsegpt-2:4`, `sparsegpt-4:8` | OBS pruning with the calibration Hessian and weight updates (SparseGPT) |
//!
//! Every method returns per-layer masks (1 = kept); SparseGPT also returns its
//! updated dense weights. [`Pruned::overlay`] turns either into a
//! [`model::WeightOverlay`], so the dense model is never modified.
//!
//! Statistics are collected once on the dense model (one-shot), not layer by layer
//! on the already-pruned prefix as the Wanda and SparseGPT papers do: on a CPU the
//! sequential variant costs one calibration pass per block.

mod calib;
mod error;
pub mod owl;
pub mod sparsegpt;

use std::collections::BTreeMap;
use std::str::FromStr;

use candle_core::{DType, Tensor};
use kernels::Mask;
use model::{Model, WeightOverlay};

pub use calib::{calibration_stats, calibration_windows};
pub use error::{BaselineError, Result};
pub use owl::{outlier_ratio, owl_allocation, OwlOptions};

/// Score used by the N:M variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Score {
    Magnitude,
    Wanda,
}

/// A baseline pruning method.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Magnitude,
    Wanda,
    NM { score: Score, n: usize, m: usize },
    Owl(OwlOptions),
    SparseGpt { nm: Option<(usize, usize)> },
}

/// Every method `secateur compare` runs, by name.
pub const ALL_METHODS: &[&str] = &[
    "magnitude",
    "wanda",
    "magnitude-2:4",
    "wanda-2:4",
    "magnitude-4:8",
    "wanda-4:8",
    "owl",
    "sparsegpt",
];

impl FromStr for Method {
    type Err = BaselineError;
    fn from_str(s: &str) -> Result<Self> {
        let (base, pattern) = match s.split_once('-') {
            Some((b, p)) => (b, Some(p)),
            None => (s, None),
        };
        let nm = pattern
            .map(|p| {
                let (n, m) = p.split_once(':').ok_or_else(|| unknown(s))?;
                match (n.parse::<usize>(), m.parse::<usize>()) {
                    (Ok(n), Ok(m)) if n > 0 && n < m => Ok((n, m)),
                    _ => Err(unknown(s)),
                }
            })
            .transpose()?;
        Ok(match (base, nm) {
            ("magnitude", None) => Self::Magnitude,
            ("wanda", None) => Self::Wanda,
            ("magnitude", Some((n, m))) => Self::NM {
                score: Score::Magnitude,
                n,
                m,
            },
            ("wanda", Some((n, m))) => Self::NM {
                score: Score::Wanda,
                n,
                m,
            },
            ("owl", None) => Self::Owl(OwlOptions::default()),
            ("sparsegpt", nm) => Self::SparseGpt { nm },
            _ => return Err(unknown(s)),
        })
    }
}

fn unknown(s: &str) -> BaselineError {
    BaselineError::Argument(format!(
        "unknown pruning method `{s}` (known: {}, sparsegpt-N:M)",
        ALL_METHODS.join(", ")
    ))
}

impl Method {
    pub fn name(&self) -> String {
        match self {
            Self::Magnitude => "magnitude".into(),
            Self::Wanda => "wanda".into(),
            Self::NM { score, n, m } => {
                let s = if *score == Score::Wanda {
                    "wanda"
                } else {
                    "magnitude"
                };
                format!("{s}-{n}:{m}")
            }
            Self::Owl(_) => "owl".into(),
            Self::SparseGpt { nm: None } => "sparsegpt".into(),
            Self::SparseGpt { nm: Some((n, m)) } => format!("sparsegpt-{n}:{m}"),
        }
    }

    /// Whether the method needs activation statistics (Σx²) from calibration data.
    pub fn needs_stats(&self) -> bool {
        !matches!(
            self,
            Self::Magnitude
                | Self::NM {
                    score: Score::Magnitude,
                    ..
                }
        )
    }
}

/// The result of a baseline: a mask per prunable layer and, for SparseGPT, the
/// updated weights (already zero where pruned).
#[derive(Debug, Clone, Default)]
pub struct Pruned {
    pub masks: BTreeMap<String, Mask>,
    pub weights: BTreeMap<String, Tensor>,
}

impl Pruned {
    /// Pruned fraction of all prunable weights.
    pub fn sparsity(&self) -> f64 {
        let (pruned, total) = self.masks.values().fold((0usize, 0usize), |(p, t), m| {
            (p + m.count_pruned(), t + m.len())
        });
        if total == 0 {
            0.0
        } else {
            pruned as f64 / total as f64
        }
    }

    /// The effective weights as an overlay: updated weights where the method has
    /// them, else the dense weight times the mask.
    pub fn overlay(&self, model: &Model) -> Result<WeightOverlay> {
        let mut overlay = WeightOverlay::new();
        for (name, mask) in &self.masks {
            let w = match self.weights.get(name) {
                Some(w) => w.to_dtype(model.dtype())?,
                None => {
                    let dense = model.layer_weight(name)?;
                    let keep = mask.to_tensor(dense.dtype(), dense.device())?;
                    (dense * keep)?
                }
            };
            overlay.insert(name.clone(), w);
        }
        Ok(overlay)
    }
}

/// Prune every prunable layer of `model` with `method` to `target` sparsity (N:M
/// methods have sparsity N/M whatever the target). `windows` are the calibration
/// token windows; unused by magnitude methods.
pub fn prune(model: &Model, method: &Method, target: f64, windows: &[Vec<u32>]) -> Result<Pruned> {
    if !(0.0..1.0).contains(&target) {
        return Err(BaselineError::Argument(format!(
            "target sparsity {target} must be in [0, 1)"
        )));
    }
    if let Method::SparseGpt { nm } = method {
        return sparsegpt::prune_model(
            model,
            target,
            *nm,
            windows,
            &sparsegpt::SparseGptOptions::default(),
        );
    }
    let stats = if method.needs_stats() {
        Some(calibration_stats(model, windows)?)
    } else {
        None
    };
    let layers = model.prunable_layers();
    let allocation = match method {
        Method::Owl(opts) => Some(owl_allocation(
            model,
            stats.as_ref().expect("owl needs stats"),
            target,
            opts,
        )?),
        _ => None,
    };
    let mut out = Pruned::default();
    for layer in layers {
        let w = model.layer_weight(&layer.name)?;
        let scores = match (method, &stats) {
            (
                Method::Magnitude
                | Method::NM {
                    score: Score::Magnitude,
                    ..
                },
                _,
            ) => kernels::magnitude_scores(&w)?,
            (_, Some(stats)) => {
                let sq = stats.get(&layer.name).ok_or_else(|| {
                    BaselineError::Argument(format!("no calibration statistics for {}", layer.name))
                })?;
                kernels::wanda_scores(&w, &sq.to_dtype(DType::F32)?)?
            }
            (_, None) => unreachable!("needs_stats() covers every score but magnitude"),
        };
        let ones = Mask::ones(layer.out_features, layer.in_features);
        let mask = match method {
            Method::Magnitude => kernels::prune_layer_incremental(&scores, &ones, target)?,
            Method::Wanda => kernels::prune_rows_incremental(&scores, &ones, target)?,
            Method::NM { n, m, .. } => kernels::nm_mask(&scores, *n, *m)?,
            Method::Owl(_) => {
                let s = allocation
                    .as_ref()
                    .and_then(|a| a.for_layer(&layer.name))
                    .unwrap_or(target);
                kernels::prune_rows_incremental(&scores, &ones, s)?
            }
            Method::SparseGpt { .. } => unreachable!("handled above"),
        };
        out.masks.insert(layer.name, mask);
    }
    Ok(out)
}
