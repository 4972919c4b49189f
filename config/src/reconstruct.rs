//! `[pruning.reconstruct]`: the Executor's block fit of the candidate that reaches the
//! target sparsity.

use serde::{Deserialize, Serialize};

use crate::check::Checker;

/// Block reconstruction: when a candidate reaches `pruning.target_sparsity`, the
/// Executor, after the OBS repair, fits every decoder block's kept weights with Adam so
/// that the block's output on the candidate's own inputs approaches the dense block's
/// output on the dense inputs (the calibration pool, computed once before pruning). A
/// block whose calibration error did not fall keeps its OBS weights. Ignored with
/// `pruning.repair = "none"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconstructConfig {
    /// Passes over the calibration pool per block (one Adam step per forward batch of
    /// 4 windows); 0 = off.
    pub epochs: u32,
    /// Adam's learning rate (no weight decay).
    pub lr: f64,
}

impl Default for ReconstructConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            lr: 4e-4,
        }
    }
}

impl ReconstructConfig {
    /// Whether the fit runs with `repair`: it starts from the OBS repair's weights, so
    /// the masks-only Executor (`repair = "none"`) never fits.
    pub fn enabled(&self, repair: crate::Repair) -> bool {
        self.epochs > 0 && repair == crate::Repair::Obs
    }

    pub(crate) fn check(&self, c: &mut Checker) {
        c.int_range("pruning.reconstruct.epochs", self.epochs.into(), 0, 100);
        c.open("pruning.reconstruct.lr", self.lr, 0.0, 1.0);
    }
}
