//! What the planner sees and what it answers (paper §3.3, Algorithm 1).

use serde::{Deserialize, Serialize};

/// Smallest extra sparsity a plan may add to one layer in one iteration (paper: 0.01).
pub const DELTA_MIN: f64 = 0.01;
/// Largest extra sparsity a plan may add to one layer in one iteration (paper: 0.15).
pub const DELTA_MAX: f64 = 0.15;

/// One prunable layer as the planner sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerProfile {
    /// HF checkpoint name, e.g. `model.layers.3.mlp.down_proj`.
    pub name: String,
    /// z-score across layers of the Wanda sensitivity (10th percentile of |W|·‖X‖₂).
    pub z_sens: f64,
    /// z-score across layers of the mean |∇W| gradient importance.
    pub z_grad: f64,
    /// Current fraction of pruned weights in this layer, in [0, 1].
    pub sparsity: f64,
    /// Number of weights in the layer (so sparsities can be weighted globally).
    pub params: u64,
    /// Measured cost of pruning further: entry `k` is the expected rise of the
    /// per-token calibration loss (nats) if this layer alone gained δ = (k+1)·
    /// [`COST_STEP`] more sparsity — the OBS saliency (or, masks only, the Wanda key)
    /// of the weights that would go, each output row weighted by ½ × the layer's output
    /// Fisher. Non-decreasing. Empty when not measured (`pruning.layer_costs` off).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cost: Vec<f64>,
}

/// δ between two entries of [`LayerProfile::cost`].
pub const COST_STEP: f64 = 0.01;

/// Entries of a measured [`LayerProfile::cost`] curve: δ up to [`DELTA_MAX`].
pub const COST_POINTS: usize = 15;

/// One layer the planner chose to prune further.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerDecision {
    pub layer: String,
    /// Extra sparsity δ ∈ [DELTA_MIN, DELTA_MAX] for this iteration.
    pub delta: f64,
}

/// The planner's structured answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub reasoning: String,
    pub stop_pruning: bool,
    pub layer_decisions: Vec<LayerDecision>,
}

/// A plan that does not fit the schema or the model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("layer_decisions[{index}]: unknown layer `{layer}`")]
    UnknownLayer { index: usize, layer: String },
    #[error(
        "layer_decisions[{index}]: delta {delta} for `{layer}` outside [{DELTA_MIN}, {DELTA_MAX}]"
    )]
    DeltaOutOfRange {
        index: usize,
        layer: String,
        delta: f64,
    },
    #[error("layer_decisions[{index}]: layer `{layer}` appears more than once")]
    DuplicateLayer { index: usize, layer: String },
    #[error("not a valid plan document: {0}")]
    Json(String),
}

impl Plan {
    /// Parse the planner's JSON answer (strict: unknown fields are ignored, missing ones are errors).
    pub fn from_json(text: &str) -> Result<Self, PlanError> {
        serde_json::from_str(text).map_err(|e| PlanError::Json(e.to_string()))
    }

    /// Check the plan against the layers that exist. Returns every problem found,
    /// so a repair prompt can list them all at once.
    pub fn validate(&self, known_layers: &[&str]) -> Vec<PlanError> {
        let mut errors = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (index, d) in self.layer_decisions.iter().enumerate() {
            if !known_layers.contains(&d.layer.as_str()) {
                errors.push(PlanError::UnknownLayer {
                    index,
                    layer: d.layer.clone(),
                });
            }
            if !(DELTA_MIN..=DELTA_MAX).contains(&d.delta) || d.delta.is_nan() {
                errors.push(PlanError::DeltaOutOfRange {
                    index,
                    layer: d.layer.clone(),
                    delta: d.delta,
                });
            }
            if !seen.insert(d.layer.as_str()) {
                errors.push(PlanError::DuplicateLayer {
                    index,
                    layer: d.layer.clone(),
                });
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let plan = Plan::from_json(
            r#"{"reasoning":"r","stop_pruning":false,"layer_decisions":[
                {"layer":"a","delta":0.05},{"layer":"zz","delta":0.2},{"layer":"a","delta":0.01}]}"#,
        )
        .unwrap();
        let errs = plan.validate(&["a", "b"]);
        assert_eq!(
            errs,
            vec![
                PlanError::UnknownLayer {
                    index: 1,
                    layer: "zz".into()
                },
                PlanError::DeltaOutOfRange {
                    index: 1,
                    layer: "zz".into(),
                    delta: 0.2
                },
                PlanError::DuplicateLayer {
                    index: 2,
                    layer: "a".into()
                },
            ]
        );
        assert!(Plan::from_json("{\"reasoning\":1}").is_err());
    }
}
