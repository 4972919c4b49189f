//! The Profiler actor (paper §3.2, Algorithm 1 lines 7–11): per-layer sensitivity
//! profiles {z_sens, z_grad, sparsity} of the model's committed state.
//!
//! Activation statistics (Σx² per input column) are collected on every call; gradient
//! importance (the model's lean per-layer means, `Model::gradient_importance_means`)
//! every `pruning.gradient_every` iterations (iterations 1, 1+g, 1+2g, …),
//! and reused in between. The last raw gradient values can be handed in at spawn time,
//! so a restarted (or resumed) Profiler continues with exactly what was measured.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use kernels::Mask;
use protocol::{LayerProfile, ProfileReport};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::costs::CostSpec;
use crate::engine::Engine;
use crate::error::ActorError;
use crate::faults::Faults;
use crate::util::blocking;

/// Immutable setup: the shared engine and the profiling parameters.
pub struct Profiler {
    pub engine: Arc<Engine>,
    pub activation_samples: usize,
    pub gradient_samples: usize,
    pub gradient_every: u32,
    pub percentile: f64,
    /// Measure each layer's cost curve every iteration (needs gradient samples).
    pub costs: Option<CostSpec>,
    pub faults: Faults,
}

/// Messages the Profiler answers.
pub enum ProfilerMsg {
    /// Profile the committed model for `iteration`; replies with the report or the
    /// error (recoverable errors never kill the actor).
    Profile {
        iteration: u32,
        reply: RpcReplyPort<Result<(ProfileReport, u64), ActorError>>,
    },
}

/// Mutable state: the last raw gradient importance per layer (model order).
pub struct ProfilerState {
    raw_grad: Option<Vec<f64>>,
}

impl Actor for Profiler {
    type Msg = ProfilerMsg;
    type State = ProfilerState;
    /// Raw gradients measured earlier in this run (after a restart or a resume).
    type Arguments = Option<Vec<f64>>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        raw_grad: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ProfilerState { raw_grad })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ProfilerMsg::Profile { iteration, reply } = msg;
        let start = Instant::now();
        if self
            .faults
            .fire("profiler", self.faults.profiler_panic_at, iteration)
        {
            panic!("injected Profiler panic at iteration {iteration}");
        }
        let engine = self.engine.clone();
        let due = self.gradient_samples > 0
            && (iteration.saturating_sub(1) % self.gradient_every == 0 || state.raw_grad.is_none());
        let job = Job {
            activation_samples: self.activation_samples,
            gradient_samples: self.gradient_samples,
            gradient_due: due,
            percentile: self.percentile,
            costs: self.costs,
        };
        let result = blocking(move || job.run(&engine)).await;
        let out = result.map(|(sens, grad, act, profiles)| {
            let grad = match grad {
                Some(g) => {
                    state.raw_grad = Some(g.clone());
                    g
                }
                None => state
                    .raw_grad
                    .clone()
                    .unwrap_or_else(|| vec![0.0; sens.len()]),
            };
            let z_grad = z(&grad);
            let profiles = profiles
                .into_iter()
                .zip(&z_grad)
                .map(|(mut p, zg)| {
                    p.z_grad = *zg;
                    p
                })
                .collect();
            let report = ProfileReport {
                iteration,
                profiles,
                act_sum_sq: act,
                raw_sens: sens,
                raw_grad: grad,
                grad_collected: due,
            };
            (report, start.elapsed().as_millis() as u64)
        });
        let _ = reply.send(out);
        Ok(())
    }
}

/// z-scores (paper eq. 3); all-zero for constant or empty input.
fn z(values: &[f64]) -> Vec<f64> {
    kernels::z_scores(values).unwrap_or_else(|_| vec![0.0; values.len()])
}

/// One profiling pass, run on a blocking thread.
struct Job {
    activation_samples: usize,
    gradient_samples: usize,
    /// Recollect the gradient importance this iteration.
    gradient_due: bool,
    percentile: f64,
    costs: Option<CostSpec>,
}

type JobOut = (Vec<f64>, Option<Vec<f64>>, Vec<Vec<f32>>, Vec<LayerProfile>);

