//! The Executor actor (Algorithm 1 lines 16–18): applies candidate plans to the
//! committed masks with incremental per-row Wanda pruning (`pruning.repair = "none"`)
//! or with the OBS update that also repairs the kept weights ([`crate::repair`],
//! `"obs"`), and commits the chosen one.
//!
//! The committed state belongs to the model ([`crate::state`]); the Executor is its
//! only writer. A commit prunes the model in place (`Model::prune_in_place`): the
//! stored weights become `W ⊙ M` and the dense values are released, so the process
//! holds one copy of the weights whatever the sparsity. A candidate touches only the
//! layers its plan names: it is returned as those layers' mask deltas (compact bytes),
//! never as weight copies, and stays pending here until the Supervisor commits it by
//! id or the next iteration's `Apply` replaces it. Wanda scores of a pruned layer are
//! computed on the pruned weights: they differ from the dense scores only where
//! weights are already pruned, which the incremental selection never picks again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use kernels::MaskDelta;
use protocol::{CandidateId, CandidateMasks, LayerDelta, Plan};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::engine::Engine;
use crate::error::{ActorError, Result};
use crate::repair::{repair_all, FitSpec, RepairedWeights};
use crate::state::PruningState;
use crate::util::blocking;

/// Immutable setup: the shared engine and what to do to the kept weights.
pub struct Executor {
    pub engine: Arc<Engine>,
    pub repair: config::Repair,
    /// The repair's Hessian dampening (`pruning.repair_damp`).
    pub damp: f64,
    /// The block fit of the candidate that reaches the target (`pruning.reconstruct`,
    /// with the OBS repair only).
    pub fit: Option<FitSpec>,
}

/// One executed candidate: its masks, and its repaired weights when the Executor
/// repairs (`None` with `pruning.repair = "none"`).
#[derive(Clone)]
pub struct Executed {
    pub masks: CandidateMasks,
    pub weights: Option<RepairedWeights>,
}

/// Messages the Executor answers.
pub enum ExecutorMsg {
    /// Apply each plan to the committed masks; Σx² per layer (model order) scores the
    /// weights. Replies with one candidate per plan, plus the milliseconds spent; the
    /// candidates stay pending until the next `Apply`.
    Apply {
        plans: Vec<(CandidateId, Plan)>,
        act_sum_sq: Arc<Vec<Vec<f32>>>,
        reply: RpcReplyPort<Result<(Vec<Executed>, u64)>>,
    },
    /// Make the pending candidate `id` the committed state.
    Commit {
        id: CandidateId,
        reply: RpcReplyPort<Result<()>>,
    },
    /// Per layer (model order): (name, sparsity, weights), counted on the masks.
    Sparsity {
        reply: RpcReplyPort<Result<Vec<(String, f64, u64)>>>,
    },
    /// The committed masks as deltas from all-kept (for export and comparison).
    Masks {
        reply: RpcReplyPort<Result<Vec<LayerDelta>>>,
    },
}

/// Mutable state: the candidates of the iteration in progress.
pub struct ExecutorState {
    committed: PruningState,
    pending: HashMap<CandidateId, Arc<Executed>>,
}

