//! One iteration of Algorithm 1 as a pipeline of stages (DESIGN.md §3), each a method
//! of [`Iteration`] in [`stages`]:
//!
//! ```text
//! profile → plan + review (veto → replan, bounded) → execute → evaluate → decide
//!         → probe (when due) → knowledge guard → reflect → commit or roll back
//! ```
//!
//! The knowledge guard (`evaluation.probe.guard`) can only turn a commit into a
//! rollback: at a probe point, a candidate τ accepted but that answers less than
//! `(1 − guard)` × the last point's accuracy is refused ([`probe::guard_trip`]).
//!
//! A plan travels as a [`Candidate`] from the critic's review to the decision: the
//! candidate carries the planner's response, the critic's verdict, the Executor's
//! masks and the Evaluator's score, so nothing is matched up again by position. Only
//! candidates whose verdict leaves an executable plan get masks; [`decide`] picks the
//! one to commit with the single rule of [`choose`].
//!
//! Order of effects on commit: the Checkpointer's transaction first, then the
//! Executor's commit of the candidate by id. A crash between the two loses nothing: a
//! resume rebuilds the masks from the stored deltas.
//!
//! Tracing: each iteration is a root span (`iteration`, so one trace per iteration when
//! exported over OTLP) with one child span per actor message, named by [`Stage`]. The
//! request to the actor is sent while its span is current, and ractor's message
//! envelope carries the sender's span (`message_span_propogation`, a default feature)
//! and runs the receiving handler inside it, so whatever the actors record lands in the
//! same trace. Attributes: run id, iteration, layer counts, sparsity, PPL, LLM
//! latency, probe accuracy.

pub mod probe;
mod stages;

use config::Config;
use protocol::{
    allowed_rise, ActorTimings, CandidateMasks, CandidateScore, IterationRecord, Plan, ProbePoint,
    Rejection, ReviewedCandidate, RunMeta, RunState, RunStatus, StopReason, StoppingPlan, Verdict,
};
use tracing::field::Empty;
use tracing::{info_span, Span};

use crate::engine::Engine;
use crate::error::ActorError;
use crate::events::{ProgressEvent, ProgressFn};
use crate::faults::Faults;
use crate::repair::RepairedWeights;

pub use stages::Iteration;

/// What an iteration says next: continue (`None`) or stop for a reason.
pub type Next = Result<Option<StopReason>, ActorError>;

/// The stages that talk to an actor, each traced as one child span of the iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Profile,
    Plan,
    Critique,
    Execute,
    Evaluate,
    Reflect,
    Probe,
    Commit,
}

impl Stage {
    /// The stage's span under the iteration span `parent`, with its attribute slots.
    pub fn span(self, parent: &Span, run: &str, t: u32) -> Span {
        let t = int(t);
        match self {
            Self::Profile => info_span!(parent: parent, "profile", run.id = run, iteration = t,
                layers = Empty, grad_collected = Empty),
            Self::Plan => info_span!(parent: parent, "plan", run.id = run, iteration = t,
                round = Empty, candidates = Empty, llm.latency_ms = Empty,
                planner.backend = Empty),
            Self::Critique => info_span!(parent: parent, "critique", run.id = run,
                iteration = t, approved = Empty, amended = Empty, vetoed = Empty),
            Self::Execute => info_span!(parent: parent, "execute", run.id = run, iteration = t,
                candidates = Empty, layers.touched = Empty, weights.pruned = Empty),
            Self::Evaluate => info_span!(parent: parent, "evaluate", run.id = run,
                iteration = t, candidates = Empty, ppl.best = Empty),
            Self::Reflect => info_span!(parent: parent, "reflect", run.id = run, iteration = t,
                assessment = Empty),
            Self::Probe => info_span!(parent: parent, "probe", run.id = run, iteration = t,
                accuracy = Empty),
            Self::Commit => info_span!(parent: parent, "commit", run.id = run, iteration = t,
                committed = Empty, layers = Empty, delta_bytes = Empty, sparsity = Empty,
                ppl = Empty),
        }
    }
}

