//! The stages of one iteration, in the order [`Iteration::run`] calls them.

use std::sync::Arc;
use std::time::Instant;

use protocol::{
    probe_due, target_reached, ActorTimings, IterationOutcome, IterationRecord, Plan, PlanRequest,
    ProbePoint, ProfileReport, Rejection, ReviewedCandidate, RunState, StopReason, StoppingPlan,
    StoredIteration, Verdict,
};
use tracing::{Instrument, Span};

use super::{decide, int, Candidate, Ctx, LoopState, Next, Stage};
use crate::checkpointer::CheckpointerMsg;
use crate::crew::{Crew, CHECKPOINTER, CRITIC, EVALUATOR, EXECUTOR, PLANNER, PROFILER};
use crate::critic::CriticMsg;
use crate::error::ActorError;
use crate::evaluator::EvaluatorMsg;
use crate::events::ProgressEvent;
use crate::executor::ExecutorMsg;
use crate::planner::PlannerMsg;
use crate::profiler::ProfilerMsg;
use crate::util::ms;

/// One iteration in progress: the run's context, the children, the loop's memory,
/// the iteration's root span and the time spent per actor so far.
pub struct Iteration<'a> {
    ctx: &'a Ctx<'a>,
    crew: &'a mut Crew,
    state: &'a mut LoopState,
    span: Span,
    t: u32,
    timings: ActorTimings,
}

impl<'a> Iteration<'a> {
    pub fn new(ctx: &'a Ctx<'a>, crew: &'a mut Crew, state: &'a mut LoopState, span: Span) -> Self {
        let t = state.iteration;
        Self {
            ctx,
            crew,
            state,
            span,
            t,
            timings: ActorTimings::default(),
        }
    }

    /// profile → plan + review → execute → evaluate → decide → probe (when due; the
    /// knowledge guard may turn a commit into a rollback) → reflect → commit or roll
    /// back.
    pub async fn run(mut self) -> Next {
        let p = &self.ctx.cfg.pruning;
        let (target, tau) = (p.target_sparsity, p.tau);
        if self.t > p.max_iterations {
            return Ok(Some(StopReason::MaxIterations));
        }
        self.set_state(RunState::Profiling).await?;
        let report = self.profile().await?;
        let mut request = self.request(&report);
        let before = request.current_sparsity;
        self.span.record("sparsity.before", before);
        if target_reached(before, target) {
            return Ok(Some(StopReason::TargetReached));
        }
        self.set_state(RunState::Planning).await?;
        let mut candidates = self.plan_and_review(&mut request).await?;
        let survivors: Vec<_> = candidates
            .iter()
            .filter_map(Candidate::surviving_plan)
            .collect();
        if !survivors.is_empty() && survivors.iter().all(|p| p.stop_pruning) {
            // No iteration is stored for this round: keep its plans and verdicts for
            // the run summary (report.json), or the plan that ended the run is lost.
            self.state.stopped_by = candidates
                .iter()
                .map(|c| StoppingPlan {
                    backend: c.reviewed.response.backend.clone(),
                    plan: c.reviewed.response.plan.clone(),
                    verdict: c.reviewed.verdict.clone(),
                })
                .collect();
            return Ok(Some(StopReason::PlannerStopped));
        }
        // No survivor, or survivors that prune nothing (a plan without decisions).
        if !candidates.iter().any(Candidate::executable) {
            self.state.rejected = request.rejections;
            return Ok(Some(StopReason::NoAcceptablePlan));
        }
        let executed = self.execute(&mut candidates, &report).await?;
        self.set_state(RunState::Evaluating).await?;
        self.ctx.faults.pause_before_eval().await;
        self.evaluate(&mut candidates, &executed).await?;
        let scores: Vec<_> = executed
            .iter()
            .filter_map(|&i| candidates[i].score().cloned())
            .collect();
        let decision = decide(&scores, before, self.state.current_ppl, tau, p.tau_span);
        let shown = &candidates[executed[decision.shown()]];
        let mut chosen = decision.committed().map(|k| &candidates[executed[k]]);
        let (outcome, plan) =
            self.outcome(shown, &scores[decision.shown()], before, chosen.is_none())?;
        let mut probe = self.probe_if_due(chosen, &outcome).await?;
        let guard = self.ctx.cfg.evaluation.probe.guard;
        let trip = match (&probe, chosen) {
            (Some(p), Some(_)) => super::probe::guard_trip(guard, &self.state.probe_points, p),
            _ => None,
        };
        let mut record = self.reflect(plan, outcome).await?;
        if let Some(trip) = trip {
            // The knowledge guard refuses what τ accepted: nothing is committed, and
            // the candidate's probe point is not the committed model's.
            chosen = None;
            probe = None;
            super::probe::roll_back_for_knowledge(&mut record, &trip, guard);
        }
        self.commit_or_roll_back(report, &candidates, chosen, record, probe)
            .await
    }