impl Actor for Executor {
    type Msg = ExecutorMsg;
    type State = ExecutorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> std::result::Result<Self::State, ActorProcessingErr> {
        Ok(ExecutorState {
            committed: PruningState::new(self.engine.clone()),
            pending: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let committed = state.committed.clone();
        match msg {
            ExecutorMsg::Apply {
                plans,
                act_sum_sq,
                reply,
            } => {
                let start = Instant::now();
                let engine = self.engine.clone();
                let (repair, damp, fit) = (self.repair, self.damp, self.fit);
                // The previous iteration's candidates (and their weights) go first.
                state.pending.clear();
                let out =
                    blocking(move || match repair {
                        config::Repair::None => apply_all(&engine, &committed, &act_sum_sq, plans)
                            .map(|c| {
                                c.into_iter()
                                    .map(|masks| Executed {
                                        masks,
                                        weights: None,
                                    })
                                    .collect()
                            }),
                        config::Repair::Obs => repair_all(&engine, &committed, plans, damp, fit)
                            .map(|c| {
                                c.into_iter()
                                    .map(|(masks, w)| Executed {
                                        masks,
                                        weights: Some(w),
                                    })
                                    .collect::<Vec<_>>()
                            }),
                    })
                    .await;
                state.pending = match &out {
                    Ok(c) => c
                        .iter()
                        .map(|c| (c.masks.id, Arc::new(c.clone())))
                        .collect(),
                    Err(_) => HashMap::new(),
                };
                let _ = reply.send(out.map(|c| (c, start.elapsed().as_millis() as u64)));
            }
            ExecutorMsg::Commit { id, reply } => {
                let out = match state.pending.remove(&id) {
                    Some(c) => {
                        blocking(move || {
                            committed.commit(&c.masks, c.weights.as_ref().map(|w| &w.weights))
                        })
                        .await
                    }
                    None => Err(ActorError::UnknownCandidate(id)),
                };
                state.pending.clear();
                let _ = reply.send(out);
            }
            ExecutorMsg::Sparsity { reply } => {
                // Counts every layer's bits: a blocking thread's work, like `Masks`.
                let _ = reply.send(blocking(move || committed.layer_sparsity()).await);
            }
            ExecutorMsg::Masks { reply } => {
                let _ = reply.send(blocking(move || committed.final_masks()).await);
            }
        }
        Ok(())
    }
}

/// All candidates, layer by layer: each touched layer's Wanda scores are computed once
/// and shared by every candidate that names it (then dropped, so at most one layer's
/// scores are alive). Per decision the layer is pruned to its current sparsity + δ
/// (capped at 1) by per-row Wanda. Global sparsity is counted on the masks.
fn apply_all(
    engine: &Engine,
    committed: &PruningState,
    act: &[Vec<f32>],
    plans: Vec<(CandidateId, Plan)>,
) -> Result<Vec<CandidateMasks>> {
    let total: u64 = engine.params().iter().sum();
    let pruned = committed.pruned()?;
    // Layer index → [(candidate, δ)], in model order.
    let mut by_layer: std::collections::BTreeMap<usize, Vec<(usize, f64)>> = Default::default();
    for (c, (_, plan)) in plans.iter().enumerate() {
        for d in &plan.layer_decisions {
            let i = committed.index(&d.layer).map_err(|_| {
                ActorError::Kernel(format!("executor: unknown layer `{}`", d.layer))
            })?;
            by_layer.entry(i).or_default().push((c, d.delta));
        }
    }
    let mut deltas: Vec<Vec<(usize, LayerDelta)>> = vec![Vec::new(); plans.len()];
    let mut newly = vec![0u64; plans.len()];
    for (&i, uses) in &by_layer {
        let name = &engine.layers[i].name;
        let err = |e: &dyn std::fmt::Display| ActorError::Kernel(format!("executor `{name}`: {e}"));
        let sum_sq = act
            .get(i)
            .ok_or_else(|| ActorError::Kernel(format!("executor: no activations for `{name}`")))?;
        // On the weights' device: the scores and the per-row selection run there.
        let sq =
            Tensor::from_slice(sum_sq, sum_sq.len(), engine.model.device()).map_err(|e| err(&e))?;
        let w = engine.model.layer_weight(name).map_err(|e| err(&e))?;
        let mask = &*committed.mask(i)?;
        for &(c, delta) in uses {
            // Per-row counts are round(ρ·cols): aim at the mask's own level + δ so
            // rounding never asks for less than what is already pruned.
            let target = (mask.sparsity() + delta.max(0.0)).min(1.0);
            // Scores computed row by row inside the selection: no [out, in] score
            // matrix per layer (it would be 180 MB for a 7B down_proj).
            let new = kernels::wanda_prune_rows(&w, &sq, mask, target).map_err(|e| err(&e))?;
            let d = MaskDelta::between(mask, &new).map_err(|e| err(&e))?;
            newly[c] += d.len() as u64;
            deltas[c].push((
                i,
                LayerDelta {
                    layer: name.clone(),
                    bytes: d.to_bytes(),
                },
            ));
        }
    }
    Ok(plans
        .into_iter()
        .zip(deltas)
        .zip(newly)
        .map(|(((id, plan), mut d), n)| {
            // Deltas in the plan's order (as the plan lists its layers).
            let order: HashMap<&str, usize> = plan
                .layer_decisions
                .iter()
                .enumerate()
                .map(|(k, x)| (x.layer.as_str(), k))
                .collect();
            d.sort_by_key(|(_, x)| order.get(x.layer.as_str()).copied().unwrap_or(usize::MAX));
            CandidateMasks {
                id,
                deltas: d.into_iter().map(|(_, x)| x).collect(),
                newly_pruned: n,
                sparsity_after: if total == 0 {
                    0.0
                } else {
                    (pruned + n) as f64 / total as f64
                },
                plan,
            }
        })
        .collect())
}
