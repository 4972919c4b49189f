//! A synthetic target model for testing planners and the pruning loop without tensors.
//!
//! Each layer has a hidden true sensitivity; perplexity grows as
//! `PPL = PPL₀ · exp(c · Σ params·s²·sens / Σ params)`, so pruning a sensitive or an
//! already-sparse layer costs more (the convexity every real model shows). The profiles
//! it reports are z-scores of noisy observations of that sensitivity, rising with the
//! layer's sparsity as the real Wanda percentile does. Shapes default to
//! SmolLM2-135M's (30 blocks × 7 projections). Public so the actor tests can drive a
//! whole loop with it.

use protocol::{
    global_sparsity, Feedback, IterationOutcome, IterationRecord, LayerDecision, LayerProfile,
    Plan, PlanRequest,
};

use crate::rng::unit;

/// (name suffix, rows, cols, relative sensitivity) of SmolLM2-135M's projections.
const KINDS: [(&str, u64, u64, f64); 7] = [
    ("self_attn.q_proj", 576, 576, 0.6),
    ("self_attn.k_proj", 192, 576, 0.5),
    ("self_attn.v_proj", 192, 576, 1.2),
    ("self_attn.o_proj", 576, 576, 1.0),
    ("mlp.gate_proj", 1536, 576, 0.8),
    ("mlp.up_proj", 1536, 576, 0.9),
    ("mlp.down_proj", 576, 1536, 1.5),
];

/// The synthetic model's state: layers, hidden sensitivities, current sparsities.
#[derive(Debug, Clone)]
pub struct SimModel {
    pub names: Vec<String>,
    pub params: Vec<u64>,
    /// Hidden true sensitivity per layer (what a good planner should infer).
    pub sens: Vec<f64>,
    pub sparsity: Vec<f64>,
    pub base_ppl: f64,
    /// `c` in the PPL formula.
    pub curvature: f64,
}

impl SimModel {
    /// `blocks` × 7 layers with SmolLM2-like shapes; early and late blocks are more
    /// sensitive. `uniform_half_ppl_ratio` sets how much uniform 50 % pruning multiplies
    /// PPL (e.g. 2.0), which fixes the curvature.
    pub fn smollm_like(blocks: usize, seed: u64, uniform_half_ppl_ratio: f64) -> Self {
        let mut rng = seed ^ 0x5EC4_7E02;
        let (mut names, mut params, mut sens) = (Vec::new(), Vec::new(), Vec::new());
        for b in 0..blocks {
            let bf = b as f64;
            let last = (blocks.max(1) - 1) as f64;
            let block_factor = 1.0 + 1.5 * (-bf / 2.0).exp() + 0.8 * (-(last - bf) / 2.0).exp();
            for (kind, rows, cols, kind_factor) in KINDS {
                names.push(format!("model.layers.{b}.{kind}"));
                params.push(rows * cols);
                let noise = (0.6 * (unit(&mut rng) - 0.5)).exp();
                sens.push(kind_factor * block_factor * noise);
            }
        }
        let mut m = Self {
            sparsity: vec![0.0; names.len()],
            names,
            params,
            sens,
            base_ppl: 10.0,
            curvature: 1.0,
        };
        // Choose c so that uniform 50 % gives the requested PPL ratio.
        let load = m.load(&vec![0.5; m.names.len()]);
        m.curvature = uniform_half_ppl_ratio.max(1.0 + 1e-9).ln() / load;
        m
    }

    fn total(&self) -> f64 {
        self.params.iter().map(|&p| p as f64).sum()
    }

    /// Σ params·s²·sens / Σ params.
    fn load(&self, sparsity: &[f64]) -> f64 {
        let t = self.total();
        self.params
            .iter()
            .zip(sparsity)
            .zip(&self.sens)
            .map(|((&p, &s), &k)| p as f64 * s * s * k)
            .sum::<f64>()
            / t
    }

    /// Current perplexity.
    pub fn ppl(&self) -> f64 {
        self.ppl_of(&self.sparsity)
    }

    fn ppl_of(&self, sparsity: &[f64]) -> f64 {
        self.base_ppl * (self.curvature * self.load(sparsity)).exp()
    }

    /// Perplexity after uniform pruning of every layer to `s` (the baseline to beat).
    pub fn uniform_ppl(&self, s: f64) -> f64 {
        self.ppl_of(&vec![s; self.names.len()])
    }

    /// Sparsities after applying `decisions` (unknown layers ignored, capped at 1).
    pub fn with(&self, decisions: &[LayerDecision]) -> Vec<f64> {
        let mut s = self.sparsity.clone();
        for d in decisions {
            if let Some(i) = self.names.iter().position(|n| *n == d.layer) {
                s[i] = (s[i] + d.delta.max(0.0)).min(1.0);
            }
        }
        s
    }

    /// Perplexity `decisions` would give, without applying them.
    pub fn ppl_with(&self, decisions: &[LayerDecision]) -> f64 {
        self.ppl_of(&self.with(decisions))
    }

    pub fn apply(&mut self, decisions: &[LayerDecision]) {
        self.sparsity = self.with(decisions);
    }

