//! One iteration of Algorithm 1 as the Supervisor drives it (DESIGN.md §3):
//! profile → plan K candidates → critic (veto → replan, bounded) → execute survivors →
//! evaluate concurrently → commit the best within τ or roll back → reflect → store.
//!
//! Order of effects on commit: the Checkpointer's transaction first, then the
//! Executor's in-memory masks. A crash between the two loses nothing: a resume rebuilds
//! the masks from the stored deltas.
//!
//! Tracing: each iteration is a root span (`iteration`, so one trace per iteration when
//! exported over OTLP) with one child span per actor message: `profile`, `plan`,
//! `critique`, `execute`, `evaluate`, `reflect`, `commit` (and `probe` when the
//! knowledge probe is due). The request to the actor is sent while its span is current,
//! and ractor's message envelope carries the sender's span (`message_span_propogation`,
//! a default feature) and runs the receiving handler inside it, so whatever the actors
//! record lands in the same trace. Attributes: run id, iteration, layer counts,
//! sparsity, PPL, LLM latency, probe accuracy.

use std::sync::Arc;
use std::time::Instant;

use protocol::{
    probe_due, target_reached, ActorTimings, CandidateMasks, CandidateScore, IterationOutcome,
    IterationRecord, Plan, PlanRequest, Rejection, ReviewedCandidate, RunState, RunStatus,
    StopReason, StoredIteration, Verdict,
};
use ractor::rpc::CallResult;
use ractor::ActorCell;
use tracing::field::Empty;
use tracing::{info_span, Instrument, Span};

use crate::checkpointer::CheckpointerMsg;
use crate::critic::CriticMsg;
use crate::evaluator::EvaluatorMsg;
use crate::executor::ExecutorMsg;
use crate::planner::PlannerMsg;
use crate::profiler::ProfilerMsg;
use crate::run::ProgressEvent;
use crate::supervisor::{ask, Child, Supervisor, SupervisorState};
use crate::util::ms;

/// What `step` says next: continue (`None`) or stop for a reason.
pub type Next = Result<Option<StopReason>, String>;

/// Run `$body` (an expression that may use `?` and `.await`) inside `$span`: the span
/// is current while the actor request is sent, so the message carries it.
macro_rules! in_span {
    ($span:expr, $body:expr) => {
        async { $body }.instrument($span.clone()).await
    };
}

/// An integer span field as i64: tracing-opentelemetry exports unsigned integers as
/// strings, signed ones as OTLP ints (what Jaeger can filter and compare).
fn int<T: TryInto<i64>>(x: T) -> i64 {
    x.try_into().unwrap_or(i64::MAX)
}

/// A child span of the iteration span `parent` for one actor message.
fn child(parent: &Span, name: &'static str, run: &str, t: u32) -> Span {
    match name {
        "profile" => info_span!(parent: parent, "profile", run.id = run, iteration = int(t),
            layers = Empty, grad_collected = Empty),
        "plan" => info_span!(parent: parent, "plan", run.id = run, iteration = int(t),
            round = Empty, candidates = Empty, llm.latency_ms = Empty, planner.backend = Empty),
        "critique" => info_span!(parent: parent, "critique", run.id = run, iteration = int(t),
            approved = Empty, amended = Empty, vetoed = Empty),
        "execute" => info_span!(parent: parent, "execute", run.id = run, iteration = int(t),
            candidates = Empty, layers.touched = Empty, weights.pruned = Empty),
        "evaluate" => info_span!(parent: parent, "evaluate", run.id = run, iteration = int(t),
            candidates = Empty, ppl.best = Empty),
        "reflect" => info_span!(parent: parent, "reflect", run.id = run, iteration = int(t),
            assessment = Empty),
        "probe" => info_span!(parent: parent, "probe", run.id = run, iteration = int(t),
            accuracy = Empty),
        _ => info_span!(parent: parent, "commit", run.id = run, iteration = int(t),
            committed = Empty, layers = Empty, delta_bytes = Empty, sparsity = Empty,
            ppl = Empty),
    }
}

