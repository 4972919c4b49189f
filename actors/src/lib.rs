//! secateur's actors and supervisor (DESIGN.md §3): the agent-guided pruning loop of
//! the paper's Algorithm 1 as ractor actors exchanging `protocol` types.
//!
//! | actor | file | job |
//! |---|---|---|
//! | Supervisor | [`supervisor`], [`iteration`] | starts the others linked, drives iterations, restarts failed children |
//! | Profiler | [`profiler`] | activation statistics each iteration, gradients every g-th; z-scored layer profiles |
//! | Planner | [`planner`] | K candidate plans from a `llm::PlannerBackend` |
//! | Critic | [`critic`] ([`critic_rules`]) | approve / amend / veto by explicit rules; reflections |
//! | Executor | [`executor`] | candidate masks by incremental Wanda (touched layers only); commits |
//! | Evaluator | [`evaluator`], [`probe`] | in-loop PPL of candidates, concurrently for K > 1; the knowledge probe every few iterations |
//! | Checkpointer | [`checkpointer`] ([`store`]) | sled: runs, iterations, mask deltas, state machine |
//!
//! [`run::run_pruning`] is the entry point. Tensor work runs on blocking threads
//! ([`util::blocking`]); the model is shared as `Arc<Model>` ([`engine::Engine`]).

pub mod checkpointer;
pub mod critic;
mod critic_pace;
pub mod critic_rules;
pub mod device;
pub mod engine;
pub mod evaluator;
pub mod executor;
pub mod iteration;
pub mod planner;
pub mod probe;
pub mod profiler;
pub mod run;
pub mod store;
pub mod supervisor;
pub mod testing;
pub mod util;

pub use run::{
    run_pruning, run_pruning_blocking, FinalEval, ProgressEvent, ProgressFn, RunControl, RunError,
    RunOptions, RunOutput, StopRequest,
};
pub use util::Faults;
