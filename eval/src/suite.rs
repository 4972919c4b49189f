//! The evaluation suite `secateur eval` and `secateur compare` share: MMLU and factual QA
//! question sets with their shot splits ([`SuiteSpec::load`]), scored on one model or
//! overlay ([`run_suite`]), described with chance level and flag ([`describe_suite`]),
//! and perplexity over a token stream in non-overlapping windows ([`perplexity`]).
//! One place holds the rules (shots are never scored; limits are stated in every
//! report), so both commands apply them alike.
//!
//! [`SuiteSpec`] is plain serde data: its JSON is part of `compare.json` and of the key
//! of compare's dense cache, so its field names and order are a file format. The command
//! line flags that fill it live in the binary (this crate knows no CLI library).

use std::path::{Path, PathBuf};

use model::{Model, Perplexity, WeightOverlay};
use serde::{Deserialize, Serialize};

use crate::data::{self, McqItem, QaItem};
use crate::mmlu::{self, MmluOptions, MmluResult};
use crate::progress::Progress;
use crate::qa::{self, PromptStyle, QaOptions, QaResult};
use crate::verdict::{chance_level, Verdict};
use crate::{EvalError, Result, Target};

/// MMLU and QA settings; each field is the command-line flag of the same name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SuiteSpec {
    /// MMLU questions (csv, a folder of csv, or jsonl); `None`: no MMLU.
    pub mmlu: Option<PathBuf>,
    /// A separate shot split for MMLU; without it the last `shots` questions of `mmlu`.
    pub mmlu_shots_from: Option<PathBuf>,
    /// MMLU shots per question.
    pub shots: usize,
    /// Score at most this many MMLU questions (the first ones; 0 = all).
    pub mmlu_limit: usize,
    pub mmlu_style: PromptStyle,
    /// Factual QA questions (NQ-open jsonl or FreebaseQA json); `None`: no QA.
    pub qa: Option<PathBuf>,
    /// A separate shot split for QA; without it the last `qa_shots` questions of `qa`.
    pub qa_shots_from: Option<PathBuf>,
    /// QA shots per question.
    pub qa_shots: usize,
    /// Score at most this many QA questions (0 = all).
    pub qa_limit: usize,
    /// `None`: chat when the model has a chat template, raw otherwise.
    pub qa_style: Option<PromptStyle>,
    /// In chat style, prefix questions with the LLM-KICK sentence.
    pub qa_kick_sentence: bool,
    /// Longest generated answer, in tokens.
    pub max_new_tokens: usize,
    /// Longest MMLU prompt in tokens (shots are dropped to fit).
    pub max_prompt_tokens: usize,
}

/// Scored questions and the shot split they draw from, per set.
pub struct Sets {
    pub mmlu: Option<(Vec<McqItem>, Vec<McqItem>)>,
    pub qa: Option<(Vec<QaItem>, Vec<QaItem>)>,
}

/// The first `n` items (0 = all).
fn limit<T>(mut v: Vec<T>, n: usize) -> Vec<T> {
    if n > 0 {
        v.truncate(n);
    }
    v
}

/// Split off the shot pool: from `from` minus every scored-file question, or the last
/// `shots` items of the scored file (which are then not scored).
fn split<T: Clone>(
    all: Vec<T>,
    from: Option<Vec<T>>,
    shots: usize,
    remove: impl Fn(Vec<T>, &[T]) -> Vec<T>,
) -> (Vec<T>, Vec<T>) {
    match from {
        Some(pool) => {
            let pool = remove(pool, &all);
            (all, pool)
        }
        None => {
            let keep = all.len().saturating_sub(shots);
            let pool = all[keep..].to_vec();
            (all[..keep].to_vec(), pool)
        }
    }
}

/// One set's scored questions (limited) and shot pool, read from `path` and the
/// optional shot file; errors when the pool holds fewer than `shots` questions.
#[allow(clippy::too_many_arguments)]
fn load_set<T: Clone>(
    path: &Path,
    shots_from: Option<&Path>,
    shots: usize,
    max_scored: usize,
    read: fn(&Path) -> Result<Vec<T>>,
    remove: fn(Vec<T>, &[T]) -> Vec<T>,
    set: &'static str,
    flag: &'static str,
) -> Result<(Vec<T>, Vec<T>)> {
    let from = shots_from.map(read).transpose()?;
    let (scored, pool) = split(read(path)?, from, shots, remove);
    if pool.len() < shots {
        return Err(EvalError::ShotSplit {
            path: path.to_path_buf(),
            set,
            have: pool.len(),
            flag,
            shots,
        });
    }
    Ok((limit(scored, max_scored), pool))
}

impl SuiteSpec {
    /// Read the question sets and split off their shots. Errors name the file and the
    /// flag: a shot split too small for the shots asked for, or a set left empty.
    pub fn load(&self) -> Result<Sets> {
        let mmlu = self
            .mmlu
            .as_deref()
            .map(|p| {
                load_set(
                    p,
                    self.mmlu_shots_from.as_deref(),
                    self.shots,
                    self.mmlu_limit,
                    data::read_mmlu,
                    mmlu::shot_pool,
                    "MMLU",
                    "--shots",
                )
            })
            .transpose()?;
        let qa = self
            .qa
            .as_deref()
            .map(|p| {
                load_set(
                    p,
                    self.qa_shots_from.as_deref(),
                    self.qa_shots,
                    self.qa_limit,
                    data::read_qa,
                    qa::shot_pool,
                    "QA",
                    "--qa-shots",
                )
            })
            .transpose()?;
        for (set, n) in [
            ("MMLU", mmlu.as_ref().map(|m| m.0.len())),
            ("QA", qa.as_ref().map(|q| q.0.len())),
        ] {
            if n == Some(0) {
                return Err(EvalError::NothingToScore { set });
            }
        }
        Ok(Sets { mmlu, qa })
    }

