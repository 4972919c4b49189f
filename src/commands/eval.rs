//! `secateur eval`: perplexity over a text (WikiText-2 protocol), and optionally MMLU
//! (k-shot, letter log-likelihood) and factual QA (LLM-KICK, `raw` or `chat` prompts).
//! Every accuracy is printed next to its chance level and flagged when the (dense)
//! model is too close to chance or zero for the number to mean anything.
//!
//! The question sets and their shot splits are loaded by [`SuiteArgs::load`] and
//! scored by [`run_suite`], which `secateur compare` shares, so both commands apply
//! the same rules (shots are never scored; limits are stated in every report).

use std::path::PathBuf;
use std::time::Instant;

use ::eval::data::{McqItem, QaItem};
use ::eval::mmlu::{self, MmluOptions, MmluResult};
use ::eval::qa::{self, PromptStyle, QaOptions, QaResult};
use ::eval::verdict::{chance_level, Verdict};
use ::eval::Target;
use anyhow::{bail, Context, Result};
use model::{Model, Perplexity, WeightOverlay, DEFAULT_PPL_WINDOW};
use serde::{Deserialize, Serialize};

use super::common;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// GGUF file or HF directory (default: the fetched SmolLM2-135M-Instruct).
    model: Option<PathBuf>,
    /// Text to score: a plain text file (WikiText raw), `FILE.jsonl:FIELD`, or C4
    /// `FILE.json[.gz]`.
    #[arg(long, default_value = config::assets::PPL_TEXT_SPEC)]
    ppl: String,
    /// At most this many JSONL records for perplexity (0 = all).
    #[arg(long, default_value_t = 200)]
    limit: usize,
    /// Perplexity window length in tokens (non-overlapping windows).
    #[arg(long, default_value_t = DEFAULT_PPL_WINDOW)]
    window: usize,
    /// Skip perplexity (e.g. when only MMLU or QA is wanted).
    #[arg(long)]
    no_ppl: bool,
    #[command(flatten)]
    suite: SuiteArgs,
    #[command(flatten)]
    device: common::DeviceArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// MMLU and QA settings shared by `eval` and `compare`.
#[derive(clap::Args, Clone, Serialize, Deserialize, PartialEq)]
pub struct SuiteArgs {
    /// MMLU questions: HF/Hendrycks csv (or a folder of them) or jsonl.
    #[arg(long)]
    pub mmlu: Option<PathBuf>,
    /// Shot split for MMLU (questions also in --mmlu are removed). Without it, the
    /// last --shots questions of --mmlu are the shots and are not scored.
    #[arg(long)]
    pub mmlu_shots_from: Option<PathBuf>,
    /// MMLU shots per question.
    #[arg(long, default_value_t = 5)]
    pub shots: usize,
    /// Score at most this many MMLU questions (the first ones; 0 = all).
    #[arg(long, default_value_t = 100)]
    pub mmlu_limit: usize,
    /// MMLU prompt style: raw (Hendrycks text) or chat (same text as the user turn).
    #[arg(long, default_value = "raw")]
    pub mmlu_style: PromptStyle,
    /// Factual QA questions: NQ-open style jsonl or FreebaseQA json.
    #[arg(long)]
    pub qa: Option<PathBuf>,
    /// Shot split for QA (questions also in --qa are removed); needed for --qa-shots > 0
    /// unless the last --qa-shots questions of --qa may serve.
    #[arg(long)]
    pub qa_shots_from: Option<PathBuf>,
    /// QA shots per question (default 0, as LLM-KICK).
    #[arg(long, default_value_t = 0)]
    pub qa_shots: usize,
    /// Score at most this many QA questions (0 = all).
    #[arg(long, default_value_t = 100)]
    pub qa_limit: usize,
    /// QA prompt style: raw (LLM-KICK prompt) or chat; default chat when the model has
    /// a chat template, raw otherwise.
    #[arg(long)]
    pub qa_style: Option<PromptStyle>,
    /// In chat style, prefix questions with the LLM-KICK sentence.
    #[arg(long)]
    pub qa_kick_sentence: bool,
    /// Longest generated answer, in tokens.
    #[arg(long, default_value_t = 24)]
    pub max_new_tokens: usize,
    /// Longest MMLU prompt in tokens (shots are dropped to fit).
    #[arg(long, default_value_t = 1024)]
    pub max_prompt_tokens: usize,
}