/// The status record for `state` in `run_state`.
pub fn status(state: &SupervisorState, run_state: RunState, reason: Option<String>) -> RunStatus {
    RunStatus {
        state: run_state,
        iteration: state.iteration,
        stored_iterations: state.stored_iterations,
        reason,
    }
}

/// Which candidate to commit among those within τ: the lowest PPL cost per unit of
/// sparsity gained (a PPL drop costs 0), ties to the larger gain, then the lower id.
/// Cost per gain approximates the PPL at the target if costs add up, so a timid
/// candidate does not win just by pruning less. `None` when no candidate is within τ.
pub fn choose(scores: &[CandidateScore], before: f64, ppl: f64, tau: f64) -> Option<usize> {
    let key = |s: &CandidateScore| {
        let gain = (s.sparsity_after - before).max(1e-12);
        ((s.ppl - ppl) / ppl).max(0.0) / gain
    };
    scores
        .iter()
        .enumerate()
        .filter(|(_, s)| s.ppl.is_finite() && (s.ppl - ppl) / ppl <= tau)
        .min_by(|(_, a), (_, b)| {
            key(a)
                .total_cmp(&key(b))
                .then(b.sparsity_after.total_cmp(&a.sparsity_after))
                .then(a.id.cmp(&b.id))
        })
        .map(|(i, _)| i)
}

impl Supervisor {
    async fn set_state(
        &self,
        state: &mut SupervisorState,
        me: &ActorCell,
        run_state: RunState,
    ) -> Result<(), String> {
        let st = status(state, run_state, None);
        self.emit(ProgressEvent::Phase {
            iteration: state.iteration,
            state: run_state,
        });
        let none: Option<Child> = None;
        ask!(self, state, me, checkpointer, none, |r| {
            CheckpointerMsg::SetStatus {
                status: st.clone(),
                reply: r,
            }
        })?
        .map_err(|e| format!("checkpointer: {e}"))
    }

    /// Before iteration 1 of a new run: measure PPL₀ and record the run.
    pub(crate) async fn begin(&self, state: &mut SupervisorState, me: &ActorCell) -> Next {
        if let Some(mut meta) = state.new_meta.take() {
            let base = ask!(self, state, me, evaluator, Some(Child::Evaluator), |r| {
                EvaluatorMsg::Baseline { reply: r }
            })??;
            meta.baseline_ppl = base;
            state.baseline_ppl = base;
            state.current_ppl = base;
            if self.probe_on() {
                // The dense point, while the model is still dense; stored with the run.
                let p = self.probe(state, me, None, (0, 0.0, base)).await?;
                meta.baseline_probe = Some(p.clone());
                state.probe_points.push(p);
            }
            let st = status(state, RunState::Created, None);
            let none: Option<Child> = None;
            ask!(self, state, me, checkpointer, none, |r| {
                CheckpointerMsg::Create {
                    meta: Box::new(meta.clone()),
                    status: st.clone(),
                    reply: r,
                }
            })?
            .map_err(|e| format!("checkpointer: {e}"))?;
        }
        self.emit(ProgressEvent::Started {
            run_id: self.run_id.clone(),
            baseline_ppl: state.baseline_ppl,
            next_iteration: state.iteration,
        });
        Ok(None)
    }

    /// One iteration, as the root span of its own trace; see the module docs.
    pub(crate) async fn step(&self, state: &mut SupervisorState, me: &ActorCell) -> Next {
        let span = info_span!(parent: None, "iteration",
            run.id = %self.run_id, iteration = int(state.iteration), layers = int(self.engine.layers.len()),
            sparsity.before = Empty, sparsity.after = Empty, ppl.before = state.current_ppl,
            ppl.after = Empty, rolled_back = Empty, llm.latency_ms = Empty,
            planner.backend = Empty, outcome = Empty);
        let next = self
            .step_in(state, me, &span)
            .instrument(span.clone())
            .await;
        match &next {
            Ok(Some(reason)) => span.record("outcome", format!("{reason:?}").as_str()),
            Ok(None) => span.record("outcome", "continue"),
            Err(e) => span.record("outcome", format!("failed: {e}").as_str()),
        };
        next
    }

