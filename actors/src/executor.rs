//! The Executor actor (Algorithm 1 lines 16–18): applies candidate plans to the
//! committed masks with incremental per-row Wanda pruning, and commits the chosen one.
//!
//! It owns the committed masks (one bitset per prunable layer, model order) and mirrors
//! every commit into the shared model by pruning it in place (`Model::prune_in_place`):
//! the model's stored weights become `W ⊙ M` and the dense values are released, so the
//! process holds one copy of the weights whatever the sparsity. A candidate touches only
//! the layers its plan names: it is returned as those layers' mask deltas (compact
//! bytes), never as weight copies. Wanda scores of a pruned layer are computed on the
//! pruned weights: they differ from the dense scores only where weights are already
//! pruned, which the incremental selection never picks again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use kernels::{Mask, MaskDelta};
use protocol::{CandidateId, CandidateMasks, LayerDelta, Plan};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::engine::Engine;
use crate::util::blocking;

/// Immutable setup: the shared engine.
pub struct Executor {
    pub engine: Arc<Engine>,
}

/// Messages the Executor answers.
pub enum ExecutorMsg {
    /// Apply each plan to the committed masks; Σx² per layer (model order) scores the
    /// weights. Replies with one candidate per plan, plus the milliseconds spent.
    Apply {
        plans: Vec<(CandidateId, Plan)>,
        act_sum_sq: Arc<Vec<Vec<f32>>>,
        reply: RpcReplyPort<Result<(Vec<CandidateMasks>, u64), String>>,
    },
    /// Make a candidate's deltas part of the committed state.
    Commit {
        deltas: Vec<LayerDelta>,
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// Per layer (model order): (name, sparsity, weights), counted on the masks.
    Sparsity {
        reply: RpcReplyPort<Vec<(String, f64, u64)>>,
    },
    /// The committed masks as deltas from all-kept (for export and comparison).
    Masks {
        reply: RpcReplyPort<Vec<LayerDelta>>,
    },
}

/// Mutable state: the committed masks.
pub struct ExecutorState {
    masks: Arc<Vec<Mask>>,
    index: HashMap<String, usize>,
}

impl Actor for Executor {
    type Msg = ExecutorMsg;
    type State = ExecutorState;
    /// Committed masks to start from (a resumed run); `None` starts dense.
    type Arguments = Option<Vec<Mask>>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        masks: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let layers = &self.engine.layers;
        let masks = match masks {
            Some(m) => m,
            None => layers
                .iter()
                .map(|l| Mask::ones(l.out_features, l.in_features))
                .collect(),
        };
        let engine = self.engine.clone();
        let masks = Arc::new(masks);
        let m = masks.clone();
        // Prune the model in place to the starting masks (a resumed run; only layers
        // with pruned weights). Repeating a mask the model already holds is a no-op.
        blocking(move || -> Result<(), String> {
            for (info, mask) in engine.layers.iter().zip(m.iter()) {
                if mask.count_pruned() > 0 {
                    prune_in_place(&engine, &info.name, mask)?;
                }
            }
            crate::device::settle(engine.model.device())
        })
        .await?;
        let index = layers
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.clone(), i))
            .collect();
        Ok(ExecutorState { masks, index })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ExecutorMsg::Apply {
                plans,
                act_sum_sq,
                reply,
            } => {
                let start = Instant::now();
                let engine = self.engine.clone();
                let masks = state.masks.clone();
                let index = state.index.clone();
                let out =
                    blocking(move || apply_all(&engine, &masks, &index, &act_sum_sq, plans)).await;
                let _ = reply.send(out.map(|c| (c, start.elapsed().as_millis() as u64)));
            }
            ExecutorMsg::Commit { deltas, reply } => {
                let engine = self.engine.clone();
                let mut masks = (*state.masks).clone();
                let index = state.index.clone();
                let out = blocking(move || {
                    for d in &deltas {
                        let i = *index
                            .get(&d.layer)
                            .ok_or_else(|| format!("commit: unknown layer `{}`", d.layer))?;
                        let delta = MaskDelta::from_bytes(&d.bytes)
                            .map_err(|e| format!("commit `{}`: {e}", d.layer))?;
                        delta
                            .apply_to(&mut masks[i])
                            .map_err(|e| format!("commit `{}`: {e}", d.layer))?;
                        prune_in_place(&engine, &d.layer, &masks[i])?;
                    }
                    // The pruned weights are read next by other threads (streams).
                    crate::device::settle(engine.model.device())?;
                    Ok(masks)
                })
                .await;
                let _ = reply.send(out.map(|m| state.masks = Arc::new(m)));
            }
            ExecutorMsg::Sparsity { reply } => {
                let rows = self
                    .engine
                    .layers
                    .iter()
                    .zip(state.masks.iter())
                    .map(|(l, m)| (l.name.clone(), m.sparsity(), m.len() as u64))
                    .collect();
                let _ = reply.send(rows);
            }
            ExecutorMsg::Masks { reply } => {
                let rows = self
                    .engine
                    .layers
                    .iter()
                    .zip(state.masks.iter())
                    .map(|(l, m)| full_delta(&l.name, m))
                    .collect();
                let _ = reply.send(rows);
            }
        }
        Ok(())
    }
}

