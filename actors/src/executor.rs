//! The Executor actor (Algorithm 1 lines 16–18): applies candidate plans to the
//! committed masks with incremental per-row Wanda pruning, and commits the chosen one.
//!
//! It owns the committed masks (one bitset per prunable layer, model order) and mirrors
//! every commit into the shared model (`Model::set_mask`). A candidate touches only the
//! layers its plan names: it is returned as those layers' mask deltas (compact bytes),
//! never as weight copies. Dense weights are never modified.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
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
        // Mirror the starting masks into the model (only layers with pruned weights).
        blocking(move || -> Result<(), String> {
            for (info, mask) in engine.layers.iter().zip(m.iter()) {
                if mask.count_pruned() > 0 {
                    set_mask(&engine, &info.name, mask)?;
                }
            }
            Ok(())
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
                let out = blocking(move || {
                    plans
                        .into_iter()
                        .map(|(id, plan)| apply(&engine, &masks, &index, &act_sum_sq, id, plan))
                        .collect::<Result<Vec<_>, String>>()
                })
                .await;
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
                        set_mask(&engine, &d.layer, &masks[i])?;
                    }
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

/// Commit one layer's mask into the model.
fn set_mask(engine: &Engine, name: &str, mask: &Mask) -> Result<(), String> {
    let t = mask
        .to_tensor(DType::U8, &Device::Cpu)
        .map_err(|e| format!("mask `{name}`: {e}"))?;
    engine
        .model
        .set_mask(name, Some(&t))
        .map_err(|e| format!("mask `{name}`: {e}"))
}

/// One candidate: per decision, prune the layer to its current sparsity + δ (capped at
/// 1) by per-row Wanda, and record the delta. Global sparsity is counted on the masks.
fn apply(
    engine: &Engine,
    masks: &[Mask],
    index: &HashMap<String, usize>,
    act: &[Vec<f32>],
    id: CandidateId,
    plan: Plan,
) -> Result<CandidateMasks, String> {
    let total: u64 = masks.iter().map(|m| m.len() as u64).sum();
    let mut pruned: u64 = masks.iter().map(|m| m.count_pruned() as u64).sum();
    let mut deltas = Vec::new();
    let mut newly = 0u64;
    for d in &plan.layer_decisions {
        let i = *index
            .get(&d.layer)
            .ok_or_else(|| format!("executor: unknown layer `{}`", d.layer))?;
        let mask = &masks[i];
        let sum_sq = act
            .get(i)
            .ok_or_else(|| format!("executor: no activations for `{}`", d.layer))?;
        let err = |e: &dyn std::fmt::Display| format!("executor `{}`: {e}", d.layer);
        let sq = Tensor::from_slice(sum_sq, sum_sq.len(), &Device::Cpu).map_err(|e| err(&e))?;
        let w = engine.model.layer_weight(&d.layer).map_err(|e| err(&e))?;
        let scores = kernels::wanda_scores(&w, &sq).map_err(|e| err(&e))?;
        // Per-row counts are round(ρ·cols): aim at the mask's own per-row level + δ so
        // rounding never asks for less than what is already pruned.
        let target = (mask.sparsity() + d.delta.max(0.0)).min(1.0);
        let new = kernels::prune_rows_incremental(&scores, mask, target).map_err(|e| err(&e))?;
        let delta = MaskDelta::between(mask, &new).map_err(|e| err(&e))?;
        newly += delta.len() as u64;
        pruned += delta.len() as u64;
        deltas.push(LayerDelta {
            layer: d.layer.clone(),
            bytes: delta.to_bytes(),
        });
    }
    Ok(CandidateMasks {
        id,
        plan,
        deltas,
        newly_pruned: newly,
        sparsity_after: if total == 0 {
            0.0
        } else {
            pruned as f64 / total as f64
        },
    })
}
