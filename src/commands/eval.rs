//! `secateur eval`: perplexity over a text (WikiText-2 protocol), and optionally MMLU
//! (k-shot, letter log-likelihood) and factual QA (LLM-KICK, `raw` or `chat` prompts).
//! Every accuracy is printed next to its chance level and flagged when the (dense)
//! model is too close to chance or zero for the number to mean anything.
//!
//! The question sets, their shot splits and the scoring are `eval::suite`'s, which
//! `secateur compare` shares, so both commands apply the same rules (shots are never
//! scored; limits are stated in every report). This file holds the flags and the
//! printed report.

use std::path::PathBuf;
use std::time::Instant;

use ::eval::qa::PromptStyle;
use ::eval::suite::{describe_suite, perplexity, run_suite, SuiteResult, SuiteSpec};
use ::eval::verdict::Verdict;
use ::eval::Target;
use anyhow::Result;
use model::DEFAULT_PPL_WINDOW;
use serde::Serialize;

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

/// MMLU and QA settings shared by `eval` and `compare`: the flags of
/// [`SuiteSpec`], field for field.
#[derive(clap::Args, Clone)]
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

impl SuiteArgs {
    /// The flags as the evaluation crate's settings (the same fields, the same JSON).
    pub fn spec(&self) -> SuiteSpec {
        SuiteSpec {
            mmlu: self.mmlu.clone(),
            mmlu_shots_from: self.mmlu_shots_from.clone(),
            shots: self.shots,
            mmlu_limit: self.mmlu_limit,
            mmlu_style: self.mmlu_style,
            qa: self.qa.clone(),
            qa_shots_from: self.qa_shots_from.clone(),
            qa_shots: self.qa_shots,
            qa_limit: self.qa_limit,
            qa_style: self.qa_style,
            qa_kick_sentence: self.qa_kick_sentence,
            max_new_tokens: self.max_new_tokens,
            max_prompt_tokens: self.max_prompt_tokens,
        }
    }
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
    let suite = args.suite.spec();
    let sets = suite.load()?;
    let bars = common::Bars { quiet: args.json };
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
            let p = perplexity(&model, None, &tokens, args.window, "dense", &bars)?;
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
    let suite = run_suite(&target, &sets, &suite, "dense", &bars)?;
    let report = Report {
        model: path,
        mmlu_verdict: suite.mmlu_verdict(),
        qa_verdict: suite.qa_verdict(),
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
