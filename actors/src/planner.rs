//! The Planner actor (paper §3.3): asks its backend for K candidate plans. Backends
//! implement `llm::PlannerBackend` (the deterministic heuristic offline, LLMs later), so
//! the actor never knows which model answers. Backends are synchronous and may block
//! (HTTP, a local model), so they run on the blocking pool.

use std::sync::Arc;

use llm::PlannerBackend;
use protocol::{PlanRequest, PlanResponse};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::error::ActorError;
use crate::util::blocking;

/// Immutable setup: the backend.
pub struct Planner {
    pub backend: Arc<dyn PlannerBackend>,
}

/// Messages the Planner answers.
pub enum PlannerMsg {
    /// Up to `k` candidate plans for `request`, or the backend's error.
    Propose {
        request: Box<PlanRequest>,
        k: usize,
        reply: RpcReplyPort<Result<Vec<PlanResponse>, ActorError>>,
    },
}

impl Actor for Planner {
    type Msg = PlannerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let PlannerMsg::Propose { request, k, reply } = msg;
        let backend = self.backend.clone();
        let out = blocking(move || {
            backend
                .propose(&request, k)
                .map_err(|source| ActorError::Planner {
                    backend: backend.name().to_string(),
                    source,
                })
        })
        .await;
        let _ = reply.send(out);
        Ok(())
    }
}