    async fn step_in(&self, state: &mut SupervisorState, me: &ActorCell, it: &Span) -> Next {
        let run = self.run_id.as_str();
        let cfg = &self.cfg;
        let (target, tau, max_it) = (
            cfg.pruning.target_sparsity,
            cfg.pruning.tau,
            cfg.pruning.max_iterations,
        );
        let t = state.iteration;
        if t > max_it {
            return Ok(Some(StopReason::MaxIterations));
        }
        let mut timings = ActorTimings::default();
        self.set_state(state, me, RunState::Profiling).await?;
        let span = child(it, "profile", run, t);
        let (report, profile_ms) = in_span!(span, {
            ask!(self, state, me, profiler, Some(Child::Profiler), |r| {
                ProfilerMsg::Profile {
                    iteration: t,
                    reply: r,
                }
            })
        })??;
        span.record("layers", int(report.profiles.len()));
        span.record("grad_collected", report.grad_collected);
        timings.profiler_ms = profile_ms;
        state.raw_grad = Some(report.raw_grad.clone());
        let mut request = PlanRequest::new(
            t,
            max_it,
            report.profiles.clone(),
            target,
            state.baseline_ppl,
            state.current_ppl,
            tau,
        );
        let before = request.current_sparsity;
        it.record("sparsity.before", before);
        if target_reached(before, target) {
            return Ok(Some(StopReason::TargetReached));
        }
        request.history = state.history.clone();
        request.constraints = cfg.critic.rules.plan_constraints(&state.history, t);

        self.set_state(state, me, RunState::Planning).await?;
        let mut reviewed: Vec<ReviewedCandidate> = Vec::new();
        let mut survivors: Vec<Plan> = Vec::new();
        let mut llm_ms = 0u64;
        for round in 0..=cfg.critic.max_replans {
            let start = Instant::now();
            let req = Box::new(request.clone());
            let span = child(it, "plan", run, t);
            let responses = in_span!(span, {
                ask!(self, state, me, planner, Some(Child::Planner), |r| {
                    PlannerMsg::Propose {
                        request: req.clone(),
                        k: cfg.pruning.candidates,
                        reply: r,
                    }
                })
            })??;
            let latency: u64 = responses.iter().map(|r| r.latency_ms).sum();
            llm_ms += latency;
            let backend = responses.first().map_or("", |r| r.backend.as_str());
            span.record("round", int(round));
            span.record("candidates", int(responses.len()));
            span.record("llm.latency_ms", int(latency));
            span.record("planner.backend", backend);
            it.record("planner.backend", backend);
            timings.planner_ms += ms(start);
            let start = Instant::now();
            let plans: Vec<Plan> = responses.iter().map(|r| r.plan.clone()).collect();
            let span = child(it, "critique", run, t);
            let verdicts = in_span!(span, {
                ask!(self, state, me, critic, Some(Child::Critic), |r| {
                    CriticMsg::Review {
                        request: req.clone(),
                        plans: plans.clone(),
                        reply: r,
                    }
                })
            })?;
            let count = |f: fn(&Verdict) -> bool| verdicts.iter().filter(|v| f(v)).count();
            span.record("approved", int(count(|v| matches!(v, Verdict::Approve))));
            span.record(
                "amended",
                int(count(|v| matches!(v, Verdict::Amend { .. }))),
            );
            span.record("vetoed", int(count(|v| matches!(v, Verdict::Veto { .. }))));
            timings.critic_ms += ms(start);
            for (resp, verdict) in responses.into_iter().zip(verdicts) {
                match &verdict {
                    Verdict::Approve => survivors.push(resp.plan.clone()),
                    Verdict::Amend { plan, .. } => survivors.push(plan.clone()),
                    Verdict::Veto { reasons } => request.rejections.push(Rejection {
                        plan: resp.plan.clone(),
                        reasons: reasons.clone(),
                    }),
                }
                reviewed.push(ReviewedCandidate {
                    response: resp,
                    verdict,
                    score: None,
                });
            }
            if !survivors.is_empty() {
                break;
            }
        }
        it.record("llm.latency_ms", int(llm_ms));
        if survivors.is_empty() {
            state.rejected = request.rejections;
            return Ok(Some(StopReason::NoAcceptablePlan));
        }
        if survivors.iter().all(|p| p.stop_pruning) {
            return Ok(Some(StopReason::PlannerStopped));
        }
        survivors.retain(|p| !p.stop_pruning && !p.layer_decisions.is_empty());

        // Execute and evaluate. Candidate ids index `survivors`.
        let plans: Vec<(u32, Plan)> = survivors
            .into_iter()
            .enumerate()
            .map(|(i, p)| (i as u32, p))
            .collect();
        let act = Arc::new(report.act_sum_sq.clone());
        let span = child(it, "execute", run, t);
        let (candidates, exec_ms) = in_span!(span, {
            ask!(self, state, me, executor, None::<Child>, |r| {
                ExecutorMsg::Apply {
                    plans: plans.clone(),
                    act_sum_sq: act.clone(),
                    reply: r,
                }
            })
        })??;
        span.record("candidates", int(candidates.len()));
        span.record(
            "layers.touched",
            int(candidates.iter().map(|c| c.deltas.len()).sum::<usize>()),
        );
        span.record(
            "weights.pruned",
            int(candidates.iter().map(|c| c.newly_pruned).sum::<u64>()),
        );
        timings.executor_ms = exec_ms;
        self.set_state(state, me, RunState::Evaluating).await?;
        if self.pause_before_eval_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.pause_before_eval_ms)).await;
        }
        let span = child(it, "evaluate", run, t);
        let (scores, eval_ms) = in_span!(span, {
            ask!(self, state, me, evaluator, Some(Child::Evaluator), |r| {
                EvaluatorMsg::Evaluate {
                    iteration: t,
                    candidates: candidates.clone(),
                    reply: r,
                }
            })
        })??;
        span.record("candidates", int(scores.len()));
        span.record(
            "ppl.best",
            scores.iter().map(|s| s.ppl).fold(f64::INFINITY, f64::min),
        );
        timings.evaluator_ms = eval_ms;
        // Attach scores to the reviewed candidates that survived (in order).
        let mut it_scores = scores.iter();
        for rc in reviewed
            .iter_mut()
            .filter(|rc| !matches!(rc.verdict, Verdict::Veto { .. }))
        {
            let plan = match &rc.verdict {
                Verdict::Amend { plan, .. } => plan,
                _ => &rc.response.plan,
            };
            if !plan.stop_pruning && !plan.layer_decisions.is_empty() {
                rc.score = it_scores.next().cloned();
            }
        }

        let chosen = choose(&scores, before, state.current_ppl, tau);
        let shown = chosen.unwrap_or_else(|| lowest_ppl(&scores));
        let cand: &CandidateMasks = &candidates[shown];
        let outcome = IterationOutcome {
            iteration: t,
            sparsity_before: before,
            sparsity_after: cand.sparsity_after,
            ppl_before: state.current_ppl,
            ppl_after: scores[shown].ppl,
            rolled_back: chosen.is_none(),
        };
        let start = Instant::now();
        let plan = Box::new(cand.plan.clone());
        let span = child(it, "reflect", run, t);
        let feedback = in_span!(span, {
            ask!(self, state, me, critic, Some(Child::Critic), |r| {
                CriticMsg::Reflect {
                    outcome: outcome.clone(),
                    plan: plan.clone(),
                    reply: r,
                }
            })
        })?;
        span.record("assessment", feedback.assessment.as_str());
        timings.critic_ms += ms(start);
        let record = IterationRecord {
            plan: cand.plan.clone(),
            outcome: outcome.clone(),
            feedback,
        };
        // The probe, when due, measures the model this iteration leaves committed (the
        // chosen candidate's masks, or the unchanged model after a rollback) and is
        // stored in the iteration's own transaction.
        let probe = if self.probe_on() && probe_due(cfg.evaluation.probe.every, t) {
            let start = Instant::now();
            let span = child(it, "probe", run, t);
            let (sp, ppl) = match chosen {
                Some(_) => (outcome.sparsity_after, outcome.ppl_after),
                None => (outcome.sparsity_before, outcome.ppl_before),
            };
            let committed = chosen.map(|i| &candidates[i]);
            let p = in_span!(span, self.probe(state, me, committed, (t, sp, ppl)).await)?;
            span.record("accuracy", p.accuracy);
            timings.evaluator_ms += ms(start);
            Some(p)
        } else {
            None
        };
        let deltas = if chosen.is_some() {
            cand.deltas.clone()
        } else {
            Vec::new()
        };
        let delta_bytes: u64 = deltas.iter().map(|d| d.bytes.len() as u64).sum();
        let stored = Box::new(StoredIteration {
            record: record.clone(),
            candidates: reviewed.clone(),
            committed: chosen.map(|i| candidates[i].id),
            raw_sens: report.raw_sens.clone(),
            raw_grad: report.raw_grad.clone(),
            profiles: report.profiles.clone(),
            timings,
            delta_bytes,
            probe: probe.clone(),
        });
        state.stored_iterations += 1;
        let st = status(state, RunState::Committed, None);
        let (none, start) = (None::<Child>, Instant::now());
        let span = child(it, "commit", run, t);
        span.record("committed", chosen.is_some());
        span.record("layers", int(deltas.len()));
        span.record("delta_bytes", int(delta_bytes));
        let ck = in_span!(span, {
            ask!(self, state, me, checkpointer, none, |r| {
                CheckpointerMsg::Commit {
                    stored: stored.clone(),
                    deltas: deltas.clone(),
                    status: st.clone(),
                    reply: r,
                }
            })
        })?;
        ck.map_err(|e| format!("checkpointer: {e}"))?;
        timings.checkpointer_ms = ms(start);
        if chosen.is_some() {
            in_span!(span, {
                ask!(self, state, me, executor, None::<Child>, |r| {
                    ExecutorMsg::Commit {
                        deltas: deltas.clone(),
                        reply: r,
                    }
                })
            })??;
            state.current_ppl = outcome.ppl_after;
            state.delta_bytes.push(delta_bytes);
        }
        let (sp, ppl) = if chosen.is_some() {
            (outcome.sparsity_after, outcome.ppl_after)
        } else {
            (outcome.sparsity_before, outcome.ppl_before)
        };
        span.record("sparsity", sp);
        span.record("ppl", ppl);
        it.record("sparsity.after", sp);
        it.record("ppl.after", ppl);
        it.record("rolled_back", outcome.rolled_back);
        state.timings.add(&timings);
        state.history.push(record.clone());
        state.probe_points.extend(probe);
        self.emit(ProgressEvent::Iteration {
            record: Box::new(record),
            timings,
            delta_bytes,
            candidates: reviewed,
        });
        state.iteration += 1;
        if chosen.is_some() && target_reached(outcome.sparsity_after, target) {
            return Ok(Some(StopReason::TargetReached));
        }
        Ok(None)
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
        assert_eq!(choose(&scores, 0.1, 10.0, 0.15), Some(1));
        // A PPL drop costs nothing; ties go to the larger gain.
        let scores = [s(0, 9.9, 0.12), s(1, 9.8, 0.15)];
        assert_eq!(choose(&scores, 0.1, 10.0, 0.15), Some(1));
        assert_eq!(choose(&[s(0, 12.0, 0.2)], 0.1, 10.0, 0.15), None);
        assert_eq!(lowest_ppl(&[s(0, 12.0, 0.2), s(1, 11.6, 0.3)]), 1);
    }
}