/// Scored questions and the shot split they draw from.
pub struct Sets {
    pub mmlu: Option<(Vec<McqItem>, Vec<McqItem>)>,
    pub qa: Option<(Vec<QaItem>, Vec<QaItem>)>,
}

fn limit<T>(mut v: Vec<T>, n: usize) -> Vec<T> {
    if n > 0 {
        v.truncate(n);
    }
    v
}

/// Split off the shot pool: from `from` minus every scored-file question, or the last
/// `shots` items of the scored file.
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

impl SuiteArgs {
    pub fn load(&self) -> Result<Sets> {
        let mmlu = match &self.mmlu {
            None => None,
            Some(p) => {
                let from = self
                    .mmlu_shots_from
                    .as_deref()
                    .map(::eval::data::read_mmlu)
                    .transpose()?;
                let (scored, pool) = split(
                    ::eval::data::read_mmlu(p)?,
                    from,
                    self.shots,
                    mmlu::shot_pool,
                );
                if pool.len() < self.shots {
                    bail!(
                        "{}: the MMLU shot split has {} questions, --shots is {}",
                        p.display(),
                        pool.len(),
                        self.shots
                    );
                }
                Some((limit(scored, self.mmlu_limit), pool))
            }
        };
        let qa = match &self.qa {
            None => None,
            Some(p) => {
                let from = self
                    .qa_shots_from
                    .as_deref()
                    .map(::eval::data::read_qa)
                    .transpose()?;
                let (scored, pool) = split(
                    ::eval::data::read_qa(p)?,
                    from,
                    self.qa_shots,
                    qa::shot_pool,
                );
                if pool.len() < self.qa_shots {
                    bail!(
                        "{}: the QA shot split has {} questions, --qa-shots is {}",
                        p.display(),
                        pool.len(),
                        self.qa_shots
                    );
                }
                Some((limit(scored, self.qa_limit), pool))
            }
        };
        for (what, n) in [
            ("MMLU", mmlu.as_ref().map(|m| m.0.len())),
            ("QA", qa.as_ref().map(|q| q.0.len())),
        ] {
            if n == Some(0) {
                bail!("{what}: no questions left to score after taking the shots");
            }
        }
        Ok(Sets { mmlu, qa })
    }

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

/// Score the loaded sets on `target`, with progress bars unless `quiet`.
pub fn run_suite(
    target: &Target<'_>,
    sets: &Sets,
    args: &SuiteArgs,
    label: &str,
    quiet: bool,
) -> Result<SuiteResult> {
    let mut out = SuiteResult::default();
    if let Some((items, pool)) = &sets.mmlu {
        let bar = common::progress(items.len() as u64, &format!("{label} MMLU"), quiet);
        let opts = MmluOptions {
            shots: args.shots,
            style: args.mmlu_style,
            max_prompt_tokens: args.max_prompt_tokens,
        };
        out.mmlu =
            Some(mmlu::evaluate(target, items, pool, &opts, &|| bar.inc(1)).context("MMLU")?);
        bar.finish_and_clear();
    }
    if let Some((items, pool)) = &sets.qa {
        let bar = common::progress(items.len() as u64, &format!("{label} QA"), quiet);
        let opts = args.qa_options(target.template.is_some());
        out.qa =
            Some(qa::evaluate(target, items, pool, &opts, &|| bar.inc(1)).context("factual QA")?);
        bar.finish_and_clear();
    }
    Ok(out)
}

/// Perplexity of a token stream in non-overlapping windows, with a progress bar.
pub fn perplexity(
    model: &Model,
    overlay: Option<&WeightOverlay>,
    tokens: &[u32],
    window: usize,
    label: &str,
    quiet: bool,
) -> Result<Perplexity> {
    if window < 2 {
        bail!("--window {window}: must be at least 2 tokens");
    }
    let chunks: Vec<&[u32]> = tokens.chunks(window).filter(|c| c.len() >= 2).collect();
    let bar = common::progress(chunks.len() as u64, &format!("{label} perplexity"), quiet);
    let mut parts = Vec::with_capacity(chunks.len());
    // A batch of windows per forward (what `perplexity_with` does without the bar).
    for batch in chunks.chunks(model::FORWARD_BATCH) {
        parts.extend(model.perplexity_each(batch, model::FORWARD_BATCH, overlay)?);
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    Ok(Perplexity::combine(&parts)?)
}

/// Text lines for the MMLU / QA results, with chance level and the flag.
pub fn describe_suite(r: &SuiteResult) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(m) = &r.mmlu {
        let v = Verdict::assess(m.accuracy, m.chance, m.questions);
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
    if let Some(q) = &r.qa {
        let v = Verdict::assess(q.accuracy, chance_level(0), q.questions);
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

#[derive(Serialize)]
struct Report {
    model: PathBuf,
    ppl: Option<PplReport>,
    #[serde(flatten)]
    suite: SuiteResult,
    mmlu_verdict: Option<Verdict>,
    qa_verdict: Option<Verdict>,
}

#[derive(Serialize)]
struct PplReport {
    text: String,
    texts: usize,
    window: usize,
    perplexity: f64,
    mean_nll: f64,
    tokens_scored: usize,
    windows: usize,
    seconds: f64,
    tokens_per_second: f64,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let path = common::model_path(args.model)?;
    let sets = args.suite.load()?;
    let texts = if args.no_ppl {
        None
    } else {
        Some(::eval::data::read_texts(
            &args.ppl,
            (args.limit > 0).then_some(args.limit),
        )?)
    };
    let ckpt = common::load(&path)?;
    let model = common::build(&ckpt, &device)?;
    let template = model::ChatTemplate::for_checkpoint(&ckpt)?;
    let stops = super::generate::stop_tokens(&ckpt);
    let target = Target {
        model: &model,
        overlay: None,
        codec: &ckpt.tokenizer,
        template: template.as_ref(),
        stop_tokens: &stops,
    };
    let ppl = match &texts {
        None => None,
        Some(texts) => {
            // Concatenate with blank lines and tokenise once (WikiText-2 protocol).
            let tokens = common::encode(&ckpt, &texts.join("\n\n"))?;
            let start = Instant::now();
            let p = perplexity(&model, None, &tokens, args.window, "dense", args.json)?;
            let seconds = start.elapsed().as_secs_f64();
            Some(PplReport {
                text: args.ppl.clone(),
                texts: texts.len(),
                window: args.window,
                perplexity: p.ppl,
                mean_nll: p.mean_nll,
                tokens_scored: p.tokens_scored,
                windows: p.windows,
                seconds,
                tokens_per_second: (p.tokens_scored + p.windows) as f64 / seconds,
            })
        }
    };
    let suite = run_suite(&target, &sets, &args.suite, "dense", args.json)?;
    let report = Report {
        model: path,
        mmlu_verdict: suite
            .mmlu
            .as_ref()
            .map(|m| Verdict::assess(m.accuracy, m.chance, m.questions)),
        qa_verdict: suite
            .qa
            .as_ref()
            .map(|q| Verdict::assess(q.accuracy, 0.0, q.questions)),
        ppl,
        suite,
    };
    if args.json {
        return common::print(&serde_json::to_string_pretty(&report)?);
    }
    if let Some(p) = &report.ppl {
        common::print(&format!(
            "perplexity {:.4} over {} scored tokens ({} windows of ≤{} tokens, {} texts from {}) in {:.1}s ({:.0} tokens/s)",
            p.perplexity, p.tokens_scored, p.windows, p.window, p.texts, p.text, p.seconds, p.tokens_per_second
        ))?;
    }
    for line in describe_suite(&report.suite) {
        common::print(&line)?;
    }
    Ok(())
}
