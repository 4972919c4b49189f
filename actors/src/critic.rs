//! The Critic actor: reviews candidate plans with the explicit rules of
//! [`crate::critic_rules`] (approve / amend / veto, DESIGN.md §3) and writes the
//! reflection the planner sees next iteration (paper §3.4). Pure and cheap, so it runs
//! on the executor.

use config::CriticConfig;
use protocol::{allowed_rise, Feedback, IterationOutcome, Plan, PlanRequest, Verdict};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::critic_rules::{reflect, review, ReviewContext};

/// Immutable setup: the `[critic]` section, τ and the sparsity gain it applies to.
pub struct Critic {
    pub cfg: CriticConfig,
    pub tau: f64,
    pub tau_span: f64,
}

/// Messages the Critic answers.
pub enum CriticMsg {
    /// One verdict per plan, in order.
    Review {
        request: Box<PlanRequest>,
        plans: Vec<Plan>,
        reply: RpcReplyPort<Vec<Verdict>>,
    },
    /// The reflection on a finished iteration (committed or rolled back).
    Reflect {
        outcome: IterationOutcome,
        plan: Box<Plan>,
        reply: RpcReplyPort<Feedback>,
    },
}

impl Actor for Critic {
    type Msg = CriticMsg;
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
        match msg {
            CriticMsg::Review {
                request,
                plans,
                reply,
            } => {
                let ctx = ReviewContext::from_request(&request);
                let verdicts = plans
                    .iter()
                    .map(|p| review(p, &ctx, &self.cfg.rules))
                    .collect();
                let _ = reply.send(verdicts);
            }
            CriticMsg::Reflect {
                outcome,
                plan,
                reply,
            } => {
                // The threshold this step was judged by (τ grows with the step).
                let tau = allowed_rise(self.tau, self.tau_span, outcome.sparsity_gain());
                let _ = reply.send(reflect(&outcome, &plan, tau, &self.cfg.assessment));
            }
        }
        Ok(())
    }
}
