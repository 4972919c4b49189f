//! The JSON the daemon speaks, shared by the server ([`crate::api`]) and the client
//! ([`crate::client`]) so the two cannot drift apart. Plain serde data.

use protocol::{ActorTimings, IterationRecord, ReviewedCandidate, RunState, StopReason};
use serde::{Deserialize, Serialize};

/// Where a submitted run is in the daemon's life cycle. `running` covers the actor
/// states (profiling … committed); those appear as [`RunView::phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Finished,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Finished | Self::Failed | Self::Cancelled)
    }
}

/// `POST /runs`: a run's configuration as a TOML document (every field optional, the
/// `default` preset otherwise), or the name of a shipped preset.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_toml: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
}

/// One run as listed and as streamed in `status` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    pub id: String,
    pub state: JobState,
    /// The loop's state while running (`profiling`, `planning`, …).
    pub phase: Option<RunState>,
    /// Iteration in progress or last finished.
    pub iteration: u32,
    /// Iterations stored (committed or rolled back).
    pub iterations: u32,
    pub submitted_unix: u64,
    pub started_unix: Option<u64>,
    pub finished_unix: Option<u64>,
    /// Why the run failed, was cancelled or stopped.
    pub reason: Option<String>,
    pub stop_reason: Option<StopReason>,
    /// A cancel was asked for and takes effect after the iteration in progress.
    pub cancel_requested: bool,
    /// A failed run may succeed when submitted again (its planner service failed:
    /// HTTP 429, a timeout, an unusable answer).
    #[serde(default)]
    pub retryable: bool,
    /// Times the run was resumed after a daemon restart.
    pub resumes: u32,
    pub target_sparsity: f64,
    /// Sparsity of the committed masks (last committed iteration).
    pub sparsity: f64,
    pub baseline_ppl: Option<f64>,
    /// In-loop PPL of the last committed state.
    pub ppl: Option<f64>,
    /// Dense and pruned PPL on `[evaluation.final]`, once finished.
    pub final_ppl: Option<FinalPpl>,
}

/// Final perplexity of a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalPpl {
    pub dense: f64,
    pub pruned: f64,
    pub tokens_scored: usize,
}

/// Which backend answered one planning call, and how long it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannerCall {
    /// E.g. `openai`, or `heuristic (fallback; openai failed: …)` when the fallback answered.
    pub backend: String,
    pub model: Option<String>,
    pub latency_ms: u64,
    pub fallback: bool,
}

/// One stored iteration as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryItem {
    pub iteration: u32,
    /// Plan, outcome and the critic's feedback, exactly as stored.
    pub record: IterationRecord,
    /// Milliseconds per actor. Read back from the database after a restart,
    /// `checkpointer_ms` is 0: a commit cannot store its own duration.
    pub timings: ActorTimings,
    pub delta_bytes: u64,
    /// One entry per candidate plan the planner produced (all rounds).
    pub planner: Vec<PlannerCall>,
    /// The iteration's trace id (32 hex digits) when traces are exported: open it in
    /// Jaeger. Absent for iterations read back from the database after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl HistoryItem {
    pub fn new(
        record: IterationRecord,
        timings: ActorTimings,
        delta_bytes: u64,
        candidates: &[ReviewedCandidate],
    ) -> Self {
        Self {
            iteration: record.outcome.iteration,
            record,
            timings,
            delta_bytes,
            planner: candidates
                .iter()
                .map(|c| PlannerCall {
                    backend: c.response.backend.clone(),
                    model: c.response.model.clone(),
                    latency_ms: c.response.latency_ms,
                    fallback: c.response.backend.contains("(fallback;"),
                })
                .collect(),
            trace_id: None,
        }
    }
}

/// `GET /runs/{id}`: the run, its configuration and its iteration history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunView,
    /// The validated configuration the run uses (paths resolved; no secrets: API keys
    /// are only ever named by their environment variable).
    pub config_toml: String,
    pub history: Vec<HistoryItem>,
}

/// `GET /runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunList {
    pub runs: Vec<RunView>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub uptime_s: u64,
    pub queued: usize,
    pub running: usize,
    pub concurrency: usize,
}

/// Every error response: a message and, for invalid configs, one line per problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}
