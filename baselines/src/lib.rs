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
//! Calibration ([`Calibration`]): by default Wanda, OWL and SparseGPT calibrate
//! **sequentially** as their reference code does (`sequential.rs`: block `i`'s
//! statistics come from inputs that passed through the already pruned blocks before
//! it; about two forward passes in all). The `-oneshot` variants (`wanda-oneshot`,
//! `owl-oneshot`, `sparsegpt-oneshot`, `wanda-2:4-oneshot`, …) collect every layer's
//! statistics in one pass of the dense model instead; they are kept for comparison.

mod calib;
mod error;
pub mod owl;
mod sequential;
pub mod sparsegpt;
mod wanda;

use std::collections::BTreeMap;
use std::str::FromStr;

use candle_core::Tensor;
use kernels::Mask;
use model::{Model, WeightOverlay};

pub use calib::{calibration_stats, calibration_windows};
pub use error::{BaselineError, Result};
pub use owl::{outlier_ratio, owl_allocation, OwlOptions};

/// How a method gathers its activation statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calibration {
    /// Block by block on the already pruned prefix, as the reference implementations.
    Sequential,
    /// One pass of the dense model for every layer at once (names ending `-oneshot`).
    OneShot,
}

/// A baseline pruning method.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Magnitude,
    /// Magnitude N:M (no calibration).
    MagnitudeNM {
        n: usize,
        m: usize,
    },
    /// Wanda per output row at the target, or N:M on Wanda scores.
    Wanda {
        nm: Option<(usize, usize)>,
        calibration: Calibration,
    },
    Owl {
        options: OwlOptions,
        calibration: Calibration,
    },
    SparseGpt {
        nm: Option<(usize, usize)>,
        calibration: Calibration,
    },
}

/// Every method `secateur compare --methods all` runs, by name.
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

/// The one-shot (dense statistics) variants of the calibrated methods.
pub const ONESHOT_METHODS: &[&str] = &["wanda-oneshot", "owl-oneshot", "sparsegpt-oneshot"];

const ONESHOT: &str = "-oneshot";

fn parse_nm(s: &str, pattern: &str) -> Result<(usize, usize)> {
    let (n, m) = pattern.split_once(':').ok_or_else(|| unknown(s))?;
    match (n.parse::<usize>(), m.parse::<usize>()) {
        (Ok(n), Ok(m)) if n > 0 && n < m => Ok((n, m)),
        _ => Err(unknown(s)),
    }
}

impl FromStr for Method {
    type Err = BaselineError;
    /// `base[-N:M][-oneshot]`, e.g. `wanda`, `sparsegpt-2:4`, `owl-oneshot`.
    fn from_str(s: &str) -> Result<Self> {
        let (rest, calibration) = match s.strip_suffix(ONESHOT) {
            Some(r) => (r, Calibration::OneShot),
            None => (s, Calibration::Sequential),
        };
        let (base, nm) = match rest.split_once('-') {
            Some((b, p)) => (b, Some(parse_nm(s, p)?)),
            None => (rest, None),
        };
        Ok(match (base, nm, calibration) {
            ("magnitude", None, Calibration::Sequential) => Self::Magnitude,
            ("magnitude", Some((n, m)), Calibration::Sequential) => Self::MagnitudeNM { n, m },
            ("wanda", nm, calibration) => Self::Wanda { nm, calibration },
            ("owl", None, calibration) => Self::Owl {
                options: OwlOptions::default(),
                calibration,
            },
            ("sparsegpt", nm, calibration) => Self::SparseGpt { nm, calibration },
            _ => return Err(unknown(s)),
        })
    }
}

fn unknown(s: &str) -> BaselineError {
    BaselineError::Argument(format!(
        "unknown pruning method `{s}` (known: {}, sparsegpt-N:M, and {})",
        ALL_METHODS.join(", "),
        ONESHOT_METHODS.join(", ")
    ))
}

impl Method {
    pub fn name(&self) -> String {
        let pattern =
            |nm: &Option<(usize, usize)>| nm.map_or(String::new(), |(n, m)| format!("-{n}:{m}"));
        let suffix = |c: &Calibration| {
            if *c == Calibration::OneShot {
                ONESHOT
            } else {
                ""
            }
        };
        match self {
            Self::Magnitude => "magnitude".into(),
            Self::MagnitudeNM { n, m } => format!("magnitude-{n}:{m}"),
            Self::Wanda { nm, calibration } => {
                format!("wanda{}{}", pattern(nm), suffix(calibration))
            }
            Self::Owl { calibration, .. } => format!("owl{}", suffix(calibration)),
            Self::SparseGpt { nm, calibration } => {
                format!("sparsegpt{}{}", pattern(nm), suffix(calibration))
            }
        }
    }

    /// Whether the method needs calibration data.
    pub fn needs_stats(&self) -> bool {
        !matches!(self, Self::Magnitude | Self::MagnitudeNM { .. })
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
                Some(w) => w.to_dtype(model.dtype())?.to_device(model.device())?,
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
    let layers = model.prunable_layers();
    match method {
        Method::Magnitude => wanda::magnitude(model, &layers, wanda::Rule::Layer(target)),
        Method::MagnitudeNM { n, m } => wanda::magnitude(model, &layers, wanda::Rule::NM(*n, *m)),
        Method::Wanda { nm, calibration } => {
            let rule = nm.map_or(wanda::Rule::Rows(target), |(n, m)| wanda::Rule::NM(n, m));
            match calibration {
                Calibration::OneShot => {
                    let stats = calibration_stats(model, windows)?;
                    wanda::wanda(model, &layers, &stats, |_| rule)
                }
                Calibration::Sequential => sequential::prune_sequential(
                    model,
                    windows,
                    sequential::Collect::SumSq,
                    |_, layers, stats| wanda::wanda(model, layers, &stats.sum_sq, |_| rule),
                ),
            }
        }
        Method::Owl {
            options,
            calibration,
        } => owl_prune(model, &layers, options, *calibration, target, windows),
        Method::SparseGpt { nm, calibration } => {
            let opts = sparsegpt::SparseGptOptions::default();
            match calibration {
                Calibration::OneShot => sparsegpt::prune_model(model, target, *nm, windows, &opts),
                Calibration::Sequential => {
                    sparsegpt::prune_sequential(model, target, *nm, windows, &opts)
                }
            }
        }
    }
}

/// OWL as in luuyin/OWL `prune_wanda_outlier`: outlier ratios from one pass of the
/// dense model (the reference's first, unpruned block-by-block pass computes exactly
/// these statistics), then Wanda per row at each block's allocated sparsity, with
/// sequential (default) or one-shot statistics.
fn owl_prune(
    model: &Model,
    layers: &[model::LayerInfo],
    options: &OwlOptions,
    calibration: Calibration,
    target: f64,
    windows: &[Vec<u32>],
) -> Result<Pruned> {
    let dense = calibration_stats(model, windows)?;
    let alloc = owl_allocation(model, &dense, target, options)?;
    let block_rule = |i: usize| wanda::Rule::Rows(alloc.blocks[i]);
    match calibration {
        Calibration::OneShot => wanda::wanda(model, layers, &dense, |name| {
            wanda::Rule::Rows(alloc.for_layer(name).unwrap_or(target))
        }),
        Calibration::Sequential => {
            drop(dense);
            sequential::prune_sequential(
                model,
                windows,
                sequential::Collect::SumSq,
                |i, layers, stats| wanda::wanda(model, layers, &stats.sum_sq, |_| block_rule(i)),
            )
        }
    }
}
