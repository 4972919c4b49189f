//! The Supervisor actor: starts the six actors linked to itself ([`crate::crew`]),
//! drives Algorithm 1 one iteration per `Step` message ([`crate::pipeline`]), and
//! ends the run:
//!
//! - a stateless or re-creatable child (Profiler, Planner, Critic, Evaluator) that dies
//!   while answering is restarted and the message is sent again ([`Crew::ask`]); the
//!   Profiler is restarted with the gradients measured so far, so the run continues
//!   exactly as if nothing had happened;
//! - any error an actor replies with, a Checkpointer death, or an Executor death stops
//!   the run as `failed` with the reason — nothing half-written is ever committed.

use std::sync::Arc;

use protocol::{IterationRecord, ProbePoint, RunMeta, RunState, RunStatus, RunSummary, StopReason};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::field::Empty;
use tracing::{info_span, Instrument};

use crate::checkpointer::CheckpointerMsg;
use crate::crew::{Crew, CrewSpec, CHECKPOINTER, EVALUATOR, EXECUTOR};
use crate::error::{ActorError, FailureKind};
use crate::evaluator::EvaluatorMsg;
use crate::events::{ProgressEvent, ProgressFn, RunControl, StopRequest};
use crate::executor::ExecutorMsg;
use crate::pipeline::{int, probe, Ctx, Iteration, LoopState, Next};

/// Immutable setup of a run.
pub struct Supervisor {
    pub spec: Arc<CrewSpec>,
    pub progress: Option<ProgressFn>,
    /// Cancel / suspend requests, checked before each iteration.
    pub control: RunControl,
}

/// Where the run starts: fresh (with the meta to create) or resumed. The committed
/// masks of a resumed run are already in the model ([`crate::state`]).
pub struct StartPoint {
    /// `Some` for a new run: recorded (with the measured baseline) before iteration 1.
    pub new_meta: Option<RunMeta>,
    pub baseline_ppl: Option<f64>,
    pub history: Vec<IterationRecord>,
    pub current_ppl: Option<f64>,
    pub next_iteration: u32,
    pub raw_grad: Option<Vec<f64>>,
    pub delta_bytes: Vec<u64>,
    pub stored_iterations: u32,
    /// Knowledge-probe points stored so far (dense, then per iteration), oldest first.
    pub probe_points: Vec<ProbePoint>,
    /// The final model's probe point stored by a process that already finished this
    /// run (reused when the run finishes again at the same iteration).
    pub final_probe: Option<ProbePoint>,
    /// The loop of a resumed run had already ended this way (the process stopped
    /// during the final evaluation): it ends again at once, with the same reason.
    pub finished: Option<StopReason>,
}

/// How a run ended: its summary, and for a failure whether running it again may help.
#[derive(Debug, Clone)]
pub struct Ended {
    pub summary: RunSummary,
    pub failure_kind: Option<FailureKind>,
}

/// Messages of the Supervisor.
pub enum SupervisorMsg {
    /// Run to the end; replies with the summary (also on failure).
    Run(RpcReplyPort<Ended>),
    /// Internal: run the next iteration.
    Step,
    /// The committed masks (after the run), one per layer as deltas from all-kept.
    Masks(RpcReplyPort<Vec<protocol::LayerDelta>>),
}

/// Mutable state of the run: the children and the loop's memory.
pub struct SupervisorState {
    crew: Crew,
    state: LoopState,
    reply: Option<RpcReplyPort<Ended>>,
    finished: Option<StopReason>,
}

