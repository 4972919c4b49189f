//! MMLU-style multiple choice, k-shot, in the Hendrycks format:
//!
//! ```text
//! The following are multiple choice questions (with answers) about {subject}.
//!
//! {shot question}
//! A. ..
//! B. ..
//! C. ..
//! D. ..
//! Answer: B
//!
//! {question}
//! A. ..
//! ...
//! Answer:
//! ```
//!
//! The prediction is the letter whose token has the largest logit at the last
//! position: one forward per question instead of four (the letters share the prompt).
//! A letter may have two single-token spellings (`" A"` after `Answer:`, `"A"` at the
//! start of a chat reply); both are scored and the larger counts. In `chat` style the
//! same text is the user turn of the model's chat template.
//!
//! Shots come from a separate pool that is never scored ([`shot_pool`] removes every
//! pool question that also appears in the scored set); with subjects known, shots of
//! the same subject are preferred. Prompts longer than `max_prompt_tokens` lose shots
//! (the oldest first), then the start of the text.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use candle_core::{DType, Tensor};
use model::ChatMessage;
use serde::{Deserialize, Serialize};

use crate::data::McqItem;
use crate::qa::PromptStyle;
use crate::verdict::chance_level;
use crate::{EvalError, Result, Target};

/// Settings of one MMLU evaluation.
#[derive(Debug, Clone)]
pub struct MmluOptions {
    pub shots: usize,
    pub style: PromptStyle,
    /// Longest prompt fed to the model (shots are dropped to fit).
    pub max_prompt_tokens: usize,
}

impl Default for MmluOptions {
    fn default() -> Self {
        Self {
            shots: 5,
            style: PromptStyle::Raw,
            max_prompt_tokens: 1024,
        }
    }
}

/// Accuracy over the scored questions, overall and per subject.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MmluResult {
    pub questions: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub chance: f64,
    /// `subject → (correct, questions)`; empty when the file has no subjects.
    pub per_subject: BTreeMap<String, (usize, usize)>,
    pub shots: usize,
    pub style: PromptStyle,
    pub mean_prompt_tokens: f64,
    pub seconds: f64,
    /// Predicted choice index per scored question, in order.
    pub predictions: Vec<usize>,
}

const LETTERS: &str = "ABCDEFGHIJ";

fn letter(i: usize) -> char {
    LETTERS.as_bytes().get(i).map_or('?', |b| char::from(*b))
}

/// `question\nA. ..\nB. ..\n...\nAnswer:` followed by ` X` when `answer` is given.
pub fn format_item(item: &McqItem, with_answer: bool) -> String {
    let mut s = format!("{}\n", item.question.trim());
    for (i, c) in item.choices.iter().enumerate() {
        s.push_str(&format!("{}. {}\n", letter(i), c.trim()));
    }
    s.push_str("Answer:");
    if with_answer {
        s.push_str(&format!(" {}\n\n", letter(item.answer)));
    }
    s
}

/// The Hendrycks header: `The following are multiple choice questions (with
/// answers) about {subject}.\n\n`, or without the subject clause when unknown.
pub fn header(subject: Option<&str>) -> String {
    match subject {
        Some(s) => format!(
            "The following are multiple choice questions (with answers) about {}.\n\n",
            s.trim()
        ),
        None => "The following are multiple choice questions (with answers).\n\n".into(),
    }
}

/// The full k-shot prompt text for `item` with the given shots.
pub fn format_prompt(item: &McqItem, shots: &[&McqItem]) -> String {
    let mut s = header(item.subject.as_deref());
    for shot in shots {
        s.push_str(&format_item(shot, true));
    }
    s.push_str(&format_item(item, false));
    s
}

fn key(q: &str) -> String {
    q.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The shot pool without any question that is also scored.
pub fn shot_pool(pool: Vec<McqItem>, scored: &[McqItem]) -> Vec<McqItem> {
    let scored: HashSet<String> = scored.iter().map(|i| key(&i.question)).collect();
    pool.into_iter()
        .filter(|i| !scored.contains(&key(&i.question)))
        .collect()
}

/// `k` shots for `item`: same-subject pool entries first, then the rest, pool order.
pub fn pick_shots<'a>(item: &McqItem, pool: &'a [McqItem], k: usize) -> Vec<&'a McqItem> {
    let same = pool
        .iter()
        .filter(|p| p.subject.is_some() && p.subject == item.subject);
    let other = pool
        .iter()
        .filter(|p| !(p.subject.is_some() && p.subject == item.subject));
    same.chain(other).take(k).collect()
}

/// Candidate token ids per letter (the single-token spellings `" X"` and `"X"`).
/// Letters that share a token (a tokenizer mapping them all to "unknown") are an
/// error: the scorer could not tell the answers apart.
pub fn letter_tokens(codec: &dyn crate::Codec, options: usize) -> Result<Vec<Vec<u32>>> {
    let letters = letter_token_ids(codec, options)?;
    for (i, a) in letters.iter().enumerate() {
        for b in &letters[i + 1..] {
            if a.iter().any(|id| b.contains(id)) {
                return Err(EvalError::InvalidArgument(
                    "the tokenizer gives two answer letters the same token".into(),
                ));
            }
        }
    }
    Ok(letters)
}

