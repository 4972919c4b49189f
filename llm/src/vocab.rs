//! Token-level constrained decoding: which vocabulary tokens may follow a partial plan
//! ([`PlanGrammar`] decides per character) and which one to take.
//!
//! Testing all 49k (SmolLM2) or 151k (Qwen2.5) tokens against the grammar at every step
//! would cost far more than the small model's forward pass, so [`Vocab::pick`] works in
//! two stages, both exact:
//!
//! 1. The [`FIRST`] best-scoring tokens (one O(n) selection, no full sort) are tried in
//!    score order; the first one the grammar accepts is the answer. While the model
//!    writes its reasoning almost every token is allowed, so this settles nearly all
//!    steps after a handful of grammar checks.
//! 2. Otherwise (a literal, a layer name, digits of δ, where the model's favourites are
//!    often not allowed) the allowed set is enumerated by walking the grammar over a
//!    character trie of the vocabulary: a rejected prefix prunes every token below it,
//!    so only the few tokens that fit are ever visited. The best of them wins.
//!
//! Scores are logits at temperature 0 and `logit / T + Gumbel noise` otherwise: the
//! argmax of the perturbed scores over the allowed tokens is a sample from the softmax
//! restricted to them (Gumbel-max), so both stages sample exactly the masked
//! distribution. Ties go to the lowest token id, so the result is the same as a
//! brute-force scan over the whole vocabulary (checked in the tests).

use crate::constrained::{GrammarState, PlanGrammar};
use crate::rng::unit;

/// Tokens tried in score order before falling back to the trie walk.
pub const FIRST: usize = 32;

const NONE: u32 = u32::MAX;

/// A character trie over the token pieces; node 0 is the root (the empty prefix).
#[derive(Debug, Clone, Default)]
struct Trie {
    ch: Vec<char>,
    first_child: Vec<u32>,
    next_sibling: Vec<u32>,
    /// Tokens whose piece ends at a node: `tokens[start[n]..start[n + 1]]`.
    start: Vec<u32>,
    tokens: Vec<u32>,
}

impl Trie {
    /// Built from the pieces sorted by text, so each node's children are appended in
    /// order and the shared prefix with the previous piece is the path still open.
    fn build(pieces: &[Option<String>]) -> Self {
        let mut items: Vec<(&str, u32)> = pieces
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_deref().map(|p| (p, i as u32)))
            .collect();
        items.sort_unstable();
        let mut t = Trie {
            ch: vec!['\0'],
            first_child: vec![NONE],
            next_sibling: vec![NONE],
            ..Default::default()
        };
        let mut last_child = vec![NONE];
        let mut ends: Vec<Vec<u32>> = vec![Vec::new()];
        let mut path: Vec<(char, u32)> = Vec::new();
        for (piece, id) in items {
            let chars: Vec<char> = piece.chars().collect();
            let shared = path
                .iter()
                .zip(&chars)
                .take_while(|((a, _), b)| a == *b)
                .count();
            path.truncate(shared);
            let mut parent = path.last().map_or(0, |&(_, n)| n);
            for &c in &chars[shared..] {
                let node = t.ch.len() as u32;
                t.ch.push(c);
                t.first_child.push(NONE);
                t.next_sibling.push(NONE);
                last_child.push(NONE);
                ends.push(Vec::new());
                let p = parent as usize;
                match last_child[p] {
                    NONE => t.first_child[p] = node,
                    prev => t.next_sibling[prev as usize] = node,
                }
                last_child[p] = node;
                path.push((c, node));
                parent = node;
            }
            ends[parent as usize].push(id);
        }
        t.start.reserve(ends.len() + 1);
        for e in &ends {
            t.start.push(t.tokens.len() as u32);
            t.tokens.extend_from_slice(e);
        }
        t.start.push(t.tokens.len() as u32);
        t
    }

    fn children(&self, node: u32) -> impl Iterator<Item = u32> + '_ {
        let mut c = self.first_child[node as usize];
        std::iter::from_fn(move || {
            (c != NONE).then(|| {
                let n = c;
                c = self.next_sibling[n as usize];
                n
            })
        })
    }

    fn tokens_at(&self, node: u32) -> &[u32] {
        let n = node as usize;
        &self.tokens[self.start[n] as usize..self.start[n + 1] as usize]
    }
}

/// Each token's text, `None` for tokens never allowed (special tokens, pieces that are
/// not valid UTF-8 on their own, the empty string), with the trie over them.
#[derive(Debug, Clone)]
pub struct Vocab {
    pieces: Vec<Option<String>>,
    trie: Trie,
}