impl Supervisor {
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            cfg: &self.spec.cfg,
            engine: &self.spec.engine,
            run_id: &self.spec.run_id,
            faults: &self.spec.faults,
            progress: self.progress.as_ref(),
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = StartPoint;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        start: StartPoint,
    ) -> Result<Self::State, ActorProcessingErr> {
        let crew =
            Crew::start(self.spec.clone(), myself.get_cell(), start.raw_grad.clone()).await?;
        let state = LoopState {
            new_meta: start.new_meta,
            baseline_ppl: start.baseline_ppl.unwrap_or(f64::NAN),
            current_ppl: start.current_ppl.unwrap_or(f64::NAN),
            history: start.history,
            iteration: start.next_iteration,
            started_at: start.next_iteration,
            stored_iterations: start.stored_iterations,
            raw_grad: start.raw_grad,
            timings: Default::default(),
            delta_bytes: start.delta_bytes,
            probe_points: start.probe_points,
            stored_final_probe: start.final_probe,
            rejected: Vec::new(),
            stopped_by: Vec::new(),
        };
        Ok(SupervisorState {
            crew,
            state,
            reply: None,
            finished: start.finished,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let next = match msg {
            SupervisorMsg::Run(reply) => {
                st.reply = Some(reply);
                self.begin(st).await
            }
            SupervisorMsg::Step => match self.control.requested() {
                Some(StopRequest::Cancel) => Ok(Some(StopReason::Cancelled)),
                Some(StopRequest::Suspend) => Ok(Some(StopReason::Interrupted)),
                None => self.step(st).await,
            },
            SupervisorMsg::Masks(reply) => {
                let masks = st
                    .crew
                    .ask(&EXECUTOR, &None, |r| ExecutorMsg::Masks { reply: r })
                    .await;
                let _ = reply.send(masks.and_then(|m| m).unwrap_or_default());
                return Ok(());
            }
        };
        let next = match next {
            // A run that ends normally gets the final model's probe point first.
            Ok(Some(reason)) if self.ctx().probe_on() && ends_normally(reason) => {
                probe::final_point(&mut st.crew, &mut st.state)
                    .await
                    .map(|()| Some(reason))
            }
            other => other,
        };
        match next {
            Ok(None) => {
                let _ = myself.cast(SupervisorMsg::Step);
            }
            Ok(Some(reason)) => self.finish(st, reason, None).await,
            Err(failure) => self.finish(st, StopReason::Failed, Some(failure)).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Restarts happen where the failure is noticed (the pending call), so the
        // message can be re-sent; here the event is only logged. Returning Ok keeps the
        // supervisor alive (ractor's default would stop it).
        match event {
            SupervisionEvent::ActorFailed(who, err) => {
                tracing::warn!(actor = %who.get_id(), %err, "child failed")
            }
            SupervisionEvent::ActorTerminated(who, _, reason) => {
                tracing::debug!(actor = %who.get_id(), ?reason, "child stopped")
            }
            _ => {}
        }
        Ok(())
    }
}

/// The loop stopped on its own (not failed, cancelled or interrupted): the committed
/// model is the run's result.
fn ends_normally(reason: StopReason) -> bool {
    matches!(
        reason,
        StopReason::TargetReached
            | StopReason::PlannerStopped
            | StopReason::MaxIterations
            | StopReason::NoAcceptablePlan
    )
}

impl Supervisor {
    /// Before iteration 1 of a new run: measure PPL₀ (and the dense probe point) and
    /// record the run.
    async fn begin(&self, st: &mut SupervisorState) -> Next {
        let (crew, state) = (&mut st.crew, &mut st.state);
        if let Some(mut meta) = state.new_meta.take() {
            let base = crew
                .ask(&EVALUATOR, &None, |r| EvaluatorMsg::Baseline { reply: r })
                .await??;
            meta.baseline_ppl = base;
            state.baseline_ppl = base;
            state.current_ppl = base;
            if self.ctx().probe_on() {
                // The dense point, while the model is still dense; stored with the run.
                let p = probe::measure(crew, &None, None, (0, 0.0, base)).await?;
                meta.baseline_probe = Some(p.clone());
                state.probe_points.push(p);
            }
            let status = state.status(RunState::Created, None);
            crew.ask(&CHECKPOINTER, &None, |r| CheckpointerMsg::Create {
                meta: Box::new(meta.clone()),
                status: status.clone(),
                reply: r,
            })
            .await??;
        }
        self.ctx().emit(ProgressEvent::Started {
            run_id: self.spec.run_id.clone(),
            baseline_ppl: state.baseline_ppl,
            next_iteration: state.iteration,
        });
        Ok(st.finished)
    }

    /// One iteration, as the root span of its own trace; see [`crate::pipeline`].
    async fn step(&self, st: &mut SupervisorState) -> Next {
        let state = &st.state;
        let span = info_span!(parent: None, "iteration",
            run.id = %self.spec.run_id, iteration = int(state.iteration),
            layers = int(self.spec.engine.layers.len()), sparsity.before = Empty,
            sparsity.after = Empty, ppl.before = state.current_ppl, ppl.after = Empty,
            rolled_back = Empty, llm.latency_ms = Empty, planner.backend = Empty,
            outcome = Empty);
        let ctx = self.ctx();
        let next = Iteration::new(&ctx, &mut st.crew, &mut st.state, span.clone())
            .run()
            .instrument(span.clone())
            .await;
        match &next {
            Ok(Some(reason)) => span.record("outcome", format!("{reason:?}").as_str()),
            Ok(None) => span.record("outcome", "continue"),
            Err(e) => span.record("outcome", format!("failed: {e}").as_str()),
        };
        next
    }

    /// Finish the run: record the terminal state (best effort on failure), reply with
    /// the summary, stop the children. An interrupted run (shutdown) records nothing:
    /// its stored status is that of its last committed iteration, which a resume reads.
    async fn finish(
        &self,
        st: &mut SupervisorState,
        reason: StopReason,
        failure: Option<ActorError>,
    ) {
        let (crew, state) = (&mut st.crew, &mut st.state);
        let terminal = match (&failure, reason) {
            (Some(_), _) => RunState::Failed,
            (None, StopReason::Cancelled) => RunState::Cancelled,
            (None, StopReason::Interrupted) => RunState::Committed,
            _ => RunState::Finished,
        };
        let failure_text = failure.as_ref().map(ToString::to_string);
        if reason != StopReason::Interrupted {
            let note = failure_text.clone().unwrap_or_else(|| {
                // The serde name (`target_reached`), as the API and report.json spell it.
                let mut note = reason.to_string();
                if let Some(last) = state.rejected.last() {
                    note.push_str(&format!(
                        ": {} plan(s) vetoed; last: {}",
                        state.rejected.len(),
                        last.reasons.join("; ")
                    ));
                }
                note
            });
            let status = RunStatus {
                stop_reason: Some(reason),
                ..state.status(terminal, Some(note))
            };
            let _ = crew
                .ask(&CHECKPOINTER, &None, |r| CheckpointerMsg::SetStatus {
                    status: status.clone(),
                    reply: r,
                })
                .await;
        }
        let layers = crew
            .ask(&EXECUTOR, &None, |r| ExecutorMsg::Sparsity { reply: r })
            .await
            .and_then(|rows| rows)
            .unwrap_or_default();
        let pruned: f64 = layers.iter().map(|(_, s, n)| s * *n as f64).sum();
        let total: f64 = layers.iter().map(|(_, _, n)| *n as f64).sum();
        let summary = RunSummary {
            run_id: self.spec.run_id.clone(),
            state: terminal,
            stop_reason: reason,
            failure: failure_text,
            target_sparsity: self.spec.cfg.pruning.target_sparsity,
            final_sparsity: if total > 0.0 { pruned / total } else { 0.0 },
            baseline_ppl: state.baseline_ppl,
            final_ppl: state.current_ppl,
            records: state.history.clone(),
            timings: state.timings,
            layer_sparsity: layers,
            delta_bytes: state.delta_bytes.clone(),
            started_at_iteration: state.started_at,
            probe: probe::series(&self.ctx(), state),
            rejected: state.rejected.clone(),
            stopped_by: state.stopped_by.clone(),
        };
        self.ctx().emit(ProgressEvent::Finished {
            state: terminal,
            reason,
        });
        if let Some(reply) = st.reply.take() {
            let _ = reply.send(Ended {
                summary,
                failure_kind: failure.map(|f| f.kind()),
            });
        }
    }
}
