//! What picks the tokens of a local answer. The decoder asks a [`Chooser`] at every
//! step for the next tokens: a batch of text the constraint fixes (fed without asking
//! the model) or the best-scoring token it allows. [`GrammarChooser`] is the plan
//! grammar ([`PlanGrammar`], the default); `llguidance` (feature `llguidance`, for the
//! comparison in `examples/grammar_engines.rs`) is the other.

use tokenizers::Tokenizer;

use crate::constrained::{GrammarState, PlanGrammar};
use crate::error::Result;
use crate::vocab::Vocab;

/// The tokenizer and its vocabulary, as a chooser sees them.
pub struct Tokens<'a> {
    pub vocab: &'a Vocab,
    pub tokenizer: &'a Tokenizer,
}

impl Tokens<'_> {
    /// `text` as tokens whose pieces spell it exactly (`None` when the tokenizer's
    /// split does not, e.g. through a special token: the text is then decoded token by
    /// token like any other).
    pub fn tokens_of(&self, text: &str) -> Option<Vec<u32>> {
        if text.is_empty() {
            return None;
        }
        let ids = self.tokenizer.encode(text, false).ok()?.get_ids().to_vec();
        let mut spelled = String::with_capacity(text.len());
        for &id in &ids {
            spelled.push_str(self.vocab.piece(id)?);
        }
        (spelled == text).then_some(ids)
    }
}

/// The tokens of one decoding step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub ids: Vec<u32>,
    /// Their text, appended to the answer.
    pub text: String,
    /// Fixed by the constraint rather than chosen from the model's scores.
    pub forced: bool,
}

/// A constraint on the answer that also chooses its tokens.
pub trait Chooser {
    /// The answer is complete; decoding stops.
    fn is_done(&mut self) -> bool;
    /// The next tokens after what was chosen so far, given the model's `logits` for
    /// the next position. `None` when the constraint allows no token.
    fn next(
        &mut self,
        tokens: &Tokens<'_>,
        logits: &[f32],
        temperature: f64,
        rng: &mut u64,
    ) -> Result<Option<Chosen>>;
}

/// The plan grammar: exact, and stricter than any JSON schema (distinct layers, the
/// critic's minimum gain; see [`crate::constrained`]).
pub struct GrammarChooser<'g> {
    grammar: &'g PlanGrammar,
    state: GrammarState,
}

impl<'g> GrammarChooser<'g> {
    pub fn new(grammar: &'g PlanGrammar) -> Self {
        Self {
            state: grammar.start(),
            grammar,
        }
    }
}

impl Chooser for GrammarChooser<'_> {
    fn is_done(&mut self) -> bool {
        self.state.is_done()
    }

    fn next(
        &mut self,
        tokens: &Tokens<'_>,
        logits: &[f32],
        temperature: f64,
        rng: &mut u64,
    ) -> Result<Option<Chosen>> {
        // Text the grammar fixes (`,"delta":0.`, the rest of a layer name) goes in as
        // one batch; the model only chooses where there is a choice.
        let (text, after) = self.grammar.forced(&self.state);
        if let Some(ids) = tokens.tokens_of(&text).filter(|b| !b.is_empty()) {
            self.state = after;
            return Ok(Some(Chosen {
                ids,
                text,
                forced: true,
            }));
        }
        let picked = tokens
            .vocab
            .pick(self.grammar, &self.state, logits, temperature, rng);
        Ok(picked.map(|(id, next)| {
            self.state = next;
            // The grammar accepted exactly this text: the answer is what it checked.
            Chosen {
                ids: vec![id],
                text: tokens.vocab.piece(id).unwrap_or_default().to_string(),
                forced: false,
            }
        }))
    }
}