fn letter_token_ids(codec: &dyn crate::Codec, options: usize) -> Result<Vec<Vec<u32>>> {
    (0..options)
        .map(|i| {
            let ids: Vec<u32> = [format!(" {}", letter(i)), letter(i).to_string()]
                .iter()
                .filter_map(|s| codec.single_token(s))
                .collect();
            if ids.is_empty() {
                Err(EvalError::InvalidArgument(format!(
                    "the tokenizer has no single token for answer letter {}",
                    letter(i)
                )))
            } else {
                Ok(ids)
            }
        })
        .collect()
}

/// The predicted choice: the letter with the largest logit over its spellings; ties
/// go to the earlier letter, NaN never wins.
pub fn pick_letter(logits: &[f32], letters: &[Vec<u32>]) -> usize {
    let score = |ids: &Vec<u32>| {
        ids.iter()
            .filter_map(|&id| logits.get(id as usize).copied())
            .filter(|v| !v.is_nan())
            .fold(f32::NEG_INFINITY, f32::max)
    };
    let mut best = 0;
    for (i, ids) in letters.iter().enumerate() {
        if score(ids) > score(&letters[best]) {
            best = i;
        }
    }
    best
}

/// Token ids of `item`'s prompt, fitted into `max_prompt_tokens` (and the model's
/// context) by dropping shots, oldest first, then the start of the text.
pub fn encode_prompt(
    target: &Target<'_>,
    item: &McqItem,
    shots: &[&McqItem],
    opts: &MmluOptions,
) -> Result<Vec<u32>> {
    let max_tokens = opts
        .max_prompt_tokens
        .min(target.model.config().max_position_embeddings);
    let mut used = shots.len();
    loop {
        let text = format_prompt(item, &shots[shots.len() - used..]);
        let text = match (opts.style, target.template) {
            (PromptStyle::Chat, Some(t)) => t.render(&[ChatMessage::user(text)])?,
            (PromptStyle::Chat, None) => {
                return Err(EvalError::InvalidArgument(
                    "chat prompt style needs a model with a chat template".into(),
                ))
            }
            (PromptStyle::Raw, _) => text,
        };
        let ids = target.codec.encode(&text)?;
        if ids.len() <= max_tokens {
            return Ok(ids);
        }
        if used == 0 {
            return Ok(ids[ids.len() - max_tokens..].to_vec());
        }
        used -= 1;
    }
}

/// Logits `[vocab]` at the last position of `ids`.
pub fn last_logits(target: &Target<'_>, ids: &[u32]) -> Result<Vec<f32>> {
    if ids.is_empty() {
        return Err(EvalError::InvalidArgument("empty prompt".into()));
    }
    let input = Tensor::new(ids, target.model.device())?.unsqueeze(0)?;
    let logits = target.model.forward_with(&input, target.overlay)?;
    Ok(logits
        .squeeze(0)?
        .narrow(0, ids.len() - 1, 1)?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1()?)
}

/// Score `items` with shots from `pool` (already free of scored questions).
/// `on_item` is called after each question (progress bars).
pub fn evaluate(
    target: &Target<'_>,
    items: &[McqItem],
    pool: &[McqItem],
    opts: &MmluOptions,
    on_item: &dyn Fn(),
) -> Result<MmluResult> {
    if items.is_empty() {
        return Err(EvalError::InvalidArgument(
            "MMLU: no questions to score".into(),
        ));
    }
    if opts.shots > pool.len() {
        return Err(EvalError::InvalidArgument(format!(
            "MMLU: {} shots requested, the shot split has {} questions",
            opts.shots,
            pool.len()
        )));
    }
    let options = items.iter().map(|i| i.choices.len()).max().unwrap_or(4);
    let letters = letter_tokens(target.codec, options)?;
    let start = Instant::now();
    let (mut correct, mut tokens) = (0, 0usize);
    let mut per_subject: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut predictions = Vec::with_capacity(items.len());
    for item in items {
        let shots = pick_shots(item, pool, opts.shots);
        let ids = encode_prompt(target, item, &shots, opts)?;
        tokens += ids.len();
        let logits = last_logits(target, &ids)?;
        let pred = pick_letter(&logits, &letters[..item.choices.len()]);
        let ok = pred == item.answer;
        correct += usize::from(ok);
        if let Some(s) = &item.subject {
            let e = per_subject.entry(s.clone()).or_default();
            e.0 += usize::from(ok);
            e.1 += 1;
        }
        predictions.push(pred);
        on_item();
    }
    Ok(MmluResult {
        questions: items.len(),
        correct,
        accuracy: correct as f64 / items.len() as f64,
        chance: chance_level(options),
        per_subject,
        shots: opts.shots,
        style: opts.style,
        mean_prompt_tokens: tokens as f64 / items.len() as f64,
        seconds: start.elapsed().as_secs_f64(),
        predictions,
    })
}
