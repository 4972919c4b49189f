//! llguidance as the local planner's constraint (feature `llguidance`): the same
//! JSON schema the remote backends send, compiled by llguidance into token masks over
//! the model's vocabulary. Built for the comparison with the plan grammar in
//! `examples/grammar_engines.rs`; the planner itself uses [`super::GrammarChooser`].

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokRxInfo, TokTrie};
use llguidance::{token_bytes_from_tokenizer_json, Matcher, ParserFactory};
use protocol::{plan_json_schema, PlanRequest, DELTA_MAX, DELTA_MIN};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use super::choose::{Chooser, Chosen, Tokens};
use super::{err, may_stop, LocalBackend, MAX_REASONING};
use crate::error::Result;

/// The schema the llguidance chooser enforces for `request` over `layers`: the remote
/// backends' schema in its `json_object` form (no stop and at least one decision below
/// the target), plus what JSON Schema can say of the rest of the plan grammar — the
/// reasoning's length, the number of decisions, δ's bounds, compact separators. What it
/// cannot say: that each layer appears once, and that the plan gains the critic's
/// minimum.
pub fn llg_schema(request: &PlanRequest, layers: &[String]) -> Value {
    let names: Vec<&str> = layers.iter().map(String::as_str).collect();
    let schema = plan_json_schema(Some(&names))
        .with_progress_required(!may_stop(request))
        .object_mode();
    let mut v = serde_json::to_value(&schema).unwrap_or_default();
    v["properties"]["reasoning"]["maxLength"] = json!(MAX_REASONING);
    // The plan grammar's cap (each listed layer once); the schema cannot say "once".
    v["properties"]["layer_decisions"]["maxItems"] = json!(layers.len());
    let delta = &mut v["properties"]["layer_decisions"]["items"]["properties"]["delta"];
    delta["minimum"] = json!(DELTA_MIN);
    delta["maximum"] = json!(DELTA_MAX);
    v["x-guidance"] = json!({"whitespace_flexible": false});
    v
}

/// llguidance's view of `tokenizer`: each token's bytes (special tokens marked as
/// llguidance expects), in a token trie.
pub fn parser_factory(tokenizer: &Tokenizer) -> Result<ParserFactory> {
    let text = tokenizer.to_string(false).map_err(err)?;
    let json: Value = serde_json::from_str(&text).map_err(err)?;
    let words = token_bytes_from_tokenizer_json(&json).map_err(err)?;
    let eos = ["<|im_end|>", "<|endoftext|>", "</s>"]
        .iter()
        .find_map(|t| tokenizer.token_to_id(t))
        .unwrap_or(0);
    let trie = TokTrie::from(&TokRxInfo::new(words.len() as u32, eos), &words);
    let env = Arc::new(ApproximateTokEnv::new(trie));
    let mut factory = ParserFactory::new_simple(&(env as _)).map_err(err)?;
    factory.quiet();
    Ok(factory)
}

impl LocalBackend {
    /// A parser factory over this model's vocabulary.
    pub fn llg_factory(&self) -> Result<ParserFactory> {
        let st = self.inner.lock().map_err(|_| super::poisoned())?;
        parser_factory(&st.tokenizer)
    }
}

/// Chooses tokens under an llguidance matcher: forced tokens first (llguidance's
/// fast-forward), else the best-scoring token of the mask.
pub struct LlgChooser {
    matcher: Matcher,
}

impl LlgChooser {
    pub fn new(factory: &ParserFactory, schema: Value) -> Result<Self> {
        let parser = factory.create_parser(TopLevelGrammar::from_json_schema(schema));
        let matcher = Matcher::new(parser);
        if let Some(e) = matcher.get_error() {
            return Err(err(format!("llguidance: {e}")));
        }
        Ok(Self { matcher })
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> crate::error::LlmError {
        err(format!("llguidance {what}: {e}"))
    }

    fn text_of(tokens: &Tokens<'_>, ids: &[u32]) -> String {
        tokens.tokenizer.decode(ids, false).unwrap_or_default()
    }
}

/// The highest score among the tokens `mask` allows (lowest id among equals).
fn best_in(mask: &SimpleVob, scores: &[f64]) -> Option<u32> {
    let mut best: Option<(u32, f64)> = None;
    for id in mask.iter() {
        let s = scores
            .get(id as usize)
            .copied()
            .unwrap_or(f64::NEG_INFINITY);
        if s > f64::NEG_INFINITY && best.is_none_or(|(_, b)| s > b) {
            best = Some((id, s));
        }
    }
    best.map(|(id, _)| id)
}

impl Chooser for LlgChooser {
    fn is_done(&mut self) -> bool {
        self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false)
    }

    fn next(
        &mut self,
        tokens: &Tokens<'_>,
        logits: &[f32],
        temperature: f64,
        rng: &mut u64,
    ) -> Result<Option<Chosen>> {
        let ff = self.matcher.compute_ff_tokens();
        if !ff.is_empty() {
            self.matcher
                .consume_tokens(&ff)
                .map_err(|e| self.fail("fast-forward", e))?;
            return Ok(Some(Chosen {
                text: Self::text_of(tokens, &ff),
                ids: ff,
                forced: true,
            }));
        }
        let mask = self
            .matcher
            .compute_mask()
            .map_err(|e| self.fail("mask", e))?;
        let scores = tokens.vocab.scores(logits, temperature, rng);
        let Some(id) = best_in(&mask, &scores) else {
            return Ok(None);
        };
        self.matcher
            .consume_token(id)
            .map_err(|e| self.fail("token", e))?;
        Ok(Some(Chosen {
            ids: vec![id],
            text: Self::text_of(tokens, &[id]),
            forced: false,
        }))
    }
}
