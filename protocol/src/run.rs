//! Run-level records: verdicts of the critic, iteration outcomes, the feedback the
//! planner sees next, and the run's state machine (DESIGN.md §4).

use serde::{Deserialize, Serialize};

use crate::plan::Plan;

/// Identifier of a pruning run (also its folder name under `runs/`).
pub type RunId = String;

/// The critic's decision on one candidate plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Amend { plan: Plan, reasons: Vec<String> },
    Veto { reasons: Vec<String> },
}

/// What one iteration produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationOutcome {
    pub iteration: u32,
    pub sparsity_before: f64,
    pub sparsity_after: f64,
    pub ppl_before: f64,
    pub ppl_after: f64,
    /// True when nothing was committed: every candidate exceeded τ, or the knowledge
    /// guard refused the chosen one (the feedback says which).
    pub rolled_back: bool,
}

/// The reflection the planner receives at its next iteration (paper §3.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub iteration: u32,
    pub summary: String,
    /// Qualitative assessment, e.g. "Good", "Poor - Excessive PPL degradation …".
    pub assessment: String,
}

/// The run's state machine: created → profiling → planning → evaluating →
/// committed … → finished / failed / cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Created,
    Profiling,
    Planning,
    Evaluating,
    Committed,
    Finished,
    Failed,
    Cancelled,
}

impl std::fmt::Display for RunState {
    /// The serde name (`finished`), as every JSON output spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Profiling => "profiling",
            Self::Planning => "planning",
            Self::Evaluating => "evaluating",
            Self::Committed => "committed",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        })
    }
}

impl RunState {
    /// A terminal state never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Finished | Self::Failed | Self::Cancelled)
    }
}