impl Vocab {
    pub fn new(pieces: Vec<Option<String>>) -> Self {
        let pieces: Vec<Option<String>> = pieces
            .into_iter()
            .map(|p| p.filter(|t| !t.is_empty() && !t.contains('\u{FFFD}')))
            .collect();
        let trie = Trie::build(&pieces);
        Self { pieces, trie }
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The text of token `id` (`None` for tokens never emitted).
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize)?.as_deref()
    }

    /// Selection scores for the first `min(logits, vocab)` tokens: `logit` at
    /// temperature 0, else `logit / T + Gumbel noise` (one draw per usable token, in id
    /// order). Tokens without text or with a non-finite logit score −∞ (never chosen).
    pub fn scores(&self, logits: &[f32], temperature: f64, rng: &mut u64) -> Vec<f64> {
        let n = logits.len().min(self.pieces.len());
        (0..n)
            .map(|i| {
                let l = f64::from(logits[i]);
                if self.pieces[i].is_none() || !l.is_finite() {
                    f64::NEG_INFINITY
                } else if temperature > 0.0 {
                    let u = unit(rng).max(f64::MIN_POSITIVE);
                    l / temperature - (-u.ln()).ln()
                } else {
                    l
                }
            })
            .collect()
    }

    /// The next token: a sample from softmax(`logits` / `temperature`) restricted to the
    /// tokens `grammar` allows after `state` (the most likely allowed token at
    /// temperature 0), with the grammar state after it. `None` when no token is allowed,
    /// which for a vocabulary holding the single ASCII characters cannot happen before
    /// the document is complete.
    pub fn pick(
        &self,
        grammar: &PlanGrammar,
        state: &GrammarState,
        logits: &[f32],
        temperature: f64,
        rng: &mut u64,
    ) -> Option<(u32, GrammarState)> {
        let scores = self.scores(logits, temperature, rng);
        self.best_allowed(grammar, state, &scores)
    }

    /// The allowed token with the highest score (lowest id among equals).
    pub fn best_allowed(
        &self,
        grammar: &PlanGrammar,
        state: &GrammarState,
        scores: &[f64],
    ) -> Option<(u32, GrammarState)> {
        // Descending score, then ascending id: a total order, so the FIRST selected
        // below are exactly the FIRST best, whatever the ties.
        let order = |a: &u32, b: &u32| {
            scores[*b as usize]
                .total_cmp(&scores[*a as usize])
                .then(a.cmp(b))
        };
        let mut top: Vec<u32> = (0..scores.len() as u32)
            .filter(|&i| scores[i as usize] > f64::NEG_INFINITY)
            .collect();
        if top.len() > FIRST {
            top.select_nth_unstable_by(FIRST - 1, order);
            top.truncate(FIRST);
        }
        top.sort_unstable_by(order);
        for &id in &top {
            if let Some(s) = self.piece(id).and_then(|p| grammar.feed(state, p)) {
                return Some((id, s));
            }
        }
        let mut best: Option<(u32, GrammarState)> = None;
        self.walk(grammar, state, |id, s| {
            let score = scores
                .get(id as usize)
                .copied()
                .unwrap_or(f64::NEG_INFINITY);
            if score == f64::NEG_INFINITY {
                return;
            }
            let better = match &best {
                None => true,
                Some((b, _)) => order(&id, b).is_lt(),
            };
            if better {
                best = Some((id, s.clone()));
            }
        });
        best
    }

    /// Every token the grammar allows after `state`, with the state after it.
    pub fn allowed(&self, grammar: &PlanGrammar, state: &GrammarState) -> Vec<(u32, GrammarState)> {
        let mut out = Vec::new();
        self.walk(grammar, state, |id, s| out.push((id, s.clone())));
        out
    }

    /// Depth-first walk of the trie, feeding the grammar one character per edge and
    /// skipping the subtree of every rejected prefix; calls `f` for each allowed token.
    fn walk(
        &self,
        grammar: &PlanGrammar,
        state: &GrammarState,
        mut f: impl FnMut(u32, &GrammarState),
    ) {
        let mut stack: Vec<(u32, GrammarState)> = vec![(0, state.clone())];
        while let Some((node, s)) = stack.pop() {
            for child in self.trie.children(node) {
                let mut next = s.clone();
                if grammar
                    .step(&mut next, self.trie.ch[child as usize])
                    .is_none()
                {
                    continue;
                }
                for &id in self.trie.tokens_at(child) {
                    f(id, &next);
                }
                if self.trie.first_child[child as usize] != NONE {
                    stack.push((child, next));
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "vocab_tests.rs"]
mod tests;
