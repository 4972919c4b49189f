//! Data the pruning actors hand each other inside one run (DESIGN.md §3): profiler
//! reports, candidate mask deltas, evaluation scores, what the checkpointer stores per
//! iteration, per-actor timings and the run's summary.
//!
//! Tensors never cross actors: activation statistics travel as `Vec<f32>` and masks as
//! the compact byte form of a mask delta (kernels' `MaskDelta::to_bytes`), so every
//! message here is plain serde data that can also be stored or sent over the wire.

use serde::{Deserialize, Serialize};

use crate::plan::{LayerProfile, Plan};
use crate::probe::{ProbePoint, ProbeSeries};
use crate::request::{IterationRecord, PlanResponse, Rejection};
use crate::run::{RunId, RunState, Verdict};

/// Index of a candidate plan within one iteration (0-based, in the planner's order).
pub type CandidateId = u32;

/// What the Profiler measured at the start of an iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileReport {
    pub iteration: u32,
    /// Every prunable layer, in model order.
    pub profiles: Vec<LayerProfile>,
    /// Σx² per input column of each layer (same order as `profiles`); Wanda's ‖X_j‖₂ is
    /// its square root. The Executor scores weights with it.
    pub act_sum_sq: Vec<Vec<f32>>,
    /// Raw Wanda sensitivity (percentile of active scores) per layer, before z-scoring.
    pub raw_sens: Vec<f64>,
    /// Raw gradient importance (mean |∇W| over active weights) per layer, from the last
    /// iteration that collected gradients; all zero when gradients are disabled.
    pub raw_grad: Vec<f64>,
    /// True when gradients were recollected this iteration.
    pub grad_collected: bool,
}

/// The newly pruned weights of one layer, as `MaskDelta::to_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDelta {
    pub layer: String,
    #[serde(with = "bytes_as_hex")]
    pub bytes: Vec<u8>,
}

/// A candidate plan applied to the committed masks: only the touched layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateMasks {
    pub id: CandidateId,
    pub plan: Plan,
    pub deltas: Vec<LayerDelta>,
    /// Weights newly pruned, over all touched layers.
    pub newly_pruned: u64,
    /// Global sparsity (pruned / prunable weights) the candidate reaches, counted on masks.
    pub sparsity_after: f64,
}

/// The Evaluator's verdict on one candidate: in-loop perplexity on the held-out slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateScore {
    pub id: CandidateId,
    pub ppl: f64,
    pub sparsity_after: f64,
}

/// Milliseconds spent in each actor (summed over an iteration or a run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ActorTimings {
    pub profiler_ms: u64,
    pub planner_ms: u64,
    pub critic_ms: u64,
    pub executor_ms: u64,
    pub evaluator_ms: u64,
    pub checkpointer_ms: u64,
}

impl ActorTimings {
    /// Field-wise sum.
    pub fn add(&mut self, o: &ActorTimings) {
        self.profiler_ms += o.profiler_ms;
        self.planner_ms += o.planner_ms;
        self.critic_ms += o.critic_ms;
        self.executor_ms += o.executor_ms;
        self.evaluator_ms += o.evaluator_ms;
        self.checkpointer_ms += o.checkpointer_ms;
    }

    pub fn total_ms(&self) -> u64 {
        self.profiler_ms
            + self.planner_ms
            + self.critic_ms
            + self.executor_ms
            + self.evaluator_ms
            + self.checkpointer_ms
    }
}

/// One reviewed candidate: the plan as proposed, the critic's verdict(s) and, when it
/// was evaluated, its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewedCandidate {
    pub response: PlanResponse,
    pub verdict: Verdict,
    pub score: Option<CandidateScore>,
}

