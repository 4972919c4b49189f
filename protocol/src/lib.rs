//! Plain serde data shared by every secateur crate: the per-layer profile the
//! planner sees, the plan it answers with (and its JSON schema), the critic's
//! verdicts, iteration outcomes, feedback, and the run's state machine.
//!
//! No behaviour lives here beyond validation of shapes and ranges, so every actor
//! (and a remote client of the daemon) can speak it without pulling in tensors.

pub mod masks_file;
pub mod plan;
pub mod plan_schema;
pub mod probe;
pub mod request;
pub mod run;

pub use plan::{
    LayerDecision, LayerProfile, Plan, PlanError, COST_POINTS, COST_STEP, DELTA_MAX, DELTA_MIN,
};
pub use plan_schema::{plan_json_schema, PlanSchema, DECISION_KEYS, PLAN_KEYS};
pub use probe::{probe_due, ProbePoint, ProbeSeries};
pub use request::{
    allowed_rise, global_sparsity, projected_sparsity, recent_rollbacks, recently_rolled_back,
    target_reached, IterationRecord, PlanConstraints, PlanRequest, PlanResponse, Rejection,
    StoppingPlan, SPARSITY_EPS, TARGET_TOLERANCE,
};
pub use run::{Feedback, IterationOutcome, RunId, RunState, Verdict};

pub mod actor_msgs;
pub use actor_msgs::{
    ActorTimings, CandidateId, CandidateMasks, CandidateScore, LayerDelta, ProfileReport,
    ReviewedCandidate, RunMeta, RunStatus, RunSummary, StopReason, StoredIteration,
};
