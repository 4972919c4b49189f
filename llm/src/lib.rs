//! Planner and critic backends (DESIGN.md §6).
//!
//! The pure parts live here today: the [`PlannerBackend`] trait every backend
//! implements, the prompt builder LLM backends send ([`prompt`]), and the offline
//! default, a deterministic [`HeuristicPlanner`]; the hosted backends (`openai`, `gemini`,
//! `anthropic`, in [`remote`]) implement the same trait, and [`build_backend`] picks one
//! (with its fallback) from the config. This crate never depends on `actors`: the Planner actor
//! calls a backend, not the other way round.

mod allocate;
pub mod constrained;
pub mod error;
pub mod factory;
pub mod heuristic;
pub mod local;
pub mod planner;
pub mod prompt;
pub mod remote;
pub mod rng;
pub mod sim;
pub mod vocab;

pub use error::LlmError;
pub use factory::{build_backend, build_planner, WithFallback};
pub use heuristic::HeuristicPlanner;

pub use planner::{PlanRequest, PlanResponse, PlannerBackend};
pub use prompt::{build_prompt, Prompt};