/// Everything the Checkpointer stores for one finished iteration (committed or rolled
/// back). The mask delta of a committed iteration is stored next to it, per layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredIteration {
    pub record: IterationRecord,
    /// Every candidate of every planning round of this iteration, in order (vetoed
    /// rounds first), with the prompts and raw responses.
    pub candidates: Vec<ReviewedCandidate>,
    /// The candidate whose delta was committed; `None` on rollback or stop.
    pub committed: Option<CandidateId>,
    /// The profiler's raw statistics, so a resumed run can reuse gradients collected
    /// before the crash and stay identical to an uninterrupted run.
    pub raw_sens: Vec<f64>,
    pub raw_grad: Vec<f64>,
    /// The profiles the planner saw (the profiler's output this iteration).
    pub profiles: Vec<LayerProfile>,
    pub timings: ActorTimings,
    /// Bytes of mask delta stored for this iteration (0 on rollback).
    pub delta_bytes: u64,
    /// Bytes of repaired weights stored beside the database for this iteration
    /// (`pruning.repair = "obs"`; 0 on rollback, without repair, and in records written
    /// before the repair existed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weight_bytes: u64,
    /// The knowledge probe of the model committed after this iteration, when the
    /// probe was due (`evaluation.probe.every`). Stored in the iteration's
    /// transaction, so a resumed run keeps it; absent in records written before the
    /// probe existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbePoint>,
}

/// The immutable description of a run, stored when it is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    pub run_id: RunId,
    /// The full configuration as TOML (a resumed run uses exactly this).
    pub config_toml: String,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    /// PPL₀ of the dense model on the held-out slice; NaN (stored as JSON `null`)
    /// while a new run is recorded but its baseline not yet measured.
    #[serde(deserialize_with = "nan_from_null")]
    pub baseline_ppl: f64,
    /// Prunable layers in model order, with their shapes `[out, in]`.
    pub layers: Vec<(String, [usize; 2])>,
    /// The knowledge probe of the dense model (iteration 0), measured with PPL₀ when
    /// the probe is on. Absent in runs stored before the probe existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_probe: Option<ProbePoint>,
}

/// JSON has no NaN: serde_json writes it as `null`, read back here as NaN.
fn nan_from_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The run's position in its state machine, rewritten at each step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub state: RunState,
    /// Iteration currently running or last finished.
    pub iteration: u32,
    /// Iterations stored so far (committed or rolled back).
    pub stored_iterations: u32,
    /// Why a run failed or stopped, when it did.
    pub reason: Option<String>,
    /// How the loop ended, once it did (a resume of a finished run keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    TargetReached,
    PlannerStopped,
    MaxIterations,
    /// Every candidate was vetoed `max_replans + 1` times.
    NoAcceptablePlan,
    Failed,
    /// A user cancelled the run (the daemon's cancel); terminal, state `cancelled`.
    Cancelled,
    /// The process is shutting down: the loop stopped between iterations without a
    /// terminal state, so a resume continues from the last committed iteration.
    Interrupted,
}

impl std::fmt::Display for StopReason {
    /// The serde name (`target_reached`), as every JSON output spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TargetReached => "target_reached",
            Self::PlannerStopped => "planner_stopped",
            Self::MaxIterations => "max_iterations",
            Self::NoAcceptablePlan => "no_acceptable_plan",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        })
    }
}

/// What `run_pruning` returns: the run's outcome and its iteration memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: RunId,
    pub state: RunState,
    pub stop_reason: StopReason,
    pub failure: Option<String>,
    pub target_sparsity: f64,
    /// Sparsity counted on the committed masks (pruned / prunable weights).
    pub final_sparsity: f64,
    pub baseline_ppl: f64,
    /// In-loop PPL of the last committed state.
    pub final_ppl: f64,
    pub records: Vec<IterationRecord>,
    /// Summed over the iterations this process ran (a resumed run counts from resume).
    pub timings: ActorTimings,
    /// Per layer, in model order: (name, final sparsity, params).
    pub layer_sparsity: Vec<(String, f64, u64)>,
    /// Mask-delta bytes stored per committed iteration, in order.
    pub delta_bytes: Vec<u64>,
    /// Iteration this process started at (1 for a new run).
    pub started_at_iteration: u32,
    /// The knowledge probe's points over the whole run (also those measured before a
    /// resume); `None` when the probe is off.
    #[serde(default)]
    pub probe: Option<ProbeSeries>,
    /// When the run stopped on `NoAcceptablePlan`: every candidate of that iteration's
    /// planning rounds with the critic's reasons. Nothing else records them (no
    /// iteration was committed or stored), and they say why the run ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<Rejection>,
    /// When the run stopped on `PlannerStopped`: every candidate of that iteration's
    /// planning rounds with the critic's verdict. Like `rejected`, nothing else records
    /// them (a run that stopped at its first plan has no iterations at all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped_by: Vec<crate::StoppingPlan>,
}

