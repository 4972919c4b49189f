//! The Supervisor's six children and how to talk to them: [`Crew::ask`] sends a
//! request and waits for the reply; when a restartable child (Profiler, Planner,
//! Critic, Evaluator) dies on the way, it is restarted and the request sent again, at
//! most [`MAX_RESTARTS`] times per request. The Executor (it holds the iteration's
//! pending candidates) and the Checkpointer (the open store) are not restarted: their
//! death ends the run as `failed`, and nothing half-written is ever committed.

use std::path::PathBuf;
use std::sync::Arc;

use config::Config;
use llm::PlannerBackend;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, Message, RpcReplyPort};

use crate::checkpointer::{Checkpointer, CheckpointerMsg};
use crate::critic::{Critic, CriticMsg};
use crate::engine::Engine;
use crate::error::ActorError;
use crate::evaluator::{Evaluator, EvaluatorMsg};
use crate::executor::{Executor, ExecutorMsg};
use crate::faults::Faults;
use crate::folder::WeightFiles;
use crate::planner::{Planner, PlannerMsg};
use crate::profiler::{Profiler, ProfilerMsg};
use crate::repair::FitSpec;

/// Restarts of one child per request before the run fails.
pub const MAX_RESTARTS: usize = 2;

/// What every child is built from: the run's immutable setup.
pub struct CrewSpec {
    pub cfg: Config,
    pub engine: Arc<Engine>,
    pub backend: Arc<dyn PlannerBackend>,
    pub db_dir: PathBuf,
    /// Where the Checkpointer stores repaired weights (`pruning.repair = "obs"`).
    pub weight_files: WeightFiles,
    pub run_id: String,
    pub faults: Faults,
    /// Concurrent candidate evaluations; at least 1.
    pub workers: usize,
}

/// Which child to restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    Profiler,
    Planner,
    Critic,
    Evaluator,
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

/// One child as a request target: its name, where its reference lives, and whether it
/// may be restarted.
pub struct Route<M: Message> {
    pub name: &'static str,
    pub actor: fn(&Children) -> &ActorRef<M>,
    pub restart: Option<Child>,
}

pub const PROFILER: Route<ProfilerMsg> = Route {
    name: "profiler",
    actor: |c| &c.profiler,
    restart: Some(Child::Profiler),
};
pub const PLANNER: Route<PlannerMsg> = Route {
    name: "planner",
    actor: |c| &c.planner,
    restart: Some(Child::Planner),
};
pub const CRITIC: Route<CriticMsg> = Route {
    name: "critic",
    actor: |c| &c.critic,
    restart: Some(Child::Critic),
};
pub const EXECUTOR: Route<ExecutorMsg> = Route {
    name: "executor",
    actor: |c| &c.executor,
    restart: None,
};
pub const EVALUATOR: Route<EvaluatorMsg> = Route {
    name: "evaluator",
    actor: |c| &c.evaluator,
    restart: Some(Child::Evaluator),
};
pub const CHECKPOINTER: Route<CheckpointerMsg> = Route {
    name: "checkpointer",
    actor: |c| &c.checkpointer,
    restart: None,
};

/// The children, their spec, and the restarts so far.
pub struct Crew {
    pub spec: Arc<CrewSpec>,
    pub children: Children,
    pub restarts: Vec<Child>,
    me: ActorCell,
}

impl Crew {
    /// Start the six children linked to `me` (the Supervisor). `raw_grad`: gradients
    /// measured earlier in this run (a resume); `None` starts the Profiler fresh.
    pub async fn start(
        spec: Arc<CrewSpec>,
        me: ActorCell,
        raw_grad: Option<Vec<f64>>,
    ) -> Result<Self, ActorProcessingErr> {
        let profiler = Actor::spawn_linked(
            Some(format!("{}-profiler", spec.run_id)),
            spec.profiler(),
            raw_grad,
            me.clone(),
        )
        .await?
        .0;
        let planner = Actor::spawn_linked(None, spec.planner(), (), me.clone())
            .await?
            .0;
        let critic = Actor::spawn_linked(None, spec.critic(), (), me.clone())
            .await?
            .0;
        let executor = Actor::spawn_linked(None, spec.executor(), (), me.clone())
            .await?
            .0;
        let evaluator = Actor::spawn_linked(None, spec.evaluator(), (), me.clone())
            .await?
            .0;
        let checkpointer = Actor::spawn_linked(None, spec.checkpointer(), (), me.clone())
            .await?
            .0;
        Ok(Self {
            spec,
            children: Children {
                profiler,
                planner,
                critic,
                executor,
                evaluator,
                checkpointer,
            },
            restarts: Vec::new(),
            me,
        })
    }