/// An integer span field as i64: tracing-opentelemetry exports unsigned integers as
/// strings, signed ones as OTLP ints (what Jaeger can filter and compare).
pub(crate) fn int<T: TryInto<i64>>(x: T) -> i64 {
    x.try_into().unwrap_or(i64::MAX)
}

/// One plan on its way through an iteration: what the planner answered and the
/// critic said (stored as it is), then the Executor's masks and the Evaluator's score
/// once it is executed.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub reviewed: ReviewedCandidate,
    /// Set by the execute stage, for executable candidates only.
    pub masks: Option<CandidateMasks>,
    /// The repaired weights of the layers it touches, when the Executor repairs.
    pub weights: Option<RepairedWeights>,
}

impl Candidate {
    /// The plan that goes on after the critic: the planner's when approved, the
    /// critic's amendment, or none when vetoed.
    pub fn surviving_plan(&self) -> Option<&Plan> {
        match &self.reviewed.verdict {
            Verdict::Approve => Some(&self.reviewed.response.plan),
            Verdict::Amend { plan, .. } => Some(plan),
            Verdict::Veto { .. } => None,
        }
    }

    /// Survives and prunes something (a stop, or a plan without decisions, does not).
    pub fn executable(&self) -> bool {
        self.surviving_plan()
            .is_some_and(|p| !p.stop_pruning && !p.layer_decisions.is_empty())
    }

    /// The candidate's score, once evaluated.
    pub fn score(&self) -> Option<&CandidateScore> {
        self.reviewed.score.as_ref()
    }
}

/// The run's immutable context for the stages.
pub struct Ctx<'a> {
    pub cfg: &'a Config,
    pub engine: &'a Engine,
    pub run_id: &'a str,
    pub faults: &'a Faults,
    pub progress: Option<&'a ProgressFn>,
}

impl Ctx<'_> {
    pub fn emit(&self, event: ProgressEvent) {
        if let Some(p) = self.progress {
            p(&event);
        }
    }

    /// Whether the knowledge probe is configured for this run.
    pub fn probe_on(&self) -> bool {
        self.engine.probe.is_some()
    }
}

/// What the loop remembers between iterations (restored from the store on resume).
pub struct LoopState {
    pub new_meta: Option<RunMeta>,
    pub baseline_ppl: f64,
    pub current_ppl: f64,
    pub history: Vec<IterationRecord>,
    pub iteration: u32,
    pub started_at: u32,
    pub stored_iterations: u32,
    pub raw_grad: Option<Vec<f64>>,
    pub timings: ActorTimings,
    pub delta_bytes: Vec<u64>,
    /// Knowledge-probe points of this run so far, oldest first.
    pub probe_points: Vec<ProbePoint>,
    pub stored_final_probe: Option<ProbePoint>,
    /// The vetoed candidates of an iteration that found no acceptable plan (the run's
    /// last); see [`protocol::RunSummary::rejected`].
    pub rejected: Vec<Rejection>,
    /// The candidates of the iteration whose plans stopped the run, with their
    /// verdicts; see [`protocol::RunSummary::stopped_by`].
    pub stopped_by: Vec<StoppingPlan>,
}

impl LoopState {
    /// The status record for this state in `run_state`.
    pub fn status(&self, run_state: RunState, reason: Option<String>) -> RunStatus {
        RunStatus {
            state: run_state,
            iteration: self.iteration,
            stored_iterations: self.stored_iterations,
            reason,
            stop_reason: None,
        }
    }
}

/// Which candidate to commit among those within τ (per `span` of sparsity gained,
/// [`allowed_rise`]): the lowest PPL cost per unit of sparsity gained (a PPL drop costs
/// 0), ties to the larger gain, then the lower id. Cost per gain approximates the PPL
/// at the target if costs add up, so a timid candidate does not win just by pruning
/// less. `None` when no candidate is within τ.
pub fn choose(
    scores: &[CandidateScore],
    before: f64,
    ppl: f64,
    tau: f64,
    span: f64,
) -> Option<usize> {
    let key = |s: &CandidateScore| {
        let gain = (s.sparsity_after - before).max(1e-12);
        ((s.ppl - ppl) / ppl).max(0.0) / gain
    };
    let within = |s: &CandidateScore| {
        let allowed = allowed_rise(tau, span, s.sparsity_after - before);
        s.ppl.is_finite() && (s.ppl - ppl) / ppl <= allowed
    };
    scores
        .iter()
        .enumerate()
        .filter(|(_, s)| within(s))
        .min_by(|(_, a), (_, b)| {
            key(a)
                .total_cmp(&key(b))
                .then(b.sparsity_after.total_cmp(&a.sparsity_after))
                .then(a.id.cmp(&b.id))
        })
        .map(|(i, _)| i)
}