    /// Move the state machine (stored, and reported as a phase).
    async fn set_state(&mut self, run_state: RunState) -> Result<(), ActorError> {
        let status = self.state.status(run_state, None);
        self.ctx.emit(ProgressEvent::Phase {
            iteration: self.state.iteration,
            state: run_state,
        });
        let grad = self.state.raw_grad.clone();
        self.crew
            .ask(&CHECKPOINTER, &grad, |r| CheckpointerMsg::SetStatus {
                status: status.clone(),
                reply: r,
            })
            .await?
    }

    fn stage(&self, stage: Stage) -> Span {
        stage.span(&self.span, self.ctx.run_id, self.t)
    }

    /// Layer profiles of the committed model (gradients when due).
    async fn profile(&mut self) -> Result<ProfileReport, ActorError> {
        let (span, t) = (self.stage(Stage::Profile), self.t);
        let grad = self.state.raw_grad.clone();
        let (report, profile_ms) = self
            .crew
            .ask(&PROFILER, &grad, |r| ProfilerMsg::Profile {
                iteration: t,
                reply: r,
            })
            .instrument(span.clone())
            .await??;
        span.record("layers", int(report.profiles.len()));
        span.record("grad_collected", report.grad_collected);
        self.timings.profiler_ms = profile_ms;
        self.state.raw_grad = Some(report.raw_grad.clone());
        Ok(report)
    }

    /// The planner's request: profiles, target, PPLs, history and the critic's
    /// constraints.
    fn request(&self, report: &ProfileReport) -> PlanRequest {
        let cfg = self.ctx.cfg;
        let mut request = PlanRequest::new(
            self.t,
            cfg.pruning.max_iterations,
            report.profiles.clone(),
            cfg.pruning.target_sparsity,
            self.state.baseline_ppl,
            self.state.current_ppl,
            cfg.pruning.tau,
        )
        .with_tau_span(cfg.pruning.tau_span);
        request.history = self.state.history.clone();
        request.constraints = cfg
            .critic
            .rules
            .plan_constraints(&self.state.history, self.t);
        request
    }

    /// K plans, each reviewed by the critic; vetoed plans go back to the planner with
    /// the reasons, at most `critic.max_replans` times. Returns every candidate of
    /// every round in order (the last round holds the survivors, if any).
    async fn plan_and_review(
        &mut self,
        request: &mut PlanRequest,
    ) -> Result<Vec<Candidate>, ActorError> {
        let cfg = self.ctx.cfg;
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut llm_ms = 0u64;
        for round in 0..=cfg.critic.max_replans {
            let start = Instant::now();
            let req = Box::new(request.clone());
            let span = self.stage(Stage::Plan);
            let grad = self.state.raw_grad.clone();
            let responses = self
                .crew
                .ask(&PLANNER, &grad, |r| PlannerMsg::Propose {
                    request: req.clone(),
                    k: cfg.pruning.candidates,
                    reply: r,
                })
                .instrument(span.clone())
                .await??;
            let latency: u64 = responses.iter().map(|r| r.latency_ms).sum();
            llm_ms += latency;
            let backend = responses.first().map_or("", |r| r.backend.as_str());
            span.record("round", int(round));
            span.record("candidates", int(responses.len()));
            span.record("llm.latency_ms", int(latency));
            span.record("planner.backend", backend);
            self.span.record("planner.backend", backend);
            self.timings.planner_ms += ms(start);
            let start = Instant::now();
            let plans: Vec<_> = responses.iter().map(|r| r.plan.clone()).collect();
            let span = self.stage(Stage::Critique);
            let verdicts = self
                .crew
                .ask(&CRITIC, &grad, |r| CriticMsg::Review {
                    request: req.clone(),
                    plans: plans.clone(),
                    reply: r,
                })
                .instrument(span.clone())
                .await?;
            let count = |f: fn(&Verdict) -> bool| int(verdicts.iter().filter(|v| f(v)).count());
            span.record("approved", count(|v| matches!(v, Verdict::Approve)));
            span.record("amended", count(|v| matches!(v, Verdict::Amend { .. })));
            span.record("vetoed", count(|v| matches!(v, Verdict::Veto { .. })));
            self.timings.critic_ms += ms(start);
            for (response, verdict) in responses.into_iter().zip(verdicts) {
                if let Verdict::Veto { reasons } = &verdict {
                    request.rejections.push(Rejection {
                        plan: response.plan.clone(),
                        reasons: reasons.clone(),
                    });
                }
                candidates.push(Candidate {
                    reviewed: ReviewedCandidate {
                        response,
                        verdict,
                        score: None,
                    },
                    masks: None,
                    weights: None,
                });
            }
            if candidates.iter().any(|c| c.surviving_plan().is_some()) {
                break;
            }
        }
        self.span.record("llm.latency_ms", int(llm_ms));
        Ok(candidates)
    }