    /// Global parameter-weighted sparsity.
    pub fn global_sparsity(&self) -> f64 {
        global_sparsity(&self.profiles())
    }

    /// What the profiler would report now: z-scores of noisy sensitivity observations.
    pub fn profiles(&self) -> Vec<LayerProfile> {
        let mut rng = 0xC0FFEE_u64;
        let raw_sens: Vec<f64> = self
            .sens
            .iter()
            .zip(&self.sparsity)
            .map(|(&k, &s)| k.ln() + 2.0 * s + 0.2 * (unit(&mut rng) - 0.5))
            .collect();
        let raw_grad: Vec<f64> = self
            .sens
            .iter()
            .map(|&k| k.ln() + 0.6 * (unit(&mut rng) - 0.5))
            .collect();
        let (zs, zg) = (zscore(&raw_sens), zscore(&raw_grad));
        (0..self.names.len())
            .map(|i| LayerProfile {
                name: self.names[i].clone(),
                z_sens: zs[i],
                z_grad: zg[i],
                sparsity: self.sparsity[i],
                params: self.params[i],
                cost: Vec::new(),
            })
            .collect()
    }
}

/// (x − μ) / (σ + 1e-9), the paper's normalisation (eq. 3).
pub fn zscore(x: &[f64]) -> Vec<f64> {
    let n = x.len().max(1) as f64;
    let mean = x.iter().sum::<f64>() / n;
    let sd = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    x.iter().map(|v| (v - mean) / (sd + 1e-9)).collect()
}

/// τ of a [`SimRun`].
const RUN_TAU: f64 = 0.15;

/// A run on the synthetic model: its state and history, advanced by the plans of the
/// planner under test.
pub struct SimRun {
    pub sim: SimModel,
    history: Vec<IterationRecord>,
    iteration: u32,
}

impl SimRun {
    /// SmolLM2-135M's shapes (30 blocks), target 50 %, 40 iterations, τ = 15 %.
    pub fn smollm_like() -> Self {
        Self {
            sim: SimModel::smollm_like(30, 7, 2.0),
            history: Vec::new(),
            iteration: 1,
        }
    }

    /// The request for the next iteration.
    pub fn request(&self) -> PlanRequest {
        let mut r = PlanRequest::new(
            self.iteration,
            40,
            self.sim.profiles(),
            0.5,
            self.sim.base_ppl,
            self.sim.ppl(),
            RUN_TAU,
        );
        // What the loop's critic asks with its default rules (layer cap, minimum gain,
        // recently rolled-back layers).
        r.constraints =
            config::CriticRules::default().plan_constraints(&self.history, self.iteration);
        r.history = self.history.clone();
        r
    }

    /// Apply `plan` (rolled back above τ) and record feedback shaped like the critic's.
    pub fn advance(&mut self, plan: Plan) {
        let (s0, p0) = (self.sim.global_sparsity(), self.sim.ppl());
        let p1 = self.sim.ppl_with(&plan.layer_decisions);
        let rolled_back = p1 > p0 * (1.0 + RUN_TAU);
        let mut after = self.sim.clone();
        after.apply(&plan.layer_decisions);
        let s1 = after.global_sparsity();
        if !rolled_back {
            self.sim = after;
        }
        let outcome = IterationOutcome {
            iteration: self.iteration,
            sparsity_before: s0,
            sparsity_after: s1,
            ppl_before: p0,
            ppl_after: p1,
            rolled_back,
        };
        let summary = format!(
            "Your reasoning: \"{}\"\nYour decisions ({} layers): {}.\nResult: global sparsity {s0:.4} -> {s1:.4} ({:+.2} pp); PPL {p0:.3} -> {p1:.3} ({:+.1}%; rollback threshold {:.1}%).",
            plan.reasoning.trim(),
            plan.layer_decisions.len(),
            crate::prompt::decisions_text(&plan.layer_decisions, 12),
            (s1 - s0) * 100.0,
            outcome.ppl_change() * 100.0,
            RUN_TAU * 100.0
        );
        let assessment = if rolled_back {
            "Poor - Excessive PPL degradation, rolled back"
        } else {
            "Good - Solid sparsity gain with acceptable PPL impact"
        };
        self.history.push(IterationRecord {
            plan,
            outcome,
            feedback: Feedback {
                iteration: self.iteration,
                summary,
                assessment: assessment.into(),
            },
        });
        self.iteration += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_half_hits_requested_ratio_and_shapes_match_smollm() {
        let m = SimModel::smollm_like(30, 1, 2.0);
        assert_eq!(m.names.len(), 210);
        assert_eq!(m.params[0], 576 * 576);
        assert_eq!(m.params[6], 576 * 1536);
        assert!((m.uniform_ppl(0.5) / m.base_ppl - 2.0).abs() < 1e-9);
        assert_eq!(m.ppl(), m.base_ppl);
    }

    #[test]
    fn zscores_are_standardised() {
        let z = zscore(&[1.0, 2.0, 3.0, 4.0]);
        assert!(z.iter().sum::<f64>().abs() < 1e-12);
        let var = z.iter().map(|v| v * v).sum::<f64>() / 4.0;
        assert!((var - 1.0).abs() < 1e-6);
    }
}
