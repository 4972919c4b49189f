//! secateur's actors and supervisor (DESIGN.md §3): the agent-guided pruning loop of
//! the paper's Algorithm 1 as ractor actors exchanging `protocol` types.
//!
//! | actor | file | job |
//! |---|---|---|
//! | Supervisor | [`supervisor`] ([`crew`], [`pipeline`]) | starts the others linked, drives iterations, restarts failed children |
//! | Profiler | [`profiler`] | activation statistics each iteration, gradients every g-th; z-scored layer profiles |
//! | Planner | [`planner`] | K candidate plans from a `llm::PlannerBackend` |
//! | Critic | [`critic`] ([`critic_rules`]) | approve / amend / veto by explicit rules; reflections |
//! | Executor | [`executor`] ([`state`]) | candidate masks by incremental Wanda (touched layers only); commits a candidate by id |
//! | Evaluator | [`evaluator`], [`probe_set`] | in-loop PPL of candidates, concurrently for K > 1; the knowledge probe every few iterations |
//! | Checkpointer | [`checkpointer`] ([`store`]) | sled: runs, iterations, mask deltas, state machine |
//!
//! Where a plan goes after the critic: [`pipeline`] (one iteration as stages over a
//! [`pipeline::Candidate`]). [`run::run_pruning`] is the entry point; a run's files are
//! a [`folder::RunFolder`]. Tensor work runs on blocking threads ([`util::blocking`]);
//! the model is shared as `Arc<Model>` ([`engine::Engine`]) and owns the committed
//! state. Modules depend downwards only: `run` → `supervisor` → `pipeline` → `crew` →
//! the actors → `state`, `engine`, `error`, `events`, `faults`, `util`.

pub mod checkpointer;
pub mod costs;
pub mod crew;
pub mod critic;
mod critic_pace;
pub mod critic_rules;
pub mod engine;
pub mod error;
pub mod evaluator;
pub mod events;
pub mod executor;
pub mod faults;
pub mod folder;
pub mod pipeline;
pub mod planner;
pub mod probe_set;
pub mod profiler;
pub mod repair;
pub mod run;
pub mod state;
pub mod store;
pub mod supervisor;
pub mod testing;
pub mod util;

pub use error::{ActorError, FailureKind};
pub use events::{ProgressEvent, ProgressFn, RunControl, StopRequest};
pub use faults::Faults;
pub use folder::RunFolder;
pub use report::Usage;
pub use run::{run_pruning, run_pruning_blocking, FinalEval, RunError, RunOptions, RunOutput};