/// A mask as the delta from all-kept.
pub fn full_delta(name: &str, m: &Mask) -> LayerDelta {
    let ones = Mask::ones(m.rows(), m.cols());
    // Same shape and monotone by construction: cannot fail.
    let bytes = MaskDelta::between(&ones, m)
        .map(|d| d.to_bytes())
        .unwrap_or_default();
    LayerDelta {
        layer: name.to_string(),
        bytes,
    }
}

/// Commit one layer's mask into the model, pruning it in place.
fn prune_in_place(engine: &Engine, name: &str, mask: &Mask) -> Result<(), String> {
    engine
        .model
        .prune_in_place(name, mask)
        .map_err(|e| format!("mask `{name}`: {e}"))
}

/// All candidates, layer by layer: each touched layer's Wanda scores are computed once
/// and shared by every candidate that names it (then dropped, so at most one layer's
/// scores are alive). Per decision the layer is pruned to its current sparsity + δ
/// (capped at 1) by per-row Wanda. Global sparsity is counted on the masks.
fn apply_all(
    engine: &Engine,
    masks: &[Mask],
    index: &HashMap<String, usize>,
    act: &[Vec<f32>],
    plans: Vec<(CandidateId, Plan)>,
) -> Result<Vec<CandidateMasks>, String> {
    let total: u64 = masks.iter().map(|m| m.len() as u64).sum();
    let pruned: u64 = masks.iter().map(|m| m.count_pruned() as u64).sum();
    // Layer index → [(candidate, δ)], in model order.
    let mut by_layer: std::collections::BTreeMap<usize, Vec<(usize, f64)>> = Default::default();
    for (c, (_, plan)) in plans.iter().enumerate() {
        for d in &plan.layer_decisions {
            let i = *index
                .get(&d.layer)
                .ok_or_else(|| format!("executor: unknown layer `{}`", d.layer))?;
            by_layer.entry(i).or_default().push((c, d.delta));
        }
    }
    let mut deltas: Vec<Vec<(usize, LayerDelta)>> = vec![Vec::new(); plans.len()];
    let mut newly = vec![0u64; plans.len()];
    for (&i, uses) in &by_layer {
        let name = &engine.layers[i].name;
        let err = |e: &dyn std::fmt::Display| format!("executor `{name}`: {e}");
        let sum_sq = act
            .get(i)
            .ok_or_else(|| format!("executor: no activations for `{name}`"))?;
        // On the weights' device: the scores and the per-row selection run there.
        let sq =
            Tensor::from_slice(sum_sq, sum_sq.len(), engine.model.device()).map_err(|e| err(&e))?;
        let w = engine.model.layer_weight(name).map_err(|e| err(&e))?;
        let mask = &masks[i];
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
