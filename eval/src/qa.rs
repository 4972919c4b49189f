//! Factual QA in the LLM-KICK style, with a prompt style for instruct models.
//!
//! - `raw` (base models, the LLM-KICK prompt): `Please give answer to this question:
//!   {q}\nThe answer is ` — k shots, when asked for, precede it as the same two lines
//!   completed with the shot's first alias and a blank line.
//! - `chat` (instruct models): the question as the user turn of the model's chat
//!   template (optionally prefixed with the LLM-KICK sentence); shots are earlier
//!   user/assistant turns.
//!
//! Greedy generation, at most `max_new_tokens`; the answer is correct when any gold
//! alias, lower-cased with every whitespace removed, is a substring of the generated
//! continuation treated the same way. Only the generated tokens are decoded, so the
//! echoed prompt (and the shots' answers in it) can never match. With shots, a raw
//! continuation is cut at its first line break, where the model starts inventing the
//! next question.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use model::ChatMessage;
use serde::{Deserialize, Serialize};

use crate::data::QaItem;
use crate::{EvalError, Result, Target};

/// How a question is put to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptStyle {
    Raw,
    Chat,
}

impl PromptStyle {
    /// `chat` when the model has a chat template, `raw` otherwise.
    pub fn default_for(has_template: bool) -> Self {
        if has_template {
            Self::Chat
        } else {
            Self::Raw
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Chat => "chat",
        }
    }
}

impl std::str::FromStr for PromptStyle {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "raw" => Ok(Self::Raw),
            "chat" => Ok(Self::Chat),
            other => Err(format!("unknown prompt style `{other}` (raw or chat)")),
        }
    }
}

/// The LLM-KICK prompt sentence.
pub const KICK_PREFIX: &str = "Please give answer to this question: ";
/// The LLM-KICK answer lead-in.
pub const KICK_LEAD: &str = "\nThe answer is ";

/// Settings of one QA evaluation.
#[derive(Debug, Clone)]
pub struct QaOptions {
    pub style: PromptStyle,
    pub shots: usize,
    pub max_new_tokens: usize,
    /// In `chat` style, prefix the question with the LLM-KICK sentence.
    pub chat_kick_sentence: bool,
    /// How many (question, continuation) samples to keep in the result.
    pub keep_samples: usize,
}

impl Default for QaOptions {
    fn default() -> Self {
        Self {
            style: PromptStyle::Chat,
            shots: 0,
            max_new_tokens: 24,
            chat_kick_sentence: false,
            keep_samples: 5,
        }
    }
}

/// Lower-case and remove every whitespace character (the LLM-KICK matching form).
pub fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whether any alias occurs in `continuation` (both normalised). Empty aliases never
/// match.
pub fn matches(continuation: &str, aliases: &[String]) -> bool {
    let c = normalize(continuation);
    aliases
        .iter()
        .map(|a| normalize(a))
        .any(|a| !a.is_empty() && c.contains(&a))
}

/// The prompt text of `item` with `shots`.
pub fn prompt_text(
    target: &Target<'_>,
    item: &QaItem,
    shots: &[&QaItem],
    opts: &QaOptions,
) -> Result<String> {
    match opts.style {
        PromptStyle::Raw => {
            let mut s = String::new();
            for shot in shots {
                s.push_str(&format!(
                    "{KICK_PREFIX}{}{KICK_LEAD}{}\n\n",
                    shot.question, shot.answers[0]
                ));
            }
            s.push_str(&format!("{KICK_PREFIX}{}{KICK_LEAD}", item.question));
            Ok(s)
        }
        PromptStyle::Chat => {
            let template = target.template.ok_or_else(|| {
                EvalError::InvalidArgument(
                    "chat prompt style needs a model with a chat template".into(),
                )
            })?;
            let ask = |q: &str| {
                if opts.chat_kick_sentence {
                    format!("{KICK_PREFIX}{q}")
                } else {
                    q.to_string()
                }
            };
            let mut messages = Vec::new();
            for shot in shots {
                messages.push(ChatMessage::user(ask(&shot.question)));
                messages.push(ChatMessage::assistant(shot.answers[0].clone()));
            }
            messages.push(ChatMessage::user(ask(&item.question)));
            Ok(template.render(&messages)?)
        }
    }
}

/// One answered question.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QaOutcome {
    pub question: String,
    pub answers: Vec<String>,
    /// The decoded generated tokens only (never the prompt).
    pub continuation: String,
    pub correct: bool,
}