/// The outcome of the decide stage, as positions in the executed candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Commit this candidate.
    Commit(usize),
    /// Nothing within τ: roll back; the report shows the lowest-PPL candidate.
    Rollback { shown: usize },
}

impl Decision {
    /// The candidate the iteration's record describes.
    pub fn shown(self) -> usize {
        match self {
            Self::Commit(i) | Self::Rollback { shown: i } => i,
        }
    }

    pub fn committed(self) -> Option<usize> {
        match self {
            Self::Commit(i) => Some(i),
            Self::Rollback { .. } => None,
        }
    }
}

/// Decide on the executed candidates' scores (in execution order) with [`choose`].
pub fn decide(scores: &[CandidateScore], before: f64, ppl: f64, tau: f64, span: f64) -> Decision {
    match choose(scores, before, ppl, tau, span) {
        Some(i) => Decision::Commit(i),
        None => Decision::Rollback {
            shown: lowest_ppl(scores),
        },
    }
}

fn lowest_ppl(scores: &[CandidateScore]) -> usize {
    scores
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| a.ppl.total_cmp(&b.ppl))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: u32, ppl: f64, after: f64) -> CandidateScore {
        CandidateScore {
            id,
            ppl,
            sparsity_after: after,
        }
    }

    #[test]
    fn choose_prefers_cheap_gain_within_tau() {
        // Base PPL 10, sparsity 0.1, τ = 0.15.
        let scores = [
            s(0, 11.0, 0.14), // +10 % for 0.04: 2.5 per unit
            s(1, 10.2, 0.12), // +2 % for 0.02: 1.0 per unit  <- best
            s(2, 12.0, 0.20), // +20 %: beyond τ
            s(3, f64::NAN, 0.3),
        ];
        assert_eq!(choose(&scores, 0.1, 10.0, 0.15, 0.0), Some(1));
        // A PPL drop costs nothing; ties go to the larger gain.
        let scores = [s(0, 9.9, 0.12), s(1, 9.8, 0.15)];
        assert_eq!(choose(&scores, 0.1, 10.0, 0.15, 0.0), Some(1));
        assert_eq!(choose(&[s(0, 12.0, 0.2)], 0.1, 10.0, 0.15, 0.0), None);
        // With τ per 0.02 of sparsity, +20 % for a 0.1 gain is within (1.15^5 - 1 = 101 %),
        // +20 % for a 0.01 gain is not (steps up to the span get τ itself).
        assert_eq!(choose(&[s(0, 12.0, 0.2)], 0.1, 10.0, 0.15, 0.02), Some(0));
        assert_eq!(choose(&[s(0, 12.0, 0.11)], 0.1, 10.0, 0.15, 0.02), None);
        assert_eq!(choose(&[s(0, 21.0, 0.2)], 0.1, 10.0, 0.15, 0.02), None);
        assert_eq!(lowest_ppl(&[s(0, 12.0, 0.2), s(1, 11.6, 0.3)]), 1);
    }

    #[test]
    fn decide_commits_the_chosen_or_shows_the_lowest_ppl_on_rollback() {
        let scores = [s(0, 12.0, 0.2), s(1, 11.6, 0.3)];
        let d = decide(&scores, 0.1, 10.0, 0.15, 0.0);
        assert_eq!(d, Decision::Rollback { shown: 1 });
        assert_eq!((d.shown(), d.committed()), (1, None));
        let d = decide(&[s(0, 10.5, 0.2)], 0.1, 10.0, 0.15, 0.0);
        assert_eq!((d.shown(), d.committed()), (0, Some(0)));
    }
}
