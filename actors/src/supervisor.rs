//! The Supervisor actor: starts the six actors linked to itself, drives Algorithm 1 one
//! iteration per `Step` message ([`crate::iteration`]), and handles failures:
//!
//! - a stateless or re-creatable child (Profiler, Planner, Critic, Evaluator) that dies
//!   while answering is restarted and the message is sent again (at most
//!   [`MAX_RESTARTS`] times per message); the Profiler is restarted with the gradients
//!   measured so far, so the run continues exactly as if nothing had happened;
//! - a Checkpointer error or death, or an Executor death (it owns the committed masks),
//!   stops the run as `failed` with the reason — nothing half-written is ever committed.

use std::path::PathBuf;
use std::sync::Arc;

use config::Config;
use kernels::Mask;
use llm::PlannerBackend;
use protocol::{
    ActorTimings, IterationRecord, ProbePoint, Rejection, RunMeta, RunState, RunSummary, StopReason,
};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::checkpointer::{Checkpointer, CheckpointerMsg};
use crate::critic::{Critic, CriticMsg};
use crate::engine::Engine;
use crate::evaluator::{Evaluator, EvaluatorMsg};
use crate::executor::{Executor, ExecutorMsg};
use crate::planner::{Planner, PlannerMsg};
use crate::profiler::{Profiler, ProfilerMsg};
use crate::run::ProgressFn;
use crate::util::Faults;

/// Restarts of one child per message before the run fails.
pub const MAX_RESTARTS: usize = 2;

/// Immutable setup of a run.
pub struct Supervisor {
    pub cfg: Config,
    pub engine: Arc<Engine>,
    pub backend: Arc<dyn PlannerBackend>,
    pub db_dir: PathBuf,
    pub run_id: String,
    pub faults: Faults,
    pub progress: Option<ProgressFn>,
    pub workers: usize,
    /// Test hook (see `RunOptions::pause_before_eval_ms`).
    pub pause_before_eval_ms: u64,
    /// Cancel / suspend requests, checked before each iteration.
    pub control: crate::run::RunControl,
}

/// Where the run starts: fresh (with the meta to create) or resumed.
pub struct StartPoint {
    /// `Some` for a new run: recorded (with the measured baseline) before iteration 1.
    pub new_meta: Option<RunMeta>,
    pub baseline_ppl: Option<f64>,
    pub history: Vec<IterationRecord>,
    pub current_ppl: Option<f64>,
    pub next_iteration: u32,
    pub raw_grad: Option<Vec<f64>>,
    pub masks: Option<Vec<Mask>>,
    pub delta_bytes: Vec<u64>,
    pub stored_iterations: u32,
    /// Knowledge-probe points stored so far (dense, then per iteration), oldest first.
    pub probe_points: Vec<ProbePoint>,
    /// The final model's probe point stored by a process that already finished this
    /// run (reused when the run finishes again at the same iteration).
    pub final_probe: Option<ProbePoint>,
}

/// Messages of the Supervisor.
pub enum SupervisorMsg {
    /// Run to the end; replies with the summary (also on failure).
    Run(RpcReplyPort<RunSummary>),
    /// Internal: run the next iteration.
    Step,
    /// The committed masks (after the run), one per layer as deltas from all-kept.
    Masks(RpcReplyPort<Vec<protocol::LayerDelta>>),
}

/// The live children.
pub struct Children {
    pub profiler: ActorRef<ProfilerMsg>,
    pub planner: ActorRef<PlannerMsg>,
    pub critic: ActorRef<CriticMsg>,
    pub executor: ActorRef<ExecutorMsg>,
    pub evaluator: ActorRef<EvaluatorMsg>,
    pub checkpointer: ActorRef<CheckpointerMsg>,
}

/// Which child to restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    Profiler,
    Planner,
    Critic,
    Evaluator,
}

/// Mutable state of the run.
pub struct SupervisorState {
    pub children: Children,
    pub reply: Option<RpcReplyPort<RunSummary>>,
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
    pub restarts: Vec<Child>,
    /// Knowledge-probe points of this run so far, oldest first (see [`crate::probe`]).
    pub probe_points: Vec<ProbePoint>,
    pub stored_final_probe: Option<ProbePoint>,
    /// The vetoed candidates of an iteration that found no acceptable plan (the run's
    /// last); see [`RunSummary::rejected`].
    pub rejected: Vec<Rejection>,
}