impl RunSummary {
    pub fn iterations(&self) -> usize {
        self.records.len()
    }

    pub fn rollbacks(&self) -> usize {
        self.records
            .iter()
            .filter(|r| r.outcome.rolled_back)
            .count()
    }

    /// Iterations whose plan was committed (gained sparsity, not rolled back).
    pub fn successful(&self) -> usize {
        self.records
            .iter()
            .filter(|r| !r.outcome.rolled_back && r.outcome.sparsity_gain() > 0.0)
            .count()
    }
}

/// Byte vectors as lowercase hex in JSON (compact enough for stored records, readable
/// in a debugger); the Checkpointer stores deltas as raw bytes, not through this.
mod bytes_as_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd number of hex digits"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(&text[i..i + 2], 16)
                    .map_err(|_| serde::de::Error::custom("invalid hex digit"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_delta_round_trips_as_hex() {
        let d = LayerDelta {
            layer: "a".into(),
            bytes: vec![0, 1, 0xab, 0xff],
        };
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, r#"{"layer":"a","bytes":"0001abff"}"#);
        assert_eq!(serde_json::from_str::<LayerDelta>(&json).unwrap(), d);
        assert!(serde_json::from_str::<LayerDelta>(r#"{"layer":"a","bytes":"0g"}"#).is_err());
        assert!(serde_json::from_str::<LayerDelta>(r#"{"layer":"a","bytes":"abc"}"#).is_err());
    }

    #[test]
    fn timings_add_up() {
        let mut t = ActorTimings {
            profiler_ms: 1,
            evaluator_ms: 2,
            ..Default::default()
        };
        t.add(&ActorTimings {
            profiler_ms: 3,
            checkpointer_ms: 4,
            ..Default::default()
        });
        assert_eq!((t.profiler_ms, t.total_ms()), (4, 10));
    }
}

#[cfg(test)]
mod stop_reason_tests {
    use super::StopReason;

    #[test]
    fn display_is_the_serde_name() {
        for r in [
            StopReason::TargetReached,
            StopReason::PlannerStopped,
            StopReason::MaxIterations,
            StopReason::NoAcceptablePlan,
            StopReason::Failed,
            StopReason::Cancelled,
            StopReason::Interrupted,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.to_string());
        }
    }
}

#[cfg(test)]
mod run_meta_tests {
    use super::RunMeta;

    #[test]
    fn a_meta_without_baseline_round_trips() {
        let meta = RunMeta {
            run_id: "r".into(),
            config_toml: String::new(),
            created_unix: 0,
            baseline_ppl: f64::NAN,
            layers: vec![("a".into(), [2, 3])],
            baseline_probe: None,
        };
        let json = serde_json::to_string(&meta).unwrap();
        assert!(json.contains("\"baseline_ppl\":null"), "{json}");
        let back: RunMeta = serde_json::from_str(&json).unwrap();
        assert!(back.baseline_ppl.is_nan());
        assert_eq!(back.layers, meta.layers);
        let measured: RunMeta = serde_json::from_str(&json.replace("null", "12.5")).unwrap();
        assert_eq!(measured.baseline_ppl, 12.5);
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