    /// Send the request `build` makes to `route`'s child and wait for the reply,
    /// restarting a restartable child that dies on the way (`raw_grad` seeds a new
    /// Profiler, so the run continues exactly as if nothing had happened).
    pub async fn ask<M: Message, T: Send + 'static>(
        &mut self,
        route: &Route<M>,
        raw_grad: &Option<Vec<f64>>,
        build: impl Fn(RpcReplyPort<T>) -> M,
    ) -> Result<T, ActorError> {
        let mut attempt = 0usize;
        loop {
            let actor = (route.actor)(&self.children);
            match (actor.call(&build, None).await, route.restart) {
                (Ok(CallResult::Success(v)), _) => return Ok(v),
                (_, Some(which)) if attempt < MAX_RESTARTS => {
                    attempt += 1;
                    self.restart(which, raw_grad.clone()).await?;
                }
                _ => return Err(ActorError::Stopped(route.name)),
            }
        }
    }

    /// Replace a dead child by a fresh one linked to the Supervisor.
    async fn restart(
        &mut self,
        which: Child,
        raw_grad: Option<Vec<f64>>,
    ) -> Result<(), ActorError> {
        tracing::warn!(?which, "restarting a failed child");
        self.restarts.push(which);
        let (spec, me, c) = (&self.spec, self.me.clone(), &mut self.children);
        let failed = |e: ActorProcessingErr| ActorError::Restart {
            child: match which {
                Child::Profiler => "profiler",
                Child::Planner => "planner",
                Child::Critic => "critic",
                Child::Evaluator => "evaluator",
            },
            reason: e.to_string(),
        };
        match which {
            Child::Profiler => {
                c.profiler = Actor::spawn_linked(None, spec.profiler(), raw_grad, me)
                    .await
                    .map_err(|e| failed(e.into()))?
                    .0
            }
            Child::Planner => {
                c.planner = Actor::spawn_linked(None, spec.planner(), (), me)
                    .await
                    .map_err(|e| failed(e.into()))?
                    .0
            }
            Child::Critic => {
                c.critic = Actor::spawn_linked(None, spec.critic(), (), me)
                    .await
                    .map_err(|e| failed(e.into()))?
                    .0
            }
            Child::Evaluator => {
                c.evaluator = Actor::spawn_linked(None, spec.evaluator(), (), me)
                    .await
                    .map_err(|e| failed(e.into()))?
                    .0
            }
        }
        Ok(())
    }
}

impl CrewSpec {
    fn profiler(&self) -> Profiler {
        let c = &self.cfg;
        Profiler {
            engine: self.engine.clone(),
            activation_samples: c.calibration.activation_samples,
            gradient_samples: c.calibration.gradient_samples,
            gradient_every: c.pruning.gradient_every.max(1),
            percentile: c.pruning.sensitivity_percentile,
            costs: c.pruning.layer_costs.then_some(crate::costs::CostSpec {
                repair: c.pruning.repair,
                damp: c.pruning.repair_damp,
            }),
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
            tau_span: self.cfg.pruning.tau_span,
        }
    }

    fn executor(&self) -> Executor {
        Executor {
            engine: self.engine.clone(),
            repair: self.cfg.pruning.repair,
            damp: self.cfg.pruning.repair_damp,
            fit: self.fit(),
        }
    }

    /// `[pruning.reconstruct]` when it is on (and the repair with it).
    fn fit(&self) -> Option<FitSpec> {
        let p = &self.cfg.pruning;
        p.reconstruct.enabled(p.repair).then_some(FitSpec {
            opts: model::ReconstructOptions {
                epochs: p.reconstruct.epochs as usize,
                lr: p.reconstruct.lr,
            },
            target_sparsity: p.target_sparsity,
        })
    }

    fn evaluator(&self) -> Evaluator {
        Evaluator {
            engine: self.engine.clone(),
            workers: self.workers,
            faults: self.faults.clone(),
        }
    }

    fn checkpointer(&self) -> Checkpointer {
        Checkpointer {
            dir: self.db_dir.clone(),
            weight_files: self.weight_files.clone(),
            run_id: self.run_id.clone(),
            faults: self.faults.clone(),
        }
    }
}