impl Supervisor {
    async fn spawn_child(
        &self,
        which: Child,
        me: ActorCell,
        raw_grad: Option<Vec<f64>>,
        c: &mut Children,
    ) -> Result<(), ActorProcessingErr> {
        match which {
            Child::Profiler => {
                c.profiler = Actor::spawn_linked(None, self.profiler(), raw_grad, me)
                    .await?
                    .0
            }
            Child::Planner => {
                c.planner = Actor::spawn_linked(None, self.planner(), (), me).await?.0
            }
            Child::Critic => c.critic = Actor::spawn_linked(None, self.critic(), (), me).await?.0,
            Child::Evaluator => {
                c.evaluator = Actor::spawn_linked(None, self.evaluator(), (), me).await?.0
            }
        }
        Ok(())
    }

    fn profiler(&self) -> Profiler {
        let c = &self.cfg;
        Profiler {
            engine: self.engine.clone(),
            activation_samples: c.calibration.activation_samples,
            gradient_samples: c.calibration.gradient_samples,
            gradient_every: c.pruning.gradient_every.max(1),
            percentile: c.pruning.sensitivity_percentile,
            faults: self.faults.clone(),
        }
    }

    fn planner(&self) -> Planner {
        Planner {
            backend: self.backend.clone(),
        }
    }

    /// The Critic, with `under_pace = "auto"` resolved for this run's planner backend.
    fn critic(&self) -> Critic {
        let mut cfg = self.cfg.critic.clone();
        cfg.rules.under_pace = cfg.rules.under_pace.resolve(self.cfg.planner.backend);
        Critic {
            cfg,
            tau: self.cfg.pruning.tau,
        }
    }

    fn evaluator(&self) -> Evaluator {
        Evaluator {
            engine: self.engine.clone(),
            workers: self.workers,
            faults: self.faults.clone(),
        }
    }

    /// Replace a dead child by a fresh one linked to `me`.
    pub async fn restart(
        &self,
        state: &mut SupervisorState,
        which: Child,
        me: ActorCell,
    ) -> Result<(), String> {
        tracing::warn!(?which, "restarting a failed child");
        state.restarts.push(which);
        let grad = state.raw_grad.clone();
        self.spawn_child(which, me, grad, &mut state.children)
            .await
            .map_err(|e| format!("restarting {which:?}: {e}"))
    }

    pub fn emit(&self, event: crate::run::ProgressEvent) {
        if let Some(p) = &self.progress {
            p(&event);
        }
    }
}

