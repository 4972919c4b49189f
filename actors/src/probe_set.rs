//! The in-loop knowledge probe (`[evaluation.probe]`, DESIGN.md §7): a fixed set of
//! factual questions answered with the `eval` crate's QA machinery (same prompt
//! styles, greedy generation, alias matching on the continuation only) by the dense
//! model before iteration 1, by the model committed after every `every`-th iteration,
//! and by the final model. Perplexity hides knowledge loss (the paper's own
//! motivation), so the report plots this next to it.
//!
//! Where the points come from and where they are stored:
//! - dense (iteration 0): measured with PPL₀ in `begin`, stored in [`protocol::RunMeta`];
//! - iteration t with `t % every == 0`: measured on the candidate about to be
//!   committed (committed masks + its delta, the exact model the commit produces), or
//!   on the committed model after a rollback, and stored in that iteration's
//!   [`protocol::StoredIteration`] — the same transaction, so a crash never loses it;
//! - final: when a run finishes and its last iteration had no point, measured on the
//!   committed model and stored in the checkpoint's `final_probe` tree.
//!
//! The probe always runs in the Evaluator, off the async executor; the loop's probe
//! stages are in [`crate::pipeline::probe`].

use std::path::PathBuf;
use std::sync::Arc;

use config::{ProbeConfig, ProbeStyle};
use eval::data::QaItem;
use eval::probe::ProbeScore;
use eval::qa::{PromptStyle, QaOptions};
use eval::verdict::{chance_level, Verdict};
use eval::{Codec, Target};
use model::{ChatTemplate, Model, WeightOverlay};
use protocol::{ProbePoint, ProbeSeries};

/// The probe's fixed inputs: the selected questions and how to put them to the model.
pub struct ProbeSet {
    pub path: PathBuf,
    pub every: u32,
    /// The questions asked at every point (the same ones each time).
    pub questions: Vec<QaItem>,
    pub opts: QaOptions,
    codec: Arc<dyn Codec>,
    template: Option<ChatTemplate>,
    stop_tokens: Vec<u32>,
}

impl ProbeSet {
    /// Read the question file and take the fixed subset: `questions` of them spread
    /// evenly over the file ([`eval::probe::select`]), so every point asks the same ones.
    /// Called before the checkpoint is loaded, so a bad file fails the run at set-up
    /// with an error naming it.
    pub fn read_questions(cfg: &ProbeConfig) -> Result<Vec<QaItem>, String> {
        let all =
            eval::data::read_qa(&cfg.path).map_err(|e| format!("evaluation.probe.path: {e}"))?;
        let picked = eval::probe::select(&all, cfg.questions);
        if picked.is_empty() {
            return Err(format!(
                "evaluation.probe.path: {}: no questions selected",
                cfg.path.display()
            ));
        }
        Ok(picked)
    }

    /// The probe for a model with `template` (if any): `auto` takes `chat` when the
    /// model has a chat template and `raw` otherwise, as the final QA evaluation does;
    /// an explicit `chat` on a model without a template is refused here, at set-up.
    pub fn new(
        cfg: &ProbeConfig,
        questions: Vec<QaItem>,
        codec: Arc<dyn Codec>,
        template: Option<ChatTemplate>,
        stop_tokens: Vec<u32>,
    ) -> Result<Self, String> {
        let style = match cfg.style {
            ProbeStyle::Auto => PromptStyle::default_for(template.is_some()),
            ProbeStyle::Raw => PromptStyle::Raw,
            ProbeStyle::Chat if template.is_none() => {
                return Err(
                    "evaluation.probe.style = \"chat\": the model has no chat template \
(use \"raw\" or \"auto\")"
                        .into(),
                )
            }
            ProbeStyle::Chat => PromptStyle::Chat,
        };
        Ok(Self {
            path: cfg.path.clone(),
            every: cfg.every,
            questions,
            opts: QaOptions {
                style,
                max_new_tokens: cfg.max_new_tokens,
                ..QaOptions::default()
            },
            codec,
            template,
            stop_tokens,
        })
    }

    /// Answer the questions on `model` with `overlay` (a candidate's keep bits, or
    /// `None` for the committed model). Heavy: call from a blocking thread.
    pub fn score(
        &self,
        model: &Model,
        overlay: Option<&WeightOverlay>,
    ) -> Result<ProbeScore, String> {
        let target = Target {
            model,
            overlay,
            codec: self.codec.as_ref(),
            template: self.template.as_ref(),
            stop_tokens: &self.stop_tokens,
        };
        eval::probe::knowledge_probe(&target, &self.questions, &self.opts)
            .map_err(|e| format!("knowledge probe: {e}"))
    }

    /// The run's series from its points, with the `eval` crate's verdict on the dense
    /// point (open answers: chance 0; fewer than 20 questions is always flagged).
    pub fn series(&self, points: &[ProbePoint]) -> ProbeSeries {
        let chance = chance_level(0);
        let informative = points
            .first()
            .filter(|p| p.iteration == 0)
            .is_some_and(|d| Verdict::assess(d.accuracy, chance, d.total).informative);
        ProbeSeries {
            path: self.path.display().to_string(),
            style: self.opts.style.name().to_string(),
            questions: self.questions.len(),
            every: self.every,
            chance,
            informative,
            points: points.to_vec(),
        }
    }
}

/// A stored point from a score and the state it measured.
pub fn point(iteration: u32, sparsity: f64, ppl: f64, s: &ProbeScore) -> ProbePoint {
    ProbePoint {
        iteration,
        sparsity,
        ppl,
        correct: s.correct,
        total: s.total,
        accuracy: s.accuracy,
        seconds: s.seconds,
    }
}