impl Job {
    fn run(&self, engine: &Engine) -> Result<JobOut, ActorError> {
        let model = &engine.model;
        let err = |e: &dyn std::fmt::Display| ActorError::Model(format!("profiler: {e}"));
        // Costs need the output Fisher, i.e. a backward pass every iteration; the
        // gradient importance itself is only taken from it when due.
        let costs = self.costs.filter(|_| self.gradient_samples > 0);
        let (grads, fisher) = if self.gradient_due || costs.is_some() {
            let samples: Vec<Vec<u32>> = engine
                .calib
                .iter()
                .take(self.gradient_samples)
                .cloned()
                .collect();
            // One number per layer, reduced as the gradients appear: the per-weight
            // gradients never exist all at once.
            let g = model
                .gradient_profile(&samples, costs.is_some())
                .map_err(|e| err(&e))?;
            (self.gradient_due.then_some(g.means), g.output_fisher)
        } else {
            (None, HashMap::new())
        };
        let samples = &engine.calib[..self.activation_samples.min(engine.calib.len())];
        model.reset_stats();
        model.set_stats_enabled(true);
        let pass = match costs {
            Some(spec) => crate::costs::measure(engine, samples, &fisher, spec),
            None => statistics_forward(engine, samples).map(|()| HashMap::new()),
        };
        model.set_stats_enabled(false);
        let mut curves = pass?;
        let stats = model.take_stats();
        let mut sens = Vec::with_capacity(engine.layers.len());
        let mut grad = Vec::with_capacity(engine.layers.len());
        let mut act = Vec::with_capacity(engine.layers.len());
        let mut profiles = Vec::with_capacity(engine.layers.len());
        for info in &engine.layers {
            let name = info.name.as_str();
            let sum_sq = match stats.get(name) {
                Some(s) => s.sum_sq.to_dtype(candle_core::DType::F32),
                None => Tensor::zeros(info.in_features, candle_core::DType::F32, model.device()),
            }
            .map_err(|e| err(&e))?;
            // The committed state is the model's in-place pruning (the Executor's).
            let mask = match model.pruned_mask(name).map_err(|e| err(&e))? {
                Some(m) => m,
                None => Arc::new(Mask::ones(info.out_features, info.in_features)),
            };
            let w = model.layer_weight(name).map_err(|e| err(&e))?;
            let scores = kernels::wanda_scores(&w, &sum_sq).map_err(|e| err(&e))?;
            // A fully pruned layer has no active score: its sensitivity is 0.
            let s = kernels::layer_sensitivity(&scores, &mask, self.percentile).unwrap_or(0.0);
            sens.push(s);
            if let Some(g) = &grads {
                // A fully pruned layer has no kept weight, hence no entry: 0.
                grad.push(g.get(name).copied().unwrap_or(0.0));
            }
            act.push(sum_sq.to_vec1::<f32>().map_err(|e| err(&e))?);
            profiles.push(LayerProfile {
                name: name.to_string(),
                z_sens: 0.0,
                z_grad: 0.0,
                sparsity: mask.sparsity(),
                params: mask.len() as u64,
                cost: curves.remove(name).unwrap_or_default(),
            });
        }
        let z_sens = z(&sens);
        for (p, zs) in profiles.iter_mut().zip(z_sens) {
            p.z_sens = zs;
        }
        Ok((sens, grads.map(|_| grad), act, profiles))
    }
}

/// A forward over `samples` for the activation statistics only (no costs measured).
fn statistics_forward(engine: &Engine, samples: &[Vec<u32>]) -> Result<(), ActorError> {
    let model = &engine.model;
    let err = |e: &dyn std::fmt::Display| ActorError::Model(format!("profiler: {e}"));
    // Up to FORWARD_BATCH sequences of equal length (the pool's are all
    // `calibration.seq_len`) go through the model as one `[batch, seq]` forward:
    // bigger matmuls, the same Σx².
    let groups = samples
        .chunk_by(|a, b| a.len() == b.len())
        .flat_map(|run| run.chunks(model::FORWARD_BATCH));
    for group in groups {
        let ids: Vec<u32> = group.iter().flatten().copied().collect();
        let t = Tensor::from_vec(ids, (group.len(), group[0].len()), model.device())
            .map_err(|e| err(&e))?;
        // Statistics only: the logits would be dropped unused.
        model.forward_hidden(&t).map_err(|e| err(&e))?;
    }
    Ok(())
}
