//! The Evaluator actor (Algorithm 1 line 19): in-loop perplexity on the held-out slice,
//! of the committed model or of candidates, and the knowledge probe
//! ([`crate::probe`]) when it is on.
//!
//! A candidate is evaluated through a `WeightOverlay` holding, for the layers its plan
//! touched only, keep bits (committed mask + the candidate's delta) that the forward
//! applies to the model's stored weights one layer at a time, or the candidate's
//! repaired weights when the Executor repairs; every other layer is shared with the
//! committed model. With K > 1 candidates a pool of worker
//! threads (one per candidate, at most `workers` at a time) scores them concurrently on
//! the one shared model.

use std::sync::Arc;
use std::time::Instant;

use eval::probe::ProbeScore;
use kernels::{Mask, MaskDelta};
use model::{Perplexity, WeightOverlay};
use protocol::{CandidateMasks, CandidateScore};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::engine::Engine;
use crate::error::ActorError;
use crate::faults::Faults;
use crate::repair::RepairedWeights;
use crate::util::blocking;

/// A candidate as the Evaluator scores it: its masks, and its repaired weights when
/// the Executor repairs.
pub type Scored = (CandidateMasks, Option<RepairedWeights>);

/// Immutable setup.
pub struct Evaluator {
    pub engine: Arc<Engine>,
    /// Concurrent candidate evaluations (threads); at least 1.
    pub workers: usize,
    pub faults: Faults,
}

/// Messages the Evaluator answers.
pub enum EvaluatorMsg {
    /// PPL of the committed model on the held-out slice.
    Baseline {
        reply: RpcReplyPort<Result<f64, ActorError>>,
    },
    /// One score per candidate (same order), plus the milliseconds spent.
    Evaluate {
        iteration: u32,
        candidates: Vec<Scored>,
        reply: RpcReplyPort<Result<(Vec<CandidateScore>, u64), ActorError>>,
    },
    /// Knowledge probe of the committed model, or of the committed model with
    /// `candidate`'s delta (the candidate about to be committed). An error when the
    /// probe is off.
    Probe {
        candidate: Option<Box<Scored>>,
        reply: RpcReplyPort<Result<ProbeScore, ActorError>>,
    },
}

impl Actor for Evaluator {
    type Msg = EvaluatorMsg;
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
        let engine = self.engine.clone();
        match msg {
            EvaluatorMsg::Baseline { reply } => {
                let out = blocking(move || held_out_ppl(&engine, None)).await;
                let _ = reply.send(out);
            }
            EvaluatorMsg::Evaluate {
                iteration,
                candidates,
                reply,
            } => {
                if self
                    .faults
                    .fire("evaluator", self.faults.evaluator_panic_at, iteration)
                {
                    panic!("injected Evaluator panic at iteration {iteration}");
                }
                let start = Instant::now();
                let workers = self.workers.max(1);
                let out = blocking(move || evaluate_all(&engine, &candidates, workers)).await;
                let _ = reply.send(out.map(|s| (s, start.elapsed().as_millis() as u64)));
            }
            EvaluatorMsg::Probe { candidate, reply } => {
                let out = blocking(move || probe(&engine, candidate.as_deref())).await;
                let _ = reply.send(out);
            }
        }
        Ok(())
    }
}

/// Score every candidate, `workers` at a time, each on its own thread.
fn evaluate_all(
    engine: &Engine,
    candidates: &[Scored],
    workers: usize,
) -> Result<Vec<CandidateScore>, ActorError> {
    let mut scores = Vec::with_capacity(candidates.len());
    for batch in candidates.chunks(workers) {
        let results: Vec<Result<CandidateScore, ActorError>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|c| s.spawn(move || score(engine, c)))
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(r) => r,
                    Err(p) => std::panic::resume_unwind(p),
                })
                .collect()
        });
        for r in results {
            scores.push(r?);
        }
    }
    Ok(scores)
}

fn score(engine: &Engine, (c, repaired): &Scored) -> Result<CandidateScore, ActorError> {
    let overlay = candidate_overlay(engine, c, repaired.as_ref())?;
    Ok(CandidateScore {
        id: c.id,
        ppl: held_out_ppl(engine, Some(&overlay))?,
        sparsity_after: c.sparsity_after,
    })
}

/// The probe of the committed model, plus `candidate`'s keep bits through the same
/// lazy overlay its PPL was scored with: the point describes exactly the model the
/// commit is about to produce, so it can be stored in that iteration's transaction.
fn probe(engine: &Engine, candidate: Option<&Scored>) -> Result<ProbeScore, ActorError> {
    let set = engine.probe.as_ref().ok_or_else(|| {
        ActorError::Setup("knowledge probe requested, but evaluation.probe.every is 0".into())
    })?;
    let overlay = candidate
        .map(|(c, w)| candidate_overlay(engine, c, w.as_ref()))
        .transpose()?;
    set.score(&engine.model, overlay.as_ref())
        .map_err(ActorError::Model)
}

/// The overlay a candidate is scored with: its repaired weights (full tensors of the
/// touched layers) when it has them, else its keep bits ([`overlay`]).
fn candidate_overlay(
    engine: &Engine,
    c: &CandidateMasks,
    repaired: Option<&RepairedWeights>,
) -> Result<WeightOverlay, ActorError> {
    match repaired {
        Some(r) => Ok(r.weights.clone()),
        None => overlay(engine, c),
    }
}

/// The candidate's touched layers as lazy mask entries: committed bits (the model's
/// in-place pruning) minus the candidate's delta. A candidate costs its bits, 1 per
/// weight of the layers it touches; each forward builds a layer's masked weight
/// transiently from the model's stored (already pruned) weight.
pub fn overlay(engine: &Engine, c: &CandidateMasks) -> Result<WeightOverlay, ActorError> {
    let model = &engine.model;
    let mut overlay = WeightOverlay::new();
    for d in &c.deltas {
        let err =
            |e: &dyn std::fmt::Display| ActorError::Model(format!("evaluator `{}`: {e}", d.layer));
        let delta = MaskDelta::from_bytes(&d.bytes).map_err(|e| err(&e))?;
        let mut mask = match model.pruned_mask(&d.layer).map_err(|e| err(&e))? {
            Some(m) => (*m).clone(),
            None => Mask::ones(delta.rows(), delta.cols()),
        };
        delta.apply_to(&mut mask).map_err(|e| err(&e))?;
        overlay.insert_mask(d.layer.clone(), Arc::new(mask));
    }
    Ok(overlay)
}

/// Token-weighted PPL over the held-out sequences (each one window), batched
/// [`model::FORWARD_BATCH`] sequences per forward.
pub fn held_out_ppl(engine: &Engine, overlay: Option<&WeightOverlay>) -> Result<f64, ActorError> {
    let windows: Vec<&[u32]> = engine.eval.iter().map(Vec::as_slice).collect();
    let parts = engine
        .model
        .perplexity_each(&windows, model::FORWARD_BATCH, overlay)
        .map_err(|e| ActorError::Model(format!("evaluator: {e}")))?;
    Perplexity::combine(&parts)
        .map(|p| p.ppl)
        .map_err(|e| ActorError::Model(format!("evaluator: {e}")))
}