    /// The MMLU settings of one evaluation.
    pub fn mmlu_options(&self) -> MmluOptions {
        MmluOptions {
            shots: self.shots,
            style: self.mmlu_style,
            max_prompt_tokens: self.max_prompt_tokens,
        }
    }

    /// The QA settings of one evaluation; the style defaults by whether the model has a
    /// chat template.
    pub fn qa_options(&self, has_template: bool) -> QaOptions {
        QaOptions {
            style: self
                .qa_style
                .unwrap_or(PromptStyle::default_for(has_template)),
            shots: self.qa_shots,
            max_new_tokens: self.max_new_tokens,
            chat_kick_sentence: self.qa_kick_sentence,
            keep_samples: 5,
        }
    }
}

/// MMLU and QA results of one model (or one pruned overlay).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SuiteResult {
    pub mmlu: Option<MmluResult>,
    pub qa: Option<QaResult>,
}

impl SuiteResult {
    /// The MMLU score against its chance level (meaningful for a dense result).
    pub fn mmlu_verdict(&self) -> Option<Verdict> {
        self.mmlu
            .as_ref()
            .map(|m| Verdict::assess(m.accuracy, m.chance, m.questions))
    }

    /// The QA score against zero (open answers have no chance level).
    pub fn qa_verdict(&self) -> Option<Verdict> {
        self.qa
            .as_ref()
            .map(|q| Verdict::assess(q.accuracy, chance_level(0), q.questions))
    }
}

/// Score the loaded sets on `target`; `label` names the row in progress tasks
/// (`"{label} MMLU"`, `"{label} QA"`).
pub fn run_suite(
    target: &Target<'_>,
    sets: &Sets,
    spec: &SuiteSpec,
    label: &str,
    progress: &dyn Progress,
) -> Result<SuiteResult> {
    let wrap = |set| {
        move |e| EvalError::Suite {
            set,
            source: Box::new(e),
        }
    };
    let mut out = SuiteResult::default();
    if let Some((items, pool)) = &sets.mmlu {
        let task = progress.task(items.len() as u64, &format!("{label} MMLU"));
        let opts = spec.mmlu_options();
        out.mmlu = Some(
            mmlu::evaluate(target, items, pool, &opts, &|| task.advance(1))
                .map_err(wrap("MMLU"))?,
        );
        task.finish();
    }
    if let Some((items, pool)) = &sets.qa {
        let task = progress.task(items.len() as u64, &format!("{label} QA"));
        let opts = spec.qa_options(target.template.is_some());
        out.qa = Some(
            qa::evaluate(target, items, pool, &opts, &|| task.advance(1))
                .map_err(wrap("factual QA"))?,
        );
        task.finish();
    }
    Ok(out)
}

/// Perplexity of a token stream in non-overlapping windows of `window` tokens (the
/// WikiText-2 protocol; a last window of one token scores nothing and is dropped), a
/// batch of windows per forward, one progress step per window.
pub fn perplexity(
    model: &Model,
    overlay: Option<&WeightOverlay>,
    tokens: &[u32],
    window: usize,
    label: &str,
    progress: &dyn Progress,
) -> Result<Perplexity> {
    if window < 2 {
        return Err(EvalError::Window(window));
    }
    let chunks: Vec<&[u32]> = tokens.chunks(window).filter(|c| c.len() >= 2).collect();
    let task = progress.task(chunks.len() as u64, &format!("{label} perplexity"));
    let mut parts = Vec::with_capacity(chunks.len());
    // A batch of windows per forward (what `Model::perplexity_with` does without the
    // progress steps).
    for batch in chunks.chunks(model::FORWARD_BATCH) {
        parts.extend(model.perplexity_each(batch, model::FORWARD_BATCH, overlay)?);
        task.advance(batch.len() as u64);
    }
    task.finish();
    Ok(Perplexity::combine(&parts)?)
}

/// Text lines for the MMLU / QA results, with chance level and the flag; QA adds up to
/// three sample answers as indented `  e.g.` lines.
pub fn describe_suite(r: &SuiteResult) -> Vec<String> {
    let mut lines = Vec::new();
    if let (Some(m), Some(v)) = (&r.mmlu, r.mmlu_verdict()) {
        lines.push(format!(
            "MMLU {}-shot ({}): {:.1} % ({}/{} questions, {:.0} prompt tokens on average, {:.2} s/question) — {}",
            m.shots,
            m.style.name(),
            100.0 * m.accuracy,
            m.correct,
            m.questions,
            m.mean_prompt_tokens,
            m.seconds / m.questions as f64,
            v.describe()
        ));
    }
    if let (Some(q), Some(v)) = (&r.qa, r.qa_verdict()) {
        lines.push(format!(
            "factual QA {}-shot ({}, ≤{} new tokens): {:.1} % ({}/{} questions, {:.2} s/question) — {}",
            q.shots,
            q.style.name(),
            q.max_new_tokens,
            100.0 * q.accuracy,
            q.correct,
            q.questions,
            q.seconds_per_question,
            v.describe()
        ));
        for s in q.samples.iter().take(3) {
            lines.push(format!(
                "  e.g. {:?} → {:?} ({})",
                s.question,
                s.continuation.trim(),
                if s.correct { "correct" } else { "wrong" }
            ));
        }
    }
    lines
}

#[cfg(test)]
#[path = "suite_tests.rs"]
mod tests;
