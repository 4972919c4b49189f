//! Text ⇄ token ids. The real models use their `tokenizers::Tokenizer`; tests use
//! [`CharCodec`], one id per character, so prompts, answers and matching can be
//! checked on tiny random models whose vocabulary has 64 entries.

use crate::{EvalError, Result};

/// Encoding without special tokens (prompts carry what their template writes) and
/// decoding that drops special tokens.
pub trait Codec: Send + Sync {
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// The id of `text` when it encodes to exactly one token.
    fn single_token(&self, text: &str) -> Option<u32> {
        match self.encode(text).ok()?.as_slice() {
            [id] => Some(*id),
            _ => None,
        }
    }
}

impl Codec for tokenizers::Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = std::ops::Deref::deref(self)
            .encode(text, false)
            .map_err(|e| EvalError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        std::ops::Deref::deref(self)
            .decode(ids, true)
            .map_err(|e| EvalError::Tokenizer(e.to_string()))
    }
}

/// One id per character of a fixed alphabet, ids from `first_id` on. Characters not
/// in the alphabet fall back to their lower-case form, else they are an error.
#[derive(Debug, Clone)]
pub struct CharCodec {
    alphabet: Vec<char>,
    first_id: u32,
}

impl CharCodec {
    pub fn new(alphabet: &str, first_id: u32) -> Self {
        Self {
            alphabet: alphabet.chars().collect(),
            first_id,
        }
    }

    /// 50 characters from id 3 (ids 0–2 are left for pad/bos/eos): fits the 64-entry
    /// vocabulary of `model::testing::tiny_config`.
    pub fn tiny() -> Self {
        Self::new("\n abcdefghijklmnopqrstuvwxyz0123456789ABCD.,?:'-()", 3)
    }

    /// Largest id this codec produces.
    pub fn max_id(&self) -> u32 {
        self.first_id + self.alphabet.len() as u32 - 1
    }
}

impl Codec for CharCodec {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| {
                let pos = self.alphabet.iter().position(|&a| a == c).or_else(|| {
                    let lower = c.to_lowercase().next()?;
                    self.alphabet.iter().position(|&a| a == lower)
                });
                pos.map(|p| self.first_id + p as u32)
                    .ok_or_else(|| EvalError::Tokenizer(format!("character {c:?} not in alphabet")))
            })
            .collect()
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(ids
            .iter()
            .filter_map(|&id| {
                let i = id.checked_sub(self.first_id)? as usize;
                self.alphabet.get(i).copied()
            })
            .collect())
    }
}