/// Send a request to a child and wait for its reply; when the child dies on the way
/// (reply port dropped or mailbox closed), restart it (restartable children only) and
/// send again.
macro_rules! ask {
    ($sup:expr, $state:expr, $me:expr, $field:ident, $child:expr, $build:expr) => {{
        let mut attempt = 0usize;
        loop {
            let r = $state.children.$field.call($build, None).await;
            let restartable: Option<$crate::supervisor::Child> = $child;
            match (r, restartable) {
                (Ok(CallResult::Success(v)), _) => break Ok(v),
                (_, Some(which)) if attempt < $crate::supervisor::MAX_RESTARTS => {
                    attempt += 1;
                    $sup.restart($state, which, $me.clone()).await?;
                }
                _ => {
                    break Err(format!(
                        "the {} actor stopped while answering",
                        stringify!($field)
                    ))
                }
            }
        }
    }};
}
pub(crate) use ask;

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = StartPoint;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        start: StartPoint,
    ) -> Result<Self::State, ActorProcessingErr> {
        let me = myself.get_cell();
        let profiler = Actor::spawn_linked(
            Some(format!("{}-profiler", self.run_id)),
            self.profiler(),
            start.raw_grad.clone(),
            me.clone(),
        )
        .await?
        .0;
        let planner = Actor::spawn_linked(None, self.planner(), (), me.clone())
            .await?
            .0;
        let critic = Actor::spawn_linked(None, self.critic(), (), me.clone())
            .await?
            .0;
        let executor = Actor::spawn_linked(
            None,
            Executor {
                engine: self.engine.clone(),
            },
            start.masks,
            me.clone(),
        )
        .await?
        .0;
        let evaluator = Actor::spawn_linked(None, self.evaluator(), (), me.clone())
            .await?
            .0;
        let checkpointer = Actor::spawn_linked(
            None,
            Checkpointer {
                dir: self.db_dir.clone(),
                run_id: self.run_id.clone(),
                faults: self.faults.clone(),
            },
            (),
            me.clone(),
        )
        .await?
        .0;
        Ok(SupervisorState {
            children: Children {
                profiler,
                planner,
                critic,
                executor,
                evaluator,
                checkpointer,
            },
            reply: None,
            new_meta: start.new_meta,
            baseline_ppl: start.baseline_ppl.unwrap_or(f64::NAN),
            current_ppl: start.current_ppl.unwrap_or(f64::NAN),
            history: start.history,
            iteration: start.next_iteration,
            started_at: start.next_iteration,
            stored_iterations: start.stored_iterations,
            raw_grad: start.raw_grad,
            timings: ActorTimings::default(),
            delta_bytes: start.delta_bytes,
            restarts: Vec::new(),
            probe_points: start.probe_points,
            stored_final_probe: start.final_probe,
            rejected: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let me = myself.get_cell();
        let next = match msg {
            SupervisorMsg::Run(reply) => {
                state.reply = Some(reply);
                self.begin(state, &me).await
            }
            SupervisorMsg::Step => match self.control.requested() {
                Some(crate::run::StopRequest::Cancel) => Ok(Some(StopReason::Cancelled)),
                Some(crate::run::StopRequest::Suspend) => Ok(Some(StopReason::Interrupted)),
                None => self.step(state, &me).await,
            },
            SupervisorMsg::Masks(reply) => {
                let masks = match state
                    .children
                    .executor
                    .call(|r| ExecutorMsg::Masks { reply: r }, None)
                    .await
                {
                    Ok(CallResult::Success(m)) => m,
                    _ => Vec::new(),
                };
                let _ = reply.send(masks);
                return Ok(());
            }
        };
        let next = match next {
            // A run that ends normally gets the final model's probe point first.
            Ok(Some(reason)) if self.probe_on() && ends_normally(reason) => {
                self.final_probe(state, &me).await.map(|()| Some(reason))
            }
            other => other,
        };
        match next {
            Ok(None) => {
                let _ = myself.cast(SupervisorMsg::Step);
            }
            Ok(Some(reason)) => self.finish(state, reason, None).await,
            Err(failure) => self.finish(state, StopReason::Failed, Some(failure)).await,
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
    /// Finish the run: record the terminal state (best effort on failure), reply with
    /// the summary, stop the children. An interrupted run (shutdown) records nothing:
    /// its stored status is that of its last committed iteration, which a resume reads.
    async fn finish(
        &self,
        state: &mut SupervisorState,
        reason: StopReason,
        failure: Option<String>,
    ) {
        let terminal = match (&failure, reason) {
            (Some(_), _) => RunState::Failed,
            (None, StopReason::Cancelled) => RunState::Cancelled,
            (None, StopReason::Interrupted) => RunState::Committed,
            _ => RunState::Finished,
        };
        if reason != StopReason::Interrupted {
            let note = failure.clone().unwrap_or_else(|| {
                let mut note = format!("{reason:?}").to_lowercase();
                if let Some(last) = state.rejected.last() {
                    note.push_str(&format!(
                        ": {} plan(s) vetoed; last: {}",
                        state.rejected.len(),
                        last.reasons.join("; ")
                    ));
                }
                note
            });
            let status = crate::iteration::status(state, terminal, Some(note));
            let _ = state
                .children
                .checkpointer
                .call(|r| CheckpointerMsg::SetStatus { status, reply: r }, None)
                .await;
        }
        let layers = match state
            .children
            .executor
            .call(|r| ExecutorMsg::Sparsity { reply: r }, None)
            .await
        {
            Ok(CallResult::Success(rows)) => rows,
            _ => Vec::new(),
        };
        let pruned: f64 = layers.iter().map(|(_, s, n)| s * *n as f64).sum();
        let total: f64 = layers.iter().map(|(_, _, n)| *n as f64).sum();
        let summary = RunSummary {
            run_id: self.run_id.clone(),
            state: terminal,
            stop_reason: reason,
            failure,
            target_sparsity: self.cfg.pruning.target_sparsity,
            final_sparsity: if total > 0.0 { pruned / total } else { 0.0 },
            baseline_ppl: state.baseline_ppl,
            final_ppl: state.current_ppl,
            records: state.history.clone(),
            timings: state.timings,
            layer_sparsity: layers,
            delta_bytes: state.delta_bytes.clone(),
            started_at_iteration: state.started_at,
            probe: self.probe_series(state),
            rejected: state.rejected.clone(),
        };
        self.emit(crate::run::ProgressEvent::Finished {
            state: terminal,
            reason,
        });
        if let Some(reply) = state.reply.take() {
            let _ = reply.send(summary);
        }
    }
}