    /// Masks for every executable candidate; candidate ids number them in order.
    /// Returns their positions in `candidates`.
    async fn execute(
        &mut self,
        candidates: &mut [Candidate],
        report: &ProfileReport,
    ) -> Result<Vec<usize>, ActorError> {
        let executed: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].executable())
            .collect();
        let plans: Vec<_> = executed
            .iter()
            .enumerate()
            .filter_map(|(id, &i)| Some((id as u32, candidates[i].surviving_plan()?.clone())))
            .collect();
        let act = Arc::new(report.act_sum_sq.clone());
        let span = self.stage(Stage::Execute);
        let grad = self.state.raw_grad.clone();
        let (masks, exec_ms) = self
            .crew
            .ask(&EXECUTOR, &grad, |r| ExecutorMsg::Apply {
                plans: plans.clone(),
                act_sum_sq: act.clone(),
                reply: r,
            })
            .instrument(span.clone())
            .await??;
        span.record("candidates", int(masks.len()));
        span.record(
            "layers.touched",
            int(masks.iter().map(|c| c.masks.deltas.len()).sum::<usize>()),
        );
        span.record(
            "weights.pruned",
            int(masks.iter().map(|c| c.masks.newly_pruned).sum::<u64>()),
        );
        self.timings.executor_ms = exec_ms;
        for (&i, m) in executed.iter().zip(masks) {
            candidates[i].masks = Some(m.masks);
            candidates[i].weights = m.weights;
        }
        Ok(executed)
    }

    /// Held-out PPL of every executed candidate (concurrently in the Evaluator).
    async fn evaluate(
        &mut self,
        candidates: &mut [Candidate],
        executed: &[usize],
    ) -> Result<(), ActorError> {
        let masks: Vec<_> = executed
            .iter()
            .filter_map(|&i| {
                let c = &candidates[i];
                Some((c.masks.clone()?, c.weights.clone()))
            })
            .collect();
        let (span, t) = (self.stage(Stage::Evaluate), self.t);
        let grad = self.state.raw_grad.clone();
        let (scores, eval_ms) = self
            .crew
            .ask(&EVALUATOR, &grad, |r| EvaluatorMsg::Evaluate {
                iteration: t,
                candidates: masks.clone(),
                reply: r,
            })
            .instrument(span.clone())
            .await??;
        span.record("candidates", int(scores.len()));
        span.record(
            "ppl.best",
            scores.iter().map(|s| s.ppl).fold(f64::INFINITY, f64::min),
        );
        self.timings.evaluator_ms = eval_ms;
        for (&i, score) in executed.iter().zip(scores) {
            candidates[i].reviewed.score = Some(score);
        }
        Ok(())
    }

    /// What the decided candidate (the committed one, or the best rolled-back one)
    /// does to sparsity and PPL, and the plan it executed.
    fn outcome(
        &self,
        shown: &Candidate,
        score: &protocol::CandidateScore,
        before: f64,
        rolled_back: bool,
    ) -> Result<(IterationOutcome, Plan), ActorError> {
        let masks = shown
            .masks
            .as_ref()
            .ok_or(ActorError::UnknownCandidate(score.id))?;
        let outcome = IterationOutcome {
            iteration: self.t,
            sparsity_before: before,
            sparsity_after: masks.sparsity_after,
            ppl_before: self.state.current_ppl,
            ppl_after: score.ppl,
            rolled_back,
        };
        Ok((outcome, masks.plan.clone()))
    }

    /// The critic's reflection on `outcome` of the decided candidate's `plan`, as the
    /// iteration's record.
    async fn reflect(
        &mut self,
        plan: Plan,
        outcome: IterationOutcome,
    ) -> Result<IterationRecord, ActorError> {
        let start = Instant::now();
        let plan = Box::new(plan);
        let span = self.stage(Stage::Reflect);
        let grad = self.state.raw_grad.clone();
        let feedback = self
            .crew
            .ask(&CRITIC, &grad, |r| CriticMsg::Reflect {
                outcome: outcome.clone(),
                plan: plan.clone(),
                reply: r,
            })
            .instrument(span.clone())
            .await?;
        span.record("assessment", feedback.assessment.as_str());
        self.timings.critic_ms += ms(start);
        Ok(IterationRecord {
            plan: *plan,
            outcome,
            feedback,
        })
    }

    /// The knowledge probe of the model this iteration leaves committed (the chosen
    /// candidate, or the unchanged model after a rollback), when due; stored in the
    /// iteration's own transaction.
    async fn probe_if_due(
        &mut self,
        chosen: Option<&Candidate>,
        outcome: &IterationOutcome,
    ) -> Result<Option<ProbePoint>, ActorError> {
        if !(self.ctx.probe_on() && probe_due(self.ctx.cfg.evaluation.probe.every, self.t)) {
            return Ok(None);
        }
        let start = Instant::now();
        let span = self.stage(Stage::Probe);
        let (sp, ppl) = committed_point(outcome);
        let candidate = chosen.and_then(|c| Some((c.masks.as_ref()?, c.weights.clone())));
        let point = (self.t, sp, ppl);
        let p = super::probe::measure(self.crew, &self.state.raw_grad, candidate, point)
            .instrument(span.clone())
            .await?;
        span.record("accuracy", p.accuracy);
        self.timings.evaluator_ms += ms(start);
        Ok(Some(p))
    }

    /// Store the iteration (one transaction: record, every candidate, the chosen
    /// candidate's deltas, the new status), then make the chosen candidate the
    /// committed state; a rollback stores the record and changes nothing else.
    async fn commit_or_roll_back(
        mut self,
        report: ProfileReport,
        candidates: &[Candidate],
        chosen: Option<&Candidate>,
        record: IterationRecord,
        probe: Option<ProbePoint>,
    ) -> Next {
        let repaired = chosen.and_then(|c| c.weights.clone());
        let chosen = chosen.and_then(|c| c.masks.as_ref());
        let deltas = chosen.map(|c| c.deltas.clone()).unwrap_or_default();
        let mask_bytes: u64 = deltas.iter().map(|d| d.bytes.len() as u64).sum();
        let weight_bytes = repaired
            .as_ref()
            .map_or(0, |r| crate::repair::stored_bytes(r));
        // What the commit adds to the checkpoint: mask deltas and repaired weights.
        let delta_bytes = mask_bytes + weight_bytes;
        let reviewed: Vec<_> = candidates.iter().map(|c| c.reviewed.clone()).collect();
        let stored = Box::new(StoredIteration {
            record: record.clone(),
            candidates: reviewed.clone(),
            committed: chosen.map(|c| c.id),
            raw_sens: report.raw_sens,
            raw_grad: report.raw_grad,
            profiles: report.profiles,
            timings: self.timings,
            delta_bytes: mask_bytes,
            weight_bytes,
            probe: probe.clone(),
        });
        self.state.stored_iterations += 1;
        let status = self.state.status(RunState::Committed, None);
        let start = Instant::now();
        let span = self.stage(Stage::Commit);
        span.record("committed", chosen.is_some());
        span.record("layers", int(deltas.len()));
        span.record("delta_bytes", int(delta_bytes));
        let grad = self.state.raw_grad.clone();
        self.crew
            .ask(&CHECKPOINTER, &grad, |r| CheckpointerMsg::Commit {
                stored: stored.clone(),
                deltas: deltas.clone(),
                repaired: repaired.clone(),
                status: status.clone(),
                reply: r,
            })
            .instrument(span.clone())
            .await??;
        self.timings.checkpointer_ms = ms(start);
        if let Some(c) = chosen {
            let id = c.id;
            self.crew
                .ask(&EXECUTOR, &grad, |r| ExecutorMsg::Commit { id, reply: r })
                .instrument(span.clone())
                .await??;
            self.state.current_ppl = record.outcome.ppl_after;
            self.state.delta_bytes.push(delta_bytes);
        }
        let (sp, ppl) = committed_point(&record.outcome);
        span.record("sparsity", sp);
        span.record("ppl", ppl);
        self.span.record("sparsity.after", sp);
        self.span.record("ppl.after", ppl);
        self.span.record("rolled_back", record.outcome.rolled_back);
        self.state.timings.add(&self.timings);
        self.state.history.push(record.clone());
        self.state.probe_points.extend(probe);
        let target = self.ctx.cfg.pruning.target_sparsity;
        let reached = chosen.is_some() && target_reached(record.outcome.sparsity_after, target);
        self.ctx.emit(ProgressEvent::Iteration {
            record: Box::new(record),
            timings: self.timings,
            delta_bytes,
            candidates: reviewed,
        });
        self.state.iteration += 1;
        Ok(reached.then_some(StopReason::TargetReached))
    }
}

/// (sparsity, PPL) of the model an iteration leaves committed: after a commit the
/// candidate's, after a rollback the unchanged model's.
pub fn committed_point(o: &IterationOutcome) -> (f64, f64) {
    if o.rolled_back {
        (o.sparsity_before, o.ppl_before)
    } else {
        (o.sparsity_after, o.ppl_after)
    }
}