/// Answer one question: generate greedily, decode the new tokens, match aliases.
pub fn answer(
    target: &Target<'_>,
    item: &QaItem,
    shots: &[&QaItem],
    opts: &QaOptions,
) -> Result<QaOutcome> {
    let ids = target
        .codec
        .encode(&prompt_text(target, item, shots, opts)?)?;
    let out = target.model.generate_with(
        &ids,
        opts.max_new_tokens,
        target.stop_tokens,
        target.overlay,
    )?;
    outcome(target, item, !shots.is_empty(), opts, &out)
}

/// Decode generated tokens `out` and match them against `item`'s aliases.
fn outcome(
    target: &Target<'_>,
    item: &QaItem,
    with_shots: bool,
    opts: &QaOptions,
    out: &[u32],
) -> Result<QaOutcome> {
    let mut continuation = target.codec.decode(out)?;
    if opts.style == PromptStyle::Raw && with_shots {
        if let Some(i) = continuation.trim_start().find('\n') {
            let skip = continuation.len() - continuation.trim_start().len();
            continuation.truncate(skip + i);
        }
    }
    let correct = matches(&continuation, &item.answers);
    Ok(QaOutcome {
        question: item.question.clone(),
        answers: item.answers.clone(),
        continuation,
        correct,
    })
}

/// Accuracy over a QA set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QaResult {
    pub questions: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub style: PromptStyle,
    pub shots: usize,
    pub max_new_tokens: usize,
    pub seconds: f64,
    pub seconds_per_question: f64,
    /// The first `keep_samples` outcomes, for reading what the model said.
    pub samples: Vec<QaOutcome>,
}

fn key(q: &str) -> String {
    normalize(q)
}

/// The shot pool without any question that is also scored.
pub fn shot_pool(pool: Vec<QaItem>, scored: &[QaItem]) -> Vec<QaItem> {
    let scored: HashSet<String> = scored.iter().map(|i| key(&i.question)).collect();
    pool.into_iter()
        .filter(|i| !scored.contains(&key(&i.question)))
        .collect()
}

/// Evaluate `items`; shots are the first `opts.shots` of `pool` (free of scored
/// questions). `on_item` is called after each question.
pub fn evaluate(
    target: &Target<'_>,
    items: &[QaItem],
    pool: &[QaItem],
    opts: &QaOptions,
    on_item: &dyn Fn(),
) -> Result<QaResult> {
    if items.is_empty() {
        return Err(EvalError::InvalidArgument(
            "QA: no questions to score".into(),
        ));
    }
    if opts.shots > pool.len() {
        return Err(EvalError::InvalidArgument(format!(
            "QA: {} shots requested, the shot split has {} questions",
            opts.shots,
            pool.len()
        )));
    }
    let shots: Vec<&QaItem> = pool.iter().take(opts.shots).collect();
    let start = Instant::now();
    let generated = generate_all(target, items, &shots, opts, on_item)?;
    let (mut correct, mut samples) = (0, Vec::new());
    for (item, out) in items.iter().zip(&generated) {
        let o = outcome(target, item, !shots.is_empty(), opts, out)?;
        correct += usize::from(o.correct);
        if samples.len() < opts.keep_samples {
            samples.push(o);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(QaResult {
        questions: items.len(),
        correct,
        accuracy: correct as f64 / items.len() as f64,
        style: opts.style,
        shots: opts.shots,
        max_new_tokens: opts.max_new_tokens,
        seconds,
        seconds_per_question: seconds / items.len() as f64,
        samples,
    })
}

/// Questions generated together. A one-token step of one question is mostly per-op
/// overhead: on SmolLM2-135M (2 shared cores, the 309 probe questions, 16 new tokens)
/// batches took 90 s against 211 s one at a time, with the same 103 answers right.
const BATCH: usize = 16;

/// The generated tokens of every item, in order: prompts of one token length go
/// through the model together, [`BATCH`] at a time.
fn generate_all(
    target: &Target<'_>,
    items: &[QaItem],
    shots: &[&QaItem],
    opts: &QaOptions,
    on_item: &dyn Fn(),
) -> Result<Vec<Vec<u32>>> {
    let prompts: Vec<Vec<u32>> = items
        .iter()
        .map(|item| {
            target
                .codec
                .encode(&prompt_text(target, item, shots, opts)?)
        })
        .collect::<Result<_>>()?;
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        by_len.entry(p.len()).or_default().push(i);
    }
    let mut out = vec![Vec::new(); items.len()];
    for group in by_len.values() {
        for chunk in group.chunks(BATCH) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
            let generated = target.model.generate_batch_with(
                &batch,
                opts.max_new_tokens,
                target.stop_tokens,
                target.overlay,
            )?;
            for (&i, g) in chunk.iter().zip(generated) {
                out[i] = g;
                on_item();
            }
        }
    }
    Ok(out)
}
